//! The model: `desired_state(snapshot, node)`, a pure function from the
//! cluster's objects to the L4 tables this node should hold.
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

use crate::manifest::Snapshot;

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
    let mut state = DesiredState::default();
    let mut warnings = Vec::new();
    let slices = slices_by_service(snapshot);
    for ((ns, name), svc) in &snapshot.services {
        let empty = Vec::new();
        let svc_slices = slices.get(&(ns.clone(), name.clone())).unwrap_or(&empty);
        add_service(&mut state, &mut warnings, ns, name, svc, svc_slices, node);
    }
    // A ring nobody points at (all its frontends taken by others) is dead weight.
    let used: BTreeSet<u64> = state.frontends.values().map(|e| e.ring_id).collect();
    state.rings.retain(|id, _| used.contains(id));
    (state, warnings)
}

fn slices_by_service(snapshot: &Snapshot) -> BTreeMap<(String, String), Vec<&EndpointSlice>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for ((ns, _), slice) in &snapshot.endpoint_slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if let Some(owner) = owner {
            out.entry((ns.clone(), owner.clone()))
                .or_default()
                .push(slice);
        }
    }
    out
}

fn proto_number(proto: Option<&str>) -> Option<u8> {
    match proto.unwrap_or("TCP") {
        "TCP" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// FNV-1a, 64 bits: a stable ring ID from a ring's name.
pub fn ring_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn add_service(
    state: &mut DesiredState,
    warnings: &mut Vec<ModelWarning>,
    ns: &str,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) {
    let Some(spec) = &svc.spec else { return };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return;
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
    if ty == "LoadBalancer" {
        let lb = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
        for ing in lb.and_then(|l| l.ingress.as_ref()).into_iter().flatten() {
            if let Some(ip) = ing.ip.as_deref().and_then(|ip| ip.parse().ok()) {
                vips.push(ip);
            }
        }
    }
    vips.sort();
    vips.dedup();
    for port in spec.ports.iter().flatten() {
        let object = format!("Service {ns}/{name}");
        let Some(proto) = proto_number(port.protocol.as_deref()) else {
            warnings.push(ModelWarning {
                object,
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
            warnings.push(ModelWarning {
                object: object.clone(),
                message: format!(
                    "{} endpoints, only the first {MAGLEV_RING_SIZE} are used",
                    backends.len()
                ),
            });
            backends.truncate(MAGLEV_RING_SIZE);
        }
        if let Some(existing) = state.rings.get(&id) {
            if existing.name != ring_name {
                warnings.push(ModelWarning {
                    object,
                    message: format!("ring id collides with {}; port skipped", existing.name),
                });
                continue;
            }
        }
        state.rings.insert(
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
        let mut add = |addr: u32, port: u16| {
            let key = FrontendKey {
                addr,
                port: port.to_be(),
                proto,
                pad: 0,
            };
            if let Some(other) = state.frontends.get(&key) {
                if other.ring_id != id {
                    let owner = state
                        .rings
                        .get(&other.ring_id)
                        .map(|r| r.name.clone())
                        .unwrap_or_default();
                    warnings.push(ModelWarning {
                        object: object.clone(),
                        message: format!(
                            "frontend {} already belongs to {owner}; skipped",
                            show_frontend(&key)
                        ),
                    });
                    return;
                }
            }
            state.frontends.insert(key, entry);
        };
        if let Some(np) = node_port {
            add(0, np as u16);
        }
        for vip in &vips {
            add(u32::from(*vip).to_be(), port.port as u16);
        }
    }
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
