//! `read_to_end` of an unknown-length stream delivered in 64 KiB reads:
//! tierpool against `Vec::read_to_end` and an oracle (one pre-faulted `Vec`
//! with enough capacity, cleared and reused), side by side. Before timing it
//! prints the memory each holds per read, as a multiple of the data.

use std::hint::black_box;
use std::io::{self, Read};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tierpool::Pool;

const READ: usize = 64 << 10;

/// A stream of `len` bytes that hides its length, delivered in 64 KiB reads.
struct Stream {
    left: usize,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(READ).min(self.left);
        buf[..n].fill(0x42);
        self.left -= n;
        Ok(n)
    }
}

fn read_to_end(c: &mut Criterion) {
    let pool = Pool::new();
    let sizes = [1usize << 20, 16 << 20, 64 << 20];
    eprintln!("memory held per read, as a multiple of the data:");
    let odd = [(3 << 19) + 1, (24 << 20) + 1, (65 << 20) + 1];
    for &len in sizes.iter().chain(&odd) {
        let chunks = pool.read_to_end(Stream { left: len }).unwrap();
        let held = chunks.iter().count();
        let capacity = chunks.capacity();
        let mut vec = Vec::new();
        Stream { left: len }.read_to_end(&mut vec).unwrap();
        eprintln!(
            "  {:>9} bytes: tierpool {:.3}x in {held} chunks, Vec {:.3}x",
            len,
            capacity as f64 / len as f64,
            vec.capacity() as f64 / len as f64
        );
    }
    let mut group = c.benchmark_group("read_to_end_64k_reads");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for len in sizes {
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("tierpool", len >> 20), |b| {
            b.iter(|| black_box(pool.read_to_end(Stream { left: len }).unwrap()))
        });
        group.bench_function(BenchmarkId::new("vec", len >> 20), |b| {
            b.iter(|| {
                let mut v = Vec::new();
                Stream { left: len }.read_to_end(&mut v).unwrap();
                black_box(v)
            })
        });
        let mut oracle = vec![1u8; len + READ];
        group.bench_function(BenchmarkId::new("oracle", len >> 20), |b| {
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
