//! Serving one client connection: HTTP/2 by its preface (plain) or ALPN
//! (TLS), HTTP/1 by the fast server while it takes the requests, then by
//! hyper's server for the rest of the connection. `Proxy` holds what every
//! connection shares: the pipeline, the shutdown signal, the open count.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;

pub(super) mod fast;
pub(super) mod guard;
mod hyper_server;
mod watchdog;

use self::hyper_server::{Proto, Served, serve_conn};
use super::{
    error::ProxyError,
    limits::Limits,
    pipeline::{Conn, Options, PeerCerts, Pipeline},
    route::RouteTable,
};

/// How long an idle HTTP/1 connection is kept once shutdown begins: long
/// enough for a client in a request loop to send its next request (which
/// is answered with `Connection: close`), short enough not to hold the
/// shutdown up.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The proxy: one pipeline, and the connections it serves.
pub struct Proxy {
    pub pipeline: Pipeline,
    /// Set once on SIGTERM: connections finish gracefully.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set once the listeners are to close (with `stopping`, or a moment
    /// after it when a new `ingressd` took the sockets over).
    closed: tokio::sync::watch::Sender<bool>,
    active_connections: AtomicI64,
}

impl Proxy {
    pub fn new(limits: Limits) -> Arc<Self> {
        Self::with_options(limits, Options::default())
    }

    /// With `options.fast_path` false, hyper's server and clients take
    /// everything (the operator's fallback the day a fast-path parser bug
    /// is found).
    pub fn with_options(limits: Limits, options: Options) -> Arc<Self> {
        Arc::new(Self {
            pipeline: Pipeline::new(limits, options),
            stopping: tokio::sync::watch::Sender::new(false),
            closed: tokio::sync::watch::Sender::new(false),
            active_connections: AtomicI64::new(0),
        })
    }

    /// Publishes a new table; requests in flight finish on the old one.
    pub fn swap_routes(&self, table: RouteTable) {
        self.pipeline.swap_routes(table);
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.pipeline.routes()
    }

    pub fn limits(&self) -> &Limits {
        self.pipeline.limits()
    }

    /// Stops taking connections, asks open ones to finish (HTTP/1.1 closes
    /// after the response in flight, or after a moment idle; HTTP/2 sends
    /// GOAWAY) and waits up to `grace` for them; returns how many were
    /// still open.
    pub async fn shut_down(&self, grace: Duration) -> i64 {
        self.begin_stopping();
        self.closed.send_replace(true);
        let open = || self.active_connections.load(Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        open()
    }

    /// Asks open connections to finish, the listeners still accepting (a
    /// hand-over: connections the kernel queued here before the switch
    /// are taken and answered, with `Connection: close`).
    pub fn begin_stopping(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the listeners are to close.
    pub async fn listeners_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves once shutting down has begun.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Counts a client connection as open until the guard is dropped.
    pub(in crate::l7) fn opened(&self) -> OpenConn<'_> {
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        OpenConn(&self.active_connections)
    }

    /// Prometheus text for the proxy's metrics.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        self.pipeline.render_metrics(&mut out);
        let _ = writeln!(
            out,
            "# HELP ingressd_http_active_connections Client connections open\n# TYPE ingressd_http_active_connections gauge\ningressd_http_active_connections {}",
            self.active_connections.load(Ordering::Relaxed)
        );
        out
    }
}

/// An open client connection, as counted in the metrics.
pub(in crate::l7) struct OpenConn<'a>(&'a AtomicI64);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a plain HTTP connection to its end. A client too slow with its
/// request head gets a 408 before the connection closes (RFC 9110
/// §15.5.9 allows it on idle connections too).
pub async fn serve_plain(stream: tokio::net::TcpStream, conn: Conn, proxy: Arc<Proxy>) {
    let since = tokio::time::Instant::now();
    let _open = proxy.opened();
    // The socket as it is while the fast server has it; split for hyper
    // only if it is handed over. Dropped, it is closed (no shutdown(2) of
    // its own).
    let mut stream = stream;
    let timeout = proxy.limits().client_header_timeout;
    let (head, proto) = match sniff(&mut stream, timeout).await {
        Sniffed::Head(head, proto) => (head, proto),
        Sniffed::Gone => return,
        // The same 408 as a slow head gets.
        Sniffed::TooSlow => {
            fast::refuse(&mut stream, &ProxyError::HeadTimeout, &proxy, conn).await;
            return;
        }
    };
    // Both servers' futures are boxed: unboxed, the connection's task
    // would be as large as the larger of them, and a task is copied
    // several times on its way to the scheduler, on every connection.
    let head = match proto {
        Proto::Http1 if proxy.pipeline.fast_path() => {
            let served = fast::serve(&mut stream, head, &proxy, conn, since);
            match Box::pin(served).await {
                fast::Ended::Closed | fast::Ended::Aborted => return,
                fast::Ended::HandOver(head) => head,
            }
        }
        _ => head.freeze(),
    };
    let (io, late) = KeepWriter::new(stream);
    let served = serve_conn(Prefixed { head, io }, proxy.clone(), conn, proto, None);
    let served = Box::pin(served).await;
    counted(&served, &proxy, conn);
    let Some(mut w) = late.take() else { return };
    if matches!(served, Served::HeadTimeout) {
        fast::refuse(&mut w, &ProxyError::HeadTimeout, &proxy, conn).await;
    } else {
        // Closed without a shutdown(2) of its own, as a plain socket is.
        w.forget();
    }
}

