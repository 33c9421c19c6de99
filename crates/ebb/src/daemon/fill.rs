//! Fill workers: fetch a chunk from the store (verified), write it through
//! the event's fd and put the file's mtime back. They own no state; each
//! result goes back to the loop as a [`FillDone`].

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};

use super::populate::FillDone;
use crate::catalog::FileId;
use crate::hsm::fill_chunk;
use crate::store::{ChunkRef, Store};
use crate::sys::file::set_mtime;

/// One chunk to bring back.
pub struct FillJob {
    pub file_id: FileId,
    pub index: usize,
    pub chunk: ChunkRef,
    /// Nothing at or past this offset is written (see `valid_len`).
    pub limit: u64,
    /// An fd from the event, which raises no events of its own.
    pub file: Arc<File>,
    pub write_lock: Arc<Mutex<()>>,
}

/// Run jobs until the channel closes; `wake` is called after each result
/// is sent so the loop looks at it.
pub fn work(store: Store, jobs: Receiver<FillJob>, done: Sender<FillDone>, wake: impl Fn()) {
    for job in jobs {
        let result = fill(&store, &job).map_err(|e| format!("{e:#}"));
        let sent = done.send(FillDone {
            file: job.file_id,
            index: job.index,
            result,
        });
        if sent.is_err() {
            return;
        }
        wake();
    }
}

fn fill(store: &Store, job: &FillJob) -> Result<(u64, bool)> {
    let data = store.get_chunk(&job.chunk.hash, job.chunk.len)?;
    // Writers of one file take turns, so each puts back the mtime it found
    // and not one another worker's write just changed.
    let _turn = job
        .write_lock
        .lock()
        .map_err(|_| anyhow::anyhow!("a fill worker panicked while writing this file"))?;
    let meta = job.file.metadata().context("fstat before filling")?;
    let mtime = crate::catalog::StatSnap::of(&meta).mtime;
    let limit = job.limit.min(meta.len());
    let found_foreign =
        fill_chunk(&job.file, job.chunk.offset, &data, limit).context("writing the chunk")?;
    set_mtime(job.file.as_fd(), mtime).context("restoring the mtime after filling")?;
    Ok((data.len() as u64, found_foreign))
}
