//! Upstream: which endpoint (`pick`), the next endpoint when one fails
//! (`proxy-next-upstream`), and the clients that carry a request there: the
//! fast HTTP/1 client (`fast`) for requests without a body, hyper's
//! (`hyper_client`) for bodies, upgrades and HTTP/2 endpoints. `send_once` is the
//! one place a client is chosen; every failure comes back as a
//! `ProxyError`.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, Response, StatusCode};

use super::{
    body::Body,
    error::ProxyError,
    http1::{head::RequestHead, tokens::strip_hop_by_hop},
    route::{
        annotations::next_upstream::{MAX_TRIES, NextUpstream},
        backend_tls::BackendTls,
    },
};

pub mod body;
pub(super) mod fast;
mod hyper_client;
mod idle;
pub mod pick;
pub mod sticky;

use body::{BodyWatch, ReadTimeout, ReqBody};
pub(in crate::l7) use hyper_client::{MAX_HEAD_BYTES, connect_h1};

/// How long to wait for an endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// For the response head once the request is sent, and between two
    /// reads of the body.
    pub read: Duration,
    /// For the endpoint to take more of a request body the client sends.
    pub send: Duration,
}

/// A request on its way to an endpoint, by the client that carries it.
pub enum Outbound {
    /// The fast client: the head, ready to write (no body, HTTP/1.1).
    Fast(RequestHead),
    /// hyper's client: a body, an upgrade, HTTP/2 (`h2`) or TLS.
    Hyper {
        req: Box<Request<ReqBody>>,
        h2: bool,
        tls: Option<Arc<BackendTls>>,
    },
}

/// A failed exchange with one endpoint: what went wrong, and the request
/// when it never left (then it may go to another endpoint).
pub struct Failure<R> {
    pub error: ProxyError,
    pub unsent: Option<R>,
}

impl Outbound {
    /// The same request again, for another endpoint after this one took
    /// it: only without a body (one that went out is not kept) and
    /// without an upgrade, and only if it may be repeated.
    fn replica(&self, non_idempotent: bool) -> Option<Outbound> {
        match self {
            Outbound::Fast(head) => {
                (head.may_repeat || non_idempotent).then(|| Outbound::Fast(head.clone()))
            }
            Outbound::Hyper { req, h2, tls } => {
                use hyper::body::Body as _;
                let repeatable = req.method().is_idempotent() || non_idempotent;
                if !repeatable
                    || !req.body().is_end_stream()
                    || req.headers().contains_key(hyper::header::UPGRADE)
                {
                    return None;
                }
                let mut again = Request::new(ReqBody::default());
                *again.method_mut() = req.method().clone();
                *again.uri_mut() = req.uri().clone();
                *again.version_mut() = req.version();
                *again.headers_mut() = req.headers().clone();
                Some(Outbound::Hyper {
                    req: Box::new(again),
                    h2: *h2,
                    tls: tls.clone(),
                })
            }
        }
    }
}

impl<R> Failure<R> {
    /// Failed before the request went out: it comes back for another try.
    fn unsent(error: ProxyError, req: R) -> Self {
        Self {
            error,
            unsent: Some(req),
        }
    }

    fn sent(error: ProxyError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }

    fn map<S>(self, f: impl FnOnce(R) -> S) -> Failure<S> {
        Failure {
            error: self.error,
            unsent: self.unsent.map(f),
        }
    }
}

/// A client of endpoints.
pub trait Client {
    type Request;

    fn send(
        &self,
        addr: SocketAddr,
        req: Self::Request,
        t: Timeouts,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Failure<Self::Request>>> + Send;
}

/// hyper's clients over TLS with one set of settings.
struct TlsPools {
    h1: hyper_client::H1Pool,
    h2: hyper_client::H2Pool,
}

/// A TCP connection to an endpoint, within `timeout`.
async fn connect_endpoint(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProxyError::ConnectFailed(Box::new(e))),
        Err(_) => return Err(ProxyError::ConnectTimedOut),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The endpoint clients and the choice between endpoints, shared by every
/// request.
pub struct Upstreams {
    fast: fast::FastPool,
    h1: hyper_client::H1Pool,
    h2: hyper_client::H2Pool,
    /// TLS connections, by the settings they were made with.
    tls: Mutex<HashMap<u64, Arc<TlsPools>>>,
    idle_keepalive: Duration,
    pub picker: pick::Balancer,
    connect_errors: AtomicU64,
}

impl Upstreams {
    pub fn new(idle_keepalive: Duration) -> Self {
        Self {
            fast: fast::FastPool::new(idle_keepalive),
            h1: hyper_client::H1Pool::new(idle_keepalive, None),
            h2: hyper_client::H2Pool::default(),
            tls: Mutex::default(),
            idle_keepalive,
            picker: pick::Balancer::default(),
            connect_errors: AtomicU64::new(0),
        }
    }

