//! End-to-end L7 in `--no-l4` mode on loopback: a real `ingressd` process,
//! real HTTP/1.1 and HTTP/2 clients, echo backends on 127.0.0.x. No root.
use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};

use testkit::{
    endpoints::{SLOW_ARRIVED, echo, exchange_raw, recorder, streamer},
    proxy::{Ingressd, free_port, get},
    wait as common,
};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");

fn service(name: &str, port: u16, endpoints: &[IpAddr]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect();
    let eps = if eps.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{eps}")
    };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: {port}}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:{eps}"
    )
}

const INGRESSES: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: ebpf}
spec: {controller: ingress-ebpf/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  ingressClassName: ebpf
  rules:
  - host: shop.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
      - {path: /cart, pathType: Prefix, backend: {service: {name: b, port: {name: http}}}}
  - host: "*.blog.test"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}
  - host: empty.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: none, port: {number: 80}}}}
"#;

/// Backends a (127.0.0.2) and b (127.0.0.3, 127.0.0.4) on one port.
async fn backends() -> (u16, String) {
    // The kernel picks the port (no race); a port bound on .2 is free on
    // .3 and .4 unless another test bound it there, which needs it on .2.
    let port = echo("a", SocketAddr::from(([127, 0, 0, 2], 0)))
        .await
        .port();
    echo("b1", SocketAddr::from(([127, 0, 0, 3], port))).await;
    echo("b2", SocketAddr::from(([127, 0, 0, 4], port))).await;
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let yaml = service("a", port, &[lo(2)])
        + &service("b", port, &[lo(3), lo(4)])
        + &service("none", port, &[])
        + INGRESSES;
    (port, yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_with_forwarding_headers() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    let (status, body) = get(d.http, "/", Some("shop.test")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("a path=/ host=shop.test xff=127.0.0.1 xfh=shop.test xfproto=http xrealip=127.0.0.1 rid="), "{body}");
    assert!(
        body.trim_end()
            .ends_with("via=1.1 ingressd version=HTTP/1.1 body=0"),
        "{body}"
    );
    let rid = body
        .split("rid=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(rid.len(), 32, "a request id is generated: {body}");
    // Prefix element-wise, host case and port ignored.
    assert!(
        get(d.http, "/cart/42", Some("SHOP.test:80"))
            .await
            .unwrap()
            .1
            .starts_with('b')
    );
    assert!(
        get(d.http, "/cartoon", Some("shop.test"))
            .await
            .unwrap()
            .1
            .starts_with("a ")
    );
    // Wildcard of exactly one label.
    assert!(
        get(d.http, "/x", Some("me.blog.test"))
            .await
            .unwrap()
            .1
            .starts_with('b')
    );
    assert_eq!(
        get(d.http, "/x", Some("a.me.blog.test")).await.unwrap().0,
        404
    );
    // Load balanced over both endpoints of b.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (_, body) = get(d.http, "/cart", Some("shop.test")).await.unwrap();
        seen.insert(body.split(' ').next().unwrap().to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["b1", "b2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_404_on_both_ports_and_503_without_endpoints() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    assert_eq!(
        get(d.http, "/", Some("unknown.test")).await.unwrap(),
        (404, "default backend - 404\n".into())
    );
    assert_eq!(
        get(d.default_backend, "/anything", None).await.unwrap(),
        (404, "default backend - 404\n".into())
    );
    assert_eq!(
        get(d.default_backend, "/healthz", None).await.unwrap().0,
        200
    );
    assert_eq!(get(d.http, "/", Some("empty.test")).await.unwrap().0, 503);
    let metrics = get(d.metrics, "/metrics", None).await.unwrap().1;
    assert!(metrics.contains("ingressd_http_requests_total{ingress=\"-\",service=\"default-backend\",status=\"404\",error=\"no_route\"} 1"), "{metrics}");
    assert!(metrics.contains("ingressd_http_requests_total{ingress=\"default/shop\",service=\"default/none:80\",status=\"503\",error=\"no_endpoints\"} 1"), "{metrics}");
    // Which build answers, as ingress-nginx's nginx_ingress_controller_build_info.
    let commit = String::from_utf8_lossy(
        &std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
            .output()
            .expect("git")
            .stdout,
    )
    .trim()
    .to_string();
    let build_info = format!(
        "ingressd_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build_info), "{build_info}\n{metrics}");
    // The 404 body ("default backend - 404\n") is 22 bytes.
    assert!(
        metrics.contains(
            "ingressd_http_response_bytes_total{ingress=\"-\",service=\"default-backend\"} 22"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_client() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    // One HTTP/2 connection to the proxy, requests for shop.test on it.
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // --max-headers (100) holds for HTTP/2 too: 431, the connection stays.
    let mut req = Request::get("http://shop.test/cart");
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 431);
    // Refused by the proxy, not by an endpoint that was sent them.
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"request header too large\n");
    for _ in 0..5 {
        let req = Request::get("http://shop.test/cart")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with('b') && body.contains("host=shop.test"),
            "{body}"
        );
        // HTTP/1.1 to the endpoint: the cookie fields joined on one line.
        assert!(body.contains(" cookie=a=1; b=2 "), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_retried_around_and_ejected() {
    let (port, yaml) = backends().await;
    // b also lists 127.0.0.9, where nothing listens.
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let yaml = yaml.replace(
        &service("b", port, &[lo(3), lo(4)]),
        &service("b", port, &[lo(3), lo(4), lo(9)]),
    );
    let d = Ingressd::start(BIN, &yaml).await;
    // A POST whose connect fails never left: it goes, body and all, to
    // another endpoint (as nginx's proxy_next_upstream error does).
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let failed_connects = |log: &str| log.matches("upstream request failed").count();
    for i in 0..60 {
        let req = Request::post(format!("http://{}/cart", d.http))
            .header("host", "shop.test")
            .body(Full::new(Bytes::from(vec![b'x'; 1000])))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
            .await
            .expect("POST timed out")
            .expect("POST");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "POST {i}: {body}");
        assert!(body.contains("body=1000"), "POST {i}: {body}");
        if failed_connects(&std::fs::read_to_string(&d.log).unwrap()) > 0 {
            break;
        }
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        failed_connects(&log) > 0,
        "no POST went to the dead endpoint: {log}"
    );
    for i in 0..60 {
        let (status, body) = get(d.http, "/cart", Some("shop.test")).await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("endpoint ejected"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_endpoint_changes_under_load_fail_no_request() {
    let (port, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let addr = d.http;
    let load = {
        let (stop, ok) = (stop.clone(), ok.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match get(addr, "/cart", Some("shop.test")).await {
                    Ok((200, _)) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        })
    };
    let wait_ok = |n: usize| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while ok.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ok.load(Ordering::Relaxed) >= n
        }
    };
    assert!(wait_ok(20).await);
    // Endpoint b2 goes, a new route appears, then b2 comes back: each a
    // table swap under the running load, each waited for by its effect.
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let without_b2 = yaml.replace(
        &service("b", port, &[lo(3), lo(4)]),
        &service("b", port, &[lo(3)]),
    );
    let with_basket = without_b2.replace(
        "/cart,",
        "/basket, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}\n      - {path: /cart,",
    );
    let first_word = |r: Result<(u16, String), String>| {
        r.ok()
            .and_then(|(_, b)| b.split(' ').next().map(str::to_owned))
    };
    d.update(&without_b2).await;
    for _ in 0..20 {
        assert_eq!(
            first_word(get(addr, "/cart", Some("shop.test")).await).as_deref(),
            Some("b1"),
            "b2 was removed"
        );
    }
    d.update(&with_basket).await;
    assert_eq!(
        first_word(get(addr, "/basket", Some("shop.test")).await).as_deref(),
        Some("a"),
        "new route"
    );
    d.update(&yaml).await;
    let mut back = false;
    for _ in 0..40 {
        if first_word(get(addr, "/cart", Some("shop.test")).await).as_deref() == Some("b2") {
            back = true;
            break;
        }
    }
    assert!(back, "b2 back in the rotation");
    let before = ok.load(Ordering::Relaxed);
    assert!(wait_ok(before + 20).await, "traffic stalled");
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
}

/// Accepts any server certificate and remembers it, so a test can see which
/// one the proxy chose.
#[derive(Debug)]
struct Recorder(
    std::sync::Mutex<Option<Vec<u8>>>,
    Arc<rustls::crypto::CryptoProvider>,
);

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` with SNI `sni` and ALPN `alpn`: the
/// certificate presented, the protocol agreed, and the stream.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> (
    Vec<u8>,
    Option<Vec<u8>>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder(std::sync::Mutex::new(None), provider.clone()));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let cert = recorder.0.lock().unwrap().clone().expect("a certificate");
    (cert, alpn, tls)
}

fn tls_manifests(cert_pem: &str, key_pem: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: secure-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: secure}}\nspec:\n  ingressClassName: ebpf\n\
         \x20 tls:\n  - {{hosts: [secure.test], secretName: secure-tls}}\n  rules:\n  - host: secure.test\n    http:\n      paths:\n\
         \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: plain-ok, annotations: {{nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}}}}\n\
         spec:\n  ingressClassName: ebpf\n  tls:\n  - {{hosts: [relaxed.test], secretName: secure-tls}}\n  rules:\n  - host: relaxed.test\n    http:\n      paths:\n\
         \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}\n",
        indent(cert_pem),
        indent(key_pem)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_with_default_certificate_http2_by_alpn_and_https_redirect() {
    let (_, yaml) = backends().await;
    let cert = rcgen::generate_simple_self_signed(vec![
        "secure.test".to_string(),
        "relaxed.test".to_string(),
    ])
    .unwrap();
    let d = Ingressd::start(
        BIN,
        &(yaml + &tls_manifests(&cert.cert.pem(), &cert.signing_key.serialize_pem())),
    )
    .await;
    let ours = cert.cert.der().to_vec();

    // SNI secure.test: its Secret's certificate, HTTP/1.1 over TLS.
    let (presented, alpn, tls) = tls_connect(d.https, "secure.test", &[b"http/1.1"]).await;
    assert_eq!(presented, ours);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/x")
        .header("host", "secure.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(
        body.starts_with("a ") && body.contains("xfproto=https"),
        "{body}"
    );

    // HTTP/2 by ALPN.
    let (_, alpn, tls) = tls_connect(d.https, "secure.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://secure.test/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (hyper::Version::HTTP_2, 200)
    );

    // An unknown SNI gets the default (self-signed) certificate.
    let (presented, _, _) = tls_connect(d.https, "other.test", &[b"http/1.1"]).await;
    assert_ne!(presented, ours);

    // Plain HTTP to a TLS host: 308 to HTTPS, unless the Ingress opts out.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/a/b?c=1", d.http))
        .header("host", "secure.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "https://secure.test/a/b?c=1");
    assert_eq!(get(d.http, "/", Some("relaxed.test")).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_are_passed_through() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/chat")
        .header("host", "shop.test")
        .header("connection", "Upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "echo");
    let io = hyper::upgrade::on(resp).await.expect("upgraded");
    let mut io = TokioIo::new(io);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for msg in [&b"ping"[..], b"a longer frame of bytes", b"x"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(buf, msg);
    }
}

/// A body of `chunks` × 64 KiB with no length: sent chunked.
struct Chunked {
    chunks: usize,
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.chunks == 0 {
            return std::task::Poll::Ready(None);
        }
        self.chunks -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(
            vec![b'x'; 64 * 1024],
        )))))
    }
}

/// A listener whose accept queue is full and never drained: the kernel
/// drops SYNs to it, so a connect there hangs until the connector gives
/// up. Returned with the connections that fill it (kept open).
async fn full_listener(ip: Ipv4Addr) -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filled = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => filled.push(s),
            Ok(Err(e)) => panic!("connect to the backlog listener: {e}"),
            // Hung: the queue is full.
            Err(_) => return (listener, filled),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_give_the_right_status() {
    let (port, yaml) = backends().await;
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let host_to = |name: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}}}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: {name}.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}\n"
        )
    };
    // "dead" has one endpoint where nothing listens; "hung" one that never
    // takes the connection.
    let (hung, _filled) = full_listener(Ipv4Addr::new(127, 0, 0, 11)).await;
    let hung = hung.local_addr().unwrap();
    let yaml = yaml
        + &service("dead", port, &[lo(9)])
        + &host_to("dead")
        + &service("hung", hung.port(), &[hung.ip()])
        + &host_to("hung");
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &[
            "--client-header-timeout",
            "1",
            "--client-body-timeout",
            "1",
            "--upstream-response-timeout",
            "1",
            "--max-body-size",
            "1m",
            "--max-headers",
            "50",
        ],
    )
    .await;
    let send = |req: Request<Full<Bytes>>| async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        client
            .request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    };
    let base = format!("http://{}", d.http);
    // 431: a 40 KiB header, and too many headers.
    let big = "v".repeat(40 * 1024);
    let req = Request::get(format!("{base}/"))
        .header("host", "shop.test")
        .header("x-big", big)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await, Ok(431));
    let mut req = Request::get(format!("{base}/")).header("host", "shop.test");
    for i in 0..80 {
        req = req.header(format!("x-h{i}"), "1");
    }
    assert_eq!(
        send(req.body(Full::new(Bytes::new())).unwrap()).await,
        Ok(431)
    );
    // 413: a declared 2 MiB body, and a chunked one that grows past 1 MiB.
    let req = Request::post(format!("{base}/"))
        .header("host", "shop.test")
        .body(Full::new(Bytes::from(vec![0u8; 2 << 20])))
        .unwrap();
    assert_eq!(send(req).await, Ok(413));
    let client: Client<_, Chunked> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{base}/"))
        .header("host", "shop.test")
        .body(Chunked { chunks: 32 })
        .unwrap();
    assert_eq!(
        client
            .request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string()),
        Ok(413)
    );
    // A small chunked body goes through.
    let req = Request::post(format!("{base}/"))
        .header("host", "shop.test")
        .body(Chunked { chunks: 2 })
        .unwrap();
    assert_eq!(
        client
            .request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string()),
        Ok(200)
    );
    // 504: the endpoint answers after 3 s, the limit is 1 s.
    let started = Instant::now();
    let req = Request::get(format!("{base}/slow"))
        .header("host", "shop.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await, Ok(504));
    assert!(started.elapsed() < Duration::from_millis(2500));
    // 502: nothing listens at the only endpoint.
    let errors = d
        .metric::<u64>("ingressd_upstream_connect_errors_total")
        .await
        .expect("connect error counter");
    assert_eq!(get(d.http, "/", Some("dead.test")).await.unwrap().0, 502);
    // Its log line carries the request's ID (the client's X-Request-ID,
    // kept as ingress-nginx keeps it, and passed on to the endpoint).
    let id = "0123456789abcdef0123456789abcdef";
    let mut raw = tokio::net::TcpStream::connect(d.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        format!(
            "GET / HTTP/1.1\r\nHost: dead.test\r\nX-Request-ID: {id}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let logged = testkit::lab::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("upstream request failed") && l.contains(&format!("request_id=\"{id}\""))
            })
    });
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    // 504: the only endpoint does not take the connection within
    // --upstream-connect-timeout (1 s here), as nginx answers it.
    let started = Instant::now();
    assert_eq!(get(d.http, "/", Some("hung.test")).await.unwrap().0, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(
        d.metric::<u64>("ingressd_upstream_connect_errors_total")
            .await
            .expect("connect error counter"),
        // dead.test twice, hung.test once.
        errors + 3
    );
    // 408: a request head that never ends (slowloris).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was left hanging");
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // 408: a body that stops coming (10 bytes announced, 3 sent).
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // And the proxy still serves.
    assert_eq!(get(d.http, "/", Some("shop.test")).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_and_a_silent_connection_takes_no_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, yaml) = backends().await;
    let d = Ingressd::start_with(BIN, &yaml, &["--max-connections", "2"]).await;
    let begun = async || {
        let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n")
            .await
            .unwrap();
        s
    };
    let answer = async |s: &mut tokio::net::TcpStream| {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    const WHOLE: &[u8] = b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    // Two connections with a request begun take both slots.
    let mut a = begun().await;
    let _b = begun().await;
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            d.metric::<i64>("ingressd_http_active_connections").await == Some(2)
        })
        .await,
        "two connections not taken in"
    );
    // A connection that has sent nothing waits in the kernel
    // (TCP_DEFER_ACCEPT), so it is not first in line for a slot: the one
    // after it that sent a whole request is.
    let mut silent = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(d.http).await.unwrap();
    c.write_all(WHOLE).await.unwrap();
    // No answer while both slots are taken.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte))
            .await
            .is_err(),
        "a third connection was served with --max-connections 2"
    );
    // Ending a's request frees its slot, which goes to c.
    a.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    assert!(answer(&mut a).await.starts_with("HTTP/1.1 200"));
    let got = answer(&mut c).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    // The silent connection is served once it speaks.
    silent.write_all(WHOLE).await.unwrap();
    let got = answer(&mut silent).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_their_keep_alive_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An endpoint that answers one request per connection it is given and
    // notes when the proxy closes that connection.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 6), 0))
        .await
        .unwrap();
    let ep = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let noted = closed.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        if let Ok(0) = s.read(&mut buf).await {
            noted.store(true, Ordering::Relaxed);
        }
    });
    let yaml = service("one", ep.port(), &[ep.ip()])
        + INGRESSES
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: one}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: one.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: one, port: {number: 80}}}}\n";
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &[
            "--keep-alive-timeout",
            "1",
            "--client-header-timeout",
            "10",
            "--upstream-keepalive-timeout",
            "1",
        ],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // The client connection, idle, is closed after about a second, without
    // a 408 (that would take the 10 s header timeout).
    let idle_since = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(idle_since.elapsed() >= Duration::from_millis(900));
    // The endpoint connection, idle in the pool, is closed too.
    assert!(
        common::eventually(Duration::from_secs(4), async || closed
            .load(Ordering::Relaxed))
        .await,
        "the idle endpoint connection was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_endpoints_when_the_service_port_says_so() {
    let (port, yaml) = backends().await;
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let grpc = service("grpc", port, &[lo(2)]).replace(
        "{name: http, port: 80, targetPort",
        "{name: http, port: 80, appProtocol: kubernetes.io/h2c, targetPort",
    );
    let yaml = yaml
        + &grpc
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: grpc}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: grpc.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: grpc, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    let (status, body) = get(d.http, "/pkg.Service/Method", Some("grpc.test"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("version=HTTP/2.0") && body.contains("host=grpc.test"),
        "{body}"
    );
    // The same endpoint without appProtocol is spoken to in HTTP/1.1.
    let (_, body) = get(d.http, "/", Some("shop.test")).await.unwrap();
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    // The fast server handed the HTTP/2 endpoint's request to hyper's:
    // counted once, as answered, not also as a client that left.
    let metrics = get(d.metrics, "/metrics", None).await.unwrap().1;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ingressd_http_requests_total{ingress=\"default/grpc\""))
        .collect();
    assert_eq!(
        counted,
        [
            "ingressd_http_requests_total{ingress=\"default/grpc\",service=\"default/grpc:80\",status=\"200\"} 1"
        ],
        "{metrics}"
    );
}

/// A gRPC-shaped h2c endpoint: echoes the request body, then trailers
/// `grpc-status: 0`; `grpc-status: 3` when the request lacks what gRPC
/// servers require (`te: trailers`, `content-type: application/grpc`).
async fn grpc_endpoint(ip: Ipv4Addr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let h = |n: &str| req.headers().get(n).cloned();
                let ok = h("te").is_some_and(|v| v == "trailers")
                    && h("content-type").is_some_and(|v| v == "application/grpc");
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let mut trailers = hyper::HeaderMap::new();
                let status = if ok && body.is_ok() { "0" } else { "3" };
                trailers.insert("grpc-status", status.parse().unwrap());
                let frames = vec![
                    Ok::<_, Infallible>(hyper::body::Frame::data(body.unwrap_or_default())),
                    Ok(hyper::body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                let mut resp = Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_proxy_with_its_trailers() {
    let ep = grpc_endpoint(Ipv4Addr::new(127, 0, 0, 5)).await;
    let yaml = service("grpc", ep.port(), &[ep.ip()]).replace(
        "{name: http, port: 80, targetPort",
        "{name: http, port: 80, appProtocol: kubernetes.io/h2c, targetPort",
    ) + INGRESSES
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: grpc}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: grpc.test\n    http:\n      paths:\n      - {path: /pkg.Echo, pathType: Prefix, backend: {service: {name: grpc, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    // A gRPC client: HTTP/2 (prior knowledge), a length-prefixed message.
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let message = Bytes::from_static(b"\0\0\0\0\x05hello");
    for _ in 0..3 {
        let req = Request::post("http://grpc.test/pkg.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .expect("an answer within 5 s")
            .expect("gRPC call");
        assert_eq!(resp.status(), 200);
        let all = resp.into_body().collect().await.expect("body and trailers");
        let trailers = all.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
        assert_eq!(all.to_bytes(), message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A WebSocket echo server as the endpoint of Service ws.
    let port = free_port(Ipv4Addr::new(127, 0, 0, 5));
    let listener = tokio::net::TcpListener::bind(("127.0.0.5", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    let yaml = service("ws", port, &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5))])
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: ws}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: ws.test\n    http:\n      paths:\n      - {path: /socket, pathType: Prefix, backend: {service: {name: ws, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/socket/chat", stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "a second message", "ünïcødé"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_service_is_resolved_with_dns() {
    // "localhost" resolves from /etc/hosts: no network needed.
    let port = free_port(Ipv4Addr::LOCALHOST);
    echo("external", SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
    let yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec:\n  type: ExternalName\n  externalName: localhost\n  ports: [{{port: {port}}}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ext}}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: ext.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: ext, port: {{number: {port}}}}}}}}}\n"
    );
    let d = Ingressd::start(BIN, &yaml).await;
    let (status, body) = get(d.http, "/", Some("ext.test")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("external "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_takes_no_new_connections() {
    let (_, yaml) = backends().await;
    let mut d = Ingressd::start(BIN, &yaml).await;
    let http = d.http;
    // /slow takes 3 s at the endpoint. SIGTERM once the endpoint has it:
    // a connection merely open (no request yet) is closed by the drain.
    let slow = tokio::spawn(async move { get(http, "/slow?sigterm", Some("shop.test")).await });
    assert!(
        common::eventually(Duration::from_secs(5), async || SLOW_ARRIVED
            .lock()
            .unwrap()
            .iter()
            .any(|q| q == "sigterm"))
        .await,
        "request never in flight"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(http).await.is_err()
        })
        .await,
        "still accepting after SIGTERM"
    );
    let (status, body) = slow.await.unwrap().expect("the request in flight");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path=/slow"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ingressd did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("proxy drained still_open=0"), "{log}");
}

/// One request: (status, Location header, body).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("timeout")
        .expect("request");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An Ingress for `host` → service a, with nginx.ingress.kubernetes.io/ annotations.
fn annotated(host: &str, notes: &[(&str, &str)], path: &str, kind: &str) -> String {
    let notes: String = notes
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {}\n  annotations:\n{notes}\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
         \x20     - {{path: \"{path}\", pathType: {kind}, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}\n",
        host.replace('.', "-")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_annotations_through_the_proxy() {
    let (_, yaml) = backends().await;
    let yaml =
        yaml + &annotated(
            "rw.test",
            &[("rewrite-target", "/$2"), ("use-regex", "true")],
            "/api(/|$)(.*)",
            "ImplementationSpecific",
        ) + &annotated(
            "deny.test",
            &[("allowlist-source-range", "198.18.0.0/15")],
            "/",
            "Prefix",
        ) + &annotated(
            "allow.test",
            &[("whitelist-source-range", "127.0.0.0/8")],
            "/",
            "Prefix",
        ) + &annotated(
            "moved.test",
            &[("permanent-redirect", "https://new.test$request_uri")],
            "/",
            "Prefix",
        ) + &annotated("root.test", &[("app-root", "/app")], "/", "Prefix")
            + &annotated(
                "vhost.test",
                &[("upstream-vhost", "internal.svc")],
                "/",
                "Prefix",
            )
            + &annotated("small.test", &[("proxy-body-size", "1k")], "/", "Prefix")
            + &annotated("quick.test", &[("proxy-read-timeout", "1")], "/", "Prefix")
            + &annotated(
                "force.test",
                &[("force-ssl-redirect", "true")],
                "/",
                "Prefix",
            )
            + &annotated(
                "denied.test",
                &[
                    ("denylist-source-range", "10.0.0.0/8, 127.0.0.0/8"),
                    ("allowlist-source-range", "0.0.0.0/0"),
                ],
                "/",
                "Prefix",
            )
            + &annotated(
                "undenied.test",
                &[("denylist-source-range", "10.0.0.0/8")],
                "/",
                "Prefix",
            )
            + &annotated(
                "temp.test",
                &[
                    ("temporal-redirect", "https://elsewhere.test/"),
                    ("temporal-redirect-code", "307"),
                ],
                "/",
                "Prefix",
            )
            + &annotated(
                "prefix.test",
                &[("x-forwarded-prefix", "/shop")],
                "/",
                "Prefix",
            )
            + &annotated(
                "quiet.test",
                &[("enable-access-log", "false")],
                "/",
                "Prefix",
            );
    let d = Ingressd::start(BIN, &yaml).await;
    let h = d.http;

    let (s, _, body) = send(h, "GET", "/api/users/7?x=1", "rw.test", vec![]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("path=/users/7 "), "{body}");
    let (s, _, body) = send(h, "GET", "/api", "rw.test", vec![]).await;
    assert!(s == 200 && body.contains("path=/ "), "{s} {body}");

    assert_eq!(send(h, "GET", "/", "deny.test", vec![]).await.0, 403);
    assert_eq!(send(h, "GET", "/", "allow.test", vec![]).await.0, 200);

    let (s, loc, _) = send(h, "GET", "/old", "moved.test", vec![]).await;
    assert_eq!((s, loc.as_deref()), (301, Some("https://new.test/old")));
    let (s, loc, _) = send(h, "GET", "/", "root.test", vec![]).await;
    assert_eq!((s, loc.as_deref()), (302, Some("/app")));
    let (s, _, body) = send(h, "GET", "/app", "root.test", vec![]).await;
    assert!(s == 200 && body.contains("path=/app "), "{s} {body}");

    let (_, _, body) = send(h, "GET", "/", "vhost.test", vec![]).await;
    assert!(
        body.contains("host=internal.svc ") && body.contains("xfh=vhost.test "),
        "{body}"
    );

    assert_eq!(
        send(h, "POST", "/", "small.test", vec![b'x'; 2048]).await.0,
        413
    );
    let (s, _, body) = send(h, "POST", "/", "small.test", vec![b'x'; 500]).await;
    assert!(s == 200 && body.contains("body=500"), "{s} {body}");
    // The default (--max-body-size 1m) still holds elsewhere.
    assert_eq!(
        send(h, "POST", "/", "allow.test", vec![b'x'; 2048]).await.0,
        200
    );

    // /slow answers after 3 s: past this Ingress's 1 s read timeout.
    let started = Instant::now();
    assert_eq!(send(h, "GET", "/slow", "quick.test", vec![]).await.0, 504);
    assert!(started.elapsed() < Duration::from_millis(2500));

    let (s, loc, _) = send(h, "GET", "/x", "force.test", vec![]).await;
    assert_eq!((s, loc.as_deref()), (308, Some("https://force.test/x")));

    // A deny line wins over an allow line that takes everyone.
    assert_eq!(send(h, "GET", "/", "denied.test", vec![]).await.0, 403);
    assert_eq!(send(h, "GET", "/", "undenied.test", vec![]).await.0, 200);

    let (s, loc, _) = send(h, "GET", "/", "temp.test", vec![]).await;
    assert_eq!((s, loc.as_deref()), (307, Some("https://elsewhere.test/")));

    // Set for this Ingress only; a client's own goes nowhere.
    let (_, _, body) = send(h, "GET", "/", "prefix.test", vec![]).await;
    assert!(body.contains("xfprefix=/shop "), "{body}");
    let (_, _, body) = send(h, "GET", "/", "allow.test", vec![]).await;
    assert!(body.contains("xfprefix=- "), "{body}");

    // Counted, not logged: the next request's line comes, this one's never.
    assert_eq!(
        send(h, "GET", "/unlogged", "quiet.test", vec![]).await.0,
        200
    );
    assert_eq!(send(h, "GET", "/logged", "allow.test", vec![]).await.0, 200);
    let log = || std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        common::eventually(Duration::from_secs(5), async || log()
            .contains("GET /logged "))
        .await,
        "the access log never came"
    );
    assert!(!log().contains("/unlogged"), "{}", log());
}

/// One request with an `Origin`, over HTTP/1.1 or HTTP/2 (prior
/// knowledge, the host in `:authority`): (status, headers, body).
async fn with_origin(
    addr: SocketAddr,
    h2: bool,
    method: &str,
    host: &str,
    origin: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    request_with(addr, h2, method, host, &headers).await
}

/// `method /x` to `host` over HTTP/1.1 (the fast path takes a GET) or
/// HTTP/2 (hyper's server), with these header lines.
async fn request_with(
    addr: SocketAddr,
    h2: bool,
    method: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let mut req = if h2 {
        Request::builder().uri(format!("http://{host}/x"))
    } else {
        Request::builder().uri("/x").header("host", host)
    }
    .method(method);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let sent = async {
        if h2 {
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(c);
            s.send_request(req).await
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            tokio::spawn(c);
            s.send_request(req).await
        }
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("timeout")
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_answered_as_ingress_nginx_answers_it() {
    let (_, yaml) = backends().await;
    let yaml = yaml
        + &annotated("any.test", &[("enable-cors", "true")], "/", "Prefix")
        + &annotated(
            "list.test",
            &[
                ("enable-cors", "true"),
                (
                    "cors-allow-origin",
                    "https://app.test, https://*.shop.test:8443",
                ),
                ("cors-allow-credentials", "false"),
                ("cors-allow-methods", "GET, POST"),
                ("cors-expose-headers", "X-Total"),
                ("cors-max-age", "600"),
            ],
            "/",
            "Prefix",
        )
        + &annotated("plain.test", &[], "/", "Prefix");
    let d = Ingressd::start(BIN, &yaml).await;
    let h = d.http;
    let get = |m: &hyper::HeaderMap, n: &str| {
        m.get(n)
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    };
    for h2 in [false, true] {
        // `*` (the default): every answer carries the headers, a preflight
        // is answered here.
        let (s, m, body) = with_origin(h, h2, "GET", "any.test", Some("https://x.test")).await;
        assert!(s == 200 && body.starts_with("a path=/x "), "{s} {body}");
        assert_eq!(get(&m, "access-control-allow-origin"), "*");
        assert_eq!(get(&m, "access-control-allow-credentials"), "true");
        assert_eq!(
            get(&m, "access-control-allow-methods"),
            "GET, PUT, POST, DELETE, PATCH, OPTIONS"
        );
        assert!(get(&m, "access-control-allow-headers").contains("Authorization"));
        assert_eq!(get(&m, "access-control-max-age"), "1728000");
        let (s, m, body) = with_origin(h, h2, "OPTIONS", "any.test", None).await;
        assert_eq!((s, body.as_str()), (204, ""), "h2={h2}");
        assert_eq!(get(&m, "access-control-allow-origin"), "*");

        // A list: only a listed origin, echoed back; others pass untouched.
        let (s, m, _) = with_origin(h, h2, "GET", "list.test", Some("https://app.test")).await;
        assert_eq!(s, 200);
        assert_eq!(get(&m, "access-control-allow-origin"), "https://app.test");
        assert_eq!(get(&m, "access-control-allow-credentials"), "");
        assert_eq!(get(&m, "access-control-expose-headers"), "X-Total");
        assert_eq!(get(&m, "access-control-max-age"), "600");
        assert_eq!(get(&m, "vary"), "Origin");
        let origin = "https://a-1.shop.test:8443";
        let (s, m, body) = with_origin(h, h2, "OPTIONS", "list.test", Some(origin)).await;
        assert_eq!((s, body.as_str()), (204, ""), "h2={h2}");
        assert_eq!(get(&m, "access-control-allow-origin"), origin);
        assert_eq!(get(&m, "access-control-allow-methods"), "GET, POST");
        for other in [
            "https://evil.test",
            "https://app.test.evil.test",
            "http://app.test",
        ] {
            let (s, m, body) = with_origin(h, h2, "OPTIONS", "list.test", Some(other)).await;
            // Not a preflight of ours: the endpoint answers it.
            assert!(
                s == 200 && body.starts_with("a path=/x "),
                "{other}: {s} {body}"
            );
            assert_eq!(get(&m, "access-control-allow-origin"), "", "{other}");
        }
        let (_, m, _) = with_origin(h, h2, "GET", "plain.test", Some("https://x.test")).await;
        assert_eq!(get(&m, "access-control-allow-origin"), "", "no CORS asked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_takes_requests_by_header_then_cookie_then_weight() {
    let (port, yaml) = backends().await;
    echo("c", SocketAddr::from(([127, 0, 0, 12], port))).await;
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    let canary = |name: &str, host: &str, svc: &str, notes: &[(&str, &str)]| {
        let notes: String = notes
            .iter()
            .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
            .collect();
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  annotations:\n    nginx.ingress.kubernetes.io/canary: \"true\"\n{notes}\
             spec:\n  ingressClassName: ebpf\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
        )
    };
    let yaml = yaml
        + &service("c", port, &[lo(12)])
        // The main Ingress's annotations apply to the canary's requests;
        // the canary's own (x-forwarded-prefix /canary) do not.
        + &annotated("split.test", &[("x-forwarded-prefix", "/main")], "/", "Prefix")
        + &canary(
            "split-canary",
            "split.test",
            "c",
            &[
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "beta"),
                ("canary-weight", "20"),
                ("x-forwarded-prefix", "/canary"),
            ],
        )
        + &annotated("region.test", &[], "/", "Prefix")
        + &canary(
            "region-canary",
            "region.test",
            "c",
            &[("canary-by-header", "X-Region"), ("canary-by-header-pattern", "^eu-")],
        )
        // A canary without endpoints takes nothing, whatever its weight.
        + &annotated("empty.test", &[], "/", "Prefix")
        + &canary("empty-canary", "empty.test", "none", &[("canary-weight", "100")])
        // Nothing to be the canary of: ignored, and said so.
        + &canary("orphan-canary", "orphan.test", "c", &[("canary-weight", "100")]);
    let d = Ingressd::start(BIN, &yaml).await;
    let served_by = |body: &str| body.split(' ').next().unwrap_or("").to_string();
    for h2 in [false, true] {
        let ask = async |host: &str, headers: &[(&str, &str)]| {
            let (s, _, body) = request_with(d.http, h2, "GET", host, headers).await;
            assert_eq!(s, 200, "h2={h2} {host} {headers:?}: {body}");
            body
        };
        for (headers, want) in [
            (&[("x-canary", "always")][..], "c"),
            (&[("x-canary", "always"), ("cookie", "beta=never")][..], "c"),
            (&[("x-canary", "never"), ("cookie", "beta=always")][..], "a"),
            (
                &[("x-canary", "perhaps"), ("cookie", "x=1; beta=always")][..],
                "c",
            ),
            (&[("cookie", "beta=never")][..], "a"),
        ] {
            for _ in 0..10 {
                let body = ask("split.test", headers).await;
                assert_eq!(served_by(&body), want, "h2={h2} {headers:?}: {body}");
                assert!(body.contains(" xfprefix=/main "), "{body}");
            }
        }
        // The weight: 20 of 100 of the requests nothing else decides.
        let mut to_canary = 0;
        for _ in 0..400 {
            if served_by(&ask("split.test", &[]).await) == "c" {
                to_canary += 1;
            }
        }
        assert!(
            (40..=120).contains(&to_canary),
            "h2={h2}: {to_canary} of 400 at weight 20"
        );
        for (value, want) in [("eu-west-1", "c"), ("us-east-1", "a"), ("always", "a")] {
            let body = ask("region.test", &[("x-region", value)]).await;
            assert_eq!(served_by(&body), want, "h2={h2} x-region {value}: {body}");
        }
        for _ in 0..20 {
            assert_eq!(served_by(&ask("empty.test", &[]).await), "a", "h2={h2}");
        }
        let (s, _, _) = request_with(d.http, h2, "GET", "orphan.test", &[]).await;
        assert_eq!(s, 404, "h2={h2}: a canary alone routes nothing");
    }
    // Counted under the main Ingress with the canary's service, and
    // logged with it as the alternative upstream.
    let (_, metrics) = get(d.metrics, "/metrics", None).await.unwrap();
    assert!(
        metrics.contains("ingressd_http_requests_total{ingress=\"default/split-test\",service=\"default/c:80\",status=\"200\"}"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("[default-a-80] [default-c-80]"), "{log}");
    assert!(
        log.contains("Ingress default/orphan-canary")
            && log.contains("nothing to be the canary of"),
        "{log}"
    );
    assert!(
        log.contains("x-forwarded-prefix ignored on a canary Ingress"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_a_client_on_its_endpoint() {
    let (port, yaml) = backends().await;
    echo("c", SocketAddr::from(([127, 0, 0, 12], port))).await;
    let lo = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
    // Service b has two endpoints (b1, b2).
    let to_b = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: b, port")
    };
    let yaml = yaml
        + &service("c", port, &[lo(12)])
        + &to_b(
            "sticky.test",
            &[
                ("affinity", "cookie"),
                ("session-cookie-name", "route"),
                ("session-cookie-max-age", "60"),
                ("session-cookie-samesite", "Lax"),
            ],
        )
        + &to_b(
            "persist.test",
            &[("affinity", "cookie"), ("affinity-mode", "persistent")],
        )
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: persist-canary\n  annotations:\n\
           \x20   nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/canary-weight: \"50\"\n\
           spec:\n  ingressClassName: ebpf\n  rules:\n  - host: persist.test\n    http:\n      paths:\n\
           \x20     - {path: /, pathType: Prefix, backend: {service: {name: c, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    let served_by = |body: &str| body.split(' ').next().unwrap_or("").to_string();
    for h2 in [false, true] {
        for (host, name) in [("sticky.test", "route"), ("persist.test", "INGRESSCOOKIE")] {
            let mut seen = std::collections::BTreeSet::new();
            for session in 0..40 {
                // A new session: the cookie is set with its attributes.
                let (s, m, body) = request_with(d.http, h2, "GET", host, &[]).await;
                assert_eq!(s, 200, "{body}");
                let set = m
                    .get("set-cookie")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("h2={h2} {host}: no Set-Cookie: {m:?}"))
                    .to_string();
                assert!(set.starts_with(&format!("{name}=")), "{set}");
                assert!(
                    set.contains("; Path=/") && set.contains("; HttpOnly"),
                    "{set}"
                );
                if host == "sticky.test" {
                    assert!(
                        set.contains("; Max-Age=60") && set.ends_with("; SameSite=Lax"),
                        "{set}"
                    );
                }
                let first = served_by(&body);
                seen.insert(first.clone());
                // The cookie brings it back to the same endpoint (and the
                // same side of a canary), and is not set again.
                let cookie = set.split(';').next().unwrap().to_string();
                for _ in 0..8 {
                    let (s, m, body) =
                        request_with(d.http, h2, "GET", host, &[("cookie", &cookie)]).await;
                    assert_eq!(s, 200);
                    assert_eq!(served_by(&body), first, "h2={h2} {host} session {session}");
                    assert!(m.get("set-cookie").is_none(), "set again: {m:?}");
                }
            }
            let want: &[&str] = if host == "persist.test" {
                &["b1", "b2", "c"]
            } else {
                &["b1", "b2"]
            };
            assert_eq!(
                seen.iter().map(String::as_str).collect::<Vec<_>>(),
                want,
                "h2={h2} {host}: sessions spread"
            );
        }
    }
    // A cookie naming no endpoint starts a new session.
    let (_, m, _) = request_with(
        d.http,
        false,
        "GET",
        "persist.test",
        &[("cookie", "INGRESSCOOKIE=0|0")],
    )
    .await;
    assert!(m.get("set-cookie").is_some(), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_connection_limits_per_client_as_ingress_nginx() {
    let (_, yaml) = backends().await;
    let yaml = yaml
        + &annotated("rps.test", &[("limit-rps", "1")], "/", "Prefix")
        + &annotated("rps2.test", &[("limit-rps", "1")], "/", "Prefix")
        + &annotated(
            "exempt.test",
            &[("limit-rps", "1"), ("limit-allowlist", "127.0.0.0/8")],
            "/",
            "Prefix",
        )
        + &annotated("conn.test", &[("limit-connections", "1")], "/", "Prefix");
    let d = Ingressd::start_with(BIN, &yaml, &["--limit-req-status-code", "429"]).await;
    for h2 in [false, true] {
        // Burst 5 (1 × the default multiplier 5) and the first: 6 at once,
        // then 429 (the flag; 503 by default). A second passes each second.
        // (Each protocol has an Ingress of its own: its own bucket.)
        let host = if h2 { "rps2.test" } else { "rps.test" };
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(request_with(d.http, h2, "GET", host, &[]).await.0);
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        assert!((6..=7).contains(&ok), "h2={h2}: {statuses:?}");
        assert_eq!(statuses.last(), Some(&429), "h2={h2}: {statuses:?}");
        // The allowlist is never limited.
        for _ in 0..20 {
            assert_eq!(
                request_with(d.http, h2, "GET", "exempt.test", &[]).await.0,
                200
            );
        }
    }
    // One request in flight per client: a second one at the same time is
    // refused with 503 (the default of --limit-conn-status-code); once
    // the first is answered, the next passes.
    let slow = tokio::spawn(send(d.http, "GET", "/slow?conn", "conn.test", vec![]));
    let arrived = common::eventually(Duration::from_secs(5), async || {
        SLOW_ARRIVED.lock().unwrap().iter().any(|q| q == "conn")
    })
    .await;
    assert!(arrived, "the slow request never reached the endpoint");
    let (s, _, body) = request_with(d.http, false, "GET", "conn.test", &[]).await;
    assert_eq!((s, body.as_str()), (503, "too many requests\n"));
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(
        request_with(d.http, false, "GET", "conn.test", &[]).await.0,
        200
    );
    let (_, metrics) = get(d.metrics, "/metrics", None).await.unwrap();
    assert!(
        metrics.contains("service=\"default/a:80\",status=\"429\",error=\"rate_limited\"}")
            && metrics.contains("status=\"503\",error=\"connection_limited\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_aliases_and_www_redirects_as_ingress_nginx_adds_them() {
    let (_, yaml) = backends().await;
    let yaml =
        yaml + &annotated(
            "alias.test",
            &[("server-alias", "alias2.test, *.alias3.test, shop.test")],
            "/",
            "Prefix",
        ) + &annotated(
            "www.home.test",
            &[("from-to-www-redirect", "true")],
            "/",
            "Prefix",
        ) + &annotated(
            "bare.test",
            &[("from-to-www-redirect", "true")],
            "/",
            "Prefix",
        );
    let d = Ingressd::start(BIN, &yaml).await;
    for h2 in [false, true] {
        for host in ["alias.test", "alias2.test", "x.alias3.test"] {
            let (s, _, body) = request_with(d.http, h2, "GET", host, &[]).await;
            assert!(
                s == 200 && body.starts_with("a path=/x "),
                "h2={h2} {host}: {s} {body}"
            );
        }
        // shop.test has rules of its own: the alias leaves it to them.
        let (s, _, body) = request_with(d.http, h2, "GET", "shop.test", &[]).await;
        assert!(s == 200 && body.starts_with("a path=/x "), "{body}");
        let (_, _, body) = send(d.http, "GET", "/cart", "shop.test", vec![]).await;
        assert!(body.starts_with("b"), "{body}");
        for (from, to) in [
            ("home.test", "www.home.test"),
            ("www.bare.test", "bare.test"),
        ] {
            let (s, m, _) = request_with(d.http, h2, "GET", from, &[]).await;
            assert_eq!(s, 308, "h2={h2} {from}");
            assert_eq!(m.get("location").unwrap(), &format!("http://{to}/x"));
        }
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("\"shop.test\" has rules of its own; left to them"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_upstream_sends_to_the_cluster_ip() {
    let (port, yaml) = backends().await;
    // The Service's cluster IP answers as "vip", its endpoint as "a".
    echo("vip", SocketAddr::from(([127, 0, 0, 15], port))).await;
    let vip = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: vip}}\nspec:\n  clusterIP: 127.0.0.15\n  ports: [{{port: {port}, targetPort: {port}}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: vip-1, labels: {{kubernetes.io/service-name: vip}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.2\"]}}]\n"
    );
    let to_vip = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace(
            "name: a, port: {number: 80}",
            &format!("name: vip, port: {{number: {port}}}"),
        )
    };
    let yaml = yaml
        + &vip
        + &to_vip("endpoints.test", &[])
        + &to_vip("cluster-ip.test", &[("service-upstream", "true")]);
    let d = Ingressd::start(BIN, &yaml).await;
    for (host, want) in [("endpoints.test", "a"), ("cluster-ip.test", "vip")] {
        let (s, _, body) = request_with(d.http, false, "GET", host, &[]).await;
        assert_eq!(s, 200, "{host}: {body}");
        assert_eq!(body.split(' ').next(), Some(want), "{host}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_keeps_a_key_on_one_endpoint() {
    let (_, yaml) = backends().await;
    let yaml = yaml
        + &annotated(
            "hash.test",
            &[("upstream-hash-by", "$http_x_user")],
            "/",
            "Prefix",
        )
        .replace("name: a, port", "name: b, port");
    let d = Ingressd::start(BIN, &yaml).await;
    let mut used = std::collections::BTreeSet::new();
    for h2 in [false, true] {
        for user in 0..16 {
            let u = format!("user-{user}");
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..5 {
                let (s, _, body) =
                    request_with(d.http, h2, "GET", "hash.test", &[("x-user", &u)]).await;
                assert_eq!(s, 200);
                seen.insert(body.split(' ').next().unwrap_or("").to_string());
            }
            assert_eq!(seen.len(), 1, "h2={h2} {u}: {seen:?}");
            used.extend(seen);
        }
    }
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["b1", "b2"]);
}

/// An HTTPS endpoint (HTTP/1.1 and HTTP/2 by ALPN) with a certificate for
/// `name` (names, comma-separated) signed by `ca`, answering what it saw of the TLS connection:
/// `tls sni=… alpn=… client-cert=yes|no version=…`. Client certificates
/// signed by `ca` are taken, not required.
async fn https_endpoint(
    ip: Ipv4Addr,
    name: &str,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> SocketAddr {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = name.split(',').map(str::to_string).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the client gives up on is no test failure.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let seen = format!(
                    "sni={} alpn={} client-cert={}",
                    conn.server_name().unwrap_or("-"),
                    conn.alpn_protocol()
                        .map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned()),
                    if conn.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                );
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = format!(
                        "tls {seen} version={:?} path={}\n",
                        req.version(),
                        req.uri().path()
                    );
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpcs_endpoints_with_ingress_nginx_proxy_ssl_settings() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let ep = https_endpoint(Ipv4Addr::new(127, 0, 0, 13), "secure-up.default.svc", &ca).await;
    // The client certificate ingressd shows the endpoint.
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["ingressd".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: up-ca}}\nstringData:\n  ca.crt: |\n{}  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&ca.pem()),
        indent(&client.pem()),
        indent(&client_key.serialize_pem())
    );
    let to_secure = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: secure-up, port")
    };
    let yaml = service("secure-up", ep.port(), &[ep.ip()])
        + &secret
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        // nginx's defaults: not verified, no SNI.
        + &to_secure("plain.test", &[("backend-protocol", "HTTPS")])
        + &to_secure(
            "verified.test",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/up-ca"),
                ("proxy-ssl-server-name", "on"),
            ],
        )
        + &to_secure(
            "grpcs.test",
            &[
                ("backend-protocol", "GRPCS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/up-ca"),
            ],
        )
        // The certificate is not for this name: refused, 502.
        + &to_secure(
            "wrong-name.test",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/up-ca"),
                ("proxy-ssl-name", "other.example"),
            ],
        )
        // Another namespace's Secret is refused, not read.
        + &to_secure(
            "foreign.test",
            &[("backend-protocol", "HTTPS"), ("proxy-ssl-secret", "other/up-ca")],
        )
        + &to_secure(
            "no-ca.test",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/missing"),
            ],
        );
    let d = Ingressd::start(BIN, &yaml).await;
    for h2 in [false, true] {
        let ask = async |host: &str| {
            let (s, _, body) = request_with(d.http, h2, "GET", host, &[]).await;
            (s, body)
        };
        let (s, body) = ask("plain.test").await;
        assert_eq!(s, 200, "h2={h2}: {body}");
        assert!(
            body.starts_with("tls sni=- alpn=http/1.1 client-cert=no version=HTTP/1.1 path=/x"),
            "h2={h2}: {body}"
        );
        let (s, body) = ask("verified.test").await;
        assert_eq!(s, 200, "h2={h2}: {body}");
        assert!(
            body.starts_with("tls sni=secure-up.default.svc alpn=http/1.1 client-cert=yes"),
            "h2={h2}: {body}"
        );
        let (s, body) = ask("grpcs.test").await;
        assert_eq!(s, 200, "h2={h2}: {body}");
        assert!(
            body.starts_with("tls sni=- alpn=h2 client-cert=yes version=HTTP/2.0"),
            "h2={h2}: {body}"
        );
        assert_eq!(ask("wrong-name.test").await.0, 502, "h2={h2}");
        assert_eq!(ask("no-ca.test").await.0, 502, "h2={h2}");
        assert_eq!(ask("foreign.test").await.0, 502, "h2={h2}");
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("TLS to default/secure-up: proxy-ssl-secret default/missing not found")
            && log
                .contains("proxy-ssl-secret other/up-ca is not in the Ingress's namespace default"),
        "{log}"
    );
}

/// A server on `ip` answering with `answer(request head)`, the heads it
/// saw kept in `seen` as "METHOD target header=value…" lines.
async fn scripted_http(
    ip: Ipv4Addr,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    answer: fn(&Request<Incoming>) -> Response<Full<Bytes>>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    scripted_on(listener, seen, answer)
}

/// `scripted_http` on a listener of the caller's.
fn scripted_on(
    listener: tokio::net::TcpListener,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    answer: fn(&Request<Incoming>) -> Response<Full<Bytes>>,
) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let mut line = format!("{} {}", req.method(), req.uri());
                        for (n, v) in req.headers() {
                            line.push_str(&format!(" {n}={}", v.to_str().unwrap_or("?")));
                        }
                        let resp = answer(&req);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        line.push_str(&format!(" body={}", body.unwrap_or(0)));
                        seen.lock().unwrap().push(line);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_asks_before_each_request_as_auth_request_does() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let auth = scripted_http(Ipv4Addr::new(127, 0, 0, 14), asked.clone(), |req| {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let mut r = Response::new(Full::new(Bytes::from_static(b"auth body")));
        match token {
            Some("Bearer good") => {
                r.headers_mut()
                    .insert("x-auth-request-user", "alice".parse().unwrap());
            }
            Some("Bearer forbidden") => *r.status_mut() = hyper::StatusCode::FORBIDDEN,
            Some("Bearer broken") => *r.status_mut() = hyper::StatusCode::BAD_GATEWAY,
            _ => {
                *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                r.headers_mut()
                    .insert("www-authenticate", "Bearer realm=\"test\"".parse().unwrap());
            }
        }
        r
    })
    .await;
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = scripted_http(Ipv4Addr::new(127, 0, 0, 14), served.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"app\n")))
    })
    .await;
    let closed = free_port(Ipv4Addr::new(127, 0, 0, 14));
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    let url = format!("http://{auth}/check?uri=$escaped_request_uri");
    let yaml = service("app", app.port(), &[app.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to_app(
            "auth.test",
            &[
                ("auth-url", &url),
                ("auth-response-headers", "X-Auth-Request-User"),
            ],
        )
        + &to_app(
            "signin.test",
            &[
                ("auth-url", &url),
                ("auth-signin", "https://login.test/start"),
            ],
        )
        + &to_app(
            "down.test",
            &[("auth-url", &format!("http://127.0.0.14:{closed}/check"))],
        )
        + &to_app("bad.test", &[("auth-url", "http://$request_body/")]);
    let d = Ingressd::start(BIN, &yaml).await;
    for h2 in [false, true] {
        let ask = async |host: &str, headers: &[(&str, &str)]| {
            let (s, m, body) = request_with(d.http, h2, "GET", host, headers).await;
            (s, m, body)
        };
        // No token: the auth service's 401, with its challenge.
        let (s, m, _) = ask("auth.test", &[]).await;
        assert_eq!(s, 401, "h2={h2}");
        assert_eq!(m.get("www-authenticate").unwrap(), "Bearer realm=\"test\"");
        // A good one: through, with the user the auth service named in
        // place of the one the client claimed.
        served.lock().unwrap().clear();
        let (s, _, body) = ask(
            "auth.test",
            &[
                ("authorization", "Bearer good"),
                ("x-auth-request-user", "mallory"),
            ],
        )
        .await;
        assert_eq!((s, body.as_str()), (200, "app\n"), "h2={h2}");
        let line = served.lock().unwrap().pop().unwrap();
        assert!(line.contains(" x-auth-request-user=alice "), "{line}");
        assert!(!line.contains("mallory"), "{line}");
        // What the auth service was asked: GET, the original request's
        // headers and nginx's X-Original-*, no body.
        let line = asked.lock().unwrap().last().unwrap().clone();
        assert!(line.starts_with("GET /check?uri=%2Fx "), "{line}");
        for want in [
            " authorization=Bearer good ",
            " x-original-uri=/x ",
            " x-original-method=GET ",
            " x-original-url=http://auth.test/x ",
            " x-auth-request-redirect=/x ",
            " x-sent-from=nginx-ingress-controller ",
            " body=0",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert_eq!(
            ask("auth.test", &[("authorization", "Bearer forbidden")])
                .await
                .0,
            403
        );
        // Another answer, or no auth service at all: 500, never through.
        assert_eq!(
            ask("auth.test", &[("authorization", "Bearer broken")])
                .await
                .0,
            500
        );
        assert_eq!(
            ask("down.test", &[("authorization", "Bearer good")])
                .await
                .0,
            500
        );
        assert_eq!(
            ask("bad.test", &[("authorization", "Bearer good")]).await.0,
            500
        );
        // With auth-signin a 401 is a redirect carrying where to come back.
        let (s, m, _) = ask("signin.test", &[]).await;
        assert_eq!(s, 302, "h2={h2}");
        assert_eq!(
            m.get("location").unwrap(),
            "https://login.test/start?rd=http%3A%2F%2Fsignin.test%2Fx"
        );
    }
    // Without a token a POST is refused before its body goes anywhere.
    let before = served.lock().unwrap().len();
    let (s, _, _) = send(d.http, "POST", "/x", "auth.test", b"12345".to_vec()).await;
    assert_eq!(s, 401);
    assert_eq!(served.lock().unwrap().len(), before);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("$request_body is not a variable ingressd fills in"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_digest_auth_from_a_secret_as_ingress_nginx() {
    use base64::Engine as _;
    use md5::{Digest as _, Md5};
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = scripted_http(Ipv4Addr::new(127, 0, 0, 15), served.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"app\n")))
    })
    .await;
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    // Written by openssl passwd -apr1 / -6 and sha1 | base64, as users
    // make them; erin's is htdigest's md5("erin:Staff only:erin-pw").
    let htpasswd = "# staff\n\
        alice:$apr1$Xy12ab34$AtH7TmRfGH4.W/tDnHFB70\n\
        bob:$6$tEsTsAlT$POQ9BFX4n.ZNzsBtnZJkNR2ZecB0vOEkSzWeBGPDc6QPLNl9co6qtxo8kXcfliHmE76pQAb3YjXym.qLrsmmB0\n\
        mallory:$y$j9T$notsupported$abc\n";
    let secret = |name: &str, data: &[(&str, &str)]| {
        let data: String = data
            .iter()
            .map(|(k, v)| {
                format!(
                    "  {k}: |\n{}",
                    v.lines().map(|l| format!("    {l}\n")).collect::<String>()
                )
            })
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n{data}"
        )
    };
    let staff = [
        ("auth-type", "basic"),
        ("auth-secret", "staff"),
        ("auth-realm", "Staff only"),
    ];
    let yaml = service("app", app.port(), &[app.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &secret("staff", &[("auth", htpasswd)])
        + &secret(
            "staff-map",
            &[("carol", "{SHA}hsAaMBat8aKiQgxhKhAqvbXOPbw=")],
        )
        + &secret(
            "staff-digest",
            &[("auth", "erin:Staff only:646dc8498ebfcce824d756b52b9945c2")],
        )
        + &to_app("basic.test", &staff)
        + &to_app(
            "map.test",
            &[
                ("auth-type", "basic"),
                ("auth-secret", "staff-map"),
                ("auth-secret-type", "auth-map"),
            ],
        )
        + &to_app(
            "digest.test",
            &[
                ("auth-type", "digest"),
                ("auth-secret", "staff-digest"),
                ("auth-realm", "Staff only"),
            ],
        )
        + &to_app(
            "missing.test",
            &[("auth-type", "basic"), ("auth-secret", "nobody")],
        )
        + &to_app(
            "typo.test",
            &[("auth-type", "basci"), ("auth-secret", "staff")],
        );
    let d = Ingressd::start(BIN, &yaml).await;
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let md5 = |s: &str| -> String {
        Md5::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for h2 in [false, true] {
        let ask = async |host: &str, headers: &[(&str, &str)]| {
            request_with(d.http, h2, "GET", host, headers).await
        };
        served.lock().unwrap().clear();
        // No credentials, wrong ones, an unknown user, a user whose hash
        // cannot be checked: 401 with the realm, and nothing goes on.
        let (s, m, _) = ask("basic.test", &[]).await;
        assert_eq!(s, 401, "h2={h2}");
        assert_eq!(
            m.get("www-authenticate").unwrap(),
            "Basic realm=\"Staff only\""
        );
        for (user, password) in [
            ("alice", "wrong"),
            ("zed", "x"),
            ("mallory", "x"),
            ("bob", ""),
        ] {
            let auth = basic(user, password);
            let (s, _, _) = ask("basic.test", &[("authorization", &auth)]).await;
            assert_eq!(s, 401, "{user}:{password} h2={h2}");
        }
        assert!(served.lock().unwrap().is_empty());
        // apr1 and SHA-512-crypt (the slow kind, twice: checked, then
        // remembered), the Authorization header sent on as nginx does.
        for (user, password) in [
            ("alice", "dave-pw"),
            ("bob", "b0b-secret"),
            ("bob", "b0b-secret"),
        ] {
            let auth = basic(user, password);
            let (s, _, body) = ask("basic.test", &[("authorization", &auth)]).await;
            assert_eq!((s, body.as_str()), (200, "app\n"), "{user} h2={h2}");
            let line = served.lock().unwrap().pop().unwrap();
            assert!(line.contains(&format!(" authorization={auth} ")), "{line}");
        }
        // auth-map: a key per user.
        let carol = basic("carol", "carol-pw");
        assert_eq!(ask("map.test", &[("authorization", &carol)]).await.0, 200);
        assert_eq!(ask("basic.test", &[("authorization", &carol)]).await.0, 401);
        // A Secret that is missing, an auth-type misspelt: denied (503),
        // never open.
        let alice = basic("alice", "dave-pw");
        for host in ["missing.test", "typo.test"] {
            assert_eq!(
                ask(host, &[("authorization", &alice)]).await.0,
                503,
                "{host}"
            );
        }
        // Digest: the challenge's nonce, signed over method and URI.
        let (s, m, _) = ask("digest.test", &[]).await;
        assert_eq!(s, 401, "h2={h2}");
        let challenge = m
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Digest ") && challenge.contains("realm=\"Staff only\""),
            "{challenge}"
        );
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let answer = |nc: &str, password: &str| {
            let ha1 = md5(&format!("erin:Staff only:{password}"));
            let response = md5(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{}", md5("GET:/x")));
            format!(
                "Digest username=\"erin\", realm=\"Staff only\", nonce=\"{nonce}\", uri=\"/x\", qop=auth, nc={nc}, cnonce=\"c0ffee\", response=\"{response}\""
            )
        };
        let (s, _, body) = ask(
            "digest.test",
            &[("authorization", &answer("00000001", "erin-pw"))],
        )
        .await;
        assert_eq!((s, body.as_str()), (200, "app\n"), "h2={h2}");
        // The same count again is a replay; a new one is not; a wrong
        // password is wrong whatever the count.
        for (nc, password, want) in [
            ("00000001", "erin-pw", 401),
            ("00000002", "erin-pw", 200),
            ("00000003", "wrong", 401),
        ] {
            let auth = answer(nc, password);
            let got = ask("digest.test", &[("authorization", &auth)]).await.0;
            assert_eq!(got, want, "nc={nc} h2={h2}");
        }
        // Signed with a nonce ingressd did not give.
        let forged =
            answer("00000004", "erin-pw").replace(nonce, "1.0.00000000000000000000000000000000");
        assert_eq!(
            ask("digest.test", &[("authorization", &forged)]).await.0,
            401
        );
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    for want in [
        "auth-secret default/nobody not found; the Ingress's paths answer 503",
        "\"basci\" is not basic or digest",
        "user \"mallory\": yescrypt",
        // $remote_user in the access line, as nginx's.
        " - alice [",
    ] {
        assert!(log.contains(want), "{want} not in {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backends_of_the_annotation_and_the_flag() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spare = scripted_http(Ipv4Addr::new(127, 0, 0, 16), seen.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"spare\n")))
    })
    .await;
    let fallback = scripted_http(Ipv4Addr::new(127, 0, 0, 16), seen.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"fallback\n")))
    })
    .await;
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    // app has no endpoints; spare and fallback serve on their first port.
    let yaml = service("app", 9, &[])
        + &service("spare", spare.port(), &[spare.ip()])
        + &service("fallback", fallback.port(), &[fallback.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to_app("empty.test", &[("default-backend", "spare")])
        + &to_app("plain.test", &[])
        + &to_app("bad.test", &[("default-backend", "Not_A_Name")]);
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &["--default-backend-service", "default/fallback"],
    )
    .await;
    for h2 in [false, true] {
        let ask = async |host: &str| {
            let (s, _, body) = request_with(d.http, h2, "GET", host, &[]).await;
            (s, body)
        };
        // No endpoints: the Ingress's default-backend serves, else 503.
        assert_eq!(ask("empty.test").await, (200, "spare\n".into()), "h2={h2}");
        assert_eq!(ask("plain.test").await.0, 503, "h2={h2}");
        assert_eq!(ask("bad.test").await.0, 503, "h2={h2}");
        // No rule: the flag's Service, not the built-in 404.
        assert_eq!(
            ask("nowhere.test").await,
            (200, "fallback\n".into()),
            "h2={h2}"
        );
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("default-backend") && log.contains("Not_A_Name"),
        "{log}"
    );
    // Without the flag, the built-in 404.
    let plain = Ingressd::start(BIN, &yaml).await;
    let (s, _, body) = request_with(plain.http, false, "GET", "nowhere.test", &[]).await;
    assert_eq!((s, body.as_str()), (404, "default backend - 404\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_http_errors_are_answered_by_the_default_backend() {
    // The endpoint answers the status the client asks for.
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = scripted_http(Ipv4Addr::new(127, 0, 0, 17), served.clone(), |req| {
        let want = req
            .headers()
            .get("x-want")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .unwrap_or(200);
        let mut r = Response::new(Full::new(Bytes::from_static(b"app's own\n")));
        *r.status_mut() = hyper::StatusCode::from_u16(want).unwrap();
        r
    })
    .await;
    // An error-page server as ingress-nginx's: the status of X-Code, a page
    // naming what it was told.
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let page = |req: &Request<Incoming>| {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let code = h("x-code").parse::<u16>().unwrap_or(500);
        let text = format!(
            "page {code} for {} {}/{} {}:{} {}\n",
            h("x-original-uri"),
            h("x-namespace"),
            h("x-ingress-name"),
            h("x-service-name"),
            h("x-service-port"),
            h("x-format"),
        );
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        r
    };
    let errors = scripted_http(Ipv4Addr::new(127, 0, 0, 17), asked.clone(), page).await;
    let global = scripted_http(Ipv4Addr::new(127, 0, 0, 17), asked.clone(), |_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"global page\n")));
        *r.status_mut() = hyper::StatusCode::IM_A_TEAPOT;
        r
    })
    .await;
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    let yaml = service("app", app.port(), &[app.ip()])
        + &service("errors", errors.port(), &[errors.ip()])
        + &service("global", global.port(), &[global.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to_app(
            "pages.test",
            &[
                ("custom-http-errors", "404, 503"),
                ("default-backend", "errors"),
            ],
        )
        + &to_app("global.test", &[("custom-http-errors", "404")])
        + &to_app("bad.test", &[("custom-http-errors", "404,abc")])
        + &to_app("flagged.test", &[]);
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &[
            "--default-backend-service",
            "default/global",
            "--custom-http-errors",
            "404,410",
        ],
    )
    .await;
    for h2 in [false, true] {
        let ask = async |host: &str, want: &str| {
            let headers = [("x-want", want), ("accept", "application/json")];
            let (s, _, body) = request_with(d.http, h2, "GET", host, &headers).await;
            (s, body)
        };
        // Listed: the default backend's page, with its status, told what
        // ingress-nginx tells it.
        assert_eq!(
            ask("pages.test", "404").await,
            (
                404,
                "page 404 for /x default/pages-test app:80 application/json\n".into()
            ),
            "h2={h2}"
        );
        assert_eq!(ask("pages.test", "503").await.0, 503);
        assert!(ask("pages.test", "503").await.1.starts_with("page 503"));
        // Not listed, or fine: the endpoint's own answer.
        assert_eq!(ask("pages.test", "500").await, (500, "app's own\n".into()));
        assert_eq!(ask("pages.test", "200").await, (200, "app's own\n".into()));
        // Without default-backend: --default-backend-service's Service.
        assert_eq!(
            ask("global.test", "404").await,
            (418, "global page\n".into())
        );
        // A bad list replaces nothing.
        assert_eq!(ask("bad.test", "404").await, (404, "app's own\n".into()));
        // Without the annotation: --custom-http-errors (ingress-nginx's
        // ConfigMap key); with it, the Ingress's own list wins.
        assert_eq!(
            ask("flagged.test", "410").await,
            (418, "global page\n".into())
        );
        assert_eq!(ask("global.test", "410").await, (410, "app's own\n".into()));
    }
    // The client's POST went to the endpoint with its body; the default
    // backend was asked with a GET without it.
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/x")
        .header("host", "pages.test")
        .header("x-want", "404")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 404);
    let sent = served.lock().unwrap().pop().unwrap();
    assert!(
        sent.starts_with("POST /x ") && sent.ends_with(" body=5"),
        "{sent}"
    );
    let line = asked.lock().unwrap().pop().unwrap();
    assert!(
        line.starts_with("GET /x ") && line.ends_with(" body=0"),
        "{line}"
    );
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("a list of status codes from 400 to 599"),
        "{log}"
    );
    // A flag's bad value stops the start, naming the flag.
    let out = std::process::Command::new(BIN)
        .args(["run", "--no-l4", "--custom-http-errors", "404,abc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--custom-http-errors") && err.contains("400 to 599"),
        "{err}"
    );
}

/// Listeners on one port of several loopback addresses (a Service's
/// endpoints share their target port), the port found by trying.
async fn same_port(ips: &[Ipv4Addr]) -> Vec<tokio::net::TcpListener> {
    for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port free on all of {ips:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_sends_to_the_next_endpoint_as_nginx() {
    let ips = [18, 19, 20, 21].map(|d| Ipv4Addr::new(127, 0, 0, d));
    let mut listeners = same_port(&ips).await.into_iter();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let good = scripted_on(listeners.next().unwrap(), seen.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"good\n")))
    });
    let failing = Arc::new(std::sync::Mutex::new(Vec::new()));
    scripted_on(listeners.next().unwrap(), failing.clone(), |_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad\n")));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    });
    // Takes the request, then hangs up without an answer.
    let reset = listeners.next().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = reset.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    // Takes the request and never answers.
    let silent = listeners.next().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((tcp, _)) = silent.accept().await else {
                continue;
            };
            held.push(tcp);
        }
    });
    let ip = |i: usize| IpAddr::V4(ips[i]);
    let port = good.port();
    let to = |host: &str, svc: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix")
            .replace("name: a, port", &format!("name: {svc}, port"))
    };
    let yaml = service("mixed", port, &[ip(0), ip(1)])
        + &service("flaky", port, &[ip(0), ip(2)])
        + &service("slow", port, &[ip(0), ip(3)])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to(
            "status.test",
            "mixed",
            &[("proxy-next-upstream", "error timeout http_502")],
        )
        + &to("plain.test", "mixed", &[])
        + &to("reset.test", "flaky", &[])
        + &to("off.test", "flaky", &[("proxy-next-upstream", "off")])
        + &to("once.test", "flaky", &[("proxy-next-upstream-tries", "1")])
        + &to(
            "post.test",
            "flaky",
            &[("proxy-next-upstream", "error non_idempotent")],
        )
        + &to("slow.test", "slow", &[("proxy-read-timeout", "1")]);
    let d = Ingressd::start(BIN, &yaml).await;
    // 40 requests each: half or so meet the failing endpoint first (its
    // pick is random), so a case that does not go on shows in them.
    let statuses = async |host: &str, method: &str, h2: bool| {
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(request_with(d.http, h2, method, host, &[]).await.0);
        }
        out
    };
    for h2 in [false, true] {
        let all_good = |v: &[u16]| v.iter().all(|s| *s == 200);
        let some_failed = |v: &[u16]| v.contains(&502);
        // http_502 listed: every request ends at the good endpoint.
        failing.lock().unwrap().clear();
        let v = statuses("status.test", "GET", h2).await;
        assert!(all_good(&v), "h2={h2} {v:?}");
        assert!(
            !failing.lock().unwrap().is_empty(),
            "the failing endpoint was never tried"
        );
        // The default (error timeout): a 502 answered is the answer.
        assert!(
            some_failed(&statuses("plain.test", "GET", h2).await),
            "h2={h2}"
        );
        // A hang-up after the request left: a GET goes on by default; not
        // with off or one try, nor a POST without non_idempotent.
        let v = statuses("reset.test", "GET", h2).await;
        assert!(all_good(&v), "h2={h2} {v:?}");
        assert!(
            some_failed(&statuses("off.test", "GET", h2).await),
            "h2={h2}"
        );
        assert!(
            some_failed(&statuses("once.test", "GET", h2).await),
            "h2={h2}"
        );
        assert!(
            some_failed(&statuses("reset.test", "POST", h2).await),
            "h2={h2}"
        );
        let v = statuses("post.test", "POST", h2).await;
        assert!(all_good(&v), "h2={h2} {v:?}");
    }
    // No answer within the read timeout: timeout is in the default list.
    for _ in 0..4 {
        let (s, _, body) = request_with(d.http, false, "GET", "slow.test", &[]).await;
        assert_eq!((s, body.as_str()), (200, "good\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cache_remembers_auth_answers_by_key() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let auth = scripted_http(Ipv4Addr::new(127, 0, 0, 22), asked.clone(), |req| {
        let good = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer good"));
        let mut r = Response::new(Full::new(Bytes::new()));
        if !good {
            *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        }
        r
    })
    .await;
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = scripted_http(Ipv4Addr::new(127, 0, 0, 22), served, |_| {
        Response::new(Full::new(Bytes::from_static(b"app\n")))
    })
    .await;
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    let url = format!("http://{auth}/check");
    let yaml = service("app", app.port(), &[app.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to_app(
            "cached.test",
            &[
                ("auth-url", &url),
                ("auth-cache-key", "$http_authorization"),
                ("auth-cache-duration", "200 1m"),
            ],
        )
        + &to_app("uncached.test", &[("auth-url", &url)]);
    let d = Ingressd::start(BIN, &yaml).await;
    let count = || asked.lock().unwrap().len();
    for (h2, token) in [(false, "Bearer good-1"), (true, "Bearer good-2")] {
        let ask = async |host: &str, token: &str| {
            request_with(d.http, h2, "GET", host, &[("authorization", token)])
                .await
                .0
        };
        // A 200 is remembered for its key: asked once for three requests.
        let before = count();
        for _ in 0..3 {
            assert_eq!(ask("cached.test", token).await, 200, "h2={h2}");
        }
        assert_eq!(count() - before, 1, "h2={h2}");
        // Another key is asked; a 401 is not among the codes kept.
        let before = count();
        for _ in 0..2 {
            assert_eq!(ask("cached.test", "Bearer bad").await, 401);
        }
        assert_eq!(count() - before, 2);
        // Without auth-cache-key every request is asked.
        let before = count();
        for _ in 0..3 {
            assert_eq!(ask("uncached.test", token).await, 200);
        }
        assert_eq!(count() - before, 3);
    }
}

/// A GET of `/x` for `host` over TLS (SNI `host`), with `client` as the
/// client certificate if given: the status, the Location, the body.
async fn mtls_get(
    addr: SocketAddr,
    host: &str,
    client: Option<(&rcgen::Certificate, &rcgen::KeyPair)>,
    h2: bool,
) -> (u16, Option<String>, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder(std::sync::Mutex::new(None), provider.clone()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        let req = Request::builder()
            .uri(format!("https://{host}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        let req = Request::builder()
            .uri("/x")
            .header("host", host)
            .header("ssl-client-verify", "SUCCESS")
            .body(Full::new(Bytes::new()))
            .unwrap();
        s.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_as_ingress_nginx_auth_tls() {
    let ca = |name: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
    };
    let (ours, theirs) = (ca("our CA"), ca("their CA"));
    let client = |cn: &str, issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Shop");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        (p.signed_by(&key, issuer).unwrap(), key)
    };
    let (alice, alice_key) = client("alice", &ours);
    let (bob, bob_key) = client("bob", &ours);
    let (mallory, mallory_key) = client("alice", &theirs);
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = scripted_http(Ipv4Addr::new(127, 0, 0, 23), served.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"app\n")))
    })
    .await;
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client-ca}}\nstringData:\n  ca.crt: |\n{}",
        indent(&ours.pem())
    );
    let to_app = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: app, port")
    };
    let yaml = service("app", app.port(), &[app.ip()])
        + &secret
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to_app(
            "mtls.test",
            &[
                ("auth-tls-secret", "default/client-ca"),
                ("auth-tls-pass-certificate-to-upstream", "true"),
            ],
        )
        + &to_app(
            "optional.test",
            &[
                ("auth-tls-secret", "default/client-ca"),
                ("auth-tls-verify-client", "optional"),
            ],
        )
        + &to_app(
            "cn.test",
            &[
                ("auth-tls-secret", "default/client-ca"),
                ("auth-tls-match-cn", "CN=alice"),
                ("auth-tls-error-page", "https://help.test/certs"),
            ],
        )
        + &to_app("missing.test", &[("auth-tls-secret", "default/nothing")])
        + &to_app("open.test", &[]);
    let d = Ingressd::start(BIN, &yaml).await;
    for h2 in [false, true] {
        let get = async |host: &str, who: Option<(&rcgen::Certificate, &rcgen::KeyPair)>| {
            mtls_get(d.https, host, who, h2).await
        };
        let alice_id = Some((&alice, &alice_key));
        // Required: none, or one of another CA, is a 400.
        assert_eq!(get("mtls.test", None).await.0, 400, "h2={h2}");
        assert_eq!(
            get("mtls.test", Some((&mallory, &mallory_key))).await.0,
            400
        );
        served.lock().unwrap().clear();
        let (s, _, body) = get("mtls.test", alice_id).await;
        assert_eq!((s, body.as_str()), (200, "app\n"), "h2={h2}");
        // The endpoint is told, whatever the client claimed itself.
        let line = served.lock().unwrap().pop().unwrap();
        for want in [
            " ssl-client-verify=SUCCESS ",
            " ssl-client-subject-dn=CN=alice,O=Shop ",
            " ssl-client-issuer-dn=CN=our CA ",
            " ssl-client-cert=-----BEGIN%20CERTIFICATE-----%0AMII",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        // Optional: none goes on (NONE); a bad one does not.
        served.lock().unwrap().clear();
        assert_eq!(get("optional.test", None).await.0, 200, "h2={h2}");
        let line = served.lock().unwrap().pop().unwrap();
        assert!(line.contains(" ssl-client-verify=NONE "), "{line}");
        assert!(!line.contains("ssl-client-cert"), "{line}");
        assert_eq!(
            get("optional.test", Some((&mallory, &mallory_key))).await.0,
            400
        );
        // match-cn: bob is of the CA but not let in; the error page is
        // where a refused certificate is sent.
        assert_eq!(get("cn.test", alice_id).await.0, 200);
        assert_eq!(get("cn.test", Some((&bob, &bob_key))).await.0, 403);
        let (s, location, _) = get("cn.test", None).await;
        assert_eq!(
            (s, location.as_deref()),
            (302, Some("https://help.test/certs"))
        );
        // A CA that cannot be read denies; other hosts are not asked.
        assert_eq!(get("missing.test", alice_id).await.0, 503);
        assert_eq!(get("open.test", None).await.0, 200);
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("auth-tls-secret default/nothing not found"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balance_ewma_sends_to_the_faster_endpoint() {
    let ips = [24, 25].map(|d| Ipv4Addr::new(127, 0, 0, d));
    let mut listeners = same_port(&ips).await.into_iter();
    let fast = listeners.next().unwrap();
    let port = fast.local_addr().unwrap().port();
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    scripted_on(fast, served.clone(), |_| {
        Response::new(Full::new(Bytes::from_static(b"fast\n")))
    });
    // Answers after 50 ms.
    let slow = listeners.next().unwrap();
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let hits = slow_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = slow.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow\n"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let to = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: pair, port")
    };
    let yaml = service("pair", port, &[IpAddr::V4(ips[0]), IpAddr::V4(ips[1])])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to("ewma.test", &[("load-balance", "ewma")])
        + &to("plain.test", &[("load-balance", "round_robin")]);
    let d = Ingressd::start(BIN, &yaml).await;
    let run = async |host: &str| {
        slow_hits.store(0, Ordering::Relaxed);
        for _ in 0..30 {
            let (s, _, _) = request_with(d.http, false, "GET", host, &[]).await;
            assert_eq!(s, 200);
        }
        slow_hits.load(Ordering::Relaxed)
    };
    // One at a time, both endpoints idle: by in-flight requests the pick
    // is a coin toss; by response time the slow one is tried once or so.
    let by_time = run("ewma.test").await;
    assert!(
        by_time <= 3,
        "ewma sent {by_time} of 30 to the slow endpoint"
    );
    let by_load = run("plain.test").await;
    assert!(
        by_load > 3,
        "round_robin sent {by_load} of 30 to the slow endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_stops_taking_a_body_times_out_as_proxy_send_timeout() {
    // Takes connections and never reads from them.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 26), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            held.push(tcp);
        }
    });
    let to = |host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix").replace("name: a, port", "name: deaf, port")
    };
    let yaml = service("deaf", addr.port(), &[addr.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n"
        + &to(
            "deaf.test",
            &[
                ("proxy-send-timeout", "1"),
                ("proxy-body-size", "0"),
                ("proxy-next-upstream", "off"),
            ],
        );
    let d = Ingressd::start(BIN, &yaml).await;
    // More than the sockets' buffers hold, so the endpoint's not reading
    // stops the upload.
    let body = Bytes::from(vec![b'x'; 64 << 20]);
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "deaf.test")
        .body(Full::new(body))
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// The request head the scripted endpoint echoed, lowercased, from the
/// whole response a raw client read.
fn echoed_head(response: &str) -> String {
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// A 1 MB body no two reads of which look alike.
static BIG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| (0..100_000).map(|i| format!("{:09}\n", i)).collect());

/// A response head over 64 KiB.
static HUGE_HEAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "x".repeat(70_000)
    )
});

/// `BIG` both ways of framing it, to arrive in many reads.
static BIG_BY_LENGTH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
        BIG.len(),
        *BIG
    )
});
static BIG_CHUNKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let chunks: String = BIG
        .as_bytes()
        .chunks(7_777)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), std::str::from_utf8(c).unwrap()))
        .collect();
    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")
});

/// A raw HTTP/1.1 endpoint answering each request by its path with fixed
/// bytes, framed in every way RFC 9112 allows; counts its connections.
async fn scripted_endpoint(ip: Ipv4Addr) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // Bounded: at most 1,000 requests per connection.
                for _ in 0..1000 {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let echoed = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    let (answer, then_close): (&[u8], bool) = match path.as_str() {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
                            false,
                        ),
                        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nread to the end", true),
                        "/hints" => (
                            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                            false,
                        ),
                        "/empty" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
                        "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
                        // Half the body, then nothing: the connection stays
                        // open, waiting for a next request that never comes.
                        "/stall" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.", false),
                        // Keep-alive promised, then closed: the pooled
                        // connection is stale by the next request.
                        "/then-gone" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngone", true),
                        "/two-lengths" => (
                            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
                            true,
                        ),
                        "/huge-head" => (HUGE_HEAD.as_bytes(), true),
                        "/big" => (BIG_BY_LENGTH.as_bytes(), false),
                        "/big-chunked" => (BIG_CHUNKED.as_bytes(), false),
                        // Anything else: the request head as it arrived.
                        _ => (echoed.as_bytes(), false),
                    };
                    // HEAD gets the head only (the length stays).
                    let answer = if head.starts_with("HEAD ") {
                        let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        &answer[..end]
                    } else {
                        answer
                    };
                    if stream.write_all(answer).await.is_err() || then_close {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_responses_framed_every_way_and_pooled() {
    let (addr, conns) = scripted_endpoint(Ipv4Addr::new(127, 0, 0, 6)).await;
    let yaml = service(
        "raw",
        addr.port(),
        &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))],
    ) + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n\
           ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: raw, annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\"}}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: raw.test\n    http:\n      paths:\n\
           \x20     - {path: /, pathType: Prefix, backend: {service: {name: raw, port: {number: 80}}}}\n\
           \x20 - http:\n      paths:\n\
           \x20     - {path: /anyhost, pathType: Prefix, backend: {service: {name: raw, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    // Raw requests, to see the exact head the endpoint gets.
    let raw = |request: Vec<u8>| async move { exchange_raw(d.http, &request).await };
    // Absolute form without a path: origin form upstream has one.
    let got = raw(
        b"GET http://raw.test?a=1 HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(got.contains("\r\n\r\nGET /?a=1 HTTP/1.1\r\n"), "{got}");
    // What Connection names is hop-by-hop: the client's X-Forwarded-For
    // is not added to, Keep-Alive and Connection do not go on.
    let got = raw(b"GET /echo HTTP/1.1\r\nHost: raw.test\r\nConnection: close, x-forwarded-for\r\nX-Forwarded-For: 198.18.9.9\r\nKeep-Alive: 5\r\nX-End: 1\r\n\r\n".to_vec()).await;
    let upstream_head = echoed_head(&got);
    assert!(
        upstream_head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{got}"
    );
    assert!(upstream_head.contains("\r\nx-end: 1\r\n"), "{got}");
    for gone in ["198.18.9.9", "keep-alive", "connection:"] {
        assert!(!upstream_head.contains(gone), "{gone} passed on: {got}");
    }
    // hyper's default header count (100) is the default limit: with Host
    // and Connection, 98 more pass and 99 do not.
    for (extra, status) in [(98, "200"), (99, "431")] {
        let headers: String = (0..extra).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let request =
            format!("GET /echo HTTP/1.1\r\nHost: raw.test\r\n{headers}Connection: close\r\n\r\n");
        let got = raw(request.into_bytes()).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{extra} headers: {got:.200}"
        );
    }
    // Exactly one Host, also when the client's is not text.
    for request in [
        &b"GET /anyhost HTTP/1.1\r\nHost: \xffx\r\nConnection: close\r\n\r\n"[..],
        b"GET /anyhost HTTP/1.0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n",
    ] {
        let got = raw(request.to_vec()).await;
        let upstream_head = echoed_head(&got);
        assert!(
            got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.0 200"),
            "{got}"
        );
        assert_eq!(upstream_head.matches("\r\nhost:").count(), 1, "{got}");
    }
    let call = |method: &'static str, path: &'static str| {
        send(d.http, method, path, "raw.test", Vec::new())
    };

    // Kept-alive endpoint connections are reused: 20 requests, one connection.
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..20 {
        let (status, _, body) = call("GET", "/length").await;
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    // (At most one made for them: the raw requests above may have left one.)
    assert!(
        conns.load(Ordering::SeqCst) - before <= 1,
        "keep-alive to the endpoint"
    );

    let (status, _, body) = call("GET", "/chunked").await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let (status, _, body) = call("GET", "/until-close").await;
    assert_eq!((status, body.as_str()), (200, "read to the end"));
    // 1xx before the answer is skipped.
    let (status, _, body) = call("GET", "/hints").await;
    assert_eq!((status, body.as_str()), (200, "final"));
    let (status, _, body) = call("GET", "/empty").await;
    assert_eq!((status, body.as_str()), (204, ""));
    // HEAD: the length says 5, no body follows, nothing waits for one.
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(3), call("HEAD", "/length"))
        .await
        .expect("HEAD answered");
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _, body) = call("GET", "/length").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello"),
        "the connection after HEAD is in step"
    );

    // Large bodies arrive whole, however they are framed.
    for path in ["/big", "/big-chunked"] {
        let (status, _, body) = call("GET", path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body == *BIG,
            "{path}: {} bytes, not the {} sent",
            body.len(),
            BIG.len()
        );
    }

    // An endpoint closing a connection it said it would keep: the next
    // request on it fails before any answer and goes on a new one.
    for i in 0..10 {
        let (status, _, body) = call("GET", "/then-gone").await;
        assert_eq!((status, body.as_str()), (200, "gone"), "request {i}");
    }

    // Answers a proxy must not pass on: 502.
    let (status, _, _) = call("GET", "/two-lengths").await;
    assert_eq!(status, 502, "conflicting Content-Length");
    let (status, _, _) = call("GET", "/huge-head").await;
    assert_eq!(status, 502, "response head over 64 KiB");
    // And the endpoint still serves after those.
    let (status, _, body) = call("GET", "/length").await;
    assert_eq!((status, body.as_str()), (200, "hello"));

    // A body that stops coming: the read timeout (1 s here, by annotation)
    // also holds between reads, and the client sees the connection end
    // short of the promised length (as from nginx), not a hang.
    let got = raw(b"GET /stall HTTP/1.1\r\nHost: raw.test\r\n\r\n".to_vec()).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.contains("content-length: 10\r\n") && got.ends_with("\r\n\r\nhalf."),
        "{got}"
    );
}

/// Writes `request` on a new connection to `addr` and reads until the
/// proxy closes it (bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_access_log_line_and_is_counted_refused_ones_too() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    let (status, body) = get(d.http, "/cart?q=1", Some("shop.test")).await.unwrap();
    assert_eq!(status, 200);
    // One with a body (hyper's path), with what clients say of themselves.
    let posted = exchange_raw(
        d.http,
        b"POST /cart HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: tester \"1\"\r\nReferer: http://r/\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    let posted_body = posted.split("\r\n\r\n").nth(1).unwrap_or_default().len();
    // A malformed request line: 400, before any route is known.
    let answer = exchange_raw(d.http, b"GET /x HTTP/1.1 junk\r\nHost: shop.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let log = |d: &Ingressd| std::fs::read_to_string(&d.log).unwrap_or_default();
    let line = |log: &str, want: &str| log.lines().find(|l| l.contains(want)).map(str::to_string);
    // ingress-nginx's upstreaminfo: client - user [time] "request" status
    // bytes "referer" "agent" length time [upstream] [] addr bytes time status id
    let got = format!("\"GET /cart?q=1 HTTP/1.1\" 200 {} \"-\" \"-\" ", body.len());
    let posted_line =
        format!("\"POST /cart HTTP/1.1\" 200 {posted_body} \"http://r/\" \"tester \\x221\\x22\" ");
    // Lines are written by a background writer: wait for them (bounded).
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            let log = log(&d);
            [&got[..], &posted_line, "\"-\" 400 0 "]
                .iter()
                .all(|w| line(&log, w).is_some())
        })
        .await,
        "access log lines missing:\n{}",
        log(&d)
    );
    let routed = line(&log(&d), &got).unwrap();
    assert!(routed.starts_with("127.0.0.1 - - ["), "{routed}");
    assert!(routed.contains(" [default-b-http] [] 127.0.0."), "{routed}");
    // The request ID the endpoint was sent (and the client got back) ends it.
    let id = routed.rsplit(' ').next().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{routed}"
    );
    assert!(body.contains(&format!("rid={id} ")), "{body}");
    let refused = line(&log(&d), "\"-\" 400 0 ").unwrap();
    assert!(
        refused.contains("[upstream-default-backend] [] - - - -"),
        "{refused}"
    );
    let metrics = get(d.metrics, "/metrics", None).await.unwrap().1;
    assert!(
        metrics.contains("ingressd_http_requests_total{ingress=\"-\",service=\"default-backend\",status=\"400\",error=\"bad_head\"} 1"),
        "{metrics}"
    );
    drop(d);

    // As JSON, to a file; and none at all.
    let file = std::env::temp_dir().join(format!("ingressd-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let to_file = [
        "--access-log",
        file.to_str().unwrap(),
        "--access-log-format",
        "json",
    ];
    let d = Ingressd::start_with(BIN, &yaml, &to_file).await;
    get(d.http, "/cart", Some("shop.test")).await.unwrap();
    let written = async || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains('\n')
    };
    assert!(
        common::eventually(Duration::from_secs(5), written).await,
        "no line in {file:?}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(v["request"], "GET /cart HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["ingress"], "default/shop");
    let _ = std::fs::remove_file(&file);
    drop(d);
    let d = Ingressd::start_with(BIN, &yaml, &["--access-log", "false"]).await;
    get(d.http, "/cart", Some("shop.test")).await.unwrap();
    // A line would be written within the log's 20 ms tick: none comes in
    // ten times that.
    let logged = async || log(&d).contains("\"GET /cart");
    assert!(
        !common::eventually(Duration::from_millis(200), logged).await,
        "{}",
        log(&d)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_pipelined_kept_alive_and_handed_over() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    // One connection, six pipelined requests in one write: four without
    // a body (served in-task), a POST with one (hyper's server takes the
    // connection over with what was read), then one more on hyper.
    let got = exchange_raw(
        d.http,
        b"DELETE /p0 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n\
          GET /p1 HTTP/1.1\r\nHost: shop.test\r\n\r\n\
          HEAD /p2 HTTP/1.1\r\nHost: shop.test\r\n\r\n\
          GET /p3 HTTP/1.1\r\nHost: nowhere.test\r\n\r\n\
          POST /p4 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /p5 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Status lines (the echoed bodies say "version=HTTP/1.1" too).
    let heads: Vec<&str> = got
        .match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || got.as_bytes()[i - 1] == b'\n')
        .map(|(i, _)| &got[i..i + 12])
        .collect();
    assert_eq!(
        heads,
        [
            "HTTP/1.1 200",
            "HTTP/1.1 200",
            "HTTP/1.1 200",
            "HTTP/1.1 404",
            "HTTP/1.1 200",
            "HTTP/1.1 200"
        ],
        "{got}"
    );
    // Answers in order, HEAD without a body, the POST's body delivered.
    let at = |needle: &str| {
        got.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing: {got}"))
    };
    assert!(
        at("a path=/p1 ") < at("default backend - 404")
            && at("default backend - 404") < at("a path=/p4 "),
        "{got}"
    );
    assert!(!got.contains("path=/p2"), "HEAD got a body: {got}");
    assert!(at("a path=/p0 ") < at("a path=/p1 "), "{got}");
    assert!(at("a path=/p4 ") < at("a path=/p5 "), "{got}");
    assert!(got.contains("body=3\n"), "{got}");
    // Every response dated; the last one says the connection ends.
    assert_eq!(got.matches("\r\ndate: ").count(), 6, "{got}");
    assert_eq!(got.matches("\r\nconnection: close\r\n").count(), 1, "{got}");

    // HTTP/1.0: closed after the answer unless asked to keep it, then
    // told it is kept.
    let got = exchange_raw(d.http, b"GET /one HTTP/1.0\r\nHost: shop.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(!got.contains("connection:"), "{got}");
    let got = exchange_raw(
        d.http,
        b"GET /ka HTTP/1.0\r\nHost: shop.test\r\nConnection: keep-alive\r\n\r\n\
          GET /last HTTP/1.0\r\nHost: shop.test\r\n\r\n",
    )
    .await;
    assert_eq!(got.matches("HTTP/1.0 200 OK\r\n").count(), 2, "{got}");
    assert_eq!(
        got.matches("\r\nconnection: keep-alive\r\n").count(),
        1,
        "{got}"
    );
    assert!(
        got.contains("a path=/ka ") && got.contains("a path=/last "),
        "{got}"
    );

    // Heads no server takes: the status, then the connection closes.
    for (request, status) in [
        (&b"GET /a`b HTTP/1.1\r\nHost: shop.test\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nHost shop.test\r\n\r\n", "400"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "400",
        ),
    ] {
        let got = exchange_raw(d.http, request).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_takes_its_request_with_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An endpoint that never answers, and tells when the proxy hangs up.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 8), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, mut request_in) = tokio::sync::mpsc::channel::<()>(1);
    let (hung_up, mut told) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        // The request, then nothing until the proxy closes (bounded).
        for _ in 0..100 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = hung_up.send(()).await;
                    return;
                }
                Ok(_) => {
                    let _ = arrived.try_send(());
                }
            }
        }
    });
    let yaml = service(
        "hold",
        addr.port(),
        &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8))],
    ) + "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ebpf}\nspec: {controller: ingress-ebpf/controller}\n\
           ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: hold}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: hold.test\n    http:\n      paths:\n\
           \x20     - {path: /, pathType: Prefix, backend: {service: {name: hold, port: {number: 80}}}}\n";
    // The response timeout (60 s) is far off: only the client leaving
    // can end the endpoint's connection within the bound below.
    let d = Ingressd::start(BIN, &yaml).await;
    let mut c = tokio::net::TcpStream::connect(d.http).await.unwrap();
    c.write_all(b"GET /wait HTTP/1.1\r\nHost: hold.test\r\n\r\n")
        .await
        .unwrap();
    // Closed once the request is with the endpoint.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), request_in.recv())
            .await
            .is_ok_and(|m| m.is_some()),
        "the request reached the endpoint"
    );
    drop(c);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), told.recv())
            .await
            .is_ok_and(|m| m.is_some()),
        "the endpoint's connection outlived the client's"
    );
    // Counted as nginx counts it.
    let counted = "ingressd_http_requests_total{ingress=\"default/hold\",service=\"default/hold:80\",status=\"499\",error=\"client_left\"} 1";
    assert!(
        common::eventually(Duration::from_secs(2), async || {
            get(d.metrics, "/metrics", None)
                .await
                .is_ok_and(|(_, m)| m.contains(counted))
        })
        .await,
        "no 499 counted"
    );
}

