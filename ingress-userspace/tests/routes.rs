//! The Ingress router against tables of host/path cases: every example of
//! the Kubernetes documentation's path-matching table, host precedence,
//! merging across Ingresses, conflicts and class selection. Pure.
use std::path::Path;

use ingressd::{
    cluster::{ClassConfig, Snapshot},
    l7::route::{Match, RouteTable, Upstream, compile},
    source::files::snapshot_of,
};

fn snapshot(yaml: &str) -> Snapshot {
    snapshot_of(yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A Service `name` with port 80 (named http) → 8080 and one endpoint.
fn service(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n"
    )
}

/// An Ingress of class ebpf with one rule: host (or none) and paths.
fn ingress(name: &str, created: &str, host: Option<&str>, paths: &[(&str, &str, &str)]) -> String {
    let host = host
        .map(|h| format!("    host: \"{h}\"\n"))
        .unwrap_or_default();
    let paths: String = paths
        .iter()
        .map(|(kind, path, svc)| {
            format!("      - path: {path}\n        pathType: {kind}\n        backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}\n")
        })
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\n\
         spec:\n  ingressClassName: ebpf\n  rules:\n  - \n{host}    http:\n      paths:\n{paths}"
    )
}

fn services() -> String {
    ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, s)| service(s, &format!("198.18.1.{}", i + 2)))
        .collect()
}

fn table(yaml: &str) -> RouteTable {
    let (t, _) = compile(&snapshot(&(services() + yaml)), &ClassConfig::default());
    t
}

/// The Service a request reaches ("404" for the built-in default backend).
fn target(t: &RouteTable, host: Option<&str>, path: &str) -> String {
    match t.lookup_raw(host, path).expect("a path in normal form") {
        Match::Route(r) => service_of(&r.upstream),
        Match::Default(Some(r)) => format!("default:{}", service_of(&r.upstream)),
        Match::Default(None) => "404".into(),
    }
}

fn service_of(u: &Upstream) -> String {
    u.name().split(['/', ':']).nth(1).unwrap_or("?").to_string()
}

