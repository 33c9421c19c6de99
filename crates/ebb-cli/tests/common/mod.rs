//! Fixtures shared by the end-to-end tests: a fresh loop-mounted XFS with
//! a managed tree on it, the `ebb` binary run as a real process (with a
//! timeout), daemons that are always stopped, and helpers to read stubs
//! from real processes (never from the test itself).
//!
//! Every `ebb` process a test starts gets the test's own runtime directory
//! (`EBB_RUN_DIR`, see [`TestRunDir`]): nothing depends on what a machine
//! kept in `/run/ebb`, and nothing is left there.

#![allow(dead_code)]

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ebb::testing::{FsKind, LoopFs};
use serde_json::Value;

/// The binary under test.
pub const EBB: &str = env!("CARGO_BIN_EXE_ebb");

/// Python from the distribution (not a pyenv shim that might read files
/// in the current directory).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long any one command may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A finished process.
#[derive(Debug)]
pub struct Run {
    pub cmd: String,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout as JSON lines.
    pub fn json(&self) -> Vec<Value> {
        self.out()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: bad JSON {l:?}: {e}", self.cmd))
            })
            .collect()
    }

    /// The one JSON line of stdout.
    pub fn json1(&self) -> Value {
        let mut lines = self.json();
        assert_eq!(
            lines.len(),
            1,
            "{}: expected one JSON line: {self:?}",
            self.cmd
        );
        lines.remove(0)
    }

    /// Panic unless the exit status is 0.
    pub fn ok(self) -> Run {
        assert!(
            self.success(),
            "{} failed ({:?})\nstdout: {}\nstderr: {}",
            self.cmd,
            self.code,
            self.out(),
            self.stderr
        );
        self
    }

    /// Panic unless the exit status is 1.
    pub fn fails(self) -> Run {
        assert_eq!(
            self.code,
            Some(1),
            "{} should have failed with status 1\nstdout: {}\nstderr: {}",
            self.cmd,
            self.out(),
            self.stderr
        );
        self
    }

    /// Panic unless stderr mentions `needle` (case-insensitive) on a
    /// one-line `ebb: error:` message.
    pub fn says(self, needle: &str) -> Run {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{}: stderr should mention {needle:?}\nstdout: {}\nstderr: {}",
            self.cmd,
            self.out(),
            self.stderr
        );
        self
    }
}

/// Run `cmd` to completion, with stdin from /dev/null unless set, and kill
/// it if it takes longer than `timeout`.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Run {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        cmd: shown,
        code: status.code(),
        stdout: out_t.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err_t.join().expect("stderr reader")).into_owned(),
    }
}

/// A runtime directory of one test's own: `run/` in a fresh temporary
/// directory, not made yet (ebb makes it when first needed, as on a
/// machine just booted). When it goes, every keeper that listens in it is
/// stopped (killed if it will not stop), and it is removed.
pub struct TestRunDir {
    tmp: tempfile::TempDir,
}

impl TestRunDir {
    pub fn new() -> TestRunDir {
        let tmp = tempfile::Builder::new()
            .prefix("ebb-run-")
            .tempdir()
            .expect("making a temporary directory for EBB_RUN_DIR");
        TestRunDir { tmp }
    }

    /// The directory `EBB_RUN_DIR` names (it may not exist yet).
    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// The same, as ebb sees it.
    pub fn dir(&self) -> ebb::rundir::RunDir {
        ebb::rundir::RunDir::at(self.path())
    }

    /// Give `cmd` this runtime directory.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env(ebb::rundir::ENV, self.path())
    }

    /// Stop every keeper listening in this directory: ask it, then make
    /// sure its process is gone (a keeper that does not answer is killed).
    pub fn stop_keepers(&self) {
        let Ok(entries) = std::fs::read_dir(self.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(socket) = name.strip_suffix(".lock").map(|s| self.path().join(s)) else {
                continue;
            };
            if let Ok(Some(keeper)) = ebb::failover::keeper::KeeperClient::connect(&socket) {
                let _ = keeper.stop();
            }
            if let Some(pid) = keeper_pid(&socket) {
                terminate(pid, Duration::from_secs(5));
            }
        }
    }
}

impl Default for TestRunDir {
    fn default() -> Self {
        TestRunDir::new()
    }
}

impl Drop for TestRunDir {
    fn drop(&mut self) {
        self.stop_keepers();
    }
}

