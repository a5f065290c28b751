//! Thread caches: per thread, per pool, per class, a small LIFO of idle
//! blocks that the owning thread uses without waiting and without touching
//! any shared cache line.
//!
//! This module is a leaf. It takes and puts blocks and counts them; it knows
//! nothing of the shared tier, the retention budget or events. The pool
//! refills, spills and trims a cache by running its own code on the cache's
//! state ([`with_cache`], [`ThreadCache::lock`]).
//!
//! # Ownership and locking
//!
//! A [`ThreadCache`] belongs to one thread, its owner, which finds it in
//! O(1) in a per-thread table indexed by the pool's slot number. The pool's
//! registry holds the same `Arc`, so the trimmer, `trim()`, `stats()` and
//! the closing pool reach the caches of idle threads too. All of a cache's
//! state sits behind one flag, `busy`:
//!
//! - the owner takes it with [`try_lock`](ThreadCache::try_lock): one swap
//!   on a cache line no other thread writes in steady state. It never
//!   waits: if another thread holds the flag, the owner uses the shared tier
//!   for that one operation;
//! - other threads take it with [`lock`](ThreadCache::lock), spinning (the
//!   owner holds it for a few dozen instructions), or with `try_lock` where
//!   skipping a busy cache is fine (an idle tick: a busy cache is not idle).
//!
//! Acquire on taking the flag pairs with Release on dropping it, so each
//! holder sees every write of the previous one, the blocks' contents
//! included.

use std::ptr::NonNull;

use crate::sync::{Arc, AtomicBool, Ordering, UnsafeCell, thread_local, yield_now};

/// Where one class's slots are and what one of its blocks holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassLayout {
    /// The class's capacity in bytes.
    pub(crate) capacity: usize,
    /// Slots per cache (0: the class bypasses thread caches).
    pub(crate) depth: u32,
}

/// One thread's cache for one pool.
#[derive(Debug)]
pub(crate) struct ThreadCache {
    /// The pool this cache belongs to (ids are never reused; slot numbers are).
    pool_id: u64,
    /// Held by whoever touches `state`; see the module docs.
    busy: AtomicBool,
    state: UnsafeCell<CacheState>,
    /// Flushes the cache into its pool when the owning thread exits.
    exit: ExitFlush,
}

// SAFETY: `state` is only reached through `CacheGuard`, which exists only
// while `busy` is held, so at most one thread touches it at a time; the
// blocks it points to are owned plain bytes, like `Box<[u8]>`. `exit` is a
// function pointer and a pointer that `ExitFlush::run`'s contract guards.
unsafe impl Send for ThreadCache {}
// SAFETY: as for `Send`: every shared access goes through the flag.
unsafe impl Sync for ThreadCache {}

/// What the pool runs on a cache when its owning thread exits.
#[derive(Debug)]
pub(crate) struct ExitFlush {
    /// The pool, type-erased; valid while the cache is not closed (see
    /// [`CacheState::closed`]).
    pub(crate) pool: NonNull<()>,
    /// # Safety
    ///
    /// Called with the cache (the second argument, for its identity) locked
    /// and not closed, with `pool` above.
    pub(crate) run: unsafe fn(NonNull<()>, *const ThreadCache, &mut CacheState),
}

/// A cache's state: only reachable while its flag is held.
#[derive(Debug)]
pub(crate) struct CacheState {
    /// Set (by the pool) when the pool closes or the cache is flushed for
    /// good: from then on nothing is put, and the pool may be gone. While it
    /// is `false`, the pool is alive: the pool closes every registered cache
    /// before it can be freed.
    pub(crate) closed: bool,
    /// Retention budget this cache reserved from the pool and holds for
    /// future returns, in bytes. The pool reserves it and gives it back; a put
    /// spends one capacity of it, a take earns one back.
    pub(crate) credit: usize,
    /// `hits + returns` of all classes at the last idle tick: unchanged
    /// means the owner did nothing all interval.
    pub(crate) ops_at_tick: u64,
    classes: Box<[ClassCache]>,
    /// All classes' slots, class after class; slots `[start, start + top)`
    /// of a class hold blocks, the rest are `None`.
    slots: Box<[Option<NonNull<u8>>]>,
}

