//! Typed access to the pinned maps: the only code that touches their bytes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use ingress_common::{
    Config, CtEntry, FlowKey, FrontendKey, IPPROTO_UDP, RING_F_DROP_IF_EMPTY, RevNatEntry, Ring,
    RingMemberKey, SNAT_PORT_MAX, SNAT_PORT_MIN, SOURCE_RANGE_RING_BITS, ServiceEntry, ServiceName,
    SourceRangeKey, counter, map_names, sock_counter,
};

use super::{conntrack::add_to_counter, pins::open_map, sockdiag};
use crate::l4::{
    LbMapWriter, RingMember, SourceRange,
    maglev::ring_backends,
    model::{DesiredState, RingSpec},
};

/// Makes these the listening sockets `sk_lookup_proxy` hands new
/// connections to (on their ports, on the addresses they are bound to and
/// on the Ingress VIPs), and `instance` their owner: the switch of an
/// upgrade, one map update (the old process's sockets get nothing new
/// from here on).
pub fn take_proxy_sockets(
    pin_path: &Path,
    http: &tokio::net::TcpListener,
    https: &tokio::net::TcpListener,
    instance: u64,
) -> anyhow::Result<()> {
    let listeners = [
        (ingress_common::PROXY_SOCKET_HTTP, http, "HTTP"),
        (ingress_common::PROXY_SOCKET_HTTPS, https, "HTTPS"),
    ];
    let mut ports: HashMap<MapData, u32, u32> =
        open_map(pin_path, map_names::PROXY_PORTS)?.try_into()?;
    let mut addrs: HashMap<MapData, u32, u32> =
        open_map(pin_path, map_names::PROXY_ADDRS)?.try_into()?;
    let mut want_ports = Vec::new();
    let mut want_addrs = Vec::new();
    for (index, l, what) in listeners {
        let at = l
            .local_addr()
            .with_context(|| format!("the {what} socket's address"))?;
        let ip = match at.ip() {
            std::net::IpAddr::V4(v4) => u32::from(v4).to_be(),
            // An IPv6 wildcard takes IPv4 too.
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => 0,
            std::net::IpAddr::V6(_) => continue,
        };
        want_ports.push(u32::from(at.port()));
        want_addrs.push(ip);
        ports.insert(u32::from(at.port()), index, 0)?;
        addrs.insert(ip, 1, 0)?;
    }
    let mut map: aya::maps::SockMap<MapData> =
        open_map(pin_path, map_names::PROXY_SOCKETS)?.try_into()?;
    map.set(ingress_common::PROXY_SOCKET_HTTP, http, 0)
        .context("adding the HTTP socket")?;
    map.set(ingress_common::PROXY_SOCKET_HTTPS, https, 0)
        .context("adding the HTTPS socket")?;
    let mut owner: Array<MapData, u64> = open_map(pin_path, map_names::PROXY_OWNER)?.try_into()?;
    owner.set(0, instance, 0)?;
    // Ports and addresses of an earlier run with other flags.
    let stale: Vec<u32> = ports
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want_ports.contains(k))
        .collect();
    for k in stale {
        ignore_missing(ports.remove(&k))?;
    }
    let stale: Vec<u32> = addrs
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want_addrs.contains(k))
        .collect();
    for k in stale {
        ignore_missing(addrs.remove(&k))?;
    }
    Ok(())
}

/// Who holds the proxy's ports (`L7_OWNER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortsOwner {
    /// The instance whose sockets take new connections (0: none yet).
    pub owner: u64,
    /// A starting instance that will take them, if one said so lately.
    pub coming: Option<u64>,
}

/// A starting instance says it will take the ports over: said again every
/// second until it does; older than 3 s it is taken for gone.
pub fn announce_ports_successor(pin_path: &Path, instance: u64) -> anyhow::Result<()> {
    let mut map: Array<MapData, u64> = open_map(pin_path, map_names::PROXY_OWNER)?.try_into()?;
    map.set(1, instance, 0)?;
    map.set(2, super::monotonic_ns(), 0)?;
    Ok(())
}

