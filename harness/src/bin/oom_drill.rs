//! The OOM drill: the same request workload with plain `Vec`, with the pool,
//! and with the pool plus admission, each in a fresh memory cgroup of its
//! own, at limits where `Vec` survives and where it is OOM-killed.
//!
//! ```sh
//! sudo cargo run --release -p tierpool-harness --bin oom_drill    # Linux, root
//! cargo run --release -p tierpool-harness --bin oom_drill -- --help
//! ```
//!
//! Each request holds three buffers at once, as an image service does: the
//! body (1–6 MiB), the decoded frame (3× the body) and the output (the
//! body's size), each written in full. The pools keep up to 1 GiB idle
//! (`max_retained_bytes`), far above every limit: the container's limit
//! has to win by itself. The drill creates its cgroups under
//! the process's own (v1 `memory` or v2), moves only the children it starts
//! into them, samples the working set (usage − inactive page cache, as the
//! kubelet does) every 10 ms, and removes the cgroups when done. It exits
//! non-zero if, at any limit, the pool with either admission was killed or
//! completed under 95% of its requests, or the default pool was killed where
//! `Vec` survived.

use std::io::{BufRead, BufReader, Write};

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierpool::{ContainerMemory, Pool};

use tierpool_harness::cgroup::Cgroup;

const MODES: [&str; 4] = ["vec", "pool", "pool+admission", "pool+get_timeout"];
const MIB: usize = 1 << 20;

#[derive(Clone, Copy)]
struct Load {
    threads: usize,
    requests: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).and_then(|v| v.parse::<usize>().ok())
    };
    let load = Load {
        threads: value("--threads").unwrap_or(8),
        requests: value("--requests").unwrap_or(25),
    };
    if args.iter().any(|a| a == "--help") {
        println!("oom_drill [--threads N] [--requests N per thread] [--limits-mib 400,200,150]");
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1], load);
    }
    let limits: Vec<usize> = args
        .iter()
        .position(|a| a == "--limits-mib")
        .and_then(|at| args.get(at + 1))
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![400, 200, 150]);
    std::process::exit(parent(load, &limits));
}

// === the parent: cgroups, children, the table ===

fn parent(load: Load, limits: &[usize]) -> i32 {
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("oom_drill: creating a memory cgroup needs root; run it as root");
        return 0;
    }
    let own = match ContainerMemory::read() {
        Ok(own) => own,
        Err(e) => {
            println!("oom_drill: no memory cgroup to work under: {e}");
            return 2;
        }
    };
    println!(
        "OOM drill: {} threads x {} requests, each holding a 1-6 MiB body, a 3x frame and an \
         output at once; cgroup v{} under {}\n",
        load.threads,
        load.requests,
        own.cgroup_version,
        own.path.display()
    );
    println!(
        "{:>9}  {:<15} {:>10} {:>9} {:>8} {:>7} {:>15} {:>7}",
        "limit", "mode", "outcome", "requests", "refused", "waited", "peak work. set", "time"
    );
    let mut failed = false;
    for (i, &limit_mib) in limits.iter().enumerate() {
        let mut vec_survived = false;
        for mode in MODES {
            let cgroup = Cgroup::create(
                &own,
                &format!("tierpool-drill-{}-{i}-{mode}", std::process::id()),
                (limit_mib * MIB) as u64,
            );
            let run = match cgroup {
                Ok(cgroup) => run_child(&cgroup, mode, load),
                Err(e) => {
                    println!("oom_drill: could not create a cgroup: {e}");
                    return 2;
                }
            };
            let total = load.threads * load.requests;
            println!(
                "{:>5} MiB  {:<15} {:>10} {:>9} {:>8} {:>7} {:>11.1} MiB {:>6.1}s",
                limit_mib,
                mode,
                if run.killed { "OOM-killed" } else { "survived" },
                format!("{}/{}", run.done, total),
                run.refused,
                run.waited,
                run.peak_working_set as f64 / MIB as f64,
                run.elapsed.as_secs_f64(),
            );
            match mode {
                "vec" => vec_survived = !run.killed,
                "pool" => failed |= vec_survived && run.killed,
                _ => failed |= run.killed || run.done * 100 < total * 95,
            }
        }
    }
    println!(
        "\nrequests: completed of all; refused: turned away by admission (a service answers \
         503); waited: had to queue for memory. peak work. set: the cgroup's usage minus its \
         inactive page cache, sampled every 10 ms."
    );
    if failed {
        println!(
            "FAILED: the pool with admission was killed or completed under 95%, or the default \
             pool was killed where Vec survived"
        );
        return 1;
    }
    0
}

