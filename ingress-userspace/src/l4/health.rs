//! What kube-proxy's health servers answer (pure): the healthCheckNodePort
//! of each `externalTrafficPolicy: Local` LoadBalancer Service with its
//! count of this node's ready endpoints, and whether this node still takes
//! traffic at all.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::{
    cluster::{ObjectKey, PortRef, Snapshot, usable_endpoints},
    l4::model::{ModelWarning, NodeContext, is_served},
};

/// What one healthCheckNodePort answers about its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: ObjectKey,
    /// Ready endpoints on this node (terminating ones do not count).
    pub local_endpoints: usize,
}

/// The taint the cluster autoscaler puts on a node it is removing.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Every healthCheckNodePort this node should answer on, by port. Two
/// Services claiming one port: the first in namespace/name order keeps it.
pub fn health_checks(
    snapshot: &Snapshot,
    node: &NodeContext,
) -> (BTreeMap<u16, ServiceHealth>, Vec<ModelWarning>) {
    let mut out: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (key, svc) in &snapshot.services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
            || !is_served(svc, &node.serve)
        {
            continue;
        }
        let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let slices = snapshot.slices_of(key);
        // kube-proxy counts the Service's ready local endpoints once,
        // whatever its ports.
        let mut local = std::collections::BTreeSet::new();
        for p in spec.ports.iter().flatten() {
            let port_ref = PortRef {
                name: p.name.as_deref().unwrap_or(""),
                protocol: p.protocol.as_deref().unwrap_or("TCP"),
            };
            for e in usable_endpoints(&slices, port_ref, |e| node.is_local(e)) {
                if !e.terminating {
                    local.insert(e.addr);
                }
            }
        }
        let health = ServiceHealth {
            service: key.clone(),
            local_endpoints: local.len(),
        };
        match out.get(&port) {
            Some(owner) => warnings.push(ModelWarning {
                object: format!("Service {}/{}", key.namespace, key.name),
                message: format!(
                    "field spec.healthCheckNodePort: {port} already belongs to Service {}/{}; skipped",
                    owner.service.namespace, owner.service.name
                ),
            }),
            None => {
                out.insert(port, health);
            }
        }
    }
    (out, warnings)
}

/// Whether this node still takes load-balanced traffic: not being deleted
/// and not tainted by the cluster autoscaler for removal (kube-proxy's
/// `nodeEligible`, KEP-3836). Unknown nodes are eligible.
pub fn node_eligible(node: Option<&Node>) -> bool {
    let Some(node) = node else { return true };
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    !taints
        .into_iter()
        .flatten()
        .any(|t| t.key == TO_BE_DELETED_TAINT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::ManifestSource;

    fn snapshot(yaml: &str) -> Snapshot {
        let dir = std::env::temp_dir().join(format!(
            "ingressd-health-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("in.yaml");
        std::fs::write(&file, yaml).expect("write");
        let mut source = ManifestSource::new(vec![file]);
        let loaded = source.load();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let snap = source.snapshot().clone();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        snap
    }

    fn node() -> NodeContext {
        NodeContext {
            name: "node-a".into(),
            ..Default::default()
        }
    }

    const LB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}]
endpoints:
- {addresses: ["198.18.1.2"], nodeName: node-a}
- {addresses: ["198.18.1.3"], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: ["198.18.2.2"], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: cluster, namespace: shop}
spec:
  type: LoadBalancer
  healthCheckNodePort: 32001
  ports: [{port: 80, nodePort: 30081}]
"#;

    #[test]
    fn local_ready_endpoints_are_counted_once_per_service() {
        let (hc, warnings) = health_checks(&snapshot(LB), &node());
        assert!(warnings.is_empty(), "{warnings:?}");
        // Only the Local Service has a health check; its terminating and
        // remote endpoints do not count, its two ports count one address once.
        assert_eq!(hc.keys().copied().collect::<Vec<_>>(), [32000]);
        assert_eq!(hc[&32000].local_endpoints, 1);
        assert_eq!(hc[&32000].service, ObjectKey::new("shop", "web"));
    }

    #[test]
    fn a_node_without_local_endpoints_answers_with_zero() {
        let other = NodeContext {
            name: "node-c".into(),
            ..Default::default()
        };
        let (hc, _) = health_checks(&snapshot(LB), &other);
        assert_eq!(hc[&32000].local_endpoints, 0);
    }

    #[test]
    fn nodes_being_removed_are_not_eligible() {
        let taint: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}
        }))
        .expect("node");
        assert!(!node_eligible(Some(&taint)));
        let deleting: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "deletionTimestamp": "2026-12-07T10:00:00Z"}
        }))
        .expect("node");
        assert!(!node_eligible(Some(&deleting)));
        let plain: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "node-a"}}))
                .expect("node");
        assert!(node_eligible(Some(&plain)));
        assert!(node_eligible(None));
    }
}
