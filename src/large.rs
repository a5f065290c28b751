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
//! moves. Every move adds mappings; [`MAX_REGIONS`] bounds them (the
//! kernel's own limit, `vm.max_map_count`, is 65 530 by default), and
//! trimming, which unmaps the smallest runs first, removes them again.
//!
//! # Locking
//!
//! One mutex per pool guards the map; system calls run under it, so the
//! books and the address space change together (a large block costs tens
//! of microseconds to fill, the lock a fraction of one). The mutex is
//! taken inside the fork gate (`sync`), so a `fork` never finds it held.

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;

use crate::os::{self, PAGE};
use crate::stats::LargeStats;
use crate::sync::{AtomicUsize, Mutex, Ordering};

/// Runs smaller than this are not worth a system call to move: faulting
/// 16 pages costs about what one `mremap` does.
pub(crate) const MIN_PIECE: usize = 64 << 10;
/// The most ranges one assembly moves.
pub(crate) const MAX_MOVES: usize = 16;
/// Past this many regions (mappings) a pool stops assembling, so it never
/// approaches the kernel's limit on mappings; trimming brings the count
/// down.
pub(crate) const MAX_REGIONS: usize = 4096;

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

/// The pure bookkeeping of the tier: idle runs and regions, as addresses.
/// No system calls, so it is tested on its own (miri included).
///
/// Invariants (checked by [`Extents::check`] in tests):
/// - idle runs are page-aligned, non-empty, disjoint and maximal (no two
///   touch); `by_len` holds exactly them; `idle_bytes` is their sum;
/// - regions are page-aligned, non-empty and disjoint, and every idle byte
///   lies in a region.
#[derive(Debug, Default)]
pub(crate) struct Extents {
    /// Idle runs: start → length.
    idle: BTreeMap<usize, usize>,
    /// The same runs as (length, start), for best fit.
    by_len: BTreeSet<(usize, usize)>,
    /// Regions, each inside one kernel mapping: start → length. They cover
    /// every page the tier mapped and has not unmapped (idle or out).
    regions: BTreeMap<usize, usize>,
    idle_bytes: usize,
    /// The fewest idle bytes since the last tick.
    low_water: usize,
    /// The traffic counters (the idle figures are filled in by
    /// [`LargeTier::stats`]).
    counters: LargeStats,
}

impl Extents {
    /// Idle bytes.
    pub(crate) fn idle_bytes(&self) -> usize {
        self.idle_bytes
    }

    /// Idle runs.
    pub(crate) fn runs(&self) -> usize {
        self.idle.len()
    }

    /// Regions (mappings) tracked.
    pub(crate) fn regions(&self) -> usize {
        self.regions.len()
    }

    /// Adds `[start, start + len)` to the idle runs, joined with the runs
    /// it touches.
    pub(crate) fn insert_idle(&mut self, mut start: usize, mut len: usize) {
        debug_assert!(len > 0 && start % PAGE == 0 && len % PAGE == 0);
        self.idle_bytes += len;
        if let Some((&s, &l)) = self.idle.range(..start).next_back() {
            debug_assert!(s + l <= start, "idle runs overlap");
            if s + l == start {
                self.remove_run(s, l);
                start = s;
                len += l;
            }
        }
        if let Some(&l) = self.idle.get(&(start + len)) {
            self.remove_run(start + len, l);
            len += l;
        }
        self.idle.insert(start, len);
        self.by_len.insert((len, start));
    }

    /// Takes a run out of both indexes (not out of `idle_bytes`).
    fn remove_run(&mut self, start: usize, len: usize) {
        self.idle.remove(&start);
        self.by_len.remove(&(len, start));
    }

