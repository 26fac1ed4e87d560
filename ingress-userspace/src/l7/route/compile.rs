//! Ingresses into a route table (pure): which Ingresses are ours, their
//! backends resolved to endpoints, their rules merged by host, oldest
//! first on a conflict.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};

use super::{
    Canary, HostRules, PathKind, Route, RouteTable, RouteWarning, Upstream,
    annotations::{
        self, Policy,
        canary::{Expect, HeaderRule},
        client_certs::Verify,
    },
    backend_tls::{self, BackendTls},
    client_certs::{self, ClientAuth},
    headers::HeaderSet,
    path_elements,
    pattern::{Budget, Patterns, REGEX_CHARS},
    users::{self, Users},
};
use crate::{
    cluster::{ClassConfig, ObjectKey, PortRef, Snapshot, is_ours, usable_endpoints},
    l7::{path::normalize, route::normalize_host, stats::StatsHandle},
};

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
pub(super) fn resolve_backend(
    ns: &str,
    backend: &IngressBackend,
    snapshot: &Snapshot,
    service_upstream: bool,
) -> Result<Upstream, String> {
    let Some(svc_ref) = &backend.service else {
        return Err("only Service backends are supported (resource backends are not)".into());
    };
    let name = backend_name(ns, backend);
    let port_ref = svc_ref.port.as_ref();
    let port_label = port_ref
        .and_then(|p| p.name.clone().or(p.number.map(|n| n.to_string())))
        .unwrap_or_default();
    let key = ObjectKey::new(ns, svc_ref.name.clone());
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
    let port_ref = PortRef {
        name: port.name.as_deref().unwrap_or(""),
        protocol: "TCP",
    };
    if service_upstream {
        // nginx's service-upstream: the Service's own address, one
        // endpoint that kube-proxy (or ingressd's socket LB) balances.
        let ip = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| *ip != "None")
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        return match ip {
            Some(ip) => Ok(Upstream::Endpoints {
                name,
                addrs: vec![SocketAddr::new(ip, port.port as u16)],
                app_protocol: port.app_protocol.clone(),
            }),
            None => Err(format!(
                "service-upstream: Service {ns}/{} has no cluster IP (headless)",
                svc_ref.name
            )),
        };
    }
    let slices = snapshot.slices_of(&key);
    let mut addrs: Vec<SocketAddr> = usable_endpoints(&slices, port_ref, |_| true)
        .into_iter()
        .map(|e| SocketAddr::new(e.addr, e.port))
        .collect();
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
    compile_with(snapshot, class, &mut Patterns::default())
}

/// `compile` with the patterns compiled by earlier calls: only new ones
/// are compiled, and those no Ingress uses any more are forgotten. The
/// table is the same as `compile`'s.
pub fn compile_with(
    snapshot: &Snapshot,
    class: &ClassConfig,
    patterns: &mut Patterns,
) -> (RouteTable, Vec<RouteWarning>) {
    let compiled = compile_all(snapshot, class, patterns);
    patterns.keep_used();
    compiled
}

