//! Throughput of get + drop on one thread and on two, with one pool shared
//! or a pool each: how the fast path scales.
use std::hint::black_box;
use std::time::Instant;
use tierpool::Pool;

const SIZES: [usize; 4] = [4 << 10, 16 << 10, 6 << 10, 64 << 10];
const N: usize = 50_000_000;

fn run(pools: &[&Pool]) -> f64 {
    let start = std::sync::Barrier::new(pools.len());
    let times: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = pools
            .iter()
            .map(|p| {
                let start = &start;
                s.spawn(move || {
                    for i in 0..1000 {
                        black_box(p.get(SIZES[i & 3]));
                    }
                    start.wait();
                    let t = Instant::now();
                    for i in 0..N {
                        black_box(p.get(SIZES[i & 3]));
                    }
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.iter().cloned().fold(0.0, f64::max) / N as f64 * 1e9
}

fn main() {
    let a = Pool::new();
    let b = Pool::new();
    for _ in 0..3 {
        let one = run(&[&a]);
        let shared = run(&[&a, &a]);
        let own = run(&[&a, &b]);
        println!(
            "1 thread {one:.2} ns; 2 threads, one pool {shared:.2} ns ({:.2}x); a pool each {own:.2} ns ({:.2}x)",
            2.0 * one / shared,
            2.0 * one / own
        );
    }
}