    /// Takes `len` bytes out of the run of `run` bytes at `start`: its
    /// front (`from_end` false) or its end. The rest of the run stays idle
    /// where it was.
    fn take_from_run(&mut self, start: usize, run: usize, len: usize, from_end: bool) {
        self.remove_run(start, run);
        if run > len {
            let rest = if from_end { start } else { start + len };
            self.idle.insert(rest, run - len);
            self.by_len.insert((run - len, rest));
        }
        self.idle_bytes -= len;
        self.low_water = self.low_water.min(self.idle_bytes);
    }

    /// Best fit: cuts `len` bytes from the front of the smallest idle run
    /// that holds them.
    pub(crate) fn cut(&mut self, len: usize) -> Option<usize> {
        let &(run, start) = self.by_len.range((len, 0)..).next()?;
        self.take_from_run(start, run, len, false);
        self.counters.cut += 1;
        Some(start)
    }

    /// Pieces for a block of `len` bytes that no run holds: the largest
    /// runs first (at least [`MIN_PIECE`] each), cut at region boundaries,
    /// at most [`MAX_MOVES`] of them, together at most `len` bytes. They
    /// leave the idle runs.
    pub(crate) fn pick_pieces(&mut self, len: usize) -> Vec<(usize, usize)> {
        let mut pieces = Vec::new();
        if self.regions.len() >= MAX_REGIONS {
            return pieces;
        }
        let mut need = len;
        while need > 0 && pieces.len() < MAX_MOVES {
            let Some(&(run, start)) = self.by_len.iter().next_back() else {
                break;
            };
            if run < MIN_PIECE {
                break;
            }
            let mut taken = 0;
            let want = run.min(need);
            for (s, l) in self.segments(start, want) {
                if pieces.len() == MAX_MOVES || (l < MIN_PIECE && !pieces.is_empty()) {
                    break;
                }
                pieces.push((s, l));
                taken += l;
            }
            if taken == 0 {
                break;
            }
            self.take_from_run(start, run, taken, false);
            need -= taken;
        }
        pieces
    }

    /// `[start, start + len)` cut at region boundaries, in address order.
    fn segments(&self, start: usize, len: usize) -> Vec<(usize, usize)> {
        let end = start + len;
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let Some((&s, &l)) = self.regions.range(..=at).next_back() else {
                debug_assert!(false, "an idle page outside every region");
                break;
            };
            debug_assert!(s + l > at, "an idle page outside every region");
            let stop = (s + l).min(end);
            out.push((at, stop - at));
            at = stop;
        }
        out
    }

    /// Splits the region holding `at` (if any holds it strictly inside) in
    /// two at `at`: after a move or an unmap there, the kernel's mapping is
    /// split too.
    fn split_at(&mut self, at: usize) {
        if let Some((&s, &l)) = self.regions.range(..at).next_back()
            && s + l > at
        {
            self.regions.insert(s, at - s);
            self.regions.insert(at, s + l - at);
        }
    }

    /// Records a new mapping.
    pub(crate) fn add_region(&mut self, start: usize, len: usize) {
        debug_assert!(
            self.regions
                .range(..start + len)
                .next_back()
                .is_none_or(|(&s, &l)| s + l <= start),
            "regions overlap"
        );
        self.regions.insert(start, len);
    }

    /// Forgets the regions of `[start, start + len)` (unmapped or moved
    /// away), splitting those it cuts through.
    pub(crate) fn remove_regions(&mut self, start: usize, len: usize) {
        self.split_at(start);
        self.split_at(start + len);
        let inside: Vec<usize> = self
            .regions
            .range(start..start + len)
            .map(|(&s, _)| s)
            .collect();
        for s in inside {
            self.regions.remove(&s);
        }
    }

    /// Records that `[to, to + len)` inside a region now is a mapping of
    /// its own (pages moved there).
    pub(crate) fn carve_region(&mut self, to: usize, len: usize) {
        self.split_at(to);
        self.split_at(to + len);
    }

    /// Idle pages to unmap, about `bytes` of them: the smallest runs first
    /// (they are the least reusable, and each unmapped run is a mapping
    /// less), the last one cut from its end. They leave the idle runs.
    pub(crate) fn pick_release(&mut self, bytes: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut left = bytes - bytes % PAGE;
        while left > 0 {
            let Some(&(run, start)) = self.by_len.iter().next() else {
                break;
            };
            let len = run.min(left);
            self.take_from_run(start, run, len, true);
            out.push((start + run - len, len));
            left -= len;
        }
        out
    }

    /// Bytes idle throughout the interval since the last tick, and starts a
    /// new one.
    pub(crate) fn idle_since_tick(&mut self) -> usize {
        let idle = self.low_water.min(self.idle_bytes);
        self.low_water = self.idle_bytes;
        idle
    }

    /// Checks every invariant (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut sum = 0;
        let mut last_end = None;
        for (&s, &l) in &self.idle {
            assert!(l > 0 && s % PAGE == 0 && l % PAGE == 0);
            if let Some(e) = last_end {
                assert!(s > e, "idle runs touch or overlap");
            }
            last_end = Some(s + l);
            assert!(self.by_len.contains(&(l, s)));
            sum += l;
        }
        assert_eq!(self.by_len.len(), self.idle.len());
        assert_eq!(sum, self.idle_bytes);
        let mut last_end = 0;
        for (&s, &l) in &self.regions {
            assert!(l > 0 && s % PAGE == 0 && l % PAGE == 0 && s >= last_end);
            last_end = s + l;
        }
        // Every idle page lies in a region.
        for (&s, &l) in &self.idle {
            let covered: usize = self.segments(s, l).iter().map(|&(_, l)| l).sum();
            assert_eq!(covered, l);
            let mut at = s;
            while at < s + l {
                let (&rs, &rl) = self.regions.range(..=at).next_back().unwrap();
                assert!(
                    rs <= at && at < rs + rl,
                    "idle page {at:#x} outside regions"
                );
                at = rs + rl;
            }
        }
    }
}

