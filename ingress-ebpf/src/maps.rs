//! The maps, all pinned by name so a restarted `ingressd` adopts them.
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use ingress_common::{
    AffinityEntry, AffinityKey, COUNTER_SLOTS, Config, CtEntry, FlowKey, FrontendKey, MAX_AFFINITY,
    MAX_FLOWS, MAX_NODE_ADDRS, MAX_REDIRECT_IFS, MAX_RING_MEMBERS, MAX_RINGS, MAX_SERVICES,
    MAX_SOURCE_RANGES, MAX_TCP_REVNAT, MAX_UDP_CONNECTED, RefuseBucket, RevNatEntry, Ring,
    RingMemberKey, ServiceEntry, ServiceName, SockLbState, SockRevNat, SourceRangeKey,
    UdpConnected,
};

/// Rings are large (8 KiB) and most services are few: allocate on demand.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "LB4_SERVICES")]
pub static SERVICES: HashMap<FrontendKey, ServiceEntry> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "LB4_RINGS")]
pub static RINGS: HashMap<u64, Ring> = HashMap::pinned(MAX_RINGS, BPF_F_NO_PREALLOC);

#[map(name = "LB4_CONNTRACK_V2")]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map(name = "LB4_REVNAT")]
pub static REVNAT: LruHashMap<FlowKey, RevNatEntry> = LruHashMap::pinned(MAX_FLOWS, 0);

/// This node's addresses (network byte order) → 1: where NodePorts answer.
#[map(name = "LB4_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_NODE_ADDRS, 0);

/// Ring names for `ingressd maps`; never read here.
#[map(name = "LB4_SVC_NAMES")]
pub static SVC_NAMES: HashMap<u64, ServiceName> = HashMap::pinned(MAX_RINGS, BPF_F_NO_PREALLOC);

#[map(name = "LB4_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "LB4_COUNTERS_V2")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Which backends each ring holds, with their flags (affinity checks).
#[map(name = "LB4_RING_MEMBERS")]
pub static RING_MEMBERS: HashMap<RingMemberKey, u32> =
    HashMap::pinned(MAX_RING_MEMBERS, BPF_F_NO_PREALLOC);

/// Interfaces a forwarded packet may be redirected to from XDP (ours, in a
/// mode that can take it); any other next hop is left to the stack.
#[map(name = "LB4_REDIRECT_IFS")]
pub static REDIRECT_IFS: HashMap<u32, u32> = HashMap::pinned(MAX_REDIRECT_IFS, 0);

/// The refusals' token bucket, one per CPU (so no lock and no sharing).
#[map(name = "LB4_REFUSE_BUCKET")]
pub static REFUSE_BUCKET: PerCpuArray<RefuseBucket> = PerCpuArray::pinned(1, 0);

#[map(name = "SOCK4_COUNTERS")]
pub static SOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// `sessionAffinity: ClientIP` choices (LRU: a full table forgets the
/// least recently used client, who then chooses anew).
#[map(name = "LB4_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::pinned(MAX_AFFINITY, 0);

/// `loadBalancerSourceRanges` of each ring whose LoadBalancer IPs carry
/// `SVC_F_SOURCE_RANGES`.
#[map(name = "LB4_SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// Connected UDP sockets sent to a backend, by socket cookie: `ingressd`
/// closes those whose backend left. Entries go at `sock_release`.
#[map(name = "SOCK4_UDP_CONNECTED")]
pub static UDP_CONNECTED: LruHashMap<u64, UdpConnected> = LruHashMap::pinned(MAX_UDP_CONNECTED, 0);

/// What each socket translated, so replies and getpeername() show the
/// Service address. A BTF map (socket storage needs BTF); pinned by
/// `ingressd` through the loader, as BTF maps carry no pinning here.
#[btf_map(name = "SOCK4_REVNAT")]
pub static SOCK_REVNAT: SkStorage<SockLbState> = SkStorage::new();

/// A translated TCP socket's reverse translation, by socket cookie.
/// Preallocated, so an insert takes an element from a free list: socket
/// storage allocates (and charges a memory cgroup) on every connect, the
/// larger part of a translation's cost. Entries go at `sock_release`
/// (cookies are never reused); when the table is full, socket storage
/// takes the translation, so nothing is ever lost to a full table.
#[map(name = "SOCK4_TCP_REVNAT")]
pub static TCP_REVNAT: HashMap<u64, SockRevNat> = HashMap::pinned(MAX_TCP_REVNAT, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Counts a packet outcome (`ingress_common::counter`).
#[inline(always)]
pub fn count(index: u32) {
    bump(&COUNTERS, index);
}

/// Counts a socket-level outcome (`ingress_common::sock_counter`).
#[inline(always)]
pub fn count_sock(index: u32) {
    bump(&SOCK_COUNTERS, index);
}

#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}
