//! `ebb snapshot` (a point-in-time clone taken by the daemon while the
//! file is in use) and `ebb changed-ranges` (where a file differs from its
//! snapshot), checked against the bytes, through the CLI.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ebb, kill9, wait_for, Env, Run};
use ebb::testing::{write_fragmented, FsKind, LoopFs};

fn changed_ranges(base: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .arg("changed-ranges")
        .arg(base)
        .arg(file)
        .arg("--json")
        .output()
        .expect("run ebb changed-ranges")
}

#[test]
fn changed_ranges_json_covers_the_writes_and_nothing_far_from_them() {
    ebb::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let path = fs.path().join("vm.img");
    let snap = fs.path().join("vm.img@mon");
    std::fs::write(&path, vec![0x5au8; 8 << 20]).expect("write");
    let cp = Command::new("cp")
        .arg("--reflink=always")
        .arg(&path)
        .arg(&snap)
        .status()
        .expect("cp");
    assert!(cp.success());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.write_all_at(b"changed", 3 << 20).expect("write");
    drop(file);

    let out = changed_ranges(&snap, &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ranges: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let (start, end) = (
        ranges[0]["start"].as_u64().unwrap(),
        ranges[0]["end"].as_u64().unwrap(),
    );
    assert!(start <= 3 << 20 && end >= (3 << 20) + 7, "{ranges:?}");
    assert_eq!(ranges[0]["length"].as_u64().unwrap(), end - start);
    assert!(
        end - start <= 1 << 20,
        "one small write, one small range: {ranges:?}"
    );
}

#[test]
fn changed_ranges_refuses_files_on_different_filesystems_and_missing_paths() {
    ebb::require_root!();
    let fs = LoopFs::xfs(300).expect("loop xfs");
    let path = fs.path().join("f");
    std::fs::write(&path, b"data").expect("write");
    let elsewhere = fs.scratch().join("other");
    std::fs::write(&elsewhere, b"data").expect("write");
    let out = changed_ranges(&elsewhere, &path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different filesystems"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let out = changed_ranges(&fs.path().join("nope"), &path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

// ---- ebb snapshot -------------------------------------------------------

/// Block `b` of the files the tests snapshot starts with `b` (u64, little
/// endian); the rest of a block is zeros, so a punched block reads alike.
fn pattern(offset: u64) -> u8 {
    let within = (offset % 4096) as usize;
    if within < 8 {
        (offset / 4096).to_le_bytes()[within]
    } else {
        0
    }
}

fn snapshot(src: &Path, dst: &Path, more: &[&str]) -> Run {
    let mut args = vec![
        OsStr::new("snapshot"),
        src.as_os_str(),
        dst.as_os_str(),
        OsStr::new("--json"),
    ];
    args.extend(more.iter().map(OsStr::new));
    ebb(args)
}

/// `"mark_at_start": true` in the tree's config, as an admin would set it.
fn mark_at_start(env: &Env) {
    let path = env.path(".ebb/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["mark_at_start"] = true.into();
    std::fs::write(&path, config.to_string()).expect("config");
}

/// A process holding `path` open for writing (and doing nothing else),
/// once it has the file open.
fn hold_open_for_writing(path: &Path) -> common::KillOnDrop {
    let holder = common::KillOnDrop::spawn(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3<>\"$1\"; exec sleep 60")
            .arg("sh")
            .arg(path),
    );
    let pid = holder.0.id();
    wait_for(
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "the writer to hold the file open",
    );
    holder
}

/// Wait until the clock has passed the tick since which the daemon
/// watches (the runtime directory's `<tree id>.marked`): a process started
/// in that very tick may have opened files before the watch began.
fn wait_past_the_watch(env: &Env) {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.path(".ebb/config.json")).expect("config"),
    )
    .expect("json");
    let socket = env.keeper_socket().expect("a keeper socket");
    let record = socket.with_file_name(format!("{}.marked", config["id"].as_str().expect("id")));
    // No record: nothing watches yet; then only "now" can be waited past.
    let since: u64 = std::fs::read_to_string(&record)
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| ebb::snapshot::users::now_ticks().expect("clock"));
    wait_for(
        || ebb::snapshot::users::now_ticks().is_ok_and(|now| now > since),
        "the tick after the watch began",
    );
}

