//! kube-proxy's health servers, as load balancers and the kubelet probe
//! them: `--healthz-addr` (`/healthz`, `/livez`) and one HTTP server per
//! healthCheckNodePort of an `externalTrafficPolicy: Local` LoadBalancer
//! Service. All share one small connection cap.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Response, StatusCode};

use super::metrics::now_ms;
use crate::{
    l4::health::ServiceHealth,
    l7::{body::Body, listen::serve_side_shared},
};

/// A change may wait this long to be applied before the proxy is unhealthy
/// (kube-proxy: twice its 30 s sync period).
const HEALTH_TIMEOUT_MS: u64 = 60_000;

/// What the health servers read; the sync loop writes it.
#[derive(Default)]
pub struct ProxyHealth {
    /// Unix ms of the oldest change not applied yet (0: none waits).
    pending_since_ms: AtomicU64,
    /// Unix ms of the last applied sync (0: none yet).
    last_updated_ms: AtomicU64,
    /// Unix ms of the sync loop's last turn.
    heartbeat_ms: AtomicU64,
    /// This Node is being deleted or drained by the cluster autoscaler.
    node_ineligible: AtomicBool,
}

impl ProxyHealth {
    /// A change came in (the first of a batch starts the clock).
    pub fn queued(&self) {
        let _ = self.pending_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Everything queued is applied.
    pub fn applied(&self) {
        self.pending_since_ms.store(0, Ordering::Relaxed);
        self.last_updated_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_ineligible.store(!eligible, Ordering::Relaxed);
    }

    /// kube-proxy's `/livez`: no change has waited for more than the
    /// timeout, and the loop is turning.
    pub fn live(&self) -> bool {
        let now = now_ms();
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        (pending == 0 || now.saturating_sub(pending) < HEALTH_TIMEOUT_MS)
            && beat != 0
            && now.saturating_sub(beat) < HEALTH_TIMEOUT_MS
    }

    /// kube-proxy's `/healthz`: live, and the node still eligible.
    pub fn healthy(&self) -> bool {
        self.live() && !self.node_ineligible.load(Ordering::Relaxed)
    }

    fn times(&self) -> (String, String) {
        let last = self.last_updated_ms.load(Ordering::Relaxed);
        (rfc3339(last), rfc3339(now_ms()))
    }
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-07T10:00:00.123Z`).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

fn json(code: StatusCode, body: String, weight: Option<usize>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    if let Some(w) = weight {
        h.insert("x-load-balancing-endpoint-weight", w.into());
    }
    resp
}

fn status_code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The `--healthz-addr` answer for `path`.
fn proxy_answer(health: &ProxyHealth, path: &str) -> Response<Body> {
    let (last, now) = health.times();
    match path {
        "/livez" => json(
            status_code(health.live()),
            format!("{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{now}\"}}\n"),
            None,
        ),
        // kube-proxy answers /healthz on every other path too.
        _ => {
            let eligible = !health.node_ineligible.load(Ordering::Relaxed);
            json(
                status_code(health.healthy()),
                format!(
                    "{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{now}\", \"nodeEligible\": {eligible}}}\n"
                ),
                None,
            )
        }
    }
}

/// A healthCheckNodePort's answer: 200 with ready local endpoints and a
/// healthy proxy, else 503, and kube-proxy's JSON either way. The proxy's
/// health here leaves the Node's state out (kube-proxy's `IsHealthy`): a
/// draining node's Local Services answer by their endpoints.
fn service_answer(health: &ProxyHealth, svc: &ServiceHealth) -> Response<Body> {
    let healthy = health.live();
    let (ns, name) = (&svc.service.namespace, &svc.service.name);
    json(
        status_code(svc.local_endpoints > 0 && healthy),
        format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {healthy}\n}}\n",
            serde_json::Value::from(ns.as_str()),
            serde_json::Value::from(name.as_str()),
            svc.local_endpoints
        ),
        Some(svc.local_endpoints),
    )
}

/// The health listeners of this daemon and their shared cap.
pub struct HealthServers {
    health: Arc<ProxyHealth>,
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    /// healthCheckNodePort → what it answers, and its server.
    ports: BTreeMap<u16, (Arc<ArcSwap<ServiceHealth>>, tokio::task::JoinHandle<()>)>,
    /// Ports that could not be bound (reported once each, retried).
    failed: BTreeMap<u16, String>,
}

impl HealthServers {
    /// Binds `--healthz-addr` now (a bad address fails start-up) and serves it.
    pub fn start(
        healthz: SocketAddr,
        health: Arc<ProxyHealth>,
        cap: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let slots = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
        let listener = match crate::l7::listen::bind(healthz) {
            Ok(l) => l,
            // kube-proxy's own health server, while both run (a migration):
            // not a reason to leave the node without a data path.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(
                    healthz = %healthz,
                    "--healthz-addr is taken (by kube-proxy?): /healthz and /livez are not served here until it is free; healthCheckNodePorts are"
                );
                return Ok(Self {
                    health,
                    slots,
                    timeout,
                    ports: BTreeMap::new(),
                    failed: BTreeMap::new(),
                });
            }
            Err(e) => anyhow::bail!("binding --healthz-addr {healthz}: {e}"),
        };
        if let Ok(at) = listener.local_addr() {
            tracing::info!(healthz = %at, "kube-proxy health listening (/healthz, /livez)");
        }
        let h = health.clone();
        tokio::spawn(serve_side_shared(
            listener,
            slots.clone(),
            timeout,
            move |req, _| {
                let answer = proxy_answer(&h, req.uri().path());
                async move { answer }
            },
        ));
        Ok(Self {
            health,
            slots,
            timeout,
            ports: BTreeMap::new(),
            failed: BTreeMap::new(),
        })
    }

    /// What the servers report, for the sync loop to update.
    pub fn proxy(&self) -> &ProxyHealth {
        &self.health
    }

    /// Serves exactly `want` (new ports bound, gone ones closed, the rest
    /// answering the new counts at once).
    pub fn set(&mut self, want: BTreeMap<u16, ServiceHealth>) {
        let gone: Vec<u16> = self
            .ports
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some((_, task)) = self.ports.remove(&port) {
                task.abort();
                tracing::info!(port, "healthCheckNodePort closed");
            }
        }
        self.failed.retain(|p, _| want.contains_key(p));
        for (port, svc) in want {
            if let Some((current, _)) = self.ports.get(&port) {
                if **current.load() != svc {
                    current.store(Arc::new(svc));
                }
                continue;
            }
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let listener = match crate::l7::listen::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let e = e.to_string();
                    if self.failed.get(&port) != Some(&e) {
                        tracing::warn!(
                            port,
                            service = %format!("{}/{}", svc.service.namespace, svc.service.name),
                            error = %e,
                            "cannot serve this healthCheckNodePort; retrying at the next sync"
                        );
                        self.failed.insert(port, e);
                    }
                    continue;
                }
            };
            self.failed.remove(&port);
            tracing::info!(
                port,
                service = %format!("{}/{}", svc.service.namespace, svc.service.name),
                "healthCheckNodePort serving"
            );
            let current = Arc::new(ArcSwap::from_pointee(svc));
            let (h, c) = (self.health.clone(), current.clone());
            let task = tokio::spawn(serve_side_shared(
                listener,
                self.slots.clone(),
                self.timeout,
                move |_, _| {
                    let answer = service_answer(&h, &c.load());
                    async move { answer }
                },
            ));
            self.ports.insert(port, (current, task));
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for (_, task) in self.ports.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_637_600_123), "2026-12-07T10:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_change_waiting_too_long_makes_the_proxy_unhealthy() {
        let h = ProxyHealth::default();
        assert!(!h.live(), "no turn of the loop yet");
        h.beat();
        h.queued();
        assert!(h.live() && h.healthy());
        h.pending_since_ms
            .store(now_ms() - HEALTH_TIMEOUT_MS - 1, Ordering::Relaxed);
        assert!(!h.live());
        h.applied();
        assert!(h.live());
        h.set_node_eligible(false);
        assert!(h.live() && !h.healthy());
    }
}
