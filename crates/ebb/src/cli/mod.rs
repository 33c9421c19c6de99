//! The `ebb` command line: parsing, progress bars, human and JSON output.
//! Nothing here decides anything; it calls into the library and reports.

mod bench;
mod files;
mod journal;
mod remote;
mod snapshot;

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::daemon::{self, control};
use crate::tree::Tree;

const ABOUT: &str = "Data tiering and change tracking for Linux";

const LONG_ABOUT: &str = "\
ebb moves cold file content into a store and brings it back the moment any
program reads it. A released file keeps its name, size, mode, owner and
times; its first read (read, mmap or exec) blocks in the kernel until the
daemon has written the bytes back from the store.

Typical use, as root:
  ebb init /data                 manage the tree /data
  ebb archive -r /data/images    copy content into the store
  ebb release -r /data/images    free the blocks on disk
  ebb daemon /data --background  serve reads of released files
  ebb status -r /data            where each file's content is

It also takes point-in-time snapshots of big files in use (ebb snapshot,
ebb changed-ranges, ebb track) and keeps a journal of every change under
the tree (ebb changes, and git's fsmonitor hook).

Readers of released files wait while the daemon is stopped or restarting
(its keeper holds their requests) and go on once it serves again; `ebb
unserve` takes a tree out of service once every file is back on disk.";

#[derive(Parser, Debug)]
#[command(name = "ebb", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start managing a directory tree.
    ///
    /// Creates DIR/.ebb (configuration, catalog, daemon lock and log) and
    /// the store, if it does not exist yet.
    Init {
        /// Root of the tree to manage.
        dir: PathBuf,
        /// Directory of the local store (created if missing; must be
        /// outside the tree). Several trees may share one.
        #[arg(long, value_name = "DIR", default_value = crate::tree::DEFAULT_STORE)]
        store: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy file content into the store (chunked, hashed, compressed,
    /// verified).
    ///
    /// A file that changes while it is read is not recorded. Archiving a
    /// file whose content is already archived does nothing.
    Archive(FileArgs),
    /// Free the blocks of archived files; they keep size, mode, owner and
    /// times.
    ///
    /// Refused for a file that is not archived, has changed since it was
    /// archived, or is open in any process (busy).
    Release(FileArgs),
    /// Bring the content of released or partial files back on disk.
    Restore(FileArgs),
    /// Show where each file's content is: resident, archived, released or
    /// partial.
    ///
    /// With --json, one object per line: path, state, size, resident_bytes,
    /// managed, modified (and resident_ranges for partial files).
    Status(FileArgs),
    /// Serve populate-on-access for a managed tree.
    ///
    /// Runs in the foreground until SIGTERM or SIGINT, logging to stderr
    /// (EBB_LOG sets the level, e.g. EBB_LOG=debug). With --background it
    /// returns once the daemon serves, logging to ROOT/.ebb/daemon.log.
    ///
    /// SIGTERM pauses rather than ends: readers of released files wait
    /// (its keeper holds their requests) until a daemon serves the tree
    /// again; `ebb unserve ROOT` ends service. Under systemd (NOTIFY_SOCKET)
    /// it says READY=1 once it serves, and keeps its kernel handles in the
    /// unit's fd store, taking them back from LISTEN_FDS when its keeper
    /// is gone.
    ///
    /// Files that last as long as a boot (the keeper's socket, lock and
    /// log, the record of the filesystem mark, snapshot progress) go to
    /// /run/ebb, or to the directory EBB_RUN_DIR names; it is made (mode
    /// 0700) when missing and must be a directory of this user, not a
    /// symlink. Every ebb command on the tree must see the same one.
    Daemon {
        /// Root of the managed tree.
        root: PathBuf,
        /// Detach, and return once the filesystem mark is in place.
        #[arg(long)]
        background: bool,
        /// Take over from the daemon serving ROOT (e.g. after an upgrade):
        /// it stops reading, answers what it read and exits; this one goes
        /// on from there. No access is refused or lost.
        #[arg(long)]
        replace: bool,
        /// Threads that fetch and write chunks.
        #[arg(long, default_value_t = 8, value_name = "N")]
        workers: usize,
        /// Print the result as JSON (with --background).
        #[arg(long)]
        json: bool,
        /// Internal: the child of --background reports readiness on stdout.
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
    /// Take a tree out of service: its daemon stops, and nothing holds
    /// readers back any more.
    ///
    /// A daemon stopped by SIGTERM (or `systemctl stop`) leaves the tree
    /// served: its keeper holds the kernel's requests, and readers of
    /// released files wait until a daemon runs again. `unserve` is for
    /// when none will. Refused while any file of the tree is released or
    /// partial (`ebb restore -r ROOT` brings them back), while a snapshot
    /// runs, and while only a keeper holds the tree (start its daemon
    /// first). A tree nothing serves is left as it is.
    ///
    /// With --json: root, result ("unserved" or "unchanged"), stopped,
    /// daemon_pid.
    Unserve {
        /// Root of the managed tree.
        root: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold a daemon's kernel handles across its crashes (started by the
    /// daemon itself; not for direct use).
    #[command(hide = true)]
    Keeper {
        /// The socket to serve on.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Take a point-in-time clone of a file while it is in use.
    ///
    /// Clones SRC to DST on the same filesystem (XFS made with reflink=1,
    /// or btrfs), a few extents at a time so that no writer of SRC waits
    /// long. DST is SRC as it was when the command started: from then on,
    /// a write to a range not cloned yet waits until that range is cloned.
    /// The daemon serving SRC's tree does the work: it must be running.
    ///
    /// The clone goes to DST.ebb-partial and is renamed to DST only when
    /// complete. If this command is interrupted the daemon goes on; run it
    /// again to follow it. If the daemon dies, it finishes the snapshot
    /// when it starts again; after a reboot the partial file is removed.
    ///
    /// Refused when a process has SRC mapped shared and writable, or has
    /// had it open for writing since before the daemon first watched the
    /// filesystem (their writes cannot be held back).
    ///
    /// With --json, one object when done: src, dst, size, units, seconds,
    /// cloned_bytes, clone_calls, longest_clone_us, units_cloned_early,
    /// state ("done").
    Snapshot {
        /// The file to snapshot.
        src: PathBuf,
        /// Where the snapshot goes (must not exist, unless --force).
        dst: PathBuf,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Become the one owner of change tracking for a file.
    ///
    /// Records OWNER as the owner of FILE's change tracking (atomically: of
    /// many concurrent claims exactly one wins) and keeps a base snapshot
    /// of FILE in ROOT/.ebb/bases (XFS with reflink=1, or btrfs). Another
    /// owner is refused with who holds it and since when; the same owner
    /// again changes nothing. Once FILE is archived, its base follows each
    /// archive, and `ebb archive` reads only the ranges changed since.
    ///
    /// With --json: path, owner, since (seconds since the epoch),
    /// since_utc, base.
    Track {
        file: PathBuf,
        /// Who tracks it (letters, digits, - _ . @ :).
        #[arg(long)]
        owner: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop tracking a file; only its owner can, by name. Its base
    /// snapshot is removed.
    Untrack {
        file: PathBuf,
        /// The owner that tracks it.
        #[arg(long)]
        owner: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The byte ranges where FILE may differ from BASE, a reflink clone
    /// (snapshot) of an earlier state of it, from their extent maps alone
    /// (no data is read). Never leaves a change out; exact to the block.
    ///
    /// With --json, one object per line: start, end (exclusive), length.
    ChangedRanges {
        /// The snapshot (a reflink clone on the same filesystem).
        base: PathBuf,
        /// The file as it is now.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changed under a path of a managed tree since a token.
    ///
    /// The daemon records every create, delete, rename, write and
    /// attribute change under the tree in a journal that survives restarts;
    /// a token names a point in it. The answer includes every change made
    /// before the command ran (the daemon writes a cookie file and waits
    /// for its own event), then the new token to ask with next time. If the
    /// journal cannot say exactly (the token is from another journal, older
    /// than it keeps, or a gap is still being repaired), it says that
    /// everything under PATH may have changed: never a short list.
    ///
    /// With --json: one object per path (path, kind: created, modified,
    /// deleted, renamed or attrib, is_dir); {"everything": true, "reason"}
    /// first when so; then {"token": …}.
    Changes {
        /// A file or directory in a managed tree.
        path: PathBuf,
        /// The token of an earlier answer.
        #[arg(long, value_name = "TOKEN", conflicts_with = "token")]
        since: Option<String>,
        /// Print only the current token.
        #[arg(long)]
        token: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// git's core.fsmonitor hook (protocol 2):
    /// git config core.fsmonitor "ebb fsmonitor-hook".
    ///
    /// Prints the new token and the paths changed since TOKEN in the work
    /// tree (the current directory, which must be in a managed tree served
    /// by a daemon). When it cannot answer exactly it answers "/" (git then
    /// scans) and says why on stderr; it never fails git.
    FsmonitorHook {
        /// The protocol version git speaks (2).
        version: String,
        /// git's last token.
        token: Option<String>,
    },
    /// Stream the tree's changes to subscribers on other machines
    /// (ebb watch), over HTTP (or HTTPS) as JSON lines.
    ///
    /// Runs beside `ebb daemon`, whose journal it reads; subscribers resume
    /// from their last token across reconnects and restarts of either.
    /// Listens on loopback unless told otherwise; any other address needs
    /// --token-file. Runs in the foreground; stop it with SIGTERM.
    Serve(remote::ServeArgs),
    /// Subscribe to the changes under a path on an ebb server.
    ///
    /// Prints each change as it happens (--json: one object per line with
    /// path, kind, is_dir, token). With --since, first every change after
    /// that token. A lost connection is resumed from the last token, so
    /// nothing is missed. Besides changes, the stream may say `rescan`
    /// (changes may be missing here: the token is older than the journal
    /// keeps, or the journal itself lost events) and `gone` (the watched
    /// path was deleted or moved away: the last line).
    Watch(remote::WatchArgs),
    /// Measure ebb against a baseline taken in the same run.
    #[command(subcommand)]
    Bench(bench::Bench),
}

/// The arguments shared by commands that work on files.
#[derive(Args, Debug)]
struct FileArgs {
    /// Files, or directories with -r.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Descend into directories (never into .ebb, never through symlinks).
    #[arg(short, long)]
    recursive: bool,
    /// One JSON object per file on stdout, no progress bar.
    #[arg(long)]
    json: bool,
}

/// Run the command line; the `ebb` binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(
        cli.command,
        Command::Daemon { .. } | Command::Serve(_)
    ));
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ebb: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A log that cannot be written (its disk full: the daemon's log lives
    // in the tree) is not a reason to stop: tracing-subscriber would say
    // so with `eprintln!` to the same stderr, which panics when it fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(daemon && std::io::stderr().is_terminal())
        .try_init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init { dir, store, json } => init(&dir, &store, json),
        Command::Archive(a) => files::run(files::Op::Archive, &a.paths, a.recursive, a.json),
        Command::Release(a) => files::run(files::Op::Release, &a.paths, a.recursive, a.json),
        Command::Restore(a) => files::run(files::Op::Restore, &a.paths, a.recursive, a.json),
        Command::Status(a) => files::run(files::Op::Status, &a.paths, a.recursive, a.json),
        Command::Daemon {
            root,
            background,
            replace,
            workers,
            json,
            notify_ready,
        } => {
            let tree = Tree::open(&root)?;
            if background {
                start_background(&tree, workers, replace, json)
            } else {
                serve(&tree, workers, replace, notify_ready)
            }
        }
        Command::ChangedRanges { base, file, json } => snapshot::changed_ranges(&base, &file, json),
        Command::Track { file, owner, json } => snapshot::track(&file, &owner, json),
        Command::Changes {
            path,
            since,
            token,
            json,
        } => journal::changes(&path, since.as_deref(), token, json),
        Command::Serve(args) => remote::serve(args),
        Command::Watch(args) => remote::watch(args),
        Command::FsmonitorHook { version, token } => {
            journal::fsmonitor_hook(&version, token.as_deref())
        }
        Command::Untrack { file, owner, json } => snapshot::untrack(&file, &owner, json),
        Command::Snapshot {
            src,
            dst,
            force,
            json,
        } => snapshot::snapshot(&src, &dst, force, json),
        Command::Unserve { root, json } => {
            let tree = Tree::open(&root)?;
            let done = crate::daemon::unserve(&tree)?;
            let shown = tree.root().display();
            if json {
                let mut v = serde_json::to_value(&done)?;
                v["root"] = serde_json::json!(tree.root());
                v["result"] = serde_json::json!(if done.stopped {
                    "unserved"
                } else {
                    "unchanged"
                });
                println!("{v}");
            } else if let Some(pid) = done.daemon_pid {
                println!("{shown} is out of service: its daemon (pid {pid}) and keeper stopped");
            } else {
                println!("{shown}: nothing serves it; nothing to do");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keeper { socket } => {
            crate::failover::keeper::keeper_main(&socket)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(b) => bench::run(b),
    }
}

fn init(dir: &Path, store: &Path, json: bool) -> Result<ExitCode> {
    let tree = Tree::init(dir, Some(store))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "root": tree.root(),
                "store": tree.config().store,
                "state_dir": tree.state_dir(),
            })
        );
    } else {
        println!(
            "managing {} (store {})",
            tree.root().display(),
            tree.config().store.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(tree: &Tree, workers: usize, replace: bool, notify_ready: bool) -> Result<ExitCode> {
    let opts = daemon::Options {
        workers,
        replace,
        on_ready: notify_ready.then_some(daemon::announce_ready_on_stdout as fn()),
    };
    if notify_ready {
        // Leave the caller's session, so its terminal's signals are not ours.
        let _ = nix::unistd::setsid();
    }
    match daemon::run(tree, &opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if notify_ready => {
            // The parent is still reading stdout: tell it why.
            println!("error: {e:#}");
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Start `ebb daemon ROOT` detached and wait until it serves (or fails).
fn start_background(tree: &Tree, workers: usize, replace: bool, json: bool) -> Result<ExitCode> {
    if let Some(pid) = control::daemon_pid(tree)?.filter(|_| !replace) {
        bail!(
            "an ebb daemon is already serving {} (pid {pid}); stop it first (kill {pid})",
            tree.root().display()
        );
    }
    let log_path = tree.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the ebb executable")?;
    let mut child = Process::new(exe)
        .arg("daemon")
        .arg(tree.root())
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--notify-ready")
        .args(replace.then_some("--replace"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the daemon")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if let Some(pid) = line.trim().strip_prefix("ready ") {
        if json {
            println!(
                "{}",
                serde_json::json!({"pid": pid.parse::<u32>().unwrap_or(0), "root": tree.root(), "log": log_path})
            );
        } else {
            println!(
                "ebb daemon serving {} (pid {pid}, log {})",
                tree.root().display(),
                log_path.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    match line.trim().strip_prefix("error: ") {
        Some(why) => bail!("{why}"),
        None => bail!(
            "the daemon exited ({status}) before it was ready; see {}",
            log_path.display()
        ),
    }
}
