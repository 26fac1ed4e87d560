//! Packet tests: the real BPF programs run with BPF_PROG_TEST_RUN on
//! hand-built packets, maps filled through the real `apply`. Asserts the
//! verdict, the rewritten bytes and exact checksums. No network is touched.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ingress_common::{
    BACKEND_F_REMOTE, Backend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP, SVC_F_AFFINITY_CLIENT_IP,
    SVC_F_SOURCE_RANGES, ServiceEntry, program_names,
};
use ingressd::{
    kernel::LbMaps,
    l4::{
        apply, diff,
        model::{DesiredState, RingSpec},
    },
};
use testkit::packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const NODE_PORT: u16 = 30080;

fn need_root() -> bool {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: packet tests load BPF programs and need root; run `sudo -E cargo xtask test`"
        );
        return false;
    }
    true
}

/// The programs loaded with maps pinned in a directory of their own,
/// removed on drop (also when the test fails).
struct Loaded {
    ebpf: Ebpf,
    maps: LbMaps,
    state: DesiredState,
    _pins: PinDir,
}

/// Removes the test's pins on drop, whatever happened.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = ingressd::kernel::cleanup(&self.0);
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn load() -> Loaded {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/ingressd-pkt-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf (run `cargo xtask setup`)");
    let pins = PinDir(dir.clone());
    let ebpf = ingressd::kernel::load_unattached(&dir).expect("load and verify the programs");
    let mut maps = LbMaps::open(&dir).expect("open pinned maps");
    maps.set_node(&[NODE]).unwrap();
    Loaded {
        ebpf,
        maps,
        state: DesiredState::default(),
        _pins: pins,
    }
}

fn backend(ip: Ipv4Addr, port: u16, remote: bool) -> Backend {
    Backend {
        addr: u32::from(ip).to_be(),
        port: port.to_be(),
        flags: if remote { BACKEND_F_REMOTE } else { 0 },
        pad: 0,
    }
}

fn nodeport(proto: u8) -> FrontendKey {
    FrontendKey {
        addr: 0,
        port: NODE_PORT.to_be(),
        proto,
        scope: 0,
    }
}

impl Loaded {
    /// Points `frontends` at one ring holding `backends`, through diff + apply.
    fn set_service(&mut self, frontends: &[FrontendKey], mut backends: Vec<Backend>, flags: u32) {
        backends.sort();
        let mut desired = DesiredState::default();
        desired.rings.insert(
            7,
            RingSpec {
                name: "test/web:http/TCP".into(),
                backends,
                ..Default::default()
            },
        );
        for f in frontends {
            desired.frontends.insert(
                *f,
                ServiceEntry {
                    ring_id: 7,
                    flags,
                    affinity_timeout: if flags & SVC_F_AFFINITY_CLIENT_IP != 0 {
                        10_800
                    } else {
                        0
                    },
                },
            );
        }
        apply(&diff(&self.state, &desired), &mut self.maps).expect("apply");
        self.state = desired;
    }

    /// Makes `desired` the maps' state, through diff + apply.
    fn set_state(&mut self, desired: DesiredState) {
        apply(&diff(&self.state, &desired), &mut self.maps).expect("apply");
        self.state = desired;
    }

    fn xdp(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program_names::XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        run(|opts| prog.test_run(opts), input)
    }

    fn tc(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_names::TC_EGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        run(|opts| prog.test_run(opts), input)
    }

    fn counter(&self, name: &str) -> u64 {
        self.maps.counters().unwrap()[name]
    }
}

fn run(
    f: impl FnOnce(
        TestRunOptions<'_>,
    ) -> Result<aya::programs::TestRunResult, aya::programs::ProgramError>,
    input: &[u8],
) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    let res = f(opts).expect("test_run");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn assert_checksums(p: &[u8]) {
    if let Err(e) = packet::verify_checksums(p) {
        panic!("{e}\n{}", packet::hex(p));
    }
}

#[test]
fn nodeport_tcp_to_local_backend_is_dnated_and_reply_reverse_nated() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![backend(pod, 8080, false)], 0);

    let syn = packet::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN, 1, b"");
    let (verdict, out) = l.xdp(&syn);
    assert_eq!(verdict, XDP_PASS);
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, 40000, pod, 8080));
    assert_checksums(&out);
    assert_eq!(out.len(), syn.len());

    // The pod's reply leaves through TC egress with the NodePort as source.
    let reply = packet::tcp((pod, 8080), (CLIENT, 40000), TCP_SYN | TCP_ACK, 77, b"");
    let (_, out) = l.tc(&reply);
    let p = packet::parse(&out).unwrap();
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (NODE, NODE_PORT, CLIENT, 40000)
    );
    assert_checksums(&out);
    assert_eq!(l.counter("revnat_egress"), 1);
    assert_eq!(l.counter("dnat_new_local"), 1);
}

