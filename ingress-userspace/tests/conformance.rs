//! The Gateway API's GATEWAY-HTTP conformance profile, test by test: each
//! test is named after the upstream suite's (v1.x, core unless marked
//! extended) and does what it does, against a real `ingressd` on manifest
//! files (`--no-l4`, loopback) with real HTTP/1.1 and TLS clients. Each
//! asserts the traffic and what ingressd reports of the objects (the
//! conditions it would write, from its `/routes`).
//!
//! The upstream suite puts listeners on port 80; ingressd takes listeners
//! on the ports it serves, so here they name the port the test's ingressd
//! bound.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use testkit::proxy::{Ingressd, get};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const INFRA: &str = "gateway-conformance-infra";
const APP: &str = "gateway-conformance-app-backend";
const WEB: &str = "gateway-conformance-web-backend";

/// A backend that answers with its name, the request line and every
/// header it got (`name: value` lines), and `x-backend: <name>` on its
/// response; `?delay=<ms>` makes it wait first.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let delay = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("delay="))
                        .and_then(|d| d.parse::<u64>().ok());
                    if let Some(ms) = delay {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let mut body = format!("{name} {} {}\n", req.method(), req.uri());
                    for (n, v) in req.headers() {
                        body.push_str(&format!("{n}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert("x-backend", name.parse().unwrap());
                    resp.headers_mut()
                        .insert("x-header-remove", "present".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A Service (port 8080) in `ns` with one ready endpoint at `at`;
/// `headless`: clusterIP None, as HTTPRouteServiceTypes has it.
fn service(name: &str, ns: &str, at: SocketAddr, headless: bool) -> String {
    let ip = if headless { ", clusterIP: None" } else { "" };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 8080, targetPort: {port}}}]{ip}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        at.ip(),
        port = at.port()
    )
}

const CLASS: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gateway-conformance}\nspec: {controllerName: ingress-ebpf/gateway-controller}\n";

