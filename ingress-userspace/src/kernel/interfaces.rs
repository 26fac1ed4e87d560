//! The node's interfaces: their addresses and the settings the data path needs.
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};

use super::netlink;
use crate::l4::model::Route;

/// Kernel settings the data path relies on, per interface:
/// `accept_local`: a flow to a remote endpoint whose next hop is not yet
/// resolved goes to the stack with this node's address as its (SNAT)
/// source; the stack must forward it (resolving the neighbour for the next
/// packets, which XDP then forwards itself) rather than drop it as a martian.
/// Also warns when forwarding is off, which remote endpoints and local pods
/// behind a bridge need.
pub fn prepare_interface(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    let already = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1");
    if !already && let Err(e) = std::fs::write(&path, "1") {
        // A container gets /proc/sys read-only unless privileged: the
        // node's own configuration must set it then.
        tracing::warn!(
            error = %e,
            "cannot set {path}: set net.ipv4.conf.{iface}.accept_local=1 on the node, or the first packet of a flow to another node's endpoint may be dropped (the client retransmits)"
        );
    }
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forwarding.trim() != "1" {
        tracing::warn!(
            "net.ipv4.ip_forward is 0: endpoints on other nodes and local pods behind a bridge are unreachable"
        );
    }
    Ok(())
}

/// IPv4 addresses of an interface (for the `--node-ip` default).
pub fn interface_addrs(iface: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let name = std::ffi::CString::new(iface).with_context(|| format!("--interface {iface:?}"))?;
    // SAFETY: a valid C string.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("--interface {iface}: no such interface");
    }
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a valid list node from getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null C string from getifaddrs.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: non-null sockaddr from getifaddrs.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if name.to_bytes() == iface.as_bytes() && family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The driver behind an interface (`veth`, `mlx5_core`, ...), by ethtool's
/// GDRVINFO; None when it will not say.
pub fn interface_driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 20],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 20],
    };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a drvinfo buffer.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let len = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// The index of an interface (0: none by that name).
pub fn interface_index(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// How an XDP program sits on an interface (rtnetlink's
/// `IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    None,
    /// In the driver (native).
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded, or several at once.
    Other,
}

/// The XDP mode in force on the interface with this index, read from the
/// kernel (rtnetlink), so a restart can tell whether a pinned link is in
/// the mode it is asked for.
pub fn xdp_attached(ifindex: u32) -> anyhow::Result<XdpAttached> {
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_ATTACHED: u16 = 2;
    /// `struct nlmsghdr` + `struct ifinfomsg`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Request {
        head: netlink::Header,
        family: u8,
        pad: u8,
        link_type: u16,
        index: i32,
        flags: u32,
        change: u32,
    }
    const IFINFOMSG_LEN: usize = 16;
    let fd = netlink::socket(libc::NETLINK_ROUTE, "rtnetlink")?;
    netlink::send(
        &fd,
        &Request {
            head: netlink::Header::of::<Request>(RTM_GETLINK, netlink::NLM_F_REQUEST, 1),
            family: libc::AF_UNSPEC as u8,
            pad: 0,
            link_type: 0,
            index: ifindex as i32,
            flags: 0,
            change: 0,
        },
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = netlink::recv(&fd, &mut buf)?;
    let (kind, msg) = netlink::messages(&buf[..n])
        .next()
        .context("rtnetlink gave no answer")?;
    if kind == netlink::NLMSG_ERROR {
        let errno = msg
            .get(..4)
            .map(|e| -(netlink::u32_at(e, 0) as i32))
            .unwrap_or(0);
        bail!(
            "rtnetlink: interface {ifindex}: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    if kind != RTM_NEWLINK || msg.len() < IFINFOMSG_LEN {
        bail!("rtnetlink: unexpected answer of type {kind}");
    }
    let mode = netlink::attributes(&msg[IFINFOMSG_LEN..])
        .find(|(t, _)| *t == IFLA_XDP)
        .and_then(|(_, xdp)| netlink::attributes(xdp).find(|(t, _)| *t == IFLA_XDP_ATTACHED))
        .and_then(|(_, v)| v.first().copied());
    Ok(match mode {
        None | Some(0) => XdpAttached::None,
        Some(1) => XdpAttached::Driver,
        Some(2) => XdpAttached::Generic,
        Some(_) => XdpAttached::Other,
    })
}

/// The interfaces XDP may redirect forwarded packets to: ours, but a veth
/// only when native mode was asked for (its peer then runs XDP, as the
/// user vouched); anything else is left to the stack.
pub fn redirect_targets(interfaces: &[String], native_asked: bool) -> Vec<u32> {
    interfaces
        .iter()
        .filter(|i| native_asked || interface_driver(i).as_deref() != Some("veth"))
        .map(|i| interface_index(i))
        .filter(|i| *i != 0)
        .collect()
}

/// The main routing table, from `/proc/net/route` (empty when unreadable).
pub fn main_routes() -> Vec<Route> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_routes(&t))
        .unwrap_or_default()
}

/// `/proc/net/route`: Iface, Destination, Gateway, Flags, RefCnt, Use,
/// Metric, Mask, ...; addresses as hexadecimal in network byte order.
fn parse_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
    let mut out: Vec<Route> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dest, gw, mask) = (hex(f[1])?, hex(f[2])?, hex(f[7])?);
            Some(Route {
                dest: Ipv4Addr::from(dest),
                prefix: mask.count_ones() as u8,
                gateway: (gw != 0).then(|| Ipv4Addr::from(gw)),
                dev: f[0].to_string(),
                metric: f[6].parse().ok()?,
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_is_read_in_network_order() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    eth0\t000212C6\t030012C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_routes(text);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dest, Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(routes[0].prefix, 24);
        assert_eq!(routes[0].gateway, None);
        assert_eq!(routes[1].dest, Ipv4Addr::new(198, 18, 2, 0));
        assert_eq!(routes[1].gateway, Some(Ipv4Addr::new(198, 18, 0, 3)));
    }
}
