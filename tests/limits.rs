//! Memory under a limit: pressure, the in-use budget, admission, files
//! that leave no page cache behind, and an injected memory reading.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::scratch::Scratch;
use tierpool::{Error, MemoryLimit, PageCache, Pool, Pressure};

#[test]
fn the_in_use_budget_refuses_and_get_ignores_it() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(1 << 20)
        .build();
    let a = pool.try_get(512 << 10).unwrap();
    let b = pool.try_get(512 << 10).unwrap();
    match pool.try_get(4096) {
        Err(Error::OverBudget { budget, .. }) => assert_eq!(budget, 1 << 20),
        other => panic!("expected OverBudget, got {other:?}"),
    }
    let forced = pool.get(4096); // `get` keeps `Vec`'s meaning
    assert_eq!(forced.capacity(), 4096);
    drop((a, b, forced));
    pool.trim();
    assert!(pool.try_get(512 << 10).is_ok());
    let stats = pool.stats();
    assert_eq!(stats.refused, 1);
    assert_eq!(stats.in_use_bytes, 0);
}

#[test]
fn a_waiter_is_woken_by_a_return_on_another_thread() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(1 << 20)
        .thread_cache_bytes(0)
        .build();
    let held = pool.try_get(1 << 20).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
    });
    let buf = pool
        .get_timeout(1 << 20, Duration::from_secs(30))
        .expect("served once the other thread returned its buffer");
    assert_eq!(buf.capacity(), 1 << 20);
    releaser.join().unwrap();
    assert_eq!(pool.stats().waited, 1);
}

#[test]
fn a_waiter_times_out_with_a_typed_error() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(1 << 20)
        .build();
    let _held = pool.try_get(1 << 20).unwrap();
    match pool.get_timeout(1 << 20, Duration::from_millis(20)) {
        Err(e @ Error::TimedOut { .. }) => {
            assert!(e.is_refused());
            assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::TimedOut);
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
}

/// A minimal executor: polls on this thread, parks between wakes.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn acquire_waits_in_arrival_order_and_is_woken_by_returns() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(2 << 20)
        .thread_cache_bytes(0)
        .build();
    let held = pool.try_get(2 << 20).unwrap();
    let p = pool.clone();
    let large = std::thread::spawn(move || block_on(p.acquire(2 << 20)).map(|b| b.capacity()));
    // Let the large request queue first.
    while pool.stats().waited == 0 {
        std::thread::yield_now();
    }
    let p = pool.clone();
    let small = std::thread::spawn(move || block_on(p.acquire(4096)).map(|b| b.capacity()));
    drop(held);
    assert_eq!(
        large.join().unwrap().unwrap(),
        2 << 20,
        "first in, first served"
    );
    assert_eq!(small.join().unwrap().unwrap(), 4096);
}

#[test]
fn critical_pressure_refuses_and_keeps_nothing() {
    // A limit far below what this test process already uses.
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Bytes(1 << 20))
        .build();
    let warm = pool.get(4096);
    assert_eq!(pool.sample_memory(), Pressure::Critical);
    assert_eq!(pool.pressure(), Pressure::Critical);
    match pool.try_get(8 << 20) {
        Err(e @ Error::MemoryPressure { .. }) => assert!(e.is_refused()),
        other => panic!("expected MemoryPressure, got {other:?}"),
    }
    drop(pool.get(8 << 20)); // `get` still serves; the return is freed
    drop(warm);
    let stats = pool.stats();
    assert_eq!(stats.pressure, Pressure::Critical);
    assert_eq!(stats.retention_limit_bytes, 0);
    assert_eq!(
        stats
            .classes
            .iter()
            .map(|c| c.retained_buffers)
            .sum::<usize>(),
        0
    );
    assert!(stats.refused >= 1);
}

#[test]
fn no_limit_means_normal_pressure() {
    let pool = Pool::builder().memory_limit(MemoryLimit::Unlimited).build();
    assert_eq!(pool.sample_memory(), Pressure::Normal);
    assert_eq!(pool.stats().memory_limit_bytes, None);
}

/// Pages of `path` resident in the page cache, by `mincore` over a mapping
/// (a test helper outside the crate's OS layer).
#[allow(clippy::disallowed_methods)]
#[cfg(target_os = "linux")]
fn cached_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file we just opened; unmapped
    // below; `mincore` writes one byte per page into `vec`.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
        libc::munmap(map, len);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