/// Ingresses for the path tests: `guard.test` has `/admin` and `/secret`
/// (Exact) behind a source range the loopback client is outside of, and
/// everything else open; `rwg.test` rewrites `/app/…` to `/static/…`.
fn guarded() -> String {
    let guard = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: guard-admin\n  annotations:\n    nginx.ingress.kubernetes.io/allowlist-source-range: \"198.18.0.0/15\"\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: guard.test\n    http:\n      paths:\n\
         \x20     - {path: /admin, pathType: Exact, backend: {service: {name: b, port: {number: 80}}}}\n\
         \x20     - {path: /secret, pathType: Exact, backend: {service: {name: b, port: {number: 80}}}}\n";
    guard.to_string()
        + &annotated("guard.test", &[], "/", "Prefix").replace("guard-test", "guard-open")
        + &annotated(
            "rwg.test",
            &[("rewrite-target", "/static/$1"), ("use-regex", "true")],
            "/app/(.*)",
            "ImplementationSpecific",
        )
}

/// The spellings of the guarded paths an attacker tries.
const PROTECTED: [&str; 7] = [
    "/admin",
    "/%61dmin",
    "/x/../admin",
    "/./admin",
    "/%2Fadmin",
    "//secret",
    "/x/%2e%2e/secret",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_guarded_in_normal_form() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &(yaml + &guarded())).await;
    let raw = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let status = |resp: &str| resp.get(9..12).unwrap_or("").to_string();
    for path in PROTECTED {
        let got = exchange_raw(d.http, raw(path, "guard.test").as_bytes()).await;
        assert_eq!(status(&got), "403", "HTTP/1 {path}: {got}");
    }
    // What is open stays open, and goes to the endpoint as it was sent.
    let got = exchange_raw(d.http, raw("/pub/%61b//c", "guard.test").as_bytes()).await;
    assert!(got.contains("\r\n\r\na path=/pub/%61b//c "), "{got}");
    // No normal form: 400, as nginx answers.
    for path in ["/../admin", "/%2e%2e/admin", "/a%zz", "/a%00"] {
        let got = exchange_raw(d.http, raw(path, "guard.test").as_bytes()).await;
        assert_eq!(status(&got), "400", "{path}: {got}");
    }
    // A rewrite works on the normal form: `..` cannot climb out of its
    // target, and captures go out escaped.
    for path in ["/app/../admin", "/app/x%2F..%2F..%2Fadmin"] {
        let got = exchange_raw(d.http, raw(path, "rwg.test").as_bytes()).await;
        assert_eq!(status(&got), "404", "{path}: {got}");
    }
    let got = exchange_raw(d.http, raw("/app/a%3Fb/./c", "rwg.test").as_bytes()).await;
    assert!(got.contains("a path=/static/a%3Fb/c "), "{got}");

    // HTTP/2 decides on the same form.
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for path in PROTECTED {
        let req = Request::get(format!("http://guard.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 403, "HTTP/2 {path}");
    }
}

/// Field `name=` of an echoed body (up to the next space).
fn echoed<'a>(body: &'a str, name: &str) -> &'a str {
    body.split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_replaced_unless_the_peer_is_trusted() {
    let (_, yaml) = backends().await;
    // What a client forging its identity sends, over the fast path (no
    // body) and over hyper's (a body).
    let forged = |method: &str, body: &str| {
        format!(
            "{method} / HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.7\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 1\r\nX-Real-IP: 6.6.6.8\r\n\
             X_Forwarded_For: 7.7.7.7\r\nTransfer_Encoding: chunked\r\nProxy: http://evil.test:3128\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // The forged request over both paths, and what the endpoint saw.
    let sent_both_ways = async |d: &Ingressd, want: &[(&str, &str)]| {
        for (method, body) in [("GET", ""), ("POST", "abc")] {
            let got = exchange_raw(d.http, forged(method, body).as_bytes()).await;
            let body = got.split("\r\n\r\n").nth(1).unwrap_or_default();
            for (field, value) in want {
                assert_eq!(echoed(body, field), *value, "{method} {field}: {body}");
            }
        }
    };
    let d = Ingressd::start(BIN, &yaml).await;
    let port = d.http.port().to_string();
    sent_both_ways(
        &d,
        &[
            ("xff", "127.0.0.1"),
            ("xrealip", "127.0.0.1"),
            ("xfproto", "http"),
            ("xfh", "shop.test"),
            ("xfport", &port),
            ("host", "shop.test"),
            // The client's list stays readable as ingress-nginx keeps it.
            ("xoff", "6.6.6.6,"),
            // Dropped, as nginx drops them.
            ("proxy", "-"),
            ("under", "-"),
        ],
    )
    .await;
    drop(d);

    // Trusted (loopback is in the range): the client is who it says, as
    // are the scheme, host and port, and source ranges see that client.
    let trusting = [
        "--use-forwarded-headers",
        "true",
        "--proxy-real-ip-cidr",
        "127.0.0.0/8",
    ];
    let guarded = yaml.clone()
        + &annotated(
            "deny.test",
            &[("allowlist-source-range", "198.18.0.0/15")],
            "/",
            "Prefix",
        );
    let d = Ingressd::start_with(BIN, &guarded, &trusting).await;
    let from = |xff: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: deny.test\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        )
    };
    let got = exchange_raw(d.http, from("198.18.0.5").as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let got = exchange_raw(d.http, from("198.18.0.5, 6.6.6.6").as_bytes()).await;
    assert!(
        got.starts_with("HTTP/1.1 403"),
        "the rightmost untrusted decides: {got}"
    );
    sent_both_ways(
        &d,
        &[
            ("xff", "6.6.6.7"),
            ("xrealip", "6.6.6.7"),
            ("xfproto", "https"),
            ("xfh", "evil.test"),
            ("xfport", "1"),
            ("under", "-"),
        ],
    )
    .await;
    drop(d);
    // Trusted, but not this peer: replaced.
    let elsewhere = [
        "--use-forwarded-headers",
        "true",
        "--proxy-real-ip-cidr",
        "198.18.0.0/15",
    ];
    let d = Ingressd::start_with(BIN, &yaml, &elsewhere).await;
    let got = exchange_raw(d.http, forged("GET", "").as_bytes()).await;
    let body = got.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(echoed(body, "xff"), "127.0.0.1", "{body}");
    assert_eq!(echoed(body, "xfproto"), "http", "{body}");
    drop(d);
    // compute-full-forwarded-for: the peer appended to what came.
    let full = ["--compute-full-forwarded-for", "true"];
    let d = Ingressd::start_with(BIN, &yaml, &full).await;
    let got = exchange_raw(d.http, forged("GET", "").as_bytes()).await;
    let body = got.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(echoed(body, "xff"), "6.6.6.6,", "{body}");
    assert!(body.contains(" xff=6.6.6.6, 6.6.6.7, 127.0.0.1 "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_starves_another_of_file_descriptors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, yaml) = backends().await;
    let d = Ingressd::start_limited(BIN, &yaml, &["--client-header-timeout", "3"], Some(256)).await;
    // 300 requests to the default backend's port that never finish their
    // head: more than every descriptor the process has.
    let mut stuck = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(d.default_backend)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stuck.push(s);
    }
    // The proxy and the probes answer all the same.
    for _ in 0..5 {
        let (status, body) = get(d.http, "/", Some("shop.test"))
            .await
            .expect("the proxy answers");
        assert!(status == 200 && body.starts_with("a "), "{status} {body}");
    }
    assert_eq!(get(d.metrics, "/healthz", None).await.unwrap().0, 200);
    // And the stuck ones are let go after the header timeout.
    let mut first = stuck.swap_remove(0);
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a half-sent request held past the header timeout"
    );
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        !log.contains("accept failed"),
        "descriptors ran out:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_hyper_serves_keep_their_idle_and_send_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, yaml) = backends().await;
    let (ep, mut cut) = streamer(Ipv4Addr::new(127, 0, 0, 7)).await;
    let yaml = yaml
        + &service("stream", ep.port(), &[ep.ip()])
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: stream}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: stream.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: stream, port: {number: 80}}}}\n"
        + &annotated("ws.test", &[("proxy-read-timeout", "1")], "/", "Prefix");
    // Far apart, so a loaded machine cannot blur which one closed.
    let flags = ["--keep-alive-timeout", "1", "--client-header-timeout", "4"];
    let d = Ingressd::start_with(BIN, &yaml, &flags).await;
    let closed_within = async |s: &mut tokio::net::TcpStream, limit: Duration| {
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    };

    // HTTP/1 on hyper (a body took it there), then idle: closed after the
    // keep-alive timeout, without a 408.
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !got.contains("HTTP/1.1 408"),
        "an idle connection is closed without a word: {got}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "idle for the keep-alive timeout, not the header one"
    );

    // HTTP/2, no stream: let go after the keep-alive timeout too.
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle HTTP/2 connection was kept"
    );

    // A client that stops reading after a request with a body: given up
    // after the send timeout, and the endpoint's response with it.
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: stream.test\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    let given_up = tokio::time::timeout(Duration::from_secs(10), cut.recv()).await;
    assert!(
        given_up.is_ok(),
        "a client reading nothing held its response"
    );
    drop(s);

    // HTTP/2 whose stream window never opens.
    let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://stream.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response head");
    assert_eq!(resp.status(), 200);
    // The body is never read: its window stays shut.
    let given_up = tokio::time::timeout(Duration::from_secs(10), cut.recv()).await;
    assert!(
        given_up.is_ok(),
        "a stream whose window never opens held its response"
    );
    drop(resp);

    // An idle WebSocket-style upgrade closes after the Ingress's
    // proxy-read-timeout (1 s); one in use stays open.
    let upgraded = async || {
        let stream = tokio::net::TcpStream::connect(d.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/chat")
            .header("host", "ws.test")
            .header("connection", "Upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded"))
    };
    let mut busy = upgraded().await;
    for _ in 0..8 {
        busy.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), busy.read_exact(&mut one))
            .await
            .expect("echoed while in use")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut idle = upgraded().await;
    let started = Instant::now();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "an idle upgraded connection was kept");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_answered_as_nginx_answers_it() {
    let (ep, seen) = recorder(Ipv4Addr::new(127, 0, 0, 8)).await;
    let yaml = service("rec", ep.port(), &[ep.ip()])
        + INGRESSES
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: rec}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: rec.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: rec, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &yaml).await;
    // Each first on a fresh connection, then after a request with a body
    // (which hands the connection to hyper's server), so both servers
    // are held to it.
    let opener = "POST /open HTTP/1.1\r\nHost: rec.test\r\nContent-Length: 2\r\n\r\nhi";
    for (request, status) in [
        (
            "POST /clte HTTP/1.1\r\nHost: rec.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST /tecl HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "GET /dup HTTP/1.1\r\nHost: rec.test\r\nHost: rec.test\r\n\r\n",
            "400",
        ),
        ("GET /nohost HTTP/1.1\r\n\r\n", "400"),
        (
            "CONNECT rec.test:443 HTTP/1.1\r\nHost: rec.test:443\r\n\r\n",
            "405",
        ),
        (
            "POST /gzip HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
        ),
        // A chunk that is not one: the client's fault, and the endpoint
        // never sees the request whole.
        (
            "POST /badchunk HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            "400",
        ),
    ] {
        for prefix in ["", opener] {
            let got = exchange_raw(d.http, format!("{prefix}{request}").as_bytes()).await;
            let last = got.rfind("HTTP/1.1 ").map_or("", |i| &got[i..]);
            assert!(
                last.starts_with(&format!("HTTP/1.1 {status}")),
                "{:?} after {:?}: {got}",
                request.lines().next().unwrap_or(""),
                prefix.lines().next().unwrap_or("")
            );
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|r| r.starts_with("POST /open ") || r.contains("/badchunk whole=false")),
        "the endpoint was sent what it should not have been: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingressd_routes_prints_the_table_it_serves_and_the_one_files_make() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start(BIN, &yaml).await;
    let live = std::process::Command::new(BIN)
        .args(["routes", "--metrics-addr", &d.metrics.to_string()])
        .output()
        .expect("ingressd routes");
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let live = String::from_utf8_lossy(&live.stdout).into_owned();
    assert!(live.starts_with("HOST empty.test\n"), "{live}");
    assert!(
        live.contains("HOST shop.test\n  Prefix /cart                    → default/b:http ["),
        "{live}"
    );
    // The same table from the files alone, without a running ingressd.
    let dir = std::env::temp_dir().join(format!("ingressd-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), &yaml).unwrap();
    let offline = std::process::Command::new(BIN)
        .args(["routes", "--allow-loopback-endpoints", "--manifests"])
        .arg(&dir)
        .output()
        .expect("ingressd routes --manifests");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(String::from_utf8_lossy(&offline.stdout), live);
}

/// Started with SIGTERM blocked (as a parent that waits for it in a thread
/// leaves its children), ingressd still stops gracefully on SIGTERM.
#[test]
fn sigterm_stops_it_even_when_started_with_the_signal_blocked() {
    use std::os::unix::process::CommandExt as _;
    let dir = std::env::temp_dir().join(format!("ingressd-sigmask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--no-l4", "--manifests"])
        .arg(&dir)
        .args(["--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
        .args([
            "--default-backend-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start ingressd");
    let err = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    let up = testkit::lab::wait_until(Duration::from_secs(20), || {
        err().contains("proxy listening")
    });
    assert!(up, "{}", err());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exited = testkit::lab::wait_until(Duration::from_secs(5), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(exited, "SIGTERM not taken:\n{}", err());
    assert!(err().contains("exiting"), "{}", err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every line the daemon writes is one JSON object
/// with its level, message and fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_a_line() {
    let (_, yaml) = backends().await;
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &["--log-format", "json", "--access-log", "false"],
    )
    .await;
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"proxy listening\"")),
        "{log}"
    );
}

/// `ingressd status` shows, from the running daemon's metrics address,
/// that it synced, its route rules and what is wrong with an Ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_sync_rules_and_problems() {
    let (_, yaml) = backends().await;
    let odd = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
               metadata: {name: odd, annotations: {nginx.ingress.kubernetes.io/ssl-redirect: maybe}}\n\
               spec:\n  ingressClassName: ebpf\n  rules:\n  - host: odd.test\n    http:\n      paths:\n      \
               - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}\n";
    let d = Ingressd::start(BIN, &(yaml + odd)).await;
    let out = std::process::Command::new(BIN)
        .args(["status", "--metrics-addr", &d.metrics.to_string()])
        .output()
        .expect("ingressd status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ingressd 0.1.0 (commit "), "{text}");
    assert!(text.contains("synced         yes:"), "{text}");
    assert!(text.contains("not written by this replica"), "{text}");
    assert!(text.contains("1 problem\n"), "{text}");
    assert!(
        text.contains("Ingress default/odd: field metadata.annotations"),
        "{text}"
    );
    // Nothing listens there: a clear error, not a hang.
    let out = std::process::Command::new(BIN)
        .args(["status", "--metrics-addr", "127.0.0.1:1"])
        .output()
        .expect("ingressd status");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("asking the running ingressd at 127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS client verifying against `ca` that sends its ClientHello in two
/// writes (as a large hello crosses two TCP segments), then GETs `/x`
/// over HTTP/1.1: the response, or the handshake's error.
fn split_hello_get(
    addr: SocketAddr,
    sni: &str,
    ca: rustls::pki_types::CertificateDer<'static>,
) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| e.to_string())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).map_err(|e| e.to_string())?;
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (first, rest) = hello.split_at(hello.len() / 3);
    tcp.write_all(first).map_err(|e| e.to_string())?;
    tcp.flush().map_err(|e| e.to_string())?;
    tcp.write_all(rest).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // The endpoint may close without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_passthrough_splices_tls_to_the_endpoints_by_sni() {
    let (_, backends_yaml) = backends().await;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "passthrough CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let ip = Ipv4Addr::new(127, 0, 0, 31);
    let ep = https_endpoint(ip, "pass.test,*.wild.test", &ca).await;
    let to_tls_ep = |host: &str, notes: &[(&str, &str)], path: &str| {
        annotated(host, notes, path, "Prefix").replace("name: a, port", "name: tls-ep, port")
    };
    let pass = [("ssl-passthrough", "true")];
    let yaml = backends_yaml
        + &service("tls-ep", ep.port(), &[ep.ip()])
        + &to_tls_ep("pass.test", &pass, "/")
        + &to_tls_ep("*.wild.test", &pass, "/")
            .replace("host: *.wild.test", "host: \"*.wild.test\"")
            .replace("name: *-wild-test", "name: wild-test")
        // Passed through only at "/", as ingress-nginx: this one is not.
        + &to_tls_ep("api-only.test", &pass, "/api")
        + &annotated("term.test", &[], "/", "Prefix");
    let d = Ingressd::start_with(BIN, &yaml, &["--enable-ssl-passthrough"]).await;
    let ca_der = ca.der().clone();

    // The endpoint's own certificate, checked against its CA, and its own
    // HTTP/1.1 server answering: nothing was terminated in between.
    let https = d.https;
    for sni in ["pass.test", "x.wild.test"] {
        let ca = ca_der.clone();
        let sni_owned = sni.to_string();
        let answer = tokio::task::spawn_blocking(move || split_hello_get(https, &sni_owned, ca))
            .await
            .unwrap();
        let answer = answer.unwrap_or_else(|e| {
            panic!(
                "{sni}: {e}\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            )
        });
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("tls sni={sni} alpn=-")),
            "{sni}: {answer}"
        );
    }
    // ALPN is the endpoint's to agree: h2 end to end.
    let (_, alpn, _) = tls_connect(d.https, "pass.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // Other hosts are terminated here as before (ingressd's certificate,
    // which the endpoint's CA does not sign), and routed.
    for sni in ["term.test", "api-only.test", "wild.test"] {
        let ca = ca_der.clone();
        let sni_owned = sni.to_string();
        let refused = tokio::task::spawn_blocking(move || split_hello_get(https, &sni_owned, ca))
            .await
            .unwrap();
        assert!(refused.is_err(), "{sni}: {refused:?}");
    }
    let (_, _, tls) = tls_connect(d.https, "term.test", &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/x")
                .header("host", "term.test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("host \\\"api-only.test\\\" has no path \\\"/\\\"")
            || log.contains("host \"api-only.test\" has no path \"/\""),
        "{log}"
    );

    // Without --enable-ssl-passthrough the annotation is reported, and the
    // host's TLS is terminated here.
    let d = Ingressd::start(BIN, &yaml).await;
    let https = d.https;
    let ca = ca_der.clone();
    let refused = tokio::task::spawn_blocking(move || split_hello_get(https, "pass.test", ca))
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .contains("needs --enable-ssl-passthrough"),
        "{}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
}

