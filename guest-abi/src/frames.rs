//! The range logic of the guest kernel's physical frame allocator: a sorted,
//! fixed-capacity list of free page-aligned ranges `[start, end)`, with
//! top-down allocation. No heap and no I/O, so the host unit-tests it and the
//! guest (`kernel/mem.rs`) wraps one instance around the e820 map.

use crate::layout::PAGE_SIZE;

/// The list is full: splitting a range would need one more slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl core::fmt::Display for Full {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the free-range list is full")
    }
}

const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

/// `x` rounded up to `a` (a power of two), saturating at the last multiple.
const fn align_up(x: u64, a: u64) -> u64 {
    match x.checked_add(a - 1) {
        Some(v) => align_down(v, a),
        None => align_down(u64::MAX, a),
    }
}

/// Free physical memory as at most `N` disjoint, non-adjacent, page-aligned
/// ranges sorted by address.
#[derive(Clone, Copy, Debug)]
pub struct FrameSet<const N: usize> {
    ranges: [(u64, u64); N],
    len: usize,
}

impl<const N: usize> Default for FrameSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameSet<N> {
    pub const fn new() -> Self {
        Self {
            ranges: [(0, 0); N],
            len: 0,
        }
    }

    /// The free ranges, sorted by address.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.len]
    }

    /// Consumes the set into an iterator over its ranges.
    pub fn into_ranges(self) -> impl Iterator<Item = (u64, u64)> {
        (0..self.len).map(move |i| self.ranges[i])
    }

    /// Free bytes in total.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(|(s, e)| e - s).sum()
    }

    /// End of the highest free range (0 when empty).
    pub fn top(&self) -> u64 {
        self.ranges().last().map_or(0, |r| r.1)
    }

    /// True when all of `[start, end)` is free.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        start >= end || self.ranges().iter().any(|&(s, e)| s <= start && end <= e)
    }

    fn insert_at(&mut self, i: usize, r: (u64, u64)) -> Result<(), Full> {
        if self.len == N {
            return Err(Full);
        }
        self.ranges.copy_within(i..self.len, i + 1);
        self.ranges[i] = r;
        self.len += 1;
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Adds the whole pages inside `[start, end)` to the free set, merging
    /// with overlapping or adjacent ranges. Partial pages at either end are
    /// dropped (e820 ranges need not be page-aligned).
    pub fn add(&mut self, start: u64, end: u64) -> Result<(), Full> {
        let (mut s, mut e) = (align_up(start, PAGE_SIZE), align_down(end, PAGE_SIZE));
        if s >= e {
            return Ok(());
        }
        // First range that ends at or after `s` (it may touch or overlap).
        let first = self
            .ranges()
            .iter()
            .position(|r| r.1 >= s)
            .unwrap_or(self.len);
        // Ranges from `first` that start at or before `e` merge with the new one.
        let mut last = first;
        while last < self.len && self.ranges[last].0 <= e {
            s = s.min(self.ranges[last].0);
            e = e.max(self.ranges[last].1);
            last += 1;
        }
        if last == first {
            return self.insert_at(first, (s, e));
        }
        self.ranges[first] = (s, e);
        for _ in first + 1..last {
            self.remove_at(first + 1);
        }
        Ok(())
    }

    /// Takes `[start, end)`, widened to whole pages, out of the free set.
    /// On `Full` the set is unchanged.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), Full> {
        let (s, e) = (align_down(start, PAGE_SIZE), align_up(end, PAGE_SIZE));
        if s >= e {
            return Ok(());
        }
        // A range strictly containing [s, e) splits in two: the only case that
        // needs a new slot; check it before changing anything.
        if let Some(i) = self.ranges().iter().position(|r| r.0 < s && e < r.1) {
            let tail = (e, self.ranges[i].1);
            self.insert_at(i + 1, tail)?;
            self.ranges[i].1 = s;
            return Ok(());
        }
        let mut i = 0;
        while i < self.len {
            let (rs, re) = self.ranges[i];
            if re <= s || e <= rs {
                i += 1;
            } else if s <= rs && re <= e {
                self.remove_at(i);
            } else if rs < s {
                self.ranges[i].1 = s;
                i += 1;
            } else {
                self.ranges[i].0 = e;
                i += 1;
            }
        }
        Ok(())
    }

    /// Finds the highest `size` bytes, aligned to `align` (a power of two, at
    /// least a page), that are free, end at or below `max_end` and do not
    /// overlap the half-open range `avoid` (`(0, 0)` for none), and takes them
    /// out of the set. Returns their start.
    pub fn alloc_top(
        &mut self,
        size: u64,
        align: u64,
        max_end: u64,
        avoid: (u64, u64),
    ) -> Option<u64> {
        assert!(
            align.is_power_of_two() && align >= PAGE_SIZE,
            "bad alignment {align:#x}"
        );
        let size = align_up(size, PAGE_SIZE);
        if size == 0 {
            return None;
        }
        // The highest aligned start of a block inside [lo, hi), if any.
        let fit = |lo: u64, hi: u64| {
            let start = align_down(hi.checked_sub(size)?, align);
            (start >= lo).then_some(start)
        };
        let found = self.ranges().iter().rev().find_map(|&(rs, re)| {
            let hi = re.min(max_end);
            if avoid.0 >= avoid.1 || avoid.1 <= rs || hi <= avoid.0 {
                return fit(rs, hi);
            }
            // Above the avoided range first, then below it.
            fit(rs.max(avoid.1), hi).or_else(|| fit(rs, hi.min(avoid.0)))
        })?;
        self.remove(found, found + size).ok()?;
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn set(ranges: &[(u64, u64)]) -> FrameSet<8> {
        let mut s = FrameSet::new();
        for &(a, b) in ranges {
            s.add(a, b).unwrap();
        }
        s
    }

    #[test]
    fn add_merges_and_trims_partial_pages() {
        let mut s = set(&[(0x10_0000, 0x20_0000), (0x40_0000, 0x50_0000)]);
        assert_eq!(
            s.ranges(),
            &[(0x10_0000, 0x20_0000), (0x40_0000, 0x50_0000)]
        );
        // Adjacent on the left, overlapping both: everything merges.
        s.add(0x20_0000, 0x40_0800).unwrap();
        assert_eq!(s.ranges(), &[(0x10_0000, 0x50_0000)]);
        // An e820 range that is not page-aligned keeps whole pages only.
        s.add(0x100, 0x9_fc00).unwrap();
        assert_eq!(s.ranges(), &[(0x1000, 0x9_f000), (0x10_0000, 0x50_0000)]);
        // Less than a page: nothing.
        s.add(0x60_0010, 0x60_0ff0).unwrap();
        assert_eq!(s.ranges().len(), 2);
        assert_eq!(s.total(), 0x9_e000 + 0x40_0000);
        assert_eq!(s.top(), 0x50_0000);
    }

    #[test]
    fn add_keeps_order_when_inserting_below() {
        let mut s = set(&[(0x40_0000, 0x50_0000)]);
        s.add(0x10_0000, 0x20_0000).unwrap();
        s.add(0x60_0000, 0x70_0000).unwrap();
        assert_eq!(
            s.ranges(),
            &[
                (0x10_0000, 0x20_0000),
                (0x40_0000, 0x50_0000),
                (0x60_0000, 0x70_0000)
            ]
        );
    }

    #[test]
    fn remove_splits_trims_and_drops() {
        let mut s = set(&[(0, 16 * MIB), (32 * MIB, 48 * MIB)]);
        s.remove(0, MIB).unwrap();
        s.remove(2 * MIB, 3 * MIB + 1).unwrap(); // widened to whole pages
        assert_eq!(
            s.ranges(),
            &[
                (MIB, 2 * MIB),
                (3 * MIB + 0x1000, 16 * MIB),
                (32 * MIB, 48 * MIB)
            ]
        );
        s.remove(15 * MIB, 40 * MIB).unwrap(); // spans a gap
        assert_eq!(
            s.ranges(),
            &[
                (MIB, 2 * MIB),
                (3 * MIB + 0x1000, 15 * MIB),
                (40 * MIB, 48 * MIB)
            ]
        );
        s.remove(0, 100 * MIB).unwrap();
        assert!(s.ranges().is_empty());
        assert!(s.contains(5, 5));
    }

    #[test]
    fn split_fails_cleanly_when_full() {
        let mut s: FrameSet<2> = FrameSet::new();
        s.add(0, 4 * MIB).unwrap();
        s.add(8 * MIB, 12 * MIB).unwrap();
        assert_eq!(s.add(16 * MIB, 20 * MIB), Err(Full));
        let before = *s.ranges().first().unwrap();
        assert_eq!(s.remove(MIB, 2 * MIB), Err(Full));
        assert_eq!(s.ranges()[0], before);
        // Trimming an end needs no slot.
        s.remove(0, MIB).unwrap();
        assert_eq!(s.ranges()[0], (MIB, 4 * MIB));
    }

    #[test]
    fn allocates_from_the_top_down() {
        let mut s = set(&[(MIB, 2 * MIB), (8 * MIB, 9 * MIB)]);
        assert_eq!(
            s.alloc_top(0x1000, PAGE_SIZE, u64::MAX, (0, 0)),
            Some(9 * MIB - 0x1000)
        );
        assert_eq!(
            s.alloc_top(0x2000, PAGE_SIZE, u64::MAX, (0, 0)),
            Some(9 * MIB - 0x3000)
        );
        assert_eq!(s.ranges(), &[(MIB, 2 * MIB), (8 * MIB, 9 * MIB - 0x3000)]);
        // Too big for the upper range: the lower one.
        assert_eq!(s.alloc_top(MIB, PAGE_SIZE, u64::MAX, (0, 0)), Some(MIB));
        assert_eq!(s.alloc_top(MIB, PAGE_SIZE, u64::MAX, (0, 0)), None);
        assert!(!s.contains(MIB, MIB + 0x1000));
        assert!(s.contains(8 * MIB, 8 * MIB + 0x1000));
    }

    #[test]
    fn honours_max_end_alignment_and_avoid() {
        let mut s = set(&[(0, 64 * MIB)]);
        assert_eq!(
            s.alloc_top(0x1000, PAGE_SIZE, 4 * MIB + 0x800, (0, 0)),
            Some(4 * MIB - 0x1000)
        );
        assert_eq!(
            s.alloc_top(0x1000, 2 * MIB, u64::MAX, (0, 0)),
            Some(62 * MIB)
        );
        // The avoided range covers the top: allocate below it.
        assert_eq!(
            s.alloc_top(0x3000, PAGE_SIZE, u64::MAX, (60 * MIB, 64 * MIB)),
            Some(60 * MIB - 0x3000)
        );
        // The avoided range is in the middle of a free range and the block
        // fits above it.
        let mut s = set(&[(0, 64 * MIB)]);
        assert_eq!(
            s.alloc_top(MIB, PAGE_SIZE, 40 * MIB, (10 * MIB, 20 * MIB)),
            Some(39 * MIB)
        );
        // It does not fit above (only 1 MiB between the avoid and max_end).
        assert_eq!(
            s.alloc_top(2 * MIB, PAGE_SIZE, 21 * MIB, (10 * MIB, 20 * MIB)),
            Some(8 * MIB)
        );
        // Nothing fits.
        assert_eq!(s.alloc_top(0x1000, PAGE_SIZE, 0x1000, (0, 0x1000)), None);
        assert_eq!(s.alloc_top(0, PAGE_SIZE, u64::MAX, (0, 0)), None);
    }

    #[test]
    fn allocation_never_overlaps_avoid_or_escapes_max_end() {
        // A small exhaustive sweep over avoided windows and limits.
        for avoid_start in (0..16u64).map(|p| p * 0x1000) {
            for avoid_len in [0u64, 0x1000, 0x3000] {
                for max_end in [0x4000u64, 0x9000, 0x10000] {
                    let mut s = set(&[(0, 0x4000), (0x8000, 0x10000)]);
                    let avoid = (avoid_start, avoid_start + avoid_len);
                    while let Some(a) = s.alloc_top(0x2000, PAGE_SIZE, max_end, avoid) {
                        let end = a + 0x2000;
                        assert!(end <= max_end, "{a:#x} past {max_end:#x}");
                        assert!(
                            avoid_len == 0 || end <= avoid.0 || avoid.1 <= a,
                            "{a:#x} in {avoid:x?}"
                        );
                        assert!(!s.contains(a, end));
                    }
                }
            }
        }
    }

    #[test]
    fn huge_values_do_not_wrap() {
        let mut s = set(&[(u64::MAX - 0x2fff, u64::MAX)]);
        assert_eq!(s.ranges(), &[(u64::MAX - 0x2fff, u64::MAX - 0xfff)]);
        assert_eq!(s.alloc_top(u64::MAX, PAGE_SIZE, u64::MAX, (0, 0)), None);
        s.remove(u64::MAX - 0x1000, u64::MAX).unwrap();
        assert_eq!(s.total(), 0x1000);
    }
}
