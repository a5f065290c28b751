//! `read_to_end`, `Chunks` and `PooledWriter`: round trips around chunk and
//! class boundaries, misbehaving readers, and `Chunks` against
//! `io::Cursor<Vec<u8>>` step by step.

use std::io::{self, BufRead, Cursor, IoSlice, Read, Seek, SeekFrom, Write};

use bytes::{Buf, BufMut};
use proptest::prelude::*;
use tierpool::{Pool, SizeClasses};

/// The first chunk of a read with no hint (16 KiB).
const FIRST_CHUNK: usize = 16 << 10;

fn pool() -> Pool {
    Pool::builder()
        .trim_interval(std::time::Duration::ZERO)
        .build()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A reader that follows a script: each step reads at most that many bytes,
/// or fails once with `Interrupted`.
struct Scripted<'a> {
    data: &'a [u8],
    steps: Vec<Option<usize>>,
    at: usize,
    calls: usize,
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let step = self.steps[self.calls % self.steps.len()];
        self.calls += 1;
        let Some(max) = step else {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "again"));
        };
        let n = max.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn round_trips_around_chunk_and_class_boundaries() {
    let pool = pool();
    let mut sizes = vec![0, 1, 4095, 4096, 4097];
    for edge in [FIRST_CHUNK, 3 * FIRST_CHUNK, 7 * FIRST_CHUNK, 5 << 20] {
        sizes.extend([edge - 1, edge, edge + 1]);
    }
    for len in sizes {
        let expected = data(len);
        for steps in [
            vec![Some(usize::MAX)],
            vec![Some(1000), None, Some(7)],
            vec![Some(4096)],
        ] {
            let reader = Scripted {
                data: &expected,
                steps,
                at: 0,
                calls: 0,
            };
            let chunks = pool.read_to_end(reader).unwrap();
            assert_eq!(chunks.len(), len);
            assert_eq!(chunks.to_vec(), expected, "len {len}");
            let contiguous = chunks.into_contiguous();
            assert_eq!(&contiguous[..], &expected[..]);
        }
    }
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_failing_reader_gets_its_error_back_and_nothing_leaks() {
    struct FailsAfter(usize);
    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let pool = pool();
    let err = pool.read_to_end(FailsAfter(200_000)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(err.to_string(), "peer went away");
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert!(stats.retained_bytes > 0, "the chunks went back to the pool");
}

#[test]
fn would_block_is_returned() {
    struct Blocks;
    impl Read for Blocks {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
    let err = pool().read_to_end(Blocks).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn a_reader_that_reports_too_many_bytes_is_invalid_data() {
    struct Liar;
    impl Read for Liar {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            Ok(buf.len() + 1)
        }
    }
    let pool = pool();
    let err = pool.read_to_end(Liar).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_reader_never_sees_stale_bytes() {
    struct Snoop(bool);
    impl Read for Snoop {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(
                buf.iter().all(|&b| b == 0),
                "the read buffer held old bytes"
            );
            if std::mem::replace(&mut self.0, true) {
                return Ok(0);
            }
            buf[0] = 1;
            Ok(1)
        }
    }
    let pool = pool();
    let mut dirty = pool.get(FIRST_CHUNK);
    dirty.resize(FIRST_CHUNK, 0xEE);
    drop(dirty);
    let chunks = pool.read_to_end(Snoop(false)).unwrap();
    assert_eq!(chunks.to_vec(), [1]);
}

#[test]
fn limited_reads_stop_one_byte_past_the_limit() {
    struct Counting<R>(R, usize);
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }
    let pool = pool();
    let exact = pool
        .read_to_end_limited(&data(100_000)[..], 100_000)
        .unwrap();
    assert_eq!(exact.len(), 100_000);
    drop(exact);
    let mut endless = Counting(io::repeat(9), 0);
    let err = pool.read_to_end_limited(&mut endless, 100_000).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    assert_eq!(endless.1, 100_001, "read exactly one byte past the limit");
    let err = pool.read_to_end_limited(&data(10)[..], 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    assert!(pool.read_to_end_limited(&[][..], 0).unwrap().is_empty());
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn a_correct_hint_lands_in_one_buffer() {
    let pool = pool();
    for len in [1, 4096, 100_000, 3 << 20] {
        let chunks = pool
            .read_with(&data(len)[..], &tierpool::ReadOptions::new().size_hint(len))
            .unwrap();
        assert_eq!(chunks.iter().count(), 1, "len {len}");
        assert_eq!(chunks.to_vec(), data(len));
    }
    // A short hint only costs more chunks.
    let chunks = pool
        .read_with(
            &data(50_000)[..],
            &tierpool::ReadOptions::new().size_hint(10),
        )
        .unwrap();
    assert_eq!(chunks.to_vec(), data(50_000));
}

#[test]
fn read_file_uses_the_length() {
    let path = std::env::temp_dir().join(format!("tierpool-read-file-{}", std::process::id()));
    std::fs::write(&path, data(70_000)).unwrap();
    let chunks = pool().read_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(chunks.iter().count(), 1);
    assert_eq!(chunks.to_vec(), data(70_000));
}

#[test]
fn chunks_as_buf_and_write_to() {
    let pool = pool();
    let expected = data(300_000);
    let mut chunks = pool.read_to_end(&expected[..]).unwrap();
    assert!(chunks.iter().count() > 2);
    chunks.advance(1000);
    assert_eq!(chunks.remaining(), 299_000);
    let mut slices = [io::IoSlice::new(&[]); 16];
    let n = chunks.chunks_vectored(&mut slices);
    let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(joined, &expected[1000..]);
    let head = chunks.copy_to_bytes(10);
    assert_eq!(&head[..], &expected[1000..1010]);
    let mut out = Vec::new();
    chunks.write_to(&mut out).unwrap();
    assert_eq!(out, &expected[1010..]);
    assert_eq!(chunks.remaining(), 0);
    let frozen = chunks.freeze();
    assert_eq!(&frozen[..], &expected[..]);
}

#[test]
fn writer_matches_a_vec() {
    let pool = pool();
    let mut writer = pool.writer();
    let mut vec = Vec::new();
    for i in 0..2000u32 {
        let line = format!("row {i}: {}\n", "x".repeat((i % 97) as usize));
        writer.write_all(line.as_bytes()).unwrap();
        vec.write_all(line.as_bytes()).unwrap();
        writer.put_u32(i);
        vec.put_u32(i);
    }
    let parts = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
    assert_eq!(writer.write_vectored(&parts).unwrap(), 4);
    vec.extend_from_slice(b"abcd");
    assert_eq!(writer.len(), vec.len());
    let chunks = writer.into_chunks();
    assert!(chunks.iter().count() > 1);
    assert_eq!(chunks.to_vec(), vec);
    assert_eq!(&chunks.into_contiguous()[..], &vec[..]);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Read(usize),
    FillBuf,
    Consume(usize),
    SeekStart(u64),
    SeekEnd(i64),
    SeekCurrent(i64),
    ReadLine,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..70_000).prop_map(Op::Read),
        Just(Op::FillBuf),
        (0usize..40_000).prop_map(Op::Consume),
        (0u64..200_000).prop_map(Op::SeekStart),
        (-200_000i64..20_000).prop_map(Op::SeekEnd),
        (-100_000i64..100_000).prop_map(Op::SeekCurrent),
        Just(Op::ReadLine),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunks_behave_like_a_cursor(len in 0usize..150_000, ops in prop::collection::vec(op(), 1..40)) {
        let pool = pool();
        let mut expected: Vec<u8> = data(len);
        for (i, b) in expected.iter_mut().enumerate() {
            if i % 1000 == 999 { *b = b'\n'; }
        }
        let mut chunks = pool.read_to_end(&expected[..]).unwrap();
        let mut cursor = Cursor::new(expected.clone());
        for op in ops {
            match op {
                Op::Read(n) => {
                    let (mut a, mut b) = (vec![0; n], vec![0; n]);
                    let (ra, rb) = (chunks.read(&mut a).unwrap(), cursor.read(&mut b).unwrap());
                    prop_assert_eq!(ra, rb);
                    prop_assert_eq!(&a[..ra], &b[..rb]);
                }
                Op::FillBuf => {
                    let a = chunks.fill_buf().unwrap().to_vec();
                    let b = cursor.fill_buf().unwrap();
                    prop_assert_eq!(a.is_empty(), b.is_empty());
                    prop_assert!(b.starts_with(&a));
                }
                Op::Consume(n) => {
                    chunks.consume(n);
                    cursor.consume(n);
                }
                Op::SeekStart(n) => {
                    prop_assert_eq!(chunks.seek(SeekFrom::Start(n)).unwrap(), cursor.seek(SeekFrom::Start(n)).unwrap());
                }
                Op::SeekEnd(n) => {
                    let (a, b) = (chunks.seek(SeekFrom::End(n)), cursor.seek(SeekFrom::End(n)));
                    prop_assert_eq!(a.as_ref().ok(), b.as_ref().ok());
                    prop_assert_eq!(a.map_err(|e| e.kind()).err(), b.map_err(|e| e.kind()).err());
                }
                Op::SeekCurrent(n) => {
                    let (a, b) = (chunks.seek(SeekFrom::Current(n)), cursor.seek(SeekFrom::Current(n)));
                    prop_assert_eq!(a.as_ref().ok(), b.as_ref().ok());
                    prop_assert_eq!(a.map_err(|e| e.kind()).err(), b.map_err(|e| e.kind()).err());
                }
                Op::ReadLine => {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    prop_assert_eq!(chunks.read_until(b'\n', &mut a).unwrap(), cursor.read_until(b'\n', &mut b).unwrap());
                    prop_assert_eq!(a, b);
                }
            }
            prop_assert_eq!(chunks.position(), cursor.position());
            prop_assert_eq!(Buf::remaining(&chunks), Buf::remaining(&cursor));
        }
    }
}

#[test]
fn size_classes_from_a_list_work_for_reads() {
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100, 200, 300]).unwrap())
        .trim_interval(std::time::Duration::ZERO)
        .build();
    // Every chunk above 300 bytes is oversize, served exactly.
    let chunks = pool.read_to_end(&data(50_000)[..]).unwrap();
    assert_eq!(chunks.to_vec(), data(50_000));
}

