//! The side listeners, the default backend's port and the metrics port:
//! small HTTP/1 servers, each with a connection cap of its own and the
//! client header timeout on every request head (the wait for the next one
//! on an idle connection included), so that whatever clients do to one
//! port costs the others nothing.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::combinators::BoxBody;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{accept, tune_listener};
use crate::l7::error::BoxError;

/// Serves `handle` on `listener` forever: at most `cap` connections at
/// once (more wait in the backlog), a request head within `timeout`. The
/// handler is told who asks.
pub async fn serve_side<H, F>(listener: TcpListener, cap: usize, timeout: Duration, handle: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<BoxBody<bytes::Bytes, BoxError>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
    serve_side_shared(listener, slots, timeout, handle).await
}

/// The same with a cap shared by several listeners (the health ports).
pub async fn serve_side_shared<H, F>(
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<BoxBody<bytes::Bytes, BoxError>>> + Send + 'static,
{
    tune_listener(&listener);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = accept(&listener).await;
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let answer = handle(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
            drop(permit);
        });
    }
}
