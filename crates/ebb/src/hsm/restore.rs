//! `ebb restore`: bring all of a released or partial file back on disk.
//!
//! With a daemon serving the tree, restore simply touches one byte of each
//! missing chunk: the daemon fills the chunk exactly as for any reader, so
//! there is one writer of stub content and no race with programs using the
//! file. Without a daemon, restore fills the chunks itself, holding the file
//! exclusively as release does.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use super::exclusive::{Exclusive, ExclusiveError};
use super::{identity_of, managed_path, Progress};
use crate::catalog::stub_mark;
use crate::catalog::{Catalog, FileRecord, StatSnap};
use crate::daemon::control;
use crate::store::{chunks_overlapping, Store};
use crate::sys::file::{seek_data, seek_hole, set_mtime, write_within_size};
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
    let file = super::open_checked(tree, &path)?;
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
        // With no keeper either, nothing held the file's writers off.
        let unseen = !control::is_kept(tree)?;
        fill_exclusively(tree, catalog, store, &path, unseen, progress)?;
        // A stopped daemon's keeper has it marked as a stub still.
        let file = super::open_managed(tree, &path)?;
        control::resident_in_kept_group(tree, &file)?;
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
    tree: &Tree,
    catalog: &mut Catalog,
    store: &Store,
    path: &Path,
    unseen: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let plain = super::open_managed(tree, path)?;
    let held = Exclusive::acquire(plain, path, |_| Ok(())).map_err(|e| match e {
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
    fill_range(
        catalog,
        store,
        file,
        &mut rec,
        0..u64::MAX,
        unseen,
        progress,
    )
    .with_context(|| format!("filling {}", path.display()))
}

/// Fill the chunks of `rec` that cover the byte range `bytes` and are
/// not resident, through `file` (an fd that raises no events, held so that
/// nobody else writes meanwhile), put the mtime back and record it all,
/// durably: the caller's next write may land in what was filled. `unseen`:
/// nothing held the file's writers off since the catalog's record (see
/// [`Catalog::note_changes`]).
pub fn fill_range(
    catalog: &mut Catalog,
    store: &Store,
    file: &File,
    rec: &mut FileRecord,
    bytes: std::ops::Range<u64>,
    unseen: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let before = StatSnap::of(&file.metadata()?);
    catalog.note_changes(rec, &before, unseen)?;
    let chunks = chunks_overlapping(&rec.version.manifest, bytes.start, bytes.end);
    let missing: Vec<usize> = rec.resident.missing_in(chunks).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !rec.filling {
        // Before the first write moves the times (see `FileRecord::filling`).
        catalog.set_filling_durably(rec.id)?;
        rec.filling = true;
    }
    for i in missing {
        let chunk = rec.version.manifest[i];
        let data = store
            .get_chunk(&chunk.hash, chunk.len)
            .with_context(|| format!("fetching chunk {i}"))?;
        fill_chunk(file, chunk.offset, &data, rec.valid_len)
            .with_context(|| format!("writing chunk {i}"))?;
        rec.resident.insert(i);
        progress.advance(u64::from(chunk.len));
    }
    set_mtime(file.as_fd(), before.mtime).context("restoring the mtime")?;
    if rec.resident.is_complete() {
        // No longer a stub; before the stat, as the ctime moves.
        stub_mark::clear(file.as_fd()).context("unmarking the restored file")?;
    }
    // Durable before it is recorded resident (see `daemon::fill`).
    file.sync_all().context("syncing the filled chunks")?;
    catalog.set_residency_durably(rec.id, &rec.resident, &StatSnap::of(&file.metadata()?))?;
    rec.filling &= !rec.resident.is_settled();
    Ok(())
}

/// Write an archived chunk's bytes at `offset`, but only below `limit`
/// (the file may have been cut since it was archived). Whatever is in the
/// chunk's range is ebb's and is written over: only ebb writes a range that
/// is not resident (every other write to a stub waits until its range is
/// filled, and a change made while nothing served the file stops all
/// filling, `valid_len` 0), so what is there is a hole, a neighbouring
/// chunk's fill sharing a block, or an earlier fill of this chunk that was
/// not recorded. Zeros are never taken for holes, nor written into them:
/// a sparse file stays sparse.
///
/// The file never grows: one cut while this runs (a truncate, or an open
/// with `O_TRUNC`, which raises no event that could wait for the fill)
/// ends the fill at its new end, where `pwrite` would write the cut-off
/// bytes back.
pub fn fill_chunk(file: &File, offset: u64, data: &[u8], limit: u64) -> io::Result<()> {
    let end = offset.saturating_add(data.len() as u64).min(limit);
    let mut pos = offset;
    while pos < end {
        let data_at = seek_data(file.as_fd(), pos)?.unwrap_or(end).min(end);
        if !write_unless_zero(file, pos, &data[range_in(offset, pos, data_at)])? || data_at == end {
            break;
        }
        let hole_at = seek_hole(file.as_fd(), data_at)?.unwrap_or(end).min(end);
        if !write_inside(file, data_at, &data[range_in(offset, data_at, hole_at)])? {
            break;
        }
        pos = hole_at;
    }
    Ok(())
}

fn range_in(base: u64, start: u64, end: u64) -> std::ops::Range<usize> {
    // Both lie within one chunk of at most CHUNK_MAX bytes after `base`.
    (start - base) as usize..(end - base) as usize
}

/// [`write_inside`], but all-zero `bytes` are not written (they stay a hole).
fn write_unless_zero(file: &File, offset: u64, bytes: &[u8]) -> io::Result<bool> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(true);
    }
    write_inside(file, offset, bytes)
}

/// Write `bytes` at `offset`, short of the file's end; whether all of them
/// fitted (`false`: the file ends first, it was cut).
fn write_inside(file: &File, offset: u64, bytes: &[u8]) -> io::Result<bool> {
    Ok(write_within_size(file.as_fd(), offset, bytes)? == bytes.len())
}
