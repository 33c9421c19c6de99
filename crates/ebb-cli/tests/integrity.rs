//! Never lost, never wrong bytes: what the store holds is checked before
//! it is trusted, and a power cut (an XFS shut down without flushing its
//! log, `xfs_io -x -c shutdown`) leaves every released file reading its
//! exact archived bytes, or plainly resident and exact.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;
use std::process::Command;

use common::*;

/// The store object that holds the chunk of a one-chunk file.
fn only_chunk(env: &Env) -> std::path::PathBuf {
    let chunks = env.chunk_files();
    assert_eq!(chunks.len(), 1, "one chunk expected: {chunks:?}");
    chunks.into_iter().next().expect("one chunk")
}

/// Overwrite a store object with bytes of the same length that do not
/// verify.
fn damage(object: &Path) {
    let len = std::fs::metadata(object).expect("stat the object").len() as usize;
    std::fs::write(object, vec![0x5a; len]).expect("damaging the object");
}

#[test]
fn a_damaged_chunk_is_written_again_by_the_next_archive_of_the_same_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(200_000, 21);
    let first = env.path("first.bin");
    write_file(&first, &data);
    env.archive(&first);
    damage(&only_chunk(&env));

    // Identical content elsewhere: dedup must not trust the damaged copy.
    let second = env.path("second.bin");
    write_file(&second, &data);
    let archived = env.archive(&second);
    assert_eq!(
        archived["new_chunks"], 1,
        "the damaged chunk was trusted: {archived}"
    );
    assert_eq!(env.release(&second)["result"], "released");
    assert_eq!(env.release(&first)["result"], "released");
    env.start_daemon();
    assert_reads(&first, &data);
    assert_reads(&second, &data);
}

#[test]
fn release_reads_every_chunk_back_before_punching() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(200_000, 22);
    let path = env.path("x.bin");
    write_file(&path, &data);
    env.archive(&path);
    let object = only_chunk(&env);
    damage(&object);
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("cannot be trusted")
        .says("ebb archive");
    assert_eq!(env.status(&path)["state"], "archived", "nothing changed");
    assert_eq!(std::fs::read(&path).unwrap(), data, "the file is intact");

    // A missing chunk is refused the same way.
    std::fs::remove_file(&object).unwrap();
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("missing");
    assert_eq!(std::fs::read(&path).unwrap(), data, "the file is intact");
}

/// Cut the power of the test filesystem (nothing more reaches its disk),
/// then bring it up again as a rebooted machine would: no daemon, no
/// keeper, the filesystem mounted anew.
fn power_cut(env: &Env) {
    cut_power(env, "shutdown");
}

/// [`power_cut`], the filesystem's log written out first (`shutdown -f`):
/// whatever metadata was changed in memory (a write's new mtime) is on
/// disk, no data that was not synced is.
fn power_cut_after_the_log(env: &Env) {
    cut_power(env, "shutdown -f");
}

fn cut_power(env: &Env, how: &str) {
    let keeper = env.keeper();
    run_cmd(
        Command::new("xfs_io")
            .args(["-x", "-c", how])
            .arg(&env.root),
        COMMAND_TIMEOUT,
    )
    .ok();
    env.kill_daemons();
    if let Some(keeper) = keeper {
        keeper.stop().expect("stopping the keeper");
    }
    env.fs.remount().expect("mounting the filesystem again");
}

#[test]
fn a_power_cut_right_after_release_leaves_a_stub_that_reads_its_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let daemon_data: Vec<(std::path::PathBuf, Vec<u8>)> = (0..8u64)
        .map(|i| {
            let data = seeded_bytes(300_000 + i as usize * 7_777, 30 + i);
            let path = env.path(&format!("f{i}.bin"));
            write_file(&path, &data);
            (path, data)
        })
        .collect();
    for (path, _) in &daemon_data {
        env.archive(path);
    }
    env.start_daemon();
    for (path, _) in &daemon_data {
        assert_eq!(env.release(path)["result"], "released");
    }
    power_cut(&env);
    env.start_daemon();
    for (path, data) in &daemon_data {
        let state = env.status(path)["state"].clone();
        assert!(
            state == "released" || state == "archived",
            "{}: {state} after the power cut",
            path.display()
        );
        assert_reads(path, data);
    }
}

