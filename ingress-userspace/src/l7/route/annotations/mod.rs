//! Per-Ingress settings from the `nginx.ingress.kubernetes.io/*`
//! annotations ingress-nginx users rely on most, read into a [`Policy`]
//! (pure). Values are checked here: a bad one is reported with the Ingress
//! and the annotation, and ignored. Snippet annotations are refused by
//! design (no configuration is ever templated from user input); any other
//! annotation of that prefix is reported as not supported, so a migration
//! shows what it loses.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use hyper::StatusCode;

use super::RouteWarning;

pub mod affinity;
pub mod backend_tls;
pub mod canary;
pub mod client_certs;
pub mod cors;
pub mod ext_auth;
pub mod hash_by;
pub mod next_upstream;
pub mod rate;
pub mod support;
pub mod user_auth;

pub use affinity::Affinity;
pub use canary::CanaryRule;
pub use cors::Cors;

pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// `connection-proxy-header`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    Close,
    KeepAlive,
}

/// How requests matched by an Ingress's rules are handled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `proxy-body-size` (0: no limit).
    pub max_body: Option<u64>,
    /// `proxy-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `proxy-read-timeout`: waiting for the endpoint's response.
    pub read_timeout: Option<Duration>,
    /// `proxy-send-timeout`: waiting for the endpoint to take more of a
    /// request body.
    pub send_timeout: Option<Duration>,
    /// `force-ssl-redirect`: to HTTPS even for hosts without `spec.tls`.
    pub force_ssl_redirect: bool,
    /// `ssl-redirect` (default true).
    pub ssl_redirect: bool,
    /// `allowlist-source-range` / `whitelist-source-range`: clients
    /// outside get 403 (empty: everyone).
    pub allow: Vec<Cidr>,
    /// `permanent-redirect` (+ `permanent-redirect-code`) or
    /// `temporal-redirect`: answered here, nothing is proxied.
    pub redirect: Option<(String, StatusCode)>,
    /// `app-root`: `/` redirects (302) here.
    pub app_root: Option<String>,
    /// `upstream-vhost`: the Host header sent to the endpoints.
    pub upstream_vhost: Option<String>,
    /// `rewrite-target`: the path sent upstream (`$1`… from the path regex).
    pub rewrite_target: Option<String>,
    /// `use-regex` (implied by `rewrite-target`): ImplementationSpecific
    /// paths are regular expressions.
    pub use_regex: bool,
    /// `backend-protocol: GRPC` (or `H2C`): HTTP/2 to the endpoints.
    pub h2: bool,
    /// `backend-protocol` asks for what is not offered (FCGI, AJP):
    /// answered 502 rather than sent as HTTP.
    pub unsupported_backend: Option<String>,
    /// `backend-protocol: HTTPS|GRPCS` with the `proxy-ssl-*` settings.
    pub backend_tls: Option<backend_tls::TlsToBackend>,
    /// `enable-cors` and `cors-*`.
    pub cors: Option<Cors>,
    /// `denylist-source-range`: clients inside get 403 (checked before
    /// the allowlist, as nginx's `deny` lines come first).
    pub deny: Vec<Cidr>,
    /// `x-forwarded-prefix`: sent to the endpoints as X-Forwarded-Prefix.
    pub forwarded_prefix: Option<String>,
    /// `enable-access-log: "false"`: this Ingress's requests are counted
    /// but not logged.
    pub no_access_log: bool,
    /// `canary: "true"` and the `canary-*` rules: this Ingress's paths
    /// are the canaries of the main Ingress's same paths.
    pub canary: Option<CanaryRule>,
    /// `affinity: cookie` and the `session-cookie-*` settings.
    pub affinity: Option<Affinity>,
    /// `limit-rps`, `limit-rpm`, `limit-connections` and their settings.
    pub rate: Option<rate::RateLimits>,
    /// `auth-url` and its settings.
    pub ext_auth: Option<ext_auth::ExternalAuth>,
    /// `auth-type` with `auth-secret`: users and passwords, or why the
    /// paths are denied (503).
    pub user_auth: Option<Result<user_auth::UserAuth, String>>,
    /// `upstream-hash-by`: the endpoint by a hash of this key.
    pub hash_by: Option<hash_by::HashKey>,
    /// `server-alias`: more names for the Ingress's hosts.
    pub aliases: Vec<String>,
    /// `from-to-www-redirect`: `www.` + host (or host without `www.`)
    /// redirects to the host.
    pub www_redirect: bool,
    /// `service-upstream`: to the Service's cluster IP, not its endpoints.
    pub service_upstream: bool,
    /// `ssl-passthrough` (with `--enable-ssl-passthrough`): TLS for the
    /// Ingress's hosts is spliced to the endpoints of its `/` path,
    /// unterminated.
    pub ssl_passthrough: bool,
    /// `custom-headers`: the ConfigMap (`[namespace/]name`) of response
    /// headers.
    pub custom_headers: Option<String>,
    /// `proxy-http-version: "1.0"`: HTTP/1.0 to the endpoints.
    pub http10: bool,
    /// `connection-proxy-header`: the Connection header sent to the
    /// endpoints (`close` or `keep-alive`).
    pub connection_header: Option<ConnectionHeader>,
    /// `default-backend`: a Service of the Ingress's namespace that serves
    /// when a backend has no endpoints (on its first port).
    pub default_backend: Option<String>,
    /// `custom-http-errors`: the endpoints' answers of these codes are
    /// replaced by the default backend's.
    pub custom_errors: Vec<u16>,
    /// `proxy-next-upstream` and its tries and timeout.
    pub next_upstream: next_upstream::NextUpstream,
    /// `auth-tls-secret` and the `auth-tls-*` settings, or why the paths
    /// are denied (503).
    pub client_certs: Option<Result<client_certs::ClientCerts, String>>,
    /// `load-balance: ewma`: endpoints by response time and load.
    pub ewma: bool,
}

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up mapped.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, width), (addr, w2)) = (bits(self.addr), bits(ip));
        if width != w2 {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (addr >> shift)
    }
}

