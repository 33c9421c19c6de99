//! Where archived content lives: content-defined chunks named by the BLAKE3
//! of their bytes, compressed, and verified on every read.
//!
//! A file's archived version is a manifest of [`ChunkRef`]s. Chunks are named
//! by the hash of their *uncompressed* bytes, so identical content
//! deduplicates whatever codec or level stored it, and a read can prove it got
//! back exactly what was archived.
//!
//! Each chunk is stored as one encoded blob:
//!
//! | offset | size | field                                                |
//! |-------:|-----:|------------------------------------------------------|
//! |      0 |    4 | magic `EBC1`                                         |
//! |      4 |    1 | codec: `0` = raw, `1` = zstd                         |
//! |      5 |    3 | zero (reserved; a reader rejects anything else)      |
//! |      8 |    4 | uncompressed length, `u32` little-endian             |
//! |     12 |    … | payload: the bytes themselves, or one zstd frame     |
//!
//! The header is checked before any decoding, and the length is capped at
//! [`CHUNK_MAX`], so a damaged blob cannot make a reader allocate gigabytes.
//! Backends store blobs by hash and know nothing of this encoding.

mod chunker;
mod local;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use chunker::{for_each_chunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
pub use local::{LocalDir, MARKER};

/// BLAKE3 of a chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ChunkHash {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(s, &mut hash)?;
        Ok(ChunkHash(hash))
    }
}

// Hex in manifests and JSON output, so they stay readable and greppable.
impl serde::Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChunkHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One chunk of a file's archived content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkRef {
    /// Offset of the chunk in the file.
    pub offset: u64,
    /// Uncompressed length.
    pub len: u32,
    /// BLAKE3 of the uncompressed bytes.
    pub hash: ChunkHash,
}

impl ChunkRef {
    /// Offset one past the chunk's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Errors of the store and its backends.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chunk is missing from the store.
    #[error("chunk {hash} is missing from the store")]
    Missing { hash: ChunkHash },
    /// The chunk is present but its bytes are wrong (bad header, decompress
    /// failure, hash mismatch, wrong length).
    #[error("chunk {hash} in the store is corrupt: {why}")]
    Corrupt { hash: ChunkHash, why: String },
    /// The store directory does not exist or is not an ebb store.
    #[error(
        "{} is not an ebb store ({why}): restore it (or mount it), or change \"store\" in the tree's .ebb/config.json",
        path.display()
    )]
    NotAStore { path: PathBuf, why: String },
    /// A chunk handed to [`Store::put_chunk`] is larger than [`CHUNK_MAX`];
    /// a bug in the caller, since the chunker never cuts one.
    #[error("a chunk of {len} bytes is larger than the {CHUNK_MAX}-byte maximum")]
    TooLarge { len: usize },
    /// Any other I/O failure, naming the step and path.
    #[error("could not {step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where chunk bytes live. A local directory now; S3-compatible object
/// storage later implements the same trait.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Store `blob` under `hash`, replacing any object already there (a
    /// damaged one is repaired so). Atomic: a half-written object is never
    /// visible under `hash`. Durable once this returns or after [`sync`].
    ///
    /// [`sync`]: Backend::sync
    fn put(&self, hash: &ChunkHash, blob: &[u8]) -> Result<(), StoreError>;
    /// Make the object already stored under `hash` durable by the next
    /// [`sync`], whoever wrote it (another process may have renamed it in
    /// and died before making it so).
    ///
    /// [`sync`]: Backend::sync
    fn make_durable(&self, hash: &ChunkHash) -> Result<(), StoreError>;
    /// The blob stored under `hash`; [`StoreError::Missing`] if absent.
    fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>, StoreError>;
    /// Whether an object is stored under `hash`.
    fn contains(&self, hash: &ChunkHash) -> Result<bool, StoreError>;
    /// Make every put so far durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// For humans, e.g. "local directory /var/lib/ebb/store".
    fn describe(&self) -> String;
    /// The local file that holds `hash`, for backends that have one (the
    /// daemon silences it before reading it in some cases).
    fn local_path(&self, _hash: &ChunkHash) -> Option<PathBuf> {
        None
    }
}

