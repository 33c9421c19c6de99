//! End to end: the keeper holds fds across the daemon's life and hands
//! back the very same open files. The keeper runs in a thread of this test
//! (through `ebb::failover::keeper::run`), its socket in a temporary
//! directory; `spawn` is tested against the real binary when it has the
//! `keeper` subcommand.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ebb::failover::keeper::{self, KeeperClient};
use ebb::sys::fanotify::{Class, EventBuffer, Group, InitOptions, FAN_OPEN};

/// A keeper running in a thread of this process.
struct Running {
    socket: PathBuf,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn start(socket: &Path) -> Running {
        let path = socket.to_path_buf();
        let thread = std::thread::spawn(move || keeper::run(&path));
        let deadline = Instant::now() + Duration::from_secs(5);
        while KeeperClient::connect(socket).expect("connect").is_none() {
            assert!(!thread.is_finished(), "the keeper thread ended early");
            assert!(Instant::now() < deadline, "the keeper never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        Running {
            socket: socket.to_path_buf(),
            thread: Some(thread),
        }
    }

    fn client(&self) -> KeeperClient {
        KeeperClient::connect(&self.socket)
            .expect("connect")
            .expect("a keeper answers")
    }

    /// Stop it and check that the thread ended cleanly.
    fn stop(mut self) {
        self.client().stop().expect("stop");
        let thread = self.thread.take().expect("running");
        thread.join().expect("no panic").expect("run ended with Ok");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Ok(Some(c)) = KeeperClient::connect(&self.socket) {
                let _ = c.stop();
            }
            let _ = thread.join();
        }
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/ebb/tree.keeper");
    (dir, socket)
}

fn same_file(a: &impl AsFd, b: &impl AsFd) -> bool {
    let id = |f: &dyn AsFd| {
        let f = File::from(f.as_fd().try_clone_to_owned().expect("dup"));
        let meta = f.metadata().expect("fstat");
        (meta.dev(), meta.ino())
    };
    id(a) == id(b)
}

fn take(got: &mut Vec<(String, OwnedFd)>, name: &str) -> OwnedFd {
    let i = got
        .iter()
        .position(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fd named {name} in {got:?}"));
    got.remove(i).1
}

fn memfd(name: &str) -> File {
    let name = std::ffi::CString::new(name).expect("name");
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .expect("memfd_create");
    File::from(fd)
}

/// Read a pipe to its end: returns only once no write end is open anywhere.
fn drain(read_end: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    File::from(read_end).read_to_end(&mut out).expect("read");
    out
}

#[test]
fn kept_fds_come_back_as_the_same_open_files() {
    let (_dir, socket) = scratch();
    let k = Running::start(&socket);
    let dir_mode = std::fs::metadata(socket.parent().expect("dir"))
        .expect("stat dir")
        .permissions()
        .mode();
    let sock_mode = std::fs::symlink_metadata(&socket)
        .expect("stat socket")
        .permissions()
        .mode();
    assert_eq!((dir_mode & 0o777, sock_mode & 0o777), (0o700, 0o600));

    let c = k.client();
    assert_eq!(c.pid().expect("pid"), std::process::id());
    assert!(c.get().expect("get").is_empty());

    let (pipe_r, pipe_w) = nix::unistd::pipe().expect("pipe");
    let mut table = memfd("inflight");
    table.write_all(b"table v1").expect("write");
    c.put(&[("pipe", pipe_w.as_fd()), ("inflight", table.as_fd())])
        .expect("put");
    // Only the keeper holds the write end now.
    drop(pipe_w);

    let mut got = c.get().expect("get");
    assert_eq!(got.len(), 2);
    let w = take(&mut got, "pipe");
    let t = take(&mut got, "inflight");
    assert!(same_file(&t, &table));
    // The memfd is the same open file: same content, same offset.
    let mut t = File::from(t);
    assert_eq!(t.stream_position().expect("pos"), 8);
    t.seek(SeekFrom::Start(0)).expect("seek");
    t.write_all(b"TABLE").expect("write");
    let mut s = String::new();
    table.seek(SeekFrom::Start(0)).expect("seek");
    table.read_to_string(&mut s).expect("read");
    assert_eq!(s, "TABLE v1");
    // The pipe's write end reaches our read end.
    let mut w = File::from(w);
    w.write_all(b"through the keeper").expect("write");
    drop(w);

    // `put` replaces by name, closing the old fd, and keeps the others.
    let (pipe2_r, pipe2_w) = nix::unistd::pipe().expect("pipe");
    c.put(&[("pipe", pipe2_w.as_fd())]).expect("put again");
    drop(pipe2_w);
    assert_eq!(drain(pipe_r), b"through the keeper", "old end closed");
    let mut got = c.get().expect("get");
    let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["inflight", "pipe"]);
    assert!(same_file(&take(&mut got, "inflight"), &table));
    File::from(take(&mut got, "pipe"))
        .write_all(b"second")
        .expect("write");

    // `drop_all` closes them all; the keeper keeps running.
    c.drop_all().expect("drop");
    assert_eq!(drain(pipe2_r), b"second", "new end closed");
    assert!(c.get().expect("get").is_empty());
    assert_eq!(c.pid().expect("still there"), std::process::id());

    // `stop` ends `run`, removes the socket, and nobody answers after.
    k.stop();
    assert!(!socket.exists());
    assert!(KeeperClient::connect(&socket).expect("connect").is_none());
    assert!(c.pid().is_err());
}

#[test]
fn a_fanotify_group_survives_its_creator() {
    let (dir, socket) = scratch();
    let k = Running::start(&socket);
    let c = k.client();
    let watched = dir.path().join("watched");
    std::fs::write(&watched, b"x").expect("write");
    let group = Group::new(InitOptions {
        class: Class::Notif,
        nonblock: true,
        unlimited_queue: false,
        event_open_flags: libc::O_RDONLY,
        report: 0,
    })
    .expect("fanotify_init");
    let f = File::open(&watched).expect("open");
    group.mark_inode(f.as_fd(), FAN_OPEN).expect("mark");
    drop(f);
    let mut buf = EventBuffer::new(64 * 1024);
    assert!(
        group.read_events(&mut buf).expect("read").is_empty(),
        "no event before the mark"
    );
    c.put(&[("group", group.as_fd())]).expect("put");
    drop(group); // The daemon "crashes": only the keeper holds the group.

    File::open(&watched).expect("open while nobody but the keeper holds the group");
    let mut got = c.get().expect("get");
    let group = Group::from_owned(take(&mut got, "group"));
    let events = group.read_events(&mut buf).expect("the open was recorded");
    assert!(
        events.iter().any(|e| e.mask & FAN_OPEN != 0),
        "{} events, none an open",
        events.len()
    );
    k.stop();
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let (_dir, socket) = scratch();
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    // A socket file nobody listens on (a keeper that died).
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    assert!(KeeperClient::connect(&socket).expect("connect").is_none());
    let k = Running::start(&socket);

    // A second keeper on a live socket is refused, naming the first one.
    let err = keeper::run(&socket).expect_err("a second keeper");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("a keeper already listens on")
            && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
    assert!(k.client().pid().is_ok(), "the first keeper is untouched");
    k.stop();

    // Something else listening there is not taken over either.
    let other = UnixListener::bind(&socket).expect("bind");
    let err = keeper::run(&socket).expect_err("not a keeper's, but alive");
    assert!(format!("{err:#}").contains("already listens on"), "{err:#}");
    drop(other);
    std::fs::remove_file(&socket).expect("rm");

    // Nor is a file that is not a socket.
    std::fs::write(&socket, b"precious").expect("write");
    let err = keeper::run(&socket).expect_err("not a socket");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
    assert_eq!(std::fs::read(&socket).expect("still there"), b"precious");
    let err = KeeperClient::connect(&socket).expect_err("not a socket");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
}

/// A client that connects and says nothing is dropped, told why, and the
/// next one is answered (the keeper serves clients one at a time: a silent
/// one would otherwise hold every other off for good).
#[test]
fn a_silent_client_is_dropped_and_the_others_answered() {
    let (_dir, socket) = scratch();
    let k = Running::start(&socket);
    let silent = UnixStream::connect(&socket).expect("connect");
    let c = KeeperClient::connect(&socket)
        .expect("connect")
        .expect("answers");
    assert_eq!(c.pid().expect("pid"), std::process::id());
    // The silent client was told why it was dropped.
    let mut answer = String::new();
    BufReader::new(&silent)
        .read_line(&mut answer)
        .expect("read");
    assert!(answer.contains("\"ok\":false"), "{answer}");
    k.stop();
}

#[test]
fn a_socket_of_another_user_is_refused_clearly() {
    ebb::require_root!();
    let (_dir, socket) = scratch();
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    let listener = UnixListener::bind(&socket).expect("bind");
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).expect("chown");
    let accepting = std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    let err = KeeperClient::connect(&socket).expect_err("another user's socket");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("belongs to uid 65534") && msg.contains("not to us (uid 0)"),
        "{msg}"
    );
    assert!(
        !accepting.join().expect("thread"),
        "connect should not even connect"
    );
}

