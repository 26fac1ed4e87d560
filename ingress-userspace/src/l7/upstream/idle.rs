//! Idle keep-alive connections to endpoints, per endpoint address, for
//! both upstream clients (hyper's and the in-task one). Keyed by address,
//! so balancing decides the endpoint, not the pool.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// How often idle connections are looked over: one the endpoint closed
/// is closed here within this (no socket left in CLOSE_WAIT).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A connection that may have been closed while it sat idle.
pub(super) trait Reusable: Send + 'static {
    /// Whether it can still take a request.
    fn usable(&self) -> bool;
}

/// Per endpoint, idle connections newest on top, with when they went idle
/// (in `clock` ms).
pub(super) struct IdleConns<C> {
    stacks: Mutex<HashMap<SocketAddr, Vec<(C, u64)>>>,
    timeout_ms: u64,
    /// Set once the sweeping task runs (started by the first check-out,
    /// inside the runtime).
    sweeping: AtomicBool,
    /// Milliseconds since `born`, moved on by each sweep: idle times need
    /// no better than the sweep's second, and reading the clock twice per
    /// request is not free.
    clock: AtomicU64,
    born: Instant,
}

impl<C: Reusable> IdleConns<C> {
    /// Connections idle for `timeout` are closed instead of reused.
    pub(super) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            stacks: Mutex::default(),
            timeout_ms: timeout.as_millis() as u64,
            sweeping: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    fn expired(&self, now_ms: u64, since: u64) -> bool {
        now_ms.saturating_sub(since) >= self.timeout_ms
    }

    /// The newest usable idle connection to `addr`.
    pub(super) fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Option<C> {
        self.start_sweeping();
        let mut stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        let stack = stacks.get_mut(&addr)?;
        let now = self.clock.load(Relaxed);
        while let Some((conn, since)) = stack.pop() {
            // Newest on top: once one has expired, all below it have too.
            if self.expired(now, since) {
                stack.clear();
                break;
            }
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    pub(super) fn checkin(&self, addr: SocketAddr, conn: C) {
        if !conn.usable() {
            return;
        }
        let mut stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        let stack = stacks.entry(addr).or_default();
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push((conn, self.clock.load(Relaxed)));
        }
    }

    /// Endpoints no longer in any route lose their idle connections.
    pub(super) fn retain(&self, live: &HashSet<SocketAddr>) {
        let mut stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        stacks.retain(|addr, _| live.contains(addr));
    }

    /// Closes idle connections that expired or were closed by the
    /// endpoint, every `SWEEP_EVERY`, for as long as the pool lives.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.load(Relaxed) || self.sweeping.swap(true, Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    pub(super) fn sweep(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.clock.store(now, Relaxed);
        let mut stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        for stack in stacks.values_mut() {
            stack.retain(|(conn, since)| !self.expired(now, *since) && conn.usable());
        }
        stacks.retain(|_, stack| !stack.is_empty());
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let stacks = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        stacks.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection the test closes by hand.
    struct Fake(Arc<AtomicBool>);

    impl Reusable for Fake {
        fn usable(&self) -> bool {
            self.0.load(Relaxed)
        }
    }

    fn fake() -> (Fake, Arc<AtomicBool>) {
        let open = Arc::new(AtomicBool::new(true));
        (Fake(open.clone()), open)
    }

    #[tokio::test]
    async fn newest_first_closed_and_expired_ones_never() {
        let addr: SocketAddr = "198.18.0.1:80".parse().unwrap();
        let pool = IdleConns::new(Duration::from_secs(60));
        let (a, _) = fake();
        let (b, b_open) = fake();
        let (c, c_open) = fake();
        pool.checkin(addr, a);
        pool.checkin(addr, b);
        pool.checkin(addr, c);
        c_open.store(false, Relaxed);
        // c is newest but closed: b comes next.
        let got = pool.checkout(addr).expect("an open one");
        assert!(Arc::ptr_eq(&got.0, &b_open));
        assert!(pool.checkout(addr).is_some(), "a");
        assert!(pool.checkout(addr).is_none(), "handed out once each");

        let pool = IdleConns::new(Duration::ZERO);
        pool.checkin(addr, fake().0);
        assert!(pool.checkout(addr).is_none(), "expired");
    }

    #[tokio::test]
    async fn the_sweeper_closes_what_the_endpoint_closed() {
        let addr: SocketAddr = "198.18.0.1:80".parse().unwrap();
        let pool = IdleConns::new(Duration::from_secs(60));
        let (a, a_open) = fake();
        pool.checkin(addr, a);
        pool.checkin(addr, fake().0);
        // A check-out (of another endpoint) starts the sweeper.
        assert!(pool.checkout("198.18.0.2:80".parse().unwrap()).is_none());
        a_open.store(false, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.len() != 1 {
            assert!(Instant::now() < deadline, "closed connection still pooled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The open one stays.
        pool.sweep();
        assert_eq!(pool.len(), 1);
    }
}
