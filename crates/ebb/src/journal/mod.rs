//! The change journal: what changed under a managed tree since any token,
//! exactly, across queue overflows and daemon downtime.
//!
//! - [`recorder`] reads a notification group (`FAN_REPORT_DFID_NAME`
//!   with target fids, `FAN_RENAME`) with a filesystem mark, turns events
//!   into paths under the tree and appends them to the [`db`] in batches;
//! - a gap (queue overflow, or a start after downtime) is recorded as such
//!   and repaired by a stat-only [`crawl`] that compares the tree with the
//!   index and journals what differs;
//! - a query first writes a cookie file and waits until the recorder has
//!   seen it, so the answer includes every change made before it was asked.

pub mod crawl;
pub mod db;
pub mod fsmonitor;
pub mod recorder;

use std::os::unix::fs::MetadataExt;

use std::path::Path;

use anyhow::{bail, Result};

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Created = 1,
    Modified = 2,
    Deleted = 3,
    Renamed = 4,
    Attrib = 5,
    /// Changes may be missing here (until the gap is repaired).
    Gap = 6,
}

impl Kind {
    fn from_i64(v: i64) -> Kind {
        match v {
            1 => Kind::Created,
            2 => Kind::Modified,
            3 => Kind::Deleted,
            4 => Kind::Renamed,
            5 => Kind::Attrib,
            _ => Kind::Gap,
        }
    }

    /// Parse a kind as `ebb changes` prints it, or as a verb (`create`,
    /// `delete`, `modify`, `rename`, `attrib`), as `ebb watch --events`
    /// takes it. Gaps are not something to ask for.
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name.trim() {
            "created" | "create" => Kind::Created,
            "modified" | "modify" => Kind::Modified,
            "deleted" | "delete" => Kind::Deleted,
            "renamed" | "rename" => Kind::Renamed,
            "attrib" => Kind::Attrib,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Modified => "modified",
            Kind::Deleted => "deleted",
            Kind::Renamed => "renamed",
            Kind::Attrib => "attrib",
            Kind::Gap => "gap",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One change, paths relative to the tree's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub is_dir: bool,
    pub path: String,
    /// For a rename: where it came from (for a gap read with
    /// [`db::Journal::after`]: why it happened).
    pub from: Option<String>,
}

impl Change {
    /// Whether this change may have changed something under `prefix` ("" is
    /// the whole tree): a path under it, or a directory above it that was
    /// renamed or deleted (which changes everything below).
    pub fn touches(&self, prefix: &str) -> bool {
        touches(&self.path, self.from.as_deref(), self.is_dir, prefix)
    }
}

/// [`Change::touches`], for a change given by its parts.
pub fn touches(path: &str, from: Option<&str>, is_dir: bool, prefix: &str) -> bool {
    std::iter::once(path)
        .chain(from)
        .any(|p| under(p, prefix) || (is_dir && under(prefix, p)))
}

/// Whether `path` is `prefix` or below it.
pub fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

/// What a path was when last seen: enough to tell that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
    pub ctime: i64,
    pub mode: u32,
}

impl Entry {
    pub fn of(meta: &std::fs::Metadata) -> Entry {
        Entry {
            ino: meta.ino(),
            size: if meta.is_dir() { 0 } else { meta.size() },
            mtime: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            mode: meta.mode(),
        }
    }

    /// What `rel` under the directory `dir` is now (`None`: nothing there).
    /// Relative to an open directory, the lookup walks only `rel`.
    pub fn at(dir: std::os::fd::BorrowedFd<'_>, rel: &str) -> Option<Entry> {
        use std::os::fd::AsRawFd;
        let rel = if rel.is_empty() { "." } else { rel };
        let st = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            rel,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        Some(Entry {
            ino: st.st_ino,
            size: if is_dir { 0 } else { st.st_size as u64 },
            mtime: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            mode: st.st_mode,
        })
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// A point in a journal: `ebb:<journal id>:<sequence number>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub journal: String,
    pub seq: u64,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ebb:{}:{}", self.journal, self.seq)
    }
}

impl std::str::FromStr for Token {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Token> {
        let mut parts = s.trim().split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ebb"), Some(id), Some(seq), None)
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                match seq.parse() {
                    Ok(seq) => Ok(Token {
                        journal: id.to_string(),
                        seq,
                    }),
                    Err(_) => bail!("{s:?} is not an ebb token (its sequence number is not a number)"),
                }
            }
            _ => bail!("{s:?} is not an ebb token (they look like ebb:3f9a…:1200; get one with `ebb changes --token PATH`)"),
        }
    }
}

/// The answer to "what changed under PATH since TOKEN".
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// The token to ask with next time.
    pub token: String,
    /// Set when the journal cannot say exactly: everything under the path
    /// may have changed, for this reason.
    pub everything: Option<String>,
    /// Each path that may have changed, once (the last change to it).
    pub changes: Vec<AnsweredChange>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AnsweredChange {
    /// Relative to the tree's root.
    pub path: String,
    pub kind: Kind,
    pub is_dir: bool,
}

