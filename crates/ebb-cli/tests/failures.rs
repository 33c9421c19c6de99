//! End to end: what goes wrong. A store that cannot deliver gives readers
//! EIO (never wrong bytes), a busy or unarchived or modified file is not
//! released, a file changing under `ebb archive` is not recorded, and a
//! killed archive leaves a catalog that works and an archive that can be
//! rerun.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// Flip bytes in the payload (after the 12-byte header) of a blob.
fn corrupt_blob(blob: &Path) {
    let mut bytes = std::fs::read(blob).expect("reading a blob");
    assert!(bytes.len() > 12, "{} is too short", blob.display());
    let mid = 12 + (bytes.len() - 12) / 2;
    bytes[mid] ^= 0x55;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xAA;
    std::fs::write(blob, &bytes).expect("writing a blob");
}

/// A reader that failed: non-zero exit, EIO, and what it printed before
/// failing is a strict prefix of the right content.
fn assert_eio_and_no_wrong_bytes(run: &Run, data: &[u8]) {
    assert!(!run.success(), "{}: succeeded on a broken store", run.cmd);
    assert!(
        run.stderr.contains("Input/output error"),
        "{}: stderr {:?}",
        run.cmd,
        run.stderr
    );
    assert!(
        run.stdout.len() < data.len(),
        "{}: all bytes returned",
        run.cmd
    );
    assert_same(
        &run.stdout,
        &data[..run.stdout.len()],
        "bytes before the EIO",
    );
}

fn assert_log_names(env: &Env, path: &Path) {
    let log = env.log();
    assert!(
        log.contains(&path.display().to_string()),
        "the daemon log does not name {}:\n{log}",
        path.display()
    );
}

/// 7. Every chunk corrupt: readers and `ebb restore` fail with EIO; once
///    the store is repaired the same daemon serves the right bytes.
#[test]
fn corrupt_chunks_give_eio_never_wrong_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(2 * MIB + 17);
    let (path, a) = env.released_file("corrupt.bin", &data);
    let blobs = env.chunk_files();
    assert_eq!(blobs.len() as u64, a["chunks"].as_u64().unwrap());
    let saved: Vec<Vec<u8>> = blobs.iter().map(|b| std::fs::read(b).unwrap()).collect();
    for b in &blobs {
        corrupt_blob(b);
    }

    // No daemon: restore refuses, naming the damage, and writes nothing.
    let run = ebb([OsStr::new("restore"), path.as_os_str()])
        .fails()
        .says("in the store is corrupt");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    let st = env.status(&path);
    assert_eq!(st["state"], "released", "{st}");

    env.start_daemon();
    let run = cat(&path);
    assert_eio_and_no_wrong_bytes(&run, &data);
    let s = env.stats();
    assert!(stat_u64(&s, "fill_errors") >= 1, "{s}");
    assert!(stat_u64(&s, "denied") >= 1, "{s}");
    assert_eq!(stat_u64(&s, "chunks_filled"), 0, "{s}");
    assert_log_names(&env, &path);
    let st = env.status(&path);
    assert_eq!(st["state"], "released", "{st}");
    assert_eq!(st["resident_bytes"], 0, "{st}");

    // With the daemon running, restore fails too, pointing at its log.
    ebb([OsStr::new("restore"), path.as_os_str()])
        .fails()
        .says("could not bring back")
        .says("daemon.log");

    // Repaired store: the same daemon now serves the file.
    for (b, bytes) in blobs.iter().zip(&saved) {
        std::fs::write(b, bytes).unwrap();
    }
    assert_reads(&path, &data);
    assert_eq!(env.status(&path)["state"], "archived");
}

/// 7b. One corrupt chunk in the middle: the reader gets the right bytes up
///     to it, then EIO.
#[test]
fn one_corrupt_chunk_stops_the_reader_at_it() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(6 * MIB);
    let (path, _) = env.released_file("one-bad.bin", &data);
    let blobs = env.chunk_files();
    let bad = &blobs[blobs.len() / 2];
    corrupt_blob(bad);
    // Where that chunk starts in the file.
    let bad_start = chunks_of(&data)
        .into_iter()
        .find(|(_, hash)| bad.file_name().is_some_and(|n| *n == **hash))
        .map(|(offset, _)| usize::try_from(offset).unwrap())
        .expect("the corrupted chunk is the file's");
    env.start_daemon();
    let run = cat(&path);
    assert_eio_and_no_wrong_bytes(&run, &data);
    // Stopped *at* it: everything before the read that reached the chunk
    // came (cat reads at most 128 KiB at a time), nothing of the chunk.
    assert!(
        run.stdout.len() <= bad_start && run.stdout.len() + (128 << 10) > bad_start,
        "read {} bytes; the bad chunk starts at {bad_start}",
        run.stdout.len()
    );
    assert_log_names(&env, &path);
    let s = env.stats();
    assert!(stat_u64(&s, "fill_errors") >= 1, "{s}");
    // Again (nothing was cached as good).
    let run = cat(&path);
    assert_eio_and_no_wrong_bytes(&run, &data);
    assert_ne!(env.status(&path)["state"], "archived");
}

