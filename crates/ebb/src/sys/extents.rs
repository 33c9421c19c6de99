//! Extent maps and reflink clones: `FS_IOC_FIEMAP` and `FICLONERANGE`.
//! Snapshots clone a file a range at a time; changed ranges between a file
//! and its snapshot come from comparing their extent maps.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// `FIEMAP_FLAG_SYNC`: write dirty data back first, so delayed
/// allocations show as extents.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// Size of `struct fiemap` without its extents, and of one extent.
const FIEMAP_HEADER: usize = 32;
const EXTENT_SIZE: usize = 56;
/// Extents asked for per call.
const BATCH: usize = 512;
// The struct is read as u64 words below, halves split little-endian.
const _: () = assert!(cfg!(target_endian = "little"));

/// `FIEMAP_EXTENT_LAST`.
pub const EXTENT_LAST: u32 = 0x1;
/// `FIEMAP_EXTENT_UNWRITTEN`: allocated, reads as zeros.
pub const EXTENT_UNWRITTEN: u32 = 0x800;
/// `FIEMAP_EXTENT_SHARED`: the blocks are shared with another file (a
/// reflink clone or a snapshot).
pub const EXTENT_SHARED: u32 = 0x2000;

/// One extent of a file: `length` bytes at file offset `logical` live at
/// byte `physical` of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    /// `FIEMAP_EXTENT_*` bits, unknown ones kept.
    pub flags: u32,
}

impl Extent {
    pub fn is_shared(&self) -> bool {
        self.flags & EXTENT_SHARED != 0
    }

    pub fn end(&self) -> u64 {
        self.logical + self.length
    }
}

/// `ioctl(FS_IOC_FIEMAP)`: the extents of `file` that overlap
/// `[start, start + len)`, in order, after syncing the file's dirty data.
/// Holes have no extent.
#[doc(alias = "FS_IOC_FIEMAP")]
pub fn fiemap(file: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<Vec<Extent>> {
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    let mut at = start;
    // u64 words keep the buffer aligned for the kernel's struct.
    let mut buf = vec![0u64; (FIEMAP_HEADER + BATCH * EXTENT_SIZE) / 8];
    while at < end {
        buf.fill(0);
        buf[0] = at; // fm_start
        buf[1] = end - at; // fm_length
                           // fm_flags (low half) | fm_mapped_extents (high half, out)
        buf[2] = u64::from(FIEMAP_FLAG_SYNC);
        // fm_extent_count (low half) | fm_reserved
        buf[3] = BATCH as u64;
        // SAFETY: `buf` is a `struct fiemap` followed by room for BATCH
        // extents, as fm_extent_count says; the kernel writes only there.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = (buf[2] >> 32) as usize;
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for i in 0..mapped.min(BATCH) {
            let w = FIEMAP_HEADER / 8 + i * EXTENT_SIZE / 8;
            let flags = (buf[w + 5] & 0xffff_ffff) as u32;
            let extent = Extent {
                logical: buf[w],
                physical: buf[w + 1],
                length: buf[w + 2],
                flags,
            };
            at = extent.end();
            last |= flags & EXTENT_LAST != 0;
            out.push(extent);
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// `ioctl(FICLONERANGE)`: make `[dst_offset, dst_offset + len)` of `dst`
/// share the blocks of `[src_offset, src_offset + len)` of `src`. Offsets
/// and length must be block-aligned (a length reaching the source's end
/// may end it). Fails with `EOPNOTSUPP`/`EXDEV`/`EINVAL` where the
/// filesystem cannot.
#[doc(alias = "FICLONERANGE")]
pub fn clone_range(
    src: BorrowedFd<'_>,
    src_offset: u64,
    len: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
) -> io::Result<()> {
    let arg = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: FICLONERANGE reads one `struct file_clone_range`, which
    // outlives the call; both fds are valid for its duration.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a [`clone_range`] error means the filesystem (or this pair of
/// files) cannot share blocks at all, rather than that this call failed.
pub fn cannot_reflink(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EXDEV) | Some(libc::ENOTTY)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FsKind, LoopFs};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    /// On both filesystems ebb snapshots on: a clone shares every extent
    /// with its source, a write into the clone unshares just that part, and
    /// a hole has no extent.
    #[test]
    fn clones_share_extents_until_written_and_holes_have_none() {
        crate::require_root!();
        for kind in [FsKind::Xfs, FsKind::Btrfs] {
            let fs = LoopFs::new(kind, 300).expect("loop fs");
            let src_path = fs.path().join("src");
            let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
            std::fs::write(&src_path, &data).expect("write");
            let src = std::fs::File::open(&src_path).expect("open");
            let before = fiemap(src.as_fd(), 0, u64::MAX).expect("fiemap");
            assert!(!before.is_empty(), "{kind:?}: a written file has extents");
            assert!(
                before.iter().all(|e| !e.is_shared()),
                "{kind:?}: {before:?}"
            );
            assert_eq!(before.last().map(|e| e.end()), Some(4 << 20), "{kind:?}");

            let dst = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(fs.path().join("dst"))
                .expect("create dst");
            clone_range(src.as_fd(), 0, 4 << 20, dst.as_fd(), 0).expect("clone");
            assert_eq!(std::fs::read(fs.path().join("dst")).expect("read"), data);
            let shared = fiemap(dst.as_fd(), 0, u64::MAX).expect("fiemap");
            assert!(shared.iter().all(|e| e.is_shared()), "{kind:?}: {shared:?}");

            dst.write_all_at(&[1u8; 4096], 1 << 20)
                .expect("write into the clone");
            let after = fiemap(dst.as_fd(), 0, u64::MAX).expect("fiemap");
            let at = after
                .iter()
                .find(|e| e.logical <= 1 << 20 && e.end() > 1 << 20)
                .expect("an extent at 1 MiB");
            assert!(
                !at.is_shared(),
                "{kind:?}: the written block is the clone's own: {after:?}"
            );
            assert!(
                after.iter().any(|e| e.is_shared()),
                "{kind:?}: the rest stays shared"
            );

            let sparse = std::fs::File::create(fs.path().join("sparse")).expect("create");
            sparse.set_len(8 << 20).expect("truncate");
            sparse.write_all_at(&[7u8; 4096], 4 << 20).expect("write");
            let extents = fiemap(sparse.as_fd(), 0, u64::MAX).expect("fiemap");
            assert_eq!(extents.len(), 1, "{kind:?}: {extents:?}");
            assert_eq!(extents[0].logical, 4 << 20, "{kind:?}");
        }
    }

    #[test]
    fn clone_range_between_filesystems_is_refused() {
        let a = tempfile::tempfile().expect("tempfile");
        a.write_all_at(&[1u8; 4096], 0).expect("write");
        let b = tempfile::tempfile_in("/dev/shm").expect("tmpfs file");
        let err = clone_range(a.as_fd(), 0, 4096, b.as_fd(), 0)
            .expect_err("no reflink across filesystems");
        assert!(cannot_reflink(&err), "{err}");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EXDEV) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ),
            "{err}"
        );
    }
}
