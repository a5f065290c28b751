//! The shared tier: one bounded multi-producer multi-consumer queue per class.

use std::ptr::NonNull;

use crate::sync::{AtomicUsize, Ordering};

/// An idle buffer's memory while it sits in a queue.
///
/// The pointer is the start of an allocation of the class's capacity; the
/// queue owns it exclusively.
struct Block(NonNull<u8>);

// SAFETY: a `Block` is the sole owner of a heap allocation of plain bytes,
// like a `Box<[u8]>`; moving it to another thread moves that ownership.
unsafe impl Send for Block {}

/// Idle buffers of one class, shared by all threads of a pool.
pub(crate) struct SharedTier {
    #[cfg(not(loom))]
    queue: crossbeam_queue::ArrayQueue<Block>,
    // loom cannot see inside crossbeam's atomics; a mutex-guarded deque with
    // the same bounded push/pop contract stands in for the model.
    #[cfg(loom)]
    queue: crate::sync::Mutex<std::collections::VecDeque<Block>>,
    #[cfg(loom)]
    capacity: usize,
    /// Successful pops since the last idle tick.
    pops: AtomicUsize,
    /// Queue length right after the last idle tick.
    len_at_tick: AtomicUsize,
}

// === impl SharedTier ===

impl SharedTier {
    /// A queue that holds at most `capacity` (at least 1) buffers.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            #[cfg(not(loom))]
            queue: crossbeam_queue::ArrayQueue::new(capacity),
            #[cfg(loom)]
            queue: crate::sync::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            #[cfg(loom)]
            capacity,
            pops: AtomicUsize::new(0),
            len_at_tick: AtomicUsize::new(0),
        }
    }

    /// Adds a buffer, or gives it back when the queue is full.
    #[inline]
    pub(crate) fn push(&self, ptr: NonNull<u8>) -> Result<(), NonNull<u8>> {
        #[cfg(not(loom))]
        return self.queue.push(Block(ptr)).map_err(|Block(p)| p);
        #[cfg(loom)]
        {
            let mut q = self.queue.lock();
            if q.len() == self.capacity {
                return Err(ptr);
            }
            q.push_back(Block(ptr));
            Ok(())
        }
    }

    /// Takes the oldest buffer, if any.
    #[inline]
    pub(crate) fn pop(&self) -> Option<NonNull<u8>> {
        #[cfg(not(loom))]
        let ptr = self.queue.pop().map(|Block(p)| p);
        #[cfg(loom)]
        let ptr = self.queue.lock().pop_front().map(|Block(p)| p);
        if ptr.is_some() {
            self.pops.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    /// How many of the queued buffers have been idle since the last tick,
    /// and starts a new interval.
    ///
    /// The queue is FIFO, so pops take the oldest buffers first: of the
    /// `len_at_tick` buffers queued at the last tick, `pops` have been used
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

    /// How many buffers are queued (a snapshot).
    pub(crate) fn len(&self) -> usize {
        #[cfg(not(loom))]
        return self.queue.len();
        #[cfg(loom)]
        return self.queue.lock().len();
    }
}
