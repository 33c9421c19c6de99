//! The recorder: a thread of the daemon that turns fanotify events into
//! journal entries, and the query side (cookie, then read).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::db::{Journal, Since};
use super::{crawl, Answer, Change, Entry, Kind, Token};
use crate::sys::fanotify::{
    EventBuffer, Group, InitOptions, NamedEvent, INFO_DFID_NAME, INFO_FID, INFO_NEW_DFID_NAME,
    INFO_OLD_DFID_NAME,
};
use crate::sys::handle::{handle_of, open_by_handle, FileHandle, HandleRef};
use crate::tree::Tree;

/// What the journal's group watches.
///
/// `FAN_CLOSE_WRITE` because a write through a shared mapping raises no
/// `FAN_MODIFY`: such a file is named once the last fd or mapping that
/// could have written it goes (a mapping kept open after its fd is named
/// only at its `munmap`). A close after writes the kernel merges with
/// their `FAN_MODIFY` in the queue costs nothing more.
pub const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_MODIFY
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;
/// Where query cookies are made, under the tree's state directory.
const COOKIES: &str = "cookies";
/// The names of the recorder's own cookies start so (a query's are
/// `<pid>-<n>`).
const OWN_COOKIE: &str = "index-";

/// A read that returns this many events means more are queued behind.
const BEHIND: usize = 256;

/// Changes recorded in one transaction at most.
const MAX_BATCH: usize = 32_768;

/// Events read and translated, to be recorded in one transaction.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    /// (path, kind) of the writes and attribute changes already in.
    written: HashSet<(String, u8)>,
    cookies: Vec<String>,
    gap: Option<&'static str>,
}
/// Why an answer is "everything" while the recorder crawls.
const UNREPAIRED: &str = "a gap in the journal (downtime or overflow) is still being repaired";
/// How long a query waits for its cookie, or for a gap to be repaired.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Events kept, by default (`journal_max_events` in `.ebb/config.json`
/// sets it; `EBB_JOURNAL_MAX_EVENTS` in the daemon's environment overrides).
pub const MAX_EVENTS: u64 = 1_000_000;
/// Directory paths remembered by handle, at most.
const MAX_DIRS: usize = 1 << 18;
/// While events keep coming, they are recorded at most this often.
const COMMIT_EVERY: Duration = Duration::from_millis(2);
/// The index catches up once no event came for this long (then step after
/// step while none comes).
const IDLE: Duration = Duration::from_millis(20);
/// Index entries brought up to date per transaction: an event (a query's
/// cookie) waits at most that long (~2 ms) while the index catches up.
const REINDEX_CHUNK: usize = 512;
/// Lagging changes sorted into [`Worker::pending`] per step: a step takes
/// a few ms, so a query's cookie waits no longer than that.
const SORT_CHUNK: usize = 4096;
/// Changes whose index entries may lag behind their events: beyond that
/// the index catches up even while events keep coming (memory stays
/// bounded: a change kept costs ~100 bytes).
const MAX_LAGGING: usize = 1 << 19;
/// How long a stopping recorder goes on catching its index up (what is
/// left lags: the crawl after the next start journals it again).
const CATCH_UP_AT_STOP: Duration = Duration::from_secs(5);

/// Cookies the recorder has seen, for queries waiting on them.
#[derive(Default)]
struct Cookies {
    seen: Mutex<HashSet<String>>,
    cv: Condvar,
    /// The recorder is crawling the tree (a new journal, or a gap): a
    /// cookie made meanwhile is seen only after the crawl, which can take
    /// longer than a query waits.
    crawling: AtomicBool,
    /// Queries being answered: the lagging index waits for them (its
    /// catching up would take CPU from the answer just when a burst ends).
    answering: AtomicUsize,
    /// Changes whose index entries lag behind ([`Worker::lag`]).
    lag: AtomicUsize,
}

