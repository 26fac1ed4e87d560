//! A fake Kubernetes API server for the tests: list, watch (with history,
//! so a dropped watch resumes from its resourceVersion, and 410 Gone once
//! the history is expired), get, create, replace, merge-patch (status too)
//! and delete, for the kinds ingressd reads and the Lease it elects with.
//! Objects are loaded from the same YAML as the file source reads, so the
//! real kube-rs client code runs against known state.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Ingresses,
    IngressClasses,
    Secrets,
    Nodes,
    Leases,
    Pods,
    Events,
    ConfigMaps,
    Crds,
    GatewayClasses,
    Gateways,
    HTTPRoutes,
    ReferenceGrants,
    Namespaces,
}

const ALL: [Res; 16] = [
    Res::Services,
    Res::EndpointSlices,
    Res::Ingresses,
    Res::IngressClasses,
    Res::Secrets,
    Res::Nodes,
    Res::Leases,
    Res::Pods,
    Res::Events,
    Res::ConfigMaps,
    Res::Crds,
    Res::GatewayClasses,
    Res::Gateways,
    Res::HTTPRoutes,
    Res::ReferenceGrants,
    Res::Namespaces,
];

impl Res {
    /// (API prefix, plural, namespaced, kind, apiVersion)
    fn info(self) -> (&'static str, &'static str, bool, &'static str, &'static str) {
        match self {
            Res::Services => ("/api/v1", "services", true, "Service", "v1"),
            Res::EndpointSlices => (
                "/apis/discovery.k8s.io/v1",
                "endpointslices",
                true,
                "EndpointSlice",
                "discovery.k8s.io/v1",
            ),
            Res::Ingresses => (
                "/apis/networking.k8s.io/v1",
                "ingresses",
                true,
                "Ingress",
                "networking.k8s.io/v1",
            ),
            Res::IngressClasses => (
                "/apis/networking.k8s.io/v1",
                "ingressclasses",
                false,
                "IngressClass",
                "networking.k8s.io/v1",
            ),
            Res::Secrets => ("/api/v1", "secrets", true, "Secret", "v1"),
            Res::Nodes => ("/api/v1", "nodes", false, "Node", "v1"),
            Res::Pods => ("/api/v1", "pods", true, "Pod", "v1"),
            Res::ConfigMaps => ("/api/v1", "configmaps", true, "ConfigMap", "v1"),
            Res::Namespaces => ("/api/v1", "namespaces", false, "Namespace", "v1"),
            Res::Leases => (
                "/apis/coordination.k8s.io/v1",
                "leases",
                true,
                "Lease",
                "coordination.k8s.io/v1",
            ),
            Res::Events => (
                "/apis/events.k8s.io/v1",
                "events",
                true,
                "Event",
                "events.k8s.io/v1",
            ),
            Res::Crds => (
                "/apis/apiextensions.k8s.io/v1",
                "customresourcedefinitions",
                false,
                "CustomResourceDefinition",
                "apiextensions.k8s.io/v1",
            ),
            Res::GatewayClasses => (
                "/apis/gateway.networking.k8s.io/v1",
                "gatewayclasses",
                false,
                "GatewayClass",
                "gateway.networking.k8s.io/v1",
            ),
            Res::Gateways => (
                "/apis/gateway.networking.k8s.io/v1",
                "gateways",
                true,
                "Gateway",
                "gateway.networking.k8s.io/v1",
            ),
            Res::HTTPRoutes => (
                "/apis/gateway.networking.k8s.io/v1",
                "httproutes",
                true,
                "HTTPRoute",
                "gateway.networking.k8s.io/v1",
            ),
            Res::ReferenceGrants => (
                "/apis/gateway.networking.k8s.io/v1beta1",
                "referencegrants",
                true,
                "ReferenceGrant",
                "gateway.networking.k8s.io/v1beta1",
            ),
        }
    }

    /// A kind only served once its CustomResourceDefinition (named
    /// `<plural>.<group>`) is in the store, as a real API server.
    fn crd(self) -> Option<String> {
        let (prefix, plural, ..) = self.info();
        let group = prefix.strip_prefix("/apis/")?.split('/').next()?;
        (group == "gateway.networking.k8s.io").then(|| format!("{plural}.{group}"))
    }

    pub fn of_kind(kind: &str) -> Option<Res> {
        ALL.into_iter().find(|r| r.info().3 == kind)
    }
}

type Key = (Res, String, String);

