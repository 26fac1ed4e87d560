//! The headers a request takes to an endpoint, as ingress-nginx sets them
//! (X-Forwarded-*, X-Real-IP, X-Request-ID, Via, Host), and the request
//! head the in-task client writes, from whichever server read the request.
use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
};

use hyper::{
    Method,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};

use super::trust::Origin;
use crate::l7::{
    http1::{head::RequestHead, tokens::is_hop_by_hop_text},
    route::Route,
};

pub(in crate::l7) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_ORIGINAL_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-original-forwarded-for");

/// A request's header fields as bytes, in the order they came: hyper's
/// header map, or the head the in-task server parsed (names in the case
/// the client wrote them).
pub(in crate::l7) trait Fields {
    fn each<'s>(&'s self, f: impl FnMut(&'s [u8], &'s [u8]));

    /// The first value of a header; `name` in lower case.
    fn first(&self, name: &str) -> Option<&[u8]>;

    /// How many fields there are (to size the head).
    fn count(&self) -> usize;
}

impl Fields for HeaderMap {
    fn each<'s>(&'s self, mut f: impl FnMut(&'s [u8], &'s [u8])) {
        for (name, value) in self {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn count(&self) -> usize {
        self.len()
    }
}

/// 64 random-looking bits: splitmix64 over a per-thread state seeded once
/// from the kernel, so no system call per request.
/// Everything but RFC 3986's unreserved characters percent-encoded (nginx's
/// `$escaped_request_uri`, `$ssl_client_escaped_cert`).
pub(super) fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(in crate::l7) fn random_u64() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut seed = [0u8; 8];
            // SAFETY: getrandom into a local buffer of the given length.
            let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
            if n == 8 {
                u64::from_ne_bytes(seed)
            } else {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
            }
        });
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// 128 random-looking bits as 32 hex digits.
pub(in crate::l7) fn request_id() -> HeaderValue {
    let next = random_u64;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let bits = (u128::from(next()) << 64) | u128::from(next());
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// The headers the proxy sets on a request to an endpoint, as
/// ingress-nginx does; computed once for either client.
pub(in crate::l7) struct Forwarding<'a> {
    origin: Origin,
    /// X-Forwarded-For as the client sent it (every line), and Via.
    prior_xff: Option<Cow<'a, [u8]>>,
    prior_via: Option<&'a [u8]>,
    /// `--compute-full-forwarded-for`: the peer is appended to the
    /// client's X-Forwarded-For, not put in its place.
    full_xff: bool,
    /// X-Forwarded-Proto, -Host, -Port from a trusted peer.
    their_proto: Option<&'a [u8]>,
    their_host: Option<&'a [u8]>,
    their_port: Option<&'a [u8]>,
    host: Option<&'a str>,
    /// `upstream-vhost`.
    vhost: Option<&'a str>,
    /// `x-forwarded-prefix`.
    prefix: Option<&'a str>,
    request_id: &'a HeaderValue,
    /// `--proxy-set-headers` (never one of the above).
    extra: &'a [(HeaderName, HeaderValue)],
}

/// The value of cookie `name` (case-insensitive, as nginx's `$cookie_`),
/// from every Cookie line (HTTP/2 sends one per cookie).
pub(in crate::l7) fn cookie<'f>(fields: &'f impl Fields, name: &str) -> Option<&'f [u8]> {
    let mut found = None;
    fields.each(|n, v| {
        if found.is_some() || !n.eq_ignore_ascii_case(b"cookie") {
            return;
        }
        found = v.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            pair[..eq]
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| pair[eq + 1..].trim_ascii())
        });
    });
    found
}

/// Every line of a header, joined by ", " as nginx's `$http_` variables
/// join them; `None` when there is none.
pub(in crate::l7) fn joined<'a>(fields: &'a impl Fields, name: &str) -> Option<Cow<'a, [u8]>> {
    let mut found: Option<Cow<'a, [u8]>> = None;
    fields.each(|n, v| {
        if n.eq_ignore_ascii_case(name.as_bytes()) {
            found = Some(match found.take() {
                None => Cow::Borrowed(v),
                Some(prev) => Cow::Owned([&prev[..], b", ", v].concat()),
            });
        }
    });
    found
}

