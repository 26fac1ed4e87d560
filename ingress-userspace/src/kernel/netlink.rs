//! The little of netlink the kernel edge speaks by hand (sock_diag to close
//! sockets, rtnetlink to read an interface's XDP state): a socket whose
//! reads are bounded in time, and the walk over messages and attributes.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context as _;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// `struct nlmsghdr`: the head of every request.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Header {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl Header {
    /// The header of a request `T` (which starts with it) of this type.
    pub fn of<T>(kind: u16, flags: u16, seq: u32) -> Self {
        Self {
            len: std::mem::size_of::<T>() as u32,
            kind,
            flags,
            seq,
            pid: 0,
        }
    }
}

/// A netlink socket of `protocol` whose reads give up after 2 s, so a
/// kernel (or namespace) that never answers cannot hold a loop.
pub fn socket(protocol: i32, what: &str) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening a {what} socket"));
    }
    // SAFETY: a descriptor we just made.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

/// Sends one request, `T` a plain `repr(C)` value starting with its
/// `nlmsghdr`.
pub fn send<T: Copy>(fd: &OwnedFd, req: &T) -> anyhow::Result<()> {
    // SAFETY: `req` is a plain value of the size given.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (req as *const T).cast(),
            std::mem::size_of::<T>(),
            0,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("sending a netlink request");
    }
    Ok(())
}

pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> anyhow::Result<usize> {
    // SAFETY: receiving into a buffer we own, of the length given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("reading a netlink answer");
    }
    Ok(n as usize)
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The messages in one read: (type, payload after the header). Stops at a
/// message whose length does not fit, so a short read yields what is whole.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + NLMSG_HDRLEN > buf.len() {
            return None;
        }
        let len = u32_at(buf, at) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return None;
        }
        let msg = (u16_at(buf, at + 4), &buf[at + NLMSG_HDRLEN..at + len]);
        // Messages are 4-byte aligned.
        at += (len + 3) & !3;
        Some(msg)
    })
}

/// The attributes (`struct nlattr`/`rtattr`) in `buf`: (type without the
/// nested/byte-order flags, payload).
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    const HDR: usize = 4;
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + HDR > buf.len() {
            return None;
        }
        let len = u16_at(buf, at) as usize;
        if len < HDR || at + len > buf.len() {
            return None;
        }
        let attr = (u16_at(buf, at + 2) & 0x3fff, &buf[at + HDR..at + len]);
        at += (len + 3) & !3;
        Some(attr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn messages_and_attributes_are_walked_and_truncation_stops_the_walk() {
        // One attribute of 1 byte (padded), one nested (flag masked off).
        let attrs = [5u8, 0, 2, 0, 7, 0, 0, 0, 8, 0, 43, 0x80, 1, 2, 3, 4];
        let mut buf = msg(16, &attrs);
        buf.extend(msg(NLMSG_DONE, &[]));
        let got: Vec<_> = messages(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 16);
        assert_eq!(got[1].0, NLMSG_DONE);
        let a: Vec<_> = attributes(got[0].1).collect();
        assert_eq!(a, vec![(2, &[7u8][..]), (43, &[1u8, 2, 3, 4][..])]);
        // A length past the end: nothing more, no panic.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert_eq!(messages(&bad).count(), 0);
        assert_eq!(attributes(&[9, 0, 1, 0, 0]).count(), 0);
    }
}
