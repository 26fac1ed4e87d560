//! `auth-url` at run time, as ingress-nginx's `auth_request` asks: before
//! the request goes on, a request without its body goes to the auth URL
//! with the client's headers and nginx's `X-Original-*` ones; a 2xx lets
//! it through (the `auth-response-headers` replacing any the client sent
//! under those names), a 401 is answered 401 (or redirected to
//! `auth-signin`), a 403 is answered 403, and anything else, an
//! unreachable service included, 500. One connection per check, closed
//! after it, as nginx's without `auth-keepalive`.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Request, Response, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;

use super::{forwarding::Fields, trust::Origin};
use crate::l7::{
    body::{Body, text},
    http1::tokens::is_hop_by_hop,
    route::{
        annotations::ext_auth::{ExternalAuth, Var},
        backend_tls::unverified,
        normalize_host,
    },
};

/// What the auth service said.
pub(super) enum Decision {
    /// Through, with these headers set (or removed, when the auth answer
    /// had none) on the request to the endpoints.
    Allow(Vec<(HeaderName, Option<HeaderValue>)>),
    /// Answered here.
    Answer(Response<Body>),
}

/// The request being checked.
pub(super) struct Asked<'a> {
    pub method: &'a hyper::Method,
    pub target: &'a str,
    pub host: Option<&'a str>,
    pub origin: Origin,
}

/// `$escaped_request_uri`: everything but unreserved characters encoded.
fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn variable(asked: &Asked<'_>, v: Var) -> String {
    match v {
        // A host name or nothing: a Host with other characters must not
        // reshape the URL it is put in (the check then fails: 500).
        Var::Host => asked
            .host
            .and_then(normalize_host)
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            })
            .unwrap_or_default(),
        Var::Scheme => scheme(asked).into(),
        Var::RequestUri => asked.target.to_string(),
        Var::EscapedRequestUri => escaped(asked.target),
        Var::RemoteAddr => asked.origin.client.to_string(),
    }
}

fn scheme(asked: &Asked<'_>) -> &'static str {
    if asked.origin.https { "https" } else { "http" }
}

/// Asks the auth service about a request with these header fields.
pub(super) async fn check(
    auth: &ExternalAuth,
    asked: Asked<'_>,
    fields: &impl Fields,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Decision {
    if auth.is_broken() {
        return Decision::Answer(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "auth not available\n",
        ));
    }
    let url = auth.url.render(|v| variable(&asked, v));
    let status_and_headers = tokio::time::timeout(
        connect_timeout + read_timeout,
        ask(auth, &url, &asked, fields, connect_timeout),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let (status, headers) = match status_and_headers {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%url, error = %e, "auth request failed");
            return Decision::Answer(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "auth not available\n",
            ));
        }
    };
    match status {
        s if s.is_success() => Decision::Allow(
            auth.response_headers
                .iter()
                .map(|n| (n.clone(), headers.get(n).cloned()))
                .collect(),
        ),
        StatusCode::UNAUTHORIZED => {
            if let Some(signin) = &auth.signin {
                let mut to = signin.render(|v| variable(&asked, v));
                let original = format!(
                    "{}://{}{}",
                    scheme(&asked),
                    asked.host.unwrap_or_default(),
                    asked.target
                );
                to.push(if to.contains('?') { '&' } else { '?' });
                to.push_str(&format!("{}={}", auth.signin_param, escaped(&original)));
                if let Ok(loc) = HeaderValue::from_str(&to) {
                    let mut r = text(StatusCode::FOUND, "");
                    r.headers_mut().insert(header::LOCATION, loc);
                    return Decision::Answer(r);
                }
            }
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            for v in headers.get_all(header::WWW_AUTHENTICATE) {
                r.headers_mut().append(header::WWW_AUTHENTICATE, v.clone());
            }
            Decision::Answer(r)
        }
        StatusCode::FORBIDDEN => Decision::Answer(text(StatusCode::FORBIDDEN, "forbidden\n")),
        other => {
            tracing::warn!(%url, status = other.as_u16(), "auth request answered neither 2xx, 401 nor 403");
            Decision::Answer(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "auth not available\n",
            ))
        }
    }
}

/// The exchange with the auth service: its status and headers.
async fn ask(
    auth: &ExternalAuth,
    url: &str,
    asked: &Asked<'_>,
    fields: &impl Fields,
    connect_timeout: Duration,
) -> Result<(StatusCode, hyper::HeaderMap), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let authority = uri.authority().ok_or("no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::time::timeout(connect_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "name lookup timed out".to_string())?
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?,
    };
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut req = Request::builder()
        .method(auth.method.clone())
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
    // The client's headers, without its body's or the connection's.
    let mut headers = hyper::HeaderMap::new();
    fields.each(|n, v| {
        let Ok(name) = HeaderName::from_bytes(n) else {
            return;
        };
        if is_hop_by_hop(&name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            return;
        }
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(name, v);
        }
    });
    let set = |h: &mut hyper::HeaderMap, n: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(n), v);
        }
    };
    let original_url = format!(
        "{}://{}{}",
        scheme(asked),
        asked.host.unwrap_or_default(),
        asked.target
    );
    set(&mut headers, "x-original-uri", asked.target.to_string());
    set(&mut headers, "x-scheme", scheme(asked).to_string());
    set(&mut headers, "x-original-url", original_url);
    set(&mut headers, "x-original-method", asked.method.to_string());
    set(
        &mut headers,
        "x-sent-from",
        "nginx-ingress-controller".into(),
    );
    set(&mut headers, "x-real-ip", asked.origin.client.to_string());
    set(
        &mut headers,
        "x-forwarded-for",
        asked.origin.client.to_string(),
    );
    set(
        &mut headers,
        "x-auth-request-redirect",
        auth.request_redirect
            .clone()
            .unwrap_or_else(|| asked.target.to_string()),
    );
    set(&mut headers, "host", authority.as_str().to_string());
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(h) = req.headers_mut() {
        *h = headers;
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(unverified());
        let s = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(s), req).await?
    } else {
        exchange(TokioIo::new(stream), req).await?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    // The body is not used; read a little of it so the server is not cut
    // off mid-write, never more.
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        let mut body = resp.into_body();
        let mut n = 0usize;
        while let Some(Ok(f)) = body.frame().await {
            n += f.data_ref().map_or(0, Bytes::len);
            if n > 64 * 1024 {
                break;
            }
        }
    })
    .await;
    Ok((status, headers))
}

async fn exchange<I>(
    io: I,
    req: Request<Empty<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_request_uri_as_nginx() {
        assert_eq!(escaped("/cart?x=1&y=a b"), "%2Fcart%3Fx%3D1%26y%3Da%20b");
    }
}