/// A peer of another uid (nobody, a real process) that asks the keeper
/// for its fds is refused, and the fds stay kept.
#[test]
fn the_keeper_refuses_a_peer_of_another_uid() {
    ebb::require_root!();
    let (dir, socket) = scratch();
    let k = Running::start(&socket);
    let c = k.client();
    let table = memfd("secret");
    c.put(&[("inflight", table.as_fd())]).expect("put");
    // Open the way in, so only the keeper's own check stands.
    for d in [
        dir.path(),
        &dir.path().join("run"),
        &dir.path().join("run/ebb"),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // The keeper may refuse (and hang up) before it reads the request.
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             try:\n    s.sendall(b'{\"op\":\"get\"}\\n')\n\
             except OSError:\n    pass\n\
             print('ANSWER', s.makefile().readline(), flush=True)",
        ])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run the helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = stdout
        .lines()
        .find_map(|l| l.split_once("ANSWER ").map(|(_, a)| a))
        .unwrap_or_else(|| panic!("no answer in {stdout}"));
    assert!(
        answer.contains("\"ok\":false") && answer.contains("not uid 65534"),
        "{answer}"
    );
    assert_eq!(c.get().expect("get").len(), 1, "still kept");
    k.stop();
}

#[test]
fn spawn_reports_a_keeper_that_dies_at_once() {
    let (dir, socket) = scratch();
    let log = dir.path().join("keeper.log");
    let err = KeeperClient::spawn(Path::new("/bin/false"), &socket, &log)
        .expect_err("/bin/false is no keeper");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exited") && msg.contains("keeper.log"),
        "{msg}"
    );
}

