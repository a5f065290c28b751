//! `MemoryReport` in a real memory cgroup: this test starts itself again
//! as a child in a cgroup of its own (1 GiB), which makes a known working
//! set: 64 MiB handed out by a pool, 32 MiB idle in it, 48 MiB in plain
//! `Vec`s, a 100 MiB file read twice with `std::fs`; the report must put
//! each part within 10% of that, and the parts must add up.

use std::io::Read;
use std::time::Duration;

use tierpool::{MemoryLimit, MemoryReport, Pool};

const MIB: u64 = 1 << 20;
const CHILD: &str = "TIERPOOL_REPORT_CHILD";

fn within(got: u64, want: u64, what: &str, report: &MemoryReport) {
    let (lo, hi) = (want - want / 10, want + want / 10);
    assert!(
        (lo..=hi).contains(&got),
        "{what}: {:.1} MiB, want {:.1} MiB ± 10%\n{report}",
        got as f64 / MIB as f64,
        want as f64 / MIB as f64
    );
}

/// The child's work: the known working set, then the report.
fn scenario() {
    let dir = std::env::var("TIERPOOL_REPORT_DIR").expect("a scratch directory");
    let path = std::path::Path::new(&dir).join("hundred.bin");
    let before = MemoryReport::read().unwrap();
    assert!(
        before.from_cgroup,
        "the child runs in a cgroup with a limit"
    );
    let pool = Pool::builder()
        .memory_limit(MemoryLimit::Unlimited)
        .trim_interval(Duration::ZERO)
        .build();
    let fill = |n: u64| -> Vec<tierpool::PooledBuf> {
        (0..n / (4 * MIB))
            .map(|i| {
                let mut b = pool.get(4 << 20);
                b.resize(4 << 20, i as u8 | 1);
                b
            })
            .collect()
    };
    let in_use = fill(64 * MIB);
    drop(fill(32 * MIB)); // idle in the pool
    let vecs: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 + 1; 16 << 20]).collect();
    {
        let chunk = vec![7u8; 1 << 20];
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..100 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..2 {
        let mut f = std::fs::File::open(&path).unwrap();
        while f.read(&mut buf).unwrap() > 0 {}
    }
    let r = MemoryReport::read().unwrap();
    println!("{r}");
    assert_eq!(
        r.in_use + r.idle + r.other_anon + r.active_file + r.kernel,
        r.working_set
    );
    // On GlobalPool (`--cfg tierpool_global_alloc`) the plain `Vec`s are
    // tierpool's too: in use, not other anonymous memory.
    let vecs_by_tierpool = if cfg!(tierpool_global_alloc) {
        48 * MIB
    } else {
        0
    };
    within(r.in_use, 64 * MIB + vecs_by_tierpool, "in use", &r);
    within(r.idle, 32 * MIB, "idle", &r);
    if vecs_by_tierpool == 0 {
        within(
            r.other_anon,
            before.other_anon + 48 * MIB,
            "other anonymous",
            &r,
        );
    }
    within(
        r.active_file,
        before.active_file + 100 * MIB,
        "active page cache",
        &r,
    );
    assert!(r.limit.is_some() && r.headroom().is_some());
    drop((in_use, vecs));
    let _ = std::fs::remove_file(&path);
}

#[cfg(target_os = "linux")]
#[test]
fn the_report_splits_a_known_working_set_within_ten_percent() {
    if std::env::var_os(CHILD).is_some() {
        scenario();
        return;
    }
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making a memory cgroup needs root");
        return;
    }
    let Ok(own) = tierpool::ContainerMemory::read() else {
        eprintln!("skipped: no memory cgroup");
        return;
    };
    let name = format!("tierpool-report-{}", std::process::id());
    let dir = own.path.join(&name);
    std::fs::create_dir(&dir).unwrap();
    let limit = (1u64 << 30).to_string();
    let limit_file = if own.cgroup_version == 1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(dir.join(limit_file), &limit).unwrap();
    let scratch = std::env::temp_dir().join(format!("tierpool-report-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let procs = std::ffi::CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "the_report_splits_a_known_working_set_within_ten_percent",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("TIERPOOL_REPORT_DIR", &scratch);
    // SAFETY: the closure runs between fork and exec and only calls
    // `open`, `write` and `close` on memory made before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    println!("{}", String::from_utf8_lossy(&output.stdout));
    let _ = std::fs::remove_dir_all(&scratch);
    // The child has exited; its cgroup empties as the kernel reaps it.
    for _ in 0..100 {
        if std::fs::remove_dir(&dir).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        output.status.success(),
        "the child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn without_a_limit_the_report_is_this_process_s_own() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let r = MemoryReport::read().unwrap();
    assert_eq!(
        r.in_use + r.idle + r.other_anon + r.active_file + r.kernel,
        r.working_set
    );
    if !r.from_cgroup {
        assert_eq!(r.limit, None);
        // The process's own resident memory, not a parent cgroup's other
        // processes: a test binary holds far less than a gigabyte.
        assert!(r.working_set < 1 << 30, "{r}");
    }
}