/// One class's LIFO and counters, next to each other for the fast path.
#[derive(Debug, Clone)]
pub(crate) struct ClassCache {
    capacity: usize,
    start: u32,
    depth: u32,
    /// Slots in use: `[start, start + top)`.
    top: u32,
    /// The lowest `top` since the last idle tick: the blocks below it were
    /// not taken all interval.
    low: u32,
    /// Blocks taken from this cache.
    pub(crate) hits: u64,
    /// Blocks put into this cache.
    pub(crate) returns: u64,
}

/// Proof that the holder has a cache's flag; dropping it lets go of the flag.
pub(crate) struct CacheGuard<'a> {
    cache: &'a ThreadCache,
}

// === impl ThreadCache ===

impl ThreadCache {
    /// A new, empty cache for the pool `pool_id` with these classes.
    pub(crate) fn new(pool_id: u64, classes: &[ClassLayout], exit: ExitFlush) -> ThreadCache {
        let mut start = 0u32;
        let classes: Box<[ClassCache]> = classes
            .iter()
            .map(|c| {
                let class = ClassCache {
                    capacity: c.capacity,
                    start,
                    depth: c.depth,
                    top: 0,
                    low: 0,
                    hits: 0,
                    returns: 0,
                };
                start += c.depth;
                class
            })
            .collect();
        ThreadCache {
            pool_id,
            busy: AtomicBool::new(false),
            state: UnsafeCell::new(CacheState {
                closed: false,
                credit: 0,
                ops_at_tick: 0,
                classes,
                slots: vec![None; start as usize].into_boxed_slice(),
            }),
            exit,
        }
    }

    /// Takes the flag if it is free. The owner's way in: never waits.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<CacheGuard<'_>> {
        // Acquire: pairs with the Release in `CacheGuard::drop`, so the last
        // holder's writes (slots, counters, the blocks' bytes) are visible.
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        Some(CacheGuard { cache: self })
    }

    /// Takes the flag, yielding while the owner holds it (a few dozen
    /// instructions, unless the owner was preempted right there). `None`
    /// after `patience` attempts, so a cache whose owner vanished holding it
    /// (a thread that did not survive a `fork`) cannot wedge the caller.
    pub(crate) fn lock(&self, patience: u32) -> Option<CacheGuard<'_>> {
        for _ in 0..patience.max(1) {
            if let Some(guard) = self.try_lock() {
                return Some(guard);
            }
            yield_now();
        }
        None
    }
}

// === impl CacheGuard ===

impl CacheGuard<'_> {
    /// Runs `f` on the cache's state.
    #[inline]
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut CacheState) -> R) -> R {
        self.cache.state.with_mut(|state| {
            // SAFETY: this guard holds `busy`, so no other reference to the
            // state exists (module docs); `&mut self` keeps this one unique.
            f(unsafe { &mut *state })
        })
    }
}

impl Drop for CacheGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquire swap of the next holder.
        #[cfg(not(tierpool_loom))]
        self.cache.busy.store(false, Ordering::Release);
        // loom may order a plain store before another thread's earlier
        // swap, which the memory model forbids (tokio-rs/loom#282), and the
        // flag then looks held for ever. A swap, equivalent here (only the
        // holder writes `false`), is modelled correctly.
        #[cfg(tierpool_loom)]
        self.cache.busy.swap(false, Ordering::Release);
    }
}

// === impl CacheState ===

