//! List-valued headers (RFC 9110 §5.6.1), the `Connection` header's
//! tokens, and the hop-by-hop headers no proxy passes on (RFC 9110 §7.6.1).
use hyper::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message. `Proxy` is no
/// standard header, but passed on it would set `HTTP_PROXY` for CGI-style
/// endpoints (httpoxy); nginx's ingress clears it, and so is it here.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy"),
];

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The same for a name as it came on the wire, in any case.
pub fn is_hop_by_hop_text(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// The elements of one list-valued field value, trimmed, empty ones
/// skipped (RFC 9110 §5.6.1: `a, , b` is `a, b`).
pub fn split(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The elements of a list header over every line of it, from a header map.
pub fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| split(v.as_bytes()))
}

/// What a message's `Connection` header says, over every line of it.
#[derive(Debug, Default)]
pub struct ConnectionTokens<'a> {
    pub close: bool,
    pub keep_alive: bool,
    /// Other tokens: names of headers that are hop-by-hop for this message.
    pub named: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    /// Adds one line's value.
    pub fn add(&mut self, value: &'a [u8]) {
        for token in split(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.named.push(token);
            }
        }
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only
    /// when told `keep-alive`.
    pub fn keeps_alive(&self, http10: bool) -> bool {
        !self.close && (!http10 || self.keep_alive)
    }

    /// Whether the header `name` (any case) is among those named.
    pub fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The headers a header map's `Connection` names (they are hop-by-hop).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    // Most messages name nothing: no list to build then.
    if !headers.contains_key(header::CONNECTION) {
        return Vec::new();
    }
    list_elements(headers, header::CONNECTION)
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect()
}

/// Whether a header name (any case) is among `listed`.
pub fn named(listed: &[HeaderName]) -> impl Fn(&[u8]) -> bool + '_ {
    move |name| {
        listed
            .iter()
            .any(|l| l.as_str().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Removes the hop-by-hop headers and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none (Connection among them): one pass tells.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed = connection_listed(headers);
    strip_listed_and_hop_by_hop(headers, &listed);
}

/// Removes the headers `Connection` named (`listed`) and the hop-by-hop ones.
pub fn strip_listed_and_hop_by_hop(headers: &mut HeaderMap, listed: &[HeaderName]) {
    for n in listed {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Whether the client's TE names "trailers".
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    list_elements(headers, header::TE).any(|t| {
        let t = t.split(|&b| b == b';').next().unwrap_or_default();
        t.trim_ascii().eq_ignore_ascii_case(b"trailers")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_over_every_line() {
        let mut c = ConnectionTokens::default();
        c.add(b"keep-alive, X-Hop");
        c.add(b" ,Close");
        assert!(c.close && c.keep_alive);
        assert!(c.names(b"x-hop") && !c.names(b"close"));
        assert!(!c.keeps_alive(false));
        let mut c = ConnectionTokens::default();
        c.add(b"Keep-Alive");
        assert!(c.keeps_alive(true) && c.keeps_alive(false));
        assert!(!ConnectionTokens::default().keeps_alive(true));
    }

    #[test]
    fn the_proxy_header_is_hop_by_hop() {
        assert!(is_hop_by_hop_text(b"Proxy") && is_hop_by_hop_text(b"TE"));
        assert!(!is_hop_by_hop_text(b"proxy-x"));
    }
}
