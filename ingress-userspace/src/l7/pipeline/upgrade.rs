//! Upgraded connections (WebSocket and others): bytes copied both ways
//! between the client and the endpoint until either side closes, or until
//! neither has sent anything for the route's read timeout (nginx applies
//! `proxy_read_timeout` to upgraded connections too, 60 s by default).
use std::time::Duration;

use hyper_util::rt::TokioIo;

/// Splices the client's and the endpoint's upgraded connections.
pub(super) async fn splice(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    let (d, u) = match tokio::try_join!(down, up) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    if crate::l7::io::splice(TokioIo::new(d), TokioIo::new(u), idle).await {
        tracing::debug!(
            idle_secs = idle.as_secs(),
            "upgraded connection idle: closed"
        );
    }
}
