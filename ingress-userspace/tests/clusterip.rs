//! ClusterIP at the socket, end to end: `ingressd` on node-a attaches the
//! cgroup programs to node-a's cgroup; its pods and host processes connect
//! to cluster IPs with real sockets (the lab's client: Python's socket
//! module). Tests are named after the Kubernetes e2e cases they mirror
//! (test/e2e/network/service.go). Needs root; without it each test says so.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use testkit::lab::{self, Attempt, Lab, Mode, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");

/// A Service with a cluster IP and one port, and its EndpointSlice
/// listing `pods` (name, address, node) as ready.
fn service(
    name: &str,
    cluster_ip: &str,
    (port, target, proto): (u16, u16, &str),
    spec_extra: &str,
    pods: &[&lab::Pod],
) -> String {
    let endpoints: String = pods
        .iter()
        .map(|p| {
            format!(
                "\n- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}",
                p.ip, p.node
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() {
        " []".to_string()
    } else {
        endpoints
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: {cluster_ip}
  ports: [{{name: p, port: {port}, targetPort: {target}, protocol: {proto}}}]
{spec_extra}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: demo
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {target}, protocol: {proto}}}]
endpoints:{endpoints}
---
"
    )
}

/// A lab with every pod answering and `ingressd --no-l7` on node-a
/// serving `manifests(lab)`.
fn setup(tag: &str, manifests: impl Fn(&Lab) -> String) -> (Lab, PathBuf) {
    let mut lab = Lab::two_nodes(tag).expect("lab");
    lab.start_pods().expect("pods");
    let dir = lab.dir.join("manifests");
    std::fs::create_dir_all(&dir).expect("manifests dir");
    lab::write_manifests(&dir, &manifests(&lab));
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &["--no-l7"])
        .expect("ingressd");
    (lab, dir)
}

fn pod<'a>(lab: &'a Lab, name: &str) -> &'a lab::Pod {
    lab.pods.iter().find(|p| p.name == name).expect("pod")
}

fn bodies(attempts: &[Attempt]) -> BTreeSet<String> {
    attempts
        .iter()
        .filter_map(|a| a.body().map(str::to_string))
        .collect()
}

const WEB: &str = "198.19.10.1";
const DNS: &str = "198.19.10.2";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// Every attempt answered, the peer and the answer's source being the
/// Service address the caller used (`-` peer: unconnected UDP).
fn assert_all_from_service(attempts: &[Attempt], service: SocketAddr, connected: bool) {
    for a in attempts {
        match a {
            Attempt::Ok { peer, from, .. } => {
                assert_eq!(from, &service.to_string(), "source of the answer: {a:?}");
                if connected {
                    assert_eq!(peer, &service.to_string(), "getpeername(): {a:?}");
                }
            }
            Attempt::Err(e) => panic!("an attempt to {service} failed: {e}"),
        }
    }
}

#[test]
fn clusterip_reachable_from_pods_and_host_network_processes() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("cip", |lab| {
        let ends = [pod(lab, "a1"), pod(lab, "b1")];
        service("web", WEB, (80, 8080, "TCP"), "", &ends)
            + &service("dns", DNS, (53, 5353, "UDP"), "", &ends)
    });
    let web = addr(WEB, 80);
    let dns = addr(DNS, 53);
    for place in ["a2", "node-a"] {
        let tcp = lab.connect_from(place, Mode::Tcp, web, 20).expect("tcp");
        assert_all_from_service(&tcp, web, true);
        // Both endpoints, local and on the other node, take connections.
        let expected: BTreeSet<String> = ["a1", "b1"].map(String::from).into();
        assert_eq!(bodies(&tcp), expected, "from {place}");

        // A resolver's two ways: the answer must come from the address
        // asked, or it would be dropped as a spoof.
        let udp = lab
            .connect_from(place, Mode::UdpConnected, dns, 4)
            .expect("udp");
        assert_all_from_service(&udp, dns, true);
        let udp = lab.connect_from(place, Mode::Udp, dns, 4).expect("udp");
        assert_all_from_service(&udp, dns, false);
    }
    // 2 places x (20 TCP + 4 connected UDP); 8 unconnected datagrams.
    let translated = lab.metric(
        "node-a",
        "ingressd_socket_lb_total{result=\"connect_translated\"}",
    );
    assert!(translated >= 48, "connects translated: {translated}");
    let sent = lab.metric(
        "node-a",
        "ingressd_socket_lb_total{result=\"sendmsg_translated\"}",
    );
    assert!(sent >= 8, "datagrams translated: {sent}");
}

