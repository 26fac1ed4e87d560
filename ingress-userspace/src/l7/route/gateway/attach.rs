//! Which Gateways are ours, which of their listeners can be served, and
//! which HTTPRoutes attach to which listeners with which hostnames: the
//! Gateway API's attachment rules, with the conditions and reasons the
//! spec names (pure). The route compiler serves what is attached; the
//! status writer writes the conditions.
use std::collections::BTreeMap;

use super::hostnames;
use crate::cluster::{
    ObjectKey, Snapshot,
    gateway::{
        GROUP, Gateway, HTTPBackendRef, HTTPRoute, Listener, ParentRef, our_gateways,
        reference_granted,
    },
    labels::Selector,
    secret_data,
};

/// One status condition, as the spec names its type and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

/// Where the proxy serves each protocol (`--http-addr`, `--https-addr`):
/// the listener ports it can take.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
}

/// Whose routes a listener takes (`allowedRoutes.namespaces`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum From {
    Same,
    All,
    /// Namespaces whose labels the selector matches (none, for a
    /// selector that is not valid).
    Selector(Option<Selector>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerState {
    pub name: String,
    pub port: i32,
    pub protocol: Option<Protocol>,
    /// Lower case; None: any host.
    pub hostname: Option<String>,
    /// HTTPS: the usable certificate Secrets, in order.
    pub certificates: Vec<ObjectKey>,
    /// `HTTPRoute` when it takes them (the only kind served).
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: u32,
    /// Accepted, ResolvedRefs, Conflicted (Programmed is the status
    /// writer's, once the table serving it is live).
    pub conditions: Vec<Condition>,
    from: From,
}

impl ListenerState {
    /// Whether routes can be served on it.
    pub fn serves(&self) -> bool {
        let ok = |t: &str, want: bool| {
            self.conditions
                .iter()
                .find(|c| c.type_ == t)
                .is_none_or(|c| c.status == want)
        };
        self.protocol.is_some()
            && ok("Accepted", true)
            && ok("Conflicted", false)
            && (self.protocol != Some(Protocol::Https) || !self.certificates.is_empty())
    }

    fn takes_from(&self, route_ns: &str, gateway_ns: &str, snapshot: &Snapshot) -> bool {
        match &self.from {
            From::Same => route_ns == gateway_ns,
            From::All => true,
            From::Selector(None) => false,
            From::Selector(Some(selector)) => {
                // The API server labels every namespace with its name; a
                // namespace not seen (manifest files) has that label only.
                let mut labels = snapshot
                    .namespaces
                    .get(&ObjectKey::new("", route_ns))
                    .and_then(|n| n.metadata.labels.clone())
                    .unwrap_or_default();
                labels.insert("kubernetes.io/metadata.name".into(), route_ns.into());
                selector.matches(&labels)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayState {
    pub generation: Option<i64>,
    pub listeners: Vec<ListenerState>,
    /// Accepted (Programmed is the status writer's).
    pub conditions: Vec<Condition>,
}

/// An HTTPRoute's standing with one parent of ours.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentState {
    /// As written in `spec.parentRefs`.
    pub parent: ParentRef,
    pub gateway: ObjectKey,
    /// The listeners (indices into the Gateway's) it is attached to, with
    /// the hostnames it serves on each (empty: any).
    pub listeners: Vec<(usize, Vec<String>)>,
    /// Accepted and ResolvedRefs.
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteState {
    pub generation: Option<i64>,
    /// Its parents that are Gateways of ours (others are not ours to
    /// speak for).
    pub parents: Vec<ParentState>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attachment {
    pub gateways: BTreeMap<ObjectKey, GatewayState>,
    pub routes: BTreeMap<ObjectKey, RouteState>,
}

/// Attaches every HTTPRoute to the Gateways of GatewayClasses whose
/// `controllerName` is `controller`.
pub fn attach(snapshot: &Snapshot, controller: &str, ports: Ports) -> Attachment {
    let mut out = Attachment::default();
    for (key, gw) in our_gateways(snapshot, controller) {
        out.gateways
            .insert(key.clone(), gateway_state(key, gw, snapshot, ports));
    }
    for (key, route) in &snapshot.http_routes {
        let state = route_state(key, route, snapshot, &mut out.gateways);
        if !state.parents.is_empty() {
            out.routes.insert(key.clone(), state);
        }
    }
    out
}

fn gateway_state(key: &ObjectKey, gw: &Gateway, snapshot: &Snapshot, ports: Ports) -> GatewayState {
    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener_state(key, l, snapshot, ports))
        .collect();
    mark_conflicts(&mut listeners);
    let valid = listeners.iter().filter(|l| l.serves()).count();
    let accepted = if listeners.is_empty() || valid == 0 {
        Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener can be served",
        )
    } else if valid < listeners.len() {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!(
                "{} of {} listeners cannot be served",
                listeners.len() - valid,
                listeners.len()
            ),
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "")
    };
    GatewayState {
        generation: gw.metadata.generation,
        listeners,
        conditions: vec![accepted],
    }
}

fn listener_state(
    gw: &ObjectKey,
    l: &Listener,
    snapshot: &Snapshot,
    ports: Ports,
) -> ListenerState {
    let mut conditions = Vec::new();
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let port_served = match protocol {
        Some(Protocol::Http) => i32::from(ports.http),
        Some(Protocol::Https) => i32::from(ports.https),
        None => 0,
    };
    let passthrough = l.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("Passthrough");
    conditions.push(match protocol {
        None => Condition::new(
            "Accepted",
            false,
            "UnsupportedProtocol",
            format!(
                "protocol {:?}: ingressd serves HTTP and HTTPS listeners",
                l.protocol
            ),
        ),
        Some(Protocol::Https) if passthrough => Condition::new(
            "Accepted",
            false,
            "UnsupportedProtocol",
            "an HTTPS listener terminates TLS (tls.mode Passthrough is for TLS listeners)",
        ),
        Some(_) if l.port != port_served => Condition::new(
            "Accepted",
            false,
            "PortUnavailable",
            format!(
                "ingressd serves {} on port {port_served} (--http-addr and --https-addr)",
                l.protocol
            ),
        ),
        Some(_) => Condition::new("Accepted", true, "Accepted", ""),
    });
    let (certificates, cert_problem) = match protocol {
        Some(Protocol::Https) => certificates(gw, l, snapshot),
        _ => (Vec::new(), None),
    };
    let (supported_kinds, kinds_problem) = route_kinds(l);
    conditions.push(match cert_problem.or(kinds_problem) {
        Some((reason, message)) => Condition::new("ResolvedRefs", false, reason, message),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", ""),
    });
    let namespaces = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let from = match namespaces.and_then(|n| n.from.as_deref()) {
        Some("All") => From::All,
        // The API server's validation refuses a missing or bad selector;
        // from files, one selects nothing.
        Some("Selector") => From::Selector(
            namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| Selector::compile(s).ok()),
        ),
        _ => From::Same,
    };
    ListenerState {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l
            .hostname
            .as_deref()
            .map(hostnames::normal)
            .filter(|h| !h.is_empty()),
        certificates,
        supported_kinds,
        attached_routes: 0,
        conditions,
        from,
    }
}

type Problem = Option<(&'static str, String)>;

/// The HTTPS listener's usable certificate Secrets, and the first
/// problem with the others.
fn certificates(gw: &ObjectKey, l: &Listener, snapshot: &Snapshot) -> (Vec<ObjectKey>, Problem) {
    let refs = l
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    let mut usable = Vec::new();
    let mut problem: Problem = None;
    if refs.is_empty() {
        problem = Some((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.clone().unwrap_or_else(|| gw.namespace.clone());
        let found = if !group.is_empty() || kind != "Secret" {
            Err((
                "InvalidCertificateRef",
                format!("{group}/{kind} {}: only Secrets", r.name),
            ))
        } else if !reference_granted(
            snapshot.reference_grants.values(),
            (GROUP, "Gateway", &gw.namespace),
            ("", "Secret", &ns, &r.name),
        ) {
            Err((
                "RefNotPermitted",
                format!(
                    "Secret {ns}/{}: no ReferenceGrant in {ns} lets Gateways of {} use it",
                    r.name, gw.namespace
                ),
            ))
        } else {
            let key = ObjectKey::new(ns.clone(), r.name.clone());
            match snapshot.secrets.get(&key) {
                Some(s)
                    if secret_data(s, "tls.crt").is_some()
                        && secret_data(s, "tls.key").is_some() =>
                {
                    Ok(key)
                }
                Some(_) => Err((
                    "InvalidCertificateRef",
                    format!("Secret {key} has no tls.crt and tls.key"),
                )),
                None => Err(("InvalidCertificateRef", format!("Secret {key} not found"))),
            }
        };
        match found {
            Ok(key) => usable.push(key),
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    (usable, problem)
}

/// `allowedRoutes.kinds`: HTTPRoute (of this group) is the one served;
/// none listed means it.
fn route_kinds(l: &Listener) -> (Vec<&'static str>, Problem) {
    let kinds = l
        .allowed_routes
        .as_ref()
        .map(|a| a.kinds.as_slice())
        .unwrap_or_default();
    if kinds.is_empty() {
        return (vec!["HTTPRoute"], None);
    }
    let mut supported = Vec::new();
    let mut problem = None;
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(GROUP);
        if group == GROUP && k.kind == "HTTPRoute" {
            if supported.is_empty() {
                supported.push("HTTPRoute");
            }
        } else {
            problem.get_or_insert((
                "InvalidRouteKinds",
                format!("{group}/{}: this listener serves HTTPRoutes", k.kind),
            ));
        }
    }
    (supported, problem)
}

/// Listeners of one Gateway on one port must agree on the protocol, and
/// those with the same protocol must differ in hostname.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let n = listeners.len();
    let mut conflict: Vec<Option<&'static str>> = vec![None; n];
    for i in 0..n {
        for j in 0..n {
            if i == j || listeners[i].port != listeners[j].port {
                continue;
            }
            if listeners[i].protocol != listeners[j].protocol {
                conflict[i] = Some("ProtocolConflict");
            } else if listeners[i].hostname == listeners[j].hostname && conflict[i].is_none() {
                conflict[i] = Some("HostnameConflict");
            }
        }
    }
    for (l, c) in listeners.iter_mut().zip(conflict) {
        l.conditions.push(match c {
            Some(reason) => {
                Condition::new("Conflicted", true, reason, "another listener on this port")
            }
            None => Condition::new("Conflicted", false, "NoConflicts", ""),
        });
    }
}

fn route_state(
    key: &ObjectKey,
    route: &HTTPRoute,
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
) -> RouteState {
    let route_ns = key.namespace.clone();
    let resolved = backends_resolved(key, route, snapshot);
    let mut parents = Vec::new();
    for p in &route.spec.parent_refs {
        let group = p.group.as_deref().unwrap_or(GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if group != GROUP || kind != "Gateway" {
            continue;
        }
        let gw_key = ObjectKey::new(
            p.namespace.clone().unwrap_or_else(|| route_ns.clone()),
            p.name.clone(),
        );
        let Some(gw) = gateways.get_mut(&gw_key) else {
            continue;
        };
        let candidates: Vec<usize> = gw
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| p.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|(_, l)| p.port.is_none_or(|port| port == l.port))
            .map(|(i, _)| i)
            .collect();
        let allowed: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| {
                let l = &gw.listeners[i];
                l.serves()
                    && l.supported_kinds.contains(&"HTTPRoute")
                    && l.takes_from(&route_ns, &gw_key.namespace, snapshot)
            })
            .collect();
        let mut attached = Vec::new();
        for &i in &allowed {
            if let Some(h) =
                hostnames::intersect(gw.listeners[i].hostname.as_deref(), &route.spec.hostnames)
            {
                attached.push((i, h));
            }
        }
        let accepted = if candidates.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener of that name and port",
            )
        } else if allowed.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "NotAllowedByListeners",
                "no listener takes HTTPRoutes from this namespace",
            )
        } else if attached.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "NoMatchingListenerHostname",
                "no hostname shared with the listeners",
            )
        } else {
            Condition::new("Accepted", true, "Accepted", "")
        };
        for (i, _) in &attached {
            gw.listeners[*i].attached_routes += 1;
        }
        parents.push(ParentState {
            parent: p.clone(),
            gateway: gw_key,
            listeners: attached,
            conditions: vec![accepted, resolved.clone()],
        });
    }
    RouteState {
        generation: route.metadata.generation,
        parents,
    }
}

