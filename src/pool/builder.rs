//! `PoolBuilder`: classes, caps, tier depths, limits; `build` lays out the tiers.

use super::*;
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
    /// happened (the trimmer's, for idle ticks and samples), outside any
    /// lock of the pool, after the pool's books are right.
    ///
    /// It may use the pool and any other: take and drop buffers, trim, read
    /// statistics, sample memory, call [`admit`](Pool::admit) (admission
    /// holds nothing while it trims, samples or emits). It may `fork` (a
    /// trim pass runs it inside the fork gate; the forking thread's own
    /// share is not waited for). It should not block for long: an idle tick
    /// of every pool waits for it, and a hook that waits in `admit` or
    /// `get_timeout` for memory that only the trimmer can give back waits
    /// for itself until its timeout. A panic in it is caught and counted in
    /// [`Stats::hook_panics`](crate::Stats::hook_panics); the event is lost,
    /// nothing else is. With no callback, events cost nothing.
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

    /// Reads the memory from a file instead of the cgroup, at every sample
    /// (every 100 ms): lines `limit N`, `working_set N` (or `usage N` and
    /// `inactive_file N`), optionally `high N`, in bytes. For testing a
    /// service's shedding without a cgroup, as Envoy's injected resources:
    /// write the file, call [`Pool::sample_memory`] (or wait a sample), and
    /// the pool's pressure and admission follow. The limit in the file wins
    /// over [`memory_limit`](Self::memory_limit).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("tierpool-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let file = dir.join("memory");
    /// std::fs::write(&file, "limit 1000000000\nworking_set 950000000\n")?;
    /// let pool = tierpool::Pool::builder().memory_file(&file).build();
    /// assert_eq!(pool.sample_memory(), tierpool::Pressure::Critical);
    /// assert!(pool.try_get(1 << 20).is_err()); // shed
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn memory_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.limits.file = Some(path.into());
        self
    }

    /// Publish the per-class metrics of every class (default `false`: only
    /// the classes that served a request or hold memory, since 49 default
    /// classes times three counters is many series that stay at zero).
    pub fn metrics_per_class(mut self, all: bool) -> Self {
        self.metrics_all_classes = all;
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
                    span: mem::span(capacity),
                    large: mem::is_mapped(capacity),
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
        // The process-wide bound on mappings is read now (the environment
        // and /proc), not in an allocation path or a forked child's first
        // allocation.
        crate::tier::large::mapping_bound();
        let large = LargeTier::new(
            info.iter()
                .map(|c| if c.large { c.span } else { 0 })
                .collect(),
        );
        let inner = Arc::new(PoolInner {
            id: inner::slots::next_id(),
            slot: inner::slots::acquire(),
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
            metrics_all_classes: self.metrics_all_classes,
        });
        trim::schedule(&inner);
        super::register(&inner);
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
            .field("metrics_per_class", &self.metrics_all_classes)
            .finish()
    }
}
