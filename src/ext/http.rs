//! HTTP bodies (feature `http-body`): request bodies read into pooled
//! [`Chunks`] with a limit and the declared length as the hint, and pooled
//! output handed to responses as an `http_body::Body` without a copy.
//!
//! `http-body` 1 is what hyper 1, axum 0.8 and reqwest speak, so these work
//! with any of them and with any async runtime.

use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

use crate::io::label::{Activity, Outcome};
use crate::io::read::{ChunkPlan, shrink_last};
use crate::pool::Draw;
use crate::{Chunks, ChunksBody, Error, ErrorKind, Permit, Pool, PooledBuf, ReadOptions};

/// Why [`Pool::read_body`] failed: the body passed the limit (413), the pool
/// could not give the memory (503 or 500), or the body itself failed (400:
/// the client went away, a malformed chunked encoding).
///
/// Every chunk read so far went back to the pool. In a handler, `(err.status(),
/// err.to_string())` is a complete answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyError<E> {
    /// The pool refused: [`Error::TooLarge`] (declared or actual length over
    /// the limit), admission ([`Error::is_refused`]) or the allocator.
    Pool(Error),
    /// The body's own error.
    Body(E),
}

impl<E> BodyError<E> {
    /// The status to answer with: 413 for a body over the limit, 503 when
    /// admission refused or memory ran out (retry later), 400 when the body
    /// itself failed, 500 otherwise.
    ///
    /// ```
    /// use tierpool::BodyError;
    /// let err: BodyError<std::io::Error> =
    ///     BodyError::Pool(tierpool::Error::TooLarge { limit: 10, declared: Some(11) });
    /// assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    /// ```
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyError::Pool(e) => match e.kind() {
                ErrorKind::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::Refused => http::StatusCode::SERVICE_UNAVAILABLE,
                _ if matches!(e, Error::AllocFailed { .. }) => {
                    http::StatusCode::SERVICE_UNAVAILABLE
                }
                _ => http::StatusCode::INTERNAL_SERVER_ERROR,
            },
            BodyError::Body(_) => http::StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the body passed the limit (declared or actual).
    pub fn is_too_large(&self) -> bool {
        matches!(self, BodyError::Pool(e) if e.is_too_large())
    }
}

impl<E: fmt::Display> fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Pool(e) => write!(f, "request body: {e}"),
            BodyError::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BodyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Pool(e) => Some(e),
            BodyError::Body(e) => Some(e),
        }
    }
}

impl<E> From<Error> for BodyError<E> {
    fn from(e: Error) -> Self {
        BodyError::Pool(e)
    }
}

// === impl Pool (HTTP bodies) ===