/// A query being answered, while it lives ([`Recorder::answering`]).
pub struct Answering<'a>(&'a AtomicUsize);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The running recorder, as the daemon holds it.
pub struct Recorder {
    tree: Tree,
    db: PathBuf,
    /// A connection for queries, opened on the first one.
    reader: Mutex<Option<Journal>>,
    cookies: Arc<Cookies>,
    next_cookie: AtomicU64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Start recording `tree`: the mark goes in first, then a start after
    /// downtime is recorded as a gap and repaired by a crawl (on the
    /// recorder's thread, while events already queue).
    pub fn start(tree: &Tree) -> Result<Recorder> {
        let root = tree.root().to_path_buf();
        let db = tree.state_dir().join("journal.db");
        std::fs::create_dir_all(tree.state_dir().join(COOKIES))?;
        let group =
            Group::new(InitOptions::names()).context("creating the journal's fanotify group")?;
        group
            .mark_filesystem(&root, MASK)
            .with_context(|| format!("marking {} for the journal", root.display()))?;
        let (mut journal, fresh) = Journal::open(&db)?;
        // ebb's own files (this journal's writes above all) would raise
        // events the recorder reads only to drop.
        crate::daemon::silence_own_files(
            &group,
            tree,
            libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB,
        )?;
        if !fresh {
            journal.open_gap("ebb was not recording (the daemon was stopped or crashed)")?;
        }
        let cookies = Arc::new(Cookies::default());
        let stop = Arc::new(AtomicBool::new(false));
        let root_fd = File::open(&root)?;
        let (root_handle, _) = handle_of(root_fd.as_fd())?;
        let state_handle = handle_of(File::open(tree.state_dir())?.as_fd())?.0;
        let cookie_handle = handle_of(File::open(tree.state_dir().join(COOKIES))?.as_fd())?.0;
        let mut worker = Worker {
            root: root.clone(),
            root_fd,
            group,
            journal,
            dirs: hashbrown::HashMap::from([(root_handle, String::new())]),
            lagging: VecDeque::new(),
            pending: BTreeMap::new(),
            state_handle,
            cookie_handle,
            cookies: cookies.clone(),
            own_cookies: 0,
            dir_changes: 0,
            spare: EventBuffer::new(256 * 1024),
            max_events: std::env::var("EBB_JOURNAL_MAX_EVENTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .or(tree.config().journal_max_events)
                .unwrap_or(MAX_EVENTS),
            max_age: tree
                .config()
                .journal_max_age_days
                .map(|d| Duration::from_secs(d * 86_400)),
        };
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebb-journal".into())
            .spawn(move || {
                let first = if fresh {
                    worker.index_silently()
                } else {
                    worker.repair()
                };
                let first =
                    first.and_then(|()| worker.journal.prune(worker.max_events, worker.max_age));
                if let Err(e) = first.and_then(|()| worker.run(&stop_flag)) {
                    tracing::error!("the journal stopped recording: {e:#}");
                }
            })?;
        Ok(Recorder {
            tree: tree.clone(),
            db,
            reader: Mutex::new(None),
            cookies,
            next_cookie: AtomicU64::new(0),
            stop,
            thread: Some(thread),
        })
    }

    /// Hold the index's catching up back until the result is dropped.
    pub fn answering(&self) -> Answering<'_> {
        self.cookies.answering.fetch_add(1, Ordering::Relaxed);
        Answering(&self.cookies.answering)
    }

    /// Changes recorded whose index entries are not up to date yet (the
    /// recorder catches up once events stop coming).
    pub fn index_lag(&self) -> usize {
        self.cookies.lag.load(Ordering::Relaxed)
    }

