//! Types shared by the BPF programs (`ingress-ebpf`) and `ingressd`.
//!
//! Every type here is a map key or value: `#[repr(C)]`, `Copy`, explicit
//! padding, no `bool`/`Option`/data enums, and a size assert beside it.
//! Addresses and ports are stored in network byte order, as they sit in the
//! packet, so the kernel side never swaps bytes on the fast path.
//! Never reorder a field: when a layout must change, bump the map's name.
#![no_std]

use core::mem::size_of;

/// Slots in each service's Maglev lookup table. Prime, as Maglev requires;
/// about 100 slots per backend keeps the spread within ~1% for services of
/// up to ten endpoints, and lookups are one index whatever the size.
pub const MAGLEV_RING_SIZE: usize = 1021;

/// Map names, also the file names of their pins under `--pin-path`.
pub mod map_names {
    pub const SERVICES: &str = "LB4_SERVICES";
    pub const RINGS: &str = "LB4_RINGS";
    /// `_V2`: entries carry their TCP state and last use (aged by time).
    pub const CONNTRACK: &str = "LB4_CONNTRACK_V2";
    /// The layout before `_V2`: adopted (migrated) once at start.
    pub const CONNTRACK_V1: &str = "LB4_CONNTRACK";
    /// Per-CPU token bucket for RSTs and ICMP unreachables.
    pub const REFUSE_BUCKET: &str = "LB4_REFUSE_BUCKET";
    /// Interfaces XDP may redirect a forwarded packet to (by ifindex).
    pub const REDIRECT_IFS: &str = "LB4_REDIRECT_IFS";
    /// Which backends each ring holds (for affinity checks).
    pub const RING_MEMBERS: &str = "LB4_RING_MEMBERS";

    pub const REVNAT: &str = "LB4_REVNAT";
    pub const NODE_ADDRS: &str = "LB4_NODE_ADDRS";
    pub const CONFIG: &str = "LB4_CONFIG";
    /// `_V2`: 64 slots (was 16), so new counters need no new name.
    pub const COUNTERS: &str = "LB4_COUNTERS_V2";
    /// The socket-level programs' counters (per CPU, [`super::sock_counter`]).
    pub const SOCK_COUNTERS: &str = "SOCK4_COUNTERS";
    /// Per-socket reverse translation (socket storage, freed with the socket).
    pub const SOCK_REVNAT: &str = "SOCK4_REVNAT";
    /// TCP sockets' reverse translation by socket cookie (preallocated;
    /// removed at `sock_release`; when full, socket storage takes over).
    pub const TCP_REVNAT: &str = "SOCK4_TCP_REVNAT";
    /// `sessionAffinity: ClientIP` choices, by client and ring.
    pub const AFFINITY: &str = "LB4_AFFINITY";
    /// Connected UDP sockets sent to a backend, by socket cookie.
    pub const UDP_CONNECTED: &str = "SOCK4_UDP_CONNECTED";
    /// `loadBalancerSourceRanges`, by ring (LPM trie).
    pub const SOURCE_RANGES: &str = "LB4_SOURCE_RANGES";
    pub const SVC_NAMES: &str = "LB4_SVC_NAMES";
    pub const INGRESS_VIPS: &str = "L7_VIPS";
    pub const PROXY_SOCKETS: &str = "L7_SOCKETS";
    /// The proxy's listening ports → socket index.
    pub const PROXY_PORTS: &str = "L7_PORTS";
    /// The addresses the proxy listens on itself (0: every address).
    pub const PROXY_ADDRS: &str = "L7_LISTEN_ADDRS";
    /// The instance id of the `ingressd` whose sockets are in `L7_SOCKETS`.
    pub const PROXY_OWNER: &str = "L7_OWNER";
}

