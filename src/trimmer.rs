//! The trimmer: one background thread that drives the idle ticks and
//! memory samples of every pool (and the global allocator's tier), and the
//! fork handlers that keep its schedule's lock out of a `fork`.
//!
//! Started on the first pool that needs it, named `tierpool-trimmer`. It
//! holds pools weakly, so a dropped pool simply leaves its schedule; it
//! sleeps until the next pool is due (trim tick or memory sample) and never
//! keeps the process alive. It cannot be stopped by a pool: every tick runs
//! under `catch_unwind`, and event callbacks are caught where they are
//! called. After a `fork`, the child has no trimmer thread; the first slow
//! path of any pool in the child starts a new one, and the schedule's lock
//! is never held across a fork (`pthread_atfork`), so the child cannot find
//! it locked by a thread that does not exist there.
//!
//! It knows pools only as [`Scheduled`]: what a tick does is the pool's.

use std::time::Duration;

use crate::sync::Arc;

/// What the trimmer drives: a pool, held weakly.
pub(crate) trait Scheduled: Send + Sync + 'static {
    /// The work that is due (a tick, a memory sample, or both), run inside
    /// the fork gate and under `catch_unwind`.
    fn run(self: std::sync::Arc<Self>, tick: bool, sample: bool);

    /// The after-tick hook, run outside the fork gate and under
    /// `catch_unwind` (the pool publishes its metrics here).
    fn after_tick(self: std::sync::Arc<Self>);
}

/// Puts `pool` on the schedule: a tick every `interval` (none if zero),
/// a sample every `sample`. Nothing without either; nothing under loom or
/// miri, whose tests drive the ticks themselves (a thread would outlive
/// miri's main thread).
#[cfg(not(tierpool_loom))]
pub(crate) fn schedule<T: Scheduled>(pool: &Arc<T>, interval: Duration, sample: Option<Duration>) {
    #[cfg(not(miri))]
    thread::schedule(pool, interval, sample);
    #[cfg(miri)]
    let _ = (pool, interval, sample);
}

/// Under loom the model drives the ticks; pools are not `Scheduled` (the
/// trimmer's `Arc` is std's, a model's is loom's).
#[cfg(tierpool_loom)]
pub(crate) fn schedule<T>(pool: &Arc<T>, interval: Duration, sample: Option<Duration>) {
    let _ = (pool, interval, sample);
}

/// Wakes the trimmer to drop a freed pool's schedule entry now (its `Weak`
/// keeps the pool's allocation until then), not a trim interval later.
pub(crate) fn forget_soon() {
    #[cfg(not(any(tierpool_loom, miri)))]
    thread::forget_soon();
}

/// Restarts the trimmer thread if this process has none although pools
/// are scheduled (a forked child). One atomic load when it runs.
#[inline]
pub(crate) fn ensure_running() {
    #[cfg(not(any(tierpool_loom, miri)))]
    thread::ensure_running();
}

