//! Closing connected UDP sockets whose backend left the Service: the
//! socket programs record each one they send to a backend (by socket
//! cookie); when that backend goes, every network namespace this process
//! can enter is asked (sock_diag) for its connected UDP sockets, and those
//! recorded are destroyed (`SOCK_DESTROY`: the owner's next call fails with
//! ECONNABORTED and a resolver reconnects, to a live backend). kube-proxy
//! gets the same effect by clearing the Service's UDP conntrack entries.
//! Established TCP is left alone, as kube-proxy leaves it.
use std::{
    collections::{BTreeSet, HashSet},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use ingress_common::{UdpConnected, map_names};

use super::{
    netlink::{
        self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, u16_at,
        u32_at,
    },
    pins::open_map,
};
use crate::l4::RingMember;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// A connected UDP socket is in TCP_ESTABLISHED (1) for sock_diag.
const UDP_CONNECTED_STATES: u32 = 1 << 1;

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` + `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    head: netlink::Header,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`: family, state, timer, retrans, then the id.
const DIAG_ID_OFFSET: usize = 4;
const DIAG_MSG_LEN: usize = 72;

/// What one round of closing did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closed {
    pub sockets: usize,
    pub namespaces: usize,
    /// Namespaces that could not be entered (no CAP_SYS_ADMIN, say).
    pub unreachable: usize,
}

/// Cookies of the recorded connected UDP sockets sent to an endpoint of
/// `left` through its ring.
pub fn sockets_to(pin_path: &Path, left: &BTreeSet<RingMember>) -> anyhow::Result<HashSet<u64>> {
    let map: HashMap<MapData, u64, UdpConnected> =
        open_map(pin_path, map_names::UDP_CONNECTED)?.try_into()?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, e)| left.contains(&(e.ring_id, e.backend_addr, e.backend_port)))
        .map(|(cookie, _)| cookie)
        .collect())
}

/// Destroys the sockets with these cookies, in every network namespace
/// found (this one, `/proc/*/ns/net`, `/run/netns`, `/var/run/netns`).
pub fn close_udp_sockets(cookies: &HashSet<u64>) -> anyhow::Result<Closed> {
    let namespaces = network_namespaces();
    let cookies = cookies.clone();
    // setns() moves only the calling thread: a thread of its own, so the
    // runtime's threads stay where they are.
    std::thread::spawn(move || {
        let mut closed = Closed::default();
        let home = std::fs::File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        for ns in &namespaces {
            let entered = std::fs::File::open(ns).and_then(|f| {
                // SAFETY: setns on this thread with a namespace descriptor.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
            if entered.is_err() {
                closed.unreachable += 1;
                continue;
            }
            closed.namespaces += 1;
            match destroy_in_current_netns(&cookies) {
                Ok(n) => closed.sockets += n,
                Err(e) => tracing::debug!(netns = %ns.display(), error = %format!("{e:#}"), "sock_diag failed"),
            }
        }
        // SAFETY: back to where the thread started (it ends right after).
        unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        Ok(closed)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the socket-closing thread panicked"))?
}

/// One path per distinct network namespace, this process's first.
fn network_namespaces() -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p)
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    };
    consider(PathBuf::from("/proc/self/ns/net"));
    for dir in ["/run/netns", "/var/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            consider(e.path());
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            consider(e.path().join("ns/net"));
        }
    }
    out
}

/// The id of each connected UDP socket of this namespace whose cookie is
/// one of `cookies`, then each of them destroyed.
fn destroy_in_current_netns(cookies: &HashSet<u64>) -> anyhow::Result<usize> {
    let fd = netlink::socket(NETLINK_SOCK_DIAG, "sock_diag")?;
    let dump = Request {
        head: netlink::Header::of::<Request>(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1),
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: UDP_CONNECTED_STATES,
        ..Default::default()
    };
    netlink::send(&fd, &dump)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    // Bounded by the namespace's sockets: the kernel ends with DONE.
    'dump: loop {
        let n = netlink::recv(&fd, &mut buf)?;
        if n == 0 {
            break;
        }
        for (kind, m) in netlink::messages(&buf[..n]) {
            match kind {
                NLMSG_DONE | NLMSG_ERROR => break 'dump,
                SOCK_DIAG_BY_FAMILY if m.len() >= DIAG_MSG_LEN => {
                    let i = DIAG_ID_OFFSET;
                    let mut id = SockId {
                        sport: u16_at(m, i),
                        dport: u16_at(m, i + 2),
                        ifindex: u32_at(m, i + 36),
                        cookie: [u32_at(m, i + 40), u32_at(m, i + 44)],
                        ..Default::default()
                    };
                    for k in 0..4 {
                        id.src[k] = u32_at(m, i + 4 + 4 * k);
                        id.dst[k] = u32_at(m, i + 20 + 4 * k);
                    }
                    let cookie = id.cookie[0] as u64 | (id.cookie[1] as u64) << 32;
                    if cookies.contains(&cookie) {
                        found.push(id);
                    }
                }
                _ => {}
            }
        }
    }
    let mut destroyed = 0;
    for (seq, id) in found.into_iter().enumerate() {
        let req = Request {
            head: netlink::Header::of::<Request>(
                SOCK_DESTROY,
                NLM_F_REQUEST | NLM_F_ACK,
                seq as u32 + 2,
            ),
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_UDP as u8,
            id,
            ..Default::default()
        };
        netlink::send(&fd, &req)?;
        let n = netlink::recv(&fd, &mut buf)?;
        // The ack: an NLMSG_ERROR whose error is 0.
        if n >= NLMSG_HDRLEN + 4
            && u16_at(&buf, 4) == NLMSG_ERROR
            && u32_at(&buf, NLMSG_HDRLEN) == 0
        {
            destroyed += 1;
        }
    }
    Ok(destroyed)
}
