//! `cargo xtask setup`: installs what building and testing need, once.
//! Idempotent: each step checks first and prints one line either way.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH with cargo's bin directory (where bpf-linker lands) in front.
pub fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", cargo_bin().display())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("PATH", path_with_cargo_bin())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stderr(Stdio::null())
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, done: bool, detail: &str) {
    let state = if done { "ok" } else { "installing" };
    println!(
        "setup: {what:<34} {state}{}",
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        }
    );
}

fn run_step(what: &str, cmd: &mut Command, hint: &str) -> anyhow::Result<()> {
    let status = cmd
        .env("PATH", path_with_cargo_bin())
        .status()
        .with_context(|| format!("{what}: starting {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}). {hint}");
    }
    println!("setup: {what:<34} installed");
    Ok(())
}

/// The LLVM major version of the nightly rustc (bpf-linker must match it).
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("`rustc +nightly -vV` failed: is the nightly toolchain installed? (`rustup toolchain install nightly`)")?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in `rustc +nightly -vV`")?;
    line.split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .context("unparsable LLVM version")
}

fn apt_install(what: &str, packages: &[&str]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what}: run as root, or install by hand: apt-get install -y {}",
            packages.join(" ")
        );
    }
    let hint = format!(
        "Install by hand: apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
        &hint,
    )?;
    run_step(
        what,
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &hint,
    )
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        })
    })
}

fn have(tool: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
}

/// Everything, with a line per step.
pub fn run() -> anyhow::Result<()> {
    install(true)
}

/// What the other commands need, quietly when all is there.
pub fn ensure() -> anyhow::Result<()> {
    install(false)
}

fn install(verbose: bool) -> anyhow::Result<()> {
    // 1. nightly with rust-src (for the BPF target's core).
    let has_nightly = succeeds(Command::new("rustc").args(["+nightly", "--version"]));
    if !has_nightly {
        step("nightly toolchain", false, "");
        run_step(
            "nightly toolchain",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "Install it by hand: rustup toolchain install nightly",
        )?;
    } else if verbose {
        step("nightly toolchain", true, "");
    }
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|o| o.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        step("rust-src for nightly", false, "");
        run_step(
            "rust-src for nightly",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "Install it by hand: rustup component add rust-src --toolchain nightly",
        )?;
    } else if verbose {
        step("rust-src for nightly", true, "");
    }

    // 2. LLVM dev package matching rustc's LLVM, then bpf-linker built against it.
    let major = nightly_llvm_major()?;
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    let has_bpf_linker = succeeds(Command::new("bpf-linker").arg("--version"));
    if !has_bpf_linker {
        if !prefix.join("bin/llvm-config").exists() {
            step(&format!("llvm-{major}-dev"), false, "for bpf-linker");
            apt_install(
                &format!("llvm-{major}-dev"),
                &[
                    &format!("llvm-{major}-dev"),
                    &format!("libpolly-{major}-dev"),
                    "libzstd-dev",
                    "zlib1g-dev",
                ],
            )?;
        }
        step(
            "bpf-linker",
            false,
            &format!("built against LLVM {major}, ~2 min"),
        );
        let path = format!("{}/bin:{}", prefix.display(), path_with_cargo_bin());
        run_step(
            "bpf-linker",
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{major}"),
                ])
                .env("LLVM_PREFIX", &prefix)
                .env("PATH", path),
            &format!(
                "Build it by hand: LLVM_PREFIX={p} PATH={p}/bin:$PATH cargo install bpf-linker --no-default-features --features llvm-{major}",
                p = prefix.display()
            ),
        )?;
    } else if verbose {
        step("bpf-linker", true, &format!("LLVM {major}"));
    }

    // 3. bpffs, where ingressd pins its maps and links.
    if !bpffs_mounted() {
        if is_root() {
            step("bpffs at /sys/fs/bpf", false, "mounting");
            run_step(
                "bpffs at /sys/fs/bpf",
                Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
                "Mount it by hand: mount -t bpf bpf /sys/fs/bpf",
            )?;
        } else {
            println!(
                "setup: bpffs at /sys/fs/bpf            missing (as root: mount -t bpf bpf /sys/fs/bpf)"
            );
        }
    } else if verbose {
        step("bpffs at /sys/fs/bpf", true, "");
    }

    // 4. What the lab (tests, demo) drives: ip, ethtool, nsenter, python3,
    // curl; and what the image is made of and tried with: ldd, objcopy,
    // unshare, chroot, the CA bundle.
    let mut missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("python3", "python3"),
        ("curl", "curl"),
        ("ldd", "libc-bin"),
        ("objcopy", "binutils"),
        ("chroot", "coreutils"),
    ]
    .iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(_, pkg)| *pkg)
    .collect();
    if !Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        missing.push("ca-certificates");
    }
    missing.dedup();
    if missing.is_empty() {
        if verbose {
            step(
                "lab tools",
                true,
                "ip, ethtool, nsenter, python3, curl, ldd, objcopy, CA certificates",
            );
        }
    } else if is_root() {
        step("lab tools", false, &missing.join(", "));
        apt_install("lab tools", &missing)?;
    } else {
        println!(
            "setup: lab tools                        missing: {} (apt-get install -y {})",
            missing.join(", "),
            missing.join(" ")
        );
    }

    // 5. The Kubernetes schema check of deploy/ (tests/deploy.rs):
    // kubernetes-validate from PyPI, in a virtualenv under target/.
    let validator = validator_path();
    if validator.exists() {
        if verbose {
            step("kubernetes-validate", true, "for deploy/");
        }
    } else {
        step("kubernetes-validate", false, "PyPI, into target/tools");
        let venv = validator
            .parent()
            .and_then(|p| p.parent())
            .context("validator path")?
            .to_path_buf();
        // `venv --help` answers without python3-venv on Debian: only
        // ensurepip, which creating a venv needs, is split out into it.
        if !succeeds(Command::new("python3").args(["-c", "import ensurepip"])) && is_root() {
            apt_install("python3-venv", &["python3-venv"])?;
        }
        run_step(
            "python3 -m venv target/tools/kubernetes-validate",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "Install python3-venv (apt-get install -y python3-venv).",
        )?;
        run_step(
            "pip install kubernetes-validate",
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "kubernetes-validate",
            ]),
            "PyPI must be reachable.",
        )?;
    }
    if verbose {
        println!("setup: done");
    }
    Ok(())
}