#[test]
fn a_power_cut_right_after_a_fill_leaves_exact_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(3_000_000, 40);
    let (path, _) = env.released_file("filled.bin", &data);
    env.start_daemon();
    // Filled by the daemon, recorded resident; the kernel happens to write
    // the catalog back first; then the power goes.
    assert_reads(&path, &data);
    assert_eq!(env.status(&path)["state"], "archived");
    for f in ["catalog.db-wal", "catalog.db"] {
        run_cmd(
            Command::new("xfs_io")
                .args(["-c", "fsync"])
                .arg(env.root.join(".ebb").join(f)),
            COMMAND_TIMEOUT,
        )
        .ok();
    }
    power_cut(&env);
    env.start_daemon();
    let state = env.status(&path)["state"].clone();
    // Its put-back mtime may not have reached the disk: then it is plainly
    // resident (changed since archived, in ebb's eyes), and exact.
    assert!(
        ["released", "partial", "archived", "resident"].contains(&state.as_str().unwrap()),
        "{state} after the power cut"
    );
    assert_reads(&path, &data);
}

/// Offsets at which ebb's chunker cuts `data`.
fn chunk_starts(data: &[u8]) -> Vec<u64> {
    chunks_of(data)
        .into_iter()
        .map(|(offset, _)| offset)
        .collect()
}

/// Wait until the daemon's log has `needle`, or fail.
fn wait_for_log(env: &Env, needle: &str) {
    wait_for(
        || env.log().contains(needle),
        &format!("the log to say {needle:?}"),
    );
}

/// A python process that waits for a line on stdin before each step.
struct Stepper {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Stepper {
    fn start(code: &str, args: &[&OsStr]) -> Stepper {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(code)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = Stepper { child, out };
        s.expect("ready");
        s
    }

    fn expect(&mut self, what: &str) {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).expect("reading the child");
        assert_eq!(line.trim(), what, "the child said {line:?}");
    }

    /// Let it take its next step and wait until it says `done`.
    fn step(&mut self) {
        self.go();
        self.expect("done");
    }

    /// [`Stepper::step`] for a step that says one line before `done`; the
    /// line.
    fn step_said(&mut self) -> String {
        use std::io::BufRead;
        self.go();
        let mut line = String::new();
        self.out.read_line(&mut line).expect("reading the child");
        self.expect("done");
        line.trim().to_string()
    }

    fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to the child");
        stdin.flush().expect("flush");
    }
}

impl Drop for Stepper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release of a file whose content differs from its archived version
/// is refused, and the file keeps its bytes.
fn release_is_refused(env: &Env, path: &Path, want: &[u8]) {
    assert_eq!(
        env.status(path)["modified"],
        true,
        "status of {}",
        path.display()
    );
    ebb([OsStr::new("release"), path.as_os_str()])
        .fails()
        .says("changed since it was archived");
    assert_reads(path, want);
}

#[test]
fn a_rewrite_that_puts_size_and_mtime_back_counts_as_modified() {
    ebb::require_root!();
    let env = Env::new(300);
    let old = seeded_bytes(500_000, 50);
    let new = seeded_bytes(500_000, 51);
    let path = env.path("rsynced.bin");
    write_file(&path, &old);
    env.archive(&path);
    // rsync --inplace -t, or a write followed by touch -r.
    python(
        "import os, sys\n\
         p = sys.argv[1]; st = os.stat(p)\n\
         with open(p, 'r+b') as f: f.write(open(sys.argv[2], 'rb').read())\n\
         os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))",
        &[path.as_os_str(), write_tmp(&env, &new).as_os_str()],
    )
    .ok();
    release_is_refused(&env, &path, &new);
}

fn write_tmp(env: &Env, data: &[u8]) -> std::path::PathBuf {
    let p = env.fs.scratch().join("input");
    write_file(&p, data);
    p
}

