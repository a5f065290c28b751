//! Thread caches: per thread, per pool, per class, a small LIFO of idle
//! blocks that the owning thread uses without waiting and without touching
//! any shared cache line.
//!
//! This module is a leaf. It takes and puts blocks and counts them; it knows
//! nothing of the shared tier, the retention budget or events. The pool
//! refills, spills and trims a cache by running its own code on the cache's
//! state ([`with_cache`], [`lock_all`]).
//!
//! # Ownership and locking
//!
//! A [`ThreadCache`] belongs to one thread, its owner, which finds it in
//! O(1) through a per-thread front pointer, else a per-thread table indexed
//! by the pool's slot number. The pool's registry holds the same `Arc`, so
//! the trimmer, `trim()`, `stats()` and the closing pool reach the caches of
//! idle threads too. A cache's state is guarded by two flags, one per side
//! of an asymmetric Dekker lock:
//!
//! - `busy`, written only by the owner. The owner enters with
//!   [`try_lock`](ThreadCache::try_lock): it stores `busy`, passes a
//!   [light barrier](crate::sys::membarrier::light) (a compiler fence) and reads
//!   `remote`; if `remote` is set it backs out and uses the shared tier for
//!   that one operation. No atomic read-modify-write, no waiting.
//! - `remote`, taken by compare-and-swap by any other thread
//!   ([`lock_all`]), which then passes a [heavy
//!   barrier](crate::sys::membarrier::heavy) (`membarrier`: a full barrier on every
//!   thread of the process, one for a whole batch of caches) and waits for
//!   `busy` to clear (the owner holds it for a few dozen instructions), or
//!   skips the cache when skipping a busy cache is fine (an idle tick: a
//!   busy cache is not idle).
//!
//! The two barriers order each side's store before its load, so the owner
//! and another thread are never inside together. Release on clearing a
//! flag pairs with Acquire on reading it clear, so each holder sees every
//! write of the previous one, the blocks' contents included.

use std::ptr::NonNull;

use crate::sync::{Arc, AtomicBool, Ordering, UnsafeCell, yield_now};
use crate::sys::membarrier;

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
    /// Set by the owner while it is inside; see the module docs.
    busy: AtomicBool,
    /// Held by another thread while it is inside; see the module docs.
    remote: AtomicBool,
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
    /// The pool, type-erased, with the count the open cache owns; valid
    /// while the cache is not closed (see [`CacheState::closed`]).
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
    /// is `false`, the cache owns a count of its pool, which keeps it alive;
    /// whoever sets it drops that count.
    pub(crate) closed: bool,
    /// Retention budget this cache reserved from the pool and holds for
    /// future returns, in bytes. The pool reserves it and gives it back; a put
    /// spends one capacity of it, a take earns one back.
    pub(crate) credit: usize,
    /// `hits + returns` of all classes at the last idle tick: unchanged
    /// means the owner did nothing all interval.
    pub(crate) ops_at_tick: u64,
    classes: Box<[ClassCache]>,
    /// Per class, blocks that came in from another tier
    /// ([`stock`](Self::stock)) less blocks that went out to one or were
    /// freed ([`take_oldest`](Self::take_oldest)); with `returns` and `top`
    /// it gives the hits, which the fast path does not count.
    moved: Box<[i64]>,
    /// All classes' slots, class after class; each class reaches its own
    /// through [`ClassCache::slots`].
    _slots: Slots,
}

/// One allocation of slots for all classes of a cache.
///
/// Reached only through raw pointers derived from `base` (the classes keep
/// pointers into it), never through a `Box` or a reference that would
/// assert uniqueness and invalidate them.
struct Slots {
    base: NonNull<Option<NonNull<u8>>>,
    len: usize,
}

impl Slots {
    fn new(len: usize) -> Slots {
        let boxed: Box<[Option<NonNull<u8>>]> = vec![None; len].into_boxed_slice();
        // `into_raw` never returns null.
        let base = NonNull::new(Box::into_raw(boxed))
            .expect("a box is never null")
            .cast();
        Slots { base, len }
    }

    /// The first of the slots `[start, start + depth)`, for a class.
    fn class_base(&self, start: usize, depth: usize) -> NonNull<Option<NonNull<u8>>> {
        assert!(start + depth <= self.len, "a class's slots lie inside");
        // SAFETY: `start <= len`: within the allocation or one past its end.
        unsafe { self.base.add(start) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let all = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.len);
        // SAFETY: `base` and `len` came from `Box::into_raw` in `new`, and
        // this is the only place that frees it.
        drop(unsafe { Box::from_raw(all) });
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").field("len", &self.len).finish()
    }
}

/// One class's LIFO and counters, next to each other for the fast path.
#[derive(Debug, Clone)]
pub(crate) struct ClassCache {
    capacity: usize,
    /// The class's `depth` slots in [`CacheState::slots`]; the first `top`
    /// hold blocks, the rest are never read before written (they may keep
    /// the stale pointer of a block taken since).
    slots: NonNull<Option<NonNull<u8>>>,
    depth: u32,
    /// Slots in use.
    top: u32,
    /// The lowest `top` since the last idle tick: the blocks below it were
    /// not taken all interval.
    low: u32,
    /// Blocks put into this cache by their users.
    pub(crate) returns: u64,
}

