//! Timeouts and limits of the proxy (flags of `ingressd run`).
use std::time::Duration;

use hyper::StatusCode;

#[derive(Clone, Debug)]
pub struct Limits {
    pub upstream_connect_timeout: Duration,
    /// From request sent to response headers received.
    pub upstream_response_timeout: Duration,
    /// How long an endpoint may take none of a request body the client
    /// is sending (nginx's proxy_send_timeout).
    pub upstream_send_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub idle_keepalive: Duration,
    /// A client must send a whole request head within this (408 after it);
    /// also how long a response write may wait for the client to read
    /// (nginx's send_timeout).
    pub client_header_timeout: Duration,
    /// How long an idle client connection stays open between requests;
    /// zero: closed after each response.
    pub client_keepalive: Duration,
    /// A client sending a request body must not pause longer (408 after).
    pub client_body_timeout: Duration,
    /// Request head size (431 above it).
    pub max_header_bytes: usize,
    /// Request header count (431 above it).
    pub max_headers: usize,
    /// Request body size (413 above it); 0 for no limit.
    pub max_body_bytes: u64,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// For a request over `limit-rps`/`limit-rpm` (nginx's limit_req_status).
    pub limit_req_status: StatusCode,
    /// For a request over `limit-connections` (nginx's limit_conn_status).
    pub limit_conn_status: StatusCode,
}

impl Default for Limits {
    /// ingress-nginx's defaults where it has them (client_header_timeout
    /// 60 s, proxy-body-size 1m, 4 × 8k header buffers).
    fn default() -> Self {
        Self {
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_send_timeout: Duration::from_secs(60),
            idle_keepalive: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(60),
            client_keepalive: Duration::from_secs(75),
            client_body_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_connections: 16_384,
            limit_req_status: StatusCode::SERVICE_UNAVAILABLE,
            limit_conn_status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}
