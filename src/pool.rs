//! `Pool` and its builder: the get and return paths through the tiers.
//!
//! ```text
//!  get ──► thread cache ──(empty)──► shared tier (+2 classes up) ──► os::alloc
//!  drop ──► thread cache ──(full: spill oldest)──► shared tier ──(full)──► os::free
//! ```
//!
//! Mapped classes (128 KiB and up on Unix) have no shared queues: their
//! idle memory is the large tier's pages (`large.rs`), which a request is
//! cut from or assembled from, and a return or a spill goes back to.
//!
//! The thread cache (`thread_cache.rs`) is a leaf; this file refills and
//! spills it. The retention budget is `retention.rs`, trimming `trim.rs`,
//! the container's memory and admission `limits/`.

use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use crate::buf::PooledBuf;
use crate::event::{AllocReason, DropReason, Event, EventHook, Events, TrimReason};
use crate::io::label::{AdapterCounters, Labels};
use crate::large::{LargeTier, Source};
use crate::limits::{Limits, LimitsConfig, MemoryLimit, PageCache, Thresholds};
use crate::os;
use crate::retention::Retention;
use crate::shared_tier::SharedTier;
use crate::stats::PoolCounters;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::thread_cache::{self, CacheState, ClassLayout, ExitFlush, ThreadCache};
use crate::trim::Freed;
use crate::{Error, SizeClasses};

/// How many classes above the requested one a miss may borrow an idle
/// buffer from before allocating: a reuse instead of fresh page faults, at
/// the price of at most two classes' rounding.
const BORROW_CLASSES_ABOVE: usize = 2;
/// The most buffers a thread cache keeps per class, however small the class.
const MAX_THREAD_CACHE_DEPTH: usize = 32;
/// The most buffers the shared tier queues per class.
const MAX_SHARED_TIER_DEPTH: usize = 4096;
/// How often another thread retries a busy thread cache before giving up
/// on it for this pass (its owner holds it for a few dozen instructions).
pub(crate) const LOCK_PATIENCE: u32 = 10_000;
/// The class tag of buffers above the largest class.
pub(crate) const OVERSIZE: u32 = u32::MAX;

/// A tiered buffer pool: a cheap, cloneable handle (`Clone + Send + Sync`).
///
/// Requests are rounded up to a size class and served from the calling
/// thread's cache, then the shared tier, then the allocator. Buffers go back
/// when dropped, on any thread. See the [crate docs](crate) for the tiers.
///
/// ```
/// let pool = tierpool::Pool::new();
/// let mut buf = pool.get(10_000);
/// assert!(buf.capacity() >= 10_000);
/// buf.extend_from_slice(b"pixels");
/// assert_eq!(&buf[..], b"pixels");
/// drop(buf); // back into this thread's cache
/// assert_eq!(pool.stats().retained_buffers, 1);
/// ```
///
/// Dropping the last handle frees every idle buffer; buffers still out free
/// themselves when dropped, and the pool's memory goes with the last one.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
    _handle: Arc<Handle>,
}

/// Closes the pool when the last `Pool` handle goes.
struct Handle(Arc<PoolInner>);

impl Drop for Handle {
    fn drop(&mut self) {
        PoolInner::close(&self.0);
    }
}

/// Configures and builds a [`Pool`].
///
/// ```
/// use tierpool::{Pool, SizeClasses};
///
/// let pool = Pool::builder()
///     .size_classes(SizeClasses::from_sizes(&[100, 200, 300])?)
///     .max_retained_bytes(64 << 20)
///     .thread_cache_bytes(1024)
///     .build();
/// assert_eq!(pool.get(150).capacity(), 200);
/// # Ok::<(), tierpool::Error>(())
/// ```
pub struct PoolBuilder {
    classes: SizeClasses,
    max_retained_bytes: usize,
    thread_cache_bytes: usize,
    shared_tier_bytes: usize,
    trim_interval: Duration,
    min_retained_bytes: usize,
    hook: Option<EventHook>,
    limits: LimitsConfig,
    name: Option<String>,
}

/// Per-class figures fixed at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassInfo {
    pub(crate) capacity: usize,
    /// The bytes a block occupies: `capacity` in whole pages when mapped.
    pub(crate) span: usize,
    /// Whether idle blocks of the class live in the large tier
    /// (`large.rs`) rather than a queue of their own.
    pub(crate) large: bool,
    /// Slots per thread cache (0: the class goes straight to the shared tier).
    pub(crate) depth: usize,
    /// Buffers moved per refill or spill.
    pub(crate) batch: usize,
}

/// What a pool's handles and buffers share.
///
/// Only ever created inside an `Arc` (by [`PoolBuilder::build`]). Every block
/// in use or in a thread cache owns one strong count of that `Arc`, so a
/// buffer can always reach its pool; blocks queued in the shared tier own
/// none and are freed by the pool's `Drop` if still there. Thread caches
/// hold no count: the pool closes them all before it can be freed.
pub(crate) struct PoolInner {
    /// Unique for the life of the process.
    pub(crate) id: u64,
    /// This pool's index in every thread's cache table; reused after the
    /// pool is freed (the id tells a stale entry apart).
    pub(crate) slot: usize,
    pub(crate) name: Option<String>,
    pub(crate) classes: SizeClasses,
    pub(crate) info: Box<[ClassInfo]>,
    layouts: Box<[ClassLayout]>,
    /// Most credit a thread cache keeps after a slow path.
    credit_limit: usize,
    pub(crate) shared: Box<[SharedTier]>,
    /// Idle pages of the mapped classes.
    pub(crate) large: LargeTier,
    pub(crate) retention: Retention,
    /// Live thread caches, for trimming and statistics.
    pub(crate) registry: Mutex<Vec<Arc<ThreadCache>>>,
    pub(crate) counters: PoolCounters,
    /// Bytes allocated and not yet freed or detached: in use plus idle.
    pub(crate) footprint: AtomicUsize,
    /// Idle capacity that trimming on idle leaves pooled.
    pub(crate) min_retained: usize,
    /// Read by the trimmer thread, which loom and miri builds do not have.
    #[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
    pub(crate) trim_interval: Duration,
    /// Set when the last handle drops: returns free from then on.
    pub(crate) closed: AtomicBool,
    pub(crate) events: Events,
    pub(crate) limits: Limits,
    /// What the adapters did, all labels and none.
    pub(crate) adapters: AdapterCounters,
    pub(crate) labels: Labels,
}

