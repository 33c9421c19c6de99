//! The fill journal: which file each fill worker is writing, and the mtime
//! to put back, in shared memory the keeper holds.
//!
//! A fill writes a chunk (which moves the file's mtime) and then puts the
//! mtime back. A daemon killed between the two would leave the kill time
//! as the file's mtime, and the file would look changed by somebody else.
//! A restarted daemon reads this journal and puts those mtimes back.
//!
//! Layout (native endian): a 16-byte header (`"EBBFIL01"`, version u32),
//! then one 160-byte entry per worker: `state u32` (1 = writing), pad,
//! `mtime_sec i64`, `mtime_nsec i64`, `handle_type i32`, `handle_len u32`,
//! `handle [u8; 128]`.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use anyhow::{bail, Result};

use super::layout::{get_handle, get_i64, get_u32, put_handle, put_i64, put_u32, HANDLE_FIELD};
use crate::sys::file::Timestamp;
use crate::sys::handle::FileHandle;
use crate::sys::shm::SharedMemory;

const MAGIC: &[u8; 8] = b"EBBFIL01";
const VERSION: u32 = 1;
const HEADER: usize = 16;
/// Fill workers the journal has room for.
pub const MAX_WORKERS: usize = 64;
const ENTRY: usize = 24 + HANDLE_FIELD;
const SIZE: usize = HEADER + MAX_WORKERS * ENTRY;

/// A fill a dead daemon did not finish: put this mtime back on this file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupted {
    pub handle: FileHandle,
    pub mtime: Timestamp,
}

/// The journal, shared by the fill workers (each writes its own entry).
#[derive(Debug)]
pub struct FillJournal {
    mem: Mutex<SharedMemory>,
}

impl FillJournal {
    pub fn create() -> Result<FillJournal> {
        let mut mem = SharedMemory::create("ebb-fills", SIZE)?;
        let b = mem.bytes_mut();
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_ne_bytes());
        Ok(FillJournal {
            mem: Mutex::new(mem),
        })
    }

    /// Take over a dead daemon's journal; returns the fills it left
    /// unfinished (their entries are cleared).
    pub fn open(mut mem: SharedMemory) -> Result<(FillJournal, Vec<Interrupted>)> {
        let b = mem.bytes_mut();
        if b.len() != SIZE || &b[..8] != MAGIC || b[8..12] != VERSION.to_ne_bytes() {
            bail!("the kept fill journal is not one this ebb wrote (layout differs)");
        }
        let mut left = Vec::new();
        for worker in 0..MAX_WORKERS {
            let e = HEADER + worker * ENTRY;
            if get_u32(b, e) != 1 {
                continue;
            }
            match get_handle(b, e + 24) {
                Some(handle) => left.push(Interrupted {
                    mtime: Timestamp {
                        sec: get_i64(b, e + 8),
                        nsec: get_i64(b, e + 16),
                    },
                    handle,
                }),
                None => tracing::warn!(
                    "fill journal entry {worker} is damaged; its mtime cannot be put back"
                ),
            }
            put_u32(b, e, 0);
        }
        Ok((
            FillJournal {
                mem: Mutex::new(mem),
            },
            left,
        ))
    }

    /// The memfd, for the keeper.
    pub fn with_fd<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
        self.mem.lock().ok().map(|m| f(m.fd()))
    }

    /// Worker `worker` is about to write into `handle`'s file, whose mtime
    /// is `mtime`.
    pub fn begin(&self, worker: usize, handle: &FileHandle, mtime: Timestamp) {
        if worker >= MAX_WORKERS {
            return;
        }
        let Ok(mut mem) = self.mem.lock() else { return };
        let b = mem.bytes_mut();
        let e = HEADER + worker * ENTRY;
        put_i64(b, e + 8, mtime.sec);
        put_i64(b, e + 16, mtime.nsec);
        if put_handle(b, e + 24, handle) {
            // The state last: an entry is whole once it says "writing".
            put_u32(b, e, 1);
        }
    }

    /// Worker `worker` has put the mtime back.
    pub fn end(&self, worker: usize) {
        if worker >= MAX_WORKERS {
            return;
        }
        if let Ok(mut mem) = self.mem.lock() {
            put_u32(mem.bytes_mut(), HEADER + worker * ENTRY, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_fill_is_found_once_by_the_next_daemon() {
        let journal = FillJournal::create().expect("create");
        let h = FileHandle {
            handle_type: 1,
            bytes: vec![9; 12],
        };
        let t = Timestamp {
            sec: 1_700_000_000,
            nsec: 5,
        };
        journal.begin(3, &h, t);
        journal.begin(4, &h, t);
        journal.end(4);
        let kept = journal
            .with_fd(|fd| fd.try_clone_to_owned())
            .expect("lock")
            .expect("dup");
        drop(journal); // the daemon dies
        let (_journal, left) =
            FillJournal::open(SharedMemory::map(kept).expect("map")).expect("open");
        assert_eq!(
            left,
            vec![Interrupted {
                handle: h,
                mtime: t
            }]
        );

        let other = SharedMemory::create("junk", 64).expect("junk");
        assert!(FillJournal::open(other).is_err());
    }
}
