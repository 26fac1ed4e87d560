//! A small IPv4 packet builder and checker, for packet tests, benchmarks
//! and anything else that needs to ask "what would the data path do?".
use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const IP_OFF: usize = ETH_HLEN;
pub const L4_OFF: usize = ETH_HLEN + 20;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One's-complement sum of 16-bit big-endian words.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut s = sum16(&src, 0);
    s = sum16(&dst, s);
    s + proto as u32 + len as u32
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(&NODE_MAC);
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = !fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Ethernet + IPv4 + TCP (20-byte header) + payload, checksums correct.
pub fn tcp(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    if flags & TCP_ACK != 0 {
        t[8..12].copy_from_slice(&1000u32.to_be_bytes());
    }
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = !fold(sum16(
        &t,
        pseudo(src.0.octets(), dst.0.octets(), 6, t.len()),
    ));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = eth(0x0800);
    p.extend_from_slice(&ipv4_header(src.0, dst.0, 6, t.len()));
    p.extend_from_slice(&t);
    p
}

/// Ethernet + IPv4 + UDP + payload, checksums correct.
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let mut c = !fold(sum16(
        &u,
        pseudo(src.0.octets(), dst.0.octets(), 17, u.len()),
    ));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = eth(0x0800);
    p.extend_from_slice(&ipv4_header(src.0, dst.0, 17, u.len()));
    p.extend_from_slice(&u);
    p
}

/// What a packet says, read back for assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
}

pub fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < L4_OFF + 4 || p[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &p[IP_OFF..];
    let port = |o: usize| u16::from_be_bytes([p[L4_OFF + o], p[L4_OFF + o + 1]]);
    Some(Parsed {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto: ip[9],
        sport: port(0),
        dport: port(2),
        ttl: ip[8],
    })
}

/// Checks the IPv4 header checksum and the TCP/UDP/ICMP checksum of a
/// whole frame; the error says which one is wrong.
pub fn verify_checksums(p: &[u8]) -> Result<(), String> {
    let ip = p.get(IP_OFF..IP_OFF + 20).ok_or("no IPv4 header")?;
    if fold(sum16(ip, 0)) != 0xffff {
        return Err(format!(
            "bad IPv4 header checksum {:02x}{:02x}",
            ip[10], ip[11]
        ));
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = p.get(L4_OFF..IP_OFF + tot).ok_or("truncated L4")?;
    let src: [u8; 4] = ip[12..16].try_into().map_err(|_| "src")?;
    let dst: [u8; 4] = ip[16..20].try_into().map_err(|_| "dst")?;
    let ok = match ip[9] {
        6 => fold(sum16(l4, pseudo(src, dst, 6, l4.len()))) == 0xffff,
        17 => l4[6..8] == [0, 0] || fold(sum16(l4, pseudo(src, dst, 17, l4.len()))) == 0xffff,
        1 => fold(sum16(l4, 0)) == 0xffff,
        other => return Err(format!("unexpected protocol {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum (protocol {})", ip[9]))
    }
}

/// Hex dump for failure messages.
pub fn hex(p: &[u8]) -> String {
    p.chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