fn compile_all(
    snapshot: &Snapshot,
    class: &ClassConfig,
    patterns: &mut Patterns,
) -> (RouteTable, Vec<RouteWarning>) {
    let mut warnings = Vec::new();
    let mut ingresses: Vec<&Ingress> = snapshot
        .ingresses
        .values()
        .filter(|i| is_ours(i, snapshot, class))
        .collect();
    ingresses.sort_by_key(|i| creation_order(i));

    let mut hosts: BTreeMap<String, Paths> = BTreeMap::new();
    let mut owners: HashMap<(String, PathKind, String), String> = HashMap::new();
    let mut table = RouteTable::default();
    let mut upstreams = Upstreams::new(snapshot);

    // Annotations first: as in ingress-nginx, `use-regex` (or
    // `rewrite-target`) on any Ingress makes every Prefix and
    // ImplementationSpecific path of its hosts a regular expression.
    // A canary's own annotations other than its canary rules do nothing
    // (its requests get the main Ingress's), so they make no regex host.
    let policies: Vec<Arc<Policy>> = ingresses
        .iter()
        .map(|ing| {
            let mut annotations = class.annotation_defaults.clone();
            annotations.extend(ing.metadata.annotations.clone().unwrap_or_default());
            Arc::new(annotations::policy(
                &ingress_id(ing),
                &annotations,
                &mut warnings,
            ))
        })
        .collect();
    let regex_hosts: HashSet<String> = ingresses
        .iter()
        .zip(&policies)
        .filter(|(_, p)| p.use_regex && p.canary.is_none())
        .flat_map(|(ing, _)| ing.spec.iter().flat_map(|s| s.rules.iter().flatten()))
        .map(|r| r.host.as_deref().unwrap_or("").trim().to_ascii_lowercase())
        .collect();

    // Canaries attach to the routes the main Ingresses made: last.
    let mut canaries = Vec::new();
    // Ingresses that name other names for their hosts, with those hosts.
    let mut other_names: Vec<(String, Vec<String>, Arc<Policy>)> = Vec::new();
    for (ing, policy) in ingresses.into_iter().zip(policies) {
        if policy.canary.is_some() {
            canaries.push((ing, policy));
            continue;
        }
        let ns = ing
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let id = ingress_id(ing);
        let Some(spec) = &ing.spec else { continue };
        let users = users_of(&policy, &ns, &id, snapshot, &mut warnings);
        let response_headers =
            response_headers_of(&policy, &ns, &id, snapshot, class, &mut warnings);
        let error_backend = upstreams.error_backend(&policy, &ns, &id, class, &mut warnings);
        let mut budget = Budget::default();
        let client_auth = client_auth_of(
            &policy,
            &ns,
            &id,
            snapshot,
            patterns,
            &mut budget,
            &mut warnings,
        );
        if matches!(&policy.client_certs, Some(Ok(c)) if c.verify != Verify::Off) {
            table.client_cert_hosts.extend(
                spec.rules
                    .iter()
                    .flatten()
                    .filter_map(|r| r.host.as_deref().and_then(normalize_host)),
            );
        }
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
                        .or_insert_with(|| ObjectKey::new(ns.clone(), secret.clone()));
                    tls_hosts.push(h);
                }
            }
        }
        if let Some(db) = &spec.default_backend {
            let up = upstreams.get(
                &ns,
                &id,
                db,
                "spec.defaultBackend",
                &mut warnings,
                policy.service_upstream,
            );
            let up = upstreams.fallback(up, &policy, &ns, &id, &mut warnings);
            match &table.default_backend {
                None => {
                    let mut r = route(up, &id, policy.force_ssl_redirect, &policy, None, "/");
                    r.backend_tls = upstreams.tls(&policy, &ns, &id, db, &mut warnings);
                    r.users = users.clone();
                    r.response_headers = response_headers.clone();
                    r.error_backend = error_backend.clone();
                    r.client_auth = client_auth.clone();
                    table.default_backend = Some(r);
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
        if !policy.aliases.is_empty() || policy.www_redirect {
            let named: Vec<String> = spec
                .rules
                .iter()
                .flatten()
                .filter_map(|r| r.host.as_deref().and_then(normalize_host))
                .filter(|h| !h.starts_with("*."))
                .collect();
            other_names.push((id.clone(), named, policy.clone()));
        }
        let paths = rule_paths(&id, spec, &regex_hosts, &mut warnings);
        if policy.ssl_passthrough {
            passthrough_hosts(
                &paths,
                &ns,
                &id,
                class.ssl_passthrough,
                &policy,
                &mut upstreams,
                &mut table,
                &mut warnings,
            );
        }
        for rp in paths {
            let ssl_redirect = policy.force_ssl_redirect
                || (policy.ssl_redirect && !rp.host.is_empty() && tls_hosts.contains(&rp.host));
            let pattern = match rp.kind {
                PathKind::Regex => Some(patterns.get(&rp.path, &mut budget)),
                _ if policy.rewrite_target.is_some() => {
                    Some(patterns.literal(&rp.path, &mut budget))
                }
                _ => None,
            };
            let pattern = match pattern.transpose() {
                Ok(p) => p,
                Err(e) => {
                    warnings.push(RouteWarning {
                        ingress: id.clone(),
                        field: format!("{}.path", rp.field),
                        message: format!("{:?} {e}; ignored", rp.path),
                    });
                    continue;
                }
            };
            let upstream = upstreams.get(
                &ns,
                &id,
                rp.backend,
                &format!("{}.backend", rp.field),
                &mut warnings,
                policy.service_upstream,
            );
            let upstream = upstreams.fallback(upstream, &policy, &ns, &id, &mut warnings);
            let key = (rp.host.clone(), rp.kind, rp.key.clone());
            if let Some(owner) = owners.get(&key) {
                warnings.push(RouteWarning {
                    ingress: id.clone(),
                    field: format!("{}.path", rp.field),
                    message: format!(
                        "host {:?} path {:?} ({:?}) already routed by older Ingress {owner}; ignored",
                        if rp.host.is_empty() { "*" } else { &rp.host },
                        rp.key,
                        rp.kind
                    ),
                });
                continue;
            }
            owners.insert(key, id.clone());
            let location = if rp.kind == PathKind::Regex {
                "/"
            } else {
                &rp.key
            };
            let mut route = route(upstream, &id, ssl_redirect, &policy, pattern, location);
            route.backend_tls = upstreams.tls(&policy, &ns, &id, rp.backend, &mut warnings);
            route.users = users.clone();
            route.response_headers = response_headers.clone();
            route.error_backend = error_backend.clone();
            route.client_auth = client_auth.clone();
            hosts
                .entry(rp.host)
                .or_default()
                .insert((rp.kind, rp.key), route);
        }
    }
    if table.default_backend.is_none()
        && let Some(key) = &class.default_backend
    {
        table.default_backend = Some(flag_default_backend(key, &mut upstreams, &mut warnings));
    }
    for (ing, policy) in canaries {
        attach_canaries(
            ing,
            &policy,
            &regex_hosts,
            &mut hosts,
            &mut table,
            &mut upstreams,
            patterns,
            &mut warnings,
        );
    }
    other_hosts(&other_names, &mut hosts, &mut table, &mut warnings);
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
    gateway_routes(snapshot, class, &mut table, patterns, &mut warnings);
    // Once every route is in place: they all get the request headers.
    global_headers(snapshot, class, &mut table, &mut warnings);
    (table, warnings)
}

/// The HTTPRoutes of our Gateways, into the same table. A host both an
/// Ingress and an HTTPRoute route is reported: the HTTPRoute's matches
/// are tried first and the Ingress serves what none of them matches,
/// which is rarely what both owners meant.
fn gateway_routes(
    snapshot: &Snapshot,
    class: &ClassConfig,
    table: &mut RouteTable,
    patterns: &mut Patterns,
    warnings: &mut Vec<RouteWarning>,
) {
    let (http, https) = class.proxy_ports;
    table.gateway = super::gateway::table::compile(
        snapshot,
        &class.gateway_controller,
        super::gateway::attach::Ports { http, https },
        patterns,
    );
    let gw = &table.gateway;
    for (host, entries) in gw.http.exact_hosts().chain(gw.https.exact_hosts()) {
        let (Some(rules), Some(e)) = (table.exact_hosts.get(host), entries.first()) else {
            continue;
        };
        let owner = rules
            .exact
            .values()
            .chain(rules.prefixes.iter().map(|(_, r)| r))
            .chain(rules.regexes.iter().map(|(_, _, r)| r))
            .next();
        if let Some(r) = owner {
            warnings.push(RouteWarning {
                ingress: r.ingress.to_string(),
                field: "spec.rules[].host".into(),
                message: format!(
                    "host {host} is also routed by HTTPRoute {}/{}: its matches are tried first, this Ingress serves the requests none of them matches",
                    e.target.route.namespace, e.target.route.name
                ),
            });
        }
    }
}

/// `ssl-passthrough`: each host of the Ingress's rules sends its TLS
/// connections, unterminated, to the backend of its `/` path (ingress-nginx
/// passes a host through only there); the oldest Ingress keeps a host.
#[allow(clippy::too_many_arguments)]
fn passthrough_hosts(
    paths: &[RulePath<'_>],
    ns: &str,
    id: &str,
    enabled: bool,
    policy: &Policy,
    upstreams: &mut Upstreams<'_>,
    table: &mut RouteTable,
    warnings: &mut Vec<RouteWarning>,
) {
    let field = format!(
        "metadata.annotations[{}ssl-passthrough]",
        annotations::PREFIX
    );
    let warn = |warnings: &mut Vec<RouteWarning>, field: String, message: String| {
        warnings.push(RouteWarning {
            ingress: id.to_string(),
            field,
            message,
        })
    };
    if !enabled {
        warn(
            warnings,
            field,
            "needs --enable-ssl-passthrough (as in ingress-nginx); TLS for its hosts is terminated here".into(),
        );
        return;
    }
    let mut seen = HashSet::new();
    for host in paths.iter().map(|rp| rp.host.as_str()) {
        if !seen.insert(host) {
            continue;
        }
        if host.is_empty() {
            warn(
                warnings,
                field.clone(),
                "a rule without a host cannot be passed through (the handshake's SNI names the host); its TLS is terminated here".into(),
            );
            continue;
        }
        let Some(root) = paths.iter().find(|rp| rp.host == host && rp.key == "/") else {
            warn(
                warnings,
                field.clone(),
                format!("host {host:?} has no path \"/\" to pass its TLS to; terminated here"),
            );
            continue;
        };
        if let Some(owner) = table.passthrough.get(host) {
            warn(
                warnings,
                format!("{}.backend", root.field),
                format!(
                    "host {host:?} is already passed through by older Ingress {}; ignored",
                    owner.ingress
                ),
            );
            continue;
        }
        let upstream = upstreams.get(
            ns,
            id,
            root.backend,
            &format!("{}.backend", root.field),
            warnings,
            policy.service_upstream,
        );
        table.passthrough.insert(
            host.to_string(),
            super::Passthrough {
                ingress: Arc::from(id),
                upstream,
            },
        );
    }
}

/// `server-alias` and `from-to-www-redirect`: names no rule has, added
/// as ingress-nginx adds them to a host's server block. An alias serves
/// its host's paths (with its certificate); the www (or non-www) name
/// redirects there with 308. A name some rule has is left to it.
fn other_hosts(
    ingresses: &[(String, Vec<String>, Arc<Policy>)],
    hosts: &mut BTreeMap<String, Paths>,
    table: &mut RouteTable,
    warnings: &mut Vec<RouteWarning>,
) {
    let ruled: HashSet<String> = hosts.keys().cloned().collect();
    for (id, named, policy) in ingresses {
        let Some(first) = named.first() else {
            continue;
        };
        // A name with rules of its own is theirs (reported); one another
        // Ingress already took as an alias or a redirect stays its.
        let ruled_elsewhere = |name: &str, what: &str, warnings: &mut Vec<RouteWarning>| {
            let ruled = ruled.contains(name);
            if ruled {
                warnings.push(RouteWarning {
                    ingress: id.clone(),
                    field: format!("metadata.annotations[{}{what}]", annotations::PREFIX),
                    message: format!("{name:?} has rules of its own; left to them"),
                });
            }
            ruled
        };
        for alias in &policy.aliases {
            if ruled_elsewhere(alias, "server-alias", warnings) || hosts.contains_key(alias) {
                continue;
            }
            let Some(paths) = hosts.get(first).cloned() else {
                continue;
            };
            hosts.insert(alias.clone(), paths);
            if let Some(secret) = table.tls_hosts.get(first).cloned() {
                table.tls_hosts.entry(alias.clone()).or_insert(secret);
            }
            if table.client_cert_hosts.contains(first) {
                table.client_cert_hosts.insert(alias.clone());
            }
        }
        if !policy.www_redirect {
            continue;
        }
        for host in named {
            let other = match host.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{host}"),
            };
            // The other name having rules is the usual case (both
            // routed): nothing to say.
            if ruled.contains(&other) || hosts.contains_key(&other) {
                continue;
            }
            let Some(any) = hosts.get(host).and_then(|p| p.values().next()).cloned() else {
                continue;
            };
            let redirect = Policy {
                redirect: Some((
                    format!("$scheme://{host}$request_uri"),
                    hyper::StatusCode::PERMANENT_REDIRECT,
                )),
                ..Policy::default()
            };
            let r = route(
                any.upstream.clone(),
                id,
                false,
                &Arc::new(redirect),
                None,
                "/",
            );
            hosts
                .entry(other.clone())
                .or_default()
                .insert((PathKind::Prefix, "/".into()), r);
            if let Some(secret) = table.tls_hosts.get(host).cloned() {
                table.tls_hosts.entry(other).or_insert(secret);
            }
        }
    }
}

/// host key ("" = any host; "*.x" = wildcard) → (kind, path) → route.
type Paths = BTreeMap<(PathKind, String), Route>;

fn ingress_id(ing: &Ingress) -> String {
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    format!("{ns}/{}", ing.metadata.name.as_deref().unwrap_or_default())
}

pub(super) fn route(
    upstream: Arc<Upstream>,
    id: &str,
    ssl_redirect: bool,
    policy: &Arc<Policy>,
    rewrite: Option<super::PathRegex>,
    location: &str,
) -> Route {
    Route {
        backend_tls: None,
        users: None,
        proxy_headers: None,
        response_headers: None,
        error_backend: None,
        client_auth: None,
        location: Arc::from(location),
        service: Arc::from(upstream.name()),
        upstream,
        ingress: Arc::from(id),
        ssl_redirect,
        policy: policy.clone(),
        rewrite,
        stats: StatsHandle::default(),
        canary: None,
        canary_of: None,
        gateway: None,
    }
}

/// A backend of a Service's first port (80 when it has none or is not
/// found: resolving it then reports why), as ingress-nginx takes default
/// backends.
fn first_port(key: &ObjectKey, snapshot: &Snapshot) -> IngressBackend {
    let first = snapshot
        .services
        .get(key)
        .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port));
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: key.name.clone(),
            port: Some(ServiceBackendPort {
                number: Some(first.unwrap_or(80)),
                name: None,
            }),
        }),
        resource: None,
    }
}

