//! The request pipeline, one for both servers: check the head → route →
//! policy (the answers an Ingress gives itself) → rewrite and forwarding
//! headers → upstream → respond → log. A failure anywhere is a
//! `ProxyError`, turned into a status in one place. The route table is
//! swapped whole (`ArcSwap`) and read once per request: a change never
//! drops a connection.
use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response, Uri, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};

mod canary;
mod client_certs;
mod cors;
pub mod counted;
mod error_pages;
mod ext_auth;
pub mod forwarding;
mod gateway;
mod hash_by;
pub mod log;
mod mirror;
mod policy;
pub mod request;
pub mod throttle;
pub mod trust;
mod upgrade;
mod user_auth;

pub use self::client_certs::PeerCerts;
use self::{
    counted::Counted,
    forwarding::{
        Fields, Forwarding, X_REQUEST_ID, joined, joined_cookies, request_id, strip_ignored,
        upstream_head,
    },
    log::{AccessLog, Pending},
    request::ClientHead,
    trust::{Origin, Trust},
};
use super::{
    body::Body,
    error::ProxyError,
    http1::tokens::{connection_listed, named, strip_listed_and_hop_by_hop, wants_trailers},
    limits::Limits,
    path::{NormalPath, PathError, normalize},
    route::{
        Match, RewriteEscapes, Route, RouteTable, Upstream, annotations::ConnectionHeader,
        gateway::matches::Request as GatewayRequest, normalize_host, rewrite_path,
    },
    stats::{LabelStats, Labels, Registry, StatsHandle},
    upstream::{
        Outbound, Timeouts, Upstreams,
        body::{BodyWatch, ClientBody, ReqBody, drain},
        sticky::{self, Sticky},
    },
};

/// Who is asking, for the forwarding headers and the log.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Labels of requests answered by the built-in default backend.
const DEFAULT_LABEL: (&str, &str) = ("-", "default-backend");

/// What became of a request.
pub enum Handled {
    /// The answer, and its count and log line, which the server finishes
    /// as the body goes out.
    Answer(Response<Body>, Pending),
    /// Untouched: only hyper's client can forward it (an HTTP/2 endpoint),
    /// so the fast server hands its connection to hyper's.
    HandBack,
    /// The client left before the answer (counted as 499).
    ClientLeft,
}

/// What the pipeline reads of every request, from either server.
struct Head<'a> {
    method: &'a Method,
    target: &'a PathAndQuery,
    host: Option<&'a str>,
    /// Came over HTTP/2 (HPACK heads are held to --max-headers here).
    h2: bool,
    headers: usize,
    /// For the access log (read only when it is on).
    logged: Option<Logged>,
}

/// The request's fields only the access log needs.
struct Logged {
    version: Version,
    /// Its Authorization header (`$remote_user`, read by the log thread).
    authorization: Option<Bytes>,
    referer: Option<Bytes>,
    user_agent: Option<Bytes>,
    length: u64,
}

/// The endpoint a request went to, its status, and how long its head took.
type UpstreamSeen = (SocketAddr, u16, Duration);

/// Where the rest of the request is. (Moved once into the request's
/// future, which holds the request whole either way: no box for it.)
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    /// Read by the fast server: a head, no body, no upgrade.
    Fast(&'a ClientHead),
    Hyper(Request<Incoming>),
}

impl Source<'_> {
    /// The certificates the client gave in its TLS handshake.
    fn peer_certs(&self) -> Option<&PeerCerts> {
        match self {
            Source::Fast(_) => None,
            Source::Hyper(req) => req.extensions().get::<PeerCerts>(),
        }
    }
}

/// The request as it goes out, with what is needed to see its answer back.
struct Outgoing {
    out: Outbound,
    /// The client's side of an upgrade it asked for.
    downstream: Option<hyper::upgrade::OnUpgrade>,
    request_id: HeaderValue,
    watch: Option<Arc<BodyWatch>>,
}

/// The request's header fields, whichever server read it: what the
/// per-request readers (canary, cookies, auth, hash keys) take.
impl Fields for Source<'_> {
    fn each<'s>(&'s self, f: impl FnMut(&'s [u8], &'s [u8])) {
        match self {
            Source::Fast(req) => req.each(f),
            Source::Hyper(req) => req.headers().each(f),
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        match self {
            Source::Fast(req) => req.first(name),
            Source::Hyper(req) => req.headers().first(name),
        }
    }

    fn count(&self) -> usize {
        match self {
            Source::Fast(req) => req.count(),
            Source::Hyper(req) => req.headers().count(),
        }
    }
}

/// How the forwarding phases ended.
enum Forwarded {
    Done(Result<Response<Body>, ProxyError>),
    HandBack,
}

