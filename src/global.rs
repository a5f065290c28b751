//! `GlobalPool`: the large tier as the global allocator, for the big
//! allocations of code the service does not own.
//!
//! ```text
//!  alloc(layout) ──(size ≥ threshold, align ≤ page)──► large tier: a run that holds it,
//!       │                                              else idle pages moved together,
//!       │                                              else a fresh mapping
//!       └──(otherwise)──► the inner allocator (System, mimalloc, jemalloc…)
//!  realloc of a large block ──► mremap: grown in place or its pages moved, never copied
//!  dealloc ──► idle pages of the tier ──(idle a whole trim interval, or pressure)──► the OS
//! ```
//!
//! The tier is the pools' own (`large/`), one for the whole process. Its
//! books never allocate through it: they are small (tree nodes of a few
//! hundred bytes), so they go to the inner allocator. Unlike the pools'
//! locks, its lock takes no share of the fork gate: any allocation of the
//! process may reach it, from a thread that holds locks of its own, and it
//! must not wait for a `fork` that waits for those. The fork handlers hold
//! it across a `fork` instead, as malloc holds its arenas.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::stats::GlobalStats;
use crate::sys::mem;
use crate::tier::large::{LargeTier, Source};

/// A global allocator that serves every allocation at or above a threshold
/// (default 128 KiB, alignment up to a page) from tierpool's large tier,
/// and passes every other to an inner allocator, untouched.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new(); // small: System
/// // static GLOBAL: tierpool::GlobalPool<mimalloc::MiMalloc> = tierpool::GlobalPool::with(mimalloc::MiMalloc);
///
/// fn main() {
///     let frame = vec![0u8; 72 << 20]; // a decoder's frame: the large tier
///     drop(frame);                     // idle pages, reused, then given back
///     println!("{}", GLOBAL.stats());
/// }
/// ```
///
/// What it gives a service on top of its allocator:
///
/// - **Reuse without page faults**: a freed block's pages serve the next
///   request of any size that fits (cut from an idle run), or are moved
///   together with `mremap` into a larger block; only what is missing is
///   fresh.
/// - **`realloc` without copying**: a growing `Vec` of 128 KiB and more
///   grows in place or has its pages moved (`mremap`); a shrinking one
///   gives its tail back.
/// - **Memory back when idle**: pages idle through a whole trim interval
///   (5 s) go back to the OS on the pools' trimmer thread, and all of them
///   under critical memory pressure. glibc keeps such memory in its arenas;
///   mimalloc keeps it for ever.
/// - **Seen by admission**: what it holds counts, the moment it allocates,
///   in every [`Pool`](crate::Pool)'s working-set estimate.
///
/// Failure is a null pointer, like any `GlobalAlloc` (the program's own
/// out-of-memory handling applies). Under miri, and off Unix, everything
/// goes to the inner allocator.
pub struct GlobalPool<A = System> {
    inner: A,
    threshold: usize,
    /// Where a block's data starts in its first page (see
    /// [`new`](GlobalPool::new)): 16 or 0.
    offset: usize,
    /// Whether new allocations may come from the tier
    /// ([`set_enabled`](Self::set_enabled)).
    enabled: AtomicBool,
}

impl GlobalPool<System> {
    /// A `GlobalPool` over the system allocator.
    ///
    /// Its blocks' data starts 16 bytes into their first page (for
    /// alignments up to 16), as glibc places its own large blocks after a
    /// 16-byte header, so every copy into or out of them keeps the relative
    /// alignment it had on the system allocator. That matters: glibc's
    /// `memcpy` (`rep movsb`) runs at about two thirds of its speed when
    /// source and destination differ by 16 modulo 32 (measured 2026-12-06),
    /// so moving the program's large blocks onto page boundaries made its
    /// aligned copies the slow ones (plain `Vec` jobs written in 16 KiB
    /// rows: up to 1.8x a glibc oracle, 2026-12-07).
    pub const fn new() -> GlobalPool<System> {
        let mut pool = GlobalPool::with(System);
        pool.offset = GLIBC_OFFSET;
        pool
    }
}

impl Default for GlobalPool<System> {
    fn default() -> Self {
        GlobalPool::new()
    }
}

