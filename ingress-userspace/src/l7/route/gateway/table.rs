//! The Gateway API side of the route table (pure): attached HTTPRoutes'
//! rules, their matches in precedence order per listener protocol, and
//! their backends resolved to endpoints. A route with a rule ingressd
//! cannot serve as written is left out whole and reported, so it never
//! serves something other than what it says.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::networking::v1::{IngressBackend, IngressServiceBackend, ServiceBackendPort};

use super::{
    attach::{Attachment, Ports, Protocol, attach},
    matches::{Entry, HostMatches, Match, Target},
    rules::{self, Rule},
};
use crate::{
    cluster::{ObjectKey, Snapshot, gateway::HTTPRoute},
    l7::route::{
        Upstream,
        compile::resolve_backend,
        pattern::{Budget, Patterns},
    },
};

/// A rule with its backends (by their place in `backendRefs`).
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub rule: Rule,
    pub backends: Vec<Arc<Upstream>>,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayRoutes {
    /// Routes attached to HTTP listeners, and to HTTPS ones.
    pub http: HostMatches,
    pub https: HostMatches,
    pub rules: HashMap<Target, CompiledRule>,
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
                for (rule_index, matches) in compiled.iter().map(|(m, _)| m).enumerate() {
                    for name in &names {
                        for (index, m) in matches.iter().enumerate() {
                            table.add(
                                name,
                                Entry {
                                    m: m.clone(),
                                    target: Target {
                                        route: key.clone(),
                                        rule: rule_index,
                                    },
                                    created: created.clone(),
                                    index,
                                },
                            );
                        }
                    }
                }
            }
        }
        for (rule_index, (_, rule)) in compiled.into_iter().enumerate() {
            out.rules.insert(
                Target {
                    route: key.clone(),
                    rule: rule_index,
                },
                rule,
            );
        }
    }
    out.http.finish();
    out.https.finish();
    out.attachment = attachment;
    out
}

/// Every rule of a route: its matches (one `/` prefix when none is
/// written, as the API server defaults it) and what it does.
fn compile_route(
    key: &ObjectKey,
    route: &HTTPRoute,
    snapshot: &Snapshot,
    patterns: &mut Patterns,
) -> Result<Vec<(Vec<Match>, CompiledRule)>, String> {
    let mut budget = Budget::default();
    let default_rule;
    let rules = if route.spec.rules.is_empty() {
        default_rule = [Default::default()];
        &default_rule[..]
    } else {
        &route.spec.rules[..]
    };
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
        let rule = rules::compile(r, i)?;
        let backends = r
            .backend_refs
            .iter()
            .map(|b| {
                let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
                let backend = IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: b.name.clone(),
                        port: b.port.map(|p| ServiceBackendPort {
                            number: Some(p),
                            name: None,
                        }),
                    }),
                    resource: None,
                };
                // Unresolved (the route's ResolvedRefs says why): its share
                // of requests is answered 500.
                Arc::new(
                    resolve_backend(ns, &backend, snapshot, false).unwrap_or_else(|reason| {
                        Upstream::Unavailable {
                            name: format!("{ns}/{}:{}", b.name, b.port.unwrap_or(0)),
                            reason,
                        }
                    }),
                )
            })
            .collect();
        out.push((matches, CompiledRule { rule, backends }));
    }
    Ok(out)
}
