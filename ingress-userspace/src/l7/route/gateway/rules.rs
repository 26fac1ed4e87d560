//! One HTTPRoute rule compiled into what the proxy does with a request it
//! matched (pure): its filters (header edits, a redirect, a rewrite) and
//! its weighted backends. A value the spec allows but ingressd does not
//! serve is an error naming the field, so the route can say so in its
//! status instead of serving something else.
use std::{sync::Arc, time::Duration};

use hyper::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};

use crate::cluster::gateway::{HTTPRouteFilter, HTTPRouteRule, HeaderModifier, PathModifier};

/// Header edits in the order the spec applies them: set, add, remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(m: &HeaderModifier, field: &str) -> Result<Self, String> {
        let pair = |i: usize, list: &str, n: &str, v: &str| {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{field}.{list}[{i}].name: {n:?} is not a header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("{field}.{list}[{i}].value: not a header value"))?;
            Ok::<_, String>((name, value))
        };
        Ok(Self {
            set: m
                .set
                .iter()
                .enumerate()
                .map(|(i, p)| pair(i, "set", &p.name, &p.value))
                .collect::<Result<_, _>>()?,
            add: m
                .add
                .iter()
                .enumerate()
                .map(|(i, p)| pair(i, "add", &p.name, &p.value))
                .collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("{field}.remove[{i}]: {n:?} is not a header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut hyper::HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A path modifier of a redirect or a rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The part the rule's PathPrefix matched becomes this.
    Prefix(String),
}

impl PathRewrite {
    fn compile(p: &PathModifier, field: &str) -> Result<Self, String> {
        match p.type_.as_str() {
            "ReplaceFullPath" => p
                .replace_full_path
                .clone()
                .map(PathRewrite::Full)
                .ok_or_else(|| format!("{field}.replaceFullPath: required by its type")),
            "ReplacePrefixMatch" => p
                .replace_prefix_match
                .clone()
                .map(PathRewrite::Prefix)
                .ok_or_else(|| format!("{field}.replacePrefixMatch: required by its type")),
            other => Err(format!(
                "{field}.type: {other:?} is not ReplaceFullPath or ReplacePrefixMatch"
            )),
        }
    }

    /// The new path of `path`, whose first `matched` bytes the rule's
    /// prefix matched.
    pub fn apply(&self, path: &str, matched: usize) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(p) => {
                let rest = path.get(matched..).unwrap_or("");
                match (p.ends_with('/'), rest.starts_with('/')) {
                    (true, true) => format!("{}{rest}", p.trim_end_matches('/')),
                    (false, false) if !rest.is_empty() && !p.is_empty() => format!("{p}/{rest}"),
                    _ if p.is_empty() && !rest.starts_with('/') => format!("/{rest}"),
                    _ => format!("{p}{rest}"),
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: StatusCode,
}

/// A backend of the rule by its place and weight (resolved to endpoints
/// by the table compiler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weighted {
    pub index: usize,
    pub weight: u32,
}

/// A RequestMirror: a copy of the share of requests it asks for goes to
/// its backend, whose answer is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    /// The share mirrored: numerator of denominator.
    pub numerator: u32,
    pub denominator: u32,
    /// Resolved by the table (None: not resolved, nothing mirrored).
    pub upstream: Option<Arc<super::super::Upstream>>,
}

impl Mirror {
    /// Whether a draw `n` (uniform over u32) is in the mirrored share.
    pub fn takes(&self, n: u32) -> bool {
        u64::from(n) * u64::from(self.denominator) < u64::from(self.numerator) << 32
    }

    /// Its backend, as a route's backendRef (for the same checks).
    pub fn backend_ref(&self) -> crate::cluster::gateway::HTTPBackendRef {
        crate::cluster::gateway::HTTPBackendRef {
            group: Some(self.group.clone()),
            kind: Some(self.kind.clone()),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub redirect: Option<Redirect>,
    pub rewrite_host: Option<HeaderValue>,
    pub rewrite_path: Option<PathRewrite>,
    /// Backends with a weight above 0 (none: the rule answers 500).
    pub backends: Vec<Weighted>,
    pub total_weight: u32,
    pub timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub mirrors: Vec<Mirror>,
}

impl Rule {
    /// The backend (its index in `backendRefs`) for a draw `n` (uniform
    /// over u32): each by its share of the weights.
    pub fn pick(&self, n: u32) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        let mut at = ((u64::from(n) * u64::from(self.total_weight)) >> 32) as u32;
        for b in &self.backends {
            if at < b.weight {
                return Some(b.index);
            }
            at -= b.weight;
        }
        None
    }
}

/// Compiles rule `i` of a route; an error is the field and why.
pub fn compile(rule: &HTTPRouteRule, i: usize) -> Result<Rule, String> {
    let field = format!("spec.rules[{i}]");
    let mut out = Rule {
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
        redirect: None,
        rewrite_host: None,
        rewrite_path: None,
        backends: Vec::new(),
        total_weight: 0,
        timeout: None,
        backend_timeout: None,
        mirrors: Vec::new(),
    };
    for (j, f) in rule.filters.iter().enumerate() {
        filter(&mut out, f, &format!("{field}.filters[{j}]"))?;
    }
    if out.redirect.is_some() && (out.rewrite_path.is_some() || out.rewrite_host.is_some()) {
        return Err(format!(
            "{field}.filters: RequestRedirect and URLRewrite cannot be used together"
        ));
    }
    // The CRD's bound: weights then add up within u32.
    if rule.backend_refs.len() > 16 {
        return Err(format!("{field}.backendRefs: more than 16"));
    }
    for (j, b) in rule.backend_refs.iter().enumerate() {
        if !b.filters.is_empty() {
            return Err(format!(
                "{field}.backendRefs[{j}].filters: backend filters are not served yet"
            ));
        }
        let weight = b.weight.unwrap_or(1);
        let weight = u32::try_from(weight)
            .ok()
            .filter(|w| *w <= 1_000_000)
            .ok_or_else(|| {
                format!("{field}.backendRefs[{j}].weight: {weight} is not within 0 to 1000000")
            })?;
        if weight > 0 {
            out.backends.push(Weighted { index: j, weight });
            out.total_weight += weight;
        }
    }
    if let Some(t) = &rule.timeouts {
        out.timeout = t
            .request
            .as_deref()
            .map(|d| duration(d).map_err(|e| format!("{field}.timeouts.request: {e}")))
            .transpose()?;
        out.backend_timeout = t
            .backend_request
            .as_deref()
            .map(|d| duration(d).map_err(|e| format!("{field}.timeouts.backendRequest: {e}")))
            .transpose()?;
    }
    Ok(out)
}

fn filter(out: &mut Rule, f: &HTTPRouteFilter, field: &str) -> Result<(), String> {
    let missing = |what: &str| format!("{field}.{what}: required by type {}", f.type_);
    match f.type_.as_str() {
        "RequestHeaderModifier" => {
            let m = f
                .request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?;
            out.request_headers =
                HeaderEdits::compile(m, &format!("{field}.requestHeaderModifier"))?;
        }
        "ResponseHeaderModifier" => {
            let m = f
                .response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?;
            out.response_headers =
                HeaderEdits::compile(m, &format!("{field}.responseHeaderModifier"))?;
        }
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let sub = format!("{field}.requestRedirect");
            let status = match r.status_code.unwrap_or(302) {
                c @ (301 | 302 | 303 | 307 | 308) => {
                    StatusCode::from_u16(c as u16).unwrap_or(StatusCode::FOUND)
                }
                c => {
                    return Err(format!(
                        "{sub}.statusCode: {c} is not 301, 302, 303, 307 or 308"
                    ));
                }
            };
            let scheme = match r.scheme.as_deref() {
                None => None,
                Some(s @ ("http" | "https")) => Some(s.to_string()),
                Some(s) => return Err(format!("{sub}.scheme: {s:?} is not http or https")),
            };
            let port = r
                .port
                .map(|p| {
                    u16::try_from(p)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("{sub}.port: {p} is not a port"))
                })
                .transpose()?;
            out.redirect = Some(Redirect {
                scheme,
                hostname: r.hostname.clone(),
                port,
                path: r
                    .path
                    .as_ref()
                    .map(|p| PathRewrite::compile(p, &format!("{sub}.path")))
                    .transpose()?,
                status,
            });
        }
        "URLRewrite" => {
            let u = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            let sub = format!("{field}.urlRewrite");
            out.rewrite_host = u
                .hostname
                .as_deref()
                .map(|h| {
                    HeaderValue::from_str(h).map_err(|_| format!("{sub}.hostname: not a host name"))
                })
                .transpose()?;
            out.rewrite_path = u
                .path
                .as_ref()
                .map(|p| PathRewrite::compile(p, &format!("{sub}.path")))
                .transpose()?;
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let sub = format!("{field}.requestMirror");
            let (numerator, denominator) = match (m.percent, &m.fraction) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{sub}: percent and fraction cannot be used together"
                    ));
                }
                (Some(p), None) => (p, 100),
                (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
                (None, None) => (100, 100),
            };
            if denominator < 1 || numerator < 0 || numerator > denominator {
                return Err(format!(
                    "{sub}: {numerator} of {denominator} is not a share (0 to all)"
                ));
            }
            let b = &m.backend_ref;
            out.mirrors.push(Mirror {
                group: b.group.clone().unwrap_or_default(),
                kind: b.kind.clone().unwrap_or_else(|| "Service".into()),
                name: b.name.clone(),
                namespace: b.namespace.clone(),
                port: b.port,
                numerator: numerator as u32,
                denominator: denominator as u32,
                upstream: None,
            });
        }
        other => return Err(format!("{field}.type: {other} is not served yet")),
    }
    Ok(())
}

