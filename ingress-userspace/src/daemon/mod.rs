//! The daemon: start-up (L4 data path, proxy, metrics, source), the loop
//! that keeps everything in step with the source, and shutdown.
pub mod health;
mod kube_proxy;
pub mod metrics;
mod ports;
mod reconcile;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpListener;

use self::{
    health::{HealthServers, ProxyHealth},
    metrics::Status,
    ports::ProxyPorts,
    reconcile::{L4, L7, Syncer, VipSteering, error_policy},
};
use crate::{
    cluster::{ClassConfig, ObjectKey, Rules},
    kernel::{self, LbMaps, XdpAttachMode},
    l4::model::{Model, NodeContext, ServeConfig},
    l7::{
        Limits, Proxy,
        listen::{self, FdPlan},
        pipeline::{
            Options,
            log::{AccessLog, Destination, Format},
            trust::Trust,
        },
        route::Patterns,
        tls::{self, CertStore},
    },
    source::{
        Source,
        files::ManifestSource,
        kube::{self, KubeSource},
    },
    status::{self, Elector, PublishConfig},
};
/// The version this was built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this was built from (`unknown` outside a git checkout
/// without `INGRESSD_COMMIT`).
pub const COMMIT: &str = env!("INGRESSD_COMMIT");
/// `ingressd --version`'s line after the name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INGRESSD_COMMIT"),
    ")"
);

pub struct RunConfig {
    /// Files and directories; none: the Kubernetes API.
    pub manifests: Vec<PathBuf>,
    /// Validation beyond the API server's (`--allow-loopback-endpoints`).
    pub rules: Rules,
    pub kube: KubeConfig,
    pub interfaces: Vec<String>,
    pub node_ips: Vec<Ipv4Addr>,
    pub node_name: String,
    pub pin_path: PathBuf,
    pub metrics_addr: SocketAddr,
    pub xdp_mode: XdpAttachMode,
    /// `--socket-lb`: cluster IPs (and every frontend, for local callers)
    /// at `connect()`, by the cgroup programs.
    pub socket_lb: bool,
    /// `--cgroup`: where those attach (default: the cgroup2 root).
    pub cgroup: Option<PathBuf>,
    /// `--service-proxy-name`.
    pub service_proxy_name: Option<String>,
    /// `--healthz-addr`: kube-proxy's /healthz and /livez (with L4).
    pub healthz_addr: SocketAddr,
    /// `--conntrack-*-timeout`: how long idle flows are kept, by state.
    pub conntrack: kernel::Timeouts,
    /// Proxy only: no BPF at all.
    pub no_l4: bool,
    /// Data path only: no proxy.
    pub no_l7: bool,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub default_backend_addr: SocketAddr,
    /// `namespace/name` of the Secret served when no Ingress host matches SNI.
    pub default_ssl_certificate: Option<ObjectKey>,
    pub class: ClassConfig,
    pub limits: Limits,
    /// `--use-forwarded-headers` and friends.
    pub trust: Trust,
    /// `--http1-fast-path`.
    pub fast_path: bool,
    /// `--hsts` and its settings: the Strict-Transport-Security value
    /// (None: not sent).
    pub hsts: Option<String>,
    /// `--access-log` and `--access-log-format`.
    pub access_log: Destination,
    pub access_log_format: Format,
    /// Addresses whose :80/:443 connections `sk_lookup` steers to the proxy.
    pub ingress_vips: Vec<Ipv4Addr>,
    /// `--publish-service`: the Service in front of the proxy, whose
    /// LoadBalancer IPs are Ingress VIPs too.
    pub proxy_service: Option<ObjectKey>,
    /// After SIGTERM, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
}

/// What the kube source needs beyond the common flags.
#[derive(Clone, Debug, Default)]
pub struct KubeConfig {
    pub kubeconfig: Option<PathBuf>,
    /// Services, EndpointSlices and Ingresses of this namespace only.
    pub namespace: Option<String>,
    pub publish: PublishConfig,
    /// Write Ingress status (`--update-status`).
    pub update_status: bool,
    /// Clear it when the last replica leaves (`--update-status-on-shutdown`).
    pub update_status_on_shutdown: bool,
    /// The Lease (`--election-id`) and where it lives.
    pub election_id: String,
    pub lease_namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
}

