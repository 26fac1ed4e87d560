//! HTTP/1.x from clients for the common request (no body, no upgrade),
//! read and answered by the connection's own task.
//!
//! hyper's server builds a header map and a `Request` for every request,
//! runs its dispatcher, starts a new header timer per request and copies
//! the response through buffers of its own: for a proxy that hands a
//! request head to an endpoint and its answer back, most of the userspace
//! time per request. Here the head is parsed in place (httparse), the
//! endpoint's head is written out with the first piece of its body in one
//! write, and one timer serves the whole connection.
//!
//! Whatever this server does not take (a request with a body, an upgrade,
//! a head hyper refuses with a status of its own, a route whose endpoints
//! speak HTTP/2) hands the connection to hyper's server, with every byte
//! read so far, for the rest of its life: those cases have one
//! implementation, hyper's.
use std::{mem::MaybeUninit, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http_body_util::BodyExt as _;
use hyper::{Method, Response, body::Body as _, http::uri::PathAndQuery};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::Proxy;
use crate::l7::{
    body::Body,
    error::ProxyError,
    http1::{
        framing::RequestBody,
        head::{Answering, BodyLength, Framing, encode_response_head, refusal},
        request::check_head,
        tokens::ConnectionTokens,
    },
    pipeline::{Conn, Handled, log::Pending, request::ClientHead},
};

/// hyper's request-target limit (414 above it): longer ones go to hyper.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Header slots on the stack; a larger `--max-headers` takes the heap.
const STACK_HEADERS: usize = 100;
/// Body pieces at least this large are written from where they are, not
/// copied behind the head.
const COPY_LIMIT: usize = 16 * 1024;
/// How long a client gets to take a 408 before the connection closes.
const LATE_ANSWER: Duration = Duration::from_secs(1);

/// How a connection left this server.
pub(super) enum Ended {
    /// It is over: the client closed it, was told to, or timed out.
    Closed,
    /// It broke off: the client left mid-request, or a response was cut
    /// off (TLS: no close_notify, so the client sees the cut).
    Aborted,
    /// hyper's server goes on from here, reading these bytes first.
    HandOver(Bytes),
}

/// What the start of the buffer holds.
enum Scan {
    /// Not a whole head yet.
    Partial,
    /// A request this server answers; its head is taken off the buffer.
    Whole(ClientHead),
    /// A request for hyper's server (the buffer is left as it was).
    HandOver,
    /// A head no server takes: answered, then closed.
    Refuse(ProxyError),
}

/// `--max-header-bytes` and `--max-headers`: 431 above them.
#[derive(Clone, Copy)]
struct HeadLimits {
    max_bytes: usize,
    max_headers: usize,
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// The fast path's one eligibility rule, its security boundary: it takes
/// a head that passed every check (`check_head`) when the request has no
/// body, asks for no upgrade and no `100 Continue`, and is in origin form.
/// Everything else goes to hyper's server (and a route whose endpoints
/// speak HTTP/2 hands the request back, see `Handled::HandBack`).
fn fast_path_takes(req: &httparse::Request<'_, '_>, body: RequestBody) -> bool {
    matches!(body, RequestBody::None | RequestBody::Length(0))
        && req.path.is_some_and(|t| t.starts_with('/'))
        && !req
            .headers
            .iter()
            .any(|h| eq(h.name.as_bytes(), "expect") || eq(h.name.as_bytes(), "upgrade"))
}

/// What the fast server makes of the start of `wire`, for the
/// differential check against hyper's server: the head it would answer,
/// `Err(None)` when it would hand the connection over or needs more, and
/// `Err(Some(status))` when it refuses.
pub(in crate::l7) fn scan_wire(
    wire: &[u8],
    max_bytes: usize,
    max_headers: usize,
) -> Result<ClientHead, Option<hyper::StatusCode>> {
    let mut buf = BytesMut::from(wire);
    match scan(
        &mut buf,
        HeadLimits {
            max_bytes,
            max_headers,
        },
    ) {
        Scan::Whole(head) => Ok(head),
        Scan::Partial | Scan::HandOver => Err(None),
        Scan::Refuse(e) => Err(Some(e.status())),
    }
}

/// Parses the request head at the start of `buf`.
fn scan(buf: &mut BytesMut, limits: HeadLimits) -> Scan {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => return Scan::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Scan::Refuse(ProxyError::HeadTooLarge);
        }
        Err(_) => return Scan::Refuse(ProxyError::BadHead("not an HTTP/1 request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Scan::Refuse(ProxyError::BadHead("not an HTTP/1 request head"));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Scan::Refuse(ProxyError::BadHead("not a method"));
    };
    if target.len() > MAX_TARGET {
        return Scan::Refuse(ProxyError::TargetTooLong);
    }
    let body = match check_head(&req) {
        Ok(body) => body,
        Err(r) => return Scan::Refuse(r.into()),
    };
    if !fast_path_takes(&req, body) {
        return Scan::HandOver;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let http10 = version == 0;
    let mut connection = ConnectionTokens::default();
    let mut host = None;
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if eq(name, "host") {
            host = Some(at(h.value));
        } else if eq(name, "connection") {
            connection.add(h.value);
        }
        fields.push((at(name), at(h.value)));
    }
    let listed = connection.named.iter().map(|t| at(t)).collect();
    let keep_alive = connection.keeps_alive(http10);
    let target_at = at(target.as_bytes());
    let bytes = buf.split_to(len).freeze();
    // Checked as hyper checks it, on the bytes themselves (no copy).
    let Ok(target) = PathAndQuery::from_maybe_shared(bytes.slice(target_at)) else {
        return Scan::Refuse(ProxyError::BadHead("not a request target"));
    };
    Scan::Whole(ClientHead {
        bytes,
        method,
        target,
        http10,
        keep_alive,
        fields,
        listed,
        host,
    })
}

/// Serves a client connection until it ends or must go to hyper. `buf`
/// holds what was read already; the first head is due within the header
/// timeout from `since`.
pub(super) async fn serve<I>(
    io: &mut I,
    mut buf: BytesMut,
    proxy: &Proxy,
    conn: Conn,
    since: tokio::time::Instant,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = proxy.limits().client_header_timeout;
    let keepalive = proxy.limits().client_keepalive;
    let limits = HeadLimits {
        max_bytes: proxy.limits().max_header_bytes,
        max_headers: proxy.limits().max_headers,
    };
    // One timer for the connection, moved on per request (a later
    // deadline on a registered timer is a store, not a new timer).
    let deadline = tokio::time::sleep_until(since + timeout);
    tokio::pin!(deadline);
    let stop = proxy.stopped();
    tokio::pin!(stop);
    let mut stopping = false;
    let mut out = Vec::with_capacity(4096);
    let mut waiting_since = Some(since);
    // Between two requests, nothing of the next read yet: the keep-alive
    // timeout holds, then the header timeout from its first bytes.
    let mut idle = false;
    loop {
        let head = loop {
            match scan(&mut buf, limits) {
                Scan::Whole(head) => break head,
                Scan::HandOver => return Ended::HandOver(buf.freeze()),
                Scan::Refuse(error) => {
                    refuse(io, &error, proxy, conn).await;
                    return Ended::Closed;
                }
                Scan::Partial => {}
            }
            if let Some(t) = waiting_since.take() {
                idle = buf.is_empty();
                let limit = if idle { keepalive } else { timeout };
                deadline.as_mut().reset(t + limit);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8192);
            }
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                () = &mut deadline => {
                    // Idle for the keep-alive timeout: closed without a
                    // word, as nginx does. A head that did not come in
                    // time: 408.
                    if !idle {
                        refuse(io, &ProxyError::HeadTimeout, proxy, conn).await;
                    }
                    return Ended::Closed;
                }
                () = &mut stop, if !stopping => {
                    stopping = true;
                    // Within a head: that request is answered (and the
                    // connection closed after it). Idle: a client in the
                    // middle of a loop sends its next request any moment,
                    // and closing under it would fail that request; it
                    // gets a moment to send it, answered with
                    // `Connection: close`, then the connection closes.
                    if buf.is_empty() {
                        let drain = tokio::time::Instant::now() + super::DRAIN_IDLE;
                        if drain < deadline.deadline() {
                            deadline.as_mut().reset(drain);
                        }
                    }
                    continue;
                }
            };
            match read {
                Ok(n) if n > 0 => {
                    if std::mem::take(&mut idle) {
                        deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + timeout);
                    }
                }
                // Gone, between requests or within one: nobody to answer.
                _ => return Ended::Closed,
            }
        };
        // A client that leaves while its request is out drops the request
        // (and its endpoint connection), as hyper and nginx do.
        let gone = client_gone(io, &mut buf, limits.max_bytes);
        let (resp, mut pending) = match proxy.pipeline.handle_fast(&head, conn, gone).await {
            Handled::Answer(resp, pending) => (resp, pending),
            Handled::HandBack => return Ended::HandOver(head.unread(&mut buf)),
            Handled::ClientLeft => return Ended::Aborted,
        };
        let keep = head.keep_alive() && !stopping && !proxy.is_stopping() && !keepalive.is_zero();
        let mut client = Client {
            io,
            buf: &mut buf,
            max: limits.max_bytes,
            send_timeout: timeout,
        };
        let wrote = write_response(&mut client, &mut out, resp, &head, keep, &mut pending).await;
        // Its line goes once its body has gone out.
        drop(pending);
        match wrote {
            Ok(Wrote::Whole(true)) => waiting_since = Some(tokio::time::Instant::now()),
            Ok(Wrote::Whole(false)) => return Ended::Closed,
            Ok(Wrote::CutOff) | Err(_) => return Ended::Aborted,
        }
    }
}

