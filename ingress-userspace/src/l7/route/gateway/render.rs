//! What the Gateway API objects compile to, as text: each Gateway of ours
//! with its listeners, each HTTPRoute with its parents, and the conditions
//! that are not as they should be (the status ingressd would write).
//! `ingressd routes --manifests` prints it under the Ingress routes.
use std::fmt::Write as _;

use super::{attach::Condition, table::GatewayRoutes};

/// The conditions that say something is wrong (a False one, a true
/// Conflicted, an Accepted with another reason than Accepted), as
/// `Type=Reason (message)`.
fn troubles(conditions: &[Condition]) -> String {
    let bad: Vec<String> = conditions
        .iter()
        .filter(|c| {
            c.status == (c.type_ == "Conflicted")
                || !matches!(c.reason, "Accepted" | "ResolvedRefs" | "NoConflicts")
        })
        .map(|c| {
            if c.message.is_empty() {
                format!("{}={}", c.type_, c.reason)
            } else {
                format!("{}={} ({})", c.type_, c.reason, c.message)
            }
        })
        .collect();
    if bad.is_empty() {
        "ok".into()
    } else {
        bad.join("; ")
    }
}

pub fn render_gateway(t: &GatewayRoutes) -> String {
    let mut out = String::new();
    for (key, gw) in &t.attachment.gateways {
        let _ = writeln!(out, "GATEWAY {key}  {}", troubles(&gw.conditions));
        for l in &gw.listeners {
            let host = l.hostname.as_deref().unwrap_or("*");
            let proto = match l.protocol {
                Some(super::attach::Protocol::Http) => "HTTP",
                Some(super::attach::Protocol::Https) => "HTTPS",
                None => "unsupported",
            };
            let _ = writeln!(
                out,
                "  listener {} {proto}:{} {host}  routes={}  {}",
                l.name,
                l.port,
                l.attached_routes,
                troubles(&l.conditions)
            );
        }
    }
    for (key, route) in &t.attachment.routes {
        let refused = t
            .refused
            .get(key)
            .map(|why| format!("  not served: {why}"))
            .unwrap_or_default();
        let _ = writeln!(out, "HTTPROUTE {key}{refused}");
        for p in &route.parents {
            let gw = t.attachment.gateways.get(&p.gateway);
            let on: Vec<String> = p
                .listeners
                .iter()
                .map(|(i, hosts)| {
                    let name = gw.map_or("?", |g| g.listeners[*i].name.as_str());
                    if hosts.is_empty() {
                        format!("{name}(*)")
                    } else {
                        format!("{name}({})", hosts.join(","))
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "  parent {} on [{}]  {}",
                p.gateway,
                on.join(" "),
                troubles(&p.conditions)
            );
        }
    }
    out
}
