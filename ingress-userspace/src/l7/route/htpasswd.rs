//! Password hashes as nginx's `auth_basic_user_file` takes them: Apache's
//! `$apr1$`, `{SHA}`, `{SSHA}` and `{PLAIN}`, and what glibc's crypt()
//! takes that htpasswd and openssl write (`$1$`, `$5$`, `$6$`, bcrypt's
//! `$2a$`/`$2b$`/`$2y$`). Parsed when the Secret is read, so a bad line is
//! reported then, and its cost bounded: the Secret's author does not get
//! to make every wrong password cost the proxy seconds.
use md5::{Digest as _, Md5};
use sha_crypt::password_hash::PasswordVerifier as _;

/// bcrypt cost above this is refused (12 is about 0.25 s a check; htpasswd
/// -B writes 5 unless told).
pub const MAX_BCRYPT_COST: u32 = 12;
/// SHA-crypt rounds above this are refused (5,000 is the default).
pub const MAX_SHA_ROUNDS: u32 = 500_000;

/// One user's password hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PasswordHash {
    /// `{PLAIN}text`.
    Plain(Vec<u8>),
    /// `{SHA}base64(sha1(password))`.
    Sha1(Vec<u8>),
    /// `{SSHA}base64(sha1(password + salt) + salt)`.
    SaltedSha1 { digest: Vec<u8>, salt: Vec<u8> },
    /// `$apr1$salt$hash` (Apache) or `$1$salt$hash` (MD5-crypt).
    Md5Crypt {
        magic: &'static str,
        salt: String,
        hash: String,
    },
    /// `$2a$`, `$2b$`, `$2y$`: checked by the bcrypt crate.
    Bcrypt(String),
    /// `$5$` and `$6$`: checked by the sha-crypt crate.
    ShaCrypt(String),
}

fn base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

impl PasswordHash {
    /// The hash of an htpasswd line's second field.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if let Some(p) = s.strip_prefix("{PLAIN}") {
            return Ok(PasswordHash::Plain(p.as_bytes().to_vec()));
        }
        if let Some(b) = s.strip_prefix("{SHA}") {
            return match base64(b) {
                Some(d) if d.len() == 20 => Ok(PasswordHash::Sha1(d)),
                _ => Err("{SHA} is not base64 of a SHA-1 digest".into()),
            };
        }
        if let Some(b) = s.strip_prefix("{SSHA}") {
            return match base64(b) {
                Some(mut d) if d.len() > 20 => {
                    let salt = d.split_off(20);
                    Ok(PasswordHash::SaltedSha1 { digest: d, salt })
                }
                _ => Err("{SSHA} is not base64 of a SHA-1 digest and salt".into()),
            };
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = s.strip_prefix(magic) {
                let Some((salt, hash)) = rest.split_once('$') else {
                    return Err(format!("{magic} hash has no salt"));
                };
                if salt.len() > 8 || hash.len() != 22 || !crypt64(salt) || !crypt64(hash) {
                    return Err(format!("{magic} hash is malformed"));
                }
                let magic = if magic == "$1$" { "$1$" } else { "$apr1$" };
                return Ok(PasswordHash::Md5Crypt {
                    magic,
                    salt: salt.into(),
                    hash: hash.into(),
                });
            }
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            let cost = s
                .get(4..6)
                .and_then(|c| c.parse::<u32>().ok())
                .filter(|_| s.len() == 60 && s.as_bytes()[6] == b'$')
                .ok_or("bcrypt hash is malformed")?;
            if cost > MAX_BCRYPT_COST {
                return Err(format!(
                    "bcrypt cost {cost} is over {MAX_BCRYPT_COST} (each wrong password would cost the proxy seconds); hash it again with htpasswd -B -C {MAX_BCRYPT_COST} or less"
                ));
            }
            return Ok(PasswordHash::Bcrypt(s.into()));
        }
        if s.starts_with("$5$") || s.starts_with("$6$") {
            let fields: Vec<&str> = s[3..].split('$').collect();
            let rounds = match fields.as_slice() {
                [_salt, _hash] => 5_000,
                [r, _salt, _hash] => r
                    .strip_prefix("rounds=")
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or("SHA-crypt hash is malformed")?,
                _ => return Err("SHA-crypt hash is malformed".into()),
            };
            if rounds > MAX_SHA_ROUNDS {
                return Err(format!(
                    "SHA-crypt rounds={rounds} is over {MAX_SHA_ROUNDS} (each wrong password would cost the proxy seconds)"
                ));
            }
            return Ok(PasswordHash::ShaCrypt(s.into()));
        }
        if s.starts_with("$y$") || s.starts_with("$gy$") || s.starts_with("$7$") {
            return Err("yescrypt and scrypt hashes are not supported (use htpasswd -B or openssl passwd -6)".into());
        }
        if s.len() == 13 && crypt64(s) {
            return Err(
                "DES crypt hashes are not supported (use htpasswd -B or openssl passwd -6)".into(),
            );
        }
        Err(
            "not a password hash nginx takes ($apr1$, $1$, $5$, $6$, $2y$, {SHA}, {SSHA}, {PLAIN})"
                .into(),
        )
    }

    /// Whether checking it costs real CPU (then it runs off the proxy's
    /// threads, and a success is remembered).
    pub fn is_slow(&self) -> bool {
        matches!(self, PasswordHash::Bcrypt(_) | PasswordHash::ShaCrypt(_))
    }

    /// Whether `password` is the one hashed.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Plain(p) => same(p, password),
            PasswordHash::Sha1(d) => same(&sha1(&[password]), d),
            PasswordHash::SaltedSha1 { digest, salt } => same(&sha1(&[password, salt]), digest),
            PasswordHash::Md5Crypt { magic, salt, hash } => same(
                md5_crypt(password, salt.as_bytes(), magic).as_bytes(),
                hash.as_bytes(),
            ),
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::ShaCrypt(h) => sha_crypt::ShaCrypt::default()
                .verify_password(password, h.as_str())
                .is_ok(),
        }
    }
}

