//! Unit tests of the thread cache and its lock.

use std::sync::mpsc;

use super::*;

/// A cache outside any table and pool: its exit flush never runs.
fn cache() -> Arc<ThreadCache> {
    unsafe fn never(_: NonNull<()>, _: *const ThreadCache, _: &mut CacheState) {
        unreachable!("the cache is in no table");
    }
    let classes = [ClassLayout {
        capacity: 4096,
        depth: 4,
    }];
    Arc::new(ThreadCache::new(
        1,
        &classes,
        ExitFlush {
            pool: NonNull::dangling(),
            run: never,
        },
    ))
}

#[test]
fn another_thread_skips_or_waits_for_an_owner_inside() {
    let cache = cache();
    let (inside_tx, inside) = mpsc::channel();
    let (leave, leave_rx) = mpsc::channel::<()>();
    let owner = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let guard = cache.try_lock().expect("nobody else is inside");
            inside_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
            drop(guard);
        })
    };
    inside.recv().unwrap();
    let caches = [cache.clone()];
    // An idle tick skips a cache whose owner is inside...
    assert!(lock_all(&caches, 100, 1).is_empty());
    // ...and the owner can go on: the tick let go of its claim.
    leave.send(()).unwrap();
    owner.join().unwrap();
    // Once the owner is out, another thread gets in.
    let guards = lock_all(&caches, 100, 1);
    assert_eq!(guards.len(), 1);
    // While it is in, the owner's way in says no, and does not wait.
    let (tried_tx, tried) = mpsc::channel();
    {
        let cache = cache.clone();
        std::thread::spawn(move || tried_tx.send(cache.try_lock().is_none()).unwrap());
    }
    assert!(tried.recv().unwrap(), "the owner stayed out");
    drop(guards);
    assert!(cache.try_lock().is_some(), "and gets in once it is let go");
}

#[test]
fn a_waiting_pass_gets_in_when_the_owner_leaves() {
    let cache = cache();
    let (inside_tx, inside) = mpsc::channel();
    let owner = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let mut guard = cache.try_lock().expect("nobody else is inside");
            inside_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            // What the owner wrote is seen by the next holder.
            guard.with(|state| state.credit = 4096);
        })
    };
    inside.recv().unwrap();
    let caches = [cache.clone()];
    let mut guards = lock_all(&caches, u32::MAX, u32::MAX);
    assert_eq!(guards.len(), 1, "waited for the owner");
    assert_eq!(guards[0].with(|state| state.credit), 4096);
    drop(guards);
    owner.join().unwrap();
}

#[test]
fn two_passes_of_other_threads_take_turns() {
    let cache = cache();
    let caches = [cache.clone()];
    let first = lock_all(&caches, 100, 1);
    assert_eq!(first.len(), 1);
    // A second pass meanwhile waits out its patience and goes without.
    assert!(lock_all(&caches, 3, 1).is_empty());
    drop(first);
    assert_eq!(lock_all(&caches, 3, 1).len(), 1);
}

#[test]
fn hits_are_derived_exactly() {
    let cache = cache();
    let mut guard = cache.try_lock().unwrap();
    guard.with(|state| {
        state.credit = 3 * 4096;
        let blocks: Vec<NonNull<u8>> = (1..=3usize)
            .map(|i| NonNull::new(std::ptr::without_provenance_mut(i * 64)).unwrap())
            .collect();
        assert!(state.stock(0, blocks[0]).is_ok());
        assert!(state.put(0, blocks[1]));
        assert!(state.put(0, blocks[2]));
        assert_eq!(state.take(0).map(|(b, _)| b), Some(blocks[2]));
        assert_eq!(state.take(0).map(|(b, _)| b), Some(blocks[1]));
        assert_eq!(state.hits(0), 2);
        let mut out = Vec::new();
        state.take_oldest(0, 1, |b| out.push(b));
        assert_eq!(out, [blocks[0]]);
        assert_eq!(state.hits(0), 2, "moving blocks out is no hit");
        assert_eq!(state.classes()[0].returns, 2);
        assert!(state.take(0).is_none());
        assert_eq!(state.hits(0), 2);
    });
}
