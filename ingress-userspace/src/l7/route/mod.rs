//! The Ingress route table: compiled once per change from the snapshot
//! (pure), read once per request.
//!
//! Semantics are Kubernetes' (networking.k8s.io/v1): hosts match exactly
//! (case-insensitive, port ignored) or as `*.suffix` wildcards of exactly one
//! label, exact hosts win over wildcards, and rules without a host serve every
//! other host. Paths: `Exact`, `Prefix` (element-wise on `/`),
//! `ImplementationSpecific` (as Prefix); the longest match wins and Exact
//! beats Prefix at equal length. Like ingress-nginx, a request whose host has
//! rules but whose path matches none of them goes to the default backend.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use self::annotations::{CanaryRule, Policy};
use crate::{
    cluster::ObjectKey,
    l7::{
        path::{NormalPath, PathError, normalize},
        stats::StatsHandle,
    },
};

pub mod annotations;
pub mod backend_tls;
pub mod client_certs;
mod compile;
pub mod gateway;
pub mod headers;
pub mod htpasswd;
pub mod pattern;
mod render;
mod rewrite;
pub mod users;

pub use compile::{compile, compile_with};
pub use pattern::{PathRegex, Patterns};
pub use render::render_routes;
pub use rewrite::{RewriteEscapes, rewrite_path};

/// Where matched requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Ready pod endpoints of a Service port (empty: answer 503).
    Endpoints {
        /// `namespace/service:port`, for logs and metrics.
        name: String,
        addrs: Vec<SocketAddr>,
        /// The Service port's `appProtocol` (`h2c`, `kubernetes.io/h2c`, `grpc`…).
        app_protocol: Option<String>,
    },
    /// An ExternalName Service: resolved with DNS when connecting.
    External {
        name: String,
        host: String,
        port: u16,
    },
    /// The backend cannot be used (missing Service, unknown port): 503.
    Unavailable { name: String, reason: String },
}

impl Upstream {
    pub fn name(&self) -> &str {
        match self {
            Upstream::Endpoints { name, .. }
            | Upstream::External { name, .. }
            | Upstream::Unavailable { name, .. } => name,
        }
    }
}

/// A matched route: the upstream and the Ingress it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Another backend that takes some of this route's requests.
    pub canary: Option<Box<Canary>>,
    /// On a canary's route: the service of the route it is the canary of
    /// (ingress-nginx's `$proxy_upstream_name` when the canary serves).
    pub canary_of: Option<Arc<str>>,
    pub upstream: Arc<Upstream>,
    /// `namespace/name` of the Ingress (shared: it labels every request).
    pub ingress: Arc<str>,
    /// The upstream's name, for logs and metric labels.
    pub service: Arc<str>,
    /// Redirect plain HTTP to HTTPS (the host is in the Ingress's `spec.tls`
    /// and `nginx.ingress.kubernetes.io/ssl-redirect` is not "false", or
    /// `force-ssl-redirect` is "true").
    pub ssl_redirect: bool,
    /// The Ingress's annotations, read (shared by its routes).
    pub policy: Arc<Policy>,
    /// The rule's path (Prefix without its trailing slash; `/` for a
    /// pattern and the default backend): ingress-nginx's `$location_path`,
    /// the affinity cookie's default Path.
    pub location: Arc<str>,
    /// TLS to the endpoints (`backend-protocol: HTTPS|GRPCS`), or why it
    /// cannot be had (then the route answers 502).
    pub backend_tls: Option<Result<Arc<backend_tls::BackendTls>, Arc<str>>>,
    /// `auth-type`: the users let in, or why none can be (then the route
    /// answers 503).
    pub users: Option<Result<Arc<users::Users>, Arc<str>>>,
    /// `custom-http-errors`: who answers in place of the endpoints when
    /// they answer one of those codes (`default-backend`, or
    /// `--default-backend-service`).
    pub error_backend: Option<Arc<Upstream>>,
    /// `auth-tls-*`: the client-certificate check, or why none can be
    /// made (then the route answers 503).
    pub client_auth: Option<Result<Arc<client_certs::ClientAuth>, Arc<str>>>,
    /// `--proxy-set-headers`: set on every request to the endpoints.
    pub proxy_headers: Option<Arc<headers::HeaderSet>>,
    /// `custom-headers`: set on every response, or why they cannot be
    /// (then the route answers 503).
    pub response_headers: Option<Result<Arc<headers::HeaderSet>, Arc<str>>>,
    /// With `rewrite-target`: the path's pattern, whose captures the
    /// target refers to.
    pub rewrite: Option<PathRegex>,
    /// Where its requests are counted (set when the table is published).
    pub stats: StatsHandle,
    /// On an HTTPRoute rule's backend: the rule (its header edits,
    /// rewrite and timeouts).
    pub gateway: Option<Arc<gateway::rules::Rule>>,
}

