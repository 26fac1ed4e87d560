//! File descriptors, shared out so that no listener can starve another:
//! the limit is raised to what the system allows, then split into fixed
//! caps (the metrics and default-backend ports get a small share of their
//! own, the proxy the rest, two per connection: the client's and the one
//! to its endpoint). A listener at its cap leaves connections in its
//! backlog, where they hold no descriptor of ours.

/// Descriptors kept for everything else (BPF maps and links, epoll, the
/// listeners, the API server's connections, logs).
const RESERVED: u64 = 64;
/// `/metrics`, `/healthz`, `/readyz`: the kubelet and a few scrapers.
const METRICS: u64 = 32;
/// The default backend on its own port, at most.
const DEFAULT_BACKEND: u64 = 1024;

/// How many connections each listener may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdPlan {
    /// The descriptor limit the plan was made for.
    pub limit: u64,
    /// Each proxy listener (HTTP, HTTPS).
    pub proxy: usize,
    pub default_backend: usize,
    pub metrics: usize,
}

impl FdPlan {
    /// The plan for `limit` descriptors, the proxy capped at
    /// `max_connections` per listener.
    pub fn new(limit: u64, max_connections: usize) -> Self {
        let metrics = METRICS.min(limit / 16).max(1);
        let default_backend = DEFAULT_BACKEND.min(limit / 8).max(1);
        let left = limit.saturating_sub(RESERVED + metrics + default_backend);
        // Two descriptors a proxied connection, two proxy listeners.
        let proxy = (left / 4).clamp(1, max_connections.max(1) as u64);
        Self {
            limit,
            proxy: proxy as usize,
            default_backend: default_backend as usize,
            metrics: metrics as usize,
        }
    }

    /// Raises the soft descriptor limit to the hard one, and plans for it.
    pub fn for_this_process(max_connections: usize) -> Self {
        Self::new(raise_nofile(), max_connections)
    }
}

/// The soft RLIMIT_NOFILE raised to the hard limit (nginx's
/// `worker_rlimit_nofile`, without a number to guess); the limit in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit of the right type.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_keeps_a_share_whatever_the_limit() {
        let small = FdPlan::new(256, 16_384);
        assert_eq!((small.metrics, small.default_backend), (16, 32));
        // Everything together stays under the limit, with room to spare.
        let used = RESERVED as usize + small.metrics + small.default_backend + 4 * small.proxy;
        assert!(used <= 256, "{small:?} uses {used}");
        assert!(small.proxy >= 16, "{small:?}");
        let large = FdPlan::new(1 << 20, 16_384);
        assert_eq!(
            (large.proxy, large.default_backend, large.metrics),
            (16_384, 1024, 32)
        );
        let tiny = FdPlan::new(8, 100);
        assert!(tiny.proxy >= 1 && tiny.metrics >= 1 && tiny.default_backend >= 1);
    }
}
