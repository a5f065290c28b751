//! `PooledBuf` and `Pool` through the public API only: traits, sizes, and the
//! security property that no safe method shows a previous user's bytes.

use std::io::Write;

use bytes::BufMut;
use tierpool::{Error, Pool, PooledBuf, SizeClasses};

#[test]
fn auto_traits_and_size() {
    fn is_send_sync_static<T: Send + Sync + 'static>() {}
    is_send_sync_static::<PooledBuf>();
    is_send_sync_static::<Pool>();
    // A pointer, length, capacity, pool pointer and class tag.
    assert!(std::mem::size_of::<PooledBuf>() <= 5 * std::mem::size_of::<usize>());
    assert_eq!(
        std::mem::size_of::<Option<PooledBuf>>(),
        std::mem::size_of::<PooledBuf>()
    );
}

/// Fills a buffer of every class with a secret, returns it, and checks that
/// every safe way of reading a reused buffer shows only new bytes.
#[test]
fn reused_buffers_never_show_old_bytes() {
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[64, 128, 256]).unwrap())
        .build();
    let secret = 0xA5;
    for size in [1, 64, 100, 256] {
        let mut dirty = pool.get(size);
        dirty.resize(dirty.capacity(), secret);
        drop(dirty);

        let mut buf = pool.get(size);
        assert_eq!(buf.len(), 0);
        assert!(buf.is_empty());
        assert_eq!(&buf[..], &[] as &[u8]);
        buf.resize(10, 0);
        assert_eq!(&buf[..], &[0; 10]);
        buf.truncate(2);
        buf.resize(5, 1);
        assert_eq!(&buf[..], &[0, 0, 1, 1, 1]);
        buf.clear();
        buf.write_all(b"new").unwrap();
        buf.put_u8(b'!');
        buf.extend([b'?']);
        assert_eq!(&buf[..], b"new!?");
        let debug = format!("{buf:?}");
        assert!(!debug.contains("165") && !debug.contains("new"), "{debug}");
        let frozen = buf.freeze();
        assert_eq!(&frozen[..], b"new!?");
        drop(frozen);

        let vec = pool.get(size).into_vec();
        assert!(vec.is_empty());
        assert!(!vec.contains(&secret));
    }
}

#[test]
fn reused_across_threads_never_show_old_bytes() {
    let pool = Pool::new();
    let p = pool.clone();
    std::thread::spawn(move || {
        let mut dirty = p.get(1 << 20);
        dirty.resize(1 << 20, 0xEE);
        drop(dirty); // the thread's exit flushes it to the shared tier
    })
    .join()
    .unwrap();
    let mut buf = pool.get(1 << 20);
    assert!(buf.is_empty());
    buf.resize(1 << 20, 0);
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn invalid_classes_and_absurd_sizes_are_errors() {
    for bad in [&[][..], &[0], &[300, 200], &[100, 100]] {
        let err = SizeClasses::from_sizes(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidSizeClasses(_)), "{bad:?}");
        assert!(!err.to_string().is_empty());
    }
    let pool = Pool::new();
    for size in [usize::MAX, usize::MAX / 2 + 1, isize::MAX as usize + 1] {
        assert!(matches!(
            pool.try_get(size),
            Err(Error::CapacityOverflow { .. })
        ));
    }
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.oversize_allocations, 0);
}

#[test]
fn stats_display_is_a_table() {
    let pool = Pool::new();
    drop(pool.get(5000));
    drop(pool.get(5000));
    drop(pool.get(100 << 20));
    let text = pool.stats().to_string();
    assert!(text.contains("class"), "{text}");
    assert!(text.contains("5K"), "{text}");
    assert!(text.contains("1 oversize allocations"), "{text}");
}

/// Appends past the largest class double the exact allocation as `Vec`
/// does, so writing `n` bytes moves them O(log n) times, not O(n / write).
#[test]
fn appends_past_the_largest_class_stay_amortised() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let oversize = Arc::new(AtomicUsize::new(0));
    let counter = oversize.clone();
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[4096, 8192]).unwrap())
        .on_event(move |e| {
            if matches!(
                e,
                tierpool::Event::Allocated {
                    reason: tierpool::AllocReason::Oversize,
                    ..
                }
            ) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
    let total: usize = if cfg!(miri) { 64 << 10 } else { 16 << 20 };
    let row = [7u8; 4096];
    let mut buf = pool.get(0);
    for _ in 0..total / row.len() {
        buf.write_all(&row).unwrap();
    }
    assert_eq!(buf.len(), total);
    assert!(buf.iter().all(|&b| b == 7));
    let grown = oversize.load(Ordering::Relaxed);
    // 8 KiB doubled up to `total`: log2(total / 8 KiB) allocations.
    let doublings = (total / 8192).ilog2() as usize;
    assert!(
        grown <= doublings + 1,
        "{grown} oversize allocations for {total} bytes (at most {})",
        doublings + 1
    );
    assert!(buf.capacity() < 2 * total + 8192);
}

/// Appends of every size about the copy loop's bounds, from sources at
/// every 16-byte offset and odd ones, through `extend_from_slice`, `Write`
/// and `BufMut`, into a buffer of a mapped class: the bytes are exactly
/// `Vec`'s.
#[test]
fn appends_from_any_source_offset_are_exact() {
    let pool = Pool::new();
    let sizes: &[usize] = if cfg!(miri) {
        &[4096, 4096 + 129]
    } else {
        &[1, 4095, 4096, 4096 + 129, 70_001, (1 << 20) - 1, 1 << 20]
    };
    let longest = sizes.iter().max().copied().unwrap_or(0);
    let source: Vec<u8> = (0..longest + 64).map(|i| (i % 251) as u8).collect();
    for offset in [0usize, 1, 16, 31, 32, 48] {
        let mut expected = Vec::new();
        let mut buf = pool.get(if cfg!(miri) { 64 << 10 } else { 3 << 20 });
        for (i, &len) in sizes.iter().enumerate() {
            let part = &source[offset..offset + len];
            match i % 3 {
                0 => buf.extend_from_slice(part),
                1 => buf.write_all(part).unwrap(),
                _ => buf.put_slice(part),
            }
            expected.extend_from_slice(part);
        }
        assert_eq!(&buf[..], &expected[..], "source offset {offset}");
    }
}
