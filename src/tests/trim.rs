//! Trimming on idle, tick by tick, without sleeps.

use super::*;

/// A pool whose ticks the test drives ([`Pool::tick_now`]), and a second
/// handle for them.
pub(super) fn idle_pool(builder: crate::PoolBuilder) -> (Pool, Pool) {
    let pool = builder.trim_interval(std::time::Duration::ZERO).build();
    let inner = pool.clone();
    (pool, inner)
}

pub(super) fn tick(pool: &Pool) {
    pool.tick_now();
}

#[test]
fn idle_buffers_go_within_two_ticks() {
    let (pool, inner) = idle_pool(small_pool_builder());
    let bufs: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    drop(bufs);
    assert_eq!(pool.stats().retained_buffers, 3);
    tick(&inner); // used during this interval: kept
    assert_eq!(pool.stats().retained_buffers, 3);
    tick(&inner); // idle through a whole interval: freed
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 0, "{stats}");
    assert_eq!(stats.classes[0].trimmed, 3);
    assert_eq!(stats.trimmed_bytes, 300);
}

#[test]
fn steady_traffic_stays_pooled() {
    let (pool, inner) = idle_pool(small_pool_builder());
    for _ in 0..10 {
        drop(pool.get(200));
        tick(&inner);
    }
    let stats = pool.stats();
    assert_eq!(stats.classes[1].misses, 1, "{stats}");
    assert_eq!(stats.classes[1].thread_cache_hits, 9);
    assert_eq!(stats.retained_buffers, 1);
}

#[test]
fn partly_used_cache_keeps_what_it_used() {
    let (pool, inner) = idle_pool(small_pool_builder());
    let bufs: Vec<_> = (0..4).map(|_| pool.get(100)).collect();
    drop(bufs); // four idle, LIFO
    tick(&inner);
    drop(pool.get(100)); // touches only the top one
    tick(&inner);
    assert_eq!(
        pool.stats().retained_buffers,
        1,
        "the three untouched ones went"
    );
    tick(&inner);
    assert_eq!(pool.stats().retained_buffers, 0);
}

#[test]
fn shared_tier_and_exited_threads_decay_too() {
    let (pool, inner) = idle_pool(small_pool_builder());
    let p = pool.clone();
    std::thread::spawn(move || {
        let bufs: Vec<_> = (0..6).map(|_| p.get(300)).collect();
        drop(bufs);
    })
    .join()
    .unwrap();
    let stats = pool.stats();
    assert_eq!(
        (stats.thread_caches, stats.retained_buffers),
        (0, 6),
        "{stats}"
    );
    tick(&inner);
    drop(pool.get(300)); // takes the oldest queued one, returns it to this thread
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.retained_buffers, 1, "{stats}");
    tick(&inner);
    assert_eq!(pool.stats().retained_bytes, 0);
}

#[test]
fn idle_ticks_reach_threads_that_are_alive_but_idle() {
    let (pool, inner) = idle_pool(small_pool_builder());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let p = pool.clone();
    let worker = std::thread::spawn(move || {
        drop(p.get(200));
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    ready_rx.recv().unwrap();
    tick(&inner);
    tick(&inner);
    assert_eq!(pool.stats().retained_bytes, 0);
    done_tx.send(()).unwrap();
    worker.join().unwrap();
}

#[test]
fn min_retained_bytes_is_a_floor_for_idle_trimming() {
    let (pool, inner) = idle_pool(small_pool_builder().min_retained_bytes(200));
    let bufs: Vec<_> = (0..4).map(|_| pool.get(100)).collect();
    drop(bufs);
    tick(&inner);
    tick(&inner);
    tick(&inner);
    assert_eq!(pool.stats().retained_bytes, 200);
    pool.trim();
    assert_eq!(pool.stats().retained_bytes, 0, "trim() ignores the floor");
}

#[test]
fn the_floor_counts_idle_buffers_not_thread_credit() {
    // Three idle 100s in this thread's cache, and credit reserved beside
    // them: the floor of 300 keeps all three, whatever the credit.
    let (pool, inner) = idle_pool(small_pool_builder().min_retained_bytes(300));
    let bufs: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    drop(bufs);
    let before = pool.stats();
    assert!(before.credit_bytes > 0, "{before}");
    for _ in 0..3 {
        tick(&inner);
    }
    let after = pool.stats();
    assert_eq!(after.retained_bytes, 300, "{after}");
    assert_eq!(after.retained_buffers, 3);
}

#[test]
fn a_class_that_only_received_returns_is_not_drained_at_the_next_tick() {
    let (pool, inner) = idle_pool(small_pool_builder());
    tick(&inner);
    // Returned just before the tick: idle for no whole interval yet.
    let bufs: Vec<_> = (0..2).map(|_| pool.get(100)).collect();
    drop(bufs);
    tick(&inner);
    assert_eq!(
        pool.stats().retained_buffers,
        2,
        "kept through their first tick"
    );
    tick(&inner);
    assert_eq!(
        pool.stats().retained_buffers,
        0,
        "idle a whole interval: freed"
    );
}

#[test]
fn idle_ticks_emit_events() {
    let (pool, events) =
        recording_pool(small_pool_builder().trim_interval(std::time::Duration::ZERO));
    let inner = pool.clone();
    drop(pool.get(100));
    tick(&inner);
    tick(&inner);
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        &seen[1..],
        &[
            Event::Trimmed {
                buffers: 0,
                bytes: 0,
                reason: TrimReason::Idle
            },
            Event::Trimmed {
                buffers: 1,
                bytes: 100,
                reason: TrimReason::Idle
            },
        ]
    );
}

#[test]
fn soak_short_lived_threads_leave_nothing_behind() {
    let (pool, inner) =
        idle_pool(Pool::builder().size_classes(SizeClasses::geometric(64, 1 << 16, 2).unwrap()));
    let rounds = if cfg!(miri) { 4 } else { 250 };
    for round in 0..rounds {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut buf = pool.get(64 << ((round + t) % 10));
                    buf.resize(buf.capacity(), t as u8);
                    drop(pool.get(1000));
                    buf
                })
            })
            .collect();
        // Half the buffers come back on this thread, half on their own.
        for (i, h) in handles.into_iter().enumerate() {
            let buf = h.join().unwrap();
            if i % 2 == 0 {
                drop(buf);
            } else {
                std::thread::spawn(move || drop(buf)).join().unwrap();
            }
        }
        if round % 50 == 0 {
            tick(&inner);
        }
    }
    pool.flush_thread_cache();
    tick(&inner);
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.thread_caches, 0, "{stats}");
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert_eq!(stats.retained_bytes, 0, "{stats}");
}

#[cfg(not(miri))]
#[test]
fn the_trimmer_thread_ticks_on_its_own() {
    let pool = small_pool_builder()
        .trim_interval(std::time::Duration::from_millis(10))
        .build();
    drop(pool.get(100));
    // Waits for an event, not for a duration: the deadline only bounds a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pool.stats().retained_bytes != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the trimmer never freed the idle buffer"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(pool.stats().trim_passes >= 2);
}
