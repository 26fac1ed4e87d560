//! `cargo xtask …`: setup, build, test, demo, bench.
//!
//! Every command runs `setup`'s checks first and installs only what is
//! missing, so the README's two commands work on a new machine.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod image;
mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src for nightly, LLVM dev package, bpf-linker, bpffs, lab tools.
    Setup,
    /// Build `ingressd` (release) with its BPF object embedded.
    Build,
    /// The container image as an OCI archive in target/image/ (no container engine needed).
    Image {
        /// Pack this binary instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Write the image's file tree to this directory instead of an
        /// archive (deploy/Dockerfile copies it into an empty image).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// The repository the image is named under.
        #[arg(long, default_value = image::REPOSITORY)]
        repository: String,
    },
    /// Run every test: unit, golden, packet (BPF_PROG_TEST_RUN) and end-to-end (namespaces).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job: a lab in network namespaces with two nodes, pods and a client.
    Demo,
    /// Benchmarks, reported side by side as ratios.
    Bench {
        /// What to measure.
        #[arg(value_enum, default_value = "l4")]
        what: BenchKind,
    },
    /// cargo fmt --check and clippy -D warnings.
    Lint,
    /// The differential fuzz targets (the fast HTTP/1 path against hyper's), coverage-guided.
    Fuzz {
        /// Which target; all of them by default.
        #[arg(value_enum)]
        target: Option<FuzzTarget>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FuzzTarget {
    /// Request heads: the fast server against hyper's behind its guard.
    Request,
    /// Endpoint responses: the fast client against hyper's.
    Response,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchKind {
    /// XDP per-packet cost by table size; sync times vs kube-proxy's iptables.
    L4,
    /// Proxy throughput and latency vs nginx and the upstream alone; route updates.
    L7,
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with the command line.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .env("PATH", setup::path_with_cargo_bin())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ingressd_bin() -> PathBuf {
    root().join("target/release/ingressd")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::ensure().and_then(|()| cargo(&["build", "--release", "-p", "ingress-userspace"]))
        }
        Cmd::Image {
            binary,
            rootfs,
            repository,
        } => image::run(binary, rootfs, &repository),
        Cmd::Test { args } => setup::ensure().and_then(|()| test(&args)),
        Cmd::Demo => setup::ensure().and_then(|()| demo()),
        Cmd::Bench {
            what: BenchKind::L4,
        } => setup::ensure().and_then(|()| bench_l4()),
        Cmd::Bench {
            what: BenchKind::L7,
        } => setup::ensure().and_then(|()| bench_l7()),
        Cmd::Fuzz { target, seconds } => setup::ensure().and_then(|()| fuzz(target, seconds)),
        Cmd::Lint => setup::ensure().and_then(|()| {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    if !setup::is_root() {
        eprintln!(
            "xtask: not root: the packet and end-to-end tests will report SKIPPED. \
             Run `sudo -E cargo xtask test` to run everything."
        );
    }
    let mut totals = Totals::default();
    let mut failed = Vec::new();
    // Every test, then the proxy's end-to-end suites (Ingress and Gateway
    // API) again with the HTTP/1 fast path off (hyper's server and client
    // for everything), so both implementations are held to the same
    // behaviour.
    type Run<'a> = (&'a str, &'a [&'a str], Option<(&'a str, &'a str)>);
    let runs: [Run<'_>; 2] = [
        ("every test", &["test", "--workspace"], None),
        (
            "the L7 suites with --http1-fast-path=false",
            &[
                "test",
                "-p",
                "ingress-userspace",
                "--test",
                "l7",
                "--test",
                "conformance",
            ],
            Some(("INGRESSD_HTTP1_FAST_PATH", "false")),
        ),
    ];
    for (what, base, env) in runs {
        println!("xtask: {what}");
        let mut args: Vec<&str> = base.to_vec();
        if !extra.is_empty() {
            args.push("--");
            args.extend(extra.iter().map(String::as_str));
        }
        if !cargo_test(&args, env, &mut totals)? {
            failed.push(what);
        }
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !failed.is_empty() {
        bail!("cargo test failed: {}", failed.join(", "));
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo <args>`, streaming its output and adding up its "test
/// result" lines, so the run ends with one total whatever test binary
/// happened to run last; whether it passed.
fn cargo_test(
    args: &[&str],
    env: Option<(&str, &str)>,
    totals: &mut Totals,
) -> anyhow::Result<bool> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(root())
        .env("PATH", setup::path_with_cargo_bin())
        .stdout(std::process::Stdio::piped());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split([';', '.']) {
                    let mut words = part.split_whitespace();
                    let (Some(n), Some(what)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let Ok(n) = n.parse::<u64>() else { continue };
                    match what {
                        "passed" => totals.passed += n,
                        "failed" => totals.failed += n,
                        "ignored" => totals.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(child.wait()?.success())
}

fn fuzz(target: Option<FuzzTarget>, seconds: u64) -> anyhow::Result<()> {
    setup::ensure_cargo_fuzz()?;
    let targets: &[&str] = match target {
        Some(FuzzTarget::Request) => &["request"],
        Some(FuzzTarget::Response) => &["response"],
        None => &["request", "response"],
    };
    let dir = "ingress-userspace/fuzz";
    for t in targets {
        println!(
            "xtask: fuzzing {t} for {seconds} s (corpus in {dir}/corpus/{t}, failures in {dir}/artifacts/{t})"
        );
        let max_time = format!("-max_total_time={seconds}");
        let dict = format!("-dict={dir}/http.dict");
        let status = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                t,
                "--fuzz-dir",
                dir,
                "--",
                &max_time,
                &dict,
            ])
            .current_dir(root())
            .env("PATH", setup::path_with_cargo_bin())
            // The proxy alone: no BPF object is built for the fuzz targets.
            .env("AYA_BUILD_SKIP", "1")
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} failed ({status}): the input is in {dir}/artifacts/{t}");
        }
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!(
            "the demo makes network namespaces and loads BPF programs: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "ingress-userspace",
        "--bin",
        "ingressd",
        "--example",
        "demo",
    ])?;
    let status = Command::new(root().join("target/release/examples/demo"))
        .arg(ingressd_bin())
        .status()
        .context("running the demo")?;
    if !status.success() {
        bail!("demo failed ({status})");
    }
    Ok(())
}

fn bench_l7() -> anyhow::Result<()> {
    setup::ensure_nginx()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "ingress-userspace",
        "--bin",
        "ingressd",
    ])?;
    cargo(&["bench", "-p", "ingress-userspace", "--bench", "l7"])
}

fn bench_l4() -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!(
            "the L4 benchmark loads BPF programs: run it as root (`sudo -E cargo xtask bench l4`)"
        );
    }
    setup::ensure_bench_tools()?;
    cargo(&["bench", "-p", "ingress-userspace", "--bench", "l4"])
}
