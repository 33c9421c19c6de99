//! A managed tree: the directory `ebb init` was run on, its state directory
//! (`.ebb/`: configuration, catalog, daemon lock, socket and log) and the
//! store it archives into.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::catalog::Catalog;
use crate::store::{LocalDir, Store};

/// Name of the state directory inside a managed tree.
pub const STATE_DIR: &str = ".ebb";
/// The store used when `ebb init` is given none: outside every managed
/// tree, shared by all of them (chunks are content-addressed).
pub const DEFAULT_STORE: &str = "/var/lib/ebb/store";

const CONFIG_FILE: &str = "config.json";
const CONFIG_FORMAT: u32 = 1;

impl Config {
    /// `.ebb/config.json`'s bytes, checked.
    fn parse(text: &[u8]) -> Result<Config> {
        let config: Config =
            serde_json::from_slice(text).context("it is damaged; re-create it with `ebb init`")?;
        if config.format != CONFIG_FORMAT {
            bail!(
                "it has format {}, this ebb understands {CONFIG_FORMAT}",
                config.format
            );
        }
        Ok(config)
    }
}

/// `.ebb/config.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub format: u32,
    /// Random id of this tree, so a copy of `.ebb` is told apart.
    pub id: String,
    /// Directory of the local store.
    pub store: PathBuf,
    /// The change journal keeps at most this many events (default
    /// 1 000 000) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_max_events: Option<u64>,
    /// ... and none older than this many days (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_max_age_days: Option<u64>,
    /// Mark the filesystem for pre-content events as soon as the daemon
    /// starts, even with nothing archived or tracked yet (default: only
    /// then, or at the first release or snapshot). Costs every new file's
    /// first write a round trip to the daemon; lets the first `ebb
    /// snapshot` of a file see writers that opened it before it was asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mark_at_start: bool,
}

/// An initialised managed tree.
#[derive(Clone, Debug)]
pub struct Tree {
    root: PathBuf,
    config: Config,
}

impl Tree {
    /// Make `root` a managed tree archiving into `store` (default
    /// [`DEFAULT_STORE`]).
    pub fn init(root: &Path, store: Option<&Path>) -> Result<Tree> {
        let root = std::fs::canonicalize(root)
            .with_context(|| format!("cannot manage {}: no such directory", root.display()))?;
        if !root.is_dir() {
            bail!("cannot manage {}: not a directory", root.display());
        }
        if let Ok(outer) = Tree::find(&root) {
            bail!(
                "{} is already managed (tree {}); nothing changed",
                root.display(),
                outer.root.display()
            );
        }
        refuse_unservable(&root)?;
        let store = store.map_or_else(|| PathBuf::from(DEFAULT_STORE), Path::to_path_buf);
        let store = resolve(&store)?;
        if store.starts_with(&root) {
            bail!(
                "the store {} is inside the managed tree {}; choose a store elsewhere with --store",
                store.display(),
                root.display()
            );
        }
        LocalDir::create(&store)?;
        let state = root.join(STATE_DIR);
        // Root's only: it names every path in the tree (0700 before
        // anything is made in it).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .with_context(|| format!("creating {}", state.display()))?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;
        let config = Config {
            format: CONFIG_FORMAT,
            id: hex::encode(rand::random::<[u8; 8]>()),
            store: std::fs::canonicalize(&store)?,
            journal_max_events: None,
            mark_at_start: false,
            journal_max_age_days: None,
        };
        let mut tree = Tree { root, config };
        tree.set_config(tree.config.clone())?;
        Catalog::create(&tree.catalog_path())?;
        Ok(tree)
    }

