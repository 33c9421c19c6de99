//! `ebb archive`: copy a file's content into the store, chunked, hashed,
//! compressed and verified, and record the version in the catalog.

use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{identity_of, managed_path, restore, Progress};
use crate::catalog::{Catalog, StatSnap};
use crate::store::{for_each_chunk, ChunkRef, Store};
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

    let mut manifest = Vec::new();
    let mut new_chunks = Vec::new();
    let mut whole = blake3::Hasher::new();
    let size = for_each_chunk(BufReader::with_capacity(1 << 20, &file), |offset, data| {
        whole.update(data);
        let (hash, fresh) = store.put_chunk(data)?;
        let len = u32::try_from(data.len())?;
        if fresh {
            new_chunks.push((hash, len));
        }
        manifest.push(ChunkRef { offset, len, hash });
        progress.advance(data.len() as u64);
        Ok(())
    })
    .with_context(|| format!("reading {}", path.display()))?;

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
