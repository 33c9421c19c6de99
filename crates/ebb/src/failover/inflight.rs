//! The in-flight table: every permission event the daemon has read and not
//! yet answered, in shared memory that survives the daemon.
//!
//! There is no window in which a crash loses an event's fd number: the
//! daemon has the kernel `read(2)` the events straight into a slot of the
//! table, so the numbers are in shared memory the instant the kernel hands
//! them out. The daemon then notes, per event, the file's handle (which
//! file to fill after a restart) and whether it has answered.
//!
//! Layout (native endian; one machine writes and reads it):
//!
//! ```text
//! header (64 bytes)
//!   0  magic      [u8; 8]  "EBBFLY01"
//!   8  version    u32      1
//!   12 slots      u32      SLOTS
//!   16 slot_size  u32      SLOT_SIZE
//! slot i, at 64 + i * SLOT_SIZE
//!   0  state      u32      0 free, 1 being read into, 2 read
//!   4  count      u32      entries written (valid in state 2)
//!   8  entries    [ENTRY; MAX_EVENTS], one per event, in buffer order
//!        0  flags        u32   1 handle recorded, 2 answered
//!        4  handle_type  i32
//!        8  handle_len   u32
//!        12 handle       [u8; 128]
//!   8 + MAX_EVENTS * ENTRY: buffer [u8; BUF], what read(2) returned, then zeros
//! ```
//!
//! After a crash, the buffer of every slot that is not free is parsed again
//! (zeros end it, so even a read whose return value was lost is complete);
//! its entries add what the daemon had learnt. An event the dead daemon had
//! read but not yet given a handle is still known by fd number, pid and
//! range (see `takeover` for how it is served).

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;

use anyhow::{bail, Result};

use super::layout::{get_handle, get_u32, put_handle, put_u32, HANDLE_FIELD};
use crate::sys::fanotify::{parse_records, Event, Group};
use crate::sys::handle::FileHandle;
use crate::sys::shm::SharedMemory;

const MAGIC: &[u8; 8] = b"EBBFLY01";
const VERSION: u32 = 1;
const HEADER: usize = 64;
/// Slots: at most this many reads can have unanswered events at once.
const SLOTS: usize = 64;
/// Bytes one read may return.
const BUF: usize = 4096;
/// Events one read may return (the smallest event is 24 bytes).
const MAX_EVENTS: usize = BUF / 24;
const ENTRY: usize = 4 + HANDLE_FIELD;
const ENTRIES_AT: usize = 8;
const BUF_AT: usize = ENTRIES_AT + MAX_EVENTS * ENTRY;
const SLOT_SIZE: usize = BUF_AT + BUF;
/// Size of the whole table.
pub const TABLE_SIZE: usize = HEADER + SLOTS * SLOT_SIZE;

const FREE: u32 = 0;
const READING: u32 = 1;
const READ: u32 = 2;
const HANDLE_RECORDED: u32 = 1;
const ANSWERED: u32 = 2;

/// A permission event a dead daemon read and did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The number the kernel matches the answer by.
    pub fd: i32,
    pub pid: i32,
    pub mask: u64,
    pub range: Option<(u64, u64)>,
    /// The file, if the dead daemon got as far as noting it.
    pub handle: Option<FileHandle>,
}

/// The table, mapped.
pub struct InflightTable {
    mem: SharedMemory,
    /// Where each unanswered event's entry is: fd number -> (slot, entry).
    by_fd: HashMap<i32, (usize, usize)>,
}

impl InflightTable {
    /// A new, empty table in a new memfd.
    pub fn create() -> Result<InflightTable> {
        let mut mem = SharedMemory::create("ebb-inflight", TABLE_SIZE)?;
        let b = mem.bytes_mut();
        b[0..8].copy_from_slice(MAGIC);
        put_u32(b, 8, VERSION);
        put_u32(b, 12, SLOTS as u32);
        put_u32(b, 16, SLOT_SIZE as u32);
        Ok(InflightTable {
            mem,
            by_fd: HashMap::new(),
        })
    }

    /// Take over a table a previous daemon left: check it is one this ebb
    /// understands and list the events still unanswered. They stay in the
    /// table until [`InflightTable::answered`] is called for each.
    pub fn open(mem: SharedMemory) -> Result<(InflightTable, Vec<Pending>)> {
        let b = mem.bytes();
        if b.len() < HEADER || &b[0..8] != MAGIC {
            bail!("the kept in-flight table is not one ebb wrote (bad magic); if no reader waits, stop the tree's keeper (kill the pid in <tree id>.keeper.lock in /run/ebb, or in $EBB_RUN_DIR if set) and start the daemon again");
        }
        let (version, slots, slot_size) = (get_u32(b, 8), get_u32(b, 12), get_u32(b, 16));
        if version != VERSION
            || slots as usize != SLOTS
            || slot_size as usize != SLOT_SIZE
            || b.len() != TABLE_SIZE
        {
            bail!(
                "the kept in-flight table has layout version {version} ({slots} slots of {slot_size} bytes); this ebb reads version {VERSION} ({SLOTS} of {SLOT_SIZE}): finish the takeover with the ebb that wrote it"
            );
        }
        let mut table = InflightTable {
            mem,
            by_fd: HashMap::new(),
        };
        let mut pending = Vec::new();
        for slot in 0..SLOTS {
            pending.extend(table.pending_in(slot));
        }
        Ok((table, pending))
    }

