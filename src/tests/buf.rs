//! Buffers: classes, growth, I/O traits, freezing, detaching, bad sizes.

use super::*;

#[test]
fn get_rounds_up_and_reuses() {
    let pool = small_pool();
    let buf = pool.get(150);
    assert_eq!(buf.capacity(), 200);
    assert_eq!(buf.len(), 0);
    let ptr = buf.as_ptr();
    drop(buf);
    let again = pool.get(101);
    assert_eq!(
        again.as_ptr(),
        ptr,
        "the thread cache hands the same block back"
    );
    let stats = pool.stats();
    assert_eq!(stats.classes[1].misses, 1);
    assert_eq!(stats.classes[1].thread_cache_hits, 1);
    assert_eq!(stats.in_use_bytes, 200);
    drop(again);
    let stats = pool.stats();
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 200));
}

#[test]
fn reused_buffers_show_no_stale_bytes() {
    let pool = small_pool();
    let mut buf = pool.get(300);
    buf.resize(300, 0xAA);
    drop(buf);
    let mut buf = pool.get(300);
    assert!(buf.is_empty());
    buf.resize(300, 0);
    assert!(buf.iter().all(|&b| b == 0));
    buf.clear();
    buf.put_bytes(7, 10);
    assert_eq!(&buf[..], &[7; 10]);
    buf.truncate(3);
    buf.extend([1u8, 2]);
    assert_eq!(&buf[..], &[7, 7, 7, 1, 2]);
}

#[test]
fn growing_moves_to_a_larger_class_through_the_pool() {
    let pool = small_pool();
    let mut buf = pool.get(10);
    buf.extend_from_slice(&[1; 100]);
    assert_eq!(buf.capacity(), 100);
    buf.extend_from_slice(&[2; 50]);
    assert_eq!(buf.capacity(), 200, "doubling, rounded to a class");
    assert_eq!(&buf[..100], &[1; 100]);
    assert_eq!(&buf[100..], &[2; 50]);
    buf.extend_from_slice(&[3; 200]);
    assert_eq!(
        buf.capacity(),
        400,
        "above the largest class: exact, but still doubling as it grows"
    );
    let stats = pool.stats();
    assert_eq!(stats.oversize_allocations, 1);
    assert_eq!(stats.in_use_bytes, 400);
    assert_eq!(
        stats.retained_bytes, 300,
        "the 100 and 200 blocks went back"
    );
    drop(buf);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn io_write_and_bufmut_grow() {
    use std::io::Write;
    let pool = small_pool();
    let mut buf = pool.get(1);
    for i in 0..100u32 {
        write!(buf, "{i},").unwrap();
    }
    let text = String::from_utf8(buf.to_vec()).unwrap();
    assert!(text.starts_with("0,1,2,") && text.ends_with("98,99,"));
    let mut buf = pool.get(1);
    buf.put_slice(&[9; 250]);
    buf.put_u32(0xdead_beef);
    assert_eq!(buf.len(), 254);
    assert_eq!(&buf[250..], &0xdead_beef_u32.to_be_bytes());
    let n = buf
        .write_vectored(&[std::io::IoSlice::new(b"ab"), std::io::IoSlice::new(b"cd")])
        .unwrap();
    assert_eq!(n, 4);
    assert!(buf.ends_with(b"abcd"));
}

#[test]
fn chunk_mut_exposes_only_uninit_spare_capacity() {
    let pool = small_pool();
    let mut buf = pool.get(100);
    buf.resize(100, 0xEE);
    drop(buf);
    let mut buf = pool.get(100);
    let chunk = buf.chunk_mut();
    assert_eq!(chunk.len(), 100);
    chunk.copy_from_slice(&[1; 100]);
    // SAFETY: the whole chunk was just written.
    unsafe { buf.advance_mut(100) };
    assert_eq!(&buf[..], &[1; 100]);
    let chunk = buf.chunk_mut();
    assert!(chunk.len() > 0, "a full buffer grows for chunk_mut");
}

#[test]
#[should_panic(expected = "advance_mut")]
fn advance_mut_past_capacity_panics() {
    let pool = small_pool();
    let mut buf = pool.get(100);
    // SAFETY: deliberately wrong; the assertion must catch it before `len`
    // moves.
    unsafe { buf.advance_mut(101) };
}

#[test]
fn spare_capacity_and_set_len() {
    let pool = small_pool();
    let mut buf = pool.get(200);
    let spare = buf.spare_capacity_mut();
    assert_eq!(spare.len(), 200);
    for (i, b) in spare.iter_mut().take(5).enumerate() {
        b.write(i as u8);
    }
    // SAFETY: the first five bytes were just written.
    unsafe { buf.set_len(5) };
    assert_eq!(&buf[..], &[0, 1, 2, 3, 4]);
}

#[test]
fn freeze_returns_with_the_last_clone() {
    let pool = small_pool();
    let mut buf = pool.get(200);
    buf.extend_from_slice(b"frozen");
    let bytes = buf.freeze();
    let clone = bytes.slice(1..3);
    assert_eq!(&clone[..], b"ro");
    drop(bytes);
    assert_eq!(pool.stats().in_use_bytes, 200);
    let other_thread = std::thread::spawn(move || drop(clone));
    other_thread.join().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 200));
}