    /// The root of the tree it records.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    /// What changed under `path` since `since` (`None`: nothing is asked,
    /// only the current token), up to the moment of the call.
    pub fn answer(&self, since: Option<&Token>, path: &Path) -> Result<Answer> {
        let rel = self.tree.relative(path)?.to_string_lossy().into_owned();
        let synced = match self.sync() {
            Ok(()) => true,
            Err(_) if self.cookies.crawling.load(Ordering::Relaxed) => false,
            Err(e) => return Err(e),
        };
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if reader.is_none() {
            *reader = Some(Journal::open(&self.db)?.0);
        }
        let journal = reader.as_ref().context("the query connection")?;
        let token = |seq| Token {
            journal: journal.id().to_string(),
            seq,
        };
        let last = journal.last_seq()?;
        let everything = |why: &str| Answer {
            token: token(last).to_string(),
            everything: Some(why.to_string()),
            changes: Vec::new(),
        };
        let Some(since) = since else {
            // A token is safe before the crawl is done (what it finds goes
            // in after), but a new journal's first one would be pruned.
            anyhow::ensure!(
                synced || last > 0,
                "the daemon is still indexing {} into a new journal: ask again in a moment",
                self.tree.root().display()
            );
            return Ok(Answer {
                token: token(last).to_string(),
                everything: None,
                changes: Vec::new(),
            });
        };
        if since.journal != journal.id() {
            return Ok(everything(
                "the token is from another journal (this tree's, recreated, or another tree's)",
            ));
        }
        if since.seq > last {
            return Ok(everything("the token is from the future of this journal"));
        }
        if !synced {
            return Ok(everything(UNREPAIRED));
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            match journal.since(since.seq, &rel)? {
                Since::Changes { changes, upto } => {
                    return Ok(Answer {
                        token: token(upto.max(last)).to_string(),
                        everything: None,
                        changes,
                    });
                }
                Since::Pruned => {
                    return Ok(everything("the token is older than the journal keeps"))
                }
                Since::Unrepaired if Instant::now() > deadline => {
                    return Ok(everything(UNREPAIRED))
                }
                Since::Unrepaired => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Write a cookie and wait until the recorder has seen it: every change
    /// made before is in the journal then.
    fn sync(&self) -> Result<()> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            self.next_cookie.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.tree.state_dir().join(COOKIES).join(&name);
        File::create(&path).with_context(|| format!("creating the cookie {}", path.display()))?;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        let seen = {
            let mut seen = self.cookies.seen.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + SYNC_TIMEOUT;
            while !seen.remove(&name) && Instant::now() < deadline {
                seen = self
                    .cookies
                    .cv
                    .wait_timeout(seen, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            Instant::now() < deadline
        };
        let _ = std::fs::remove_file(&path);
        anyhow::ensure!(
            seen,
            "the journal did not see its cookie within {} s (is the daemon overloaded?)",
            SYNC_TIMEOUT.as_secs()
        );
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`Worker::record_until_cookie`] came to.
enum Until {
    /// Every event queued before the cookie is recorded.
    Seen,
    /// The cookie did not come back in time (or could not be made).
    Late,
    /// Events were lost (a gap is recorded, not repaired yet).
    Gap,
}

/// Where a directory handle points.
enum Dir<'a> {
    /// This path under the tree.
    Inside(&'a str),
    /// Outside the tree, or ebb's own state: not journaled.
    Ignored,
    /// Cannot be known any more (the directory is gone).
    Unknown,
}

/// The recorder thread's state.
struct Worker {
    root: PathBuf,
    root_fd: File,
    group: Group,
    journal: Journal,
    /// Directory paths by handle (relative to the root); searched with the
    /// handles of events where they lie in the read buffer.
    dirs: hashbrown::HashMap<FileHandle, String>,
    /// Changes recorded whose index entries lag behind, oldest first, not
    /// yet sorted into `pending`: in a burst, keeping them costs a push (a
    /// sorted map of their paths cost a tenth of the recorder's time), and
    /// they are sorted when events stop coming.
    lagging: VecDeque<Change>,
    /// Paths whose index entries lag behind their events, with whether
    /// their last change took them away. A daemon that dies with some
    /// leaves an index older than the journal: the crawl after the gap then
    /// journals those paths again, a few too many, never one too few.
    pending: BTreeMap<String, bool>,
    state_handle: FileHandle,
    cookie_handle: FileHandle,
    cookies: Arc<Cookies>,
    /// The recorder's own cookies made so far (see [`Worker::record_until_cookie`]).
    own_cookies: u64,
    /// Directory moves and removals recorded so far.
    dir_changes: u64,
    /// A read buffer for [`Worker::record_until_cookie`], beside the main
    /// loop's.
    spare: EventBuffer,
    max_events: u64,
    max_age: Option<Duration>,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut buf = EventBuffer::new(256 * 1024);
        let mut batch = Batch::default();
        let mut committed = Instant::now();
        let mut appended = 0u64;
        // The last step caught the index up some, and no event came since.
        let mut catching_up = false;
        while !stop.load(Ordering::Relaxed) {
            if stalled() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            // In a burst (changes wait for the next commit), sleep until
            // then and read what came meanwhile in one go: woken for each
            // event, the recorder spent most of its time in poll and read.
            let idle = if batch.changes.is_empty() {
                let wait = if self.lag() == 0 {
                    Duration::from_millis(100)
                } else if catching_up {
                    Duration::ZERO
                } else {
                    IDLE
                };
                self.quiet_for(wait)?
            } else {
                // A query unparks it: its cookie need not wait.
                std::thread::park_timeout(COMMIT_EVERY.saturating_sub(committed.elapsed()));
                false
            };
            if stalled() {
                continue;
            }
            let before = (batch.changes.len(), batch.cookies.len());
            self.gather(&mut buf, &mut batch)?;
            // Events that say nothing (the recorder's own cookies going
            // away above all) do not end a quiet moment.
            let news = (batch.changes.len(), batch.cookies.len()) != before || batch.gap.is_some();
            // In a burst, one transaction per COMMIT_EVERY: each costs
            // about as much as a few hundred events (locks, WAL frames).
            // A query's cookie, a gap or a full batch goes in at once.
            let due = committed.elapsed() >= COMMIT_EVERY
                || !batch.cookies.is_empty()
                || batch.gap.is_some()
                || batch.changes.len() >= MAX_BATCH;
            if due {
                appended += self.commit(std::mem::take(&mut batch))?;
                committed = Instant::now();
            }
            let quiet = (idle || !news)
                && batch.changes.is_empty()
                && self.cookies.answering.load(Ordering::Relaxed) == 0;
            catching_up = quiet && self.lag() > 0;
            if catching_up || self.lag() > MAX_LAGGING {
                self.catch_up_some()?;
            }
            self.cookies.lag.store(self.lag(), Ordering::Relaxed);
            if appended > 10_000 {
                appended = 0;
                self.journal.prune(self.max_events, self.max_age)?;
            }
        }
        self.commit(batch)?;
        let deadline = Instant::now() + CATCH_UP_AT_STOP;
        while self.lag() > 0 && Instant::now() < deadline {
            self.catch_up_some()?;
        }
        Ok(())
    }

    /// Record what `batch` holds; then a gap in it is repaired and its
    /// cookies are answered. Returns how many changes went in.
    fn commit(&mut self, batch: Batch) -> Result<u64> {
        let Batch {
            changes,
            cookies,
            gap,
            ..
        } = batch;
        let recorded = self.record(changes)?;
        if let Some(why) = gap {
            self.open_gap(why)?;
            self.repair()?;
        }
        self.answer_cookies(cookies);
        Ok(recorded)
    }

    /// Append `changes` to the journal (their index entries lag).
    fn record(&mut self, changes: Vec<Change>) -> Result<u64> {
        let recorded = changes.len() as u64;
        self.dir_changes += changes
            .iter()
            .filter(|c| c.is_dir && matches!(c.kind, Kind::Renamed | Kind::Deleted))
            .count() as u64;
        if !changes.is_empty() {
            self.journal.record(&changes)?;
            self.lagging.extend(changes);
        }
        Ok(recorded)
    }

    fn open_gap(&mut self, why: &str) -> Result<()> {
        tracing::warn!("journal: {why}; crawling to repair the gap");
        self.journal.open_gap(why)?;
        Ok(())
    }

    /// Tell the queries waiting on `cookies` that their changes are in.
    fn answer_cookies(&self, mut cookies: Vec<String>) {
        cookies.retain(|c| !c.starts_with(OWN_COOKIE));
        if !cookies.is_empty() {
            let mut seen = self.cookies.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.extend(cookies);
            self.cookies.cv.notify_all();
        }
    }

    /// Make a cookie and record every event queued before it.
    ///
    /// An index entry looked up before this comes back `Seen` may go in
    /// then, never before: the events of the changes the lookup saw are in
    /// the journal first. The other way round, a daemon killed in between
    /// would come back to an index that already holds a change the journal
    /// never got, and the crawl after the gap, comparing the tree with that
    /// index, would not see it either.
    fn record_until_cookie(&mut self) -> Result<Until> {
        self.own_cookies += 1;
        let name = format!("{OWN_COOKIE}{}", self.own_cookies);
        let path = self
            .root
            .join(crate::tree::STATE_DIR)
            .join(COOKIES)
            .join(&name);
        if let Err(e) = File::create(&path) {
            tracing::warn!("journal: making {}: {e}", path.display());
            // Not in a tight loop (a full disk, say).
            std::thread::sleep(Duration::from_millis(100));
            return Ok(Until::Late);
        }
        let mut buf = std::mem::replace(&mut self.spare, EventBuffer::new(0));
        let until = self.record_until(&name, &mut buf);
        self.spare = buf;
        let _ = std::fs::remove_file(&path);
        until
    }

    fn record_until(&mut self, cookie: &str, buf: &mut EventBuffer) -> Result<Until> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let mut batch = Batch::default();
            self.gather(buf, &mut batch)?;
            let seen = batch.cookies.iter().any(|c| c == cookie);
            self.record(std::mem::take(&mut batch.changes))?;
            if let Some(why) = batch.gap {
                // The crawl that repairs it answers the queries' cookies
                // (their files are there).
                self.open_gap(why)?;
                return Ok(Until::Gap);
            }
            self.answer_cookies(batch.cookies);
            if seen {
                return Ok(Until::Seen);
            }
            if Instant::now() > deadline {
                return Ok(Until::Late);
            }
            self.quiet_for(Duration::from_millis(10))?;
        }
    }

    /// Wait up to `wait` for events: whether none came (an interrupted
    /// wait is not a quiet one).
    fn quiet_for(&self, wait: Duration) -> Result<bool> {
        let mut fds = [nix::poll::PollFd::new(
            self.group.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout = nix::poll::PollTimeout::try_from(wait)?;
        Ok(nix::poll::poll(&mut fds, timeout) == Ok(0))
    }

    /// Changes whose index entries lag behind.
    fn lag(&self) -> usize {
        self.lagging.len() + self.pending.len()
    }

    /// One step of bringing the index up to date: sort some lagging
    /// changes into `pending`, or once all are, reindex some of its paths.
    /// All are sorted first: a directory's move moves the pending paths
    /// below it, and a path reindexed before that would be looked up where
    /// it no longer is.
    fn catch_up_some(&mut self) -> Result<()> {
        if self.lagging.is_empty() {
            return self.reindex_some(REINDEX_CHUNK);
        }
        let n = self.lagging.len().min(SORT_CHUNK);
        let step: Vec<Change> = self.lagging.drain(..n).collect();
        self.sort_into_pending(step);
        Ok(())
    }

    /// Note the paths `changes` touched as pending in the index.
    fn sort_into_pending(&mut self, changes: Vec<Change>) {
        for c in changes {
            if let (Kind::Renamed, true, Some(from)) = (c.kind, c.is_dir, &c.from) {
                self.move_pending(from, &c.path);
            }
            if matches!(c.kind, Kind::Created | Kind::Deleted | Kind::Renamed) {
                // An entry made, removed or moved changes its directory's
                // times: its index entry is brought up to date too (else the
                // crawl after the next gap would call it modified).
                for p in std::iter::once(&c.path).chain(&c.from) {
                    if let Some((dir, _)) = p.rsplit_once('/') {
                        if !self.pending.contains_key(dir) {
                            self.pending.insert(dir.to_owned(), false);
                        }
                    }
                }
            }
            let gone = c.kind == Kind::Deleted;
            self.pending.insert(c.path, gone);
            if let Some(from) = c.from {
                self.pending.insert(from, true);
            }
        }
    }

    /// A directory moved: the lagging paths under it move with it (the
    /// index's own entries moved when the move was recorded).
    fn move_pending(&mut self, from: &str, to: &str) {
        let below: Vec<(String, bool)> = self
            .pending
            .range(format!("{from}/")..format!("{from}0"))
            .map(|(p, gone)| (p.clone(), *gone))
            .collect();
        for (p, gone) in below {
            self.pending.remove(&p);
            self.pending
                .insert(format!("{to}{}", &p[from.len()..]), gone);
        }
    }

    /// Bring up to `limit` lagging index entries up to date, in path order
    /// (neighbours in the index's B-tree), in one transaction.
    fn reindex_some(&mut self, limit: usize) -> Result<()> {
        let mut chunk = Vec::with_capacity(limit.min(self.pending.len()));
        while chunk.len() < limit {
            let Some(p) = self.pending.pop_first() else {
                break;
            };
            chunk.push(p);
        }
        let root = self.root_fd.as_fd();
        let looked: Vec<(String, Option<Entry>)> = chunk
            .into_iter()
            .map(|(p, gone)| {
                let entry = if gone { None } else { Entry::at(root, &p) };
                (p, entry)
            })
            .collect();
        let moved_before = self.dir_changes;
        match self.record_until_cookie()? {
            Until::Seen if self.dir_changes == moved_before => {
                // In path order, as `pending` gave them.
                let entry = |p: &str| {
                    let at = looked.binary_search_by(|(q, _)| q.as_str().cmp(p));
                    at.ok().and_then(|i| looked[i].1)
                };
                let paths = looked.iter().map(|(p, e)| (p.as_str(), e.is_none()));
                self.journal.reindex(paths, entry)
            }
            // A directory moved or went meanwhile (what was looked up
            // under it is not where it was), or the cookie did not come:
            // look again later.
            Until::Seen | Until::Late => {
                self.pending
                    .extend(looked.into_iter().map(|(p, e)| (p, e.is_none())));
                Ok(())
            }
            Until::Gap => self.repair(),
        }
    }

    /// Read what is queued into `batch`; while the recorder is behind
    /// (reads come back full), keep reading, up to [`MAX_BATCH`] changes.
    fn gather(&mut self, buf: &mut EventBuffer, batch: &mut Batch) -> Result<()> {
        loop {
            let mut read = 0;
            for event in self.group.read_named(buf)? {
                self.take(event, batch);
                read += 1;
            }
            if read < BEHIND
                || !batch.cookies.is_empty()
                || batch.gap.is_some()
                || batch.changes.len() >= MAX_BATCH
            {
                return Ok(());
            }
        }
    }

    fn take(&mut self, event: NamedEvent<'_>, batch: &mut Batch) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            batch.gap = Some("the kernel's event queue overflowed");
            return;
        }
        match self.translate(event, &mut batch.cookies) {
            Ok(Some(c)) => {
                // Repeated writes to a file in one batch (git writing its
                // index) say nothing new.
                let repeat = matches!(c.kind, Kind::Modified | Kind::Attrib)
                    && !batch.written.insert((c.path.clone(), c.kind as u8));
                if !repeat {
                    batch.changes.push(c);
                }
            }
            Ok(None) => {}
            Err(()) => batch.gap = Some("a directory was gone before its events were read"),
        }
    }

    /// Compare the tree with the index and journal what differs; then every
    /// gap so far is repaired.
    fn repair(&mut self) -> Result<()> {
        self.cookies.crawling.store(true, Ordering::Relaxed);
        while stalled() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        // Cookies made before the crawl are answered by it: their own
        // events may have been lost in the same overflow.
        let waiting: Vec<String> =
            std::fs::read_dir(self.root.join(crate::tree::STATE_DIR).join(COOKIES))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
        let now = crawl::scan(&self.root)?;
        self.learn_dirs(&now);
        // What the crawl saw goes in as the index only with the changes it
        // found: so it is never ahead of the journal (a change made while
        // it looked is either found, or seen by the next crawl).
        let changes = crawl::diff(&self.journal.entries()?, &now);
        self.journal.append(&changes, |p| now.get(p).copied())?;
        self.journal.close_gaps()?;
        // The index holds what the crawl saw now, lagging paths included.
        self.lagging.clear();
        self.pending.clear();
        self.answer_cookies(waiting);
        self.cookies.crawling.store(false, Ordering::Relaxed);
        tracing::info!(
            "journal: gap repaired by a crawl of {} paths in {:?} ({} changes)",
            now.len(),
            started.elapsed(),
            changes.len()
        );
        Ok(())
    }

    /// A new journal: index the tree without journaling it (no token from
    /// before this journal exists to ask about it).
    fn index_silently(&mut self) -> Result<()> {
        self.cookies.crawling.store(true, Ordering::Relaxed);
        let now = crawl::scan(&self.root)?;
        self.learn_dirs(&now);
        let changes: Vec<Change> = now
            .iter()
            .map(|(path, e)| Change {
                kind: Kind::Created,
                is_dir: e.is_dir(),
                path: path.clone(),
                from: None,
            })
            .collect();
        // Those are not news to anyone: the journal starts after them.
        self.journal.seed(&changes, |p| now.get(p).copied())?;
        self.cookies.crawling.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Remember every directory the crawl saw by its handle: a directory
    /// deleted with all it holds (`rm -rf`) is gone by the time its
    /// children's events are read, and could no longer be looked up.
    fn learn_dirs(&mut self, tree: &HashMap<String, Entry>) {
        let dirs = tree.iter().filter(|(_, e)| e.is_dir());
        for (path, _) in dirs.take(MAX_DIRS - self.dirs.len().min(MAX_DIRS)) {
            let opened = File::options()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(self.root.join(path));
            if let Ok((handle, _)) = opened.and_then(|d| handle_of(d.as_fd())) {
                self.dirs.insert(handle, path.clone());
            }
        }
    }

    /// The change an event means; `Err` if its directory cannot be known.
    fn translate(
        &mut self,
        event: NamedEvent<'_>,
        cookies: &mut Vec<String>,
    ) -> Result<Option<Change>, ()> {
        let is_dir = event.mask & libc::FAN_ONDIR != 0;
        if event.mask & libc::FAN_RENAME != 0 {
            let (Some(old), Some(new)) =
                (event.fid(INFO_OLD_DFID_NAME), event.fid(INFO_NEW_DFID_NAME))
            else {
                return Err(());
            };
            let from = self.path_in(old.handle, old.name)?;
            let to = self.path_in(new.handle, new.name)?;
            let (from, to) = match (from, to) {
                (None, None) => return Ok(None),
                (Some(from), None) => (from, None),
                (None, Some(to)) => {
                    return Ok(Some(Change {
                        kind: Kind::Created,
                        is_dir,
                        path: to,
                        from: None,
                    }))
                }
                (Some(from), Some(to)) => (from, Some(to)),
            };
            let Some(to) = to else {
                // Moved out of the tree: gone, as far as it is concerned.
                return Ok(Some(Change {
                    kind: Kind::Deleted,
                    is_dir,
                    path: from,
                    from: None,
                }));
            };
            if is_dir {
                self.moved_dir(&from, &to);
            }
            return Ok(Some(Change {
                kind: Kind::Renamed,
                is_dir,
                path: to,
                from: Some(from),
            }));
        }
        let Some(entry) = event.fid(INFO_DFID_NAME) else {
            return Ok(None);
        };
        if entry.handle == self.cookie_handle.as_ref() {
            if event.mask & libc::FAN_CREATE != 0 {
                if let Some(name) = entry.name {
                    cookies.push(String::from_utf8_lossy(name).into_owned());
                }
            }
            return Ok(None);
        }
        let Some(path) = self.path_in(entry.handle, entry.name)? else {
            return Ok(None);
        };
        if !is_dir && self.close_says_nothing(event.mask, &path) {
            return Ok(None);
        }
        let (created, deleted) = (
            event.mask & libc::FAN_CREATE != 0,
            event.mask & libc::FAN_DELETE != 0,
        );
        let kind = if created && deleted {
            // The kernel merges queued events on one name: the order of a
            // create and a delete is lost, what is there now tells.
            if Entry::at(self.root_fd.as_fd(), &path).is_some() {
                Kind::Created
            } else {
                Kind::Deleted
            }
        } else if created {
            Kind::Created
        } else if deleted {
            Kind::Deleted
        } else if event.mask & (libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE) != 0 {
            Kind::Modified
        } else {
            Kind::Attrib
        };
        // A new directory's own handle comes with its create: its children
        // can be placed even if it is gone before they are read.
        if is_dir && kind == Kind::Created {
            if let Some(target) = event.fid(INFO_FID) {
                self.remember(target.handle.to_owned(), path.clone());
            }
        }
        Ok(Some(Change {
            kind,
            is_dir,
            path,
            from: None,
        }))
    }

    /// Whether an event is only the close of a file that could have been
    /// written and that needs no record: one gone from `path` since (what
    /// became of it is an event of its own, queued after this one), or an
    /// empty one (a write through a mapping lands only inside the file, so
    /// whatever it wrote was cut off since, and the cut was heard). A close
    /// with no write before it (`touch`, a file made empty) is the common
    /// case; any other close is recorded as a write, as a write through a
    /// shared mapping raises nothing else.
    fn close_says_nothing(&self, mask: u64, path: &str) -> bool {
        let only_close = mask
            & (libc::FAN_CLOSE_WRITE
                | libc::FAN_MODIFY
                | libc::FAN_CREATE
                | libc::FAN_DELETE
                | libc::FAN_ATTRIB)
            == libc::FAN_CLOSE_WRITE;
        only_close && Entry::at(self.root_fd.as_fd(), path).is_none_or(|e| e.size == 0)
    }

    /// The path of `name` in the directory `dir`; `None` if not journaled.
    fn path_in(&mut self, dir: HandleRef<'_>, name: Option<&[u8]>) -> Result<Option<String>, ()> {
        let name = String::from_utf8_lossy(name.unwrap_or_default());
        let dir = match self.dirs.get(&dir) {
            Some(dir) => dir,
            None => match self.look_up_dir(dir) {
                Dir::Inside(dir) => dir,
                Dir::Ignored => return Ok(None),
                Dir::Unknown => return Err(()),
            },
        };
        if name.is_empty() || name == "." {
            return Ok(Some(dir.to_owned()));
        }
        if dir.is_empty() {
            return Ok((name != crate::tree::STATE_DIR).then(|| name.into_owned()));
        }
        let mut path = String::with_capacity(dir.len() + 1 + name.len());
        path.push_str(dir);
        path.push('/');
        path.push_str(&name);
        Ok(Some(path))
    }

    /// Where a directory not seen yet is, by opening its handle (then it is
    /// remembered).
    fn look_up_dir(&mut self, handle: HandleRef<'_>) -> Dir<'_> {
        if handle == self.state_handle.as_ref() {
            return Dir::Ignored;
        }
        let Ok(fd) = open_by_handle(
            self.root_fd.as_fd(),
            &handle.to_owned(),
            libc::O_PATH | libc::O_DIRECTORY,
        ) else {
            return Dir::Unknown;
        };
        // A removed directory may still open by handle while its inode
        // lingers, with a path that says nothing (or something outside the
        // tree): only a directory still linked is placed by its path.
        let fd = File::from(fd);
        let linked = fd.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.nlink() > 0
        });
        let Ok(abs) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return Dir::Unknown;
        };
        if !linked || !abs.is_absolute() || abs.to_string_lossy().ends_with(" (deleted)") {
            return Dir::Unknown;
        }
        let Ok(rel) = abs.strip_prefix(&self.root) else {
            return Dir::Ignored;
        };
        let rel = rel.to_string_lossy().into_owned();
        if rel == crate::tree::STATE_DIR || rel.starts_with(".ebb/") {
            return Dir::Ignored;
        }
        Dir::Inside(self.remember(handle.to_owned(), rel))
    }

    fn remember(&mut self, handle: FileHandle, path: String) -> &String {
        if self.dirs.len() >= MAX_DIRS {
            self.dirs.retain(|_, p| p.is_empty());
        }
        match self.dirs.entry(handle) {
            hashbrown::hash_map::Entry::Occupied(mut e) => {
                e.insert(path);
                e.into_mut()
            }
            hashbrown::hash_map::Entry::Vacant(e) => e.insert(path),
        }
    }

    /// A directory moved: the paths remembered under it move too.
    fn moved_dir(&mut self, from: &str, to: &str) {
        for p in self.dirs.values_mut() {
            if super::under(p, from) && !from.is_empty() {
                *p = format!("{to}{}", &p[from.len()..]);
            }
        }
    }
}

/// Tests hold the recorder still while the file named by
/// `EBB_TEST_JOURNAL_STALL` exists: to make the kernel's queue overflow for
/// real, to keep index entries lagging, to make a crawl last. Once the
/// recorder holds still (it reads no event until the file goes), it says so
/// with `<file>.held`, which a test waits for.
fn stalled() -> bool {
    static STALL: std::sync::OnceLock<Option<(PathBuf, PathBuf)>> = std::sync::OnceLock::new();
    let Some((stall, held)) = STALL.get_or_init(|| {
        let stall = PathBuf::from(std::env::var_os("EBB_TEST_JOURNAL_STALL")?);
        let mut held = stall.clone().into_os_string();
        held.push(".held");
        Some((stall, PathBuf::from(held)))
    }) else {
        return false;
    };
    let stalled = stall.exists();
    if stalled != held.exists() {
        let _ = match stalled {
            true => std::fs::File::create(held).map(drop),
            false => std::fs::remove_file(held),
        };
    }
    stalled
}