#[test]
fn a_write_through_a_mapping_dirty_since_before_the_archive_is_not_lost() {
    ebb::require_root!();
    let env = Env::new(300);
    let old = seeded_bytes(400_000, 60);
    let path = env.path("mapped.bin");
    write_file(&path, &old);
    // Map it shared and writable, dirty the first page, keep the mapping.
    let mut writer = Stepper::start(
        "import mmap, os, sys\n\
         fd = os.open(sys.argv[1], os.O_RDWR)\n\
         m = mmap.mmap(fd, 0)\n\
         m[0:5] = b'first'\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         m[5:11] = b'second'\n\
         m.close(); os.close(fd)\n\
         print('done', flush=True)\n\
         sys.stdin.readline()",
        &[path.as_os_str()],
    );
    env.archive(&path);
    // The page may still be dirty: this write changes no timestamp unless
    // the archive wrote it back first.
    writer.step();
    drop(writer);
    let mut want = old.clone();
    want[0..5].copy_from_slice(b"first");
    want[5..11].copy_from_slice(b"second");
    release_is_refused(&env, &path, &want);
}

#[test]
fn a_write_racing_a_fill_is_not_hidden_by_the_mtime_put_back() {
    ebb::require_root!();
    let env = Env::new(300);
    let a = seeded_bytes(8 << 20, 70);
    let (path, _) = env.released_file("a.bin", &a);
    let archived_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let starts = chunk_starts(&a);
    let last = *starts.last().expect("chunks");
    assert!(
        last > (4 << 20) + 4096,
        "the last chunk must lie past the mapping"
    );
    env.start_daemon_with(
        |cmd| {
            cmd.env("EBB_TEST_PAUSE", "fill-written:300");
        },
        COMMAND_TIMEOUT,
    );
    // A writer with the first 4 MiB mapped shared and writable (mapping
    // them brings them back); its writes through the mapping raise no
    // FAN_MODIFY, only new times at the first store to a clean page.
    let mut writer = Stepper::start(
        "import mmap, os, sys\n\
         fd = os.open(sys.argv[1], os.O_RDWR)\n\
         m = mmap.mmap(fd, 4 << 20)\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         m[0:6] = b'racing'\n\
         print('done', flush=True)\n\
         sys.stdin.readline()\n\
         m.close(); os.close(fd)\n\
         print('done', flush=True)\n\
         sys.stdin.readline()",
        &[path.as_os_str()],
    );
    // A reader sets off the fill of the last chunk; once that fill has
    // written its chunk, and before it puts the mtime back, the writer
    // writes.
    let inside_last = (last / 4096 + 1) * 4096;
    assert!(inside_last < a.len() as u64, "a page inside the last chunk");
    let reader = std::thread::spawn({
        let path = path.clone();
        move || {
            python(
                "import os, sys\n\
                 fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                 os.pread(fd, 4096, int(sys.argv[2]))",
                &[path.as_os_str(), OsStr::new(&inside_last.to_string())],
            )
        }
    });
    wait_for_log(
        &env,
        &format!("fill-written: chunk at {last} written; pausing"),
    );
    writer.step();
    reader.join().expect("reader").ok();
    // The mapping goes; the file is brought back whole.
    writer.step();
    drop(writer);
    let mut want = a.clone();
    want[0..6].copy_from_slice(b"racing");
    assert_reads(&path, &want);
    release_is_refused(&env, &path, &want);
    // The writer's new mtime was not lost to the fill's put-back.
    assert!(
        std::fs::metadata(&path).unwrap().modified().unwrap() > archived_mtime,
        "the mtime is still the archived one:\n{}",
        env.log()
    );
}

/// `ebb status` while the daemon fills a file: a fill's write moves the
/// mtime until the worker puts it back, and status must not report that
/// moment as a user's change. 5 rounds of a 48 MiB file read by `cat`
/// while status runs again and again (the old status said "modified" in
/// the first or second round).
#[test]
fn status_during_fills_never_reports_a_change() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(48 << 20, 82);
    let (path, _) = env.released_file("filling.bin", &data);
    env.start_daemon();
    for round in 0..5 {
        let mut reader = Reader::cat(&env, &path);
        let mut looks = 0;
        while reader.running() {
            let st = env.status(&path);
            assert_eq!(
                st["modified"], false,
                "round {round}, look {looks}: a fill is not a change: {st}"
            );
            looks += 1;
        }
        reader.finish(&data);
        eprintln!("round {round}: {looks} looks while filling");
        assert_eq!(env.status(&path)["state"], "archived");
        assert_eq!(env.release(&path)["result"], "released");
    }
}