#[test]
fn labels_learn_their_size_and_ignore_outliers() {
    let pool = pool();
    let thumbs = pool.label("thumbnail.decode");
    let labelled = tierpool::ReadOptions::new().label(&thumbs);
    assert_eq!(thumbs.first_chunk(), 0, "nothing learned yet");
    for i in 0..40 {
        // 1 in 20 is a huge outlier.
        let len = if i % 20 == 19 { 20 << 20 } else { 150_000 };
        assert_eq!(
            pool.read_with(&data(len)[..], &labelled).unwrap().len(),
            len
        );
    }
    let class = pool.size_classes().class_for(150_000).unwrap();
    assert_eq!(thumbs.first_chunk(), class, "the outliers did not move it");
    let body = pool.read_with(&data(150_000)[..], &labelled).unwrap();
    assert_eq!(body.iter().count(), 1, "a typical body lands in one buffer");
    drop(body);

    let same = pool.label("thumbnail.decode");
    assert_eq!(same.first_chunk(), class, "one label, one distribution");
    let pdf = tierpool::ReadOptions::new().label(&pool.label("pdf.render"));
    drop(pool.read_with(&data(10)[..], &pdf).unwrap());

    let stats = pool.stats();
    assert_eq!(stats.labels.len(), 2);
    let t = &stats.labels[0];
    assert_eq!(t.label, "thumbnail.decode");
    assert_eq!(t.activity.reads, 41);
    assert_eq!(t.activity.bytes, 39 * 150_000 + 2 * (20 << 20));
    assert!(t.activity.read_calls >= 41 && t.activity.chunks >= 41);
    assert_eq!((t.p50, t.p95, t.max), (class, class, 20 << 20));
    assert_eq!(t.first_chunk, class);
    assert_eq!(stats.adapters.reads, 42);
    let text = stats.to_string();
    assert!(
        text.contains("thumbnail.decode") && text.contains("pdf.render"),
        "{text}"
    );
}

