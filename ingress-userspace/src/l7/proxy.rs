//! The hyper proxy, as explicit phases: route → choose endpoint → rewrite
//! headers → forward (a request that never left, as when the connect
//! fails, goes to one other endpoint)
//! → map errors to statuses → log. The route table is swapped whole
//! (`ArcSwap`) and read once per request: a change never drops a connection.
use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::{
    balance::Balancer,
    forwarding::{
        Client, Forwarding, HOP_BY_HOP, X_REQUEST_ID, is_hop_by_hop, joined_cookies, request_id,
        upstream_head,
    },
    idle::{IdleConns, Reusable},
    inline_client::{InlinePool, READ_GAP_EXPIRED, ReadGap, RequestHead},
    inline_server::{self, ClientHead},
    route::{Match, Route, RouteTable, Upstream, normalize_host, rewrite_path},
    stats::{LabelStats, Labels, Registry, StatsHandle},
};

pub type Body = BoxBody<Bytes, BoxError>;
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What goes upstream: the client's body, maybe cut off at the limit.
pub(super) type ReqBody = BoxBody<Bytes, BoxError>;

/// Timeouts and limits (flags of `ingressd run`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub upstream_connect_timeout: Duration,
    /// From request sent to response headers received.
    pub upstream_response_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub idle_keepalive: Duration,
    /// A client must send a whole request head within this (408 after it);
    /// also how long a response write waits for the client to read
    /// (in-task server), and the idle time of connections hyper serves.
    pub client_header_timeout: Duration,
    /// How long an idle HTTP/1 client connection stays open between
    /// requests (in-task server); zero: closed after each response.
    pub client_keepalive: Duration,
    /// A client sending a request body must not pause longer (408 after).
    pub client_body_timeout: Duration,
    /// Request head size (431 above it).
    pub max_header_bytes: usize,
    /// Request header count (431 above it).
    pub max_headers: usize,
    /// Request body size (413 above it); 0 for no limit.
    pub max_body_bytes: u64,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    /// ingress-nginx's defaults where it has them (client_header_timeout
    /// 60 s, proxy-body-size 1m, 4 × 8k header buffers).
    fn default() -> Self {
        Self {
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            idle_keepalive: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(60),
            client_keepalive: Duration::from_secs(75),
            client_body_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_connections: 16_384,
        }
    }
}

#[derive(Default)]
struct ProxyMetrics {
    by_label: Registry,
    connect_errors: AtomicU64,
    active_connections: AtomicI64,
}

pub struct Proxy {
    routes: ArcSwap<RouteTable>,
    /// HTTP/1.1 connections to endpoints for requests with a body or an
    /// upgrade (hyper's client).
    h1: H1Pool,
    /// HTTP/1.1 connections to endpoints for all other requests.
    inline: InlinePool,
    /// For Service ports whose appProtocol says HTTP/2 (h2c, gRPC).
    h2: H2Pool,
    balancer: Balancer,
    limits: Limits,
    metrics: ProxyMetrics,
    /// Where requests answered by the built-in default backend are counted.
    default_stats: Arc<LabelStats>,
    /// Set once on SIGTERM: listeners stop, connections finish gracefully.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The header count hyper's HTTP/1 parser allows when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Labels of requests answered by the built-in default backend.
const DEFAULT_LABEL: (&str, &str) = ("-", "default-backend");

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none (Connection among them): one pass tells.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed = connection_listed(headers);
    strip_listed_and_hop_by_hop(headers, &listed);
}

