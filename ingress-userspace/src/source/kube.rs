//! The kube source: the cluster's objects through kube-rs watchers (list,
//! then watch; kube-rs re-lists on 410 Gone and backs off on errors), fed
//! into the same [`Snapshot`] the file source fills.
//!
//! Watch tasks only forward what they see over a channel; the sync loop
//! owns the snapshot and applies everything queued at once, so a burst of
//! changes is one sync. Secrets and ConfigMaps are watched one by one, only
//! those an Ingress of ours names (and `--default-ssl-certificate`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use kube::{Api, Client, Resource, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::cluster::{
    ClassConfig, Identity, Kind, Object, ObjectKey, Rules, Snapshot,
    gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant, our_gateways},
    is_ours, validate_with,
};

/// A kind we watch, and how it goes into the snapshot.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The kind, as [`Object::kind`] says it.
    const KIND: Kind;
    fn into_object(self) -> Object;
}

macro_rules! watched {
    ($($t:ident),*) => {$(
        impl Watched for $t {
            const KIND: Kind = Kind::$t;
            fn into_object(self) -> Object {
                // managedFields is often most of an object and nothing
                // here reads it (client-go informers drop it the same way).
                let mut o = self;
                o.metadata.managed_fields = None;
                Object::$t(Box::new(o))
            }
        }
    )*};
}
watched!(
    Service,
    EndpointSlice,
    Ingress,
    IngressClass,
    Secret,
    ConfigMap,
    Node,
    GatewayClass,
    Gateway,
    HTTPRoute,
    ReferenceGrant,
    Namespace
);

/// What a watch task saw.
enum Change {
    Apply(Object),
    Delete(Identity),
    /// A (re-)list finished: these are all the objects of `kind` the watch
    /// covers (`only` one object, for a watch on one name).
    Listed {
        watch: String,
        kind: Kind,
        only: Option<ObjectKey>,
        objects: Vec<Object>,
    },
}

/// Aborts its task when dropped (a watch nobody needs any more).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the client comes from: in-cluster config in a pod, else the
/// kubeconfig (`--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`).
pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!("--kubeconfig {}: {e}", path.display())
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes configuration ({e}): run in a pod, pass --kubeconfig, or use --manifests"
            )
        })?,
    };
    tracing::info!(api_server = %config.cluster_url, "using the Kubernetes API");
    Client::try_from(config).map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))
}

pub struct KubeSource {
    client: Client,
    tx: mpsc::UnboundedSender<Change>,
    rx: mpsc::UnboundedReceiver<Change>,
    /// Told on every queued change: the sync loop waits on it.
    notify: Arc<Notify>,
    /// Told when a Gateway API CRD is created or changed.
    crds: Arc<Notify>,
    /// When the queue was last applied: a change within BATCH_WINDOW of
    /// it waits for the window's end, with the rest of its burst.
    last_load: std::time::Instant,
    snapshot: Snapshot,
    /// Watches whose first list has not come yet, and since when.
    waiting: BTreeMap<String, std::time::Instant>,
    tasks: Vec<Task>,
    /// One watch per Secret and ConfigMap in use.
    named: BTreeMap<(Kind, ObjectKey), Task>,
    class: ClassConfig,
    default_secret: Option<ObjectKey>,
    /// Objects refused by validation, by identity (their last good version
    /// stays in force).
    invalid: HashMap<Identity, String>,
    rules: Rules,
}

/// What one [`KubeSource::load`] changed.
pub struct KubeLoaded {
    /// Services whose Service or EndpointSlices changed.
    pub touched: BTreeSet<ObjectKey>,
    /// Objects refused (`Kind ns/name: field: message`), new in this load.
    pub errors: Vec<String>,
}

