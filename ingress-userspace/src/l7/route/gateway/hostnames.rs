//! Hostname matching as the Gateway API defines it: names compare without
//! regard to case, and a `*.` prefix matches one or more labels (so
//! `*.example.com` matches `a.example.com` and `a.b.example.com`, never
//! `example.com`).

/// Lower case, without a trailing dot.
pub fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `host` (a name, or itself a `*.` pattern) is within `pattern`.
fn within(host: &str, pattern: &str) -> bool {
    if host == pattern {
        return true;
    }
    match pattern.strip_prefix("*.") {
        None => host == pattern,
        Some(suffix) => under(host.strip_prefix("*.").unwrap_or(host), suffix),
    }
}

/// Whether `host` is one or more labels under `suffix` (what `*.suffix`
/// matches).
pub fn under(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

/// The names a route serves on a listener: the intersection of the
/// listener's hostname (None: any) with the route's (empty: any). None
/// when they share no name (the route is then not attached to that
/// listener, `NoMatchingListenerHostname`); an empty list means any host.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let listener = listener.map(normal).filter(|l| !l.is_empty());
    let route: Vec<String> = route.iter().map(|h| normal(h)).collect();
    match (listener, route.is_empty()) {
        (None, true) => Some(Vec::new()),
        (None, false) => Some(route),
        (Some(l), true) => Some(vec![l]),
        (Some(l), false) => {
            let mut out: Vec<String> = Vec::new();
            for r in route {
                // The narrower of the two is what both serve.
                let shared = if within(&r, &l) {
                    Some(r)
                } else if within(&l, &r) {
                    Some(l.clone())
                } else {
                    None
                };
                if let Some(s) = shared
                    && !out.contains(&s)
                {
                    out.push(s);
                }
            }
            (!out.is_empty()).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(l: Option<&str>, r: &[&str]) -> Option<Vec<String>> {
        let r: Vec<String> = r.iter().map(|s| s.to_string()).collect();
        intersect(l, &r)
    }

    #[test]
    fn intersections_as_the_spec_lists_them() {
        // Neither sets one: every host.
        assert_eq!(hosts(None, &[]), Some(vec![]));
        assert_eq!(
            hosts(None, &["A.example.com"]),
            Some(vec!["a.example.com".into()])
        );
        assert_eq!(
            hosts(Some("foo.example.com"), &[]),
            Some(vec!["foo.example.com".into()])
        );
        // A wildcard listener takes names one or more labels under it.
        assert_eq!(
            hosts(
                Some("*.example.com"),
                &[
                    "a.example.com",
                    "a.b.example.com",
                    "example.com",
                    "other.org"
                ]
            ),
            Some(vec!["a.example.com".into(), "a.b.example.com".into()])
        );
        // A wildcard route narrows to the listener's name.
        assert_eq!(
            hosts(Some("foo.example.com"), &["*.example.com"]),
            Some(vec!["foo.example.com".into()])
        );
        // Two wildcards: the narrower.
        assert_eq!(
            hosts(Some("*.example.com"), &["*.foo.example.com"]),
            Some(vec!["*.foo.example.com".into()])
        );
        assert_eq!(
            hosts(Some("*.foo.example.com"), &["*.example.com"]),
            Some(vec!["*.foo.example.com".into()])
        );
        assert_eq!(
            hosts(Some("*.example.com"), &["*.example.com"]),
            Some(vec!["*.example.com".into()])
        );
        // Nothing shared.
        assert_eq!(hosts(Some("foo.example.com"), &["bar.example.com"]), None);
        assert_eq!(hosts(Some("*.example.com"), &["example.com"]), None);
        assert_eq!(hosts(Some("*.example.com"), &["badexample.com"]), None);
    }
}
