//! `cargo xtask bench l7`: the proxy side by side with nginx (Debian's
//! package) configured with the same hosts, paths and upstream, and with the
//! upstream alone (the limit), with keep-alive and with a new connection per
//! request; the same routes as Gateway API HTTPRoutes next to them; then the
//! time to compile and swap a table of 10,000 Ingress rules, and the time
//! from an HTTPRoute change at the API server to its first request served
//! with 5,000 HTTPRoutes in place (under load, failures counted).
//!
//! Everything runs on loopback: the upstream is an nginx answering a fixed
//! body, the load comes from this process (closed loop, bounded in count
//! and time). Ratios matter; absolute numbers depend on the machine.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use ingressd::{
    cluster::{ClassConfig, Snapshot},
    l7::route::compile,
    source::files::parse_file,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const REQUESTS: usize = 50_000;
const CONCURRENCY: usize = 32;
const TIME_LIMIT: Duration = Duration::from_secs(30);
const ROUNDS: usize = 5;

/// The run with the median throughput.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    /// SIGTERM first: nginx's master then stops its workers (a SIGKILLed
    /// master leaves them running); SIGKILL if it takes too long.
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("nothing listening on {addr}")
}

fn nginx(dir: &Path, name: &str, conf_body: &str) -> anyhow::Result<Proc> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {p};\n proxy_temp_path {p};\n {conf_body}\n}}\n",
            p = prefix.display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&prefix)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proc(child))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
    /// Requests answered.
    done: usize,
}

/// CPU time (user + system) a process and its children (nginx's workers)
/// have used so far, from /proc: the proxy's cost per request, which the
/// load and the upstream sharing this machine do not blur as they blur
/// throughput.
fn cpu_time(pid: u32) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: u64 = ticks(pid)
        + children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .map(ticks)
            .sum::<u64>();
    Duration::from_secs_f64(total as f64 / hz)
}

/// Closed-loop load: CONCURRENCY workers, REQUESTS in all (or TIME_LIMIT).
/// Requests are written and responses read by hand, as wrk does, so that
/// the load costs little next to what it measures: with a client library
/// the load itself is what runs out of CPU first on a new connection per
/// request, and every target looks alike.
async fn load(addr: SocketAddr, request: Vec<u8>) -> Run {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keepalive = !request.windows(17).any(|w| w == b"Connection: close");
    let request = Arc::new(request);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut buf = Vec::with_capacity(4096);
            let mut conn: Option<TcpStream> = None;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < REQUESTS
                && started.elapsed() < TIME_LIMIT
            {
                let t = Instant::now();
                let stream = match conn.as_mut() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            conn.insert(s)
                        }
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    },
                };
                match exchange(stream, &request, &mut buf).await {
                    Ok(reusable) => {
                        lat.push(t.elapsed());
                        if !(reusable && keepalive) {
                            conn = None;
                        }
                    }
                    Err(()) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        lat.extend(l);
        errors += e;
    }
    let took = started.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        rps: lat.len() as f64 / took.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
        done: lat.len(),
    }
}

/// `GET path` to `host`, with `extra` header lines (each ending in CRLF).
fn request(host: &str, path: &str, keepalive: bool, extra: &str) -> Vec<u8> {
    let close = if keepalive {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}{close}\r\n").into_bytes()
}

/// What a returning browser sends to the features round's host: its
/// session cookie and its Origin.
const FEATURES_HEADERS: &str =
    "Cookie: INGRESSCOOKIE=0123456789abcdef\r\nOrigin: https://app.test\r\n";

/// One request and its response: Ok(whether the connection may be reused)
/// for a 200 whose whole body (by Content-Length, which the upstream and
/// both proxies send here) came; Err for anything else.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<bool, ()> {
    stream.write_all(request).await.map_err(drop)?;
    buf.clear();
    let (end, reusable) = loop {
        if stream.read_buf(buf).await.map_err(drop)? == 0 {
            return Err(());
        }
        if let Some(framed) = response_head(buf)? {
            break framed;
        }
    };
    while buf.len() < end {
        if stream.read_buf(buf).await.map_err(drop)? == 0 {
            return Err(());
        }
    }
    Ok(reusable)
}

