//! End to end: bad input gets a one-line error, a non-zero exit, and
//! changes nothing; directories are walked with -r.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

const MIB: usize = 1 << 20;

fn one_line(run: &Run) {
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: not one line: {:?}",
        run.cmd,
        run.stderr
    );
    assert!(lines[0].starts_with("ebb: error: "), "{:?}", lines[0]);
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A managed tree at `<mount>/tree`, with room beside it on the same
/// filesystem.
fn tree_env() -> Env {
    let mut env = Env::bare(300);
    env.root = env.fs.path().join("tree");
    std::fs::create_dir(&env.root).expect("mkdir tree");
    ebb([
        os("init"),
        env.root.as_os_str(),
        os("--store"),
        env.store.as_os_str(),
    ])
    .ok();
    env
}

/// 12a. Paths outside any managed tree.
#[test]
fn path_outside_a_managed_tree() {
    ebb::require_root!();
    let env = tree_env();
    let outside = env.fs.path().join("elsewhere/file.bin");
    write_file(&outside, &random_bytes(4096));
    for op in ["archive", "release", "restore", "status"] {
        let run = ebb([os(op), outside.as_os_str()]).fails().says("ebb init");
        one_line(&run);
    }
    // Outside the root of a tree that is found (a path given through `..`).
    let sneaky = env.root.join("../elsewhere/file.bin");
    ebb([os("archive"), sneaky.as_os_str()])
        .fails()
        .says("ebb init");
    assert!(env.chunk_files().is_empty(), "nothing archived");
}

/// 12b. Missing paths, directories without -r, ebb's own state.
#[test]
fn missing_path_directory_and_own_state() {
    ebb::require_root!();
    let env = tree_env();
    let missing = env.root.join("nope.bin");
    for op in ["archive", "release", "restore", "status"] {
        let run = ebb([os(op), missing.as_os_str()]).fails();
        one_line(&run);
        assert!(
            run.stderr.contains("nope.bin"),
            "names the path: {}",
            run.stderr
        );
    }
    let dir = env.root.join("dir");
    write_file(&dir.join("inner.bin"), &random_bytes(1000));
    for op in ["archive", "release", "restore", "status"] {
        let run = ebb([os(op), dir.as_os_str()]).fails().says("use -r");
        one_line(&run);
    }
    assert_eq!(env.status(&dir.join("inner.bin"))["managed"], false);

    let catalog = env.root.join(".ebb/catalog.db");
    for op in ["archive", "release"] {
        let run = ebb([os(op), catalog.as_os_str()]).fails().says("own state");
        one_line(&run);
    }
    // A failure among good paths: the others are done, exit status 1.
    let good = env.root.join("good.bin");
    write_file(&good, &random_bytes(2000));
    let run = ebb([
        os("archive"),
        os("--json"),
        missing.as_os_str(),
        good.as_os_str(),
    ])
    .fails();
    let lines = run.json();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope.bin") && e.contains("No such file")),
        "{lines:?}"
    );
    assert_eq!(lines[1]["result"], "archived", "{lines:?}");
    assert_eq!(env.status(&good)["state"], "archived");
}

/// 12b'. With --json, a per-file error names the path it is about, also
///       when the path does not exist.
#[test]
fn json_error_names_a_missing_path() {
    ebb::require_root!();
    let env = tree_env();
    let missing = env.root.join("nope.bin");
    let line = ebb([os("status"), os("--json"), missing.as_os_str()])
        .fails()
        .json1();
    assert!(line["error"].is_string(), "{line}");
    assert_eq!(line["path"], missing.display().to_string(), "{line}");
}

