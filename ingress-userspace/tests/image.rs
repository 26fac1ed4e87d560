//! The container image, run as a container would run it but without a
//! runtime: packed (`ingress-image`, what `cargo xtask image` does) from
//! this build's `ingressd`, unpacked layer by layer with every digest
//! checked, and its entrypoint started under `chroot` in a fresh mount and
//! network namespace, so a library or file missing from the image fails
//! here. The namespace and the directory are removed also on failure.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ingress_image::{Meta, Tree, unpack, write_archive};
use testkit::lab::{self, in_netns, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_ingressd");
const NS: &str = "ingressd-image-test";
const PROXY: [u8; 4] = [198, 18, 40, 1];
const BACKEND: [u8; 4] = [198, 18, 40, 2];

/// A directory and a network namespace of this test's, gone on drop, and
/// the processes started in them, killed first.
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ingressd-image-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch {
            dir,
            children: Vec::new(),
        }
    }

    fn netns(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", NS]));
        run(Command::new("ip").args(["-n", NS, "link", "set", "lo", "up"]));
        for a in [PROXY, BACKEND] {
            let a = format!("{}.{}.{}.{}/32", a[0], a[1], a[2], a[3]);
            run(Command::new("ip").args(["-n", NS, "addr", "add", &a, "dev", "lo"]));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let ok = cmd.status().is_ok_and(|s| s.success());
    assert!(ok, "{cmd:?} failed");
}

/// This build's binary without its debug sections (a quarter of a GB
/// otherwise), as the release build has none.
fn stripped_binary(dir: &Path) -> PathBuf {
    let out = dir.join("ingressd");
    let stripped = Command::new("objcopy")
        .args(["--strip-debug", BIN])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(BIN, &out).expect("copy binary");
    }
    out
}

fn meta() -> Meta {
    Meta {
        repository: "ingress-ebpf/ingressd".into(),
        version: "0.1.0-test".into(),
        revision: "0123456789abcdef".into(),
        created: 1_796_600_000,
    }
}

#[test]
fn two_packs_of_one_binary_give_one_digest() {
    let s = Scratch::new("repro");
    let bin = stripped_binary(&s.dir);
    let first = write_archive(
        &Tree::for_binary(&bin).expect("tree"),
        &meta(),
        &s.dir.join("a.tar"),
    )
    .expect("pack");
    // The file's own time and place must not leak into the image.
    let moved = s.dir.join("elsewhere");
    std::fs::create_dir_all(&moved).expect("dir");
    let copy = moved.join("ingressd");
    std::fs::copy(&bin, &copy).expect("copy");
    let second = write_archive(
        &Tree::for_binary(&copy).expect("tree"),
        &meta(),
        &s.dir.join("b.tar"),
    )
    .expect("pack");
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(s.dir.join("a.tar")).expect("a"),
        std::fs::read(s.dir.join("b.tar")).expect("b")
    );
    // Another commit's time is another image.
    let later = Meta {
        created: meta().created + 1,
        ..meta()
    };
    let third = write_archive(
        &Tree::for_binary(&bin).expect("tree"),
        &later,
        &s.dir.join("c.tar"),
    )
    .expect("pack");
    assert_ne!(first.digest, third.digest);
}

/// Serves one canned answer per connection on the backend address, for
/// at most 200 connections or until `deadline` (checked per connection;
/// the thread ends with the test process otherwise).
fn backend(deadline: Instant) {
    let l = in_netns(NS, || TcpListener::bind(SocketAddr::from((BACKEND, 8080))))
        .expect("netns")
        .expect("bind backend");
    std::thread::spawn(move || {
        for c in l.incoming().take(200) {
            if Instant::now() > deadline {
                break;
            }
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nfrom-pod\n",
            );
        }
    });
}

const MANIFESTS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: demo}
spec:
  ingressClassName: ebpf
  rules:
  - host: image.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [\"198.18.40.2\"], conditions: {ready: true}}
";

/// `args` run as the image's entrypoint: in `NS`, in a new mount
/// namespace with only the image (and the /proc every runtime mounts),
/// chrooted into `root`.
fn entrypoint(root: &Path, entry: &[String], args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        NS,
        "unshare",
        "--mount",
        "--propagation",
        "private",
    ])
    .args(["--fork", "--kill-child", "sh", "-c"])
    .arg(r#"root=$1; shift; mount -t proc proc "$root/proc" && exec chroot "$root" "$@""#)
    .arg("sh")
    .arg(root)
    .args(entry)
    .args(args);
    cmd
}

