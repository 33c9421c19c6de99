//! One snapshot being taken: its plan, the partial file it clones into, and
//! its progress, recorded so that a daemon that dies mid-way can finish it.
//!
//! The clone goes to `DST.ebb-partial` and becomes `DST` by one rename once
//! every unit is in and synced, so a partial snapshot is never mistaken for
//! a complete one. Progress lives in `<tree-id>.snapshots/` in the runtime
//! directory ([`crate::rundir`], `/run/ebb` by default): a description
//! (`KEY.json`, written once) and one byte per unit (`KEY.done`, set after
//! the unit is cloned and before any access to it is let through). It is on tmpfs on purpose: a snapshot can only be finished by
//! the daemon that holds the same fanotify group (the same keeper); after
//! a reboot, or if the keeper died, writes went by unseen and the partial
//! file is removed instead.

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::plan::Plan;
use crate::sys::extents::clone_range;

/// What a snapshot is, recorded when it starts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub src: PathBuf,
    /// The source's file handle (text), to reopen the same inode even if
    /// its path was replaced.
    pub src_handle: String,
    pub dst: PathBuf,
    /// Replace an existing `dst`.
    pub force: bool,
    /// The keeper (`pid:start-time`) holding the group whose events hold
    /// writers back: progress is only valid under the same one.
    pub keeper: String,
    /// When the snapshot's point in time was (seconds since the epoch).
    pub started: u64,
    /// The same instant on CLOCK_MONOTONIC, in nanoseconds.
    pub instant_ns: u64,
    pub plan: Plan,
}

impl Spec {
    /// Where the clone goes until it is complete.
    pub fn partial(&self) -> PathBuf {
        partial_path(&self.dst)
    }
}

/// `DST.ebb-partial`.
pub fn partial_path(dst: &Path) -> PathBuf {
    let mut name = dst.as_os_str().to_owned();
    name.push(".ebb-partial");
    PathBuf::from(name)
}

/// The name of a snapshot's progress records: from its destination, so a
/// second `ebb snapshot` to the same place finds the first.
pub fn key(dst: &Path) -> String {
    blake3::hash(dst.as_os_str().as_encoded_bytes()).to_hex()[..16].to_string()
}

/// Counters of one snapshot, reported when it ends.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub cloned_bytes: u64,
    /// `FICLONERANGE` calls made.
    pub clone_calls: u64,
    /// The longest of them, in microseconds (how long a writer of the
    /// source could have waited on one).
    pub longest_clone_us: u64,
    /// Units cloned ahead of the sweep because an access needed them.
    pub units_cloned_early: u64,
}

/// A snapshot in progress. Cloning happens on one thread (the job's);
/// others only ask whether units are in.
pub struct Job {
    spec: Spec,
    records: PathBuf,
    src: File,
    dst: File,
    progress: File,
    cloned: Vec<AtomicBool>,
    counters: Mutex<Counters>,
    began: Instant,
    /// XFS, else btrfs (snapshots need one or the other): see
    /// [`Job::needs_log_forced`] and [`Job::finish`].
    on_xfs: bool,
}

impl Job {
    /// Record `spec` in `records_dir` and get ready to clone `src` (an fd
    /// that raises no events) into `dst` (the partial file, same kind).
    pub fn start(records_dir: &Path, spec: Spec, src: File, dst: File) -> Result<Job> {
        std::fs::create_dir_all(records_dir)
            .with_context(|| format!("creating {}", records_dir.display()))?;
        let records = records_dir.join(key(&spec.dst));
        let progress = File::create(records.with_extension("done"))
            .with_context(|| format!("creating {}.done", records.display()))?;
        progress.set_len(spec.plan.units() as u64)?;
        crate::tree::write_atomically(
            &records.with_extension("json"),
            &serde_json::to_vec(&spec)?,
        )?;
        Ok(Job::with(spec, records, src, dst, progress, Vec::new()))
    }

    fn with(
        spec: Spec,
        records: PathBuf,
        src: File,
        dst: File,
        progress: File,
        done: Vec<u8>,
    ) -> Job {
        let cloned = (0..spec.plan.units())
            .map(|i| AtomicBool::new(done.get(i).is_some_and(|&b| b == 1)))
            .collect();
        let on_xfs = super::start::filesystem_name(&dst) == "xfs";
        Job {
            on_xfs,
            spec,
            records,
            src,
            dst,
            progress,
            cloned,
            counters: Mutex::default(),
            began: Instant::now(),
        }
    }