/// Removes the headers `Connection` named (`listed`) and the hop-by-hop ones.
fn strip_listed_and_hop_by_hop(headers: &mut HeaderMap, listed: &[HeaderName]) {
    for n in listed {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The elements of a comma-separated header (every line of it), trimmed.
fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the client's TE names "trailers".
fn wants_trailers(headers: &HeaderMap) -> bool {
    list_elements(headers, header::TE).any(|t| {
        let t = t.split(';').next().unwrap_or_default().trim();
        t.eq_ignore_ascii_case("trailers")
    })
}

/// Whether a header name (any case) is among those `Connection` named.
fn named(listed: &[HeaderName]) -> impl Fn(&[u8]) -> bool + '_ {
    move |name| {
        listed
            .iter()
            .any(|l| l.as_str().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// The headers `Connection` names: they are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    // Most messages name nothing: no list to build then.
    if !headers.contains_key(header::CONNECTION) {
        return Vec::new();
    }
    list_elements(headers, header::CONNECTION)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Who is asking, for the forwarding headers.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

impl Conn {
    fn client(&self) -> Client {
        Client {
            ip: self.peer.ip(),
            port: self.local.port(),
            tls: self.tls,
        }
    }
}

impl Proxy {
    pub fn new(limits: Limits) -> Arc<Self> {
        let metrics = ProxyMetrics::default();
        let default_stats = metrics
            .by_label
            .get(&(Arc::from(DEFAULT_LABEL.0), Arc::from(DEFAULT_LABEL.1)));
        Arc::new(Self {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            h1: H1Pool {
                idle: IdleConns::new(limits.idle_keepalive),
            },
            inline: InlinePool::new(limits.idle_keepalive),
            h2: H2Pool::default(),
            balancer: Balancer::default(),
            limits,
            metrics,
            default_stats,
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Publishes a new table; requests in flight finish on the old one.
    pub fn swap_routes(&self, table: RouteTable) {
        let mut table = table;
        let mut routes: Vec<&mut Route> = table.routes_mut().collect();
        let mut labels: Vec<Labels> = routes.iter().map(|r| label(r)).collect();
        // The built-in default backend's counters live on too.
        labels.push((Arc::from(DEFAULT_LABEL.0), Arc::from(DEFAULT_LABEL.1)));
        let handles = self.metrics.by_label.publish(&labels);
        for (route, stats) in routes.iter_mut().zip(handles) {
            route.stats = StatsHandle(Some(stats));
        }
        let live: HashSet<SocketAddr> = table.endpoints().collect();
        self.routes.store(Arc::new(table));
        self.balancer.retain(&live);
        self.h1.idle.retain(&live);
        self.inline.idle.retain(&live);
    }

    /// Stops taking connections, asks open ones to finish (HTTP/1.1 closes
    /// after the response in flight, HTTP/2 sends GOAWAY) and waits up to
    /// `grace` for them; returns how many were still open.
    pub async fn shut_down(&self, grace: Duration) -> i64 {
        self.stopping.send_replace(true);
        let open = || self.metrics.active_connections.load(Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        open()
    }

    /// Resolves once shutting down has begun.
    pub(super) async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(super) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts a client connection as open until the guard is dropped.
    fn opened(&self) -> OpenConn<'_> {
        self.metrics
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        OpenConn(&self.metrics.active_connections)
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Phase 1: route. Everything after works on the chosen route.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Conn) -> Response<Counted> {
        let started = Instant::now();
        // Held to the end: the chosen route is borrowed from it.
        let table = self.routes.load_full();
        // Kept for the log line after the request has moved on: the URI
        // and Host header share the request's buffer (no copy).
        let uri = req.uri().clone();
        let host_header = req.headers().get(header::HOST).cloned();
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| host_header.as_ref().and_then(|h| h.to_str().ok()));
        let path = uri.path();
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let method = req.method().clone();
        // HTTP/1 heads are held to --max-headers while they are parsed;
        // HTTP/2 ones (HPACK) only to their size, so counted here.
        let too_many =
            req.version() == Version::HTTP_2 && req.headers().len() > self.limits.max_headers;
        let (resp, route) = match table.lookup(host, path) {
            _ if too_many => (
                full(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many request headers\n",
                ),
                None,
            ),
            Match::Route(route) | Match::Default(Some(route)) => {
                let resp = match self.answer_here(target, path, route, conn, host) {
                    Some(resp) => resp,
                    None => self.forward(req, route, conn, host).await,
                };
                (resp, Some(route))
            }
            Match::Default(None) => (not_found(), None),
        };
        let (status, id) = (resp.status(), resp.headers().get(X_REQUEST_ID));
        let stats = self.account(
            route,
            status,
            id,
            started,
            method.as_str(),
            host,
            path,
            conn,
        );
        resp.map(|inner| Counted { inner, stats })
    }

    /// `handle` for a request the in-task HTTP/1 server read (no body, no
    /// upgrade): the same routing, answers, forwarding, counters and log
    /// line. `gone` resolves if the client leaves while the request is out:
    /// the request is dropped and counted as nginx counts it (499).
    pub(super) async fn handle_inline(
        &self,
        req: &ClientHead,
        conn: Conn,
        gone: impl std::future::Future<Output = ()>,
    ) -> Handled {
        let started = Instant::now();
        let table = self.routes.load_full();
        let host = req.host();
        let target = req.target();
        let path = target.path();
        let (resp, route) = match table.lookup(host, path) {
            Match::Route(route) | Match::Default(Some(route)) => {
                let resp = match self.answer_here(target.as_str(), path, route, conn, host) {
                    Some(resp) => resp,
                    None if speaks_h2_upstream(route) => return Handled::ToHyper,
                    None => tokio::select! {
                        biased;
                        resp = self.forward_inline(req, route, conn, host) => resp,
                        () = gone => {
                            let (method, route) = (req.method(), Some(route));
                            let method = method.as_str();
                            self.account(route, CLIENT_LEFT, None, started, method, host, path, conn);
                            return Handled::ClientLeft;
                        }
                    },
                };
                (resp, Some(route))
            }
            Match::Default(None) => (not_found(), None),
        };
        let (status, id) = (resp.status(), resp.headers().get(X_REQUEST_ID));
        let method = req.method().as_str();
        let stats = self.account(route, status, id, started, method, host, path, conn);
        Handled::Answer(resp, stats)
    }

    /// Counts a request by its route's labels and writes its access log
    /// line; returns where the response's bytes are counted.
    #[allow(clippy::too_many_arguments)]
    fn account(
        &self,
        route: Option<&Route>,
        status: StatusCode,
        request_id: Option<&HeaderValue>,
        started: Instant,
        method: &str,
        host: Option<&str>,
        path: &str,
        conn: Conn,
    ) -> Arc<LabelStats> {
        let stats = match route {
            // A table published without swap_routes has no handles yet.
            Some(r) => r
                .stats
                .0
                .clone()
                .unwrap_or_else(|| self.metrics.by_label.get(&label(r))),
            None => self.default_stats.clone(),
        };
        let took = started.elapsed();
        stats.observe(status.as_u16(), took);
        let (ingress, service) = route.map_or(DEFAULT_LABEL, |r| (&*r.ingress, &*r.service));
        tracing::info!(
            target: "access",
            method = %method,
            host = host.unwrap_or("-"),
            path,
            status = status.as_u16(),
            ingress,
            service,
            client = %conn.peer.ip(),
            request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
            ms = took.as_secs_f64() * 1e3,
            "request"
        );
        stats
    }

    /// Counts and logs a request refused before it was read whole (400,
    /// 408, 414, 431 from the in-task server, 408 from hyper's), under the
    /// default backend's labels, as nginx's default server has them.
    pub(super) fn refused(&self, status: StatusCode, conn: Conn) {
        self.account(None, status, None, Instant::now(), "-", None, "-", conn);
    }

    /// What the Ingress's annotations answer themselves (403 outside the
    /// allowed source ranges, redirects); `None` when the endpoint answers.
    /// Not async, so the request's future holds `forward`'s directly.
    fn answer_here(
        &self,
        target: &str,
        path: &str,
        route: &Route,
        conn: Conn,
        host: Option<&str>,
    ) -> Option<Response<Body>> {
        let policy = &route.policy;
        if !policy.allow.is_empty() && !policy.allow.iter().any(|c| c.contains(conn.peer.ip())) {
            return Some(full(StatusCode::FORBIDDEN, "forbidden\n"));
        }
        if let Some((to, code)) = &policy.redirect {
            // The one nginx variable such redirects use.
            return Some(redirect(*code, &to.replace("$request_uri", target)));
        }
        if let Some(protocol) = &policy.unsupported_backend {
            tracing::debug!(%protocol, "backend-protocol not supported");
            return Some(full(
                StatusCode::BAD_GATEWAY,
                "backend protocol not supported\n",
            ));
        }
        if route.ssl_redirect && !conn.tls {
            return Some(redirect_to_https(target, host));
        }
        if let Some(root) = &policy.app_root
            && path == "/"
        {
            return Some(redirect(StatusCode::FOUND, root));
        }
        None
    }

    /// Phases 2-5: endpoint, headers, forward with one retry, errors.
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
        conn: Conn,
        host: Option<&str>,
    ) -> Response<Body> {
        let addrs = match endpoints(route).await {
            Ok(addrs) => addrs,
            Err(answer) => return answer,
        };
        match self.prepare(req, route, conn, host, addrs[0]) {
            // Boxed: made in place once, where inline it would be copied
            // into each of the futures awaiting it, per request.
            Ok(out) => Box::pin(self.send(out, route, &addrs)).await,
            Err(answer) => *answer,
        }
    }

    /// `forward` for a request the in-task server read: always the
    /// in-task client (no body, no upgrade, HTTP/1.1 to the endpoint).
    async fn forward_inline(
        &self,
        req: &ClientHead,
        route: &Route,
        conn: Conn,
        host: Option<&str>,
    ) -> Response<Body> {
        let addrs = match endpoints(route).await {
            Ok(addrs) => addrs,
            Err(answer) => return answer,
        };
        let Some(target) = rewritten(route, req.target()) else {
            return invalid_rewrite();
        };
        let request_id = req
            .value("x-request-id")
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
            .unwrap_or_else(request_id);
        let forwarding = Forwarding::new(
            req,
            |name| req.listed(name),
            conn.client(),
            host,
            route.policy.upstream_vhost.as_deref(),
            &request_id,
        );
        let head = upstream_head(
            req.method(),
            target.as_str(),
            req,
            |name| req.listed(name),
            &forwarding,
            addrs[0],
        );
        let out = Outgoing {
            req: Outbound::Inline(head),
            downstream: None,
            request_id,
            watch: None,
            h2: false,
        };
        Box::pin(self.send(out, route, &addrs)).await
    }

    /// The request as it goes to an endpoint (forwarding headers, rewrite,
    /// body limits), or the answer that stops it. No await in here: what
    /// lives across the send is only what `Outgoing` holds, which keeps the
    /// request's future small (it is moved on every request).
    fn prepare(
        &self,
        mut req: Request<Incoming>,
        route: &Route,
        conn: Conn,
        host: Option<&str>,
        first: SocketAddr,
    ) -> Result<Outgoing, Box<Response<Body>>> {
        // What Connection names, read once: hop-by-hop headers, and
        // whether an upgrade (WebSocket and others) is asked for. Both
        // sides' connections are then taken over once the endpoint
        // answers 101, and spliced together.
        let listed = connection_listed(req.headers());
        let upgrade = listed
            .contains(&header::UPGRADE)
            .then(|| req.headers().get(header::UPGRADE).cloned())
            .flatten();
        let downstream = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(request_id);
        let policy = &route.policy;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let Some(path_and_query) = rewritten(route, &path_and_query) else {
            return Err(Box::new(invalid_rewrite()));
        };
        let h2 = speaks_h2_upstream(route);
        let max_body = policy.max_body.unwrap_or(self.limits.max_body_bytes);
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if max_body > 0 && declared.is_some_and(|n| n > max_body) {
            // Read and drop what the client still sends (bounded), so it
            // gets to read the 413 instead of a reset (nginx's lingering close).
            tokio::spawn(drain(body));
            return Err(Box::new(full(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            )));
        }
        // From the body itself, as hyper framed it.
        let bodiless = hyper::body::Body::is_end_stream(&body);
        let forwarding = Forwarding::new(
            &parts.headers,
            named(&listed),
            conn.client(),
            host,
            policy.upstream_vhost.as_deref(),
            &request_id,
        );
        // The common request (no body, no upgrade, HTTP/1.1 to the
        // endpoint) is written out here and answered in this task; the
        // others need hyper's client to stream both ways.
        if !h2 && bodiless && downstream.is_none() {
            let head = upstream_head(
                &parts.method,
                path_and_query.as_str(),
                &parts.headers,
                named(&listed),
                &forwarding,
                first,
            );
            return Ok(Outgoing {
                req: Outbound::Inline(head),
                downstream,
                request_id,
                watch: None,
                h2,
            });
        }
        let values = forwarding.owned();
        let cookie = joined_cookies(&parts.headers, &listed);
        // TE is hop-by-hop, but over HTTP/2 "trailers" is its one allowed
        // value and gRPC servers refuse calls without it: passed on to an
        // HTTP/2 endpoint when the client sent it (as nginx's grpc_pass).
        let te_trailers = h2 && wants_trailers(&parts.headers);
        strip_listed_and_hop_by_hop(&mut parts.headers, &listed);
        for (name, value) in values {
            parts.headers.insert(name, value);
        }
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if !h2 && let Some(cookie) = cookie.and_then(|c| HeaderValue::from_bytes(&c).ok()) {
            parts.headers.insert(header::COOKIE, cookie);
        }
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        // Streamed bodies without a length are cut off at the limit; every
        // body must keep arriving (slow senders get a 408).
        let (body, watch): (ReqBody, _) = if bodiless {
            (body.map_err(BoxError::from).boxed(), None)
        } else {
            let watch = Arc::new(BodyWatch::default());
            let timeout = self.limits.client_body_timeout;
            let body = ClientBody {
                inner: Some(body),
                left: if max_body > 0 && declared.is_none() {
                    max_body
                } else {
                    u64::MAX
                },
                timeout,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                watch: watch.clone(),
            };
            (body.boxed(), Some(watch))
        };
        let mut out = Request::from_parts(parts, body);
        if h2 {
            // HTTP/2 carries the host as :authority: keep the client's.
            let authority = policy
                .upstream_vhost
                .clone()
                .or_else(|| host.and_then(normalize_host))
                .unwrap_or_else(|| first.to_string());
            if let Ok(u) = format!("http://{authority}{path_and_query}").parse() {
                *out.uri_mut() = u;
            }
            *out.version_mut() = Version::HTTP_2;
            out.headers_mut().remove(header::HOST);
        } else {
            // HTTP/1.1 to the endpoint in origin form ("GET /path"), the Host
            // header carrying the client's host.
            *out.uri_mut() = Uri::from(path_and_query.into_owned());
            *out.version_mut() = Version::HTTP_11;
        }
        Ok(Outgoing {
            req: Outbound::Hyper(Box::new(out)),
            downstream,
            request_id,
            watch,
            h2,
        })
    }

    /// Sends to an endpoint. A request goes to a second endpoint only if
    /// it never left (the connect failed): then even a body is still whole,
    /// as nginx's proxy_next_upstream does for errors before sending.
    async fn send(&self, out: Outgoing, route: &Route, addrs: &[SocketAddr]) -> Response<Body> {
        let Outgoing {
            req: out,
            mut downstream,
            request_id,
            watch,
            h2,
        } = out;
        let policy = &route.policy;
        // The in-task client drops hop-by-hop headers while it parses.
        let stripped = matches!(out, Outbound::Inline(_));
        let mut pending = Some(out);
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); 2];
        let mut timed_out = false;
        for attempt in 0..tried.len() {
            let Some(out) = pending.take() else { break };
            let Some((addr, in_flight)) = self.balancer.pick(addrs, &tried[..attempt]) else {
                break;
            };
            tried[attempt] = addr;
            let connect_timeout = policy
                .connect_timeout
                .unwrap_or(self.limits.upstream_connect_timeout);
            let read_timeout = policy
                .read_timeout
                .unwrap_or(self.limits.upstream_response_timeout);
            // The less common paths are boxed: an inline future as large as
            // the largest of them would be copied around on every request.
            let sent = async {
                match out {
                    Outbound::Inline(head) => {
                        let timeouts = (connect_timeout, read_timeout);
                        self.inline.request(addr, head, timeouts).await
                    }
                    Outbound::Hyper(req) if h2 => {
                        Box::pin(self.h2.request(addr, *req, connect_timeout)).await
                    }
                    Outbound::Hyper(req) => {
                        Box::pin(self.h1.request(addr, *req, connect_timeout)).await
                    }
                }
            };
            // The response timeout counts from the end of the request body,
            // so a slow upload is the client's time (408), not the endpoint's;
            // a connect has its own timeout, which it does not eat into.
            let response_deadline = async {
                if let Some(w) = &watch {
                    w.done.notified().await;
                }
                tokio::time::sleep(connect_timeout + read_timeout).await;
            };
            let outcome = tokio::select! {
                r = sent => Ok(r),
                () = response_deadline => Err(()),
            };
            match outcome {
                Err(()) => return full(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
                Ok(Ok(mut resp)) => {
                    in_flight.report(true);
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(down) = downstream.take()
                    {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice(down, up));
                        return resp;
                    }
                    if !stripped {
                        strip_hop_by_hop(resp.headers_mut());
                        // The in-task client's body keeps the timeout itself.
                        let gap = ReadGap::new(read_timeout);
                        resp = resp.map(|inner| ReadTimeout { inner, gap }.boxed());
                    }
                    resp.headers_mut().insert(X_REQUEST_ID, request_id);
                    return resp;
                }
                Ok(Err(e)) => {
                    match watch.as_ref().map(|w| w.tripped.load(Ordering::Relaxed)) {
                        Some(TRIP_TOO_LARGE) => {
                            return full(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                        }
                        Some(TRIP_TIMEOUT) => {
                            return full(StatusCode::REQUEST_TIMEOUT, "request body timed out\n");
                        }
                        _ => {}
                    }
                    if e.connect {
                        in_flight.report(false);
                        self.metrics.connect_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    timed_out = e.error.is::<ConnectTimedOut>();
                    tracing::warn!(upstream = %route.upstream.name(), endpoint = %addr, attempt, error = %e.error, "upstream request failed");
                    pending = e.unsent;
                }
            }
        }
        if timed_out {
            return full(StatusCode::GATEWAY_TIMEOUT, "upstream connect timed out\n");
        }
        full(StatusCode::BAD_GATEWAY, "upstream connection failed\n")
    }

    /// Prometheus text for the proxy's metrics.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        self.metrics.by_label.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP ingressd_upstream_connect_errors_total Failed connects to endpoints\n# TYPE ingressd_upstream_connect_errors_total counter\ningressd_upstream_connect_errors_total {}",
            self.metrics.connect_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ingressd_http_active_connections Client connections open\n# TYPE ingressd_http_active_connections gauge\ningressd_http_active_connections {}",
            self.metrics.active_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ingressd_http_route_rules Host/path rules in the route table\n# TYPE ingressd_http_route_rules gauge\ningressd_http_route_rules {}",
            self.routes.load().len()
        );
        out
    }
}

/// The built-in default backend's answer.
fn not_found() -> Response<Body> {
    full(StatusCode::NOT_FOUND, "default backend - 404\n")
}

/// The addresses a route's requests go to (ExternalName resolved now),
/// or the answer when there are none.
async fn endpoints(route: &Route) -> Result<Cow<'_, [SocketAddr]>, Response<Body>> {
    let addrs: Cow<'_, [SocketAddr]> = match &*route.upstream {
        Upstream::Endpoints { addrs, .. } => Cow::Borrowed(addrs),
        Upstream::External { host, port, .. } => {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(a) => Cow::Owned(a.collect()),
                Err(_) => {
                    return Err(full(
                        StatusCode::BAD_GATEWAY,
                        "upstream name does not resolve\n",
                    ));
                }
            }
        }
        Upstream::Unavailable { .. } => Cow::Borrowed(&[]),
    };
    if addrs.is_empty() {
        return Err(full(
            StatusCode::SERVICE_UNAVAILABLE,
            "no endpoints available\n",
        ));
    }
    Ok(addrs)
}