impl CacheState {
    /// Takes the most recently returned block of `class`.
    #[inline]
    pub(crate) fn take(&mut self, class: usize) -> Option<NonNull<u8>> {
        let c = &mut self.classes[class];
        if c.top == 0 {
            return None;
        }
        c.top -= 1;
        if c.top < c.low {
            c.low = c.top;
        }
        c.hits += 1;
        self.credit += c.capacity;
        let slot = &mut self.slots[(c.start + c.top) as usize];
        debug_assert!(slot.is_some(), "slots below top hold blocks");
        slot.take()
    }

    /// Puts a returned block of `class` on top, spending one capacity of
    /// credit. Gives it back when the cache is closed, the class is full or
    /// bypasses caches, or the credit is short: the pool decides then.
    #[inline]
    pub(crate) fn put(&mut self, class: usize, block: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let c = &mut self.classes[class];
        if self.closed || c.top == c.depth || self.credit < c.capacity {
            return Err(block);
        }
        self.credit -= c.capacity;
        c.returns += 1;
        let slot = &mut self.slots[(c.start + c.top) as usize];
        debug_assert!(slot.is_none(), "slots from top on are empty");
        *slot = Some(block);
        c.top += 1;
        Ok(())
    }

    /// Adds an idle block that moved here from another tier with its
    /// reservation (a refill): no credit changes, no counter.
    pub(crate) fn stock(&mut self, class: usize, block: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let c = &mut self.classes[class];
        if self.closed || c.top == c.depth {
            return Err(block);
        }
        self.slots[(c.start + c.top) as usize] = Some(block);
        c.top += 1;
        Ok(())
    }

    /// Whether `class` has no free slot (always, for a class that bypasses
    /// thread caches).
    pub(crate) fn is_full(&self, class: usize) -> bool {
        let c = &self.classes[class];
        c.top == c.depth
    }

    /// Takes up to `n` of the oldest blocks of `class` (the bottom of the
    /// LIFO, the coldest), handing each to `f`.
    pub(crate) fn take_oldest(&mut self, class: usize, n: usize, mut f: impl FnMut(NonNull<u8>)) {
        let c = &mut self.classes[class];
        let n = (n as u32).min(c.top);
        let (start, top) = (c.start as usize, c.top as usize);
        for slot in &mut self.slots[start..start + n as usize] {
            f(slot.take().expect("slots below top hold blocks"));
        }
        self.slots[start..start + top].rotate_left(n as usize);
        c.top -= n;
        c.low = c.low.saturating_sub(n);
    }

    /// Takes every block of every class, handing each to `f(class, block)`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize, NonNull<u8>)) {
        for class in 0..self.classes.len() {
            let top = self.classes[class].top as usize;
            self.take_oldest(class, top, |block| f(class, block));
        }
    }

    /// Blocks of `class` that stayed untouched since the last idle tick:
    /// they lie below the low-water mark.
    pub(crate) fn idle(&self, class: usize) -> usize {
        self.classes[class].low as usize
    }

    /// Starts a new idle interval: the low-water marks go to the tops, so a
    /// block counts as idle only if it stays below them a whole interval.
    pub(crate) fn mark_tick(&mut self) {
        for c in self.classes.iter_mut() {
            c.low = c.top;
        }
        self.ops_at_tick = self.ops();
    }

    /// Hits plus returns of all classes.
    pub(crate) fn ops(&self) -> u64 {
        self.classes.iter().map(|c| c.hits + c.returns).sum()
    }

    /// The classes' figures, for statistics.
    pub(crate) fn classes(&self) -> &[ClassCache] {
        &self.classes
    }
}

impl ClassCache {
    /// Idle blocks held.
    pub(crate) fn len(&self) -> usize {
        self.top as usize
    }

    /// Idle bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.top as usize * self.capacity
    }
}

// === the per-thread table ===

/// This thread's caches, indexed by pool slot number.
struct Table {
    entries: std::cell::UnsafeCell<Vec<Option<Arc<ThreadCache>>>>,
}