impl KubeSource {
    /// Starts the watches: Services, EndpointSlices and Ingresses (all
    /// namespaces, or `namespace`), IngressClasses, and this node.
    pub fn start(
        client: Client,
        namespace: Option<&str>,
        node_name: &str,
        class: ClassConfig,
        default_secret: Option<ObjectKey>,
        rules: Rules,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut source = Self {
            client: client.clone(),
            tx,
            rx,
            notify: Arc::new(Notify::new()),
            crds: Arc::new(Notify::new()),
            last_load: std::time::Instant::now(),
            snapshot: Snapshot::default(),
            waiting: BTreeMap::new(),
            tasks: Vec::new(),
            named: BTreeMap::new(),
            class,
            default_secret,
            invalid: HashMap::new(),
            rules,
        };
        fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
        where
            K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let mut tasks = vec![
            source.watch::<Service>(scoped(&client, namespace), None),
            source.watch::<EndpointSlice>(scoped(&client, namespace), None),
            source.watch::<Ingress>(scoped(&client, namespace), None),
            source.watch::<IngressClass>(Api::all(client.clone()), None),
        ];
        // Gateway API: its CRDs may not be installed (then each watch
        // says so once, counts as listed empty, and lists again when one
        // is created).
        tasks.push(Task(tokio::spawn(watch_crds(
            client.clone(),
            source.crds.clone(),
        ))));
        tasks.extend([
            source.watch::<GatewayClass>(Api::all(client.clone()), None),
            source.watch::<Gateway>(scoped(&client, namespace), None),
            source.watch::<HTTPRoute>(scoped(&client, namespace), None),
            source.watch::<ReferenceGrant>(scoped(&client, namespace), None),
            // Their labels: `allowedRoutes.namespaces.selector`.
            source.watch::<Namespace>(Api::all(client.clone()), None),
        ]);
        if !node_name.is_empty() {
            let only = Some(ObjectKey::new("", node_name));
            tasks.push(source.watch::<Node>(Api::all(client), only));
        }
        source.tasks = tasks;
        source
    }

    /// Starts a watch of every `K` in `api`, or of the one object `only`
    /// (by field selector); the sync waits for its first list.
    fn watch<K: Watched>(&mut self, api: Api<K>, only: Option<ObjectKey>) -> Task {
        let name = watch_name(K::KIND, only.as_ref());
        let config = match &only {
            Some(key) => watcher::Config::default().fields(&format!("metadata.name={}", key.name)),
            None => watcher::Config::default(),
        };
        self.waiting.insert(name.clone(), std::time::Instant::now());
        Task(tokio::spawn(run_watch(
            api,
            config,
            name,
            only,
            self.tx.clone(),
            (self.notify.clone(), self.crds.clone()),
        )))
    }