/// Program names (the Rust function names in `ingress-ebpf`).
pub mod program_names {
    pub const XDP_INGRESS: &str = "xdp_lb_ingress";
    pub const TC_EGRESS: &str = "tc_revnat_egress";
    /// A pass-everything program for the far end of veth pairs (labs).
    pub const XDP_PASS: &str = "xdp_pass";
    pub const SK_LOOKUP: &str = "sk_lookup_proxy";
    /// ClusterIP at the socket (cgroup v2 hooks).
    pub const CGROUP_CONNECT4: &str = "cgroup_connect4";
    pub const CGROUP_SENDMSG4: &str = "cgroup_sendmsg4";
    pub const CGROUP_RECVMSG4: &str = "cgroup_recvmsg4";
    pub const CGROUP_GETPEERNAME4: &str = "cgroup_getpeername4";
    /// The same for IPv6 sockets calling IPv4-mapped addresses.
    pub const CGROUP_CONNECT6: &str = "cgroup_connect6";
    pub const CGROUP_SENDMSG6: &str = "cgroup_sendmsg6";
    pub const CGROUP_RECVMSG6: &str = "cgroup_recvmsg6";
    pub const CGROUP_GETPEERNAME6: &str = "cgroup_getpeername6";
    pub const CGROUP_SOCK_RELEASE: &str = "cgroup_sock_release";
}

/// Default capacities; `ingressd` may raise them at load time.
pub const MAX_SERVICES: u32 = 131_072;
pub const MAX_RINGS: u32 = 131_072;
pub const MAX_FLOWS: u32 = 262_144;
pub const MAX_NODE_ADDRS: u32 = 64;

/// Interfaces in `LB4_REDIRECT_IFS`, at most.
pub const MAX_REDIRECT_IFS: u32 = 64;

/// Ingress VIPs steered to the proxy by `sk_lookup_proxy`.
pub const MAX_INGRESS_VIPS: u32 = 1024;
/// Indexes of the proxy's listening sockets in `L7_SOCKETS`.
pub const PROXY_SOCKET_HTTP: u32 = 0;
pub const PROXY_SOCKET_HTTPS: u32 = 1;
/// Addresses in `L7_LISTEN_ADDRS`, at most.
pub const MAX_PROXY_ADDRS: u32 = 16;

/// IP protocol numbers as stored in [`FrontendKey::proto`] and [`FlowKey::proto`].
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A service frontend: the address, port and protocol a client connects to.
/// NodePorts are stored once with `addr == 0` and match on every node address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// IPv4 address, network byte order; 0 for a NodePort.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `SCOPE_*`. Was padding (always 0, `SCOPE_ALL`).
    pub scope: u8,
}
const _: () = assert!(size_of::<FrontendKey>() == 8);

/// `ServiceEntry::flags`: pick the backend by client address only
/// (`sessionAffinity: ClientIP`).
pub const SVC_F_AFFINITY_CLIENT_IP: u32 = 1 << 0;
/// `ServiceEntry::flags`: `externalTrafficPolicy: Local` (only local backends,
/// no SNAT; informational for the kernel side, the ring already holds only
/// local backends).
pub const SVC_F_LOCAL_ONLY: u32 = 1 << 1;

/// `ServiceEntry::flags`: only sources in the ring's `loadBalancerSourceRanges`
/// (`LB4_SOURCE_RANGES`) may use this frontend (a LoadBalancer IP); others
/// are dropped.
pub const SVC_F_SOURCE_RANGES: u32 = 1 << 2;
/// `ServiceEntry::flags`: a NodePort, LoadBalancer IP or externalIP (not a
/// cluster IP). Under `externalTrafficPolicy: Local` (with
/// `SVC_F_LOCAL_ONLY`) its ring holds this node's endpoints only; callers
/// inside the cluster (the socket programs) then use the same frontend's
/// `SCOPE_IN_CLUSTER` entry, whose ring holds every endpoint, as kube-proxy
/// sends pod and node traffic to all of them.
pub const SVC_F_EXTERNAL: u32 = 1 << 3;

