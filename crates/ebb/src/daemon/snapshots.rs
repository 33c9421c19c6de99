//! The snapshots a daemon is taking ([`crate::snapshot`]).
//!
//! The daemon owns their point in time. When the loop starts one, its
//! source loses its ignore mark, so every access to it raises an event;
//! an access to units not cloned yet waits until the job's thread has
//! cloned them (copy-before-write), any other is let through at once. The
//! job's thread clones the rest in the background, a few units per call
//! (as many as fit [`CALL_BUDGET`] at the cost measured so far), accesses
//! first.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use super::control::ReplyTx;
use crate::catalog::Catalog;
use crate::snapshot::job::{partial_path, Job, Spec};
use crate::snapshot::start::{self, Prepared};
use crate::snapshot::users;
use crate::sys::fanotify::{EventId, Group};
use crate::sys::handle::{open_by_handle, FileHandle};

/// How long one background clone call aims to hold the source's locks.
pub const CALL_BUDGET: Duration = Duration::from_millis(6);
/// Most units one call clones (16 MiB): met by a batch sized for a sparse
/// stretch, a fully fragmented one costs ~30 ms on XFS here, not seconds.
const MAX_BATCH_UNITS: usize = 64;
/// After letting accesses go on, the sweep waits this long before its
/// next call, so that they get the file's locks before it does.
const AFTER_ACCESSES: Duration = Duration::from_micros(200);

/// How often the log is forced while a snapshot is taken on XFS.
const FORCE_EVERY: Duration = Duration::from_millis(50);
/// An access that needs units cloned first gets the aligned group of this
/// many (at most the sweep's batch) around them: on XFS under a random
/// writer, 1.1–1.3× FICLONE's time instead of 1.4–1.45× (fewer calls),
/// for a few more ms of waiting.
const EARLY_GROUP_UNITS: usize = 4;

/// What snapshot threads tell the loop.
pub enum Msg {
    /// A request was checked and prepared (or refused).
    Prepared {
        dst: PathBuf,
        prepared: Result<Prepared, String>,
        reply: ReplyTx,
    },
    /// The units an access waited for are cloned: answer it.
    Ready(EventId),
    /// A snapshot is complete and in place, or failed and was removed.
    Finished {
        handle: FileHandle,
        dst: PathBuf,
        result: Result<Value, String>,
    },
}

/// An access waiting for units to be cloned.
struct Ensure {
    units: Range<usize>,
    event: EventId,
}

struct Running {
    job: Arc<Job>,
    ensures: Sender<Ensure>,
    /// The source's `(dev, ino)`, to tell its readers from its writers.
    identity: (u64, u64),
}

/// How to wake the loop.
pub type Poke = Arc<dyn Fn() + Send + Sync>;

/// Every snapshot the daemon is taking, preparing, or has just finished.
pub struct Snapshots {
    root: PathBuf,
    records: PathBuf,
    /// `pid:start-time` of the keeper holding the group, and its start.
    keeper: String,
    keeper_start: u64,
    running: HashMap<FileHandle, Running>,
    preparing: HashSet<PathBuf>,
    /// Outcomes not yet collected by `ebb snapshot`, by destination.
    finished: HashMap<PathBuf, Result<Value, String>>,
    msgs: Sender<Msg>,
    poke: Poke,
}

/// Outcomes kept for `ebb snapshot` to collect, at most.
const MAX_FINISHED: usize = 256;

impl Snapshots {
    pub fn new(tree: &crate::tree::Tree, keeper_pid: u32, msgs: Sender<Msg>, poke: Poke) -> Self {
        let keeper_start = users::start_time(keeper_pid).unwrap_or(0);
        Snapshots {
            root: tree.root().to_path_buf(),
            records: crate::rundir::RunDir::from_env().snapshot_records(&tree.config().id),
            keeper: format!("{keeper_pid}:{keeper_start}"),
            keeper_start,
            running: HashMap::new(),
            preparing: HashSet::new(),
            finished: HashMap::new(),
            msgs,
            poke,
        }
    }

    /// Finish the snapshots a previous daemon left under the same keeper
    /// (writers of their sources have been held back meanwhile), before
    /// anything is answered; remove the others, whose point in time is lost.
    pub fn finish_recorded(&mut self) {
        for (records, spec) in Job::recorded(&self.records) {
            let outcome = match spec {
                Ok(spec) if spec.keeper == self.keeper => self.finish_now(records, spec),
                Ok(spec) => {
                    Job::discard(&records, Some(&spec.dst));
                    Err((spec.dst, "interrupted, and its point in time was lost (ebb's keeper stopped, e.g. a reboot); its partial file was removed: take it again".to_string()))
                }
                Err(e) => {
                    Job::discard(&records, None);
                    tracing::warn!(
                        "dropping unreadable snapshot records {}: {e:#}",
                        records.display()
                    );
                    continue;
                }
            };
            match outcome {
                Ok((dst, report)) => {
                    tracing::info!(
                        "finished the snapshot {} left by the previous daemon",
                        dst.display()
                    );
                    self.finished.insert(dst, Ok(report));
                }
                Err((dst, why)) => {
                    tracing::warn!("snapshot {}: {why}", dst.display());
                    self.finished.insert(dst, Err(why));
                }
            }
        }
    }

