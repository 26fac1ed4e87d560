//! Session affinity by cookie, as ingress-nginx keeps it: the cookie's
//! value is `key|backend`, the backend part naming the Service port it
//! was set for (so a canary's sessions stay on the canary). In balanced
//! mode the key is random and hashed over the endpoints (rendezvous
//! hashing: scaling from n to n+1 endpoints moves 1/(n+1) of the
//! sessions); in persistent mode it names its endpoint. Hashes are
//! FNV-1a, the same on every node and across restarts, so every ingressd
//! of a cluster reads a cookie alike. The cookie is set only when a
//! session begins, or moves after a failure with `change-on-failure`.
use std::{net::SocketAddr, time::SystemTime};

use hyper::header::HeaderValue;

use crate::l7::route::annotations::affinity::{Affinity, Mode};

/// Longest session key taken from a cookie; a longer one starts a new
/// session (it is hashed on every request).
const MAX_KEY: usize = 64;
/// Keys tried to land a moved balanced session on the endpoint that
/// answered (ingress-nginx tries 20 too).
const TRIES: usize = 20;

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV's low bits are weak for comparing scores: spread them.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// An endpoint as bytes (address and port), without allocating.
fn addr_bytes(a: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let n = match a.ip() {
        std::net::IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            4
        }
        std::net::IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&a.port().to_be_bytes());
    (out, n + 2)
}

/// The backend part of the cookies set for `service`.
pub fn backend_key(service: &str) -> String {
    hex(fnv(&[b"backend", service.as_bytes()]))
}

/// A persistent session's key for an endpoint of `service`.
fn endpoint_key(service: &str, a: SocketAddr) -> u64 {
    let (bytes, n) = addr_bytes(a);
    fnv(&[service.as_bytes(), &bytes[..n]])
}

/// A key as `hex` wrote it.
fn unhex(k: &[u8]) -> Option<u64> {
    if k.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(k).ok()?, 16).ok()
}

/// The endpoint a key lands on: the one scoring highest.
pub(in crate::l7) fn rendezvous(key: &[u8], addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.iter().copied().max_by_key(|a| {
        let (bytes, n) = addr_bytes(*a);
        (mix(fnv(&[key, &bytes[..n]])), *a)
    })
}

/// A cookie value's parts: the session key and, if there, its backend.
pub fn parts(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    match value.iter().position(|&b| b == b'|') {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    }
}

/// A request's session, as its cookie tells it.
pub struct Sticky<'a> {
    affinity: &'a Affinity,
    service: &'a str,
    /// The session's endpoint, when the cookie leads to one.
    prefer: Option<SocketAddr>,
    /// A balanced session's key (a new one when the cookie had none).
    key: Option<String>,
    /// The session begins with this request: its cookie is to be set.
    new: bool,
}

impl<'a> Sticky<'a> {
    /// `cookie` is the value of the affinity cookie, if the request has
    /// one; `random` makes a new balanced key.
    pub fn new(
        affinity: &'a Affinity,
        service: &'a str,
        cookie: Option<&[u8]>,
        addrs: &[SocketAddr],
        random: impl FnOnce() -> u64,
    ) -> Self {
        let key = cookie
            .map(|c| parts(c).0)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY);
        match affinity.mode {
            Mode::Balanced => {
                // Any key is a session's, whoever set it (as nginx's chash).
                let (key, new) = match key.and_then(|k| std::str::from_utf8(k).ok()) {
                    Some(k) => (k.to_string(), false),
                    None => (hex(random()), true),
                };
                Sticky {
                    affinity,
                    service,
                    prefer: rendezvous(key.as_bytes(), addrs),
                    key: Some(key),
                    new,
                }
            }
            Mode::Persistent => {
                let prefer = key.and_then(unhex).and_then(|k| {
                    addrs
                        .iter()
                        .copied()
                        .find(|a| endpoint_key(service, *a) == k)
                });
                Sticky {
                    affinity,
                    service,
                    prefer,
                    key: None,
                    new: prefer.is_none(),
                }
            }
        }
    }

    /// The endpoint to try first.
    pub fn prefer(&self) -> Option<SocketAddr> {
        self.prefer
    }

    /// The cookie value to set once `served` answered, if it is to be set:
    /// when the session began, or when it moved with change-on-failure.
    pub fn value_after(
        &self,
        served: SocketAddr,
        addrs: &[SocketAddr],
        mut random: impl FnMut() -> u64,
    ) -> Option<String> {
        let moved = self.prefer.is_some_and(|p| p != served);
        let changed = moved && self.affinity.change_on_failure;
        if !(self.new || changed) {
            return None;
        }
        let key = match self.affinity.mode {
            Mode::Persistent => hex(endpoint_key(self.service, served)),
            Mode::Balanced => {
                let own = self.key.clone().unwrap_or_default();
                if self.prefer == Some(served) {
                    own
                } else {
                    // A key that lands where the session now is.
                    (0..TRIES)
                        .map(|_| hex(random()))
                        .find(|k| rendezvous(k.as_bytes(), addrs) == Some(served))
                        .unwrap_or(own)
                }
            }
        };
        Some(format!("{key}|{}", backend_key(self.service)))
    }
}

