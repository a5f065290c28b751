//! tierpool against plain `Vec` (the system allocator) and `zeropool`, side
//! by side in one run, plus an oracle that reuses pre-faulted buffers with no
//! bookkeeping at all (the limit for the mixed workload).
//!
//! `cargo bench --bench pool`; `scripts/bench-table.py` turns criterion's
//! output into the README's table of ratios.

use std::collections::VecDeque;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tierpool::Pool;
use zeropool::ZeroPool;

/// A decoder's output row.
const ROW: usize = 16 << 10;
/// Jobs each thread keeps alive at once in the mixed workload.
const HELD: usize = 5;
const MIN_JOB: usize = 64 << 10;
const MAX_JOB: usize = 8 << 20;

/// xorshift64*: deterministic job sizes without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn job_size(&mut self) -> usize {
        MIN_JOB + (self.next() as usize % (MAX_JOB - MIN_JOB))
    }
}

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

/// Writes `size` bytes of rows into `out` through `put_row`.
#[inline]
fn fill_rows(size: usize, row: &[u8; ROW], mut put_row: impl FnMut(&[u8])) {
    let mut left = size;
    while left > 0 {
        let n = left.min(ROW);
        put_row(&row[..n]);
        left -= n;
    }
}

fn mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed_64k_8m_rows_hold5");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    let row = [0x5a_u8; ROW];
    for threads in [1, 2] {
        let pool = Pool::new();
        group.bench_function(BenchmarkId::new("tierpool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    let mut rng = Rng(0x9e37_79b9 + t as u64);
                    let mut held = VecDeque::with_capacity(HELD + 1);
                    for _ in 0..iters {
                        let size = rng.job_size();
                        let mut buf = pool.get(size);
                        fill_rows(size, &row, |r| buf.extend_from_slice(r));
                        held.push_back(black_box(buf));
                        if held.len() > HELD {
                            held.pop_front();
                        }
                    }
                })
            })
        });
        group.bench_function(BenchmarkId::new("vec", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    let mut rng = Rng(0x9e37_79b9 + t as u64);
                    let mut held = VecDeque::with_capacity(HELD + 1);
                    for _ in 0..iters {
                        let size = rng.job_size();
                        let mut buf = Vec::with_capacity(size);
                        fill_rows(size, &row, |r| buf.extend_from_slice(r));
                        held.push_back(black_box(buf));
                        if held.len() > HELD {
                            held.pop_front();
                        }
                    }
                })
            })
        });
        let zp = ZeroPool::new();
        group.bench_function(BenchmarkId::new("zeropool", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    let mut rng = Rng(0x9e37_79b9 + t as u64);
                    let mut held = VecDeque::with_capacity(HELD + 1);
                    for _ in 0..iters {
                        let size = rng.job_size();
                        let mut buf = zp.alloc_uninit(size);
                        let out = buf.as_uninit_mut();
                        let mut at = 0;
                        fill_rows(size, &row, |r| {
                            copy_uninit(&mut out[at..at + r.len()], r);
                            at += r.len();
                        });
                        held.push_back(black_box(buf));
                        if held.len() > HELD {
                            held.pop_front();
                        }
                    }
                })
            })
        });
        // The limit: HELD + 1 buffers per thread, pre-faulted, reused in turn.
        let slots: Vec<Vec<Vec<u8>>> = (0..threads)
            .map(|_| (0..=HELD).map(|_| vec![1u8; MAX_JOB]).collect())
            .collect();
        let slots = slots
            .into_iter()
            .map(std::sync::Mutex::new)
            .collect::<Vec<_>>();
        group.bench_function(BenchmarkId::new("oracle", threads), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, &|t, iters| {
                    let mut rng = Rng(0x9e37_79b9 + t as u64);
                    let mut mine = slots[t].lock().unwrap();
                    for i in 0..iters as usize {
                        let size = rng.job_size();
                        let buf = &mut mine[i % (HELD + 1)];
                        let mut at = 0;
                        fill_rows(size, &row, |r| {
                            buf[at..at + r.len()].copy_from_slice(r);
                            at += r.len();
                        });
                        black_box(&buf[..size]);
                    }
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
