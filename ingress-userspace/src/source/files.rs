//! The file source: Kubernetes manifests (multi-document YAML or JSON, `List`
//! objects too) read into a [`Snapshot`].
//!
//! A document that fails to parse or validate is reported with file,
//! document index, object and field; the object keeps its last good version
//! (see [`ManifestSource`]), so nothing that worked stops working.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use serde::de::DeserializeSeed as _;

use super::bounded;
use crate::cluster::{
    FieldError, Identity, Object, ObjectKey, Rules, Snapshot, field_error, gateway, validate_with,
};

/// A document that could not be used, with everything needed to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 0-based index of the document in the file.
    pub document: usize,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// Path of the offending field, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses every document of one file. Unknown kinds are skipped (and
/// returned as names, for a log line); bad documents become errors.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Object>, Vec<ManifestError>, Vec<String>) {
    parse_file_with(file, text, Rules::default())
}

/// The objects of one YAML text as a snapshot, or what is wrong with it
/// (for tests and tools that start from a text, not files).
pub fn snapshot_of(yaml: &str) -> Result<Snapshot, Vec<ManifestError>> {
    let (objects, errors, _) = parse_file(Path::new("manifests.yaml"), yaml);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut snapshot = Snapshot::default();
    for o in objects {
        snapshot.insert(o);
    }
    Ok(snapshot)
}

/// The same, validating with `rules`.
pub fn parse_file_with(
    file: &Path,
    text: &str,
    rules: Rules,
) -> (Vec<Object>, Vec<ManifestError>, Vec<String>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    let budget = bounded::Budget::for_file(text.len());
    for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let err = |object: Option<String>, field: Option<String>, message: String| ManifestError {
            file: file.to_path_buf(),
            document: index,
            object,
            field,
            message,
        };
        let value = match bounded::Bounded(&budget).deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(None, None, format!("not valid YAML: {e}")));
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        parse_value(value, rules, &mut objects, &mut skipped, &mut |o, f, m| {
            errors.push(err(o, f, m))
        });
    }
    (objects, errors, skipped)
}

type ErrorSink<'a> = dyn FnMut(Option<String>, Option<String>, String) + 'a;

fn parse_value(
    value: serde_norway::Value,
    rules: Rules,
    objects: &mut Vec<Object>,
    skipped: &mut Vec<String>,
    report: &mut ErrorSink<'_>,
) {
    let text =
        |v: &serde_norway::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let kind = text(&value, "kind");
    let api_version = text(&value, "apiVersion");
    let name = value.get("metadata").and_then(|m| text(m, "name"));
    let namespace = value.get("metadata").and_then(|m| text(m, "namespace"));
    let label = {
        let kind = kind.clone().unwrap_or_else(|| "?".into());
        let name = name.clone().unwrap_or_else(|| "?".into());
        match &namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }
    };
    let (Some(kind), Some(api_version)) = (kind, api_version) else {
        let field = if text(&value, "kind").is_none() {
            "kind"
        } else {
            "apiVersion"
        };
        report(Some(label), Some(field.into()), "required".into());
        return;
    };
    if kind == "List" && api_version == "v1" {
        match value.get("items").and_then(|i| i.as_sequence()) {
            Some(items) => {
                for item in items.clone() {
                    parse_value(item, rules, objects, skipped, report);
                }
            }
            None => report(
                Some(label),
                Some("items".into()),
                "required for a List".into(),
            ),
        }
        return;
    }
    if name.as_deref().unwrap_or("").is_empty() {
        report(Some(label), Some("metadata.name".into()), "required".into());
        return;
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => typed(value).map(|s: Service| Object::Service(Box::new(s))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed(value).map(|s: EndpointSlice| Object::EndpointSlice(Box::new(s)))
        }
        ("networking.k8s.io/v1", "Ingress") => {
            typed(value).map(|s: Ingress| Object::Ingress(Box::new(s)))
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            typed(value).map(|s: IngressClass| Object::IngressClass(Box::new(s)))
        }
        ("v1", "Secret") => typed(value).map(|s: Secret| Object::Secret(Box::new(s))),
        ("v1", "ConfigMap") => typed(value).map(|c: ConfigMap| Object::ConfigMap(Box::new(c))),
        ("v1", "Node") => typed(value).map(|s: Node| Object::Node(Box::new(s))),
        ("v1", "Namespace") => typed(value).map(|n: Namespace| Object::Namespace(Box::new(n))),
        // v1beta1 as well: the same schema, and manifests written before v1.
        (GATEWAY_V1 | GATEWAY_V1BETA1, "GatewayClass") => {
            typed(value).map(|g: gateway::GatewayClass| Object::GatewayClass(Box::new(g)))
        }
        (GATEWAY_V1 | GATEWAY_V1BETA1, "Gateway") => {
            typed(value).map(|g: gateway::Gateway| Object::Gateway(Box::new(g)))
        }
        (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => {
            typed(value).map(|r: gateway::HTTPRoute| Object::HTTPRoute(Box::new(r)))
        }
        (GATEWAY_V1 | GATEWAY_V1BETA1, "ReferenceGrant") => {
            typed(value).map(|r: gateway::ReferenceGrant| Object::ReferenceGrant(Box::new(r)))
        }
        _ => {
            skipped.push(format!("{api_version} {label}"));
            return;
        }
    };
    match object.and_then(|o| validate_with(&o, rules).map(|()| o)) {
        Ok(o) => objects.push(o),
        Err(e) => report(Some(label), Some(e.field), e.message),
    }
}

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";