/// The pid in the lock of the keeper of `socket`, if that process is
/// alive and is the keeper of that socket (not a process that got the
/// number of a dead one).
pub fn keeper_pid(socket: &Path) -> Option<i32> {
    let mut lock = socket.as_os_str().to_owned();
    lock.push(".lock");
    let pid: i32 = std::fs::read_to_string(&lock).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let socket = socket.as_os_str().as_encoded_bytes();
    let ours = args.contains(&b"keeper".as_slice()) && args.contains(&socket);
    (ours && alive(pid)).then_some(pid)
}

thread_local! {
    /// The runtime directory of the test running on this thread, for as
    /// long as something (an [`Env`], a helper thread) holds it.
    static RUN_DIR: RefCell<Weak<TestRunDir>> = const { RefCell::new(Weak::new()) };
}

/// The runtime directory of this thread's test: the one its `Env`s share,
/// or a fresh one. Keep the value for as long as processes may use it.
pub fn run_dir() -> Arc<TestRunDir> {
    RUN_DIR.with(|current| {
        if let Some(dir) = current.borrow().upgrade() {
            return dir;
        }
        let dir = Arc::new(TestRunDir::new());
        *current.borrow_mut() = Arc::downgrade(&dir);
        dir
    })
}

/// Give `cmd` the runtime directory of this thread's test. Panics when
/// there is none (no `Env` is alive on this thread): the process would
/// use the machine's.
pub fn with_run_dir(cmd: &mut Command) -> &mut Command {
    let dir = RUN_DIR
        .with(|current| current.borrow().upgrade())
        .expect("an ebb process started with no Env alive on this thread: make one, or start helper threads with common::spawn");
    dir.apply(cmd)
}

/// `Command::new(EBB)` with this test's runtime directory.
pub fn ebb_command() -> Command {
    let mut cmd = Command::new(EBB);
    with_run_dir(&mut cmd);
    cmd
}

/// `std::thread::spawn` for a helper that starts `ebb` processes: they
/// get the runtime directory of the test that spawned it.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let dir = run_dir();
    std::thread::spawn(move || {
        RUN_DIR.with(|current| *current.borrow_mut() = Arc::downgrade(&dir));
        f()
    })
}

/// Run the `ebb` binary.
pub fn ebb<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = ebb_command();
    cmd.args(args).stdin(Stdio::null()).env_remove("EBB_LOG");
    run_cmd(&mut cmd, COMMAND_TIMEOUT)
}

/// `ebb changes --token PATH`: the journal's current token.
pub fn token(path: &Path) -> String {
    let out = ebb([
        OsStr::new("changes"),
        OsStr::new("--token"),
        path.as_os_str(),
        OsStr::new("--json"),
    ])
    .ok();
    out.json1()["token"].as_str().expect("token").to_string()
}

/// Run `sh -c script` with `args` as `$1…`.
pub fn sh(script: &str, args: &[&OsStr]) -> Run {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .stdin(Stdio::null());
    run_cmd(&mut cmd, COMMAND_TIMEOUT)
}

/// The uid an ordinary user runs as (nobody).
pub const NOBODY: &str = "65534";

/// `script` run by `sh` as nobody (a real unprivileged uid, through
/// `setpriv`), with `args` as `$1…`.
#[allow(dead_code)] // not every test binary needs it
pub fn as_nobody(script: &str, args: &[&OsStr]) -> Run {
    run_cmd(
        Command::new("setpriv")
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
            .args(["sh", "-c", script, "sh"])
            .args(args),
        COMMAND_TIMEOUT,
    )
}

/// Run python code with `args` in `sys.argv[1:]`.
pub fn python(code: &str, args: &[&OsStr]) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(PYTHON)
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(Stdio::null())
        .current_dir("/");
    run_cmd(&mut cmd, COMMAND_TIMEOUT)
}

/// `timeout 30 cat path`: the file's bytes as a real process reads them.
pub fn cat(path: &Path) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("30").arg("cat").arg(path).stdin(Stdio::null());
    run_cmd(&mut cmd, COMMAND_TIMEOUT)
}

/// Read the whole file with `cat` and panic unless it equals `want`.
pub fn assert_reads(path: &Path, want: &[u8]) {
    let run = cat(path).ok();
    assert_same(&run.stdout, want, &format!("cat {}", path.display()));
}

