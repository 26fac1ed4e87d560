//! `enable-cors` and the `cors-*` annotations, read as ingress-nginx reads
//! them (its defaults; a bad value of one field is reported and that field
//! keeps its default, as ingress-nginx does), into what the pipeline
//! answers with.
use std::collections::BTreeMap;

use hyper::header::HeaderValue;

use super::{PREFIX, boolean};

const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
const DEFAULT_HEADERS: &str = "DNT,X-CustomHeader,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Authorization";
const DEFAULT_MAX_AGE: u64 = 1_728_000;

/// An Ingress's CORS answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    pub methods: HeaderValue,
    pub headers: HeaderValue,
    /// `cors-expose-headers` (none: the header is not sent).
    pub expose: Option<HeaderValue>,
    /// `cors-allow-credentials` (default true).
    pub credentials: bool,
    pub max_age: HeaderValue,
}

/// Which origins get CORS headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// `*` (the default): every request, whatever its Origin, answered
    /// with `Access-Control-Allow-Origin: *`.
    Any,
    /// Requests whose Origin matches one, answered with that Origin.
    List(Vec<OriginPattern>),
}

/// `scheme://host[:port]`, the host's first label possibly `*` (one label
/// of letters, digits and `-`). Kept lower-case; matched case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    /// Everything before the `*` (the whole origin when there is none).
    head: String,
    /// Everything after the `*`.
    tail: Option<String>,
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tail {
            Some(tail) => write!(f, "{}*{tail}", self.head),
            None => f.write_str(&self.head),
        }
    }
}

impl OriginPattern {
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if let Some(p) = port
            && p.parse::<u16>().map_or(true, |p| p == 0)
        {
            return None;
        }
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let mut labels = host.split('.');
        let first = labels.next()?;
        let wildcard = first == "*";
        if !(wildcard || label_ok(first)) || !labels.all(label_ok) {
            return None;
        }
        if wildcard && !host.contains('.') {
            return None;
        }
        Some(match s.split_once('*') {
            Some((head, tail)) => OriginPattern {
                head: head.to_string(),
                tail: Some(tail.to_string()),
            },
            None => OriginPattern {
                head: s,
                tail: None,
            },
        })
    }

    /// Whether a request's `Origin` is this one.
    pub fn matches(&self, origin: &[u8]) -> bool {
        match &self.tail {
            None => origin.eq_ignore_ascii_case(self.head.as_bytes()),
            Some(tail) => {
                let (h, t) = (self.head.len(), tail.len());
                origin.len() > h + t
                    && origin[..h].eq_ignore_ascii_case(self.head.as_bytes())
                    && origin[origin.len() - t..].eq_ignore_ascii_case(tail.as_bytes())
                    && origin[h..origin.len() - t]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
        }
    }
}

/// A comma-separated list whose items all pass `item`, as a header value.
fn list(v: &str, item: impl Fn(&str) -> bool) -> Option<HeaderValue> {
    let ok = v.split(',').all(|i| item(i.trim())) && !v.trim().is_empty();
    ok.then(|| HeaderValue::from_str(v.trim()).ok()).flatten()
}

