//! The mark a stub carries on disk: an extended attribute naming the tree,
//! the version and the content it stands for.
//!
//! The catalog is the record of which files are stubs; the mark is how a
//! stub is known without it. A file the catalog does not know (its row is
//! gone, it belongs to another tree, the catalog itself is missing) but
//! that carries the mark is refused with `EIO`, never read as the zeros of
//! its holes. The attribute is in the `trusted` namespace: only root can
//! read, set or remove it, so no user can make a file look like a stub, or
//! a stub like a plain file.
//!
//! Set by `release` before the first byte is punched; removed once every
//! chunk is back on disk and durable, before the residency that says so is
//! recorded (removing it changes the ctime, which a resident file's record
//! must hold).

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys::file::{get_xattr, remove_xattr, set_xattr};

/// The attribute's name.
pub const STUB_XATTR: &str = "trusted.ebb.stub";

/// What a stub's mark says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StubMark {
    /// The id of the tree whose catalog holds the file.
    pub tree: String,
    /// The catalog's version row the content is.
    pub version: i64,
    /// BLAKE3 of the whole content, hex.
    pub hash: String,
}

impl std::fmt::Display for StubMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tree {}, version {}, content {}",
            self.tree,
            self.version,
            self.hash.get(..16).unwrap_or(&self.hash)
        )
    }
}

/// Mark `file` as a stub of `mark`.
pub fn set(file: BorrowedFd<'_>, mark: &StubMark) -> io::Result<()> {
    let value = serde_json::to_vec(mark).map_err(io::Error::other)?;
    set_xattr(file, STUB_XATTR, &value)
}

/// The mark `file` carries, if any. A mark that does not parse is still a
/// mark: it is reported as one of an unknown tree.
pub fn get(file: BorrowedFd<'_>) -> io::Result<Option<StubMark>> {
    let Some(value) = get_xattr(file, STUB_XATTR)? else {
        return Ok(None);
    };
    Ok(Some(StubMark::parse(&value)))
}

impl StubMark {
    /// A mark's bytes; one that does not parse is of an unknown tree.
    fn parse(value: &[u8]) -> StubMark {
        serde_json::from_slice(value).unwrap_or_else(|_| StubMark {
            tree: "unknown (damaged mark)".to_string(),
            version: 0,
            hash: String::new(),
        })
    }
}

/// Take the mark off `file` (no error if it has none).
pub fn clear(file: BorrowedFd<'_>) -> io::Result<()> {
    remove_xattr(file, STUB_XATTR)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any xattr value: a mark (of an unknown tree if damaged), no
        /// panic. `PROPTEST_CASES` cases (SECURITY.md).
        #[test]
        fn untrusted_stub_marks_never_panic(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mark = StubMark::parse(&value);
            if serde_json::from_slice::<StubMark>(&value).is_err() {
                proptest::prop_assert_eq!(mark.version, 0);
            }
        }
    }
}
