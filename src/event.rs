use std::fmt;

/// Something the pool did that an application may want to count: handed to
/// the callback given to [`PoolBuilder::on_event`](crate::PoolBuilder::on_event).
///
/// Events come from the slow paths only (allocation, freeing, trimming); a
/// thread-cache hit or return emits nothing. With no callback set, emitting
/// costs one branch on those slow paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The pool asked the allocator for a new buffer.
    Allocated {
        /// The buffer's capacity in bytes.
        capacity: usize,
        /// Why no pooled buffer was used.
        reason: AllocReason,
    },
    /// A buffer went back to the allocator instead of into the pool.
    Dropped {
        /// The buffer's capacity in bytes.
        capacity: usize,
        /// Why it was not kept.
        reason: DropReason,
    },
    /// One trim pass finished.
    Trimmed {
        /// Buffers freed by this pass.
        buffers: usize,
        /// Their capacity in bytes.
        bytes: usize,
        /// What started the pass.
        reason: TrimReason,
    },
}

/// Why a buffer was allocated rather than reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocReason {
    /// Its class had no idle buffer in any tier.
    Miss,
    /// The request was above the largest class; such buffers are never pooled.
    Oversize,
}

/// Why a returned buffer was freed rather than kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Keeping it would have passed `max_retained_bytes` or overflowed the
    /// shared tier's queue for its class.
    PoolFull,
    /// It was above the largest class.
    Oversize,
    /// Every handle of its pool had been dropped.
    PoolClosed,
}

/// What started a trim pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrimReason {
    /// [`Pool::trim`](crate::Pool::trim) was called.
    Manual,
    /// The pool's trim interval passed: buffers idle through a whole
    /// interval were freed.
    Idle,
    /// A miss found more idle than the demand cap allows, and freed
    /// idle buffers of other classes before allocating (the demand cap).
    Demand,
    /// The last handle of the pool was dropped.
    PoolClosed,
}

/// The callback type, boxed once at build time.
pub(crate) type EventHook = Box<dyn Fn(&Event) + Send + Sync + 'static>;

/// A `Debug` stand-in for the optional callback.
pub(crate) struct HookDebug<'a>(pub(crate) &'a Option<EventHook>);

impl fmt::Debug for HookDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<callback>)"
        } else {
            "None"
        })
    }
}