#[test]
fn should_be_rejected_when_no_endpoints_exist() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("crej", |_| {
        service("web", WEB, (80, 8080, "TCP"), "", &[])
            + &service("dns", DNS, (53, 5353, "UDP"), "", &[])
    });
    // Refused at once, as kube-proxy's REJECT: not a timeout.
    let tcp = lab
        .connect_from("a2", Mode::Tcp, addr(WEB, 80), 2)
        .expect("tcp");
    assert_eq!(tcp, vec![Attempt::Err("ECONNREFUSED".into()); 2]);
    let udp = lab
        .connect_from("node-a", Mode::Udp, addr(DNS, 53), 2)
        .expect("udp");
    assert_eq!(udp, vec![Attempt::Err("ECONNREFUSED".into()); 2]);
    let refused = lab.metric("node-a", "ingressd_socket_lb_total{result=\"refused\"}");
    assert!(refused >= 4, "refusals counted: {refused}");
}

#[test]
fn traffic_moves_when_an_endpoint_leaves_the_service() {
    if !lab::need_root() {
        return;
    }
    let (lab, dir) = setup("cmove", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    lab::write_manifests(
        &dir,
        &service("web", WEB, (80, 8080, "TCP"), "", &[pod(&lab, "b1")]),
    );
    let web = addr(WEB, 80);
    let moved = wait_until(Duration::from_secs(10), || {
        lab.connect_from("a2", Mode::Tcp, web, 4)
            .is_ok_and(|a| bodies(&a) == BTreeSet::from(["b1".to_string()]))
    });
    assert!(moved, "connections still reach a1");
    let after = lab.connect_from("a2", Mode::Tcp, web, 10).expect("tcp");
    assert_all_from_service(&after, web, true);
    assert_eq!(bodies(&after), BTreeSet::from(["b1".to_string()]));
}

#[test]
fn should_have_session_affinity_work_for_service_with_type_clusterip() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("caff", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "  sessionAffinity: ClientIP\n",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    let web = addr(WEB, 80);
    for place in ["a2", "node-a"] {
        let tcp = lab.connect_from(place, Mode::Tcp, web, 12).expect("tcp");
        assert_all_from_service(&tcp, web, true);
        assert_eq!(bodies(&tcp).len(), 1, "{place} moved between endpoints");
    }
}

#[test]
fn should_have_session_affinity_timeout_work_for_service_with_type_clusterip() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("cafft", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    let web = addr(WEB, 80);
    let pins = lab.node("node-a").pin_path.clone();
    // Age every affinity entry past its timeout (as 31 s without a
    // connection would), then connect again: a fresh choice each round,
    // so over 12 rounds both endpoints show up.
    let first = lab.connect_from("a2", Mode::Tcp, web, 1).expect("tcp");
    assert_all_from_service(&first, web, true);
    let mut seen = bodies(&first);
    for _ in 0..12 {
        let n = age_affinity(&pins, Duration::from_secs(31));
        assert!(n >= 1, "no affinity entry to age");
        let tcp = lab.connect_from("a2", Mode::Tcp, web, 1).expect("tcp");
        assert_all_from_service(&tcp, web, true);
        seen.extend(bodies(&tcp));
    }
    assert_eq!(seen.len(), 2, "affinity outlived its timeout: {seen:?}");
}

/// Moves the last use of every affinity entry `by` into the past; how many.
fn age_affinity(pins: &Path, by: Duration) -> usize {
    use aya::maps::{HashMap, Map, MapData};
    use ingress_common::{AffinityEntry, AffinityKey, map_names};
    let data = MapData::from_pin(pins.join(map_names::AFFINITY)).expect("affinity map");
    let mut map: HashMap<MapData, AffinityKey, AffinityEntry> =
        Map::LruHashMap(data).try_into().expect("affinity map type");
    let entries: Vec<(AffinityKey, AffinityEntry)> = map.iter().filter_map(Result::ok).collect();
    for (k, mut e) in entries.iter().copied() {
        e.last_used_ns = e.last_used_ns.saturating_sub(by.as_nanos() as u64);
        map.insert(k, e, 0).expect("aging an entry");
    }
    entries.len()
}

/// The TCP reverse-translation table: how many entries it holds.
fn tcp_revnat(
    pins: &Path,
) -> aya::maps::HashMap<aya::maps::MapData, u64, ingress_common::SockRevNat> {
    use aya::maps::{Map, MapData};
    let data = MapData::from_pin(pins.join(ingress_common::map_names::TCP_REVNAT))
        .expect("tcp revnat map");
    Map::HashMap(data).try_into().expect("tcp revnat map type")
}

#[test]
fn tcp_translations_leave_their_table_at_close_and_a_full_table_falls_back_to_socket_storage() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("crev", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    let web = addr(WEB, 80);
    let pins = lab.node("node-a").pin_path.clone();
    let tcp = lab.connect_from("a2", Mode::Tcp, web, 10).expect("tcp");
    assert_all_from_service(&tcp, web, true);
    // The client closed every socket: sock_release took their entries.
    let left = || tcp_revnat(&pins).keys().count();
    assert!(
        wait_until(Duration::from_secs(5), || left() == 0),
        "{} translations outlived their sockets",
        left()
    );

    // A full table: cookies no socket will have (they count up from 1).
    let mut table = tcp_revnat(&pins);
    let fake = |i: u32| u64::MAX - u64::from(i);
    for i in 0..ingress_common::MAX_TCP_REVNAT {
        table
            .insert(fake(i), ingress_common::SockRevNat::default(), 0)
            .expect("filling the table");
    }
    let full = lab.connect_from("a2", Mode::Tcp, web, 6).expect("tcp");
    // Socket storage took the translations: the peer is still the Service.
    assert_all_from_service(&full, web, true);
    let fell_back = lab.metric(
        "node-a",
        "ingressd_socket_lb_total{result=\"tcp_revnat_full\"}",
    );
    assert!(
        fell_back >= 6,
        "translations kept in socket storage: {fell_back}"
    );
    for i in 0..ingress_common::MAX_TCP_REVNAT {
        table.remove(&fake(i)).expect("emptying the table");
    }
}

#[test]
fn internal_traffic_policy_local_keeps_traffic_on_the_node() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("citp", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "  internalTrafficPolicy: Local\n",
            &[pod(lab, "a1"), pod(lab, "b1")],
        ) + &service(
            "remote",
            "198.19.10.3",
            (80, 8080, "TCP"),
            "  internalTrafficPolicy: Local\n",
            &[pod(lab, "b1")],
        )
    });
    let tcp = lab
        .connect_from("a2", Mode::Tcp, addr(WEB, 80), 12)
        .expect("tcp");
    assert_all_from_service(&tcp, addr(WEB, 80), true);
    assert_eq!(bodies(&tcp), BTreeSet::from(["a1".to_string()]));
    // Endpoints exist, none here: dropped, never sent to node-b.
    let none = lab
        .connect_from("a2", Mode::Tcp, addr("198.19.10.3", 80), 2)
        .expect("tcp");
    assert_eq!(none, vec![Attempt::Err("EHOSTUNREACH".into()); 2]);
}

