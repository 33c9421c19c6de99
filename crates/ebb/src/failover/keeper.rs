//! The keeper: a tiny process that holds fds (the fanotify group, the
//! in-flight table's memfd) so that they outlive a daemon that crashes or
//! is replaced, and hands them back over a Unix socket (`SCM_RIGHTS`).
//!
//! # Why it exists, and why it must stay minimal
//!
//! Closing the last fd of a fanotify group makes the kernel answer every
//! pending permission event of that group with ALLOW: a reader blocked on a
//! stub then reads holes, i.e. zeros. While the keeper holds a dup of the
//! group fd, a daemon that dies takes nothing with it: blocked readers just
//! wait until a new daemon takes the group back and answers them.
//!
//! **If the keeper dies**, every fd it keeps is closed; for a fanotify group
//! whose daemon is also gone (or once the daemon dies later) that is the
//! ALLOW-everything above, and the in-flight table's memfd is gone with it.
//! So the keeper does nothing but hold and hand back fds: no catalog, no
//! store, no parsing beyond one JSON line, no threads, nothing that could
//! crash it. A keeper stopped with `stop` closes its fds the same way.
//!
//! # Where
//!
//! The keeper of a tree listens on [`socket_path`], `<tree id>.keeper` in
//! ebb's runtime directory ([`crate::rundir`]: `/run/ebb` unless
//! `EBB_RUN_DIR` says otherwise; directory `0700`, socket `0600`), and holds an exclusive `flock` on
//! `<socket>.lock` (which also holds its pid) for its whole life, so two
//! keepers can never serve one socket. It refuses any peer whose uid
//! (`SO_PEERCRED`, the kernel's word) is not its own; the client refuses a
//! socket file or a keeper that belongs to another uid.
//!
//! # Protocol
//!
//! One request per connection. The client sends one JSON line; fds, if
//! any, are attached (`SCM_RIGHTS`) to that line's `sendmsg`. The keeper
//! answers one JSON line, fds attached likewise, and closes the connection.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"put","names":["group","inflight"]}` + one fd per name, in order | `{"ok":true}` |
//! | `{"op":"get"}` | `{"ok":true,"names":[…]}` + one fd per name, in order |
//! | `{"op":"drop"}` | `{"ok":true,"dropped":N}` |
//! | `{"op":"stop"}` | `{"ok":true}` |
//! | `{"op":"ping"}` | `{"ok":true,"pid":N,"names":[…]}` |
//!
//! Any failure is `{"ok":false,"error":"…"}`. `put` replaces an fd kept
//! under the same name (closing the old one) and keeps the others; it holds
//! at most [`MAX_FDS`] fds in all. `get` hands out dups: the keeper keeps
//! its own until `drop` or `stop`. `stop` closes every kept fd and removes
//! the socket before it answers, then the process exits.
//!
//! The keeper serves one connection at a time. A client gets
//! [`IO_TIMEOUT`] to send its line, so one that connects and never sends
//! holds the others up no longer than that.
//!
//! **If a client dies mid-request**, the keeper reads EOF (or times out)
//! before the end of the line: the request is dropped whole and any fds
//! that came with it are closed; what the keeper kept is unchanged. A
//! request whose line arrived complete is carried out even if nobody reads
//! the answer: a client that died before it learnt whether its `put` took
//! can `get` (or simply `put` again: `put` by name is idempotent). A `get`
//! whose answer nobody reads costs nothing (the dups in flight are closed
//! by the kernel with the connection).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::rundir::RunDir;
use crate::sys::socket::{peer_uid, recv_with_fds, send_with_fds};

/// Most fds a keeper holds, and most in one message.
pub const MAX_FDS: usize = 16;
/// How long the keeper waits for a client's request line (and to write its
/// answer) before it drops the connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for an answer: a keeper busy with a silent
/// client answers after at most [`IO_TIMEOUT`].
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`KeeperClient::spawn`] waits for the new keeper to answer.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted either way.
const MAX_LINE: usize = 16 * 1024;
/// Longest name of a kept fd.
const MAX_NAME: usize = 128;

/// Where the keeper of the tree with config id `tree_id` listens:
/// `<tree_id>.keeper` in this process's runtime directory
/// ([`RunDir::from_env`]).
pub fn socket_path(tree_id: &str) -> PathBuf {
    RunDir::from_env().keeper_socket(tree_id)
}

