//! Wall time of tierpool against plain `Vec` on this binary's global
//! allocator (glibc, jemalloc or mimalloc: one binary each, see
//! `scripts/peers.sh`) and against an oracle that reuses pre-faulted
//! buffers with no bookkeeping, side by side in one process.
//!
//! `peers SUBJECT` prints one line per workload: `WORKLOAD micros`, the
//! median of the rounds, for SUBJECT = tierpool, vec, oracle or
//! oracle-paged (the mixed workload only, into page-aligned buffers);
//! `peers SUBJECT mixed` runs the mixed workload alone, and `peers
//! SUBJECT,SUBJECT,...` runs it for several subjects in one process, their
//! rounds in turn (`SUBJECT mixed-1t micros` lines). `peers
//! fast` prints the fast path's nanoseconds per `get(4096)` + drop and per
//! buffer taken on one thread and dropped on another, for tierpool and for
//! `Vec`, and plain code on the binary's allocator: 48-byte boxes, short
//! `Vec<u32>`s, a `Vec` grown to 64 MiB by 64 KiB appends. The
//! workloads: the mixed steady state (jobs of 64 KiB–8 MiB written in
//! 16 KiB rows, five held per thread; 1 and 2 threads) and `read_to_end`
//! in steady state at 300 KB, 3 MiB, 5 MB, 9 MB, 12 MB, 17 MB, 25 MB and
//! 64 MiB (64 KiB reads;
//! tierpool also reports its misses per read).

use tierpool_harness::workload as common;

tierpool_harness::global_allocator!();

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

use common::{HELD, MAX_JOB, Stream, held_jobs};
use tierpool::Pool;

const ROUNDS: usize = 7;
const JOBS: u64 = 400;
const SIZES: [usize; 8] = [
    300_000,
    3 << 20,
    5_000_000,
    9_000_000,
    12_000_000,
    17_000_000,
    25_000_000,
    64 << 20,
];

fn main() {
    let subject = std::env::args().nth(1).unwrap_or_else(|| "tierpool".into());
    if subject == "fast" {
        // The fast path in wall time, both subjects in this process.
        println!("fast-tierpool {:.2}", fast_path("tierpool", 4096));
        println!("fast-vec {:.2}", fast_path("vec", 4096));
        // An untouched large buffer: a mapped class of the large tier.
        println!("large-tierpool {:.2}", fast_path("tierpool", 1 << 20));
        println!("large-vec {:.2}", fast_path("vec", 1 << 20));
        for size in CROSS_SIZES {
            println!(
                "cross-tierpool-{size} {:.1}",
                cross_thread("tierpool", size)
            );
            println!("cross-vec-{size} {:.1}", cross_thread("vec", size));
        }
        // Plain code on this binary's global allocator (`GlobalPool`'s
        // targets): small allocations, a Vec grown by appends.
        println!("small-box {:.1}", small_boxes());
        println!("small-vec {:.1}", short_vecs());
        println!("grow-64mib {:.0}", grow_by_appends());
        return;
    }
    let subjects: Vec<&str> = subject.split(',').collect();
    let only = std::env::args().nth(2);
    if only.as_deref() == Some("reads") {
        // `reads LEN,LEN,...`: those sizes instead of the standard ones.
        let sizes: Vec<usize> = match std::env::args().nth(3) {
            Some(list) => list
                .split(',')
                .map(|n| n.parse().expect("a size"))
                .collect(),
            None => SIZES.to_vec(),
        };
        for len in sizes {
            for (&subject, (time, misses)) in subjects.iter().zip(read(&subjects, len)) {
                print_read(subject, len, time, misses, subjects.len() > 1);
            }
        }
        return;
    }
    for threads in [1, 2] {
        for (&subject, (time, misses)) in subjects.iter().zip(mixed(&subjects, threads)) {
            if subjects.len() > 1 {
                print!("{subject} ");
            }
            print!("mixed-{threads}t {}", time.as_micros());
            if let Some(m) = misses {
                print!(" misses_per_read={m:.3}");
            }
            println!();
        }
    }
    // Plain `Vec` on `GlobalPool`: what its tier did (to stderr).
    #[cfg(all(
        feature = "globalpool",
        not(any(feature = "jemalloc", feature = "mimalloc"))
    ))]
    eprintln!("{}", GLOBAL.stats());
    if subjects.len() > 1 {
        return;
    }
    if only.as_deref() == Some("mixed") {
        return;
    }
    for len in SIZES {
        let (time, misses) = read(&subjects, len).remove(0);
        print_read(&subject, len, time, misses, false);
    }
}

/// One `read-LEN micros` line, after the subject's name when several ran.
fn print_read(subject: &str, len: usize, time: Duration, misses: Option<f64>, named: bool) {
    if named {
        print!("{subject} ");
    }
    print!("read-{len} {:.2}", time.as_secs_f64() * 1e6);
    if let Some(m) = misses {
        print!(" misses_per_read={m:.3}");
    }
    println!();
}

