//! Writing HTTP/1 heads: responses to clients framed as hyper's server
//! frames them, requests to endpoints, and the short answers that end a
//! connection (400, 408, 414, 431).
use hyper::{
    Method, StatusCode,
    header::{self, HeaderMap},
};

use super::tokens::is_hop_by_hop;

/// What a response head needs to know of the request it answers.
#[derive(Clone, Copy, Debug)]
pub struct Answering {
    pub is_head: bool,
    pub http10: bool,
}

/// How a response body is sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (none for HEAD, 1xx, 204, 304).
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// What the body says of its length before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// It is empty already.
    Empty,
    Known(u64),
    Unknown,
}

/// Writes the response head to `out` as hyper's server would for the same
/// response: Content-Length kept or added, else chunked (HTTP/1.1) or
/// until close (HTTP/1.0); no body where there can be none; Connection
/// as the connection goes on; Date unless the endpoint sent one.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: BodyLength,
    req: Answering,
    keep: bool,
) -> Framing {
    let is_head = req.is_head;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.extend_from_slice(if req.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body = is_head || bodiless_status;
    let mut announced = None;
    let mut date = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            // The first one only; none for a body that is empty already,
            // unless it answers a HEAD (the length a GET would get).
            if announced.is_some() || (body == BodyLength::Empty && !is_head) {
                continue;
            }
            announced = match body {
                BodyLength::Known(n) => Some(n),
                _ => match std::str::from_utf8(value.as_bytes()).map(str::parse::<u64>) {
                    Ok(Ok(n)) => Some(n),
                    _ => continue,
                },
            };
        } else if *name == header::DATE {
            date = true;
        } else if is_hop_by_hop(name) {
            // The connection's own: written below.
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (announced, body) {
        _ if no_body => {
            if announced.is_none()
                && !bodiless_status
                && let BodyLength::Known(n @ 1..) = body
            {
                // HEAD: the length its GET would have.
                write_length(out, n);
            }
            Framing::Length(0)
        }
        (Some(n), _) => Framing::Length(n),
        (None, BodyLength::Unknown) if req.http10 => Framing::Close,
        (None, BodyLength::Unknown) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        (None, BodyLength::Empty) => {
            out.extend_from_slice(b"content-length: 0\r\n");
            Framing::Length(0)
        }
        (None, BodyLength::Known(n)) => {
            write_length(out, n);
            Framing::Length(n)
        }
    };
    let keep = keep && framing != Framing::Close;
    match (req.http10, keep) {
        (false, false) => out.extend_from_slice(b"connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    if !date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Now as an HTTP date, formatted once a second.
pub fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// The whole answer to a request no server takes (the connection closes
/// after it), as hyper writes its own.
pub fn refusal(status: StatusCode) -> Vec<u8> {
    let mut answer = Vec::with_capacity(128);
    answer.extend_from_slice(b"HTTP/1.1 ");
    answer.extend_from_slice(status.as_str().as_bytes());
    answer.push(b' ');
    answer.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    answer.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ");
    http_date(&mut answer);
    answer.extend_from_slice(b"\r\n\r\n");
    answer
}

/// A request head as it goes on the wire, and what the client needs to
/// know about it.
#[derive(Clone)]
pub struct RequestHead {
    pub(crate) bytes: Vec<u8>,
    pub(crate) is_head: bool,
    /// Whether it may be sent again after a failure (idempotent).
    pub(crate) may_repeat: bool,
}

impl RequestHead {
    /// `METHOD /path?query HTTP/1.1` (origin form).
    pub fn new(method: &Method, target: &str, headers: usize) -> Self {
        let mut bytes = Vec::with_capacity(64 + target.len() + headers * 48);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        // An absolute-form request ("GET http://host?a=1") has no path:
        // origin form needs one.
        if !target.starts_with('/') {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            bytes,
            is_head: method == Method::HEAD,
            may_repeat: idempotent(method),
        }
    }

    /// Names and values come from header maps: checked already.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// One header line from several values, joined by `sep`.
    pub fn joined_header(&mut self, name: &[u8], values: &[&[u8]], sep: &[u8]) {
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(b": ");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.bytes.extend_from_slice(sep);
            }
            self.bytes.extend_from_slice(value);
        }
        self.bytes.extend_from_slice(b"\r\n");
    }

    pub fn finish(mut self) -> Self {
        self.bytes.extend_from_slice(b"\r\n");
        self
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// The request line's method and version, as the encoder sees them.
    fn answering(request: &[u8]) -> Answering {
        let line = String::from_utf8_lossy(request);
        Answering {
            is_head: line.starts_with("HEAD "),
            http10: line.lines().next().is_some_and(|l| l.ends_with("HTTP/1.0")),
        }
    }

    /// The head as written, with the Date line (which changes) taken out.
    fn encoded(
        request: &[u8],
        status: u16,
        headers: &[(&str, &str)],
        body: BodyLength,
        keep: bool,
    ) -> (String, Framing) {
        let req = answering(request);
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).unwrap();
        let framing = encode_response_head(&mut out, status, &map, body, req, keep);
        let text = String::from_utf8(out).unwrap();
        let dated = text.lines().filter(|l| l.starts_with("date: ")).count();
        assert_eq!(dated, 1, "one Date: {text}");
        let undated = text
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: ") || headers.iter().any(|(n, _)| *n == "date"))
            .collect();
        (undated, framing)
    }

    #[test]
    fn response_heads_are_framed_as_hyper_frames_them() {
        const GET: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\n\r\n";
        const OLD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
        const OLD_KEPT: &[u8] = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        use BodyLength::*;
        let cl5 = [("content-length", "5")];
        for (request, status, headers, body, keep, head, framing) in [
            // The endpoint's length goes on.
            (
                GET,
                200,
                &cl5[..],
                Known(5),
                true,
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            // A known length without the header gets one; none gets chunked.
            (
                GET,
                404,
                &[][..],
                Known(3),
                true,
                "HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n",
                Framing::Length(3),
            ),
            (
                GET,
                200,
                &[],
                Unknown,
                true,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                GET,
                308,
                &[],
                Empty,
                true,
                "HTTP/1.1 308 Permanent Redirect\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
            ),
            // HEAD: the GET's length, no body; 204 and 304: neither.
            (
                HEAD,
                200,
                &cl5,
                Empty,
                true,
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(0),
            ),
            (
                HEAD,
                404,
                &[],
                Known(3),
                true,
                "HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n",
                Framing::Length(0),
            ),
            (
                HEAD,
                200,
                &[],
                Unknown,
                true,
                "HTTP/1.1 200 OK\r\n\r\n",
                Framing::Length(0),
            ),
            (
                GET,
                204,
                &[],
                Empty,
                true,
                "HTTP/1.1 204 No Content\r\n\r\n",
                Framing::Length(0),
            ),
            (
                GET,
                304,
                &[("etag", "\"x\"")],
                Empty,
                true,
                "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
                Framing::Length(0),
            ),
            // Closing: said so to HTTP/1.1; HTTP/1.0 is told when kept.
            (
                GET,
                200,
                &cl5,
                Known(5),
                false,
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
                Framing::Length(5),
            ),
            (
                OLD,
                200,
                &cl5,
                Known(5),
                false,
                "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                OLD_KEPT,
                200,
                &cl5,
                Known(5),
                true,
                "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
                Framing::Length(5),
            ),
            // HTTP/1.0 has no chunks: until close, and not kept.
            (
                OLD_KEPT,
                200,
                &[],
                Unknown,
                true,
                "HTTP/1.0 200 OK\r\n\r\n",
                Framing::Close,
            ),
            // The endpoint's Date stays (no second one); hop-by-hop never
            // goes out from the response map.
            (
                GET,
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("keep-alive", "5"),
                ],
                Empty,
                true,
                "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
            ),
        ] {
            let got = encoded(request, status, headers, body, keep);
            assert_eq!(
                got,
                (head.to_string(), framing),
                "{} {status} {headers:?} {body:?} keep={keep}",
                String::from_utf8_lossy(request)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
    }

    #[test]
    fn request_head_in_origin_form() {
        let mut head = RequestHead::new(&Method::GET, "/a/b?c=d", 2);
        head.header(b"host", b"shop.test");
        head.header(b"x-forwarded-for", b"198.18.0.1");
        let head = head.finish();
        assert_eq!(
            String::from_utf8(head.bytes).unwrap(),
            "GET /a/b?c=d HTTP/1.1\r\nhost: shop.test\r\nx-forwarded-for: 198.18.0.1\r\n\r\n"
        );
        assert!(!head.is_head && head.may_repeat);
        // Absolute form without a path ("GET http://host?a=1").
        let head = RequestHead::new(&Method::GET, "?a=1", 0).finish();
        assert!(head.bytes.starts_with(b"GET /?a=1 HTTP/1.1\r\n"));
        let head = RequestHead::new(&Method::HEAD, "/", 0).finish();
        assert!(head.is_head && head.may_repeat);
        // Sent once and failed: a POST is not sent again.
        assert!(!RequestHead::new(&Method::POST, "/", 0).may_repeat);
    }
}
