//! Statistics: a snapshot of a pool's memory and traffic ([`Pool::stats`](crate::Pool::stats)).

use std::fmt;

use crate::io::label::{AdapterStats, LabelStats};

/// A snapshot of a pool's memory and traffic, from [`Pool::stats`](crate::Pool::stats).
///
/// Exact when the pool is quiescent (no buffer operation in flight); during
/// traffic a figure may lag by one thread cache's worth. `Display` prints a
/// table with one row per class that has seen traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Idle capacity held in every tier (thread caches, shared tier, and
    /// the idle pages of the large tier), in bytes. Never above
    /// `reserved_bytes`, so never above `max_retained_bytes`, also in a
    /// snapshot taken during traffic.
    pub retained_bytes: usize,
    /// Retention budget reserved: `retained_bytes` plus the thread caches'
    /// credit (budget a thread holds for its next returns, reserved in
    /// batches so that a return touches no shared counter). Idle threads'
    /// credit goes back at the next idle tick, and at `trim()`.
    pub reserved_bytes: usize,
    /// Of `reserved_bytes`, the thread caches' credit.
    pub credit_bytes: usize,
    /// The retention limit in force: `max_retained_bytes`, lowered under
    /// memory pressure.
    pub retention_limit_bytes: usize,
    /// Idle buffers held in every tier (the large tier's hot blocks
    /// included). The large tier's runs are pages, not buffers: they are
    /// counted in `retained_bytes` and in [`large`](Self::large).
    pub retained_buffers: usize,
    /// Capacity handed out and not yet returned (oversize buffers included),
    /// in bytes.
    pub in_use_bytes: usize,
    /// Buffers handed out and not yet returned (oversize buffers included).
    pub in_use_buffers: usize,
    /// The retention cap this pool was built with.
    pub max_retained_bytes: usize,
    /// Requests above the largest class, served exactly and not pooled.
    pub oversize_allocations: u64,
    /// Of those, the bytes still in use.
    pub oversize_in_use_bytes: usize,
    /// Trim passes run (idle ticks, manual trims, the closing trim).
    pub trim_passes: u64,
    /// Bytes of idle buffers freed by trimming, all passes.
    pub trimmed_bytes: u64,
    /// Bytes whose pages went straight back to the OS when freed (mapped
    /// blocks, at and above `MMAP_THRESHOLD`, on Unix), by trims and frees.
    pub released_bytes: u64,
    /// Threads whose cache for this pool is alive.
    pub thread_caches: usize,
    /// Event callback calls that panicked (caught; the event was lost).
    pub hook_panics: u64,
    /// Events not delivered because the thread was already unwinding.
    pub events_suppressed: u64,
    /// The memory pressure level last seen.
    pub pressure: crate::Pressure,
    /// The container's memory at the last sample, if one was taken.
    pub memory: Option<crate::ContainerMemory>,
    /// The memory limit the pool steers by, in bytes (`None`: no limit).
    pub memory_limit_bytes: Option<u64>,
    /// Requests admission control refused (`try_get`, `get_timeout`,
    /// `acquire`).
    pub refused: u64,
    /// Requests that had to wait for memory before being served or refused.
    pub waited: u64,
    /// Bytes admitted and not allocated yet: set aside for
    /// [`Permit`](crate::Permit)s, and reserved by refusable requests on
    /// their way to the allocator.
    pub set_aside_bytes: usize,
    /// Requests waiting in admission's queue now (`get_timeout`, `acquire`,
    /// `admit`): the load a replica could not take, a signal to scale on.
    pub waiting: usize,
    /// One entry per class, smallest first.
    pub classes: Vec<ClassStats>,
    /// The large tier: the idle pages of the mapped classes (128 KiB and
    /// up on Unix), shared by all of them.
    pub large: LargeStats,
    /// What the adapters (`read_to_end`, writers) did, all labels included.
    pub adapters: AdapterStats,
    /// Per label of [`Pool::label`](crate::Pool::label): activity and the
    /// final-size distribution, so a dashboard shows which pipeline grows.
    pub labels: Vec<LabelStats>,
}