#[test]
fn the_image_runs_its_entrypoint_in_a_chroot_and_serves() {
    if !lab::need_root() {
        return;
    }
    let mut s = Scratch::new("run");
    let bin = stripped_binary(&s.dir);
    let archive = s.dir.join("image.tar");
    let written =
        write_archive(&Tree::for_binary(&bin).expect("tree"), &meta(), &archive).expect("pack");
    let root = s.dir.join("rootfs");
    let config = unpack(&archive, &root).expect("unpack");
    assert_eq!(config.digest, written.digest);
    assert_eq!(config.entrypoint, ["/usr/local/bin/ingressd"]);
    assert_eq!(config.cmd, ["run"]);
    assert_eq!(config.name, "docker.io/ingress-ebpf/ingressd:0.1.0-test");
    assert_eq!(
        config
            .labels
            .get("org.opencontainers.image.revision")
            .map(String::as_str),
        Some("0123456789abcdef")
    );
    // The non-root user the proxy-only Deployments run as.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    std::fs::create_dir_all(root.join("proc")).expect("proc");
    std::fs::create_dir_all(root.join("manifests")).expect("dir");
    std::fs::write(root.join("manifests/shop.yaml"), MANIFESTS).expect("manifests");
    s.netns();

    let out = entrypoint(&root, &config.entrypoint, &["--version"])
        .output()
        .expect("run --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.starts_with("ingressd 0.1.0 (commit "),
        "{version}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    backend(deadline);
    let log = std::fs::File::create(s.dir.join("ingressd.log")).expect("log");
    let child = entrypoint(
        &root,
        &config.entrypoint,
        &[
            "run",
            "--no-l4",
            "--manifests",
            "/manifests",
            "--http-addr",
            "198.18.40.1:80",
            "--https-addr",
            "198.18.40.1:443",
            "--default-backend-addr",
            "198.18.40.1:8181",
            "--metrics-addr",
            "198.18.40.1:10254",
            "--update-status=false",
        ],
    )
    .stdin(Stdio::null())
    .stdout(log.try_clone().expect("log"))
    .stderr(log)
    .spawn()
    .expect("start the entrypoint");
    s.children.push(child);
    let log = || std::fs::read_to_string(s.dir.join("ingressd.log")).unwrap_or_default();
    let proxy = SocketAddr::from((PROXY, 80));
    let mut answer = String::new();
    let served = wait_until(Duration::from_secs(20), || {
        answer = in_netns(NS, move || {
            lab::http_get_host(proxy, "image.test", "/", Duration::from_millis(500))
        })
        .map(|r| r.unwrap_or_else(|e| e.to_string()))
        .unwrap_or_else(|e| e.to_string());
        answer == "from-pod\n"
    });
    assert!(served, "last answer: {answer}\n{}", log());
}

/// Paths (with type and mode) of the tree in an uncompressed tar, less
/// what every container runtime adds.
fn listing(tar: impl std::io::Read) -> std::collections::BTreeSet<(String, u32, bool)> {
    const RUNTIME: [&str; 8] = [
        ".dockerenv",
        "dev",
        "proc",
        "sys",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/mtab",
    ];
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .expect("entries")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e
                .path()
                .ok()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let runtime = RUNTIME
                .iter()
                .any(|r| path == *r || path.starts_with(&format!("{r}/")));
            let dir = e.header().entry_type().is_dir();
            (!path.is_empty() && !runtime)
                .then(|| (path, e.header().mode().unwrap_or(0) & 0o7777, dir))
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_the_same_tree() {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !engine {
        println!(
            "SKIPPED: no Docker engine answers here; `cargo xtask image` is the image build (compared with deploy/Dockerfile where Docker runs)"
        );
        return;
    }
    let s = Scratch::new("docker");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tag = "ingressd-image-test:tree";
    run(Command::new("docker")
        .args(["build", "-q", "-f", "deploy/Dockerfile", "-t", tag, "."])
        .current_dir(&repo));
    let id = Command::new("docker")
        .args(["create", tag])
        .output()
        .expect("docker create");
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let exported = Command::new("docker")
        .args(["export", &id])
        .output()
        .expect("docker export");
    let _ = Command::new("docker").args(["rm", &id]).status();
    let _ = Command::new("docker").args(["rmi", tag]).status();
    let ours = Tree::for_binary(&stripped_binary(&s.dir))
        .expect("tree")
        .layer_tar(0)
        .expect("layer");
    assert_eq!(
        listing(exported.stdout.as_slice()),
        listing(ours.as_slice())
    );
}

/// What the Dockerfile copies into its empty image (`--rootfs`) is the
/// layer's tree, path for path and mode for mode.
#[test]
fn the_rootfs_the_dockerfile_copies_is_the_layers_tree() {
    let s = Scratch::new("rootfs");
    let tree = Tree::for_binary(&stripped_binary(&s.dir)).expect("tree");
    let root = s.dir.join("rootfs");
    tree.write_rootfs(&root).expect("rootfs");
    let packed = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .args(["-cf", "-", "."])
        .output()
        .expect("tar");
    assert!(packed.status.success());
    let from_dir: std::collections::BTreeSet<_> = listing(packed.stdout.as_slice())
        .into_iter()
        .map(|(p, m, d)| (p.trim_start_matches("./").to_string(), m, d))
        .filter(|(p, _, _)| p != ".")
        .collect();
    assert_eq!(
        from_dir,
        listing(tree.layer_tar(0).expect("layer").as_slice())
    );
}
