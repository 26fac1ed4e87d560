//! `upstream-hash-by` at run time: the key's parts from the request, and
//! the endpoint it hashes to (the rendezvous hash session affinity uses,
//! the same on every node, so a key keeps its endpoint across nodes and
//! restarts, and only the keys of an endpoint that leaves move).
use std::net::SocketAddr;

use super::forwarding::{Fields, cookie, joined};
use crate::l7::{
    route::annotations::hash_by::{HashKey, KeyPart},
    upstream::sticky,
};

/// What of the request a key may name.
pub(super) struct Request<'a> {
    pub target: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub client: std::net::IpAddr,
}

/// The request's key (missing values are empty, as nginx's variables).
pub(super) fn key(k: &HashKey, req: &Request<'_>, fields: &impl Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for part in &k.parts {
        match part {
            KeyPart::Text(t) => out.extend_from_slice(t.as_bytes()),
            KeyPart::RequestUri => out.extend_from_slice(req.target.as_bytes()),
            KeyPart::Uri => out.extend_from_slice(req.path.as_bytes()),
            KeyPart::RemoteAddr => out.extend_from_slice(req.client.to_string().as_bytes()),
            KeyPart::Host => out.extend_from_slice(req.host.unwrap_or_default().as_bytes()),
            KeyPart::RemoteUser => {
                if let Some((user, _)) = fields
                    .first("authorization")
                    .and_then(super::user_auth::basic)
                {
                    out.extend_from_slice(user.as_bytes());
                }
            }
            KeyPart::Header(name) => {
                if let Some(v) = joined(fields, name) {
                    out.extend_from_slice(&v);
                }
            }
            KeyPart::Cookie(name) => {
                if let Some(v) = cookie(fields, name) {
                    out.extend_from_slice(v);
                }
            }
            KeyPart::Arg(name) => {
                let query = req.target.split_once('?').map_or("", |(_, q)| q);
                if let Some(v) = query.split('&').find_map(|kv| {
                    kv.split_once('=')
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v)
                }) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
    out
}

/// The endpoint `key` hashes to.
pub(super) fn endpoint(key: &[u8], addrs: &[SocketAddr]) -> Option<SocketAddr> {
    sticky::rendezvous(key, addrs)
}

#[cfg(test)]
mod tests {
    use hyper::HeaderMap;

    use super::*;
    use crate::l7::route::annotations::{PREFIX, hash_by::read};

    fn key_of(source: &str, headers: &[(&'static str, &'static str)], target: &str) -> Vec<u8> {
        let a = [(format!("{PREFIX}upstream-hash-by"), source.to_string())]
            .into_iter()
            .collect();
        let k = read(&a, &mut |_: &str, m: String| panic!("{m}")).unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, v.parse().unwrap());
        }
        let req = Request {
            target,
            path: target.split('?').next().unwrap(),
            host: Some("shop.test"),
            client: "198.18.0.7".parse().unwrap(),
        };
        key(&k, &req, &h)
    }

    #[test]
    fn keys_are_made_of_the_request() {
        assert_eq!(
            key_of("$remote_addr$request_uri", &[], "/a?b=1"),
            b"198.18.0.7/a?b=1"
        );
        assert_eq!(
            key_of(
                "$http_x_user|$cookie_s|$arg_b|$uri",
                &[("x-user", "ann"), ("cookie", "s=9")],
                "/a?b=1"
            ),
            b"ann|9|1|/a"
        );
        // "Aladdin:open sesame": the user of Basic credentials, or nothing.
        assert_eq!(
            key_of(
                "$remote_user:$host",
                &[("authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")],
                "/"
            ),
            b"Aladdin:shop.test"
        );
        assert_eq!(
            key_of("$remote_user.", &[("authorization", "Bearer x")], "/"),
            b"."
        );
        // The same key, the same endpoint; keys spread.
        let addrs: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([198, 18, 1, i], 80)))
            .collect();
        let a = endpoint(b"user-1", &addrs);
        assert_eq!(a, endpoint(b"user-1", &addrs));
        let used: std::collections::HashSet<_> = (0..100)
            .map(|i| endpoint(format!("user-{i}").as_bytes(), &addrs))
            .collect();
        assert_eq!(used.len(), 4);
    }
}
