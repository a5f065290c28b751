//! Memory under a limit: the container's memory, the pressure level the pool
//! derives from it, and admission control.
//!
//! The pool samples the working set (cgroup usage − inactive page cache) on
//! the trimmer thread every 100 ms (`SAMPLE_INTERVAL`), and between samples
//! estimates it from its own allocations (the sampled working set plus what
//! the pool allocated since), so a burst of large allocations raises the
//! level at once, without a system call per allocation. A large miss
//! (1 MiB and up) also takes a real sample, at most every
//! 5 ms (`MIN_SAMPLE_GAP`).

mod admission;
mod cgroup;

use std::fmt;
use std::time::{Duration, Instant};

pub use cgroup::ContainerMemory;

use crate::event::Event;
use crate::pool::PoolInner;
use crate::sync::{Arc, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::{Error, Stats};

pub(crate) use admission::Waiters;
pub use admission::{Acquire, AdmitFuture, Permit};

/// How often the trimmer thread samples the container's memory for a pool
/// with a memory limit.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest gap between two samples taken on large misses.
pub(crate) const MIN_SAMPLE_GAP: Duration = Duration::from_millis(5);
/// Misses of at least this many bytes may take a sample.
const LARGE_MISS: usize = 1 << 20;

/// The memory limit a pool steers by.
///
/// ```
/// use tierpool::{MemoryLimit, Pool};
/// let pool = Pool::builder().memory_limit(MemoryLimit::Bytes(512 << 20)).build();
/// # drop(pool);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryLimit {
    /// The memory cgroup's limit (the smallest of it and its ancestors'),
    /// read when the pool is built; no limit when there is none or no
    /// cgroup can be read. The default.
    #[default]
    Container,
    /// This many bytes of working set: the cgroup's working set where one
    /// can be read, otherwise the process's resident memory.
    Bytes(usize),
    /// No limit: no sampling, no pressure.
    Unlimited,
}

/// How close the working set is to the memory limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    /// Below the elevated threshold (or no limit).
    #[default]
    Normal,
    /// Past the elevated threshold: the pool keeps a quarter of its
    /// retention cap and frees idle memory above it now.
    Elevated,
    /// Past the critical threshold: the pool keeps nothing (returns free at
    /// once), and admission refuses new memory. Time to turn unready.
    Critical,
}

impl Pressure {
    /// `"normal"`, `"elevated"` or `"critical"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Elevated => "elevated",
            Pressure::Critical => "critical",
        }
    }

    /// 0, 1 or 2 (the `tierpool_pressure` gauge).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Pressure {
        match v {
            0 => Pressure::Normal,
            1 => Pressure::Elevated,
            _ => Pressure::Critical,
        }
    }
}

impl fmt::Display for Pressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The working-set fractions of the memory limit at which pressure rises.
///
/// Defaults: elevated at 0.75, critical at 0.90. A level is left again only
/// when the working set falls [`HYSTERESIS`](Thresholds::HYSTERESIS) below
/// its threshold, so it does not flap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    elevated: f64,
    critical: f64,
}

impl Thresholds {
    /// How far below a threshold the working set must fall to leave its
    /// level: 0.05 of the limit.
    pub const HYSTERESIS: f64 = 0.05;

    /// Thresholds at these fractions of the limit. Values are clamped to
    /// `0.1..=1.0`, and `critical` to at least `elevated`; NaN takes the
    /// default.
    pub fn new(elevated: f64, critical: f64) -> Thresholds {
        let fix = |v: f64, default: f64| {
            if v.is_nan() {
                default
            } else {
                v.clamp(0.1, 1.0)
            }
        };
        let elevated = fix(elevated, 0.75);
        Thresholds {
            elevated,
            critical: fix(critical, 0.90).max(elevated),
        }
    }

    /// The elevated threshold.
    pub fn elevated(&self) -> f64 {
        self.elevated
    }

    /// The critical threshold.
    pub fn critical(&self) -> f64 {
        self.critical
    }

    /// The level for `working_set` of `limit`, given the current level.
    fn level(&self, working_set: u64, limit: u64, current: Pressure) -> Pressure {
        let f = working_set as f64 / limit as f64;
        let h = Thresholds::HYSTERESIS;
        let critical =
            f >= self.critical || (current == Pressure::Critical && f >= self.critical - h);
        let elevated =
            f >= self.elevated || (current >= Pressure::Elevated && f >= self.elevated - h);
        if critical {
            Pressure::Critical
        } else if elevated {
            Pressure::Elevated
        } else {
            Pressure::Normal
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::new(0.75, 0.90)
    }
}

/// What [`Pool::read_file`](crate::Pool::read_file) and
/// [`Pool::write_file`](crate::Pool::write_file) do with the page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageCache {
    /// Drop the file's pages from the page cache once read or written (and
    /// flushed), so they do not stay in the container's working set as
    /// active page cache. The default.
    #[default]
    Drop,
    /// Leave the page cache alone (a file read again soon, such as a
    /// template).
    Keep,
}

