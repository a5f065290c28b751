//! The service under a memory limit: the drill that matters most.
//!
//! ```sh
//! cargo build --release --features http-body,image,metrics --example service
//! cargo run --release -p tierpool-harness --bin service_drill -- [--limits 256,384,440] [--runs 1] [--mode both|pool|vec] [--clients 8] [--requests 48] [--only K] [--settle] [--verbose]
//! ```
//!
//! For each limit and mode it starts the service example (release build) in
//! a memory cgroup of its own with that limit (it joins the cgroup before
//! it runs a line of its own), and 8 clients post 48 large images at once
//! to `/thumbnail?width=256`: a 6000×4000 JPEG (a 72 MB frame from a 1 MB
//! upload), a 4000×3000 PNG and a 3000×2000 JPEG, in turn. It records every
//! answer's status, any connection reset or other error, and the cgroup's
//! peak working set; after the load it waits for `/ready`, posts one more
//! image, and stops the service with SIGTERM. Needs root and a memory
//! cgroup (v1 or v2). Exits non-zero if the pool's service failed a run:
//! killed, an answer other than 200 or 503, a reset, fewer served than the
//! floor, not ready or not serving after the load, or a non-zero exit.

use tierpool_harness::photo;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tierpool::ContainerMemory;
use tierpool_harness::cgroup::Cgroup;

const MIB: u64 = 1 << 20;

#[derive(Default, Debug)]
struct Outcome {
    killed: bool,
    ok: usize,
    shed: usize,
    other: Vec<u16>,
    errors: Vec<String>,
    peak: u64,
    ready_after: Option<Duration>,
    served_after: bool,
    exit: Option<i32>,
    wall: Duration,
    /// memory.stat at the peak working set.
    at_peak: Vec<(String, u64)>,
    /// The service's resident memory before the load, and 15 s after it.
    rss_before: Option<u64>,
    rss_after: Option<u64>,
}

