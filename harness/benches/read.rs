//! `read_to_end` of an unknown-length stream delivered in 64 KiB reads:
//! tierpool against `Vec::read_to_end` and an oracle (one pre-faulted `Vec`
//! with enough capacity, cleared and reused), side by side. Before timing it
//! prints the memory each holds per read, as a multiple of the data.

use tierpool_harness::workload as common;

use std::hint::black_box;
use std::io::Read;
use std::time::Duration;

use common::{STREAM_READ, Stream};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tierpool::Pool;

/// The sizes of the targets: typical uploads (300 KB, 3 MiB, 9 MB, 25 MB)
/// and a large one (64 MiB). Odd sizes on purpose: real bodies are.
const SIZES: [usize; 5] = [300_000, 3 << 20, 9_000_000, 25_000_000, 64 << 20];
/// Sizes between chunk and class boundaries, counted for page faults too.
const BETWEEN: [usize; 3] = [5_000_000, 12_000_000, 17_000_000];

/// Minor page faults of this process so far (`getrusage`).
fn minor_faults() -> u64 {
    // SAFETY: `getrusage` fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a `rusage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

fn misses(pool: &Pool) -> u64 {
    pool.stats().classes.iter().map(|c| c.misses).sum()
}

fn read_to_end(c: &mut Criterion) {
    let pool = Pool::new();
    eprintln!("steady state (after 20 warm-up reads, 100 reads each):");
    let mut all: Vec<usize> = SIZES.iter().chain(BETWEEN.iter()).copied().collect();
    all.sort_unstable();
    for len in all {
        for _ in 0..20 {
            drop(pool.read_to_end(Stream { left: len }).unwrap());
        }
        let before = misses(&pool);
        let faults = minor_faults();
        let mut held = 0;
        for _ in 0..100 {
            let chunks = pool.read_to_end(Stream { left: len }).unwrap();
            held = chunks.capacity();
        }
        let faults = (minor_faults() - faults) as f64 / 100.0;
        let mut vec = Vec::new();
        Stream { left: len }.read_to_end(&mut vec).unwrap();
        eprintln!(
            "  {:>9} bytes: {:.2} pool misses and {:.1} page faults ({:.2}% of its pages) per read; memory held {:.3}x the data (Vec {:.3}x)",
            len,
            (misses(&pool) - before) as f64 / 100.0,
            faults,
            faults * 100.0 / (len / 4096) as f64,
            held as f64 / len as f64,
            vec.capacity() as f64 / len as f64
        );
    }
    let mut group = c.benchmark_group("read_to_end_64k_reads");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for len in SIZES {
        let id = |name| BenchmarkId::new(name, len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(id("tierpool"), |b| {
            b.iter(|| black_box(pool.read_to_end(Stream { left: len }).unwrap()))
        });
        group.bench_function(id("vec"), |b| {
            b.iter(|| {
                let mut v = Vec::new();
                Stream { left: len }.read_to_end(&mut v).unwrap();
                black_box(v)
            })
        });
        let mut oracle = vec![1u8; len + STREAM_READ];
        group.bench_function(id("oracle"), |b| {
            b.iter(|| {
                oracle.clear();
                Stream { left: len }.read_to_end(&mut oracle).unwrap();
                black_box(&oracle);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = read_to_end
}
criterion_main!(benches);
