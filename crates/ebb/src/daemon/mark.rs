//! The filesystem's pre-content mark, placed only once the tree has
//! something to serve: archived files at start, a release, a snapshot.
//! While it is in place, every new file's first write waits for the
//! daemon's answer; a tree that tiers nothing (one that only records its
//! changes) should not pay that.
//!
//! The mark lives in the fanotify group, which outlives a daemon (the
//! keeper holds it), so whether and since when it is in place is written
//! beside the keeper's socket: `<tree id>.marked` in the runtime directory
//! ([`crate::rundir`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::WATCHED;
use crate::sys::fanotify::Group;
use crate::tree::Tree;

pub struct FsMark {
    root: PathBuf,
    record: PathBuf,
    /// When it went in (clock ticks since boot, see
    /// [`crate::snapshot::users::now_ticks`]); `None` while it is not.
    since: Option<u64>,
}

impl FsMark {
    /// The mark as the group was left: a new group has none (and a record
    /// from an earlier one is stale); a kept one has what its record says.
    pub fn recall(tree: &Tree, fresh_group: bool) -> FsMark {
        let record = record_path(&tree.config().id);
        let since = if fresh_group {
            let _ = std::fs::remove_file(&record);
            None
        } else {
            read_record(&record)
        };
        FsMark {
            root: tree.root().to_path_buf(),
            record,
            since,
        }
    }

    /// Put the mark in place (if it is not yet); returns since when.
    pub fn place(&mut self, group: &Group) -> Result<u64> {
        if let Some(since) = self.since {
            return Ok(since);
        }
        let since = place(group, &self.root, &self.record)?;
        self.since = Some(since);
        Ok(since)
    }

    /// Whether the mark is in place.
    pub fn is_placed(&self) -> bool {
        self.since.is_some()
    }

    /// Take the mark away (a clean stop): no new events from here on.
    pub fn lift(&mut self, group: &Group) {
        if self.since.take().is_none() {
            return;
        }
        if let Err(e) = group.unmark_filesystem(&self.root, WATCHED) {
            tracing::warn!("removing the filesystem mark: {e}");
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Mark the filesystem of `root` in `group` (a daemon's, or the keeper's
/// while no daemon runs) and record since when; an earlier record stands.
pub fn place(group: &Group, root: &Path, record: &Path) -> Result<u64> {
    group.mark_filesystem(root, WATCHED).with_context(|| {
        format!(
            "marking the filesystem of {} for pre-content events (it must support them: XFS, btrfs, ext4)",
            root.display()
        )
    })?;
    if let Some(since) = read_record(record) {
        return Ok(since);
    }
    // The next tick: a process started in this one may predate the mark.
    let since = crate::snapshot::users::now_ticks()? + 1;
    crate::tree::write_atomically(record, since.to_string().as_bytes())
        .with_context(|| format!("recording the mark in {}", record.display()))?;
    Ok(since)
}

pub fn record_path(tree_id: &str) -> PathBuf {
    crate::rundir::RunDir::from_env().mark_record(tree_id)
}

fn read_record(record: &Path) -> Option<u64> {
    std::fs::read_to_string(record).ok()?.trim().parse().ok()
}
