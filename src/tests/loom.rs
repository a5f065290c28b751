//! Every handoff between a thread cache, the shared tier, the trimmer and a
//! closing pool, model-checked. Run with
//! `RUSTFLAGS="--cfg tierpool_loom" cargo test --lib --release loom`
//! (debug assertions on: see `.ci/run`).

use loom::thread;

use crate::{Pool, SizeClasses};

/// One class, one slot per thread cache, two in the shared tier: every
/// return beyond the first spills, every second get refills.
fn tiny_pool() -> Pool {
    Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[64]).unwrap())
        .thread_cache_bytes(64)
        .shared_tier_bytes(128)
        .max_retained_bytes(192)
        .memory_limit(crate::MemoryLimit::Unlimited)
        .build()
}

fn use_buffer(pool: &Pool, tag: u8) -> crate::PooledBuf {
    let mut buf = pool.get(64);
    assert!(buf.is_empty());
    buf.resize(64, tag);
    buf
}

/// Call once every other thread has flushed its cache: loom's `join`
/// returns before a thread's thread-locals are destroyed (std's waits), so
/// threads flush explicitly to make the end state deterministic.
fn check_quiescent(pool: &Pool) {
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert!(stats.reserved_bytes <= 192, "{stats}");
    pool.trim();
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 0, "{stats}");
}

#[test]
fn thread_cache_spills_to_and_refills_from_the_shared_tier() {
    loom::model(|| {
        let pool = tiny_pool();
        let p = pool.clone();
        let spiller = thread::spawn(move || {
            let a = use_buffer(&p, 1);
            let b = use_buffer(&p, 2);
            drop(a); // into the slot
            drop(b); // spills `a` to the shared tier
            p.flush_thread_cache();
        });
        let buf = use_buffer(&pool, 3);
        assert!(buf.iter().all(|&b| b == 3));
        drop(buf);
        spiller.join().unwrap();
        check_quiescent(&pool);
    });
}

#[test]
fn buffer_returned_on_another_thread() {
    loom::model(|| {
        let pool = tiny_pool();
        let buf = use_buffer(&pool, 7);
        let p = pool.clone();
        let other = thread::spawn(move || {
            assert!(buf.iter().all(|&b| b == 7));
            drop(buf);
            drop(use_buffer(&p, 8));
            p.flush_thread_cache();
        });
        drop(use_buffer(&pool, 9));
        other.join().unwrap();
        check_quiescent(&pool);
    });
}

#[test]
fn trim_races_with_get_and_return() {
    loom::model(|| {
        let pool = tiny_pool();
        drop(use_buffer(&pool, 1));
        let p = pool.clone();
        let worker = thread::spawn(move || {
            let buf = use_buffer(&p, 2);
            drop(buf);
            p.flush_thread_cache();
        });
        pool.trim(); // may find the worker's cache busy or take its block
        worker.join().unwrap();
        check_quiescent(&pool);
    });
}

#[test]
fn idle_tick_races_with_the_owner() {
    loom::model(|| {
        let pool = tiny_pool();
        let inner = pool.clone();
        let p = pool.clone();
        let owner = thread::spawn(move || {
            drop(use_buffer(&p, 1));
            drop(use_buffer(&p, 2));
            p.flush_thread_cache();
        });
        // Two ticks: the second frees whatever the first saw idle,
        // possibly while the owner takes it back.
        inner.tick_now();
        inner.tick_now();
        owner.join().unwrap();
        drop(inner);
        check_quiescent(&pool);
    });
}

#[test]
fn last_handle_drops_while_another_thread_returns() {
    loom::model(|| {
        let pool = tiny_pool();
        let buf = use_buffer(&pool, 5);
        let worker = thread::spawn(move || {
            // Returned into this thread's cache, or freed because the pool
            // closed: either way the pool and the block are freed in the
            // end, which loom's leak check at the end of the model proves.
            drop(buf);
        });
        drop(pool);
        worker.join().unwrap();
    });
}

#[test]
fn thread_exit_flush_races_with_trim() {
    loom::model(|| {
        let pool = tiny_pool();
        let p = pool.clone();
        let worker = thread::spawn(move || drop(use_buffer(&p, 4)));
        pool.trim();
        worker.join().unwrap();
        // No explicit flush: the thread-local destructor flushes, and may
        // still run after `join` under loom. Whatever the order, the counts
        // balance, and loom's leak check proves everything was freed.
        let stats = pool.stats();
        assert_eq!(stats.in_use_bytes, 0, "{stats}");
        assert!(stats.retained_buffers <= 1);
    });
}

