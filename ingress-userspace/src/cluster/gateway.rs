//! Gateway API objects (gateway.networking.k8s.io): GatewayClass, Gateway
//! and HTTPRoute (v1), ReferenceGrant (v1beta1), with the fields ingressd
//! reads. Written here rather than taken from the `gateway-api` crate,
//! whose releases are built on older kube and k8s-openapi majors than ours;
//! kube's `Api` takes them through `k8s_openapi::Resource` and `Metadata`.
//!
//! Enumerations the spec may grow (protocols, match types, filter types)
//! are kept as written, so an object with a value this version does not
//! know still parses and is reported by what reads it, as the spec asks
//! implementations to do, instead of being refused whole.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// The API group of every kind here.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The Gateways of GatewayClasses whose `controllerName` is `controller`.
pub fn our_gateways<'s>(
    snapshot: &'s super::Snapshot,
    controller: &'s str,
) -> impl Iterator<Item = (&'s super::ObjectKey, &'s Gateway)> + 's {
    snapshot.gateways.iter().filter(move |(_, gw)| {
        snapshot
            .gateway_classes
            .get(&super::ObjectKey::new(
                "",
                gw.spec.gateway_class_name.clone(),
            ))
            .is_some_and(|c| c.spec.controller_name == controller)
    })
}

impl Gateway {
    /// `spec.addresses` that are IPv4 addresses (`IPAddress`, the default
    /// type): where its listeners are reached besides the node's ports.
    pub fn ipv4_addresses(&self) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
        self.spec
            .addresses
            .iter()
            .filter(|a| a.type_.as_deref().is_none_or(|t| t == "IPAddress"))
            .filter_map(|a| a.value.parse().ok())
    }
}

