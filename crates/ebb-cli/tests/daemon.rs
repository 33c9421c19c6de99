//! End to end: the daemon's life. It stops cleanly on SIGTERM (and
//! SIGINT), and `--background` returns only once it serves.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const MIB: usize = 1 << 20;

/// `ebb daemon ROOT` in the foreground, as our child; killed on drop.
fn foreground(env: &Env, name: &str) -> (KillOnDrop, std::path::PathBuf) {
    let log = env.fs.scratch().join(name);
    let child = KillOnDrop::spawn(
        ebb_command()
            .arg("daemon")
            .arg(&env.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    // Serving once its socket answers.
    let sock = env.root.join(".ebb/daemon.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never served: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, log)
}

fn stop_with(child: &mut KillOnDrop, signal: Signal) -> std::process::ExitStatus {
    let pid = Pid::from_raw(child.0.id() as i32);
    kill(pid, signal).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 13a. SIGTERM (and SIGINT) stop a foreground daemon with status 0; it
///      removes its socket and lets go of its lock.
#[test]
fn daemon_stops_cleanly_on_sigterm() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(3 * MIB);
    let (path, _) = env.released_file("served.bin", &data);
    let sock = env.root.join(".ebb/daemon.sock");

    for (signal, name) in [(Signal::SIGTERM, "fg1.log"), (Signal::SIGINT, "fg2.log")] {
        let (mut child, log) = foreground(&env, name);
        assert_eq!(
            std::fs::read_to_string(env.root.join(".ebb/daemon.pid"))
                .unwrap()
                .trim(),
            child.0.id().to_string()
        );
        assert_reads(&path, &data);
        assert_eq!(env.status(&path)["state"], "archived");
        let status = stop_with(&mut child, signal);
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "exit on {signal}: {status}\n{log}");
        assert!(!sock.exists(), "socket left after {signal}");
        assert!(log.contains("stopped"), "{log}");
        // Released again for the next round (no daemon runs now).
        assert_eq!(env.release(&path)["result"], "released");
    }

    // The lock is free: a new daemon starts and serves, and stops on
    // SIGTERM too.
    env.start_daemon();
    assert!(sock.exists());
    assert_reads(&path, &data);
    assert!(env.stop_daemons(), "needed SIGKILL");
    assert!(!sock.exists(), "socket left by the background daemon");
}

/// 13b. `ebb daemon --background` returns only once the mark is in place:
///      a read right after it returns gets the right bytes.
#[test]
fn background_returns_once_serving() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(2 * MIB + 1);
    let (path, _) = env.released_file("quick.bin", &data);
    for round in 0..4 {
        env.start_daemon();
        let run = cat(&path).ok();
        assert_same(&run.stdout, &data, &format!("round {round}"));
        assert!(env.stop_daemons(), "round {round}: needed SIGKILL");
        assert_eq!(env.status(&path)["state"], "archived");
        assert_eq!(env.release(&path)["result"], "released");
    }
    // --json reports the pid and the log.
    let run = ebb([
        std::ffi::OsStr::new("daemon"),
        env.root.as_os_str(),
        std::ffi::OsStr::new("--background"),
        std::ffi::OsStr::new("--json"),
    ]);
    let pid_file = std::fs::read_to_string(env.root.join(".ebb/daemon.pid")).unwrap_or_default();
    let pid: i32 = pid_file.trim().parse().unwrap_or(0);
    // Stopped even if an assertion below fails.
    struct Stop(i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            if self.0 > 0 {
                terminate(self.0, Duration::from_secs(30));
            }
        }
    }
    let _stop = Stop(pid);
    let line = run.ok().json1();
    assert_eq!(line["pid"], pid, "{line}");
    assert_eq!(line["root"], env.root.display().to_string(), "{line}");
    assert_reads(&path, &data);
}

/// A tree with nothing archived is not marked for pre-content events: new
/// files' first writes cost no round trip to the daemon. The first release
/// marks it (through the daemon, or through the keeper's group while the
/// daemon is down: a reader then waits for the next daemon, never reads
/// zeros), and a restart with archived files marks it from the start.
#[test]
fn a_tree_that_tiers_nothing_raises_no_events_until_a_file_is_released() {
    ebb::require_root!();
    let env = Env::new(300);
    env.start_daemon();
    for i in 0..20 {
        write_file(&env.path(&format!("new{i}")), b"fresh content");
        assert_reads(&env.path(&format!("new{i}")), b"fresh content");
    }
    let s = env.stats();
    assert_eq!(stat_u64(&s, "allowed"), 0, "no event without a mark: {s}");

    let data = random_bytes(MIB + 3);
    let (path, _) = env.released_file("cold.bin", &data);
    assert_reads(&path, &data);
    let s = env.stats();
    assert!(
        stat_u64(&s, "allowed") > 0,
        "the release marked the tree: {s}"
    );

    // Daemon killed in a tree not marked yet; a file released meanwhile
    // (through the keeper's group) is waited for, then served.
    let fresh = Env::new(300);
    let pid = fresh.start_daemon();
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
    wait_for(|| !alive(pid), "the killed daemon to be gone");
    let (cold, _) = fresh.released_file("cold.bin", &data);
    let mut reader = Reader::cat(&fresh, &cold);
    reader.wait_until_held("a reader while no daemon runs");
    fresh.start_daemon();
    reader.finish(&data);
}

