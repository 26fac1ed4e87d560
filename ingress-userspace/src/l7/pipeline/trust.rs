//! Who the client is, and whose word on it counts, as ingress-nginx's
//! `use-forwarded-headers`, `proxy-real-ip-cidr` and
//! `compute-full-forwarded-for` decide it. By default the peer is the
//! client and what it says in X-Forwarded-* is replaced; a peer inside the
//! trusted ranges (a load balancer in front) may name the client
//! (nginx's realip, `real_ip_recursive on`) and the scheme, host and port.
use std::net::{IpAddr, SocketAddr};

use super::Conn;
use crate::l7::route::annotations::Cidr;

/// `--use-forwarded-headers`, `--proxy-real-ip-cidr`,
/// `--compute-full-forwarded-for`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    pub use_forwarded_headers: bool,
    /// Peers whose forwarded headers are believed (default: every IPv4
    /// peer, ingress-nginx's 0.0.0.0/0).
    pub real_ip_from: Vec<Cidr>,
    /// Append the peer to the client's X-Forwarded-For instead of
    /// replacing it (the endpoint then picks the client itself).
    pub compute_full_forwarded_for: bool,
}

impl Default for Trust {
    fn default() -> Self {
        Self {
            use_forwarded_headers: false,
            real_ip_from: Cidr::parse("0.0.0.0/0").into_iter().collect(),
            compute_full_forwarded_for: false,
        }
    }
}

/// Who asked, as the forwarding headers, the source ranges and the log
/// tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client (nginx's `$remote_addr` after realip): the peer, or the
    /// address a trusted peer named.
    pub client: IpAddr,
    /// The connection's own peer (`$realip_remote_addr`).
    pub peer: IpAddr,
    /// The port the client connected to.
    pub port: u16,
    pub tls: bool,
    /// The client spoke HTTPS: to us, or to the trusted peer that says so
    /// in X-Forwarded-Proto (no redirect loop behind a TLS load balancer).
    pub https: bool,
    /// The peer's X-Forwarded-* are believed.
    pub trusted: bool,
}

impl Trust {
    fn trusts(&self, peer: IpAddr) -> bool {
        self.use_forwarded_headers && self.real_ip_from.iter().any(|c| c.contains(peer))
    }

    /// The request's origin; `forwarded_for`: its X-Forwarded-For, every
    /// line joined, and `proto` its X-Forwarded-Proto (None when absent).
    pub fn origin(&self, conn: Conn, forwarded_for: Option<&[u8]>, proto: Option<&[u8]>) -> Origin {
        let peer = unmapped(conn.peer);
        let trusted = self.trusts(peer);
        let client = match forwarded_for {
            Some(xff) if trusted => self.real_ip(peer, xff),
            _ => peer,
        };
        let https = match proto {
            Some(p) if trusted && !p.is_empty() => p.eq_ignore_ascii_case(b"https"),
            _ => conn.tls,
        };
        Origin {
            client,
            peer,
            port: conn.local.port(),
            tls: conn.tls,
            https,
            trusted,
        }
    }

    /// nginx's `real_ip_recursive on`: from the right, the first address
    /// that is not trusted; all trusted: the leftmost. Anything that is not
    /// an address leaves the peer as the client (nginx declines then).
    fn real_ip(&self, peer: IpAddr, xff: &[u8]) -> IpAddr {
        let Ok(text) = std::str::from_utf8(xff) else {
            return peer;
        };
        let mut client = peer;
        for item in text.rsplit(',').map(str::trim) {
            let Some(ip) = parse_ip(item) else {
                return peer;
            };
            client = ip;
            if !self.real_ip_from.iter().any(|c| c.contains(ip)) {
                break;
            }
        }
        client
    }
}

/// An address as X-Forwarded-For lists it: `1.2.3.4`, `2001:db8::1` or
/// `[2001:db8::1]`.
fn parse_ip(item: &str) -> Option<IpAddr> {
    let item = item
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(item);
    item.parse().ok()
}

/// An IPv4 client on a dual-stack socket, as the IPv4 address it is.
fn unmapped(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr.ip(), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str) -> Conn {
        Conn {
            peer: if peer.contains(':') {
                format!("[{peer}]:40000")
            } else {
                format!("{peer}:40000")
            }
            .parse()
            .unwrap(),
            local: "198.18.0.1:80".parse().unwrap(),
            tls: false,
        }
    }

    fn trust(on: bool, from: &[&str]) -> Trust {
        Trust {
            use_forwarded_headers: on,
            real_ip_from: from.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            compute_full_forwarded_for: false,
        }
    }

    fn client(t: &Trust, peer: &str, xff: Option<&str>) -> String {
        t.origin(conn(peer), xff.map(str::as_bytes), None)
            .client
            .to_string()
    }

    #[test]
    fn the_peer_is_the_client_unless_trusted() {
        let off = Trust::default();
        assert_eq!(client(&off, "198.18.0.9", Some("1.2.3.4")), "198.18.0.9");
        assert!(!off.origin(conn("198.18.0.9"), None, None).trusted);
        let on = trust(true, &["198.18.0.0/24"]);
        assert_eq!(client(&on, "198.18.0.9", Some("1.2.3.4")), "1.2.3.4");
        // A peer outside the trusted ranges names nobody.
        assert_eq!(client(&on, "198.19.0.9", Some("1.2.3.4")), "198.19.0.9");
        assert!(!on.origin(conn("198.19.0.9"), None, None).trusted);
    }

    #[test]
    fn recursive_from_the_right_past_trusted_hops() {
        let on = trust(true, &["198.18.0.0/24", "10.0.0.0/8"]);
        // The client forged the leftmost entry; the first untrusted one
        // from the right is who connected to the trusted hops.
        let xff = "6.6.6.6, 1.2.3.4, 10.1.1.1";
        assert_eq!(client(&on, "198.18.0.9", Some(xff)), "1.2.3.4");
        // All trusted: the leftmost.
        assert_eq!(
            client(&on, "198.18.0.9", Some("10.0.0.1, 10.0.0.2")),
            "10.0.0.1"
        );
        assert_eq!(
            client(&on, "198.18.0.9", Some("[2001:db8::1]")),
            "2001:db8::1"
        );
        // Garbage anywhere on the way: the peer.
        assert_eq!(
            client(&on, "198.18.0.9", Some("1.2.3.4, nope")),
            "198.18.0.9"
        );
        assert_eq!(client(&on, "198.18.0.9", Some("")), "198.18.0.9");
    }

    #[test]
    fn the_scheme_is_a_trusted_peers_word_too() {
        let on = trust(true, &["198.18.0.0/24"]);
        let https =
            |peer: &str, proto: &str| on.origin(conn(peer), None, Some(proto.as_bytes())).https;
        assert!(https("198.18.0.9", "HTTPS"));
        assert!(!https("198.18.0.9", "http"));
        assert!(!https("198.19.0.9", "https"), "not from an untrusted peer");
        assert!(
            !Trust::default()
                .origin(conn("198.18.0.9"), None, Some(b"https"))
                .https
        );
    }

    #[test]
    fn everyone_is_trusted_by_default_once_switched_on() {
        let on = Trust {
            use_forwarded_headers: true,
            ..Trust::default()
        };
        assert_eq!(
            client(&on, "198.18.0.9", Some("1.2.3.4, 5.6.7.8")),
            "1.2.3.4"
        );
        assert_eq!(client(&on, "::ffff:198.18.0.9", None), "198.18.0.9");
    }
}
