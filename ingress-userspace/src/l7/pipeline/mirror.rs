//! RequestMirror: a copy of a request, as the rule's filters made it, to
//! each mirror backend that takes it (by its share), on a connection of
//! its own; the answer is read and dropped, and nothing the mirror does
//! reaches the client or holds the request up. Copies in flight are
//! bounded: past the bound a copy is skipped, never queued.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use hyper::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{forwarding::Fields, gateway::draw};
use crate::l7::{
    http1::tokens::HOP_BY_HOP,
    route::{
        Upstream,
        gateway::rules::{HeaderEdits, Rule},
    },
};

/// Copies in flight at most (each a connection and a small task).
const MAX_IN_FLIGHT: usize = 256;
/// A copy's whole exchange at most.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What the copy is made of: the request as it goes to the backend.
pub(super) struct Copy<'a, F> {
    pub method: &'a Method,
    /// Path and query, rewritten if the rule rewrites them.
    pub target: &'a str,
    /// The Host the backend gets (a rewritten one, else the client's).
    pub host: Option<&'a str>,
    pub fields: &'a F,
}

/// Sends a copy to each of `rule`'s mirrors that takes this request.
pub(super) fn send_copies<F: Fields>(rule: &Rule, copy: &Copy<'_, F>) {
    for m in &rule.mirrors {
        let Some(Upstream::Endpoints { addrs, .. }) = m.upstream.as_deref() else {
            continue;
        };
        if addrs.is_empty() || !m.takes(draw()) {
            continue;
        }
        if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let addr = addrs[draw() as usize % addrs.len()];
        let head = head(copy, addr, &rule.request_headers);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(COPY_TIMEOUT, send(addr, head)).await;
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The copy's head: the client's end-to-end fields with the rule's
/// header edits, closed after its answer.
fn head<F: Fields>(copy: &Copy<'_, F>, addr: SocketAddr, edits: &HeaderEdits) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(copy.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(copy.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match copy.host {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(addr.to_string().as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let replaced = |n: &[u8]| {
        edits
            .set
            .iter()
            .map(|(name, _)| name)
            .chain(&edits.remove)
            .any(|name| name.as_str().as_bytes().eq_ignore_ascii_case(n))
    };
    copy.fields.each(|n, v| {
        let skip = n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"content-length")
            || HOP_BY_HOP
                .iter()
                .any(|h| n.eq_ignore_ascii_case(h.as_str().as_bytes()))
            || replaced(n);
        if !skip {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    });
    for (n, v) in edits.set.iter().chain(&edits.add) {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

async fn send(addr: SocketAddr, head: Vec<u8>) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&head).await?;
    let mut buf = [0u8; 4096];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}