#[test]
fn payload_packets_keep_exact_checksums() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    let vip = FrontendKey {
        addr: u32::from(LB_IP).to_be(),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        scope: 0,
    };
    l.set_service(&[vip], vec![backend(pod, 8080, false)], 0);
    for len in [0usize, 1, 2, 3, 17, 100, 1000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        // The flow starts with its SYN; the payload follows.
        let syn = packet::tcp((CLIENT, 41000 + len as u16), (LB_IP, 80), TCP_SYN, 98, b"");
        assert_eq!(l.xdp(&syn).0, XDP_PASS);
        let pkt = packet::tcp(
            (CLIENT, 41000 + len as u16),
            (LB_IP, 80),
            TCP_ACK,
            99,
            &payload,
        );
        let (verdict, out) = l.xdp(&pkt);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(packet::parse(&out).unwrap().dst, pod);
        assert_checksums(&out);
        assert_eq!(
            &out[packet::L4_OFF + 20..],
            &payload[..],
            "payload untouched"
        );
    }
}

#[test]
fn udp_nodeport_dnat_and_reverse_nat() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 3);
    l.set_service(&[nodeport(IPPROTO_UDP)], vec![backend(pod, 5353, false)], 0);
    let (verdict, out) = l.xdp(&packet::udp((CLIENT, 50000), (NODE, NODE_PORT), b"hello"));
    assert_eq!(verdict, XDP_PASS);
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.dst, p.dport, p.proto), (pod, 5353, IPPROTO_UDP));
    assert_checksums(&out);
    let (_, out) = l.tc(&packet::udp((pod, 5353), (CLIENT, 50000), b"hello back"));
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.src, p.sport), (NODE, NODE_PORT));
    assert_checksums(&out);
}

#[test]
fn remote_backend_is_snated_and_its_reply_restored() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 2, 2);
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![backend(pod, 8080, true)], 0);
    let (verdict, out) = l.xdp(&packet::tcp(
        (CLIENT, 40001),
        (NODE, NODE_PORT),
        TCP_SYN,
        5,
        b"",
    ));
    // Forwarded by route lookup (TX/redirect) or, without a route, to the stack.
    assert!(
        matches!(verdict, XDP_PASS | XDP_TX | XDP_REDIRECT),
        "verdict {verdict}"
    );
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.src, p.dst, p.dport), (NODE, pod, 8080));
    assert!(
        (ingress_common::SNAT_PORT_MIN..=ingress_common::SNAT_PORT_MAX).contains(&p.sport),
        "snat port {}",
        p.sport
    );
    assert_checksums(&out);
    let snat_port = p.sport;

    // The backend's reply to the SNAT address is restored to what the client expects.
    let reply = packet::tcp((pod, 8080), (NODE, snat_port), TCP_SYN | TCP_ACK, 9, b"");
    let (verdict, out) = l.xdp(&reply);
    assert!(
        matches!(verdict, XDP_PASS | XDP_TX | XDP_REDIRECT),
        "verdict {verdict}"
    );
    let p = packet::parse(&out).unwrap();
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (NODE, NODE_PORT, CLIENT, 40001)
    );
    assert_checksums(&out);
    assert_eq!(l.counter("revnat_snat_reply"), 1);

    // A second flow gets a different SNAT port.
    let (_, out) = l.xdp(&packet::tcp(
        (CLIENT, 40002),
        (NODE, NODE_PORT),
        TCP_SYN,
        5,
        b"",
    ));
    assert_ne!(packet::parse(&out).unwrap().sport, snat_port);
}

#[test]
fn established_flow_keeps_its_backend_after_an_endpoint_change() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pods: Vec<Ipv4Addr> = (2..6).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect();
    let all: Vec<Backend> = pods.iter().map(|p| backend(*p, 8080, false)).collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], all.clone(), 0);
    let (_, out) = l.xdp(&packet::tcp(
        (CLIENT, 42000),
        (NODE, NODE_PORT),
        TCP_SYN,
        1,
        b"",
    ));
    let chosen = packet::parse(&out).unwrap().dst;

    // Every other endpoint goes away and new ones arrive.
    let others: Vec<Backend> = (10..14)
        .map(|i| backend(Ipv4Addr::new(198, 18, 1, i), 8080, false))
        .collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], others, 0);
    let (_, out) = l.xdp(&packet::tcp(
        (CLIENT, 42000),
        (NODE, NODE_PORT),
        TCP_ACK,
        2,
        b"GET /",
    ));
    assert_eq!(
        packet::parse(&out).unwrap().dst,
        chosen,
        "conntrack keeps the flow on its backend"
    );
    assert!(l.counter("dnat_conntrack_hit") >= 1);

    // A new connection (SYN) goes to the current endpoints only.
    let (_, out) = l.xdp(&packet::tcp(
        (CLIENT, 42001),
        (NODE, NODE_PORT),
        TCP_SYN,
        1,
        b"",
    ));
    let fresh = packet::parse(&out).unwrap().dst;
    assert!(
        !pods.contains(&fresh),
        "new flow went to removed endpoint {fresh}"
    );
}