/// The filesystem is watched from the daemon's start (armed), whether or
/// not the tree has archived or tracked anything: a writer that opened the
/// file after the daemon started is held back, and a snapshot is taken;
/// one that opened it before any daemon ran is refused with the way out.
#[test]
fn a_writer_older_than_the_daemon_is_refused_a_younger_one_is_held() {
    ebb::require_root!();
    let env = Env::new(300);
    let src = env.path("vm.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).expect("write");
    let mut older = hold_open_for_writing(&src);
    env.start_daemon();
    // Nothing archived, nothing tracked, no snapshot asked for yet: a
    // writer that opens the file now is seen all the same.
    wait_past_the_watch(&env);
    let _younger = hold_open_for_writing(&src);
    let run = snapshot(&src, &env.path("vm.img@1"), &[]).fails();
    assert!(run.stderr.contains("reopen the file"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    let _ = older.0.kill();
    let _ = older.0.wait();
    snapshot(&src, &env.path("vm.img@2"), &[]).ok();
    assert_eq!(
        std::fs::read(env.path("vm.img@2")).expect("the snapshot"),
        vec![7u8; 1 << 20]
    );
}

fn partial(dst: &Path) -> std::path::PathBuf {
    let mut p = dst.as_os_str().to_owned();
    p.push(".ebb-partial");
    p.into()
}

#[test]
fn a_snapshot_equals_its_source_shares_its_blocks_and_is_never_left_partial() {
    ebb::require_root!();
    for kind in [FsKind::Xfs, FsKind::Btrfs] {
        let env = Env::on(kind, 400);
        env.start_daemon();
        let src = env.path("vm.img");
        // 24 MiB + a ragged tail: 3072 extents, ~48 units, an unaligned end.
        write_fragmented(&src, (24 << 20) + 1000, pattern).expect("write");
        let dst = env.path("vm.img@mon");
        let done = snapshot(&src, &dst, &[]).ok().json1();
        assert_eq!(done["state"], "done", "{kind:?}: {done}");
        assert_eq!(done["size"], (24 << 20) + 1000, "{kind:?}: {done}");
        assert!(done["clone_calls"].as_u64().unwrap() >= 1, "{done}");
        assert!(
            done["units"].as_u64().unwrap() > 10,
            "{kind:?}: cut by extents: {done}"
        );
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            std::fs::read(&src).unwrap(),
            "{kind:?}"
        );
        assert!(!partial(&dst).exists(), "{kind:?}");
        // Clones share every block: nothing differs in the extent maps.
        let ranges = ebb([
            OsStr::new("changed-ranges"),
            dst.as_os_str(),
            src.as_os_str(),
            OsStr::new("--json"),
        ])
        .ok();
        assert!(ranges.json().is_empty(), "{kind:?}: {}", ranges.out());

        // An existing destination is kept unless --force.
        std::fs::write(&src, b"new content").expect("rewrite");
        snapshot(&src, &dst, &[]).fails().says("already exists");
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), (24 << 20) + 1000);
        snapshot(&src, &dst, &["--force"]).ok();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new content", "{kind:?}");
    }
}

/// Writes random 4 KiB blocks of argv[1] (argv[2] blocks), each starting
/// with its block number and a version one higher than the last, until
/// argv[3] exists; then logs "block version start_ns end_ns" lines to
/// argv[4] (CLOCK_MONOTONIC, as the daemon's instant).
const WRITER: &str = r#"
import os, random, struct, sys, time
path, blocks, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fd = os.open(path, os.O_WRONLY)
versions = [0] * blocks
log = []
now = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)
n = 0
while True:
    n += 1
    if n % 64 == 0 and os.path.exists(stop):
        break
    b = random.randrange(blocks)
    versions[b] += 1
    data = struct.pack("<QQ", b, versions[b]) + bytes(4080)
    t0 = now()
    os.pwrite(fd, data, b * 4096)
    log.append("%d %d %d %d" % (b, versions[b], t0, now()))
with open(out, "w") as f:
    f.write("\n".join(log) + "\n")
"#;

