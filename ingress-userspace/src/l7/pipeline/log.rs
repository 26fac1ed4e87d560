//! The access log: one line per request, in ingress-nginx's `upstreaminfo`
//! format (so the parsers people run on it keep working) or as JSON, once
//! its response has gone out (bytes sent and time taken are known then).
//!
//! Off the request path: a request hands a record of its fields (slices
//! of its head, no copies) to a thread of the log's own, which formats
//! and writes them, many lines per write under load and each line at once
//! when quiet. A log that cannot keep up loses lines, counted, rather than
//! holding requests up or growing without bound.
use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use hyper::{Method, Version, header::HeaderValue, http::uri::PathAndQuery};

use crate::l7::stats::LabelStats;

/// Records waiting for the writer, at most.
const QUEUE: usize = 16 * 1024;
/// Bytes formatted before a write, at most.
const BATCH: usize = 64 * 1024;

/// `--access-log`: where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// ingress-nginx's `upstreaminfo`.
    #[default]
    Text,
    Json,
}

/// What one line says. Header values are the request's own bytes.
pub struct Record {
    pub time: SystemTime,
    pub client: IpAddr,
    /// None for a head refused before it was read whole.
    pub method: Option<Method>,
    pub target: Option<PathAndQuery>,
    pub version: Version,
    pub status: u16,
    /// The request's Authorization header: `$remote_user` is its Basic
    /// user (decoded here, on the log's thread).
    pub authorization: Option<Bytes>,
    pub referer: Option<Bytes>,
    pub user_agent: Option<Bytes>,
    pub request_length: u64,
    /// `namespace/name` of the Ingress, and the upstream (`ns/svc:port`).
    pub ingress: Arc<str>,
    pub service: Arc<str>,
    /// The canary's upstream when the canary served (`service` is then
    /// the main route's), as `$proxy_alternative_upstream_name`.
    pub alternative: Option<Arc<str>>,
    /// The endpoint, its status and how long its head took.
    pub upstream: Option<(SocketAddr, u16, Duration)>,
    pub request_id: Option<HeaderValue>,
    pub error: Option<&'static str>,
    pub started: Instant,
    pub bytes_sent: u64,
    pub took: Duration,
}

/// The log's end on the request side.
pub struct AccessLog {
    queue: Option<Arc<Queue>>,
    dropped: AtomicU64,
}

/// Records waiting for the writer. A request only takes the lock to push
/// (no wake-up, no system call); the writer takes them all every `TICK`.
#[derive(Default)]
struct Queue {
    records: Mutex<Vec<Record>>,
}

/// How often the writer takes what waits: lines are at most this late.
const TICK: Duration = Duration::from_millis(20);

impl AccessLog {
    pub fn off() -> Arc<Self> {
        Arc::new(Self {
            queue: None,
            dropped: AtomicU64::new(0),
        })
    }

