//! The one SQLite knob rusqlite does not wrap.

use std::ffi::c_int;
use std::io;

use rusqlite::{ffi, Connection};

/// `SQLITE_FCNTL_PERSIST_WAL` (sqlite3.h).
const SQLITE_FCNTL_PERSIST_WAL: c_int = 10;

/// `sqlite3_file_control(SQLITE_FCNTL_PERSIST_WAL, 1)`: when this
/// connection is the last to close, keep the `-wal` and `-shm` files
/// instead of deleting them.
///
/// The daemon silences its own catalog files with ignore marks on their
/// inodes, in a group that outlives it (the keeper's). A catalog file
/// deleted and created anew would be a new inode without that mark, and
/// the next daemon would wait on its own reads of it.
#[doc(alias = "SQLITE_FCNTL_PERSIST_WAL")]
pub fn persist_wal(conn: &Connection) -> io::Result<()> {
    let mut on: c_int = 1;
    // SAFETY: `handle()` is the live connection `conn` borrows for the call;
    // "main" is a NUL-terminated name; the opcode reads and writes one
    // c_int through the pointer, which outlives the call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut c_int).cast(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(io::Error::other(format!(
            "sqlite3_file_control(PERSIST_WAL) failed with {rc}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_files_outlive_the_last_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).expect("open");
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .expect("wal");
        persist_wal(&conn).expect("persist");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("write");
        drop(conn);
        assert!(dir.path().join("c.db-wal").exists(), "-wal kept");
        assert!(dir.path().join("c.db-shm").exists(), "-shm kept");
    }
}