/// The large tier, in [`Stats::large`]: idle pages of the mapped classes,
/// kept as runs that any of them is cut from or assembled from, instead of
/// idle blocks of each class.
///
/// A request first takes its class's hot block, the one returned last,
/// if there is one (counted as a shared-tier hit); then the front of the
/// smallest idle run that holds it (`cut`, no system call); failing that, the largest runs are moved side
/// by side with `mremap` (`assembled`, `moves`, `moved_bytes`) and the rest
/// of the block is fresh (`assembled_fresh_bytes`, counted per class as
/// [`ClassStats::fit_grown_bytes`]). Fresh bytes are the pages a block may
/// fault for the first time: the estimate assumes the whole block is
/// written, and counts pages moved in as already faulted (they were
/// written by their previous user, or handed back by a trim of the
/// previous chunk in `read_to_end`, which then faults them again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LargeStats {
    /// Idle bytes in the runs (included in [`Stats::retained_bytes`]).
    pub idle_bytes: usize,
    /// Hot blocks: per class, the block returned last, kept whole for the
    /// class's next request (taken with one atomic swap). They are idle
    /// buffers of their class, counted in its
    /// [`retained_buffers`](ClassStats::retained_buffers).
    pub hot_blocks: usize,
    /// Idle runs (address ranges) they form.
    pub runs: usize,
    /// Mappings the tier tracks, idle or in use: each assembly adds some,
    /// trimming removes them.
    pub mappings: usize,
    /// Kernel mappings that the large tiers of every pool of the process
    /// keep together. Past [`mapping_bound`](Self::mapping_bound) no tier
    /// assembles, and a tier unmaps its idle pages before it maps.
    pub process_mappings: usize,
    /// The process-wide bound on those mappings: `TIERPOOL_MAX_MAPPINGS`,
    /// else a quarter of the kernel's `vm.max_map_count`.
    pub mapping_bound: usize,
    /// Blocks cut from an idle run.
    pub cut: u64,
    /// Blocks assembled from moved runs.
    pub assembled: u64,
    /// Ranges moved by `mremap` into assembled blocks.
    pub moves: u64,
    /// Bytes of idle pages moved into assembled blocks.
    pub moved_bytes: u64,
    /// Bytes of assembled blocks that no idle page covered.
    pub assembled_fresh_bytes: u64,
    /// Idle bytes unmapped by trimming (also in
    /// [`Stats::trimmed_bytes`] and [`Stats::released_bytes`]).
    pub trimmed_bytes: u64,
}

/// The figures of one size class, in [`Stats::classes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassStats {
    /// The class's capacity in bytes.
    pub capacity: usize,
    /// Requests served by an idle buffer:
    /// `thread_cache_hits + shared_hits + fit_hits`.
    pub hits: u64,
    /// Hits served by the requesting thread's own cache.
    pub thread_cache_hits: u64,
    /// Hits served by the shared tier (including requests of up to two classes
    /// below that borrowed an idle buffer of this class), or, for a mapped
    /// class, cut from one idle run of the large tier.
    pub shared_hits: u64,
    /// Hits served by idle pages of the large tier moved together with
    /// `mremap` (see [`LargeStats`]): no idle run held the block whole.
    pub fit_hits: u64,
    /// Bytes of fit hits that no idle page covered: fresh pages.
    pub fit_grown_bytes: u64,
    /// Requests that found no idle buffer and allocated one.
    pub misses: u64,
    /// Buffers returned (kept or freed).
    pub returns: u64,
    /// Returned or spilled buffers freed because the pool was full (its
    /// byte cap or this class's shared queue).
    pub dropped_full: u64,
    /// Idle buffers freed by trimming.
    pub trimmed: u64,
    /// Buffers taken out of the pool with `into_vec`.
    pub detached: u64,
    /// Idle buffers of this class held in the thread caches, the shared
    /// tier, or the large tier's hot slot (a mapped class's idle pages in
    /// runs are in [`Stats::large`]).
    pub retained_buffers: usize,
    /// Their capacity in bytes.
    pub retained_bytes: usize,
    /// Buffers of this class handed out and not yet returned.
    pub in_use_buffers: usize,
    /// Their capacity in bytes.
    pub in_use_bytes: usize,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "retained {} in {} buffers (cap {}), in use {} in {} buffers, \
             {} thread caches, {} oversize allocations, {} trim passes \
             ({} trimmed, {} released to the OS)",
            Mib(self.retained_bytes),
            self.retained_buffers,
            Mib(self.max_retained_bytes),
            Mib(self.in_use_bytes),
            self.in_use_buffers,
            self.thread_caches,
            self.oversize_allocations,
            self.trim_passes,
            Mib(self.trimmed_bytes as usize),
            Mib(self.released_bytes as usize),
        )?;
        writeln!(
            f,
            "{:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>12} {:>12}",
            "class",
            "tc hits",
            "sh hits",
            "fit",
            "misses",
            "returns",
            "full",
            "trimmed",
            "detached",
            "retained",
            "in use"
        )?;
        for c in self
            .classes
            .iter()
            .filter(|c| c.hits + c.misses + c.returns > 0)
        {
            writeln!(
                f,
                "{:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>12} {:>12}",
                Size(c.capacity),
                c.thread_cache_hits,
                c.shared_hits,
                c.fit_hits,
                c.misses,
                c.returns,
                c.dropped_full,
                c.trimmed,
                c.detached,
                Size(c.retained_bytes),
                Size(c.in_use_bytes),
            )?;
        }
        let l = &self.large;
        if l.cut + l.assembled + l.idle_bytes as u64 > 0 {
            writeln!(
                f,
                "large tier: {} in {} idle runs, {} hot blocks, {} mappings; {} cut, \
                 {} assembled ({} moves, {} moved, {} fresh), {} trimmed",
                Mib(l.idle_bytes),
                l.runs,
                l.hot_blocks,
                l.mappings,
                l.cut,
                l.assembled,
                l.moves,
                Mib(l.moved_bytes as usize),
                Mib(l.assembled_fresh_bytes as usize),
                Mib(l.trimmed_bytes as usize),
            )?;
        }
        let a = &self.adapters;
        if a.reads + a.errors + a.too_large > 0 {
            writeln!(
                f,
                "adapters: {} reads ({} failed, {} too large), {}, {} read calls, {} chunks, {:.3} s",
                a.reads,
                a.errors,
                a.too_large,
                Mib(a.bytes as usize),
                a.read_calls,
                a.chunks,
                a.time.as_secs_f64()
            )?;
        }
        if !self.labels.is_empty() {
            writeln!(
                f,
                "{:<24} {:>8} {:>12} {:>10} {:>10} {:>10} {:>12}",
                "label", "reads", "bytes", "p50", "p95", "max", "first chunk"
            )?;
            for l in &self.labels {
                writeln!(
                    f,
                    "{:<24} {:>8} {:>12} {:>10} {:>10} {:>10} {:>12}",
                    l.label,
                    l.activity.reads,
                    Mib(l.activity.bytes as usize).to_string(),
                    Size(l.p50),
                    Size(l.p95),
                    Size(l.max),
                    Size(l.first_chunk),
                )?;
            }
        }
        Ok(())
    }
}

