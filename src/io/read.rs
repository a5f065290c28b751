//! `Pool::read_to_end` and [`ReadOptions`]: read a stream into a chain of
//! pooled chunks, with no doubling and no copying. One read loop serves
//! the blocking reads and the async ones (`ext::tokio`).

use std::io::{self, Read};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::io::label::{Activity, Label};
use crate::{Chunks, Pool, PooledBuf};

/// The first chunk of a read with no size hint.
pub(crate) const FIRST_CHUNK: usize = 16 << 10;
/// Chunks double up to this size, then stay at it, so the unused tail of
/// the last chunk is at most this and at most the bytes read before it.
pub(crate) const MAX_CHUNK: usize = 4 << 20;
/// The largest first chunk a hint may ask for: a hint (say, a
/// Content-Length from a client) is trusted only this far, and the chunks
/// after it grow with the data actually read.
pub(crate) const MAX_HINTED_CHUNK: usize = 64 << 20;
/// The most bytes handed to one `read` call, and zeroed before it (a `Read`
/// implementation may look at the buffer, so it must be initialised; a
/// pooled chunk may hold a previous user's bytes, which it must not see).
/// Zeroing ahead of the data touches pages, so the window is what a reader
/// fills in one call, not more (measured 2026-12-01: a 256 KiB window made
/// a 300 KB steady-state read 7x the oracle's time, 64 KiB 1.1x).
const READ_WINDOW: usize = 64 << 10;
/// The window after a short read: a short read often comes just before the
/// end, and the read that finds the end should not zero a whole window.
/// Full reads double the window back up to `READ_WINDOW`.
const SHORT_WINDOW: usize = 4 << 10;
/// Each chunk's first window: full reads double it up to `READ_WINDOW`, so
/// the zeroed overhang past the data stays near the size of the last read.
const FIRST_WINDOW: usize = 16 << 10;

/// How a read goes: a limit, a size hint, a label. The default reads
/// everything, starting at 16 KiB, unlabelled.
///
/// ```
/// use tierpool::{Pool, ReadOptions};
///
/// let pool = Pool::new();
/// let uploads = pool.label("upload");
/// let options = ReadOptions::new().max_len(32 << 20).size_hint(150_000).label(&uploads);
/// let body = pool.read_with(&[7u8; 150_000][..], &options)?;
/// assert_eq!(body.len(), 150_000);
/// assert_eq!(body.iter().count(), 1); // the hint was right: one chunk
/// assert_eq!(pool.stats().labels[0].label, "upload");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReadOptions {
    max_len: usize,
    size_hint: Option<usize>,
    label: Option<Label>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions::new()
    }
}

impl ReadOptions {
    /// No limit, no hint, no label.
    pub const fn new() -> Self {
        ReadOptions {
            max_len: usize::MAX,
            size_hint: None,
            label: None,
        }
    }

    /// An error as soon as more than `max_len` bytes arrive, as
    /// [`Pool::read_to_end_limited`]: the reader is never asked for more
    /// than `max_len + 1` bytes in all.
    pub const fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Starts with one chunk of the class that holds `size` bytes: with a
    /// correct hint the data lands in one buffer. A wrong hint costs
    /// nothing but more chunks, and an absurd one (an untrusted
    /// Content-Length) is trusted only up to 64 MiB. Zero means no hint.
    /// A request body's declared length comes before it.
    pub const fn size_hint(mut self, size: usize) -> Self {
        self.size_hint = if size == 0 { None } else { Some(size) };
        self
    }

    /// Counts the read under `label` in [`Stats::labels`](crate::Stats::labels)
    /// and, without a size hint, starts it at the label's learned size.
    pub fn label(mut self, label: &Label) -> Self {
        self.label = Some(label.clone());
        self
    }

    /// The size hint, else the label's learned size.
    pub(crate) fn hint(&self) -> Option<usize> {
        self.size_hint
            .or_else(|| self.label.as_ref().and_then(Label::hint))
    }

    /// The chunk plan of a read of `pool` with these options: the limit,
    /// and the length the read expects (the label's last read, else the
    /// pool's; see [`ChunkPlan::expecting`]).
    pub(crate) fn plan(&self, pool: &Pool) -> ChunkPlan {
        let expected = match &self.label {
            Some(label) => label.last_len(),
            None => pool.last_read_len(),
        };
        ChunkPlan::new(self.max_len).expecting(expected)
    }

