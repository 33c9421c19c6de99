//! fanotify: groups, marks, the event reader (with info records) and
//! permission responses. See fanotify(7), fanotify_init(2), fanotify_mark(2).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::handle::HandleRef;

/// `FAN_PRE_ACCESS` (Linux 6.14): raised before a read or write of a range of
/// a file, with a range info record. Not yet in `libc`.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;
/// `FAN_OPEN_PERM`: permission to open a file.
pub const FAN_OPEN_PERM: u64 = libc::FAN_OPEN_PERM;
/// `FAN_OPEN`: a file was opened (notification).
pub const FAN_OPEN: u64 = libc::FAN_OPEN;
/// `FAN_Q_OVERFLOW`: the group's event queue overflowed.
pub const FAN_Q_OVERFLOW: u64 = libc::FAN_Q_OVERFLOW;
/// `FAN_EVENT_INFO_TYPE_RANGE`: info record with the accessed byte range.
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
/// `FANOTIFY_METADATA_VERSION` this reader understands.
const FANOTIFY_METADATA_VERSION: u8 = 3;
/// `FAN_ERRNO_SHIFT`: where `FAN_DENY_ERRNO(err)` puts the errno.
const FAN_ERRNO_SHIFT: u32 = 24;

/// Size of `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;

/// The class of a group, which decides which events it may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `FAN_CLASS_NOTIF`: notifications only.
    Notif,
    /// `FAN_CLASS_CONTENT`: permission events, after the content is final.
    Content,
    /// `FAN_CLASS_PRE_CONTENT`: permission events before content is
    /// accessed, including `FAN_PRE_ACCESS`.
    PreContent,
}

/// What a group reports and how events' fds are opened.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    pub class: Class,
    /// `FAN_NONBLOCK`: `read` returns `WouldBlock` instead of waiting.
    pub nonblock: bool,
    /// `FAN_UNLIMITED_QUEUE`: never drop events. A permission event that
    /// finds a full queue is *allowed* by the kernel, so every pre-content
    /// group must set this.
    pub unlimited_queue: bool,
    /// `open(2)` flags for the fds the kernel opens for events.
    pub event_open_flags: libc::c_int,
    /// Extra `FAN_REPORT_*` flags, e.g. `FAN_REPORT_DFID_NAME_TARGET` for a
    /// notification group that reports directories and names instead of
    /// fds (events then carry [`FidInfo`] records; no fds).
    pub report: libc::c_uint,
}

impl InitOptions {
    /// The options of ebb's populate-on-access group: pre-content class,
    /// unlimited queue and marks, event fds read-only.
    ///
    /// Read-only because the kernel opens each event's fd before the event
    /// can be read, and an open for writing fails for a running binary
    /// (`ETXTBSY`), an immutable file (`EPERM`) or a read through a
    /// read-only mount (`EROFS`): `read` then fails and the event is gone,
    /// already denied. Fills write through a fd of their own
    /// ([`open_by_handle_nonotify`]).
    pub fn pre_content() -> Self {
        InitOptions {
            class: Class::PreContent,
            nonblock: true,
            unlimited_queue: true,
            event_open_flags: libc::O_RDONLY | libc::O_LARGEFILE,
            report: 0,
        }
    }

    /// A notification group whose events name the directory and the entry
    /// (`FAN_REPORT_DFID_NAME_TARGET`; no fds): the change journal's.
    pub fn names() -> Self {
        InitOptions {
            class: Class::Notif,
            nonblock: true,
            unlimited_queue: false,
            event_open_flags: libc::O_RDONLY,
            report: libc::FAN_REPORT_DFID_NAME_TARGET,
        }
    }
}

/// The answer to a permission event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// `FAN_ALLOW`.
    Allow,
    /// `FAN_DENY`: the access fails with `EPERM`.
    Deny,
    /// `FAN_DENY_ERRNO(errno)` (Linux 6.14, pre-content groups): the access
    /// fails with this errno. The kernel accepts `EIO`, `EPERM`, `EBUSY`,
    /// `ETXTBSY`, `EAGAIN`, `ENOSPC` and `EDQUOT`.
    DenyErrno(i32),
}

