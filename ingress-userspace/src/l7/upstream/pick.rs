//! Endpoint choice: power of two choices on in-flight requests (or, for
//! `load-balance: ewma`, on a decaying average of response time times the
//! requests in flight, as ingress-nginx's and Finagle's peak EWMA), with
//! endpoints that keep failing to connect ejected for a while.
//!
//! State is per endpoint address and outlives route-table swaps, so a
//! change of routes does not forget which endpoints are busy or failing.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Consecutive connect failures that eject an endpoint.
const EJECT_AFTER: u32 = 3;
/// How long an ejected endpoint is skipped.
const EJECT_FOR: Duration = Duration::from_secs(10);
/// How fast the response-time average forgets (ingress-nginx's ewma
/// decay time).
const DECAY_MS: f64 = 10_000.0;

/// Per endpoint; read lock-free on every request.
#[derive(Default)]
struct EndpointState {
    in_flight: AtomicUsize,
    /// Connect failures in a row.
    failures: AtomicU32,
    /// Ejected until this many ms after `epoch()`; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// The response-time average in ms (an f64's bits), and when it was
    /// last fed (ms after `epoch()`; 0: never).
    ewma_ms: AtomicU64,
    ewma_at_ms: AtomicU64,
}

/// The zero of `ejected_until_ms`.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl EndpointState {
    /// Feeds the average a response time: the older the last sample, the
    /// less it still counts. Racing writers may lose a sample; the
    /// average stays an average.
    fn sample(&self, rtt_ms: f64, now_ms: u64) {
        let at = self.ewma_at_ms.swap(now_ms, Ordering::Relaxed);
        let old = f64::from_bits(self.ewma_ms.load(Ordering::Relaxed));
        let new = if at == 0 {
            rtt_ms
        } else {
            let w = (-(now_ms.saturating_sub(at) as f64) / DECAY_MS).exp();
            old * w + rtt_ms * (1.0 - w)
        };
        self.ewma_ms.store(new.to_bits(), Ordering::Relaxed);
    }

    /// What sending one more request here is expected to cost: an
    /// endpoint never timed costs nothing, so it is tried.
    fn cost(&self) -> f64 {
        let avg = f64::from_bits(self.ewma_ms.load(Ordering::Relaxed));
        avg * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Records a connect's outcome; logs an ejection once when it begins
    /// and once when the endpoint connects again (not per failure: an
    /// endpoint that is down would otherwise log a line per request).
    fn report(&self, addr: SocketAddr, connected: bool) {
        match self.record(connected, now_ms()) {
            Turn::Ejected(n) => tracing::warn!(
                endpoint = %addr,
                "endpoint ejected for {} s after {n} failed connects in a row",
                EJECT_FOR.as_secs()
            ),
            Turn::Back => tracing::info!(endpoint = %addr, "ejected endpoint connects again"),
            Turn::Same => {}
        }
    }

    fn record(&self, connected: bool, now_ms: u64) -> Turn {
        if connected {
            // The common case: no write unless something was recorded.
            let failures = self.failures.load(Ordering::Relaxed);
            if failures == 0 {
                return Turn::Same;
            }
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            return if failures >= EJECT_AFTER {
                Turn::Back
            } else {
                Turn::Same
            };
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < EJECT_AFTER {
            return Turn::Same;
        }
        let until = now_ms + EJECT_FOR.as_millis() as u64;
        let was = self.ejected_until_ms.swap(until, Ordering::Relaxed);
        if was > now_ms {
            // Already ejected (tried as a last resort): extended, not news.
            Turn::Same
        } else {
            Turn::Ejected(n)
        }
    }
}

/// What a connect's outcome changed.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    Same,
    Ejected(u32),
    Back,
}

/// An endpoint and its state.
type Candidate = (SocketAddr, Arc<EndpointState>);

#[derive(Default)]
pub struct Balancer {
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    seed: AtomicU64,
}

/// Holds an endpoint's in-flight count up while a request is on it.
pub struct InFlight(Arc<EndpointState>, SocketAddr);

impl InFlight {
    /// Records whether connecting to this endpoint worked (ejection).
    pub fn report(&self, connected: bool) {
        self.0.report(self.1, connected);
    }

