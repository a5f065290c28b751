//! `PoolInner`, what a pool's handles and buffers share, and the moves of
//! idle memory between its tiers and the OS.

use super::*;
/// Per-class figures fixed at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassInfo {
    pub(crate) capacity: usize,
    /// The bytes a block occupies: `capacity` in whole pages when mapped.
    pub(crate) span: usize,
    /// Whether idle blocks of the class live in the large tier
    /// (`tier::large`) rather than a queue of their own.
    pub(crate) large: bool,
    /// Slots per thread cache (0: the class goes straight to the shared tier).
    pub(crate) depth: usize,
    /// Buffers moved per refill or spill.
    pub(crate) batch: usize,
}

/// What a pool's handles and buffers share.
///
/// Only ever created inside an `Arc` (by [`PoolBuilder::build`]). Every block
/// in use or in a thread cache owns one strong count of that `Arc`, so a
/// buffer can always reach its pool; blocks queued in the shared tier own
/// none and are freed by the pool's `Drop` if still there. Every open thread
/// cache owns one more (see `pool_ref`).
pub(super) struct PoolInner {
    /// Unique for the life of the process.
    pub(super) id: u64,
    /// This pool's index in every thread's cache table; reused after the
    /// pool is freed (the id tells a stale entry apart).
    pub(super) slot: usize,
    pub(super) name: Option<String>,
    pub(super) classes: SizeClasses,
    pub(super) info: Box<[ClassInfo]>,
    pub(super) layouts: Box<[ClassLayout]>,
    /// Most credit a thread cache keeps after a slow path.
    pub(super) credit_limit: usize,
    pub(super) shared: Box<[SharedTier]>,
    /// Idle pages of the mapped classes.
    pub(super) large: LargeTier,
    pub(super) retention: Retention,
    /// Live thread caches, for trimming and statistics.
    pub(super) registry: Mutex<Vec<Arc<ThreadCache>>>,
    pub(super) counters: PoolCounters,
    /// Bytes allocated and not yet freed or detached: in use plus idle.
    pub(super) footprint: AtomicUsize,
    /// Idle capacity that trimming on idle leaves pooled.
    pub(super) min_retained: usize,
    /// Read by the trimmer thread, which loom and miri builds do not have.
    #[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
    pub(super) trim_interval: Duration,
    /// Set when the last handle drops: returns free from then on.
    pub(super) closed: AtomicBool,
    pub(super) events: Events,
    pub(super) limits: Limits,
    /// What the adapters did, all labels and none.
    pub(super) adapters: AdapterCounters,
    pub(super) labels: Labels,
    /// Whether metrics publish every class, or only the classes in use.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) metrics_all_classes: bool,
}

/// What happened to a returned block's pool count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// Kept in a thread cache, which now owns the block's count.
    Cached,
    /// Freed, or queued in the shared tier: the caller drops the count.
    Uncached,
}

/// Where a returned block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReturnTo {
    /// Where its class keeps blocks: the thread cache, the shared queue,
    /// the hot slot of a large class.
    Class,
    /// For a large class, the large tier's idle runs, where it joins the
    /// idle pages around it: a block cut down from a larger one (see
    /// `PooledBuf::drop_to_runs`). Other classes treat it as `Class`.
    Runs,
}

/// Whether a request goes through admission control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// `get`: always allocate, like `Vec`.
    Bypass,
    /// `try_get`, `get_timeout`, `acquire`: refuse past the budget or under
    /// critical pressure.
    Check,
}

impl PoolInner {
    /// Frees a block of `class`, counting the bytes whose pages went
    /// straight back to the OS. It wakes no admission waiter: it may run
    /// under a thread cache's flag, where no outside code may run; the
    /// callers wake them once out ([`Limits::note_return`]).
    ///
    /// # Safety
    ///
    /// `block` is a block of `class` of this pool that the caller owns and
    /// gives up.
    pub(crate) unsafe fn free_memory(&self, block: NonNull<u8>, class: usize) {
        let info = self.info[class];
        self.footprint.fetch_sub(info.span, Ordering::Relaxed);
        let released = if info.large {
            // SAFETY: blocks of large classes come from the large tier.
            unsafe { self.large.unmap(block, info.span) };
            true
        } else {
            // SAFETY: forwarded from the caller: a block of the class's
            // capacity from `mem::alloc`.
            unsafe { mem::free(block, info.capacity) }
        };
        if released {
            self.counters
                .released_bytes
                .fetch_add(info.span as u64, Ordering::Relaxed);
        }
    }

    /// Queues an idle block that holds a reservation of its capacity: in
    /// its class's shared queue, or as idle pages of the large tier (which
    /// keeps whole pages reserved: the rounding up to a page is reserved
    /// here). On `Err` the block is the caller's again, still reserved.
    pub(crate) fn stash(&self, block: NonNull<u8>, class: usize) -> Result<(), NonNull<u8>> {
        self.stash_to(block, class, ReturnTo::Class)
    }