const MAGIC: [u8; 4] = *b"EBC1";
const HEADER_LEN: usize = 12;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 3;
/// The largest blob [`Store`] writes: a raw chunk of [`CHUNK_MAX`] bytes
/// (zstd is kept only when smaller). Backends may reject larger objects as
/// corrupt without reading them whole.
pub const MAX_BLOB_LEN: usize = HEADER_LEN + CHUNK_MAX as usize;

/// The content store: chunk encoding (compression), verification, dedup.
/// Cheap to clone; clones share the backend.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// A store over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// Hash `data`, and unless the backend already holds a copy that reads
    /// back and verifies, encode and put it. An existing copy is made
    /// durable by the next [`Store::sync`] (its writer may not have); a
    /// damaged one is replaced. Returns the hash and whether it was written
    /// (two concurrent puts of the same new chunk may both report `true`).
    pub fn put_chunk(&self, data: &[u8]) -> Result<(ChunkHash, bool), StoreError> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&len| len <= CHUNK_MAX)
            .ok_or(StoreError::TooLarge { len: data.len() })?;
        let hash = ChunkHash::of(data);
        match self.get_chunk(&hash, len) {
            Ok(_) => {
                self.backend.make_durable(&hash)?;
                return Ok((hash, false));
            }
            Err(StoreError::Missing { .. }) => {}
            Err(StoreError::Corrupt { why, .. }) => {
                tracing::warn!("chunk {hash} in the store is damaged ({why}); writing it again");
            }
            Err(e) => return Err(e),
        }
        self.backend.put(&hash, &encode(data))?;
        Ok((hash, true))
    }

    /// Read back and verify every chunk of `manifest`; the first that is
    /// missing or does not verify is the error.
    pub fn verify_all(&self, manifest: &[ChunkRef]) -> Result<(), StoreError> {
        manifest
            .iter()
            .try_for_each(|c| self.get_chunk(&c.hash, c.len).map(drop))
    }

    /// Read, decode and verify a chunk: its uncompressed length must be
    /// `len` and its BLAKE3 `hash`, else [`StoreError::Corrupt`]. Never
    /// returns wrong bytes.
    pub fn get_chunk(&self, hash: &ChunkHash, len: u32) -> Result<Vec<u8>, StoreError> {
        let blob = self.backend.get(hash)?;
        let data = decode(&blob, len).map_err(|why| StoreError::Corrupt { hash: *hash, why })?;
        let actual = ChunkHash::of(&data);
        if actual != *hash {
            return Err(StoreError::Corrupt {
                hash: *hash,
                why: format!("its content hashes to {actual}"),
            });
        }
        Ok(data)
    }

    /// Whether the store holds the chunk (without reading it).
    pub fn contains(&self, hash: &ChunkHash) -> Result<bool, StoreError> {
        self.backend.contains(hash)
    }

    /// Make every chunk put so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.backend.sync()
    }

    /// The local file that holds `hash`, if the backend has one.
    pub fn local_path(&self, hash: &ChunkHash) -> Option<PathBuf> {
        self.backend.local_path(hash)
    }

    /// For humans: which backend, where.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }
}

/// Encode `data` (at most [`CHUNK_MAX`] bytes) as a blob.
fn encode(data: &[u8]) -> Vec<u8> {
    let header = |codec: u8| {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = codec;
        // Cannot truncate: callers check `data.len() <= CHUNK_MAX`.
        h[8..].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h
    };
    // Compress into a buffer 1/16 smaller than the input: if zstd does not
    // fit, the saving is not worth a decompression on every read.
    let mut blob = vec![0u8; HEADER_LEN + data.len() - data.len() / 16];
    if let Ok(n) = zstd::bulk::compress_to_buffer(data, &mut blob[HEADER_LEN..], ZSTD_LEVEL) {
        blob[..HEADER_LEN].copy_from_slice(&header(CODEC_ZSTD));
        blob.truncate(HEADER_LEN + n);
        return blob;
    }
    blob.clear();
    blob.extend_from_slice(&header(CODEC_RAW));
    blob.extend_from_slice(data);
    blob
}