#[test]
fn unlabelled_reads_and_writers_are_counted() {
    let pool = pool();
    drop(pool.read_to_end(&data(1000)[..]).unwrap());
    let err = pool.read_to_end_limited(&data(1000)[..], 10).unwrap_err();
    assert_eq!(
        tierpool::Error::from_io(&err),
        Some(&tierpool::Error::TooLarge {
            limit: 10,
            declared: None
        })
    );
    let head = data(10);
    let broken = io::Read::chain(&head[..], FailingReader);
    assert!(pool.read_to_end(broken).is_err());
    let mut w = pool.writer();
    w.write_all(&data(100)).unwrap();
    drop(w.into_chunks());
    let a = pool.stats().adapters;
    // The limit is counted apart from I/O failures.
    assert_eq!((a.reads, a.errors, a.too_large, a.bytes), (2, 1, 1, 1100));
}

#[test]
fn memory_held_stays_near_the_data() {
    let pool = pool();
    for len in [100_001, (3 << 19) + 1, (5 << 20) + 7, (24 << 20) + 1] {
        let chunks = pool.read_to_end(&data(len)[..]).unwrap();
        assert_eq!(chunks.to_vec(), data(len));
        let held = chunks.capacity();
        assert!(
            held as f64 <= len as f64 * 1.1,
            "{len} bytes held in {held}"
        );
        let stats = pool.stats();
        assert_eq!(
            stats.in_use_bytes,
            chunks.capacity(),
            "the last chunk keeps its class"
        );
        drop(chunks);
        assert_eq!(pool.stats().in_use_bytes, 0);
    }
}

