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
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use self::annotations::Policy;
use crate::l7::{
    path::{NormalPath, PathError, escape, normalize, resolve_within},
    stats::StatsHandle,
};

pub mod annotations;
use crate::manifest::{ObjectKey, Snapshot};

/// Our IngressClass name and controller name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    /// `--ingress-class`: the IngressClass name we serve (default `ebpf`).
    pub class_name: String,
    /// The `spec.controller` of IngressClasses that are ours.
    pub controller: String,
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            class_name: "ebpf".into(),
            controller: "ingress-ebpf/controller".into(),
        }
    }
}

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
    /// With `rewrite-target`: the path's pattern, whose captures the
    /// target refers to.
    pub rewrite: Option<PathRegex>,
    /// Where its requests are counted (set when the table is published).
    pub stats: StatsHandle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PathKind {
    Exact,
    Prefix,
    /// ImplementationSpecific with `use-regex` or `rewrite-target`: a
    /// case-insensitive regular expression anchored at the start, as
    /// ingress-nginx's `location ~*`.
    Regex,
}

/// Characters that make a path look like a regular expression (`.` is
/// common in plain paths, so it does not count).
const REGEX_CHARS: &[char] = &['(', ')', '|', '[', ']', '*', '+', '^', '$', '\\'];

/// A compiled path pattern; equal when the patterns are.
#[derive(Clone, Debug)]
pub struct PathRegex(pub regex::Regex);

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PathRegex {}

impl PathRegex {
    /// `(?i)^path`: what nginx's `~*` location with the path does.
    fn new(path: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(&format!("(?i)^{path}")).map(PathRegex)
    }

    /// For Exact and Prefix paths: the path itself, literally.
    fn literal(path: &str) -> Self {
        Self::new(&regex::escape(path))
            .unwrap_or_else(|_| Self(regex::Regex::new("^").expect("empty pattern")))
    }
}

