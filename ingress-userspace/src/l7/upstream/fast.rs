//! HTTP/1.1 to endpoints for the common request (no body, no upgrade),
//! driven by the task already serving the client's request.
//!
//! hyper's client runs every upstream connection as a task of its own and
//! hands each request and response over channels: two task switches, an
//! mpsc and a oneshot per request, the largest share of the proxy's
//! userspace time under keep-alive load. Here the request head is written
//! and the response read by the request's own future, and the response body
//! reads the endpoint's socket directly. Requests with a body (which must
//! stream both ways at once), upgrades and HTTP/2 stay on hyper's client.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    Response, StatusCode, Version,
    body::Frame,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    Client, Failure, Timeouts,
    body::{READ_GAP_EXPIRED, ReadGap},
    connect_endpoint,
    hyper_client::MAX_HEAD_BYTES,
    idle::{IdleConns, Reusable},
};
use crate::l7::{
    body::Body,
    error::{BoxError, ProxyError},
    http1::{
        chunked::{Chunk, Decoded, decode_chunked},
        framing::{ResponseBody, response_body},
        head::RequestHead,
        tokens::{ConnectionTokens, is_hop_by_hop},
    },
};

/// Response headers accepted per head (hyper's client allows 100).
const MAX_HEADERS: usize = 100;
/// Reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// Pooled connections tried before a new one is made: a stale one (closed
/// by the endpoint meanwhile) is retried on, a run of them is not chased.
const MAX_POOLED_TRIES: usize = 3;
/// The in-task client: its idle connections, and what sends on them.
pub(super) struct FastPool {
    pub(super) idle: Arc<IdleConns<TcpStream>>,
}

