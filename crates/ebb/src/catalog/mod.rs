//! The catalog: ebb's durable record of every managed file, in SQLite (WAL).
//!
//! For each file it keeps the file's identity (file handle, inode number and
//! generation, so a reused inode number is never mistaken for it), the
//! archived version (size, times, content hash and the manifest of chunks in
//! the store) and which chunks of that version are resident on disk.
//!
//! The state a user sees ([`State`]) is derived from residency, never stored
//! beside it. A file counts as modified when a write was seen, or when its
//! size, mtime or ctime differ from what ebb last left it with
//! ([`FileRecord::expected`]): ebb's own writes change the ctime, so it
//! records the ctime after each of them.
//!
//! Every change is one transaction; a crash leaves the previous state.

mod residency;
pub mod stub_mark;
mod tracking;

pub use residency::Residency;
pub use tracking::Tracking;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{ChunkHash, ChunkRef};
use crate::sys::file::Timestamp;
use crate::sys::handle::FileHandle;

/// Version of the schema below; a catalog from a newer ebb is refused.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id          INTEGER PRIMARY KEY,
    handle      TEXT NOT NULL UNIQUE,
    ino         INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    path        TEXT NOT NULL,
    version_id  INTEGER NOT NULL REFERENCES versions(id),
    resident    BLOB NOT NULL,
    modified    INTEGER NOT NULL DEFAULT 0,
    valid_len   INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime_sec   INTEGER NOT NULL,
    mtime_nsec  INTEGER NOT NULL,
    ctime_sec   INTEGER NOT NULL,
    ctime_nsec  INTEGER NOT NULL,
    filling     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    id           INTEGER PRIMARY KEY,
    size         INTEGER NOT NULL,
    mtime_sec    INTEGER NOT NULL,
    mtime_nsec   INTEGER NOT NULL,
    ctime_sec    INTEGER NOT NULL,
    ctime_nsec   INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    manifest     BLOB NOT NULL,
    archived_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tracking (
    handle          TEXT PRIMARY KEY,
    path            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    since           INTEGER NOT NULL,
    base            TEXT,
    base_version_id INTEGER
);
";

/// A managed file's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub i64);

/// What tells one file apart from every other, even after a rename or the
/// reuse of its inode number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub handle: FileHandle,
    pub ino: u64,
    pub generation: u64,
}

/// The attributes that change whenever a file's content does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatSnap {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl StatSnap {
    pub fn of(meta: &std::fs::Metadata) -> StatSnap {
        use std::os::unix::fs::MetadataExt;
        StatSnap {
            size: meta.len(),
            mtime: Timestamp {
                sec: meta.mtime(),
                nsec: meta.mtime_nsec(),
            },
            ctime: Timestamp {
                sec: meta.ctime(),
                nsec: meta.ctime_nsec(),
            },
        }
    }
}

/// One archived version of a file's content.
#[derive(Clone, Debug)]
pub struct Version {
    pub id: i64,
    /// The file's attributes when it was archived.
    pub stat: StatSnap,
    /// BLAKE3 over the whole content, hex.
    pub content_hash: String,
    /// The chunks, in order, covering `[0, stat.size)`.
    pub manifest: Arc<Vec<ChunkRef>>,
}

/// The state of a file as users see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// All content is on disk and no current archived copy exists.
    Resident,
    /// All content is on disk and also in the store.
    Archived,
    /// No content on disk; every byte comes from the store on access.
    Released,
    /// Some chunks are on disk, the rest come from the store on access.
    Partial,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Resident => "resident",
            State::Archived => "archived",
            State::Released => "released",
            State::Partial => "partial",
        }
    }
}

/// Everything the catalog knows of one managed file.
#[derive(Clone, Debug)]
pub struct FileRecord {
    pub id: FileId,
    pub identity: Identity,
    /// Where the file was when ebb last touched it (informational: files
    /// are found by handle).
    pub path: PathBuf,
    pub version: Version,
    pub resident: Residency,
    /// A write was seen since the version was archived.
    pub modified: bool,
    /// Bytes of the archived version that may still be brought back: a
    /// file cut shorter and grown again reads zeros past the cut, not the
    /// archived bytes.
    pub valid_len: u64,
    /// The attributes ebb last left the file with.
    pub expected: StatSnap,
    /// A daemon (or restore) has been writing archived bytes into it and
    /// has not since made them durable and said so: its mtime or ctime may
    /// be ebb's own doing (a fill's put-back of the mtime lost in a power
    /// cut), not a sign of someone else's change. Set durably before the
    /// first fill writes; cleared once the file is all back or its filler
    /// stopped cleanly after syncing it.
    pub filling: bool,
}

