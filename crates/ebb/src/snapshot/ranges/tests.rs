use super::*;
use crate::testing::{FsKind, LoopFs};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::FileExt;

fn extent(logical: u64, physical: u64, length: u64) -> Extent {
    Extent {
        logical,
        physical,
        length,
        flags: 0,
    }
}

#[test]
fn maps_that_agree_give_nothing_and_every_difference_is_reported() {
    let base = [extent(0, 1000, 100), extent(200, 5000, 100)];
    assert!(diff_maps(&base, 300, &base, 300).is_empty());
    // Rewritten middle of the first extent, a hole filled, the file grown.
    let file = [
        extent(0, 1000, 40),
        extent(40, 9000, 20),
        extent(60, 1060, 40),
        extent(120, 7000, 10),
        extent(200, 5000, 100),
    ];
    assert_eq!(
        diff_maps(&base, 300, &file, 350),
        vec![
            Range { start: 40, end: 60 },
            Range {
                start: 120,
                end: 130
            },
            Range {
                start: 300,
                end: 350
            }
        ]
    );
    // A cut: everything past the shorter length differs.
    assert_eq!(
        diff_maps(&base, 300, &base[..1], 100),
        vec![Range {
            start: 100,
            end: 300
        }]
    );
    // Holes and unwritten extents both read as zeros.
    let unwritten = [Extent {
        flags: EXTENT_UNWRITTEN,
        ..extent(100, 3000, 100)
    }];
    assert_eq!(
        diff_maps(&[], 200, &unwritten, 200),
        vec![Range { start: 0, end: 0 }; 0]
    );
}

/// Against the truth: random writes, punches and truncates on a clone's
/// source, then every byte that differs must lie in a reported range.
#[test]
fn changed_ranges_cover_every_byte_that_differs() {
    crate::require_root!();
    for kind in [FsKind::Xfs, FsKind::Btrfs] {
        let fs = LoopFs::new(kind, 400).expect("loop fs");
        let path = fs.path().join("vm.img");
        let snap = fs.path().join("vm.img@mon");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut data = vec![0u8; 16 << 20];
        rng.fill(&mut data[..]);
        std::fs::write(&path, &data).expect("write");
        let status = std::process::Command::new("cp")
            .arg("--reflink=always")
            .arg(&path)
            .arg(&snap)
            .status()
            .expect("cp");
        assert!(status.success(), "{kind:?}: reflink copy");
        assert!(
            changed_ranges(&snap, &path).expect("ranges").is_empty(),
            "{kind:?}: a fresh clone differs nowhere"
        );

        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for _ in 0..20 {
            let off = rng.gen_range(0..(16u64 << 20) - 70_000);
            let len = rng.gen_range(1..65_536);
            file.write_all_at(&vec![rng.gen::<u8>() | 1; len], off)
                .expect("write");
        }
        crate::sys::file::punch_hole(file.as_fd(), 3 << 20, 100_000).expect("punch");
        file.set_len(14 << 20).expect("cut");
        file.set_len(15 << 20).expect("grow");
        drop(file);

        let ranges = changed_ranges(&snap, &path).expect("ranges");
        let old = std::fs::read(&snap).expect("read snapshot");
        let new = std::fs::read(&path).expect("read file");
        let covered = |at: u64| ranges.iter().any(|r| r.start <= at && at < r.end);
        for at in 0..old.len().max(new.len()) {
            if old.get(at) != new.get(at) {
                assert!(
                    covered(at as u64),
                    "{kind:?}: byte {at} differs but no range covers it: {ranges:?}"
                );
            }
        }
        let reported: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(
            reported < 6 << 20,
            "{kind:?}: {reported} bytes reported for ~2 MiB of changes: {ranges:?}"
        );
    }
}
