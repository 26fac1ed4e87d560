//! `auth-url` at run time, as ingress-nginx's `auth_request` asks: before
//! the request goes on, a request without its body goes to the auth URL
//! with the client's headers and nginx's `X-Original-*` ones; a 2xx lets
//! it through (the `auth-response-headers` replacing any the client sent
//! under those names), a 401 is answered 401 (or redirected to
//! `auth-signin`), a 403 is answered 403, and anything else, an
//! unreachable service included, 500. One connection per check, closed
//! after it, as nginx's without `auth-keepalive`.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper::{
    Request, Response, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use rustls::pki_types::ServerName;

use super::{
    forwarding::{Fields, percent_encoded},
    hash_by,
    trust::Origin,
};
use crate::l7::{
    body::{Body, text},
    http1::tokens::is_hop_by_hop,
    route::{
        annotations::ext_auth::{ExternalAuth, Var},
        backend_tls::{BackendTls, unverified},
        normalize_host,
    },
    upstream::{Timeouts, body::ReqBody, connect_h1},
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
    /// The path in normal form (`$uri` of a cache key).
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub origin: Origin,
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
        Var::EscapedRequestUri => percent_encoded(asked.target),
        Var::RemoteAddr => asked.origin.client.to_string(),
    }
}

fn scheme(asked: &Asked<'_>) -> &'static str {
    if asked.origin.https { "https" } else { "http" }
}

fn original_url(asked: &Asked<'_>) -> String {
    format!(
        "{}://{}{}",
        scheme(asked),
        asked.host.unwrap_or_default(),
        asked.target
    )
}

fn unavailable() -> Decision {
    Decision::Answer(text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "auth not available\n",
    ))
}

/// Auth answers remembered for `auth-cache-key`: by URL and key, at most
/// `REMEMBERED` (then the expired ones go, or all).
#[derive(Default)]
pub(super) struct Cache {
    answers: Mutex<HashMap<Vec<u8>, (Instant, StatusCode, hyper::HeaderMap)>>,
}

const REMEMBERED: usize = 16_384;

impl Cache {
    fn get(&self, key: &[u8]) -> Option<(StatusCode, hyper::HeaderMap)> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let (until, status, headers) = answers.get(key)?;
        (Instant::now() < *until).then(|| (*status, headers.clone()))
    }

    fn put(&self, key: Vec<u8>, ttl: Duration, status: StatusCode, headers: &hyper::HeaderMap) {
        let now = Instant::now();
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() >= REMEMBERED {
            answers.retain(|_, (until, _, _)| now < *until);
            if answers.len() >= REMEMBERED {
                answers.clear();
            }
        }
        answers.insert(key, (now + ttl, status, headers.clone()));
    }
}

/// Asks the auth service about a request with these header fields,
/// within the route's connect and read timeouts (or takes the answer
/// `cache` remembers for it).
pub(super) async fn check(
    auth: &ExternalAuth,
    asked: Asked<'_>,
    fields: &impl Fields,
    t: Timeouts,
    cache: &Cache,
) -> Decision {
    if auth.is_broken() {
        return unavailable();
    }
    let url = auth.url.render(|v| variable(&asked, v));
    let key = auth.cache.as_ref().map(|c| {
        let req = hash_by::Request {
            target: asked.target,
            path: asked.path,
            host: asked.host,
            client: asked.origin.client,
        };
        let mut k = url.as_bytes().to_vec();
        k.push(0);
        k.extend(hash_by::key(&c.key, &req, fields));
        (c, k)
    });
    let remembered = key.as_ref().and_then(|(_, k)| cache.get(k));
    let (status, headers) = match remembered {
        Some(answer) => answer,
        None => {
            let answer =
                tokio::time::timeout(t.connect + t.read, ask(auth, &url, &asked, fields, t))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
            match answer {
                Ok((status, headers)) => {
                    if let Some((c, k)) = key
                        && c.codes.contains(&status.as_u16())
                    {
                        cache.put(k, c.ttl, status, &headers);
                    }
                    (status, headers)
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "auth request failed");
                    return unavailable();
                }
            }
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
                to.push(if to.contains('?') { '&' } else { '?' });
                to.push_str(&format!(
                    "{}={}",
                    auth.signin_param,
                    percent_encoded(&original_url(&asked))
                ));
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
            unavailable()
        }
    }
}

/// The exchange with the auth service: its status and headers.
async fn ask(
    auth: &ExternalAuth,
    url: &str,
    asked: &Asked<'_>,
    fields: &impl Fields,
    t: Timeouts,
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
        Err(_) => tokio::time::timeout(t.connect, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "name lookup timed out".to_string())?
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?,
    };
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
    let mut set = |n: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(HeaderName::from_static(n), v);
        }
    };
    set("x-original-uri", asked.target.to_string());
    set("x-scheme", scheme(asked).to_string());
    set("x-original-url", original_url(asked));
    set("x-original-method", asked.method.to_string());
    set("x-sent-from", "nginx-ingress-controller".into());
    set("x-real-ip", asked.origin.client.to_string());
    set("x-forwarded-for", asked.origin.client.to_string());
    set(
        "x-auth-request-redirect",
        auth.request_redirect
            .clone()
            .unwrap_or_else(|| asked.target.to_string()),
    );
    set("host", authority.as_str().to_string());
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut req = Request::builder()
        .method(auth.method.clone())
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .body(ReqBody::default())
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = headers;
    // An https URL: not verified, as nginx's proxy_pass, but with SNI.
    let tls = if https {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        Some(BackendTls {
            id: 0,
            config: unverified(),
            name,
        })
    } else {
        None
    };
    let mut sender = connect_h1(addr, tls.as_ref(), t)
        .await
        .map_err(|e| e.to_string())?;
    // The body is not read: the connection closes with the answer.
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok((resp.status(), resp.headers().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_request_uri_as_nginx() {
        assert_eq!(
            percent_encoded("/cart?x=1&y=a b"),
            "%2Fcart%3Fx%3D1%26y%3Da%20b"
        );
    }
}
