//! What an HTTPRoute rule does to a request it matched, before and
//! apart from the forwarding every route shares: its redirect, its
//! rewritten path, the draw that picks a weighted backend.
use hyper::{
    Response,
    header::{self, HeaderValue},
    http::uri::PathAndQuery,
};

use crate::l7::{
    body::{Body, text},
    error::ProxyError,
    path::NormalPath,
    route::{
        gateway::rules::{PathRewrite, Redirect},
        normalize_host,
    },
};

/// A RequestRedirect's answer. Unset parts are the request's: its
/// scheme, host and path (the matched prefix replaced when the filter
/// says so), and its query. The port is the filter's, else the scheme's
/// well-known one when the filter sets a scheme, else the listener's;
/// left out of `Location` when it is the scheme's default.
pub(super) fn redirect(
    r: &Redirect,
    target: &PathAndQuery,
    path: &NormalPath<'_>,
    matched: usize,
    host: Option<&str>,
    tls: bool,
    listener_port: u16,
) -> Response<Body> {
    let scheme = r
        .scheme
        .as_deref()
        .unwrap_or(if tls { "https" } else { "http" });
    let host = r
        .hostname
        .clone()
        .or_else(|| host.and_then(normalize_host))
        .unwrap_or_default();
    let port = r.port.unwrap_or(match (&r.scheme, scheme) {
        (Some(_), "https") => 443,
        (Some(_), _) => 80,
        (None, _) => listener_port,
    });
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &r.path {
        Some(p) => p.apply(path.as_str(), matched),
        None => target.path().to_string(),
    };
    let query = target.query().map(|q| format!("?{q}")).unwrap_or_default();
    // An IPv6 literal as a Location host needs its brackets.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let location = if default_port {
        format!("{scheme}://{host}{path}{query}")
    } else {
        format!("{scheme}://{host}:{port}{path}{query}")
    };
    let mut resp = text(r.status, "");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A URLRewrite's path and the request's query, as the endpoint gets
/// them.
pub(super) fn rewritten(
    rewrite: &PathRewrite,
    target: &PathAndQuery,
    path: &NormalPath<'_>,
    matched: usize,
) -> Result<PathAndQuery, ProxyError> {
    let mut new = rewrite.apply(path.as_str(), matched);
    if let Some(q) = target.query() {
        new.push('?');
        new.push_str(q);
    }
    new.parse().map_err(|_| ProxyError::InvalidRewrite)
}

/// A uniform draw for a weighted pick.
pub(super) fn draw() -> u32 {
    (super::forwarding::random_u64() >> 32) as u32
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;
    use crate::l7::path::normalize;

    fn location(r: &Redirect, target: &str, matched: usize, host: &str, tls: bool) -> String {
        let pq: PathAndQuery = target.parse().unwrap();
        let path = normalize(pq.path()).unwrap();
        let resp = redirect(r, &pq, &path, matched, Some(host), tls, 8080);
        assert_eq!(resp.status(), r.status);
        resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string()
    }

    fn redirect_to(scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            hostname: hostname.map(str::to_string),
            port,
            path: None,
            status: StatusCode::MOVED_PERMANENTLY,
        }
    }

    #[test]
    fn redirects_keep_what_the_filter_leaves_unset() {
        // Only a hostname: the listener's port, the request's path and query.
        let r = redirect_to(None, Some("example.org"), None);
        assert_eq!(
            location(&r, "/a/b?x=1", 0, "foo.example.com:8080", false),
            "http://example.org:8080/a/b?x=1"
        );
        // A scheme: its well-known port, left out.
        let r = redirect_to(Some("https"), None, None);
        assert_eq!(
            location(&r, "/a", 0, "foo.example.com", false),
            "https://foo.example.com/a"
        );
        // A port that is the scheme's default is left out; another is not.
        let r = redirect_to(Some("http"), None, Some(80));
        assert_eq!(location(&r, "/", 0, "h", true), "http://h/");
        let r = redirect_to(None, None, Some(8443));
        assert_eq!(location(&r, "/", 0, "h", true), "https://h:8443/");
        // The matched prefix replaced.
        let mut r = redirect_to(None, None, Some(80));
        r.path = Some(PathRewrite::Prefix("/new".into()));
        assert_eq!(location(&r, "/old/x?q", 4, "h", false), "http://h/new/x?q");
        r.path = Some(PathRewrite::Full("/whole".into()));
        assert_eq!(location(&r, "/old/x", 4, "h", false), "http://h/whole");
    }

    #[test]
    fn rewrites_keep_the_query() {
        let pq: PathAndQuery = "/api/v1/x?y=2".parse().unwrap();
        let path = normalize(pq.path()).unwrap();
        let to = rewritten(&PathRewrite::Prefix("/".into()), &pq, &path, 4).unwrap();
        assert_eq!(to.as_str(), "/v1/x?y=2");
        let to = rewritten(&PathRewrite::Full("/z".into()), &pq, &path, 4).unwrap();
        assert_eq!(to.as_str(), "/z?y=2");
    }
}