struct Watch {
    res: Res,
    ns: Option<String>,
    name: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn wants(&self, key: &Key) -> bool {
        self.res == key.0
            && self.ns.as_ref().is_none_or(|n| *n == key.1)
            && self.name.as_ref().is_none_or(|n| *n == key.2)
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, key, event type, object)
    history: Vec<(u64, Key, &'static str, Value)>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    expired_below: u64,
    watches: Vec<Watch>,
    forbidden: BTreeSet<Res>,
    requests: Vec<String>,
    /// When each of `requests` came in.
    request_times: Vec<std::time::Instant>,
    /// Unreachable: connections are closed as soon as they are accepted.
    down: bool,
    /// Connections closed that way.
    refused: usize,
}

impl State {
    fn emit(&mut self, key: Key, kind: &'static str, object: Value) {
        let rv = self.rv;
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.watches
            .retain(|w| !w.wants(&key) || w.tx.send(line.clone()).is_ok());
        self.history.push((rv, key, kind, object));
    }

    fn put(&mut self, key: Key, mut object: Value) -> Value {
        self.rv += 1;
        let (_, _, namespaced, kind, api_version) = key.0.info();
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api_version);
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if namespaced {
            meta["namespace"] = json!(key.1);
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
        let event = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            meta["uid"] = json!(format!("uid-{}", self.rv));
            if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            "ADDED"
        };
        self.objects.insert(key.clone(), object.clone());
        self.emit(key, event, object.clone());
        object
    }

    fn delete(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(key.clone(), "DELETED", object.clone());
        Some(object)
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    /// True while "unreachable": open connections are cut.
    down: tokio::sync::watch::Sender<bool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.lock().watches.clear();
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    let mut resp = Response::new(Body::full(body.to_string()));
    *resp.status_mut() = code;
    resp
}

fn ok(value: Value) -> Response<Body> {
    Response::new(Body::full(value.to_string()))
}

/// A response body: whole, or a watch stream fed by a channel.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl Body {
    fn full(s: String) -> Self {
        Body::Full(Some(Bytes::from(s)))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// The parsed request path.
struct Target {
    res: Res,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(path: &str) -> Option<Target> {
    for res in ALL {
        let (prefix, plural, namespaced, _, _) = res.info();
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let (ns, tail) = match parts.as_slice() {
            ["namespaces", ns, tail @ ..] if namespaced => (Some(ns.to_string()), tail),
            tail => (None, tail),
        };
        match tail {
            [p] if *p == plural => {
                return Some(Target {
                    res,
                    ns,
                    name: None,
                    status: false,
                });
            }
            [p, name] if *p == plural => {
                return Some(Target {
                    res,
                    ns,
                    name: Some(name.to_string()),
                    status: false,
                });
            }
            [p, name, "status"] if *p == plural => {
                return Some(Target {
                    res,
                    ns,
                    name: Some(name.to_string()),
                    status: true,
                });
            }
            _ => {}
        }
    }
    None
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%3d", "=")))
        .collect()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().map(|t| t.remove(k));
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API server");
        Self::start_on(listener)
    }

    /// Serves on `listener` (made in a test's network namespace, say).
    /// Needs a tokio runtime.
    pub fn start_on(listener: std::net::TcpListener) -> FakeApi {
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let down = tokio::sync::watch::Sender::new(false);
        let cut = down.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                {
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    if s.down {
                        s.refused += 1;
                        drop(stream);
                        continue;
                    }
                }
                let st = st.clone();
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let serve = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = serve => {}
                        _ = cut.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FakeApi {
            addr,
            state,
            task,
            down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\n\
                 users:\n- name: test\n  user: {{token: test}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test}}\n\
                 current-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Creates or replaces every object of a multi-document YAML text.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).expect("fixture YAML");
            if value.is_null() {
                continue;
            }
            if value["kind"] == "List" {
                for item in value["items"].as_array().cloned().unwrap_or_default() {
                    self.apply(item);
                }
            } else {
                self.apply(value);
            }
        }
    }