impl FileRecord {
    /// The state as users see it; `stat` is the file's current attributes.
    pub fn state(&self, stat: &StatSnap) -> State {
        if self.resident.is_complete() {
            if self.is_modified(stat) {
                State::Resident
            } else {
                State::Archived
            }
        } else if self.resident.is_empty() {
            State::Released
        } else {
            State::Partial
        }
    }

    /// Whether the content may differ from the archived version: a write
    /// was seen, or size, mtime or ctime are not what ebb left (a rewrite
    /// that put size and mtime back, as `rsync --inplace -t` or `touch -r`
    /// do, still moves the ctime; so does a chmod, which then needs an
    /// archive again). Not the ctime of a file being filled: ebb's own
    /// fills change it, and one cut short by a crash must not make the file
    /// look rewritten (see [`FileRecord::filling`]).
    pub fn is_modified(&self, stat: &StatSnap) -> bool {
        self.modified
            || stat.size != self.expected.size
            || stat.mtime != self.expected.mtime
            || (!self.filling && stat.ctime != self.expected.ctime)
    }

    /// Bytes of the archived version that are on disk.
    pub fn resident_bytes(&self) -> u64 {
        self.resident.bytes(&self.version.manifest)
    }
}

/// A connection to a tree's catalog.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

/// The tree's catalog is not there.
#[derive(Debug, thiserror::Error)]
#[error("the catalog {} is missing, so ebb cannot tell which files are released; put it back from a backup (nothing changed; only `ebb init` makes a catalog)", path.display())]
pub struct MissingCatalog {
    pub path: PathBuf,
}