/// The `data` of ConfigMap `namespace/name` in a file's documents
/// (`ingressd migrate` reports on ingress-nginx's).
pub fn find_config_map(
    text: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let budget = bounded::Budget::for_file(text.len());
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = bounded::Bounded(&budget)
            .deserialize(doc)
            .map_err(|e| format!("not valid YAML: {e}"))?;
        let is = |v: &serde_norway::Value, k: &str, want: &str| {
            v.get(k).and_then(|x| x.as_str()) == Some(want)
        };
        let Some(meta) = value.get("metadata") else {
            continue;
        };
        let ns = meta
            .get("namespace")
            .and_then(|x| x.as_str())
            .unwrap_or("default");
        if !(is(&value, "kind", "ConfigMap") && is(meta, "name", name) && ns == namespace) {
            continue;
        }
        let cm: k8s_openapi::api::core::v1::ConfigMap = typed(value).map_err(|e| {
            format!(
                "ConfigMap {namespace}/{name}: field {}: {}",
                e.field, e.message
            )
        })?;
        return Ok(Some(cm.data.unwrap_or_default()));
    }
    Ok(None)
}

/// Deserialises into a typed object, keeping the path of a failing field.
fn typed<T: serde::de::DeserializeOwned>(value: serde_norway::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        field_error(if path == "." { String::new() } else { path }, message)
    })
}

/// The files named on the command line (directories: their `*.yaml`,
/// `*.yml` and `*.json` files, recursively, in name order).
pub fn list_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        collect(path, &mut out, 0);
    }
    out.sort();
    out.dedup();
    out
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if path.is_dir() {
        if depth > 16 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                collect(&p, out, depth + 1);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
}

/// Watches manifest paths and keeps the last good version of every object.
pub struct ManifestSource {
    paths: Vec<PathBuf>,
    fingerprint: Vec<(PathBuf, FileStamp)>,
    /// Per file: what its last read left in force.
    files: HashMap<PathBuf, FileState>,
    /// Every file's objects together, patched file by file.
    snapshot: Snapshot,
    rules: Rules,
}

/// Modification time and size: a file whose stamp is unchanged is not re-read.
type FileStamp = Option<(SystemTime, u64)>;

struct FileState {
    stamp: FileStamp,
    /// The objects in force from this file (last good versions included).
    objects: BTreeMap<Identity, Object>,
    errors: Vec<ManifestError>,
    skipped: Vec<String>,
}

