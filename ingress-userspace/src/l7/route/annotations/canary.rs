//! `canary` and the `canary-*` annotations, read as ingress-nginx reads
//! them: an Ingress with `canary: "true"` serves no path of its own; each
//! of its host/path pairs names the canary of the main Ingress's route for
//! the same host, path and type. Which requests it takes is decided by
//! header, then cookie, then weight (see `pipeline::canary`).
use std::collections::BTreeMap;

use super::{PREFIX, boolean};

/// ingress-nginx's default `canary-weight-total`; a smaller total is
/// taken as this one, as its balancer does.
pub const DEFAULT_TOTAL: u32 = 100;

/// How a canary Ingress takes requests from its main Ingress's routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryRule {
    pub header: Option<HeaderRule>,
    /// `canary-by-cookie`: the cookie whose value `always` or `never`
    /// decides, when the header did not.
    pub cookie: Option<String>,
    /// `canary-weight` out of `total`: the share of the other requests.
    pub weight: u32,
    /// `canary-weight-total` (at least 100).
    pub total: u32,
}

/// `canary-by-header` with its value or pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRule {
    /// Lower-case header name.
    pub name: String,
    pub expect: Expect,
}

/// What the header's value must be for the canary to take the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `always` takes it, `never` keeps it on the main backend.
    AlwaysNever,
    /// `canary-by-header-value`: exactly this value.
    Value(String),
    /// `canary-by-header-pattern`: a regular expression matching anywhere
    /// in the value (compiled with the route table, bounded as paths are).
    Pattern(String),
}

impl std::fmt::Display for CanaryRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.header {
            parts.push(match &h.expect {
                Expect::AlwaysNever => format!("header {}", h.name),
                Expect::Value(v) => format!("header {}={v}", h.name),
                Expect::Pattern(p) => format!("header {}~{p}", h.name),
            });
        }
        if let Some(c) = &self.cookie {
            parts.push(format!("cookie {c}"));
        }
        parts.push(format!("weight {}/{}", self.weight, self.total));
        f.write_str(&parts.join(", "))
    }
}

/// An HTTP token (RFC 9110 §5.6.2): what header and cookie names are.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The canary annotations of an Ingress: `None` unless `canary` is
/// "true". Set without it, they are reported as doing nothing.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<CanaryRule> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    let others = annotations
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX))
        .filter(|n| n.starts_with("canary-"));
    match get("canary").map(boolean) {
        Some(Some(true)) => {}
        Some(None) => {
            warn(
                &key("canary"),
                format!(
                    "{:?} is not \"true\" or \"false\"; the Ingress is not a canary",
                    get("canary").unwrap_or_default()
                ),
            );
            return None;
        }
        _ => {
            for name in others {
                warn(
                    &key(name),
                    "set without nginx.ingress.kubernetes.io/canary: \"true\"; ignored".into(),
                );
            }
            return None;
        }
    }
    let mut number = |name: &str, default: u32| match get(name) {
        None => default,
        Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
            warn(
                &key(name),
                format!("{v:?} is not a whole number; {default} is used"),
            );
            default
        }),
    };
    let weight = number("canary-weight", 0);
    let total = number("canary-weight-total", DEFAULT_TOTAL).max(DEFAULT_TOTAL);
    let header = match get("canary-by-header") {
        None => None,
        Some(name) if !token(name) => {
            warn(
                &key("canary-by-header"),
                format!("{name:?} is not a header name; no header decides"),
            );
            None
        }
        Some(name) => {
            // A value wins over a pattern, as in ingress-nginx's balancer.
            let value = get("canary-by-header-value").filter(|v| !v.is_empty());
            let pattern = get("canary-by-header-pattern").filter(|v| !v.is_empty());
            let expect = match (value, pattern) {
                (Some(v), _) if v.bytes().any(|b| b.is_ascii_control()) => {
                    warn(
                        &key("canary-by-header-value"),
                        format!("{v:?} is not a header value; no request matches it"),
                    );
                    // Failing open would send requests nobody chose to
                    // the canary: match nothing instead.
                    Expect::Value("\0".into())
                }
                (Some(v), _) => Expect::Value(v.to_string()),
                (None, Some(p)) => Expect::Pattern(p.to_string()),
                (None, None) => Expect::AlwaysNever,
            };
            Some(HeaderRule {
                name: name.to_ascii_lowercase(),
                expect,
            })
        }
    };
    for dependent in ["canary-by-header-value", "canary-by-header-pattern"] {
        if header.is_none() && get(dependent).is_some() {
            warn(
                &key(dependent),
                "set without a usable nginx.ingress.kubernetes.io/canary-by-header; ignored".into(),
            );
        }
    }
    let cookie = match get("canary-by-cookie") {
        Some(c) if token(c) => Some(c.to_string()),
        Some(c) => {
            warn(
                &key("canary-by-cookie"),
                format!("{c:?} is not a cookie name; no cookie decides"),
            );
            None
        }
        None => None,
    };
    Some(CanaryRule {
        header,
        cookie,
        weight,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Option<CanaryRule>, Vec<String>) {
        super::super::read_with(pairs, read)
    }

    #[test]
    fn a_canary_reads_header_cookie_and_weight_with_ingress_nginx_defaults() {
        let (rule, w) = read_all(&[
            ("canary", "true"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-value", "yes"),
            ("canary-by-header-pattern", "^y"),
            ("canary-by-cookie", "beta"),
            ("canary-weight", "20"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let rule = rule.unwrap();
        assert_eq!(
            rule.header,
            Some(HeaderRule {
                name: "x-canary".into(),
                expect: Expect::Value("yes".into())
            })
        );
        assert_eq!(rule.cookie.as_deref(), Some("beta"));
        assert_eq!((rule.weight, rule.total), (20, 100));
        assert_eq!(
            rule.to_string(),
            "header x-canary=yes, cookie beta, weight 20/100"
        );
        // A total under 100 is taken as 100, as the balancer does.
        let (rule, _) = read_all(&[
            ("canary", "true"),
            ("canary-weight", "5"),
            ("canary-weight-total", "10"),
        ]);
        assert_eq!(rule.unwrap().total, 100);
        let (rule, _) = read_all(&[("canary", "true"), ("canary-weight-total", "1000")]);
        assert_eq!(rule.unwrap().total, 1000);
    }

    #[test]
    fn bad_values_are_reported_and_never_widen_the_canary() {
        let (rule, w) = read_all(&[
            ("canary", "true"),
            ("canary-weight", "half"),
            ("canary-by-header", "X Canary"),
            ("canary-by-header-value", "yes"),
            ("canary-by-cookie", "a;b"),
        ]);
        let rule = rule.unwrap();
        assert_eq!(rule.weight, 0);
        assert!(rule.header.is_none() && rule.cookie.is_none());
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[3].contains("canary-by-cookie") && w[3].contains("not a cookie name"));
        // Not a canary: its canary-* annotations do nothing, and say so.
        let (rule, w) = read_all(&[("canary-weight", "50")]);
        assert!(rule.is_none());
        assert!(w[0].contains("without nginx.ingress.kubernetes.io/canary"));
        let (rule, w) = read_all(&[("canary", "yes"), ("canary-weight", "50")]);
        assert!(rule.is_none() && w.len() == 1);
        let (rule, _) = read_all(&[("canary", "false"), ("canary-weight", "50")]);
        assert!(rule.is_none());
    }
}
