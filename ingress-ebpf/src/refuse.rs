//! Refusing a flow to a service without endpoints, at once and visibly:
//! a TCP RST for TCP, ICMP port unreachable for UDP, sent back out of the
//! interface the packet came in on (XDP_TX), from the frontend's address.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use ingress_common::{IPPROTO_TCP, REFUSE_BURST, REFUSE_INTERVAL_NS, counter};

use crate::{
    csum,
    headers::{
        ETH_HLEN, EthHdr, IP_HLEN, Ipv4Hdr, L4_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr,
        ptr_at,
    },
    maps::{REFUSE_BUCKET, count},
    xdp::Packet,
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_HLEN: usize = 8;
const TCP_HLEN: usize = 20;
/// ICMP carries the offending IP header and the first 8 bytes after it.
const ICMP_QUOTE: usize = IP_HLEN + 8;

/// Takes a token from this CPU's refusal bucket; false when it is empty.
/// Bounded refusals: a flood at a Service without endpoints cannot turn
/// this node into a reflector of RSTs and ICMP at line rate.
#[inline(always)]
fn refusal_allowed() -> bool {
    let Some(b) = REFUSE_BUCKET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
    let b = unsafe { &mut *b };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let cap = REFUSE_INTERVAL_NS * REFUSE_BURST;
    let credit = b.credit_ns.saturating_add(now.saturating_sub(b.last_ns));
    b.last_ns = now;
    let credit = if credit > cap { cap } else { credit };
    if credit < REFUSE_INTERVAL_NS {
        b.credit_ns = credit;
        return false;
    }
    b.credit_ns = credit - REFUSE_INTERVAL_NS;
    true
}

pub fn refuse_v4(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // Never answer a reset with a reset (and spend no token on it).
    if pkt.flow.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_RST != 0 {
        return xdp_action::XDP_DROP;
    }
    if !refusal_allowed() {
        count(counter::DROP_REFUSAL_RATE_LIMITED);
        return xdp_action::XDP_DROP;
    }
    if pkt.flow.proto == IPPROTO_TCP {
        return match reset_tcp_v4(ctx) {
            Some(v) => {
                count(counter::REFUSED_TCP_RST);
                v
            }
            None => xdp_action::XDP_DROP,
        };
    }
    match unreachable_udp_v4(ctx) {
        Some(v) => {
            count(counter::REFUSED_ICMP_UNREACH);
            v
        }
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn swap_eth(eth: &mut EthHdr) {
    let dst = eth.dst;
    eth.dst = eth.src;
    eth.src = dst;
}

/// A fresh IPv4 header from `src` to `dst`, checksum included.
#[inline(always)]
fn fill_ip(ip: &mut Ipv4Hdr, src: u32, dst: u32, proto: u8, tot_len: u16) {
    ip.ver_ihl = 0x45;
    ip.tos = 0;
    ip.tot_len = tot_len.to_be();
    ip.id = 0;
    ip.frag_off = 0x4000u16.to_be();
    ip.ttl = 64;
    ip.proto = proto;
    ip.check = 0;
    ip.src = src;
    ip.dst = dst;
    let mut sum = 0u64;
    sum += ((ip.ver_ihl as u16) | ((ip.tos as u16) << 8)) as u64;
    sum += ip.tot_len as u64 + ip.id as u64 + ip.frag_off as u64;
    sum += ((ip.ttl as u16) | ((ip.proto as u16) << 8)) as u64;
    sum = csum::sum32(sum, src);
    sum = csum::sum32(sum, dst);
    ip.check = !csum::fold(sum);
}

/// Turns the packet into the RST the stack would send (RFC 9293 §3.10.7.1).
#[inline(always)]
fn reset_tcp_v4(ctx: &XdpContext) -> Option<u32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let eth = ptr_at::<EthHdr>(data, end, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN)?;
    let tcp = ptr_at::<TcpHdr>(data, end, L4_OFF)?;
    // SAFETY: bounds checked by ptr_at; no other reference to the packet.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };

    let ip_len = u16::from_be(ip.tot_len) as u32;
    let doff = ((tcp.doff >> 4) as u32) * 4;
    let payload = ip_len.saturating_sub(IP_HLEN as u32 + doff);
    let flags = tcp.flags;
    let (seq, ack, out_flags) = if flags & TCP_ACK != 0 {
        (u32::from_be(tcp.ack), 0u32, TCP_RST)
    } else {
        let mut len = payload;
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        (
            0u32,
            u32::from_be(tcp.seq).wrapping_add(len),
            TCP_RST | TCP_ACK,
        )
    };

    swap_eth(eth);
    let (src, dst) = (ip.dst, ip.src);
    fill_ip(ip, src, dst, IPPROTO_TCP, (IP_HLEN + TCP_HLEN) as u16);

    let (sport, dport) = (tcp.dport, tcp.sport);
    tcp.sport = sport;
    tcp.dport = dport;
    tcp.seq = seq.to_be();
    tcp.ack = ack.to_be();
    tcp.doff = 5 << 4;
    tcp.flags = out_flags;
    tcp.window = 0;
    tcp.check = 0;
    tcp.urg = 0;
    // Pseudo-header + header, no payload.
    let mut sum = 0u64;
    sum = csum::sum32(sum, src);
    sum = csum::sum32(sum, dst);
    sum += (IPPROTO_TCP as u16).to_be() as u64 + (TCP_HLEN as u16).to_be() as u64;
    sum += sport as u64 + dport as u64;
    sum = csum::sum32(sum, tcp.seq);
    sum = csum::sum32(sum, tcp.ack);
    sum += ((tcp.doff as u16) | ((tcp.flags as u16) << 8)) as u64;
    tcp.check = !csum::fold(sum);

    let want = (ETH_HLEN + IP_HLEN + TCP_HLEN) as i32;
    let have = (end - data) as i32;
    if have > want {
        // SAFETY: shrinking only; pointers are not used after this.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - have) } != 0 {
            return None;
        }
    }
    Some(xdp_action::XDP_TX)
}

/// Turns the packet into ICMP port unreachable quoting its IP header and
/// first 8 payload bytes (RFC 792, RFC 1122 §3.2.2.1).
#[inline(always)]
fn unreachable_udp_v4(ctx: &XdpContext) -> Option<u32> {
    let grow = (IP_HLEN + ICMP_HLEN) as i32;
    // SAFETY: helper call; all pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let total = ETH_HLEN + IP_HLEN + ICMP_HLEN + ICMP_QUOTE;
    if data + total > end {
        return None;
    }
    let old_eth = ptr_at::<EthHdr>(data, end, grow as usize)?;
    let old_ip = ptr_at::<Ipv4Hdr>(data, end, grow as usize + ETH_HLEN)?;
    let eth = ptr_at::<EthHdr>(data, end, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN)?;
    let icmp = ptr_at::<[u16; 4]>(data, end, ETH_HLEN + IP_HLEN)?;
    let quote = ptr_at::<[u16; ICMP_QUOTE / 2]>(data, end, ETH_HLEN + IP_HLEN + ICMP_HLEN)?;
    // SAFETY: bounds checked by ptr_at; the old Ethernet header is copied
    // out before the new headers overwrite it.
    unsafe {
        let mut e = *old_eth;
        swap_eth(&mut e);
        let (src, dst) = ((*old_ip).dst, (*old_ip).src);
        *eth = e;
        fill_ip(
            &mut *ip,
            src,
            dst,
            IPPROTO_ICMP,
            (IP_HLEN + ICMP_HLEN + ICMP_QUOTE) as u16,
        );
        let icmp = &mut *icmp;
        let type_code = u16::from_ne_bytes([3, 3]);
        icmp[0] = type_code;
        icmp[1] = 0;
        icmp[2] = 0;
        icmp[3] = 0;
        let mut sum = type_code as u64;
        let q = &*quote;
        let mut i = 0;
        while i < ICMP_QUOTE / 2 {
            sum += q[i] as u64;
            i += 1;
        }
        icmp[1] = !csum::fold(sum);
    }
    let have = (end - data) as i32;
    let want = total as i32;
    if have > want {
        // SAFETY: shrinking only; pointers are not used after this.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - have) } != 0 {
            return None;
        }
    }
    Some(xdp_action::XDP_TX)
}
