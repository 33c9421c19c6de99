//! Snapshots of big files while they are in use, and what changed since.
//!
//! - [`start`] checks a request and prepares it (files, reflink support,
//!   the [`plan`]: fixed 256 KiB units, cloned a measured few per call so
//!   that no single clone holds the file's locks for long);
//! - [`job`] clones unit by unit into a partial file, records progress,
//!   and puts the snapshot in place once complete; the daemon runs it and
//!   clones the units under any access first (copy-before-write), so the
//!   snapshot is the file as it was when it started;
//! - [`users`] finds, in `/proc`, the writers that could not be held back;
//! - [`track`] gives a file one owner of its change tracking, and keeps
//!   the base snapshot that incremental archives start from;
//! - [`ranges`] lists where a file differs from its snapshot, from the two
//!   extent maps alone.

pub mod job;
pub mod plan;
mod ranges;
pub mod start;
pub mod track;
pub mod users;

pub use ranges::{changed_ranges, Range};
