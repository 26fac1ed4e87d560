//! The checks every HTTP/1 request head passes before anything acts on
//! it, whichever server reads it, as nginx makes them: CONNECT → 405; an
//! HTTP/1.1 request without a Host, or with two → 400; a body framed two
//! ways, or a way nginx does not take → 400/501.
use hyper::StatusCode;

use super::framing::{Refusal, RequestBody, request_body};
use crate::l7::error::ProxyError;

/// A refused head, as the pipeline answers it.
impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        match r.status.as_u16() {
            405 => ProxyError::MethodNotAllowed,
            501 => ProxyError::NotImplemented,
            _ => ProxyError::BadHead(r.why),
        }
    }
}

/// The request's body framing, or why the head is refused.
pub fn check_head(req: &httparse::Request<'_, '_>) -> Result<RequestBody, Refusal> {
    if req.method == Some("CONNECT") {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            why: "CONNECT is not proxied",
        });
    }
    let http10 = req.version == Some(0);
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            why: "two Host headers",
        });
    }
    if hosts == 0 && !http10 {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            why: "an HTTP/1.1 request without Host",
        });
    }
    request_body(req.headers, http10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<RequestBody, u16> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut slots);
        let full = format!("{text}\r\n");
        assert!(req.parse(full.as_bytes()).unwrap().is_complete(), "{text}");
        check_head(&req).map_err(|r| r.status.as_u16())
    }

    #[test]
    fn heads_nginx_refuses_are_refused() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(RequestBody::None)
        );
        assert_eq!(check("GET / HTTP/1.0\r\n"), Ok(RequestBody::None));
        assert_eq!(check("GET / HTTP/1.1\r\n"), Err(400));
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n"), Err(400));
        assert_eq!(check("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n"), Err(400));
        assert_eq!(check("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n"), Err(405));
        assert_eq!(
            check(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
            ),
            Err(400)
        );
    }
}
