//! Which Ingresses are ours (the IngressClass rule) and what answers the
//! rest, shared by the route table, the kube source and the status writer.
use k8s_openapi::api::networking::v1::Ingress;

use super::Snapshot;

/// Our IngressClass name and controller name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    /// `--ingress-class`: the IngressClass name we serve (default `ebpf`).
    pub class_name: String,
    /// The `spec.controller` of IngressClasses that are ours.
    pub controller: String,
    /// `--default-backend-service`: the Service that answers requests no
    /// rule routes (else the built-in 404).
    pub default_backend: Option<super::ObjectKey>,
    /// Annotation values every Ingress has unless it sets its own (the
    /// flags that stand for ingress-nginx's ConfigMap keys of the same
    /// names: `--load-balance`, `--proxy-next-upstream`…), checked at start.
    pub annotation_defaults: std::collections::BTreeMap<String, String>,
    /// `--enable-ssl-passthrough`: the `ssl-passthrough` annotation is
    /// honoured (off by default, as in ingress-nginx).
    pub ssl_passthrough: bool,
    /// `--global-allowed-response-headers`: the names `custom-headers`
    /// may set (none by default, as in ingress-nginx).
    pub allowed_response_headers: Vec<String>,
    /// `--add-headers`: a ConfigMap of headers for every answer.
    pub add_headers: Option<super::ObjectKey>,
    /// `--proxy-set-headers`: a ConfigMap of headers for every request to
    /// the endpoints.
    pub proxy_set_headers: Option<super::ObjectKey>,
    /// `--gateway-controller-name`: the `spec.controllerName` of
    /// GatewayClasses that are ours.
    pub gateway_controller: String,
    /// The ports the proxy serves HTTP and HTTPS on (`--http-addr`,
    /// `--https-addr`): the Gateway listener ports it can take.
    pub proxy_ports: (u16, u16),
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            class_name: "ebpf".into(),
            controller: "ingress-ebpf/controller".into(),
            default_backend: None,
            annotation_defaults: Default::default(),
            ssl_passthrough: false,
            allowed_response_headers: Vec::new(),
            add_headers: None,
            proxy_set_headers: None,
            gateway_controller: "ingress-ebpf/gateway-controller".into(),
            proxy_ports: (80, 443),
        }
    }
}

/// Whether an Ingress is ours: its `ingressClassName` names an IngressClass
/// with our controller (or our class name, if that IngressClass is not
/// defined at all, as in plain manifest files), or it names none and an
/// IngressClass of ours is the default; the legacy
/// `kubernetes.io/ingress.class` annotation is honoured too.
pub fn is_ours(ingress: &Ingress, snapshot: &Snapshot, class: &ClassConfig) -> bool {
    let ours = |name: &str| match snapshot
        .ingress_classes
        .get(&super::ObjectKey::new("", name))
    {
        Some(ic) => {
            ic.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(class.controller.as_str())
        }
        None => name == class.class_name,
    };
    let spec_class = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
        .map(String::as_str);
    match spec_class.or(annotation) {
        Some(name) => ours(name),
        None => snapshot.ingress_classes.values().any(|ic| {
            let default = ic
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
                .is_some_and(|v| v == "true");
            default
                && ic.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(class.controller.as_str())
        }),
    }
}
