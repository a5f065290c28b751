//! Trimming: the idle tick, the full trim, shrinking to a lowered limit,
//! and the one background thread that drives the ticks of every pool.
//!
//! # The trimmer thread
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

use std::ptr::NonNull;

use crate::event::{Event, TrimReason};
use crate::pool::{PoolInner, PoolRef, arc_ptr};
use crate::sync::{Arc, Ordering};
use crate::tier::thread_cache;

/// What one trim pass freed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Freed {
    pub(crate) buffers: usize,
    pub(crate) bytes: usize,
}

// === impl PoolInner (trimming) ===

impl PoolInner {
    /// Frees an idle block as trimmed: its memory, its reservation, and one
    /// count in its class's figures and in `freed`. A cached block's pool
    /// count is the caller's to drop.
    ///
    /// # Safety
    ///
    /// As [`PoolInner::free_idle`].
    pub(crate) unsafe fn trim_block(&self, block: NonNull<u8>, class: usize, freed: &mut Freed) {
        // SAFETY: forwarded from the caller.
        unsafe { self.free_idle(block, class) };
        self.counters.class[class]
            .trimmed
            .fetch_add(1, Ordering::Relaxed);
        freed.buffers += 1;
        freed.bytes += self.info[class].capacity;
    }

    /// Ends a trim pass, out of every thread cache's flag: counts it, wakes
    /// an admission waiter if memory was freed, and emits its event, so
    /// statistics and events always agree.
    pub(crate) fn finish_pass(&self, freed: Freed, reason: TrimReason) {
        self.counters.trimmed(freed.bytes);
        if freed.bytes > 0 {
            self.limits.note_return();
        }
        self.events.emit(Event::Trimmed {
            buffers: freed.buffers,
            bytes: freed.bytes,
            reason,
        });
    }

    /// Frees every idle block in every tier and every thread cache's credit.
    pub(crate) fn trim(this: &Arc<PoolInner>, reason: TrimReason) {
        let mut freed = Freed::default();
        let caches = this.registry.lock().clone();
        PoolInner::for_each_open_cache(&caches, |state| {
            PoolInner::empty_cache(this, state, &mut freed);
        });
        drop(caches);
        this.empty_shared(&mut freed);
        this.finish_pass(freed, reason);
    }

    /// One idle tick: frees every block that stayed idle since the last
    /// tick, in the shared tier and in every thread cache, down to
    /// `min_retained`, and takes back the credit of caches that saw no
    /// traffic all interval. Driven by the trimmer thread every
    /// `trim_interval`, and directly by tests (the tick is the clock).
    pub(crate) fn tick(this: &Arc<PoolInner>) {
        let caches = this.registry.lock().clone();
        // What may be freed before the floor: the idle bytes held now.
        let mut idle: usize = this
            .shared
            .iter()
            .zip(this.info.iter())
            .map(|(tier, info)| tier.len() * info.capacity)
            .sum::<usize>()
            + this.large.idle_bytes();
        // Caches whose owner is inside right now are in use, not idle: the
        // tick skips them (owner patience 1) and holds the rest for both
        // passes. Another pass over a cache (`stats()`) lasts microseconds:
        // a hundred tries wait it out, and do not stall every tick on a
        // cache that a thread lost in a `fork` holds.
        let mut guards = thread_cache::lock_all(&caches, 100, 1);
        for guard in &mut guards {
            guard.with(|state| {
                if !state.closed {
                    idle += state.classes().iter().map(|c| c.bytes()).sum::<usize>();
                }
            });
        }
        let budget = idle.saturating_sub(this.min_retained);
        let mut freed = Freed::default();
        for (class, tier) in this.shared.iter().enumerate() {
            let capacity = this.info[class].capacity;
            for _ in 0..tier.idle_since_tick() {
                if budget < freed.bytes + capacity {
                    break;
                }
                let Some(block) = tier.pop() else { break };
                // SAFETY: just popped from the shared tier.
                unsafe { this.trim_block(block, class, &mut freed) };
            }
            tier.mark_tick();
        }
        // Idle pages of the large tier that no request needed all interval.
        // Hot blocks join the runs first: one returned before this tick
        // and not taken since is idle from now on, and goes at the next
        // tick unless a request uses it.
        this.large.drain_hot();
        let unused = this.large.idle_since_tick();
        this.release_large(unused.min(budget - freed.bytes), &mut freed);
        // Each cache is let go as soon as it is done, so its owner is
        // locked out only while its own blocks are freed.
        for mut guard in guards {
            guard.with(|state| {
                if state.closed {
                    return;
                }
                let before = freed.buffers;
                for class in 0..this.info.len() {
                    let capacity = this.info[class].capacity;
                    let n = state.idle(class).min((budget - freed.bytes) / capacity);
                    state.take_oldest(class, n, |block| {
                        // SAFETY: just taken out of the cache; its count is
                        // dropped below.
                        unsafe { this.trim_block(block, class, &mut freed) };
                    });
                }
                if state.ops() == state.ops_at_tick {
                    // No traffic all interval: the credit goes back too.
                    this.retention.unreserve(std::mem::take(&mut state.credit));
                }
                state.mark_tick();
                // SAFETY: the freed blocks' counts; `this` is another.
                unsafe { PoolRef::drop_many(arc_ptr(this), freed.buffers - before) };
            });
        }
        drop(caches);
        this.finish_pass(freed, TrimReason::Idle);
    }