/// `FrontendKey::scope`: the entry every caller uses.
pub const SCOPE_ALL: u8 = 0;
/// `FrontendKey::scope`: the entry callers inside the cluster use instead
/// (see `SVC_F_EXTERNAL`); the packet path never looks it up.
pub const SCOPE_IN_CLUSTER: u8 = 1;

/// What a frontend leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Key of this service's ring in `LB4_RINGS`: a stable 64-bit hash of
    /// namespace/name/port-name/scope computed in userspace.
    pub ring_id: u64,
    /// `SVC_F_*`.
    pub flags: u32,
    /// With `SVC_F_AFFINITY_CLIENT_IP`: seconds a client keeps its backend
    /// after its last new connection (`sessionAffinityConfig.clientIP.
    /// timeoutSeconds`). Was padding (always 0) before affinity timed out.
    pub affinity_timeout: u32,
}
const _: () = assert!(size_of::<ServiceEntry>() == 16);

/// `Backend::flags`: the endpoint lives on another node: SNAT to this node's
/// address so the reply comes back through it.
pub const BACKEND_F_REMOTE: u8 = 1 << 0;
/// `Backend::flags`: the endpoint is serving but terminating (used only when
/// no ready endpoint is left).
pub const BACKEND_F_TERMINATING: u8 = 1 << 1;

/// One pod endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// `BACKEND_F_*`.
    pub flags: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<Backend>() == 8);

/// A service's Maglev lookup table, computed in userspace. Replacing the
/// whole value is one atomic map update, so an endpoint change is one write
/// and a packet sees either the old table or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Number of distinct backends in `slots`; 0 means "refuse" (or "drop",
    /// with `RING_F_DROP_IF_EMPTY`).
    pub count: u32,
    /// `RING_F_*`. Was padding (always 0).
    pub flags: u32,
    /// Backend chosen for each hash slot.
    pub slots: [Backend; MAGLEV_RING_SIZE],
}
const _: () = assert!(size_of::<Ring>() == 8 + 8 * MAGLEV_RING_SIZE);

/// `Ring::flags`: an empty ring drops instead of refusing. Set on the
/// node-local ring of a `Local` traffic policy while the Service has
/// endpoints on other nodes: kube-proxy drops that traffic silently (there
/// are endpoints, just none here), and refuses only when there are none.
pub const RING_F_DROP_IF_EMPTY: u32 = 1 << 0;

/// The data of a `LB4_SOURCE_RANGES` key: a ring and a client address
/// (network byte order). Entries are stored with a prefix length of
/// 64 + the range's own, so the ring always matches whole and the address
/// by its prefix; lookups use 96.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub ring_id: u64,
    pub addr: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 16);

/// Prefix bits of a `SourceRangeKey` taken by its ring id.
pub const SOURCE_RANGE_RING_BITS: u32 = 64;

/// Source ranges kept in all (a few per LoadBalancer Service port).
pub const MAX_SOURCE_RANGES: u32 = 65_536;

/// A flow as seen in one direction of a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

/// Conntrack entry for a client flow (key: the client's packet as received).
/// The fields up to `ring_id` keep the layout of the first version (then
/// `state` was padding), so `ingressd` migrates old entries field by field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// The backend this flow is pinned to.
    pub backend: Backend,
    /// For remote backends: the source address and port the flow is SNATed
    /// to (network byte order); zero for local backends.
    pub snat_addr: u32,
    pub snat_port: u16,
    /// `CT_*`: where the flow is in its life, which decides its timeout.
    pub state: u8,
    pub pad: u8,
    /// Ring of the service the flow entered through.
    pub ring_id: u64,
    /// `bpf_ktime_get_ns()` of the client's last packet (refreshed at most
    /// once a second, the timeouts' granularity).
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 32);

