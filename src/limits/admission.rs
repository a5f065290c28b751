//! Admission control: requests that wait for memory, in arrival order.
//!
//! A refusable request (`try_get`) is refused at once; `get_timeout` and
//! `acquire` join a FIFO queue instead and are served in arrival order: only
//! the head of the queue tries again, so a large request is not starved by
//! a stream of small ones, and a new request never overtakes the queue. The
//! head is woken when the pool frees or queues memory (a return that leaves
//! a thread cache, a free, a trim) and after every memory sample; a
//! blocking waiter also re-checks every [`RECHECK`] in case memory came back
//! in a way the pool cannot see (another process, a thread cache return).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::{Error, Pool, PooledBuf};

/// The longest a blocking waiter sleeps before looking again.
#[cfg_attr(tierpool_loom, allow(dead_code))]
const RECHECK: Duration = Duration::from_millis(50);

/// Requests waiting for memory, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// `queue.len()`, readable without the lock (the return path checks it).
    len: AtomicUsize,
    queue: Mutex<VecDeque<Waiter>>,
    next_ticket: AtomicUsize,
}

#[derive(Debug)]
struct Waiter {
    ticket: usize,
    wake: Wake,
}

#[derive(Debug, Clone)]
enum Wake {
    Thread(std::thread::Thread),
    Task(Waker),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(w) => w.wake_by_ref(),
        }
    }
}

impl Waiters {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn enqueue(&self, wake: Wake) -> usize {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue.lock();
        queue.push_back(Waiter { ticket, wake });
        self.len.store(queue.len(), Ordering::Release);
        ticket
    }

    fn is_head(&self, ticket: usize) -> bool {
        self.queue
            .lock()
            .front()
            .is_some_and(|w| w.ticket == ticket)
    }

    fn set_waker(&self, ticket: usize, waker: &Waker) {
        let mut queue = self.queue.lock();
        if let Some(w) = queue.iter_mut().find(|w| w.ticket == ticket) {
            match &mut w.wake {
                Wake::Task(old) if old.will_wake(waker) => {}
                other => *other = Wake::Task(waker.clone()),
            }
        }
    }

    /// Leaves the queue; the new head (if any) is woken to try.
    fn remove(&self, ticket: usize) {
        let next = {
            let mut queue = self.queue.lock();
            let was_head = queue.front().is_some_and(|w| w.ticket == ticket);
            queue.retain(|w| w.ticket != ticket);
            self.len.store(queue.len(), Ordering::Release);
            was_head
                .then(|| queue.front().map(|w| w.wake.clone()))
                .flatten()
        };
        // Woken outside the lock: an executor may poll the woken future
        // right here, and it takes the lock again.
        if let Some(wake) = next {
            wake.wake();
        }
    }

    /// Wakes the head of the queue to try again.
    pub(crate) fn wake_head(&self) {
        let head = self.queue.lock().front().map(|w| w.wake.clone());
        // Outside the lock, as in `remove`.
        if let Some(wake) = head {
            wake.wake();
        }
    }
}

/// Leaves the queue when dropped, on every path out (a panic included).
struct Ticket<'a> {
    waiters: &'a Waiters,
    ticket: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.waiters.remove(self.ticket);
    }
}

/// Waits in the queue, as the head, until `attempt` stops being refused
/// or `timeout` passes.
fn wait_blocking<T>(
    limits: &super::Limits,
    requested: usize,
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let waiters = &limits.waiters;
    if waiters.is_empty() {
        match attempt() {
            Err(e) if e.is_refused() => {}
            other => return other,
        }
    }
    let mut clock = Clock::start(timeout);
    limits.count_wait();
    let ticket = Ticket {
        waiters,
        ticket: waiters.enqueue(Wake::Thread(std::thread::current())),
    };
    loop {
        if waiters.is_head(ticket.ticket) {
            match attempt() {
                Err(e) if e.is_refused() => {}
                other => return other,
            }
        }
        if clock.expired() {
            return Err(Error::TimedOut {
                requested,
                waited: clock.waited(),
            });
        }
        clock.sleep();
    }
}

/// A blocking waiter's sense of time: the wall clock, parked between
/// checks; under loom, which cannot model time, a few rounds of yielding
/// (the timeout then races the wake-ups in every order loom explores).
struct Clock {
    start: Instant,
    #[cfg_attr(tierpool_loom, allow(dead_code))]
    deadline: Option<Instant>,
    #[cfg(tierpool_loom)]
    rounds: u32,
}

impl Clock {
    fn start(timeout: Duration) -> Clock {
        let start = Instant::now();
        Clock {
            start,
            deadline: start.checked_add(timeout),
            #[cfg(tierpool_loom)]
            rounds: 0,
        }
    }

    fn expired(&mut self) -> bool {
        #[cfg(tierpool_loom)]
        {
            self.rounds += 1;
            self.rounds > 2
        }
        #[cfg(not(tierpool_loom))]
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn waited(&self) -> Duration {
        self.start.elapsed()
    }

    /// Until woken, or [`RECHECK`], or the deadline, whichever is first.
    fn sleep(&self) {
        #[cfg(tierpool_loom)]
        crate::sync::yield_now();
        #[cfg(not(tierpool_loom))]
        {
            let left = self
                .deadline
                .map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()));
            std::thread::park_timeout(left.min(RECHECK));
        }
    }
}

/// One poll of a waiting future: joins the queue on the first refusal,
/// tries again as the head, leaves the queue when done.
fn poll_waiting<T>(
    limits: &super::Limits,
    ticket: &mut Option<usize>,
    cx: &mut Context<'_>,
    mut attempt: impl FnMut() -> Result<T, Error>,
) -> Poll<Result<T, Error>> {
    let waiters = &limits.waiters;
    let mine = match *ticket {
        Some(mine) => {
            waiters.set_waker(mine, cx.waker());
            mine
        }
        None => {
            if waiters.is_empty() {
                match attempt() {
                    Err(e) if e.is_refused() => {}
                    other => return Poll::Ready(other),
                }
            }
            limits.count_wait();
            let mine = waiters.enqueue(Wake::Task(cx.waker().clone()));
            *ticket = Some(mine);
            mine
        }
    };
    if waiters.is_head(mine) {
        match attempt() {
            Err(e) if e.is_refused() => {}
            other => {
                *ticket = None;
                waiters.remove(mine);
                return Poll::Ready(other);
            }
        }
    }
    Poll::Pending
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
        inner.limits.admit_aside(inner, bytes)?;
        Ok(Permit {
            pool: self.clone(),
            remaining: AtomicUsize::new(bytes),
        })
    }
}

/// Memory set aside for one request by [`Pool::admit`]: buffers taken
/// through it are never refused. What is not used goes back when it drops.
#[derive(Debug)]
pub struct Permit {
    pool: Pool,
    /// Bytes still set aside.
    remaining: AtomicUsize,
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
                    self.pool.inner_arc().limits.shrink_aside(take);
                    return buf;
                }
                Err(seen) => left = seen,
            }
        }
    }

    /// Bytes still set aside for this request.
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let left = self.remaining.swap(0, Ordering::Relaxed);
        let limits = &self.pool.inner_arc().limits;
        limits.shrink_aside(left);
        limits.note_return();
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