/// The route of `--default-backend-service`: the Service's first port,
/// labelled as ingress-nginx labels it.
fn flag_default_backend(
    key: &ObjectKey,
    upstreams: &mut Upstreams<'_>,
    warnings: &mut Vec<RouteWarning>,
) -> Route {
    let backend = first_port(key, upstreams.snapshot);
    let up = upstreams.get(
        &key.namespace,
        "--default-backend-service",
        &backend,
        "--default-backend-service",
        warnings,
        false,
    );
    let mut r = route(up, "-", false, &Arc::default(), None, "/");
    r.service = Arc::from("upstream-default-backend");
    r
}

/// The client-certificate check of an Ingress's `auth-tls-*`, or why its
/// paths answer 503 (each reason reported).
fn client_auth_of(
    policy: &Policy,
    ns: &str,
    id: &str,
    snapshot: &Snapshot,
    patterns: &mut Patterns,
    budget: &mut Budget,
    warnings: &mut Vec<RouteWarning>,
) -> Option<Result<Arc<ClientAuth>, Arc<str>>> {
    Some(match policy.client_certs.as_ref()? {
        // Reported when the annotations were read.
        Err(e) => Err(Arc::from(e.as_str())),
        Ok(c) if c.verify == Verify::Off => return None,
        Ok(c) => client_certs::build(c, ns, snapshot, patterns, budget)
            .map(Arc::new)
            .map_err(|e| {
                warnings.push(RouteWarning {
                    ingress: id.to_string(),
                    field: format!(
                        "metadata.annotations[{}auth-tls-secret]",
                        annotations::PREFIX
                    ),
                    message: format!("{e}; the Ingress's paths answer 503"),
                });
                Arc::from(e)
            }),
    })
}

