//! Ingress status: the addresses each of our Ingresses is reached at,
//! written by the Lease holder only, and only when they differ.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    networking::v1::{Ingress, IngressLoadBalancerIngress},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use tokio::sync::watch;

use super::lease::{Elector, RENEW_EVERY};
use crate::cluster::{ClassConfig, Kind, ObjectKey, Snapshot, is_ours};

/// Where the published address comes from, in ingress-nginx's order.
#[derive(Clone, Debug, Default)]
pub struct PublishConfig {
    /// `--publish-status-address`: these, as given.
    pub addresses: Vec<String>,
    /// `--publish-service`: the LoadBalancer ingress of this Service.
    pub service: Option<ObjectKey>,
    /// Else the addresses of the nodes running the controller's pods
    /// (hostNetwork), found from this pod (namespace, name) when it is one,
    /// else of this node.
    pub node_name: String,
    pub pod: Option<ObjectKey>,
}

/// An Ingress and the `status.loadBalancer.ingress` it should have.
pub type Update = (ObjectKey, Vec<IngressLoadBalancerIngress>);

fn entry(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(address.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(address.to_string()),
            ..Default::default()
        }
    }
}

/// A node's address for clients: ExternalIP, else InternalIP.
fn node_addresses(node: &Node) -> Vec<String> {
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .cloned()
        .unwrap_or_default();
    let of = |kind: &str| -> Vec<String> {
        addrs
            .iter()
            .filter(|a| a.type_ == kind)
            .map(|a| a.address.clone())
            .collect()
    };
    let external = of("ExternalIP");
    if external.is_empty() {
        of("InternalIP")
    } else {
        external
    }
}

fn entries(addresses: impl IntoIterator<Item = String>) -> Vec<IngressLoadBalancerIngress> {
    let set: BTreeSet<String> = addresses.into_iter().collect();
    set.iter().map(|a| entry(a)).collect()
}

/// What the sync loop hands the status writer (pure).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusInput {
    /// Our Ingresses and the status they have now.
    pub ingresses: Vec<Update>,
    /// `--publish-status-address`, or `--publish-service`'s LoadBalancer
    /// address; None in hostNetwork mode (the writer looks the nodes up).
    pub addresses: Option<Vec<IngressLoadBalancerIngress>>,
    /// This node's address, for hostNetwork mode outside a pod.
    pub own_node: Vec<IngressLoadBalancerIngress>,
    /// What an Event should tell about our Ingresses.
    pub causes: Vec<super::events::Cause>,
    /// Our GatewayClasses, Gateways and HTTPRoutes, with the status the
    /// table in force gives them.
    pub gateways: Vec<super::gateway::GatewayStatus>,
}

pub fn status_input(snapshot: &Snapshot, class: &ClassConfig, cfg: &PublishConfig) -> StatusInput {
    let addresses = if !cfg.addresses.is_empty() {
        Some(entries(cfg.addresses.iter().cloned()))
    } else if let Some(key) = &cfg.service {
        let lb = snapshot
            .services
            .get(key)
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        Some(entries(
            lb.into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone())),
        ))
    } else {
        None
    };
    let own_node = snapshot
        .nodes
        .get(&ObjectKey::new("", cfg.node_name.clone()))
        .map(node_addresses)
        .map(entries)
        .unwrap_or_default();
    let ingresses = snapshot
        .ingresses
        .iter()
        .filter(|(_, ing)| is_ours(ing, snapshot, class))
        .map(|(k, ing)| (k.clone(), current(ing)))
        .collect();
    StatusInput {
        ingresses,
        addresses,
        own_node,
        causes: Vec::new(),
        gateways: Vec::new(),
    }
}

fn current(ing: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// Our Ingresses whose status is not `addresses` yet (pure). Nothing while
/// no address is known: an empty status is never written over a good one.
pub fn pending(input: &StatusInput, addresses: &[IngressLoadBalancerIngress]) -> Vec<Update> {
    if addresses.is_empty() {
        return Vec::new();
    }
    input
        .ingresses
        .iter()
        .filter(|(_, now)| now != addresses)
        .map(|(k, _)| (k.clone(), addresses.to_vec()))
        .collect()
}

/// Labels every pod of a DaemonSet or Deployment has but that differ
/// between revisions: not part of "the controller's pods".
const REVISION_LABELS: [&str; 3] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
];

/// Running and Ready: a pod that takes traffic (as ingress-nginx counts).
fn serving(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// hostNetwork mode: the addresses of the nodes running a pod with this
/// pod's labels (as ingress-nginx does without --publish-service). The
/// label selector is looked up once: a pod's labels are its template's.
async fn controller_nodes(
    client: &Client,
    pod: &ObjectKey,
    selector: &mut Option<String>,
) -> Result<Vec<String>, kube::Error> {
    let nodes: BTreeSet<String> = controller_pods(client, pod, selector)
        .await?
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let api: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    for name in nodes {
        if let Some(node) = api.get_opt(&name).await? {
            out.extend(node_addresses(&node));
        }
    }
    Ok(out)
}

/// The controller's pods that serve (Running, Ready, not being deleted):
/// those with this pod's labels, less the ones a rollout changes.
async fn controller_pods(
    client: &Client,
    pod: &ObjectKey,
    selector: &mut Option<String>,
) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    if selector.is_none() {
        let me = pods.get(&pod.name).await?;
        let labels: Vec<String> = me
            .metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !REVISION_LABELS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        *selector = Some(labels.join(","));
    }
    let labels = selector.as_deref().unwrap_or_default();
    let list = pods.list(&ListParams::default().labels(labels)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && serving(p))
        .collect())
}

