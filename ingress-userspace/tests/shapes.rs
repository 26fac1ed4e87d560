//! The node shapes users run, end to end with `ingressd`'s defaults: a
//! node whose interface is a veth with nothing on its peer (kind, a
//! container), endpoints without `nodeName`, and remote endpoints reached
//! through a device XDP cannot send on (a VXLAN overlay as flannel builds,
//! a Linux bridge). IPIP (Calico's overlay) is not built into this kernel
//! (CONFIG_NET_IPIP is off); it takes the same path as VXLAN (the stack
//! forwards). Needs root; without it each test says so.
use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use testkit::lab::{self, Lab, PodRoutes, Shape, in_netns};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const T: Duration = Duration::from_millis(1500);

/// NodePort `web` (30080 → 8080) with `pods` as endpoints, with or without
/// `nodeName`, and NodePort `empty` (30081) without endpoints.
fn manifests(lab: &Lab, pods: &[&str], node_names: bool) -> String {
    let endpoints: String = pods
        .iter()
        .map(|name| {
            let p = lab.pods.iter().find(|p| p.name == *name).expect("pod");
            let node = if node_names {
                format!(", nodeName: {}", p.node)
            } else {
                String::new()
            };
            format!("\n- {{addresses: [\"{}\"]{node}}}", p.ip)
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: NodePort
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-manual, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:{endpoints}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: demo}}
spec:
  type: NodePort
  ports: [{{port: 80, nodePort: 30081}}]
"
    )
}

fn start(shape: Shape, tag: &str, pods: &[&str], node_names: bool, extra: &[&str]) -> Lab {
    let mut lab = Lab::two_nodes_shaped(tag, shape).expect("lab");
    lab.start_pods().expect("pods");
    let dir = lab.dir.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("services.yaml"), manifests(&lab, pods, node_names)).expect("write");
    start_ingressd(&mut lab, extra);
    lab
}

/// `ingressd --no-l7` (and `extra`) on node-a, with the lab's manifests.
fn start_ingressd(lab: &mut Lab, extra: &[&str]) {
    let dir = lab.dir.join("manifests");
    let mut args = vec!["--no-l7"];
    args.extend(extra);
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &args)
        .expect("ingressd");
}

/// Pod names answering `n` requests to node-a's NodePort from the client.
fn ask(lab: &Lab, n: usize) -> Result<BTreeSet<String>, String> {
    let addr = SocketAddr::from((lab.node("node-a").ip, 30080));
    in_netns(&lab.client_ns, move || {
        (0..n)
            .map(|_| {
                lab::http_get(addr, "/", T)
                    .map(|b| b.trim().to_string())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<BTreeSet<_>, _>>()
    })
    .map_err(|e| e.to_string())?
}

#[test]
fn a_kind_shaped_node_forwards_and_refuses_with_the_defaults() {
    if !lab::need_root() {
        return;
    }
    // The node's uplink is a veth whose peer runs no XDP, and the endpoints
    // (one here, one on node-b) carry no nodeName.
    let shape = Shape {
        peer_xdp: false,
        pod_routes: PodRoutes::Direct,
    };
    let lab = start(shape, "kind", &["a1", "b1"], false, &[]);
    let seen = ask(&lab, 30).unwrap_or_else(|e| panic!("{e}\n{}", lab.ingressd_log("node-a")));
    assert_eq!(seen, BTreeSet::from(["a1".to_string(), "b1".to_string()]));
    // A Service without endpoints is refused at once (the RST reaches the
    // client), not left to time out.
    let empty = SocketAddr::from((lab.node("node-a").ip, 30081));
    let started = Instant::now();
    let refused = in_netns(&lab.client_ns, move || {
        std::net::TcpStream::connect_timeout(&empty, Duration::from_secs(3)).map(drop)
    })
    .expect("netns");
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "{}",
        lab.ingressd_log("node-a")
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        lab.ingressd_log("node-a").contains("a veth: generic XDP"),
        "{}",
        lab.ingressd_log("node-a")
    );
}

/// Remote endpoints behind `routes`, with native XDP asked for (the peer
/// runs XDP): the forwarded packet's next hop is a device native XDP
/// cannot send on, so the stack forwards it.
fn remote_endpoints_through(routes: PodRoutes, tag: &str) {
    let shape = Shape {
        peer_xdp: true,
        pod_routes: routes,
    };
    let lab = start(shape, tag, &["b1", "b2"], true, &["--xdp-mode", "native"]);
    let seen = ask(&lab, 20).unwrap_or_else(|e| panic!("{e}\n{}", lab.ingressd_log("node-a")));
    assert_eq!(seen, BTreeSet::from(["b1".to_string(), "b2".to_string()]));
    let by_stack = lab.metric(
        "node-a",
        "ingressd_l4_packets_total{reason=\"pass_forward_by_stack\"}",
    );
    assert!(by_stack >= 20, "forwarded by the stack: {by_stack}");
}

#[test]
fn remote_endpoints_behind_a_vxlan_overlay() {
    if !lab::need_root() {
        return;
    }
    remote_endpoints_through(PodRoutes::Vxlan, "vxlan");
}

#[test]
fn remote_endpoints_behind_a_linux_bridge() {
    if !lab::need_root() {
        return;
    }
    remote_endpoints_through(PodRoutes::Bridge, "bridge");
}

/// The XDP mode `ip link` shows on node-a's uplink (`xdp`: native,
/// `xdpgeneric`), or "" when none.
fn uplink_xdp_mode(lab: &Lab) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.node("node-a").ns, "link", "show", "dev", "eth0"])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .and_then(|w| w.split('/').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_restart_with_another_xdp_mode_attaches_in_that_mode() {
    if !lab::need_root() {
        return;
    }
    // The peer runs XDP, so native mode works here too.
    let shape = Shape {
        peer_xdp: true,
        pod_routes: PodRoutes::Direct,
    };
    let mut lab = start(
        shape,
        "xmode",
        &["a1", "b1"],
        true,
        &["--xdp-mode", "generic"],
    );
    assert_eq!(uplink_xdp_mode(&lab), "xdpgeneric");
    lab.stop_ingressd("node-a").expect("stop");
    // The links stay pinned across the restart; asked for native now, the
    // generic one must not be kept.
    assert_eq!(uplink_xdp_mode(&lab), "xdpgeneric");
    start_ingressd(&mut lab, &["--xdp-mode", "native"]);
    assert_eq!(
        uplink_xdp_mode(&lab),
        "xdp",
        "{}",
        lab.ingressd_log("node-a")
    );
    assert!(
        lab.ingressd_log("node-a").contains("in another mode"),
        "{}",
        lab.ingressd_log("node-a")
    );
    // Detached before the new attach, not whenever the kernel frees the
    // unpinned link (then the attach can meet EEXIST).
    assert!(
        !lab.ingressd_log("node-a")
            .contains("detaching the old XDP link"),
        "{}",
        lab.ingressd_log("node-a")
    );
    let seen = ask(&lab, 20).unwrap_or_else(|e| panic!("{e}\n{}", lab.ingressd_log("node-a")));
    assert_eq!(seen, BTreeSet::from(["a1".to_string(), "b1".to_string()]));
    // Asked for the mode it has, a restart swaps the program in place.
    lab.stop_ingressd("node-a").expect("stop");
    start_ingressd(&mut lab, &["--xdp-mode", "native"]);
    assert_eq!(uplink_xdp_mode(&lab), "xdp");
    assert!(
        lab.ingressd_log("node-a")
            .contains("replaced in the pinned link"),
        "{}",
        lab.ingressd_log("node-a")
    );
}
