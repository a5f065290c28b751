//! The retention budget: how many idle bytes a pool may keep, across all
//! tiers, and the one counter that enforces it.
//!
//! Every idle block in the shared tier or a thread cache holds a
//! reservation of its capacity, and so does each thread cache's *credit*
//! (budget reserved in batches so that a return into a thread cache touches
//! no shared counter). Reserving is the only way to keep a block, so idle
//! memory never passes the limit. The limit itself moves: it is the
//! configured `max_retained_bytes`, lowered under memory pressure (see
//! `limits`).

use crate::sync::{AtomicUsize, Ordering};

/// The retention budget of one pool.
#[derive(Debug)]
pub(crate) struct Retention {
    /// Bytes reserved: idle blocks in every tier plus thread caches' credit.
    reserved: AtomicUsize,
    /// The limit in force: `configured`, or less under memory pressure.
    limit: AtomicUsize,
    /// `max_retained_bytes` as built.
    configured: usize,
}

impl Retention {
    pub(crate) fn new(configured: usize) -> Self {
        Retention {
            reserved: AtomicUsize::new(0),
            limit: AtomicUsize::new(configured),
            configured,
        }
    }

    /// Reserves `bytes` if the limit allows.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut current = self.reserved.load(Ordering::Relaxed);
        loop {
            // [1] Stop if the limit would be passed (checked: `bytes` is a
            //     class capacity times a small batch, but be safe).
            let Some(next) = current.checked_add(bytes).filter(|&n| n <= limit) else {
                return false;
            };
            // [2] Publish; on a race, retry with what the other thread left.
            //     Relaxed: the counter guards no other memory.
            match self.reserved.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back `bytes` of reservation (unreserves them).
    pub(crate) fn unreserve(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.reserved.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(
            before >= bytes,
            "unreserved {bytes} of {before} reserved bytes"
        );
    }

    /// Bytes reserved now (idle blocks and credit).
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The limit in force.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// `max_retained_bytes` as configured.
    pub(crate) fn configured(&self) -> usize {
        self.configured
    }

    /// Sets the limit in force to `fraction` of the configured one (memory
    /// pressure lowers it; 1.0 restores it). Returns whether more is reserved
    /// than the new limit allows, so the caller trims.
    pub(crate) fn scale_limit(&self, fraction: f64) -> bool {
        let limit = (self.configured as f64 * fraction.clamp(0.0, 1.0)) as usize;
        self.limit.store(limit, Ordering::Relaxed);
        self.reserved() > limit
    }
}
