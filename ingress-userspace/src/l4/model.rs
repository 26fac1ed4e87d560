//! The model: `desired_state(snapshot, node)`, a pure function from the
//! cluster's objects to the L4 tables this node should hold, and [`Model`],
//! the same function kept up to date one Service at a time.
//!
//! Deterministic: sorted maps, IDs that are hashes of names, no clock, no I/O.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ingress_common::{
    BACKEND_F_REMOTE, BACKEND_F_TERMINATING, Backend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP,
    MAGLEV_RING_SIZE, RING_F_DROP_IF_EMPTY, Ring, SCOPE_ALL, SCOPE_IN_CLUSTER,
    SVC_F_AFFINITY_CLIENT_IP, SVC_F_EXTERNAL, SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES, ServiceEntry,
};
use k8s_openapi::api::{
    core::v1::{Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use crate::{
    cluster::{Endpoint, ObjectKey, PortRef, Snapshot, usable_endpoints},
    l4::{Diff, SourceRange, joined_ring, left_ring, maglev::build_ring, range_change},
};

/// What makes this node different from the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// Matched against `endpoints[].nodeName` to tell local from remote.
    pub name: String,
    /// Where NodePorts answer, and the SNAT address (the first one).
    pub addrs: Vec<Ipv4Addr>,
    /// What this daemon was asked to serve.
    pub serve: ServeConfig,
    /// The main routing table and the data path's interfaces: where an
    /// endpoint without `nodeName` lives.
    pub routes: Vec<Route>,
    pub interfaces: Vec<String>,
}

/// A route of the node's main table, as `/proc/net/route` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    pub metric: u32,
}

impl NodeContext {
    /// Whether an endpoint lives on this node: its `nodeName` says so or,
    /// without one (selector-less Services, hand-written EndpointSlices),
    /// it is one of the node's addresses or reached by a route of the node's
    /// own (directly, not through a gateway, and not out of the data path's
    /// interfaces): a pod behind a local bridge or veth.
    pub fn is_local(&self, e: &Endpoint<'_>) -> bool {
        match e.node_name {
            Some(n) => !self.name.is_empty() && n == self.name,
            None => match e.addr {
                IpAddr::V4(ip) => self.addrs.contains(&ip) || self.routes_locally(ip),
                IpAddr::V6(_) => false,
            },
        }
    }

    fn routes_locally(&self, ip: Ipv4Addr) -> bool {
        let matches = |r: &&Route| {
            let mask = if r.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(r.prefix.min(32)))
            };
            u32::from(ip) & mask == u32::from(r.dest) & mask
        };
        let best = self
            .routes
            .iter()
            .filter(matches)
            .max_by(|a, b| a.prefix.cmp(&b.prefix).then(b.metric.cmp(&a.metric)));
        best.is_some_and(|r| {
            r.gateway.is_none() && r.dev != "lo" && !self.interfaces.contains(&r.dev)
        })
    }
}

/// Which Services and frontends this daemon serves (its flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Cluster IPs get frontends (`--socket-lb`, on by default: the
    /// socket-level programs are what serves them).
    pub cluster_ip: bool,
    /// `--service-proxy-name`: serve only Services labelled with it;
    /// without one, only Services without the label.
    pub proxy_name: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            cluster_ip: true,
            proxy_name: None,
        }
    }
}

/// One Maglev ring: a service port's backend set as seen from this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingSpec {
    /// `namespace/name:port/PROTO` (`… local` for this node's endpoints
    /// only), for humans.
    pub name: String,
    /// Sorted, without duplicates.
    pub backends: Vec<Backend>,
    /// Empty, it drops instead of refusing (`RING_F_DROP_IF_EMPTY`).
    pub drop_when_empty: bool,
    /// `loadBalancerSourceRanges` (masked, sorted): the only sources its
    /// frontends flagged `SVC_F_SOURCE_RANGES` take.
    pub source_ranges: Vec<SourceRange>,
}

