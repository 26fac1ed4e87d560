//! Golden tests of the model: `testdata/<case>/input.yaml` → desired state
//! (and warnings) in the same text form as `ingressd maps`, compared with
//! `expected.txt`. `UPDATE_GOLDEN=1` rewrites the expectations.
use std::path::Path;

use ingressd::{
    l4::{
        model::{NodeContext, desired_state},
        render::render_state,
    },
    source::files::ManifestSource,
};

fn render_case(dir: &Path) -> String {
    let mut source = ManifestSource::new(vec![dir.join("input.yaml")]);
    let loaded = source.load();
    let node = NodeContext {
        name: "node-a".into(),
        addrs: vec!["198.18.0.2".parse().unwrap()],
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