impl CtEntry {
    /// The key of this flow's reverse-NAT entry: the reply as it leaves the
    /// backend, to this node's SNAT address and port for a remote backend,
    /// to the client for a local one. `flow` is the conntrack key.
    #[inline(always)]
    pub fn reply_key(&self, flow: &FlowKey) -> FlowKey {
        let snat = self.snat_addr != 0;
        FlowKey {
            src: self.backend.addr,
            dst: if snat { self.snat_addr } else { flow.src },
            sport: self.backend.port,
            dport: if snat { self.snat_port } else { flow.sport },
            proto: flow.proto,
            pad: [0; 3],
        }
    }
}

/// `CtEntry::state`: a TCP SYN, nothing after it yet.
pub const CT_TCP_SYN: u8 = 1;
/// `CtEntry::state`: a TCP flow past its handshake.
pub const CT_TCP_ESTABLISHED: u8 = 2;
/// `CtEntry::state`: a TCP flow whose client sent FIN or RST.
pub const CT_TCP_CLOSING: u8 = 3;
/// `CtEntry::state`: a UDP flow.
pub const CT_UDP: u8 = 4;

/// How often a flow's `last_seen_ns` is rewritten, at most.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The refusals' token bucket (per CPU): time credit, in nanoseconds, for
/// RSTs and ICMP unreachables; each costs `REFUSE_INTERVAL_NS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefuseBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<RefuseBucket>() == 16);

/// One refusal a millisecond per CPU (Linux's icmp_msgs_per_sec is 1000)...
pub const REFUSE_INTERVAL_NS: u64 = 1_000_000;
/// ...with bursts of 50 (icmp_msgs_burst).
pub const REFUSE_BURST: u64 = 50;

/// How to rewrite a reply (key: the reply packet's flow as it leaves the
/// backend). Local backends: the TC egress program rewrites the source back
/// to the frontend. Remote backends: the XDP program rewrites source and
/// destination of the SNATed reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatEntry {
    /// New source address and port (the frontend the client used).
    pub src: u32,
    /// New destination address (the client) and port.
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub pad: u32,
}
const _: () = assert!(size_of::<RevNatEntry>() == 16);

impl RevNatEntry {
    /// The flow (the client's packet as received) this entry undoes, for a
    /// reply keyed `reply`.
    #[inline(always)]
    pub fn flow(&self, reply: &FlowKey) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: reply.proto,
            pad: [0; 3],
        }
    }
}

/// Human name of a ring (`namespace/name:port`), for `ingressd maps` only;
/// the kernel side never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// Bytes used in `bytes` (UTF-8, truncated to fit).
    pub len: u32,
    pub bytes: [u8; 124],
}
const _: () = assert!(size_of::<ServiceName>() == 128);

/// Node-wide settings, one entry at index 0 of `LB4_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Address remote-backend flows are SNATed to (network byte order).
    pub snat_addr: u32,
    /// SNAT source port range, host byte order, inclusive. Kept above the
    /// kernel's default ephemeral range so they never meet local sockets.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}
const _: () = assert!(size_of::<Config>() == 8);