/// The users of an Ingress's `auth-type`, or why its paths answer 503
/// (each reason reported).
fn users_of(
    policy: &Policy,
    ns: &str,
    id: &str,
    snapshot: &Snapshot,
    warnings: &mut Vec<RouteWarning>,
) -> Option<Result<Arc<Users>, Arc<str>>> {
    let field = format!("metadata.annotations[{}auth-secret]", annotations::PREFIX);
    let mut warn = |message: String| {
        warnings.push(RouteWarning {
            ingress: id.to_string(),
            field: field.clone(),
            message,
        })
    };
    Some(match policy.user_auth.as_ref()? {
        // Reported when the annotations were read.
        Err(e) => Err(Arc::from(e.as_str())),
        Ok(auth) => users::build(auth, ns, snapshot, &mut warn)
            .map(Arc::new)
            .map_err(|e| {
                warn(format!("{e}; the Ingress's paths answer 503"));
                Arc::from(e)
            }),
    })
}

/// What ingressd sets on requests to endpoints itself (the forwarding
/// headers) and what frames a message: `--proxy-set-headers` leaves them.
const SET_BY_INGRESSD: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-original-forwarded-for",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-request-id",
    "via",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
];

/// `--add-headers` and `--proxy-set-headers`: their ConfigMaps' headers,
/// on the table (answers) and on every route (requests).
fn global_headers(
    snapshot: &Snapshot,
    class: &ClassConfig,
    table: &mut RouteTable,
    warnings: &mut Vec<RouteWarning>,
) {
    let mut said: Vec<(&str, String)> = Vec::new();
    if let Some(key) = &class.add_headers {
        let flag = "--add-headers";
        let h = HeaderSet::global(key, flag, snapshot, &[], &mut |m| said.push((flag, m)));
        table.add_headers = (!h.is_empty()).then(|| Arc::new(h));
    }
    if let Some(key) = &class.proxy_set_headers {
        let flag = "--proxy-set-headers";
        let h = HeaderSet::global(key, flag, snapshot, SET_BY_INGRESSD, &mut |m| {
            said.push((flag, m))
        });
        if !h.is_empty() {
            let h = Arc::new(h);
            for r in table.routes_mut() {
                if let Some(c) = r.canary.as_mut() {
                    c.route.proxy_headers = Some(h.clone());
                }
                r.proxy_headers = Some(h.clone());
            }
        }
    }
    warnings.extend(said.into_iter().map(|(flag, message)| RouteWarning {
        ingress: flag.to_string(),
        field: flag.to_string(),
        message,
    }));
}

