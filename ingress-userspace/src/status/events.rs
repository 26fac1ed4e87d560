//! Kubernetes Events on the Ingresses `ingressd` rejects something of (a
//! path, an annotation, a Secret, a Service, a conflict lost), as
//! ingress-nginx writes them, so `kubectl describe ingress` says why. One
//! Event per cause when it appears (the elected replica writes; kube-rs's
//! recorder counts a recurring one into the same Event's series), never
//! one per sync: no storm whatever the cluster does.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{
    cluster::{ObjectKey, Snapshot},
    l7::route::RouteWarning,
};

/// The controller name Events carry (`reportingController`).
const CONTROLLER: &str = "ingress-ebpf/controller";

/// Something wrong with one object, as an Event says it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cause {
    pub namespace: String,
    pub name: String,
    /// The Ingress's uid: `kubectl describe` finds its Events by it.
    pub uid: String,
    pub reason: String,
    pub note: String,
}

/// The causes in force: one per warning about an Ingress (pure).
pub fn causes(warnings: &[RouteWarning], snapshot: &Snapshot) -> Vec<Cause> {
    let mut out: BTreeSet<Cause> = BTreeSet::new();
    for w in warnings {
        let key = ObjectKey::parse(&w.ingress);
        let uid = snapshot
            .ingresses
            .get(&key)
            .and_then(|i| i.metadata.uid.clone())
            .unwrap_or_default();
        let reason = if w.field.starts_with("metadata.annotations") {
            "AnnotationRejected"
        } else if w.field.contains("tls") {
            "TLSCertificate"
        } else {
            "Rejected"
        };
        // An Event's note holds 1 kB.
        let mut note = format!("field {}: {}", w.field, w.message);
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        out.insert(Cause {
            namespace: key.namespace,
            name: key.name,
            uid,
            reason: reason.to_string(),
            note,
        });
    }
    out.into_iter().collect()
}

/// Writes the Events for causes not yet written.
pub struct Events {
    recorder: Recorder,
    published: BTreeSet<Cause>,
    failing: bool,
}

impl Events {
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            published: BTreeSet::new(),
            failing: false,
        }
    }

    /// An Event for each cause new since the last call; causes gone are
    /// forgotten (one coming back is told again, into the same series).
    pub async fn publish(&mut self, causes: &[Cause]) {
        let now: BTreeSet<Cause> = causes.iter().cloned().collect();
        self.published.retain(|c| now.contains(c));
        let new: Vec<Cause> = now.difference(&self.published).cloned().collect();
        for cause in &new {
            let event = Event {
                type_: EventType::Warning,
                reason: cause.reason.clone(),
                note: Some(cause.note.clone()),
                action: "Sync".to_string(),
                secondary: None,
            };
            let regarding = ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(cause.namespace.clone()),
                name: Some(cause.name.clone()),
                uid: (!cause.uid.is_empty()).then(|| cause.uid.clone()),
                ..Default::default()
            };
            match self.recorder.publish(&event, &regarding).await {
                Ok(()) => {
                    self.failing = false;
                    self.published.insert(cause.clone());
                }
                Err(e) => {
                    if !self.failing {
                        let hint = match &e {
                            kube::Error::Api(s) if s.code == 403 => {
                                ": the ServiceAccount needs create and patch on events.events.k8s.io (see deploy/base/rbac.yaml)"
                            }
                            _ => "",
                        };
                        tracing::warn!(error = %e, "writing an Event failed{hint}; will retry");
                        self.failing = true;
                    }
                    // Tried again next round.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(ingress: &str, field: &str, message: &str) -> RouteWarning {
        RouteWarning {
            ingress: ingress.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    #[test]
    fn one_cause_per_warning_with_its_reason_and_uid() {
        let mut s = Snapshot::default();
        let (objects, errors, _) = crate::source::files::parse_file(
            std::path::Path::new("t.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: shop, namespace: web, uid: u-1}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        for o in objects {
            s.insert(o);
        }
        let w = [
            warning(
                "web/shop",
                "metadata.annotations.nginx.ingress.kubernetes.io/x",
                "bad",
            ),
            warning(
                "web/shop",
                "metadata.annotations.nginx.ingress.kubernetes.io/x",
                "bad",
            ),
            warning(
                "web/shop",
                "spec.tls[0].secretName",
                "Secret web/c not found",
            ),
            warning("web/gone", "spec.rules[0]", &"x".repeat(2000)),
        ];
        let c = causes(&w, &s);
        assert_eq!(c.len(), 3, "{c:?}");
        let reasons: Vec<&str> = c.iter().map(|c| c.reason.as_str()).collect();
        assert!(reasons.contains(&"AnnotationRejected"));
        assert!(reasons.contains(&"TLSCertificate"));
        assert!(reasons.contains(&"Rejected"));
        assert!(
            c.iter()
                .filter(|c| c.name == "shop")
                .all(|c| c.uid == "u-1")
        );
        assert!(c.iter().all(|c| c.note.len() <= 1000));
    }
}
