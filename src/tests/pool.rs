//! The pool across tiers and threads: caps, events, thread caches, exits, cross-thread returns.

use super::*;

#[test]
fn cap_bounds_retention_across_tiers() {
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100]).unwrap())
        .max_retained_bytes(250)
        .thread_cache_bytes(1000)
        .build();
    let bufs: Vec<_> = (0..5).map(|_| pool.get(100)).collect();
    drop(bufs);
    let stats = pool.stats();
    assert!(stats.retained_bytes <= 250, "{stats}");
    assert_eq!(stats.retained_bytes, 200);
    assert_eq!(stats.classes[0].dropped_full, 3);
    assert_eq!(stats.in_use_bytes, 0);
    let none = Pool::builder().max_retained_bytes(0).build();
    drop(none.get(4096));
    assert_eq!(none.stats().retained_bytes, 0);
}

#[test]
fn events_report_allocations_drops_and_trims() {
    let (pool, events) = recording_pool(
        Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[100]).unwrap())
            .max_retained_bytes(100),
    );
    let a = pool.get(50);
    let b = pool.get(50);
    let big = pool.get(500);
    drop((a, b, big));
    pool.trim();
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            Event::Allocated {
                capacity: 100,
                reason: AllocReason::Miss
            },
            Event::Allocated {
                capacity: 100,
                reason: AllocReason::Miss
            },
            Event::Allocated {
                capacity: 500,
                reason: AllocReason::Oversize
            },
            Event::Dropped {
                capacity: 100,
                reason: DropReason::PoolFull
            },
            Event::Dropped {
                capacity: 500,
                reason: DropReason::Oversize
            },
            Event::Trimmed {
                buffers: 1,
                bytes: 100,
                reason: TrimReason::Manual
            },
        ]
    );
}

#[test]
fn the_event_hook_may_use_the_pool() {
    let slot: StdArc<StdMutex<Option<Pool>>> = StdArc::default();
    let seen = slot.clone();
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100, 200]).unwrap())
        .on_event(move |e| {
            let inner = seen.lock().unwrap().clone();
            if let (Event::Allocated { capacity: 100, .. }, Some(p)) = (e, inner) {
                // Re-entering the pool from inside the hook must not
                // deadlock, panic or corrupt a thread cache.
                drop(p.get(200));
            }
        })
        .build();
    *slot.lock().unwrap() = Some(pool.clone());
    drop(pool.get(100));
    let stats = pool.stats();
    assert_eq!(stats.retained_buffers, 2);
    assert_eq!(stats.in_use_bytes, 0);
    // The hook holds a handle of its own pool: break the cycle.
    slot.lock().unwrap().take();
}

#[test]
fn trim_reaches_idle_threads_caches() {
    let pool = small_pool();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let bufs: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
            drop(bufs);
            ready_tx.send(()).unwrap();
            done_rx.recv().unwrap(); // alive but idle while we trim
        })
    };
    ready_rx.recv().unwrap();
    let before = pool.stats();
    assert_eq!(before.retained_buffers, 3);
    assert_eq!(before.thread_caches, 1);
    pool.trim();
    let after = pool.stats();
    assert_eq!(after.retained_bytes, 0);
    assert_eq!(after.classes[0].trimmed, 3);
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(pool.stats().thread_caches, 0);
}

#[test]
fn thread_exit_flushes_its_cache_to_the_shared_tier() {
    let pool = small_pool();
    let p = pool.clone();
    std::thread::spawn(move || drop(p.get(300))).join().unwrap();
    let stats = pool.stats();
    assert_eq!(stats.thread_caches, 0);
    assert_eq!(stats.retained_bytes, 300, "flushed, not freed");
    assert_eq!(
        stats.classes[2].misses, 1,
        "the exited thread's counters are kept"
    );
    // Now this thread's cache refills from the shared tier.
    let buf = pool.get(300);
    assert_eq!(pool.stats().classes[2].shared_hits, 1);
    drop(buf);
}

#[test]
fn cross_thread_returns_balance() {
    let pool = small_pool();
    let bufs: Vec<_> = (0..ROUNDS.min(200)).map(|i| pool.get(i % 300)).collect();
    std::thread::spawn(move || drop(bufs)).join().unwrap();
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert!(stats.retained_bytes <= pool.max_retained_bytes());
}

/// A thread that only takes (its buffers are dropped on another thread)
/// turns each hit into credit for a return that never comes to it; that
/// credit must go back to the budget, or it drains the budget and the pool
/// stops keeping anything (once: a third of such gets missed).
#[test]
fn a_thread_that_only_takes_keeps_no_more_credit_than_its_limit() {
    const CACHE: usize = 16 * 4096;
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[4096]).unwrap())
        .max_retained_bytes(64 * 4096)
        .thread_cache_bytes(CACHE)
        .build();
    let (to_dropper, batches) = std::sync::mpsc::sync_channel::<Vec<PooledBuf>>(1);
    let dropper = std::thread::spawn(move || {
        for batch in batches {
            drop(batch);
        }
    });
    let rounds = if cfg!(miri) { 8 } else { 200 };
    for _ in 0..rounds {
        let batch: Vec<PooledBuf> = (0..8).map(|_| pool.get(4096)).collect();
        to_dropper.send(batch).unwrap();
    }
    drop(to_dropper);
    dropper.join().unwrap();
    let stats = pool.stats();
    // The limit after each slow path, plus the hits since (a cache's
    // depth): at most twice the limit, never the whole budget.
    assert!(
        stats.credit_bytes <= 2 * CACHE,
        "credit {}: {stats}",
        stats.credit_bytes
    );
    assert_eq!(stats.classes[0].dropped_full, 0, "{stats}");
    // What the dropper's cache spilled and flushed came back to the taker:
    // misses are the blocks in flight (batches in the channel, two caches),
    // not a share of all gets.
    assert!(stats.classes[0].misses <= 100, "{stats}");
}

