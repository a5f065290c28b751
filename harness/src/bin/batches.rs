//! The main job: the batches an image, QR and PDF service runs, with plain
//! `Vec` and with tierpool, side by side.
//!
//! ```sh
//! cargo run --release -p tierpool-harness --bin batches
//! ```
//!
//! It makes its own data (photos as JPEG and PNG up to 12 megapixels, QR
//! texts, documents), then runs the same work in a child process per mode:
//! bursts of image thumbnails (read the file, decode, resize to 512 wide,
//! encode PNG), QR codes (encode, rasterise, PNG) and PDFs (read the text,
//! lay out pages) on 4 threads, with idle gaps between bursts. It checks the
//! two modes' outputs are byte for byte equal, prints a summary (time, peak
//! and after-idle resident memory), a table per batch, and draws resident
//! memory over time. As root with a memory cgroup it runs both modes again
//! under a limit below plain `Vec`'s peak and shows who is OOM-killed; the
//! pool's workers hold a job back while admission refuses its memory.

use tierpool_harness::{chart, procfs, work};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tierpool::{Chunks, ContainerMemory, Pool};
use tierpool_harness::cgroup::Cgroup;
use work::Failure;

/// The jobs' own large allocations (the decoders', pdf-writer's) go
/// through tierpool's large tier too; the `vec` child switches it off, so
/// plain `Vec` runs on the system allocator alone.
#[cfg(not(tierpool_global_alloc))]
#[global_allocator]
static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new();

const THREADS: usize = 4;
const BURSTS: usize = 3;
/// Idle time after each burst.
const GAP: Duration = Duration::from_millis(2500);
/// The pool's trim interval: a buffer idle through one interval is freed at
/// the next tick, so a gap frees what the burst left.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
const THUMB_WIDTH: u32 = 512;
const MAX_FRAME: u64 = 256 << 20;
const KINDS: [&str; 3] = ["images", "qr", "pdf"];
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let dir = PathBuf::from(&args[at + 2]);
        child(&args[at + 1], &dir);
        return;
    }
    std::process::exit(parent());
}

// === the data ===

/// Where the data and the chart go: under cargo's target directory.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the program's own path");
    // target/<profile>/batches
    exe.ancestors()
        .nth(2)
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
}

/// A photo-like image: smooth gradients with noise, so codecs work as on
/// real photos.
fn photo(width: u32, height: u32, seed: u32) -> image::DynamicImage {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state & 15) as u8;
        image::Rgb([
            ((x * 255 / width) as u8).wrapping_add(noise),
            ((y * 255 / height) as u8).wrapping_add(noise / 2),
            (((x + y) / 7) as u8).wrapping_add(noise),
        ])
    }))
}

/// The job inputs, written once into `dir`: image files, QR texts, PDF
/// texts. Returns the jobs of one burst.
fn make_data(dir: &Path) -> std::io::Result<Vec<Job>> {
    std::fs::create_dir_all(dir)?;
    let sizes = [
        (4000, 3000, "jpg"),
        (3264, 2448, "jpg"),
        (1920, 1080, "jpg"),
        (1920, 1080, "png"),
        (1280, 960, "png"),
        (1024, 768, "jpg"),
        (800, 600, "png"),
        (640, 480, "jpg"),
    ];
    let mut jobs = Vec::new();
    for round in 0..2 {
        for (i, &(w, h, ext)) in sizes.iter().enumerate() {
            let path = dir.join(format!("photo-{round}-{i}.{ext}"));
            if !path.exists() {
                let format = if ext == "jpg" {
                    image::ImageFormat::Jpeg
                } else {
                    image::ImageFormat::Png
                };
                photo(w, h, (round * 10 + i) as u32)
                    .save_with_format(&path, format)
                    .map_err(std::io::Error::other)?;
            }
            jobs.push(Job::Image(path));
        }
    }
    for i in 0..120usize {
        let len = 60 + (i * 137) % 1900;
        let text: String = format!("https://example.org/ticket/{i}?")
            .chars()
            .chain("abcdefghijklmnopqrstuvwxyz0123456789".chars().cycle())
            .take(len)
            .collect();
        jobs.push(Job::Qr(text.into_bytes()));
    }
    for i in 0..24usize {
        let path = dir.join(format!("document-{i}.txt"));
        if !path.exists() {
            let lines = 20 + (i * 53) % 600;
            let text: String = (0..lines)
                .map(|l| {
                    format!(
                        "Document {i}, line {l}: the quick brown fox jumps over the lazy dog.\n"
                    )
                })
                .collect();
            std::fs::write(&path, text)?;
        }
        jobs.push(Job::Pdf(path));
    }
    // Interleaved as requests arrive: a deterministic shuffle.
    let mut order: Vec<(u64, Job)> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            (
                (i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17),
                j,
            )
        })
        .collect();
    order.sort_by_key(|(k, _)| *k);
    Ok(order.into_iter().map(|(_, j)| j).collect())
}