#[test]
fn a_fill_that_fails_for_want_of_space_leaves_the_file_unchanged_in_ebbs_eyes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(24 << 20, 80);
    let (path, _) = env.released_file("big.bin", &data);
    env.start_daemon();
    // Nothing left on the filesystem for the fill to write.
    let hog = env.path("hog");
    let run = sh(
        "dd if=/dev/zero of=\"$1\" bs=1M 2>&1; sync",
        &[hog.as_os_str()],
    );
    assert!(
        run.out().contains("No space left"),
        "the disk did not fill: {run:?}"
    );
    let refused = cat(&path);
    assert!(
        !refused.success() && refused.stderr.contains("Input/output error"),
        "a fill with no space must fail the read with EIO: {refused:?}"
    );
    let status = env.status(&path);
    assert_eq!(
        status["modified"], false,
        "a failed fill is not a change: {status}"
    );
    std::fs::remove_file(&hog).unwrap();
    sh("sync", &[]).ok();
    assert_reads(&path, &data);
    assert_eq!(env.status(&path)["state"], "archived");
}

/// Hold a fill of the last chunk of a released 8 MiB `log`, set off by a
/// reader of its tail, for 1.5 s after the worker read the file's size;
/// `cut` (python, run at once in a process started beforehand, `log` in
/// `sys.argv[1]`) races it. Checks `cut` landed while the fill was held
/// and that `log` then reads as `want`.
fn cut_racing_a_fill(cut: &str, want: &[u8]) {
    let env = Env::new(300);
    let data = seeded_bytes(8 << 20, 85);
    let (path, _) = env.released_file("log", &data);
    let last = *chunk_starts(&data).last().expect("chunks");
    let held = format!("fill-sized: chunk at {last} sized");
    env.start_daemon_with(
        |cmd| {
            cmd.env(
                "EBB_TEST_PAUSE",
                format!("fill-sized:1500:chunk at {last} sized"),
            );
        },
        COMMAND_TIMEOUT,
    );
    // The head on disk, so the cut's own event (the page at its new end,
    // 0) needs no fill.
    python(
        "import os, sys\nos.pread(os.open(sys.argv[1], os.O_RDONLY), 4096, 0)",
        &[path.as_os_str()],
    )
    .ok();
    let mut cutter = Stepper::start(
        &format!(
            "import datetime, os, sys\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             print(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'), flush=True)\n\
             {cut}\n\
             print('done', flush=True)\n\
             sys.stdin.readline()"
        ),
        &[path.as_os_str()],
    );
    let inside_last = (last / 4096 + 1) * 4096;
    let reader = std::thread::spawn({
        let path = path.clone();
        move || {
            python(
                "import os, sys\nos.pread(os.open(sys.argv[1], os.O_RDONLY), 4096, int(sys.argv[2]))",
                &[path.as_os_str(), OsStr::new(&inside_last.to_string())],
            )
        }
    });
    wait_for_log(&env, &held);
    let cut_at = cutter.step_said();
    reader.join().expect("reader").ok();
    let went_on = env
        .log()
        .lines()
        .find(|l| l.contains(&format!("{held}; going on")))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .expect("the held fill went on");
    assert!(
        cut_at < went_on,
        "the cut ({cut_at}) landed after the fill went on ({went_on}): the test proves nothing"
    );
    assert_reads(&path, want);
}

#[test]
fn a_truncate_racing_a_fill_is_not_undone() {
    ebb::require_root!();
    cut_racing_a_fill("os.truncate(sys.argv[1], 0)", b"");
}