#[test]
fn maglev_moves_about_one_nth_of_new_flows_when_one_of_n_goes() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let n = 10u8;
    let all: Vec<Backend> = (0..n)
        .map(|i| backend(Ipv4Addr::new(198, 18, 1, 10 + i), 8080, false))
        .collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], all.clone(), 0);
    let flows = 2000u16;
    let pick = |l: &mut Loaded, i: u16| {
        let src = Ipv4Addr::new(198, 18, 100 + (i % 50) as u8, (i / 50) as u8 + 1);
        let (_, out) = l.xdp(&packet::tcp(
            (src, 20000 + i),
            (NODE, NODE_PORT),
            TCP_SYN,
            1,
            b"",
        ));
        packet::parse(&out).unwrap().dst
    };
    let before: Vec<Ipv4Addr> = (0..flows).map(|i| pick(&mut l, i)).collect();
    let removed = Ipv4Addr::new(198, 18, 1, 14);
    let fewer: Vec<Backend> = all
        .iter()
        .copied()
        .filter(|b| b.addr != u32::from(removed).to_be())
        .collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], fewer, 0);
    let after: Vec<Ipv4Addr> = (0..flows).map(|i| pick(&mut l, i)).collect();
    let on_removed = before.iter().filter(|b| **b == removed).count();
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != removed && b != a)
        .count();
    assert!(after.iter().all(|a| *a != removed));
    // Spread: each backend has about 1/N of the flows.
    assert!(
        on_removed > flows as usize / n as usize / 2,
        "removed backend had {on_removed} flows"
    );
    // Disruption: flows on the other backends barely move (Maglev: a few %).
    assert!(
        moved_others * 100 <= flows as usize * 5,
        "{moved_others} of {flows} flows on surviving backends moved"
    );
}

#[test]
fn service_without_endpoints_refuses_tcp_with_rst() {
    if !need_root() {
        return;
    }
    let mut l = load();
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![], 0);
    let syn = packet::tcp((CLIENT, 43000), (NODE, NODE_PORT), TCP_SYN, 1000, b"");
    let (verdict, out) = l.xdp(&syn);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), 54);
    let p = packet::parse(&out).unwrap();
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (NODE, NODE_PORT, CLIENT, 43000)
    );
    assert_eq!(
        &out[0..6],
        &packet::CLIENT_MAC,
        "sent back to the client's MAC"
    );
    let tcp = &out[packet::L4_OFF..];
    assert_eq!(tcp[13], TCP_RST | TCP_ACK);
    assert_eq!(
        u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        1001,
        "acks the SYN"
    );
    assert_checksums(&out);

    // Anything but a SYN starts no flow: the stack answers it (with a
    // reset of its own), and nothing is recorded.
    let ack = packet::tcp((CLIENT, 43001), (NODE, NODE_PORT), TCP_ACK, 5, b"data");
    let (verdict, out) = l.xdp(&ack);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, ack, "passed untouched");
    assert_eq!(l.counter("pass_tcp_without_flow"), 1);

    // Never a reset for a reset: it goes to the stack like any non-SYN.
    let (verdict, _) = l.xdp(&packet::tcp(
        (CLIENT, 43002),
        (NODE, NODE_PORT),
        TCP_RST,
        5,
        b"",
    ));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(l.counter("refused_tcp_rst"), 1);
}

#[test]
fn service_without_endpoints_refuses_udp_with_icmp_port_unreachable() {
    if !need_root() {
        return;
    }
    let mut l = load();
    l.set_service(&[nodeport(IPPROTO_UDP)], vec![], 0);
    let dgram = packet::udp(
        (CLIENT, 44000),
        (NODE, NODE_PORT),
        b"are you there? this is a longer payload",
    );
    let (verdict, out) = l.xdp(&dgram);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[0..6], &packet::CLIENT_MAC);
    let ip = &out[14..34];
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), NODE);
    assert_eq!(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), CLIENT);
    assert_eq!(
        &out[34..36],
        &[3, 3],
        "destination unreachable / port unreachable"
    );
    assert_eq!(
        &out[42..70],
        &dgram[14..42],
        "quotes the original IP header and 8 bytes"
    );
    assert_checksums(&out);
    assert_eq!(l.counter("refused_icmp_unreachable"), 1);
}

