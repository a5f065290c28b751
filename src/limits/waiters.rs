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
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Limits;
use crate::Error;
use crate::sync::{AtomicUsize, Mutex, Ordering};

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
    /// Requests in the queue now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

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
    pub(crate) fn remove(&self, ticket: usize) {
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
pub(crate) fn wait_blocking<T>(
    limits: &Limits,
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
pub(crate) fn poll_waiting<T>(
    limits: &Limits,
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