/// 12c. -r over a tree: nested files, never .ebb; errors skipped.
#[test]
fn recursive_over_a_directory_tree() {
    ebb::require_root!();
    let env = tree_env();
    let files = ["top.bin", "a/one.bin", "a/b/two.bin", "a/b/c/three.bin"];
    let mut contents = Vec::new();
    for (i, rel) in files.iter().enumerate() {
        let data = random_bytes(100_000 * (i + 1));
        write_file(&env.root.join(rel), &data);
        contents.push(data);
    }
    std::fs::create_dir_all(env.root.join("empty/dir")).unwrap();

    let lines = ebb([os("archive"), os("-r"), os("--json"), env.root.as_os_str()])
        .ok()
        .json();
    assert_eq!(lines.len(), files.len(), "{lines:?}");
    for l in &lines {
        assert_eq!(l["result"], "archived", "{l}");
        assert!(!l["path"].as_str().unwrap().contains(".ebb"), "{l}");
    }

    // One file not archived: it fails, the others are released.
    let late = env.root.join("a/b/late.bin");
    write_file(&late, &random_bytes(5000));
    env.start_daemon();
    let run = ebb([os("release"), os("-r"), os("--json"), env.root.as_os_str()]).fails();
    let lines = run.json();
    assert_eq!(lines.len(), files.len() + 1, "{lines:?}");
    let errors: Vec<_> = lines.iter().filter(|l| l["error"].is_string()).collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert_eq!(errors[0]["path"], late.display().to_string());
    assert!(errors[0]["error"]
        .as_str()
        .unwrap()
        .contains("not archived"));
    let released = lines.iter().filter(|l| l["result"] == "released").count();
    assert_eq!(released, files.len(), "{lines:?}");
    std::fs::remove_file(&late).unwrap();

    let statuses = ebb([os("status"), os("-r"), os("--json"), env.root.as_os_str()])
        .ok()
        .json();
    assert_eq!(statuses.len(), files.len(), "{statuses:?}");
    for s in &statuses {
        assert_eq!(s["state"], "released", "{s}");
        assert_eq!(s["resident_bytes"], 0, "{s}");
        assert!(!s["path"].as_str().unwrap().contains(".ebb"), "{s}");
    }
    // Human output of status -r: one line per file.
    let human = ebb([os("status"), os("-r"), env.root.as_os_str()]).ok();
    assert_eq!(human.out().lines().count(), files.len(), "{}", human.out());

    // Read back through the daemon, then restore -r has nothing left to do.
    for (rel, data) in files.iter().zip(&contents) {
        assert_reads(&env.root.join(rel), data);
    }
    let lines = ebb([os("restore"), os("-r"), os("--json"), env.root.as_os_str()])
        .ok()
        .json();
    assert_eq!(lines.len(), files.len());
    for l in &lines {
        assert_eq!(l["result"], "unchanged", "{l}");
    }
    // A subdirectory alone.
    let sub = ebb([
        os("release"),
        os("-r"),
        os("--json"),
        env.root.join("a/b").as_os_str(),
    ])
    .ok()
    .json();
    assert_eq!(sub.len(), 2, "{sub:?}");
    assert_eq!(env.status(&env.root.join("top.bin"))["state"], "archived");
    assert_eq!(
        env.status(&env.root.join("a/b/c/three.bin"))["state"],
        "released"
    );
}

