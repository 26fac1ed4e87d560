//! The users of an Ingress's `auth-type: basic|digest`, read from its
//! Secret when the route table is compiled: an htpasswd (htdigest) file
//! under the key `auth`, or with `auth-secret-type: auth-map` a key per
//! user. As nginx, comment lines are skipped and a user's first line wins.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use super::{
    annotations::user_auth::{Scheme, UserAuth},
    htpasswd::PasswordHash,
};
use crate::cluster::{ObjectKey, Snapshot, secret_data};

/// What a user is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Basic: the password's hash.
    Password(PasswordHash),
    /// Digest: HA1, MD5 of `user:realm:password`, from an htdigest line
    /// of the configured realm.
    Digest([u8; 16]),
}

/// The users an Ingress lets in.
#[derive(Debug, PartialEq, Eq)]
pub struct Users {
    pub scheme: Scheme,
    pub realm: String,
    users: HashMap<String, Credential>,
    /// Changes with the settings and the Secret's content: what a
    /// remembered check is keyed by.
    pub id: u64,
}

impl Users {
    pub fn get(&self, user: &str) -> Option<&Credential> {
        self.users.get(user)
    }
}

/// Reads the users of `auth` for an Ingress of namespace `owner`. A line
/// that cannot be used is reported to `bad_line` and skipped; an error
/// (the paths then answer 503) names what is missing.
pub fn build(
    auth: &UserAuth,
    owner: &str,
    snapshot: &Snapshot,
    bad_line: &mut dyn FnMut(String),
) -> Result<Users, String> {
    let ns = auth.namespace.as_deref().unwrap_or(owner);
    // The Ingress's own namespace only (ingress-nginx's
    // allow-cross-namespace-resources: false).
    if ns != owner {
        return Err(format!(
            "auth-secret {ns}/{} is not in the Ingress's namespace {owner}",
            auth.secret
        ));
    }
    let name = format!("{ns}/{}", auth.secret);
    let secret = snapshot
        .secrets
        .get(&ObjectKey::new(ns.to_string(), auth.secret.clone()))
        .ok_or_else(|| format!("auth-secret {name} not found"))?;
    let mut lines: Vec<(String, String)> = Vec::new();
    if auth.map {
        let mut keys: Vec<&String> = secret.data.iter().flatten().map(|(k, _)| k).collect();
        keys.extend(secret.string_data.iter().flatten().map(|(k, _)| k));
        keys.sort();
        keys.dedup();
        for k in keys {
            let value = secret_data(secret, k).unwrap_or_default();
            let value = String::from_utf8_lossy(&value);
            lines.push((format!("key {k}"), format!("{k}:{}", value.trim())));
        }
    } else {
        let file = secret_data(secret, "auth")
            .ok_or_else(|| format!("auth-secret {name} has no key auth (an htpasswd file)"))?;
        let file = String::from_utf8_lossy(&file);
        for (i, line) in file.lines().enumerate() {
            lines.push((format!("line {}", i + 1), line.to_string()));
        }
    }
    let mut users = HashMap::new();
    for (place, line) in &lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match entry(auth, line) {
            Ok((user, credential)) => {
                users.entry(user).or_insert(credential);
            }
            Err(e) => bad_line(format!(
                "auth-secret {name} {place}: {e}; that user is refused"
            )),
        }
    }
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    (auth, &lines).hash(&mut fingerprint);
    Ok(Users {
        scheme: auth.scheme,
        realm: auth.realm.clone(),
        users,
        id: fingerprint.finish(),
    })
}

