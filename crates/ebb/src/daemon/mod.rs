//! `ebb daemon`: serves populate-on-access for one managed tree.
//!
//! Start-up, in this order: take the tree's lock (a second daemon is
//! refused with the first one's pid), open catalog and store, create the
//! pre-content group, silence ebb's own files in `.ebb/` (so the daemon's
//! own catalog I/O never waits on itself), put the filesystem mark in
//! place, and only then say it is ready. The loop ([`populate::Populator`])
//! owns all state; fill workers and control connections talk to it through
//! channels and wake it with an eventfd.
//!
//! On SIGTERM or SIGINT the daemon pauses: it marks every stub on its own
//! and lifts the filesystem mark (`Populator::narrow_to_stubs`), answers
//! what it read and what was queued, and exits leaving the group with the
//! keeper: a reader of a stub waits for the next daemon, as after a crash,
//! and never reads zeros; nothing else waits. Taking a tree out of service is a request of its own
//! (`ebb unserve`, [`Request::Unserve`]): the mark goes, every queued event
//! is answered, the keeper stops; it is refused while a stub remains.

pub mod control;
mod durable;
mod fill;
mod mark;
mod populate;
mod snapshots;
mod unserve;

pub use populate::{Stats, WATCHED};
pub use snapshots::monotonic_ns;
pub use unserve::{unserve, Unserved};

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, TryRecvError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::failover::fills::MAX_WORKERS;
use crate::failover::takeover;
use crate::sys::fanotify::Group;
use crate::sys::{fdtable, systemd};
use crate::tree::Tree;
use control::{Incoming, Request};
use populate::{FillDone, Populator, READ_AHEAD_CHUNKS};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Threads fetching and writing chunks.
    pub workers: usize,
    /// Called once the mark is in place and the daemon serves.
    pub on_ready: Option<fn()>,
    /// Take over from a running daemon (upgrade) instead of refusing.
    pub replace: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 8,
            on_ready: None,
            replace: false,
        }
    }
}

