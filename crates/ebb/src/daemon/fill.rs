//! Fill workers: fetch a chunk from the store (verified), write it through
//! the event's fd and put the file's mtime back. They own no state; each
//! result goes back to the loop as a [`FillDone`].
//!
//! For a reader going through a file in order, workers also read ahead:
//! the next chunks are fetched and verified into memory ([`ReadAhead`]) so
//! the store's latency overlaps the reader's work. Read-ahead never writes
//! to the file: only ranges a program accesses are filled.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crossbeam_channel::{select, Receiver, Sender, TryRecvError};

use super::populate::FillDone;
use crate::catalog::{FileId, StatSnap};
use crate::failover::fills::FillJournal;
use crate::hsm::fill_chunk;
use crate::store::{ChunkHash, ChunkRef, Store};
use crate::sys::file::set_mtime;
use crate::sys::handle::FileHandle;

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
    /// The file's handle, for the fill journal.
    pub handle: FileHandle,
}

/// Verified chunks fetched ahead of a sequential reader, by hash (so an
/// entry is right for whichever file asks), oldest dropped first.
#[derive(Debug)]
pub struct ReadAhead {
    held: Mutex<Held>,
    capacity: usize,
}

/// The chunks, and their hashes oldest first.
type Held = (HashMap<ChunkHash, Vec<u8>>, VecDeque<ChunkHash>);

impl ReadAhead {
    /// Hold at most `capacity` chunks.
    pub fn new(capacity: usize) -> ReadAhead {
        ReadAhead {
            held: Mutex::default(),
            capacity,
        }
    }

    fn take(&self, hash: &ChunkHash) -> Option<Vec<u8>> {
        self.held.lock().ok()?.0.remove(hash)
    }

    fn holds(&self, hash: &ChunkHash) -> bool {
        self.held.lock().is_ok_and(|h| h.0.contains_key(hash))
    }

    fn put(&self, hash: ChunkHash, data: Vec<u8>) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        let (chunks, order) = &mut *held;
        if chunks.insert(hash, data).is_none() {
            order.push_back(hash);
        }
        while chunks.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    chunks.remove(&old);
                }
                None => break,
            }
        }
        // Taken entries leave stale keys in `order`; keep it bounded too.
        if order.len() > 4 * self.capacity {
            order.retain(|h| chunks.contains_key(h));
        }
    }
}

/// What a worker needs.
pub struct Worker<W> {
    /// This worker's entry in the fill journal.
    pub index: usize,
    pub journal: Arc<FillJournal>,
    pub store: Store,
    pub read_ahead: Arc<ReadAhead>,
    pub fills: Receiver<FillJob>,
    pub prefetches: Receiver<ChunkRef>,
    pub done: Sender<FillDone>,
    /// Called after each result is sent so the loop looks at it.
    pub wake: W,
}

impl<W: Fn()> Worker<W> {
    /// Run until the fill channel closes. Fills always go before
    /// read-ahead.
    pub fn run(self) {
        loop {
            let job = match self.fills.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => select! {
                    recv(self.fills) -> job => match job {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                    recv(self.prefetches) -> chunk => {
                        if let Ok(chunk) = chunk {
                            self.read_ahead(&chunk);
                        }
                        continue;
                    }
                },
            };
            let result = self.fill(&job).map_err(|e| format!("{e:#}"));
            let sent = self.done.send(FillDone {
                file: job.file_id,
                index: job.index,
                result,
            });
            if sent.is_err() {
                return;
            }
            (self.wake)();
        }
    }

    fn read_ahead(&self, chunk: &ChunkRef) {
        if self.read_ahead.holds(&chunk.hash) {
            return;
        }
        // A failure is not reported: the fill that needs the chunk fetches
        // it again and reports its own error.
        if let Ok(data) = self.store.get_chunk(&chunk.hash, chunk.len) {
            self.read_ahead.put(chunk.hash, data);
        }
    }

    fn fill(&self, job: &FillJob) -> Result<(u64, bool)> {
        let data = match self.read_ahead.take(&job.chunk.hash) {
            Some(data) => data,
            None => self.store.get_chunk(&job.chunk.hash, job.chunk.len)?,
        };
        // Writers of one file take turns, so each puts back the mtime it
        // found and not one another worker's write just changed.
        let _turn = job
            .write_lock
            .lock()
            .map_err(|_| anyhow::anyhow!("a fill worker panicked while writing this file"))?;
        let meta = job.file.metadata().context("fstat before filling")?;
        let mtime = StatSnap::of(&meta).mtime;
        let limit = job.limit.min(meta.len());
        crate::hooks::pause_point(
            "fill-sized",
            format_args!("chunk at {} sized", job.chunk.offset),
        );
        // Journalled, so a daemon killed between the write and the mtime's
        // return has its successor put the mtime back.
        self.journal.begin(self.index, &job.handle, mtime);
        let written = fill_chunk(&job.file, job.chunk.offset, &data, limit);
        crate::hooks::pause_point(
            "fill-written",
            format_args!("chunk at {} written", job.chunk.offset),
        );
        // Whatever the write did: one cut short (ENOSPC, EIO) moved the
        // mtime all the same, and must not leave the file looking changed.
        set_mtime(job.file.as_fd(), mtime).context("restoring the mtime after filling")?;
        self.journal.end(self.index);
        drop(_turn);
        let found_foreign = written.context("writing the chunk")?;
        // Durable before the loop records it resident: after a power cut
        // the catalog must never say resident over a hole. (After the
        // turn: the loop takes it to stat the file between fills.)
        job.file.sync_data().context("syncing the filled chunk")?;
        crate::hooks::crash_point("after-fill");
        Ok((data.len() as u64, found_foreign))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_holds_at_most_its_capacity_oldest_out_first() {
        let ra = ReadAhead::new(2);
        let h = |n: u8| ChunkHash([n; 32]);
        ra.put(h(1), vec![1]);
        ra.put(h(2), vec![2]);
        ra.put(h(3), vec![3]);
        assert!(!ra.holds(&h(1)), "oldest dropped");
        assert_eq!(ra.take(&h(2)), Some(vec![2]));
        assert_eq!(ra.take(&h(2)), None, "taken once");
        for n in 10..100 {
            ra.put(h(n), vec![n]);
            ra.take(&h(n));
        }
        let held = ra.held.lock().expect("lock");
        assert!(held.1.len() <= 8, "bookkeeping stays bounded");
    }
}
