//! Served, waiting or refused, never zeros: a reader of a stub gets its
//! bytes at every moment of the daemon's life, the first release of a
//! tree, and a filesystem mounted again under a kept group included.

mod common;

use common::*;
use std::ffi::OsStr;

/// A python process that opens `path` every millisecond, reads it whole
/// and counts the reads that were not `want` byte for byte, until its
/// stdin closes; then it prints `reads mismatches`.
const REOPENING_READER: &str = r#"
import os, select, sys, time
want = open(sys.argv[2], 'rb').read()
reads = bad = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        with open(sys.argv[1], 'rb') as f:
            got = f.read()
    except OSError as e:
        if bad == 0:
            print('error', e, file=sys.stderr)
        bad += 1
        time.sleep(0.001)
        continue
    reads += 1
    if got != want:
        bad += 1
    time.sleep(0.001)
print(reads, bad)
"#;

#[test]
fn an_open_during_the_first_release_of_a_tree_is_served() {
    ebb::require_root!();
    // Five trees, each released for the first time while a reader opens
    // the file every millisecond (the old code failed 5 of 5).
    for round in 0..5u64 {
        let env = Env::new(300);
        // Nothing archived: the daemon starts with the filesystem armed
        // only.
        env.start_daemon();
        let data = seeded_bytes(1_500_000, 90 + round);
        let path = env.path(&format!("first-{round}.bin"));
        write_file(&path, &data);
        env.archive(&path);
        let want = env.fs.scratch().join(format!("want-{round}"));
        write_file(&want, &data);
        let mut reader = std::process::Command::new(PYTHON)
            .args(["-c", REOPENING_READER])
            .arg(&path)
            .arg(&want)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("reader");
        // The reader keeps opening the file: retry until release finds it
        // closed for a moment.
        // An open that lands while release holds new opens, before the
        // filesystem is marked, makes the release busy (the held opener
        // counts against the lease): it never gets an fd of a stub.
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let run = ebb([OsStr::new("release"), path.as_os_str()]);
            if run.success() {
                break;
            }
            assert!(run.stderr.contains("busy"), "{run:?}");
            assert!(std::time::Instant::now() < deadline, "never released");
        }
        // More opens after the release, then stop.
        let released_at = std::time::Instant::now();
        while released_at.elapsed() < std::time::Duration::from_millis(300) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(reader.stdin.take());
        let out = reader.wait_with_output().expect("reader output");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = text
            .split_whitespace()
            .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
        let (reads, bad) = (
            counts.next().unwrap_or(0),
            counts.next().unwrap_or(u64::MAX),
        );
        assert!(
            reads > 0,
            "round {round}: the reader read nothing: {text} {out:?}"
        );
        assert_eq!(
            bad,
            0,
            "round {round}: {bad} of {reads} reads were not the file's bytes\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_filesystem_mounted_again_under_a_kept_group_is_served() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(2_000_000, 95);
    let (path, _) = env.released_file("remounted.bin", &data);
    env.start_daemon();
    // A crash; the keeper keeps the group (and its mark on this
    // filesystem, until the filesystem goes).
    env.kill_daemons();
    assert!(env.keeper().is_some(), "the keeper outlives the daemon");
    env.fs.remount().expect("mounting the filesystem again");
    env.start_daemon();
    assert_reads(&path, &data);
    let log = env.log();
    assert!(
        log.contains("no longer marks the filesystem"),
        "the log says why:\n{log}"
    );
}

/// An admin detaches the filesystem while ebb serves it (`umount -l`:
/// a plain `umount` is refused, the daemon holds files in it) and mounts
/// it again. Readers with a file open from before, and readers through
/// the new mount, get exact bytes; the daemon goes on serving releases.
#[test]
fn a_filesystem_detached_and_mounted_again_while_served_is_served() {
    ebb::require_root!();
    let env = Env::new(300);
    let old = seeded_bytes(1_500_000, 98);
    let new = seeded_bytes(1_200_000, 99);
    let (held, _) = env.released_file("held.bin", &old);
    let (later, _) = env.released_file("later.bin", &new);
    env.start_daemon();
    let umount = sh("umount \"$1\"", &[env.fs.path().as_os_str()]);
    assert!(
        !umount.success() && umount.stderr.contains("busy"),
        "a served filesystem is busy: {umount:?}"
    );
    // Opened before the detach, read after it.
    let mut holder = std::process::Command::new(PYTHON)
        .args([
            "-c",
            "import sys\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\n\
             sys.stdin.readline()\nsys.stdout.buffer.write(f.read())",
        ])
        .arg(&held)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "open\n");
    env.fs
        .detach_and_mount_again()
        .expect("detach and mount again");
    std::io::Write::write_all(holder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = holder.wait_with_output().expect("holder");
    assert!(out.status.success(), "the held file read: {out:?}");
    assert_same(&out.stdout, &old, "a file opened before the detach");
    assert_reads(&later, &new);
    // The daemon serves the tree through the new mount as before.
    let again = seeded_bytes(700_000, 100);
    let (third, _) = env.released_file("third.bin", &again);
    assert_reads(&third, &again);
    assert!(env.keeper().is_some(), "the keeper still holds the group");
}

/// ebb on the filesystem it serves (a tree at `/`): its own binary never
/// waits on it, while it runs nor while only the keeper holds the group.
#[test]
fn ebb_on_the_filesystem_it_serves_still_starts_after_a_crash() {
    ebb::require_root!();
    let env = Env::new(300);
    let own = env.path("bin/ebb");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::copy(EBB, &own).unwrap();
    let data = seeded_bytes(1_000_000, 97);
    let (path, _) = env.released_file("served.bin", &data);
    let start = || {
        // Under `timeout`: on a kernel (or an ebb) where the exec waits,
        // the test fails instead of hanging in spawn.
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg("30")
            .arg(&own)
            .arg("daemon")
            .arg(&env.root)
            .arg("--background")
            .stdin(std::process::Stdio::null());
        with_run_dir(&mut cmd);
        let run = run_cmd(&mut cmd, std::time::Duration::from_secs(30)).ok();
        let pid: i32 = std::fs::read_to_string(env.path(".ebb/daemon.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(run.out().contains("serving"), "{run:?}");
        pid
    };
    // Nothing but the daemon itself has run the binary since the mark
    // went in (a run by another process would leave an ignore mark).
    let first = start();
    kill9(first);
    // Only the keeper holds the group now: exec'ing the binary on the
    // marked filesystem must not wait for an answer nobody gives.
    let second = start();
    assert_reads(&path, &data);
    let mut status = std::process::Command::new(&own);
    status.args(["status", "--json"]).arg(&path);
    with_run_dir(&mut status);
    assert_eq!(
        run_cmd(&mut status, COMMAND_TIMEOUT).ok().json1()["state"],
        "archived"
    );
    assert!(
        terminate(second, std::time::Duration::from_secs(30)),
        "stopped on SIGTERM"
    );
}

/// What could never be served is refused, in one line, nothing changed:
/// a release while nothing serves the tree, a file on another filesystem
/// mounted inside it, a tree on a filesystem without pre-content events.
#[test]
fn what_could_never_be_served_is_refused() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(300_000, 99);
    let path = env.path("unserved.bin");
    write_file(&path, &data);
    env.archive(&path);
    let run = ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("nothing serves")
        .says("ebb daemon");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert_eq!(env.status(&path)["state"], "archived");
    assert_eq!(std::fs::read(&path).unwrap(), data);

    // Another filesystem mounted inside the tree.
    let inner = ebb::testing::LoopFs::xfs(300).expect("a second filesystem");
    let mnt = env.path("inner");
    std::fs::create_dir(&mnt).unwrap();
    sh(
        "mount --bind \"$1\" \"$2\"",
        &[inner.path().as_os_str(), mnt.as_os_str()],
    )
    .ok();
    let foreign = mnt.join("foreign.bin");
    write_file(&foreign, &data);
    let run = ebb([OsStr::new("archive"), foreign.as_os_str()])
        .fails()
        .says("another filesystem");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    env.start_daemon();
    let run = ebb([
        OsStr::new("release"),
        OsStr::new("-r"),
        OsStr::new("--json"),
        env.root.as_os_str(),
    ]);
    assert!(run.out().contains("not descended into"), "{run:?}");
    assert!(
        !run.out().contains("foreign.bin\",\"result\":\"released"),
        "{run:?}"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), data);
    sh("umount \"$1\"", &[mnt.as_os_str()]).ok();

    // A tree on tmpfs.
    let tmp = tempfile::tempdir().unwrap();
    sh("mount -t tmpfs tmpfs \"$1\"", &[tmp.path().as_os_str()]).ok();
    let run = ebb([
        OsStr::new("init"),
        tmp.path().as_os_str(),
        OsStr::new("--store"),
        env.fs.scratch().join("tmpfs-store").as_os_str(),
    ]);
    sh("umount \"$1\"", &[tmp.path().as_os_str()]).ok();
    run.fails().says("no fanotify pre-content events");
    assert!(!tmp.path().join(".ebb").exists(), "nothing changed");
}

/// Two trees with one id (a `.ebb` copied from one to the other): the
/// second's daemon refuses the first's kept group in one line, and the
/// first tree's stubs go on reading their bytes.
#[test]
fn a_tree_with_a_copied_id_does_not_take_the_other_trees_group() {
    ebb::require_root!();
    let first = Env::new(300);
    let data = seeded_bytes(1_200_000, 98);
    let (path, _) = first.released_file("first.bin", &data);
    first.start_daemon();
    let second = Env::bare(300);
    sh(
        "cp -a \"$1/.ebb\" \"$2/\"",
        &[first.root.as_os_str(), second.root.as_os_str()],
    )
    .ok();
    for stale in ["daemon.pid", "daemon.sock"] {
        let _ = std::fs::remove_file(second.path(&format!(".ebb/{stale}")));
    }
    let mut cmd = ebb_command();
    cmd.arg("daemon").arg(&second.root).arg("--background");
    let run = run_cmd(&mut cmd, COMMAND_TIMEOUT).fails();
    assert!(run.stderr.contains("copied"), "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert_reads(&path, &data);
}

/// A service manager's notification socket, as systemd gives a
/// `Type=notify` unit: a datagram socket whose messages may carry fds.
struct Manager {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .expect("timeout");
        Manager {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next message and the fds it carried; panics after a minute,
    /// showing `log`.
    fn next(&self, log: &std::path::Path) -> (String, Vec<std::os::fd::OwnedFd>) {
        let mut buf = vec![0u8; 4096];
        let (n, fds) =
            ebb::sys::socket::recv_with_fds(&self.socket, &mut buf, 16).unwrap_or_else(|e| {
                panic!(
                    "no notification ({e}); the daemon's log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
    }

    /// Messages up to and including the one with `line`; the fds stored
    /// on the way, by `FDNAME`.
    fn until(
        &self,
        line: &str,
        log: &std::path::Path,
    ) -> (Vec<String>, Vec<(String, std::os::fd::OwnedFd)>) {
        let (mut seen, mut stored) = (Vec::new(), Vec::new());
        loop {
            let (msg, fds) = self.next(log);
            let lines: Vec<&str> = msg.lines().collect();
            if lines.contains(&"FDSTORE=1") {
                let name = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or_else(|| panic!("FDSTORE=1 without FDNAME: {msg:?}"));
                assert!(lines.contains(&"FDPOLL=0"), "{msg:?}");
                assert_eq!(fds.len(), 1, "{msg:?}");
                stored.extend(fds.into_iter().map(|fd| (name.to_string(), fd)));
            }
            let done = lines.contains(&line);
            seen.push(msg);
            if done {
                return (seen, stored);
            }
        }
    }
}

/// 17.9. Under a service manager the daemon says `READY=1` once it
/// serves, having put its group (and the files that go with it) in the
/// manager's fd store first. With daemon and keeper both SIGKILLed, a
/// reader of a stub waits on the group the manager holds, and a daemon
/// started with those fds (`LISTEN_FDS`/`LISTEN_FDNAMES`, as systemd
/// restarts a unit) gives it the exact bytes. Taking the tree out of
/// service removes them from the store. Before: no notifications at all,
/// and killing both handed the reader zeros.
#[test]
fn the_service_managers_fd_store_outlives_keeper_and_daemon() {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(3 << 20);
    let path = env.path("stub.bin");
    write_file(&path, &data);
    env.archive(&path);
    let manager = Manager::new();
    let log1 = manager.path.with_file_name("first.log");
    let mut first = ebb_command();
    first
        .arg("daemon")
        .arg(&env.root)
        .env("NOTIFY_SOCKET", &manager.path)
        .env_remove("EBB_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log1).expect("log file"));
    let mut first = KillOnDrop::spawn(&mut first);
    let (seen, stored) = manager.until("READY=1", &log1);
    let mut names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["fills", "group", "inflight", "tree"], "{seen:?}");
    assert!(
        seen.last().is_some_and(|m| m.contains("STATUS=serving ")),
        "{seen:?}"
    );
    assert_eq!(env.release(&path)["result"], "released");

    // Daemon and keeper die: only the manager holds the group.
    let keeper = env.keeper().expect("a keeper").pid().expect("its pid");
    kill9(first.0.id() as i32);
    let _ = first.0.wait();
    kill9(keeper as i32);
    let mut reader = Reader::cat(&env, &path);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        reader.running(),
        "with daemon and keeper dead, a read of a stub did not wait"
    );

    // Started again as systemd starts a unit that has an fd store: the
    // fds at 3, 4, … named in LISTEN_FDNAMES, LISTEN_PID its own pid.
    let moved: Vec<(String, std::os::fd::OwnedFd)> = stored
        .into_iter()
        .map(|(name, fd)| {
            let fd = ebb::sys::fdtable::move_above(fd, 100).expect("dup");
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .expect("inheritable");
            (name, fd)
        })
        .collect();
    let redirects: Vec<String> = moved
        .iter()
        .enumerate()
        .map(|(i, (_, fd))| format!("{}<&{}", 3 + i, fd.as_raw_fd()))
        .collect();
    let fdnames: Vec<&str> = moved.iter().map(|(n, _)| n.as_str()).collect();
    let log = manager.path.with_file_name("second.log");
    let mut second = Command::new("bash");
    second
        .arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={} exec \"$0\" daemon \"$1\" {}",
            moved.len(),
            fdnames.join(":"),
            redirects.join(" ")
        ))
        .arg(EBB)
        .arg(&env.root)
        .env("NOTIFY_SOCKET", &manager.path)
        .env(ebb::rundir::ENV, env.run.path())
        .env_remove("EBB_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let second = KillOnDrop::spawn(&mut second);
    for (_, fd) in &moved {
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let (seen, _) = manager.until("READY=1", &log);
    reader.finish(&data);
    let said = std::fs::read_to_string(&log).expect("the second daemon's log");
    assert!(
        said.contains("took the group back from the service manager's fd store"),
        "{seen:?}\n{said}"
    );

    // Out of service: the store is emptied.
    let done = ebb([
        OsStr::new("unserve"),
        OsStr::new("--json"),
        env.root.as_os_str(),
    ])
    .ok()
    .json1();
    assert_eq!(done["result"], "unserved", "{done}");
    let mut removed = Vec::new();
    while removed.len() < 4 {
        let (msg, _) = manager.next(&log);
        if msg.lines().any(|l| l == "FDSTOREREMOVE=1") {
            removed.extend(
                msg.lines()
                    .filter_map(|l| l.strip_prefix("FDNAME="))
                    .map(String::from),
            );
        }
    }
    removed.sort();
    assert_eq!(removed, ["fills", "group", "inflight", "tree"]);
    drop(moved);
    drop(second);
}
