//! Per-route request metrics, counted without a lock on the request path.
//!
//! Each (Ingress, upstream) label owns one `LabelStats`, made once and kept
//! across route table swaps (counters must only grow). The table's routes
//! hold a handle to theirs, filled in when the table is published, so a
//! request only touches atomics.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::error::ProxyError;

/// Latency histogram buckets (seconds), Prometheus style.
pub const BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Status codes kept in lock-free slots; rarer ones share a locked map.
const STATUS_SLOTS: usize = 12;

/// (Ingress `namespace/name`, upstream name): what a request is counted under.
pub type Labels = (Arc<str>, Arc<str>);

#[derive(Default)]
pub struct LabelStats {
    /// (status code << 8 | error code, requests); 0 = slot free.
    statuses: [(AtomicU32, AtomicU64); STATUS_SLOTS],
    other_statuses: Mutex<BTreeMap<u32, u64>>,
    /// Requests at or under each bucket's bound (cumulative when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    total: AtomicU64,
    /// Response body bytes sent, counted as they stream.
    pub bytes: AtomicU64,
}

impl LabelStats {
    /// Counts a request by its status and its failure's code (0: none,
    /// else 1 + its index in `ProxyError::LABELS`).
    pub fn observe(&self, status: u16, error: u8, took: Duration) {
        self.count_status(u32::from(status) << 8 | u32::from(error));
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn count_status(&self, status: u32) {
        for (code, n) in &self.statuses {
            let mut seen = code.load(Ordering::Acquire);
            if seen == 0 {
                // Claim the free slot; another thread may claim it first,
                // maybe for the same code.
                seen = match code.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => status,
                    Err(other) => other,
                };
            }
            if seen == status {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        *self
            .other_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    /// ((status, error code), requests), by status.
    pub fn statuses(&self) -> BTreeMap<(u16, u8), u64> {
        let split = |key: u32| ((key >> 8) as u16, (key & 0xff) as u8);
        let mut out: BTreeMap<(u16, u8), u64> = self
            .other_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, n)| (split(*k), *n))
            .collect();
        for (code, n) in &self.statuses {
            let code = code.load(Ordering::Acquire);
            if code != 0 {
                *out.entry(split(code)).or_default() += n.load(Ordering::Relaxed);
            }
        }
        out
    }
}

/// Every label's stats, ever (a label's counters outlive its routes, as
/// Prometheus counters must).
#[derive(Default)]
pub struct Registry {
    by_label: Mutex<HashMap<Labels, Arc<LabelStats>>>,
}

impl Registry {
    pub fn get(&self, label: &Labels) -> Arc<LabelStats> {
        self.by_label
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.clone())
            .or_default()
            .clone()
    }

    /// The stats of each of `labels` (a new table's), in order, under one
    /// lock; the labels not among them (an Ingress or backend that went
    /// away) are forgotten, as ingress-nginx drops the metrics of deleted
    /// Ingresses.
    pub fn publish(&self, labels: &[Labels]) -> Vec<Arc<LabelStats>> {
        let mut map = self.by_label.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(labels.len());
        let handles = labels
            .iter()
            .map(|l| {
                kept.entry(l.clone())
                    .or_insert_with(|| map.remove(l).unwrap_or_default())
                    .clone()
            })
            .collect();
        *map = kept;
        handles
    }

