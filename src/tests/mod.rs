//! Unit tests over every unsafe path; they run under miri too, so sizes
//! scale with `cfg!(miri)`.

use std::sync::Arc as StdArc;
use std::sync::Mutex as StdMutex;

use bytes::BufMut;

use crate::{AllocReason, DropReason, Error, Event, Pool, PooledBuf, SizeClasses, TrimReason};

mod close;

const ROUNDS: usize = if cfg!(miri) { 20 } else { 2_000 };

fn small_pool_builder() -> crate::PoolBuilder {
    Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100, 200, 300]).unwrap())
        .thread_cache_bytes(400)
}

/// Small classes; no idle trimming, so exact counts never race a tick.
fn small_pool() -> Pool {
    small_pool_builder()
        .trim_interval(std::time::Duration::ZERO)
        .build()
}

fn recording_pool(builder: crate::PoolBuilder) -> (Pool, StdArc<StdMutex<Vec<Event>>>) {
    let events = StdArc::new(StdMutex::new(Vec::new()));
    let sink = events.clone();
    let pool = builder
        .on_event(move |e| sink.lock().unwrap().push(*e))
        .build();
    (pool, events)
}

#[test]
fn get_rounds_up_and_reuses() {
    let pool = small_pool();
    let buf = pool.get(150);
    assert_eq!(buf.capacity(), 200);
    assert_eq!(buf.len(), 0);
    let ptr = buf.as_ptr();
    drop(buf);
    let again = pool.get(101);
    assert_eq!(
        again.as_ptr(),
        ptr,
        "the thread cache hands the same block back"
    );
    let stats = pool.stats();
    assert_eq!(stats.classes[1].misses, 1);
    assert_eq!(stats.classes[1].thread_cache_hits, 1);
    assert_eq!(stats.in_use_bytes, 200);
    drop(again);
    let stats = pool.stats();
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 200));
}

#[test]
fn reused_buffers_show_no_stale_bytes() {
    let pool = small_pool();
    let mut buf = pool.get(300);
    buf.resize(300, 0xAA);
    drop(buf);
    let mut buf = pool.get(300);
    assert!(buf.is_empty());
    buf.resize(300, 0);
    assert!(buf.iter().all(|&b| b == 0));
    buf.clear();
    buf.put_bytes(7, 10);
    assert_eq!(&buf[..], &[7; 10]);
    buf.truncate(3);
    buf.extend([1u8, 2]);
    assert_eq!(&buf[..], &[7, 7, 7, 1, 2]);
}

#[test]
fn growing_moves_to_a_larger_class_through_the_pool() {
    let pool = small_pool();
    let mut buf = pool.get(10);
    buf.extend_from_slice(&[1; 100]);
    assert_eq!(buf.capacity(), 100);
    buf.extend_from_slice(&[2; 50]);
    assert_eq!(buf.capacity(), 200, "doubling, rounded to a class");
    assert_eq!(&buf[..100], &[1; 100]);
    assert_eq!(&buf[100..], &[2; 50]);
    buf.extend_from_slice(&[3; 200]);
    assert_eq!(
        buf.capacity(),
        400,
        "above the largest class: exact, but still doubling as it grows"
    );
    let stats = pool.stats();
    assert_eq!(stats.oversize_allocations, 1);
    assert_eq!(stats.in_use_bytes, 400);
    assert_eq!(
        stats.retained_bytes, 300,
        "the 100 and 200 blocks went back"
    );
    drop(buf);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn io_write_and_bufmut_grow() {
    use std::io::Write;
    let pool = small_pool();
    let mut buf = pool.get(1);
    for i in 0..100u32 {
        write!(buf, "{i},").unwrap();
    }
    let text = String::from_utf8(buf.to_vec()).unwrap();
    assert!(text.starts_with("0,1,2,") && text.ends_with("98,99,"));
    let mut buf = pool.get(1);
    buf.put_slice(&[9; 250]);
    buf.put_u32(0xdead_beef);
    assert_eq!(buf.len(), 254);
    assert_eq!(&buf[250..], &0xdead_beef_u32.to_be_bytes());
    let n = buf
        .write_vectored(&[std::io::IoSlice::new(b"ab"), std::io::IoSlice::new(b"cd")])
        .unwrap();
    assert_eq!(n, 4);
    assert!(buf.ends_with(b"abcd"));
}

#[test]
fn chunk_mut_exposes_only_uninit_spare_capacity() {
    let pool = small_pool();
    let mut buf = pool.get(100);
    buf.resize(100, 0xEE);
    drop(buf);
    let mut buf = pool.get(100);
    let chunk = buf.chunk_mut();
    assert_eq!(chunk.len(), 100);
    chunk.copy_from_slice(&[1; 100]);
    // SAFETY: the whole chunk was just written.
    unsafe { buf.advance_mut(100) };
    assert_eq!(&buf[..], &[1; 100]);
    let chunk = buf.chunk_mut();
    assert!(chunk.len() > 0, "a full buffer grows for chunk_mut");
}

#[test]
#[should_panic(expected = "advance_mut")]
fn advance_mut_past_capacity_panics() {
    let pool = small_pool();
    let mut buf = pool.get(100);
    // SAFETY: deliberately wrong; the assertion must catch it before `len`
    // moves.
    unsafe { buf.advance_mut(101) };
}

#[test]
fn spare_capacity_and_set_len() {
    let pool = small_pool();
    let mut buf = pool.get(200);
    let spare = buf.spare_capacity_mut();
    assert_eq!(spare.len(), 200);
    for (i, b) in spare.iter_mut().take(5).enumerate() {
        b.write(i as u8);
    }
    // SAFETY: the first five bytes were just written.
    unsafe { buf.set_len(5) };
    assert_eq!(&buf[..], &[0, 1, 2, 3, 4]);
}

#[test]
fn freeze_returns_with_the_last_clone() {
    let pool = small_pool();
    let mut buf = pool.get(200);
    buf.extend_from_slice(b"frozen");
    let bytes = buf.freeze();
    let clone = bytes.slice(1..3);
    assert_eq!(&clone[..], b"ro");
    drop(bytes);
    assert_eq!(pool.stats().in_use_bytes, 200);
    let other_thread = std::thread::spawn(move || drop(clone));
    other_thread.join().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 200));
}

