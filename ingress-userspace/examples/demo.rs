//! `cargo xtask demo`: NodePort load balancing in XDP, ClusterIP at the
//! socket and the Ingress proxy, shown step by step in a lab of network
//! namespaces (a client, two nodes, four pods), then a kind-shaped node.
//! Run as root; the argument is the `ingressd` binary. Cleans up on exit
//! and on Ctrl-C.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use testkit::lab::{
    self, Attempt, Lab, Mode, Pod, PodRoutes, Shape, in_netns, nodeport_manifests, wait_until,
};

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

const STEPS: u32 = 16;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1mStep {n}/{STEPS}  {text}\x1b[0m");
}

fn write_manifests(dir: &Path, pods: &[&Pod]) {
    let tmp = dir.join(".services.yaml.tmp");
    std::fs::write(&tmp, nodeport_manifests(pods) + EMPTY_SERVICE).expect("write manifests");
    std::fs::rename(&tmp, dir.join("services.yaml")).expect("rename manifests");
}

/// curl in the client's namespace (silent, 2 s at most).
fn curl_once(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "curl", "-s", "-m", "2"])
        .args(args)
        .output()
        .expect("curl")
}

/// `n` requests with curl from the client; the answers (pod names), counted.
fn curl(lab: &Lab, args: &[&str], n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let out = curl_once(lab, args);
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
    lab.metric(node, "ingressd_syncs_total ")
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
        println!("    curl {url:<28} → {}", show(&curl(&lab, &[&url], 16)));
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
    let out = curl_once(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &format!("http://{a}:30090/"),
        ],
    );
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
        println!("    curl {url:<28} → {}", show(&curl(&lab, &[&url], 16)));
    }

    step(
        7,
        "The maps on node-a after the change (one ring rewritten, nothing else)",
    );
    print_maps(&bin, &lab, "node-a");

    cluster_ip_steps(&lab, &manifests)?;
    ingress_steps(&lab, &manifests)?;
    gateway_step(&lab, &manifests)?;

    println!("\nCleaning up the lab (namespaces, processes, pins).");
    drop(lab);
    kind_shaped_node(&bin)?;
    Ok(())
}

const WEB_CIP: &str = "198.19.10.1";
const DNS_CIP: &str = "198.19.10.2";

/// ClusterIP Services `web-cip` (TCP 80 → 8080) and `dns-cip` (UDP 53 →
/// 5353) on `pods`.
fn cluster_ip_manifests(lab: &Lab, pods: &[&str]) -> String {
    let eps: String = lab
        .pods
        .iter()
        .filter(|p| pods.contains(&p.name.as_str()))
        .map(|p| format!("- {{addresses: [\"{}\"], nodeName: {}}}\n", p.ip, p.node))
        .collect();
    let svc = |name: &str, ip: &str, port: u16, target: u16, proto: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  clusterIP: {ip}\n  ports: [{{name: p, port: {port}, targetPort: {target}, protocol: {proto}}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: p, port: {target}, protocol: {proto}}}]\nendpoints:\n{eps}"
        )
    };
    svc("web-cip", WEB_CIP, 80, 8080, "TCP") + &svc("dns-cip", DNS_CIP, 53, 5353, "UDP")
}

fn tally(attempts: &[Attempt]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in attempts {
        let key = match a {
            Attempt::Ok { body, .. } => body.clone(),
            Attempt::Err(e) => format!("FAILED ({e})"),
        };
        *counts.entry(key).or_default() += 1;
    }
    show(&counts)
}

/// Every attempt answered from the Service address the caller used.
fn all_from(attempts: &[Attempt], service: SocketAddr) -> bool {
    attempts
        .iter()
        .all(|a| matches!(a, Attempt::Ok { from, .. } if *from == service.to_string()))
}