/// 13d. A machine just booted, or never used: the runtime directory does
///      not exist (only its parent does). The daemon makes it, private
///      and ours, its keeper listens there, and a released file reads
///      back exact; a daemon started again finds it there and serves.
#[test]
fn a_daemon_serves_with_a_runtime_directory_that_does_not_exist_yet() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    ebb::require_root!();
    let env = Env::new(300);
    let run = env.run.path();
    let data = random_bytes(3 * MIB + 5);
    let path = env.path("after-boot.bin");
    write_file(&path, &data);
    env.archive(&path);
    assert!(
        !run.exists() && run.parent().is_some_and(Path::is_dir),
        "the runtime directory {} should not exist yet, its parent should",
        run.display()
    );

    env.start_daemon();
    assert_eq!(env.release(&path)["result"], "released");
    let meta = std::fs::symlink_metadata(&run).expect("the daemon made the runtime directory");
    assert!(meta.is_dir(), "{} is not a directory", run.display());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "private");
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw(), "ours");
    let socket = env.keeper_socket().expect("the tree's id");
    assert!(socket.starts_with(&run), "{}", socket.display());
    let socket_meta = std::fs::symlink_metadata(&socket).expect("the keeper's socket");
    assert!(socket_meta.file_type().is_socket());
    assert!(
        env.keeper().is_some(),
        "no keeper answers in {}",
        run.display()
    );
    assert_reads(&path, &data);

    // Once made, the directory is used as it is.
    assert!(env.stop_daemons(), "needed SIGKILL");
    assert_eq!(env.release(&path)["result"], "released");
    env.start_daemon();
    assert_reads(&path, &data);
}

/// 13e. A runtime directory that is a symlink (someone else could choose
///      where the daemon writes) is refused in one line naming it and the
///      way out, and nothing is made through it.
#[test]
fn a_runtime_directory_that_is_a_symlink_is_refused() {
    ebb::require_root!();
    let env = Env::new(300);
    let elsewhere = env.fs.scratch().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let link = env.fs.scratch().join("run-link");
    std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
    let mut cmd = ebb_command();
    cmd.arg("daemon")
        .arg(&env.root)
        .arg("--background")
        .env(ebb::rundir::ENV, &link)
        .env_remove("EBB_LOG")
        .stdin(Stdio::null());
    let run = run_cmd(&mut cmd, COMMAND_TIMEOUT)
        .fails()
        .says(&link.display().to_string())
        .says("symlink")
        .says("EBB_RUN_DIR");
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("ebb: error: "), "{:?}", lines[0]);
    let made: Vec<_> = std::fs::read_dir(&elsewhere).expect("read_dir").collect();
    assert!(made.is_empty(), "files made through the symlink: {made:?}");
    assert!(
        !env.root.join(".ebb/daemon.sock").exists(),
        "a refused daemon left its socket"
    );
}

/// A log that cannot be written (its disk full: the daemon's log lives in
/// the tree) never stops the daemon. With stderr on `/dev/full` every log
/// line fails; tracing-subscriber used to report that with `eprintln!` to
/// the same stderr, which panicked: the daemon died at its first log line,
/// and readers of released files waited on the keeper for good.
#[test]
fn a_daemon_whose_log_cannot_be_written_still_serves() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(1_500_000, 130);
    let (path, _) = env.released_file("logless.bin", &data);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut daemon = KillOnDrop::spawn(
        ebb_command()
            .arg("daemon")
            .arg(&env.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(full),
    );
    let sock = env.root.join(".ebb/daemon.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            daemon.0.try_wait().expect("try_wait").is_none(),
            "the daemon died at its first log line"
        );
        assert!(Instant::now() < deadline, "the daemon never served");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_reads(&path, &data);
    // Each fill it logged (a file all back) failed to reach the log; it
    // goes on: a release through it, and a read.
    let (other, _) = env.released_file("other.bin", &data);
    assert_reads(&other, &data);
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "the daemon died"
    );
    stats(&env.root);
}
