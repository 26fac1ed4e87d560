//! External authentication (`auth-url` and its settings), read as
//! ingress-nginx reads them. The URLs may name a few of nginx's variables
//! (`$host`, `$escaped_request_uri`… as oauth2-proxy's guides write
//! them): they are parsed here into typed parts, never handed to a
//! configuration template, and any other `$name` refuses the annotation.
use std::collections::BTreeMap;

use hyper::{Method, header::HeaderName};

use super::{PREFIX, Token, hash_by, tokens};

/// An nginx variable an auth URL may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// `$host`, `$http_host`, `$best_http_host`: the request's host.
    Host,
    /// `$scheme`, `$pass_access_scheme`: http or https.
    Scheme,
    /// `$request_uri`: path and query as the client sent them.
    RequestUri,
    /// `$escaped_request_uri`: the same, percent-encoded for a query.
    EscapedRequestUri,
    /// `$remote_addr`: the client's address.
    RemoteAddr,
}

/// A URL with variables, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Var),
}

impl Template {
    fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for t in tokens(s)? {
            parts.push(match t {
                Token::Text(t) => Part::Text(t.to_string()),
                Token::Var("host" | "http_host" | "best_http_host") => Part::Var(Var::Host),
                Token::Var("scheme" | "pass_access_scheme") => Part::Var(Var::Scheme),
                Token::Var("request_uri") => Part::Var(Var::RequestUri),
                Token::Var("escaped_request_uri") => Part::Var(Var::EscapedRequestUri),
                Token::Var("remote_addr") => Part::Var(Var::RemoteAddr),
                Token::Var(other) => {
                    return Err(format!(
                        "${other} is not a variable ingressd fills in ($host, $scheme, $request_uri, $escaped_request_uri, $remote_addr)"
                    ));
                }
            });
        }
        // Whatever the variables become, the text must not end the value
        // or start another header.
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("has spaces or control characters".into());
        }
        Ok(Template(parts))
    }

    /// The text with each variable's value from `value`.
    pub fn render(&self, value: impl Fn(Var) -> String) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&value(*v)),
            }
        }
        out
    }

    fn scheme_ok(&self) -> bool {
        matches!(self.0.first(), Some(Part::Text(t)) if t.starts_with("http://") || t.starts_with("https://"))
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.0 {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Var(v) => f.write_str(match v {
                    Var::Host => "$host",
                    Var::Scheme => "$scheme",
                    Var::RequestUri => "$request_uri",
                    Var::EscapedRequestUri => "$escaped_request_uri",
                    Var::RemoteAddr => "$remote_addr",
                })?,
            }
        }
        Ok(())
    }
}

/// An Ingress's external authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAuth {
    /// `auth-url`: asked before each request (http or https).
    pub url: Template,
    /// `auth-method` (default GET, as nginx's subrequests).
    pub method: Method,
    /// `auth-signin`: where a 401 is redirected, with the original URL as
    /// the `auth-signin-redirect-param` (default `rd`) query parameter.
    pub signin: Option<Template>,
    pub signin_param: String,
    /// `auth-response-headers`: copied from the auth answer into the
    /// request to the endpoints.
    pub response_headers: Vec<HeaderName>,
    /// `auth-request-redirect`: sent as X-Auth-Request-Redirect (default
    /// the request's URI).
    pub request_redirect: Option<String>,
    /// `auth-cache-key` with `auth-cache-duration`: answers remembered.
    pub cache: Option<AuthCache>,
}

/// Which auth answers are remembered, by what, for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCache {
    /// `auth-cache-key`, parsed as `upstream-hash-by`'s key.
    pub key: hash_by::HashKey,
    /// `auth-cache-duration`'s codes (default 200 202 401).
    pub codes: Vec<u16>,
    /// And its time (default 5m).
    pub ttl: std::time::Duration,
}

