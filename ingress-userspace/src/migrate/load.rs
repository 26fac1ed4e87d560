//! Reads what the report covers: Ingresses (and ingress-nginx's controller
//! ConfigMap) from manifest files or from the cluster, once.
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::{core::v1::ConfigMap, networking::v1::Ingress};
use kube::{Api, api::ListParams};

use crate::{
    cluster::{Object, ObjectKey},
    source::files::{find_config_map, list_files, parse_file},
};

/// What the report is made of.
pub struct Loaded {
    pub ingresses: Vec<Ingress>,
    /// The ConfigMap asked for, with its data.
    pub configmap: Option<(ObjectKey, BTreeMap<String, String>)>,
}

/// From files: every Ingress in them; documents that cannot be read are
/// reported on stderr and left out.
pub fn from_files(paths: &[PathBuf], configmap: Option<&ObjectKey>) -> anyhow::Result<Loaded> {
    let files = list_files(paths);
    anyhow::ensure!(!files.is_empty(), "no manifest files under {paths:?}");
    let mut ingresses = Vec::new();
    let mut found = None;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let (objects, errors, _) = parse_file(&file, &text);
        for e in errors {
            eprintln!("ingressd: left out: {e}");
        }
        ingresses.extend(objects.into_iter().filter_map(|o| match o {
            Object::Ingress(i) => Some(*i),
            _ => None,
        }));
        if let Some(key) = configmap
            && found.is_none()
        {
            found = find_config_map(&text, &key.namespace, &key.name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                .map(|data| (key.clone(), data));
        }
    }
    if let Some(key) = configmap {
        anyhow::ensure!(
            found.is_some(),
            "ConfigMap {key} is in none of the manifest files"
        );
    }
    Ok(Loaded {
        ingresses,
        configmap: found,
    })
}

/// From the cluster: one list of Ingresses (of `namespace`, or all).
pub async fn from_cluster(
    kubeconfig: Option<&PathBuf>,
    namespace: Option<&str>,
    configmap: Option<&ObjectKey>,
) -> anyhow::Result<Loaded> {
    let client = crate::source::kube::client(kubeconfig).await?;
    let api: Api<Ingress> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ingresses = api
        .list(&ListParams::default())
        .await
        .context("listing Ingresses")?
        .items;
    let configmap = match configmap {
        Some(key) => {
            let cm = Api::<ConfigMap>::namespaced(client, &key.namespace)
                .get(&key.name)
                .await
                .with_context(|| format!("reading ConfigMap {key}"))?;
            Some((key.clone(), cm.data.unwrap_or_default()))
        }
        None => None,
    };
    Ok(Loaded {
        ingresses,
        configmap,
    })
}
