//! kube-proxy running beside `ingressd` on one node (a migration, or a
//! mistake): found once at start and reported with who serves what, since
//! both would answer for the same Services.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

/// kube-proxy's metrics port answers `/proxyMode` on the node's loopback.
const KUBE_PROXY_METRICS: &str = "127.0.0.1:10249";

/// How kube-proxy showed itself, if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Its metrics server named its mode (`iptables`, `ipvs`, `nftables`).
    Running(String),
    /// Its rules are in the kernel (`iptables` or `nftables`), whether or
    /// not it still runs.
    Rules(&'static str),
}

/// Asks kube-proxy's metrics server, then looks for its rules with the
/// tools this machine has (absent tools: not looked for).
pub fn detect() -> Option<Found> {
    if let Some(mode) = proxy_mode() {
        return Some(Found::Running(mode));
    }
    if command_output("iptables-save", &["-t", "nat"]).is_some_and(|o| o.contains(":KUBE-SERVICES"))
    {
        return Some(Found::Rules("iptables"));
    }
    if command_output("nft", &["list", "table", "ip", "kube-proxy"]).is_some() {
        return Some(Found::Rules("nftables"));
    }
    None
}

fn proxy_mode() -> Option<String> {
    let addr: SocketAddr = KUBE_PROXY_METRICS.parse().ok()?;
    let timeout = Duration::from_millis(300);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /proxyMode HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    // At most a small answer: whatever listens there is not trusted.
    let _ = s.take(4096).read_to_end(&mut buf);
    parse_proxy_mode(&String::from_utf8_lossy(&buf))
}

/// The mode in a `/proxyMode` answer: a 200 whose body is one short word.
fn parse_proxy_mode(answer: &str) -> Option<String> {
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let mode = body.trim();
    (!mode.is_empty() && mode.len() <= 16 && mode.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| mode.to_string())
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The one report of what each proxy serves.
pub fn report(found: &Found, socket_lb: bool) {
    let how = match found {
        Found::Running(mode) => format!("kube-proxy runs on this node ({mode} mode)"),
        Found::Rules(kind) => format!("kube-proxy's {kind} rules are on this node"),
    };
    let sockets = if socket_lb {
        "connections from this node and its pods to cluster IPs and every other frontend are sent to an endpoint at connect() by ingressd, before kube-proxy's rules see them"
    } else {
        "cluster IPs are kube-proxy's (--socket-lb=false)"
    };
    tracing::warn!(
        "{how}: packets arriving on --interface for NodePorts, LoadBalancer IPs and externalIPs are served by ingressd's XDP program before kube-proxy's rules see them; {sockets}; kube-proxy still serves what ingressd does not (IPv6, SCTP, traffic arriving on other interfaces). Remove kube-proxy (and its rules: kube-proxy --cleanup) once ingressd serves this node"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_mode_answers_are_read_strictly() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\niptables";
        assert_eq!(parse_proxy_mode(ok), Some("iptables".into()));
        assert_eq!(
            parse_proxy_mode("HTTP/1.1 404 Not Found\r\n\r\nnftables"),
            None
        );
        let odd = "HTTP/1.1 200 OK\r\n\r\n<html>not a mode</html>";
        assert_eq!(parse_proxy_mode(odd), None);
        assert_eq!(parse_proxy_mode("garbage"), None);
    }
}
