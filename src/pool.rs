//! `Pool`, its builder, and the shared state every tier works on.

use std::alloc::{Layout, alloc, dealloc};
use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use crate::buf::PooledBuf;
use crate::event::{AllocReason, DropReason, Event, EventHook, HookDebug, TrimReason};
use crate::shared_tier::SharedTier;
use crate::stats::{ClassCounters, ClassStats, Stats, Writer};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::thread_cache::{self, ThreadCache};
use crate::{Error, SizeClasses};

/// Default cap on idle memory across all tiers: 256 MiB.
pub const DEFAULT_MAX_RETAINED_BYTES: usize = 256 << 20;
/// Default bytes each thread may keep per class in its cache: 256 KiB.
pub const DEFAULT_THREAD_CACHE_BYTES: usize = 256 << 10;
/// Default bytes the shared tier may queue per class: 128 MiB (so a 64 MiB
/// body read in 4 MiB chunks comes back whole); `max_retained_bytes` bounds
/// all classes together.
pub const DEFAULT_SHARED_TIER_BYTES: usize = 128 << 20;
/// Default interval of trimming on idle: 5 seconds.
///
/// A buffer idle for one whole interval is freed by the end of the next, so
/// memory is back within 10 s of the last traffic: well inside the 15–60 s
/// that metrics scrapers and autoscalers look at, and far from the minutes a
/// pod takes to creep into its limit. Under steady traffic, anything used
/// within 5 s stays pooled. A pass costs a few microseconds per thread
/// cache, so a shorter interval costs little; a longer one lets more stale
/// memory stay.
pub const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// Blocks of at least this many bytes are mapped straight from the OS on
/// Unix, so that freeing one hands its pages back at once (glibc would keep
/// them in an arena once its dynamic mmap threshold has risen).
pub const MMAP_THRESHOLD: usize = 128 << 10;
/// The most buffers a thread cache keeps per class, however small the class.
pub const MAX_THREAD_CACHE_DEPTH: usize = 32;
/// The most buffers the shared tier queues per class.
pub const MAX_SHARED_TIER_DEPTH: usize = 1024;
/// How many classes above the requested one a miss may borrow an idle
/// buffer from before allocating. Borrowing turns a fresh allocation (page
/// faults) into a reuse at the price of at most two classes' rounding.
const BORROW_CLASSES_ABOVE: usize = 2;
/// Default demand cap: a miss reshapes or frees idle buffers while more
/// bytes sit idle than are in use. See [`PoolBuilder::demand_cap`].
pub const DEFAULT_DEMAND_CAP: f64 = 1.0;
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
/// themselves when dropped.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
    _handle: Arc<Handle>,
}

/// Closes the pool when the last `Pool` handle goes.
struct Handle(Arc<PoolInner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        PoolInner::trim(&self.0, TrimReason::PoolClosed);
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
    demand_cap: f64,
    hook: Option<EventHook>,
}

/// Per-class figures fixed at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassInfo {
    pub(crate) capacity: usize,
    /// Slots per thread cache.
    pub(crate) depth: usize,
    /// Buffers moved per refill or spill.
    pub(crate) batch: usize,
    /// Where this class's slots start in a thread cache.
    pub(crate) slot_start: usize,
    /// Most unused reservation a thread cache keeps for this class.
    pub(crate) credit_limit: usize,
}

/// What a pool's handles and buffers share.
///
/// Only ever created inside an `Arc` (by [`PoolBuilder::build`]). Every block
/// in use or in a thread cache owns one strong count of that `Arc`, so a
/// buffer can always reach its pool; blocks queued in the shared tier own
/// none and are freed by the pool's `Drop` if still there.
pub(crate) struct PoolInner {
    pub(crate) classes: SizeClasses,
    pub(crate) info: Box<[ClassInfo]>,
    pub(crate) slots_per_cache: usize,
    pub(crate) shared: Box<[SharedTier]>,
    /// Bytes reserved for retention: idle buffers in every tier plus the
    /// unused reservations ("credit") of thread caches. Never above
    /// `max_retained`; reserving is the only way to keep a buffer.
    reserved: AtomicUsize,
    pub(crate) max_retained: usize,
    /// Live thread caches, for `trim` and `stats`.
    pub(crate) registry: Mutex<Vec<Arc<ThreadCache>>>,
    /// Counters of paths without a thread cache, and of exited threads.
    pub(crate) totals: Box<[ClassCounters]>,
    oversize_allocations: AtomicU64,
    oversize_in_use_bytes: AtomicUsize,
    oversize_in_use_buffers: AtomicUsize,
    trim_passes: AtomicU64,
    trimmed_bytes: AtomicU64,
    released_bytes: AtomicU64,
    /// Bytes allocated and not yet freed or detached: in use plus retained.
    /// Changed on the slow paths only (allocation, free).
    footprint: AtomicUsize,
    /// Idle capacity that trimming on idle leaves pooled.
    pub(crate) min_retained: usize,
    /// Idle bytes allowed per byte in use before a miss reshapes or frees.
    demand_cap: f64,
    /// Set when the last handle drops: returns free from then on.
    pub(crate) closed: AtomicBool,
    hook: Option<EventHook>,
    /// What the adapters did, all labels and none.
    pub(crate) adapters: crate::label::AdapterCounters,
    /// The labels of `Pool::reader`, in order of first use.
    labels: Mutex<Vec<Arc<crate::label::Label>>>,
}