fn object(kind: &str, name: &str, ns: &str, spec: &str) -> String {
    let version = if kind == "ReferenceGrant" {
        "v1beta1"
    } else {
        "v1"
    };
    format!(
        "---\napiVersion: gateway.networking.k8s.io/{version}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn gateway(name: &str, listeners: &str) -> String {
    object(
        "Gateway",
        name,
        INFRA,
        &format!("{{gatewayClassName: gateway-conformance, listeners: [{listeners}]}}"),
    )
}

fn route(name: &str, ns: &str, spec: &str) -> String {
    object("HTTPRoute", name, ns, spec)
}

/// The backends the upstream suite deploys, a running ingressd, and the
/// manifests the test adds on top.
struct Lab {
    d: Ingressd,
    base: String,
}

impl Lab {
    async fn start() -> Lab {
        let mut base = CLASS.to_string();
        for (name, ns) in [
            ("infra-backend-v1", INFRA),
            ("infra-backend-v2", INFRA),
            ("infra-backend-v3", INFRA),
            ("app-backend-v1", APP),
            ("app-backend-v2", APP),
            ("web-backend", WEB),
        ] {
            base += &service(name, ns, backend(name).await, false);
        }
        let d = Ingressd::start(BIN, &base).await;
        Lab { d, base }
    }

    /// The HTTP listener's port.
    fn http(&self) -> u16 {
        self.d.http.port()
    }

    fn https(&self) -> u16 {
        self.d.https.port()
    }

    /// One `same-namespace` Gateway with an HTTP listener (routes from
    /// its namespace, or from `from`: Same or All), and `more`.
    async fn apply(&self, more: &str) {
        self.d.update(&(self.base.clone() + more)).await;
    }

    fn listener(&self, name: &str, from: &str, extra: &str) -> String {
        format!(
            "{{name: {name}, port: {}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: {from}}}}}{extra}}}",
            self.http()
        )
    }

    /// What ingressd serves and reports, as `ingressd routes` prints it.
    async fn routes(&self) -> String {
        get(self.d.metrics, "/routes", None).await.unwrap().1
    }

    async fn ask(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(self.d.http, "GET", host, path, headers).await
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    /// The backend that answered ("-" for none).
    fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }

    /// A header the backend got (lower-case name), all its values joined.
    fn got(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .body
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The request target the backend got.
    fn target(&self) -> &str {
        self.body
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or("")
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn assert_in(text: &str, line: &str) {
    assert!(text.contains(line), "{line:?} not in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_simple_same_namespace() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "gateway-conformance-infra-test",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab.ask("example.com", "/", &[]).await;
    assert_eq!((a.status, a.backend()), (200, "infra-backend-v1"), "{a:?}");
    let text = lab.routes().await;
    assert_in(
        &text,
        "GATEWAY gateway-conformance-infra/same-namespace  ok",
    );
    assert_in(
        &text,
        "HTTPROUTE gateway-conformance-infra/gateway-conformance-infra-test\n  parent gateway-conformance-infra/same-namespace on [http(*)]  ok",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_cross_namespace() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("backend-namespaces", &lab.listener("http", "All", ""))
            + &route(
                "cross-namespace",
                WEB,
                "{parentRefs: [{name: backend-namespaces, namespace: gateway-conformance-infra}], rules: [{backendRefs: [{name: web-backend, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab.ask("example.com", "/", &[]).await;
    assert_eq!((a.status, a.backend()), (200, "web-backend"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_exact_path_matching() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "exact-matching",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {type: Exact, value: /one}}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{path: {type: Exact, value: /two}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}]}",
            )),
    )
    .await;
    for (path, want) in [
        ("/one", "infra-backend-v1"),
        ("/two", "infra-backend-v2"),
        ("/one/example", "-"),
        ("/two/", "-"),
        ("/", "-"),
    ] {
        let a = lab.ask("example.com", path, &[]).await;
        assert_eq!(a.backend(), want, "{path}: {a:?}");
        assert_eq!(a.status, if want == "-" { 404 } else { 200 }, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_matching() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "matching",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}]}",
            )),
    )
    .await;
    for (path, headers, want) in [
        ("/", &[][..], "infra-backend-v1"),
        ("/example", &[], "infra-backend-v1"),
        ("/", &[("version", "one")], "infra-backend-v1"),
        ("/v2", &[], "infra-backend-v2"),
        ("/v2/example", &[], "infra-backend-v2"),
        ("/", &[("version", "two")], "infra-backend-v2"),
        ("/v2x", &[], "infra-backend-v1"),
    ] {
        let a = lab.ask("example.com", path, headers).await;
        assert_eq!(a.backend(), want, "{path} {headers:?}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_matching_across_routes() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "matching-part1",
                INFRA,
                "{parentRefs: [{name: same-namespace}], hostnames: [example.com, example.net], rules: [\
                 {matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )
            + &route(
                "matching-part2",
                INFRA,
                "{parentRefs: [{name: same-namespace}], hostnames: [example.com], rules: [\
                 {matches: [{path: {type: PathPrefix, value: /v2}}], backendRefs: [{name: infra-backend-v2, port: 8080}]},\
                 {matches: [{headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]}]}",
            )),
    )
    .await;
    for (host, path, headers, want) in [
        ("example.com", "/", &[][..], "infra-backend-v1"),
        ("example.net", "/example", &[], "infra-backend-v1"),
        (
            "example.com",
            "/",
            &[("version", "one")],
            "infra-backend-v1",
        ),
        ("example.com", "/v2", &[], "infra-backend-v2"),
        ("example.com", "/v2/example", &[], "infra-backend-v2"),
        (
            "example.com",
            "/",
            &[("version", "two")],
            "infra-backend-v2",
        ),
        // part2 is not attached for example.net.
        ("example.net", "/v2", &[], "infra-backend-v1"),
        (
            "example.net",
            "/",
            &[("version", "two")],
            "infra-backend-v1",
        ),
        ("example.org", "/", &[], "-"),
    ] {
        let a = lab.ask(host, path, headers).await;
        assert_eq!(a.backend(), want, "{host}{path} {headers:?}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_path_match_order() {
    let lab = Lab::start().await;
    let rule = |kind: &str, path: &str, backend: &str| {
        format!(
            "{{matches: [{{path: {{type: {kind}, value: {path}}}}}], backendRefs: [{{name: {backend}, port: 8080}}]}}"
        )
    };
    let rules = [
        rule("PathPrefix", "/match", "infra-backend-v1"),
        rule("PathPrefix", "/match/exact", "infra-backend-v2"),
        rule("Exact", "/match/exact", "infra-backend-v3"),
        rule("Exact", "/match/exact/one", "app-backend-v1"),
        rule("PathPrefix", "/match/prefix/one", "app-backend-v2"),
    ]
    .join(",");
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "All", ""))
            + &object(
                "ReferenceGrant",
                "to-infra",
                APP,
                "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}], to: [{group: '', kind: Service}]}",
            )
            + &route(
                "path-matching-order",
                INFRA,
                &format!("{{parentRefs: [{{name: same-namespace}}], rules: [{}]}}", rules.replace(
                    "name: app-backend",
                    "namespace: gateway-conformance-app-backend, name: app-backend",
                )),
            )),
    )
    .await;
    for (path, want) in [
        ("/match", "infra-backend-v1"),
        ("/match/exact", "infra-backend-v3"),
        ("/match/exact/", "infra-backend-v2"),
        ("/match/exact/one", "app-backend-v1"),
        ("/match/exact/two", "infra-backend-v2"),
        ("/match/prefix/one/x", "app-backend-v2"),
        ("/match/prefix", "infra-backend-v1"),
        ("/matchother", "-"),
    ] {
        let a = lab.ask("example.com", path, &[]).await;
        assert_eq!(a.backend(), want, "{path}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_header_matching() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "header-matching",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{headers: [{name: version, value: one}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{headers: [{name: version, value: two}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]},\
                 {matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}], backendRefs: [{name: infra-backend-v2, port: 8080}]},\
                 {matches: [{headers: [{name: x-regex, type: RegularExpression, value: '^v[0-9]+$'}]}], backendRefs: [{name: infra-backend-v3, port: 8080}]}]}",
            )),
    )
    .await;
    for (headers, want) in [
        (&[("Version", "one")][..], "infra-backend-v1"),
        (&[("version", "two")], "infra-backend-v2"),
        (
            &[("version", "two"), ("color", "orange")],
            "infra-backend-v1",
        ),
        (&[("color", "blue")], "infra-backend-v1"),
        (&[("color", "green")], "infra-backend-v1"),
        (&[("color", "red")], "infra-backend-v2"),
        (&[("color", "yellow")], "infra-backend-v2"),
        (&[("x-regex", "v12")], "infra-backend-v3"),
        (&[("x-regex", "v1x")], "-"),
        (&[("version", "ONE")], "-"),
        (&[("color", "purple")], "-"),
        (&[], "-"),
    ] {
        let a = lab.ask("example.com", "/", headers).await;
        assert_eq!(a.backend(), want, "{headers:?}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_query_param_matching_and_method_matching() {
    // Extended: HTTPRouteQueryParamMatching, HTTPRouteMethodMatching.
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "query-method",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{queryParams: [{name: animal, value: whale}]}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}], backendRefs: [{name: infra-backend-v3, port: 8080}]},\
                 {matches: [{method: POST}], backendRefs: [{name: infra-backend-v2, port: 8080}]}]}",
            )),
    )
    .await;
    for (method, path, want) in [
        ("GET", "/?animal=whale", "infra-backend-v1"),
        ("GET", "/?animal=dolphin&color=blue", "infra-backend-v3"),
        ("GET", "/?animal=dolphin", "-"),
        ("GET", "/?ANIMAL=whale", "-"),
        ("POST", "/", "infra-backend-v2"),
        ("GET", "/", "-"),
    ] {
        let a = send(lab.d.http, method, "example.com", path, &[]).await;
        assert_eq!(a.backend(), want, "{method} {path}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_hostname_intersection() {
    let lab = Lab::start().await;
    let listeners = [
        lab.listener("listener-1", "Same", ", hostname: very.specific.com"),
        lab.listener("listener-2", "Same", ", hostname: '*.wildcard.io'"),
        lab.listener("listener-3", "Same", ", hostname: '*.anotherwildcard.io'"),
    ]
    .join(",");
    let to = |b: &str| format!("rules: [{{backendRefs: [{{name: {b}, port: 8080}}]}}]");
    lab.apply(
        &(gateway("httproute-hostname-intersection", &listeners)
            + &route(
                "specific-host-matches-listener-specific-host",
                INFRA,
                &format!(
                    "{{parentRefs: [{{name: httproute-hostname-intersection}}], hostnames: [non.matching.com, '*.nonmatchingwildcard.io', very.specific.com], {}}}",
                    to("infra-backend-v1")
                ),
            )
            + &route(
                "specific-host-matches-listener-wildcard-host",
                INFRA,
                &format!(
                    "{{parentRefs: [{{name: httproute-hostname-intersection}}], hostnames: [non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io], {}}}",
                    to("infra-backend-v2")
                ),
            )
            + &route(
                "wildcard-host-matches-listener-specific-host",
                INFRA,
                &format!(
                    "{{parentRefs: [{{name: httproute-hostname-intersection}}], hostnames: [non.matching.com, '*.specific.com'], {}}}",
                    to("infra-backend-v3")
                ),
            )
            + &route(
                "wildcard-host-matches-listener-wildcard-host",
                INFRA,
                &format!(
                    "{{parentRefs: [{{name: httproute-hostname-intersection}}], hostnames: ['*.anotherwildcard.io'], {}}}",
                    to("infra-backend-v1")
                ),
            )
            + &route(
                "no-intersecting-hosts",
                INFRA,
                &format!(
                    "{{parentRefs: [{{name: httproute-hostname-intersection}}], hostnames: [specific.but.wrong.com, wildcard.io], {}}}",
                    to("infra-backend-v2")
                ),
            )),
    )
    .await;
    for (host, want) in [
        ("very.specific.com", "infra-backend-v1"),
        ("non.matching.com", "-"),
        ("foo.nonmatchingwildcard.io", "-"),
        ("foo.wildcard.io", "infra-backend-v2"),
        ("bar.wildcard.io", "infra-backend-v2"),
        ("foo.bar.wildcard.io", "infra-backend-v2"),
        ("wildcard.io", "-"),
        ("foo.anotherwildcard.io", "infra-backend-v1"),
        ("foo.bar.anotherwildcard.io", "infra-backend-v1"),
        ("anotherwildcard.io", "-"),
        ("specific.but.wrong.com", "-"),
    ] {
        let a = lab.ask(host, "/", &[]).await;
        assert_eq!(a.backend(), want, "{host}: {a:?}");
    }
    let text = lab.routes().await;
    assert_in(
        &text,
        "HTTPROUTE gateway-conformance-infra/no-intersecting-hosts\n  parent gateway-conformance-infra/httproute-hostname-intersection on []  Accepted=NoMatchingListenerHostname",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_listener_hostname_matching() {
    let lab = Lab::start().await;
    let listeners = [
        lab.listener("listener-1", "Same", ", hostname: bar.com"),
        lab.listener("listener-2", "Same", ", hostname: foo.bar.com"),
        lab.listener("listener-3", "Same", ", hostname: '*.bar.com'"),
        lab.listener("listener-4", "Same", ", hostname: '*.foo.com'"),
    ]
    .join(",");
    let on = |section: &str, b: &str| {
        format!(
            "{{parentRefs: [{{name: httproute-listener-hostname-matching, sectionName: {section}}}], rules: [{{backendRefs: [{{name: {b}, port: 8080}}]}}]}}"
        )
    };
    lab.apply(
        &(gateway("httproute-listener-hostname-matching", &listeners)
            + &route("backend-v1", INFRA, &on("listener-1", "infra-backend-v1"))
            + &route("backend-v2", INFRA, &on("listener-2", "infra-backend-v2"))
            + &route("backend-v3", INFRA, &on("listener-3", "infra-backend-v3"))
            + &route("backend-v3-4", INFRA, &on("listener-4", "infra-backend-v3"))),
    )
    .await;
    for (host, want) in [
        ("bar.com", "infra-backend-v1"),
        ("foo.bar.com", "infra-backend-v2"),
        ("baz.bar.com", "infra-backend-v3"),
        ("boo.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.bar.com", "infra-backend-v3"),
        ("multiple.prefixes.foo.com", "infra-backend-v3"),
        ("foo.com", "-"),
        ("no.matching.host", "-"),
    ] {
        let a = lab.ask(host, "/", &[]).await;
        assert_eq!(a.backend(), want, "{host}: {a:?}");
    }
}

fn tls_secret(name: &str, ns: &str, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.cert.pem()),
        indent(&cert.signing_key.serialize_pem())
    )
}

/// GET over TLS with `sni`, trusting only `root`: (status, backend).
async fn https_get(addr: SocketAddr, sni: &str, root: &rcgen::Certificate) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the listener's certificate");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    (resp.status().as_u16(), backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_https_listener() {
    let lab = Lab::start().await;
    let cert = rcgen::generate_simple_self_signed(vec!["example.org".into()]).unwrap();
    // A certificate names one label under `*.`: the deeper name is on it too.
    let wild = rcgen::generate_simple_self_signed(vec![
        "*.wildcard.org".into(),
        "a.b.wildcard.org".into(),
    ])
    .unwrap();
    let listeners = format!(
        "{{name: https, port: {p}, protocol: HTTPS, hostname: example.org, tls: {{certificateRefs: [{{name: tls-validity-checks-certificate}}]}}}},\
         {{name: https-wild, port: {p}, protocol: HTTPS, hostname: '*.wildcard.org', tls: {{certificateRefs: [{{name: wild-cert}}]}}}}",
        p = lab.https()
    );
    lab.apply(
        &(tls_secret("tls-validity-checks-certificate", INFRA, &cert)
            + &tls_secret("wild-cert", INFRA, &wild)
            + &gateway("gateway-with-https-listener", &listeners)
            + &route(
                "https-listener-test",
                INFRA,
                "{parentRefs: [{name: gateway-with-https-listener}], hostnames: [example.org], rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )
            + &route(
                "https-wildcard",
                INFRA,
                "{parentRefs: [{name: gateway-with-https-listener, sectionName: https-wild}], rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]}",
            )),
    )
    .await;
    assert_eq!(
        https_get(lab.d.https, "example.org", &cert.cert).await,
        (200, "infra-backend-v1".into())
    );
    // Any depth under a listener's `*.` hostname, its certificate too.
    assert_eq!(
        https_get(lab.d.https, "a.b.wildcard.org", &wild.cert).await,
        (200, "infra-backend-v2".into())
    );
    // Attached to HTTPS listeners only: not on the HTTP port.
    assert_eq!(lab.ask("example.org", "/", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_weight() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "weighted-backends",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{backendRefs: [\
                 {name: infra-backend-v1, port: 8080, weight: 70},\
                 {name: infra-backend-v2, port: 8080, weight: 30},\
                 {name: infra-backend-v3, port: 8080, weight: 0}]}]}",
            )),
    )
    .await;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    // One connection, as a load generator keeps it: the split is per request.
    let stream = tokio::net::TcpStream::connect(lab.d.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..500 {
        sender.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let b = resp.headers()["x-backend"].to_str().unwrap().to_string();
        resp.into_body().collect().await.unwrap();
        *seen.entry(b).or_default() += 1;
    }
    let v1 = seen.get("infra-backend-v1").copied().unwrap_or(0);
    let v2 = seen.get("infra-backend-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 500, "weight 0 takes none: {seen:?}");
    // Within ±5 % of 350 and 150.
    assert!((332..=368).contains(&v1), "{seen:?}");
    assert!((132..=168).contains(&v2), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_request_header_modifier() {
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "request-header-modifier",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {type: PathPrefix, value: /set}}], filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{path: {type: PathPrefix, value: /add}}], filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}], backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{path: {type: PathPrefix, value: /remove}}], filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab
        .ask(
            "example.com",
            "/set",
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "some-other-value"),
            ],
        )
        .await;
    assert_eq!(
        a.got("x-header-set").as_deref(),
        Some("set-overwrites-values"),
        "{a:?}"
    );
    assert_eq!(a.got("some-other-header").as_deref(), Some("val"));
    let a = lab
        .ask(
            "example.com",
            "/add",
            &[("X-Header-Add", "some-other-value")],
        )
        .await;
    assert_eq!(
        a.got("x-header-add").as_deref(),
        Some("some-other-value,add-appends-values"),
        "{a:?}"
    );
    let a = lab.ask("example.com", "/add", &[]).await;
    assert_eq!(a.got("x-header-add").as_deref(), Some("add-appends-values"));
    let a = lab
        .ask(
            "example.com",
            "/remove",
            &[("X-Header-Remove", "val"), ("Keep", "yes")],
        )
        .await;
    assert_eq!(a.got("x-header-remove"), None, "{a:?}");
    assert_eq!(a.got("keep").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_response_header_modifier() {
    // Extended: HTTPRouteResponseHeaderModifier.
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "response-header-modifier",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}], add: [{name: X-Backend, value: added}], remove: [X-Header-Remove]}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab.ask("example.com", "/", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-header-set"], "set");
    let added: Vec<_> = a.headers.get_all("x-backend").iter().collect();
    assert_eq!(added, ["infra-backend-v1", "added"]);
    assert!(!a.headers.contains_key("x-header-remove"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_redirect_host_and_status() {
    let lab = Lab::start().await;
    let redirect = |path: &str, spec: &str| {
        format!(
            "{{matches: [{{path: {{type: PathPrefix, value: {path}}}}}], filters: [{{type: RequestRedirect, requestRedirect: {spec}}}]}}"
        )
    };
    let rules = [
        redirect("/hostname-redirect", "{hostname: example.org}"),
        redirect(
            "/host-and-status",
            "{hostname: example.org, statusCode: 301}",
        ),
        redirect("/scheme", "{scheme: https}"),
        redirect("/port", "{port: 8083}"),
        redirect(
            "/full",
            "{path: {type: ReplaceFullPath, replaceFullPath: /one}}",
        ),
        redirect(
            "/prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /two}}",
        ),
    ]
    .join(",");
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "redirect",
                INFRA,
                &format!("{{parentRefs: [{{name: same-namespace}}], rules: [{rules}]}}"),
            )),
    )
    .await;
    let p = lab.http();
    for (path, status, location) in [
        (
            "/hostname-redirect",
            302,
            format!("http://example.org:{p}/hostname-redirect"),
        ),
        (
            "/host-and-status?a=b",
            301,
            format!("http://example.org:{p}/host-and-status?a=b"),
        ),
        ("/scheme", 302, "https://example.com/scheme".to_string()),
        ("/port", 302, "http://example.com:8083/port".to_string()),
        ("/full/x", 302, format!("http://example.com:{p}/one")),
        ("/prefix/x", 302, format!("http://example.com:{p}/two/x")),
    ] {
        let a = lab.ask("example.com", path, &[]).await;
        assert_eq!(a.status, status, "{path}: {a:?}");
        assert_eq!(a.headers["location"], location.as_str(), "{path}");
        assert_eq!(a.backend(), "-");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_rewrite_host_and_path() {
    // Extended: HTTPRouteRewriteHost, HTTPRouteRewritePath.
    let lab = Lab::start().await;
    let rewrite = |path: &str, spec: &str| {
        format!(
            "{{matches: [{{path: {{type: PathPrefix, value: {path}}}}}], filters: [{{type: URLRewrite, urlRewrite: {spec}}}], backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}"
        )
    };
    let rules = [
        rewrite("/host", "{hostname: one.example.org}"),
        rewrite(
            "/prefix/one",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}",
        ),
        rewrite(
            "/strip-prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
        ),
        rewrite(
            "/full/one",
            "{path: {type: ReplaceFullPath, replaceFullPath: /one}}",
        ),
    ]
    .join(",");
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "rewrite",
                INFRA,
                &format!("{{parentRefs: [{{name: same-namespace}}], rules: [{rules}]}}"),
            )),
    )
    .await;
    let a = lab.ask("example.com", "/host/x", &[]).await;
    assert_eq!(a.got("host").as_deref(), Some("one.example.org"), "{a:?}");
    assert_eq!(a.target(), "/host/x");
    for (path, target) in [
        ("/prefix/one/two?q=1", "/one/two?q=1"),
        ("/prefix/one", "/one"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let a = lab.ask("example.com", path, &[]).await;
        assert_eq!(a.target(), target, "{path}: {a:?}");
        assert_eq!(a.got("host").as_deref(), Some("example.com"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_reference_grant_and_invalid_cross_namespace_backend_ref() {
    // HTTPRouteReferenceGrant, HTTPRouteInvalidCrossNamespaceBackendRef,
    // HTTPRoutePartiallyInvalidViaInvalidReferenceGrant.
    let lab = Lab::start().await;
    let routes = gateway("same-namespace", &lab.listener("http", "Same", ""))
        + &route(
            "reference-grant",
            INFRA,
            "{parentRefs: [{name: same-namespace}], rules: [\
             {matches: [{path: {value: /app}}], backendRefs: [{name: app-backend-v1, namespace: gateway-conformance-app-backend, port: 8080}]},\
             {matches: [{path: {value: /web}}], backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]},\
             {matches: [{path: {value: /own}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
        );
    let grant = object(
        "ReferenceGrant",
        "reference-grant",
        APP,
        "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}], to: [{group: '', kind: Service, name: app-backend-v1}]}",
    );
    lab.apply(&routes).await;
    // No grant: the cross-namespace backends answer 500, the rest serves.
    assert_eq!(lab.ask("example.com", "/app", &[]).await.status, 500);
    assert_eq!(lab.ask("example.com", "/web", &[]).await.status, 500);
    assert_eq!(
        lab.ask("example.com", "/own", &[]).await.backend(),
        "infra-backend-v1"
    );
    assert_in(&lab.routes().await, "ResolvedRefs=RefNotPermitted");
    lab.apply(&(routes + &grant)).await;
    let a = lab.ask("example.com", "/app", &[]).await;
    assert_eq!((a.status, a.backend()), (200, "app-backend-v1"), "{a:?}");
    // The grant names one Service.
    assert_eq!(lab.ask("example.com", "/web", &[]).await.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_invalid_non_existent_backend_ref_and_unknown_kind() {
    // HTTPRouteInvalidNonExistentBackendRef,
    // HTTPRouteInvalidBackendRefUnknownKind.
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "missing",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{matches: [{path: {value: /missing}}], backendRefs: [{name: nonexistent, port: 8080}]}]}",
            )
            + &route(
                "kind",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{matches: [{path: {value: /kind}}], backendRefs: [{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v1, port: 8080}]}]}",
            )
            + &route(
                "none",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{matches: [{path: {value: /none}}]}]}",
            )),
    )
    .await;
    for path in ["/missing", "/kind", "/none"] {
        let a = lab.ask("example.com", path, &[]).await;
        assert_eq!((a.status, a.backend()), (500, "-"), "{path}: {a:?}");
    }
    let text = lab.routes().await;
    assert_in(
        &text,
        "ResolvedRefs=BackendNotFound (Service gateway-conformance-infra/nonexistent not found)",
    );
    assert_in(&text, "ResolvedRefs=InvalidKind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_service_types() {
    let lab = Lab::start().await;
    let headless = service(
        "infra-backend-v1-headless",
        INFRA,
        backend("headless").await,
        true,
    );
    lab.apply(
        &(headless
            + &gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "service-types",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [{backendRefs: [{name: infra-backend-v1-headless, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab.ask("example.com", "/", &[]).await;
    assert_eq!((a.status, a.backend()), (200, "headless"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_invalid_parent_refs_and_disallowed_kinds() {
    // HTTPRouteInvalidParentRefNotMatchingSectionName,
    // HTTPRouteInvalidParentRefNotMatchingListenerPort,
    // HTTPRouteInvalidCrossNamespaceParentRef, GatewayInvalidRouteKind.
    let lab = Lab::start().await;
    let to = "rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]";
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &gateway(
                "gateway-only-invalid-route-kind",
                &lab.listener(
                    "http",
                    "Same",
                    ", allowedRoutes: {kinds: [{kind: InvalidRoute}]}",
                )
                .replace("allowedRoutes: {namespaces: {from: Same}}, ", ""),
            )
            + &route(
                "section-name",
                INFRA,
                &format!("{{parentRefs: [{{name: same-namespace, sectionName: nonexistent}}], hostnames: [section.example.com], {to}}}"),
            )
            + &route(
                "port",
                INFRA,
                &format!("{{parentRefs: [{{name: same-namespace, port: 81}}], hostnames: [port.example.com], {to}}}"),
            )
            + &route(
                "cross-namespace-parent",
                WEB,
                &format!("{{parentRefs: [{{name: same-namespace, namespace: gateway-conformance-infra}}], hostnames: [cross.example.com], {to}}}"),
            )),
    )
    .await;
    for host in [
        "section.example.com",
        "port.example.com",
        "cross.example.com",
    ] {
        assert_eq!(lab.ask(host, "/", &[]).await.status, 404, "{host}");
    }
    let text = lab.routes().await;
    for line in [
        "HTTPROUTE gateway-conformance-infra/section-name\n  parent gateway-conformance-infra/same-namespace on []  Accepted=NoMatchingParent",
        "HTTPROUTE gateway-conformance-infra/port\n  parent gateway-conformance-infra/same-namespace on []  Accepted=NoMatchingParent",
        "HTTPROUTE gateway-conformance-web-backend/cross-namespace-parent\n  parent gateway-conformance-infra/same-namespace on []  Accepted=NotAllowedByListeners",
        "ResolvedRefs=InvalidRouteKinds",
    ] {
        assert_in(&text, line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_reference_grants() {
    // GatewaySecretMissingReferenceGrant,
    // GatewaySecretReferenceGrantSpecific, GatewayInvalidTLSConfiguration.
    let lab = Lab::start().await;
    let cert = rcgen::generate_simple_self_signed(vec!["secure.example.com".into()]).unwrap();
    let listener = |secret_ns: &str| {
        format!(
            "{{name: https, port: {}, protocol: HTTPS, tls: {{certificateRefs: [{{name: certificate, namespace: {secret_ns}}}]}}}}",
            lab.https()
        )
    };
    let secret = tls_secret("certificate", "gateway-conformance-web-backend", &cert);
    let route = route(
        "secure",
        INFRA,
        "{parentRefs: [{name: gateway-secret}], rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
    );
    lab.apply(&(secret.clone() + &gateway("gateway-secret", &listener(WEB)) + &route))
        .await;
    assert_in(&lab.routes().await, "ResolvedRefs=RefNotPermitted");
    let grant = object(
        "ReferenceGrant",
        "reference-grant",
        WEB,
        "{from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}], to: [{group: '', kind: Secret, name: certificate}]}",
    );
    lab.apply(&(secret + &grant + &gateway("gateway-secret", &listener(WEB)) + &route))
        .await;
    assert_eq!(
        https_get(lab.d.https, "secure.example.com", &cert.cert).await,
        (200, "infra-backend-v1".into())
    );
    assert_in(
        &lab.routes().await,
        "GATEWAY gateway-conformance-infra/gateway-secret  ok",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_request_timeout() {
    // Extended: HTTPRouteRequestTimeout, HTTPRouteBackendRequestTimeout.
    let lab = Lab::start().await;
    lab.apply(
        &(gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "timeouts",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {value: /request-timeout}}], timeouts: {request: 200ms}, backendRefs: [{name: infra-backend-v1, port: 8080}]},\
                 {matches: [{path: {value: /backend-timeout}}], timeouts: {request: 10s, backendRequest: 200ms}, backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    for path in ["/request-timeout", "/backend-timeout"] {
        let started = Instant::now();
        let a = lab
            .ask("example.com", &format!("{path}?delay=3000"), &[])
            .await;
        assert_eq!(a.status, 504, "{path}: {a:?}");
        assert!(started.elapsed() < Duration::from_millis(2500), "{path}");
        let a = lab
            .ask("example.com", &format!("{path}?delay=10"), &[])
            .await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_http_route_on_one_listener_with_the_conflict_reported() {
    let lab = Lab::start().await;
    let ingress = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n\
        ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: legacy, namespace: gateway-conformance-infra}\n\
        spec: {ingressClassName: ebpf, rules: [{host: shared.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: infra-backend-v2, port: {number: 8080}}}}]}},\
        {host: ingress.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: infra-backend-v3, port: {number: 8080}}}}]}}]}\n";
    lab.apply(
        &(ingress.to_string()
            + &gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "migrated",
                INFRA,
                "{parentRefs: [{name: same-namespace}], hostnames: [shared.example.com], rules: [{matches: [{path: {value: /api}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    for (host, path, want) in [
        ("shared.example.com", "/api/x", "infra-backend-v1"),
        ("shared.example.com", "/other", "infra-backend-v2"),
        ("ingress.example.com", "/api", "infra-backend-v3"),
    ] {
        assert_eq!(
            lab.ask(host, path, &[]).await.backend(),
            want,
            "{host}{path}"
        );
    }
    let status = get(lab.d.metrics, "/status", None).await.unwrap().1;
    assert_in(
        &status,
        "host shared.example.com is also routed by HTTPRoute gateway-conformance-infra/migrated",
    );
}

/// A backend that keeps what it got (the `backend` body: request line and
/// headers), for mirrors.
async fn keeping(name: &'static str) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let mut got = format!("{name} {} {}\n", req.method(), req.uri());
                        for (n, v) in req.headers() {
                            got.push_str(&format!("{n}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        kept.lock().unwrap().push(got);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_request_mirror_and_percentage_mirror() {
    // Extended: HTTPRouteRequestMirror, HTTPRouteRequestPercentageMirror.
    let lab = Lab::start().await;
    let (all_at, all) = keeping("mirror-all").await;
    let (some_at, some) = keeping("mirror-some").await;
    let (none_at, none) = keeping("mirror-none").await;
    lab.apply(
        &(service("mirror-all", INFRA, all_at, false)
            + &service("mirror-some", INFRA, some_at, false)
            + &service("mirror-none", INFRA, none_at, false)
            + &gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "request-mirror",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {value: /mirror}}], filters: [\
                 {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: edited}]}},\
                 {type: RequestMirror, requestMirror: {backendRef: {name: mirror-all, port: 8080}}},\
                 {type: RequestMirror, requestMirror: {backendRef: {name: mirror-some, port: 8080}, fraction: {numerator: 1, denominator: 4}}},\
                 {type: RequestMirror, requestMirror: {backendRef: {name: mirror-none, port: 8080}, percent: 0}}],\
                 backendRefs: [{name: infra-backend-v1, port: 8080}]}]}",
            )),
    )
    .await;
    for i in 0..200 {
        let a = lab
            .ask(
                "example.com",
                &format!("/mirror/{i}?q=1"),
                &[("x-set", "client")],
            )
            .await;
        // The client's answer is the backend's, as without a mirror.
        assert_eq!((a.status, a.backend()), (200, "infra-backend-v1"), "{a:?}");
    }
    let copied = || all.lock().unwrap().len();
    assert!(
        testkit::wait::eventually(Duration::from_secs(5), async || copied() == 200).await,
        "{} of 200 mirrored",
        copied()
    );
    let first = all.lock().unwrap()[0].clone();
    assert!(first.starts_with("mirror-all GET /mirror/"), "{first}");
    assert!(
        first.contains("?q=1\n") && first.contains("\nhost: example.com\n"),
        "{first}"
    );
    // The copy is the request as the filters made it.
    assert!(
        first.contains("\nx-set: edited\n") && !first.contains("client"),
        "{first}"
    );
    let some = some.lock().unwrap().len();
    assert!((25..=80).contains(&some), "1 in 4 of 200: {some}");
    assert_eq!(none.lock().unwrap().len(), 0);
}