#[derive(Clone)]
enum Job {
    Image(PathBuf),
    Qr(Vec<u8>),
    Pdf(PathBuf),
}

impl Job {
    fn kind(&self) -> usize {
        match self {
            Job::Image(_) => 0,
            Job::Qr(_) => 1,
            Job::Pdf(_) => 2,
        }
    }
}

// === the parent: runs, cgroups, summary, tables, chart ===

#[derive(Default, Clone)]
struct Run {
    killed: bool,
    finished: bool,
    wall: Duration,
    peak_kib: u64,
    idle_kib: u64,
    start_kib: u64,
    busy_micros: [u64; 3],
    jobs: [u64; 3],
    digest: [u64; 3],
    refused: u64,
    hit_rate: f64,
    peak_working_set: u64,
    samples: Vec<(f64, f64)>,
}

fn parent() -> i32 {
    let started = Instant::now();
    let dir = target_dir().join("batches-data");
    let burst = match make_data(&dir) {
        Ok(jobs) => jobs,
        Err(e) => {
            eprintln!(
                "batches: could not write the data under {}: {e}",
                dir.display()
            );
            return 2;
        }
    };
    eprintln!(
        "batches: {} jobs a burst ({} images, {} QR codes, {} PDFs), {BURSTS} bursts on {THREADS} threads, {} s gaps",
        burst.len(),
        burst.iter().filter(|j| j.kind() == 0).count(),
        burst.iter().filter(|j| j.kind() == 1).count(),
        burst.iter().filter(|j| j.kind() == 2).count(),
        GAP.as_secs_f64()
    );
    let vec = run_child("vec", &dir, None);
    let pool = run_child("pool", &dir, None);
    // The pool drops the page cache of the files it reads (its default);
    // this run keeps it, to show what that costs in time.
    let keep = run_child("pool-keep", &dir, None);
    let same = vec.digest == pool.digest
        && vec.digest == keep.digest
        && [&vec, &pool, &keep].iter().all(|r| r.finished);

    // Under a limit: 80% of plain Vec's peak, where it exists.
    let limited = limited_runs(&dir, &vec);

    let chart = target_dir().join("batches-rss.svg");
    let series = [
        ("Vec", vec.samples.clone()),
        ("tierpool", pool.samples.clone()),
    ];
    let caption = "resident memory: 3 bursts of image, QR and PDF jobs with idle gaps";
    let chart_note = match chart::draw(&chart, caption, "seconds", &series) {
        Ok(()) => format!("chart: {}", chart.display()),
        Err(e) => format!("chart: not drawn ({e})"),
    };

    // The summary first.
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("Summary ({} s in all)", started.elapsed().as_secs());
    println!(
        "- time: tierpool ran the bursts {:.2}x as fast as plain Vec ({:.2} s against {:.2} s); \
         {:.2}x with the page cache kept",
        vec.wall.as_secs_f64() / pool.wall.as_secs_f64(),
        pool.wall.as_secs_f64(),
        vec.wall.as_secs_f64(),
        vec.wall.as_secs_f64() / keep.wall.as_secs_f64(),
    );
    println!(
        "- peak resident memory: tierpool {:.0} MiB, Vec {:.0} MiB ({:.2}x)",
        mib(pool.peak_kib),
        mib(vec.peak_kib),
        pool.peak_kib as f64 / vec.peak_kib as f64
    );
    println!(
        "- after the last idle gap: tierpool {:.0} MiB, Vec {:.0} MiB (started at {:.0} and {:.0})",
        mib(pool.idle_kib),
        mib(vec.idle_kib),
        mib(pool.start_kib),
        mib(vec.start_kib)
    );
    match &limited {
        Ok((limit, v, p)) => println!(
            "- under a {:.0} MiB memory limit (80% of Vec's peak): Vec {}, tierpool {} ({} jobs held back by admission)",
            *limit as f64 / MIB,
            outcome(v),
            outcome(p),
            p.refused
        ),
        Err(why) => println!("- under a memory limit: not run ({why})"),
    }
    println!(
        "- outputs: {}",
        if same {
            "byte for byte equal in both modes"
        } else {
            "DIFFERENT (or a run failed)"
        }
    );

    println!("\nPer batch (busy time summed over the threads, all bursts):");
    println!(
        "{:<8} {:>6} {:>11} {:>12} {:>9} {:>17} {:>9}",
        "batch", "jobs", "Vec ms/job", "pool ms/job", "speed-up", "pool, cache kept", "speed-up"
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let per = |r: &Run| r.busy_micros[k] as f64 / 1000.0 / r.jobs[k].max(1) as f64;
        println!(
            "{:<8} {:>6} {:>11.2} {:>12.2} {:>8.2}x {:>17.2} {:>8.2}x",
            kind,
            vec.jobs[k],
            per(&vec),
            per(&pool),
            per(&vec) / per(&pool),
            per(&keep),
            per(&vec) / per(&keep)
        );
    }
    println!("\nPer run:");
    println!(
        "{:<22} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "run", "bursts s", "start MiB", "peak MiB", "idle MiB", "hit rate", "refused"
    );
    let row = |name: &str, r: &Run| {
        println!(
            "{:<22} {:>8.2} {:>10.0} {:>10.0} {:>10.0} {:>9} {:>9}",
            name,
            r.wall.as_secs_f64(),
            mib(r.start_kib),
            mib(r.peak_kib),
            mib(r.idle_kib),
            if r.hit_rate > 0.0 {
                format!("{:.0}%", r.hit_rate * 100.0)
            } else {
                "-".into()
            },
            r.refused
        );
    };
    row("Vec", &vec);
    row("tierpool", &pool);
    row("tierpool, cache kept", &keep);
    if let Ok((limit, v, p)) = &limited {
        for (name, r) in [("Vec", v), ("tierpool", p)] {
            println!(
                "{:<22} {:>8} {:>10} {:>10.0} {:>10} {:>9} {:>9}   {} (peak working set {:.0} MiB)",
                format!("{name}, {:.0} MiB limit", *limit as f64 / MIB),
                if r.finished {
                    format!("{:.2}", r.wall.as_secs_f64())
                } else {
                    "-".into()
                },
                "-",
                r.peak_working_set as f64 / MIB,
                "-",
                "-",
                r.refused,
                outcome(r),
                r.peak_working_set as f64 / MIB
            );
        }
    }
    println!(
        "\nbursts s: wall time of the bursts (gaps excluded). start: resident memory before \
         the first burst. peak: the process's peak resident memory \
         (VmHWM); under a limit, the cgroup's working set (usage - inactive page cache, \
         sampled every 10 ms). idle: resident after the last {:.1} s gap (the pool trims every \
         {} s). hit rate: pooled requests served by an idle buffer. refused: jobs held back \
         by admission and retried. The pool reads the files with read_file, which drops their \
         page cache (so they leave none in the working set, and each read comes from storage); \
         'cache kept' is the same pool with PageCache::Keep. The PDFs are built by pdf-writer \
         in its own Vec in every mode. {chart_note}",
        GAP.as_secs_f64(),
        TRIM_INTERVAL.as_secs()
    );
    // A run that failed fails the job: under the limit, plain Vec may be
    // OOM-killed (that is what is shown), the pool must finish.
    let limited_ok = match &limited {
        Ok((_, _, p)) => p.finished,
        Err(_) => true,
    };
    if !limited_ok {
        eprintln!("batches: the pool's run under the memory limit did not finish");
    }
    if same && limited_ok { 0 } else { 1 }
}

