//! Which requests a route's canary takes, decided as ingress-nginx's
//! balancer decides it: the `canary-by-header` header first (its exact
//! value, its pattern, or `always`/`never`), then the `canary-by-cookie`
//! cookie (`always`/`never`), then `canary-weight` out of the total. A
//! value that decides nothing falls through to the next rule; a canary
//! without ready endpoints takes nothing.
use super::forwarding::{Fields, cookie, joined, random_u64};
use crate::l7::{
    route::{Canary, Route, annotations::canary::Expect},
    upstream::sticky,
};

/// The route that serves a request: the matched one, or its canary's.
pub(super) fn choose<'r>(route: &'r Route, fields: &impl Fields) -> &'r Route {
    let Some(c) = &route.canary else {
        return route;
    };
    if !c.serving() {
        return route;
    }
    if let Some(kept) = affinitized(route, c, fields) {
        return kept;
    }
    if takes(c, fields, |total| (random_u64() % u64::from(total)) as u32) {
        &c.route
    } else {
        route
    }
}

/// A session cookie set by the main backend or the canary's keeps the
/// request there, before any canary rule (`affinity-canary-behavior:
/// sticky`, the default; `legacy` lets the rules decide).
fn affinitized<'r>(main: &'r Route, c: &'r Canary, fields: &impl Fields) -> Option<&'r Route> {
    let a = main.policy.affinity.as_ref().filter(|a| !a.canary_legacy)?;
    let backend = sticky::parts(cookie(fields, &a.name)?).1?;
    if backend == sticky::backend_key(&main.service).as_bytes() {
        Some(main)
    } else if backend == sticky::backend_key(&c.route.service).as_bytes() {
        Some(&c.route)
    } else {
        None
    }
}

/// `roll(total)` is a number in `0..total`.
fn takes(c: &Canary, fields: &impl Fields, roll: impl FnOnce(u32) -> u32) -> bool {
    if let Some(h) = &c.rule.header
        && let Some(v) = joined(fields, &h.name)
    {
        match &h.expect {
            Expect::Value(want) if *v == *want.as_bytes() => return true,
            Expect::Pattern(_) if c.pattern.as_ref().is_some_and(|p| p.is_match_bytes(&v)) => {
                return true;
            }
            Expect::AlwaysNever if *v == *b"always" => return true,
            Expect::AlwaysNever if *v == *b"never" => return false,
            _ => {}
        }
    }
    if let Some(name) = &c.rule.cookie
        && let Some(v) = cookie(fields, name)
    {
        match v {
            b"always" => return true,
            b"never" => return false,
            _ => {}
        }
    }
    c.rule.weight > 0 && roll(c.rule.total) < c.rule.weight
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use hyper::{HeaderMap, header::HeaderValue};

    use super::*;
    use crate::l7::route::{
        Upstream,
        annotations::{PREFIX, canary::read},
        pattern::{Budget, Patterns},
    };

    fn canary(pairs: &[(&str, &str)]) -> Canary {
        let mut a: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        a.insert(format!("{PREFIX}canary"), "true".into());
        let rule = read(&a, &mut |_: &str, m: String| panic!("{m}")).unwrap();
        let pattern = match &rule.header {
            Some(h) => match &h.expect {
                Expect::Pattern(p) => Some(
                    Patterns::default()
                        .header(p, &mut Budget::default())
                        .unwrap(),
                ),
                _ => None,
            },
            None => None,
        };
        let up = Arc::new(Upstream::Endpoints {
            name: "ns/canary:80".into(),
            addrs: vec!["198.18.0.9:80".parse().unwrap()],
            app_protocol: None,
        });
        let route = Route {
            backend_tls: None,
            users: None,
            proxy_headers: None,
            response_headers: None,
            error_backend: None,
            client_auth: None,
            canary: None,
            canary_of: Some(Arc::from("ns/main:80")),
            gateway: None,
            service: Arc::from(up.name()),
            upstream: up,
            ingress: Arc::from("ns/main"),
            location: Arc::from("/"),
            ssl_redirect: false,
            policy: Arc::default(),
            rewrite: None,
            stats: Default::default(),
        };
        Canary {
            route,
            ingress: Arc::from("ns/main-canary"),
            rule,
            pattern,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Whether it takes the request, with the weight's roll fixed.
    fn decide(c: &Canary, h: &[(&str, &str)], roll: u32) -> bool {
        takes(c, &headers(h), |_| roll)
    }

    #[test]
    fn header_then_cookie_then_weight_as_ingress_nginx_orders_them() {
        let c = canary(&[
            ("canary-by-header", "X-Canary"),
            ("canary-by-cookie", "beta"),
            ("canary-weight", "10"),
        ]);
        // The header decides when it says always or never.
        assert!(decide(
            &c,
            &[("x-canary", "always"), ("cookie", "beta=never")],
            99
        ));
        assert!(!decide(
            &c,
            &[("x-canary", "never"), ("cookie", "beta=always")],
            0
        ));
        // Anything else falls through to the cookie (any Cookie line,
        // name in any case), then to the weight.
        assert!(decide(
            &c,
            &[("x-canary", "maybe"), ("cookie", "a=1; BETA=always")],
            99
        ));
        assert!(decide(
            &c,
            &[("cookie", "a=1"), ("cookie", "beta=always")],
            99
        ));
        assert!(!decide(&c, &[("cookie", "beta=never")], 0));
        assert!(decide(&c, &[("cookie", "beta=sometimes")], 9));
        assert!(!decide(&c, &[], 10));
        // No weight: only header and cookie send requests to it.
        let c = canary(&[("canary-by-header", "X-Canary")]);
        assert!(!decide(&c, &[], 0));
    }

    #[test]
    fn a_header_value_or_pattern_replaces_always() {
        let c = canary(&[
            ("canary-by-header", "x-region"),
            ("canary-by-header-value", "eu-west"),
        ]);
        assert!(decide(&c, &[("X-Region", "eu-west")], 0));
        assert!(!decide(&c, &[("x-region", "always")], 0));
        assert!(!decide(&c, &[("x-region", "EU-WEST")], 0));
        let c = canary(&[
            ("canary-by-header", "x-user"),
            ("canary-by-header-pattern", "^(alice|bob)$"),
        ]);
        assert!(decide(&c, &[("x-user", "bob")], 0));
        assert!(!decide(&c, &[("x-user", "bobby")], 0));
    }

    #[test]
    fn the_weight_sends_its_share_and_an_empty_canary_takes_nothing() {
        let c = canary(&[("canary-weight", "30")]);
        let main = Route {
            canary: Some(Box::new(c)),
            ..canary(&[]).route
        };
        let taken = (0..10_000)
            .filter(|_| {
                std::ptr::eq(
                    choose(&main, &HeaderMap::new()),
                    &main.canary.as_ref().unwrap().route,
                )
            })
            .count();
        assert!(
            (2_500..3_500).contains(&taken),
            "{taken} of 10000 at weight 30"
        );
        let mut empty = main.clone();
        let c = empty.canary.as_mut().unwrap();
        c.route.upstream = Arc::new(Upstream::Endpoints {
            name: "ns/canary:80".into(),
            addrs: Vec::new(),
            app_protocol: None,
        });
        let always = headers(&[]);
        assert!((0..100).all(|_| std::ptr::eq(choose(&empty, &always), &empty)));
    }
}
