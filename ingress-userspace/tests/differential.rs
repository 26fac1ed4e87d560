//! The fast HTTP/1 path against hyper's, on a generated corpus: request
//! heads (the fast server's scan against the guard and hyper's server)
//! and responses (the fast client's reading against hyper's client) built
//! from the pieces parsers disagree on: framing headers spelled every way,
//! bare line feeds, folded and odd header lines, versions, targets. Same
//! method, target, headers and body, or both refuse. Bounded in count and
//! time here; `cargo xtask fuzz` runs the same checks coverage-guided for
//! as long as it is given.
use std::time::{Duration, Instant};

use ingressd::l7::differential;

/// Cases per run, and the time they may take at most.
const CASES: usize = 20_000;
const WITHIN: Duration = Duration::from_secs(60);

/// splitmix64: the same corpus every run (a failure is reproducible by
/// its number).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn chance(&mut self, in_: u64) -> bool {
        self.next().is_multiple_of(in_)
    }
}

const METHODS: &[&[u8]] = &[
    b"GET", b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get", b"X-M",
    b"CONNECT", b"G\x01T", b"",
];
const TARGETS: &[&[u8]] = &[
    b"/",
    b"/a?b=c",
    b"/a/../b",
    b"//x",
    b"/%61",
    b"/%zz",
    b"*",
    b"http://h/x",
    b"/a b",
    b"/\xc3\xbc",
    b"/\x7f",
    b"/a#f",
    b"/a?b c",
    b"",
];
const VERSIONS: &[&[u8]] = &[
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"http/1.1",
    b"HTTP/1.1 ",
];
const REQUEST_HEADERS: &[&[u8]] = &[
    b"Host: a",
    b"Host: a",
    b"Host: a",
    b"Host: a:8080",
    b"Host:",
    b"Host: \xffa",
    b"Content-Length: 0",
    b"Content-Length: 00",
    b"Content-Length: 3",
    b"Content-Length:  3 ",
    b"Content-Length: +3",
    b"Content-Length: -1",
    b"Content-Length: 3,3",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding:",
    b"Connection: close",
    b"Connection: keep-alive, X-A",
    b"Connection: upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-A: b\tc",
    b"X-A: a\r\n b",
    b"Host : a",
    b"NoColon",
    b"X-\xc3\x9c: 1",
    b"X-A: a\x00b",
    b"X-A: a\x7fb",
    b"X-A: \x80\xff",
    b"X_A: 1",
    b"Cookie: a=1",
    b"Cookie: b=2",
    b": empty-name",
    b"X-A:",
];
const REQUEST_BODIES: &[&[u8]] = &[
    b"",
    b"",
    b"abc",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"zz\r\n",
];

fn request(rng: &mut Rng) -> Vec<u8> {
    let eol: &[u8] = if rng.chance(12) {
        rng.pick(&[&b"\n"[..], b"\r"])
    } else {
        b"\r\n"
    };
    let mut out = Vec::new();
    out.extend_from_slice(rng.pick(METHODS));
    out.push(b' ');
    out.extend_from_slice(rng.pick(TARGETS));
    if rng.chance(20) {
        out.extend_from_slice(b"  ");
    } else {
        out.push(b' ');
    }
    out.extend_from_slice(rng.pick(VERSIONS));
    out.extend_from_slice(eol);
    for _ in 0..(rng.next() % 6) {
        out.extend_from_slice(rng.pick(REQUEST_HEADERS));
        out.extend_from_slice(if rng.chance(15) { b"\n" } else { eol });
    }
    out.extend_from_slice(eol);
    out.extend_from_slice(rng.pick(REQUEST_BODIES));
    if rng.chance(4) {
        out.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    out
}

const STATUS_LINES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 304 Not Modified",
    b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK",
    b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.1 2000 X",
    b"HTTP/1.1 200",
    b"HTTP/1.2 200 OK",
    b"HTTP/1.1 600 Odd",
];
const RESPONSE_HEADERS: &[&[u8]] = &[
    b"Content-Length: 5",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 10",
    b"Content-Length: 5, 5",
    b"Content-Length: 5,",
    b"Content-Length: +5",
    b"Content-Length: 6",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: gzip",
    b"Connection: close",
    b"Connection: keep-alive, X-Hop",
    b"X-Hop: 1",
    b"Keep-Alive: timeout=5",
    b"Proxy: x",
    b"X-A: a\r\n b",
    b"X-A: \x80",
    b"Set-Cookie: a=1",
    b"Set-Cookie: b=2",
    b"NoColon",
    b"Date: Sun, 06 Nov 1994 08:49:37 GMT",
];
const RESPONSE_BODIES: &[&[u8]] = &[
    b"hello",
    b"hello",
    b"",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\nX-T: t\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n",
    b"hello world, longer than said",
    b"zz\r\n\r\n",
];

fn response(rng: &mut Rng) -> Vec<u8> {
    let eol: &[u8] = if rng.chance(12) { b"\n" } else { b"\r\n" };
    let mut out = Vec::new();
    out.extend_from_slice(rng.pick(STATUS_LINES));
    out.extend_from_slice(eol);
    for _ in 0..(rng.next() % 5) {
        out.extend_from_slice(rng.pick(RESPONSE_HEADERS));
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out.extend_from_slice(rng.pick(RESPONSE_BODIES));
    out
}

fn shown(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[test]
fn the_fast_server_reads_requests_as_hyper_behind_its_guard_does() {
    let mut rng = Rng(0x5eed_0001);
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in 0..CASES {
        if started.elapsed() > WITHIN {
            break;
        }
        let wire = request(&mut rng);
        if let Err(why) = differential::request(&wire) {
            failures.push(format!("case {case}: {}\n{why}", shown(&wire)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_fast_client_reads_responses_as_hyper_does() {
    let mut rng = Rng(0x5eed_0002);
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in 0..CASES {
        if started.elapsed() > WITHIN {
            break;
        }
        let wire = response(&mut rng);
        let is_head = rng.chance(5);
        if let Err(why) = differential::response(&wire, is_head) {
            failures.push(format!(
                "case {case} (HEAD: {is_head}): {}\n{why}",
                shown(&wire)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
