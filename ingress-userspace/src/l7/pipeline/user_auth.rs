//! `auth-type: basic|digest` at run time, as nginx's `auth_basic` and the
//! digest module ingress-nginx builds in: without good credentials the
//! answer is 401 with the challenge, and nothing goes to the endpoints;
//! with them the request goes on, its Authorization header included (as
//! nginx sends it).
//!
//! What an attacker chooses costs little: the header is bounded by the
//! head limits, an unknown user costs a map lookup, a slow hash (bcrypt,
//! SHA-crypt, their cost capped when the Secret is read) runs on the
//! blocking pool, at most one per core at a time, and a success is
//! remembered (keyed with a secret of this process) so a logged-in user
//! pays it once. Digest nonces are stateless (a time and its MAC), valid
//! a minute, and each nonce count is taken once.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hyper::{
    Method, Response, StatusCode,
    header::{self, HeaderValue},
};
use md5::{Digest as _, Md5};
use ring::hmac;
use tokio::sync::Semaphore;

use super::forwarding::Fields;
use crate::l7::{
    body::{Body, text},
    route::{
        annotations::user_auth::Scheme,
        htpasswd::same,
        users::{Credential, Users},
    },
};

/// Remembered successes of slow checks, at most this many (then forgotten
/// all at once: a bound, not a cache policy worth more).
const REMEMBERED: usize = 4096;
/// How long a digest nonce is taken (the digest module's default).
const NONCE_LIFE: Duration = Duration::from_secs(60);
/// Nonces whose counts are tracked, at most; and counts per nonce.
const NONCES: usize = 16_384;
const COUNTS_PER_NONCE: usize = 1024;

/// What the checks share across requests.
pub(super) struct Checks {
    key: hmac::Key,
    remembered: Mutex<HashSet<[u8; 32]>>,
    slow: Semaphore,
    /// Digest: nonces given so far, and the counts already used, by nonce.
    issued: AtomicU64,
    counts: Mutex<HashMap<String, HashSet<u32>>>,
}

impl Default for Checks {
    fn default() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &fallback_key()));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            key,
            remembered: Mutex::new(HashSet::new()),
            slow: Semaphore::new(cores),
            issued: AtomicU64::new(0),
            counts: Mutex::new(HashMap::new()),
        }
    }
}

/// Without the system's randomness (never seen): a key no client knows.
fn fallback_key() -> [u8; 32] {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&t.to_le_bytes());
    k[16..24].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
    k
}

/// The request being checked.
pub(super) struct Asked<'a> {
    pub method: &'a Method,
    /// The path and query as the client sent them (digest signs them).
    pub target: &'a str,
}

/// `None`: through. `Some`: the answer (401).
pub(super) async fn check(
    users: &Arc<Users>,
    asked: Asked<'_>,
    src: &impl Fields,
    checks: &Checks,
) -> Option<Response<Body>> {
    let given = src.first("authorization");
    let ok = match users.scheme {
        Scheme::Basic => match given.and_then(basic) {
            Some((user, password)) => checks.basic(users, &user, password).await,
            None => false,
        },
        Scheme::Digest => match given.and_then(DigestAnswer::parse) {
            Some(d) => match checks.digest(users, &asked, &d) {
                Digested::Good => true,
                Digested::Stale => return Some(challenge(users, checks, true)),
                Digested::Bad => false,
            },
            None => false,
        },
    };
    (!ok).then(|| challenge(users, checks, false))
}

/// `Basic base64(user:password)`, decoded.
pub(super) fn basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = split_scheme(value)?;
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_string();
    Some((user, decoded[colon + 1..].to_vec()))
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let value = value.trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

