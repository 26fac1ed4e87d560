//! Helpers the loopback test binaries share.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::{Response, body::Incoming};

/// An address ingressd logged as `name=ADDR` (it binds port 0 in tests and
/// says what it got).
pub fn logged_addr(log: &str, name: &str) -> Option<SocketAddr> {
    let text = || {
        log.split(&format!("{name}="))
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .parse()
            .ok()
    };
    // `--log-format json`: "name":"addr".
    let json = || {
        log.split(&format!("\"{name}\":\""))
            .nth(1)?
            .split('"')
            .next()?
            .parse()
            .ok()
    };
    text().or_else(json)
}

/// A response's status and whole body (lossy UTF-8).
pub async fn status_and_body(resp: Response<Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Checks `cond` every 20 ms until it holds or `within` has passed;
/// whether it held. Meant for `assert!(eventually(..).await, "what")`.
pub async fn eventually(within: std::time::Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