#[test]
fn restarts_keep_serving_and_socket_lb_false_detaches() {
    if !lab::need_root() {
        return;
    }
    let (mut lab, dir) = setup("crst", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    let web = addr(WEB, 80);
    // While ingressd is stopped and started again, the pinned links keep
    // the programs attached: connections never stop being translated.
    let during = lab
        .spawn_client("a2", Mode::Tcp, web, 150, Duration::from_millis(20))
        .expect("client");
    lab.stop_ingressd("node-a").expect("stop");
    let stopped = lab.connect_from("a2", Mode::Tcp, web, 4).expect("tcp");
    assert_all_from_service(&stopped, web, true);
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &["--no-l7"])
        .expect("restart");
    let log = lab.ingressd_log("node-a");
    assert!(
        log.contains("replaced_in_place=9"),
        "the restart did not reuse the pinned links:\n{log}"
    );
    let during = during.finish().expect("client");
    assert_all_from_service(&during, web, true);
    let after = lab.connect_from("a2", Mode::Tcp, web, 4).expect("tcp");
    assert_all_from_service(&after, web, true);

    // --socket-lb=false: the links go, cluster IPs are left to the network.
    lab.stop_ingressd("node-a").expect("stop");
    lab.start_ingressd_with(
        Path::new(BIN),
        "node-a",
        &dir,
        &["--no-l7", "--socket-lb=false"],
    )
    .expect("restart without socket lb");
    let links = std::fs::read_dir(lab.node("node-a").pin_path.join("links"))
        .expect("links dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("sock-"))
        .count();
    assert_eq!(links, 0, "socket links left pinned");
    let off = lab.connect_from("a2", Mode::Tcp, web, 1).expect("tcp");
    assert!(
        off[0].body().is_none(),
        "a cluster IP was translated with --socket-lb=false: {off:?}"
    );
}

#[test]
fn should_be_able_to_preserve_udp_traffic_when_server_pod_cycles_for_a_clusterip_service() {
    if !lab::need_root() {
        return;
    }
    let (lab, dir) = setup("cudp", |lab| {
        service("dns", DNS, (53, 5353, "UDP"), "", &[pod(lab, "a1")])
    });
    let dns = addr(DNS, 53);
    // A resolver that keeps one connected socket. a1 stays up after it
    // leaves the Service: only closing the socket can move the client.
    let client = lab
        .spawn_client("a2", Mode::UdpKeep, dns, 100, Duration::from_millis(40))
        .expect("client");
    let connected = wait_until(Duration::from_secs(5), || {
        lab.metric(
            "node-a",
            "ingressd_socket_lb_total{result=\"connect_translated\"}",
        ) >= 1
    });
    assert!(connected, "the client never connected");
    lab::write_manifests(
        &dir,
        &service("dns", DNS, (53, 5353, "UDP"), "", &[pod(&lab, "b1")]),
    );
    let attempts = client.finish().expect("client");
    assert_eq!(attempts[0].body(), Some("a1"), "{attempts:?}");
    let last = attempts.last().expect("attempts");
    assert_eq!(
        last.body(),
        Some("b1"),
        "the socket kept its endpoint: {attempts:?}"
    );
    assert!(
        attempts.iter().any(|a| matches!(a, Attempt::Err(_))),
        "the socket was never closed: {attempts:?}"
    );
    for a in &attempts {
        if let Attempt::Ok { from, .. } = a {
            assert_eq!(from, &dns.to_string());
        }
    }
    let log = lab.ingressd_log("node-a");
    assert!(
        log.contains("closed connected UDP sockets to removed endpoints sockets=1"),
        "log:\n{log}"
    );
}

/// `service(...)` with labels on the Service.
fn labelled(yaml: String, name: &str, labels: &str) -> String {
    yaml.replacen(
        &format!("metadata: {{name: {name}, namespace: demo}}"),
        &format!("metadata: {{name: {name}, namespace: demo, labels: {{{labels}}}}}"),
        1,
    )
}

#[test]
fn should_implement_service_proxy_name_and_skip_headless_labelled_services() {
    if !lab::need_root() {
        return;
    }
    let manifests = |lab: &Lab| {
        let ends = [pod(lab, "a1")];
        labelled(
            service("mesh", WEB, (80, 8080, "TCP"), "", &ends),
            "mesh",
            "service.kubernetes.io/service-proxy-name: other-proxy",
        ) + &labelled(
            service("skipped", DNS, (80, 8080, "TCP"), "", &ends),
            "skipped",
            "service.kubernetes.io/headless: \"\"",
        ) + &service("plain", "198.19.10.3", (80, 8080, "TCP"), "", &ends)
    };
    let (mut lab, dir) = setup("cpxn", manifests);
    // Without --service-proxy-name: only the unlabelled Service.
    let ok = lab
        .connect_from("a2", Mode::Tcp, addr("198.19.10.3", 80), 1)
        .expect("tcp");
    assert_all_from_service(&ok, addr("198.19.10.3", 80), true);
    for skipped in [addr(WEB, 80), addr(DNS, 80)] {
        let a = lab.connect_from("a2", Mode::Tcp, skipped, 1).expect("tcp");
        assert!(a[0].body().is_none(), "{skipped} was served: {a:?}");
    }
    // As other-proxy: its Service, and no longer the unlabelled one.
    lab.stop_ingressd("node-a").expect("stop");
    lab.start_ingressd_with(
        Path::new(BIN),
        "node-a",
        &dir,
        &["--no-l7", "--service-proxy-name", "other-proxy"],
    )
    .expect("ingressd");
    let mesh = lab
        .connect_from("a2", Mode::Tcp, addr(WEB, 80), 1)
        .expect("tcp");
    assert_all_from_service(&mesh, addr(WEB, 80), true);
    let plain = lab
        .connect_from("a2", Mode::Tcp, addr("198.19.10.3", 80), 1)
        .expect("tcp");
    assert!(plain[0].body().is_none(), "{plain:?}");
}

#[test]
fn should_allow_pods_to_hairpin_back_to_themselves_through_services() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("chair", |lab| {
        service("web", WEB, (80, 8080, "TCP"), "", &[pod(lab, "a1")])
    });
    // a1 through its own Service's cluster IP reaches itself.
    let tcp = lab
        .connect_from("a1", Mode::Tcp, addr(WEB, 80), 4)
        .expect("tcp");
    assert_all_from_service(&tcp, addr(WEB, 80), true);
    assert_eq!(bodies(&tcp), BTreeSet::from(["a1".to_string()]));
}

