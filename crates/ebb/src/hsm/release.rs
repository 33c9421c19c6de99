//! `ebb release`: free a file's blocks once its content is safe in the
//! store. The file keeps its size, mode, owner and times; reads bring the
//! content back through the daemon.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::exclusive::{Exclusive, ExclusiveError};
use super::{identity_of, managed_path};
use crate::catalog::stub_mark::{self, StubMark};
use crate::catalog::{Catalog, Residency, StatSnap};
use crate::daemon::control;
use crate::store::Store;
use crate::sys::file::{punch_hole, set_mtime};
use crate::tree::Tree;

/// What releasing one file did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReleaseOutcome {
    /// `false` when nothing of it was resident.
    pub released: bool,
    pub size: u64,
    /// Bytes freed on disk (the resident part of the archived version).
    pub freed_bytes: u64,
}

/// Release the file at `path`.
///
/// Refused, with nothing changed, unless every chunk of its archived copy
/// reads back from the store and verifies, it has not changed since, no
/// other process has it open, and a daemon (or a keeper) serves the tree.
/// The catalog says "released", durably, before the first byte is punched,
/// so a crash or a power cut in between leaves a file the daemon fills
/// again, never one it believes resident.
pub fn release(
    tree: &Tree,
    catalog: &mut Catalog,
    store: &Store,
    path: &Path,
) -> Result<ReleaseOutcome> {
    let path = managed_path(tree, path)?;
    // Until the stub is made: the tree cannot go out of service meanwhile.
    let _in_service = tree.service_lock(false)?;
    // A running daemon takes in the events queued so far (a write it was
    // told of is recorded before this looks), and drops any ignore mark it
    // put on the file while it was resident, which must go before the file
    // becomes a stub.
    let mut served = false;
    let forget = |file: &std::fs::File| {
        served =
            control::forget(tree, file).context("telling the daemon the file is being released")?;
        Ok(())
    };
    let plain = super::open_checked(tree, &path)?;
    let held = Exclusive::acquire(plain, &path, forget).map_err(|e| match e {
        ExclusiveError::Busy { .. } => anyhow::Error::new(e),
        ExclusiveError::Other(e) => e.context(format!("preparing to release {}", path.display())),
    })?;
    let file = held.file();
    let identity = identity_of(file)?;
    let Some(rec) = catalog.file_by_handle(&identity.handle)? else {
        bail!(
            "{} is not archived; run `ebb archive` on it first (nothing changed)",
            path.display()
        );
    };
    let stat = StatSnap::of(&file.metadata()?);
    if rec.is_modified(&stat) {
        bail!(
            "{} changed since it was archived; run `ebb archive` on it again before releasing (nothing changed)",
            path.display()
        );
    }
    if rec.resident.is_empty() {
        return Ok(ReleaseOutcome {
            released: false,
            size: stat.size,
            freed_bytes: 0,
        });
    }
    // Read back, every chunk, now: the only other copy is about to go.
    if let Err(e) = store.verify_all(&rec.version.manifest) {
        bail!(
            "the archived copy of {} in {} cannot be trusted ({e}); run `ebb archive` on it again (nothing changed)",
            path.display(),
            store.describe()
        );
    }
    if !served {
        // Nobody would answer the stub's first read: the kernel would let
        // it read the holes.
        bail!(
            "nothing serves {0}: {1} would read as zeros once released; start `ebb daemon {0}` first (nothing changed)",
            tree.root().display(),
            path.display()
        );
    }
    tree.note_stubs_made()?;
    // "Released" is durable before the first byte goes: a power cut in
    // between leaves a stub the daemon fills, never one the catalog
    // believes resident. With `filling` set: until the last commit below,
    // the file's ctime is ebb's doing, not a sign of someone's change.
    let empty = Residency::empty(rec.version.manifest.len());
    catalog.durably(|cat| {
        cat.batch(|cat| {
            cat.set_residency(rec.id, &empty, &stat)?;
            cat.set_filling(rec.id)
        })
    })?;
    // Marked as a stub on disk: should its catalog row ever go, the
    // daemon refuses it rather than serve its holes.
    let mark = StubMark {
        tree: tree.config().id.clone(),
        version: rec.version.id,
        hash: rec.version.content_hash.clone(),
    };
    let marked = stub_mark::set(file.as_fd(), &mark).with_context(|| {
        format!(
            "marking {} as a stub (xattr {})",
            path.display(),
            stub_mark::STUB_XATTR
        )
    });
    if let Err(e) = marked.and_then(|()| Ok(punch_hole(file.as_fd(), 0, stat.size)?)) {
        // Nothing was punched: the catalog must not keep saying released,
        // nor the file that it is a stub.
        stub_mark::clear(file.as_fd()).context("unmarking the file after a failed punch")?;
        catalog
            .set_residency_durably(rec.id, &rec.resident, &StatSnap::of(&file.metadata()?))
            .context("recording the file resident again after a failed punch")?;
        return Err(e).with_context(|| {
            format!(
                "punching out the content of {} (nothing changed)",
                path.display()
            )
        });
    }
    set_mtime(file.as_fd(), stat.mtime).context("restoring the mtime after punching")?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    catalog.set_residency_durably(rec.id, &empty, &StatSnap::of(&file.metadata()?))?;
    Ok(ReleaseOutcome {
        released: true,
        size: stat.size,
        freed_bytes: rec.resident_bytes(),
    })
}
