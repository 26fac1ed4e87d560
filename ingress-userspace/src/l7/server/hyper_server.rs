//! hyper's server, for what the fast server does not take: requests with a
//! body, upgrades, HTTP/2, and every HTTP/1 request when the fast path is
//! off. Its requests go through the same pipeline.
use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::BodyExt as _;
use hyper::{
    StatusCode,
    body::Incoming,
    header::{CONNECTION, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{
    Proxy,
    guard::{Guarded, Refusals},
    watchdog::{Expired, Timeouts, Watch, WatchedIo},
};
use crate::l7::{
    error::{BoxError, ProxyError},
    pipeline::{Conn, PeerCerts},
};

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

/// How a connection hyper served ended.
#[derive(Debug)]
pub(super) enum Served {
    /// It is over (the client left, or was let go idle).
    Closed,
    /// A head did not come whole in time: the client is owed a 408.
    HeadTimeout,
    /// It broke off (an error, or a response the client would not take).
    Failed,
    /// hyper refused a head (and answered it with the status of this).
    Refused(ProxyError),
}

/// A hyper server error that refused a head, as the pipeline counts it.
fn refusal(e: &hyper::Error) -> Option<ProxyError> {
    if e.is_parse_too_large() {
        // hyper's 414 and 431 are told apart only by their text.
        return Some(if e.to_string().contains("URI") {
            ProxyError::TargetTooLong
        } else {
            ProxyError::HeadTooLarge
        });
    }
    e.is_parse().then_some(ProxyError::BadHead(
        "not an HTTP/1 request head hyper takes",
    ))
}

/// Runs a connection to its end; asks it to finish once shutdown begins
/// or it sat idle too long; drops it when a head or a response write ran
/// out of time.
async fn drive<C: Graceful>(
    conn: C,
    proxy: &Proxy,
    watch: &Watch,
    t: Timeouts,
    drain: Duration,
) -> Served {
    let ended = |r: Result<(), hyper::Error>| match r {
        Ok(()) => Served::Closed,
        Err(e) if is_header_timeout(&e) => Served::HeadTimeout,
        Err(e) => refusal(&e).map_or(Served::Failed, Served::Refused),
    };
    tokio::pin!(conn);
    let expiry = watch.expiry(t);
    tokio::pin!(expiry);
    let stopping = tokio::select! {
        r = conn.as_mut() => return ended(r),
        () = proxy.stopped() => true,
        e = &mut expiry => match e {
            Expired::Idle => false,
            Expired::Head => return Served::HeadTimeout,
            Expired::Send => return Served::Failed,
        },
    };
    // Shutting down, HTTP/1: responses say `Connection: close` from now
    // on, and a connection between requests gets `drain` to bring its
    // next one before it is closed (see `DRAIN_IDLE`).
    if stopping && !drain.is_zero() {
        let pause = tokio::time::sleep(drain);
        tokio::pin!(pause);
        tokio::select! {
            r = conn.as_mut() => return ended(r),
            () = &mut pause => {}
            e = &mut expiry => match e {
                Expired::Idle => {}
                Expired::Head => return Served::HeadTimeout,
                Expired::Send => return Served::Failed,
            },
        }
    }
    conn.as_mut().graceful();
    // Finishing is held to the send timeout too.
    tokio::select! {
        r = conn.as_mut() => ended(r),
        e = &mut expiry => match e {
            Expired::Send => Served::Failed,
            _ => conn.await.map_or(Served::Failed, |()| Served::Closed),
        },
    }
}

/// One client connection, plain or TLS, in the HTTP it speaks, until the
/// client goes away.
pub(super) async fn serve_conn<I>(
    io: I,
    proxy: Arc<Proxy>,
    conn: Conn,
    proto: Proto,
    peer: Option<PeerCerts>,
) -> Served
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let watch = Watch::new(proto == Proto::Http2);
    let http1 = proto == Proto::Http1;
    let refusals = Arc::new(Refusals::default());
    let p = proxy.clone();
    let w = watch.clone();
    let refused = refusals.clone();
    let svc = service_fn(move |req| {
        let p = p.clone();
        let peer = peer.clone();
        let (request, seq) = w.begin();
        // The stand-in for a head the guard refused: its refusal answers.
        let refusal = refused.take(seq);
        async move {
            let resp = match refusal {
                Some(e) => {
                    p.pipeline.refused(&e, conn);
                    e.respond()
                }
                None => {
                    let mut req = req;
                    if let Some(certs) = &peer {
                        req.extensions_mut().insert(certs.clone());
                    }
                    p.pipeline.handle_hyper(req, conn).await.map(|b| b.boxed())
                }
            };
            let mut resp = resp.map(|body| request.watch(body));
            // Shutting down: HTTP/1 closes after this response (hyper
            // honours the header); HTTP/2 has its GOAWAY.
            if http1 && p.is_stopping() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let limits = proxy.pipeline.limits();
    let t = Timeouts {
        // No keep-alive: hyper closes after the response; the connection
        // then only waits for its first head.
        idle: if limits.client_keepalive.is_zero() {
            limits.client_header_timeout
        } else {
            limits.client_keepalive
        },
        head: limits.client_header_timeout,
        send: limits.client_header_timeout,
    };
    match proto {
        Proto::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                // The watchdog keeps the idle and head timeouts; hyper's
                // own (which counts idle time as head time) only backs it.
                .header_read_timeout(t.idle + t.head + Duration::from_secs(1))
                .keep_alive(!limits.client_keepalive.is_zero())
                // hyper answers 431 past these.
                .max_buf_size(limits.max_header_bytes.max(8192));
            // hyper's own limit is 100: told 100 again, it would build its
            // header slots element by element on every request instead of
            // leaving them uninitialised on the stack.
            if limits.max_headers != HYPER_MAX_HEADERS {
                b.max_headers(limits.max_headers);
            }
            // The watchdog sees bytes as they come, before the guard holds
            // a head back to vet it.
            let watched = WatchedIo {
                io,
                watch: watch.clone(),
            };
            let io = TokioIo::new(Guarded::new(
                watched,
                refusals,
                limits.max_header_bytes.max(8192),
            ));
            let served = b.serve_connection(io, svc).with_upgrades();
            drive(served, &proxy, &watch, t, super::DRAIN_IDLE).await
        }
        Proto::Http2 => {
            let io = TokioIo::new(WatchedIo {
                io,
                watch: watch.clone(),
            });
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .keep_alive_interval(Some(limits.client_header_timeout));
            // Boxed: HTTP/2's connection state is twice HTTP/1's, and an
            // unboxed one would make every connection's task that large.
            // GOAWAY at once: the client opens a new connection for what
            // it has not sent yet, with no request lost.
            Box::pin(drive(
                b.serve_connection(io, svc),
                &proxy,
                &watch,
                t,
                Duration::ZERO,
            ))
            .await
        }
    }
}

/// Whether a connection ended because the client was too slow sending a
/// request head (or sat idle that long).
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
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
