//! What an Ingress's annotations answer without an endpoint: 403 outside
//! the allowed source ranges, redirects (permanent, temporal, app-root,
//! to HTTPS), and 502 for a backend protocol that is not offered.
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
    http::uri::PathAndQuery,
};

use super::trust::Origin;
use crate::l7::{
    body::{Body, text},
    error::ProxyError,
    path::NormalPath,
    route::{Route, normalize_host},
};

/// `denylist-source-range` and `allowlist-source-range`: 403 to a client
/// inside the one or outside the other. First of all the
/// route's answers (a CORS preflight included).
pub(super) fn check_source(route: &Route, origin: Origin) -> Result<(), ProxyError> {
    let (allow, deny) = (&route.policy.allow, &route.policy.deny);
    // nginx's allow/deny see the client realip found, not the peer.
    if deny.iter().any(|c| c.contains(origin.client))
        || (!allow.is_empty() && !allow.iter().any(|c| c.contains(origin.client)))
    {
        return Err(ProxyError::Forbidden);
    }
    Ok(())
}

/// The answer the route gives itself, if any. Not async, so the request's
/// future holds the forwarding phases' directly.
pub(super) fn answer_here(
    target: &PathAndQuery,
    path: &NormalPath<'_>,
    route: &Route,
    origin: Origin,
    host: Option<&str>,
) -> Result<Option<Response<Body>>, ProxyError> {
    let policy = &route.policy;
    if let Some((to, code)) = &policy.redirect {
        // The nginx variables such redirects use.
        let scheme = if origin.https { "https" } else { "http" };
        return Ok(Some(redirect(
            *code,
            &to.replace("$request_uri", target.as_str())
                .replace("$scheme", scheme),
        )));
    }
    if let Some(protocol) = &policy.unsupported_backend {
        tracing::debug!(%protocol, "backend-protocol not supported");
        return Err(ProxyError::UnsupportedBackend);
    }
    if let Some(Err(why)) = &route.backend_tls {
        tracing::debug!(%why, "no TLS to the endpoints");
        return Err(ProxyError::UnsupportedBackend);
    }
    if route.ssl_redirect && !origin.https {
        return Ok(Some(redirect_to_https(target.as_str(), host)));
    }
    if let Some(root) = &policy.app_root
        && path.as_str() == "/"
    {
        return Ok(Some(redirect(StatusCode::FOUND, root)));
    }
    Ok(None)
}

fn redirect(code: StatusCode, to: &str) -> Response<Body> {
    let mut resp = text(code, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_to_https(pq: &str, host: Option<&str>) -> Response<Body> {
    let host = host.and_then(normalize_host).unwrap_or_default();
    let mut resp = text(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