    /// Replace the tree's configuration (written atomically; a running
    /// daemon reads it when it starts).
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        write_atomically(
            &self.state_dir().join(CONFIG_FILE),
            &serde_json::to_vec_pretty(&config)?,
        )?;
        self.config = config;
        Ok(())
    }

    /// The managed tree that holds `path` (which need not exist itself, but
    /// its parent must).
    ///
    /// Only a state directory `ebb init` could have made counts (see
    /// [`trusted_state_dir`]): one a user made in a directory they can
    /// write (a planted `.ebb`) is passed over, so it cannot capture root's
    /// work. A tree inside another is refused.
    pub fn find(path: &Path) -> Result<Tree> {
        let abs = resolve(path)?;
        let mut trees = abs
            .ancestors()
            .filter(|dir| trusted_state_dir(dir))
            .map(Path::to_path_buf);
        let Some(root) = trees.next() else {
            bail!(
                "{} is not under a managed tree; run `ebb init DIR` on a directory above it first",
                path.display()
            )
        };
        if let Some(outer) = trees.next() {
            bail!(
                "{} is a managed tree inside another one ({}); ebb refuses nested trees: remove one of them with `ebb unserve` and its {STATE_DIR} directory",
                root.display(),
                outer.display()
            );
        }
        Tree::load(&root, &root.join(STATE_DIR).join(CONFIG_FILE))
    }

    /// The tree rooted exactly at `root`.
    pub fn open(root: &Path) -> Result<Tree> {
        let tree = Tree::find(root)?;
        let root = resolve(root)?;
        if tree.root != root {
            bail!(
                "{} is inside the managed tree {}, not its root; give the root",
                root.display(),
                tree.root.display()
            );
        }
        Ok(tree)
    }

    fn load(root: &Path, config_path: &Path) -> Result<Tree> {
        // Trees made before state directories were root's only.
        let state = root.join(STATE_DIR);
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} root's only", state.display()))?;
        }
        let text = std::fs::read(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config = Config::parse(&text)
            .with_context(|| format!("{} cannot be used", config_path.display()))?;
        Ok(Tree {
            root: root.to_path_buf(),
            config,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.state_dir().join("catalog.db")
    }

    /// Present (made durably by the first release) once the tree has made
    /// a stub: its daemon then marks the filesystem from the start, whatever
    /// its catalog holds (a catalog that lost rows must not leave a stub
    /// unwatched).
    pub fn stubs_made_path(&self) -> PathBuf {
        self.state_dir().join("stubs-made")
    }

    /// Record, durably, that the tree makes stubs (see
    /// [`Tree::stubs_made_path`]).
    pub fn note_stubs_made(&self) -> Result<()> {
        let path = self.stubs_made_path();
        if path.exists() {
            return Ok(());
        }
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::File::open(self.state_dir())
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", self.state_dir().display()))
    }

    /// The daemon's lock file; it holds the daemon's pid.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir().join("daemon.pid")
    }

    /// The daemon's control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir().join("daemon.sock")
    }

    /// The log of a daemon started with `--background`.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir().join("daemon.log")
    }

    /// Hold the tree's service lock: shared while files become stubs
    /// (`release`), exclusive while the tree goes out of service
    /// (`unserve`), so no stub is made that nothing would serve. Waits.
    pub fn service_lock(&self, exclusive: bool) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = self.state_dir().join("service.lock");
        // Opened read-only once it exists: closing it then raises no
        // FAN_CLOSE_WRITE for the daemon to hear.
        let file = match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path),
            other => other,
        }
        .with_context(|| format!("opening {}", path.display()))?;
        let how = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(file, how)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))
    }

    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_path())
    }

    pub fn store(&self) -> Result<Store> {
        let backend = LocalDir::open(&self.config.store)?;
        Ok(Store::new(std::sync::Arc::new(backend)))
    }

    /// `path` (absolute, resolved) relative to the root, or an error naming
    /// the tree if it is outside or is ebb's own state.
    pub fn relative<'a>(&self, path: &'a Path) -> Result<&'a Path> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            anyhow::anyhow!(
                "{} is outside the managed tree {}",
                path.display(),
                self.root.display()
            )
        })?;
        if rel.starts_with(STATE_DIR) {
            bail!("{} is ebb's own state, not a managed file", path.display());
        }
        Ok(rel)
    }
}

/// Refuse a directory whose filesystem has no fanotify pre-content events
/// (tmpfs, for one): its released files could never be served. Tried the
/// way the daemon will do it, with an ignore-only filesystem mark.
fn refuse_unservable(root: &Path) -> Result<()> {
    use crate::sys::fanotify::{Group, InitOptions, FAN_PRE_ACCESS};
    let group = Group::new(InitOptions::pre_content()).context(
        "fanotify_init(FAN_CLASS_PRE_CONTENT) failed: ebb needs root and Linux 6.14 or later",
    )?;
    match group.arm_filesystem(root, FAN_PRE_ACCESS) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV)
            ) =>
        {
            bail!(
                "the filesystem of {} has no fanotify pre-content events ({e}): ebb could never serve a file released there; choose a directory on XFS, btrfs or ext4 (nothing changed)",
                root.display()
            )
        }
        Err(e) => {
            Err(e).with_context(|| format!("trying pre-content events on {}", root.display()))
        }
    }
}

