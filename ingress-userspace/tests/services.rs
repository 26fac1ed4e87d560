//! kube-proxy's Service semantics beyond forwarding, end to end: its health
//! servers (`--healthz-addr`, healthCheckNodePort) as a cloud load balancer
//! and the kubelet probe them. Needs root; without it each test says so.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use testkit::lab::{self, Lab, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");

/// A GET from the lab's client: the status, the headers (lower-case
/// names) and the body; None when the connection is refused.
fn get(lab: &Lab, addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let path = path.to_string();
    lab::in_netns(&lab.client_ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: lb-probe\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, head.to_ascii_lowercase(), body.to_string()))
    })
    .expect("netns")
}

/// `web`: LoadBalancer, externalTrafficPolicy Local, healthCheckNodePort
/// 32000; a1 (on node-a) in the state given, b1 on node-b ready; and the
/// Node object node-a, tainted for removal or not.
fn manifests(lab: &Lab, a1_ready: bool, node_tainted: bool) -> String {
    let ip = |name: &str| lab.pods.iter().find(|p| p.name == name).expect("pod").ip;
    let a1_conditions = if a1_ready {
        "{ready: true}"
    } else {
        "{ready: false, serving: true, terminating: true}"
    };
    let taint = if node_tainted {
        "\nspec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, value: \"1765000000\", effect: NoSchedule}]"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [\"{}\"], nodeName: node-a, conditions: {a1_conditions}}}
- {{addresses: [\"{}\"], nodeName: node-b, conditions: {{ready: true}}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}{taint}
",
        ip("a1"),
        ip("b1"),
    )
}

#[test]
fn health_check_node_port_and_proxy_health_answer_as_kube_proxy() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("hc").expect("lab");
    lab.start_pods().expect("pods");
    let dir = lab.dir.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    lab::write_manifests(&dir, &manifests(&lab, true, false));
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &["--no-l7"])
        .expect("ingressd");
    let node = lab.node("node-a").ip;
    let hc = SocketAddr::from((node, 32000));
    let healthz = SocketAddr::from((node, 10256));

    let (code, head, body) = get(&lab, hc, "/").expect("healthCheckNodePort");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["service"]["namespace"], "demo");
    assert_eq!(v["service"]["name"], "web");
    assert_eq!(v["localEndpoints"], 1, "{body}");
    assert_eq!(v["serviceProxyHealthy"], true);
    assert!(
        head.contains("x-load-balancing-endpoint-weight: 1"),
        "{head}"
    );
    assert!(head.contains("content-type: application/json"), "{head}");

    let (code, _, body) = get(&lab, healthz, "/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["nodeEligible"], true);
    assert!(v["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(get(&lab, healthz, "/livez").expect("livez").0, 200);

    // Its one local endpoint terminating: no longer counted, the load
    // balancer takes this node out.
    lab::write_manifests(&dir, &manifests(&lab, false, false));
    let drained = wait_until(Duration::from_secs(5), || {
        get(&lab, hc, "/")
            .is_some_and(|(code, _, body)| code == 503 && body.contains("\"localEndpoints\": 0"))
    });
    assert!(drained, "{:?}", get(&lab, hc, "/"));

    // The autoscaler removes the node: /healthz fails, /livez and the
    // Service's check (its endpoints are still here) do not.
    lab::write_manifests(&dir, &manifests(&lab, true, true));
    let ineligible = wait_until(Duration::from_secs(5), || {
        get(&lab, healthz, "/healthz")
            .is_some_and(|(code, _, body)| code == 503 && body.contains("\"nodeEligible\": false"))
    });
    assert!(ineligible, "{:?}", get(&lab, healthz, "/healthz"));
    assert_eq!(get(&lab, healthz, "/livez").expect("livez").0, 200);
    let (code, _, body) = get(&lab, hc, "/").expect("healthCheckNodePort");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"serviceProxyHealthy\": true"), "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");

    // The Service goes: so does its port.
    lab::write_manifests(&dir, "");
    let closed = wait_until(Duration::from_secs(5), || get(&lab, hc, "/").is_none());
    assert!(closed, "healthCheckNodePort still answers");
}

/// kube-proxy as it shows itself on a node: `/proxyMode` on its metrics
/// port (127.0.0.1:10249), and its health server holding 10256.
const FAKE_KUBE_PROXY: &str = r#"
import http.server, socket, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"iptables" if self.path == "/proxyMode" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
healthz = socket.socket()
healthz.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
healthz.bind(("0.0.0.0", 10256))
healthz.listen(8)
http.server.HTTPServer(("127.0.0.1", 10249), H).serve_forever()
"#;

#[test]
fn kube_proxy_beside_ingressd_is_reported_and_does_not_stop_it() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("kp").expect("lab");
    lab.start_pods().expect("pods");
    lab.spawn_on_node("node-a", FAKE_KUBE_PROXY, &[])
        .expect("fake kube-proxy");
    let n = lab.node("node-a").clone();
    let up = wait_until(Duration::from_secs(5), || {
        lab::in_netns(&n.ns, || {
            lab::http_get(
                "127.0.0.1:10249".parse().unwrap(),
                "/proxyMode",
                Duration::from_secs(1),
            )
        })
        .is_ok_and(|r| r.is_ok())
    });
    assert!(up, "the fake kube-proxy did not start");
    let dir = lab.dir.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    lab::write_manifests(&dir, &manifests(&lab, true, false));
    // Ready despite 10256 being taken.
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &["--no-l7"])
        .expect("ingressd");
    let log = lab.ingressd_log("node-a");
    assert!(
        log.contains("kube-proxy runs on this node (iptables mode)"),
        "{log}"
    );
    assert!(log.contains("--healthz-addr is taken"), "{log}");
    // What it serves still works: the healthCheckNodePort answers.
    let hc = SocketAddr::from((n.ip, 32000));
    assert_eq!(get(&lab, hc, "/").map(|r| r.0), Some(200));
}

#[test]
fn should_preserve_source_ip_with_external_traffic_policy_local() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("srcip").expect("lab");
    lab.start_pods().expect("pods");
    let ip = |name: &str| lab.pods.iter().find(|p| p.name == name).expect("pod").ip;
    let svc = |name: &str, node_port: u16, policy: &str, pod: &str, node: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  type: NodePort
  externalTrafficPolicy: {policy}
  ports: [{{port: 80, targetPort: 8080, nodePort: {node_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints: [{{addresses: [\"{}\"], nodeName: {node}}}]
---
",
            ip(pod)
        )
    };
    let text = svc("local", 30081, "Local", "a1", "node-a")
        + &svc("cluster", 30082, "Cluster", "b1", "node-b");
    let dir = lab.dir.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    lab::write_manifests(&dir, &text);
    lab.start_ingressd_with(Path::new(BIN), "node-a", &dir, &["--no-l7"])
        .expect("ingressd");
    let node = lab.node("node-a").ip;
    let whoami = |port: u16| {
        let addr = SocketAddr::from((node, port));
        lab::in_netns(&lab.client_ns, move || {
            lab::http_get(addr, "/whoami", Duration::from_secs(2))
        })
        .expect("netns")
        .map(|b| b.trim().to_string())
    };
    // Local: the endpoint sees the client itself.
    assert_eq!(
        whoami(30081).expect("local"),
        format!("a1 {}", lab::CLIENT_IP)
    );
    // Cluster, to another node's endpoint: SNATed to this node, as kube-proxy.
    assert_eq!(whoami(30082).expect("cluster"), format!("b1 {node}"));
}