    pub fn apply(&self, object: Value) {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let Some(res) = Res::of_kind(&kind) else {
            return;
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = if res.info().2 {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        self.lock().put((res, ns, name), object);
    }

    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let res = Res::of_kind(kind).expect("known kind");
        self.lock()
            .delete(&(res, ns.to_string(), name.to_string()))
            .expect("object to delete");
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let res = Res::of_kind(kind)?;
        self.lock()
            .objects
            .get(&(res, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a kind (in all namespaces).
    pub fn all_of(&self, kind: &str) -> Vec<Value> {
        let Some(res) = Res::of_kind(kind) else {
            return Vec::new();
        };
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == res)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Ends every open watch, as a restarting API server or a broken
    /// connection would.
    pub fn drop_watches(&self) {
        self.lock().watches.clear();
    }

    /// Forgets the history up to now (etcd compaction): watches resumed
    /// from an older resourceVersion get 410 Gone. Ends open watches.
    pub fn expire_history(&self) {
        let mut s = self.lock();
        s.expired_below = s.rv + 1;
        s.history.clear();
        s.watches.clear();
    }

    pub fn watch_count(&self) -> usize {
        let mut s = self.lock();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    /// The API server goes away (open watches end, new connections are
    /// closed at once), or comes back.
    pub fn set_down(&self, down: bool) {
        let mut s = self.lock();
        s.down = down;
        s.watches.clear();
        self.down.send_replace(down);
    }

    /// Connections cut while down.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    pub fn forbid(&self, kind: &str) {
        let res = Res::of_kind(kind).expect("known kind");
        self.lock().forbidden.insert(res);
    }

    pub fn allow(&self, kind: &str) {
        let res = Res::of_kind(kind).expect("known kind");
        self.lock().forbidden.remove(&res);
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The requests with when each came in.
    pub fn timed_requests(&self) -> Vec<(std::time::Instant, String)> {
        let s = self.lock();
        s.request_times
            .iter()
            .copied()
            .zip(s.requests.iter().cloned())
            .collect()
    }
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut s = lock();
        s.requests.push(format!("{method} {uri}"));
        s.request_times.push(std::time::Instant::now());
    }
    let Some(t) = parse_target(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    if let Some(crd) = t.res.crd()
        && !lock()
            .objects
            .contains_key(&(Res::Crds, String::new(), crd))
    {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if lock().forbidden.contains(&t.res) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the server does not allow this method on the requested resource",
        );
    }
    let q = query(&uri);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "body"),
    };
    let (_, _, namespaced, kind, api_version) = t.res.info();
    let ns_of = |v: &Value| {
        if namespaced {
            t.ns.clone()
                .or_else(|| v["metadata"]["namespace"].as_str().map(str::to_string))
                .unwrap_or_else(|| "default".into())
        } else {
            String::new()
        }
    };
    // labelSelector: k=v,k=v (equality only).
    let labels: Vec<(String, String)> = q
        .get("labelSelector")
        .map(|s| {
            s.replace("%2C", ",")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.replace("%2F", "/"), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let has_labels = |v: &Value| {
        labels
            .iter()
            .all(|(k, want)| v["metadata"]["labels"][k].as_str() == Some(want))
    };
    let field_name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    match (method, t.name.clone()) {
        (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel();
            let mut s = lock();
            let watch = Watch {
                res: t.res,
                ns: t.ns.clone(),
                name: field_name,
                tx,
            };
            if from != 0 && from < s.expired_below {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from}")}});
                let _ = watch.tx.send(Bytes::from(format!("{gone}\n")));
                return Response::new(Body::Stream(rx));
            }
            for (rv, key, ev, obj) in &s.history {
                if *rv > from && watch.wants(key) {
                    let line = json!({"type": ev, "object": obj});
                    let _ = watch.tx.send(Bytes::from(format!("{line}\n")));
                }
            }
            s.watches.push(watch);
            Response::new(Body::Stream(rx))
        }
        (Method::GET, None) => {
            let s = lock();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, v)| {
                    k.0 == t.res
                        && t.ns.as_ref().is_none_or(|n| *n == k.1)
                        && field_name.as_ref().is_none_or(|n| *n == k.2)
                        && has_labels(v)
                })
                .map(|(_, v)| v.clone())
                .collect();
            ok(
                json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => {
            let key = (t.res, t.ns.clone().unwrap_or_default(), name);
            match lock().objects.get(&key) {
                Some(v) => ok(v.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            }
        }
        (Method::POST, None) => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let key = (
                t.res,
                ns_of(&v),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            let mut s = lock();
            if s.objects.contains_key(&key) {
                return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            let mut resp = ok(s.put(key, v));
            *resp.status_mut() = StatusCode::CREATED;
            resp
        }
        (Method::PUT, Some(name)) => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let key = (t.res, ns_of(&v), name);
            let mut s = lock();
            let Some(current) = s.objects.get(&key) else {
                return status(StatusCode::NOT_FOUND, "NotFound", "not found");
            };
            if v["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            ok(s.put(key, v))
        }
        (Method::PATCH, Some(name)) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let key = (t.res, t.ns.clone().unwrap_or_default(), name);
            let mut s = lock();
            let Some(mut current) = s.objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "not found");
            };
            // A status patch changes status only, as the real subresource.
            let patch = if t.status {
                json!({"status": patch["status"].clone()})
            } else {
                patch
            };
            merge(&mut current, &patch);
            ok(s.put(key, current))
        }
        (Method::DELETE, Some(name)) => {
            let key = (t.res, t.ns.clone().unwrap_or_default(), name);
            match lock().delete(&key) {
                Some(v) => ok(v),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported",
        ),
    }
}

/// An unused name for a temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ingressd-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
