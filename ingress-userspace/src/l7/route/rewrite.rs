//! `rewrite-target`, as nginx's `rewrite … break`: the path a request
//! goes upstream with, built from the pattern's captures.
use super::{Route, pattern::Groups};
use crate::l7::path::{NormalPath, escape, resolve_within};

/// The path and query sent upstream for `rewrite-target`: as nginx's
/// `rewrite`, the whole path becomes the target, `$1`… filled from the
/// pattern's captures on the normalised path, and the request's query
/// follows (after `&` when the target has a query of its own). Captures
/// are escaped again for the wire (`?`, `#`, `%`, spaces; `&`, `=`, `+`
/// also in the query), and dot segments they make are resolved, as long as
/// the result stays under the target's fixed part: `Err` when it would
/// climb out (`/static/$1` with `$1` = `..`). `None`: no rewrite.
pub fn rewrite_path(
    route: &Route,
    path: &NormalPath<'_>,
    query: Option<&str>,
) -> Option<Result<String, RewriteEscapes>> {
    let target = route.policy.rewrite_target.as_deref()?;
    let re = route.rewrite.as_ref()?;
    let caps = re.captures(path.as_str())?;
    let (target_path, target_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = expand(target_path, &caps, |c| escape(c).into_owned());
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if has_dot_segment(&out) {
        let fixed = &target_path[..target_path.find('$').unwrap_or(target_path.len())];
        match resolve_within(&out, fixed) {
            Some(resolved) => out = resolved,
            None => return Some(Err(RewriteEscapes)),
        }
    }
    if let Some(tq) = target_query {
        out.push('?');
        out.push_str(&expand(tq, &caps, escape_query));
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(q);
    }
    Some(Ok(out))
}

/// A rewrite whose captures would take the path out of its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteEscapes;

/// `target` with `$1`, `${1}`, `$name` and `${name}` replaced by the
/// captures, each passed through `escape`. As nginx reads it, a number
/// ends at the digits (`$1abc` is capture 1, then `abc`); an unknown
/// capture is empty.
fn expand(target: &str, caps: &Groups<'_>, escape: impl Fn(&[u8]) -> String) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    let mut rest = target;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else if after.starts_with(|c: char| c.is_ascii_digit()) {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], end)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if used == 0 {
            out.push('$');
            rest = after;
            continue;
        }
        let group = match name.parse::<usize>() {
            Ok(i) => caps.get(i),
            Err(_) => caps.name(name),
        };
        if let Some(g) = group {
            out.push_str(&escape(g));
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// A capture in the query: escaped as a path is, and so that it cannot
/// add parameters of its own (`&`, `=`, `+`, `;`).
fn escape_query(capture: &[u8]) -> String {
    let escaped = escape(capture);
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        match c {
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            '+' => out.push_str("%2B"),
            ';' => out.push_str("%3B"),
            c => out.push(c),
        }
    }
    out
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}
