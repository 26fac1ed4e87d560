//! `xdp_lb_ingress`: parse → reverse NAT of SNATed replies → service lookup
//! → conntrack / backend selection → rewrite → verdict.
//!
//! Fail-open: anything that is not an IPv4 TCP/UDP packet to one of our
//! frontends passes to the stack untouched, counted by reason.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    macros::xdp,
    programs::XdpContext,
};
use ingress_common::{BACKEND_F_REMOTE, FlowKey, IPPROTO_TCP, IPPROTO_UDP, RevNatEntry, counter};

use crate::{
    csum,
    headers::{
        ETH_HLEN, ETH_P_IP, EthHdr, IP_HLEN, Ipv4Hdr, L4_OFF, TCP_ACK, TCP_SYN, TcpHdr, ptr_at,
    },
    lb::{
        Selected, clear_stale_revnat_v4, lookup_revnat_v4, lookup_service_v4, refresh_owner_v4,
        select_backend, source_allowed_v4,
    },
    maps::{REDIRECT_IFS, config, count},
    refuse,
};

#[xdp]
pub fn xdp_lb_ingress(ctx: XdpContext) -> u32 {
    match try_xdp_lb_ingress(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// Passes everything. Attached to the far end of a veth whose near end
/// runs `xdp_lb_ingress` in native mode: the kernel only flushes XDP_TX
/// frames to a veth peer that has an XDP program of its own (Linux 6.18
/// `veth_xdp_flush`); without one they wait for unrelated traffic.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// What the parser learned; all fields in network byte order.
pub struct Packet {
    pub flow: FlowKey,
    pub tcp_flags: u8,
}

fn try_xdp_lb_ingress(ctx: &XdpContext) -> Result<u32, u32> {
    let pkt = parse_ipv4(ctx)?;
    let cfg = config();
    let dport = u16::from_be(pkt.flow.dport);
    if dport >= cfg.snat_port_min && dport <= cfg.snat_port_max && cfg.snat_port_min != 0 {
        if let Some(rev) = lookup_revnat_v4(&pkt.flow) {
            refresh_owner_v4(&pkt.flow, &rev);
            rewrite_v4(ctx, &pkt.flow, &rev)?;
            count(counter::REVNAT_SNAT_REPLY);
            return Ok(forward_fib(ctx));
        }
    }
    let Some(svc) = lookup_service_v4(&pkt.flow) else {
        if pkt.flow.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            clear_stale_revnat_v4(&pkt.flow);
        }
        count(counter::PASS_NOT_SERVICE);
        return Ok(xdp_action::XDP_PASS);
    };
    // Every packet, not only a flow's first: a range removed takes effect
    // on established flows too, as kube-proxy's firewall chain does.
    if !source_allowed_v4(&svc, pkt.flow.src) {
        count(counter::DROP_SOURCE_RANGE);
        return Err(xdp_action::XDP_DROP);
    }
    match select_backend(&pkt.flow, &svc, pkt.tcp_flags) {
        None => {
            count(counter::DROP_REWRITE_FAILED);
            Err(xdp_action::XDP_DROP)
        }
        Some(Selected::NoFlow) => {
            count(counter::PASS_TCP_WITHOUT_FLOW);
            Ok(xdp_action::XDP_PASS)
        }
        Some(Selected::Drop(reason)) => {
            count(reason);
            Err(xdp_action::XDP_DROP)
        }
        Some(Selected::NoEndpoint) => Ok(refuse::refuse_v4(ctx, &pkt)),
        Some(Selected::NoLocalEndpoint) => {
            count(counter::DROP_NO_LOCAL_ENDPOINT);
            Err(xdp_action::XDP_DROP)
        }
        Some(Selected::Backend(ct)) => {
            // The packet's new addresses (the rewrite takes the same shape
            // as a reverse-NAT entry): to the backend, from the client or,
            // for a remote backend, from this node's SNAT address.
            let mut to = RevNatEntry {
                src: pkt.flow.src,
                dst: ct.backend.addr,
                sport: pkt.flow.sport,
                dport: ct.backend.port,
                pad: 0,
            };
            if ct.backend.flags & BACKEND_F_REMOTE != 0 {
                to.src = ct.snat_addr;
                to.sport = ct.snat_port;
                rewrite_v4(ctx, &pkt.flow, &to)?;
                return Ok(forward_fib(ctx));
            }
            rewrite_v4(ctx, &pkt.flow, &to)?;
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// Ethernet + IPv4 without options, not a fragment, TCP or UDP.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext) -> Result<Packet, u32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let pass = |reason| {
        count(reason);
        xdp_action::XDP_PASS
    };
    let eth: *const EthHdr = ptr_at(data, end, 0).ok_or_else(|| pass(counter::PASS_TRUNCATED))?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Err(pass(counter::PASS_NOT_IPV4));
    }
    let ip: *const Ipv4Hdr =
        ptr_at(data, end, ETH_HLEN).ok_or_else(|| pass(counter::PASS_TRUNCATED))?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { *ip };
    if ip.ver_ihl >> 4 != 4 {
        return Err(pass(counter::PASS_NOT_IPV4));
    }
    if ip.ver_ihl & 0x0f != 5 {
        return Err(pass(counter::PASS_IP_OPTIONS));
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(pass(counter::PASS_FRAGMENT));
    }
    if (u16::from_be(ip.tot_len) as usize) < IP_HLEN {
        return Err(pass(counter::PASS_TRUNCATED));
    }
    let mut flow = FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        pad: [0; 3],
    };
    let mut tcp_flags = 0;
    match ip.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr =
                ptr_at(data, end, L4_OFF).ok_or_else(|| pass(counter::PASS_TRUNCATED))?;
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { *tcp };
            flow.sport = tcp.sport;
            flow.dport = tcp.dport;
            tcp_flags = tcp.flags;
        }
        IPPROTO_UDP => {
            let udp: *const crate::headers::UdpHdr =
                ptr_at(data, end, L4_OFF).ok_or_else(|| pass(counter::PASS_TRUNCATED))?;
            // SAFETY: bounds checked by ptr_at.
            let udp = unsafe { *udp };
            flow.sport = udp.sport;
            flow.dport = udp.dport;
        }
        _ => return Err(pass(counter::PASS_UNKNOWN_PROTO)),
    }
    Ok(Packet { flow, tcp_flags })
}

