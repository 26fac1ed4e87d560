//! `auth-type: basic|digest` with `auth-secret`, `auth-secret-type` and
//! `auth-realm`, read as ingress-nginx reads them. As there, a setting that
//! cannot be used denies the Ingress's paths (503) instead of dropping the
//! check: a typo must not open what the Ingress means to protect.
use std::collections::BTreeMap;

use super::{PREFIX, object_name};

/// Which challenge the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Basic,
    Digest,
}

/// An Ingress's user authentication (the Secret is read when the route
/// table is compiled: `route::users`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserAuth {
    pub scheme: Scheme,
    /// `auth-secret`: `name` (the Ingress's namespace) or
    /// `namespace/name`.
    pub namespace: Option<String>,
    pub secret: String,
    /// `auth-secret-type: auth-map`: the Secret's keys are the users and
    /// its values their password hashes; else (`auth-file`, the default)
    /// its key `auth` is an htpasswd (or, for digest, htdigest) file.
    pub map: bool,
    /// `auth-realm` (default empty, as ingress-nginx's).
    pub realm: String,
}

/// The user authentication an Ingress asks for: `None` without
/// `auth-type`; `Err` (its paths answer 503) when a setting is unusable.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<Result<UserAuth, String>> {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    let Some(kind) = get("auth-type") else {
        for name in ["auth-secret", "auth-secret-type", "auth-realm"] {
            if get(name).is_some() {
                warn(&key(name), "does nothing without auth-type".into());
            }
        }
        return None;
    };
    let mut deny = |name: &str, why: String| {
        let message = format!("{why}; the Ingress's paths answer 503");
        warn(&key(name), message.clone());
        Some(Err(format!("{name} {why}")))
    };
    let scheme = match kind {
        "basic" => Scheme::Basic,
        "digest" => Scheme::Digest,
        other => return deny("auth-type", format!("{other:?} is not basic or digest")),
    };
    let Some(named) = get("auth-secret") else {
        return deny("auth-secret", "is required with auth-type".into());
    };
    let (namespace, secret) = match named.split_once('/') {
        None => (None, named),
        Some((ns, name)) => (Some(ns.to_string()), name),
    };
    if !object_name(secret) || !namespace.as_deref().is_none_or(object_name) {
        return deny(
            "auth-secret",
            format!("{named:?} is not a Secret name or namespace/name"),
        );
    }
    let map = match get("auth-secret-type") {
        None | Some("auth-file") => false,
        Some("auth-map") => true,
        Some(other) => {
            return deny(
                "auth-secret-type",
                format!("{other:?} is not auth-file or auth-map"),
            );
        }
    };
    let realm = get("auth-realm").unwrap_or_default();
    // It is sent quoted in WWW-Authenticate: nothing that ends the quote
    // or the header.
    if realm.len() > 256
        || realm
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'"' || b == b'\\')
    {
        return deny(
            "auth-realm",
            "has quotes, backslashes or control characters, or is over 256 bytes".into(),
        );
    }
    Some(Ok(UserAuth {
        scheme,
        namespace,
        secret: secret.to_string(),
        map,
        realm: realm.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::{super::read_with, *};

    fn auth(pairs: &[(&str, &str)]) -> (Option<Result<UserAuth, String>>, Vec<String>) {
        read_with(pairs, read)
    }

    #[test]
    fn basic_with_a_secret_of_the_namespace() {
        let (a, warnings) = auth(&[
            ("auth-type", "basic"),
            ("auth-secret", "basic-auth"),
            ("auth-realm", "Authentication Required - foo"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let a = a.unwrap().unwrap();
        assert_eq!(a.scheme, Scheme::Basic);
        assert_eq!((a.namespace, a.secret.as_str()), (None, "basic-auth"));
        assert!(!a.map);
        assert_eq!(a.realm, "Authentication Required - foo");
        let (a, _) = auth(&[
            ("auth-type", "digest"),
            ("auth-secret", "team/users"),
            ("auth-secret-type", "auth-map"),
        ]);
        let a = a.unwrap().unwrap();
        assert_eq!(a.scheme, Scheme::Digest);
        assert_eq!(a.namespace.as_deref(), Some("team"));
        assert!(a.map);
        assert_eq!(a.realm, "");
    }

    #[test]
    fn unusable_settings_deny_instead_of_opening() {
        for pairs in [
            &[("auth-type", "basci"), ("auth-secret", "s")][..],
            &[("auth-type", "basic")],
            &[("auth-type", "basic"), ("auth-secret", "a/b/c")],
            &[("auth-type", "basic"), ("auth-secret", "Bad_Name")],
            &[
                ("auth-type", "basic"),
                ("auth-secret", "s"),
                ("auth-secret-type", "file"),
            ],
            &[
                ("auth-type", "basic"),
                ("auth-secret", "s"),
                ("auth-realm", "a\"b"),
            ],
        ] {
            let (a, warnings) = auth(pairs);
            assert!(matches!(a, Some(Err(_))), "{pairs:?}: {a:?}");
            assert_eq!(warnings.len(), 1, "{pairs:?}");
            assert!(warnings[0].contains("503"), "{warnings:?}");
        }
    }

    #[test]
    fn settings_without_auth_type_are_reported() {
        let (a, warnings) = auth(&[("auth-secret", "s")]);
        assert_eq!(a, None);
        assert!(warnings[0].contains("without auth-type"), "{warnings:?}");
    }
}
