//! Checking a snapshot request and getting everything ready before its
//! point in time: the files, the reflink check, the plan. Runs off the
//! daemon's loop (looking through /proc takes a while); the loop then
//! starts the snapshot in one step.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::job::partial_path;
use super::plan::Plan;
use super::users;
use crate::sys::extents::{cannot_reflink, clone_range};
use crate::sys::fanotify::reopen_nonotify;
use crate::sys::handle::{handle_of, FileHandle};

/// What `ebb snapshot` asks for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Replace an existing `dst`.
    #[serde(default)]
    pub force: bool,
}

/// A snapshot ready to start: fds that raise no events, and its plan.
pub struct Prepared {
    pub request: Request,
    pub handle: FileHandle,
    pub src: File,
    pub dst: File,
    pub plan: Plan,
}

/// Check `req` and prepare it. `root` is the managed tree (its filesystem
/// is the one whose writes the daemon sees); `keeper_start` is when the
/// group's keeper started (fds opened before it may predate the mark).
pub fn prepare(root: &Path, req: Request, keeper_start: u64) -> Result<Prepared> {
    let (src, dst) = (&req.src, &req.dst);
    // Opened first and checked as opened: the path is never looked up again.
    let plain = open_source(root, src)?;
    let meta = plain.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", src.display());
    }
    let root_dev = std::fs::metadata(root)?.dev();
    if meta.dev() != root_dev {
        bail!(
            "{} is not on the filesystem of the managed tree {}: only writes there can be held back",
            src.display(),
            root.display()
        );
    }
    check_destination(src, &meta, dst, req.force)?;
    refuse_unseen_writers(root, src, &meta, keeper_start)?;

    let (handle, _) = handle_of(plain.as_fd())?;
    let src_quiet = File::from(reopen_nonotify(plain.as_fd(), libc::O_RDONLY)?);
    let partial = partial_path(dst);
    // A partial file here that no running snapshot owns was left by one
    // that cannot be finished (the daemon checked before calling us).
    let _ = std::fs::remove_file(&partial);
    let created = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let _ = std::os::unix::fs::fchown(&created, Some(meta.uid()), Some(meta.gid()));
    let dst_quiet = File::from(reopen_nonotify(created.as_fd(), libc::O_RDWR)?);
    drop(created);
    let ready = (|| {
        check_reflink(&src_quiet, &dst_quiet, meta.len(), src)?;
        // Written back now, while writers still run: each clone flushes its
        // range first, and should find nothing left to flush there.
        src_quiet
            .sync_data()
            .with_context(|| format!("writing back {}", src.display()))?;
        let block = nix::sys::statvfs::fstatvfs(&src_quiet)?.block_size();
        Ok(Plan::new(meta.len(), block))
    })();
    match ready {
        Ok(plan) => Ok(Prepared {
            request: req,
            handle,
            src: src_quiet,
            dst: dst_quiet,
            plan,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Open the snapshot's source `src` (as the command resolved it) with no
/// symlink followed where another user could have put one since: beneath
/// the tree's `root` none at all and no mount crossed, elsewhere none as
/// its last component. (A source swapped for a symlink to a file its user
/// cannot read would otherwise be cloned, mode and all, to where they can.)
fn open_source(root: &Path, src: &Path) -> Result<File> {
    let opened = match src.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => {
            File::open(root).and_then(|root| crate::sys::file::open_beneath(root.as_fd(), rel))
        }
        _ => File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src),
    };
    opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => anyhow::anyhow!(
            "{} has a symlink or a mount on the way now (it was swapped since it was resolved?); nothing changed",
            src.display()
        ),
        _ => anyhow::Error::new(e).context(format!("opening {}", src.display())),
    })
}

fn check_destination(src: &Path, meta: &std::fs::Metadata, dst: &Path, force: bool) -> Result<()> {
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let dir = std::fs::metadata(parent)
        .with_context(|| format!("the directory {} of the snapshot", parent.display()))?;
    if dir.dev() != meta.dev() {
        bail!(
            "{} and {} are on different filesystems: a snapshot shares blocks, so it must be on the source's filesystem",
            src.display(),
            parent.display()
        );
    }
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {
            bail!("{} is the source itself", dst.display())
        }
        Ok(m) if m.is_dir() => bail!("{} is a directory", dst.display()),
        Ok(_) if !force => bail!(
            "{} already exists; remove it or pass --force to replace it",
            dst.display()
        ),
        _ => Ok(()),
    }
}

/// Refuse writers whose writes ebb could not hold back (see `users`).
fn refuse_unseen_writers(
    root: &Path,
    src: &Path,
    meta: &std::fs::Metadata,
    keeper_start: u64,
) -> Result<()> {
    let (dev, ino) = (meta.dev(), meta.ino());
    if let Some(p) = users::shared_writable_mappers(dev, ino).first() {
        bail!(
            "{p} has {} mapped shared and writable: stores through that mapping cannot be held back, so the snapshot could not be point-in-time; unmap it (or stop the process) and retry",
            src.display()
        );
    }
    if let Some(p) = users::old_writers(dev, ino, keeper_start).first() {
        bail!(
            "{p} has had {} open for writing since before ebb's daemon watched {}: its writes cannot be held back; reopen the file in it (or restart it) and retry (every file opened after the daemon started is watched)",
            src.display(),
            root.display()
        );
    }
    Ok(())
}

/// Clone the first block, to fail now, with the filesystem named, where
/// reflinks are not supported (the real clone overwrites it later).
fn check_reflink(src: &File, dst: &File, size: u64, path: &Path) -> Result<()> {
    let block = nix::sys::statvfs::fstatvfs(src)?.block_size();
    if size == 0 {
        return Ok(());
    }
    let len = if size < block { size } else { block };
    clone_range(src.as_fd(), 0, len, dst.as_fd(), 0).map_err(|e| {
        let fs = filesystem_name(src);
        if cannot_reflink(&e) {
            anyhow::anyhow!(
                "{} is on {fs}, which cannot share blocks (reflink): snapshots need XFS made with reflink=1 or btrfs",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cloning {} ({fs})", path.display()))
        }
    })
}

/// The filesystem type of `file`, by name where known.
pub fn filesystem_name(file: &File) -> String {
    let Ok(fs) = nix::sys::statfs::fstatfs(file) else {
        return "an unknown filesystem".into();
    };
    // `f_type` is signed on some targets; the magic numbers are u32.
    match fs.filesystem_type().0 as u32 {
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6969 => "nfs".into(),
        0x6573_5546 => "fuse".into(),
        0x794c_7630 => "overlayfs".into(),
        magic => format!("a filesystem of type {magic:#x}"),
    }
}