impl Catalog {
    /// Make a new, empty catalog at `path` (`ebb init`), or open the one
    /// there.
    pub fn create(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)
            .with_context(|| format!("creating the catalog {}", path.display()))?;
        Catalog::set_up(conn, path)
    }

    /// Open the catalog at `path`, which must exist: a missing catalog is
    /// never silently made anew (every stub would be unknown to it).
    pub fn open(path: &Path) -> Result<Catalog> {
        use rusqlite::OpenFlags;
        if !path.try_exists().unwrap_or(true) {
            return Err(anyhow::Error::new(MissingCatalog {
                path: path.to_path_buf(),
            }));
        }
        // Without SQLITE_OPEN_CREATE, so one deleted just now is not made.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening the catalog {}", path.display()))?;
        Catalog::set_up(conn, path)
    }

    /// An empty catalog in memory: what a daemon serving a tree whose
    /// catalog is missing knows (nothing), so it refuses every marked stub
    /// and lets every other file through.
    pub fn empty_in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;")?;
        let cat = Catalog {
            conn,
            path: PathBuf::from(":memory:"),
        };
        cat.migrate()?;
        Ok(cat)
    }

    fn set_up(conn: Connection, path: &Path) -> Result<Catalog> {
        conn.busy_timeout(Duration::from_secs(30))?;
        // WAL: readers never wait for the daemon's writes. NORMAL: a commit
        // survives a crash of any process; only a power cut may lose the
        // last commits, and every one of them is a step that is redone.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "the catalog {} cannot use WAL mode (got {mode})",
                path.display()
            );
        }
        // The catalog's files keep their inodes (and so the daemon's ignore
        // marks) for good; see `sys::sqlite::persist_wal`.
        crate::sys::sqlite::persist_wal(&conn).context("keeping the catalog's WAL files")?;
        // Temporary tables in memory: SQLite's temp files would otherwise
        // land where the daemon might have to answer its own events.
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;",
        )?;
        let cat = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        cat.migrate()
            .with_context(|| format!("preparing the catalog {}", path.display()))?;
        Ok(cat)
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "the catalog has schema {version}, newer than this ebb understands ({SCHEMA_VERSION}); upgrade ebb"
            );
        }
        // Schema 1 had no `filling` column.
        let upgrade = if version == 1 {
            "ALTER TABLE files ADD COLUMN filling INTEGER NOT NULL DEFAULT 0;"
        } else {
            ""
        };
        if version < SCHEMA_VERSION {
            self.conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {upgrade} {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            ))?;
        }
        Ok(())
    }

    /// `PRAGMA integrity_check`: `Ok(())` if the database is sound.
    pub fn check_integrity(&self) -> Result<()> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if verdict != "ok" {
            bail!("catalog {} is damaged: {verdict}", self.path.display());
        }
        Ok(())
    }

    /// The record of the file with this handle, if it is managed.
    pub fn file_by_handle(&self, handle: &FileHandle) -> Result<Option<FileRecord>> {
        self.query_file("f.handle = ?1", params![handle.to_string()])
    }

    /// The record of the file with this id.
    pub fn file_by_id(&self, id: FileId) -> Result<Option<FileRecord>> {
        self.query_file("f.id = ?1", params![id.0])
    }

    fn query_file(&self, cond: &str, args: impl rusqlite::Params) -> Result<Option<FileRecord>> {
        let sql = format!(
            "SELECT f.id, f.handle, f.ino, f.generation, f.path, f.resident, f.modified,
                    f.valid_len, f.size, f.mtime_sec, f.mtime_nsec, f.ctime_sec, f.ctime_nsec,
                    v.id, v.size, v.mtime_sec, v.mtime_nsec, v.ctime_sec, v.ctime_nsec,
                    v.content_hash, v.manifest, f.filling
             FROM files f JOIN versions v ON v.id = f.version_id WHERE {cond}"
        );
        let damaged = || format!("reading the catalog {}", self.path.display());
        let mut stmt = self.conn.prepare_cached(&sql).with_context(damaged)?;
        let row = stmt
            .query_row(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, i64>(7)? as u64,
                    stat_from_row(r, 8)?,
                    r.get::<_, i64>(13)?,
                    stat_from_row(r, 14)?,
                    r.get::<_, String>(19)?,
                    r.get::<_, Vec<u8>>(20)?,
                    r.get::<_, bool>(21)?,
                ))
            })
            .optional()
            .with_context(damaged)?;
        let Some((
            id,
            handle,
            ino,
            gen,
            path,
            resident,
            modified,
            valid_len,
            expected,
            vid,
            vstat,
            hash,
            manifest,
            filling,
        )) = row
        else {
            return Ok(None);
        };
        let manifest = decode_manifest(&manifest)
            .with_context(|| format!("catalog entry {id} ({path}) has a damaged manifest"))?;
        let resident = Residency::from_bytes(&resident, manifest.len())
            .with_context(|| format!("catalog entry {id} ({path}) has a damaged residency map"))?;
        Ok(Some(FileRecord {
            id: FileId(id),
            identity: Identity {
                handle: handle.parse()?,
                ino: ino as u64,
                generation: gen as u64,
            },
            path: PathBuf::from(path),
            version: Version {
                id: vid,
                stat: vstat,
                content_hash: hash,
                manifest: Arc::new(manifest),
            },
            resident,
            modified,
            valid_len,
            expected,
            filling,
        }))
    }

    /// Record a new archived version of a file, fully resident. Replaces
    /// any earlier version of the same file (by handle).
    pub fn record_archive(
        &mut self,
        identity: &Identity,
        path: &Path,
        stat: &StatSnap,
        content_hash: &str,
        manifest: &[ChunkRef],
    ) -> Result<FileId> {
        let tx = self.conn.transaction()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT INTO versions (size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec,
                                   content_hash, manifest, archived_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                stat.size as i64,
                stat.mtime.sec,
                stat.mtime.nsec,
                stat.ctime.sec,
                stat.ctime.nsec,
                content_hash,
                encode_manifest(manifest),
                now
            ],
        )?;
        let vid = tx.last_insert_rowid();
        let resident = Residency::full(manifest.len()).to_bytes();
        let path = path.to_string_lossy();
        let old_version: Option<i64> = tx
            .query_row(
                "SELECT version_id FROM files WHERE handle = ?1",
                params![identity.handle.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO files (handle, ino, generation, path, version_id, resident, modified,
                                valid_len, size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(handle) DO UPDATE SET
                ino = excluded.ino, generation = excluded.generation, path = excluded.path,
                version_id = excluded.version_id, resident = excluded.resident, modified = 0,
                valid_len = excluded.valid_len,
                size = excluded.size, mtime_sec = excluded.mtime_sec,
                mtime_nsec = excluded.mtime_nsec, ctime_sec = excluded.ctime_sec,
                ctime_nsec = excluded.ctime_nsec",
            params![
                identity.handle.to_string(),
                identity.ino as i64,
                identity.generation as i64,
                path,
                vid,
                resident,
                stat.size as i64,
                stat.mtime.sec,
                stat.mtime.nsec,
                stat.ctime.sec,
                stat.ctime.nsec
            ],
        )?;
        if let Some(old) = old_version {
            tx.execute("DELETE FROM versions WHERE id = ?1", params![old])?;
        }
        let id: i64 = tx.query_row(
            "SELECT id FROM files WHERE handle = ?1",
            params![identity.handle.to_string()],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(FileId(id))
    }

    /// Record which chunks are on disk now and the attributes ebb leaves
    /// the file with. ebb's own writes keep size and mtime; if either
    /// differs from what was recorded, someone else changed the file, and
    /// that is kept (sticky `modified`, `valid_len` cut to the size) before
    /// the new attributes replace the old.
    pub fn set_residency(
        &mut self,
        id: FileId,
        resident: &Residency,
        stat: &StatSnap,
    ) -> Result<()> {
        // Callers sync what they filled first.
        let settled = resident.is_settled();
        let n = self.conn.execute(
            "UPDATE files SET resident = ?2,
                modified = (modified OR size != ?3 OR mtime_sec != ?4 OR mtime_nsec != ?5),
                valid_len = min(valid_len, ?3),
                size = ?3, mtime_sec = ?4, mtime_nsec = ?5, ctime_sec = ?6, ctime_nsec = ?7,
                filling = (filling AND NOT ?8)
             WHERE id = ?1",
            params![
                id.0,
                resident.to_bytes(),
                stat.size as i64,
                stat.mtime.sec,
                stat.mtime.nsec,
                stat.ctime.sec,
                stat.ctime.nsec,
                settled
            ],
        )?;
        if n != 1 {
            bail!("catalog entry {} vanished", id.0);
        }
        Ok(())
    }

    /// [`Catalog::set_residency`], durable when it returns (the WAL is
    /// synced at this commit, and so every commit before it): what must
    /// survive a power cut before ebb goes on, such as "released" before
    /// the content is punched.
    pub fn set_residency_durably(
        &mut self,
        id: FileId,
        resident: &Residency,
        stat: &StatSnap,
    ) -> Result<()> {
        self.durably(|cat| cat.set_residency(id, resident, stat))
    }

    /// If `stat` shows a change ebb did not make, record it (and in `rec`)
    /// before anything records new attributes over the evidence: the file
    /// counts as modified. `unseen`: nothing held the file's writers off
    /// since the record was made (no daemon, no keeper: a reboot), so the
    /// change may have written anywhere, zeros included, and no archived
    /// byte comes back into the file (`valid_len` 0): it is what is on
    /// disk. Otherwise every write to a missing range waited to have it
    /// filled first, so the change was to times or modes (a `touch`, a
    /// `chmod`) or to what was already resident, and missing chunks are
    /// still filled; so they are if a fill was under way (see
    /// [`FileRecord::filling`]): the difference may be ebb's own.
    pub fn note_changes(
        &mut self,
        rec: &mut FileRecord,
        stat: &StatSnap,
        unseen: bool,
    ) -> Result<()> {
        if !rec.is_modified(stat) || rec.modified {
            return Ok(());
        }
        let valid_len = if unseen && !rec.filling {
            0
        } else {
            rec.valid_len.min(stat.size)
        };
        self.mark_modified(rec.id, valid_len)?;
        rec.modified = true;
        rec.valid_len = valid_len;
        Ok(())
    }

    /// Say, durably, that fills of `id` are under way (see
    /// [`FileRecord::filling`]).
    pub fn set_filling_durably(&mut self, id: FileId) -> Result<()> {
        self.durably(|cat| cat.set_filling(id))
    }

    /// [`Catalog::set_filling_durably`], as part of a larger commit.
    pub fn set_filling(&mut self, id: FileId) -> Result<()> {
        self.conn
            .execute("UPDATE files SET filling = 1 WHERE id = ?1", params![id.0])?;
        Ok(())
    }

    /// Say, durably, that the fills of `ids` are over and durable (their
    /// filler synced each file first).
    pub fn clear_filling_durably(&mut self, ids: &[FileId]) -> Result<()> {
        self.durably(|cat| {
            cat.batch(|cat| {
                for id in ids {
                    cat.conn
                        .execute("UPDATE files SET filling = 0 WHERE id = ?1", params![id.0])?;
                }
                Ok(())
            })
        })
    }

    /// Run `f` with every commit it makes durable when it returns (the WAL
    /// synced at each, and so every commit before).
    pub fn durably<T>(&mut self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("PRAGMA synchronous=FULL")?;
        let result = f(self);
        self.conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        result
    }

    /// Remember that the file's content was changed since it was archived,
    /// and that no archived byte at or past `valid_len` may come back.
    pub fn mark_modified(&mut self, id: FileId, valid_len: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE files SET modified = 1, valid_len = min(valid_len, ?2) WHERE id = ?1",
            params![id.0, valid_len as i64],
        )?;
        Ok(())
    }

    /// Run `f` in one transaction (for the daemon's batched updates).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Files whose archived content is not all on disk (released or
    /// partial): how many, and the paths of the first `limit`.
    pub fn not_resident(&self, limit: usize) -> Result<(u64, Vec<PathBuf>)> {
        let (mut count, mut first) = (0u64, Vec::new());
        self.for_each_not_resident(|path, _| {
            count += 1;
            if first.len() < limit {
                first.push(path.to_path_buf());
            }
            Ok(())
        })?;
        Ok((count, first))
    }

    /// Call `f` with the path and handle of every file whose archived
    /// content is not all on disk, in path order.
    pub fn for_each_not_resident(
        &self,
        mut f: impl FnMut(&Path, &FileHandle) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT f.path, f.handle, f.resident, length(v.manifest) FROM files f
             JOIN versions v ON v.id = f.version_id ORDER BY f.path",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let path = PathBuf::from(r.get::<_, String>(0)?);
            let chunks = (r.get::<_, i64>(3)? as usize).saturating_sub(1) / MANIFEST_ENTRY;
            let resident =
                Residency::from_bytes(&r.get::<_, Vec<u8>>(2)?, chunks).with_context(|| {
                    format!(
                        "catalog entry {} has a damaged residency map",
                        path.display()
                    )
                })?;
            if !resident.is_complete() {
                f(&path, &r.get::<_, String>(1)?.parse()?)?;
            }
        }
        Ok(())
    }

    /// Number of managed files.
    pub fn count_files(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM files", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

fn stat_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StatSnap> {
    Ok(StatSnap {
        size: r.get::<_, i64>(at)? as u64,
        mtime: Timestamp {
            sec: r.get(at + 1)?,
            nsec: r.get(at + 2)?,
        },
        ctime: Timestamp {
            sec: r.get(at + 3)?,
            nsec: r.get(at + 4)?,
        },
    })
}

/// Manifest blob: a format byte (1), then per chunk `u64 offset | u32 len |
/// [u8; 32] hash`, little-endian.
const MANIFEST_FORMAT: u8 = 1;
const MANIFEST_ENTRY: usize = 8 + 4 + 32;

fn encode_manifest(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + chunks.len() * MANIFEST_ENTRY);
    out.push(MANIFEST_FORMAT);
    for c in chunks {
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.len.to_le_bytes());
        out.extend_from_slice(&c.hash.0);
    }
    out
}

fn decode_manifest(blob: &[u8]) -> Result<Vec<ChunkRef>> {
    let Some((&format, body)) = blob.split_first() else {
        bail!("empty manifest");
    };
    if format != MANIFEST_FORMAT {
        bail!("unknown manifest format {format}");
    }
    if body.len() % MANIFEST_ENTRY != 0 {
        bail!(
            "manifest length {} is not a whole number of entries",
            body.len()
        );
    }
    let mut expect_offset = 0u64;
    body.chunks_exact(MANIFEST_ENTRY)
        .map(|e| {
            let offset = u64::from_le_bytes(e[0..8].try_into()?);
            let len = u32::from_le_bytes(e[8..12].try_into()?);
            let hash = ChunkHash(e[12..44].try_into()?);
            if offset != expect_offset {
                bail!("manifest chunks are not contiguous at {offset}");
            }
            expect_offset += u64::from(len);
            Ok(ChunkRef { offset, len, hash })
        })
        .collect()
}

#[cfg(test)]
mod tests;