#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
impl Pool {
    /// Reads an HTTP body into pooled [`Chunks`], refusing it as soon as it
    /// is known to be longer than `max_len`.
    ///
    /// - A declared length (Content-Length, through
    ///   [`Body::size_hint`]) over `max_len` is refused before a byte is
    ///   read or a chunk taken.
    /// - The declared length is the hint: a correct one lands the body in
    ///   one buffer; a false one costs only more chunks (and is trusted up
    ///   to 64 MiB, as [`ReadOptions::size_hint`]).
    /// - A body with no or a false declared length is stopped by the first
    ///   frame that passes the limit; at most `max_len + 1` bytes are kept.
    ///
    /// Each frame is copied once, into the pool (the body's own buffers are
    /// the server's). Trailers are ignored. The read is counted in
    /// [`Stats::adapters`](crate::Stats::adapters), a body over the limit
    /// under `too_large`, apart from failures.
    ///
    /// ```
    /// # async fn handler(pool: tierpool::Pool, body: http_body_util::Full<bytes::Bytes>) {
    /// match pool.read_body(body, 32 << 20).await {
    ///     Ok(upload) => println!("{} bytes", upload.len()),
    ///     Err(e) => println!("{}: {e}", e.status()), // 413 for a body over 32 MiB
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`BodyError::Pool`] with [`Error::TooLarge`] over the limit (declared:
    /// `Some(length)`), or admission's or the allocator's error;
    /// [`BodyError::Body`] with the body's error.
    pub async fn read_body<B: Body>(
        &self,
        body: B,
        max_len: usize,
    ) -> Result<Chunks, BodyError<B::Error>> {
        self.read_body_with(body, &ReadOptions::new().max_len(max_len))
            .await
    }

    /// [`read_body`](Pool::read_body) with [`ReadOptions`]: the limit, a
    /// label, and a size hint for a body that declares no length.
    ///
    /// # Errors
    ///
    /// As `read_body`.
    pub async fn read_body_with<B: Body>(
        &self,
        body: B,
        options: &ReadOptions,
    ) -> Result<Chunks, BodyError<B::Error>> {
        read_body_through(&Draw::Pool(self.clone()), body, options).await
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
impl Permit {
    /// [`Pool::read_body`] for an admitted request: the body's chunks draw
    /// on the permit and are never refused (the limit still applies).
    ///
    /// # Errors
    ///
    /// As [`Pool::read_body`], except that admission never refuses.
    pub async fn read_body<B: Body>(
        &self,
        body: B,
        max_len: usize,
    ) -> Result<Chunks, BodyError<B::Error>> {
        self.read_body_with(body, &ReadOptions::new().max_len(max_len))
            .await
    }

    /// [`Pool::read_body_with`] for an admitted request.
    ///
    /// # Errors
    ///
    /// As [`Pool::read_body`], except that admission never refuses.
    pub async fn read_body_with<B: Body>(
        &self,
        body: B,
        options: &ReadOptions,
    ) -> Result<Chunks, BodyError<B::Error>> {
        read_body_through(&self.draw(), body, options).await
    }
}

/// The body reads of `Pool` and `Permit`: reads a body through `draw` with
/// `options`, and records the read (timed, failed or not) once, in the
/// pool's statistics and under the options' label.
async fn read_body_through<B: Body>(
    draw: &Draw,
    body: B,
    options: &ReadOptions,
) -> Result<Chunks, BodyError<B::Error>> {
    let started = Instant::now();
    let mut activity = Activity::default();
    let plan = options.plan(draw.pool());
    let result = fill_from_body(draw, body, options.hint(), plan, &mut activity).await;
    activity.elapsed = started.elapsed();
    activity.outcome = match &result {
        Ok(_) => Outcome::Done,
        Err(e) if e.is_too_large() => Outcome::TooLarge,
        Err(_) => Outcome::Failed,
    };
    let len = result.as_ref().ok().map(Chunks::len);
    options.record(draw.pool(), &activity, len);
    result
}

/// Reads a body into chunks taken through `draw`.
async fn fill_from_body<B: Body>(
    draw: &Draw,
    body: B,
    learned: Option<usize>,
    plan: ChunkPlan,
    activity: &mut Activity,
) -> Result<Chunks, BodyError<B::Error>> {
    let max_len = plan.limit();
    let mut body = pin!(body);
    let declared = body.size_hint();
    if declared.lower() > max_len as u64 {
        return Err(too_large(max_len, Some(declared.lower())));
    }
    let mut sink = Sink {
        draw,
        plan,
        chunks: Vec::new(),
        total: 0,
        next: plan.first(hint(&declared).or(learned)),
    };
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(BodyError::Body)?;
        activity.read_calls += 1;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        while data.has_remaining() {
            let n = sink.put(data.chunk(), activity)?;
            data.advance(n);
            if sink.total > max_len {
                return Err(too_large(max_len, None));
            }
        }
        activity.bytes = sink.total;
    }
    let mut chunks = sink.chunks;
    let pool = draw.pool();
    let cut = shrink_last(pool.size_classes(), &mut chunks, |n| draw.take(n))?;
    Ok(Chunks::from_bufs(pool.clone(), chunks).with_cut_last(cut))
}

/// The declared length as a hint: exact, or a non-zero lower bound.
fn hint(declared: &SizeHint) -> Option<usize> {
    let n = declared.exact().unwrap_or(declared.lower());
    (n > 0).then(|| usize::try_from(n).unwrap_or(usize::MAX))
}

fn too_large<E>(max_len: usize, declared: Option<u64>) -> BodyError<E> {
    BodyError::Pool(Error::TooLarge {
        limit: max_len as u64,
        declared,
    })
}

/// Copies frames into pooled chunks sized by a [`ChunkPlan`].
struct Sink<'a> {
    draw: &'a Draw,
    plan: ChunkPlan,
    chunks: Vec<PooledBuf>,
    total: usize,
    /// The size of the next chunk to take.
    next: usize,
}

impl Sink<'_> {
    /// Copies a non-empty prefix of `data`, never more than one byte past
    /// the limit in all, and returns its length.
    fn put(&mut self, data: &[u8], activity: &mut Activity) -> Result<usize, Error> {
        let budget = self.plan.remaining(self.total);
        let full = self.chunks.last().is_none_or(|c| c.len() == c.capacity());
        if full {
            let chunk = self.draw.take(self.next)?;
            activity.chunks += 1;
            self.chunks.push(chunk);
        }
        let chunk = self.chunks.last_mut().expect("ensured above");
        let n = data.len().min(chunk.capacity() - chunk.len()).min(budget);
        chunk.extend_from_slice(&data[..n]);
        self.total += n;
        if chunk.len() == chunk.capacity() {
            self.next = self.plan.next(self.total);
        }
        // `budget > 0` here (the caller stops once the limit is passed), and
        // the chunk has room, so `n > 0`: the caller's loop progresses.
        debug_assert!(n > 0);
        Ok(n)
    }
}

// === impl ChunksBody (http-body) ===

#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
impl Body for ChunksBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_piece().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "http-body")))]
impl futures_core::Stream for ChunksBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.get_mut().next_piece().map(Ok))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.pieces.len(), Some(self.pieces.len()))
    }
}
