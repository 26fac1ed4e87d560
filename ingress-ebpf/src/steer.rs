//! `sk_lookup_proxy`: connections to the proxy's ports go to the listening
//! sockets in `L7_SOCKETS`, on every address it listens on and on any
//! Ingress VIP (which then needs no socket, nor address, of its own).
//!
//! The socket there is the one the current `ingressd` put in once it was
//! ready, chosen outright (no `SO_REUSEPORT` spreading): while an upgrade
//! runs two `ingressd`s bound to the same ports, the new one's socket
//! takes every new connection from the moment it is in the map, and the
//! old one only finishes what it has. Everything else goes on to the usual
//! socket lookup.
use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sk_lookup},
    maps::{Array, HashMap, SockMap},
    programs::SkLookupContext,
};
use ingress_common::{IPPROTO_TCP, MAX_INGRESS_VIPS, MAX_PROXY_ADDRS};

const AF_INET: u32 = 2;
/// `BPF_SK_LOOKUP_F_NO_REUSEPORT`: the socket given, not a pick from its
/// reuseport group.
const NO_REUSEPORT: u64 = 1 << 1;

/// Ingress VIPs (network byte order) → 1.
#[map(name = "L7_VIPS")]
static VIPS: HashMap<u32, u32> = HashMap::pinned(MAX_INGRESS_VIPS, 0);

/// The proxy's listening sockets, by `PROXY_SOCKET_*` index.
#[map(name = "L7_SOCKETS")]
static SOCKETS: SockMap = SockMap::pinned(2, 0);

/// The proxy's listening ports (host byte order) → `PROXY_SOCKET_*` index.
#[map(name = "L7_PORTS")]
static PORTS: HashMap<u32, u32> = HashMap::pinned(2, 0);

/// Addresses the proxy listens on (network byte order; 0: every address
/// of this namespace) → 1.
#[map(name = "L7_LISTEN_ADDRS")]
static ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_PROXY_ADDRS, 0);

/// Who holds the proxy's ports, for `ingressd`s handing them over (never
/// read here): [0] the instance id whose sockets are in `L7_SOCKETS`,
/// [1] a starting one that will take them, [2] when it last said so
/// (CLOCK_MONOTONIC ns).
#[map(name = "L7_OWNER")]
static OWNER: Array<u64> = Array::pinned(3, 0);

#[sk_lookup]
pub fn sk_lookup_proxy(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context points at the kernel's lookup for this program run.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != IPPROTO_TCP as u32 {
        return sk_action::SK_PASS;
    }
    // local_port is in host byte order here.
    let port: u32 = lookup.local_port;
    // SAFETY: Copy value read once.
    let Some(index) = (unsafe { PORTS.get(&port) }).copied() else {
        return sk_action::SK_PASS;
    };
    // The key must live on the stack: the verifier refuses a pointer into
    // the context as a map key ("R2 type=ctx expected=fp"; Linux 6.18).
    // SAFETY: reading a field of the context.
    let ip: u32 = unsafe { core::ptr::read_volatile(&lookup.local_ip4) };
    let any: u32 = 0;
    // SAFETY: Copy values read once.
    let ours =
        unsafe { VIPS.get(&ip).is_some() || ADDRS.get(&ip).is_some() || ADDRS.get(&any).is_some() };
    if !ours {
        return sk_action::SK_PASS;
    }
    // No socket there (none ready yet): the usual lookup.
    let _ = SOCKETS.redirect_sk_lookup(&ctx, index, NO_REUSEPORT);
    sk_action::SK_PASS
}
