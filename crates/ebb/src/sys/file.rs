//! File operations ebb needs that `std` does not offer: punching holes,
//! leases, extended attributes, times, the inode generation, `SIGIO`, a
//! write that cannot grow a file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`: free the blocks of
/// a range; the file keeps its size and the range reads as zeros.
#[doc(alias = "fallocate")]
pub fn punch_hole(file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a valid fd and integers.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kind of lease to take with [`set_lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// `F_RDLCK`.
    Read,
    /// `F_WRLCK`: granted only while no other fd of the file is open
    /// anywhere; the proof that nobody else has the file open.
    Write,
    /// `F_UNLCK`: give the lease up.
    Unlock,
}

/// `fcntl(F_SETLEASE)`. A write lease fails with `EAGAIN` while any other fd
/// of the file is open. A holder is sent `SIGIO` when someone opens the file;
/// call [`ignore_sigio`] first, as its default action kills the process.
#[doc(alias = "F_SETLEASE")]
pub fn set_lease(file: BorrowedFd<'_>, lease: Lease) -> io::Result<()> {
    let arg = match lease {
        Lease::Read => libc::F_RDLCK,
        Lease::Write => libc::F_WRLCK,
        Lease::Unlock => libc::F_UNLCK,
    };
    // SAFETY: plain fcntl on a valid fd with an integer argument.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignore `SIGIO` in this process, so a lease break cannot kill it.
pub fn ignore_sigio() -> io::Result<()> {
    // SAFETY: installs SIG_IGN, which runs no code in the handler context.
    let prev = unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn xattr_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `fgetxattr(2)`. `Ok(None)` when the attribute does not exist.
pub fn get_xattr(file: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let cname = xattr_name(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes; `cname` is NUL-terminated.
        let n = unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

/// `openat2(2)` of `rel` beneath the directory `dir` for reading, never
/// leaving it, following no symlink (of any component), crossing no mount,
/// and opening no FIFO or device in a way that waits: the file a path
/// names inside a tree, with no chance that another user swapped a
/// component for a symlink to somewhere else. `ELOOP`: a symlink on the
/// way; `EXDEV`: a mount on the way, or the path leaves `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &std::path::Path) -> io::Result<std::fs::File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::FromRawFd;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = openat2(dir.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // Non-blocking only so the open itself could not wait: reads of the
    // file wait as they always do (for a daemon's fill, say).
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// Device and inode of the open file (`fstat(2)`): what tells two fds of
/// one file apart from fds of two.
pub fn dev_ino(file: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(file.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// `fsetxattr(2)`, creating or replacing the attribute.
pub fn set_xattr(file: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = xattr_name(name)?;
    // SAFETY: `value` is readable for its length; `cname` is NUL-terminated.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fremovexattr(2)`. Removing an attribute that does not exist is not an
/// error.
pub fn remove_xattr(file: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let cname = xattr_name(name)?;
    // SAFETY: `cname` is NUL-terminated; the fd is valid.
    let rc = unsafe { libc::fremovexattr(file.as_raw_fd(), cname.as_ptr()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// A timestamp as the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: i64,
}

impl Timestamp {
    /// For [`set_mtime`]: the current time (`UTIME_NOW`).
    pub const NOW: Timestamp = Timestamp {
        sec: 0,
        nsec: libc::UTIME_NOW,
    };
}

/// `futimens(2)`: set the modification time, leaving the access time as it
/// is (`UTIME_OMIT`).
pub fn set_mtime(file: BorrowedFd<'_>, mtime: Timestamp) -> io::Result<()> {
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.sec,
            tv_nsec: mtime.nsec,
        },
    ];
    // SAFETY: `ts` is an array of two initialised timespecs.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), ts.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `FS_IOC_GETVERSION`: the inode's generation number, which tells a reused
/// inode number from the file it once was. `Ok(0)` where the filesystem does
/// not report one.
#[doc(alias = "FS_IOC_GETVERSION")]
pub fn inode_generation(file: BorrowedFd<'_>) -> io::Result<u64> {
    const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
    let mut gen: libc::c_long = 0;
    // SAFETY: the ioctl writes one `long` through the pointer we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION as _, &mut gen) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) => Ok(0),
            _ => Err(err),
        };
    }
    Ok(gen as u64)
}

/// `lseek(SEEK_DATA)`: the first byte at or after `offset` that is data,
/// `None` if only a hole follows.
pub fn seek_data(file: BorrowedFd<'_>, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

/// `lseek(SEEK_HOLE)`: the first byte at or after `offset` in a hole (the
/// end of the file counts as one).
pub fn seek_hole(file: BorrowedFd<'_>, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_HOLE)
}

fn seek(file: BorrowedFd<'_>, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::lseek64(file.as_raw_fd(), off, whence) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(rc as u64))
}

/// Write `data` at `offset` of `file` without ever making the file longer,
/// even when another process cuts it while this runs: bytes that would
/// land at or past the end are not written. The number of bytes written
/// from the start of `data`: fewer only where the file ends first.
///
/// `pwrite` grows a file cut behind the caller's back (a truncate between
/// its `fstat` and its write), and no flag stops it; a store through a
/// shared mapping cannot, since a page past the end faults. The kernel
/// does the copy into the mapping (`process_vm_readv` on this process),
/// so such a fault ends it short with `EFAULT` instead of raising
/// `SIGBUS`. A fault inside the file (no space left for a page, an I/O
/// error) is an error.
pub fn write_within_size(file: BorrowedFd<'_>, offset: u64, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?.map_or(4096, |p| p as u64);
    let lead = (offset % page) as usize;
    let map = SharedMapping::new(file, offset - lead as u64, lead + data.len())?;
    let copied = copy_into(&map, lead, data)?;
    if copied == data.len() {
        return Ok(copied);
    }
    let size = nix::sys::stat::fstat(file.as_raw_fd())?.st_size as u64;
    let stopped_at = offset + copied as u64;
    if stopped_at < size {
        return Err(io::Error::other(format!(
            "a write stopped at byte {stopped_at}, inside the file (no space left, or an I/O error)"
        )));
    }
    Ok(size.saturating_sub(offset).min(copied as u64) as usize)
}

/// A `MAP_SHARED` writable mapping of a range of a file, unmapped on drop.
/// Nothing in this process touches it but the kernel's copy in
/// [`copy_into`], which turns a fault into a short count.
struct SharedMapping {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl SharedMapping {
    fn new(file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let length = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let offset =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        // SAFETY: a new mapping at an address the kernel picks overlaps
        // nothing of ours; it is only handed to the kernel, never read or
        // written from here (its pages past the file's end would fault).
        let addr = unsafe {
            nix::sys::mman::mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                offset,
            )
        }?;
        Ok(Self { addr, len })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no reference
        // into it exists.
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.addr, self.len) } {
            tracing::warn!("unmapping a fill's mapping: {e}");
        }
    }
}

/// Copy `data` into `map` at `at` in the kernel; how much was copied before
/// a page faulted (or all of it).
fn copy_into(map: &SharedMapping, at: usize, data: &[u8]) -> io::Result<usize> {
    assert!(at + data.len() <= map.len, "the copy fits the mapping");
    let mut copied = 0;
    while copied < data.len() {
        let local = libc::iovec {
            // Within the mapping (checked above).
            iov_base: map
                .addr
                .as_ptr()
                .cast::<u8>()
                .wrapping_add(at + copied)
                .cast(),
            iov_len: data.len() - copied,
        };
        let remote = libc::iovec {
            iov_base: data[copied..].as_ptr().cast_mut().cast(),
            iov_len: data.len() - copied,
        };
        // SAFETY: one iovec each, both valid for their lengths: the kernel
        // reads `data` (this process's memory, which it only reads) and
        // writes the mapping, reporting a fault as a short count or EFAULT.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match n {
            n if n > 0 => copied += n as usize,
            0 => break,
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EFAULT) {
                    break;
                }
                return Err(err);
            }
        }
    }
    Ok(copied)
}

