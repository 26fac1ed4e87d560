//! 3. New connections, end to end through real sockets: from a pod to a
//!    ClusterIP through `ingressd`'s socket programs, through kube-proxy's
//!    iptables-mode and nftables-mode rules, and directly to the pod (the
//!    limit), with 1, 1,000 and 10,000 Services; and from outside to a
//!    NodePort through the XDP program next to the same pod directly.
//!
//! Three namespaces of the benchmark's own (addresses from 198.18.0.0/15):
//! `pod` (the client) ── `node` (routes; the NodePort) ── `srv` (the pod
//! answering on :8080). Connections are opened one after another from one
//! thread and closed with a reset (no TIME_WAIT to run out of ports), each
//! to a Service picked at random; the time of each `connect()` is kept.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ingress_common::Backend;
use ingressd::{
    kernel::{LbMaps, XdpAttachMode, cleanup, load_and_attach},
    l4::{apply, diff, model::DesiredState},
};

use super::Netns;

const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 2);
const POD2: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
const SRV: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 2);
const SRV_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
/// Rounds per comparison; each runs `BATCH` connections of one path, then
/// of the other (in turn first), so both see the same machine.
const ROUNDS: usize = 30;
const BATCH: usize = 500;
/// Unmeasured connections before each batch.
const WARMUP: usize = 30;
const SIZES: [u32; 3] = [1, 1_000, 10_000];

/// Cluster IP of Service `i`: 198.19.0.0/16.
fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let ok = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("ip {args:?}"))?
        .success();
    anyhow::ensure!(ok, "ip {args:?} failed");
    Ok(())
}

/// The namespaces and the cgroup the clients run in.
struct Topology {
    pod: Netns,
    /// A second client pod, where kube-proxy's rules are written (so the
    /// first one's direct connections pass through none of them).
    pod2: Netns,
    node: Netns,
    srv: Netns,
    cgroup: PathBuf,
    /// Where this process was before it joined `cgroup`.
    home_cgroup: PathBuf,
}

impl Topology {
    fn build() -> anyhow::Result<Self> {
        let tag = std::process::id();
        let names = ["pod", "pod2", "node", "srv"].map(|n| format!("ibc{tag}-{n}"));
        for n in &names {
            ip(&["netns", "add", n])?;
        }
        let [pod, pod2, node, srv] = names.map(Netns);
        for n in [&pod, &pod2, &node, &srv] {
            ip(&["-n", &n.0, "link", "set", "lo", "up"])?;
        }
        let gw = |net: u8| Ipv4Addr::new(198, 18, net, 1);
        for (ns, dev, peer, addr, gw, node_addr) in [
            (&pod, "p0", "n0", POD, NODE, NODE),
            (&pod2, "q0", "n2", POD2, gw(7), gw(7)),
            (&srv, "s0", "n1", SRV, gw(6), gw(6)),
        ] {
            ip(&[
                "link", "add", dev, "netns", &ns.0, "type", "veth", "peer", "name", peer, "netns",
                &node.0,
            ])?;
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", &ns.0, "link", "set", dev, "up"])?;
            ip(&[
                "-n",
                &ns.0,
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
            ])?;
            ip(&[
                "-n",
                &node.0,
                "addr",
                "add",
                &format!("{node_addr}/24"),
                "dev",
                peer,
            ])?;
            ip(&["-n", &node.0, "link", "set", peer, "up"])?;
        }
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.0,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()?
            .success();
        anyhow::ensure!(ok, "enabling forwarding");
        let root = ingressd::kernel::default_cgroup()?;
        let home = std::fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| root.join(p.trim_start_matches('/')))
            .unwrap_or_else(|| root.clone());
        let cgroup = root.join(format!("ibc{tag}"));
        std::fs::create_dir_all(&cgroup)?;
        // The whole process: cgroup v2 moves processes, not threads.
        std::fs::write(cgroup.join("cgroup.procs"), "0")
            .context("joining the benchmark's cgroup")?;
        Ok(Self {
            pod,
            pod2,
            node,
            srv,
            cgroup,
            home_cgroup: home,
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::write(self.home_cgroup.join("cgroup.procs"), "0");
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Runs `f` on a thread in network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    testkit::lab::in_netns(ns, f)
}

/// Starts the pod's server: it accepts and drops every connection, on a
/// thread that lives as long as the benchmark.
fn start_server(ns: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = tx.send(Err(std::io::Error::last_os_error()));
            return;
        }
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, SRV_PORT)) {
            Ok(listener) => {
                let _ = tx.send(Ok(()));
                for conn in listener.incoming() {
                    drop(conn);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("the server did not start")??;
    Ok(())
}

/// Latencies of a connect from namespace `ns` to each target in turn (the
/// first `WARMUP` not kept).
fn connects(ns: &str, targets: Vec<SocketAddr>) -> anyhow::Result<Vec<Duration>> {
    in_ns(ns, move || -> anyhow::Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(targets.len());
        for (i, to) in targets.into_iter().enumerate() {
            let started = Instant::now();
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connecting to {to}"))?;
            let took = started.elapsed();
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: SO_LINGER with a valid linger on our socket: the
            // close sends a reset and leaves no TIME_WAIT behind.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            drop(s);
            if i >= WARMUP {
                out.push(took);
            }
        }
        Ok(out)
    })?
}

/// A xorshift stream of Service indexes below `n`.
fn picker(n: u32) -> impl Fn(usize) -> u32 + Send + Sync {
    move |i| {
        let mut x = (i as u32).wrapping_mul(2_654_435_761) ^ 0x9e37_79b9;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x % n
    }
}

struct Row {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut lat: Vec<Duration>) -> Row {
    let total: Duration = lat.iter().sum();
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Row {
        per_sec: lat.len() as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Where a batch of connections starts and what it connects to.
type Path = (String, Box<dyn Fn(usize) -> SocketAddr + Send + Sync>);

/// `ROUNDS` rounds of a batch on each path, interleaved: (ours, direct).
fn paired(ours: &Path, direct: &Path) -> anyhow::Result<(Row, Row)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let batch = |p: &Path, round: usize| -> anyhow::Result<Vec<Duration>> {
        let f = &p.1;
        let targets: Vec<SocketAddr> = (0..WARMUP + BATCH)
            .map(|i| f(round * (WARMUP + BATCH) + i))
            .collect();
        connects(&p.0, targets)
    };
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.extend(batch(ours, round)?);
            b.extend(batch(direct, round)?);
        } else {
            b.extend(batch(direct, round)?);
            a.extend(batch(ours, round)?);
        }
    }
    Ok((summarize(a), summarize(b)))
}