#[test]
fn into_vec_detaches() {
    let pool = small_pool();
    let mut buf = pool.get(150);
    buf.extend_from_slice(b"keep");
    let mut vec = buf.into_vec();
    assert_eq!(vec, b"keep");
    assert_eq!(vec.capacity(), 200);
    vec.extend_from_slice(&[0; 1000]); // Vec may realloc the block: same layout
    let stats = pool.stats();
    assert_eq!(stats.classes[1].detached, 1);
    assert_eq!((stats.in_use_bytes, stats.retained_bytes), (0, 0));
    let big = pool.get(1000).into_vec();
    assert_eq!(big.capacity(), 1000);
    assert_eq!(pool.stats().oversize_in_use_bytes, 0);
    assert!(PooledBuf::new().into_vec().is_empty());
}

#[test]
fn empty_buffer_grows_from_the_global_pool() {
    let mut buf = PooledBuf::default();
    assert_eq!(buf.capacity(), 0);
    assert!(buf.is_empty());
    buf.extend_from_slice(b"hello");
    assert!(buf.capacity() >= 4096);
    assert_eq!(&buf[..], b"hello");
}

#[test]
fn absurd_sizes_are_errors() {
    let pool = small_pool();
    assert_eq!(
        pool.try_get(usize::MAX).unwrap_err(),
        Error::CapacityOverflow {
            requested: usize::MAX
        }
    );
    assert!(matches!(
        pool.try_get(isize::MAX as usize + 1),
        Err(Error::CapacityOverflow { .. })
    ));
    let mut buf = pool.get(10);
    buf.extend_from_slice(b"x");
    assert!(buf.try_reserve(usize::MAX).is_err());
    assert_eq!(
        &buf[..],
        b"x",
        "a failed reserve leaves the buffer as it was"
    );
    let stats = pool.stats();
    assert_eq!(stats.in_use_buffers, 1);
    assert_eq!(stats.oversize_allocations, 0);
}

#[cfg(not(miri))] // miri's allocator would try to provide a petabyte
#[test]
fn allocation_failure_is_an_error() {
    let pool = small_pool();
    assert_eq!(
        pool.try_get(1 << 50).unwrap_err(),
        Error::AllocFailed { size: 1 << 50 }
    );
    use std::io::Write;
    let mut buf = pool.get(10);
    let err = buf.write_all(&[]).and_then(|_| {
        buf.try_reserve(1 << 50)?;
        Ok(())
    });
    assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::OutOfMemory);
    assert_eq!(pool.stats().in_use_buffers, 1);
}

#[test]
#[should_panic(expected = "capacity overflow")]
fn get_panics_on_impossible_sizes() {
    let _ = small_pool().get(usize::MAX);
}