    /// Requests, latency histogram and bytes per label, Prometheus text.
    pub fn render(&self, out: &mut String) {
        let labels: BTreeMap<Labels, Arc<LabelStats>> = self
            .by_label
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push_str("# HELP ingressd_http_requests_total Requests by Ingress, Service, status and (for requests the proxy answered itself) error\n# TYPE ingressd_http_requests_total counter\n");
        for ((ing, svc), s) in &labels {
            for ((status, error), n) in s.statuses() {
                let error = usize::from(error)
                    .checked_sub(1)
                    .and_then(|i| ProxyError::LABELS.get(i));
                let _ = match error {
                    Some(e) => writeln!(
                        out,
                        "ingressd_http_requests_total{{ingress=\"{ing}\",service=\"{svc}\",status=\"{status}\",error=\"{e}\"}} {n}"
                    ),
                    None => writeln!(
                        out,
                        "ingressd_http_requests_total{{ingress=\"{ing}\",service=\"{svc}\",status=\"{status}\"}} {n}"
                    ),
                };
            }
        }
        out.push_str("# HELP ingressd_http_request_duration_seconds Request latency\n# TYPE ingressd_http_request_duration_seconds histogram\n");
        for ((ing, svc), s) in &labels {
            let l = format!("ingress=\"{ing}\",service=\"{svc}\"");
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(&s.buckets) {
                cumulative += n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "ingressd_http_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
                );
            }
            let total = s.total.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "ingressd_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {total}\n\
                 ingressd_http_request_duration_seconds_sum{{{l}}} {}\n\
                 ingressd_http_request_duration_seconds_count{{{l}}} {total}",
                s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out.push_str("# HELP ingressd_http_response_bytes_total Response body bytes sent\n# TYPE ingressd_http_response_bytes_total counter\n");
        for ((ing, svc), s) in &labels {
            let _ = writeln!(
                out,
                "ingressd_http_response_bytes_total{{ingress=\"{ing}\",service=\"{svc}\"}} {}",
                s.bytes.load(Ordering::Relaxed)
            );
        }
    }
}

/// A route's handle on its label's stats. Not part of what a route is:
/// routes compare equal whatever their handles.
#[derive(Clone, Default)]
pub struct StatsHandle(pub Option<Arc<LabelStats>>);

impl PartialEq for StatsHandle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StatsHandle {}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsHandle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_past_the_slots_are_still_counted() {
        let s = LabelStats::default();
        for code in 100..130u16 {
            for _ in 0..(code - 99) {
                s.observe(code, 0, Duration::from_millis(2));
            }
        }
        let got = s.statuses();
        assert_eq!(got.len(), 30);
        for ((code, _), n) in got {
            assert_eq!(n, u64::from(code - 99), "status {code}");
        }
        assert_eq!(s.total.load(Ordering::Relaxed), (1..=30).sum::<u64>());
    }

    #[test]
    fn histogram_is_cumulative_when_rendered() {
        let reg = Registry::default();
        let label: Labels = (Arc::from("ns/ing"), Arc::from("ns/svc:80"));
        let s = reg.get(&label);
        s.observe(200, 0, Duration::from_micros(500));
        s.observe(200, 0, Duration::from_millis(7));
        s.observe(503, ProxyError::NoEndpoints.code(), Duration::from_secs(20));
        let mut out = String::new();
        reg.render(&mut out);
        let l = "ingress=\"ns/ing\",service=\"ns/svc:80\"";
        for line in [
            format!("ingressd_http_requests_total{{{l},status=\"200\"}} 2"),
            format!("ingressd_http_requests_total{{{l},status=\"503\",error=\"no_endpoints\"}} 1"),
            format!("ingressd_http_request_duration_seconds_bucket{{{l},le=\"0.001\"}} 1"),
            format!("ingressd_http_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"),
            format!("ingressd_http_request_duration_seconds_bucket{{{l},le=\"0.01\"}} 2"),
            format!("ingressd_http_request_duration_seconds_bucket{{{l},le=\"10\"}} 2"),
            format!("ingressd_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("ingressd_http_request_duration_seconds_count{{{l}}} 3"),
        ] {
            assert!(out.lines().any(|x| x == line), "{line} missing in\n{out}");
        }
        // The same label gets the same counters back.
        assert!(Arc::ptr_eq(&s, &reg.get(&label)));
        // A label no route uses any more is dropped.
        reg.publish(&[]);
        let mut out = String::new();
        reg.render(&mut out);
        assert!(!out.contains("ns/ing"), "{out}");
    }
}