/// The canary of a route: a `canary: "true"` Ingress with the same host,
/// path and path type. The requests it takes (`pipeline::canary`) go to
/// its route: the main route's policy and rewrite, the canary's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub route: Route,
    /// `namespace/name` of the canary Ingress.
    pub ingress: Arc<str>,
    pub rule: CanaryRule,
    /// `canary-by-header-pattern`, compiled.
    pub pattern: Option<PathRegex>,
}

impl Canary {
    /// Whether it can take requests: a canary without ready endpoints
    /// takes none (ingress-nginx drops the balancer of a backend without
    /// endpoints, and the main backend serves).
    pub fn serving(&self) -> bool {
        match &*self.route.upstream {
            Upstream::Endpoints { addrs, .. } => !addrs.is_empty(),
            Upstream::External { .. } => true,
            Upstream::Unavailable { .. } => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum PathKind {
    Exact,
    Prefix,
    /// ImplementationSpecific with `use-regex` or `rewrite-target`: a
    /// case-insensitive regular expression anchored at the start, as
    /// ingress-nginx's `location ~*`.
    Regex,
}

/// One host's paths.
#[derive(Clone, Debug, Default)]
pub(super) struct HostRules {
    exact: HashMap<String, Route>,
    /// Prefixes as path elements, longest first.
    prefixes: Vec<(Vec<String>, Route)>,
    /// Regular expressions (with the pattern's length), longest first.
    /// `use-regex` turns every Prefix path of a host into one, so a host
    /// has prefixes or regexes, never both.
    regexes: Vec<(PathRegex, usize, Route)>,
}

impl HostRules {
    fn lookup(&self, path: &str) -> Option<&Route> {
        // An exact match is as long as the path itself: nothing beats it.
        if let Some(r) = self.exact.get(path) {
            return Some(r);
        }
        // Element-wise, without allocating: this runs on every request.
        // Else the longest pattern that matches, as ingress-nginx orders
        // its regex locations.
        self.prefixes
            .iter()
            .find(|(p, _)| has_prefix(path, p))
            .map(|(_, r)| r)
            .or_else(|| {
                self.regexes
                    .iter()
                    .find(|(re, _, _)| re.is_match(path))
                    .map(|(_, _, r)| r)
            })
    }
}

/// Whether `path`'s elements start with `prefix` (empty elements ignored).
fn has_prefix(path: &str, prefix: &[String]) -> bool {
    let mut elements = path.split('/').filter(|e| !e.is_empty());
    prefix.iter().all(|p| elements.next() == Some(p.as_str()))
}

/// `/aaa/bbb/` → `["aaa", "bbb"]`; empty elements are dropped, so a trailing
/// slash never matters to a Prefix.
pub(super) fn path_elements(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    Route(&'a Route),
    /// Nothing matched: `spec.defaultBackend` of an Ingress, else the
    /// built-in 404.
    Default(Option<&'a Route>),
}

/// The compiled table. Cheap to read, rebuilt on every change and swapped in
/// whole, so a request sees one table from start to end.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact_hosts: HashMap<String, HostRules>,
    /// Keyed by the suffix after `*.` (`*.foo.com` → `foo.com`).
    wildcard_hosts: HashMap<String, HostRules>,
    any_host: Option<HostRules>,
    default_backend: Option<Route>,
    /// Hosts named in `spec.tls`, with the Secret (`namespace/name`).
    pub tls_hosts: BTreeMap<String, ObjectKey>,
    /// Hosts whose handshake asks for a client certificate (`auth-tls-*`).
    pub client_cert_hosts: std::collections::BTreeSet<String>,
    /// `ssl-passthrough` hosts (names and `*.` wildcards).
    passthrough: HashMap<String, Passthrough>,
    /// `--add-headers`: set on every answer.
    pub add_headers: Option<Arc<headers::HeaderSet>>,
    /// HTTPRoutes attached to our Gateways' listeners: matched before the
    /// Ingress rules of the listener's protocol.
    pub gateway: gateway::table::GatewayRoutes,
    rules: usize,
}

/// An HTTPRoute rule a request matched, with how much of its path the
/// match covered (what a ReplacePrefixMatch replaces).
pub struct GatewayMatch<'a> {
    pub rule: &'a gateway::table::ServedRule,
    pub matched: usize,
}

/// Where an `ssl-passthrough` host's TLS connections go, unterminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthrough {
    /// `namespace/name` of the Ingress.
    pub ingress: Arc<str>,
    pub upstream: Arc<Upstream>,
}

/// What a `*.` host of a rule would be for `host`: all but its first
/// label, which must not be empty (an Ingress wildcard covers exactly one
/// label).
fn wildcard_suffix(host: &str) -> Option<&str> {
    let (label, suffix) = host.split_once('.')?;
    (!label.is_empty()).then_some(suffix)
}

/// `normalize_host` without allocating when the Host is already plain
/// lower case (the common case, on every request).
fn host_key(host: &str) -> Option<std::borrow::Cow<'_, str>> {
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !host.ends_with('.');
    if plain {
        Some(std::borrow::Cow::Borrowed(host))
    } else {
        normalize_host(host).map(std::borrow::Cow::Owned)
    }
}

/// Lower-case host without port; `None` for an empty Host.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    let h = without_port.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() { None } else { Some(h) }
}

