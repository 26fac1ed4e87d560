//! The model: `desired_state(snapshot, node)`, a pure function from the
//! cluster's objects to the L4 tables this node should hold, and [`Model`],
//! the same function kept up to date one Service at a time.
//!
//! Deterministic: sorted maps, IDs that are hashes of names, no clock, no I/O.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ingress_common::{
    BACKEND_F_REMOTE, BACKEND_F_TERMINATING, Backend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP,
    MAGLEV_RING_SIZE, SVC_F_AFFINITY_CLIENT_IP, SVC_F_LOCAL_ONLY, ServiceEntry,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    cluster::{ObjectKey, Snapshot},
    l4::{Diff, gone_endpoints},
};

/// What makes this node different from the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// Matched against `endpoints[].nodeName` to tell local from remote.
    pub name: String,
    /// Where NodePorts answer, and the SNAT address (the first one).
    pub addrs: Vec<Ipv4Addr>,
}

/// One Maglev ring: a service port's backend set as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSpec {
    /// `namespace/name:port/PROTO`, for humans.
    pub name: String,
    /// Sorted, without duplicates.
    pub backends: Vec<Backend>,
}

/// The L4 tables this node should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<FrontendKey, ServiceEntry>,
    pub rings: BTreeMap<u64, RingSpec>,
}

/// Something in the snapshot that was skipped, with the object and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelWarning {
    pub object: String,
    pub message: String,
}

/// The frontends and rings for every NodePort, LoadBalancer and externalIP
/// of every Service in the snapshot.
pub fn desired_state(snapshot: &Snapshot, node: &NodeContext) -> (DesiredState, Vec<ModelWarning>) {
    let mut model = Model::new(node.clone());
    model.rebuild(snapshot);
    let warnings = model.warnings();
    (model.state, warnings)
}

/// One Service's share of the desired state, computed from that Service
/// and its EndpointSlices alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contribution {
    pub rings: BTreeMap<u64, RingSpec>,
    pub frontends: Vec<(FrontendKey, ServiceEntry)>,
    pub warnings: Vec<ModelWarning>,
}

/// The model kept up to date one Service at a time, so that a change costs
/// work in proportion to what changed, not to the cluster's size. Its state
/// is always `desired_state` of the same snapshot (a test checks it).
///
/// When Services claim the same frontend, the first in namespace/name
/// order gets it and the others are reported.
pub struct Model {
    node: NodeContext,
    contributions: BTreeMap<ObjectKey, Contribution>,
    /// Which Services want each frontend.
    claims: BTreeMap<FrontendKey, BTreeSet<ObjectKey>>,
    /// How many frontends in `state` point at each ring, and whose it is.
    ring_refs: BTreeMap<u64, (usize, ObjectKey)>,
    state: DesiredState,
    /// The Service in front of the proxy (`--publish-service`): its
    /// LoadBalancer IPs are Ingress VIPs, which `sk_lookup` gives to this
    /// node's proxy, so they get no frontend here.
    proxy_service: Option<ObjectKey>,
}