/// 7c. A missing chunk: EIO for readers, and the daemon says which file.
#[test]
fn missing_chunk_gives_eio() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(3 * MIB);
    let (path, _) = env.released_file("missing.bin", &data);
    let blobs = env.chunk_files();
    std::fs::remove_file(&blobs[0]).unwrap();
    env.start_daemon();
    let run = cat(&path);
    assert_eio_and_no_wrong_bytes(&run, &data);
    assert_log_names(&env, &path);
    let s = env.stats();
    assert!(stat_u64(&s, "fill_errors") >= 1, "{s}");
    assert!(stat_u64(&s, "denied") >= 1, "{s}");
    ebb([OsStr::new("restore"), path.as_os_str()])
        .fails()
        .says("could not bring back")
        .says("daemon.log");
    assert_ne!(env.status(&path)["state"], "archived");
}

/// 7d. An archived file whose chunk is gone from the store is not released.
#[test]
fn release_refused_when_the_archived_copy_is_incomplete() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(MIB + 1);
    let path = env.path("incomplete.bin");
    write_file(&path, &data);
    assert_eq!(env.archive(&path)["result"], "archived");
    std::fs::remove_file(&env.chunk_files()[0]).unwrap();
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("missing");
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(st["resident_bytes"], data.len() as u64, "{st}");
    assert_reads(&path, &data);
}

/// Start `cmd` (stdout piped) and wait for its first line, "ready".
fn holder(cmd: &mut Command) -> KillOnDrop {
    let mut child = KillOnDrop::spawn(cmd.stdout(Stdio::piped()).stdin(Stdio::null()));
    let out = child.0.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("reading the holder");
    assert_eq!(line.trim(), "ready", "holder {cmd:?} said {line:?}");
    child
}

/// `sleep 30 < path`, once the file is open.
fn sleep_holding(path: &Path) -> KillOnDrop {
    let child = KillOnDrop::spawn(
        Command::new("sh")
            .arg("-c")
            .arg("exec sleep 30 < \"$1\"")
            .arg("sh")
            .arg(path),
    );
    let fd0 = PathBuf::from(format!("/proc/{}/fd/0", child.0.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&fd0).ok().as_deref() != Some(path) {
        assert!(
            Instant::now() < deadline,
            "sleep never opened {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn assert_busy(env: &Env, path: &Path, data: &[u8], who: &str) {
    let run = ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("busy");
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one line: {}",
        run.stderr
    );
    let st = env.status(path);
    assert_eq!(st["state"], "archived", "{who}: {st}");
    assert_eq!(st["resident_bytes"], data.len() as u64, "{who}: {st}");
    assert_reads(path, data);
}

/// 8. A file open in another process (read fd, read-write fd, or only a
///    mapping) is busy: release refuses and changes nothing.
#[test]
fn release_of_a_file_in_use_is_busy() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(MIB + 9);
    let path = env.path("busy.bin");
    write_file(&path, &data);
    assert_eq!(env.archive(&path)["result"], "archived");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    {
        let _sleep = sleep_holding(&path);
        assert_busy(&env, &path, &data, "sleep < file");
    }
    {
        let _py = holder(
            Command::new(PYTHON)
                .arg("-c")
                .arg("import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\nprint('ready', flush=True)\ntime.sleep(30)")
                .arg(&path)
                .current_dir("/"),
        );
        assert_busy(&env, &path, &data, "python O_RDWR");
    }
    {
        let _py = holder(
            Command::new(PYTHON)
                .arg("-c")
                .arg("import mmap, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\nm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\nos.close(fd)\nprint('ready', flush=True)\ntime.sleep(30)")
                .arg(&path)
                .current_dir("/"),
        );
        assert_busy(&env, &path, &data, "python mmap (fd closed)");
    }
    // The same with a daemon serving the tree.
    env.start_daemon();
    {
        let _sleep = sleep_holding(&path);
        assert_busy(&env, &path, &data, "sleep < file, daemon running");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    // Nobody holds it any more: release works, and the file reads back.
    assert_eq!(env.release(&path)["result"], "released");
    assert_reads(&path, &data);
}

/// 8b. Releasing a file that was never archived is refused, nothing
///     changed.
#[test]
fn release_of_an_unarchived_file_is_refused() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(MIB);
    let path = env.path("plain.bin");
    write_file(&path, &data);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let run = ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("not archived");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    let run = ebb([
        OsStr::new("release"),
        OsStr::new("--json"),
        path.as_os_str(),
    ])
    .fails();
    let line = run.json1();
    assert_eq!(line["path"], path.display().to_string(), "{line}");
    assert!(
        line["error"].as_str().unwrap().contains("not archived"),
        "{line}"
    );
    let st = env.status(&path);
    assert_eq!(st["state"], "resident", "{st}");
    assert_eq!(st["managed"], false, "{st}");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert_reads(&path, &data);
}

/// 8c. Releasing a file modified since it was archived is refused.
#[test]
fn release_of_a_modified_file_is_refused() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(MIB);
    let path = env.path("changed.bin");
    write_file(&path, &data);
    assert_eq!(env.archive(&path)["result"], "archived");
    // Same size, only a few bytes rewritten.
    let mut changed = data.clone();
    changed[4096..4100].copy_from_slice(b"EBB!");
    write_file(&path, &changed);
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "{st}");
    assert_eq!(st["state"], "resident", "{st}");
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
    assert_reads(&path, &changed);
    assert_eq!(env.status(&path)["modified"], true);
    // Archived again, it releases, and comes back as the new content.
    assert_eq!(env.archive(&path)["result"], "archived");
    assert_eq!(env.release(&path)["result"], "released");
    ebb([OsStr::new("restore"), path.as_os_str()]).ok();
    assert_reads(&path, &changed);
}

