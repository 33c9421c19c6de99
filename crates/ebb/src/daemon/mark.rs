//! The filesystem's pre-content mark.
//!
//! From the daemon's start the filesystem is *armed*: an ignore-only
//! filesystem mark raises no event, yet every file opened from then on can
//! be intercepted once the real mark goes in (whether a file raises
//! pre-content events is decided when it is opened; see DESIGN.md). The
//! real mark goes in once the tree has something to serve (archived files
//! at start, a release, a snapshot): while it is in place, every new file's
//! first write waits for the daemon's answer, which a tree that only
//! records its changes should not pay.
//!
//! Both live in the fanotify group, which outlives a daemon (the keeper
//! holds it), and in the kernel, which drops them silently when the
//! filesystem is unmounted. So a starting daemon asks the kernel what the
//! group marks (`/proc/self/fdinfo`) and puts back what is missing on the
//! filesystem it serves now; since when files can be intercepted is
//! written beside the keeper's socket: `<tree id>.marked` in the runtime
//! directory ([`crate::rundir`]), as `<since> armed|marked`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::WATCHED;
use crate::sys::fanotify::{Group, FAN_PRE_ACCESS};
use crate::tree::Tree;

pub struct FsMark {
    root: PathBuf,
    record: PathBuf,
    state: State,
}

/// What the group holds on the tree's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing (a new group, or a mark dropped by an unmount).
    None,
    /// The ignore-only mark, since this tick (clock ticks since boot, see
    /// [`crate::snapshot::users::now_ticks`]).
    Armed(u64),
    /// The real mark; files opened since this tick are covered.
    Marked(u64),
}

impl FsMark {
    /// Arm the filesystem of `tree` in `group`, or keep what the group
    /// already has on it: a kept group's record is believed only as far as
    /// the kernel still lists its mark on the filesystem mounted now.
    /// `serve`: the tree has something to serve, so the real mark goes in
    /// now, never an arming mark first: an arming mark's ignore mask would
    /// silence the inode marks a paused daemon put on its stubs.
    pub fn arm(group: &Group, tree: &Tree, fresh_group: bool, serve: bool) -> Result<FsMark> {
        let root = tree.root().to_path_buf();
        let record = record_path(&tree.config().id);
        let recorded = if fresh_group {
            let _ = std::fs::remove_file(&record);
            State::None
        } else {
            read_record(&record)
        };
        let mut mark = FsMark {
            root,
            record,
            state: State::None,
        };
        let listed = mark.listed(group)?;
        match (listed, recorded) {
            // The kernel has the real mark: trust it over the record (a
            // daemon may have died between marking and writing the record).
            // Again: an ebb of before may have marked fewer events.
            (Listed::Marked, _) => {
                group
                    .mark_filesystem(&mark.root, WATCHED)
                    .with_context(|| mark.unsupported())?;
                let since = match recorded {
                    State::Marked(since) | State::Armed(since) => since,
                    State::None => crate::snapshot::users::now_ticks()? + 1,
                };
                mark.state = State::Marked(since);
                mark.write_record()?;
            }
            (Listed::Armed, State::Armed(since)) => mark.state = State::Armed(since),
            (_, State::Marked(_)) => {
                // Lost with the filesystem it was on: its stubs must be
                // served, so the real mark goes back at once.
                tracing::warn!(
                    "the kept group no longer marks the filesystem of {} (unmounted and mounted again?); marking it anew: files opened before now cannot be intercepted",
                    mark.root.display()
                );
                mark.place(group)?;
            }
            // Placed below, never armed first.
            _ if serve => {}
            _ => mark.arm_now(group)?,
        }
        if serve {
            mark.place(group)?;
        }
        Ok(mark)
    }

    /// In a kept `group` (no daemon runs), a stub was just marked on its
    /// own: an arming mark's ignore mask would silence that mark, so it
    /// goes (and its record with it). A real mark stays.
    pub fn disarm_kept(group: &Group, tree: &Tree) -> Result<()> {
        let mark = FsMark {
            root: tree.root().to_path_buf(),
            record: record_path(&tree.config().id),
            state: State::None,
        };
        if let Listed::Armed = mark.listed(group)? {
            group
                .disarm_filesystem(&mark.root, FAN_PRE_ACCESS)
                .context("lifting the arming mark of the kept group")?;
            let _ = std::fs::remove_file(&mark.record);
        }
        Ok(())
    }