/// The lock file a keeper of `socket` holds for its whole life.
fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A request to the keeper (the `op` field names the variant).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    /// Keep the attached fds under these names, one per fd, in order.
    Put { names: Vec<String> },
    /// Hand back a dup of every kept fd.
    Get,
    /// Close every kept fd.
    Drop,
    /// Close every kept fd, remove the socket, exit.
    Stop,
    /// Is anyone there? Answers the keeper's pid.
    Ping,
}

/// The entry point of `ebb keeper --socket PATH`: leave the caller's
/// session (so a terminal hang-up or the daemon's process group being
/// killed does not reach the keeper), step out of the caller's directory
/// (so the keeper pins no mount), ask the OOM killer to spare it, then
/// [`run`].
pub fn keeper_main(socket: &Path) -> Result<()> {
    let socket =
        std::path::absolute(socket).with_context(|| format!("resolving {}", socket.display()))?;
    match nix::unistd::setsid() {
        Ok(_) => {}
        // Already a process group leader (e.g. started by a shell): stays
        // in the caller's session.
        Err(Errno::EPERM) => tracing::warn!(
            "the keeper could not start a session of its own (it leads a process group); \
             a hang-up of this terminal will stop it"
        ),
        Err(e) => return Err(e).context("setsid"),
    }
    nix::unistd::chdir("/").context("changing to /")?;
    // The daemon that starts the keeper blocks SIGTERM/SIGINT (it reads
    // them from a signalfd) and the mask survives exec: undo it, so the
    // keeper can be stopped like any process.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals
        .thread_unblock()
        .context("unblocking SIGTERM/SIGINT")?;
    // Best effort: only a privileged keeper may lower its score.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::debug!("keeping the OOM killer away: {e}");
    }
    run(&socket)
}

/// Run the keeper: bind `socket` (refusing if another keeper answers there,
/// removing a stale socket file nobody answers on), then serve until a
/// `stop` request. One connection at a time.
pub fn run(socket: &Path) -> Result<()> {
    let bound = Bound::bind(socket)?;
    let uid = nix::unistd::geteuid().as_raw();
    tracing::info!(
        "keeper {} listening on {} (uid {uid})",
        std::process::id(),
        socket.display()
    );
    let mut keeper = Keeper {
        kept: BTreeMap::new(),
        uid,
        bound: Some(bound),
    };
    // Until a `stop` takes the socket away.
    while let Some(bound) = &keeper.bound {
        let conn = match bound.listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                // E.g. EMFILE: do not spin; whoever waits retries.
                tracing::warn!("keeper: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = keeper.serve(&conn) {
            tracing::warn!("keeper: {e:#}");
        }
    }
    tracing::info!("keeper {} stopped", std::process::id());
    Ok(())
}

/// The keeper's socket, bound, and its lock.
struct Bound {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we bound, so we remove only ours.
    id: (u64, u64),
    _lock: Flock<File>,
}

