//! A rolling upgrade of `ingressd` on a node, as a DaemonSet with
//! `maxSurge: 1, maxUnavailable: 0` does it: the new process starts beside
//! the running one, takes the proxy's ports over once its routes are in,
//! and the old one, sent SIGTERM, finishes what it has and exits. Clients
//! in steady loops meanwhile (HTTP/1.1 a connection per request, HTTP/1.1
//! keep-alive, HTTP/2, and NodePort connections through the L4 path) see
//! no failed request and no reset connection. Needs root.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use testkit::lab::{self, Lab, Pod, in_netns, nodeport_manifests, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const T: Duration = Duration::from_secs(2);
const HOST: &str = "upgrade.test";

/// What one client loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }
    fn record<E: std::fmt::Display>(&self, r: Result<(), E>) {
        match r {
            Ok(()) => drop(self.ok.fetch_add(1, Ordering::Relaxed)),
            Err(e) => self.failures.lock().unwrap().push(e.to_string()),
        }
    }
}

fn request() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/")
        .header("host", HOST)
        .body(Empty::new())
        .expect("request")
}

/// One request's answer within `T`: its status, or hyper's error; None
/// when it took longer.
async fn answer(
    sent: impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
) -> Option<hyper::Result<hyper::StatusCode>> {
    tokio::time::timeout(T, async {
        let resp = sent.await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok(status)
    })
    .await
    .ok()
}

/// A TCP connection to `addr`; a failure is counted.
async fn connect(
    addr: SocketAddr,
    what: &str,
    tally: &Tally,
) -> Option<TokioIo<tokio::net::TcpStream>> {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => Some(TokioIo::new(s)),
        Err(e) => {
            tally.record(Err(format!("{what} connect: {e}")));
            None
        }
    }
}

/// HTTP/1.1 keep-alive: requests one after another on a connection, a new
/// connection only once the server has closed the last one cleanly (after
/// a response saying `Connection: close`). A request that fails, on a
/// connection the client believed open, is a failure.
async fn keep_alive(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let Some(io) = connect(addr, "keep-alive", &tally).await else {
                continue;
            };
            match hyper::client::conn::http1::handshake(io).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(e) => {
                    tally.record(Err(format!("keep-alive handshake: {e}")));
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        // Closed by the server after its last response: not a failure.
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        tally.record(match answer(s.send_request(request())).await {
            Some(Ok(status)) if status == 200 => Ok(()),
            Some(Ok(status)) => Err(format!("keep-alive: status {status}")),
            Some(Err(e)) => Err(format!("keep-alive: {e}")),
            None => Err("keep-alive: timed out".to_string()),
        });
    }
}

/// HTTP/2: streams one after another on a connection; after GOAWAY the
/// connection takes no new stream and a new one is made. A stream the
/// server refused unprocessed (opened while its last GOAWAY was on the
/// way: hyper reports it canceled) is retried once on a new connection, as
/// RFC 9113 §8.7 allows and browsers, Go and Envoy do; any other error,
/// or a second one, is a failure.
async fn http2(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> = None;
    let mut retrying = false;
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let Some(io) = connect(addr, "h2", &tally).await else {
                continue;
            };
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(e) => {
                    tally.record(Err(format!("h2 handshake: {e}")));
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        match answer(s.send_request(request())).await {
            Some(Ok(status)) if status == 200 => {
                retrying = false;
                tally.record(Ok::<(), String>(()));
            }
            Some(Ok(status)) => tally.record(Err(format!("h2: status {status}"))),
            Some(Err(e)) if e.is_canceled() && !retrying => {
                retrying = true;
                sender = None;
            }
            Some(Err(e)) => tally.record(Err(format!("h2: {e}"))),
            None => tally.record(Err("h2: timed out".to_string())),
        }
    }
}

/// A new connection per request (`Connection: close`), Ingress or NodePort.
fn one_per_request(addr: SocketAddr, host: &'static str, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tally.record(lab::http_get_host(addr, host, "/", T).map(drop));
    }
}

