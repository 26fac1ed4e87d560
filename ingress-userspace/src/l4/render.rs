//! One text form of the L4 state, for golden tests and `ingressd maps`.
use std::fmt::Write as _;

use ingress_common::{
    SVC_F_AFFINITY_CLIENT_IP, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES, ServiceEntry,
};

use crate::l4::model::{DesiredState, show_backend, show_frontend};

fn flags(e: &ServiceEntry) -> String {
    let mut v = Vec::new();
    if e.flags & SVC_F_AFFINITY_CLIENT_IP != 0 {
        v.push(format!("affinity=ClientIP/{}s", e.affinity_timeout));
    }
    if e.flags & SVC_F_LOCAL_ONLY != 0 {
        v.push("trafficPolicy=Local".to_string());
    }
    if e.flags & SVC_F_SOURCE_RANGES != 0 {
        v.push("sourceRanges".to_string());
    }
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(",")
    }
}

/// Frontends then rings, sorted, one line each.
pub fn render_state(state: &DesiredState) -> String {
    let mut out = String::new();
    out.push_str("SERVICES\n");
    let _ = writeln!(out, "{:<34} {:<40} FLAGS", "FRONTEND", "SERVICE");
    let mut rows: Vec<(String, String, String)> = state
        .frontends
        .iter()
        .map(|(key, entry)| {
            let name = state
                .rings
                .get(&entry.ring_id)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("ring {:016x} (missing)", entry.ring_id));
            (show_frontend(key), name, flags(entry))
        })
        .collect();
    rows.sort();
    for (f, n, fl) in rows {
        let _ = writeln!(out, "{f:<34} {n:<40} {fl}");
    }
    out.push_str("\nBACKENDS\n");
    let mut rings: Vec<_> = state.rings.values().collect();
    rings.sort_by(|a, b| a.name.cmp(&b.name));
    for ring in rings {
        if ring.backends.is_empty() {
            let verdict = if ring.drop_when_empty {
                "(none here: dropped)"
            } else {
                "(none: refused)"
            };
            let _ = writeln!(out, "{:<40} {verdict}", ring.name);
        }
        let mut backends = ring.backends.clone();
        backends.sort_by_key(|b| (u32::from_be(b.addr), u16::from_be(b.port)));
        for b in &backends {
            let _ = writeln!(out, "{:<40} {}", ring.name, show_backend(b));
        }
        if !ring.source_ranges.is_empty() {
            let ranges: Vec<String> = ring
                .source_ranges
                .iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .collect();
            let _ = writeln!(out, "{:<40} sources {}", ring.name, ranges.join(","));
        }
    }
    out
}