/// Compare bytes, reporting the first difference rather than megabytes.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let zeros_there = got
        .get(first..(first + 4096).min(got.len()))
        .is_some_and(|s| s.iter().all(|&b| b == 0));
    panic!(
        "{what}: wrong bytes: got {} bytes, want {}; first difference at offset {first}{}",
        got.len(),
        want.len(),
        if zeros_there {
            " (zeros from there)"
        } else {
            ""
        }
    );
}

/// `n` random bytes (from the kernel: fast even in a debug build).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("reading /dev/urandom");
    v
}

/// `n` pseudo-random bytes from `seed`: the same bytes, hence the same
/// chunk boundaries, on every run.
pub fn seeded_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// SHA-256 of `data`, as `sha256sum` prints it.
pub fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().expect("piped");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().expect("writer").expect("feeding sha256sum");
    first_word(&out.stdout)
}

/// The first word of a command's output (a hash from `sha256sum`).
pub fn first_word(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Write a file and close it (no fd stays open in the test process).
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `{"op":"stats"}` on the daemon's control socket.
pub fn stats(root: &Path) -> Value {
    let sock = root.join(".ebb/daemon.sock");
    let mut conn =
        UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connecting {}: {e}", sock.display()));
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    conn.write_all(b"{\"op\":\"stats\"}\n")
        .expect("sending stats");
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .expect("reading stats");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("stats {line:?}: {e}"));
    assert_eq!(v["ok"], Value::Bool(true), "stats: {v}");
    v
}

