//! What a pool costs before it holds anything, measured exactly with a
//! counting global allocator (its own test binary, so nothing else counts).
// With `--cfg tierpool_global_alloc` the library installs `GlobalPool` as
// the global allocator, which this binary cannot replace.
#![cfg(not(tierpool_global_alloc))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn an_empty_pool_costs_tens_of_kibibytes_and_a_dropped_one_nothing() {
    // Warm up what is process-wide (the trimmer, the schedule).
    drop(tierpool::Pool::new());
    let before = LIVE.load(Ordering::Relaxed);
    let pools: Vec<_> = (0..100).map(|_| tierpool::Pool::new()).collect();
    let per_pool = (LIVE.load(Ordering::Relaxed) - before) / 100;
    // 29 KB here: mostly the 49 shared-tier queues' cache-padded heads and
    // tails. (Preallocated queues cost 450 KiB before.)
    assert!(
        per_pool < 64 << 10,
        "an empty pool with 49 classes holds {per_pool} bytes"
    );
    drop(pools);
    // A dropped pool wakes the trimmer, which forgets its schedule entry
    // (and with it the last of the pool's memory) and gives back the room
    // of a schedule left mostly empty, however late it got to run. What
    // stays is the free slot list: about 1.5 KB for 100 slot numbers.
    const FLOOR: isize = 4 << 10;
    settle(before, FLOOR);
    for _ in 0..5 {
        drop((0..100).map(|_| tierpool::Pool::new()).collect::<Vec<_>>());
    }
    // Five rounds more leave no more behind than one.
    settle(before, FLOOR);
}

/// Waits up to 5 s for the live bytes above `before` to fall to `bound`.
fn settle(before: isize, bound: isize) {
    let start = std::time::Instant::now();
    loop {
        let left = LIVE.load(Ordering::Relaxed) - before;
        if left <= bound {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{left} bytes left after dropping the pools"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