/// `: > log` raises no pre-content event that could wait for the fill (an
/// open with `O_TRUNC`), and a line logged right after it must be all the
/// file holds.
#[test]
fn an_open_with_o_trunc_racing_a_fill_is_not_undone() {
    ebb::require_root!();
    cut_racing_a_fill(
        "os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC))\n\
         with open(sys.argv[1], 'ab') as f: f.write(b'new line\\n')",
        b"new line\n",
    );
}

/// Cut and written anew through a write whose event names another range
/// (`pwrite` on an `O_APPEND` fd appends wherever it says it writes): the
/// new bytes land where the held fill would write, and must stay.
#[test]
fn bytes_written_anew_after_a_cut_are_not_filled_over() {
    ebb::require_root!();
    let anew: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    cut_racing_a_fill(
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC | os.O_APPEND)\n\
         new = bytes(i % 251 for i in range(8 << 20))\n\
         assert os.pwrite(fd, new, 1 << 40) == len(new)",
        &anew,
    );
}

/// The stub mark (`trusted.ebb.stub`) of `path`, as python reads it;
/// `None` when the file has none.
fn stub_mark(path: &Path) -> Option<Value> {
    let run = python(
        "import os, sys\ntry:\n    sys.stdout.buffer.write(os.getxattr(sys.argv[1], 'trusted.ebb.stub'))\nexcept OSError as e:\n    import errno\n    if e.errno != errno.ENODATA: raise\n",
        &[path.as_os_str()],
    )
    .ok();
    (!run.stdout.is_empty()).then(|| serde_json::from_slice(&run.stdout).expect("a JSON mark"))
}

/// Release marks a stub on disk; the mark goes once the file is all back,
/// through the daemon or `ebb restore` with none, and the file then counts
/// as archived (the ctime the removal moved is the one recorded).
#[test]
fn a_stub_is_marked_on_disk_until_it_is_all_back() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(2_500_000, 86);
    let (read_back, archived) = env.released_file("read.bin", &data);
    let (restored, _) = env.released_file("restored.bin", &data);
    let mark = stub_mark(&read_back).expect("a released file carries the mark");
    assert!(
        mark["hash"].as_str().is_some_and(|h| h.len() == 64),
        "{mark} ({archived})"
    );
    assert!(
        mark["tree"].as_str().is_some_and(|t| !t.is_empty()),
        "{mark}"
    );
    env.start_daemon();
    // Part of it: still a stub.
    let run = sh("head -c 4096 \"$1\" >/dev/null", &[read_back.as_os_str()]).ok();
    drop(run);
    assert!(stub_mark(&read_back).is_some(), "a partial file is a stub");
    assert_reads(&read_back, &data);
    assert!(
        stub_mark(&read_back).is_none(),
        "filled all the way: unmarked"
    );
    assert_eq!(env.status(&read_back)["state"], "archived");
    env.stop_daemons();
    run_dir().stop_keepers();
    let run = ebb([OsStr::new("restore"), restored.as_os_str()]).ok();
    drop(run);
    assert!(stub_mark(&restored).is_none(), "restored: unmarked");
    assert_eq!(env.status(&restored)["state"], "archived");
    assert_eq!(std::fs::read(&restored).unwrap(), data);
}

/// A stub whose catalog row is gone is refused with EIO, never read as the
/// zeros of its holes (the old daemon let it through: zeros).
#[test]
fn a_stub_the_catalog_does_not_hold_is_refused_not_zeros() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(1_000_000, 87);
    let (path, _) = env.released_file("orphan.bin", &data);
    let plain = env.path("plain.bin");
    write_file(&plain, b"not managed");
    sh(
        "sqlite3 \"$1\" \"DELETE FROM files WHERE path LIKE '%orphan.bin'\"",
        &[env.root.join(".ebb/catalog.db").as_os_str()],
    )
    .ok();
    env.start_daemon();
    for _ in 0..2 {
        let refused = cat(&path);
        assert!(
            !refused.success() && refused.stderr.contains("Input/output error"),
            "a stub nothing can serve must fail with EIO: exit {:?}, {} bytes, {}\n{}",
            refused.code,
            refused.stdout.len(),
            refused.stderr,
            env.log()
        );
        assert!(refused.stdout.is_empty(), "not one byte of it");
    }
    assert_reads(&plain, b"not managed");
    let log = env.log();
    assert_eq!(
        log.matches("a stub (tree").count(),
        1,
        "said once in the log:\n{log}"
    );
    assert!(stat_u64(&env.stats(), "unknown_stubs_refused") >= 2);
}

