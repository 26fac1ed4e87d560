//! The link operations aya 0.14 does not offer: opening a pinned link as a
//! plain descriptor, putting a new program into it (`BPF_LINK_UPDATE`: one
//! atomic swap, no call goes unserved), and detaching it now.
use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf_attr` for BPF_OBJ_GET. Explicit padding: the kernel refuses an
/// attribute whose bytes past its last field are not zero, and repr(C)
/// would leave 4 of them uninitialised.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// `bpf_attr` for BPF_LINK_UPDATE.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf_attr` for BPF_LINK_DETACH.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the
    // size given; the kernel checks the rest is zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the object pinned at `pin`.
pub fn open_pinned(pin: &Path) -> anyhow::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).context("pin path")?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", pin.display()))?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of `link` with `prog`, atomically.
pub fn update_link(link: impl AsFd, prog: impl AsFd) -> std::io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches the link pinned at `pin` from its hook before this returns.
/// Removing the pin alone is not enough: the kernel frees an unpinned link
/// from a work queue, so its hook can still be taken for a moment (an XDP
/// attach right after then fails with EEXIST).
pub fn detach_pinned(pin: &Path) -> anyhow::Result<()> {
    let link = open_pinned(pin)?;
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).with_context(|| format!("detaching {}", pin.display()))?;
    Ok(())
}
