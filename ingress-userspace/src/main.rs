//! `ingressd`: eBPF L4 service load balancer (and, later, Ingress proxy) for one node.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Parser, Subcommand};
use ingressd::{
    bpf::{self, LbMaps, XdpAttachMode},
    model::{show_backend, show_frontend},
    render::render_state,
    run::{RunConfig, run},
};

#[derive(Parser)]
#[command(
    name = "ingressd",
    version,
    about = "eBPF-accelerated Kubernetes service load balancer for one node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data path and keep its maps in step with the manifests.
    Run {
        /// YAML/JSON files or directories (multi-document), watched for changes.
        #[arg(long, num_args = 1.., required = true)]
        manifests: Vec<PathBuf>,
        /// Attach XDP (ingress) and TC (egress) here.
        #[arg(long, num_args = 1.., required = true)]
        interface: Vec<String>,
        /// Addresses NodePorts answer on [default: the addresses of --interface].
        #[arg(long, num_args = 1..)]
        node_ip: Vec<Ipv4Addr>,
        /// This node's name, matched against EndpointSlice nodeName [default: $NODE_NAME, else the hostname].
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, default_value = "/sys/fs/bpf/ingressd")]
        pin_path: PathBuf,
        /// /metrics, /healthz, /readyz.
        #[arg(long, default_value = "127.0.0.1:10254")]
        metrics_addr: SocketAddr,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpAttachMode,
    },
    /// Detach and unpin everything under --pin-path.
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/ingressd")]
        pin_path: PathBuf,
        /// Accepted for symmetry with `run`; every pinned link is removed.
        #[arg(long, num_args = 1..)]
        interface: Vec<String>,
    },
    /// Print the live services, backends and flows as a table.
    Maps {
        #[arg(long, default_value = "/sys/fs/bpf/ingressd")]
        pin_path: PathBuf,
        /// At most this many flows.
        #[arg(long, default_value_t = 50)]
        flows: usize,
    },
}

fn node_name_default() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn print_maps(pin_path: &std::path::Path, flow_limit: usize) -> anyhow::Result<()> {
    let maps = LbMaps::open(pin_path)?;
    let state = maps.read_state()?;
    let mut out = String::new();
    let addrs: Vec<String> = maps.node_addrs().iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "NODE ADDRESSES  {}\n", addrs.join(" "));
    out.push_str(&render_state(&state));
    out.push_str("\nFLOWS\n");
    let _ = writeln!(
        out,
        "{:<8} {:<22} {:<22} {:<28} SNAT",
        "PROTO", "CLIENT", "FRONTEND", "BACKEND"
    );
    for f in maps.flows(flow_limit) {
        let k = f.key;
        let proto = if k.proto == ingress_common::IPPROTO_TCP {
            "TCP"
        } else {
            "UDP"
        };
        let client = format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(k.src)),
            u16::from_be(k.sport)
        );
        let frontend = format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(k.dst)),
            u16::from_be(k.dport)
        );
        let snat = if f.entry.snat_addr == 0 {
            "-".to_string()
        } else {
            format!(
                "{}:{}",
                Ipv4Addr::from(u32::from_be(f.entry.snat_addr)),
                u16::from_be(f.entry.snat_port)
            )
        };
        let _ = writeln!(
            out,
            "{proto:<8} {client:<22} {frontend:<22} {:<28} {snat}",
            show_backend(&f.entry.backend)
        );
    }
    out.push_str("\nCOUNTERS\n");
    for (name, v) in maps.counters()? {
        if v > 0 {
            let _ = writeln!(out, "{name:<28} {v}");
        }
    }
    let _ = show_frontend;
    print!("{out}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            manifests,
            interface,
            node_ip,
            node_name,
            pin_path,
            metrics_addr,
            xdp_mode,
        } => {
            let cfg = RunConfig {
                manifests,
                interfaces: interface,
                node_ips: node_ip,
                node_name: node_name.unwrap_or_else(node_name_default),
                pin_path,
                metrics_addr,
                xdp_mode,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(cfg)))
        }
        Command::Cleanup {
            pin_path,
            interface: _,
        } => bpf::cleanup(&pin_path).map(|removed| {
            for p in &removed {
                println!("removed {}", p.display());
            }
            println!(
                "cleaned up {} pins under {}",
                removed.len(),
                pin_path.display()
            );
        }),
        Command::Maps { pin_path, flows } => print_maps(&pin_path, flows),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingressd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
