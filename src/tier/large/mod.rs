//! The large-block tier: idle memory of the mapped classes (128 KiB and up
//! on Unix) kept as runs of pages that any size can be cut from or
//! assembled from.
//!
//! A class-per-queue tier keeps an idle 4 MiB block for a 4 MiB request;
//! with sizes spread from 128 KiB to 8 MiB, the idle blocks are mostly of
//! the wrong class, so either the pool holds much more than it uses or a
//! request faults fresh pages while idle ones wait. Here idle pages are
//! pooled, not blocks:
//!
//! - a request takes the front of the smallest idle run that fits (no
//!   system call; the rest of the run stays idle);
//! - when no run fits, the largest runs are moved side by side into one
//!   new range with `mremap` (their physical pages go along, nothing is
//!   copied or faulted), and only what they lack is fresh;
//! - a returned block becomes idle pages again, joined with its idle
//!   neighbours;
//! - trimming unmaps idle runs, smallest first.
//!
//! So the pool faults fresh pages only when what is idle does not cover a
//! request, and what it holds stays within what was in use at the peak.
//!
//! In front of the runs, each class has one *hot* slot: the block of that
//! class returned last, kept whole. The next request of the class takes it
//! with one atomic swap, no lock and no search, and gets the pages written
//! most recently (the warmest in the caches). Before anything is assembled
//! or mapped, and at every trim, the hot blocks join the runs, so they
//! never keep a size waiting while another one faults fresh pages.
//!
//! # Mappings
//!
//! `mremap` moves or grows a range that lies in one kernel mapping (VMA);
//! before Linux 6.17 it refuses a range across several. An assembled
//! block is several mappings side by side, so the tier keeps its own map of
//! where mappings start and end ([`Extents`]'s regions): each region lies
//! inside one kernel mapping (the kernel may merge neighbours, never split
//! them behind our back), and a run is cut at region boundaries before it
//! moves. Every move adds mappings; a process-wide bound ([`mapping_bound`]) steers them (the
//! kernel's own limit, `vm.max_map_count`, is 65 530 by default), and
//! trimming, which unmaps the smallest runs first, removes them again.
//!
//! # Locking
//!
//! One mutex per pool guards the map; system calls run under it, so the
//! books and the address space change together (a large block costs tens
//! of microseconds to fill, the lock a fraction of one). The mutex is
//! taken inside the fork gate (`sync`), so a `fork` never finds it held.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::sync::{AtomicUsize, Mutex, Ordering, SpinGuard, SpinLock};
use crate::sys::mem;

/// Runs smaller than this are not worth a system call to move: faulting
/// 16 pages costs about what one `mremap` does.
pub(crate) const MIN_PIECE: usize = 64 << 10;
/// The most ranges one assembly moves.
pub(crate) const MAX_MOVES: usize = 16;

/// What the tier holds now and did so far, for its owner's statistics
/// (`LargeStats` for a pool, `GlobalStats` for the global allocator).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LargeFigures {
    pub(crate) idle_bytes: usize,
    pub(crate) runs: usize,
    /// Mappings the tier tracks, idle or in use.
    pub(crate) mappings: usize,
    /// Mappings of every large tier of the process, and their bound.
    pub(crate) process_mappings: usize,
    pub(crate) mapping_bound: usize,
    pub(crate) counters: LargeCounters,
}

/// The tier's traffic counters, kept under its books' lock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LargeCounters {
    /// Blocks cut from an idle run.
    pub(crate) cut: u64,
    /// Blocks assembled from moved runs, the ranges and bytes moved into
    /// them, and their bytes that no idle page covered.
    pub(crate) assembled: u64,
    pub(crate) moves: u64,
    pub(crate) moved_bytes: u64,
    pub(crate) assembled_fresh_bytes: u64,
}

/// Where a block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Cut from one idle run: its pages served as they were.
    Run,
    /// Assembled: `moved` bytes of idle pages moved in, the rest fresh.
    Assembled { moved: usize },
}