    fn finish_now(
        &self,
        records: PathBuf,
        spec: Spec,
    ) -> Result<(PathBuf, Value), (PathBuf, String)> {
        let dst = spec.dst.clone();
        let run = || -> Result<Value> {
            let root = std::fs::File::open(&self.root)?;
            let handle: FileHandle = spec.src_handle.parse().context("the source's handle")?;
            let src = std::fs::File::from(
                open_by_handle(root.as_fd(), &handle, libc::O_RDONLY)
                    .context("reopening the source")?,
            );
            let src = std::fs::File::from(crate::sys::fanotify::reopen_nonotify(
                src.as_fd(),
                libc::O_RDONLY,
            )?);
            let job = Job::resume(records.clone(), spec, src)?;
            job.clone_units(0..job.plan().units(), false)?;
            let took = job.finish()?;
            Ok(report(&job, took))
        };
        run().map(|r| (dst.clone(), r)).map_err(|e| {
            // The partial file and the records go.
            Job::discard(&records, Some(&dst));
            (dst, format!("could not be finished: {e:#}"))
        })
    }

    /// `ebb snapshot`: start one, or report on the one to `req.dst`.
    /// `marked_since`: when the filesystem mark went in (writers that
    /// opened the source before then, or before the keeper started, are
    /// not seen).
    pub fn request(&mut self, req: start::Request, marked_since: u64, reply: ReplyTx) {
        if let Some(result) = self.take_finished(&req.dst) {
            let _ = reply.send(result.map(Into::into));
            return;
        }
        if let Some(status) = self.status_of_running(&req.dst) {
            let _ = reply.send(Ok(status.into()));
            return;
        }
        if !self.preparing.insert(req.dst.clone()) {
            let _ = reply.send(Err(format!(
                "a snapshot to {} is being started",
                req.dst.display()
            )));
            return;
        }
        let (root, since, msgs, poke) = (
            self.root.clone(),
            self.keeper_start.max(marked_since),
            self.msgs.clone(),
            self.poke.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("ebb-snap-prep".into())
            .spawn(move || {
                let dst = req.dst.clone();
                let prepared = start::prepare(&root, req, since).map_err(|e| format!("{e:#}"));
                let _ = msgs.send(Msg::Prepared {
                    dst,
                    prepared,
                    reply,
                });
                poke();
            });
        if let Err(e) = spawned {
            tracing::error!("starting a snapshot thread: {e}");
        }
    }

    /// `ebb snapshot`'s progress polls.
    pub fn status(&mut self, dst: &Path) -> Result<Value, String> {
        if let Some(status) = self.status_of_running(dst) {
            return Ok(status);
        }
        if self.preparing.contains(dst) {
            return Ok(json!({"state": "preparing", "dst": dst}));
        }
        self.take_finished(dst).unwrap_or_else(|| {
            Err(format!(
                "the daemon knows of no snapshot to {}",
                dst.display()
            ))
        })
    }

    /// The outcome of the finished snapshot to `dst`, once.
    fn take_finished(&mut self, dst: &Path) -> Option<Result<Value, String>> {
        let result = self.finished.remove(dst)?;
        Some(result.map(|mut v| {
            v["state"] = json!("done");
            v
        }))
    }

    fn status_of_running(&self, dst: &Path) -> Option<Value> {
        let job = &self.running.values().find(|r| r.job.spec().dst == dst)?.job;
        Some(json!({
            "state": "running",
            "src": job.spec().src,
            "dst": dst,
            "size": job.plan().size,
            "cloned_bytes": job.cloned_bytes(),
        }))
    }

    /// The point in time: from here on every access to the source waits
    /// for the units under it. `catalog` tells whether the source is a stub
    /// (refused: its holes would be cloned as holes).
    pub fn start(&mut self, p: Prepared, group: &Group, catalog: &Catalog) -> Result<Value> {
        let Prepared {
            request,
            handle,
            src,
            dst,
            mut plan,
        } = p;
        let refuse = |why: String| {
            let _ = std::fs::remove_file(partial_path(&request.dst));
            Err(anyhow::anyhow!(why))
        };
        if let Some(other) = self.running.get(&handle) {
            return refuse(format!(
                "a snapshot of {} is already being taken (to {})",
                request.src.display(),
                other.job.spec().dst.display()
            ));
        }
        if let Some(rec) = catalog.file_by_handle(&handle)? {
            if !rec.resident.is_complete() {
                return refuse(format!(
                    "{} is released or partial: restore it first (ebb restore {})",
                    request.src.display(),
                    request.src.display()
                ));
            }
        }
        // The instant. From the removal of its ignore mark on, every access
        // to the source raises an event; none is handled before this
        // function returns to the loop, by when the job is in `running`.
        if let Err(e) = group.remove_ignore(src.as_fd(), super::WATCHED) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!("removing the ignore mark of {}: {e}", request.src.display());
            }
        }
        let instant = monotonic_ns();
        let meta = src.metadata()?;
        let size = meta.len();
        plan.resize(size);
        let spec = Spec {
            src: request.src.clone(),
            src_handle: handle.to_string(),
            dst: request.dst.clone(),
            force: request.force,
            keeper: self.keeper.clone(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            instant_ns: instant,
            plan,
        };
        let job = match Job::start(&self.records, spec, src, dst) {
            Ok(job) => Arc::new(job),
            Err(e) => return refuse(format!("{e:#}")),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        self.running.insert(
            handle.clone(),
            Running {
                job: job.clone(),
                ensures: tx,
                identity: (
                    std::os::unix::fs::MetadataExt::dev(&meta),
                    std::os::unix::fs::MetadataExt::ino(&meta),
                ),
            },
        );
        let (msgs, poke) = (self.msgs.clone(), self.poke.clone());
        let worker = job.clone();
        std::thread::Builder::new()
            .name("ebb-snapshot".into())
            .spawn(move || run_job(worker, handle, rx, msgs, poke))?;
        tracing::info!(
            "snapshot of {} to {} started",
            request.src.display(),
            request.dst.display()
        );
        Ok(json!({
            "state": "running",
            "src": request.src,
            "dst": request.dst,
            "size": size,
            "units": job.plan().units(),
            "instant_monotonic_ns": instant,
        }))
    }

    /// The request for `dst` is prepared (or refused).
    pub fn prepared(&mut self, dst: &Path) {
        self.preparing.remove(dst);
    }

    /// Whether `handle` is the source of a running snapshot.
    pub fn is_source(&self, handle: &FileHandle) -> bool {
        self.running.contains_key(handle)
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// An access by `pid` to `range` of the file `handle`: `None` if no
    /// snapshot is taken of it; `Some(false)` if it may go on now;
    /// `Some(true)` if it must wait for [`Msg::Ready`].
    pub fn hold(
        &self,
        handle: &FileHandle,
        pid: i32,
        range: Option<(u64, u64)>,
        event: EventId,
    ) -> Option<bool> {
        let running = self.running.get(handle)?;
        let plan = running.job.plan();
        let n = plan.units();
        let mut units = match range {
            Some((start, len)) => plan.units_touching(start, len),
            None => 0..n,
        };
        // A truncate (or hole punch, or collapse) reports only where it
        // starts: everything after it must be in first.
        let pid = pid as u32;
        let truncating = !running.job.is_cloned(units.start..n) && users::may_be_truncating(pid);
        if truncating {
            units.end = n;
        }
        if running.job.is_cloned(units.clone()) {
            return Some(false);
        }
        // A process that cannot write the file may read it as it is.
        if !truncating && !users::may_write(pid, running.identity.0, running.identity.1) {
            return Some(false);
        }
        Some(running.ensures.send(Ensure { units, event }).is_ok())
    }

    pub fn on_finished(
        &mut self,
        handle: &FileHandle,
        dst: PathBuf,
        result: Result<Value, String>,
    ) {
        self.running.remove(handle);
        match &result {
            Ok(_) => tracing::info!("snapshot {} complete", dst.display()),
            Err(why) => tracing::error!("snapshot {} failed: {why}", dst.display()),
        }
        if self.finished.len() >= MAX_FINISHED {
            self.finished.clear();
        }
        self.finished.insert(dst, result);
    }
}

/// CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// What `ebb snapshot` reports when done.
fn report(job: &Job, took: Duration) -> Value {
    let mut v = serde_json::to_value(job.counters()).unwrap_or_default();
    v["src"] = json!(job.spec().src);
    v["dst"] = json!(job.spec().dst);
    v["size"] = json!(job.plan().size);
    v["units"] = json!(job.plan().units());
    v["seconds"] = json!(took.as_secs_f64());
    v["instant_monotonic_ns"] = json!(job.spec().instant_ns);
    v
}

/// The job's thread: accesses first, then the next few units, until all
/// are in; then put the snapshot in place. Whatever happens, every access
/// that waits is let through in the end (a failed snapshot is removed,
/// never a reason to fail a writer).
fn run_job(
    job: Arc<Job>,
    handle: FileHandle,
    ensures: Receiver<Ensure>,
    msgs: Sender<Msg>,
    poke: Poke,
) {
    let ready = |event| {
        let _ = msgs.send(Msg::Ready(event));
        poke();
    };
    let result =
        with_log_forced(&job, || sweep(&job, &ensures, &ready)).and_then(|()| job.finish());
    let result = match result {
        Ok(took) => Ok(report(&job, took)),
        Err(e) => {
            job.abandon();
            Err(format!("{e:#}; the partial snapshot was removed"))
        }
    };
    let _ = msgs.send(Msg::Finished {
        handle,
        dst: job.spec().dst.clone(),
        result,
    });
    poke();
    // Until the loop has taken the job out, accesses may still come.
    for e in ensures.iter() {
        ready(e.event);
    }
}

/// Run `f` with a thread beside it that forces the log every
/// [`FORCE_EVERY`] where the job needs it ([`Job::needs_log_forced`]).
fn with_log_forced<T>(job: &Job, f: impl FnOnce() -> T) -> T {
    if !job.needs_log_forced() {
        return f();
    }
    std::thread::scope(|scope| {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let forcing = std::thread::Builder::new()
            .name("ebb-snap-log".into())
            .spawn_scoped(scope, move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FORCE_EVERY)
                {
                    // A failing sync fails the snapshot's last one too.
                    if let Err(e) = job.force_log() {
                        tracing::debug!("{e:#}");
                    }
                }
            });
        if let Err(e) = forcing {
            // Only writers' worst waits grow without it.
            tracing::warn!("starting the snapshot's log thread: {e}");
        }
        let out = f();
        drop(stop);
        out
    })
}

