//! `cargo xtask bench l4`: what the L4 data path costs, as ratios.
//!
//! 1. Per-packet cost of `xdp_lb_ingress` (BPF_PROG_TEST_RUN, kernel-timed)
//!    with 1, 1,000, 10,000 and 100,000 services in the maps, for a new flow
//!    (SYN), an established one (conntrack hit) and non-service traffic, next
//!    to `xdp_pass` (the floor: an XDP program that does nothing).
//! 2. Sync: 10,000 Services with their EndpointSlices from manifest files
//!    into empty maps; one endpoint change into the full maps; a restarted
//!    daemon adopting the full maps; side by side with kube-proxy's
//!    iptables mode writing the same Services (iptables-restore, in a
//!    network namespace of the benchmark's own).
//!
//! 3. New connections through real sockets (`l4/connect.rs`): ClusterIP
//!    from a pod through the socket programs, kube-proxy's iptables and
//!    nftables modes and directly; a NodePort through XDP and directly.
//!
//! Needs root (BPF). Parts 1 and 2 send no packet; part 3 only inside
//! network namespaces of its own.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use ingress_common::{Backend, FrontendKey, IPPROTO_TCP, ServiceEntry, program_names};
use ingressd::{
    kernel::{LbMaps, cleanup, load_unattached},
    l4::{
        apply, diff,
        model::{DesiredState, Model, NodeContext, RingSpec},
    },
    source::files::ManifestSource,
};
use testkit::packet::{self, TCP_ACK, TCP_SYN};

#[path = "l4/connect.rs"]
mod connect;

const RUNS: usize = 100_000;
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Pins in a directory of their own, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = cleanup(&self.0);
    }
}

fn pins(tag: &str) -> Pins {
    Pins(PathBuf::from(format!(
        "/sys/fs/bpf/ingressd-bench-{tag}-{}",
        std::process::id()
    )))
}

/// Frontend i: an address in 198.18.0.0/15 (map keys only; no traffic).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 256 + i)
}

fn backend(i: u32, j: u32) -> Backend {
    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 4 + j);
    Backend {
        addr: u32::from(addr).to_be(),
        port: 8080u16.to_be(),
        flags: 0,
        pad: 0,
    }
}

fn services(n: u32) -> DesiredState {
    services_with(n, |i| (vip(i), 80), |i| vec![backend(i, 1), backend(i, 2)])
}

/// `n` Services `bench/svc-i`: TCP frontend `frontend(i)`, endpoints
/// `backends(i)` (also for the connection benchmark's).
fn services_with(
    n: u32,
    frontend: impl Fn(u32) -> (Ipv4Addr, u16),
    backends: impl Fn(u32) -> Vec<Backend>,
) -> DesiredState {
    let mut s = DesiredState::default();
    for i in 0..n {
        let id = 1 + i as u64;
        s.rings.insert(
            id,
            RingSpec {
                name: format!("bench/svc-{i}:80/TCP"),
                backends: backends(i),
                ..Default::default()
            },
        );
        let (addr, port) = frontend(i);
        s.frontends.insert(
            FrontendKey {
                addr: u32::from(addr).to_be(),
                port: port.to_be(),
                proto: IPPROTO_TCP,
                scope: 0,
            },
            ServiceEntry {
                ring_id: id,
                flags: 0,
                affinity_timeout: 0,
            },
        );
    }
    s
}

/// Mean kernel-measured ns per run of `prog` over the packets, cycled.
/// One packet per run (repeat = 1): the program rewrites what it runs on.
fn mean_ns(ebpf: &mut Ebpf, prog: &str, packets: &[Vec<u8>], runs: usize) -> f64 {
    let xdp: &mut Xdp = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; 256];
    let mut total = Duration::ZERO;
    for i in 0..runs {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&packets[i % packets.len()]);
        opts.data_out = Some(&mut out);
        total += xdp.test_run(opts).expect("test_run").duration;
    }
    total.as_nanos() as f64 / runs as f64
}

/// A cheap deterministic spread of service indexes.
fn pick(i: u32, n: u32) -> u32 {
    (i.wrapping_mul(2_654_435_761) >> 7) % n
}

