//! The daemon's control socket (`.ebb/daemon.sock`) and the lock that
//! says whether a daemon serves a tree (`.ebb/daemon.pid`, held with
//! `flock` for the daemon's whole life, so a crashed daemon never looks
//! alive).
//!
//! Protocol: one request per connection, a JSON line from the client
//! (`{"op":"forget"}` with the file's fd attached by `SCM_RIGHTS`, or
//! `{"op":"stats"}`), answered by one JSON line (`{"ok":true,…}` or
//! `{"ok":false,"error":"…"}`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::sys::socket::{recv_with_fd, send_with_fd};
use crate::tree::Tree;

/// How long a client waits for the daemon's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// A request to the daemon.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The attached file is about to become a stub: drop any ignore mark on
    /// it and anything cached about it.
    Forget,
    /// Counters, for tests and benchmarks.
    Stats,
    /// The attached file's size and times as they are between two fills:
    /// a fill's write moves the mtime until the worker puts it back, and
    /// `ebb status` must not take that moment for a user's change.
    #[serde(rename = "stat")]
    StatBetweenFills,
    /// Stop reading events, answer those read, then exit leaving the group
    /// with the keeper: a new daemon is taking over. Answered once done.
    Handover,
    /// Take the tree out of service (`ebb unserve`): refused while a
    /// snapshot runs; otherwise lift the mark, answer every queued event,
    /// stop the keeper and exit. Answered once done. The caller has made
    /// sure no file is a stub.
    Unserve,
    /// Start a snapshot (`ebb snapshot`), or report on the one to `dst`.
    Snapshot(crate::snapshot::start::Request),
    /// How far the snapshot to `dst` is.
    #[serde(rename = "snapshot-status")]
    SnapshotStatus { dst: std::path::PathBuf },
    /// What changed under `path` since the token `since` (`ebb changes`;
    /// none: only the current token), up to the moment of asking.
    Changes {
        since: Option<String>,
        path: std::path::PathBuf,
        /// Answer with `ebb changes`'s output itself (JSON lines when
        /// true, text when false) rather than a structured answer: a
        /// client then copies it out, with nothing to parse.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rendered: Option<bool>,
    },
}

/// The pid of the daemon serving `tree`, if one is.
pub fn daemon_pid(tree: &Tree) -> Result<Option<u32>> {
    let path = tree.lock_path();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => Ok(None),
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            // A daemon between taking the lock and writing its pid: 0.
            let pid: u32 = text.trim().parse().unwrap_or(0);
            // A killed daemon's lock is let go a moment after it died (the
            // kernel closes a dying process's files from a workqueue): it
            // serves nothing any more.
            Ok((pid == 0 || is_running(pid)).then_some(pid))
        }
        Err((_, e)) => Err(e).with_context(|| format!("checking the lock {}", path.display())),
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// How long a starting daemon waits for a dead one's lock to be let go.
const DEAD_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The lock a running daemon holds.
pub struct DaemonLock {
    _file: Flock<File>,
}

/// Take the daemon lock of `tree`, or say which daemon has it.
pub fn lock_daemon(tree: &Tree) -> Result<DaemonLock> {
    let path = tree.lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = std::time::Instant::now() + DEAD_LOCK_WAIT;
    let mut file = file;
    let mut file = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => break f,
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                if let Some(pid) = daemon_pid(tree)? {
                    bail!(
                        "an ebb daemon is already serving {} (pid {pid}); stop it first (kill {pid}), or take over with --replace",
                        tree.root().display()
                    );
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "the lock {} is still held {} s after its daemon died; is another process holding it?",
                        path.display(),
                        DEAD_LOCK_WAIT.as_secs()
                    );
                }
                file = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    };
    file.set_len(0)?;
    writeln!(&mut *file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DaemonLock { _file: file })
}

fn connect(tree: &Tree, pid: u32) -> Result<UnixStream> {
    let path = tree.socket_path();
    let sock = UnixStream::connect(&path).with_context(|| {
        format!(
            "the daemon (pid {pid}) holds the lock of {} but its socket {} does not answer; is it stuck? (see {})",
            tree.root().display(),
            path.display(),
            tree.log_path().display()
        )
    })?;
    sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(sock)
}