    /// Forgets what is known of endpoints no route has any more, and the
    /// TLS connections of settings no route has (`tls_live`).
    pub fn retain(
        &self,
        live: &std::collections::HashSet<SocketAddr>,
        tls_live: &std::collections::HashSet<u64>,
    ) {
        self.picker.retain(live);
        self.h1.idle.retain(live);
        self.fast.idle.retain(live);
        let mut tls = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        tls.retain(|id, _| tls_live.contains(id));
        for pools in tls.values() {
            pools.h1.idle.retain(live);
        }
    }

    /// The connections made with these TLS settings.
    fn tls_pools(&self, tls: &Arc<BackendTls>) -> Arc<TlsPools> {
        let mut map = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tls.id)
            .or_insert_with(|| {
                Arc::new(TlsPools {
                    h1: hyper_client::H1Pool::new(self.idle_keepalive, Some(tls.clone())),
                    h2: hyper_client::H2Pool::with_tls(tls.clone()),
                })
            })
            .clone()
    }

    pub fn connect_errors(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed)
    }

    /// The one place a request's client is chosen.
    async fn send_once(
        &self,
        addr: SocketAddr,
        out: Outbound,
        t: Timeouts,
    ) -> Result<Response<Body>, Failure<Outbound>> {
        // The less common paths are boxed: an inline future as large as the
        // largest of them would be copied around on every request.
        match out {
            Outbound::Fast(head) => self
                .fast
                .send(addr, head, t)
                .await
                .map_err(|f| f.map(Outbound::Fast)),
            Outbound::Hyper { req, h2, tls } => {
                let pools = tls.as_ref().map(|t| self.tls_pools(t));
                let (h1_pool, h2_pool) = match &pools {
                    Some(p) => (&p.h1, &p.h2),
                    None => (&self.h1, &self.h2),
                };
                let sent = if h2 {
                    Box::pin(h2_pool.send(addr, *req, t)).await
                } else {
                    Box::pin(h1_pool.send(addr, *req, t)).await
                };
                let resp = sent.map_err(|f| {
                    f.map(|req| Outbound::Hyper {
                        req: Box::new(req),
                        h2,
                        tls,
                    })
                })?;
                settled(resp, t.read).map_err(Failure::sent)
            }
        }
    }

    /// Sends to one of `addrs`, and to the next one (a different endpoint
    /// each time, `next.tries` in all) when the failure is one `next`
    /// lists, as nginx's `proxy_next_upstream`. A request that never left
    /// (the connect failed, or a pooled connection closed before taking
    /// it) goes again whole, its body included; one that left goes again
    /// only if it has no body and may be repeated (idempotent, or
    /// `non_idempotent`). The response timeout counts from the end of the
    /// request body (`watch`), so a slow upload is the client's time (408),
    /// not the endpoint's; a connect has its own timeout, which it does
    /// not eat into. `prefer` (a session's endpoint, one of `addrs`) is
    /// tried first, whatever its state.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        out: Outbound,
        watch: Option<&BodyWatch>,
        addrs: &[SocketAddr],
        prefer: Option<SocketAddr>,
        t: Timeouts,
        next: &NextUpstream,
        ewma: bool,
        upstream: &str,
        request_id: &hyper::header::HeaderValue,
    ) -> Result<(Response<Body>, SocketAddr), ProxyError> {
        let started = Instant::now();
        let tries = (next.tries.clamp(1, MAX_TRIES)) as usize;
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIES as usize];
        let mut pending = Some(out);
        let mut last = None;
        for attempt in 0..tries {
            if attempt > 0 && next.within.is_some_and(|w| started.elapsed() >= w) {
                break;
            }
            let Some(out) = pending.take() else { break };
            let chosen = match prefer {
                Some(p) if attempt == 0 && addrs.contains(&p) => Some((p, self.picker.hold(p))),
                _ => self.picker.pick(addrs, &tried[..attempt], ewma),
            };
            let Some((addr, in_flight)) = chosen else {
                break;
            };
            tried[attempt] = addr;
            let untried = addrs.iter().any(|a| !tried[..=attempt].contains(a));
            // What goes to the next endpoint if this one fails after the
            // request left.
            let spare = if attempt + 1 < tries && untried {
                out.replica(next.non_idempotent)
            } else {
                None
            };
            let response_deadline = async {
                // An endpoint that stops taking the body times out as one
                // that does not answer (nginx's proxy_send_timeout).
                if let Some(w) = watch
                    && !w.sent(t.send, t.connect).await
                {
                    return;
                }
                tokio::time::sleep(t.connect + t.read).await;
            };
            // Timed only for `ewma` (a clock read per request otherwise).
            let sending = ewma.then(Instant::now);
            let outcome = tokio::select! {
                r = self.send_once(addr, out, t) => r,
                () = response_deadline => Err(Failure::sent(ProxyError::UpstreamTimeout)),
            };
            // With the request's ID, as its access-log line and the
            // endpoint's X-Request-ID say it.
            let id = request_id.to_str().unwrap_or_default();
            let failure = match outcome {
                Ok(resp) => {
                    in_flight.report(true);
                    if let Some(sent) = sending {
                        in_flight.took(sent.elapsed());
                    }
                    let status = resp.status().as_u16();
                    match spare {
                        Some(spare) if next.after_status(status) => {
                            tracing::warn!(request_id = id, %upstream, endpoint = %addr, attempt, status, "upstream answered a proxy-next-upstream status; next endpoint");
                            pending = Some(spare);
                            last = Some(Ok((resp, addr)));
                            continue;
                        }
                        _ => return Ok((resp, addr)),
                    }
                }
                Err(f) => f,
            };
            // A body cut off for the client's fault is the answer,
            // whatever the endpoint made of the cut-off request.
            if let Some(client) = watch.and_then(BodyWatch::failure) {
                return Err(client);
            }
            if matches!(
                failure.error,
                ProxyError::ConnectFailed(_) | ProxyError::ConnectTimedOut
            ) {
                in_flight.report(false);
                self.connect_errors.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(request_id = id, %upstream, endpoint = %addr, attempt, error = %failure.error, "upstream request failed");
            let listed = match failure.error {
                ProxyError::ConnectFailed(_) | ProxyError::UpstreamFailed(_) => next.error,
                ProxyError::ConnectTimedOut | ProxyError::UpstreamTimeout => next.timeout,
                ProxyError::UpstreamProtocol(_) => next.invalid_header,
                _ => false,
            };
            pending = if listed {
                failure.unsent.or(spare)
            } else {
                None
            };
            last = Some(Err(failure.error));
        }
        last.unwrap_or(Err(ProxyError::NoEndpoints))
    }
}