impl FastPool {
    pub(super) fn new(idle_timeout: std::time::Duration) -> Self {
        Self {
            idle: IdleConns::new(idle_timeout),
        }
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        mut stream: TcpStream,
        head: &[u8],
        is_head: bool,
        read_timeout: std::time::Duration,
    ) -> Result<Response<Body>, Exchange> {
        stream.write_all(head).await.map_err(Exchange::NoAnswer)?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Once anything came back (a 1xx included), the request was seen.
        let mut answered = false;
        let parsed = loop {
            match parse_response_head(&mut buf, is_head).map_err(Exchange::Bad)? {
                Some(Head::Informational) => continue,
                Some(Head::Final(parsed)) => break parsed,
                None => {}
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(Exchange::Bad("response head too large"));
            }
            buf.reserve(READ_CHUNK);
            match stream.read_buf(&mut buf).await {
                Ok(0) if !answered => {
                    return Err(Exchange::NoAnswer(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(Exchange::Bad("endpoint closed within the response head")),
                Ok(_) => answered = true,
                Err(e) if !answered => return Err(Exchange::NoAnswer(e)),
                Err(_) => return Err(Exchange::Bad("endpoint reset within the response head")),
            }
        };
        let Parsed {
            response,
            framing,
            keep_alive,
        } = parsed;
        let body = FastBody {
            stream: Some(stream),
            buf,
            framing,
            keep_alive,
            back: Some((self.idle.clone(), addr)),
            gap: ReadGap::new(read_timeout),
        };
        Ok(response.map(|()| body.boxed()))
    }
}

impl Client for FastPool {
    type Request = RequestHead;

    /// Sends a request without a body and returns the response, its body
    /// still to be read from the endpoint. A pooled connection the
    /// endpoint closed just now fails before any answer; the request goes
    /// again on another connection when that cannot do harm (RFC 9110
    /// §9.2.2), as nginx does for idempotent requests.
    async fn send(
        &self,
        addr: SocketAddr,
        head: RequestHead,
        t: Timeouts,
    ) -> Result<Response<Body>, Failure<RequestHead>> {
        let is_head = head.is_head;
        for _ in 0..MAX_POOLED_TRIES {
            let Some(stream) = self.idle.checkout(addr) else {
                break;
            };
            match self
                .exchange(addr, stream, &head.bytes, is_head, t.read)
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(Exchange::NoAnswer(_)) if head.may_repeat => {}
                Err(e) => return Err(Failure::sent(e.into_error())),
            }
        }
        let stream = match connect_endpoint(addr, t.connect).await {
            Ok(s) => s,
            Err(error) => return Err(Failure::unsent(error, head)),
        };
        self.exchange(addr, stream, &head.bytes, is_head, t.read)
            .await
            .map_err(|e| Failure::sent(e.into_error()))
    }
}

/// An idle connection is still usable unless the reactor saw it become
/// readable: then it is closed, or sent something unasked for, and either
/// way is done. No system call otherwise.
impl Reusable for TcpStream {
    fn usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// How one exchange on one connection failed.
enum Exchange {
    /// Nothing came back: the connection was dead before the request.
    NoAnswer(io::Error),
    /// The endpoint answered something that is not HTTP/1.1 we accept.
    Bad(&'static str),
}

impl Exchange {
    fn into_error(self) -> ProxyError {
        match self {
            Exchange::NoAnswer(e) => ProxyError::UpstreamFailed(Box::new(e)),
            Exchange::Bad(why) => ProxyError::UpstreamProtocol(why.into()),
        }
    }
}

/// Where the response body is in its framing (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the endpoint closes the connection.
    Close,
}

#[derive(Debug)]
struct Parsed {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug)]
enum Head {
    /// A 1xx answer before the real one (103 Early Hints, 100 Continue):
    /// consumed from the buffer and skipped.
    Informational,
    Final(Parsed),
}

/// Parses a response head at the start of `buf`, consuming it; `None`
/// while it is incomplete. Headers about the endpoint's connection
/// (hop-by-hop, and those `Connection` names) are read here and not
/// passed on.
fn parse_response_head(buf: &mut BytesMut, is_head: bool) -> Result<Option<Head>, &'static str> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| "invalid response status")?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Only upgrade requests may be switched, and they go through hyper.
        return Err("101 to a request that asked for no upgrade");
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Head::Informational));
    }
    let http10 = parsed.version == Some(0);
    let framing = match response_body(status, is_head, http10, parsed.headers)? {
        ResponseBody::Length(n) => Framing::Length(n),
        ResponseBody::Chunked => Framing::Chunked(Chunk::Size),
        ResponseBody::Close => Framing::Close,
    };
    let mut connection = ConnectionTokens::default();
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let keep_alive = framing != Framing::Close && connection.keeps_alive(http10);
    // Header values become slices of the head: no copy per header.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| "invalid response header name")?;
        if is_hop_by_hop(&name) || connection.names(h.name.as_bytes()) {
            continue;
        }
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(spans.len() + 1);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| "invalid response header value")?;
        map.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = map;
    Ok(Some(Head::Final(Parsed {
        response,
        framing,
        keep_alive,
    })))
}

const ENDED_EARLY: &str = "endpoint closed within the body";

/// What the body's framing makes of the buffer next.
enum Step {
    Piece(Bytes),
    Done,
    NeedMore,
}

/// The next piece of a body by its framing (RFC 9112 §6.3); the one
/// decoder both the fast client and its differential check use.
fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, &'static str> {
    Ok(match framing {
        Framing::Length(0) => Step::Done,
        Framing::Length(left) if !buf.is_empty() => {
            let take = (*left).min(buf.len() as u64);
            *left -= take;
            Step::Piece(buf.split_to(take as usize).freeze())
        }
        Framing::Length(_) => Step::NeedMore,
        Framing::Chunked(state) => match decode_chunked(state, buf)? {
            Decoded::Data(d) => Step::Piece(d),
            Decoded::NeedMore => Step::NeedMore,
            Decoded::Done => Step::Done,
        },
        Framing::Close if !buf.is_empty() => Step::Piece(buf.split().freeze()),
        Framing::Close => Step::NeedMore,
    })
}