#[test]
fn malformed_and_foreign_packets_pass_untouched_and_are_counted() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![backend(pod, 8080, false)], 0);
    let good = packet::tcp((CLIENT, 45000), (NODE, NODE_PORT), TCP_SYN, 1, b"");

    let mut options = good.clone();
    options[14] = 0x46;
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    let mut later_fragment = good.clone();
    later_fragment[20] = 0x00;
    later_fragment[21] = 0x10; // offset 16
    let mut gre = good.clone();
    gre[23] = 47;
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let other_port = packet::tcp((CLIENT, 45000), (NODE, 22), TCP_SYN, 1, b"");
    let other_host = packet::tcp(
        (CLIENT, 45000),
        (Ipv4Addr::new(198, 18, 9, 9), NODE_PORT),
        TCP_SYN,
        1,
        b"",
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("ethernet only", good[..14].to_vec(), "pass_truncated"),
        ("truncated IP header", good[..30].to_vec(), "pass_truncated"),
        (
            "truncated TCP header",
            good[..40].to_vec(),
            "pass_truncated",
        ),
        ("IP options", options, "pass_ip_options"),
        ("first fragment", fragment, "pass_fragment"),
        ("later fragment", later_fragment, "pass_fragment"),
        ("unknown protocol", gre, "pass_unknown_proto"),
        ("IPv6", ipv6, "pass_not_ipv4"),
        ("not a service port", other_port, "pass_not_service"),
        (
            "NodePort on a foreign address",
            other_host,
            "pass_not_service",
        ),
    ];
    for (what, input, counter) in cases {
        let before = l.counter(counter);
        let (verdict, out) = l.xdp(&input);
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, input, "{what}: bytes changed");
        assert_eq!(l.counter(counter), before + 1, "{what}: counter {counter}");
    }
    assert_eq!(l.counter("dnat_new_local"), 0);
}

#[test]
fn client_ip_affinity_keeps_one_client_on_one_backend() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let all: Vec<Backend> = (0..8)
        .map(|i| backend(Ipv4Addr::new(198, 18, 1, 10 + i), 8080, false))
        .collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], all, SVC_F_AFFINITY_CLIENT_IP);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..50u16 {
        let (_, out) = l.xdp(&packet::tcp(
            (CLIENT, 30000 + port),
            (NODE, NODE_PORT),
            TCP_SYN,
            1,
            b"",
        ));
        seen.insert(packet::parse(&out).unwrap().dst);
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
}

#[test]
fn xdp_pass_passes_everything_untouched() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let prog: &mut Xdp = l
        .ebpf
        .program_mut(program_names::XDP_PASS)
        .unwrap()
        .try_into()
        .unwrap();
    for input in [
        packet::tcp((CLIENT, 1), (NODE, NODE_PORT), TCP_SYN, 1, b""),
        packet::udp((CLIENT, 2), (NODE, 53), b"x"),
    ] {
        let (verdict, out) = run(|opts| prog.test_run(opts), &input);
        assert_eq!((verdict, out), (XDP_PASS, input));
    }
}

#[test]
fn load_balancer_source_ranges_drop_other_sources_at_the_lb_ip_only() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    let vip = FrontendKey {
        addr: u32::from(LB_IP).to_be(),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        scope: 0,
    };
    let mut desired = DesiredState::default();
    desired.rings.insert(
        7,
        RingSpec {
            name: "test/web:http/TCP".into(),
            backends: vec![backend(pod, 8080, false)],
            source_ranges: vec![(Ipv4Addr::new(198, 18, 0, 0), 24)],
            ..Default::default()
        },
    );
    let entry = |flags| ServiceEntry {
        ring_id: 7,
        flags,
        affinity_timeout: 0,
    };
    desired.frontends.insert(vip, entry(SVC_F_SOURCE_RANGES));
    desired.frontends.insert(nodeport(IPPROTO_TCP), entry(0));
    l.set_state(desired);
    let outsider = Ipv4Addr::new(203, 0, 113, 5);
    // Inside the range: served.
    let (verdict, out) = l.xdp(&packet::tcp((CLIENT, 40000), (LB_IP, 80), TCP_SYN, 1, b""));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(packet::parse(&out).unwrap().dst, pod);
    // Outside: dropped, every packet (not only the first), and counted.
    for flags in [TCP_SYN, TCP_ACK] {
        let (verdict, _) = l.xdp(&packet::tcp((outsider, 40001), (LB_IP, 80), flags, 1, b""));
        assert_eq!(verdict, XDP_DROP);
    }
    assert_eq!(l.counter("drop_source_range"), 2);
    // The NodePort of the same Service is not restricted.
    let (verdict, out) = l.xdp(&packet::tcp(
        (outsider, 40002),
        (NODE, NODE_PORT),
        TCP_SYN,
        1,
        b"",
    ));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(packet::parse(&out).unwrap().dst, pod);
    // The range goes: the outsider may use the LoadBalancer IP.
    let mut open = l.state.clone();
    open.rings.get_mut(&7).unwrap().source_ranges = vec![(Ipv4Addr::new(203, 0, 113, 0), 24)];
    l.set_state(open);
    let (verdict, _) = l.xdp(&packet::tcp(
        (outsider, 40003),
        (LB_IP, 80),
        TCP_SYN,
        1,
        b"",
    ));
    assert_eq!(verdict, XDP_PASS);
    let (verdict, _) = l.xdp(&packet::tcp((CLIENT, 40004), (LB_IP, 80), TCP_SYN, 1, b""));
    assert_eq!(verdict, XDP_DROP, "the old range still admits");
}

