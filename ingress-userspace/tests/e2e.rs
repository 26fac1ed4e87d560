//! End-to-end: real `ingressd` processes on two nodes made of network
//! namespaces, real TCP/UDP clients, pods answering with their names.
//! Needs root (namespaces, BPF); without it each test says so and returns.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use testkit::lab::{self, Lab, Pod, in_netns, nodeport_manifests, wait_until};

use testkit::fakeapi;

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const T: Duration = Duration::from_millis(1500);

fn setup(tag: &str, endpoints: &[&str]) -> (Lab, PathBuf) {
    setup_with(tag, endpoints, &[])
}

fn setup_with(tag: &str, endpoints: &[&str], extra: &[&str]) -> (Lab, PathBuf) {
    let mut lab = Lab::two_nodes(tag).expect("lab");
    lab.start_pods().expect("pods");
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let pods: Vec<&Pod> = lab
        .pods
        .iter()
        .filter(|p| endpoints.contains(&p.name.as_str()))
        .collect();
    lab::write_manifests(&manifests, &nodeport_manifests(&pods));
    for node in ["node-a", "node-b"] {
        lab.start_ingressd_with(Path::new(BIN), node, &manifests, extra)
            .expect("ingressd");
    }
    (lab, manifests)
}

/// Pod names answering `n` HTTP requests to `addr` from the client.
fn ask_http(lab: &Lab, addr: SocketAddr, n: usize) -> Result<Vec<String>, String> {
    in_netns(&lab.client_ns, move || {
        (0..n)
            .map(|_| {
                lab::http_get(addr, "/", T)
                    .map(|b| b.trim().to_string())
                    .map_err(|e| e.to_string())
            })
            .collect()
    })
    .map_err(|e| e.to_string())?
}

fn ask_udp(lab: &Lab, addr: SocketAddr, n: usize) -> Result<Vec<String>, String> {
    in_netns(&lab.client_ns, move || {
        (0..n)
            .map(|_| {
                lab::udp_ask(addr, T)
                    .map(|b| b.trim().to_string())
                    .map_err(|e| e.to_string())
            })
            .collect()
    })
    .map_err(|e| e.to_string())?
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[test]
fn nodeport_tcp_and_udp_spread_over_pods_on_both_nodes() {
    if !lab::need_root() {
        return;
    }
    spread_over_pods_on_both_nodes(&[]);
}

/// The same with native XDP (the lab's veth peers run XDP, so frames sent
/// back or redirected arrive; the default picks generic on a veth).
#[test]
fn nodeport_spread_with_native_xdp() {
    if !lab::need_root() {
        return;
    }
    spread_over_pods_on_both_nodes(&["--xdp-mode", "native"]);
}

fn spread_over_pods_on_both_nodes(extra: &[&str]) {
    let (lab, _m) = setup_with("sp", &["a1", "a2", "b1", "b2"], extra);
    for node in &lab.nodes {
        let tcp = ask_http(&lab, SocketAddr::from((node.ip, 30080)), 40).unwrap_or_else(|e| {
            panic!(
                "HTTP via {}: {e}\n{}",
                node.name,
                lab.ingressd_log(&node.name)
            )
        });
        let seen = set(&tcp);
        assert!(seen.len() >= 3, "{}: answers came from {seen:?}", node.name);
        assert!(
            seen.iter().any(|p| p.starts_with('a')) && seen.iter().any(|p| p.starts_with('b')),
            "{seen:?}"
        );
        // UDP: a connected socket accepts only replies from the NodePort itself.
        let udp = ask_udp(&lab, SocketAddr::from((node.ip, 30053)), 20).unwrap_or_else(|e| {
            panic!(
                "UDP via {}: {e}\n{}",
                node.name,
                lab.ingressd_log(&node.name)
            )
        });
        assert!(
            set(&udp).len() >= 2,
            "{}: UDP answers from {:?}",
            node.name,
            set(&udp)
        );
    }
}

#[test]
fn endpoint_removal_and_addition_apply_within_a_second() {
    if !lab::need_root() {
        return;
    }
    let (lab, manifests) = setup("ep", &["a1", "b1"]);
    let addr = SocketAddr::from((lab.node("node-a").ip, 30080));
    let pods = |names: &[&str]| -> Vec<&Pod> {
        lab.pods
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .collect()
    };

    lab::write_manifests(&manifests, &nodeport_manifests(&pods(&["a1"])));
    let changed = Instant::now();
    // Within one second every new connection lands on a1. (30 in a row:
    // 10 land on a1 alone by chance once in 1,024 tries while b1 is still
    // there, and this polls many times a second.)
    let moved = wait_until(Duration::from_secs(1), || {
        ask_http(&lab, addr, 30).is_ok_and(|v| v.iter().all(|p| p == "a1"))
    });
    assert!(
        moved,
        "removal not applied within 1 s ({:?})",
        changed.elapsed()
    );
    let after = ask_http(&lab, addr, 30).expect("requests after removal");
    assert!(
        after.iter().all(|p| p == "a1"),
        "removed endpoint still answering: {:?}",
        set(&after)
    );

    lab::write_manifests(&manifests, &nodeport_manifests(&pods(&["a1", "b2"])));
    let added = wait_until(Duration::from_secs(1), || {
        ask_http(&lab, addr, 10).is_ok_and(|v| v.iter().any(|p| p == "b2"))
    });
    assert!(added, "added endpoint not used within 1 s");
}

#[test]
fn service_without_endpoints_is_refused_not_blackholed() {
    if !lab::need_root() {
        return;
    }
    let (lab, _m) = setup("re", &[]);
    let node = lab.node("node-a").ip;
    let started = Instant::now();
    let tcp = in_netns(&lab.client_ns, move || {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((node, 30080)),
            Duration::from_secs(3),
        )
        .map(|_| ())
    })
    .unwrap();
    let err = tcp.expect_err("connect must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let udp = in_netns(&lab.client_ns, move || {
        lab::udp_ask(SocketAddr::from((node, 30053)), Duration::from_secs(3))
    })
    .unwrap();
    let err = udp.expect_err("UDP must fail");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable expected: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        started.elapsed()
    );
}