/// The end of the response in `buf` (head and body) and whether its
/// connection may be reused; None while the head is partial.
fn response_head(buf: &[u8]) -> Result<Option<(usize, bool)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).map_err(drop)? else {
        return Ok(None);
    };
    if resp.code != Some(200) {
        return Err(());
    }
    let mut length = None;
    let mut reusable = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("connection") {
            reusable = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((head + length.ok_or(())?, reusable)))
}

const INGRESS: &str = r#"
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
      - {path: /, pathType: Prefix, backend: {service: {name: up, port: {number: 80}}}}
      - {path: /cart, pathType: Prefix, backend: {service: {name: up, port: {number: 80}}}}
"#;

/// The features round's host for ingressd: the same canary, affinity and
/// CORS as the nginx server block, by annotations.
const FEATURES: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: up-canary}
spec:
  ports: [{port: 80, targetPort: {up_port}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up-canary-1, labels: {kubernetes.io/service-name: up-canary}}
addressType: IPv4
ports: [{port: {up_port}}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: features
  annotations:
    nginx.ingress.kubernetes.io/affinity: cookie
    nginx.ingress.kubernetes.io/enable-cors: "true"
    nginx.ingress.kubernetes.io/cors-allow-origin: https://app.test
spec:
  ingressClassName: ebpf
  rules:
  - host: features.test
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: up, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: features-canary
  annotations:
    nginx.ingress.kubernetes.io/canary: "true"
    nginx.ingress.kubernetes.io/canary-by-header: X-Canary
    nginx.ingress.kubernetes.io/canary-by-cookie: beta
    nginx.ingress.kubernetes.io/canary-weight: "20"
spec:
  ingressClassName: ebpf
  rules:
  - host: features.test
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: up-canary, port: {number: 80}}}}
"#;

fn ten_thousand_rules() -> Snapshot {
    let mut yaml = String::new();
    for i in 0..100 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"10.1.{}.{}\"]}}]\n",
            i / 200,
            i % 200 + 1
        ));
    }
    for i in 0..1000 {
        let paths: String = (0..10)
            .map(|j| format!("      - {{path: /p{j}, pathType: Prefix, backend: {{service: {{name: s{}, port: {{number: 80}}}}}}}}\n", (i + j) % 100))
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i{i}}}\nspec:\n  ingressClassName: ebpf\n  rules:\n  - host: h{i}.test\n    http:\n      paths:\n{paths}"
        ));
    }
    let (objects, errors, _) = parse_file(Path::new("bench.yaml"), &yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let mut snap = Snapshot::default();
    for o in objects {
        snap.insert(o);
    }
    snap
}

/// ingress-nginx's `upstreaminfo` log format, for nginx with its log on.
const UPSTREAMINFO: &str = "log_format upstreaminfo '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length $request_time [$proxy_host] [] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $request_id';";

/// Hosts beside shop.test in both proxies' configurations, as a cluster
/// with many Ingresses has them.
const EXTRA_HOSTS: usize = 1000;

/// One proxy under test.
struct Target {
    name: String,
    addr: SocketAddr,
    /// Whose CPU time is counted (None: the upstream itself).
    pid: Option<u32>,
    /// The nginx it is compared with (its index in the list).
    versus: Option<usize>,
    /// Serves features.test (the features round).
    features: bool,
}

/// Gateway API objects for an ingressd serving HTTP on `port`: a Gateway
/// of our class, and shop.test and the extra hosts as HTTPRoutes (/ and
/// /cart to `up`, as the Ingresses have them).
fn http_routes(port: u16, extra_hosts: usize) -> String {
    let mut out = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ebpf}}\nspec: {{controllerName: ingress-ebpf/gateway-controller}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\n\
         spec: {{gatewayClassName: ebpf, listeners: [{{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]}}\n"
    );
    let route = |name: &str, host: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{parentRefs: [{{name: gw}}], hostnames: [{host}], rules: [\
             {{matches: [{{path: {{type: PathPrefix, value: /}}}}], backendRefs: [{{name: up, port: 80}}]}}, \
             {{matches: [{{path: {{type: PathPrefix, value: /cart}}}}], backendRefs: [{{name: up, port: 80}}]}}]}}\n"
        )
    };
    out += &route("shop", "shop.test");
    for i in 0..extra_hosts {
        out += &route(&format!("x{i}"), &format!("h{i}.test"));
    }
    out
}

