//! Reading an image archive back as a runtime would (index → manifest →
//! config and layers, every digest checked) and unpacking its layers into
//! a directory: how the tests run the image without a container engine.
use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Component, Path},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The parts of the image's config a run needs.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `sha256:…` of the manifest.
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// `io.containerd.image.name` of the index entry.
    pub name: String,
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Unpacks the image in `archive` into `dir` (which must be empty or
/// absent) and gives its config.
pub fn unpack(archive: &Path, dir: &Path) -> anyhow::Result<ImageConfig> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?,
    );
    for entry in ar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            files.insert(path, data);
        }
    }
    let blob = |digest: &str| -> anyhow::Result<&Vec<u8>> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {digest:?} is not sha256"))?;
        let data = files
            .get(&format!("blobs/sha256/{hex}"))
            .with_context(|| format!("blob {digest} missing from the archive"))?;
        if hex_sha256(data) != hex {
            bail!("blob {digest} does not match its digest");
        }
        Ok(data)
    };
    let index: Value = serde_json::from_slice(files.get("index.json").context("no index.json")?)?;
    let desc = &index["manifests"][0];
    let digest = desc["digest"]
        .as_str()
        .context("index.json: no manifest")?
        .to_string();
    let manifest: Value = serde_json::from_slice(blob(&digest)?)?;
    let config: Value = serde_json::from_slice(blob(
        manifest["config"]["digest"]
            .as_str()
            .context("manifest: no config")?,
    )?)?;
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    let layers = manifest["layers"]
        .as_array()
        .context("manifest: no layers")?;
    if layers.len() != diff_ids.len() {
        bail!("{} layers but {} diff_ids", layers.len(), diff_ids.len());
    }
    std::fs::create_dir_all(dir)?;
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let gz = blob(layer["digest"].as_str().context("layer without digest")?)?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut tar)?;
        if format!("sha256:{}", hex_sha256(&tar)) != *diff_id {
            bail!("layer {} does not match its diff_id", layer["digest"]);
        }
        extract(&tar, dir)?;
    }
    let c = &config["config"];
    Ok(ImageConfig {
        digest,
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        user: c["User"].as_str().unwrap_or_default().to_string(),
        labels: c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        name: desc["annotations"]["io.containerd.image.name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// Files and directories only, each inside `dir`.
fn extract(tar: &[u8], dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut ar = tar::Archive::new(tar);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            bail!("layer entry {} leaves the root", path.display());
        }
        let at = dir.join(&path);
        let mode = entry.header().mode()?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&at)?,
            tar::EntryType::Regular => {
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                std::fs::write(&at, data)?;
            }
            other => bail!("layer entry {} is a {other:?}", path.display()),
        }
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
