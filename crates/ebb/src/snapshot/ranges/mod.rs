//! Snapshots of big files and what changed since one. So far: the changed
//! ranges between a file and a reflink clone of it, from the two extent
//! maps alone (no file data is read).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};

use crate::sys::extents::{fiemap, Extent, EXTENT_UNWRITTEN};

/// A byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// The ranges where `file` may differ from `base`, a clone (snapshot) of an
/// earlier state of it, computed from the extent maps: a stretch is
/// unchanged only where both map it to the same physical bytes, or where
/// both are holes (or unwritten, which read as zeros too). Everything else
/// is reported, so no change is ever left out; exact to the block.
pub fn changed_ranges(base: &Path, file: &Path) -> Result<Vec<Range>> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let (b, f) = (open(base)?, open(file)?);
    let (b_meta, f_meta) = (b.metadata()?, f.metadata()?);
    use std::os::unix::fs::MetadataExt;
    if b_meta.dev() != f_meta.dev() {
        anyhow::bail!(
            "{} and {} are on different filesystems: changed ranges compare where their blocks are, so the base must be a reflink clone (snapshot) on the file's filesystem",
            base.display(),
            file.display()
        );
    }
    let (b_len, f_len) = (b_meta.len(), f_meta.len());
    let map = |file: &File, path: &Path| {
        fiemap(file.as_fd(), 0, u64::MAX).with_context(|| {
            format!(
                "reading the extent map of {} (FS_IOC_FIEMAP; the filesystem must support it)",
                path.display()
            )
        })
    };
    let (b_map, f_map) = (map(&b, base)?, map(&f, file)?);
    Ok(diff_maps(&b_map, b_len, &f_map, f_len))
}

/// What one offset of a file is backed by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// Reads as zeros: a hole or an unwritten extent.
    Zeros,
    /// These device bytes, from this device offset on.
    Blocks(u64),
}

/// The ranges of `[0, max(b_len, f_len))` where the two maps differ.
fn diff_maps(b_map: &[Extent], b_len: u64, f_map: &[Extent], f_len: u64) -> Vec<Range> {
    let end = b_len.max(f_len);
    // Every place either map changes what backs the file.
    let mut cuts: Vec<u64> = vec![0, b_len.min(end), f_len.min(end), end];
    for e in b_map.iter().chain(f_map) {
        cuts.push(e.logical.min(end));
        cuts.push(e.end().min(end));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Range> = Vec::new();
    for w in cuts.windows(2) {
        let (start, stop) = (w[0], w[1]);
        if start >= stop {
            continue;
        }
        let same = start < b_len.min(f_len)
            && stop <= b_len.min(f_len)
            && backing(b_map, start) == backing(f_map, start);
        if same {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == start => last.end = stop,
            _ => out.push(Range { start, end: stop }),
        }
    }
    out
}

/// What backs offset `at` (a stretch between cuts is uniform).
fn backing(map: &[Extent], at: u64) -> Backing {
    let i = map.partition_point(|e| e.end() <= at);
    match map.get(i).filter(|e| e.logical <= at) {
        Some(e) if e.flags & EXTENT_UNWRITTEN == 0 => {
            Backing::Blocks(e.physical + (at - e.logical))
        }
        _ => Backing::Zeros,
    }
}

#[cfg(test)]
mod tests;