fn call(
    sock: &UnixStream,
    req: &Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<serde_json::Value> {
    call_as(sock, req, fd)
}

/// [`call`], the reply read straight into a `T` (a big reply is never
/// built as a `Value`).
fn call_as<T: serde::de::DeserializeOwned>(
    sock: &UnixStream,
    req: &Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<T> {
    let (_, reply) = send(sock, req, fd)?;
    serde_json::from_str(&reply).context("reading the daemon's answer")
}

/// Send `req`; the first line of the reply once it says "ok", and the
/// reader positioned after it.
fn send<'a>(
    sock: &'a UnixStream,
    req: &Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(BufReader<&'a UnixStream>, String)> {
    #[derive(serde::Deserialize)]
    struct Status {
        #[serde(default)]
        ok: bool,
        error: Option<String>,
    }
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    send_with_fd(sock, &line, fd).context("sending a request to the daemon")?;
    let mut reader = BufReader::new(sock);
    let mut reply = String::new();
    reader
        .read_line(&mut reply)
        .context("waiting for the daemon's answer")?;
    let status: Status =
        serde_json::from_str(&reply).with_context(|| format!("the daemon answered {reply:?}"))?;
    if !status.ok {
        bail!(
            "the daemon refused: {}",
            status.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok((reader, reply))
}

/// Tell the daemon serving `tree`, if any, that `file` is about to be
/// released. Returns once the daemon has taken in the events queued before
/// and dropped its ignore mark: `true`; `false` when nothing serves the
/// tree (no daemon, no keeper), where a stub would read as zeros.
pub fn forget(tree: &Tree, file: &File) -> Result<bool> {
    let Some(pid) = daemon_pid(tree)? else {
        return forget_in_kept_group(tree, file);
    };
    call(&connect(tree, pid)?, &Request::Forget, Some(file.as_fd()))?;
    Ok(true)
}

/// `file`'s size and times between two of the daemon's fills (see
/// [`Request::StatBetweenFills`]); `None` when no daemon serves `tree`.
pub fn stat_between_fills(tree: &Tree, file: &File) -> Result<Option<crate::catalog::StatSnap>> {
    let Some(pid) = daemon_pid(tree)? else {
        return Ok(None);
    };
    let stat = call_as(
        &connect(tree, pid)?,
        &Request::StatBetweenFills,
        Some(file.as_fd()),
    )?;
    Ok(Some(stat))
}

/// Ask the daemon serving `tree`, if any, to hand over (see
/// [`Request::Handover`]) and wait until it has let go of the tree's lock.
pub fn hand_over(tree: &Tree) -> Result<()> {
    let Some(pid) = daemon_pid(tree)? else {
        return Ok(());
    };
    call(&connect(tree, pid)?, &Request::Handover, None)
        .with_context(|| format!("asking the daemon (pid {pid}) to hand over"))?;
    wait_for_exit(tree, pid, "hand over")
}

/// Ask the daemon `pid` serving `tree` to take the tree out of service
/// (see [`Request::Unserve`]) and wait until it has exited.
pub fn unserve(tree: &Tree, pid: u32) -> Result<()> {
    call(&connect(tree, pid)?, &Request::Unserve, None).with_context(|| {
        format!("asking the daemon (pid {pid}) to take the tree out of service")
    })?;
    wait_for_exit(tree, pid, "stop")
}

/// Wait until the daemon `pid`, which agreed to `what`, has let go of the
/// tree's lock.
fn wait_for_exit(tree: &Tree, pid: u32, what: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while daemon_pid(tree)?.is_some() {
        if std::time::Instant::now() > deadline {
            bail!("the daemon (pid {pid}) agreed to {what} but has not exited");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The group a keeper holds for `tree` while no daemon runs (it was
/// stopped, or crashed); `None` when nothing serves the tree.
/// Whether a keeper holds `tree`'s events (its stubs' writers wait for a
/// daemon), with or without a daemon.
pub fn is_kept(tree: &Tree) -> Result<bool> {
    use crate::failover::keeper::{socket_path, KeeperClient};
    Ok(KeeperClient::connect(&socket_path(&tree.config().id))?.is_some())
}

fn kept_group(tree: &Tree) -> Result<Option<crate::sys::fanotify::Group>> {
    use crate::failover::keeper::{socket_path, KeeperClient};
    let Some(keeper) = KeeperClient::connect(&socket_path(&tree.config().id))? else {
        return Ok(None);
    };
    Ok(keeper
        .get()?
        .into_iter()
        .find(|(name, _)| name == "group")
        .map(|(_, fd)| crate::sys::fanotify::Group::from_owned(fd)))
}

/// `file` was made all resident while no daemon ran (`ebb restore`): in
/// the group a keeper holds, its readers stop waiting for a daemon (its
/// mark as a stub goes, and it is silenced until written, as the daemon
/// silences a resident file it served). Nothing to do without a keeper.
pub fn resident_in_kept_group(tree: &Tree, file: &File) -> Result<()> {
    if daemon_pid(tree)?.is_some() {
        return Ok(()); // the daemon finds it resident in the catalog
    }
    let Some(group) = kept_group(tree)? else {
        return Ok(());
    };
    group
        .unmark_inode(file.as_fd(), super::populate::STUB_MARK)
        .context("unmarking the restored file in the kept group")?;
    group
        .add_ignore_until_modified(file.as_fd(), super::populate::SILENCED_UNTIL_WRITTEN, true)
        .context("silencing the restored file in the kept group")?;
    Ok(())
}

/// With no daemon running, a keeper may still hold the group (the daemon
/// crashed or was stopped): its ignore mark on `file` must go all the
/// same, or the stub would read as zeros once a daemon serves again.
fn forget_in_kept_group(tree: &Tree, file: &File) -> Result<bool> {
    match kept_group(tree)? {
        None => Ok(false),
        Some(group) => {
            // Its readers wait for the next daemon: the filesystem may not
            // be marked (a paused daemon lifted its mark, a tree with
            // nothing archived was only armed), so the stub is marked
            // itself, as a pausing daemon marks every stub. Nobody can
            // open it meanwhile (the release holds new opens).
            group
                .mark_inode(file.as_fd(), super::populate::STUB_MARK)
                .context("marking the stub in the kept group")?;
            super::mark::FsMark::disarm_kept(&group, tree)?;
            group
                .remove_ignore(file.as_fd(), super::WATCHED)
                .context("removing the ignore mark in the kept group")?;
            Ok(true)
        }
    }
}

/// Ask the daemon serving `tree` to take (or report on) a snapshot.
pub fn snapshot(tree: &Tree, req: crate::snapshot::start::Request) -> Result<serde_json::Value> {
    let pid = daemon_pid(tree)?.with_context(|| no_daemon(tree))?;
    call(&connect(tree, pid)?, &Request::Snapshot(req), None)
}

/// How far the snapshot to `dst` is, from the daemon serving `tree`.
pub fn snapshot_status(tree: &Tree, dst: &std::path::Path) -> Result<serde_json::Value> {
    let pid = daemon_pid(tree)?.with_context(|| no_daemon(tree))?;
    call(
        &connect(tree, pid)?,
        &Request::SnapshotStatus {
            dst: dst.to_path_buf(),
        },
        None,
    )
}

/// What changed under `path` since `since`, from the daemon serving
/// `tree` (see [`Request::Changes`]).
pub fn changes(
    tree: &Tree,
    since: Option<&crate::journal::Token>,
    path: &std::path::Path,
) -> Result<crate::journal::Answer> {
    let pid = daemon_pid(tree)?.with_context(|| not_recording(tree))?;
    call_as(
        &connect(tree, pid)?,
        &Request::Changes {
            since: since.map(ToString::to_string),
            path: path.to_path_buf(),
            rendered: None,
        },
        None,
    )
}

/// [`changes`], as `ebb changes` prints it (JSON lines with `json`):
/// whole, or an error (the token is its last line).
pub fn changes_output(
    tree: &Tree,
    since: Option<&crate::journal::Token>,
    path: &std::path::Path,
    json: bool,
) -> Result<Vec<u8>> {
    let pid = daemon_pid(tree)?.with_context(|| not_recording(tree))?;
    let sock = connect(tree, pid)?;
    let (mut reader, first) = send(
        &sock,
        &Request::Changes {
            since: since.map(ToString::to_string),
            path: path.to_path_buf(),
            rendered: Some(json),
        },
        None,
    )?;
    let mut output = Vec::new();
    reader
        .read_to_end(&mut output)
        .context("reading the daemon's answer")?;
    if output.is_empty() {
        output = render_structured(&first, tree.root(), path, json);
    }
    anyhow::ensure!(
        ends_with_token(&output),
        "the daemon's answer was cut short (did it stop? see {})",
        tree.log_path().display()
    );
    Ok(output)
}

/// A daemon from before rendered answers (still running across an
/// upgrade) answers in one structured line: `ebb changes`' output from it
/// (empty if it is not one).
fn render_structured(
    line: &str,
    root: &std::path::Path,
    asked: &std::path::Path,
    json: bool,
) -> Vec<u8> {
    serde_json::from_str::<crate::journal::Answer>(line)
        .ok()
        .and_then(|answer| answer.render(root, asked, json).ok())
        .unwrap_or_default()
}

/// Whether `output` of `ebb changes` is whole: its last line is the token.
fn ends_with_token(output: &[u8]) -> bool {
    let last = output
        .strip_suffix(b"\n")
        .and_then(|o| o.rsplit(|b| *b == b'\n').next());
    last.is_some_and(|l| l.starts_with(b"token ") || l.starts_with(b"{\"token\""))
}

fn not_recording(tree: &Tree) -> String {
    format!(
        "no ebb daemon is serving {}: changes are known up to the moment only while it runs (ebb daemon {} --background)",
        tree.root().display(),
        tree.root().display()
    )
}

fn no_daemon(tree: &Tree) -> String {
    format!(
        "no ebb daemon is serving {}: start it (ebb daemon {} --background); snapshots need it to hold writers back while they clone",
        tree.root().display(),
        tree.root().display()
    )
}

/// The counters of the daemon serving `tree`.
pub fn stats(tree: &Tree) -> Result<serde_json::Value> {
    let pid = daemon_pid(tree)?.context("no daemon is serving this tree")?;
    call(&connect(tree, pid)?, &Request::Stats, None)
}

/// What the daemon answers a request with (`"ok": true` is added).
pub enum Reply {
    /// The reply's fields.
    Fields(serde_json::Value),
    /// The reply's fields already written as one JSON object: a big answer
    /// (a journal query naming 100 000s of paths) goes out without being
    /// built as a `Value` first.
    Encoded(Vec<u8>),
    /// Output for the client to copy out as it is: it follows a
    /// `{"ok":true}` line, and ends where the connection does.
    Output(Vec<u8>),
}

impl From<serde_json::Value> for Reply {
    fn from(v: serde_json::Value) -> Reply {
        Reply::Fields(v)
    }
}

/// Where a request's reply (or why it failed) goes.
pub type ReplyTx = crossbeam_channel::Sender<Result<Reply, String>>;

/// A request received by the daemon, with its reply channel.
pub struct Incoming {
    pub request: Request,
    pub fd: Option<OwnedFd>,
    pub reply: ReplyTx,
    /// Signalled once the reply is on the wire (a daemon that exits right
    /// after replying waits for it).
    pub written: crossbeam_channel::Receiver<()>,
}

/// Accept connections on `listener` forever, handing each request to
/// `deliver` (which queues it for the daemon's loop) and writing back the
/// answer that comes on the reply channel. Each connection gets a thread,
/// so a client that never sends cannot hold up the others.
pub fn serve(listener: UnixListener, deliver: impl Fn(Incoming) + Send + Sync + Clone + 'static) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let deliver = deliver.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&conn, &deliver) {
                tracing::debug!("control connection: {e:#}");
            }
        });
    }
}

/// `{"ok":true,` followed by the fields of `object` (a JSON object).
fn with_ok(object: Vec<u8>) -> Vec<u8> {
    let fields = object
        .strip_prefix(b"{")
        .unwrap_or_default()
        .trim_ascii_start();
    let mut line = Vec::with_capacity(object.len() + 12);
    line.extend_from_slice(b"{\"ok\":true");
    if fields != b"}" {
        line.push(b',');
    }
    line.extend_from_slice(fields);
    line
}

fn answer(conn: &UnixStream, deliver: &impl Fn(Incoming)) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let mut fd = None;
    while !buf[..len].contains(&b'\n') {
        if len == buf.len() {
            bail!("request too long");
        }
        let (n, got) = recv_with_fd(conn, &mut buf[len..])?;
        if n == 0 {
            bail!("client left before finishing its request");
        }
        len += n;
        fd = fd.or(got);
    }
    let (written_tx, written_rx) = crossbeam_channel::bounded(1);
    let reply = match serde_json::from_slice::<Request>(&buf[..len]) {
        Ok(request) => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            deliver(Incoming {
                request,
                fd,
                reply: tx,
                written: written_rx,
            });
            rx.recv()
                .unwrap_or_else(|_| Err("the daemon is stopping".to_string()))
        }
        Err(e) => Err(format!("bad request: {e}")),
    };
    let line = match reply {
        Ok(Reply::Fields(mut v)) => {
            v["ok"] = serde_json::Value::Bool(true);
            let mut line = serde_json::to_vec(&v)?;
            line.push(b'\n');
            line
        }
        Ok(Reply::Encoded(object)) => {
            let mut line = with_ok(object);
            line.push(b'\n');
            line
        }
        Ok(Reply::Output(output)) => {
            // Not copied behind the header: it may be 10s of MB.
            let mut conn = conn;
            conn.write_all(b"{\"ok\":true}\n")?;
            conn.write_all(&output)?;
            Vec::new()
        }
        Err(e) => {
            let mut line = serde_json::to_vec(&serde_json::json!({"ok": false, "error": e}))?;
            line.push(b'\n');
            line
        }
    };
    let mut conn = conn;
    conn.write_all(&line)?;
    let _ = written_tx.send(());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn an_encoded_reply_gets_ok_in_front_of_its_fields() {
        let v: serde_json::Value =
            serde_json::from_slice(&with_ok(br#"{"token":"t","n":[1]}"#.to_vec())).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true, "token": "t", "n": [1]}));
        let v: serde_json::Value = serde_json::from_slice(&with_ok(b"{ }".to_vec())).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true}));
    }

    #[test]
    fn a_structured_answer_from_an_older_daemon_is_rendered_by_the_client() {
        let line = r#"{"ok":true,"token":"ebb:ab:3","everything":null,"changes":[{"path":"d/f","kind":"created","is_dir":false}]}"#;
        let out = render_structured(line, Path::new("/t"), Path::new("/t/d"), false);
        assert_eq!(out, b"created   /t/d/f\ntoken ebb:ab:3\n".to_vec());
        assert!(ends_with_token(&out));
        assert!(
            render_structured(r#"{"ok":true}"#, Path::new("/t"), Path::new("/t"), true).is_empty()
        );
    }

    #[test]
    fn changes_output_cut_short_is_told_from_a_whole_one() {
        assert!(ends_with_token(b"created   /t/a\ntoken ebb:ab:3\n"));
        assert!(ends_with_token(b"{\"token\":\"ebb:ab:3\"}\n"));
        assert!(!ends_with_token(b"created   /t/a\ntoken ebb:ab:3"));
        assert!(!ends_with_token(
            b"{\"is_dir\":false,\"kind\":\"created\",\"path\":\"/t/a\"}\n"
        ));
        assert!(!ends_with_token(b""));
    }

    use proptest::prelude::*;

    proptest! {
        /// Any request line on the control socket (root's only): answered
        /// with one JSON line, `ok` false unless it parsed, no panic; a
        /// line longer than the limit is refused. `PROPTEST_CASES` cases.
        #[test]
        fn untrusted_control_lines_are_answered(
            line in prop_oneof![
                "[^\n]{0,300}",
                prop::sample::select(vec!["stats", "stat", "forget", "handover", "snapshot", "changes", "snapshot-status", "unserve", ""])
                    .prop_flat_map(|op| ("[^\n]{0,40}", "[^\n]{0,40}").prop_map(move |(a, b)|
                        serde_json::json!({"op": op, "since": a, "path": b, "dst": b, "src": a}).to_string())),
                prop::collection::vec(any::<u8>(), MAX_REQUEST..MAX_REQUEST + 100)
                    .prop_map(|b: Vec<u8>| String::from_utf8_lossy(&b).replace('\n', " ")),
            ],
        ) {
            let (client, server) = UnixStream::pair().unwrap();
            let mut sent = line.clone().into_bytes();
            sent.push(b'\n');
            let writer = std::thread::spawn(move || {
                let mut c = &client;
                let _ = std::io::Write::write_all(&mut c, &sent);
                let mut back = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&client), &mut back);
                back
            });
            let served = answer(&server, &|incoming: Incoming| {
                let _ = incoming.reply.send(Err("parsed".to_string()));
            });
            drop(server);
            let back = writer.join().unwrap();
            if line.len() >= MAX_REQUEST {
                prop_assert!(served.is_err());
            } else {
                let v: serde_json::Value = serde_json::from_str(&back).expect("a JSON answer");
                prop_assert_eq!(&v["ok"], false);
                let parsed = serde_json::from_str::<Request>(&line).is_ok();
                prop_assert_eq!(v["error"] == "parsed", parsed, "{}", back);
            }
        }
    }
}
