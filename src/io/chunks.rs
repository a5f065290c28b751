//! `Chunks`: bytes held as a chain of pooled buffers, read back through a
//! cursor with the semantics of `io::Cursor<Vec<u8>>`.

use std::fmt;
use std::io::{self, BufRead, IoSlice, Read, Seek, SeekFrom, Write};

use bytes::{Buf, Bytes};

use crate::{Pool, PooledBuf};

/// Bytes read by [`Pool::read_to_end`] or written to a
/// [`PooledWriter`](crate::PooledWriter), as a chain of pooled chunks, with a
/// cursor at 0.
///
/// It reads back as `Read + BufRead + Seek` with exactly the semantics of
/// `io::Cursor<Vec<u8>>` (seeking past the end is allowed and reads nothing,
/// a negative position is an error), and as a [`bytes::Buf`] from the cursor
/// to the end, so decoders consume it directly. Every chunk goes back to the
/// pool when the `Chunks` is dropped.
///
/// ```
/// use std::io::{Read, Seek, SeekFrom};
///
/// let pool = tierpool::Pool::new();
/// let mut body = pool.read_to_end(&b"GIF89a..."[..])?;
/// assert_eq!(body.len(), 9);
/// let mut magic = [0; 6];
/// body.read_exact(&mut magic)?;
/// assert_eq!(&magic, b"GIF89a");
/// body.seek(SeekFrom::End(-3))?;
/// assert_eq!(body.to_vec(), b"GIF89a...");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Chunks {
    pool: Pool,
    /// Every chunk but the last is full (`len == capacity`); none is empty.
    chunks: ChunkList,
    /// Where each chunk starts in the data.
    starts: Vec<usize>,
    len: usize,
    /// The cursor; may be past the end, like `io::Cursor`'s.
    pos: u64,
}

/// The chunks of a [`Chunks`]. When the last one is a block cut down in
/// place from a larger mapped class (see `Pool::shrink_last`), it goes back
/// to the large tier's idle runs, where it joins the pages it was cut from,
/// instead of the hot slot of its class: a class that no other chunk of
/// the read uses, so there it would pin those pages apart, and each read of
/// the same size would cut its chunks a little further along (measured
/// 2026-12-07 at 17 MB: the chunks walked 224 KiB a read, and 1 read in 10
/// moved pages together with `mremap` to make a 4 MiB chunk).
struct ChunkList {
    bufs: Vec<PooledBuf>,
    /// The last buffer was cut down from a larger class.
    cut_last: bool,
}

impl ChunkList {
    fn into_vec(mut self) -> Vec<PooledBuf> {
        std::mem::take(&mut self.bufs)
    }
}

impl std::ops::Deref for ChunkList {
    type Target = [PooledBuf];

    fn deref(&self) -> &[PooledBuf] {
        &self.bufs
    }
}

impl Drop for ChunkList {
    fn drop(&mut self) {
        if self.cut_last
            && let Some(last) = self.bufs.pop()
        {
            last.drop_to_runs();
        }
        while let Some(chunk) = self.bufs.pop() {
            drop(chunk);
        }
    }
}

// === impl Chunks ===

impl Chunks {
    pub(crate) fn from_bufs(pool: Pool, bufs: Vec<PooledBuf>) -> Chunks {
        let chunks: Vec<PooledBuf> = bufs.into_iter().filter(|b| !b.is_empty()).collect();
        let mut starts = Vec::with_capacity(chunks.len());
        let mut len = 0;
        for c in &chunks {
            starts.push(len);
            len += c.len();
        }
        Chunks {
            pool,
            chunks: ChunkList {
                bufs: chunks,
                cut_last: false,
            },
            starts,
            len,
            pos: 0,
        }
    }

    /// Records that the last chunk was cut down from a larger mapped class
    /// (it goes back to the idle runs, see [`ChunkList`]).
    pub(crate) fn with_cut_last(mut self, cut: bool) -> Chunks {
        self.chunks.cut_last = cut;
        self
    }

    /// The number of bytes held (whatever the cursor).
    pub fn len(&self) -> usize {
        self.len
    }