pub struct Pipeline {
    routes: ArcSwap<RouteTable>,
    upstreams: Upstreams,
    limits: Limits,
    registry: Registry,
    /// The limiters of Ingresses with `limit-*` annotations: kept by
    /// `limiters` across swaps, read by Ingress from `limited`.
    limiters: throttle::Limiters,
    limited: ArcSwap<HashMap<Arc<str>, Arc<throttle::Limiter>>>,
    /// Where requests answered by the built-in default backend are counted.
    default_stats: Arc<LabelStats>,
    /// `--http1-fast-path`: the fast client takes requests without a body.
    fast_path: bool,
    trust: Trust,
    /// `--hsts`: Strict-Transport-Security on every answer over TLS.
    hsts: Option<HeaderValue>,
    log: Arc<AccessLog>,
    /// What `auth-type` checks share: remembered passwords, digest counts.
    user_checks: user_auth::Checks,
    /// `auth-cache-key`'s remembered auth answers.
    auth_cache: ext_auth::Cache,
}

/// How the proxy is set up beyond its limits.
#[derive(Clone)]
pub struct Options {
    /// `--http1-fast-path`.
    pub fast_path: bool,
    pub trust: Trust,
    /// `--hsts` and its settings: the Strict-Transport-Security value.
    pub hsts: Option<HeaderValue>,
    pub access_log: Arc<AccessLog>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fast_path: true,
            trust: Trust::default(),
            hsts: None,
            access_log: AccessLog::off(),
        }
    }
}

impl Pipeline {
    pub fn new(limits: Limits, options: Options) -> Self {
        let registry = Registry::default();
        let default_stats = registry.get(&default_label());
        Self {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            upstreams: Upstreams::new(limits.idle_keepalive),
            limits,
            registry,
            limiters: throttle::Limiters::default(),
            limited: ArcSwap::from_pointee(HashMap::new()),
            default_stats,
            fast_path: options.fast_path,
            trust: options.trust,
            hsts: options.hsts,
            log: options.access_log,
            user_checks: user_auth::Checks::default(),
            auth_cache: ext_auth::Cache::default(),
        }
    }

    /// `--http1-fast-path`: the fast server reads HTTP/1 requests first.
    pub fn fast_path(&self) -> bool {
        self.fast_path
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Publishes a new table; requests in flight finish on the old one.
    pub fn swap_routes(&self, table: RouteTable) {
        let mut table = table;
        let mut slots: Vec<&mut StatsHandle> = Vec::new();
        let mut labels: Vec<Labels> = Vec::new();
        for r in table.routes_mut() {
            labels.push(label(r));
            if let Some(c) = &r.canary {
                labels.push(label(&c.route));
            }
            let Route { stats, canary, .. } = r;
            slots.push(stats);
            if let Some(c) = canary {
                slots.push(&mut c.route.stats);
            }
        }
        // The built-in default backend's counters live on too.
        labels.push(default_label());
        let handles = self.registry.publish(&labels);
        for (slot, stats) in slots.into_iter().zip(handles) {
            *slot = StatsHandle(Some(stats));
        }
        // What outlives the table, kept for the routes that still use it:
        // limiters, endpoints' state, TLS connections.
        let mut limited = HashMap::new();
        let mut tls_live = HashSet::new();
        for r in table.routes() {
            if let Some(rate) = &r.policy.rate {
                limited
                    .entry(r.ingress.clone())
                    .or_insert_with(|| self.limiters.get(&r.ingress, rate));
            }
            if let Some(Ok(t)) = &r.backend_tls {
                tls_live.insert(t.id);
            }
        }
        self.limiters.retain(&limited.keys().cloned().collect());
        self.limited.store(Arc::new(limited));
        let live: HashSet<SocketAddr> = table.endpoints().collect();
        self.routes.store(Arc::new(table));
        self.upstreams.retain(&live, &tls_live);
    }

    /// A request the fast server read. `gone` resolves if the client
    /// leaves while the request is out: the request is dropped.
    pub async fn handle_fast(
        &self,
        req: &ClientHead,
        conn: Conn,
        gone: impl std::future::Future<Output = ()>,
    ) -> Handled {
        let head = Head {
            method: req.method(),
            target: req.target(),
            host: req.host(),
            h2: false,
            headers: 0,
            logged: self.log.enabled().then(|| Logged {
                version: if req.http10() {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                },
                authorization: req.value("authorization"),
                referer: req.value("referer"),
                user_agent: req.value("user-agent"),
                length: req.len() as u64,
            }),
        };
        self.run(&head, Source::Fast(req), conn, gone).await
    }

    /// A request hyper's server read.
    pub async fn handle_hyper(&self, req: Request<Incoming>, conn: Conn) -> Response<Counted> {
        // Kept for the log line after the request has moved on: the URI
        // and Host header share the request's buffer (no copy).
        let uri = req.uri().clone();
        let host_header = req.headers().get(header::HOST).cloned();
        let method = req.method().clone();
        let root;
        let target = match uri.path_and_query() {
            Some(pq) => pq,
            None => {
                root = PathAndQuery::from_static("/");
                &root
            }
        };
        let head = Head {
            method: &method,
            target,
            host: uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host_header.as_ref().and_then(|h| h.to_str().ok())),
            h2: req.version() == Version::HTTP_2,
            headers: req.headers().len(),
            logged: self.log.enabled().then(|| {
                let h = req.headers();
                let value = |n| {
                    h.get(n)
                        .map(|v: &HeaderValue| Bytes::copy_from_slice(v.as_bytes()))
                };
                // As the head came: its fields, and a body said to follow.
                let fields: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
                let body = hyper::body::Body::size_hint(req.body())
                    .exact()
                    .unwrap_or(0);
                Logged {
                    version: req.version(),
                    authorization: value(header::AUTHORIZATION),
                    referer: value(header::REFERER),
                    user_agent: value(header::USER_AGENT),
                    length: (req.method().as_str().len() + target.as_str().len() + 12 + fields)
                        as u64
                        + body,
                }
            }),
        };
        let never = std::future::pending();
        match self.run(&head, Source::Hyper(req), conn, never).await {
            Handled::Answer(resp, pending) => resp.map(|inner| Counted::new(inner, pending)),
            // Neither happens on hyper's server; answered all the same.
            Handled::HandBack | Handled::ClientLeft => {
                let resp = ProxyError::ClientLeft.respond();
                let pending = Pending::new(self.default_stats.clone(), None, self.log.clone());
                resp.map(|inner| Counted::new(inner, pending))
            }
        }
    }