    /// Frees idle blocks (the largest classes first) and thread caches'
    /// credit until no more is reserved than the retention limit in force:
    /// what memory pressure asks for.
    pub(crate) fn shrink_to_limit(this: &Arc<PoolInner>) {
        let limit = this.retention.limit();
        let over = || this.retention.reserved() > limit;
        if !over() {
            return;
        }
        let mut freed = Freed::default();
        let caches = this.registry.lock().clone();
        // Credit first: it holds no memory, but it holds budget.
        PoolInner::for_each_open_cache(&caches, |state| {
            this.retention.unreserve(std::mem::take(&mut state.credit));
        });
        // The large tier's idle pages first: the smallest runs, the least
        // reusable.
        this.large.drain_hot();
        this.release_large(this.retention.reserved().saturating_sub(limit), &mut freed);
        for (class, tier) in this.shared.iter().enumerate().rev() {
            while over() {
                let Some(block) = tier.pop() else { break };
                // SAFETY: just popped from the shared tier.
                unsafe { this.trim_block(block, class, &mut freed) };
            }
        }
        PoolInner::for_each_open_cache(&caches, |state| {
            if over() {
                PoolInner::empty_cache(this, state, &mut freed);
            }
        });
        drop(caches);
        this.finish_pass(freed, TrimReason::Pressure);
    }
}

/// Puts a pool on the trimmer's schedule (if it has a trim interval or a
/// memory limit to sample). Nothing under loom or miri: their tests drive
/// the ticks themselves, and a thread would outlive miri's main thread.
pub(crate) fn schedule(pool: &Arc<PoolInner>) {
    #[cfg(not(any(tierpool_loom, miri)))]
    thread::schedule(pool);
    #[cfg(any(tierpool_loom, miri))]
    let _ = pool;
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

    use crate::pool::PoolInner;
    use crate::sync::Arc;

    /// A pool on the schedule.
    struct Entry {
        pool: Weak<PoolInner>,
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

    pub(super) fn schedule(pool: &Arc<PoolInner>) {
        // Every process with a pool gets the fork handlers, trimmer or not.
        ATFORK.call_once(register_atfork);
        let sample = pool.limits.sample_interval();
        if pool.trim_interval.is_zero() && sample.is_none() {
            return;
        }
        let now = Instant::now();
        let interval = pool.trim_interval;
        lock().push(Entry {
            pool: Arc::downgrade(pool),
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
        let mut due: Vec<(Arc<PoolInner>, bool, bool)> = Vec::new();
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
            // default interval.
            if crate::global::has_idle() || next_global.is_some() {
                let at =
                    *next_global.get_or_insert_with(|| now + crate::Pool::DEFAULT_TRIM_INTERVAL);
                if at <= now {
                    let _ = std::panic::catch_unwind(crate::global::tick);
                    next_global =
                        crate::global::has_idle().then(|| now + crate::Pool::DEFAULT_TRIM_INTERVAL);
                }
                if let Some(at) = next_global {
                    earliest = Some(at);
                }
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
                        if sample {
                            PoolInner::sample_memory(&pool);
                        }
                        if tick {
                            PoolInner::tick(&pool);
                        }
                    }));
                    drop(gate);
                    // Outside the gate: the recorder is the application's
                    // code, with locks of its own.
                    #[cfg(feature = "metrics")]
                    if tick {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            crate::ext::metrics::publish(&pool);
                        }));
                    }
                }
                // Likewise the room a burst of due pools took.
                due.shrink_to(8);
                schedule = lock();
                continue;
            }
            schedule = match earliest {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    WAKE.wait_timeout(schedule, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => WAKE.wait(schedule).unwrap_or_else(|e| e.into_inner()),
            };
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