/// What one load produced; the objects themselves are in [`ManifestSource::snapshot`].
pub struct Loaded {
    pub errors: Vec<ManifestError>,
    pub skipped: Vec<String>,
    /// Services whose Service or EndpointSlices changed in this load.
    pub touched: BTreeSet<ObjectKey>,
}

impl ManifestSource {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            rules: Rules::default(),
            paths,
            fingerprint: Vec::new(),
            files: HashMap::new(),
            snapshot: Snapshot::default(),
        }
    }

    /// Validating with `rules` (`--allow-loopback-endpoints`).
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// True when a file appeared, disappeared or changed since the last load.
    pub fn changed(&self) -> bool {
        self.current_fingerprint() != self.fingerprint
    }

    fn current_fingerprint(&self) -> Vec<(PathBuf, FileStamp)> {
        list_files(&self.paths)
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                (p, meta)
            })
            .collect()
    }

    /// Reads every new or changed file (unchanged ones keep their last
    /// result). A file that cannot be read, or a document that fails, leaves
    /// the objects it held at the last good read in force.
    pub fn load(&mut self) -> Loaded {
        self.fingerprint = self.current_fingerprint();
        let mut touched = BTreeSet::new();
        let mut files = HashMap::new();
        let mut changed: Vec<(BTreeMap<Identity, Object>, PathBuf)> = Vec::new();
        let mut to_read: Vec<(PathBuf, FileStamp, BTreeMap<Identity, Object>)> = Vec::new();
        for (file, stamp) in &self.fingerprint {
            match self.files.remove(file) {
                Some(state) if state.stamp == *stamp && stamp.is_some() => {
                    files.insert(file.clone(), state);
                }
                previous => {
                    let old = previous.map(|p| p.objects).unwrap_or_default();
                    to_read.push((file.clone(), *stamp, old));
                }
            }
        }
        for (file, state, old) in read_files(to_read, self.rules) {
            changed.push((old, file.clone()));
            files.insert(file, state);
        }
        // Files gone since the last load take their objects with them.
        let gone: Vec<(BTreeMap<Identity, Object>, PathBuf)> = self
            .files
            .drain()
            .map(|(path, state)| (state.objects, path))
            .collect();
        self.files = files;
        for (old, file) in changed.into_iter().chain(gone) {
            let empty = BTreeMap::new();
            let now = self.files.get(&file).map(|s| &s.objects).unwrap_or(&empty);
            for id in old.keys() {
                if now.contains_key(id) {
                    continue;
                }
                self.snapshot.remove_touching(id, &mut touched);
                // Another file may hold the same object.
                let elsewhere = self.files.values().find_map(|s| s.objects.get(id)).cloned();
                if let Some(o) = elsewhere {
                    self.snapshot.insert_touching(o, &mut touched);
                }
            }
            for (id, object) in now {
                if old.get(id) != Some(object) {
                    self.snapshot.insert_touching(object.clone(), &mut touched);
                }
            }
        }
        let mut loaded = Loaded {
            errors: Vec::new(),
            skipped: Vec::new(),
            touched,
        };
        for (file, _) in &self.fingerprint {
            if let Some(state) = self.files.get(file) {
                loaded.errors.extend(state.errors.iter().cloned());
                loaded.skipped.extend(state.skipped.iter().cloned());
            }
        }
        loaded
    }

    /// Every object in force, as of the last [`load`](Self::load).
    /// How often the files are checked: changes apply well within a second.
    pub const POLL: std::time::Duration = std::time::Duration::from_millis(200);

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Reads and parses files on every core: YAML parsing is most of the cost
/// of a full load.
fn read_files(
    files: Vec<(PathBuf, FileStamp, BTreeMap<Identity, Object>)>,
    rules: Rules,
) -> Vec<(PathBuf, FileState, BTreeMap<Identity, Object>)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files
            .into_iter()
            .map(|(f, stamp, old)| {
                let state = read_file(&f, stamp, old.clone(), rules);
                (f, state, old)
            })
            .collect();
    }
    let chunk = files.len().div_ceil(workers);
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut it = files.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(chunk).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|(f, stamp, old)| {
                            let state = read_file(&f, stamp, old.clone(), rules);
                            (f, state, old)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A parser panic is a bug; surface it rather than lose a file.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The largest manifest file read (Kubernetes keeps objects under
/// 1.5 MiB; this leaves room for Lists of many).
const MAX_FILE: u64 = 64 << 20;

fn read_file(
    file: &Path,
    stamp: FileStamp,
    previous: BTreeMap<Identity, Object>,
    rules: Rules,
) -> FileState {
    let text = match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_FILE => Err(std::io::Error::other(format!(
            "{} MiB is more than the {} MiB a manifest file may have",
            m.len() >> 20,
            MAX_FILE >> 20
        ))),
        _ => std::fs::read_to_string(file),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            let error = ManifestError {
                file: file.to_path_buf(),
                document: 0,
                object: None,
                field: None,
                message: format!("cannot read: {e}"),
            };
            // Not cached as good: the next load tries again.
            return FileState {
                stamp: None,
                objects: previous,
                errors: vec![error],
                skipped: Vec::new(),
            };
        }
    };
    let (objects, errors, skipped) = parse_file_with(file, &text, rules);
    let mut now: BTreeMap<_, _> = objects.into_iter().map(|o| (o.identity(), o)).collect();
    // Keep the last good version of every object whose document failed now:
    // by identity where known, else all that vanished.
    for err in &errors {
        for (id, old) in &previous {
            let failed_here = match &err.object {
                Some(label) => label_matches(label, id),
                None => true,
            };
            if failed_here && !now.contains_key(id) {
                now.insert(id.clone(), old.clone());
            }
        }
    }
    FileState {
        stamp,
        objects: now,
        errors,
        skipped,
    }
}