/// What happened to a returned block's pool count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// Kept in a thread cache, which now owns the block's count.
    Cached,
    /// Freed, or queued in the shared tier: the caller drops the count.
    Uncached,
}

/// Whether a request goes through admission control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// `get`: always allocate, like `Vec`.
    Bypass,
    /// `try_get`, `get_timeout`, `acquire`: refuse past the budget or under
    /// critical pressure.
    Check,
}

// === impl Pool ===

impl Pool {
    /// Default cap on idle memory across all tiers: 256 MiB (lowered under
    /// memory pressure, see [`MemoryLimit`]).
    pub const DEFAULT_MAX_RETAINED_BYTES: usize = 256 << 20;
    /// Default bytes each thread may keep per class in its cache: 256 KiB.
    pub const DEFAULT_THREAD_CACHE_BYTES: usize = 256 << 10;
    /// Default bytes the shared tier may queue per class: 128 MiB, so a
    /// 64 MiB body read in 4 MiB chunks comes back whole;
    /// `max_retained_bytes` bounds all classes together.
    pub const DEFAULT_SHARED_TIER_BYTES: usize = 128 << 20;
    /// Default interval of trimming on idle: 5 seconds.
    ///
    /// A buffer idle for one whole interval is freed by the end of the next,
    /// so memory is back within 10 s of the last traffic: well inside the
    /// 15–60 s that metrics scrapers and autoscalers look at. Under steady
    /// traffic, anything used within 5 s stays pooled. A pass costs a few
    /// microseconds per thread cache.
    pub const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(5);
    /// The shortest trim interval; shorter ones are raised to it.
    pub const MIN_TRIM_INTERVAL: Duration = Duration::from_millis(10);
    /// The longest trim interval; longer ones are lowered to it.
    pub const MAX_TRIM_INTERVAL: Duration = Duration::from_secs(24 * 3600);

    /// A pool with the default classes (4 KiB–64 MiB, 4 per doubling) and caps.
    pub fn new() -> Pool {
        Pool::builder().build()
    }

    /// A builder to choose classes, caps, tier depths and limits.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            classes: SizeClasses::default(),
            max_retained_bytes: Pool::DEFAULT_MAX_RETAINED_BYTES,
            thread_cache_bytes: Pool::DEFAULT_THREAD_CACHE_BYTES,
            shared_tier_bytes: Pool::DEFAULT_SHARED_TIER_BYTES,
            trim_interval: Pool::DEFAULT_TRIM_INTERVAL,
            min_retained_bytes: 0,
            hook: None,
            limits: LimitsConfig::default(),
            name: None,
        }
    }

    /// A buffer with `len() == 0` and `capacity() >= min_capacity`: the
    /// class's capacity, or exactly `min_capacity` above the largest class.
    ///
    /// `get` always allocates when nothing idle fits, like `Vec`: it ignores
    /// [`max_in_use_bytes`](PoolBuilder::max_in_use_bytes) and memory
    /// pressure. Use [`try_get`](Self::try_get), [`get_timeout`](Self::get_timeout)
    /// or [`acquire`](Self::acquire) where a request may be refused.
    ///
    /// # Panics
    ///
    /// When `min_capacity` exceeds `isize::MAX` bytes, like `Vec`; when the
    /// allocator fails, the process aborts through
    /// [`handle_alloc_error`](std::alloc::handle_alloc_error), like `Vec`.
    #[inline(always)]
    pub fn get(&self, min_capacity: usize) -> PooledBuf {
        let (block, capacity, class) = match PoolInner::take_cached(&self.inner, min_capacity) {
            Some(taken) => taken,
            None => {
                // Out of line, and no 40-byte buffer through memory: the
                // parts come back in two registers.
                let (block, capacity) = get_or_fail(&self.inner, min_capacity);
                (block, capacity, class_of(&self.inner, capacity))
            }
        };
        // SAFETY: a block of `class` with `capacity` bytes, owned by nobody
        // else, carrying one pool count: from the cache, or given up by the
        // buffer `get_or_fail` made (whose class `class_of` recovers).
        unsafe { PooledBuf::from_cached(block, capacity, &self.inner, class) }
    }

    /// Like [`get`](Self::get), but never aborts: an absurd size or a failed
    /// allocation is an error, and so is a request that admission control
    /// refuses (over [`max_in_use_bytes`](PoolBuilder::max_in_use_bytes), or
    /// the container's memory under critical pressure). A buffer already
    /// idle in this thread's cache is always handed out.
    ///
    /// ```
    /// let pool = tierpool::Pool::new();
    /// assert!(pool.try_get(usize::MAX).is_err());
    /// assert!(pool.try_get(1 << 50).is_err()); // 1 PiB: the allocator says no
    /// assert_eq!(pool.stats().in_use_bytes, 0);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::CapacityOverflow`] above `isize::MAX` bytes,
    /// [`Error::AllocFailed`] when the allocator refuses,
    /// [`Error::OverBudget`] and [`Error::MemoryPressure`] when admission
    /// refuses.
    #[inline]
    pub fn try_get(&self, min_capacity: usize) -> Result<PooledBuf, Error> {
        PoolInner::get(&self.inner, min_capacity, Admission::Check)
    }

    /// Frees every idle buffer now, in every tier: the shared tier and the
    /// caches of all threads, idle ones included (exited threads flushed
    /// theirs into the shared tier when they exited). Thread caches' unused
    /// retention credit goes back too.
    ///
    /// Buffers returned while the trim runs may stay.
    pub fn trim(&self) {
        PoolInner::trim(&self.inner, TrimReason::Manual);
    }

    /// Moves this thread's idle buffers for this pool to the shared tier and
    /// drops this thread's cache. A thread does this by itself when it
    /// exits; a long-lived thread about to go idle for a while can do it
    /// early so other threads reuse its buffers. The next `get` on this
    /// thread starts a new cache.
    pub fn flush_thread_cache(&self) {
        PoolInner::flush_current_thread(&self.inner);
    }

    /// A snapshot of memory and traffic; see [`Stats`](crate::Stats).
    pub fn stats(&self) -> crate::Stats {
        self.inner.stats()
    }

    /// The classes this pool rounds requests up to.
    pub fn size_classes(&self) -> &SizeClasses {
        &self.inner.classes
    }

    /// The cap on idle memory across all tiers, as built.
    pub fn max_retained_bytes(&self) -> usize {
        self.inner.retention.configured()
    }

    /// The name given with [`PoolBuilder::name`], if any.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    pub(crate) fn inner_arc(&self) -> &Arc<PoolInner> {
        &self.inner
    }
}