/// Counts and logs a head hyper refused (it answered it itself).
fn counted(served: &Served, proxy: &Proxy, conn: Conn) {
    if let Served::Refused(e) = served {
        proxy.pipeline.refused(e, conn);
    }
}

/// Serves a TLS connection, its handshake done, to its end: the HTTP that
/// ALPN chose.
pub async fn serve_tls(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    conn: Conn,
    proxy: Arc<Proxy>,
) {
    let _open = proxy.opened();
    let mut tls = tls;
    // What the client's certificate says is the route's to judge.
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| PeerCerts(c.iter().map(|c| c.clone().into_owned()).collect()));
    // Boxed, as for plain connections.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let served = serve_conn(tls, proxy.clone(), conn, Proto::Http2, peer);
        counted(&Box::pin(served).await, &proxy, conn);
        return;
    }
    if !proxy.pipeline.fast_path() {
        let io = Prefixed {
            head: Bytes::new(),
            io: tls,
        };
        let served = Box::pin(serve_conn(io, proxy.clone(), conn, Proto::Http1, peer)).await;
        counted(&served, &proxy, conn);
        return;
    }
    let since = tokio::time::Instant::now();
    let empty = bytes::BytesMut::new();
    let served = fast::serve(&mut tls, empty, &proxy, conn, since);
    match Box::pin(served).await {
        fast::Ended::HandOver(head) => {
            let io = Prefixed { head, io: tls };
            let served = serve_conn(io, proxy.clone(), conn, Proto::Http1, peer);
            counted(&Box::pin(served).await, &proxy, conn);
        }
        // close_notify first: a body that ends with the connection must be
        // told apart from a cut-off one. Cut off: dropped without
        // close_notify, which the client sees as the cut it is.
        fast::Ended::Aborted => {}
        fast::Ended::Closed => {
            use tokio::io::AsyncWriteExt as _;
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        }
    }
}

/// How HTTP/2 with prior knowledge starts (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of a plain connection (one read for a typical request:
/// a 24-byte sniff would cost a second one) and tells HTTP/2 prior
/// knowledge from HTTP/1.
async fn sniff(io: &mut tokio::net::TcpStream, timeout: Duration) -> Sniffed {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut head = bytes::BytesMut::with_capacity(4096);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut head)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Sniffed::Gone,
            Err(_) => return Sniffed::TooSlow,
        }
        let n = head.len().min(H2_PREFACE.len());
        if head[..n] != H2_PREFACE[..n] {
            return Sniffed::Head(head, Proto::Http1);
        }
        if n == H2_PREFACE.len() {
            return Sniffed::Head(head, Proto::Http2);
        }
    }
}

enum Sniffed {
    Head(bytes::BytesMut, Proto),
    /// Closed or failed before a byte came.
    Gone,
    /// Nothing within the client header timeout.
    TooSlow,
}

/// An IO that reads `head` before the rest of `io`.
struct Prefixed<I> {
    head: Bytes,
    io: I,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let chunk = self.head.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

crate::l7::io::write_through!(Prefixed);

/// A client socket as hyper's IO, whose write half outlives hyper: when
/// hyper drops the connection (after a header timeout, say) the write half
/// goes to the slot instead of being shut down, so a 408 can still be sent.
/// (No second descriptor: `try_clone` would cost a dup and an epoll
/// deregistration and registration on every connection.)
struct KeepWriter {
    read: tokio::net::tcp::OwnedReadHalf,
    write: Option<tokio::net::tcp::OwnedWriteHalf>,
    slot: Arc<LateWriter>,
}

#[derive(Default)]
struct LateWriter(Mutex<Option<tokio::net::tcp::OwnedWriteHalf>>);

impl LateWriter {
    fn take(&self) -> Option<tokio::net::tcp::OwnedWriteHalf> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl KeepWriter {
    fn new(stream: tokio::net::TcpStream) -> (Self, Arc<LateWriter>) {
        let (read, write) = stream.into_split();
        let slot = Arc::new(LateWriter::default());
        let io = KeepWriter {
            read,
            write: Some(write),
            slot: slot.clone(),
        };
        (io, slot)
    }

    fn writer(&mut self) -> std::io::Result<&mut tokio::net::tcp::OwnedWriteHalf> {
        self.write
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for KeepWriter {
    fn drop(&mut self) {
        *self.slot.0.lock().unwrap_or_else(|e| e.into_inner()) = self.write.take();
    }
}

impl tokio::io::AsyncRead for KeepWriter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for KeepWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.writer() {
            Ok(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.writer() {
            Ok(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.writer() {
            Ok(w) => std::pin::Pin::new(w).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.writer() {
            Ok(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}