impl Model {
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            contributions: BTreeMap::new(),
            claims: BTreeMap::new(),
            ring_refs: BTreeMap::new(),
            state: DesiredState::default(),
            proxy_service: None,
        }
    }

    /// Leaves the LoadBalancer IPs of `service` to the proxy (see
    /// `proxy_service`).
    pub fn with_proxy_service(mut self, service: Option<ObjectKey>) -> Self {
        self.proxy_service = service;
        self
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// Recomputes every Service (start-up, or after a lost sync).
    pub fn rebuild(&mut self, snapshot: &Snapshot) -> Diff {
        let all: BTreeSet<ObjectKey> = snapshot
            .services
            .keys()
            .chain(self.contributions.keys())
            .cloned()
            .collect();
        self.update(snapshot, all)
    }

    /// Recomputes the given Services and returns the map writes that take
    /// the previous state to the new one.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        services: impl IntoIterator<Item = ObjectKey>,
    ) -> Diff {
        let mut dirty_frontends = BTreeSet::new();
        let mut dirty_rings = BTreeSet::new();
        for key in services {
            let lb_to_proxy = self.proxy_service.as_ref() == Some(&key);
            let new = snapshot.services.get(&key).map(|svc| {
                let slices = snapshot.slices_of(&key);
                service_contribution(&key.0, &key.1, svc, &slices, &self.node, lb_to_proxy)
            });
            let old = self.contributions.remove(&key);
            for (f, _) in old.iter().flat_map(|c| &c.frontends) {
                if let Some(set) = self.claims.get_mut(f) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.claims.remove(f);
                    }
                }
                dirty_frontends.insert(*f);
            }
            dirty_rings.extend(old.iter().flat_map(|c| c.rings.keys().copied()));
            if let Some(new) = new {
                for (f, _) in &new.frontends {
                    self.claims.entry(*f).or_default().insert(key.clone());
                    dirty_frontends.insert(*f);
                }
                dirty_rings.extend(new.rings.keys().copied());
                self.contributions.insert(key, new);
            }
        }
        let mut d = Diff::default();
        for f in dirty_frontends {
            let winner = self.claims.get(&f).and_then(|s| s.first()).cloned();
            let want = winner.and_then(|w| {
                let entry = self
                    .contributions
                    .get(&w)?
                    .frontends
                    .iter()
                    .find(|(k, _)| *k == f)?
                    .1;
                Some((entry, w))
            });
            let have = self.state.frontends.get(&f).copied();
            if want.as_ref().map(|(e, _)| *e) == have {
                if let Some((e, owner)) = want {
                    // Same entry, maybe a new owner (the old one went away).
                    if let Some(r) = self.ring_refs.get_mut(&e.ring_id) {
                        r.1 = owner;
                    }
                    dirty_rings.insert(e.ring_id);
                }
                continue;
            }
            if let Some(h) = have {
                if let Some(r) = self.ring_refs.get_mut(&h.ring_id) {
                    r.0 -= 1;
                }
                dirty_rings.insert(h.ring_id);
            }
            match want {
                Some((entry, owner)) => {
                    let r = self
                        .ring_refs
                        .entry(entry.ring_id)
                        .or_insert((0, owner.clone()));
                    r.0 += 1;
                    r.1 = owner;
                    dirty_rings.insert(entry.ring_id);
                    self.state.frontends.insert(f, entry);
                    d.frontend_upserts.push((f, entry));
                }
                None => {
                    self.state.frontends.remove(&f);
                    d.frontend_deletes.push(f);
                }
            }
        }
        let mut gone: Vec<Backend> = Vec::new();
        for id in dirty_rings {
            let want = match self.ring_refs.get(&id) {
                Some((n, owner)) if *n > 0 => self
                    .contributions
                    .get(owner)
                    .and_then(|c| c.rings.get(&id))
                    .cloned(),
                _ => {
                    self.ring_refs.remove(&id);
                    None
                }
            };
            match want {
                Some(spec) => {
                    if let Some(old) = self.state.rings.get(&id) {
                        if *old == spec {
                            continue;
                        }
                        gone.extend(old.backends.iter().copied());
                    }
                    self.state.rings.insert(id, spec.clone());
                    d.ring_upserts.push((id, spec));
                }
                None => {
                    if let Some(old) = self.state.rings.remove(&id) {
                        gone.extend(old.backends);
                        d.ring_deletes.push(id);
                    }
                }
            }
        }
        // Gone means in no ring any more, not just out of the changed ones.
        let candidates =
            gone_endpoints(&gone, d.ring_upserts.iter().flat_map(|(_, r)| &r.backends));
        if !candidates.is_empty() {
            let still: BTreeSet<(u32, u16)> = self
                .state
                .rings
                .values()
                .flat_map(|r| &r.backends)
                .map(|b| (b.addr, b.port))
                .filter(|k| candidates.contains(k))
                .collect();
            d.gone_endpoints = candidates.difference(&still).copied().collect();
        }
        d
    }

    /// Every Service's own warnings, then the frontend conflicts.
    pub fn warnings(&self) -> Vec<ModelWarning> {
        let mut out: Vec<ModelWarning> = self
            .contributions
            .values()
            .flat_map(|c| c.warnings.iter().cloned())
            .collect();
        for (f, claimants) in &self.claims {
            let owner = self
                .state
                .frontends
                .get(f)
                .and_then(|e| self.state.rings.get(&e.ring_id))
                .map(|r| r.name.clone())
                .unwrap_or_default();
            for loser in claimants.iter().skip(1) {
                out.push(ModelWarning {
                    object: format!("Service {}/{}", loser.0, loser.1),
                    message: format!(
                        "frontend {} already belongs to {owner}; skipped",
                        show_frontend(f)
                    ),
                });
            }
        }
        out
    }
}

fn proto_number(proto: Option<&str>) -> Option<u8> {
    match proto.unwrap_or("TCP") {
        "TCP" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// FNV-1a, 64 bits: a stable ring ID from a ring's name (namespace, name,
/// port, protocol), so every node and every restart agree on it.
pub fn ring_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `status.loadBalancer.ingress[].ip` of a LoadBalancer Service (IPv4;
/// host names are for DNS, not for frontends).
pub fn load_balancer_ips(svc: &Service) -> Vec<Ipv4Addr> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return Vec::new();
    }
    let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    lb.and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ing| ing.ip.as_deref()?.parse().ok())
        .collect()
}

