//! The get path: this thread's cache, the shared tier or the large tier's
//! idle pages, then the OS.

use super::pool_ref::PoolRef;
use super::*;
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
    pub(super) fn get_cached(this: &Arc<PoolInner>, min_capacity: usize) -> Option<PooledBuf> {
        let (block, capacity, class) = PoolInner::take_cached(this, min_capacity)?;
        // SAFETY: an idle block of `class` (`capacity` bytes) taken out of
        // this thread's cache: nobody else owns it, and it carries its pool
        // count.
        Some(unsafe { PooledBuf::from_block(block, capacity, BlockPool::of(this), class) })
    }

    /// A buffer over `block`, a block of class `class` of this pool.
    ///
    /// # Safety
    ///
    /// `block` is a block of class `class` of `this` that nobody else owns,
    /// and it carries one pool count, which the buffer takes over.
    #[inline]
    unsafe fn buf_of_class(this: &Arc<PoolInner>, block: NonNull<u8>, class: usize) -> PooledBuf {
        let capacity = this.info[class].capacity;
        // SAFETY: forwarded from the caller.
        unsafe { PooledBuf::from_block(block, capacity, BlockPool::of(this), class as u32) }
    }

    /// [`get_cached`](Self::get_cached)'s block, capacity and class: an
    /// idle block that carries a pool count.
    #[inline(always)]
    pub(super) fn take_cached(
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

    /// [`Pool::try_get_chunk`]: for a mapped class without thread caches,
    /// an idle block of the class or of a class down to half its size
    /// (largest first) before the usual path.
    pub(super) fn get_chunk(this: &Arc<PoolInner>, size: usize) -> Result<PooledBuf, Error> {
        if let Some(class) = this.classes.index_for(size) {
            let info = this.info[class];
            if info.large && info.depth == 0 {
                let half = this.classes.index_for(info.capacity / 2).unwrap_or(class);
                for c in (half..=class).rev() {
                    if !this.info[c].large {
                        break;
                    }
                    if let Some((block, found)) = PoolInner::take_shared(this, c) {
                        // SAFETY: idle pages of the large tier, so ours;
                        // `take_shared` took a pool count for the block.
                        return Ok(unsafe { PoolInner::buf_of_class(this, block, found) });
                    }
                }
            }
        }
        PoolInner::get(this, size, Admission::Check)
    }

    /// The shared tier (or a larger class's idle block), then the allocator.
    #[cold]
    #[inline(never)]
    pub(super) fn get_slow(
        this: &Arc<PoolInner>,
        min_capacity: usize,
        admission: Admission,
    ) -> Result<PooledBuf, Error> {
        // A forked child has no trimmer thread yet: start one.
        crate::trimmer::ensure_running();
        let Some(class) = this.classes.index_for(min_capacity) else {
            return PoolInner::get_oversize(this, min_capacity, admission);
        };
        // This thread's cache, when it is not the front one (the thread
        // used another pool since).
        if let Some(Some((block, capacity))) =
            thread_cache::with_cache(this.slot, this.id, |cache| cache.take(class))
        {
            // SAFETY: as in `get_cached`.
            return Ok(unsafe {
                PooledBuf::from_block(block, capacity, BlockPool::of(this), class as u32)
            });
        }
        if let Some((block, found)) = PoolInner::take_shared(this, class) {
            // SAFETY: popped from the shared tier, so ours; `take_shared`
            // took a pool count for it.
            return Ok(unsafe { PoolInner::buf_of_class(this, block, found) });
        }
        let capacity = this.info[class].capacity;
        // Admission before a fit: growing an idle block faults new memory
        // just as a fresh allocation does. (An idle block of the class
        // itself, above, is memory already held.)
        // The reservation holds the room until the block is counted in the
        // footprint (it drops at the end of this function, after that).
        let reserved = match admission {
            Admission::Check => Some(PoolInner::admit(this, capacity)?),
            Admission::Bypass => None,
        };
        if let Some(block) = PoolInner::take_assembled(this, class, reserved.is_some()) {
            // SAFETY: made of idle pages of the large tier, so ours;
            // `take_assembled` took a pool count for it.
            return Ok(unsafe { PoolInner::buf_of_class(this, block, class) });
        }
        let info = this.info[class];
        PoolInner::note_allocation(this, capacity, reserved.is_some());
        let block = if info.large {
            if crate::tier::large::at_mapping_bound() {
                // The process keeps as many mappings as it should: give
                // this pool's idle pages back before adding one.
                let mut freed = Freed::default();
                this.release_large(usize::MAX, &mut freed);
                this.finish_pass(freed, TrimReason::Mappings);
            }
            this.large.map(capacity)?
        } else {
            mem::alloc(capacity)?
        };
        this.footprint.fetch_add(info.span, Ordering::Relaxed);
        this.counters.class[class]
            .misses
            .fetch_add(1, Ordering::Relaxed);
        // The block owns this count.
        PoolRef::new(this).hand_over();
        // SAFETY: a fresh block of the class's capacity, owned by nobody
        // else, whose pool count was just taken.
        let buf = unsafe { PoolInner::buf_of_class(this, block, class) };
        this.events.emit(Event::Allocated {
            capacity,
            reason: AllocReason::Miss,
        });
        Ok(buf)
    }

    /// Takes an idle block of `class` (or up to two classes above) from the
    /// shared tier with a pool count, and refills this thread's cache for
    /// `class` from the same queue.
    pub(super) fn take_shared(this: &Arc<PoolInner>, class: usize) -> Option<(NonNull<u8>, usize)> {
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
            // The block owns this count.
            PoolRef::new(this).hand_over();
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
            // The block owns this count.
            PoolRef::new(this).hand_over();
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
                    // A thread that only takes (its buffers are dropped on
                    // other threads) turns every hit into credit: the rest
                    // goes back to the budget here, its slow path.
                    this.cap_credit(cache);
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
    pub(super) fn take_assembled(
        this: &Arc<PoolInner>,
        class: usize,
        reserved: bool,
    ) -> Option<NonNull<u8>> {
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
                    PoolInner::note_allocation(this, info.span - moved, reserved);
                }
                this.events.emit(Event::Assembled {
                    capacity: info.capacity,
                    moved,
                    fresh: info.span - moved,
                });
            }
        }
        // The block owns this count.
        PoolRef::new(this).hand_over();
        Some(taken.block)
    }

    /// Moves up to a batch less one of idle blocks from the shared tier
    /// into a thread cache (one was just taken for the caller). Refilled
    /// blocks keep their reservation and take a pool count each.
    pub(super) fn refill(this: &Arc<PoolInner>, cache: &mut CacheState, class: usize) {
        for _ in 1..this.info[class].batch {
            let Some(block) = this.shared[class].pop() else {
                break;
            };
            match cache.stock(class, block) {
                Ok(()) => {
                    // The block owns this count.
                    PoolRef::new(this).hand_over();
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
    pub(super) fn get_oversize(
        this: &Arc<PoolInner>,
        size: usize,
        admission: Admission,
    ) -> Result<PooledBuf, Error> {
        if size > isize::MAX as usize {
            return Err(Error::CapacityOverflow { requested: size });
        }
        let reserved = match admission {
            Admission::Check => Some(PoolInner::admit(this, size)?),
            Admission::Bypass => None,
        };
        PoolInner::note_allocation(this, size, reserved.is_some());
        let block = mem::alloc(size)?;
        if mem::is_mapped(size) {
            // Faulted in at once, as the large tier's blocks are: what the
            // footprint counts is then resident, and a memory sample taken
            // before the caller writes it cannot miss it (and so let
            // admission count it as free room).
            // SAFETY: the fresh mapping of `span(size)` bytes just made,
            // ours.
            unsafe { mem::populate(block, mem::span(size)) };
        }
        this.footprint.fetch_add(size, Ordering::Relaxed);
        this.counters.oversize_allocated(size);
        // The block owns this count.
        PoolRef::new(this).hand_over();
        // SAFETY: a fresh allocation of `size` bytes, owned by nobody else,
        // whose pool count was just taken.
        let buf = unsafe { PooledBuf::from_block(block, size, BlockPool::of(this), OVERSIZE) };
        this.events.emit(Event::Allocated {
            capacity: size,
            reason: AllocReason::Oversize,
        });
        Ok(buf)
    }

    /// This thread's cache for the pool exists or was just made. `false`
    /// when the pool is closed, the thread-local is being destroyed, or
    /// the process has no heavy barrier (`barrier::available`).
    pub(super) fn ensure_cache(this: &Arc<PoolInner>) -> bool {
        if thread_cache::has_cache(this.slot, this.id) {
            return true;
        }
        // Without a heavy barrier no other thread could reach into the
        // cache safely (see `thread_cache`): the pool then works from the
        // shared tier alone.
        if !crate::sys::membarrier::available() {
            return false;
        }
        let cache = Arc::new(ThreadCache::new(
            this.id,
            &this.layouts,
            ExitFlush {
                pool: arc_ptr(this).cast(),
                run: caches::flush_exiting,
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
            // An open cache owns a count (see `pool_ref`): whoever closes
            // it drops that count.
            PoolRef::new(this).hand_over();
        }
        if thread_cache::install(this.slot, cache.clone()) {
            return true;
        }
        // The thread-local is being destroyed: close the cache here, unless
        // a closing pool did meanwhile.
        PoolInner::close_own_cache(this, &cache);
        false
    }
}
