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

mod cgroup;
mod waiters;

use std::fmt;
use std::time::{Duration, Instant};

pub use cgroup::{ContainerMemory, MemoryEvents, PressureStall};

use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::{Error, Stats};

pub(crate) use waiters::{Waiters, poll_waiting, wait_blocking};

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

    /// The level for `working_set` of `limit`, given the current level;
    /// at least elevated at or above `high` (the cgroup's soft limit).
    fn level(
        &self,
        working_set: u64,
        limit: u64,
        high: Option<u64>,
        current: Pressure,
    ) -> Pressure {
        let f = working_set as f64 / limit as f64;
        let h = Thresholds::HYSTERESIS;
        let critical =
            f >= self.critical || (current == Pressure::Critical && f >= self.critical - h);
        let over_high = high.is_some_and(|high| working_set >= high);
        let elevated = over_high
            || f >= self.elevated
            || (current >= Pressure::Elevated && f >= self.elevated - h);
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
    /// A file the memory is read from instead of the cgroup
    /// ([`PoolBuilder::memory_file`](crate::PoolBuilder::memory_file)).
    pub(crate) file: Option<std::path::PathBuf>,
}

/// A change of the pressure level, from the first to the second, for the
/// pool to act on (retention, trimming, the `Pressure` event).
pub(crate) type Transition = (Pressure, Pressure);

/// A pool's view of the memory limit, its pressure level and its admission
/// state.
///
/// It decides and never acts: a sample or an allocation returns the
/// [`Transition`] it caused, and admission returns a reservation or a
/// refusal; the pool trims, emits events and wakes. So no user code (an
/// event hook) ever runs while this holds anything.
#[derive(Debug)]
pub(crate) struct Limits {
    config: LimitsConfig,
    /// The limit in bytes; 0 when there is none. Read again on every
    /// sample (a container resized in place), unless set in bytes.
    limit: AtomicU64,
    /// The cgroup's soft limit at the last sample (0: none).
    high: AtomicU64,
    level: std::sync::atomic::AtomicU8,
    /// The working set at the last sample.
    ws_at_sample: AtomicU64,
    /// The pool's footprint at the last sample.
    footprint_at_sample: AtomicUsize,
    /// The global allocator's footprint at the last sample.
    global_at_sample: AtomicUsize,
    /// Nanoseconds since `epoch` of the last sample (0: none yet).
    sampled_at: AtomicU64,
    epoch: Instant,
    last: Mutex<Option<ContainerMemory>>,
    refused: AtomicU64,
    waited: AtomicU64,
    /// Bytes admitted and not yet allocated, counted as if allocated: what
    /// [`Permit`]s set aside, and each refusable request's capacity from
    /// its admission until its block is counted in the footprint. Taken by
    /// compare-and-swap against the limit and the budget, so two requests
    /// cannot both take the last room.
    reserved: AtomicUsize,
    pub(crate) waiters: Waiters,
}

/// Bytes reserved by admission ([`Limits::try_reserve`]): given back when
/// dropped, or kept as a permit's set-aside ([`Reserved::keep`]).
#[must_use]
#[derive(Debug)]
pub(crate) struct Reserved<'a> {
    limits: &'a Limits,
    bytes: usize,
}

impl Reserved<'_> {
    /// Keeps the bytes reserved past this value (a permit's set-aside,
    /// given back through [`Limits::unreserve`]); returns them.
    pub(crate) fn keep(self) -> usize {
        let bytes = self.bytes;
        std::mem::forget(self);
        bytes
    }
}

impl Drop for Reserved<'_> {
    /// Gives the reservation back: the request was refused further on, or
    /// its block is counted in the footprint now.
    fn drop(&mut self) {
        self.limits.unreserve(self.bytes);
    }
}

