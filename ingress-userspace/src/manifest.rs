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

use k8s_openapi::{
    api::{
        core::v1::{Node, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeSeed as _;

mod bounded;

/// `namespace/name` of an object; cluster-scoped objects have an empty namespace.
pub type ObjectKey = (String, String);

/// Every object the daemon cares about, as the cluster would hold them.
/// EndpointSlices are indexed by the Service they belong to (label
/// `kubernetes.io/service-name`), so one Service's inputs are found without
/// a scan: change them through [`Snapshot::insert`] and [`Snapshot::remove`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    pub ingresses: BTreeMap<ObjectKey, Ingress>,
    pub ingress_classes: BTreeMap<ObjectKey, IngressClass>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
    pub nodes: BTreeMap<ObjectKey, Node>,
}

/// The Service an EndpointSlice belongs to.
fn slice_owner(ns: &str, slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    Some((
        ns.to_string(),
        labels.get("kubernetes.io/service-name")?.clone(),
    ))
}

impl Snapshot {
    pub fn insert(&mut self, object: Object) {
        let namespaced = object.namespaced();
        let key = object_key(object.metadata(), namespaced);
        match object {
            Object::Service(o) => drop(self.services.insert(key, *o)),
            Object::EndpointSlice(o) => {
                self.unindex_slice(&key);
                if let Some(owner) = slice_owner(&key.0, &o) {
                    self.slices_by_service
                        .entry(owner)
                        .or_default()
                        .insert(key.clone());
                }
                self.endpoint_slices.insert(key, *o);
            }
            Object::Ingress(o) => drop(self.ingresses.insert(key, *o)),
            Object::IngressClass(o) => drop(self.ingress_classes.insert(key, *o)),
            Object::Secret(o) => drop(self.secrets.insert(key, *o)),
            Object::Node(o) => drop(self.nodes.insert(key, *o)),
        }
    }

    pub fn remove(&mut self, id: &Identity) {
        let key = (id.1.clone(), id.2.clone());
        match id.0 {
            "Service" => drop(self.services.remove(&key)),
            "EndpointSlice" => {
                self.unindex_slice(&key);
                self.endpoint_slices.remove(&key);
            }
            "Ingress" => drop(self.ingresses.remove(&key)),
            "IngressClass" => drop(self.ingress_classes.remove(&key)),
            "Secret" => drop(self.secrets.remove(&key)),
            "Node" => drop(self.nodes.remove(&key)),
            _ => {}
        }
    }

    fn unindex_slice(&mut self, key: &ObjectKey) {
        let Some(old) = self.endpoint_slices.get(key) else {
            return;
        };
        if let Some(owner) = slice_owner(&key.0, old)
            && let Some(set) = self.slices_by_service.get_mut(&owner)
        {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
    }

    pub fn endpoint_slices(&self) -> &BTreeMap<ObjectKey, EndpointSlice> {
        &self.endpoint_slices
    }

    /// The EndpointSlices of one Service, in name order.
    pub fn slices_of(&self, service: &ObjectKey) -> Vec<&EndpointSlice> {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoint_slices.get(k))
            .collect()
    }

    /// `insert`, adding to `touched` the Services whose L4 state that may
    /// change: the ones the old version and the new one belong to.
    pub fn insert_touching(&mut self, object: Object, touched: &mut BTreeSet<ObjectKey>) {
        let id = object.identity();
        touched.extend(self.services_touched_by(&id));
        self.insert(object);
        touched.extend(self.services_touched_by(&id));
    }

    /// `remove`, adding to `touched` the Services that may change.
    pub fn remove_touching(&mut self, id: &Identity, touched: &mut BTreeSet<ObjectKey>) {
        touched.extend(self.services_touched_by(id));
        self.remove(id);
    }

    /// The Services whose L4 state depends on the object `id` as held now.
    pub fn services_touched_by(&self, id: &Identity) -> Option<ObjectKey> {
        let key = (id.1.clone(), id.2.clone());
        match id.0 {
            "Service" => Some(key),
            "EndpointSlice" => self
                .endpoint_slices
                .get(&key)
                .and_then(|s| slice_owner(&key.0, s)),
            _ => None,
        }
    }
}

/// (kind, namespace, name): what identifies an object across versions.
pub type Identity = (&'static str, String, String);

/// One object of a kind we read.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Ingress(Box<Ingress>),
    IngressClass(Box<IngressClass>),
    Secret(Box<Secret>),
    Node(Box<Node>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Ingress(_) => "Ingress",
            Object::IngressClass(_) => "IngressClass",
            Object::Secret(_) => "Secret",
            Object::Node(_) => "Node",
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }

    /// (kind, namespace, name): what identifies the object across versions.
    pub fn identity(&self) -> Identity {
        let (ns, name) = object_key(self.metadata(), self.namespaced());
        (self.kind(), ns, name)
    }

    fn namespaced(&self) -> bool {
        !matches!(self, Object::IngressClass(_) | Object::Node(_))
    }
}

fn object_key(meta: &ObjectMeta, namespaced: bool) -> ObjectKey {
    let ns = if namespaced {
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_string())
    } else {
        String::new()
    };
    (ns, meta.name.clone().unwrap_or_default())
}

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

/// A semantic problem found by validation: field path and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses every document of one file. Unknown kinds are skipped (and
/// returned as names, for a log line); bad documents become errors.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Object>, Vec<ManifestError>, Vec<String>) {
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
        parse_value(value, &mut objects, &mut skipped, &mut |o, f, m| {
            errors.push(err(o, f, m))
        });
    }
    (objects, errors, skipped)
}