// A panic anywhere (an event callback, a caller between two pool calls)
// leaves the pool's books right: every operation moves a block and its
// counts before it calls out, and callbacks are caught. So a `Pool` may be
// used across `catch_unwind`.
impl std::panic::UnwindSafe for Pool {}
impl std::panic::RefUnwindSafe for Pool {}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.name)
            .field("classes", &self.inner.classes)
            .field("max_retained_bytes", &self.inner.retention.configured())
            .field("on_event", &self.inner.events)
            .finish_non_exhaustive()
    }
}

/// The process-wide pool, built with the defaults on first use.
///
/// ```
/// let buf = tierpool::global().get(4096);
/// assert_eq!(buf.capacity(), 4096);
/// ```
pub fn global() -> &'static Pool {
    static GLOBAL: OnceLock<Pool> = OnceLock::new();
    GLOBAL.get_or_init(Pool::new)
}

/// [`Pool::get`] past its fast path: out of line, so the fast path saves
/// no registers and tail-calls this.
#[cold]
#[inline(never)]
fn get_or_fail(pool: &Arc<PoolInner>, min_capacity: usize) -> (NonNull<u8>, usize) {
    match PoolInner::get_slow(pool, min_capacity, Admission::Bypass) {
        Ok(buf) => buf.into_block(),
        Err(e) => fail(e),
    }
}

/// The class of a block of `capacity` bytes that `get_slow` handed out:
/// class capacities are exact, and anything above the largest is an exact
/// oversize allocation.
#[cold]
#[inline(never)]
fn class_of(pool: &PoolInner, capacity: usize) -> u32 {
    match pool.classes.index_for(capacity) {
        Some(class) if pool.info[class].capacity == capacity => class as u32,
        _ => OVERSIZE,
    }
}

#[cold]
#[track_caller]
pub(crate) fn fail(e: Error) -> ! {
    match e {
        Error::AllocFailed { size } => {
            // Same as `Vec`: out of memory is not a panic.
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<u8>(size).expect("an allocatable size"),
            )
        }
        e => panic!("tierpool: {e}"),
    }
}

// === impl PoolBuilder ===

impl PoolBuilder {
    /// The classes requests are rounded up to (default:
    /// [`SizeClasses::default`]).
    pub fn size_classes(mut self, classes: SizeClasses) -> Self {
        self.classes = classes;
        self
    }

    /// The most idle capacity the pool keeps across all tiers, thread caches
    /// included (default [`Pool::DEFAULT_MAX_RETAINED_BYTES`]). A buffer
    /// returned into a full pool is freed. `0` keeps nothing. Under memory
    /// pressure the pool keeps less than this (see [`memory_limit`](Self::memory_limit)).
    pub fn max_retained_bytes(mut self, bytes: usize) -> Self {
        self.max_retained_bytes = bytes;
        self
    }

    /// How many bytes each thread's cache may keep per class (default
    /// [`Pool::DEFAULT_THREAD_CACHE_BYTES`]): `bytes / capacity` buffers, at
    /// most 32. So small classes keep many buffers per thread, and classes
    /// larger than `bytes` none: their buffers go straight to the shared
    /// tier (for mapped classes, the large tier's pages), where every thread
    /// can reuse them. `0` turns thread caches off.
    ///
    /// On Linux, thread caches rely on the `membarrier` system call (4.3 and
    /// later; fast from 4.14): it lets the trimmer and `stats()` reach into
    /// a thread's cache while the owner's fast path stays free of atomic
    /// read-modify-writes. Where the kernel or a seccomp profile refuses it,
    /// the pool keeps no thread caches and serves every request from the
    /// shared tier ([`Stats::thread_caches`](crate::Stats::thread_caches)
    /// stays 0).
    pub fn thread_cache_bytes(mut self, bytes: usize) -> Self {
        self.thread_cache_bytes = bytes;
        self
    }

    /// How many bytes the shared tier may queue per class (default
    /// [`Pool::DEFAULT_SHARED_TIER_BYTES`]): `bytes / capacity` buffers, at
    /// least two and at most 4096. Mapped classes (128 KiB and up on Unix)
    /// have no queue: their idle memory is the large tier's pages, bounded
    /// by [`max_retained_bytes`](Self::max_retained_bytes) alone.
    pub fn shared_tier_bytes(mut self, bytes: usize) -> Self {
        self.shared_tier_bytes = bytes;
        self
    }

