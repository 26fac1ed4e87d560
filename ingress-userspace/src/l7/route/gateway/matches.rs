//! HTTPRoute matches in the Gateway API's precedence (pure): among the
//! rules of every route attached for a request's host, the first that
//! matches wins, in this order:
//!
//! 1. the most specific hostname the route was attached with (an exact
//!    name, then longer `*.` suffixes, then any host);
//! 2. an Exact path over a prefix, a longer prefix over a shorter one
//!    (regular expressions after every prefix);
//! 3. a method match over none;
//! 4. more header matches, then more query parameter matches;
//! 5. the older route (creation time), then its `namespace/name`;
//! 6. the rule's place in its route, then the match's in its rule.
use std::{cmp::Reverse, collections::HashMap};

use hyper::Method;

use super::hostnames;
use crate::{
    cluster::{ObjectKey, gateway::HTTPRouteMatch},
    l7::route::pattern::{Budget, PathRegex, Patterns},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Element-wise, as the spec has it (`/foo` matches `/foo` and
    /// `/foo/bar`, not `/foobar`); stored without a trailing slash.
    Prefix(String),
    Regex(PathRegex),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Regex(PathRegex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(re) => re.is_match_bytes(value.as_bytes()),
        }
    }
}

/// One match of a rule, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub path: PathMatch,
    pub method: Option<Method>,
    /// Header names lower case; compared without regard to case.
    pub headers: Vec<(String, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

/// What a request shows the matcher.
pub struct Request<'a> {
    pub path: &'a str,
    pub method: &'a Method,
    /// The first value of a header (lower-case name), if any.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
}

