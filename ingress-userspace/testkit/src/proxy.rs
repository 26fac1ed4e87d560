//! A real `ingressd run --no-l4` process on loopback for the proxy's
//! end-to-end tests and benchmarks: started on manifest files in a
//! directory of its own, on ports it picks (read back from its log), ready
//! once `/readyz` says so; killed and cleaned up on drop.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

fn unbound() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

pub fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ingressd run --no-l4`, killed on drop.
pub struct Ingressd {
    pub child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub default_backend: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Drop for Ingressd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Ingressd {
    pub async fn start(bin: &str, manifests: &str) -> Ingressd {
        Self::start_with(bin, manifests, &[]).await
    }

    pub async fn start_with(bin: &str, manifests: &str, extra: &[&str]) -> Ingressd {
        Self::start_limited(bin, manifests, extra, None).await
    }

    /// With RLIMIT_NOFILE at `nofile` (soft and hard), when given.
    pub async fn start_limited(
        bin: &str,
        manifests: &str,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Ingressd {
        let dir = std::env::temp_dir().join(format!(
            "ingressd-l7-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("m")).unwrap();
        write(&dir.join("m"), manifests);
        let log = dir.join("ingressd.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["run", "--no-l4", "--manifests"])
            .arg(dir.join("m"))
            // The endpoints are echo servers on 127.0.0.x (no namespaces).
            .arg("--allow-loopback-endpoints")
            .args(extra)
            // Port 0: ingressd picks free ports and logs them (no races with
            // other tests picking ports).
            .args(["--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
            .args(["--default-backend-addr", "127.0.0.1:0"])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--upstream-connect-timeout",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ingressd");
        let mut d = Ingressd {
            child,
            http: unbound(),
            https: unbound(),
            default_backend: unbound(),
            metrics: unbound(),
            dir,
            log,
        };
        // The bound addresses are in the log; then wait for /readyz.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            assert!(
                d.child.try_wait().ok().flatten().is_none(),
                "ingressd exited:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            let field = |name: &str| crate::wait::logged_addr(&log, name);
            if let (Some(h), Some(s), Some(db), Some(m)) = (
                field("http"),
                field("https"),
                field("default_backend"),
                field("metrics"),
            ) {
                (d.http, d.https, d.default_backend, d.metrics) = (h, s, db, m);
                if let Ok((200, _)) = get(d.metrics, "/readyz", None).await {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "ingressd not ready:\n{}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
    }

    pub async fn syncs(&self) -> u64 {
        self.metric("ingressd_syncs_total").await.unwrap_or(0)
    }

    /// A metric without labels from /metrics; None while unreadable.
    pub async fn metric<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        let text = get(self.metrics, "/metrics", None).await.ok()?.1;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Writes new manifests and waits (bounded) until ingressd applied them.
    pub async fn update(&self, manifests: &str) {
        let before = self.syncs().await;
        write(&self.dir.join("m"), manifests);
        assert!(
            crate::wait::eventually(Duration::from_secs(2), async || self.syncs().await > before)
                .await,
            "change not applied within 2 s"
        );
    }
}

/// Replaces the manifests in `dir` at once (a rename: no half-written file
/// is ever read).
pub fn write(dir: &Path, text: &str) {
    let tmp = dir.join(".all.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("all.yaml")).unwrap();
}

/// One HTTP/1.1 request on a fresh client: (status, body).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
) -> Result<(u16, String), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    crate::wait::status_and_body(resp).await
}