fn config_map(name: &str, data: &[(&str, &str)]) -> String {
    let data: String = data
        .iter()
        .map(|(k, v)| format!("  {k}: '{v}'\n"))
        .collect();
    format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n{data}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_from_a_config_map_as_ingress_nginx_sets_them() {
    let (_, backends_yaml) = backends().await;
    let ingresses = annotated("hdrs.test", &[("custom-headers", "hdrs")], "/", "Prefix")
        + &annotated(
            "ns.test",
            &[("custom-headers", "default/hdrs")],
            "/",
            "Prefix",
        )
        + &annotated(
            "not-allowed.test",
            &[("custom-headers", "wide")],
            "/",
            "Prefix",
        )
        + &annotated(
            "missing.test",
            &[("custom-headers", "nowhere")],
            "/",
            "Prefix",
        )
        + &annotated(
            "foreign.test",
            &[("custom-headers", "other/hdrs")],
            "/",
            "Prefix",
        )
        + &annotated("plain.test", &[], "/", "Prefix");
    let maps = |frame: &str| {
        config_map(
            "hdrs",
            &[
                ("X-Frame-Options", frame),
                ("X-Robots-Tag", "noindex, nofollow"),
            ],
        ) + &config_map(
            "wide",
            &[("X-Frame-Options", "DENY"), ("X-Powered-By", "me")],
        )
    };
    let yaml = backends_yaml.clone() + &ingresses + &maps("DENY");
    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &[
            "--global-allowed-response-headers",
            "X-Frame-Options,x-robots-tag",
        ],
    )
    .await;
    for h2 in [false, true] {
        for host in ["hdrs.test", "ns.test"] {
            let (s, h, body) = request_with(d.http, h2, "GET", host, &[]).await;
            assert_eq!(s, 200, "{host} h2={h2}: {body}");
            assert_eq!(h["x-frame-options"], "DENY", "{host} h2={h2}");
            assert_eq!(h["x-robots-tag"], "noindex, nofollow", "{host} h2={h2}");
        }
        let (s, h, _) = request_with(d.http, h2, "GET", "plain.test", &[]).await;
        assert_eq!(s, 200);
        assert!(h.get("x-frame-options").is_none());
        // A header not allowed, a missing ConfigMap, another namespace's:
        // the paths are denied, as ingress-nginx's.
        for host in ["not-allowed.test", "missing.test", "foreign.test"] {
            let (s, h, _) = request_with(d.http, h2, "GET", host, &[]).await;
            assert_eq!(s, 503, "{host} h2={h2}");
            assert!(h.get("x-frame-options").is_none(), "{host}");
        }
    }
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    for said in [
        "header X-Powered-By is not in --global-allowed-response-headers",
        "ConfigMap default/nowhere not found",
        "ConfigMap other/hdrs is not in the Ingress's namespace default",
    ] {
        assert!(log.contains(said), "{said}\n{log}");
    }
    // A changed ConfigMap is in force at the next sync: no reload, no
    // restart.
    d.update(&(backends_yaml.clone() + &ingresses + &maps("SAMEORIGIN")))
        .await;
    let (_, h, _) = request_with(d.http, false, "GET", "hdrs.test", &[]).await;
    assert_eq!(h["x-frame-options"], "SAMEORIGIN");

    // Without --global-allowed-response-headers nothing may be set.
    let d = Ingressd::start(BIN, &yaml).await;
    let (s, _, _) = request_with(d.http, false, "GET", "hdrs.test", &[]).await;
    assert_eq!(s, 503);
}