fn per_packet() -> anyhow::Result<()> {
    println!(
        "Per-packet cost of xdp_lb_ingress (BPF_PROG_TEST_RUN, mean ns over {RUNS} runs; floor = xdp_pass)"
    );
    println!(
        "{:>9} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "services",
        "fill ms",
        "new flow",
        "established",
        "not service",
        "floor",
        "SYN/floor",
        "ACK/floor"
    );
    let mut first_syn = None;
    for n in [1u32, 1_000, 10_000, 100_000] {
        let dir = pins(&format!("pp{n}"));
        let mut ebpf = load_unattached(&dir.0)?;
        let mut maps = LbMaps::open(&dir.0)?;
        maps.set_node(&[NODE])?;
        let desired = services(n);
        let started = Instant::now();
        apply(&diff(&DesiredState::default(), &desired), &mut maps)?;
        let fill = started.elapsed();
        let flows: Vec<(Ipv4Addr, u16, Ipv4Addr)> = (0..1024u32)
            .map(|i| {
                (
                    Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8),
                    10_000 + i as u16,
                    vip(pick(i, n)),
                )
            })
            .collect();
        let syn: Vec<Vec<u8>> = flows
            .iter()
            .map(|(c, p, v)| packet::tcp((*c, *p), (*v, 80), TCP_SYN, 1, b""))
            .collect();
        let ack: Vec<Vec<u8>> = flows
            .iter()
            .map(|(c, p, v)| packet::tcp((*c, *p), (*v, 80), TCP_ACK, 2, b""))
            .collect();
        let other: Vec<Vec<u8>> = flows
            .iter()
            .map(|(c, p, _)| {
                packet::tcp(
                    (*c, *p),
                    (Ipv4Addr::new(198, 19, 255, 1), 22),
                    TCP_ACK,
                    2,
                    b"",
                )
            })
            .collect();
        let syn_ns = mean_ns(&mut ebpf, program_names::XDP_INGRESS, &syn, RUNS);
        // The SYN runs left a conntrack entry for every flow: ACKs hit it.
        let ack_ns = mean_ns(&mut ebpf, program_names::XDP_INGRESS, &ack, RUNS);
        let other_ns = mean_ns(&mut ebpf, program_names::XDP_INGRESS, &other, RUNS);
        let floor = mean_ns(&mut ebpf, program_names::XDP_PASS, &other, RUNS);
        println!(
            "{n:>9} {:>10.1} {syn_ns:>12.1} {ack_ns:>12.1} {other_ns:>12.1} {floor:>10.1} {:>9.2}x {:>9.2}x",
            fill.as_secs_f64() * 1e3,
            syn_ns / floor,
            ack_ns / floor
        );
        let first = *first_syn.get_or_insert(syn_ns);
        if n == 100_000 {
            println!(
                "flatness: new-flow cost at 100,000 services / at 1 service = {:.2}x",
                syn_ns / first
            );
        }
    }
    Ok(())
}

/// 10,000 Services (NodePort range wraps into externalIPs) with one
/// EndpointSlice each (two endpoints: this node and another), in 100 files.
fn write_manifests(dir: &Path, n: u32, files: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in 0..files {
        let mut text = String::new();
        for i in (f * n / files)..((f + 1) * n / files) {
            text.push_str(&service_yaml(i, 2));
        }
        std::fs::write(dir.join(format!("svc-{f:03}.yaml")), text)?;
    }
    Ok(())
}

fn service_yaml(i: u32, endpoints: u32) -> String {
    let ip = vip(i);
    let eps: String = (1..=endpoints)
        .map(|j| {
            let b = Ipv4Addr::from(u32::from_be(backend(i, j).addr));
            let node = if j == 1 { "node-a" } else { "node-b" };
            format!("- addresses: [\"{b}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n")
        })
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  externalIPs: [\"{ip}\"]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: svc-{i}}}\n\
         addressType: IPv4\nports:\n- {{name: http, port: 8080}}\nendpoints:\n{eps}"
    )
}

struct Timings {
    load: Duration,
    model: Duration,
    diff: Duration,
    apply: Duration,
    writes: usize,
}

