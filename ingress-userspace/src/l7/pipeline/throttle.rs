//! `limit-rps`, `limit-rpm` and `limit-connections` at run time: nginx's
//! `limit_req` leaky bucket (in thousandths of a request, by the
//! millisecond; `burst` taken at once, `nodelay`) and `limit_conn`
//! (requests in flight), per client address, one set per Ingress kept
//! across route-table swaps while the Ingress asks for the same limits.
//!
//! Clients are attacker-chosen keys (an IPv6 client has 2^64 of them), so
//! each table is bounded: when full, clients whose bucket has drained are
//! forgotten first, then an arbitrary one, as nginx's zone drops its
//! oldest. Forgetting a client can only let it through, never block
//! another.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use crate::l7::route::annotations::rate::RateLimits;

const SHARDS: usize = 16;
/// Clients remembered per Ingress and rate (nginx's 5 MB zone holds
/// about as many).
pub const MAX_CLIENTS: usize = 65_536;
const PER_SHARD: usize = MAX_CLIENTS / SHARDS;

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn shard(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        // The /64 and the rest both count: an attacker rotating the low
        // bits still spreads over every shard.
        IpAddr::V6(v) => {
            let b = u128::from(v);
            (b >> 64) as u64 ^ b as u64
        }
    };
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Requests over the rate, in thousandths.
    excess: u64,
    last: u64,
}

/// One rate for every client of an Ingress.
struct Rate {
    /// Thousandths of a request per second.
    rate: u64,
    /// Thousandths of a request.
    burst: u64,
    clients: [Mutex<HashMap<IpAddr, Bucket>>; SHARDS],
}