    /// How often idle memory is trimmed (default
    /// [`Pool::DEFAULT_TRIM_INTERVAL`]): a buffer that stays idle through one
    /// whole interval, in any tier, is freed by the end of the next. One
    /// background thread, `tierpool-trimmer`, serves every pool; it never
    /// keeps the process alive, and a dropped pool leaves it.
    ///
    /// `Duration::ZERO` turns trimming on idle off (`Pool::trim` still
    /// works). Other values are clamped to
    /// [`Pool::MIN_TRIM_INTERVAL`]`..=`[`Pool::MAX_TRIM_INTERVAL`], so an
    /// absurd interval neither spins the trimmer nor overflows a clock.
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval;
        self
    }

    /// Idle capacity that trimming on idle leaves pooled (default 0), so the
    /// first requests after a quiet spell are still hits. `Pool::trim` and
    /// memory pressure free everything regardless.
    pub fn min_retained_bytes(mut self, bytes: usize) -> Self {
        self.min_retained_bytes = bytes;
        self
    }

    /// A callback for every [`Event`]: allocations, frees instead of reuse,
    /// trim passes, pressure changes. It runs on the thread where the event
    /// happened, outside any lock of the pool, after the pool's books are
    /// right, and may use the pool. A panic in it is caught and counted in
    /// [`Stats::hook_panics`](crate::Stats::hook_panics); the event is lost,
    /// nothing else is. Keep it short; with no callback, events cost nothing.
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// The memory limit the pool steers by (default
    /// [`MemoryLimit::Container`]: the cgroup's limit, if it has one).
    pub fn memory_limit(mut self, limit: MemoryLimit) -> Self {
        self.limits.limit = limit;
        self
    }

    /// The working-set fractions of the memory limit at which pressure
    /// becomes elevated and critical (default 0.75 and 0.90).
    pub fn pressure_thresholds(mut self, thresholds: Thresholds) -> Self {
        self.limits.thresholds = thresholds;
        self
    }

    /// A budget for the bytes handed out and not yet returned, enforced by
    /// [`Pool::try_get`], [`Pool::get_timeout`] and [`Pool::acquire`]
    /// (`get` ignores it). Default: none.
    pub fn max_in_use_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_in_use = Some(bytes);
        self
    }

    /// What [`Pool::read_file`] and [`Pool::write_file`] do with the page
    /// cache of the files they touch (default [`PageCache::Drop`]).
    pub fn page_cache(mut self, page_cache: PageCache) -> Self {
        self.limits.page_cache = page_cache;
        self
    }

    /// A name for the pool, used as the `pool` label of its metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builds the pool.
    pub fn build(self) -> Pool {
        let info: Box<[ClassInfo]> = self
            .classes
            .sizes()
            .iter()
            .map(|&capacity| {
                let depth = (self.thread_cache_bytes / capacity).min(MAX_THREAD_CACHE_DEPTH);
                ClassInfo {
                    capacity,
                    span: os::span(capacity),
                    large: os::is_mapped(capacity),
                    depth,
                    batch: (depth / 2).max(1),
                }
            })
            .collect();
        let layouts = info
            .iter()
            .map(|c| ClassLayout {
                capacity: c.capacity,
                depth: c.depth as u32,
            })
            .collect();
        let shared = info
            .iter()
            .map(|c| {
                SharedTier::new(
                    (self.shared_tier_bytes / c.capacity).clamp(2, MAX_SHARED_TIER_DEPTH),
                )
            })
            .collect();
        let trim_interval = if self.trim_interval.is_zero() {
            Duration::ZERO
        } else {
            self.trim_interval
                .clamp(Pool::MIN_TRIM_INTERVAL, Pool::MAX_TRIM_INTERVAL)
        };
        let classes = self.classes.len();
        let large = LargeTier::new(
            info.iter()
                .map(|c| if c.large { c.span } else { 0 })
                .collect(),
        );
        let inner = Arc::new(PoolInner {
            id: slots::next_id(),
            slot: slots::acquire(),
            name: self.name,
            classes: self.classes,
            credit_limit: self.thread_cache_bytes,
            info,
            layouts,
            shared,
            retention: Retention::new(self.max_retained_bytes),
            registry: Mutex::new(Vec::new()),
            counters: PoolCounters::new(classes),
            footprint: AtomicUsize::new(0),
            large,
            min_retained: self.min_retained_bytes,
            trim_interval,
            closed: AtomicBool::new(false),
            events: Events::new(self.hook),
            limits: Limits::new(self.limits),
            adapters: AdapterCounters::default(),
            labels: Labels::default(),
        });
        crate::trim::schedule(&inner);
        Pool {
            _handle: Arc::new(Handle(inner.clone())),
            inner,
        }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("classes", &self.classes)
            .field("max_retained_bytes", &self.max_retained_bytes)
            .field("thread_cache_bytes", &self.thread_cache_bytes)
            .field("shared_tier_bytes", &self.shared_tier_bytes)
            .field("trim_interval", &self.trim_interval)
            .field("min_retained_bytes", &self.min_retained_bytes)
            .field("limits", &self.limits)
            .field("on_event", &self.hook.is_some())
            .finish()
    }
}

// === impl PoolInner: get ===

impl PoolInner {
    /// Serves a request: this thread's cache, else the slow path.
    #[inline]
    pub(crate) fn get(
        this: &Arc<PoolInner>,
        min_capacity: usize,
        admission: Admission,
    ) -> Result<PooledBuf, Error> {
        match PoolInner::get_cached(this, min_capacity) {
            Some(buf) => Ok(buf),
            None => PoolInner::get_slow(this, min_capacity, admission),
        }
    }

    /// The fast path: an idle block of the request's class from this
    /// thread's front cache (see [`thread_cache::with_front`]). Calls
    /// nothing, so it costs no register saves.
    #[inline(always)]
    fn get_cached(this: &Arc<PoolInner>, min_capacity: usize) -> Option<PooledBuf> {
        let (block, capacity, class) = PoolInner::take_cached(this, min_capacity)?;
        // SAFETY: an idle block of `class` (`capacity` bytes) taken out of
        // this thread's cache: nobody else owns it, and it carries its pool
        // count.
        Some(unsafe { PooledBuf::from_cached(block, capacity, this, class) })
    }

    /// [`get_cached`](Self::get_cached)'s block, capacity and class: an
    /// idle block that carries a pool count.
    #[inline(always)]
    fn take_cached(
        this: &Arc<PoolInner>,
        min_capacity: usize,
    ) -> Option<(NonNull<u8>, usize, u32)> {
        let class = this.classes.index_for(min_capacity)?;
        // SAFETY: there are at most `MAX_CLASSES` classes. Said here so
        // that the drop after an inlined get knows the class is no
        // `OVERSIZE` and skips that test.
        unsafe { std::hint::assert_unchecked(class < SizeClasses::MAX_CLASSES) };
        let (block, capacity) =
            thread_cache::with_front(this.id, |cache| cache.take(class)).ok()???;
        Some((block, capacity, class as u32))
    }