/// What `ingressd run` does on a change: load (changed files only), the
/// model (touched Services only, or everything when `full`), apply.
fn sync_once(
    source: &mut ManifestSource,
    model: &mut Model,
    full: Option<&DesiredState>,
    maps: &mut LbMaps,
) -> anyhow::Result<Timings> {
    let t0 = Instant::now();
    let loaded = source.load();
    anyhow::ensure!(
        loaded.errors.is_empty(),
        "manifest errors: {:?}",
        &loaded.errors[..1]
    );
    let t1 = Instant::now();
    let d = match full {
        Some(current) => {
            model.rebuild(source.snapshot());
            let t = Instant::now();
            let d = diff(current, model.state());
            (d, Some(t))
        }
        None => (model.update(source.snapshot(), loaded.touched), None),
    };
    let t2 = d.1.unwrap_or_else(Instant::now);
    let d = d.0;
    let t3 = Instant::now();
    apply(&d, maps)?;
    let t4 = Instant::now();
    Ok(Timings {
        load: t1 - t0,
        model: t2 - t1,
        diff: t3 - t2,
        apply: t4 - t3,
        writes: d.writes(),
    })
}

fn show(what: &str, t: &Timings) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total = t.load + t.model + t.diff + t.apply;
    println!(
        "{what:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>8}",
        ms(t.load),
        ms(t.model),
        ms(t.diff),
        ms(t.apply),
        ms(total),
        t.writes
    );
}

fn sync() -> anyhow::Result<()> {
    let n = 10_000;
    let tmp = std::env::temp_dir().join(format!("ingressd-bench-{}", std::process::id()));
    let manifests = tmp.join("manifests");
    write_manifests(&manifests, n, 100)?;
    let dir = pins("sync");
    let _ebpf = load_unattached(&dir.0)?;
    let mut maps = LbMaps::open(&dir.0)?;
    maps.set_node(&[NODE])?;
    let node = NodeContext {
        name: "node-a".into(),
        addrs: vec![NODE],
        ..Default::default()
    };

    println!(
        "\nSync of {n} Services + {n} EndpointSlices (2 endpoints each) from 100 manifest files (ms)"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "", "load", "model", "diff", "apply", "total", "writes"
    );
    let mut source = ManifestSource::new(vec![manifests.clone()]);
    let mut model = Model::new(node.clone());
    let full = sync_once(
        &mut source,
        &mut model,
        Some(&DesiredState::default()),
        &mut maps,
    )?;
    show("into empty maps", &full);

    // One endpoint removed from one slice: one file changes.
    let f = 42u32;
    let mut text = String::new();
    for i in (f * n / 100)..((f + 1) * n / 100) {
        text.push_str(&service_yaml(i, if i == f * n / 100 { 1 } else { 2 }));
    }
    std::fs::write(manifests.join(format!("svc-{f:03}.yaml")), text)?;
    let one = sync_once(&mut source, &mut model, None, &mut maps)?;
    show("one endpoint change into full maps", &one);

    // A restarted daemon: reads the maps back, finds nothing to write.
    let started = Instant::now();
    let adopted = maps.read_state()?;
    let read = started.elapsed();
    let mut fresh = ManifestSource::new(vec![manifests.clone()]);
    let mut fresh_model = Model::new(node);
    let restart = sync_once(&mut fresh, &mut fresh_model, Some(&adopted), &mut maps)?;
    println!(
        "{:<44} read back the maps in {:.2} ms, then:",
        "restart (adopt pinned maps)",
        read.as_secs_f64() * 1e3
    );
    show("", &restart);
    let _ = std::fs::remove_dir_all(&tmp);

    if let Some((kp_full, kp_one)) = kube_proxy_iptables(n)? {
        let ours_full = full.load + full.model + full.diff + full.apply;
        let ours_one = one.load + one.model + one.diff + one.apply;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "\nSide by side: kube-proxy iptables mode, same {n} Services (iptables-restore, nf_tables backend)"
        );
        println!(
            "{:<44} {:>12} {:>12} {:>10}",
            "", "kube-proxy", "ingressd", "ratio"
        );
        println!(
            "{:<44} {:>12.1} {:>12.1} {:>9.1}x",
            "full sync into empty tables (ms)",
            ms(kp_full),
            ms(ours_full),
            ms(kp_full) / ms(ours_full)
        );
        println!(
            "{:<44} {:>12.2} {:>12.2} {:>9.1}x",
            "one endpoint change (ms)",
            ms(kp_one),
            ms(ours_one),
            ms(kp_one) / ms(ours_one)
        );
        println!(
            "(ratio: how many times longer kube-proxy takes; its parse of 10,000 objects from the API is not counted)"
        );
    }
    Ok(())
}

