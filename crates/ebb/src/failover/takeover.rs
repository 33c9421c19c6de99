//! Takeover: what a starting daemon does before it reads a new event.
//!
//! 1. Take the group and the in-flight table back from the keeper (or make
//!    both and hand them to it), moving their fds above the numbers a dead
//!    daemon's events may hold.
//! 2. Reserve the fd number of every event the table says is unanswered,
//!    so the kernel cannot give one to a new event while the old one waits
//!    (answers are matched by number only).
//! 3. Finish each: fill the range from the store into the file, then
//!    answer with the recorded number. The file is the one whose handle the
//!    dead daemon noted; if it died before noting it, the candidates are
//!    the files the blocked process has open or mapped (`/proc/PID/fd`,
//!    `/proc/PID/maps`) or is exec'ing (the path argument of the `execve`
//!    it is blocked in), and the range is filled in every candidate that is
//!    a stub: filling more than needed is harmless, allowing a read of an
//!    unfilled range is not.
//! 4. Release the reserved numbers.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::fills::{FillJournal, Interrupted};
use super::inflight::{InflightTable, Pending};
use super::keeper::KeeperClient;
use crate::catalog::Catalog;
use crate::hsm::{fill_range, NoProgress};
use crate::rundir::RunDir;
use crate::store::{chunks_overlapping, Store};
use crate::sys::fanotify::{self, EventId, Group, InitOptions, Response};
use crate::sys::fdtable;
use crate::sys::handle::{handle_of, open_by_handle};
use crate::sys::shm::SharedMemory;
use crate::tree::Tree;

/// Fds kept by the keeper are moved at or above this number, clear of
/// the numbers events get (the lowest free ones).
const KEPT_FDS_FROM: i32 = 512;

/// What a starting daemon works with.
pub struct Kept {
    pub keeper: KeeperClient,
    pub group: Group,
    pub table: InflightTable,
    pub fills: FillJournal,
    /// Events a previous daemon left unanswered.
    pub pending: Vec<Pending>,
    /// Fills it left between writing a chunk and putting the mtime back.
    pub interrupted: Vec<Interrupted>,
    /// Whether the group is new (no previous daemon's marks in it).
    pub fresh: bool,
}

/// Step 1: the keeper's group and table, or new ones handed to it. With
/// no keeper holding them (it died too), the service manager's fd store
/// may still have them: they are taken from there and given to a new
/// keeper. Whichever they are, they go to the fd store too when a service
/// manager runs the daemon, so that losing the keeper is never losing
/// the group its readers wait on.
pub fn acquire(tree: &Tree, exe: &Path) -> Result<Kept> {
    // Made here at the latest: /run starts empty at every boot.
    let run = RunDir::from_env();
    run.ensure()?;
    let id = &tree.config().id;
    let socket = run.keeper_socket(id);
    let keeper = match KeeperClient::connect(&socket)? {
        Some(k) => k,
        None => {
            KeeperClient::spawn(exe, &socket, &run.keeper_log(id)).context("starting the keeper")?
        }
    };
    let mut kept = KeptFds::from(keeper.get().context("taking the kept fds back")?)?;
    let mut from_manager = false;
    if kept.group.is_none() {
        let passed = KeptFds::from(
            crate::sys::systemd::take_passed_fds()
                .context("taking the fds the service manager kept")?,
        )?;
        if passed.group.is_some() {
            kept = passed;
            from_manager = true;
        }
    }
    let kept_for = match kept.tree.take() {
        Some(fd) => {
            let mem = SharedMemory::map(fd).context("mapping the kept tree record")?;
            // Before anything of it is used: the group may serve another
            // tree that has this tree's id (a copied .ebb).
            KeptFor::parse(mem.bytes())?.check(tree, keeper.pid().unwrap_or(0))?;
            Some(mem)
        }
        None => None,
    };
    if let (Some(group), Some(table), Some(fills)) = (kept.group, kept.table, kept.fills) {
        let group = Group::from_owned(group);
        let (table, pending) = InflightTable::open(SharedMemory::map(table)?)?;
        let (fills, interrupted) = FillJournal::open(SharedMemory::map(fills)?)?;
        tracing::info!(
            "took the group back from {} (keeper pid {}); {} event(s) left unanswered",
            if from_manager {
                "the service manager's fd store"
            } else {
                "the keeper"
            },
            keeper.pid().unwrap_or(0),
            pending.len()
        );
        // A keeper of an ebb before the record kept none: it gets one.
        let (kept_for, to_keeper) = match kept_for {
            Some(mem) => (mem, from_manager),
            None => (KeptFor::of(tree)?.write()?, true),
        };
        let kept = Kept {
            keeper,
            group,
            table,
            fills,
            pending,
            interrupted,
            fresh: false,
        };
        kept.hand_over(&kept_for, to_keeper)?;
        return Ok(kept);
    }
    let group = Group::new(InitOptions::pre_content()).context(
        "fanotify_init(FAN_CLASS_PRE_CONTENT) failed: ebb needs root and Linux 6.14 or later",
    )?;
    let group = Group::from_owned(fdtable::move_above(group.into_owned(), KEPT_FDS_FROM)?);
    let kept_for = KeptFor::of(tree)?.write()?;
    let kept = Kept {
        keeper,
        group,
        table: InflightTable::create()?,
        fills: FillJournal::create()?,
        pending: Vec::new(),
        interrupted: Vec::new(),
        fresh: true,
    };
    kept.hand_over(&kept_for, true)?;
    Ok(kept)
}

