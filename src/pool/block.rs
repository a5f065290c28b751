//! What a block's owner may do with its pool: the one handle a
//! [`PooledBuf`] keeps, so that the buffer never sees the pool's insides.
//!
//! A `BlockPool` is the address of a pool whose strong count the block
//! owns (see [`pool_ref`](super::pool_ref)): copying it copies the address,
//! not the count. Every method but [`BlockPool::release`] and
//! [`BlockPool::detach`] leaves the count with the block.

use std::ptr::NonNull;

use super::pool_ref::{PoolRef, arc_ptr};
use super::{Admission, OVERSIZE, PoolInner, ReturnTo, Returned};
use crate::buf::PooledBuf;
use crate::sync::Arc;
use crate::{Error, global};

/// The pool a block belongs to, as the block sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockPool(NonNull<PoolInner>);

impl BlockPool {
    /// The handle of `pool`'s blocks.
    #[inline]
    pub(super) fn of(pool: &Arc<PoolInner>) -> Self {
        BlockPool(arc_ptr(pool))
    }

    /// # Safety
    ///
    /// A count that the caller's block holds keeps the pool alive for `'a`.
    #[inline]
    unsafe fn inner<'a>(self) -> &'a PoolInner {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.as_ref() }
    }

    /// The pool's id (the key of its thread caches).
    ///
    /// # Safety
    ///
    /// The caller's block holds a count of the pool.
    #[inline]
    pub(crate) unsafe fn id(self) -> u64 {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner() }.id
    }

    /// Cuts the caller's block of class `class`, holding `len` bytes, down
    /// to the smallest class that holds them when both are mapped classes:
    /// its tail's pages go to the large tier's idle runs, resident. Returns
    /// the new class and capacity, or `None` (the block unchanged).
    ///
    /// # Safety
    ///
    /// As for [`id`](Self::id); `block` is the caller's, of class `class`.
    pub(crate) unsafe fn shrink_to_class(
        self,
        block: NonNull<u8>,
        len: usize,
        class: u32,
    ) -> Option<(u32, usize)> {
        if class == OVERSIZE {
            return None;
        }
        // SAFETY: forwarded from the caller.
        let inner = unsafe { self.inner() };
        let from = class as usize;
        let to = inner.classes.index_for(len.max(1))?;
        if to >= from || !inner.info[to].large || !inner.info[from].large {
            return None;
        }
        // SAFETY: the caller's block of class `from`, kept as a block of
        // `to` (whose capacity holds its `len` bytes).
        if !unsafe { inner.split_block(block, from, to) } {
            return None;
        }
        Some((to as u32, inner.info[to].capacity))
    }

    /// A block of the pool of `pool` (the process-wide default pool for
    /// `None`) with room for `requested` bytes, for a buffer of capacity
    /// `cap` that grows: at least twice `cap` (capped at the largest class)
    /// so that repeated appends stay amortised O(1); past the largest
    /// class, an exact allocation that still doubles, as `Vec`'s do.
    ///
    /// # Safety
    ///
    /// As for [`id`](Self::id), when `pool` is `Some`.
    pub(crate) unsafe fn for_growth(
        pool: Option<BlockPool>,
        cap: usize,
        requested: usize,
    ) -> Result<PooledBuf, Error> {
        let pool: Arc<PoolInner> = match pool {
            // SAFETY: `p` came from `arc_ptr`, and the caller's block holds
            // a count across the call.
            Some(p) => unsafe { PoolRef::upgrade(p.0) },
            None => global().inner_arc().clone(),
        };
        let largest = pool.classes.largest();
        let doubled = cap.saturating_mul(2);
        let target = if requested <= largest {
            requested.max(doubled).min(largest)
        } else {
            // Never past `isize::MAX` for the doubling alone.
            requested.max(doubled.min(isize::MAX as usize))
        };
        PoolInner::get(&pool, target, Admission::Bypass)
    }

    /// Takes a block of class `class` (`cap` bytes) out of the pool for
    /// good, then drops the count it held.
    ///
    /// # Safety
    ///
    /// The caller gives up the block and its count; the pool may be freed.
    pub(crate) unsafe fn detach(self, class: u32, cap: usize) {
        // SAFETY: the block's count keeps the pool alive until the drop.
        unsafe { self.inner() }.detach(class, cap);
        // SAFETY: the count the block held; nothing touches the pool after.
        drop(unsafe { PoolRef::from_raw(self.0) });
    }

    /// Returns a block past the thread's front cache: into a thread cache,
    /// the shared tier or the large tier (its hot slot, or its idle runs
    /// for [`ReturnTo::Runs`]), or frees it; then drops the count it held
    /// unless a thread cache kept it with the block.
    ///
    /// # Safety
    ///
    /// The caller gives up `block` (of class `class`, or an exact allocation
    /// of `cap` bytes when `class` is `OVERSIZE`) and its count; the pool
    /// may be freed.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn release(self, block: NonNull<u8>, cap: usize, class: u32, to: ReturnTo) {
        {
            // SAFETY: the block holds a count, so the pool is alive here.
            let inner = unsafe { self.inner() };
            if class == OVERSIZE {
                inner.give_back_oversize(block, cap);
            } else {
                // SAFETY: `self.0` came from `arc_ptr` and the count keeps
                // it alive; the caller gives up this block of class `class`.
                let returned = unsafe { PoolInner::give_back(self.0, block, class as usize, to) };
                if returned == Returned::Cached {
                    // The count went into the thread cache with the block.
                    return;
                }
            }
        }
        // SAFETY: the block was freed or queued; drop the count it held.
        // This may drop the pool, so it comes last.
        drop(unsafe { PoolRef::from_raw(self.0) });
    }
}