/// Bytes as MiB with two decimals.
struct Mib(usize);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} MiB", self.0 as f64 / (1 << 20) as f64)
    }
}

/// A byte count in the largest binary unit that divides it, for class names.
struct Size(usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.0 {
            0 => "0".to_string(),
            n if n % (1 << 20) == 0 => format!("{}M", n >> 20),
            n if n % (1 << 10) == 0 => format!("{}K", n >> 10),
            n => n.to_string(),
        };
        f.pad(&s)
    }
}

/// What [`GlobalPool`](crate::GlobalPool)'s large tier holds and did,
/// process-wide (`GLOBAL.stats()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GlobalStats {
    /// Bytes handed out and not yet freed (whole pages).
    pub in_use_bytes: usize,
    /// Idle pages kept for reuse, in bytes: given back to the OS after a
    /// trim interval unused, or at once under critical pressure.
    pub idle_bytes: usize,
    /// Allocations served by the tier.
    pub allocations: u64,
    /// Of those, served by idle pages alone: no fresh page.
    pub reused: u64,
    /// Of those, assembled from idle pages moved together (`mremap`).
    pub assembled: u64,
    /// Reallocations that grew with `mremap` or shrank in place: no copy.
    pub remapped: u64,
    /// Bytes mapped fresh.
    pub fresh_bytes: u64,
    /// Idle bytes given back to the OS.
    pub trimmed_bytes: u64,
    /// Kernel mappings the tier keeps.
    pub mappings: usize,
}

impl fmt::Display for GlobalStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GlobalPool: {} in use, {} idle; {} allocations ({} reused, {} assembled), {} remapped; {} fresh, {} trimmed; {} mappings",
            Mib(self.in_use_bytes),
            Mib(self.idle_bytes),
            self.allocations,
            self.reused,
            self.assembled,
            self.remapped,
            Mib(self.fresh_bytes as usize),
            Mib(self.trimmed_bytes as usize),
            self.mappings
        )
    }
}

impl ClassStats {
    /// Fills in the derived fields from the counters and the retained count.
    pub(crate) fn finish(&mut self) {
        self.hits = self.thread_cache_hits + self.shared_hits + self.fit_hits;
        let out = (self.hits + self.misses) as i128;
        let back = (self.returns + self.detached) as i128;
        // Mid-traffic snapshots can see a return before the matching hit.
        self.in_use_buffers = (out - back).max(0) as usize;
        self.in_use_bytes = self.in_use_buffers * self.capacity;
        self.retained_bytes = self.retained_buffers * self.capacity;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(Size(4096).to_string(), "4K");
        assert_eq!(Size(64 << 20).to_string(), "64M");
        assert_eq!(Size(100).to_string(), "100");
        assert_eq!(Size(5 << 10).to_string(), "5K");
    }

    #[test]
    fn display_lists_active_classes_only() {
        let mut stats = Stats {
            max_retained_bytes: 1 << 20,
            ..Stats::default()
        };
        stats.classes.push(ClassStats {
            capacity: 4096,
            misses: 3,
            ..ClassStats::default()
        });
        stats.classes.push(ClassStats {
            capacity: 8192,
            ..ClassStats::default()
        });
        let text = stats.to_string();
        assert!(text.contains("4K"), "{text}");
        assert!(!text.contains("8K"), "{text}");
        assert!(text.contains("cap 1.00 MiB"), "{text}");
    }
}
