//! The access log: one line per request (target `access`).
use std::{net::IpAddr, time::Duration};

use hyper::header::HeaderValue;

/// What a request's log line says.
pub(super) struct Line<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub ingress: &'a str,
    pub service: &'a str,
    pub client: IpAddr,
    pub request_id: Option<&'a HeaderValue>,
    pub error: Option<&'static str>,
    pub took: Duration,
}

pub(super) fn request(line: &Line<'_>) {
    tracing::info!(
        target: "access",
        method = %line.method,
        host = line.host.unwrap_or("-"),
        path = line.path,
        status = line.status,
        ingress = line.ingress,
        service = line.service,
        client = %line.client,
        request_id = line.request_id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
        error = line.error.unwrap_or("-"),
        ms = line.took.as_secs_f64() * 1e3,
        "request"
    );
}