fn token(i: &str, extra: &[u8]) -> bool {
    !i.is_empty()
        && i.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// The CORS settings of an Ingress, if `enable-cors` is "true".
/// `warn(annotation, message)` reports a bad value.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<Cors> {
    let get = |name: &str| annotations.get(&format!("{PREFIX}{name}"));
    if get("enable-cors").is_none_or(|v| boolean(v) != Some(true)) {
        return None;
    }
    let mut field = |name: &str, parse: &dyn Fn(&str) -> Option<HeaderValue>, what: &str| {
        let v = get(name)?;
        let parsed = parse(v);
        if parsed.is_none() {
            warn(
                &format!("{PREFIX}{name}"),
                format!("{v:?} is not {what}; ingress-nginx's default is used"),
            );
        }
        parsed
    };
    let methods = field(
        "cors-allow-methods",
        &|v| {
            list(v, |m| {
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic())
            })
        },
        "a list of methods",
    )
    .unwrap_or(HeaderValue::from_static(DEFAULT_METHODS));
    let headers = field(
        "cors-allow-headers",
        &|v| list(v, |h| token(h, b"-_")),
        "a list of header names",
    )
    .unwrap_or(HeaderValue::from_static(DEFAULT_HEADERS));
    let expose = field(
        "cors-expose-headers",
        &|v| list(v, |h| token(h, b"-_") || h == "*"),
        "a list of header names or *",
    );
    let max_age = field(
        "cors-max-age",
        &|v| v.trim().parse::<u64>().ok().map(HeaderValue::from),
        "a number of seconds",
    )
    .unwrap_or(HeaderValue::from(DEFAULT_MAX_AGE));
    let credentials = match get("cors-allow-credentials") {
        None => true,
        Some(v) => boolean(v).unwrap_or_else(|| {
            warn(
                &format!("{PREFIX}cors-allow-credentials"),
                format!(
                    "{v:?} is not \"true\" or \"false\"; ingress-nginx's default (true) is used"
                ),
            );
            true
        }),
    };
    let origins = match get("cors-allow-origin").map(|v| v.trim()) {
        None | Some("*") | Some("") => Origins::Any,
        Some(v) => {
            let mut patterns = Vec::new();
            for item in v.split(',').filter(|i| !i.trim().is_empty()) {
                match OriginPattern::parse(item) {
                    Some(p) => patterns.push(p),
                    None => warn(
                        &format!("{PREFIX}cors-allow-origin"),
                        format!(
                            "{:?} is not an origin like https://example.com[:port] or https://*.example.com; left out",
                            item.trim()
                        ),
                    ),
                }
            }
            if patterns.is_empty() {
                // Widening to every origin would grant what was not asked.
                warn(
                    &format!("{PREFIX}enable-cors"),
                    "no usable origin in cors-allow-origin; CORS is off for this Ingress".into(),
                );
                return None;
            }
            Origins::List(patterns)
        }
    };
    Some(Cors {
        origins,
        methods,
        headers,
        expose,
        credentials,
        max_age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(pairs: &[(&str, &str)]) -> (Option<Cors>, Vec<String>) {
        let a = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut w = Vec::new();
        let c = read(&a, &mut |k, m| w.push(format!("{k}: {m}")));
        (c, w)
    }

    #[test]
    fn defaults_are_ingress_nginx_ones() {
        let (c, w) = cors(&[("enable-cors", "true")]);
        let c = c.expect("on");
        assert!(w.is_empty());
        assert_eq!(c.origins, Origins::Any);
        assert_eq!(c.methods, DEFAULT_METHODS);
        assert_eq!(c.max_age, "1728000");
        assert!(c.credentials && c.expose.is_none());
        assert_eq!(cors(&[("cors-allow-origin", "*")]).0, None);
    }

    #[test]
    fn origins_match_whole_with_one_wildcard_label() {
        let (c, w) = cors(&[
            ("enable-cors", "true"),
            (
                "cors-allow-origin",
                "https://origin-site.com:4443, http://*.example.org, ftp://x.test, https://*",
            ),
        ]);
        assert_eq!(w.len(), 2, "{w:?}");
        let Origins::List(p) = c.expect("on").origins else {
            panic!("a list")
        };
        let ok = |o: &str| p.iter().any(|p| p.matches(o.as_bytes()));
        assert!(ok("https://origin-site.com:4443") && ok("HTTPS://Origin-Site.com:4443"));
        assert!(ok("http://a-1.example.org"));
        assert!(!ok("https://origin-site.com") && !ok("https://origin-site.com:44430"));
        assert!(!ok("http://a.b.example.org") && !ok("http://.example.org"));
        assert!(!ok("http://example.org") && !ok("https://a.example.org"));
        assert!(!ok("https://evil.test/https://origin-site.com:4443"));
    }

    #[test]
    fn bad_fields_keep_their_default_and_no_usable_origin_turns_cors_off() {
        let (c, w) = cors(&[
            ("enable-cors", "true"),
            ("cors-allow-methods", "GET, P0ST"),
            ("cors-max-age", "soon"),
            ("cors-expose-headers", "*, X-Mine"),
        ]);
        let c = c.expect("on");
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(c.methods, DEFAULT_METHODS);
        assert_eq!(
            c.expose.as_ref().map(|v| v.as_bytes()),
            Some(&b"*, X-Mine"[..])
        );
        let (c, w) = cors(&[("enable-cors", "true"), ("cors-allow-origin", "nope")]);
        assert!(c.is_none() && w.len() == 2, "{w:?}");
    }
}