/// The target after the route's rewrite-target (the same one when it has
/// none); `None` when the rewrite made something that is not a path.
fn rewritten<'a>(route: &Route, target: &'a PathAndQuery) -> Option<Cow<'a, PathAndQuery>> {
    let Some(path) = rewrite_path(route, target.path(), target.query()) else {
        return Some(Cow::Borrowed(target));
    };
    match path.parse() {
        Ok(pq) => Some(Cow::Owned(pq)),
        Err(_) => {
            tracing::warn!(ingress = %route.ingress, %path, "rewrite-target made an invalid path");
            None
        }
    }
}

fn invalid_rewrite() -> Response<Body> {
    full(
        StatusCode::BAD_GATEWAY,
        "rewrite-target made an invalid path\n",
    )
}

/// Whether the route's requests go to its endpoints in HTTP/2.
fn speaks_h2_upstream(route: &Route) -> bool {
    route.policy.h2
        || matches!(&*route.upstream, Upstream::Endpoints { app_protocol: Some(p), .. } if speaks_h2(p))
}

/// Discards a request body: at most 64 MiB, for at most 10 s.
async fn drain(body: Incoming) {
    let mut body = body;
    let mut left: u64 = 64 << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len() as u64));
            }
            _ => return,
        }
    }
}

/// A request ready for an endpoint, with what the proxy needs to see its
/// answer through.
struct Outgoing {
    req: Outbound,
    /// The client's side of an upgrade it asked for.
    downstream: Option<hyper::upgrade::OnUpgrade>,
    request_id: HeaderValue,
    watch: Option<Arc<BodyWatch>>,
    h2: bool,
}

