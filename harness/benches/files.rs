//! What keeping file I/O out of the page cache costs: `Pool::write_file` and
//! `Pool::read_file` with `PageCache::Drop` (the default) and `Keep`, beside
//! `std::fs::write` and `std::fs::read`, in one run. Medians of 7.
//!
//! `cargo bench -p tierpool-harness --bench files [-- --mib 64]`

use std::time::{Duration, Instant};

use tierpool::{PageCache, Pool};

fn median(mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[3]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(64usize);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let dir = std::env::temp_dir().join(format!("tierpool-files-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("data.bin");
    let drop_cache = Pool::new();
    let keep_cache = Pool::builder().page_cache(PageCache::Keep).build();

    let rows = [
        (
            "write, std::fs::write",
            median(|| std::fs::write(&path, &data).unwrap()),
        ),
        (
            "write, tierpool Keep",
            median(|| keep_cache.write_file(&path, &data[..]).unwrap()),
        ),
        (
            "write, tierpool Drop",
            median(|| drop_cache.write_file(&path, &data[..]).unwrap()),
        ),
        (
            "read, std::fs::read",
            median(|| drop(std::fs::read(&path).unwrap())),
        ),
        (
            "read, tierpool Keep",
            median(|| drop(keep_cache.read_file(&path).unwrap())),
        ),
        (
            "read, tierpool Drop",
            median(|| drop(drop_cache.read_file(&path).unwrap())),
        ),
    ];
    println!("{mib} MiB file in {}, medians of 7:", dir.display());
    for (name, time) in rows {
        println!(
            "  {name:<24} {:>9.2} ms  {:>7.0} MiB/s",
            time.as_secs_f64() * 1e3,
            mib as f64 / time.as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
