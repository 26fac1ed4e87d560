//! `ingressd run`: attach, adopt the pinned maps, then keep them in step
//! with the manifest files.
use std::{
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
    model::{DesiredState, NodeContext, desired_state},
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
    let mut current = maps.read_state().context("reading the pinned maps")?;
    tracing::info!(
        frontends = current.frontends.len(),
        rings = current.rings.len(),
        "adopted pinned maps"
    );

    let status = Arc::new(Status::default());
    status.beat();
    let _server = metrics::serve(cfg.metrics_addr, status.clone(), cfg.pin_path.clone()).await?;

    let mut source = ManifestSource::new(cfg.manifests.clone());
    let mut first = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        status.beat();
        if first || source.changed() {
            match sync_once(&mut source, &node, &mut current, &mut maps, &status) {
                Ok(()) => first = false,
                Err(e) => {
                    status.sync_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %format!("{e:#}"), "sync failed; re-reading the maps and retrying");
                    if let Ok(s) = maps.read_state() {
                        current = s;
                    }
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

fn sync_once(
    source: &mut ManifestSource,
    node: &NodeContext,
    current: &mut DesiredState,
    maps: &mut LbMaps,
    status: &Status,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let loaded = source.load();
    for e in &loaded.errors {
        tracing::error!("{e}; its last good version stays in force");
    }
    for s in &loaded.skipped {
        tracing::debug!(object = %s, "kind not handled; skipped");
    }
    status
        .manifest_errors
        .store(loaded.errors.len() as u64, Ordering::Relaxed);
    let (desired, warnings) = desired_state(&loaded.snapshot, node);
    for w in &warnings {
        tracing::warn!(object = %w.object, "{}", w.message);
    }
    let d = diff(current, &desired);
    let writes = d.writes();
    apply(&d, maps)?;
    *current = desired;
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
        .store(current.frontends.len() as u64, Ordering::Relaxed);
    status
        .rings
        .store(current.rings.len() as u64, Ordering::Relaxed);
    status.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        frontends = current.frontends.len(),
        rings = current.rings.len(),
        writes,
        micros = took.as_micros() as u64,
        "synced"
    );
    Ok(())
}
