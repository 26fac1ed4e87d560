//! Listening: the accept loops of the HTTP, HTTPS, default-backend and
//! metrics ports, with their socket options and connection caps (`fds`
//! shares the descriptors out). Each accepted connection is served on a
//! task of its own (`server`; `side` for the small ports).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, StatusCode, body::Incoming};
use tokio::net::TcpListener;

mod fds;
mod passthrough;
mod side;

pub use fds::FdPlan;
pub use side::{serve_side, serve_side_shared};

use self::passthrough::Hello;
use super::{
    body::text,
    pipeline::Conn,
    server::{self, Proxy},
    tls::ServerConfigs,
};

/// Connections the kernel keeps waiting for accept while a listener is at
/// its cap (std and mio's 128 drop SYNs from a burst; nginx takes 511).
/// Capped by `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr`, with a backlog for bursts.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_only(addr)?.listen(BACKLOG)
}

/// A socket bound to `addr` that does not listen yet, so it takes no
/// connection until [`TcpSocket::listen`]: the proxy's ports, which a new
/// `ingressd` binds beside the one it replaces and opens only once its
/// routes are in. `SO_REUSEPORT` lets the two hold the same address (both
/// run as the same user); a socket of another program there still makes
/// this fail.
pub fn bind_only(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Starts listening on a socket from [`bind_only`].
pub fn listen(socket: tokio::net::TcpSocket) -> std::io::Result<TcpListener> {
    socket.listen(BACKLOG)
}

/// Socket options on the listener that accepted sockets inherit (Linux).
///
/// - TCP_NODELAY: saves a setsockopt per connection.
/// - TCP_DEFER_ACCEPT (nginx's `listen ... deferred`): the kernel hands a
///   connection to accept only once its first bytes are in, so the first
///   read finds the request instead of waiting a wake-up for it, and a
///   connection that sends nothing costs no task, no `--max-connections`
///   slot and no header timer until it does (or until the kernel gives up
///   deferring it after about a second and hands it over anyway). Every
///   protocol served here has the client speak first (HTTP/1, the HTTP/2
///   preface, a TLS ClientHello).
fn tune_listener(listener: &TcpListener) {
    set_tcp_option(listener, libc::TCP_NODELAY, 1, "TCP_NODELAY");
    set_tcp_option(listener, libc::TCP_DEFER_ACCEPT, 1, "TCP_DEFER_ACCEPT");
}

fn set_tcp_option(listener: &TcpListener, name: libc::c_int, value: libc::c_int, what: &str) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a socket we own, with a c_int of its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), option = what, "setting a listener option");
    }
}

async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            // TCP_NODELAY comes from the listener (set_nodelay).
            Ok(pair) => return pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts until shutdown begins, at most `--max-connections` at once,
/// and serves each connection on a task of its own.
async fn accept_loop<F, Fut>(listener: TcpListener, proxy: Arc<Proxy>, serve_one: F)
where
    F: Fn(tokio::net::TcpStream, Conn, Arc<Proxy>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tune_listener(&listener);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.limits().max_connections.max(1),
    ));
    // One wait for the listeners' end for the whole loop: made anew per
    // connection it would subscribe and register twice for every accept.
    let stop = proxy.listeners_closed();
    tokio::pin!(stop);
    loop {
        // Dropping the listener on shutdown refuses new connections; shutdown
        // is checked first, also while waiting for a free slot.
        let permit = tokio::select! {
            biased;
            () = &mut stop => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => return,
            a = accept(&listener) => a,
        };
        let conn = Conn {
            peer,
            local,
            tls: false,
        };
        // The permit goes with the connection's future, not into an async
        // block around it: that would hold the future twice (as captured
        // and as awaited), and tasks are copied into place when spawned.
        let served = serve_one(stream, conn, proxy.clone());
        tokio::spawn(futures_util::FutureExt::map(served, move |()| drop(permit)));
    }
}

/// Serves plain HTTP on `listener` until shutdown.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>) {
    accept_loop(listener, proxy, server::serve_plain).await
}

/// Serves HTTPS on `listener`: TLS handshake (bounded in time), then HTTP.
pub async fn serve_https(listener: TcpListener, proxy: Arc<Proxy>, configs: Arc<ServerConfigs>) {
    accept_loop(listener, proxy, move |stream, conn, proxy| {
        let configs = configs.clone();
        async move {
            let conn = Conn { tls: true, ..conn };
            // The configuration is chosen by the hello's SNI: some hosts
            // ask for a client certificate, some are passed through.
            let handshake = async {
                let routes = proxy.routes();
                let start = if routes.has_passthrough() {
                    match passthrough::read_hello(stream, &routes).await? {
                        Hello::Terminate(start) => *start,
                        Hello::Pass(pass) => return Ok(Err(pass)),
                    }
                } else {
                    let acceptor = rustls::server::Acceptor::default();
                    tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?
                };
                let config = configs.for_sni(start.client_hello().server_name());
                start.into_stream(config).await.map(Ok)
            };
            match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok(Ok(tls))) => server::serve_tls(tls, conn, proxy).await,
                Ok(Ok(Err(pass))) => {
                    let _open = proxy.opened();
                    let timeout = proxy.limits().upstream_connect_timeout;
                    pass.serve(timeout, conn.peer).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(client = %conn.peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(client = %conn.peer, "TLS handshake timed out"),
            }
        }
    })
    .await
}

/// The default backend on its own port (`--default-backend-addr`), as
/// ingress-nginx's: 404 for everything, 200 on /healthz; at most `cap`
/// connections, each head within `timeout`.
pub async fn serve_default_backend(listener: TcpListener, cap: usize, timeout: Duration) {
    serve_side(
        listener,
        cap,
        timeout,
        |req: Request<Incoming>, _| async move {
            if req.uri().path() == "/healthz" {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::NOT_FOUND, "default backend - 404\n")
            }
        },
    )
    .await
}