/// A whole response as the fast client reads it from `wire` (the
/// endpoint closing after it): its head and body, or why it is refused.
/// The fast client's reading, without a socket, for the differential
/// check against hyper's client.
pub(in crate::l7) fn read_whole(
    wire: &[u8],
    is_head: bool,
) -> Result<(Response<()>, Vec<u8>), &'static str> {
    let mut buf = BytesMut::from(wire);
    let parsed = loop {
        match parse_response_head(&mut buf, is_head)? {
            Some(Head::Informational) => continue,
            Some(Head::Final(parsed)) => break parsed,
            None if buf.len() >= MAX_HEAD_BYTES => return Err("response head too large"),
            None => return Err("endpoint closed within the response head"),
        }
    };
    let Parsed {
        response,
        mut framing,
        ..
    } = parsed;
    let mut body = Vec::new();
    loop {
        match step(&mut framing, &mut buf)? {
            Step::Piece(d) => body.extend_from_slice(&d),
            Step::Done => return Ok((response, body)),
            // The wire is all there is: its end ends the body.
            Step::NeedMore if framing == Framing::Close => return Ok((response, body)),
            Step::NeedMore => return Err(ENDED_EARLY),
        }
    }
}

/// The response body, read from the endpoint's connection as the client
/// takes it. Once read to its end the connection goes back to the pool
/// (if the endpoint keeps it alive); dropped before, it is closed.
struct FastBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    back: Option<(Arc<IdleConns<TcpStream>>, SocketAddr)>,
    gap: ReadGap,
}

impl FastBody {
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take()
            && self.keep_alive
            // Bytes after the response: the endpoint is not speaking HTTP.
            && self.buf.is_empty()
            && let Some((pool, addr)) = self.back.take()
        {
            pool.checkin(addr, stream);
        }
    }

    /// Reads more from the endpoint into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // read_buf reads once; a short read tells tokio the socket is
        // drained, so an idle pooled connection is not seen as readable.
        match pin!(stream.read_buf(&mut self.buf)).poll(cx) {
            Poll::Pending if self.gap.poll_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                READ_GAP_EXPIRED,
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.gap.read();
                ready
            }
        }
    }
}