#[test]
fn restarting_ingressd_under_load_fails_no_request() {
    if !lab::need_root() {
        return;
    }
    let (mut lab, manifests) = setup("rs", &["a1", "a2", "b1", "b2"]);
    let addr = SocketAddr::from((lab.node("node-a").ip, 30080));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client_ns = lab.client_ns.clone();
    let load = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        std::thread::spawn(move || {
            in_netns(&client_ns, move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match lab::http_get(addr, "/", T) {
                        Ok(_) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
    };
    let at_least =
        |n: usize| wait_until(Duration::from_secs(10), || ok.load(Ordering::Relaxed) >= n);
    assert!(at_least(20), "load loop not running");
    lab.stop_ingressd("node-a").unwrap();
    let before = ok.load(Ordering::Relaxed);
    // The data path keeps serving with no daemon at all.
    assert!(at_least(before + 20), "no traffic while ingressd was down");
    lab.start_ingressd(Path::new(BIN), "node-a", &manifests)
        .expect("restart");
    let before = ok.load(Ordering::Relaxed);
    assert!(at_least(before + 20), "no traffic after restart");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    let log = lab.ingressd_log("node-a");
    assert!(
        log.contains("XDP program replaced in the pinned link"),
        "{log}"
    );
    assert!(
        log.contains("adopted pinned maps frontends=2 rings=2"),
        "{log}"
    );
    // The restarted daemon found the maps right and wrote nothing.
    let last_sync = log.lines().rfind(|l| l.contains("synced")).unwrap_or("");
    assert!(last_sync.contains("writes=0"), "{last_sync}");
}

#[test]
fn udp_flow_reusing_its_port_moves_off_a_removed_endpoint() {
    if !lab::need_root() {
        return;
    }
    let (lab, manifests) = setup("ud", &["a1", "a2"]);
    let addr = SocketAddr::from((lab.node("node-a").ip, 30053));
    // One socket, so one 5-tuple for every datagram (as a DNS client that
    // keeps its port would); its network namespace is fixed at creation.
    let sock = in_netns(&lab.client_ns, move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    })
    .unwrap();
    let ask = |s: &std::net::UdpSocket| -> Option<String> {
        s.send(b"who?").ok()?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    };
    let first = ask(&sock).expect("first answer");
    for _ in 0..3 {
        assert_eq!(
            ask(&sock).as_deref(),
            Some(first.as_str()),
            "conntrack keeps the flow on one pod"
        );
    }
    let keep = if first == "a1" { "a2" } else { "a1" };
    let pods: Vec<&Pod> = lab.pods.iter().filter(|p| p.name == keep).collect();
    lab::write_manifests(&manifests, &nodeport_manifests(&pods));
    let moved = wait_until(Duration::from_secs(2), || {
        ask(&sock).as_deref() == Some(keep)
    });
    assert!(moved, "the flow still goes to removed endpoint {first}");
    // The log is written by a background thread: it may trail the flow.
    assert!(
        wait_until(Duration::from_secs(2), || lab
            .ingressd_log("node-a")
            .contains("forgot UDP flows")),
        "no log line for the forgotten flows"
    );
}

#[test]
fn ingress_vips_are_steered_to_the_proxy_by_sk_lookup() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("vip").expect("lab");
    lab.start_pods().expect("pods");
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let pods: Vec<&Pod> = lab.pods.iter().collect();
    let ingress = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: demo}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: vip.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n";
    let base = nodeport_manifests(&pods) + ingress;
    let (a1_ip, a1_node) = (pods[0].ip.to_string(), pods[0].node.clone());
    lab::write_manifests(&manifests, &base);
    lab.route_vips_to("node-a", "198.19.0.0/24").unwrap();
    // The proxy binds only the node address; the VIP has no socket at all.
    let node = lab.node("node-a").ip.to_string();
    let (http, https) = (format!("{node}:80"), format!("{node}:443"));
    lab.start_ingressd_with(
        Path::new(BIN),
        "node-a",
        &manifests,
        &[
            "--http-addr",
            &http,
            "--https-addr",
            &https,
            "--ingress-vip",
            "198.19.0.10",
            "--publish-service",
            "ingress/edge",
        ],
    )
    .expect("ingressd");
    let vip = SocketAddr::from(([198, 19, 0, 10], 80));
    let answers = in_netns(&lab.client_ns, move || {
        (0..20)
            .map(|_| lab::http_get_host(vip, "vip.test", "/", T).map(|b| b.trim().to_string()))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("request to the VIP: {e}\n{}", lab.ingressd_log("node-a")));
    assert!(set(&answers).len() >= 2, "{answers:?}");
    // :443 goes to the HTTPS socket: a TLS handshake (the default
    // certificate; the client checks nothing) is answered.
    let tls = SocketAddr::from(([198, 19, 0, 10], 443));
    let hello = in_netns(&lab.client_ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&tls, T)?;
        s.set_read_timeout(Some(T))?;
        // A TLS 1.2 ClientHello record header is enough to get an answer:
        // a handshake record (0x16) or an alert (0x15) back, from rustls.
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first)?;
        Ok::<u8, std::io::Error>(first[0])
    })
    .unwrap();
    let first = hello.unwrap_or_else(|e| panic!("VIP :443: {e}"));
    assert!(first == 0x15 || first == 0x16, "not TLS: {first:#x}");
    // A VIP that is routed here but not steered finds no socket.
    let other = SocketAddr::from(([198, 19, 0, 11], 80));
    let refused = in_netns(&lab.client_ns, move || {
        lab::http_get_host(other, "vip.test", "/", T)
    })
    .unwrap();
    assert_eq!(
        refused.expect_err("no socket").kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // The LoadBalancer IPs of the proxy's own Service (--publish-service)
    // are steered too, as they change. Its endpoint is a pod port where
    // nothing listens: were XDP to take the LoadBalancer IP as it does any
    // other Service's, the connection would be refused.
    let edge = |lb: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: ingress}}\nspec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80, targetPort: 9, nodePort: 30088, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: edge-1, namespace: ingress, labels: {{kubernetes.io/service-name: edge}}}}\naddressType: IPv4\nports: [{{name: http, port: 9}}]\nendpoints: [{{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}]\n",
            a1_ip, a1_node
        )
    };
    let answers = |ip: [u8; 4]| {
        let addr = SocketAddr::from((ip, 80));
        in_netns(&lab.client_ns, move || {
            lab::http_get_host(addr, "vip.test", "/", T).map(|b| b.trim().to_string())
        })
        .unwrap()
    };
    for (lb, gone) in [
        ([198, 19, 0, 12], None),
        ([198, 19, 0, 13], Some([198, 19, 0, 12])),
    ] {
        let text = format!("{}.{}.{}.{}", lb[0], lb[1], lb[2], lb[3]);
        lab::write_manifests(&manifests, &(base.clone() + &edge(&text)));
        assert!(
            wait_until(Duration::from_secs(5), || answers(lb).is_ok()),
            "LoadBalancer IP {text} not steered: {:?}\n{}",
            answers(lb),
            lab.ingressd_log("node-a")
        );
        if let Some(old) = gone {
            assert_eq!(
                answers(old).expect_err("no longer steered").kind(),
                std::io::ErrorKind::ConnectionRefused
            );
        }
    }
    // The fixed VIP stays.
    assert!(answers([198, 19, 0, 10]).is_ok());
}