/// `k8s_openapi::Resource` and `Metadata` for a kind of this group, so
/// that kube's `Api<K>` and watchers take it.
macro_rules! gateway_resource {
    ($t:ident, $version:literal, $plural:literal, $scope:ident) => {
        impl k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = concat!("gateway.networking.k8s.io/", $version);
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = stringify!($t);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::$scope;
        }

        impl k8s_openapi::Metadata for $t {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_resource!(GatewayClass, "v1", "gatewayclasses", ClusterResourceScope);
gateway_resource!(Gateway, "v1", "gateways", NamespaceResourceScope);
gateway_resource!(HTTPRoute, "v1", "httproutes", NamespaceResourceScope);
gateway_resource!(
    ReferenceGrant,
    "v1beta1",
    "referencegrants",
    NamespaceResourceScope
);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayClass {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewayClassSpec,
    /// As the API server has it: compared with what ingressd would
    /// write, never read otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// Ours when it is `--gateway-controller-name`.
    #[serde(default)]
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewaySpec,
    /// As the API server has it: compared with what ingressd would
    /// write, never read otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: i32,
    /// `HTTP`, `HTTPS` (served); `TLS`, `TCP`, `UDP` and others are
    /// reported as unsupported.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Default: this API group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (the default) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

/// A reference to an object by group, kind, name and namespace (a
/// certificate's Secret, a route's backend or mirror).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Default: the core group ("").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default: `Secret` for certificates, `Service` for backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// Default: the referring object's; another needs a ReferenceGrant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// For backends: the Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HTTPRouteSpec,
    /// As the API server has it: compared with what ingressd would
    /// write, never read otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Empty as written: the API server defaults it to one rule matching
    /// every path; routes from files get the same default when compiled.
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Default: this API group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default: `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// A listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// None written: one match of the path prefix `/`.
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HTTPRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HTTPRouteTimeouts>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HTTPValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HTTPValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// `PathPrefix` (the default), `Exact` or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Default: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header's or a query parameter's match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`,
    /// `RequestRedirect`, `URLRewrite`, `RequestMirror`, `ExtensionRef`…
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderValuePair {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Default: 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    pub numerator: i32,
    /// Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i32>,
}

/// An `ObjectRef` with a weight and filters (its fields written out, not
/// flattened, so that a bad one is reported by its whole path).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPBackendRef {
    /// Default: the core group ("").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default: `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HTTPRouteFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    /// A Gateway API duration (`10s`, `1m30s`, `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrant {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReferenceGrantSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Whether ReferenceGrants of namespace `to_ns` let a `from_kind` of
/// `from_ns` refer to the `to_kind` (core group when `to_group` is "")
/// named `to_name` there. The same namespace needs no grant.
pub fn reference_granted<'a>(
    grants: impl IntoIterator<Item = &'a ReferenceGrant>,
    from: (&str, &str, &str),
    to: (&str, &str, &str, &str),
) -> bool {
    let (from_group, from_kind, from_ns) = from;
    let (to_group, to_kind, to_ns, to_name) = to;
    if from_ns == to_ns {
        return true;
    }
    grants
        .into_iter()
        .filter(|g| g.metadata.namespace.as_deref().unwrap_or("default") == to_ns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As users write them: the Gateway API guides' examples, defaults left
    /// out.
    const OBJECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: infra}
spec:
  gatewayClassName: ebpf
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes: {namespaces: {from: All}}
  - name: https
    protocol: HTTPS
    port: 443
    hostname: "*.example.com"
    tls:
      certificateRefs: [{name: wildcard, namespace: certs}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: infra, sectionName: http}]
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /cart}
      headers: [{name: x-canary, value: "yes"}]
      method: POST
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-team, value: shop}], remove: [x-debug]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs:
    - {name: cart-v1, port: 8080, weight: 90}
    - {name: cart-v2, port: 8080, weight: 10}
    timeouts: {request: 10s}
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways-read-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret}]
"#;

    fn docs() -> Vec<&'static str> {
        OBJECTS.split("\n---\n").collect()
    }

    #[test]
    fn objects_parse_as_users_write_them() {
        let d = docs();
        let gw: Gateway = serde_norway::from_str(d[0]).unwrap();
        assert_eq!(gw.spec.gateway_class_name, "ebpf");
        assert_eq!(gw.spec.listeners.len(), 2);
        let https = &gw.spec.listeners[1];
        assert_eq!((https.protocol.as_str(), https.port), ("HTTPS", 443));
        let tls = https.tls.as_ref().unwrap();
        assert_eq!(tls.mode, None);
        assert_eq!(tls.certificate_refs[0].namespace.as_deref(), Some("certs"));

        let route: HTTPRoute = serde_norway::from_str(d[1]).unwrap();
        let rule = &route.spec.rules[0];
        let m = &rule.matches[0];
        assert_eq!(m.path.as_ref().unwrap().value.as_deref(), Some("/cart"));
        assert_eq!(m.headers[0].type_, None);
        assert_eq!(m.method.as_deref(), Some("POST"));
        assert_eq!(rule.filters[1].type_, "URLRewrite");
        assert_eq!(
            rule.filters[1]
                .url_rewrite
                .as_ref()
                .and_then(|u| u.path.as_ref())
                .and_then(|p| p.replace_prefix_match.as_deref()),
            Some("/")
        );
        let weights: Vec<_> = rule
            .backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.port, b.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("cart-v1", Some(8080), Some(90)),
                ("cart-v2", Some(8080), Some(10))
            ]
        );
        assert!(route.spec.rules[1].matches.is_empty());
        assert_eq!(
            route.spec.parent_refs[0].section_name.as_deref(),
            Some("http")
        );

        let grant: ReferenceGrant = serde_norway::from_str(d[2]).unwrap();
        let granted = |from_ns: &str, name: &str| {
            reference_granted(
                [&grant],
                (GROUP, "Gateway", from_ns),
                ("", "Secret", "certs", name),
            )
        };
        assert!(granted("infra", "wildcard"));
        assert!(!granted("shop", "wildcard"));
        assert!(reference_granted(
            [&grant],
            (GROUP, "HTTPRoute", "certs"),
            ("", "Service", "certs", "x")
        ));
        assert!(!reference_granted(
            [&grant],
            (GROUP, "HTTPRoute", "infra"),
            ("", "Service", "certs", "x")
        ));
    }

    #[test]
    fn kube_sees_their_group_version_and_plural() {
        use kube::Resource as _;
        assert_eq!(HTTPRoute::api_version(&()), "gateway.networking.k8s.io/v1");
        assert_eq!(HTTPRoute::plural(&()), "httproutes");
        assert_eq!(
            ReferenceGrant::api_version(&()),
            "gateway.networking.k8s.io/v1beta1"
        );
        assert_eq!(GatewayClass::kind(&()), "GatewayClass");
    }
}
