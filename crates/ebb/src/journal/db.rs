//! The journal's durable part: `.ebb/journal.db` (SQLite, WAL).
//!
//! - `events`: every change, by sequence number (gaps included, as events
//!   of kind `gap`, so that order is one number);
//! - `gaps`: each gap and whether the crawl after it has repaired it (then
//!   the changes it found follow it in `events`, and a query across it is
//!   exact again);
//! - `entries`: the index: what each path under the tree was when last
//!   seen (inode, size, mtime, ctime, mode), kept current from events, and
//!   compared with the tree by the crawl after a gap;
//! - `meta`: the journal's id (a new journal, a new id: older tokens mean
//!   "everything") and the oldest sequence number retained.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::{AnsweredChange, Change, Entry, Kind, Summary};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq    INTEGER PRIMARY KEY,
    kind   INTEGER NOT NULL,
    is_dir INTEGER NOT NULL,
    path   TEXT NOT NULL,
    other  TEXT,
    at     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS gaps (
    seq      INTEGER PRIMARY KEY,
    reason   TEXT NOT NULL,
    repaired INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    path  TEXT PRIMARY KEY,
    ino   INTEGER NOT NULL,
    size  INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    mode  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// An open journal.
pub struct Journal {
    conn: Connection,
    id: String,
}

/// What a query found since a sequence number.
#[derive(Debug)]
pub enum Since {
    /// Exactly these changes, each path once (see [`Summary`]), and the
    /// newest sequence number read.
    Changes {
        changes: Vec<AnsweredChange>,
        upto: u64,
    },
    /// A gap after the point asked for is not repaired yet.
    Unrepaired,
    /// The point asked for is older than what is kept.
    Pruned,
}

/// A journal the daemon has made but not yet indexed the tree into: ask
/// again in a moment.
#[derive(Debug, thiserror::Error)]
#[error("{} is new: the daemon is still indexing the tree into it", .0.display())]
pub struct StillSeeding(pub std::path::PathBuf);

/// What follows a point in the journal (see [`Journal::after`]).
#[derive(Debug)]
pub enum After {
    Records(Vec<(u64, Change)>),
    /// The point asked for is older than what is kept.
    Pruned,
}

impl Journal {
    /// Open (creating if needed) the journal at `path`; `true` with it if
    /// it is new.
    pub fn open(path: &Path) -> Result<(Journal, bool)> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "the journal cannot use WAL"
        );
        crate::sys::sqlite::persist_wal(&conn)?;
        // A 64 MiB page cache (the default is 2 MiB): the index of a big
        // tree's paths is read and rewritten at random, and a batch of
        // thousands of changes otherwise spills mid-transaction.
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;",
        )?;
        conn.execute_batch(SCHEMA)?;
        let id: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'id'", [], |r| r.get(0))
            .optional()?;
        let fresh = id.is_none();
        let id = match id {
            Some(id) => id,
            None => {
                let id = format!("{:016x}", rand::random::<u64>());
                // `seeding` until the tree is indexed into it (see
                // [`Journal::seed`]): readers wait for that.
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('id', ?1), ('first', '1'), ('seeding', '1')",
                    params![id],
                )?;
                id
            }
        };
        let journal = Journal { conn, id };
        // Made and never written to (the daemon makes it early): still new.
        let fresh = fresh || journal.last_seq()? == 0;
        Ok((journal, fresh))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The newest sequence number (0 if none).
    pub fn last_seq(&self) -> Result<u64> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// The oldest sequence number kept: a token before it (minus one) is
    /// older than retention.
    pub fn first_seq(&self) -> Result<u64> {
        let first: String =
            self.conn
                .query_row("SELECT value FROM meta WHERE key = 'first'", [], |r| {
                    r.get(0)
                })?;
        Ok(first.parse().unwrap_or(1))
    }

    /// Append `changes` and bring the index up to date for them, in one
    /// transaction. `stat` says what a path is now (`None`: gone).
    pub fn append(
        &mut self,
        changes: &[Change],
        stat: impl Fn(&str) -> Option<Entry>,
    ) -> Result<()> {
        // A savepoint: a transaction of its own, or part of `seed`'s.
        let tx = self.conn.savepoint()?;
        record_in(&tx, changes)?;
        // The index once per path, as it is now (a file made, written and
        // renamed in one batch costs two index writes, not five).
        let touched: HashMap<&str, bool> = touched(changes).collect();
        reindex_in(&tx, touched.into_iter(), stat)?;
        tx.commit()?;
        Ok(())
    }

    /// Append `changes`, in one transaction, leaving the index entries of
    /// the paths they touch to [`Journal::reindex`]: the
    /// recorder does that later, when events stop coming, so that a burst
    /// costs one small write per batch. Only a directory's move or removal
    /// moves or removes the entries below it here.
    pub fn record(&mut self, changes: &[Change]) -> Result<()> {
        let tx = self.conn.savepoint()?;
        record_in(&tx, changes)?;
        tx.commit()?;
        Ok(())
    }

    /// Bring the index up to date for `paths` (each with whether its last
    /// change took it away: then it needs no stat, a lookup of a missing
    /// name is slow), in one transaction. `stat` says what a path is now.
    pub fn reindex<'a>(
        &mut self,
        paths: impl Iterator<Item = (&'a str, bool)>,
        stat: impl Fn(&str) -> Option<Entry>,
    ) -> Result<()> {
        let tx = self.conn.savepoint()?;
        reindex_in(&tx, paths, stat)?;
        tx.commit()?;
        Ok(())
    }

    /// Open an existing journal only to read it (`ebb serve`, beside the
    /// daemon that writes it): nothing is created, and a read-only
    /// connection never checkpoints or removes the daemon's WAL files.
    pub fn open_reader(path: &Path) -> Result<Journal> {
        use rusqlite::OpenFlags;
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist: the journal is made by the daemon (ebb daemon TREE --background)",
                path.display()
            );
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening the journal {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let id: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'id'", [], |r| r.get(0))
            .with_context(|| format!("reading the journal {}", path.display()))?;
        let seeding: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'seeding'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if seeding.is_some() {
            return Err(StillSeeding(path.to_path_buf()).into());
        }
        Ok(Journal { conn, id })
    }

    /// Up to `limit` events after `seq`, oldest first, gaps included (as
    /// kind `gap`, with why in `from`); or `Pruned` when events right after
    /// `seq` are no longer kept. One read transaction, so a prune cannot
    /// slip between the check and the read.
    pub fn after(&self, seq: u64, limit: usize) -> Result<After> {
        let tx = self.conn.unchecked_transaction()?;
        if seq + 1 < self.first_seq()? {
            return Ok(After::Pruned);
        }
        let mut stmt = tx.prepare_cached(
            "SELECT e.seq, e.kind, e.is_dir, e.path, COALESCE(g.reason, e.other)
             FROM events e LEFT JOIN gaps g ON g.seq = e.seq
             WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![seq as i64, limit as i64], event_row)?;
        let records = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(After::Records(records))
    }

    /// A new journal: index the tree (`changes`, all of it, as found)
    /// and start the journal after it, in one transaction, so no reader
    /// ever sees those as news; readers wait until this is done.
    pub fn seed(&mut self, changes: &[Change], stat: impl Fn(&str) -> Option<Entry>) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let done = self
            .append(changes, stat)
            .and_then(|()| self.prune(0, None))
            .and_then(|()| {
                self.conn
                    .execute("DELETE FROM meta WHERE key = 'seeding'", [])?;
                Ok(())
            });
        match done {
            Ok(()) => Ok(self.conn.execute_batch("COMMIT")?),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Record a gap: from here until it is repaired, changes may be
    /// missing. Returns its sequence number.
    pub fn open_gap(&mut self, reason: &str) -> Result<u64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO events (kind, is_dir, path) VALUES (?1, 1, '')",
            params![Kind::Gap as i64],
        )?;
        let seq = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO gaps (seq, reason) VALUES (?1, ?2)",
            params![seq, reason],
        )?;
        tx.commit()?;
        Ok(seq as u64)
    }

    /// Every gap so far is repaired: the changes the crawl found are in.
    pub fn close_gaps(&mut self) -> Result<()> {
        self.conn
            .execute("UPDATE gaps SET repaired = 1 WHERE repaired = 0", [])?;
        Ok(())
    }

    /// The changes after `seq` under `prefix` (a path relative to the
    /// tree; "" for all of it).
    pub fn since(&self, seq: u64, prefix: &str) -> Result<Since> {
        if seq + 1 < self.first_seq()? {
            return Ok(Since::Pruned);
        }
        let unrepaired: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM gaps WHERE seq > ?1 AND repaired = 0",
            params![seq as i64],
            |r| r.get(0),
        )?;
        if unrepaired > 0 {
            return Ok(Since::Unrepaired);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, is_dir, path, other FROM events WHERE seq > ?1 AND kind != ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![seq as i64, Kind::Gap as i64])?;
        // Room for the paths of every row after `seq` (a rename names two,
        // most rows name a path again): the table then never grows.
        let after = self.last_seq()?.saturating_sub(seq);
        let mut summary = Summary::with_capacity((after as usize).min(1 << 21));
        let mut upto = seq;
        // Rows are read in place, not as `Change`s: an answer may run to
        // 100 000s of them.
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let (kind, is_dir) = (Kind::from_i64(row.get(1)?), row.get(2)?);
            let path = row.get_ref(3)?.as_str()?;
            let from = row.get_ref(4)?.as_str_or_null()?;
            upto = seq;
            if super::touches(path, from, is_dir, prefix) {
                summary.add(seq, kind, is_dir, path);
                if let Some(from) = from {
                    summary.add(seq, kind, is_dir, from);
                }
            }
        }
        Ok(Since::Changes {
            changes: summary.finish(),
            upto,
        })
    }

    /// The index, for the crawl to compare the tree with.
    pub fn entries(&self) -> Result<HashMap<String, Entry>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, ino, size, mtime, ctime, mode FROM entries")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Entry {
                    ino: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime: r.get(3)?,
                    ctime: r.get(4)?,
                    mode: r.get(5)?,
                },
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    /// Keep at most `keep` events, and (with `max_age`) none older: the
    /// others go, and the oldest token still answered exactly moves
    /// forward. The newest event always stays.
    pub fn prune(&mut self, keep: u64, max_age: Option<Duration>) -> Result<()> {
        let last = self.last_seq()?;
        let mut first = last.saturating_sub(keep).max(1);
        if let Some(age) = max_age {
            let cutoff = unix_now() - age.as_secs() as i64;
            let young: Option<i64> = self.conn.query_row(
                "SELECT MIN(seq) FROM events WHERE at >= ?1",
                params![cutoff],
                |r| r.get(0),
            )?;
            first = first.max(young.map_or(last, |s| s as u64));
        }
        let first = first.min(last.max(1));
        if first <= self.first_seq()? {
            return Ok(());
        }
        let tx = self.conn.savepoint()?;
        tx.execute("DELETE FROM events WHERE seq < ?1", params![first as i64])?;
        tx.execute("DELETE FROM gaps WHERE seq < ?1", params![first as i64])?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'first'",
            params![first.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// An event read as `seq, kind, is_dir, path, other`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, Change)> {
    Ok((
        r.get::<_, i64>(0)? as u64,
        Change {
            kind: Kind::from_i64(r.get(1)?),
            is_dir: r.get(2)?,
            path: r.get(3)?,
            from: r.get(4)?,
        },
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Each path `changes` touch, in order, with whether that change took it
/// away (a delete, or the old name of a rename); a path met again later
/// comes again.
fn touched(changes: &[Change]) -> impl Iterator<Item = (&str, bool)> {
    changes.iter().flat_map(|c| {
        std::iter::once((c.path.as_str(), c.kind == Kind::Deleted))
            .chain(c.from.as_deref().map(|from| (from, true)))
    })
}

fn record_in(tx: &Connection, changes: &[Change]) -> Result<()> {
    let now = unix_now();
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (kind, is_dir, path, other, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for c in changes {
        insert.execute(params![c.kind as i64, c.is_dir, c.path, c.from, now])?;
        match (c.kind, c.is_dir, &c.from) {
            (Kind::Renamed, true, Some(from)) => move_prefix(tx, from, &c.path)?,
            (Kind::Deleted, true, _) => {
                tx.execute(
                    "DELETE FROM entries WHERE path >= ?1 AND path < ?2",
                    params![format!("{}/", c.path), format!("{}0", c.path)],
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn reindex_in<'a>(
    tx: &Connection,
    paths: impl Iterator<Item = (&'a str, bool)>,
    stat: impl Fn(&str) -> Option<Entry>,
) -> Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO entries (path, ino, size, mtime, ctime, mode) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(path) DO UPDATE SET ino = excluded.ino, size = excluded.size,
           mtime = excluded.mtime, ctime = excluded.ctime, mode = excluded.mode",
    )?;
    let mut remove = tx.prepare_cached("DELETE FROM entries WHERE path = ?1")?;
    for (path, gone) in paths {
        match if gone { None } else { stat(path) } {
            Some(e) => {
                upsert.execute(params![
                    path,
                    e.ino as i64,
                    e.size as i64,
                    e.mtime,
                    e.ctime,
                    e.mode
                ])?;
            }
            None => {
                remove.execute(params![path])?;
            }
        }
    }
    Ok(())
}

/// A directory moved: its index entries move with it.
fn move_prefix(tx: &Connection, from: &str, to: &str) -> Result<()> {
    tx.execute(
        "UPDATE OR REPLACE entries SET path = ?3 || substr(path, ?4)
         WHERE path >= ?1 AND path < ?2",
        params![
            format!("{from}/"),
            format!("{from}0"),
            to,
            from.len() as i64 + 1
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str) -> Change {
        Change {
            kind: Kind::Created,
            is_dir: false,
            path: path.into(),
            from: None,
        }
    }

    #[test]
    fn pruning_by_count_and_by_age_moves_the_oldest_token_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, fresh) = Journal::open(&dir.path().join("j.db")).expect("open");
        assert!(fresh);
        let batch: Vec<Change> = (0..10).map(|i| change(&format!("f{i}"))).collect();
        j.append(&batch, |_| None).expect("append");
        assert_eq!(j.last_seq().unwrap(), 10);
        assert!(
            matches!(j.since(0, "").unwrap(), Since::Changes { changes, upto: 10 } if changes.len() == 10)
        );
        j.prune(6, None).expect("prune");
        assert_eq!(j.first_seq().unwrap(), 4);
        assert!(matches!(j.since(2, "").unwrap(), Since::Pruned));
        assert!(
            matches!(j.since(3, "").unwrap(), Since::Changes { changes, .. } if changes.len() == 7)
        );
        // Events 4..=6 a year old: gone with a one-day age limit.
        j.conn
            .execute("UPDATE events SET at = 0 WHERE seq <= 6", [])
            .unwrap();
        j.prune(100, Some(Duration::from_secs(86_400)))
            .expect("prune");
        assert_eq!(j.first_seq().unwrap(), 7);
        // A reopened journal keeps its id and is not new.
        let id = j.id().to_string();
        drop(j);
        let (j, fresh) = Journal::open(&dir.path().join("j.db")).expect("reopen");
        assert!(!fresh);
        assert_eq!(j.id(), id);
    }

    #[test]
    fn a_reader_streams_events_and_gaps_in_order_and_sees_pruning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let (mut j, _) = Journal::open(&path).expect("open");
        // A new journal is not for reading until the tree is indexed in.
        let seeding = Journal::open_reader(&path).err().expect("still seeding");
        assert!(seeding.is::<StillSeeding>(), "{seeding:#}");
        j.seed(&[], |_| None).expect("seed");
        j.append(&[change("a"), change("b")], |_| None)
            .expect("append");
        j.open_gap("queue overflow").expect("gap");
        j.append(&[change("c")], |_| None).expect("append");
        let r = Journal::open_reader(&path).expect("reader");
        assert_eq!(r.id(), j.id());
        let After::Records(all) = r.after(0, 100).unwrap() else {
            panic!("pruned")
        };
        let got: Vec<(u64, Kind, String, Option<String>)> = all
            .into_iter()
            .map(|(s, c)| (s, c.kind, c.path, c.from))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Kind::Created, "a".into(), None),
                (2, Kind::Created, "b".into(), None),
                (3, Kind::Gap, "".into(), Some("queue overflow".into())),
                (4, Kind::Created, "c".into(), None),
            ]
        );
        assert!(matches!(r.after(1, 2).unwrap(), After::Records(v) if v.len() == 2 && v[0].0 == 2));
        j.prune(2, None).expect("prune");
        assert!(matches!(r.after(0, 10).unwrap(), After::Pruned));
        assert!(matches!(r.after(1, 10).unwrap(), After::Records(v) if v[0].0 == 2));
        assert!(Journal::open_reader(&dir.path().join("none.db")).is_err());
    }

    #[test]
    fn a_gap_makes_queries_wait_until_it_is_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = Journal::open(&dir.path().join("j.db")).expect("open");
        j.append(&[change("a")], |_| None).expect("append");
        j.open_gap("test").expect("gap");
        assert!(matches!(j.since(1, "").unwrap(), Since::Unrepaired));
        j.append(&[change("b")], |_| None).expect("append");
        j.close_gaps().expect("close");
        assert!(
            matches!(j.since(1, "").unwrap(), Since::Changes { changes, .. } if changes.len() == 1 && changes[0].path == "b")
        );
    }
}
