//! `backend-protocol: HTTPS|GRPCS` and the `proxy-ssl-*` annotations, read
//! as ingress-nginx reads them: TLS to the endpoints, unverified unless
//! `proxy-ssl-verify: "on"` (nginx's `proxy_ssl_verify off` default),
//! without SNI unless `proxy-ssl-server-name: "on"`, with the CA and the
//! client certificate of `proxy-ssl-secret`.
use std::collections::BTreeMap;

use super::PREFIX;

/// What an Ingress asks of TLS to its endpoints (the Secret is read when
/// the route table is compiled: `route::backend_tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsToBackend {
    /// `proxy-ssl-secret` as `namespace/name` (its `ca.crt`, and
    /// `tls.crt`/`tls.key` as the client certificate).
    pub secret: Option<(String, String)>,
    /// `proxy-ssl-verify: "on"`.
    pub verify: bool,
    /// `proxy-ssl-name`: the name verified and sent as SNI.
    pub name: Option<String>,
    /// `proxy-ssl-server-name: "on"`: send SNI.
    pub server_name: bool,
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => None,
    }
}

/// The `proxy-ssl-*` annotations, read whenever the backend protocol is
/// HTTPS or GRPCS.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> TlsToBackend {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    // A bad value of verify fails closed: verified (against the Secret's
    // CA, or nothing), never silently trusting.
    let mut flag = |name: &str, fallback: bool| match get(name) {
        None => false,
        Some(v) => on_off(v).unwrap_or_else(|| {
            let used = if fallback { "on" } else { "off" };
            warn(
                &key(name),
                format!("{v:?} is not \"on\" or \"off\"; {used} is used"),
            );
            fallback
        }),
    };
    let verify = flag("proxy-ssl-verify", true);
    let server_name = flag("proxy-ssl-server-name", false);
    let secret = get("proxy-ssl-secret").and_then(|v| match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => {
            warn(
                &key("proxy-ssl-secret"),
                format!("{v:?} is not namespace/name; no CA and no client certificate"),
            );
            None
        }
    });
    let name = get("proxy-ssl-name").and_then(|v| {
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if ok {
            Some(v.to_ascii_lowercase())
        } else {
            warn(
                &key("proxy-ssl-name"),
                format!("{v:?} is not a host name; the Service's DNS name is used"),
            );
            None
        }
    });
    if let Some(v) = get("proxy-ssl-verify-depth")
        && v.parse::<u8>().is_err()
    {
        warn(
            &key("proxy-ssl-verify-depth"),
            format!("{v:?} is not a number"),
        );
    }
    TlsToBackend {
        secret,
        verify,
        name,
        server_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_defaults_and_each_setting() {
        let read_all = |pairs: &[(&str, &str)]| super::super::read_with(pairs, read);
        let (t, w) = read_all(&[]);
        assert_eq!(t, TlsToBackend::default());
        assert!(w.is_empty());
        let (t, w) = read_all(&[
            ("proxy-ssl-secret", "shop/upstream-ca"),
            ("proxy-ssl-verify", "on"),
            ("proxy-ssl-name", "API.shop.svc"),
            ("proxy-ssl-server-name", "on"),
            ("proxy-ssl-verify-depth", "2"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            t,
            TlsToBackend {
                secret: Some(("shop".into(), "upstream-ca".into())),
                verify: true,
                name: Some("api.shop.svc".into()),
                server_name: true,
            }
        );
        let (t, w) = read_all(&[
            ("proxy-ssl-secret", "upstream-ca"),
            ("proxy-ssl-verify", "yes"),
            ("proxy-ssl-name", "a b"),
        ]);
        assert_eq!(
            t,
            TlsToBackend {
                verify: true,
                ..TlsToBackend::default()
            }
        );
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
