//! Path patterns (`use-regex`, `rewrite-target`) as nginx's `location ~*`
//! runs them: case-insensitive, anchored at the start, byte by byte with
//! ASCII classes (PCRE's defaults: `\w` is `[A-Za-z0-9_]`, not the
//! Unicode class a hundred times its size). Header patterns
//! (`canary-by-header-pattern`) as `ngx.re.match` runs them: the same
//! classes, case-sensitive, matching anywhere in the value.
//!
//! Any Ingress author writes these, so they are bounded: each pattern to
//! `MAX_PATTERN_BYTES` compiled, each Ingress to `MAX_INGRESS_BYTES` for
//! all its patterns (lazy-DFA caches counted), and a pattern over its
//! bound is refused with a warning, not half compiled. `Patterns` keeps
//! every compiled pattern (and every refusal) for as long as an Ingress
//! uses it, so a sync compiles only what changed: an endpoint change costs
//! no regex work at all.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use regex_automata::{
    meta,
    util::{captures::Captures, syntax},
};

/// Characters that make a path look like a regular expression (`.` is
/// common in plain paths, so it does not count).
pub const REGEX_CHARS: &[char] = &['(', ')', '|', '[', ']', '*', '+', '^', '$', '\\'];

/// Compiled size allowed for one pattern.
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;
/// Compiled size allowed for all the patterns of one Ingress.
pub const MAX_INGRESS_BYTES: usize = 4 * 1024 * 1024;
/// The lazy DFA's cache, per pattern and thread that matches with it.
const CACHE_BYTES: usize = 16 * 1024;
/// Longest pattern source taken at all.
const MAX_SOURCE: usize = 4096;

/// A compiled path pattern; equal when the patterns are.
#[derive(Clone)]
pub struct PathRegex {
    re: Arc<meta::Regex>,
    source: Arc<str>,
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for PathRegex {}

impl std::fmt::Debug for PathRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PathRegex({:?})", self.source)
    }
}

/// The groups of one match, by number or name.
pub struct Groups<'p> {
    caps: Captures,
    haystack: &'p [u8],
}

impl<'p> Groups<'p> {
    pub fn get(&self, index: usize) -> Option<&'p [u8]> {
        self.caps
            .get_group(index)
            .map(|s| &self.haystack[s.range()])
    }

    pub fn name(&self, name: &str) -> Option<&'p [u8]> {
        self.caps
            .get_group_by_name(name)
            .map(|s| &self.haystack[s.range()])
    }
}

/// What a pattern is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Flavour {
    /// A request path: `(?i)^pattern`.
    Path,
    /// A header value: `pattern` anywhere, case-sensitive.
    Header,
    /// The whole value, case-sensitive: `^pattern$` (the Gateway API's
    /// RegularExpression matches, as Envoy-based peers match them).
    Whole,
}

impl PathRegex {
    /// The pattern in its flavour, within the size bound.
    fn compile(pattern: &str, flavour: Flavour) -> Result<Self, String> {
        if pattern.len() > MAX_SOURCE {
            return Err(format!("is longer than {MAX_SOURCE} characters"));
        }
        let source = match flavour {
            Flavour::Path => format!("^(?:{pattern})"),
            Flavour::Header => format!("(?:{pattern})"),
            Flavour::Whole => format!("^(?:{pattern})$"),
        };
        let re = meta::Builder::new()
            .syntax(
                syntax::Config::new()
                    .case_insensitive(flavour == Flavour::Path)
                    .unicode(false)
                    .utf8(false),
            )
            .configure(
                meta::Config::new()
                    .nfa_size_limit(Some(MAX_PATTERN_BYTES))
                    .onepass_size_limit(Some(MAX_PATTERN_BYTES))
                    .dfa_size_limit(Some(MAX_PATTERN_BYTES))
                    .hybrid_cache_capacity(CACHE_BYTES)
                    .utf8_empty(false),
            )
            .build(&source)
            .map_err(|e| match e.size_limit() {
                Some(_) => format!(
                    "compiles to more than {} KiB (the bound for one pattern)",
                    MAX_PATTERN_BYTES / 1024
                ),
                // The parser's own words ("unclosed group"), without
                // the pattern it drew its caret under.
                None => {
                    let why = e
                        .syntax_error()
                        .map(ToString::to_string)
                        .and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("error: "))
                                .map(str::to_string)
                        })
                        .unwrap_or_else(|| e.to_string());
                    format!("is not a regular expression: {why}")
                }
            })?;
        Ok(Self {
            re: Arc::new(re),
            source: Arc::from(pattern),
        })
    }

    /// The pattern as the Ingress wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.re.is_match(path.as_bytes())
    }

    /// For a header pattern: whether it matches somewhere in `value`.
    pub fn is_match_bytes(&self, value: &[u8]) -> bool {
        self.re.is_match(value)
    }

    pub fn captures<'p>(&self, path: &'p str) -> Option<Groups<'p>> {
        let mut caps = self.re.create_captures();
        self.re.captures(path.as_bytes(), &mut caps);
        caps.is_match().then_some(Groups {
            caps,
            haystack: path.as_bytes(),
        })
    }

    /// What it costs to keep and to match with (one thread's cache).
    fn cost(&self) -> usize {
        self.re.memory_usage() + CACHE_BYTES
    }
}

/// Every pattern compiled so far, with its refusal if it had one.
#[derive(Default)]
pub struct Patterns {
    compiled: HashMap<(Flavour, String), Result<PathRegex, String>>,
    /// The patterns asked for since the last `keep_used`.
    used: HashSet<(Flavour, String)>,
}