#[test]
fn client_ip_affinity_does_not_narrow_the_snat_ports() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let remote = backend(Ipv4Addr::new(198, 18, 2, 2), 8080, true);
    l.set_service(
        &[nodeport(IPPROTO_TCP)],
        vec![remote],
        SVC_F_AFFINITY_CLIENT_IP,
    );
    let mut ports = std::collections::BTreeSet::new();
    for port in 0..40u16 {
        let (verdict, out) = l.xdp(&packet::tcp(
            (CLIENT, 30000 + port),
            (NODE, NODE_PORT),
            TCP_SYN,
            1,
            b"",
        ));
        assert_ne!(verdict, XDP_DROP, "connection {port} found no SNAT port");
        ports.insert(packet::parse(&out).unwrap().sport);
    }
    // One client, one backend, but a port per connection (the client-only
    // hash gave it the same 8 candidates for every connection).
    assert_eq!(ports.len(), 40, "{ports:?}");
    assert_eq!(l.counter("drop_snat_exhausted"), 0);
}

#[test]
fn an_empty_local_ring_drops_where_an_empty_service_refuses() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let mut desired = DesiredState::default();
    desired.rings.insert(
        7,
        RingSpec {
            name: "test/web:http/TCP local".into(),
            drop_when_empty: true,
            ..Default::default()
        },
    );
    desired.frontends.insert(
        nodeport(IPPROTO_TCP),
        ServiceEntry {
            ring_id: 7,
            flags: ingress_common::SVC_F_LOCAL_ONLY,
            affinity_timeout: 0,
        },
    );
    l.set_state(desired);
    let (verdict, _) = l.xdp(&packet::tcp(
        (CLIENT, 40000),
        (NODE, NODE_PORT),
        TCP_SYN,
        1,
        b"",
    ));
    assert_eq!(
        verdict, XDP_DROP,
        "no RST for a Local policy without local endpoints"
    );
    assert_eq!(l.counter("drop_no_local_endpoint"), 1);
    assert_eq!(l.counter("refused_tcp_rst"), 0);
}

#[test]
fn tcp_flows_start_only_with_a_syn() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let remote = backend(Ipv4Addr::new(198, 18, 2, 2), 8080, true);
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![remote], 0);
    // Spoofed or stray packets of flows that never began: passed to the
    // stack as they came, with no flow recorded and no SNAT port taken.
    for (i, flags) in [TCP_ACK, TCP_ACK | TCP_FIN, TCP_RST, TCP_SYN | TCP_ACK]
        .into_iter()
        .enumerate()
    {
        let src = Ipv4Addr::new(203, 0, 113, 1 + i as u8);
        let pkt = packet::tcp((src, 50000 + i as u16), (NODE, NODE_PORT), flags, 7, b"x");
        let (verdict, out) = l.xdp(&pkt);
        assert_eq!(verdict, XDP_PASS, "flags {flags:#x}");
        assert_eq!(out, pkt, "flags {flags:#x}: bytes changed");
    }
    assert_eq!(l.counter("pass_tcp_without_flow"), 4);
    assert!(l.maps.flows(usize::MAX).is_empty(), "state was created");
    let sweep = ingressd::kernel::Conntrack::open(&l._pins.0)
        .unwrap()
        .sweep(&Default::default(), ingressd::kernel::monotonic_ns())
        .unwrap();
    assert_eq!(sweep.snat_in_use, 0);
}