    /// Records how long its response head took (for `ewma`).
    pub fn took(&self, rtt: Duration) {
        self.0.sample(rtt.as_secs_f64() * 1000.0, now_ms());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr).or_default().clone()
    }

    fn random(&self) -> u64 {
        // splitmix64 over a counter: cheap, and enough to spread choices.
        let mut z = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Picks one of `addrs` (not in `avoid`): of two random usable ones,
    /// the one with fewer requests in flight (`ewma`: the lower cost).
    /// Ejected endpoints are used only when nothing else is left. The
    /// usual case looks at two endpoints, whatever their number; only
    /// when both are unusable does it scan them all.
    pub fn pick(
        &self,
        addrs: &[SocketAddr],
        avoid: &[SocketAddr],
        ewma: bool,
    ) -> Option<(SocketAddr, InFlight)> {
        let now = now_ms();
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = |a: SocketAddr| map.entry(a).or_default().clone();
        let usable = |a: &SocketAddr, st: &EndpointState| !avoid.contains(a) && !st.ejected(now);
        let n = addrs.len();
        let chosen = match n {
            0 => return None,
            1 => (addrs[0], state(addrs[0])),
            _ => {
                let r = self.random();
                let i = (r % n as u64) as usize;
                let mut j = ((r >> 32) % n as u64) as usize;
                if i == j {
                    j = (j + 1) % n;
                }
                let (a, b) = ((addrs[i], state(addrs[i])), (addrs[j], state(addrs[j])));
                match (usable(&a.0, &a.1), usable(&b.0, &b.1)) {
                    (true, true) => {
                        let less = if ewma {
                            b.1.cost() < a.1.cost()
                        } else {
                            let load = |s: &EndpointState| s.in_flight.load(Ordering::Relaxed);
                            load(&b.1) < load(&a.1)
                        };
                        if less { b } else { a }
                    }
                    (true, false) => a,
                    (false, true) => b,
                    (false, false) => {
                        // Both unusable: any usable one, else any not avoided.
                        let all: Vec<Candidate> = addrs.iter().map(|x| (*x, state(*x))).collect();
                        let pick_from = |ok: &dyn Fn(&Candidate) -> bool| {
                            let pool: Vec<&Candidate> = all.iter().filter(|c| ok(c)).collect();
                            (!pool.is_empty())
                                .then(|| pool[(r >> 16) as usize % pool.len()].clone())
                        };
                        pick_from(&|c| usable(&c.0, &c.1))
                            .or_else(|| pick_from(&|c| !avoid.contains(&c.0)))?
                    }
                }
            }
        };
        drop(map);
        let (addr, st) = chosen;
        if n == 1 && avoid.contains(&addr) {
            return None;
        }
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((addr, InFlight(st, addr)))
    }

    /// `addr`, which the request chose itself (its session's endpoint),
    /// counted in flight as a pick is.
    pub fn hold(&self, addr: SocketAddr) -> InFlight {
        let st = self.state(addr);
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(st, addr)
    }

    /// Records the outcome of a connection attempt.
    pub fn report(&self, addr: SocketAddr, connected: bool) {
        self.state(addr).report(addr, connected);
    }

    /// Forgets endpoints that no route uses any more.
    pub fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|a, st| live.contains(a) || st.in_flight.load(Ordering::Relaxed) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ejection_is_told_once_when_it_begins_and_once_when_it_ends() {
        let s = EndpointState::default();
        let at = 1_000;
        let turns: Vec<Turn> = (0..20).map(|i| s.record(false, at + i)).collect();
        assert_eq!(turns[..2], [Turn::Same, Turn::Same]);
        assert_eq!(turns[2], Turn::Ejected(3));
        assert!(turns[3..].iter().all(|t| *t == Turn::Same), "{turns:?}");
        assert!(s.ejected(at + 20));
        assert_eq!(s.record(true, at + 30), Turn::Back);
        assert_eq!(s.record(true, at + 31), Turn::Same);
        // Failing again after its ejection ran out: a new ejection.
        for i in 0..2 {
            assert_eq!(s.record(false, at + 40 + i), Turn::Same);
        }
        assert_eq!(s.record(false, at + 50), Turn::Ejected(3));
        let later = at + 50 + EJECT_FOR.as_millis() as u64 + 1;
        assert_eq!(s.record(false, later), Turn::Ejected(4));
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 10 + i], 80)))
            .collect()
    }

    #[test]
    fn busy_endpoints_get_fewer_new_requests() {
        let b = Balancer::default();
        let all = addrs(2);
        // Hold 5 requests on the first endpoint.
        let held: Vec<_> = (0..5)
            .map(|_| {
                InFlight(
                    {
                        let st = b.state(all[0]);
                        st.in_flight.fetch_add(1, Ordering::Relaxed);
                        st
                    },
                    all[0],
                )
            })
            .collect();
        let picks: Vec<SocketAddr> = (0..100)
            .map(|_| b.pick(&all, &[], false).unwrap().0)
            .collect();
        assert!(picks.iter().all(|p| *p == all[1]));
        drop(held);
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint_until_it_is_busy() {
        let b = Balancer::default();
        let all = addrs(2);
        // Never timed: tried first.
        b.state(all[1]).sample(1.0, 1);
        assert!((0..50).all(|_| b.pick(&all, &[], true).unwrap().0 == all[0]));
        b.state(all[0]).sample(100.0, 1);
        assert!((0..50).all(|_| b.pick(&all, &[], true).unwrap().0 == all[1]));
        // 1 ms × 150 requests in flight costs more than 100 ms × 1.
        let held: Vec<_> = (0..149).map(|_| b.hold(all[1])).collect();
        assert!((0..50).all(|_| b.pick(&all, &[], true).unwrap().0 == all[0]));
        drop(held);
        // Older samples count less: ten seconds on, a fast answer from
        // the slow endpoint brings it most of the way down.
        let slow = b.state(all[0]);
        slow.sample(1.0, 1 + 10 * DECAY_MS as u64);
        let avg = f64::from_bits(slow.ewma_ms.load(Ordering::Relaxed));
        assert!(avg < 2.0, "{avg}");
    }

    #[test]
    fn spread_over_idle_endpoints() {
        let b = Balancer::default();
        let all = addrs(4);
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            *counts
                .entry(b.pick(&all, &[], false).unwrap().0)
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|c| *c > 600), "{counts:?}");
    }

    #[test]
    fn failing_endpoint_is_ejected_and_avoid_is_honoured() {
        let b = Balancer::default();
        let all = addrs(2);
        for _ in 0..EJECT_AFTER {
            b.report(all[0], false);
        }
        assert!((0..50).all(|_| b.pick(&all, &[], false).unwrap().0 == all[1]));
        assert_eq!(
            b.pick(&all, &[all[1]], false).unwrap().0,
            all[0],
            "ejected is still better than nothing"
        );
        assert!(b.pick(&all, &all, false).is_none());
        b.report(all[0], true);
        assert!((0..200).any(|_| b.pick(&all, &[], false).unwrap().0 == all[0]));
    }
}