/// nginx's time (`30s`, `5m`, `1h`, `1d`, or seconds).
fn nginx_time(t: &str) -> Option<std::time::Duration> {
    let (n, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// `auth-cache-duration`: `[code ...] time`.
fn cache_duration(v: &str) -> Option<(Vec<u16>, std::time::Duration)> {
    let mut words: Vec<&str> = v.split_whitespace().collect();
    let ttl = nginx_time(words.pop()?)?;
    let codes: Option<Vec<u16>> = words
        .iter()
        .map(|c| c.parse::<u16>().ok().filter(|c| (200..=599).contains(c)))
        .collect();
    let codes = codes?;
    Some((
        if codes.is_empty() {
            vec![200, 202, 401]
        } else {
            codes
        },
        ttl,
    ))
}

/// The external authentication an Ingress asks for, if any.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<ExternalAuth> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    let raw = get("auth-url")?;
    let url = match Template::parse(raw) {
        Ok(t) if t.scheme_ok() => t,
        Ok(_) => {
            // Failing open would serve what the Ingress means to protect:
            // refuse every request instead (see `Policy::auth_broken`).
            warn(
                &key("auth-url"),
                format!(
                    "{raw:?} is not an http:// or https:// URL; every request is refused (500)"
                ),
            );
            return Some(broken());
        }
        Err(e) => {
            warn(
                &key("auth-url"),
                format!("{raw:?} {e}; every request is refused (500)"),
            );
            return Some(broken());
        }
    };
    let method = match get("auth-method") {
        None => Method::GET,
        Some(m) => match m.parse::<Method>() {
            Ok(m) if m.as_str().bytes().all(|b| b.is_ascii_uppercase()) => m,
            _ => {
                warn(
                    &key("auth-method"),
                    format!("{m:?} is not an HTTP method; GET is used"),
                );
                Method::GET
            }
        },
    };
    let signin = get("auth-signin").and_then(|v| match Template::parse(v) {
        Ok(t)
            if t.scheme_ok()
                || matches!(t.0.first(), Some(Part::Text(s)) if s.starts_with('/')) =>
        {
            Some(t)
        }
        Ok(_) => {
            warn(
                &key("auth-signin"),
                format!("{v:?} is not a URL; a 401 is answered as it is"),
            );
            None
        }
        Err(e) => {
            warn(
                &key("auth-signin"),
                format!("{v:?} {e}; a 401 is answered as it is"),
            );
            None
        }
    });
    let signin_param = match get("auth-signin-redirect-param") {
        Some(p)
            if !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
        {
            p.to_string()
        }
        Some(p) => {
            warn(
                &key("auth-signin-redirect-param"),
                format!("{p:?} is not a parameter name; rd is used"),
            );
            "rd".into()
        }
        None => "rd".into(),
    };
    let mut response_headers = Vec::new();
    if let Some(list) = get("auth-response-headers") {
        for h in list.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => response_headers.push(n),
                Err(_) => warn(
                    &key("auth-response-headers"),
                    format!("{h:?} is not a header name; not copied"),
                ),
            }
        }
    }
    let request_redirect = get("auth-request-redirect").and_then(|v| {
        if hyper::header::HeaderValue::from_str(v).is_ok() {
            Some(v.to_string())
        } else {
            warn(
                &key("auth-request-redirect"),
                format!("{v:?} is not a header value; the request's URI is sent"),
            );
            None
        }
    });
    let cache = get("auth-cache-key").and_then(|k| {
        let parsed = match hash_by::parse(k) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn(
                    &key("auth-cache-key"),
                    format!("{k:?} {e}; answers are not remembered"),
                );
                return None;
            }
        };
        let (codes, ttl) = match get("auth-cache-duration") {
            None => (vec![200, 202, 401], std::time::Duration::from_secs(300)),
            Some(d) => cache_duration(d).or_else(|| {
                warn(
                    &key("auth-cache-duration"),
                    format!("{d:?} is not codes and a time like \"200 202 401 5m\"; answers are not remembered"),
                );
                None
            })?,
        };
        Some(AuthCache {
            key: parsed,
            codes,
            ttl,
        })
    });
    Some(ExternalAuth {
        url,
        method,
        signin,
        signin_param,
        response_headers,
        request_redirect,
        cache,
    })
}

/// An external authentication that cannot be asked: refuses everything.
fn broken() -> ExternalAuth {
    ExternalAuth {
        url: Template(Vec::new()),
        method: Method::GET,
        signin: None,
        signin_param: "rd".into(),
        response_headers: Vec::new(),
        request_redirect: None,
        cache: None,
    }
}

impl ExternalAuth {
    /// Whether the URL was refused (every request then answers 500).
    pub fn is_broken(&self) -> bool {
        self.url.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Option<ExternalAuth>, Vec<String>) {
        super::super::read_with(pairs, read)
    }

    #[test]
    fn auth_cache_as_ingress_nginx_writes_it() {
        let (a, w) = read_all(&[
            ("auth-url", "http://auth.test/"),
            ("auth-cache-key", "$remote_user$http_authorization"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let c = a.unwrap().cache.unwrap();
        assert_eq!(c.codes, [200, 202, 401]);
        assert_eq!(c.ttl, std::time::Duration::from_secs(300));
        let (a, w) = read_all(&[
            ("auth-url", "http://auth.test/"),
            ("auth-cache-key", "$http_authorization"),
            ("auth-cache-duration", "200 30s"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let c = a.unwrap().cache.unwrap();
        assert_eq!(
            (c.codes, c.ttl),
            (vec![200], std::time::Duration::from_secs(30))
        );
        for d in ["5x", "abc 5m", ""] {
            let (a, w) = read_all(&[
                ("auth-url", "http://auth.test/"),
                ("auth-cache-key", "$http_authorization"),
                ("auth-cache-duration", d),
            ]);
            assert!(a.unwrap().cache.is_none(), "{d:?}");
            assert_eq!(w.len(), 1, "{d:?}");
        }
    }

    #[test]
    fn oauth2_proxy_settings_as_its_guide_writes_them() {
        let (a, w) = read_all(&[
            ("auth-url", "https://$host/oauth2/auth"),
            (
                "auth-signin",
                "https://$host/oauth2/start?rd=$escaped_request_uri",
            ),
            (
                "auth-response-headers",
                "X-Auth-Request-User, X-Auth-Request-Email",
            ),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let a = a.unwrap();
        assert_eq!(a.method, Method::GET);
        let vars = |v: Var| match v {
            Var::Host => "shop.test".to_string(),
            Var::EscapedRequestUri => "%2Fcart%3Fx%3D1".to_string(),
            _ => "?".to_string(),
        };
        assert_eq!(a.url.render(vars), "https://shop.test/oauth2/auth");
        assert_eq!(
            a.signin.unwrap().render(vars),
            "https://shop.test/oauth2/start?rd=%2Fcart%3Fx%3D1"
        );
        assert_eq!(a.response_headers.len(), 2);
        assert_eq!(a.url.to_string(), "https://$host/oauth2/auth");
    }

    #[test]
    fn a_bad_url_refuses_every_request_rather_than_none() {
        for bad in ["ftp://auth", "http://a/$request_body", "http://a b/"] {
            let (a, w) = read_all(&[("auth-url", bad)]);
            assert!(a.unwrap().is_broken(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
        }
        let (a, w) = read_all(&[
            ("auth-url", "http://auth.svc/check"),
            ("auth-method", "get it"),
            ("auth-signin", "$host/x"),
        ]);
        let a = a.unwrap();
        assert!(!a.is_broken() && a.signin.is_none() && a.method == Method::GET);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(read_all(&[]).0.is_none());
    }
}