/// Reads what changed in `source` (everything, the first time): the
/// Services touched, or None when nothing changed. Refused objects are
/// logged here, once per load that finds them.
fn load(source: &mut dyn Source, first: bool, status: &Status) -> Option<BTreeSet<ObjectKey>> {
    if !first && !source.changed() {
        return None;
    }
    let changes = source.load();
    for e in &changes.errors {
        tracing::error!("{e}; its last good version stays in force");
    }
    status
        .manifest_errors
        .store(changes.invalid as u64, Ordering::Relaxed);
    Some(changes.touched)
}

/// How often idle flows are looked for (the timeouts' granularity).
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

fn start_l4(
    cfg: &RunConfig,
    status: &Arc<Status>,
    health: &Arc<ProxyHealth>,
    health_cap: usize,
) -> anyhow::Result<L4> {
    let mut node_ips = cfg.node_ips.clone();
    if node_ips.is_empty() {
        for iface in &cfg.interfaces {
            node_ips.extend(kernel::interface_addrs(iface)?);
        }
    }
    if node_ips.is_empty() {
        anyhow::bail!("no node address: the --interface has no IPv4 address; pass --node-ip");
    }
    let node = NodeContext {
        name: cfg.node_name.clone(),
        addrs: node_ips,
        serve: ServeConfig {
            cluster_ip: cfg.socket_lb,
            proxy_name: cfg.service_proxy_name.clone(),
        },
        routes: kernel::main_routes(),
        interfaces: cfg.interfaces.clone(),
    };
    tracing::info!(node = %node.name, addrs = ?node.addrs, interfaces = ?cfg.interfaces, "starting the L4 data path");
    if let Some(found) = kube_proxy::detect() {
        kube_proxy::report(&found, cfg.socket_lb);
    }
    let cgroup = match (&cfg.cgroup, cfg.socket_lb) {
        (_, false) => None,
        (Some(c), true) => Some(c.clone()),
        (None, true) => Some(kernel::default_cgroup()?),
    };
    kernel::load_and_attach(
        &cfg.pin_path,
        &cfg.interfaces,
        cfg.xdp_mode,
        !cfg.no_l7,
        cgroup.as_deref(),
    )?;
    let mut maps = LbMaps::open(&cfg.pin_path)?;
    maps.set_node(&node.addrs)?;
    maps.set_redirect_ifs(&kernel::redirect_targets(
        &cfg.interfaces,
        cfg.xdp_mode == XdpAttachMode::Native,
    ))?;
    let table = status.clone();
    kernel::spawn_sweeper(&cfg.pin_path, cfg.conntrack, SWEEP_INTERVAL, move |s| {
        table.record_sweep(&s)
    })?;
    let servers = HealthServers::start(
        cfg.healthz_addr,
        health.clone(),
        health_cap,
        cfg.limits.client_header_timeout,
    )?;
    Ok(L4 {
        health: servers,
        // With no proxy here, its Service is one like any other.
        model: Model::new(node).with_proxy_service(if cfg.no_l7 {
            None
        } else {
            cfg.proxy_service.clone()
        }),
        maps,
        adopt: true,
    })
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    listen::bind(addr).with_context(|| format!("binding {flag} {addr}"))
}

