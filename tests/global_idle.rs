//! `GlobalPool` installed, alone in its process (this binary's one test):
//! memory freed after a stretch in which the tier held nothing idle still
//! goes back on the trimmer's ticks.
// With `--cfg tierpool_global_alloc` the library installs it already.
#![cfg(not(tierpool_global_alloc))]

use std::hint::black_box;
use std::time::{Duration, Instant};

use tierpool::{GlobalPool, Pool};

#[global_allocator]
static GLOBAL: GlobalPool = GlobalPool::new();

const BLOCK: usize = 32 << 20;

#[test]
fn frees_after_a_busy_interval_are_trimmed() {
    // The trimmer starts with the first idle pages...
    drop(black_box(vec![1u8; BLOCK]));
    // ...which the next block takes again: nothing is idle now, and stays
    // so across two ticks of the tier.
    let held = black_box(vec![2u8; BLOCK]);
    assert_eq!(GLOBAL.stats().idle_bytes, 0, "{}", GLOBAL.stats());
    std::thread::sleep(2 * Pool::DEFAULT_TRIM_INTERVAL + Duration::from_millis(500));
    let trimmed = GLOBAL.stats().trimmed_bytes;
    drop(held);
    assert!(GLOBAL.stats().idle_bytes >= BLOCK, "{}", GLOBAL.stats());
    // Idle through one whole interval, so gone within two.
    let start = Instant::now();
    while GLOBAL.stats().trimmed_bytes < trimmed + BLOCK as u64 {
        assert!(
            start.elapsed() < 3 * Pool::DEFAULT_TRIM_INTERVAL,
            "not trimmed: {}",
            GLOBAL.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(GLOBAL.stats().idle_bytes, 0, "{}", GLOBAL.stats());
}
