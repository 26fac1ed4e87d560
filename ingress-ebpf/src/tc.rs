//! `tc_revnat_egress`: replies from local backends leave with the frontend's
//! address and port as their source, so the client only ever sees the
//! address it connected to. Everything else continues untouched.
use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use ingress_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, counter};

use crate::{
    headers::{ETH_HLEN, ETH_P_IP, Ipv4Hdr, L4_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
    lb::{lookup_revnat_v4, refresh_owner_v4},
    maps::count,
};

/// `bpf_l4_csum_replace` flag: the field is part of the pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `bpf_l4_csum_replace` flag: a zero UDP checksum stays zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;

#[classifier]
pub fn tc_revnat_egress(ctx: TcContext) -> i32 {
    let _ = try_tc_revnat_egress(&ctx);
    // With tcx, "next": other programs on the hook still run.
    TC_ACT_UNSPEC
}

fn try_tc_revnat_egress(ctx: &TcContext) -> Result<(), i64> {
    let proto: u16 = ctx.load(12)?;
    if proto != ETH_P_IP.to_be() {
        return Ok(());
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if ip.ver_ihl != 0x45 || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Ok(());
    }
    let (csum_off, flags) = match ip.proto {
        IPPROTO_TCP => (TCP_CSUM_OFF, 0),
        IPPROTO_UDP => (UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    let ports: [u16; 2] = ctx.load(L4_OFF)?;
    let reply = FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: ports[0],
        dport: ports[1],
        proto: ip.proto,
        pad: [0; 3],
    };
    let Some(rev) = lookup_revnat_v4(&reply) else {
        return Ok(());
    };
    refresh_owner_v4(&reply, &rev);
    let l4_csum = L4_OFF + csum_off;
    ctx.l4_csum_replace(
        l4_csum,
        ip.src as u64,
        rev.src as u64,
        flags | BPF_F_PSEUDO_HDR | 4,
    )?;
    ctx.l3_csum_replace(IP_CSUM_OFF, ip.src as u64, rev.src as u64, 4)?;
    ctx.store(IP_SRC_OFF, &rev.src, 0)?;
    ctx.l4_csum_replace(l4_csum, ports[0] as u64, rev.sport as u64, flags | 2)?;
    ctx.store(L4_OFF, &rev.sport, 0)?;
    count(counter::REVNAT_EGRESS);
    Ok(())
}