    fn pending_in(&mut self, slot: usize) -> Vec<Pending> {
        let base = HEADER + slot * SLOT_SIZE;
        let b = self.mem.bytes();
        let state = get_u32(b, base);
        if state == FREE {
            return Vec::new();
        }
        let count = if state == READ {
            get_u32(b, base + 4) as usize
        } else {
            0
        };
        let (records, bad) = parse_records(&b[base + BUF_AT..base + SLOT_SIZE]);
        if let Some(why) = bad {
            tracing::warn!("in-flight slot {slot}: {why}; the events before it are served");
        }
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate().take(MAX_EVENTS) {
            let entry = base + ENTRIES_AT + i * ENTRY;
            let flags = if i < count { get_u32(b, entry) } else { 0 };
            if !r.is_permission() || r.fd < 0 || flags & ANSWERED != 0 {
                continue;
            }
            let handle = (flags & HANDLE_RECORDED != 0).then(|| get_handle(b, entry + 4));
            out.push(Pending {
                fd: r.fd,
                pid: r.pid,
                mask: r.mask,
                range: r.range,
                handle: handle.flatten(),
            });
            self.by_fd.insert(r.fd, (slot, i));
        }
        if out.is_empty() {
            put_u32(self.mem.bytes_mut(), base, FREE);
        } else if state == READING {
            // Make the entries match the buffer, so `answered` can free it.
            let b = self.mem.bytes_mut();
            for (i, r) in records.iter().enumerate().take(MAX_EVENTS) {
                let flags = if r.is_permission() && r.fd >= 0 {
                    0
                } else {
                    ANSWERED
                };
                put_u32(b, base + ENTRIES_AT + i * ENTRY, flags);
            }
            put_u32(b, base + 4, records.len().min(MAX_EVENTS) as u32);
            put_u32(b, base, READ);
        }
        out
    }

    /// The memfd, for the keeper.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    /// Read the events that are ready from `group` into a free slot.
    /// `Ok(None)` when every slot holds unanswered events (read later; the
    /// kernel queues meanwhile). Non-permission events are marked answered
    /// at once.
    pub fn read(&mut self, group: &Group) -> io::Result<Option<Vec<Event>>> {
        let Some(slot) = (0..SLOTS).find(|&s| get_u32(self.mem.bytes(), slot_base(s)) == FREE)
        else {
            return Ok(None);
        };
        let base = slot_base(slot);
        put_u32(self.mem.bytes_mut(), base, READING);
        let events =
            match group.read_into(&mut self.mem.bytes_mut()[base + BUF_AT..base + SLOT_SIZE]) {
                Ok(events) => events,
                Err(e) => {
                    // Nothing was read: the slot is free again.
                    put_u32(self.mem.bytes_mut(), base, FREE);
                    return Err(e);
                }
            };
        let b = self.mem.bytes_mut();
        let mut open = 0;
        for (i, ev) in events.iter().enumerate().take(MAX_EVENTS) {
            let entry = base + ENTRIES_AT + i * ENTRY;
            match ev.id().filter(|_| ev.is_permission()) {
                Some(id) => {
                    put_u32(b, entry, 0);
                    self.by_fd.insert(id.0, (slot, i));
                    open += 1;
                }
                None => put_u32(b, entry, ANSWERED),
            }
        }
        put_u32(b, base + 4, events.len().min(MAX_EVENTS) as u32);
        put_u32(b, base, if open == 0 { FREE } else { READ });
        Ok(Some(events))
    }

    /// Note which file the unanswered event `fd` is about.
    pub fn record_handle(&mut self, fd: i32, handle: &FileHandle) {
        let Some(&(slot, i)) = self.by_fd.get(&fd) else {
            return;
        };
        let entry = slot_base(slot) + ENTRIES_AT + i * ENTRY;
        let b = self.mem.bytes_mut();
        if put_handle(b, entry + 4, handle) {
            let flags = get_u32(b, entry);
            put_u32(b, entry, flags | HANDLE_RECORDED);
        }
    }

    /// The event `fd` has been answered; its slot is free once all are.
    pub fn answered(&mut self, fd: i32) {
        let Some((slot, i)) = self.by_fd.remove(&fd) else {
            return;
        };
        let base = slot_base(slot);
        let b = self.mem.bytes_mut();
        let entry = base + ENTRIES_AT + i * ENTRY;
        put_u32(b, entry, get_u32(b, entry) | ANSWERED);
        let count = get_u32(b, base + 4) as usize;
        if (0..count).all(|j| get_u32(b, base + ENTRIES_AT + j * ENTRY) & ANSWERED != 0) {
            put_u32(b, base, FREE);
        }
    }

    /// Whether a read has a slot to go into.
    pub fn has_free_slot(&self) -> bool {
        (0..SLOTS).any(|s| get_u32(self.mem.bytes(), slot_base(s)) == FREE)
    }

    /// Events read and not answered.
    #[cfg(test)]
    pub fn unanswered(&self) -> usize {
        self.by_fd.len()
    }
}

fn slot_base(slot: usize) -> usize {
    HEADER + slot * SLOT_SIZE
}

#[cfg(test)]
mod tests;
