//! How a snapshot cuts its source into units to clone.
//!
//! One `FICLONERANGE` holds the file's locks for as long as it runs, and
//! its time grows with the number of extents it remaps, not with bytes (a
//! 1 GiB single-extent range is quick; 4 MiB of 1024 extents is not). So
//! units are cut from the extent map: at most [`EXTENTS_PER_UNIT`] extents
//! and [`MAX_UNIT_BYTES`] each. The sweep then clones as many consecutive
//! units per call as fit its time budget, and a writer that touches an
//! uncloned range waits for just the units under it.

use std::ops::Range;

use crate::sys::extents::Extent;

/// Extents in one unit: small enough that cloning one for a waiting writer
/// takes well under a millisecond.
pub const EXTENTS_PER_UNIT: usize = 64;
/// Bytes in one unit at most, so that a writer into a big extent waits for
/// a bounded amount of page-cache flushing.
pub const MAX_UNIT_BYTES: u64 = 64 << 20;

/// The units of a snapshot: unit `i` is `[bounds[i], bounds[i + 1])`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub size: u64,
    pub block: u64,
    pub bounds: Vec<u64>,
}

impl Plan {
    /// Cut `[0, size)` of a file with extent map `extents` into units whose
    /// bounds are multiples of `block` (except the last, which is `size`).
    pub fn new(extents: &[Extent], size: u64, block: u64) -> Plan {
        let block = block.max(1);
        let mut bounds = vec![0u64];
        let mut in_unit = 0usize;
        // Cut at `at` (rounded up to a block); false if that is not past
        // the last cut and before the end.
        let cut = |bounds: &mut Vec<u64>, at: u64| {
            let at = at.div_ceil(block) * block;
            let fits = at > *bounds.last().unwrap_or(&0) && at < size;
            if fits {
                bounds.push(at);
            }
            fits
        };
        // Long stretches (a big extent, a hole) are split by bytes.
        let split_long = |bounds: &mut Vec<u64>, to: u64| {
            while to.saturating_sub(*bounds.last().unwrap_or(&0)) > MAX_UNIT_BYTES {
                if !cut(bounds, bounds.last().unwrap_or(&0) + MAX_UNIT_BYTES) {
                    break;
                }
            }
        };
        for e in extents.iter().filter(|e| e.logical < size) {
            let before = bounds.len();
            split_long(&mut bounds, e.end().min(size));
            if bounds.len() != before {
                in_unit = 0;
            }
            in_unit += 1;
            if in_unit >= EXTENTS_PER_UNIT {
                cut(&mut bounds, e.end());
                in_unit = 0;
            }
        }
        split_long(&mut bounds, size);
        if size > 0 {
            bounds.push(size);
        }
        Plan {
            size,
            block,
            bounds,
        }
    }

    /// The source was `size` bytes at the snapshot's instant rather than
    /// the size planned from: units end there (a grown stretch is cut by
    /// bytes, as holes are).
    pub fn resize(&mut self, size: u64) {
        if size == self.size {
            return;
        }
        let keep = size.min(self.size);
        self.bounds.retain(|&b| b < keep);
        if self.bounds.is_empty() {
            self.bounds.push(0);
        }
        let block = self.block.max(1);
        let mut last = *self.bounds.last().unwrap_or(&0);
        while size - last > MAX_UNIT_BYTES {
            last = (last + MAX_UNIT_BYTES).div_ceil(block) * block;
            self.bounds.push(last);
        }
        if size > 0 {
            self.bounds.push(size);
        }
        self.size = size;
    }

    /// How many units there are.
    pub fn units(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    /// The bytes of units `r`.
    pub fn bytes(&self, r: Range<usize>) -> Range<u64> {
        self.bounds[r.start]..self.bounds[r.end]
    }

    /// The units an access to `[start, start + len)` touches. Past the end
    /// means the last unit: a write there grows the file, which must not
    /// happen before the last unit (which reaches the old end) is cloned.
    pub fn units_touching(&self, start: u64, len: u64) -> Range<usize> {
        let n = self.units();
        if n == 0 {
            return 0..0;
        }
        let unit_of = |at: u64| (self.bounds.partition_point(|&b| b <= at).max(1) - 1).min(n - 1);
        let end = start.saturating_add(len.max(1)) - 1;
        unit_of(start)..unit_of(end) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(logical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical: logical + (1 << 30),
            length,
            flags: 0,
        }
    }

    #[test]
    fn fragmented_files_are_cut_every_so_many_extents_on_block_bounds() {
        // Every other 4 KiB block present: 1024 extents in 8 MiB.
        let extents: Vec<Extent> = (0..1024).map(|i| extent(i * 8192 + 4096, 4096)).collect();
        let plan = Plan::new(&extents, 8 << 20, 4096);
        assert_eq!(plan.units(), 1024 / EXTENTS_PER_UNIT);
        assert_eq!(plan.bounds[0], 0);
        assert_eq!(*plan.bounds.last().unwrap(), 8 << 20);
        assert!(plan.bounds.iter().all(|b| b % 4096 == 0));
        assert!(plan.bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn big_extents_and_holes_are_cut_by_bytes_and_the_tail_may_be_unaligned() {
        let size = 3 * MAX_UNIT_BYTES + 100;
        let plan = Plan::new(&[extent(0, size - 100)], size, 4096);
        assert_eq!(plan.units(), 4);
        assert_eq!(*plan.bounds.last().unwrap(), size);
        let sparse = Plan::new(&[], 2 * MAX_UNIT_BYTES, 4096);
        assert_eq!(sparse.units(), 2);
        assert_eq!(Plan::new(&[], 0, 4096).units(), 0);
        assert_eq!(Plan::new(&[extent(0, 4096)], 10, 4096).bounds, vec![0, 10]);
    }

    #[test]
    fn accesses_map_to_the_units_under_them_and_past_the_end_to_the_last() {
        let plan = Plan {
            size: 30,
            block: 1,
            bounds: vec![0, 10, 20, 30],
        };
        assert_eq!(plan.units_touching(0, 1), 0..1);
        assert_eq!(plan.units_touching(9, 2), 0..2);
        assert_eq!(plan.units_touching(10, 10), 1..2);
        assert_eq!(plan.units_touching(25, 0), 2..3);
        assert_eq!(plan.units_touching(1000, 4096), 2..3);
        assert_eq!(plan.units_touching(5, u64::MAX), 0..3);
        assert_eq!(plan.bytes(1..3), 10..30);
    }

    #[test]
    fn a_source_that_changed_size_before_the_start_is_replanned() {
        let mut plan = Plan::new(&[extent(0, 8192)], 8192, 4096);
        plan.resize(3 * MAX_UNIT_BYTES);
        assert_eq!(plan.units(), 3);
        assert_eq!(*plan.bounds.last().unwrap(), 3 * MAX_UNIT_BYTES);
        plan.resize(5000);
        assert_eq!(plan.bounds, vec![0, 5000]);
        plan.resize(0);
        assert_eq!(plan.units(), 0);
    }
}
