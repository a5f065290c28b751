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

    /// Takes the lock, inside the fork gate (see [`fork_gate`]).
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

/// The fork gate: every lock of this crate, and every multi-step change of
/// its process-wide state, holds a shared (recursive) share of it; the
/// `pthread_atfork` prepare handler takes it exclusively. So no lock of the
/// crate is held across a `fork`, and a forked child never waits for a
/// thread that did not come along. One uncontended atomic per slow-path
/// lock; the get and return fast paths take none.
#[cfg(not(any(tierpool_loom, miri)))]
static FORK_GATE: parking_lot::RwLock<()> = parking_lot::const_rwlock(());

/// A shared share of the fork gate.
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) type ForkGate = parking_lot::RwLockReadGuard<'static, ()>;

/// Takes a shared share of the fork gate (recursive: a holder may take
/// another while the prepare handler waits).
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) fn fork_gate() -> ForkGate {
    FORK_GATE.read_recursive()
}

/// Takes the fork gate exclusively: no lock of the crate is held, and none
/// can be taken, until the guard drops (the prepare handler of a `fork`).
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) fn close_fork_gate() -> parking_lot::RwLockWriteGuard<'static, ()> {
    FORK_GATE.write()
}

/// No `fork` under loom or miri: the gate is nothing.
#[cfg(any(tierpool_loom, miri))]
pub(crate) fn fork_gate() {}

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