/// The Set-Cookie header for a session: `location` is the rule's path
/// (the default Path), `https` whether the request came over TLS (the
/// default for Secure).
pub fn set_cookie(
    a: &Affinity,
    value: &str,
    location: &str,
    https: bool,
    now: SystemTime,
) -> Option<HeaderValue> {
    let mut c = format!(
        "{}={value}; Path={}",
        a.name,
        a.path.as_deref().unwrap_or(location)
    );
    if let Some(d) = &a.domain {
        c.push_str("; Domain=");
        c.push_str(d);
    }
    if let Some(s) = a.expires {
        c.push_str("; Expires=");
        c.push_str(&httpdate::fmt_http_date(
            now + std::time::Duration::from_secs(s.min(u64::from(u32::MAX))),
        ));
    }
    if let Some(s) = a.max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if a.secure.unwrap_or(https) {
        c.push_str("; Secure");
    }
    c.push_str("; HttpOnly");
    if let Some(s) = a.samesite {
        c.push_str("; SameSite=");
        c.push_str(s);
    }
    HeaderValue::from_str(&c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity(mode: Mode, change_on_failure: bool) -> Affinity {
        Affinity {
            mode,
            name: "INGRESSCOOKIE".into(),
            path: None,
            domain: None,
            samesite: None,
            secure: None,
            expires: None,
            max_age: None,
            change_on_failure,
            canary_legacy: false,
        }
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([198, 18, 1, i], 8080)))
            .collect()
    }

    #[test]
    fn a_balanced_session_keeps_its_endpoint_and_scaling_moves_few() {
        let a = affinity(Mode::Balanced, false);
        let four = addrs(4);
        let mut seed = 1u64;
        let mut random = || {
            seed = mix(seed + 1);
            seed
        };
        let mut moved = 0;
        let mut spread = std::collections::HashMap::new();
        for _ in 0..2000 {
            let s = Sticky::new(&a, "shop/web:80", None, &four, &mut random);
            let first = s.prefer().unwrap();
            *spread.entry(first).or_insert(0) += 1;
            let cookie = s.value_after(first, &four, &mut random).unwrap();
            // The cookie brings it back, and is not set again.
            let again = Sticky::new(&a, "shop/web:80", Some(cookie.as_bytes()), &four, || 0);
            assert_eq!(again.prefer(), Some(first));
            assert!(again.value_after(first, &four, || 0).is_none());
            let five = addrs(5);
            let after = Sticky::new(&a, "shop/web:80", Some(cookie.as_bytes()), &five, || 0);
            if after.prefer() != Some(first) {
                moved += 1;
                assert_eq!(after.prefer(), Some(five[4]), "moves only to the new one");
            }
        }
        assert!(
            (300..500).contains(&moved),
            "{moved} of 2000 moved (1/5 expected)"
        );
        assert!(
            spread.values().all(|&n| (400..600).contains(&n)),
            "{spread:?}"
        );
    }

    #[test]
    fn a_persistent_session_names_its_endpoint_until_it_is_gone() {
        let a = affinity(Mode::Persistent, false);
        let four = addrs(4);
        let s = Sticky::new(&a, "shop/web:80", None, &four, || 0);
        assert_eq!(s.prefer(), None, "a new session takes the balancer's pick");
        let cookie = s.value_after(four[2], &four, || 0).unwrap();
        let (key, backend) = parts(cookie.as_bytes());
        assert_eq!(backend, Some(backend_key("shop/web:80").as_bytes()));
        assert_eq!(key.len(), 16);
        let again = Sticky::new(&a, "shop/web:80", Some(cookie.as_bytes()), &addrs(9), || 0);
        assert_eq!(again.prefer(), Some(four[2]), "scaling up moves nothing");
        let gone = Sticky::new(&a, "shop/web:80", Some(cookie.as_bytes()), &four[..2], || 0);
        assert_eq!(gone.prefer(), None);
        // Another Service's endpoint key is no key here.
        let other = Sticky::new(&a, "shop/api:80", Some(cookie.as_bytes()), &four, || 0);
        assert_eq!(other.prefer(), None);
    }

    #[test]
    fn a_failed_endpoint_moves_the_session_only_with_change_on_failure() {
        let four = addrs(4);
        for mode in [Mode::Balanced, Mode::Persistent] {
            let keep = affinity(mode, false);
            let first = Sticky::new(&keep, "s", None, &four, || 7);
            let served = first.prefer().unwrap_or(four[0]);
            let cookie = first.value_after(served, &four, || 7).unwrap();
            let s = Sticky::new(&keep, "s", Some(cookie.as_bytes()), &four, || 0);
            let other = *four.iter().find(|a| Some(**a) != s.prefer()).unwrap();
            assert!(s.value_after(other, &four, || 0).is_none(), "{mode:?}");
            let change = affinity(mode, true);
            let s = Sticky::new(&change, "s", Some(cookie.as_bytes()), &four, || 0);
            let mut n = 0u64;
            let moved = s
                .value_after(other, &four, || {
                    n += 1;
                    mix(n)
                })
                .unwrap();
            let after = Sticky::new(&change, "s", Some(moved.as_bytes()), &four, || 0);
            assert_eq!(after.prefer(), Some(other), "{mode:?}");
        }
    }

    #[test]
    fn the_cookie_carries_ingress_nginx_attributes() {
        let mut a = affinity(Mode::Balanced, false);
        let t = SystemTime::UNIX_EPOCH;
        let c = set_cookie(&a, "k|b", "/api", false, t).unwrap();
        assert_eq!(c, "INGRESSCOOKIE=k|b; Path=/api; HttpOnly");
        assert!(
            set_cookie(&a, "k|b", "/", true, t)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("; Secure")
        );
        a.path = Some("/".into());
        a.domain = Some("shop.test".into());
        a.expires = Some(60);
        a.max_age = Some(120);
        a.secure = Some(false);
        a.samesite = Some("Strict");
        let c = set_cookie(&a, "k|b", "/api", true, t).unwrap();
        assert_eq!(
            c,
            "INGRESSCOOKIE=k|b; Path=/; Domain=shop.test; Expires=Thu, 01 Jan 1970 00:01:00 GMT; Max-Age=120; HttpOnly; SameSite=Strict"
        );
    }
}
