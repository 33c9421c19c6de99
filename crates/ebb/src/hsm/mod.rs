//! Hierarchical storage management: moving file content into the store
//! (archive), freeing it on disk (release), bringing it back (restore) and
//! telling which is which (status). The populate-on-access service that
//! makes released files readable lives in [`crate::daemon`].

mod archive;
mod exclusive;
mod release;
mod restore;
mod status;

pub use archive::{archive, ArchiveOutcome};
pub use release::{release, ReleaseOutcome};
pub use restore::{fill_chunk, fill_range, restore, RestoreOutcome};
pub use status::{status, FileStatus};

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::catalog::Identity;
use crate::sys::file::inode_generation;
use crate::sys::handle::handle_of;
use crate::tree::{resolve, Tree, STATE_DIR};

/// Told how far long work has got, for progress bars.
pub trait Progress: Sync {
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64);
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

/// The identity of an open file, as the catalog keys it.
pub fn identity_of(file: &File) -> Result<Identity> {
    use std::os::unix::fs::MetadataExt;
    let (handle, _mount) = handle_of(file.as_fd()).context("name_to_handle_at")?;
    let meta = file.metadata()?;
    Ok(Identity {
        handle,
        ino: meta.ino(),
        generation: inode_generation(file.as_fd()).context("reading the inode generation")?,
    })
}

/// A path [`managed_path`] checked, and the file it named then.
#[derive(Clone, Debug)]
pub struct Checked {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl std::ops::Deref for Checked {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Check that `path` names a regular file inside `tree` (not ebb's own
/// state, not a symlink) and return it resolved, with the file it names.
pub fn managed_path(tree: &Tree, path: &Path) -> Result<Checked> {
    let abs = resolve(path)?;
    tree.relative(&abs)?;
    let meta = std::fs::symlink_metadata(&abs)
        .with_context(|| format!("{}: no such file", path.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "{} is a symlink; give the file it points to",
            path.display()
        );
    }
    if meta.is_dir() {
        bail!(
            "{} is a directory; use -r to work on the files in it",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    same_filesystem(tree, &abs, &meta)?;
    crate::hooks::pause_point("path-checked", abs.display());
    use std::os::unix::fs::MetadataExt;
    Ok(Checked {
        path: abs,
        dev_ino: (meta.dev(), meta.ino()),
    })
}

/// [`open_managed`] for a path [`managed_path`] checked: refused unless
/// what is opened is the file that was checked.
pub fn open_checked(tree: &Tree, checked: &Checked) -> Result<File> {
    let file = open_managed(tree, checked)?;
    if crate::sys::file::dev_ino(file.as_fd())? != checked.dev_ino {
        bail!(
            "{} is another file now than when it was checked (replaced meanwhile?); nothing changed",
            checked.display()
        );
    }
    Ok(file)
}

/// Open the file at `path` (as [`managed_path`] returned it) for reading,
/// beneath the tree's root with no symlink followed and no mount crossed:
/// a component another user swapped for a symlink since the path was
/// checked is refused, never followed.
pub fn open_managed(tree: &Tree, path: &Path) -> Result<File> {
    let rel = tree.relative(path)?;
    let root = File::open(tree.root())
        .with_context(|| format!("opening the tree root {}", tree.root().display()))?;
    let file = crate::sys::file::open_beneath(root.as_fd(), rel).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => anyhow::anyhow!(
                "{} has a symlink or a mount on the way now (it was swapped since it was checked?); nothing changed",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
        }
    })?;
    if !file.metadata()?.is_file() {
        bail!(
            "{} is not a regular file any more; nothing changed",
            path.display()
        );
    }
    Ok(file)
}

/// Refuse a file on another filesystem mounted inside the tree: the
/// daemon marks and serves the tree's own filesystem only, so a stub there
/// would read as zeros.
fn same_filesystem(tree: &Tree, path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(tree.root())
        .with_context(|| format!("reading {}", tree.root().display()))?;
    if meta.dev() != root.dev() {
        bail!(
            "{} is on another filesystem mounted inside the tree {}: ebb serves only the tree's own filesystem (manage that one as a tree of its own); nothing changed",
            path.display(),
            tree.root().display()
        );
    }
    Ok(())
}

/// Expand `paths` into the regular files they name, descending into
/// directories when `recursive` (never into `.ebb`, never through
/// symlinks). Each comes with the error found on the way to it, if any, so
/// a caller can report it by path and go on.
pub fn expand_paths(paths: &[PathBuf], recursive: bool) -> Vec<(PathBuf, Result<()>)> {
    let mut out = Vec::new();
    for path in paths {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && recursive => walk(path, &mut out),
            Ok(_) => out.push((path.clone(), Ok(()))),
            Err(e) => {
                let err = anyhow::Error::new(e).context(format!("{}", path.display()));
                out.push((path.clone(), Err(err)));
            }
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Result<()>)>) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).map(|m| m.dev()).ok();
    walk_on(dir, dev, out);
}

/// [`walk`] within the filesystem `dev`: a directory that is the root of
/// another filesystem mounted inside is reported, not entered.
fn walk_on(dir: &Path, dev: Option<u64>, out: &mut Vec<(PathBuf, Result<()>)>) {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let err = anyhow::Error::new(e).context(format!("reading {}", dir.display()));
            out.push((dir.to_path_buf(), Err(err)));
            return;
        }
    };
    let mut children: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    children.sort_by_key(|e| e.file_name());
    for entry in children {
        if entry.file_name() == STATE_DIR {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => match std::fs::symlink_metadata(&path) {
                Ok(m) if Some(m.dev()) != dev => out.push((
                    path.clone(),
                    Err(anyhow::anyhow!(
                        "{} is another filesystem mounted inside the tree: not descended into",
                        path.display()
                    )),
                )),
                _ => walk_on(&path, dev, out),
            },
            Ok(t) if t.is_file() => out.push((path, Ok(()))),
            _ => {}
        }
    }
}
