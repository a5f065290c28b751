//! The mappings that every large tier of the process keeps, counted
//! together, and the bound they steer by.
//!
//! The kernel refuses every `mmap` and `mremap` of the process past
//! `vm.max_map_count` mappings (65 530 by default), the allocator's and the
//! thread stacks' included. Each large tier records its regions (one a
//! kernel mapping, [`Extents`](super::Extents)); their changes are summed
//! here, so the bound is process-wide: past it no tier assembles (a move
//! splits mappings), and a tier about to map a fresh block unmaps its idle
//! pages first. Blocks in use are never touched, so the count can pass the
//! bound by what is in use; the bound leaves three quarters of the
//! kernel's limit to the rest of the process for that.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Mappings the large tiers keep, together (a counter, not a lock: the
/// bound is a steer, checked and crossed without ordering).
static MAPPINGS: AtomicUsize = AtomicUsize::new(0);
/// The bound, once computed (0: not yet).
static BOUND: AtomicUsize = AtomicUsize::new(0);

/// The kernel's default `vm.max_map_count`, where it cannot be read.
const DEFAULT_MAX_MAP_COUNT: usize = 65_530;
/// The fewest mappings the bound allows, whatever it is set to.
const MIN_BOUND: usize = 64;

/// The mappings the large tiers of this process keep now.
pub(crate) fn mappings() -> usize {
    MAPPINGS.load(Ordering::Relaxed)
}

/// The process-wide bound on the large tiers' mappings:
/// `TIERPOOL_MAX_MAPPINGS` if set (at least 64), else a quarter of the
/// kernel's `vm.max_map_count`. Read once, when the first pool is built
/// (not in a forked child's first allocation, where the environment's
/// lock may be held by a thread that did not come along).
pub(crate) fn mapping_bound() -> usize {
    match BOUND.load(Ordering::Relaxed) {
        0 => {
            let bound = read_bound();
            BOUND.store(bound, Ordering::Relaxed);
            bound
        }
        bound => bound,
    }
}

/// Whether the large tiers keep as many mappings as the bound allows. In
/// an allocation path, before any pool read the bound, the kernel's
/// default stands in (reading the environment there could wait on its
/// lock, held by the allocation's own caller).
pub(crate) fn at_bound() -> bool {
    let bound = match BOUND.load(Ordering::Relaxed) {
        0 => DEFAULT_MAX_MAP_COUNT / 4,
        bound => bound,
    };
    mappings() >= bound
}

fn read_bound() -> usize {
    if cfg!(miri) {
        return DEFAULT_MAX_MAP_COUNT / 4;
    }
    if let Some(set) = std::env::var("TIERPOOL_MAX_MAPPINGS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return set.max(MIN_BOUND);
    }
    let kernel = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_MAX_MAP_COUNT);
    (kernel / 4).max(MIN_BOUND)
}

/// A tier's share of [`MAPPINGS`]: held beside its regions, it brings the
/// process-wide count in step with them whenever they change.
#[derive(Debug, Default)]
pub(crate) struct MappingCount {
    counted: usize,
}

impl MappingCount {
    /// Counts `regions` as this tier's mappings now.
    pub(crate) fn set(&mut self, regions: usize) {
        if regions > self.counted {
            MAPPINGS.fetch_add(regions - self.counted, Ordering::Relaxed);
        } else if regions < self.counted {
            MAPPINGS.fetch_sub(self.counted - regions, Ordering::Relaxed);
        }
        self.counted = regions;
    }
}

impl Drop for MappingCount {
    /// A tier that goes takes its mappings out of the count (they are
    /// unmapped by then, or belong to blocks that free themselves).
    fn drop(&mut self) {
        self.set(0);
    }
}
