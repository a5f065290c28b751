//! The one place synchronisation primitives come from.
//!
//! Under `cfg(loom)` every atomic, `Arc`, mutex and thread-local is loom's, so
//! the model checker sees every handoff between threads; otherwise they are
//! std's (and `parking_lot`'s mutex), at no cost.

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::thread_local;

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::thread_local;

/// A mutex whose `lock` cannot fail: `parking_lot`'s, loom's under loom, and
/// std's under miri (parking_lot's word lock casts integers to pointers when
/// it parks, which `-Zmiri-strict-provenance` rejects).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(any(loom, miri)))]
    inner: parking_lot::Mutex<T>,
    #[cfg(all(miri, not(loom)))]
    inner: std::sync::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(any(loom, miri)))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(all(miri, not(loom)))]
            inner: std::sync::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[cfg(not(any(loom, miri)))]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.inner.lock()
    }

    #[cfg(all(miri, not(loom)))]
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(loom)]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // A poisoned lock only means another model thread panicked; loom
        // reports that panic itself.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds one to a counter that only its owning thread writes.
///
/// Readers on other threads may see the old value for a while, which is what
/// "exact when quiescent" allows. A load and a store, not a read-modify-write:
/// the fast path stays free of locked instructions.
#[inline]
pub(crate) fn bump_owned(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}