    /// Records a call in `pool`'s adapter statistics, and under the label
    /// (with the size of what was read whole, if it was).
    pub(crate) fn record(&self, pool: &Pool, activity: &Activity, len: Option<usize>) {
        pool.record_activity(activity);
        if let Some(len) = len {
            pool.note_read_len(len);
        }
        if let Some(label) = &self.label {
            label.note(activity, len);
        }
    }
}

// === impl Pool (adapters) ===

impl Pool {
    /// Reads `reader` to its end into pooled chunks whose sizes grow
    /// geometrically from 16 KiB to 4 MiB: no reallocation, no copy; the only
    /// waste is the unused tail of the last chunk. A chunk that would reach
    /// past the length of the pool's last read (or its label's, with
    /// [`ReadOptions::label`]) is cut to what is left of that length, so
    /// reads of a steady size end in a chunk of their tail's class and take
    /// the same blocks each time.
    ///
    /// `Interrupted` is retried. Any other error comes back as it is, and
    /// every chunk read so far goes back to the pool. A reader that reports
    /// more bytes than it was given is an `InvalidData` error.
    ///
    /// ```
    /// let pool = tierpool::Pool::new();
    /// let body = pool.read_to_end(&[7u8; 100_000][..])?;
    /// assert_eq!(body.len(), 100_000);
    /// assert!(body.iter().count() > 1); // 16 KiB, 32 KiB, 64 KiB chunks
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The reader's error; `InvalidData` for a lying reader; `OutOfMemory`
    /// when a chunk cannot be allocated.
    pub fn read_to_end<R: Read>(&self, reader: R) -> io::Result<Chunks> {
        self.read_with(reader, &ReadOptions::new())
    }

    /// Like [`read_to_end`](Self::read_to_end), but an error as soon as more
    /// than `max_len` bytes arrive. It never asks the reader for more than
    /// `max_len + 1` bytes in all, so an upload that never ends cannot take
    /// the service down; everything read goes back to the pool.
    ///
    /// ```
    /// let pool = tierpool::Pool::new();
    /// let err = pool.read_to_end_limited(std::io::repeat(0), 1 << 20).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
    /// assert_eq!(pool.stats().in_use_bytes, 0);
    /// ```
    ///
    /// # Errors
    ///
    /// `FileTooLarge` past `max_len`, carrying
    /// [`Error::TooLarge`](crate::Error::TooLarge) (see
    /// [`Error::from_io`](crate::Error::from_io)); and those of `read_to_end`.
    pub fn read_to_end_limited<R: Read>(&self, reader: R, max_len: usize) -> io::Result<Chunks> {
        self.read_with(reader, &ReadOptions::new().max_len(max_len))
    }

    /// [`read_to_end`](Self::read_to_end) with [`ReadOptions`]: a limit, a
    /// size hint, a label.
    ///
    /// # Errors
    ///
    /// As `read_to_end_limited`.
    pub fn read_with<R: Read>(&self, reader: R, options: &ReadOptions) -> io::Result<Chunks> {
        let mut source = Blocking(reader);
        let (result, activity) = ready_now(self.read_source(&mut source, options));
        options.record(self, &activity, result.as_ref().ok().map(Chunks::len));
        result
    }

    /// Reads `source` into chunks and reports what it did (timed, failed or
    /// not); recording it is the caller's. The one read loop of the
    /// blocking and the async reads.
    pub(crate) async fn read_source<S: Source>(
        &self,
        source: &mut S,
        options: &ReadOptions,
    ) -> (io::Result<Chunks>, Activity) {
        let started = Instant::now();
        let mut activity = Activity::default();
        let result = self
            .fill_chunks(source, options.hint(), options.plan(self), &mut activity)
            .await;
        activity.elapsed = started.elapsed();
        activity.finish(&result);
        (result, activity)
    }