/// The fds a keeper (or the service manager) keeps, by name.
#[derive(Default)]
struct KeptFds {
    group: Option<OwnedFd>,
    table: Option<OwnedFd>,
    fills: Option<OwnedFd>,
    tree: Option<OwnedFd>,
}

impl KeptFds {
    /// Sorted out by name, each moved clear of event numbers; names not ebb's
    /// are ignored (a service manager may pass other fds).
    fn from(named: Vec<(String, OwnedFd)>) -> Result<KeptFds> {
        let mut kept = KeptFds::default();
        for (name, fd) in named {
            let slot = match name.as_str() {
                "group" => &mut kept.group,
                "inflight" => &mut kept.table,
                "fills" => &mut kept.fills,
                "tree" => &mut kept.tree,
                other => {
                    tracing::warn!("an fd named {other:?} was kept; ignored");
                    continue;
                }
            };
            *slot = Some(fdtable::move_above(fd, KEPT_FDS_FROM)?);
        }
        Ok(kept)
    }
}

impl Kept {
    /// Give the fds to the keeper (`to_keeper`: it does not hold them yet)
    /// and, under a service manager, to its fd store.
    fn hand_over(&self, kept_for: &SharedMemory, to_keeper: bool) -> Result<()> {
        self.fills
            .with_fd(|journal| {
                let fds: Vec<(&str, BorrowedFd<'_>)> = KEPT_NAMES
                    .into_iter()
                    .zip([self.group.as_fd(), self.table.fd(), journal, kept_for.fd()])
                    .collect();
                if to_keeper {
                    self.keeper
                        .put(&fds)
                        .context("handing the group to the keeper")?;
                }
                if crate::sys::systemd::is_managed() {
                    for &(name, fd) in &fds {
                        crate::sys::systemd::store_fd(name, fd).with_context(|| {
                            format!("keeping the {name} fd in the service manager's fd store")
                        })?;
                    }
                }
                Ok(())
            })
            .context("the fill journal's lock is poisoned")?
    }
}

/// The names [`Kept`]'s fds have in a keeper and in the service manager's
/// fd store: group, in-flight table, fill journal, tree record.
pub const KEPT_NAMES: [&str; 4] = ["group", "inflight", "fills", "tree"];

/// The tree a kept group serves, kept beside it (a small memfd of JSON):
/// a tree whose `.ebb` was copied from another has the other's id, and so
/// finds the other's keeper; its daemon must not take that group (it would
/// answer the other tree's readers, and leave its own unserved).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct KeptFor {
    root: PathBuf,
    /// The root directory's inode: a tree mounted again keeps it.
    root_ino: u64,
}

/// Most bytes a [`KeptFor`] record may hold (a path and a number).
const KEPT_FOR_MAX: usize = 8192;

