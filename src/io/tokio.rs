//! Async adapters (feature `tokio`): `Pool::read_to_end_async`, and
//! `AsyncRead + AsyncBufRead + AsyncSeek` for `Chunks`, `AsyncWrite` for
//! `PooledWriter`.

use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncSeek, AsyncWrite, ReadBuf};

use crate::io::label::Activity;
use crate::io::read::{ChunkPlan, ReadWindow, lying_reader};
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
        self.read_to_end_limited_async(reader, usize::MAX).await
    }

    /// [`read_to_end_limited`](Pool::read_to_end_limited) for an
    /// [`AsyncRead`].
    ///
    /// # Errors
    ///
    /// As `read_to_end_limited`.
    pub async fn read_to_end_limited_async<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        max_len: usize,
    ) -> io::Result<Chunks> {
        let started = std::time::Instant::now();
        let mut activity = Activity::default();
        let result = self.read_async(&mut reader, max_len, &mut activity).await;
        activity.elapsed = started.elapsed();
        activity.failed = result.is_err();
        self.inner_arc().adapters.record(&activity);
        result
    }

    async fn read_async<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        max_len: usize,
        activity: &mut Activity,
    ) -> io::Result<Chunks> {
        let plan = ChunkPlan::new(max_len);
        let mut chunks: Vec<PooledBuf> = Vec::new();
        let mut total = 0usize;
        let mut size = plan.first(None);
        'chunks: loop {
            let mut chunk = self.try_get(size)?;
            activity.chunks += 1;
            let mut window = ReadWindow::default();
            while chunk.len() < chunk.capacity() && plan.remaining(total) > 0 {
                let bytes = window.next(&mut chunk, plan.remaining(total));
                let len = bytes.len();
                activity.read_calls += 1;
                let n = match reader.read(bytes).await {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n > len {
                    return Err(lying_reader(n, len));
                }
                if n == 0 {
                    chunks.push(chunk);
                    break 'chunks;
                }
                window.commit(&mut chunk, n);
                total += n;
                activity.bytes = total;
            }
            chunks.push(chunk);
            plan.check(total)?;
            size = plan.next(total);
        }
        let discarded = self.shrink_last(&mut chunks)?;
        Ok(Chunks::from_bufs(self.clone(), chunks).with_discarded(discarded))
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
