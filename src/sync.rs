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

/// The fork gate: every lock of this crate, and every multi-step change of
/// its process-wide state, holds a shared (recursive) share of it; the
/// `pthread_atfork` prepare handler takes it exclusively. So no lock of the
/// crate is held across a `fork`, and a forked child never waits for a
/// thread that did not come along. One uncontended atomic per slow-path
/// lock; the get and return fast paths take none.
///
/// Hand-made of one atomic, never parking a thread: a lock that parks
/// (`parking_lot`'s) keeps its waiters in a process-wide table whose locks a
/// thread of the parent may hold at the `fork`, and the child then hangs
/// opening the gate.
#[cfg(not(any(tierpool_loom, miri)))]
mod fork_gate_imp {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Shares held in the low bits; `CLOSED` while a `fork` is under way.
    static GATE: AtomicUsize = AtomicUsize::new(0);
    /// Shares held by threads waiting to fork while another does.
    static PARKED: AtomicUsize = AtomicUsize::new(0);
    const CLOSED: usize = 1 << (usize::BITS - 1);

    std::thread_local! {
        /// Shares this thread holds: a holder takes more without waiting
        /// (the closing side waits for it to let go). No destructor, so it
        /// is there for the whole life of the thread.
        static HELD: Cell<usize> = const { Cell::new(0) };
    }

    /// A shared share of the fork gate, this thread's (not `Send`: `HELD`
    /// counts it).
    #[must_use]
    pub(crate) struct ForkGate(std::marker::PhantomData<*const ()>);

    impl Drop for ForkGate {
        fn drop(&mut self) {
            HELD.with(|held| held.set(held.get() - 1));
            // Release: what the holder did is seen by the closing side.
            GATE.fetch_sub(1, Ordering::Release);
        }
    }

    /// Takes a shared share of the fork gate (recursive: a holder may take
    /// another while the prepare handler waits).
    pub(crate) fn fork_gate() -> ForkGate {
        let nested = HELD.with(Cell::get) > 0;
        loop {
            let before = GATE.fetch_add(1, Ordering::Acquire);
            if before & CLOSED == 0 || nested {
                HELD.with(|held| held.set(held.get() + 1));
                return ForkGate(std::marker::PhantomData);
            }
            // A fork is under way: step back and wait for it.
            GATE.fetch_sub(1, Ordering::Release);
            while GATE.load(Ordering::Relaxed) & CLOSED != 0 {
                std::thread::yield_now();
            }
        }
    }

    /// The gate held exclusively, from the prepare handler of a `fork` to
    /// the parent's or the child's handler.
    #[must_use]
    pub(crate) struct ClosedGate(());

    /// Takes the fork gate exclusively: no other thread holds a share, and
    /// none can take one, until [`open_in_parent`] or [`open_in_child`].
    ///
    /// The forking thread's own shares (a `fork` from an event hook that a
    /// trim pass runs) are not waited for: that thread is the one that
    /// comes along into the child and finishes what it holds them for.
    pub(crate) fn close_fork_gate() -> ClosedGate {
        let own = HELD.with(Cell::get);
        // One fork at a time. A thread that holds shares and waits here
        // (a fork from a hook while another thread forks) is parked: it
        // holds no lock of the crate (hooks run outside them), so the fork
        // under way need not wait for its shares, which would wait for it.
        if GATE.fetch_or(CLOSED, Ordering::Acquire) & CLOSED != 0 {
            PARKED.fetch_add(own, Ordering::AcqRel);
            while GATE.fetch_or(CLOSED, Ordering::Acquire) & CLOSED != 0 {
                std::thread::yield_now();
            }
            PARKED.fetch_sub(own, Ordering::AcqRel);
        }
        // Wait for the other holders to let go; newcomers step back.
        while GATE.load(Ordering::Acquire) & !CLOSED != own + PARKED.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        ClosedGate(())
    }

    /// Opens the gate again after the `fork`, in the parent.
    pub(crate) fn open_in_parent(gate: ClosedGate) {
        let _ = gate;
        GATE.fetch_and(!CLOSED, Ordering::Release);
    }

    /// Opens the gate again after the `fork`, in the child, where the only
    /// thread is the forking one and newcomers that stepped back in the
    /// parent did not come along.
    pub(crate) fn open_in_child(gate: ClosedGate) {
        let _ = gate;
        // The forking thread's own shares came along; they are let go as
        // usual. Parked threads did not come along.
        PARKED.store(0, Ordering::Release);
        GATE.store(HELD.with(Cell::get), Ordering::Release);
    }
}

#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) use fork_gate_imp::{
    ClosedGate, ForkGate, close_fork_gate, fork_gate, open_in_child, open_in_parent,
};

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
