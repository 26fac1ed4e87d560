//! `ingressd run`: attach, adopt the pinned maps, then keep them in step
//! with the manifest files.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bpf::{self, LbMaps, XdpAttachMode},
    manifest::ManifestSource,
    metrics::{self, Status},
    model::{Model, NodeContext},
    sync::{apply, diff},
};

/// How often the manifest files are checked: changes apply well within a second.
const POLL: Duration = Duration::from_millis(200);

pub struct RunConfig {
    pub manifests: Vec<PathBuf>,
    pub interfaces: Vec<String>,
    pub node_ips: Vec<Ipv4Addr>,
    pub node_name: String,
    pub pin_path: PathBuf,
    pub metrics_addr: SocketAddr,
    pub xdp_mode: XdpAttachMode,
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let mut node_ips = cfg.node_ips.clone();
    if node_ips.is_empty() {
        for iface in &cfg.interfaces {
            node_ips.extend(bpf::interface_addrs(iface)?);
        }
    }
    if node_ips.is_empty() {
        anyhow::bail!("no node address: the --interface has no IPv4 address; pass --node-ip");
    }
    let node = NodeContext {
        name: cfg.node_name.clone(),
        addrs: node_ips,
    };
    tracing::info!(node = %node.name, addrs = ?node.addrs, interfaces = ?cfg.interfaces, "starting");

    bpf::load_and_attach(&cfg.pin_path, &cfg.interfaces, cfg.xdp_mode)?;
    let mut maps = LbMaps::open(&cfg.pin_path)?;
    maps.set_node(&node.addrs)?;

    let status = Arc::new(Status::default());
    status.beat();
    let _server = metrics::serve(cfg.metrics_addr, status.clone(), cfg.pin_path.clone()).await?;

    let mut syncer = Syncer {
        source: ManifestSource::new(cfg.manifests.clone()),
        model: Model::new(node),
        maps,
        adopt: true,
        warned: BTreeSet::new(),
    };
    let mut first = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        status.beat();
        if first || syncer.source.changed() {
            match syncer.sync_once(&status) {
                Ok(()) => first = false,
                Err(e) => {
                    status.sync_errors.fetch_add(1, Ordering::Relaxed);
                    syncer.adopt = true;
                    tracing::error!(error = %format!("{e:#}"), "sync failed; will re-read the maps and retry");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("exiting; the data path stays attached with its pinned maps");
    Ok(())
}

/// The sync loop's state: the source, the model and the maps it keeps in step.
struct Syncer {
    source: ManifestSource,
    model: Model,
    maps: LbMaps,
    /// Diff against what the maps really hold (start-up, after a failed
    /// write) instead of against the model's last state.
    adopt: bool,
    warned: BTreeSet<String>,
}

impl Syncer {
    fn sync_once(&mut self, status: &Status) -> anyhow::Result<()> {
        let started = Instant::now();
        let loaded = self.source.load();
        for e in &loaded.errors {
            tracing::error!("{e}; its last good version stays in force");
        }
        for s in &loaded.skipped {
            tracing::debug!(object = %s, "kind not handled; skipped");
        }
        status
            .manifest_errors
            .store(loaded.errors.len() as u64, Ordering::Relaxed);
        let snapshot = self.source.snapshot();
        let d = if self.adopt {
            self.model.rebuild(snapshot);
            let current = self.maps.read_state().context("reading the pinned maps")?;
            tracing::info!(
                frontends = current.frontends.len(),
                rings = current.rings.len(),
                "adopted pinned maps"
            );
            diff(&current, self.model.state())
        } else {
            self.model.update(snapshot, loaded.touched)
        };
        let writes = d.writes();
        apply(&d, &mut self.maps)?;
        self.adopt = false;
        // Each warning once, while it lasts.
        let now: BTreeSet<String> = self
            .model
            .warnings()
            .into_iter()
            .map(|w| format!("{}: {}", w.object, w.message))
            .collect();
        for w in now.difference(&self.warned) {
            tracing::warn!("{w}");
        }
        self.warned = now;
        let state = self.model.state();
        let took = started.elapsed();
        status.syncs.fetch_add(1, Ordering::Relaxed);
        status
            .map_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
        status
            .last_sync_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        status
            .frontends
            .store(state.frontends.len() as u64, Ordering::Relaxed);
        status
            .rings
            .store(state.rings.len() as u64, Ordering::Relaxed);
        status.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            frontends = state.frontends.len(),
            rings = state.rings.len(),
            writes,
            micros = took.as_micros() as u64,
            "synced"
        );
        Ok(())
    }
}
