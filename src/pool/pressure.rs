//! The pool's side of memory pressure: it samples through `limits` and
//! acts on the level changes that `limits` reports (retention, trimming,
//! the `Pressure` event).

use super::PoolInner;
use crate::event::Event;
use crate::limits::{Pressure, Transition};
use crate::sync::{Arc, Ordering};

impl PoolInner {
    /// Samples the container's memory now and acts on the level it gives.
    pub(crate) fn sample_memory(this: &Arc<PoolInner>) {
        let transition = this.limits.sample(this.footprint.load(Ordering::Relaxed));
        PoolInner::on_pressure(this, transition);
    }

    /// Notes an allocation of `bytes` about to be made (`reserved`: that
    /// admission reserved them already), and acts on the level change it
    /// may bring.
    pub(crate) fn note_allocation(this: &Arc<PoolInner>, bytes: usize, reserved: bool) {
        if let Some(t) =
            this.limits
                .note_allocation(this.footprint.load(Ordering::Relaxed), bytes, reserved)
        {
            PoolInner::on_pressure(this, Some(t));
        }
    }

    /// Acts on a change of the pressure level: the retention limit follows
    /// it (all of `max_retained_bytes` when normal, a quarter when
    /// elevated, nothing when critical), idle memory above it is freed,
    /// and the `Pressure` event goes out, with no lock held.
    pub(crate) fn on_pressure(this: &Arc<PoolInner>, transition: Option<Transition>) {
        let Some((from, to)) = transition else {
            return;
        };
        let fraction = match to {
            Pressure::Normal => 1.0,
            Pressure::Elevated => 0.25,
            Pressure::Critical => 0.0,
        };
        if this.retention.scale_limit(fraction) {
            PoolInner::shrink_to_limit(this);
        }
        if to == Pressure::Critical {
            // The global allocator's idle pages count in the working set
            // too.
            crate::global::release_idle();
        }
        this.events.emit(Event::Pressure { from, to });
    }
}

// === impl Pool (pressure) ===

impl crate::Pool {
    /// The memory pressure level the pool last derived from the
    /// container's working set ([`Pressure::Normal`] without a limit).
    ///
    /// A readiness probe that answers 503 while this is
    /// [`Pressure::Critical`] lets the load balancer stop sending while
    /// in-flight requests finish and memory comes back down, instead of the
    /// OOM killer restarting the pod.
    pub fn pressure(&self) -> Pressure {
        self.inner_arc().limits.level()
    }

    /// Samples the container's memory now (the trimmer does this every
    /// 100 ms) and returns the level.
    pub fn sample_memory(&self) -> Pressure {
        let inner = self.inner_arc();
        PoolInner::sample_memory(inner);
        inner.limits.level()
    }
}
