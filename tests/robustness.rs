//! Failure behaviour: panicking hooks, pools dropped while threads live,
//! absurd settings, untrusted labels and hints, idle threads' credit, fork.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use tierpool::{Event, MemoryLimit, Pool, SizeClasses};

fn base() -> tierpool::PoolBuilder {
    // Every test builds its pools through here, in the test process, so
    // this records that process before any test forks.
    test_process();
    Pool::builder().memory_limit(MemoryLimit::Unlimited)
}

/// The test process's id: recorded before any test forks.
fn test_process() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Whether this is the test process, not a child forked by a test. Hooks
/// panic only here: a forked child inherits the other tests' pools, and a
/// panic there would run the test harness's panic hook, whose locks a
/// thread of the parent may have held at the fork (the child's trimmer
/// then waits for them for ever).
fn in_test_process() -> bool {
    std::process::id() == test_process()
}

/// Waits up to 20 s for `cond` (the trimmer runs on its own schedule).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_panicking_hook_loses_the_event_and_nothing_else() {
    let pool = base()
        .size_classes(SizeClasses::from_sizes(&[100]).unwrap())
        .on_event(|e| {
            if matches!(e, Event::Allocated { .. } | Event::Dropped { .. }) && in_test_process() {
                panic!("hook bug");
            }
        })
        .build();
    let buf = pool.get(100); // Allocated: the hook panics, caught
    let big = pool.get(1000); // oversize: Allocated again
    drop(big); // Dropped (oversize) inside `PooledBuf::drop`: caught
    drop(buf);
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert_eq!(stats.hook_panics, 3);
    assert_eq!(stats.retained_buffers, 1);
}

#[test]
fn a_hook_is_not_called_while_unwinding() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let pool = base()
        .on_event(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
            if in_test_process() {
                panic!("would abort if called during unwinding");
            }
        })
        .build();
    let p = pool.clone();
    let result = std::thread::spawn(move || {
        let _oversize = p.get(1 << 30 >> 2 << 3); // above the largest class
        panic!("the request failed");
    })
    .join();
    assert!(result.is_err(), "the thread's own panic, not an abort");
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.events_suppressed, 1, "the drop during unwinding");
}

/// A value whose drop tells the test that the pool (which owns the hook
/// holding it) was freed.
struct Sentinel(mpsc::Sender<()>);

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_dropped_pool_is_freed_while_a_thread_that_used_it_lives() {
    let (tx, rx) = mpsc::channel();
    let sentinel = Sentinel(tx);
    let pool = base()
        .on_event(move |_| {
            let _ = &sentinel;
        })
        .build();
    let start = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    let (s, d) = (start.clone(), done.clone());
    let p = pool.clone();
    let worker = std::thread::spawn(move || {
        drop(p.get(4096)); // this thread now caches a block of the pool
        drop(p);
        s.wait();
        d.wait(); // alive, idle, registering no other pool
    });
    start.wait();
    drop(pool);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the pool and its hook were freed while the worker lives");
    done.wait();
    worker.join().unwrap();
}

#[test]
fn many_dropped_pools_do_not_accumulate() {
    for _ in 0..500 {
        let pool = base().build();
        drop(pool.get(4096));
        drop(pool);
    }
    // Slots are reused: a new pool's cache lookup stays O(1) and correct.
    let pool = base().build();
    drop(pool.get(4096));
    assert_eq!(pool.stats().retained_buffers, 1);
}

#[test]
fn absurd_trim_intervals_are_clamped_and_do_not_wedge_other_pools() {
    let huge = base().trim_interval(Duration::MAX).build();
    let tiny = base().trim_interval(Duration::from_nanos(1)).build();
    let normal = base().trim_interval(Duration::from_millis(20)).build();
    drop(huge.get(4096));
    drop(tiny.get(4096));
    drop(normal.get(4096));
    eventually("the 20 ms pool trims", || {
        normal.stats().retained_bytes == 0
    });
    eventually("the 1 ns pool trims at the minimum interval", || {
        tiny.stats().retained_bytes == 0
    });
    assert_eq!(huge.stats().retained_buffers, 1, "a day has not passed");
}

