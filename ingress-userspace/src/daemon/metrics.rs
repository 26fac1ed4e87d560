//! `/metrics` (Prometheus text), `/healthz` and `/readyz` on `--metrics-addr`.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};

use crate::{
    kernel::LbMaps,
    l7::{Proxy, body::Body, listen::serve_side, route::render_routes},
};

/// What the sync loop reports; read by the HTTP handlers.
#[derive(Default)]
pub struct Status {
    /// The first sync has been applied to the maps.
    pub ready: AtomicBool,
    /// Unix milliseconds of the sync loop's last turn (0: never).
    pub heartbeat_ms: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_errors: AtomicU64,
    pub map_writes: AtomicU64,
    pub last_sync_micros: AtomicU64,
    pub manifest_errors: AtomicU64,
    pub frontends: AtomicU64,
    pub rings: AtomicU64,
    /// The conntrack sweeper's last findings.
    pub flows: AtomicU64,
    pub revnat_entries: AtomicU64,
    pub snat_in_use: AtomicU64,
    pub snat_ports: AtomicU64,
    /// Rules in the proxy's route table.
    pub route_rules: AtomicU64,
    /// What the last sync found wrong (an Ingress's refused path or
    /// annotation, a missing Service or Secret, ...), a line each.
    pub problems: std::sync::Mutex<Vec<String>>,
    /// This replica writes Ingress status (`--update-status` with the API).
    pub writes_status: AtomicBool,
    /// It holds the Lease (the status writer keeps this).
    pub leading: Arc<AtomicBool>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Status {
    pub fn record_sweep(&self, s: &crate::kernel::Sweep) {
        self.flows.store(s.flows, Ordering::Relaxed);
        self.revnat_entries.store(s.revnat, Ordering::Relaxed);
        self.snat_in_use.store(s.snat_in_use, Ordering::Relaxed);
        self.snat_ports.store(s.snat_ports, Ordering::Relaxed);
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Healthy while the sync loop turned within the last 10 s.
    pub fn healthy(&self) -> bool {
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        beat != 0 && now_ms().saturating_sub(beat) < 10_000
    }
}

fn render_metrics(status: &Status, pin_path: &std::path::Path) -> String {
    let mut out = String::new();
    let g = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP ingressd_build_info The version and commit ingressd was built from\n\
         # TYPE ingressd_build_info gauge\n\
         ingressd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        super::VERSION,
        super::COMMIT
    );
    g(
        &mut out,
        "ingressd_ready",
        "1 once the first sync is applied",
        "gauge",
        status.ready.load(Ordering::Relaxed) as u64,
    );
    g(
        &mut out,
        "ingressd_syncs_total",
        "Syncs applied to the maps",
        "counter",
        r(&status.syncs),
    );
    g(
        &mut out,
        "ingressd_sync_errors_total",
        "Syncs that failed to apply",
        "counter",
        r(&status.sync_errors),
    );
    g(
        &mut out,
        "ingressd_map_writes_total",
        "BPF map writes made by syncs",
        "counter",
        r(&status.map_writes),
    );
    g(
        &mut out,
        "ingressd_last_sync_duration_microseconds",
        "Duration of the last sync",
        "gauge",
        r(&status.last_sync_micros),
    );
    g(
        &mut out,
        "ingressd_manifest_errors",
        "Documents rejected at the last load",
        "gauge",
        r(&status.manifest_errors),
    );
    g(
        &mut out,
        "ingressd_l4_frontends",
        "Service frontends in the maps",
        "gauge",
        r(&status.frontends),
    );
    g(
        &mut out,
        "ingressd_l4_rings",
        "Service backend rings in the maps",
        "gauge",
        r(&status.rings),
    );
    g(
        &mut out,
        "ingressd_l4_conntrack_entries",
        "Flows in the conntrack table at the last sweep",
        "gauge",
        r(&status.flows),
    );
    g(
        &mut out,
        "ingressd_l4_conntrack_capacity",
        "Flows the conntrack table holds before the least recently used go",
        "gauge",
        ingress_common::MAX_FLOWS as u64,
    );
    g(
        &mut out,
        "ingressd_l4_revnat_entries",
        "Reverse-NAT entries at the last sweep",
        "gauge",
        r(&status.revnat_entries),
    );
    g(
        &mut out,
        "ingressd_l4_snat_ports_in_use",
        "SNAT ports held by flows to other nodes' endpoints",
        "gauge",
        r(&status.snat_in_use),
    );
    g(
        &mut out,
        "ingressd_l4_snat_ports",
        "Ports in the SNAT range",
        "gauge",
        r(&status.snat_ports),
    );
    if let Ok(maps) = LbMaps::open(pin_path)
        && let Ok(counters) = maps.counters()
    {
        // Flows neither live nor removed by ingressd went to LRU pressure.
        let c = |k: &str| counters.get(k).copied().unwrap_or(0);
        let evicted = c("conntrack_created")
            .saturating_sub(c("conntrack_expired") + c("conntrack_forgotten") + r(&status.flows));
        g(
            &mut out,
            "ingressd_l4_conntrack_evicted_total",
            "Flows pushed out of a full conntrack table (created, less those expired, forgotten or live)",
            "counter",
            evicted,
        );
        let _ = writeln!(
            out,
            "# HELP ingressd_l4_packets_total Packets seen by the L4 programs, by outcome"
        );
        let _ = writeln!(out, "# TYPE ingressd_l4_packets_total counter");
        for (reason, v) in counters {
            let _ = writeln!(out, "ingressd_l4_packets_total{{reason=\"{reason}\"}} {v}");
        }
        if let Ok(sock) = maps.sock_counters() {
            let _ = writeln!(
                out,
                "# HELP ingressd_socket_lb_total connect() and sendmsg() calls to frontends, and replies reversed, by outcome"
            );
            let _ = writeln!(out, "# TYPE ingressd_socket_lb_total counter");
            for (result, v) in sock {
                let _ = writeln!(out, "ingressd_socket_lb_total{{result=\"{result}\"}} {v}");
            }
        }
    }
    out
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    status: Arc<Status>,
    pin_path: Arc<PathBuf>,
    proxy: Option<Arc<Proxy>>,
) -> Response<Body> {
    let (code, body) = match req.uri().path() {
        // The route table names every host and endpoint: for whoever is on
        // this machine (`ingressd routes`), not for whoever can scrape.
        "/routes" if !peer.ip().is_loopback() => {
            (StatusCode::FORBIDDEN, "from this machine only\n".into())
        }
        "/routes" => match &proxy {
            Some(p) => (StatusCode::OK, render_routes(&p.routes())),
            None => (StatusCode::NOT_FOUND, "no proxy (--no-l7)\n".into()),
        },
        "/metrics" => {
            let mut text = render_metrics(&status, &pin_path);
            if let Some(p) = &proxy {
                text.push_str(&p.render_metrics());
            }
            (StatusCode::OK, text)
        }
        "/status" => (StatusCode::OK, render_status(&status)),
        "/healthz" if status.healthy() => (StatusCode::OK, "ok\n".into()),
        "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "sync loop stuck\n".into()),
        "/readyz" if status.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "first sync not applied yet\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// What `ingressd status` shows, as JSON.
fn render_status(status: &Status) -> String {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let writer = if !status.writes_status.load(Ordering::Relaxed) {
        "off"
    } else if status.leading.load(Ordering::Relaxed) {
        "leader"
    } else {
        "follower"
    };
    let problems = status
        .problems
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    serde_json::json!({
        "version": super::VERSION,
        "commit": super::COMMIT,
        "ready": status.ready.load(Ordering::Relaxed),
        "healthy": status.healthy(),
        "syncs": r(&status.syncs),
        "sync_errors": r(&status.sync_errors),
        "last_sync_micros": r(&status.last_sync_micros),
        "manifest_errors": r(&status.manifest_errors),
        "status_writer": writer,
        "route_rules": r(&status.route_rules),
        "problems": problems,
        "l4": {
            "frontends": r(&status.frontends),
            "rings": r(&status.rings),
            "flows": r(&status.flows),
            "snat_in_use": r(&status.snat_in_use),
            "snat_ports": r(&status.snat_ports),
        },
    })
    .to_string()
}

/// Binds now (so a bad address fails at start-up) and serves in the
/// background: at most `cap` connections, each request head within
/// `timeout`.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
    pin_path: PathBuf,
    proxy: Option<Arc<Proxy>>,
    (cap, timeout): (usize, Duration),
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::l7::listen::bind(addr)
        .map_err(|e| anyhow::anyhow!("binding --metrics-addr {addr}: {e}"))?;
    if let Ok(at) = listener.local_addr() {
        tracing::info!(metrics = %at, "metrics listening");
    }
    let pin_path = Arc::new(pin_path);
    let answer =
        move |req, peer| handle(req, peer, status.clone(), pin_path.clone(), proxy.clone());
    Ok(tokio::spawn(serve_side(listener, cap, timeout, answer)))
}