fn outcome(r: &Run) -> &'static str {
    if r.killed {
        "OOM-killed"
    } else if r.finished {
        "survived"
    } else {
        "failed"
    }
}

/// Both modes again in a memory cgroup of their own, limited to 80% of
/// plain Vec's peak: (limit, vec, pool), or why it could not run.
fn limited_runs(dir: &Path, vec: &Run) -> Result<(u64, Run, Run), String> {
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("creating a memory cgroup needs root".into());
    }
    let own = ContainerMemory::read().map_err(|e| format!("no memory cgroup: {e}"))?;
    let limit = vec.peak_kib * 1024 * 8 / 10;
    let mut runs = Vec::new();
    for mode in ["vec", "pool"] {
        let name = format!("tierpool-batches-{}-{mode}", std::process::id());
        let cgroup = Cgroup::create(&own, &name, limit).map_err(|e| format!("cgroup: {e}"))?;
        runs.push(run_child(mode, dir, Some(&cgroup)));
    }
    let pool = runs.pop().expect("two runs");
    let vec = runs.pop().expect("two runs");
    Ok((limit, vec, pool))
}

fn run_child(mode: &str, dir: &Path, cgroup: Option<&Cgroup>) -> Run {
    eprintln!(
        "batches: {mode}{} ...",
        if cgroup.is_some() {
            " under the limit"
        } else {
            ""
        }
    );
    let exe = std::env::current_exe().expect("the program's own path");
    let mut child = Command::new(exe)
        .args(["--child", mode])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the program can start itself");
    if let Some(cgroup) = cgroup {
        cgroup
            .adopt(child.id())
            .expect("the child joins the cgroup");
    }
    writeln!(child.stdin.take().expect("piped"), "go").expect("the child reads its stdin");
    let started = Instant::now();
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut run = Run::default();
    let status = loop {
        let t = started.elapsed().as_secs_f64();
        if let Some(cg) = cgroup {
            run.peak_working_set = run.peak_working_set.max(cg.working_set());
        }
        if let Some(kib) = procfs::status_kib(Some(pid), "VmRSS:") {
            run.samples.push((t, kib as f64 / 1024.0));
        }
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines = reader.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    run.killed = status.signal() == Some(libc::SIGKILL);
    if let Some(result) = lines.iter().find(|l| l.starts_with("RESULT ")) {
        let field = |name: &str| -> u64 {
            result
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        run.finished = status.success();
        run.wall = Duration::from_micros(field("wall_us"));
        run.peak_kib = field("hwm_kib");
        run.idle_kib = field("idle_kib");
        run.start_kib = field("start_kib");
        run.refused = field("refused");
        run.hit_rate = field("hit_permille") as f64 / 1000.0;
        for (k, kind) in KINDS.iter().enumerate() {
            run.busy_micros[k] = field(&format!("{kind}_us"));
            run.jobs[k] = field(&format!("{kind}_jobs"));
            run.digest[k] = field(&format!("{kind}_digest"));
        }
    }
    run
}

// === the child: the work ===

/// FNV-1a over a stream of pieces: the same digest however the bytes are
/// split into chunks.
#[derive(Clone, Copy)]
struct Digest(u64);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn digest_chunks(chunks: &Chunks) -> u64 {
    let mut d = Digest::new();
    for piece in chunks.iter() {
        d.update(piece);
    }
    d.0
}

fn digest_bytes(bytes: &[u8]) -> u64 {
    let mut d = Digest::new();
    d.update(bytes);
    d.0
}

/// How long a pooled job waits in admission's queue before it is held
/// back and tried again.
const ADMISSION_WAIT: Duration = Duration::from_secs(30);

/// One job in `mode`: the digest of its output. With the pool, the job is
/// admitted by its cost (an image's from its header) before it works, and
/// its memory is drawn on the permit: a refusal can only come before the
/// work starts, and the caller then tries the job again.
fn run_job(job: &Job, pool: Option<&Pool>) -> Result<u64, Failure> {
    let io = |e: std::io::Error| match tierpool::Error::from_io(&e) {
        Some(err) if err.is_refused() => Failure::Refused(e.to_string()),
        _ => Failure::BadRequest(e.to_string()),
    };
    let admit = |pool: &Pool, cost: usize| {
        pool.admit(cost, ADMISSION_WAIT)
            .map_err(|e| Failure::Refused(e.to_string()))
    };
    match (job, pool) {
        (Job::Image(path), Some(pool)) => {
            let mut upload = pool.read_file(path).map_err(io)?;
            let cost = work::thumbnail_cost(&mut upload, THUMB_WIDTH, MAX_FRAME)?;
            let permit = admit(pool, cost)?;
            work::thumbnail_pool(&permit, upload, THUMB_WIDTH, MAX_FRAME).map(|c| digest_chunks(&c))
        }
        (Job::Image(path), None) => {
            let upload = std::fs::read(path).map_err(io)?;
            work::thumbnail_vec(&upload, THUMB_WIDTH, MAX_FRAME).map(|v| digest_bytes(&v))
        }
        (Job::Qr(text), Some(pool)) => {
            let permit = admit(pool, work::QR_COST)?;
            work::qr_pool(&permit, text).map(|c| digest_chunks(&c))
        }
        (Job::Qr(text), None) => work::qr_vec(text).map(|v| digest_bytes(&v)),
        (Job::Pdf(path), Some(pool)) => {
            let text = pool.read_file(path).map_err(io)?.into_contiguous();
            // pdf-writer builds in its own `Vec`: the permit holds the room
            // for it while it works.
            let _permit = admit(pool, work::pdf_cost(text.len()))?;
            work::pdf(&text).map(|v| digest_bytes(&v))
        }
        (Job::Pdf(path), None) => {
            let text = std::fs::read(path).map_err(io)?;
            work::pdf(&text).map(|v| digest_bytes(&v))
        }
    }
}

fn child(mode: &str, dir: &Path) {
    let burst = make_data(dir).expect("the data the parent wrote");
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .expect("the parent's go");
    #[cfg(not(tierpool_global_alloc))]
    GLOBAL.set_enabled(mode.starts_with("pool"));
    let pool = mode.starts_with("pool").then(|| {
        Pool::builder()
            .name("batches")
            .trim_interval(TRIM_INTERVAL)
            .page_cache(if mode == "pool-keep" {
                tierpool::PageCache::Keep
            } else {
                tierpool::PageCache::Drop
            })
            .build()
    });
    let start_kib = procfs::status_kib(None, "VmRSS:").unwrap_or(0);
    let busy: [AtomicU64; 3] = Default::default();
    let jobs: [AtomicU64; 3] = Default::default();
    // Per job, in job order, so the digest does not depend on scheduling.
    let digests = Mutex::new(vec![[0u64; 3]; burst.len()]);
    let refused = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let mut wall = Duration::ZERO;
    for _ in 0..BURSTS {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = burst.get(i) else { break };
                        let t = Instant::now();
                        let digest = loop {
                            match run_job(job, pool.as_ref()) {
                                Ok(d) => break d,
                                Err(Failure::Refused(_)) => {
                                    // Held back: admission refused the
                                    // memory; wait for some to come back.
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                                Err(e) => {
                                    eprintln!("batches: job {i} failed: {}", e.message());
                                    failed.store(true, Ordering::Relaxed);
                                    break 0;
                                }
                            }
                        };
                        let k = job.kind();
                        busy[k].fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        jobs[k].fetch_add(1, Ordering::Relaxed);
                        digests.lock().expect("no panics")[i][k] = digest;
                    }
                });
            }
        });
        wall += started.elapsed();
        std::thread::sleep(GAP);
    }
    let idle_kib = procfs::status_kib(None, "VmRSS:").unwrap_or(0);
    let hwm_kib = procfs::status_kib(None, "VmHWM:").unwrap_or(0);
    let mut by_kind = [Digest::new(); 3];
    for d in digests.lock().expect("no panics").iter() {
        for k in 0..3 {
            by_kind[k].update(&d[k].to_le_bytes());
        }
    }
    let hit_permille = pool.as_ref().map_or(0, |p| {
        let stats = p.stats();
        let hits: u64 = stats.classes.iter().map(|c| c.hits).sum();
        let misses: u64 = stats.classes.iter().map(|c| c.misses).sum();
        hits * 1000 / (hits + misses).max(1)
    });
    let mut line = format!(
        "RESULT wall_us={} start_kib={start_kib} hwm_kib={hwm_kib} idle_kib={idle_kib} refused={} hit_permille={hit_permille}",
        wall.as_micros(),
        refused.load(Ordering::Relaxed),
    );
    for (k, kind) in KINDS.iter().enumerate() {
        line += &format!(
            " {kind}_us={} {kind}_jobs={} {kind}_digest={}",
            busy[k].load(Ordering::Relaxed),
            jobs[k].load(Ordering::Relaxed),
            by_kind[k].0
        );
    }
    println!("{line}");
    if failed.load(Ordering::Relaxed) {
        std::process::exit(1);
    }
}
