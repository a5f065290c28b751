//! The pure bookkeeping of the large tier: idle runs and regions, as
//! addresses.

use std::collections::{BTreeMap, BTreeSet};

use super::LargeCounters;
use super::{MAX_MOVES, MIN_PIECE};
use crate::sys::mem::PAGE;

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
    pub(super) counters: LargeCounters,
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

    /// Whether `at` lies in a region (a page the tier mapped and has not
    /// unmapped).
    pub(crate) fn holds(&self, at: usize) -> bool {
        self.regions
            .range(..=at)
            .next_back()
            .is_some_and(|(&s, &l)| at < s + l)
    }

    /// Whether `[start, start + len)` lies inside one region (so one kernel
    /// mapping, which `mremap` can grow or move whole).
    pub(crate) fn in_one_region(&self, start: usize, len: usize) -> bool {
        self.regions
            .range(..=start)
            .next_back()
            .is_some_and(|(&s, &l)| start + len <= s + l)
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

    /// Takes `[at, at + len)` out of the idle run that starts at `at`, if
    /// it holds that much: a block that ends at `at` grows into it.
    pub(crate) fn extend(&mut self, at: usize, len: usize) -> bool {
        match self.idle.get(&at) {
            Some(&run) if run >= len => {
                self.take_from_run(at, run, len, false);
                true
            }
            _ => false,
        }
    }

    /// Pieces for a block of `len` bytes that no run holds: the largest
    /// runs first (at least [`MIN_PIECE`] each), cut at region boundaries,
    /// at most [`MAX_MOVES`] of them, together at most `len` bytes. They
    /// leave the idle runs.
    pub(crate) fn pick_pieces(&mut self, len: usize) -> Vec<(usize, usize)> {
        let mut pieces = Vec::new();
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
