//! The populate-on-access state machine: what the daemon knows of the stubs
//! it serves and of every permission event it has read and not answered.
//!
//! One loop owns all of it ([`Populator`]); fill workers only fetch and
//! write chunks and report back ([`FillDone`]). Every permission event read
//! from the group is in [`Populator::waiting`] until it is answered, so the
//! in-flight state lives in exactly one place.
//!
//! For each `FAN_PRE_ACCESS`:
//! - from the daemon itself: allowed at once (its own I/O never waits);
//! - on a file the catalog does not hold, or holds fully resident: an
//!   evictable ignore mark is added so the file raises no more events, and
//!   the access is allowed;
//! - on a stub: the chunks covering the range that are not resident are
//!   fetched (once, however many readers wait on them), written through the
//!   event's fd, recorded in the catalog, and then the access is allowed. A
//!   chunk the store cannot deliver denies the access with `EIO`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};

use anyhow::{Context, Result};
use crossbeam_channel::Sender;

use super::fill::{FillJob, WriteTurn};
use super::mark::FsMark;
use super::snapshots::Snapshots;
use crate::catalog::stub_mark;
use crate::catalog::{Catalog, FileId, FileRecord, Residency, StatSnap};
use crate::failover::inflight::InflightTable;
use crate::store::{chunks_overlapping, ChunkRef};
use crate::sys::fanotify::{Event, EventId, Group, Response, FAN_PRE_ACCESS};
use crate::sys::file::{dev_ino, set_mtime, Timestamp};
use crate::sys::handle::{handle_of, FileHandle};

/// `FAN_MODIFY`: a write happened (notification).
pub const FAN_MODIFY: u64 = libc::FAN_MODIFY;
/// `FAN_CLOSE_WRITE`: the last reference to a file opened for writing
/// went (a `close`, or the `munmap` of a mapping that outlived its fd).
pub const FAN_CLOSE_WRITE: u64 = libc::FAN_CLOSE_WRITE;
/// What the daemon marks on the filesystem, and what ignore marks silence.
pub const WATCHED: u64 = FAN_PRE_ACCESS | FAN_MODIFY | FAN_CLOSE_WRITE;
/// What a catalogued file that counts as unmodified is silenced for, and
/// only until its next write: neither that write's `FAN_MODIFY` nor the
/// `FAN_CLOSE_WRITE` of anything that could have written it (a write
/// through a shared mapping raises nothing else, and a fill may have put
/// its mtime back) is silenced.
pub(super) const SILENCED_UNTIL_WRITTEN: u64 = FAN_PRE_ACCESS | FAN_MODIFY;

/// What a stub's own inode mark raises, where the filesystem mark is not
/// there to: put on by a pausing daemon and by a release with only the
/// keeper, taken off once the file is all resident again.
pub(super) const STUB_MARK: u64 = FAN_PRE_ACCESS;

/// Chunks read ahead of a sequential reader (at most 1 MiB each).
pub const READ_AHEAD_CHUNKS: usize = 16;

/// A chunk fill finished (or failed).
#[derive(Debug)]
pub struct FillDone {
    pub file: FileId,
    pub index: usize,
    /// Bytes filled, and the mtime the fill put back.
    pub result: Result<(u64, Timestamp), String>,
}

/// Counters, reported by `{"op":"stats"}`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Permission events answered with allow.
    pub allowed: u64,
    /// Permission events answered with deny (`EIO`).
    pub denied: u64,
    /// Chunks fetched from the store and written.
    pub chunks_filled: u64,
    /// Bytes of those chunks.
    pub bytes_filled: u64,
    /// Chunks fetched ahead of a sequential reader (into memory only).
    pub chunks_read_ahead: u64,
    /// Chunk fills that failed.
    pub fill_errors: u64,
    /// Ignore marks added to files that need no more events.
    pub ignore_marks: u64,
    /// Files seen modified while not fully resident.
    pub modified_seen: u64,
    /// Events the kernel could not give the daemon (it could not open
    /// their fd) and denied itself.
    pub unreadable_events: u64,
    /// Accesses denied because the file is marked as a stub the catalog
    /// does not hold.
    pub unknown_stubs_refused: u64,
}

/// Most stubs a pausing daemon marks one by one (see
/// [`Populator::narrow_to_stubs`]); each mark pins an inode in memory
/// (about 1 KiB) until the tree's next daemon or `ebb unserve`.
pub const PAUSE_STUB_MARKS: u64 = 1 << 18;

/// Name, in the tree's state directory, of the file whose close tells the
/// daemon it has read every event queued before (see `drain_events`).
pub const COOKIE: &str = "events.cookie";

/// A writable fd of the stub `handle` that raises no events, opened
/// through the tree's own mount (see `open_by_handle_nonotify`).
fn open_for_filling(root: &std::path::Path, handle: &FileHandle) -> Result<File> {
    let root = File::open(root).context("opening the tree root")?;
    let fd = crate::sys::fanotify::open_by_handle_nonotify(root.as_fd(), handle, libc::O_RDWR)
        .context("opening it for writing")?;
    Ok(File::from(fd))
}

