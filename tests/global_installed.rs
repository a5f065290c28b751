//! `GlobalPool` installed as this test binary's global allocator: plain
//! `Vec` code on many threads, thread exit, a `fork` while threads
//! allocate large blocks, and idle memory back through the trimmer.
// With `--cfg tierpool_global_alloc` the library installs it already.
#![cfg(not(tierpool_global_alloc))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tierpool::GlobalPool;

#[global_allocator]
static GLOBAL: GlobalPool = GlobalPool::new();

/// Plain `Vec` jobs of 64 KiB to 8 MiB, written in 16 KiB rows.
fn jobs(seed: u64, n: usize) -> u64 {
    let mut state = seed | 1;
    let mut sum = 0u64;
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = (64 << 10) + (state as usize % (8 << 20));
        let mut v = Vec::with_capacity(size);
        let row = [state as u8; 16 << 10];
        while v.len() + row.len() <= size {
            v.extend_from_slice(&row);
        }
        sum = sum.wrapping_add(v.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>());
        held.push(v);
        if held.len() > 5 {
            held.remove(0);
        }
    }
    sum
}

#[test]
fn plain_vec_code_on_threads_that_exit() {
    let before = GLOBAL.stats();
    let handles: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || jobs(t + 1, 60)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let after = GLOBAL.stats();
    assert!(after.allocations > before.allocations + 200, "{after}");
    assert!(
        after.reused > before.reused,
        "idle pages served later jobs: {after}"
    );
    // Growing a Vec by appends: realloc by mremap.
    let mut v: Vec<u8> = Vec::new();
    for i in 0..1024u32 {
        v.extend_from_slice(&[i as u8; 64 << 10]);
    }
    assert_eq!(v.len(), 64 << 20);
    assert!(v.chunks(64 << 10).enumerate().all(|(i, c)| c[0] == i as u8));
    assert!(GLOBAL.stats().remapped > after.remapped);
}

#[test]
fn a_pool_and_the_global_allocator_work_together() {
    let pool = tierpool::Pool::new();
    let mut frame = pool.get(3 << 20);
    frame.resize(3 << 20, 7);
    let copy: Vec<u8> = frame.to_vec(); // a large Vec: the global tier
    assert_eq!(copy.len(), 3 << 20);
    drop(frame);
    drop(copy);
    assert!(pool.stats().retained_bytes >= 3 << 20);
}

#[cfg(target_os = "linux")]
#[test]
fn a_fork_while_threads_allocate_large_blocks() {
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += jobs(t + 7, 4);
                }
                n
            })
        })
        .collect();
    for _ in 0..10 {
        // SAFETY: the child uses only this crate's allocator and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| jobs(99, 8) > 0).unwrap_or(false);
            // SAFETY: ends the child without the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let start = Instant::now();
        let status = loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                // SAFETY: our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().unwrap();
    }
}

#[test]
fn idle_pages_go_back_within_two_trim_intervals() {
    let v = vec![1u8; 32 << 20];
    drop(v);
    assert!(GLOBAL.stats().idle_bytes > 0);
    // The trimmer unmaps what stayed idle through a whole interval (5 s);
    // other tests of this binary may allocate meanwhile, so wait for the
    // idle pages to fall, not for zero.
    let start = Instant::now();
    while GLOBAL.stats().trimmed_bytes < 32 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "not trimmed: {}",
            GLOBAL.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