    /// The shared tier (or a larger class's idle block), then the allocator.
    #[cold]
    #[inline(never)]
    fn get_slow(
        this: &Arc<PoolInner>,
        min_capacity: usize,
        admission: Admission,
    ) -> Result<PooledBuf, Error> {
        // A forked child has no trimmer thread yet: start one.
        crate::trim::ensure_running();
        let Some(class) = this.classes.index_for(min_capacity) else {
            return PoolInner::get_oversize(this, min_capacity, admission);
        };
        // This thread's cache, when it is not the front one (the thread
        // used another pool since).
        if let Some(Some((block, capacity))) =
            thread_cache::with_cache(this.slot, this.id, |cache| cache.take(class))
        {
            // SAFETY: as in `get_cached`.
            return Ok(unsafe { PooledBuf::from_cached(block, capacity, this, class as u32) });
        }
        if let Some((block, found)) = PoolInner::take_shared(this, class) {
            // SAFETY: popped from the shared tier, so ours; `take_shared`
            // took a pool count for it.
            return Ok(unsafe { PooledBuf::from_block(block, this, found as u32) });
        }
        let capacity = this.info[class].capacity;
        // Admission before a fit: growing an idle block faults new memory
        // just as a fresh allocation does. (An idle block of the class
        // itself, above, is memory already held.)
        if admission == Admission::Check {
            this.limits.admit(this, capacity)?;
        }
        if let Some(block) = PoolInner::take_assembled(this, class) {
            // SAFETY: made of idle pages of the large tier, so ours;
            // `take_assembled` took a pool count for it.
            return Ok(unsafe { PooledBuf::from_block(block, this, class as u32) });
        }
        let info = this.info[class];
        this.limits.note_allocation(this, capacity);
        let block = if info.large {
            this.large.map(capacity)?
        } else {
            os::alloc(capacity)?
        };
        this.footprint.fetch_add(info.span, Ordering::Relaxed);
        this.counters.class[class]
            .misses
            .fetch_add(1, Ordering::Relaxed);
        // SAFETY: `this` is a live `Arc`; the new block owns this count.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        // SAFETY: a fresh block of the class's capacity, owned by nobody
        // else, whose pool count was just taken.
        let buf = unsafe { PooledBuf::from_block(block, this, class as u32) };
        this.events.emit(Event::Allocated {
            capacity,
            reason: AllocReason::Miss,
        });
        Ok(buf)
    }

    /// Takes an idle block of `class` (or up to two classes above) from the
    /// shared tier with a pool count, and refills this thread's cache for
    /// `class` from the same queue.
    fn take_shared(this: &Arc<PoolInner>, class: usize) -> Option<(NonNull<u8>, usize)> {
        let info = this.info[class];
        if info.large {
            // The class's hot block, else idle pages cut from a run that
            // holds the block: no system call either way.
            let block = match this.large.take_hot(class) {
                Some(block) => block,
                None => {
                    let taken = this.large.take(info.span, false)?;
                    debug_assert_eq!(taken.source, Source::Run);
                    taken.block
                }
            };
            this.retention.unreserve(info.span);
            this.counters.class[class]
                .shared_hits
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: `this` is a live `Arc`; the block owns this count.
            unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
            return Some((block, class));
        }
        let last = (class + BORROW_CLASSES_ABOVE).min(this.info.len() - 1);
        let has_cache = this.info[class].depth > 0 && PoolInner::ensure_cache(this);
        for c in class..=last {
            let Some(block) = this.shared[c].pop() else {
                continue;
            };
            this.counters.class[c]
                .shared_hits
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: `this` is a live `Arc`; the block owns this count.
            unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
            let capacity = this.info[c].capacity;
            let kept = has_cache
                && thread_cache::with_cache(this.slot, this.id, |cache| {
                    if cache.closed {
                        return false;
                    }
                    // The block's reservation becomes this cache's credit
                    // for its return.
                    cache.credit += capacity;
                    if c == class {
                        PoolInner::refill(this, cache, class);
                    }
                    true
                })
                .unwrap_or(false);
            if !kept {
                this.retention.unreserve(capacity);
            }
            return Some((block, c));
        }
        None
    }

    /// Match by fit: serves a miss of a mapped class from the large tier's
    /// idle pages: a run that holds the block (another thread returned one
    /// since `take_shared` looked), else the largest runs moved together
    /// with `mremap` and completed with fresh pages. So a miss faults only
    /// what the idle pages do not cover, and what the pool holds stays
    /// within what was in use at the peak. Linux only (elsewhere runs are
    /// still cut, never moved).
    fn take_assembled(this: &Arc<PoolInner>, class: usize) -> Option<NonNull<u8>> {
        let info = this.info[class];
        if !info.large {
            return None;
        }
        let taken = this.large.take(info.span, true)?;
        let counters = &this.counters.class[class];
        match taken.source {
            Source::Run => {
                this.retention.unreserve(info.span);
                counters.shared_hits.fetch_add(1, Ordering::Relaxed);
            }
            Source::Assembled { moved } => {
                // The moved pages were idle (reserved); the rest is new.
                this.retention.unreserve(moved);
                this.footprint
                    .fetch_add(info.span - moved, Ordering::Relaxed);
                counters.fit_hits.fetch_add(1, Ordering::Relaxed);
                counters
                    .fit_grown_bytes
                    .fetch_add((info.span - moved) as u64, Ordering::Relaxed);
                if moved < info.span {
                    this.limits.note_allocation(this, info.span - moved);
                }
                this.events.emit(Event::Assembled {
                    capacity: info.capacity,
                    moved,
                    fresh: info.span - moved,
                });
            }
        }
        // SAFETY: `this` is a live `Arc`; the block owns this count.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        Some(taken.block)
    }

    /// Moves up to a batch less one of idle blocks from the shared tier
    /// into a thread cache (one was just taken for the caller). Refilled
    /// blocks keep their reservation and take a pool count each.
    fn refill(this: &Arc<PoolInner>, cache: &mut CacheState, class: usize) {
        for _ in 1..this.info[class].batch {
            let Some(block) = this.shared[class].pop() else {
                break;
            };
            match cache.stock(class, block) {
                Ok(()) => {
                    // SAFETY: the caller holds a strong count (a handle);
                    // the cached block owns this new one.
                    unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
                }
                Err(block) => {
                    if let Err(block) = this.shared[class].push(block) {
                        // SAFETY: handed back by the queue: still ours.
                        unsafe { this.free_idle(block, class) };
                    }
                    break;
                }
            }
        }
    }

