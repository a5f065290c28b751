//! Minor page faults per job of the mixed workload (jobs of 64 KiB–8 MiB
//! written in 16 KiB rows, five held), tierpool against `Vec`, after two
//! warm-up rounds: in the steady state, fresh page faults are most of what
//! separates the pool from an oracle that reuses pre-faulted buffers.
//!
//! `faults [THREAD_CACHE_BYTES]` prints one line per subject: the faults
//! of the last round,
//! which do not depend on the machine's load, and its wall time per job,
//! which does.

use tierpool_harness::workload as common;

tierpool_harness::global_allocator!();

use common::held_jobs;
use tierpool::Pool;

const JOBS: u64 = 400;

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    let after_name = &stat[stat.rfind(')').expect("a name field") + 2..];
    after_name
        .split(' ')
        .nth(7)
        .expect("a minflt field")
        .parse()
        .expect("a number")
}

fn main() {
    let pool = match std::env::args().nth(1) {
        Some(bytes) => Pool::builder()
            .thread_cache_bytes(bytes.parse().expect("THREAD_CACHE_BYTES: a number"))
            .build(),
        None => Pool::new(),
    };
    for subject in ["tierpool", "vec"] {
        let mut faults = 0;
        let mut took = std::time::Duration::ZERO;
        for _round in 0..3 {
            let before = minor_faults();
            let t = std::time::Instant::now();
            if subject == "tierpool" {
                held_jobs(
                    0,
                    JOBS,
                    |s| pool.get(s),
                    |b, r| b.extend_from_slice(r),
                    |_, _| {},
                );
            } else {
                held_jobs(
                    0,
                    JOBS,
                    Vec::with_capacity,
                    |b: &mut Vec<u8>, r| b.extend_from_slice(r),
                    |_, _| {},
                );
            }
            faults = minor_faults() - before;
            took = t.elapsed();
        }
        print!(
            "{subject}: {:.1} page faults per job, {} us per job",
            faults as f64 / JOBS as f64,
            took.as_micros() / JOBS as u128
        );
        if subject == "tierpool" {
            let stats = pool.stats();
            let sum =
                |f: fn(&tierpool::ClassStats) -> u64| stats.classes.iter().map(f).sum::<u64>();
            print!(
                " (all rounds: {} misses, {} cut from idle runs, {} assembled \
                 ({} moves, {:.1} MiB fresh), {} jobs)",
                sum(|c| c.misses),
                stats.large.cut,
                stats.large.assembled,
                stats.large.moves,
                stats.large.assembled_fresh_bytes as f64 / (1 << 20) as f64,
                3 * JOBS
            );
        }
        println!();
    }
}
