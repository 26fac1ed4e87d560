//! A request head as the pipeline reads it, from either server: hyper's
//! `Request`, or the fast server's `ClientHead` (its bytes, and where in
//! them each field lies).
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use hyper::{Method, http::uri::PathAndQuery};

use super::forwarding::Fields;

/// A request head, parsed, that the fast server answers.
pub struct ClientHead {
    pub(in crate::l7) bytes: Bytes,
    pub(in crate::l7) method: Method,
    pub(in crate::l7) target: PathAndQuery,
    pub(in crate::l7) http10: bool,
    pub(in crate::l7) keep_alive: bool,
    pub(in crate::l7) fields: Vec<(Range<usize>, Range<usize>)>,
    /// Names the Connection header lists (other than close/keep-alive).
    pub(in crate::l7) listed: Vec<Range<usize>>,
    pub(in crate::l7) host: Option<Range<usize>>,
}

impl ClientHead {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Always origin form (`/path?query`).
    pub fn target(&self) -> &PathAndQuery {
        &self.target
    }

    /// The Host header, if it is text (one that is not is no host to route
    /// by, as with hyper's `to_str`).
    pub fn host(&self) -> Option<&str> {
        let raw = &self.bytes[self.host.clone()?];
        if raw.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            std::str::from_utf8(raw).ok()
        } else {
            None
        }
    }

    /// Whether the request's Connection header names this header.
    pub fn listed(&self, name: &[u8]) -> bool {
        self.listed
            .iter()
            .any(|r| self.bytes[r.clone()].eq_ignore_ascii_case(name))
    }

    /// The first value of a header as shared bytes (no copy).
    pub fn value(&self, name: &str) -> Option<Bytes> {
        self.first(name).map(|v| self.bytes.slice_ref(v))
    }

    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// The head's length as it came.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn http10(&self) -> bool {
        self.http10
    }

    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Back to where it came from: the head's bytes and what followed.
    pub fn unread(self, rest: &mut BytesMut) -> Bytes {
        let mut all = BytesMut::with_capacity(self.bytes.len() + rest.len());
        all.extend_from_slice(&self.bytes);
        all.extend_from_slice(rest);
        all.freeze()
    }
}

impl Fields for ClientHead {
    fn each<'s>(&'s self, mut f: impl FnMut(&'s [u8], &'s [u8])) {
        for (name, value) in &self.fields {
            f(&self.bytes[name.clone()], &self.bytes[value.clone()]);
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| self.bytes[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.bytes[v.clone()])
    }

    fn count(&self) -> usize {
        self.fields.len()
    }
}
