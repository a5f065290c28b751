//! `PooledWriter`: output written into a chain of pooled chunks.

use std::fmt;
use std::io::{self, IoSlice, Write};

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

use crate::io::read::{FIRST_CHUNK, MAX_CHUNK, MAX_HINTED_CHUNK};
use crate::pool::Draw;
use crate::{Chunks, Pool, PooledBuf};

/// A writer into pooled chunks, from [`Pool::writer`]: `io::Write` (with
/// `write_vectored`) and [`bytes::BufMut`], with no doubling and no copying.
/// Chunks grow geometrically from 16 KiB to 4 MiB, or start at the size
/// given to [`Pool::writer_with_capacity`].
///
/// ```
/// use std::io::Write;
///
/// let pool = tierpool::Pool::new();
/// let mut out = pool.writer();
/// out.write_all(b"%PDF-1.7\n")?;
/// let pdf = out.into_chunks();
/// assert_eq!(pdf.to_vec(), b"%PDF-1.7\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PooledWriter {
    /// Where its chunks come from: the pool, or an admitted request's
    /// permit.
    draw: Draw,
    chunks: Vec<PooledBuf>,
    written: usize,
    calls: u64,
    /// The first chunk's size, from `writer_with_capacity` (0: the default).
    first: usize,
}

impl Pool {
    /// A writer whose output lands in pooled chunks.
    pub fn writer(&self) -> PooledWriter {
        self.writer_with_capacity(0)
    }

    /// A writer whose first chunk holds `capacity` bytes (taken on the first
    /// write, from the class that holds it), so output of a size known up
    /// front (an encoded image, a rendered page) lands in one buffer and
    /// freezes without a copy. Past it, chunks grow as in
    /// [`writer`](Self::writer). A capacity above 64 MiB is trusted only up
    /// to 64 MiB.
    ///
    /// ```
    /// use std::io::Write;
    ///
    /// let pool = tierpool::Pool::new();
    /// let mut out = pool.writer_with_capacity(100_000);
    /// out.write_all(&[1; 60_000])?;
    /// out.write_all(&[2; 40_000])?;
    /// let chunks = out.into_chunks();
    /// assert_eq!(chunks.iter().count(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn writer_with_capacity(&self, capacity: usize) -> PooledWriter {
        PooledWriter::new(Draw::Pool(self.clone()), capacity)
    }
}

// === impl PooledWriter ===

impl PooledWriter {
    /// A writer taking its chunks through `draw`, the first of `capacity`
    /// bytes (0: the default).
    pub(crate) fn new(draw: Draw, capacity: usize) -> PooledWriter {
        PooledWriter {
            draw,
            chunks: Vec::new(),
            written: 0,
            calls: 0,
            first: capacity.min(MAX_HINTED_CHUNK),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.written
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// The output as [`Chunks`], cursor at 0. The writer's bytes, write
    /// calls and chunks are recorded in the pool's adapter statistics.
    pub fn into_chunks(self) -> Chunks {
        let pool = self.draw.pool().clone();
        pool.record_activity(&crate::io::label::Activity {
            bytes: self.written,
            read_calls: self.calls,
            chunks: self.chunks.len() as u64,
            ..Default::default()
        });
        Chunks::from_bufs(pool, self.chunks)
    }

    /// The output in one pooled buffer (see [`Chunks::into_contiguous`]).
    pub fn into_contiguous(self) -> PooledBuf {
        self.into_chunks().into_contiguous()
    }

    /// The output as one [`Bytes`] (see [`Chunks::freeze`]): without a copy
    /// when it fits one chunk (see [`Pool::writer_with_capacity`]);
    /// [`into_body`](Self::into_body) never copies.
    pub fn freeze(self) -> Bytes {
        self.into_chunks().freeze()
    }

    /// The output as a [`ChunksBody`](crate::ChunksBody): its chunks frozen into `Bytes`
    /// without a copy (see [`Chunks::into_body`]), for a response body.
    pub fn into_body(self) -> crate::io::ChunksBody {
        self.into_chunks().into_body()
    }

    /// The last chunk, with room for at least one more byte.
    fn chunk_with_room(&mut self) -> io::Result<&mut PooledBuf> {
        let full = self.chunks.last().is_none_or(|c| c.len() == c.capacity());
        if full {
            let size = if self.chunks.is_empty() && self.first > 0 {
                self.first
            } else {
                self.written.clamp(FIRST_CHUNK, MAX_CHUNK)
            };
            self.chunks.push(self.draw.take(size)?);
        }
        Ok(self.chunks.last_mut().expect("just ensured"))
    }
}

impl Write for PooledWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.calls += 1;
        let chunk = self.chunk_with_room()?;
        let n = data.len().min(chunk.capacity() - chunk.len());
        chunk.extend_from_slice(&data[..n]);
        self.written += n;
        Ok(n)
    }

    /// Writes the slices in order. If a chunk cannot be had part way
    /// (the allocator or admission refuses), the bytes already written are
    /// reported as a short write, and only a call that wrote nothing
    /// returns the error, as `io::Write` requires.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            let mut data = &buf[..];
            while !data.is_empty() {
                match self.write(data) {
                    Ok(n) => {
                        total += n;
                        data = &data[n..];
                    }
                    Err(e) if total == 0 => return Err(e),
                    Err(_) => return Ok(total),
                }
            }
        }
        Ok(total)
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.write(data)?;
            data = &data[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// SAFETY: `chunk_mut` hands out exactly the spare capacity of the last
// chunk; `advance_mut` moves that chunk's length within its capacity, over
// bytes the caller promises to have written.
unsafe impl BufMut for PooledWriter {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize - self.written
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let Some(chunk) = self.chunks.last_mut() else {
            assert_eq!(cnt, 0, "advance_mut({cnt}) before chunk_mut");
            return;
        };
        let room = chunk.capacity() - chunk.len();
        assert!(
            cnt <= room,
            "advance_mut({cnt}) past the {room} bytes of spare capacity"
        );
        let len = chunk.len();
        // SAFETY: within capacity (checked), over bytes the caller wrote.
        unsafe { chunk.set_len(len + cnt) };
        self.written += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let chunk = match self.chunk_with_room() {
            Ok(chunk) => chunk,
            Err(e) => panic!("tierpool: PooledWriter could not get a chunk: {e}"),
        };
        UninitSlice::uninit(chunk.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if let Err(e) = self.write_all(src) {
            panic!("tierpool: PooledWriter could not get a chunk: {e}");
        }
    }
}

/// Shows sizes, never the contents.
impl fmt::Debug for PooledWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledWriter")
            .field("len", &self.written)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}