impl<A> GlobalPool<A> {
    /// The default threshold: allocations of at least 128 KiB come from the
    /// large tier (the size from which glibc maps too).
    pub const DEFAULT_THRESHOLD: usize = mem::MAP_THRESHOLD;

    /// A `GlobalPool` whose small allocations go to `inner` (any
    /// `GlobalAlloc`: mimalloc, jemalloc, or `System`). Its blocks start on
    /// a page, as jemalloc's and mimalloc's large blocks do ([`new`](GlobalPool::new)
    /// places them as glibc does).
    pub const fn with(inner: A) -> GlobalPool<A> {
        GlobalPool {
            inner,
            threshold: Self::DEFAULT_THRESHOLD,
            offset: 0,
            enabled: AtomicBool::new(true),
        }
    }

    /// The same with another threshold: allocations of at least `bytes`
    /// come from the large tier. Below 128 KiB it is raised to 128 KiB
    /// (smaller blocks are the inner allocator's business).
    pub const fn with_threshold(mut self, bytes: usize) -> GlobalPool<A> {
        self.threshold = if bytes < Self::DEFAULT_THRESHOLD {
            Self::DEFAULT_THRESHOLD
        } else {
            bytes
        };
        self
    }

    /// The threshold in force.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Turns the large tier on or off for new allocations (on by default):
    /// off, every new allocation goes to the inner allocator (blocks the
    /// tier already handed out still come back to it), for side-by-side
    /// runs in one binary.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether the large tier serves new allocations.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// What the large tier holds and did, process-wide.
    pub fn stats(&self) -> GlobalStats {
        stats()
    }

    /// Gives every idle page of the tier back to the OS now.
    pub fn trim(&self) {
        release_idle();
    }

    /// Where the data of a block for `layout` starts in its first page: the
    /// pool's offset when the alignment allows it, else the page itself.
    #[inline]
    fn offset_for(&self, layout: Layout) -> usize {
        if layout.align() <= GLIBC_OFFSET {
            self.offset
        } else {
            0
        }
    }

    /// Whether `ptr` (freed or reallocated with `layout`) is the tier's: a
    /// pointer at an offset this pool places data at, in a page inside one
    /// of the tier's mappings. Only allocations the tier could have served
    /// cost the look-up (the inner allocator's large blocks, when the tier
    /// was off for them, and only at such offsets).
    #[inline]
    fn is_ours(&self, ptr: *mut u8, layout: Layout) -> bool {
        let at = ptr as usize % mem::PAGE;
        ACTIVE
            && layout.size() >= mem::MAP_THRESHOLD
            && (at == 0 || at == self.offset_for(layout))
            && TIER
                .get()
                .is_some_and(|t| t.large.holds(ptr.wrapping_sub(at).expose_provenance()))
    }

    /// Whether `layout` is served by the tier.
    #[inline]
    fn serves(&self, layout: Layout) -> bool {
        ACTIVE
            && layout.size() >= self.threshold
            && layout.align() <= mem::PAGE
            && self.enabled.load(Ordering::Relaxed)
    }
}

impl<A> std::fmt::Debug for GlobalPool<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalPool")
            .field("threshold", &self.threshold)
            .field("offset", &self.offset)
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

/// Whether the tier can work here at all: it maps pages itself.
const ACTIVE: bool = cfg!(all(unix, not(miri), not(tierpool_loom)));

/// The offset of glibc's large blocks in their first page (its chunk
/// header), which [`GlobalPool::new`] keeps. A multiple of every
/// alignment it is used for (up to 16).
const GLIBC_OFFSET: usize = 16;