/// A block handed out by the tier.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) block: NonNull<u8>,
    pub(crate) source: Source,
}

mod extents;
mod mappings;

pub(crate) use extents::Extents;
use mappings::MappingCount;
pub(crate) use mappings::{at_bound as at_mapping_bound, mapping_bound, mappings};

/// The tier's books: its extents, and its share of the process-wide count
/// of mappings, kept in step with the extents' regions.
#[derive(Debug, Default)]
struct Books {
    extents: Extents,
    mappings: MappingCount,
}

/// How a tier's books are locked.
enum TierLock {
    Gated(Mutex<Books>),
    Spin(SpinLock<Books>),
}

impl std::fmt::Debug for TierLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TierLock::Gated(_) => "Gated",
            TierLock::Spin(_) => "Spin",
        })
    }
}

/// The global allocator's books, held across a `fork` (see
/// [`LargeTier::hold_for_fork`]).
#[cfg(not(any(tierpool_loom, miri)))]
pub(crate) struct ForkHold(#[allow(dead_code)] SpinGuard<'static, Books>);

/// A lock of the books, inside the fork gate or outside it.
enum Held<G, U> {
    Gated(G),
    Ungated(U),
}

impl<G: Deref<Target = Books>, U: Deref<Target = Books>> Deref for Held<G, U> {
    type Target = Books;

    fn deref(&self) -> &Books {
        match self {
            Held::Gated(g) => g,
            Held::Ungated(u) => u,
        }
    }
}

impl<G: DerefMut<Target = Books>, U: DerefMut<Target = Books>> DerefMut for Held<G, U> {
    fn deref_mut(&mut self) -> &mut Books {
        match self {
            Held::Gated(g) => g,
            Held::Ungated(u) => u,
        }
    }
}

/// The books, locked: reads and changes the extents, and on the way out
/// brings the process-wide count of mappings in step with its regions.
struct BooksGuard<G: DerefMut<Target = Books>>(G);

impl<G: DerefMut<Target = Books>> Deref for BooksGuard<G> {
    type Target = Extents;

    fn deref(&self) -> &Extents {
        &self.0.extents
    }
}

impl<G: DerefMut<Target = Books>> DerefMut for BooksGuard<G> {
    fn deref_mut(&mut self) -> &mut Extents {
        &mut self.0.extents
    }
}

impl<G: DerefMut<Target = Books>> Drop for BooksGuard<G> {
    fn drop(&mut self) {
        let books = &mut *self.0;
        books.mappings.set(books.extents.regions());
    }
}

/// The tier of one pool: [`Extents`] behind a mutex, and the system calls
/// that keep the address space in step with it; in front, a hot slot per
/// class.
#[derive(Debug)]
pub(crate) struct LargeTier {
    /// A pool's tier locks its books inside the fork gate; the global
    /// allocator's with a [`SpinLock`] that the fork handlers hold across a
    /// `fork`.
    extents: TierLock,
    /// Per class: the address of an idle block of the class kept whole, or
    /// 0. Only the classes the tier serves (`spans[class] > 0`) use theirs.
    hot: Box<[AtomicUsize]>,
    /// Per class: the span of its blocks, 0 for classes the tier does not
    /// serve.
    spans: Box<[usize]>,
}

impl LargeTier {
    /// The books, locked.
    fn books(&self) -> BooksGuard<impl DerefMut<Target = Books> + '_> {
        BooksGuard(match &self.extents {
            TierLock::Gated(m) => Held::Gated(m.lock()),
            TierLock::Spin(s) => Held::Ungated(s.lock()),
        })
    }

    /// A tier for the global allocator: no classes, books behind a spin
    /// lock outside the fork gate (see [`hold_for_fork`](Self::hold_for_fork)).
    pub(crate) fn ungated() -> Self {
        LargeTier {
            extents: TierLock::Spin(SpinLock::new(Books::default())),
            ..LargeTier::new(Box::new([]))
        }
    }

    /// Holds the books of the global allocator's tier across a `fork`: the
    /// prepare handler takes them, the parent's and the child's handlers
    /// let go (`None` for a pool's tier, which the fork gate covers).
    #[cfg(not(any(tierpool_loom, miri)))]
    pub(crate) fn hold_for_fork(&'static self) -> Option<ForkHold> {
        match &self.extents {
            TierLock::Spin(s) => Some(ForkHold(s.lock())),
            TierLock::Gated(_) => None,
        }
    }

    /// A tier for classes whose blocks span `spans[class]` bytes (0: a
    /// class the tier does not serve).
    pub(crate) fn new(spans: Box<[usize]>) -> Self {
        LargeTier {
            extents: TierLock::Gated(Mutex::new(Books::default())),
            hot: spans.iter().map(|_| AtomicUsize::new(0)).collect(),
            spans,
        }
    }

    /// Takes the hot block of `class`, if there is one: one swap.
    pub(crate) fn take_hot(&self, class: usize) -> Option<NonNull<u8>> {
        // Acquire: the block's bytes were written before its release.
        match self.hot[class].swap(0, Ordering::Acquire) {
            0 => None,
            at => Some(address(at)),
        }
    }

    /// Makes `block` the hot block of its class; the one it replaces (the
    /// older, colder one) joins the runs.
    ///
    /// # Safety
    ///
    /// As [`put`](Self::put), with `span` the class's span.
    pub(crate) unsafe fn put_hot(&self, class: usize, block: NonNull<u8>) {
        debug_assert!(self.spans[class] > 0);
        // Release: the block's bytes are written before another thread
        // takes it.
        let old = self.hot[class].swap(block.as_ptr().expose_provenance(), Ordering::AcqRel);
        if old != 0 {
            // SAFETY: a hot block is an idle block of the class, from this
            // tier; the swap made it ours.
            unsafe { self.put(address(old), self.spans[class]) };
        }
    }

    /// Moves every hot block into the runs, so its pages serve any size
    /// (before assembling or mapping, and before trimming).
    pub(crate) fn drain_hot(&self) {
        for (slot, &span) in self.hot.iter().zip(self.spans.iter()) {
            if span == 0 || slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let at = slot.swap(0, Ordering::Acquire);
            if at != 0 {
                // SAFETY: as in `put_hot`.
                unsafe { self.put(address(at), span) };
            }
        }
    }

    /// Whether `class` has a hot block now (a snapshot).
    pub(crate) fn is_hot(&self, class: usize) -> bool {
        self.hot[class].load(Ordering::Relaxed) != 0
    }

    /// Bytes in the hot slots (a snapshot).
    fn hot_bytes(&self) -> usize {
        self.hot
            .iter()
            .zip(self.spans.iter())
            .filter(|(slot, _)| slot.load(Ordering::Relaxed) != 0)
            .map(|(_, &span)| span)
            .sum()
    }

    /// Maps a fresh block for a class of `capacity` bytes: its span (whole
    /// pages), faulted in at once (`mem::populate`).
    pub(crate) fn map(&self, capacity: usize) -> Result<NonNull<u8>, crate::Error> {
        let span = mem::span(capacity);
        // Mapped and faulted in outside the lock (faulting 8 MiB takes a
        // millisecond). Recorded after: an address the kernel hands out
        // was unmapped before, and every unmap here forgets its regions
        // before the lock goes, so the record cannot overlap.
        let block = mem::alloc(capacity)?;
        // SAFETY: the fresh mapping of `span` bytes just made, ours.
        unsafe { mem::populate(block, span) };
        self.books()
            .add_region(block.as_ptr().expose_provenance(), span);
        Ok(block)
    }

    /// Maps a fresh block of `span` bytes (whole pages) without faulting
    /// it in: the pages are counted resident as they are touched, as the
    /// system allocator's are (the global allocator's growing `Vec`s would
    /// otherwise hold their unused capacity resident).
    pub(crate) fn map_lazy(&self, span: usize) -> Result<NonNull<u8>, crate::Error> {
        debug_assert!(span % mem::PAGE == 0 && mem::is_mapped(span));
        let block = mem::alloc(span)?;
        self.books()
            .add_region(block.as_ptr().expose_provenance(), span);
        Ok(block)
    }

    /// Grows a block of `old` bytes that this tier handed out to `new`
    /// bytes in place, when the idle run right after it holds the rest: no
    /// system call, no copy, no fresh page.
    ///
    /// # Safety
    ///
    /// As [`regrow`](Self::regrow).
    pub(crate) unsafe fn extend(&self, block: NonNull<u8>, old: usize, new: usize) -> bool {
        let end = block.as_ptr().expose_provenance() + old;
        self.books().extend(end, new - old)
    }

    /// Whether `at` is a page this tier mapped and holds (idle or out).
    pub(crate) fn holds(&self, at: usize) -> bool {
        self.books().holds(at)
    }

    /// Grows a block of `old` bytes that this tier handed out to `new`
    /// bytes with `mremap` (in place, or its pages moved whole to where the
    /// kernel finds room): never a copy of its bytes. `None` when the block
    /// spans several mappings (it was assembled) or the kernel refuses; the
    /// block is then unchanged.
    ///
    /// # Safety
    ///
    /// As [`put`](Self::put), with `old < new`, both whole pages; the block
    /// stays the caller's.
    pub(crate) unsafe fn regrow(
        &self,
        block: NonNull<u8>,
        old: usize,
        new: usize,
    ) -> Option<NonNull<u8>> {
        let start = block.as_ptr().expose_provenance();
        let mut books = self.books();
        if !mem::CAN_MOVE_PAGES || !books.in_one_region(start, old) {
            return None;
        }
        // SAFETY: by the caller's promise a block of ours of `old` bytes,
        // inside one mapping (checked above), whose pages are the caller's.
        let grown = unsafe { mem::grow_pages(block, old, new) }?;
        books.remove_regions(start, old);
        books.add_region(grown.as_ptr().expose_provenance(), new);
        Some(grown)
    }

    /// A block of `span` bytes made of idle pages: cut from a run that
    /// holds it, else (with `assemble`) moved together from the largest
    /// runs and completed with fresh pages. `None` when nothing idle
    /// serves it.
    pub(crate) fn take(&self, span: usize, assemble: bool) -> Option<Taken> {
        if assemble {
            // The hot blocks' pages serve any size once they are runs.
            self.drain_hot();
        }
        let mut extents = self.books();
        if let Some(start) = extents.cut(span) {
            return Some(Taken {
                block: address(start),
                source: Source::Run,
            });
        }
        if !assemble || !mem::CAN_MOVE_PAGES {
            return None;
        }
        // Past the process-wide bound on mappings nothing is moved (a move
        // splits mappings); the caller maps fresh instead.
        if mappings::at_bound() {
            return None;
        }
        let pieces = extents.pick_pieces(span);
        let (&(first, first_len), rest) = pieces.split_first()?;
        // The first piece grows into the whole block (in place, or moved
        // to where the kernel finds room), the rest move into its fresh
        // part side by side.
        // SAFETY: an idle piece is ours, page-aligned, inside one region
        // (so one mapping), and smaller than `span` (no run held `span`).
        let Some(block) = (unsafe { mem::grow_pages(address(first), first_len, span) }) else {
            for &(s, l) in &pieces {
                extents.insert_idle(s, l);
            }
            return None;
        };
        let to = block.as_ptr().expose_provenance();
        extents.remove_regions(first, first_len);
        extents.add_region(to, span);
        let mut filled = first_len;
        let mut moves = 1usize;
        let mut pieces = rest.iter();
        for &(s, l) in pieces.by_ref() {
            // SAFETY: the piece is idle, ours and inside one mapping; the
            // destination is the fresh part of the block just mapped, which
            // `filled + l <= span` keeps inside it; they cannot overlap (the
            // block's range was unmapped before the kernel chose it or is
            // the first piece's, grown into free addresses).
            if !unsafe { mem::move_pages(address(s), l, address(to + filled)) } {
                extents.insert_idle(s, l);
                break;
            }
            extents.remove_regions(s, l);
            extents.carve_region(to + filled, l);
            filled += l;
            moves += 1;
        }
        // Pieces not moved (the kernel refused one) stay idle.
        for &(s, l) in pieces {
            extents.insert_idle(s, l);
        }
        let counters = &mut extents.counters;
        counters.assembled += 1;
        counters.moves += moves as u64;
        counters.moved_bytes += filled as u64;
        counters.assembled_fresh_bytes += (span - filled) as u64;
        drop(extents);
        if filled < span {
            // SAFETY: the fresh part of the block just made, ours (out of
            // every run), page aligned (every piece is whole pages).
            unsafe { mem::populate(address(to + filled), span - filled) };
        }
        Some(Taken {
            block,
            source: Source::Assembled { moved: filled },
        })
    }

    /// Takes back a block of `span` bytes as idle pages.
    ///
    /// # Safety
    ///
    /// `block` is a block of `span` bytes that this tier handed out (by
    /// [`map`](Self::map) or [`take`](Self::take)), given up by the caller.
    pub(crate) unsafe fn put(&self, block: NonNull<u8>, span: usize) {
        self.books()
            .insert_idle(block.as_ptr().expose_provenance(), span);
    }

    /// Unmaps a block of `span` bytes that is not idle (freed instead of
    /// kept).
    ///
    /// # Safety
    ///
    /// As [`put`](Self::put).
    pub(crate) unsafe fn unmap(&self, block: NonNull<u8>, span: usize) {
        let mut extents = self.books();
        // SAFETY: by the caller's promise, pages of this tier's mappings
        // that the caller gave up.
        unsafe { mem::unmap(block, span) };
        extents.remove_regions(block.as_ptr().expose_provenance(), span);
    }

    /// Unmaps about `bytes` of idle pages (none if `bytes` is zero), the
    /// smallest runs first. Returns the bytes unmapped.
    pub(crate) fn release(&self, bytes: usize) -> usize {
        if bytes == 0 {
            return 0;
        }
        let mut extents = self.books();
        let runs = extents.pick_release(bytes);
        let mut released = 0;
        for (s, l) in runs {
            // SAFETY: taken out of the idle runs just now: ours, unused, in
            // this tier's mappings.
            unsafe { mem::unmap(address(s), l) };
            extents.remove_regions(s, l);
            released += l;
        }
        released
    }

    /// Unmaps every idle page, the hot blocks' included. Returns the bytes
    /// unmapped.
    pub(crate) fn release_all(&self) -> usize {
        self.drain_hot();
        self.release(usize::MAX)
    }

    /// Bytes idle since the last tick (see [`Extents::idle_since_tick`]).
    pub(crate) fn idle_since_tick(&self) -> usize {
        self.books().idle_since_tick()
    }

    /// The tier's figures (all but `trimmed_bytes` and `hot_blocks`, which
    /// the pool fills in).
    pub(crate) fn stats(&self) -> LargeFigures {
        let e = self.books();
        LargeFigures {
            idle_bytes: e.idle_bytes(),
            runs: e.runs(),
            mappings: e.regions(),
            process_mappings: mappings(),
            mapping_bound: mapping_bound(),
            counters: e.counters,
        }
    }

    /// Idle bytes, the hot blocks' included.
    pub(crate) fn idle_bytes(&self) -> usize {
        self.hot_bytes() + self.books().idle_bytes()
    }
}

/// The address of a page the tier holds, as a pointer.
fn address(at: usize) -> NonNull<u8> {
    // The tier only stores addresses of live mappings, which are never 0.
    // Pointers are rebuilt from addresses with exposed provenance: the
    // mappings come from the kernel, not from a Rust allocation.
    NonNull::new(std::ptr::with_exposed_provenance_mut(at)).expect("a mapping at address 0")
}