#[test]
fn ingressd_routes_prints_the_status_it_would_write_from_files() {
    let dir = std::env::temp_dir().join(format!("ingressd-gw-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = "{name: http, port: 80, protocol: HTTP}, {name: tcp, port: 9000, protocol: TCP}";
    let yaml = CLASS.to_string()
        + &service("web", INFRA, "127.0.0.1:8080".parse().unwrap(), false)
        + &gateway("same-namespace", listener)
        + &route(
            "web",
            INFRA,
            "{parentRefs: [{name: same-namespace}], rules: [{backendRefs: [{name: web, port: 8080}, {name: gone, port: 8080}]}]}",
        );
    std::fs::write(dir.join("all.yaml"), yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["routes", "--allow-loopback-endpoints", "--manifests"])
        .arg(&dir)
        .output()
        .expect("ingressd routes --manifests");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "STATUS GatewayClass gateway-conformance\n",
        "- name: HTTPRoute\n",
        "STATUS Gateway gateway-conformance-infra/same-namespace\n",
        "reason: UnsupportedProtocol\n",
        "- attachedRoutes: 1\n",
        "STATUS HTTPRoute gateway-conformance-infra/web\n",
        "reason: BackendNotFound\n",
        "controllerName: ingress-ebpf/gateway-controller\n",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_backend_protocol_h2c_and_websocket() {
    // Extended: HTTPRouteBackendProtocolH2C, HTTPRouteBackendProtocolWebSocket.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let lab = Lab::start().await;
    // An HTTP/1.1 and h2c (prior knowledge) echo; a WebSocket echo.
    let h2c = testkit::endpoints::echo("h2c", "127.0.0.1:0".parse().unwrap()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_at = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    let with = |yaml: String, protocol: &str| {
        yaml.replace(
            "{name: http, port: 8080, targetPort",
            &format!("{{name: http, port: 8080, appProtocol: {protocol}, targetPort"),
        )
    };
    lab.apply(
        &(with(service("h2c", INFRA, h2c, false), "kubernetes.io/h2c")
            + &with(service("ws", INFRA, ws_at, false), "kubernetes.io/ws")
            + &gateway("same-namespace", &lab.listener("http", "Same", ""))
            + &route(
                "protocols",
                INFRA,
                "{parentRefs: [{name: same-namespace}], rules: [\
                 {matches: [{path: {value: /h2c}}], backendRefs: [{name: h2c, port: 8080}]},\
                 {matches: [{path: {value: /ws}}], backendRefs: [{name: ws, port: 8080}]}]}",
            )),
    )
    .await;
    let a = lab.ask("example.com", "/h2c/x", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("version=HTTP/2.0"), "{}", a.body);
    let stream = tokio::net::TcpStream::connect(lab.d.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://example.com/ws/chat", stream)
        .await
        .expect("WebSocket handshake through the HTTPRoute");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
}