#[test]
fn a_hook_panicking_on_the_trimmer_thread_does_not_stop_trimming() {
    let bad = base()
        .trim_interval(Duration::from_millis(10))
        .on_event(|e| {
            if matches!(e, Event::Trimmed { .. }) && in_test_process() {
                panic!("hook bug on the trimmer thread");
            }
        })
        .build();
    drop(bad.get(4096));
    eventually("the bad pool's hook panicked", || {
        bad.stats().hook_panics > 0
    });
    let good = base().trim_interval(Duration::from_millis(10)).build();
    drop(good.get(4096));
    eventually("a pool built later still trims", || {
        good.stats().retained_bytes == 0
    });
    eventually("the bad pool itself still trims", || {
        bad.stats().retained_bytes == 0
    });
}

#[test]
fn idle_threads_credit_goes_back_on_trim() {
    let pool = base()
        .size_classes(SizeClasses::geometric(4096, 256 << 10, 4).unwrap())
        .max_retained_bytes(32 << 20)
        .build();
    let sizes = pool.size_classes().sizes().to_vec();
    let go = Arc::new(Barrier::new(33));
    let end = Arc::new(Barrier::new(33));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (p, go, end, sizes) = (pool.clone(), go.clone(), end.clone(), sizes.clone());
            std::thread::spawn(move || {
                for &size in &sizes {
                    drop(p.get(size));
                }
                go.wait();
                end.wait(); // idle, alive
            })
        })
        .collect();
    go.wait();
    pool.trim();
    let stats = pool.stats();
    assert_eq!(
        stats.reserved_bytes, 0,
        "no credit left with idle threads: {stats}"
    );
    // The whole cap is usable again.
    let held: Vec<_> = (0..128).map(|_| pool.get(256 << 10)).collect();
    drop(held);
    assert_eq!(pool.stats().retained_bytes, 32 << 20);
    end.wait();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn untrusted_labels_are_bounded() {
    let pool = base().build();
    for i in 0..2000 {
        let tenant = tierpool::ReadOptions::new().label(&pool.label(&format!("tenant-{i}")));
        drop(pool.read_with(&b"x"[..], &tenant).unwrap());
    }
    let labels = pool.stats().labels;
    assert_eq!(labels.len(), tierpool::MAX_LABELS + 1);
    let other = labels
        .iter()
        .find(|l| l.label == tierpool::OTHER_LABEL)
        .unwrap();
    assert_eq!(other.activity.reads, 2000 - tierpool::MAX_LABELS as u64);
}

#[test]
fn a_huge_hint_costs_nothing() {
    let pool = base().build();
    for hint in [usize::MAX, 1 << 45, 1 << 40] {
        let body = pool
            .read_with(
                &b"tiny body"[..],
                &tierpool::ReadOptions::new().size_hint(hint),
            )
            .unwrap();
        assert_eq!(body.to_vec(), b"tiny body");
    }
}

#[test]
fn after_an_exact_hint_every_chunk_but_the_last_is_full() {
    let pool = base().build();
    // 96 KiB is a class: the hint fills one chunk exactly, then a probe
    // finds more.
    let data = vec![9u8; (96 << 10) + 5000];
    let body = pool
        .read_with(&data[..], &tierpool::ReadOptions::new().size_hint(96 << 10))
        .unwrap();
    assert_eq!(body.to_vec(), data);
    let chunks: Vec<&[u8]> = body.iter().collect();
    assert!(chunks.len() >= 2);
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.len() >= 16 << 10, "a middle chunk of {} bytes", c.len());
    }
}

#[test]
fn trimmed_events_and_stats_agree() {
    let trimmed = Arc::new(AtomicUsize::new(0));
    let t = trimmed.clone();
    let pool = base()
        .trim_interval(Duration::ZERO)
        .on_event(move |e| {
            if let Event::Trimmed { bytes, .. } = e {
                t.fetch_add(*bytes, Ordering::Relaxed);
            }
        })
        .build();
    let bufs: Vec<_> = [4096, 1 << 20, 3 << 20]
        .iter()
        .map(|&n| pool.get(n))
        .collect();
    drop(bufs);
    pool.trim();
    assert_eq!(
        trimmed.load(Ordering::Relaxed) as u64,
        pool.stats().trimmed_bytes
    );
}

