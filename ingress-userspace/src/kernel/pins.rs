//! The bpffs directory the maps and links are pinned in.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails with what to do when `dir` is not on a bpffs.
pub fn check_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).context("pin path")?;
    // SAFETY: statfs on a valid C string into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "cannot stat {}: {}",
            probe.display(),
            std::io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs, so pins would not survive: mount one with \
             `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)",
            probe.display()
        );
    }
    Ok(())
}

pub(super) fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join("links")
}

/// Detaches the links and removes every pin under `pin_path`.
pub fn cleanup(pin_path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_path.exists() {
        return Ok(removed);
    }
    check_bpffs(pin_path)?;
    let links = links_dir(pin_path);
    if links.exists() {
        for entry in std::fs::read_dir(&links)? {
            let p = entry?.path();
            // Now, not when the kernel's work queue frees the unpinned link.
            if let Err(e) = super::link::detach_pinned(&p) {
                tracing::debug!(error = %format!("{e:#}"), "detaching before unpinning");
            }
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        std::fs::remove_dir(&links)?;
    }
    for entry in std::fs::read_dir(pin_path)? {
        let p = entry?.path();
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(p);
    }
    std::fs::remove_dir(pin_path)?;
    Ok(removed)
}

pub(super) fn open_map(pin_path: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_path.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is ingressd running, or was it run with this --pin-path?)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}
