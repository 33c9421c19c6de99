//! End to end: archive, release, and populate on access with real readers
//! and writers (`cat`, `dd`, python's `mmap` and `os.pwrite`, `execve`).

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

const MIB: usize = 1 << 20;

/// Mode, owner and mtime: what a release must leave alone.
fn identity(path: &Path) -> (u32, u32, u32, i64, i64, u64) {
    let m = std::fs::metadata(path).expect("stat");
    (
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
        m.size(),
    )
}

fn du_kib(path: &Path) -> u64 {
    let run = sh("du -k \"$1\"", &[path.as_os_str()]).ok();
    first_word(&run.stdout).parse().expect("du output")
}

/// 1. init, archive, release (content gone, metadata kept), daemon, read
///    back by `cat | sha256sum`; release again under the daemon and read.
#[test]
fn full_flow_archive_release_read_back() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(5 * MIB + 12345);
    let path = env.path("dir/big.bin");
    write_file(&path, &data);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_577_934_245, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let before = identity(&path);
    assert_eq!(before.0 & 0o7777, 0o640);

    let st = env.status(&path);
    assert_eq!(st["state"], "resident", "{st}");
    assert_eq!(st["managed"], false, "{st}");

    let a = env.archive(&path);
    assert_eq!(a["result"], "archived", "{a}");
    assert_eq!(a["archived"], true, "{a}");
    assert_eq!(a["size"], data.len() as u64, "{a}");
    let chunks = a["chunks"].as_u64().unwrap();
    assert!(
        (5..=84).contains(&chunks),
        "5 MiB in 64 KiB–1 MiB chunks: {a}"
    );
    assert_eq!(a["new_chunks"], chunks, "{a}");
    assert_eq!(a["new_bytes"], data.len() as u64, "{a}");
    assert_eq!(env.chunk_files().len() as u64, chunks, "one blob per chunk");
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(st["resident_bytes"], data.len() as u64, "{st}");
    assert_eq!(st["managed"], true, "{st}");

    // Archiving again changes nothing.
    let again = env.archive(&path);
    assert_eq!(again["result"], "unchanged", "{again}");
    assert_eq!(again["archived"], false, "{again}");

    let r = env.release(&path);
    assert_eq!(r["result"], "released", "{r}");
    assert_eq!(r["released"], true, "{r}");
    assert_eq!(r["size"], data.len() as u64, "{r}");
    assert_eq!(r["freed_bytes"], data.len() as u64, "{r}");
    let st = env.status(&path);
    assert_eq!(st["state"], "released", "{st}");
    assert_eq!(st["resident_bytes"], 0, "{st}");
    assert_eq!(st["size"], data.len() as u64, "{st}");
    assert_eq!(st["managed"], true, "{st}");
    assert_eq!(st["modified"], false, "{st}");
    assert_eq!(
        identity(&path),
        before,
        "mode/uid/gid/mtime/size after release"
    );
    let blocks = std::fs::metadata(&path).unwrap().blocks();
    assert!(blocks * 512 <= 64 * 1024, "{blocks} blocks still allocated");
    assert!(du_kib(&path) <= 64, "du says {} KiB", du_kib(&path));

    // Releasing a released file does nothing.
    let r = env.release(&path);
    assert_eq!(r["result"], "unchanged", "{r}");

    env.start_daemon();
    let run = sh("timeout 30 cat \"$1\" | sha256sum", &[path.as_os_str()]).ok();
    assert_eq!(first_word(&run.stdout), sha256(&data), "cat | sha256sum");
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(st["resident_bytes"], data.len() as u64, "{st}");
    assert_eq!(st["modified"], false, "{st}");
    assert_eq!(identity(&path), before, "metadata after populate");
    let s = env.stats();
    assert_eq!(stat_u64(&s, "chunks_filled"), chunks, "{s}");
    assert_eq!(stat_u64(&s, "bytes_filled"), data.len() as u64, "{s}");
    assert_eq!(stat_u64(&s, "denied"), 0, "{s}");

    // Released again while the daemon serves, and read again.
    let r = env.release(&path);
    assert_eq!(r["result"], "released", "{r}");
    assert_eq!(env.status(&path)["state"], "released");
    assert!(du_kib(&path) <= 64);
    assert_reads(&path, &data);
    assert_eq!(env.status(&path)["state"], "archived");
    let s = env.stats();
    assert_eq!(stat_u64(&s, "chunks_filled"), 2 * chunks, "{s}");
    assert_eq!(
        identity(&path),
        before,
        "metadata after the second populate"
    );
    assert!(env.stop_daemons(), "the daemon did not stop on SIGTERM");

    // The content is really back on disk: with no daemon, still right.
    assert_reads(&path, &data);
}

