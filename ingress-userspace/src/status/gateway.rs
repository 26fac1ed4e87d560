//! Gateway API status: what ingressd says of the GatewayClasses, Gateways
//! and HTTPRoutes it serves, computed from the table in force (pure), and
//! written by the Lease holder only when it differs from what the object
//! has. `Programmed` comes from the table that is live, so it is never
//! written before the routes serve.
use serde_json::{Value, json};

use crate::{
    cluster::{Kind, ObjectKey, Snapshot, gateway::GROUP},
    l7::route::gateway::{
        attach::{Condition, ListenerState},
        table::GatewayRoutes,
    },
};

/// What this version implements of the Gateway API's features (the
/// names the conformance suite knows), in the order the spec asks.
pub const SUPPORTED_FEATURES: [&str; 17] = [
    "Gateway",
    "HTTPRoute",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamsMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// One object's status: as it is, and as ingressd would have it (a
/// Gateway's without `addresses` unless it asks for some: the writer
/// knows where the proxy is published).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayStatus {
    pub kind: Kind,
    pub key: ObjectKey,
    pub current: Option<Value>,
    pub desired: Value,
}

fn condition(c: &Condition, generation: Option<i64>) -> Value {
    json!({
        "type": c.type_,
        "status": if c.status { "True" } else { "False" },
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": generation.unwrap_or(0),
    })
}

fn listener(l: &ListenerState, generation: Option<i64>) -> Value {
    let mut conditions: Vec<Value> = l
        .conditions
        .iter()
        .map(|c| condition(c, generation))
        .collect();
    let programmed = if l.serves() {
        Condition::new("Programmed", true, "Programmed", "")
    } else {
        Condition::new("Programmed", false, "Invalid", "the listener is not served")
    };
    conditions.push(condition(&programmed, generation));
    json!({
        "name": l.name,
        "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
        "attachedRoutes": l.attached_routes,
        "conditions": conditions,
    })
}

/// The status of every GatewayClass, Gateway and HTTPRoute of ours, as the
/// table `routes` (the one in force) has them.
pub fn statuses(
    snapshot: &Snapshot,
    routes: &GatewayRoutes,
    controller: &str,
) -> Vec<GatewayStatus> {
    let mut out = Vec::new();
    for (key, class) in &snapshot.gateway_classes {
        if class.spec.controller_name != controller {
            continue;
        }
        let generation = class.metadata.generation;
        let accepted = Condition::new("Accepted", true, "Accepted", "");
        out.push(GatewayStatus {
            kind: Kind::GatewayClass,
            key: key.clone(),
            current: class.status.clone(),
            desired: json!({
                "conditions": [condition(&accepted, generation)],
                "supportedFeatures": SUPPORTED_FEATURES.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
            }),
        });
    }
    for (key, state) in &routes.attachment.gateways {
        let generation = state.generation;
        let accepted = state
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .is_some_and(|c| c.status);
        let programmed = if accepted {
            Condition::new("Programmed", true, "Programmed", "")
        } else {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "the Gateway is not accepted",
            )
        };
        let conditions: Vec<Value> = state
            .conditions
            .iter()
            .chain([&programmed])
            .map(|c| condition(c, generation))
            .collect();
        let listeners: Vec<Value> = state
            .listeners
            .iter()
            .map(|l| listener(l, generation))
            .collect();
        let gw = snapshot.gateways.get(key);
        let mut desired = json!({"conditions": conditions, "listeners": listeners});
        // Asked-for addresses are where it is reached (steered to the
        // proxy); else the writer puts the published ones.
        if let Some(g) = gw.filter(|g| !g.spec.addresses.is_empty()) {
            desired["addresses"] = gateway_addresses(
                &g.ipv4_addresses()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>(),
            );
        }
        out.push(GatewayStatus {
            kind: Kind::Gateway,
            key: key.clone(),
            current: gw.and_then(|g| g.status.clone()),
            desired,
        });
    }
    for (key, state) in &routes.attachment.routes {
        let Some(route) = snapshot.http_routes.get(key) else {
            continue;
        };
        let refused = routes.refused.get(key);
        let ours: Vec<Value> = state
            .parents
            .iter()
            .map(|p| {
                let conditions: Vec<Value> = p
                    .conditions
                    .iter()
                    .map(|c| match (c.type_, refused) {
                        // Attached, but a rule cannot be served as written.
                        ("Accepted", Some(why)) if c.status => {
                            Condition::new("Accepted", false, "UnsupportedValue", why.clone())
                        }
                        _ => c.clone(),
                    })
                    .map(|c| condition(&c, state.generation))
                    .collect();
                json!({
                    "parentRef": p.parent,
                    "controllerName": controller,
                    "conditions": conditions,
                })
            })
            .collect();
        // Other controllers' entries are theirs: kept as they are.
        let current = route.status.clone();
        let theirs = current
            .as_ref()
            .and_then(|s| s["parents"].as_array())
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"].as_str() != Some(controller))
            .cloned();
        let parents: Vec<Value> = theirs.chain(ours).collect();
        out.push(GatewayStatus {
            kind: Kind::HTTPRoute,
            key: key.clone(),
            current,
            desired: json!({"parents": parents}),
        });
    }
    out
}

