//! `ebb archive`: copy a file's content into the store, chunked, hashed,
//! compressed and verified, and record the version in the catalog.

use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{identity_of, managed_path, restore, Progress};
use crate::catalog::{Catalog, StatSnap};
use crate::store::{for_each_chunk, ChunkHash, ChunkRef, Store};
use crate::tree::Tree;

/// What archiving one file did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchiveOutcome {
    /// `false` when the catalog already held this exact content.
    pub archived: bool,
    pub size: u64,
    pub chunks: usize,
    /// Chunks the store did not hold yet, and their (uncompressed) bytes.
    pub new_chunks: usize,
    pub new_bytes: u64,
    /// Bytes of the file read: all of it, or for a tracked file with a
    /// base, only the changed ranges widened to chunk boundaries.
    pub bytes_read: u64,
    /// Whether only changed ranges were read.
    pub incremental: bool,
}

/// Archive the file at `path`. The version is recorded only if the file did
/// not change while it was read (size, mtime and ctime before and after).
pub fn archive(
    tree: &Tree,
    catalog: &mut Catalog,
    store: &Store,
    path: &Path,
    progress: &dyn Progress,
) -> Result<ArchiveOutcome> {
    let path = managed_path(tree, path)?;
    let file = super::open_checked(tree, &path)?;
    let identity = identity_of(&file)?;
    // Written back first: a page dirtied through a shared mapping is then
    // clean and write-protected, so a later write through the mapping
    // faults and moves mtime and ctime (a write to a page still dirty would
    // change the content and neither time).
    file.sync_data()
        .with_context(|| format!("writing back {} before reading it", path.display()))?;
    let before = StatSnap::of(&file.metadata()?);
    let previous = catalog.file_by_handle(&identity.handle)?;
    if let Some(rec) = &previous {
        if !rec.is_modified(&before) {
            progress.advance(before.size);
            return Ok(ArchiveOutcome {
                archived: false,
                size: before.size,
                chunks: rec.version.manifest.len(),
                new_chunks: 0,
                new_bytes: 0,
                bytes_read: 0,
                incremental: false,
            });
        }
        if !rec.resident.is_complete() {
            // Modified after a release: the on-disk bytes are only part of
            // the file. Bring the rest back first, then archive the whole.
            drop(file);
            restore(tree, catalog, store, &path, &super::NoProgress)
                .context("bringing back the rest of a modified file before archiving it")?;
            return archive(tree, catalog, store, &path, progress);
        }
    }

    let tracking = catalog.tracking(&identity.handle)?;
    let base = tracking.as_ref().and_then(|t| {
        let rec = previous.as_ref()?;
        (t.base_version_id == Some(rec.version.id)).then_some(())?;
        Some((t.base.clone()?, rec.version.manifest.clone()))
    });
    let incremental = base.is_some();
    let (manifest, stored, content_hash, bytes_read, size) = match base {
        Some((base, old)) => {
            let changed = crate::snapshot::changed_ranges(&base, &path)?;
            let (spans, reused) = spans_to_read(&old, &changed, before.size);
            let bytes_read = spans.iter().map(|s| s.end - s.start).sum();
            progress.advance(before.size - bytes_read);
            let (_, stored) = store_chunks(store, progress, |each| {
                for span in &spans {
                    read_span(&file, span.clone(), each)?;
                }
                Ok(bytes_read)
            })
            .with_context(|| format!("reading the changed ranges of {}", path.display()))?;
            let mut manifest: Vec<ChunkRef> = reused;
            manifest.extend(stored.iter().map(|(c, _)| *c));
            manifest.sort_by_key(|c| c.offset);
            let size = manifest.last().map_or(0, |c| c.end());
            // The whole content was not read: the version is named by its
            // chunks instead.
            let mut by_chunks = blake3::Hasher::new();
            for c in &manifest {
                by_chunks.update(&c.hash.0);
                by_chunks.update(&c.len.to_le_bytes());
            }
            let hash = format!("chunks:{}", by_chunks.finalize().to_hex());
            (manifest, stored, hash, bytes_read, size)
        }
        None => {
            let mut whole = blake3::Hasher::new();
            let (size, stored) = store_chunks(store, progress, |each| {
                for_each_chunk(BufReader::with_capacity(1 << 20, &file), |offset, data| {
                    whole.update(data);
                    each(offset, data.to_vec())
                })
            })
            .with_context(|| format!("reading {}", path.display()))?;
            let manifest: Vec<ChunkRef> = stored.iter().map(|(c, _)| *c).collect();
            let hash = whole.finalize().to_hex().to_string();
            (manifest, stored, hash, size, size)
        }
    };
    let new_chunks: Vec<(ChunkHash, u32)> = stored
        .iter()
        .filter(|(_, fresh)| *fresh)
        .map(|(c, _)| (c.hash, c.len))
        .collect();

    let after = StatSnap::of(&file.metadata()?);
    if after != before || size != before.size {
        bail!(
            "{} changed while it was being archived; nothing was recorded (run again once it is quiet)",
            path.display()
        );
    }
    store.sync()?;
    for (hash, len) in &new_chunks {
        store
            .get_chunk(hash, *len)
            .with_context(|| format!("verifying chunk {hash} of {}", path.display()))?;
    }
    catalog.record_archive(&identity, &path, &before, &content_hash, &manifest)?;
    if tracking.is_some() {
        // The base moves to what was just archived: the next archive reads
        // only what changes from here.
        let version = catalog
            .file_by_handle(&identity.handle)?
            .map(|r| r.version.id);
        if let Err(e) = crate::snapshot::track::refresh_base(
            tree,
            catalog,
            &identity.handle,
            &path,
            &before,
            version,
        ) {
            tracing::warn!(
                "{}: no new tracking base ({e:#}); the next archive reads it all",
                path.display()
            );
            catalog.set_tracking_base(&identity.handle, None, None)?;
        }
    }
    Ok(ArchiveOutcome {
        archived: true,
        size,
        chunks: manifest.len(),
        new_chunks: new_chunks.len(),
        new_bytes: new_chunks.iter().map(|(_, len)| u64::from(*len)).sum(),
        bytes_read,
        incremental,
    })
}

