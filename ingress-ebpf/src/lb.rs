//! Service lookup, conntrack and backend selection: the decisions of the
//! load balancer, independent of the hook the packet came through.
use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, maps::lpm_trie::Key};
use ingress_common::{
    AffinityEntry, AffinityKey, BACKEND_F_REMOTE, Backend, CT_REFRESH_NS, CT_TCP_CLOSING,
    CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, CtEntry, FlowKey, FrontendKey, IPPROTO_TCP,
    MAGLEV_RING_SIZE, RING_F_DROP_IF_EMPTY, RevNatEntry, Ring, RingMemberKey, SCOPE_ALL,
    SCOPE_IN_CLUSTER, SOURCE_RANGE_RING_BITS, SVC_F_AFFINITY_CLIENT_IP, SVC_F_SOURCE_RANGES,
    ServiceEntry, SourceRangeKey, counter,
};

use crate::headers::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use crate::maps::{
    AFFINITY, CONNTRACK, NODE_ADDRS, REVNAT, RING_MEMBERS, RINGS, SERVICES, SOURCE_RANGES, config,
    count,
};

/// BPF_NOEXIST: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Tries at a free SNAT port before giving up on the flow.
const SNAT_TRIES: u32 = 8;

/// Exact frontend first (LoadBalancer IP, externalIP), then a NodePort on
/// any of this node's addresses.
#[inline(always)]
pub fn lookup_service_v4(flow: &FlowKey) -> Option<ServiceEntry> {
    lookup_scoped_v4(flow, SCOPE_ALL)
}

/// The entry callers inside the cluster use for the frontend `flow` goes
/// to (see `SVC_F_EXTERNAL`), if it has one.
#[inline(always)]
pub fn lookup_in_cluster_v4(flow: &FlowKey) -> Option<ServiceEntry> {
    lookup_scoped_v4(flow, SCOPE_IN_CLUSTER)
}

#[inline(always)]
fn lookup_scoped_v4(flow: &FlowKey, scope: u8) -> Option<ServiceEntry> {
    let exact = FrontendKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        scope,
    };
    // SAFETY: values are Copy and read once.
    if let Some(svc) = unsafe { SERVICES.get(&exact) } {
        return Some(*svc);
    }
    // SAFETY: as above.
    unsafe { NODE_ADDRS.get(&flow.dst) }?;
    let nodeport = FrontendKey {
        addr: 0,
        port: flow.dport,
        proto: flow.proto,
        scope,
    };
    // SAFETY: as above.
    unsafe { SERVICES.get(&nodeport) }.copied()
}