fn bind_only(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpSocket> {
    listen::bind_only(addr).with_context(|| format!("binding {flag} {addr}"))
}

/// A number no other `ingressd` on this node holds: which process's
/// sockets the proxy's ports lead to (`kernel::take_proxy_sockets`).
fn instance_id() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    // Descriptors shared out before anything opens one: each listener gets
    // a cap of its own, so none can take the others' (see listen::fds).
    let fds = FdPlan::for_this_process(cfg.limits.max_connections);
    let mut limits = cfg.limits.clone();
    limits.max_connections = fds.proxy;
    if fds.proxy < cfg.limits.max_connections {
        tracing::warn!(
            fd_limit = fds.limit,
            max_connections = cfg.limits.max_connections,
            "the file-descriptor limit allows {} connections per proxy listener",
            fds.proxy
        );
    }
    tracing::info!(
        fd_limit = fds.limit,
        proxy_connections = fds.proxy,
        default_backend_connections = fds.default_backend,
        metrics_connections = fds.metrics,
        "connections per listener"
    );
    let health = Arc::new(ProxyHealth::default());
    let status = Arc::new(Status::default());
    let l4 = if cfg.no_l4 {
        None
    } else {
        Some(start_l4(&cfg, &status, &health, fds.metrics)?)
    };
    let mut vips = None;
    let instance = instance_id();
    let take_over = (l4.is_some() && !cfg.no_l7).then(|| (cfg.pin_path.clone(), instance));
    let l7 = if cfg.no_l7 {
        None
    } else {
        let access_log = AccessLog::open(&cfg.access_log, cfg.access_log_format)
            .with_context(|| format!("opening --access-log {:?}", cfg.access_log))?;
        let hsts = cfg
            .hsts
            .as_deref()
            .map(hyper::header::HeaderValue::from_str)
            .transpose()
            .context("--hsts-max-age")?;
        let options = Options {
            fast_path: cfg.fast_path,
            trust: cfg.trust.clone(),
            hsts,
            access_log,
        };
        let proxy = Proxy::with_options(limits.clone(), options);
        let certs = Arc::new(CertStore::default());
        let fallback = tls::self_signed()
            .map_err(|e| anyhow::anyhow!("making the default certificate: {e}"))?;
        let tls_config = tls::server_config(certs.clone())
            .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
        // Bound now (a taken port fails the start), opened once the first
        // sync is in (`ProxyPorts::open`): an upgrade's new process takes
        // no connection before it can route it.
        let http = bind_only(cfg.http_addr, "--http-addr")?;
        let https = bind_only(cfg.https_addr, "--https-addr")?;
        let default_backend = bind(cfg.default_backend_addr, "--default-backend-addr").await?;
        if let Some((pin, me)) = &take_over {
            ports::announce(pin.clone(), *me);
        }
        if l4.is_some() {
            // --ingress-vip now; the Service's LoadBalancer IPs from the
            // first sync on.
            let mut steering = VipSteering {
                pin_path: cfg.pin_path.clone(),
                fixed: cfg.ingress_vips.clone(),
                service: cfg.proxy_service.clone(),
                gateway_controller: cfg.class.gateway_controller.clone(),
                current: None,
            };
            steering.set(steering.wanted(None))?;
            vips = Some(steering);
        } else if !cfg.ingress_vips.is_empty() {
            tracing::warn!("--ingress-vip needs the BPF data path: ignored with --no-l4");
        }
        let default_at = default_backend
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(listen::serve_default_backend(
            default_backend,
            fds.default_backend,
            limits.client_header_timeout,
        ));
        // The addresses really bound (port 0 picks one): logged for scripts.
        let bound =
            |s: &tokio::net::TcpSocket| s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            http = %bound(&http),
            https = %bound(&https),
            default_backend = %default_at,
            "proxy ports bound; :http and :https open once the first sync is in"
        );
        Some(L7 {
            proxy: proxy.clone(),
            certs,
            fallback,
            default_secret: cfg.default_ssl_certificate.clone(),
            ports: Some(ProxyPorts {
                http,
                https,
                tls: tls_config,
                take_over: take_over.clone(),
                class: cfg.class.class_name.clone(),
            }),
        })
    };
    let proxy = l7.as_ref().map(|l| l.proxy.clone());

    status.beat();
    let _server = metrics::serve(
        cfg.metrics_addr,
        status.clone(),
        cfg.pin_path.clone(),
        proxy.clone(),
        (fds.metrics, limits.client_header_timeout),
    )
    .await?;

    let (mut source, mut publisher, status_task) = if cfg.manifests.is_empty() {
        let client = kube::client(cfg.kube.kubeconfig.as_ref()).await?;
        let source = KubeSource::start(
            client.clone(),
            cfg.kube.namespace.as_deref(),
            &cfg.node_name,
            cfg.class.clone(),
            cfg.default_ssl_certificate.clone(),
            cfg.rules,
        );
        status
            .writes_status
            .store(cfg.kube.update_status, std::sync::atomic::Ordering::Relaxed);
        let (publisher, task) = if cfg.kube.update_status {
            let (tx, rx) = tokio::sync::watch::channel(status::StatusInput::default());
            let elector = Elector::new(
                client.clone(),
                &cfg.kube.lease_namespace,
                &cfg.kube.election_id,
                &cfg.kube.identity,
            );
            let events = status::events::Events::new(client.clone(), &cfg.kube.identity);
            let task = tokio::spawn(status::run(
                client,
                elector,
                events,
                cfg.kube.publish.pod.clone(),
                cfg.kube.update_status_on_shutdown,
                status.leading.clone(),
                rx,
            ));
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        (Box::new(source) as Box<dyn Source>, publisher, task)
    } else {
        (
            Box::new(ManifestSource::new(cfg.manifests.clone()).with_rules(cfg.rules))
                as Box<dyn Source>,
            None,
            None,
        )
    };
    // Gateway listeners are served on the ports really bound.
    let mut class = cfg.class.clone();
    if let Some(ports) = l7.as_ref().and_then(|l| l.ports.as_ref()) {
        let port = |s: &tokio::net::TcpSocket| s.local_addr().map(|a| a.port()).unwrap_or(0);
        class.proxy_ports = (port(&ports.http), port(&ports.https));
    }
    let mut syncer = Syncer {
        l4,
        l7,
        vips,
        class,
        patterns: Patterns::default(),
        warned: BTreeSet::new(),
        route_warnings: Vec::new(),
    };
    let mut first = true;
    let mut touched = BTreeSet::new();
    let mut dirty = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut waiting_logged = false;
    // SIGTERM: Kubernetes replaces this pod. The proxy takes no new
    // connections and lets the requests in flight finish within the grace
    // period, while this loop keeps maps, routes and /healthz going.
    let mut draining: Option<std::pin::Pin<Box<dyn std::future::Future<Output = i64> + Send>>> =
        None;
    loop {
        status.beat();
        health.beat();
        if let Some(t) = load(source.as_mut(), first, &status) {
            touched.extend(t);
            dirty = true;
            health.queued();
        }
        // Nothing is applied before every first list is in: a half-listed
        // cluster would empty maps a restarted pod adopted. Later, a new
        // Ingress's Secret still being listed holds a sync a moment (2 s
        // at most), so its routes go live with their certificate.
        let apply = if first {
            source.synced()
        } else {
            dirty && !source.holds()
        };
        if apply {
            dirty = false;
            match syncer.sync_once(source.snapshot(), std::mem::take(&mut touched), &status) {
                Ok(()) => {
                    first = false;
                    health.applied();
                }
                Err(e) => dirty = error_policy(&e, &mut syncer, &status),
            }
            if let Some(tx) = &publisher {
                let mut todo =
                    status::status_input(source.snapshot(), &cfg.class, &cfg.kube.publish);
                todo.causes = status::events::causes(&syncer.route_warnings, source.snapshot());
                // From the table in force: Programmed only once it serves.
                if let Some(l7) = &syncer.l7 {
                    todo.gateways = status::gateway::statuses(
                        source.snapshot(),
                        &l7.proxy.routes().gateway,
                        &cfg.class.gateway_controller,
                    );
                }
                tx.send_if_modified(|current| {
                    let changed = *current != todo;
                    *current = todo;
                    changed
                });
            }
        } else if !source.synced() && !waiting_logged {
            tracing::info!("waiting for the first list of every watched kind");
            waiting_logged = true;
        }
        tokio::select! {
            () = source.wait() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv(), if draining.is_none() => {
                // The Lease goes at once, so a successor writes status now
                // rather than after the lease runs out.
                publisher = None;
                match &proxy {
                    Some(p) => {
                        draining = Some(Box::pin(ports::stop(p.clone(), cfg.shutdown_grace, take_over.clone())));
                    }
                    None => break,
                }
            },
            open = async { draining.as_mut().expect("guarded").await }, if draining.is_some() => {
                tracing::info!(still_open = open, "proxy drained");
                break;
            }
        }
    }
    if let Some(task) = status_task {
        // Its Lease released (bounded: the API server may be away).
        drop(publisher);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    tracing::info!("exiting; the L4 data path stays attached with its pinned maps");
    Ok(())
}