impl Response {
    fn to_raw(self) -> u32 {
        match self {
            Response::Allow => libc::FAN_ALLOW,
            Response::Deny => libc::FAN_DENY,
            Response::DenyErrno(errno) => {
                let errno = u32::try_from(errno).unwrap_or(0) & 0xff;
                libc::FAN_DENY | (errno << FAN_ERRNO_SHIFT)
            }
        }
    }
}

/// The number the kernel uses to match a permission response to its event:
/// the event fd's number in the reading process. Answers are matched by this
/// number only, by whichever process writes them to the group, so it is kept
/// as plain data (it may be recorded, and answered after a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub i32);

impl EventId {
    /// The id of the event that came with `fd`.
    pub fn of(fd: &impl AsFd) -> EventId {
        EventId(fd.as_fd().as_raw_fd())
    }
}

/// One event read from a group.
#[derive(Debug)]
pub struct Event {
    /// The `FAN_*` bits of the event; unknown bits are kept.
    pub mask: u64,
    /// The file, opened by the kernel with the group's event flags and
    /// `FMODE_NONOTIFY`: access through it raises no events. `None` for
    /// `FAN_Q_OVERFLOW`.
    pub file: Option<OwnedFd>,
    /// The process (thread group) that caused the event.
    pub pid: i32,
    /// For `FAN_PRE_ACCESS`: the accessed range as (offset, count).
    pub range: Option<(u64, u64)>,
    /// File-handle records of a group with `FAN_REPORT_*FID*` flags.
    pub fids: Vec<FidInfo>,
}

/// `FAN_EVENT_INFO_TYPE_FID`: the object's own handle.
pub const INFO_FID: u8 = 1;
/// `FAN_EVENT_INFO_TYPE_DFID_NAME`: the parent directory and the name.
pub const INFO_DFID_NAME: u8 = 2;
/// `FAN_EVENT_INFO_TYPE_DFID`: the parent directory.
pub const INFO_DFID: u8 = 3;
/// `FAN_EVENT_INFO_TYPE_OLD_DFID_NAME`: where a `FAN_RENAME` came from.
pub const INFO_OLD_DFID_NAME: u8 = 10;
/// `FAN_EVENT_INFO_TYPE_NEW_DFID_NAME`: where a `FAN_RENAME` went.
pub const INFO_NEW_DFID_NAME: u8 = 12;

/// One `struct fanotify_event_info_fid` record: a file handle (of the
/// object, or of a directory), with the entry name for the `*_NAME` kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FidInfo {
    /// One of the `INFO_*` kinds above (others are kept as they come).
    pub kind: u8,
    /// The filesystem id (`__kernel_fsid_t`).
    pub fsid: [i32; 2],
    pub handle: crate::sys::handle::FileHandle,
    /// The name in the directory, without its NUL (raw bytes: a name need
    /// not be UTF-8).
    pub name: Option<Vec<u8>>,
}

impl Event {
    /// The number to answer this event with, if it is a permission event.
    pub fn id(&self) -> Option<EventId> {
        self.file.as_ref().map(|f| EventId(f.as_raw_fd()))
    }

    /// Whether the event asks for a response.
    pub fn is_permission(&self) -> bool {
        is_permission(self.mask)
    }
}