/// The limits part of a `PoolBuilder`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitsConfig {
    pub(crate) limit: MemoryLimit,
    pub(crate) thresholds: Thresholds,
    pub(crate) max_in_use: Option<usize>,
    pub(crate) page_cache: PageCache,
}

/// A pool's view of the memory limit, its pressure level and its admission
/// state.
#[derive(Debug)]
pub(crate) struct Limits {
    config: LimitsConfig,
    /// The limit in bytes; 0 when there is none.
    limit: u64,
    level: std::sync::atomic::AtomicU8,
    /// The working set at the last sample.
    ws_at_sample: AtomicU64,
    /// The pool's footprint at the last sample.
    footprint_at_sample: AtomicUsize,
    /// Nanoseconds since `epoch` of the last sample (0: none yet).
    sampled_at: AtomicU64,
    epoch: Instant,
    last: Mutex<Option<ContainerMemory>>,
    refused: AtomicU64,
    waited: AtomicU64,
    /// Bytes set aside for admitted requests ([`Permit`]s) and not yet
    /// taken: counted as if allocated.
    aside: AtomicUsize,
    /// Serialises an admission's check with its setting aside.
    admitting: Mutex<()>,
    pub(crate) waiters: Waiters,
}

impl Limits {
    pub(crate) fn new(config: LimitsConfig) -> Limits {
        let (limit, last) = match config.limit {
            MemoryLimit::Unlimited => (0, None),
            MemoryLimit::Bytes(n) => (n as u64, read_memory()),
            MemoryLimit::Container => {
                let mem = read_memory();
                (mem.as_ref().and_then(|m| m.limit).unwrap_or(0), mem)
            }
        };
        Limits {
            limit,
            level: std::sync::atomic::AtomicU8::new(0),
            ws_at_sample: AtomicU64::new(last.as_ref().map_or(0, |m| m.working_set)),
            footprint_at_sample: AtomicUsize::new(0),
            sampled_at: AtomicU64::new(0),
            epoch: Instant::now(),
            last: Mutex::new(last),
            refused: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            aside: AtomicUsize::new(0),
            admitting: Mutex::new(()),
            waiters: Waiters::default(),
            config,
        }
    }

    /// How often the trimmer should sample for this pool (`None`: no limit).
    /// Read by the trimmer thread, which loom and miri builds do not have.
    #[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
    pub(crate) fn sample_interval(&self) -> Option<Duration> {
        (self.limit > 0).then_some(SAMPLE_INTERVAL)
    }

    pub(crate) fn page_cache(&self) -> PageCache {
        self.config.page_cache
    }