#[test]
fn dropping_the_pool_with_buffers_out_is_fine() {
    let (pool, events) =
        recording_pool(Pool::builder().size_classes(SizeClasses::from_sizes(&[100]).unwrap()));
    let kept = pool.get(100);
    let idle = pool.get(100);
    let mut out = pool.get(100);
    drop(idle); // idle in this thread's cache
    out.extend_from_slice(b"still mine");
    drop(pool);
    assert_eq!(&out[..], b"still mine");
    out.extend_from_slice(&[0; 200]); // grows through the closed pool
    drop(out);
    std::thread::spawn(move || drop(kept)).join().unwrap();
    let seen = events.lock().unwrap().clone();
    assert!(
        seen.contains(&Event::Trimmed {
            buffers: 1,
            bytes: 100,
            reason: TrimReason::PoolClosed
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Event::Dropped {
            capacity: 100,
            reason: DropReason::PoolClosed
        }),
        "{seen:?}"
    );
}

#[test]
fn many_pools_on_one_thread() {
    for _ in 0..ROUNDS.min(50) {
        let pool = small_pool();
        let mut buf = pool.get(100);
        buf.extend_from_slice(b"x");
        drop(buf);
    }
    // Closed pools' caches are purged when a new pool registers.
    let pool = small_pool();
    drop(pool.get(100));
    assert_eq!(pool.stats().thread_caches, 1);
}

#[test]
fn borrows_an_idle_buffer_from_a_larger_class() {
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100, 200, 300, 400]).unwrap())
        .thread_cache_bytes(0)
        .build();
    let big = pool.get(400);
    drop(pool.get(300));
    let buf = pool.get(100);
    assert_eq!(buf.capacity(), 300, "two classes up is close enough");
    drop(buf);
    let buf = pool.get(200);
    assert_eq!(buf.capacity(), 300);
    drop((buf, big));
    let stats = pool.stats();
    assert_eq!(stats.classes[0].misses + stats.classes[1].misses, 0);
    assert_eq!(stats.classes[2].shared_hits, 2);
    assert_eq!(stats.in_use_bytes, 0);
}

#[test]
fn dropping_from_a_thread_local_destructor() {
    struct DropsLate(Option<PooledBuf>);
    impl Drop for DropsLate {
        fn drop(&mut self) {
            drop(self.0.take());
        }
    }
    std::thread_local! {
        static LATE: std::cell::RefCell<DropsLate> = const { std::cell::RefCell::new(DropsLate(None)) };
    }
    let pool = small_pool();
    let p = pool.clone();
    std::thread::spawn(move || {
        // Registered before and after the pool's own thread-local, so one
        // of them is destroyed after the pool's caches are gone.
        LATE.with(|l| l.borrow_mut().0 = Some(p.get(100)));
        drop(p.get(200));
        LATE.with(|l| {
            let mut l = l.borrow_mut();
            let first = l.0.take();
            l.0 = Some(p.get(300));
            drop(first);
        });
    })
    .join()
    .unwrap();
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert_eq!(stats.thread_caches, 0);
}

#[test]
fn stress_pattern_across_threads() {
    let pool = Pool::builder()
        .size_classes(SizeClasses::geometric(64, 1 << 14, 2).unwrap())
        .thread_cache_bytes(1 << 10)
        .shared_tier_bytes(1 << 12)
        .max_retained_bytes(1 << 16)
        .build();
    let threads = 4;
    let rounds = if cfg!(miri) { 30 } else { 5_000 };
    let (tx, rx) = std::sync::mpsc::sync_channel::<PooledBuf>(64);
    let rx = StdArc::new(StdMutex::new(rx));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let pool = pool.clone();
            let tx = tx.clone();
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut seed = t as u64 * 7919 + 1;
                for i in 0..rounds {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let size = (seed % if cfg!(miri) { 300 } else { 1 << 15 }) as usize;
                    let mut buf = pool.get(size);
                    assert!(buf.is_empty());
                    let tag = (seed >> 40) as u8;
                    buf.resize(size, tag);
                    assert!(buf.iter().all(|&b| b == tag));
                    if i % 3 == 0 {
                        let _ = tx.try_send(buf); // another thread drops it
                    }
                    if let Ok(other) = rx.lock().unwrap().try_recv() {
                        let first = other.first().copied();
                        assert!(other.iter().all(|&b| Some(b) == first));
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for h in handles {
        h.join().unwrap();
    }
    drop(rx);
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert!(stats.retained_bytes <= 1 << 16);
}

// === trimming on idle (the tick is the clock: no test sleeps) ===