impl Limits {
    pub(crate) fn new(config: LimitsConfig) -> Limits {
        let last = read_memory_for(&config);
        let limit = match (config.limit, &config.file) {
            (_, Some(_)) | (MemoryLimit::Container, None) => {
                last.as_ref().and_then(|m| m.limit).unwrap_or(0)
            }
            (MemoryLimit::Bytes(n), None) => n as u64,
            (MemoryLimit::Unlimited, None) => 0,
        };
        Limits {
            limit: AtomicU64::new(limit),
            high: AtomicU64::new(last.as_ref().and_then(|m| m.high).unwrap_or(0)),
            level: std::sync::atomic::AtomicU8::new(0),
            ws_at_sample: AtomicU64::new(last.as_ref().map_or(0, |m| m.working_set)),
            footprint_at_sample: AtomicUsize::new(0),
            global_at_sample: AtomicUsize::new(crate::global::footprint()),
            sampled_at: AtomicU64::new(0),
            epoch: Instant::now(),
            last: Mutex::new(last),
            refused: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            reserved: AtomicUsize::new(0),
            waiters: Waiters::default(),
            config,
        }
    }

    /// The limit in bytes now; 0 when there is none.
    #[inline]
    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether the limit comes from a reading (the cgroup, or a file), and
    /// so is read again on every sample.
    fn limit_is_read(&self) -> bool {
        self.config.file.is_some() || self.config.limit == MemoryLimit::Container
    }