// Indexed by one `lea` and a scaled address.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ClassCache>() == 40);

/// Proof that the holder is inside a cache (see the module docs); dropping
/// it lets go.
pub(crate) struct CacheGuard<'a> {
    cache: &'a ThreadCache,
    /// Whether the holder came in as another thread (`remote`) rather than
    /// as the owner (`busy`).
    remote: bool,
}

// === impl ThreadCache ===

impl ThreadCache {
    /// A new, empty cache for the pool `pool_id` with these classes.
    pub(crate) fn new(pool_id: u64, classes: &[ClassLayout], exit: ExitFlush) -> ThreadCache {
        let slots = Slots::new(classes.iter().map(|c| c.depth as usize).sum());
        let mut start = 0;
        let classes: Box<[ClassCache]> = classes
            .iter()
            .map(|c| {
                let class = ClassCache {
                    capacity: c.capacity,
                    slots: slots.class_base(start, c.depth as usize),
                    depth: c.depth,
                    top: 0,
                    low: 0,
                    returns: 0,
                };
                start += c.depth as usize;
                class
            })
            .collect();
        ThreadCache {
            pool_id,
            busy: AtomicBool::new(false),
            remote: AtomicBool::new(false),
            state: UnsafeCell::new(CacheState {
                closed: false,
                credit: 0,
                ops_at_tick: 0,
                moved: vec![0; classes.len()].into_boxed_slice(),
                classes,
                _slots: slots,
            }),
            exit,
        }
    }

    /// The owner's way in: never waits, `None` while another thread is
    /// inside. Only the owning thread may call this (it alone writes
    /// `busy`).
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<CacheGuard<'_>> {
        self.busy.store(true, Ordering::Relaxed);
        // Orders the store above before the load below, against the heavy
        // barrier of another thread that sets `remote` and then reads `busy`.
        membarrier::light();
        // Acquire: pairs with the Release that cleared `remote`, so the last
        // holder's writes (slots, counters, the blocks' bytes) are visible.
        if self.remote.load(Ordering::Acquire) {
            release(&self.busy);
            return None;
        }
        Some(CacheGuard {
            cache: self,
            remote: false,
        })
    }

    /// The owner's way in when it must get in (flushing its own cache):
    /// retries while another thread is inside, `None` after `patience`
    /// attempts.
    pub(crate) fn lock_as_owner(&self, patience: u32) -> Option<CacheGuard<'_>> {
        for attempt in 0..patience.max(1) {
            // Wait for the other thread to leave before raising `busy`
            // again, so that its wait for `busy` to clear ends.
            if attempt > 0 && self.remote.load(Ordering::Relaxed) {
                yield_now();
                continue;
            }
            if let Some(guard) = self.try_lock() {
                return Some(guard);
            }
        }
        None
    }

    /// Claims `remote`, trying `patience` times; the guard is not valid to
    /// use until [`lock_all`] has passed the heavy barrier and seen `busy`
    /// clear.
    fn claim(&self, patience: u32) -> Option<CacheGuard<'_>> {
        for attempt in 0..patience.max(1) {
            if attempt > 0 {
                yield_now();
            }
            // Acquire: pairs with the Release of the previous remote holder.
            if self
                .remote
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(CacheGuard {
                    cache: self,
                    remote: true,
                });
            }
        }
        None
    }

    /// Waits for the owner to leave, `patience` looks at most. Run after
    /// the heavy barrier that follows the claim.
    fn owner_left(&self, patience: u32) -> bool {
        for attempt in 0..patience.max(1) {
            if attempt > 0 {
                yield_now();
            }
            // Acquire: pairs with the owner's Release when it left.
            if !self.busy.load(Ordering::Acquire) {
                return true;
            }
        }
        false
    }
}

/// Takes every cache of `caches` that can be had for another thread's
/// pass, with one heavy barrier for all of them.
///
/// A cache that another non-owner holds is waited for, `patience` tries at
/// most. A cache whose owner is inside is waited for `owner_patience` looks
/// at most: 1 skips a busy cache at once (an idle tick: a busy cache is not
/// idle); more leaves out only a cache whose owner vanished inside it (a
/// thread lost in a `fork`). Nothing is taken where the heavy barrier
/// cannot be had.
pub(crate) fn lock_all(
    caches: &[Arc<ThreadCache>],
    patience: u32,
    owner_patience: u32,
) -> Vec<CacheGuard<'_>> {
    let claimed: Vec<CacheGuard<'_>> = caches.iter().filter_map(|c| c.claim(patience)).collect();
    if claimed.is_empty() || !membarrier::heavy() {
        return Vec::new();
    }
    claimed
        .into_iter()
        .filter(|guard| guard.cache.owner_left(owner_patience))
        .collect()
}