// SAFETY: every block handed out is either the inner allocator's (for the
// layouts it serves, passed through untouched) or `offset` (0, or 16 for
// alignments up to 16: a multiple of the alignment) bytes into a
// page-aligned range of the tier's own mappings that holds `offset +
// layout.size()` bytes, owned by the caller until `dealloc`; `dealloc` and
// `realloc` tell the two apart by the tier's books (a pointer less than a
// page past the start of a block inside one of its mappings), never by the
// layout alone, so a block keeps its owner whatever `set_enabled` did
// meanwhile; and they find the block's start from the pointer alone.
unsafe impl<A: GlobalAlloc> GlobalAlloc for GlobalPool<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.serves(layout) {
            return take(layout.size(), self.offset_for(layout))
                .map_or(std::ptr::null_mut(), |(p, _)| p.as_ptr());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.serves(layout) {
            return match take(layout.size(), self.offset_for(layout)) {
                Some((p, fresh)) => {
                    if !fresh {
                        // SAFETY: a block of at least `size` bytes, ours.
                        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, layout.size()) };
                    }
                    p.as_ptr()
                }
                None => std::ptr::null_mut(),
            };
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.is_ours(ptr, layout) {
            // SAFETY: ours (checked), of `layout.size()` bytes, given up.
            unsafe { give_back(ptr, layout.size()) };
            return;
        }
        // SAFETY: forwarded from the caller: the inner allocator's block.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size` fits a layout of this
        // alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if self.is_ours(ptr, layout) {
            if new_size >= self.threshold {
                // SAFETY: ours, of `layout.size()` bytes.
                if let Some(p) = unsafe { resize(ptr, layout.size(), new_size) } {
                    return p.as_ptr();
                }
            }
            // Smaller than the threshold (or the tier could not grow it):
            // moved to wherever the new layout belongs.
            // SAFETY: a valid layout, from the caller.
            let to = unsafe { self.alloc(new_layout) };
            if !to.is_null() {
                // SAFETY: both blocks are live and distinct, each at least
                // `min(old, new)` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                    give_back(ptr, layout.size());
                }
            }
            return to;
        }
        if self.serves(new_layout) {
            // The inner allocator's block grows past the threshold: into the
            // tier, where its later growth moves no bytes.
            let Some((to, _)) = take(new_size, self.offset_for(new_layout)) else {
                return std::ptr::null_mut();
            };
            // SAFETY: both blocks are live and distinct, each at least
            // `min(old, new)` bytes; the old one is the inner allocator's.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, to.as_ptr(), layout.size().min(new_size));
                self.inner.dealloc(ptr, layout);
            }
            return to.as_ptr();
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

// === the process's tier ===

/// The tier and its figures, made on the first large allocation.
struct Tier {
    large: LargeTier,
    /// Bytes handed out (whole pages).
    in_use: AtomicUsize,
    /// Bytes mapped: in use and idle.
    footprint: AtomicUsize,
    /// The most in use at once since the last tick: what is mapped is kept
    /// at most this (see `give_back`).
    high_water: AtomicUsize,
    allocations: AtomicU64,
    /// Allocations served by idle pages alone.
    reused: AtomicU64,
    /// Bytes mapped fresh (new mappings, the fresh part of assemblies).
    fresh_bytes: AtomicU64,
    /// Reallocations grown with `mremap`, and shrunk in place.
    remapped: AtomicU64,
    trimmed_bytes: AtomicU64,
    /// Whether the trimmer was asked to run for the tier.
    trimmer: AtomicBool,
}

static TIER: OnceLock<Tier> = OnceLock::new();

/// Bytes the tier may keep mapped whatever the high-water mark.
const IDLE_FLOOR: usize = 16 << 20;

fn tier() -> &'static Tier {
    TIER.get_or_init(|| Tier {
        // No classes: the tier serves every size from its runs; its books
        // are locked outside the fork gate, and held across a fork by the
        // fork handlers (`hold_for_fork`).
        large: LargeTier::ungated(),
        in_use: AtomicUsize::new(0),
        footprint: AtomicUsize::new(0),
        high_water: AtomicUsize::new(0),
        allocations: AtomicU64::new(0),
        reused: AtomicU64::new(0),
        fresh_bytes: AtomicU64::new(0),
        remapped: AtomicU64::new(0),
        trimmed_bytes: AtomicU64::new(0),
        trimmer: AtomicBool::new(false),
    })
}

/// Bytes the global allocator's tier holds (in use and idle): counted in
/// every pool's working-set estimate.
pub(crate) fn footprint() -> usize {
    TIER.get()
        .map_or(0, |t| t.footprint.load(Ordering::Relaxed))
}

/// The whole pages a block of `size` bytes whose data starts `offset`
/// bytes into its first page spans.
fn span_of(offset: usize, size: usize) -> Option<usize> {
    size.checked_add(offset)?
        .checked_next_multiple_of(mem::PAGE)
}

/// A pointer into a block of the tier, split into the block's first page
/// and the data's offset in it.
fn split(ptr: *mut u8) -> (*mut u8, usize) {
    let offset = ptr as usize % mem::PAGE;
    (ptr.wrapping_sub(offset), offset)
}

