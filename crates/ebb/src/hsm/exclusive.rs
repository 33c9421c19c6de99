//! Holding a file so that nobody else has it open and nobody can open it:
//! the ground on which release punches content away (and restore without a
//! daemon fills it in).
//!
//! The sequence (see DESIGN.md): open the file for writing through an fd
//! that raises no fanotify events; hold new opens with a private
//! `FAN_OPEN_PERM` mark; then take a write lease, which the kernel grants
//! only while no other fd of the file is open anywhere. Openers that arrive
//! meanwhile wait, and go on when this value is dropped.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};

use crate::sys::fanotify::{self, Class, Group, InitOptions, FAN_OPEN_PERM};
use crate::sys::file::{ignore_sigio, set_lease, Lease};

/// A file that only this process has open, through a non-notifying fd.
pub struct Exclusive {
    // Declared before `_guard`: the lease and the fd go first, then the
    // openers held by the guard are let through.
    file: File,
    _guard: Group,
}

/// Why a file could not be held.
#[derive(Debug, thiserror::Error)]
pub enum ExclusiveError {
    /// Another process has the file open.
    #[error("{path} is busy: another process has it open; nothing changed (try again once it is closed)")]
    Busy { path: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Exclusive {
    /// Take `path`, opened as `plain` (read-only), for exclusive use. `settle` runs once new opens are
    /// held and the lease has shown that nobody has the file open, but
    /// while no lease is on it: a daemon told to take in the events queued
    /// for the file opens their fds (an open that would wait for a lease to
    /// break), and nobody is left to make it open the file to fill it.
    pub fn acquire(
        plain: File,
        path: &Path,
        settle: impl FnOnce(&File) -> Result<()>,
    ) -> Result<Exclusive, ExclusiveError> {
        // `plain` is read-only: closing it raises no FAN_CLOSE_WRITE for a
        // daemon to take as somebody's write.
        let quiet = fanotify::reopen_nonotify(plain.as_fd(), libc::O_RDWR)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        drop(plain);
        let file = File::from(quiet);
        let guard = Group::new(InitOptions {
            class: Class::Content,
            nonblock: true,
            unlimited_queue: true,
            event_open_flags: libc::O_RDONLY,
            report: 0,
        })
        .context("creating the open guard (fanotify_init)")?;
        guard
            .mark_inode(file.as_fd(), FAN_OPEN_PERM)
            .context("holding new opens (FAN_OPEN_PERM)")?;
        ignore_sigio().context("ignoring SIGIO")?;
        let busy = || ExclusiveError::Busy {
            path: path.display().to_string(),
        };
        if !take_lease(&file)? {
            return Err(busy());
        }
        set_lease(file.as_fd(), Lease::Unlock).context("giving the lease back for a moment")?;
        crate::hooks::pause_point("release-guarded", path.display());
        settle(&file)?;
        // Nobody could open it meanwhile (the guard holds them), so this
        // fails only if something that settling opened is still open.
        if !take_lease(&file)? {
            return Err(busy());
        }
        Ok(Exclusive {
            file,
            _guard: guard,
        })
    }

    /// The file, opened read-write; I/O through it raises no events.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// A write lease on `file`: `false` when another fd of it is open
/// anywhere.
fn take_lease(file: &File) -> Result<bool> {
    match set_lease(file.as_fd(), Lease::Write) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("taking a write lease")),
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Err(e) = set_lease(self.file.as_fd(), Lease::Unlock) {
            tracing::warn!("giving up a write lease: {e}");
        }
    }
}