pub fn ports_owner(pin_path: &Path) -> anyhow::Result<PortsOwner> {
    let map: Array<MapData, u64> = open_map(pin_path, map_names::PROXY_OWNER)?.try_into()?;
    let (owner, candidate, said) = (map.get(&0, 0)?, map.get(&1, 0)?, map.get(&2, 0)?);
    let fresh = super::monotonic_ns().saturating_sub(said) < 3_000_000_000;
    Ok(PortsOwner {
        owner,
        coming: (candidate != 0 && candidate != owner && fresh).then_some(candidate),
    })
}

/// Makes `vips` (and only them) the steered Ingress VIPs.
pub fn set_ingress_vips(pin_path: &Path, vips: &[Ipv4Addr]) -> anyhow::Result<()> {
    let mut map: HashMap<MapData, u32, u32> =
        open_map(pin_path, map_names::INGRESS_VIPS)?.try_into()?;
    let want: Vec<u32> = vips.iter().map(|a| u32::from(*a).to_be()).collect();
    for v in &want {
        map.insert(v, 1, 0)?;
    }
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for k in stale {
        ignore_missing(map.remove(&k))?;
    }
    Ok(())
}

/// Typed handles on the pinned maps.
pub struct LbMaps {
    services: HashMap<MapData, FrontendKey, ServiceEntry>,
    rings: HashMap<MapData, u64, Ring>,
    names: HashMap<MapData, u64, ServiceName>,
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    node_addrs: HashMap<MapData, u32, u32>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    sock_counters: PerCpuArray<MapData, u64>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    redirect_ifs: HashMap<MapData, u32, u32>,
    members: HashMap<MapData, RingMemberKey, u32>,
    pin_path: std::path::PathBuf,
    /// Whether the missing-capability warning was given.
    warned_netns: bool,
}

/// One conntrack entry, for display.
pub struct Flow {
    pub key: FlowKey,
    pub entry: CtEntry,
}

