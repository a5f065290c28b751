//! The large tier (mapped classes): cuts, assemblies, residency; reads over it.

#[cfg(all(target_os = "linux", not(miri)))]
use super::trim::tick;
use super::*;

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn read_to_end_through_short_reads_and_a_liar() {
    struct Short<'a>(&'a [u8]);
    impl std::io::Read for Short<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    struct Liar;
    impl std::io::Read for Liar {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            Ok(buf.len() + 1)
        }
    }
    let pool = Pool::builder()
        .size_classes(SizeClasses::geometric(64, 1 << 16, 2).unwrap())
        .trim_interval(std::time::Duration::ZERO)
        .build();
    let len = if cfg!(miri) { 3000 } else { 300_000 };
    let data: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
    let chunks = pool.read_to_end(Short(&data)).unwrap();
    assert_eq!(chunks.to_vec(), data);
    let one = chunks.into_contiguous();
    assert_eq!(&one[..], &data[..]);
    drop(one);
    let err = pool.read_to_end(Liar).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let mut writer = pool.writer();
    writer.put_slice(&data);
    std::io::Write::write_all(&mut writer, b"end").unwrap();
    let bytes = writer.freeze();
    assert_eq!(&bytes[..len], &data[..]);
    assert_eq!(&bytes[len..], b"end");
    drop(bytes);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_return_short_of_credit_does_not_spill_a_cache_with_room() {
    // Class 100 keeps four per thread, refilled and reserved one batch
    // (two) at a time: the third return is short of credit, not of room.
    let pool = small_pool();
    let bufs: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    drop(bufs);
    let again: Vec<_> = (0..3).map(|_| pool.get(100)).collect();
    let class = &pool.stats().classes[0];
    assert_eq!(
        class.thread_cache_hits, 3,
        "all three stayed in this thread's cache"
    );
    assert_eq!(class.shared_hits, 0);
    drop(again);
}