/// A Gateway API duration: up to four number-and-unit parts (`h`, `m`,
/// `s`, `ms`), as `1h`, `1m30s` or `500ms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 10s, 1m30s, 500ms)");
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 || parts == 4 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        total += unit * n as u32;
        rest = &rest[len..];
        parts += 1;
    }
    if parts == 0 { Err(bad()) } else { Ok(total) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_take_their_share() {
        let rule: HTTPRouteRule = serde_norway::from_str(
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, fraction: {numerator: 1, denominator: 4}}},\
             {type: RequestMirror, requestMirror: {backendRef: {name: b, port: 80}}}]}",
        )
        .unwrap();
        let r = compile(&rule, 0).unwrap();
        let (quarter, all) = (&r.mirrors[0], &r.mirrors[1]);
        let taken = (0..1000u32)
            .filter(|i| quarter.takes(((u64::from(*i) << 32) / 1000) as u32))
            .count();
        assert_eq!(taken, 250);
        assert!(all.takes(u32::MAX) && all.takes(0));
        let bad: HTTPRouteRule = serde_norway::from_str(
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}, percent: 150}}]}",
        )
        .unwrap();
        assert_eq!(
            compile(&bad, 2).unwrap_err(),
            "spec.rules[2].filters[0].requestMirror: 150 of 100 is not a share (0 to all)"
        );
    }

    fn rule(yaml: &str) -> Result<Rule, String> {
        let r: HTTPRouteRule = serde_norway::from_str(yaml).expect("YAML");
        compile(&r, 0)
    }

    #[test]
    fn filters_and_weights_compile_as_written() {
        let r = rule(
            "filters:\n\
             - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Team, value: shop}], add: [{name: x-a, value: '1'}], remove: [x-debug]}}\n\
             - {type: URLRewrite, urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n\
             backendRefs: [{name: a, port: 80, weight: 90}, {name: b, port: 80, weight: 0}, {name: c, port: 80, weight: 10}]\n\
             timeouts: {request: 1m30s, backendRequest: 500ms}\n",
        )
        .unwrap();
        assert_eq!(r.request_headers.set[0].0, "x-team");
        assert_eq!(r.request_headers.remove[0], "x-debug");
        assert_eq!(r.rewrite_host.as_ref().unwrap(), "internal.test");
        assert_eq!(r.rewrite_path, Some(PathRewrite::Prefix("/v2".into())));
        assert_eq!(r.total_weight, 100);
        assert_eq!(r.timeout, Some(Duration::from_secs(90)));
        assert_eq!(r.backend_timeout, Some(Duration::from_millis(500)));
        // Shares by weight over the whole range of draws (1,000 evenly
        // spaced midpoints); weight 0 never.
        let mut counts = [0u32; 3];
        for k in 0..1000u64 {
            let n = (((2 * k + 1) << 32) / 2000) as u32;
            counts[r.pick(n).unwrap()] += 1;
        }
        assert_eq!(counts, [900, 0, 100]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = |yaml: &str| rule(yaml).unwrap_err();
        assert!(
            err("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]")
                .contains("spec.rules[0].filters[0].requestRedirect.statusCode")
        );
        assert!(err("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: x}]}}]").contains("requestHeaderModifier.set[0].name"));
        assert!(err("filters: [{type: ExtensionRef}]").contains("filters[0].type: ExtensionRef"));
        assert!(err("filters: [{type: URLRewrite}]").contains("urlRewrite: required"));
        assert!(err("timeouts: {request: 10 seconds}").contains("timeouts.request"));
        assert!(err("backendRefs: [{name: a, port: 80, weight: -1}]").contains("weight"));
        // Redirects and rewrites exclude each other, as the spec says.
        assert!(err("filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: x}}]").contains("cannot be used together"));
    }

    #[test]
    fn prefix_rewrites_keep_one_slash_between_the_parts() {
        let p = |to: &str, path: &str, matched: usize| {
            PathRewrite::Prefix(to.into()).apply(path, matched)
        };
        assert_eq!(p("/v2", "/v1/a", 3), "/v2/a");
        assert_eq!(p("/v2/", "/v1/a", 3), "/v2/a");
        assert_eq!(p("/", "/v1/a", 3), "/a");
        assert_eq!(p("/", "/v1", 3), "/");
        assert_eq!(p("/v2", "/v1", 3), "/v2");
        assert_eq!(PathRewrite::Full("/x".into()).apply("/v1/a", 3), "/x");
    }

    #[test]
    fn durations_as_the_gateway_api_writes_them() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1d", "1.5s", "1h1h1h1h1h", "123456s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