impl Outcome {
    /// Served at least `floor` of the requests, with only 200 and 503, no
    /// error, then ready and serving, and a clean exit.
    fn passed(&self, floor: usize) -> bool {
        !self.killed
            && self.other.is_empty()
            && self.errors.is_empty()
            && self.ok >= floor
            && self.ready_after.is_some()
            && self.served_after
            && self.exit == Some(0)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).cloned()
    };
    let service = value("--service").unwrap_or_else(|| "target/release/examples/service".into());
    let limits: Vec<u64> = value("--limits")
        .unwrap_or_else(|| "256,384,440".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .expect("--limits takes MiB, comma-separated")
                * MIB
        })
        .collect();
    let verbose = args.iter().any(|a| a == "--verbose");
    // `--settle`: also wait 15 s after the load and read what the service
    // still holds.
    let settle = args.iter().any(|a| a == "--settle");
    let clients: usize =
        value("--clients").map_or(8, |v| v.parse().expect("--clients takes a count"));
    let requests: usize =
        value("--requests").map_or(48, |v| v.parse().expect("--requests takes a count"));
    // `--only K`: every request posts upload K (0, 1 or 2).
    let only: Option<usize> = value("--only").map(|v| v.parse().expect("--only takes 0, 1 or 2"));
    let runs: usize = value("--runs").map_or(1, |v| v.parse().expect("--runs takes a count"));
    let modes: Vec<&str> = match value("--mode").as_deref() {
        None | Some("both") => vec!["pool", "vec"],
        Some("pool") => vec!["pool"],
        Some("vec") => vec!["vec"],
        Some(other) => panic!("--mode is both, pool or vec, not {other}"),
    };
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("service_drill: creating a memory cgroup needs root");
        std::process::exit(2);
    }
    let own = match ContainerMemory::read() {
        Ok(own) => own,
        Err(e) => {
            eprintln!("service_drill: no memory cgroup: {e}");
            std::process::exit(2);
        }
    };
    if !std::path::Path::new(&service).exists() {
        eprintln!(
            "service_drill: {service} is missing: cargo build --release --features http-body,image,metrics --example service"
        );
        std::process::exit(2);
    }
    let uploads = uploads();
    println!(
        "service drill: {clients} clients, {requests} thumbnails of large images ({}), {runs} run(s) per limit and mode",
        uploads
            .iter()
            .map(|u| format!("{} {:.1} MB", u.0, u.1.len() as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:>6} {:<5} {:>4} {:<11} {:>4} {:>4} {:>6} {:>7} {:>9} {:>8} {:>7} {:>5} {:>7}",
        "MiB",
        "mode",
        "run",
        "outcome",
        "200",
        "503",
        "other",
        "errors",
        "peak MiB",
        "ready s",
        "again",
        "exit",
        "wall s"
    );
    let mut failed = false;
    for &limit in &limits {
        for mode in &modes {
            for run in 0..runs {
                let load = Load {
                    clients,
                    requests,
                    only,
                };
                let outcome = drill(&own, &service, mode, limit, &uploads, &load, settle);
                // Half the requests at the smallest limit, three quarters
                // above it.
                let floor = if limit <= 256 * MIB {
                    requests / 2
                } else {
                    requests * 3 / 4
                };
                let passed = outcome.passed(floor);
                if *mode == "pool" && !passed {
                    failed = true;
                }
                println!(
                    "{:>6} {:<5} {:>4} {:<11} {:>4} {:>4} {:>6} {:>7} {:>9.0} {:>8} {:>7} {:>5} {:>7.1}",
                    limit / MIB,
                    mode,
                    run + 1,
                    if outcome.killed {
                        "OOM-killed"
                    } else if passed {
                        "survived"
                    } else {
                        "failed"
                    },
                    outcome.ok,
                    outcome.shed,
                    outcome.other.len(),
                    outcome.errors.len(),
                    outcome.peak as f64 / MIB as f64,
                    outcome
                        .ready_after
                        .map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64())),
                    if outcome.served_after { "200" } else { "-" },
                    outcome.exit.map_or("-".into(), |c| c.to_string()),
                    outcome.wall.as_secs_f64(),
                );
                if let (Some(before), Some(after)) = (outcome.rss_before, outcome.rss_after) {
                    println!(
                        "         resident before the load {:.0} MiB, 15 s after it {:.0} MiB",
                        before as f64 / 1024.0,
                        after as f64 / 1024.0
                    );
                }
                if verbose {
                    let parts: Vec<String> = outcome
                        .at_peak
                        .iter()
                        .map(|(k, v)| format!("{k} {:.0}", *v as f64 / MIB as f64))
                        .collect();
                    println!("         at the peak (MiB): {}", parts.join(", "));
                }
                for e in outcome.errors.iter().take(3) {
                    println!("         error: {e}");
                }
                if !outcome.other.is_empty() {
                    println!("         other statuses: {:?}", outcome.other);
                }
            }
        }
    }
    println!(
        "\nMiB: the cgroup's memory limit. 200: thumbnails served; 503: shed by admission \
         (Retry-After). errors: resets and other connection errors. peak: the cgroup's peak \
         working set (usage - inactive file), sampled every 10 ms. ready: seconds after the \
         load until /ready answered 200; again: one more thumbnail then. exit: the service's \
         exit code on SIGTERM. The pool's service must survive every run with only 200 and \
         503, serve at least half the requests at 256 MiB and three quarters above, be ready \
         and serve again, and exit 0."
    );
    std::process::exit(i32::from(failed));
}

/// The uploads, by name: JPEG and PNG photos made here.
fn uploads() -> Vec<(&'static str, Vec<u8>)> {
    use image::ImageFormat::{Jpeg, Png};
    use photo::photo;
    vec![
        ("6000x4000 JPEG", photo(6000, 4000, Jpeg)),
        ("4000x3000 PNG", photo(4000, 3000, Png)),
        ("3000x2000 JPEG", photo(3000, 2000, Jpeg)),
    ]
}

