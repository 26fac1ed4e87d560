//! `limit-rps`, `limit-rpm`, `limit-burst-multiplier`, `limit-connections`
//! and `limit-allowlist` (old name `limit-whitelist`), read as
//! ingress-nginx reads them: per client address, for all the paths of the
//! Ingress together, clients in the allowlist never limited.
use std::collections::BTreeMap;

use super::{Cidr, PREFIX, ranges};

/// ingress-nginx's default `limit-burst-multiplier`.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// An Ingress's limits per client address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// `limit-rps`: requests a second, with a burst of
    /// `rps × limit-burst-multiplier` taken at once (nginx's `nodelay`).
    pub rps: Option<u32>,
    /// `limit-rpm`: requests a minute, burst likewise.
    pub rpm: Option<u32>,
    pub burst_multiplier: u32,
    /// `limit-connections`: requests in flight at once.
    pub connections: Option<u32>,
    /// `limit-allowlist`: clients never limited.
    pub allow: Vec<Cidr>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none() && self.rpm.is_none() && self.connections.is_none()
    }
}

impl std::fmt::Display for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.rps {
            parts.push(format!("{n} rps burst {}", n * self.burst_multiplier));
        }
        if let Some(n) = self.rpm {
            parts.push(format!("{n} rpm burst {}", n * self.burst_multiplier));
        }
        if let Some(n) = self.connections {
            parts.push(format!("{n} connections"));
        }
        if !self.allow.is_empty() {
            let allow: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
            parts.push(format!("except {}", allow.join(",")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The limits an Ingress asks for: `None` when it asks for none.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<RateLimits> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    // A bad number leaves that limit off, as ingress-nginx does (it
    // reads 0); 0 is no limit there too.
    let mut number = |name: &str| -> Option<u32> {
        let v = get(name)?;
        match v.parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                warn(
                    &key(name),
                    format!("{v:?} is not a whole number; no such limit"),
                );
                None
            }
        }
    };
    let rps = number("limit-rps");
    let rpm = number("limit-rpm");
    let connections = number("limit-connections");
    let burst_multiplier = number("limit-burst-multiplier").unwrap_or(DEFAULT_BURST_MULTIPLIER);
    // limit-allowlist wins over its old name, as in ingress-nginx.
    let allow_name = if get("limit-allowlist").is_some() {
        "limit-allowlist"
    } else {
        "limit-whitelist"
    };
    let allow = match get(allow_name) {
        None => Vec::new(),
        Some(v) => ranges(v).unwrap_or_else(|| {
            // Failing open would exempt nobody knows whom: exempt no one.
            warn(
                &key(allow_name),
                format!("{v:?} is not a list of CIDRs; every client is limited"),
            );
            Vec::new()
        }),
    };
    let limits = RateLimits {
        rps,
        rpm,
        burst_multiplier,
        connections,
        allow,
    };
    (!limits.is_empty()).then_some(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Option<RateLimits>, Vec<String>) {
        super::super::read_with(pairs, read)
    }

    #[test]
    fn limits_are_read_with_ingress_nginx_defaults() {
        let (l, w) = read_all(&[
            ("limit-rps", "10"),
            ("limit-rpm", "300"),
            ("limit-connections", "4"),
            ("limit-whitelist", "10.0.0.0/8"),
            ("limit-allowlist", "198.18.0.0/15"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let l = l.unwrap();
        assert_eq!(
            (l.rps, l.rpm, l.connections),
            (Some(10), Some(300), Some(4))
        );
        assert_eq!(l.burst_multiplier, 5);
        assert_eq!(l.allow, [Cidr::parse("198.18.0.0/15").unwrap()]);
        assert_eq!(
            l.to_string(),
            "10 rps burst 50, 300 rpm burst 1500, 4 connections, except 198.18.0.0/15"
        );
        assert!(read_all(&[("limit-allowlist", "10.0.0.0/8")]).0.is_none());
        assert!(read_all(&[("limit-rps", "0")]).0.is_none());
        let (l, w) = read_all(&[("limit-rps", "fast"), ("limit-connections", "2")]);
        assert_eq!(l.unwrap().rps, None);
        assert_eq!(w.len(), 1);
        let (l, w) = read_all(&[("limit-rps", "1"), ("limit-allowlist", "everyone")]);
        assert!(l.unwrap().allow.is_empty() && w.len() == 1);
    }
}
