//! One text form of the L4 state, for golden tests and `ingressd maps`.
use std::fmt::Write as _;

use ingress_common::{SVC_F_AFFINITY_CLIENT_IP, SVC_F_LOCAL_ONLY};

use crate::l4::model::{DesiredState, show_backend, show_frontend};

fn flags(f: u32) -> String {
    let mut v = Vec::new();
    if f & SVC_F_AFFINITY_CLIENT_IP != 0 {
        v.push("affinity=ClientIP");
    }
    if f & SVC_F_LOCAL_ONLY != 0 {
        v.push("externalTrafficPolicy=Local");
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
            (show_frontend(key), name, flags(entry.flags))
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
            let _ = writeln!(out, "{:<40} (none: refused)", ring.name);
        }
        let mut backends = ring.backends.clone();
        backends.sort_by_key(|b| (u32::from_be(b.addr), u16::from_be(b.port)));
        for b in &backends {
            let _ = writeln!(out, "{:<40} {}", ring.name, show_backend(b));
        }
    }
    out
}
