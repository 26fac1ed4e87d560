//! Flows age out by time, not only by LRU pressure: a sweep over the
//! conntrack table removes each flow idle for longer than its state allows
//! (a closing TCP flow 10 s, a lone SYN 60 s, an established flow 24 h, UDP
//! 30 s, by default), with its reverse-NAT entry, which gives a remote
//! flow's SNAT port back. It also removes reverse-NAT entries left without
//! a flow, and reports how full both tables are.
use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use ingress_common::{
    CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, Config, CtEntry, FlowKey, RevNatEntry,
    counter, map_names,
};

use super::pins::open_map;

/// How long a flow may sit idle, by state (`--conntrack-*-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    fn for_state(&self, state: u8) -> Duration {
        match state {
            CT_TCP_SYN => self.tcp_syn,
            CT_TCP_CLOSING => self.tcp_close,
            CT_UDP => self.udp,
            // Established, and entries migrated from before states existed.
            _ => self.tcp_established,
        }
    }
}

/// What one sweep found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Flows in the table after the sweep.
    pub flows: u64,
    /// Flows removed for being idle past their timeout.
    pub expired: u64,
    /// Reverse-NAT entries removed for having no flow (two sweeps running).
    pub orphans: u64,
    /// Reverse-NAT entries after the sweep.
    pub revnat: u64,
    /// SNAT ports held by flows to other nodes' endpoints.
    pub snat_in_use: u64,
    /// Ports in the SNAT range.
    pub snat_ports: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The conntrack and reverse-NAT tables, for sweeping.
pub struct Conntrack {
    ct: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    /// Reverse-NAT keys without a flow at the last sweep.
    suspects: HashSet<FlowKey>,
}

impl Conntrack {
    pub fn open(pin_path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            ct: open_map(pin_path, map_names::CONNTRACK)?.try_into()?,
            revnat: open_map(pin_path, map_names::REVNAT)?.try_into()?,
            config: open_map(pin_path, map_names::CONFIG)?.try_into()?,
            counters: open_map(pin_path, map_names::COUNTERS)?.try_into()?,
            suspects: HashSet::new(),
        })
    }

    /// One pass over both tables at monotonic time `now`.
    pub fn sweep(&mut self, t: &Timeouts, now: u64) -> anyhow::Result<Sweep> {
        let mut out = Sweep::default();
        let flows: Vec<(FlowKey, CtEntry)> = self.ct.iter().filter_map(Result::ok).collect();
        for (key, e) in &flows {
            let idle = now.saturating_sub(e.last_seen_ns);
            if idle < t.for_state(e.state).as_nanos() as u64 {
                out.flows += 1;
                continue;
            }
            // Read again: a packet may have refreshed it since.
            match self.ct.get(key, 0) {
                Ok(fresh) if fresh.last_seen_ns == e.last_seen_ns => {}
                _ => {
                    out.flows += 1;
                    continue;
                }
            }
            let _ = self.ct.remove(key);
            let reply = e.reply_key(key);
            if let Ok(rev) = self.revnat.get(&reply, 0)
                && rev.flow(&reply) == *key
            {
                let _ = self.revnat.remove(&reply);
            }
            out.expired += 1;
        }
        let cfg = self.config.get(&0, 0).unwrap_or_default();
        out.snat_ports = if cfg.snat_port_max >= cfg.snat_port_min && cfg.snat_addr != 0 {
            (cfg.snat_port_max - cfg.snat_port_min) as u64 + 1
        } else {
            0
        };
        let entries: Vec<(FlowKey, RevNatEntry)> =
            self.revnat.iter().filter_map(Result::ok).collect();
        let mut suspects = HashSet::new();
        for (reply, rev) in &entries {
            if self.ct.get(&rev.flow(reply), 0).is_ok() {
                out.revnat += 1;
                let port = u16::from_be(reply.dport);
                if cfg.snat_addr != 0
                    && reply.dst == cfg.snat_addr
                    && (cfg.snat_port_min..=cfg.snat_port_max).contains(&port)
                {
                    out.snat_in_use += 1;
                }
                continue;
            }
            // A flow is written just after its reply entry: only an entry
            // found alone twice in a row is an orphan.
            if self.suspects.contains(reply) {
                let _ = self.revnat.remove(reply);
                out.orphans += 1;
            } else {
                suspects.insert(*reply);
                out.revnat += 1;
            }
        }
        self.suspects = suspects;
        if out.expired > 0 {
            add_to_counter(&mut self.counters, counter::CONNTRACK_EXPIRED, out.expired)?;
        }
        Ok(out)
    }
}

