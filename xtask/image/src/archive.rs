//! The OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! packed as one tar, with Docker's `manifest.json` beside it as
//! `docker save` writes since Docker 25, so engines that read either load
//! it.
use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::tree::{BINARY_PATH, Tree};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What the image says of itself.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Repository, as the manifests in `deploy/` name it
    /// (`ingress-ebpf/ingressd`).
    pub repository: String,
    pub version: String,
    /// The commit (`org.opencontainers.image.revision`).
    pub revision: String,
    /// Seconds since the epoch: every timestamp in the image.
    pub created: u64,
}

impl Meta {
    /// `repository:version`, as a user types it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.version)
    }

    /// The fully qualified name containerd files it under (what `docker.io`
    /// short names expand to).
    fn qualified(&self) -> String {
        let first = self.repository.split('/').next().unwrap_or_default();
        let has_registry = self.repository.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        match (has_registry, self.repository.contains('/')) {
            (true, _) => self.reference(),
            (false, true) => format!("docker.io/{}", self.reference()),
            (false, false) => format!("docker.io/library/{}", self.reference()),
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// `sha256:…` of the manifest: the image's digest.
    pub digest: String,
    /// Bytes of the archive.
    pub size: u64,
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Gzip without a file name and with time 0, so the same layer compresses
/// to the same bytes.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// RFC 3339 (UTC) of `secs` since the epoch.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes `tree` as an image archive at `out`.
pub fn write_archive(tree: &Tree, meta: &Meta, out: &Path) -> anyhow::Result<Written> {
    let created = rfc3339(meta.created);
    let layer_tar = tree.layer_tar(meta.created)?;
    let diff_id = sha256(&layer_tar);
    let layer = gzip(&layer_tar)?;
    drop(layer_tar);
    let labels = json!({
        "org.opencontainers.image.title": "ingressd",
        "org.opencontainers.image.description":
            "eBPF L4 data plane (kube-proxy replacement) and Ingress controller for Kubernetes",
        "org.opencontainers.image.version": meta.version,
        "org.opencontainers.image.revision": meta.revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
    });
    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": LAYER_TYPE, "digest": sha256(&layer), "size": layer.len()}],
        "annotations": {"org.opencontainers.image.created": created},
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let digest = sha256(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "platform": {"architecture": go_arch(), "os": "linux"},
            "annotations": {
                // containerd (`ctr images import`, `kind load`) names the
                // image by this; the OCI convention is the tag alone.
                "io.containerd.image.name": meta.qualified(),
                "org.opencontainers.image.ref.name": meta.version,
            },
        }],
    });
    let blob_path = |data: &[u8]| format!("blobs/{}", sha256(data).replacen(':', "/", 1));
    let docker_manifest = json!([{
        "Config": blob_path(&config),
        "RepoTags": [meta.reference()],
        "Layers": [blob_path(&layer)],
    }]);
    let mut outer = Tree::default();
    outer.add_file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    outer.add_file("index.json", 0o644, &serde_json::to_vec(&index)?)?;
    outer.add_file(
        "manifest.json",
        0o644,
        &serde_json::to_vec(&docker_manifest)?,
    )?;
    for blob in [&config, &manifest, &layer] {
        outer.add_file(&blob_path(blob), 0o644, blob)?;
    }
    let archive = outer.layer_tar(meta.created)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &archive).with_context(|| format!("writing {}", out.display()))?;
    Ok(Written {
        digest,
        size: archive.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_646_645), "2026-12-07T12:30:45Z");
    }

    #[test]
    fn short_names_are_qualified_as_containerd_expects() {
        let meta = |repository: &str| Meta {
            repository: repository.into(),
            version: "1.0".into(),
            revision: String::new(),
            created: 0,
        };
        assert_eq!(
            meta("ingress-ebpf/ingressd").qualified(),
            "docker.io/ingress-ebpf/ingressd:1.0"
        );
        assert_eq!(
            meta("ingressd").qualified(),
            "docker.io/library/ingressd:1.0"
        );
        assert_eq!(
            meta("ghcr.io/acme/ingressd").qualified(),
            "ghcr.io/acme/ingressd:1.0"
        );
        assert_eq!(
            meta("localhost:5000/ingressd").qualified(),
            "localhost:5000/ingressd:1.0"
        );
    }
}
