//! The one place synchronisation primitives come from.
//!
//! Under `cfg(tierpool_loom)` (set by `RUSTFLAGS="--cfg tierpool_loom"`, never
//! by a downstream crate's own loom run) every atomic, `Arc`, mutex and
//! thread-local is loom's, so the model checker sees every handoff between
//! threads; otherwise they are std's (and `parking_lot`'s mutex), at no cost.

#[cfg(not(tierpool_loom))]
mod imp {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::thread::yield_now;
    pub(crate) use std::thread_local;
}

#[cfg(tierpool_loom)]
mod imp {
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::thread::yield_now;
    pub(crate) use loom::thread_local;
}

pub(crate) use imp::*;

/// A mutex whose `lock` cannot fail: `parking_lot`'s, loom's under loom, and
/// std's under miri (parking_lot's word lock casts integers to pointers when
/// it parks, which `-Zmiri-strict-provenance` rejects).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(any(tierpool_loom, miri)))]
    inner: parking_lot::Mutex<T>,
    #[cfg(all(miri, not(tierpool_loom)))]
    inner: std::sync::Mutex<T>,
    #[cfg(tierpool_loom)]
    inner: loom::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(any(tierpool_loom, miri)))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(all(miri, not(tierpool_loom)))]
            inner: std::sync::Mutex::new(value),
            #[cfg(tierpool_loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[cfg(not(any(tierpool_loom, miri)))]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.inner.lock()
    }

    /// A poisoned lock only means another thread panicked while holding
    /// it; every critical section here leaves the data consistent.
    #[cfg(all(miri, not(tierpool_loom)))]
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(tierpool_loom)]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `UnsafeCell` with loom's closure API, so that under loom every access to
/// a cell is checked for races, and in normal builds it is std's at no cost.
#[cfg(not(tierpool_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(tierpool_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a mutable pointer to the contents; the caller of the
    /// pointer upholds the aliasing rules (a lock, or owner-only access).
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(tierpool_loom)]
pub(crate) use loom::cell::UnsafeCell;
