//! `diff` (pure): the map writes that turn one desired state into another.
use std::collections::BTreeSet;

use ingress_common::{Backend, FrontendKey, ServiceEntry};

use crate::l4::model::{DesiredState, RingSpec};

/// The map writes that turn one state into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub ring_upserts: Vec<(u64, RingSpec)>,
    pub frontend_upserts: Vec<(FrontendKey, ServiceEntry)>,
    pub frontend_deletes: Vec<FrontendKey>,
    pub ring_deletes: Vec<u64>,
    /// Endpoints (address, port; network order) no ring holds any more:
    /// UDP flows pinned to them are forgotten, as kube-proxy clears UDP
    /// conntrack, so a client reusing its port moves to a live endpoint.
    /// TCP flows stay, to end gracefully on a terminating pod.
    pub gone_endpoints: BTreeSet<(u32, u16)>,
}

/// Endpoints in `old` but in none of `new`.
pub fn gone_endpoints<'a>(
    old: impl IntoIterator<Item = &'a Backend>,
    new: impl IntoIterator<Item = &'a Backend>,
) -> BTreeSet<(u32, u16)> {
    let keep: BTreeSet<(u32, u16)> = new.into_iter().map(|b| (b.addr, b.port)).collect();
    old.into_iter()
        .map(|b| (b.addr, b.port))
        .filter(|k| !keep.contains(k))
        .collect()
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }

    /// Number of map operations `apply` performs.
    pub fn writes(&self) -> usize {
        self.ring_upserts.len()
            + self.frontend_upserts.len()
            + self.frontend_deletes.len()
            + self.ring_deletes.len()
    }
}

pub fn diff(current: &DesiredState, desired: &DesiredState) -> Diff {
    let mut d = Diff::default();
    for (id, spec) in &desired.rings {
        if current.rings.get(id) != Some(spec) {
            d.ring_upserts.push((*id, spec.clone()));
        }
    }
    for (key, entry) in &desired.frontends {
        if current.frontends.get(key) != Some(entry) {
            d.frontend_upserts.push((*key, *entry));
        }
    }
    for key in current.frontends.keys() {
        if !desired.frontends.contains_key(key) {
            d.frontend_deletes.push(*key);
        }
    }
    for id in current.rings.keys() {
        if !desired.rings.contains_key(id) {
            d.ring_deletes.push(*id);
        }
    }
    d.gone_endpoints = gone_endpoints(
        current.rings.values().flat_map(|r| &r.backends),
        desired.rings.values().flat_map(|r| &r.backends),
    );
    d
}
