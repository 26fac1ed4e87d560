//! The request path as routing sees it, normalised as nginx normalises
//! `$uri` before it picks a location: every `%XX` decoded (`%2F` is a `/`
//! and `%2E` a `.` here, so `/%2Fadmin` and `/%2e%2e/admin` are `/admin`),
//! slashes merged, `.` and `..` segments resolved. Rules, source ranges and
//! rewrites all decide on this one form, so no spelling of a path reaches
//! a route other than the one its endpoint will serve.
//!
//! What goes to the endpoint is the target as the client sent it (nginx's
//! `proxy_pass` without a URI): an encoded slash stays `%2F` on the wire,
//! distinct from `/`, for applications that take it as data. A rewritten
//! path is built from the normal form and escaped again.
use std::borrow::Cow;

/// A path in normal form: starts with `/`, no empty, `.` or `..` segment,
/// nothing percent-encoded. Only [`normalize`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath<'a>(Cow<'a, str>);

impl NormalPath<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a path has no normal form: nginx answers each with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`: a NUL in the path.
    Nul,
    /// A `..` above the root (`/../etc/passwd`).
    AboveRoot,
    /// Not an absolute path.
    NotAbsolute,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::BadEscape => "a % not followed by two hex digits",
            PathError::Nul => "an encoded NUL",
            PathError::AboveRoot => "a .. above the root",
            PathError::NotAbsolute => "not an absolute path",
        })
    }
}

/// Whether the path may need work: an escape, two slashes in a row, or a
/// segment starting with a dot. Most paths have none and are borrowed.
fn maybe_unnormal(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || (prev == b'/' && (b == b'/' || b == b'.')) {
            return true;
        }
        prev = b;
    }
    false
}

/// The normal form of a request path (the part before `?`).
pub fn normalize(path: &str) -> Result<NormalPath<'_>, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !maybe_unnormal(raw) {
        return Ok(NormalPath(Cow::Borrowed(path)));
    }
    let decoded = decode(raw)?;
    let resolved = resolve(&decoded)?;
    Ok(NormalPath(Cow::Owned(match String::from_utf8(resolved) {
        Ok(s) => s,
        // Decoded bytes that are not UTF-8 match no Ingress path as
        // written; U+FFFD keeps them from matching one by accident.
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Every `%XX` decoded, once (`%252F` is `%2F`, not `/`).
fn decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = (hi << 4) | lo;
        if byte == 0 {
            return Err(PathError::Nul);
        }
        out.push(byte);
        i += 3;
    }
    Ok(out)
}

/// Slashes merged, `.` dropped, `..` takes the segment before it away; a
/// path that ended in a slash or a dot segment keeps its trailing slash.
fn resolve(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    // Where each kept segment starts in `out` (at its slash).
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing = false;
    for segment in path.split(|&b| b == b'/').skip(1) {
        trailing = true;
        match segment {
            b"" | b"." => {}
            b".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
            }
            s => {
                starts.push(out.len());
                out.push(b'/');
                out.extend_from_slice(s);
                trailing = false;
            }
        }
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// A path built by a rewrite, as it goes on the wire: what a URI path
/// cannot hold as it is (space, `%`, `?`, `#`, controls, non-ASCII) is
/// percent-encoded, as nginx escapes a rewritten `$uri`.
pub fn escape(path: &[u8]) -> Cow<'_, str> {
    let plain = |b: u8| b > 0x20 && b < 0x7f && !matches!(b, b'%' | b'?' | b'#');
    if path.iter().copied().all(plain)
        && let Ok(text) = std::str::from_utf8(path)
    {
        return Cow::Borrowed(text);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len() + 16);
    for &b in path {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    Cow::Owned(out)
}

/// A rewritten path with its dot segments resolved, if it stays under
/// `base` (the target's fixed part): a capture must not climb out of the
/// place the rewrite points to (`/static/$1` with `$1` = `../admin`).
pub fn resolve_within(path: &str, base: &str) -> Option<String> {
    let resolved = resolve(path.as_bytes()).ok()?;
    let resolved = String::from_utf8(resolved).ok()?;
    let base = base.trim_end_matches('/');
    let under = resolved == base
        || resolved
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/') || base.is_empty());
    under.then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path).map(|p| p.as_str().to_string())
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for p in ["/", "/a", "/a/b/", "/a.b/c", "/x-y_z~", "/.well"] {
            let got = normalize(p).unwrap();
            assert_eq!(got.as_str(), p);
        }
        assert!(matches!(normalize("/a/b").unwrap().0, Cow::Borrowed(_)));
    }

    #[test]
    fn every_spelling_of_a_path_has_one_normal_form() {
        for (raw, normal) in [
            ("/%61dmin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%2Fadmin", "/admin"),
            ("/%2fadmin", "/admin"),
            ("//secret", "/secret"),
            ("/a//b///c", "/a/b/c"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/..a/.b/", "/..a/.b/"),
            ("/%252F", "/%2F"),
            ("/a%20b", "/a b"),
            ("/a%3Fb", "/a?b"),
            ("/%C3%BC", "/ü"),
            ("/%FF", "/\u{FFFD}"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn paths_nginx_refuses_have_no_normal_form() {
        for (raw, err) in [
            ("/..", PathError::AboveRoot),
            ("/../etc/passwd", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/..%2Fx", PathError::AboveRoot),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00b", PathError::Nul),
            ("a", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ] {
            assert_eq!(n(raw), Err(err), "{raw}");
        }
    }

    #[test]
    fn rewritten_paths_are_escaped_for_the_wire() {
        assert_eq!(escape(b"/static/a"), "/static/a");
        assert_eq!(escape(b"/a b?c#d%e"), "/a%20b%3Fc%23d%25e");
        assert_eq!(escape("/ü".as_bytes()), "/%C3%BC");
        // A capture may end within a character: each byte stands alone.
        assert_eq!(escape(&"ü".as_bytes()[..1]), "%C3");
    }

    #[test]
    fn a_rewrite_does_not_climb_out_of_its_target() {
        assert_eq!(
            resolve_within("/static/a/./b", "/static/").as_deref(),
            Some("/static/a/b")
        );
        assert_eq!(
            resolve_within("/static", "/static").as_deref(),
            Some("/static")
        );
        assert_eq!(resolve_within("/static/../admin", "/static/"), None);
        assert_eq!(resolve_within("/staticx", "/static"), None);
        assert_eq!(resolve_within("/../x", "/"), None);
        assert_eq!(resolve_within("/a/../x", "/").as_deref(), Some("/x"));
    }
}