/// `custom-headers`: the ConfigMap's headers, or why the paths answer 503.
fn response_headers_of(
    policy: &Policy,
    ns: &str,
    id: &str,
    snapshot: &Snapshot,
    class: &ClassConfig,
    warnings: &mut Vec<RouteWarning>,
) -> Option<Result<Arc<HeaderSet>, Arc<str>>> {
    let named = policy.custom_headers.as_deref()?;
    Some(
        HeaderSet::build(named, ns, snapshot, &class.allowed_response_headers)
            .map(Arc::new)
            .map_err(|e| {
                warnings.push(RouteWarning {
                    ingress: id.to_string(),
                    field: format!(
                        "metadata.annotations[{}custom-headers]",
                        annotations::PREFIX
                    ),
                    message: format!("{e}; the Ingress's paths answer 503"),
                });
                Arc::from(e)
            }),
    )
}

/// Backends resolved once per table: one shared upstream per backend, so
/// balancing state is shared too; their TLS settings likewise.
struct Upstreams<'s> {
    snapshot: &'s Snapshot,
    resolved: HashMap<String, Arc<Upstream>>,
    /// By Ingress, namespace and Service.
    tls: HashMap<(String, String, String), TlsState>,
}

type TlsState = Option<Result<Arc<BackendTls>, Arc<str>>>;