/// A network namespace of the benchmark's own, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// kube-proxy's iptables mode for the same Services: the rules it would
/// write (KUBE-SERVICES → KUBE-EXT → KUBE-SVC → KUBE-SEP with DNAT).
fn kube_proxy_rules(n: u32, endpoints: impl Fn(u32) -> u32) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    for i in 0..n {
        let (c, r) = kube_proxy_service(i, endpoints(i), true);
        chains.push_str(&c);
        rules.push_str(&r);
    }
    chains + &rules + "COMMIT\n"
}

/// One Service's chains and rules; `entry` adds its KUBE-SERVICES rule.
fn kube_proxy_service(i: u32, endpoints: u32, entry: bool) -> (String, String) {
    let (svc, ext) = (format!("KUBE-SVC-{i:016X}"), format!("KUBE-EXT-{i:016X}"));
    let comment = format!("bench/svc-{i}:http");
    let mut chains = format!(":{svc} - [0:0]\n:{ext} - [0:0]\n");
    let mut rules = String::new();
    if entry {
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{comment} external IP\" -m tcp --dport 80 -j {ext}\n\
             -A {ext} -m comment --comment \"masquerade traffic for {comment} external destinations\" -j KUBE-MARK-MASQ\n\
             -A {ext} -j {svc}\n",
            vip(i)
        ));
    }
    for j in 1..=endpoints {
        let sep = format!("KUBE-SEP-{i:014X}{j:02X}");
        let ep = Ipv4Addr::from(u32::from_be(backend(i, j).addr));
        chains.push_str(&format!(":{sep} - [0:0]\n"));
        let left = endpoints - j + 1;
        if left > 1 {
            rules.push_str(&format!(
                "-A {svc} -m comment --comment \"{comment} -> {ep}:8080\" -m statistic --mode random --probability {:.10} -j {sep}\n",
                1.0 / left as f64
            ));
        } else {
            rules.push_str(&format!(
                "-A {svc} -m comment --comment \"{comment} -> {ep}:8080\" -j {sep}\n"
            ));
        }
        rules.push_str(&format!(
            "-A {sep} -s {ep}/32 -m comment --comment \"{comment}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"{comment}\" -m tcp -j DNAT --to-destination {ep}:8080\n"
        ));
    }
    (chains, rules)
}

fn iptables_restore(ns: &str, rules: &str, noflush: bool) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "iptables-restore", "-w"]);
    if noflush {
        cmd.arg("--noflush");
    }
    let started = Instant::now();
    let mut child = cmd.stdin(std::process::Stdio::piped()).spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())?;
    let status = child.wait()?;
    let took = started.elapsed();
    anyhow::ensure!(status.success(), "iptables-restore failed ({status})");
    Ok(took)
}

/// The same sync done by kube-proxy's iptables mode, in a namespace of our own.
fn kube_proxy_iptables(n: u32) -> anyhow::Result<Option<(Duration, Duration)>> {
    let have = std::process::Command::new("sh")
        .args(["-c", "command -v iptables-restore"])
        .output()?
        .status
        .success();
    if !have {
        println!(
            "(kube-proxy iptables comparison skipped: iptables-restore not installed; `apt-get install iptables`)"
        );
        return Ok(None);
    }
    let ns = Netns(format!("ingressd-bench-ipt-{}", std::process::id()));
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()?
        .success();
    anyhow::ensure!(ok, "ip netns add failed");
    let full = iptables_restore(&ns.0, &kube_proxy_rules(n, |_| 2), false)?;
    // One endpoint gone: kube-proxy (MinimizeIPTablesRestore) rewrites just
    // that Service's chains and deletes the endpoint's chain.
    let (chains, rules) = kube_proxy_service(4200, 1, false);
    let gone = format!("KUBE-SEP-{:014X}{:02X}", 4200, 2);
    let delta = format!("*nat\n{chains}:{gone} - [0:0]\n{rules}-X {gone}\nCOMMIT\n");
    let one = iptables_restore(&ns.0, &delta, true)?;
    Ok(Some((full, one)))
}

fn main() -> anyhow::Result<()> {
    if !testkit::lab::is_root() {
        anyhow::bail!("the L4 benchmark loads BPF programs: run it as root");
    }
    // `cargo bench --bench l4 -- connect`: part 3 alone.
    if std::env::args().any(|a| a == "connect") {
        return connect::run();
    }
    // Sync first: freeing the 100,000-service maps of the per-packet runs
    // keeps the kernel busy for a while after.
    sync()?;
    println!();
    per_packet()?;
    connect::run()?;
    Ok(())
}
