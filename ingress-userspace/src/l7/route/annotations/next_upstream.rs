//! `proxy-next-upstream`, `proxy-next-upstream-tries` and
//! `proxy-next-upstream-timeout`, read as ingress-nginx reads them, its
//! defaults included (`error timeout`, 3 tries, no time limit): when an
//! endpoint fails a request in one of the listed ways, the next endpoint
//! gets it. A request whose body has gone out cannot be sent again (it is
//! streamed, not buffered), nor, without `non_idempotent`, a POST.
use std::{collections::BTreeMap, time::Duration};

use super::PREFIX;

/// At most this many tries, whatever `proxy-next-upstream-tries` says
/// (its 0, "no limit", included).
pub const MAX_TRIES: u32 = 16;

/// When a request goes to the next endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextUpstream {
    /// `error`: the connection failed, or broke before a response head.
    pub error: bool,
    /// `timeout`: no response head within the read timeout.
    pub timeout: bool,
    /// `invalid_header`: the response head was not HTTP we accept.
    pub invalid_header: bool,
    /// `http_500`…: the endpoint answered one of these.
    pub statuses: Vec<u16>,
    /// `non_idempotent`: POST, LOCK, PATCH may go again too.
    pub non_idempotent: bool,
    /// Attempts in all (1: no next endpoint).
    pub tries: u32,
    /// How long after the first attempt another may start.
    pub within: Option<Duration>,
}

impl Default for NextUpstream {
    fn default() -> Self {
        Self {
            error: true,
            timeout: true,
            invalid_header: false,
            statuses: Vec::new(),
            non_idempotent: false,
            tries: 3,
            within: None,
        }
    }
}

impl NextUpstream {
    /// Whether a failure of this kind may go on, by the list alone.
    pub fn after_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

const CASES: &str = "error, timeout, invalid_header, http_500, http_502, http_503, http_504, http_403, http_404, http_429, non_idempotent or off";

fn parse_cases(v: &str, into: &mut NextUpstream) -> Result<(), String> {
    let mut n = NextUpstream {
        error: false,
        timeout: false,
        ..into.clone()
    };
    let mut off = false;
    for case in v.split_whitespace() {
        match case {
            "error" => n.error = true,
            "timeout" => n.timeout = true,
            "invalid_header" => n.invalid_header = true,
            "non_idempotent" => n.non_idempotent = true,
            "off" => off = true,
            // nginx's own: nothing upstream answers them, nothing to do.
            "denied" | "updating" => {}
            s => match s.strip_prefix("http_").map(str::parse::<u16>) {
                Some(Ok(code @ (500 | 502 | 503 | 504 | 403 | 404 | 429))) => n.statuses.push(code),
                _ => return Err(format!("{s:?} is not one of {CASES}")),
            },
        }
    }
    if off {
        n = NextUpstream {
            error: false,
            timeout: false,
            invalid_header: false,
            statuses: Vec::new(),
            non_idempotent: false,
            ..n
        };
        n.tries = 1;
    }
    *into = n;
    Ok(())
}

/// The settings of an Ingress (its defaults when it sets none). A bad
/// value is reported and that setting keeps its default.
pub fn read(
    annotations: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(&str, String),
) -> NextUpstream {
    let key = |name: &str| format!("{PREFIX}{name}");
    let get = |name: &str| annotations.get(&key(name)).map(|v| v.trim());
    let mut n = NextUpstream::default();
    if let Some(t) = get("proxy-next-upstream-tries") {
        match t.parse::<u32>() {
            Ok(0) => n.tries = MAX_TRIES,
            Ok(t) => n.tries = t.min(MAX_TRIES),
            Err(_) => warn(
                &key("proxy-next-upstream-tries"),
                format!("{t:?} is not a number; 3 is used"),
            ),
        }
    }
    if let Some(t) = get("proxy-next-upstream-timeout") {
        match t.strip_suffix('s').unwrap_or(t).parse::<u64>() {
            Ok(0) => {}
            Ok(s) => n.within = Some(Duration::from_secs(s)),
            Err(_) => warn(
                &key("proxy-next-upstream-timeout"),
                format!("{t:?} is not a number of seconds; no limit is used"),
            ),
        }
    }
    if let Some(v) = get("proxy-next-upstream")
        && let Err(e) = parse_cases(v, &mut n)
    {
        warn(
            &key("proxy-next-upstream"),
            format!("{e}; \"error timeout\" is used"),
        );
    }
    n
}

#[cfg(test)]
mod tests {
    use super::{super::read_with, *};

    #[test]
    fn ingress_nginx_defaults_and_lists() {
        let (n, w) = read_with(&[], read);
        assert_eq!((n, w.len()), (NextUpstream::default(), 0));
        let (n, w) = read_with(
            &[
                (
                    "proxy-next-upstream",
                    "error timeout http_502 http_503 non_idempotent",
                ),
                ("proxy-next-upstream-tries", "5"),
                ("proxy-next-upstream-timeout", "10"),
            ],
            read,
        );
        assert!(w.is_empty(), "{w:?}");
        assert!(n.error && n.timeout && n.non_idempotent && !n.invalid_header);
        assert_eq!(n.statuses, [502, 503]);
        assert_eq!((n.tries, n.within), (5, Some(Duration::from_secs(10))));
        let (n, _) = read_with(&[("proxy-next-upstream", "off")], read);
        assert_eq!(n.tries, 1);
        assert!(!n.error && !n.timeout);
        let (n, _) = read_with(&[("proxy-next-upstream-tries", "0")], read);
        assert_eq!(n.tries, MAX_TRIES);
    }

    #[test]
    fn bad_values_keep_the_defaults() {
        let (n, w) = read_with(
            &[
                ("proxy-next-upstream", "error http_418"),
                ("proxy-next-upstream-tries", "many"),
            ],
            read,
        );
        assert_eq!(n, NextUpstream::default());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.contains("\"http_418\"")), "{w:?}");
    }
}