/// A request on its way, by the client that sends it.
pub(super) enum Outbound {
    /// Through hyper's client: a body, an upgrade, or HTTP/2.
    Hyper(Box<Request<ReqBody>>),
    /// Through the in-task client: the head, ready to write.
    Inline(RequestHead),
}

/// A response body that adds what it streams to a byte counter.
pub struct Counted {
    inner: Body,
    stats: Arc<LabelStats>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.stats
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

const TRIP_TOO_LARGE: u8 = 1;
const TRIP_TIMEOUT: u8 = 2;

/// The client's request body on its way upstream: cut off past
/// `--max-body-size` (streamed bodies) or when the client stops sending for
/// `--client-body-timeout`. The upstream request then fails and `tripped`
/// says why (413 or 408); after a 413 what the client still sends is
/// drained so it can read the answer.
struct ClientBody {
    inner: Option<Incoming>,
    left: u64,
    timeout: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    watch: Arc<BodyWatch>,
}

/// What the proxy learns from a request body on its way upstream.
#[derive(Default)]
struct BodyWatch {
    /// Why the body was cut off (`TRIP_*`; 0 while it was not).
    tripped: std::sync::atomic::AtomicU8,
    /// Told once the whole body has been read (starts the response timeout).
    done: tokio::sync::Notify,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Some(Err("request body refused".into())));
        };
        match std::pin::Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > self.left {
                    self.watch.tripped.store(TRIP_TOO_LARGE, Ordering::Relaxed);
                    if let Some(rest) = self.inner.take() {
                        tokio::spawn(drain(rest));
                    }
                    return Poll::Ready(Some(Err("request body too large".into())));
                }
                self.left -= n;
                let next = tokio::time::Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                if self
                    .inner
                    .as_ref()
                    .is_some_and(hyper::body::Body::is_end_stream)
                {
                    self.watch.done.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.watch.done.notify_one();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.watch.tripped.store(TRIP_TIMEOUT, Ordering::Relaxed);
                    self.inner = None;
                    return Poll::Ready(Some(Err("request body timed out".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self
            .inner
            .as_ref()
            .is_some_and(hyper::body::Body::is_end_stream);
        if end {
            self.watch.done.notify_one();
        }
        end
    }
}

/// A response body from hyper's client that must keep coming: the read
/// timeout also holds between two reads of the body (see `ReadGap`).
struct ReadTimeout {
    inner: Body,
    gap: ReadGap,
}

impl hyper::body::Body for ReadTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.gap.poll_expired(cx) => {
                Poll::Ready(Some(Err(READ_GAP_EXPIRED.into())))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                this.gap.read();
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream failure: whether it happened while connecting (safe to retry
/// elsewhere, counts towards ejection) and what it was.
pub(super) struct UpstreamError {
    connect: bool,
    pub(super) error: BoxError,
    /// The request, when it never left: it may go to another endpoint.
    unsent: Option<Outbound>,
}

impl UpstreamError {
    pub(super) fn connect(error: BoxError, unsent: Outbound) -> Self {
        Self {
            connect: true,
            error,
            unsent: Some(unsent),
        }
    }

    pub(super) fn sent(error: impl Into<BoxError>) -> Self {
        Self {
            connect: false,
            error: error.into(),
            unsent: None,
        }
    }
}

/// A request the connection could not take (it closed before the request
/// went out) comes back whole, for another endpoint.
impl From<hyper::client::conn::TrySendError<Request<ReqBody>>> for UpstreamError {
    fn from(mut e: hyper::client::conn::TrySendError<Request<ReqBody>>) -> Self {
        let unsent = e.take_message().map(|r| Outbound::Hyper(Box::new(r)));
        Self {
            connect: false,
            error: Box::new(e.into_error()),
            unsent,
        }
    }
}

pub(super) type UpstreamResult = Result<Response<Body>, UpstreamError>;

type H1Sender = hyper::client::conn::http1::SendRequest<ReqBody>;
type H2Sender = hyper::client::conn::http2::SendRequest<ReqBody>;

/// An endpoint that did not take the connection within the connect
/// timeout: 504 when no other endpoint answers (nginx's status for it),
/// where a refused or reset connect is a 502.
#[derive(Debug)]
pub(super) struct ConnectTimedOut;

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connect timed out")
    }
}

impl std::error::Error for ConnectTimedOut {}

/// A TCP connection to an endpoint, within `timeout`.
pub(super) async fn connect_endpoint(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, BoxError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| BoxError::from(ConnectTimedOut))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// hyper's HTTP/1.1 client connections to endpoints. A connection goes
/// back once its response body has been read to the end; a request a
/// pooled connection could not take (it closed meanwhile) goes out on a
/// new one.
struct H1Pool {
    idle: Arc<IdleConns<H1Sender>>,
}

impl Reusable for H1Sender {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

impl H1Pool {
    async fn connect(addr: SocketAddr, connect_timeout: Duration) -> Result<H1Sender, BoxError> {
        let stream = connect_endpoint(addr, connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    async fn request(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> UpstreamResult {
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
                    None => return Err(UpstreamError::sent(e.into_error())),
                },
            }
        }
        let mut sender = match Self::connect(addr, connect_timeout).await {
            Ok(s) => s,
            Err(e) => return Err(UpstreamError::connect(e, Outbound::Hyper(Box::new(req)))),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.returning(addr, sender, resp)),
            Err(e) => Err(e.into()),
        }
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
struct H2Pool {
    conns: std::sync::Mutex<HashMap<SocketAddr, H2Sender>>,
}

impl H2Pool {
    async fn sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<H2Sender, BoxError> {
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
        let stream = connect_endpoint(addr, connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut conns = conns();
        // Another request may have connected meanwhile: one connection
        // per endpoint is kept (ours closes as its sender is dropped).
        if let Some(s) = open(&conns) {
            return Ok(s);
        }
        conns.insert(addr, sender.clone());
        Ok(sender)
    }

    async fn request(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> UpstreamResult {
        let mut sender = match self.sender(addr, connect_timeout).await {
            Ok(s) => s,
            Err(e) => return Err(UpstreamError::connect(e, Outbound::Hyper(Box::new(req)))),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
            Err(e) => Err(e.into()),
        }
    }
}

/// appProtocol values that mean HTTP/2 without TLS to the endpoint
/// (Kubernetes' `kubernetes.io/h2c`, and the common `h2c`, `grpc`).
fn speaks_h2(app_protocol: &str) -> bool {
    matches!(
        app_protocol.to_ascii_lowercase().as_str(),
        "kubernetes.io/h2c" | "h2c" | "grpc" | "http2"
    )
}

/// Copies bytes both ways between the client's and the endpoint's
/// upgraded connections until either side closes.
async fn splice(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(down, up) {
        Ok((d, u)) => {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(d), &mut TokioIo::new(u)).await;
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

fn label(route: &Route) -> Labels {
    (route.ingress.clone(), route.service.clone())
}

fn redirect(code: StatusCode, to: &str) -> Response<Body> {
    let mut resp = full(code, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_to_https(pq: &str, host: Option<&str>) -> Response<Body> {
    let host = host.and_then(normalize_host).unwrap_or_default();
    let mut resp = full(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// What became of a request the in-task server read.
pub(super) enum Handled {
    /// The answer, and where its bytes are counted.
    Answer(Response<Body>, Arc<LabelStats>),
    /// Untouched: only hyper's client can forward it (HTTP/2 endpoints),
    /// so the connection goes to hyper's server.
    ToHyper,
    /// The client left before the answer (counted as 499).
    ClientLeft,
}

/// nginx's status for a request whose client closed the connection first.
const CLIENT_LEFT: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// An open client connection, as counted in the metrics.
struct OpenConn<'a>(&'a AtomicI64);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which HTTP a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// A connection hyper serves that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection to its end, or asks it to finish once shutdown begins.
async fn drive<C: Graceful>(conn: C, proxy: &Proxy) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = proxy.stopped() => {
            conn.as_mut().graceful();
            conn.await
        }
    }
}

/// One client connection, plain or TLS, in the HTTP it speaks, until the
/// client goes away.
async fn serve_conn<I>(
    io: I,
    proxy: Arc<Proxy>,
    conn: Conn,
    proto: Proto,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let p = proxy.clone();
    let svc = service_fn(move |req| {
        let p = p.clone();
        async move { Ok::<_, Infallible>(p.handle(req, conn).await) }
    });
    let limits = &proxy.limits;
    let io = TokioIo::new(io);
    let result = match proto {
        Proto::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.client_header_timeout)
                // hyper answers 431 past these.
                .max_buf_size(limits.max_header_bytes.max(8192));
            // hyper's own limit is 100: told 100 again, it would build its
            // header slots element by element on every request instead of
            // leaving them uninitialised on the stack.
            if limits.max_headers != HYPER_MAX_HEADERS {
                b.max_headers(limits.max_headers);
            }
            drive(b.serve_connection(io, svc).with_upgrades(), &proxy).await
        }
        Proto::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .keep_alive_interval(Some(limits.client_header_timeout));
            // Boxed: HTTP/2's connection state is twice HTTP/1's, and an
            // unboxed one would make every connection's task that large.
            Box::pin(drive(b.serve_connection(io, svc), &proxy)).await
        }
    };
    result.map_err(Into::into)
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

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether a connection ended because the client was too slow sending a
/// request head (or sat idle that long).
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Socket options on the listener that accepted sockets inherit (Linux).
///
/// - TCP_NODELAY: saves a setsockopt per connection.
/// - TCP_DEFER_ACCEPT (nginx's `listen ... deferred`): the kernel hands a
///   connection to accept only once its first bytes are in, so the first
///   read finds the request instead of waiting a wake-up for it, and a
///   connection that sends nothing costs no task, no `--max-connections`
///   slot and no header timer until it does (or until the kernel gives up
///   deferring it after about a second and hands it over anyway). Every
///   protocol served here has the client speak first (HTTP/1, the HTTP/2
///   preface, a TLS ClientHello).
fn tune_listener(listener: &TcpListener) {
    set_tcp_option(listener, libc::TCP_NODELAY, 1, "TCP_NODELAY");
    set_tcp_option(listener, libc::TCP_DEFER_ACCEPT, 1, "TCP_DEFER_ACCEPT");
}

fn set_tcp_option(listener: &TcpListener, name: libc::c_int, value: libc::c_int, what: &str) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a socket we own, with a c_int of its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), option = what, "setting a listener option");
    }
}

async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            // TCP_NODELAY comes from the listener (set_nodelay).
            Ok(pair) => return pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts until shutdown begins, at most `--max-connections` at once,
/// and serves each connection on a task of its own.
async fn accept_loop<F, Fut>(listener: TcpListener, proxy: Arc<Proxy>, serve_one: F)
where
    F: Fn(tokio::net::TcpStream, Conn, Arc<Proxy>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tune_listener(&listener);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.limits.max_connections.max(1),
    ));
    // One wait for shutdown for the whole loop: made anew per connection it
    // would subscribe and register twice for every accept.
    let stop = proxy.stopped();
    tokio::pin!(stop);
    loop {
        // Dropping the listener on shutdown refuses new connections; shutdown
        // is checked first, also while waiting for a free slot.
        let permit = tokio::select! {
            biased;
            () = &mut stop => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => return,
            a = accept(&listener) => a,
        };
        let conn = Conn {
            peer,
            local,
            tls: false,
        };
        // The permit goes with the connection's future, not into an async
        // block around it: that would hold the future twice (as captured
        // and as awaited), and tasks are copied into place when spawned.
        let served = serve_one(stream, conn, proxy.clone());
        tokio::spawn(futures_util::FutureExt::map(served, move |()| drop(permit)));
    }
}

/// Serves plain HTTP on `listener` until shutdown. A client too slow with
/// its request head gets a 408 before the connection closes (RFC 9110
/// §15.5.9 allows it on idle connections too).
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    accept_loop(listener, proxy, |stream, conn, proxy| async move {
        let since = tokio::time::Instant::now();
        let _open = proxy.opened();
        // The socket as it is while the in-task server has it; split for
        // hyper only if it is handed over. Dropped, it is closed (no
        // shutdown(2) of its own).
        let mut stream = stream;
        let (head, proto) = match sniff(&mut stream, proxy.limits.client_header_timeout).await {
            Sniffed::Head(head, proto) => (head, proto),
            Sniffed::Gone => return,
            // The same 408 as a slow head gets.
            Sniffed::TooSlow => {
                inline_server::refuse(&mut stream, StatusCode::REQUEST_TIMEOUT, &proxy, conn).await;
                return;
            }
        };
        // Both servers' futures are boxed: unboxed, the connection's task
        // would be as large as the larger of them, and a task is copied
        // several times on its way to the scheduler, on every connection.
        let head = match proto {
            Proto::Http1 => {
                let served = inline_server::serve(&mut stream, head, &proxy, conn, since);
                match Box::pin(served).await {
                    inline_server::Ended::Closed | inline_server::Ended::Aborted => return,
                    inline_server::Ended::HandOver(head) => head,
                }
            }
            Proto::Http2 => head.freeze(),
        };
        let (io, late) = KeepWriter::new(stream);
        let served = serve_conn(Prefixed { head, io }, proxy.clone(), conn, proto);
        let timed_out = Box::pin(served)
            .await
            .is_err_and(|e| is_header_timeout(e.as_ref()));
        let Some(mut w) = late.take() else { return };
        if timed_out {
            inline_server::refuse(&mut w, StatusCode::REQUEST_TIMEOUT, &proxy, conn).await;
        } else {
            // Closed without a shutdown(2) of its own, as a plain socket is.
            w.forget();
        }
    })
    .await
}

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

