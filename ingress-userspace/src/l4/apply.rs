//! `apply`: the only code that writes the L4 maps.
//!
//! Write order, so that no packet ever sees a frontend pointing at a missing
//! ring: rings first, then frontends; removals in the reverse order. A ring
//! is one map value, replaced atomically: an endpoint change is one write.
use std::collections::BTreeSet;

use ingress_common::{FrontendKey, Ring, ServiceEntry};

use super::{Diff, RingMember, SourceRange};

/// Where `apply` writes: the pinned BPF maps, or a fake in tests.
pub trait LbMapWriter {
    fn put_ring(&mut self, id: u64, ring: &Ring, name: &str) -> anyhow::Result<()>;
    fn delete_ring(&mut self, id: u64) -> anyhow::Result<()>;
    fn put_frontend(&mut self, key: &FrontendKey, entry: &ServiceEntry) -> anyhow::Result<()>;
    fn delete_frontend(&mut self, key: &FrontendKey) -> anyhow::Result<()>;
    fn put_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()>;
    /// Records that ring `member.0` holds endpoint `member.1:member.2`.
    fn put_member(&mut self, member: RingMember, flags: u8) -> anyhow::Result<()>;
    fn delete_member(&mut self, member: RingMember) -> anyhow::Result<()>;
    fn delete_source_range(&mut self, ring: u64, range: SourceRange) -> anyhow::Result<()>;
    /// Forgets the UDP flows, and closes the connected UDP sockets, that
    /// went to these endpoints through these rings.
    fn forget_udp_flows(&mut self, left: &BTreeSet<RingMember>) -> anyhow::Result<()>;
}

