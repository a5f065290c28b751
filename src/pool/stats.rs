//! The pool's counters, and `Pool::stats`: the snapshot of every tier,
//! thread cache and counter.

use super::PoolInner;
use crate::stats::{ClassStats, LargeStats, Stats};
use crate::sync::{Arc, AtomicU64, AtomicUsize, Ordering};
use crate::tier::thread_cache::{CacheState, ThreadCache};

impl PoolInner {
    pub(crate) fn stats(&self) -> Stats {
        let mut classes: Vec<ClassStats> = self
            .info
            .iter()
            .zip(self.shared.iter())
            .map(|(info, tier)| ClassStats {
                capacity: info.capacity,
                retained_buffers: tier.len(),
                ..ClassStats::default()
            })
            .collect();
        let caches: Vec<Arc<ThreadCache>> = self.registry.lock().clone();
        let mut thread_caches = 0;
        let mut credit = 0;
        // Closed caches were folded into the pool's counters already.
        PoolInner::for_each_open_cache(&caches, |state| {
            thread_caches += 1;
            credit += state.credit;
            for (class, (c, out)) in state.classes().iter().zip(classes.iter_mut()).enumerate() {
                out.thread_cache_hits += state.hits(class);
                out.returns += c.returns;
                out.retained_buffers += c.len();
            }
        });
        drop(caches);
        let mut hot_blocks = 0;
        for (class, (counters, out)) in self
            .counters
            .class
            .iter()
            .zip(classes.iter_mut())
            .enumerate()
        {
            counters.add_to(out);
            if self.info[class].large && self.large.is_hot(class) {
                out.retained_buffers += 1;
                hot_blocks += 1;
            }
        }
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = Stats {
            max_retained_bytes: self.retention.configured(),
            retention_limit_bytes: self.retention.limit(),
            reserved_bytes: self.retention.reserved(),
            credit_bytes: credit,
            oversize_allocations: load(&c.oversize_allocations),
            oversize_in_use_bytes: c.oversize_in_use_bytes.load(Ordering::Relaxed),
            trim_passes: load(&c.trim_passes),
            trimmed_bytes: load(&c.trimmed_bytes),
            released_bytes: load(&c.released_bytes),
            hook_panics: self.events.panics(),
            events_suppressed: self.events.suppressed(),
            thread_caches,
            ..Stats::default()
        };
        stats.in_use_bytes = stats.oversize_in_use_bytes;
        stats.in_use_buffers = c.oversize_in_use_buffers.load(Ordering::Relaxed);
        for class in &mut classes {
            class.finish();
            stats.retained_bytes += class.retained_bytes;
            stats.retained_buffers += class.retained_buffers;
            stats.in_use_bytes += class.in_use_bytes;
            stats.in_use_buffers += class.in_use_buffers;
        }
        stats.classes = classes;
        let large = self.large.stats();
        stats.large = LargeStats {
            idle_bytes: large.idle_bytes,
            hot_blocks,
            runs: large.runs,
            mappings: large.mappings,
            process_mappings: large.process_mappings,
            mapping_bound: large.mapping_bound,
            cut: large.counters.cut,
            assembled: large.counters.assembled,
            moves: large.counters.moves,
            moved_bytes: large.counters.moved_bytes,
            assembled_fresh_bytes: large.counters.assembled_fresh_bytes,
            trimmed_bytes: load(&c.large_trimmed_bytes),
        };
        stats.retained_bytes += stats.large.idle_bytes;
        // Every idle byte holds a reservation, so the reserved bytes bound
        // what is idle. The scan above is not atomic: mid-traffic, a block
        // that moves between tiers while it runs (a refill, a spill, a hot
        // block joining the runs) can be met twice. Quiescent, the bound
        // changes nothing (`reserved = retained + credit + page rounding`).
        stats.retained_bytes = stats.retained_bytes.min(stats.reserved_bytes);
        stats.adapters = self.adapters.snapshot();
        stats.labels = self.labels.stats(self.classes.sizes());
        self.limits.fill_stats(&mut stats);
        stats
    }
}

/// The traffic counters of one class kept by the pool: the slow paths, and
/// the folded counts of thread caches that were flushed or closed.
#[derive(Debug, Default)]
pub(super) struct ClassCounters {
    pub(crate) thread_cache_hits: AtomicU64,
    pub(crate) shared_hits: AtomicU64,
    pub(crate) fit_hits: AtomicU64,
    pub(crate) fit_grown_bytes: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) returns: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) trimmed: AtomicU64,
    pub(crate) detached: AtomicU64,
}

impl ClassCounters {
    /// Adds every counter into the matching fields of `out`.
    fn add_to(&self, out: &mut ClassStats) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.thread_cache_hits += load(&self.thread_cache_hits);
        out.shared_hits += load(&self.shared_hits);
        out.fit_hits += load(&self.fit_hits);
        out.fit_grown_bytes += load(&self.fit_grown_bytes);
        out.misses += load(&self.misses);
        out.returns += load(&self.returns);
        out.dropped_full += load(&self.dropped_full);
        out.trimmed += load(&self.trimmed);
        out.detached += load(&self.detached);
    }
}

/// A pool's counters (thread caches keep their own until they close).
#[derive(Debug)]
pub(super) struct PoolCounters {
    pub(crate) class: Box<[ClassCounters]>,
    oversize_allocations: AtomicU64,
    oversize_in_use_bytes: AtomicUsize,
    oversize_in_use_buffers: AtomicUsize,
    trim_passes: AtomicU64,
    trimmed_bytes: AtomicU64,
    pub(crate) released_bytes: AtomicU64,
    pub(crate) large_trimmed_bytes: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn new(classes: usize) -> Self {
        PoolCounters {
            class: (0..classes).map(|_| ClassCounters::default()).collect(),
            oversize_allocations: AtomicU64::new(0),
            oversize_in_use_bytes: AtomicUsize::new(0),
            oversize_in_use_buffers: AtomicUsize::new(0),
            trim_passes: AtomicU64::new(0),
            trimmed_bytes: AtomicU64::new(0),
            released_bytes: AtomicU64::new(0),
            large_trimmed_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn oversize_allocated(&self, size: usize) {
        self.oversize_allocations.fetch_add(1, Ordering::Relaxed);
        self.oversize_in_use_bytes
            .fetch_add(size, Ordering::Relaxed);
        self.oversize_in_use_buffers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn oversize_returned(&self, size: usize) {
        self.oversize_in_use_bytes
            .fetch_sub(size, Ordering::Relaxed);
        self.oversize_in_use_buffers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one trim pass that freed `bytes`.
    pub(crate) fn trimmed(&self, bytes: usize) {
        self.trim_passes.fetch_add(1, Ordering::Relaxed);
        self.trimmed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Folds a closing thread cache's counters into the pool's.
    pub(crate) fn absorb(&self, cache: &CacheState) {
        for (class, (total, mine)) in self.class.iter().zip(cache.classes()).enumerate() {
            total
                .thread_cache_hits
                .fetch_add(cache.hits(class), Ordering::Relaxed);
            total.returns.fetch_add(mine.returns, Ordering::Relaxed);
        }
    }
}