/// Adds `n` to a counter the programs never write (CPU 0's slot), so the
/// total survives restarts with the pinned array.
pub fn add_to_counter(
    counters: &mut PerCpuArray<MapData, u64>,
    index: u32,
    n: u64,
) -> anyhow::Result<()> {
    let values = counters.get(&index, 0)?;
    let mut v: Vec<u64> = values.iter().copied().collect();
    if let Some(first) = v.first_mut() {
        *first = first.wrapping_add(n);
    }
    counters.set(index, PerCpuValues::try_from(v)?, 0)?;
    Ok(())
}

/// The first conntrack layout (before flows had states and clocks).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct CtEntryV1 {
    backend: ingress_common::Backend,
    snat_addr: u32,
    snat_port: u16,
    pad: u16,
    ring_id: u64,
}
// SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for CtEntryV1 {}

/// Copies the flows of a conntrack table pinned by an earlier version
/// (`LB4_CONNTRACK`) into the current one, as established (TCP) or UDP
/// flows last seen now, skipping flows already there; the old pin is removed
/// when `last` is set. Run before and after the new programs take over, so
/// no established flow meets a program that does not know it.
pub fn migrate_v1(pin_path: &Path, last: bool) -> anyhow::Result<usize> {
    let old_pin = pin_path.join(map_names::CONNTRACK_V1);
    if !old_pin.exists() {
        return Ok(0);
    }
    let old: HashMap<MapData, FlowKey, CtEntryV1> = open_map(pin_path, map_names::CONNTRACK_V1)?
        .try_into()
        .context("the old conntrack table has an unexpected layout")?;
    let mut new: HashMap<MapData, FlowKey, CtEntry> =
        open_map(pin_path, map_names::CONNTRACK)?.try_into()?;
    let now = monotonic_ns();
    let mut copied = 0;
    for (key, e) in old.iter().filter_map(Result::ok) {
        let state = if key.proto == ingress_common::IPPROTO_UDP {
            CT_UDP
        } else {
            CT_TCP_ESTABLISHED
        };
        let entry = CtEntry {
            backend: e.backend,
            snat_addr: e.snat_addr,
            snat_port: e.snat_port,
            state,
            pad: 0,
            ring_id: e.ring_id,
            last_seen_ns: now,
        };
        // BPF_NOEXIST: a flow the new program already knows stays as it is.
        if new.insert(key, entry, 1).is_ok() {
            copied += 1;
        }
    }
    if last {
        drop(old);
        std::fs::remove_file(&old_pin)
            .with_context(|| format!("removing {}", old_pin.display()))?;
    }
    Ok(copied)
}

/// Sweeps every `interval` on a thread of its own, publishing each result.
pub fn spawn_sweeper(
    pin_path: &Path,
    timeouts: Timeouts,
    interval: Duration,
    publish: impl Fn(Sweep) + Send + 'static,
) -> anyhow::Result<()> {
    let mut ct = Conntrack::open(pin_path)?;
    std::thread::Builder::new()
        .name("conntrack-gc".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                match ct.sweep(&timeouts, monotonic_ns()) {
                    Ok(s) => publish(s),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "conntrack sweep failed"),
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .context("starting the conntrack sweeper")?;
    Ok(())
}