/// Nanoseconds per `get(size)` + drop, nothing written (for tierpool at
/// 4096, a cached class): the median of the rounds, each ten million pairs.
fn fast_path(subject: &str, size: usize) -> f64 {
    const PAIRS: u32 = 10_000_000;
    let pool = Pool::new();
    drop(pool.get(size));
    let rounds = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PAIRS {
                if subject == "tierpool" {
                    let buf = pool.get(black_box(size));
                    black_box(buf.as_ptr());
                } else {
                    let buf = Vec::<u8>::with_capacity(black_box(size));
                    black_box(buf.as_ptr());
                }
            }
            started.elapsed()
        })
        .collect();
    median(rounds).as_nanos() as f64 / f64::from(PAIRS)
}

/// The sizes of the cross-thread returns: a small body, a frame.
const CROSS_SIZES: [usize; 2] = [4096, 1 << 20];

/// Nanoseconds per buffer taken and filled on this thread and dropped on
/// another, in batches of 256 (a body read on an
/// async worker and dropped on a blocking thread): the median of the
/// rounds, after a warm-up round.
fn cross_thread(subject: &str, size: usize) -> f64 {
    let pool = Pool::new();
    if subject == "tierpool" {
        cross_thread_of(size, || {
            let mut buf = pool.get(black_box(size));
            buf.resize(size, 1);
            buf
        })
    } else {
        cross_thread_of(size, || vec![1u8; black_box(size)])
    }
}

/// [`cross_thread`] for buffers made by `make`: no allocation but theirs
/// (the batches' vectors are reused).
fn cross_thread_of<B: Send + 'static>(size: usize, make: impl Fn() -> B) -> f64 {
    const BATCH: usize = 256;
    let batches = if size <= 4096 { 2_000 } else { 40 };
    let round = || {
        let (to_dropper, rx) = std::sync::mpsc::sync_channel::<Vec<B>>(2);
        let (back, empties) = std::sync::mpsc::channel::<Vec<B>>();
        let started = Instant::now();
        let dropper = std::thread::spawn(move || {
            for mut batch in rx {
                batch.clear();
                black_box(&batch);
                let _ = back.send(batch);
            }
        });
        for _ in 0..batches {
            let mut batch = empties
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH));
            for _ in 0..BATCH {
                batch.push(make());
            }
            to_dropper.send(batch).expect("the dropper runs");
        }
        drop(to_dropper);
        dropper.join().expect("the dropper finishes");
        started.elapsed()
    };
    median_after_warm_up(round).as_nanos() as f64 / (batches * BATCH) as f64
}

/// Nanoseconds per 48-byte box made and dropped, 1000 alive at a time.
fn small_boxes() -> f64 {
    const N: usize = 1000;
    const BATCHES: usize = 2_000;
    let round = || {
        let started = Instant::now();
        let mut held: Vec<Box<[u64; 6]>> = Vec::with_capacity(N);
        for b in 0..BATCHES {
            for i in 0..N {
                held.push(Box::new([black_box((b * N + i) as u64); 6]));
            }
            black_box(&held);
            held.clear();
        }
        started.elapsed()
    };
    median_after_warm_up(round).as_nanos() as f64 / (N * BATCHES) as f64
}

/// Nanoseconds per short `Vec<u32>` (eight pushes from empty, so three
/// growths) made and dropped.
fn short_vecs() -> f64 {
    const N: usize = 2_000_000;
    let round = || {
        let started = Instant::now();
        for i in 0..N {
            let mut v: Vec<u32> = Vec::new();
            for j in 0..8 {
                v.push(black_box((i + j) as u32));
            }
            black_box(&v);
        }
        started.elapsed()
    };
    median_after_warm_up(round).as_nanos() as f64 / N as f64
}

/// Microseconds to grow a `Vec` to 64 MiB by 64 KiB appends and drop it
/// (`realloc` all the way: `mremap` on glibc and `GlobalPool`).
fn grow_by_appends() -> f64 {
    const CHUNK: usize = 64 << 10;
    let chunk = vec![0x5a_u8; CHUNK];
    let round = || {
        let started = Instant::now();
        let mut v: Vec<u8> = Vec::new();
        while v.len() < 64 << 20 {
            v.extend_from_slice(black_box(&chunk));
        }
        black_box(&v);
        drop(v);
        started.elapsed()
    };
    median_after_warm_up(round).as_micros() as f64
}

/// The median of `ROUNDS` rounds after one warm-up round.
fn median_after_warm_up(round: impl Fn() -> Duration) -> Duration {
    round();
    median((0..ROUNDS).map(|_| round()).collect())
}

fn median(mut rounds: Vec<Duration>) -> Duration {
    rounds.sort();
    rounds[rounds.len() / 2]
}

