//! `ebb changed-ranges`: the ranges where a file differs from a reflink
//! clone of its earlier self, checked against the bytes, through the CLI.

use std::os::unix::fs::FileExt;
use std::process::Command;

use ebb::testing::LoopFs;

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