fn sweep(job: &Job, ensures: &Receiver<Ensure>, ready: &impl Fn(EventId)) -> Result<()> {
    let throttle = test_throttle();
    // A guess for the first call (a unit of 64 extents takes ~1 ms on XFS
    // here); measured from then on.
    let mut per_unit = Duration::from_millis(1);
    let mut last_batch = 1;
    let mut cursor = 0;
    loop {
        let mut served = false;
        while let Ok(e) = ensures.try_recv() {
            let cloned = job.clone_units(
                around(
                    e.units,
                    last_batch.min(EARLY_GROUP_UNITS),
                    job.plan().units(),
                ),
                true,
            );
            ready(e.event);
            cloned?;
            served = true;
        }
        if served {
            std::thread::sleep(AFTER_ACCESSES);
        }
        // As many units as the budget allows at the measured cost, growing
        // at most twofold per call: a dense stretch after a sparse one must
        // not be met with a huge batch.
        let fits = (CALL_BUDGET.as_nanos() / per_unit.as_nanos().max(1)) as usize;
        let batch = match throttle {
            Some(_) => 1,
            None => fits.clamp(1, (last_batch * 2).min(MAX_BATCH_UNITS)),
        };
        let Some(run) = job.next_uncloned(cursor, batch) else {
            return Ok(());
        };
        last_batch = run.len();
        let started = std::time::Instant::now();
        job.clone_units(run.clone(), false)?;
        // Up at once, down smoothed: a dearer stretch shrinks the next
        // batch now; one cheap call does not grow it much.
        let took = started.elapsed() / run.len() as u32;
        per_unit = took.max((per_unit * 7 + took * 3) / 10);
        cursor = run.end;
        if let Some(pause) = throttle {
            // Tests slow the sweep down to write during it.
            if let Ok(e) = ensures.recv_timeout(pause) {
                let cloned = job.clone_units(e.units, true);
                ready(e.event);
                cloned?;
            }
        }
    }
}

/// The aligned groups of `group` units that hold `units`, cut at `n`.
fn around(units: Range<usize>, group: usize, n: usize) -> Range<usize> {
    let group = group.max(1);
    let start = units.start / group * group;
    let end = units.end.div_ceil(group).saturating_mul(group).min(n);
    start..end.max(units.end)
}

/// `EBB_TEST_SNAPSHOT_THROTTLE_MS`: tests make the sweep clone one unit at
/// a time with this pause between, so that writers run during it.
fn test_throttle() -> Option<Duration> {
    std::env::var("EBB_TEST_SNAPSHOT_THROTTLE_MS")
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::around;

    #[test]
    fn accesses_are_widened_to_aligned_groups_within_the_file() {
        assert_eq!(around(5..6, 4, 100), 4..8);
        assert_eq!(around(3..5, 4, 100), 0..8);
        assert_eq!(around(97..98, 4, 98), 96..98);
        assert_eq!(around(7..8, 1, 100), 7..8);
        assert_eq!(around(7..8, 0, 100), 7..8);
    }
}