#[test]
fn a_waiter_woken_by_a_return_races_its_timeout() {
    loom::model(|| {
        // One 64-byte buffer fits the budget; the waiter needs the one that
        // is out. Either the return admits it, or its timeout wins; either
        // way it leaves the queue and the books balance.
        let pool = Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[64]).unwrap())
            .thread_cache_bytes(0)
            .shared_tier_bytes(64)
            .max_in_use_bytes(64)
            .memory_limit(crate::MemoryLimit::Unlimited)
            .build();
        let held = pool.get(64);
        let p = pool.clone();
        let returner = thread::spawn(move || {
            // Some work first, so the waiter may time out before the return.
            p.trim();
            drop(held);
        });
        match pool.get_timeout(64, std::time::Duration::from_secs(1)) {
            Ok(buf) => assert_eq!(buf.capacity(), 64),
            Err(e) => assert!(matches!(e, crate::Error::TimedOut { .. }), "{e}"),
        }
        returner.join().unwrap();
        let stats = pool.stats();
        assert_eq!(stats.in_use_bytes, 0, "{stats}");
        assert!(pool.no_waiters(), "left the queue");
    });
}

#[test]
fn a_block_assembled_from_idle_pages_races_a_return_and_a_trim() {
    loom::model(|| {
        // Mapped classes: idle memory is pages of the large tier. The 128
        // KiB class also has thread-cache slots, so its blocks move between
        // a thread and the tier. A 2 MiB request that no idle run holds is
        // assembled from the idle pages (moved with mremap) while another
        // thread returns a block into its cache, flushes it into the tier,
        // and trims the tier.
        let pool = Pool::builder()
            .size_classes(
                SizeClasses::from_sizes(&[128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20])
                    .unwrap(),
            )
            .thread_cache_bytes(256 << 10)
            .memory_limit(crate::MemoryLimit::Unlimited)
            .build();
        drop(pool.get(1 << 20)); // 1 MiB of idle pages
        let out = pool.get(128 << 10); // cut from them
        let p = pool.clone();
        let other = thread::spawn(move || {
            drop(out);
            p.flush_thread_cache();
            p.trim();
        });
        let mut big = pool.get(2 << 20);
        assert_eq!(big.capacity(), 2 << 20);
        big.extend_from_slice(&[7; 4096]);
        assert!(big.iter().all(|&b| b == 7));
        drop(big);
        other.join().unwrap();
        // Whether the request took idle pages or the trim took them first,
        // nothing is in use, and a trim unmaps every page and mapping.
        let stats = pool.stats();
        assert_eq!(stats.in_use_bytes, 0, "{stats}");
        assert_eq!(
            stats.large.assembled + stats.classes[4].misses,
            1,
            "assembled, or fresh after the trim: {stats}"
        );
        pool.trim();
        let stats = pool.stats();
        assert_eq!(stats.retained_bytes, 0, "{stats}");
        assert_eq!(stats.large.mappings, 0, "{stats}");
    });
}

#[test]
fn two_requests_with_room_for_one_never_both_get_it() {
    loom::model(|| {
        // Room for one 64-byte buffer under the budget; two threads ask for
        // one each through admission at once and hold what they got until
        // both have asked. Admission reserves by compare-and-swap before it
        // allocates, so exactly one is served.
        let pool = Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[64]).unwrap())
            .thread_cache_bytes(0)
            .shared_tier_bytes(64)
            .max_in_use_bytes(64)
            .memory_limit(crate::MemoryLimit::Unlimited)
            .build();
        let p = pool.clone();
        let (asked_tx, asked_rx) = loom::sync::mpsc::channel();
        let (done_tx, done_rx) = loom::sync::mpsc::channel::<()>();
        let other = thread::spawn(move || {
            let buf = p.try_get(64);
            asked_tx.send(buf.is_ok()).unwrap();
            done_rx.recv().unwrap();
            drop(buf);
        });
        let mine = pool.try_get(64);
        let theirs = asked_rx.recv().unwrap();
        let served = usize::from(mine.is_ok()) + usize::from(theirs);
        assert_eq!(served, 1, "room for one, both asked at once");
        done_tx.send(()).unwrap();
        drop(mine);
        other.join().unwrap();
        let stats = pool.stats();
        assert_eq!(stats.in_use_bytes, 0, "{stats}");
        assert_eq!(
            stats.set_aside_bytes, 0,
            "every reservation went back: {stats}"
        );
    });
}

#[test]
fn two_permits_with_room_for_one_never_both_get_it() {
    loom::model(|| {
        // Permits hold their reservation until dropped: two admissions of
        // the whole budget at once, held until both have asked.
        let pool = Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[64]).unwrap())
            .thread_cache_bytes(0)
            .max_in_use_bytes(64)
            .memory_limit(crate::MemoryLimit::Unlimited)
            .build();
        let p = pool.clone();
        let (asked_tx, asked_rx) = loom::sync::mpsc::channel();
        let (done_tx, done_rx) = loom::sync::mpsc::channel::<()>();
        let other = thread::spawn(move || {
            let permit = p.admit(64, std::time::Duration::ZERO);
            asked_tx.send(permit.is_ok()).unwrap();
            done_rx.recv().unwrap();
            drop(permit);
        });
        let mine = pool.admit(64, std::time::Duration::ZERO);
        let theirs = asked_rx.recv().unwrap();
        assert!(!(mine.is_ok() && theirs), "both permits took the last room");
        done_tx.send(()).unwrap();
        drop(mine);
        other.join().unwrap();
        assert_eq!(pool.stats().set_aside_bytes, 0);
    });
}