    async fn fill_chunks<S: Source>(
        &self,
        reader: &mut S,
        hint: Option<usize>,
        plan: ChunkPlan,
        activity: &mut Activity,
    ) -> io::Result<Chunks> {
        let mut chunks: Vec<PooledBuf> = Vec::new();
        let mut total = 0usize;
        let mut size = plan.first(hint);
        // Bytes a probe read past an exact hint: they start the next chunk.
        let mut carry = ([0u8; PROBE], 0usize);
        'chunks: loop {
            let mut chunk = self.try_get_chunk(size + carry.1)?;
            activity.chunks += 1;
            chunk.extend_from_slice(&carry.0[..carry.1]);
            carry.1 = 0;
            let mut window = ReadWindow::default();
            while chunk.len() < chunk.capacity() && plan.remaining(total) > 0 {
                let bytes = window.next(&mut chunk, plan.remaining(total));
                let n = read_retrying(reader, bytes, &mut activity.read_calls).await?;
                if n == 0 {
                    chunks.push(chunk);
                    break 'chunks;
                }
                window.commit(&mut chunk, n);
                total += n;
                activity.bytes = total;
            }
            let full = chunk.len() == chunk.capacity();
            chunks.push(chunk);
            plan.check(total)?;
            if full && (hint == Some(total) || plan.expects_end_at(total)) {
                // The hint (or the expected length) was exact so far: check
                // for the end with a probe instead of a whole new chunk.
                let window = plan.remaining(total).min(PROBE);
                let n =
                    read_retrying(reader, &mut carry.0[..window], &mut activity.read_calls).await?;
                if n == 0 {
                    break;
                }
                carry.1 = n;
                total += n;
                activity.bytes = total;
                plan.check(total)?;
            }
            size = plan.next(total);
        }
        let cut = self.shrink_last(&mut chunks)?;
        Ok(Chunks::from_bufs(self.clone(), chunks).with_cut_last(cut))
    }

    /// Keeps the memory held near the data without creating buffers of
    /// classes nobody asks for, and without a system call: when more than
    /// 1/20 of what is held is the unused tail of the last chunk, a mapped
    /// chunk whose data fits a smaller mapped class is cut down to it in
    /// place (the rest of its pages become idle pages of the large tier,
    /// which the next read takes as they lie and the trimmer hands back
    /// after an idle interval), and data that fits a smaller class below
    /// the mapped ones (under 128 KiB) is copied into a chunk of that class.
    /// Otherwise the chunk stays as it is: its unused tail is less than a
    /// class step (a quarter of it with the default classes), and it keeps
    /// its pages, so no later read faults them in again. Returns whether
    /// the last chunk was cut down in place.
    pub(crate) fn shrink_last(&self, chunks: &mut [PooledBuf]) -> Result<bool, crate::Error> {
        shrink_last(self.size_classes(), chunks, |n| self.try_get(n))
    }
}

/// [`Pool::shrink_last`], the smaller chunk taken through `take` (the pool,
/// or an admitted request's permit).
pub(crate) fn shrink_last(
    classes: &crate::SizeClasses,
    chunks: &mut [PooledBuf],
    take: impl FnOnce(usize) -> Result<PooledBuf, crate::Error>,
) -> Result<bool, crate::Error> {
    let held: usize = chunks.iter().map(|c| c.capacity()).sum();
    let Some(last) = chunks.last_mut() else {
        return Ok(false);
    };
    let unused = last.capacity() - last.len();
    if last.is_empty() || unused * 20 <= held {
        return Ok(false);
    }
    // A mapped chunk whose data fits a smaller mapped class is cut down to
    // it in place: the rest of its pages stay resident as idle pages, so
    // the next read (whose full chunks take them again) faults nothing.
    if last.shrink_to_class() {
        return Ok(true);
    }
    let Some(class) = classes.index_for(last.len()) else {
        return Ok(false);
    };
    if classes.sizes()[class] >= last.capacity() {
        return Ok(false);
    }
    // Data under the smallest mapped class: at most 128 KiB to copy, and
    // the large chunk goes back whole, its pages untouched.
    let mut small = take(last.len())?;
    small.extend_from_slice(last);
    *last = small; // the large chunk goes back to the pool
    Ok(false)
}

/// The bytes a read reads past an exact hint to learn whether the stream
/// ended.
pub(crate) const PROBE: usize = 64;