impl RingSpec {
    /// The map value: the Maglev table and the flags.
    pub fn to_ring(&self) -> Box<Ring> {
        let mut ring = build_ring(&self.backends);
        if self.drop_when_empty {
            ring.flags |= RING_F_DROP_IF_EMPTY;
        }
        ring
    }
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
    /// Some endpoint has no `nodeName`: locality came from the routes.
    pub uses_routes: bool,
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

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// New routes: the Services whose endpoints' locality came from them
    /// are the ones to update.
    pub fn set_routes(&mut self, routes: Vec<Route>) -> Vec<ObjectKey> {
        if self.node.routes == routes {
            return Vec::new();
        }
        self.node.routes = routes;
        self.contributions
            .iter()
            .filter(|(_, c)| c.uses_routes)
            .map(|(k, _)| k.clone())
            .collect()
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
                service_contribution(
                    &key.namespace,
                    &key.name,
                    svc,
                    &slices,
                    &self.node,
                    lb_to_proxy,
                )
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
                    let old_ranges = match self.state.rings.get(&id) {
                        Some(old) if *old == spec => continue,
                        Some(old) => {
                            d.left.extend(left_ring(id, &old.backends, &spec.backends));
                            d.joined
                                .extend(joined_ring(id, &old.backends, &spec.backends));
                            old.source_ranges.clone()
                        }
                        None => {
                            d.joined.extend(joined_ring(id, &[], &spec.backends));
                            Vec::new()
                        }
                    };
                    d.source_ranges
                        .extend(range_change(id, &old_ranges, &spec.source_ranges));
                    self.state.rings.insert(id, spec.clone());
                    d.ring_upserts.push((id, spec));
                }
                None => {
                    if let Some(old) = self.state.rings.remove(&id) {
                        d.left.extend(left_ring(id, &old.backends, &[]));
                        d.source_ranges
                            .extend(range_change(id, &old.source_ranges, &[]));
                        d.ring_deletes.push(id);
                    }
                }
            }
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
                    object: format!("Service {}/{}", loser.namespace, loser.name),
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

/// Label naming the proxy that serves a Service (kube-proxy serves only
/// Services without it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label that takes a Service away from every proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The API server's upper bound for it (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Whether this daemon serves `svc` at all: not labelled headless, and
/// labelled with our `--service-proxy-name` (or, without one, unlabelled).
pub fn is_served(svc: &Service, serve: &ServeConfig) -> bool {
    let labels = svc.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k));
    if label(HEADLESS_LABEL).is_some() {
        return false;
    }
    label(SERVICE_PROXY_NAME_LABEL).map(String::as_str) == serve.proxy_name.as_deref()
}

/// The IPv4 cluster IPs of a Service (`clusterIPs`, else `clusterIP`);
/// none for a headless one (`None`).
pub fn cluster_ips(spec: &ServiceSpec) -> Vec<Ipv4Addr> {
    let listed = spec.cluster_ips.iter().flatten();
    let single = spec.cluster_ip.iter();
    let mut ips: Vec<Ipv4Addr> = if spec.cluster_ips.as_ref().is_some_and(|v| !v.is_empty()) {
        listed.filter_map(|ip| ip.parse().ok()).collect()
    } else {
        single.filter_map(|ip| ip.parse().ok()).collect()
    };
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    ips
}

/// The annotation kube-proxy reads when `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `loadBalancerSourceRanges` (or its annotation): None when unrestricted,
/// else the IPv4 ranges, masked and sorted, and a warning per invalid entry.
/// IPv6 ranges restrict too (an IPv4 client is then refused).
fn source_ranges(svc: &Service, spec: &ServiceSpec) -> (Option<Vec<SourceRange>>, Vec<String>) {
    let field: Vec<String> = spec.load_balancer_source_ranges.clone().unwrap_or_default();
    let (entries, name): (Vec<String>, &str) = if !field.is_empty() {
        (field, "field spec.loadBalancerSourceRanges")
    } else {
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION));
        match annotation {
            Some(v) if !v.trim().is_empty() => (
                v.split(',').map(|s| s.trim().to_string()).collect(),
                "annotation service.beta.kubernetes.io/load-balancer-source-ranges",
            ),
            _ => return (None, Vec::new()),
        }
    };
    let mut ranges = Vec::new();
    let mut warnings = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match parse_cidr(e) {
            Some(Some(r)) => ranges.push(r),
            Some(None) => {}
            None => warnings.push(format!(
                "{name}[{i}]: {e:?} is not a CIDR like 198.51.100.0/24; skipped"
            )),
        }
    }
    if ranges.is_empty() && warnings.len() == entries.len() {
        warnings.push(format!(
            "{name}: no valid range, so no source may use the LoadBalancer IPs"
        ));
    }
    ranges.sort();
    ranges.dedup();
    (Some(ranges), warnings)
}