impl hyper::body::Body for FastBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match step(&mut this.framing, &mut this.buf) {
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::Piece(data)) => {
                    if this.framing == Framing::Length(0) {
                        // Done with this frame: the connection can go back
                        // now, before the client has even been written to.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.stream = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(ENDED_EARLY.into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(n) => hyper::body::SizeHint::with_exact(n),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

impl Drop for FastBody {
    fn drop(&mut self) {
        // A body with nothing left (HEAD, 204, Content-Length: 0) may never
        // be polled: it is whole all the same.
        if hyper::body::Body::is_end_stream(self) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;
    use std::time::Duration;

    fn head(text: &str, is_head: bool) -> Result<Option<Head>, &'static str> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response_head(&mut buf, is_head)
    }

    fn final_head(text: &str) -> Parsed {
        match head(text, false) {
            Ok(Some(Head::Final(p))) => p,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let p = final_head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((p.framing, p.keep_alive), (Framing::Length(12), true));
        let p = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(p.framing, Framing::Chunked(Chunk::Size));
        // Not chunked last: only the close tells where it ends.
        let p = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((p.framing, p.keep_alive), (Framing::Close, false));
        let p = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((p.framing, p.keep_alive), (Framing::Close, false));
        let p = final_head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((p.framing, p.keep_alive), (Framing::Length(0), true));
        let p = final_head("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        assert_eq!(p.framing, Framing::Length(0));
        match head("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true) {
            Ok(Some(Head::Final(p))) => assert_eq!(p.framing, Framing::Length(0)),
            other => panic!("{other:?}"),
        }
        // The same length twice is one length; two lengths are none.
        let p = final_head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(p.framing, Framing::Length(5));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 Nope\r\n\r\n",
            "NOTHTTP 200 OK\r\n\r\n",
            // An empty item is no length, neither is an empty value.
            "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            // HTTP/1.0 has no Transfer-Encoding (RFC 9112 §6.1).
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn headers_about_the_connection_stay_here() {
        let p = final_head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
        );
        let names: Vec<&str> = p.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end", "content-length"]);
        let p = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(p.response.headers().is_empty());
    }

    #[test]
    fn connection_reuse_by_version_and_connection_header() {
        assert!(
            !final_head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!final_head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            final_head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(
            final_head(
                "HTTP/1.1 200 OK\r\nConnection: foo, keep-alive\r\nContent-Length: 0\r\n\r\n"
            )
            .keep_alive
        );
    }

    #[test]
    fn partial_heads_wait_and_informational_ones_are_skipped() {
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        ));
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"[..],
        );
        assert!(matches!(
            parse_response_head(&mut buf, false),
            Ok(Some(Head::Informational))
        ));
        match parse_response_head(&mut buf, false) {
            Ok(Some(Head::Final(p))) => {
                assert_eq!(p.response.headers()["x-a"], "b");
                assert!(!p.response.headers().contains_key("link"));
            }
            other => panic!("{other:?}"),
        }
        // The body's start stays in the buffer.
        assert_eq!(&buf[..], b"hi");
    }

    /// A connected pair on loopback: (ours, the endpoint's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (ours, theirs)
    }

    #[tokio::test]
    async fn pool_hands_out_live_connections_only() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let pool = IdleConns::<TcpStream>::new(Duration::from_secs(60));
        let (ours, _theirs) = pair().await;
        pool.checkin(addr, ours);
        assert!(pool.checkout(addr).is_some(), "an open idle connection");
        assert!(pool.checkout(addr).is_none(), "handed out once");

        // Closed by the endpoint while idle: seen by the reactor, dropped.
        let (ours, theirs) = pair().await;
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(5), ours.readable())
            .await
            .expect("the close arrives")
            .unwrap();
        pool.checkin(addr, ours);
        assert!(pool.checkout(addr).is_none(), "a closed connection");

        // Sent something nobody asked for: not HTTP we can trust.
        let (ours, mut theirs) = pair().await;
        theirs.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), ours.readable())
            .await
            .expect("the bytes arrive")
            .unwrap();
        pool.checkin(addr, ours);
        assert!(pool.checkout(addr).is_none(), "unasked-for bytes");

        // Idle past the keep-alive timeout.
        let pool = IdleConns::<TcpStream>::new(Duration::ZERO);
        let (ours, _theirs) = pair().await;
        pool.checkin(addr, ours);
        assert!(pool.checkout(addr).is_none(), "expired");
    }

    /// An endpoint answering every request on every connection with `ok`.
    async fn endpoint() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for _ in 0..100 {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_retried_only_when_that_is_safe() {
        let addr = endpoint().await;
        let pool = FastPool::new(Duration::from_secs(60));
        for (method, retried) in [(Method::GET, true), (Method::POST, false)] {
            // Closed by the endpoint, and no await since: the reactor has
            // not seen it, so the pool still takes it for alive.
            let (ours, theirs) = pair().await;
            drop(theirs);
            pool.idle.checkin(addr, ours);
            let head = RequestHead::new(&method, "/", 1).finish();
            let timeouts = Timeouts {
                connect: Duration::from_secs(5),
                read: Duration::from_secs(5),
                send: Duration::from_secs(5),
            };
            let result = pool.send(addr, head, timeouts).await;
            match result {
                Ok(resp) if retried => {
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(&body[..], b"ok");
                }
                Err(_) if !retried => {}
                Ok(_) => panic!("{method}: sent again after it may have been processed"),
                Err(e) => panic!("{method}: not retried: {}", e.error),
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_ends_after_the_read_timeout() {
        // Half the promised body, then nothing (the connection held open).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
                .await;
            let _ = held.await;
        });
        let pool = FastPool::new(Duration::from_secs(60));
        let head = RequestHead::new(&Method::GET, "/", 1).finish();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_millis(300),
            send: Duration::from_secs(5),
        };
        let resp = match pool.send(addr, head, timeouts).await {
            Ok(resp) => resp,
            Err(e) => panic!("head: {}", e.error),
        };
        let started = std::time::Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("ended by the read timeout, not the test's");
        assert!(body.is_err(), "a cut-off body is an error");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(hold);
    }
}