/// The tier of one pool: [`Extents`] behind a mutex, and the system calls
/// that keep the address space in step with it; in front, a hot slot per
/// class.
#[derive(Debug)]
pub(crate) struct LargeTier {
    extents: Mutex<Extents>,
    /// Per class: the address of an idle block of the class kept whole, or
    /// 0. Only the classes the tier serves (`spans[class] > 0`) use theirs.
    hot: Box<[AtomicUsize]>,
    /// Per class: the span of its blocks, 0 for classes the tier does not
    /// serve.
    spans: Box<[usize]>,
}

impl LargeTier {
    /// A tier for classes whose blocks span `spans[class]` bytes (0: a
    /// class the tier does not serve).
    pub(crate) fn new(spans: Box<[usize]>) -> Self {
        LargeTier {
            extents: Mutex::new(Extents::default()),
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
    /// pages), faulted in at once (`os::populate`).
    pub(crate) fn map(&self, capacity: usize) -> Result<NonNull<u8>, crate::Error> {
        let span = os::span(capacity);
        // Mapped and faulted in outside the lock (faulting 8 MiB takes a
        // millisecond). Recorded after: an address the kernel hands out
        // was unmapped before, and every unmap here forgets its regions
        // before the lock goes, so the record cannot overlap.
        let block = os::alloc(capacity)?;
        // SAFETY: the fresh mapping of `span` bytes just made, ours.
        unsafe { os::populate(block, span) };
        self.extents
            .lock()
            .add_region(block.as_ptr().expose_provenance(), span);
        Ok(block)
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
        let mut extents = self.extents.lock();
        if let Some(start) = extents.cut(span) {
            return Some(Taken {
                block: address(start),
                source: Source::Run,
            });
        }
        if !assemble || !os::CAN_MOVE_PAGES {
            return None;
        }
        let pieces = extents.pick_pieces(span);
        let (&(first, first_len), rest) = pieces.split_first()?;
        // The first piece grows into the whole block (in place, or moved
        // to where the kernel finds room), the rest move into its fresh
        // part side by side.
        // SAFETY: an idle piece is ours, page-aligned, inside one region
        // (so one mapping), and smaller than `span` (no run held `span`).
        let Some(block) = (unsafe { os::grow_pages(address(first), first_len, span) }) else {
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
            if !unsafe { os::move_pages(address(s), l, address(to + filled)) } {
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
            unsafe { os::populate(address(to + filled), span - filled) };
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
        self.extents
            .lock()
            .insert_idle(block.as_ptr().expose_provenance(), span);
    }

    /// Unmaps a block of `span` bytes that is not idle (freed instead of
    /// kept).
    ///
    /// # Safety
    ///
    /// As [`put`](Self::put).
    pub(crate) unsafe fn unmap(&self, block: NonNull<u8>, span: usize) {
        let mut extents = self.extents.lock();
        // SAFETY: by the caller's promise, pages of this tier's mappings
        // that the caller gave up.
        unsafe { os::unmap(block, span) };
        extents.remove_regions(block.as_ptr().expose_provenance(), span);
    }

    /// Unmaps about `bytes` of idle pages (none if `bytes` is zero), the
    /// smallest runs first. Returns the bytes unmapped.
    pub(crate) fn release(&self, bytes: usize) -> usize {
        if bytes == 0 {
            return 0;
        }
        let mut extents = self.extents.lock();
        let runs = extents.pick_release(bytes);
        let mut released = 0;
        for (s, l) in runs {
            // SAFETY: taken out of the idle runs just now: ours, unused, in
            // this tier's mappings.
            unsafe { os::unmap(address(s), l) };
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
        self.extents.lock().idle_since_tick()
    }

    /// The tier's figures (all but `trimmed_bytes` and `hot_blocks`, which
    /// the pool fills in).
    pub(crate) fn stats(&self) -> LargeStats {
        let e = self.extents.lock();
        LargeStats {
            idle_bytes: e.idle_bytes(),
            runs: e.runs(),
            mappings: e.regions(),
            ..e.counters.clone()
        }
    }

    /// Idle bytes, the hot blocks' included.
    pub(crate) fn idle_bytes(&self) -> usize {
        self.hot_bytes() + self.extents.lock().idle_bytes()
    }
}

/// The address of a page the tier holds, as a pointer.
fn address(at: usize) -> NonNull<u8> {
    // The tier only stores addresses of live mappings, which are never 0.
    // Pointers are rebuilt from addresses with exposed provenance: the
    // mappings come from the kernel, not from a Rust allocation.
    NonNull::new(std::ptr::with_exposed_provenance_mut(at)).expect("a mapping at address 0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE;

    /// A map with one region per `(start, pages)`, all idle.
    fn idle(regions: &[(usize, usize)]) -> Extents {
        let mut e = Extents::default();
        for &(s, pages) in regions {
            e.add_region(s * P, pages * P);
            e.insert_idle(s * P, pages * P);
        }
        e.check();
        e
    }

    #[test]
    fn returned_ranges_join_their_idle_neighbours_across_regions() {
        let mut e = Extents::default();
        e.add_region(100 * P, 10 * P);
        e.add_region(110 * P, 10 * P);
        e.insert_idle(100 * P, 5 * P);
        e.insert_idle(110 * P, 10 * P);
        assert_eq!(e.runs(), 2);
        e.insert_idle(105 * P, 5 * P);
        e.check();
        assert_eq!(e.runs(), 1, "one run across both regions");
        assert_eq!(e.idle_bytes(), 20 * P);
    }

    #[test]
    fn a_cut_takes_the_front_of_the_smallest_run_that_holds_it() {
        let mut e = idle(&[(100, 64), (200, 32), (300, 48)]);
        assert_eq!(e.cut(40 * P), Some(300 * P));
        e.check();
        assert_eq!(e.idle_bytes(), (64 + 32 + 8) * P);
        assert_eq!(e.cut(65 * P), None);
        assert_eq!(e.cut(8 * P), Some(340 * P), "the 8-page rest is smallest");
        e.check();
    }

    #[test]
    fn pieces_are_the_largest_runs_cut_at_region_boundaries() {
        // One 48-page run across two regions (32 + 16), and a 40-page run.
        let mut e = Extents::default();
        e.add_region(100 * P, 32 * P);
        e.add_region(132 * P, 16 * P);
        e.insert_idle(100 * P, 48 * P);
        e.add_region(300 * P, 40 * P);
        e.insert_idle(300 * P, 40 * P);
        e.check();
        let pieces = e.pick_pieces(80 * P);
        assert_eq!(
            pieces,
            vec![(100 * P, 32 * P), (132 * P, 16 * P), (300 * P, 32 * P)]
        );
        e.check();
        assert_eq!(e.idle_bytes(), 8 * P, "the rest of the last run stays");
    }

    #[test]
    fn pieces_below_the_minimum_are_not_moved() {
        let small = MIN_PIECE / P - 1;
        let mut e = idle(&[(100, small), (200, small)]);
        assert!(e.pick_pieces(100 * P).is_empty());
        assert_eq!(e.idle_bytes(), 2 * small * P);
    }

    #[test]
    fn no_more_than_max_moves_pieces() {
        let pages = MIN_PIECE / P;
        let regions: Vec<(usize, usize)> = (0..MAX_MOVES + 4)
            .map(|i| (1000 + i * 2 * pages, pages))
            .collect();
        let mut e = idle(&regions);
        let pieces = e.pick_pieces(usize::MAX / 2);
        assert_eq!(pieces.len(), MAX_MOVES);
        assert_eq!(e.runs(), 4);
        e.check();
    }

    // Safe code only, and thousands of B-tree operations: minutes under
    // miri for nothing it could find.
    #[cfg_attr(miri, ignore)]
    #[test]
    fn nothing_is_assembled_past_the_bound_on_mappings() {
        let pages = MIN_PIECE / P;
        let mut e = Extents::default();
        // MAX_REGIONS mappings, every other one idle.
        for i in 0..MAX_REGIONS {
            let s = (1000 + i * 2 * pages) * P;
            e.add_region(s, pages * P);
            if i % 2 == 0 {
                e.insert_idle(s, pages * P);
            }
        }
        e.check();
        assert!(e.pick_pieces(4 * pages * P).is_empty());
        assert_eq!(e.idle_bytes(), MAX_REGIONS / 2 * pages * P, "nothing taken");
        // Unmapping brings the count under the bound, and moves resume.
        for (s, l) in e.pick_release(pages * P) {
            e.remove_regions(s, l);
        }
        assert_eq!(e.pick_pieces(2 * pages * P).len(), 2);
        e.check();
    }

    #[test]
    fn removing_regions_splits_those_cut_through() {
        let mut e = Extents::default();
        e.add_region(100 * P, 30 * P);
        e.remove_regions(110 * P, 10 * P);
        assert_eq!(e.regions(), 2);
        e.carve_region(102 * P, 4 * P);
        assert_eq!(e.regions(), 4);
        e.remove_regions(100 * P, 30 * P);
        assert_eq!(e.regions(), 0);
    }

    #[test]
    fn release_takes_the_smallest_runs_first_and_cuts_the_last_from_its_end() {
        let mut e = idle(&[(100, 10), (200, 20), (300, 40)]);
        let out = e.pick_release(25 * P);
        assert_eq!(out, vec![(100 * P, 10 * P), (205 * P, 15 * P)]);
        assert_eq!(e.idle_bytes(), 45 * P);
        for (s, l) in out {
            e.remove_regions(s, l);
        }
        e.check();
    }

    #[test]
    fn idle_since_tick_is_the_low_water_mark() {
        let mut e = idle(&[(100, 64)]);
        assert_eq!(e.idle_since_tick(), 0, "nothing was idle at the start");
        let at = e.cut(48 * P).unwrap();
        e.insert_idle(at, 48 * P);
        assert_eq!(e.idle_since_tick(), 16 * P);
        assert_eq!(e.idle_since_tick(), 64 * P, "untouched all interval");
    }

    #[cfg(not(miri))]
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// A fresh mapping of `pages`, handed out.
            Map(usize),
            /// Take `pages`: cut, else assemble (moves simulated).
            Take(usize),
            /// Return the n-th block out.
            Put(usize),
            /// Unmap the n-th block out.
            Unmap(usize),
            /// Release about `pages` of idle pages.
            Release(usize),
            Tick,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1usize..600).prop_map(Op::Map),
                (1usize..600).prop_map(Op::Take),
                (0usize..16).prop_map(Op::Put),
                (0usize..16).prop_map(Op::Unmap),
                (0usize..400).prop_map(Op::Release),
                Just(Op::Tick),
            ]
        }

        proptest! {
            /// The books of idle runs and regions stay consistent, no page
            /// is both out and idle, and bytes are conserved: mapped =
            /// idle + out.
            #[test]
            fn the_books_balance(ops in proptest::collection::vec(op(), 1..120)) {
                let mut e = Extents::default();
                let mut next = 1usize << 20; // the next fresh address, pages
                let mut out: Vec<(usize, usize)> = Vec::new();
                let mut mapped = 0usize;
                for op in ops {
                    match op {
                        Op::Map(pages) => {
                            let s = next * P;
                            next += pages + 1;
                            e.add_region(s, pages * P);
                            out.push((s, pages * P));
                            mapped += pages * P;
                        }
                        Op::Take(pages) => {
                            let len = pages * P;
                            if let Some(s) = e.cut(len) {
                                out.push((s, len));
                                continue;
                            }
                            let pieces = e.pick_pieces(len);
                            let Some(&(first, first_len)) = pieces.first() else { continue };
                            prop_assert!(first_len < len);
                            // The first grows (moves) to fresh addresses.
                            let to = next * P;
                            next += pages + 1;
                            e.remove_regions(first, first_len);
                            e.add_region(to, len);
                            let mut filled = first_len;
                            for &(s, l) in &pieces[1..] {
                                e.remove_regions(s, l);
                                e.carve_region(to + filled, l);
                                filled += l;
                            }
                            prop_assert!(filled <= len);
                            mapped += len - filled;
                            out.push((to, len));
                        }
                        Op::Put(n) if !out.is_empty() => {
                            let (s, l) = out.swap_remove(n % out.len());
                            e.insert_idle(s, l);
                        }
                        Op::Unmap(n) if !out.is_empty() => {
                            let (s, l) = out.swap_remove(n % out.len());
                            e.remove_regions(s, l);
                            mapped -= l;
                        }
                        Op::Release(pages) => {
                            for (s, l) in e.pick_release(pages * P) {
                                e.remove_regions(s, l);
                                mapped -= l;
                            }
                        }
                        Op::Tick => {
                            let idle = e.idle_since_tick();
                            prop_assert!(idle <= e.idle_bytes());
                        }
                        _ => {}
                    }
                    e.check();
                    let held: usize = out.iter().map(|&(_, l)| l).sum();
                    prop_assert_eq!(held + e.idle_bytes(), mapped);
                    // No block out overlaps an idle run.
                    for &(s, l) in &out {
                        if let Some((&is, &il)) = e.idle.range(..s + l).next_back() {
                            prop_assert!(is + il <= s, "out block overlaps idle run");
                        }
                    }
                    // Every page out or idle lies in a region.
                    let covered: usize = e.regions.values().sum();
                    prop_assert_eq!(covered, mapped);
                }
            }
        }
    }
}