impl Drop for Table {
    /// Thread exit: hand every open cache back to its pool.
    fn drop(&mut self) {
        for cache in self.entries.get_mut().drain(..).flatten() {
            flush_exiting(&cache);
        }
    }
}

#[cfg(not(tierpool_loom))]
thread_local! {
    static TABLE: Table = const {
        Table { entries: std::cell::UnsafeCell::new(Vec::new()) }
    };
}

#[cfg(tierpool_loom)]
thread_local! {
    static TABLE: Table = Table { entries: std::cell::UnsafeCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for the pool in `slot` with id
/// `pool_id`, holding the cache's flag.
///
/// `None` when there is no such cache (never registered, or the thread-local
/// is being destroyed: a buffer dropped from another thread-local's
/// destructor) or another thread holds its flag. `f` must not call user code
/// (event callbacks, wakers) or reach this table again.
#[inline]
pub(crate) fn with_cache<R>(
    slot: usize,
    pool_id: u64,
    f: impl FnOnce(&mut CacheState) -> R,
) -> Option<R> {
    TABLE
        .try_with(|table| {
            // SAFETY: only this module reaches `entries`, and none of its
            // functions runs code that reaches it again while this shared
            // reference lives (`f` promises not to).
            let entries = unsafe { &*table.entries.get() };
            let cache = entries.get(slot)?.as_deref()?;
            if cache.pool_id != pool_id {
                return None;
            }
            let mut guard = cache.try_lock()?;
            Some(guard.with(f))
        })
        .ok()
        .flatten()
}

/// Whether this thread has a cache for the pool (`slot`, `pool_id`).
pub(crate) fn has_cache(slot: usize, pool_id: u64) -> bool {
    TABLE
        .try_with(|table| {
            // SAFETY: as in `with_cache`; nothing runs while it lives.
            let entries = unsafe { &*table.entries.get() };
            entries
                .get(slot)
                .and_then(|e| e.as_deref())
                .is_some_and(|c| c.pool_id == pool_id)
        })
        .unwrap_or(false)
}

/// Makes `cache` this thread's cache for the pool in `slot`. `false` when the
/// thread-local is being destroyed. A cache of an earlier pool that held the
/// same slot (closed: its pool is gone) is dropped.
pub(crate) fn install(slot: usize, cache: Arc<ThreadCache>) -> bool {
    let replaced = TABLE.try_with(|table| {
        // SAFETY: as in `with_cache`; the only code run while this unique
        // reference lives is `Vec`'s own.
        let entries = unsafe { &mut *table.entries.get() };
        if entries.len() <= slot {
            entries.resize_with(slot + 1, || None);
        }
        entries[slot].replace(cache)
    });
    // Dropped outside the table: a cache's drop runs no code of ours, but
    // keep the rule simple.
    replaced.is_ok()
}

/// Removes and returns this thread's cache for the pool (`slot`, `pool_id`).
pub(crate) fn uninstall(slot: usize, pool_id: u64) -> Option<Arc<ThreadCache>> {
    TABLE
        .try_with(|table| {
            // SAFETY: as in `install`.
            let entries = unsafe { &mut *table.entries.get() };
            let entry = entries.get_mut(slot)?;
            if entry.as_ref().is_some_and(|c| c.pool_id == pool_id) {
                entry.take()
            } else {
                None
            }
        })
        .ok()
        .flatten()
}

/// Hands an exiting thread's cache back to its pool, unless it is closed.
fn flush_exiting(cache: &ThreadCache) {
    // Unbounded patience would be wrong only for a cache whose flag is held
    // by a thread that no longer exists; the owner is this thread.
    let Some(mut guard) = cache.lock(u32::MAX) else {
        return;
    };
    let exit = &cache.exit;
    guard.with(|state| {
        if !state.closed {
            // SAFETY: locked and not closed, as `run` requires.
            unsafe { (exit.run)(exit.pool, cache, state) };
            state.closed = true;
        }
    });
}
