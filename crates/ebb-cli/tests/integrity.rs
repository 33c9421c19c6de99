//! Never lost, never wrong bytes: what the store holds is checked before
//! it is trusted, and a power cut (an XFS shut down without flushing its
//! log, `xfs_io -x -c shutdown`) leaves every released file reading its
//! exact archived bytes, or plainly resident and exact.

mod common;

use std::ffi::OsStr;
use std::path::Path;
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
    let keeper = env.keeper();
    run_cmd(
        Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
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