#[test]
fn into_vec_detaches() {
    let pool = small_pool();
    let mut buf = pool.get(150);
    buf.extend_from_slice(b"keep");
    let mut vec = buf.into_vec();
    assert_eq!(vec, b"keep");
    assert_eq!(vec.capacity(), 200);
    vec.extend_from_slice(&[0; 1000]); // Vec may realloc the block: same layout
    let stats = pool.stats();
    assert_eq!(stats.classes[1].detached, 1);
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 0));
    let big = pool.get(1000).into_vec();
    assert_eq!(big.capacity(), 1000);
    assert_eq!(pool.stats().oversize_in_use_bytes, 0);
    assert!(PooledBuf::new().into_vec().is_empty());
}

#[test]
fn empty_buffer_grows_from_the_global_pool() {
    let mut buf = PooledBuf::default();
    assert_eq!(buf.capacity(), 0);
    assert!(buf.is_empty());
    buf.extend_from_slice(b"hello");
    assert!(buf.capacity() >= 4096);
    assert_eq!(&buf[..], b"hello");
}

#[test]
fn absurd_sizes_are_errors() {
    let pool = small_pool();
    assert_eq!(
        pool.try_get(usize::MAX).unwrap_err(),
        Error::CapacityOverflow {
            requested: usize::MAX
        }
    );
    assert!(matches!(
        pool.try_get(isize::MAX as usize + 1),
        Err(Error::CapacityOverflow { .. })
    ));
    let mut buf = pool.get(10);
    buf.extend_from_slice(b"x");
    assert!(buf.try_reserve(usize::MAX).is_err());
    assert_eq!(
        &buf[..],
        b"x",
        "a failed reserve leaves the buffer as it was"
    );
    let stats = pool.stats();
    assert_eq!(stats.in_use_buffers, 1);
    assert_eq!(stats.oversize_allocations, 0);
}

#[cfg(not(miri))] // miri's allocator would try to provide a petabyte
#[test]
fn allocation_failure_is_an_error() {
    let pool = small_pool();
    assert_eq!(
        pool.try_get(1 << 50).unwrap_err(),
        Error::AllocFailed { size: 1 << 50 }
    );
    use std::io::Write;
    let mut buf = pool.get(10);
    let err = buf.write_all(&[]).and_then(|_| {
        buf.try_reserve(1 << 50)?;
        Ok(())
    });
    assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::OutOfMemory);
    assert_eq!(pool.stats().in_use_buffers, 1);
}

#[test]
#[should_panic(expected = "capacity overflow")]
fn get_panics_on_impossible_sizes() {
    let _ = small_pool().get(usize::MAX);
}

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

fn idle_pool(builder: crate::PoolBuilder) -> (Pool, StdArc<crate::pool::PoolInner>) {
    let pool = builder.trim_interval(std::time::Duration::ZERO).build();
    let inner = pool.inner_arc().clone();
    (pool, inner)
}