/// One Service's frontends and rings (pure). `lb_to_proxy`: its
/// LoadBalancer IPs are the proxy's (see `Model::proxy_service`).
pub fn service_contribution(
    ns: &str,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
    lb_to_proxy: bool,
) -> Contribution {
    let mut out = Contribution::default();
    let Some(spec) = &svc.spec else { return out };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return out;
    }
    let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
    let mut flags = 0;
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        flags |= SVC_F_AFFINITY_CLIENT_IP;
    }
    if local_only {
        flags |= SVC_F_LOCAL_ONLY;
    }
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        if let Ok(ip) = ip.parse() {
            vips.push(ip);
        }
    }
    if !lb_to_proxy {
        vips.extend(load_balancer_ips(svc));
    }
    vips.sort();
    vips.dedup();
    let object = format!("Service {ns}/{name}");
    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto_number(port.protocol.as_deref()) else {
            out.warnings.push(ModelWarning {
                object: object.clone(),
                message: format!(
                    "port {}: protocol {:?} is not handled (TCP and UDP are)",
                    port.port, port.protocol
                ),
            });
            continue;
        };
        let node_port = match ty {
            "NodePort" | "LoadBalancer" => port.node_port.filter(|p| (1..=65535).contains(p)),
            _ => None,
        };
        if node_port.is_none() && vips.is_empty() {
            continue;
        }
        let port_label = port
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| port.port.to_string());
        let proto_label = if proto == IPPROTO_TCP { "TCP" } else { "UDP" };
        let ring_name = format!("{ns}/{name}:{port_label}/{proto_label}");
        let id = ring_id(&ring_name);
        let mut backends = backends_for(
            slices,
            port.name.as_deref().unwrap_or(""),
            proto_label,
            node,
            local_only,
        );
        if backends.len() > MAGLEV_RING_SIZE {
            out.warnings.push(ModelWarning {
                object: object.clone(),
                message: format!(
                    "{} endpoints, only the first {MAGLEV_RING_SIZE} are used",
                    backends.len()
                ),
            });
            backends.truncate(MAGLEV_RING_SIZE);
        }
        out.rings.insert(
            id,
            RingSpec {
                name: ring_name,
                backends,
            },
        );
        let entry = ServiceEntry {
            ring_id: id,
            flags,
            pad: 0,
        };
        if let Some(np) = node_port {
            out.frontends.push((
                FrontendKey {
                    addr: 0,
                    port: (np as u16).to_be(),
                    proto,
                    pad: 0,
                },
                entry,
            ));
        }
        for vip in &vips {
            let key = FrontendKey {
                addr: u32::from(*vip).to_be(),
                port: (port.port as u16).to_be(),
                proto,
                pad: 0,
            };
            out.frontends.push((key, entry));
        }
    }
    out
}

/// Ready endpoints, or serving-but-terminating ones when no ready one is
/// left (as kube-proxy does), IPv4 only, deduplicated and sorted.
fn backends_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: &str,
    node: &NodeContext,
    local_only: bool,
) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(target_port) = target.port.filter(|p| (1..=65535).contains(p)) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let local =
                ep.node_name.as_deref() == Some(node.name.as_str()) && !node.name.is_empty();
            if local_only && !local {
                continue;
            }
            let mut flags = if local { 0 } else { BACKEND_F_REMOTE };
            let set = if is_ready {
                &mut ready
            } else if is_serving && is_terminating {
                flags |= BACKEND_F_TERMINATING;
                &mut terminating
            } else {
                continue;
            };
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                    set.insert(Backend {
                        addr: u32::from(ip).to_be(),
                        port: (target_port as u16).to_be(),
                        flags,
                        pad: 0,
                    });
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

pub fn show_frontend(key: &FrontendKey) -> String {
    let proto = match key.proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        _ => "?",
    };
    let port = u16::from_be(key.port);
    if key.addr == 0 {
        format!("*:{port}/{proto} (NodePort)")
    } else {
        format!("{}:{port}/{proto}", Ipv4Addr::from(u32::from_be(key.addr)))
    }
}

pub fn show_backend(b: &Backend) -> String {
    let mut s = format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(b.addr)),
        u16::from_be(b.port)
    );
    if b.flags & BACKEND_F_REMOTE != 0 {
        s.push_str(" remote");
    } else {
        s.push_str(" local");
    }
    if b.flags & BACKEND_F_TERMINATING != 0 {
        s.push_str(" terminating");
    }
    s
}
