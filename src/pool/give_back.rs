//! The return path past the front cache: spill or reserve, the shared
//! tier, else free.

use super::pool_ref::PoolRef;
use super::*;
// === impl PoolInner: return ===

impl PoolInner {
    /// Takes a returned block back that this thread's front cache did not
    /// take (`PooledBuf`'s `Drop` tries that first, inline). The caller
    /// owns the block and its pool count; on [`Returned::Uncached`] the
    /// caller must drop the count (after this call: it may be the last).
    ///
    /// # Safety
    ///
    /// `this` points to a live pool with the provenance of its `Arc`
    /// (`Arc::as_ptr`), kept alive by the count the caller holds, and
    /// `block` is a block of class `class` of it that the caller gives up.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn give_back(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
        to: ReturnTo,
    ) -> Returned {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        // SAFETY: forwarded from the caller.
        let returned = unsafe { PoolInner::give_back_slow(this, block, class, to) };
        // Memory came back (queued, freed or cached): wake a waiter, out of
        // every thread cache's flag.
        pool.limits.note_return();
        returned
    }

    /// A return that the thread cache did not take as it stood: spill or
    /// reserve and retry, else the shared tier, else free.
    ///
    /// # Safety
    ///
    /// As [`give_back`](Self::give_back).
    #[inline]
    pub(super) unsafe fn give_back_slow(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
        to: ReturnTo,
    ) -> Returned {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        let capacity = pool.info[class].capacity;
        let mut freed_full = 0;
        let reason = if pool.closed.load(Ordering::Relaxed) {
            DropReason::PoolClosed
        } else if pool.limits.is_critical() {
            DropReason::Pressure
        } else {
            if pool.info[class].depth > 0 && to == ReturnTo::Class {
                // SAFETY: forwarded from the caller.
                let kept = unsafe { PoolInner::put_with_room(this, block, class, &mut freed_full) };
                if let Some(kept) = kept {
                    pool.report_freed_full(capacity, freed_full);
                    return kept;
                }
            }
            pool.counters.class[class]
                .returns
                .fetch_add(1, Ordering::Relaxed);
            if pool.retention.try_reserve(capacity) {
                match pool.stash_to(block, class, to) {
                    Ok(()) => {
                        pool.report_freed_full(capacity, freed_full);
                        return Returned::Uncached;
                    }
                    Err(_) => pool.retention.unreserve(capacity),
                }
            }
            pool.counters.class[class]
                .dropped_full
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller gave this block up.
            unsafe { pool.free_memory(block, class) };
            pool.report_freed_full(capacity, freed_full);
            pool.events.emit(Event::Dropped {
                capacity,
                reason: DropReason::PoolFull,
            });
            return Returned::Uncached;
        };
        pool.counters.class[class]
            .returns
            .fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller gave this block up.
        unsafe { pool.free_memory(block, class) };
        pool.events.emit(Event::Dropped { capacity, reason });
        Returned::Uncached
    }

    /// Puts a block into this thread's cache after making room: spilling
    /// the oldest batch to the shared tier when full, reserving credit when
    /// short. `None` when there is no cache to use or the budget is spent.
    ///
    /// # Safety
    ///
    /// As [`give_back`](Self::give_back).
    pub(super) unsafe fn put_with_room(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
        freed_full: &mut usize,
    ) -> Option<Returned> {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        // Without a handle at hand, a cache is made through the block's
        // count.
        if !thread_cache::has_cache(pool.slot, pool.id) {
            // SAFETY: `this` came from `arc_ptr` and the caller's block
            // holds a count across the call.
            let handle = unsafe { PoolRef::upgrade(this) };
            if !PoolInner::ensure_cache(&handle) {
                return None;
            }
        }
        let info = pool.info[class];
        let mut spilled = 0usize;
        let put = thread_cache::with_cache(pool.slot, pool.id, |cache| {
            if cache.closed {
                return false;
            }
            if cache.put(class, block) {
                return true;
            }
            // Full: the oldest batch goes where every thread can use it.
            if cache.is_full(class) {
                cache.take_oldest(class, info.batch, |old| {
                    spilled += 1;
                    if let Err(old) = pool.stash(old, class) {
                        // SAFETY: handed back by the queue: ours.
                        unsafe { pool.free_idle(old, class) };
                        *freed_full += 1;
                    }
                });
            }
            // Short of credit: reserve a batch's worth, or one buffer's.
            if cache.credit < info.capacity {
                let batch = info.capacity.saturating_mul(info.batch);
                if pool.retention.try_reserve(batch) {
                    cache.credit += batch;
                } else if pool.retention.try_reserve(info.capacity) {
                    cache.credit += info.capacity;
                }
            }
            pool.cap_credit(cache);
            cache.put(class, block)
        })?;
        // Spilled blocks owned a count each; queued or freed, they own none
        // now. The returned block's count keeps the pool alive meanwhile:
        // it moved into the cache, or stays with the caller.
        // SAFETY: `spilled` counts owned by blocks that no longer hold them,
        // and at least one other count (the returned block's) is alive.
        unsafe { PoolRef::drop_many(this, spilled) };
        if put { Some(Returned::Cached) } else { None }
    }

    /// Gives a thread cache's credit past `credit_limit` back to the
    /// retention budget, keeping half the limit. Run on the slow paths of
    /// gets and returns alike: a thread that only takes, or only returns,
    /// would otherwise hold budget that no idle block uses, until the
    /// budget ran out for everyone.
    pub(super) fn cap_credit(&self, cache: &mut CacheState) {
        if cache.credit > self.credit_limit {
            let keep = self.credit_limit / 2;
            self.retention.unreserve(cache.credit - keep);
            cache.credit = keep;
        }
    }

    /// Emits the `Dropped` events of spilled blocks the shared tier had no
    /// room for.
    pub(super) fn report_freed_full(&self, capacity: usize, n: usize) {
        if n > 0 && self.events.enabled() {
            for _ in 0..n {
                self.events.emit(Event::Dropped {
                    capacity,
                    reason: DropReason::PoolFull,
                });
            }
        }
    }

    /// Frees an oversize block. The caller drops its pool count afterwards.
    pub(crate) fn give_back_oversize(&self, block: NonNull<u8>, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        // SAFETY: the caller owned this block of `size` bytes and gives it up.
        if unsafe { mem::free(block, size) } {
            self.counters
                .released_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
        }
        self.counters.oversize_returned(size);
        self.limits.note_return();
        self.events.emit(Event::Dropped {
            capacity: size,
            reason: DropReason::Oversize,
        });
    }

    /// Counts a block that leaves the pool through `into_vec`.
    pub(crate) fn detach(&self, class: u32, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        self.limits.note_return();
        if class == OVERSIZE {
            self.counters.oversize_returned(size);
        } else {
            self.counters.class[class as usize]
                .detached
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