/// Serve `tree` until SIGTERM or SIGINT.
pub fn run(tree: &Tree, opts: &Options) -> Result<()> {
    // Signals arrive through a signalfd the loop polls; they are blocked
    // first, before any thread starts, so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    if opts.replace {
        control::hand_over(tree)?;
    }
    let _lock = control::lock_daemon(tree)?;
    if let Err(e) = fdtable::raise_open_file_limit() {
        tracing::warn!("raising the open-file limit: {e}");
    }
    // Before anything else opens a file: the numbers of events a previous
    // daemon left unanswered must stay free (see failover::takeover).
    let exe = std::env::current_exe().context("finding the ebb executable")?;
    let kept = takeover::acquire(tree, &exe)?;
    let reserved = takeover::reserve(&kept.pending)?;
    let takeover::Kept {
        keeper,
        group,
        mut table,
        fills,
        pending,
        interrupted,
        fresh,
    } = kept;
    let fills = Arc::new(fills);
    // Silenced before the catalog is opened: a kept group already waits
    // for answers, and the daemon must not wait on its own reads. Again
    // after, for files the catalog creates now (a first start).
    silence_own_files(&group, tree, WATCHED)?;
    silence_own_program(&group);
    let (mut catalog, lost) = match tree.catalog() {
        Ok(catalog) => (catalog, false),
        Err(e) if e.is::<crate::catalog::MissingCatalog>() => {
            // Served all the same: every file marked as a stub is refused
            // (EIO, never its holes), every other one goes through.
            tracing::error!("{e:#}; until then readers of released files get EIO");
            (crate::catalog::Catalog::empty_in_memory()?, true)
        }
        Err(e) => return Err(e),
    };
    let archived = catalog.count_files()?;
    // Its marker too, should the store share the tree's filesystem.
    let _ = group.add_ignore_path(
        &tree.config().store.join(crate::store::MARKER),
        WATCHED,
        false,
    );
    let store = tree.store()?;
    // The journal's database too (made now if new): its recorder writes it.
    crate::journal::db::Journal::open(&tree.state_dir().join("journal.db"))?;
    silence_own_files(&group, tree, WATCHED)?;
    // Archived files may be released, tracked ones snapshotted: serve from
    // the start. A tree with neither is marked when it releases a file or
    // takes a snapshot (see `mark`).
    // Every file opened from here on can be intercepted; files that may
    // need it (archived ones to release, tracked ones to snapshot) raise
    // events from the start.
    let serve = lost
        || tree.config().mark_at_start
        || tree.stubs_made_path().exists()
        || archived > 0
        || catalog.count_tracked()? > 0;
    let fs_mark = mark::FsMark::arm(&group, tree, fresh, serve)?;

    let wake = Arc::new(EventFd::from_value_and_flags(
        0,
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let poke = {
        let wake = wake.clone();
        move || {
            let _ = wake.write(1);
        }
    };
    let (snap_tx, snap_rx) = crossbeam_channel::unbounded();
    let mut snapshots =
        snapshots::Snapshots::new(tree, keeper.pid()?, snap_tx, Arc::new(poke.clone()));
    // Before any kept event is answered: writers waiting on a snapshot's
    // source must not go on before its units are in.
    snapshots.finish_recorded();

    // Changes are recorded from here on (a start after downtime is a gap,
    // repaired by a crawl on the recorder's thread). Populating does not
    // depend on it: if it cannot start, the daemon serves without it.
    let recorder = match crate::journal::recorder::Recorder::start(tree) {
        Ok(r) => Ok(Arc::new(r)),
        Err(e) => {
            tracing::error!("the change journal is not recording: {e:#}");
            Err(format!("{e:#}"))
        }
    };

    takeover::restore_mtimes(tree, &interrupted)?;
    if !pending.is_empty() {
        let started = std::time::Instant::now();
        let done = takeover::redrive(tree, &mut catalog, &store, &group, &mut table, pending)?;
        tracing::info!(
            "took over: {} event(s) redriven ({} found through /proc, {} denied) in {:?}",
            done.events,
            done.found_by_pid,
            done.denied,
            started.elapsed()
        );
    }
    drop(reserved);

    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let (ahead_tx, ahead_rx) = crossbeam_channel::bounded(READ_AHEAD_CHUNKS);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (synced_tx, synced_rx) = crossbeam_channel::unbounded();
    let mut wal = tree.catalog_path().into_os_string();
    wal.push("-wal");
    let sync = durable::spawn(wal.into(), synced_tx, poke.clone())?;
    for i in 0..opts.workers.clamp(1, MAX_WORKERS) {
        let worker = fill::Worker {
            index: i,
            journal: fills.clone(),
            store: store.clone(),
            fills: job_rx.clone(),
            ahead: ahead_rx.clone(),
            done: done_tx.clone(),
            wake: poke.clone(),
        };
        std::thread::Builder::new()
            .name(format!("ebb-fill-{i}"))
            .spawn(move || worker.run())?;
    }

    let socket = tree.socket_path();
    let _ = std::fs::remove_file(&socket); // a dead daemon's; we hold the lock
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("ebb-control".into())
        .spawn(move || {
            control::serve(listener, move |incoming| {
                if ctl_tx.send(incoming).is_ok() {
                    poke();
                }
            })
        })?;

    let mut populator = Populator::new(
        group,
        tree.root().to_path_buf(),
        fs_mark,
        table,
        catalog,
        job_tx,
        ahead_tx,
        sync,
        snapshots,
    );
    if fresh {
        let changed = populator
            .check_unseen_changes()
            .context("checking released files for changes made while nothing served them")?;
        if changed > 0 {
            tracing::warn!(
                "{changed} released file(s) changed while nothing served the tree: they keep what was written, and no archived byte comes back into them"
            );
        }
    }
    tracing::info!(
        "serving {} (store: {}, pid {})",
        tree.root().display(),
        store.describe(),
        std::process::id()
    );
    if let Some(ready) = opts.on_ready {
        ready();
    }
    // Under systemd (Type=notify): services ordered after this unit start
    // now, when released files are served.
    if let Err(e) = systemd::notify_ready(&format!("serving {}", tree.root().display())) {
        tracing::warn!("telling the service manager the daemon is ready: {e}");
    }
    let channels = Channels {
        fills: done_rx,
        synced: synced_rx,
        control: ctl_rx,
        snapshots: snap_rx,
        journal: recorder,
    };
    let result = event_loop(&mut populator, &sigfd, &wake, &channels);
    let _ = std::fs::remove_file(&socket);
    let stopped = result?;
    let _ = systemd::notify_stopping(match stopped {
        Stopped::Unserved(_) => "taking the tree out of service",
        Stopped::Paused => "paused: readers of released files wait for the next start",
        Stopped::HandedOver => "handing over to the next daemon",
    });
    match stopped {
        Stopped::Unserved(request) => {
            // Or systemd would keep the group and hand it to the next start.
            for name in takeover::KEPT_NAMES {
                if let Err(e) = systemd::remove_fds(name) {
                    tracing::warn!("removing {name} from the service manager's fd store: {e}");
                }
            }
            // Nothing is pending and nothing is a stub: the group may close.
            let stopped = keeper
                .stop()
                .map_err(|e| format!("stopping the keeper: {e:#}"));
            if let Err(e) = &stopped {
                tracing::warn!("{e}");
            }
            answer_and_wait(request, stopped.map(|()| serde_json::json!({})));
            tracing::info!("out of service: mark lifted, keeper stopped");
        }
        Stopped::Paused => tracing::info!(
            "paused: the keeper holds the tree's events until a daemon serves it again"
        ),
        Stopped::HandedOver => tracing::info!("handed over to the next daemon"),
    }
    tracing::info!("stopped; counters: {:?}", populator.stats());
    Ok(())
}

/// Answer `request` and wait (a bounded time) until the answer is
/// written: exiting first would leave its caller without one.
fn answer_and_wait(request: Incoming, answer: Result<serde_json::Value, String>) {
    let _ = request.reply.send(answer.map(Into::into));
    if request.written.recv_timeout(HANDOVER_WRITE).is_err() {
        tracing::warn!(
            "the answer to {:?} was not written; exiting all the same",
            request.request
        );
    }
}

/// How long a handing-over daemon waits for its answer to be written.
const HANDOVER_WRITE: std::time::Duration = std::time::Duration::from_secs(5);

/// How the loop ended.
enum Stopped {
    /// `ebb unserve`: mark removed, every event answered; the request is
    /// answered once the keeper has stopped.
    Unserved(Incoming),
    /// SIGTERM/SIGINT: stubs marked, what was read and queued answered;
    /// the group stays with the keeper, so readers of stubs wait for the
    /// next daemon.
    Paused,
    /// `--replace`: as paused, and the next daemon is already waiting.
    HandedOver,
}

/// Why the loop is coming to an end.
enum Ending {
    /// SIGTERM. `narrowed`: only stubs are marked now, so what is queued is
    /// answered (readers of stubs are served) until the queue is empty or
    /// `until`; otherwise nothing more is read.
    Pause {
        narrowed: bool,
        until: std::time::Instant,
    },
    HandOver(Incoming),
    Unserve(Incoming),
}

/// How long a pausing daemon goes on answering what was queued before its
/// filesystem mark went; what is left waits for the next daemon.
const PAUSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Ending {
    /// Whether events are still read: to answer, with the filesystem mark
    /// gone, what was queued under it.
    fn reads(&self) -> bool {
        match self {
            Ending::Pause { narrowed, until } => *narrowed && std::time::Instant::now() < *until,
            Ending::HandOver(_) => false,
            Ending::Unserve(_) => true,
        }
    }
}

/// Put non-evictable ignore marks (for `mask`) on the files in `.ebb/`:
/// the daemon reads and writes them itself and must never wait on its own
/// events, nor record them. Marked by path: opening the catalog here would
/// drop SQLite's locks on it.
pub fn silence_own_files(group: &Group, tree: &Tree, mask: u64) -> Result<()> {
    let dir = tree.state_dir();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if entry.file_name() == populate::COOKIE {
            // Its close must be heard (see `Populator::forget`); an ignore
            // mark a daemon of before put on it goes.
            let cookie = File::open(entry.path())?;
            group
                .remove_ignore(cookie.as_fd(), mask)
                .with_context(|| format!("hearing {}", entry.path().display()))?;
            continue;
        }
        group
            .add_ignore_path(&entry.path(), mask, false)
            .with_context(|| format!("silencing {}", entry.path().display()))?;
    }
    Ok(())
}