/// Requirement 2: a writer keeps writing versioned blocks while the sweep
/// is slowed down; every write that finished before the snapshot's instant
/// is in it, and none that started after.
#[test]
fn a_snapshot_is_the_file_at_its_instant_while_a_writer_keeps_writing() {
    ebb::require_root!();
    const BLOCKS: u64 = 16384; // 64 MiB, 8192 extents, 128 units
    let env = Env::new(400);
    // Nothing archived or tracked: the daemon watches from its start only
    // when told to (see the next test).
    mark_at_start(&env);
    env.start_daemon_with(
        |cmd| {
            cmd.env("EBB_TEST_SNAPSHOT_THROTTLE_MS", "4");
        },
        common::COMMAND_TIMEOUT,
    );
    let src = env.path("db.img");
    write_fragmented(&src, BLOCKS * 4096, pattern).expect("write");

    // The writer is a process started after the daemon (one started
    // before might hold fds that predate the mark, and is refused).
    let stop = env.fs.scratch().join("stop");
    let log_path = env.fs.scratch().join("writes");
    // Killed if the test fails before it is told to stop (it keeps a log
    // of every write in memory).
    let mut writer = common::KillOnDrop::spawn(
        std::process::Command::new(common::PYTHON)
            .arg("-c")
            .arg(WRITER)
            .arg(&src)
            .arg(BLOCKS.to_string())
            .arg(&stop)
            .arg(&log_path),
    );
    std::thread::sleep(Duration::from_millis(300));
    let dst = env.path("db.img@1");
    let done = snapshot(&src, &dst, &[]).ok().json1();
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(&stop, b"").unwrap();
    assert!(writer.0.wait().expect("writer").success());
    let log: Vec<(u64, u64, u64, u64)> = std::fs::read_to_string(&log_path)
        .expect("the writer's log")
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
            (f[0], f[1], f[2], f[3])
        })
        .collect();
    let instant = done["instant_monotonic_ns"].as_u64().expect("instant");

    let snap = std::fs::read(&dst).expect("read snapshot");
    assert_eq!(snap.len() as u64, BLOCKS * 4096);
    let version_in_snapshot = |b: u64| {
        let at = (b * 4096) as usize;
        let block = u64::from_le_bytes(snap[at..at + 8].try_into().unwrap());
        assert!(
            block == b || block == 0,
            "block {b} holds block {block}'s data"
        );
        u64::from_le_bytes(snap[at + 8..at + 16].try_into().unwrap())
    };
    let (mut before, mut after) = (0, 0);
    for &(b, v, start, end) in &log {
        let got = version_in_snapshot(b);
        if end < instant {
            before += 1;
            assert!(
                got >= v,
                "block {b}: version {v} was written before the snapshot, it has {got}"
            );
        } else if start > instant {
            after += 1;
            assert!(
                got < v,
                "block {b}: version {v} was written after the snapshot began, yet it is in it"
            );
        }
    }
    assert!(
        before > 100,
        "the writer ran before the snapshot ({before} writes)"
    );
    assert!(
        after > 100,
        "the writer ran during the snapshot ({after} writes); {done}"
    );
    assert!(
        done["units_cloned_early"].as_u64().unwrap() > 0,
        "writes went ahead of the sweep: {done}"
    );
}