    /// [`stash`](Self::stash), a block of a large class going to the
    /// large tier's idle runs instead of its class's hot slot when `to` is
    /// [`ReturnTo::Runs`].
    #[inline]
    pub(crate) fn stash_to(
        &self,
        block: NonNull<u8>,
        class: usize,
        to: ReturnTo,
    ) -> Result<(), NonNull<u8>> {
        let info = self.info[class];
        if !info.large {
            return self.shared[class].push(block);
        }
        let slack = info.span - info.capacity;
        if slack > 0 && !self.retention.try_reserve(slack) {
            return Err(block);
        }
        // SAFETY: an idle block of a large class, so from the large tier,
        // of `span` bytes; the caller hands it over.
        unsafe {
            match to {
                ReturnTo::Class => self.large.put_hot(class, block),
                ReturnTo::Runs => self.large.put(block, info.span),
            }
        }
        Ok(())
    }

    /// Cuts a block of the mapped class `class` at the span of the smaller
    /// mapped class `to`: the front stays out as a block of `to`, the
    /// tail's pages join the large tier's idle runs as they are (resident,
    /// for any size to reuse without a page fault). `false`, and nothing
    /// done, when the retention budget has no room for the tail.
    ///
    /// # Safety
    ///
    /// `block` is a block of `class` of this pool that the caller owns and
    /// keeps (as a block of `to`).
    pub(crate) unsafe fn split_block(&self, block: NonNull<u8>, class: usize, to: usize) -> bool {
        let (from, into) = (self.info[class], self.info[to]);
        debug_assert!(from.large && into.large && into.span < from.span);
        let tail = from.span - into.span;
        if !self.retention.try_reserve(tail) {
            return false;
        }
        // SAFETY: the tail of the caller's block, a range of the large
        // tier's pages (page-aligned: spans are whole pages) that nothing
        // uses any more.
        unsafe {
            self.large
                .put(NonNull::new_unchecked(block.as_ptr().add(into.span)), tail);
        }
        // In the books, the block of `class` came back and one of `to` went
        // out; the footprint is unchanged (the tail is idle, still mapped).
        self.counters.class[class]
            .returns
            .fetch_add(1, Ordering::Relaxed);
        self.counters.class[to]
            .shared_hits
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Unmaps up to `bytes` of the large tier's idle pages as trimmed.
    pub(crate) fn release_large(&self, bytes: usize, freed: &mut Freed) {
        let released = self.large.release(bytes);
        if released == 0 {
            return;
        }
        self.footprint.fetch_sub(released, Ordering::Relaxed);
        self.retention.unreserve(released);
        self.counters
            .released_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
        self.counters
            .large_trimmed_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
        freed.bytes += released;
    }

    /// Frees an idle block that held a reservation (and no pool count: a
    /// queued block, or a cached one whose count the caller drops).
    ///
    /// # Safety
    ///
    /// `block` is an idle block of `class` that the caller took out of a tier.
    pub(crate) unsafe fn free_idle(&self, block: NonNull<u8>, class: usize) {
        // SAFETY: the caller took the block out of its tier: it is ours.
        unsafe { self.free_memory(block, class) };
        self.retention.unreserve(self.info[class].capacity);
    }
}

impl Drop for PoolInner {
    /// Frees what is still queued in the shared tier and the large tier
    /// (blocks pushed after the closing trim by an exiting thread) and
    /// gives the slot back.
    fn drop(&mut self) {
        for (class, tier) in self.shared.iter().enumerate() {
            while let Some(block) = tier.pop() {
                // SAFETY: popped from the queue, so it is ours; nothing else
                // can reach the pool any more.
                unsafe { mem::free(block, self.info[class].capacity) };
            }
        }
        self.large.release_all();
        slots::recycle(self.slot);
        super::unregister(self);
        crate::trimmer::forget_soon();
    }
}

/// Pool ids and the slot numbers of the per-thread cache tables.
///
/// Lock-free, so building a pool never waits on a lock that a thread lost
/// in a `fork` could hold.
pub(super) mod slots {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
    static FREE: crossbeam_queue::SegQueue<usize> = crossbeam_queue::SegQueue::new();

    /// A process-unique pool id.
    pub(in crate::pool) fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// A slot number no live pool uses, the lowest free ones first so the
    /// tables stay small.
    pub(in crate::pool) fn acquire() -> usize {
        // Inside the fork gate: a push or pop cut short by a fork would
        // leave the queue waiting for a thread the child does not have.
        let _gate = crate::sys::fork::fork_gate();
        FREE.pop()
            .unwrap_or_else(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed))
    }

    /// Gives a freed pool's slot back.
    pub(super) fn recycle(slot: usize) {
        let _gate = crate::sys::fork::fork_gate();
        FREE.push(slot);
    }
}
