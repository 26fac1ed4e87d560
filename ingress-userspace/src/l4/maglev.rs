//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), computed here so
//! the kernel only indexes a table.
//!
//! Each backend gets a permutation of the slots from two hashes of its
//! address and port; backends take turns claiming their next free slot.
//! The table depends only on the set of backends, so any `ingressd` computes
//! the same one, and removing one of N backends moves about 1/N of the slots.
use ingress_common::{Backend, MAGLEV_RING_SIZE, Ring};

const M: usize = MAGLEV_RING_SIZE;

fn hash64(backend: &Backend, seed: u64) -> u64 {
    // splitmix64 over the backend's identity (address and port, not flags,
    // so a backend turning remote or terminating keeps its slots).
    let mut z = seed ^ ((backend.addr as u64) << 16 | backend.port as u64);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For each slot, the index into `backends` that owns it. `backends` must
/// be sorted and free of duplicates; at most `M` are used.
pub fn populate(backends: &[Backend]) -> Vec<usize> {
    let n = backends.len().min(M);
    if n == 0 {
        return Vec::new();
    }
    let perms: Vec<(usize, usize)> = backends[..n]
        .iter()
        .map(|b| {
            let offset = (hash64(b, 0x6d61_676c_6576_3031) % M as u64) as usize;
            let skip = (hash64(b, 0x736b_6970_7365_6564) % (M as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![usize::MAX; M];
    let mut filled = 0;
    // M is prime, so each permutation visits every slot: this ends after at
    // most M * n probes.
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perms[i];
            let mut slot = (offset + next[i] * skip) % M;
            while table[slot] != usize::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % M;
            }
            table[slot] = i;
            next[i] += 1;
            filled += 1;
            if filled == M {
                break 'fill;
            }
        }
    }
    table
}

/// The ring value written to the map for this backend set.
pub fn build_ring(backends: &[Backend]) -> Box<Ring> {
    let mut ring = Box::new(Ring {
        count: 0,
        flags: 0,
        slots: [Backend::default(); M],
    });
    let table = populate(backends);
    if table.is_empty() {
        return ring;
    }
    ring.count = backends.len().min(M) as u32;
    for (slot, &owner) in ring.slots.iter_mut().zip(&table) {
        *slot = backends[owner];
    }
    ring
}

/// The backend set a ring was built from (inverse of [`build_ring`]).
pub fn ring_backends(ring: &Ring) -> Vec<Backend> {
    if ring.count == 0 {
        return Vec::new();
    }
    let mut set: Vec<Backend> = ring.slots.to_vec();
    set.sort();
    set.dedup();
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<Backend> {
        let mut v: Vec<_> = (0..n)
            .map(|i| Backend {
                addr: u32::from_be_bytes([198, 18, 1, 10 + i as u8]).to_be(),
                port: 8080u16.to_be(),
                flags: 0,
                pad: 0,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_slot_filled_and_spread_even() {
        for n in [1, 2, 3, 7, 10] {
            let table = populate(&backends(n));
            assert_eq!(table.len(), M);
            let mut counts = vec![0usize; n as usize];
            for &i in &table {
                counts[i] += 1;
            }
            let ideal = M as f64 / n as f64;
            for c in counts {
                assert!(
                    (c as f64 - ideal).abs() <= ideal * 0.02 + 1.0,
                    "n={n} count={c} ideal={ideal}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let all = backends(10);
        let before = build_ring(&all);
        let mut fewer = all.clone();
        let gone = fewer.remove(4);
        let after = build_ring(&fewer);
        let moved = before
            .slots
            .iter()
            .zip(after.slots.iter())
            .filter(|(a, b)| a != b)
            .count();
        let owned_by_gone = before.slots.iter().filter(|b| **b == gone).count();
        // Slots of the removed backend must move; Maglev bounds the rest.
        assert!(moved >= owned_by_gone);
        assert!(
            moved as f64 <= M as f64 * (1.0 / 10.0) * 1.5,
            "moved {moved} of {M}"
        );
    }

    #[test]
    fn ring_round_trips_its_backend_set() {
        let all = backends(5);
        assert_eq!(ring_backends(&build_ring(&all)), all);
        assert!(ring_backends(&build_ring(&[])).is_empty());
        assert_eq!(build_ring(&[]).count, 0);
    }
}
