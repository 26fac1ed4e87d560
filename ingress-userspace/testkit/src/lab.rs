//! A lab of network namespaces on one machine: a client, two nodes and
//! pods, joined by a bridge, with addresses from 198.18.0.0/15. Used by the
//! end-to-end tests and by `cargo xtask demo`. Everything it makes is
//! removed on drop, also when a test fails.
//!
//! Each node also has a cgroup v2 directory of its own, under the
//! machine's cgroup2 root: its pods' processes and the clients run "on" it
//! are started inside, and its `ingressd` attaches the socket programs
//! there (never to the machine's root cgroup).
//!
//! ```text
//!  client 198.18.0.1 ──┐            ┌── node-a 198.18.0.2 ── cbr0 198.18.1.1/24 ── pods 198.18.1.x
//!                      └── br0 (sw) ┤
//!                                   └── node-b 198.18.0.3 ── cbr0 198.18.2.1/24 ── pods 198.18.2.x
//! ```
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// A node of the lab.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub pin_path: PathBuf,
    pub metrics: SocketAddr,
    /// This node's cgroup: its pods and host processes, where its
    /// `ingressd` attaches the socket programs.
    pub cgroup: PathBuf,
}

/// A pod: a namespace with one address, running the echo server.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub node: String,
}

/// How the lab's nodes are built, beyond the common topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The switch's end of each node's uplink runs an XDP program (so
    /// native XDP on the node can send back out of it); false: as on a
    /// kind or container node, whose veth peer runs nothing.
    pub peer_xdp: bool,
    /// How each node reaches the other's pods.
    pub pod_routes: PodRoutes,
}

/// How each node reaches the other's pod network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRoutes {
    /// Through the other node's address on the shared link.
    Direct,
    /// Through a VXLAN device (VNI 42, UDP 4789 over the uplinks), routes
    /// `via` the other end `onlink`, as flannel's vxlan backend sets up.
    Vxlan,
    /// Through a Linux bridge on a second link between the nodes.
    Bridge,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            peer_xdp: true,
            pod_routes: PodRoutes::Direct,
        }
    }
}

pub struct Lab {
    pub shape: Shape,
    pub prefix: String,
    pub client_ns: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub dir: PathBuf,
    /// Run before `ingressd` on the node (inside nsenter), e.g. `setpriv`
    /// to start it with fewer capabilities.
    pub wrapper: Vec<String>,
    res: Arc<Mutex<Resources>>,
}