#[test]
fn kubernetes_docs_path_matching_table() {
    // https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
    /// (the Ingress's (pathType, path) list, request path, matches?)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool);
    let cases: &[Case] = &[
        (&[("Prefix", "/")], "/anything/at/all", true),
        (&[("Exact", "/foo")], "/foo", true),
        (&[("Exact", "/foo")], "/bar", false),
        (&[("Exact", "/foo")], "/foo/", false),
        (&[("Exact", "/foo/")], "/foo", false),
        (&[("Prefix", "/foo")], "/foo", true),
        (&[("Prefix", "/foo")], "/foo/", true),
        (&[("Prefix", "/foo/")], "/foo", true),
        (&[("Prefix", "/foo/")], "/foo/", true),
        (&[("Prefix", "/aaa/bb")], "/aaa/bbb", false),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb", true),
        (&[("Prefix", "/aaa/bbb/")], "/aaa/bbb", true),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/", true),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", true),
        (&[("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", false),
        (&[("Prefix", "/aaa")], "/ccc", false),
        (&[("ImplementationSpecific", "/foo")], "/foo/bar", true),
        (&[("ImplementationSpecific", "/foo")], "/foobar", false),
    ];
    for (paths, request, matches) in cases {
        let rule: Vec<(&str, &str, &str)> = paths.iter().map(|(k, p)| (*k, *p, "a")).collect();
        let t = table(&ingress("i", "2024-01-01T00:00:00Z", None, &rule));
        let got = target(&t, Some("example.test"), request);
        assert_eq!(
            got == "a",
            *matches,
            "{paths:?} with request {request}: got {got}"
        );
    }
}

#[test]
fn longest_prefix_wins_from_the_docs_table() {
    let t = table(&ingress(
        "i",
        "2024-01-01T00:00:00Z",
        None,
        &[
            ("Prefix", "/", "a"),
            ("Prefix", "/aaa", "b"),
            ("Prefix", "/aaa/bbb", "c"),
        ],
    ));
    assert_eq!(target(&t, None, "/aaa/ccc"), "b");
    assert_eq!(target(&t, None, "/aaa/bbb"), "c");
    assert_eq!(target(&t, None, "/aaa/bbb/x?q=1"), "c");
    assert_eq!(target(&t, None, "/ccc"), "a");
}

#[test]
fn exact_beats_prefix_of_equal_length() {
    let t = table(&ingress(
        "i",
        "2024-01-01T00:00:00Z",
        None,
        &[("Prefix", "/foo", "a"), ("Exact", "/foo", "b")],
    ));
    assert_eq!(target(&t, None, "/foo"), "b");
    assert_eq!(target(&t, None, "/foo/"), "a");
    assert_eq!(target(&t, None, "/foo/bar"), "a");
}

#[test]
fn hostname_precedence_exact_then_wildcard_then_any() {
    let yaml = ingress(
        "exact",
        "2024-01-01T00:00:00Z",
        Some("foo.bar.com"),
        &[("Prefix", "/", "a")],
    ) + &ingress(
        "wild",
        "2024-01-01T00:00:00Z",
        Some("*.bar.com"),
        &[("Prefix", "/", "b")],
    ) + &ingress("any", "2024-01-01T00:00:00Z", None, &[("Prefix", "/", "c")]);
    let t = table(&yaml);
    assert_eq!(target(&t, Some("foo.bar.com"), "/"), "a");
    assert_eq!(
        target(&t, Some("FOO.Bar.com:8080"), "/"),
        "a",
        "case-insensitive, port ignored"
    );
    assert_eq!(target(&t, Some("baz.bar.com"), "/"), "b");
    // A wildcard covers exactly one label.
    assert_eq!(target(&t, Some("x.baz.bar.com"), "/"), "c");
    assert_eq!(target(&t, Some("bar.com"), "/"), "c");
    assert_eq!(target(&t, Some("other.test"), "/"), "c");
    assert_eq!(target(&t, None, "/"), "c");
}

#[test]
fn host_with_rules_but_no_matching_path_goes_to_the_default_backend() {
    let yaml = ingress(
        "h",
        "2024-01-01T00:00:00Z",
        Some("foo.test"),
        &[("Prefix", "/api", "a")],
    ) + &ingress("any", "2024-01-01T00:00:00Z", None, &[("Prefix", "/", "c")]);
    let t = table(&yaml);
    assert_eq!(target(&t, Some("foo.test"), "/api/x"), "a");
    assert_eq!(target(&t, Some("foo.test"), "/web"), "404");
}

#[test]
fn rules_for_one_host_merge_across_ingresses_and_the_older_wins_a_conflict() {
    let yaml = ingress(
        "new",
        "2024-06-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/cart", "b"), ("Prefix", "/", "d")],
    ) + &ingress(
        "old",
        "2024-01-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/", "a")],
    );
    let (t, warnings) = compile(&snapshot(&(services() + &yaml)), &ClassConfig::default());
    assert_eq!(
        target(&t, Some("shop.test"), "/cart/1"),
        "b",
        "merged from the newer Ingress"
    );
    assert_eq!(
        target(&t, Some("shop.test"), "/"),
        "a",
        "the older Ingress keeps the conflicting path"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].ingress, "default/new");
    assert!(
        warnings[0].message.contains("older Ingress default/old"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_conflict_is_seen_through_a_trailing_slash_and_ties_go_by_namespace_and_name() {
    // Prefix "/foo/" and "/foo" are one path (the same elements).
    let yaml = ingress(
        "new",
        "2024-06-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/foo", "b")],
    ) + &ingress(
        "old",
        "2024-01-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/foo/", "a")],
    );
    let (t, warnings) = compile(&snapshot(&(services() + &yaml)), &ClassConfig::default());
    for path in ["/foo", "/foo/", "/foo/bar"] {
        assert_eq!(target(&t, Some("shop.test"), path), "a", "{path}");
    }
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].ingress, "default/new");
    // Created in the same second: the first by namespace/name keeps it.
    let yaml = ingress(
        "zeta",
        "2024-01-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/", "b")],
    ) + &ingress(
        "alpha",
        "2024-01-01T00:00:00Z",
        Some("shop.test"),
        &[("Prefix", "/", "a")],
    );
    let (t, warnings) = compile(&snapshot(&(services() + &yaml)), &ClassConfig::default());
    assert_eq!(target(&t, Some("shop.test"), "/"), "a");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].ingress, "default/zeta");
}

