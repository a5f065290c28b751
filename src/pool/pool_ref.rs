//! The reference-count protocol of a pool, in one place.
//!
//! A `PoolInner` lives in an `Arc`. Its strong counts are owned by:
//!
//! - each [`Pool`](crate::Pool) handle (through its `Arc`);
//! - each block handed out or idle in a thread cache (one count a block,
//!   kept as the raw pointer in the `PooledBuf` or the cache slot);
//! - each open thread cache (one count, kept in its [`ExitFlush`]), until
//!   the cache is closed: by the closing pool, by
//!   [`Pool::flush_thread_cache`](crate::Pool::flush_thread_cache), or by its
//!   thread's exit, whichever comes first. So a cache that the closing pool
//!   could not enter keeps the pool alive until its owner is done with it.
//!
//! Blocks queued in the shared tier or idle in the large tier own none; the
//! pool's `Drop` frees them. Every count is taken and dropped through the
//! functions below; nothing else in the crate names `Arc`'s count API.
//!
//! [`ExitFlush`]: crate::tier::thread_cache::ExitFlush

use std::ptr::NonNull;

use super::PoolInner;
use crate::sync::Arc;

/// One strong count of a pool's `Arc`, owned.
///
/// Made from a live handle ([`PoolRef::new`]) or adopted from a block or a
/// cache that owned it ([`PoolRef::from_raw`]); handed on to a block or a
/// cache with [`PoolRef::hand_over`]; dropped, as the last use of the pool in
/// the dropping scope, by `Drop`.
pub(super) struct PoolRef(NonNull<PoolInner>);

impl PoolRef {
    /// Takes a new count of `pool`.
    #[inline]
    pub(crate) fn new(pool: &Arc<PoolInner>) -> PoolRef {
        // SAFETY: `pool` is a live `Arc`, so its allocation and counts are
        // valid; the count taken here is owned by the returned value.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(pool)) };
        PoolRef(arc_ptr(pool))
    }

    /// Adopts a count that a block or a cache owned.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`arc_ptr`], and the caller
    /// gives up one count that it owned.
    #[inline]
    pub(crate) unsafe fn from_raw(ptr: NonNull<PoolInner>) -> PoolRef {
        PoolRef(ptr)
    }

    /// Hands the count on to a block or a cache that keeps the pool's
    /// [`arc_ptr`] and gives the count back with [`PoolRef::from_raw`].
    #[inline]
    pub(crate) fn hand_over(self) {
        std::mem::forget(self);
    }

    /// A handle-like `Arc` made from a new count of the pool behind `ptr`,
    /// for code that wants `&Arc<PoolInner>` (a return path that makes a
    /// thread cache, a buffer that grows).
    ///
    /// # Safety
    ///
    /// `ptr` came from [`arc_ptr`], and a count that the caller holds keeps
    /// the pool alive across the call.
    #[inline]
    pub(crate) unsafe fn upgrade(ptr: NonNull<PoolInner>) -> Arc<PoolInner> {
        // SAFETY: the caller's count keeps the allocation alive, and `ptr`
        // carries the provenance of the whole `Arc` allocation; the new
        // count is the returned `Arc`'s.
        unsafe {
            Arc::increment_strong_count(ptr.as_ptr().cast_const());
            Arc::from_raw(ptr.as_ptr().cast_const())
        }
    }

    /// Drops `n` counts that blocks gave up, none of them the last.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`arc_ptr`]; the caller gives up `n` counts that it
    /// owned, and another count stays alive across the call.
    #[inline]
    pub(crate) unsafe fn drop_many(ptr: NonNull<PoolInner>, n: usize) {
        for _ in 0..n {
            // SAFETY: forwarded from the caller; never the last count.
            unsafe { Arc::decrement_strong_count(ptr.as_ptr().cast_const()) };
        }
    }
}

impl std::ops::Deref for PoolRef {
    type Target = PoolInner;

    #[inline]
    fn deref(&self) -> &PoolInner {
        // SAFETY: the count this value owns keeps the pool alive.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for PoolRef {
    /// Drops the count; this may free the pool, so it is the owner's last
    /// use of it.
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `arc_ptr` and this value owns one count.
        unsafe { Arc::decrement_strong_count(self.0.as_ptr().cast_const()) };
    }
}

/// The pool's address with the provenance of its whole `Arc` allocation,
/// so that strong counts can be taken and dropped through it.
#[inline]
pub(super) fn arc_ptr(this: &Arc<PoolInner>) -> NonNull<PoolInner> {
    // SAFETY: `Arc::as_ptr` never returns null.
    unsafe { NonNull::new_unchecked(Arc::as_ptr(this).cast_mut()) }
}