/// 12d. A second daemon on the same root is refused with the first's pid.
#[test]
fn second_daemon_is_refused() {
    ebb::require_root!();
    let env = tree_env();
    let data = random_bytes(MIB);
    let (path, _) = env.released_file("served.bin", &data);
    let pid = env.start_daemon();
    let run = ebb([os("daemon"), env.root.as_os_str(), os("--background")])
        .fails()
        .says(&pid.to_string());
    one_line(&run);
    let mut fg = ebb_command();
    fg.arg("daemon")
        .arg(&env.root)
        .stdin(std::process::Stdio::null());
    let run = run_cmd(&mut fg, std::time::Duration::from_secs(30))
        .fails()
        .says(&pid.to_string());
    assert!(run.stderr.contains(&format!("pid {pid}")), "{}", run.stderr);
    // The first one still serves.
    assert!(alive(pid));
    assert_reads(&path, &data);
    assert_eq!(
        std::fs::read_to_string(env.root.join(".ebb/daemon.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
}

/// 12e. A missing store: archive, restore, release and the daemon say so
///      and change nothing; with the store back, all works.
#[test]
fn missing_store() {
    ebb::require_root!();
    let env = tree_env();
    let data = random_bytes(2 * MIB);
    let (released, _) = env.released_file("released.bin", &data);
    let archived = env.root.join("archived.bin");
    write_file(&archived, &data);
    assert_eq!(env.archive(&archived)["result"], "archived");
    let plain = env.root.join("plain.bin");
    write_file(&plain, &data);

    let moved = env.fs.scratch().join("store.moved");
    std::fs::rename(&env.store, &moved).unwrap();
    let store = env.store.display().to_string();

    let run = ebb([os("archive"), plain.as_os_str()]).fails().says(&store);
    one_line(&run);
    assert!(!env.store.exists(), "archive re-created the store");
    assert_eq!(env.status(&plain)["managed"], false);

    let run = ebb([os("release"), archived.as_os_str()])
        .fails()
        .says(&store);
    one_line(&run);
    assert_eq!(env.status(&archived)["state"], "archived");
    assert_reads(&archived, &data);

    let run = ebb([os("restore"), released.as_os_str()])
        .fails()
        .says(&store);
    one_line(&run);
    assert_eq!(env.status(&released)["state"], "released");

    let run = ebb([os("daemon"), env.root.as_os_str(), os("--background")])
        .fails()
        .says(&store);
    one_line(&run);
    let mut fg = ebb_command();
    fg.arg("daemon")
        .arg(&env.root)
        .stdin(std::process::Stdio::null());
    run_cmd(&mut fg, std::time::Duration::from_secs(30))
        .fails()
        .says(&store);
    assert!(!env.store.exists(), "the daemon re-created the store");
    assert!(
        !env.root.join(".ebb/daemon.sock").exists(),
        "a failed daemon left its socket"
    );

    // Status needs no store.
    assert_eq!(env.status(&released)["state"], "released");

    // Store back: everything works, nothing was lost.
    std::fs::rename(&moved, &env.store).unwrap();
    env.start_daemon();
    assert_reads(&released, &data);
    assert_eq!(env.release(&archived)["result"], "released");
    assert_reads(&archived, &data);
    assert_eq!(env.archive(&plain)["result"], "archived");
}

/// 12e'. The store goes away while a daemon serves: readers get EIO, and
///       the right bytes once it is back.
#[test]
fn store_offline_under_a_running_daemon() {
    ebb::require_root!();
    let env = tree_env();
    let data = random_bytes(2 * MIB);
    let (path, _) = env.released_file("offline.bin", &data);
    env.start_daemon();
    let moved = env.fs.scratch().join("store.moved");
    std::fs::rename(&env.store, &moved).unwrap();
    let run = cat(&path);
    assert!(!run.success(), "read succeeded with the store gone");
    assert!(run.stderr.contains("Input/output error"), "{}", run.stderr);
    assert_same(&run.stdout, &data[..run.stdout.len()], "before EIO");
    assert!(
        env.log().contains(&path.display().to_string()),
        "{}",
        env.log()
    );
    std::fs::rename(&moved, &env.store).unwrap();
    assert_reads(&path, &data);
}

/// 12f. `ebb init` twice, a store inside the tree, a root that is not a
///      directory: refused, nothing changed.
#[test]
fn init_refusals() {
    ebb::require_root!();
    let env = tree_env();
    let config = std::fs::read(env.root.join(".ebb/config.json")).unwrap();
    let other_store = env.fs.scratch().join("other-store");
    let run = ebb([
        os("init"),
        env.root.as_os_str(),
        os("--store"),
        other_store.as_os_str(),
    ])
    .fails()
    .says("already managed");
    one_line(&run);
    assert_eq!(
        std::fs::read(env.root.join(".ebb/config.json")).unwrap(),
        config
    );
    assert!(!other_store.exists());
    // A directory inside a managed tree.
    let inner = env.root.join("inner");
    std::fs::create_dir(&inner).unwrap();
    ebb([
        os("init"),
        inner.as_os_str(),
        os("--store"),
        other_store.as_os_str(),
    ])
    .fails()
    .says("already managed");
    assert!(!inner.join(".ebb").exists());

    let fresh = env.fs.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let inside = fresh.join("store");
    let run = ebb([
        os("init"),
        fresh.as_os_str(),
        os("--store"),
        inside.as_os_str(),
    ])
    .fails()
    .says("inside");
    one_line(&run);
    assert!(!fresh.join(".ebb").exists());
    assert!(!inside.exists());

    let file = env.fs.path().join("a-file");
    write_file(&file, b"x");
    ebb([
        os("init"),
        file.as_os_str(),
        os("--store"),
        other_store.as_os_str(),
    ])
    .fails()
    .says("not a directory");
    ebb([
        os("init"),
        env.fs.path().join("no-such-dir").as_os_str(),
        os("--store"),
        other_store.as_os_str(),
    ])
    .fails()
    .says("no-such-dir");
    assert!(!other_store.exists());
}

fn assert_store_inside_refused(root: &Path, store: &Path) {
    let run = ebb([
        os("init"),
        root.as_os_str(),
        os("--store"),
        store.as_os_str(),
    ]);
    let stored = std::fs::canonicalize(root)
        .expect("canonicalize")
        .join("store")
        .exists();
    assert!(
        run.code == Some(1) && !stored,
        "ebb init {} --store {} was not refused (exit {:?}, store made inside: {stored})\n{}{}",
        root.display(),
        store.display(),
        run.code,
        run.out(),
        run.stderr
    );
}

/// 12f'. A store inside the tree is refused however the path is spelled.
#[test]
fn init_store_inside_the_tree_spelled_differently() {
    ebb::require_root!();
    let env = Env::bare(300);
    let t1 = env.fs.path().join("t1");
    std::fs::create_dir_all(&t1).unwrap();
    std::fs::create_dir_all(env.fs.path().join("x")).unwrap();
    assert_store_inside_refused(&t1, &env.fs.path().join("x/../t1/store"));

    let t2 = env.fs.path().join("t2");
    std::fs::create_dir(&t2).unwrap();
    let link = env.fs.path().join("link");
    std::os::unix::fs::symlink(&t2, &link).unwrap();
    assert_store_inside_refused(&link, &link.join("store"));
}