/// For an archive that starts from `old` (the manifest of the base's
/// content) and the ranges `changed` since: the spans of the file to read
/// (the old chunks any change touches, merged, plus anything past the old
/// end) and the old chunks to keep as they are.
fn spans_to_read(
    old: &[ChunkRef],
    changed: &[crate::snapshot::Range],
    size: u64,
) -> (Vec<std::ops::Range<u64>>, Vec<ChunkRef>) {
    let touched = |c: &ChunkRef| {
        c.end() > size
            || changed
                .iter()
                .any(|r| r.start < c.end() && r.end > c.offset)
    };
    let mut spans: Vec<std::ops::Range<u64>> = Vec::new();
    let mut reused = Vec::new();
    for c in old {
        if !touched(c) {
            reused.push(*c);
            continue;
        }
        let span = c.offset.min(size)..c.end().min(size);
        match spans.last_mut() {
            Some(last) if last.end == span.start => last.end = span.end,
            _ => spans.push(span),
        }
    }
    let old_end = old.last().map_or(0, |c| c.end());
    if size > old_end {
        match spans.last_mut() {
            Some(last) if last.end == old_end => last.end = size,
            _ => spans.push(old_end..size),
        }
    }
    spans.retain(|s| s.start < s.end);
    (spans, reused)
}

/// Chunk `span` of `file` (content-defined, as a whole file is), handing
/// each chunk to `each` with its offset in the file.
fn read_span(
    file: &std::fs::File,
    span: std::ops::Range<u64>,
    each: &mut dyn FnMut(u64, Vec<u8>) -> Result<()>,
) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = file;
    reader.seek(SeekFrom::Start(span.start))?;
    let limited = BufReader::with_capacity(1 << 20, reader.take(span.end - span.start));
    let read = for_each_chunk(limited, |offset, data| {
        each(span.start + offset, data.to_vec())
    })?;
    if read != span.end - span.start {
        bail!(
            "the file ended early at {} (it was being cut?)",
            span.start + read
        );
    }
    Ok(())
}

/// Chunks compressed and written at once: writing a chunk ends in an fsync,
/// and overlapping those is most of the speed of an archive.
const STORE_THREADS: usize = 4;

/// Run `chunk_all`, which hands each chunk (offset, bytes) to the closure
/// it is given, in order, and put the chunks into the store on a few
/// threads. Returns what `chunk_all` returned and, in file order, each
/// chunk's reference and whether the store did not hold it yet.
fn store_chunks(
    store: &Store,
    progress: &dyn Progress,
    chunk_all: impl FnOnce(&mut dyn FnMut(u64, Vec<u8>) -> Result<()>) -> Result<u64>,
) -> Result<(u64, Vec<(ChunkRef, bool)>)> {
    let (work_tx, work_rx) = crossbeam_channel::bounded::<(usize, u64, Vec<u8>)>(STORE_THREADS * 2);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        for _ in 0..STORE_THREADS {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            s.spawn(move || {
                for (index, offset, data) in work_rx {
                    let stored = store
                        .put_chunk(&data)
                        .map_err(anyhow::Error::from)
                        .and_then(|(hash, fresh)| {
                            let len = u32::try_from(data.len())?;
                            progress.advance(data.len() as u64);
                            Ok((ChunkRef { offset, len, hash }, fresh))
                        });
                    if done_tx.send((index, stored)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut next = 0usize;
        let size = chunk_all(&mut |offset, data| {
            work_tx
                .send((next, offset, data))
                .map_err(|_| anyhow::anyhow!("the store threads stopped"))?;
            next += 1;
            Ok(())
        });
        drop(work_tx);
        let mut stored: Vec<(usize, Result<(ChunkRef, bool)>)> = done_rx.iter().collect();
        let size = size?;
        stored.sort_by_key(|(index, _)| *index);
        let stored = stored
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Result<Vec<_>>>()?;
        if stored.len() != next {
            bail!(
                "{} of {next} chunks came back from the store threads",
                stored.len()
            );
        }
        Ok((size, stored))
    })
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::snapshot::Range;

    fn chunk(offset: u64, len: u32) -> ChunkRef {
        ChunkRef {
            offset,
            len,
            hash: ChunkHash([offset as u8; 32]),
        }
    }

    #[test]
    fn only_the_chunks_a_change_touches_are_read_again() {
        let old = vec![chunk(0, 10), chunk(10, 10), chunk(20, 10), chunk(30, 10)];
        let (spans, reused) = spans_to_read(&old, &[Range { start: 12, end: 22 }], 40);
        assert_eq!(spans, vec![10..30]);
        assert_eq!(
            reused.iter().map(|c| c.offset).collect::<Vec<_>>(),
            vec![0, 30]
        );
        // Grown: the new tail is read; cut: the chunk at the new end too.
        let (spans, reused) = spans_to_read(&old, &[Range { start: 40, end: 50 }], 50);
        assert_eq!((spans, reused.len()), (vec![40..50], 4));
        let (spans, reused) = spans_to_read(&old, &[Range { start: 25, end: 40 }], 25);
        assert_eq!((spans, reused.len()), (vec![20..25], 2));
        // Nothing changed: nothing read.
        assert_eq!(spans_to_read(&old, &[], 40), (vec![], old.clone()));
        assert_eq!(spans_to_read(&[], &[], 7).0, vec![0..7]);
    }
}
