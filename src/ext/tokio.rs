//! Async adapters (feature `tokio`): `Pool::read_to_end_async` and
//! `Pool::read_with_async` (the read loop of `io::read`, awaited), and
//! `AsyncRead + AsyncBufRead + AsyncSeek` for `Chunks`, `AsyncWrite` for
//! `PooledWriter`.

use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncSeek, AsyncWrite, ReadBuf};

use crate::io::read::Source;
use crate::{Chunks, Pool, PooledWriter, ReadOptions};

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Pool {
    /// [`read_to_end`](Pool::read_to_end) for an [`AsyncRead`]: the same
    /// chunks, errors and statistics.
    ///
    /// # Errors
    ///
    /// As `read_to_end`.
    pub async fn read_to_end_async<R: AsyncRead + Unpin>(&self, reader: R) -> io::Result<Chunks> {
        self.read_with_async(reader, &ReadOptions::new()).await
    }

    /// [`read_with`](Pool::read_with) for an [`AsyncRead`]: a limit, a size
    /// hint, a label.
    ///
    /// ```
    /// # tokio_test_block_on(async {
    /// use tierpool::{Pool, ReadOptions};
    /// let pool = Pool::new();
    /// let options = ReadOptions::new().max_len(1 << 20);
    /// let body = pool.read_with_async(&[1u8; 40_000][..], &options).await?;
    /// assert_eq!(body.len(), 40_000);
    /// # Ok::<(), std::io::Error>(()) });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`read_to_end_limited`](Pool::read_to_end_limited).
    pub async fn read_with_async<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        options: &ReadOptions,
    ) -> io::Result<Chunks> {
        let mut source = Async(reader);
        let (result, activity) = self.read_source(&mut source, options).await;
        options.record(self, &activity, result.as_ref().ok().map(Chunks::len));
        result
    }
}

/// An [`AsyncRead`] as a read loop's source.
struct Async<R>(R);

impl<R: AsyncRead + Unpin> Source for Async<R> {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + 'a {
        self.0.read(buf)
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