impl Bound {
    fn bind(socket: &Path) -> Result<Bound> {
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock_path = lock_path(socket);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "a keeper already listens on {} (pid {})",
                    socket.display(),
                    pid.trim()
                );
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()))
            }
        };
        lock.set_len(0)?;
        writeln!(&mut *lock, "{}", std::process::id())?;

        // We hold the lock, so no keeper of ours serves this socket: a
        // socket file there is stale unless something else answers on it.
        match std::fs::symlink_metadata(socket) {
            Ok(meta) if !meta.file_type().is_socket() => bail!(
                "{} is in the way of the keeper's socket and is not a socket; remove it",
                socket.display()
            ),
            Ok(_) => match UnixStream::connect(socket) {
                Ok(_) => bail!(
                    "a keeper already listens on {} (something answers there)",
                    socket.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("removing the stale keeper socket {}", socket.display());
                    remove_if_there(socket)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
        }
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("binding the keeper socket {}", socket.display()))?;
        // Peers of another uid are refused anyway; this keeps them from
        // even connecting.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", socket.display()))?;
        let meta = std::fs::symlink_metadata(socket)
            .with_context(|| format!("checking {}", socket.display()))?;
        Ok(Bound {
            listener,
            path: socket.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            _lock: lock,
        })
    }

    /// Remove the socket file, if it is still the one we bound.
    fn unlink(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("removing {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The keeper's whole state.
struct Keeper {
    kept: BTreeMap<String, OwnedFd>,
    uid: u32,
    /// `None` once stopped.
    bound: Option<Bound>,
}

impl Keeper {
    /// Answer one connection.
    fn serve(&mut self, conn: &UnixStream) -> Result<()> {
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let peer = peer_uid(conn).context("SO_PEERCRED")?;
        if peer != self.uid {
            let error = format!(
                "refused: this keeper serves uid {} only, not uid {peer}",
                self.uid
            );
            reply(conn, Err(error.clone()), &[])?;
            bail!("{error}");
        }
        let (line, fds) = match read_message(conn) {
            Ok(message) => message,
            Err(e) => {
                let _ = reply(conn, Err(format!("{e:#}")), &[]);
                return Err(e.context("reading a request"));
            }
        };
        let request = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => request,
            Err(e) => {
                let error = format!("bad request {:?}: {e}", String::from_utf8_lossy(&line));
                reply(conn, Err(error.clone()), &[])?;
                bail!("{error}");
            }
        };
        tracing::debug!("keeper: {request:?} with {} fds", fds.len());
        match request {
            Request::Put { names } => match self.put(names, fds) {
                Ok(()) => reply(conn, Ok(json!({})), &[]),
                Err(error) => reply(conn, Err(error), &[]),
            },
            Request::Get if !fds.is_empty() => {
                reply(conn, Err("get takes no fds".to_string()), &[])
            }
            Request::Get => {
                let names: Vec<&String> = self.kept.keys().collect();
                let fds: Vec<BorrowedFd<'_>> = self.kept.values().map(|f| f.as_fd()).collect();
                reply(conn, Ok(json!({ "names": names })), &fds)
            }
            Request::Drop => {
                let dropped = self.kept.len();
                self.kept.clear();
                tracing::info!("keeper: closed {dropped} kept fds");
                reply(conn, Ok(json!({ "dropped": dropped })), &[])
            }
            Request::Stop => {
                let dropped = self.kept.len();
                self.kept.clear();
                if let Some(bound) = self.bound.take() {
                    bound.unlink();
                }
                tracing::info!("keeper: stopping, closed {dropped} kept fds");
                reply(conn, Ok(json!({})), &[])
            }
            Request::Ping => {
                let names: Vec<&String> = self.kept.keys().collect();
                reply(
                    conn,
                    Ok(json!({ "pid": std::process::id(), "names": names })),
                    &[],
                )
            }
        }
    }

    /// Keep `fds` under `names`, all or nothing. The error is for the
    /// client; `fds` are closed on any error.
    fn put(&mut self, names: Vec<String>, fds: Vec<OwnedFd>) -> Result<(), String> {
        if names.len() != fds.len() {
            return Err(format!(
                "put names {} fds but {} came with it",
                names.len(),
                fds.len()
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                return Err(format!("bad fd name {name:?}"));
            }
            if names[..i].contains(name) {
                return Err(format!("the name {name:?} is given twice"));
            }
        }
        let total = self.kept.len() + names.iter().filter(|n| !self.kept.contains_key(*n)).count();
        if total > MAX_FDS {
            return Err(format!(
                "the keeper holds at most {MAX_FDS} fds; this put would make {total}"
            ));
        }
        tracing::info!("keeper: keeping {}", names.join(", "));
        // Replaced fds are closed as they drop.
        self.kept.extend(names.into_iter().zip(fds));
        Ok(())
    }
}

/// Read one JSON line (without its newline) and the fds that came with
/// it. An error if the peer leaves (or stays silent past the timeout)
/// before the end of the line; fds that came are closed then.
fn read_message(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_LINE];
    let mut len = 0;
    let mut fds = Vec::new();
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok((buf, fds));
        }
        if len == buf.len() {
            bail!("message longer than {MAX_LINE} bytes");
        }
        let (n, got) = match recv_with_fds(sock, &mut buf[len..], MAX_FDS - fds.len()) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!("nothing complete came within {} s", IO_TIMEOUT.as_secs())
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            bail!("the peer left before the end of its message");
        }
        len += n;
        fds.extend(got);
    }
}