impl<'a> Forwarding<'a> {
    /// `listed`: whether the request's Connection header names a header
    /// (then it is hop-by-hop: nothing to take from it).
    pub(in crate::l7) fn new(
        fields: &'a impl Fields,
        listed: impl Fn(&[u8]) -> bool,
        origin: Origin,
        full_xff: bool,
        host: Option<&'a str>,
        route: &'a Route,
        request_id: &'a HeaderValue,
    ) -> Self {
        let policy = &route.policy;
        let end_to_end = |name: &HeaderName| !listed(name.as_str().as_bytes());
        let prior = |name: &HeaderName| fields.first(name.as_str()).filter(|_| end_to_end(name));
        let theirs = |name: &HeaderName| prior(name).filter(|v| origin.trusted && !v.is_empty());
        Self {
            origin,
            prior_xff: joined(fields, X_FORWARDED_FOR.as_str())
                .filter(|_| end_to_end(&X_FORWARDED_FOR)),
            prior_via: prior(&header::VIA),
            full_xff,
            their_proto: theirs(&X_FORWARDED_PROTO),
            their_host: theirs(&X_FORWARDED_HOST),
            their_port: theirs(&X_FORWARDED_PORT),
            host,
            vhost: policy.upstream_vhost.as_deref(),
            prefix: policy.forwarded_prefix.as_deref(),
            request_id,
            extra: route.proxy_headers.as_deref().map_or(&[], |h| h.pairs()),
        }
    }

    /// The Host the endpoint gets: `upstream-vhost`, else a trusted
    /// X-Forwarded-Host (ingress-nginx's `$best_http_host`), else the
    /// client's.
    fn upstream_host(&self) -> Option<&[u8]> {
        self.vhost
            .map(str::as_bytes)
            .or(self.their_host)
            .or(self.host.map(str::as_bytes))
    }

    /// Whether the proxy sets this header (the client's value is replaced);
    /// `name` in any case.
    fn replaces(&self, name: &[u8]) -> bool {
        let is = |h: &HeaderName| h.as_str().as_bytes().eq_ignore_ascii_case(name);
        is(&X_FORWARDED_FOR)
            || is(&X_ORIGINAL_FORWARDED_FOR)
            || is(&X_REAL_IP)
            || is(&X_FORWARDED_PORT)
            || is(&X_FORWARDED_PROTO)
            || is(&X_REQUEST_ID)
            || is(&header::VIA)
            || is(&X_FORWARDED_HOST)
            || (self.upstream_host().is_some() && is(&header::HOST))
            || (self.prefix.is_some() && is(&X_FORWARDED_PREFIX))
            || self.extra.iter().any(|(n, _)| is(n))
    }

    /// Each header the proxy sets, with its value.
    pub(in crate::l7) fn each(&self, mut set: impl FnMut(&HeaderName, &[u8])) {
        let client = IpText::of(self.origin.client);
        let client = client.as_bytes();
        match (&self.prior_xff, self.full_xff) {
            (Some(prev), true) => {
                let peer = IpText::of(self.origin.peer);
                set(
                    &X_FORWARDED_FOR,
                    &[&prev[..], b", ", peer.as_bytes()].concat(),
                );
            }
            (None, true) => set(&X_FORWARDED_FOR, IpText::of(self.origin.peer).as_bytes()),
            (_, false) => set(&X_FORWARDED_FOR, client),
        }
        if let Some(prev) = &self.prior_xff {
            set(&X_ORIGINAL_FORWARDED_FOR, prev);
        }
        set(&X_REAL_IP, client);
        match self.their_port {
            Some(port) => set(&X_FORWARDED_PORT, port),
            None => set(
                &X_FORWARDED_PORT,
                itoa_port(self.origin.port).as_str().as_bytes(),
            ),
        }
        if let Some(h) = self.their_host.or(self.host.map(str::as_bytes)) {
            set(&X_FORWARDED_HOST, h);
        }
        if let Some(h) = self.upstream_host() {
            set(&header::HOST, h);
        }
        let scheme: &[u8] = if self.origin.tls { b"https" } else { b"http" };
        set(&X_FORWARDED_PROTO, self.their_proto.unwrap_or(scheme));
        set(&X_REQUEST_ID, self.request_id.as_bytes());
        if let Some(p) = self.prefix {
            set(&X_FORWARDED_PREFIX, p.as_bytes());
        }
        match self.prior_via {
            Some(prev) => set(&header::VIA, &[prev, b", 1.1 ingressd"].concat()),
            None => set(&header::VIA, b"1.1 ingressd"),
        }
        for (name, value) in self.extra {
            set(name, value.as_bytes());
        }
    }