    /// The pressure level now.
    #[inline]
    pub(crate) fn level(&self) -> Pressure {
        Pressure::from_u8(self.level.load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn is_critical(&self) -> bool {
        self.level() == Pressure::Critical
    }

    /// Reads the container's memory now and acts on the level it gives.
    pub(crate) fn sample(&self, pool: &Arc<PoolInner>) {
        if self.limit == 0 {
            return;
        }
        self.sampled_at.store(
            self.epoch.elapsed().as_nanos().max(1) as u64,
            Ordering::Relaxed,
        );
        let Some(mem) = read_memory_for(self.config.limit) else {
            return;
        };
        self.ws_at_sample.store(mem.working_set, Ordering::Relaxed);
        self.footprint_at_sample
            .store(pool.footprint.load(Ordering::Relaxed), Ordering::Relaxed);
        let level = self
            .config
            .thresholds
            .level(mem.working_set, self.limit, self.level());
        *self.last.lock() = Some(mem);
        self.set_level(pool, level);
        if !self.waiters.is_empty() {
            self.waiters.wake_head();
        }
    }

    /// The working set now, estimated: the last sample, plus what the pool
    /// allocated since (frees since are not subtracted: the allocator may
    /// not have given them back), plus what admitted requests may still
    /// take.
    fn estimate(&self, pool: &PoolInner, extra: usize) -> u64 {
        let grown = pool
            .footprint
            .load(Ordering::Relaxed)
            .saturating_sub(self.footprint_at_sample.load(Ordering::Relaxed));
        let aside = self.aside.load(Ordering::Relaxed);
        self.ws_at_sample
            .load(Ordering::Relaxed)
            .saturating_add(grown.saturating_add(aside).saturating_add(extra) as u64)
    }

    /// Called before the pool allocates `bytes`: a large miss may take a
    /// sample; every miss raises the level if the estimate passes a
    /// threshold.
    pub(crate) fn note_allocation(&self, pool: &Arc<PoolInner>, bytes: usize) {
        if self.limit == 0 {
            return;
        }
        if bytes >= LARGE_MISS {
            let now = self.epoch.elapsed().as_nanos() as u64;
            let last = self.sampled_at.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= MIN_SAMPLE_GAP.as_nanos() as u64 {
                self.sample(pool);
            }
        }
        let estimate = self.estimate(pool, bytes);
        let level = self
            .config
            .thresholds
            .level(estimate, self.limit, self.level());
        if level > self.level() {
            self.set_level(pool, level);
        }
    }

    /// Called when the pool frees or queues memory: wakes the first
    /// admission waiter, if any.
    #[inline]
    pub(crate) fn note_return(&self) {
        if !self.waiters.is_empty() {
            self.waiters.wake_head();
        }
    }

    fn set_level(&self, pool: &Arc<PoolInner>, level: Pressure) {
        let before = Pressure::from_u8(self.level.swap(level as u8, Ordering::Relaxed));
        if before == level {
            return;
        }
        let fraction = match level {
            Pressure::Normal => 1.0,
            Pressure::Elevated => 0.25,
            Pressure::Critical => 0.0,
        };
        if pool.retention.scale_limit(fraction) {
            PoolInner::shrink_to_limit(pool);
        }
        pool.events.emit(Event::Pressure {
            from: before,
            to: level,
        });
    }

    /// Admission: may the pool allocate `bytes` more for a refusable
    /// request?
    pub(crate) fn admit(&self, pool: &Arc<PoolInner>, bytes: usize) -> Result<(), Error> {
        if self.limit > 0 && self.would_pass_critical(pool, bytes) {
            // The pool's own idle memory counts in the working set: free it
            // and look again (a fresh sample, not the estimate, which does
            // not see frees) before refusing.
            PoolInner::trim(pool, crate::TrimReason::Pressure);
            self.sample(pool);
            if self.would_pass_critical(pool, bytes) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::MemoryPressure {
                    requested: bytes,
                    working_set: self.estimate(pool, 0),
                    limit: self.limit,
                });
            }
        }
        if let Some(budget) = self.config.max_in_use {
            let held = || {
                pool.footprint
                    .load(Ordering::Relaxed)
                    .saturating_add(self.aside.load(Ordering::Relaxed))
            };
            if held().saturating_add(bytes) > budget {
                // Idle memory counts against the budget only until it is
                // needed: free it before refusing.
                PoolInner::trim(pool, crate::TrimReason::Pressure);
            }
            let held = held();
            if held.saturating_add(bytes) > budget {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::OverBudget {
                    requested: bytes,
                    in_use: held,
                    budget,
                });
            }
        }
        Ok(())
    }

    /// Refuses at once a request that could never be admitted: more than
    /// the in-use budget by itself.
    pub(crate) fn check_fits(&self, bytes: usize) -> Result<(), Error> {
        match self.config.max_in_use {
            Some(budget) if bytes > budget => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Error::OverBudget {
                    requested: bytes,
                    in_use: 0,
                    budget,
                })
            }
            _ => Ok(()),
        }
    }

    /// Admission for a whole request: checks and sets `bytes` aside as one
    /// step, so two requests cannot both take the last room.
    pub(crate) fn admit_aside(&self, pool: &Arc<PoolInner>, bytes: usize) -> Result<(), Error> {
        let _one_at_a_time = self.admitting.lock();
        self.admit(pool, bytes)?;
        self.aside.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back `bytes` an admitted request set aside.
    pub(crate) fn shrink_aside(&self, bytes: usize) {
        if bytes > 0 {
            self.aside.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Whether allocating `bytes` more would take the estimated working set
    /// to the critical threshold (or pressure is critical already).
    fn would_pass_critical(&self, pool: &PoolInner, bytes: usize) -> bool {
        let critical = (self.limit as f64 * self.config.thresholds.critical) as u64;
        self.is_critical() || self.estimate(pool, bytes) >= critical
    }

    pub(crate) fn count_wait(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fill_stats(&self, stats: &mut Stats) {
        stats.pressure = self.level();
        stats.memory = self.last.lock().clone();
        stats.memory_limit_bytes = (self.limit > 0).then_some(self.limit);
        stats.refused = self.refused.load(Ordering::Relaxed);
        stats.waited = self.waited.load(Ordering::Relaxed);
        stats.set_aside_bytes = self.aside.load(Ordering::Relaxed);
    }
}

/// The container's memory, if it can be read (never under miri, which
/// isolates the file system).
fn read_memory() -> Option<ContainerMemory> {
    if cfg!(miri) {
        return None;
    }
    ContainerMemory::read().ok()
}

/// The memory to steer by: the cgroup's, or for a `Bytes` limit without a
/// cgroup, the process's resident memory.
fn read_memory_for(limit: MemoryLimit) -> Option<ContainerMemory> {
    match read_memory() {
        Some(mem) => Some(mem),
        None if matches!(limit, MemoryLimit::Bytes(_)) && !cfg!(miri) => {
            let rss = cgroup::process_rss()?;
            Some(ContainerMemory {
                usage: rss,
                working_set: rss,
                anon: rss,
                ..ContainerMemory::default()
            })
        }
        None => None,
    }
}

// === impl Pool (limits) ===

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
        inner.limits.sample(inner);
        inner.limits.level()
    }
}