fn nginx_proxy(
    dir: &Path,
    name: &str,
    up_port: u16,
    log: Option<&Path>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // The same request headers as ingressd sets (those ingress-nginx's
    // template sets, and Via): both proxies do the same work, and the
    // upstream gets the same requests from both.
    let locations = "proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;\n\
         proxy_set_header X-Request-ID $request_id; proxy_set_header X-Forwarded-For $remote_addr;\n\
         proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-Host $host;\n\
         proxy_set_header X-Forwarded-Port $server_port; proxy_set_header X-Forwarded-Proto $scheme;\n\
         proxy_set_header Via \"1.1 nginx\";\n\
         location / { proxy_pass http://up; }\n\
         location /cart { proxy_pass http://up; }";
    let mut servers = format!(
        "server {{ listen 127.0.0.1:{port}; server_name shop.test; keepalive_requests 100000;\n{locations} }}\n"
    );
    for i in 0..EXTRA_HOSTS {
        servers.push_str(&format!(
            "server {{ listen 127.0.0.1:{port}; server_name h{i}.test; {locations} }}\n"
        ));
    }
    // The features round's host, configured by hand as ingress-nginx's
    // annotations would have it: a canary taking X-Canary always/never,
    // then the beta cookie, then 20 %; the session cookie hashed over the
    // endpoints (nginx has no sticky cookie of its own: the hash is what
    // keeps a session on one endpoint); CORS headers for a listed Origin.
    servers.push_str(&format!(
        "map $http_x_canary $by_header {{ always canary_up; never main_up; default $by_cookie; }}\n\
         map $cookie_beta $by_cookie {{ always canary_up; never main_up; default $by_weight; }}\n\
         split_clients \"$request_id\" $by_weight {{ 20% canary_up; * main_up; }}\n\
         map $http_origin $cors_origin {{ https://app.test $http_origin; default \"\"; }}\n\
         upstream main_up {{ hash $cookie_INGRESSCOOKIE consistent; server 127.0.0.1:{up_port}; keepalive 320; }}\n\
         upstream canary_up {{ hash $cookie_INGRESSCOOKIE consistent; server 127.0.0.1:{up_port}; keepalive 320; }}\n\
         server {{ listen 127.0.0.1:{port}; server_name features.test; keepalive_requests 100000;\n\
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;\n\
         proxy_set_header X-Request-ID $request_id; proxy_set_header X-Forwarded-For $remote_addr;\n\
         proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-Host $host;\n\
         proxy_set_header X-Forwarded-Port $server_port; proxy_set_header X-Forwarded-Proto $scheme;\n\
         proxy_set_header Via \"1.1 nginx\";\n\
         location /cart {{\n\
         if ($request_method = OPTIONS) {{ return 204; }}\n\
         add_header Access-Control-Allow-Origin $cors_origin always;\n\
         add_header Access-Control-Allow-Credentials true always;\n\
         add_header Access-Control-Allow-Methods \"GET, PUT, POST, DELETE, PATCH, OPTIONS\" always;\n\
         add_header Access-Control-Allow-Headers \"DNT,X-CustomHeader,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Authorization\" always;\n\
         add_header Access-Control-Max-Age 1728000 always;\n\
         add_header Vary Origin always;\n\
         proxy_pass http://$by_header; }} }}\n"
    ));
    let access = match log {
        Some(path) => format!(
            "{UPSTREAMINFO}\naccess_log {} upstreaminfo buffer=64k;",
            path.display()
        ),
        None => "access_log off;".into(),
    };
    let conf = format!(
        "server_names_hash_bucket_size 128; server_names_hash_max_size 4096;\n{access}\n\
         upstream up {{ server 127.0.0.1:{up_port}; keepalive 320; }}\n{servers}"
    );
    let proc = nginx(dir, name, &conf)?;
    wait_listening(addr)?;
    Ok((proc, addr))
}