/// The stub `handle` names, opened read-only through the tree's `root`
/// (events included: nothing here reads it); `None` if it is gone.
fn open_stub(root: &File, handle: &FileHandle) -> std::io::Result<Option<File>> {
    match crate::sys::handle::open_by_handle(root.as_fd(), handle, libc::O_RDONLY) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e) if e.raw_os_error() == Some(libc::ESTALE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an accessed file is to the daemon.
enum Lookup {
    /// A stub it serves.
    Stub(FileId),
    /// In the catalog, all on disk; `modified` if it already counts so.
    Resident { id: FileId, modified: bool },
    /// Not in the catalog, yet marked as a stub on disk (its row is gone,
    /// it is another tree's, the catalog is new): nothing can serve it.
    UnknownStub(stub_mark::StubMark),
    /// Not in the catalog.
    Unmanaged,
}

impl Lookup {
    /// How a file that needs no service is silenced.
    fn silence(&self) -> Silence {
        match self {
            Lookup::Resident {
                modified: false, ..
            } => Silence::UntilWritten,
            _ => Silence::ForGood,
        }
    }
}

/// How long an ignore mark silences a file.
#[derive(Clone, Copy)]
enum Silence {
    /// Until the file is written ([`SILENCED_UNTIL_WRITTEN`]).
    UntilWritten,
    /// For as long as the mark lives.
    ForGood,
}

/// A stub the daemon is serving.
struct Stub {
    path: PathBuf,
    handle: FileHandle,
    manifest: Arc<Vec<ChunkRef>>,
    resident: Residency,
    modified: bool,
    /// The mtime the last fill put back, and whether someone wrote the
    /// file since that was checked: a write that landed between a fill's
    /// write and its put-back had its mtime put back too (see
    /// `Populator::keep_writers_mtime`).
    last_put_back: Option<Timestamp>,
    written_since: bool,
    /// The commit that last recorded its residency (see `durable.rs`).
    recorded_in: u64,
    /// The fill workers' turn to write this file, and how much of it they
    /// may write (see [`WriteTurn`]).
    turn: Arc<WriteTurn>,
    /// Makes the workers' writes to it durable (see `GroupSync`).
    sync: Arc<super::fill::GroupSync>,
    /// A writable fd of the file that raises no events, while fills are in
    /// flight (they write through it; the residency is recorded from its
    /// stat); dropped when idle so the daemon never keeps a file open,
    /// which would make `ebb release` find it busy.
    file: Option<Arc<File>>,
    fills_in_flight: usize,
    /// Where the last access ended (a chunk index), to spot a sequential
    /// reader, and how far chunks were read ahead for it.
    last_access_end: usize,
    read_ahead_to: usize,
}

impl Stub {
    /// The fill workers' turn, taken to stat the file between two fills
    /// (a fill moves the mtime until it puts it back).
    fn between_fills(&self) -> Result<MutexGuard<'_, ()>> {
        self.turn.take().map(|(turn, _)| turn)
    }

    /// The fd fills write through, opened on first need (see `file`).
    fn fill_fd(&mut self, root: &std::path::Path) -> Result<Arc<File>> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let file = Arc::new(open_for_filling(root, &self.handle)?);
        self.file = Some(file.clone());
        Ok(file)
    }

    /// The job that fills chunk `index` of this stub (`id`) through `file`.
    fn job(&self, id: FileId, index: usize, file: &Arc<File>) -> FillJob {
        FillJob {
            file_id: id,
            index,
            chunk: self.manifest[index],
            handle: self.handle.clone(),
            file: file.clone(),
            turn: self.turn.clone(),
            sync: self.sync.clone(),
        }
    }
}

/// A permission event read and not yet answered.
struct Waiting {
    /// Chunk fills it still waits for.
    pending: usize,
    /// The first fill that failed for it, if any.
    failure: Option<String>,
    /// The event's fd: its number is the event's id, so it stays open until
    /// the answer is written.
    _fd: Arc<File>,
}

/// The daemon's loop state.
pub struct Populator {
    group: Group,
    /// The tree's root: fills open their files by handle through it.
    root: PathBuf,
    /// [`COOKIE`] in the tree's state directory.
    cookie: PathBuf,
    /// The filesystem mark: placed once there is something to serve.
    mark: FsMark,
    /// Every permission event read and not answered, in shared memory the
    /// keeper holds (see `failover::inflight`).
    table: InflightTable,
    catalog: Catalog,
    own_pid: i32,
    stubs: HashMap<FileId, Stub>,
    by_handle: HashMap<FileHandle, FileId>,
    waiting: HashMap<EventId, Waiting>,
    /// Chunk fills in progress, and the events waiting on each.
    fills: HashMap<(FileId, usize), Vec<EventId>>,
    /// Stubs whose residency changed since it was last recorded.
    unrecorded: HashSet<FileId>,
    /// Residency commits made, and how many of them are durable (see
    /// `durable.rs`); commit numbers go to the syncer.
    committed: u64,
    durable: u64,
    sync: Sender<u64>,
    /// Events answered once the commit numbered with them is durable
    /// (their fds stay open until then), and stubs let go of then.
    awaiting: Vec<(u64, EventId, Waiting)>,
    retiring: Vec<(u64, FileId)>,
    /// Marked stubs the catalog does not hold, already logged.
    refused: HashSet<FileHandle>,
    /// Stubs whose catalog row says fills are under way (see
    /// `FileRecord::filling`: set durably before the first fill writes),
    /// to be cleared, after a sync of each, when the daemon stops cleanly.
    filling: HashMap<FileId, FileHandle>,
    jobs: Sender<FillJob>,
    /// Fills ahead of sequential readers (see [`Populator::fill_ahead`]).
    ahead: Sender<FillJob>,
    stats: Stats,
    /// Snapshots being taken: their sources' accesses wait for clones.
    pub snapshots: Snapshots,
}