    /// Every watch has listed once: the snapshot is the cluster's.
    pub fn synced(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A watch started for a new Ingress's Secret has not listed yet (for
    /// at most `SECRET_HOLD`): a sync now would publish that Ingress's
    /// HTTP routes and redirects while HTTPS still has no certificate.
    pub fn holds(&self) -> bool {
        self.waiting
            .values()
            .any(|since| since.elapsed() < SECRET_HOLD)
    }

    /// Objects refused by validation now.
    pub fn invalid(&self) -> usize {
        self.invalid.len()
    }

    /// Something is queued.
    pub fn changed(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Returns once something is queued (or at once if something is).
    pub async fn wait(&self) {
        if !self.changed() {
            self.notify.notified().await;
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Applies everything queued; then starts and stops the watches by
    /// name to match the Secrets and ConfigMaps in use.
    pub fn load(&mut self) -> KubeLoaded {
        let mut loaded = KubeLoaded {
            touched: BTreeSet::new(),
            errors: Vec::new(),
        };
        while let Ok(change) = self.rx.try_recv() {
            self.apply(change, &mut loaded);
        }
        self.last_load = std::time::Instant::now();
        self.refresh_named_watches();
        loaded
    }

    fn apply(&mut self, change: Change, loaded: &mut KubeLoaded) {
        match change {
            Change::Apply(object) => self.upsert(object, loaded),
            Change::Delete(id) => self.remove(&id, loaded),
            Change::Listed {
                watch,
                kind,
                only,
                objects,
            } => {
                // What the list no longer holds is gone (deleted while the
                // watch was down, or before a 410).
                let listed: BTreeSet<Identity> = objects.iter().map(Object::identity).collect();
                let held: Vec<Identity> = self
                    .identities_of(kind)
                    .into_iter()
                    .filter(|id| {
                        only.as_ref()
                            .is_none_or(|k| (&id.1, &id.2) == (&k.namespace, &k.name))
                    })
                    .filter(|id| !listed.contains(id))
                    .collect();
                for id in held {
                    self.remove(&id, loaded);
                }
                for object in objects {
                    self.upsert(object, loaded);
                }
                self.waiting.remove(&watch);
            }
        }
    }

    fn identities_of(&self, kind: Kind) -> Vec<Identity> {
        let ids = |keys: Vec<&ObjectKey>| -> Vec<Identity> {
            keys.into_iter()
                .map(|k| (kind, k.namespace.clone(), k.name.clone()))
                .collect()
        };
        let s = &self.snapshot;
        match kind {
            Kind::Service => ids(s.services.keys().collect()),
            Kind::EndpointSlice => ids(s.endpoint_slices().keys().collect()),
            Kind::Ingress => ids(s.ingresses.keys().collect()),
            Kind::IngressClass => ids(s.ingress_classes.keys().collect()),
            Kind::Secret => ids(s.secrets.keys().collect()),
            Kind::ConfigMap => ids(s.config_maps.keys().collect()),
            Kind::GatewayClass => ids(s.gateway_classes.keys().collect()),
            Kind::Gateway => ids(s.gateways.keys().collect()),
            Kind::HTTPRoute => ids(s.http_routes.keys().collect()),
            Kind::ReferenceGrant => ids(s.reference_grants.keys().collect()),
            Kind::Namespace => ids(s.namespaces.keys().collect()),
            Kind::Node => ids(s.nodes.keys().collect()),
        }
    }

    fn upsert(&mut self, object: Object, loaded: &mut KubeLoaded) {
        let id = object.identity();
        // From a watch by name stopped after it queued this: not in use.
        if matches!(id.0, Kind::Secret | Kind::ConfigMap)
            && !self
                .named
                .contains_key(&(id.0, ObjectKey::new(id.1.clone(), id.2.clone())))
        {
            return;
        }
        if let Err(e) = validate_with(&object, self.rules) {
            let message = format!(
                "{} {}: field {}: {}",
                id.0,
                display_key(&id),
                e.field,
                e.message
            );
            if self.invalid.get(&id) != Some(&message) {
                loaded.errors.push(message.clone());
                self.invalid.insert(id, message);
            }
            return;
        }
        self.invalid.remove(&id);
        self.snapshot.insert_touching(object, &mut loaded.touched);
    }

    fn remove(&mut self, id: &Identity, loaded: &mut KubeLoaded) {
        self.invalid.remove(id);
        self.snapshot.remove_touching(id, &mut loaded.touched);
    }

    /// The Secrets and ConfigMaps in use: `spec.tls[].secretName`,
    /// `proxy-ssl-secret`, `auth-secret`, `auth-tls-secret` and
    /// `custom-headers` of our Ingresses, the default certificate's, and
    /// `--add-headers` and `--proxy-set-headers`' ConfigMaps.
    fn named_in_use(&self) -> BTreeSet<(Kind, ObjectKey)> {
        let mut out: BTreeSet<(Kind, ObjectKey)> = self
            .default_secret
            .iter()
            .map(|k| (Kind::Secret, k.clone()))
            .chain(
                [&self.class.add_headers, &self.class.proxy_set_headers]
                    .into_iter()
                    .flatten()
                    .map(|k| (Kind::ConfigMap, k.clone())),
            )
            .collect();
        // The certificates of our Gateways' listeners.
        for (key, gw) in our_gateways(&self.snapshot, &self.class.gateway_controller) {
            let refs = gw
                .spec
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .flat_map(|t| &t.certificate_refs)
                .filter(|r| {
                    r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret"
                });
            out.extend(refs.map(|r| {
                let ns = r.namespace.clone().unwrap_or_else(|| key.namespace.clone());
                (Kind::Secret, ObjectKey::new(ns, r.name.clone()))
            }));
        }
        for (key, ing) in &self.snapshot.ingresses {
            let ns = &key.namespace;
            if !is_ours(ing, &self.snapshot, &self.class) {
                continue;
            }
            let tls = ing.spec.iter().flat_map(|s| s.tls.iter().flatten());
            out.extend(
                tls.filter_map(|t| t.secret_name.clone())
                    .map(|name| (Kind::Secret, ObjectKey::new(ns.clone(), name))),
            );
            // TLS to the endpoints: `proxy-ssl-secret: namespace/name`;
            // the users of `auth-type`: `auth-secret: [namespace/]name`;
            // the CA of client certificates: `auth-tls-secret`.
            // Of the Ingress's own namespace only (others are refused
            // unread).
            let annotations = ing.metadata.annotations.as_ref();
            let named = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
            let proxy_ssl = named(PROXY_SSL_SECRET).and_then(|v| v.split_once('/'));
            let auth = named(AUTH_SECRET).map(|v| v.split_once('/').unwrap_or((ns, v)));
            let auth_tls = named(AUTH_TLS_SECRET).map(|v| v.split_once('/').unwrap_or((ns, v)));
            let headers = named(CUSTOM_HEADERS).map(|v| v.split_once('/').unwrap_or((ns, v)));
            let secrets = [proxy_ssl, auth, auth_tls].map(|s| (Kind::Secret, s));
            out.extend(
                secrets
                    .into_iter()
                    .chain([(Kind::ConfigMap, headers)])
                    .filter_map(|(kind, named)| Some((kind, named?)))
                    .filter(|(_, (nns, name))| nns == ns && !name.is_empty())
                    .map(|(kind, (_, name))| (kind, ObjectKey::new(ns.clone(), name.to_string()))),
            );
        }
        out
    }

    fn refresh_named_watches(&mut self) {
        let wanted = self.named_in_use();
        let unused: Vec<(Kind, ObjectKey)> = self
            .named
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for id in unused {
            self.named.remove(&id);
            let (kind, key) = id;
            self.waiting.remove(&watch_name(kind, Some(&key)));
            self.snapshot.remove(&(kind, key.namespace, key.name));
        }
        for id in wanted {
            if self.named.contains_key(&id) {
                continue;
            }
            let (kind, key) = &id;
            let task = match kind {
                Kind::ConfigMap => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
                    self.watch(api, Some(key.clone()))
                }
                _ => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
                    self.watch(api, Some(key.clone()))
                }
            };
            self.named.insert(id, task);
        }
    }
}

/// The name a watch goes by, in logs and in `waiting`.
fn watch_name(kind: Kind, only: Option<&ObjectKey>) -> String {
    match only {
        Some(key) => format!("{kind} {key}"),
        None => kind.to_string(),
    }
}

fn display_key(id: &Identity) -> String {
    if id.1.is_empty() {
        id.2.clone()
    } else {
        format!("{}/{}", id.1, id.2)
    }
}

/// One watch: list, then watch, re-list when the API server says so, back
/// off on errors. Each error is logged once (with what to fix) until the
/// watch works again.
async fn run_watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    name: String,
    only: Option<ObjectKey>,
    tx: mpsc::UnboundedSender<Change>,
    (notify, crds): (Arc<Notify>, Arc<Notify>),
) {
    let kind = K::KIND;
    let mut stream = watcher(api, config).boxed();
    let mut buffer = Vec::new();
    let mut failing: Option<String> = None;
    let mut backoff = Backoff::default();
    while let Some(item) = stream.next().await {
        let change = match item {
            Err(e) if kind.is_gateway_api() && not_served(&e) => {
                // The CRD is not installed: none of these exist. Said
                // once; asked again now and then, picked up once it is.
                if failing.as_deref() != Some("absent") {
                    // One line for the bundle, not one per kind.
                    if kind == Kind::GatewayClass {
                        tracing::info!(
                            "the Gateway API CRDs are not installed (README: Gateway API): its kinds are watched once they are"
                        );
                    }
                    failing = Some("absent".into());
                    let listed = Change::Listed {
                        watch: name.clone(),
                        kind,
                        only: only.clone(),
                        objects: Vec::new(),
                    };
                    if tx.send(listed).is_err() {
                        return;
                    }
                    notify.notify_one();
                }
                tokio::select! {
                    () = crds.notified() => {}
                    () = tokio::time::sleep(CRD_RETRY) => {}
                }
                continue;
            }
            Err(e) => {
                let (what, hint) = explain(&e, kind);
                if failing.as_deref() != Some(what.as_str()) {
                    tracing::warn!(watch = %name, error = %e, "{hint}; retrying with backoff, serving the last good state");
                    failing = Some(what);
                }
                tokio::time::sleep(backoff.after(&e)).await;
                continue;
            }
            Ok(watcher::Event::Init) => {
                buffer.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                buffer.push(o.into_object());
                None
            }
            Ok(watcher::Event::InitDone) => Some(Change::Listed {
                watch: name.clone(),
                kind,
                only: only.clone(),
                objects: std::mem::take(&mut buffer),
            }),
            Ok(watcher::Event::Apply(o)) => Some(Change::Apply(o.into_object())),
            Ok(watcher::Event::Delete(o)) => Some(Change::Delete(o.into_object().identity())),
        };
        // Init comes before each list attempt: only what follows it shows
        // the watch working again.
        if let Some(change) = change {
            backoff.reset();
            if failing.take().is_some() {
                tracing::info!(watch = %name, "watch works again");
            }
            if tx.send(change).is_err() {
                return;
            }
            notify.notify_one();
        }
    }
}

/// The pause after a failed list or watch: doubling from 500 ms to 8 s
/// while the API server fails, none after a 410 Gone (the server is back
/// and says the watch is too old: the re-list starts at once, as
/// client-go's reflector does, not after the pause built up while the
/// server was away).
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(8);

