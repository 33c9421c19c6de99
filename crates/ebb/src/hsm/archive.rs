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
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let identity = identity_of(&file)?;
    let before = StatSnap::of(&file.metadata()?);
    if let Some(rec) = catalog.file_by_handle(&identity.handle)? {
        if !rec.is_modified(&before) {
            progress.advance(before.size);
            return Ok(ArchiveOutcome {
                archived: false,
                size: before.size,
                chunks: rec.version.manifest.len(),
                new_chunks: 0,
                new_bytes: 0,
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

    let mut whole = blake3::Hasher::new();
    let (size, stored) = store_chunks(store, progress, |each| {
        for_each_chunk(BufReader::with_capacity(1 << 20, &file), |offset, data| {
            whole.update(data);
            each(offset, data.to_vec())
        })
    })
    .with_context(|| format!("reading {}", path.display()))?;
    let manifest: Vec<ChunkRef> = stored.iter().map(|(c, _)| *c).collect();
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
    let content_hash = whole.finalize().to_hex().to_string();
    catalog.record_archive(&identity, &path, &before, &content_hash, &manifest)?;
    Ok(ArchiveOutcome {
        archived: true,
        size,
        chunks: manifest.len(),
        new_chunks: new_chunks.len(),
        new_bytes: new_chunks.iter().map(|(_, len)| u64::from(*len)).sum(),
    })
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
