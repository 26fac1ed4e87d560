//! Golden tests of the model: `testdata/<case>/input.yaml` → desired state
//! (and warnings) in the same text form as `ingressd maps`, compared with
//! `expected.txt`. `UPDATE_GOLDEN=1` rewrites the expectations.
use std::path::Path;

use ingressd::{
    l4::{
        model::{NodeContext, Route, desired_state},
        render::render_state,
    },
    source::files::ManifestSource,
};

fn render_case(dir: &Path) -> String {
    let mut source = ManifestSource::new(vec![dir.join("input.yaml")]);
    let loaded = source.load();
    // The lab's node-a: its pods behind cbr0, node-b's through node-b.
    let route = |dest: &str, prefix, gateway: Option<&str>, dev: &str| Route {
        dest: dest.parse().unwrap(),
        prefix,
        gateway: gateway.map(|g| g.parse().unwrap()),
        dev: dev.into(),
        metric: 0,
    };
    let node = NodeContext {
        name: "node-a".into(),
        addrs: vec!["198.18.0.2".parse().unwrap()],
        routes: vec![
            route("198.18.0.0", 24, None, "eth0"),
            route("198.18.1.0", 24, None, "cbr0"),
            route("198.18.2.0", 24, Some("198.18.0.3"), "eth0"),
        ],
        interfaces: vec!["eth0".into()],
        ..Default::default()
    };
    let (state, warnings) = desired_state(source.snapshot(), &node);
    let mut out = render_state(&state);
    if !loaded.errors.is_empty() || !warnings.is_empty() {
        out.push_str("\nWARNINGS\n");
        for e in &loaded.errors {
            out.push_str(&format!("{e}\n"));
        }
        for w in &warnings {
            out.push_str(&format!("{}: {}\n", w.object, w.message));
        }
    }
    out
}

#[test]
fn golden_desired_state() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    testkit::golden::check(&root, 7, render_case);
}
