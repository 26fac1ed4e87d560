//! `cargo xtask image`: the `ingressd` image as an OCI archive under
//! `target/image/`, built without a container engine (see `ingress-image`).
use std::{path::PathBuf, process::Command};

use anyhow::Context as _;
use ingress_image::{Meta, Tree, write_archive};

use crate::{cargo, root, setup};

/// The repository the manifests in `deploy/` pull.
pub const REPOSITORY: &str = "ingress-ebpf/ingressd";

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image's times: `SOURCE_DATE_EPOCH` (the reproducible-builds
/// convention), else the commit's time, else the epoch.
fn created() -> anyhow::Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    Ok(git(&["log", "-1", "--format=%ct"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}

pub fn run(
    binary: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    repository: &str,
) -> anyhow::Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => {
            setup::ensure()?;
            cargo(&["build", "--release", "--locked", "-p", "ingress-userspace"])?;
            root().join("target/release/ingressd")
        }
    };
    let tree = Tree::for_binary(&binary)?;
    if let Some(dir) = rootfs {
        tree.write_rootfs(&dir)?;
        println!("image: file tree written to {}", dir.display());
        return Ok(());
    }
    let meta = Meta {
        repository: repository.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: std::env::var("INGRESSD_COMMIT")
            .ok()
            .or_else(|| git(&["rev-parse", "HEAD"]))
            .unwrap_or_else(|| "unknown".into()),
        created: created()?,
    };
    let out = root()
        .join("target/image")
        .join(format!("ingressd-{}.oci.tar", meta.version));
    let written = write_archive(&tree, &meta, &out)?;
    println!("image: {} ({} MB)", out.display(), written.size / 1_000_000);
    println!("image: {} {}", meta.reference(), written.digest);
    println!(
        "load it with: podman load -i {p} | docker load -i {p} | ctr images import {p} | kind load image-archive {p}",
        p = out.display()
    );
    Ok(())
}
