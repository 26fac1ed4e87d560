//! Builds the BPF object (`ingress-ebpf`, nightly + bpf-linker) and embeds it.
//! `cargo xtask setup` installs what this needs; `AYA_BUILD_SKIP=1` skips it
//! and embeds an empty object (the proxy alone, as the fuzz targets build
//! it: loading the data path then fails with a clear error).
fn main() -> anyhow::Result<()> {
    commit();
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip && let Some(out) = std::env::var_os("OUT_DIR") {
        std::fs::write(std::path::Path::new(&out).join("ingress-ebpf"), [])?;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingress-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ingress-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The commit `ingressd --version` and `ingressd_build_info` name:
/// `INGRESSD_COMMIT` when set (a Docker build, which has no `.git`), else
/// git's HEAD, else "unknown".
fn commit() {
    println!("cargo:rerun-if-env-changed=INGRESSD_COMMIT");
    let from_env = std::env::var("INGRESSD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(|| {
        let dir = env!("CARGO_MANIFEST_DIR");
        let out = std::process::Command::new("git")
            .args(["-C", dir, "rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        // Rebuilt when HEAD moves (a commit, a checkout).
        let git_dir = std::process::Command::new("git")
            .args(["-C", dir, "rev-parse", "--absolute-git-dir"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if let Some(g) = git_dir {
            println!("cargo:rerun-if-changed={g}/HEAD");
            println!("cargo:rerun-if-changed={g}/refs/heads");
            println!("cargo:rerun-if-changed={g}/packed-refs");
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    // Only what a label value and a version line may hold.
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    println!("cargo:rustc-env=INGRESSD_COMMIT={commit}");
}