/// A block of at least `size` bytes from the tier, its data `offset` bytes
/// into its first page, and whether its pages are all fresh (zero).
fn take(size: usize, offset: usize) -> Option<(NonNull<u8>, bool)> {
    let span = span_of(offset, size)?;
    if span > isize::MAX as usize {
        return None;
    }
    let tier = tier();
    // Best fit, as a pool's classes: the smallest idle run that holds the
    // block. (Cutting every block from the largest run, to leave it room
    // to grow in place, broke the large runs up: in the mixed steady state
    // 17% of the allocations were then assembled and 4% of the bytes
    // mapped fresh, against 2.5% and 1% with best fit, 2026-12-06. A `Vec`
    // that grows still does so without a copy, with `mremap`.)
    let (block, fresh) = match tier.large.take(span, true) {
        Some(taken) => match taken.source {
            Source::Run => {
                tier.reused.fetch_add(1, Ordering::Relaxed);
                (taken.block, false)
            }
            Source::Assembled { moved } => {
                tier.footprint.fetch_add(span - moved, Ordering::Relaxed);
                tier.fresh_bytes
                    .fetch_add((span - moved) as u64, Ordering::Relaxed);
                (taken.block, false)
            }
        },
        None => {
            if crate::tier::large::at_mapping_bound() {
                release_idle();
            }
            let block = tier.large.map_lazy(span).ok()?;
            tier.footprint.fetch_add(span, Ordering::Relaxed);
            tier.fresh_bytes.fetch_add(span as u64, Ordering::Relaxed);
            (block, true)
        }
    };
    note_in_use(tier, span);
    tier.allocations.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `offset + size <= span`, so the data lies inside the block.
    Some((unsafe { block.add(offset) }, fresh))
}

/// Counts `bytes` more in use, and the high-water mark.
fn note_in_use(tier: &Tier, bytes: usize) {
    let now = tier.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
    tier.high_water.fetch_max(now, Ordering::Relaxed);
}

/// Takes back a block of `size` bytes as idle pages.
///
/// # Safety
///
/// `ptr` is a block of the tier of `size` bytes, given up by the caller.
unsafe fn give_back(ptr: *mut u8, size: usize) {
    let tier = tier();
    let (start, offset) = split(ptr);
    // The block's span when it was made (a layout's size is at most
    // `isize::MAX`, so this cannot overflow).
    let span = (size + offset).next_multiple_of(mem::PAGE);
    // SAFETY: by the caller's promise, the block spans `span` bytes from
    // its first page `start`; a tier's blocks are never null.
    unsafe { tier.large.put(NonNull::new_unchecked(start), span) };
    let in_use = tier.in_use.fetch_sub(span, Ordering::Relaxed) - span;
    // What is mapped stays within an eighth above the most that was in use
    // at once since the last tick (or a floor): idle pages beyond that go
    // back at once. So the peak stays at or below the system allocator's
    // (which unmaps large blocks as they are freed), while most of what
    // steady traffic frees and takes again stays, resident, for the next
    // request. (Measured 2026-12-06, a 4-thread burst: half again kept the
    // peak at 1.2-1.3x glibc's, an eighth at 0.9-1.0x, for a steady state
    // about a tenth slower.)
    let footprint = tier.footprint.load(Ordering::Relaxed);
    let high_water = tier.high_water.load(Ordering::Relaxed);
    let keep = (high_water + high_water / 8).max(IDLE_FLOOR);
    if footprint > keep {
        release(
            tier,
            (footprint - keep).min(footprint.saturating_sub(in_use)),
        );
    }
    if !tier.trimmer.swap(true, Ordering::Relaxed) {
        // Idle pages now exist: the trimmer gives them back when unused.
        // Started outside every lock of the tier.
        crate::trimmer::ensure_running();
    }
}

/// Resizes a block of the tier in place or with `mremap`: `None` when it
/// must be moved by copying (it spans several mappings).
///
/// # Safety
///
/// `ptr` is a block of the tier of `old` bytes, the caller's.
unsafe fn resize(ptr: *mut u8, old: usize, new: usize) -> Option<NonNull<u8>> {
    let (start, offset) = split(ptr);
    // SAFETY: forwarded from the caller; the data stays `offset` bytes into
    // the block's first page wherever its pages go.
    let block = unsafe { resize_block(start, offset, old, new) }?;
    // SAFETY: the block holds `offset + new` bytes from its start.
    Some(unsafe { block.add(offset) })
}