    /// How often the trimmer should sample for this pool (`None`: no limit).
    /// Read by the trimmer thread, which loom and miri builds do not have.
    #[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
    pub(crate) fn sample_interval(&self) -> Option<Duration> {
        (self.limit() > 0 || self.config.file.is_some()).then_some(SAMPLE_INTERVAL)
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

    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Reads the container's memory now, with the pool's `footprint` at
    /// that moment, and derives the level. Wakes the first admission
    /// waiter, which may fit now.
    pub(crate) fn sample(&self, footprint: usize) -> Option<Transition> {
        if self.limit() == 0 && self.config.file.is_none() {
            return None;
        }
        self.sampled_at.store(self.now(), Ordering::Relaxed);
        let mem = read_memory_for(&self.config)?;
        if self.limit_is_read() {
            // A resize in place is seen at the next sample.
            self.limit.store(mem.limit.unwrap_or(0), Ordering::Relaxed);
        }
        self.high.store(mem.high.unwrap_or(0), Ordering::Relaxed);
        if self.limit() == 0 {
            *self.last.lock() = Some(mem);
            return self.set_level(Pressure::Normal);
        }
        self.ws_at_sample.store(mem.working_set, Ordering::Relaxed);
        self.footprint_at_sample.store(footprint, Ordering::Relaxed);
        self.global_at_sample
            .store(crate::global::footprint(), Ordering::Relaxed);
        let level =
            self.config
                .thresholds
                .level(mem.working_set, self.limit(), mem.high, self.level());
        *self.last.lock() = Some(mem);
        let transition = self.set_level(level);
        if !self.waiters.is_empty() {
            self.waiters.wake_head();
        }
        transition
    }

    /// The working set now, estimated: the last sample, plus what the pool
    /// allocated since (frees since are not subtracted: the allocator may
    /// not have given them back), plus what admitted requests may still
    /// take, plus `extra`.
    fn estimate(&self, footprint: usize, reserved: usize, extra: usize) -> u64 {
        let grown = footprint.saturating_sub(self.footprint_at_sample.load(Ordering::Relaxed));
        // The global allocator's large tier, process-wide, counts the
        // moment it maps.
        let global = crate::global::footprint()
            .saturating_sub(self.global_at_sample.load(Ordering::Relaxed));
        let grown = grown.saturating_add(global);
        self.ws_at_sample
            .load(Ordering::Relaxed)
            .saturating_add(grown.saturating_add(reserved).saturating_add(extra) as u64)
    }

    /// The working set at which refusable requests are refused.
    fn critical_bytes(&self) -> u64 {
        (self.limit() as f64 * self.config.thresholds.critical) as u64
    }

    /// Called before the pool allocates `bytes` (its footprint is
    /// `footprint`; `reserved`: admission counts them already): a large
    /// miss may take a sample; every miss raises the level if the estimate
    /// passes a threshold.
    pub(crate) fn note_allocation(
        &self,
        footprint: usize,
        bytes: usize,
        reserved: bool,
    ) -> Option<Transition> {
        if self.limit() == 0 {
            return None;
        }
        let mut transition = None;
        if bytes >= LARGE_MISS && self.sample_is_older_than(MIN_SAMPLE_GAP) {
            transition = self.sample(footprint);
        }
        let extra = if reserved { 0 } else { bytes };
        let estimate = self.estimate(footprint, self.reserved.load(Ordering::Relaxed), extra);
        let high = Some(self.high.load(Ordering::Relaxed)).filter(|&h| h > 0);
        let level = self
            .config
            .thresholds
            .level(estimate, self.limit(), high, self.level());
        if level > self.level() {
            transition = chain(transition, self.set_level(level));
        }
        transition
    }

    fn sample_is_older_than(&self, gap: Duration) -> bool {
        let last = self.sampled_at.load(Ordering::Relaxed);
        self.now().saturating_sub(last) >= gap.as_nanos() as u64
    }

    /// Called when the pool frees or queues memory: wakes the first
    /// admission waiter, if any.
    #[inline]
    pub(crate) fn note_return(&self) {
        if !self.waiters.is_empty() {
            self.waiters.wake_head();
        }
    }

    /// Sets the level; the change, if any.
    fn set_level(&self, level: Pressure) -> Option<Transition> {
        let before = Pressure::from_u8(self.level.swap(level as u8, Ordering::Relaxed));
        (before != level).then_some((before, level))
    }

    /// Whether admitting `bytes` more should first take a fresh sample: the
    /// estimate is near the critical threshold (within a tenth of it) and
    /// the last sample is older than [`MIN_SAMPLE_GAP`]. The estimate only
    /// grows between samples (it cannot see frees, nor memory the pool does
    /// not own), so near the line a reading (microseconds) decides.
    pub(crate) fn wants_fresh_sample(&self, footprint: usize, bytes: usize) -> bool {
        self.limit() > 0
            && self.estimate(footprint, self.reserved.load(Ordering::Relaxed), bytes)
                >= self.critical_bytes() / 10 * 9
            && self.sample_is_older_than(MIN_SAMPLE_GAP)
    }

    /// Admission: reserves `bytes` for a refusable request if they fit
    /// under the in-use budget and below the critical threshold, with the
    /// pool's `footprint` (in use plus idle) read afresh at each try.
    ///
    /// Atomic: the reservation is taken by compare-and-swap against the
    /// reservations it was checked with, so two requests cannot both take
    /// the last room. A block's bytes enter the footprint before its
    /// reservation is given back (with Release), so a compare-and-swap that
    /// reads a reservation given back (with Acquire) sees the footprint
    /// that replaced it: it checks once more after it succeeds.
    pub(crate) fn try_reserve(
        &self,
        footprint: &AtomicUsize,
        bytes: usize,
    ) -> Result<Reserved<'_>, Error> {
        let mut reserved = self.reserved.load(Ordering::Acquire);
        loop {
            self.fits(footprint.load(Ordering::Relaxed), reserved, bytes)?;
            let Some(next) = reserved.checked_add(bytes) else {
                return Err(Error::CapacityOverflow { requested: bytes });
            };
            match self.reserved.compare_exchange_weak(
                reserved,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let taken = Reserved {
                        limits: self,
                        bytes,
                    };
                    // Dropping `taken` on a refusal gives the bytes back.
                    self.fits(footprint.load(Ordering::Relaxed), reserved, bytes)?;
                    return Ok(taken);
                }
                Err(seen) => reserved = seen,
            }
        }
    }

    /// Whether `bytes` more fit with this footprint and these reservations.
    fn fits(&self, footprint: usize, reserved: usize, bytes: usize) -> Result<(), Error> {
        let limit = self.limit();
        if limit > 0
            && (self.is_critical()
                || self.estimate(footprint, reserved, bytes) >= self.critical_bytes())
        {
            return Err(Error::MemoryPressure {
                requested: bytes,
                working_set: self.estimate(footprint, reserved, 0),
                limit,
            });
        }
        if let Some(budget) = self.config.max_in_use {
            let held = footprint.saturating_add(reserved);
            if held.saturating_add(bytes) > budget {
                return Err(Error::OverBudget {
                    requested: bytes,
                    in_use: held,
                    budget,
                });
            }
        }
        Ok(())
    }

    /// Counts a request that admission refused for good.
    pub(crate) fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses at once a request that could never be admitted: more than
    /// the in-use budget by itself.
    pub(crate) fn check_fits(&self, bytes: usize) -> Result<(), Error> {
        match self.config.max_in_use {
            Some(budget) if bytes > budget => {
                self.count_refusal();
                Err(Error::OverBudget {
                    requested: bytes,
                    in_use: 0,
                    budget,
                })
            }
            _ => Ok(()),
        }
    }

    /// Gives back `bytes` that a [`Reserved`] kept (a permit's set-aside).
    ///
    /// Release: the allocation that replaced the reservation (its bytes
    /// added to the footprint first) is seen by whoever reads the
    /// reservation gone (see [`try_reserve`](Self::try_reserve)).
    pub(crate) fn unreserve(&self, bytes: usize) {
        if bytes > 0 {
            self.reserved.fetch_sub(bytes, Ordering::Release);
        }
    }

    pub(crate) fn count_wait(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fill_stats(&self, stats: &mut Stats) {
        stats.pressure = self.level();
        stats.memory = self.last.lock().clone();
        let limit = self.limit();
        stats.memory_limit_bytes = (limit > 0).then_some(limit);
        stats.refused = self.refused.load(Ordering::Relaxed);
        stats.waited = self.waited.load(Ordering::Relaxed);
        stats.set_aside_bytes = self.reserved.load(Ordering::Relaxed);
        stats.waiting = self.waiters.len();
    }
}