/// Put non-evictable ignore marks on ebb's own executable and every file
/// this process has mapped (its libraries): on a tree that holds them (a
/// tree at `/`), the next `ebb` command, the keeper, and a daemon started
/// while only the keeper holds the group would otherwise wait on events
/// nobody answers. Best effort: a file that cannot be marked is logged.
pub fn silence_own_program(group: &Group) {
    let mut paths = vec![std::path::PathBuf::from("/proc/self/exe")];
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        let mapped = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/'))
            .map(std::path::PathBuf::from);
        paths.extend(mapped);
    }
    paths.sort();
    paths.dedup();
    for path in paths {
        // The exe link is followed to the binary; library paths are real.
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("not silencing {}: {e}", path.display());
                continue;
            }
        };
        if let Err(e) = group.add_ignore(file.as_fd(), WATCHED, false) {
            tracing::warn!("silencing {}: {e}", path.display());
        }
    }
}

/// What the loop hears from its threads.
struct Channels {
    fills: Receiver<FillDone>,
    /// The catalog's syncer (see `durable.rs`).
    synced: Receiver<durable::Synced>,
    control: Receiver<Incoming>,
    snapshots: Receiver<snapshots::Msg>,
    /// The change journal's recorder, or why it is not running.
    journal: Result<Arc<crate::journal::recorder::Recorder>, String>,
}