fn print_row(what: &str, n: u32, r: &Row, direct: &Row) {
    println!(
        "{what:<26} {n:>9} {:>10.0} {:>9.1} {:>9.1} {:>13.0} {:>12.2}x {:>12.2}x",
        r.per_sec,
        r.p50.as_secs_f64() * 1e6,
        r.p99.as_secs_f64() * 1e6,
        direct.per_sec,
        r.per_sec / direct.per_sec,
        r.p99.as_secs_f64() / direct.p99.as_secs_f64()
    );
}

fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<26} {:>9} {:>10} {:>9} {:>9} {:>13} {:>13} {:>13}",
        "path",
        "services",
        "conn/s",
        "p50 us",
        "p99 us",
        "direct conn/s",
        "conn/s/direct",
        "p99/direct"
    );
}

/// `n` Services, frontends `frontend(i)`, each with the pod as endpoint.
fn services(n: u32, frontend: impl Fn(u32) -> (Ipv4Addr, u16)) -> DesiredState {
    let pod = Backend {
        addr: u32::from(SRV).to_be(),
        port: SRV_PORT.to_be(),
        flags: 0,
        pad: 0,
    };
    super::services_with(n, frontend, |_| vec![pod])
}

/// kube-proxy's iptables-mode rules for `n` ClusterIP Services, as it
/// writes them for traffic from the node and its pods (nat OUTPUT).
fn iptables_rules(n: u32) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
    );
    for i in 0..n {
        let (svc, sep) = (format!("KUBE-SVC-{i:016X}"), format!("KUBE-SEP-{i:016X}"));
        let comment = format!("bench/svc-{i}:http");
        chains.push_str(&format!(":{svc} - [0:0]\n:{sep} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport 80 -j {svc}\n\
             -A {svc} ! -s 198.18.0.0/16 -d {cip}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A {svc} -m comment --comment \"{comment} -> {SRV}:{SRV_PORT}\" -j {sep}\n\
             -A {sep} -s {SRV}/32 -m comment --comment \"{comment}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"{comment}\" -m tcp -j DNAT --to-destination {SRV}:{SRV_PORT}\n",
            cip = cluster_ip(i)
        ));
    }
    chains + &rules + "COMMIT\n"
}

/// kube-proxy's nftables-mode ruleset for the same Services: a verdict map
/// from address, protocol and port to the Service's chain.
fn nftables_rules(n: u32) -> String {
    let mut elements = Vec::with_capacity(n as usize);
    let mut chains = String::new();
    for i in 0..n {
        let cip = cluster_ip(i);
        elements.push(format!("{cip} . tcp . 80 : goto service-{i}"));
        chains.push_str(&format!(
            "  chain service-{i} {{\n    ip daddr {cip} ip saddr != 198.18.0.0/16 jump mark-for-masquerade\n    numgen random mod 1 vmap {{ 0 : goto endpoint-{i} }}\n  }}\n\
             \x20 chain endpoint-{i} {{\n    ip saddr {SRV} jump mark-for-masquerade\n    meta l4proto tcp dnat to {SRV}:{SRV_PORT}\n  }}\n"
        ));
    }
    format!(
        "table ip kube-proxy {{\n\
         \x20 map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n\
         \x20 chain mark-for-masquerade {{\n    mark set mark or 0x4000\n  }}\n\
         \x20 chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n\
         \x20 chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}\n{chains}}}\n",
        elements.join(", ")
    )
}

