//! The fuzz harnesses, shared by the cargo-fuzz targets (`fuzz_targets/`)
//! and by `tests/fuzz_corpus.rs`, which replays the committed corpus on
//! stable so CI covers it. Each takes arbitrary bytes, decodes a scenario
//! from them, runs it, and panics only when an invariant breaks.

use std::io::{self, BufRead, Cursor, Read, Seek, SeekFrom, Write};

use tierpool::{Pool, SizeClasses};

/// Bytes in, values out; runs dry into zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn small_pool() -> Pool {
    Pool::builder()
        .size_classes(SizeClasses::geometric(64, 1 << 16, 2).expect("valid classes"))
        .trim_interval(std::time::Duration::ZERO)
        .build()
}

/// What a scripted reader does on one call.
enum Step {
    Read(usize),
    Interrupted,
    Fail,
    Lie,
    WouldBlock,
}

struct ScriptedReader {
    data: Vec<u8>,
    at: usize,
    steps: Vec<Step>,
    call: usize,
    delivered: Vec<u8>,
}

impl Read for ScriptedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let step = self.steps.get(self.call);
        self.call += 1;
        match step {
            None => {
                // Script over: deliver the rest in large reads.
                let n = buf.len().min(self.data.len() - self.at);
                buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
                self.delivered.extend_from_slice(&buf[..n]);
                self.at += n;
                Ok(n)
            }
            Some(Step::Read(max)) => {
                let n = (*max).min(buf.len()).min(self.data.len() - self.at);
                buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
                self.delivered.extend_from_slice(&buf[..n]);
                self.at += n;
                Ok(n)
            }
            Some(Step::Interrupted) => Err(io::ErrorKind::Interrupted.into()),
            Some(Step::Fail) => Err(io::Error::other("scripted failure")),
            Some(Step::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Step::Lie) => Ok(buf.len() + 1),
        }
    }
}

/// (a) A scripted reader (read sizes, `Interrupted`, errors, lying counts)
/// through `read_to_end`, `read_to_end_limited` or `read_with` (a size hint).
pub(crate) fn read_to_end(bytes: &[u8]) {
    let mut input = Input(bytes);
    let mode = input.byte() % 3;
    let limit = input.u16() as usize * 4;
    let len = input.u16() as usize * 3;
    let mut steps = Vec::new();
    for _ in 0..(input.byte() % 32) {
        steps.push(match input.byte() % 16 {
            0 => Step::Interrupted,
            1 => Step::Fail,
            2 => Step::Lie,
            3 => Step::WouldBlock,
            _ => Step::Read(input.u16() as usize),
        });
    }
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let pool = small_pool();
    let mut reader = ScriptedReader {
        data,
        at: 0,
        steps,
        call: 0,
        delivered: Vec::new(),
    };
    let result = match mode {
        0 => pool.read_to_end(&mut reader),
        1 => pool.read_to_end_limited(&mut reader, limit),
        _ => pool.read_with(&mut reader, &tierpool::ReadOptions::new().size_hint(limit)),
    };
    match result {
        Ok(chunks) => {
            assert_eq!(
                chunks.to_vec(),
                reader.delivered,
                "the bytes read are the bytes given"
            );
            if mode == 1 {
                assert!(chunks.len() <= limit);
            }
        }
        Err(e) => {
            use io::ErrorKind::*;
            assert!(
                matches!(e.kind(), Other | InvalidData | WouldBlock | FileTooLarge),
                "unexpected error {e:?}"
            );
            if mode == 1 && e.kind() == FileTooLarge {
                assert!(
                    reader.delivered.len() <= limit + 1,
                    "read far past the limit"
                );
            }
        }
    }
    assert_eq!(pool.stats().in_use_bytes, 0, "every chunk went back");
}

/// (b) Arbitrary seek / read / `BufRead` operations on `Chunks` against
/// `io::Cursor<Vec<u8>>`.
pub(crate) fn chunks_vs_cursor(bytes: &[u8]) {
    let mut input = Input(bytes);
    let len = input.u16() as usize * 2;
    let data: Vec<u8> = (0..len)
        .map(|i| if i % 97 == 0 { b'\n' } else { (i % 251) as u8 })
        .collect();
    let pool = small_pool();
    let mut chunks = pool.read_to_end(&data[..]).expect("a slice cannot fail");
    let mut cursor = Cursor::new(data);
    while !input.is_empty() {
        let n = input.u16() as i64;
        match input.byte() % 8 {
            0 => {
                let (mut a, mut b) = (vec![0; n as usize], vec![0; n as usize]);
                let (ra, rb) = (chunks.read(&mut a).unwrap(), cursor.read(&mut b).unwrap());
                assert_eq!(&a[..ra], &b[..rb]);
            }
            1 => {
                let a = chunks.fill_buf().unwrap().to_vec();
                let b = cursor.fill_buf().unwrap();
                assert_eq!(a.is_empty(), b.is_empty());
                assert!(b.starts_with(&a));
            }
            2 => {
                chunks.consume(n as usize);
                cursor.consume(n as usize);
            }
            3 => assert_eq!(
                chunks.seek(SeekFrom::Start(n as u64)).unwrap(),
                cursor.seek(SeekFrom::Start(n as u64)).unwrap()
            ),
            4 | 5 => {
                let style = if input.byte() % 2 == 0 {
                    SeekFrom::End(-n)
                } else {
                    SeekFrom::Current(n - 30_000)
                };
                let (a, b) = (chunks.seek(style), cursor.seek(style));
                assert_eq!(a.as_ref().ok(), b.as_ref().ok());
                assert_eq!(a.err().map(|e| e.kind()), b.err().map(|e| e.kind()));
            }
            6 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                assert_eq!(
                    chunks.read_until(b'\n', &mut a).unwrap(),
                    cursor.read_until(b'\n', &mut b).unwrap()
                );
                assert_eq!(a, b);
            }
            _ => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                chunks.read_to_end(&mut a).unwrap();
                cursor.read_to_end(&mut b).unwrap();
                assert_eq!(a, b);
            }
        }
        assert_eq!(chunks.position(), cursor.position());
    }
}

/// (c) Writer operations (`write`, `write_vectored`, `BufMut`) against a
/// `Vec`.
pub(crate) fn writer_vs_vec(bytes: &[u8]) {
    use bytes::BufMut;
    let mut input = Input(bytes);
    let pool = small_pool();
    let mut writer = pool.writer();
    let mut vec = Vec::new();
    while !input.is_empty() {
        let n = input.u16() as usize % 5000;
        let fill = input.byte();
        let piece = vec![fill; n];
        match input.byte() % 4 {
            0 => {
                let written = writer.write(&piece).unwrap();
                assert!(written <= n);
                vec.extend_from_slice(&piece[..written]);
            }
            1 => {
                let halves = [
                    io::IoSlice::new(&piece[..n / 2]),
                    io::IoSlice::new(&piece[n / 2..]),
                ];
                assert_eq!(writer.write_vectored(&halves).unwrap(), n);
                vec.extend_from_slice(&piece);
            }
            2 => {
                writer.put_slice(&piece);
                vec.put_slice(&piece);
            }
            _ => {
                writer.put_u16_le(n as u16);
                vec.put_u16_le(n as u16);
            }
        }
        assert_eq!(writer.len(), vec.len());
    }
    let chunks = writer.into_chunks();
    assert_eq!(chunks.to_vec(), vec);
    assert_eq!(&chunks.into_contiguous()[..], &vec[..]);
    assert_eq!(pool.stats().in_use_bytes, 0);
}
