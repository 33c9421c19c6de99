//! How a snapshot cuts its source into units to clone.
//!
//! One `FICLONERANGE` holds the file's locks for as long as it runs, and
//! its time grows with the number of extents it remaps, not with bytes.
//! Units are fixed: [`UNIT_BYTES`] each, so at most 64 extents of 4 KiB
//! (well under a millisecond to clone) for a writer that touches one. The
//! sweep clones as many consecutive units per call as its time budget
//! allows, measured as it goes.
//!
//! The extent map is not read up front: on XFS here, `FS_IOC_FIEMAP` costs
//! about what cloning costs per extent (~15 µs), and holds the file's I/O
//! lock while it runs, so a plan from it would double a snapshot's time
//! and stall writers before it even started.

use std::ops::Range;

/// Bytes in one unit (a multiple of every filesystem block size).
pub const UNIT_BYTES: u64 = 256 << 10;

/// The units of a snapshot: unit `i` is `[i * UNIT_BYTES, (i + 1) *
/// UNIT_BYTES)`, the last one cut at `size`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub size: u64,
    /// The filesystem block size: clones must be aligned to it, except
    /// where they end at the source's end.
    pub block: u64,
}

impl Plan {
    pub fn new(size: u64, block: u64) -> Plan {
        Plan {
            size,
            block: block.max(1),
        }
    }

    /// The source was `size` bytes at the snapshot's instant.
    pub fn resize(&mut self, size: u64) {
        self.size = size;
    }

    /// How many units there are.
    pub fn units(&self) -> usize {
        self.size.div_ceil(UNIT_BYTES) as usize
    }

    /// The bytes of units `r`.
    pub fn bytes(&self, r: Range<usize>) -> Range<u64> {
        (r.start as u64 * UNIT_BYTES).min(self.size)..(r.end as u64 * UNIT_BYTES).min(self.size)
    }

    /// The units an access to `[start, start + len)` touches. Past the end
    /// means the last unit: a write there grows the file, which must not
    /// happen before the last unit (which reaches the old end) is cloned.
    pub fn units_touching(&self, start: u64, len: u64) -> Range<usize> {
        let n = self.units();
        if n == 0 {
            return 0..0;
        }
        let unit_of = |at: u64| ((at / UNIT_BYTES) as usize).min(n - 1);
        let end = start.saturating_add(len.max(1)) - 1;
        unit_of(start)..unit_of(end) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_fixed_and_the_last_ends_at_the_size() {
        let plan = Plan::new(3 * UNIT_BYTES + 100, 4096);
        assert_eq!(plan.units(), 4);
        assert_eq!(plan.bytes(0..1), 0..UNIT_BYTES);
        assert_eq!(plan.bytes(3..4), 3 * UNIT_BYTES..3 * UNIT_BYTES + 100);
        assert_eq!(Plan::new(0, 4096).units(), 0);
        assert_eq!(Plan::new(10, 4096).bytes(0..1), 0..10);
    }

    #[test]
    fn accesses_map_to_the_units_under_them_and_past_the_end_to_the_last() {
        let plan = Plan::new(3 * UNIT_BYTES, 4096);
        assert_eq!(plan.units_touching(0, 1), 0..1);
        assert_eq!(plan.units_touching(UNIT_BYTES - 1, 2), 0..2);
        assert_eq!(plan.units_touching(UNIT_BYTES, UNIT_BYTES), 1..2);
        assert_eq!(plan.units_touching(2 * UNIT_BYTES + 5, 0), 2..3);
        assert_eq!(plan.units_touching(1 << 40, 4096), 2..3);
        assert_eq!(plan.units_touching(5, u64::MAX), 0..3);
        let mut grown = plan.clone();
        grown.resize(4 * UNIT_BYTES);
        assert_eq!(grown.units(), 4);
    }
}