impl KeptFor {
    fn of(tree: &Tree) -> Result<KeptFor> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(tree.root())
            .with_context(|| format!("reading {}", tree.root().display()))?;
        Ok(KeptFor {
            root: tree.root().to_path_buf(),
            root_ino: meta.ino(),
        })
    }

    /// As a memfd: a little-endian u32 length, then the JSON.
    fn write(&self) -> Result<SharedMemory> {
        let json = serde_json::to_vec(self)?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|&n| (n as usize) + 4 <= KEPT_FOR_MAX)
            .context("the tree's path is too long to keep")?;
        let mut mem = SharedMemory::create("ebb-tree", 4 + json.len())?;
        let bytes = mem.bytes_mut();
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..].copy_from_slice(&json);
        Ok(mem)
    }

    fn parse(bytes: &[u8]) -> Result<KeptFor> {
        let damaged = || {
            anyhow::anyhow!(
                "the keeper's tree record is damaged; stop the keeper and start the daemon again"
            )
        };
        let len = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(damaged)? as usize;
        let json = bytes
            .get(4..4 + len)
            .filter(|_| len <= KEPT_FOR_MAX)
            .ok_or_else(damaged)?;
        serde_json::from_slice(json).map_err(|_| damaged())
    }

    /// Refuse a group kept for another tree.
    fn check(&self, tree: &Tree, keeper_pid: u32) -> Result<()> {
        let here = KeptFor::of(tree)?;
        if *self == here {
            return Ok(());
        }
        anyhow::bail!(
            "the keeper (pid {keeper_pid}) of tree id {} holds the group of {}, not of {}: one tree's .ebb was copied from the other; give {} its own identity (move its .ebb away and run `ebb init` on it)",
            tree.config().id,
            self.root.display(),
            here.root.display(),
            here.root.display()
        )
    }
}

/// Put back the mtimes of files a dead daemon's fills left between writing
/// and restoring (see `failover::fills`).
pub fn restore_mtimes(tree: &Tree, interrupted: &[Interrupted]) -> Result<()> {
    let root = File::open(tree.root()).context("opening the tree root")?;
    for fill in interrupted {
        let Ok(fd) = open_by_handle(root.as_fd(), &fill.handle, libc::O_RDONLY) else {
            tracing::warn!(
                "a fill was cut short on a file that no longer exists; nothing to put back"
            );
            continue;
        };
        let file = File::from(fd);
        if crate::catalog::StatSnap::of(&file.metadata()?).mtime != fill.mtime {
            crate::sys::file::set_mtime(file.as_fd(), fill.mtime)
                .context("putting back the mtime of a file whose fill was cut short")?;
        }
    }
    Ok(())
}

/// Step 2: hold the numbers of the pending events.
pub fn reserve(pending: &[Pending]) -> Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    for p in pending {
        match fdtable::reserve(p.fd)? {
            Some(fd) => held.push(fd),
            // Ours already: no new event can get it either.
            None => tracing::debug!("fd {} of a pending event is open here already", p.fd),
        }
    }
    Ok(held)
}

/// What redriving did, for the log and `ebb bench failover`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Redriven {
    /// Events answered.
    pub events: usize,
    /// Of those, served through files found in /proc (no handle noted).
    pub found_by_pid: usize,
    /// Answered with EIO because their range could not be filled.
    pub denied: usize,
}