fn cluster_ip_steps(lab: &Lab, manifests: &Path) -> anyhow::Result<()> {
    let file = manifests.join("cluster-ip.yaml");
    let write = |pods: &[&str]| -> anyhow::Result<()> {
        let tmp = manifests.join(".cluster-ip.yaml.tmp");
        std::fs::write(&tmp, cluster_ip_manifests(lab, pods))?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    };
    let web: SocketAddr = format!("{WEB_CIP}:80").parse()?;
    let dns: SocketAddr = format!("{DNS_CIP}:53").parse()?;
    let before = syncs(lab, "node-a");
    write(&["a1", "a2", "b2"])?;
    wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);

    step(
        8,
        "ClusterIP at the socket: pod a2 and node-a's own processes reach cluster IPs",
    );
    println!(
        "    web-cip {web} (TCP) and dns-cip {dns} (UDP) → a1, a2, b2; cgroup programs on node-a's cgroup"
    );
    let mut ok = true;
    for place in ["a2", "node-a"] {
        let tcp = lab.connect_from(place, Mode::Tcp, web, 12)?;
        let udp = lab.connect_from(place, Mode::UdpConnected, dns, 4)?;
        ok &= all_from(&tcp, web) && all_from(&udp, dns);
        println!("    {place:<7} TCP {web}   → {}", tally(&tcp));
        println!("    {place:<7} UDP {dns}   → {}", tally(&udp));
    }
    println!(
        "    getpeername() and every UDP answer's source: {} (resolvers accept the answer)",
        if ok {
            "the cluster IP"
        } else {
            "NOT the cluster IP"
        }
    );

    step(
        9,
        "a1 leaves the Services: connections move, a resolver's socket is closed and reconnects",
    );
    let translated = |lab: &Lab| {
        lab.metric(
            "node-a",
            "ingressd_socket_lb_total{result=\"connect_translated\"}",
        )
    };
    let connects = translated(lab);
    let resolver = lab.spawn_client("a2", Mode::UdpKeep, dns, 40, Duration::from_millis(50))?;
    // The resolver has its socket (connected through the cluster IP).
    wait_until(Duration::from_secs(5), || translated(lab) > connects);
    let before = syncs(lab, "node-a");
    write(&["a2", "b2"])?;
    let applied = wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);
    let kept = resolver.finish()?;
    let tcp = lab.connect_from("a2", Mode::Tcp, web, 12)?;
    println!("    a2 TCP {web} → {}", tally(&tcp));
    let closed = kept.iter().any(|a| matches!(a, Attempt::Err(_)));
    println!(
        "    a2's resolver (one connected UDP socket, 40 questions) → {} ({})",
        tally(&kept),
        if closed {
            "its socket was closed when its endpoint left; it reconnected"
        } else {
            "its socket was NOT closed"
        }
    );
    let moved = applied && tcp.iter().all(|a| a.body().is_some_and(|b| b != "a1"));
    write(&[])?;
    let before = syncs(lab, "node-a");
    wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);
    let refused = lab.connect_from("a2", Mode::Tcp, web, 1)?;
    println!("    no endpoints left: a2 TCP {web} → {}", tally(&refused));
    anyhow::ensure!(
        ok && moved && refused == vec![Attempt::Err("ECONNREFUSED".into())],
        "steps 8-9: a cluster IP was not served as shown above"
    );
    Ok(())
}

/// A node built as kind builds one: its interface a veth whose peer runs
/// no XDP. With the default --xdp-mode, NodePorts work and refusals arrive.
fn kind_shaped_node(bin: &Path) -> anyhow::Result<()> {
    step(
        15,
        "A kind-shaped node (its veth's peer runs no XDP), with the defaults",
    );
    let shape = Shape {
        peer_xdp: false,
        pod_routes: PodRoutes::Direct,
    };
    let mut lab = Lab::two_nodes_shaped("kind", shape)?;
    handle_signals(&lab);
    lab.start_pods()?;
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let all: Vec<&Pod> = lab.pods.iter().collect();
    write_manifests(&manifests, &all);
    std::fs::write(
        manifests.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: www, namespace: demo}\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: www.demo\n    http:\n      paths:\n      \
         - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n",
    )?;
    lab.start_ingressd(bin, "node-a", &manifests)?;
    let generic = lab.ingressd_log("node-a").contains("a veth: generic XDP");
    println!(
        "    node-a's eth0 is a veth: {}",
        if generic {
            "ingressd chose generic XDP"
        } else {
            "ingressd did NOT choose generic XDP"
        }
    );
    let a = lab.node("node-a").ip;
    let url = format!("http://{a}:30080/");
    let counts = curl(&lab, &[&url], 16);
    println!("    curl {url:<28} → {}", show(&counts));
    let out = curl_once(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &format!("http://{a}:30090/"),
        ],
    );
    println!(
        "    curl http://{a}:30090/ (no endpoints) → curl exit {} after {} s (7: refused)",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout)
    );
    anyhow::ensure!(
        generic && !counts.keys().any(|k| k.starts_with("FAILED")) && out.status.code() == Some(7),
        "step 15: the kind-shaped node did not serve as shown above"
    );
    upgrade_under_traffic(bin, &mut lab, &manifests)?;
    println!("\nCleaning up the kind-shaped lab.");
    Ok(())
}

