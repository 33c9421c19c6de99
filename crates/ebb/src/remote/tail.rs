//! Follow the journal: one reader polls `.ebb/journal.db` for events past
//! the last it saw and hands each run of them to every live subscription
//! at once (a broadcast: decoded once, filtered by each).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{broadcast, watch};

use crate::journal::db::{After, Journal};
use crate::journal::Change;

/// Events in journal order, sequence numbers consecutive.
pub type Batch = Arc<Vec<(u64, Change)>>;

/// How often an idle journal is looked at: a bound on the delivery delay
/// the tail adds (a read of an unchanged WAL database costs microseconds).
const POLL: Duration = Duration::from_millis(2);

/// Events read per query.
const PAGE: usize = 4096;

/// Runs queued for subscriptions; one that falls further behind reads the
/// journal itself.
const QUEUED_BATCHES: usize = 4096;

pub struct Tail {
    db: PathBuf,
    journal_id: String,
    head: watch::Receiver<u64>,
    batches: broadcast::Sender<Batch>,
    stop: Arc<AtomicBool>,
}

impl Tail {
    /// Start following the journal at `db` from its newest event.
    pub fn start(db: &Path) -> Result<Tail> {
        let journal = Journal::open_reader(db)?;
        let journal_id = journal.id().to_string();
        let (head_tx, head) = watch::channel(journal.last_seq()?);
        let (batches, _) = broadcast::channel(QUEUED_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, flag) = (batches.clone(), stop.clone());
        std::thread::Builder::new()
            .name("ebb-tail".into())
            .spawn(move || follow(journal, head_tx, sender, flag))?;
        Ok(Tail {
            db: db.to_path_buf(),
            journal_id,
            head,
            batches,
            stop,
        })
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    pub fn journal_id(&self) -> &str {
        &self.journal_id
    }

    /// The newest sequence number handed out.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Live events from now on. Subscribe before reading the head: every
    /// event after the head read then arrives here (or the receiver
    /// reports that it lagged).
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.batches.subscribe()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow(
    journal: Journal,
    head: watch::Sender<u64>,
    batches: broadcast::Sender<Batch>,
    stop: Arc<AtomicBool>,
) {
    let mut pos = *head.borrow();
    while !stop.load(Ordering::Relaxed) {
        match journal.after(pos, PAGE) {
            Ok(After::Records(events)) if !events.is_empty() => {
                let full = events.len() == PAGE;
                pos = events[events.len() - 1].0;
                // The head first: a subscription that reads it after
                // subscribing never misses the batch it announces.
                head.send_replace(pos);
                let _ = batches.send(Arc::new(events));
                if full {
                    continue;
                }
            }
            Ok(After::Records(_)) => {}
            Ok(After::Pruned) => {
                // Retention overtook this reader: subscriptions see the
                // jump as a hole and read the journal themselves.
                tracing::warn!("the journal was pruned past the events not yet served");
                pos = journal.last_seq().unwrap_or(pos);
                head.send_replace(pos);
            }
            Err(e) => {
                tracing::warn!("reading the journal: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        std::thread::sleep(POLL);
    }
}