impl<'s> Upstreams<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
        Self {
            snapshot,
            resolved: HashMap::new(),
            tls: HashMap::new(),
        }
    }

    /// `up`, or when it has no endpoints and the Ingress names a
    /// `default-backend`, that Service's endpoints under `up`'s name (as
    /// ingress-nginx fills an empty upstream with them).
    fn fallback(
        &mut self,
        up: Arc<Upstream>,
        policy: &Policy,
        ns: &str,
        id: &str,
        warnings: &mut Vec<RouteWarning>,
    ) -> Arc<Upstream> {
        let Some(name) = &policy.default_backend else {
            return up;
        };
        let empty = match &*up {
            Upstream::Endpoints { addrs, .. } => addrs.is_empty(),
            Upstream::Unavailable { .. } => true,
            Upstream::External { .. } => false,
        };
        if !empty {
            return up;
        }
        let backend = first_port(&ObjectKey::new(ns, name.clone()), self.snapshot);
        let field = format!(
            "metadata.annotations[{}default-backend]",
            annotations::PREFIX
        );
        let spare = self.get(ns, id, &backend, &field, warnings, false);
        match &*spare {
            Upstream::Endpoints {
                addrs,
                app_protocol,
                ..
            } if !addrs.is_empty() => self
                .resolved
                .entry(format!("{} (default-backend {})", up.name(), spare.name()))
                .or_insert_with(|| {
                    Arc::new(Upstream::Endpoints {
                        name: up.name().to_string(),
                        addrs: addrs.clone(),
                        app_protocol: app_protocol.clone(),
                    })
                })
                .clone(),
            _ => up,
        }
    }

    /// Who answers an Ingress's `custom-http-errors`: its
    /// `default-backend`, else `--default-backend-service`'s Service.
    fn error_backend(
        &mut self,
        policy: &Policy,
        ns: &str,
        id: &str,
        class: &ClassConfig,
        warnings: &mut Vec<RouteWarning>,
    ) -> Option<Arc<Upstream>> {
        if policy.custom_errors.is_empty() {
            return None;
        }
        let field = format!(
            "metadata.annotations[{}custom-http-errors]",
            annotations::PREFIX
        );
        let key = match (&policy.default_backend, &class.default_backend) {
            (Some(name), _) => ObjectKey::new(ns, name.clone()),
            (None, Some(key)) => key.clone(),
            (None, None) => {
                warnings.push(RouteWarning {
                    ingress: id.to_string(),
                    field,
                    message: "no default-backend and no --default-backend-service to answer these codes; the endpoints' answers are sent".into(),
                });
                return None;
            }
        };
        let backend = first_port(&key, self.snapshot);
        Some(self.get(&key.namespace, id, &backend, &field, warnings, false))
    }

    /// TLS to `backend`'s endpoints when the Ingress asks for it (made
    /// once per Ingress and backend; a failure reported once).
    fn tls(
        &mut self,
        policy: &Policy,
        ns: &str,
        id: &str,
        backend: &IngressBackend,
        warnings: &mut Vec<RouteWarning>,
    ) -> TlsState {
        let t = policy.backend_tls.as_ref()?;
        let svc = backend.service.as_ref().map_or("", |s| s.name.as_str());
        // The Ingress's own namespace only (ingress-nginx's
        // allow-cross-namespace-resources: false): no Ingress author
        // borrows another namespace's client key.
        let owner = id.split('/').next().unwrap_or(ns);
        let foreign = t.secret.as_ref().filter(|(sns, _)| sns != owner);
        let snapshot = self.snapshot;
        self.tls
            .entry((id.to_string(), ns.to_string(), svc.to_string()))
            .or_insert_with(|| {
                let built = match foreign {
                    Some((sns, name)) => Err(format!(
                        "proxy-ssl-secret {sns}/{name} is not in the Ingress's namespace {owner}"
                    )),
                    None => backend_tls::build(t, &format!("{svc}.{ns}.svc"), policy.h2, snapshot),
                };
                Some(built.map(Arc::new).map_err(|e| {
                    warnings.push(RouteWarning {
                        ingress: id.to_string(),
                        field: format!(
                            "metadata.annotations[{}backend-protocol]",
                            annotations::PREFIX
                        ),
                        message: format!("TLS to {ns}/{svc}: {e}; its routes answer 502"),
                    });
                    Arc::from(e)
                }))
            })
            .clone()
    }

    fn get(
        &mut self,
        ns: &str,
        id: &str,
        backend: &IngressBackend,
        field: &str,
        warnings: &mut Vec<RouteWarning>,
        service_upstream: bool,
    ) -> Arc<Upstream> {
        let name = backend_name(ns, backend);
        let up = resolve_backend(ns, backend, self.snapshot, service_upstream).unwrap_or_else(
            |reason| {
                warnings.push(RouteWarning {
                    ingress: id.to_string(),
                    field: field.to_string(),
                    message: reason.clone(),
                });
                Upstream::Unavailable {
                    name: name.clone(),
                    reason,
                }
            },
        );
        // Shared by backend and by how it is reached.
        let key = if service_upstream {
            format!("{name} (service-upstream)")
        } else {
            name
        };
        self.resolved
            .entry(key)
            .or_insert_with(|| Arc::new(up))
            .clone()
    }
}