/// `a.b.c.d/n`, masked: Some(Some) for IPv4, Some(None) for a valid IPv6
/// range, None when malformed.
fn parse_cidr(s: &str) -> Option<Option<SourceRange>> {
    let (addr, len) = s.trim().split_once('/')?;
    let len: u8 = len.parse().ok()?;
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return (len <= 128).then_some(None);
    }
    let v4: Ipv4Addr = addr.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(Some((Ipv4Addr::from(u32::from(v4) & mask), len)))
}

/// `sessionAffinity: ClientIP`'s timeout, or an error naming the field.
fn affinity_timeout(spec: &ServiceSpec) -> Result<Option<u32>, String> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Ok(None);
    }
    let set = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match set {
        None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT as i32).contains(&t) => Ok(Some(t as u32)),
        Some(t) => Err(format!(
            "field spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1-{MAX_AFFINITY_TIMEOUT}; the default {DEFAULT_AFFINITY_TIMEOUT} is used"
        )),
    }
}

/// One Service's frontends and rings (pure). `lb_to_proxy`: its
/// LoadBalancer IPs are the proxy's (see `Model::proxy_service`).
///
/// Each port gets up to two rings: every usable endpoint, and this node's
/// only. External frontends (NodePort, LoadBalancer IPs, externalIPs) use
/// the local one under `externalTrafficPolicy: Local`, cluster IPs under
/// `internalTrafficPolicy: Local`.
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
    if !is_served(svc, &node.serve) {
        return out;
    }
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return out;
    }
    out.uses_routes = slices
        .iter()
        .any(|s| s.endpoints.iter().any(|e| e.node_name.is_none()));
    let object = format!("Service {ns}/{name}");
    let warn = |out: &mut Contribution, message: String| {
        out.warnings.push(ModelWarning {
            object: object.clone(),
            message,
        })
    };
    if !spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .any(|ip| ip.parse::<Ipv4Addr>().is_ok())
        && spec.ip_families.iter().flatten().any(|f| f == "IPv6")
        && !spec.ip_families.iter().flatten().any(|f| f == "IPv4")
    {
        warn(
            &mut out,
            "field spec.ipFamilies: IPv6 only; IPv6 is not served (IPv4 only)".into(),
        );
    }
    if let Some(d) = spec.traffic_distribution.as_deref() {
        warn(
            &mut out,
            format!(
                "field spec.trafficDistribution: {d:?} is not honoured; endpoints are chosen from all zones"
            ),
        );
    }
    let (ranges, range_warnings) = if ty == "LoadBalancer" {
        source_ranges(svc, spec)
    } else {
        (None, Vec::new())
    };
    for w in range_warnings {
        warn(&mut out, w);
    }
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let mut flags = 0;
    let timeout = affinity_timeout(spec).unwrap_or_else(|e| {
        warn(&mut out, e);
        Some(DEFAULT_AFFINITY_TIMEOUT)
    });
    if timeout.is_some() {
        flags |= SVC_F_AFFINITY_CLIENT_IP;
    }
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        if let Ok(ip) = ip.parse() {
            vips.push(ip);
        }
    }
    let lb_ips = if lb_to_proxy {
        Vec::new()
    } else {
        load_balancer_ips(svc)
    };
    vips.extend(lb_ips.iter().copied());
    vips.sort();
    vips.dedup();
    let cluster = if node.serve.cluster_ip {
        cluster_ips(spec)
    } else {
        Vec::new()
    };
    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto_number(port.protocol.as_deref()) else {
            warn(
                &mut out,
                format!(
                    "port {}: protocol {:?} is not handled (TCP and UDP are)",
                    port.port, port.protocol
                ),
            );
            continue;
        };
        let Some(service_port) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            continue;
        };
        let node_port = match ty {
            "NodePort" | "LoadBalancer" => port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
            _ => None,
        };
        let external = node_port.is_some() || !vips.is_empty();
        if !external && cluster.is_empty() {
            continue;
        }
        let port_label = port
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| port.port.to_string());
        let proto_label = if proto == IPPROTO_TCP { "TCP" } else { "UDP" };
        let base = format!("{ns}/{name}:{port_label}/{proto_label}");
        let port_ref = PortRef {
            name: port.name.as_deref().unwrap_or(""),
            protocol: proto_label,
        };
        let everywhere = backends_for(slices, port_ref, node, false);
        let ring_for = |local: bool, out: &mut Contribution| -> u64 {
            let (ring_name, backends) = if local {
                let here = backends_for(slices, port_ref, node, true);
                (format!("{base} local"), here)
            } else {
                (base.clone(), everywhere.clone())
            };
            let id = ring_id(&ring_name);
            if !out.rings.contains_key(&id) {
                let mut backends = backends;
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
                // No endpoint here but some elsewhere: kube-proxy drops
                // (it refuses only when there are none at all).
                let drop_when_empty = local && backends.is_empty() && !everywhere.is_empty();
                out.rings.insert(
                    id,
                    RingSpec {
                        name: ring_name,
                        backends,
                        drop_when_empty,
                        source_ranges: Vec::new(),
                    },
                );
            }
            id
        };
        let entry = |ring_id: u64, local: bool| ServiceEntry {
            ring_id,
            flags: flags | if local { SVC_F_LOCAL_ONLY } else { 0 },
            affinity_timeout: timeout.unwrap_or(0),
        };
        if external {
            let ring = ring_for(external_local, &mut out);
            let mut e = entry(ring, external_local);
            e.flags |= SVC_F_EXTERNAL;
            if let (Some(r), Some(spec)) = (&ranges, out.rings.get_mut(&ring)) {
                spec.source_ranges = r.clone();
            }
            // Under a Local policy, callers inside the cluster (the socket
            // programs) get every endpoint, as kube-proxy short-circuits pod
            // and node traffic to the Service's cluster-wide chain.
            let inside = external_local.then(|| {
                let mut i = entry(ring_for(false, &mut out), false);
                i.flags |= SVC_F_EXTERNAL;
                i
            });
            let push = |out: &mut Contribution, key: FrontendKey, e: ServiceEntry| {
                out.frontends.push((key, e));
                if let Some(i) = inside {
                    let key = FrontendKey {
                        scope: SCOPE_IN_CLUSTER,
                        ..key
                    };
                    out.frontends.push((key, i));
                }
            };
            if let Some(np) = node_port {
                push(
                    &mut out,
                    FrontendKey {
                        addr: 0,
                        port: np.to_be(),
                        proto,
                        scope: SCOPE_ALL,
                    },
                    e,
                );
            }
            for vip in &vips {
                let key = FrontendKey {
                    addr: u32::from(*vip).to_be(),
                    port: service_port.to_be(),
                    proto,
                    scope: 0,
                };
                // The ranges guard the LoadBalancer IPs only (kube-proxy's
                // firewall chain): not externalIPs, not the NodePort.
                let mut e = e;
                if ranges.is_some() && lb_ips.contains(vip) {
                    e.flags |= SVC_F_SOURCE_RANGES;
                }
                push(&mut out, key, e);
            }
        }
        if !cluster.is_empty() {
            let e = entry(ring_for(internal_local, &mut out), internal_local);
            for ip in &cluster {
                let key = FrontendKey {
                    addr: u32::from(*ip).to_be(),
                    port: service_port.to_be(),
                    proto,
                    scope: 0,
                };
                out.frontends.push((key, e));
            }
        }
    }
    out
}