/// Requests in a loop from the client to `addr` (with `host`) until
/// `stop`: (answered, failed).
fn request_loop(
    lab: &Lab,
    addr: SocketAddr,
    host: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::thread::JoinHandle<anyhow::Result<()>>,
    std::sync::Arc<[std::sync::atomic::AtomicU32; 2]>,
) {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };
    let counts = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let ns = lab.client_ns.clone();
    let c = counts.clone();
    let handle = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let r = lab::http_get_host(addr, host, "/", Duration::from_secs(2));
                c[usize::from(r.is_err())].fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    (handle, counts)
}

/// A rolling upgrade of ingressd on node-a, as the DaemonSet does it
/// (maxSurge 1): the new one starts beside the old, takes the ports over
/// once its routes are in, the old one finishes and exits.
fn upgrade_under_traffic(bin: &Path, lab: &mut Lab, manifests: &Path) -> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    step(
        16,
        "ingressd is upgraded on node-a under traffic: a new one beside the old takes the ports over",
    );
    let a = lab.node("node-a").ip;
    let stop = Arc::new(AtomicBool::new(false));
    let (proxy, via_proxy) = request_loop(lab, SocketAddr::from((a, 80)), "www.demo", stop.clone());
    let (l4, via_l4) = request_loop(lab, SocketAddr::from((a, 30080)), "x", stop.clone());
    let done = |c: &[std::sync::atomic::AtomicU32; 2]| {
        c[0].load(Ordering::Relaxed) + c[1].load(Ordering::Relaxed)
    };
    wait_until(Duration::from_secs(10), || {
        done(&via_proxy) >= 50 && done(&via_l4) >= 50
    });
    lab.start_ingressd(bin, "node-a", manifests)?;
    let switched = wait_until(Duration::from_secs(10), || {
        lab.ingressd_log_of("node-a", 1).contains("proxy listening")
    });
    let stopping = Instant::now();
    lab.stop_ingressd("node-a")?;
    let old_left = stopping.elapsed();
    let handed = lab
        .ingressd_log_of("node-a", 0)
        .contains("a new ingressd took the proxy's ports over");
    let after = (done(&via_proxy), done(&via_l4));
    wait_until(Duration::from_secs(10), || {
        done(&via_proxy) >= after.0 + 50 && done(&via_l4) >= after.1 + 50
    });
    stop.store(true, Ordering::Relaxed);
    proxy
        .join()
        .map_err(|_| anyhow::anyhow!("client thread"))??;
    l4.join().map_err(|_| anyhow::anyhow!("client thread"))??;
    let (p_ok, p_failed) = (
        via_proxy[0].load(Ordering::Relaxed),
        via_proxy[1].load(Ordering::Relaxed),
    );
    let (l_ok, l_failed) = (
        via_l4[0].load(Ordering::Relaxed),
        via_l4[1].load(Ordering::Relaxed),
    );
    println!(
        "    new ingressd {}; the old one {} and left {} ms after SIGTERM",
        if switched {
            "took the ports over once its routes were in"
        } else {
            "did NOT open its ports"
        },
        if handed {
            "finished its connections"
        } else {
            "was NOT handed over"
        },
        old_left.as_millis()
    );
    println!("    Ingress  http://{a}/ (Host: www.demo): {p_ok} answered, {p_failed} failed");
    println!("    NodePort http://{a}:30080/:            {l_ok} answered, {l_failed} failed");
    if !(switched && handed && p_failed == 0 && l_failed == 0) {
        let tail = |log: String| {
            // The daemon's own lines, not the access log's.
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(" ingressd")).collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        anyhow::bail!(
            "step 16: the upgrade dropped requests, or did not hand over\n--- old ---\n{}\n--- new ---\n{}",
            tail(lab.ingressd_log_of("node-a", 0)),
            tail(lab.ingressd_log_of("node-a", 1))
        );
    }
    Ok(())
}

