//! `auth-tls-secret` and the other `auth-tls-*` annotations, read as
//! ingress-nginx reads them: client certificates checked against the CA
//! of a Secret. As there, a Secret that cannot be named denies the
//! Ingress's paths (503) rather than letting anyone in.
use std::collections::BTreeMap;

use super::{PREFIX, boolean, object_name};

/// `auth-tls-verify-client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verify {
    /// A certificate of the CA is required (the default).
    On,
    /// Checked when given; requests without one go on.
    Optional,
    /// Asked for, never required nor refused: the endpoints are told.
    OptionalNoCa,
    /// Not asked for.
    Off,
}

/// What an Ingress asks of its clients' certificates (the Secret is read
/// when the route table is compiled: `route::client_certs`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientCerts {
    /// `auth-tls-secret: namespace/name` (its `ca.crt`).
    pub namespace: String,
    pub secret: String,
    pub verify: Verify,
    /// `auth-tls-verify-depth` (default 1).
    pub depth: u32,
    /// `auth-tls-error-page`: where a refused client is redirected.
    pub error_page: Option<String>,
    /// `auth-tls-pass-certificate-to-upstream`: the PEM goes on as
    /// `ssl-client-cert`.
    pub pass_certificate: bool,
    /// `auth-tls-match-cn`: a pattern the subject must match (403).
    pub match_cn: Option<String>,
}

/// The client-certificate settings of an Ingress: `None` without
/// `auth-tls-secret`; `Err` (its paths answer 503) when it names no
/// Secret.
pub fn read(
    annotations: &BTreeMap<String, String>,
    owner: &str,
    warn: &mut dyn FnMut(&str, String),
) -> Option<Result<ClientCerts, String>> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    let named = get("auth-tls-secret")?;
    // ingress-nginx takes namespace/name; a bare name is the Ingress's own.
    let (namespace, secret) = named.split_once('/').unwrap_or((owner, named));
    if !object_name(namespace) || !object_name(secret) {
        let why = format!("{named:?} is not namespace/name");
        warn(
            &key("auth-tls-secret"),
            format!("{why}; the Ingress's paths answer 503"),
        );
        return Some(Err(format!("auth-tls-secret {why}")));
    }
    let verify = match get("auth-tls-verify-client") {
        None | Some("on") => Verify::On,
        Some("optional") => Verify::Optional,
        Some("optional_no_ca") => Verify::OptionalNoCa,
        Some("off") => Verify::Off,
        Some(other) => {
            warn(
                &key("auth-tls-verify-client"),
                format!("{other:?} is not on, off, optional or optional_no_ca; on is used"),
            );
            Verify::On
        }
    };
    let depth = match get("auth-tls-verify-depth") {
        None => 1,
        Some(d) => match d.parse::<u32>() {
            Ok(d) if (1..=16).contains(&d) => d,
            _ => {
                warn(
                    &key("auth-tls-verify-depth"),
                    format!("{d:?} is not a depth from 1 to 16; 1 is used"),
                );
                1
            }
        },
    };
    let error_page = get("auth-tls-error-page").and_then(|p| {
        let ok = (p.starts_with("http://") || p.starts_with("https://") || p.starts_with('/'))
            && hyper::header::HeaderValue::from_str(p).is_ok();
        if ok {
            Some(p.to_string())
        } else {
            warn(
                &key("auth-tls-error-page"),
                format!("{p:?} is not a URL; refused clients get the error itself"),
            );
            None
        }
    });
    let pass_certificate = match get("auth-tls-pass-certificate-to-upstream") {
        None => false,
        Some(v) => boolean(v).unwrap_or_else(|| {
            warn(
                &key("auth-tls-pass-certificate-to-upstream"),
                format!("{v:?} is not \"true\" or \"false\"; false is used"),
            );
            false
        }),
    };
    Some(Ok(ClientCerts {
        namespace: namespace.to_string(),
        secret: secret.to_string(),
        verify,
        depth,
        error_page,
        pass_certificate,
        match_cn: get("auth-tls-match-cn").map(str::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::{super::read_with, *};

    fn certs(pairs: &[(&str, &str)]) -> (Option<Result<ClientCerts, String>>, Vec<String>) {
        read_with(pairs, |a, w| read(a, "shop", w))
    }

    #[test]
    fn as_ingress_nginx_users_write_them() {
        let (c, w) = certs(&[
            ("auth-tls-secret", "shop/ca"),
            ("auth-tls-verify-client", "optional"),
            ("auth-tls-verify-depth", "2"),
            ("auth-tls-error-page", "https://shop.test/cert-help"),
            ("auth-tls-pass-certificate-to-upstream", "true"),
            ("auth-tls-match-cn", "CN=(alice|bob)"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        let c = c.unwrap().unwrap();
        assert_eq!((c.namespace.as_str(), c.secret.as_str()), ("shop", "ca"));
        assert_eq!((c.verify, c.depth), (Verify::Optional, 2));
        assert!(c.pass_certificate && c.error_page.is_some());
        assert_eq!(c.match_cn.as_deref(), Some("CN=(alice|bob)"));
        let (c, _) = certs(&[("auth-tls-secret", "ca")]);
        let c = c.unwrap().unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.verify, c.depth),
            ("shop", Verify::On, 1)
        );
    }

    #[test]
    fn bad_values_fall_back_and_a_bad_secret_denies() {
        let (c, w) = certs(&[
            ("auth-tls-secret", "shop/ca"),
            ("auth-tls-verify-client", "maybe"),
            ("auth-tls-verify-depth", "0"),
        ]);
        assert_eq!(c.unwrap().unwrap().verify, Verify::On);
        assert_eq!(w.len(), 2, "{w:?}");
        let (c, w) = certs(&[("auth-tls-secret", "a/b/c")]);
        assert!(matches!(c, Some(Err(_))));
        assert!(w[0].contains("503"), "{w:?}");
        assert_eq!(certs(&[("auth-tls-verify-client", "on")]).0, None);
    }
}