/// Decode a blob that should hold `len` uncompressed bytes; `Err` says why not.
fn decode(blob: &[u8], len: u32) -> Result<Vec<u8>, String> {
    let Some((header, payload)) = blob.split_first_chunk::<HEADER_LEN>() else {
        return Err(format!(
            "object is {} bytes, shorter than a header",
            blob.len()
        ));
    };
    if header[..4] != MAGIC {
        return Err(format!("bad magic {:02x?}", &header[..4]));
    }
    if header[5..8] != [0; 3] {
        return Err(format!("reserved header bytes are {:02x?}", &header[5..8]));
    }
    let stored = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if stored > CHUNK_MAX {
        return Err(format!(
            "header length {stored} exceeds the {CHUNK_MAX}-byte maximum"
        ));
    }
    if stored != len {
        return Err(format!("header length {stored}, manifest length {len}"));
    }
    let len = len as usize;
    match header[4] {
        CODEC_RAW if payload.len() == len => Ok(payload.to_vec()),
        CODEC_RAW => Err(format!("raw payload is {} bytes, not {len}", payload.len())),
        CODEC_ZSTD => {
            let mut data = vec![0u8; len];
            match zstd::bulk::decompress_to_buffer(payload, &mut data) {
                Ok(n) if n == len => Ok(data),
                Ok(n) => Err(format!("decompresses to {n} bytes, not {len}")),
                Err(e) => Err(format!("zstd: {e}")),
            }
        }
        codec => Err(format!("unknown codec {codec}")),
    }
}