/// Gives `desired`'s conditions the `lastTransitionTime` of the same
/// condition in `current` when its status did not change, else `now`
/// (listeners matched by name, route parents by their reference and
/// controller).
pub fn settle(desired: &mut Value, current: Option<&Value>, now: &str) {
    fn conditions(desired: &mut Value, current: Option<&Value>, now: &str) {
        let Some(list) = desired["conditions"].as_array_mut() else {
            return;
        };
        for c in list {
            let before = current
                .and_then(|cur| cur["conditions"].as_array())
                .and_then(|l| l.iter().find(|o| o["type"] == c["type"]))
                .filter(|o| o["status"] == c["status"]);
            let time = before
                .and_then(|o| o.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| Value::from(now));
            c["lastTransitionTime"] = time;
        }
    }
    conditions(desired, current, now);
    for field in ["listeners", "parents"] {
        let Some(list) = desired[field].as_array_mut() else {
            continue;
        };
        for item in list {
            let before = current
                .and_then(|cur| cur[field].as_array())
                .and_then(|l| l.iter().find(|o| same_item(o, item)));
            conditions(item, before, now);
        }
    }
}

/// The same listener (by name) or route parent (by its reference and
/// controller) in two statuses.
fn same_item(a: &Value, b: &Value) -> bool {
    ["name", "parentRef", "controllerName"]
        .iter()
        .all(|k| a.get(k) == b.get(k))
}

/// `addresses` as a Gateway's `status.addresses`.
pub fn gateway_addresses(addresses: &[String]) -> Value {
    addresses
        .iter()
        .map(|a| {
            let kind = if a.parse::<std::net::IpAddr>().is_ok() {
                "IPAddress"
            } else {
                "Hostname"
            };
            json!({"type": kind, "value": a})
        })
        .collect()
}

/// The status to write, if it differs from the object's: `s` with the
/// addresses (Gateways) and transition times settled.
pub fn to_write(s: &GatewayStatus, addresses: &[String], now: &str) -> Option<Value> {
    let mut desired = s.desired.clone();
    if s.kind == Kind::Gateway && desired.get("addresses").is_none() {
        desired["addresses"] = gateway_addresses(addresses);
    }
    settle(&mut desired, s.current.as_ref(), now);
    // Fields the object has that ingressd does not write stay as they are.
    let same = s.current.as_ref().is_some_and(|cur| {
        desired
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| cur.get(k) == Some(v))
    });
    (!same).then_some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        l7::route::{gateway::attach::Ports, gateway::table, pattern::Patterns},
        source::files::snapshot_of,
    };

    fn snapshot(yaml: &str) -> Snapshot {
        snapshot_of(yaml).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const OBJECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ebpf, generation: 2}
spec: {controllerName: ingress-ebpf/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 3}
spec:
  gatewayClassName: ebpf
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra, generation: 5}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
status:
  parents:
  - parentRef: {name: gw}
    controllerName: example.com/other
    conditions: [{type: Accepted, status: "True", reason: Accepted, message: "", observedGeneration: 5, lastTransitionTime: "2026-01-01T00:00:00Z"}]
"#;

    fn compiled(s: &Snapshot) -> GatewayRoutes {
        table::compile(
            s,
            "ingress-ebpf/gateway-controller",
            Ports {
                http: 80,
                https: 443,
            },
            &mut Patterns::default(),
        )
    }

    #[test]
    fn statuses_say_what_is_served_with_each_objects_generation() {
        let s = snapshot(OBJECTS);
        let all = statuses(&s, &compiled(&s), "ingress-ebpf/gateway-controller");
        let of = |kind| &all.iter().find(|x| x.kind == kind).unwrap().desired;
        let class = of(Kind::GatewayClass);
        assert_eq!(class["conditions"][0]["observedGeneration"], 2);
        assert_eq!(class["supportedFeatures"][0]["name"], "Gateway");
        let mut sorted = SUPPORTED_FEATURES;
        sorted.sort();
        assert_eq!(sorted, SUPPORTED_FEATURES);
        let gw = of(Kind::Gateway);
        assert_eq!(gw["conditions"][1]["type"], "Programmed");
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(gw["listeners"][0]["conditions"][0]["observedGeneration"], 3);
        let tcp = &gw["listeners"][1]["conditions"];
        assert!(
            tcp.as_array()
                .unwrap()
                .iter()
                .any(|c| c["reason"] == "UnsupportedProtocol")
        );
        let programmed = tcp
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Programmed")
            .unwrap();
        assert_eq!(programmed["status"], "False");
        // The other controller's parent entry is kept, ours follows.
        let route = of(Kind::HTTPRoute);
        assert_eq!(route["parents"][0]["controllerName"], "example.com/other");
        assert_eq!(
            route["parents"][1]["controllerName"],
            "ingress-ebpf/gateway-controller"
        );
        assert_eq!(
            route["parents"][1]["conditions"][0]["observedGeneration"],
            5
        );
    }

    #[test]
    fn written_once_then_not_again_and_times_kept_while_unchanged() {
        let s = snapshot(OBJECTS);
        let all = statuses(&s, &compiled(&s), "ingress-ebpf/gateway-controller");
        let gw = all.iter().find(|x| x.kind == Kind::Gateway).unwrap();
        let first = to_write(gw, &["198.18.0.1".into()], "2026-12-08T00:00:00Z").unwrap();
        assert_eq!(first["addresses"][0]["type"], "IPAddress");
        // The object now has it: nothing more to write, even later.
        let after = GatewayStatus {
            current: Some(first.clone()),
            ..gw.clone()
        };
        assert_eq!(
            to_write(&after, &["198.18.0.1".into()], "2026-12-09T00:00:00Z"),
            None
        );
        // A new address: written, the conditions' times kept.
        let moved = to_write(&after, &["198.18.0.2".into()], "2026-12-09T00:00:00Z").unwrap();
        assert_eq!(
            moved["conditions"][0]["lastTransitionTime"],
            "2026-12-08T00:00:00Z"
        );
        assert_eq!(
            moved["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "2026-12-08T00:00:00Z"
        );
    }
}
