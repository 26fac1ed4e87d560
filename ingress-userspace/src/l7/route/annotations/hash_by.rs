//! `upstream-hash-by`: the endpoint chosen by a consistent hash of a key
//! made of nginx variables (`$request_uri`, `$remote_addr`, `$http_x_user`,
//! `$cookie_session`…, with text between them), parsed here into typed
//! parts; a variable not listed refuses the annotation.
use std::collections::BTreeMap;

use super::{PREFIX, Token, tokens};

/// One part of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    Text(String),
    /// `$request_uri`: path and query as sent.
    RequestUri,
    /// `$uri`: the path (normal form).
    Uri,
    /// `$remote_addr` (and `$binary_remote_addr`): the client.
    RemoteAddr,
    /// `$remote_user`: the user of a Basic Authorization header.
    RemoteUser,
    /// `$host`.
    Host,
    /// `$http_NAME`: a request header (`_` for `-`).
    Header(String),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$arg_NAME`: a query parameter.
    Arg(String),
}

/// The parsed key, with its source for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashKey {
    pub parts: Vec<KeyPart>,
    pub source: String,
}

/// A key as `upstream-hash-by` and `auth-cache-key` write it.
pub fn parse(s: &str) -> Result<HashKey, String> {
    let mut parts = Vec::new();
    for t in tokens(s)? {
        parts.push(match t {
            Token::Text(t) => KeyPart::Text(t.to_string()),
            Token::Var("request_uri") => KeyPart::RequestUri,
            Token::Var("uri") => KeyPart::Uri,
            Token::Var("remote_addr" | "binary_remote_addr") => KeyPart::RemoteAddr,
            Token::Var("host") => KeyPart::Host,
            Token::Var("remote_user") => KeyPart::RemoteUser,
            Token::Var(n) if n.len() > 5 && n.starts_with("http_") => {
                KeyPart::Header(n[5..].replace('_', "-").to_ascii_lowercase())
            }
            Token::Var(n) if n.len() > 7 && n.starts_with("cookie_") => {
                KeyPart::Cookie(n[7..].to_string())
            }
            Token::Var(n) if n.len() > 4 && n.starts_with("arg_") => KeyPart::Arg(n[4..].to_string()),
            Token::Var(other) => {
                return Err(format!(
                    "uses ${other}, not a variable ingressd hashes by ($request_uri, $uri, $remote_addr, $remote_user, $host, $http_NAME, $cookie_NAME, $arg_NAME)"
                ));
            }
        });
    }
    if parts.is_empty() {
        return Err("is empty".into());
    }
    Ok(HashKey {
        parts,
        source: s.to_string(),
    })
}

/// `upstream-hash-by`, if set and usable.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> Option<HashKey> {
    let key = format!("{PREFIX}upstream-hash-by");
    let v = annotations.get(&key)?.trim();
    match parse(v) {
        Ok(k) => Some(k),
        Err(e) => {
            warn(
                &key,
                format!("{v:?} {e}; the endpoints are balanced instead"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_ingress_nginx_users_write_them() {
        let k = parse("$remote_addr$request_uri").unwrap();
        assert_eq!(k.parts, [KeyPart::RemoteAddr, KeyPart::RequestUri]);
        let k = parse("user-${http_x_user_id}:$cookie_session").unwrap();
        assert_eq!(
            k.parts,
            [
                KeyPart::Text("user-".into()),
                KeyPart::Header("x-user-id".into()),
                KeyPart::Text(":".into()),
                KeyPart::Cookie("session".into()),
            ]
        );
        assert!(parse("$request_body").is_err());
        assert!(parse("").is_err());
    }
}
