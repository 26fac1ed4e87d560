//! The kube source against a fake API server (tests/fakeapi): the real
//! kube-rs client lists and watches, ingressd turns what it sees into the
//! same desired state as the file source, follows changes (also across a
//! dropped watch and a 410 Gone), waits for every list before it is ready,
//! and one elected replica writes Ingress status once. No root needed.
use testkit::{fakeapi, wait as common};

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use fakeapi::{FakeApi, temp_dir};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use ingressd::{
    cluster::{ClassConfig, Object, Snapshot},
    l4::{
        model::{NodeContext, desired_state},
        render::render_state,
    },
    l7::route::{Match, compile},
    source::{
        files::{ManifestSource, parse_file},
        kube::{self, KubeSource},
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";

/// The objects of a YAML text that the file source accepts, as the API
/// server would store them (JSON).
fn api_objects(yaml: &str) -> Vec<serde_json::Value> {
    let (objects, _, _) = parse_file(Path::new("fixture.yaml"), yaml);
    objects
        .into_iter()
        .map(|o| {
            let (kind, api_version, mut v) = match o {
                Object::Service(o) => ("Service", "v1", serde_json::to_value(o)),
                Object::EndpointSlice(o) => (
                    "EndpointSlice",
                    "discovery.k8s.io/v1",
                    serde_json::to_value(o),
                ),
                Object::Ingress(o) => ("Ingress", "networking.k8s.io/v1", serde_json::to_value(o)),
                Object::IngressClass(o) => (
                    "IngressClass",
                    "networking.k8s.io/v1",
                    serde_json::to_value(o),
                ),
                Object::Secret(o) => ("Secret", "v1", serde_json::to_value(o)),
                Object::ConfigMap(o) => ("ConfigMap", "v1", serde_json::to_value(o)),
                Object::GatewayClass(o) => ("GatewayClass", GATEWAY_V1, serde_json::to_value(o)),
                Object::Gateway(o) => ("Gateway", GATEWAY_V1, serde_json::to_value(o)),
                Object::HTTPRoute(o) => ("HTTPRoute", GATEWAY_V1, serde_json::to_value(o)),
                Object::ReferenceGrant(o) => (
                    "ReferenceGrant",
                    "gateway.networking.k8s.io/v1beta1",
                    serde_json::to_value(o),
                ),
                Object::Node(o) => ("Node", "v1", serde_json::to_value(o)),
                Object::Namespace(o) => ("Namespace", "v1", serde_json::to_value(o)),
            };
            let v = v.as_mut().map(std::mem::take).expect("serializes");
            let mut v = v;
            v["kind"] = serde_json::json!(kind);
            v["apiVersion"] = serde_json::json!(api_version);
            v
        })
        .collect()
}

/// A kube source on `api`, loaded until every watch has listed (bounded).
async fn synced_source(api: &FakeApi, dir: &Path, class: ClassConfig) -> KubeSource {
    let client = kube::client(Some(&api.kubeconfig(dir)))
        .await
        .expect("client");
    let mut source = KubeSource::start(
        client,
        None,
        "node-a",
        class,
        None,
        ingressd::cluster::Rules {
            loopback_endpoints: true,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        source.load();
        if source.synced() {
            return source;
        }
        assert!(Instant::now() < deadline, "kube source never synced");
        let _ = tokio::time::timeout(Duration::from_millis(200), source.wait()).await;
    }
}

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        addrs: vec!["198.18.0.2".parse().unwrap()],
        ..Default::default()
    }
}

fn rendered(snapshot: &Snapshot) -> String {
    let (state, warnings) = desired_state(snapshot, &node());
    let mut out = render_state(&state);
    for w in warnings {
        out.push_str(&format!("{}: {}\n", w.object, w.message));
    }
    out
}

/// Ingress routing on top of the golden cases: hosts, paths, TLS.
const INGRESS_CASE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: ebpf}
spec: {controller: ingress-ebpf/controller}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.5.1]}, {addresses: [198.18.5.2], conditions: {ready: false}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/backend-protocol: HTTPS
    nginx.ingress.kubernetes.io/proxy-ssl-secret: shop/upstream-ca
    nginx.ingress.kubernetes.io/auth-type: basic
    nginx.ingress.kubernetes.io/auth-secret: staff
    nginx.ingress.kubernetes.io/auth-tls-secret: shop/client-ca
    nginx.ingress.kubernetes.io/custom-headers: headers
spec:
  ingressClassName: ebpf
  tls: [{hosts: [shop.test], secretName: shop-tls}]
  rules:
  - host: shop.test
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
      - {path: /exact, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
  - host: "*.wild.test"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: shop}
type: kubernetes.io/tls
stringData: {tls.crt: "not checked here", tls.key: "not checked here"}
---
apiVersion: v1
kind: Secret
metadata: {name: upstream-ca, namespace: shop}
stringData: {ca.crt: "not checked here"}
---
apiVersion: v1
kind: Secret
metadata: {name: staff, namespace: shop}
stringData: {auth: "alice:{PLAIN}pw"}
---
apiVersion: v1
kind: Secret
metadata: {name: client-ca, namespace: shop}
stringData: {ca.crt: "not checked here"}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: shop}
stringData: {password: "never read"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: headers, namespace: shop}
data: {X-Frame-Options: DENY}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: shop}
data: {settings: "never read"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_gives_the_file_sources_desired_state_for_every_golden_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path().join("input.yaml"))
        .filter(|p| p.exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 7);
    let dir = temp_dir("kube-golden");
    let ingress_file = dir.join("ingress.yaml");
    std::fs::write(&ingress_file, INGRESS_CASE).unwrap();
    cases.push(ingress_file);
    for case in cases {
        let yaml = std::fs::read_to_string(&case).unwrap();
        let mut files = ManifestSource::new(vec![case.clone()]);
        files.load();
        let api = FakeApi::start().await;
        for o in api_objects(&yaml) {
            api.apply(o);
        }
        let kube = synced_source(&api, &dir, ClassConfig::default()).await;
        // Only the Secrets an Ingress of ours names (its TLS, its
        // proxy-ssl-secret, its auth-secret and auth-tls-secret) are read,
        // one by one.
        let secrets: Vec<_> = kube.snapshot().secrets.keys().collect();
        let named = usize::from(yaml.contains("secretName: shop-tls"))
            + usize::from(yaml.contains("proxy-ssl-secret: shop/upstream-ca"))
            + usize::from(yaml.contains("auth-secret: staff"))
            + usize::from(yaml.contains("auth-tls-secret: shop/client-ca"));
        assert_eq!(secrets.len(), named, "{secrets:?}");
        for r in api
            .requests()
            .iter()
            .filter(|r| r.contains("/secrets") || r.contains("/configmaps"))
        {
            assert!(r.contains("fieldSelector=metadata.name"), "{r}");
        }
        // ConfigMaps likewise: those of custom-headers.
        let maps: Vec<_> = kube.snapshot().config_maps.keys().collect();
        let named = usize::from(yaml.contains("custom-headers: headers"));
        assert_eq!(maps.len(), named, "{maps:?}");
        assert_eq!(
            rendered(kube.snapshot()),
            rendered(files.snapshot()),
            "L4 desired state differs for {}",
            case.display()
        );
        let (from_kube, w1) = compile(kube.snapshot(), &ClassConfig::default());
        let (from_files, w2) = compile(files.snapshot(), &ClassConfig::default());
        assert_eq!(w1, w2, "{}", case.display());
        assert_eq!(from_kube.len(), from_files.len(), "{}", case.display());
        assert_eq!(from_kube.tls_hosts, from_files.tls_hosts);
        for (host, path) in [
            ("shop.test", "/cart/x"),
            ("shop.test", "/exact"),
            ("shop.test", "/exact/no"),
            ("a.wild.test", "/"),
            ("other.test", "/"),
        ] {
            let route = |m: Match<'_>| match m {
                Match::Route(r) => Some((r.ingress.clone(), (*r.upstream).clone())),
                Match::Default(r) => r.map(|r| (r.ingress.clone(), (*r.upstream).clone())),
            };
            assert_eq!(
                route(
                    from_kube
                        .lookup_raw(Some(host), path)
                        .expect("a path in normal form")
                ),
                route(
                    from_files
                        .lookup_raw(Some(host), path)
                        .expect("a path in normal form")
                ),
                "{host}{path} in {}",
                case.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP backend answering `<name> <path>`.
async fn echo(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{name} {}\n",
                        req.uri().path()
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(addr: SocketAddr, path: &str, host: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(c);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    common::status_and_body(resp).await
}

/// `ingressd run --no-l4` on the fake API server.
struct Ingressd {
    child: Child,
    log: PathBuf,
    http: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

impl Drop for Ingressd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ingressd {
    fn start(kubeconfig: &Path, dir: &Path, name: &str, extra: &[&str]) -> Ingressd {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--no-l4", "--kubeconfig"])
            .arg(kubeconfig)
            // The endpoints are echo servers on 127.0.0.x (no namespaces).
            .arg("--allow-loopback-endpoints")
            .args(["--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
            .args(["--default-backend-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0", "--node-name", "node-a"])
            .args(extra)
            .env("POD_NAME", name)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ingressd");
        Ingressd {
            child,
            log,
            http: None,
            metrics: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The addresses it bound (from its log), waited for.
    async fn bound(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.http.is_none() || self.metrics.is_none() {
            assert!(Instant::now() < deadline, "no addresses:\n{}", self.log());
            assert!(
                self.child.try_wait().ok().flatten().is_none(),
                "ingressd exited:\n{}",
                self.log()
            );
            let log = self.log();
            let field = |name: &str| common::logged_addr(&log, name);
            (self.http, self.metrics) = (field("http"), field("metrics"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ready(&self) -> bool {
        let Some(m) = self.metrics else { return false };
        matches!(get(m, "/readyz", "x").await, Ok((200, _)))
    }

    /// Waits (bounded) until `path` on `host` answers `status` with a body
    /// containing `body`.
    async fn wait_for(&self, host: &str, path: &str, status: u16, body: &str) {
        let http = self.http.expect("bound");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = get(http, path, host).await;
            if matches!(&got, Ok((s, b)) if *s == status && b.contains(body)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host}{path}: wanted {status} {body:?}, got {got:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: 80, targetPort: {port}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n",
        port = addr.port(),
        ip = addr.ip()
    )
}

fn ingress(host: &str, path: &str, service: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: shop, namespace: shop}}\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
         \x20     - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_reach_the_proxy_across_dropped_and_expired_watches() {
    let dir = temp_dir("kube-e2e");
    let api = FakeApi::start().await;
    let (a, b) = (echo("a").await, echo("b").await);
    api.apply_yaml(&(backend("a", a) + &backend("b", b) + &ingress("shop.test", "/cart", "a")));
    // No RBAC for Ingresses yet: not ready, told once what to fix.
    api.forbid("Ingress");
    let mut d = Ingressd::start(
        &api.kubeconfig(&dir),
        &dir,
        "one",
        &["--update-status=false"],
    );
    d.bound().await;
    let hint = "the ServiceAccount needs get, list and watch on ingresses.networking.k8s.io";
    assert!(
        common::eventually(Duration::from_secs(20), async || d.log().contains(hint)).await,
        "no RBAC hint:\n{}",
        d.log()
    );
    assert!(!d.ready().await, "ready before Ingresses could be listed");
    // Until it is allowed, the backoff retries without repeating the hint.
    let lists = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/networking.k8s.io/v1/ingresses?"))
            .filter(|r| !r.contains("watch=true"))
            .count()
    };
    assert!(
        common::eventually(Duration::from_secs(20), async || lists(&api) >= 2).await,
        "no retry"
    );
    assert!(!d.ready().await);
    api.allow("Ingress");
    assert!(
        common::eventually(Duration::from_secs(30), async || d.ready().await).await,
        "never ready:\n{}",
        d.log()
    );
    assert_eq!(d.log().matches(hint).count(), 1, "{}", d.log());
    d.wait_for("shop.test", "/cart", 200, "a /cart").await;

    // A change, then one after the watches dropped: both arrive.
    api.apply_yaml(&ingress("shop.test", "/basket", "b"));
    d.wait_for("shop.test", "/basket", 200, "b /basket").await;
    d.wait_for("shop.test", "/cart", 404, "").await;
    api.drop_watches();
    api.apply_yaml(&ingress("shop.test", "/cart", "b"));
    d.wait_for("shop.test", "/cart", 200, "b /cart").await;

    // History expired while the watches were down: the resumed watch gets
    // 410 Gone, ingressd lists again and sees the deletion it missed.
    let before = lists(&api);
    api.expire_history();
    api.delete("Ingress", "shop", "shop");
    d.wait_for("shop.test", "/cart", 404, "").await;
    assert!(lists(&api) > before, "no re-list after 410");
    // Endpoints follow too: b's slice now points at a's server.
    api.apply_yaml(&(backend("b", a) + &ingress("shop.test", "/cart", "b")));
    d.wait_for("shop.test", "/cart", 200, "a /cart").await;
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_elected_replica_writes_ingress_status_once() {
    let (dir, api) = shop_api("kube-status").await;
    // Not ours: never written.
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: theirs, namespace: shop}\n\
         spec: {ingressClassName: nginx, defaultBackend: {service: {name: a, port: {number: 80}}}}\n",
    );
    let kubeconfig = api.kubeconfig(&dir);
    let flags = ["--publish-status-address", "198.18.0.10"];
    let mut one = Ingressd::start(&kubeconfig, &dir, "one", &flags);
    let mut two = Ingressd::start(&kubeconfig, &dir, "two", &flags);
    one.bound().await;
    two.bound().await;
    let written = || {
        api.get("Ingress", "shop", "shop")
            .map(|i| i["status"]["loadBalancer"]["ingress"][0]["ip"] == "198.18.0.10")
            .unwrap_or(false)
    };
    assert!(
        common::eventually(Duration::from_secs(30), async || written()).await,
        "status not written:\n{}\n{}",
        one.log(),
        two.log()
    );
    // Both replicas go through two more election rounds: no second write.
    let lease_gets = || {
        api.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /apis/coordination.k8s.io/v1/namespaces/default/leases/")
            })
            .count()
    };
    let target = lease_gets() + 4;
    assert!(
        common::eventually(Duration::from_secs(30), async || lease_gets() >= target).await,
        "election stopped"
    );
    let patches: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH") && r.contains("/ingresses/"))
        .collect();
    assert_eq!(
        patches.len(),
        1,
        "{patches:?}\n{}\n{}",
        one.log(),
        two.log()
    );
    assert!(patches[0].contains("/namespaces/shop/ingresses/shop/status"));
    let writers = [&one, &two]
        .iter()
        .filter(|d| d.log().contains("Ingress status written"))
        .count();
    assert_eq!(writers, 1);
    let theirs = api.get("Ingress", "shop", "theirs").unwrap();
    assert!(
        theirs["status"]["loadBalancer"]["ingress"].is_null(),
        "{theirs}"
    );
    drop((one, two));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A temp dir and a fake API server holding backend `a` (an echo server)
/// routed from shop.test/.
async fn shop_api(tag: &str) -> (PathBuf, FakeApi) {
    let dir = temp_dir(tag);
    let api = FakeApi::start().await;
    let a = echo("a").await;
    api.apply_yaml(&(backend("a", a) + &ingress("shop.test", "/", "a")));
    (dir, api)
}

/// `shop_api`, and an ingressd (no status writing) serving it.
async fn serving_shop(tag: &str) -> (PathBuf, FakeApi, Ingressd) {
    let (dir, api) = shop_api(tag).await;
    let mut d = Ingressd::start(
        &api.kubeconfig(&dir),
        &dir,
        "one",
        &["--update-status=false"],
    );
    d.bound().await;
    d.wait_for("shop.test", "/", 200, "a /").await;
    (dir, api, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_changes_is_a_few_syncs() {
    let (dir, api, d) = serving_shop("kube-burst").await;
    let syncs = || async {
        get(d.metrics.unwrap(), "/metrics", "x")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("ingressd_syncs_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = syncs().await;
    for i in 0..999 {
        api.apply_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: burst}}\nspec: {{ports: [{{port: 80}}]}}\n"
        ));
    }
    api.apply_yaml(&ingress("shop.test", "/last", "a"));
    d.wait_for("shop.test", "/last", 200, "a /last").await;
    let took = syncs().await - before;
    // Batched: a sync per 50 ms window of changes, so a few windows' worth
    // (the fake server streams the thousand over a while; slower on a
    // loaded 2-core machine), never one sync per change.
    assert!((1..=20).contains(&took), "1,000 changes took {took} syncs");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running, ready pod `name` (labels `app`) on `node`.
fn pod(name: &str, app: &str, node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}, pod-template-generation: \"{name}\"}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

/// A Node with one address of `kind`.
fn node_object(name: &str, kind: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus: {{addresses: [{{type: {kind}, address: {ip}}}, {{type: Hostname, address: {name}}}]}}\n"
    )
}

/// The IPs in Ingress shop/shop's status.
fn status_ips(api: &FakeApi) -> Vec<String> {
    api.get("Ingress", "shop", "shop")
        .and_then(|i| i["status"]["loadBalancer"]["ingress"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["ip"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_status_lists_the_nodes_of_the_controllers_pods() {
    let (dir, api) = shop_api("kube-nodes").await;
    // Two controller pods on two edge nodes; a pod of something else on a third.
    api.apply_yaml(
        &(pod("one", "ingressd", "edge-1")
            + &pod("two", "ingressd", "edge-2")
            + &pod("web", "web", "worker-1")
            + &pod("three", "ingressd", "worker-1").replace("phase: Running", "phase: Pending")
            + &node_object("edge-1", "ExternalIP", "198.18.0.21")
            + &node_object("edge-2", "InternalIP", "198.18.0.22")
            + &node_object("worker-1", "InternalIP", "198.18.0.23")),
    );
    let mut one = Ingressd::start(&api.kubeconfig(&dir), &dir, "one", &[]);
    one.bound().await;
    let ips = || status_ips(&api);
    assert!(
        common::eventually(Duration::from_secs(30), async || !ips().is_empty()).await,
        "no status:\n{}",
        one.log()
    );
    assert_eq!(ips(), ["198.18.0.21", "198.18.0.22"], "{}", one.log());
    drop(one);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_loss_is_logged_once_and_the_last_state_keeps_serving() {
    let (dir, api, d) = serving_shop("kube-down").await;
    api.set_down(true);
    let hint = "cannot reach the API server";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains(hint) {
        assert!(Instant::now() < deadline, "loss not logged:\n{}", d.log());
        // Meanwhile the proxy serves what it had.
        d.wait_for("shop.test", "/", 200, "a /").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Retries go on (kube-rs backoff), each watch's problem said once.
    assert!(
        common::eventually(Duration::from_secs(30), async || api.refused() >= 10).await,
        "no retries:\n{}",
        d.log()
    );
    d.wait_for("shop.test", "/", 200, "a /").await;
    let log = d.log();
    for watch in [
        "Service",
        "EndpointSlice",
        "Ingress",
        "IngressClass",
        "Node node-a",
    ] {
        let lines = log
            .lines()
            .filter(|l| l.contains(hint) && l.contains(&format!("watch={watch} ")))
            .count();
        assert!(lines <= 1, "{watch} said {lines} times:\n{log}");
    }
    assert!(!log.contains("kube_client"), "{log}");
    api.set_down(false);
    api.apply_yaml(&ingress("shop.test", "/back", "a"));
    d.wait_for("shop.test", "/back", 200, "a /back").await;
    assert!(
        common::eventually(Duration::from_secs(10), async || d
            .log()
            .contains("watch works again watch=Ingress"))
        .await,
        "recovery not logged:\n{}",
        d.log()
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM gives the Lease up (no holder), so the other replica takes it at
/// its next round instead of after the lease's 15 s, and writes status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_to_the_other_replica() {
    let (dir, api) = shop_api("kube-release").await;
    let kubeconfig = api.kubeconfig(&dir);
    let flags = ["--publish-status-address", "198.18.0.11"];
    let mut one = Ingressd::start(&kubeconfig, &dir, "one", &flags);
    one.bound().await;
    let holder = || {
        api.get("Lease", "default", "ingress-ebpf-leader")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    };
    assert!(
        common::eventually(Duration::from_secs(20), async || holder().is_some()).await,
        "no lease taken:\n{}",
        one.log()
    );
    let first = holder().unwrap_or_default();
    let mut two = Ingressd::start(&kubeconfig, &dir, "two", &flags);
    two.bound().await;
    // SIGTERM the holder (both have the same flags; the log says which).
    let (leader, other) = if one.log().contains("leader=true") {
        (&mut one, &two)
    } else {
        (&mut two, &one)
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(leader.child.id() as i32, libc::SIGTERM) };
    let exited = common::eventually(Duration::from_secs(10), async || {
        leader.child.try_wait().ok().flatten().is_some()
    })
    .await;
    assert!(exited, "{}", leader.log());
    assert!(leader.log().contains("lease released"), "{}", leader.log());
    // With --publish-status-address nothing looks the controller's pods up
    // (nor warns about RBAC on pods).
    assert!(
        !leader.log().contains("controller's pods"),
        "{}",
        leader.log()
    );
    let released_at = std::time::Instant::now();
    // The other replica holds it well before 15 s would have run out.
    let taken = common::eventually(Duration::from_secs(10), async || {
        holder().is_some_and(|h| !h.is_empty() && h != first)
    })
    .await;
    assert!(taken, "{}\n{:?}", other.log(), holder());
    assert!(released_at.elapsed() < Duration::from_secs(10));
    drop((one, two));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Back after an outage, the API server answers the watches' resumption
/// with 410 Gone (their history expired meanwhile): the re-list starts at
/// once, not after the pause the watch built up while the server was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_410_is_relisted_at_once() {
    let (dir, api, d) = serving_shop("kube-410").await;
    api.set_down(true);
    // Down long enough for the watches' pauses to grow past a second.
    assert!(
        common::eventually(Duration::from_secs(40), async || api.refused() >= 30).await,
        "no retries:\n{}",
        d.log()
    );
    api.expire_history();
    // The Ingress moves to another host meanwhile.
    api.apply_yaml(&ingress("during.test", "/", "a"));
    let back = Instant::now();
    api.set_down(false);
    d.wait_for("during.test", "/", 200, "a /").await;
    // The Ingress watch resumed (and got 410), then the list came at once.
    let after: Vec<(Instant, String)> = api
        .timed_requests()
        .into_iter()
        .filter(|(t, r)| *t >= back && r.starts_with("GET /apis/networking.k8s.io/v1/ingresses?"))
        .collect();
    let resumed = after
        .iter()
        .position(|(_, r)| r.contains("watch=true"))
        .unwrap_or_else(|| {
            panic!(
                "no watch resumed: {:?}",
                api.timed_requests()
                    .iter()
                    .filter(|(t, _)| *t >= back)
                    .map(|(_, r)| r)
                    .collect::<Vec<_>>()
            )
        });
    let relisted = after[resumed..]
        .iter()
        .find(|(_, r)| !r.contains("watch=true"))
        .unwrap_or_else(|| panic!("no re-list after the 410: {after:?}"));
    let gap = relisted.0 - after[resumed].0;
    assert!(
        gap < Duration::from_millis(400),
        "re-listed {gap:?} after the 410:\n{}",
        d.log()
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new Ingress with `spec.tls` goes live with its Secret, not before: the
/// sync waits (2 s at most) for the new Secret watch's first list, so HTTP
/// does not redirect to an HTTPS that has no certificate yet. Here the
/// Secret list is refused for a while: the Ingress is held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tls_ingress_waits_for_its_secret() {
    let (dir, api, d) = serving_shop("kube-tls-hold").await;
    api.forbid("Secret");
    api.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tls-cert, namespace: shop}\n\
         type: kubernetes.io/tls\nstringData: {tls.crt: x, tls.key: x}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: secure, namespace: shop}\n\
         spec:\n  ingressClassName: ebpf\n  tls: [{hosts: [secure.test], secretName: tls-cert}]\n  rules:\n  \
         - host: secure.test\n    http:\n      paths:\n      \
         - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}\n",
    );
    let applied = Instant::now();
    let http = d.http.expect("bound");
    // While the Secret cannot be listed, the Ingress is not published.
    let mut seen = Vec::new();
    while applied.elapsed() < Duration::from_millis(1200) {
        seen.push(
            get(http, "/", "secure.test")
                .await
                .map(|r| r.0)
                .unwrap_or(0),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().all(|s| *s == 404),
        "published before its Secret was listed: {seen:?}\n{}",
        d.log()
    );
    // Held at most 2 s: then it goes live all the same (the HTTP → HTTPS
    // redirect of a TLS host).
    d.wait_for("secure.test", "/", 308, "").await;
    assert!(applied.elapsed() < Duration::from_secs(6));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An Ingress with an annotation refused gets one Warning Event saying so
/// (on the object `kubectl describe` shows), written by the elected
/// replica, and no more while nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_annotation_is_one_event_on_its_ingress() {
    let (dir, api) = shop_api("kube-events").await;
    api.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {name: odd, namespace: shop, annotations: {nginx.ingress.kubernetes.io/ssl-redirect: maybe}}\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: odd.test\n    http:\n      paths:\n      \
         - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}\n",
    );
    let kubeconfig = api.kubeconfig(&dir);
    let mut d = Ingressd::start(
        &kubeconfig,
        &dir,
        "one",
        &["--publish-status-address", "198.18.0.12"],
    );
    d.bound().await;
    let ours = || -> Vec<serde_json::Value> {
        api.all_of("Event")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == "odd")
            .collect()
    };
    assert!(
        common::eventually(Duration::from_secs(20), async || !ours().is_empty()).await,
        "no Event:\n{}",
        d.log()
    );
    let e = &ours()[0];
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["reason"], "AnnotationRejected", "{e}");
    let uid = api.get("Ingress", "shop", "odd").expect("odd")["metadata"]["uid"].clone();
    assert_eq!(e["regarding"]["uid"], uid, "{e}");
    assert_eq!(e["regarding"]["kind"], "Ingress", "{e}");
    assert!(
        e["note"]
            .as_str()
            .unwrap_or_default()
            .contains("ssl-redirect"),
        "{e}"
    );
    // Two more lease renewals (a round each, 5 s apart): still one Event,
    // never patched.
    let renewals = || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("PUT") && r.contains("/leases/"))
            .count()
    };
    let target = renewals() + 2;
    assert!(common::eventually(Duration::from_secs(20), async || renewals() >= target).await);
    assert_eq!(ours().len(), 1);
    let writes = api
        .requests()
        .iter()
        .filter(|r| r.contains("/events") && !r.starts_with("GET"))
        .count();
    assert_eq!(writes, 1, "{:?}", api.requests());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--update-status-on-shutdown` (default true): the leader leaving clears
/// the address it wrote only when it is the last of the controller's pods;
/// while another serves (a rollout's new pod), the status stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_replica_leaving_clears_the_status_it_wrote() {
    let (dir, api) = shop_api("kube-clear").await;
    api.apply_yaml(
        &(pod("one", "ingressd", "edge-1")
            + &pod("two", "ingressd", "edge-2")
            + &node_object("edge-1", "ExternalIP", "198.18.0.31")
            + &node_object("edge-2", "ExternalIP", "198.18.0.32")),
    );
    let stop = async |mut d: Ingressd| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
        let exited = common::eventually(Duration::from_secs(10), async || {
            d.child.try_wait().ok().flatten().is_some()
        })
        .await;
        assert!(exited, "{}", d.log());
        d.log()
    };
    let mut one = Ingressd::start(&api.kubeconfig(&dir), &dir, "one", &[]);
    one.bound().await;
    let written = common::eventually(Duration::from_secs(30), async || {
        status_ips(&api) == ["198.18.0.31", "198.18.0.32"]
    })
    .await;
    assert!(written, "{:?}\n{}", status_ips(&api), one.log());
    let log = stop(one).await;
    assert!(log.contains("other replicas serve"), "{log}");
    assert_eq!(status_ips(&api), ["198.18.0.31", "198.18.0.32"]);
    // Pod two is gone: one, back and then leaving, is the last.
    api.delete("Pod", "default", "two");
    let mut one = Ingressd::start(&api.kubeconfig(&dir), &dir, "one", &[]);
    one.bound().await;
    let rewritten = common::eventually(Duration::from_secs(30), async || {
        status_ips(&api) == ["198.18.0.31"]
    })
    .await;
    assert!(rewritten, "{:?}\n{}", status_ips(&api), one.log());
    let log = stop(one).await;
    assert!(log.contains("Ingress status cleared"), "{log}");
    assert!(status_ips(&api).is_empty(), "{:?}", status_ips(&api));
    let _ = std::fs::remove_dir_all(&dir);
}

/// --add-headers and --proxy-set-headers name ConfigMaps outside any
/// Ingress: those are watched (by name) too, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_flags_config_maps_are_watched_by_name() {
    let dir = temp_dir("kube-header-flags");
    let api = FakeApi::start().await;
    for o in api_objects(INGRESS_CASE) {
        api.apply(o);
    }
    let class = ClassConfig {
        add_headers: Some(ingressd::cluster::ObjectKey::new("shop", "unrelated")),
        proxy_set_headers: Some(ingressd::cluster::ObjectKey::new("shop", "missing")),
        ..ClassConfig::default()
    };
    let kube = synced_source(&api, &dir, class).await;
    let maps: Vec<String> = kube
        .snapshot()
        .config_maps
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(maps, ["shop/headers", "shop/unrelated"]);
    for r in api.requests().iter().filter(|r| r.contains("/configmaps")) {
        assert!(r.contains("fieldSelector=metadata.name"), "{r}");
    }
}

/// A Gateway API CRD as the upstream bundle labels it (only what the
/// fake API server looks at).
fn gateway_crd(plural: &str) -> String {
    format!(
        "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
         metadata: {{name: {plural}.gateway.networking.k8s.io, labels: {{gateway.networking.k8s.io/bundle-version: v1.4.0}}}}\n\
         spec: {{group: gateway.networking.k8s.io}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_is_picked_up_when_its_crds_appear_and_its_status_is_written_once() {
    let (dir, api) = shop_api("kube-gateway").await;
    let kubeconfig = api.kubeconfig(&dir);
    let mut d = Ingressd::start(
        &kubeconfig,
        &dir,
        "one",
        &["--publish-status-address", "198.18.0.10"],
    );
    d.bound().await;
    // Without the CRDs: ready, the Ingress served, said in one line.
    d.wait_for("shop.test", "/", 200, "a").await;
    assert!(d.ready().await);
    assert_eq!(
        d.log()
            .matches("Gateway API CRDs are not installed")
            .count(),
        1,
        "{}",
        d.log()
    );
    for plural in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "referencegrants",
    ] {
        api.apply_yaml(&gateway_crd(plural));
    }
    let port = d.http.expect("bound").port();
    api.apply_yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ebpf}}\nspec: {{controllerName: ingress-ebpf/gateway-controller}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: shop, generation: 1}}\n\
         spec: {{gatewayClassName: ebpf, listeners: [{{name: http, port: {port}, protocol: HTTP}}]}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop, generation: 1}}\n\
         spec: {{parentRefs: [{{name: gw}}], hostnames: [gw.test], rules: [{{backendRefs: [{{name: a, port: 80}}]}}]}}\n"
    ));
    // Picked up at once (the CRDs' watch), not after the periodic retry.
    d.wait_for("gw.test", "/", 200, "a").await;
    let condition = |v: &serde_json::Value, t: &str| {
        v["conditions"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["type"] == t))
            .map(|c| c["status"] == "True")
            .unwrap_or(false)
    };
    let written = || {
        let gw = api.get("Gateway", "shop", "gw").unwrap_or_default();
        let class = api.get("GatewayClass", "", "ebpf").unwrap_or_default();
        let route = api.get("HTTPRoute", "shop", "r").unwrap_or_default();
        condition(&gw["status"], "Programmed")
            && gw["status"]["addresses"][0]["value"] == "198.18.0.10"
            && gw["status"]["listeners"][0]["attachedRoutes"] == 1
            && condition(&class["status"], "Accepted")
            && class["status"]["supportedFeatures"][0]["name"] == "Gateway"
            && condition(&route["status"]["parents"][0], "Accepted")
            && condition(&route["status"]["parents"][0], "ResolvedRefs")
            && route["status"]["parents"][0]["controllerName"] == "ingress-ebpf/gateway-controller"
    };
    assert!(
        common::eventually(Duration::from_secs(30), async || written()).await,
        "status not written: {:?}\n{}",
        api.get("Gateway", "shop", "gw"),
        d.log()
    );
    // Two more election rounds: nothing written again.
    let lease_gets = || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/coordination.k8s.io/v1/"))
            .count()
    };
    let target = lease_gets() + 3;
    assert!(common::eventually(Duration::from_secs(30), async || lease_gets() >= target).await);
    let patches: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /apis/gateway.networking.k8s.io/"))
        .collect();
    assert_eq!(patches.len(), 3, "{patches:?}\n{}", d.log());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