/// The Strict-Transport-Security header of a GET / over TLS to `sni`.
async fn hsts_over_tls(d: &Ingressd, sni: &str) -> Option<String> {
    let (_, _, tls) = tls_connect(d.https, sni, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/")
                .header("host", sni)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    resp.headers()
        .get("strict-transport-security")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_every_answer_over_tls_as_ingress_nginx() {
    let (_, yaml) = backends().await;
    let cert = rcgen::generate_simple_self_signed(vec!["secure.test".to_string()]).unwrap();
    let yaml = yaml + &tls_manifests(&cert.cert.pem(), &cert.signing_key.serialize_pem());
    // ingress-nginx's defaults: on, a year, includeSubDomains.
    let d = Ingressd::start(BIN, &yaml).await;
    let want = Some("max-age=31536000; includeSubDomains".to_string());
    assert_eq!(hsts_over_tls(&d, "secure.test").await, want);
    // Its 404s too, and hosts served with the default certificate.
    assert_eq!(hsts_over_tls(&d, "nothing.test").await, want);
    // Never over plain HTTP.
    let (_, h, _) = request_with(d.http, false, "GET", "relaxed.test", &[]).await;
    assert!(h.get("strict-transport-security").is_none());

    let d = Ingressd::start_with(
        BIN,
        &yaml,
        &[
            "--hsts-max-age",
            "600",
            "--hsts-include-subdomains=false",
            "--hsts-preload=true",
        ],
    )
    .await;
    assert_eq!(
        hsts_over_tls(&d, "secure.test").await.as_deref(),
        Some("max-age=600; preload")
    );
    let d = Ingressd::start_with(BIN, &yaml, &["--hsts=false"]).await;
    assert_eq!(hsts_over_tls(&d, "secure.test").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_headers_and_proxy_set_headers_from_config_maps_as_ingress_nginx() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ep = scripted_http(Ipv4Addr::new(127, 0, 0, 32), seen.clone(), |_| {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
        resp.headers_mut()
            .insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
        resp
    })
    .await;
    let maps = |team: &str| {
        config_map(
            "resp",
            &[
                ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Var", "$host"),
            ],
        ) + &config_map(
            "req",
            &[
                ("X-Team", team),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Var", "$remote_addr"),
            ],
        )
    };
    let ingresses = service("sc", ep.port(), &[ep.ip()])
        + &annotated("hdrs.test", &[], "/", "Prefix").replace("name: a, port", "name: sc, port");
    let d = Ingressd::start_with(
        BIN,
        &(ingresses.clone() + &maps("shop")),
        &[
            "--add-headers",
            "default/resp",
            "--proxy-set-headers",
            "default/req",
        ],
    )
    .await;
    for h2 in [false, true] {
        for method in ["GET", "POST"] {
            seen.lock().unwrap().clear();
            let (s, h, _) =
                request_with(d.http, h2, method, "hdrs.test", &[("x-team", "client")]).await;
            assert_eq!(s, 200, "{method} h2={h2}");
            // The endpoint's own X-Frame-Options is replaced.
            assert_eq!(h["x-frame-options"], "DENY", "{method} h2={h2}");
            assert_eq!(h.get_all("x-frame-options").iter().count(), 1);
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert!(h.get("x-var").is_none());
            let line = seen.lock().unwrap().concat();
            assert!(line.contains(" x-team=shop "), "{method} h2={h2}: {line}");
            assert!(!line.contains("x-team=client"), "{line}");
            assert!(
                !line.contains("6.6.6.6") && !line.contains("x-var"),
                "{line}"
            );
        }
    }
    // ingressd's own answers get them too.
    let (s, h, _) = request_with(d.http, false, "GET", "nothing.test", &[]).await;
    assert_eq!(s, 404);
    assert_eq!(h["x-content-type-options"], "nosniff");
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    for said in [
        "--add-headers default/resp: header \\\"X-Var\\\" left out: nginx variables",
        "--proxy-set-headers default/req: header \\\"X-Forwarded-For\\\" left out: set by ingressd itself",
    ] {
        assert!(
            log.contains(said) || log.contains(&said.replace("\\\"", "\"")),
            "{said}\n{log}"
        );
    }
    // A changed ConfigMap is in force at the next sync.
    d.update(&(ingresses + &maps("payments"))).await;
    seen.lock().unwrap().clear();
    let (s, _, _) = request_with(d.http, false, "GET", "hdrs.test", &[]).await;
    assert_eq!(s, 200);
    let line = seen.lock().unwrap().concat();
    assert!(line.contains(" x-team=payments "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_http_version_and_connection_proxy_header_as_ingress_nginx() {
    let ip = |i| Ipv4Addr::new(127, 0, 0, i);
    let (close_ep, close_conns) = scripted_endpoint(ip(33)).await;
    let (keep_ep, keep_conns) = scripted_endpoint(ip(34)).await;
    let (old_ep, old_conns) = scripted_endpoint(ip(35)).await;
    let to = |svc: &str, host: &str, notes: &[(&str, &str)]| {
        annotated(host, notes, "/", "Prefix")
            .replace("name: a, port", &format!("name: {svc}, port"))
    };
    let yaml = service("close-ep", close_ep.port(), &[close_ep.ip()])
        + &service("keep-ep", keep_ep.port(), &[keep_ep.ip()])
        + &service("old-ep", old_ep.port(), &[old_ep.ip()])
        + &to(
            "close-ep",
            "close.test",
            &[("connection-proxy-header", "close")],
        )
        + &to(
            "keep-ep",
            "keep.test",
            &[("connection-proxy-header", "keep-alive")],
        )
        + &to("old-ep", "old.test", &[("proxy-http-version", "1.0")])
        + &to(
            "old-ep",
            "bad.test",
            &[
                ("proxy-http-version", "2"),
                ("connection-proxy-header", "upgrade"),
            ],
        );
    let d = Ingressd::start(BIN, &yaml).await;
    // One client connection for all three requests: what differs is on
    // the endpoint's side.
    let ask = async |host: &str, n: usize| {
        let mut heads = Vec::new();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(
            tokio::net::TcpStream::connect(d.http).await.unwrap(),
        ))
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..n {
            sender
                .ready()
                .await
                .expect("the client connection stays open");
            let resp = sender
                .send_request(
                    Request::get("/x")
                        .header("host", host)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{host}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            heads.push(String::from_utf8_lossy(&body).to_ascii_lowercase());
        }
        heads
    };
    // close: sent, and every request on a connection of its own.
    let heads = ask("close.test", 3).await;
    assert!(
        heads
            .iter()
            .all(|h| h.contains("\r\nconnection: close\r\n")),
        "{heads:?}"
    );
    assert_eq!(close_conns.load(Ordering::SeqCst), 3);
    // keep-alive: sent, and one connection kept for all.
    let heads = ask("keep.test", 3).await;
    assert!(
        heads
            .iter()
            .all(|h| h.contains("\r\nconnection: keep-alive\r\n")),
        "{heads:?}"
    );
    assert_eq!(keep_conns.load(Ordering::SeqCst), 1);
    // HTTP/1.0 to the endpoint.
    let heads = ask("old.test", 2).await;
    assert!(
        heads.iter().all(|h| h.starts_with("get /x http/1.0\r\n")),
        "{heads:?}"
    );
    assert_eq!(old_conns.load(Ordering::SeqCst), 2);
    // A body with a length goes; a chunked one cannot (411).
    let raw = |body: &str, framing: &str| {
        format!(
            "POST /x HTTP/1.1\r\nHost: old.test\r\n{framing}\r\nConnection: close\r\n\r\n{body}"
        )
    };
    let answer = exchange_raw(d.http, raw("hello", "Content-Length: 5").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("post /x http/1.0\r\n"),
        "{answer}"
    );
    let answer = exchange_raw(
        d.http,
        raw("5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    // Bad values are reported, and the request goes as by default.
    let heads = ask("bad.test", 1).await;
    assert!(heads[0].starts_with("get /x http/1.1\r\n"), "{heads:?}");
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("proxy-http-version") && log.contains("connection-proxy-header"),
        "{log}"
    );
}
