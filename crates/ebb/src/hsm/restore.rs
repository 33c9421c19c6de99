//! `ebb restore`: bring all of a released or partial file back on disk.
//!
//! With a daemon serving the tree, restore simply touches one byte of each
//! missing chunk: the daemon fills the chunk exactly as for any reader, so
//! there is one writer of stub content and no race with programs using the
//! file. Without a daemon, restore fills the chunks itself, holding the file
//! exclusively as release does.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use super::exclusive::{Exclusive, ExclusiveError};
use super::{identity_of, managed_path, Progress};
use crate::catalog::{Catalog, FileRecord, StatSnap};
use crate::daemon::control;
use crate::store::Store;
use crate::sys::file::set_mtime;
use crate::tree::Tree;

/// What restoring one file did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreOutcome {
    /// `false` when it was all on disk already.
    pub restored: bool,
    pub size: u64,
    /// Bytes brought back from the store.
    pub fetched_bytes: u64,
}

/// How many chunks are asked for at once when a daemon fills them.
const PARALLEL_TOUCHES: usize = 4;

/// Bring every byte of the file at `path` back on disk.
pub fn restore(
    tree: &Tree,
    catalog: &mut Catalog,
    store: &Store,
    path: &Path,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let path = managed_path(tree, path)?;
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let identity = identity_of(&file)?;
    let rec = match catalog.file_by_handle(&identity.handle)? {
        Some(rec) if !rec.resident.is_complete() => rec,
        _ => {
            progress.advance(size);
            return Ok(RestoreOutcome {
                restored: false,
                size,
                fetched_bytes: 0,
            });
        }
    };
    let missing = missing_bytes(&rec);
    progress.advance(size.saturating_sub(missing));
    if let Some(pid) = control::daemon_pid(tree)? {
        touch_missing_chunks(&file, &rec, progress).with_context(|| {
            format!(
                "the daemon (pid {pid}) could not bring back {}; see {}",
                path.display(),
                tree.log_path().display()
            )
        })?;
        let after = catalog
            .file_by_id(rec.id)?
            .context("the file left the catalog while it was restored")?;
        if !after.resident.is_complete() {
            bail!(
                "{} is still not all on disk after the daemon filled it; see {}",
                path.display(),
                tree.log_path().display()
            );
        }
    } else {
        drop(file);
        fill_exclusively(catalog, store, &path, progress)?;
    }
    Ok(RestoreOutcome {
        restored: true,
        size,
        fetched_bytes: missing,
    })
}

fn missing_bytes(rec: &FileRecord) -> u64 {
    let manifest = &rec.version.manifest;
    manifest.iter().map(|c| u64::from(c.len)).sum::<u64>() - rec.resident.bytes(manifest)
}

/// Read one byte of every missing chunk, a few at a time, so the daemon
/// fills them.
fn touch_missing_chunks(
    file: &std::fs::File,
    rec: &FileRecord,
    progress: &dyn Progress,
) -> Result<()> {
    let missing: Vec<usize> = rec.resident.missing_in(0..rec.resident.len()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PARALLEL_TOUCHES)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut byte = [0u8; 1];
                    loop {
                        let Some(&i) = missing.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        let chunk = rec.version.manifest[i];
                        file.read_at(&mut byte, chunk.offset)
                            .with_context(|| format!("reading at offset {}", chunk.offset))?;
                        progress.advance(u64::from(chunk.len));
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| bail!("a restore thread panicked"))
        })
    })
}

/// Fill the missing chunks with no daemon running, holding the file so no
/// other process can see or change it half-filled.
fn fill_exclusively(
    catalog: &mut Catalog,
    store: &Store,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let held = Exclusive::acquire(path).map_err(|e| match e {
        ExclusiveError::Busy { .. } => anyhow::anyhow!(
            "{e}; or start `ebb daemon` for the tree, which restores files that are in use"
        ),
        ExclusiveError::Other(e) => e,
    })?;
    let file = held.file();
    let identity = identity_of(file)?;
    let mut rec = catalog
        .file_by_handle(&identity.handle)?
        .context("the file left the catalog while it was restored")?;
    let before = StatSnap::of(&file.metadata()?);
    let missing: Vec<usize> = rec.resident.missing_in(0..rec.resident.len()).collect();
    for i in missing {
        let chunk = rec.version.manifest[i];
        let data = store
            .get_chunk(&chunk.hash, chunk.len)
            .with_context(|| format!("fetching chunk {i} of {}", path.display()))?;
        write_chunk(file, chunk.offset, &data, before.size)
            .with_context(|| format!("writing chunk {i} of {}", path.display()))?;
        rec.resident.insert(i);
        progress.advance(u64::from(chunk.len));
    }
    set_mtime(file.as_fd(), before.mtime).context("restoring the mtime")?;
    file.sync_all()?;
    catalog.set_residency(rec.id, &rec.resident, &StatSnap::of(&file.metadata()?))?;
    Ok(())
}

/// Write a chunk's bytes at `offset`, never past `size` (the file may have
/// been truncated since it was archived), and not at all where they are
/// zeros: the released range already reads as zeros, and leaving it a hole
/// keeps a sparse file sparse.
pub fn write_chunk(
    file: &std::fs::File,
    offset: u64,
    data: &[u8],
    size: u64,
) -> std::io::Result<()> {
    let room = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
    let data = &data[..data.len().min(room)];
    if data.iter().all(|&b| b == 0) {
        return Ok(());
    }
    file.write_all_at(data, offset)
}