struct Run {
    killed: bool,
    done: usize,
    refused: usize,
    waited: usize,
    peak_working_set: u64,
    elapsed: Duration,
}

fn run_child(cgroup: &Cgroup, mode: &str, load: Load) -> Run {
    let exe = std::env::current_exe().expect("the drill's own path");
    let mut child = Command::new(exe)
        .args(["--child", mode])
        .args(["--threads", &load.threads.to_string()])
        .args(["--requests", &load.requests.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the drill can start itself");
    // Into the cgroup before it allocates anything: it waits for "go".
    cgroup
        .adopt(child.id())
        .expect("the child joins the drill's cgroup");
    let started = Instant::now();
    writeln!(child.stdin.take().expect("piped"), "go").expect("the child reads its stdin");
    let mut peak = 0;
    let status = loop {
        peak = peak.max(cgroup.working_set());
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut report = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            report = line;
        }
    }
    let field = |name: &str| {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    use std::os::unix::process::ExitStatusExt;
    Run {
        killed: status.signal() == Some(libc::SIGKILL),
        done: field("done"),
        refused: field("refused"),
        waited: field("waited"),
        peak_working_set: peak,
        elapsed,
    }
}

// === the child: the request workload ===

fn child(mode: &str, load: Load) {
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .expect("the parent says go");
    // Built after the move, so the pool reads the drill's cgroup limit; a
    // generous retention cap, as a service might set: the limit wins.
    let pool = Pool::builder().max_retained_bytes(1 << 30).build();
    let (done, refused, waited) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..load.threads {
            let (pool, done, refused) = (&pool, &done, &refused);
            s.spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (t as u64 + 1);
                for _ in 0..load.requests {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let body = MIB + (rng % (5 * MIB as u64)) as usize;
                    let ok = match mode {
                        "vec" => request_vec(body),
                        "pool" => request_pool(|n| Some(pool.get(n)), body),
                        // Each buffer on its own, waiting for memory: three
                        // reservations a request, from many threads at once.
                        "pool+get_timeout" => request_pool(
                            |n| pool.get_timeout(n, Duration::from_secs(30)).ok(),
                            body,
                        ),
                        _ => match pool.admit(5 * body, Duration::from_secs(30)) {
                            Ok(permit) => request_pool(|n| Some(permit.get(n)), body),
                            Err(_) => false,
                        },
                    };
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    waited.store(pool.stats().waited, Ordering::Relaxed);
    println!(
        "done={} refused={} waited={}",
        done.into_inner(),
        refused.into_inner(),
        waited.into_inner()
    );
}

/// One request with `Vec`: body, frame and output held at once.
fn request_vec(body: usize) -> bool {
    let b = vec![1u8; body];
    let f = vec![b[0]; 3 * body];
    let o = vec![f[0]; body];
    std::thread::sleep(Duration::from_millis(2));
    std::hint::black_box((&b, &f, &o));
    true
}

/// The same request with pooled buffers from `get` (`None`: refused).
fn request_pool(get: impl Fn(usize) -> Option<tierpool::PooledBuf>, body: usize) -> bool {
    let Some(mut b) = get(body) else { return false };
    b.resize(body, 1);
    let Some(mut f) = get(3 * body) else {
        return false;
    };
    f.resize(3 * body, b[0]);
    let Some(mut o) = get(body) else { return false };
    o.resize(body, f[0]);
    std::thread::sleep(Duration::from_millis(2));
    std::hint::black_box((&b, &f, &o));
    true
}
