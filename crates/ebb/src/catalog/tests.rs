use super::*;

fn identity(n: u8) -> Identity {
    Identity {
        handle: FileHandle {
            handle_type: 1,
            bytes: vec![n; 8],
        },
        ino: u64::from(n),
        generation: 7,
    }
}

fn stat(size: u64, t: i64) -> StatSnap {
    StatSnap {
        size,
        mtime: Timestamp { sec: t, nsec: 1 },
        ctime: Timestamp { sec: t, nsec: 2 },
    }
}

fn manifest(n: usize) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            offset: i as u64 * 100,
            len: 100,
            hash: ChunkHash([i as u8; 32]),
        })
        .collect()
}

#[test]
fn archive_then_release_then_populate_derives_each_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cat = Catalog::create(&dir.path().join("c.db")).expect("open");
    let st = stat(300, 10);
    let id = cat
        .record_archive(&identity(1), Path::new("/t/a"), &st, "abc", &manifest(3))
        .expect("archive");
    let rec = cat
        .file_by_handle(&identity(1).handle)
        .expect("q")
        .expect("found");
    assert_eq!(rec.id, id);
    assert_eq!(rec.state(&st), State::Archived);
    assert_eq!(rec.resident_bytes(), 300);
    assert_eq!(rec.version.manifest.len(), 3);

    // What ebb's own writes leave: same size and mtime, a new ctime.
    let mut after = st;
    after.ctime.sec += 1;
    cat.set_residency(id, &Residency::empty(3), &after)
        .expect("release");
    let rec = cat.file_by_id(id).expect("q").expect("found");
    assert_eq!(rec.state(&after), State::Released);
    assert!(!rec.is_modified(&after));
    assert!(
        rec.is_modified(&stat(300, 12)),
        "an mtime ebb did not leave means a change"
    );

    let mut part = Residency::empty(3);
    part.insert(1);
    cat.set_residency(id, &part, &after).expect("populate");
    let rec = cat.file_by_id(id).expect("q").expect("found");
    assert_eq!(rec.state(&after), State::Partial);
    assert_eq!(rec.resident.ranges(&rec.version.manifest), vec![(100, 200)]);

    assert_eq!(
        cat.file_by_id(id).expect("q").expect("found").valid_len,
        300
    );
    cat.mark_modified(id, 120).expect("modified");
    cat.mark_modified(id, 250)
        .expect("a longer valid length never grows it back");
    let rec = cat.file_by_id(id).expect("q").expect("found");
    assert!(rec.is_modified(&after));
    assert_eq!(rec.valid_len, 120);
}

#[test]
fn changes_ebb_did_not_make_stay_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cat = Catalog::create(&dir.path().join("c.db")).expect("open");
    let id = cat
        .record_archive(
            &identity(3),
            Path::new("/t/c"),
            &stat(300, 10),
            "h",
            &manifest(3),
        )
        .expect("archive");
    // ebb's own write: only the ctime moves. Not a modification.
    let mut own = stat(300, 10);
    own.ctime.sec = 11;
    cat.set_residency(id, &Residency::empty(3), &own)
        .expect("release");
    assert!(!cat
        .file_by_id(id)
        .expect("q")
        .expect("found")
        .is_modified(&own));
    // A cut to 120 bytes recorded over by a later fill is not forgotten.
    let cut = stat(120, 12);
    cat.set_residency(id, &Residency::empty(3), &cut)
        .expect("fill");
    let rec = cat.file_by_id(id).expect("q").expect("found");
    assert!(rec.is_modified(&cut), "sticky");
    assert_eq!(rec.valid_len, 120);

    let id = cat
        .record_archive(
            &identity(4),
            Path::new("/t/d"),
            &stat(300, 10),
            "h",
            &manifest(3),
        )
        .expect("archive");
    let mut rec = cat.file_by_id(id).expect("q").expect("found");
    cat.note_changes(&mut rec, &stat(300, 10), true)
        .expect("unchanged");
    assert!(!rec.modified);
    let mut seen = rec.clone();
    cat.note_changes(&mut seen, &stat(200, 13), false)
        .expect("changed");
    assert!(
        seen.modified && seen.valid_len == 200,
        "seen: cut to the size"
    );
    cat.note_changes(&mut rec, &stat(200, 13), true)
        .expect("changed");
    assert!(
        rec.modified && rec.valid_len == 0,
        "unseen: nothing comes back"
    );
    let stored = cat.file_by_id(id).expect("q").expect("found");
    assert!(stored.modified && stored.valid_len == 0);
}

