//! Which chunks of an archived version are on disk: one bit per chunk.
//!
//! ebb always fills whole chunks, so a bit per chunk is exact, and a 1 GiB
//! file of 256 KiB chunks needs 512 bytes.

use anyhow::{bail, Result};

use crate::store::ChunkRef;

/// A set of chunk indices of one manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residency {
    bits: Vec<u64>,
    len: usize,
    count: usize,
}

impl Residency {
    /// No chunk resident.
    pub fn empty(len: usize) -> Residency {
        Residency {
            bits: vec![0; len.div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Every chunk resident.
    pub fn full(len: usize) -> Residency {
        let mut r = Residency::empty(len);
        for i in 0..len {
            r.insert(i);
        }
        r
    }

    /// Number of chunks in the manifest.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// All back or all gone: no fill of ebb's is left in flight in the file
    /// (see `FileRecord::filling`).
    pub fn is_settled(&self) -> bool {
        self.is_complete() || self.is_empty()
    }

    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// Mark chunk `i` resident; returns whether it was not already.
    pub fn insert(&mut self, i: usize) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.bits[i / 64] |= 1 << (i % 64);
        self.count += 1;
        true
    }

    /// Indices of the chunks in `range` that are not resident.
    pub fn missing_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        range.filter(|&i| !self.contains(i))
    }

    /// Bytes of `manifest` that are resident.
    pub fn bytes(&self, manifest: &[ChunkRef]) -> u64 {
        if self.is_complete() {
            return manifest.iter().map(|c| u64::from(c.len)).sum();
        }
        manifest
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, c)| u64::from(c.len))
            .sum()
    }

    /// Resident byte ranges, merged, as `(start, end)`.
    pub fn ranges(&self, manifest: &[ChunkRef]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, c) in manifest.iter().enumerate() {
            if !self.contains(i) {
                continue;
            }
            let end = c.offset + u64::from(c.len);
            match out.last_mut() {
                Some(last) if last.1 == c.offset => last.1 = end,
                _ => out.push((c.offset, end)),
            }
        }
        out
    }

    /// Little-endian words, as stored in the catalog.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Read back [`Residency::to_bytes`] for a manifest of `len` chunks.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Residency> {
        if bytes.len() != len.div_ceil(64) * 8 {
            bail!("residency map of {} bytes for {len} chunks", bytes.len());
        }
        let bits: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .collect();
        let tail_bits = len % 64;
        if tail_bits != 0 && bits.last().is_some_and(|w| w >> tail_bits != 0) {
            bail!("residency map has bits past its {len} chunks");
        }
        let count = bits.iter().map(|w| w.count_ones() as usize).sum();
        Ok(Residency { bits, len, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChunkHash;

    fn manifest(lens: &[u32]) -> Vec<ChunkRef> {
        let mut off = 0;
        lens.iter()
            .map(|&len| {
                let c = ChunkRef {
                    offset: off,
                    len,
                    hash: ChunkHash([0; 32]),
                };
                off += u64::from(len);
                c
            })
            .collect()
    }

    #[test]
    fn insert_counts_once_and_ranges_merge() {
        let m = manifest(&[10, 20, 30, 40]);
        let mut r = Residency::empty(4);
        assert!(r.is_empty());
        assert!(r.insert(1));
        assert!(!r.insert(1));
        assert!(r.insert(2));
        assert!(!r.insert(9), "out of range is ignored");
        assert_eq!(r.ranges(&m), vec![(10, 60)]);
        assert_eq!(r.bytes(&m), 50);
        assert_eq!(r.missing_in(0..4).collect::<Vec<_>>(), vec![0, 3]);
        r.insert(0);
        r.insert(3);
        assert!(r.is_complete());
        assert_eq!(r.ranges(&m), vec![(0, 100)]);
    }

    #[test]
    fn bytes_roundtrip_and_reject_damage() {
        let mut r = Residency::empty(70);
        r.insert(0);
        r.insert(69);
        let b = r.to_bytes();
        assert_eq!(Residency::from_bytes(&b, 70).expect("roundtrip"), r);
        assert!(Residency::from_bytes(&b[..8], 70).is_err(), "short map");
        let mut bad = b.clone();
        bad[15] = 0x80; // bit 127, past chunk 69
        assert!(Residency::from_bytes(&bad, 70).is_err());
        assert!(Residency::full(0).is_complete());
    }
}