#[test]
fn an_upgrade_beside_the_running_ingressd_fails_no_request() {
    if !lab::need_root() {
        return;
    }
    let mut lab = Lab::two_nodes("upg").expect("lab");
    lab.start_pods().expect("pods");
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let pods: Vec<&Pod> = lab.pods.iter().collect();
    let ingress = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: demo}}\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - host: {HOST}\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}\n"
    );
    lab::write_manifests(&manifests, &(nodeport_manifests(&pods) + &ingress));
    lab.start_ingressd(Path::new(BIN), "node-a", &manifests)
        .expect("ingressd");
    let node = lab.node("node-a").ip;
    let (proxy, nodeport) = (
        SocketAddr::from((node, 80)),
        SocketAddr::from((node, 30080)),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<(&str, Arc<Tally>)> = [
        "HTTP/1.1 per request",
        "HTTP/1.1 keep-alive",
        "HTTP/2",
        "NodePort (L4)",
    ]
    .into_iter()
    .map(|n| (n, Arc::new(Tally::default())))
    .collect();
    let loops = {
        let stop = stop.clone();
        let t: Vec<Arc<Tally>> = tallies.iter().map(|(_, t)| t.clone()).collect();
        let ns = lab.client_ns.clone();
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let (s0, t0) = (stop.clone(), t[0].clone());
                    let a =
                        tokio::task::spawn_blocking(move || one_per_request(proxy, HOST, s0, t0));
                    let b = tokio::spawn(keep_alive(proxy, stop.clone(), t[1].clone()));
                    let c = tokio::spawn(http2(proxy, stop.clone(), t[2].clone()));
                    let (s3, t3) = (stop.clone(), t[3].clone());
                    let d =
                        tokio::task::spawn_blocking(move || one_per_request(nodeport, "x", s3, t3));
                    let _ = tokio::join!(a, b, c, d);
                });
            })
        })
    };
    let each_got = |n: &[usize]| {
        wait_until(Duration::from_secs(15), || {
            tallies
                .iter()
                .zip(n)
                .all(|((_, t), at_least)| t.ok() >= *at_least)
        })
    };
    let report = |lab: &Lab| {
        let mut out = String::new();
        for (name, t) in &tallies {
            let f = t.failures.lock().unwrap();
            out += &format!(
                "{name}: {} ok, {} failed {:?}\n",
                t.ok(),
                f.len(),
                &f[..f.len().min(3)]
            );
        }
        format!(
            "{out}--- old ingressd ---\n{}\n--- new ingressd ---\n{}",
            lab.ingressd_log_of("node-a", 0),
            lab.ingressd_log_of("node-a", 1)
        )
    };
    assert!(
        each_got(&[20, 20, 20, 20]),
        "loops not running\n{}",
        report(&lab)
    );

    // The new one beside the old, then the old one stopped.
    lab.start_ingressd(Path::new(BIN), "node-a", &manifests)
        .expect("second ingressd");
    let new_up = wait_until(Duration::from_secs(15), || {
        lab.ingressd_log_of("node-a", 1).contains("proxy listening")
    });
    assert!(new_up, "{}", report(&lab));
    let started = Instant::now();
    lab.stop_ingressd("node-a").expect("stop the old one");
    let stopped_in = started.elapsed();
    let now: Vec<usize> = tallies.iter().map(|(_, t)| t.ok() + 20).collect();
    assert!(
        each_got(&now),
        "no traffic after the old one left\n{}",
        report(&lab)
    );
    stop.store(true, Ordering::Relaxed);
    loops.join().expect("loops").expect("netns");

    let failed: usize = tallies
        .iter()
        .map(|(_, t)| t.failures.lock().unwrap().len())
        .sum();
    assert_eq!(failed, 0, "{}", report(&lab));
    let old = lab.ingressd_log_of("node-a", 0);
    assert!(
        old.contains("a new ingressd took the proxy's ports over"),
        "{}",
        report(&lab)
    );
    // It finished by itself, not by the test's SIGKILL after 5 s.
    assert!(old.contains("proxy drained"), "{}", report(&lab));
    assert!(
        stopped_in < Duration::from_secs(5),
        "{stopped_in:?}\n{}",
        report(&lab)
    );
}