/// 2. A 4 KiB read at 8 MiB of a released 16 MiB file fetches one chunk.
#[test]
fn read_fetches_only_the_chunks_it_covers() {
    ebb::require_root!();
    let env = Env::new(300);
    // Seeded: the same chunk boundaries every run (the read below lies
    // inside one chunk for this seed).
    let data = seeded_bytes(16 * MIB, 0xEBB);
    let (path, a) = env.released_file("sixteen.bin", &data);
    let chunks = a["chunks"].as_u64().unwrap();
    assert!(chunks > 8, "{a}");
    env.start_daemon();
    let off = 8 * MIB;
    let mut dd = std::process::Command::new("timeout");
    dd.args(["30", "dd", "bs=4096", "skip=2048", "count=1", "status=none"])
        .arg(format!("if={}", path.display()));
    let run = run_cmd(&mut dd, COMMAND_TIMEOUT).ok();
    assert_same(&run.stdout, &data[off..off + 4096], "dd of 4 KiB at 8 MiB");

    let s = env.stats();
    assert_eq!(stat_u64(&s, "chunks_filled"), 1, "{s}\n{}", env.log());
    let st = env.status(&path);
    assert_eq!(st["state"], "partial", "{st}");
    let resident = st["resident_bytes"].as_u64().unwrap();
    assert!(resident >= 4096 && resident < 2 * MIB as u64, "{st}");
    assert_eq!(stat_u64(&s, "bytes_filled"), resident, "{s} vs {st}");
    let ranges: Vec<(u64, u64)> =
        serde_json::from_value(st["resident_ranges"].clone()).expect("resident_ranges");
    assert_eq!(ranges.len(), 1, "{st}");
    let (start, end) = ranges[0];
    assert!(start <= off as u64 && end >= (off + 4096) as u64, "{st}");
    assert_eq!(end - start, resident, "{st}");

    // The pages wholly inside the filled chunk hold the right bytes and
    // are served from disk: reading them fetches nothing more. (The kernel
    // reports page-sized ranges, so a page straddling a chunk boundary
    // would rightly fetch the neighbour too.)
    let (lo, hi) = (start.div_ceil(4096) * 4096, end / 4096 * 4096);
    let mut dd = std::process::Command::new("timeout");
    dd.args(["30", "dd", "bs=4096", "status=none"])
        .arg(format!("skip={}", lo / 4096))
        .arg(format!("count={}", (hi - lo) / 4096))
        .arg(format!("if={}", path.display()));
    let run = run_cmd(&mut dd, COMMAND_TIMEOUT).ok();
    assert_same(
        &run.stdout,
        &data[lo as usize..hi as usize],
        "the filled chunk",
    );
    let s = env.stats();
    assert_eq!(stat_u64(&s, "chunks_filled"), 1, "{s}\n{}", env.log());

    // The rest comes when asked for.
    assert_reads(&path, &data);
    let s = env.stats();
    assert_eq!(stat_u64(&s, "chunks_filled"), chunks, "{s}");
    assert_eq!(env.status(&path)["state"], "archived");
}

/// 3. A released file read through `mmap` (page faults, out of order).
#[test]
fn mmap_of_a_released_file() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(6 * MIB + 777);
    let (path, a) = env.released_file("mapped.bin", &data);
    env.start_daemon();
    let code = r#"
