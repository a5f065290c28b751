//! Async adapters (feature `tokio`): `Pool::read_to_end_async`, and
//! `AsyncRead + AsyncBufRead + AsyncSeek` for `Chunks`, `AsyncWrite` for
//! `PooledWriter`.

use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncSeek, AsyncWrite, ReadBuf};

use crate::io::Label;
use crate::io::label::Activity;
use crate::io::read::{ChunkPlan, PROBE, ReadWindow, lying_reader};
use crate::{Chunks, Pool, PooledBuf, PooledWriter};

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Pool {
    /// [`read_to_end`](Pool::read_to_end) for an [`AsyncRead`]: the same
    /// chunks, errors and statistics.
    ///
    /// # Errors
    ///
    /// As `read_to_end`.
    pub async fn read_to_end_async<R: AsyncRead + Unpin>(&self, reader: R) -> io::Result<Chunks> {
        self.read_async_recorded(reader, None, usize::MAX).await
    }

    /// [`read_to_end_limited`](Pool::read_to_end_limited) for an
    /// [`AsyncRead`].
    ///
    /// # Errors
    ///
    /// As `read_to_end_limited`.
    pub async fn read_to_end_limited_async<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        max_len: usize,
    ) -> io::Result<Chunks> {
        self.read_async_recorded(reader, None, max_len).await
    }

    /// [`read_to_end_with_hint`](Pool::read_to_end_with_hint) for an
    /// [`AsyncRead`], with a limit (`usize::MAX` for none): with a correct
    /// hint the data lands in one buffer; a hint past `max_len` is trimmed
    /// to it.
    ///
    /// # Errors
    ///
    /// As `read_to_end_limited`.
    pub async fn read_to_end_with_hint_async<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        hint: usize,
        max_len: usize,
    ) -> io::Result<Chunks> {
        self.read_async_recorded(reader, Some(hint), max_len).await
    }

    async fn read_async_recorded<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        hint: Option<usize>,
        max_len: usize,
    ) -> io::Result<Chunks> {
        let (result, activity) = self.read_chunks_async(reader, hint, max_len).await;
        self.record_activity(&activity);
        result
    }

    /// The async [`read_chunks`](Pool::read_chunks): reads and reports what
    /// it did; recording it is the caller's.
    pub(crate) async fn read_chunks_async<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        hint: Option<usize>,
        max_len: usize,
    ) -> (io::Result<Chunks>, Activity) {
        let started = std::time::Instant::now();
        let mut activity = Activity::default();
        let result = self
            .read_async(&mut reader, hint, max_len, &mut activity)
            .await;
        activity.elapsed = started.elapsed();
        activity.finish(&result);
        (result, activity)
    }

    async fn read_async<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        hint: Option<usize>,
        max_len: usize,
        activity: &mut Activity,
    ) -> io::Result<Chunks> {
        let plan = ChunkPlan::new(max_len);
        let mut chunks: Vec<PooledBuf> = Vec::new();
        let mut total = 0usize;
        let mut size = plan.first(hint);
        // Bytes a probe read past an exact hint: they start the next chunk.
        let mut carry = ([0u8; PROBE], 0usize);
        let mut overhang;
        'chunks: loop {
            let mut chunk = self.try_get(size + carry.1)?;
            activity.chunks += 1;
            chunk.extend_from_slice(&carry.0[..carry.1]);
            carry.1 = 0;
            let mut window = ReadWindow::default();
            while chunk.len() < chunk.capacity() && plan.remaining(total) > 0 {
                let bytes = window.next(&mut chunk, plan.remaining(total));
                let n = read_retrying(reader, bytes, &mut activity.read_calls).await?;
                if n == 0 {
                    overhang = window.overhang();
                    chunks.push(chunk);
                    break 'chunks;
                }
                window.commit(&mut chunk, n);
                total += n;
                activity.bytes = total;
            }
            let full = chunk.len() == chunk.capacity();
            overhang = window.overhang();
            chunks.push(chunk);
            plan.check(total)?;
            if full && hint == Some(total) {
                // The hint was exact so far: check for the end with a probe
                // instead of a whole new chunk.
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
        let discarded = self.shrink_last(&mut chunks, overhang)?;
        Ok(Chunks::from_bufs(self.clone(), chunks).with_discarded(discarded))
    }
}

/// One `read`, retrying `Interrupted`; a count larger than the buffer is
/// `InvalidData`.
async fn read_retrying<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    calls: &mut u64,
) -> io::Result<usize> {
    loop {
        *calls += 1;
        match reader.read(buf).await {
            Ok(n) if n > buf.len() => return Err(lying_reader(n, buf.len())),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Label {
    /// [`Pool::read_to_end_async`], starting at the label's learned size
    /// and counted under the label, as [`Label::read_to_end`].
    ///
    /// # Errors
    ///
    /// As [`Pool::read_to_end`].
    pub async fn read_to_end_async<R: AsyncRead + Unpin>(&self, reader: R) -> io::Result<Chunks> {
        self.read_to_end_limited_async(reader, usize::MAX).await
    }

    /// [`Pool::read_to_end_limited_async`], starting at the label's learned
    /// size and counted under the label.
    ///
    /// # Errors
    ///
    /// As [`Pool::read_to_end_limited`].
    pub async fn read_to_end_limited_async<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        max_len: usize,
    ) -> io::Result<Chunks> {
        let pool = self.pool();
        let (result, activity) = pool.read_chunks_async(reader, self.hint(), max_len).await;
        self.record(&result, &activity);
        result
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Copied straight from the chunk: the caller's buffer is neither
        // zeroed nor initialised first.
        let src = BufRead::fill_buf(&mut *self)?;
        let n = src.len().min(buf.remaining());
        buf.put_slice(&src[..n]);
        BufRead::consume(&mut *self, n);
        Poll::Ready(Ok(()))
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl AsyncBufRead for Chunks {
    fn poll_fill_buf(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Poll::Ready(BufRead::fill_buf(self.get_mut()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        BufRead::consume(self.get_mut(), amt);
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl AsyncSeek for Chunks {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Seek::seek(&mut *self, position).map(|_| ())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.position()))
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl AsyncWrite for PooledWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Write::write(&mut *self, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Write::write_vectored(&mut *self, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
