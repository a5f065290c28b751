//! Events: what the pool did, for telemetry callbacks ([`PoolBuilder::on_event`](crate::PoolBuilder::on_event)).

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
    /// A buffer of a mapped class (128 KiB and up on Unix) was assembled
    /// from idle pages of the large tier moved side by side (`mremap`),
    /// because no idle run held it whole: a reuse, with only what the idle
    /// pages did not cover faulted fresh. Counted in
    /// [`ClassStats::fit_hits`](crate::ClassStats::fit_hits).
    Assembled {
        /// The buffer's capacity in bytes.
        capacity: usize,
        /// Bytes of idle pages moved into it.
        moved: usize,
        /// Bytes mapped and faulted fresh.
        fresh: usize,
    },
    /// A buffer went back to the allocator instead of into the pool.
    Dropped {
        /// The buffer's capacity in bytes.
        capacity: usize,
        /// Why it was not kept.
        reason: DropReason,
    },
    /// The container's memory pressure changed level.
    Pressure {
        /// The level before.
        from: crate::Pressure,
        /// The level now.
        to: crate::Pressure,
    },
    /// One trim pass finished.
    Trimmed {
        /// Buffers freed by this pass (the large tier's idle pages are not
        /// buffers: they count in `bytes` only).
        buffers: usize,
        /// Bytes freed: the buffers' capacity and the large tier's pages.
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
    /// The container's memory is under critical pressure: nothing is kept.
    Pressure,
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
    /// Memory pressure lowered the retention limit, and idle buffers
    /// above it were freed.
    Pressure,
    /// The last handle of the pool was dropped.
    PoolClosed,
    /// The large tiers of the process keep as many kernel mappings as they
    /// may (see the crate docs, "Failure behaviour"): this pool's idle
    /// pages were unmapped before it mapped a fresh block.
    Mappings,
}

impl Event {
    /// A stable snake_case name for the event's kind (`"allocated"`,
    /// `"assembled"`, `"dropped"`, `"pressure"`, `"trimmed"`), for logs and
    /// metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Allocated { .. } => "allocated",
            Event::Assembled { .. } => "assembled",
            Event::Dropped { .. } => "dropped",
            Event::Pressure { .. } => "pressure",
            Event::Trimmed { .. } => "trimmed",
        }
    }

    /// A stable snake_case name for the event's reason (`"miss"`,
    /// `"pool_full"`, `"idle"`, …; `"fit"` for an assembly), or the new
    /// level of a `Pressure` event.
    pub fn reason(&self) -> &'static str {
        match self {
            Event::Allocated { reason, .. } => reason.as_str(),
            Event::Assembled { .. } => "fit",
            Event::Dropped { reason, .. } => reason.as_str(),
            Event::Pressure { to, .. } => to.as_str(),
            Event::Trimmed { reason, .. } => reason.as_str(),
        }
    }
}

impl AllocReason {
    /// A stable snake_case name: `"miss"` or `"oversize"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocReason::Miss => "miss",
            AllocReason::Oversize => "oversize",
        }
    }
}

impl DropReason {
    /// A stable snake_case name: `"pool_full"`, `"oversize"`,
    /// `"pool_closed"` or `"pressure"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::PoolFull => "pool_full",
            DropReason::Oversize => "oversize",
            DropReason::PoolClosed => "pool_closed",
            DropReason::Pressure => "pressure",
        }
    }
}

impl TrimReason {
    /// A stable snake_case name: `"manual"`, `"idle"`, `"pressure"` or
    /// `"pool_closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrimReason::Manual => "manual",
            TrimReason::Idle => "idle",
            TrimReason::Pressure => "pressure",
            TrimReason::PoolClosed => "pool_closed",
            TrimReason::Mappings => "mappings",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Allocated { capacity, reason } => {
                write!(f, "allocated {capacity} bytes ({})", reason.as_str())
            }
            Event::Assembled {
                capacity,
                moved,
                fresh,
            } => write!(
                f,
                "assembled {capacity} bytes from idle pages ({moved} moved, {fresh} fresh)"
            ),
            Event::Dropped { capacity, reason } => {
                write!(f, "dropped {capacity} bytes ({})", reason.as_str())
            }
            Event::Pressure { from, to } => {
                write!(f, "memory pressure {} -> {}", from.as_str(), to.as_str())
            }
            Event::Trimmed {
                buffers,
                bytes,
                reason,
            } => write!(
                f,
                "trimmed {buffers} buffers, {bytes} bytes ({})",
                reason.as_str()
            ),
        }
    }
}

/// The callback type, boxed once at build time.
pub(crate) type EventHook = Box<dyn Fn(&Event) + Send + Sync + 'static>;

/// A pool's event callback, and what happened to the calls that failed.
///
/// The policy: **a panicking callback is caught and counted**
/// ([`Stats::hook_panics`](crate::Stats::hook_panics)), the event is lost,
/// and nothing else changes. Every call site emits only after the pool's
/// books are right (the block is kept or freed, the counts are moved), so
/// a panic can lose an event but never a block or a count. While the thread
/// is already unwinding (a buffer dropped during a panic), the callback is
/// not called at all, since a second panic would abort the process; such
/// events are counted in [`Stats::events_suppressed`](crate::Stats::events_suppressed).
#[derive(Default)]
pub(crate) struct Events {
    hook: Option<EventHook>,
    panics: crate::sync::AtomicU64,
    suppressed: crate::sync::AtomicU64,
}

impl Events {
    pub(crate) fn new(hook: Option<EventHook>) -> Self {
        Events {
            hook,
            ..Events::default()
        }
    }

    /// Whether there is a callback at all (so callers can skip building
    /// events).
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.hook.is_some()
    }

    /// Calls the callback, if any, catching a panic.
    #[inline]
    pub(crate) fn emit(&self, event: Event) {
        if let Some(hook) = &self.hook {
            self.call(hook, &event);
        }
    }

    #[cold]
    fn call(&self, hook: &EventHook, event: &Event) {
        use crate::sync::Ordering::Relaxed;
        if std::thread::panicking() {
            self.suppressed.fetch_add(1, Relaxed);
            return;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event)));
        if let Err(payload) = result {
            self.panics.fetch_add(1, Relaxed);
            // A payload whose own drop panics must not escape either.
            if let Err(inner) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
            {
                std::mem::forget(inner);
            }
        }
    }

    /// Callback calls that panicked.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(crate::sync::Ordering::Relaxed)
    }

    /// Events not delivered because the thread was unwinding.
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(crate::sync::Ordering::Relaxed)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.hook.is_some() {
            "Some(<callback>)"
        } else {
            "None"
        })
    }
}
