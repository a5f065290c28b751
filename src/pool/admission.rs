//! Admission for the pool: refusable gets that wait in arrival order, and
//! whole requests admitted at once ([`Permit`]). `limits` decides (a
//! reservation or a refusal); this acts on it (trims, samples, emits).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{PoolInner, TrimReason};
use crate::limits::{Reserved, poll_waiting, wait_blocking};
use crate::sync::{Arc, AtomicUsize, Ordering};
use crate::{Error, Pool, PooledBuf};

// === impl PoolInner (admission) ===

impl PoolInner {
    /// Admits `bytes` for a refusable request: reserved at once if they
    /// fit; else the pool frees its idle memory (which counts against the
    /// limit and the budget), takes a fresh sample and looks again once.
    /// Holds nothing while it trims, samples or emits, so an event hook
    /// may call back into the pool.
    pub(crate) fn admit(this: &Arc<PoolInner>, bytes: usize) -> Result<Reserved<'_>, Error> {
        let limits = &this.limits;
        let footprint = this.footprint.load(Ordering::Relaxed);
        if limits.wants_fresh_sample(footprint, bytes) {
            PoolInner::sample_memory(this);
        }
        if let Ok(reserved) = limits.try_reserve(&this.footprint, bytes) {
            return Ok(reserved);
        }
        PoolInner::trim(this, TrimReason::Pressure);
        crate::global::release_idle();
        PoolInner::sample_memory(this);
        limits
            .try_reserve(&this.footprint, bytes)
            .inspect_err(|_| limits.count_refusal())
    }
}

// === impl Pool (admission) ===

impl Pool {
    /// Like [`try_get`](Self::try_get), but a request that admission
    /// refuses (over [`max_in_use_bytes`](crate::PoolBuilder::max_in_use_bytes),
    /// or critical memory pressure) waits up to `timeout` for memory to come
    /// back, in arrival order with other waiters, and is then refused with
    /// [`Error::TimedOut`]. Woken by returns and memory samples, not by
    /// polling in a loop.
    ///
    /// A request that needs several buffers at once (a body, then a frame,
    /// then an output) should ask for all of them with [`admit`](Self::admit)
    /// instead: waiting for each in turn while holding the earlier ones can
    /// leave every thread holding part of a request and waiting for the rest.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = tierpool::Pool::builder().max_in_use_bytes(1 << 20).build();
    /// let held = pool.try_get(1 << 20)?;
    /// let err = pool.get_timeout(4096, Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_refused());
    /// drop(held);
    /// assert!(pool.get_timeout(4096, Duration::from_millis(10)).is_ok());
    /// # Ok::<(), tierpool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] after `timeout`; the allocation errors of
    /// `try_get` at once.
    pub fn get_timeout(&self, min_capacity: usize, timeout: Duration) -> Result<PooledBuf, Error> {
        wait_blocking(&self.inner_arc().limits, min_capacity, timeout, || {
            self.try_get(min_capacity)
        })
    }

    /// [`get_timeout`](Self::get_timeout) as a future, for any async
    /// runtime: resolves when admission lets the request through, in arrival
    /// order with other waiters. It never times out by itself; wrap it in the
    /// runtime's timeout. Dropping it leaves the queue.
    ///
    /// # Errors
    ///
    /// The allocation errors of `try_get`; refusals wait instead.
    pub fn acquire(&self, min_capacity: usize) -> Acquire {
        Acquire {
            waiting: Waiting::new(self),
            min_capacity,
        }
    }

    /// Admits a whole request at once: waits (in arrival order, up to
    /// `timeout`) until `bytes` more fit under the in-use budget and below
    /// critical memory pressure, then sets them aside for the [`Permit`].
    /// What is set aside is `bytes` rounded up as the size classes may round
    /// its buffers ([`SizeClasses::max_rounding`](crate::SizeClasses::max_rounding):
    /// at most 25% more with the default classes), so that admitted requests
    /// never take more than was counted for them.
    /// Buffers taken through the permit are never refused, so a request
    /// admitted this way always completes, and requests that wait hold
    /// nothing: with more threads than the limit fits, they queue instead of
    /// each holding part of a request and waiting for the rest.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = tierpool::Pool::builder().max_in_use_bytes(16 << 20).build();
    /// let body_len = 1 << 20;
    /// // body + decoded frame (3x) + output, admitted together
    /// let permit = pool.admit(5 * body_len, Duration::from_secs(1))?;
    /// let body = permit.get(body_len);
    /// let frame = permit.get(3 * body_len);
    /// let output = permit.get(body_len);
    /// # drop((body, frame, output));
    /// # Ok::<(), tierpool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] after `timeout`; [`Error::OverBudget`] at once if
    /// `bytes` alone is over the budget (it could never fit).
    pub fn admit(&self, bytes: usize, timeout: Duration) -> Result<Permit, Error> {
        let inner = self.inner_arc();
        let aside = self.with_rounding(bytes);
        inner.limits.check_fits(aside)?;
        wait_blocking(&inner.limits, aside, timeout, || self.try_admit(aside))
    }

    /// `bytes` as the size classes may round a request's buffers up.
    fn with_rounding(&self, bytes: usize) -> usize {
        let rounded = (bytes as f64 * self.size_classes().max_rounding()).ceil();
        if rounded >= usize::MAX as f64 {
            usize::MAX
        } else {
            rounded as usize
        }
    }

    /// [`admit`](Self::admit) as a future, for any async runtime. It never
    /// times out by itself; dropping it leaves the queue.
    ///
    /// # Errors
    ///
    /// [`Error::OverBudget`] if `bytes` alone is over the budget.
    pub fn admit_async(&self, bytes: usize) -> AdmitFuture {
        AdmitFuture {
            waiting: Waiting::new(self),
            bytes: self.with_rounding(bytes),
        }
    }