/// Resolves once the client has closed or broken its connection; what it
/// sends meanwhile (pipelined requests) is kept in `buf`, up to `max`.
async fn client_gone<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, max: usize) {
    loop {
        if buf.len() >= max {
            // Enough read ahead: the client waits (TCP pushes back).
            std::future::pending::<()>().await;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match io.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// The client's connection while a response goes out: written to, and
/// watched for the client leaving.
struct Client<'a, I> {
    io: &'a mut I,
    buf: &'a mut BytesMut,
    max: usize,
    /// How long a write may wait for the client to read (nginx's
    /// send_timeout): a client that stops reading does not hold its
    /// connection forever.
    send_timeout: Duration,
}

/// How a response went out.
#[derive(Debug, PartialEq, Eq)]
enum Wrote {
    /// Whole; whether the connection takes a next request.
    Whole(bool),
    /// Cut off: the endpoint failed within the body, or the client left.
    CutOff,
}

/// Answers a request that cannot be served (the connection closes after),
/// counted and logged; also hyper's path's 408.
pub(super) async fn refuse<I: AsyncWrite + Unpin>(
    io: &mut I,
    error: &ProxyError,
    proxy: &Proxy,
    conn: Conn,
) {
    proxy.pipeline.refused(error, conn);
    let answer = refusal(error.status());
    let written = async {
        io.write_all(&answer).await?;
        io.flush().await
    };
    let _ = tokio::time::timeout(LATE_ANSWER, written).await;
}

/// Writes a response; `Ok(true)` when the connection can take the next
/// request. The head goes out with the body's first piece when that is
/// at hand (one write for most responses).
async fn write_response<I: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<'_, I>,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    req: &ClientHead,
    keep: bool,
    pending: &mut Pending,
) -> std::io::Result<Wrote> {
    let io = &mut *client.io;
    let (parts, mut body) = resp.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    };
    out.clear();
    let answering = Answering {
        is_head: req.is_head(),
        http10: req.http10(),
    };
    let framing = encode_response_head(out, parts.status, &parts.headers, length, answering, keep);
    let keep = keep && framing != Framing::Close;
    let mut failed = false;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    if framing != Framing::Length(0) {
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    flush(io, out, client.send_timeout).await?;
                    tokio::select! {
                        biased;
                        frame = body.frame() => frame,
                        () = client_gone(io, client.buf, client.max) => return Ok(Wrote::CutOff),
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    // Trailers are not passed on (see inline_client).
                    _ => continue,
                },
                // The endpoint failed within the body: the client can only
                // tell by the connection closing before its end.
                Some(Err(_)) => {
                    failed = true;
                    break;
                }
            };
            pending.sent(data.len());
            let data = match framing {
                Framing::Length(_) => {
                    let n = (data.len() as u64).min(left);
                    left -= n;
                    data.slice(..n as usize)
                }
                Framing::Chunked => {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    data
                }
                Framing::Close => data,
            };
            if data.len() >= COPY_LIMIT {
                flush(io, out, client.send_timeout).await?;
                within(client.send_timeout, io.write_all(&data)).await?;
            } else {
                out.extend_from_slice(&data);
            }
            if framing == Framing::Chunked {
                out.extend_from_slice(b"\r\n");
            }
            // Written as it comes once there is a piece's worth: a body
            // the endpoint sends faster than the client reads must not
            // pile up here.
            if out.len() >= COPY_LIMIT {
                flush(io, out, client.send_timeout).await?;
            }
            if left == 0 {
                break;
            }
        }
    }
    match framing {
        Framing::Chunked if !failed => out.extend_from_slice(b"0\r\n\r\n"),
        // Shorter than announced: the connection must end to say so.
        Framing::Length(_) if left != 0 => failed = true,
        _ => {}
    }
    flush(io, out, client.send_timeout).await?;
    // A large response's buffer is not kept for the connection's life.
    if out.capacity() > 4 * COPY_LIMIT {
        *out = Vec::with_capacity(4096);
    }
    Ok(if failed {
        Wrote::CutOff
    } else {
        Wrote::Whole(keep)
    })
}