/// nginx's size syntax: `8m`, `512k`, `1g`, plain bytes.
fn size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (&v[..], 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn seconds(v: &str) -> Option<Duration> {
    let v = v.trim();
    let v = v.strip_suffix('s').unwrap_or(v);
    v.parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// A name of the form Kubernetes gives Secrets (a DNS subdomain).
fn object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

pub(crate) fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Matches no client: what a malformed source range list becomes.
const NOBODY: Cidr = Cidr {
    addr: IpAddr::V4(std::net::Ipv4Addr::BROADCAST),
    prefix: 32,
};

/// A comma-separated list of CIDRs (at least one), or `None`.
fn ranges(value: &str) -> Option<Vec<Cidr>> {
    let ranges: Option<Vec<Cidr>> = value
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(Cidr::parse)
        .collect();
    ranges.filter(|r| !r.is_empty())
}

/// A redirect status nginx's annotations accept (300 to 308).
fn redirect_status(value: &str) -> Option<StatusCode> {
    let c = value.trim().parse::<u16>().ok()?;
    (300..=308)
        .contains(&c)
        .then(|| StatusCode::from_u16(c).ok())
        .flatten()
}

/// A value's text and `$variables` in order (`$name` or `${name}`), for
/// the annotations that may name nginx variables: each reader says which
/// names it fills in, so nothing unknown is ever passed on.
pub(crate) enum Token<'a> {
    Text(&'a str),
    Var(&'a str),
}

pub(crate) fn tokens(s: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            out.push(Token::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or("has an unclosed ${")?;
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push(Token::Var(name));
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(Token::Text(rest));
    }
    Ok(out)
}

/// For the readers' tests: `read` over these annotations (prefix added),
/// with the warnings it gave as "key: message".
#[cfg(test)]
pub(crate) fn read_with<T>(
    pairs: &[(&str, &str)],
    read: impl FnOnce(&BTreeMap<String, String>, &mut dyn FnMut(&str, String)) -> T,
) -> (T, Vec<String>) {
    let a = pairs
        .iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
        .collect();
    let mut w = Vec::new();
    let got = read(&a, &mut |k: &str, m: String| w.push(format!("{k}: {m}")));
    (got, w)
}

/// Reads an Ingress's annotations (pure). `id` is `namespace/name`.
pub fn policy(
    id: &str,
    annotations: &BTreeMap<String, String>,
    warnings: &mut Vec<RouteWarning>,
) -> Policy {
    let mut p = Policy {
        ssl_redirect: true,
        ..Policy::default()
    };
    let mut warn = |key: &str, message: String| {
        warnings.push(RouteWarning {
            ingress: id.to_string(),
            field: format!("metadata.annotations[{key}]"),
            message,
        });
    };
    let mut redirect_code = StatusCode::MOVED_PERMANENTLY;
    let mut temporal_code = StatusCode::FOUND;
    // allowlist-source-range wins over its old name, as in ingress-nginx.
    let allow_key = if annotations.contains_key(&format!("{PREFIX}allowlist-source-range")) {
        "allowlist-source-range"
    } else {
        "whitelist-source-range"
    };
    let location_ok = |v: &str| hyper::header::HeaderValue::from_str(v).is_ok() && !v.is_empty();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let bad = |what: &str| format!("{value:?} is not {what}; ignored");
        match name {
            "proxy-body-size" => match size(value) {
                Some(n) => p.max_body = Some(n),
                None => warn(key, bad("a size like 8m, 512k or 0")),
            },
            "proxy-connect-timeout" => match seconds(value) {
                Some(d) => p.connect_timeout = Some(d),
                None => warn(key, bad("a number of seconds")),
            },
            "proxy-read-timeout" => match seconds(value) {
                Some(d) => p.read_timeout = Some(d),
                None => warn(key, bad("a number of seconds")),
            },
            "proxy-http-version" => match value.trim() {
                "1.0" => p.http10 = true,
                "1.1" => p.http10 = false,
                _ => warn(key, bad("\"1.0\" or \"1.1\"")),
            },
            "connection-proxy-header" => match value.trim() {
                "close" => p.connection_header = Some(ConnectionHeader::Close),
                "keep-alive" => p.connection_header = Some(ConnectionHeader::KeepAlive),
                _ => warn(key, bad("\"close\" or \"keep-alive\"")),
            },
            "proxy-send-timeout" => match seconds(value) {
                Some(d) => p.send_timeout = Some(d),
                None => warn(key, bad("a number of seconds")),
            },
            "ssl-redirect" => match boolean(value) {
                Some(b) => p.ssl_redirect = b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "force-ssl-redirect" => match boolean(value) {
                Some(b) => p.force_ssl_redirect = b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "use-regex" => match boolean(value) {
                Some(b) => p.use_regex |= b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "allowlist-source-range" | "whitelist-source-range" if name != allow_key => {}
            "allowlist-source-range" | "whitelist-source-range" => match ranges(value) {
                Some(r) => p.allow.extend(r),
                None => {
                    // Failing open would let everyone in: deny instead.
                    warn(
                        key,
                        format!("{value:?} is not a list of CIDRs; every client is refused (403)"),
                    );
                    p.allow = vec![NOBODY];
                }
            },
            "denylist-source-range" => match ranges(value) {
                Some(r) => p.deny.extend(r),
                None => {
                    // Failing open would let the denied in: refuse all.
                    warn(
                        key,
                        format!("{value:?} is not a list of CIDRs; every client is refused (403)"),
                    );
                    p.allow = vec![NOBODY];
                }
            },
            "load-balance" => match value.trim() {
                "ewma" => p.ewma = true,
                "round_robin" => {}
                _ => warn(key, bad("round_robin or ewma")),
            },
            "custom-http-errors" => {
                let codes: Option<Vec<u16>> = value
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|c| (400..=599).contains(c))
                    })
                    .collect();
                match codes {
                    Some(codes) => p.custom_errors = codes,
                    None => warn(key, bad("a list of status codes from 400 to 599")),
                }
            }
            "default-backend" => {
                let name = value.trim();
                let ok = !name.is_empty()
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if ok {
                    p.default_backend = Some(name.to_string());
                } else {
                    warn(key, bad("a Service name of the Ingress's namespace"));
                }
            }
            "x-forwarded-prefix" => match hyper::header::HeaderValue::from_str(value) {
                Ok(_) if !value.is_empty() => p.forwarded_prefix = Some(value.clone()),
                _ => warn(key, bad("a header value")),
            },
            "server-alias" => {
                for a in value.split(',').map(|a| a.trim().to_ascii_lowercase()) {
                    let name = a.strip_prefix("*.").unwrap_or(&a);
                    let ok = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                    if ok {
                        p.aliases.push(a);
                    } else if !a.is_empty() {
                        warn(key, format!("{a:?} is not a host name; not an alias"));
                    }
                }
            }
            "service-upstream" => match boolean(value) {
                Some(b) => p.service_upstream = b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "custom-headers" => {
                let v = value.trim();
                let name_ok = |n: &str| {
                    !n.is_empty()
                        && n.len() <= 253
                        && n.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        })
                };
                let ok = match v.split_once('/') {
                    Some((ns, name)) => name_ok(ns) && name_ok(name),
                    None => name_ok(v),
                };
                if ok {
                    p.custom_headers = Some(v.to_string());
                } else {
                    warn(key, bad("a ConfigMap name (or namespace/name)"));
                }
            }
            "ssl-passthrough" => match boolean(value) {
                Some(b) => p.ssl_passthrough = b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "from-to-www-redirect" => match boolean(value) {
                Some(b) => p.www_redirect = b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "enable-access-log" => match boolean(value) {
                Some(b) => p.no_access_log = !b,
                None => warn(key, bad("\"true\" or \"false\"")),
            },
            "temporal-redirect-code" => match redirect_status(value) {
                Some(code) => {
                    temporal_code = code;
                    if let Some((_, c)) = &mut p.redirect
                        && annotations.contains_key(&format!("{PREFIX}temporal-redirect"))
                    {
                        *c = code;
                    }
                }
                None => warn(key, bad("a status code from 300 to 308 (302 is used)")),
            },
            "permanent-redirect" | "temporal-redirect" if !location_ok(value) => {
                warn(key, bad("a URL"))
            }
            "permanent-redirect" => p.redirect = Some((value.clone(), redirect_code)),
            "permanent-redirect-code" => match redirect_status(value) {
                Some(code) => {
                    redirect_code = code;
                    if let Some((_, c)) = &mut p.redirect {
                        *c = code;
                    }
                }
                None => warn(key, bad("a status code from 300 to 308 (301 is used)")),
            },
            // temporal-redirect wins when both are set, as in ingress-nginx
            // (read after permanent-redirect: the keys come in name order).
            "temporal-redirect" => p.redirect = Some((value.clone(), temporal_code)),
            "app-root" => {
                if value.starts_with('/') {
                    p.app_root = Some(value.clone());
                } else {
                    warn(key, bad("an absolute path"));
                }
            }
            "upstream-vhost" => match hyper::header::HeaderValue::from_str(value) {
                Ok(_) if !value.is_empty() => p.upstream_vhost = Some(value.clone()),
                _ => warn(key, bad("a host name")),
            },
            "rewrite-target" => {
                if value.starts_with('/') || value.starts_with('$') {
                    p.rewrite_target = Some(value.clone());
                    p.use_regex = true;
                } else {
                    warn(key, bad("a path like /$2"));
                }
            }
            "backend-protocol" => match value.trim().to_ascii_uppercase().as_str() {
                "HTTP" | "AUTO_HTTP" => {}
                "GRPC" | "H2C" => p.h2 = true,
                "HTTPS" => p.backend_tls = Some(backend_tls::read(annotations, &mut warn)),
                "GRPCS" => {
                    p.h2 = true;
                    p.backend_tls = Some(backend_tls::read(annotations, &mut warn));
                }
                other => {
                    warn(
                        key,
                        format!(
                            "{other} endpoints are not supported (HTTP, HTTPS, GRPC, GRPCS, H2C); the routes answer 502"
                        ),
                    );
                    p.unsupported_backend = Some(other.to_string());
                }
            },
            "enable-cors" | "enable-rewrite-log" => {
                if boolean(value).is_none() {
                    warn(key, bad("\"true\" or \"false\""));
                }
            }
            // Read with backend-protocol (backend_tls::read).
            n if n.starts_with("proxy-ssl-")
                && n != "proxy-ssl-ciphers"
                && n != "proxy-ssl-protocols" => {}
            // Read whole by next_upstream::read, below.
            "proxy-next-upstream" | "proxy-next-upstream-tries" | "proxy-next-upstream-timeout" => {
            }
            // Read by hash_by::read, below.
            "upstream-hash-by" => {}
            // Read whole by ext_auth::read, below.
            "auth-url"
            | "auth-method"
            | "auth-signin"
            | "auth-signin-redirect-param"
            | "auth-response-headers"
            | "auth-request-redirect"
            | "auth-cache-key"
            | "auth-cache-duration" => {}
            // Read whole by client_certs::read, below.
            n if n.starts_with("auth-tls-") => {}
            // Read whole by user_auth::read, below.
            "auth-type" | "auth-secret" | "auth-secret-type" | "auth-realm" => {}
            // Read whole by rate::read, below.
            "limit-rps"
            | "limit-rpm"
            | "limit-burst-multiplier"
            | "limit-connections"
            | "limit-allowlist"
            | "limit-whitelist" => {}
            // Read whole by affinity::read, below.
            n if n.starts_with("affinity") || n.starts_with("session-cookie-") => {}
            // Read whole by canary::read, below.
            n if n == "canary" || n.starts_with("canary-") => {}
            // Read whole by cors::read, below.
            n if n.starts_with("cors-") && support::annotation(n) != support::Verdict::Unknown => {}
            "proxy-buffering" | "proxy-request-buffering" => {
                if !matches!(value.trim(), "on" | "off") {
                    warn(key, bad("\"on\" or \"off\""));
                }
            }
            "client-body-buffer-size" | "proxy-buffer-size" | "proxy-max-temp-file-size" => {
                if size(value).is_none() {
                    warn(key, bad("a size like 8k or 1m"));
                }
            }
            "proxy-buffers-number" => {
                if value.trim().parse::<u32>().is_err() {
                    warn(key, bad("a number"));
                }
            }
            _ => {
                if let Some(w) = support::annotation_value(name, value).warning() {
                    warn(key, w);
                }
            }
        }
    }
    p.cors = cors::read(annotations, &mut warn);
    p.canary = canary::read(annotations, &mut warn);
    p.affinity = affinity::read(annotations, &mut warn);
    p.rate = rate::read(annotations, &mut warn);
    p.ext_auth = ext_auth::read(annotations, &mut warn);
    p.user_auth = user_auth::read(annotations, &mut warn);
    let owner = id.split('/').next().unwrap_or_default();
    p.client_certs = client_certs::read(annotations, owner, &mut warn);
    p.hash_by = hash_by::read(annotations, &mut warn);
    p.next_upstream = next_upstream::read(annotations, &mut warn);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (Policy, Vec<RouteWarning>) {
        let a = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut w = Vec::new();
        (policy("ns/ing", &a, &mut w), w)
    }

    #[test]
    fn values_are_read_and_bad_ones_reported_with_the_annotation() {
        let (p, w) = read(&[
            ("proxy-body-size", "8m"),
            ("proxy-read-timeout", "120"),
            ("proxy-connect-timeout", "soon"),
            ("ssl-redirect", "false"),
            ("rewrite-target", "/$2"),
            ("backend-protocol", "GRPC"),
            ("configuration-snippet", "more_set_headers x: y;"),
            ("ssl-passthrough", "yes"),
            ("proxy-buffering", "off"),
            ("rewrite-targett", "/"),
        ]);
        assert_eq!(p.max_body, Some(8 << 20));
        assert_eq!(p.read_timeout, Some(Duration::from_secs(120)));
        assert_eq!(p.connect_timeout, None);
        assert!(!p.ssl_redirect && p.use_regex && p.h2);
        assert_eq!(p.rewrite_target.as_deref(), Some("/$2"));
        let fields: Vec<&str> = w.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations[nginx.ingress.kubernetes.io/configuration-snippet]",
                "metadata.annotations[nginx.ingress.kubernetes.io/proxy-connect-timeout]",
                "metadata.annotations[nginx.ingress.kubernetes.io/rewrite-targett]",
                "metadata.annotations[nginx.ingress.kubernetes.io/ssl-passthrough]",
            ]
        );
        assert!(w[0].message.contains("by design"));
        assert!(w[2].message.contains("not an ingress-nginx annotation"));
        assert!(
            w[3].message.contains("\"true\" or \"false\""),
            "{}",
            w[3].message
        );
    }

    #[test]
    fn source_ranges_match_and_a_bad_list_refuses_everyone() {
        let (p, w) = read(&[("allowlist-source-range", "10.0.0.0/8, 198.18.0.7")]);
        assert!(w.is_empty());
        let ok = |ip: &str| p.allow.iter().any(|c| c.contains(ip.parse().unwrap()));
        assert!(ok("10.1.2.3") && ok("198.18.0.7") && ok("::ffff:10.9.9.9"));
        assert!(!ok("11.0.0.1") && !ok("198.18.0.8") && !ok("2001:db8::1"));
        let (p, w) = read(&[("whitelist-source-range", "10.0.0.0/33")]);
        assert_eq!(w.len(), 1);
        assert!(
            !p.allow
                .iter()
                .any(|c| c.contains("10.0.0.1".parse().unwrap()))
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        // A leftover whitelist does not widen the allowlist.
        let (p, _) = read(&[
            ("allowlist-source-range", "10.0.0.0/8"),
            ("whitelist-source-range", "0.0.0.0/0"),
        ]);
        assert!(
            !p.allow
                .iter()
                .any(|c| c.contains("11.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn temporal_redirects_take_their_code_and_win_over_permanent_ones() {
        let (p, w) = read(&[
            ("temporal-redirect", "https://t.example/"),
            ("temporal-redirect-code", "307"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            p.redirect,
            Some(("https://t.example/".into(), StatusCode::TEMPORARY_REDIRECT))
        );
        let (p, _) = read(&[
            ("temporal-redirect", "https://t.example/"),
            ("permanent-redirect", "https://p.example/"),
            ("permanent-redirect-code", "308"),
            ("temporal-redirect-code", "303"),
        ]);
        assert_eq!(
            p.redirect,
            Some(("https://t.example/".into(), StatusCode::SEE_OTHER))
        );
        let (_, w) = read(&[("temporal-redirect-code", "200")]);
        assert_eq!(w.len(), 1);
        // A malformed deny list refuses everyone rather than no one.
        let (p, w) = read(&[("denylist-source-range", "10.0.0.0/8, nope")]);
        assert_eq!(w.len(), 1);
        assert!(p.deny.is_empty() && p.allow == [NOBODY]);
    }

    #[test]
    fn redirect_code_applies_in_any_order() {
        let (p, _) = read(&[
            ("permanent-redirect-code", "308"),
            ("permanent-redirect", "https://new.example/"),
        ]);
        assert_eq!(
            p.redirect,
            Some((
                "https://new.example/".into(),
                StatusCode::PERMANENT_REDIRECT
            ))
        );
    }
}