/// Whether an error label (`Kind ns/name`, `Kind name` or with `?` parts)
/// names this identity; unknown parts match anything.
fn label_matches(label: &str, id: &Identity) -> bool {
    let (kind, rest) = label.split_once(' ').unwrap_or((label, ""));
    if kind != "?" && kind != id.0.as_str() {
        return false;
    }
    let name = rest.rsplit('/').next().unwrap_or(rest);
    name == "?" || name == id.2
}

impl super::Source for ManifestSource {
    fn snapshot(&self) -> &Snapshot {
        ManifestSource::snapshot(self)
    }

    fn changed(&self) -> bool {
        ManifestSource::changed(self)
    }

    fn load(&mut self) -> super::Changes {
        let loaded = ManifestSource::load(self);
        for s in &loaded.skipped {
            tracing::debug!(object = %s, "kind not handled; skipped");
        }
        super::Changes {
            invalid: loaded.errors.len(),
            errors: loaded.errors.iter().map(ToString::to_string).collect(),
            touched: loaded.touched,
        }
    }

    fn wait(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(Self::POLL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Kind;

    fn parse(text: &str) -> (Vec<Object>, Vec<ManifestError>) {
        let (o, e, _) = parse_file(Path::new("t.yaml"), text);
        (o, e)
    }

    #[test]
    fn multi_document_and_list() {
        let (objects, errors) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: x}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let ids: Vec<_> = objects.iter().map(|o| o.identity()).collect();
        assert_eq!(
            ids,
            vec![
                (Kind::Service, "default".to_string(), "a".to_string()),
                (Kind::Service, "x".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn bad_field_is_reported_with_document_object_and_field() {
        let (objects, errors) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: 70000\n",
        );
        assert_eq!(objects.len(), 1);
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!(e.document, 1);
        assert_eq!(e.object.as_deref(), Some("Service shop/web"));
        assert_eq!(e.field.as_deref(), Some("spec.ports[0].port"));
        assert!(
            e.to_string()
                .contains("t.yaml: document 1 (Service shop/web): field spec.ports[0].port")
        );
    }

    #[test]
    fn endpoint_addresses_the_api_server_refuses_are_refused() {
        let slice = |family: &str, addr: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s}}\n\
                 addressType: {family}\nendpoints:\n- addresses: [\"{addr}\"]\n"
            )
        };
        for (family, addr, why) in [
            ("IPv4", "127.0.0.1", "loopback"),
            ("IPv4", "127.9.9.9", "loopback"),
            ("IPv4", "0.0.0.0", "unspecified"),
            ("IPv4", "169.254.1.1", "link-local range"),
            ("IPv4", "224.0.0.5", "link-local multicast"),
            ("IPv4", "198.18.1.300", "not an IPv4 address"),
            ("IPv6", "::1", "loopback"),
            ("IPv6", "fe80::1", "link-local range"),
            ("IPv6", "198.18.1.2", "not an IPv6 address"),
        ] {
            let (objects, errors) = parse(&slice(family, addr));
            assert!(objects.is_empty(), "{addr}");
            assert_eq!(errors.len(), 1, "{addr}");
            assert_eq!(
                errors[0].field.as_deref(),
                Some("endpoints[0].addresses[0]")
            );
            assert!(errors[0].to_string().contains(why), "{addr}: {}", errors[0]);
        }
        for (family, addr) in [("IPv4", "198.18.1.2"), ("IPv6", "2001:db8::2")] {
            let (objects, errors) = parse(&slice(family, addr));
            assert_eq!((objects.len(), errors.len()), (1, 0), "{addr}: {errors:?}");
        }
    }

    #[test]
    fn type_error_names_the_field_path() {
        let (_, errors) = parse(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n\
             endpoints:\n- addresses: [198.18.1.2]\n  conditions: {ready: maybe}\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].field.as_deref(),
            Some("endpoints[0].conditions.ready"),
            "{:?}",
            errors[0]
        );
    }

