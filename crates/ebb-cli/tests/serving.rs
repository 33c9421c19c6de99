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