/// Default SNAT port range (above Linux's 32768-60999 ephemeral range).
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Slots of the per-CPU counter arrays (more than in use: new counters
/// need no new map).
pub const COUNTER_SLOTS: u32 = 64;

/// Indexes into the per-CPU `LB4_COUNTERS_V2` array: what happened to a packet.
pub mod counter {
    pub const PASS_NOT_IPV4: u32 = 0;
    pub const PASS_TRUNCATED: u32 = 1;
    pub const PASS_IP_OPTIONS: u32 = 2;
    pub const PASS_FRAGMENT: u32 = 3;
    pub const PASS_UNKNOWN_PROTO: u32 = 4;
    pub const PASS_NOT_SERVICE: u32 = 5;
    pub const DNAT_NEW_LOCAL: u32 = 6;
    pub const DNAT_NEW_REMOTE: u32 = 7;
    pub const DNAT_CT_HIT: u32 = 8;
    pub const REFUSED_TCP_RST: u32 = 9;
    pub const REFUSED_ICMP_UNREACH: u32 = 10;
    pub const REVNAT_SNAT_REPLY: u32 = 11;
    pub const REVNAT_EGRESS: u32 = 12;
    pub const FIB_MISS: u32 = 13;
    pub const DROP_SNAT_EXHAUSTED: u32 = 14;
    pub const DROP_REWRITE_FAILED: u32 = 15;
    /// A `Local` policy and no endpoint on this node (see `RING_F_DROP_IF_EMPTY`).
    pub const DROP_NO_LOCAL_ENDPOINT: u32 = 16;
    /// A source outside the frontend's `loadBalancerSourceRanges`.
    pub const DROP_SOURCE_RANGE: u32 = 17;
    /// A TCP packet other than a SYN with no flow: never starts one (the
    /// stack answers it as it would without us).
    pub const PASS_TCP_WITHOUT_FLOW: u32 = 18;
    /// A refusal (RST, ICMP) over the rate limit: dropped instead.
    pub const DROP_REFUSAL_RATE_LIMITED: u32 = 19;
    /// A new flow whose reply would have taken over another flow's reverse
    /// NAT entry (a spoofed client address and port): dropped.
    pub const DROP_REVNAT_CONFLICT: u32 = 20;
    /// New flows recorded in conntrack.
    pub const CONNTRACK_CREATED: u32 = 21;
    /// Flows removed by `ingressd` for being idle past their timeout
    /// (written from user space, on CPU 0's slot only).
    pub const CONNTRACK_EXPIRED: u32 = 22;
    /// UDP flows removed by `ingressd` because their endpoint left
    /// (written from user space, on CPU 0's slot only).
    pub const CONNTRACK_FORGOTTEN: u32 = 23;
    /// A rewritten packet whose next hop is a device XDP cannot send on
    /// (a bridge, a VXLAN or IPIP tunnel, a veth without XDP on its peer):
    /// left to the stack, which forwards it.
    pub const PASS_FORWARD_BY_STACK: u32 = 24;
    /// A new flow took the reverse-NAT entry of a closed flow on the same
    /// reply tuple.
    pub const REVNAT_TAKEN_OVER: u32 = 25;
    /// Reverse-NAT entries of an earlier flow removed because the same
    /// client port opened a new connection elsewhere.
    pub const REVNAT_SUPERSEDED: u32 = 26;
    pub const COUNT: u32 = 27;

    /// Metric label for each counter, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ipv4",
        "pass_truncated",
        "pass_ip_options",
        "pass_fragment",
        "pass_unknown_proto",
        "pass_not_service",
        "dnat_new_local",
        "dnat_new_remote",
        "dnat_conntrack_hit",
        "refused_tcp_rst",
        "refused_icmp_unreachable",
        "revnat_snat_reply",
        "revnat_egress",
        "fib_miss",
        "drop_snat_exhausted",
        "drop_rewrite_failed",
        "drop_no_local_endpoint",
        "drop_source_range",
        "pass_tcp_without_flow",
        "drop_refusal_rate_limited",
        "drop_revnat_conflict",
        "conntrack_created",
        "conntrack_expired",
        "conntrack_forgotten",
        "pass_forward_by_stack",
        "revnat_taken_over",
        "revnat_superseded",
    ];
}

/// Indexes into the per-CPU `SOCK4_COUNTERS` array: what the socket-level
/// programs did with a `connect()` or `sendmsg()` to a frontend.
pub mod sock_counter {
    /// A TCP or connected-UDP socket sent to a backend.
    pub const CONNECT_TRANSLATED: u32 = 0;
    /// An unconnected UDP datagram sent to a backend.
    pub const SENDMSG_TRANSLATED: u32 = 1;
    /// No endpoint: the call failed with ECONNREFUSED.
    pub const REFUSED: u32 = 2;
    /// A `Local` policy and no endpoint here: failed with EHOSTUNREACH.
    pub const DROPPED: u32 = 3;
    /// A reply's source or a peer name given back as the Service address.
    pub const REVERSED: u32 = 4;
    /// The backend came from a live `sessionAffinity: ClientIP` entry.
    pub const AFFINITY_HIT: u32 = 5;
    /// A TCP translation kept in the socket's storage because
    /// `SOCK4_TCP_REVNAT` was full (correct, only slower).
    pub const TCP_REVNAT_FULL: u32 = 6;
    pub const COUNT: u32 = 7;

