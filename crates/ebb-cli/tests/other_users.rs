//! Other users on the machine cannot steer or read ebb: a `.ebb` a user
//! plants does not capture root's work, a tree's state is root's only, and
//! trees inside trees are refused. Each attack runs as a real unprivileged
//! uid (nobody, 65534) through `setpriv`.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// Let nobody reach the test filesystem (it lives in a 0700 temp dir).
fn open_the_way(env: &Env) {
    std::fs::set_permissions(env.fs.scratch(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the scratch directory to all");
}

/// A tree nobody can reach with a world-writable `shared/` in it (mode
/// 1777, as `/tmp`), the way in opened to all.
fn shared_dir(env: &Env) -> std::path::PathBuf {
    open_the_way(env);
    let shared = env.path("shared");
    std::fs::create_dir(&shared).expect("mkdir shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    shared
}

fn chunk_count(store: &Path) -> usize {
    walk(store)
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .count()
}

fn walk(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.into_iter()
}

/// `ebb ARGS` held 3 s after it checked the path it names, and `swap`
/// run by nobody (`$1`: `shared`) meanwhile: how it ended, what it printed
/// on stdout, and on stderr after the pause.
fn with_a_swap_after_the_check(
    args: &[&OsStr],
    swap: &str,
    shared: &Path,
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = std::process::Command::new(EBB);
    with_run_dir(&mut cmd)
        .args(args)
        .env("EBB_TEST_PAUSE", "path-checked:3000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("ebb");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("path-checked") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("read");
        assert!(n > 0, "ebb {args:?} ended before its check");
    }
    let swapped = as_nobody(&format!("{swap} && echo swapped"), &[shared.as_os_str()]);
    assert!(swapped.out().contains("swapped"), "{swapped:?}");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut said).expect("read");
    let out = child.wait_with_output().expect("ebb");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        said,
    )
}

/// A user who can write a directory inside the tree plants
/// `shared/.ebb/config.json` naming a store of theirs: root's routine
/// `ebb archive -r ROOT` still puts `shared/`'s files in the real tree's
/// catalog and store, and says the planted one is not a tree. (The old
/// lookup took the nearest `.ebb/config.json`: the files went to the
/// user's store and catalog.)
#[test]
fn a_planted_state_dir_does_not_capture_roots_work() {
    ebb::require_root!();
    let env = Env::new(300);
    let shared = shared_dir(&env);
    // A store the user owns, in the shape ebb makes (a second tree's).
    let theirs = env.fs.scratch().join("theirs");
    let their_store = env.fs.scratch().join("their-store");
    std::fs::create_dir(&theirs).unwrap();
    ebb([
        OsStr::new("init"),
        theirs.as_os_str(),
        OsStr::new("--store"),
        their_store.as_os_str(),
    ])
    .ok();
    sh("chown -R 65534:65534 \"$1\"", &[their_store.as_os_str()]).ok();
    let config = std::fs::read_to_string(theirs.join(".ebb/config.json")).unwrap();
    let planted = as_nobody(
        "mkdir \"$1/.ebb\" && printf '%s' \"$2\" > \"$1/.ebb/config.json\" && echo planted",
        &[shared.as_os_str(), OsStr::new(&config)],
    );
    assert!(planted.out().contains("planted"), "{planted:?}");
    let data = seeded_bytes(700_000, 120);
    let victim = shared.join("victim.bin");
    write_file(&victim, &data);

    let run = ebb([
        OsStr::new("archive"),
        OsStr::new("-r"),
        OsStr::new("--json"),
        env.root.as_os_str(),
    ])
    .ok();
    assert!(
        run.stderr.contains("not a state directory ebb made"),
        "the planted one is named: {}",
        run.stderr
    );
    assert_eq!(chunk_count(&their_store), 0, "nothing went to their store");
    assert!(
        !shared.join(".ebb/catalog.db").exists(),
        "no catalog made in the planted directory"
    );
    let st = env.status(&victim);
    assert_eq!(st["managed"], true, "{st}");
    assert!(chunk_count(&env.store) > 0);
    // And its release is the real tree's: served, exact.
    env.start_daemon();
    assert_eq!(env.release(&victim)["result"], "released");
    assert_reads(&victim, &data);
}

/// A tree's state names every path in it: `.ebb` is root's only, from
/// `init` on, and a tree made before that is tightened by the next
/// command (the old `.ebb` was 0755, its catalog 0644: any user listed
/// every path, 0700 directories included).
#[test]
fn a_trees_state_is_roots_only() {
    ebb::require_root!();
    let env = Env::new(300);
    open_the_way(&env);
    let (path, _) = env.released_file("secret/plan.bin", &seeded_bytes(100_000, 121));
    std::fs::set_permissions(env.path("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = env.root.join(".ebb");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    let peek = |what: &str| {
        let run = as_nobody(
            "cat \"$1/catalog.db\" \"$1/catalog.db-wal\" 2>&1 | grep -c plan.bin; ls \"$1\" 2>&1",
            &[state.as_os_str()],
        );
        assert!(
            run.out().contains("Permission denied"),
            "{what}: nobody read the tree's state: {}",
            run.out()
        );
    };
    peek("after init");
    // An older tree's state directory, open to all, is closed again.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.status(&path);
    assert_eq!(mode(&state), 0o700, "tightened by the next command");
    peek("after the next command");
}

/// A tree inside another is refused in one line, naming both.
#[test]
fn a_tree_inside_a_tree_is_refused() {
    ebb::require_root!();
    let env = Env::bare(300);
    let inner = env.path("inner");
    std::fs::create_dir(&inner).unwrap();
    let inner_store = env.fs.scratch().join("inner-store");
    ebb([
        OsStr::new("init"),
        inner.as_os_str(),
        OsStr::new("--store"),
        inner_store.as_os_str(),
    ])
    .ok();
    // The outer one: `init` does not look below the directory it is given.
    env.init();
    let file = inner.join("f.bin");
    write_file(&file, b"inside two trees");
    let run = ebb([OsStr::new("status"), OsStr::new("--json"), file.as_os_str()]).fails();
    let error = run.json1()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("inside another") && error.contains(inner.to_str().unwrap()),
        "{error}"
    );
}

/// A user swaps a directory on the way to a file root is archiving for a
/// symlink to a directory of root's, between ebb's check of the path and
/// its open: the open is refused, nothing of root's is archived. (The old
/// code opened by path, following the symlink: root's file was archived
/// in place of the user's, and a release would punch it.) The window is
/// held open with a test pause after the check.
#[test]
fn a_symlink_swapped_in_after_the_check_is_not_followed() {
    ebb::require_root!();
    let env = Env::new(300);
    let shared = shared_dir(&env);
    let private = env.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    write_file(
        &private.join("f"),
        b"root's own, not to be archived by a trick",
    );
    let made = as_nobody(
        "mkdir \"$1/d\" && echo mine > \"$1/d/f\" && echo made",
        &[shared.as_os_str()],
    );
    assert!(made.out().contains("made"), "{made:?}");
    let target = shared.join("d/f");
    let (_, said, _) = with_a_swap_after_the_check(
        &[
            OsStr::new("archive"),
            OsStr::new("--json"),
            target.as_os_str(),
        ],
        "mv \"$1/d\" \"$1/d.old\" && ln -s ../private \"$1/d\"",
        &shared,
    );
    assert!(
        said.contains("symlink or a mount on the way"),
        "the swapped path was followed: {said}"
    );
    assert_eq!(env.status(&private.join("f"))["managed"], false);
}

/// The source of a snapshot root asks for, swapped by its owner for a
/// symlink to a file they cannot read (0644, in a 0700 directory) after
/// the command resolved it: refused, no clone made. (The daemon used to
/// look the path up again, following the symlink: root's file was cloned,
/// mode and all, into the user's directory.) The window is held open with
/// a test pause after the command resolved the path.
#[test]
fn a_snapshot_source_swapped_for_a_symlink_is_not_followed() {
    ebb::require_root!();
    let env = Env::new(300);
    env.start_daemon();
    let shared = shared_dir(&env);
    let private = env.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = b"root's own, readable by mode but not by way";
    write_file(&private.join("f"), secret);
    std::fs::set_permissions(private.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let made = as_nobody(
        "mkdir \"$1/d\" && echo mine > \"$1/d/f\" && echo made",
        &[shared.as_os_str()],
    );
    assert!(made.out().contains("made"), "{made:?}");
    let clone = shared.join("clone");
    let (status, _, said) = with_a_swap_after_the_check(
        &[
            OsStr::new("snapshot"),
            shared.join("d/f").as_os_str(),
            clone.as_os_str(),
        ],
        "mv \"$1/d\" \"$1/d.old\" && ln -s ../private \"$1/d\"",
        &shared,
    );
    assert!(!status.success(), "the snapshot was made: {said}");
    assert!(
        said.contains("symlink or a mount on the way"),
        "refused for another reason: {said}"
    );
    let read = as_nobody("cat \"$1\" 2>/dev/null; true", &[clone.as_os_str()]);
    assert!(
        !read.out().contains("readable by mode"),
        "the user read root's file through the clone"
    );
    assert!(!clone.exists(), "a clone was left");
}

/// A file its owner replaces (a rename over it, no symlink anywhere)
/// between ebb's check of the path and its open: the open is refused as
/// another file than the one checked, and nothing is archived. (Before,
/// whatever file stood at the path when it was opened was archived.)
#[test]
fn a_file_replaced_after_the_check_is_refused() {
    ebb::require_root!();
    let env = Env::new(300);
    let shared = shared_dir(&env);
    let made = as_nobody(
        "echo checked > \"$1/f\" && echo other > \"$1/g\" && echo made",
        &[shared.as_os_str()],
    );
    assert!(made.out().contains("made"), "{made:?}");
    let target = shared.join("f");
    let (_, said, _) = with_a_swap_after_the_check(
        &[
            OsStr::new("archive"),
            OsStr::new("--json"),
            target.as_os_str(),
        ],
        "mv \"$1/g\" \"$1/f\"",
        &shared,
    );
    assert!(
        said.contains("another file now than when it was checked"),
        "the replacement was archived: {said}"
    );
    assert_eq!(env.status(&target)["managed"], false);
}

/// `ebb serve` on loopback: another local user can neither read its secret
/// (root's 0600 file) nor stream the tree's changes without it: 401, with
/// no secret and with a wrong one. (The server used to stream every change
/// to any local user.)
#[test]
fn a_local_user_cannot_stream_a_served_trees_changes() {
    ebb::require_root!();
    let env = Env::new(300);
    open_the_way(&env);
    env.start_daemon();
    // As root's routine would start it: no secret, no --no-auth.
    ebb([
        OsStr::new("serve"),
        env.root.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
    ])
    .fails()
    .says("--token-file");
    let secret = env.fs.scratch().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut cmd = ebb_command();
    cmd.arg("serve")
        .arg(&env.root)
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(&secret)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut server = KillOnDrop::spawn(&mut cmd);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("ebb serve's first line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("a url")
        .to_string();
    let read = as_nobody("cat \"$1\" 2>&1; true", &[secret.as_os_str()]);
    assert!(
        !read.out().contains("0123456789"),
        "the secret was read: {read:?}"
    );
    let watched = format!("{url}/v1/watch?path={}", env.root.display());
    for auth in ["", "Bearer wrong-wrong-wrong-wrong"] {
        let asked = as_nobody(
            "python3 -c 'import sys, urllib.request as u\nr = u.Request(sys.argv[1])\nif sys.argv[2]: r.add_header(\"Authorization\", sys.argv[2])\ntry:\n    u.urlopen(r, timeout=20); print(\"streamed\")\nexcept u.HTTPError as e: print(\"status\", e.code)' \"$1\" \"$2\"",
            &[OsStr::new(&watched), OsStr::new(auth)],
        );
        assert!(asked.out().contains("status 401"), "{auth:?}: {asked:?}");
    }
}
