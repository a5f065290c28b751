//! tierpool against plain `Vec` (the system allocator) and `zeropool`, side
//! by side in one run, plus an oracle that reuses pre-faulted buffers with no
//! bookkeeping at all (the limit for the mixed workload).
//!
//! `cargo bench -p tierpool-harness --bench pool`; `scripts/bench-table.py` turns criterion's
//! output into the README's table of ratios.

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tierpool::Pool;
use zeropool::ZeroPool;

use common::{HELD, MAX_JOB, held_jobs};
/// A decoder's output row.
use tierpool_harness::workload as common;

fn fast_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("fast_path_get4096_drop");
    let pool = Pool::new();
    drop(pool.get(4096));
    group.bench_function("tierpool", |b| {
        b.iter(|| black_box(pool.get(black_box(4096))))
    });
    group.bench_function("vec", |b| {
        b.iter(|| black_box(Vec::<u8>::with_capacity(black_box(4096))))
    });
    let zp = ZeroPool::new();
    drop(zp.alloc_uninit(4096));
    group.bench_function("zeropool", |b| {
        b.iter(|| black_box(zp.alloc_uninit(black_box(4096))))
    });
    group.finish();
}

/// Runs `work(thread, iters)` on `threads` threads released together, and
/// returns the slowest thread's time.
fn timed_threads(threads: usize, iters: u64, work: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    work(t, iters);
                    began.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

/// One thread's share of the mixed workload: `iters` jobs, each buffer from
/// `get(size)` filled row by row with `put_row`, the last `HELD` kept alive.
fn mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed_64k_8m_rows_hold5");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    for threads in [1, 2] {
        let pool = Pool::new();
        group.bench_function(BenchmarkId::new("tierpool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    held_jobs(
                        t,
                        iters,
                        |size| pool.get(size),
                        |buf, row| buf.extend_from_slice(row),
                        |_, _| {},
                    )
                })
            })
        });
        group.bench_function(BenchmarkId::new("vec", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    held_jobs(
                        t,
                        iters,
                        Vec::with_capacity,
                        |buf: &mut Vec<u8>, row| buf.extend_from_slice(row),
                        |_, _| {},
                    )
                })
            })
        });
        let zp = ZeroPool::new();
        group.bench_function(BenchmarkId::new("zeropool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    held_jobs(
                        t,
                        iters,
                        |size| (zp.alloc_uninit(size), 0),
                        |(buf, at), row| {
                            copy_uninit(&mut buf.as_uninit_mut()[*at..*at + row.len()], row);
                            *at += row.len();
                        },
                        |_, _| {},
                    )
                })
            })
        });
        // The limit: HELD + 1 buffers per thread, pre-faulted, reused in turn,
        // no bookkeeping at all.
        let slots: Vec<std::sync::Mutex<Vec<Vec<u8>>>> = (0..threads)
            .map(|_| std::sync::Mutex::new((0..=HELD).map(|_| vec![1u8; MAX_JOB]).collect()))
            .collect();
        group.bench_function(BenchmarkId::new("oracle", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    let mut mine = slots[t].lock().unwrap();
                    let next = std::cell::Cell::new(0);
                    let mine = std::cell::RefCell::new(&mut *mine);
                    held_jobs(
                        t,
                        iters,
                        |_| {
                            let i = next.get();
                            next.set((i + 1) % (HELD + 1));
                            (i, 0)
                        },
                        |(i, at), row| {
                            mine.borrow_mut()[*i][*at..*at + row.len()].copy_from_slice(row);
                            *at += row.len();
                        },
                        |_, _| {},
                    )
                })
            })
        });
    }
    group.finish();
}

fn copy_uninit(out: &mut [MaybeUninit<u8>], data: &[u8]) {
    for (o, &d) in out.iter_mut().zip(data) {
        o.write(d);
    }
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn_get_drop");
    const SIZES: [usize; 4] = [4 << 10, 16 << 10, 6 << 10, 64 << 10];
    for threads in [1, 2] {
        let pool = Pool::new();
        group.bench_function(BenchmarkId::new("tierpool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|_, iters| {
                    for i in 0..iters as usize {
                        black_box(pool.get(SIZES[i & 3]));
                    }
                })
            })
        });
        group.bench_function(BenchmarkId::new("vec", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|_, iters| {
                    for i in 0..iters as usize {
                        black_box(Vec::<u8>::with_capacity(SIZES[i & 3]));
                    }
                })
            })
        });
        let zp = ZeroPool::new();
        group.bench_function(BenchmarkId::new("zeropool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|_, iters| {
                    for i in 0..iters as usize {
                        black_box(zp.alloc_uninit(SIZES[i & 3]));
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fast_path, mixed, churn
}
criterion_main!(benches);