/// Everything the lab made, released once: on drop, or from a signal
/// handler's thread through [`Lab::resources`].
#[derive(Default)]
pub struct Resources {
    namespaces: Vec<String>,
    pods: Vec<Child>,
    daemons: Vec<(String, Child)>,
    pins: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Resources {
    /// Stops every process, removes every pin, namespace and file. Idempotent.
    pub fn release(&mut self) {
        for (_, child) in &mut self.daemons {
            terminate(child);
        }
        self.daemons.clear();
        for child in &mut self.pods {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pods.clear();
        for pin in self.pins.drain(..) {
            let _ = ingressd::kernel::cleanup(&pin);
        }
        // Empty by now: every process that was in one has been stopped.
        for cg in self.cgroups.drain(..).rev() {
            let _ = std::fs::remove_dir(&cg);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// The pods' server: HTTP on 8080 and UDP on 5353, both answering with
/// the pod's name (and on `/whoami`, after it, the client's address as the
/// pod sees it). Plain Python so pods need nothing built.
const ECHO_SERVER: &str = r#"
import http.server, socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5353))
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto((name + "\n").encode(), peer)
threading.Thread(target=udp, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # /whoami: the pod's name and the address the request came from.
        who = (" " + self.client_address[0]) if self.path == "/whoami" else ""
        body = (name + who + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// True as root; otherwise says that the end-to-end test skips and how to
/// run it.
pub fn need_root() -> bool {
    if !is_root() {
        eprintln!(
            "SKIPPED: end-to-end tests make network namespaces and cgroups and load BPF; run as root: `sudo -E cargo xtask test`"
        );
        return false;
    }
    true
}

/// Writes `services.yaml` in `dir` atomically (as ConfigMap mounts do),
/// so ingressd never reads half a file.
pub fn write_manifests(dir: &Path, text: &str) {
    let tmp = dir.join(".services.yaml.tmp");
    std::fs::write(&tmp, text).expect("writing manifests");
    std::fs::rename(&tmp, dir.join("services.yaml")).expect("renaming manifests");
}

/// Polls `cond` until it holds or `timeout` passes; the bound is the point.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// Two nodes with pods `a1`, `a2` on node-a and `b1`, `b2` on node-b.
    pub fn two_nodes(tag: &str) -> anyhow::Result<Lab> {
        Self::two_nodes_shaped(tag, Shape::default())
    }

    /// The same, built as `shape` says.
    pub fn two_nodes_shaped(tag: &str, shape: Shape) -> anyhow::Result<Lab> {
        if !is_root() {
            bail!("the lab makes network namespaces and needs root");
        }
        let prefix = format!(
            "ie{tag}{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("echo.py"), ECHO_SERVER)?;
        let mut lab = Lab {
            shape,
            wrapper: Vec::new(),
            client_ns: format!("{prefix}-client"),
            prefix: prefix.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
            res: Arc::new(Mutex::new(Resources {
                dir: Some(dir.clone()),
                ..Default::default()
            })),
            dir,
        };
        lab.build()
            .with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    /// The lab's resources, for a signal handler that must clean up.
    pub fn resources(&self) -> Arc<Mutex<Resources>> {
        self.res.clone()
    }

    fn res(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.res.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.res().namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        run(&mut cmd)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        let pins = vec![
            self.sw_pins(),
            PathBuf::from(format!("/sys/fs/bpf/{p}-node-a")),
            PathBuf::from(format!("/sys/fs/bpf/{p}-node-b")),
        ];
        self.res().pins.extend(pins);
        let cgroup_root = ingressd::kernel::default_cgroup()?;
        let sw = format!("{p}-sw");
        self.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let client = self.client_ns.clone();
        self.add_ns(&client)?;
        self.uplink(&client, &sw, "vc", CLIENT_IP)?;
        for (i, letter) in ["a", "b"].iter().enumerate() {
            let name = format!("node-{letter}");
            let ns = format!("{p}-{name}");
            let node_ip = Ipv4Addr::new(198, 18, 0, 2 + i as u8);
            self.add_ns(&ns)?;
            let cgroup = cgroup_root.join(format!("{p}-{name}"));
            std::fs::create_dir(&cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            self.res().cgroups.push(cgroup.clone());
            self.uplink(&ns, &sw, &format!("v{letter}"), node_ip)?;
            self.exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let gw = Ipv4Addr::new(198, 18, 1 + i as u8, 1);
            ip(&["-n", &ns, "link", "add", "cbr0", "type", "bridge"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{gw}/24"), "dev", "cbr0"])?;
            ip(&["-n", &ns, "link", "set", "cbr0", "up"])?;
            for j in 1..=2u8 {
                let pod = format!("{letter}{j}");
                let pod_ns = format!("{p}-pod-{pod}");
                let pod_ip = Ipv4Addr::new(198, 18, 1 + i as u8, 1 + j);
                self.add_ns(&pod_ns)?;
                ip(&[
                    "link", "add", "eth0", "netns", &pod_ns, "type", "veth", "peer", "name", &pod,
                    "netns", &ns,
                ])?;
                ip(&["-n", &ns, "link", "set", &pod, "master", "cbr0", "up"])?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "addr",
                    "add",
                    &format!("{pod_ip}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw.to_string(),
                ])?;
                self.exec(&pod_ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
                self.pods.push(Pod {
                    name: pod,
                    ns: pod_ns,
                    ip: pod_ip,
                    node: name.clone(),
                });
            }
            self.nodes.push(Node {
                pin_path: PathBuf::from(format!("/sys/fs/bpf/{p}-{name}")),
                metrics: SocketAddr::from((Ipv4Addr::LOCALHOST, 10254)),
                name,
                ns,
                ip: node_ip,
                cgroup,
            });
        }
        let (a, b) = (self.nodes[0].clone(), self.nodes[1].clone());
        match self.shape.pod_routes {
            PodRoutes::Direct => {
                // Each node reaches the other's pods through it.
                ip(&[
                    "-n",
                    &a.ns,
                    "route",
                    "add",
                    "198.18.2.0/24",
                    "via",
                    &b.ip.to_string(),
                ])?;
                ip(&[
                    "-n",
                    &b.ns,
                    "route",
                    "add",
                    "198.18.1.0/24",
                    "via",
                    &a.ip.to_string(),
                ])?;
            }
            PodRoutes::Vxlan => {
                let ends = [
                    (
                        &a,
                        &b,
                        "198.18.251.1",
                        "198.18.251.2",
                        "02:00:00:00:fa:02",
                        "198.18.2.0/24",
                    ),
                    (
                        &b,
                        &a,
                        "198.18.251.2",
                        "198.18.251.1",
                        "02:00:00:00:fa:01",
                        "198.18.1.0/24",
                    ),
                ];
                for (i, (me, other, addr, peer, peer_mac, pods)) in ends.iter().enumerate() {
                    let mac = format!("02:00:00:00:fa:0{}", i + 1);
                    ip(&[
                        "-n",
                        &me.ns,
                        "link",
                        "add",
                        "vx0",
                        "address",
                        &mac,
                        "type",
                        "vxlan",
                        "id",
                        "42",
                        "local",
                        &me.ip.to_string(),
                        "remote",
                        &other.ip.to_string(),
                        "dstport",
                        "4789",
                        "dev",
                        "eth0",
                    ])?;
                    ip(&[
                        "-n",
                        &me.ns,
                        "addr",
                        "add",
                        &format!("{addr}/32"),
                        "dev",
                        "vx0",
                    ])?;
                    ip(&["-n", &me.ns, "link", "set", "vx0", "up"])?;
                    ip(&[
                        "-n",
                        &me.ns,
                        "neigh",
                        "add",
                        peer,
                        "lladdr",
                        peer_mac,
                        "dev",
                        "vx0",
                        "nud",
                        "permanent",
                    ])?;
                    ip(&[
                        "-n", &me.ns, "route", "add", pods, "via", peer, "dev", "vx0", "onlink",
                    ])?;
                }
            }
            PodRoutes::Bridge => {
                // A second link: node-a's side is a bridge, node-b's a plain end.
                ip(&[
                    "link", "add", "tob", "netns", &a.ns, "type", "veth", "peer", "name", "toa",
                    "netns", &b.ns,
                ])?;
                ip(&["-n", &a.ns, "link", "add", "br1", "type", "bridge"])?;
                ip(&["-n", &a.ns, "link", "set", "tob", "master", "br1", "up"])?;
                ip(&["-n", &a.ns, "addr", "add", "198.18.3.1/24", "dev", "br1"])?;
                ip(&["-n", &a.ns, "link", "set", "br1", "up"])?;
                ip(&["-n", &b.ns, "addr", "add", "198.18.3.2/24", "dev", "toa"])?;
                ip(&["-n", &b.ns, "link", "set", "toa", "up"])?;
                ip(&[
                    "-n",
                    &a.ns,
                    "route",
                    "add",
                    "198.18.2.0/24",
                    "via",
                    "198.18.3.2",
                    "dev",
                    "br1",
                ])?;
                ip(&[
                    "-n",
                    &b.ns,
                    "route",
                    "add",
                    "198.18.1.0/24",
                    "via",
                    "198.18.3.1",
                    "dev",
                    "toa",
                ])?;
            }
        }
        Ok(())
    }

    /// A veth from `ns` (as eth0, with `addr`/24) to the bridge in `sw`.
    fn uplink(&self, ns: &str, sw: &str, peer: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", sw,
        ])?;
        ip(&["-n", sw, "link", "set", peer, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        // Full checksums on the wire, so receivers verify our rewrites.
        self.exec(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        // Frames a native-XDP veth sends back (XDP_TX) are only flushed to a
        // peer that runs XDP itself.
        if self.shape.peer_xdp {
            let (peer, pins) = (peer.to_string(), self.sw_pins());
            in_netns(sw, move || ingressd::kernel::attach_xdp_pass(&peer, &pins))??;
        }
        Ok(())
    }

    fn sw_pins(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}-sw", self.prefix))
    }

    /// Starts the echo server in every pod and waits until each answers.
    pub fn start_pods(&mut self) -> anyhow::Result<()> {
        let script = self.dir.join("echo.py");
        for pod in self.pods.clone() {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &pod.ns, "python3", "-u"])
                .arg(&script)
                .arg(&pod.name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            join_cgroup_on_exec(&mut cmd, &self.node(&pod.node).cgroup)?;
            let child = cmd.spawn().context("starting a pod's python3 server")?;
            self.res().pods.push(child);
        }
        for pod in self.pods.clone() {
            let addr = SocketAddr::from((pod.ip, HTTP_PORT));
            let ok = wait_until(Duration::from_secs(10), || {
                in_netns(&pod.ns, move || {
                    http_get(addr, "/", Duration::from_millis(500))
                })
                .is_ok_and(|r| r.is_ok())
            });
            if !ok {
                bail!("pod {} did not start answering on {addr}", pod.name);
            }
        }
        Ok(())
    }

    /// Starts `python3 -c script args...` as a host process of `node` (in
    /// its network namespace and cgroup), stopped with the lab.
    pub fn spawn_on_node(&mut self, node: &str, script: &str, args: &[&str]) -> anyhow::Result<()> {
        let n = self.node(node).clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.ns, "python3", "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        join_cgroup_on_exec(&mut cmd, &n.cgroup)?;
        let child = cmd.spawn().context("starting a host process")?;
        self.res().pods.push(child);
        Ok(())
    }

    /// Stops a pod's server: its process exits, as a deleted pod's does.
    pub fn stop_pod(&self, name: &str) -> anyhow::Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let mut res = self.res();
        let child = res
            .pods
            .get_mut(i)
            .with_context(|| format!("pod {name} was not started"))?;
        child
            .kill()
            .with_context(|| format!("stopping pod {name}"))?;
        child.wait()?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("lab node")
    }

    /// Starts `ingressd run` on a node (in its network namespace only, so
    /// bpffs stays the host's) and waits for /readyz.
    pub fn start_ingressd(
        &mut self,
        bin: &Path,
        node: &str,
        manifests: &Path,
    ) -> anyhow::Result<()> {
        self.start_ingressd_with(bin, node, manifests, &[])
    }

    /// The same with extra `ingressd run` arguments.
    pub fn start_ingressd_with(
        &mut self,
        bin: &Path,
        node: &str,
        manifests: &Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut args = vec![std::ffi::OsString::from("--manifests"), manifests.into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        self.start_ingressd_args(bin, node, &args)
    }

    /// `ingressd run` on a node with the Kubernetes API as its source.
    pub fn start_ingressd_kube(
        &mut self,
        bin: &Path,
        node: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut args = vec![std::ffi::OsString::from("--kubeconfig"), kubeconfig.into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        self.start_ingressd_args(bin, node, &args)
    }

    fn start_ingressd_args(
        &mut self,
        bin: &Path,
        node: &str,
        args: &[std::ffi::OsString],
    ) -> anyhow::Result<()> {
        let n = self.node(node).clone();
        // A second ingressd beside a running one (an upgrade) logs apart.
        let running = self.res().daemons.iter().filter(|(d, _)| d == node).count();
        let log_name = log_name(node, running);
        let log = File::create(self.dir.join(&log_name))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", n.ns))
            .args(&self.wrapper)
            .arg(bin)
            .args(["run", "--interface", "eth0", "--node-name", &n.name])
            .arg("--pin-path")
            .arg(&n.pin_path)
            .arg("--cgroup")
            .arg(&n.cgroup)
            .args(["--metrics-addr", &n.metrics.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ingressd")?;
        self.res().daemons.push((node.to_string(), child));
        let metrics = n.metrics;
        let ns = n.ns.clone();
        let res = self.res.clone();
        let ready = wait_until(Duration::from_secs(20), || {
            // Stop waiting as soon as it has exited.
            let exited = res
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .daemons
                .iter_mut()
                .any(|(n, c)| n == node && c.try_wait().is_ok_and(|s| s.is_some()));
            exited
                || in_netns(&ns, move || {
                    http_get(metrics, "/readyz", Duration::from_millis(500))
                })
                .is_ok_and(|r| r.is_ok_and(|body| body.starts_with("ready")))
        }) && in_netns(&ns, move || {
            http_get(metrics, "/readyz", Duration::from_millis(500))
        })
        .is_ok_and(|r| r.is_ok_and(|body| body.starts_with("ready")));
        if !ready {
            let log = std::fs::read_to_string(self.dir.join(&log_name)).unwrap_or_default();
            bail!("ingressd on {node} did not become ready:\n{log}");
        }
        Ok(())
    }

    /// Stops a node's ingressd with SIGTERM (the data path stays) and waits.
    pub fn stop_ingressd(&mut self, node: &str) -> anyhow::Result<()> {
        let mut res = self.res();
        let Some(i) = res.daemons.iter().position(|(n, _)| n == node) else {
            bail!("no ingressd on {node}")
        };
        let (_, mut child) = res.daemons.remove(i);
        drop(res);
        terminate(&mut child);
        Ok(())
    }

    /// Routes `prefix` from the client to `node` and delivers it locally
    /// there (one "AnyIP" route, no address bound per VIP), as an announcer
    /// of LoadBalancer addresses would.
    pub fn route_vips_to(&self, node: &str, prefix: &str) -> anyhow::Result<()> {
        let n = self.node(node);
        ip(&[
            "-n",
            &self.client_ns,
            "route",
            "add",
            prefix,
            "via",
            &n.ip.to_string(),
        ])?;
        ip(&["-n", &n.ns, "route", "add", "local", prefix, "dev", "lo"])?;
        Ok(())
    }

    /// A sample of a node's `/metrics` (0 when absent or unreadable).
    pub fn metric(&self, node: &str, sample: &str) -> u64 {
        let n = self.node(node);
        let addr = n.metrics;
        in_netns(&n.ns, move || {
            http_get(addr, "/metrics", Duration::from_secs(2))
        })
        .ok()
        .and_then(Result::ok)
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        })
        .unwrap_or(0)
    }

    /// The log of the `nth` (from 0) ingressd started on `node` while
    /// others ran there.
    pub fn ingressd_log_of(&self, node: &str, nth: usize) -> String {
        std::fs::read_to_string(self.dir.join(log_name(node, nth))).unwrap_or_default()
    }

    pub fn ingressd_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("ingressd-{node}.log"))).unwrap_or_default()
    }
}

/// Makes the child join `cgroup` before it runs anything, so every socket
/// it opens belongs to that cgroup's programs.
pub fn join_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(
        cgroup
            .join("cgroup.procs")
            .as_os_str()
            .as_encoded_bytes()
            .to_vec(),
    )?;
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The lab's client program: connects as a pod's or a node's process
/// would and prints one line per attempt (see [`Attempt`]).
const SOCKET_CLIENT: &str = r#"
import errno, socket, sys
import time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
pause = int(sys.argv[5]) / 1000.0 if len(sys.argv) > 5 else 0
def addr(a):
    return "%s:%d" % (a[0].replace("::ffff:", ""), a[1])
keep = None
for i in range(count):
    if i and pause:
        time.sleep(pause)
    s = None
    try:
        if mode == "udp-keep":
            # One connected socket for every attempt, as a resolver keeps
            # it; a new one only after an error other than a timeout.
            if keep is None:
                keep = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                keep.settimeout(1)
                keep.connect((host, port))
            keep.send(b"who?")
            data, src = keep.recvfrom(2048)
            print("ok peer=%s from=%s body=%s" % (addr(keep.getpeername()), addr(src), data.decode().strip()), flush=True)
        elif mode in ("tcp", "whoami", "tcp6"):
            if mode == "tcp6":
                # A dual-stack socket and an IPv4-mapped address, as Java's.
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.settimeout(3)
                s.connect(("::ffff:" + host, port))
            else:
                s = socket.create_connection((host, port), timeout=3)
            peer = addr(s.getpeername())
            path = b"/whoami" if mode == "whoami" else b"/"
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            body = data.split(b"\r\n\r\n", 1)[-1].decode().strip().replace(" ", "@")
            print("ok peer=%s from=%s body=%s" % (peer, peer, body), flush=True)
        else:
            v6 = mode == "udp6"
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            peer = "-"
            if mode == "udp-connected":
                s.connect((host, port))
                peer = addr(s.getpeername())
                s.send(b"who?")
            else:
                s.sendto(b"who?", ("::ffff:" + host if v6 else host, port))
            data, src = s.recvfrom(2048)
            print("ok peer=%s from=%s body=%s" % (peer, addr(src), data.decode().strip()), flush=True)
    except socket.timeout:
        print("err timeout", flush=True)
    except OSError as e:
        print("err " + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        if keep is not None:
            keep.close()
            keep = None
    finally:
        if s is not None:
            s.close()
"#;

/// One attempt of the lab's client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Answered: the peer name the socket reported (`-` for unconnected
    /// UDP), the source of the answer, and the answer (the pod's name).
    Ok {
        peer: String,
        from: String,
        body: String,
    },
    /// Failed with this errno name (`ECONNREFUSED`), or `timeout`.
    Err(String),
}

impl Attempt {
    fn parse(line: &str) -> Option<Attempt> {
        if let Some(e) = line.strip_prefix("err ") {
            return Some(Attempt::Err(e.trim().to_string()));
        }
        let rest = line.strip_prefix("ok ")?;
        let field = |k: &str| {
            rest.split(' ')
                .find_map(|f| f.strip_prefix(k))
                .map(str::to_string)
        };
        Some(Attempt::Ok {
            peer: field("peer=")?,
            from: field("from=")?,
            body: field("body=")?,
        })
    }

    /// The pod that answered, if any.
    pub fn body(&self) -> Option<&str> {
        match self {
            Attempt::Ok { body, .. } => Some(body),
            Attempt::Err(_) => None,
        }
    }
}

/// How the lab's client reaches a Service.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// TCP connect, getpeername, one HTTP GET.
    Tcp,
    /// The same for `/whoami`: the answer is `pod@client-address`.
    Whoami,
    /// TCP from an IPv6 socket to the IPv4-mapped address (`::ffff:…`).
    Tcp6,
    /// UDP sendto/recvfrom from an IPv6 socket, IPv4-mapped.
    Udp6,
    /// UDP connect, getpeername, send, recvfrom.
    UdpConnected,
    /// UDP sendto, recvfrom.
    Udp,
    /// One connected UDP socket for every attempt (a new one after an
    /// error), as a resolver keeps its socket.
    UdpKeep,
}

/// A client started by [`Lab::spawn_client`], running on its own.
pub struct ClientRun {
    child: Child,
    place: String,
    count: usize,
    limit: Duration,
}

impl ClientRun {
    /// Waits (bounded by the attempts' own timeouts) for every attempt.
    pub fn finish(mut self) -> anyhow::Result<Vec<Attempt>> {
        let child = &mut self.child;
        let done = wait_until(self.limit, || child.try_wait().is_ok_and(|s| s.is_some()));
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!(
                "the client in {} did not finish within {:?}",
                self.place,
                self.limit
            );
        }
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        let attempts: Vec<Attempt> = out.lines().filter_map(Attempt::parse).collect();
        if attempts.len() != self.count {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "the client in {} printed {out:?} (stderr {err:?})",
                self.place
            );
        }
        Ok(attempts)
    }
}

impl Lab {
    /// Runs the client `count` times against `target` as a process of
    /// `place` (a pod's name, or a node's name for a host-network process),
    /// inside that node's cgroup. Bounded: 3 s per attempt, plus start-up.
    pub fn connect_from(
        &self,
        place: &str,
        mode: Mode,
        target: SocketAddr,
        count: usize,
    ) -> anyhow::Result<Vec<Attempt>> {
        self.spawn_client(place, mode, target, count, Duration::ZERO)?
            .finish()
    }

    /// The same, started in the background with `pause` between attempts.
    pub fn spawn_client(
        &self,
        place: &str,
        mode: Mode,
        target: SocketAddr,
        count: usize,
        pause: Duration,
    ) -> anyhow::Result<ClientRun> {
        let (ns, node) = match self.pods.iter().find(|p| p.name == place) {
            Some(p) => (p.ns.clone(), p.node.clone()),
            None => {
                let n = self
                    .nodes
                    .iter()
                    .find(|n| n.name == place)
                    .with_context(|| format!("no pod or node {place}"))?;
                (n.ns.clone(), n.name.clone())
            }
        };
        let script = self.dir.join("client.py");
        if !script.exists() {
            std::fs::write(&script, SOCKET_CLIENT)?;
        }
        let mode = match mode {
            Mode::Tcp => "tcp",
            Mode::Whoami => "whoami",
            Mode::Tcp6 => "tcp6",
            Mode::Udp6 => "udp6",
            Mode::UdpConnected => "udp-connected",
            Mode::Udp => "udp",
            Mode::UdpKeep => "udp-keep",
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{ns}"))
            .arg("python3")
            .arg(&script)
            .args([
                mode,
                &target.ip().to_string(),
                &target.port().to_string(),
                &count.to_string(),
                &pause.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        join_cgroup_on_exec(&mut cmd, &self.node(&node).cgroup)?;
        let child = cmd.spawn().context("starting the lab's client")?;
        Ok(ClientRun {
            child,
            place: place.to_string(),
            count,
            limit: Duration::from_secs(5) + (Duration::from_secs(4) + pause) * count as u32,
        })
    }
}

fn log_name(node: &str, nth: usize) -> String {
    match nth {
        0 => format!("ingressd-{node}.log"),
        n => format!("ingressd-{node}-{n}.log"),
    }
}

fn terminate(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.res().release();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (only the
/// network namespace: bpffs and cgroups stay the host's).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a valid netns fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// One HTTP/1.1 GET on a new connection; the body on 200.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    http_get_host(addr, &addr.to_string(), path, timeout)
}

/// The same with a Host header of one's choosing (for Ingress rules).
pub fn http_get_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!(
            "no HTTP response from {addr}"
        )));
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// One UDP request on a connected socket: only a reply from `addr` itself
/// is accepted, so a reply proves the reverse NAT.
pub fn udp_ask(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"who?")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// NodePort Services `web` (TCP 30080 → pods' 8080) and `dns` (UDP 30053 →
/// pods' 5353) with EndpointSlices listing `pods` as ready endpoints.
pub fn nodeport_manifests(pods: &[&Pod]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|p| {
            format!(
                "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {}}}\n",
                p.ip, p.node, p.name
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() {
        "[]\n".to_string()
    } else {
        format!("\n{endpoints}")
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints: {endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: demo}}
spec:
  type: NodePort
  ports:
  - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: demo
  labels: {{kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
- {{name: dns, port: 5353, protocol: UDP}}
endpoints: {endpoints}"#
    )
}