/// Indices of the chunks of `manifest` (sorted by offset, contiguous from 0)
/// that overlap `[start, end)`; empty when the range is empty or past the end.
pub fn chunks_overlapping(manifest: &[ChunkRef], start: u64, end: u64) -> Range<usize> {
    let first = manifest.partition_point(|c| c.end() <= start);
    if start >= end {
        return first..first;
    }
    first..manifest.partition_point(|c| c.offset < end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use std::fs;
    use std::path::Path;

    fn local_store(dir: &Path) -> Store {
        Store::new(Arc::new(LocalDir::create(dir).unwrap()))
    }

    fn object_path(root: &Path, hash: &ChunkHash) -> PathBuf {
        let name = hash.to_string();
        root.join("chunks").join(&name[..2]).join(name)
    }

    fn count_objects(root: &Path) -> usize {
        fs::read_dir(root.join("chunks"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn compressible(len: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i: u32| format!("line {i}: the quick brown fox\n").into_bytes())
            .take(len)
            .collect()
    }

    /// Archive `data` into `store`, returning the manifest and how many
    /// chunks were newly written.
    fn archive(store: &Store, data: &[u8]) -> (Vec<ChunkRef>, usize) {
        let mut manifest = Vec::new();
        let mut new = 0;
        let total = for_each_chunk(data, |offset, bytes| {
            let (hash, fresh) = store.put_chunk(bytes)?;
            new += usize::from(fresh);
            let len = bytes.len().try_into()?;
            manifest.push(ChunkRef { offset, len, hash });
            Ok(())
        })
        .unwrap();
        assert_eq!(total, data.len() as u64);
        store.sync().unwrap();
        (manifest, new)
    }

    #[test]
    fn roundtrip_random_and_compressible() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        let mut data = random(3 << 20, 1);
        data.extend(compressible(3 << 20));
        let (manifest, _) = archive(&store, &data);
        let mut back = Vec::new();
        for c in &manifest {
            assert_eq!(c.offset, back.len() as u64);
            back.extend(store.get_chunk(&c.hash, c.len).unwrap());
        }
        assert!(back == data);
        // The compressible half really was compressed.
        let on_disk: u64 = manifest
            .iter()
            .map(|c| {
                fs::metadata(object_path(tmp.path(), &c.hash))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(on_disk < (4 << 20), "{on_disk} bytes on disk");
    }

    #[test]
    fn identical_chunks_are_stored_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        let a = random(100_000, 2);
        let (h1, new1) = store.put_chunk(&a).unwrap();
        let (h2, new2) = store.put_chunk(&a).unwrap();
        assert_eq!((h1, new1, new2), (h2, true, false));
        assert_eq!(count_objects(tmp.path()), 1);

        // Content-defined cuts realign in a repeated body, so its second
        // copy is almost all already stored.
        let mut data = random(4 << 20, 3);
        data.extend_from_within(..);
        let (manifest, new) = archive(&store, &data);
        assert_eq!(count_objects(tmp.path()), 1 + new);
        assert!(new * 3 < manifest.len() * 2, "{new} of {}", manifest.len());
    }

    /// One small raw and one small zstd chunk, with their object paths.
    fn two_kinds(root: &Path, store: &Store) -> Vec<(ChunkHash, u32, PathBuf)> {
        [random(4096, 4), compressible(4096)]
            .iter()
            .map(|d| {
                let (hash, _) = store.put_chunk(d).unwrap();
                (hash, d.len() as u32, object_path(root, &hash))
            })
            .collect()
    }

    #[test]
    fn both_codecs_are_used() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        let codecs: Vec<u8> = two_kinds(tmp.path(), &store)
            .iter()
            .map(|(_, _, p)| fs::read(p).unwrap()[4])
            .collect();
        assert_eq!(codecs, [CODEC_RAW, CODEC_ZSTD]);
    }

    #[test]
    fn flipped_bits_never_give_wrong_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        for (hash, len, path) in two_kinds(tmp.path(), &store) {
            let good = fs::read(&path).unwrap();
            let original = store.get_chunk(&hash, len).unwrap();
            let raw = good[4] == CODEC_RAW;
            // Every bit of the small zstd blob; one bit of each raw byte
            // (a raw payload has no unused bits, and the hash covers them all).
            let step = if raw { 8 } else { 1 };
            for i in (0..good.len() * 8).step_by(step) {
                let mut bad = good.clone();
                bad[i / 8] ^= 1 << (i % 8);
                fs::write(&path, &bad).unwrap();
                match store.get_chunk(&hash, len) {
                    Err(StoreError::Corrupt { .. }) => {}
                    // Some bits of a zstd frame are unused (table padding,
                    // stream end markers): flipping them changes nothing the
                    // decoder reads, and the hash proves the bytes right.
                    Ok(data) if !raw && data == original => {}
                    other => panic!("bit {i} of {}: {other:?}", path.display()),
                }
            }
        }
    }

    #[test]
    fn truncated_object_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        for (hash, len, path) in two_kinds(tmp.path(), &store) {
            let good = fs::read(&path).unwrap();
            for keep in [
                0,
                5,
                HEADER_LEN,
                HEADER_LEN + 1,
                good.len() / 2,
                good.len() - 1,
            ] {
                fs::write(&path, &good[..keep]).unwrap();
                match store.get_chunk(&hash, len) {
                    Err(StoreError::Corrupt { .. }) => {}
                    other => panic!("{keep} bytes of {}: {other:?}", path.display()),
                }
            }
        }
    }

    #[test]
    fn wrong_manifest_length_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        for (hash, len, _) in two_kinds(tmp.path(), &store) {
            for wrong in [0, len - 1, len + 1, u32::MAX] {
                assert!(matches!(
                    store.get_chunk(&hash, wrong),
                    Err(StoreError::Corrupt { .. })
                ));
            }
        }
    }

    #[test]
    fn huge_length_header_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        for (hash, len, path) in two_kinds(tmp.path(), &store) {
            let mut bad = fs::read(&path).unwrap();
            bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            fs::write(&path, &bad).unwrap();
            // Whether the manifest agrees with the header or not, the cap
            // refuses before anything is allocated.
            for want in [len, u32::MAX] {
                match store.get_chunk(&hash, want) {
                    Err(StoreError::Corrupt { why, .. }) => {
                        assert!(why.contains("length"), "{why}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn deleted_object_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        let (hash, _) = store.put_chunk(b"hello").unwrap();
        fs::remove_file(object_path(tmp.path(), &hash)).unwrap();
        let err = store.get_chunk(&hash, 5).unwrap_err();
        assert!(matches!(err, StoreError::Missing { hash: h } if h == hash));
        assert_eq!(
            err.to_string(),
            format!("chunk {hash} is missing from the store")
        );
        // And a put writes it again rather than trusting a stale answer.
        assert_eq!(store.put_chunk(b"hello").unwrap(), (hash, true));
    }

    #[test]
    fn empty_chunk_roundtrips_and_oversized_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local_store(tmp.path());
        let (hash, _) = store.put_chunk(&[]).unwrap();
        assert!(store.get_chunk(&hash, 0).unwrap().is_empty());
        let (hash, _) = store.put_chunk(&vec![0; CHUNK_MAX as usize]).unwrap();
        assert_eq!(
            store.get_chunk(&hash, CHUNK_MAX).unwrap().len(),
            CHUNK_MAX as usize
        );
        assert!(matches!(
            store.put_chunk(&vec![0; CHUNK_MAX as usize + 1]),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn hash_text_forms() {
        let hash = ChunkHash::of(b"abc");
        let hex = hash.to_string();
        assert_eq!(hex, blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(format!("{hash:?}"), hex);
        assert_eq!(hex.parse::<ChunkHash>().unwrap(), hash);
        assert!("abc".parse::<ChunkHash>().is_err());
        assert!(hex[..62].parse::<ChunkHash>().is_err());

        let c = ChunkRef {
            offset: 7,
            len: 3,
            hash,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!(r#"{{"offset":7,"len":3,"hash":"{hex}"}}"#));
        assert_eq!(serde_json::from_str::<ChunkRef>(&json).unwrap(), c);
    }

    #[test]
    fn overlapping_chunks() {
        let h = ChunkHash([0; 32]);
        let m: Vec<ChunkRef> = [(0, 10), (10, 10), (20, 5)]
            .map(|(offset, len)| ChunkRef {
                offset,
                len,
                hash: h,
            })
            .into();
        let cases = [
            ((0, 1), 0..1),
            ((0, 10), 0..1),
            ((9, 11), 0..2),
            ((10, 20), 1..2),
            ((10, 21), 1..3),
            ((0, 25), 0..3),
            ((0, u64::MAX), 0..3),
            ((24, 25), 2..3),
            ((25, 30), 3..3),
            ((100, 200), 3..3),
            ((5, 5), 0..0),
            ((10, 10), 1..1),
            ((15, 3), 1..1),
        ];
        for ((start, end), want) in cases {
            assert_eq!(chunks_overlapping(&m, start, end), want, "[{start}, {end})");
        }
        assert_eq!(chunks_overlapping(&[], 0, 10), 0..0);
    }

    /// A store object is decoded without trusting it (a damaged disk, or
    /// another writer of the store): property tests, `PROPTEST_CASES`
    /// cases each. A decoded object is then checked against its hash.
    mod untrusted {
        use super::super::{decode, encode, CHUNK_MAX};
        use proptest::prelude::*;

        fn data() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..5000),
                // Compressible: runs of a few bytes.
                prop::collection::vec((any::<u8>(), 1usize..300), 0..40)
                    .prop_map(|runs| runs.into_iter().flat_map(|(b, n)| vec![b; n]).collect()),
            ]
        }

        proptest! {
            #[test]
            fn untrusted_object_bytes_never_panic(
                blob in prop::collection::vec(any::<u8>(), 0..600),
                len in prop_oneof![0u32..700, any::<u32>()],
            ) {
                if let Ok(got) = decode(&blob, len) {
                    prop_assert_eq!(got.len(), len as usize);
                }
            }

            #[test]
            fn untrusted_objects_round_trip_and_a_changed_byte_never_panics(
                data in data(),
                at in any::<prop::sample::Index>(),
                to in any::<u8>(),
            ) {
                let len = data.len() as u32;
                prop_assert!(len <= CHUNK_MAX);
                let mut blob = encode(&data);
                prop_assert_eq!(decode(&blob, len), Ok(data.clone()));
                prop_assert!(decode(&blob, len + 1).is_err());
                let at = at.index(blob.len());
                blob[at] = to;
                if let Ok(got) = decode(&blob, len) {
                    // A change in the payload may still decode: to bytes
                    // of the right length, which the hash then judges.
                    prop_assert_eq!(got.len(), data.len());
                }
            }
        }
    }
}
