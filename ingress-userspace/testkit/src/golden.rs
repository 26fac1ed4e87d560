//! Golden tests: each case is a folder with `input.yaml`, rendered and
//! compared with its `expected.txt`; `UPDATE_GOLDEN=1` rewrites them.
use std::path::Path;

/// Renders every case folder under `root` (at least `min_cases`) and
/// panics with a diff of each one that differs from its expectation.
pub fn check(root: &Path, min_cases: usize, render: impl Fn(&Path) -> String) {
    let mut cases: Vec<_> = std::fs::read_dir(root)
        .expect("golden cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= min_cases, "{cases:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let got = render(&case);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "== {} ==\n--- expected\n{expected}\n+++ got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