#[test]
fn should_preserve_source_pod_ip_for_traffic_thru_service_cluster_ip() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("csrc", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "",
            &[pod(lab, "a1"), pod(lab, "b1")],
        )
    });
    // The endpoint, local or on the other node, sees the calling pod's own
    // address: nothing is masqueraded at the socket.
    let a2 = pod(&lab, "a2").ip;
    let tcp = lab
        .connect_from("a2", Mode::Whoami, addr(WEB, 80), 12)
        .expect("tcp");
    assert_all_from_service(&tcp, addr(WEB, 80), true);
    let seen = bodies(&tcp);
    assert_eq!(
        seen,
        BTreeSet::from([format!("a1@{a2}"), format!("b1@{a2}")]),
        "{tcp:?}"
    );
}

#[test]
fn node_ports_and_external_ips_are_served_at_the_socket_for_local_callers() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("cnp", |lab| {
        let ends = [pod(lab, "a1"), pod(lab, "b1")];
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "  type: NodePort\n  externalIPs: [198.19.20.1]\n",
            &ends,
        )
        .replacen("protocol: TCP}]", "protocol: TCP, nodePort: 30080}]", 1)
    });
    // A pod and the node itself, to the node's own NodePort and to an
    // externalIP: sent to an endpoint at connect(), the peer name kept.
    let node_port = SocketAddr::from((lab.node("node-a").ip, 30080));
    let external = addr("198.19.20.1", 80);
    for place in ["a2", "node-a"] {
        for target in [node_port, external] {
            let tcp = lab.connect_from(place, Mode::Tcp, target, 6).expect("tcp");
            assert_all_from_service(&tcp, target, true);
        }
    }
}

