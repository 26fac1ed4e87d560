//! What goes into the image, and the layer made of it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the binary lives in the image (the Dockerfile's path too).
pub const BINARY_PATH: &str = "usr/local/bin/ingressd";
/// The CA bundle (Debian's path, which rustls-native-certs reads).
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// The proxy-only Deployments run as this user (distroless's `nonroot`).
pub const NONROOT_UID: u32 = 65532;

/// One entry of the image's file tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
}

/// The image's files by path (relative, `/`-separated, no `..`), sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

impl Tree {
    /// The tree that runs `binary`: it, every shared library `ldd` names
    /// (at the path the loader looks for it), CA certificates, and the
    /// users (root, and `nonroot` 65532 for the proxy-only Deployments).
    pub fn for_binary(binary: &Path) -> anyhow::Result<Tree> {
        let mut tree = Tree::default();
        tree.add_file(BINARY_PATH, 0o755, &read(binary)?)?;
        for lib in shared_libraries(binary)? {
            let data = read(&lib)?;
            let inside = lib
                .to_str()
                .and_then(|p| p.strip_prefix('/'))
                .with_context(|| format!("library path {} is not absolute UTF-8", lib.display()))?;
            tree.add_file(inside, 0o755, &data)?;
        }
        let ca = Path::new("/").join(CA_BUNDLE);
        let bundle = std::fs::read(&ca).with_context(|| {
            format!(
                "reading {} (install the CA certificates: apt-get install -y ca-certificates)",
                ca.display()
            )
        })?;
        tree.add_file(CA_BUNDLE, 0o644, &bundle)?;
        tree.add_file(
            "etc/passwd",
            0o644,
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
            )
            .as_bytes(),
        )?;
        tree.add_file(
            "etc/group",
            0o644,
            format!("root:x:0:\nnonroot:x:{NONROOT_UID}:\n").as_bytes(),
        )?;
        // glibc's defaults, said out loud (files, then DNS).
        tree.add_file("etc/nsswitch.conf", 0o644, b"hosts: files dns\n")?;
        tree.add_dir("tmp", 0o1777)?;
        Ok(tree)
    }

    /// Adds a file, and its parent directories (0755).
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        check_path(path)?;
        self.add_parents(path);
        self.entries.insert(
            path.to_string(),
            Entry::File {
                mode,
                data: data.to_vec(),
            },
        );
        Ok(())
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        check_path(path)?;
        self.add_parents(path);
        self.entries.insert(path.to_string(), Entry::Dir { mode });
        Ok(())
    }

    fn add_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            self.entries
                .entry(parent.to_string())
                .or_insert(Entry::Dir { mode: 0o755 });
            at += i + 1;
        }
    }

    /// The tree as an uncompressed tar: sorted, owned by root, every time
    /// `mtime` (seconds since the epoch).
    pub fn layer_tar(&self, mtime: u64) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_ustar();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            match entry {
                Entry::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    h.set_path(format!("{path}/"))?;
                    h.set_cksum();
                    b.append(&h, std::io::empty())?;
                }
                Entry::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    h.set_path(path)?;
                    h.set_cksum();
                    b.append(&h, data.as_slice())?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// Writes the tree under `root` (for `COPY --from=build /rootfs /` in
    /// the Dockerfile): the same files and modes as the layer.
    pub fn write_rootfs(&self, root: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        for (path, entry) in &self.entries {
            let at = root.join(path);
            match entry {
                Entry::Dir { mode } => {
                    std::fs::create_dir_all(&at)
                        .with_context(|| format!("creating {}", at.display()))?;
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))?;
                }
                Entry::File { mode, data } => {
                    std::fs::write(&at, data)
                        .with_context(|| format!("writing {}", at.display()))?;
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))?;
                }
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Relative, `/`-separated, without empty, `.` or `..` parts.
fn check_path(path: &str) -> anyhow::Result<()> {
    if path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("image path {path:?} is not a plain relative path");
    }
    Ok(())
}

/// The shared libraries `binary` loads, with the dynamic loader, as `ldd`
/// reports them (empty for a static binary). The vDSO is the kernel's.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (glibc's libc-bin) to find the shared libraries")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("a shared library is missing: {line}");
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", or the
        // loader alone: "/lib64/ld-linux-x86-64.so.2 (0x…)".
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f61)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f62)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f63)\n";
        assert_eq!(
            parse_ldd(text).expect("parsed"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn parents_are_added_and_unsafe_paths_refused() {
        let mut t = Tree::default();
        t.add_file("a/b/c", 0o644, b"x").expect("added");
        assert_eq!(t.entries.keys().collect::<Vec<_>>(), ["a", "a/b", "a/b/c"]);
        for bad in ["/etc/passwd", "a/../b", "a//b", "./a", ""] {
            assert!(t.add_file(bad, 0o644, b"x").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_layer_is_the_same_bytes_for_the_same_tree_and_time() {
        let mut t = Tree::default();
        t.add_file("etc/x", 0o644, b"1").expect("added");
        t.add_dir("tmp", 0o1777).expect("added");
        assert_eq!(t.layer_tar(7).expect("tar"), t.layer_tar(7).expect("tar"));
        assert_ne!(t.layer_tar(7).expect("tar"), t.layer_tar(8).expect("tar"));
    }
}