/// One path of an Ingress's rules, checked, in the form it is routed by.
struct RulePath<'i> {
    /// "" for any host, `*.x` for a wildcard, else a lower-case name.
    host: String,
    kind: PathKind,
    /// In normal form (patterns as written).
    path: String,
    /// The key of its route: `path`, without a Prefix's trailing slash
    /// ("/foo/" is "/foo": the same path elements).
    key: String,
    backend: &'i IngressBackend,
    /// `spec.rules[i].http.paths[j]`.
    field: String,
}

/// The usable paths of an Ingress's rules; the others reported.
fn rule_paths<'i>(
    id: &str,
    spec: &'i IngressSpec,
    regex_hosts: &HashSet<String>,
    warnings: &mut Vec<RouteWarning>,
) -> Vec<RulePath<'i>> {
    let mut out = Vec::new();
    let mut warn = |field: String, message: String| {
        warnings.push(RouteWarning {
            ingress: id.to_string(),
            field,
            message,
        })
    };
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
                    warn(
                        format!("spec.rules[{ri}].host"),
                        format!("{h:?} is not a host name or a `*.` wildcard"),
                    );
                    continue;
                }
                h
            }
        };
        let regex_host = regex_hosts.contains(&host);
        for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{ri}].http.paths[{pi}]");
            let kind = match p.path_type.as_str() {
                "Exact" => PathKind::Exact,
                "Prefix" | "ImplementationSpecific" if regex_host => PathKind::Regex,
                "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                other => {
                    warn(
                        format!("{field}.pathType"),
                        format!(
                            "unsupported value {other:?} (Exact, Prefix or ImplementationSpecific)"
                        ),
                    );
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
                warn(
                    format!("{field}.path"),
                    format!(
                        "{path:?} must be an absolute path without spaces, braces or semicolons"
                    ),
                );
                continue;
            }
            if kind != PathKind::Regex && path.contains(REGEX_CHARS) {
                warn(
                    format!("{field}.path"),
                    format!(
                        "{path:?} looks like a regular expression, but no Ingress for this host sets nginx.ingress.kubernetes.io/use-regex: \"true\"; matched literally"
                    ),
                );
            }
            // Requests are matched in normal form: so are the rules.
            let path = if kind == PathKind::Regex {
                path
            } else {
                match normalize(&path) {
                    Ok(normal) => normal.as_str().to_string(),
                    Err(e) => {
                        warn(
                            format!("{field}.path"),
                            format!("{path:?} has {e}; ignored"),
                        );
                        continue;
                    }
                }
            };
            let key = if kind == PathKind::Prefix && path.len() > 1 {
                let trimmed = path.trim_end_matches('/');
                if trimmed.is_empty() { "/" } else { trimmed }.to_string()
            } else {
                path.clone()
            };
            out.push(RulePath {
                host: host.clone(),
                kind,
                path,
                key,
                backend: &p.backend,
                field,
            });
        }
    }
    out
}