#[test]
fn rearchive_replaces_the_version_and_clears_modified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.db");
    let mut cat = Catalog::create(&path).expect("open");
    let id = cat
        .record_archive(
            &identity(2),
            Path::new("/t/b"),
            &stat(300, 1),
            "h1",
            &manifest(3),
        )
        .expect("archive");
    cat.mark_modified(id, 10).expect("modified");
    let id2 = cat
        .record_archive(
            &identity(2),
            Path::new("/t/b2"),
            &stat(200, 2),
            "h2",
            &manifest(2),
        )
        .expect("rearchive");
    assert_eq!(id, id2, "same file, same row");
    drop(cat);
    let cat = Catalog::create(&path).expect("reopen");
    cat.check_integrity().expect("sound");
    let rec = cat.file_by_id(id).expect("q").expect("found");
    assert_eq!(rec.version.content_hash, "h2");
    assert_eq!(rec.path, Path::new("/t/b2"));
    assert!(!rec.modified);
    assert_eq!(rec.valid_len, 200, "a new version is valid in full");
    assert_eq!(cat.count_files().expect("count"), 1);
    let versions: i64 = cat
        .conn
        .query_row("SELECT count(*) FROM versions", [], |r| r.get(0))
        .expect("count");
    assert_eq!(versions, 1, "the old version is gone");
}

#[test]
fn unknown_handle_is_none_and_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.db");
    let cat = Catalog::create(&path).expect("open");
    assert!(cat
        .file_by_handle(&identity(9).handle)
        .expect("q")
        .is_none());
    cat.conn
        .execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(cat);
    let err = Catalog::create(&path).expect_err("newer schema");
    assert!(format!("{err:#}").contains("upgrade ebb"), "{err:#}");
}

#[test]
fn manifest_decoding_rejects_damage() {
    let m = manifest(2);
    let blob = encode_manifest(&m);
    assert_eq!(decode_manifest(&blob).expect("decode"), m);
    assert!(decode_manifest(&blob[..blob.len() - 1]).is_err());
    assert!(decode_manifest(&[]).is_err());
    let mut gap = blob.clone();
    gap[1 + MANIFEST_ENTRY] = 99; // second chunk's offset no longer follows the first
    assert!(decode_manifest(&gap).is_err());
}

/// A catalog an older ebb made (schema 1, no `filling` column) opens and
/// is brought up to date, its rows kept.
#[test]
fn a_schema_1_catalog_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.db");
    let id = {
        let mut cat = Catalog::create(&path).expect("create");
        cat.record_archive(
            &identity(7),
            Path::new("/t/old"),
            &stat(300, 10),
            "h",
            &manifest(3),
        )
        .expect("archive")
    };
    {
        let conn = rusqlite::Connection::open(&path).expect("raw");
        conn.execute_batch("ALTER TABLE files DROP COLUMN filling; PRAGMA user_version=1;")
            .expect("back to schema 1");
    }
    let cat = Catalog::open(&path).expect("open an older catalog");
    let rec = cat.file_by_id(id).expect("q").expect("kept");
    assert!(!rec.filling);
    assert_eq!(rec.path, Path::new("/t/old"));
}

/// A catalog row's blobs are parsed without trusting them (a damaged or
/// hand-edited catalog): property tests, `PROPTEST_CASES` cases each.
mod untrusted {
    use super::super::{decode_manifest, encode_manifest, Residency};
    use crate::store::{ChunkHash, ChunkRef};
    use proptest::prelude::*;

    /// A contiguous manifest of chunks of the given lengths.
    fn manifest(lens: &[u32], hashes: &[[u8; 32]]) -> Vec<ChunkRef> {
        let mut offset = 0;
        lens.iter()
            .zip(hashes)
            .map(|(&len, &hash)| {
                let c = ChunkRef {
                    offset,
                    len,
                    hash: ChunkHash(hash),
                };
                offset += u64::from(len);
                c
            })
            .collect()
    }

    proptest! {
        #[test]
        fn untrusted_manifest_bytes_never_panic(blob in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(chunks) = decode_manifest(&blob) {
                // What it accepts is what it would write.
                prop_assert_eq!(encode_manifest(&chunks), blob);
            }
        }

        #[test]
        fn untrusted_manifests_round_trip_and_refuse_a_changed_offset(
            lens in prop::collection::vec(1u32..=crate::store::CHUNK_MAX, 1..12),
            hashes in prop::collection::vec(any::<[u8; 32]>(), 12),
            which in any::<prop::sample::Index>(),
            by in 1u64..u64::MAX,
        ) {
            let chunks = manifest(&lens, &hashes);
            let blob = encode_manifest(&chunks);
            prop_assert_eq!(decode_manifest(&blob).expect("round trip"), chunks.clone());
            let i = which.index(chunks.len());
            let mut bad = chunks;
            bad[i].offset = bad[i].offset.wrapping_add(by);
            prop_assert!(decode_manifest(&encode_manifest(&bad)).is_err());
            prop_assert!(decode_manifest(&blob[..blob.len() - 1]).is_err());
        }

        #[test]
        fn untrusted_residency_maps_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..80),
            len in prop_oneof![0usize..700, any::<usize>()],
        ) {
            if let Ok(map) = Residency::from_bytes(&bytes, len) {
                prop_assert_eq!(map.to_bytes(), bytes);
                prop_assert_eq!(map.len(), len);
                prop_assert_eq!(map.is_complete(), (0..len).all(|i| map.contains(i)));
            }
        }
    }
}