/// Compares in time independent of where the inputs differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha1(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

const CRYPT64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn crypt64(s: &str) -> bool {
    s.bytes().all(|b| CRYPT64.contains(&b))
}

/// Poul-Henning Kamp's MD5-crypt, which Apache's apr1 is with another
/// magic string: 1,000 rounds of MD5 over password, salt and the last
/// digest, printed in crypt's base64.
fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(magic.as_bytes())
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round % 2 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round % 2 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }
    let d = digest;
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(CRYPT64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let word = |a: u8, b: u8, c: u8| (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
    put(word(d[0], d[6], d[12]), 4);
    put(word(d[1], d[7], d[13]), 4);
    put(word(d[2], d[8], d[14]), 4);
    put(word(d[3], d[9], d[15]), 4);
    put(word(d[4], d[10], d[5]), 4);
    put(u32::from(d[11]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hash: &str, good: &str) {
        let h = PasswordHash::parse(hash).unwrap_or_else(|e| panic!("{hash}: {e}"));
        assert!(h.verify(good.as_bytes()), "{hash} with {good}");
        assert!(!h.verify(b"wrong"), "{hash} with a wrong password");
        assert!(!h.verify(b""), "{hash} with none");
    }

    // Each written by the tool users run (openssl passwd, htpasswd).
    #[test]
    fn the_hashes_htpasswd_and_openssl_write() {
        check("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00", "password");
        check("$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/", "password");
        check(
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "secret",
        );
        check(
            "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
            "Hello world!",
        );
        check("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password");
        check("{PLAIN}password", "password");
        let bcrypt = bcrypt::hash_with_salt("password", 5, [7; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        check(&bcrypt, "password");
    }

    #[test]
    fn costs_that_would_let_a_wrong_password_burn_cpu_are_refused() {
        let e = PasswordHash::parse("$2y$13$abcdefghijklmnopqrstuu9ZtR0wjC.CqE3QZ4ACQy6j7vJMtxqa2")
            .unwrap_err();
        assert!(e.contains("cost 13"), "{e}");
        let e = PasswordHash::parse("$6$rounds=999999999$salt$abc").unwrap_err();
        assert!(e.contains("rounds=999999999"), "{e}");
    }

    #[test]
    fn what_is_not_a_hash_is_named() {
        for s in [
            "",
            "password",
            "$apr1$toolongsalt$x",
            "{SHA}notbase64!",
            "$y$j9T$abc$def",
        ] {
            assert!(PasswordHash::parse(s).is_err(), "{s:?}");
        }
    }
}