/// A fanotify group. Dropping it closes the group; the kernel then *allows*
/// every permission event still pending on it.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Group {
    /// `fanotify_init(2)`.
    #[doc(alias = "fanotify_init")]
    pub fn new(opts: InitOptions) -> io::Result<Group> {
        let mut flags = libc::FAN_CLOEXEC | libc::FAN_UNLIMITED_MARKS | opts.report;
        flags |= match opts.class {
            Class::Notif => libc::FAN_CLASS_NOTIF,
            Class::Content => libc::FAN_CLASS_CONTENT,
            Class::PreContent => libc::FAN_CLASS_PRE_CONTENT,
        };
        if opts.nonblock {
            flags |= libc::FAN_NONBLOCK;
        }
        if opts.unlimited_queue {
            flags |= libc::FAN_UNLIMITED_QUEUE;
        }
        let event_flags = opts.event_open_flags | libc::O_CLOEXEC;
        // SAFETY: plain syscall on integers; returns a new fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, event_flags as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Group { fd })
    }

    /// Wrap a group fd received from elsewhere (a keeper, the fd store).
    pub fn from_owned(fd: OwnedFd) -> Group {
        Group { fd }
    }

    /// Give up the group fd (to hand it to a keeper).
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }

    fn mark_raw(
        &self,
        flags: libc::c_uint,
        mask: u64,
        dirfd: RawFd,
        path: Option<&Path>,
    ) -> io::Result<()> {
        let cpath = path
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ptr = cpath.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: `ptr` is null or a NUL-terminated string that outlives the
        // call; the fds are valid for the duration of the call.
        let rc = unsafe { libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask, dirfd, ptr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Add `mask` on the whole filesystem that holds `path`
    /// (`FAN_MARK_FILESYSTEM`).
    pub fn mark_filesystem(&self, path: &Path, mask: u64) -> io::Result<()> {
        self.mark_raw(
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            mask,
            libc::AT_FDCWD,
            Some(path),
        )
    }

    /// Arm the filesystem of `path` at no measurable cost: an ignore-only
    /// filesystem mark for `mask` (`FAN_MARK_IGNORE`, surviving writes)
    /// raises no event, but every file opened from now on is opened so that
    /// a real mark for `mask` added later covers it (whether a file raises
    /// pre-content events is decided when it is opened).
    pub fn arm_filesystem(&self, path: &Path, mask: u64) -> io::Result<()> {
        self.mark_raw(
            libc::FAN_MARK_ADD
                | libc::FAN_MARK_FILESYSTEM
                | libc::FAN_MARK_IGNORE
                | libc::FAN_MARK_IGNORED_SURV_MODIFY,
            mask,
            libc::AT_FDCWD,
            Some(path),
        )
    }

    /// Remove the ignore mask [`Group::arm_filesystem`] added.
    pub fn disarm_filesystem(&self, path: &Path, mask: u64) -> io::Result<()> {
        self.mark_raw(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM | libc::FAN_MARK_IGNORE,
            mask,
            libc::AT_FDCWD,
            Some(path),
        )
    }

    /// The filesystem marks of this group as the kernel lists them in
    /// `/proc/self/fdinfo/<group fd>`: a mark the kernel dropped (its
    /// filesystem was unmounted) is not there, and no event says so.
    pub fn filesystem_marks(&self) -> io::Result<Vec<SbMark>> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd()))?;
        Ok(info.lines().filter_map(SbMark::parse).collect())
    }

    /// Remove `mask` from the filesystem mark on `path`'s filesystem.
    pub fn unmark_filesystem(&self, path: &Path, mask: u64) -> io::Result<()> {
        self.mark_raw(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
            mask,
            libc::AT_FDCWD,
            Some(path),
        )
    }

    /// Add `mask` on the inode of `file`.
    pub fn mark_inode(&self, file: BorrowedFd<'_>, mask: u64) -> io::Result<()> {
        self.mark_raw(libc::FAN_MARK_ADD, mask, file.as_raw_fd(), None)
    }

    /// Ignore `mask` on the inode of `file` (`FAN_MARK_IGNORE`), also after
    /// the file is written (`FAN_MARK_IGNORED_SURV_MODIFY`). An `evictable`
    /// mark does not pin the inode: the kernel may drop it with the inode,
    /// which costs one more event later, never a missed one.
    pub fn add_ignore(&self, file: BorrowedFd<'_>, mask: u64, evictable: bool) -> io::Result<()> {
        let mut flags =
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE | libc::FAN_MARK_IGNORED_SURV_MODIFY;
        if evictable {
            flags |= libc::FAN_MARK_EVICTABLE;
        }
        self.mark_raw(flags, mask, file.as_raw_fd(), None)
    }

    /// Ignore `mask` on the inode of `file` until the file is next
    /// modified: the kernel clears the ignore mask at the first
    /// `FS_MODIFY` and delivers that event (no
    /// `FAN_MARK_IGNORED_SURV_MODIFY`).
    pub fn add_ignore_until_modified(
        &self,
        file: BorrowedFd<'_>,
        mask: u64,
        evictable: bool,
    ) -> io::Result<()> {
        let mut flags = libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE;
        if evictable {
            flags |= libc::FAN_MARK_EVICTABLE;
        }
        self.mark_raw(flags, mask, file.as_raw_fd(), None)
    }

    /// [`Group::add_ignore`] on the file at `path` (not following a final
    /// symlink), without opening it. Opening and closing a file drops every
    /// POSIX lock this process holds on it, SQLite's among them.
    pub fn add_ignore_path(&self, path: &Path, mask: u64, evictable: bool) -> io::Result<()> {
        let mut flags = libc::FAN_MARK_ADD
            | libc::FAN_MARK_IGNORE
            | libc::FAN_MARK_IGNORED_SURV_MODIFY
            | libc::FAN_MARK_DONT_FOLLOW;
        if evictable {
            flags |= libc::FAN_MARK_EVICTABLE;
        }
        self.mark_raw(flags, mask, libc::AT_FDCWD, Some(path))
    }

    /// Remove `mask` from the inode mark of `file`. A file that has none is
    /// not an error.
    pub fn unmark_inode(&self, file: BorrowedFd<'_>, mask: u64) -> io::Result<()> {
        match self.mark_raw(libc::FAN_MARK_REMOVE, mask, file.as_raw_fd(), None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Remove an ignore mark added by [`Group::add_ignore`]. A file that has
    /// none is not an error.
    pub fn remove_ignore(&self, file: BorrowedFd<'_>, mask: u64) -> io::Result<()> {
        match self.mark_raw(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORE,
            mask,
            file.as_raw_fd(),
            None,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Read the events that are ready into `buf` and parse them. Returns an
    /// empty list when a non-blocking group has nothing (`EAGAIN`).
    pub fn read_events(&self, buf: &mut EventBuffer) -> io::Result<Vec<Event>> {
        self.read_raw(buf.bytes_mut())
    }

    /// Like [`Group::read_events`], but the kernel writes the events into
    /// `buf` (8-byte aligned, e.g. a slot of a shared-memory table), where
    /// their fd numbers stay readable after this process dies. The unused
    /// tail of `buf` is zeroed first so [`parse_records`] knows where the
    /// events end even if the read's return value is lost.
    pub fn read_into(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        if buf.as_ptr().align_offset(8) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned event buffer",
            ));
        }
        buf.fill(0);
        self.read_raw(buf)
    }

    /// One `read(2)` of the events that are ready into `buf`, parsed.
    fn read_raw(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        let n = self.read_bytes(buf)?;
        take_events(&buf[..n])
    }

    /// Read the events that are ready into `buf` and look at them where
    /// they lie, nothing copied or allocated: for a notification group that
    /// reports file handles ([`InitOptions::names`]), whose events carry no
    /// fd (one that came anyway is closed). Empty when a non-blocking group
    /// has nothing.
    pub fn read_named<'b>(&self, buf: &'b mut EventBuffer) -> io::Result<NamedEvents<'b>> {
        let n = self.read_bytes(buf.bytes_mut())?;
        let bytes = &buf.bytes_mut()[..n];
        let mut records = RawRecords::new(bytes);
        for r in records.by_ref() {
            if r.fd >= 0 {
                // SAFETY: the kernel installed this fd in our table during
                // the read that filled `bytes`, and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(r.fd) });
            }
        }
        if let Some(msg) = records.bad {
            tracing::error!("{msg}; the events before it are kept");
        }
        Ok(NamedEvents(RawRecords::new(bytes)))
    }

    /// One `read(2)` into `buf`: how many bytes came (0 for `EAGAIN`).
    fn read_bytes(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Answer the permission event numbered `id` (`struct
    /// fanotify_response`). Any holder of the group may answer any event.
    pub fn respond(&self, id: EventId, response: Response) -> io::Result<()> {
        let resp = libc::fanotify_response {
            fd: id.0,
            response: response.to_raw(),
        };
        let len = std::mem::size_of::<libc::fanotify_response>();
        // SAFETY: writes `len` bytes from a live, initialised struct.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&resp as *const libc::fanotify_response).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A filesystem mark as `/proc/self/fdinfo` lists it:
/// `fanotify sdev:<s_dev> mflags:<flags> mask:<mask> ignored_mask:<mask>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbMark {
    /// The superblock's device (the kernel's `dev_t`: major << 20 | minor).
    pub sdev: u64,
    pub mask: u64,
    pub ignored_mask: u64,
}

impl SbMark {
    fn parse(line: &str) -> Option<SbMark> {
        let rest = line.strip_prefix("fanotify sdev:")?;
        let mut fields = rest.split_whitespace();
        let hex = |v: Option<&str>, key: &str| u64::from_str_radix(v?.strip_prefix(key)?, 16).ok();
        let sdev = u64::from_str_radix(fields.next()?, 16).ok()?;
        let _flags = fields.next()?;
        Some(SbMark {
            sdev,
            mask: hex(fields.next(), "mask:")?,
            ignored_mask: hex(fields.next(), "ignored_mask:")?,
        })
    }

    /// Whether this is the mark of the filesystem `st_dev` (as `stat`
    /// gives it) names.
    pub fn is_of(&self, st_dev: u64) -> bool {
        let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
        self.sdev == (u64::from(major) << 20 | u64::from(minor))
    }
}

/// A read buffer for fanotify events, 8-byte aligned as the metadata needs.
pub struct EventBuffer {
    words: Vec<u64>,
}

impl EventBuffer {
    /// A buffer of `bytes` bytes (rounded up to 8).
    pub fn new(bytes: usize) -> EventBuffer {
        EventBuffer {
            words: vec![0u64; bytes.div_ceil(8).max(METADATA_LEN / 8)],
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: a `[u64]` of n elements is 8n initialised bytes; u8 has no
        // alignment or validity requirements, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }
}

impl Default for EventBuffer {
    fn default() -> Self {
        EventBuffer::new(64 * 1024)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

/// One event as the kernel wrote it, fd as a plain number: what a buffer
/// filled by a daemon that has since died still tells (see
/// [`parse_records`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub mask: u64,
    /// The event's fd number in the reading process, or negative.
    pub fd: i32,
    pub pid: i32,
    pub range: Option<(u64, u64)>,
    pub fids: Vec<FidInfo>,
}

impl Record {
    /// Whether the event asks for a response.
    pub fn is_permission(&self) -> bool {
        is_permission(self.mask)
    }
}

fn is_permission(mask: u64) -> bool {
    mask & (FAN_PRE_ACCESS | FAN_OPEN_PERM | libc::FAN_ACCESS_PERM | libc::FAN_OPEN_EXEC_PERM) != 0
}

/// Parse the events in a buffer filled by `read(2)` on a group, stopping
/// at the first record that is not a whole, well-formed event (a buffer
/// zeroed before the read ends there). Returns the error that stopped it,
/// if the stop was not at the end or at zeros.
pub fn parse_records(b: &[u8]) -> (Vec<Record>, Option<&'static str>) {
    let mut raw = RawRecords::new(b);
    let records = raw
        .by_ref()
        .map(|r| Record {
            mask: r.mask,
            fd: r.fd,
            pid: r.pid,
            range: parse_range(r.info),
            fids: parse_fids(r.info),
        })
        .collect();
    (records, raw.bad)
}

/// One event's metadata, and its info records unparsed.
struct RawRecord<'a> {
    mask: u64,
    fd: i32,
    pid: i32,
    info: &'a [u8],
}

/// The events of a buffer, in place, up to the first that is not a whole,
/// well-formed event (then `bad` says why, unless it was zeros).
struct RawRecords<'a> {
    rest: &'a [u8],
    bad: Option<&'static str>,
}

impl<'a> RawRecords<'a> {
    fn new(b: &'a [u8]) -> RawRecords<'a> {
        RawRecords { rest: b, bad: None }
    }
}

impl<'a> Iterator for RawRecords<'a> {
    type Item = RawRecord<'a>;

    fn next(&mut self) -> Option<RawRecord<'a>> {
        let b = self.rest;
        if b.len() < METADATA_LEN {
            return None;
        }
        let event_len = u32_at(b, 0) as usize;
        let metadata_len = u16_at(b, 6) as usize;
        let bad = if event_len == 0 {
            None
        } else if event_len < METADATA_LEN || event_len > b.len() || metadata_len < METADATA_LEN {
            Some("fanotify event length out of bounds")
        } else if b[4] != FANOTIFY_METADATA_VERSION {
            Some("unknown fanotify metadata version")
        } else {
            self.rest = &b[event_len..];
            return Some(RawRecord {
                mask: u64_at(b, 8),
                fd: u32_at(b, 16) as i32,
                pid: u32_at(b, 20) as i32,
                info: &b[metadata_len.min(event_len)..event_len],
            });
        };
        (self.rest, self.bad) = (&[], bad);
        None
    }
}

/// The events of one [`Group::read_named`], in the order they came.
pub struct NamedEvents<'a>(RawRecords<'a>);

impl<'a> Iterator for NamedEvents<'a> {
    type Item = NamedEvent<'a>;

    fn next(&mut self) -> Option<NamedEvent<'a>> {
        self.0.next().map(|r| NamedEvent {
            mask: r.mask,
            info: r.info,
        })
    }
}