/// The path and query sent upstream for `rewrite-target`: as nginx's
/// `rewrite`, the whole path becomes the target, `$1`… filled from the
/// pattern's captures on the normalised path, and the request's query
/// follows (after `&` when the target has a query of its own). Captures
/// are escaped again for the wire (`?`, `#`, `%`, spaces; `&`, `=`, `+`
/// also in the query), and dot segments they make are resolved, as long as
/// the result stays under the target's fixed part: `Err` when it would
/// climb out (`/static/$1` with `$1` = `..`). `None`: no rewrite.
pub fn rewrite_path(
    route: &Route,
    path: &NormalPath<'_>,
    query: Option<&str>,
) -> Option<Result<String, RewriteEscapes>> {
    let target = route.policy.rewrite_target.as_deref()?;
    let re = route.rewrite.as_ref()?;
    let caps = re.0.captures(path.as_str())?;
    let (target_path, target_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = expand(target_path, &caps, |c| escape(c).into_owned());
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if has_dot_segment(&out) {
        let fixed = &target_path[..target_path.find('$').unwrap_or(target_path.len())];
        match resolve_within(&out, fixed) {
            Some(resolved) => out = resolved,
            None => return Some(Err(RewriteEscapes)),
        }
    }
    if let Some(tq) = target_query {
        out.push('?');
        out.push_str(&expand(tq, &caps, escape_query));
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(q);
    }
    Some(Ok(out))
}

/// A rewrite whose captures would take the path out of its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteEscapes;

/// `target` with `$1`, `${1}`, `$name` and `${name}` replaced by the
/// captures, each passed through `escape`. As nginx reads it, a number
/// ends at the digits (`$1abc` is capture 1, then `abc`); an unknown
/// capture is empty.
fn expand(target: &str, caps: &regex::Captures<'_>, escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    let mut rest = target;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else if after.starts_with(|c: char| c.is_ascii_digit()) {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], end)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if used == 0 {
            out.push('$');
            rest = after;
            continue;
        }
        let group = match name.parse::<usize>() {
            Ok(i) => caps.get(i),
            Err(_) => caps.name(name),
        };
        if let Some(g) = group {
            out.push_str(&escape(g.as_str()));
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// A capture in the query: escaped as a path is, and so that it cannot
/// add parameters of its own (`&`, `=`, `+`, `;`).
fn escape_query(capture: &str) -> String {
    let escaped = escape(capture);
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        match c {
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            '+' => out.push_str("%2B"),
            ';' => out.push_str("%3B"),
            c => out.push(c),
        }
    }
    out
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// One host's paths.
#[derive(Clone, Debug, Default)]
struct HostRules {
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
                    .find(|(re, _, _)| re.0.is_match(path))
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
fn path_elements(path: &str) -> Vec<String> {
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
    rules: usize,
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

    /// `lookup` for a path as it came (normalised here).
    pub fn lookup_raw(&self, host: Option<&str>, path: &str) -> Result<Match<'_>, PathError> {
        Ok(self.lookup(host, &normalize(path)?))
    }

    fn rules_for_host(&self, host: &str) -> Option<&HostRules> {
        if let Some(r) = self.exact_hosts.get(host) {
            return Some(r);
        }
        // Exactly one label before the wildcard's suffix.
        let (label, suffix) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard_hosts.get(suffix)
    }

    /// Every endpoint some route can send to.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
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
            .flat_map(|r| match &*r.upstream {
                Upstream::Endpoints { addrs, .. } => addrs.clone(),
                _ => Vec::new(),
            })
    }

    /// Every route, to hand each its stats before the table is published.
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

/// Whether an Ingress is ours: its `ingressClassName` names an IngressClass
/// with our controller (or our class name, if that IngressClass is not
/// defined at all, as in plain manifest files), or it names none and an
/// IngressClass of ours is the default; the legacy
/// `kubernetes.io/ingress.class` annotation is honoured too.
pub fn is_ours(ingress: &Ingress, snapshot: &Snapshot, class: &ClassConfig) -> bool {
    let ours = |name: &str| match snapshot
        .ingress_classes
        .get(&(String::new(), name.to_string()))
    {
        Some(ic) => {
            ic.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(class.controller.as_str())
        }
        None => name == class.class_name,
    };
    let spec_class = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
        .map(String::as_str);
    match spec_class.or(annotation) {
        Some(name) => ours(name),
        None => snapshot.ingress_classes.values().any(|ic| {
            let default = ic
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
                .is_some_and(|v| v == "true");
            default
                && ic.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(class.controller.as_str())
        }),
    }
}

/// `namespace/service:port` of a backend, for logs and metrics.
fn backend_name(ns: &str, backend: &IngressBackend) -> String {
    match &backend.service {
        Some(svc) => {
            let port = svc.port.as_ref();
            let label = port
                .and_then(|p| p.name.clone().or(p.number.map(|n| n.to_string())))
                .unwrap_or_default();
            format!("{ns}/{}:{label}", svc.name)
        }
        None => format!("{ns}/(resource backend)"),
    }
}

/// Resolves an Ingress backend to its Service's ready endpoints; an error
/// says what is wrong (the route then answers 503).
fn resolve_backend(
    ns: &str,
    backend: &IngressBackend,
    snapshot: &Snapshot,
) -> Result<Upstream, String> {
    let Some(svc_ref) = &backend.service else {
        return Err("only Service backends are supported (resource backends are not)".into());
    };
    let name = backend_name(ns, backend);
    let port_ref = svc_ref.port.as_ref();
    let port_label = port_ref
        .and_then(|p| p.name.clone().or(p.number.map(|n| n.to_string())))
        .unwrap_or_default();
    let key = (ns.to_string(), svc_ref.name.clone());
    let Some(svc) = snapshot.services.get(&key) else {
        return Err(format!("Service {ns}/{} not found", svc_ref.name));
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port = match port_ref {
        Some(p) if p.name.is_some() => ports.iter().find(|sp| sp.name == p.name),
        Some(p) if p.number.is_some() => ports.iter().find(|sp| Some(sp.port) == p.number),
        _ => None,
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        let host = spec.external_name.clone().unwrap_or_default();
        let number = port_ref
            .and_then(|p| p.number)
            .or(port.map(|p| p.port))
            .unwrap_or(80);
        return Ok(Upstream::External {
            name,
            host,
            port: number as u16,
        });
    }
    let Some(port) = port else {
        return Err(format!(
            "Service {ns}/{} has no port {port_label}",
            svc_ref.name
        ));
    };
    let port_name = port.name.clone().unwrap_or_default();
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in snapshot.slices_of(&key) {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.clone().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let term = cond.and_then(|c| c.terminating).unwrap_or(false);
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, target as u16);
                if is_ready {
                    ready.push(addr);
                } else if serving && term {
                    terminating.push(addr);
                }
            }
        }
    }
    let mut addrs = if ready.is_empty() { terminating } else { ready };
    addrs.sort();
    addrs.dedup();
    Ok(Upstream::Endpoints {
        name,
        addrs,
        app_protocol: port.app_protocol.clone(),
    })
}

fn creation_order(ing: &Ingress) -> (Option<String>, String, String) {
    let created = ing
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| format!("{:?}", t.0));
    (
        created,
        ing.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        ing.metadata.name.clone().unwrap_or_default(),
    )
}