#[test]
fn default_backend_and_builtin_404() {
    let t = table(&ingress(
        "i",
        "2024-01-01T00:00:00Z",
        Some("x.test"),
        &[("Exact", "/", "a")],
    ));
    assert_eq!(target(&t, Some("y.test"), "/"), "404");
    let with_default = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: d}\n\
                        spec:\n  ingressClassName: ebpf\n  defaultBackend: {service: {name: d, port: {name: http}}}\n";
    let t = table(with_default);
    assert_eq!(target(&t, Some("y.test"), "/nothing"), "default:d");
}

#[test]
fn class_selection() {
    let class = |name: &str, controller: &str, default: bool| {
        let ann = if default {
            "\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}"
        } else {
            ""
        };
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: {name}{ann}\nspec: {{controller: {controller}}}\n"
        )
    };
    let ing = |name: &str, class: Option<&str>, path: &str| {
        let class = class
            .map(|c| format!("  ingressClassName: {c}\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}}}\nspec:\n{class}  rules:\n  - http:\n      paths:\n      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: a, port: {{number: 80}}}}}}}}\n"
        )
    };
    // Ours by class name (the IngressClass says our controller), by another
    // class name with our controller, and by default class; not nginx's.
    let yaml = class("ebpf", "ingress-ebpf/controller", false)
        + &class("edge", "ingress-ebpf/controller", true)
        + &class("nginx", "k8s.io/ingress-nginx", false)
        + &ing("mine", Some("ebpf"), "/mine")
        + &ing("edge", Some("edge"), "/edge")
        + &ing("unnamed", None, "/unnamed")
        + &ing("theirs", Some("nginx"), "/theirs")
        + &ing("unknown", Some("missing"), "/unknown");
    let t = table(&yaml);
    for (path, want) in [
        ("/mine", "a"),
        ("/edge", "a"),
        ("/unnamed", "a"),
        ("/theirs", "404"),
        ("/unknown", "404"),
    ] {
        assert_eq!(target(&t, None, path), want, "{path}");
    }
    // Without a default class of ours, an Ingress naming no class is not ours.
    let t =
        table(&(class("nginx", "k8s.io/ingress-nginx", true) + &ing("unnamed", None, "/unnamed")));
    assert_eq!(target(&t, None, "/unnamed"), "404");
}

#[test]
fn invalid_paths_and_backends_are_reported_and_the_rest_works() {
    let yaml = ingress(
        "good",
        "2024-01-01T00:00:00Z",
        Some("ok.test"),
        &[("Prefix", "/", "a")],
    ) + &ingress(
        "bad",
        "2024-01-02T00:00:00Z",
        Some("bad.test"),
        &[
            ("Prefix", "relative", "a"),
            ("Prefix", "/x", "missing"),
            ("Weird", "/y", "a"),
        ],
    );
    let (t, warnings) = compile(&snapshot(&(services() + &yaml)), &ClassConfig::default());
    assert_eq!(target(&t, Some("ok.test"), "/"), "a");
    let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            // Each path's form first, then the backends of those kept.
            "spec.rules[0].http.paths[0].path",
            "spec.rules[0].http.paths[2].pathType",
            "spec.rules[0].http.paths[1].backend"
        ],
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.ingress == "default/bad"));
    // The missing Service still routes, to a 503.
    match t
        .lookup_raw(Some("bad.test"), "/x")
        .expect("a path in normal form")
    {
        Match::Route(r) => assert!(matches!(*r.upstream, Upstream::Unavailable { .. })),
        other => panic!("{other:?}"),
    }
}