    fn after(&mut self, e: &watcher::Error) -> Duration {
        if is_gone(e) {
            self.reset();
            return Duration::ZERO;
        }
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Tells `crds` whenever a Gateway API CRD (labelled with its bundle
/// version, as the upstream manifests are) is created or changed: only
/// their metadata is watched. Without the RBAC to, the watches of the
/// Gateway API kinds fall back to asking every `CRD_RETRY`.
async fn watch_crds(client: Client, crds: Arc<Notify>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<kube::core::PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
    let config = watcher::Config::default().labels("gateway.networking.k8s.io/bundle-version");
    let mut stream = watcher(api, config).boxed();
    let mut backoff = Backoff::default();
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::Apply(_) | watcher::Event::InitDone) => {
                backoff.reset();
                failing = false;
                crds.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::debug!(error = %e, "cannot watch CustomResourceDefinitions: Gateway API CRDs installed later are noticed within {} s", CRD_RETRY.as_secs());
                    failing = true;
                }
                tokio::time::sleep(backoff.after(&e).max(Duration::from_secs(5))).await;
            }
        }
    }
}

/// How often a watch of a kind whose CRD is not installed asks again.
const CRD_RETRY: Duration = Duration::from_secs(300);

/// The API server does not serve the kind (404 on its list or watch).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// The API server's 410 Gone: the watch's resourceVersion is too old.
fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// A short class of the error (to log each once) and what to do about it.
fn explain(e: &watcher::Error, kind: Kind) -> (String, String) {
    let api_code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    let resource = kind.resource();
    match api_code {
        Some(403) => (
            "403".into(),
            format!(
                "forbidden: the ServiceAccount needs get, list and watch on {resource} (see deploy/base/rbac.yaml)"
            ),
        ),
        Some(401) => (
            "401".into(),
            "unauthorized: the credentials were rejected (ServiceAccount token or kubeconfig)"
                .into(),
        ),
        Some(410) => (
            "410".into(),
            "the watch expired (410 Gone): listing again".into(),
        ),
        Some(404) => (
            "404".into(),
            format!("the API server does not serve {resource} (Kubernetes too old?)"),
        ),
        Some(code) => (format!("{code}"), format!("the API server answered {code}")),
        None => ("transport".into(), "cannot reach the API server".into()),
    }
}