/// A response from hyper's clients as the fast client gives one: refused
/// when framed two ways (hyper would take Transfer-Encoding over
/// Content-Length; the fast client and nginx answer 502), without the
/// endpoint connection's own headers, and with the read timeout held
/// between two reads of the body. A 101 is left whole: its connection is
/// taken over.
pub(in crate::l7) fn settled(
    resp: Response<Body>,
    read: Duration,
) -> Result<Response<Body>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp);
    }
    let headers = resp.headers();
    let te = headers.contains_key(hyper::header::TRANSFER_ENCODING);
    if te && headers.contains_key(hyper::header::CONTENT_LENGTH) {
        return Err(ProxyError::UpstreamProtocol(
            "both Transfer-Encoding and Content-Length in the response".into(),
        ));
    }
    // RFC 9112 §6.1 (hyper checks it only where a body follows).
    if te && resp.version() == hyper::Version::HTTP_10 {
        return Err(ProxyError::UpstreamProtocol(
            "Transfer-Encoding in an HTTP/1.0 response".into(),
        ));
    }
    // hyper's buffer bound lets a head past it by up to one read: held to
    // the fast client's bound here, measured as it came on the wire.
    let head: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if head > MAX_HEAD_BYTES {
        return Err(ProxyError::UpstreamProtocol(
            "response head too large".into(),
        ));
    }
    let mut resp = resp;
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|inner| ReadTimeout::wrap(inner, read)))
}
