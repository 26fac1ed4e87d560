//! The Gateway API side of the route table (pure): attached HTTPRoutes'
//! rules, their matches in precedence order per listener protocol, and
//! their backends resolved to endpoints. A route with a rule ingressd
//! cannot serve as written is left out whole and reported, so it never
//! serves something other than what it says.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::networking::v1::{IngressBackend, IngressServiceBackend, ServiceBackendPort};

use super::{
    attach::{Attachment, Ports, Protocol, attach, backend_problem},
    matches::{Entry, HostMatches, Match, Target},
    rules::{self, Rule},
};
use crate::{
    cluster::{
        ObjectKey, Snapshot,
        gateway::{HTTPBackendRef, HTTPRoute},
    },
    l7::route::{
        Route, Upstream,
        annotations::Policy,
        compile::resolve_backend,
        pattern::{Budget, Patterns},
    },
};

/// A rule as it is served: what it does, and a route per backend (by
/// its place in `backendRefs`), each labelled with the HTTPRoute.
#[derive(Clone, Debug)]
pub struct ServedRule {
    pub target: Target,
    pub rule: Arc<Rule>,
    pub backends: Vec<Route>,
    /// Labels the answers that reach no backend (redirects, 500s).
    pub own: Route,
    /// Draws for the weighted pick: a Weyl sequence (steps of 2^32 over
    /// the golden ratio), so any run of requests is split as the weights
    /// say, not just on average.
    pub turn: Arc<std::sync::atomic::AtomicU32>,
}

impl ServedRule {
    /// The backend for a draw `n` (uniform over u32), by weight; None
    /// when the rule has no backend with a weight (answered 500).
    pub fn pick(&self, n: u32) -> Option<&Route> {
        self.rule.pick(n).and_then(|i| self.backends.get(i))
    }

    /// The next draw for `pick`.
    pub fn next_draw(&self) -> u32 {
        self.turn
            .fetch_add(0x9E37_79B9, std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Clone, Debug, Default)]
pub struct GatewayRoutes {
    /// Routes attached to HTTP listeners, and to HTTPS ones.
    pub http: HostMatches,
    pub https: HostMatches,
    /// Every served rule; a match's `slot` is its place here.
    pub rules: Vec<ServedRule>,
    pub attachment: Attachment,
    /// Routes left out, with the field and why (their Accepted condition).
    pub refused: BTreeMap<ObjectKey, String>,
}

/// Compiles the Gateway API objects of `snapshot` for `controller`.
pub fn compile(
    snapshot: &Snapshot,
    controller: &str,
    ports: Ports,
    patterns: &mut Patterns,
) -> GatewayRoutes {
    let attachment = attach(snapshot, controller, ports);
    let mut out = GatewayRoutes::default();
    for (key, state) in &attachment.routes {
        let Some(route) = snapshot.http_routes.get(key) else {
            continue;
        };
        let compiled = match compile_route(key, route, snapshot, patterns) {
            Ok(c) => c,
            Err(e) => {
                out.refused.insert(key.clone(), e);
                continue;
            }
        };
        let created = route
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| format!("{:?}", t.0))
            .unwrap_or_default();
        for parent in &state.parents {
            let Some(gw) = attachment.gateways.get(&parent.gateway) else {
                continue;
            };
            for (listener, hostnames) in &parent.listeners {
                let table = match gw.listeners[*listener].protocol {
                    Some(Protocol::Http) => &mut out.http,
                    Some(Protocol::Https) => &mut out.https,
                    None => continue,
                };
                let names: Vec<&str> = if hostnames.is_empty() {
                    vec![""]
                } else {
                    hostnames.iter().map(String::as_str).collect()
                };
                for (matches, served) in &compiled {
                    for name in &names {
                        for (index, m) in matches.iter().enumerate() {
                            table.add(
                                name,
                                Entry {
                                    m: m.clone(),
                                    target: served.target.clone(),
                                    created: created.clone(),
                                    index,
                                    slot: out.rules.len() + served.target.rule,
                                },
                            );
                        }
                    }
                }
            }
        }
        out.rules
            .extend(compiled.into_iter().map(|(_, served)| served));
    }
    out.http.finish();
    out.https.finish();
    out.attachment = attachment;
    out
}

/// Every rule of a route: its matches (one `/` prefix when none is
/// written, as the API server defaults it) and how it is served.
fn compile_route(
    key: &ObjectKey,
    route: &HTTPRoute,
    snapshot: &Snapshot,
    patterns: &mut Patterns,
) -> Result<Vec<(Vec<Match>, ServedRule)>, String> {
    let mut budget = Budget::default();
    let default_rule;
    let rules = if route.spec.rules.is_empty() {
        default_rule = [Default::default()];
        &default_rule[..]
    } else {
        &route.spec.rules[..]
    };
    let id = format!("{}/{}", key.namespace, key.name);
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let mut matches = Vec::new();
        if r.matches.is_empty() {
            matches.push(
                Match::compile(&Default::default(), patterns, &mut budget)
                    .map_err(|e| format!("spec.rules[{i}].matches: {e}"))?,
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            matches.push(
                Match::compile(m, patterns, &mut budget)
                    .map_err(|e| format!("spec.rules[{i}].matches[{j}].{e}"))?,
            );
        }
        let mut rule = rules::compile(r, i)?;
        // Mirrors resolve as backends do; one that does not mirrors nothing
        // (the route's ResolvedRefs says why).
        for m in &mut rule.mirrors {
            let b = m.backend_ref();
            let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
            m.upstream = match backend_problem(key, &b, snapshot) {
                Some(_) => None,
                None => resolve_backend(ns, &ingress_backend(&b), snapshot, false)
                    .ok()
                    .map(Arc::new),
            };
        }
        let rule = Arc::new(rule);
        // What the proxy's forwarding reads: the rule's endpoint timeout
        // and Host rewrite, as the annotations would set them.
        let policy = Arc::new(Policy {
            read_timeout: rule.backend_timeout,
            upstream_vhost: rule
                .rewrite_host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned),
            ..Policy::default()
        });
        let served = |upstream: Arc<Upstream>| {
            let mut r = super::super::compile::route(upstream, &id, false, &policy, None, "/");
            r.gateway = Some(rule.clone());
            r
        };
        let backends = r
            .backend_refs
            .iter()
            .map(|b| {
                let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
                let backend = ingress_backend(b);
                let name = format!("{ns}/{}:{}", b.name, b.port.unwrap_or(0));
                // Unresolved (the route's ResolvedRefs says why): its share
                // of requests is answered 500.
                let upstream = match backend_problem(key, b, snapshot) {
                    Some(c) => Err(c.message),
                    None => resolve_backend(ns, &backend, snapshot, false),
                };
                served(Arc::new(upstream.unwrap_or_else(|reason| {
                    Upstream::Unavailable { name, reason }
                })))
            })
            .collect();
        let own = served(Arc::new(Upstream::Unavailable {
            name: format!("{id} rule {i}"),
            reason: "no backend".into(),
        }));
        let target = Target {
            route: key.clone(),
            rule: i,
        };
        out.push((
            matches,
            ServedRule {
                target,
                rule,
                backends,
                own,
                turn: Arc::default(),
            },
        ));
    }
    Ok(out)
}

/// A backendRef as the Ingress side resolves backends: a Service port by
/// number.
fn ingress_backend(b: &HTTPBackendRef) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: b.name.clone(),
            port: b.port.map(|p| ServiceBackendPort {
                number: Some(p),
                name: None,
            }),
        }),
        resource: None,
    }
}