/// How a read sizes its chunks, for the blocking and the async reads alike:
/// the first from the hint (trusted up to [`MAX_HINTED_CHUNK`]) or
/// [`FIRST_CHUNK`], then each as large as all before it up to
/// [`MAX_CHUNK`], and never more than one byte past the limit in all.
///
/// With an expected length (the last read's, see
/// [`expecting`](Self::expecting)), a chunk that would reach past it is cut
/// to what is left of it: a stream of the same length as the last ends in
/// a chunk of the class of its tail, instead of a tail in a chunk as large
/// as all before it, to copy out or keep half empty (measured 2026-12-07: a
/// steady 300 KB read spent 0.7 of its 7.2 µs copying its 37 KB tail out
/// of a 256 KiB chunk). A longer stream goes on with the usual chunks after
/// that one; a shorter one ends as it would have.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkPlan {
    max_len: usize,
    /// `max_len + 1`: reading one byte past the limit tells it was passed.
    budget: usize,
    /// The length this read expects, if any.
    expected: Option<usize>,
}

impl ChunkPlan {
    pub(crate) fn new(max_len: usize) -> ChunkPlan {
        ChunkPlan {
            max_len,
            budget: max_len.saturating_add(1),
            expected: None,
        }
    }

    /// Sizes the chunks for a stream of `expected` bytes, as above.
    pub(crate) fn expecting(mut self, expected: Option<usize>) -> ChunkPlan {
        self.expected = expected.filter(|&n| n > 0);
        self
    }

    /// The first chunk's size.
    pub(crate) fn first(&self, hint: Option<usize>) -> usize {
        match hint {
            Some(h) if h > 0 => h.min(self.budget).min(MAX_HINTED_CHUNK),
            _ => self.fit(0, FIRST_CHUNK.min(self.budget)),
        }
    }

    /// The next chunk's size once `total` bytes are read (at least one).
    pub(crate) fn next(&self, total: usize) -> usize {
        let size = total
            .clamp(FIRST_CHUNK, MAX_CHUNK)
            .min(self.remaining(total))
            .max(1);
        self.fit(total, size)
    }

    /// Whether the expected length is `total`: the stream may end here.
    pub(crate) fn expects_end_at(&self, total: usize) -> bool {
        self.expected == Some(total)
    }

    /// `size`, or less when the expected length ends inside it.
    fn fit(&self, total: usize, size: usize) -> usize {
        match self.expected {
            Some(expected) if expected > total => size.min(expected - total),
            _ => size,
        }
    }

    /// Bytes that may still be read after `total`.
    pub(crate) fn remaining(&self, total: usize) -> usize {
        self.budget - total
    }

    /// The limit: at most this many bytes (the body reads' own checks).
    #[cfg(feature = "http-body")]
    pub(crate) fn limit(&self) -> usize {
        self.max_len
    }

    /// `FileTooLarge` (carrying [`Error::TooLarge`](crate::Error::TooLarge))
    /// once `total` passes the limit.
    pub(crate) fn check(&self, total: usize) -> io::Result<()> {
        if total > self.max_len {
            return Err(crate::Error::TooLarge {
                limit: self.max_len as u64,
                declared: None,
            }
            .into());
        }
        Ok(())
    }
}

/// The error of a reader that reports more bytes than it was given.
pub(crate) fn lying_reader(n: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the reader reported {n} bytes read into a {len}-byte buffer"),
    )
}

/// Hands out a chunk's spare capacity as initialised windows to read into,
/// so readers go straight into the chunk and never see stale bytes.
#[derive(Debug)]
pub(crate) struct ReadWindow {
    /// Bytes past the chunk's `len` already zeroed, so never zeroed twice.
    zeroed: usize,
    /// The length of the last window handed out.
    last: usize,
    /// The size of the next window: from `FIRST_WINDOW` doubling up to
    /// `READ_WINDOW` on full reads, `SHORT_WINDOW` after a short one.
    size: usize,
}

impl Default for ReadWindow {
    fn default() -> Self {
        ReadWindow {
            zeroed: 0,
            last: 0,
            size: FIRST_WINDOW,
        }
    }
}

