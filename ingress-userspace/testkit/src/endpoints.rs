//! Scripted endpoints for the proxy's tests: an echo server that tells
//! what reached it, an endless streamer, a recorder of request lines, and
//! a raw client.
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The queries of the /slow requests the echo backends have begun on.
pub static SLOW_ARRIVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// An echo backend: answers `<name> <header values…>` for every request.
pub async fn echo(name: &'static str, addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind echo");
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| async move {
                    // "Upgrade: echo": switch protocols, then echo raw bytes.
                    if req.headers().contains_key("upgrade") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(io) = on.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("upgrade", "echo".parse().unwrap());
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        return Ok::<_, Infallible>(resp);
                    }
                    if req.uri().path() == "/slow" {
                        if let Some(q) = req.uri().query() {
                            SLOW_ARRIVED.lock().unwrap().push(q.to_string());
                        }
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let body = format!(
                        "{name} path={} host={} xff={} xfh={} xfproto={} xrealip={} rid={} cookie={} xoff={} xfport={} xfprefix={} proxy={} under={} via={} version={:?}\n",
                        req.uri().path(),
                        req.uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| h("host")),
                        h("x-forwarded-for"),
                        h("x-forwarded-host"),
                        h("x-forwarded-proto"),
                        h("x-real-ip"),
                        h("x-request-id"),
                        req.headers()
                            .get_all("cookie")
                            .iter()
                            .map(|v| v.to_str().unwrap_or("?"))
                            .collect::<Vec<_>>()
                            .join("|"),
                        h("x-original-forwarded-for"),
                        h("x-forwarded-port"),
                        h("x-forwarded-prefix"),
                        h("proxy"),
                        // Header names with an underscore, as they arrived.
                        {
                            let under: Vec<&str> = req
                                .headers()
                                .keys()
                                .map(|k| k.as_str())
                                .filter(|k| k.contains('_'))
                                .collect();
                            if under.is_empty() {
                                "-".to_string()
                            } else {
                                under.join(",")
                            }
                        },
                        h("via"),
                        req.version(),
                    );
                    // Read the whole request body first, as real servers do.
                    let got = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let body = body.replace('\n', &format!(" body={got}\n"));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    local
}

pub async fn exchange_raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// An endpoint whose every response is a body that never ends (8 KiB
/// pieces as fast as the proxy takes them, for at most a minute); tells
/// how many such responses the proxy has stopped taking (their connection
/// closed under them).
pub async fn streamer(ip: Ipv4Addr) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                let piece = format!("2000\r\n{}\r\n", "x".repeat(0x2000));
                let until = Instant::now() + Duration::from_secs(60);
                while Instant::now() < until {
                    if s.write_all(piece.as_bytes()).await.is_err() {
                        let _ = tx.send(());
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// An endpoint that notes every request head it is sent (raw), answers
/// 200 to each, and tells whether a body came whole.
pub async fn recorder(ip: Ipv4Addr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let noted = noted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let noted = noted.clone();
                    async move {
                        let line = format!("{} {}", req.method(), req.uri());
                        let whole = req.into_body().collect().await.is_ok();
                        noted.lock().unwrap().push(format!("{line} whole={whole}"));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}