fn tick(inner: &StdArc<crate::pool::PoolInner>) {
    crate::pool::PoolInner::tick(inner);
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
    let inner = pool.inner_arc().clone();
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

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn read_to_end_through_short_reads_and_a_liar() {
    struct Short<'a>(&'a [u8]);
    impl std::io::Read for Short<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    struct Liar;
    impl std::io::Read for Liar {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            Ok(buf.len() + 1)
        }
    }
    let pool = Pool::builder()
        .size_classes(SizeClasses::geometric(64, 1 << 16, 2).unwrap())
        .trim_interval(std::time::Duration::ZERO)
        .build();
    let len = if cfg!(miri) { 3000 } else { 300_000 };
    let data: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
    let chunks = pool.read_to_end(Short(&data)).unwrap();
    assert_eq!(chunks.to_vec(), data);
    let one = chunks.into_contiguous();
    assert_eq!(&one[..], &data[..]);
    drop(one);
    let err = pool.read_to_end(Liar).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let mut writer = pool.writer();
    writer.put_slice(&data);
    std::io::Write::write_all(&mut writer, b"end").unwrap();
    let bytes = writer.freeze();
    assert_eq!(&bytes[..len], &data[..]);
    assert_eq!(&bytes[len..], b"end");
    drop(bytes);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_return_short_of_credit_does_not_spill_a_cache_with_room() {
    // Class 100 keeps four per thread, refilled and reserved one batch
    // (two) at a time: the third return is short of credit, not of room.
    let pool = small_pool();
    let bufs: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    drop(bufs);
    let again: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    let class = &pool.stats().classes[0];
    assert_eq!(
        class.thread_cache_hits, 3,
        "all three stayed in this thread's cache"
    );
    assert_eq!(class.shared_hits, 0);
    drop(again);
}