/// Clears a flag as its holder.
#[inline]
fn release(flag: &AtomicBool) {
    // Release: pairs with the Acquire of the next holder.
    #[cfg(not(tierpool_loom))]
    flag.store(false, Ordering::Release);
    // loom may order a plain store before another thread's earlier swap,
    // which the memory model forbids (tokio-rs/loom#282), and the flag then
    // looks held for ever. A swap, equivalent here (only the holder writes
    // `false`), is modelled correctly.
    #[cfg(tierpool_loom)]
    flag.swap(false, Ordering::Release);
}

// === impl CacheGuard ===

impl CacheGuard<'_> {
    /// Runs `f` on the cache's state.
    #[inline]
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut CacheState) -> R) -> R {
        self.cache.state.with_mut(|state| {
            // SAFETY: this guard's holder is inside, so no other reference
            // to the state exists (module docs); `&mut self` keeps this one
            // unique.
            f(unsafe { &mut *state })
        })
    }
}

impl Drop for CacheGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        release(if self.remote {
            &self.cache.remote
        } else {
            &self.cache.busy
        });
    }
}

// === impl CacheState ===

impl CacheState {
    /// Takes the most recently returned block of `class`, with the class's
    /// capacity.
    ///
    /// `class` must be one of the pool's classes (checked in debug builds;
    /// the pool only passes indices its size classes produced).
    #[inline]
    pub(crate) fn take(&mut self, class: usize) -> Option<(NonNull<u8>, usize)> {
        debug_assert!(class < self.classes.len());
        // SAFETY: every cache has one entry per class of its pool, and the
        // pool's class indices are below that count.
        let c = unsafe { self.classes.get_unchecked_mut(class) };
        let top = (c.top as usize).checked_sub(1)?;
        c.top = top as u32;
        // Hits are not counted here: every block that leaves the cache
        // otherwise is, so `CacheState::hits` derives them.
        if c.top < c.low {
            // A new low-water mark: rare in steady state.
            c.low = c.top;
        }
        self.credit += c.capacity;
        // SAFETY: `top < depth`: one of the class's slots (`ClassCache::
        // slots`), which only this cache's flag holder reaches. It holds a
        // block (every `top += 1` follows a write of `Some`), and keeps its
        // now stale pointer: slots from `top` on are never read before they
        // are written.
        let slot = unsafe { c.slots.add(top).read() };
        debug_assert!(slot.is_some(), "slots below top hold blocks");
        // SAFETY: as just said.
        Some((unsafe { slot.unwrap_unchecked() }, c.capacity))
    }

    /// Puts a returned block of `class` on top, spending one capacity of
    /// credit. `false` (the caller keeps the block) when the class is full
    /// or bypasses caches, or the credit is short (always, once the cache is
    /// closed: closing takes all of its credit): the pool decides then.
    ///
    /// `class` must be one of the pool's classes, as for [`take`](Self::take).
    #[inline]
    pub(crate) fn put(&mut self, class: usize, block: NonNull<u8>) -> bool {
        debug_assert!(class < self.classes.len());
        debug_assert!(!self.closed || self.credit == 0, "closing takes the credit");
        // SAFETY: as in `take`.
        let c = unsafe { self.classes.get_unchecked_mut(class) };
        // Capacities are never zero, so a closed cache (no credit) refuses.
        if c.top == c.depth || self.credit < c.capacity {
            return false;
        }
        self.credit -= c.capacity;
        c.returns += 1;
        // SAFETY: `top < depth` here: one of the class's slots, as in `take`.
        unsafe { c.slots.add(c.top as usize).write(Some(block)) };
        c.top += 1;
        true
    }

    /// Adds an idle block that moved here from another tier with its
    /// reservation (a refill): no credit changes, no counter.
    pub(crate) fn stock(&mut self, class: usize, block: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let c = &mut self.classes[class];
        if self.closed || c.top == c.depth {
            return Err(block);
        }
        // SAFETY: `top < depth` here: one of the class's slots, as in `take`.
        unsafe { c.slots.add(c.top as usize).write(Some(block)) };
        c.top += 1;
        self.moved[class] += 1;
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
        // SAFETY: the class's first `top` slots, reached only by this
        // cache's flag holder, which is us for the life of the slice.
        let held = unsafe { std::slice::from_raw_parts_mut(c.slots.as_ptr(), c.top as usize) };
        for slot in &mut held[..n as usize] {
            f(slot.take().expect("slots below top hold blocks"));
        }
        held.rotate_left(n as usize);
        c.top -= n;
        c.low = c.low.saturating_sub(n);
        self.moved[class] -= i64::from(n);
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
        (0..self.classes.len())
            .map(|class| self.hits(class) + self.classes[class].returns)
            .sum()
    }

    /// Blocks of `class` taken from this cache by users: what came in
    /// (returned or moved in) less what is still here.
    pub(crate) fn hits(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        let came_in = c.returns as i64 + self.moved[class];
        (came_in - i64::from(c.top)) as u64
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

mod table;

pub(crate) use table::{has_cache, install, uninstall, with_cache, with_front};

#[cfg(all(test, not(tierpool_loom)))]
mod tests;