/// 9. A file rewritten while `ebb archive` reads it is not recorded.
#[test]
fn archive_of_a_changing_file_records_nothing() {
    ebb::require_root!();
    let env = Env::new(300);
    let size = 64 * MIB;
    let path = env.path("busy-writer.bin");
    write_file(&path, &random_bytes(size));
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let block = random_bytes(4096);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Rewrite in place (size unchanged): only mtime/ctime tell.
                let off = (i * 7919 % (size as u64 / 4096)) * 4096;
                f.write_all_at(&block, off).unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        while writes.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let run = ebb([
            OsStr::new("archive"),
            OsStr::new("--json"),
            path.as_os_str(),
        ]);
        stop.store(true, Ordering::Relaxed);
        run
    });
    let run = run.fails();
    let line = run.json1();
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("changed while it was being archived"),
        "{line}"
    );
    let st = env.status(&path);
    assert_eq!(st["managed"], false, "{st}");
    assert_eq!(st["state"], "resident", "{st}");
    // Quiet again, it archives.
    assert_eq!(env.archive(&path)["result"], "archived");
}

/// 9b. The same with a writer appending.
#[test]
fn archive_of_a_growing_file_records_nothing() {
    ebb::require_root!();
    let env = Env::new(300);
    let path = env.path("growing.bin");
    write_file(&path, &random_bytes(64 * MIB));
    let stop = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                f.write_all(b"more bytes\n").unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        std::thread::sleep(Duration::from_millis(5));
        let run = ebb([OsStr::new("archive"), path.as_os_str()]);
        stop.store(true, Ordering::Relaxed);
        run
    });
    run.fails().says("changed while it was being archived");
    let st = env.status(&path);
    assert_eq!(st["managed"], false, "{st}");
}

fn sha256_file(path: &Path) -> String {
    let run = sh("timeout 60 sha256sum \"$1\"", &[path.as_os_str()]).ok();
    first_word(&run.stdout)
}

/// Start `ebb archive path`, SIGKILL it after `after`; returns whether it
/// was still running (and so was killed mid-way).
fn kill_archive_after(path: &Path, after: Duration) -> bool {
    let mut child = KillOnDrop::spawn(
        ebb_command()
            .arg("archive")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(after);
    let running = child.0.try_wait().expect("try_wait").is_none();
    let _ = child.0.kill();
    let status = child.0.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    running && status.signal() == Some(9)
}

/// 10. `ebb archive` killed mid-way: the catalog opens, the file is not
///     managed, and the archive can be rerun and restores the right bytes.
#[test]
fn archive_killed_midway_can_be_rerun() {
    ebb::require_root!();
    let env = Env::new(1024);
    let path = env.path("huge.bin");
    sh("head -c 512M /dev/urandom > \"$1\"", &[path.as_os_str()]).ok();
    let want = sha256_file(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    for after in [Duration::from_millis(100), Duration::from_millis(600)] {
        assert!(
            kill_archive_after(&path, after),
            "archive finished within {after:?}: not killed mid-way"
        );
        let st = env.status(&path);
        assert_eq!(st["managed"], false, "after a kill at {after:?}: {st}");
        assert_eq!(st["state"], "resident", "{st}");
        ebb([OsStr::new("release"), path.as_os_str()])
            .fails()
            .says("not archived");
    }

    let a = env.archive(&path);
    assert_eq!(a["result"], "archived", "{a}");
    assert_eq!(a["size"], 512 * MIB as u64, "{a}");
    assert_eq!(env.release(&path)["result"], "released");
    let st = env.status(&path);
    assert_eq!(st["state"], "released", "{st}");
    let r = env.restore(&path);
    assert_eq!(r["result"], "restored", "{r}");
    assert_eq!(sha256_file(&path), want, "content after release + restore");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
}