#[test]
fn backends_resolve_to_ready_endpoints_by_port_number_or_name() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80}
  - {name: admin, port: 9000, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
endpoints:
- {addresses: [198.18.1.2]}
- {addresses: [198.18.1.3], conditions: {ready: false}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: i}
spec:
  ingressClassName: ebpf
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /admin, pathType: Prefix, backend: {service: {name: web, port: {name: admin}}}}
      - {path: /nope, pathType: Prefix, backend: {service: {name: web, port: {name: nope}}}}
"#;
    let (t, warnings) = compile(&snapshot(yaml), &ClassConfig::default());
    let up = |path: &str| match t.lookup_raw(None, path).expect("a path in normal form") {
        Match::Route(r) => (*r.upstream).clone(),
        other => panic!("{other:?}"),
    };
    match up("/") {
        Upstream::Endpoints { addrs, .. } => {
            assert_eq!(addrs, vec!["198.18.1.2:8080".parse().unwrap()])
        }
        other => panic!("{other:?}"),
    }
    match up("/admin") {
        Upstream::Endpoints {
            addrs,
            app_protocol,
            ..
        } => {
            assert_eq!(addrs, vec!["198.18.1.2:9090".parse().unwrap()]);
            assert_eq!(app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(up("/nope"), Upstream::Unavailable { .. }));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].message.contains("no port nope"),
        "{}",
        warnings[0]
    );
}

/// `ingress(...)` with annotations.
fn annotated(name: &str, annotations: &[(&str, &str)], paths: &[(&str, &str, &str)]) -> String {
    let notes: String = annotations
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect();
    ingress(name, "2024-01-01T00:00:00Z", Some("shop.test"), paths).replace(
        &format!("metadata: {{name: {name}, creationTimestamp: \"2024-01-01T00:00:00Z\"}}\n"),
        &format!("metadata:\n  name: {name}\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  annotations:\n{notes}"),
    )
}

/// `rewrite_path` for a path as it came; a rewrite that would climb out
/// of its target is `"(refused)"`.
fn rewrite(r: &ingressd::l7::route::Route, path: &str, query: Option<&str>) -> Option<String> {
    let normal = ingressd::l7::path::normalize(path).expect("a path in normal form");
    ingressd::l7::route::rewrite_path(r, &normal, query)
        .map(|rw| rw.unwrap_or_else(|_| "(refused)".to_string()))
}

