//! Closing a pool: its last handle goes while thread caches are busy or
//! cannot be entered. Whatever close could not reach keeps the pool alive
//! until that cache's own thread is done with it; nothing is used after
//! it is freed (AddressSanitizer and miri run these too).

use std::sync::mpsc;
use std::thread;

use crate::Pool;
use crate::tier::thread_cache;

/// A worker that made a cache for `pool` (emptied by a trim, so no block
/// of it holds a count), then waits for a word before its thread exits.
fn worker_with_an_empty_cache(pool: &Pool) -> (thread::JoinHandle<()>, mpsc::Sender<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let worker = thread::spawn(move || {
        drop(p.get(4096)); // into this thread's cache
        p.trim(); // empties it; the cache stays open
        assert_eq!(p.stats().thread_caches, 1);
        drop(p);
        ready_tx.send(()).unwrap();
        let _ = go_rx.recv();
        // The thread exits here: its cache is flushed into the pool.
    });
    ready_rx.recv().unwrap();
    (worker, go_tx)
}

fn pool() -> Pool {
    Pool::builder()
        .trim_interval(std::time::Duration::ZERO)
        .build()
}

/// Closes a pool whose one open cache (empty, its thread waiting) `close`
/// cannot enter: the cache keeps the pool alive (`alive` says why) until
/// its thread exits, which frees it.
fn a_skipped_cache_keeps_the_pool_until_its_thread_exits(close: impl FnOnce(Pool), alive: &str) {
    let pool = pool();
    let weak = pool.liveness();
    let (worker, go) = worker_with_an_empty_cache(&pool);
    close(pool);
    assert!(weak.is_alive(), "{alive}");
    go.send(()).unwrap();
    worker.join().unwrap();
    assert!(!weak.is_alive(), "freed when that cache's thread exits");
}

#[test]
fn a_cache_held_by_a_trim_pass_at_close_keeps_the_pool_alive_until_its_thread_exits() {
    a_skipped_cache_keeps_the_pool_until_its_thread_exits(
        |pool| {
            // Hold every cache as the trimmer's idle tick does while it
            // unmaps.
            let caches = pool.open_caches();
            let guards = thread_cache::lock_all(&caches, 1, 1);
            assert_eq!(guards.len(), 1);
            // The last handle goes on another thread; close skips the held
            // cache.
            thread::spawn(move || drop(pool)).join().unwrap();
            drop(guards);
            drop(caches);
        },
        "a cache close could not enter keeps the pool alive",
    );
}

#[test]
fn a_close_refused_the_heavy_barrier_leaves_no_cache_a_dangling_pool() {
    a_skipped_cache_keeps_the_pool_until_its_thread_exits(
        |pool| {
            thread::spawn(move || {
                // As a seccomp filter that refuses `membarrier` to this
                // thread.
                crate::sys::membarrier::refuse_on_this_thread();
                drop(pool);
            })
            .join()
            .unwrap();
        },
        "the open cache keeps the pool alive",
    );
}

#[test]
fn a_cache_flushed_by_its_thread_after_close_frees_the_pool_there() {
    let pool = pool();
    let weak = pool.liveness();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let worker = thread::spawn(move || {
        let buf = p.get(4096);
        drop(p.get(4096)); // a cached block, holding its count
        drop(p);
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        drop(buf); // a buffer out past close frees itself
    });
    ready_rx.recv().unwrap();
    let caches = pool.open_caches();
    let guards = thread_cache::lock_all(&caches, 1, 1);
    thread::spawn(move || drop(pool)).join().unwrap();
    drop(guards);
    drop(caches);
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    assert!(!weak.is_alive());
}

#[test]
fn closing_with_every_cache_reachable_frees_the_pool_at_once() {
    let pool = pool();
    let weak = pool.liveness();
    let (worker, go) = worker_with_an_empty_cache(&pool);
    drop(pool);
    assert!(
        !weak.is_alive(),
        "close closed the cache and dropped its count"
    );
    go.send(()).unwrap();
    worker.join().unwrap();
}