/// A counter from [`stats`].
pub fn stat_u64(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no counter {name}: {v}"))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ..."; comm may hold spaces or parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// SIGTERM `pid` and wait until it is gone; SIGKILL it after `grace`.
/// Returns whether it went on SIGTERM alone.
pub fn terminate(pid: i32, grace: Duration) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !alive(pid) {
        return true;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Wait until `what` holds; fails the test after 30 s, naming `name`.
pub fn wait_for(what: impl Fn() -> bool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !what() {
        assert!(Instant::now() < deadline, "waited 30 s for {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL `pid` and wait until it is gone (30 s at most).
pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for(|| !alive(pid), &format!("{pid} to die of SIGKILL"));
}

/// The chunks ebb's chunker cuts `data` into: each one's offset and hash
/// (hex, the name of its object in the store).
pub fn chunks_of(data: &[u8]) -> Vec<(u64, String)> {
    let mut chunks = Vec::new();
    ebb::store::for_each_chunk(data, |offset, chunk| {
        chunks.push((offset, ebb::store::ChunkHash::of(chunk).to_string()));
        Ok(())
    })
    .expect("chunking");
    chunks
}

/// A child process killed (and reaped) when the value is dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        )
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh XFS with a managed tree on it, its store on another filesystem,
/// and every daemon started through it stopped before the filesystem is
/// unmounted (even when the test panics).
pub struct Env {
    daemons: Mutex<Vec<i32>>,
    pub root: PathBuf,
    pub store: PathBuf,
    pub fs: LoopFs,
    /// Shared by every `Env` of the test; goes after the filesystem.
    pub run: Arc<TestRunDir>,
}

impl Env {
    /// A `size_mib` MiB XFS whose mount point is the managed tree.
    pub fn new(size_mib: u64) -> Env {
        let env = Env::bare(size_mib);
        env.init();
        env
    }

    /// `ebb init ROOT --store STORE`, which must succeed.
    pub fn init(&self) {
        ebb([
            OsStr::new("init"),
            self.root.as_os_str(),
            OsStr::new("--store"),
            self.store.as_os_str(),
        ])
        .ok();
    }

    /// The filesystem, not yet managed (`root` is its mount point).
    pub fn bare(size_mib: u64) -> Env {
        Env::bare_on(FsKind::Xfs, size_mib)
    }

    /// [`Env::new`] on another kind of filesystem.
    #[allow(dead_code)] // not every test binary needs it
    pub fn on(kind: FsKind, size_mib: u64) -> Env {
        let env = Env::bare_on(kind, size_mib);
        env.init();
        env
    }

    fn bare_on(kind: FsKind, size_mib: u64) -> Env {
        let fs = LoopFs::new(kind, size_mib).expect("making a loop-mounted filesystem");
        Env {
            daemons: Mutex::new(Vec::new()),
            root: fs.path().to_path_buf(),
            store: fs.scratch().join("store"),
            fs,
            run: run_dir(),
        }
    }

    /// A path in the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join(".ebb/daemon.log")).unwrap_or_default()
    }

    /// `ebb daemon ROOT --background`; returns its pid once it serves.
    pub fn start_daemon(&self) -> i32 {
        self.start_daemon_with(|_| {}, COMMAND_TIMEOUT)
    }

    /// [`Env::start_daemon`] with more arguments or environment set by
    /// `configure`, failing after `timeout`. The daemon is recorded (and
    /// stopped when the `Env` goes) whatever it printed.
    #[allow(dead_code)] // not every test binary needs it
    pub fn start_daemon_with(
        &self,
        configure: impl FnOnce(&mut Command),
        timeout: Duration,
    ) -> i32 {
        let mut cmd = Command::new(EBB);
        self.run.apply(&mut cmd);
        cmd.arg("daemon")
            .arg(&self.root)
            .arg("--background")
            .stdin(Stdio::null());
        // EBB_TEST_DAEMON_LOG=debug: a verbose daemon log, for debugging.
        match std::env::var("EBB_TEST_DAEMON_LOG") {
            Ok(level) => cmd.env("EBB_LOG", level),
            Err(_) => cmd.env_remove("EBB_LOG"),
        };
        configure(&mut cmd);
        let run = run_cmd(&mut cmd, timeout);
        // Whatever it said, a daemon may be running: record it first.
        let pid = std::fs::read_to_string(self.root.join(".ebb/daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|&p| p > 0 && alive(p)) {
            let mut daemons = self.daemons.lock().expect("lock");
            if !daemons.contains(&pid) {
                daemons.push(pid);
            }
        }
        let run = run.ok();
        let out = run.out();
        assert!(
            out.contains("ebb daemon serving"),
            "unexpected output of ebb daemon --background: {out:?}"
        );
        let printed: i32 = out
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"));
        assert_eq!(Some(printed), pid, "printed pid vs. .ebb/daemon.pid");
        assert!(alive(printed), "daemon {printed} is not running");
        printed
    }

    /// Stop every daemon this value started (SIGTERM, wait for exit).
    /// Returns whether each went on SIGTERM alone.
    pub fn stop_daemons(&self) -> bool {
        let pids: Vec<i32> =
            std::mem::take(&mut *self.daemons.lock().unwrap_or_else(|p| p.into_inner()));
        let mut clean = true;
        for pid in pids {
            clean &= terminate(pid, Duration::from_secs(30));
        }
        clean
    }

    /// SIGKILL every daemon this value started and wait until each is gone
    /// (their keepers stay).
    #[allow(dead_code)] // not every test binary needs it
    pub fn kill_daemons(&self) {
        let pids: Vec<i32> =
            std::mem::take(&mut *self.daemons.lock().unwrap_or_else(|p| p.into_inner()));
        for pid in pids {
            kill9(pid);
        }
    }

    pub fn stats(&self) -> Value {
        stats(&self.root)
    }

    /// `ebb status --json PATH`.
    pub fn status(&self, path: &Path) -> Value {
        ebb([OsStr::new("status"), OsStr::new("--json"), path.as_os_str()])
            .ok()
            .json1()
    }

    /// `ebb archive --json PATH`, which must succeed.
    pub fn archive(&self, path: &Path) -> Value {
        ebb([
            OsStr::new("archive"),
            OsStr::new("--json"),
            path.as_os_str(),
        ])
        .ok()
        .json1()
    }

    /// `ebb release --json PATH`, which must succeed.
    ///
    /// ebb releases only while something serves the tree: with no daemon
    /// of this value's running and no keeper, one is started for the
    /// release and stopped after (SIGTERM), so the test goes on as it was.
    pub fn release(&self, path: &Path) -> Value {
        let serving = self.serving_for_a_moment();
        let released = ebb([
            OsStr::new("release"),
            OsStr::new("--json"),
            path.as_os_str(),
        ])
        .ok()
        .json1();
        if let Some(pid) = serving {
            self.daemons
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|&p| p != pid);
            assert!(
                terminate(pid, Duration::from_secs(30)),
                "the release's daemon needed SIGKILL"
            );
        }
        released
    }

    /// A daemon started because none of this value's runs and no keeper
    /// holds the tree's group; `None` when something serves it already.
    fn serving_for_a_moment(&self) -> Option<i32> {
        let running = self
            .daemons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|&pid| alive(pid));
        if running || self.keeper().is_some() {
            return None;
        }
        Some(self.start_daemon())
    }

    /// `ebb restore --json PATH`, which must succeed.
    pub fn restore(&self, path: &Path) -> Value {
        ebb([
            OsStr::new("restore"),
            OsStr::new("--json"),
            path.as_os_str(),
        ])
        .ok()
        .json1()
    }

    /// Write `data` to `rel`, archive and release it; returns the path and
    /// the archive report.
    pub fn released_file(&self, rel: &str, data: &[u8]) -> (PathBuf, Value) {
        let path = self.path(rel);
        write_file(&path, data);
        let archived = self.archive(&path);
        assert_eq!(archived["result"], "archived", "{archived}");
        let released = self.release(&path);
        assert_eq!(released["result"], "released", "{released}");
        assert_eq!(self.status(&path)["state"], "released");
        (path, archived)
    }

    /// The chunk files of the store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let top = self.store.join("chunks");
        for dir in std::fs::read_dir(&top).unwrap_or_else(|e| panic!("{}: {e}", top.display())) {
            let dir = dir.expect("entry").path();
            if !dir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&dir).expect("read_dir") {
                let f = f.expect("entry").path();
                if f.is_file() {
                    out.push(f);
                }
            }
        }
        out.sort();
        out
    }
}