impl Populator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: Group,
        root: PathBuf,
        mark: FsMark,
        table: InflightTable,
        catalog: Catalog,
        jobs: Sender<FillJob>,
        ahead: Sender<FillJob>,
        sync: Sender<u64>,
        snapshots: Snapshots,
    ) -> Populator {
        Populator {
            group,
            cookie: root.join(crate::tree::STATE_DIR).join(COOKIE),
            root,
            mark,
            table,
            catalog,
            own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
            stubs: HashMap::new(),
            by_handle: HashMap::new(),
            waiting: HashMap::new(),
            fills: HashMap::new(),
            unrecorded: HashSet::new(),
            committed: 0,
            durable: 0,
            sync,
            awaiting: Vec::new(),
            retiring: Vec::new(),
            refused: HashSet::new(),
            filling: HashMap::new(),
            jobs,
            ahead,
            stats: Stats::default(),
            snapshots,
        }
    }

    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Whether the in-flight table has room for another read.
    pub fn can_read(&self) -> bool {
        self.table.has_free_slot()
    }

    /// Read the events that are ready, straight into the in-flight table.
    pub fn read_events(&mut self) -> std::io::Result<Vec<Event>> {
        let events = self.table.read(&self.group)?.unwrap_or_default();
        if events.iter().any(Event::is_permission) {
            crate::hooks::crash_point("after-read");
        }
        Ok(events)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Events read and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing is left to do: no event unanswered, no fill in
    /// flight or unrecorded.
    pub fn is_idle(&self) -> bool {
        // Fills ahead of a reader have no event waiting on them, and must
        // be done (and recorded) before the daemon stops all the same.
        self.waiting.is_empty()
            && self.fills.is_empty()
            && self.unrecorded.is_empty()
            && self.awaiting.is_empty()
            && self.retiring.is_empty()
    }

    /// Handle one event read from the group.
    pub fn on_event(&mut self, event: Event) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            tracing::error!("fanotify queue overflow: some events were lost");
            return;
        }
        let Some(fd) = event.file else { return };
        let file = File::from(fd);
        if event.mask & FAN_PRE_ACCESS != 0 {
            self.on_access(file, event.pid, event.range);
        } else if event.mask & (FAN_MODIFY | FAN_CLOSE_WRITE) != 0 && event.pid != self.own_pid {
            self.on_modify(&file);
        }
    }

    fn respond(&mut self, id: EventId, response: Response) {
        match response {
            Response::Allow => self.stats.allowed += 1,
            _ => self.stats.denied += 1,
        }
        crate::hooks::crash_point("before-answer");
        if let Err(e) = self.group.respond(id, response) {
            tracing::error!("answering event {}: {e}", id.0);
        }
        self.table.answered(id.0);
    }

    /// Silence `file`: it needs no service. A file the catalog holds
    /// unmodified is silenced only until it is next written
    /// ([`SILENCED_UNTIL_WRITTEN`]).
    fn ignore(&mut self, file: &File, silence: Silence) {
        // A snapshot's source must keep raising events (a FAN_MODIFY
        // after an allowed write would otherwise silence it).
        if !self.snapshots.is_empty()
            && handle_of(file.as_fd()).is_ok_and(|(h, _)| self.snapshots.is_source(&h))
        {
            return;
        }
        let added = match silence {
            Silence::ForGood => self.group.add_ignore(file.as_fd(), WATCHED, true),
            Silence::UntilWritten => {
                self.group
                    .add_ignore_until_modified(file.as_fd(), SILENCED_UNTIL_WRITTEN, true)
            }
        };
        match added {
            Ok(()) => self.stats.ignore_marks += 1,
            Err(e) => tracing::warn!("adding an ignore mark: {e}"),
        }
    }

    fn on_access(&mut self, file: File, pid: i32, range: Option<(u64, u64)>) {
        let id = EventId::of(&file);
        // The event's fd is closed before the answer, not after: once
        // answered, the reader may go on to `ebb release`, whose lease must
        // not find the daemon still holding the file. (The number cannot
        // be handed out meanwhile: only this thread reads events.)
        if pid == self.own_pid {
            drop(file);
            self.respond(id, Response::Allow);
            return;
        }
        if !self.snapshots.is_empty() {
            if let Some(file) = self.hold_for_snapshot(file, id, pid, range) {
                self.go_on_with_access(file, id, range);
            }
            return;
        }
        self.go_on_with_access(file, id, range);
    }

    /// An access to the source of a snapshot waits until the units under
    /// it are cloned; any other access is handed back.
    fn hold_for_snapshot(
        &mut self,
        file: File,
        id: EventId,
        pid: i32,
        range: Option<(u64, u64)>,
    ) -> Option<File> {
        let Ok((handle, _)) = handle_of(file.as_fd()) else {
            return Some(file);
        };
        match self.snapshots.hold(&handle, pid, range, id) {
            None => Some(file),
            Some(false) => {
                drop(file);
                self.respond(id, Response::Allow);
                None
            }
            Some(true) => {
                self.table.record_handle(id.0, &handle);
                self.hold(id, file);
                None
            }
        }
    }

    /// The units a held access waited for are cloned.
    pub fn on_snapshot_ready(&mut self, id: EventId) {
        if let Some(w) = self.waiting.get_mut(&id) {
            w.pending = w.pending.saturating_sub(1);
        }
    }

    fn go_on_with_access(&mut self, file: File, id: EventId, range: Option<(u64, u64)>) {
        let stub = match self.lookup(&file) {
            Ok(Lookup::Stub(stub)) => stub,
            Ok(Lookup::UnknownStub(mark)) => {
                self.refuse_unknown_stub(&file, &mark);
                drop(file);
                self.respond(id, Response::DenyErrno(libc::EIO));
                return;
            }
            Ok(other) => {
                self.ignore(&file, other.silence());
                drop(file);
                self.respond(id, Response::Allow);
                return;
            }
            Err(e) => {
                // Not knowing whether this is a stub, allowing could hand
                // out zeros: refuse the access instead, loudly.
                tracing::error!("cannot tell whether an accessed file is managed: {e:#}");
                drop(file);
                self.respond(id, Response::DenyErrno(libc::EIO));
                return;
            }
        };
        let (start, count) = range.unwrap_or((0, u64::MAX));
        if let Err(e) = self.note_size(stub, &file) {
            tracing::error!("cannot check the size of an accessed stub: {e:#}");
            drop(file);
            self.respond(id, Response::DenyErrno(libc::EIO));
            return;
        }
        let entry = self
            .stubs
            .get_mut(&stub)
            .expect("lookup returned a cached stub");
        let chunks = chunks_overlapping(&entry.manifest, start, start.saturating_add(count.max(1)));
        // Going on from where the last access ended, into chunks it did
        // not cover (a first access says nothing yet; reads within one
        // chunk fill nothing ahead).
        let last = entry.last_access_end;
        let sequential =
            last > 0 && chunks.start <= last && chunks.start + 1 >= last && chunks.end > last;
        entry.last_access_end = chunks.end;
        let missing: Vec<usize> = entry.resident.missing_in(chunks.clone()).collect();
        if missing.is_empty() {
            // All on disk; answered once their record is durable (filled
            // ahead, it may not be yet).
            let response = match self.unrecorded.contains(&stub) {
                true if self.record_residency().is_err() => Response::DenyErrno(libc::EIO),
                _ => Response::Allow,
            };
            let needs = self.stubs.get(&stub).map_or(0, |s| s.recorded_in);
            self.answer_when_durable(id, file, response, needs);
            if sequential {
                self.fill_ahead(stub, chunks.end);
            }
            return;
        }
        tracing::debug!(
            "{}: {} chunk(s) to fill for {start}+{count}",
            entry.path.display(),
            missing.len()
        );
        if let Err(e) = self.say_filling(stub) {
            tracing::error!(
                "cannot record that a stub is being filled ({e:#}); the access gets EIO"
            );
            drop(file);
            self.respond(id, Response::DenyErrno(libc::EIO));
            return;
        }
        let entry = self
            .stubs
            .get_mut(&stub)
            .expect("lookup returned a cached stub");
        let keep = match entry.fill_fd(&self.root) {
            Ok(keep) => keep,
            Err(e) => {
                tracing::error!(
                    "{}: cannot open it for filling ({e:#}); the access gets EIO",
                    entry.path.display()
                );
                drop(file);
                self.respond(id, Response::DenyErrno(libc::EIO));
                return;
            }
        };
        let file = Arc::new(file);
        for &index in &missing {
            let waiters = self.fills.entry((stub, index)).or_insert_with(|| {
                entry.fills_in_flight += 1;
                if self.jobs.send(entry.job(stub, index, &keep)).is_err() {
                    tracing::error!("the fill workers are gone");
                }
                Vec::new()
            });
            waiters.push(id);
        }
        self.waiting.insert(
            id,
            Waiting {
                pending: missing.len(),
                failure: None,
                _fd: file,
            },
        );
        if sequential {
            self.fill_ahead(stub, chunks.end);
        }
    }

    /// Keep the event `id` unanswered until one thing it waits for is done
    /// (its `pending` goes to 0), with its fd, whose number the answer
    /// goes to, open until then.
    fn hold(&mut self, id: EventId, file: File) {
        self.waiting.insert(
            id,
            Waiting {
                pending: 1,
                failure: None,
                _fd: Arc::new(file),
            },
        );
    }

    /// A reader going through `stub` in order will want the chunks from
    /// `next` on: have workers fill a few ahead of it (after the fills
    /// readers wait for, which go first), so that when it gets there they
    /// are written, durable and recorded, and its read is answered at once.
    /// A chunk is made durable before it counts as resident (see
    /// `fill.rs`): filled ahead, that cost overlaps the reader's work.
    fn fill_ahead(&mut self, stub: FileId, next: usize) {
        let Some(entry) = self.stubs.get(&stub) else {
            return;
        };
        let from = next.max(entry.read_ahead_to);
        let to = (next + READ_AHEAD_CHUNKS).min(entry.manifest.len());
        if from >= to || self.say_filling(stub).is_err() {
            return;
        }
        let Some(entry) = self.stubs.get_mut(&stub) else {
            return;
        };
        // Its readers fill what they need themselves if this fails.
        let Ok(keep) = entry.fill_fd(&self.root) else {
            return;
        };
        for index in from..to {
            if entry.resident.contains(index) || self.fills.contains_key(&(stub, index)) {
                continue;
            }
            if self.ahead.try_send(entry.job(stub, index, &keep)).is_err() {
                // Workers have enough ahead: the rest on a later read.
                entry.read_ahead_to = index;
                return;
            }
            entry.fills_in_flight += 1;
            self.fills.insert((stub, index), Vec::new());
            self.stats.chunks_read_ahead += 1;
        }
        entry.read_ahead_to = to;
    }

    /// A write, or the close of something that could write: a stub or a
    /// catalogued file counts as modified from now on.
    fn on_modify(&mut self, file: &File) {
        match self.lookup(file) {
            Ok(Lookup::Stub(stub)) => {
                self.note_modified(stub, None);
                if let Some(entry) = self.stubs.get_mut(&stub) {
                    entry.written_since = true;
                }
                // An open with O_TRUNC raises no access event, only this.
                if let Err(e) = self.note_size(stub, file) {
                    tracing::error!("cannot check the size of a modified stub: {e:#}");
                }
            }
            Ok(Lookup::Resident { id, modified }) => {
                // Written by someone else, whatever its mtime says now (a
                // fill may have put it back over this write's).
                if !modified {
                    tracing::info!(
                        "a managed file was written (file {}); it counts as modified",
                        id.0
                    );
                    self.stats.modified_seen += 1;
                    if let Err(e) = self.catalog.mark_modified(id, u64::MAX) {
                        tracing::error!("recording that file {} was modified: {e:#}", id.0);
                        return;
                    }
                }
                self.ignore(file, Silence::ForGood);
            }
            Ok(Lookup::Unmanaged) => self.ignore(file, Silence::ForGood),
            // Its accesses stay refused: never silenced.
            Ok(Lookup::UnknownStub(_)) => {}
            Err(e) => tracing::error!("cannot tell whether a modified file is managed: {e:#}"),
        }
    }

    /// `file`'s size and times, taken between two fills of it (a fill moves
    /// the mtime until it puts it back).
    pub fn stat_between_fills(&self, file: &File) -> Result<StatSnap> {
        let (handle, _) = handle_of(file.as_fd())?;
        let stub = self
            .by_handle
            .get(&handle)
            .and_then(|id| self.stubs.get(id));
        let _turn = stub.map(Stub::between_fills).transpose()?;
        Ok(StatSnap::of(&file.metadata()?))
    }

    /// A daemon starting with a fresh group (no keeper held the tree's
    /// events: a reboot, or the keeper died) cannot know what was written
    /// to stubs meanwhile: nothing held their writers off. Each stub whose
    /// size or times moved since the catalog's record is taken to have been
    /// written anywhere (see `Catalog::note_changes`). Before any event is
    /// read, so a change seen from now on is told apart.
    pub fn check_unseen_changes(&mut self) -> Result<usize> {
        let root = File::open(&self.root).context("opening the tree root")?;
        let mut handles = Vec::new();
        self.catalog.for_each_not_resident(|_, handle| {
            handles.push(handle.clone());
            Ok(())
        })?;
        let mut changed = 0;
        for handle in handles {
            let Some(stub) = open_stub(&root, &handle).context("opening a stub to check it")?
            else {
                continue; // gone
            };
            let Some(mut rec) = self.catalog.file_by_handle(&handle)? else {
                continue;
            };
            let was = rec.modified;
            self.catalog
                .note_changes(&mut rec, &StatSnap::of(&stub.metadata()?), true)?;
            if rec.modified && !was {
                tracing::warn!(
                    "{}: changed while nothing served it (valid to byte {}); it counts as modified",
                    rec.path.display(),
                    rec.valid_len
                );
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Before the first fill of `stub` writes: the catalog says, durably,
    /// that fills are under way (see `FileRecord::filling`).
    fn say_filling(&mut self, stub: FileId) -> Result<()> {
        let Some(entry) = self.stubs.get(&stub) else {
            return Ok(());
        };
        if !self.filling.contains_key(&stub) {
            self.catalog.set_filling_durably(stub)?;
            self.filling.insert(stub, entry.handle.clone());
        }
        Ok(())
    }

    /// A clean stop: every stub this daemon filled is synced (its put-back
    /// mtimes durable), then the catalog says no fill is under way, so a
    /// change made before the next daemon is told apart from ebb's own.
    /// Best effort: a stub that cannot be synced keeps its flag.
    pub fn end_fill_sessions(&mut self) {
        let root = match File::open(&self.root) {
            Ok(root) => root,
            Err(e) => return tracing::warn!("ending fill sessions: opening the tree root: {e}"),
        };
        let synced: Vec<FileId> = self
            .filling
            .iter()
            .filter(|(_, handle)| match open_stub(&root, handle) {
                Ok(Some(stub)) => stub
                    .sync_all()
                    .inspect_err(|e| tracing::warn!("syncing a filled stub: {e}"))
                    .is_ok(),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!("syncing a filled stub: {e}");
                    false
                }
            })
            .map(|(id, _)| *id)
            .collect();
        if let Err(e) = self.catalog.clear_filling_durably(&synced) {
            tracing::warn!("recording the end of fills: {e:#}");
        }
    }

    /// ebb puts back only the mtime it changed: a fill restores the mtime
    /// it found, and a write by someone else between the fill's write and
    /// its put-back (a write raises no event once its range is resident,
    /// and one through a shared mapping none at all) would lose its new
    /// mtime to it. So once a written stub's fills are over, if its mtime
    /// is still exactly what the last fill put back, the writer's was lost:
    /// it becomes now, just after the write. (Not if someone set it since:
    /// `cp -p` and `rsync -t` set it after writing.)
    fn keep_writers_mtimes(&mut self) {
        let root = &self.root;
        for stub in self.stubs.values_mut() {
            if !stub.written_since || stub.fills_in_flight > 0 {
                continue;
            }
            stub.written_since = false;
            let Some(put_back) = stub.last_put_back else {
                continue;
            };
            let file = match &stub.file {
                Some(file) => file.clone(),
                None => match open_for_filling(root, &stub.handle) {
                    Ok(file) => Arc::new(file),
                    Err(e) => {
                        tracing::warn!("{}: checking its mtime: {e:#}", stub.path.display());
                        continue;
                    }
                },
            };
            let lost = file
                .metadata()
                .is_ok_and(|m| StatSnap::of(&m).mtime == put_back);
            if lost {
                tracing::info!(
                    "{}: written while a fill put its mtime back; the mtime is now",
                    stub.path.display()
                );
                if let Err(e) = set_mtime(file.as_fd(), Timestamp::NOW) {
                    tracing::warn!("{}: moving its mtime: {e}", stub.path.display());
                }
            }
        }
    }

    /// An access to a stub nothing can serve is refused; said once per
    /// file in the log (each access raises an event again).
    fn refuse_unknown_stub(&mut self, file: &File, mark: &stub_mark::StubMark) {
        let Ok((handle, _)) = handle_of(file.as_fd()) else {
            return;
        };
        if self.refused.insert(handle) {
            let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .unwrap_or_default();
            tracing::error!(
                "{}: a stub ({mark}) this tree's catalog does not hold; its readers get EIO (bring back the catalog it belongs to, or delete the file)",
                path.display()
            );
        }
        self.stats.unknown_stubs_refused += 1;
    }

    /// Record (once) that a stub was changed by someone else, and, if it
    /// was cut to `cut_to` bytes, that nothing past that may be filled.
    fn note_modified(&mut self, id: FileId, cut_to: Option<u64>) {
        let Some(entry) = self.stubs.get_mut(&id) else {
            return;
        };
        let was = entry.turn.valid_len();
        let valid_len = cut_to.map_or(was, |n| n.min(was));
        if valid_len < was {
            // Lowered in the workers' turn: every fill that writes after
            // this returns (a write the cut let through may come next)
            // stops at the cut.
            entry.turn.cut_to(valid_len);
        } else if entry.modified {
            return;
        }
        entry.modified = true;
        self.stats.modified_seen += 1;
        tracing::info!("{} modified while not all resident", entry.path.display());
        if let Err(e) = self.catalog.mark_modified(id, valid_len) {
            tracing::error!(
                "recording that {} was modified: {e:#}",
                entry.path.display()
            );
        }
    }

    /// A stub cut shorter than its valid length (a truncate raises no
    /// FAN_MODIFY here) must never have the cut-off bytes filled again.
    fn note_size(&mut self, id: FileId, file: &File) -> Result<()> {
        let size = file.metadata()?.len();
        if self
            .stubs
            .get(&id)
            .is_some_and(|s| size < s.turn.valid_len())
        {
            self.note_modified(id, Some(size));
        }
        Ok(())
    }

    /// What `file` is to the daemon, loading a stub from the catalog on
    /// first sight.
    fn lookup(&mut self, file: &File) -> Result<Lookup> {
        let (handle, _) = handle_of(file.as_fd()).context("name_to_handle_at on an event fd")?;
        // Which file, for a daemon that takes over if this one dies now.
        self.table.record_handle(EventId::of(file).0, &handle);
        if let Some(&id) = self.by_handle.get(&handle) {
            return Ok(Lookup::Stub(id));
        }
        let Some(mut rec) = self.catalog.file_by_handle(&handle)? else {
            return Ok(
                match stub_mark::get(file.as_fd()).context("reading its stub mark")? {
                    Some(mark) => Lookup::UnknownStub(mark),
                    None => Lookup::Unmanaged,
                },
            );
        };
        if rec.resident.is_complete() {
            let modified = rec.is_modified(&StatSnap::of(&file.metadata()?));
            return Ok(Lookup::Resident {
                id: rec.id,
                modified,
            });
        }
        // Changes made before this daemon cached the file are recorded
        // before any fill records new attributes. Seen ones: since this
        // daemon (or the keeper it took over from) started, every write to
        // a stub waited on it (see `check_unseen_changes` for the rest).
        self.catalog
            .note_changes(&mut rec, &StatSnap::of(&file.metadata()?), false)?;
        let FileRecord {
            id,
            path,
            version,
            resident,
            modified,
            valid_len,
            filling,
            ..
        } = rec;
        if filling {
            self.filling.insert(id, handle.clone());
        }
        self.by_handle.insert(handle.clone(), id);
        self.stubs.insert(
            id,
            Stub {
                path,
                handle,
                manifest: version.manifest,
                resident,
                modified,
                last_put_back: None,
                written_since: false,
                recorded_in: 0,
                turn: Arc::new(WriteTurn::new(valid_len)),
                sync: Arc::default(),
                file: None,
                fills_in_flight: 0,
                last_access_end: 0,
                read_ahead_to: 0,
            },
        );
        Ok(Lookup::Stub(id))
    }

    /// Take in finished fills. Call [`Populator::settle`] after a batch.
    pub fn on_fill_done(&mut self, done: FillDone) {
        let waiters = self
            .fills
            .remove(&(done.file, done.index))
            .unwrap_or_default();
        let Some(entry) = self.stubs.get_mut(&done.file) else {
            return;
        };
        entry.fills_in_flight -= 1;
        let failure = match done.result {
            Ok((bytes, put_back)) => {
                entry.last_put_back = Some(put_back);
                entry.resident.insert(done.index);
                self.unrecorded.insert(done.file);
                self.stats.chunks_filled += 1;
                self.stats.bytes_filled += bytes;
                None
            }
            Err(why) => {
                self.stats.fill_errors += 1;
                let who = if waiters.is_empty() {
                    "filled ahead of a reader; tried again when read"
                } else {
                    "readers get EIO"
                };
                tracing::error!(
                    "{}: cannot fill chunk {} ({why}): {who}",
                    entry.path.display(),
                    done.index,
                );
                Some(why)
            }
        };
        for id in waiters {
            if let Some(w) = self.waiting.get_mut(&id) {
                w.pending -= 1;
                if w.failure.is_none() {
                    w.failure = failure.clone();
                }
            }
        }
    }

    /// Record new residency in the catalog (one transaction), retire stubs
    /// that became fully resident, then answer every event whose chunks
    /// are all in.
    pub fn settle(&mut self) {
        let recorded = self.record_residency();
        self.keep_writers_mtimes();
        // Idle stubs let go of their fds before any reader hears: once
        // its read returns, nothing of the daemon's holds the file (a
        // release right after the read would find it busy).
        let idle: Vec<(FileId, u64)> = self
            .stubs
            .iter()
            .filter(|(_, s)| s.fills_in_flight == 0 && s.file.is_some())
            .filter(|(id, _)| !self.retiring.iter().any(|(_, r)| r == *id))
            .map(|(id, s)| (*id, s.recorded_in))
            .collect();
        for (id, needs) in idle {
            // Silenced only once its record is durable: from then on its
            // writes raise nothing, and one synced over a range the catalog
            // lost would be filled over after a power cut.
            if needs <= self.durable {
                self.retire_if_complete(id);
            } else {
                self.retiring.push((needs, id));
                self.ask_sync(needs);
            }
        }
        // An event whose fills are still running (even failed ones) keeps
        // its fd, which they may write through, until they are done.
        let ready: Vec<EventId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.pending == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            // Out of the table (closing its fd) before the answer, as in
            // `on_access`.
            let Some(w) = self.waiting.remove(&id) else {
                continue;
            };
            let response = match (&w.failure, &recorded) {
                (None, Ok(())) => Response::Allow,
                _ => Response::DenyErrno(libc::EIO),
            };
            // Its chunks were recorded in the latest commit at the latest.
            let needs = self.committed;
            self.answer_waiting_when_durable(id, w, response, needs);
        }
    }

    /// Answer event `id` (its fd is `file`) with `response`, now if commit
    /// `needs` is durable or nothing is allowed, else once it is.
    fn answer_when_durable(&mut self, id: EventId, file: File, response: Response, needs: u64) {
        let w = Waiting {
            pending: 0,
            failure: None,
            _fd: Arc::new(file),
        };
        self.answer_waiting_when_durable(id, w, response, needs);
    }

    fn answer_waiting_when_durable(
        &mut self,
        id: EventId,
        w: Waiting,
        response: Response,
        needs: u64,
    ) {
        if response != Response::Allow || needs <= self.durable {
            // Out of the table (closing its fd) before the answer.
            drop(w);
            self.respond(id, response);
            return;
        }
        self.awaiting.push((needs, id, w));
        self.ask_sync(needs);
    }

    fn ask_sync(&mut self, upto: u64) {
        if self.sync.send(upto).is_err() {
            tracing::error!("the catalog's syncer is gone");
        }
    }

    /// The syncer made commits up to `synced.upto` durable (or failed):
    /// let go of the stubs and answer the events that waited for them.
    pub fn on_synced(&mut self, synced: super::durable::Synced) {
        let failed = synced.result.is_err();
        if let Err(why) = &synced.result {
            tracing::error!("{why}; readers waiting for it get EIO");
        } else {
            self.durable = self.durable.max(synced.upto);
        }
        let upto = synced.upto;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(needs, _)| *needs <= upto);
        self.retiring = later;
        for (_, id) in now {
            // Busy again since (a new access set off fills, or they are
            // not recorded yet): a later `settle` lets it go.
            let busy = self.unrecorded.contains(&id)
                || self.stubs.get(&id).is_some_and(|s| s.fills_in_flight > 0);
            if busy {
                continue;
            }
            if failed {
                // Kept as a stub (not silenced); its fd goes.
                if let Some(stub) = self.stubs.get_mut(&id) {
                    stub.file = None;
                }
            } else {
                self.retire_if_complete(id);
            }
        }
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|(needs, _, _)| *needs <= upto);
        self.awaiting = later;
        for (_, id, w) in now {
            drop(w);
            let response = if failed {
                Response::DenyErrno(libc::EIO)
            } else {
                Response::Allow
            };
            self.respond(id, response);
        }
    }

    fn record_residency(&mut self) -> Result<(), ()> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let ids: Vec<FileId> = self.unrecorded.drain().collect();
        let stubs = &self.stubs;
        // Not synced here: readers are answered once the syncer has made
        // this commit durable (see `durable.rs`).
        let result = self.catalog.batch(|cat| {
            for id in &ids {
                let Some(stub) = stubs.get(id) else { continue };
                let Some(file) = &stub.file else { continue };
                // Taken between two fills, never inside one, where a fill
                // has written but not yet put the mtime back: that mtime
                // would later read as somebody else's change.
                let stat = {
                    let _turn = stub.between_fills()?;
                    if stub.resident.is_complete() {
                        // All on disk and durable: no longer a stub. Before
                        // the stat, as the ctime moves.
                        stub_mark::clear(file.as_fd()).context("unmarking a filled stub")?;
                    }
                    StatSnap::of(&file.metadata()?)
                };
                cat.set_residency(*id, &stub.resident, &stat)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.committed += 1;
                for id in &ids {
                    if let Some(stub) = self.stubs.get_mut(id) {
                        stub.recorded_in = self.committed;
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!("recording filled chunks in the catalog: {e:#}; readers get EIO");
                Err(())
            }
        }
    }

    /// Once no fill is in flight for a stub: let go of its fd, and if it is
    /// fully resident, stop serving it (an ignore mark silences it).
    fn retire_if_complete(&mut self, id: FileId) {
        let Some(stub) = self.stubs.get_mut(&id) else {
            return;
        };
        let Some(file) = stub.file.take() else { return };
        if !stub.resident.is_complete() {
            return;
        }
        tracing::info!("{} is all resident again", stub.path.display());
        // Its record says so, and no fill is under way any more.
        self.filling.remove(&id);
        let path = stub.path.clone();
        let handle = stub.handle.clone();
        self.stubs.remove(&id);
        self.by_handle.remove(&handle);
        // A paused daemon (or a release with only the keeper) marked the
        // stub on its own: that mark goes, or the file's readers would wait
        // on the next pause for nothing (and it pins the inode).
        if let Err(e) = self.group.unmark_inode(file.as_fd(), STUB_MARK) {
            tracing::warn!("unmarking {}: {e}", path.display());
        }
        self.ignore(&file, Silence::UntilWritten);
    }

    /// `ebb release` is about to punch `file`: take in every event queued
    /// so far (a write's `FAN_MODIFY` must be recorded before release
    /// looks at the file), drop any ignore mark on it and anything cached,
    /// so its next access is served from the store.
    pub fn forget(&mut self, file: &File) -> Result<()> {
        self.drain_events()
            .context("taking in the events queued before the release")?;
        let (handle, _) = handle_of(file.as_fd())?;
        if self.snapshots.is_source(&handle) {
            anyhow::bail!("a snapshot of it is being taken; release it once the snapshot is done");
        }
        // A stub is about to exist: from here on it must be served. (Its
        // releaser holds a write lease: no descriptor opened before the
        // mark is left on it.)
        self.mark.place(&self.group)?;
        self.group
            .remove_ignore(file.as_fd(), WATCHED)
            .context("removing the ignore mark")?;
        if let Some(id) = self.by_handle.remove(&handle) {
            self.stubs.remove(&id);
        }
        Ok(())
    }

    /// A snapshot asked for: copy-before-write needs the mark in place
    /// before the writers are checked, and writers that opened the source
    /// before it went in cannot be seen.
    pub fn request_snapshot(
        &mut self,
        req: crate::snapshot::start::Request,
        reply: super::control::ReplyTx,
    ) {
        match self.mark.place(&self.group) {
            Ok(since) => self.snapshots.request(req, since, reply),
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
            }
        }
    }

    /// Read and handle every event queued now (as far as the in-flight
    /// table has room).
    fn drain_events(&mut self) -> Result<()> {
        if !self.mark.is_placed() {
            return Ok(()); // nothing was marked: nothing is queued
        }
        // A cookie: opening the file for writing and closing it queues a
        // FAN_CLOSE_WRITE behind everything queued so far (at close(2),
        // before it returns).
        let cookie = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.cookie)
            .with_context(|| format!("writing the cookie {}", self.cookie.display()))?;
        let cookie_id = dev_ino(cookie.as_fd())?;
        drop(cookie);
        loop {
            let events = match self.read_events() {
                Ok(events) => events,
                Err(e) => {
                    self.on_unreadable_event(&e);
                    continue;
                }
            };
            if events.is_empty() {
                anyhow::bail!(
                    "the cookie's event did not come (the in-flight table is full?); try again"
                );
            }
            let mut seen = false;
            for event in events {
                let is_cookie = event.mask & FAN_CLOSE_WRITE != 0
                    && event.pid == self.own_pid
                    && event
                        .file
                        .as_ref()
                        .is_some_and(|fd| dev_ino(fd.as_fd()).is_ok_and(|id| id == cookie_id));
                if is_cookie {
                    seen = true;
                } else {
                    self.on_event(event);
                }
            }
            if seen {
                return Ok(());
            }
        }
    }

    /// An event could not be read (the kernel could not open its fd, and
    /// has denied it): counted, and the daemon goes on.
    pub fn on_unreadable_event(&mut self, e: &std::io::Error) {
        self.stats.unreadable_events += 1;
        tracing::error!("an event could not be read ({e}); the kernel denied that access");
    }

    /// Whether the tree may go out of service now: not while a snapshot
    /// runs (its source's writers wait on the mark).
    pub fn may_unserve(&self) -> Result<(), String> {
        if self.snapshots.is_empty() {
            Ok(())
        } else {
            Err("a snapshot of a file in the tree is in progress; try again once it is done (nothing changed)".to_string())
        }
    }

    /// Pausing (SIGTERM): until the next daemon, keep waiting only the
    /// readers that must wait, those of stubs, rather than every first
    /// access on the filesystem. Each stub gets an inode mark in the group
    /// the keeper keeps, and only then does the filesystem mark go.
    /// Returns `false`, with the filesystem mark left as it is, when that
    /// cannot be done safely: a snapshot runs (its source's writers wait on
    /// the filesystem mark), the tree has more than [`PAUSE_STUB_MARKS`]
    /// stubs (each mark pins an inode), or a stub cannot be marked.
    pub fn narrow_to_stubs(&mut self) -> bool {
        if !self.mark.is_placed() {
            return true; // nothing waits on it: nothing is a stub
        }
        if !self.snapshots.is_empty() {
            tracing::info!(
                "pausing during a snapshot: every first access waits for the next daemon"
            );
            return false;
        }
        match self.mark_stubs() {
            Ok(marked) => {
                tracing::info!(
                    "pausing: {marked} stub(s) marked; their readers wait for the next daemon"
                );
                self.mark.lift(&self.group);
                true
            }
            Err(e) => {
                tracing::warn!("pausing: {e:#}; every first access waits for the next daemon");
                false
            }
        }
    }

    fn mark_stubs(&self) -> Result<usize> {
        // Counted first: marks made before finding there are too many
        // would pin their inodes for nothing.
        let (stubs, _) = self.catalog.not_resident(0)?;
        if stubs > PAUSE_STUB_MARKS {
            anyhow::bail!("{stubs} stubs, more than {PAUSE_STUB_MARKS} inode marks");
        }
        let root = File::open(&self.root).context("opening the tree root")?;
        let mut marked = 0;
        self.catalog.for_each_not_resident(|path, handle| {
            // Gone: nobody can open it any more.
            let Some(stub) =
                open_stub(&root, handle).with_context(|| format!("opening {}", path.display()))?
            else {
                return Ok(());
            };
            self.group
                .mark_inode(stub.as_fd(), STUB_MARK)
                .with_context(|| format!("marking {}", path.display()))?;
            marked += 1;
            Ok(())
        })?;
        Ok(marked)
    }

    /// Stop raising events (the tree goes out of service).
    pub fn lift_mark(&mut self) {
        self.mark.lift(&self.group);
    }

    /// Start a prepared snapshot: its point in time is now.
    pub fn start_snapshot(
        &mut self,
        prepared: crate::snapshot::start::Prepared,
    ) -> Result<serde_json::Value> {
        self.snapshots.start(prepared, &self.group, &self.catalog)
    }
}
