//! One event the daemon cannot open a writable fd for must not stop it: a
//! running binary (write-denied), a stub made immutable, a read through a
//! read-only bind mount made by an unprivileged user in their own
//! namespace, a daemon out of fds. Each is read by a real process while
//! the daemon serves; the daemon must go on serving, and a stub read that
//! way gets its bytes.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

/// The uid an ordinary user runs as (nobody).
const NOBODY: &str = "65534";

/// The daemon still serves: a fresh stub reads back exact.
fn still_serves(env: &Env, daemon: i32, rel: &str, seed: u64) {
    assert!(alive(daemon), "the daemon died:\n{}", env.log());
    let data = seeded_bytes(700_000, seed);
    let (path, _) = env.released_file(rel, &data);
    assert_reads(&path, &data);
}

#[test]
fn a_running_binary_and_an_immutable_file_do_not_stop_the_daemon() {
    ebb::require_root!();
    let env = Env::new(300);
    let bin = env.path("bin/sleep");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy("/usr/bin/sleep", &bin).unwrap();
    let frozen = seeded_bytes(600_000, 4);
    let (immutable, _) = env.released_file("frozen.bin", &frozen);
    let daemon = env.start_daemon();
    // Started before anything is released (so before the filesystem is
    // marked): the binary has no ignore mark, and a read of it while it
    // runs raises an event whose fd cannot be opened for writing.
    let _sleeper = KillOnDrop::spawn(Command::new(&bin).arg("600"));
    still_serves(&env, daemon, "first.bin", 1);

    let run = cat(&bin).ok();
    assert_same(
        &run.stdout,
        &std::fs::read("/usr/bin/sleep").unwrap(),
        "a running binary, read",
    );
    still_serves(&env, daemon, "after-running.bin", 2);

    sh("chattr +i \"$1\"", &[immutable.as_os_str()]).ok();
    let run = cat(&immutable);
    sh("chattr -i \"$1\"", &[immutable.as_os_str()]).ok();
    // It cannot be written (nor its mtime put back): refused, never zeros.
    assert!(
        !run.success() && run.stderr.contains("Input/output error"),
        "an immutable stub must be refused with EIO: {run:?}"
    );
    assert!(
        env.log().contains("frozen.bin"),
        "the log names it:\n{}",
        env.log()
    );
    still_serves(&env, daemon, "after-immutable.bin", 3);
}

#[test]
fn a_user_reading_through_a_read_only_bind_mount_does_not_stop_the_daemon() {
    ebb::require_root!();
    let env = Env::new(300);
    // The loop mount lives in a 0700 temp dir: let the user reach it.
    std::fs::set_permissions(env.fs.scratch(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = seeded_bytes(2_500_000, 7);
    let (path, _) = env.released_file("shared/x.bin", &data);
    let daemon = env.start_daemon();

    // An ordinary user: a user and mount namespace of their own, the tree
    // bound read-only over itself, one `sha256sum` of the stub through it.
    let run = run_cmd(
        Command::new("setpriv")
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
            .args(["unshare", "-Urm", "sh", "-c"])
            .arg("mount --bind -o ro \"$1\" \"$1\" && touch \"$1/w\" 2>/dev/null && echo WRITABLE; sha256sum \"$2\"")
            .args([OsStr::new("sh"), env.root.as_os_str(), path.as_os_str()]),
        COMMAND_TIMEOUT,
    );
    assert!(
        !run.out().contains("WRITABLE"),
        "the bind mount was not read-only: {run:?}"
    );
    // Served through the daemon's own writable access to the file.
    assert_eq!(
        first_word(&run.ok().stdout),
        sha256(&data),
        "the stub read through the bind mount"
    );
    still_serves(&env, daemon, "after-bind.bin", 8);
    assert_eq!(stat_u64(&env.stats(), "denied"), 0, "{}", env.log());
}

#[test]
fn running_out_of_fds_does_not_stop_the_daemon() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(900_000, 11);
    let (path, _) = env.released_file("x.bin", &data);
    let daemon = env.start_daemon();
    let limit = |soft: &str| {
        run_cmd(
            Command::new("prlimit")
                .args(["--pid", &daemon.to_string()])
                .arg(format!("--nofile={soft}:")),
            COMMAND_TIMEOUT,
        )
        .ok();
    };
    let before = run_cmd(
        Command::new("prlimit").args([
            "--pid",
            &daemon.to_string(),
            "--nofile",
            "--output=SOFT",
            "--noheadings",
        ]),
        COMMAND_TIMEOUT,
    )
    .ok()
    .out()
    .trim()
    .to_string();
    // No fd number is free for the kernel to give an event: the read fails
    // with EMFILE, and the kernel denies that access itself.
    limit("3");
    let refused = cat(&path);
    limit(&before);
    assert!(
        !refused.success(),
        "a read served without an event fd: {refused:?}"
    );
    assert!(
        stat_u64(&env.stats(), "unreadable_events") >= 1,
        "{}",
        env.log()
    );
    assert_reads(&path, &data);
    still_serves(&env, daemon, "after-emfile.bin", 12);
}