/// One `user:hash` (or `user:realm:ha1`) line.
fn entry(auth: &UserAuth, line: &str) -> Result<(String, Credential), String> {
    let (user, rest) = line.split_once(':').ok_or("is not user:password")?;
    if user.is_empty() {
        return Err("has no user name".into());
    }
    let credential = match auth.scheme {
        // nginx ends the password field at a further colon (a comment).
        Scheme::Basic => {
            let hash = rest.split(':').next().unwrap_or_default();
            Credential::Password(
                PasswordHash::parse(hash).map_err(|e| format!("user {user:?}: {e}"))?,
            )
        }
        Scheme::Digest => {
            let (realm, ha1) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("user {user:?}: is not user:realm:md5 (htdigest)"))?;
            if realm != auth.realm {
                return Err(format!(
                    "user {user:?}: realm {realm:?} is not auth-realm {:?}",
                    auth.realm
                ));
            }
            Credential::Digest(
                hex16(ha1).ok_or_else(|| format!("user {user:?}: {ha1:?} is not an MD5 digest"))?,
            )
        }
    };
    Ok((user.to_string(), credential))
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{ByteString, api::core::v1::Secret};

    use super::*;
    use crate::cluster::Object;

    fn snapshot(data: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("shop".into());
        secret.metadata.name = Some("users".into());
        secret.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s.insert(Object::Secret(Box::new(secret)));
        s
    }

    fn auth(scheme: Scheme, map: bool) -> UserAuth {
        UserAuth {
            scheme,
            namespace: None,
            secret: "users".into(),
            map,
            realm: "shop".into(),
        }
    }

    #[test]
    fn an_htpasswd_file_with_comments_bad_lines_and_repeats() {
        let s = snapshot(&[(
            "auth",
            "# admins\nfoo:{PLAIN}one:comment\r\nbar:nothash\nfoo:{PLAIN}two\n\nbaz:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n",
        )]);
        let mut bad = Vec::new();
        let users = build(&auth(Scheme::Basic, false), "shop", &s, &mut |m| {
            bad.push(m)
        })
        .unwrap();
        assert_eq!(users.users.len(), 2);
        let Some(Credential::Password(foo)) = users.get("foo") else {
            panic!("foo: {users:?}")
        };
        assert!(foo.verify(b"one") && !foo.verify(b"two"));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].contains("shop/users line 3") && bad[0].contains("\"bar\""),
            "{bad:?}"
        );
    }

    #[test]
    fn an_auth_map_and_an_htdigest_file() {
        let s = snapshot(&[
            ("foo", "{PLAIN}one"),
            ("bar", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
        ]);
        let users = build(&auth(Scheme::Basic, true), "shop", &s, &mut |m| {
            panic!("{m}")
        })
        .unwrap();
        assert_eq!(users.users.len(), 2);
        let s = snapshot(&[(
            "auth",
            "foo:shop:0123456789abcdef0123456789abcdef\nbar:other:0123456789abcdef0123456789abcdef\n",
        )]);
        let mut bad = Vec::new();
        let users = build(&auth(Scheme::Digest, false), "shop", &s, &mut |m| {
            bad.push(m)
        })
        .unwrap();
        assert!(matches!(users.get("foo"), Some(Credential::Digest(d)) if d[1] == 0x23));
        assert!(users.get("bar").is_none());
        assert!(bad[0].contains("realm \"other\""), "{bad:?}");
    }

    #[test]
    fn missing_or_foreign_secrets_deny() {
        let s = snapshot(&[("other", "x")]);
        let e = build(&auth(Scheme::Basic, false), "shop", &s, &mut |_| {}).unwrap_err();
        assert!(e.contains("no key auth"), "{e}");
        let e = build(&auth(Scheme::Basic, false), "web", &s, &mut |_| {}).unwrap_err();
        assert!(e.contains("web/users not found"), "{e}");
        let mut foreign = auth(Scheme::Basic, false);
        foreign.namespace = Some("shop".into());
        let e = build(&foreign, "web", &s, &mut |_| {}).unwrap_err();
        assert!(e.contains("not in the Ingress's namespace web"), "{e}");
    }

    #[test]
    fn the_id_follows_the_secret() {
        let a = snapshot(&[("auth", "foo:{PLAIN}one")]);
        let b = snapshot(&[("auth", "foo:{PLAIN}two")]);
        let id = |s: &Snapshot| {
            build(&auth(Scheme::Basic, false), "shop", s, &mut |_| {})
                .unwrap()
                .id
        };
        assert_eq!(id(&a), id(&a));
        assert_ne!(id(&a), id(&b));
    }
}