/// What the patterns of one Ingress have cost so far.
#[derive(Default)]
pub struct Budget(usize);

impl Patterns {
    /// The compiled path `pattern`, charged to `budget`; why not, else.
    pub fn get(&mut self, pattern: &str, budget: &mut Budget) -> Result<PathRegex, String> {
        self.compiled_as(Flavour::Path, pattern, budget)
    }

    /// The compiled header `pattern`, charged to `budget`; why not, else.
    pub fn header(&mut self, pattern: &str, budget: &mut Budget) -> Result<PathRegex, String> {
        self.compiled_as(Flavour::Header, pattern, budget)
    }

    /// The compiled `pattern` for whole values, charged to `budget`.
    pub fn whole(&mut self, pattern: &str, budget: &mut Budget) -> Result<PathRegex, String> {
        self.compiled_as(Flavour::Whole, pattern, budget)
    }

    fn compiled_as(
        &mut self,
        flavour: Flavour,
        pattern: &str,
        budget: &mut Budget,
    ) -> Result<PathRegex, String> {
        let key = (flavour, pattern.to_string());
        self.used.insert(key.clone());
        let compiled = self
            .compiled
            .entry(key)
            .or_insert_with(|| PathRegex::compile(pattern, flavour))
            .clone()?;
        let cost = compiled.cost();
        if budget.0 + cost > MAX_INGRESS_BYTES {
            return Err(format!(
                "would take this Ingress's patterns past {} MiB compiled; split them across Ingresses",
                MAX_INGRESS_BYTES >> 20
            ));
        }
        budget.0 += cost;
        Ok(compiled)
    }

    /// A literal path as a pattern (`rewrite-target` on a plain path).
    pub fn literal(&mut self, path: &str, budget: &mut Budget) -> Result<PathRegex, String> {
        self.get(&regex_syntax::escape(path), budget)
    }

    /// Forgets the patterns no compile asked for since the last call.
    pub fn keep_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.compiled.retain(|k, _| used.contains(k));
    }

    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(p: &str) -> Result<PathRegex, String> {
        Patterns::default().get(p, &mut Budget::default())
    }

    #[test]
    fn as_nginx_matches_them() {
        let re = compiled("/api(/|$)(.*)").unwrap();
        assert!(re.is_match("/API/x") && re.is_match("/api") && !re.is_match("/x/api"));
        let caps = re.captures("/api/v1/users").unwrap();
        assert_eq!(caps.get(2), Some(&b"v1/users"[..]));
        let named = compiled("/u/(?P<id>[0-9]+)").unwrap();
        assert_eq!(
            named.captures("/u/42").unwrap().name("id"),
            Some(&b"42"[..])
        );
        // ASCII classes, as PCRE's: \w is no letter beyond ASCII.
        let word = compiled(r"/\w+$").unwrap();
        assert!(word.is_match("/abc_9") && !word.is_match("/ü"));
        // A whole alternation is anchored, not its first branch.
        let alt = compiled("/a|/b").unwrap();
        assert!(alt.is_match("/b") && !alt.is_match("/x/b"));
    }

    #[test]
    fn header_patterns_match_anywhere_and_mind_case() {
        let mut patterns = Patterns::default();
        let re = patterns
            .header("beta|canary", &mut Budget::default())
            .unwrap();
        assert!(re.is_match_bytes(b"user-beta-7") && !re.is_match_bytes(b"BETA"));
        // The same source as a path is another pattern, cached apart.
        let path = patterns.get("beta|canary", &mut Budget::default()).unwrap();
        assert!(path.is_match("BETA/x") && !path.is_match("x/beta"));
        assert_eq!(patterns.len(), 2);
    }

    #[test]
    fn a_pattern_too_large_compiled_is_refused() {
        // Unicode \w sixty times was 10 MB compiled; ASCII, it is small.
        assert!(compiled(r"/r1/\w{60}").is_ok());
        let err = compiled(r"/r1/(\w{60}){1000}").unwrap_err();
        assert!(err.contains("more than 256 KiB"), "{err}");
        assert!(compiled(&"a".repeat(MAX_SOURCE + 1)).is_err());
        assert!(
            compiled("/broken(")
                .unwrap_err()
                .contains("not a regular expression")
        );
    }

    #[test]
    fn an_ingress_has_a_budget_for_all_its_patterns() {
        let mut patterns = Patterns::default();
        let mut budget = Budget::default();
        let mut taken = 0;
        for i in 0..1000 {
            match patterns.get(&format!(r"/r{i}/\w{{60}}"), &mut budget) {
                Ok(_) => taken += 1,
                Err(e) => {
                    assert!(e.contains("split them"), "{e}");
                    break;
                }
            }
        }
        assert!((10..1000).contains(&taken), "{taken} patterns taken");
        // Another Ingress has a budget of its own.
        assert!(patterns.get(r"/other/\w+", &mut Budget::default()).is_ok());
    }

    #[test]
    fn each_pattern_is_compiled_once_while_it_is_used() {
        let mut patterns = Patterns::default();
        let a = patterns.get("/a.*", &mut Budget::default()).unwrap();
        let again = patterns.get("/a.*", &mut Budget::default()).unwrap();
        assert!(Arc::ptr_eq(&a.re, &again.re), "compiled once");
        patterns.get("/b.*", &mut Budget::default()).unwrap();
        patterns.keep_used();
        assert_eq!(patterns.len(), 2);
        // Only /a.* asked for since: /b.* is forgotten.
        patterns.get("/a.*", &mut Budget::default()).unwrap();
        patterns.keep_used();
        assert_eq!(patterns.len(), 1);
    }
}