impl Rate {
    fn new(per_second_milli: u64, burst: u64) -> Self {
        Self {
            rate: per_second_milli.max(1),
            burst: burst * 1000,
            clients: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn drained(&self, b: &Bucket, now: u64) -> u64 {
        b.excess
            .saturating_sub(self.rate.saturating_mul(now.saturating_sub(b.last)) / 1000)
    }

    /// The client's excess with one more request now, if within the
    /// burst (a client not seen starts empty, as in nginx).
    fn peek(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let map = self.clients[shard(ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(b) = map.get(&ip) else {
            return Some(0);
        };
        let excess = self.drained(b, now) + 1000;
        (excess <= self.burst).then_some(excess)
    }

    /// Counts the request `peek` let through.
    fn commit(&self, ip: IpAddr, now: u64, excess: u64) {
        let mut map = self.clients[shard(ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= PER_SHARD && !map.contains_key(&ip) {
            map.retain(|_, b| self.drained(b, now) > 0);
            if map.len() >= PER_SHARD
                && let Some(k) = map.keys().next().copied()
            {
                map.remove(&k);
            }
        }
        map.insert(ip, Bucket { excess, last: now });
    }
}

/// The limits of one Ingress.
pub struct Limiter {
    config: RateLimits,
    rates: Vec<Rate>,
    /// Requests in flight per client (entries leave at zero).
    in_flight: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Rate,
    Connections,
}

/// A request in flight under `limit-connections`: freed when dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.limiter.in_flight[shard(self.ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Limiter {
    pub fn new(config: RateLimits) -> Self {
        let mut rates = Vec::new();
        if let Some(n) = config.rps {
            let burst = u64::from(n) * u64::from(config.burst_multiplier);
            rates.push(Rate::new(u64::from(n) * 1000, burst));
        }
        if let Some(n) = config.rpm {
            let burst = u64::from(n) * u64::from(config.burst_multiplier);
            rates.push(Rate::new(u64::from(n) * 1000 / 60, burst));
        }
        Self {
            config,
            rates,
            in_flight: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Lets a request from `ip` through, or says which limit refused it.
    /// The slot, if any, is to be held until the response is sent.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Slot>, Refused> {
        self.admit_at(ip, now_ms())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: u64) -> Result<Option<Slot>, Refused> {
        if self.config.allow.iter().any(|c| c.contains(ip)) {
            return Ok(None);
        }
        let slot = match self.config.connections {
            None => None,
            Some(max) => {
                let mut map = self.in_flight[shard(ip)]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let n = map.entry(ip).or_insert(0);
                if *n >= max {
                    return Err(Refused::Connections);
                }
                *n += 1;
                Some(Slot {
                    limiter: self.clone(),
                    ip,
                })
            }
        };
        // Counted by every rate only if every rate lets it through, as
        // nginx accounts several limit_req lines.
        let mut counts = [0u64; 2];
        for (r, c) in self.rates.iter().zip(&mut counts) {
            *c = r.peek(ip, now).ok_or(Refused::Rate)?;
        }
        for (r, c) in self.rates.iter().zip(counts) {
            r.commit(ip, now, c);
        }
        Ok(slot)
    }
}

/// The limiters of every Ingress that has limits, by Ingress.
#[derive(Default)]
pub struct Limiters(Mutex<HashMap<Arc<str>, Arc<Limiter>>>);

impl Limiters {
    /// The limiter of `ingress` with these limits: the one it had if they
    /// are the same (its clients' state carries over), else a new one.
    pub fn get(&self, ingress: &Arc<str>, config: &RateLimits) -> Arc<Limiter> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(ingress) {
            Some(l) if l.config == *config => l.clone(),
            _ => {
                let l = Arc::new(Limiter::new(config.clone()));
                map.insert(ingress.clone(), l.clone());
                l
            }
        }
    }

    /// Forgets the limiters of Ingresses not in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<Arc<str>>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::route::annotations::Cidr;

    fn limiter(rps: Option<u32>, rpm: Option<u32>, connections: Option<u32>) -> Arc<Limiter> {
        Arc::new(Limiter::new(RateLimits {
            rps,
            rpm,
            burst_multiplier: 5,
            connections,
            allow: vec![Cidr::parse("198.18.9.0/24").unwrap()],
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_rate_as_nginx_limit_req_nodelay() {
        let l = limiter(Some(2), None, None);
        let c = ip("198.18.0.1");
        // burst 10 (2 × 5) and the first request: 11 at once.
        let taken = (0..20).filter(|_| l.admit_at(c, 1000).is_ok()).count();
        assert_eq!(taken, 11);
        assert_eq!(l.admit_at(c, 1000).err(), Some(Refused::Rate));
        // 2 a second drain: one more every 500 ms.
        assert!(l.admit_at(c, 1499).is_err());
        assert!(l.admit_at(c, 1500).is_ok());
        assert!(l.admit_at(c, 1500).is_err());
        // Others and the allowlist are not held back.
        assert!(l.admit_at(ip("198.18.0.2"), 1500).is_ok());
        assert!((0..100).all(|_| l.admit_at(ip("198.18.9.7"), 1500).is_ok()));
    }

    #[test]
    fn per_minute_and_per_second_both_count() {
        let l = limiter(Some(100), Some(1), None);
        let c = ip("2001:db8::1");
        // rpm 1: burst 5, so 6 at once, then one a minute (nginx's
        // 1000/60 = 16 thousandths a second: a little over a minute).
        assert_eq!((0..10).filter(|_| l.admit_at(c, 0).is_ok()).count(), 6);
        assert!(l.admit_at(c, 59_000).is_err());
        assert!(l.admit_at(c, 62_500).is_ok());
        // A request one limit refuses is not counted by the other: the
        // per-second bucket is as the six left it.
        let l = limiter(Some(100), Some(1), None);
        assert_eq!((0..10).filter(|_| l.admit_at(c, 0).is_ok()).count(), 6);
        assert_eq!(l.rates[0].peek(c, 0), Some(6000), "6 counted, not 10");
    }

    #[test]
    fn connections_are_held_until_the_slot_is_dropped() {
        let l = limiter(None, None, Some(2));
        let c = ip("198.18.0.1");
        let a = l.admit_at(c, 0).unwrap();
        let b = l.admit_at(c, 0).unwrap();
        assert_eq!(l.admit_at(c, 0).err(), Some(Refused::Connections));
        assert!(l.admit_at(ip("198.18.0.2"), 0).is_ok());
        drop(a);
        let _c = l.admit_at(c, 0).unwrap();
        drop(b);
        drop(_c);
        assert!(l.in_flight.iter().all(|m| m.lock().unwrap().is_empty()));
    }

    #[test]
    fn many_clients_stay_within_the_bound() {
        let l = limiter(Some(1), None, None);
        for i in 0..(MAX_CLIENTS as u128 * 3) {
            let c = IpAddr::V6(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i));
            assert!(l.admit_at(c, 0).is_ok(), "a new client is let through");
        }
        let held: usize = l.rates[0]
            .clients
            .iter()
            .map(|m| m.lock().unwrap().len())
            .sum();
        assert!(held <= MAX_CLIENTS, "{held}");
    }

    #[test]
    fn a_limiter_outlives_a_swap_while_its_limits_stay() {
        let ls = Limiters::default();
        let ing: Arc<str> = Arc::from("shop/web");
        let cfg = limiter(Some(1), None, None).config.clone();
        let a = ls.get(&ing, &cfg);
        assert!(Arc::ptr_eq(&a, &ls.get(&ing, &cfg)));
        let other = RateLimits {
            rps: Some(2),
            ..cfg.clone()
        };
        assert!(!Arc::ptr_eq(&a, &ls.get(&ing, &other)));
        ls.retain(&std::collections::HashSet::new());
        assert!(ls.0.lock().unwrap().is_empty());
    }
}
