//! The mixed workload of an image service, shared by the benchmarks: jobs of
//! 64 KiB to 8 MiB at random, each written through in 16 KiB rows as a
//! decoder fills its output, up to five held at once per thread.

#![allow(dead_code)] // each bench uses its own part

use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{self, Read};

/// A decoder's row.
pub const ROW: usize = 16 << 10;
/// Jobs each thread keeps alive at once.
pub const HELD: usize = 5;
pub const MIN_JOB: usize = 64 << 10;
pub const MAX_JOB: usize = 8 << 20;

/// Where the rows' source starts within a 64-byte cache line:
/// `TIERPOOL_ROW_OFFSET`, else 16 (where glibc's heap puts a decoder's row
/// buffer as often as not). It matters: `memmove` of a 16 KiB row runs up
/// to six times as fast with one relative alignment of source and
/// destination as with another (`rep movsb` on this machine's AMD EPYC,
/// 2026-12-06), so a comparison of two placements of the destination (the
/// pool's page-aligned blocks, glibc's `Vec` 16 bytes into its pages) is a
/// comparison at one source offset only.
pub fn row_offset() -> usize {
    std::env::var("TIERPOOL_ROW_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(16, |n: usize| n % 64)
}

/// A row of `ROW` bytes whose first byte sits `offset` bytes into a cache
/// line, inside `backing`.
pub fn row_at(backing: &mut Vec<u8>, offset: usize) -> &[u8] {
    backing.clear();
    backing.resize(ROW + 128, 0x5a);
    let start = (64 - backing.as_ptr() as usize % 64) % 64 + offset % 64;
    &backing[start..start + ROW]
}

/// xorshift64*: deterministic job sizes without another dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn for_thread(thread: usize) -> Rng {
        Rng(0x9e37_79b9_7f4a_7c15 ^ (thread as u64 + 1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A job size, 64 KiB to 8 MiB.
    pub fn job_size(&mut self) -> usize {
        MIN_JOB + (self.next_u64() as usize % (MAX_JOB - MIN_JOB))
    }
}

/// One thread's share: `count` jobs, each taken with `get`, filled row by
/// row with `put_row`, and held until [`HELD`] newer ones exist.
/// `before_job(i, rng)` runs first for each job (the burst reads uploads
/// there).
pub fn held_jobs<B>(
    thread: usize,
    count: u64,
    get: impl Fn(usize) -> B,
    put_row: impl Fn(&mut B, &[u8]),
    mut before_job: impl FnMut(u64, &mut Rng),
) {
    let mut backing = Vec::new();
    let row = row_at(&mut backing, row_offset());
    let mut rng = Rng::for_thread(thread);
    let mut held = VecDeque::with_capacity(HELD + 1);
    for i in 0..count {
        before_job(i, &mut rng);
        let size = rng.job_size();
        let mut buf = get(size);
        let mut left = size;
        while left > 0 {
            let n = left.min(ROW);
            put_row(&mut buf, &row[..n]);
            left -= n;
        }
        held.push_back(black_box(buf));
        if held.len() > HELD {
            held.pop_front();
        }
    }
}

/// What one `read` of a [`Stream`] delivers at most.
pub const STREAM_READ: usize = 64 << 10;

/// A stream of `left` bytes that hides its length, delivered in 64 KiB
/// reads, as an upload arrives.
pub struct Stream {
    pub left: usize,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(STREAM_READ).min(self.left);
        buf[..n].fill(0x42);
        self.left -= n;
        Ok(n)
    }
}
