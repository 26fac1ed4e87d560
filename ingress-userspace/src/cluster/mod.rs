//! The cluster as the daemon sees it: the objects it reads, held in a
//! [`Snapshot`], their keys, and what makes an object valid.
mod class;
mod endpoints;
pub mod gateway;
pub mod labels;
mod validate;

pub use class::{ClassConfig, is_ours};
pub use endpoints::{Endpoint, PortRef, usable_endpoints};
use std::collections::{BTreeMap, BTreeSet};
pub(crate) use validate::field_error;
pub use validate::{FieldError, Rules, validate, validate_with};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace, Node, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// `namespace/name` of an object; cluster-scoped objects have an empty
/// namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `namespace/name`, or `name` alone (default namespace `default`),
    /// as flags like `--publish-service` take it.
    pub fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, name)) => Self::new(ns, name),
            None => Self::new("default", s),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

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
    /// Only those an Ingress names (`custom-headers`).
    pub config_maps: BTreeMap<ObjectKey, ConfigMap>,
    pub gateway_classes: BTreeMap<ObjectKey, gateway::GatewayClass>,
    pub gateways: BTreeMap<ObjectKey, gateway::Gateway>,
    pub http_routes: BTreeMap<ObjectKey, gateway::HTTPRoute>,
    pub reference_grants: BTreeMap<ObjectKey, gateway::ReferenceGrant>,
    pub nodes: BTreeMap<ObjectKey, Node>,
    /// Their labels select the routes a Gateway listener takes.
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
}

/// The Service an EndpointSlice belongs to.
fn slice_owner(ns: &str, slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    Some(ObjectKey::new(
        ns,
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
                if let Some(owner) = slice_owner(&key.namespace, &o) {
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
            Object::ConfigMap(o) => drop(self.config_maps.insert(key, *o)),
            Object::GatewayClass(o) => drop(self.gateway_classes.insert(key, *o)),
            Object::Gateway(o) => drop(self.gateways.insert(key, *o)),
            Object::HTTPRoute(o) => drop(self.http_routes.insert(key, *o)),
            Object::ReferenceGrant(o) => drop(self.reference_grants.insert(key, *o)),
            Object::Namespace(o) => drop(self.namespaces.insert(key, *o)),
            Object::Node(o) => drop(self.nodes.insert(key, *o)),
        }
    }

    pub fn remove(&mut self, id: &Identity) {
        let key = ObjectKey::new(id.1.clone(), id.2.clone());
        match id.0 {
            Kind::Service => drop(self.services.remove(&key)),
            Kind::EndpointSlice => {
                self.unindex_slice(&key);
                self.endpoint_slices.remove(&key);
            }
            Kind::Ingress => drop(self.ingresses.remove(&key)),
            Kind::IngressClass => drop(self.ingress_classes.remove(&key)),
            Kind::Secret => drop(self.secrets.remove(&key)),
            Kind::ConfigMap => drop(self.config_maps.remove(&key)),
            Kind::GatewayClass => drop(self.gateway_classes.remove(&key)),
            Kind::Gateway => drop(self.gateways.remove(&key)),
            Kind::HTTPRoute => drop(self.http_routes.remove(&key)),
            Kind::ReferenceGrant => drop(self.reference_grants.remove(&key)),
            Kind::Namespace => drop(self.namespaces.remove(&key)),
            Kind::Node => drop(self.nodes.remove(&key)),
        }
    }

    fn unindex_slice(&mut self, key: &ObjectKey) {
        let Some(old) = self.endpoint_slices.get(key) else {
            return;
        };
        if let Some(owner) = slice_owner(&key.namespace, old)
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
        let key = ObjectKey::new(id.1.clone(), id.2.clone());
        match id.0 {
            Kind::Service => Some(key),
            Kind::EndpointSlice => self
                .endpoint_slices
                .get(&key)
                .and_then(|s| slice_owner(&key.namespace, s)),
            _ => None,
        }
    }
}

/// (kind, namespace, name): what identifies an object across versions.
pub type Identity = (Kind, String, String);

/// The kinds the daemon reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
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
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Node,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HTTPRoute,
        Kind::ReferenceGrant,
        Kind::Namespace,
    ];

    /// The kind's name, as manifests and the API spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
        }
    }

    /// The API resource, as an RBAC rule names it.
    pub const fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::Ingress => "ingresses.networking.k8s.io",
            Kind::IngressClass => "ingressclasses.networking.k8s.io",
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
            Kind::GatewayClass => "gatewayclasses.gateway.networking.k8s.io",
            Kind::Gateway => "gateways.gateway.networking.k8s.io",
            Kind::HTTPRoute => "httproutes.gateway.networking.k8s.io",
            Kind::ReferenceGrant => "referencegrants.gateway.networking.k8s.io",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
        }
    }

    /// Gateway API kinds (their CRDs may not be installed).
    pub const fn is_gateway_api(self) -> bool {
        matches!(
            self,
            Kind::GatewayClass | Kind::Gateway | Kind::HTTPRoute | Kind::ReferenceGrant
        )
    }

    /// Cluster-scoped kinds have an empty namespace in their keys.
    pub const fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::IngressClass | Kind::Node | Kind::GatewayClass | Kind::Namespace
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a kind we read.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Ingress(Box<Ingress>),
    IngressClass(Box<IngressClass>),
    Secret(Box<Secret>),
    ConfigMap(Box<ConfigMap>),
    GatewayClass(Box<gateway::GatewayClass>),
    Gateway(Box<gateway::Gateway>),
    HTTPRoute(Box<gateway::HTTPRoute>),
    ReferenceGrant(Box<gateway::ReferenceGrant>),
    Node(Box<Node>),
    Namespace(Box<Namespace>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HTTPRoute(_) => Kind::HTTPRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HTTPRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    /// (kind, namespace, name): what identifies the object across versions.
    pub fn identity(&self) -> Identity {
        let key = object_key(self.metadata(), self.namespaced());
        (self.kind(), key.namespace, key.name)
    }

    fn namespaced(&self) -> bool {
        self.kind().namespaced()
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
    ObjectKey::new(ns, meta.name.clone().unwrap_or_default())
}

/// A key of a Secret: `data`, or `stringData` as written in hand-made
/// manifests.
pub fn secret_data(secret: &k8s_openapi::api::core::v1::Secret, name: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(name))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(name))
                .map(|s| s.as_bytes().to_vec())
        })
}