/// An event of a group that reports file handles, where it lies in the
/// read buffer.
#[derive(Clone, Copy, Debug)]
pub struct NamedEvent<'a> {
    /// The `FAN_*` bits of the event.
    pub mask: u64,
    info: &'a [u8],
}

impl<'a> NamedEvent<'a> {
    /// Its file-handle record of `kind` (one of the `INFO_*` kinds).
    pub fn fid(&self, kind: u8) -> Option<Fid<'a>> {
        self.fids().find(|f| f.kind == kind)
    }

    /// Its file-handle records, in the order they came.
    pub fn fids(&self) -> impl Iterator<Item = Fid<'a>> {
        fid_records(self.info)
    }
}

/// A [`FidInfo`] where it lies in the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fid<'a> {
    pub kind: u8,
    pub fsid: [i32; 2],
    pub handle: HandleRef<'a>,
    /// The name in the directory, without its NUL.
    pub name: Option<&'a [u8]>,
}

impl From<Fid<'_>> for FidInfo {
    fn from(f: Fid<'_>) -> FidInfo {
        FidInfo {
            kind: f.kind,
            fsid: f.fsid,
            handle: f.handle.to_owned(),
            name: f.name.map(<[u8]>::to_vec),
        }
    }
}

/// Parse a buffer just filled by `read(2)` on a group in this process and
/// take every fd in it into an `OwnedFd`, exactly once, so none leaks.
fn take_events(b: &[u8]) -> io::Result<Vec<Event>> {
    let (records, bad) = parse_records(b);
    if let Some(msg) = bad {
        if records.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        tracing::error!("{msg}; the events before it are kept");
    }
    Ok(records
        .into_iter()
        .map(|r| Event {
            mask: r.mask,
            // SAFETY: the kernel installed this fd in our table for this
            // event during the read that filled `b`, and nobody else owns
            // it; callers pass each freshly read buffer here exactly once.
            file: (r.fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r.fd) }),
            pid: r.pid,
            range: r.range,
            fids: r.fids,
        })
        .collect())
}