import hashlib, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
os.close(fd)
n = len(m)
# Fault pages in from the end first, then hash the whole mapping.
tail = m[n - 1]
mid = m[n // 2]
print(hashlib.sha256(m).hexdigest(), tail, mid)
"#;
    let run = python(code, &[path.as_os_str()]).ok();
    let out = run.out();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{out}");
    assert_eq!(words[0], sha256(&data), "mmap read");
    assert_eq!(words[1], data[data.len() - 1].to_string());
    assert_eq!(words[2], data[data.len() / 2].to_string());
    let s = env.stats();
    assert_eq!(
        stat_u64(&s, "chunks_filled"),
        a["chunks"].as_u64().unwrap(),
        "{s}"
    );
    assert_eq!(env.status(&path)["state"], "archived");
}

/// 4. `execve` of released binaries: the program runs and is right.
#[test]
fn exec_of_a_released_binary() {
    ebb::require_root!();
    let env = Env::new(300);
    let input = random_bytes(300_000);
    let input_path = env.fs.scratch().join("input");
    write_file(&input_path, &input);
    let bin = env.path("bin/sha256sum");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy("/usr/bin/sha256sum", &bin).unwrap();
    // A bigger program too (several chunks, shared libraries loaded from
    // elsewhere): the distribution's python.
    let py = env.path("bin/python3");
    std::fs::copy(std::fs::canonicalize(PYTHON).unwrap(), &py).unwrap();
    for p in [&bin, &py] {
        assert_eq!(env.archive(p)["result"], "archived");
        assert_eq!(env.release(p)["result"], "released");
    }
    env.start_daemon();

    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("30").arg(&bin).arg(&input_path);
    let run = run_cmd(&mut cmd, COMMAND_TIMEOUT).ok();
    assert_eq!(
        first_word(&run.stdout),
        sha256(&input),
        "released sha256sum's output"
    );
    assert_eq!(
        env.status(&bin)["state"],
        "archived",
        "sha256sum all read back"
    );

    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("60")
        .arg(&py)
        .args([
            "-S",
            "-c",
            "import sys; print(sum(range(1000)), sys.version_info[0])",
        ])
        .current_dir("/");
    let run = run_cmd(&mut cmd, COMMAND_TIMEOUT).ok();
    assert_eq!(run.out().trim(), "499500 3");
    let s = env.stats();
    assert!(stat_u64(&s, "chunks_filled") >= 2, "{s}");
    assert_eq!(stat_u64(&s, "denied"), 0, "{s}");

    // Both binaries are byte-identical to the originals.
    assert_same(
        &cat(&bin).ok().stdout,
        &std::fs::read("/usr/bin/sha256sum").unwrap(),
        "sha256sum",
    );
    let py_orig = std::fs::read(std::fs::canonicalize(PYTHON).unwrap()).unwrap();
    assert_same(&cat(&py).ok().stdout, &py_orig, "python3");
}

/// 5. Writes into released ranges are populated first (never mixed with
///    zeros); a modified file must be archived again before release.
#[test]
fn writes_into_a_released_file() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(4 * MIB);
    let (path, _) = env.released_file("written.bin", &data);
    env.start_daemon();

    // 10 bytes in the middle of a chunk, from another process.
    let off = 1_500_003usize;
    let patch = b"0123456789";
    python(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nassert os.pwrite(fd, b'0123456789', int(sys.argv[2])) == 10\nos.close(fd)",
        &[path.as_os_str(), OsStr::new(&off.to_string())],
    )
    .ok();
    let mut want = data.clone();
    want[off..off + 10].copy_from_slice(patch);
    assert_reads(&path, &want);
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "{st}");
    assert_eq!(st["managed"], true, "{st}");
    assert_eq!(st["size"], data.len() as u64, "{st}");

    // Not releasable until archived again; nothing changed by trying.
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
    assert_reads(&path, &want);
    assert_eq!(env.status(&path)["modified"], true);

    let a = env.archive(&path);
    assert_eq!(a["result"], "archived", "{a}");
    let st = env.status(&path);
    assert_eq!(st["modified"], false, "{st}");
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(env.release(&path)["result"], "released");
    assert_reads(&path, &want);

    // The same with dd into a released range.
    assert_eq!(env.release(&path)["result"], "released");
    sh(
        "printf ABCDEFGHIJ | timeout 30 dd of=\"$1\" bs=1 seek=3000001 conv=notrunc status=none",
        &[path.as_os_str()],
    )
    .ok();
    want[3_000_001..3_000_011].copy_from_slice(b"ABCDEFGHIJ");
    assert_reads(&path, &want);
    assert_eq!(env.status(&path)["modified"], true);

    let s = env.stats();
    assert_eq!(stat_u64(&s, "denied"), 0, "{s}");
    assert!(env.stop_daemons());
    // Everything written is on disk for real.
    assert_eq!(env.status(&path)["state"], "resident");
}

