//! `ssl-passthrough` (with `--enable-ssl-passthrough`): the HTTPS listener
//! reads each ClientHello itself, keeping its bytes, and asks rustls only
//! to parse it. A hello whose SNI names a passthrough host is replayed to
//! an endpoint of that host's backend and the two connections are spliced,
//! the TLS never terminated here; any other goes on to rustls as usual.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::super::{
    io::splice,
    route::{RouteTable, Upstream},
};

/// A ClientHello is one handshake message (at most 64 KiB in TLS); more
/// bytes than that before rustls has one is no client's.
const MAX_HELLO: usize = (64 << 10) + 1024;

/// A passed-through connection with nothing sent either way for this long
/// is closed (Envoy's TCP proxy default; the connection still counts
/// against `--max-connections` until then).
pub(super) const IDLE: Duration = Duration::from_secs(3600);

/// Endpoints at most tried per connection.
const TRIES: usize = 3;

/// What the hello decided.
pub(super) enum Hello {
    /// Terminated here: rustls has the hello.
    Terminate(Box<tokio_rustls::StartHandshake<TcpStream>>),
    Pass(Pass),
}

/// A connection to pass through: the bytes read from it so far, the host
/// and where it goes.
pub(super) struct Pass {
    stream: TcpStream,
    read: Vec<u8>,
    host: String,
    upstream: Arc<Upstream>,
}

/// Reads the ClientHello from `stream` and decides by its SNI.
pub(super) async fn read_hello(
    mut stream: TcpStream,
    routes: &RouteTable,
) -> std::io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut read = Vec::with_capacity(2048);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if read.len() + n > MAX_HELLO {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no ClientHello in the first 64 KiB",
            ));
        }
        read.extend_from_slice(&buf[..n]);
        let mut fresh = &buf[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(match routes.passthrough(sni.as_deref()) {
                    Some(p) => Hello::Pass(Pass {
                        stream,
                        read,
                        host: sni.unwrap_or_default(),
                        upstream: p.upstream.clone(),
                    }),
                    None => Hello::Terminate(Box::new(tokio_rustls::StartHandshake::from_parts(
                        accepted, stream,
                    ))),
                });
            }
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = stream.write_all(&out).await;
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Where connections start in an endpoint list: turns per connection, so
/// they spread over the endpoints.
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Pass {
    /// Connects to an endpoint of its upstream (up to [`TRIES`] of them,
    /// each within `connect_timeout`), replays what was read to it and
    /// splices the two connections.
    pub(super) async fn serve(self, connect_timeout: Duration, client: SocketAddr) {
        let Pass {
            stream,
            read,
            host,
            upstream,
        } = self;
        let (host, upstream) = (host.as_str(), &*upstream);
        let addrs = match upstream {
            Upstream::Endpoints { addrs, .. } => addrs.clone(),
            Upstream::External { host, port, .. } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(found) => found.collect(),
                    Err(e) => {
                        tracing::debug!(%client, host, error = %e, "ssl-passthrough: resolving the ExternalName");
                        Vec::new()
                    }
                }
            }
            Upstream::Unavailable { .. } => Vec::new(),
        };
        let Some(mut endpoint) = connect(&addrs, connect_timeout).await else {
            tracing::debug!(%client, host, backend = upstream.name(), "ssl-passthrough: no endpoint took the connection; closed");
            return;
        };
        let _ = endpoint.set_nodelay(true);
        if endpoint.write_all(&read).await.is_err() {
            return;
        }
        drop(read);
        if splice(stream, endpoint, IDLE).await {
            tracing::debug!(%client, host, "ssl-passthrough connection idle: closed");
        }
    }
}

async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Option<TcpStream> {
    if addrs.is_empty() {
        return None;
    }
    let start = NEXT.fetch_add(1, Relaxed);
    for i in 0..addrs.len().min(TRIES) {
        let addr = addrs[(start + i) % addrs.len()];
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %addr, error = %e, "ssl-passthrough: connect failed")
            }
            Err(_) => tracing::debug!(endpoint = %addr, "ssl-passthrough: connect timed out"),
        }
    }
    None
}