/// Find the range record (`struct fanotify_event_info_range`: header, u32
/// pad, u64 offset, u64 count) among an event's info records.
fn parse_range(mut info: &[u8]) -> Option<(u64, u64)> {
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16_at(info, 2) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        if kind == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
            return Some((u64_at(info, 8), u64_at(info, 16)));
        }
        info = &info[len..];
    }
    None
}

/// The file-handle records among an event's info records. A record that
/// does not hold together ends the list (what came before is kept).
fn parse_fids(info: &[u8]) -> Vec<FidInfo> {
    fid_records(info).map(FidInfo::from).collect()
}

/// The file-handle records among an event's info records, in place. A
/// record that does not hold together ends them.
fn fid_records(mut info: &[u8]) -> impl Iterator<Item = Fid<'_>> {
    std::iter::from_fn(move || loop {
        if info.len() < 4 {
            return None;
        }
        let kind = info[0];
        let len = u16_at(info, 2) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let rec = &info[..len];
        info = &info[len..];
        if matches!(
            kind,
            INFO_FID | INFO_DFID_NAME | INFO_DFID | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
        ) {
            let fid = fid_at(kind, rec);
            if fid.is_none() {
                info = &[];
            }
            return fid;
        }
    })
}

/// The file-handle record `rec` of `kind`, if it holds together.
fn fid_at(kind: u8, rec: &[u8]) -> Option<Fid<'_>> {
    // header (4) | fsid (8) | handle_bytes u32 | handle_type i32 | f_handle | [name NUL]
    if rec.len() < 20 {
        return None;
    }
    let handle_len = u32_at(rec, 12) as usize;
    let handle = rec.get(20..20 + handle_len)?;
    let name = match kind {
        INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME => {
            let tail = &rec[20 + handle_len..];
            tail.iter().position(|&c| c == 0).map(|end| &tail[..end])
        }
        _ => None,
    };
    Some(Fid {
        kind,
        fsid: [u32_at(rec, 4) as i32, u32_at(rec, 8) as i32],
        handle: HandleRef {
            handle_type: u32_at(rec, 16) as i32,
            bytes: handle,
        },
        name,
    })
}