/// `path` with every part that exists resolved (symlinks, `..`), and the
/// rest, which does not exist yet, applied as written.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::from("/");
    let mut exists = true;
    for part in absolute(path)?.components() {
        match part {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match std::fs::canonicalize(&out) {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    Ok(out)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Drop `.` components so the comparisons above are purely textual.
    Ok(abs
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

/// Write `bytes` to `path` so that a crash leaves the old file or the new,
/// never a mix.
/// Whether `dir` holds a state directory `ebb init` could have made: a
/// directory (not a symlink) owned by root, writable by nobody else, on
/// `dir`'s own filesystem, with a `config.json` that is a regular file
/// owned by root. Anything else named `.ebb` may be a user's: it is not a
/// tree.
pub fn trusted_state_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let state = dir.join(STATE_DIR);
    let (Ok(parent), Ok(meta)) = (std::fs::metadata(dir), std::fs::symlink_metadata(&state)) else {
        return false;
    };
    let config = std::fs::symlink_metadata(state.join(CONFIG_FILE));
    let trusted = meta.is_dir()
        && meta.uid() == 0
        && meta.mode() & 0o022 == 0
        && meta.dev() == parent.dev()
        && config.is_ok_and(|c| c.is_file() && c.uid() == 0);
    if !trusted && std::fs::symlink_metadata(state.join(CONFIG_FILE)).is_ok() {
        warn_once_untrusted(&state);
    }
    trusted
}

/// Say once per process that `state` looks like a tree's and is not one.
fn warn_once_untrusted(state: &Path) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.iter().any(|p| p == state) {
        said.push(state.to_path_buf());
        // Not `eprintln!`, which panics when stderr cannot be written.
        let _ = writeln!(
            std::io::stderr(),
            "ebb: warning: {} is not a state directory ebb made (not root's own, or a symlink, or on another filesystem): not taken for a tree",
            state.display()
        );
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_find_and_refusals() {
        crate::require_root!();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let store = dir.path().join("store");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        let tree = Tree::init(&root, Some(&store)).expect("init");
        assert!(tree.catalog_path().exists());
        let found = Tree::find(&root.join("sub/not-yet")).expect("find");
        assert_eq!(found.root(), tree.root());
        assert_eq!(found.config().id, tree.config().id);
        assert!(Tree::open(&root.join("sub")).is_err(), "not the root");

        let again = Tree::init(&root.join("sub"), Some(&store)).expect_err("nested");
        assert!(format!("{again:#}").contains("already managed"));
        let inside = tempfile::tempdir().expect("tempdir");
        let err =
            Tree::init(inside.path(), Some(&inside.path().join("s"))).expect_err("store inside");
        assert!(format!("{err:#}").contains("inside the managed tree"));

        let spelled = Tree::init(inside.path(), Some(&inside.path().join("x/../s")))
            .expect_err("store inside, spelled with ..");
        assert!(format!("{spelled:#}").contains("inside the managed tree"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(inside.path(), &link).expect("symlink");
        let via_link = Tree::init(&link, Some(&link.join("s"))).expect_err("store via a symlink");
        assert!(format!("{via_link:#}").contains("inside the managed tree"));

        let outside = Tree::find(dir.path()).expect_err("outside");
        assert!(format!("{outside:#}").contains("ebb init"));
        let err = tree
            .relative(&tree.root().join(".ebb/catalog.db"))
            .expect_err("own state");
        assert!(format!("{err:#}").contains("own state"));
    }

    use proptest::prelude::*;

    proptest! {
        /// A config file's bytes: a tree or a clean error, no panic.
        /// `PROPTEST_CASES` cases (SECURITY.md).
        #[test]
        fn untrusted_config_bytes_never_panic(
            text in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..300),
                ("[0-9]{1,3}", ".{0,20}", ".{0,40}", "[0-9-]{0,25}").prop_map(|(f, id, store, n)| format!(
                    r#"{{"format":{f},"id":{id:?},"store":{store:?},"journal_max_events":{n}}}"#
                ).into_bytes()),
            ]
        ) {
            if let Ok(config) = Config::parse(&text) {
                prop_assert_eq!(config.format, CONFIG_FORMAT);
            }
        }
    }
}
