//! Follow the journal: one reader polls `.ebb/journal.db` for events past
//! the last it saw and hands each run of them to every live subscription
//! at once (a broadcast: decoded once, filtered by each).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::broadcast;

use crate::journal::db::{After, Journal, StillSeeding};
use crate::journal::Change;

/// Events in journal order, sequence numbers consecutive.
pub type Batch = Arc<Vec<(u64, Change)>>;

/// How often an idle journal is looked at: a bound on the delivery delay
/// the tail adds (a read of an unchanged WAL database costs microseconds).
const POLL: Duration = Duration::from_millis(2);

/// How many polls between looks at whether the journal file was made
/// anew (about a second).
const RECHECK_EVERY: u32 = 500;

/// Events read per query.
const PAGE: usize = 4096;

/// Runs queued for subscriptions; one that falls further behind reads the
/// journal itself.
const QUEUED_BATCHES: usize = 4096;

pub struct Tail {
    db: PathBuf,
    /// The id of the journal followed: a new one when the daemon made the
    /// journal anew (its file deleted while it was down).
    journal_id: Arc<RwLock<String>>,
    batches: broadcast::Sender<Batch>,
    stop: Arc<AtomicBool>,
}

impl Tail {
    /// Start following the journal at `db` from its newest event.
    pub fn start(db: &Path) -> Result<Tail> {
        let journal = open_when_seeded(db)?;
        let journal_id = Arc::new(RwLock::new(journal.id().to_string()));
        let (batches, _) = broadcast::channel(QUEUED_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            db: db.to_path_buf(),
            opened: identity(db),
            pos: journal.last_seq()?,
            journal,
            journal_id: journal_id.clone(),
            batches: batches.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("ebb-tail".into())
            .spawn(move || follower.run())?;
        Ok(Tail {
            db: db.to_path_buf(),
            journal_id,
            batches,
            stop,
        })
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    pub fn journal_id(&self) -> String {
        self.journal_id
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Live events from now on. A subscription subscribes before it reads
    /// the journal itself, so every later event arrives here (or the
    /// receiver reports that it lagged).
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.batches.subscribe()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Open the journal; a new one the daemon is still indexing the tree into
/// is waited for (a minute at most).
fn open_when_seeded(db: &Path) -> Result<Journal> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Journal::open_reader(db) {
            Err(e) if e.is::<StillSeeding>() && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The journal file's identity: a new one means a new journal.
fn identity(db: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(db).ok().map(|m| (m.dev(), m.ino()))
}

struct Follower {
    db: PathBuf,
    opened: Option<(u64, u64)>,
    journal: Journal,
    pos: u64,
    journal_id: Arc<RwLock<String>>,
    batches: broadcast::Sender<Batch>,
    stop: Arc<AtomicBool>,
}

impl Follower {
    fn run(mut self) {
        let mut polls = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            match self.journal.after(self.pos, PAGE) {
                Ok(After::Records(events)) if !events.is_empty() => {
                    let full = events.len() == PAGE;
                    self.pos = events[events.len() - 1].0;
                    let _ = self.batches.send(Arc::new(events));
                    if full {
                        continue;
                    }
                }
                Ok(After::Records(_)) => {}
                Ok(After::Pruned) => {
                    // Retention overtook this reader: subscriptions see the
                    // jump as a hole and read the journal themselves.
                    tracing::warn!("the journal was pruned past the events not yet served");
                    self.pos = self.journal.last_seq().unwrap_or(self.pos);
                }
                Err(e) => {
                    tracing::warn!("reading the journal: {e:#}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(RECHECK_EVERY) {
                self.follow_a_new_journal();
            }
            std::thread::sleep(POLL);
        }
    }

    /// The daemon made a new journal file (the old one was deleted while
    /// it was down): follow that one from its start. Subscriptions notice
    /// the new id.
    fn follow_a_new_journal(&mut self) {
        let now = identity(&self.db);
        if now.is_none() || now == self.opened {
            return;
        }
        match Journal::open_reader(&self.db).and_then(|j| {
            let last = j.last_seq()?;
            Ok((j, last))
        }) {
            Ok((journal, last)) => {
                tracing::warn!(
                    "{} is a new journal ({}); subscribers are told to rescan",
                    self.db.display(),
                    journal.id()
                );
                *self
                    .journal_id
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = journal.id().to_string();
                self.journal = journal;
                self.opened = now;
                self.pos = last;
                // Wake idle subscriptions.
                let _ = self.batches.send(Arc::new(Vec::new()));
            }
            Err(e) => tracing::debug!("a new journal, not readable yet: {e:#}"),
        }
    }
}