#[test]
fn flows_follow_their_tcp_state_and_age_out_giving_their_snat_port_back() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 2, 2);
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![backend(pod, 8080, true)], 0);
    let flow = |flags| packet::tcp((CLIENT, 45000), (NODE, NODE_PORT), flags, 1, b"");
    let state = |l: &Loaded| l.maps.flows(usize::MAX).first().map(|f| f.entry.state);
    l.xdp(&flow(TCP_SYN));
    assert_eq!(state(&l), Some(ingress_common::CT_TCP_SYN));
    l.xdp(&flow(TCP_ACK));
    assert_eq!(state(&l), Some(ingress_common::CT_TCP_ESTABLISHED));
    let mut ct = ingressd::kernel::Conntrack::open(&l._pins.0).unwrap();
    let t = ingressd::kernel::Timeouts::default();
    let now = ingressd::kernel::monotonic_ns();
    let s = ct.sweep(&t, now).unwrap();
    assert_eq!((s.flows, s.snat_in_use, s.expired), (1, 1, 0));
    // An hour idle is nothing for an established flow...
    let s = ct.sweep(&t, now + 3_600_000_000_000).unwrap();
    assert_eq!((s.flows, s.expired), (1, 0));
    // ...but 10 s after the client's FIN it is gone, with its SNAT port.
    l.xdp(&flow(TCP_ACK | TCP_FIN));
    assert_eq!(state(&l), Some(ingress_common::CT_TCP_CLOSING));
    let s = ct
        .sweep(&t, ingressd::kernel::monotonic_ns() + 11_000_000_000)
        .unwrap();
    assert_eq!((s.flows, s.expired, s.snat_in_use), (0, 1, 0));
    assert_eq!(l.counter("conntrack_expired"), 1);
    // A lone SYN lasts 60 s, UDP 30 s.
    l.xdp(&flow(TCP_SYN));
    l.xdp(&packet::udp((CLIENT, 45001), (NODE, NODE_PORT), b"q"));
    l.set_service(
        &[nodeport(IPPROTO_TCP), nodeport(IPPROTO_UDP)],
        vec![backend(pod, 8080, true)],
        0,
    );
    l.xdp(&packet::udp((CLIENT, 45001), (NODE, NODE_PORT), b"q"));
    let now = ingressd::kernel::monotonic_ns();
    assert_eq!(ct.sweep(&t, now + 31_000_000_000).unwrap().expired, 1);
    assert_eq!(ct.sweep(&t, now + 61_000_000_000).unwrap().expired, 1);
    assert!(l.maps.flows(usize::MAX).is_empty());
}

#[test]
fn refusals_are_rate_limited() {
    if !need_root() {
        return;
    }
    let mut l = load();
    l.set_service(&[nodeport(IPPROTO_TCP)], vec![], 0);
    for i in 0..600u16 {
        let src = Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1);
        l.xdp(&packet::tcp(
            (src, 1000 + i),
            (NODE, NODE_PORT),
            TCP_SYN,
            1,
            b"",
        ));
    }
    let (sent, limited) = (
        l.counter("refused_tcp_rst"),
        l.counter("drop_refusal_rate_limited"),
    );
    assert_eq!(sent + limited, 600);
    // A burst of 50 per CPU, then one a millisecond.
    assert!(sent >= 50, "{sent} sent");
    assert!(limited >= 300, "{sent} sent, {limited} limited");
}

#[test]
fn a_spoofed_flow_cannot_take_over_another_flows_replies() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    let vip = FrontendKey {
        addr: u32::from(LB_IP).to_be(),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        scope: 0,
    };
    l.set_service(
        &[vip, nodeport(IPPROTO_TCP)],
        vec![backend(pod, 8080, false)],
        0,
    );
    // The real client, through the LoadBalancer IP.
    l.xdp(&packet::tcp((CLIENT, 46000), (LB_IP, 80), TCP_SYN, 1, b""));
    // Someone sends a SYN with its address and port to the NodePort: the
    // same endpoint would answer both on one reply tuple.
    let (verdict, _) = l.xdp(&packet::tcp(
        (CLIENT, 46000),
        (NODE, NODE_PORT),
        TCP_SYN,
        1,
        b"",
    ));
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(l.counter("drop_revnat_conflict"), 1);
    // The real client's replies still come from the address it used.
    let reply = packet::tcp((pod, 8080), (CLIENT, 46000), TCP_SYN | TCP_ACK, 9, b"");
    let (_, out) = l.tc(&reply);
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.src, p.sport), (LB_IP, 80));
}