impl Match {
    /// Compiles one `matches` entry; an error names the field.
    pub fn compile(
        m: &HTTPRouteMatch,
        patterns: &mut Patterns,
        budget: &mut Budget,
    ) -> Result<Self, String> {
        let path = match &m.path {
            None => PathMatch::Prefix(String::new()),
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p.type_.as_deref().unwrap_or("PathPrefix") {
                    "Exact" => PathMatch::Exact(value),
                    "PathPrefix" => PathMatch::Prefix(value.trim_end_matches('/').to_string()),
                    "RegularExpression" => PathMatch::Regex(
                        patterns
                            .whole(&value, budget)
                            .map_err(|e| format!("path.value: {value:?} {e}"))?,
                    ),
                    other => {
                        return Err(format!(
                            "path.type: {other:?} is not Exact, PathPrefix or RegularExpression"
                        ));
                    }
                }
            }
        };
        if let PathMatch::Exact(v) | PathMatch::Prefix(v) = &path
            && !v.is_empty()
            && !v.starts_with('/')
        {
            return Err(format!("path.value: {v:?} does not start with /"));
        }
        let method = m
            .method
            .as_deref()
            .map(|s| {
                Method::from_bytes(s.as_bytes())
                    .map_err(|_| format!("method: {s:?} is not a method"))
            })
            .transpose()?;
        let values = |field: &str,
                      list: &[crate::cluster::gateway::HTTPValueMatch],
                      lower: bool,
                      patterns: &mut Patterns,
                      budget: &mut Budget| {
            list.iter()
                .enumerate()
                .map(|(i, v)| {
                    let name = if lower {
                        v.name.to_ascii_lowercase()
                    } else {
                        v.name.clone()
                    };
                    let m = match v.type_.as_deref().unwrap_or("Exact") {
                        "Exact" => ValueMatch::Exact(v.value.clone()),
                        "RegularExpression" => ValueMatch::Regex(
                            patterns
                                .whole(&v.value, budget)
                                .map_err(|e| format!("{field}[{i}].value: {:?} {e}", v.value))?,
                        ),
                        other => {
                            return Err(format!(
                                "{field}[{i}].type: {other:?} is not Exact or RegularExpression"
                            ));
                        }
                    };
                    Ok((name, m))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Self {
            path,
            method,
            headers: values("headers", &m.headers, true, patterns, budget)?,
            query: values("queryParams", &m.query_params, false, patterns, budget)?,
        })
    }

    pub fn matches(&self, req: &Request<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => {
                req.path.starts_with(p.as_str())
                    && matches!(req.path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(req.path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self
                .headers
                .iter()
                .all(|(n, v)| (req.header)(n).is_some_and(|h| v.matches(h)))
            && self
                .query
                .iter()
                .all(|(n, v)| first_param(req.query, n).is_some_and(|q| v.matches(q)))
    }

    /// How much of `path` (which it matched) the path match covers: what
    /// a ReplacePrefixMatch replaces.
    pub fn matched_len(&self, path: &str) -> usize {
        match &self.path {
            PathMatch::Prefix(p) => p.len(),
            PathMatch::Exact(_) | PathMatch::Regex(_) => path.len(),
        }
    }

    /// Higher sorts first (rules 2 to 4 of the precedence).
    fn rank(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Regex(_) => (0, 0),
        };
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// The first value of query parameter `name` (exact name, as the spec
/// asks), not decoded.
fn first_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// Where a match sends: the route, and the rule within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub route: ObjectKey,
    pub rule: usize,
}

/// One candidate, with everything its precedence is decided by.
#[derive(Clone, Debug)]
pub struct Entry {
    pub m: Match,
    pub target: Target,
    /// The route's creation time (RFC 3339 sorts as text).
    pub created: String,
    /// The match's place in its rule.
    pub index: usize,
    /// Where its rule is in the table's list of served rules.
    pub slot: usize,
}

/// Every entry for the hosts of one protocol (HTTP or HTTPS listeners).
#[derive(Clone, Debug, Default)]
pub struct HostMatches {
    exact: HashMap<String, Vec<Entry>>,
    /// By suffix, longest first.
    wildcard: Vec<(String, Vec<Entry>)>,
    any: Vec<Entry>,
}

impl HostMatches {
    /// Adds `entry` for a hostname the route is attached with ("" for
    /// any).
    pub fn add(&mut self, hostname: &str, entry: Entry) {
        let h = hostnames::normal(hostname);
        if h.is_empty() {
            self.any.push(entry);
        } else if let Some(suffix) = h.strip_prefix("*.") {
            match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                Some((_, list)) => list.push(entry),
                None => self.wildcard.push((suffix.to_string(), vec![entry])),
            }
        } else {
            self.exact.entry(h).or_default().push(entry);
        }
    }

    /// Puts every list in precedence order; call once all are added.
    pub fn finish(&mut self) {
        let order = |list: &mut Vec<Entry>| {
            list.sort_by(|a, b| {
                b.m.rank()
                    .cmp(&a.m.rank())
                    .then_with(|| a.created.cmp(&b.created))
                    .then_with(|| a.target.route.cmp(&b.target.route))
                    .then_with(|| a.target.rule.cmp(&b.target.rule))
                    .then_with(|| a.index.cmp(&b.index))
            })
        };
        self.exact.values_mut().for_each(order);
        self.wildcard.iter_mut().for_each(|(_, l)| order(l));
        self.wildcard.sort_by_key(|(s, _)| Reverse(s.len()));
        order(&mut self.any);
    }

    /// The first match for `host` (lower case, no port).
    pub fn lookup(&self, host: &str, req: &Request<'_>) -> Option<&Entry> {
        let exact = self.exact.get(host).into_iter().flatten();
        let wild = self
            .wildcard
            .iter()
            .filter(|(suffix, _)| hostnames::under(host, suffix))
            .flat_map(|(_, l)| l);
        exact
            .chain(wild)
            .chain(&self.any)
            .find(|e| e.m.matches(req))
    }

    /// Every exact hostname with the routes attached for it.
    pub fn exact_hosts(&self) -> impl Iterator<Item = (&str, &[Entry])> + '_ {
        self.exact.iter().map(|(h, l)| (h.as_str(), &l[..]))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::gateway::{HTTPPathMatch, HTTPValueMatch};

    fn m(
        path: (&str, &str),
        method: Option<&str>,
        headers: &[(&str, &str)],
        query: &[(&str, &str)],
    ) -> Match {
        let exact = |(n, v): &(&str, &str)| HTTPValueMatch {
            type_: None,
            name: n.to_string(),
            value: v.to_string(),
        };
        let spec = HTTPRouteMatch {
            path: Some(HTTPPathMatch {
                type_: Some(path.0.to_string()),
                value: Some(path.1.to_string()),
            }),
            headers: headers.iter().map(exact).collect(),
            query_params: query.iter().map(exact).collect(),
            method: method.map(str::to_string),
        };
        Match::compile(&spec, &mut Patterns::default(), &mut Budget::default()).unwrap()
    }

    fn entry(route: &str, created: &str, rule: usize, m: Match) -> Entry {
        Entry {
            m,
            target: Target {
                route: ObjectKey::new("default", route),
                rule,
            },
            created: created.to_string(),
            index: 0,
            slot: 0,
        }
    }

    fn ask<'a>(
        t: &'a HostMatches,
        host: &str,
        method: &Method,
        path_and_query: &str,
        headers: &'a [(&'a str, &'a str)],
    ) -> Option<String> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let header = move |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| *v)
        };
        let req = Request {
            path,
            method,
            header: &header,
            query,
        };
        t.lookup(host, &req)
            .map(|e| format!("{}#{}", e.target.route.name, e.target.rule))
    }

    #[test]
    fn precedence_as_the_spec_orders_it() {
        let mut t = HostMatches::default();
        let old = "2024-01-01T00:00:00Z";
        let new = "2024-06-01T00:00:00Z";
        t.add(
            "",
            entry("prefix", old, 0, m(("PathPrefix", "/"), None, &[], &[])),
        );
        t.add(
            "",
            entry("longer", new, 0, m(("PathPrefix", "/v2"), None, &[], &[])),
        );
        t.add(
            "",
            entry("exact", new, 0, m(("Exact", "/v2/exact"), None, &[], &[])),
        );
        t.add(
            "",
            entry(
                "post",
                new,
                0,
                m(("PathPrefix", "/v2"), Some("POST"), &[], &[]),
            ),
        );
        t.add(
            "",
            entry(
                "header",
                new,
                0,
                m(("PathPrefix", "/v2"), None, &[("version", "two")], &[]),
            ),
        );
        t.add(
            "",
            entry(
                "headers",
                new,
                0,
                m(
                    ("PathPrefix", "/v2"),
                    None,
                    &[("version", "two"), ("color", "blue")],
                    &[],
                ),
            ),
        );
        t.add(
            "",
            entry(
                "query",
                new,
                0,
                m(
                    ("PathPrefix", "/v2"),
                    None,
                    &[("version", "two")],
                    &[("q", "1")],
                ),
            ),
        );
        // Same match, older route first; then namespace/name.
        t.add(
            "",
            entry("z-older", old, 0, m(("PathPrefix", "/tie"), None, &[], &[])),
        );
        t.add(
            "",
            entry("a-newer", new, 0, m(("PathPrefix", "/tie"), None, &[], &[])),
        );
        t.add(
            "",
            entry(
                "b-same-age",
                old,
                1,
                m(("PathPrefix", "/tie2"), None, &[], &[]),
            ),
        );
        t.add(
            "",
            entry(
                "a-same-age",
                old,
                3,
                m(("PathPrefix", "/tie2"), None, &[], &[]),
            ),
        );
        t.finish();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            ask(&t, "x.test", &get, "/v2/exact", &[]).as_deref(),
            Some("exact#0")
        );
        assert_eq!(
            ask(&t, "x.test", &post, "/v2/exact", &[]).as_deref(),
            Some("exact#0")
        );
        assert_eq!(
            ask(&t, "x.test", &post, "/v2/a", &[]).as_deref(),
            Some("post#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/v2/a", &[("Version", "two")]).as_deref(),
            Some("header#0")
        );
        assert_eq!(
            ask(
                &t,
                "x.test",
                &get,
                "/v2/a",
                &[("version", "two"), ("color", "blue")]
            )
            .as_deref(),
            Some("headers#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/v2/a?q=1", &[("version", "two")]).as_deref(),
            Some("query#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/v2/a?q=2", &[("version", "two")]).as_deref(),
            Some("header#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/v2", &[]).as_deref(),
            Some("longer#0")
        );
        // Element-wise prefixes: /v2x is not under /v2.
        assert_eq!(
            ask(&t, "x.test", &get, "/v2x", &[]).as_deref(),
            Some("prefix#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/tie/a", &[]).as_deref(),
            Some("z-older#0")
        );
        assert_eq!(
            ask(&t, "x.test", &get, "/tie2", &[]).as_deref(),
            Some("a-same-age#3")
        );
    }

    #[test]
    fn the_most_specific_hostname_first_then_the_rest() {
        let mut t = HostMatches::default();
        let c = "2024-01-01T00:00:00Z";
        t.add(
            "foo.example.com",
            entry(
                "exact-host",
                c,
                0,
                m(("PathPrefix", "/exact"), None, &[], &[]),
            ),
        );
        t.add(
            "*.example.com",
            entry("wild", c, 0, m(("PathPrefix", "/"), None, &[], &[])),
        );
        t.add(
            "*.foo.example.com",
            entry("wild-longer", c, 0, m(("PathPrefix", "/"), None, &[], &[])),
        );
        t.add(
            "",
            entry("any", c, 0, m(("PathPrefix", "/"), None, &[], &[])),
        );
        t.finish();
        let get = Method::GET;
        assert_eq!(
            ask(&t, "foo.example.com", &get, "/exact/1", &[]).as_deref(),
            Some("exact-host#0")
        );
        // The exact host's rules do not match: the wildcard's do.
        assert_eq!(
            ask(&t, "foo.example.com", &get, "/other", &[]).as_deref(),
            Some("wild#0")
        );
        assert_eq!(
            ask(&t, "a.foo.example.com", &get, "/", &[]).as_deref(),
            Some("wild-longer#0")
        );
        assert_eq!(
            ask(&t, "example.com", &get, "/", &[]).as_deref(),
            Some("any#0")
        );
    }

    #[test]
    fn regular_expressions_match_whole_values_and_bad_ones_name_the_field() {
        let re = |path: &str, header: &str| HTTPRouteMatch {
            path: Some(HTTPPathMatch {
                type_: Some("RegularExpression".into()),
                value: Some(path.into()),
            }),
            headers: vec![HTTPValueMatch {
                type_: Some("RegularExpression".into()),
                name: "X-Version".into(),
                value: header.into(),
            }],
            ..Default::default()
        };
        let compiled = Match::compile(
            &re("/v[0-9]+/.*", "v[12]"),
            &mut Patterns::default(),
            &mut Budget::default(),
        )
        .unwrap();
        let get = Method::GET;
        let hit = |path: &str, version: &str| {
            let header = |n: &str| (n == "x-version").then_some(version);
            compiled.matches(&Request {
                path,
                method: &get,
                header: &header,
                query: None,
            })
        };
        assert!(hit("/v2/a", "v1"));
        assert!(!hit("/x/v2/a", "v1"), "whole path");
        assert!(!hit("/v2/a", "v12"), "whole value");
        assert!(!hit("/V2/a", "v1"), "case-sensitive");
        let e = Match::compile(
            &re("(", "x"),
            &mut Patterns::default(),
            &mut Budget::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("path.value: \"(\""), "{e}");
        let e = Match::compile(
            &re("/", "("),
            &mut Patterns::default(),
            &mut Budget::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("headers[0].value"), "{e}");
    }
}
