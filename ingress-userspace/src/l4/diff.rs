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
    /// Endpoints that left a ring (the ring's id, address and port;
    /// network order): UDP flows and connected UDP sockets that went to
    /// them through that ring are forgotten and closed, as kube-proxy
    /// clears a Service's UDP conntrack entries for a removed endpoint, so
    /// a client moves to a live one. TCP stays, to end gracefully.
    pub left: BTreeSet<RingMember>,
}

/// An endpoint of one ring: (ring id, address, port), network order.
pub type RingMember = (u64, u32, u16);

/// The members of ring `id` in `old` but not in `new`.
pub fn left_ring(id: u64, old: &[Backend], new: &[Backend]) -> impl Iterator<Item = RingMember> {
    let keep: BTreeSet<(u32, u16)> = new.iter().map(|b| (b.addr, b.port)).collect();
    old.iter()
        .map(|b| (b.addr, b.port))
        .filter(move |k| !keep.contains(k))
        .map(move |(a, p)| (id, a, p))
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
    for (id, old) in &current.rings {
        let new = desired.rings.get(id).map_or(&[][..], |r| &r.backends);
        d.left.extend(left_ring(*id, &old.backends, new));
    }
    d
}
