//! The fork gate, below every lock of the crate (`sync::Mutex` and
//! `SpinLock` hold a share of it), so nothing here may use them.

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
mod imp {
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
pub(crate) use imp::{
    ClosedGate, ForkGate, close_fork_gate, fork_gate, open_in_child, open_in_parent,
};

/// No `fork` under loom or miri: the gate is nothing.
#[cfg(any(tierpool_loom, miri))]
pub(crate) fn fork_gate() {}