/// With the catalog gone, every command refuses in one line and none makes
/// a new one; the daemon still serves: stubs are refused (EIO), other
/// files read.
#[test]
fn a_tree_whose_catalog_is_missing_refuses_and_never_reads_zeros() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(800_000, 88);
    let (path, _) = env.released_file("stub.bin", &data);
    let plain = env.path("plain.bin");
    write_file(&plain, b"still here");
    env.stop_daemons();
    run_dir().stop_keepers();
    let state = env.root.join(".ebb");
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    for args in [
        &["status", "--json"][..],
        &["archive", "--json"][..],
        &["release", "--json"][..],
        &["restore", "--json"][..],
    ] {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.push(plain.as_os_str());
        let run = ebb(all).fails();
        let line = run.json1();
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("catalog") && error.contains("missing"),
            "{args:?}: {line}"
        );
        assert!(
            !state.join("catalog.db").exists(),
            "{args:?} made a new catalog"
        );
    }
    env.start_daemon();
    let refused = cat(&path);
    assert!(
        !refused.success() && refused.stderr.contains("Input/output error"),
        "exit {:?}, {} bytes, {}\n{}",
        refused.code,
        refused.stdout.len(),
        refused.stderr,
        env.log()
    );
    assert_reads(&plain, b"still here");
    assert!(
        env.log().contains("is missing"),
        "the log says why:\n{}",
        env.log()
    );
    assert!(!state.join("catalog.db").exists(), "the daemon made none");
}

/// Stop every daemon and keeper of `env`: nothing serves the tree, as
/// after a reboot before the daemon starts.
fn serve_nothing(env: &Env) {
    env.stop_daemons();
    run_dir().stop_keepers();
    assert!(env.keeper().is_none());
}

/// A released file truncated to nothing and grown back while nothing
/// served the tree holds zeros: no archived byte comes back into it (the
/// old daemon merged the archived bytes back into its holes).
#[test]
fn a_stub_cut_and_grown_back_unseen_gets_no_archived_bytes_back() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(3_000_000, 90);
    let (path, _) = env.released_file("cut.bin", &data);
    serve_nothing(&env);
    sh(
        "truncate -s 0 \"$1\" && truncate -s 3000000 \"$1\"",
        &[path.as_os_str()],
    )
    .ok();
    env.start_daemon();
    let read = cat(&path).ok();
    assert_eq!(read.stdout.len(), data.len());
    assert!(
        read.stdout.iter().all(|&b| b == 0),
        "archived bytes came back into a file cut while nothing served it"
    );
    assert_eq!(env.status(&path)["modified"], true);
    assert!(env.log().contains("changed while nothing served it"));
}

/// Zeros written into a released file while nothing served the tree stay
/// zeros (the old fill took zero bytes for holes and wrote the archived
/// bytes over them).
#[test]
fn zeros_written_into_a_stub_unseen_stay_zeros() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(2_000_000, 91);
    assert!(data[..65536].iter().any(|&b| b != 0));
    let (path, _) = env.released_file("zeroed.bin", &data);
    serve_nothing(&env);
    python(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nos.pwrite(fd, bytes(65536), 0)\nos.fsync(fd)",
        &[path.as_os_str()],
    )
    .ok();
    env.start_daemon();
    let read = cat(&path).ok();
    assert!(
        read.stdout[..65536].iter().all(|&b| b == 0),
        "the zeros written were taken for holes and filled"
    );
    assert_eq!(env.status(&path)["modified"], true);
}

