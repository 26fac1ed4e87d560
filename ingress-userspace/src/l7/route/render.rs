//! The route table as text, in the order requests are matched: hosts
//! (exact, then `*.` wildcards, then rules for any host), each host's
//! paths (Exact, then Prefix longest first, then patterns longest first),
//! then `ssl-passthrough` hosts, then the default backend. `ingressd
//! routes` prints it, and the route golden tests compare it: precedence is
//! tested in the form it is read.
use std::fmt::Write as _;

use super::{
    HostRules, Route, RouteTable, Upstream,
    annotations::{Policy, cors::Origins},
};

pub fn render_routes(table: &RouteTable) -> String {
    let mut out = String::new();
    let mut exact: Vec<_> = table.exact_hosts.iter().collect();
    exact.sort_by(|a, b| a.0.cmp(b.0));
    for (host, rules) in exact {
        host_block(&mut out, host, table, rules);
    }
    let mut wildcards: Vec<_> = table.wildcard_hosts.iter().collect();
    wildcards.sort_by(|a, b| a.0.cmp(b.0));
    for (suffix, rules) in wildcards {
        host_block(&mut out, &format!("*.{suffix}"), table, rules);
    }
    if let Some(rules) = &table.any_host {
        host_block(&mut out, "*", table, rules);
    }
    let mut passed: Vec<_> = table.passthrough.iter().collect();
    passed.sort_by(|a, b| a.0.cmp(b.0));
    for (host, p) in passed {
        let _ = writeln!(
            out,
            "PASSTHROUGH {host}\n  TLS {}  ingress {}",
            upstream_of(&p.upstream),
            p.ingress
        );
    }
    match &table.default_backend {
        Some(r) => {
            let _ = writeln!(out, "DEFAULT BACKEND\n  {}", target(r));
            canary_line(&mut out, r, "    ");
        }
        None => out.push_str("DEFAULT BACKEND\n  built-in 404\n"),
    }
    // HTTPRoutes are matched before the Ingress rules of their listener.
    out.push_str(&super::gateway::render::render_gateway(&table.gateway));
    out
}

fn host_block(out: &mut String, host: &str, table: &RouteTable, rules: &HostRules) {
    let tls = table
        .tls_hosts
        .get(host)
        .map(|key| format!("  (TLS: Secret {key})"))
        .unwrap_or_default();
    let _ = writeln!(out, "HOST {host}{tls}");
    let mut exact: Vec<_> = rules.exact.iter().collect();
    exact.sort_by(|a, b| a.0.cmp(b.0));
    for (path, r) in exact {
        line(out, "Exact", path, r);
    }
    for (elements, r) in &rules.prefixes {
        line(out, "Prefix", &format!("/{}", elements.join("/")), r);
    }
    for (re, _, r) in &rules.regexes {
        line(out, "Regex", re.as_str(), r);
    }
}

fn line(out: &mut String, kind: &str, path: &str, route: &Route) {
    let _ = writeln!(out, "  {kind:<6} {path:<24} {}", target(route));
    canary_line(out, route, "    ");
}

/// A route's canary, under it: what it takes, where it sends.
fn canary_line(out: &mut String, route: &Route, indent: &str) {
    if let Some(c) = &route.canary {
        let _ = writeln!(
            out,
            "{indent}canary ({}) {}  ingress {}",
            c.rule,
            upstream(&c.route),
            c.ingress
        );
    }
}

/// Where a route sends, who made it, and what its annotations change.
fn target(route: &Route) -> String {
    let upstream = upstream(route);
    let mut notes = policy_notes(&route.policy);
    if route.ssl_redirect {
        notes.insert(0, "ssl-redirect".into());
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", notes.join(", "))
    };
    format!("{upstream}  ingress {}{notes}", route.ingress)
}

fn upstream(route: &Route) -> String {
    upstream_of(&route.upstream)
}

fn upstream_of(upstream: &Upstream) -> String {
    match upstream {
        Upstream::Endpoints {
            name,
            addrs,
            app_protocol,
        } => {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            let list = if list.is_empty() {
                "no endpoints: 503".to_string()
            } else {
                list.join(" ")
            };
            let proto = app_protocol
                .as_ref()
                .map(|p| format!(" appProtocol={p}"))
                .unwrap_or_default();
            format!("→ {name} [{list}]{proto}")
        }
        Upstream::External { name, host, port } => format!("→ {name} ExternalName {host}:{port}"),
        Upstream::Unavailable { name, reason } => format!("→ {name} unavailable: {reason}"),
    }
}

/// The annotations in force, as `name=value` (defaults left out).
fn policy_notes(p: &Policy) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(n) = p.max_body {
        notes.push(format!("proxy-body-size={n}"));
    }
    if let Some(d) = p.connect_timeout {
        notes.push(format!("proxy-connect-timeout={}s", d.as_secs()));
    }
    if let Some(d) = p.read_timeout {
        notes.push(format!("proxy-read-timeout={}s", d.as_secs()));
    }
    if !p.allow.is_empty() {
        let ranges: Vec<String> = p.allow.iter().map(ToString::to_string).collect();
        notes.push(format!("allowlist-source-range={}", ranges.join(",")));
    }
    if let Some((to, code)) = &p.redirect {
        notes.push(format!("redirect={} {to}", code.as_u16()));
    }
    if let Some(root) = &p.app_root {
        notes.push(format!("app-root={root}"));
    }
    if let Some(v) = &p.upstream_vhost {
        notes.push(format!("upstream-vhost={v}"));
    }
    if let Some(t) = &p.rewrite_target {
        notes.push(format!("rewrite-target={t}"));
    }
    match &p.backend_tls {
        Some(t) => {
            let mut tls = vec![if p.h2 { "GRPCS" } else { "HTTPS" }.to_string()];
            if t.verify {
                tls.push("verified".into());
            }
            if let Some((ns, name)) = &t.secret {
                tls.push(format!("secret {ns}/{name}"));
            }
            if let Some(n) = &t.name {
                tls.push(format!("name {n}"));
            }
            if t.server_name {
                tls.push("sni".into());
            }
            notes.push(format!("backend-protocol={}", tls.join(" ")));
        }
        None if p.h2 => notes.push("backend-protocol=h2c".into()),
        None => {}
    }
    if let Some(b) = &p.unsupported_backend {
        notes.push(format!("backend-protocol={b} (answered 502)"));
    }
    if !p.deny.is_empty() {
        let ranges: Vec<String> = p.deny.iter().map(ToString::to_string).collect();
        notes.push(format!("denylist-source-range={}", ranges.join(",")));
    }
    if let Some(c) = &p.cors {
        let origins = match &c.origins {
            Origins::Any => "*".to_string(),
            Origins::List(l) => l
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        notes.push(format!("cors={origins}"));
    }
    if let Some(v) = &p.forwarded_prefix {
        notes.push(format!("x-forwarded-prefix={v}"));
    }
    if p.no_access_log {
        notes.push("enable-access-log=false".into());
    }
    if let Some(a) = &p.affinity {
        notes.push(format!("affinity={a}"));
    }
    if p.service_upstream {
        notes.push("service-upstream".into());
    }
    if let Some(k) = &p.hash_by {
        notes.push(format!("upstream-hash-by={}", k.source));
    }
    if let Some(r) = &p.rate {
        notes.push(format!("limits={r}"));
    }
    if let Some(a) = &p.ext_auth {
        notes.push(if a.is_broken() {
            "auth-url=(refused: answers 500)".to_string()
        } else {
            format!("auth-url={}", a.url)
        });
    }
    notes
}
