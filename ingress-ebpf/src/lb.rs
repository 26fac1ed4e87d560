//! Service lookup, conntrack and backend selection: the decisions of the
//! load balancer, independent of the hook the packet came through.
use ingress_common::{
    BACKEND_F_REMOTE, Backend, CtEntry, FlowKey, FrontendKey, MAGLEV_RING_SIZE, RevNatEntry,
    SVC_F_AFFINITY_CLIENT_IP, ServiceEntry, counter,
};

use crate::maps::{CONNTRACK, NODE_ADDRS, REVNAT, RINGS, SERVICES, config, count};

/// BPF_NOEXIST: insert only if absent.
const BPF_NOEXIST: u64 = 1;
/// Tries at a free SNAT port before giving up on the flow.
const SNAT_TRIES: u32 = 8;

/// Exact frontend first (LoadBalancer IP, externalIP), then a NodePort on
/// any of this node's addresses.
#[inline(always)]
pub fn lookup_service_v4(flow: &FlowKey) -> Option<ServiceEntry> {
    let exact = FrontendKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        pad: 0,
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
        pad: 0,
    };
    // SAFETY: as above.
    unsafe { SERVICES.get(&nodeport) }.copied()
}

/// A flow hash that both directions of userspace tooling can reproduce
/// (`ingressd` uses the same function in its `simulate`-style tests).
#[inline(always)]
pub fn flow_hash(flow: &FlowKey, client_only: bool) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ flow.src;
    h = mix(h);
    if !client_only {
        h ^= flow.dst;
        h = mix(h);
        h ^= ((flow.sport as u32) << 16) | flow.dport as u32;
        h = mix(h);
        h ^= flow.proto as u32;
        h = mix(h);
    }
    h
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
    /// The service has no usable endpoint: refuse the flow.
    NoEndpoint,
}

/// Conntrack hit, or a new choice from the service's Maglev ring.
/// A TCP SYN always chooses anew, so a reused client port never lands on a
/// backend that has since been removed.
#[inline(always)]
pub fn select_backend(flow: &FlowKey, svc: &ServiceEntry, is_syn: bool) -> Option<Selected> {
    if !is_syn {
        // SAFETY: Copy value read once.
        if let Some(ct) = unsafe { CONNTRACK.get(flow) } {
            count(counter::DNAT_CT_HIT);
            return Some(Selected::Backend(*ct));
        }
    }
    let ring = RINGS.get_ptr(svc.ring_id)?;
    // SAFETY: pointer into a map value that stays valid for this program run.
    let ring = unsafe { &*ring };
    if ring.count == 0 {
        return Some(Selected::NoEndpoint);
    }
    let hash = flow_hash(flow, svc.flags & SVC_F_AFFINITY_CLIENT_IP != 0);
    let slot = (hash % MAGLEV_RING_SIZE as u32) as usize;
    // LLVM proves slot < M from its multiply-shift modulo and drops the
    // bounds check below, but the verifier cannot follow that arithmetic
    // ("R0 unbounded memory access"; LLVM 22, Linux 6.18). A volatile
    // re-read hides the proof so the check stays.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    let backend = *ring.slots.get(slot)?;
    let mut ct = CtEntry {
        backend,
        snat_addr: 0,
        snat_port: 0,
        pad: 0,
        ring_id: svc.ring_id,
    };
    if backend.flags & BACKEND_F_REMOTE != 0 {
        if !reserve_snat(flow, &backend, hash, &mut ct) {
            count(counter::DROP_SNAT_EXHAUSTED);
            return None;
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
        // Fail open: without the entry the reply leaves un-NATed and the
        // client resets it, which it would do anyway without the service.
        let _ = REVNAT.insert(&reply, &rev, 0);
        count(counter::DNAT_NEW_LOCAL);
    }
    let _ = CONNTRACK.insert(flow, &ct, 0);
    Some(Selected::Backend(ct))
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
            if existing.dst == rev.dst
                && existing.dport == rev.dport
                && existing.src == rev.src
                && existing.sport == rev.sport
            {
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