impl Env {
    /// Where the tree's keeper listens (in the test's runtime directory).
    #[allow(dead_code)] // not every test binary needs it
    pub fn keeper_socket(&self) -> Option<PathBuf> {
        let config = std::fs::read_to_string(self.root.join(".ebb/config.json")).ok()?;
        let config: Value = serde_json::from_str(&config).ok()?;
        Some(self.run.dir().keeper_socket(config["id"].as_str()?))
    }

    /// The tree's keeper client, if a keeper runs.
    #[allow(dead_code)] // not every test binary needs it
    pub fn keeper(&self) -> Option<ebb::failover::keeper::KeeperClient> {
        ebb::failover::keeper::KeeperClient::connect(&self.keeper_socket()?).ok()?
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Before the fields go: a daemon keeps the filesystem busy. A
        // SIGKILLed daemon leaves its keeper, which holds the group.
        self.stop_daemons();
        if let Some(socket) = self.keeper_socket() {
            if let Ok(Some(keeper)) = ebb::failover::keeper::KeeperClient::connect(&socket) {
                let _ = keeper.stop();
            }
            if let Some(pid) = keeper_pid(&socket) {
                terminate(pid, Duration::from_secs(5));
            }
        }
    }
}

/// `timeout 120 cat FILE > OUT` in the background, OUT outside the tree.
#[allow(dead_code)] // not every test binary needs it
pub struct Reader {
    child: KillOnDrop,
    path: PathBuf,
    out: PathBuf,
}

#[allow(dead_code)] // not every test binary needs each
impl Reader {
    pub fn cat(env: &Env, path: &Path) -> Reader {
        let name = format!(
            "read-{}-{}.out",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            rand::random::<u32>()
        );
        let out = env.fs.scratch().join(name);
        let child = KillOnDrop::spawn(
            Command::new("timeout")
                .arg("120")
                .arg("cat")
                .arg(path)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).expect("creating the reader's output"))
                .stderr(Stdio::piped()),
        );
        Reader {
            child,
            path: path.to_path_buf(),
            out,
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.0.try_wait().expect("try_wait").is_none()
    }

    /// Bytes it has written so far.
    pub fn progress(&self) -> u64 {
        std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
    }

    /// The `cat` under `timeout`.
    pub fn cat_pid(&self) -> Option<i32> {
        let pid = self.child.0.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Wait until its `cat` waits in the kernel for a fanotify group's
    /// answer (its stack says so), 30 s at most: a reader shown waiting,
    /// not one merely slower than a sleep.
    pub fn wait_until_held(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                self.running(),
                "{what}: the reader ended instead of waiting"
            );
            let held = self.cat_pid().is_some_and(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stack"))
                    .is_ok_and(|stack| stack.contains("fanotify_handle_event"))
            });
            if held {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the reader never waited for an answer"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for it (at most two minutes) and check it read exactly `want`.
    pub fn finish(mut self, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(130);
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the reader of {} never finished",
                self.path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            status.success(),
            "cat {} ended with {status}: {err}",
            self.path.display()
        );
        let got = std::fs::read(&self.out).expect("reading the reader's output");
        let _ = std::fs::remove_file(&self.out);
        assert_same(&got, want, &format!("cat {}", self.path.display()));
    }
}
