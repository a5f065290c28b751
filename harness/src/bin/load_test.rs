//! A load test of the service example, with the pool and without it.
//!
//! ```sh
//! scripts/load_test.sh            # builds both, then runs this
//! ```
//!
//! It starts the service (`--service PATH`, the release binary of
//! `examples/service.rs`) on loopback, once as it is and once with
//! `--no-pool`, and drives each with the same 500 mixed requests from a
//! bounded client loop (6 in flight): thumbnails of JPEG and PNG uploads
//! (0.3 to 6 megapixels), QR codes, PDFs, and bad inputs (empty, truncated,
//! a decompression bomb, oversized QR text, not UTF-8) whose statuses are
//! checked. It reports throughput, p50/p99 latency, the service's peak and
//! after-idle resident memory, and the pool's hit rate from `/metrics`.

use tierpool_harness::{http, photo, png, procfs};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REQUESTS: usize = 500;
const IN_FLIGHT: usize = 6;
/// Idle time before the after-idle reading: two of the pool's default
/// 5 s trim intervals.
const IDLE: Duration = Duration::from_secs(11);

struct Request {
    path: &'static str,
    body: Vec<u8>,
    /// The status it must get.
    expect: u16,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let service = args
        .iter()
        .position(|a| a == "--service")
        .and_then(|at| args.get(at + 1))
        .cloned()
        .unwrap_or_else(|| "target/release/examples/service".into());
    let requests = requests();
    println!(
        "load test: {REQUESTS} requests ({} kinds of input), {IN_FLIGHT} in flight, against {service}\n",
        requests.len()
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for (name, flags) in [
        ("tierpool", &[][..]),
        ("Vec (--no-pool)", &["--no-pool"][..]),
    ] {
        let report = drive(&service, flags, &requests);
        failed |= report.wrong > 0;
        rows.push((name, report));
    }
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7}",
        "service", "req/s", "p50 ms", "p99 ms", "peak MiB", "idle MiB", "hit rate", "wrong"
    );
    for (name, r) in &rows {
        println!(
            "{:<16} {:>8.1} {:>9.1} {:>9.1} {:>10.0} {:>10.0} {:>9} {:>7}",
            name,
            r.throughput,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.peak_kib as f64 / 1024.0,
            r.idle_kib as f64 / 1024.0,
            r.hit_rate
                .map_or("-".into(), |h| format!("{:.0}%", h * 100.0)),
            r.wrong
        );
    }
    println!(
        "\npeak: the service's peak resident memory (VmHWM); idle: resident {} s after the \
         load; hit rate: pooled requests served by an idle buffer (/metrics); wrong: answers \
         with another status than expected.",
        IDLE.as_secs()
    );
    if failed {
        std::process::exit(1);
    }
}

/// The inputs: valid images, texts and the bad inputs, each with the
/// status it must get.
fn requests() -> Vec<Request> {
    use image::ImageFormat::{Jpeg, Png};
    use photo::photo;
    let png = photo(640, 480, Png);
    let mut list = vec![
        Request {
            path: "/thumbnail?width=256",
            body: photo(3000, 2000, Jpeg),
            expect: 200,
        },
        Request {
            path: "/thumbnail",
            body: photo(2048, 1536, Jpeg),
            expect: 200,
        },
        Request {
            path: "/thumbnail?width=200",
            body: photo(1920, 1080, Png),
            expect: 200,
        },
        Request {
            path: "/thumbnail",
            body: photo(1280, 960, Jpeg),
            expect: 200,
        },
        Request {
            path: "/thumbnail?width=300",
            body: png.clone(),
            expect: 200,
        },
    ];
    for i in 0..4 {
        let text: String = "https://example.org/ticket?id="
            .chars()
            .chain("0123456789abcdef".chars().cycle())
            .take(100 + i * 450)
            .collect();
        list.push(Request {
            path: "/qr",
            body: text.into_bytes(),
            expect: 200,
        });
    }
    for lines in [30, 400] {
        let text: String = (0..lines)
            .map(|l| format!("line {l}: the quick brown fox jumps over the lazy dog\n"))
            .collect();
        list.push(Request {
            path: "/pdf",
            body: text.into_bytes(),
            expect: 200,
        });
    }
    list.push(Request {
        path: "/thumbnail",
        body: Vec::new(),
        expect: 400,
    });
    list.push(Request {
        path: "/thumbnail",
        body: png[..png.len() / 3].to_vec(),
        expect: 422,
    });
    list.push(Request {
        path: "/thumbnail",
        body: png::with_dimensions(&photo(32, 32, Png), 50_000, 50_000),
        expect: 422,
    });
    list.push(Request {
        path: "/qr",
        body: vec![b'q'; 3000],
        expect: 413,
    });
    list.push(Request {
        path: "/pdf",
        body: b"\xff\xfe\xfd".to_vec(),
        expect: 422,
    });
    list
}

struct Report {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    peak_kib: u64,
    idle_kib: u64,
    hit_rate: Option<f64>,
    wrong: usize,
}

fn start(service: &str, flags: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(service)
        .args(["--addr", "127.0.0.1:0"])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {service}: {e} (build it with scripts/load_test.sh)")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("the service's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr)
}

fn drive(service: &str, flags: &[&str], requests: &[Request]) -> Report {
    let (mut child, addr) = start(service, flags);
    let pid = child.id();
    let next = AtomicUsize::new(0);
    let wrong = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(REQUESTS));
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(
                    procfs::status_kib(Some(pid), "VmRSS:").unwrap_or(0),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let clients: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= REQUESTS {
                            break;
                        }
                        // A fixed mix: every kind of input in turn.
                        let request = &requests[(i * 7) % requests.len()];
                        let t = Instant::now();
                        let response = http::post(addr, request.path, &request.body);
                        let elapsed = t.elapsed();
                        if response.status != request.expect {
                            eprintln!(
                                "{} {}: {} (expected {}): {}",
                                request.path,
                                request.body.len(),
                                response.status,
                                request.expect,
                                response.text().trim()
                            );
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies.lock().expect("no panics").push(elapsed);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a client");
        }
        done.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let hwm = procfs::status_kib(Some(pid), "VmHWM:").unwrap_or(0);
    std::thread::sleep(IDLE);
    let idle_kib = procfs::status_kib(Some(pid), "VmRSS:").unwrap_or(0);
    let hit_rate = (flags.is_empty()).then(|| hit_rate(&http::get(addr, "/metrics").text()));
    let _ = child.kill();
    let _ = child.wait();
    let mut latencies = latencies.into_inner().expect("no panics");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Report {
        throughput: REQUESTS as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        peak_kib: hwm.max(peak.load(Ordering::Relaxed)),
        idle_kib,
        hit_rate,
        wrong: wrong.load(Ordering::Relaxed),
    }
}

/// Hits over hits + misses, summed over the classes, from Prometheus text.
fn hit_rate(metrics: &str) -> f64 {
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (hits, misses) = (sum("tierpool_hits_total{"), sum("tierpool_misses_total{"));
    hits / (hits + misses).max(1.0)
}