impl LbMaps {
    pub fn open(pin_path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            services: open_map(pin_path, map_names::SERVICES)?.try_into()?,
            rings: open_map(pin_path, map_names::RINGS)?.try_into()?,
            names: open_map(pin_path, map_names::SVC_NAMES)?.try_into()?,
            conntrack: open_map(pin_path, map_names::CONNTRACK)?.try_into()?,
            revnat: open_map(pin_path, map_names::REVNAT)?.try_into()?,
            node_addrs: open_map(pin_path, map_names::NODE_ADDRS)?.try_into()?,
            config: open_map(pin_path, map_names::CONFIG)?.try_into()?,
            counters: open_map(pin_path, map_names::COUNTERS)?.try_into()?,
            sock_counters: open_map(pin_path, map_names::SOCK_COUNTERS)?.try_into()?,
            source_ranges: open_map(pin_path, map_names::SOURCE_RANGES)?.try_into()?,
            redirect_ifs: open_map(pin_path, map_names::REDIRECT_IFS)?.try_into()?,
            members: open_map(pin_path, map_names::RING_MEMBERS)?.try_into()?,
            pin_path: pin_path.to_path_buf(),
            warned_netns: false,
        })
    }

    /// What the maps hold now, in the model's terms (adoption after restart).
    pub fn read_state(&self) -> anyhow::Result<DesiredState> {
        let mut state = DesiredState::default();
        for item in self.services.iter() {
            let (k, v) = item?;
            state.frontends.insert(k, v);
        }
        for item in self.rings.iter() {
            let (id, ring) = item?;
            let name = self
                .names
                .get(&id, 0)
                .map(|n| decode_name(&n))
                .unwrap_or_default();
            state.rings.insert(
                id,
                RingSpec {
                    name,
                    backends: ring_backends(&ring),
                    drop_when_empty: ring.flags & RING_F_DROP_IF_EMPTY != 0,
                    source_ranges: Vec::new(),
                },
            );
        }
        for key in self.source_ranges.keys() {
            let key = key?;
            let data = key.data();
            let Some(spec) = state.rings.get_mut(&data.ring_id) else {
                continue;
            };
            let len = key.prefix_len().saturating_sub(SOURCE_RANGE_RING_BITS) as u8;
            spec.source_ranges
                .push((Ipv4Addr::from(u32::from_be(data.addr)), len));
        }
        for spec in state.rings.values_mut() {
            spec.source_ranges.sort();
        }
        Ok(state)
    }

    /// Sets the node addresses NodePorts answer on and the SNAT address.
    pub fn set_node(&mut self, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
        let want: Vec<u32> = addrs.iter().map(|a| u32::from(*a).to_be()).collect();
        for a in &want {
            self.node_addrs.insert(a, 1, 0)?;
        }
        let stale: Vec<u32> = self
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            self.node_addrs.remove(&k)?;
        }
        let cfg = Config {
            snat_addr: want.first().copied().unwrap_or(0),
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
        };
        self.config.set(0, cfg, 0)?;
        Ok(())
    }

    /// Makes `ifindexes` (and only them) the interfaces XDP may redirect to.
    pub fn set_redirect_ifs(&mut self, ifindexes: &[u32]) -> anyhow::Result<()> {
        for i in ifindexes {
            self.redirect_ifs.insert(i, 1, 0)?;
        }
        let stale: Vec<u32> = self
            .redirect_ifs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for k in stale {
            ignore_missing(self.redirect_ifs.remove(&k))?;
        }
        Ok(())
    }

    pub fn node_addrs(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .map(|k| Ipv4Addr::from(u32::from_be(k)))
            .collect();
        v.sort();
        v
    }

    /// Packet counters summed over CPUs, by name.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        sum_counters(&self.counters, &counter::NAMES)
    }

    /// The socket programs' counters summed over CPUs, by name.
    pub fn sock_counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        sum_counters(&self.sock_counters, &sock_counter::NAMES)
    }

    /// Up to `limit` conntrack entries.
    pub fn flows(&self, limit: usize) -> Vec<Flow> {
        self.conntrack
            .iter()
            .filter_map(Result::ok)
            .take(limit)
            .map(|(key, entry)| Flow { key, entry })
            .collect()
    }

    /// The ring members the maps hold, with their flags.
    pub fn members(&self) -> anyhow::Result<BTreeMap<RingMember, u8>> {
        let mut out = BTreeMap::new();
        for item in self.members.iter() {
            let (k, flags) = item?;
            out.insert((k.ring_id, k.addr, k.port), flags as u8);
        }
        Ok(out)
    }

    /// SNAT ports held by flows to other nodes' endpoints, and the range's size.
    pub fn snat_ports(&self) -> (usize, usize) {
        let cfg = self.config.get(&0, 0).unwrap_or_default();
        if cfg.snat_addr == 0 || cfg.snat_port_max < cfg.snat_port_min {
            return (0, 0);
        }
        let used = self
            .revnat
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                k.dst == cfg.snat_addr
                    && (cfg.snat_port_min..=cfg.snat_port_max).contains(&u16::from_be(k.dport))
            })
            .count();
        (used, (cfg.snat_port_max - cfg.snat_port_min) as usize + 1)
    }

    /// Number of reverse-NAT entries (for metrics).
    pub fn revnat_len(&self, limit: usize) -> usize {
        self.revnat.keys().take(limit).count()
    }

    pub fn ring_name(&self, id: u64) -> Option<String> {
        self.names.get(&id, 0).ok().map(|n| decode_name(&n))
    }
}

impl LbMaps {
    /// Closes the connected UDP sockets the socket programs sent to these
    /// endpoints (see `sockdiag`). Best effort: a namespace that cannot be
    /// entered is reported, never an error for the sync.
    fn close_udp_sockets(&mut self, left: &BTreeSet<RingMember>) {
        let cookies = match sockdiag::sockets_to(&self.pin_path, left) {
            Ok(c) if c.is_empty() => return,
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the connected UDP sockets");
                return;
            }
        };
        match sockdiag::close_udp_sockets(&cookies) {
            Ok(closed) => {
                tracing::info!(
                    sockets = closed.sockets,
                    namespaces = closed.namespaces,
                    "closed connected UDP sockets to removed endpoints"
                );
                if closed.unreachable > 0 && !self.warned_netns {
                    self.warned_netns = true;
                    tracing::warn!(
                        namespaces = closed.unreachable,
                        "cannot enter some network namespaces (needs CAP_SYS_ADMIN): connected UDP sockets there keep their removed endpoint"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "closing connected UDP sockets failed")
            }
        }
    }
}