    /// Metric label for each counter, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_translated",
        "sendmsg_translated",
        "refused",
        "dropped",
        "reversed",
        "affinity_hit",
        "tcp_revnat_full",
    ];
}

/// How many translations one socket remembers (unconnected UDP may send to
/// several Services from one socket; a resolver asks up to three servers).
pub const SOCK_REVNAT_SLOTS: usize = 4;

/// One translation a socket made: replies from `backend_*` are reported
/// as coming from `service_*` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat {
    pub backend_addr: u32,
    pub service_addr: u32,
    pub backend_port: u16,
    pub service_port: u16,
}
const _: () = assert!(size_of::<SockRevNat>() == 12);

/// What a socket keeps of its translations (socket storage: it lives and
/// dies with the socket, so nothing can fill up or go stale).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockLbState {
    pub entries: [SockRevNat; SOCK_REVNAT_SLOTS],
    /// Next slot to overwrite when all are in use.
    pub next: u32,
}
const _: () = assert!(size_of::<SockLbState>() == 12 * SOCK_REVNAT_SLOTS + 4);

/// Key of a `sessionAffinity: ClientIP` choice: who the client is (its
/// network namespace's cookie at the socket, its IPv4 address on the
/// packet path) and which ring it chose from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub ring_id: u64,
}
const _: () = assert!(size_of::<AffinityKey>() == 16);

/// The backend a client keeps, and when it last opened a connection; a
/// choice stays valid while the ring still holds that backend
/// (`LB4_RING_MEMBERS`). `slot` is where it sat when chosen (for humans).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    pub backend: Backend,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
    pub slot: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<AffinityEntry>() == 24);

/// Affinity entries kept (LRU: the least recently used go first).
pub const MAX_AFFINITY: u32 = 65_536;

/// A backend of a ring (`LB4_RING_MEMBERS`; the value is the backend's
/// `BACKEND_F_*` flags): an affinity choice holds while its backend is a
/// member, however the ring's slots moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingMemberKey {
    pub ring_id: u64,
    /// Network byte order.
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<RingMemberKey>() == 16);

/// Ring members kept, in all.
pub const MAX_RING_MEMBERS: u32 = 262_144;

/// A connected UDP socket the socket programs sent to a backend (key: its
/// socket cookie). When that backend leaves, `ingressd` closes the socket
/// (SOCK_DESTROY) so a long-lived client, a resolver, moves on; the entry
/// goes when the socket is released.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpConnected {
    /// The ring the backend was chosen from (a Service port).
    pub ring_id: u64,
    /// Network byte order.
    pub backend_addr: u32,
    pub backend_port: u16,
    pub pad: u16,
}
const _: () = assert!(size_of::<UdpConnected>() == 16);

/// Connected UDP sockets tracked (LRU; released ones are removed at once).
pub const MAX_UDP_CONNECTED: u32 = 65_536;

/// Translated TCP sockets whose reverse translation sits in
/// `SOCK4_TCP_REVNAT` at once (more go to socket storage).
pub const MAX_TCP_REVNAT: u32 = 65_536;

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no
    // invalid bit patterns.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Ring {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for RevNatEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for SockRevNat {}
    unsafe impl aya::Pod for SockLbState {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for UdpConnected {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for RefuseBucket {}
    unsafe impl aya::Pod for RingMemberKey {}
}