/// The clients' load.
struct Load {
    clients: usize,
    requests: usize,
    /// Every request posts this upload, instead of each in turn.
    only: Option<usize>,
}

/// One run: the service in a fresh cgroup with `limit`, under the load.
fn drill(
    own: &ContainerMemory,
    service: &str,
    mode: &str,
    limit: u64,
    uploads: &[(&'static str, Vec<u8>)],
    load: &Load,
    settle: bool,
) -> Outcome {
    let name = format!(
        "tierpool-drill-{}-{mode}-{}",
        std::process::id(),
        limit / MIB
    );
    let cgroup = Cgroup::create(own, &name, limit).expect("a cgroup of our own");
    let mut command = Command::new(service);
    command
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if mode == "vec" {
        command.arg("--no-pool");
    }
    let procs = CString::new(cgroup.procs_path().as_os_str().as_encoded_bytes())
        .expect("a path without NUL");
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls `open`, `write` and `close` (async-signal-safe) on memory made
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command.spawn().expect("the service starts");
    let addr = listening_on(&mut child);
    let mut outcome = Outcome::default();
    // Warm up (one of each upload), then the resident memory before the
    // load.
    for (_, body) in uploads {
        let _ = post(addr, "/thumbnail?width=256", body);
    }
    std::thread::sleep(Duration::from_millis(500));
    outcome.rss_before = rss_kib(child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let at_peak = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, peak, at_peak) = (stop.clone(), peak.clone(), at_peak.clone());
        let dir = cgroup.clone_handle();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ws = dir.working_set();
                if ws > peak.fetch_max(ws, Ordering::Relaxed) {
                    *at_peak.lock().unwrap() = dir.breakdown(&[
                        "rss",
                        "cache",
                        "active_file",
                        "inactive_file",
                        "mapped_file",
                    ]);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..load.clients {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= load.requests {
                        break;
                    }
                    let body = &uploads[load.only.unwrap_or(i % uploads.len())].1;
                    let result = post(addr, "/thumbnail?width=256", body);
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    for result in results.into_inner().unwrap() {
        match result {
            Ok(200) => outcome.ok += 1,
            Ok(503) => outcome.shed += 1,
            Ok(other) => outcome.other.push(other),
            Err(e) => outcome.errors.push(e),
        }
    }
    outcome.wall = started.elapsed();
    // After the load: ready again, and serving.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(30) {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if get(addr, "/ready") == Ok(200) {
            outcome.ready_after = Some(after.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if outcome.ready_after.is_some() {
        outcome.served_after = post(addr, "/thumbnail?width=256", &uploads[2].1) == Ok(200);
        // Idle: what the service still holds 15 s after the load.
        if settle {
            std::thread::sleep(Duration::from_secs(15));
            outcome.rss_after = rss_kib(child.id());
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the service") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    outcome.peak = peak.load(Ordering::Relaxed);
    outcome.at_peak = std::mem::take(&mut *at_peak.lock().unwrap());
    if let Some(status) = status {
        outcome.killed = status.signal() == Some(libc::SIGKILL) || cgroup.oom_killed();
        outcome.exit = status.code();
    }
    drop(cgroup);
    outcome
}

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
}

/// The address from the service's first line, `listening on ADDR`.
fn listening_on(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("the service prints its address")
        .expect("a line");
    // Keep reading, so the service never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    first
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
}

/// POSTs `body`; the status, or the connection's error (a reset).
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<u16, String> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: drill\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, &head, body)
}

fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: drill\r\nconnection: close\r\n\r\n"),
        b"",
    )
}

fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Result<u16, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    conn.write_all(head.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    conn.write_all(body).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned();
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no response (got {} bytes)", raw.len()))
}