fn member_key((ring_id, addr, port): RingMember) -> RingMemberKey {
    RingMemberKey {
        ring_id,
        addr,
        port,
        pad: 0,
    }
}

fn range_key(ring: u64, (addr, len): SourceRange) -> Key<SourceRangeKey> {
    Key::new(
        SOURCE_RANGE_RING_BITS + u32::from(len.min(32)),
        SourceRangeKey {
            ring_id: ring,
            addr: u32::from(addr).to_be(),
            pad: 0,
        },
    )
}

fn sum_counters(
    map: &PerCpuArray<MapData, u64>,
    names: &[&'static str],
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let per_cpu = map.get(&(i as u32), 0)?;
        out.insert(*name, per_cpu.iter().sum());
    }
    Ok(out)
}

fn encode_name(name: &str) -> ServiceName {
    let mut out = ServiceName {
        len: 0,
        bytes: [0; 124],
    };
    let mut n = name.len().min(out.bytes.len());
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    out.bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    out.len = n as u32;
    out
}

fn decode_name(n: &ServiceName) -> String {
    let len = (n.len as usize).min(n.bytes.len());
    String::from_utf8_lossy(&n.bytes[..len]).into_owned()
}

impl LbMapWriter for LbMaps {
    fn put_ring(&mut self, id: u64, ring: &Ring, name: &str) -> anyhow::Result<()> {
        // The name first: it is only read by humans, and a ring must never be
        // visible under a stale name.
        self.names.insert(id, encode_name(name), 0)?;
        self.rings.insert(id, ring, 0)?;
        Ok(())
    }

    fn delete_ring(&mut self, id: u64) -> anyhow::Result<()> {
        ignore_missing(self.rings.remove(&id))?;
        ignore_missing(self.names.remove(&id))?;
        Ok(())
    }

    fn put_frontend(&mut self, key: &FrontendKey, entry: &ServiceEntry) -> anyhow::Result<()> {
        self.services.insert(key, entry, 0)?;
        Ok(())
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> anyhow::Result<()> {
        ignore_missing(self.services.remove(key))
    }

    fn put_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()> {
        self.source_ranges.insert(&range_key(ring, range), 1, 0)?;
        Ok(())
    }

    fn delete_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()> {
        ignore_missing(self.source_ranges.remove(&range_key(ring, range)))
    }

    fn put_member(&mut self, member: RingMember, flags: u8) -> anyhow::Result<()> {
        self.members
            .insert(member_key(member), u32::from(flags), 0)?;
        Ok(())
    }

    fn delete_member(&mut self, member: RingMember) -> anyhow::Result<()> {
        ignore_missing(self.members.remove(&member_key(member)))
    }

    fn forget_udp_flows(&mut self, left: &BTreeSet<RingMember>) -> anyhow::Result<()> {
        // A walk over the flow table: proportional to live flows, and only
        // when an endpoint disappears.
        let stale: Vec<(FlowKey, CtEntry)> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| {
                k.proto == IPPROTO_UDP
                    && left.contains(&(e.ring_id, e.backend.addr, e.backend.port))
            })
            .collect();
        for (key, entry) in &stale {
            ignore_missing(self.conntrack.remove(key))?;
            ignore_missing(self.revnat.remove(&entry.reply_key(key)))?;
        }
        if !stale.is_empty() {
            add_to_counter(
                &mut self.counters,
                counter::CONNTRACK_FORGOTTEN,
                stale.len() as u64,
            )?;
        }
        if !stale.is_empty() {
            tracing::info!(flows = stale.len(), "forgot UDP flows to removed endpoints");
        }
        self.close_udp_sockets(left);
        Ok(())
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> anyhow::Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