#[test]
fn kube_source_objects_created_changed_and_deleted_drive_the_maps() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("ku").expect("lab");
    lab.start_pods().expect("pods");
    // The fake API server listens inside node-a's namespace, where that
    // node's ingressd reaches it on its own loopback.
    let listener = in_netns(&lab.node("node-a").ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
    })
    .unwrap()
    .expect("bind in node-a");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = {
        let _guard = rt.enter();
        fakeapi::FakeApi::start_on(listener)
    };
    let manifests = |lab: &Lab, names: &[&str]| {
        let pods: Vec<&Pod> = lab
            .pods
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .collect();
        nodeport_manifests(&pods)
    };
    api.apply_yaml(&manifests(&lab, &["a1", "b1"]));
    let kubeconfig = api.kubeconfig(&lab.dir);
    lab.start_ingressd_kube(Path::new(BIN), "node-a", &kubeconfig, &["--no-l7"])
        .expect("ingressd");
    let addr = SocketAddr::from((lab.node("node-a").ip, 30080));
    let log = |lab: &Lab| lab.ingressd_log("node-a");
    let spread = wait_until(Duration::from_secs(5), || {
        ask_http(&lab, addr, 20).is_ok_and(|v| set(&v).len() == 2)
    });
    assert!(spread, "created objects not served:\n{}", log(&lab));

    // Changed: b1 leaves the EndpointSlice.
    api.apply_yaml(&manifests(&lab, &["a1"]));
    let moved = wait_until(Duration::from_secs(2), || {
        ask_http(&lab, addr, 10).is_ok_and(|v| v.iter().all(|p| p == "a1"))
    });
    assert!(moved, "changed slice not applied:\n{}", log(&lab));

    // Deleted: the Service goes, its NodePort refuses.
    api.delete("Service", "demo", "web");
    let refused = wait_until(Duration::from_secs(2), || {
        in_netns(&lab.client_ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .map_err(|e| e.kind())
        })
        .is_ok_and(|r| r.err() == Some(std::io::ErrorKind::ConnectionRefused))
    });
    assert!(refused, "deleted Service still served:\n{}", log(&lab));
    drop(api);
}