#[test]
fn dual_stack_sockets_reach_cluster_ips_by_their_ipv4_mapped_address() {
    if !lab::need_root() {
        return;
    }
    let (lab, _dir) = setup("cv6", |lab| {
        let ends = [pod(lab, "a1"), pod(lab, "b1")];
        service("web", WEB, (80, 8080, "TCP"), "", &ends)
            + &service("dns", DNS, (53, 5353, "UDP"), "", &ends)
    });
    // AF_INET6 sockets to ::ffff:<cluster IP>, as Java opens them: sent to
    // an endpoint, and the peer name and the answers' source stay the
    // cluster IP.
    let tcp = lab
        .connect_from("a2", Mode::Tcp6, addr(WEB, 80), 12)
        .expect("tcp");
    assert_all_from_service(&tcp, addr(WEB, 80), true);
    let udp = lab
        .connect_from("a2", Mode::Udp6, addr(DNS, 53), 4)
        .expect("udp");
    assert_all_from_service(&udp, addr(DNS, 53), false);
}

#[test]
fn esipp_should_work_from_pods() {
    if !lab::need_root() {
        return;
    }
    // externalTrafficPolicy Local, the one endpoint on node-b.
    let (lab, _dir) = setup("cesipp", |lab| {
        service(
            "web",
            WEB,
            (80, 8080, "TCP"),
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\nstatus: {loadBalancer: {ingress: [{ip: 198.19.30.1}]}}\n",
            &[pod(lab, "b1")],
        )
        .replacen("protocol: TCP}]", "protocol: TCP, nodePort: 30085}]", 1)
    });
    // From a pod and from the node: every endpoint, as kube-proxy sends
    // in-cluster traffic to a Local Service's external addresses.
    let lb = addr("198.19.30.1", 80);
    let node_port = SocketAddr::from((lab.node("node-a").ip, 30085));
    for place in ["a2", "node-a"] {
        for target in [lb, node_port] {
            let tcp = lab.connect_from(place, Mode::Tcp, target, 3).expect("tcp");
            assert_all_from_service(&tcp, target, true);
            assert_eq!(bodies(&tcp), BTreeSet::from(["b1".to_string()]));
        }
    }
    // From outside, node-a has no endpoint of its own: dropped there.
    let outside = lab::in_netns(&lab.client_ns, move || {
        std::net::TcpStream::connect_timeout(&node_port, Duration::from_millis(700)).map(drop)
    })
    .expect("netns");
    assert!(
        outside.is_err(),
        "an outside client was served by another node's endpoint"
    );
}