/// Performs the diff in the safe order. Stops at the first failed write:
/// the caller then re-reads the maps and diffs again.
pub fn apply(d: &Diff, maps: &mut impl LbMapWriter) -> anyhow::Result<()> {
    for (member, flags) in &d.joined {
        maps.put_member(*member, *flags)?;
    }
    for (id, spec) in &d.ring_upserts {
        maps.put_ring(*id, &spec.to_ring(), &spec.name)?;
    }
    // Ranges before the frontends that check them: a new restricted
    // LoadBalancer IP never drops an allowed client.
    for c in &d.source_ranges {
        for r in &c.add {
            maps.put_source_range(c.ring, *r)?;
        }
    }
    for (key, entry) in &d.frontend_upserts {
        maps.put_frontend(key, entry)?;
    }
    for key in &d.frontend_deletes {
        maps.delete_frontend(key)?;
    }
    for c in &d.source_ranges {
        for r in &c.remove {
            maps.delete_source_range(c.ring, *r)?;
        }
    }
    for id in &d.ring_deletes {
        maps.delete_ring(*id)?;
    }
    // After the rings: an affinity choice of a gone endpoint then fails
    // both ways (not in a slot, not a member) and chooses anew.
    for member in d.left.iter().chain(&d.stale_members) {
        maps.delete_member(*member)?;
    }
    if !d.left.is_empty() {
        maps.forget_udp_flows(&d.left)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::l4::{
        diff,
        model::{DesiredState, RingSpec},
    };
    use ingress_common::{Backend, IPPROTO_TCP};

    use super::{fake::FakeMaps, *};

    fn backend(last: u8) -> Backend {
        Backend {
            addr: u32::from_be_bytes([198, 18, 1, last]).to_be(),
            port: 8080u16.to_be(),
            flags: 0,
            pad: 0,
        }
    }

    /// `n` services, each with one NodePort frontend and three backends.
    fn state(n: u16) -> DesiredState {
        let mut s = DesiredState::default();
        for i in 0..n {
            let id = 1000 + i as u64;
            s.rings.insert(
                id,
                RingSpec {
                    name: format!("ns/svc{i}:80/TCP"),
                    backends: vec![backend(1), backend(2), backend(3)],
                    ..Default::default()
                },
            );
            s.frontends.insert(
                FrontendKey {
                    addr: 0,
                    port: (30000 + i).to_be(),
                    proto: IPPROTO_TCP,
                    scope: 0,
                },
                ServiceEntry {
                    ring_id: id,
                    flags: 0,
                    affinity_timeout: 0,
                },
            );
        }
        s
    }

    #[test]
    fn identical_states_need_no_writes() {
        assert!(diff(&state(50), &state(50)).is_empty());
    }

    #[test]
    fn one_endpoint_change_is_one_write_whatever_the_table_size() {
        for n in [1, 100, 2000] {
            let before = state(n);
            let mut after = before.clone();
            after.rings.get_mut(&1000).unwrap().backends.pop();
            let d = diff(&before, &after);
            assert_eq!(d.writes(), 1, "n={n}");
            assert_eq!(d.ring_upserts.len(), 1);
        }
    }

    #[test]
    fn apply_orders_writes_so_no_frontend_points_at_a_missing_ring() {
        // FakeMaps asserts the invariant after every single write.
        let mut maps = FakeMaps::default();
        apply(&diff(&DesiredState::default(), &state(20)), &mut maps).unwrap();
        assert_eq!(maps.frontends.len(), 20);
        // Swap every service to a new ring id, then remove them all.
        let mut moved = DesiredState::default();
        for (k, e) in &state(20).frontends {
            let id = e.ring_id + 500;
            moved.rings.insert(
                id,
                RingSpec {
                    name: format!("moved {id}"),
                    backends: vec![backend(9)],
                    ..Default::default()
                },
            );
            moved.frontends.insert(
                *k,
                ServiceEntry {
                    ring_id: id,
                    flags: 0,
                    affinity_timeout: 0,
                },
            );
        }
        apply(&diff(&state(20), &moved), &mut maps).unwrap();
        assert_eq!(maps.rings.len(), 20);
        apply(&diff(&moved, &DesiredState::default()), &mut maps).unwrap();
        assert!(maps.rings.is_empty() && maps.frontends.is_empty());
    }

    #[test]
    fn applied_rings_hold_the_desired_backends() {
        let mut maps = FakeMaps::default();
        apply(&diff(&DesiredState::default(), &state(1)), &mut maps).unwrap();
        let ring = &maps.rings[&1000];
        assert_eq!(ring.count, 3);
        assert_eq!(
            crate::l4::maglev::ring_backends(ring),
            vec![backend(1), backend(2), backend(3)]
        );
    }
}

#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;

    use super::*;

    /// Records writes and checks the ordering invariant on every write.
    #[derive(Default)]
    pub struct FakeMaps {
        pub rings: BTreeMap<u64, Box<Ring>>,
        pub frontends: BTreeMap<FrontendKey, ServiceEntry>,
        pub writes: usize,
    }

    impl FakeMaps {
        fn check(&self) {
            for (key, entry) in &self.frontends {
                assert!(
                    self.rings.contains_key(&entry.ring_id),
                    "frontend {key:?} points at a missing ring"
                );
            }
        }
    }

    impl LbMapWriter for FakeMaps {
        fn put_ring(&mut self, id: u64, ring: &Ring, _: &str) -> anyhow::Result<()> {
            self.rings.insert(id, Box::new(*ring));
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn delete_ring(&mut self, id: u64) -> anyhow::Result<()> {
            self.rings.remove(&id);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn put_frontend(&mut self, key: &FrontendKey, entry: &ServiceEntry) -> anyhow::Result<()> {
            self.frontends.insert(*key, *entry);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn delete_frontend(&mut self, key: &FrontendKey) -> anyhow::Result<()> {
            self.frontends.remove(key);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn put_source_range(&mut self, _: u64, _: SourceRange) -> anyhow::Result<()> {
            self.writes += 1;
            Ok(())
        }
        fn put_member(&mut self, _: RingMember, _: u8) -> anyhow::Result<()> {
            self.writes += 1;
            Ok(())
        }
        fn delete_member(&mut self, _: RingMember) -> anyhow::Result<()> {
            Ok(())
        }
        fn delete_source_range(&mut self, _: u64, _: SourceRange) -> anyhow::Result<()> {
            self.writes += 1;
            Ok(())
        }
        fn forget_udp_flows(&mut self, _: &BTreeSet<RingMember>) -> anyhow::Result<()> {
            Ok(())
        }
    }
}
