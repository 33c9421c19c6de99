//! Who owns change tracking of a file (`ebb track`), and the base snapshot
//! ebb keeps for it. One row per file, keyed by its handle: the primary key
//! is what makes a claim atomic, however many processes race for it.

use std::path::PathBuf;

use anyhow::Result;
use rusqlite::{params, OptionalExtension};

use super::Catalog;
use crate::sys::handle::FileHandle;

/// A file's tracking: its one owner, since when, and its base snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tracking {
    pub path: PathBuf,
    pub owner: String,
    /// Seconds since the epoch.
    pub since: i64,
    /// The base snapshot: the file as it was when last tracked or archived.
    pub base: Option<PathBuf>,
    /// The archived version whose content the base holds, if any: what an
    /// incremental archive starts from.
    #[serde(skip)]
    pub base_version_id: Option<i64>,
}

impl Catalog {
    /// Make `owner` the owner of tracking for `handle`, unless someone is:
    /// then `Err` with who. Claiming again as the same owner is fine.
    pub fn claim_tracking(
        &mut self,
        handle: &FileHandle,
        path: &std::path::Path,
        owner: &str,
        since: i64,
    ) -> Result<Result<Tracking, Tracking>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO tracking (handle, path, owner, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(handle) DO NOTHING",
            params![handle.to_string(), path.to_string_lossy(), owner, since],
        )?;
        let current = tracking_row(&tx, handle)?
            .ok_or_else(|| anyhow::anyhow!("internal error: a claimed tracking row is missing"))?;
        tx.commit()?;
        Ok(if inserted == 1 || current.owner == owner {
            Ok(current)
        } else {
            Err(current)
        })
    }

    /// How many files are tracked.
    pub fn count_tracked(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM tracking", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// The tracking of `handle`, if any.
    pub fn tracking(&self, handle: &FileHandle) -> Result<Option<Tracking>> {
        tracking_row(&self.conn, handle)
    }

    /// Record the base snapshot of `handle` (or that it has none).
    pub fn set_tracking_base(
        &mut self,
        handle: &FileHandle,
        base: Option<&std::path::Path>,
        version_id: Option<i64>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE tracking SET base = ?2, base_version_id = ?3 WHERE handle = ?1",
            params![
                handle.to_string(),
                base.map(|b| b.to_string_lossy().into_owned()),
                version_id
            ],
        )?;
        Ok(())
    }

    /// Drop `owner`'s tracking of `handle`. `Err` with the tracking as it
    /// is (another owner's, or none) if `owner` does not hold it.
    pub fn release_tracking(
        &mut self,
        handle: &FileHandle,
        owner: &str,
    ) -> Result<Result<Tracking, Option<Tracking>>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = tracking_row(&tx, handle)?;
        let result = match current {
            Some(t) if t.owner == owner => {
                tx.execute(
                    "DELETE FROM tracking WHERE handle = ?1",
                    params![handle.to_string()],
                )?;
                Ok(t)
            }
            other => Err(other),
        };
        tx.commit()?;
        Ok(result)
    }
}

fn tracking_row(conn: &rusqlite::Connection, handle: &FileHandle) -> Result<Option<Tracking>> {
    Ok(conn
        .query_row(
            "SELECT path, owner, since, base, base_version_id FROM tracking WHERE handle = ?1",
            params![handle.to_string()],
            |r| {
                Ok(Tracking {
                    path: PathBuf::from(r.get::<_, String>(0)?),
                    owner: r.get(1)?,
                    since: r.get(2)?,
                    base: r.get::<_, Option<String>>(3)?.map(PathBuf::from),
                    base_version_id: r.get(4)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(n: u8) -> FileHandle {
        FileHandle {
            handle_type: 1,
            bytes: vec![n; 8],
        }
    }

    #[test]
    fn one_owner_per_file_and_only_it_can_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cat = Catalog::create(&dir.path().join("c.db")).expect("open");
        let p = std::path::Path::new("/t/vm.img");
        let mine = cat
            .claim_tracking(&handle(1), p, "backup", 10)
            .unwrap()
            .unwrap();
        assert_eq!((mine.owner.as_str(), mine.since), ("backup", 10));
        let theirs = cat
            .claim_tracking(&handle(1), p, "other", 20)
            .unwrap()
            .unwrap_err();
        assert_eq!((theirs.owner.as_str(), theirs.since), ("backup", 10));
        assert!(cat
            .claim_tracking(&handle(1), p, "backup", 30)
            .unwrap()
            .is_ok());
        assert!(cat
            .claim_tracking(&handle(2), p, "other", 20)
            .unwrap()
            .is_ok());

        cat.set_tracking_base(&handle(1), Some(std::path::Path::new("/b")), Some(7))
            .unwrap();
        let t = cat.tracking(&handle(1)).unwrap().unwrap();
        assert_eq!(
            (t.base.as_deref(), t.base_version_id),
            (Some(std::path::Path::new("/b")), Some(7))
        );

        let refused = cat
            .release_tracking(&handle(1), "other")
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.map(|t| t.owner), Some("backup".to_string()));
        assert!(cat.release_tracking(&handle(1), "backup").unwrap().is_ok());
        assert_eq!(
            cat.release_tracking(&handle(1), "backup")
                .unwrap()
                .unwrap_err(),
            None
        );
        assert!(cat.tracking(&handle(1)).unwrap().is_none());
    }
}