/// 5b. `ftruncate` growing a released file: the archived bytes come back
///     in front of the new zeros.
#[test]
fn truncate_grow_of_a_released_file_keeps_its_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(2 * MIB + 5);
    let (path, _) = env.released_file("grown.bin", &data);
    env.start_daemon();
    let bigger = data.len() + 100_000;
    python(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nos.ftruncate(fd, int(sys.argv[2]))\nos.close(fd)",
        &[path.as_os_str(), OsStr::new(&bigger.to_string())],
    )
    .ok();
    let mut want = data.clone();
    want.resize(bigger, 0);
    assert_reads(&path, &want);
    assert_eq!(env.status(&path)["size"], bigger as u64);
    assert_eq!(stat_u64(&env.stats(), "denied"), 0);
    assert!(env.stop_daemons());
    assert_reads(&path, &want); // on disk, with no daemon
}

/// 5c. A truncate is a change like a write: after it (and reads that fill
///     the rest), `status` says modified and `release` refuses until the
///     file is archived again.
#[test]
fn truncate_counts_as_a_modification() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(2 * MIB + 5);
    let (path, a) = env.released_file("grown.bin", &data);
    env.start_daemon();
    let bigger = data.len() + 100_000;
    python(
        "import os, sys\nos.truncate(sys.argv[1], int(sys.argv[2]))",
        &[path.as_os_str(), OsStr::new(&bigger.to_string())],
    )
    .ok();
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "right after the truncate: {st}");
    let mut want = data.clone();
    want.resize(bigger, 0);
    assert_reads(&path, &want);
    let st = env.status(&path);
    assert_eq!(st["size"], bigger as u64, "{st}");
    assert_eq!(st["modified"], true, "after the rest was filled: {st}");
    assert_eq!(st["state"], "resident", "{st}");
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
    let again = env.archive(&path);
    assert_eq!(again["result"], "archived", "{again}");
    assert_eq!(again["size"], bigger as u64, "{again}");
    // The tail chunk differs now; the rest is shared with the old version.
    assert!(again["new_chunks"].as_u64().unwrap() >= 1, "{again}");
    assert!(
        again["chunks"].as_u64().unwrap() >= a["chunks"].as_u64().unwrap(),
        "{again}"
    );
    assert_eq!(env.release(&path)["result"], "released");
    assert_reads(&path, &want);
}

/// 5d. Shrinking a released file and growing it back: the cut-off part
///     reads as zeros (POSIX), never as the archived bytes.
#[test]
fn truncate_shrink_then_grow_reads_zeros() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(2 * MIB);
    let (path, _) = env.released_file("cut.bin", &data);
    env.start_daemon();
    python(
        "import os, sys\nos.truncate(sys.argv[1], 1 << 20)\nos.truncate(sys.argv[1], 2 << 20)",
        &[path.as_os_str()],
    )
    .ok();
    let mut want = data[..MIB].to_vec();
    want.resize(2 * MIB, 0);
    assert_reads(&path, &want);
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "{st}");
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
    assert!(env.stop_daemons());
    assert_reads(&path, &want);
}

