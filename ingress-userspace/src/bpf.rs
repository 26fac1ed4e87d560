//! The kernel edge: loading and attaching the programs, pinning, and typed
//! access to the pinned maps. Nothing here decides anything.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ingress_common::{
    Config, CtEntry, FlowKey, FrontendKey, IPPROTO_UDP, RevNatEntry, Ring, SNAT_PORT_MAX,
    SNAT_PORT_MIN, ServiceEntry, ServiceName, counter, map_names, program_names,
};

use crate::{
    maglev::ring_backends,
    model::{DesiredState, RingSpec},
    sync::LbMapWriter,
};

/// The BPF object, built by `build.rs` from `ingress-ebpf`.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"));

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic when the driver has none.
    Auto,
    Native,
    Generic,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails with what to do when `dir` is not on a bpffs.
pub fn check_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).context("pin path")?;
    // SAFETY: statfs on a valid C string into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "cannot stat {}: {}",
            probe.display(),
            std::io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs, so pins would not survive: mount one with \
             `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)",
            probe.display()
        );
    }
    Ok(())
}

fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("links")
}

/// Loads the programs, adopting pinned maps when present, and attaches them
/// to each interface: a pinned link from an earlier run is updated in place
/// (atomic program swap, no gap), otherwise a new link is made and pinned.
pub fn load_and_attach(
    pin_path: &Path,
    interfaces: &[String],
    mode: XdpAttachMode,
    steer_vips: bool,
) -> anyhow::Result<()> {
    check_bpffs(pin_path)?;
    std::fs::create_dir_all(links_dir(pin_path))
        .with_context(|| format!("creating {}", pin_path.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_path)
        .load(BPF_OBJECT)
        .context("loading the BPF object (an incompatible older map pinned under --pin-path? run `ingressd cleanup`)")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::XDP_INGRESS)
        .context("program xdp_lb_ingress missing from the object")?
        .try_into()?;
    xdp.load().context("verifier rejected xdp_lb_ingress")?;
    for iface in interfaces {
        prepare_interface(iface)?;
        attach_xdp(xdp, iface, pin_path, mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC_EGRESS)
        .context("program tc_revnat_egress missing from the object")?
        .try_into()?;
    tc.load().context("verifier rejected tc_revnat_egress")?;
    for iface in interfaces {
        attach_tc(tc, iface, pin_path)
            .with_context(|| format!("attaching TC egress to {iface}"))?;
    }
    if steer_vips {
        attach_sk_lookup(&mut ebpf, pin_path)?;
    }
    Ok(())
}

/// Puts the loaded program into the link pinned at `pin` by an earlier run
/// (one atomic `bpf_link_update`: no packet sees a gap). False when there is
/// no usable pinned link; a stale pin is removed so a new link can take it.
fn swap_pinned_link<T>(
    pin: &Path,
    iface: &str,
    hook: &str,
    update: impl FnOnce(FdLink) -> anyhow::Result<T>,
) -> bool {
    if !pin.exists() {
        return false;
    }
    match PinnedLink::from_pin(pin)
        .map_err(anyhow::Error::from)
        .and_then(|p| update(FdLink::from(p)))
    {
        Ok(_) => {
            tracing::info!(
                interface = iface,
                "{hook} program replaced in the pinned link"
            );
            true
        }
        Err(e) => {
            tracing::warn!(interface = iface, error = %e, "pinned {hook} link unusable; attaching anew");
            let _ = std::fs::remove_file(pin);
            false
        }
    }
}

fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    pin_path: &Path,
    mode: XdpAttachMode,
) -> anyhow::Result<()> {
    let pin = links_dir(pin_path).join(format!("xdp-{iface}"));
    if swap_pinned_link(&pin, iface, "XDP", |fd| {
        Ok(prog.attach_to_link(XdpLink::try_from(fd)?)?)
    }) {
        return Ok(());
    }
    let id = match mode {
        XdpAttachMode::Native => prog.attach(iface, XdpMode::Driver)?,
        XdpAttachMode::Generic => prog.attach(iface, XdpMode::Skb)?,
        XdpAttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(interface = iface, error = %e, "native XDP unavailable, using generic");
                prog.attach(iface, XdpMode::Skb)?
            }
        },
    };
    let link = prog.take_link(id)?;
    match FdLink::try_from(link) {
        Ok(fd) => {
            fd.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        // Old kernels attach through netlink: the attachment outlives us anyway.
        Err(e) => {
            tracing::warn!(interface = iface, error = %e, "XDP attached without a link; not pinned")
        }
    }
    tracing::info!(interface = iface, "XDP attached");
    Ok(())
}

fn attach_tc(prog: &mut SchedClassifier, iface: &str, pin_path: &Path) -> anyhow::Result<()> {
    let pin = links_dir(pin_path).join(format!("tc-egress-{iface}"));
    if swap_pinned_link(&pin, iface, "TC", |fd| {
        Ok(prog.attach_to_link(SchedClassifierLink::try_from(fd)?)?)
    }) {
        return Ok(());
    }
    let id = prog.attach(iface, TcAttachType::Egress)?;
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).context("TC needs tcx links (Linux 6.6 or later)")?;
    fd.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!(interface = iface, "TC egress attached (tcx)");
    Ok(())
}

/// Loads both programs (verified, not attached) with their maps pinned
/// under `pin_dir`: for packet tests and benchmarks with BPF_PROG_TEST_RUN.
pub fn load_unattached(pin_dir: &Path) -> anyhow::Result<aya::Ebpf> {
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(BPF_OBJECT)?;
    for name in [program_names::XDP_INGRESS, program_names::XDP_PASS] {
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .context("program missing")?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC_EGRESS)
        .context("program missing")?
        .try_into()?;
    tc.load().context("verifier rejected tc_revnat_egress")?;
    Ok(ebpf)
}

/// Attaches `xdp_pass` to `iface` (in the calling thread's network
/// namespace) in native mode and pins the link under `pin_dir` (removed
/// by [`cleanup`]). Needed on the peer of a veth whose other end runs
/// native XDP with XDP_TX.
pub fn attach_xdp_pass(iface: &str, pin_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(BPF_OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut(program_names::XDP_PASS)
        .context("xdp_pass missing")?
        .try_into()?;
    prog.load()?;
    let id = prog.attach(iface, XdpMode::Driver)?;
    let fd = FdLink::try_from(prog.take_link(id)?)?;
    fd.pin(pin_dir.join(format!("xdp-pass-{iface}")))?;
    Ok(())
}

/// Attaches `sk_lookup_proxy` to this process's network namespace. A new
/// link is made before the old pinned one is removed, so steering never
/// stops (two attached copies behave as one: they share the maps).
fn attach_sk_lookup(ebpf: &mut aya::Ebpf, pin_path: &Path) -> anyhow::Result<()> {
    let prog: &mut aya::programs::SkLookup = ebpf
        .program_mut(program_names::SK_LOOKUP)
        .context("program sk_lookup_proxy missing")?
        .try_into()?;
    prog.load().context("verifier rejected sk_lookup_proxy")?;
    let netns = std::fs::File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let id = prog
        .attach(&netns)
        .context("attaching sk_lookup to the network namespace")?;
    let link: FdLink = prog.take_link(id)?.into();
    let pin = links_dir(pin_path).join("sk-lookup");
    let _ = std::fs::remove_file(&pin);
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!("sk_lookup attached: Ingress VIPs on :80/:443 go to the proxy's sockets");
    Ok(())
}

/// Puts the proxy's listening sockets where `sk_lookup_proxy` finds them.
pub fn set_proxy_sockets(
    pin_path: &Path,
    http: &impl std::os::fd::AsRawFd,
    https: &impl std::os::fd::AsRawFd,
) -> anyhow::Result<()> {
    let mut map: aya::maps::SockMap<MapData> =
        open_map(pin_path, map_names::PROXY_SOCKETS)?.try_into()?;
    map.set(ingress_common::PROXY_SOCKET_HTTP, http, 0)
        .context("adding the HTTP socket")?;
    map.set(ingress_common::PROXY_SOCKET_HTTPS, https, 0)
        .context("adding the HTTPS socket")?;
    Ok(())
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

/// Kernel settings the data path relies on, per interface:
/// `accept_local`: a flow to a remote endpoint whose next hop is not yet
/// resolved goes to the stack with this node's address as its (SNAT)
/// source; the stack must forward it (resolving the neighbour for the next
/// packets, which XDP then forwards itself) rather than drop it as a martian.
/// Also warns when forwarding is off, which remote endpoints and local pods
/// behind a bridge need.
pub fn prepare_interface(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    let already = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1");
    if !already && let Err(e) = std::fs::write(&path, "1") {
        // A container gets /proc/sys read-only unless privileged: the
        // node's own configuration must set it then.
        tracing::warn!(
            error = %e,
            "cannot set {path}: set net.ipv4.conf.{iface}.accept_local=1 on the node, or the first packet of a flow to another node's endpoint may be dropped (the client retransmits)"
        );
    }
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forwarding.trim() != "1" {
        tracing::warn!(
            "net.ipv4.ip_forward is 0: endpoints on other nodes and local pods behind a bridge are unreachable"
        );
    }
    Ok(())
}

/// Detaches (by unpinning the links) and removes every pin under `pin_path`.
pub fn cleanup(pin_path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_path.exists() {
        return Ok(removed);
    }
    check_bpffs(pin_path)?;
    let links = links_dir(pin_path);
    if links.exists() {
        for entry in std::fs::read_dir(&links)? {
            let p = entry?.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        std::fs::remove_dir(&links)?;
    }
    for entry in std::fs::read_dir(pin_path)? {
        let p = entry?.path();
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(p);
    }
    std::fs::remove_dir(pin_path)?;
    Ok(removed)
}

fn open_map(pin_path: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_path.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is ingressd running, or was it run with this --pin-path?)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
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
                },
            );
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
        let mut out = BTreeMap::new();
        for i in 0..counter::COUNT {
            let per_cpu = self.counters.get(&i, 0)?;
            out.insert(counter::NAMES[i as usize], per_cpu.iter().sum());
        }
        Ok(out)
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

    /// Number of reverse-NAT entries (for metrics).
    pub fn revnat_len(&self, limit: usize) -> usize {
        self.revnat.keys().take(limit).count()
    }

    pub fn ring_name(&self, id: u64) -> Option<String> {
        self.names.get(&id, 0).ok().map(|n| decode_name(&n))
    }
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

    fn forget_udp_flows(&mut self, endpoints: &BTreeSet<(u32, u16)>) -> anyhow::Result<()> {
        // A walk over the flow table: proportional to live flows, and only
        // when an endpoint disappears.
        let stale: Vec<(FlowKey, CtEntry)> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| {
                k.proto == IPPROTO_UDP && endpoints.contains(&(e.backend.addr, e.backend.port))
            })
            .collect();
        for (key, entry) in &stale {
            ignore_missing(self.conntrack.remove(key))?;
            let reply = FlowKey {
                src: entry.backend.addr,
                dst: if entry.snat_addr != 0 {
                    entry.snat_addr
                } else {
                    key.src
                },
                sport: entry.backend.port,
                dport: if entry.snat_addr != 0 {
                    entry.snat_port
                } else {
                    key.sport
                },
                proto: key.proto,
                pad: [0; 3],
            };
            ignore_missing(self.revnat.remove(&reply))?;
        }
        if !stale.is_empty() {
            tracing::info!(flows = stale.len(), "forgot UDP flows to removed endpoints");
        }
        Ok(())
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> anyhow::Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// IPv4 addresses of an interface (for the `--node-ip` default).
pub fn interface_addrs(iface: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let name = std::ffi::CString::new(iface).with_context(|| format!("--interface {iface:?}"))?;
    // SAFETY: a valid C string.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("--interface {iface}: no such interface");
    }
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a valid list node from getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null C string from getifaddrs.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: non-null sockaddr from getifaddrs.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if name.to_bytes() == iface.as_bytes() && family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}