#[test]
fn a_closed_flows_tuple_goes_to_the_clients_next_connection_an_open_ones_does_not() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    let vip = FrontendKey {
        addr: u32::from(LB_IP).to_be(),
        port: 80u16.to_be(),
        proto: IPPROTO_TCP,
        scope: 0,
    };
    l.set_service(
        &[vip, nodeport(IPPROTO_TCP)],
        vec![backend(pod, 8080, false)],
        0,
    );
    let to_np = |port, flags| packet::tcp((CLIENT, port), (NODE, NODE_PORT), flags, 1, b"");
    let reply = |port| packet::tcp((pod, 8080), (CLIENT, port), TCP_SYN | TCP_ACK, 9, b"");
    let rewritten = |l: &mut Loaded, port| l.tc(&reply(port)).1 != reply(port);

    // A flow the client resets is closing (its late packets still go
    // through), and the same client port connecting to the pod itself
    // takes the reply tuple over.
    l.xdp(&to_np(47000, TCP_SYN));
    let (_, out) = l.xdp(&to_np(47000, TCP_RST));
    assert_eq!(packet::parse(&out).unwrap().dst, pod);
    let closing = l.maps.flows(usize::MAX);
    assert_eq!(closing[0].entry.state, ingress_common::CT_TCP_CLOSING);
    assert!(rewritten(&mut l, 47000));
    let direct = packet::tcp((CLIENT, 47000), (pod, 8080), TCP_SYN, 1, b"");
    assert_eq!(l.xdp(&direct), (XDP_PASS, direct));
    assert_eq!(l.counter("revnat_superseded"), 1);
    assert!(
        !rewritten(&mut l, 47000),
        "the new connection's replies are its own"
    );

    // An open flow keeps its tuple: a spoofed SYN straight to the pod from
    // the client's address and port changes nothing.
    l.xdp(&to_np(47001, TCP_SYN));
    l.xdp(&to_np(47001, TCP_ACK));
    let spoof = packet::tcp((CLIENT, 47001), (pod, 8080), TCP_SYN, 1, b"");
    assert_eq!(l.xdp(&spoof).0, XDP_PASS);
    assert_eq!(l.counter("revnat_superseded"), 1);
    assert!(rewritten(&mut l, 47001), "an open flow lost its replies");

    // A closed flow's tuple through another frontend: taken over, not a
    // conflict.
    l.xdp(&packet::tcp((CLIENT, 47002), (LB_IP, 80), TCP_SYN, 1, b""));
    l.xdp(&packet::tcp(
        (CLIENT, 47002),
        (LB_IP, 80),
        TCP_ACK | TCP_FIN,
        2,
        b"",
    ));
    let (verdict, _) = l.xdp(&to_np(47002, TCP_SYN));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(l.counter("revnat_taken_over"), 1);
    assert_eq!(l.counter("drop_revnat_conflict"), 0);
    let (_, out) = l.tc(&reply(47002));
    let p = packet::parse(&out).unwrap();
    assert_eq!((p.src, p.sport), (NODE, NODE_PORT));
}

#[test]
fn client_ip_affinity_times_out_on_the_packet_path() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let all: Vec<Backend> = (0..8)
        .map(|i| backend(Ipv4Addr::new(198, 18, 1, 10 + i), 8080, false))
        .collect();
    let mut desired = DesiredState::default();
    desired.rings.insert(
        7,
        RingSpec {
            name: "test/web:http/TCP".into(),
            backends: all,
            ..Default::default()
        },
    );
    desired.frontends.insert(
        nodeport(IPPROTO_TCP),
        ServiceEntry {
            ring_id: 7,
            flags: SVC_F_AFFINITY_CLIENT_IP,
            affinity_timeout: 5,
        },
    );
    l.set_state(desired);
    let syn = |port| packet::tcp((CLIENT, port), (NODE, NODE_PORT), TCP_SYN, 1, b"");
    let backend_of = |l: &mut Loaded, port| packet::parse(&l.xdp(&syn(port)).1).unwrap().dst;
    let first = backend_of(&mut l, 31000);
    // Within the timeout: the same backend, whatever the port.
    for port in 31001..31010 {
        assert_eq!(backend_of(&mut l, port), first);
    }
    // Each round, the client's entry is made 6 s old: past the timeout, so
    // the next connection chooses anew (by its flow's hash).
    let mut seen = std::collections::BTreeSet::from([first]);
    let pins = l._pins.0.clone();
    for port in 32000..32012 {
        let data =
            aya::maps::MapData::from_pin(pins.join(ingress_common::map_names::AFFINITY)).unwrap();
        let mut map: aya::maps::HashMap<
            _,
            ingress_common::AffinityKey,
            ingress_common::AffinityEntry,
        > = aya::maps::Map::LruHashMap(data).try_into().unwrap();
        let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
        assert_eq!(entries.len(), 1, "one client, one entry");
        for (k, mut e) in entries {
            e.last_used_ns = e.last_used_ns.saturating_sub(6_000_000_000);
            map.insert(k, e, 0).unwrap();
        }
        seen.insert(backend_of(&mut l, port));
    }
    assert!(seen.len() >= 3, "affinity outlived its timeout: {seen:?}");
}