impl Answer {
    /// `ebb changes`'s output: under `root` (the tree's), asked about
    /// `asked`; one JSON object per line with `json`, else text. The token
    /// is always the last line (a reader can tell a whole answer by it).
    pub fn render(&self, root: &Path, asked: &Path, json: bool) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let mut out = Vec::with_capacity(64 * (self.changes.len() + 2));
        if let Some(why) = &self.everything {
            if json {
                let line = serde_json::json!({"path": asked, "everything": true, "reason": why});
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "everything under {} may have changed: {why}",
                    asked.display()
                )?;
            }
        }
        // Written by hand, not by serde: this runs once per path of answers
        // naming 100 000s (a `PathBuf` and a formatter each took a third of
        // the time of a big answer).
        let root = root.to_string_lossy();
        let root = root.strip_suffix('/').unwrap_or(&root);
        for c in &self.changes {
            if json {
                out.extend_from_slice(if c.is_dir {
                    b"{\"is_dir\":true,\"kind\":\""
                } else {
                    b"{\"is_dir\":false,\"kind\":\""
                });
                out.extend_from_slice(c.kind.as_str().as_bytes());
                out.extend_from_slice(b"\",\"path\":\"");
                push_json_str(&mut out, root);
                out.push(b'/');
                push_json_str(&mut out, &c.path);
                out.extend_from_slice(b"\"}\n");
            } else {
                let kind = c.kind.as_str();
                out.extend_from_slice(kind.as_bytes());
                out.extend(std::iter::repeat_n(b' ', 10 - kind.len()));
                out.extend_from_slice(root.as_bytes());
                out.push(b'/');
                out.extend_from_slice(c.path.as_bytes());
                out.extend_from_slice(if c.is_dir { b"/\n" } else { b"\n" });
            }
        }
        if json {
            writeln!(out, "{}", serde_json::json!({"token": self.token}))?;
        } else {
            writeln!(out, "token {}", self.token)?;
        }
        Ok(out)
    }
}

/// `s` as the inside of a JSON string, as serde_json escapes it.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let mut rest = s.as_bytes();
    while let Some(at) = rest
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
    {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Builds an answer's list: one entry per path, the last change to each,
/// in the order they last changed; both ends of a rename.
///
/// An answer may name 100 000s of paths: they are kept end to end in one
/// buffer, each found through a slot in a table that holds its last change
/// too, not as a `String` each in a map (the allocations, the rehashing and
/// the trips through memory were most of a 400 000-path answer).
pub struct Summary {
    names: String,
    /// aHash, keyed at random: names chosen to collide cannot slow it down
    /// (SipHash was a fifth of an answer).
    slots: hashbrown::HashTable<Slot>,
    hasher: ahash::RandomState,
}

/// A path's last change, and where its name is in [`Summary::names`].
struct Slot {
    seq: u64,
    start: usize,
    len: u32,
    kind: Kind,
    is_dir: bool,
}

impl Slot {
    fn name<'a>(&self, names: &'a str) -> &'a str {
        &names[self.start..self.start + self.len as usize]
    }
}