    #[test]
    fn gateway_api_objects_are_read_v1_and_v1beta1() {
        let (objects, errors) = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ebpf}\n\
             spec: {controllerName: ingress-ebpf/gateway-controller}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata: {name: web, namespace: infra}\n\
             spec: {gatewayClassName: ebpf, listeners: [{name: http, protocol: HTTP, port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n\
             spec: {parentRefs: [{name: web, namespace: infra}], rules: [{backendRefs: [{name: a, port: 80}]}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: infra}\n\
             spec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}], to: [{group: '', kind: Service}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad}\n\
             spec: {rules: [{backendRefs: [{name: a, port: eighty}]}]}\n",
        );
        let ids: Vec<String> = objects
            .iter()
            .map(|o| {
                let (kind, ns, name) = o.identity();
                format!("{kind} {ns}/{name}")
            })
            .collect();
        assert_eq!(
            ids,
            [
                "GatewayClass /ebpf",
                "Gateway infra/web",
                "HTTPRoute default/r",
                "ReferenceGrant infra/g"
            ]
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object.as_deref(), Some("HTTPRoute bad"));
        assert_eq!(
            errors[0].field.as_deref(),
            Some("spec.rules[0].backendRefs[0].port"),
            "{:?}",
            errors[0]
        );
    }

    #[test]
    fn missing_kind_and_name_are_reported() {
        let (_, errors) =
            parse("apiVersion: v1\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\n");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].field.as_deref(), Some("kind"));
        assert_eq!(errors[1].field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn unknown_kinds_are_skipped_not_errors() {
        let (_, e, skipped) = parse_file(
            Path::new("t.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert!(e.is_empty());
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn last_good_version_stays_when_a_document_breaks() {
        let dir = std::env::temp_dir().join(format!("ingressd-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.yaml");
        let good = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n";
        std::fs::write(&file, good).unwrap();
        let mut source = ManifestSource::new(vec![dir.clone()]);
        let first = source.load();
        assert!(first.errors.is_empty());
        assert_eq!(source.snapshot().services.len(), 2);
        // b breaks, a changes: a's change applies, b's last good version stays.
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 90}]}\n---\n\
                   apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 0}]}\n";
        std::fs::write(&file, bad).unwrap();
        let second = source.load();
        assert_eq!(second.errors.len(), 1);
        let port = |n: &str| {
            source.snapshot().services[&ObjectKey::new("default", n.to_string())]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port
        };
        assert_eq!(port("a"), 90);
        assert_eq!(port("b"), 81);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