/// Write one answer line: `{"ok":true,…fields}` or `{"ok":false,"error":…}`.
fn reply(conn: &UnixStream, answer: Result<Value, String>, fds: &[BorrowedFd<'_>]) -> Result<()> {
    let value = match answer {
        Ok(mut v) => {
            v["ok"] = Value::Bool(true);
            v
        }
        Err(error) => json!({ "ok": false, "error": error }),
    };
    let mut line = serde_json::to_vec(&value)?;
    line.push(b'\n');
    send_with_fds(conn, &line, fds).context("answering")?;
    Ok(())
}

/// A way to talk to a running keeper. Each call is one connection.
#[derive(Debug, Clone)]
pub struct KeeperClient {
    path: PathBuf,
}

impl KeeperClient {
    /// Connect if a keeper answers at `socket` (ping); `Ok(None)` if there
    /// is none (no socket file, or nobody listening on it). An error for
    /// anything else, e.g. a socket that belongs to another user or
    /// something there that does not answer as a keeper.
    pub fn connect(socket: &Path) -> Result<Option<KeeperClient>> {
        let meta = match std::fs::symlink_metadata(socket) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
        };
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "the keeper socket {} belongs to uid {}, not to us (uid {me}); remove it or run as that user",
                socket.display(),
                meta.uid()
            );
        }
        if !meta.file_type().is_socket() {
            bail!(
                "{} should be a keeper socket but is not a socket; remove it",
                socket.display()
            );
        }
        let sock = match UnixStream::connect(socket) {
            Ok(sock) => sock,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting to the keeper at {}", socket.display()))
            }
        };
        let client = KeeperClient {
            path: socket.to_path_buf(),
        };
        client
            .call_on(&sock, &Request::Ping, &[])
            .with_context(|| {
                format!(
                    "something listens on {} but does not answer as a keeper",
                    socket.display()
                )
            })?;
        Ok(Some(client))
    }

    /// Start a keeper process (`exe keeper --socket PATH`; it detaches
    /// itself with `setsid`), with stdin and stdout on `/dev/null` and
    /// stderr appended to `log`, and wait (at most 5 s) until it answers.
    /// If a keeper already answers there, or another one wins a race to
    /// the socket, that one is returned (a keeper that finds the socket
    /// taken exits at once).
    pub fn spawn(exe: &Path, socket: &Path, log: &Path) -> Result<KeeperClient> {
        let socket = std::path::absolute(socket)
            .with_context(|| format!("resolving {}", socket.display()))?;
        if let Some(running) = Self::connect(&socket)? {
            return Ok(running);
        }
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("keeper")
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} keeper", exe.display()))?;
        let pid = child.id();
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        loop {
            if let Some(client) = Self::connect(&socket)? {
                // Reap the keeper when it exits, or it lingers as a zombie
                // for as long as we live.
                let reaper = std::thread::Builder::new()
                    .name("keeper-reaper".into())
                    .spawn(move || child.wait());
                if let Err(e) = reaper {
                    tracing::debug!("no thread to reap the keeper: {e}");
                }
                return Ok(client);
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the keeper (pid {pid}) exited ({status}) before answering on {}; see {}",
                    socket.display(),
                    log.display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the keeper (pid {pid}) did not answer on {} within {} s; killed it; see {}",
                    socket.display(),
                    SPAWN_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep these fds under these names (replacing any kept under the same
    /// name; the others stay). All or nothing.
    pub fn put(&self, fds: &[(&str, BorrowedFd<'_>)]) -> Result<()> {
        let names = fds.iter().map(|(n, _)| n.to_string()).collect();
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, f)| *f).collect();
        self.call(&Request::Put { names }, &fds)?;
        Ok(())
    }

    /// Every fd kept, by name (dups; the keeper keeps its own).
    pub fn get(&self) -> Result<Vec<(String, OwnedFd)>> {
        let (reply, fds) = self.call(&Request::Get, &[])?;
        let names: Vec<String> = serde_json::from_value(reply["names"].clone())
            .with_context(|| format!("the keeper answered {reply}"))?;
        if names.len() != fds.len() {
            bail!(
                "the keeper named {} fds but sent {}",
                names.len(),
                fds.len()
            );
        }
        Ok(names.into_iter().zip(fds).collect())
    }

    /// Close every kept fd (the keeper keeps running).
    pub fn drop_all(&self) -> Result<()> {
        self.call(&Request::Drop, &[])?;
        Ok(())
    }

    /// Stop the keeper: when this returns, it has closed every kept fd and
    /// removed its socket, and its process is exiting.
    pub fn stop(&self) -> Result<()> {
        self.call(&Request::Stop, &[])?;
        Ok(())
    }

    /// The keeper's pid.
    pub fn pid(&self) -> Result<u32> {
        let (reply, _) = self.call(&Request::Ping, &[])?;
        reply["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("the keeper answered {reply}"))
    }

    fn call(&self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(Value, Vec<OwnedFd>)> {
        let sock = UnixStream::connect(&self.path)
            .with_context(|| format!("connecting to the keeper at {}", self.path.display()))?;
        self.call_on(&sock, req, fds)
    }

    fn call_on(
        &self,
        sock: &UnixStream,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Value, Vec<OwnedFd>)> {
        sock.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        sock.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let me = nix::unistd::geteuid().as_raw();
        let peer = peer_uid(sock).context("SO_PEERCRED")?;
        if peer != me {
            bail!(
                "the keeper at {} runs as uid {peer}, not as us (uid {me})",
                self.path.display()
            );
        }
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        let sent = send_with_fds(sock, &line, fds);
        // A keeper that refuses us answers before it reads, and may have
        // closed the connection already: its answer says why.
        let (line, fds) = match (sent, read_message(sock)) {
            (_, Ok(answer)) => answer,
            (Err(e), Err(_)) => return Err(e).context("sending a request to the keeper"),
            (Ok(()), Err(e)) => return Err(e.context("waiting for the keeper's answer")),
        };
        let reply: Value = serde_json::from_slice(&line)
            .with_context(|| format!("the keeper answered {:?}", String::from_utf8_lossy(&line)))?;
        if reply["ok"] != Value::Bool(true) {
            bail!(
                "the keeper refused: {}",
                reply["error"].as_str().unwrap_or("no reason given")
            );
        }
        Ok((reply, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn keeper() -> Keeper {
        Keeper {
            kept: BTreeMap::new(),
            uid: nix::unistd::geteuid().as_raw(),
            bound: None,
        }
    }

    /// Send `line` with `fds` to a fresh keeper-side connection, serve it,
    /// and return the answer.
    fn exchange(k: &mut Keeper, line: &str, fds: &[BorrowedFd<'_>]) -> (Value, Vec<OwnedFd>) {
        let (client, server) = UnixStream::pair().expect("pair");
        send_with_fds(&client, line.as_bytes(), fds).expect("send");
        let _ = k.serve(&server);
        drop(server);
        let (line, fds) = read_message(&client).expect("an answer");
        (serde_json::from_slice(&line).expect("json"), fds)
    }

    #[test]
    fn the_lock_is_beside_the_socket() {
        assert_eq!(
            lock_path(Path::new("/run/ebb/3f2a.keeper")),
            PathBuf::from("/run/ebb/3f2a.keeper.lock")
        );
    }

    #[test]
    fn requests_are_the_documented_lines() {
        let line = |r: &Request| serde_json::to_string(r).expect("json");
        assert_eq!(
            line(&Request::Put {
                names: vec!["group".into(), "inflight".into()]
            }),
            r#"{"op":"put","names":["group","inflight"]}"#
        );
        assert_eq!(line(&Request::Get), r#"{"op":"get"}"#);
        assert_eq!(line(&Request::Drop), r#"{"op":"drop"}"#);
        assert_eq!(line(&Request::Stop), r#"{"op":"stop"}"#);
        assert_eq!(line(&Request::Ping), r#"{"op":"ping"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"exec"}"#).is_err());
    }

    #[test]
    fn bad_requests_are_answered_and_their_fds_closed() {
        let mut k = keeper();
        let (r, w) = nix::unistd::pipe().expect("pipe");
        for (line, why) in [
            (
                "{\"op\":\"put\",\"names\":[\"a\",\"b\"]}\n",
                "names 2 fds but 1",
            ),
            ("{\"op\":\"put\",\"names\":[\"\"]}\n", "bad fd name"),
            ("{\"op\":\"get\"}\n", "get takes no fds"),
            ("{\"op\":\"nope\"}\n", "bad request"),
            ("not json\n", "bad request"),
        ] {
            let (reply, fds) = exchange(&mut k, line, &[w.as_fd()]);
            assert_eq!(reply["ok"], false, "{line}");
            let error = reply["error"].as_str().expect("error");
            assert!(error.contains(why), "{line}: {error}");
            assert!(fds.is_empty());
        }
        let (reply, _) = exchange(
            &mut k,
            "{\"op\":\"put\",\"names\":[\"x\",\"x\"]}\n",
            &[w.as_fd(), w.as_fd()],
        );
        assert!(reply["error"].as_str().expect("error").contains("twice"));
        assert!(k.kept.is_empty());
        // No copy of the write end survives in the keeper: EOF.
        drop(w);
        let mut rest = Vec::new();
        assert_eq!(File::from(r).read_to_end(&mut rest).expect("read"), 0);
    }

    #[test]
    fn a_request_cut_short_changes_nothing() {
        let mut k = keeper();
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let (client, server) = UnixStream::pair().expect("pair");
        send_with_fds(&client, b"{\"op\":\"put\",\"names\":[\"a\"]", &[w.as_fd()]).expect("send");
        drop(client);
        assert!(k.serve(&server).is_err());
        assert!(k.kept.is_empty());
        drop(w);
        let mut rest = Vec::new();
        assert_eq!(File::from(r).read_to_end(&mut rest).expect("read"), 0);
    }

    #[test]
    fn put_keeps_at_most_max_fds() {
        let mut k = keeper();
        let (_r, w) = nix::unistd::pipe().expect("pipe");
        let names: Vec<String> = (0..MAX_FDS).map(|i| format!("fd{i}")).collect();
        let fds: Vec<BorrowedFd<'_>> = (0..MAX_FDS).map(|_| w.as_fd()).collect();
        let line = format!("{}\n", json!({"op": "put", "names": names}));
        let (reply, _) = exchange(&mut k, &line, &fds);
        assert_eq!(reply["ok"], true, "{reply}");
        // Replacing by name stays within the limit; one more name does not.
        let (reply, _) = exchange(
            &mut k,
            "{\"op\":\"put\",\"names\":[\"fd0\"]}\n",
            &[w.as_fd()],
        );
        assert_eq!(reply["ok"], true, "{reply}");
        let (reply, _) = exchange(
            &mut k,
            "{\"op\":\"put\",\"names\":[\"more\"]}\n",
            &[w.as_fd()],
        );
        assert!(reply["error"].as_str().expect("error").contains("at most"));
        let (reply, fds) = exchange(&mut k, "{\"op\":\"get\"}\n", &[]);
        assert_eq!(reply["names"].as_array().expect("names").len(), MAX_FDS);
        assert_eq!(fds.len(), MAX_FDS);
        let (reply, _) = exchange(&mut k, "{\"op\":\"drop\"}\n", &[]);
        assert_eq!(reply["dropped"], MAX_FDS);
        assert!(k.kept.is_empty());
    }

    #[test]
    fn a_silent_client_times_out() {
        let mut k = keeper();
        let (client, server) = UnixStream::pair().expect("pair");
        // It returns at all (the test's own deadline catches a hang).
        let err = k.serve(&server).expect_err("nothing came");
        assert!(format!("{err:#}").contains("within"), "{err:#}");
        // It is told why.
        drop(server);
        let mut answer = String::new();
        BufReader::new(&client)
            .read_line(&mut answer)
            .expect("read");
        assert!(answer.contains("\"ok\":false"), "{answer}");
    }

    use proptest::prelude::*;

    proptest! {
        /// Any line, with 0-2 fds: answered, no panic; a refused one keeps
        /// nothing and sends nothing back; what it keeps it names.
        /// `PROPTEST_CASES` cases (SECURITY.md).
        #[test]
        fn untrusted_keeper_lines_are_answered(
            line in prop_oneof![
                "[^\n]{0,200}",
                (prop::sample::select(vec!["put", "get", "drop", "stop", "ping", "exec", ""]),
                 proptest::collection::vec("[^\n]{0,12}", 0..4))
                    .prop_map(|(op, names)| serde_json::json!({"op": op, "names": names}).to_string()),
            ],
            fds in 0usize..3,
        ) {
            let mut k = keeper();
            let (_r, w) = nix::unistd::pipe().expect("pipe");
            let given: Vec<BorrowedFd<'_>> = (0..fds).map(|_| w.as_fd()).collect();
            let (reply, back) = exchange(&mut k, &format!("{line}\n"), &given);
            prop_assert!(reply["ok"].is_boolean(), "{}", reply);
            if reply["ok"] == false {
                prop_assert!(back.is_empty());
                prop_assert!(k.kept.is_empty());
            } else {
                prop_assert!(k.kept.len() <= fds);
            }
        }
    }
}
