//! Fill workers: fetch a chunk from the store (verified), write it through
//! the event's fd and put the file's mtime back. They own no state; each
//! result goes back to the loop as a [`FillDone`].
//!
//! For a reader going through a file in order, the loop also queues the
//! next few chunks ahead of it (a second channel, taken only when no fill
//! a reader waits for is queued), so the store's latency and each chunk's
//! `fdatasync` overlap the reader's work.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result};
use crossbeam_channel::{select, Receiver, Sender, TryRecvError};

use super::populate::FillDone;
use crate::catalog::{FileId, StatSnap};
use crate::failover::fills::FillJournal;
use crate::hsm::fill_chunk;
use crate::store::{ChunkRef, Store};
use crate::sys::file::{set_mtime, Timestamp};
use crate::sys::handle::FileHandle;

/// One chunk to bring back.
pub struct FillJob {
    pub file_id: FileId,
    pub index: usize,
    pub chunk: ChunkRef,
    /// An fd from the event, which raises no events of its own.
    pub file: Arc<File>,
    pub turn: Arc<WriteTurn>,
    /// Makes the file's written chunks durable, several at a time.
    pub sync: Arc<GroupSync>,
    /// The file's handle, for the fill journal.
    pub handle: FileHandle,
}

/// A stub's fill workers' turn to write it, and what they may write.
///
/// A worker holds it from the moment it looks at the file's size until its
/// mtime is put back, so workers of one file take turns (each puts back
/// the mtime it found, not one another's write just moved) and the loop
/// can stat the file between two fills. The loop lowers `valid_len` in it
/// when it sees the file cut: a fill that had already looked then either
/// wrote before the cut (gone with it) or writes after the loop's turn,
/// and so below the cut; a write the loop lets through afterwards, into
/// the bytes the file has anew, is never written over. The loop, the only
/// one to change it, reads it without waiting for a fill.
#[derive(Debug)]
pub struct WriteTurn {
    turn: Mutex<()>,
    /// No archived byte at or past this offset may be written back.
    valid_len: AtomicU64,
}

impl WriteTurn {
    pub fn new(valid_len: u64) -> WriteTurn {
        WriteTurn {
            turn: Mutex::new(()),
            valid_len: AtomicU64::new(valid_len),
        }
    }

    /// Take the turn; with it, how much of the file may be written.
    pub fn take(&self) -> Result<(MutexGuard<'_, ()>, u64)> {
        let turn = self
            .turn
            .lock()
            .map_err(|_| anyhow::anyhow!("a fill worker panicked while writing this file"))?;
        Ok((turn, self.valid_len.load(Ordering::Acquire)))
    }

    /// No archived byte at or past this offset may be written back.
    pub fn valid_len(&self) -> u64 {
        self.valid_len.load(Ordering::Acquire)
    }

    /// Lower the valid length to `to`, in the turn: a fill that took it
    /// before wrote before this returns, one that takes it after stops at
    /// `to`.
    pub fn cut_to(&self, to: u64) {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        self.valid_len.fetch_min(to, Ordering::AcqRel);
    }
}

/// Group commit of one file's fills: a worker that wrote a chunk calls
/// [`GroupSync::sync_data`]; one `fdatasync` covers every chunk written
/// before it began, so workers filling one file concurrently share it
/// instead of queueing one each behind the others.
///
/// A failed `fdatasync` fails every chunk written before the failure was
/// seen, those written while it ran included: the kernel reports a
/// writeback error once per open file, so a later call that succeeds
/// proves nothing about pages that were written back, and lost, by then.
/// Chunks written after it start afresh.
#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out: one per chunk written.
    written: u64,
    /// Every chunk with a ticket up to this is durable...
    durable: u64,
    /// ...and every one up to this failed, for this reason.
    failed: (u64, String),
    syncing: bool,
}

impl GroupSync {
    /// Make what the caller wrote through `file` (before calling) durable.
    pub fn sync_data(&self, file: &File) -> Result<()> {
        let poisoned = || anyhow::anyhow!("a fill worker panicked while syncing this file");
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        st.written += 1;
        let ticket = st.written;
        loop {
            if ticket <= st.failed.0 {
                anyhow::bail!("syncing the filled chunks: {}", st.failed.1);
            }
            if ticket <= st.durable {
                return Ok(());
            }
            if st.syncing {
                st = self.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            st.syncing = true;
            let covers = st.written;
            drop(st);
            let result = file.sync_data();
            st = self.state.lock().map_err(|_| poisoned())?;
            st.syncing = false;
            match result {
                Ok(()) => st.durable = covers,
                Err(e) => st.failed = (st.written, e.to_string()),
            }
            self.done.notify_all();
        }
    }
}

/// What a worker needs.
pub struct Worker<W> {
    /// This worker's entry in the fill journal.
    pub index: usize,
    pub journal: Arc<FillJournal>,
    pub store: Store,
    /// Fills readers wait for.
    pub fills: Receiver<FillJob>,
    /// Fills ahead of a sequential reader: only when no reader waits.
    pub ahead: Receiver<FillJob>,
    pub done: Sender<FillDone>,
    /// Called after each result is sent so the loop looks at it.
    pub wake: W,
}

impl<W: Fn()> Worker<W> {
    /// Run until the fill channel closes. Fills readers wait for always
    /// go before fills ahead of a reader.
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
                    recv(self.ahead) -> job => match job {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                },
            };
            let result = self.fill(&job).map_err(|e| format!("{e:#}"));
            let (file, index) = (job.file_id, job.index);
            // The job's fd of the file goes before the loop hears: once it
            // answers the reader, nothing of the daemon's may hold the file
            // (a release right after the read would find it busy).
            drop(job);
            let sent = self.done.send(FillDone {
                file,
                index,
                result,
            });
            if sent.is_err() {
                return;
            }
            (self.wake)();
        }
    }

    /// The bytes written, and the mtime put back.
    fn fill(&self, job: &FillJob) -> Result<(u64, Timestamp)> {
        let data = self.store.get_chunk(&job.chunk.hash, job.chunk.len)?;
        // Writers of one file take turns, so each puts back the mtime it
        // found and not one another worker's write just changed.
        let (turn, valid_len) = job.turn.take()?;
        let meta = job.file.metadata().context("fstat before filling")?;
        let mtime = StatSnap::of(&meta).mtime;
        let limit = valid_len.min(meta.len());
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
        drop(turn);
        written.context("writing the chunk")?;
        // Durable before the loop records it resident: after a power cut
        // the catalog must never say resident over a hole. (After the
        // turn: the loop takes it to stat the file between fills.)
        job.sync.sync_data(&job.file)?;
        crate::hooks::crash_point("after-fill");
        Ok((data.len() as u64, mtime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_from_threads(file: &File, threads: usize) -> Vec<Result<()>> {
        let sync = GroupSync::default();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| sync.sync_data(file)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_writer_of_a_file_hears_its_sync_succeed() {
        let file = tempfile::tempfile().unwrap();
        for result in sync_from_threads(&file, 8) {
            result.unwrap();
        }
    }

    #[test]
    fn a_failed_sync_fails_every_writer_it_covered() {
        // fdatasync(2) of a pipe fails (EINVAL): a stand-in for EIO.
        let (read, _write) = nix::unistd::pipe().unwrap();
        let file = File::from(read);
        let results = sync_from_threads(&file, 8);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.to_string().contains("syncing"))),
            "{results:?}"
        );
    }
}