/// What happened to a returned block's pool count.
///
/// Blocks in use and blocks in thread caches each own a strong count of the
/// pool's `Arc`; blocks queued in the shared tier own none (the pool frees
/// them when it drops). So a return into a thread cache moves the count, and
/// any other outcome leaves the caller to release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// Kept in a thread cache, which now owns the block's count.
    Cached,
    /// Freed, or queued in the shared tier: the caller releases the count.
    Released,
}

// === impl Pool ===

impl Pool {
    /// A pool with the default classes (4 KiB–64 MiB, 4 per doubling) and caps.
    pub fn new() -> Pool {
        Pool::builder().build()
    }

    /// A builder to choose classes, caps and tier depths.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            classes: SizeClasses::default(),
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            thread_cache_bytes: DEFAULT_THREAD_CACHE_BYTES,
            shared_tier_bytes: DEFAULT_SHARED_TIER_BYTES,
            trim_interval: DEFAULT_TRIM_INTERVAL,
            min_retained_bytes: 0,
            demand_cap: DEFAULT_DEMAND_CAP,
            hook: None,
        }
    }

    /// A buffer with `len() == 0` and `capacity() >= min_capacity`: the
    /// class's capacity, or exactly `min_capacity` above the largest class.
    ///
    /// # Panics
    ///
    /// When `min_capacity` exceeds `isize::MAX` bytes, like `Vec`; when the
    /// allocator fails, the process aborts through
    /// [`handle_alloc_error`](std::alloc::handle_alloc_error), like `Vec`.
    /// [`try_get`](Self::try_get) returns both as errors.
    #[inline]
    pub fn get(&self, min_capacity: usize) -> PooledBuf {
        if let Some(buf) = self.inner.get_idle(&self.inner, min_capacity) {
            return buf;
        }
        match self.inner.get_slow(&self.inner, min_capacity) {
            Ok(buf) => buf,
            Err(e) => fail(e),
        }
    }

    /// Like [`get`](Self::get), but an absurd size or a failed allocation is
    /// an error instead of a panic or an abort.
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
    /// [`Error::AllocFailed`] when the allocator refuses.
    #[inline]
    pub fn try_get(&self, min_capacity: usize) -> Result<PooledBuf, Error> {
        match self.inner.get_idle(&self.inner, min_capacity) {
            Some(buf) => Ok(buf),
            None => self.inner.get_slow(&self.inner, min_capacity),
        }
    }

    /// Frees every idle buffer now, in every tier: the shared tier and the
    /// caches of all threads, idle ones included (exited threads flushed
    /// theirs into the shared tier when they exited).
    ///
    /// Buffers returned while the trim runs may stay.
    pub fn trim(&self) {
        PoolInner::trim(&self.inner, TrimReason::Manual);
    }

    /// Moves this thread's idle buffers for this pool to the shared tier and
    /// drops this thread's cache. A thread does this by itself when it
    /// exits; a long-lived thread about to go idle for a while (a worker
    /// whose queue drained) can do it early so other threads reuse its
    /// buffers. The next `get` on this thread starts a new cache.
    pub fn flush_thread_cache(&self) {
        thread_cache::flush_current(&self.inner);
    }

    /// A snapshot of memory and traffic; see [`Stats`].
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The classes this pool rounds requests up to.
    pub fn size_classes(&self) -> &SizeClasses {
        &self.inner.classes
    }

    /// The cap on idle memory across all tiers.
    pub fn max_retained_bytes(&self) -> usize {
        self.inner.max_retained
    }

    pub(crate) fn inner_arc(&self) -> &Arc<PoolInner> {
        &self.inner
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("classes", &self.inner.classes)
            .field("max_retained_bytes", &self.inner.max_retained)
            .field("on_event", &HookDebug(&self.inner.hook))
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

#[cold]
#[track_caller]
fn fail(e: Error) -> ! {
    match e {
        Error::AllocFailed { size } => {
            // Same as `Vec`: out of memory is not a panic.
            std::alloc::handle_alloc_error(Layout::array::<u8>(size).expect("checked"))
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
    /// included (default [`DEFAULT_MAX_RETAINED_BYTES`]). A buffer returned
    /// into a full pool is freed. `0` keeps nothing.
    pub fn max_retained_bytes(mut self, bytes: usize) -> Self {
        self.max_retained_bytes = bytes;
        self
    }

    /// How many bytes each thread's cache may keep per class (default
    /// [`DEFAULT_THREAD_CACHE_BYTES`]): `bytes / capacity` buffers, at most
    /// [`MAX_THREAD_CACHE_DEPTH`]. So small classes keep many buffers per
    /// thread, and classes larger than `bytes` none: their buffers go straight
    /// to the shared tier (one queue operation, nothing next to filling a
    /// buffer that size), where every thread can reuse them. `0` turns
    /// thread caches off.
    pub fn thread_cache_bytes(mut self, bytes: usize) -> Self {
        self.thread_cache_bytes = bytes;
        self
    }

    /// How many bytes the shared tier may queue per class (default
    /// [`DEFAULT_SHARED_TIER_BYTES`]): `bytes / capacity` buffers, at least two
    /// and at most [`MAX_SHARED_TIER_DEPTH`].
    pub fn shared_tier_bytes(mut self, bytes: usize) -> Self {
        self.shared_tier_bytes = bytes;
        self
    }

    /// How often idle memory is trimmed (default [`DEFAULT_TRIM_INTERVAL`]):
    /// a buffer that stays idle through one whole interval, in any tier
    /// (idle and exited threads' caches included), is freed by the end of the
    /// next, so two intervals after the last traffic the pool holds no more
    /// than [`min_retained_bytes`](Self::min_retained_bytes). One background
    /// thread, `tierpool-trimmer`, started on first use, serves every pool;
    /// it never keeps the process alive, and a dropped pool leaves it.
    /// `Duration::ZERO` turns trimming on idle off (`Pool::trim` still works).
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval;
        self
    }

    /// Idle capacity that trimming on idle leaves pooled (default 0), so the
    /// first requests after a quiet spell are still hits. `Pool::trim` frees
    /// everything regardless.
    pub fn min_retained_bytes(mut self, bytes: usize) -> Self {
        self.min_retained_bytes = bytes;
        self
    }

    /// How many idle bytes the pool may hold per byte in use before a miss
    /// turns idle memory of other classes into the class it needs (default
    /// [`DEFAULT_DEMAND_CAP`], 1.0).
    ///
    /// On such a miss the pool reshapes an idle mapped buffer of another
    /// class with `mremap` (Linux: its pages keep serving) or frees idle
    /// buffers before allocating. A lower cap keeps a burst's peak closer to
    /// what it uses at the price of more page faults; `f64::INFINITY` turns
    /// the cap off (then only `max_retained_bytes` and trimming bound idle
    /// memory). On the mixed workload of the README, 1.0 runs within
    /// 1.05–1.2× of an ideal pre-faulted pool; without the cap, idle buffers
    /// of every class a burst touched pile up to `max_retained_bytes`.
    ///
    /// # Panics
    ///
    /// If `ratio` is negative or NaN.
    pub fn demand_cap(mut self, ratio: f64) -> Self {
        assert!(
            ratio >= 0.0,
            "tierpool: demand_cap must be 0 or more, got {ratio}"
        );
        self.demand_cap = ratio;
        self
    }

    /// A callback for every [`Event`]: allocations, frees instead of reuse,
    /// trim passes. It runs on the thread where the event happened, outside
    /// any lock, and may use the pool. Keep it short (count, don't log every
    /// event at info level). With no callback, events cost nothing.
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Builds the pool.
    pub fn build(self) -> Pool {
        let mut slot_start = 0;
        let info: Box<[ClassInfo]> = self
            .classes
            .sizes()
            .iter()
            .map(|&capacity| {
                // Classes larger than the per-class budget skip the thread
                // cache: their buffers go straight to the shared tier, so no
                // thread sits on a large idle buffer another thread needs.
                let depth = (self.thread_cache_bytes / capacity).min(MAX_THREAD_CACHE_DEPTH);
                let batch = (depth / 2).max(1);
                let class = ClassInfo {
                    capacity,
                    depth,
                    batch,
                    slot_start,
                    credit_limit: depth * capacity,
                };
                slot_start += depth;
                class
            })
            .collect();
        let shared = self
            .classes
            .sizes()
            .iter()
            .map(|&c| SharedTier::new((self.shared_tier_bytes / c).clamp(2, MAX_SHARED_TIER_DEPTH)))
            .collect();
        let totals = info.iter().map(|_| ClassCounters::default()).collect();
        let inner = Arc::new(PoolInner {
            classes: self.classes,
            info,
            slots_per_cache: slot_start,
            shared,
            reserved: AtomicUsize::new(0),
            max_retained: self.max_retained_bytes,
            registry: Mutex::new(Vec::new()),
            totals,
            oversize_allocations: AtomicU64::new(0),
            oversize_in_use_bytes: AtomicUsize::new(0),
            oversize_in_use_buffers: AtomicUsize::new(0),
            trim_passes: AtomicU64::new(0),
            trimmed_bytes: AtomicU64::new(0),
            released_bytes: AtomicU64::new(0),
            footprint: AtomicUsize::new(0),
            min_retained: self.min_retained_bytes,
            demand_cap: self.demand_cap,
            closed: AtomicBool::new(false),
            hook: self.hook,
            adapters: crate::label::AdapterCounters::default(),
            labels: Mutex::new(Vec::new()),
        });
        // No background thread under loom (models spawn their own threads) or
        // miri (it would outlive the test's main thread); their tests drive
        // the ticks directly.
        #[cfg(not(any(loom, miri)))]
        if !self.trim_interval.is_zero() {
            crate::trimmer::register(&inner, self.trim_interval);
        }
        Pool {
            _handle: Arc::new(Handle(inner.clone())),
            inner,
        }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("classes", &self.classes)
            .field("max_retained_bytes", &self.max_retained_bytes)
            .field("thread_cache_bytes", &self.thread_cache_bytes)
            .field("shared_tier_bytes", &self.shared_tier_bytes)
            .field("trim_interval", &self.trim_interval)
            .field("min_retained_bytes", &self.min_retained_bytes)
            .field("demand_cap", &self.demand_cap)
            .field("on_event", &HookDebug(&self.hook))
            .finish()
    }
}

// === impl PoolInner ===

impl PoolInner {
    /// Serves a request: thread cache, shared tier, a larger class's idle
    /// buffer, then the allocator.
    pub(crate) fn get(
        &self,
        this: &Arc<PoolInner>,
        min_capacity: usize,
    ) -> Result<PooledBuf, Error> {
        match self.get_idle(this, min_capacity) {
            Some(buf) => Ok(buf),
            None => self.get_slow(this, min_capacity),
        }
    }

    /// The fast path: an idle buffer of the class (or up to two above) from
    /// this thread's cache or the shared tier; `None` when the request needs
    /// the allocator.
    #[inline]
    pub(crate) fn get_idle(&self, this: &Arc<PoolInner>, min_capacity: usize) -> Option<PooledBuf> {
        let class = self.classes.index_for(min_capacity)?;
        let found = match thread_cache::with_local(arc_ptr(this), |pool, cache, owner| {
            cache.take(pool, class, owner)
        }) {
            Some(found) => found,
            None => PoolInner::take_shared(this, class, None, Writer::Any),
        };
        let (ptr, class) = found?;
        // SAFETY: `ptr` is an idle block of `class` taken out of a tier, so
        // nobody else owns it; it carries its pool count with it.
        Some(unsafe { PooledBuf::from_block(ptr, self.info[class].capacity, this, class) })
    }

    /// The allocator path: a class miss or an oversize request.
    #[cold]
    pub(crate) fn get_slow(
        &self,
        this: &Arc<PoolInner>,
        min_capacity: usize,
    ) -> Result<PooledBuf, Error> {
        match self.classes.index_for(min_capacity) {
            Some(class) => self.allocate(this, class),
            None => self.get_oversize(this, min_capacity),
        }
    }

    /// The allocator path of a class miss.
    #[cold]
    fn allocate(&self, this: &Arc<PoolInner>, class: usize) -> Result<PooledBuf, Error> {
        let capacity = self.info[class].capacity;
        let ptr = match self.repurpose(class) {
            Some(ptr) => ptr,
            None => {
                PoolInner::make_room(this, capacity);
                alloc_block(capacity)?
            }
        };
        self.footprint.fetch_add(capacity, Ordering::Relaxed);
        // SAFETY: `this` is a live `Arc`; the new block owns this count.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        self.totals[class].misses.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Allocated {
            capacity,
            reason: AllocReason::Miss,
        });
        // SAFETY: a fresh allocation of `capacity` bytes, owned by nobody
        // else, whose pool count was just taken.
        Ok(unsafe { PooledBuf::from_block(ptr, capacity, this, class) })
    }

    /// Whether more bytes sit idle than the demand cap allows for the bytes
    /// in use.
    fn over_demand(&self) -> bool {
        let retained = self.reserved.load(Ordering::Relaxed);
        let in_use = self
            .footprint
            .load(Ordering::Relaxed)
            .saturating_sub(retained);
        retained as f64 > in_use as f64 * self.demand_cap
    }

    /// The demand cap's cheap half (Linux): when a miss of a mapped class
    /// finds too much idle, it reshapes an idle mapped buffer of another
    /// class (the smallest one beyond borrowing reach above, else the
    /// largest below) into the class in demand with `mremap`. The physical
    /// pages stay: shrinking faults nothing, growing faults only the
    /// difference, where a fresh mapping would fault every page.
    #[cold]
    fn repurpose(&self, class: usize) -> Option<NonNull<u8>> {
        let capacity = self.info[class].capacity;
        if !cfg!(target_os = "linux") || !is_mapped(capacity) || !self.over_demand() {
            return None;
        }
        let above = (class + BORROW_CLASSES_ABOVE + 1).min(self.info.len())..self.info.len();
        for c in above.chain((0..class).rev()) {
            let old = self.info[c].capacity;
            if !is_mapped(old) {
                break; // smaller classes are not mapped either
            }
            let Some(ptr) = self.shared[c].pop() else {
                continue;
            };
            // The block leaves retention and its class.
            self.release(old);
            self.footprint.fetch_sub(old, Ordering::Relaxed);
            self.totals[c].trimmed.fetch_add(1, Ordering::Relaxed);
            self.trimmed_bytes.fetch_add(old as u64, Ordering::Relaxed);
            // SAFETY: popped from the shared tier, so it is ours: a mapping
            // of `old` bytes (both classes are mapped).
            match unsafe { remap_block(ptr, old, capacity) } {
                Some(ptr) => return Some(ptr),
                None => {
                    // SAFETY: the failed remap left the mapping as it was.
                    unsafe { free_block(ptr, old) };
                    self.released_bytes.fetch_add(old as u64, Ordering::Relaxed);
                    return None;
                }
            }
        }
        None
    }

    /// The demand cap: before a miss allocates `needed` more bytes, frees
    /// idle shared-tier buffers (largest classes first) while more sits idle
    /// than the demand cap allows, up to `needed`
    /// bytes. Turning idle memory of the wrong classes into the class in
    /// demand keeps a burst's peak near what it uses, instead of in-use plus
    /// every class it ever touched.
    #[cold]
    fn make_room(this: &Arc<PoolInner>, needed: usize) {
        let pool = &**this;
        let mut buffers = 0;
        let mut bytes = 0;
        'evict: while bytes < needed {
            if !pool.over_demand() {
                break;
            }
            for (class, tier) in pool.shared.iter().enumerate().rev() {
                if let Some(ptr) = tier.pop() {
                    // SAFETY: just popped from the shared tier.
                    unsafe { pool.free_queued(ptr, class) };
                    pool.totals[class].trimmed.fetch_add(1, Ordering::Relaxed);
                    buffers += 1;
                    bytes += pool.info[class].capacity;
                    continue 'evict;
                }
            }
            break; // nothing idle in the shared tier
        }
        if buffers > 0 {
            pool.trimmed_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
            pool.emit(Event::Trimmed {
                buffers,
                bytes,
                reason: TrimReason::Demand,
            });
        }
    }

    #[cold]
    fn get_oversize(&self, this: &Arc<PoolInner>, size: usize) -> Result<PooledBuf, Error> {
        let ptr = alloc_block(size)?;
        self.footprint.fetch_add(size, Ordering::Relaxed);
        // SAFETY: `this` is a live `Arc`; the new block owns this count.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
        self.oversize_allocations.fetch_add(1, Ordering::Relaxed);
        self.oversize_in_use_bytes
            .fetch_add(size, Ordering::Relaxed);
        self.oversize_in_use_buffers.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Allocated {
            capacity: size,
            reason: AllocReason::Oversize,
        });
        // SAFETY: a fresh allocation of `size` bytes, owned by nobody else,
        // whose pool count was just taken.
        Ok(unsafe { PooledBuf::from_block(ptr, size, this, OVERSIZE as usize) })
    }

    /// Takes an idle block of `class` (or up to two classes above) from the
    /// shared tier, and takes a pool count for it (queued blocks hold none).
    /// `owner` is the calling thread's cache state when there is one: the
    /// block's reservation becomes its credit, and the cache is refilled;
    /// otherwise the reservation is released.
    pub(crate) fn take_shared(
        this: &Arc<PoolInner>,
        class: usize,
        mut owner: Option<(&ThreadCache, &mut [thread_cache::OwnerState])>,
        writer: Writer,
    ) -> Option<(NonNull<u8>, usize)> {
        let last = (class + BORROW_CLASSES_ABOVE).min(this.info.len() - 1);
        for c in class..=last {
            if let Some(ptr) = this.shared[c].pop() {
                // SAFETY: `this` is a live `Arc`; the block owns this count
                // from now on.
                unsafe { Arc::increment_strong_count(Arc::as_ptr(this)) };
                match owner.as_mut() {
                    Some((cache, state)) => {
                        writer.bump(&cache.counters[c].shared_hits);
                        ThreadCache::credit(this, &mut state[c]);
                        if c == class {
                            cache.refill(this, c, &mut state[c]);
                        }
                    }
                    None => {
                        writer.bump(&this.totals[c].shared_hits);
                        this.release(this.info[c].capacity);
                    }
                }
                return Some((ptr, c));
            }
        }
        None
    }

    /// Takes a returned block back. The caller owns the block and its pool
    /// count; on [`Returned::Released`] the caller must release the count
    /// (after this call: it may be the last).
    ///
    /// `this` points to the pool with the provenance of its `Arc` (from
    /// `Arc::as_ptr`), so a thread cache can take a count of it.
    #[inline]
    pub(crate) fn give_back(this: NonNull<PoolInner>, ptr: NonNull<u8>, class: u32) -> Returned {
        // SAFETY: the caller's block holds a strong count: the pool is alive.
        let pool = unsafe { this.as_ref() };
        pool.give_back_to(this, ptr, class)
    }

    #[inline]
    fn give_back_to(&self, this: NonNull<PoolInner>, ptr: NonNull<u8>, class: u32) -> Returned {
        if class == OVERSIZE {
            unreachable!("oversize blocks go through give_back_oversize")
        }
        let class = class as usize;
        let (returned, freed) = match thread_cache::with_local(this, |pool, cache, owner| {
            cache.put(pool, class, ptr, owner)
        }) {
            Some(outcome) => outcome,
            None => self.put_shared(class, ptr),
        };
        if freed.freed_full != 0 || freed.this_one.is_some() {
            self.report_frees(class, freed);
        }
        returned
    }

    /// Emits the `Dropped` events of a return that freed blocks.
    #[cold]
    fn report_frees(&self, class: usize, freed: Freed) {
        let capacity = self.info[class].capacity;
        for _ in 0..freed.freed_full {
            self.emit(Event::Dropped {
                capacity,
                reason: DropReason::PoolFull,
            });
        }
        if let Some(reason) = freed.this_one {
            self.emit(Event::Dropped { capacity, reason });
        }
    }

    /// Frees an oversize block. The caller releases its pool count afterwards.
    pub(crate) fn give_back_oversize(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: the caller owned this block of `size` bytes and gives it up.
        unsafe { self.free_memory(ptr, size) };
        self.oversize_in_use_bytes
            .fetch_sub(size, Ordering::Relaxed);
        self.oversize_in_use_buffers.fetch_sub(1, Ordering::Relaxed);
        self.emit(Event::Dropped {
            capacity: size,
            reason: DropReason::Oversize,
        });
    }

    /// Moves an in-use block from one class to a smaller one in the
    /// accounting: a return of the old class, an allocation of the new.
    pub(crate) fn reclass(
        &self,
        old_class: usize,
        old_cap: usize,
        new_class: usize,
        new_cap: usize,
    ) {
        self.totals[old_class]
            .returns
            .fetch_add(1, Ordering::Relaxed);
        self.totals[new_class]
            .misses
            .fetch_add(1, Ordering::Relaxed);
        self.footprint
            .fetch_sub(old_cap - new_cap, Ordering::Relaxed);
        self.released_bytes
            .fetch_add((old_cap - new_cap) as u64, Ordering::Relaxed);
    }

    /// Counts a block that leaves the pool through `into_vec`.
    pub(crate) fn detach(&self, class: u32, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        if class == OVERSIZE {
            self.oversize_in_use_bytes
                .fetch_sub(size, Ordering::Relaxed);
            self.oversize_in_use_buffers.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.totals[class as usize]
                .detached
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The return path without a thread cache: straight to the shared tier.
    pub(crate) fn put_shared(&self, class: usize, ptr: NonNull<u8>) -> (Returned, Freed) {
        let counters = &self.totals[class];
        counters.returns.fetch_add(1, Ordering::Relaxed);
        let capacity = self.info[class].capacity;
        let reason = if self.closed.load(Ordering::Relaxed) {
            DropReason::PoolClosed
        } else if !self.try_reserve(capacity) {
            DropReason::PoolFull
        } else {
            match self.shared[class].push(ptr) {
                Ok(()) => return (Returned::Released, Freed::default()),
                Err(_) => {
                    self.release(capacity);
                    DropReason::PoolFull
                }
            }
        };
        if reason == DropReason::PoolFull {
            counters.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller gave up this block of `capacity` bytes.
        unsafe { self.free_memory(ptr, capacity) };
        (Returned::Released, Freed::this_one(reason))
    }

    /// Frees a block's memory, counting the bytes whose pages went straight
    /// back to the OS.
    ///
    /// # Safety
    ///
    /// As [`free_block`].
    pub(crate) unsafe fn free_memory(&self, ptr: NonNull<u8>, size: usize) {
        self.footprint.fetch_sub(size, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        if unsafe { free_block(ptr, size) } {
            self.released_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
        }
    }

    /// Reserves `bytes` of retention budget, if the cap allows.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let mut current = self.reserved.load(Ordering::Relaxed);
        loop {
            // [1] Stop if the cap would be passed (saturating: `bytes` is a
            //     class capacity times a small batch, but be safe).
            let Some(next) = current
                .checked_add(bytes)
                .filter(|&n| n <= self.max_retained)
            else {
                return false;
            };
            // [2] Publish; on a race, retry with what the other thread left.
            //     Relaxed: the counter guards no other memory.
            match self.reserved.compare_exchange(
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

    /// Gives back `bytes` of retention budget.
    pub(crate) fn release(&self, bytes: usize) {
        let before = self.reserved.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(
            before >= bytes,
            "released {bytes} of {before} reserved bytes"
        );
    }

    /// Frees an idle block taken out of the shared tier: it holds a
    /// reservation but no pool count.
    ///
    /// # Safety
    ///
    /// `ptr` is a block of `class` that the caller popped from the shared tier.
    pub(crate) unsafe fn free_queued(&self, ptr: NonNull<u8>, class: usize) {
        let capacity = self.info[class].capacity;
        // SAFETY: popped from the queue, so it is ours.
        unsafe { self.free_memory(ptr, capacity) };
        self.release(capacity);
    }

    /// Frees an idle block from a thread cache: it held a reservation and a
    /// pool count.
    ///
    /// # Safety
    ///
    /// `ptr` is an idle block of `class` that the caller took out of a tier.
    /// (`this` is a strong count of the caller's, so releasing the block's
    /// count here is never the last.)
    pub(crate) unsafe fn free_idle(this: &Arc<PoolInner>, ptr: NonNull<u8>, class: usize) {
        let capacity = this.info[class].capacity;
        // SAFETY: the caller took the block out of its tier: it is ours.
        unsafe { this.free_memory(ptr, capacity) };
        this.release(capacity);
        // SAFETY: the block owned one count of this `Arc`, and `this` is
        // another one.
        unsafe { Arc::decrement_strong_count(Arc::as_ptr(this)) };
    }

    /// Frees every idle buffer in every tier.
    pub(crate) fn trim(this: &Arc<PoolInner>, reason: TrimReason) {
        let pool = &**this;
        let mut buffers = 0;
        let mut bytes = 0;
        let mut count = |class: usize| {
            pool.totals[class].trimmed.fetch_add(1, Ordering::Relaxed);
            buffers += 1;
            bytes += pool.info[class].capacity;
        };
        for (class, tier) in pool.shared.iter().enumerate() {
            while let Some(ptr) = tier.pop() {
                // SAFETY: just popped from the shared tier.
                unsafe { pool.free_queued(ptr, class) };
                count(class);
            }
        }
        let caches: Vec<Arc<ThreadCache>> = pool.registry.lock().clone();
        for cache in &caches {
            cache.drain(pool, |ptr, class| {
                // SAFETY: just swapped out of a thread cache slot; `this` is
                // a strong count of the caller's (a `Pool` handle or the
                // closing `Handle`), so the block's count is not the last.
                unsafe { PoolInner::free_idle(this, ptr, class) };
                count(class);
            });
        }
        drop(caches);
        pool.trimmed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        pool.trim_passes.fetch_add(1, Ordering::Relaxed);
        pool.emit(Event::Trimmed {
            buffers,
            bytes,
            reason,
        });
    }

    /// One idle tick: frees every buffer that stayed idle since the last
    /// tick, in the shared tier and in every thread cache, down to
    /// `min_retained`. Driven by the trimmer thread every `trim_interval`,
    /// and directly by tests (the tick is the clock).
    pub(crate) fn tick(this: &Arc<PoolInner>) {
        let pool = &**this;
        let mut buffers = 0;
        let mut bytes = 0;
        let may_free = |class: usize| {
            let capacity = pool.info[class].capacity;
            let retained = pool.reserved.load(Ordering::Relaxed);
            retained.saturating_sub(capacity) >= pool.min_retained
        };
        let mut kept = Vec::new();
        for (class, tier) in pool.shared.iter().enumerate() {
            for _ in 0..tier.idle_since_tick() {
                let Some(ptr) = tier.pop() else { break };
                if !may_free(class) {
                    kept.push(ptr);
                    break;
                }
                // SAFETY: just popped from the shared tier.
                unsafe { pool.free_queued(ptr, class) };
                pool.totals[class].trimmed.fetch_add(1, Ordering::Relaxed);
                buffers += 1;
                bytes += pool.info[class].capacity;
            }
            for ptr in kept.drain(..) {
                if let Err(ptr) = tier.push(ptr) {
                    // SAFETY: the queue handed it back: still ours.
                    unsafe { pool.free_queued(ptr, class) };
                }
            }
            tier.mark_tick();
        }
        let caches: Vec<Arc<ThreadCache>> = pool.registry.lock().clone();
        for cache in &caches {
            cache.drain_idle(pool, |ptr, class| {
                if !may_free(class) {
                    // At the floor: keep it, where every thread can use it.
                    match pool.shared[class].push(ptr) {
                        // SAFETY: queued blocks own no count; `this` is the
                        // caller's, so this one is not the last.
                        Ok(()) => unsafe { Arc::decrement_strong_count(Arc::as_ptr(this)) },
                        // SAFETY: handed back by the queue: still ours.
                        Err(ptr) => unsafe { PoolInner::free_idle(this, ptr, class) },
                    }
                    return;
                }
                // SAFETY: just swapped out of a thread cache slot; `this` is
                // the caller's strong count, so the block's is not the last.
                unsafe { PoolInner::free_idle(this, ptr, class) };
                pool.totals[class].trimmed.fetch_add(1, Ordering::Relaxed);
                buffers += 1;
                bytes += pool.info[class].capacity;
            });
        }
        drop(caches);
        pool.trimmed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        pool.trim_passes.fetch_add(1, Ordering::Relaxed);
        pool.emit(Event::Trimmed {
            buffers,
            bytes,
            reason: TrimReason::Idle,
        });
    }

    /// The label named `name`, created on first use.
    pub(crate) fn label(&self, name: &str) -> Arc<crate::label::Label> {
        let mut labels = self.labels.lock();
        if let Some(label) = labels.iter().find(|l| l.name == name) {
            return label.clone();
        }
        let label = Arc::new(crate::label::Label::new(name.to_string(), self.info.len()));
        labels.push(label.clone());
        label
    }

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
        let thread_caches;
        {
            let registry = self.registry.lock();
            thread_caches = registry.len();
            for cache in registry.iter() {
                cache.add_to(self, &mut classes);
            }
            // Read the totals under the lock too: an exiting thread folds its
            // counters into them under it, so each count is seen exactly once.
            for (counters, out) in self.totals.iter().zip(classes.iter_mut()) {
                counters.add_to(out);
            }
        }
        let mut stats = Stats {
            max_retained_bytes: self.max_retained,
            oversize_allocations: self.oversize_allocations.load(Ordering::Relaxed),
            oversize_in_use_bytes: self.oversize_in_use_bytes.load(Ordering::Relaxed),
            trim_passes: self.trim_passes.load(Ordering::Relaxed),
            trimmed_bytes: self.trimmed_bytes.load(Ordering::Relaxed),
            released_bytes: self.released_bytes.load(Ordering::Relaxed),
            thread_caches,
            ..Stats::default()
        };
        stats.in_use_bytes = stats.oversize_in_use_bytes;
        stats.in_use_buffers = self.oversize_in_use_buffers.load(Ordering::Relaxed);
        for class in &mut classes {
            class.finish();
            stats.retained_bytes += class.retained_bytes;
            stats.retained_buffers += class.retained_buffers;
            stats.in_use_bytes += class.in_use_bytes;
            stats.in_use_buffers += class.in_use_buffers;
        }
        stats.classes = classes;
        stats.adapters = self.adapters.snapshot();
        stats.labels = self
            .labels
            .lock()
            .iter()
            .map(|l| crate::label::label_stats(l, self.classes.sizes()))
            .collect();
        stats
    }

    #[inline]
    fn emit(&self, event: Event) {
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }
}

impl Drop for PoolInner {
    /// Frees what is still queued in the shared tier: blocks pushed there
    /// after the closing trim (a thread exiting as the last handle dropped).
    fn drop(&mut self) {
        for (class, tier) in self.shared.iter().enumerate() {
            while let Some(ptr) = tier.pop() {
                // SAFETY: popped from the queue, so it is ours; nothing else
                // can reach the pool any more.
                unsafe { free_block(ptr, self.info[class].capacity) };
            }
        }
    }
}

/// Frees that a return caused, to report as events once out of the thread
/// cache.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Freed {
    /// Idle blocks freed because the shared tier was full when spilling.
    pub(crate) freed_full: usize,
    /// Why the returned block itself was freed, if it was.
    pub(crate) this_one: Option<DropReason>,
}

impl Freed {
    pub(crate) fn this_one(reason: DropReason) -> Self {
        Freed {
            freed_full: 0,
            this_one: Some(reason),
        }
    }
}

/// The pool's address with the provenance of its whole `Arc` allocation,
/// so that strong counts can be taken and released through it (a pointer
/// made from `&PoolInner` may only touch the `PoolInner` itself).
#[inline]
pub(crate) fn arc_ptr(this: &Arc<PoolInner>) -> NonNull<PoolInner> {
    // SAFETY: `Arc::as_ptr` never returns null.
    unsafe { NonNull::new_unchecked(Arc::as_ptr(this).cast_mut()) }
}

/// Whether blocks of `size` bytes are mapped straight from the OS.
#[inline]
pub(crate) fn is_mapped(size: usize) -> bool {
    cfg!(all(unix, not(miri))) && size >= MMAP_THRESHOLD
}

/// Allocates `size` (non-zero) uninitialised bytes: mapped from the OS at and
/// above [`MMAP_THRESHOLD`] on Unix, otherwise from the global allocator with
/// `u8`'s layout, the layout `Vec<u8>` uses, so such a block can become a
/// `Vec` without a copy.
pub(crate) fn alloc_block(size: usize) -> Result<NonNull<u8>, Error> {
    debug_assert!(size > 0);
    let layout =
        Layout::array::<u8>(size).map_err(|_| Error::CapacityOverflow { requested: size })?;
    #[cfg(all(unix, not(miri)))]
    if is_mapped(size) {
        // SAFETY: a fresh private anonymous mapping: no address hint, no file
        // descriptor; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::AllocFailed { size });
        }
        return NonNull::new(ptr.cast::<u8>()).ok_or(Error::AllocFailed { size });
    }
    // SAFETY: `layout` has a non-zero size (every class and every oversize
    // request is at least one byte).
    let ptr = unsafe { alloc(layout) };
    NonNull::new(ptr).ok_or(Error::AllocFailed { size })
}

/// Resizes a mapped block in place or by moving its pages (`mremap`), so
/// the physical pages it has keep serving. `None` leaves it as it was.
///
/// # Safety
///
/// `ptr` is a block from `alloc_block(old)` that the caller owns, and both
/// `old` and `new` are mapped sizes ([`is_mapped`]).
#[allow(unused_variables)]
pub(crate) unsafe fn remap_block(ptr: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
    debug_assert!(is_mapped(old) && is_mapped(new));
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: by the caller's promise, `ptr` is a private anonymous
        // mapping of `old` bytes that nothing else uses; MREMAP_MAYMOVE lets
        // the kernel move it, and on failure it is left untouched.
        let moved = unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
        if moved != libc::MAP_FAILED {
            return NonNull::new(moved.cast::<u8>());
        }
    }
    None
}

/// Frees a block from [`alloc_block`]. Returns whether its pages went
/// straight back to the OS (a mapped block).
///
/// # Safety
///
/// `ptr` came from `alloc_block(size)` with this same `size`, and nothing uses
/// it afterwards.
pub(crate) unsafe fn free_block(ptr: NonNull<u8>, size: usize) -> bool {
    #[cfg(all(unix, not(miri)))]
    if is_mapped(size) {
        // SAFETY: by the caller's promise, a mapping of exactly `size` bytes
        // made by `alloc_block`, unused from now on.
        let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
        debug_assert_eq!(rc, 0, "munmap of a block we mapped");
        return true;
    }
    // SAFETY: by the caller's promise, allocated with exactly this layout,
    // which `alloc_block` already checked to be valid.
    unsafe { dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(size, 1)) };
    false
}
