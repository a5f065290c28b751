//! Trimming really gives memory back: resident memory drops after trimming a
//! large idle buffer. Linux only (`/proc/self/statm`); alone in its test
//! binary so no other test's allocations blur the figures. Margins are
//! generous: half the buffer must come and go.
#![cfg(target_os = "linux")]

use std::time::Duration;

use tierpool::Pool;

const SIZE: usize = 64 << 20;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as usize
}

#[test]
fn trimming_an_idle_64_mib_buffer_lowers_resident_memory() {
    let pool = Pool::builder().trim_interval(Duration::ZERO).build();
    let before = resident_bytes();

    let mut buf = pool.get(SIZE);
    buf.resize(SIZE, 0x5a);
    let touched = resident_bytes();
    assert!(
        touched >= before + SIZE / 2,
        "writing 64 MiB raised RSS by {}",
        touched - before
    );

    drop(buf); // idle in the pool: still resident
    assert_eq!(pool.stats().retained_bytes, SIZE);
    let idle = resident_bytes();
    assert!(
        idle >= before + SIZE / 2,
        "the pooled buffer stays resident"
    );

    pool.trim();
    let after = resident_bytes();
    assert!(
        after + SIZE / 2 <= idle,
        "trim gave back only {} of 64 MiB",
        idle.saturating_sub(after)
    );
    assert_eq!(pool.stats().released_bytes, SIZE as u64);
}