/// Requirement 1 (resumable): a daemon killed mid-snapshot finishes it when
/// it starts again, before it lets the writer that waited meanwhile go on;
/// if the keeper died too, the point in time is lost and the partial file
/// is removed, never taken for a snapshot.
#[test]
fn a_snapshot_cut_by_a_daemon_crash_is_finished_by_the_next_daemon_or_removed() {
    ebb::require_root!();
    let env = Env::new(400);
    let src = env.path("vm.img");
    let size: u64 = 32 << 20;
    write_fragmented(&src, size, pattern).expect("write");
    let original = std::fs::read(&src).unwrap();
    let dst = env.path("vm.img@1");

    for keeper_dies in [false, true] {
        let _ = std::fs::remove_file(&dst);
        // 128 units at 100 ms: still at it when killed, however late a
        // loaded machine lets this thread get there (at 20 ms, the CLI of
        // one loaded CI run exited 0: done before the kill, it seems).
        let slow = env.start_daemon_with(
            |cmd| {
                cmd.env("EBB_TEST_SNAPSHOT_THROTTLE_MS", "100");
            },
            common::COMMAND_TIMEOUT,
        );
        let cli = common::ebb_command()
            .args([OsStr::new("snapshot"), src.as_os_str(), dst.as_os_str()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ebb snapshot");
        wait_for(|| partial(&dst).exists(), "the snapshot to start");
        std::thread::sleep(Duration::from_millis(300));
        if keeper_dies {
            let pid = env.keeper().and_then(|k| k.pid().ok()).expect("a keeper") as i32;
            kill9(slow);
            kill9(pid);
        } else {
            kill9(slow);
        }
        let out = cli.wait_with_output().expect("wait");
        assert!(
            !out.status.success(),
            "the CLI notices its daemon went: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dst.exists(), "a cut snapshot is never in place");

        // A write to the end of the file (not cloned yet) while no daemon
        // runs: held by the keeper's group, or unseen if it died.
        let writer = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf NEW | dd of=\"$1\" bs=1 seek=$2 conv=notrunc status=none")
            .arg("sh")
            .arg(&src)
            .arg((size - 4096).to_string())
            .spawn()
            .expect("writer");
        std::thread::sleep(Duration::from_millis(200));
        env.start_daemon();
        let mut writer = writer;
        assert!(writer.wait().expect("writer").success());
        let again = snapshot(&src, &dst, &[]);
        if keeper_dies {
            again.fails().says("point in time was lost");
            assert!(!partial(&dst).exists() && !dst.exists());
        } else {
            assert_eq!(again.ok().json1()["state"], "done");
            let snap = std::fs::read(&dst).unwrap();
            assert!(
                snap == original,
                "the snapshot is the file before the write"
            );
            assert_ne!(std::fs::read(&src).unwrap(), original, "the write went on");
        }
        assert!(env.stop_daemons());
        // Back to the original, as fragmented, for the next round.
        write_fragmented(&src, size, pattern).expect("write");
    }
    // Once refused, a new snapshot starts afresh.
    env.start_daemon();
    snapshot(&src, &dst, &[]).ok();
    assert_eq!(std::fs::read(&dst).unwrap(), original);
}

/// A truncate, or a replacement of the source, during the snapshot: the
/// snapshot still holds the whole file as it was. The sweep is held 1.5 s
/// after its first run of units, and each meddling is shown to have begun
/// before it went on.
#[test]
fn a_source_cut_short_or_replaced_during_the_snapshot_is_snapshotted_whole() {
    ebb::require_root!();
    let env = Env::new(400);
    env.start_daemon_with(
        |cmd| {
            cmd.env("EBB_TEST_SNAPSHOT_THROTTLE_MS", "5")
                .env("EBB_TEST_PAUSE", "snapshot-swept:1500:units 0..");
        },
        common::COMMAND_TIMEOUT,
    );
    let utc_now = || {
        common::sh("date -u +%Y-%m-%dT%H:%M:%S.%6NZ", &[])
            .ok()
            .out()
            .trim()
            .to_string()
    };
    let src = env.path("vm.img");
    for (dst, meddle) in [
        ("cut@1", "truncate -s 1M \"$1\""),
        (
            "replaced@1",
            "echo other > \"$1.new\" && mv \"$1.new\" \"$1\"",
        ),
    ] {
        write_fragmented(&src, 32 << 20, pattern).expect("write");
        let original = std::fs::read(&src).unwrap();
        let dst = env.path(dst);
        let snapshotting = {
            let (src, dst) = (src.clone(), dst.clone());
            common::spawn(move || snapshot(&src, &dst, &[]))
        };
        let held = "units 0..";
        let of = format!("of {}; ", dst.display());
        let line_of = |what: &str| {
            env.log()
                .lines()
                .find(|l| l.contains(held) && l.contains(&of) && l.ends_with(what))
                .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        };
        wait_for(|| line_of("pausing").is_some(), "the sweep to be held");
        let meddled_at = utc_now();
        common::sh(meddle, &[src.as_os_str()]).ok();
        let done = snapshotting.join().unwrap().ok().json1();
        assert!(
            std::fs::read(&dst).unwrap() == original,
            "{}: the whole file as it was",
            dst.display()
        );
        let went_on = line_of("going on").expect("the held sweep went on");
        assert!(
            meddled_at < went_on,
            "meddled with at {meddled_at}, after the sweep went on at {went_on}: nothing was tested ({done})"
        );
        if dst.ends_with("cut@1") {
            assert!(
                done["units_cloned_early"].as_u64().unwrap() > 0,
                "the truncate waited for the rest to be cloned: {done}"
            );
            assert_eq!(std::fs::metadata(&src).unwrap().len(), 1 << 20);
        }
    }
}

#[test]
fn snapshots_are_refused_clearly_where_they_cannot_be_taken() {
    ebb::require_root!();
    // No reflink on ext4: the filesystem is named.
    let ext4 = Env::on(FsKind::Ext4, 200);
    ext4.start_daemon();
    let f = ext4.path("f");
    std::fs::write(&f, vec![1u8; 1 << 20]).unwrap();
    let run = snapshot(&f, &ext4.path("f@1"), &[]).fails().says("ext4");
    assert!(run.stderr.contains("reflink"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(!partial(&ext4.path("f@1")).exists());

    let env = Env::new(300);
    let src = env.path("vm.img");
    write_fragmented(&src, 4 << 20, pattern).expect("write");
    // No daemon.
    snapshot(&src, &env.path("a"), &[])
        .fails()
        .says("no ebb daemon");
    env.start_daemon();
    // Missing source, missing directory, another filesystem, itself.
    snapshot(&env.path("nope"), &env.path("a"), &[])
        .fails()
        .says("nope");
    snapshot(&src, &env.path("no/dir/a"), &[])
        .fails()
        .says("no/dir");
    snapshot(&src, &env.fs.scratch().join("a"), &[])
        .fails()
        .says("different filesystems");
    snapshot(&src, &src, &[]).fails().says("source itself");
    // A writer through a shared mapping could not be held back.
    let mut mapper = std::process::Command::new(common::PYTHON)
        .arg("-c")
        .arg("import mmap,sys,time; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),0); print(1,flush=True); time.sleep(60)")
        .arg(&src)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mapper.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    snapshot(&src, &env.path("a"), &[])
        .fails()
        .says("mapped shared and writable");
    let _ = mapper.kill();
    let _ = mapper.wait();
    // A released file would be cloned as holes.
    ebb([OsStr::new("archive"), src.as_os_str()]).ok();
    ebb([OsStr::new("release"), src.as_os_str()]).ok();
    snapshot(&src, &env.path("a"), &[])
        .fails()
        .says("restore it first");
    assert!(!env.path("a").exists() && !partial(&env.path("a")).exists());
}

#[test]
fn a_snapshot_that_runs_out_of_space_is_removed_with_a_clear_error() {
    ebb::require_root!();
    let env = Env::new(300);
    env.start_daemon();
    let src = env.path("vm.img");
    write_fragmented(&src, 64 << 20, pattern).expect("write");
    // Fill the filesystem: cloning needs room for the copy's extent records.
    let _ = common::sh("fallocate -l 1G \"$1\" 2>/dev/null; dd if=/dev/zero of=\"$1.2\" bs=64k status=none 2>/dev/null; true", &[env.path("filler").as_os_str()]);
    let run = snapshot(&src, &env.path("vm@1"), &[]).fails();
    assert!(
        run.stderr.to_lowercase().contains("full") || run.stderr.contains("No space"),
        "{}",
        run.stderr
    );
    assert!(!env.path("vm@1").exists() && !partial(&env.path("vm@1")).exists());
}

// ---- ebb track / untrack, incremental archive ----------------------------

fn track(verb: &str, file: &Path, owner: &str) -> Run {
    ebb([
        OsStr::new(verb),
        file.as_os_str(),
        OsStr::new("--owner"),
        OsStr::new(owner),
        OsStr::new("--json"),
    ])
}

#[test]
fn one_owner_tracks_a_file_and_only_it_can_untrack_it() {
    ebb::require_root!();
    let env = Env::new(300);
    let f = env.path("vm.img");
    write_fragmented(&f, 8 << 20, pattern).expect("write");
    let t = track("track", &f, "nightly-backup").ok().json1();
    assert_eq!(t["owner"], "nightly-backup");
    let base = Path::new(t["base"].as_str().expect("a base snapshot")).to_path_buf();
    assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&f).unwrap());
    // Same owner again: fine. Another: refused, naming who and since when.
    assert_eq!(
        track("track", &f, "nightly-backup").ok().json1()["since"],
        t["since"]
    );
    let refused = track("track", &f, "other-tool")
        .fails()
        .says("tracked by nightly-backup (since");
    assert_eq!(
        refused.stderr.trim().lines().count(),
        1,
        "{}",
        refused.stderr
    );
    track("untrack", &f, "other-tool")
        .fails()
        .says("tracked by nightly-backup");
    track("track", &f, "bad owner")
        .fails()
        .says("not a valid name");
    track("track", &env.path("nope"), "x").fails().says("nope");

    // The base says what changed since.
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(b"changed", 5 << 20).unwrap();
    drop(file);
    let ranges = changed_ranges(&base, &f);
    assert!(ranges.status.success());
    assert_eq!(String::from_utf8_lossy(&ranges.stdout).lines().count(), 1);

    track("untrack", &f, "nightly-backup").ok();
    assert!(!base.exists(), "the base goes with the tracking");
    track("untrack", &f, "nightly-backup")
        .fails()
        .says("not tracked");
    track("track", &f, "other-tool").ok();
}

/// Requirement 4: many processes race to track one file; exactly one wins,
/// and every other is told who did.
#[test]
fn of_many_racing_trackers_exactly_one_wins() {
    ebb::require_root!();
    let env = Env::new(300);
    let f = env.path("disk.img");
    write_fragmented(&f, 4 << 20, pattern).expect("write");
    let racers: Vec<std::process::Child> = (0..24)
        .map(|i| {
            common::ebb_command()
                .args([OsStr::new("track"), f.as_os_str(), OsStr::new("--owner")])
                .arg(format!("racer-{i}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("ebb track")
        })
        .collect();
    let outs: Vec<std::process::Output> = racers
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let winners: Vec<usize> = (0..outs.len())
        .filter(|&i| outs[i].status.success())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one wins: {winners:?}");
    let winner = format!("tracked by racer-{}", winners[0]);
    for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&winner), "racer {i}: {err}");
    }
}

/// Requirement 5: a tracked file's next archive reads only what changed
/// since its base, and the version it records reads back exactly.
#[test]
fn archiving_a_tracked_file_again_reads_only_what_changed() {
    ebb::require_root!();
    let env = Env::new(400);
    let f = env.path("vm.img");
    let size: u64 = 64 << 20;
    common::write_file(&f, &common::seeded_bytes(size as usize, 7));
    track("track", &f, "backup").ok();
    let archive = |f: &Path| {
        ebb([OsStr::new("archive"), f.as_os_str(), OsStr::new("--json")])
            .ok()
            .json1()
    };
    let first = archive(&f);
    assert_eq!(
        (first["bytes_read"].as_u64(), first["incremental"].as_bool()),
        (Some(size), Some(false)),
        "{first}"
    );

    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    for i in 0..16u64 {
        file.write_all_at(&[i as u8 + 1; 4096], (i * 997 + 13) * 4096 % size)
            .unwrap();
    }
    file.write_all_at(b"grown", size).unwrap();
    drop(file);
    let expected = std::fs::read(&f).unwrap();
    let second = archive(&f);
    assert_eq!(second["incremental"], true, "{second}");
    assert_eq!(second["size"].as_u64(), Some(size + 5));
    let read = second["bytes_read"].as_u64().unwrap();
    assert!(
        read > 0 && read < size / 4,
        "read {read} of {size}: {second}"
    );

    // What was recorded is the file: release it and bring it back.
    assert_eq!(env.release(&f)["result"], "released");
    ebb([OsStr::new("restore"), f.as_os_str()]).ok();
    assert!(
        std::fs::read(&f).unwrap() == expected,
        "the incremental version reads back exactly"
    );
    assert_eq!(archive(&f)["result"], "unchanged");
}