    /// The snapshots recorded in `records_dir` by a daemon that stopped
    /// before finishing them: each to resume (under the same keeper) or to
    /// remove.
    pub fn recorded(records_dir: &Path) -> Vec<(PathBuf, Result<Spec>)> {
        let Ok(entries) = std::fs::read_dir(records_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let spec = std::fs::read(&p)
                    .context("reading")
                    .and_then(|b| serde_json::from_slice(&b).context("parsing"));
                (p.with_extension(""), spec)
            })
            .collect()
    }

    /// Pick up a recorded snapshot again, with its cloned units.
    pub fn resume(records: PathBuf, spec: Spec, src: File) -> Result<Job> {
        let partial = spec.partial();
        let dst = File::options()
            .read(true)
            .write(true)
            .open(&partial)
            .with_context(|| format!("opening {}", partial.display()))?;
        let dst = File::from(crate::sys::fanotify::reopen_nonotify(
            dst.as_fd(),
            libc::O_RDWR,
        )?);
        let progress = File::options()
            .read(true)
            .write(true)
            .open(records.with_extension("done"))?;
        let done = std::fs::read(records.with_extension("done"))?;
        Ok(Job::with(spec, records, src, dst, progress, done))
    }

    /// Remove what a recorded snapshot left: its partial file and records.
    pub fn discard(records: &Path, dst: Option<&Path>) {
        if let Some(dst) = dst {
            let _ = std::fs::remove_file(partial_path(dst));
        }
        let _ = std::fs::remove_file(records.with_extension("json"));
        let _ = std::fs::remove_file(records.with_extension("done"));
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The source, through an fd that raises no events.
    pub fn source(&self) -> &File {
        &self.src
    }

    pub fn plan(&self) -> &Plan {
        &self.spec.plan
    }

    /// Whether every unit of `r` is cloned.
    pub fn is_cloned(&self, r: Range<usize>) -> bool {
        self.cloned[r].iter().all(|c| c.load(Ordering::Acquire))
    }

    /// The first run of uncloned units at or after `from`, at most `max`
    /// long.
    pub fn next_uncloned(&self, from: usize, max: usize) -> Option<Range<usize>> {
        let start = (from..self.cloned.len()).find(|&i| !self.cloned[i].load(Ordering::Acquire))?;
        let end = (start..self.cloned.len())
            .take(max.max(1))
            .take_while(|&i| !self.cloned[i].load(Ordering::Acquire))
            .last()
            .map_or(start + 1, |i| i + 1);
        Some(start..end)
    }

    /// Clone the uncloned units of `r` (only on the job's thread), recording
    /// each run before saying it is in. `early`: for a waiting access.
    pub fn clone_units(&self, r: Range<usize>, early: bool) -> Result<()> {
        let mut at = r.start;
        while let Some(run) = self.next_uncloned(at, r.end - at) {
            if run.start >= r.end {
                break;
            }
            let run = run.start..run.end.min(r.end);
            self.clone_run(run.clone(), early)?;
            at = run.end;
        }
        Ok(())
    }

    fn clone_run(&self, run: Range<usize>, early: bool) -> Result<()> {
        let bytes = self.spec.plan.bytes(run.clone());
        let started = Instant::now();
        self.clone_bytes(bytes.clone())?;
        let took = started.elapsed();
        crate::hooks::crash_point("snapshot-cloned");
        self.progress
            .write_all_at(&vec![1u8; run.len()], run.start as u64)
            .context("recording snapshot progress")?;
        for i in run.clone() {
            self.cloned[i].store(true, Ordering::Release);
        }
        if !early {
            crate::hooks::pause_point(
                "snapshot-swept",
                format_args!(
                    "units {}..{} of {}",
                    run.start,
                    run.end,
                    self.spec.dst.display()
                ),
            );
        }
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.cloned_bytes += bytes.end - bytes.start;
        c.clone_calls += 1;
        c.longest_clone_us = c.longest_clone_us.max(took.as_micros() as u64);
        if early {
            c.units_cloned_early += run.len() as u64;
        }
        Ok(())
    }

    /// Share `[bytes)` of the source with the partial file. The last unit
    /// may end off a block boundary where the source ends; should the
    /// source have grown since (a write that straddled the start), that
    /// end is no longer its end, and the tail is copied instead.
    fn clone_bytes(&self, bytes: Range<u64>) -> Result<()> {
        let size = self.spec.plan.size;
        let ragged = bytes.end == size && self.src.metadata()?.len() == size;
        let block = self.spec.plan.block;
        let clone_end = if ragged {
            bytes.end
        } else {
            bytes.end / block * block
        };
        if clone_end > bytes.start {
            clone_range(
                self.src.as_fd(),
                bytes.start,
                clone_end - bytes.start,
                self.dst.as_fd(),
                bytes.start,
            )
            .map_err(|e| clone_error(e, &self.spec))?;
        }
        let tail_start = clone_end.max(bytes.start);
        if tail_start < bytes.end {
            let mut tail = vec![0u8; (bytes.end - tail_start) as usize];
            // Short only if the source shrank, which waits for this unit.
            let n = self.src.read_at(&mut tail, tail_start)?;
            debug_assert_eq!(n, tail.len());
            self.dst.write_all_at(&tail, tail_start)?;
        }
        Ok(())
    }

    /// Whether the log must be forced while this snapshot is taken: on
    /// XFS, a clone's transactions wait, with the file's locks held,
    /// whenever the log's in-memory checkpoint outgrows its limit, until it
    /// is written (a 50–70 ms stall every few seconds here); forced often
    /// from beside the sweep, where no lock is held, it never grows that
    /// far. Not on btrfs, where an fsync copies the file's new shared
    /// extents into its log tree (seconds, with writers held).
    pub fn needs_log_forced(&self) -> bool {
        self.on_xfs
    }

    /// Write the log out up to the clones made so far.
    pub fn force_log(&self) -> Result<()> {
        self.dst.sync_data().context("syncing the partial snapshot")
    }

    pub fn counters(&self) -> Counters {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn cloned_bytes(&self) -> u64 {
        self.counters().cloned_bytes
    }

    /// Every unit is in: sync the partial file, put it in place (refusing
    /// to replace a `dst` that appeared meanwhile unless forced), and drop
    /// the records.
    pub fn finish(&self) -> Result<Duration> {
        if !self.is_cloned(0..self.cloned.len()) {
            bail!("internal error: finishing a snapshot with units missing");
        }
        let (partial, dst) = (self.spec.partial(), &self.spec.dst);
        // No set_len: the last unit's clone (or tail) made it the right
        // size, and a truncate raises a pre-content event even through an
        // fd that raises no others (the daemon may finish this before its
        // loop runs, when nobody would answer).
        self.make_durable()
            .with_context(|| format!("syncing {}", partial.display()))?;
        let flags = if self.spec.force {
            nix::fcntl::RenameFlags::empty()
        } else {
            nix::fcntl::RenameFlags::RENAME_NOREPLACE
        };
        nix::fcntl::renameat2(None, &partial, None, dst, flags).with_context(|| {
            format!(
                "putting the snapshot in place at {} (it appeared during the snapshot? use --force to replace it)",
                dst.display()
            )
        })?;
        if let Some(dir) = dst.parent() {
            File::open(dir).and_then(|d| d.sync_all())?;
        }
        Job::discard(&self.records, None);
        Ok(self.began.elapsed())
    }

    /// Write the partial file's clones out before it gets its name. On
    /// btrfs, an fsync copies each new shared extent into the log tree
    /// (1.8 s for 262 144 of them here); committing the filesystem's
    /// transaction writes them once (0.6 s). On XFS the log was kept
    /// short ([`Job::needs_log_forced`]) and an fsync writes only the rest.
    fn make_durable(&self) -> std::io::Result<()> {
        if self.on_xfs {
            self.dst.sync_all()
        } else {
            nix::unistd::syncfs(self.dst.as_raw_fd()).map_err(std::io::Error::from)
        }
    }

    /// Give up: remove the partial file and the records.
    pub fn abandon(&self) {
        Job::discard(&self.records, Some(&self.spec.dst));
    }
}

/// A clone error in words a user can act on.
fn clone_error(e: std::io::Error, spec: &Spec) -> anyhow::Error {
    let what = if e.raw_os_error() == Some(libc::ENOSPC) {
        "the filesystem is full (cloning needs room for extent records)"
    } else if crate::sys::extents::cannot_reflink(&e) {
        "the filesystem cannot share blocks (reflink)"
    } else {
        "cloning failed"
    };
    anyhow::Error::new(e).context(format!(
        "cloning {} into {}: {what}",
        spec.src.display(),
        spec.partial().display()
    ))
}