/// `--update-status-on-shutdown`, as ingress-nginx: the leader leaving
/// clears the address it wrote into our Ingresses' status, but only when
/// it is the last of the controller's pods (a rollout's new pod, or another
/// replica, keeps serving that address) and only in hostNetwork mode (with
/// `--publish-service` or `--publish-status-address` the address outlives
/// the controller).
async fn clear_on_shutdown(
    client: &Client,
    last: &StatusInput,
    pod: Option<&ObjectKey>,
    selector: &mut Option<String>,
) {
    if last.addresses.is_some() {
        return;
    }
    let Some(pod) = pod else {
        // Outside a pod there is no telling whether others run.
        return;
    };
    let others = match controller_pods(client, pod, selector).await {
        Ok(pods) => pods
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(pod.name.as_str()))
            .count(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether other replicas run; Ingress status left as it is");
            return;
        }
    };
    if others > 0 {
        tracing::info!(others, "other replicas serve; Ingress status left to them");
        return;
    }
    for (key, _) in &last.ingresses {
        let api: Api<Ingress> = Api::namespaced(client.clone(), &key.namespace);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": []}}});
        if let Err(e) = api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(ingress = %key, error = %e, "clearing Ingress status failed");
        }
    }
    tracing::info!(
        ingresses = last.ingresses.len(),
        "the last replica is leaving: Ingress status cleared (--update-status-on-shutdown)"
    );
}

/// Writes the Gateway API status that differs from the objects'. What was
/// written and the snapshot does not show yet is not written again.
async fn write_gateways(
    client: &Client,
    todo: &[super::gateway::GatewayStatus],
    addresses: &[String],
    written: &mut HashMap<(Kind, ObjectKey), (serde_json::Value, Vec<String>)>,
) {
    use crate::cluster::gateway::{Gateway, GatewayClass, HTTPRoute};
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .ok()
    .and_then(|v| v.as_str().map(str::to_owned))
    .unwrap_or_default();
    written.retain(|(kind, key), _| todo.iter().any(|s| (&s.kind, &s.key) == (kind, key)));
    for s in todo {
        let id = (s.kind, s.key.clone());
        let Some(status) = super::gateway::to_write(s, addresses, &now) else {
            written.remove(&id);
            continue;
        };
        let what = (s.desired.clone(), addresses.to_vec());
        if written.get(&id) == Some(&what) {
            continue;
        }
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        let params = PatchParams::default();
        let (ns, name) = (&s.key.namespace, &s.key.name);
        let result = match s.kind {
            Kind::GatewayClass => Api::<GatewayClass>::all(client.clone())
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            Kind::Gateway => Api::<Gateway>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            _ => Api::<HTTPRoute>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                tracing::info!(kind = %s.kind, object = %s.key, "Gateway API status written");
                written.insert(id, what);
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::warn!(kind = %s.kind, object = %s.key, "forbidden: the ServiceAccount needs update on {}/status (see deploy/base/rbac.yaml)", s.kind.resource());
            }
            Err(e) => {
                tracing::warn!(kind = %s.kind, object = %s.key, error = %e, "writing Gateway API status failed; will retry");
            }
        }
    }
}