/// Step 3: finish every pending event.
pub fn redrive(
    tree: &Tree,
    catalog: &mut Catalog,
    store: &Store,
    group: &Group,
    table: &mut InflightTable,
    pending: Vec<Pending>,
) -> Result<Redriven> {
    let root = File::open(tree.root()).context("opening the tree root")?;
    let mut done = Redriven::default();
    for p in pending {
        let (start, count) = p.range.unwrap_or((0, u64::MAX));
        // A file whose handle is gone has nothing left to fill; an exec
        // whose program cannot be found any more gets EIO, not what may be
        // a stub's holes.
        let (files, mut response) = match &p.handle {
            Some(h) => match open_by_handle(root.as_fd(), h, libc::O_RDONLY) {
                Ok(fd) => (vec![File::from(fd)], Response::Allow),
                Err(e) => {
                    tracing::warn!(
                        "event {} of pid {} names a file that no longer exists ({e}); answered: there is nothing to fill",
                        p.fd,
                        p.pid
                    );
                    (Vec::new(), Response::Allow)
                }
            },
            None => {
                done.found_by_pid += 1;
                match files_of_process(p.pid) {
                    Some(files) => (files, Response::Allow),
                    None => {
                        tracing::warn!(
                            "event {} of pid {}: the program it is exec'ing is no regular file at its path any more (swapped?); it gets EIO",
                            p.fd,
                            p.pid
                        );
                        (Vec::new(), Response::DenyErrno(libc::EIO))
                    }
                }
            }
        };
        for file in files {
            if let Err(e) = fill_if_stub(&root, catalog, store, group, &file, start, count) {
                tracing::error!(
                    "redriving event {} of pid {}: {e:#}; the reader gets EIO",
                    p.fd,
                    p.pid
                );
                response = Response::DenyErrno(libc::EIO);
            }
        }
        if let Err(e) = group.respond(EventId(p.fd), response) {
            // ENOENT: the reader was killed meanwhile, or the dead daemon
            // answered just before dying. Either way nobody waits on it.
            tracing::debug!("answering redriven event {}: {e}", p.fd);
        }
        table.answered(p.fd);
        done.events += 1;
        if response != Response::Allow {
            done.denied += 1;
        }
    }
    Ok(done)
}

/// Fill `[start, start + count)` of `file` if the catalog has it as a
/// stub; do nothing for any other file, but fail for a file marked as a
/// stub the catalog does not hold (its reader gets EIO, not its holes).
fn fill_if_stub(
    root: &File,
    catalog: &mut Catalog,
    store: &Store,
    group: &Group,
    file: &File,
    start: u64,
    count: u64,
) -> Result<()> {
    let (handle, _) = handle_of(file.as_fd())?;
    let Some(mut rec) = catalog.file_by_handle(&handle)? else {
        if let Some(mark) = crate::catalog::stub_mark::get(file.as_fd())? {
            anyhow::bail!("a stub ({mark}) this tree's catalog does not hold");
        }
        return Ok(());
    };
    if rec.resident.is_complete() {
        return Ok(());
    }
    // Nothing reads events yet: a store on the tree's filesystem would make
    // this daemon wait on its own reads of the chunks. Silence them first.
    let manifest = &rec.version.manifest;
    for chunk in &manifest[chunks_overlapping(manifest, start, start.saturating_add(count.max(1)))]
    {
        if let Some(path) = store.local_path(&chunk.hash) {
            let _ = group.add_ignore_path(&path, crate::daemon::WATCHED, true);
        }
    }
    // Written through the tree's own mount: the file may have come from
    // a reader's read-only one.
    let quiet = File::from(fanotify::open_by_handle_nonotify(
        root.as_fd(),
        &handle,
        libc::O_RDWR,
    )?);
    // Taken over from a keeper: the stub's writers waited meanwhile.
    fill_range(
        catalog,
        store,
        &quiet,
        &mut rec,
        start..start.saturating_add(count.max(1)),
        false,
        &NoProgress,
    )
}

/// The regular files process `pid` has open or mapped, and the program it
/// is exec'ing, if it is blocked in `execve`; `None` if it is, and what its
/// path names now is no regular file (the program it opened cannot be
/// found: its event must not be let through to what may be a stub's holes).
fn files_of_process(pid: i32) -> Option<Vec<File>> {
    let exec = exec_target(pid);
    let mut files = Vec::new();
    if let Some(path) = exec {
        files.push(open_regular_file(&path)?);
    }
    let mut paths = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        paths.extend(fds.flatten().map(|e| e.path()));
    }
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        // Each mapping is reachable as /proc/PID/map_files/START-END.
        for line in maps.lines() {
            if let Some(range) = line.split_whitespace().next() {
                if line.contains('/') {
                    paths.push(PathBuf::from(format!("/proc/{pid}/map_files/{range}")));
                }
            }
        }
    }
    files.extend(paths.into_iter().filter_map(|p| open_regular_file(&p)));
    Some(files)
}