/// With the real binary, once it has `ebb keeper`: a detached process in a
/// session of its own that outlives nothing here but answers all the same.
#[test]
fn spawn_starts_a_detached_keeper() {
    let ebb = Path::new(env!("CARGO_BIN_EXE_ebb"));
    let (dir, socket) = scratch();
    let log = dir.path().join("keeper.log");
    let c = KeeperClient::spawn(ebb, &socket, &log).expect("spawn");
    let pid = c.pid().expect("pid");
    assert_ne!(pid, std::process::id());
    let nixpid = nix::unistd::Pid::from_raw(pid as i32);
    assert_eq!(
        nix::unistd::getsid(Some(nixpid)).expect("getsid"),
        nixpid,
        "own session"
    );
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, Path::new("/"), "pins no mount");

    let (r, w) = nix::unistd::pipe().expect("pipe");
    c.put(&[("pipe", w.as_fd())]).expect("put");
    drop(w);
    let mut got = c.get().expect("get");
    File::from(take(&mut got, "pipe"))
        .write_all(b"via another process")
        .expect("write");

    // Spawning again while one answers gives the running keeper (the new
    // process is refused the socket and exits).
    let again = KeeperClient::spawn(ebb, &socket, &log).expect("spawn again");
    assert_eq!(again.pid().expect("pid"), pid);

    c.stop().expect("stop");
    assert_eq!(drain(r), b"via another process");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the keeper did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(KeeperClient::connect(&socket).expect("connect").is_none());
}