fn rewritten(t: &RouteTable, path: &str) -> Option<String> {
    match t
        .lookup_raw(Some("shop.test"), path)
        .expect("a path in normal form")
    {
        Match::Route(r) => rewrite(r, path, None),
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn rewrite_target_with_regex_captures_as_ingress_nginx() {
    // The ingress-nginx documentation's example.
    let t = table(&annotated(
        "rw",
        &[("rewrite-target", "/$2"), ("use-regex", "true")],
        &[("ImplementationSpecific", "/something(/|$)(.*)", "a")],
    ));
    assert_eq!(rewritten(&t, "/something").as_deref(), Some("/"));
    assert_eq!(rewritten(&t, "/something/").as_deref(), Some("/"));
    assert_eq!(rewritten(&t, "/something/new").as_deref(), Some("/new"));
    assert_eq!(rewritten(&t, "/SOMETHING/new").as_deref(), Some("/new"));
    // `(/|$)` wants a slash or the end after the prefix.
    assert_eq!(target(&t, Some("shop.test"), "/somethingelse"), "404");
    assert_eq!(target(&t, Some("shop.test"), "/other"), "404");
}

#[test]
fn regex_paths_only_with_use_regex_and_the_longest_pattern_wins() {
    let t = table(
        &(annotated(
            "re",
            &[("use-regex", "true")],
            &[
                ("ImplementationSpecific", "/api/v[0-9]+/users", "a"),
                ("ImplementationSpecific", "/api/v[0-9]+", "b"),
            ],
        ) + &ingress(
            "plain",
            "2024-01-02T00:00:00Z",
            Some("shop.test"),
            &[
                ("ImplementationSpecific", "/api", "c"),
                ("Prefix", "/api/v1/users/admin", "d"),
            ],
        )),
    );
    assert_eq!(target(&t, Some("shop.test"), "/api/v2/users/7"), "a");
    assert_eq!(target(&t, Some("shop.test"), "/api/v12"), "b");
    // use-regex on one Ingress makes the host's other paths patterns too
    // (as in ingress-nginx): longest first.
    assert_eq!(target(&t, Some("shop.test"), "/api/x"), "c");
    assert_eq!(target(&t, Some("shop.test"), "/api/v1/users/admin/x"), "d");
    // Without rewrite-target the path goes upstream as it came.
    match t
        .lookup_raw(Some("shop.test"), "/api/v2/users/7")
        .expect("a path in normal form")
    {
        Match::Route(r) => assert_eq!(rewrite(r, "/api/v2/users/7", None), None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_regex_is_reported_and_the_rest_works() {
    let yaml = services()
        + &annotated(
            "bad",
            &[("use-regex", "true")],
            &[
                ("ImplementationSpecific", "/broken(", "a"),
                ("ImplementationSpecific", "/fine.*", "b"),
            ],
        );
    let (t, warnings) = compile(&snapshot(&yaml), &ClassConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].field, "spec.rules[0].http.paths[0].path");
    assert_eq!(target(&t, Some("shop.test"), "/fine/x"), "b");
}

#[test]
fn prefix_with_rewrite_target_replaces_the_whole_path_as_nginx_does() {
    let t = table(&annotated(
        "p",
        &[("rewrite-target", "/")],
        &[("Prefix", "/app", "a")],
    ));
    assert_eq!(rewritten(&t, "/app/x/y").as_deref(), Some("/"));
}

#[test]
fn rewrite_keeps_the_query_and_reads_captures_as_nginx() {
    let t = table(&annotated(
        "q",
        &[
            ("rewrite-target", "/index.php?r=$1x"),
            ("use-regex", "true"),
        ],
        &[("ImplementationSpecific", "/x/(.*)", "a")],
    ));
    let Match::Route(r) = t
        .lookup_raw(Some("shop.test"), "/x/a")
        .expect("a path in normal form")
    else {
        panic!("no route")
    };
    let rw = |q| rewrite(r, "/x/a", q);
    assert_eq!(rw(Some("b=1")).as_deref(), Some("/index.php?r=ax&b=1"));
    assert_eq!(rw(None).as_deref(), Some("/index.php?r=ax"));
}

#[test]
fn prefix_paths_become_patterns_with_rewrite_target_and_lookalikes_are_reported() {
    // The common ingress-nginx form: pathType Prefix with a pattern.
    let t = table(&annotated(
        "rw",
        &[("rewrite-target", "/$2")],
        &[("Prefix", "/api(/|$)(.*)", "a")],
    ));
    assert_eq!(rewritten(&t, "/api/users").as_deref(), Some("/users"));
    // Without use-regex on the host a pattern-looking path is literal, and
    // reported.
    let yaml = services()
        + &ingress(
            "plain",
            "2024-01-01T00:00:00Z",
            Some("other.test"),
            &[("Prefix", "/api(/|$)(.*)", "a")],
        );
    let (_, warnings) = compile(&snapshot(&yaml), &ClassConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].message.contains("use-regex"), "{warnings:?}");
}

#[test]
fn rules_and_requests_meet_in_normal_form() {
    let t = table(&ingress(
        "n",
        "2024-01-01T00:00:00Z",
        Some("shop.test"),
        &[
            ("Exact", "/admin", "b"),
            ("Prefix", "/", "a"),
            // Written unnormalised in the Ingress: matched as its normal form.
            ("Prefix", "/api//v1/./x", "c"),
            ("Exact", "/%7Euser", "d"),
        ],
    ));
    let at = |p| target(&t, Some("shop.test"), p);
    for p in [
        "/admin",
        "/%61dmin",
        "/x/../admin",
        "/./admin",
        "/%2Fadmin",
        "//admin",
    ] {
        assert_eq!(at(p), "b", "{p}");
    }
    assert_eq!(at("/admin/"), "a", "Exact is exact, as nginx's `=`");
    assert_eq!(at("/api/v1/x/y"), "c");
    assert_eq!(at("/api/v1//x"), "c");
    assert_eq!(at("/~user"), "d");
    assert_eq!(at("/%7euser"), "d");
    assert!(t.lookup_raw(Some("shop.test"), "/../admin").is_err());
    // An Ingress path with no normal form is reported, the rest kept.
    let yaml = services()
        + &ingress(
            "bad",
            "2024-01-01T00:00:00Z",
            Some("bad.test"),
            &[("Prefix", "/../x", "a"), ("Prefix", "/ok", "b")],
        );
    let (t, warnings) = compile(&snapshot(&yaml), &ClassConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].message.contains(".. above the root"),
        "{warnings:?}"
    );
    assert_eq!(target(&t, Some("bad.test"), "/ok"), "b");
}

#[test]
fn rewrites_escape_their_captures_and_never_climb_out() {
    let t = table(&annotated(
        "rw",
        &[
            ("rewrite-target", "/static/$1?id=$2"),
            ("use-regex", "true"),
        ],
        &[("ImplementationSpecific", "/app/([^/]*)/?(.*)", "a")],
    ));
    // Decoded for matching, escaped again on the way out.
    assert_eq!(
        rewritten(&t, "/app/a%3Fb/x%26y=1").as_deref(),
        Some("/static/a%3Fb?id=x%26y%3D1")
    );
    let t = table(&annotated(
        "rw2",
        &[("rewrite-target", "/static/$1/end"), ("use-regex", "true")],
        &[("ImplementationSpecific", "/app(.*)x", "a")],
    ));
    // A capture that makes a dot segment may not leave /static/.
    assert_eq!(rewritten(&t, "/app/..x").as_deref(), Some("(refused)"));
    assert_eq!(rewritten(&t, "/app/.x").as_deref(), Some("/static/end"));
    assert_eq!(rewritten(&t, "/app/ax").as_deref(), Some("/static//a/end"));
}

#[test]
fn patterns_are_bounded_and_compiled_once_per_change() {
    let paths: Vec<(String, String, String)> = (0..40)
        .map(|i| {
            (
                "ImplementationSpecific".to_string(),
                format!("/r{i}/\\w{{60}}"),
                "a".to_string(),
            )
        })
        .chain([(
            "ImplementationSpecific".to_string(),
            "/huge/(\\w{60}){1000}".to_string(),
            "b".to_string(),
        )])
        .collect();
    let paths: Vec<(&str, &str, &str)> = paths
        .iter()
        .map(|(k, p, s)| (k.as_str(), p.as_str(), s.as_str()))
        .collect();
    let yaml = services() + &annotated("rx", &[("use-regex", "true")], &paths);
    let snap = snapshot(&yaml);
    let mut patterns = ingressd::l7::route::Patterns::default();
    let (t, warnings) =
        ingressd::l7::route::compile_with(&snap, &ClassConfig::default(), &mut patterns);
    // The one too large compiled is refused by name; the rest serve.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].message.contains("more than 256 KiB"),
        "{warnings:?}"
    );
    assert_eq!(warnings[0].field, "spec.rules[0].http.paths[40].path");
    assert_eq!(
        target(
            &t,
            Some("shop.test"),
            "/r7/abcdefghij_abcdefghij_abcdefghij_abcdefghij_abcdefghij_abcdefghi"
        ),
        "a"
    );
    assert_eq!(patterns.len(), 41);
    // The next sync (an endpoint changed, say) gives the same table.
    let (again, _) =
        ingressd::l7::route::compile_with(&snap, &ClassConfig::default(), &mut patterns);
    assert_eq!(again.len(), t.len());
    assert_eq!(patterns.len(), 41, "nothing compiled twice, nothing lost");
}

/// Golden tests of the compiled table, in the text `ingressd routes`
/// prints: `routedata/<case>/input.yaml` → `expected.txt` (warnings
/// after the table). `UPDATE_GOLDEN=1` rewrites the expectations.
#[test]
fn golden_route_tables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routedata");
    testkit::golden::check(&root, 5, |case| {
        let mut source =
            ingressd::source::files::ManifestSource::new(vec![case.join("input.yaml")]);
        let loaded = source.load();
        let (table, warnings) = compile(source.snapshot(), &ClassConfig::default());
        let mut got = ingressd::l7::route::render_routes(&table);
        if !loaded.errors.is_empty() || !warnings.is_empty() {
            got.push_str("\nWARNINGS\n");
            for e in &loaded.errors {
                got.push_str(&format!("{e}\n"));
            }
            for w in &warnings {
                got.push_str(&format!("{w}\n"));
            }
        }
        got
    });
}