    /// One admission attempt for a permit of `bytes`.
    fn try_admit(&self, bytes: usize) -> Result<Permit, Error> {
        let inner = self.inner_arc();
        let bytes = PoolInner::admit(inner, bytes)?.keep();
        Ok(Permit(Arc::new(PermitState {
            pool: self.clone(),
            remaining: AtomicUsize::new(bytes),
        })))
    }
}

/// Memory set aside for one request by [`Pool::admit`]: everything the
/// request takes through it (buffers, its body with
/// [`read_body`](Permit::read_body), its decoded frames, its output
/// [`writer`](Permit::writer)s) is never refused. What is not used goes
/// back when the permit and every writer made from it are dropped.
#[derive(Debug)]
pub struct Permit(Arc<PermitState>);

/// What a permit and its writers share: the bytes still set aside.
#[derive(Debug)]
pub(crate) struct PermitState {
    pool: Pool,
    /// Bytes still set aside.
    remaining: AtomicUsize,
}

impl PermitState {
    /// A buffer drawn on the permit: never refused; its capacity comes out
    /// of what is set aside, as far as it goes.
    fn get(&self, min_capacity: usize) -> PooledBuf {
        let buf = self.pool.get(min_capacity);
        // Drawn after the allocation, so the memory is never counted as
        // neither set aside nor allocated (only, briefly, as both).
        let mut left = self.remaining.load(Ordering::Relaxed);
        loop {
            let take = left.min(buf.capacity());
            match self.remaining.compare_exchange_weak(
                left,
                left - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.pool.inner_arc().limits.unreserve(take);
                    return buf;
                }
                Err(seen) => left = seen,
            }
        }
    }
}

impl Drop for PermitState {
    fn drop(&mut self) {
        let left = self.remaining.swap(0, Ordering::Relaxed);
        let limits = &self.pool.inner_arc().limits;
        limits.unreserve(left);
        limits.note_return();
    }
}

impl Permit {
    /// A buffer for the admitted request, like [`Pool::get`]: never refused.
    /// Its capacity comes out of what the permit set aside (a request that
    /// takes more than it was admitted for is served all the same).
    ///
    /// # Panics
    ///
    /// As [`Pool::get`].
    pub fn get(&self, min_capacity: usize) -> PooledBuf {
        self.0.get(min_capacity)
    }

    /// Bytes still set aside for this request.
    pub fn remaining(&self) -> usize {
        self.0.remaining.load(Ordering::Relaxed)
    }

    /// The pool the permit draws on.
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    /// A writer for the request's output, like [`Pool::writer`], whose
    /// chunks draw on the permit: never refused. The permit's unused bytes
    /// stay set aside while the writer lives.
    pub fn writer(&self) -> crate::PooledWriter {
        self.writer_with_capacity(0)
    }

    /// [`Pool::writer_with_capacity`] drawing on the permit, as
    /// [`writer`](Self::writer).
    pub fn writer_with_capacity(&self, capacity: usize) -> crate::PooledWriter {
        crate::PooledWriter::new(Draw::Permit(self.0.clone()), capacity)
    }

    /// Where the permit's adapters take their buffers.
    #[cfg_attr(not(feature = "http-body"), allow(dead_code))]
    pub(crate) fn draw(&self) -> Draw {
        Draw::Permit(self.0.clone())
    }
}

/// Where an adapter (a writer, a body read) takes its buffers: the pool,
/// refusably ([`Pool::try_get`]), or an admitted request's permit, never
/// refused.
#[derive(Debug, Clone)]
pub(crate) enum Draw {
    Pool(Pool),
    Permit(Arc<PermitState>),
}

impl Draw {
    /// A buffer of at least `min_capacity` bytes.
    pub(crate) fn take(&self, min_capacity: usize) -> Result<PooledBuf, Error> {
        match self {
            Draw::Pool(pool) => pool.try_get(min_capacity),
            Draw::Permit(permit) => Ok(permit.get(min_capacity)),
        }
    }

    /// The pool the buffers come from.
    pub(crate) fn pool(&self) -> &Pool {
        match self {
            Draw::Pool(pool) => pool,
            Draw::Permit(permit) => &permit.pool,
        }
    }
}

/// A future's place in the queue: its pool and its ticket, given up when
/// the future is dropped.
#[derive(Debug)]
struct Waiting {
    pool: Pool,
    ticket: Option<usize>,
}

impl Waiting {
    fn new(pool: &Pool) -> Waiting {
        Waiting {
            pool: pool.clone(),
            ticket: None,
        }
    }

    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&Pool) -> Result<T, Error>,
    ) -> Poll<Result<T, Error>> {
        let pool = &self.pool;
        poll_waiting(&pool.inner_arc().limits, &mut self.ticket, cx, || {
            attempt(pool)
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.pool.inner_arc().limits.waiters.remove(ticket);
        }
    }
}

/// The future of [`Pool::admit_async`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct AdmitFuture {
    waiting: Waiting,
    bytes: usize,
}

impl Future for AdmitFuture {
    type Output = Result<Permit, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let bytes = this.bytes;
        if this.waiting.ticket.is_none() {
            if let Err(e) = this.waiting.pool.inner_arc().limits.check_fits(bytes) {
                return Poll::Ready(Err(e));
            }
        }
        this.waiting.poll(cx, |pool| pool.try_admit(bytes))
    }
}

/// The future of [`Pool::acquire`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    waiting: Waiting,
    min_capacity: usize,
}

impl Future for Acquire {
    type Output = Result<PooledBuf, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let n = this.min_capacity;
        this.waiting.poll(cx, |pool| pool.try_get(n))
    }
}