/// An ingressd on the shared manifests, or on its own: `own` gives them
/// for the HTTP port it serves on.
fn ingressd_proxy(
    bin: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
    own: Option<&dyn Fn(u16) -> String>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let (ours, https, dflt, metrics) = (free_port(), free_port(), free_port(), free_port());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ours));
    let manifests = match own {
        Some(text) => {
            let d = dir.join(format!("{name}-manifests"));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("all.yaml"), text(ours))?;
            d
        }
        None => dir.join("manifests"),
    };
    let child = Command::new(bin)
        .args([
            "run",
            "--no-l4",
            "--allow-loopback-endpoints",
            "--manifests",
        ])
        .arg(manifests)
        .args(["--http-addr", &addr.to_string()])
        .args(["--https-addr", &format!("127.0.0.1:{https}")])
        .args(["--default-backend-addr", &format!("127.0.0.1:{dflt}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        // One worker, as the nginx it is compared with (worker_processes 1).
        .args(["--workers", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.stderr")))?)
        .spawn()?;
    let proc = Proc(child);
    wait_listening(addr)?;
    Ok((proc, addr))
}

fn main() -> anyhow::Result<()> {
    let have_nginx = Command::new("sh")
        .args(["-c", "command -v nginx"])
        .output()?
        .status
        .success();
    anyhow::ensure!(
        have_nginx,
        "nginx is not installed (apt-get install nginx-light); `cargo xtask bench l7` installs it"
    );
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/ingressd");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: run `cargo build --release -p ingress-userspace` (cargo xtask bench l7 does)",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("ingressd-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests"))?;
    // `cargo bench --bench l7 -- route-change`: that round alone.
    let only_route_change = std::env::args().any(|a| a == "route-change");

    // The upstream: nginx answering "ok".
    let up_port = free_port();
    let up = SocketAddr::from((Ipv4Addr::LOCALHOST, up_port));
    let _upstream = nginx(
        &dir,
        "upstream",
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 100000; location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    )?;
    wait_listening(up)?;
    if only_route_change {
        gateway_compile(up_port);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(route_change(&bin, &dir, up_port))?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    // The same rules for ingressd: shop.test and the extra hosts.
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: up}}\nspec:\n  ports: [{{port: 80, targetPort: {up_port}}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: up-1, labels: {{kubernetes.io/service-name: up}}}}\n\
         addressType: IPv4\nports: [{{port: {up_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    );
    let mut manifests = svc.clone() + INGRESS;
    for i in 0..EXTRA_HOSTS {
        manifests.push_str(
            &INGRESS
                .replace("name: shop", &format!("name: x{i}"))
                .replace("shop.test", &format!("h{i}.test")),
        );
    }
    manifests.push_str(&FEATURES.replace("{up_port}", &up_port.to_string()));
    std::fs::write(dir.join("manifests/all.yaml"), manifests)?;

    // Each proxy with its access log off and on (to a file, in
    // ingress-nginx's upstreaminfo format, in both), and ingressd also
    // with its HTTP/1 fast path off.
    let log_file = |n: &str| dir.join(format!("{n}.access.log"));
    let mut procs = Vec::new();
    let mut targets = vec![Target {
        name: "upstream directly (the limit)".into(),
        addr: up,
        pid: None,
        versus: None,
        features: false,
    }];
    let gateway_manifests = |port: u16| svc.clone() + &http_routes(port, EXTRA_HOSTS);
    for logged in [false, true] {
        let tag = if logged { "logs on" } else { "logs off" };
        let name = format!("nginx-{}", if logged { "log" } else { "nolog" });
        let (p, addr) = nginx_proxy(
            &dir,
            &name,
            up_port,
            logged.then(|| log_file(&name)).as_deref(),
        )?;
        let nginx_at = targets.len();
        targets.push(Target {
            name: format!("nginx 1.22, {tag}"),
            addr,
            pid: Some(p.0.id()),
            versus: None,
            features: true,
        });
        procs.push(p);
        for fast in [true, false] {
            let name = format!(
                "ingressd-{}-{}",
                if fast { "fast" } else { "hyper" },
                if logged { "log" } else { "nolog" }
            );
            let log = log_file(&name);
            let mut extra: Vec<&str> = Vec::new();
            let log_arg = log.display().to_string();
            if logged {
                extra.extend(["--access-log", &log_arg]);
            } else {
                extra.extend(["--access-log", "false"]);
            }
            if !fast {
                extra.extend(["--http1-fast-path", "false"]);
            }
            let (p, addr) = ingressd_proxy(&bin, &dir, &name, &extra, None)?;
            targets.push(Target {
                name: format!(
                    "ingressd{}, {tag}",
                    if fast { "" } else { " --http1-fast-path=false" }
                ),
                addr,
                pid: Some(p.0.id()),
                versus: Some(nginx_at),
                features: true,
            });
            procs.push(p);
        }
        // The same routes as HTTPRoutes (Gateway API).
        let name = format!("ingressd-gateway-{}", if logged { "log" } else { "nolog" });
        let log = log_file(&name).display().to_string();
        let extra = if logged {
            ["--access-log", log.as_str()]
        } else {
            ["--access-log", "false"]
        };
        let (p, addr) = ingressd_proxy(&bin, &dir, &name, &extra, Some(&gateway_manifests))?;
        targets.push(Target {
            name: format!("ingressd, HTTPRoutes, {tag}"),
            addr,
            pid: Some(p.0.id()),
            versus: Some(nginx_at),
            features: false,
        });
        procs.push(p);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Ready means routes are in: wait for a 200 through each.
    for t in &targets {
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.block_on(load_one(t.addr)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never routed shop.test",
                t.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    println!(
        "HTTP proxying on loopback: {REQUESTS} GET /cart (Host shop.test, {EXTRA_HOSTS} other hosts configured) per run, {CONCURRENCY} concurrent clients, median of {ROUNDS} interleaved runs"
    );
    println!(
        "{:<58} {:>9} {:>8} {:>8} {:>6}  {:>8} {:>8}  {:>10} {:>9}",
        "", "req/s", "p50 ms", "p99 ms", "errors", "rps x", "p99 x", "CPU us/req", "CPU x"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for keepalive in [true, false] {
        let mode = if keepalive {
            "keep-alive"
        } else {
            "new connection"
        };
        // Interleaved rounds, the median of each: this machine is shared by
        // the load, the upstream and the proxies, and single runs are noisy.
        let mut rounds: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
        // Each proxy's CPU time over all its rounds, and what it answered.
        let mut cpu = vec![(Duration::ZERO, 0usize); targets.len()];
        for _ in 0..ROUNDS {
            for (i, t) in targets.iter().enumerate() {
                let before = t.pid.map(cpu_time);
                let req = request("shop.test", "/cart", keepalive, "");
                let run = rt.block_on(load(t.addr, req));
                if let (Some(pid), Some(before)) = (t.pid, before) {
                    cpu[i].0 += cpu_time(pid).saturating_sub(before);
                    cpu[i].1 += run.done;
                }
                rounds[i].push(run);
            }
        }
        let per_request: Vec<Option<f64>> = cpu
            .iter()
            .map(|(t, n)| (*n > 0).then(|| t.as_secs_f64() * 1e6 / *n as f64))
            .collect();
        let runs: Vec<Run> = rounds.into_iter().map(median).collect();
        for (i, t) in targets.iter().enumerate() {
            let base = t.versus.map(|n| (&runs[n], per_request[n]));
            row(
                &format!("{}, {mode}", t.name),
                &runs[i],
                per_request[i],
                base,
            );
        }
    }
    println!(
        "(ratios are against the nginx with the same logging: rps above 1, p99 and CPU below 1 mean ingressd does better; CPU is the proxy's user+system time over all its rounds, its log thread included)"
    );

    // The same with the annotations ingress-nginx users turn on: a canary
    // (header, cookie, 20 %), cookie affinity and CORS, on features.test,
    // requests carrying a session cookie and an Origin.
    println!(
        "\nfeatures on (canary by header/cookie/20 %, cookie affinity, CORS), keep-alive, GET /cart on features.test with a session cookie and an Origin, median of {ROUNDS}"
    );
    let proxies: Vec<usize> = (0..targets.len())
        .filter(|i| targets[*i].pid.is_some() && targets[*i].features)
        .collect();
    let mut rounds: Vec<Vec<Run>> = proxies.iter().map(|_| Vec::new()).collect();
    let mut cpu = vec![(Duration::ZERO, 0usize); proxies.len()];
    for _ in 0..ROUNDS {
        for (k, &i) in proxies.iter().enumerate() {
            let t = &targets[i];
            let before = t.pid.map(cpu_time);
            let req = request("features.test", "/cart", true, FEATURES_HEADERS);
            let run = rt.block_on(load(t.addr, req));
            if let (Some(pid), Some(before)) = (t.pid, before) {
                cpu[k].0 += cpu_time(pid).saturating_sub(before);
                cpu[k].1 += run.done;
            }
            rounds[k].push(run);
        }
    }
    let runs: Vec<Run> = rounds.into_iter().map(median).collect();
    let per_request: Vec<Option<f64>> = cpu
        .iter()
        .map(|(t, n)| (*n > 0).then(|| t.as_secs_f64() * 1e6 / *n as f64))
        .collect();
    for (k, &i) in proxies.iter().enumerate() {
        let t = &targets[i];
        let versus = t.versus.and_then(|n| proxies.iter().position(|&p| p == n));
        let base = versus.map(|n| (&runs[n], per_request[n]));
        row(
            &format!("{}, features", t.name),
            &runs[k],
            per_request[k],
            base,
        );
    }
    for t in &targets {
        if let Some(pid) = t.pid {
            println!(
                "memory after the runs: {} {} KiB RSS",
                t.name,
                rss_kib(pid) + children_rss(pid)
            );
        }
    }

    // Route updates: compile and swap a table of 10,000 rules.
    let snap = ten_thousand_rules();
    let class = ClassConfig::default();
    let mut best = Duration::MAX;
    let proxy = ingressd::l7::Proxy::new(Default::default());
    for _ in 0..5 {
        let t = Instant::now();
        let (table, warnings) = compile(&snap, &class);
        assert!(warnings.is_empty());
        assert_eq!(table.len(), 10_000);
        proxy.swap_routes(table);
        best = best.min(t.elapsed());
    }
    println!(
        "route update: 10,000 Ingress rules (1,000 Ingresses × 10 paths) compiled and swapped in {:.1} ms (best of 5)",
        ms(best)
    );
    drop(procs);
    gateway_compile(up_port);
    rt.block_on(route_change(&bin, &dir, up_port))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// HTTPRoutes in place for the route-change round.
const ROUTES_IN_PLACE: usize = 5_000;

/// The in-process part of a route change: ROUTES_IN_PLACE HTTPRoutes (two
/// rules each) compiled into a table and swapped into a proxy, best of 5.
fn gateway_compile(up_port: u16) {
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: up}}\nspec:\n  ports: [{{port: 80, targetPort: {up_port}}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: up-1, labels: {{kubernetes.io/service-name: up}}}}\n\
         addressType: IPv4\nports: [{{port: {up_port}}}]\nendpoints: [{{addresses: [\"10.1.0.1\"]}}]\n"
    );
    let yaml = svc + &http_routes(80, ROUTES_IN_PLACE);
    let snap = ingressd::source::files::snapshot_of(&yaml).expect("bench manifests");
    let class = ClassConfig::default();
    let proxy = ingressd::l7::Proxy::new(Default::default());
    let (mut best, mut best_compile) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        let (table, _) = compile(&snap, &class);
        let compiled = t.elapsed();
        assert_eq!(table.gateway.rules.len(), 2 * (ROUTES_IN_PLACE + 1));
        proxy.swap_routes(table);
        best = best.min(t.elapsed());
        best_compile = best_compile.min(compiled);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "route update: {} HTTPRoutes ({} rules) compiled in {:.1} ms, and swapped in {:.1} ms in all (best of 5)",
        ROUTES_IN_PLACE + 1,
        2 * (ROUTES_IN_PLACE + 1),
        ms(best_compile),
        ms(best)
    );
}

/// One GET to `host` on a kept connection (made again when it is lost):
/// the status, or None when no answer came.
async fn get_status(conn: &mut Option<TcpStream>, addr: SocketAddr, host: &str) -> Option<u16> {
    if conn.is_none() {
        *conn = TcpStream::connect(addr).await.ok();
    }
    let stream = conn.as_mut()?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut buf = Vec::with_capacity(1024);
    let answer = async {
        stream.write_all(req.as_bytes()).await.ok()?;
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = resp.parse(&buf).ok()? else {
                continue;
            };
            let status = resp.code?;
            // Read the body (Content-Length) so the connection stays usable.
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head + len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(status);
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .ok()
        .flatten();
    if got.is_none() {
        *conn = None;
    }
    got
}

/// The time from an HTTPRoute change at the API server (a hostname added)
/// to the first request served for it, with ROUTES_IN_PLACE HTTPRoutes
/// served, while a client keeps requesting another route: ingressd in
/// its default configuration on a (fake) API server, as in a cluster.
async fn route_change(bin: &Path, dir: &Path, up_port: u16) -> anyhow::Result<()> {
    use testkit::fakeapi::FakeApi;
    let api = FakeApi::start().await;
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut yaml = String::new();
    for plural in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "referencegrants",
    ] {
        yaml += &format!(
            "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
             metadata: {{name: {plural}.gateway.networking.k8s.io, labels: {{gateway.networking.k8s.io/bundle-version: v1.4.0}}}}\n"
        );
    }
    yaml += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: up, namespace: default}}\nspec:\n  ports: [{{port: 80, targetPort: {up_port}}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: up-1, namespace: default, labels: {{kubernetes.io/service-name: up}}}}\n\
         addressType: IPv4\nports: [{{port: {up_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    );
    yaml += &http_routes(port, ROUTES_IN_PLACE);
    api.apply_yaml(&yaml);
    let kubeconfig = api.kubeconfig(dir);
    let child = Command::new(bin)
        .args([
            "run",
            "--no-l4",
            "--allow-loopback-endpoints",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .args(["--http-addr", &addr.to_string()])
        .args(["--https-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--default-backend-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--access-log", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("route-change.stderr"))?)
        .spawn()?;
    let _proc = Proc(child);
    let mut conn = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_status(&mut conn, addr, "h1.test").await != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the HTTPRoutes were never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client on another route all along: every answer must be a 200.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut conn = None;
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
            {
                match get_status(&mut conn, addr, "h1.test").await {
                    Some(200) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let mut took = Vec::new();
    for k in 0..ROUNDS {
        let host = format!("changed{k}.test");
        anyhow::ensure!(get_status(&mut conn, addr, &host).await == Some(404));
        api.apply_yaml(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: x{k}, namespace: default}}\n\
             spec: {{parentRefs: [{{name: gw}}], hostnames: [h{k}.test, {host}], rules: [{{backendRefs: [{{name: up, port: 80}}]}}]}}\n"
        ));
        let changed = Instant::now();
        let deadline = changed + Duration::from_secs(10);
        while get_status(&mut conn, addr, &host).await != Some(200) {
            anyhow::ensure!(Instant::now() < deadline, "{host} never served");
        }
        took.push(changed.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await?;
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "route change: {ROUTES_IN_PLACE} HTTPRoutes in place, an HTTPRoute changed at the API server → its first request served: median {:.1} ms, max {:.1} ms ({ROUNDS} changes); meanwhile {ok} requests to another route, {failed} failed",
        ms(took[took.len() / 2]),
        ms(took[took.len() - 1]),
    );
    Ok(())
}

/// One line of results: a run, its CPU time per request, and its ratios
/// to `base` (the nginx it is compared with), if any.
fn row(label: &str, r: &Run, us: Option<f64>, base: Option<(&Run, Option<f64>)>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (rps_x, p99_x, cpu_x) = match base {
        Some((b, b_us)) => (
            format!("{:.2}x", r.rps / b.rps),
            format!("{:.2}x", ms(r.p99) / ms(b.p99)),
            match (us, b_us) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".into(),
            },
        ),
        None => ("".into(), "".into(), "".into()),
    };
    println!(
        "{:<58} {:>9.0} {:>8.2} {:>8.2} {:>6}  {:>8} {:>8}  {:>10} {:>9}",
        label,
        r.rps,
        ms(r.p50),
        ms(r.p99),
        r.errors,
        rps_x,
        p99_x,
        us.map_or("-".to_string(), |us| format!("{us:.1}")),
        cpu_x
    );
}

async fn load_one(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    exchange(
        &mut stream,
        &request("shop.test", "/cart", false, ""),
        &mut buf,
    )
    .await
    .map_err(|()| anyhow::anyhow!("no 200 for /cart: {}", String::from_utf8_lossy(&buf)))?;
    Ok(())
}

/// RSS of a process's children (nginx workers).
fn children_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .map(rss_kib)
        .sum()
}