/// Compiles every Ingress of ours into one table (pure). Ingresses are taken
/// oldest first, so on a conflict (same host, path and type) the older one
/// keeps the route and the newer is reported.
pub fn compile(snapshot: &Snapshot, class: &ClassConfig) -> (RouteTable, Vec<RouteWarning>) {
    let mut warnings = Vec::new();
    let mut ingresses: Vec<&Ingress> = snapshot
        .ingresses
        .values()
        .filter(|i| is_ours(i, snapshot, class))
        .collect();
    ingresses.sort_by_key(|i| creation_order(i));

    // host key ("" = any host; "*.x" = wildcard) → (kind, path) → route.
    type Paths = BTreeMap<(PathKind, String), Route>;
    let mut hosts: BTreeMap<String, Paths> = BTreeMap::new();
    let mut owners: HashMap<(String, PathKind, String), String> = HashMap::new();
    let mut table = RouteTable::default();
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();

    // Annotations first: as in ingress-nginx, `use-regex` (or
    // `rewrite-target`) on any Ingress makes every Prefix and
    // ImplementationSpecific path of its hosts a regular expression.
    let policies: Vec<Arc<Policy>> = ingresses
        .iter()
        .map(|ing| {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let id = format!("{ns}/{}", ing.metadata.name.as_deref().unwrap_or_default());
            let annotations = ing.metadata.annotations.clone().unwrap_or_default();
            Arc::new(annotations::policy(&id, &annotations, &mut warnings))
        })
        .collect();
    let regex_hosts: HashSet<String> = ingresses
        .iter()
        .zip(&policies)
        .filter(|(_, p)| p.use_regex)
        .flat_map(|(ing, _)| ing.spec.iter().flat_map(|s| s.rules.iter().flatten()))
        .map(|r| r.host.as_deref().unwrap_or("").trim().to_ascii_lowercase())
        .collect();

    for (ing, policy) in ingresses.into_iter().zip(policies) {
        let ns = ing
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let id = format!("{ns}/{}", ing.metadata.name.clone().unwrap_or_default());
        let Some(spec) = &ing.spec else { continue };
        let mut tls_hosts = Vec::new();
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let Some(secret) = tls.secret_name.clone() else {
                warnings.push(RouteWarning {
                    ingress: id.clone(),
                    field: format!("spec.tls[{i}].secretName"),
                    message: "required".into(),
                });
                continue;
            };
            for h in tls.hosts.iter().flatten() {
                if let Some(h) = normalize_host(h) {
                    table
                        .tls_hosts
                        .entry(h.clone())
                        .or_insert_with(|| (ns.clone(), secret.clone()));
                    tls_hosts.push(h);
                }
            }
        }
        let mut upstream_for =
            |backend: &IngressBackend, field: String, warnings: &mut Vec<RouteWarning>| {
                let name = backend_name(&ns, backend);
                let up = resolve_backend(&ns, backend, snapshot).unwrap_or_else(|reason| {
                    warnings.push(RouteWarning {
                        ingress: id.clone(),
                        field,
                        message: reason.clone(),
                    });
                    Upstream::Unavailable {
                        name: name.clone(),
                        reason,
                    }
                });
                // One shared upstream per backend, so balancing state is shared too.
                upstreams
                    .entry(name)
                    .or_insert_with(|| Arc::new(up))
                    .clone()
            };
        if let Some(db) = &spec.default_backend {
            let up = upstream_for(db, "spec.defaultBackend".into(), &mut warnings);
            match &table.default_backend {
                None => {
                    table.default_backend = Some(Route {
                        service: Arc::from(up.name()),
                        upstream: up,
                        ingress: Arc::from(id.as_str()),
                        ssl_redirect: policy.force_ssl_redirect,
                        policy: policy.clone(),
                        rewrite: None,
                        stats: StatsHandle::default(),
                    })
                }
                Some(r) => warnings.push(RouteWarning {
                    ingress: id.clone(),
                    field: "spec.defaultBackend".into(),
                    message: format!(
                        "ignored: Ingress {} (older) already sets the default backend",
                        r.ingress
                    ),
                }),
            }
        }
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref().map(str::trim) {
                None | Some("") => String::new(),
                Some(h) => {
                    let h = h.to_ascii_lowercase();
                    let valid = match h.strip_prefix("*.") {
                        Some(rest) => !rest.is_empty() && !rest.contains('*'),
                        None => !h.contains('*') && !h.contains(':') && !h.contains('/'),
                    };
                    if !valid {
                        warnings.push(RouteWarning {
                            ingress: id.clone(),
                            field: format!("spec.rules[{ri}].host"),
                            message: format!("{h:?} is not a host name or a `*.` wildcard"),
                        });
                        continue;
                    }
                    h
                }
            };
            let regex_host = regex_hosts.contains(&host);
            let ssl_redirect = policy.force_ssl_redirect
                || (policy.ssl_redirect && !host.is_empty() && tls_hosts.contains(&host));
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = format!("spec.rules[{ri}].http.paths[{pi}]");
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" if regex_host => PathKind::Regex,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        warnings.push(RouteWarning {
                            ingress: id.clone(),
                            field: format!("{field}.pathType"),
                            message: format!("unsupported value {other:?} (Exact, Prefix or ImplementationSpecific)"),
                        });
                        continue;
                    }
                };
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                // Braces are regex quantifiers; nothing is templated here.
                let forbidden: &[char] = if kind == PathKind::Regex {
                    &[';', ' ']
                } else {
                    &['{', '}', ';', ' ']
                };
                if !path.starts_with('/') || path.contains(forbidden) {
                    warnings.push(RouteWarning {
                        ingress: id.clone(),
                        field: format!("{field}.path"),
                        message: format!(
                            "{path:?} must be an absolute path without spaces, braces or semicolons"
                        ),
                    });
                    continue;
                }
                if kind != PathKind::Regex && path.contains(REGEX_CHARS) {
                    warnings.push(RouteWarning {
                        ingress: id.clone(),
                        field: format!("{field}.path"),
                        message: format!(
                            "{path:?} looks like a regular expression, but no Ingress for this host sets nginx.ingress.kubernetes.io/use-regex: \"true\"; matched literally"
                        ),
                    });
                }
                // Requests are matched in normal form: so are the rules.
                let path = if kind == PathKind::Regex {
                    path
                } else {
                    match normalize(&path) {
                        Ok(normal) => normal.as_str().to_string(),
                        Err(e) => {
                            warnings.push(RouteWarning {
                                ingress: id.clone(),
                                field: format!("{field}.path"),
                                message: format!("{path:?} has {e}; ignored"),
                            });
                            continue;
                        }
                    }
                };
                let pattern = match kind {
                    PathKind::Regex => match PathRegex::new(&path) {
                        Ok(re) => Some(re),
                        Err(e) => {
                            warnings.push(RouteWarning {
                                ingress: id.clone(),
                                field: format!("{field}.path"),
                                message: format!("{path:?} is not a regular expression: {e}"),
                            });
                            continue;
                        }
                    },
                    _ if policy.rewrite_target.is_some() => Some(PathRegex::literal(&path)),
                    _ => None,
                };
                let upstream = upstream_for(&p.backend, format!("{field}.backend"), &mut warnings);
                // Prefix "/foo/" is Prefix "/foo" (the same path elements):
                // one route, and a conflict between two Ingresses.
                let path = if kind == PathKind::Prefix && path.len() > 1 {
                    let trimmed = path.trim_end_matches('/');
                    if trimmed.is_empty() { "/" } else { trimmed }.to_string()
                } else {
                    path
                };
                let key = (host.clone(), kind, path.clone());
                if let Some(owner) = owners.get(&key) {
                    warnings.push(RouteWarning {
                        ingress: id.clone(),
                        field: format!("{field}.path"),
                        message: format!(
                            "host {:?} path {path:?} ({kind:?}) already routed by older Ingress {owner}; ignored",
                            if host.is_empty() { "*" } else { &host }
                        ),
                    });
                    continue;
                }
                owners.insert(key, id.clone());
                hosts.entry(host.clone()).or_default().insert(
                    (kind, path),
                    Route {
                        service: Arc::from(upstream.name()),
                        upstream,
                        ingress: Arc::from(id.as_str()),
                        ssl_redirect,
                        policy: policy.clone(),
                        rewrite: pattern,
                        stats: StatsHandle::default(),
                    },
                );
            }
        }
    }
    for (host, paths) in hosts {
        let mut rules = HostRules::default();
        for ((kind, path), route) in paths {
            table.rules += 1;
            match kind {
                PathKind::Exact => drop(rules.exact.insert(path, route)),
                PathKind::Prefix => rules.prefixes.push((path_elements(&path), route)),
                PathKind::Regex => {
                    if let Some(re) = route.rewrite.clone() {
                        rules.regexes.push((re, path.len(), route));
                    }
                }
            }
        }
        // Longest first; equal lengths keep path order (deterministic).
        rules.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        rules.regexes.sort_by_key(|p| std::cmp::Reverse(p.1));
        if host.is_empty() {
            table.any_host = Some(rules);
        } else if let Some(suffix) = host.strip_prefix("*.") {
            table.wildcard_hosts.insert(suffix.to_string(), rules);
        } else {
            table.exact_hosts.insert(host, rules);
        }
    }
    (table, warnings)
}