#[test]
fn a_flows_replies_keep_it_alive_and_bring_its_reply_entry_back() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pod = Ipv4Addr::new(198, 18, 1, 2);
    l.set_service(&[nodeport(IPPROTO_UDP)], vec![backend(pod, 5353, false)], 0);
    let ask = packet::udp((CLIENT, 48000), (NODE, NODE_PORT), b"q");
    l.xdp(&ask);
    let pins = l._pins.0.clone();
    let ct = |pins: &std::path::Path| {
        let data =
            aya::maps::MapData::from_pin(pins.join(ingress_common::map_names::CONNTRACK)).unwrap();
        let map: aya::maps::HashMap<_, ingress_common::FlowKey, ingress_common::CtEntry> =
            aya::maps::Map::LruHashMap(data).try_into().unwrap();
        map
    };
    // Make the flow look a minute idle, then let the server answer: the
    // reply (the client says nothing) keeps the flow.
    let mut map = ct(&pins);
    let (key, mut entry) = map.iter().next().unwrap().unwrap();
    entry.last_seen_ns = entry.last_seen_ns.saturating_sub(60_000_000_000);
    map.insert(key, entry, 0).unwrap();
    let answer = packet::udp((pod, 5353), (CLIENT, 48000), b"a");
    let (_, out) = l.tc(&answer);
    assert_eq!(
        packet::parse(&out).unwrap().src,
        NODE,
        "the reply is reverse-NATed"
    );
    let now = ingressd::kernel::monotonic_ns();
    let fresh = ct(&pins).get(&key, 0).unwrap();
    assert!(
        now - fresh.last_seen_ns < 5_000_000_000,
        "the reply did not refresh the flow"
    );

    // The flow's reply entry gone (a sweep raced a packet): the client's
    // next packet a second later puts it back.
    let revnat =
        aya::maps::MapData::from_pin(pins.join(ingress_common::map_names::REVNAT)).unwrap();
    let mut revnat: aya::maps::HashMap<_, ingress_common::FlowKey, ingress_common::RevNatEntry> =
        aya::maps::Map::LruHashMap(revnat).try_into().unwrap();
    let reply_key = fresh.reply_key(&key);
    revnat.remove(&reply_key).unwrap();
    let mut map = ct(&pins);
    let mut e = map.get(&key, 0).unwrap();
    e.last_seen_ns = e.last_seen_ns.saturating_sub(2_000_000_000);
    map.insert(key, e, 0).unwrap();
    l.xdp(&ask);
    assert!(
        revnat.get(&reply_key, 0).is_ok(),
        "the reply entry was not put back"
    );
}

#[test]
fn client_ip_affinity_survives_endpoints_joining() {
    if !need_root() {
        return;
    }
    let mut l = load();
    let pods = |n: u8| -> Vec<Backend> {
        (0..n)
            .map(|i| backend(Ipv4Addr::new(198, 18, 1, 10 + i), 8080, false))
            .collect()
    };
    l.set_service(&[nodeport(IPPROTO_TCP)], pods(3), SVC_F_AFFINITY_CLIENT_IP);
    let clients: Vec<Ipv4Addr> = (1..=40).map(|i| Ipv4Addr::new(198, 19, 7, i)).collect();
    let choose = |l: &mut Loaded, c: Ipv4Addr, port: u16| {
        let (_, out) = l.xdp(&packet::tcp((c, port), (NODE, NODE_PORT), TCP_SYN, 1, b""));
        packet::parse(&out).unwrap().dst
    };
    let before: Vec<Ipv4Addr> = clients.iter().map(|c| choose(&mut l, *c, 40000)).collect();
    // Scaled from 3 to 4 endpoints: Maglev moves about a quarter of the
    // slots to the new one, but every client keeps its endpoint.
    l.set_service(&[nodeport(IPPROTO_TCP)], pods(4), SVC_F_AFFINITY_CLIENT_IP);
    let after: Vec<Ipv4Addr> = clients.iter().map(|c| choose(&mut l, *c, 40001)).collect();
    assert_eq!(before, after);
    // An endpoint leaving does move its clients (to the others).
    let gone = before[0];
    let rest: Vec<Backend> = pods(4)
        .into_iter()
        .filter(|b| b.addr != u32::from(gone).to_be())
        .collect();
    l.set_service(&[nodeport(IPPROTO_TCP)], rest, SVC_F_AFFINITY_CLIENT_IP);
    assert_ne!(choose(&mut l, clients[0], 40002), gone);
}