#[cfg(not(any(tierpool_loom, miri)))]
mod thread {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex, MutexGuard, Weak};
    use std::time::{Duration, Instant};

    use super::Scheduled;
    use crate::sync::Arc;

    /// A pool on the schedule.
    struct Entry {
        pool: Weak<dyn Scheduled>,
        interval: Duration,
        /// How often to sample the pool's memory (fixed when it is built).
        sample: Option<Duration>,
        next_tick: Option<Instant>,
        next_sample: Option<Instant>,
    }

    static SCHEDULE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    static WAKE: Condvar = Condvar::new();
    /// Whether this process has a trimmer thread (cleared in a fork child).
    static RUNNING: AtomicBool = AtomicBool::new(false);
    static ATFORK: std::sync::Once = std::sync::Once::new();

    fn lock() -> MutexGuard<'static, Vec<Entry>> {
        // A tick never runs under this lock, so poisoning can only come
        // from a bug in this file; the data stays consistent either way.
        SCHEDULE.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn schedule<T: Scheduled>(
        pool: &Arc<T>,
        interval: Duration,
        sample: Option<Duration>,
    ) {
        // Every process with a pool gets the fork handlers, trimmer or not.
        ATFORK.call_once(register_atfork);
        if interval.is_zero() && sample.is_none() {
            return;
        }
        let now = Instant::now();
        let weak: Weak<T> = Arc::downgrade(pool);
        lock().push(Entry {
            pool: weak,
            interval,
            sample,
            next_tick: (!interval.is_zero())
                .then(|| now.checked_add(interval))
                .flatten(),
            next_sample: sample.and_then(|s| now.checked_add(s)),
        });
        WAKE.notify_one();
        ensure_running();
    }

    pub(super) fn forget_soon() {
        // No lock: this runs in a pool's `Drop`, wherever that happens.
        WAKE.notify_one();
    }

    #[inline]
    pub(super) fn ensure_running() {
        if !RUNNING.load(Ordering::Acquire) {
            start();
        }
    }

    #[cold]
    fn start() {
        // A program whose only use of the crate is the global allocator
        // registers the fork handlers here.
        ATFORK.call_once(register_atfork);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return; // another thread just started it
        }
        let spawned = std::thread::Builder::new()
            .name("tierpool-trimmer".into())
            .spawn(run);
        if let Err(e) = spawned {
            RUNNING.store(false, Ordering::Release);
            // Without the thread the pools still work; they just do not
            // shrink on their own (`Pool::trim` still does). The next slow
            // path tries again.
            eprintln!("tierpool: could not start the trimmer thread: {e}");
        }
    }

    fn run() {
        let mut due: Vec<(Arc<dyn Scheduled>, bool, bool)> = Vec::new();
        let mut next_global: Option<Instant> = None;
        let mut schedule = lock();
        loop {
            let now = Instant::now();
            schedule.retain(|e| e.pool.strong_count() > 0);
            // Room left by dropped pools goes back too: how many pools a
            // burst of creations left on the schedule (which depends on
            // when this thread got to run) must not stay paid for.
            let live = schedule.len();
            if schedule.capacity() > 4 * live.max(4) {
                schedule.shrink_to(2 * live);
            }
            let mut earliest: Option<Instant> = None;
            // The global allocator's tier, once it exists, ticks on the
            // default interval for as long as the process lives. (Not only
            // while it holds idle pages: its blocks come back on the
            // program's threads, inside `dealloc`, which cannot wake this
            // thread safely, so a tier that held none at one tick would
            // keep what it got after it until some pool woke the thread.)
            if crate::global::exists() {
                let at =
                    *next_global.get_or_insert_with(|| now + crate::Pool::DEFAULT_TRIM_INTERVAL);
                if at <= now {
                    let _ = std::panic::catch_unwind(crate::global::tick);
                    next_global = Some(now + crate::Pool::DEFAULT_TRIM_INTERVAL);
                }
                earliest = next_global;
            }
            for entry in schedule.iter_mut() {
                let tick = entry.next_tick.is_some_and(|t| t <= now);
                let sample = entry.next_sample.is_some_and(|t| t <= now);
                if tick || sample {
                    if let Some(pool) = entry.pool.upgrade() {
                        due.push((pool, tick, sample));
                    }
                }
                // Late? Skip the missed ticks: the next one is an interval
                // from now, never a catch-up loop.
                if tick {
                    entry.next_tick = now.checked_add(entry.interval);
                }
                if sample {
                    // Never a temporary upgrade here: dropping the last
                    // count of a pool under this lock would take the fork
                    // gate inside it.
                    entry.next_sample = entry.sample.and_then(|s| now.checked_add(s));
                }
                for t in [entry.next_tick, entry.next_sample].into_iter().flatten() {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
            }
            if !due.is_empty() {
                drop(schedule);
                for (pool, tick, sample) in due.drain(..) {
                    // Nothing a pool does may stop the thread: callbacks
                    // are caught where they are called, and this catches
                    // the rest.
                    // Inside the fork gate: a fork waits for the tick to end,
                    // so no cache flag is held across it.
                    let gate = crate::sys::fork::fork_gate();
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        Arc::clone(&pool).run(tick, sample);
                    }));
                    drop(gate);
                    if tick {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pool.after_tick();
                        }));
                    }
                }
                // Likewise the room a burst of due pools took.
                due.shrink_to(8);
                schedule = lock();
                continue;
            }
            // Nothing due: look again after an interval all the same. The
            // global allocator's tier may appear meanwhile, and its first
            // blocks come back inside `dealloc`, which does not wake this
            // thread (see above).
            let wait = earliest.map_or(crate::Pool::DEFAULT_TRIM_INTERVAL, |at| {
                at.saturating_duration_since(Instant::now())
            });
            schedule = WAKE
                .wait_timeout(schedule, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // --- fork ---

    std::thread_local! {
        /// The fork gate and the schedule's guard, held by the forking
        /// thread from the prepare handler to the parent's and the child's
        /// handlers.
        static FORK_GUARD: std::cell::RefCell<Option<ForkGuards>> =
            const { std::cell::RefCell::new(None) };
    }

    /// What the forking thread holds across the fork; the schedule drops
    /// before the gate.
    struct ForkGuards {
        schedule: MutexGuard<'static, Vec<Entry>>,
        gate: crate::sys::fork::ClosedGate,
        /// The global allocator's books, if it is in use.
        global: Option<crate::tier::large::ForkHold>,
    }

    extern "C" fn before_fork() {
        // The gate first: it waits for every lock of the crate to be let go
        // (a tick holds a share of it), then nothing can take one.
        let gate = crate::sys::fork::close_fork_gate();
        let schedule = lock();
        // Last: a holder of the global allocator's books never waits for
        // the gate or the schedule, so taking them after both is safe.
        let global = crate::global::hold_for_fork();
        FORK_GUARD.with(|g| {
            *g.borrow_mut() = Some(ForkGuards {
                schedule,
                gate,
                global,
            })
        });
    }

    extern "C" fn after_fork_parent() {
        if let Some(guards) = FORK_GUARD.with(|g| g.borrow_mut().take()) {
            drop(guards.global);
            drop(guards.schedule);
            crate::sys::fork::open_in_parent(guards.gate);
        }
    }

    extern "C" fn after_fork_child() {
        // The trimmer thread did not come along; the next slow path starts
        // a new one, which finds the schedule as the parent had it.
        RUNNING.store(false, Ordering::Release);
        if let Some(guards) = FORK_GUARD.with(|g| g.borrow_mut().take()) {
            drop(guards.global);
            drop(guards.schedule);
            crate::sys::fork::open_in_child(guards.gate);
        }
    }

    fn register_atfork() {
        #[cfg(unix)]
        {
            // SAFETY: three `extern "C"` functions with no arguments, valid
            // for the life of the process; `pthread_atfork` only records them.
            let rc = unsafe {
                libc::pthread_atfork(
                    Some(before_fork),
                    Some(after_fork_parent),
                    Some(after_fork_child),
                )
            };
            debug_assert_eq!(rc, 0);
        }
    }
}