/// Runs the election and, while leading, writes the status the sync
/// loop's input calls for.
pub async fn run(
    client: Client,
    mut elector: Elector,
    mut events: super::events::Events,
    pod: Option<ObjectKey>,
    update_on_shutdown: bool,
    leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut input: watch::Receiver<StatusInput>,
) {
    // What this replica wrote and the snapshot does not show yet: not
    // written again meanwhile.
    let mut written: HashMap<ObjectKey, Vec<IngressLoadBalancerIngress>> = HashMap::new();
    let mut gateways_written = HashMap::new();
    let mut lookup_failing = false;
    let mut selector = None;
    loop {
        // Nothing to write before the first sync hands its input over (and
        // no address to look up for it).
        let synced = *input.borrow() != StatusInput::default();
        let leads = elector.tick().await;
        leading.store(leads, std::sync::atomic::Ordering::Relaxed);
        if leads && synced {
            let now = input.borrow_and_update().clone();
            let addresses = match (&now.addresses, &pod) {
                (Some(a), _) => a.clone(),
                (None, Some(pod)) => {
                    match controller_nodes(&client, pod, &mut selector).await {
                        Ok(found) if !found.is_empty() => {
                            lookup_failing = false;
                            entries(found)
                        }
                        Ok(_) => now.own_node.clone(),
                        Err(e) => {
                            if !lookup_failing {
                                let why = match &e {
                                kube::Error::Api(s) if s.code == 403 => "the ServiceAccount needs get and list on pods in its namespace".to_string(),
                                kube::Error::Api(s) if s.code == 404 => format!("no pod {pod} (POD_NAME and POD_NAMESPACE name this replica's pod)"),
                                other => other.to_string(),
                            };
                                tracing::warn!(error = %e, "cannot find the nodes of the controller's pods: {why}; publishing this node's address");
                                lookup_failing = true;
                            }
                            now.own_node.clone()
                        }
                    }
                }
                (None, None) => now.own_node.clone(),
            };
            events.publish(&now.causes).await;
            // Gateways are reached where Ingresses are.
            let shown: Vec<String> = addresses
                .iter()
                .filter_map(|a| a.ip.clone().or(a.hostname.clone()))
                .collect();
            write_gateways(&client, &now.gateways, &shown, &mut gateways_written).await;
            let todo = pending(&now, &addresses);
            written.retain(|k, _| todo.iter().any(|(t, _)| t == k));
            for (key, addrs) in todo {
                if written.get(&key) == Some(&addrs) {
                    continue;
                }
                // A long round (many Ingresses, slow API) must not outlast
                // the lease: renew first.
                if !elector.still_leading() {
                    break;
                }
                let api: Api<Ingress> = Api::namespaced(client.clone(), &key.namespace);
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": addrs}}});
                let name = format!("{}/{}", key.namespace, key.name);
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        let shown: Vec<String> = addrs
                            .iter()
                            .filter_map(|a| a.ip.clone().or(a.hostname.clone()))
                            .collect();
                        tracing::info!(ingress = %name, addresses = ?shown, "Ingress status written");
                        written.insert(key, addrs);
                    }
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        tracing::warn!(ingress = %name, "forbidden: the ServiceAccount needs update on ingresses/status (see deploy/base/rbac.yaml)");
                    }
                    Err(e) => {
                        tracing::warn!(ingress = %name, error = %e, "writing Ingress status failed; will retry")
                    }
                }
            }
        }
        if !elector.still_leading() {
            // Another replica may write meanwhile: what this one wrote
            // says nothing about the status any more.
            written.clear();
            gateways_written.clear();
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            // The daemon is stopping (SIGTERM): the lease goes with it.
            changed = input.changed() => if changed.is_err() {
                if update_on_shutdown && elector.still_leading() {
                    let last = input.borrow().clone();
                    clear_on_shutdown(&client, &last, pod.as_ref(), &mut selector).await;
                }
                elector.release().await;
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::snapshot_of;

    fn snapshot(yaml: &str) -> Snapshot {
        snapshot_of(yaml).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const OBJECTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: web}
spec: {ingressClassName: ebpf, defaultBackend: {service: {name: s, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other, namespace: web}
spec: {ingressClassName: nginx, defaultBackend: {service: {name: s, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: done, namespace: web}
spec: {ingressClassName: ebpf, defaultBackend: {service: {name: s, port: {number: 80}}}}
status: {loadBalancer: {ingress: [{ip: 198.18.0.10}]}}
---
apiVersion: v1
kind: Service
metadata: {name: ingressd, namespace: ingress-ebpf}
spec: {type: LoadBalancer, ports: [{port: 80}]}
status: {loadBalancer: {ingress: [{ip: 198.18.0.10}]}}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 198.18.1.1}, {type: Hostname, address: n1}]}
"#;

    #[test]
    fn only_our_ingresses_with_another_status_are_written() {
        let s = snapshot(OBJECTS);
        let cfg = PublishConfig {
            service: Some(ObjectKey::new("ingress-ebpf", "ingressd")),
            ..Default::default()
        };
        let input = status_input(&s, &ClassConfig::default(), &cfg);
        let addrs = input.addresses.clone().unwrap();
        assert_eq!(addrs, vec![entry("198.18.0.10")]);
        let todo = pending(&input, &addrs);
        let keys: Vec<&ObjectKey> = todo.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&ObjectKey::new("web", "shop")]);
    }

    #[test]
    fn address_sources_in_order_and_nothing_written_without_one() {
        let s = snapshot(OBJECTS);
        let class = ClassConfig::default();
        let node = PublishConfig {
            node_name: "n1".into(),
            ..Default::default()
        };
        let input = status_input(&s, &class, &node);
        assert_eq!(input.addresses, None);
        assert_eq!(input.own_node, vec![entry("198.18.1.1")]);
        let explicit = PublishConfig {
            addresses: vec!["lb.example.com".into()],
            ..node.clone()
        };
        let input = status_input(&s, &class, &explicit);
        assert_eq!(
            input.addresses.unwrap()[0].hostname.as_deref(),
            Some("lb.example.com")
        );
        let unknown = PublishConfig {
            node_name: "elsewhere".into(),
            ..Default::default()
        };
        let input = status_input(&s, &class, &unknown);
        assert!(input.own_node.is_empty());
        assert!(pending(&input, &[]).is_empty());
    }
}