    /// `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pooled capacity behind the data: the capacity of all chunks (the
    /// data plus the unused tail of the last chunk).
    pub fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity()).sum()
    }

    /// The memory the chunks hold: [`capacity`](Self::capacity). Reads
    /// once handed back the pages of a mostly empty last chunk, and this
    /// counted what stayed; they now cut that chunk down to a smaller class
    /// or copy its data out instead, and every pooled page is resident.
    #[deprecated(
        since = "0.1.0",
        note = "equals `capacity()`: reads hand no pages back"
    )]
    pub fn resident_capacity(&self) -> usize {
        self.capacity()
    }

    /// The cursor's position, as `io::Cursor::position`.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the cursor, as `io::Cursor::set_position` (past the end is
    /// allowed).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The chunks, in order, as byte slices (all of the data, whatever the
    /// cursor).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.chunks.iter().map(|c| &c[..])
    }

    /// A copy of all of the data in one `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for c in self.iter() {
            out.extend_from_slice(c);
        }
        out
    }

    /// All of the data in one pooled buffer: without a copy when there is one
    /// chunk; otherwise with one copy that hands each chunk back to the pool
    /// as soon as it is copied, so the peak is the data plus one chunk.
    ///
    /// # Panics
    ///
    /// As [`Pool::get`] (the data already exists, so only if the allocator
    /// fails).
    pub fn into_contiguous(self) -> PooledBuf {
        let Chunks {
            pool, chunks, len, ..
        } = self;
        let mut chunks = chunks.into_vec();
        match chunks.len() {
            0 => return PooledBuf::new(),
            1 => return chunks.pop().expect("one chunk"),
            _ => {}
        }
        let mut out = pool.get(len);
        for chunk in chunks {
            out.extend_from_slice(&chunk);
            drop(chunk); // back to the pool before the next one is copied
        }
        out
    }

    /// All of the data as [`Bytes`]: the one chunk frozen without a copy, or
    /// [`into_contiguous`](Self::into_contiguous) frozen.
    pub fn freeze(self) -> Bytes {
        self.into_contiguous().freeze()
    }

    /// The bytes from the cursor to the end as a [`ChunksBody`]: each chunk
    /// frozen into [`Bytes`] without a copy, for a consumer that takes data
    /// in pieces (an HTTP response body, a stream, a vectored write). Each
    /// chunk goes back to the pool when its `Bytes` (and every clone) drops.
    ///
    /// ```
    /// let pool = tierpool::Pool::new();
    /// let chunks = pool.read_to_end(&[5u8; 100_000][..])?;
    /// let pieces: Vec<bytes::Bytes> = chunks.into_body().into_iter().collect();
    /// assert!(pieces.len() > 1);
    /// assert_eq!(pieces.iter().map(|b| b.len()).sum::<usize>(), 100_000);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_body(self) -> ChunksBody {
        let Chunks {
            chunks,
            starts,
            pos,
            ..
        } = self;
        let mut pieces = std::collections::VecDeque::with_capacity(chunks.len());
        let mut remaining = 0;
        for (chunk, start) in chunks.into_vec().into_iter().zip(starts) {
            let end = start + chunk.len();
            if (end as u64) <= pos {
                continue; // wholly before the cursor: back to the pool now
            }
            let skip = pos.saturating_sub(start as u64) as usize;
            let mut bytes = chunk.freeze();
            if skip > 0 {
                bytes = bytes.slice(skip..);
            }
            remaining += bytes.len();
            pieces.push_back(bytes);
        }
        ChunksBody { pieces, remaining }
    }

    /// The bytes from the cursor to the end as `IoSlice`s, for callers that
    /// write them themselves.
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(self.chunks.len());
        let mut at = self.pos;
        while let Some(rest) = self.slice_at(at) {
            slices.push(IoSlice::new(rest));
            at += rest.len() as u64;
        }
        slices
    }

    /// Writes the bytes from the cursor to the end with vectored writes,
    /// retrying `Interrupted`, and moves the cursor past what was written
    /// (also when an error stops it part way).
    ///
    /// # Errors
    ///
    /// The writer's error, or `WriteZero` if it accepts nothing.
    pub fn write_to<W: Write + ?Sized>(&mut self, out: &mut W) -> io::Result<()> {
        while self.pos < self.len as u64 {
            let slices = self.io_slices();
            match out.write_vectored(&slices) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the writer accepted no more bytes",
                    ));
                }
                Ok(n) => {
                    let left = self.len as u64 - self.pos;
                    if n as u64 > left {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the writer reported more bytes than it was given",
                        ));
                    }
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The rest of the chunk holding data position `at`, or `None` at or
    /// past the end.
    fn slice_at(&self, at: u64) -> Option<&[u8]> {
        if at >= self.len as u64 {
            return None;
        }
        let at = at as usize;
        // The last chunk that starts at or before `at`.
        let index = self.starts.partition_point(|&s| s <= at) - 1;
        let chunk = &self.chunks[index];
        Some(&chunk[at - self.starts[index]..])
    }

    fn remaining(&self) -> usize {
        (self.len as u64).saturating_sub(self.pos) as usize
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(rest) = self.slice_at(self.pos) else {
                break;
            };
            let n = rest.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&rest[..n]);
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }
}

