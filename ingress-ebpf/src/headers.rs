//! Wire headers and bounds-checked packet access.
//!
//! Multi-byte fields hold network byte order as read from the packet.

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
pub const L4_OFF: usize = ETH_HLEN + IP_HLEN;
pub const ETH_P_IP: u16 = 0x0800;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offset of the checksum field inside the L4 header.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;

/// The one bounds check all packet access goes through.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}