/// Two level changes in a row as one.
fn chain(first: Option<Transition>, then: Option<Transition>) -> Option<Transition> {
    match (first, then) {
        (Some((from, _)), Some((_, to))) => (from != to).then_some((from, to)),
        (a, b) => a.or(b),
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

/// The memory to steer by: a file's ([`PoolBuilder::memory_file`]); the
/// cgroup's; for a `Bytes` limit in a cgroup that sets no limit of its own
/// (whose usage may be other processes'), the process's own resident
/// memory.
///
/// [`PoolBuilder::memory_file`]: crate::PoolBuilder::memory_file
fn read_memory_for(config: &LimitsConfig) -> Option<ContainerMemory> {
    if let Some(path) = &config.file {
        return read_memory_file(path);
    }
    let mem = read_memory();
    match (mem, config.limit) {
        (Some(mem), MemoryLimit::Bytes(_)) if mem.limit.is_none() => own_memory(),
        (Some(mem), _) => Some(mem),
        (None, MemoryLimit::Bytes(_)) => own_memory(),
        (None, _) => None,
    }
}

/// A memory reading from a file of `key value` lines: `limit`,
/// `working_set` (or `usage` and `inactive_file`), optionally `high`; the
/// rest of the figures 0. `None` when it cannot be read or has no
/// working set.
fn read_memory_file(path: &std::path::Path) -> Option<ContainerMemory> {
    if cfg!(miri) {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once([' ', '='])?;
            (k.trim() == name).then(|| v.trim().parse().ok())?
        })
    };
    let inactive_file = field("inactive_file").unwrap_or(0);
    let working_set =
        field("working_set").or_else(|| field("usage").map(|u| u.saturating_sub(inactive_file)))?;
    Some(ContainerMemory {
        limit: field("limit").filter(|&l| l > 0),
        usage: field("usage").unwrap_or(working_set + inactive_file),
        working_set,
        anon: working_set,
        inactive_file,
        high: field("high"),
        path: path.to_path_buf(),
        ..ContainerMemory::default()
    })
}

/// The process's resident memory as a working set.
fn own_memory() -> Option<ContainerMemory> {
    if cfg!(miri) {
        return None;
    }
    let rss = cgroup::process_rss()?;
    Some(ContainerMemory {
        usage: rss,
        working_set: rss,
        anon: rss,
        ..ContainerMemory::default()
    })
}
