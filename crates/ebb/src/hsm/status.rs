//! `ebb status`: where a file's content is.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{identity_of, managed_path};
use crate::catalog::{Catalog, StatSnap, State};
use crate::daemon::control;
use crate::tree::Tree;

/// One line of `ebb status --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileStatus {
    pub path: PathBuf,
    pub state: State,
    pub size: u64,
    /// Bytes of the content that are on disk.
    pub resident_bytes: u64,
    /// Whether the catalog holds an archived version of the file.
    pub managed: bool,
    /// Whether the content may differ from the archived version (a
    /// modified file cannot be released until archived again).
    pub modified: bool,
    /// Resident byte ranges `[start, end)` of a partial file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_ranges: Option<Vec<(u64, u64)>>,
}

/// The status of the file at `path`.
pub fn status(tree: &Tree, catalog: &Catalog, path: &Path) -> Result<FileStatus> {
    let path = managed_path(tree, path)?;
    let file = super::open_checked(tree, &path)?;
    let identity = identity_of(&file)?;
    // The record first, then the file: a fill recorded in between leaves
    // a newer file beside an older record, which still agrees with it.
    let record = catalog.file_by_handle(&identity.handle)?;
    let mut stat = StatSnap::of(&file.metadata()?);
    if let Some(rec) = &record {
        // Different, on a file the daemon may be filling right now: ask
        // it for the file as it is between two fills.
        if !rec.resident.is_complete() && rec.is_modified(&stat) && !rec.modified {
            if let Some(settled) = control::stat_between_fills(tree, &file)? {
                stat = settled;
            }
        }
    }
    Ok(match record {
        None => FileStatus {
            path: path.to_path_buf(),
            state: State::Resident,
            size: stat.size,
            resident_bytes: stat.size,
            managed: false,
            modified: false,
            resident_ranges: None,
        },
        Some(rec) => {
            let state = rec.state(&stat);
            let resident_bytes = if state == State::Resident {
                stat.size
            } else {
                rec.resident_bytes().min(stat.size)
            };
            FileStatus {
                path: path.to_path_buf(),
                state,
                size: stat.size,
                resident_bytes,
                managed: true,
                modified: rec.is_modified(&stat),
                resident_ranges: (state == State::Partial)
                    .then(|| rec.resident.ranges(&rec.version.manifest)),
            }
        }
    })
}