/// Mapped classes of 128 KiB to 2 MiB, no thread caches, no idle trimming.
#[cfg(all(target_os = "linux", not(miri)))]
fn mapped_pool() -> Pool {
    const K: usize = 1 << 10;
    Pool::builder()
        .size_classes(
            SizeClasses::from_sizes(&[128 * K, 256 * K, 512 * K, 1024 * K, 2048 * K]).unwrap(),
        )
        .thread_cache_bytes(0)
        .trim_interval(std::time::Duration::ZERO)
        .memory_limit(crate::MemoryLimit::Unlimited)
        .build()
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn a_request_is_cut_from_an_idle_run_of_any_class_and_assembled_when_none_holds_it() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let mut big = pool.get(2048 * K);
    big.resize(2048 * K, 0xAB);
    drop(big); // 2 MiB of idle pages in the large tier
    let mut small = pool.get(100 * K);
    assert_eq!(small.capacity(), 128 * K);
    assert!(small.is_empty(), "never the old bytes");
    small.resize(128 * K, 1);
    let stats = pool.stats();
    assert_eq!(stats.classes[0].shared_hits, 1, "cut from the run: {stats}");
    assert_eq!(stats.classes[0].misses, 0);
    assert_eq!(stats.large.cut, 1);
    assert_eq!(
        stats.retained_bytes,
        (2048 - 128) * K,
        "the rest stays idle"
    );
    assert_eq!(stats.in_use_bytes, 128 * K);
    // 1920 KiB idle cannot hold 2 MiB: its pages move into a new block and
    // only the missing 128 KiB are fresh.
    let mut grown = pool.get(2048 * K);
    grown.resize(2048 * K, 2);
    assert!(grown.iter().all(|&b| b == 2));
    let stats = pool.stats();
    assert_eq!(stats.classes[4].fit_hits, 1, "{stats}");
    assert_eq!(stats.classes[4].fit_grown_bytes, 128 * K as u64);
    assert_eq!(stats.classes[4].misses, 1, "only the first 2 MiB was fresh");
    assert_eq!(stats.large.assembled, 1);
    assert_eq!(stats.large.moved_bytes, (2048 - 128) * K as u64);
    assert_eq!(stats.retained_bytes, 0);
    assert!(
        small.iter().all(|&b| b == 1),
        "the cut block kept its bytes"
    );
    drop((small, grown));
    assert_eq!(pool.stats().retained_bytes, (2048 + 128) * K);
    pool.trim();
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.retained_bytes, 0);
    assert_eq!(stats.large.trimmed_bytes, (2048 + 128) * K as u64);
    assert_eq!(stats.large.mappings, 0, "every mapping unmapped: {stats}");
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn idle_pages_of_four_blocks_serve_one_four_times_their_size_without_fresh_pages() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let held: Vec<_> = (0..4u8)
        .map(|i| {
            let mut b = pool.get(512 * K);
            b.resize(512 * K, i);
            b
        })
        .collect();
    drop(held);
    let mut big = pool.get(2048 * K);
    assert!(big.is_empty());
    big.resize(2048 * K, 9);
    assert!(big.iter().all(|&b| b == 9));
    let stats = pool.stats();
    let class = &stats.classes[4];
    assert_eq!(class.misses, 0, "{stats}");
    assert_eq!(class.shared_hits + class.fit_hits, 1);
    assert_eq!(class.fit_grown_bytes, 0, "no fresh pages");
    assert_eq!(stats.retained_bytes, 0);
    drop(big);
    assert_eq!(pool.stats().retained_bytes, 2048 * K);
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_idle_tick_unmaps_large_pages_that_stayed_idle_all_interval() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let inner = pool.inner_arc().clone();
    let a = pool.get(1024 * K);
    let b = pool.get(1024 * K);
    drop(a);
    tick(&inner); // idle during the interval's end only: kept
    assert_eq!(pool.stats().retained_bytes, 1024 * K);
    drop(b);
    let again = pool.get(512 * K); // cut from the idle 1 MiB; `b` is hot
    // What stayed idle all interval: the other 512 KiB of `a`. The hot
    // block joins the runs now and goes at the next tick if unused.
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 1024 * K, "{stats}");
    assert_eq!(stats.large.trimmed_bytes, 512 * K as u64);
    assert_eq!(stats.large.hot_blocks, 0);
    drop(again);
    tick(&inner);
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 0, "{stats}");
    assert_eq!(stats.large.mappings, 0);
    assert_eq!(stats.released_bytes, 2048 * K as u64);
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_large_tier_holds_no_untouched_pages() {
    // Every page the large tier maps is resident from the start, so the
    // pool's byte count is what it really uses (admission's estimate adds
    // growth of that count to the last sample of the container's memory).
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let buf = pool.get(1024 * K);
    let mut resident = vec![0u8; 1024 * K / crate::os::PAGE];
    // SAFETY: the buffer's pages are a mapping of 1 MiB that `buf` keeps
    // alive; `resident` has one byte per page.
    let rc = unsafe {
        libc::mincore(
            buf.as_ptr().cast_mut().cast(),
            1024 * K,
            resident.as_mut_ptr().cast(),
        )
    };
    assert_eq!(rc, 0);
    assert!(resident.iter().all(|&r| r & 1 == 1), "an untouched page");
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn an_assembly_emits_its_moved_and_fresh_bytes() {
    const K: usize = 1 << 10;
    let (pool, events) = recording_pool(
        Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[128 * K, 2048 * K]).unwrap())
            .thread_cache_bytes(0)
            .trim_interval(std::time::Duration::ZERO)
            .memory_limit(crate::MemoryLimit::Unlimited),
    );
    drop(pool.get(2048 * K));
    let small = pool.get(128 * K); // cut from the idle run: no event
    let big = pool.get(2048 * K);
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            Event::Allocated {
                capacity: 2048 * K,
                reason: crate::AllocReason::Miss
            },
            Event::Assembled {
                capacity: 2048 * K,
                moved: 1920 * K,
                fresh: 128 * K
            },
        ]
    );
    assert_eq!(events[1].name(), "assembled");
    assert_eq!(events[1].reason(), "fit");
    assert_eq!(
        events[1].to_string(),
        "assembled 2097152 bytes from idle pages (1966080 moved, 131072 fresh)"
    );
    drop((small, big));
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_block_returned_last_serves_its_class_next_whole() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let mut a = pool.get(1024 * K);
    a.resize(1024 * K, 3);
    let at = a.as_ptr();
    drop(a);
    let stats = pool.stats();
    assert_eq!(stats.large.hot_blocks, 1, "{stats}");
    assert_eq!(stats.retained_bytes, 1024 * K);
    assert_eq!(stats.large.runs, 0, "kept whole, not in the runs");
    let b = pool.get(1000 * K);
    assert_eq!(b.as_ptr(), at, "the same block: its pages are the warmest");
    assert!(b.is_empty(), "never the old bytes");
    let stats = pool.stats();
    assert_eq!(stats.classes[3].shared_hits, 1);
    assert_eq!(stats.large.cut, 0, "no search");
    assert_eq!(stats.large.hot_blocks, 0);
    drop(b);
    // Another class's request drains the hot block into the runs and cuts
    // from it.
    let c = pool.get(256 * K);
    let stats = pool.stats();
    assert_eq!(stats.large.cut, 1, "{stats}");
    assert_eq!(stats.classes[1].misses, 0);
    assert_eq!(stats.retained_bytes, 768 * K);
    drop(c);
    pool.trim();
    assert_eq!(pool.stats().retained_bytes, 0);
    assert_eq!(pool.stats().large.mappings, 0);
}
