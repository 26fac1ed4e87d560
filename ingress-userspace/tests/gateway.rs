//! Gateway API attachment as the conformance tests exercise it: listeners
//! with each kind of problem, routes accepted or not for each reason the
//! spec names; then the table they compile to, by listener protocol,
//! host and request. Pure: manifests in, conditions and routes out.

use ingressd::{
    cluster::{ObjectKey, Snapshot},
    l7::route::{
        Upstream,
        gateway::{
            attach::{Attachment, Condition, Ports, attach},
            matches::Request,
            render, table,
        },
        pattern::Patterns,
    },
    source::files::snapshot_of,
};

const CONTROLLER: &str = "ingress-ebpf/gateway-controller";

fn snapshot(yaml: &str) -> Snapshot {
    snapshot_of(yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ebpf}
spec: {controllerName: ingress-ebpf/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: infra}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: y}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: certs}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: y}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 3}
spec:
  gatewayClassName: ebpf
  listeners:
  - {name: http, protocol: HTTP, port: 80}
  - {name: https, protocol: HTTPS, port: 443, hostname: "*.example.com", tls: {certificateRefs: [{name: cert}]}}
  - {name: all, protocol: HTTP, port: 80, hostname: all.example.com, allowedRoutes: {namespaces: {from: All}}}
  - {name: tcp, protocol: TCP, port: 9000}
  - {name: alt, protocol: HTTP, port: 8080}
  - {name: foreign-cert, protocol: HTTPS, port: 443, hostname: foreign.example.com, tls: {certificateRefs: [{name: cert, namespace: certs}]}}
  - {name: grpc-only, protocol: HTTP, port: 80, hostname: grpc.example.com, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: infra}
spec:
  gatewayClassName: other
  listeners: [{name: http, protocol: HTTP, port: 80}]
"#;

fn route(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, generation: 2}}\nspec: {spec}\n"
    )
}

fn attached(yaml: &str) -> Attachment {
    attach(
        &snapshot(&(BASE.to_string() + yaml)),
        CONTROLLER,
        Ports {
            http: 80,
            https: 443,
        },
    )
}

fn find<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} in {conds:?}"))
}

#[test]
fn listeners_get_the_conditions_the_spec_names() {
    let a = attached("");
    assert_eq!(a.gateways.len(), 1, "only Gateways of our GatewayClass");
    let gw = &a.gateways[&ObjectKey::new("infra", "gw")];
    assert_eq!(gw.generation, Some(3));
    let l = |name: &str| gw.listeners.iter().find(|l| l.name == name).unwrap();
    for ok in ["http", "https", "all"] {
        assert!(l(ok).serves(), "{ok}: {:?}", l(ok).conditions);
    }
    let reason = |name: &str, t: &str| find(&l(name).conditions, t).reason;
    assert_eq!(reason("tcp", "Accepted"), "UnsupportedProtocol");
    assert_eq!(reason("alt", "Accepted"), "PortUnavailable");
    assert_eq!(reason("foreign-cert", "ResolvedRefs"), "RefNotPermitted");
    assert!(!l("foreign-cert").serves());
    assert_eq!(reason("grpc-only", "ResolvedRefs"), "InvalidRouteKinds");
    assert!(l("grpc-only").supported_kinds.is_empty());
    assert_eq!(l("https").certificates, [ObjectKey::new("infra", "cert")]);
    let accepted = find(&gw.conditions, "Accepted");
    assert!(
        accepted.status && accepted.reason == "ListenersNotValid",
        "{accepted:?}"
    );

    // A ReferenceGrant lets the Gateway use the other namespace's Secret.
    let a = attached(
        "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: certs}\n\
         spec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}], to: [{group: '', kind: Secret}]}\n",
    );
    let gw = &a.gateways[&ObjectKey::new("infra", "gw")];
    let fc = gw
        .listeners
        .iter()
        .find(|l| l.name == "foreign-cert")
        .unwrap();
    assert!(fc.serves(), "{:?}", fc.conditions);
}

#[test]
fn listeners_on_one_port_conflict_by_protocol_or_hostname() {
    let yaml = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: clash, namespace: infra}\n\
        spec:\n  gatewayClassName: ebpf\n  listeners:\n  - {name: a, protocol: HTTP, port: 80, hostname: a.test}\n\
        \x20 - {name: b, protocol: HTTP, port: 80, hostname: a.test}\n  - {name: c, protocol: HTTP, port: 80, hostname: c.test}\n";
    let a = attached(yaml);
    let gw = &a.gateways[&ObjectKey::new("infra", "clash")];
    let reasons: Vec<&str> = gw
        .listeners
        .iter()
        .map(|l| find(&l.conditions, "Conflicted").reason)
        .collect();
    assert_eq!(
        reasons,
        ["HostnameConflict", "HostnameConflict", "NoConflicts"]
    );
}