impl ReadWindow {
    /// The next window: the start of the spare capacity, at most
    /// `READ_WINDOW` and `limit` bytes, zeroed the first time it is seen.
    pub(crate) fn next<'a>(&mut self, chunk: &'a mut PooledBuf, limit: usize) -> &'a mut [u8] {
        let spare = chunk.spare_capacity_mut();
        let window = spare.len().min(self.size).min(limit);
        if self.zeroed < window {
            for byte in &mut spare[self.zeroed..window] {
                byte.write(0);
            }
            self.zeroed = window;
        }
        self.last = window;
        // SAFETY: the first `window` bytes of the spare capacity are
        // initialised: zeroed above or by an earlier call (`zeroed` counts
        // from `len`, and `commit` moves both together).
        unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), window) }
    }

    /// Takes the first `n` bytes of the last window into the chunk.
    ///
    /// # Panics
    ///
    /// If `n` is larger than the last window (callers check first, and
    /// report a lying reader as `InvalidData`).
    pub(crate) fn commit(&mut self, chunk: &mut PooledBuf, n: usize) {
        assert!(
            n <= self.last,
            "committed {n} bytes of a {}-byte window",
            self.last
        );
        let len = chunk.len();
        // SAFETY: `n` bytes past `len` lie in the last window: initialised
        // (zeroed by `next`) and since overwritten by the reader.
        unsafe { chunk.set_len(len + n) };
        self.zeroed -= n;
        self.size = if n == self.last {
            (self.size * 2).min(READ_WINDOW)
        } else {
            SHORT_WINDOW
        };
        self.last = 0;
    }
}

/// A stream the read loop reads from: a blocking [`Read`] ([`Blocking`],
/// whose reads are ready at once) or an `AsyncRead` (`ext::tokio`).
pub(crate) trait Source {
    /// One read into `buf`.
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + 'a;
}

/// A blocking reader as a [`Source`]: each read runs when its future is
/// first polled, and is ready then.
pub(crate) struct Blocking<R>(pub(crate) R);

impl<R: Read> Source for Blocking<R> {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + 'a {
        std::future::ready(self.0.read(buf))
    }
}

/// The output of a future that never waits: the read loop over a
/// [`Blocking`] source, whose every read is ready at once.
fn ready_now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // Unreachable with a `Blocking` source; polling again is all a
        // future that returned `Pending` without waiting on anything needs.
    }
}

/// One `read`, retrying `Interrupted`; a count larger than the buffer is
/// `InvalidData`.
async fn read_retrying<S: Source>(
    reader: &mut S,
    buf: &mut [u8],
    calls: &mut u64,
) -> io::Result<usize> {
    loop {
        *calls += 1;
        let len = buf.len();
        match reader.read(buf).await {
            Ok(n) if n > len => return Err(lying_reader(n, len)),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunk sizes a plan asks for to read `len` bytes, as the read
    /// loop takes them (each chunk filled to the size asked).
    fn sizes(plan: ChunkPlan, len: usize) -> Vec<usize> {
        let mut out = vec![plan.first(None)];
        let mut total = out[0].min(len);
        while total < len {
            let next = plan.next(total);
            out.push(next);
            total += next;
        }
        out
    }

    #[test]
    fn chunks_double_from_16_kib_without_an_expected_length() {
        let plan = ChunkPlan::new(usize::MAX);
        let k = 1 << 10;
        assert_eq!(
            sizes(plan, 300_000),
            [16 * k, 16 * k, 32 * k, 64 * k, 128 * k, 256 * k]
        );
    }

    #[test]
    fn a_stream_of_the_expected_length_ends_in_a_chunk_of_its_tail() {
        let k = 1 << 10;
        let plan = ChunkPlan::new(usize::MAX).expecting(Some(300_000));
        assert_eq!(
            sizes(plan, 300_000),
            [16 * k, 16 * k, 32 * k, 64 * k, 128 * k, 300_000 - 256 * k]
        );
        assert!(plan.expects_end_at(300_000));
        // Longer: the usual chunks after the cut one.
        assert_eq!(sizes(plan, 400_000)[5..], [300_000 - 256 * k, 300_000]);
        // Shorter than the first chunk: the first is cut to it.
        let small = ChunkPlan::new(usize::MAX).expecting(Some(1000));
        assert_eq!(small.first(None), 1000);
        assert_eq!(small.next(1000), 16 * k, "past it, the usual chunks");
        // A hint comes first; the limit caps everything.
        assert_eq!(plan.first(Some(5000)), 5000);
        let limited = ChunkPlan::new(100).expecting(Some(300_000));
        assert_eq!(limited.first(None), 101);
        // No expectation from an empty read.
        assert_eq!(
            ChunkPlan::new(usize::MAX).expecting(Some(0)).first(None),
            16 * k
        );
    }
}