fn pipe_into(ns: &str, cmd: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins of a run, removed on drop (the socket links with them).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = cleanup(&self.0);
    }
}

fn direct(topo: &Topology) -> Path {
    (
        topo.pod.0.clone(),
        Box::new(|_| SocketAddr::from((SRV, SRV_PORT))),
    )
}

fn to_cluster_ips(ns: &str, n: u32) -> Path {
    let pick = picker(n);
    (
        ns.to_string(),
        Box::new(move |i| SocketAddr::from((cluster_ip(pick(i)), 80))),
    )
}

/// Part 3a: ClusterIP from a pod.
fn cluster_ip_part(topo: &Topology) -> anyhow::Result<()> {
    header(&format!(
        "ClusterIP: new TCP connections from a pod, one after another, each to a Service picked at random \
         ({ROUNDS} rounds of {BATCH}, interleaved with as many straight to the pod)"
    ));
    let (ipt, nft) = (have("iptables-restore"), have("nft"));
    let mut at_10k = (None, None, None);
    for n in SIZES {
        let pins = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/ingressd-bench-cip-{}-{n}",
            std::process::id()
        )));
        load_and_attach(&pins.0, &[], XdpAttachMode::Auto, false, Some(&topo.cgroup))?;
        let mut maps = LbMaps::open(&pins.0)?;
        maps.set_node(&[])?;
        apply(
            &diff(
                &DesiredState::default(),
                &services(n, |i| (cluster_ip(i), 80)),
            ),
            &mut maps,
        )?;
        let (ours, d) = paired(&to_cluster_ips(&topo.pod.0, n), &direct(topo))?;
        print_row("ingressd (socket)", n, &ours, &d);
        drop(maps);
        drop(pins);
        if ipt {
            pipe_into(
                &topo.pod2.0,
                &["iptables-restore", "-w"],
                &iptables_rules(n),
            )?;
            let (r, d) = paired(&to_cluster_ips(&topo.pod2.0, n), &direct(topo))?;
            print_row("kube-proxy iptables", n, &r, &d);
            pipe_into(
                &topo.pod2.0,
                &["iptables-restore", "-w"],
                "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
            )?;
            if n == 10_000 {
                at_10k.1 = Some(r.per_sec);
            }
        }
        if nft {
            pipe_into(&topo.pod2.0, &["nft", "-f", "-"], &nftables_rules(n))?;
            let (r, d) = paired(&to_cluster_ips(&topo.pod2.0, n), &direct(topo))?;
            print_row("kube-proxy nftables", n, &r, &d);
            pipe_into(
                &topo.pod2.0,
                &["nft", "-f", "-"],
                "delete table ip kube-proxy\n",
            )?;
            if n == 10_000 {
                at_10k.2 = Some(r.per_sec);
            }
        }
        if n == 10_000 {
            at_10k.0 = Some(ours.per_sec);
        }
    }
    if !ipt || !nft {
        println!(
            "(kube-proxy rows need iptables and nftables: `cargo xtask bench l4` installs them)"
        );
    }
    if let (Some(o), Some(i), Some(n)) = at_10k {
        println!(
            "at 10,000 Services ingressd opens {:.2}x the connections per second of kube-proxy's iptables mode, {:.2}x its nftables mode",
            o / i,
            o / n
        );
    }
    Ok(())
}

/// Part 3b: a NodePort from outside the node, next to the pod directly
/// (through the same node, the XDP program attached and passing it).
fn node_port_part(topo: &Topology) -> anyhow::Result<()> {
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/ingressd-bench-np-{}",
        std::process::id()
    )));
    let pin_path = pins.0.clone();
    in_ns(&topo.node.0, move || {
        load_and_attach(
            &pin_path,
            &["n0".to_string()],
            XdpAttachMode::Auto,
            false,
            None,
        )
    })??;
    let mut maps = LbMaps::open(&pins.0)?;
    maps.set_node(&[NODE])?;
    header(&format!(
        "NodePort: new TCP connections from outside the node through the XDP program on its interface \
         ({ROUNDS} rounds of {BATCH}, interleaved with as many straight to the pod through the same node)"
    ));
    let mut current = DesiredState::default();
    let node_port: Path = (
        topo.pod.0.clone(),
        Box::new(|_| SocketAddr::from((NODE, NODE_PORT))),
    );
    for n in SIZES {
        // One NodePort, and n - 1 other frontends (LoadBalancer IPs).
        let desired = services(n, |i| {
            if i == 0 {
                (Ipv4Addr::UNSPECIFIED, NODE_PORT)
            } else {
                (cluster_ip(i), 80)
            }
        });
        apply(&diff(&current, &desired), &mut maps)?;
        current = desired;
        let (ours, d) = paired(&node_port, &direct(topo))?;
        print_row("ingressd (XDP NodePort)", n, &ours, &d);
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let topo = Topology::build().context("building the benchmark's namespaces")?;
    start_server(&topo.srv.0)?;
    cluster_ip_part(&topo)?;
    node_port_part(&topo)?;
    Ok(())
}