/// A Service port's usable endpoints as ring backends (IPv4; with
/// `local_only`, this node's only), by the one endpoint rule.
fn backends_for(
    slices: &[&EndpointSlice],
    port: PortRef<'_>,
    node: &NodeContext,
    local_only: bool,
) -> Vec<Backend> {
    let is_local = |e: &Endpoint<'_>| node.is_local(e);
    let usable = usable_endpoints(slices, port, |e| {
        e.addr.is_ipv4() && (!local_only || is_local(e))
    });
    let mut out: Vec<Backend> = usable
        .iter()
        .filter_map(|e| {
            let IpAddr::V4(ip) = e.addr else { return None };
            let mut flags = if is_local(e) { 0 } else { BACKEND_F_REMOTE };
            if e.terminating {
                flags |= BACKEND_F_TERMINATING;
            }
            Some(Backend {
                addr: u32::from(ip).to_be(),
                port: e.port.to_be(),
                flags,
                pad: 0,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub fn show_frontend(key: &FrontendKey) -> String {
    let proto = match key.proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        _ => "?",
    };
    let port = u16::from_be(key.port);
    let inside = if key.scope == SCOPE_IN_CLUSTER {
        " (in-cluster)"
    } else {
        ""
    };
    if key.addr == 0 && inside.is_empty() {
        format!("*:{port}/{proto} (NodePort)")
    } else if key.addr == 0 {
        format!("*:{port}/{proto} (NodePort, in-cluster)")
    } else {
        format!(
            "{}:{port}/{proto}{inside}",
            Ipv4Addr::from(u32::from_be(key.addr))
        )
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
