//! A service burst, with plain `Vec` and with tierpool, side by side.
//!
//! Threads run the mixed workload of an image service: jobs of 64 KiB to
//! 8 MiB at random, each written through in 16 KiB rows as a decoder fills
//! its output, up to five held at once per thread. Each mode runs in its own
//! child process, so peak resident memory is the mode's own.
//!
//! ```text
//! cargo run --release --example burst                 # both modes, a table
//! cargo run --release --example burst -- --threads 2 --jobs 400
//! ```

use std::collections::VecDeque;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use tierpool::Pool;

const ROW: usize = 16 << 10;
const HELD: usize = 5;
const MIN_JOB: usize = 64 << 10;
const MAX_JOB: usize = 8 << 20;

#[derive(Clone, Copy)]
struct Config {
    threads: usize,
    jobs: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut config = Config {
        threads: 4,
        jobs: 300,
    };
    let mut mode = None;
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).map(String::as_str);
        match (args[i].as_str(), value) {
            ("--threads", Some(v)) => config.threads = parse(v, "--threads"),
            ("--jobs", Some(v)) => config.jobs = parse(v, "--jobs"),
            ("--mode", Some(v)) => mode = Some(v.to_string()),
            (other, _) => {
                eprintln!("usage: burst [--threads N] [--jobs N per thread]  (got {other:?})");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    match mode.as_deref() {
        Some(mode) => run_child(mode, config),
        None => run_parent(&args[0], config),
    }
}

fn parse(value: &str, flag: &str) -> usize {
    match value.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("{flag} takes a positive whole number, got {value:?}");
            std::process::exit(2);
        }
    }
}

/// Runs each mode in a child process and prints the comparison.
fn run_parent(exe: &str, config: Config) {
    println!(
        "burst: {} threads x {} jobs of 64 KiB-8 MiB, 16 KiB rows, {} held per thread\n",
        config.threads, config.jobs, HELD
    );
    let mut rows = Vec::new();
    for mode in ["vec", "pool"] {
        let output = Command::new(exe)
            .args(["--mode", mode])
            .args(["--threads", &config.threads.to_string()])
            .args(["--jobs", &config.jobs.to_string()])
            .output()
            .expect("the example can start itself");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            eprintln!(
                "mode {mode} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::process::exit(1);
        }
        let result = stdout
            .lines()
            .find_map(Measured::parse)
            .expect("the child prints a RESULT line");
        if mode == "pool" {
            println!("pool statistics after the burst:");
            for line in stdout.lines().filter(|l| !l.starts_with("RESULT")) {
                println!("  {line}");
            }
            println!();
        }
        rows.push((mode, result));
    }
    println!(
        "{:<6} {:>9} {:>12} {:>14} {:>16}",
        "mode", "time", "peak RSS", "RSS after", "after - before"
    );
    for (mode, m) in &rows {
        println!(
            "{:<6} {:>8.2}s {:>12} {:>14} {:>16}",
            mode,
            m.elapsed.as_secs_f64(),
            mib(m.peak_kib),
            mib(m.after_kib),
            mib(m.after_kib.saturating_sub(m.before_kib)),
        );
    }
    let (vec, pool) = (&rows[0].1, &rows[1].1);
    println!(
        "\npool vs vec: {:.2}x the speed, {:.2}x the peak",
        vec.elapsed.as_secs_f64() / pool.elapsed.as_secs_f64(),
        pool.peak_kib as f64 / vec.peak_kib.max(1) as f64
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Measured {
    elapsed: Duration,
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
}

impl Measured {
    fn parse(line: &str) -> Option<Measured> {
        let mut fields = line.strip_prefix("RESULT ")?.split(' ');
        let mut next = || fields.next()?.split('=').nth(1)?.parse::<u64>().ok();
        Some(Measured {
            elapsed: Duration::from_micros(next()?),
            before_kib: next()?,
            peak_kib: next()?,
            after_kib: next()?,
        })
    }
}

/// Runs the burst in this process and prints a RESULT line.
fn run_child(mode: &str, config: Config) {
    let pool = Pool::new();
    let before = status_kib("VmRSS");
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..config.threads {
            let pool = &pool;
            s.spawn(move || match mode {
                "vec" => jobs(config.jobs, t, Vec::with_capacity, |b: &mut Vec<u8>, r| {
                    b.extend_from_slice(r)
                }),
                _ => jobs(
                    config.jobs,
                    t,
                    |size| pool.get(size),
                    |b, r| b.extend_from_slice(r),
                ),
            });
        }
    });
    let elapsed = started.elapsed();
    let after = status_kib("VmRSS");
    println!(
        "RESULT micros={} before_kib={} peak_kib={} after_kib={}",
        elapsed.as_micros(),
        before,
        status_kib("VmHWM"),
        after
    );
    if mode == "pool" {
        print!("{}", pool.stats());
    }
}

/// One thread's share of the burst.
fn jobs<B: AsRef<[u8]>>(
    count: usize,
    thread: usize,
    get: impl Fn(usize) -> B,
    put_row: impl Fn(&mut B, &[u8]),
) {
    let row = [0x5a_u8; ROW];
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (thread as u64 + 1);
    let mut held = VecDeque::with_capacity(HELD + 1);
    for _ in 0..count {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = MIN_JOB + (rng as usize % (MAX_JOB - MIN_JOB));
        let mut buf = get(size);
        let mut left = size;
        while left > 0 {
            let n = left.min(ROW);
            put_row(&mut buf, &row[..n]);
            left -= n;
        }
        black_box(buf.as_ref());
        held.push_back(buf);
        if held.len() > HELD {
            held.pop_front();
        }
    }
}

/// A `/proc/self/status` figure in KiB (0 where there is no procfs).
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