/// The 401 with the Ingress's challenge.
fn challenge(users: &Users, checks: &Checks, stale: bool) -> Response<Body> {
    let value = match users.scheme {
        Scheme::Basic => format!("Basic realm=\"{}\"", users.realm),
        Scheme::Digest => format!(
            "Digest algorithm=\"MD5\", qop=\"auth\", realm=\"{}\", nonce=\"{}\"{}",
            users.realm,
            checks.nonce(now()),
            if stale { ", stale=\"true\"" } else { "" }
        ),
    };
    let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    // The realm was checked to be quotable when the annotation was read.
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Digested {
    Good,
    /// Signed right over a nonce too old (or one whose counts ran out):
    /// the client retries with a new one without asking its user.
    Stale,
    Bad,
}

impl Checks {
    async fn basic(&self, users: &Arc<Users>, user: &str, password: Vec<u8>) -> bool {
        let Some(Credential::Password(hash)) = users.get(user) else {
            return false;
        };
        if !hash.is_slow() {
            return hash.verify(&password);
        }
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&users.id.to_le_bytes());
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(&password);
        let mut token = [0u8; 32];
        token.copy_from_slice(ctx.sign().as_ref());
        if self.remembered().contains(&token) {
            return true;
        }
        let Ok(_permit) = self.slow.acquire().await else {
            return false;
        };
        let hash = hash.clone();
        let good = tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .unwrap_or(false);
        if good {
            let mut remembered = self.remembered();
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(token);
        }
        good
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new nonce for time `t`: the time, a serial (each challenge its
    /// own counts) and a MAC of both, in hex.
    fn nonce(&self, t: u64) -> String {
        let serial = self.issued.fetch_add(1, Ordering::Relaxed);
        self.signed(t, serial)
    }

    fn signed(&self, t: u64, serial: u64) -> String {
        let tag = hmac::sign(&self.key, format!("nonce {t} {serial}").as_bytes());
        format!("{t:x}.{serial:x}.{}", hex(&tag.as_ref()[..16]))
    }

    fn digest(&self, users: &Users, asked: &Asked<'_>, d: &DigestAnswer) -> Digested {
        let Some(Credential::Digest(ha1)) = users.get(&d.username) else {
            return Digested::Bad;
        };
        // Signed over another realm or another request is not this one.
        if d.realm != users.realm || d.uri != asked.target {
            return Digested::Bad;
        }
        let mut fields = d.nonce.split('.').map(|f| u64::from_str_radix(f, 16));
        let (Some(Ok(issued)), Some(Ok(serial))) = (fields.next(), fields.next()) else {
            return Digested::Bad;
        };
        if !same(self.signed(issued, serial).as_bytes(), d.nonce.as_bytes()) {
            return Digested::Bad;
        }
        let ha2 = md5_hex(&[asked.method.as_str().as_bytes(), b":", d.uri.as_bytes()]);
        let ha1 = hex(ha1);
        let expected = match &d.qop {
            Some(qop) if qop == "auth" => md5_hex(&[
                ha1.as_bytes(),
                b":",
                d.nonce.as_bytes(),
                b":",
                d.nc.as_bytes(),
                b":",
                d.cnonce.as_bytes(),
                b":auth:",
                ha2.as_bytes(),
            ]),
            Some(_) => return Digested::Bad,
            None => md5_hex(&[
                ha1.as_bytes(),
                b":",
                d.nonce.as_bytes(),
                b":",
                ha2.as_bytes(),
            ]),
        };
        if !same(
            expected.as_bytes(),
            d.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Digested::Bad;
        }
        let t = now();
        if t.saturating_sub(issued) > NONCE_LIFE.as_secs() || issued > t + 1 {
            return Digested::Stale;
        }
        // Each count once: a captured request cannot be sent again.
        let nc = if d.qop.is_some() {
            match u32::from_str_radix(&d.nc, 16) {
                Ok(n) if d.nc.len() == 8 => n,
                _ => return Digested::Bad,
            }
        } else {
            0
        };
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= NONCES && !counts.contains_key(&d.nonce) {
            counts.retain(|n, _| {
                n.split_once('.')
                    .and_then(|(t, _)| u64::from_str_radix(t, 16).ok())
                    .is_some_and(|i| t.saturating_sub(i) <= NONCE_LIFE.as_secs())
            });
            if counts.len() >= NONCES {
                return Digested::Stale;
            }
        }
        let used = counts.entry(d.nonce.clone()).or_default();
        if used.len() >= COUNTS_PER_NONCE {
            return Digested::Stale;
        }
        if !used.insert(nc) {
            return Digested::Bad;
        }
        Digested::Good
    }
}

/// The fields of a `Digest` Authorization header this checks.
#[derive(Debug, Default, PartialEq, Eq)]
struct DigestAnswer {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    qop: Option<String>,
    nc: String,
    cnonce: String,
}

impl DigestAnswer {
    /// `Digest name="value", name=token, …` (at most 16 parameters).
    fn parse(value: &[u8]) -> Option<DigestAnswer> {
        let (scheme, rest) = split_scheme(value)?;
        if !scheme.eq_ignore_ascii_case(b"digest") {
            return None;
        }
        let mut rest = std::str::from_utf8(rest).ok()?;
        let mut d = DigestAnswer::default();
        for _ in 0..16 {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (name, after) = rest.split_once('=')?;
            let name = name.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => v.push(chars.next()?.1),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                (v, &quoted[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            match name.as_str() {
                "username" => d.username = value,
                "realm" => d.realm = value,
                "nonce" => d.nonce = value,
                "uri" => d.uri = value,
                "response" => d.response = value,
                "qop" => d.qop = Some(value),
                "nc" => d.nc = value,
                "cnonce" => d.cnonce = value,
                "algorithm" if !value.eq_ignore_ascii_case("md5") => return None,
                _ => {}
            }
            rest = next;
        }
        (!d.username.is_empty() && !d.nonce.is_empty() && !d.response.is_empty()).then_some(d)
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut ctx = Md5::new();
    for p in parts {
        ctx.update(p);
    }
    hex(&ctx.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_as_sent() {
        // "Aladdin:open sesame", RFC 7617's example.
        let (u, p) = basic(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!((u.as_str(), p.as_slice()), ("Aladdin", &b"open sesame"[..]));
        let (u, p) = basic(b"basic dTpwOjE=").unwrap();
        assert_eq!((u.as_str(), p.as_slice()), ("u", &b"p:1"[..]));
        for bad in [
            &b"Bearer abc"[..],
            b"Basic",
            b"Basic !!!",
            b"Basic bm9jb2xvbg==",
        ] {
            assert!(basic(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_digest_answer_with_quotes_escapes_and_tokens() {
        let d = DigestAnswer::parse(
            br#"Digest username="Mufasa", realm="test\"realm", nonce="5a.b", uri="/dir/index.html?x=1,2", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1""#,
        )
        .unwrap();
        assert_eq!(d.username, "Mufasa");
        assert_eq!(d.realm, "test\"realm");
        assert_eq!(d.uri, "/dir/index.html?x=1,2");
        assert_eq!(d.qop.as_deref(), Some("auth"));
        assert_eq!(d.nc, "00000001");
        assert!(
            DigestAnswer::parse(
                b"Digest username=\"a\", nonce=\"n\", response=\"r\", algorithm=SHA-256"
            )
            .is_none()
        );
        assert!(DigestAnswer::parse(b"Digest username=\"unterminated").is_none());
    }

    #[test]
    fn nonces_are_signed_per_challenge() {
        let checks = Checks::default();
        let n = checks.nonce(1000);
        assert!(n.starts_with("3e8.0."), "{n}");
        assert_eq!(n, checks.signed(1000, 0));
        assert!(
            checks.nonce(1000).starts_with("3e8.1."),
            "each challenge its own"
        );
        assert_ne!(n, Checks::default().nonce(1000), "keyed per process");
    }

    fn digest_users() -> Users {
        use k8s_openapi::api::core::v1::Secret;

        use crate::{
            cluster::{Object, Snapshot},
            l7::route::{annotations::user_auth::UserAuth, users},
        };
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("ns".into());
        secret.metadata.name = Some("s".into());
        // md5("erin:R:pw")
        let ha1 = md5_hex(&[b"erin:R:pw"]);
        secret.string_data = Some([("auth".to_string(), format!("erin:R:{ha1}"))].into());
        let mut snapshot = Snapshot::default();
        snapshot.insert(Object::Secret(Box::new(secret)));
        let auth = UserAuth {
            scheme: Scheme::Digest,
            namespace: None,
            secret: "s".into(),
            map: false,
            realm: "R".into(),
        };
        users::build(&auth, "ns", &snapshot, &mut |m| panic!("{m}")).unwrap()
    }

    fn answer(nonce: &str, nc: &str) -> DigestAnswer {
        let ha1 = md5_hex(&[b"erin:R:pw"]);
        let ha2 = md5_hex(&[b"GET:/a"]);
        let response = md5_hex(&[format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}").as_bytes()]);
        DigestAnswer {
            username: "erin".into(),
            realm: "R".into(),
            nonce: nonce.into(),
            uri: "/a".into(),
            response,
            qop: Some("auth".into()),
            nc: nc.into(),
            cnonce: "cn".into(),
        }
    }

    #[test]
    fn digest_answers_once_each_and_stale_after_a_minute() {
        let (users, checks) = (digest_users(), Checks::default());
        let asked = Asked {
            method: &Method::GET,
            target: "/a",
        };
        let fresh = checks.nonce(now());
        assert!(matches!(
            checks.digest(&users, &asked, &answer(&fresh, "00000001")),
            Digested::Good
        ));
        assert!(matches!(
            checks.digest(&users, &asked, &answer(&fresh, "00000001")),
            Digested::Bad
        ));
        assert!(matches!(
            checks.digest(&users, &asked, &answer(&fresh, "00000002")),
            Digested::Good
        ));
        // Signed right, but for another URI than the one asked.
        let other = Asked {
            method: &Method::GET,
            target: "/b",
        };
        assert!(matches!(
            checks.digest(&users, &other, &answer(&fresh, "00000003")),
            Digested::Bad
        ));
        let old = checks.nonce(now() - 61);
        assert!(matches!(
            checks.digest(&users, &asked, &answer(&old, "00000001")),
            Digested::Stale
        ));
        // A nonce another process (another key) gave.
        let foreign = Checks::default().nonce(now());
        assert!(matches!(
            checks.digest(&users, &asked, &answer(&foreign, "00000001")),
            Digested::Bad
        ));
    }
}
