//! One turn of the loop: the snapshot made real in the maps, the route
//! table and the steered VIPs.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    cluster::{ClassConfig, ObjectKey, Snapshot, gateway::our_gateways},
    daemon::{health::HealthServers, metrics::Status},
    kernel::{self, LbMaps},
    l4::{
        all_members, apply, diff,
        health::{health_checks, node_eligible},
        model::{Model, load_balancer_ips},
    },
    l7::{
        Proxy,
        route::{Patterns, RouteWarning, compile_with},
        tls::CertStore,
    },
};

/// The L7 part: the proxy and its certificates.
pub(super) struct L7 {
    pub(super) proxy: Arc<Proxy>,
    pub(super) certs: Arc<CertStore>,
    /// Served when nothing else matches and no default Secret is usable.
    pub(super) fallback: Arc<rustls::sign::CertifiedKey>,
    pub(super) default_secret: Option<ObjectKey>,
    /// The proxy's ports until the first sync opens them.
    pub(super) ports: Option<super::ports::ProxyPorts>,
}

/// The L4 part: the model, the maps it keeps in step, and the health
/// servers it feeds.
pub(super) struct L4 {
    pub(super) model: Model,
    pub(super) maps: LbMaps,
    pub(super) health: HealthServers,
    /// Diff against what the maps really hold (start-up, after a failed
    /// write) instead of against the model's last state.
    pub(super) adopt: bool,
}

/// The Ingress VIPs `sk_lookup` steers to the proxy: `--ingress-vip` and
/// the LoadBalancer IPs of `--publish-service`, kept as that Service changes.
pub(super) struct VipSteering {
    pub(super) pin_path: PathBuf,
    pub(super) fixed: Vec<Ipv4Addr>,
    pub(super) service: Option<ObjectKey>,
    /// Our Gateways' `spec.addresses` are steered too.
    pub(super) gateway_controller: String,
    /// What the map holds (None before the first write).
    pub(super) current: Option<Vec<Ipv4Addr>>,
}

impl VipSteering {
    pub(super) fn wanted(&self, snapshot: Option<&Snapshot>) -> Vec<Ipv4Addr> {
        let own = self
            .service
            .as_ref()
            .zip(snapshot)
            .and_then(|(key, snap)| snap.services.get(key));
        let mut vips = self.fixed.clone();
        vips.extend(own.map(load_balancer_ips).unwrap_or_default());
        if let Some(snap) = snapshot {
            vips.extend(
                our_gateways(snap, &self.gateway_controller)
                    .flat_map(|(_, gw)| gw.ipv4_addresses()),
            );
        }
        vips.sort();
        vips.dedup();
        vips
    }

    pub(super) fn set(&mut self, vips: Vec<Ipv4Addr>) -> anyhow::Result<()> {
        if self.current.as_ref() == Some(&vips) {
            return Ok(());
        }
        kernel::set_ingress_vips(&self.pin_path, &vips).context("steering the Ingress VIPs")?;
        if !vips.is_empty() || self.current.is_some() {
            tracing::info!(vips = ?vips, "steering Ingress VIPs to the proxy");
        }
        self.current = Some(vips);
        Ok(())
    }
}

/// The sync loop's state: what it keeps in step with the source.
pub(super) struct Syncer {
    pub(super) l4: Option<L4>,
    pub(super) l7: Option<L7>,
    pub(super) vips: Option<VipSteering>,
    pub(super) class: ClassConfig,
    /// Path patterns compiled by earlier syncs (each once per change).
    pub(super) patterns: Patterns,
    pub(super) warned: BTreeSet<String>,
    /// What the last sync found wrong with Ingresses (Events tell them).
    pub(super) route_warnings: Vec<RouteWarning>,
}