    fn arm_now(&mut self, group: &Group) -> Result<()> {
        group
            .arm_filesystem(&self.root, FAN_PRE_ACCESS)
            .with_context(|| self.unsupported())?;
        let since = crate::snapshot::users::now_ticks()? + 1;
        self.state = State::Armed(since);
        self.write_record()
    }

    /// What the kernel lists for the filesystem of the root.
    fn listed(&self, group: &Group) -> Result<Listed> {
        let dev = std::fs::metadata(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?
            .dev();
        let marks = group
            .filesystem_marks()
            .context("reading the group's marks")?;
        let Some(m) = marks.iter().find(|m| m.is_of(dev)) else {
            return Ok(Listed::Nothing);
        };
        Ok(if m.mask & FAN_PRE_ACCESS != 0 {
            Listed::Marked
        } else if m.ignored_mask & FAN_PRE_ACCESS != 0 {
            Listed::Armed
        } else {
            Listed::Nothing
        })
    }

    fn unsupported(&self) -> String {
        format!(
            "marking the filesystem of {} for pre-content events (it must support them: XFS, btrfs, ext4)",
            self.root.display()
        )
    }

    /// Put the real mark in place (if it is not yet); returns since when
    /// files opened are covered.
    pub fn place(&mut self, group: &Group) -> Result<u64> {
        let since = match self.state {
            State::Marked(since) => return Ok(since),
            State::Armed(since) => {
                // The event mask first, then the ignore mask off: the mark
                // never goes empty (which would drop it) in between.
                group
                    .mark_filesystem(&self.root, WATCHED)
                    .with_context(|| self.unsupported())?;
                group
                    .disarm_filesystem(&self.root, FAN_PRE_ACCESS)
                    .context("lifting the arming mark")?;
                since
            }
            State::None => {
                group
                    .mark_filesystem(&self.root, WATCHED)
                    .with_context(|| self.unsupported())?;
                // An arming mask the group may still hold would silence it.
                group
                    .disarm_filesystem(&self.root, FAN_PRE_ACCESS)
                    .context("lifting an arming mark")?;
                // The next tick: a process started in this one may predate
                // the mark.
                crate::snapshot::users::now_ticks()? + 1
            }
        };
        self.state = State::Marked(since);
        self.write_record()?;
        Ok(since)
    }

    /// Whether the real mark is in place.
    pub fn is_placed(&self) -> bool {
        matches!(self.state, State::Marked(_))
    }

    /// Take every mark away (the tree is taken out of service): no new
    /// events from here on.
    pub fn lift(&mut self, group: &Group) {
        let removed = match self.state {
            State::None => return,
            State::Armed(_) => group.disarm_filesystem(&self.root, FAN_PRE_ACCESS),
            State::Marked(_) => group.unmark_filesystem(&self.root, WATCHED),
        };
        if let Err(e) = removed {
            tracing::warn!("removing the filesystem mark: {e}");
        }
        self.state = State::None;
        let _ = std::fs::remove_file(&self.record);
    }

    fn write_record(&self) -> Result<()> {
        let text = match self.state {
            State::None => return Ok(()),
            State::Armed(since) => format!("{since} armed"),
            State::Marked(since) => format!("{since} marked"),
        };
        crate::tree::write_atomically(&self.record, text.as_bytes())
            .with_context(|| format!("recording the mark in {}", self.record.display()))
    }
}

/// What `/proc/self/fdinfo` shows on the tree's filesystem.
enum Listed {
    Nothing,
    Armed,
    Marked,
}

pub fn record_path(tree_id: &str) -> PathBuf {
    crate::rundir::RunDir::from_env().mark_record(tree_id)
}

/// `<since> armed|marked`; a bare `<since>` (an ebb of before) was marked.
fn read_record(record: &Path) -> State {
    let Ok(text) = std::fs::read_to_string(record) else {
        return State::None;
    };
    let mut parts = text.split_whitespace();
    let Some(since) = parts.next().and_then(|s| s.parse().ok()) else {
        return State::None;
    };
    match parts.next() {
        Some("armed") => State::Armed(since),
        Some("marked") | None => State::Marked(since),
        Some(_) => State::None,
    }
}
