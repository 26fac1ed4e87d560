//! ClusterIP at the socket (cgroup v2 hooks), as Cilium's socket LB: a
//! `connect()` or `sendmsg()` to a frontend is sent to a backend once, at
//! the system call, so the packets never carry the Service address and no
//! conntrack, NAT or per-packet work is needed.
//!
//! `cgroup_connect4` (TCP, connected UDP) and `cgroup_sendmsg4`
//! (unconnected UDP) choose the backend from the same rings as the packet
//! path and remember the translation: a TCP socket's in a preallocated
//! table by socket cookie (emptied at `sock_release`), anything else's, or
//! a TCP socket's when that table is full, in the socket's own storage
//! (which costs an allocation per socket: most of a translation's time);
//! `cgroup_recvmsg4` and `cgroup_getpeername4` read it back, so a reply
//! seems to come from the Service address (resolvers compare it) and the
//! peer name is the one the caller connected to.
//!
//! Fail-open: anything that is not IPv4 TCP/UDP to one of our frontends
//! proceeds untouched. A frontend without endpoints fails the call with
//! ECONNREFUSED at once (kube-proxy's REJECT); a `Local` policy without a
//! local endpoint fails it with EHOSTUNREACH (kube-proxy drops that traffic;
//! failing at once is what a dropped packet would end in, minus the wait).
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval,
    },
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use ingress_common::{
    FlowKey, IPPROTO_TCP, IPPROTO_UDP, SOCK_REVNAT_SLOTS, SVC_F_AFFINITY_CLIENT_IP, SVC_F_EXTERNAL,
    SVC_F_LOCAL_ONLY, SVC_F_SOURCE_RANGES, SockLbState, SockRevNat, UdpConnected, sock_counter,
};

use crate::{
    lb::{
        Selected, affine_backend, empty_ring_verdict, lookup_in_cluster_v4, lookup_service_v4,
        ring_slot,
    },
    maps::{RINGS, SOCK_REVNAT, TCP_REVNAT, UDP_CONNECTED, count_sock},
};

/// Return values of cgroup sock_addr programs.
const SYS_REJECT: i32 = 0;
const SYS_PROCEED: i32 = 1;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[cgroup_sock_addr(connect4)]
pub fn cgroup_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, Family::V4)
}

/// IPv6 sockets connecting to IPv4-mapped addresses (`::ffff:a.b.c.d`):
/// Java's and other dual-stack clients' way of reaching a cluster IP.
#[cgroup_sock_addr(connect6)]
pub fn cgroup_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, Family::V6Mapped)
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, family: Family) -> i32 {
    match translate(ctx, family) {
        Ok((proto, ring_id, rev)) => {
            if proto == IPPROTO_UDP {
                track_udp_connected(ctx, ring_id, &rev);
            }
            count_sock(sock_counter::CONNECT_TRANSLATED);
            SYS_PROCEED
        }
        Err(verdict) => verdict,
    }
}

/// A socket is being released: it is no longer one to close.
#[cgroup_sock(sock_release)]
pub fn cgroup_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context the kernel handed us.
    let (protocol, dst_port) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).dst_port) };
    // A socket that never connected (a listener, an unconnected UDP
    // socket) was never tracked: most releases stop at these reads.
    if dst_port == 0 {
        return SYS_PROCEED;
    }
    // SAFETY: helper call on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    if protocol == IPPROTO_UDP as u32 {
        let _ = UDP_CONNECTED.remove(&cookie);
    } else if protocol == IPPROTO_TCP as u32 && TCP_REVNAT.get_ptr(&cookie).is_some() {
        // Looked up first: a delete takes the bucket's lock even for a key
        // that is not there, and most TCP sockets are none of ours.
        let _ = TCP_REVNAT.remove(&cookie);
    }
    SYS_PROCEED
}

/// Remembers a connected UDP socket and its backend, so `ingressd` can
/// close it when that backend leaves (kube-proxy clears UDP conntrack for
/// the same reason: a client that keeps its socket would talk to a gone
/// endpoint forever).
#[inline(always)]
fn track_udp_connected(ctx: &SockAddrContext, ring_id: u64, rev: &SockRevNat) {
    // SAFETY: helper call on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let entry = UdpConnected {
        ring_id,
        backend_addr: rev.backend_addr,
        backend_port: rev.backend_port,
        pad: 0,
    };
    // Fail open: untracked, the socket is only not closed for us.
    let _ = UDP_CONNECTED.insert(&cookie, &entry, 0);
}

