//! `sk_lookup_proxy`: connections to any Ingress VIP on :80 or :443 go to
//! the proxy's listening sockets, whatever address those are bound to, so
//! VIPs need no socket (nor address) of their own. Everything else goes on
//! to the usual socket lookup.
use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sk_lookup},
    maps::{HashMap, SockMap},
    programs::SkLookupContext,
};
use ingress_common::{IPPROTO_TCP, MAX_INGRESS_VIPS, PROXY_SOCKET_HTTP, PROXY_SOCKET_HTTPS};

const AF_INET: u32 = 2;

/// Ingress VIPs (network byte order) → 1.
#[map(name = "L7_VIPS")]
static VIPS: HashMap<u32, u32> = HashMap::pinned(MAX_INGRESS_VIPS, 0);

/// The proxy's listening sockets, by `PROXY_SOCKET_*` index.
#[map(name = "L7_SOCKETS")]
static SOCKETS: SockMap = SockMap::pinned(2, 0);

#[sk_lookup]
pub fn sk_lookup_proxy(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context points at the kernel's lookup for this program run.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != IPPROTO_TCP as u32 {
        return sk_action::SK_PASS;
    }
    // The key must live on the stack: the verifier refuses a pointer into
    // the context as a map key ("R2 type=ctx expected=fp"; Linux 6.18).
    // SAFETY: reading a field of the context.
    let vip: u32 = unsafe { core::ptr::read_volatile(&lookup.local_ip4) };
    // SAFETY: Copy value read once.
    if unsafe { VIPS.get(&vip) }.is_none() {
        return sk_action::SK_PASS;
    }
    // local_port is in host byte order here.
    let index = match lookup.local_port {
        80 => PROXY_SOCKET_HTTP,
        443 => PROXY_SOCKET_HTTPS,
        _ => return sk_action::SK_PASS,
    };
    // No socket there (proxy not started yet): fall back to a normal lookup.
    let _ = SOCKETS.redirect_sk_lookup(&ctx, index, 0);
    sk_action::SK_PASS
}