/// Open `file` again with `flags` as an fd that raises no fanotify events
/// (`FMODE_NONOTIFY`), the kind the kernel gives fanotify listeners.
///
/// ebb writes released content through such fds, so its own writes neither
/// wait on its own daemon nor look like user changes. The fd comes from a
/// notification group of this process's, one per set of `flags`, that
/// watches `FAN_OPEN` on the inode while we open it once more through
/// `/proc/self/fd`.
///
/// The group lives as long as the process: closing a group waits until
/// every permission event that was raised while one of its marks was on
/// the file has been answered (the kernel pins those marks), and the
/// daemon answers its events on the very thread that reopens files.
pub fn reopen_nonotify(file: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static REOPENERS: OnceLock<Mutex<HashMap<libc::c_int, Group>>> = OnceLock::new();
    let mut reopeners = REOPENERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let group = match reopeners.entry(flags) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(Group::new(InitOptions {
            class: Class::Notif,
            nonblock: true,
            unlimited_queue: false,
            event_open_flags: flags | libc::O_LARGEFILE,
            report: 0,
        })?),
    };
    group.mark_inode(file, FAN_OPEN)?;
    let reopened = open_through_event(group, file);
    if let Err(e) = group.mark_raw(libc::FAN_MARK_REMOVE, FAN_OPEN, file.as_raw_fd(), None) {
        tracing::warn!("removing a reopen mark: {e}");
    }
    reopened
}