/// This process's threads, as `name: where it waits`.
#[cfg(target_os = "linux")]
fn threads() -> Vec<String> {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .map(|t| {
                    let name = read(t.path().join("comm"));
                    format!("{}: {}", name.trim(), read(t.path().join("wchan")))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
#[test]
fn a_forked_child_builds_pools_and_trims() {
    // Threads that keep building and dropping pools whose hooks count and
    // now and then panic, so the fork lands while one of them may hold the
    // trimmer's schedule, a pool's registry, or be inside a hook; and that
    // churn large blocks of a pool the child uses too, so the fork may land
    // in the middle of a cut, an assembly (`mremap`) or a trim of its large
    // tier.
    static EVENTS: AtomicUsize = AtomicUsize::new(0);
    // Hooks panic only in the test process (see `in_test_process`).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = base().trim_interval(Duration::from_millis(10)).build();
    let churn: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let shared = before.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let p = base()
                        .trim_interval(Duration::from_millis(10))
                        .on_event(|_| {
                            if EVENTS.fetch_add(1, Ordering::Relaxed) % 2000 == 1999
                                && in_test_process()
                            {
                                panic!("a hook bug, now and then");
                            }
                        })
                        .build();
                    drop(p.get(4096));
                    drop(p.get(1 << 20));
                    let held = shared.get(512 << 10);
                    drop(shared.get(1 << 20));
                    drop(shared.get(3 << 20)); // assembled from idle pages
                    drop(held);
                }
            })
        })
        .collect();
    for _ in 0..20 {
        // SAFETY: the child only uses this crate and exits with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                let pool = base().trim_interval(Duration::from_millis(10)).build();
                drop(pool.get(4096));
                drop(before.get(4096));
                drop(before.get(2 << 20));
                let start = Instant::now();
                while pool.stats().retained_bytes + before.stats().retained_bytes > 0 {
                    if start.elapsed() > Duration::from_secs(20) {
                        // What is left, for the parent's failure message.
                        let _ = std::io::Write::write_all(
                            &mut std::io::stderr(),
                            format!(
                                "child: new pool {:?}\nchild: shared pool {:?}\nchild: threads {:?}\n",
                                pool.stats(),
                                before.stats(),
                                threads()
                            )
                            .as_bytes(),
                        );
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                true
            });
            // SAFETY: ends the child without running the parent's
            // destructors or test harness.
            unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
        }
        let start = Instant::now();
        let status = loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc == pid {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                // SAFETY: killing our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child did not trim (status {status})"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().unwrap();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_fork_from_a_hook_on_the_trimmer_wedges_nothing() {
    // 0: not yet; 1: forking; 2: the child ran and exited.
    static FORKED: AtomicUsize = AtomicUsize::new(0);
    let pool = base()
        .trim_interval(Duration::from_millis(10))
        .on_event(|e| {
            let on_trimmer = std::thread::current().name() == Some("tierpool-trimmer");
            if matches!(e, Event::Trimmed { .. })
                && on_trimmer
                && FORKED
                    .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                // SAFETY: the child calls only `_exit`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                FORKED.store(2, Ordering::SeqCst);
            }
        })
        .build();
    drop(pool.get(4096));
    eventually("a fork from a hook on the trimmer returned", || {
        FORKED.load(Ordering::SeqCst) == 2
    });
    // Every lock of the crate still works, on another thread and pool too.
    let (done_tx, done_rx) = mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        p.trim();
        drop(p.get(1 << 20));
        let other = base().build();
        drop(other.get(4096));
        other.trim();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the pool's locks are wedged after a fork from a hook");
}

#[test]
fn the_retention_cap_holds_under_concurrent_churn() {
    const CAP: usize = 8 << 20;
    let pools: Vec<Pool> = (0..5)
        .map(|_| {
            base()
                .max_retained_bytes(CAP)
                .trim_interval(Duration::from_millis(20))
                .build()
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let pools = pools.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut i: usize = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345) % (1 << 30);
                    let pool = &pools[i % pools.len()];
                    // 4 KiB to 2 MiB, between class boundaries too.
                    let size = 4096 + (i >> 4) % (2 << 20);
                    held.push(pool.get(size));
                    if held.len() > 6 {
                        held.swap_remove(i % held.len());
                    }
                    if i % 97 == 0 {
                        held.clear();
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(2) {
        for pool in &pools {
            let stats = pool.stats();
            assert!(
                stats.retained_bytes <= CAP,
                "retained {} over the cap {CAP}",
                stats.retained_bytes
            );
            assert!(
                stats.reserved_bytes <= CAP,
                "reserved {} over the cap",
                stats.reserved_bytes
            );
            samples += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(samples > 10);
    for pool in &pools {
        let stats = pool.stats();
        assert!(stats.retained_bytes <= CAP);
    }
}