/// ResolvedRefs of a route: every backend resolves (`backend_problem`);
/// the first problem is the reason.
fn backends_resolved(key: &ObjectKey, route: &HTTPRoute, snapshot: &Snapshot) -> Condition {
    let mirrors = route
        .spec
        .rules
        .iter()
        .flat_map(|r| &r.filters)
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| HTTPBackendRef {
            group: m.backend_ref.group.clone(),
            kind: m.backend_ref.kind.clone(),
            name: m.backend_ref.name.clone(),
            namespace: m.backend_ref.namespace.clone(),
            port: m.backend_ref.port,
            ..Default::default()
        });
    route
        .spec
        .rules
        .iter()
        .flat_map(|r| r.backend_refs.iter().cloned())
        .chain(mirrors)
        .find_map(|b| backend_problem(key, &b, snapshot))
        .unwrap_or_else(|| Condition::new("ResolvedRefs", true, "ResolvedRefs", ""))
}

/// Why a backend of route `key` cannot be used, if it cannot: it must
/// be a Service (core group) that exists, in the route's namespace or
/// one whose ReferenceGrant lets the route's namespace refer to it, with
/// a port.
pub fn backend_problem(
    key: &ObjectKey,
    b: &HTTPBackendRef,
    snapshot: &Snapshot,
) -> Option<Condition> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
    let name = &b.name;
    let problem = |reason, message| Some(Condition::new("ResolvedRefs", false, reason, message));
    if !group.is_empty() || kind != "Service" {
        return problem(
            "InvalidKind",
            format!("{group}/{kind} {name}: only Services"),
        );
    }
    if !reference_granted(
        snapshot.reference_grants.values(),
        (GROUP, "HTTPRoute", &key.namespace),
        ("", "Service", ns, name),
    ) {
        return problem(
            "RefNotPermitted",
            format!(
                "Service {ns}/{name}: no ReferenceGrant in {ns} lets HTTPRoutes of {} use it",
                key.namespace
            ),
        );
    }
    if !snapshot
        .services
        .contains_key(&ObjectKey::new(ns, name.clone()))
    {
        return problem("BackendNotFound", format!("Service {ns}/{name} not found"));
    }
    if b.port.is_none() {
        return problem(
            "BackendNotFound",
            format!("Service {ns}/{name}: port is required"),
        );
    }
    None
}