#[test]
fn routes_attach_by_section_namespace_and_hostname() {
    let parent = |extra: &str| format!("{{parentRefs: [{{name: gw, namespace: infra{extra}}}], ");
    let yaml = route(
        "plain",
        "infra",
        &(parent("") + "rules: [{backendRefs: [{name: web, port: 80}]}]}"),
    ) + &route(
        "other-ns",
        "apps",
        &(parent(", sectionName: http") + "rules: [{backendRefs: [{name: web, port: 80}]}]}"),
    ) + &route(
        "to-all",
        "apps",
        &(parent(", sectionName: all") + "rules: [{backendRefs: [{name: web, port: 80}]}]}"),
    ) + &route(
        "no-such",
        "infra",
        &(parent(", sectionName: nope") + "rules: []}"),
    ) + &route(
        "wrong-host",
        "infra",
        &(parent(", sectionName: https") + "hostnames: [shop.example.org], rules: []}"),
    ) + &route(
        "theirs",
        "infra",
        "{parentRefs: [{name: theirs}], rules: []}",
    );
    let a = attached(&yaml);
    let accepted = |name: &str, ns: &str| {
        let r = &a.routes[&ObjectKey::new(ns, name)];
        assert_eq!(r.generation, Some(2));
        find(&r.parents[0].conditions, "Accepted").clone()
    };
    let plain = &a.routes[&ObjectKey::new("infra", "plain")];
    // Every listener that takes it: http (any host), https (its wildcard), all.
    let on: Vec<(&str, Vec<String>)> = plain.parents[0]
        .listeners
        .iter()
        .map(|(i, h)| {
            (
                a.gateways[&ObjectKey::new("infra", "gw")].listeners[*i]
                    .name
                    .as_str(),
                h.clone(),
            )
        })
        .collect();
    assert_eq!(
        on,
        [
            ("http", vec![]),
            ("https", vec!["*.example.com".to_string()]),
            ("all", vec!["all.example.com".to_string()])
        ]
    );
    assert!(accepted("plain", "infra").status);
    assert_eq!(accepted("other-ns", "apps").reason, "NotAllowedByListeners");
    assert!(accepted("to-all", "apps").status);
    assert_eq!(accepted("no-such", "infra").reason, "NoMatchingParent");
    assert_eq!(
        accepted("wrong-host", "infra").reason,
        "NoMatchingListenerHostname"
    );
    assert!(
        !a.routes.contains_key(&ObjectKey::new("infra", "theirs")),
        "not ours to speak for"
    );
    let gw = &a.gateways[&ObjectKey::new("infra", "gw")];
    let count = |name: &str| {
        gw.listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap()
            .attached_routes
    };
    assert_eq!((count("http"), count("https"), count("all")), (1, 1, 2));
}

#[test]
fn backends_resolve_in_their_namespace_or_by_reference_grant() {
    let spec = |backend: &str| {
        format!(
            "{{parentRefs: [{{name: gw, namespace: infra}}], rules: [{{backendRefs: [{backend}]}}]}}"
        )
    };
    let yaml = route("ok", "infra", &spec("{name: web, port: 80}"))
        + &route(
            "cross",
            "infra",
            &spec("{name: web, namespace: apps, port: 80}"),
        )
        + &route("missing", "infra", &spec("{name: nope, port: 80}"))
        + &route("kind", "infra", &spec("{kind: ConfigMap, name: web}"))
        + &route("no-port", "infra", &spec("{name: web}"));
    let resolved = |a: &Attachment, name: &str| {
        find(
            &a.routes[&ObjectKey::new("infra", name)].parents[0].conditions,
            "ResolvedRefs",
        )
        .clone()
    };
    let a = attached(&yaml);
    assert!(resolved(&a, "ok").status);
    assert_eq!(resolved(&a, "cross").reason, "RefNotPermitted");
    assert_eq!(resolved(&a, "missing").reason, "BackendNotFound");
    assert_eq!(resolved(&a, "kind").reason, "InvalidKind");
    assert_eq!(resolved(&a, "no-port").reason, "BackendNotFound");
    let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\n\
        spec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}], to: [{group: '', kind: Service, name: web}]}\n";
    let a = attached(&(yaml + grant));
    assert!(resolved(&a, "cross").status);
}