impl RouteTable {
    /// Routes a request by its Host (or :authority) and its path in
    /// normal form (the form every rule is compiled to).
    pub fn lookup(&self, host: Option<&str>, path: &NormalPath<'_>) -> Match<'_> {
        let path = path.as_str();
        let host = host.and_then(host_key);
        let rules = host
            .as_deref()
            .and_then(|h| self.rules_for_host(h))
            .or(self.any_host.as_ref());
        match rules.and_then(|r| r.lookup(path)) {
            Some(route) => Match::Route(route),
            None => Match::Default(self.default_backend.as_ref()),
        }
    }

    /// The HTTPRoute rule for a request on an HTTP (`tls` false) or HTTPS
    /// listener, if one matches.
    pub fn gateway_lookup(
        &self,
        tls: bool,
        host: Option<&str>,
        req: &gateway::matches::Request<'_>,
    ) -> Option<GatewayMatch<'_>> {
        let side = if tls {
            &self.gateway.https
        } else {
            &self.gateway.http
        };
        if side.is_empty() {
            return None;
        }
        let host = host.and_then(host_key);
        let entry = side.lookup(host.as_deref().unwrap_or(""), req)?;
        Some(GatewayMatch {
            rule: self.gateway.rules.get(entry.slot)?,
            matched: entry.m.matched_len(req.path),
        })
    }

    /// `lookup` for a path as it came (normalised here).
    pub fn lookup_raw(&self, host: Option<&str>, path: &str) -> Result<Match<'_>, PathError> {
        Ok(self.lookup(host, &normalize(path)?))
    }

    /// Where a TLS connection with this SNI is passed, unterminated: an
    /// `ssl-passthrough` host's, exact names before `*.` ones.
    pub fn passthrough(&self, sni: Option<&str>) -> Option<&Passthrough> {
        if self.passthrough.is_empty() {
            return None;
        }
        let host = host_key(sni?)?;
        if let Some(p) = self.passthrough.get(host.as_ref()) {
            return Some(p);
        }
        self.passthrough
            .get(&format!("*.{}", wildcard_suffix(&host)?))
    }

    /// Whether any host is passed through (then the HTTPS listener reads
    /// each handshake's SNI before it decides).
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    fn rules_for_host(&self, host: &str) -> Option<&HostRules> {
        if let Some(r) = self.exact_hosts.get(host) {
            return Some(r);
        }
        self.wildcard_hosts.get(wildcard_suffix(host)?)
    }

    /// Every route, its canary's included.
    pub fn routes(&self) -> impl Iterator<Item = &Route> + '_ {
        let hosts = self
            .exact_hosts
            .values()
            .chain(self.wildcard_hosts.values())
            .chain(self.any_host.iter());
        hosts
            .flat_map(|h| {
                h.exact
                    .values()
                    .chain(h.prefixes.iter().map(|(_, r)| r))
                    .chain(h.regexes.iter().map(|(_, _, r)| r))
            })
            .chain(self.default_backend.iter())
            .flat_map(|r| std::iter::once(r).chain(r.canary.as_ref().map(|c| &c.route)))
            .chain(
                self.gateway
                    .rules
                    .iter()
                    .flat_map(|r| r.backends.iter().chain(std::iter::once(&r.own))),
            )
    }

    /// Every endpoint some route can send to.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.routes().flat_map(|r| match &*r.upstream {
            Upstream::Endpoints { addrs, .. } => addrs.clone(),
            _ => Vec::new(),
        })
    }

    /// Every route (their canaries hang off them), to hand each its stats
    /// before the table is published.
    pub fn routes_mut(&mut self) -> impl Iterator<Item = &mut Route> + '_ {
        let hosts = self
            .exact_hosts
            .values_mut()
            .chain(self.wildcard_hosts.values_mut())
            .chain(self.any_host.iter_mut());
        hosts
            .flat_map(|h| {
                h.exact
                    .values_mut()
                    .chain(h.prefixes.iter_mut().map(|(_, r)| r))
                    .chain(h.regexes.iter_mut().map(|(_, _, r)| r))
            })
            .chain(self.default_backend.iter_mut())
            .chain(
                self.gateway
                    .rules
                    .iter_mut()
                    .flat_map(|r| r.backends.iter_mut().chain(std::iter::once(&mut r.own))),
            )
    }

    /// Number of (host, path) rules in force.
    pub fn len(&self) -> usize {
        self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }
}

/// A problem with one Ingress, with the field that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteWarning {
    /// `namespace/name` of the Ingress.
    pub ingress: String,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for RouteWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ingress {}: field {}: {}",
            self.ingress, self.field, self.message
        )
    }
}
