//! `affinity: cookie` and the `session-cookie-*` annotations, read as
//! ingress-nginx reads them (its defaults; a bad value of one field is
//! reported and that field keeps its default), into the cookie that keeps
//! a client on one endpoint (`upstream::sticky`).
use std::collections::BTreeMap;

use super::{PREFIX, boolean};

pub const DEFAULT_NAME: &str = "INGRESSCOOKIE";

/// How a session's endpoint is found again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The cookie holds a random key, hashed over the endpoints: scaling
    /// up moves a share of the sessions to the new endpoints.
    Balanced,
    /// The cookie names its endpoint: a session moves only when its
    /// endpoint is gone.
    Persistent,
}

/// An Ingress's session affinity cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub mode: Mode,
    /// `session-cookie-name` (default INGRESSCOOKIE).
    pub name: String,
    /// `session-cookie-path` (default: the path of the Ingress rule).
    pub path: Option<String>,
    pub domain: Option<String>,
    /// `session-cookie-samesite`: `None`, `Lax` or `Strict`.
    pub samesite: Option<&'static str>,
    /// `session-cookie-secure`; unset: Secure when the request came over
    /// HTTPS.
    pub secure: Option<bool>,
    /// `session-cookie-expires` (seconds from when the cookie is set).
    pub expires: Option<u64>,
    /// `session-cookie-max-age` (seconds).
    pub max_age: Option<u64>,
    /// `session-cookie-change-on-failure`: a session whose endpoint failed
    /// is moved to the one that answered instead.
    pub change_on_failure: bool,
    /// `affinity-canary-behavior: legacy`: the canary rules decide even
    /// for a request whose cookie names a backend (default `sticky`).
    pub canary_legacy: bool,
}

impl std::fmt::Display for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Balanced => "balanced",
            Mode::Persistent => "persistent",
        };
        write!(f, "cookie {} {mode}", self.name)
    }
}

/// A cookie name: an HTTP token (RFC 6265 §4.1.1).
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie attribute value: visible ASCII without `;` (RFC 6265 §4.1.1).
fn attribute(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

/// The affinity annotations of an Ingress: `None` unless `affinity` is
/// "cookie".
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<Affinity> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    match get("affinity") {
        Some("cookie") => {}
        Some(other) => {
            warn(
                &key("affinity"),
                format!("{other:?} is not an affinity type (only \"cookie\"); no affinity"),
            );
            return None;
        }
        None => return None,
    }
    let mut field = |name: &str, ok: &dyn Fn(&str) -> bool, what: &str| -> Option<String> {
        let v = get(name)?;
        if ok(v) {
            Some(v.to_string())
        } else {
            warn(
                &key(name),
                format!("{v:?} is not {what}; ingress-nginx's default is used"),
            );
            None
        }
    };
    let mode = match field(
        "affinity-mode",
        &|v| matches!(v, "balanced" | "persistent"),
        "\"balanced\" or \"persistent\"",
    )
    .as_deref()
    {
        Some("persistent") => Mode::Persistent,
        _ => Mode::Balanced,
    };
    let name = field("session-cookie-name", &token, "a cookie name")
        .unwrap_or_else(|| DEFAULT_NAME.to_string());
    let path = field(
        "session-cookie-path",
        &|v| v.starts_with('/') && attribute(v),
        "an absolute path",
    );
    let domain = field(
        "session-cookie-domain",
        &|v| {
            attribute(v)
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        },
        "a domain",
    );
    let samesite = field(
        "session-cookie-samesite",
        &|v| matches!(v, "None" | "Lax" | "Strict"),
        "None, Lax or Strict",
    )
    .map(|v| match v.as_str() {
        "None" => "None",
        "Lax" => "Lax",
        _ => "Strict",
    });
    let flag = |v: &str| boolean(v).is_some();
    let secure =
        field("session-cookie-secure", &flag, "\"true\" or \"false\"").and_then(|v| boolean(&v));
    let change_on_failure = field(
        "session-cookie-change-on-failure",
        &flag,
        "\"true\" or \"false\"",
    )
    .and_then(|v| boolean(&v))
    .unwrap_or(false);
    // Read for its check; see support's verdict for what it does here.
    let _ = field(
        "session-cookie-conditional-samesite-none",
        &flag,
        "\"true\" or \"false\"",
    );
    let seconds = |v: &str| v.parse::<u64>().is_ok();
    let expires = field("session-cookie-expires", &seconds, "a number of seconds")
        .and_then(|v| v.parse().ok());
    let max_age = field("session-cookie-max-age", &seconds, "a number of seconds")
        .and_then(|v| v.parse().ok());
    let canary_legacy = field(
        "affinity-canary-behavior",
        &|v| matches!(v, "sticky" | "legacy"),
        "\"sticky\" or \"legacy\"",
    )
    .is_some_and(|v| v == "legacy");
    Some(Affinity {
        mode,
        name,
        path,
        domain,
        samesite,
        secure,
        expires,
        max_age,
        change_on_failure,
        canary_legacy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Option<Affinity>, Vec<String>) {
        super::super::read_with(pairs, read)
    }

    #[test]
    fn defaults_are_ingress_nginx_ones() {
        let (a, w) = read_all(&[("affinity", "cookie")]);
        assert!(w.is_empty(), "{w:?}");
        let a = a.unwrap();
        assert_eq!((a.mode, a.name.as_str()), (Mode::Balanced, "INGRESSCOOKIE"));
        assert!(a.path.is_none() && a.secure.is_none() && a.expires.is_none());
        assert!(!a.change_on_failure && !a.canary_legacy);
        assert!(read_all(&[("session-cookie-name", "x")]).0.is_none());
    }

    #[test]
    fn each_field_is_read_and_a_bad_one_keeps_its_default() {
        let (a, w) = read_all(&[
            ("affinity", "cookie"),
            ("affinity-mode", "persistent"),
            ("session-cookie-name", "route"),
            ("session-cookie-path", "/app"),
            ("session-cookie-domain", "shop.test"),
            ("session-cookie-samesite", "Lax"),
            ("session-cookie-secure", "true"),
            ("session-cookie-expires", "3600"),
            ("session-cookie-max-age", "7200"),
            ("session-cookie-change-on-failure", "true"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let a = a.unwrap();
        assert_eq!(a.mode, Mode::Persistent);
        assert_eq!(
            (a.name.as_str(), a.path.as_deref(), a.domain.as_deref()),
            ("route", Some("/app"), Some("shop.test"))
        );
        assert_eq!(
            (a.samesite, a.secure, a.expires, a.max_age),
            (Some("Lax"), Some(true), Some(3600), Some(7200))
        );
        assert!(a.change_on_failure);
        let (a, w) = read_all(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "a;b"),
            ("session-cookie-path", "/x; Domain=evil.test"),
            ("session-cookie-expires", "soon"),
            ("session-cookie-samesite", "lax"),
        ]);
        let a = a.unwrap();
        assert_eq!(a.name, DEFAULT_NAME);
        assert!(a.path.is_none() && a.expires.is_none() && a.samesite.is_none());
        assert_eq!(w.len(), 4, "{w:?}");
        let (a, w) = read_all(&[("affinity", "ip")]);
        assert!(a.is_none() && w.len() == 1);
    }
}
