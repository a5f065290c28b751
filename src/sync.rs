//! The one place synchronisation primitives come from.
//!
//! Under `cfg(tierpool_loom)` (set by `RUSTFLAGS="--cfg tierpool_loom"`, never
//! by a downstream crate's own loom run) every atomic, `Arc`, mutex and
//! thread-local is loom's, so the model checker sees every handoff between
//! threads; otherwise they are std's (and `parking_lot`'s mutex), at no cost.

#[cfg(not(tierpool_loom))]
mod imp {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
    pub(crate) use std::thread::yield_now;
    pub(crate) use std::thread_local;
}

#[cfg(tierpool_loom)]
mod imp {
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
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

    /// Takes the lock, inside the fork gate (see `sys::fork`).
    #[cfg(not(any(tierpool_loom, miri)))]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let gate = fork_gate();
        MutexGuard {
            inner: self.inner.lock(),
            _gate: gate,
        }
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

/// A lock that never parks a thread and takes no share of the fork gate:
/// for the global allocator's tier, which any allocation of the process
/// may reach (a thread that holds some lock of its own and allocates must
/// not wait for a `fork` that waits for that lock's holder). The
/// `pthread_atfork` prepare handler takes it instead, as malloc does with
/// its arenas, and the child's handler lets it go: nothing about it lives
/// in a process-wide table that a thread lost in the `fork` could hold
/// (`parking_lot`'s parked waiters do).
pub(crate) struct SpinLock<T> {
    held: std::sync::atomic::AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only reached through a `SpinGuard`, which exists
// only while `held` is set by its holder: one thread at a time.
unsafe impl<T: Send> Send for SpinLock<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SpinLock {
            held: std::sync::atomic::AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    /// Takes the lock, yielding while another thread holds it.
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        use std::sync::atomic::Ordering;
        // Acquire: pairs with the Release of the last holder's unlock.
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        SpinGuard { lock: self }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinLock").finish_non_exhaustive()
    }
}

/// A held [`SpinLock`].
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock: no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds the lock, and `&mut self` keeps this
        // reference unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release: the holder's writes are seen by the next holder.
        self.lock
            .held
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A held [`Mutex`]: the lock, then its share of the fork gate (fields drop
/// in this order).
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) struct MutexGuard<'a, T> {
    inner: parking_lot::MutexGuard<'a, T>,
    _gate: ForkGate,
}

#[cfg(not(any(tierpool_loom, miri)))]
impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

#[cfg(not(any(tierpool_loom, miri)))]
impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

#[cfg(not(any(tierpool_loom, miri)))]
use crate::sys::fork::{ForkGate, fork_gate};

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
