//! The large tiers' kernel mappings are bounded process-wide: many pools
//! that assemble blocks from idle pages (each move splits mappings) stay
//! under one bound together, and keep serving.
//!
//! Its own test binary: the bound is read once per process, from
//! `TIERPOOL_MAX_MAPPINGS`, set here before the first pool is built.

use std::time::Duration;

use tierpool::{MemoryLimit, Pool};

const BOUND: usize = 96;
/// Blocks each pool holds at once.
const HELD: usize = 6;
const POOLS: usize = 4;
/// The most mappings one block in use can span: its first piece grown in
/// place, and up to 16 pieces moved in.
const PER_BLOCK: usize = 17;

#[test]
fn pools_together_stay_under_one_bound_on_mappings() {
    let bound = std::env::var("TIERPOOL_TEST_BOUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BOUND);
    // SAFETY: set before any other thread of this test binary runs (one
    // test, and no pool built yet).
    unsafe { std::env::set_var("TIERPOOL_MAX_MAPPINGS", bound.to_string()) };
    let pools: Vec<Pool> = (0..POOLS)
        .map(|_| {
            Pool::builder()
                .memory_limit(MemoryLimit::Unlimited)
                .trim_interval(Duration::ZERO)
                .max_retained_bytes(1 << 30)
                .build()
        })
        .collect();
    assert_eq!(pools[0].stats().large.mapping_bound, bound);
    let mut held: Vec<Vec<tierpool::PooledBuf>> = (0..POOLS).map(|_| Vec::new()).collect();
    let mut seed = 0x9e37_79b9_u64;
    let mut most = 0;
    let mut assembled_at_bound = 0;
    for round in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let p = (seed % POOLS as u64) as usize;
        // 128 KiB to 3 MiB, between page, chunk and class boundaries.
        let size = (128 << 10) + (seed >> 8) as usize % (3 << 20);
        let at_bound = pools[p].stats().large.process_mappings >= bound;
        let before = pools[p].stats().large.assembled;
        let mut buf = pools[p].get(size);
        buf.resize(size.min(4096), round as u8);
        if at_bound && pools[p].stats().large.assembled > before {
            assembled_at_bound += 1;
        }
        held[p].push(buf);
        if held[p].len() > HELD {
            let i = (seed >> 40) as usize % held[p].len();
            held[p].swap_remove(i);
        }
        let now = pools[0].stats().large.process_mappings;
        most = most.max(now);
        let in_use: usize = held.iter().map(Vec::len).sum();
        assert!(
            now <= bound + in_use * PER_BLOCK + 1,
            "{now} mappings at round {round}: over the bound {bound} plus {in_use} blocks in use"
        );
    }
    assert_eq!(assembled_at_bound, 0, "assembled past the bound");
    assert!(
        most >= bound / 2,
        "the churn never came near the bound ({most})"
    );
    drop(held);
    for pool in &pools {
        pool.trim();
    }
    assert_eq!(pools[0].stats().large.process_mappings, 0);
}