/// Serves HTTPS on `listener`: TLS handshake (bounded in time), then HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    accept_loop(listener, proxy, move |stream, conn, proxy| {
        let acceptor = acceptor.clone();
        async move {
            let conn = Conn { tls: true, ..conn };
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // TLS says which HTTP by ALPN.
                    let _open = proxy.opened();
                    let mut tls = tls;
                    // Boxed, as for plain connections.
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let served = serve_conn(tls, proxy.clone(), conn, Proto::Http2);
                        drop(Box::pin(served).await);
                        return;
                    }
                    let since = tokio::time::Instant::now();
                    let empty = bytes::BytesMut::new();
                    let served = inline_server::serve(&mut tls, empty, &proxy, conn, since);
                    match Box::pin(served).await {
                        inline_server::Ended::HandOver(head) => {
                            let io = Prefixed { head, io: tls };
                            let served = serve_conn(io, proxy.clone(), conn, Proto::Http1);
                            drop(Box::pin(served).await);
                        }
                        // close_notify first: a body that ends with the
                        // connection must be told apart from a cut-off one.
                        // Cut off: dropped without close_notify, which the
                        // client sees as the cut it is.
                        inline_server::Ended::Aborted => {}
                        inline_server::Ended::Closed => {
                            use tokio::io::AsyncWriteExt as _;
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(client = %conn.peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(client = %conn.peer, "TLS handshake timed out"),
            }
        }
    })
    .await
}

/// The default backend on its own port (`--default-backend-addr`), as
/// ingress-nginx's: 404 for everything, 200 on /healthz.
pub async fn serve_default_backend(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(if req.uri().path() == "/healthz" {
                    full(StatusCode::OK, "ok\n")
                } else {
                    full(StatusCode::NOT_FOUND, "default backend - 404\n")
                })
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