#[cfg(target_os = "linux")]
#[test]
fn files_leave_no_page_cache_behind() {
    let s = Scratch::new("pagecache");
    let pool = Pool::new();
    let data: Vec<u8> = (0..(8 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let path = s.0.join("upload.bin");
    pool.write_file(&path, &data[..]).unwrap();
    let after_write = cached_pages(&path);
    let chunks = pool.read_file(&path).unwrap();
    assert_eq!(chunks.to_vec(), data);
    let after_read = cached_pages(&path);
    let total = data.len() / 4096;
    // tmpfs keeps every page (it has no backing store): the advice is a
    // no-op there, so only judge real file systems.
    let keep = Pool::builder().page_cache(PageCache::Keep).build();
    let kept_path = s.0.join("kept.bin");
    keep.write_file(&kept_path, &data[..]).unwrap();
    drop(keep.read_file(&kept_path).unwrap());
    if cached_pages(&kept_path) == total && after_write == total {
        eprintln!("the temp dir is on tmpfs: page cache advice cannot be judged here");
        return;
    }
    assert!(
        after_write * 20 <= total,
        "{after_write} of {total} pages cached after write"
    );
    assert!(
        after_read * 20 <= total,
        "{after_read} of {total} pages cached after read"
    );
}

#[test]
fn a_permit_sets_a_whole_request_aside() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(16 << 20)
        .build();
    // The default classes round a buffer up by at most 25%: a request of
    // 8 MiB sets 10 MiB aside.
    assert_eq!(pool.size_classes().max_rounding(), 1.25);
    let first = pool.admit(8 << 20, Duration::from_secs(1)).unwrap();
    assert_eq!(pool.stats().set_aside_bytes, 10 << 20);
    // 10 MiB more do not fit beside the first request's 10 MiB.
    match pool.admit(8 << 20, Duration::from_millis(20)) {
        Err(Error::TimedOut { requested, .. }) => assert_eq!(requested, 10 << 20),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let body = first.get(2 << 20);
    let frame = first.get(6 << 20);
    assert_eq!(first.remaining(), 2 << 20);
    assert_eq!(pool.stats().set_aside_bytes, 2 << 20);
    let extra = first.get(8 << 20); // past what was admitted: served anyway
    assert_eq!(first.remaining(), 0);
    drop((body, frame, extra, first));
    assert_eq!(pool.stats().set_aside_bytes, 0);
    pool.trim();
    assert!(pool.admit(8 << 20, Duration::from_secs(1)).is_ok());
}

#[test]
fn a_request_larger_than_the_budget_is_refused_at_once() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(1 << 20)
        .build();
    let start = std::time::Instant::now();
    match pool.admit(2 << 20, Duration::from_secs(30)) {
        Err(Error::OverBudget {
            requested, budget, ..
        }) => {
            assert_eq!(
                (requested, budget),
                (5 << 19, 1 << 20),
                "2 MiB and its rounding"
            );
        }
        other => panic!("expected OverBudget, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(30), "did not wait");
}

#[test]
fn more_threads_than_the_budget_fits_all_complete_without_deadlock() {
    // Each request holds a body, a frame (3x) and an output at once; the
    // budget fits two requests, eight threads ask.
    const BODY: usize = 1 << 20;
    const REQUESTS: usize = 10;
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(2 * 5 * BODY * 5 / 4 + BODY)
        .thread_cache_bytes(0)
        .build();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for r in 0..REQUESTS {
                    let permit = pool.admit(5 * BODY, Duration::from_secs(60)).unwrap();
                    let mut body = permit.get(BODY);
                    body.resize(BODY, t as u8);
                    let mut frame = permit.get(3 * BODY);
                    frame.resize(3 * BODY, r as u8);
                    let mut out = permit.get(BODY);
                    out.extend_from_slice(&body[..16]);
                    assert!(body.iter().all(|&b| b == t as u8));
                    drop((body, frame, out, permit));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.set_aside_bytes, 0);
    assert!(stats.waited > 0, "the budget made requests wait: {stats}");
}

#[test]
fn admit_async_resolves_when_memory_comes_back() {
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(4 << 20)
        .thread_cache_bytes(0)
        .build();
    let held = pool.try_get(4 << 20).unwrap();
    let p = pool.clone();
    let waiter =
        std::thread::spawn(move || block_on(p.admit_async(2 << 20)).map(|p| p.remaining()));
    while pool.stats().waited == 0 {
        std::thread::yield_now();
    }
    drop(held);
    pool.trim();
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        5 << 19,
        "2 MiB and its rounding"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_refusable_request_is_not_served_by_growing_an_idle_block_past_the_budget() {
    // A 128 KiB block idle, 1 MiB of budget: a 4 MiB request must be
    // refused, not served by assembling the idle pages into 4 MiB.
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(1 << 20)
        .thread_cache_bytes(0)
        .build();
    drop(pool.try_get(128 << 10).unwrap());
    assert!(matches!(
        pool.try_get(4 << 20),
        Err(Error::OverBudget { .. })
    ));
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
    assert!(stats.classes.iter().all(|c| c.fit_hits == 0), "{stats}");
}

/// Runs `f` on a thread and fails the test if it does not finish in time
/// (a deadlock shows as a failure, not a hung test run).
fn finishes_within(secs: u64, what: &str, f: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not finish: {what}"));
}

#[test]
fn an_event_hook_may_call_admit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    finishes_within(30, "admit from a hook that admission's trim runs", || {
        let slot: Arc<Mutex<Option<Pool>>> = Arc::new(Mutex::new(None));
        let called = Arc::new(AtomicBool::new(false));
        let (hook_slot, hook_called) = (slot.clone(), called.clone());
        let pool = Pool::builder()
            .memory_limit(MemoryLimit::Unlimited)
            .max_in_use_bytes(1 << 20)
            .on_event(move |e| {
                if matches!(e, tierpool::Event::Trimmed { .. })
                    && !hook_called.swap(true, Ordering::SeqCst)
                {
                    let pool = hook_slot.lock().unwrap().clone();
                    if let Some(pool) = pool {
                        // Refused (the budget is spent), but it returns.
                        let permit = pool.admit(4096, Duration::ZERO);
                        assert!(permit.is_err());
                        let pressure = pool.sample_memory();
                        assert_eq!(pressure, Pressure::Normal);
                    }
                }
            })
            .build();
        *slot.lock().unwrap() = Some(pool.clone());
        let held = pool.try_get(1 << 20).unwrap();
        // Over the budget: admission trims (the hook runs), then refuses.
        let err = pool
            .admit(512 << 10, Duration::from_millis(20))
            .unwrap_err();
        assert!(err.is_refused(), "{err}");
        assert!(called.load(Ordering::SeqCst), "the hook ran");
        drop(held);
        assert!(pool.admit(512 << 10, Duration::ZERO).is_ok());
        slot.lock().unwrap().take();
    });
}

/// The process's resident memory, from `/proc/self/statm`.
#[cfg(target_os = "linux")]
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

#[cfg(target_os = "linux")]
#[test]
fn shedding_starts_within_five_percent_of_the_critical_threshold() {
    // A limit 256 MiB above what the process holds now, outside any
    // container limit: the working set is the process's own resident
    // memory. Refusable 1 MiB requests, held, until admission sheds.
    let limit = rss() + (256 << 20);
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Bytes(limit as usize))
        .trim_interval(Duration::ZERO)
        .build();
    if pool.stats().memory.is_none() {
        return; // no way to read this process's memory here
    }
    let mut held = Vec::new();
    let shed_at = loop {
        match pool.try_get(1 << 20) {
            Ok(mut buf) => {
                buf.resize(1 << 20, 1);
                held.push(buf);
            }
            Err(e) => {
                assert!(matches!(e, Error::MemoryPressure { .. }), "{e}");
                break rss();
            }
        }
        assert!(held.len() < 1024, "never shed");
    };
    let fraction = shed_at as f64 / limit as f64;
    assert!(
        (0.85..=0.95).contains(&fraction),
        "shed at {:.1}% of the limit; the critical threshold is 90%",
        fraction * 100.0
    );
}

/// Writes an injected memory reading.
fn inject(path: &Path, limit: u64, working_set: u64, high: Option<u64>) {
    let mut text = format!("limit {limit}\nworking_set {working_set}\n");
    if let Some(high) = high {
        text += &format!("high {high}\n");
    }
    fs::write(path, text).unwrap();
}

#[test]
fn an_injected_memory_file_drives_pressure_and_admission_without_a_cgroup() {
    let s = Scratch::new("injected");
    let file = s.0.join("memory");
    const MB: u64 = 1_000_000;
    inject(&file, 1000 * MB, 100 * MB, None);
    let pool = Pool::builder()
        .memory_file(&file)
        .trim_interval(Duration::ZERO)
        .build();
    assert_eq!(pool.sample_memory(), Pressure::Normal);
    assert!(pool.try_get(1 << 20).is_ok());
    // Past the critical threshold (90%): shed.
    inject(&file, 1000 * MB, 950 * MB, None);
    assert_eq!(pool.sample_memory(), Pressure::Critical);
    match pool.try_get(1 << 20) {
        Err(Error::MemoryPressure { limit, .. }) => assert_eq!(limit, 1000 * MB),
        other => panic!("expected MemoryPressure, got {other:?}"),
    }
    // Hysteresis: still critical a little below the threshold.
    inject(&file, 1000 * MB, 870 * MB, None);
    assert_eq!(pool.sample_memory(), Pressure::Critical);
    inject(&file, 1000 * MB, 500 * MB, None);
    assert_eq!(pool.sample_memory(), Pressure::Normal);
    assert!(pool.try_get(1 << 20).is_ok());
    // The soft limit (memory.high) makes pressure elevated below 75%.
    inject(&file, 1000 * MB, 500 * MB, Some(400 * MB));
    assert_eq!(pool.sample_memory(), Pressure::Elevated);
    // A resize in place is seen at the next sample.
    inject(&file, 2000 * MB, 500 * MB, None);
    pool.sample_memory();
    assert_eq!(pool.stats().memory_limit_bytes, Some(2000 * MB));
    assert_eq!(pool.pressure(), Pressure::Normal);
}

#[test]
fn the_trimmer_samples_an_injected_file_on_its_own() {
    let s = Scratch::new("injected-trimmer");
    let file = s.0.join("memory");
    inject(&file, 1_000_000_000, 100_000_000, None);
    let pool = Pool::builder().memory_file(&file).build();
    inject(&file, 1_000_000_000, 990_000_000, None);
    let start = std::time::Instant::now();
    while pool.pressure() != Pressure::Critical {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the trimmer never sampled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