/// Services `shop` (pods a1, b1) and `api` (a2, b2) and Ingresses routing
/// to them by host and by path; shop.demo also over HTTPS.
fn ingress_manifests(
    lab: &Lab,
    shop: &[&str],
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> String {
    let svc = |name: &str, pods: &[&str]| {
        let eps: String = lab
            .pods
            .iter()
            .filter(|p| pods.contains(&p.name.as_str()))
            .map(|p| format!("- {{addresses: [\"{}\"], nodeName: {}}}\n", p.ip, p.node))
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
        )
    };
    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    svc("shop", shop)
        + &svc("api", &["a2", "b2"])
        + &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: shop-tls, namespace: demo}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert.cert.pem()),
            indent(cert.signing_key.serialize_pem())
        )
        + r#"---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: ebpf}
spec: {controller: ingress-ebpf/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: demo}
spec:
  ingressClassName: ebpf
  tls: [{hosts: [shop.demo], secretName: shop-tls}]
  rules:
  - host: www.demo
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
  - host: shop.demo
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: api, namespace: demo}
spec:
  ingressClassName: ebpf
  rules:
  - host: api.demo
    http:
      paths:
      - {path: /v1, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
"#
}

fn curl_args(lab: &Lab, args: &[&str]) -> String {
    String::from_utf8_lossy(&curl_once(lab, args).stdout)
        .trim()
        .replace('\n', " ")
}

fn ingress_steps(lab: &Lab, manifests: &Path) -> anyhow::Result<()> {
    let node = lab.node("node-a").ip;
    let cert = rcgen::generate_simple_self_signed(vec!["shop.demo".to_string()])?;
    let ingress_file = manifests.join("ingress.yaml");
    let write = |shop: &[&str]| -> anyhow::Result<()> {
        let tmp = manifests.join(".ingress.yaml.tmp");
        std::fs::write(&tmp, ingress_manifests(lab, shop, &cert))?;
        std::fs::rename(&tmp, &ingress_file)?;
        Ok(())
    };
    let before = syncs(lab, "node-a");
    write(&["a1", "b1"])?;
    wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);

    step(
        10,
        "Ingress: the proxy on node-a (:80) routes by Host header and path to pods directly",
    );
    println!(
        "    www.demo/ → Service shop (a1, b1); www.demo/api and api.demo/v1 → Service api (a2, b2)"
    );
    for (host, path) in [
        ("www.demo", "/"),
        ("www.demo", "/api/cart"),
        ("api.demo", "/v1/users"),
    ] {
        let url = format!("http://{node}{path}");
        let counts = curl(lab, &["-H", &format!("Host: {host}"), &url], 8);
        println!("    curl -H 'Host: {host}' {url:<28} → {}", show(&counts));
    }

    step(
        11,
        "No rule matches: the default backend answers 404, also on its own port 8181",
    );
    for (label, args) in [
        (
            "-H 'Host: nobody.demo' http://NODE/",
            vec![
                "-H".to_string(),
                "Host: nobody.demo".into(),
                format!("http://{node}/"),
            ],
        ),
        (
            "http://NODE:8181/anything",
            vec![format!("http://{node}:8181/anything")],
        ),
    ] {
        let mut a: Vec<&str> = vec!["-w", " [%{http_code}]"];
        a.extend(args.iter().map(String::as_str));
        println!(
            "    curl {:<40} → {}",
            label.replace("NODE", &node.to_string()),
            curl_args(lab, &a)
        );
    }

    step(
        12,
        "HTTPS: TLS by SNI with the certificate from the Secret; plain HTTP is redirected",
    );
    let resolve = format!("shop.demo:443:{node}");
    println!(
        "    curl -k --resolve {resolve} https://shop.demo/  → {}",
        curl_args(
            lab,
            &[
                "-k",
                "--resolve",
                &resolve,
                "-w",
                " [%{http_code}, certificate from Secret demo/shop-tls]",
                "https://shop.demo/"
            ]
        )
    );
    println!(
        "    curl -H 'Host: shop.demo' http://{node}/x   → {}",
        curl_args(
            lab,
            &[
                "-H",
                "Host: shop.demo",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} → %{redirect_url}",
                &format!("http://{node}/x")
            ]
        )
    );

    step(
        13,
        "Pod b1 leaves Service shop, then stops, while a client keeps requesting: no request fails",
    );
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let client_ns = lab.client_ns.clone();
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            in_netns(&client_ns, move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let r = lab::http_get_host(
                        SocketAddr::from((node, 80)),
                        "www.demo",
                        "/",
                        Duration::from_secs(2),
                    );
                    let counter = if r.is_ok() { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    };
    // Some traffic before the change, the change, some traffic after it.
    let done = || ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(5), || done() >= 20);
    let before = syncs(lab, "node-a");
    write(&["a1"])?;
    let changed = wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);
    let at_change = done();
    wait_until(Duration::from_secs(5), || done() >= at_change + 20);
    // Out of the Service, the pod goes away (as Kubernetes deletes it).
    lab.stop_pod("b1")?;
    let at_stop = done();
    wait_until(Duration::from_secs(5), || done() >= at_stop + 20);
    stop.store(true, Ordering::Relaxed);
    load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "    route table swapped {}; pod b1 stopped; {ok} requests around both, {failed} failed",
        if changed { "atomically" } else { "(NOT seen)" },
    );
    anyhow::ensure!(
        changed && failed == 0,
        "step 13: the change was not applied, or a request failed"
    );
    let url = format!("http://{node}/");
    let counts = curl(lab, &["-H", "Host: www.demo", &url], 8);
    println!("    curl -H 'Host: www.demo' {url:<28} → {}", show(&counts));
    Ok(())
}