type ErrorSink<'a> = dyn FnMut(Option<String>, Option<String>, String) + 'a;

fn parse_value(
    value: serde_norway::Value,
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
                    parse_value(item, objects, skipped, report);
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
        ("v1", "Node") => typed(value).map(|s: Node| Object::Node(Box::new(s))),
        _ => {
            skipped.push(format!("{api_version} {label}"));
            return;
        }
    };
    match object.and_then(|o| validate(&o).map(|()| o)) {
        Ok(o) => objects.push(o),
        Err(e) => report(Some(label), Some(e.field), e.message),
    }
}

/// Deserialises into a typed object, keeping the path of a failing field.
fn typed<T: serde::de::DeserializeOwned>(value: serde_norway::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        field_error(if path == "." { String::new() } else { path }, message)
    })
}

/// Checks what the API server would have refused, so the model only sees
/// objects that make sense.
pub fn validate(object: &Object) -> Result<(), FieldError> {
    match object {
        Object::Service(s) => validate_service(s),
        Object::EndpointSlice(s) => validate_endpoint_slice(s),
        _ => Ok(()),
    }
}

fn valid_port(p: i32) -> bool {
    (1..=65535).contains(&p)
}

fn validate_service(svc: &Service) -> Result<(), FieldError> {
    let Some(spec) = &svc.spec else { return Ok(()) };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(field_error(
            "spec.type",
            format!("unsupported value {ty:?}"),
        ));
    }
    if let Some(p) = spec.external_traffic_policy.as_deref()
        && !matches!(p, "Cluster" | "Local")
    {
        return Err(field_error(
            "spec.externalTrafficPolicy",
            format!("unsupported value {p:?} (Cluster or Local)"),
        ));
    }
    if let Some(a) = spec.session_affinity.as_deref()
        && !matches!(a, "None" | "ClientIP")
    {
        return Err(field_error(
            "spec.sessionAffinity",
            format!("unsupported value {a:?}"),
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(field_error(
                format!("spec.externalIPs[{i}]"),
                format!("{ip:?} is not an IP address"),
            ));
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = std::collections::HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        if !valid_port(port.port) {
            return Err(field_error(
                at("port"),
                format!("{} is not in 1-65535", port.port),
            ));
        }
        if let Some(np) = port.node_port
            && !valid_port(np)
        {
            return Err(field_error(
                at("nodePort"),
                format!("{np} is not in 1-65535"),
            ));
        }
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            return Err(field_error(
                at("protocol"),
                format!("unsupported value {proto:?}"),
            ));
        }
        if ports.len() > 1 && port.name.as_deref().unwrap_or("").is_empty() {
            return Err(field_error(
                at("name"),
                "required when a Service has more than one port",
            ));
        }
        if !names.insert((port.name.clone().unwrap_or_default(), proto.to_string())) {
            return Err(field_error(at("name"), "duplicate port name"));
        }
        if ty == "NodePort" && port.node_port.is_none() {
            return Err(field_error(
                at("nodePort"),
                "required in manifest files for type NodePort (the API server would allocate one)",
            ));
        }
    }
    Ok(())
}

fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<(), FieldError> {
    let family = slice.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        return Err(field_error(
            "addressType",
            format!("unsupported value {family:?}"),
        ));
    }
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(p) = port.port
            && !valid_port(p)
        {
            return Err(field_error(
                format!("ports[{i}].port"),
                format!("{p} is not in 1-65535"),
            ));
        }
    }
    if family == "IPv4" {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            for (j, addr) in ep.addresses.iter().enumerate() {
                if addr.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(field_error(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{addr:?} is not an IPv4 address"),
                    ));
                }
            }
        }
    }
    Ok(())
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
            paths,
            fingerprint: Vec::new(),
            files: HashMap::new(),
            snapshot: Snapshot::default(),
        }
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
        for (file, state, old) in read_files(to_read) {
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
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Reads and parses files on every core: YAML parsing is most of the cost
/// of a full load.
fn read_files(
    files: Vec<(PathBuf, FileStamp, BTreeMap<Identity, Object>)>,
) -> Vec<(PathBuf, FileState, BTreeMap<Identity, Object>)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files
            .into_iter()
            .map(|(f, stamp, old)| {
                let state = read_file(&f, stamp, old.clone());
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
                            let state = read_file(&f, stamp, old.clone());
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

fn read_file(file: &Path, stamp: FileStamp, previous: BTreeMap<Identity, Object>) -> FileState {
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
    let (objects, errors, skipped) = parse_file(file, &text);
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
    if kind != "?" && kind != id.0 {
        return false;
    }
    let name = rest.rsplit('/').next().unwrap_or(rest);
    name == "?" || name == id.2
}

#[cfg(test)]
mod tests {
    use super::*;

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
                ("Service", "default".to_string(), "a".to_string()),
                ("Service", "x".to_string(), "b".to_string())
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
            source.snapshot().services[&("default".to_string(), n.to_string())]
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
