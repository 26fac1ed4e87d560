//! Ingress status: `status.loadBalancer.ingress` of every Ingress we serve,
//! written by one replica, elected with a `coordination.k8s.io/v1` Lease.
//!
//! What to write is a pure function of the snapshot ([`pending`]); the
//! writer task only talks to the API server, and writes an Ingress only
//! when its status differs from what should be there.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::Duration,
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        networking::v1::{Ingress, IngressLoadBalancerIngress},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::watch;

use crate::{
    l7::route::{ClassConfig, is_ours},
    manifest::{ObjectKey, Snapshot},
};

/// Where the published address comes from, in ingress-nginx's order.
#[derive(Clone, Debug, Default)]
pub struct PublishConfig {
    /// `--publish-status-address`: these, as given.
    pub addresses: Vec<String>,
    /// `--publish-service`: the LoadBalancer ingress of this Service.
    pub service: Option<ObjectKey>,
    /// Else the addresses of this node (hostNetwork).
    pub node_name: String,
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

/// The addresses to publish (sorted; empty when none is known yet).
pub fn addresses(snapshot: &Snapshot, cfg: &PublishConfig) -> Vec<IngressLoadBalancerIngress> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    if !cfg.addresses.is_empty() {
        out.extend(cfg.addresses.iter().cloned());
    } else if let Some(key) = &cfg.service {
        let lb = snapshot
            .services
            .get(key)
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for i in lb.into_iter().flatten() {
            out.extend(i.ip.clone().or_else(|| i.hostname.clone()));
        }
    } else if let Some(node) = snapshot.nodes.get(&(String::new(), cfg.node_name.clone())) {
        let addrs = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .cloned()
            .unwrap_or_default();
        // A node reachable from outside says so with ExternalIP.
        let external: Vec<String> = addrs
            .iter()
            .filter(|a| a.type_ == "ExternalIP")
            .map(|a| a.address.clone())
            .collect();
        if external.is_empty() {
            out.extend(
                addrs
                    .iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone()),
            );
        } else {
            out.extend(external);
        }
    }
    out.iter().map(|a| entry(a)).collect()
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
pub fn pending(
    snapshot: &Snapshot,
    class: &ClassConfig,
    addresses: &[IngressLoadBalancerIngress],
) -> Vec<Update> {
    if addresses.is_empty() {
        return Vec::new();
    }
    snapshot
        .ingresses
        .iter()
        .filter(|(_, ing)| is_ours(ing, snapshot, class))
        .filter(|(_, ing)| current(ing) != addresses)
        .map(|(k, _)| (k.clone(), addresses.to_vec()))
        .collect()
}

/// How long a lease holds without renewal, and how often it is renewed.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Leader election on one Lease, as client-go does it: take the lease when
/// it is free or expired, renew it while holding it; the API server's
/// optimistic concurrency (resourceVersion) decides races.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    leader: bool,
    /// The last error logged (each is logged once until it changes).
    failing: Option<String>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            leader: false,
            failing: None,
        }
    }

    /// One round: returns whether this replica leads now.
    pub async fn tick(&mut self) -> bool {
        let was = self.leader;
        self.leader = match self.try_lead().await {
            Ok(leading) => {
                self.failing = None;
                leading
            }
            Err(e) => {
                let text = e.to_string();
                if self.failing.as_ref() != Some(&text) {
                    let hint = match &e {
                        kube::Error::Api(s) if s.code == 403 => {
                            ": the ServiceAccount needs get, create and update on leases in this namespace (see deploy/base/rbac.yaml)"
                        }
                        _ => "",
                    };
                    tracing::warn!(lease = %self.name, error = %text, "leader election failed{hint}; not writing Ingress status, retrying");
                    self.failing = Some(text);
                }
                false
            }
        };
        if self.leader != was {
            tracing::info!(lease = %self.name, identity = %self.identity, leader = self.leader, "leadership changed");
        }
        self.leader
    }

    async fn try_lead(&self) -> Result<bool, kube::Error> {
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or_else(|| Some(now())),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let held = lease.spec.clone().unwrap_or_default();
        let mine = held.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&held.renew_time, held.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
                age.as_secs_f64() > f64::from(secs)
            }
            _ => true,
        };
        let free = held.holder_identity.as_deref().is_none_or(str::is_empty);
        if !mine && !expired && !free {
            return Ok(false);
        }
        let transitions = held.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            held.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(spec(transitions, acquired));
        // resourceVersion is kept: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Runs the election and writes the updates the sync loop hands over.
pub async fn run(client: Client, mut elector: Elector, mut updates: watch::Receiver<Vec<Update>>) {
    // What this replica wrote and the snapshot does not show yet: not
    // written again meanwhile.
    let mut written: HashMap<ObjectKey, Vec<IngressLoadBalancerIngress>> = HashMap::new();
    loop {
        if elector.tick().await {
            let todo = updates.borrow_and_update().clone();
            written.retain(|k, _| todo.iter().any(|(t, _)| t == k));
            for (key, addrs) in todo {
                if written.get(&key) == Some(&addrs) {
                    continue;
                }
                let api: Api<Ingress> = Api::namespaced(client.clone(), &key.0);
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": addrs}}});
                match api
                    .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(ingress = %format!("{}/{}", key.0, key.1), addresses = ?addrs.iter().map(|a| a.ip.clone().or(a.hostname.clone()).unwrap_or_default()).collect::<Vec<_>>(), "Ingress status written");
                        written.insert(key, addrs);
                    }
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), "forbidden: the ServiceAccount needs update on ingresses/status (see deploy/base/rbac.yaml)");
                    }
                    Err(e) => {
                        tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), error = %e, "writing Ingress status failed; will retry")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            changed = updates.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_file;

    fn snapshot(yaml: &str) -> Snapshot {
        let (objects, errors, _) = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let mut s = Snapshot::default();
        for o in objects {
            s.insert(o);
        }
        s
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
            service: Some(("ingress-ebpf".into(), "ingressd".into())),
            ..Default::default()
        };
        let addrs = addresses(&s, &cfg);
        assert_eq!(addrs, vec![entry("198.18.0.10")]);
        let todo = pending(&s, &ClassConfig::default(), &addrs);
        let keys: Vec<&ObjectKey> = todo.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&("web".to_string(), "shop".to_string())]);
    }

    #[test]
    fn address_sources_in_order_and_nothing_written_without_one() {
        let s = snapshot(OBJECTS);
        let node = PublishConfig {
            node_name: "n1".into(),
            ..Default::default()
        };
        assert_eq!(addresses(&s, &node), vec![entry("198.18.1.1")]);
        let explicit = PublishConfig {
            addresses: vec!["lb.example.com".into()],
            ..node.clone()
        };
        assert_eq!(
            addresses(&s, &explicit)[0].hostname.as_deref(),
            Some("lb.example.com")
        );
        let unknown = PublishConfig {
            node_name: "elsewhere".into(),
            ..Default::default()
        };
        assert!(addresses(&s, &unknown).is_empty());
        assert!(pending(&s, &ClassConfig::default(), &[]).is_empty());
    }
}
