//! The socket-level programs (ClusterIP at `connect()`), attached to a
//! cgroup v2 directory: every process in it and below, whatever its network
//! namespace, has its calls to a frontend translated. Links are pinned like
//! the XDP and TC ones, named after the cgroup they hold, and a restart puts
//! the new programs into them in place.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, ProgramFd, links::FdLink,
};
use ingress_common::program_names;

use super::{
    link::{open_pinned, update_link},
    links_dir,
};

/// The programs and the hook each one is attached to (the link's pin name).
const SOCKET_PROGRAMS: [(&str, &str); 9] = [
    (program_names::CGROUP_CONNECT4, "connect4"),
    (program_names::CGROUP_SENDMSG4, "sendmsg4"),
    (program_names::CGROUP_RECVMSG4, "recvmsg4"),
    (program_names::CGROUP_GETPEERNAME4, "getpeername4"),
    (program_names::CGROUP_CONNECT6, "connect6"),
    (program_names::CGROUP_SENDMSG6, "sendmsg6"),
    (program_names::CGROUP_RECVMSG6, "recvmsg6"),
    (program_names::CGROUP_GETPEERNAME6, "getpeername6"),
    (program_names::CGROUP_SOCK_RELEASE, "sock-release"),
];

/// The two program types among them, loaded and attached alike.
enum CgroupProgram<'a> {
    SockAddr(&'a mut CgroupSockAddr),
    Sock(&'a mut CgroupSock),
}

impl CgroupProgram<'_> {
    fn of<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> anyhow::Result<CgroupProgram<'a>> {
        let prog = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?;
        Ok(match prog {
            Program::CgroupSockAddr(p) => CgroupProgram::SockAddr(p),
            Program::CgroupSock(p) => CgroupProgram::Sock(p),
            _ => bail!("program {name} is not a cgroup socket program"),
        })
    }

    fn load(&mut self) -> Result<(), ProgramError> {
        match self {
            CgroupProgram::SockAddr(p) => p.load(),
            CgroupProgram::Sock(p) => p.load(),
        }
    }

    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            CgroupProgram::SockAddr(p) => p.fd(),
            CgroupProgram::Sock(p) => p.fd(),
        }
    }

    /// A new link on `cgroup`. A cgroup link takes no flags
    /// (BPF_LINK_CREATE refuses BPF_F_ALLOW_MULTI with EINVAL; Linux 6.18)
    /// and always runs beside the cgroup's other programs.
    fn attach_link(&mut self, cgroup: &std::fs::File) -> anyhow::Result<FdLink> {
        Ok(match self {
            CgroupProgram::SockAddr(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                FdLink::try_from(p.take_link(id)?)?
            }
            CgroupProgram::Sock(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                FdLink::try_from(p.take_link(id)?)?
            }
        })
    }
}

/// Pin names of socket-program links start with this.
const PIN_PREFIX: &str = "sock-";

/// The cgroup v2 hierarchy's root as this process sees it: the last
/// `cgroup2` mount in `/proc/mounts` (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones; in a pod, the host's hierarchy
/// mounted over the runtime's own).
pub fn default_cgroup() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    cgroup2_mount(&mounts).context(
        "no cgroup2 file system is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup), \
         pass --cgroup, or turn the socket-level load balancer off with --socket-lb=false",
    )
}

fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(point)))
        })
        .next_back()
}

/// `/proc/mounts` writes spaces and the like as octal escapes (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Opens `cgroup` for attaching, failing with what to do when it is not a
/// cgroup v2 directory.
fn open_cgroup(cgroup: &Path) -> anyhow::Result<std::fs::File> {
    let dir = std::fs::File::open(cgroup)
        .with_context(|| format!("opening --cgroup {}", cgroup.display()))?;
    // SAFETY: fstatfs on an open descriptor into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&dir), &mut st) } != 0
        || st.f_type as i64 != CGROUP2_SUPER_MAGIC
    {
        bail!(
            "--cgroup {} is not a cgroup v2 directory (cgroup v1 cannot run socket programs)",
            cgroup.display()
        );
    }
    Ok(dir)
}

fn pin_name(hook: &str, cgroup_id: u64) -> String {
    format!("{PIN_PREFIX}{hook}-cg{cgroup_id}")
}

/// Loads the socket programs and attaches them to `cgroup` (beside other
/// programs there, as systemd's and other agents' are): a pinned link
/// from an earlier run on the same cgroup gets the new program in place;
/// links an earlier run left on another cgroup are removed (detached).
pub(super) fn attach_socket_lb(
    ebpf: &mut aya::Ebpf,
    pin_path: &Path,
    cgroup: &Path,
) -> anyhow::Result<()> {
    let dir = open_cgroup(cgroup)?;
    // On cgroup v2 a directory's inode number is the cgroup's id.
    let id = dir
        .metadata()
        .with_context(|| format!("reading {}", cgroup.display()))?
        .ino();
    let keep: Vec<String> = SOCKET_PROGRAMS
        .iter()
        .map(|(_, hook)| pin_name(hook, id))
        .collect();
    remove_socket_links(pin_path, |name| !keep.iter().any(|k| k == name))?;
    let mut swapped_in_place = 0;
    for (name, hook) in SOCKET_PROGRAMS {
        let mut prog = CgroupProgram::of(ebpf, name)?;
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
        let pin = links_dir(pin_path).join(pin_name(hook, id));
        if pin.exists() {
            let swapped = open_pinned(&pin).and_then(|link| {
                update_link(link, prog.fd()?).context("BPF_LINK_UPDATE")?;
                Ok(())
            });
            match swapped {
                Ok(()) => {
                    swapped_in_place += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(hook, error = %format!("{e:#}"), "pinned socket link unusable; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let link = prog
            .attach_link(&dir)
            .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    tracing::info!(
        cgroup = %cgroup.display(),
        replaced_in_place = swapped_in_place,
        "socket-level load balancing attached (cluster IPs at connect())"
    );
    Ok(())
}

/// Detaches the socket programs an earlier run attached (`--socket-lb=false`).
pub(super) fn detach_socket_lb(pin_path: &Path) -> anyhow::Result<()> {
    let removed = remove_socket_links(pin_path, |_| true)?;
    if removed > 0 {
        tracing::info!(
            links = removed,
            "socket-level load balancing detached (--socket-lb=false)"
        );
    }
    Ok(())
}

fn remove_socket_links(pin_path: &Path, remove: impl Fn(&str) -> bool) -> anyhow::Result<usize> {
    let dir = links_dir(pin_path);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PIN_PREFIX) && remove(&name) {
            if let Err(e) = super::link::detach_pinned(&entry.path()) {
                tracing::debug!(error = %format!("{e:#}"), "detaching before unpinning");
            }
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_cgroup2_mount_is_the_hierarchy() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pod = "cgroup2 /sys/fs/cgroup cgroup2 ro 0 0\n\
                   cgroup2 /host\\040cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(pod), Some(PathBuf::from("/host cgroup")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