/// Open `file` through `/proc/self/fd` and take, from the events `group`
/// queued, an fd of the same inode. Our open's event is queued by the time
/// `open(2)` returns; one of a concurrent opener of the same inode serves
/// as well. Events of other inodes (left by earlier reopens) are dropped,
/// and so is one whose fd the kernel could not open (its read fails).
fn open_through_event(group: &Group, file: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let want = crate::sys::file::dev_ino(file)?;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    drop(std::fs::File::open(proc_path)?);
    let mut buf = EventBuffer::new(4096);
    let mut failed = None;
    loop {
        match group.read_events(&mut buf) {
            Ok(events) if events.is_empty() => {
                return Err(failed.unwrap_or_else(|| {
                    io::Error::other("no open event arrived for the reopened file")
                }))
            }
            Ok(events) => {
                for fd in events.into_iter().filter_map(|e| e.file) {
                    if crate::sys::file::dev_ino(fd.as_fd())? == want {
                        return Ok(fd);
                    }
                }
            }
            Err(e) => failed = Some(e),
        }
    }
}

/// Open the file named by `handle` on the filesystem of `mount` with
/// `flags`, as an fd that raises no fanotify events (see
/// [`reopen_nonotify`]). Through `mount`, not through the path an event
/// came by: a reader's read-only bind mount must not stop ebb from
/// filling the file.
pub fn open_by_handle_nonotify(
    mount: BorrowedFd<'_>,
    handle: &crate::sys::handle::FileHandle,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let plain = crate::sys::handle::open_by_handle(mount, handle, libc::O_RDONLY)?;
    reopen_nonotify(plain.as_fd(), flags)
}

#[cfg(test)]
mod tests;