/// 5e. A released file written while nothing served it (daemon and
///     keeper gone: a reboot) is modified: once a daemon serves it, the
///     written bytes are not overwritten with the archived ones, status
///     still says modified, and release refuses. (While only the daemon
///     is stopped, the write waits for the next one instead.)
#[test]
fn write_while_no_daemon_is_not_undone() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(MIB);
    let (path, _) = env.released_file("offline-write.bin", &data);
    env.keeper()
        .expect("a stopped daemon leaves its keeper")
        .stop()
        .expect("stopping it");
    sh(
        "printf HELLOWORLD | timeout 30 dd of=\"$1\" bs=1 seek=500000 conv=notrunc status=none",
        &[path.as_os_str()],
    )
    .ok();
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "{st}");
    env.start_daemon();
    let mut dd = std::process::Command::new("timeout");
    dd.args(["30", "dd", "bs=1", "skip=500000", "count=10", "status=none"])
        .arg(format!("if={}", path.display()));
    let run = run_cmd(&mut dd, COMMAND_TIMEOUT).ok();
    assert_eq!(
        run.stdout,
        b"HELLOWORLD",
        "the bytes written were replaced: read {:?}",
        String::from_utf8_lossy(&run.stdout)
    );
    let st = env.status(&path);
    assert_eq!(st["modified"], true, "{st}");
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
}

/// 6. Concurrent readers of the same chunks wait for one fetch each.
#[test]
fn concurrent_readers_share_fetches() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(8 * MIB + 4321);
    let (path, a) = env.released_file("shared.bin", &data);
    let chunks = a["chunks"].as_u64().unwrap();
    env.start_daemon();
    let want = sha256(&data);
    let hashes: Vec<String> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                s.spawn(move || {
                    let run = sh("timeout 60 cat \"$1\" | sha256sum", &[path.as_os_str()]).ok();
                    first_word(&run.stdout)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    for (i, h) in hashes.iter().enumerate() {
        assert_eq!(h, &want, "reader {i}");
    }
    let s = env.stats();
    assert_eq!(
        stat_u64(&s, "chunks_filled"),
        chunks,
        "each chunk fetched once: {s}"
    );
    assert_eq!(stat_u64(&s, "bytes_filled"), data.len() as u64, "{s}");
    assert_eq!(stat_u64(&s, "fill_errors"), 0, "{s}");
    assert_eq!(env.status(&path)["state"], "archived");
}

/// 6b. Release racing with readers (daemon running): every read gets the
///     right bytes; release either releases or says busy.
#[test]
fn release_racing_with_readers() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(3 * MIB + 1);
    let (path, _) = env.released_file("raced.bin", &data);
    env.start_daemon();
    let want = sha256(&data);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (released, busy) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            for i in 0..60 {
                let run = sh("timeout 30 cat \"$1\" | sha256sum", &[path.as_os_str()]).ok();
                assert_eq!(first_word(&run.stdout), want, "read {i}");
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let (mut released, mut busy) = (0, 0);
        while !done.load(std::sync::atomic::Ordering::Relaxed) && !reader.is_finished() {
            let run = ebb([
                OsStr::new("release"),
                OsStr::new("--json"),
                path.as_os_str(),
            ]);
            if run.success() {
                released += 1;
            } else {
                let line = run.json1();
                assert!(
                    line["error"].as_str().unwrap_or("").contains("busy"),
                    "{line}"
                );
                busy += 1;
            }
        }
        reader.join().expect("reader");
        (released, busy)
    });
    eprintln!("released {released} times, busy {busy} times");
    assert!(released > 0, "never released ({busy} busy)");
    assert_reads(&path, &data);
    let s = env.stats();
    assert_eq!(stat_u64(&s, "denied"), 0, "{s}");
}