/// Whether `src` may use a frontend restricted to its ring's
/// `loadBalancerSourceRanges` (`SVC_F_SOURCE_RANGES`).
#[inline(always)]
pub fn source_allowed_v4(svc: &ServiceEntry, src: u32) -> bool {
    if svc.flags & SVC_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SOURCE_RANGE_RING_BITS + 32,
        SourceRangeKey {
            ring_id: svc.ring_id,
            addr: src,
            pad: 0,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// A hash of the whole flow: which ring slot a new flow takes, and where
/// its search for a free SNAT port starts.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ flow.src;
    h = mix(h);
    h ^= flow.dst;
    h = mix(h);
    h ^= ((flow.sport as u32) << 16) | flow.dport as u32;
    h = mix(h);
    h ^= flow.proto as u32;
    mix(h)
}

/// murmur3's finaliser: cheap and spreads every input bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

pub enum Selected {
    /// Forward to this backend (SNAT fields set for remote ones).
    Backend(CtEntry),
    /// A TCP packet other than a SYN and no flow: leave it to the stack.
    NoFlow,
    /// Drop the packet, counted under this counter.
    Drop(u32),
    /// The service has no usable endpoint: refuse the flow.
    NoEndpoint,
    /// A `Local` policy and no endpoint on this node: drop the flow.
    NoLocalEndpoint,
}

/// What an empty ring means: refuse, or drop (`RING_F_DROP_IF_EMPTY`).
#[inline(always)]
pub fn empty_ring_verdict(ring: &Ring) -> Selected {
    if ring.flags & RING_F_DROP_IF_EMPTY != 0 {
        Selected::NoLocalEndpoint
    } else {
        Selected::NoEndpoint
    }
}

/// The backend in the ring slot `hash` falls on, and that slot.
#[inline(always)]
pub fn ring_slot(ring: &Ring, hash: u32) -> Option<(Backend, u32)> {
    let slot = (hash % MAGLEV_RING_SIZE as u32) as usize;
    // LLVM proves slot < M from its multiply-shift modulo and drops the
    // bounds check below, but the verifier cannot follow that arithmetic
    // ("R0 unbounded memory access"; LLVM 22, Linux 6.18). A volatile
    // re-read hides the proof so the check stays.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    let backend = *ring.slots.get(slot)?;
    Some((backend, slot as u32))
}

/// `sessionAffinity: ClientIP`: the backend `client` chose from this ring
/// before, if it did so within the Service's timeout and the ring still
/// holds that backend (`LB4_RING_MEMBERS`); else a new choice by `hash`,
/// remembered. Either way the entry's clock restarts (per connection).
/// The flag says whether the earlier choice held.
#[inline(always)]
pub fn affine_backend(
    client: u64,
    svc: &ServiceEntry,
    ring: &Ring,
    hash: u32,
) -> Option<(Backend, bool)> {
    let key = AffinityKey {
        client,
        ring_id: svc.ring_id,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = svc.affinity_timeout as u64 * 1_000_000_000;
    if let Some(e) = AFFINITY.get_ptr_mut(&key) {
        // SAFETY: pointer into a map value, valid for this program run.
        let e = unsafe { &mut *e };
        if now.wrapping_sub(e.last_used_ns) < timeout_ns {
            let member = RingMemberKey {
                ring_id: svc.ring_id,
                addr: e.backend.addr,
                port: e.backend.port,
                pad: 0,
            };
            // Still in the ring (endpoints joining move slots, not this).
            // SAFETY: Copy value read once.
            if let Some(flags) = unsafe { RING_MEMBERS.get(&member) } {
                e.last_used_ns = now;
                e.backend.flags = *flags as u8;
                return Some((e.backend, true));
            }
        }
    }
    let (backend, slot) = ring_slot(ring, hash)?;
    let entry = AffinityEntry {
        backend,
        last_used_ns: now,
        slot,
        pad: 0,
    };
    // Fail open: without the entry the next connection chooses anew.
    let _ = AFFINITY.insert(&key, &entry, 0);
    Some((backend, false))
}

/// Conntrack hit, or a new choice from the service's Maglev ring.
/// A TCP SYN always chooses anew, so a reused client port never lands on a
/// backend that has since been removed; any other TCP packet without a flow
/// starts none (`NoFlow`): an outsider's stray or spoofed packets cost no
/// state and no SNAT port.
#[inline(always)]
pub fn select_backend(flow: &FlowKey, svc: &ServiceEntry, tcp_flags: u8) -> Option<Selected> {
    let is_tcp = flow.proto == IPPROTO_TCP;
    let is_syn = is_tcp && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !is_syn {
        if let Some(ct) = CONNTRACK.get_ptr_mut(flow) {
            // SAFETY: pointer into a map value, valid for this program run;
            // other CPUs may write it too, which only races a timestamp.
            let ct = unsafe { &mut *ct };
            touch_flow(flow, ct, tcp_flags, now);
            count(counter::DNAT_CT_HIT);
            return Some(Selected::Backend(*ct));
        }
        if is_tcp {
            return Some(Selected::NoFlow);
        }
    }
    let ring = RINGS.get_ptr(svc.ring_id)?;
    // SAFETY: pointer into a map value that stays valid for this program run.
    let ring = unsafe { &*ring };
    if ring.count == 0 {
        return Some(empty_ring_verdict(ring));
    }
    // The whole flow, also with affinity: the hash picks SNAT ports too,
    // and a client-only hash would give one client 8 ports in all.
    let hash = flow_hash(flow);
    let backend = if svc.flags & SVC_F_AFFINITY_CLIENT_IP != 0 {
        affine_backend(flow.src as u64, svc, ring, hash)?.0
    } else {
        ring_slot(ring, hash)?.0
    };
    let mut ct = CtEntry {
        backend,
        snat_addr: 0,
        snat_port: 0,
        state: if is_tcp { CT_TCP_SYN } else { CT_UDP },
        pad: 0,
        ring_id: svc.ring_id,
        last_seen_ns: now,
    };
    if backend.flags & BACKEND_F_REMOTE != 0 {
        if !reserve_snat(flow, &backend, hash, &mut ct) {
            return Some(Selected::Drop(counter::DROP_SNAT_EXHAUSTED));
        }
        count(counter::DNAT_NEW_REMOTE);
    } else {
        let reply = FlowKey {
            src: backend.addr,
            dst: flow.src,
            sport: backend.port,
            dport: flow.sport,
            proto: flow.proto,
            pad: [0; 3],
        };
        let rev = undo_for(flow);
        // Never overwrite another flow's entry: a spoofed client address
        // and port through another frontend would steal its replies.
        if REVNAT.insert(&reply, &rev, BPF_NOEXIST).is_err() {
            // SAFETY: Copy value read once.
            match unsafe { REVNAT.get(&reply) } {
                Some(existing) if same_revnat(existing, &rev) => {}
                // The flow it belongs to is over (closing, or gone): the
                // tuple is the new flow's.
                Some(existing) if !owner_alive(&reply, existing) => {
                    let _ = REVNAT.insert(&reply, &rev, 0);
                    count(counter::REVNAT_TAKEN_OVER);
                }
                Some(_) => return Some(Selected::Drop(counter::DROP_REVNAT_CONFLICT)),
                // Fail open: without the entry the reply leaves un-NATed
                // and the client resets it.
                None => {}
            }
        }
        count(counter::DNAT_NEW_LOCAL);
    }
    let _ = CONNTRACK.insert(flow, &ct, 0);
    count(counter::CONNTRACK_CREATED);
    Some(Selected::Backend(ct))
}

/// A client packet of a known flow: its state follows the TCP flags, and
/// its clock restarts (at most once per `CT_REFRESH_NS`).
#[inline(always)]
fn touch_flow(flow: &FlowKey, ct: &mut CtEntry, tcp_flags: u8, now: u64) {
    let mut state = ct.state;
    if state != CT_UDP {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            state = CT_TCP_CLOSING;
        } else if state == CT_TCP_SYN && tcp_flags & TCP_ACK != 0 {
            state = CT_TCP_ESTABLISHED;
        }
    }
    if state != ct.state || now.wrapping_sub(ct.last_seen_ns) >= CT_REFRESH_NS {
        ct.state = state;
        ct.last_seen_ns = now;
        // The sweeper removes a flow's reply entry just after the flow; a
        // packet between the two can bring the flow back without it. Once
        // a second, the entry is put back if it is missing.
        let _ = REVNAT.insert(&ct.reply_key(flow), &undo_for(flow), BPF_NOEXIST);
    }
}

/// A reply of a known flow: the flow is in use, whichever side talks (a
/// UDP server pushing to a silent client keeps its flow).
#[inline(always)]
pub fn refresh_owner_v4(reply: &FlowKey, rev: &RevNatEntry) {
    let owner = rev.flow(reply);
    if let Some(ct) = CONNTRACK.get_ptr_mut(&owner) {
        // SAFETY: pointer into a map value, valid for this program run.
        let ct = unsafe { &mut *ct };
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        if now.wrapping_sub(ct.last_seen_ns) >= CT_REFRESH_NS {
            ct.last_seen_ns = now;
        }
    }
}

/// Whether the flow a reverse-NAT entry undoes is still open: known, and
/// not closing (its client sent FIN or RST). A spoofed packet can close
/// nothing else than what the client itself already did.
#[inline(always)]
fn owner_alive(reply: &FlowKey, rev: &RevNatEntry) -> bool {
    // SAFETY: Copy value read once.
    match unsafe { CONNTRACK.get(&rev.flow(reply)) } {
        Some(ct) => ct.state != CT_TCP_CLOSING,
        None => false,
    }
}

/// A new TCP connection to something that is not a frontend: a reverse-NAT
/// entry on its reply tuple left by an earlier flow of the same client port
/// (to a frontend) would rewrite this connection's replies. It goes when
/// that flow is over; an open flow's entry stays (a spoofed SYN removes
/// nothing).
#[inline(always)]
pub fn clear_stale_revnat_v4(flow: &FlowKey) {
    let reply = FlowKey {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        proto: flow.proto,
        pad: [0; 3],
    };
    // SAFETY: Copy value read once.
    let Some(existing) = (unsafe { REVNAT.get(&reply) }).copied() else {
        return;
    };
    if !owner_alive(&reply, &existing) && REVNAT.remove(&reply).is_ok() {
        count(counter::REVNAT_SUPERSEDED);
    }
}

#[inline(always)]
fn same_revnat(a: &RevNatEntry, b: &RevNatEntry) -> bool {
    a.src == b.src && a.dst == b.dst && a.sport == b.sport && a.dport == b.dport
}

/// Finds a free (node address, port) for a flow to a remote backend and
/// records how to undo it on the reply.
#[inline(always)]
fn reserve_snat(flow: &FlowKey, backend: &Backend, hash: u32, ct: &mut CtEntry) -> bool {
    let cfg = config();
    if cfg.snat_addr == 0 || cfg.snat_port_max < cfg.snat_port_min {
        return false;
    }
    let range = (cfg.snat_port_max - cfg.snat_port_min) as u32 + 1;
    let rev = undo_for(flow);
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = (cfg.snat_port_min as u32 + (hash.wrapping_add(i) % range)) as u16;
        let reply = FlowKey {
            src: backend.addr,
            dst: cfg.snat_addr,
            sport: backend.port,
            dport: port.to_be(),
            proto: flow.proto,
            pad: [0; 3],
        };
        if REVNAT.insert(&reply, &rev, BPF_NOEXIST).is_ok() {
            ct.snat_addr = cfg.snat_addr;
            ct.snat_port = port.to_be();
            return true;
        }
        // The port is taken: by this same flow (a retransmitted SYN) it is ours.
        // SAFETY: Copy value read once.
        if let Some(existing) = unsafe { REVNAT.get(&reply) } {
            if same_revnat(existing, &rev) {
                ct.snat_addr = cfg.snat_addr;
                ct.snat_port = port.to_be();
                return true;
            }
        }
        i += 1;
    }
    false
}

/// How a reply to `flow` is rewritten: it must come from the frontend the
/// client used and go to the client.
#[inline(always)]
fn undo_for(flow: &FlowKey) -> RevNatEntry {
    RevNatEntry {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        pad: 0,
    }
}

/// Reverse NAT entry for a reply, if the flow is one of ours.
#[inline(always)]
pub fn lookup_revnat_v4(reply: &FlowKey) -> Option<RevNatEntry> {
    // SAFETY: Copy value read once.
    unsafe { REVNAT.get(reply) }.copied()
}