impl Syncer {
    pub(super) fn sync_once(
        &mut self,
        snapshot: &Snapshot,
        touched: BTreeSet<ObjectKey>,
        status: &Status,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut warnings = BTreeSet::new();
        let mut writes = 0;
        if let Some(l4) = &mut self.l4 {
            let d = if l4.adopt {
                l4.model.set_routes(kernel::main_routes());
                l4.model.rebuild(snapshot);
                let current = l4.maps.read_state().context("reading the pinned maps")?;
                tracing::info!(
                    frontends = current.frontends.len(),
                    rings = current.rings.len(),
                    "adopted pinned maps"
                );
                let mut d = diff(&current, l4.model.state());
                // The ring members as they are, not as the rings imply: an
                // older version wrote none, a failed write may have left some.
                let have = l4.maps.members().context("reading the ring members")?;
                let want = all_members(l4.model.state());
                d.joined = want
                    .iter()
                    .filter(|(m, f)| have.get(m) != Some(f))
                    .map(|(m, f)| (*m, *f))
                    .collect();
                d.stale_members = have
                    .keys()
                    .filter(|m| !want.contains_key(m))
                    .copied()
                    .collect();
                d
            } else {
                // Endpoints without nodeName are placed by the routes,
                // which change without the cluster saying so.
                let mut touched = touched;
                touched.extend(l4.model.set_routes(kernel::main_routes()));
                l4.model.update(snapshot, touched)
            };
            writes = d.writes();
            apply(&d, &mut l4.maps)?;
            l4.adopt = false;
            warnings.extend(
                l4.model
                    .warnings()
                    .into_iter()
                    .map(|w| format!("{}: {}", w.object, w.message)),
            );
            let (checks, check_warnings) = health_checks(snapshot, l4.model.node());
            warnings.extend(
                check_warnings
                    .into_iter()
                    .map(|w| format!("{}: {}", w.object, w.message)),
            );
            l4.health.set(checks);
            let this_node = snapshot
                .nodes
                .get(&ObjectKey::new("", l4.model.node().name.clone()));
            l4.health
                .proxy()
                .set_node_eligible(node_eligible(this_node));
            let state = l4.model.state();
            status
                .frontends
                .store(state.frontends.len() as u64, Ordering::Relaxed);
            status
                .rings
                .store(state.rings.len() as u64, Ordering::Relaxed);
        }
        let mut rules = 0;
        if let Some(l7) = self.l7.as_mut() {
            let (table, mut route_warnings) =
                compile_with(snapshot, &self.class, &mut self.patterns);
            rules = table.len();
            // Certificates first: a route to a TLS host never waits for its certificate.
            let cert_warnings =
                l7.certs
                    .update(snapshot, &table, l7.default_secret.as_ref(), &l7.fallback);
            route_warnings.extend(cert_warnings);
            warnings.extend(route_warnings.iter().map(ToString::to_string));
            self.route_warnings = route_warnings;
            l7.proxy.swap_routes(table);
            // Routes in: the ports open (an upgrade's switch).
            if let Some(ports) = l7.ports.take() {
                ports.open(&l7.proxy)?;
            }
        }
        if let Some(vips) = &mut self.vips {
            vips.set(vips.wanted(Some(snapshot)))?;
        }
        // Each warning once, while it lasts.
        for w in warnings.difference(&self.warned) {
            tracing::warn!("{w}");
        }
        if let Ok(mut p) = status.problems.lock() {
            *p = warnings.iter().cloned().collect();
        }
        status.route_rules.store(rules as u64, Ordering::Relaxed);
        self.warned = warnings;
        let took = started.elapsed();
        status.syncs.fetch_add(1, Ordering::Relaxed);
        status
            .map_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
        status
            .last_sync_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        status.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            writes,
            route_rules = rules,
            micros = took.as_micros() as u64,
            "synced"
        );
        Ok(())
    }
}

/// What a failed sync leads to (the loop's error policy, apart from the
/// sync itself as controller-rs keeps its `error_policy`): counted and
/// logged, the maps re-read rather than trusted (a write may have half
/// happened), and a retry on the next turn whether or not anything
/// changes. Returns whether the next turn must sync.
pub(super) fn error_policy(e: &anyhow::Error, syncer: &mut Syncer, status: &Status) -> bool {
    status.sync_errors.fetch_add(1, Ordering::Relaxed);
    if let Some(l4) = &mut syncer.l4 {
        l4.adopt = true;
    }
    tracing::error!(error = %format!("{e:#}"), "sync failed; will re-read the maps and retry");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::snapshot_of;

    #[test]
    fn gateways_of_ours_have_their_addresses_steered() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ebpf}\nspec: {controllerName: ingress-ebpf/gateway-controller}\n\
            ---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: other}\nspec: {controllerName: example.com/other}\n\
            ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a, namespace: n}\n\
            spec: {gatewayClassName: ebpf, listeners: [{name: http, port: 80, protocol: HTTP}], addresses: [{value: 198.18.9.1}, {type: Hostname, value: x.example.com}, {type: IPAddress, value: 198.18.9.2}]}\n\
            ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: b, namespace: n}\n\
            spec: {gatewayClassName: other, listeners: [{name: http, port: 80, protocol: HTTP}], addresses: [{value: 198.18.9.3}]}\n";
        let snapshot = snapshot_of(yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let steering = VipSteering {
            pin_path: PathBuf::new(),
            fixed: vec![Ipv4Addr::new(198, 18, 9, 9)],
            service: None,
            gateway_controller: "ingress-ebpf/gateway-controller".into(),
            current: None,
        };
        assert_eq!(
            steering.wanted(Some(&snapshot)),
            [[198, 18, 9, 1], [198, 18, 9, 2], [198, 18, 9, 9]].map(Ipv4Addr::from)
        );
        assert_eq!(steering.wanted(None), [Ipv4Addr::new(198, 18, 9, 9)]);
    }
}