/// Where setup puts `kubernetes-validate` (tests/deploy.rs looks there).
pub fn validator_path() -> PathBuf {
    crate::root().join("target/tools/kubernetes-validate/bin/kubernetes-validate")
}

/// What `cargo xtask bench` compares against: iptables (kube-proxy's mode).
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    if have("iptables-restore") && have("nft") {
        return Ok(());
    }
    if is_root() {
        step(
            "bench tools",
            false,
            "iptables and nftables, for the kube-proxy comparisons",
        );
        apt_install("bench tools", &["iptables", "nftables"])
    } else {
        println!(
            "setup: bench tools                      missing: iptables, nftables (apt-get install -y iptables nftables)"
        );
        Ok(())
    }
}

/// nginx, what `cargo xtask bench l7` compares the proxy with.
pub fn ensure_nginx() -> anyhow::Result<()> {
    if have("nginx") {
        return Ok(());
    }
    if !is_root() {
        bail!("nginx is missing: apt-get install -y nginx-light (as root)");
    }
    step("nginx", false, "for the L7 comparison");
    apt_install("nginx", &["nginx-light"])?;
    // Debian starts it on :80 at install; the benchmark runs its own.
    let _ = Command::new("sh")
        .args([
            "-c",
            "systemctl stop nginx 2>/dev/null || nginx -s stop 2>/dev/null",
        ])
        .status();
    Ok(())
}

/// What `cargo xtask fuzz` runs the fuzz targets with: cargo-fuzz
/// (libFuzzer, on the nightly toolchain the BPF build has already).
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    step("cargo-fuzz", false, "from crates.io, for cargo xtask fuzz");
    run_step(
        "cargo-fuzz",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "Install it by hand: cargo install cargo-fuzz --locked",
    )
}
