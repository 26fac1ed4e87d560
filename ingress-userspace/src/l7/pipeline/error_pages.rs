//! `custom-http-errors` at run time, as ingress-nginx's `error_page` to
//! its default backend: when an endpoint answers one of the listed codes,
//! its answer is dropped and the default backend is asked instead (a GET,
//! without the body, with the `X-Code`, `X-Format`, `X-Original-URI`,
//! `X-Namespace`, `X-Ingress-Name`, `X-Service-Name`, `X-Service-Port`
//! and `X-Request-ID` headers its error-page servers read); its answer,
//! status included, is the client's. One connection per answer, closed
//! after it. When the default backend cannot be asked, the endpoint's own
//! answer goes out: an error page is not worth a second failure.
use std::net::IpAddr;

use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};

use super::forwarding::random_u64;
use crate::l7::{
    body::Body,
    route::{Route, Upstream},
    upstream::{Timeouts, body::ReqBody, connect_h1, settled},
};

/// The request whose answer is replaced.
pub(super) struct Failed<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub host: Option<&'a str>,
    /// Its Accept header (`X-Format`).
    pub accept: Option<HeaderValue>,
    pub client: IpAddr,
}

/// Whether `route` replaces an answer of `status`, and by whom.
pub(super) fn backend_for(route: &Route, status: StatusCode) -> Option<&Upstream> {
    let backend = route.error_backend.as_deref()?;
    route
        .policy
        .custom_errors
        .contains(&status.as_u16())
        .then_some(backend)
}

/// The default backend's answer for `original`, or `original` itself when
/// the backend cannot be asked.
pub(super) async fn replace(
    backend: &Upstream,
    route: &Route,
    failed: Failed<'_>,
    original: Response<Body>,
    t: Timeouts,
) -> Response<Body> {
    match ask(backend, route, &failed, &original, t).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(backend = backend.name(), error = %e, "custom-http-errors: the default backend could not be asked; the endpoint's answer is sent");
            original
        }
    }
}

async fn ask(
    backend: &Upstream,
    route: &Route,
    failed: &Failed<'_>,
    original: &Response<Body>,
    t: Timeouts,
) -> Result<Response<Body>, String> {
    let addrs = tokio::time::timeout(t.connect, super::endpoints(backend))
        .await
        .map_err(|_| "name lookup timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let addr = addrs[(random_u64() % addrs.len() as u64) as usize];
    let (namespace, ingress) = route
        .ingress
        .split_once('/')
        .unwrap_or(("", &route.ingress));
    // The label is `namespace/service:port`.
    let (service, port) = route
        .service
        .split_once('/')
        .map_or(&*route.service, |(_, s)| s)
        .rsplit_once(':')
        .unwrap_or((&route.service, ""));
    let method = if *failed.method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut req = Request::builder()
        .method(method)
        .uri(failed.target)
        .body(ReqBody::default())
        .map_err(|e| e.to_string())?;
    let headers = req.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-code", original.status().as_str());
    set("x-original-uri", failed.target);
    set("x-namespace", namespace);
    set("x-ingress-name", ingress);
    set("x-service-name", service);
    set("x-service-port", port);
    set("x-forwarded-for", &failed.client.to_string());
    set("host", failed.host.unwrap_or_default());
    if let Some(id) = original.headers().get(super::X_REQUEST_ID) {
        headers.insert(super::X_REQUEST_ID, id.clone());
    }
    if let Some(accept) = &failed.accept {
        headers.insert(HeaderName::from_static("x-format"), accept.clone());
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut sender = connect_h1(addr, None, t).await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(t.read, sender.send_request(req))
        .await
        .map_err(|_| "no answer within the read timeout".to_string())?
        .map_err(|e| e.to_string())?;
    // Framing checked, hop-by-hop headers gone, the read timeout held, as
    // any endpoint's answer.
    let resp =
        settled(resp.map(|b| b.map_err(Into::into).boxed()), t.read).map_err(|e| e.to_string())?;
    let (mut parts, body) = resp.into_parts();
    if let Some(id) = original.headers().get(super::X_REQUEST_ID) {
        parts.headers.insert(super::X_REQUEST_ID, id.clone());
    }
    Ok(Response::from_parts(parts, body))
}