#[cgroup_sock_addr(sendmsg4)]
pub fn cgroup_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn cgroup_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, Family::V6Mapped)
}

#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    match translate(ctx, family) {
        Ok(_) => {
            count_sock(sock_counter::SENDMSG_TRANSLATED);
            SYS_PROCEED
        }
        Err(verdict) => verdict,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn cgroup_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4);
    // recvmsg hooks must return 1.
    SYS_PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn cgroup_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V6Mapped);
    SYS_PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn cgroup_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4);
    SYS_PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn cgroup_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V6Mapped);
    SYS_PROCEED
}

/// How the call names its address: an IPv4 socket, or an IPv6 socket with
/// an IPv4-mapped address (any other IPv6 address is none of ours).
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6Mapped,
}

/// `::ffff:0:0/96`'s third word, in network byte order.
const V4_MAPPED: u32 = 0x0000_ffffu32.to_be();

/// The IPv4 address (network byte order) the call names, if any.
#[inline(always)]
fn user_addr(sa: &bpf_sock_addr, family: Family) -> Option<u32> {
    match family {
        Family::V4 => Some(sa.user_ip4),
        Family::V6Mapped => {
            // One 4-byte load per word: the verifier's allowed access size.
            // SAFETY: reads of the context's fields.
            let w = |i: usize| unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) };
            (w(0) == 0 && w(1) == 0 && w(2) == V4_MAPPED).then(|| w(3))
        }
    }
}

#[inline(always)]
fn set_user_addr(sa: &mut bpf_sock_addr, family: Family, addr: u32) {
    match family {
        Family::V4 => sa.user_ip4 = addr,
        Family::V6Mapped => sa.user_ip6[3] = addr,
    }
}

/// The destination of the call as a flow key (only the fields the service
/// lookup reads), or `Err(SYS_PROCEED)` when it is none of ours.
#[inline(always)]
fn destination(ctx: &SockAddrContext, family: Family) -> Result<FlowKey, i32> {
    // SAFETY: the context the kernel handed us.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = match sa.protocol {
        p if p == IPPROTO_TCP as u32 => IPPROTO_TCP,
        p if p == IPPROTO_UDP as u32 => IPPROTO_UDP,
        _ => return Err(SYS_PROCEED),
    };
    Ok(FlowKey {
        src: 0,
        dst: user_addr(sa, family).ok_or(SYS_PROCEED)?,
        sport: 0,
        // The port sits in the low 16 bits, in network byte order.
        dport: sa.user_port as u16,
        proto,
        pad: [0; 3],
    })
}

/// Fails the system call with `errno`.
#[inline(always)]
fn fail(errno: i32, counter: u32) -> i32 {
    count_sock(counter);
    // SAFETY: plain helper call; a negative value becomes the call's error.
    unsafe { bpf_set_retval(-errno) };
    SYS_REJECT
}

/// Frontend → backend: the address the call goes to is rewritten, and the
/// socket remembers how to undo it. Gives the protocol, the ring and the
/// translation.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family) -> Result<(u8, u64, SockRevNat), i32> {
    let dst = destination(ctx, family)?;
    let svc = lookup_service_v4(&dst).ok_or(SYS_PROCEED)?;
    // A LoadBalancer IP with loadBalancerSourceRanges is left to the packet
    // path, which checks the caller's address against them.
    if svc.flags & SVC_F_SOURCE_RANGES != 0 {
        return Err(SYS_PROCEED);
    }
    // Inside the cluster, a Local external frontend serves every endpoint.
    let svc =
        if svc.flags & (SVC_F_EXTERNAL | SVC_F_LOCAL_ONLY) == SVC_F_EXTERNAL | SVC_F_LOCAL_ONLY {
            lookup_in_cluster_v4(&dst).unwrap_or(svc)
        } else {
            svc
        };
    let ring = RINGS.get_ptr(svc.ring_id).ok_or(SYS_PROCEED)?;
    // SAFETY: pointer into a map value that stays valid for this program run.
    let ring = unsafe { &*ring };
    if ring.count == 0 {
        return Err(match empty_ring_verdict(ring) {
            Selected::NoLocalEndpoint => fail(EHOSTUNREACH, sock_counter::DROPPED),
            _ => fail(ECONNREFUSED, sock_counter::REFUSED),
        });
    }
    // TCP: any backend, each connection anew. UDP: one per socket, so an
    // unconnected socket's datagrams (QUIC, a resolver) stay with one
    // backend, as kube-proxy's conntrack keeps one 5-tuple on one.
    let hash = if dst.proto == IPPROTO_UDP {
        // SAFETY: helper call on our own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        (cookie ^ (cookie >> 32) ^ svc.ring_id) as u32
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_get_prandom_u32() }
    };
    let backend = if svc.flags & SVC_F_AFFINITY_CLIENT_IP != 0 {
        // The caller is its network namespace: a pod, or the host.
        // SAFETY: helper call on our own context.
        let client = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
        let (backend, held) = affine_backend(client, &svc, ring, hash).ok_or(SYS_PROCEED)?;
        if held {
            count_sock(sock_counter::AFFINITY_HIT);
        }
        backend
    } else {
        ring_slot(ring, hash).ok_or(SYS_PROCEED)?.0
    };
    let rev = SockRevNat {
        backend_addr: backend.addr,
        service_addr: dst.dst,
        backend_port: backend.port,
        service_port: dst.dport,
    };
    if dst.proto == IPPROTO_TCP {
        remember_tcp(ctx, rev);
    } else {
        remember(ctx, rev);
    }
    // SAFETY: the context the kernel handed us; these fields are writable
    // in connect and sendmsg hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    set_user_addr(sa, family, backend.addr);
    sa.user_port = backend.port as u32;
    Ok((dst.proto, svc.ring_id, rev))
}