const PROXY_SSL_SECRET: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";
const AUTH_SECRET: &str = "nginx.ingress.kubernetes.io/auth-secret";
const AUTH_TLS_SECRET: &str = "nginx.ingress.kubernetes.io/auth-tls-secret";
const CUSTOM_HEADERS: &str = "nginx.ingress.kubernetes.io/custom-headers";

/// How long a sync waits for a new Secret watch's first list (a Secret the
/// API refuses, say, holds the rest up no longer).
const SECRET_HOLD: Duration = Duration::from_secs(2);

/// Changes within this long of the last load are gathered into one (a
/// burst of changes is a few syncs, a lone change is applied at once).
const BATCH_WINDOW: Duration = Duration::from_millis(50);

impl super::Source for KubeSource {
    fn snapshot(&self) -> &Snapshot {
        KubeSource::snapshot(self)
    }

    fn changed(&self) -> bool {
        KubeSource::changed(self)
    }

    fn load(&mut self) -> super::Changes {
        let loaded = KubeSource::load(self);
        super::Changes {
            touched: loaded.touched,
            errors: loaded.errors,
            invalid: self.invalid(),
        }
    }

    fn synced(&self) -> bool {
        KubeSource::synced(self)
    }

    fn holds(&self) -> bool {
        KubeSource::holds(self)
    }

    fn wait(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if tokio::time::timeout(Duration::from_secs(1), KubeSource::wait(self))
                .await
                .is_ok()
            {
                // A change after a quiet spell is applied at once; one
                // soon after the last load waits out its window.
                let since = self.last_load.elapsed();
                if since < BATCH_WINDOW {
                    tokio::time::sleep(BATCH_WINDOW - since).await;
                }
            }
        })
    }
}