impl BufRead for Chunks {
    /// The rest of the current chunk: a non-empty prefix of what
    /// `io::Cursor` would return, empty exactly when it would be.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.slice_at(self.pos).unwrap_or(&[]))
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
    }
}

impl Seek for Chunks {
    fn seek(&mut self, style: SeekFrom) -> io::Result<u64> {
        let (base, offset) = match style {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(n) => (self.len as u64, n),
            SeekFrom::Current(n) => (self.pos, n),
        };
        match base.checked_add_signed(offset) {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid seek to a negative or overflowing position",
            )),
        }
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        Chunks::remaining(self)
    }

    fn chunk(&self) -> &[u8] {
        self.slice_at(self.pos).unwrap_or(&[])
    }

    fn advance(&mut self, cnt: usize) {
        let remaining = Chunks::remaining(self);
        assert!(
            cnt <= remaining,
            "advance({cnt}) past the {remaining} remaining bytes"
        );
        self.pos += cnt as u64;
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut at = self.pos;
        let mut n = 0;
        while n < dst.len() {
            let Some(rest) = self.slice_at(at) else { break };
            dst[n] = IoSlice::new(rest);
            at += rest.len() as u64;
            n += 1;
        }
        n
    }
}

/// Shows sizes and the cursor, never the contents.
impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .field("position", &self.pos)
            .finish()
    }
}

/// [`Chunks`] frozen into [`Bytes`] pieces without a copy, from
/// [`Chunks::into_body`] or [`PooledWriter::into_body`](crate::PooledWriter::into_body).
///
/// It turns into an iterator of `Bytes` everywhere; with the feature `http-body`
/// it is also an `http_body::Body` (so `axum::body::Body::new(body)` and
/// hyper take it as a response body) and a `futures_core::Stream` of
/// `Result<Bytes, Infallible>`. Each piece goes back to the pool when it
/// has been sent and dropped.
pub struct ChunksBody {
    pub(crate) pieces: std::collections::VecDeque<Bytes>,
    /// The bytes in `pieces`.
    pub(crate) remaining: usize,
}

// === impl ChunksBody ===

impl ChunksBody {
    /// Bytes not yet taken.
    pub fn len(&self) -> usize {
        self.remaining
    }

    /// Nothing left to take.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Takes the next piece.
    pub fn next_piece(&mut self) -> Option<Bytes> {
        let piece = self.pieces.pop_front()?;
        self.remaining -= piece.len();
        Some(piece)
    }
}

/// The pieces, in order (an `IntoIterator` rather than an `Iterator`, so
/// that `http_body_util::BodyExt::collect` is not ambiguous).
impl IntoIterator for ChunksBody {
    type Item = Bytes;
    type IntoIter = std::collections::vec_deque::IntoIter<Bytes>;

    fn into_iter(self) -> Self::IntoIter {
        self.pieces.into_iter()
    }
}

/// Shows sizes, never the contents.
impl fmt::Debug for ChunksBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunksBody")
            .field("len", &self.remaining)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}
