//! The L7 layers depend one way only (see `src/l7/mod.rs`): every `use` and
//! every path in `src/l7` is resolved to the top-level module it names, and
//! a module may only name those below it in `ORDER`.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Highest first: a module may use the modules after it, never those
/// before it (so there can be no cycle).
const ORDER: &[&str] = &[
    "differential",
    "listen",
    "server",
    "pipeline",
    "tls",
    "upstream",
    "route",
    "http1",
    "stats",
    "error",
    "path",
    "body",
    "limits",
    "io",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/l7") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/l7` (`pipeline/policy.rs` →
/// `["pipeline", "policy"]`; `pipeline/mod.rs` → `["pipeline"]`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every path a `use` tree names, flattened: `super::{a::B, c}` →
/// `super::a::B`, `super::c`.
fn flatten(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let close = tree.rfind('}').filter(|c| *c > open).unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    flatten(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        flatten(&inner[start..], &head, out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

/// The top-level l7 module a path names from `module`, if any.
fn layer_named(path: &str, module: &[String]) -> Option<String> {
    let segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut at: Vec<String> = module.to_vec();
    let mut rest = &segments[..];
    match rest.first() {
        Some(&"crate") => {
            if rest.get(1) != Some(&"l7") {
                return None;
            }
            at.clear();
            rest = &rest[2..];
        }
        Some(&"super") => {
            while rest.first() == Some(&"super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        Some(&"self") => rest = &rest[1..],
        _ => return None,
    }
    let next = rest.first().filter(|s| !s.is_empty())?;
    at.push(next.to_string());
    at.first().cloned()
}

/// The paths a source file names outside its tests: every `use` tree,
/// flattened, and every word starting with one of `qualified`.
fn referenced_paths(file: &Path, qualified: &[&str]) -> Vec<String> {
    let statement = regex::Regex::new(r"(?m)^\s*(pub(\([^)]*\))?\s+)?use\s+([^;]+);")
        .expect("use-statement pattern");
    let text = std::fs::read_to_string(file).expect("read source");
    // Test modules may reach anywhere.
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut paths = Vec::new();
    for c in statement.captures_iter(text) {
        flatten(&c[3], "", &mut paths);
    }
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if qualified.iter().any(|q| word.starts_with(q)) {
            paths.push(word.to_string());
        }
    }
    paths
}

#[test]
fn l7_modules_depend_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/l7");
    let mut all = Vec::new();
    files(&root, &mut all);
    assert!(all.len() > 20, "found the l7 sources");
    let mut wrong = BTreeSet::new();
    for file in all {
        let rel = file.strip_prefix(&root).expect("under src/l7");
        let module = module_of(rel);
        let Some(own) = module.first().cloned() else {
            continue; // l7/mod.rs: the layers' parent
        };
        let own_rank = ORDER.iter().position(|l| *l == own);
        assert!(own_rank.is_some(), "{own} is not in ORDER");
        for p in referenced_paths(&file, &["super::", "crate::l7::"]) {
            let Some(named) = layer_named(&p, &module) else {
                continue;
            };
            if named == own {
                continue;
            }
            let rank = ORDER.iter().position(|l| *l == named);
            match (own_rank, rank) {
                (Some(o), Some(r)) if r > o => {}
                _ => {
                    wrong.insert(format!("{} uses {named} ({p})", rel.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or unknown dependencies:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The crate's folders, the boxes of ARCHITECTURE.md, highest first: each
/// may use those after it, never those before it.
const FOLDERS: &[&str] = &[
    "daemon", "status", "source", "l7", "kernel", "l4", "cluster",
];

#[test]
fn crate_folders_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = BTreeSet::new();
    for own in FOLDERS {
        let mut all = Vec::new();
        files(&src.join(own), &mut all);
        assert!(!all.is_empty(), "no sources in src/{own}");
        let own_rank = FOLDERS.iter().position(|f| f == own);
        for file in all {
            for p in referenced_paths(&file, &["crate::"]) {
                // `crate::{…}` alone is a use tree's head, flattened above.
                let Some(named) = p
                    .strip_prefix("crate::")
                    .and_then(|r| r.split("::").next())
                    .filter(|n| !n.is_empty())
                else {
                    continue;
                };
                let rank = FOLDERS.iter().position(|f| *f == named);
                match (own_rank, rank) {
                    (Some(o), Some(r)) if r >= o => {}
                    _ => {
                        let rel = file.strip_prefix(&src).expect("under src");
                        wrong.insert(format!("{} uses {named} ({p})", rel.display()));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or unknown dependencies between folders:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}