#[test]
fn attached_rules_compile_per_protocol_host_and_request() {
    let svc = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: apps, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n"
        )
    };
    let yaml = BASE.to_string()
        + &svc("cart-v1", "198.18.7.1")
        + &svc("cart-v2", "198.18.7.2")
        + &svc("pay", "198.18.7.3")
        + &route(
            "shop",
            "apps",
            "{parentRefs: [{name: gw, namespace: infra, sectionName: all}], hostnames: [all.example.com], rules: [\
             {matches: [{path: {value: /cart}, headers: [{name: x-canary, value: 'yes'}]}], backendRefs: [{name: cart-v2, port: 80}]},\
             {matches: [{path: {value: /cart}}], backendRefs: [{name: cart-v1, port: 80}, {name: gone, port: 80}]}]}",
        )
        + &route(
            "secure",
            "infra",
            "{parentRefs: [{name: gw, sectionName: https}], hostnames: [pay.example.com], rules: [{backendRefs: [{name: web, port: 80}]}]}",
        )
        + &route(
            "bad",
            "infra",
            "{parentRefs: [{name: gw, sectionName: http}], rules: [{matches: [{path: {type: RegularExpression, value: '('}}]}]}",
        );
    let t = table::compile(
        &snapshot(&yaml),
        CONTROLLER,
        Ports {
            http: 80,
            https: 443,
        },
        &mut Patterns::default(),
    );
    let get = hyper::Method::GET;
    let ask = |https: bool, host: &str, path: &str, canary: bool| {
        let header = move |n: &str| (canary && n == "x-canary").then_some("yes");
        let req = Request {
            path,
            method: &get,
            header: &header,
            query: None,
        };
        let side = if https { &t.https } else { &t.http };
        side.lookup(host, &req).map(|entry| {
            let target = &entry.target;
            let rule = &t.rules[entry.slot];
            assert_eq!(&rule.target, target);
            let names: Vec<String> = rule
                .backends
                .iter()
                .map(|b| match &*b.upstream {
                    Upstream::Endpoints { addrs, .. } => format!("{addrs:?}"),
                    other => format!("unavailable {}", other.name()),
                })
                .collect();
            format!("{}#{} {}", target.route.name, target.rule, names.join(" "))
        })
    };
    assert_eq!(
        ask(false, "all.example.com", "/cart/1", true).as_deref(),
        Some("shop#0 [198.18.7.2:8080]")
    );
    assert_eq!(
        ask(false, "all.example.com", "/cart/1", false).as_deref(),
        Some("shop#1 [198.18.7.1:8080] unavailable apps/gone:80")
    );
    assert_eq!(ask(false, "all.example.com", "/other", false), None);
    // Attached to the HTTPS listener only.
    assert_eq!(ask(false, "pay.example.com", "/", false), None);
    assert!(ask(true, "pay.example.com", "/", false).is_some());
    assert_eq!(ask(true, "all.example.com", "/cart", false), None);
    // A route that cannot be served as written is left out, with why.
    let why = &t.refused[&ObjectKey::new("infra", "bad")];
    assert!(
        why.starts_with("spec.rules[0].matches[0].path.value"),
        "{why}"
    );
    // `ingressd routes` shows it all, what is wrong named.
    let text = render::render_gateway(&t);
    for line in [
        "GATEWAY infra/gw  Accepted=ListenersNotValid",
        "  listener tcp unsupported:9000 *  routes=0  Accepted=UnsupportedProtocol",
        "  listener all HTTP:80 all.example.com  routes=1  ok",
        "HTTPROUTE apps/shop\n  parent infra/gw on [all(all.example.com)]  ResolvedRefs=BackendNotFound (Service apps/gone not found)",
        "HTTPROUTE infra/bad  not served: spec.rules[0].matches[0].path.value",
    ] {
        assert!(text.contains(line), "{line:?}\n{text}");
    }
}

#[test]
fn a_namespace_selector_takes_routes_from_the_namespaces_it_matches() {
    let gw = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: sel, namespace: infra}\n\
        spec: {gatewayClassName: ebpf, listeners: [{name: http, protocol: HTTP, port: 80, hostname: sel.example.com, \
        allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}}}}, \
        {name: by-name, protocol: HTTP, port: 80, hostname: named.example.com, \
        allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: dev}}}}}]}\n";
    let ns = |name: &str, env: &str| {
        format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{env: {env}}}}}\n"
        )
    };
    let to = |section: &str| {
        format!(
            "{{parentRefs: [{{name: sel, namespace: infra, sectionName: {section}}}], rules: []}}"
        )
    };
    let yaml = gw.to_string()
        + &ns("prod", "prod")
        + &ns("dev", "dev")
        + &route("p", "prod", &to("http"))
        + &route("d", "dev", &to("http"))
        // No Namespace object (manifest files): its name label only.
        + &route("d2", "dev", &to("by-name"))
        + &route("other", "unseen", &to("by-name"));
    let a = attached(&yaml);
    let accepted = |ns: &str, name: &str| {
        let c = find(
            &a.routes[&ObjectKey::new(ns, name)].parents[0].conditions,
            "Accepted",
        );
        (c.status, c.reason)
    };
    assert_eq!(accepted("prod", "p"), (true, "Accepted"));
    assert_eq!(accepted("dev", "d"), (false, "NotAllowedByListeners"));
    assert_eq!(accepted("dev", "d2"), (true, "Accepted"));
    assert_eq!(
        accepted("unseen", "other"),
        (false, "NotAllowedByListeners")
    );
}
