//! Endpoint choice: power of two choices on in-flight requests, with
//! endpoints that keep failing to connect ejected for a while.
//!
//! State is per endpoint address and outlives route-table swaps, so a
//! change of routes does not forget which endpoints are busy or failing.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Consecutive connect failures that eject an endpoint.
const EJECT_AFTER: u32 = 3;
/// How long an ejected endpoint is skipped.
const EJECT_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
struct EndpointState {
    in_flight: AtomicUsize,
    failures: Mutex<(u32, Option<Instant>)>,
}

#[derive(Default)]
pub struct Balancer {
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    seed: AtomicU64,
}

/// Holds an endpoint's in-flight count up while a request is on it.
pub struct InFlight(Arc<EndpointState>);

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

    /// Picks one of `addrs` (not in `avoid`): of two random healthy ones,
    /// the one with fewer requests in flight. Ejected endpoints are used
    /// only when nothing else is left. One lock on the endpoint table.
    pub fn pick(
        &self,
        addrs: &[SocketAddr],
        avoid: &[SocketAddr],
    ) -> Option<(SocketAddr, InFlight)> {
        let now = Instant::now();
        let mut candidates: Vec<(SocketAddr, Arc<EndpointState>, bool)> = {
            let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            addrs
                .iter()
                .filter(|a| !avoid.contains(a))
                .map(|a| {
                    let st = map.entry(*a).or_default().clone();
                    let until = st.failures.lock().unwrap_or_else(|e| e.into_inner()).1;
                    (*a, st, matches!(until, Some(t) if t > now))
                })
                .collect()
        };
        if candidates.iter().any(|c| !c.2) {
            candidates.retain(|c| !c.2);
        }
        let n = candidates.len();
        let chosen = match n {
            0 => return None,
            1 => 0,
            _ => {
                let r = self.random();
                let a = (r % n as u64) as usize;
                let mut b = ((r >> 32) % n as u64) as usize;
                if a == b {
                    b = (b + 1) % n;
                }
                let load = |i: usize| candidates[i].1.in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
        };
        let (addr, st, _) = candidates.swap_remove(chosen);
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((addr, InFlight(st)))
    }

    /// Records the outcome of a connection attempt.
    pub fn report(&self, addr: SocketAddr, connected: bool) {
        let st = self.state(addr);
        let mut f = st.failures.lock().unwrap_or_else(|e| e.into_inner());
        if connected {
            *f = (0, None);
        } else {
            f.0 += 1;
            if f.0 >= EJECT_AFTER {
                f.1 = Some(Instant::now() + EJECT_FOR);
                tracing::warn!(endpoint = %addr, "endpoint ejected after {} failed connects", f.0);
            }
        }
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
                InFlight({
                    let st = b.state(all[0]);
                    st.in_flight.fetch_add(1, Ordering::Relaxed);
                    st
                })
            })
            .collect();
        let picks: Vec<SocketAddr> = (0..100).map(|_| b.pick(&all, &[]).unwrap().0).collect();
        assert!(picks.iter().all(|p| *p == all[1]));
        drop(held);
    }

    #[test]
    fn spread_over_idle_endpoints() {
        let b = Balancer::default();
        let all = addrs(4);
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            *counts.entry(b.pick(&all, &[]).unwrap().0).or_insert(0) += 1;
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
        assert!((0..50).all(|_| b.pick(&all, &[]).unwrap().0 == all[1]));
        assert_eq!(
            b.pick(&all, &[all[1]]).unwrap().0,
            all[0],
            "ejected is still better than nothing"
        );
        assert!(b.pick(&all, &all).is_none());
        b.report(all[0], true);
        assert!((0..200).any(|_| b.pick(&all, &[]).unwrap().0 == all[0]));
    }
}
