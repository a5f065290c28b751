//! Trimming: the idle tick, the full trim, and shrinking to a lowered
//! limit; and what the trimmer thread (`crate::trimmer`) runs for a pool.

use std::ptr::NonNull;

use super::{PoolInner, PoolRef, arc_ptr};
use crate::event::{Event, TrimReason};
use crate::sync::{Arc, Ordering};
use crate::tier::thread_cache;
#[cfg(not(tierpool_loom))]
use crate::trimmer::Scheduled;

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
    #[cfg_attr(tierpool_loom, allow(dead_code))]
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

#[cfg(not(tierpool_loom))]
impl Scheduled for PoolInner {
    fn run(self: Arc<Self>, tick: bool, sample: bool) {
        if sample {
            PoolInner::sample_memory(&self);
        }
        if tick {
            PoolInner::tick(&self);
        }
    }

    /// The after-tick hook: the pool's metrics, outside the fork gate (the
    /// recorder is the application's code, with locks of its own).
    fn after_tick(self: Arc<Self>) {
        #[cfg(feature = "metrics")]
        self.publish_figures();
    }
}

/// Puts a pool on the trimmer's schedule, if it has a trim interval or a
/// memory limit to sample.
pub(super) fn schedule(pool: &Arc<PoolInner>) {
    crate::trimmer::schedule(pool, pool.trim_interval, pool.limits.sample_interval());
}