/// A Gateway of the demo's GatewayClass on node-a's :80, and an HTTPRoute
/// for gw.demo: a header match to Service api, else a 80/20 split between
/// Services shop and api.
const GATEWAY: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ebpf}
spec: {controllerName: ingress-ebpf/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: demo, namespace: demo}
spec:
  gatewayClassName: ebpf
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: demo}
spec:
  parentRefs: [{name: demo}]
  hostnames: [gw.demo]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: api, port: 80}]
  - backendRefs:
    - {name: shop, port: 80, weight: 80}
    - {name: api, port: 80, weight: 20}
"#;

fn gateway_step(lab: &Lab, manifests: &Path) -> anyhow::Result<()> {
    let node = lab.node("node-a").ip;
    step(
        14,
        "Gateway API beside the Ingresses: an HTTPRoute with a header match and an 80/20 split",
    );
    let before = syncs(lab, "node-a");
    let tmp = manifests.join(".gateway.yaml.tmp");
    std::fs::write(&tmp, GATEWAY)?;
    std::fs::rename(&tmp, manifests.join("gateway.yaml"))?;
    wait_until(Duration::from_secs(5), || syncs(lab, "node-a") > before);
    println!(
        "    gw.demo, header x-canary: yes → Service api; else Service shop (weight 80), api (20)"
    );
    let url = format!("http://{node}/");
    let canary = curl(
        lab,
        &["-H", "Host: gw.demo", "-H", "x-canary: yes", &url],
        8,
    );
    println!(
        "    curl -H 'Host: gw.demo' -H 'x-canary: yes' {url} → {}",
        show(&canary)
    );
    let split = curl(lab, &["-H", "Host: gw.demo", &url], 100);
    println!(
        "    curl -H 'Host: gw.demo' {url} ×100          → {}",
        show(&split)
    );
    // Pods a1 (b1 stopped in step 13) serve shop; a2 and b2 serve api.
    let shop = split.get("a1").copied().unwrap_or(0);
    let api: usize = ["a2", "b2"].iter().filter_map(|p| split.get(*p)).sum();
    println!("    Service shop ×{shop}, Service api ×{api} (asked: 80 and 20)");
    let only_api = canary.keys().all(|p| p == "a2" || p == "b2");
    anyhow::ensure!(
        only_api && shop + api == 100 && (60..=95).contains(&shop),
        "step 14: the HTTPRoute did not route as shown above"
    );
    Ok(())
}