    #[cold]
    fn get_oversize(
        this: &Arc<PoolInner>,
        size: usize,
        admission: Admission,
    ) -> Result<PooledBuf, Error> {
        if size > isize::MAX as usize {
            return Err(Error::CapacityOverflow { requested: size });
        }
        if admission == Admission::Check {
            this.limits.admit(this, size)?;
        }
        this.limits.note_allocation(this, size);
        let block = os::alloc(size)?;
        this.footprint.fetch_add(size, Ordering::Relaxed);
        this.counters.oversize_allocated(size);
        // SAFETY: `this` is a live `Arc`; the new block owns this count.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        // SAFETY: a fresh allocation of `size` bytes, owned by nobody else,
        // whose pool count was just taken.
        let buf = unsafe { PooledBuf::from_oversize(block, size, this) };
        this.events.emit(Event::Allocated {
            capacity: size,
            reason: AllocReason::Oversize,
        });
        Ok(buf)
    }

    /// This thread's cache for the pool exists or was just made. `false`
    /// when the pool is closed, the thread-local is being destroyed, or
    /// the process has no heavy barrier (`barrier::available`).
    fn ensure_cache(this: &Arc<PoolInner>) -> bool {
        if thread_cache::has_cache(this.slot, this.id) {
            return true;
        }
        // Without a heavy barrier no other thread could reach into the
        // cache safely (see `thread_cache`): the pool then works from the
        // shared tier alone.
        if !crate::barrier::available() {
            return false;
        }
        let cache = Arc::new(ThreadCache::new(
            this.id,
            &this.layouts,
            ExitFlush {
                pool: arc_ptr(this).cast(),
                run: flush_exiting,
            },
        ));
        {
            let mut registry = this.registry.lock();
            // Checked under the registry lock, which `close` takes after
            // setting `closed`: either close sees this cache, or this sees
            // the pool closed.
            if this.closed.load(Ordering::SeqCst) {
                return false;
            }
            registry.push(cache.clone());
        }
        if thread_cache::install(this.slot, cache.clone()) {
            return true;
        }
        this.registry.lock().retain(|c| !Arc::ptr_eq(c, &cache));
        false
    }
}

// === impl PoolInner: return ===