/// A canary Ingress's paths, each made the canary of the main route with
/// the same host, path and type (as ingress-nginx merges an alternative
/// backend into the location it matches). Its default backend becomes
/// the default backend's canary.
#[allow(clippy::too_many_arguments)]
fn attach_canaries(
    ing: &Ingress,
    policy: &Policy,
    regex_hosts: &HashSet<String>,
    hosts: &mut BTreeMap<String, Paths>,
    table: &mut RouteTable,
    upstreams: &mut Upstreams<'_>,
    patterns: &mut Patterns,
    warnings: &mut Vec<RouteWarning>,
) {
    let Some(rule) = &policy.canary else { return };
    let Some(spec) = &ing.spec else { return };
    let id = ingress_id(ing);
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let warn = |warnings: &mut Vec<RouteWarning>, field: String, message: String| {
        warnings.push(RouteWarning {
            ingress: id.clone(),
            field,
            message,
        })
    };
    // What the canary's own annotations would have done is the main
    // Ingress's to say: name what is ignored, once.
    let own: Vec<&str> = ing
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix(annotations::PREFIX))
        .filter(|n| *n != "canary" && !n.starts_with("canary-"))
        .filter(|n| annotations::support::annotation(n) != annotations::support::Verdict::Unknown)
        .collect();
    if !own.is_empty() {
        warn(
            warnings,
            "metadata.annotations".into(),
            format!(
                "{} ignored on a canary Ingress: its requests get the main Ingress's annotations, as in ingress-nginx",
                own.join(", ")
            ),
        );
    }
    if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
        warn(
            warnings,
            "spec.tls".into(),
            "ignored on a canary Ingress: the main Ingress's TLS applies".into(),
        );
    }
    let pattern = match &rule.header {
        Some(HeaderRule {
            expect: Expect::Pattern(p),
            ..
        }) => match patterns.header(p, &mut Budget::default()) {
            Ok(re) => Some(re),
            Err(e) => {
                warn(
                    warnings,
                    format!(
                        "metadata.annotations[{}canary-by-header-pattern]",
                        annotations::PREFIX
                    ),
                    format!("{p:?} {e}; the Ingress is not used as a canary"),
                );
                return;
            }
        },
        _ => None,
    };
    let mut attach = |main: &mut Route,
                      backend: &IngressBackend,
                      field: &str,
                      where_: &str,
                      warnings: &mut Vec<RouteWarning>| {
        // The canary's own service-upstream: its backend is its own.
        let up = upstreams.get(
            ns,
            &id,
            backend,
            &format!("{field}.backend"),
            warnings,
            policy.service_upstream,
        );
        if up.name() == main.upstream.name() {
            warn(
                warnings,
                format!("{field}.backend"),
                format!(
                    "{where_}: {} is the main Ingress's backend too; not a canary",
                    up.name()
                ),
            );
            return;
        }
        if let Some(c) = &main.canary {
            warn(
                warnings,
                field.to_string(),
                format!(
                    "{where_} already has a canary (Ingress {}, older); one canary per host and path",
                    c.ingress
                ),
            );
            return;
        }
        let mut route = main.clone();
        route.canary_of = Some(main.service.clone());
        route.service = Arc::from(up.name());
        route.upstream = up;
        // The main Ingress's TLS settings, for the canary's Service.
        route.backend_tls = upstreams.tls(&main.policy, ns, &main.ingress, backend, warnings);
        main.canary = Some(Box::new(Canary {
            route,
            ingress: Arc::from(id.as_str()),
            rule: rule.clone(),
            pattern: pattern.clone(),
        }));
    };
    if let Some(db) = &spec.default_backend {
        match &mut table.default_backend {
            Some(main) => attach(
                main,
                db,
                "spec.defaultBackend",
                "the default backend",
                warnings,
            ),
            None => warn(
                warnings,
                "spec.defaultBackend".into(),
                "no main Ingress sets a default backend to be the canary of; ignored".into(),
            ),
        }
    }
    for rp in rule_paths(&id, spec, regex_hosts, warnings) {
        let shown = if rp.host.is_empty() { "*" } else { &rp.host };
        let where_ = format!("host {shown:?} path {:?} ({:?})", rp.key, rp.kind);
        match hosts
            .get_mut(&rp.host)
            .and_then(|paths| paths.get_mut(&(rp.kind, rp.key.clone())))
        {
            Some(main) => attach(main, rp.backend, &rp.field, &where_, warnings),
            None => warn(
                warnings,
                format!("{}.path", rp.field),
                format!(
                    "{where_}: no main Ingress routes it, so there is nothing to be the canary of; ignored"
                ),
            ),
        }
    }
}