/// Records a TCP socket's one translation (TCP has one peer) in the
/// preallocated table, or in its storage when the table is full.
#[inline(always)]
fn remember_tcp(ctx: &SockAddrContext, rev: SockRevNat) {
    // SAFETY: helper call on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if TCP_REVNAT.insert(&cookie, &rev, 0).is_err() {
        count_sock(sock_counter::TCP_REVNAT_FULL);
        remember(ctx, rev);
    }
}

/// Records a translation in the socket's storage: the slot already holding
/// that backend, else the next one round-robin.
#[inline(always)]
fn remember(ctx: &SockAddrContext, rev: SockRevNat) {
    // SAFETY: the helper checks the socket; a null result is handled.
    let state = unsafe { SOCK_REVNAT.get_or_insert_ptr_mut(ctx, None) };
    if state.is_null() {
        // Fail open: the call still reaches the backend; only replies
        // and getpeername() show the backend's address.
        return;
    }
    // SAFETY: non-null pointer into this socket's storage.
    let state: &mut SockLbState = unsafe { &mut *state };
    let mut i = 0;
    while i < SOCK_REVNAT_SLOTS {
        let e = &mut state.entries[i];
        if e.backend_addr == rev.backend_addr && e.backend_port == rev.backend_port {
            *e = rev;
            return;
        }
        i += 1;
    }
    let next = state.next as usize % SOCK_REVNAT_SLOTS;
    // SAFETY: reading a local (the verifier loses the modulo's bound, as in
    // lb::ring_slot).
    let next = unsafe { core::ptr::read_volatile(&next) };
    if let Some(e) = state.entries.get_mut(next) {
        *e = rev;
    }
    state.next = ((next + 1) % SOCK_REVNAT_SLOTS) as u32;
}

/// Backend → frontend in the address a reply or getpeername() reports.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: Family) {
    // SAFETY: the context the kernel handed us; the address and port are
    // readable and writable in recvmsg and getpeername hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr) = user_addr(sa, family) else {
        return;
    };
    let port = sa.user_port as u16;
    let undo = |sa: &mut bpf_sock_addr, e: &SockRevNat| {
        set_user_addr(sa, family, e.service_addr);
        sa.user_port = e.service_port as u32;
        count_sock(sock_counter::REVERSED);
    };
    if sa.protocol == IPPROTO_TCP as u32 {
        // SAFETY: helper call on our own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if let Some(e) = TCP_REVNAT.get_ptr(&cookie) {
            // SAFETY: pointer into a map value, valid for this program run.
            let e = unsafe { *e };
            if e.backend_addr == addr && e.backend_port == port {
                undo(sa, &e);
                return;
            }
        }
    }
    // SAFETY: the helper checks the socket; a null result is handled.
    let state = unsafe { SOCK_REVNAT.get_ptr_mut(ctx) };
    if state.is_null() {
        return;
    }
    // SAFETY: non-null pointer into this socket's storage.
    let state: &SockLbState = unsafe { &*state };
    let mut i = 0;
    while i < SOCK_REVNAT_SLOTS {
        let e = &state.entries[i];
        if e.backend_addr == addr && e.backend_port == port && e.backend_addr != 0 {
            undo(sa, e);
            return;
        }
        i += 1;
    }
}