    /// The same, as header values.
    pub(in crate::l7) fn owned(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(9 + self.extra.len());
        self.each(|name, value| {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                out.push((name.clone(), v));
            }
        });
        out
    }
}

/// The request head for the in-task client: the client's end-to-end
/// headers, then the forwarding ones.
pub(in crate::l7) fn upstream_head(
    method: &Method,
    target: &str,
    fields: &impl Fields,
    listed: impl Fn(&[u8]) -> bool,
    forwarding: &Forwarding<'_>,
    first: SocketAddr,
) -> RequestHead {
    let mut head = RequestHead::new(method, target, fields.count() + 8);
    let cookies_listed = listed(b"cookie");
    let mut cookies: Vec<&[u8]> = Vec::new();
    fields.each(|name, value| {
        // Host is written once, below; cookies joined on one line.
        if name.eq_ignore_ascii_case(b"host") {
            return;
        }
        if name.eq_ignore_ascii_case(b"cookie") {
            if !cookies_listed {
                cookies.push(value);
            }
            return;
        }
        if !is_hop_by_hop_text(name)
            && !forwarding.replaces(name)
            && !listed(name)
            && !has_underscore(name)
        {
            head.header(name, value);
        }
    });
    // HTTP/2 clients send each cookie as a field of its own; HTTP/1.1 has
    // one Cookie line, joined with "; " (RFC 9113 §8.2.3).
    if !cookies.is_empty() {
        head.joined_header(b"cookie", &cookies, b"; ");
    }
    forwarding.each(|name, value| head.header(name.as_str().as_bytes(), value));
    if forwarding.upstream_host().is_none() {
        // HTTP/1.1 needs exactly one: the client's as it came (one that is
        // not text is not a host to route by), else the endpoint's address
        // (an HTTP/1.0 client may have sent none).
        match fields.first("host") {
            Some(h) => head.header(b"host", h),
            None => head.header(b"host", first.to_string().as_bytes()),
        }
    }
    head.finish()
}

/// nginx ignores header names with an underscore (`ignore_invalid_headers`
/// with `underscores_in_headers off`): `X_Forwarded_For` or
/// `Transfer_Encoding` could mean their dashed names to an endpoint that
/// maps one to the other (CGI, WSGI and many frameworks do).
pub(in crate::l7) fn has_underscore(name: &[u8]) -> bool {
    name.contains(&b'_')
}

/// Removes the headers nginx ignores (see `has_underscore`) from a map.
pub(in crate::l7) fn strip_ignored(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|k| has_underscore(k.as_str().as_bytes()))
    {
        return;
    }
    let ignored: Vec<HeaderName> = headers
        .keys()
        .filter(|k| has_underscore(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in ignored {
        headers.remove(name);
    }
}

/// Cookies on one line, for hyper's client (see `upstream_head`).
pub(in crate::l7) fn joined_cookies(headers: &HeaderMap, listed: &[HeaderName]) -> Option<Vec<u8>> {
    if listed.contains(&header::COOKIE) {
        return None;
    }
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let mut joined = cookies.next()?.as_bytes().to_vec();
    for more in cookies {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    Some(joined)
}

/// An address as text without the formatting machinery (IPv4 by hand:
/// it is written twice into every request).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(_) => {
                let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
                let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
                t.len = cursor.position() as usize;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A port as decimal text, without a heap allocation.
fn itoa_port(port: u16) -> PortText {
    let mut buf = [0u8; 5];
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    PortText { buf, start: i }
}

struct PortText {
    buf: [u8; 5],
    start: usize,
}

impl PortText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "198.18.0.1",
            "255.255.255.255",
            "10.100.9.99",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(parsed).as_bytes(), ip.as_bytes());
        }
    }
}