impl Summary {
    /// A summary with room for `paths` paths before it grows.
    pub fn with_capacity(paths: usize) -> Summary {
        Summary {
            names: String::with_capacity(paths * 24),
            slots: hashbrown::HashTable::with_capacity(paths),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Count in the change `seq` made to `path` (changes come oldest first).
    pub fn add(&mut self, seq: u64, kind: Kind, is_dir: bool, path: &str) {
        let Summary {
            names,
            slots,
            hasher,
        } = self;
        let hash = hasher.hash_one(path);
        match slots.find_mut(hash, |s| s.name(names) == path) {
            Some(slot) => {
                // Made since, then written: still "created" to whoever asks.
                slot.kind = match (slot.kind, kind) {
                    (Kind::Created, Kind::Modified | Kind::Attrib) => Kind::Created,
                    _ => kind,
                };
                (slot.seq, slot.is_dir) = (seq, is_dir);
            }
            None => {
                let slot = Slot {
                    seq,
                    start: names.len(),
                    len: path.len() as u32,
                    kind,
                    is_dir,
                };
                names.push_str(path);
                slots.insert_unique(hash, slot, |s| hasher.hash_one(s.name(names)));
            }
        }
    }

    pub fn finish(self) -> Vec<AnsweredChange> {
        let Summary { names, slots, .. } = self;
        let name = |s: &Slot| s.name(&names);
        // Sorted where they lie, not through references (the table is in
        // hash order: every step of a sort would be a trip through memory).
        let mut order: Vec<Slot> = slots.into_iter().collect();
        // The names only order the two ends of a rename.
        order.sort_unstable_by(|a, b| a.seq.cmp(&b.seq).then_with(|| name(a).cmp(name(b))));
        order
            .iter()
            .map(|s| AnsweredChange {
                path: name(s).to_owned(),
                kind: s.kind,
                is_dir: s.is_dir,
            })
            .collect()
    }
}

impl Default for Summary {
    fn default() -> Summary {
        Summary::with_capacity(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t: Token = "ebb:3f9a:1200".parse().unwrap();
        assert_eq!((t.journal.as_str(), t.seq), ("3f9a", 1200));
        assert_eq!(t.to_string(), "ebb:3f9a:1200");
        for bad in ["", "ebb", "ebb:xyz:1", "ebb:3f:x", "git:3f:1", "ebb:3f:1:2"] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_change_touches_its_subtree_and_a_moved_directory_everything_below() {
        let file = Change {
            kind: Kind::Modified,
            is_dir: false,
            path: "src/a.c".into(),
            from: None,
        };
        assert!(file.touches("") && file.touches("src") && file.touches("src/a.c"));
        assert!(!file.touches("sr") && !file.touches("docs") && !file.touches("src/a.cc"));
        let moved = Change {
            kind: Kind::Renamed,
            is_dir: true,
            path: "new".into(),
            from: Some("old/dir".into()),
        };
        assert!(moved.touches("old") && moved.touches("old/dir/x/y") && moved.touches("new/z"));
        assert!(!moved.touches("other"));
    }

    #[test]
    fn an_entry_read_relative_to_a_directory_is_the_one_read_by_path() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"abc").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("sub/l")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        for rel in ["", "sub", "sub/f", "sub/l"] {
            let meta = std::fs::symlink_metadata(dir.path().join(rel)).unwrap();
            assert_eq!(
                Entry::at(root.as_fd(), rel),
                Some(Entry::of(&meta)),
                "{rel:?}"
            );
        }
        assert_eq!(Entry::at(root.as_fd(), "sub/none"), None);
    }

    #[test]
    fn rendered_lines_are_the_json_serde_would_write() {
        let odd = [
            "a",
            "d\"q\\b",
            "tab\there\nnl\r\u{8}\u{c}\u{1}\u{1f}",
            "ünï/cödé",
            "",
        ];
        let answer = Answer {
            token: "ebb:ab:3".into(),
            everything: None,
            changes: odd
                .iter()
                .enumerate()
                .map(|(i, p)| AnsweredChange {
                    path: p.to_string(),
                    kind: Kind::Renamed,
                    is_dir: i % 2 == 0,
                })
                .collect(),
        };
        for root in ["/t", "/", "/t/x y"] {
            let out = answer
                .render(Path::new(root), Path::new(root), true)
                .unwrap();
            let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
            for (line, c) in lines.iter().zip(&answer.changes) {
                let want = serde_json::json!({
                    "is_dir": c.is_dir,
                    "kind": c.kind,
                    "path": Path::new(root).join(&c.path),
                });
                assert_eq!(*line, want.to_string(), "{root:?} {:?}", c.path);
            }
            assert_eq!(lines.last(), Some(&r#"{"token":"ebb:ab:3"}"#));
            let text = answer
                .render(Path::new(root), Path::new(root), false)
                .unwrap();
            let first = std::str::from_utf8(&text)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_string();
            let abs = Path::new(root).join("a");
            assert_eq!(first, format!("{:<9} {}/", "renamed", abs.display()));
        }
    }

    #[test]
    fn a_summary_that_outgrows_its_room_still_names_each_path_once_in_order() {
        let mut summary = Summary::with_capacity(1);
        for seq in 0..20_000u64 {
            // Each path comes twice, 10 000 changes apart.
            let path = format!("d/{}", seq % 10_000);
            let kind = if seq < 10_000 {
                Kind::Modified
            } else {
                Kind::Attrib
            };
            summary.add(seq, kind, false, &path);
        }
        let s = summary.finish();
        assert_eq!(s.len(), 10_000);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, c)| c.path == format!("d/{i}")));
        assert!(s.iter().all(|c| c.kind == Kind::Attrib));
    }

    #[test]
    fn answers_name_each_path_once_with_its_last_change() {
        let mut summary = Summary::default();
        summary.add(1, Kind::Created, false, "a");
        summary.add(2, Kind::Modified, false, "a");
        summary.add(3, Kind::Renamed, false, "b");
        summary.add(3, Kind::Renamed, false, "a");
        summary.add(4, Kind::Created, false, "c");
        summary.add(5, Kind::Attrib, false, "c");
        let s = summary.finish();
        let got: Vec<(&str, &str)> = s
            .iter()
            .map(|c| (c.path.as_str(), c.kind.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("a", "renamed"), ("b", "renamed"), ("c", "created")]
        );
    }
}