/// Point stdout at `/dev/null` (a background daemon's parent stops
/// reading it once the daemon is ready).
pub fn stdout_to_devnull() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), libc::STDOUT_FILENO)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn file_of(len: usize) -> std::fs::File {
        let f = tempfile::tempfile_in("/var/tmp").expect("tempfile");
        f.set_len(len as u64).expect("size");
        f
    }

    #[test]
    fn a_write_within_size_writes_inside_the_file() {
        let f = file_of(100_000);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let n = write_within_size(f.as_fd(), 12_345, &data).expect("write");
        assert_eq!(n, data.len());
        let back = std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("read");
        assert_eq!(back.len(), 100_000);
        assert_eq!(&back[12_345..62_345], &data[..]);
        assert!(back[..12_345]
            .iter()
            .chain(&back[62_345..])
            .all(|&b| b == 0));
        assert_eq!(write_within_size(f.as_fd(), 7, b"").expect("empty"), 0);
    }

    #[test]
    fn a_write_within_size_stops_at_the_end_and_never_grows_the_file() {
        let f = file_of(45_960);
        let data = vec![9u8; 1 << 20];
        assert_eq!(
            write_within_size(f.as_fd(), 40_960, &data).expect("write"),
            5_000
        );
        assert_eq!(
            write_within_size(f.as_fd(), 1 << 20, &data).expect("past"),
            0
        );
        let back = std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("read");
        assert_eq!(back.len(), 45_960, "the file did not grow");
        assert!(back[40_960..].iter().all(|&b| b == 9));
        f.set_len(60_000).expect("grow");
        let back = std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("read");
        assert!(
            back[45_960..].iter().all(|&b| b == 0),
            "nothing lay past the end"
        );
    }

    /// The race `pwrite` loses: a cut to 0 just before or while the write
    /// runs. 300 trials of a 4 MiB write started with an `ftruncate(0)`;
    /// with `pwrite` in its place the first trial already ends with the
    /// file grown back.
    #[test]
    fn a_write_within_size_racing_a_cut_never_grows_the_file() {
        let data = vec![5u8; 4 << 20];
        for trial in 0..300 {
            let f = file_of(data.len());
            let cutter = f.try_clone().expect("dup");
            let go = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    go.store(true, std::sync::atomic::Ordering::SeqCst);
                    cutter.set_len(0).expect("cut")
                });
                while !go.load(std::sync::atomic::Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
                write_within_size(f.as_fd(), 0, &data).expect("write");
            });
            let len = f.metadata().expect("stat").len();
            assert_eq!(len, 0, "trial {trial}: the cut file grew back to {len}");
        }
    }

    #[test]
    fn punch_hole_keeps_size_and_reads_zeros() {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(&vec![7u8; 1 << 20]).expect("write");
        punch_hole(f.as_fd(), 0, 1 << 20).expect("punch");
        assert_eq!(f.metadata().expect("stat").len(), 1 << 20);
        let data = std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("read");
        assert!(data.iter().all(|&b| b == 0));
        assert_eq!(seek_data(f.as_fd(), 0).expect("seek"), None);
    }

    #[test]
    fn xattr_roundtrip_and_missing() {
        let f = tempfile::NamedTempFile::new_in("/var/tmp").expect("tempfile");
        let fd = f.as_file().as_fd();
        assert_eq!(get_xattr(fd, "user.ebb.test").expect("get"), None);
        set_xattr(fd, "user.ebb.test", b"hello").expect("set");
        assert_eq!(
            get_xattr(fd, "user.ebb.test").expect("get").as_deref(),
            Some(&b"hello"[..])
        );
        remove_xattr(fd, "user.ebb.test").expect("remove");
        remove_xattr(fd, "user.ebb.test").expect("remove twice");
        assert_eq!(get_xattr(fd, "user.ebb.test").expect("get"), None);
    }

    #[test]
    fn write_lease_refused_while_another_fd_is_open() {
        ignore_sigio().expect("sigio");
        let f = tempfile::NamedTempFile::new_in("/var/tmp").expect("tempfile");
        let own = std::fs::OpenOptions::new()
            .read(true)
            .open(f.path())
            .expect("open");
        // The NamedTempFile's own fd is open too.
        let err = set_lease(own.as_fd(), Lease::Write).expect_err("another fd is open");
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
        let (other, path) = f.keep().expect("keep");
        drop(other);
        set_lease(own.as_fd(), Lease::Write).expect("only fd now");
        set_lease(own.as_fd(), Lease::Unlock).expect("unlock");
        std::fs::remove_file(path).expect("cleanup");
    }

    #[test]
    fn times_are_set_to_the_nanosecond() {
        let f = tempfile::tempfile().expect("tempfile");
        let t = Timestamp {
            sec: 1_600_000_000,
            nsec: 123_456_789,
        };
        use std::os::unix::fs::MetadataExt;
        let atime = f.metadata().expect("stat").atime();
        set_mtime(f.as_fd(), t).expect("futimens");
        let m = f.metadata().expect("stat");
        assert_eq!((m.mtime(), m.mtime_nsec()), (t.sec, t.nsec));
        assert_eq!(m.atime(), atime, "atime untouched");
    }
}