fn event_loop(
    populator: &mut Populator,
    sigfd: &SignalFd,
    wake: &EventFd,
    channels: &Channels,
) -> Result<Stopped> {
    let mut ending: Option<Ending> = None;
    loop {
        // Pausing or handing over, nothing new is read: the queue is the
        // next daemon's. While the in-flight table is full, reading waits
        // for answers (the kernel queues meanwhile).
        let read = ending.as_ref().is_none_or(Ending::reads) && populator.can_read();
        let mut fds = vec![
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        if read {
            fds.push(PollFd::new(populator.group().as_fd(), PollFlags::POLLIN));
        }
        // Ending, the loop must come round to see the queue empty even
        // when nothing else happens (the last read returned events, all
        // answered at once, and the mark is gone: no event will wake it).
        let timeout = if ending.is_some() {
            PollTimeout::from(10u8)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        drop(fds);
        if let Ok(Some(sig)) = sigfd.read_signal() {
            if ending.is_none() {
                tracing::info!(
                    "signal {}: answering what was read, then pausing (readers of stubs wait for the next daemon)",
                    sig.ssi_signo
                );
                ending = Some(Ending::Pause {
                    narrowed: populator.narrow_to_stubs(),
                    until: std::time::Instant::now() + PAUSE_DRAIN,
                });
            }
        }
        let mut queue_empty = true;
        if read {
            // One event the kernel could not open a fd for fails the read
            // (and is gone): never a reason to stop serving the rest.
            match populator.read_events() {
                Ok(events) => {
                    queue_empty = events.is_empty();
                    for event in events {
                        populator.on_event(event);
                    }
                }
                Err(e) => {
                    queue_empty = false;
                    populator.on_unreadable_event(&e);
                }
            }
        }
        let _ = wake.read(); // reset; EAGAIN when nothing poked
        loop {
            match channels.fills.try_recv() {
                Ok(d) => populator.on_fill_done(d),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => anyhow::bail!("every fill worker died"),
            }
        }
        while let Ok(synced) = channels.synced.try_recv() {
            populator.on_synced(synced);
        }
        while let Ok(msg) = channels.snapshots.try_recv() {
            on_snapshot_msg(populator, msg);
        }
        while let Ok(incoming) = channels.control.try_recv() {
            match incoming.request {
                Request::Handover if ending.is_none() => {
                    tracing::info!("handing over: no more reads; finishing what was read");
                    ending = Some(Ending::HandOver(incoming));
                }
                Request::Unserve if ending.is_none() => {
                    if let Err(why) = populator.may_unserve() {
                        let _ = incoming.reply.send(Err(why));
                        continue;
                    }
                    tracing::info!(
                        "taking the tree out of service: mark lifted, answering what is queued"
                    );
                    populator.lift_mark();
                    ending = Some(Ending::Unserve(incoming));
                }
                Request::Handover | Request::Unserve => {
                    let _ = incoming
                        .reply
                        .send(Err("the daemon is stopping".to_string()));
                }
                _ => serve_request(populator, &channels.journal, incoming),
            }
        }
        populator.settle();
        if !populator.is_idle() {
            continue;
        }
        match ending.take() {
            Some(Ending::HandOver(request)) => {
                populator.end_fill_sessions();
                // Exiting before the answer is written would leave the new
                // daemon without one, and the tree without a daemon.
                answer_and_wait(request, Ok(serde_json::json!({})));
                return Ok(Stopped::HandedOver);
            }
            Some(pause @ Ending::Pause { .. }) if !pause.reads() || queue_empty => {
                populator.end_fill_sessions();
                return Ok(Stopped::Paused);
            }
            Some(Ending::Unserve(request)) if queue_empty => {
                populator.end_fill_sessions();
                return Ok(Stopped::Unserved(request));
            }
            other => ending = other,
        }
    }
}

fn serve_request(
    populator: &mut Populator,
    journal: &Result<Arc<crate::journal::recorder::Recorder>, String>,
    incoming: Incoming,
) {
    let reply = match incoming.request {
        Request::Forget => match incoming.fd {
            Some(fd) => populator
                .forget(&File::from(fd))
                .map(|()| serde_json::json!({}))
                .map_err(|e| format!("{e:#}")),
            None => Err("forget needs the file's fd attached".to_string()),
        },
        Request::StatBetweenFills => match incoming.fd {
            Some(fd) => populator
                .stat_between_fills(&File::from(fd))
                .and_then(|stat| Ok(serde_json::to_value(stat)?))
                .map_err(|e| format!("{e:#}")),
            None => Err("stat needs the file's fd attached".to_string()),
        },
        Request::Stats => serde_json::to_value(populator.stats())
            .map(|mut v| {
                v["unanswered"] = populator.unanswered().into();
                v["reading"] = populator.can_read().into();
                if let Ok(recorder) = journal {
                    v["journal_index_lag"] = recorder.index_lag().into();
                }
                v
            })
            .map_err(|e| e.to_string()),
        Request::Snapshot(req) => {
            // Answered once prepared (off the loop) and started.
            populator.request_snapshot(req, incoming.reply);
            return;
        }
        Request::SnapshotStatus { dst } => populator.snapshots.status(&dst),
        Request::Changes {
            since,
            path,
            rendered,
        } => {
            // Off the loop: the answer waits for the recorder's cookie.
            match journal {
                Ok(recorder) => {
                    answer_changes(recorder.clone(), since, path, rendered, incoming.reply)
                }
                Err(why) => {
                    let _ = incoming
                        .reply
                        .send(Err(format!("the change journal is not recording: {why}")));
                }
            }
            return;
        }
        Request::Handover | Request::Unserve => Err("answered by the loop".to_string()),
    };
    let _ = incoming.reply.send(reply.map(Into::into));
}

fn answer_changes(
    recorder: Arc<crate::journal::recorder::Recorder>,
    since: Option<String>,
    path: std::path::PathBuf,
    rendered: Option<bool>,
    reply: control::ReplyTx,
) {
    let spawned = std::thread::Builder::new()
        .name("ebb-changes".into())
        .spawn(move || {
            let _answering = recorder.answering();
            let answer = since
                .as_deref()
                .map(str::parse::<crate::journal::Token>)
                .transpose()
                .and_then(|since| recorder.answer(since.as_ref(), &path))
                .and_then(|a| {
                    Ok(match rendered {
                        Some(json) => {
                            control::Reply::Output(a.render(recorder.root(), &path, json)?)
                        }
                        None => control::Reply::Encoded(serde_json::to_vec(&a)?),
                    })
                })
                .map_err(|e| format!("{e:#}"));
            let _ = reply.send(answer);
        });
    if let Err(e) = spawned {
        tracing::error!("starting a thread for a changes query: {e}");
    }
}

fn on_snapshot_msg(populator: &mut Populator, msg: snapshots::Msg) {
    match msg {
        snapshots::Msg::Prepared {
            dst,
            prepared,
            reply,
        } => {
            populator.snapshots.prepared(&dst);
            let started =
                prepared.and_then(|p| populator.start_snapshot(p).map_err(|e| format!("{e:#}")));
            let _ = reply.send(started.map(Into::into));
        }
        snapshots::Msg::Ready(id) => populator.on_snapshot_ready(id),
        snapshots::Msg::Finished {
            handle,
            dst,
            result,
        } => populator.snapshots.on_finished(&handle, dst, result),
    }
}

/// For `--background`: tell the parent on stdout that the daemon serves,
/// then stop using stdout (the parent stops reading it).
pub fn announce_ready_on_stdout() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
    if let Err(e) = crate::sys::file::stdout_to_devnull() {
        tracing::warn!("detaching stdout: {e}");
    }
}
