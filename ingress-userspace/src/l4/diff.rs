//! `diff` (pure): the map writes that turn one desired state into another.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

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
    /// `loadBalancerSourceRanges` added to and removed from rings.
    pub source_ranges: Vec<RangeChange>,
    /// Endpoints that joined a ring, or whose flags changed in it, with
    /// their flags (the ring membership affinity checks; `left` removes).
    pub joined: BTreeMap<RingMember, u8>,
    /// Ring members found in the maps that no ring holds (adoption only).
    pub stale_members: Vec<RingMember>,
}

/// A source range: network address and prefix length.
pub type SourceRange = (Ipv4Addr, u8);

/// How one ring's source ranges change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeChange {
    pub ring: u64,
    pub add: Vec<SourceRange>,
    pub remove: Vec<SourceRange>,
}

/// The change from `old` to `new` ranges of ring `ring`, if any.
pub fn range_change(ring: u64, old: &[SourceRange], new: &[SourceRange]) -> Option<RangeChange> {
    let add: Vec<SourceRange> = new.iter().filter(|r| !old.contains(r)).copied().collect();
    let remove: Vec<SourceRange> = old.iter().filter(|r| !new.contains(r)).copied().collect();
    (!add.is_empty() || !remove.is_empty()).then_some(RangeChange { ring, add, remove })
}

/// An endpoint of one ring: (ring id, address, port), network order.
pub type RingMember = (u64, u32, u16);

/// The members of ring `id` in `new` but not (with the same flags) in `old`.
pub fn joined_ring(
    id: u64,
    old: &[Backend],
    new: &[Backend],
) -> impl Iterator<Item = (RingMember, u8)> {
    let had: BTreeSet<Backend> = old.iter().copied().collect();
    new.iter()
        .filter(move |b| !had.contains(b))
        .map(move |b| ((id, b.addr, b.port), b.flags))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Every member of every ring of `state`, with its flags.
pub fn all_members(state: &DesiredState) -> BTreeMap<RingMember, u8> {
    state
        .rings
        .iter()
        .flat_map(|(id, r)| joined_ring(*id, &[], &r.backends))
        .collect()
}

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
            + self
                .source_ranges
                .iter()
                .map(|c| c.add.len() + c.remove.len())
                .sum::<usize>()
            + self.joined.len()
            + self.stale_members.len()
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
    for (id, new) in &desired.rings {
        let old = current.rings.get(id).map_or(&[][..], |r| &r.backends);
        d.joined.extend(joined_ring(*id, old, &new.backends));
    }
    let no_ranges = Vec::new();
    let ranges = |s: &DesiredState, id: &u64| -> Vec<SourceRange> {
        s.rings
            .get(id)
            .map_or(no_ranges.clone(), |r| r.source_ranges.clone())
    };
    let ids: BTreeSet<u64> = current
        .rings
        .keys()
        .chain(desired.rings.keys())
        .copied()
        .collect();
    for id in ids {
        d.source_ranges.extend(range_change(
            id,
            &ranges(current, &id),
            &ranges(desired, &id),
        ));
    }
    d
}
