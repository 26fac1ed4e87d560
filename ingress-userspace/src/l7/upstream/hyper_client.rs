//! hyper's clients, for what the fast client does not take: requests with
//! a body (streamed both ways at once), upgrades, and HTTP/2 endpoints.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{
    Client, Failure, Timeouts,
    body::ReqBody,
    connect_endpoint,
    idle::{IdleConns, Reusable},
};
use crate::l7::{
    body::Body,
    error::{BoxError, ProxyError},
    route::backend_tls::BackendTls,
};

type H1Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// The largest response head taken (nginx: "upstream sent too big header").
pub(in crate::l7) const MAX_HEAD_BYTES: usize = 64 * 1024;
type H2Sender = hyper::client::conn::http2::SendRequest<ReqBody>;

/// What became of a request hyper's client could not send: it comes back
/// whole when the connection closed before it went out.
fn failed(mut e: hyper::client::conn::TrySendError<Request<ReqBody>>) -> Failure<Request<ReqBody>> {
    let unsent = e.take_message();
    let error = e.into_error();
    Failure {
        error: classify(error),
        unsent,
    }
}

/// A hyper client error, as the proxy answers it.
fn classify(e: hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::UpstreamProtocol(Box::new(e))
    } else {
        ProxyError::UpstreamFailed(Box::new(e))
    }
}

/// hyper's HTTP/1.1 client connections to endpoints. A connection goes
/// back once its response body has been read to the end; a request a
/// pooled connection could not take (it closed meanwhile) goes out on a
/// new one.
pub(in crate::l7) struct H1Pool {
    pub(in crate::l7) idle: Arc<IdleConns<H1Sender>>,
    /// TLS to the endpoints (`backend-protocol: HTTPS`).
    tls: Option<Arc<BackendTls>>,
}

/// A TCP connection to an endpoint, with TLS over it when asked (within
/// the connect timeout, handshake included: the request has not left).
async fn connect_io(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    t: Timeouts,
) -> Result<Io, ProxyError> {
    let stream = connect_endpoint(addr, t.connect).await?;
    let Some(tls) = tls else {
        return Ok(Io::Plain(TokioIo::new(stream)));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(t.connect, connector.connect(tls.name.clone(), stream)).await {
        Ok(Ok(s)) => Ok(Io::Tls(TokioIo::new(Box::new(s)))),
        Ok(Err(e)) => Err(ProxyError::ConnectFailed(Box::new(e))),
        Err(_) => Err(ProxyError::ConnectTimedOut),
    }
}

/// A new HTTP/1.1 connection to `addr` (TLS over it when asked), not
/// pooled: the pool's, and external auth's one exchange per check.
pub(in crate::l7) async fn connect_h1(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    t: Timeouts,
) -> Result<H1Sender, ProxyError> {
    match connect_io(addr, tls, t).await? {
        Io::Plain(io) => handshake_h1(io).await,
        Io::Tls(io) => handshake_h1(io).await,
    }
}

async fn handshake_h1<I>(io: I) -> Result<H1Sender, ProxyError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        // A response head past this is refused (502), as the fast client
        // and nginx refuse one.
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(io)
        .await
        .map_err(|e| ProxyError::ConnectFailed(Box::new(e)))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// An endpoint connection, plain or TLS.
enum Io {
    Plain(TokioIo<tokio::net::TcpStream>),
    Tls(TokioIo<Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl Reusable for H1Sender {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

impl H1Pool {
    pub(in crate::l7) fn new(
        idle_timeout: std::time::Duration,
        tls: Option<Arc<BackendTls>>,
    ) -> Self {
        Self {
            idle: IdleConns::new(idle_timeout),
            tls,
        }
    }

    async fn connect(&self, addr: SocketAddr, t: Timeouts) -> Result<H1Sender, ProxyError> {
        connect_h1(addr, self.tls.as_deref(), t).await
    }

    /// The response, with its connection going back to the pool when the
    /// body is done (never after an upgrade: the connection is taken over).
    fn returning(
        &self,
        addr: SocketAddr,
        sender: H1Sender,
        resp: Response<Incoming>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(|b| b.map_err(BoxError::from).boxed());
        }
        let back = Some((self.idle.clone(), addr, sender));
        resp.map(|inner| Returning { inner, back }.boxed())
    }
}

impl Client for H1Pool {
    type Request = Request<ReqBody>;

    async fn send(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        t: Timeouts,
    ) -> Result<Response<Body>, Failure<Request<ReqBody>>> {
        let mut req = req;
        // A pooled connection first; it may have closed since (idle timeout
        // on the other side): then the unsent request goes on a new one.
        while let Some(mut sender) = self.idle.checkout(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(addr, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Failure::sent(classify(e.into_error()))),
                },
            }
        }
        let mut sender = match self.connect(addr, t).await {
            Ok(s) => s,
            Err(error) => return Err(Failure::unsent(error, req)),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.returning(addr, sender, resp)),
            Err(e) => Err(failed(e)),
        }
    }
}

/// A response body that returns its connection to the pool once read to
/// the end (checked when the body is dropped).
struct Returning {
    inner: Incoming,
    back: Option<(Arc<IdleConns<H1Sender>>, SocketAddr, H1Sender)>,
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if hyper::body::Body::is_end_stream(&self.inner)
            && let Some((pool, addr, sender)) = self.back.take()
        {
            pool.checkin(addr, sender);
        }
    }
}

/// One multiplexed HTTP/2 connection per endpoint, made on first use and
/// again when it closes. (The pooled client keys connections by the URI's
/// authority, which for HTTP/2 must stay the client's host.)
#[derive(Default)]
pub(in crate::l7) struct H2Pool {
    conns: std::sync::Mutex<HashMap<SocketAddr, H2Sender>>,
    /// TLS to the endpoints (`backend-protocol: GRPCS`).
    tls: Option<Arc<BackendTls>>,
}

impl H2Pool {
    pub(in crate::l7) fn with_tls(tls: Arc<BackendTls>) -> Self {
        Self {
            conns: Default::default(),
            tls: Some(tls),
        }
    }

    async fn handshake<I>(io: I) -> Result<H2Sender, ProxyError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| ProxyError::ConnectFailed(Box::new(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

impl H2Pool {
    async fn sender(&self, addr: SocketAddr, t: Timeouts) -> Result<H2Sender, ProxyError> {
        let open = |conns: &HashMap<SocketAddr, H2Sender>| {
            conns.get(&addr).filter(|s| !s.is_closed()).cloned()
        };
        let conns = || {
            self.conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(s) = open(&conns()) {
            return Ok(s);
        }
        // Connected without the lock held: one slow endpoint must not hold
        // up requests to the others.
        let sender = match connect_io(addr, self.tls.as_deref(), t).await? {
            Io::Plain(io) => Self::handshake(io).await?,
            Io::Tls(io) => Self::handshake(io).await?,
        };
        let mut conns = conns();
        // Another request may have connected meanwhile: one connection
        // per endpoint is kept (ours closes as its sender is dropped).
        if let Some(s) = open(&conns) {
            return Ok(s);
        }
        conns.insert(addr, sender.clone());
        Ok(sender)
    }
}

impl Client for H2Pool {
    type Request = Request<ReqBody>;

    async fn send(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        t: Timeouts,
    ) -> Result<Response<Body>, Failure<Request<ReqBody>>> {
        let mut sender = match self.sender(addr, t).await {
            Ok(s) => s,
            Err(error) => return Err(Failure::unsent(error, req)),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
            Err(e) => Err(failed(e)),
        }
    }
}
