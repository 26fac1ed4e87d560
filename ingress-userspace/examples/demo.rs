//! `cargo xtask demo`: NodePort load balancing in XDP, shown step by step in
//! a lab of network namespaces (a client, two nodes, four pods). Run as root;
//! the argument is the `ingressd` binary. Cleans up on exit and on Ctrl-C.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ingressd::lab::{self, Lab, Pod, in_netns, nodeport_manifests, wait_until};

const EMPTY_SERVICE: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30090}
"#;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1mStep {n}/7  {text}\x1b[0m");
}

fn write_manifests(dir: &Path, pods: &[&Pod]) {
    let tmp = dir.join(".services.yaml.tmp");
    std::fs::write(&tmp, nodeport_manifests(pods) + EMPTY_SERVICE).expect("write manifests");
    std::fs::rename(&tmp, dir.join("services.yaml")).expect("rename manifests");
}

/// `n` requests with curl from the client; the pod names that answered, counted.
fn curl(lab: &Lab, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.client_ns,
                "curl",
                "-s",
                "-m",
                "2",
                url,
            ])
            .output()
            .expect("curl");
        let answer = if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            format!("FAILED (curl exit {})", out.status.code().unwrap_or(-1))
        };
        *seen.entry(answer).or_default() += 1;
    }
    seen
}

fn show(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(pod, n)| format!("{pod} ×{n}"))
        .collect::<Vec<_>>()
        .join("   ")
}

fn print_maps(bin: &Path, lab: &Lab, node: &str) {
    let out = Command::new(bin)
        .args(["maps", "--flows", "8", "--pin-path"])
        .arg(&lab.node(node).pin_path)
        .output()
        .expect("ingressd maps");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
}

fn syncs(lab: &Lab, node: &str) -> u64 {
    let n = lab.node(node);
    let addr = n.metrics;
    in_netns(&n.ns, move || {
        lab::http_get(addr, "/metrics", Duration::from_secs(1))
    })
    .ok()
    .and_then(|r| r.ok())
    .and_then(|body| {
        body.lines().find_map(|l| {
            l.strip_prefix("ingressd_syncs_total ")
                .and_then(|v| v.trim().parse().ok())
        })
    })
    .unwrap_or(0)
}

/// Ctrl-C and SIGTERM go to a thread that releases the lab and exits.
fn handle_signals(lab: &Lab) {
    let res = lab.resources();
    // SAFETY: blocking the signals in this (main) thread before any thread
    // that must not see them is spawned; the waiter below takes them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("\ninterrupted: cleaning up the lab");
            res.lock().unwrap_or_else(|e| e.into_inner()).release();
            std::process::exit(130);
        });
    }
}

fn main() -> anyhow::Result<()> {
    let bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/release/ingressd".into()),
    );
    let bin = std::fs::canonicalize(&bin).map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
    println!("\x1b[1mingress-ebpf demo: Kubernetes NodePort Services answered in XDP\x1b[0m");

    step(
        1,
        "A lab in network namespaces (addresses from 198.18.0.0/15)",
    );
    let mut lab = Lab::two_nodes("demo")?;
    handle_signals(&lab);
    println!("    client  {}", lab::CLIENT_IP);
    for node in &lab.nodes {
        let pods: Vec<String> = lab
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect();
        println!("    {}  {}   pods: {}", node.name, node.ip, pods.join(", "));
    }
    lab.start_pods()?;
    println!("    each pod answers HTTP :8080 and UDP :5353 with its own name");

    step(
        2,
        "Manifests: Services web (NodePort 30080/TCP), dns (30053/UDP), empty (30090, no endpoints)",
    );
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let all: Vec<&Pod> = lab.pods.iter().collect();
    write_manifests(&manifests, &all);
    println!(
        "    {} (EndpointSlices list a1, a2, b1, b2)",
        manifests.join("services.yaml").display()
    );

    step(
        3,
        "ingressd on both nodes: XDP and TC attached to eth0, maps pinned",
    );
    for node in ["node-a", "node-b"] {
        lab.start_ingressd(&bin, node, &manifests)?;
        println!(
            "    {node}: ready (/readyz), pins under {}",
            lab.node(node).pin_path.display()
        );
    }

    step(
        4,
        "Requests from the client to each node's NodePort spread over pods on both nodes",
    );
    for node in lab.nodes.clone() {
        let url = format!("http://{}:30080/", node.ip);
        println!("    curl {url:<28} → {}", show(&curl(&lab, &url, 16)));
    }
    let a = lab.node("node-a").ip;
    let client = lab.client_ns.clone();
    let udp = in_netns(&client, move || {
        (0..8)
            .map(|_| {
                lab::udp_ask(SocketAddr::from((a, 30053)), Duration::from_secs(1))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|e| format!("FAILED ({e})"))
            })
            .collect::<Vec<_>>()
    })?;
    let mut counts = BTreeMap::new();
    for u in udp {
        *counts.entry(u).or_insert(0) += 1;
    }
    println!("    UDP  {a}:30053               → {}", show(&counts));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "curl",
            "-s",
            "-m",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &format!("http://{a}:30090/"),
        ])
        .output()?;
    println!(
        "    curl http://{a}:30090/ (no endpoints) → refused at once (curl exit {}, {} s): a TCP RST from XDP",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout)
    );

    step(
        5,
        "The maps on node-a (`ingressd maps`): frontends, Maglev rings, flows, counters",
    );
    print_maps(&bin, &lab, "node-a");

    step(
        6,
        "Pod b1 is deleted from the EndpointSlice: traffic moves off it at once",
    );
    let before = (syncs(&lab, "node-a"), syncs(&lab, "node-b"));
    let remaining: Vec<&Pod> = lab.pods.iter().filter(|p| p.name != "b1").collect();
    let changed = Instant::now();
    write_manifests(&manifests, &remaining);
    let applied = wait_until(Duration::from_secs(5), || {
        syncs(&lab, "node-a") > before.0 && syncs(&lab, "node-b") > before.1
    });
    println!(
        "    {} in {} ms",
        if applied {
            "applied on both nodes"
        } else {
            "NOT applied on both nodes"
        },
        changed.elapsed().as_millis()
    );
    for node in lab.nodes.clone() {
        let url = format!("http://{}:30080/", node.ip);
        println!("    curl {url:<28} → {}", show(&curl(&lab, &url, 16)));
    }

    step(
        7,
        "The maps on node-a after the change (one ring rewritten, nothing else)",
    );
    print_maps(&bin, &lab, "node-a");

    println!("\nCleaning up the lab (namespaces, processes, pins).");
    drop(lab);
    Ok(())
}
