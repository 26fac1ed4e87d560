//! The node's interfaces: their addresses and the settings the data path needs.
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};

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