/// Rewrites addresses and ports from `flow` to `to` with incremental
/// checksums of the IP header and of TCP/UDP (pseudo-header included).
#[inline(always)]
fn rewrite_v4(ctx: &XdpContext, flow: &FlowKey, to: &RevNatEntry) -> Result<(), u32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let fail = || {
        count(counter::DROP_REWRITE_FAILED);
        xdp_action::XDP_DROP
    };
    let ip: *mut Ipv4Hdr = ptr_at(data, end, ETH_HLEN).ok_or_else(fail)?;
    // SAFETY: bounds checked by ptr_at; no other reference to the packet.
    let ip = unsafe { &mut *ip };
    let mut check = ip.check;
    check = csum::replace4(check, flow.src, to.src);
    check = csum::replace4(check, flow.dst, to.dst);
    ip.check = check;
    ip.src = to.src;
    ip.dst = to.dst;

    let csum_off = if flow.proto == IPPROTO_TCP { 16 } else { 6 };
    let l4: *mut [u16; 4] = ptr_at(data, end, L4_OFF).ok_or_else(fail)?;
    // SAFETY: bounds checked by ptr_at (ports are the first 4 bytes of both).
    let ports = unsafe { &mut *l4 };
    let check_ptr: *mut u16 = ptr_at(data, end, L4_OFF + csum_off).ok_or_else(fail)?;
    // SAFETY: bounds checked by ptr_at.
    let old = unsafe { *check_ptr };
    // A zero UDP checksum means "none": leave it so.
    if !(flow.proto == IPPROTO_UDP && old == 0) {
        let mut c = old;
        c = csum::replace4(c, flow.src, to.src);
        c = csum::replace4(c, flow.dst, to.dst);
        c = csum::replace2(c, flow.sport, to.sport);
        c = csum::replace2(c, flow.dport, to.dport);
        if flow.proto == IPPROTO_UDP && c == 0 {
            c = 0xffff;
        }
        // SAFETY: bounds checked by ptr_at.
        unsafe { *check_ptr = c };
    }
    ports[0] = to.sport;
    ports[1] = to.dport;
    Ok(())
}

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// Sends a rewritten packet on towards its new destination: route lookup,
/// MAC rewrite, TTL decrement, then out the same interface (XDP_TX) or
/// another one (redirect). Without a route or neighbour entry the packet
/// goes to the stack, which resolves it for the next one.
#[inline(always)]
fn forward_fib(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    if ip.ttl <= 1 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = ip.src;
    params.__bindgen_anon_4.ipv4_dst = ip.dst;
    // SAFETY: params is a valid, fully initialised struct of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        count(counter::FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    // Decided before anything is rewritten: the stack forwards what it
    // gets here as if we had not looked.
    let same_iface = params.ifindex == ctx.ingress_ifindex() as u32;
    // SAFETY: Copy value read once.
    if !same_iface && unsafe { REDIRECT_IFS.get(&params.ifindex) }.is_none() {
        count(counter::PASS_FORWARD_BY_STACK);
        return xdp_action::XDP_PASS;
    }
    // TTL sits in the high byte of the TTL/protocol word (network order).
    let old = ((ip.ttl as u16) << 8 | ip.proto as u16).to_be();
    ip.ttl -= 1;
    let new = ((ip.ttl as u16) << 8 | ip.proto as u16).to_be();
    ip.check = csum::replace2(ip.check, old, new);
    eth.dst = params.dmac;
    eth.src = params.smac;
    if same_iface {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(params.ifindex, 0) as u32 }
}