/// The medians over the rounds of the mixed workload on `threads`
/// threads, for each subject, after one warm-up round each; for the pool,
/// also its misses per job. Several subjects run in one process, their
/// rounds taken in turn, so a change in the machine's load falls on all of
/// them alike.
fn mixed(subjects: &[&str], threads: usize) -> Vec<(Duration, Option<f64>)> {
    let pool = Pool::new();
    // The oracles' buffers: pre-faulted, from this binary's allocator
    // (`oracle` writes from their start, `oracle-paged` from their first
    // page boundary: the pool's placement with no bookkeeping at all).
    // Each its own (`oracle` leaves its buffers' lengths at the last job).
    let buffers = || -> Vec<std::sync::Mutex<Vec<Vec<u8>>>> {
        (0..threads)
            .map(|_| std::sync::Mutex::new((0..=HELD).map(|_| vec![1u8; MAX_JOB + 4096]).collect()))
            .collect()
    };
    let (slots, paged) = (buffers(), buffers());
    let round = |subject: &str| {
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (pool, slots, paged) = (&pool, &slots, &paged);
                s.spawn(move || match subject {
                    "tierpool" => held_jobs(
                        t,
                        JOBS,
                        |size| pool.get(size),
                        |buf, row| buf.extend_from_slice(row),
                        |_, _| {},
                    ),
                    "vec" => held_jobs(
                        t,
                        JOBS,
                        Vec::with_capacity,
                        |buf: &mut Vec<u8>, row| buf.extend_from_slice(row),
                        |_, _| {},
                    ),
                    "oracle-paged" => {
                        let mut mine = paged[t].lock().unwrap();
                        let next = Cell::new(0);
                        let lens = RefCell::new([0usize; HELD + 1]);
                        let mine = RefCell::new(&mut *mine);
                        held_jobs(
                            t,
                            JOBS,
                            |_| {
                                let i = next.get();
                                next.set((i + 1) % (HELD + 1));
                                lens.borrow_mut()[i] = 0;
                                i
                            },
                            |&mut i, row| {
                                let mut mine = mine.borrow_mut();
                                let buf = &mut mine[i];
                                let page = (4096 - buf.as_ptr() as usize % 4096) % 4096;
                                let len = &mut lens.borrow_mut()[i];
                                buf[page + *len..page + *len + row.len()].copy_from_slice(row);
                                *len += row.len();
                            },
                            |_, _| {},
                        );
                    }
                    _ => {
                        // The limit: HELD + 1 pre-faulted buffers, in turn.
                        let mut mine = slots[t].lock().unwrap();
                        let next = Cell::new(0);
                        let mine = RefCell::new(&mut *mine);
                        held_jobs(
                            t,
                            JOBS,
                            |_| {
                                let i = next.get();
                                next.set((i + 1) % (HELD + 1));
                                mine.borrow_mut()[i].clear();
                                i
                            },
                            |&mut i, row| mine.borrow_mut()[i].extend_from_slice(row),
                            |_, _| {},
                        );
                    }
                });
            }
        });
        started.elapsed()
    };
    for subject in subjects {
        round(subject);
    }
    let misses = || -> u64 { pool.stats().classes.iter().map(|c| c.misses).sum() };
    let before = misses();
    let mut times = vec![Vec::new(); subjects.len()];
    for _ in 0..ROUNDS {
        for (subject, times) in subjects.iter().zip(&mut times) {
            times.push(round(subject));
        }
    }
    let per_job = (misses() - before) as f64 / (ROUNDS as u64 * JOBS * threads as u64) as f64;
    subjects
        .iter()
        .zip(times)
        .map(|(&subject, times)| (median(times), (subject == "tierpool").then_some(per_job)))
        .collect()
}

/// The median time of one steady-state read of `len` bytes for each
/// subject, their rounds taken in turn in this process; for the pool, also
/// its misses per read.
fn read(subjects: &[&str], len: usize) -> Vec<(Duration, Option<f64>)> {
    let reads = (256 << 20) / len.max(1) + 2;
    let pool = Pool::new();
    let mut oracle = vec![1u8; len + common::STREAM_READ];
    let mut one = |subject: &str| match subject {
        "tierpool" => drop(black_box(pool.read_to_end(Stream { left: len }).unwrap())),
        "vec" => {
            let mut v = Vec::new();
            Stream { left: len }.read_to_end(&mut v).unwrap();
            black_box(v);
        }
        _ => {
            oracle.clear();
            Stream { left: len }.read_to_end(&mut oracle).unwrap();
            black_box(&oracle);
        }
    };
    for &subject in subjects {
        for _ in 0..reads {
            one(subject);
        }
    }
    let misses = || -> u64 { pool.stats().classes.iter().map(|c| c.misses).sum() };
    let before = misses();
    let mut rounds = vec![Vec::new(); subjects.len()];
    for _ in 0..ROUNDS {
        for (&subject, rounds) in subjects.iter().zip(&mut rounds) {
            let started = Instant::now();
            for _ in 0..reads {
                one(subject);
            }
            rounds.push(started.elapsed() / reads as u32);
        }
    }
    let per_read = (misses() - before) as f64 / (ROUNDS * reads) as f64;
    subjects
        .iter()
        .zip(rounds)
        .map(|(&subject, rounds)| (median(rounds), (subject == "tierpool").then_some(per_read)))
        .collect()
}
