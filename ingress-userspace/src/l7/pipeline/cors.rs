//! CORS as ingress-nginx answers it for an Ingress with `enable-cors`: a
//! request from an allowed origin gets the `Access-Control-*` headers on
//! its answer (replacing the endpoint's own), and a preflight (`OPTIONS`)
//! from one is answered here with 204, never reaching the endpoint. A
//! request from another origin passes untouched, preflight included.
use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
};

use crate::l7::{
    body::{Body, text},
    route::annotations::cors::{Cors, Origins},
};

/// The `Access-Control-Allow-Origin` a request with this `Origin` gets, if
/// it gets CORS headers at all.
pub(super) fn allow_origin(cors: &Cors, origin: Option<&[u8]>) -> Option<HeaderValue> {
    match &cors.origins {
        // ingress-nginx's `*`: every request, with or without an Origin.
        Origins::Any => Some(HeaderValue::from_static("*")),
        Origins::List(patterns) => {
            let origin = origin?;
            if !patterns.iter().any(|p| p.matches(origin)) {
                return None;
            }
            HeaderValue::from_bytes(origin).ok()
        }
    }
}

/// Puts the CORS headers on an answer.
pub(super) fn decorate(cors: &Cors, allow: HeaderValue, h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, cors.methods.clone());
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, cors.headers.clone());
    match &cors.expose {
        Some(e) => h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()),
        None => h.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS),
    };
    h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
    if matches!(cors.origins, Origins::List(_)) {
        // The answer depends on the Origin: a shared cache must key on it
        // (ingress-nginx omits this).
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to a preflight from an allowed origin.
pub(super) fn preflight(cors: &Cors, allow: HeaderValue) -> Response<Body> {
    let mut resp = text(StatusCode::NO_CONTENT, "");
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain charset=UTF-8"),
    );
    decorate(cors, allow, resp.headers_mut());
    resp
}