    /// Opens the destination and starts the writer thread.
    pub fn open(to: &Destination, format: Format) -> std::io::Result<Arc<Self>> {
        let out: Box<dyn std::io::Write + Send> = match to {
            Destination::Off => return Ok(Self::off()),
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let queue = Arc::new(Queue::default());
        let taken = Arc::downgrade(&queue);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&taken, out, format))?;
        Ok(Arc::new(Self {
            queue: Some(queue),
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    fn send(&self, record: Record) {
        let Some(q) = &self.queue else { return };
        let mut records = q.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() < QUEUE {
            records.push(record);
        } else {
            drop(records);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost because the log could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A request's line and byte count, until its response has gone out: the
/// server counts what it sends, and the line goes when this is dropped.
pub struct Pending {
    stats: Arc<LabelStats>,
    record: Option<Box<Record>>,
    log: Arc<AccessLog>,
    /// A `limit-connections` slot, freed with the response.
    slot: Option<super::throttle::Slot>,
}

impl Pending {
    pub(in crate::l7) fn new(
        stats: Arc<LabelStats>,
        record: Option<Record>,
        log: Arc<AccessLog>,
    ) -> Self {
        Self {
            stats,
            record: record.map(Box::new),
            log,
            slot: None,
        }
    }

    /// Keeps the request's `limit-connections` slot until the response
    /// has gone out.
    pub(in crate::l7) fn hold(&mut self, slot: Option<super::throttle::Slot>) {
        self.slot = slot;
    }

    /// Body bytes sent to the client.
    pub fn sent(&mut self, n: usize) {
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(r) = &mut self.record {
            r.bytes_sent += n as u64;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.took = r.started.elapsed();
            self.log.send(*r);
        }
    }
}

/// The writer: every `TICK`, what waits is formatted and written in one
/// go, until the log is gone.
fn write_lines(
    queue: &std::sync::Weak<Queue>,
    mut out: Box<dyn std::io::Write + Send>,
    format: Format,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut clock = TimeText::default();
    let mut taken = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let Some(q) = queue.upgrade() else { return };
        std::mem::swap(
            &mut *q.records.lock().unwrap_or_else(|e| e.into_inner()),
            &mut taken,
        );
        drop(q);
        for r in taken.drain(..) {
            line(&mut buf, &r, format, &mut clock);
            if buf.len() >= BATCH {
                // Nowhere to write: lines are lost, requests go on.
                let _ = out.write_all(&buf);
                buf.clear();
            }
        }
        if !buf.is_empty() {
            let _ = out.write_all(&buf).and_then(|()| out.flush());
            buf.clear();
        }
    }
}

/// `[02/Dec/2026:13:04:05 +0000]`-style local time (UTC), made once a second.
#[derive(Default)]
struct TimeText {
    secs: u64,
    text: String,
    iso: String,
}

impl TimeText {
    fn at(&mut self, t: SystemTime) -> (&str, &str) {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            let (y, mo, d) = civil(secs / 86_400);
            let (h, mi, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let month = MONTHS[(mo - 1) as usize];
            self.text = format!("{d:02}/{month}/{y}:{h:02}:{mi:02}:{s:02} +0000");
            self.iso = format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00");
        }
        (&self.text, &self.iso)
    }
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's algorithm).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A value as nginx logs it: `"`, `\`, controls and non-ASCII as `\xHH`,
/// so a client cannot forge lines or fields.
fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in v {
        if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\' {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

/// A JSON string's contents (bytes that are not UTF-8 as U+FFFD).
fn json_escaped(out: &mut Vec<u8>, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// ingress-nginx's `$proxy_upstream_name`: `namespace-service-port`, and
/// `upstream-default-backend` for the built-in one.
fn upstream_name(out: &mut Vec<u8>, service: &str) {
    if service == "default-backend" {
        out.extend_from_slice(b"upstream-default-backend");
        return;
    }
    out.extend(
        service
            .bytes()
            .map(|b| if b == b'/' || b == b':' { b'-' } else { b }),
    );
}

/// A number in decimal, without the formatting machinery (a line has a
/// dozen, and the writer makes tens of thousands of lines a second).
fn num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                num(out, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn socket(out: &mut Vec<u8>, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push(b'[');
        ip(out, addr.ip());
        out.push(b']');
    } else {
        ip(out, addr.ip());
    }
    out.push(b':');
    num(out, u64::from(addr.port()));
}

/// Seconds with milliseconds, as nginx writes `$request_time`.
fn secs(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs());
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// nginx's `$remote_user`: the user of Basic credentials, whatever the
/// route's authentication.
fn remote_user(r: &Record) -> Option<String> {
    r.authorization
        .as_deref()
        .and_then(super::user_auth::basic)
        .map(|(user, _)| user)
}

fn line(out: &mut Vec<u8>, r: &Record, format: Format, clock: &mut TimeText) {
    let (local, iso) = clock.at(r.time);
    let id = r.request_id.as_ref().map(HeaderValue::as_bytes);
    match format {
        Format::Text => {
            ip(out, r.client);
            out.extend_from_slice(b" - ");
            match remote_user(r) {
                Some(user) if !user.is_empty() => escaped(out, user.as_bytes()),
                _ => out.push(b'-'),
            }
            out.extend_from_slice(b" [");
            out.extend_from_slice(local.as_bytes());
            out.extend_from_slice(b"] \"");
            match (&r.method, &r.target) {
                (Some(m), Some(t)) => {
                    escaped(out, m.as_str().as_bytes());
                    out.push(b' ');
                    escaped(out, t.as_str().as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(version_text(r.version).as_bytes());
                }
                _ => out.push(b'-'),
            }
            out.extend_from_slice(b"\" ");
            num(out, u64::from(r.status));
            out.push(b' ');
            num(out, r.bytes_sent);
            out.extend_from_slice(b" \"");
            escaped(out, r.referer.as_deref().unwrap_or(b"-"));
            out.extend_from_slice(b"\" \"");
            escaped(out, r.user_agent.as_deref().unwrap_or(b"-"));
            out.extend_from_slice(b"\" ");
            num(out, r.request_length);
            out.push(b' ');
            secs(out, r.took);
            out.extend_from_slice(b" [");
            upstream_name(out, &r.service);
            out.extend_from_slice(b"] [");
            if let Some(alt) = &r.alternative {
                upstream_name(out, alt);
            }
            out.extend_from_slice(b"] ");
            match r.upstream {
                Some((addr, status, took)) => {
                    socket(out, addr);
                    out.push(b' ');
                    num(out, r.bytes_sent);
                    out.push(b' ');
                    secs(out, took);
                    out.push(b' ');
                    num(out, u64::from(status));
                    out.push(b' ');
                }
                None => out.extend_from_slice(b"- - - - "),
            }
            escaped(out, id.unwrap_or(b"-"));
            out.push(b'\n');
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"time\":\"{iso}\",\"remote_addr\":\"{}\",\"remote_user\":\"",
                r.client
            );
            json_escaped(out, remote_user(r).unwrap_or_default().as_bytes());
            out.extend_from_slice(b"\",\"request\":\"");
            if let (Some(m), Some(t)) = (&r.method, &r.target) {
                json_escaped(out, m.as_str().as_bytes());
                out.push(b' ');
                json_escaped(out, t.as_str().as_bytes());
                let _ = write!(out, " {}", version_text(r.version));
            }
            let _ = write!(
                out,
                "\",\"status\":{},\"body_bytes_sent\":{},\"http_referer\":\"",
                r.status, r.bytes_sent
            );
            json_escaped(out, r.referer.as_deref().unwrap_or(b""));
            out.extend_from_slice(b"\",\"http_user_agent\":\"");
            json_escaped(out, r.user_agent.as_deref().unwrap_or(b""));
            let _ = write!(
                out,
                "\",\"request_length\":{},\"request_time\":",
                r.request_length
            );
            secs(out, r.took);
            out.extend_from_slice(b",\"proxy_upstream_name\":\"");
            upstream_name(out, &r.service);
            out.extend_from_slice(b"\",\"proxy_alternative_upstream_name\":\"");
            if let Some(alt) = &r.alternative {
                upstream_name(out, alt);
            }
            match r.upstream {
                Some((addr, status, took)) => {
                    let _ = write!(out, "\",\"upstream_addr\":\"{addr}\",\"upstream_status\":\"{status}\",\"upstream_response_time\":\"");
                    secs(out, took);
                }
                None => out.extend_from_slice(
                    b"\",\"upstream_addr\":\"-\",\"upstream_status\":\"-\",\"upstream_response_time\":\"-",
                ),
            }
            out.extend_from_slice(b"\",\"ingress\":\"");
            json_escaped(out, r.ingress.as_bytes());
            out.extend_from_slice(b"\",\"error\":\"");
            json_escaped(out, r.error.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\",\"req_id\":\"");
            json_escaped(out, id.unwrap_or(b""));
            out.extend_from_slice(b"\"}\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_680_645),
            client: "198.18.0.9".parse().unwrap(),
            method: Some(Method::GET),
            target: Some(PathAndQuery::from_static("/cart?x=1")),
            version: Version::HTTP_11,
            status: 200,
            authorization: None,
            referer: None,
            user_agent: Some(Bytes::from_static(b"curl/8 \"x\"\n")),
            request_length: 78,
            ingress: Arc::from("shop/web"),
            service: Arc::from("shop/b:http"),
            alternative: None,
            upstream: Some((
                "198.18.1.3:8080".parse().unwrap(),
                200,
                Duration::from_millis(2),
            )),
            request_id: Some(HeaderValue::from_static("abc123")),
            error: None,
            started: Instant::now(),
            bytes_sent: 12,
            took: Duration::from_millis(3),
        }
    }

    #[test]
    fn lines_read_as_ingress_nginx_upstreaminfo() {
        let mut out = Vec::new();
        line(&mut out, &record(), Format::Text, &mut TimeText::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "198.18.0.9 - - [02/Dec/2025:13:04:05 +0000] \"GET /cart?x=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\x22x\\x22\\x0A\" 78 0.003 [shop-b-http] [] 198.18.1.3:8080 12 0.002 200 abc123\n"
        );
    }

    #[test]
    fn remote_user_is_the_basic_user() {
        let mut r = record();
        // "Aladdin:open sesame"
        r.authorization = Some(Bytes::from_static(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        let mut out = Vec::new();
        line(&mut out, &r, Format::Text, &mut TimeText::default());
        assert!(
            out.starts_with(b"198.18.0.9 - Aladdin ["),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let mut out = Vec::new();
        line(&mut out, &r, Format::Json, &mut TimeText::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["remote_user"], "Aladdin");
        r.authorization = Some(Bytes::from_static(b"Bearer abc"));
        let mut out = Vec::new();
        line(&mut out, &r, Format::Text, &mut TimeText::default());
        assert!(out.starts_with(b"198.18.0.9 - - ["));
    }

    #[test]
    fn json_lines_are_json() {
        let mut out = Vec::new();
        line(&mut out, &record(), Format::Json, &mut TimeText::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["http_user_agent"], "curl/8 \"x\"\n");
        assert_eq!(v["time"], "2025-12-02T13:04:05+00:00");
        assert_eq!(v["upstream_addr"], "198.18.1.3:8080");
        assert_eq!(v["proxy_alternative_upstream_name"], "");
    }

    #[test]
    fn a_canary_shows_as_the_alternative_upstream() {
        let mut r = record();
        r.alternative = Some(Arc::from("shop/b-canary:http"));
        let mut out = Vec::new();
        line(&mut out, &r, Format::Text, &mut TimeText::default());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(" [shop-b-http] [shop-b-canary-http] "),
            "{text}"
        );
        let mut out = Vec::new();
        line(&mut out, &r, Format::Json, &mut TimeText::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["proxy_upstream_name"], "shop-b-http");
        assert_eq!(v["proxy_alternative_upstream_name"], "shop-b-canary-http");
    }

    #[test]
    fn numbers_and_addresses_as_text() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 999, 18_446_744_073_709_551_615] {
            num(&mut out, n);
            out.push(b' ');
        }
        socket(&mut out, "198.18.0.255:8080".parse().unwrap());
        out.push(b' ');
        socket(&mut out, "[2001:db8::1]:443".parse().unwrap());
        out.push(b' ');
        secs(&mut out, Duration::from_millis(61_042));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 7 10 999 18446744073709551615 198.18.0.255:8080 [2001:db8::1]:443 61.042"
        );
    }

    #[test]
    fn days_as_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