impl PoolInner {
    /// Takes a returned block back that this thread's front cache did not
    /// take (`PooledBuf`'s `Drop` tries that first, inline). The caller
    /// owns the block and its pool count; on [`Returned::Uncached`] the
    /// caller must drop the count (after this call: it may be the last).
    ///
    /// # Safety
    ///
    /// `this` points to a live pool with the provenance of its `Arc`
    /// (`Arc::as_ptr`), kept alive by the count the caller holds, and
    /// `block` is a block of class `class` of it that the caller gives up.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn give_back(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
    ) -> Returned {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        // SAFETY: forwarded from the caller.
        let returned = unsafe { PoolInner::give_back_slow(this, block, class) };
        // Memory came back (queued, freed or cached): wake a waiter, out of
        // every thread cache's flag.
        pool.limits.note_return();
        returned
    }

    /// A return that the thread cache did not take as it stood: spill or
    /// reserve and retry, else the shared tier, else free.
    ///
    /// # Safety
    ///
    /// As [`give_back`](Self::give_back).
    #[inline]
    unsafe fn give_back_slow(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
    ) -> Returned {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        let capacity = pool.info[class].capacity;
        let mut freed_full = 0;
        let reason = if pool.closed.load(Ordering::Relaxed) {
            DropReason::PoolClosed
        } else if pool.limits.is_critical() {
            DropReason::Pressure
        } else {
            if pool.info[class].depth > 0 {
                // SAFETY: forwarded from the caller.
                let kept = unsafe { PoolInner::put_with_room(this, block, class, &mut freed_full) };
                if let Some(kept) = kept {
                    pool.report_freed_full(capacity, freed_full);
                    return kept;
                }
            }
            pool.counters.class[class]
                .returns
                .fetch_add(1, Ordering::Relaxed);
            if pool.retention.try_reserve(capacity) {
                match pool.stash(block, class) {
                    Ok(()) => {
                        pool.report_freed_full(capacity, freed_full);
                        return Returned::Uncached;
                    }
                    Err(_) => pool.retention.unreserve(capacity),
                }
            }
            pool.counters.class[class]
                .dropped_full
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller gave this block up.
            unsafe { pool.free_memory(block, class) };
            pool.report_freed_full(capacity, freed_full);
            pool.events.emit(Event::Dropped {
                capacity,
                reason: DropReason::PoolFull,
            });
            return Returned::Uncached;
        };
        pool.counters.class[class]
            .returns
            .fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller gave this block up.
        unsafe { pool.free_memory(block, class) };
        pool.events.emit(Event::Dropped { capacity, reason });
        Returned::Uncached
    }

    /// Puts a block into this thread's cache after making room: spilling
    /// the oldest batch to the shared tier when full, reserving credit when
    /// short. `None` when there is no cache to use or the budget is spent.
    ///
    /// # Safety
    ///
    /// As [`give_back`](Self::give_back).
    unsafe fn put_with_room(
        this: NonNull<PoolInner>,
        block: NonNull<u8>,
        class: usize,
        freed_full: &mut usize,
    ) -> Option<Returned> {
        // SAFETY: the caller's count keeps the pool alive.
        let pool = unsafe { this.as_ref() };
        // Without a handle at hand, a cache is made through the block's
        // count.
        if !thread_cache::has_cache(pool.slot, pool.id) {
            // SAFETY: `this` carries the provenance of the pool's `Arc` and
            // the caller's block holds a count of it, so taking one more is
            // sound; it is dropped when `handle` drops at the end of this
            // scope.
            let handle = unsafe {
                Arc::increment_strong_count(this.as_ptr().cast_const());
                Arc::from_raw(this.as_ptr().cast_const())
            };
            if !PoolInner::ensure_cache(&handle) {
                return None;
            }
        }
        let info = pool.info[class];
        let mut spilled = 0usize;
        let put = thread_cache::with_cache(pool.slot, pool.id, |cache| {
            if cache.closed {
                return false;
            }
            if cache.put(class, block) {
                return true;
            }
            // Full: the oldest batch goes where every thread can use it.
            if cache.is_full(class) {
                cache.take_oldest(class, info.batch, |old| {
                    spilled += 1;
                    if let Err(old) = pool.stash(old, class) {
                        // SAFETY: handed back by the queue: ours.
                        unsafe { pool.free_idle(old, class) };
                        *freed_full += 1;
                    }
                });
            }
            // Short of credit: reserve a batch's worth, or one buffer's.
            if cache.credit < info.capacity {
                let batch = info.capacity.saturating_mul(info.batch);
                if pool.retention.try_reserve(batch) {
                    cache.credit += batch;
                } else if pool.retention.try_reserve(info.capacity) {
                    cache.credit += info.capacity;
                }
            }
            if cache.credit > pool.credit_limit {
                let keep = pool.credit_limit / 2;
                pool.retention.unreserve(cache.credit - keep);
                cache.credit = keep;
            }
            cache.put(class, block)
        })?;
        // Spilled blocks owned a count each; queued or freed, they own none
        // now. The returned block's count keeps the pool alive meanwhile:
        // it moved into the cache, or stays with the caller.
        // SAFETY: `spilled` counts owned by blocks that no longer hold them,
        // and at least one other count (the returned block's) is alive.
        unsafe { PoolInner::drop_counts(this, spilled) };
        if put { Some(Returned::Cached) } else { None }
    }

    /// Emits the `Dropped` events of spilled blocks the shared tier had no
    /// room for.
    fn report_freed_full(&self, capacity: usize, n: usize) {
        if n > 0 && self.events.enabled() {
            for _ in 0..n {
                self.events.emit(Event::Dropped {
                    capacity,
                    reason: DropReason::PoolFull,
                });
            }
        }
    }

    /// Frees an oversize block. The caller drops its pool count afterwards.
    pub(crate) fn give_back_oversize(&self, block: NonNull<u8>, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        // SAFETY: the caller owned this block of `size` bytes and gives it up.
        if unsafe { os::free(block, size) } {
            self.counters
                .released_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
        }
        self.counters.oversize_returned(size);
        self.limits.note_return();
        self.events.emit(Event::Dropped {
            capacity: size,
            reason: DropReason::Oversize,
        });
    }

    /// Counts a block that leaves the pool through `into_vec`.
    pub(crate) fn detach(&self, class: u32, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        self.limits.note_return();
        if class == OVERSIZE {
            self.counters.oversize_returned(size);
        } else {
            self.counters.class[class as usize]
                .detached
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops `n` strong counts of the pool at `this` that blocks owned.
    ///
    /// # Safety
    ///
    /// `this` carries the provenance of the pool's `Arc` ([`arc_ptr`]); the
    /// counts were owned by blocks that gave them up, and another count
    /// stays alive across the call (so none of these is the last).
    pub(crate) unsafe fn drop_counts(this: NonNull<PoolInner>, n: usize) {
        for _ in 0..n {
            // SAFETY: forwarded from the caller.
            unsafe { Arc::decrement_strong_count(this.as_ptr().cast_const()) };
        }
    }

    /// Frees a block of `class`, counting the bytes whose pages went
    /// straight back to the OS. It wakes no admission waiter: it may run
    /// under a thread cache's flag, where no outside code may run; the
    /// callers wake them once out ([`Limits::note_return`]).
    ///
    /// # Safety
    ///
    /// `block` is a block of `class` of this pool that the caller owns and
    /// gives up.
    pub(crate) unsafe fn free_memory(&self, block: NonNull<u8>, class: usize) {
        let info = self.info[class];
        self.footprint.fetch_sub(info.span, Ordering::Relaxed);
        let released = if info.large {
            // SAFETY: blocks of large classes come from the large tier.
            unsafe { self.large.unmap(block, info.span) };
            true
        } else {
            // SAFETY: forwarded from the caller: a block of the class's
            // capacity from `os::alloc`.
            unsafe { os::free(block, info.capacity) }
        };
        if released {
            self.counters
                .released_bytes
                .fetch_add(info.span as u64, Ordering::Relaxed);
        }
    }

    /// Queues an idle block that holds a reservation of its capacity: in
    /// its class's shared queue, or as idle pages of the large tier (which
    /// keeps whole pages reserved: the rounding up to a page is reserved
    /// here). On `Err` the block is the caller's again, still reserved.
    pub(crate) fn stash(&self, block: NonNull<u8>, class: usize) -> Result<(), NonNull<u8>> {
        let info = self.info[class];
        if !info.large {
            return self.shared[class].push(block);
        }
        let slack = info.span - info.capacity;
        if slack > 0 && !self.retention.try_reserve(slack) {
            return Err(block);
        }
        // SAFETY: an idle block of a large class, so from the large tier,
        // of `span` bytes; the caller hands it over.
        unsafe { self.large.put_hot(class, block) };
        Ok(())
    }

    /// Unmaps up to `bytes` of the large tier's idle pages as trimmed.
    pub(crate) fn release_large(&self, bytes: usize, freed: &mut Freed) {
        let released = self.large.release(bytes);
        if released == 0 {
            return;
        }
        self.footprint.fetch_sub(released, Ordering::Relaxed);
        self.retention.unreserve(released);
        self.counters
            .released_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
        self.counters
            .large_trimmed_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
        freed.bytes += released;
    }

    /// Frees an idle block that held a reservation (and no pool count: a
    /// queued block, or a cached one whose count the caller drops).
    ///
    /// # Safety
    ///
    /// `block` is an idle block of `class` that the caller took out of a tier.
    pub(crate) unsafe fn free_idle(&self, block: NonNull<u8>, class: usize) {
        // SAFETY: the caller took the block out of its tier: it is ours.
        unsafe { self.free_memory(block, class) };
        self.retention.unreserve(self.info[class].capacity);
    }
}

// === impl PoolInner: caches ===

impl PoolInner {
    /// Closes the pool (the last handle went): returns free from now on,
    /// every thread cache is emptied and closed, the shared tier freed.
    fn close(this: &Arc<PoolInner>) {
        this.closed.store(true, Ordering::SeqCst);
        let caches = std::mem::take(&mut *this.registry.lock());
        let mut freed = Freed::default();
        // A cache whose flag cannot be had is held by a thread that no
        // longer exists (a fork child): its blocks keep the pool alive, and
        // nothing else can be done.
        PoolInner::for_each_open_cache(&caches, |state| {
            PoolInner::empty_cache(this, state, &mut freed);
            this.counters.absorb(state);
            state.closed = true;
        });
        drop(caches);
        this.empty_shared(&mut freed);
        this.finish_pass(freed, TrimReason::PoolClosed);
    }

    /// Runs `f` on every open cache of `caches`, all entered together with
    /// one heavy barrier ([`thread_cache::lock_all`]) and each let go once
    /// done. A cache that cannot be entered within [`LOCK_PATIENCE`] tries
    /// (held by a thread lost in a `fork`) is skipped.
    pub(crate) fn for_each_open_cache(
        caches: &[Arc<ThreadCache>],
        mut f: impl FnMut(&mut CacheState),
    ) {
        for mut guard in thread_cache::lock_all(caches, LOCK_PATIENCE, LOCK_PATIENCE) {
            guard.with(|state| {
                if !state.closed {
                    f(state);
                }
            });
        }
    }

    /// Frees every block of a locked cache as trimmed and gives its credit
    /// back.
    pub(crate) fn empty_cache(this: &Arc<PoolInner>, state: &mut CacheState, freed: &mut Freed) {
        let before = freed.buffers;
        state.drain(|class, block| {
            // SAFETY: just taken out of the cache; it owned a count, which
            // `drop_counts` below gives up.
            unsafe { this.trim_block(block, class, freed) };
        });
        this.retention.unreserve(std::mem::take(&mut state.credit));
        // SAFETY: the freed blocks' counts; `this` is another.
        unsafe { PoolInner::drop_counts(arc_ptr(this), freed.buffers - before) };
    }

    /// Frees every block queued in the shared tier as trimmed.
    pub(crate) fn empty_shared(&self, freed: &mut Freed) {
        for (class, tier) in self.shared.iter().enumerate() {
            while let Some(block) = tier.pop() {
                // SAFETY: popped from the queue, so it is ours.
                unsafe { self.trim_block(block, class, freed) };
            }
        }
        self.large.drain_hot();
        self.release_large(usize::MAX, freed);
    }

    /// Flushes this thread's cache into the shared tier and forgets it.
    fn flush_current_thread(this: &Arc<PoolInner>) {
        let Some(cache) = thread_cache::uninstall(this.slot, this.id) else {
            return;
        };
        if let Some(mut guard) = cache.lock_as_owner(u32::MAX) {
            guard.with(|state| {
                if !state.closed {
                    // SAFETY: `this` is a handle's `Arc`, not a block's count.
                    unsafe { PoolInner::flush_into_shared(arc_ptr(this), state) };
                    state.closed = true;
                }
            });
        }
        this.registry.lock().retain(|c| !Arc::ptr_eq(c, &cache));
    }

    /// Moves a locked, open cache's blocks into the shared tier (freeing
    /// what does not fit), gives back its credit and folds its counters.
    /// Runs no user code (it may run in a thread-local destructor).
    ///
    /// # Safety
    ///
    /// `this` is a live pool with the provenance of its `Arc`, kept alive
    /// by a count that is not one of the cached blocks'.
    unsafe fn flush_into_shared(this: NonNull<PoolInner>, state: &mut CacheState) {
        // SAFETY: alive, by the caller's promise.
        let pool = unsafe { this.as_ref() };
        let mut counts = 0;
        state.drain(|class, block| {
            counts += 1;
            if let Err(block) = pool.stash(block, class) {
                // SAFETY: handed back by the queue: ours.
                unsafe { pool.free_idle(block, class) };
                pool.counters.class[class]
                    .dropped_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
        pool.retention.unreserve(std::mem::take(&mut state.credit));
        pool.counters.absorb(state);
        // SAFETY: the moved blocks' counts; the cache is open, so the pool
        // is alive through a handle or a closer's `Arc` (see
        // `CacheState::closed`), which is not among these.
        unsafe { PoolInner::drop_counts(this, counts) };
    }
}

/// The thread-exit flush installed in every cache ([`ExitFlush`]).
///
/// # Safety
///
/// `pool` is the `PoolInner` the cache belongs to, and the cache is locked
/// and not closed, so the pool is alive.
unsafe fn flush_exiting(pool: NonNull<()>, cache: *const ThreadCache, state: &mut CacheState) {
    let this = pool.cast::<PoolInner>();
    // SAFETY: by the contract, a live pool with the provenance of its `Arc`
    // (`ensure_cache` installs `arc_ptr`), kept alive by a handle or a
    // closer while the cache is open.
    let pool = unsafe { this.as_ref() };
    // SAFETY: as above.
    unsafe { PoolInner::flush_into_shared(this, state) };
    // Leave the registry (lock order: a cache, then the registry; nothing
    // takes them the other way round).
    pool.registry
        .lock()
        .retain(|c| !std::ptr::eq(Arc::as_ptr(c), cache));
}

impl Drop for PoolInner {
    /// Frees what is still queued in the shared tier and the large tier
    /// (blocks pushed after the closing trim by an exiting thread) and
    /// gives the slot back.
    fn drop(&mut self) {
        for (class, tier) in self.shared.iter().enumerate() {
            while let Some(block) = tier.pop() {
                // SAFETY: popped from the queue, so it is ours; nothing else
                // can reach the pool any more.
                unsafe { os::free(block, self.info[class].capacity) };
            }
        }
        self.large.release_all();
        slots::recycle(self.slot);
        crate::trim::forget_soon();
    }
}

/// The pool's address with the provenance of its whole `Arc` allocation,
/// so that strong counts can be taken and dropped through it.
#[inline]
pub(crate) fn arc_ptr(this: &Arc<PoolInner>) -> NonNull<PoolInner> {
    // SAFETY: `Arc::as_ptr` never returns null.
    unsafe { NonNull::new_unchecked(Arc::as_ptr(this).cast_mut()) }
}

/// Pool ids and the slot numbers of the per-thread cache tables.
///
/// Lock-free, so building a pool never waits on a lock that a thread lost
/// in a `fork` could hold.
mod slots {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
    static FREE: crossbeam_queue::SegQueue<usize> = crossbeam_queue::SegQueue::new();

    /// A process-unique pool id.
    pub(super) fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// A slot number no live pool uses, the lowest free ones first so the
    /// tables stay small.
    pub(super) fn acquire() -> usize {
        // Inside the fork gate: a push or pop cut short by a fork would
        // leave the queue waiting for a thread the child does not have.
        let _gate = crate::sync::fork_gate();
        FREE.pop()
            .unwrap_or_else(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed))
    }

    /// Gives a freed pool's slot back.
    pub(super) fn recycle(slot: usize) {
        let _gate = crate::sync::fork_gate();
        FREE.push(slot);
    }
}