/// Uploads of one size, read again and again in 64 KiB reads, as a service
/// does: no pool miss, no assembly, no page fault, the very same blocks
/// each time, and at most 5% more held than the data.
#[cfg(target_os = "linux")]
#[test]
fn steady_state_reads_reuse_their_chunks_and_hold_little_more_than_the_data() {
    struct Stream(usize);
    impl io::Read for Stream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(64 << 10).min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    fn minor_faults() -> i64 {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage.ru_minflt
        }
    }
    let pool = pool();
    for len in [300_000, 3 << 20, 5_000_000, 9_000_000, 17_000_000] {
        for _ in 0..5 {
            drop(pool.read_to_end(Stream(len)).unwrap());
        }
        let misses = |p: &Pool| p.stats().classes.iter().map(|c| c.misses).sum::<u64>();
        let before = misses(&pool);
        let assembled = pool.stats().large.assembled;
        let blocks = |c: &tierpool::Chunks| {
            let mut starts: Vec<usize> = c.iter().map(|s| s.as_ptr() as usize).collect();
            starts.sort_unstable();
            starts
        };
        let first = blocks(&pool.read_to_end(Stream(len)).unwrap());
        let faults = minor_faults();
        for _ in 0..10 {
            let chunks = pool.read_to_end(Stream(len)).unwrap();
            assert_eq!(chunks.len(), len);
            let held = chunks.capacity();
            assert!(
                held as f64 <= len as f64 * 1.05,
                "{len} bytes held in {held}"
            );
            // Not a chunk that walks along the idle pages from read to
            // read (a cut-down last chunk pinned in a hot slot did).
            assert_eq!(blocks(&chunks), first, "{len}: the same blocks");
        }
        assert_eq!(minor_faults(), faults, "{len}: no page faulted");
        assert_eq!(misses(&pool), before, "{len}: every chunk reused");
        // Not by moving pages together: the last chunk, cut down to its
        // data, leaves idle pages the next read takes as they lie.
        assert_eq!(
            pool.stats().large.assembled,
            assembled,
            "{len}: no chunk assembled with mremap"
        );
    }
}

