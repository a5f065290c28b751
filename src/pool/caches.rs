//! The pool's thread caches: made on first use, flushed at thread exit,
//! closed with the pool.

use super::pool_ref::PoolRef;
use super::*;
// === impl PoolInner: caches ===

impl PoolInner {
    /// Closes the pool (the last handle went): returns free from now on,
    /// every thread cache is emptied and closed, the shared tier freed.
    pub(super) fn close(this: &Arc<PoolInner>) {
        this.closed.store(true, Ordering::SeqCst);
        let caches = std::mem::take(&mut *this.registry.lock());
        let mut freed = Freed::default();
        // A cache whose flag cannot be had is held by a thread that no
        // longer exists (a fork child): its blocks keep the pool alive, and
        // nothing else can be done.
        //
        // A cache skipped here (its owner inside it past our patience, a
        // trim pass holding it, or no heavy barrier) stays open and keeps
        // the count it owns: the pool lives on until that cache's thread
        // flushes it at exit or through `flush_thread_cache`.
        let mut closed = 0;
        PoolInner::for_each_open_cache(&caches, |state| {
            PoolInner::empty_cache(this, state, &mut freed);
            this.counters.absorb(state);
            state.closed = true;
            closed += 1;
        });
        drop(caches);
        this.empty_shared(&mut freed);
        this.finish_pass(freed, TrimReason::PoolClosed);
        // SAFETY: the counts of the caches closed above, which they owned
        // (`ensure_cache`); `this` is the closing handle's, another.
        unsafe { PoolRef::drop_many(arc_ptr(this), closed) };
    }

    /// Runs `f` on every open cache of `caches`, all entered together with
    /// one heavy barrier ([`thread_cache::lock_all`]) and each let go once
    /// done. A cache that cannot be entered within [`LOCK_PATIENCE`] tries
    /// (held by a thread lost in a `fork`) is skipped.
    pub(crate) fn for_each_open_cache(
        caches: &[Arc<ThreadCache>],
        mut f: impl FnMut(&mut CacheState),
    ) {
        for mut guard in thread_cache::lock_all(caches, LOCK_PATIENCE, LOCK_PATIENCE) {
            guard.with(|state| {
                if !state.closed {
                    f(state);
                }
            });
        }
    }

    /// Frees every block of a locked cache as trimmed and gives its credit
    /// back.
    pub(crate) fn empty_cache(this: &Arc<PoolInner>, state: &mut CacheState, freed: &mut Freed) {
        let before = freed.buffers;
        state.drain(|class, block| {
            // SAFETY: just taken out of the cache; it owned a count, which
            // `drop_many` below gives up.
            unsafe { this.trim_block(block, class, freed) };
        });
        this.retention.unreserve(std::mem::take(&mut state.credit));
        // SAFETY: the freed blocks' counts; `this` is another.
        unsafe { PoolRef::drop_many(arc_ptr(this), freed.buffers - before) };
    }

    /// Frees every block queued in the shared tier as trimmed.
    pub(crate) fn empty_shared(&self, freed: &mut Freed) {
        for (class, tier) in self.shared.iter().enumerate() {
            while let Some(block) = tier.pop() {
                // SAFETY: popped from the queue, so it is ours.
                unsafe { self.trim_block(block, class, freed) };
            }
        }
        self.large.drain_hot();
        self.release_large(usize::MAX, freed);
    }

    /// Flushes this thread's cache into the shared tier and forgets it.
    pub(super) fn flush_current_thread(this: &Arc<PoolInner>) {
        if let Some(cache) = thread_cache::uninstall(this.slot, this.id) {
            PoolInner::close_own_cache(this, &cache);
        }
    }

    /// Flushes and closes a cache of this thread's that is out of the
    /// thread's table, unless it is closed already, and takes it out of the
    /// registry; then drops the count the open cache owned.
    pub(super) fn close_own_cache(this: &Arc<PoolInner>, cache: &Arc<ThreadCache>) {
        let mut closed_now = false;
        if let Some(mut guard) = cache.lock_as_owner(u32::MAX) {
            guard.with(|state| {
                if !state.closed {
                    // SAFETY: `this` is a handle's `Arc`, not a block's count.
                    unsafe { PoolInner::flush_into_shared(arc_ptr(this), state) };
                    state.closed = true;
                    closed_now = true;
                }
            });
        }
        this.registry.lock().retain(|c| !Arc::ptr_eq(c, cache));
        if closed_now {
            // SAFETY: the count the cache owned while open; `this` is
            // another.
            unsafe { PoolRef::drop_many(arc_ptr(this), 1) };
        }
    }

    /// Moves a locked, open cache's blocks into the shared tier (freeing
    /// what does not fit), gives back its credit and folds its counters.
    /// Runs no user code (it may run in a thread-local destructor).
    ///
    /// # Safety
    ///
    /// `this` is a live pool with the provenance of its `Arc`, kept alive
    /// by a count that is not one of the cached blocks'.
    pub(super) unsafe fn flush_into_shared(this: NonNull<PoolInner>, state: &mut CacheState) {
        // SAFETY: alive, by the caller's promise.
        let pool = unsafe { this.as_ref() };
        let mut counts = 0;
        state.drain(|class, block| {
            counts += 1;
            if let Err(block) = pool.stash(block, class) {
                // SAFETY: handed back by the queue: ours.
                unsafe { pool.free_idle(block, class) };
                pool.counters.class[class]
                    .dropped_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
        pool.retention.unreserve(std::mem::take(&mut state.credit));
        pool.counters.absorb(state);
        // SAFETY: the moved blocks' counts; the cache is open, so it owns
        // a count of its own (`ensure_cache`), which is not among these.
        unsafe { PoolRef::drop_many(this, counts) };
    }
}

/// The thread-exit flush installed in every cache ([`ExitFlush`]).
///
/// # Safety
///
/// `pool` is the `PoolInner` the cache belongs to, and the cache is locked
/// and not closed, so it still owns its count of the pool, which this
/// drops (the caller marks the cache closed).
pub(super) unsafe fn flush_exiting(
    pool: NonNull<()>,
    cache: *const ThreadCache,
    state: &mut CacheState,
) {
    // SAFETY: by the contract, the open cache's own count, with the
    // provenance of the pool's `Arc` (`ensure_cache` installs `arc_ptr`).
    let count = unsafe { PoolRef::from_raw(pool.cast::<PoolInner>()) };
    // SAFETY: `count` keeps the pool alive and is not a cached block's.
    unsafe { PoolInner::flush_into_shared(pool.cast(), state) };
    // Leave the registry (lock order: a cache, then the registry; nothing
    // takes them the other way round).
    count
        .registry
        .lock()
        .retain(|c| !std::ptr::eq(Arc::as_ptr(c), cache));
    // The cache's count goes last: it may be the pool's last.
    drop(count);
}