/// The capabilities the hostNetwork DaemonSet grants (deploy/), lower case.
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/overlays/daemonset-hostnetwork/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ds: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(caps["drop"][0], "ALL", "{caps}");
    caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect()
}

#[test]
fn runs_with_only_the_daemonsets_capabilities() {
    if !lab::need_root() {
        return;
    }
    let caps = daemonset_capabilities();
    let mut lab = Lab::two_nodes("cap").expect("lab");
    lab.start_pods().expect("pods");
    // Root without the others: what the unprivileged DaemonSet gets.
    let bounding: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    lab.wrapper = vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", bounding.join(",")),
        "--inh-caps=-all".into(),
    ];
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let pods: Vec<&Pod> = lab.pods.iter().collect();
    let ingress = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: demo}\n\
                   spec:\n  ingressClassName: ebpf\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n";
    // A cluster IP for a resolver-like client (cgroup programs, and
    // closing its socket in the pod's namespace when its endpoint leaves).
    let pod_at: Vec<(String, String, String)> = lab
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.ip.to_string(), p.node.clone()))
        .collect();
    let resolver = |pod: &str| {
        let (_, ip, node) = pod_at.iter().find(|p| p.0 == pod).unwrap();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: cdns, namespace: demo}}\n\
             spec:\n  clusterIP: 198.19.10.2\n  ports: [{{name: p, port: 53, targetPort: 5353, protocol: UDP}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: cdns-1, namespace: demo, labels: {{kubernetes.io/service-name: cdns}}}}\n\
             addressType: IPv4\nports: [{{name: p, port: 5353, protocol: UDP}}]\n\
             endpoints: [{{addresses: [\"{}\"], nodeName: {}}}]\n",
            ip, node,
        )
    };
    let base = nodeport_manifests(&pods) + ingress;
    lab::write_manifests(&manifests, &(base.clone() + &resolver("a1")));
    // Started twice: loading and attaching, then adopting the pinned
    // maps and swapping the programs in the pinned links.
    for round in 0..2 {
        lab.start_ingressd(Path::new(BIN), "node-a", &manifests)
            .unwrap_or_else(|e| panic!("round {round} with {caps:?}: {e}"));
        let node = lab.node("node-a").ip;
        let l4 = ask_http(&lab, SocketAddr::from((node, 30080)), 10);
        assert!(
            l4.is_ok(),
            "NodePort: {l4:?}\n{}",
            lab.ingressd_log("node-a")
        );
        // The proxy on the node's :80 (NET_BIND_SERVICE).
        let l7 = in_netns(&lab.client_ns, move || {
            lab::http_get(SocketAddr::from((node, 80)), "/", T)
        })
        .unwrap();
        assert!(
            l7.is_ok(),
            "proxy on :80: {l7:?}\n{}",
            lab.ingressd_log("node-a")
        );
        if round == 0 {
            closes_a_resolvers_socket(&lab, &manifests, &(base.clone() + &resolver("b1")));
        }
        lab.stop_ingressd("node-a").unwrap();
    }
}

/// A pod's resolver keeps one connected UDP socket to a cluster IP; its
/// endpoint leaves the Service: ingressd closes the socket in the pod's
/// network namespace and the resolver's next socket reaches the new one.
fn closes_a_resolvers_socket(lab: &Lab, manifests: &Path, moved: &str) {
    let dns: SocketAddr = "198.19.10.2:53".parse().unwrap();
    let client = lab
        .spawn_client("a2", lab::Mode::UdpKeep, dns, 60, Duration::from_millis(40))
        .expect("client");
    let pins = lab
        .node("node-a")
        .pin_path
        .join(ingress_common::map_names::UDP_CONNECTED);
    let tracked = wait_until(Duration::from_secs(5), || {
        aya::maps::MapData::from_pin(&pins)
            .ok()
            .and_then(|m| {
                let m: aya::maps::HashMap<_, u64, ingress_common::UdpConnected> =
                    aya::maps::Map::LruHashMap(m).try_into().ok()?;
                Some(m.keys().count())
            })
            .is_some_and(|n| n >= 1)
    });
    assert!(tracked, "the resolver's socket was never tracked");
    lab::write_manifests(manifests, moved);
    let attempts = client.finish().expect("client");
    assert_eq!(
        attempts.last().and_then(|a| a.body()),
        Some("b1"),
        "{attempts:?}\n{}",
        lab.ingressd_log("node-a")
    );
    let log = lab.ingressd_log("node-a");
    assert!(log.contains("sockets=1"), "log:\n{log}");
}

#[test]
fn spoofed_non_syn_floods_neither_create_state_nor_stop_real_clients() {
    if !lab::need_root() {
        return;
    }
    // Endpoints on node-b only: every flow through node-a would need SNAT.
    let (lab, _m) = setup("flood", &["b1", "b2"]);
    let node = lab.node("node-a").ip;
    // 20,000 TCP ACKs from random sources of 198.19.0.0/16, through a raw
    // socket of the client's namespace.
    let sent = in_netns(&lab.client_ns, move || -> std::io::Result<usize> {
        // SAFETY: a raw socket owned for this closure; IPPROTO_RAW implies
        // that we write the IP header.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(node).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut seed: u32 = 0x1234_5678;
        let mut sent = 0;
        for i in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let src = std::net::Ipv4Addr::new(198, 19, (seed >> 8) as u8, seed as u8);
            let frame = testkit::packet::tcp(
                (src, 1024 + (i % 60_000) as u16),
                (node, 30080),
                testkit::packet::TCP_ACK,
                seed,
                b"",
            );
            let ip = &frame[testkit::packet::IP_OFF..];
            // SAFETY: sending a buffer we own to a valid address.
            let n = unsafe {
                libc::sendto(
                    fd,
                    ip.as_ptr().cast(),
                    ip.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        Ok(sent)
    })
    .expect("netns")
    .expect("raw socket");
    assert_eq!(sent, 20_000);
    let seen = wait_until(Duration::from_secs(5), || {
        lab.metric(
            "node-a",
            "ingressd_l4_packets_total{reason=\"pass_tcp_without_flow\"}",
        ) >= 19_000
    });
    assert!(seen, "the flood did not reach node-a's XDP program");
    // A real client still gets through, every time.
    let answers = ask_http(&lab, SocketAddr::from((node, 30080)), 30)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.ingressd_log("node-a")));
    assert_eq!(answers.len(), 30);
    // The flood took no state and no SNAT port.
    let flows = wait_until(Duration::from_secs(5), || {
        let n = lab.metric("node-a", "ingressd_l4_snat_ports_in_use");
        lab.metric("node-a", "ingressd_l4_conntrack_entries") <= 30 && n <= 30
    });
    assert!(flows, "the flood left state behind");
}
