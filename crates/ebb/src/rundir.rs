//! ebb's runtime directory: the files that live as long as a boot and no
//! longer, because what they describe is held in memory by a process or
//! the kernel — the keeper's socket, lock and log, the record of the
//! filesystem mark, the progress of snapshots being taken.
//!
//! It is `/run/ebb`, or the directory `EBB_RUN_DIR` names (tests give each
//! run its own; a user may move it). `/run` is a tmpfs that starts empty
//! at every boot, so the directory is made (mode `0700`) when first
//! needed. One that is already there must be a directory of our own: a
//! symlink, or a directory of another user, would let someone else choose
//! where a root daemon writes and whom its socket answers.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The runtime directory unless [`ENV`] names another.
pub const DEFAULT: &str = "/run/ebb";
/// The environment variable that overrides [`DEFAULT`].
pub const ENV: &str = "EBB_RUN_DIR";

/// Where ebb keeps its runtime files; [`RunDir::ensure`] makes it usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

/// Why the runtime directory cannot be used. Each message names the
/// directory and the way out.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{ENV}={path} is not an absolute path; set it to one (or unset it for {DEFAULT})")]
    Relative { path: String },
    #[error("cannot create the runtime directory {path}: {source}; create it (mode 0700) or set {ENV} to a directory you may create")]
    Create { path: String, source: io::Error },
    #[error("cannot check the runtime directory {path}: {source}; fix its parent or set {ENV} to another directory")]
    Check { path: String, source: io::Error },
    #[error("the runtime directory {path} is a symlink; remove it (ebb creates the directory itself) or set {ENV} to another directory")]
    Symlink { path: String },
    #[error("the runtime directory {path} is not a directory; remove it or set {ENV} to another directory")]
    NotADirectory { path: String },
    #[error("the runtime directory {path} belongs to uid {owner}, not to us (uid {me}); remove it, run as uid {owner}, or set {ENV} to another directory")]
    NotOurs { path: String, owner: u32, me: u32 },
}

impl RunDir {
    /// The runtime directory of this process: `$EBB_RUN_DIR`, or
    /// [`DEFAULT`] when that is unset or empty. Touches nothing.
    pub fn from_env() -> RunDir {
        RunDir::from_var(std::env::var_os(ENV))
    }

    /// [`RunDir::from_env`] given the variable's value.
    pub fn from_var(value: Option<OsString>) -> RunDir {
        match value.filter(|v| !v.is_empty()) {
            Some(v) => RunDir::at(PathBuf::from(v)),
            None => RunDir::at(DEFAULT),
        }
    }

    /// The runtime directory at `path`.
    pub fn at(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make the directory (mode `0700`, parents too) if it is missing, and
    /// check that it is a directory of ours: not a symlink, not a file,
    /// owned by the effective uid.
    pub fn ensure(&self) -> Result<&Path, RunDirError> {
        let shown = || self.path.display().to_string();
        // Every process must find the same directory, whatever its cwd.
        if !self.path.is_absolute() {
            return Err(RunDirError::Relative { path: shown() });
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.path)
                    .map_err(|source| RunDirError::Create {
                        path: shown(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(RunDirError::Check {
                    path: shown(),
                    source,
                })
            }
        }
        // Checked after creating too: `create` succeeds on a symlink to a
        // directory that appeared meanwhile.
        let meta = std::fs::symlink_metadata(&self.path).map_err(|source| RunDirError::Check {
            path: shown(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(RunDirError::Symlink { path: shown() });
        }
        if !meta.is_dir() {
            return Err(RunDirError::NotADirectory { path: shown() });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(RunDirError::NotOurs {
                path: shown(),
                owner: meta.uid(),
                me,
            });
        }
        Ok(&self.path)
    }

    /// Where the keeper of the tree with config id `tree_id` listens
    /// (`<id>.keeper`); its lock is beside it (`<id>.keeper.lock`).
    pub fn keeper_socket(&self, tree_id: &str) -> PathBuf {
        self.path.join(format!("{tree_id}.keeper"))
    }

    /// The keeper's log (`<id>.log`): outside the tree, since an open file
    /// in it would keep the tree's filesystem from being unmounted.
    pub fn keeper_log(&self, tree_id: &str) -> PathBuf {
        self.path.join(format!("{tree_id}.log"))
    }

    /// Since when the filesystem mark is in the tree's group (`<id>.marked`).
    pub fn mark_record(&self, tree_id: &str) -> PathBuf {
        self.path.join(format!("{tree_id}.marked"))
    }

    /// The progress of the tree's snapshots (`<id>.snapshots/`).
    pub fn snapshot_records(&self, tree_id: &str) -> PathBuf {
        self.path.join(format!("{tree_id}.snapshots"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_variable_overrides_the_default_and_empty_means_unset() {
        assert_eq!(RunDir::from_var(None).path(), Path::new("/run/ebb"));
        assert_eq!(
            RunDir::from_var(Some("".into())).path(),
            Path::new("/run/ebb")
        );
        let run = RunDir::from_var(Some("/tmp/r".into()));
        assert_eq!(run.path(), Path::new("/tmp/r"));
        assert_eq!(run.keeper_socket("3f2a"), Path::new("/tmp/r/3f2a.keeper"));
        assert_eq!(run.keeper_log("3f2a"), Path::new("/tmp/r/3f2a.log"));
        assert_eq!(run.mark_record("3f2a"), Path::new("/tmp/r/3f2a.marked"));
        assert_eq!(
            run.snapshot_records("3f2a"),
            Path::new("/tmp/r/3f2a.snapshots")
        );
    }

    #[test]
    fn a_missing_directory_is_made_private_and_an_existing_one_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunDir::at(tmp.path().join("a/b/run"));
        assert_eq!(run.ensure().expect("made"), run.path());
        let meta = std::fs::symlink_metadata(run.path()).expect("stat");
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        std::fs::write(run.path().join("kept"), b"x").expect("write");
        run.ensure().expect("there already");
        assert!(run.path().join("kept").exists(), "ensure emptied it");
    }

    #[test]
    fn a_symlink_a_file_and_a_relative_path_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = RunDir::at(&link).ensure().expect_err("a symlink");
        assert!(matches!(err, RunDirError::Symlink { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&link.display().to_string()) && msg.contains(ENV),
            "{msg}"
        );

        // A symlink to a directory that does not exist is not followed
        // and made either.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).expect("symlink");
        let err = RunDir::at(&dangling)
            .ensure()
            .expect_err("a dangling symlink");
        assert!(matches!(err, RunDirError::Symlink { .. }), "{err}");
        assert!(!tmp.path().join("nowhere").exists());

        let file = tmp.path().join("file");
        std::fs::write(&file, b"precious").expect("write");
        let err = RunDir::at(&file).ensure().expect_err("a file");
        assert!(matches!(err, RunDirError::NotADirectory { .. }), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&file).expect("still there"), b"precious");

        let err = RunDir::at("run/ebb").ensure().expect_err("relative");
        assert!(matches!(err, RunDirError::Relative { .. }), "{err}");
        assert!(!Path::new("run/ebb").exists());
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !crate::testing::have_root(module_path!()) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let err = RunDir::at(&theirs).ensure().expect_err("another uid's");
        assert!(
            matches!(err, RunDirError::NotOurs { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}