    /// The pipeline itself.
    async fn run(
        &self,
        head: &Head<'_>,
        src: Source<'_>,
        conn: Conn,
        gone: impl std::future::Future<Output = ()>,
    ) -> Handled {
        let started = Instant::now();
        // Held to the end: the chosen route is borrowed from it.
        let table = self.routes.load_full();
        let origin = if self.trust.use_forwarded_headers {
            self.trust.origin(
                conn,
                joined(&src, "x-forwarded-for").as_deref(),
                src.first("x-forwarded-proto"),
            )
        } else {
            self.trust.origin(conn, None, None)
        };
        // Dropped before the answer (hyper's server drops a request whose
        // client left), it is still counted and logged: 499.
        let mut unanswered = Unanswered {
            pipeline: self,
            route: OnceLock::new(),
            upstream: OnceLock::new(),
            head,
            origin,
            started,
            armed: true,
        };
        // The route's CORS answer, when the request gets one.
        let cors_for = OnceLock::new();
        // Its limit-connections slot, held until the response has gone.
        let slot = OnceLock::new();
        let forwarded = async {
            check(head, &self.limits)?;
            // Rules, source ranges and rewrites all decide on this form.
            let path = normalize(head.target.path()).map_err(ProxyError::BadPath)?;
            // HTTPRoutes of the listener's protocol first, then Ingresses.
            let hit = {
                let header = |n: &str| src.first(n).and_then(|v| std::str::from_utf8(v).ok());
                let asked = GatewayRequest {
                    path: path.as_str(),
                    method: head.method,
                    header: &header,
                    query: head.target.query(),
                };
                table.gateway_lookup(conn.tls, head.host, &asked)
            };
            let mut gateway_target = None;
            let mut mirrored = None;
            let r = match hit {
                Some(hit) => {
                    let rule = &hit.rule.rule;
                    if let Some(to) = &rule.redirect {
                        let _ = unanswered.route.set(&hit.rule.own);
                        let port = conn.local.port();
                        let answer = gateway::redirect(
                            to,
                            head.target,
                            &path,
                            hit.matched,
                            head.host,
                            conn.tls,
                            port,
                        );
                        return Ok(Forwarded::Done(Ok(answer)));
                    }
                    let Some(b) = hit.rule.pick(hit.rule.next_draw()) else {
                        let _ = unanswered.route.set(&hit.rule.own);
                        return Err(ProxyError::BackendUnresolved);
                    };
                    if let Upstream::Unavailable { .. } = &*b.upstream {
                        let _ = unanswered.route.set(b);
                        return Err(ProxyError::BackendUnresolved);
                    }
                    if let Some(rw) = &rule.rewrite_path {
                        gateway_target =
                            Some(gateway::rewritten(rw, head.target, &path, hit.matched)?);
                    }
                    if !rule.mirrors.is_empty() {
                        mirrored = Some(&**rule);
                    }
                    b
                }
                None => match table.lookup(head.host, &path) {
                    Match::Route(r) | Match::Default(Some(r)) => r,
                    Match::Default(None) => return Err(ProxyError::NoRoute),
                },
            };
            // A canary's route has the main route's policy: choosing
            // first changes nothing but the backend and the labels.
            let r = canary::choose(r, &src);
            let _ = unanswered.route.set(r);
            // What only hyper's client does goes to hyper's server now,
            // before anything is counted or asked (it runs this again).
            if matches!(src, Source::Fast(_)) && needs_hyper(r) {
                return Ok(Forwarded::HandBack);
            }
            // RequestMirror, once the server that forwards it has it.
            // Copies carry no body: a streamed body goes once.
            let bodiless = || match &src {
                Source::Fast(_) => true,
                Source::Hyper(req) => hyper::body::Body::is_end_stream(req.body()),
            };
            if let Some(rule) = mirrored.filter(|_| bodiless()) {
                let copy = mirror::Copy {
                    method: head.method,
                    target: gateway_target.as_ref().unwrap_or(head.target).as_str(),
                    host: r.policy.upstream_vhost.as_deref().or(head.host),
                    fields: &src,
                };
                mirror::send_copies(rule, &copy);
            }
            if let Some(Err(_)) = &r.response_headers {
                return Err(ProxyError::LocationDenied);
            }
            // The client's certificate first, as nginx checks it when the
            // request starts.
            let mut from_auth = Vec::new();
            match &r.client_auth {
                None => {}
                Some(Err(_)) => return Err(ProxyError::AuthDenied),
                Some(Ok(auth)) => match client_certs::check(auth, src.peer_certs()) {
                    client_certs::Checked::Through(headers) => from_auth = headers,
                    client_certs::Checked::Answer(resp) => return Ok(Forwarded::Done(Ok(resp))),
                },
            }
            policy::check_source(r, origin)?;
            if let Some(c) = &r.policy.cors
                && let Some(allow) = cors::allow_origin(c, src.first("origin"))
            {
                if head.method == Method::OPTIONS {
                    return Ok(Forwarded::Done(Ok(cors::preflight(c, allow))));
                }
                let _ = cors_for.set((c, allow));
            }
            if let Some(answer) = policy::answer_here(head.target, &path, r, origin, head.host)? {
                return Ok(Forwarded::Done(Ok(answer)));
            }
            if r.policy.rate.is_some() {
                let _ = slot.set(self.throttle(r, origin)?);
            }
            match &r.users {
                None => {}
                Some(Err(_)) => return Err(ProxyError::AuthDenied),
                Some(Ok(users)) => {
                    let asked = user_auth::Asked {
                        method: head.method,
                        target: head.target.as_str(),
                    };
                    if let Some(answer) =
                        user_auth::check(users, asked, &src, &self.user_checks).await
                    {
                        return Ok(Forwarded::Done(Ok(answer)));
                    }
                }
            }
            if let Some(auth) = &r.policy.ext_auth {
                let asked = ext_auth::Asked {
                    method: head.method,
                    target: head.target.as_str(),
                    path: path.as_str(),
                    host: head.host,
                    origin,
                };
                let t = self.timeouts(r);
                match ext_auth::check(auth, asked, &src, t, &self.auth_cache).await {
                    ext_auth::Decision::Allow(headers) => from_auth.extend(headers),
                    ext_auth::Decision::Answer(resp) => return Ok(Forwarded::Done(Ok(resp))),
                }
            }
            // custom-http-errors: what the default backend is told.
            let accept = r.error_backend.as_ref().and_then(|_| {
                src.first("accept")
                    .and_then(|a| HeaderValue::from_bytes(a).ok())
            });
            let forwarding = self.forward(
                head,
                &path,
                gateway_target.as_ref(),
                src,
                r,
                origin,
                &unanswered.upstream,
                &from_auth,
            );
            // An HTTPRoute's request timeout: the answer's head within it.
            let forwarded = match r.gateway.as_ref().and_then(|g| g.timeout) {
                Some(t) => tokio::time::timeout(t, forwarding)
                    .await
                    .unwrap_or(Forwarded::Done(Err(ProxyError::UpstreamTimeout))),
                None => forwarding.await,
            };
            Ok(match forwarded {
                Forwarded::Done(Ok(resp)) => match error_pages::backend_for(r, resp.status()) {
                    None => Forwarded::Done(Ok(resp)),
                    Some(backend) => {
                        let failed = error_pages::Failed {
                            method: head.method,
                            target: head.target.as_str(),
                            host: head.host,
                            accept,
                            client: origin.client,
                        };
                        let t = self.timeouts(r);
                        Forwarded::Done(Ok(error_pages::replace(backend, r, failed, resp, t).await))
                    }
                },
                other => other,
            })
        };
        let outcome = tokio::select! {
            biased;
            f = forwarded => match f {
                Ok(Forwarded::HandBack) => {
                    // hyper's server answers it, and counts it then.
                    unanswered.armed = false;
                    return Handled::HandBack;
                }
                Ok(Forwarded::Done(result)) => result,
                Err(e) => Err(e),
            },
            () = gone => Err(ProxyError::ClientLeft),
        };
        let (mut resp, error) = match outcome {
            Ok(resp) => (resp, None),
            Err(e) => {
                if e.blame() != super::error::Blame::Client {
                    tracing::debug!(error = %e, "request failed");
                }
                (e.respond(), Some(e))
            }
        };
        if let Some((c, allow)) = cors_for.into_inner() {
            cors::decorate(c, allow, resp.headers_mut());
        }
        // --add-headers on every answer; an Ingress's custom-headers win.
        if let Some(h) = &table.add_headers {
            h.apply(resp.headers_mut());
        }
        // custom-headers: on every answer of the route, as more_set_headers.
        if let Some(Some(Ok(h))) = unanswered.route.get().map(|r| &r.response_headers) {
            h.apply(resp.headers_mut());
        }
        // An HTTPRoute's ResponseHeaderModifier, on what its backend said.
        if error.is_none()
            && let Some(Some(g)) = unanswered.route.get().map(|r| &r.gateway)
        {
            g.response_headers.apply(resp.headers_mut());
        }
        // As ingress-nginx's header filter: every answer over TLS.
        if conn.tls
            && let Some(v) = &self.hsts
        {
            resp.headers_mut()
                .insert(hyper::header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        unanswered.armed = false;
        let outcome = Outcome {
            route: unanswered.route.get().copied(),
            status: error.as_ref().map_or(resp.status(), ProxyError::status),
            error: error.as_ref(),
            request_id: resp.headers().get(X_REQUEST_ID),
            upstream: unanswered.upstream.get().copied(),
        };
        let mut pending = self.account(&outcome, started, head, origin);
        pending.hold(slot.into_inner().flatten());
        if matches!(error, Some(ProxyError::ClientLeft)) {
            return Handled::ClientLeft;
        }
        Handled::Answer(resp, pending)
    }

    /// The route's endpoint timeouts (its annotations, else the flags).
    fn timeouts(&self, route: &Route) -> Timeouts {
        Timeouts {
            connect: route
                .policy
                .connect_timeout
                .unwrap_or(self.limits.upstream_connect_timeout),
            read: route
                .policy
                .read_timeout
                .unwrap_or(self.limits.upstream_response_timeout),
            send: route
                .policy
                .send_timeout
                .unwrap_or(self.limits.upstream_send_timeout),
        }
    }

    /// The Ingress's `limit-*` annotations for this client: a slot to hold
    /// while the request is in flight, or the refusal.
    fn throttle(&self, r: &Route, origin: Origin) -> Result<Option<throttle::Slot>, ProxyError> {
        // Published with the table, but a table stored without
        // swap_routes (tests) has none: not limited.
        let Some(limiter) = self.limited.load().get(&r.ingress).cloned() else {
            return Ok(None);
        };
        limiter
            .admit(origin.client)
            .map_err(|refused| match refused {
                throttle::Refused::Rate => ProxyError::RateLimited(self.limits.limit_req_status),
                throttle::Refused::Connections => {
                    ProxyError::ConnectionLimited(self.limits.limit_conn_status)
                }
            })
    }

    /// Endpoint, rewrite and headers, send, and the answer's own headers.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        head: &Head<'_>,
        path: &NormalPath<'_>,
        target: Option<&PathAndQuery>,
        src: Source<'_>,
        route: &Route,
        origin: Origin,
        seen: &OnceLock<UpstreamSeen>,
        from_auth: &[(HeaderName, Option<HeaderValue>)],
    ) -> Forwarded {
        let addrs = match endpoints(&route.upstream).await {
            Ok(addrs) => addrs,
            Err(e) => return Forwarded::Done(Err(e)),
        };
        let h2 = speaks_h2_upstream(route);
        // The session's endpoint, read before the request moves on.
        let session = route.policy.affinity.as_ref().map(|a| {
            let cookie = forwarding::cookie(&src, &a.name);
            (
                a,
                Sticky::new(a, &route.service, cookie, &addrs, forwarding::random_u64),
            )
        });
        // Else upstream-hash-by's endpoint (a session's wins, as in
        // ingress-nginx, where affinity replaces the balancer).
        let hashed = match (&session, &route.policy.hash_by) {
            (None, Some(k)) => {
                let req = hash_by::Request {
                    target: head.target.as_str(),
                    path: path.as_str(),
                    host: head.host,
                    client: origin.client,
                };
                hash_by::endpoint(&hash_by::key(k, &req, &src), &addrs)
            }
            _ => None,
        };
        let prepared = match src {
            // run() hands these back before anything is counted; kept
            // here too, as the fast client speaks plain HTTP/1.1 only.
            Source::Fast(_) if needs_hyper(route) => return Forwarded::HandBack,
            Source::Fast(req) => {
                self.prepare_fast(req, head, path, target, route, origin, addrs[0])
            }
            Source::Hyper(req) => self.prepare_hyper(
                req, head, path, target, route, origin, addrs[0], h2, from_auth,
            ),
        };
        let outgoing = match prepared {
            Ok(o) => o,
            Err(e) => return Forwarded::Done(Err(e)),
        };
        let t = self.timeouts(route);
        let Outgoing {
            out,
            mut downstream,
            request_id,
            watch,
        } = outgoing;
        // Boxed: made in place once, where inline it would be copied into
        // each of the futures awaiting it, per request.
        let sending = Instant::now();
        let sent = Box::pin(self.upstreams.send(
            out,
            watch.as_deref(),
            &addrs,
            session.as_ref().and_then(|(_, s)| s.prefer()).or(hashed),
            t,
            &route.policy.next_upstream,
            route.policy.ewma,
            route.upstream.name(),
            &request_id,
        ))
        .await;
        Forwarded::Done(sent.and_then(|(mut resp, addr)| {
            let _ = seen.set((addr, resp.status().as_u16(), sending.elapsed()));
            if let Some((a, s)) = &session
                && let Some(value) = s.value_after(addr, &addrs, forwarding::random_u64)
                && let Some(c) = sticky::set_cookie(
                    a,
                    &value,
                    &route.location,
                    origin.https,
                    std::time::SystemTime::now(),
                )
            {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                let Some(down) = downstream.take() else {
                    // Only a request that asked may be switched.
                    return Err(ProxyError::UpstreamProtocol(
                        "101 to a request that asked for no upgrade".into(),
                    ));
                };
                let up = hyper::upgrade::on(&mut resp);
                tokio::spawn(upgrade::splice(down, up, t.read));
                return Ok(resp);
            }
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            Ok(resp)
        }))
    }

    /// A fast-server request, for the fast client: no body, no upgrade,
    /// HTTP/1.1 to the endpoint.
    #[allow(clippy::too_many_arguments)]
    fn prepare_fast(
        &self,
        req: &ClientHead,
        head: &Head<'_>,
        path: &NormalPath<'_>,
        target: Option<&PathAndQuery>,
        route: &Route,
        origin: Origin,
        first: SocketAddr,
    ) -> Result<Outgoing, ProxyError> {
        let request_id = req
            .value("x-request-id")
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
            .unwrap_or_else(request_id);
        let target = match target {
            Some(t) => Cow::Borrowed(t),
            None => rewritten(route, head.target, path, &request_id)?,
        };
        let forwarding = Forwarding::new(
            req,
            |name| req.listed(name),
            origin,
            self.trust.compute_full_forwarded_for,
            head.host,
            route,
            &request_id,
        );
        let upstream = upstream_head(
            head.method,
            target.as_str(),
            req,
            |name| req.listed(name),
            &forwarding,
            first,
        );
        Ok(Outgoing {
            out: Outbound::Fast(upstream),
            downstream: None,
            request_id,
            watch: None,
        })
    }

    /// A hyper-server request: forwarding headers, rewrite and body limits.
    /// No await in here: what lives across the send is only what
    /// `Outgoing` holds, which keeps the request's future small.
    #[allow(clippy::too_many_arguments)]
    fn prepare_hyper(
        &self,
        mut req: Request<Incoming>,
        head: &Head<'_>,
        path: &NormalPath<'_>,
        target: Option<&PathAndQuery>,
        route: &Route,
        origin: Origin,
        first: SocketAddr,
        h2: bool,
        from_auth: &[(HeaderName, Option<HeaderValue>)],
    ) -> Result<Outgoing, ProxyError> {
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
        strip_ignored(&mut parts.headers);
        let request_id = parts
            .headers
            .get(X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(request_id);
        let policy = &route.policy;
        let path_and_query = match target {
            Some(t) => Cow::Borrowed(t),
            None => rewritten(route, head.target, path, &request_id)?,
        };
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
            return Err(ProxyError::BodyTooLarge);
        }
        // From the body itself, as hyper framed it.
        let bodiless = hyper::body::Body::is_end_stream(&body);
        // HTTP/1.0 has no chunks: a body of unknown length cannot go
        // (nginx buffers it; a streaming proxy asks for its length).
        if policy.http10 && !h2 && !bodiless && declared.is_none() {
            tokio::spawn(drain(body));
            return Err(ProxyError::LengthRequired);
        }
        let forwarding = Forwarding::new(
            &parts.headers,
            named(&listed),
            origin,
            self.trust.compute_full_forwarded_for,
            head.host,
            route,
            &request_id,
        );
        // The common request (no body, no upgrade, HTTP/1.1 to the
        // endpoint) is written out here and answered in this task; the
        // others need hyper's client to stream both ways.
        if self.fast_path
            && !h2
            && bodiless
            && downstream.is_none()
            && route.backend_tls.is_none()
            && from_auth.is_empty()
            && !policy.http10
            && policy.connection_header.is_none()
            && !edits_request(route)
        {
            let upstream = upstream_head(
                &parts.method,
                path_and_query.as_str(),
                &parts.headers,
                named(&listed),
                &forwarding,
                first,
            );
            return Ok(Outgoing {
                out: Outbound::Fast(upstream),
                downstream,
                request_id,
                watch: None,
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
        // As nginx's proxy_set_header from auth_request_set: the auth
        // answer's value, or none at all, never the client's.
        for (name, value) in from_auth {
            parts.headers.remove(name);
            if let Some(v) = value {
                parts.headers.insert(name.clone(), v.clone());
            }
        }
        // An HTTPRoute's RequestHeaderModifier, over what the client sent.
        if let Some(g) = &route.gateway {
            g.request_headers.apply(&mut parts.headers);
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
        } else if let Some(c) = policy
            .connection_header
            .or(policy.http10.then_some(ConnectionHeader::Close))
        {
            // connection-proxy-header; "close" also keeps the connection
            // out of the pool (hyper's client closes it after the answer).
            // HTTP/1.0 closes unless told (nginx sends it without keep-alive;
            // hyper's client would ask for keep-alive).
            let v = match c {
                ConnectionHeader::Close => "close",
                ConnectionHeader::KeepAlive => "keep-alive",
            };
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static(v));
        }
        // Streamed bodies without a length are cut off at the limit; every
        // body must keep arriving (slow senders get a 408).
        let (body, watch): (ReqBody, _) = if bodiless {
            (body.map_err(Into::into).boxed(), None)
        } else {
            let left = if max_body > 0 && declared.is_none() {
                max_body
            } else {
                u64::MAX
            };
            let (body, watch) = ClientBody::new(body, left, self.limits.client_body_timeout);
            (body.boxed(), Some(watch))
        };
        let mut out = Request::from_parts(parts, body);
        if h2 {
            // HTTP/2 carries the host as :authority: keep the client's.
            let authority = policy
                .upstream_vhost
                .clone()
                .or_else(|| head.host.and_then(normalize_host))
                .unwrap_or_else(|| first.to_string());
            let scheme = if route.backend_tls.is_some() {
                "https"
            } else {
                "http"
            };
            if let Ok(u) = format!("{scheme}://{authority}{path_and_query}").parse() {
                *out.uri_mut() = u;
            }
            *out.version_mut() = Version::HTTP_2;
            out.headers_mut().remove(header::HOST);
        } else {
            // HTTP/1.1 to the endpoint in origin form ("GET /path"), the Host
            // header carrying the client's host; an HTTP/1.0 client may have
            // sent none: the endpoint's address then (HTTP/1.1 needs one).
            *out.uri_mut() = Uri::from(path_and_query.into_owned());
            *out.version_mut() = if policy.http10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if !out.headers().contains_key(header::HOST)
                && let Ok(h) = HeaderValue::from_str(&first.to_string())
            {
                out.headers_mut().insert(header::HOST, h);
            }
        }
        Ok(Outgoing {
            out: Outbound::Hyper {
                req: Box::new(out),
                h2,
                tls: route.backend_tls.clone().and_then(Result::ok),
            },
            downstream,
            request_id,
            watch,
        })
    }

    /// Counts a request by its route's labels and makes its access-log
    /// record; what is returned finishes both as the body goes out.
    fn account(
        &self,
        o: &Outcome<'_>,
        started: Instant,
        head: &Head<'_>,
        origin: Origin,
    ) -> Pending {
        let stats = match o.route {
            // A table published without swap_routes has no handles yet.
            Some(r) => r
                .stats
                .0
                .clone()
                .unwrap_or_else(|| self.registry.get(&label(r))),
            None => self.default_stats.clone(),
        };
        stats.observe(
            o.status.as_u16(),
            o.error.map_or(0, ProxyError::code),
            started.elapsed(),
        );
        let logged = head
            .logged
            .as_ref()
            .filter(|_| !o.route.is_some_and(|r| r.policy.no_access_log));
        let record = logged.map(|l| {
            let (ingress, service, alternative) = match o.route {
                Some(r) => match &r.canary_of {
                    Some(main) => (r.ingress.clone(), main.clone(), Some(r.service.clone())),
                    None => (r.ingress.clone(), r.service.clone(), None),
                },
                None => (Arc::from(DEFAULT_LABEL.0), Arc::from(DEFAULT_LABEL.1), None),
            };
            log::Record {
                time: std::time::SystemTime::now(),
                client: origin.client,
                method: Some(head.method.clone()),
                target: Some(head.target.clone()),
                version: l.version,
                status: o.status.as_u16(),
                authorization: l.authorization.clone(),
                referer: l.referer.clone(),
                user_agent: l.user_agent.clone(),
                request_length: l.length,
                ingress,
                service,
                alternative,
                upstream: o.upstream,
                request_id: o.request_id.cloned(),
                error: o.error.map(ProxyError::label),
                started,
                bytes_sent: 0,
                took: Duration::ZERO,
            }
        });
        Pending::new(stats, record, self.log.clone())
    }

    /// Counts and logs a request refused before it was read whole (400,
    /// 408, 414, 431 from a server), under the default backend's labels,
    /// as nginx's default server has them.
    pub fn refused(&self, error: &ProxyError, conn: Conn) {
        let status = error.status();
        self.default_stats
            .observe(status.as_u16(), error.code(), Duration::ZERO);
        let record = self.log.enabled().then(|| log::Record {
            time: std::time::SystemTime::now(),
            client: conn.peer.ip(),
            method: None,
            target: None,
            version: Version::HTTP_11,
            status: status.as_u16(),
            authorization: None,
            referer: None,
            user_agent: None,
            request_length: 0,
            ingress: Arc::from(DEFAULT_LABEL.0),
            service: Arc::from(DEFAULT_LABEL.1),
            alternative: None,
            upstream: None,
            request_id: None,
            error: Some(error.label()),
            started: Instant::now(),
            bytes_sent: 0,
            took: Duration::ZERO,
        });
        drop(Pending::new(
            self.default_stats.clone(),
            record,
            self.log.clone(),
        ));
    }

    /// Prometheus text for the requests and the endpoints.
    pub fn render_metrics(&self, out: &mut String) {
        self.registry.render(out);
        let _ = writeln!(
            out,
            "# HELP ingressd_upstream_connect_errors_total Failed connects to endpoints\n# TYPE ingressd_upstream_connect_errors_total counter\ningressd_upstream_connect_errors_total {}",
            self.upstreams.connect_errors()
        );
        let _ = writeln!(
            out,
            "# HELP ingressd_http_route_rules Host/path rules in the route table\n# TYPE ingressd_http_route_rules gauge\ningressd_http_route_rules {}",
            self.routes.load().len()
        );
        let _ = writeln!(
            out,
            "# HELP ingressd_access_log_dropped_total Access-log lines lost because the log could not keep up\n# TYPE ingressd_access_log_dropped_total counter\ningressd_access_log_dropped_total {}",
            self.log.dropped()
        );
    }
}

/// How a request ended, for its count and log line.
struct Outcome<'a> {
    route: Option<&'a Route>,
    status: hyper::StatusCode,
    error: Option<&'a ProxyError>,
    request_id: Option<&'a HeaderValue>,
    upstream: Option<UpstreamSeen>,
}

/// A request on its way: if its future is dropped before the answer, its
/// client left (hyper's server drops it then), and it is counted so.
struct Unanswered<'p, 'h, 'r> {
    pipeline: &'p Pipeline,
    /// The route, once chosen (borrowed from the table the request holds).
    route: OnceLock<&'r Route>,
    /// The endpoint that answered, once one did.
    upstream: OnceLock<UpstreamSeen>,
    head: &'h Head<'h>,
    origin: Origin,
    started: Instant,
    armed: bool,
}

impl Drop for Unanswered<'_, '_, '_> {
    fn drop(&mut self) {
        if self.armed {
            let left = ProxyError::ClientLeft;
            let outcome = Outcome {
                route: self.route.get().copied(),
                status: left.status(),
                error: Some(&left),
                request_id: None,
                upstream: self.upstream.get().copied(),
            };
            let (pipeline, head) = (self.pipeline, self.head);
            drop(pipeline.account(&outcome, self.started, head, self.origin));
        }
    }
}