/// Uploads of two sizes in any order: each read expects the last one's
/// length, so half of them end in a chunk cut down from a larger class.
/// Those go back to the pages they were cut from, and after a warm-up no
/// read moves pages together or faults one in.
#[cfg(target_os = "linux")]
#[test]
fn reads_of_two_sizes_in_any_order_move_no_pages() {
    let pool = pool();
    let read = |len: usize| {
        let chunks = pool.read_to_end(io::repeat(9).take(len as u64)).unwrap();
        assert_eq!(chunks.len(), len);
    };
    let mut x = 7u64;
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        [9_000_000, 17_000_000][(x >> 62) as usize % 2]
    };
    for _ in 0..20 {
        read(next());
    }
    let before = pool.stats().large;
    for _ in 0..40 {
        read(next());
    }
    let after = pool.stats().large;
    assert_eq!(after.assembled, before.assembled, "{after:?}");
    assert_eq!(after.mappings, before.mappings, "nothing mapped afresh");
}

#[test]
fn write_vectored_reports_a_partial_write_instead_of_an_error() {
    // The budget fits 16 + 16 + 32 KiB of chunks; the next one is refused.
    let pool = Pool::builder()
        .memory_limit(tierpool::MemoryLimit::Unlimited)
        .max_in_use_bytes(64 << 10)
        .build();
    let mut w = pool.writer();
    let a = vec![1u8; 40 << 10];
    let b = vec![2u8; 40 << 10];
    let n = w
        .write_vectored(&[IoSlice::new(&a), IoSlice::new(&b)])
        .expect("what was written is reported, not lost behind an error");
    assert_eq!(n, 64 << 10);
    assert_eq!(w.len(), n);
    // Nothing written yet in this call: now the refusal is the answer.
    assert!(w.write_vectored(&[IoSlice::new(&b)]).is_err());
    let out = w.into_chunks().to_vec();
    assert_eq!(&out[..40 << 10], &a[..]);
    assert_eq!(&out[40 << 10..], &b[..24 << 10]);
}

/// A reader whose every read fails.
struct FailingReader;

impl io::Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("the client went away"))
    }
}

#[test]
fn a_writer_sized_up_front_freezes_without_a_copy() {
    let pool = pool();
    let mut out = pool.writer_with_capacity(300_000);
    out.write_all(&data(250_000)).unwrap();
    out.write_all(&data(50_000)).unwrap();
    let chunks = out.into_chunks();
    assert_eq!(chunks.iter().count(), 1);
    let ptr = chunks.iter().next().unwrap().as_ptr();
    let frozen = chunks.freeze();
    assert_eq!(frozen.as_ptr(), ptr, "one chunk freezes in place");
    drop(frozen);
    // Writing past the capacity goes on in further chunks.
    let mut out = pool.writer_with_capacity(1000);
    out.write_all(&data(5000)).unwrap();
    let chunks = out.into_chunks();
    assert!(chunks.iter().count() > 1);
    assert_eq!(chunks.to_vec(), data(5000));
    drop(chunks);
    // An absurd capacity takes nothing until written, and is trusted only
    // up to 64 MiB.
    let out = pool.writer_with_capacity(usize::MAX);
    assert_eq!(pool.stats().in_use_bytes, 0);
    drop(out);
}