/// An Ingress with the ssl-passthrough annotation, one rule.
fn passthrough(name: &str, created: &str, host: &str, path: &str, svc: &str) -> String {
    ingress(name, created, Some(host), &[("Prefix", path, svc)]).replace(
        &format!("name: {name}, creationTimestamp"),
        &format!(
            "name: {name}, annotations: {{nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"}}, creationTimestamp"
        ),
    )
}

#[test]
fn ssl_passthrough_hosts_by_sni_only_with_the_flag() {
    let yaml = services()
        + &passthrough("old", "2024-01-01T00:00:00Z", "pass.test", "/", "a")
        + &passthrough("new", "2024-02-01T00:00:00Z", "pass.test", "/", "b")
        + &passthrough("wild", "2024-01-01T00:00:00Z", "*.wild.test", "/", "c")
        + &passthrough("sub", "2024-01-01T00:00:00Z", "sub.test", "/sub", "d");
    let snap = snapshot(&yaml);
    let on = ClassConfig {
        ssl_passthrough: true,
        ..ClassConfig::default()
    };
    let (t, warnings) = compile(&snap, &on);
    let to = |sni: &str| {
        t.passthrough(Some(sni))
            .map(|p| p.upstream.name().to_string())
    };
    // The older Ingress keeps a host; names match case-insensitively.
    assert_eq!(to("pass.test").as_deref(), Some("default/a:80"));
    assert_eq!(to("PASS.Test.").as_deref(), Some("default/a:80"));
    // A wildcard takes exactly one label.
    assert_eq!(to("x.wild.test").as_deref(), Some("default/c:80"));
    assert_eq!(to("y.x.wild.test"), None);
    assert_eq!(to("wild.test"), None);
    // Only a "/" path is passed through.
    assert_eq!(to("sub.test"), None);
    assert!(t.passthrough(None).is_none());
    let said: Vec<String> = warnings
        .iter()
        .map(|w| format!("{} {}: {}", w.ingress, w.field, w.message))
        .collect();
    assert!(
        said.iter().any(|w| w.starts_with("default/new ")
            && w.contains("already passed through by older Ingress default/old")),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|w| w.starts_with("default/sub ") && w.contains("no path \"/\"")),
        "{said:#?}"
    );
    // HTTP routing of those hosts is as without the annotation.
    assert!(matches!(
        t.lookup_raw(Some("pass.test"), "/x").unwrap(),
        Match::Route(_)
    ));

    // Off by default, as in ingress-nginx: reported, nothing passed.
    let (t, warnings) = compile(&snap, &ClassConfig::default());
    assert!(t.passthrough(Some("pass.test")).is_none());
    assert!(!t.has_passthrough());
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("needs --enable-ssl-passthrough")),
        "{warnings:?}"
    );
}