/// `path` opened for reading if it is a regular file, with nothing else
/// opened at all: first as an `O_PATH` fd (which opens no device and waits
/// on no FIFO), checked, then that very inode opened for reading through
/// it. A path another process named can be swapped under us between a
/// check by name and an open by name; not between these two.
fn open_regular_file(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()?;
    if !handle.metadata().ok()?.is_file() {
        return None;
    }
    File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).ok()
}

/// `execve(2)` and `execveat(2)` on x86-64 and aarch64.
#[cfg(target_arch = "x86_64")]
const EXEC_SYSCALLS: (i64, i64) = (59, 322);
#[cfg(target_arch = "aarch64")]
const EXEC_SYSCALLS: (i64, i64) = (221, 281);

/// The file process `pid` is exec'ing: an exec's first reads of its binary
/// happen before the binary is open in the fd table or mapped, so only the
/// syscall's own path argument names it (`/proc/PID/syscall`, and the
/// string read from `/proc/PID/mem`, still the old image's memory).
fn exec_target(pid: i32) -> Option<PathBuf> {
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = call.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let args: Vec<u64> = fields
        .take(6)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let (dirfd, name_at) = match nr {
        n if n == EXEC_SYSCALLS.0 => (libc::AT_FDCWD, *args.first()?),
        n if n == EXEC_SYSCALLS.1 => (*args.first()? as i32, *args.get(1)?),
        _ => return None,
    };
    let name = read_c_string(pid, name_at)?;
    let name = PathBuf::from(std::ffi::OsString::from_vec(name));
    if name.is_absolute() {
        return Some(name);
    }
    let base = if dirfd == libc::AT_FDCWD {
        PathBuf::from(format!("/proc/{pid}/cwd"))
    } else {
        PathBuf::from(format!("/proc/{pid}/fd/{dirfd}"))
    };
    Some(base.join(name))
}

/// A NUL-terminated string at `addr` in process `pid`'s memory.
fn read_c_string(pid: i32, addr: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = mem.read_at(&mut buf, addr).ok()?;
    let end = buf[..n].iter().position(|&b| b == 0)?;
    buf.truncate(end);
    Some(buf)
}

#[cfg(test)]
mod kept_for_tests {
    use super::*;

    #[test]
    fn a_kept_tree_record_reads_back_and_damage_is_refused() {
        let record = KeptFor {
            root: PathBuf::from("/data/x"),
            root_ino: 128,
        };
        let mem = record.write().expect("write");
        assert_eq!(KeptFor::parse(mem.bytes()).expect("parse"), record);
        for bad in [
            &b""[..],
            &[9, 0, 0, 0, b'{'][..],
            &[255, 255, 255, 255][..],
            &[2, 0, 0, 0, b'{', b'}'][..],
        ] {
            assert!(KeptFor::parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a regular file is opened; a FIFO (which would block a plain
    /// open), a device and a directory are not opened at all.
    #[test]
    fn only_regular_files_of_other_processes_are_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(open_regular_file(&file).is_some());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // With no writer, a plain open for reading would wait for good.
        assert!(open_regular_file(&fifo).is_none());
        assert!(open_regular_file(Path::new("/dev/null")).is_none());
        assert!(open_regular_file(dir.path()).is_none());
        assert!(open_regular_file(&dir.path().join("missing")).is_none());
    }

    use proptest::prelude::*;

    proptest! {
        /// The keeper's tree record, whatever bytes it holds: parsed or
        /// refused, no panic. `PROPTEST_CASES` cases (SECURITY.md).
        #[test]
        fn untrusted_tree_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = KeptFor::parse(&bytes);
        }

        #[test]
        fn untrusted_tree_records_round_trip(root in "/[^\\x00]{0,100}", root_ino in any::<u64>()) {
            let kept = KeptFor { root: PathBuf::from(root), root_ino };
            let json = serde_json::to_vec(&kept).expect("json");
            let mut bytes = (json.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&json);
            prop_assert_eq!(KeptFor::parse(&bytes).expect("parse"), kept);
            prop_assert!(KeptFor::parse(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
