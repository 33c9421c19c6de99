//! Group commit of the catalog's residency records.
//!
//! A fill's residency must be durable before its reader hears (the access
//! may be a write, and a write synced over a range the catalog lost in a
//! power cut would be written over by the next fill). The loop commits
//! records without syncing (`synchronous=NORMAL`: the frames are in the
//! WAL file, not yet on disk) and numbers each commit; this thread makes
//! the WAL durable with one `fdatasync` covering every commit numbered
//! before it began, and says up to which number. Readers whose records are
//! covered are answered then; the loop never waits on a sync, and one sync
//! serves every record made while the previous one ran.

use std::path::PathBuf;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};

/// Commits numbered up to `upto` are durable, or the sync failed.
#[derive(Debug)]
pub struct Synced {
    pub upto: u64,
    pub result: Result<(), String>,
}

/// Start the syncer of the WAL at `wal`. Send it a commit's number after
/// the commit; it answers on `done` and calls `wake`.
pub fn spawn(
    wal: PathBuf,
    done: Sender<Synced>,
    wake: impl Fn() + Send + 'static,
) -> Result<Sender<u64>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("ebb-wal-sync".into())
        .spawn(move || run(&wal, &rx, &done, &wake))
        .context("starting the catalog's syncer")?;
    Ok(tx)
}

fn run(wal: &std::path::Path, rx: &Receiver<u64>, done: &Sender<Synced>, wake: &dyn Fn()) {
    while let Ok(first) = rx.recv() {
        // Everything asked for so far: one sync covers it all.
        let upto = rx.try_iter().fold(first, u64::max);
        crate::hooks::pause_point("wal-sync", format_args!("syncing commits up to {upto}"));
        let result = std::fs::File::open(wal)
            .and_then(|f| f.sync_data())
            .map_err(|e| format!("syncing {}: {e}", wal.display()));
        if done.send(Synced { upto, result }).is_err() {
            return;
        }
        wake();
    }
}