/// 6c. A release right after a read of the whole file has finished finds
///     nobody holding it: the daemon lets go of its own fds of the file
///     (it used to keep them a moment after answering the last reader,
///     and `cat f; ebb release f` said busy now and then: 1 GiB benchmark,
///     1 in 2 runs). 40 rounds, the reader and release in one shell, so
///     nothing sits between them.
#[test]
fn a_release_right_after_a_read_is_never_busy() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(6 * MIB + 3);
    let (path, _) = env.released_file("reread.bin", &data);
    env.start_daemon();
    let want = sha256(&data);
    let script = format!(
        "for i in $(seq 40); do
           sum=$(timeout 30 cat \"$1\" | sha256sum) || exit 2
           [ \"${{sum%% *}}\" = {want} ] || {{ echo \"round $i: wrong bytes\"; exit 3; }}
           \"$2\" release \"$1\" >/dev/null || {{ echo \"round $i\"; exit 4; }}
         done"
    );
    let run = with_run_dir(std::process::Command::new("sh").args(["-c", &script, "sh"]))
        .arg(&path)
        .arg(EBB)
        .output()
        .expect("sh");
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_reads(&path, &data);
}

/// 11. `ebb restore` brings a released file back, with and without a
///     daemon.
#[test]
fn restore_with_and_without_daemon() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = random_bytes(3 * MIB + 99);
    let (path, _) = env.released_file("restored.bin", &data);
    let before = identity(&path);

    let r = env.restore(&path);
    assert_eq!(r["result"], "restored", "{r}");
    assert_eq!(r["restored"], true, "{r}");
    assert_eq!(r["size"], data.len() as u64, "{r}");
    assert_eq!(r["fetched_bytes"], data.len() as u64, "{r}");
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(st["resident_bytes"], data.len() as u64, "{st}");
    assert_eq!(st["modified"], false, "{st}");
    assert_eq!(identity(&path), before, "mtime etc. after restore");
    assert_reads(&path, &data); // no daemon: these are the bytes on disk
    assert_eq!(env.restore(&path)["result"], "unchanged");

    // With a daemon serving, from a partial file.
    assert_eq!(env.release(&path)["result"], "released");
    env.start_daemon();
    let mut dd = std::process::Command::new("timeout");
    dd.args(["30", "dd", "bs=4096", "skip=100", "count=1", "status=none"])
        .arg(format!("if={}", path.display()));
    let run = run_cmd(&mut dd, COMMAND_TIMEOUT).ok();
    assert_same(&run.stdout, &data[409_600..413_696], "dd");
    let st = env.status(&path);
    assert_eq!(st["state"], "partial", "{st}");
    let resident = st["resident_bytes"].as_u64().unwrap();
    let r = env.restore(&path);
    assert_eq!(r["result"], "restored", "{r}");
    assert_eq!(
        r["fetched_bytes"],
        data.len() as u64 - resident,
        "{r} after {st}"
    );
    let st = env.status(&path);
    assert_eq!(st["state"], "archived", "{st}");
    assert_eq!(st["modified"], false, "{st}");
    assert_eq!(identity(&path), before);
    assert_reads(&path, &data);
    assert!(env.stop_daemons());
    assert_reads(&path, &data); // on disk, with no daemon
}

/// 14. Resident files cost nothing once seen: an evictable ignore mark
///     silences them.
#[test]
fn resident_files_raise_no_more_events() {
    ebb::require_root!();
    let env = Env::new(300);
    let plain_data = random_bytes(MIB + 3);
    let plain = env.path("plain.bin");
    write_file(&plain, &plain_data);
    let data = random_bytes(2 * MIB);
    let (released, _) = env.released_file("released.bin", &data);
    env.start_daemon();

    let s0 = env.stats();
    assert_reads(&plain, &plain_data);
    let s1 = env.stats();
    assert!(stat_u64(&s1, "ignore_marks") >= 1, "{s1}");
    assert!(
        stat_u64(&s1, "ignore_marks") > stat_u64(&s0, "ignore_marks"),
        "{s0} {s1}"
    );
    assert_reads(&plain, &plain_data);
    let s2 = env.stats();
    assert_eq!(
        stat_u64(&s2, "allowed"),
        stat_u64(&s1, "allowed"),
        "second read of a resident file: {s1} {s2}"
    );
    assert_eq!(stat_u64(&s2, "chunks_filled"), 0, "{s2}");

    // A released file read back in full is silenced the same way.
    assert_reads(&released, &data);
    let s3 = env.stats();
    assert!(
        stat_u64(&s3, "ignore_marks") > stat_u64(&s2, "ignore_marks"),
        "{s2} {s3}"
    );
    assert_reads(&released, &data);
    let s4 = env.stats();
    assert_eq!(
        stat_u64(&s4, "allowed"),
        stat_u64(&s3, "allowed"),
        "{s3} {s4}"
    );
    assert_eq!(
        stat_u64(&s4, "chunks_filled"),
        stat_u64(&s3, "chunks_filled")
    );
}
