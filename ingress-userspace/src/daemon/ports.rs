//! The proxy's ports across an upgrade. A new `ingressd` binds :80 and
//! :443 beside the running one (`SO_REUSEPORT`) but opens them only once
//! its first sync is in, then puts its sockets where `sk_lookup_proxy`
//! sends every new connection: one map update switches the node. The old
//! one, on SIGTERM, waits for that switch (bounded), takes what the kernel
//! had already queued for it, and finishes its connections with
//! `Connection: close` / GOAWAY. Without the BPF data path (`--no-l4`)
//! the ports open the same way and the kernel spreads connections over
//! both processes until the old one closes.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::net::TcpSocket;

use crate::{
    kernel,
    l7::{listen, server::Proxy},
};

/// After the switch, how long the old process keeps accepting: the
/// handshakes that began before it still land in its queue.
const HANDOVER_LINGER: Duration = Duration::from_secs(1);

/// The longest a stopping `ingressd` waits for a new one to take its
/// ports over (half the grace period, at most this).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The proxy's ports, bound but not yet open.
pub(super) struct ProxyPorts {
    pub(super) http: TcpSocket,
    pub(super) https: TcpSocket,
    pub(super) tls: Arc<crate::l7::tls::ServerConfigs>,
    /// With the BPF data path: the pin path, and this process's id in
    /// `L7_OWNER`.
    pub(super) take_over: Option<(PathBuf, u64)>,
    pub(super) class: String,
}

impl ProxyPorts {
    /// Opens the ports (and, with the data path, makes them the node's).
    pub(super) fn open(self, proxy: &Arc<Proxy>) -> anyhow::Result<()> {
        let http = listen::listen(self.http).context("listening on --http-addr")?;
        let https = listen::listen(self.https).context("listening on --https-addr")?;
        if let Some((pin, instance)) = &self.take_over
            && let Err(e) = kernel::take_proxy_sockets(pin, &http, &https, *instance)
        {
            // Served all the same, by the usual socket lookup; only the
            // VIPs and the next upgrade's switch miss them.
            tracing::warn!(error = %format!("{e:#}"), "the proxy's sockets are not in the sk_lookup map");
        }
        let bound =
            |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            http = %bound(&http),
            https = %bound(&https),
            class = %self.class,
            "proxy listening"
        );
        tokio::spawn(listen::serve_http(http, proxy.clone()));
        tokio::spawn(listen::serve_https(https, proxy.clone(), self.tls));
        Ok(())
    }
}

/// Says, every second until this process has taken the ports, that it
/// is about to: an `ingressd` stopping meanwhile waits for it.
pub(super) fn announce(pin: PathBuf, me: u64) {
    tokio::spawn(async move {
        // Bounded by the take-over (the first sync), or a minute.
        for _ in 0..60 {
            match kernel::ports_owner(&pin) {
                Ok(o) if o.owner == me => return,
                Ok(_) => {
                    if let Err(e) = kernel::announce_ports_successor(&pin, me) {
                        tracing::debug!(error = %format!("{e:#}"), "cannot announce the take-over");
                        return;
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// SIGTERM with the proxy running. With `take_over` (the BPF data path)
/// and a new `ingressd` starting (a rolling upgrade starts it before this
/// one stops), this one first waits for it to take the ports, serving
/// meanwhile; then it finishes its connections, all within `grace`.
/// Gives the connections still open at the end.
pub(super) async fn stop(
    proxy: Arc<Proxy>,
    grace: Duration,
    take_over: Option<(PathBuf, u64)>,
) -> i64 {
    let started = Instant::now();
    if let Some((pin, me)) = take_over {
        let wait = (grace / 2).min(HANDOVER_WAIT);
        if taken_over(&pin, me, wait).await {
            tracing::info!(
                "a new ingressd took the proxy's ports over; finishing the connections open here"
            );
            proxy.begin_stopping();
            tokio::time::sleep(HANDOVER_LINGER).await;
        }
    }
    proxy
        .shut_down(grace.saturating_sub(started.elapsed()))
        .await
}

/// Whether another `ingressd` has taken the ports, waiting up to `wait`
/// (checked every 50 ms) while one says it is coming.
async fn taken_over(pin: &std::path::Path, me: u64, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match kernel::ports_owner(pin) {
            Ok(o) if o.owner != me && o.owner != 0 => return true,
            Ok(o) if o.coming.is_some() && Instant::now() < deadline => {}
            Ok(o) => {
                if o.coming.is_some() {
                    tracing::warn!(waited = ?wait, "the new ingressd did not take the proxy's ports over in time; closing them");
                }
                return false;
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot read who holds the proxy's ports");
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
