//! Differential checks of the fast path against the hyper path it
//! shortcuts, for the bounded corpus in `tests/differential.rs` and the
//! fuzz targets of `cargo xtask fuzz`: the same bytes must give the same
//! method, target, headers and body (requests: the fast server's scan
//! against the guard and hyper's server; responses: the fast client's
//! reading against hyper's client), or both must refuse them.
//!
//! Each call runs both implementations on in-memory connections, so it is
//! slow next to the paths themselves: a check, not a path.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    body::{Body, BoxError},
    http1::tokens::is_hop_by_hop,
    pipeline::forwarding::Fields as _,
    server::{fast::scan_wire, guard},
    upstream,
};

/// The request-head bound both servers are held to in the check.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// Bodies are compared up to this.
const MAX_BODY: usize = 1 << 20;
/// Each side's run is bounded (an in-memory exchange takes microseconds).
const BOUND: Duration = Duration::from_secs(2);

/// What one implementation made of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Refused (whatever the status: both refusing is agreement).
    Refused,
    /// The message: its first line's parts, its headers (lower-case names,
    /// sorted, hop-by-hop left out for responses) and its body.
    Message {
        line: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
}

fn sorted(headers: &HeaderMap, skip_hop_by_hop: bool) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(n, _)| !(skip_hop_by_hop && is_hop_by_hop(n)))
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    out.sort();
    out
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// `Ok` when the fast server and hyper's (behind its guard) agree on the
/// request at the start of `wire`; what each saw otherwise. Heads the fast
/// server hands to hyper, or has not seen whole, are hyper's alone.
pub fn request(wire: &[u8]) -> Result<(), String> {
    let fast = match scan_wire(wire, MAX_HEAD, MAX_HEADERS) {
        Ok(head) => {
            let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
            head.each(|n, v| {
                headers.push((String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
            });
            headers.sort();
            Seen::Message {
                line: format!("{} {}", head.method(), head.target()),
                headers,
                body: Vec::new(),
            }
        }
        Err(Some(_)) => Seen::Refused,
        Err(None) => return Ok(()),
    };
    let hyper = runtime()?.block_on(hyper_server_saw(wire));
    if fast == hyper {
        Ok(())
    } else {
        Err(format!("fast server: {fast:?}\nhyper's: {hyper:?}"))
    }
}

async fn hyper_server_saw(wire: &[u8]) -> Seen {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let refusals = std::sync::Arc::new(guard::Refusals::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let taken = refusals.clone();
    let seq = std::sync::atomic::AtomicU64::new(0);
    let svc = service_fn(move |req: Request<Incoming>| {
        let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refused = taken.take(n).is_some();
        let tx = tx.clone();
        async move {
            let seen = if refused {
                Seen::Refused
            } else {
                let line = format!("{} {}", req.method(), req.uri());
                let headers = sorted(req.headers(), false);
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().to_vec(),
                    Err(_) => return Err("body"),
                };
                Seen::Message {
                    line,
                    headers,
                    body,
                }
            };
            let _ = tx.send(seen);
            Ok::<_, &str>(Response::new(Full::new(Bytes::new())))
        }
    });
    let io = guard::Guarded::new(server, refusals, MAX_HEAD);
    // The input ends after the wire (no client waits on a real socket):
    // half-closed, so that end does not cut a request hyper has read.
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD.max(8192))
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc);
    let serving = tokio::spawn(conn);
    if client.write_all(wire).await.is_err() || client.shutdown().await.is_err() {
        return Seen::Refused;
    }
    let seen = tokio::time::timeout(BOUND, rx.recv()).await;
    serving.abort();
    match seen {
        Ok(Some(seen)) => seen,
        _ => Seen::Refused,
    }
}

/// `Ok` when the fast client and hyper's agree on the response `wire`
/// (the endpoint closing after it) to a GET, or to a HEAD when `is_head`.
pub fn response(wire: &[u8], is_head: bool) -> Result<(), String> {
    let fast = match upstream::fast::read_whole(wire, is_head) {
        Ok((resp, body)) => Seen::Message {
            line: resp.status().as_str().to_string(),
            headers: sorted(resp.headers(), true),
            body: body.into_iter().take(MAX_BODY).collect(),
        },
        Err(_) => Seen::Refused,
    };
    let hyper = runtime()?.block_on(hyper_client_saw(wire, is_head));
    if fast == hyper {
        Ok(())
    } else {
        Err(format!("fast client: {fast:?}\nhyper's: {hyper:?}"))
    }
}

async fn hyper_client_saw(wire: &[u8], is_head: bool) -> Seen {
    let (client, mut endpoint) = tokio::io::duplex(1 << 20);
    let wire = wire.to_vec();
    let answering = tokio::spawn(async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match endpoint.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = endpoint.write_all(&wire).await;
        let _ = endpoint.shutdown().await;
    });
    let seen = tokio::time::timeout(BOUND, async {
        let Ok((mut sender, conn)) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(upstream::MAX_HEAD_BYTES)
            .handshake::<_, Body>(TokioIo::new(client))
            .await
        else {
            return Seen::Refused;
        };
        tokio::spawn(conn);
        let method = if is_head { "HEAD" } else { "GET" };
        let Ok(req) = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "a")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        else {
            return Seen::Refused;
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r.map(|b| b.map_err(BoxError::from).boxed()),
            Err(_) => return Seen::Refused,
        };
        // The checks the pipeline makes of every hyper-client response.
        if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
            return Seen::Refused;
        }
        let Ok(resp) = upstream::settled(resp, BOUND) else {
            return Seen::Refused;
        };
        let line = resp.status().as_str().to_string();
        let headers = sorted(resp.headers(), true);
        match resp.into_body().collect().await {
            Ok(b) => Seen::Message {
                line,
                headers,
                body: b.to_bytes().iter().copied().take(MAX_BODY).collect(),
            },
            Err(_) => Seen::Refused,
        }
    })
    .await
    .unwrap_or(Seen::Refused);
    answering.abort();
    seen
}