/// Mapped classes of 128 KiB to 2 MiB, no thread caches, no idle trimming.
#[cfg(all(target_os = "linux", not(miri)))]
fn mapped_pool() -> Pool {
    const K: usize = 1 << 10;
    Pool::builder()
        .size_classes(
            SizeClasses::from_sizes(&[128 * K, 256 * K, 512 * K, 1024 * K, 2048 * K]).unwrap(),
        )
        .thread_cache_bytes(0)
        .trim_interval(std::time::Duration::ZERO)
        .memory_limit(crate::MemoryLimit::Unlimited)
        .build()
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn a_request_is_cut_from_an_idle_run_of_any_class_and_assembled_when_none_holds_it() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let mut big = pool.get(2048 * K);
    big.resize(2048 * K, 0xAB);
    drop(big); // 2 MiB of idle pages in the large tier
    let mut small = pool.get(100 * K);
    assert_eq!(small.capacity(), 128 * K);
    assert!(small.is_empty(), "never the old bytes");
    small.resize(128 * K, 1);
    let stats = pool.stats();
    assert_eq!(stats.classes[0].shared_hits, 1, "cut from the run: {stats}");
    assert_eq!(stats.classes[0].misses, 0);
    assert_eq!(stats.large.cut, 1);
    assert_eq!(
        stats.retained_bytes,
        (2048 - 128) * K,
        "the rest stays idle"
    );
    assert_eq!(stats.in_use_bytes, 128 * K);
    // 1920 KiB idle cannot hold 2 MiB: its pages move into a new block and
    // only the missing 128 KiB are fresh.
    let mut grown = pool.get(2048 * K);
    grown.resize(2048 * K, 2);
    assert!(grown.iter().all(|&b| b == 2));
    let stats = pool.stats();
    assert_eq!(stats.classes[4].fit_hits, 1, "{stats}");
    assert_eq!(stats.classes[4].fit_grown_bytes, 128 * K as u64);
    assert_eq!(stats.classes[4].misses, 1, "only the first 2 MiB was fresh");
    assert_eq!(stats.large.assembled, 1);
    assert_eq!(stats.large.moved_bytes, (2048 - 128) * K as u64);
    assert_eq!(stats.retained_bytes, 0);
    assert!(
        small.iter().all(|&b| b == 1),
        "the cut block kept its bytes"
    );
    drop((small, grown));
    assert_eq!(pool.stats().retained_bytes, (2048 + 128) * K);
    pool.trim();
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.retained_bytes, 0);
    assert_eq!(stats.large.trimmed_bytes, (2048 + 128) * K as u64);
    assert_eq!(stats.large.mappings, 0, "every mapping unmapped: {stats}");
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn idle_pages_of_four_blocks_serve_one_four_times_their_size_without_fresh_pages() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let held: Vec<_> = (0..4u8)
        .map(|i| {
            let mut b = pool.get(512 * K);
            b.resize(512 * K, i);
            b
        })
        .collect();
    drop(held);
    let mut big = pool.get(2048 * K);
    assert!(big.is_empty());
    big.resize(2048 * K, 9);
    assert!(big.iter().all(|&b| b == 9));
    let stats = pool.stats();
    let class = &stats.classes[4];
    assert_eq!(class.misses, 0, "{stats}");
    assert_eq!(class.shared_hits + class.fit_hits, 1);
    assert_eq!(class.fit_grown_bytes, 0, "no fresh pages");
    assert_eq!(stats.retained_bytes, 0);
    drop(big);
    assert_eq!(pool.stats().retained_bytes, 2048 * K);
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_idle_tick_unmaps_large_pages_that_stayed_idle_all_interval() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let inner = pool.clone();
    let a = pool.get(1024 * K);
    let b = pool.get(1024 * K);
    drop(a);
    tick(&inner); // idle during the interval's end only: kept
    assert_eq!(pool.stats().retained_bytes, 1024 * K);
    drop(b);
    let again = pool.get(512 * K); // cut from the idle 1 MiB; `b` is hot
    // What stayed idle all interval: the other 512 KiB of `a`. The hot
    // block joins the runs now and goes at the next tick if unused.
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 1024 * K, "{stats}");
    assert_eq!(stats.large.trimmed_bytes, 512 * K as u64);
    assert_eq!(stats.large.hot_blocks, 0);
    drop(again);
    tick(&inner);
    tick(&inner);
    let stats = pool.stats();
    assert_eq!(stats.retained_bytes, 0, "{stats}");
    assert_eq!(stats.large.mappings, 0);
    assert_eq!(stats.released_bytes, 2048 * K as u64);
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_large_tier_holds_no_untouched_pages() {
    // Every page the large tier maps is resident from the start, so the
    // pool's byte count is what it really uses (admission's estimate adds
    // growth of that count to the last sample of the container's memory).
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let buf = pool.get(1024 * K);
    let mut resident = vec![0u8; 1024 * K / crate::sys::mem::PAGE];
    // SAFETY: the buffer's pages are a mapping of 1 MiB that `buf` keeps
    // alive; `resident` has one byte per page.
    let rc = unsafe {
        libc::mincore(
            buf.as_ptr().cast_mut().cast(),
            1024 * K,
            resident.as_mut_ptr().cast(),
        )
    };
    assert_eq!(rc, 0);
    assert!(resident.iter().all(|&r| r & 1 == 1), "an untouched page");
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn an_assembly_emits_its_moved_and_fresh_bytes() {
    const K: usize = 1 << 10;
    let (pool, events) = recording_pool(
        Pool::builder()
            .size_classes(SizeClasses::from_sizes(&[128 * K, 2048 * K]).unwrap())
            .thread_cache_bytes(0)
            .trim_interval(std::time::Duration::ZERO)
            .memory_limit(crate::MemoryLimit::Unlimited),
    );
    drop(pool.get(2048 * K));
    let small = pool.get(128 * K); // cut from the idle run: no event
    let big = pool.get(2048 * K);
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            Event::Allocated {
                capacity: 2048 * K,
                reason: crate::AllocReason::Miss
            },
            Event::Assembled {
                capacity: 2048 * K,
                moved: 1920 * K,
                fresh: 128 * K
            },
        ]
    );
    assert_eq!(events[1].name(), "assembled");
    assert_eq!(events[1].reason(), "fit");
    assert_eq!(
        events[1].to_string(),
        "assembled 2097152 bytes from idle pages (1966080 moved, 131072 fresh)"
    );
    drop((small, big));
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn the_block_returned_last_serves_its_class_next_whole() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    let mut a = pool.get(1024 * K);
    a.resize(1024 * K, 3);
    let at = a.as_ptr();
    drop(a);
    let stats = pool.stats();
    assert_eq!(stats.large.hot_blocks, 1, "{stats}");
    assert_eq!(stats.retained_bytes, 1024 * K);
    assert_eq!(stats.large.runs, 0, "kept whole, not in the runs");
    let b = pool.get(1000 * K);
    assert_eq!(b.as_ptr(), at, "the same block: its pages are the warmest");
    assert!(b.is_empty(), "never the old bytes");
    let stats = pool.stats();
    assert_eq!(stats.classes[3].shared_hits, 1);
    assert_eq!(stats.large.cut, 0, "no search");
    assert_eq!(stats.large.hot_blocks, 0);
    drop(b);
    // Another class's request drains the hot block into the runs and cuts
    // from it.
    let c = pool.get(256 * K);
    let stats = pool.stats();
    assert_eq!(stats.large.cut, 1, "{stats}");
    assert_eq!(stats.classes[1].misses, 0);
    assert_eq!(stats.retained_bytes, 768 * K);
    drop(c);
    pool.trim();
    assert_eq!(pool.stats().retained_bytes, 0);
    assert_eq!(pool.stats().large.mappings, 0);
}

#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn a_block_cut_down_goes_back_to_the_pages_it_was_cut_from() {
    const K: usize = 1 << 10;
    let pool = mapped_pool();
    // Cut down in place: a 2 MiB block holding 200 KiB becomes a block of
    // 256 KiB, and its other 1792 KiB go idle.
    let mut buf = pool.get(2048 * K);
    buf.resize(200 * K, 5);
    let at = buf.as_ptr();
    assert!(buf.shrink_to_class());
    assert_eq!(buf.capacity(), 256 * K);
    assert_eq!(&buf[..], &[5; 200 * 1024][..], "the data stays");
    assert_eq!(pool.stats().large.idle_bytes, 1792 * K);
    // Into the runs, not the hot slot of its class: whole again.
    buf.drop_to_runs();
    let stats = pool.stats();
    assert_eq!(stats.large.hot_blocks, 0, "{stats}");
    assert_eq!((stats.large.runs, stats.large.idle_bytes), (1, 2048 * K));
    let again = pool.get(2048 * K);
    assert_eq!(again.as_ptr(), at, "the same pages, whole");
    assert_eq!(pool.stats().large.assembled, 0);
    drop(again);
    // An ordinary drop keeps a block in the hot slot of its class.
    let mut buf = pool.get(2048 * K);
    buf.resize(200 * K, 5);
    assert!(buf.shrink_to_class());
    drop(buf);
    let stats = pool.stats();
    assert_eq!(stats.large.hot_blocks, 1, "{stats}");
    assert_eq!(stats.large.idle_bytes, 1792 * K);
    pool.trim();
    assert_eq!(pool.stats().retained_bytes, 0);
}
