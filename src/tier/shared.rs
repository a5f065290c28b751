//! The shared tier: one bounded multi-producer multi-consumer queue of idle
//! blocks per class.

use std::ptr::NonNull;

use crate::sync::{AtomicUsize, Ordering};

/// An idle block while it sits in a queue: the start of an allocation of the
/// class's capacity, owned by the queue.
struct Block(NonNull<u8>);

// SAFETY: a `Block` is the sole owner of an allocation of plain bytes, like a
// `Box<[u8]>`; moving it to another thread moves that ownership.
unsafe impl Send for Block {}

/// Idle blocks of one class, shared by all threads of a pool.
///
/// A lock-free segmented queue that allocates as it fills (an empty tier
/// costs a few words, not a preallocated array), bounded by a count.
pub(crate) struct SharedTier {
    #[cfg(not(tierpool_loom))]
    queue: crossbeam_queue::SegQueue<Block>,
    // loom cannot see inside crossbeam's atomics; a mutex-guarded deque with
    // the same push/pop contract stands in for the model.
    #[cfg(tierpool_loom)]
    queue: crate::sync::Mutex<std::collections::VecDeque<Block>>,
    /// Blocks queued or about to be (a push counts itself in first).
    len: AtomicUsize,
    /// The most blocks queued at once.
    capacity: usize,
    /// Successful pops since the last idle tick.
    pops: AtomicUsize,
    /// Queue length right after the last idle tick.
    len_at_tick: AtomicUsize,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

// === impl SharedTier ===

impl SharedTier {
    /// A queue that holds at most `capacity` (at least 1) blocks.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            #[cfg(not(tierpool_loom))]
            queue: crossbeam_queue::SegQueue::new(),
            #[cfg(tierpool_loom)]
            queue: crate::sync::Mutex::new(std::collections::VecDeque::new()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            pops: AtomicUsize::new(0),
            len_at_tick: AtomicUsize::new(0),
        }
    }

    /// Adds a block, or gives it back when the queue is full.
    pub(crate) fn push(&self, ptr: NonNull<u8>) -> Result<(), NonNull<u8>> {
        // Count first, so concurrent pushes cannot pass the bound together.
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Err(ptr);
        }
        // Inside the fork gate: a push cut short by a `fork` would leave its
        // slot reserved but never written, and every pop in the child would
        // wait for it for ever.
        #[cfg(not(tierpool_loom))]
        {
            let _gate = crate::sys::fork::fork_gate();
            self.queue.push(Block(ptr));
        }
        #[cfg(tierpool_loom)]
        self.queue.lock().push_back(Block(ptr));
        Ok(())
    }

    /// Takes the oldest block, if any.
    pub(crate) fn pop(&self) -> Option<NonNull<u8>> {
        // Inside the fork gate: a pop cut short by a `fork` would lose its
        // block in the child.
        #[cfg(not(tierpool_loom))]
        let ptr = {
            let _gate = crate::sys::fork::fork_gate();
            self.queue.pop().map(|Block(p)| p)
        };
        #[cfg(tierpool_loom)]
        let ptr = self.queue.lock().pop_front().map(|Block(p)| p);
        if ptr.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.pops.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    /// How many of the queued blocks have been idle since the last tick,
    /// and starts a new interval.
    ///
    /// The queue is FIFO, so pops take the oldest blocks first: of the
    /// `len_at_tick` blocks queued at the last tick, `pops` have been used
    /// since, and the rest, at the head of the queue, stayed idle throughout.
    /// Concurrent pushes only make the answer smaller (conservative).
    pub(crate) fn idle_since_tick(&self) -> usize {
        let pops = self.pops.swap(0, Ordering::Relaxed);
        self.len_at_tick
            .load(Ordering::Relaxed)
            .saturating_sub(pops)
    }

    /// Records the queue length after a tick's frees.
    pub(crate) fn mark_tick(&self) {
        self.len_at_tick.store(self.len(), Ordering::Relaxed);
    }

    /// How many blocks are queued (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed).min(self.capacity)
    }
}