/// What no request gets past, whichever server read it: nginx's answers
/// for CONNECT (405) and for HTTP/2 heads with more fields than allowed
/// (431; HTTP/1 heads are held to it while they are parsed).
fn check(head: &Head<'_>, limits: &Limits) -> Result<(), ProxyError> {
    if *head.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if head.h2 && head.headers > limits.max_headers {
        return Err(ProxyError::HeadTooLarge);
    }
    Ok(())
}

fn default_label() -> Labels {
    (Arc::from(DEFAULT_LABEL.0), Arc::from(DEFAULT_LABEL.1))
}

fn label(route: &Route) -> Labels {
    (route.ingress.clone(), route.service.clone())
}

/// The addresses an upstream's requests go to (ExternalName resolved now).
async fn endpoints(upstream: &Upstream) -> Result<Cow<'_, [SocketAddr]>, ProxyError> {
    let addrs: Cow<'_, [SocketAddr]> = match upstream {
        Upstream::Endpoints { addrs, .. } => Cow::Borrowed(addrs),
        Upstream::External { host, port, .. } => {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(a) => Cow::Owned(a.collect()),
                Err(_) => return Err(ProxyError::NameNotResolved),
            }
        }
        Upstream::Unavailable { .. } => Cow::Borrowed(&[]),
    };
    if addrs.is_empty() {
        return Err(ProxyError::NoEndpoints);
    }
    Ok(addrs)
}

