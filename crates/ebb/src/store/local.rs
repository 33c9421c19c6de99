//! The local-directory backend.
//!
//! ```text
//! <root>/ebb-store.json          marker: {"format":1}
//! <root>/chunks/<2 hex>/<64 hex> one encoded chunk per file
//! ```
//!
//! The two-hex fan-out keeps directories to a few thousand entries even for
//! millions of chunks. Objects appear by `rename` from a temp file in the same
//! directory, so a crash leaves at worst a stray `.tmp-*` file, never a
//! half-written object under a real name.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Deserialize;

use super::{Backend, ChunkHash, StoreError, MAX_BLOB_LEN};

/// Name of the file that marks a directory as an ebb store.
pub const MARKER: &str = "ebb-store.json";
/// The on-disk layout this code reads and writes.
const FORMAT: u32 = 1;

#[derive(Deserialize)]
struct Marker {
    format: u32,
}

/// A store in a local directory (the default backend).
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    chunks: PathBuf,
    /// Directories whose entries changed since the last `sync`: their fsync
    /// is what makes the renames (and new fan-out directories) durable.
    dirty: Mutex<BTreeSet<PathBuf>>,
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

impl LocalDir {
    /// Create the store at `path` (and any missing parents) unless it exists;
    /// then open it. Idempotent.
    pub fn create(path: &Path) -> Result<LocalDir, StoreError> {
        let chunks = path.join("chunks");
        fs::create_dir_all(&chunks).map_err(io_err("create store directory", &chunks))?;
        let marker = path.join(MARKER);
        if !marker
            .try_exists()
            .map_err(io_err("look for store marker", &marker))?
        {
            let json = format!(r#"{{"format":{FORMAT}}}"#);
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(path)
                .map_err(io_err("create store marker in", path))?;
            tmp.write_all(json.as_bytes())
                .and_then(|()| tmp.as_file().sync_all())
                .map_err(io_err("write store marker", tmp.path()))?;
            // The marker is written last, so a directory that has one is complete.
            tmp.persist(&marker)
                .map_err(|e| io_err("rename store marker into place", &marker)(e.error))?;
            fsync_dir(path)?;
        }
        Self::open(path)
    }

    /// Open an existing store; [`StoreError::NotAStore`] if `path` or its
    /// marker is missing, unreadable or of an unknown format.
    pub fn open(path: &Path) -> Result<LocalDir, StoreError> {
        let not_a_store = |why: String| StoreError::NotAStore {
            path: path.to_owned(),
            why,
        };
        if !path.is_dir() {
            return Err(not_a_store("no such directory".into()));
        }
        let bytes = fs::read(path.join(MARKER))
            .map_err(|e| not_a_store(format!("cannot read its {MARKER}: {e}")))?;
        let marker: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| not_a_store(format!("its {MARKER} is damaged: {e}")))?;
        if marker.format != FORMAT {
            return Err(not_a_store(format!(
                "format {} is not the supported format {FORMAT}",
                marker.format
            )));
        }
        Ok(LocalDir {
            root: path.to_owned(),
            chunks: path.join("chunks"),
            dirty: Mutex::default(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn fan_out(&self, hash: &ChunkHash) -> (PathBuf, PathBuf) {
        let name = hash.to_string();
        let dir = self.chunks.join(&name[..2]);
        let object = dir.join(name);
        (dir, object)
    }

    fn mark_dirty(&self, dir: PathBuf) {
        // The set is valid whatever a panicking holder was doing.
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dir);
    }
}

impl Backend for LocalDir {
    fn put(&self, hash: &ChunkHash, blob: &[u8]) -> Result<(), StoreError> {
        let (dir, object) = self.fan_out(hash);
        match fs::create_dir(&dir) {
            Ok(()) => self.mark_dirty(self.chunks.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create chunk directory", &dir)(e)),
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(io_err("create temporary chunk file in", &dir))?;
        tmp.write_all(blob)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err("write chunk", tmp.path()))?;
        // Replaces a damaged object; a concurrent put of the same hash may
        // win the rename, and both files hold the same bytes.
        tmp.persist(&object)
            .map_err(|e| io_err("rename chunk into place", &object)(e.error))?;
        self.mark_dirty(dir);
        Ok(())
    }

    fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>, StoreError> {
        let (_, object) = self.fan_out(hash);
        let file = match File::open(&object) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { hash: *hash })
            }
            Err(e) => return Err(io_err("open chunk", &object)(e)),
        };
        // Bounded read: a damaged or replaced object must not make us
        // allocate its whole size.
        let mut blob = Vec::new();
        file.take(MAX_BLOB_LEN as u64 + 1)
            .read_to_end(&mut blob)
            .map_err(io_err("read chunk", &object))?;
        if blob.len() > MAX_BLOB_LEN {
            return Err(StoreError::Corrupt {
                hash: *hash,
                why: format!("object is larger than any chunk encoding ({MAX_BLOB_LEN} bytes)"),
            });
        }
        Ok(blob)
    }

    fn make_durable(&self, hash: &ChunkHash) -> Result<(), StoreError> {
        let (dir, object) = self.fan_out(hash);
        File::open(&object)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync chunk", &object))?;
        // Its name, and a fan-out directory made by the same writer.
        self.mark_dirty(dir);
        self.mark_dirty(self.chunks.clone());
        Ok(())
    }

    fn contains(&self, hash: &ChunkHash) -> Result<bool, StoreError> {
        let (_, object) = self.fan_out(hash);
        object
            .try_exists()
            .map_err(io_err("look for chunk", &object))
    }

    fn sync(&self) -> Result<(), StoreError> {
        let dirs = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        // Fan-out directories before `chunks/`, whose fsync makes new fan-out
        // directories durable: BTreeSet order puts `chunks` first, so reverse.
        let mut pending = dirs.into_iter().rev();
        while let Some(dir) = pending.next() {
            if let Err(e) = fsync_dir(&dir) {
                // Keep what is not durable yet, so the next sync retries it.
                let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
                dirty.insert(dir);
                dirty.extend(pending);
                return Err(e);
            }
        }
        Ok(())
    }

    fn local_path(&self, hash: &ChunkHash) -> Option<PathBuf> {
        Some(self.fan_out(hash).1)
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_objects(root: &Path) -> usize {
        let mut n = 0;
        for dir in fs::read_dir(root.join("chunks")).unwrap() {
            for f in fs::read_dir(dir.unwrap().path()).unwrap() {
                let name = f.unwrap().file_name();
                assert_eq!(name.len(), 64, "stray file {name:?}");
                n += 1;
            }
        }
        n
    }

    #[test]
    fn create_is_idempotent_and_open_finds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/store");
        LocalDir::create(&root).unwrap();
        LocalDir::create(&root).unwrap();
        let store = LocalDir::open(&root).unwrap();
        assert_eq!(store.root(), root);
        assert_eq!(
            fs::read_to_string(root.join(MARKER)).unwrap(),
            r#"{"format":1}"#
        );
        assert!(store.describe().contains(&*root.to_string_lossy()));
    }

    #[test]
    fn open_without_store_is_not_a_store() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let plain = tmp.path().join("plain");
        fs::create_dir(&plain).unwrap();
        let damaged = tmp.path().join("damaged");
        fs::create_dir(&damaged).unwrap();
        fs::write(damaged.join(MARKER), "{").unwrap();
        let future = tmp.path().join("future");
        fs::create_dir(&future).unwrap();
        fs::write(future.join(MARKER), r#"{"format":2}"#).unwrap();
        for path in [missing, plain, damaged, future] {
            match LocalDir::open(&path) {
                Err(e @ StoreError::NotAStore { .. }) => {
                    assert!(e.to_string().contains(".ebb/config.json"), "{e}")
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn put_get_contains_and_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalDir::create(tmp.path()).unwrap();
        let hash = ChunkHash::of(b"x");
        assert!(!store.contains(&hash).unwrap());
        assert!(matches!(store.get(&hash), Err(StoreError::Missing { .. })));
        store.put(&hash, b"blob").unwrap();
        // A second put replaces the object (the store repairs so).
        store.put(&hash, b"other").unwrap();
        assert!(store.contains(&hash).unwrap());
        assert_eq!(store.get(&hash).unwrap(), b"other");
        store.make_durable(&hash).unwrap();
        assert_eq!(count_objects(tmp.path()), 1);
        store.sync().unwrap();
        assert!(store.dirty.lock().unwrap().is_empty());
    }

    #[test]
    fn oversized_object_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalDir::create(tmp.path()).unwrap();
        let hash = ChunkHash::of(b"x");
        store.put(&hash, b"").unwrap();
        let (_, object) = store.fan_out(&hash);
        File::options()
            .write(true)
            .open(&object)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert!(matches!(store.get(&hash), Err(StoreError::Corrupt { .. })));
    }

    proptest::proptest! {
        /// Whatever a store's marker holds: opened (format 1 only) or
        /// refused as not a store, no panic. `PROPTEST_CASES` cases.
        #[test]
        fn untrusted_store_markers_never_panic(
            marker in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            format in 0u32..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(MARKER), &marker).unwrap();
            if LocalDir::open(dir.path()).is_ok() {
                proptest::prop_assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&marker).ok().and_then(|v| v["format"].as_u64()),
                    Some(1)
                );
            }
            fs::write(dir.path().join(MARKER), format!(r#"{{"format":{format}}}"#)).unwrap();
            proptest::prop_assert_eq!(LocalDir::open(dir.path()).is_ok(), format == FORMAT);
        }
    }
}