/// [`resize`] of the block that starts at `ptr` (a page), its data
/// `offset` bytes in: returns the block's new start.
///
/// # Safety
///
/// As [`resize`], for the block's start.
unsafe fn resize_block(ptr: *mut u8, offset: usize, old: usize, new: usize) -> Option<NonNull<u8>> {
    let tier = tier();
    let old_span = span_of(offset, old)?;
    let new_span = span_of(offset, new)?;
    // SAFETY: ours; never null.
    let block = unsafe { NonNull::new_unchecked(ptr) };
    if new_span == old_span {
        return Some(block);
    }
    if new_span < old_span {
        // The tail's pages become idle, for the next request to reuse.
        // SAFETY: the tail of the caller's block, which it no longer needs.
        unsafe {
            tier.large.put(
                NonNull::new_unchecked(ptr.add(new_span)),
                old_span - new_span,
            );
        }
        tier.in_use
            .fetch_sub(old_span - new_span, Ordering::Relaxed);
        tier.remapped.fetch_add(1, Ordering::Relaxed);
        return Some(block);
    }
    let more = new_span - old_span;
    // SAFETY: ours, `old_span < new_span`, whole pages.
    if unsafe { tier.large.extend(block, old_span, new_span) } {
        // Grown into the idle pages right after it: resident already.
        note_in_use(tier, more);
        tier.remapped.fetch_add(1, Ordering::Relaxed);
        return Some(block);
    }
    if crate::tier::large::at_mapping_bound() {
        release_idle();
    }
    // SAFETY: ours, `old_span < new_span`, whole pages.
    let grown = unsafe { tier.large.regrow(block, old_span, new_span) }?;
    note_in_use(tier, more);
    tier.footprint.fetch_add(more, Ordering::Relaxed);
    tier.fresh_bytes.fetch_add(more as u64, Ordering::Relaxed);
    tier.remapped.fetch_add(1, Ordering::Relaxed);
    Some(grown)
}

/// The trimmer's tick: unmaps the pages that stayed idle all interval.
#[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
pub(crate) fn tick() {
    let Some(tier) = TIER.get() else { return };
    let unused = tier.large.idle_since_tick();
    release(tier, unused);
    // The high-water mark decays: the next interval starts from what is in
    // use now.
    tier.high_water
        .store(tier.in_use.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Unmaps every idle page now (memory pressure, [`GlobalPool::trim`]).
pub(crate) fn release_idle() {
    if let Some(tier) = TIER.get() {
        release(tier, usize::MAX);
    }
}

fn release(tier: &Tier, bytes: usize) {
    let released = tier.large.release(bytes);
    if released > 0 {
        tier.footprint.fetch_sub(released, Ordering::Relaxed);
        tier.trimmed_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
    }
}

/// Holds the tier's books across a `fork`, if the tier exists (the
/// prepare handler; the parent's and child's handlers drop the hold).
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) fn hold_for_fork() -> Option<crate::tier::large::ForkHold> {
    TIER.get().and_then(|t| t.large.hold_for_fork())
}

/// Whether the tier exists (the trimmer ticks it from then on).
#[cfg_attr(any(tierpool_loom, miri), allow(dead_code))]
pub(crate) fn exists() -> bool {
    TIER.get().is_some()
}

pub(crate) fn stats() -> GlobalStats {
    let Some(tier) = TIER.get() else {
        return GlobalStats::default();
    };
    let large = tier.large.stats();
    GlobalStats {
        in_use_bytes: tier.in_use.load(Ordering::Relaxed),
        idle_bytes: large.idle_bytes,
        allocations: tier.allocations.load(Ordering::Relaxed),
        reused: tier.reused.load(Ordering::Relaxed),
        assembled: large.counters.assembled,
        remapped: tier.remapped.load(Ordering::Relaxed),
        fresh_bytes: tier.fresh_bytes.load(Ordering::Relaxed),
        trimmed_bytes: tier.trimmed_bytes.load(Ordering::Relaxed),
        mappings: large.mappings,
    }
}