/// Writes out what `out` holds, through any buffer of the IO's own (TLS
/// holds what it encrypted until flushed), within `limit`.
async fn flush<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    let written = async {
        if !out.is_empty() {
            io.write_all(out).await?;
            out.clear();
        }
        io.flush().await
    };
    within(limit, written).await
}

/// A write that must be done within `limit` (TimedOut after).
async fn within(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, write).await {
        Ok(done) => done,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::pipeline::forwarding::Fields;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
    };

    fn scan_text(text: &[u8], limits: HeadLimits) -> (Scan, BytesMut) {
        let mut buf = BytesMut::from(text);
        let scanned = scan(&mut buf, limits);
        (scanned, buf)
    }

    fn whole(text: &[u8]) -> (ClientHead, BytesMut) {
        match scan_text(text, LIMITS) {
            (Scan::Whole(head), rest) => (head, rest),
            (other, _) => panic!("{}: {}", String::from_utf8_lossy(text), name(&other)),
        }
    }

    fn name(scan: &Scan) -> String {
        match scan {
            Scan::Partial => "partial".into(),
            Scan::Whole(_) => "whole".into(),
            Scan::HandOver => "hand over".into(),
            Scan::Refuse(e) => format!("refuse {}", e.status()),
        }
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_with_what_routing_needs() {
        let (head, rest) = whole(
            b"GET /a/b?c=d HTTP/1.1\r\nHost: Shop.test:8080\r\nCookie: x=1\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\r\nGET /next",
        );
        assert_eq!(&rest[..], b"GET /next", "the next request stays");
        assert_eq!(head.method(), Method::GET);
        assert_eq!(head.target().path(), "/a/b");
        assert_eq!(head.target().query(), Some("c=d"));
        assert_eq!(head.host(), Some("Shop.test:8080"));
        assert!(head.keep_alive());
        assert!(head.listed(b"x-secret") && !head.listed(b"cookie"));
        assert_eq!(head.first("cookie"), Some(&b"x=1"[..]));
        assert_eq!(head.value("x-secret").as_deref(), Some(&b"s"[..]));
        assert_eq!(head.count(), 4);
        let mut names = Vec::new();
        head.each(|n, _| names.push(String::from_utf8_lossy(n).into_owned()));
        assert_eq!(names, ["Host", "Cookie", "Connection", "X-Secret"]);
    }

    #[test]
    fn an_empty_body_said_is_no_body() {
        let (head, rest) =
            whole(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\nGET /");
        assert_eq!(head.method(), Method::POST);
        assert_eq!(head.first("content-length"), Some(&b"0"[..]));
        assert_eq!(&rest[..], b"GET /");
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        for (text, keep) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], true),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: Close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
        ] {
            let (head, _) = whole(text);
            assert_eq!(head.keep_alive(), keep, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn only_text_hosts_route() {
        let (head, _) = whole(b"GET / HTTP/1.1\r\nHost: \xffx\r\n\r\n");
        assert_eq!(head.host(), None);
        assert_eq!(head.first("host"), Some(&b"\xffx"[..]));
        let (head, _) = whole(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.host(), None);
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for text in [
            &b""[..],
            b"GET",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        ] {
            let (scanned, rest) = scan_text(text, LIMITS);
            assert!(
                matches!(scanned, Scan::Partial),
                "{text:?}: {}",
                name(&scanned)
            );
            assert_eq!(&rest[..], text, "nothing taken");
        }
    }

    #[test]
    fn bodies_upgrades_and_rare_forms_go_to_hyper_untouched() {
        for text in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let (scanned, rest) = scan_text(text, LIMITS);
            assert!(
                matches!(scanned, Scan::HandOver),
                "{}: {}",
                String::from_utf8_lossy(text),
                name(&scanned)
            );
            assert_eq!(&rest[..], text, "handed over whole");
        }
    }

    #[test]
    fn heads_no_server_takes_are_refused_with_their_status() {
        let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(1100));
        let long_partial = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(1100));
        let many: String = (0..9).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        let wide = HeadLimits {
            max_bytes: 2 * MAX_TARGET,
            max_headers: 8,
        };
        for (text, limits, status) in [
            (long_header.as_bytes(), LIMITS, 431),
            (long_partial.as_bytes(), LIMITS, 431),
            (many.as_bytes(), LIMITS, 431),
            (long_target.as_bytes(), wide, 414),
            (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", LIMITS, 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", LIMITS, 400),
            (b"GET / HTTP/1.1\r\n\r\n", LIMITS, 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", LIMITS, 405),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                LIMITS,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
                LIMITS,
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", LIMITS, 501),
            (b"GET /a`b HTTP/1.1\r\n\r\n", LIMITS, 400),
            (b"GET / HTTP/2.0\r\n\r\n", LIMITS, 400),
            (b"\x16\x03\x01\x00\x05hello\r\n\r\n", LIMITS, 400),
        ] {
            let (scanned, _) = scan_text(text, limits);
            assert!(
                matches!(&scanned, Scan::Refuse(e) if e.status().as_u16() == status),
                "{:.60}: {} (not {status})",
                String::from_utf8_lossy(text),
                name(&scanned)
            );
        }
        // At the limit is still fine; more headers fit a larger limit.
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(1024 - 32)
        );
        assert_eq!(exact.len(), 1024);
        assert!(matches!(
            scan_text(exact.as_bytes(), LIMITS).0,
            Scan::Whole(_)
        ));
        let more = HeadLimits {
            max_bytes: 4096,
            max_headers: 200,
        };
        let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(scan_text(text.as_bytes(), more).0, Scan::Whole(_)));
    }

    /// A body of `frames` pieces of `size` bytes, all ready at once, with
    /// no length known beforehand; counts the pieces taken from it.
    fn ready_body(
        frames: usize,
        size: usize,
        taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Body {
        let piece = Bytes::from(vec![b'x'; size]);
        let stream = futures_util::stream::iter((0..frames).map(move |_| {
            taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, crate::l7::error::BoxError>(hyper::body::Frame::data(piece.clone()))
        }));
        http_body_util::StreamBody::new(stream).boxed()
    }

    /// `write_response` on `io` as the in-task server calls it.
    async fn respond<I: AsyncRead + AsyncWrite + Unpin>(
        io: &mut I,
        request: &[u8],
        body: Body,
        keep: bool,
        send_timeout: Duration,
    ) -> std::io::Result<Wrote> {
        let (req, _) = whole(request);
        let mut buf = BytesMut::new();
        let mut client = Client {
            io,
            buf: &mut buf,
            max: 1024,
            send_timeout,
        };
        let mut pending = Pending::new(
            std::sync::Arc::new(crate::l7::stats::LabelStats::default()),
            None,
            crate::l7::pipeline::log::AccessLog::off(),
        );
        let mut out = Vec::new();
        let resp = Response::new(body);
        write_response(&mut client, &mut out, resp, &req, keep, &mut pending).await
    }

    /// What the client reads of a response written whole.
    async fn written(request: &[u8], body: Body, keep: bool) -> (Wrote, String) {
        use tokio::io::AsyncReadExt as _;
        let (mut theirs, mut ours) = tokio::io::duplex(1 << 20);
        let wrote = respond(&mut ours, request, body, keep, Duration::from_secs(5))
            .await
            .expect("written");
        drop(ours);
        let mut text = String::new();
        theirs.read_to_string(&mut text).await.unwrap();
        (wrote, text)
    }

    #[tokio::test]
    async fn chunked_bodies_end_with_the_last_chunk_also_when_the_connection_closes() {
        for keep in [true, false] {
            let body = ready_body(2, 5, Default::default());
            let (wrote, text) = written(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", body, keep).await;
            assert_eq!(wrote, Wrote::Whole(keep));
            assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
            assert!(
                text.ends_with("\r\n\r\n5\r\nxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n"),
                "{text}"
            );
        }
        // HTTP/1.0: until close, nothing added.
        let body = ready_body(2, 5, Default::default());
        let (wrote, text) = written(b"GET / HTTP/1.0\r\n\r\n", body, false).await;
        assert_eq!(wrote, Wrote::Whole(false));
        assert!(text.ends_with("\r\n\r\nxxxxxxxxxx"), "{text}");
    }

    #[tokio::test]
    async fn a_body_cut_off_by_the_endpoint_is_not_ended_cleanly() {
        let stream = futures_util::stream::iter([
            Ok(hyper::body::Frame::data(Bytes::from_static(b"half"))),
            Err::<hyper::body::Frame<Bytes>, crate::l7::error::BoxError>("endpoint reset".into()),
        ]);
        let body = http_body_util::StreamBody::new(stream).boxed();
        let (wrote, text) = written(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", body, true).await;
        assert_eq!(wrote, Wrote::CutOff);
        assert!(
            text.ends_with("4\r\nhalf\r\n"),
            "no last chunk after a failure: {text}"
        );
    }

    #[tokio::test]
    async fn a_fast_endpoint_and_a_slow_client_do_not_pile_up_in_memory() {
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let body = ready_body(1000, 8 * 1024, taken.clone());
        // A client that reads nothing: 64 KiB fit on the way, then writes wait.
        let (_theirs, mut ours) = tokio::io::duplex(64 * 1024);
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let sending = respond(&mut ours, request, body, true, Duration::from_secs(5));
        // It cannot finish; what matters is how much it took meanwhile.
        let blocked = tokio::time::timeout(Duration::from_millis(200), sending).await;
        assert!(
            blocked.is_err(),
            "a client reading nothing cannot take 8 MB"
        );
        let n = taken.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n <= 16,
            "{n} pieces of 8 KiB taken for a client that took 64 KiB"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_let_go_after_the_send_timeout() {
        let body = ready_body(100, 8 * 1024, Default::default());
        let (_theirs, mut ours) = tokio::io::duplex(64 * 1024);
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let sending = respond(&mut ours, request, body, true, Duration::from_millis(200));
        let ended = tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .expect("given up by the send timeout, not the test's");
        assert_eq!(
            ended.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test]
    async fn what_the_io_buffers_is_flushed() {
        use tokio::io::AsyncReadExt as _;
        // A writer that holds everything until flushed (as TLS does).
        let (mut theirs, ours) = tokio::io::duplex(1 << 16);
        let (rd, wr) = tokio::io::split(ours);
        let mut io = tokio::io::join(rd, tokio::io::BufWriter::new(wr));
        let body = ready_body(1, 3, Default::default());
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        respond(&mut io, request, body, true, Duration::from_secs(5))
            .await
            .unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), theirs.read(&mut got))
            .await
            .expect("the response reached the client")
            .unwrap();
        assert!(got[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
