//! `Pool` and its builder: the get and return paths through the tiers.
//!
//! ```text
//!  get ──► thread cache ──(empty)──► shared tier (+2 classes up) ──► mem::alloc
//!  drop ──► thread cache ──(full: spill oldest)──► shared tier ──(full)──► mem::free
//! ```
//!
//! Mapped classes (128 KiB and up on Unix) have no shared queues: their
//! idle memory is the large tier's pages (`tier::large`), which a request is
//! cut from or assembled from, and a return or a spill goes back to.
//!
//! The thread cache (`thread_cache.rs`) is a leaf; this file refills and
//! spills it. The retention budget is `retention.rs`, trimming `trim.rs`,
//! the container's memory and admission `limits/`.

mod admission;
mod block;
mod builder;
mod caches;
mod get;
mod give_back;
mod inner;
mod pool_ref;
mod pressure;
mod stats;
mod trim;

pub(crate) use admission::Draw;
pub use admission::{Acquire, AdmitFuture, Permit};
pub(crate) use block::BlockPool;
pub(crate) use inner::ReturnTo;
use inner::{Admission, ClassInfo, PoolInner, Returned};
use pool_ref::{PoolRef, arc_ptr};

use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use crate::buf::PooledBuf;
use crate::event::{AllocReason, DropReason, Event, EventHook, Events, TrimReason};
use crate::io::label::{Activity, AdapterCounters, LabelState, Labels};
use crate::limits::{Limits, LimitsConfig, MemoryLimit, PageCache, Thresholds};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::sys::mem;
use crate::tier::large::{LargeTier, Source};
use crate::tier::retention::Retention;
use crate::tier::shared::SharedTier;
use crate::tier::thread_cache::{self, CacheState, ClassLayout, ExitFlush, ThreadCache};
use crate::{Error, SizeClasses};
use stats::PoolCounters;
use trim::Freed;

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
    metrics_all_classes: bool,
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
            metrics_all_classes: false,
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
        unsafe { PooledBuf::from_block(block, capacity, BlockPool::of(&self.inner), class) }
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

    /// A read's next chunk: a block of the class that holds `size` bytes,
    /// or, when none is idle but a mapped block of at least half that is,
    /// that one, taken with no system call. A read's chunk sizes are free,
    /// so it takes what is there instead of assembling a block with
    /// `mremap` (or faulting a fresh one) every time a steady upload's last
    /// chunk was cut down to its data. Else as [`try_get`](Self::try_get).
    pub(crate) fn try_get_chunk(&self, size: usize) -> Result<PooledBuf, Error> {
        PoolInner::get_chunk(&self.inner, size)
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

    fn inner_arc(&self) -> &Arc<PoolInner> {
        &self.inner
    }

    /// Records an adapter's call (a read, a body, a writer) in the pool's
    /// adapter statistics.
    pub(crate) fn record_activity(&self, activity: &Activity) {
        self.inner.adapters.record(activity);
    }

    /// Notes the length of a read that ended, for the next read's plan.
    pub(crate) fn note_read_len(&self, len: usize) {
        self.inner.adapters.note_len(len);
    }

    /// The length of the last read of this pool that ended, if any did.
    pub(crate) fn last_read_len(&self) -> Option<usize> {
        self.inner.adapters.last_len()
    }

    /// What [`read_file`](Self::read_file) and
    /// [`write_file`](Self::write_file) do with the page cache.
    pub(crate) fn page_cache(&self) -> PageCache {
        self.inner.limits.page_cache()
    }

    /// The label `name` of this pool's reads (made on first use).
    pub(crate) fn label_state(&self, name: &str) -> Arc<LabelState> {
        self.inner.labels.get(name, self.inner.classes.len())
    }

    /// Publishes the pool's figures through the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_figures(&self) {
        self.inner.publish_figures();
    }
}

impl PoolInner {
    /// Publishes the pool's figures under its metrics name (its
    /// [`PoolBuilder::name`], else `pool-<id>`).
    #[cfg(feature = "metrics")]
    fn publish_figures(&self) {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => format!("pool-{}", self.id),
        };
        crate::ext::metrics::publish(&self.stats(), &name, self.metrics_all_classes);
    }
}

/// What tests inside the crate may do to a pool that its API does not
/// offer: drive its clock, reach its open thread caches, watch its life.
#[cfg(test)]
impl Pool {
    /// One idle tick, as the trimmer runs it every `trim_interval`.
    pub(crate) fn tick_now(&self) {
        PoolInner::tick(&self.inner);
    }

    /// The pool's open thread caches, as a trim pass sees them.
    pub(crate) fn open_caches(&self) -> Vec<Arc<ThreadCache>> {
        self.inner.registry.lock().clone()
    }

    /// Whether the pool's memory is still allocated, after this handle is
    /// gone.
    #[cfg(not(tierpool_loom))]
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(Arc::downgrade(&self.inner))
    }

    /// Whether nobody waits in the pool's admission queue.
    #[cfg(tierpool_loom)]
    pub(crate) fn no_waiters(&self) -> bool {
        self.inner.limits.waiters.is_empty()
    }
}

/// Whether a pool is still allocated ([`Pool::liveness`]).
#[cfg(all(test, not(tierpool_loom)))]
pub(crate) struct Liveness(std::sync::Weak<PoolInner>);

#[cfg(all(test, not(tierpool_loom)))]
impl Liveness {
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
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

/// Every pool of the process that may still live, for process-wide
/// figures ([`MemoryReport`](crate::MemoryReport)).
#[cfg(not(tierpool_loom))]
static LIVE: std::sync::Mutex<Vec<std::sync::Weak<PoolInner>>> = std::sync::Mutex::new(Vec::new());

/// Notes a new pool (and forgets the ones freed since).
fn register(pool: &Arc<PoolInner>) {
    #[cfg(not(tierpool_loom))]
    {
        let _gate = crate::sys::fork::fork_gate();
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|p| p.strong_count() > 0);
        live.push(Arc::downgrade(pool));
    }
    #[cfg(tierpool_loom)]
    let _ = pool;
}

/// Forgets a pool being freed, so its `Arc`'s allocation goes with it.
fn unregister(pool: *const PoolInner) {
    #[cfg(not(tierpool_loom))]
    {
        let _gate = crate::sys::fork::fork_gate();
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|p| !std::ptr::eq(p.as_ptr(), pool));
    }
    #[cfg(tierpool_loom)]
    let _ = pool;
}

/// Bytes handed out and kept idle by every pool and the global allocator:
/// `(in_use, idle)`.
pub(crate) fn tierpool_bytes() -> (u64, u64) {
    let global = crate::global::stats();
    #[cfg_attr(tierpool_loom, allow(unused_mut))]
    let (mut in_use, mut idle) = (global.in_use_bytes as u64, global.idle_bytes as u64);
    #[cfg(not(tierpool_loom))]
    {
        let pools: Vec<Arc<PoolInner>> = {
            let _gate = crate::sys::fork::fork_gate();
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            live.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for pool in pools {
            let stats = pool.stats();
            in_use += stats.in_use_bytes as u64;
            idle += stats.retained_bytes as u64;
        }
    }
    (in_use, idle)
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
