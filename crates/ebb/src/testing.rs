//! Fixtures shared by ebb's unit and end-to-end tests: the privilege check
//! and loop-mounted XFS/btrfs filesystems made (and removed) by the test.
//!
//! Not part of ebb's interface: public for `tests/` and `ebb bench`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Whether a missing privilege must fail the test (CI sets
/// `EBB_REQUIRE_PRIVILEGED=1`) rather than skip it.
pub fn privileged_required() -> bool {
    std::env::var("EBB_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// `true` if the test may go on; otherwise it prints why it skips, or
/// panics when privilege is required.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if privileged_required() {
        panic!("{test}: needs root, and EBB_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

/// Skip (or, under `EBB_REQUIRE_PRIVILEGED=1`, fail) a test that needs root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::testing::have_root(module_path!()) {
            return;
        }
    };
}

/// Which filesystem a [`LoopFs`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// XFS with reflink.
    Xfs,
    /// btrfs.
    Btrfs,
    /// ext4 (no reflink).
    Ext4,
}

/// A filesystem image, loop-mounted on a fresh directory for the life of
/// the value. Dropping it unmounts and deletes everything.
pub struct LoopFs {
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// Make and mount a filesystem of `size_mib` MiB.
    pub fn new(kind: FsKind, size_mib: u64) -> Result<LoopFs> {
        let dir = tempfile::Builder::new()
            .prefix("ebb-loopfs-")
            .tempdir_in("/var/tmp")?;
        let image = dir.path().join("image");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(size_mib << 20)?;
        drop(f);
        let mkfs = match kind {
            // Big images get a big log, as a filesystem of VM images would:
            // with mkfs's default, log pressure makes single clone calls on
            // XFS take 60-90 ms now and then.
            FsKind::Xfs => run(Command::new("mkfs.xfs")
                .args(["-q", "-f", "-m", "reflink=1"])
                .args(if size_mib >= 4096 {
                    &["-l", "size=256m"][..]
                } else {
                    &[]
                })
                .arg(&image)),
            FsKind::Btrfs => run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image)),
            FsKind::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)),
        };
        mkfs.with_context(|| {
            format!("making a {kind:?} image (is xfsprogs/btrfs-progs installed?)")
        })?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mountpoint))
        .context("loop-mounting the test filesystem")?;
        Ok(LoopFs {
            dir,
            mountpoint,
            mounted: true,
        })
    }

    /// An XFS of `size_mib` MiB.
    pub fn xfs(size_mib: u64) -> Result<LoopFs> {
        LoopFs::new(FsKind::Xfs, size_mib)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and mount the image again, as a machine coming back up
    /// would (after `xfs_io -x -c shutdown`, say). Nothing may hold the
    /// filesystem open.
    pub fn remount(&self) -> Result<()> {
        // A process killed a moment ago may still be letting go of its
        // files (its threads exit after the leader shows as dead).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while let Err(e) = run(Command::new("umount").arg(&self.mountpoint)) {
            if std::time::Instant::now() > deadline {
                let holders = Command::new("fuser")
                    .args(["-vm"])
                    .arg(&self.mountpoint)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                return Err(e.context(format!(
                    "unmounting the test filesystem; held by: {holders}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.dir.path().join("image"))
            .arg(&self.mountpoint))
        .context("mounting the test filesystem again")
    }

    /// Detach the mount while processes still hold files in it (`umount
    /// -l`), then mount the image on the same mountpoint again, as an
    /// admin might while ebb serves it. The kernel keeps the superblock
    /// of a lazily detached mount alive and `mount -o loop` finds the
    /// image's loop device again, so the new mount is the same superblock.
    pub fn detach_and_mount_again(&self) -> Result<()> {
        run(Command::new("umount").arg("-l").arg(&self.mountpoint))
            .context("detaching the test filesystem")?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.dir.path().join("image"))
            .arg(&self.mountpoint))
        .context("mounting the test filesystem again")
    }

    /// Scratch space on another filesystem (for stores and the like).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A straggler (a killed daemon's fd) may keep it busy for a
            // moment; fall back to a lazy unmount rather than leak a mount.
            for _ in 0..20 {
                if run(Command::new("umount").arg(&self.mountpoint)).is_ok() {
                    self.mounted = false;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = run(Command::new("umount").arg("-l").arg(&self.mountpoint));
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Write `size` bytes of `data(offset)` to a new file at `path`, then punch
/// out every other 4 KiB block, leaving one extent per remaining block: the
/// kind of fragmented file snapshots must handle (`size / 8192` extents).
pub fn write_fragmented(path: &Path, size: u64, data: impl Fn(u64) -> u8) -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut file = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = data(at + i as u64);
        }
        file.write_all(&buf[..n])?;
        at += n as u64;
    }
    file.sync_all()?;
    let mut hole = 4096;
    while hole < size {
        crate::sys::file::punch_hole(file.as_fd(), hole, 4096.min(size - hole))?;
        hole += 8192;
    }
    file.sync_all()?;
    Ok(())
}