/// A `touch` while the daemon is paused (the keeper holds the stubs'
/// writers off) is a change of times only: the file counts as modified and
/// still reads its archived bytes.
#[test]
fn a_touch_while_paused_keeps_the_bytes() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(2_000_000, 92);
    let (path, _) = env.released_file("touched.bin", &data);
    assert!(env.keeper().is_some(), "paused: the keeper holds the group");
    sh("touch -d '2001-01-01' \"$1\"", &[path.as_os_str()]).ok();
    env.start_daemon();
    assert_reads(&path, &data);
    assert_eq!(env.status(&path)["modified"], true);
}

/// A `chmod` of a partly filled file (its ctime moves, nothing else) while
/// the daemon is paused counts as a change; the bytes come back all the
/// same (the old catalog ignored the ctime of a file not all on disk).
#[test]
fn a_chmod_of_a_partial_file_counts_as_a_change() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(3_000_000, 93);
    let (path, _) = env.released_file("chmod.bin", &data);
    env.start_daemon();
    python(
        "import os, sys\nos.pread(os.open(sys.argv[1], os.O_RDONLY), 4096, 0)",
        &[path.as_os_str()],
    )
    .ok();
    assert_eq!(env.status(&path)["state"], "partial");
    env.stop_daemons();
    sh("chmod 600 \"$1\"", &[path.as_os_str()]).ok();
    assert_eq!(env.status(&path)["modified"], true, "a new ctime counts");
    env.start_daemon();
    assert_reads(&path, &data);
}

/// A power cut between a fill's write and its put-back of the mtime, with
/// the write's new mtime on disk: that is ebb's own doing (the catalog said
/// a fill was under way), so the file is filled as before, and reads its
/// archived bytes, not zeros.
#[test]
fn a_power_cut_before_a_fill_put_the_mtime_back_is_not_taken_for_a_change() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(3_000_000, 94);
    let (path, _) = env.released_file("cut-power.bin", &data);
    env.stop_daemons();
    env.start_daemon_with(
        |cmd| {
            cmd.env("EBB_TEST_PAUSE", "fill-written:5000");
        },
        COMMAND_TIMEOUT,
    );
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let reader = std::thread::spawn({
        let path = path.clone();
        move || {
            run_cmd(
                Command::new("timeout")
                    .arg("20")
                    .arg(PYTHON)
                    .args([
                        "-c",
                        "import os, sys\nos.pread(os.open(sys.argv[1], os.O_RDONLY), 4096, 0)",
                    ])
                    .arg(&path),
                COMMAND_TIMEOUT,
            )
        }
    });
    wait_for_log(&env, "fill-written: chunk at 0 written");
    let moved = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert_ne!(moved, before, "the fill's write moved the mtime");
    power_cut_after_the_log(&env);
    drop(reader.join());
    assert_ne!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before,
        "the moved mtime reached the disk"
    );
    env.start_daemon();
    assert_reads(&path, &data);
}

/// A write synced into a range the daemon just filled survives a power
/// cut: the fill's residency was durable before the writer was let
/// through (the old daemon's was not, and its next fill wrote the archived
/// bytes back over the synced zeros). The catalog's syncer is held 3 s, so
/// a daemon that let the writer through before it would be caught.
#[test]
fn a_synced_write_over_a_fresh_fill_survives_a_power_cut() {
    ebb::require_root!();
    let env = Env::new(300);
    let data = seeded_bytes(2_000_000, 95);
    assert!(data[..65536].iter().any(|&b| b != 0));
    let (path, _) = env.released_file("overwritten.bin", &data);
    env.start_daemon_with(
        |cmd| {
            cmd.env("EBB_TEST_PAUSE", "wal-sync:3000");
        },
        COMMAND_TIMEOUT,
    );
    python(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nos.pwrite(fd, bytes(65536), 0)\nos.fsync(fd)",
        &[path.as_os_str()],
    )
    .ok();
    power_cut(&env);
    env.start_daemon();
    let read = cat(&path).ok();
    assert_eq!(read.stdout.len(), data.len());
    assert!(
        read.stdout[..65536].iter().all(|&b| b == 0),
        "a synced write was undone by a fill after the power cut"
    );
    assert_same(&read.stdout[65536..], &data[65536..], "the rest");
}