/// The target after the route's rewrite-target; without one, the target
/// as the client sent it (nginx's `proxy_pass` without a URI).
fn rewritten<'a>(
    route: &Route,
    target: &'a PathAndQuery,
    path: &NormalPath<'_>,
    request_id: &HeaderValue,
) -> Result<Cow<'a, PathAndQuery>, ProxyError> {
    let path = match rewrite_path(route, path, target.query()) {
        None => return Ok(Cow::Borrowed(target)),
        Some(Ok(path)) => path,
        Some(Err(RewriteEscapes)) => return Err(ProxyError::BadPath(PathError::AboveRoot)),
    };
    match path.parse() {
        Ok(pq) => Ok(Cow::Owned(pq)),
        Err(_) => {
            let id = request_id.to_str().unwrap_or_default();
            tracing::warn!(request_id = id, ingress = %route.ingress, %path, "rewrite-target made an invalid path");
            Err(ProxyError::InvalidRewrite)
        }
    }
}

/// A route whose requests only hyper's client can send (HTTP/2 or TLS to
/// the endpoints), or that needs the request's headers after the fast
/// path would have written them (external auth).
fn needs_hyper(route: &Route) -> bool {
    speaks_h2_upstream(route)
        || route.backend_tls.is_some()
        || route.policy.ext_auth.is_some()
        || route.error_backend.is_some()
        || route.client_auth.is_some()
        || route.policy.http10
        || route.policy.connection_header.is_some()
        || edits_request(route)
}

/// An HTTPRoute rule that edits the request's headers (done on hyper's
/// form of the head).
fn edits_request(route: &Route) -> bool {
    route
        .gateway
        .as_ref()
        .is_some_and(|g| !g.request_headers.is_empty())
}

/// Whether the route's requests go to its endpoints in HTTP/2.
fn speaks_h2_upstream(route: &Route) -> bool {
    route.policy.h2
        || matches!(&*route.upstream, Upstream::Endpoints { app_protocol: Some(p), .. } if speaks_h2(p))
}

/// appProtocol values that mean HTTP/2 without TLS to the endpoint
/// (Kubernetes' `kubernetes.io/h2c`, and the common `h2c`, `grpc`).
fn speaks_h2(app_protocol: &str) -> bool {
    matches!(
        app_protocol.to_ascii_lowercase().as_str(),
        "kubernetes.io/h2c" | "h2c" | "grpc" | "http2"
    )
}
