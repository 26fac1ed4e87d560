//! hyper's server, for what the fast server does not take: requests with a
//! body, upgrades, HTTP/2, and every HTTP/1 request when the fast path is
//! off. Its requests go through the same pipeline.
use std::{convert::Infallible, sync::Arc};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Proxy;
use crate::l7::{error::BoxError, pipeline::Conn};

/// The header count hyper's HTTP/1 parser allows when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Which HTTP a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    Http1,
    Http2,
}

/// A connection hyper serves that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection to its end, or asks it to finish once shutdown begins.
async fn drive<C: Graceful>(conn: C, proxy: &Proxy) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = proxy.stopped() => {
            conn.as_mut().graceful();
            conn.await
        }
    }
}

/// One client connection, plain or TLS, in the HTTP it speaks, until the
/// client goes away.
pub(super) async fn serve_conn<I>(
    io: I,
    proxy: Arc<Proxy>,
    conn: Conn,
    proto: Proto,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let p = proxy.clone();
    let svc = service_fn(move |req| {
        let p = p.clone();
        async move { Ok::<_, Infallible>(p.pipeline.handle_hyper(req, conn).await) }
    });
    let limits = proxy.pipeline.limits();
    let io = TokioIo::new(io);
    let result = match proto {
        Proto::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.client_header_timeout)
                // hyper answers 431 past these.
                .max_buf_size(limits.max_header_bytes.max(8192));
            // hyper's own limit is 100: told 100 again, it would build its
            // header slots element by element on every request instead of
            // leaving them uninitialised on the stack.
            if limits.max_headers != HYPER_MAX_HEADERS {
                b.max_headers(limits.max_headers);
            }
            drive(b.serve_connection(io, svc).with_upgrades(), &proxy).await
        }
        Proto::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .keep_alive_interval(Some(limits.client_header_timeout));
            // Boxed: HTTP/2's connection state is twice HTTP/1's, and an
            // unboxed one would make every connection's task that large.
            Box::pin(drive(b.serve_connection(io, svc), &proxy)).await
        }
    };
    result.map_err(Into::into)
}

/// Whether a connection ended because the client was too slow sending a
/// request head (or sat idle that long).
pub(super) fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        cur = err.source();
    }
    false
}
