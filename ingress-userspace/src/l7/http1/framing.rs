//! Where an HTTP/1 message body ends (RFC 9112 §6.3), both ways, decided
//! on the head as it came on the wire. Every ambiguous framing is refused,
//! as nginx refuses it: two framings that disagree are how requests and
//! responses get smuggled past a proxy.
use hyper::StatusCode;

use super::tokens::split;

/// A request's body, by its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body at all (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes (0: none, but said so).
    Length(u64),
    Chunked,
}

/// Why a request head is refused, with nginx's status for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: &'static str,
}

const fn bad(why: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

fn has(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// A request's body framing (RFC 9112 §6.3 items 3-6), as strict as
/// nginx: Content-Length and Transfer-Encoding together, a second
/// Content-Length line, or a length that is not plain digits → 400;
/// Transfer-Encoding other than exactly `chunked` → 501, or 400 on
/// HTTP/1.0, which has none.
pub fn request_body(
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<RequestBody, Refusal> {
    let te = has(headers, "transfer-encoding");
    let mut lengths = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    let length = lengths.next();
    if te && length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if te {
        if http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let mut codings = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|h| split(h.value));
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(RequestBody::Chunked),
            (None, _) => Err(bad("an empty Transfer-Encoding")),
            _ => Err(Refusal {
                status: StatusCode::NOT_IMPLEMENTED,
                why: "a Transfer-Encoding other than chunked",
            }),
        };
    }
    let Some(length) = length else {
        return Ok(RequestBody::None);
    };
    if lengths.next().is_some() {
        return Err(bad("two Content-Length lines"));
    }
    digits(length.value)
        .map(RequestBody::Length)
        .ok_or(bad("a Content-Length that is not a number"))
}

/// A decimal number of plain digits (no sign, no space, no list).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A response's body, by its head and the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// This many bytes (none for HEAD, 204, 304).
    Length(u64),
    Chunked,
    /// Until the endpoint closes the connection.
    Close,
}

/// RFC 9112 §6.3: no body for HEAD, 204 and 304; Transfer-Encoding,
/// then Content-Length, else until close. Both at once is refused, as
/// nginx does (a 502); so are lengths that disagree, and
/// Transfer-Encoding from an HTTP/1.0 sender (§6.1).
pub fn response_body(
    status: StatusCode,
    is_head: bool,
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<ResponseBody, &'static str> {
    let te = has(headers, "transfer-encoding");
    if http10 && te {
        return Err("Transfer-Encoding in an HTTP/1.0 response");
    }
    // Refused even where no body follows (HEAD, 204, 304): a head framed
    // two ways is not one to pass on.
    if te && has(headers, "content-length") {
        return Err("both Transfer-Encoding and Content-Length in the response");
    }
    if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(ResponseBody::Length(0));
    }
    if te {
        let last = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|h| split(h.value))
            .last();
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => ResponseBody::Chunked,
            _ => ResponseBody::Close,
        });
    }
    let mut length = None;
    // Every comma-separated item must be digits: an empty one is as wrong
    // as a sign or a letter (not skipped as in list headers).
    let items = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    for part in items {
        let n = digits(part).ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        length = Some(n);
    }
    Ok(length.map_or(ResponseBody::Close, ResponseBody::Length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<RequestBody, Refusal> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut slots);
        let full = format!("{text}\r\n");
        assert!(req.parse(full.as_bytes()).unwrap().is_complete(), "{text}");
        request_body(req.headers, req.version == Some(0))
    }

    #[test]
    fn request_framing_is_as_strict_as_nginx() {
        let ok = |t: &str, want| assert_eq!(request(t), Ok(want), "{t}");
        ok("GET / HTTP/1.1\r\n", RequestBody::None);
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n",
            RequestBody::Length(5),
        );
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n",
            RequestBody::Length(0),
        );
        ok(
            "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n",
            RequestBody::Chunked,
        );
        for (t, status) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: \r\n", 400),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n",
                400,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: \r\n", 400),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                501,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n", 501),
        ] {
            let got = request(t).map_err(|r| r.status.as_u16());
            assert_eq!(got, Err(status), "{t}");
        }
    }

    fn response(text: &str, is_head: bool) -> Result<ResponseBody, &'static str> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut slots);
        let full = format!("{text}\r\n");
        assert!(resp.parse(full.as_bytes()).unwrap().is_complete(), "{text}");
        let status = StatusCode::from_u16(resp.code.unwrap()).unwrap();
        response_body(status, is_head, resp.version == Some(0), resp.headers)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use ResponseBody::*;
        for (t, is_head, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n",
                false,
                Length(12),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n",
                false,
                Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n",
                false,
                Close,
            ),
            ("HTTP/1.1 200 OK\r\n", false, Close),
            ("HTTP/1.1 204 No Content\r\n", false, Length(0)),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n",
                false,
                Length(0),
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n", true, Length(0)),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n",
                false,
                Length(5),
            ),
        ] {
            assert_eq!(response(t, is_head), Ok(want), "{t}");
        }
        for t in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert!(response(t, false).is_err(), "{t:?} was accepted");
        }
    }
}
