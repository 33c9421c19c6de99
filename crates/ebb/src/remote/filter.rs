//! What a subscription may watch and what it is sent: decided on the
//! server, so a subscriber never receives (or can ask for) anything else.

use std::path::{Component, Path, PathBuf};

use crate::journal::{under, Change, Kind};

/// One subscription's choice: a subtree of the tree and the kinds of
/// change wanted in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Relative to the tree's root; "" is the whole tree.
    pub prefix: String,
    kinds: u8,
}

/// What to do with one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Skip,
    Send,
    /// The subscription's path was deleted or moved away: send the change
    /// if its kind is wanted, then end the stream.
    Ends {
        send: bool,
    },
}

impl Filter {
    /// `kinds`: a comma-separated list (`create,delete,modify,rename,attrib`,
    /// or the names `ebb changes` prints); `None` for all of them.
    pub fn new(prefix: String, kinds: Option<&str>) -> Result<Filter, String> {
        let kinds = match kinds {
            None => u8::MAX,
            Some(list) => {
                let mut bits = 0u8;
                for name in list.split(',').filter(|n| !n.trim().is_empty()) {
                    match Kind::parse(name) {
                        Some(k) => bits |= 1 << k as u8,
                        None => {
                            return Err(format!(
                            "{name:?} is not a kind of event (create, delete, modify, rename, attrib)"
                        ))
                        }
                    }
                }
                if bits == 0 {
                    return Err(
                        "no kinds of event named (create, delete, modify, rename, attrib)".into(),
                    );
                }
                bits
            }
        };
        Ok(Filter { prefix, kinds })
    }

    pub fn wants(&self, kind: Kind) -> bool {
        self.kinds & (1 << kind as u8) != 0
    }

    pub fn judge(&self, change: &Change) -> Verdict {
        if !change.touches(&self.prefix) {
            return Verdict::Skip;
        }
        let send = self.wants(change.kind);
        if self.ended_by(change) {
            Verdict::Ends { send }
        } else if send {
            Verdict::Send
        } else {
            Verdict::Skip
        }
    }

    /// The subscription's own path (or a directory above it) deleted, or
    /// renamed to somewhere that is not it.
    fn ended_by(&self, change: &Change) -> bool {
        if self.prefix.is_empty() {
            return false;
        }
        match change.kind {
            Kind::Deleted => under(&self.prefix, &change.path),
            Kind::Renamed => {
                change
                    .from
                    .as_deref()
                    .is_some_and(|from| under(&self.prefix, from))
                    && !under(&self.prefix, &change.path)
            }
            _ => false,
        }
    }
}

/// What a subscriber of an export sees of a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    Whole(&'a Change),
    /// A rename across the export's edge: the creation (moved in) or the
    /// deletion (moved out) of its inside end; the outside end is not the
    /// subscriber's to see.
    Part(Change),
    /// Nothing of it is inside the export.
    Nothing,
}

/// What of `change` is visible from `export` (relative to the tree's
/// root; "" for all of it).
pub fn seen_from<'a>(export: &str, change: &'a Change) -> Seen<'a> {
    if export.is_empty() {
        return Seen::Whole(change);
    }
    let inside = |p: &str| under(p, export);
    let part = |kind, path: &str| {
        Seen::Part(Change {
            kind,
            is_dir: change.is_dir,
            path: path.to_string(),
            from: None,
        })
    };
    match (&change.from, change.kind) {
        (Some(from), Kind::Renamed) => match (inside(from), inside(&change.path)) {
            (true, true) => Seen::Whole(change),
            (true, false) => part(Kind::Deleted, from),
            (false, true) => part(Kind::Created, &change.path),
            (false, false) => Seen::Nothing,
        },
        _ if inside(&change.path) => Seen::Whole(change),
        _ => Seen::Nothing,
    }
}

/// Where a subscriber asked to watch, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    /// Absolute, as the subscriber named it (normalized).
    pub path: PathBuf,
    /// Relative to the tree's root.
    pub prefix: String,
    /// A directory (or not there yet).
    pub is_dir: bool,
}

/// Check `requested`, an absolute path on the server, against `export`
/// (canonical, inside the tree at `tree_root`): `..` is refused, so is a
/// path outside the export, and so is one through a symlink (which could
/// lead outside). A path that does not exist yet may be watched.
pub fn check_path(tree_root: &Path, export: &Path, requested: &str) -> Result<Watched, String> {
    if !requested.starts_with('/') {
        return Err(format!(
            "{requested:?} is not an absolute path on the server"
        ));
    }
    let mut path = PathBuf::from("/");
    for c in Path::new(requested).components() {
        match c {
            Component::Normal(name) => path.push(name),
            Component::ParentDir => {
                return Err(format!(
                    "{requested:?} contains \"..\": name the path itself"
                ))
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let Ok(below) = path.strip_prefix(export) else {
        return Err(format!(
            "{} is outside what this server exports ({})",
            path.display(),
            export.display()
        ));
    };
    let mut at = export.to_path_buf();
    let mut is_dir = true;
    for name in below.components() {
        at.push(name);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink: watch the path it leads to",
                    at.display()
                ))
            }
            Ok(m) => is_dir = m.is_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                is_dir = true;
                break;
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    let prefix = path
        .strip_prefix(tree_root)
        .map_err(|_| format!("{} is not in the tree", path.display()))?
        .to_string_lossy()
        .into_owned();
    Ok(Watched {
        path,
        prefix,
        is_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: Kind, path: &str, from: Option<&str>, is_dir: bool) -> Change {
        Change {
            kind,
            is_dir,
            path: path.into(),
            from: from.map(Into::into),
        }
    }

    #[test]
    fn a_filter_sends_its_subtree_and_kinds_only() {
        let f = Filter::new("src".into(), Some("create,delete")).unwrap();
        assert_eq!(
            f.judge(&change(Kind::Created, "src/a.c", None, false)),
            Verdict::Send
        );
        assert_eq!(
            f.judge(&change(Kind::Modified, "src/a.c", None, false)),
            Verdict::Skip
        );
        assert_eq!(
            f.judge(&change(Kind::Created, "srcx/a.c", None, false)),
            Verdict::Skip
        );
        assert_eq!(
            f.judge(&change(Kind::Created, "docs/a", None, false)),
            Verdict::Skip
        );
        // Renamed in from outside, or out to outside: both ends count.
        let all = Filter::new("src".into(), None).unwrap();
        assert_eq!(
            all.judge(&change(Kind::Renamed, "src/b", Some("tmp/b"), false)),
            Verdict::Send
        );
        assert_eq!(
            all.judge(&change(Kind::Renamed, "tmp/b", Some("src/b"), false)),
            Verdict::Send
        );
        assert!(Filter::new("".into(), Some("create,bogus")).is_err());
        assert!(Filter::new("".into(), Some(",")).is_err());
        assert!(Filter::new("".into(), Some("created,modify")).is_ok());
    }

    #[test]
    fn deleting_or_moving_the_watched_path_or_above_ends_the_subscription() {
        let f = Filter::new("a/x".into(), Some("create")).unwrap();
        let ends = |c: Change| f.judge(&c);
        assert_eq!(
            ends(change(Kind::Deleted, "a/x", None, true)),
            Verdict::Ends { send: false }
        );
        assert_eq!(
            ends(change(Kind::Deleted, "a", None, true)),
            Verdict::Ends { send: false }
        );
        assert_eq!(
            ends(change(Kind::Renamed, "b", Some("a"), true)),
            Verdict::Ends { send: false }
        );
        // Something inside moved out, or something moved over it: goes on.
        assert_eq!(
            ends(change(Kind::Renamed, "b", Some("a/x/y"), false)),
            Verdict::Skip
        );
        assert_eq!(
            ends(change(Kind::Renamed, "a/x", Some("tmp"), true)),
            Verdict::Skip
        );
        let deletes = Filter::new("a/x".into(), Some("delete")).unwrap();
        assert_eq!(
            deletes.judge(&change(Kind::Deleted, "a/x", None, false)),
            Verdict::Ends { send: true }
        );
        let whole = Filter::new("".into(), None).unwrap();
        assert_eq!(
            whole.judge(&change(Kind::Deleted, "a", None, true)),
            Verdict::Send
        );
    }

    #[test]
    fn a_rename_across_the_exports_edge_shows_only_its_inside_end() {
        let moved = |from: &str, to: &str| change(Kind::Renamed, to, Some(from), false);
        let inside = moved("pub/a", "pub/b");
        assert_eq!(seen_from("pub", &inside), Seen::Whole(&inside));
        assert_eq!(seen_from("", &inside), Seen::Whole(&inside));
        assert_eq!(
            seen_from("pub", &moved("secret/x", "pub/x")),
            Seen::Part(change(Kind::Created, "pub/x", None, false))
        );
        assert_eq!(
            seen_from("pub", &moved("pub/x", "secret/x")),
            Seen::Part(change(Kind::Deleted, "pub/x", None, false))
        );
        assert_eq!(seen_from("pub", &moved("a", "b")), Seen::Nothing);
        let outside = change(Kind::Created, "secret/y", None, false);
        assert_eq!(seen_from("pub", &outside), Seen::Nothing);
    }

    /// A tree (canonical) with the export `pub` in it, holding `src/f` and
    /// `link`, a symlink out to `/etc`; the temporary directory holds it.
    fn exported_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().canonicalize().unwrap();
        let export = tree.join("pub");
        std::fs::create_dir_all(export.join("src")).unwrap();
        std::fs::write(export.join("src/f"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", export.join("link")).unwrap();
        (dir, tree, export)
    }

    #[test]
    fn paths_outside_the_export_through_dotdot_or_symlinks_are_refused() {
        let (_dir, tree, export) = exported_tree();
        let ok = |p: &Path| check_path(&tree, &export, p.to_str().unwrap());
        let w = ok(&export.join("src")).unwrap();
        assert_eq!((w.prefix.as_str(), w.is_dir), ("pub/src", true));
        let w = ok(&export.join("src/f")).unwrap();
        assert_eq!((w.prefix.as_str(), w.is_dir), ("pub/src/f", false));
        let w = ok(&export.join("not/yet")).unwrap();
        assert_eq!(w.prefix, "pub/not/yet");
        assert_eq!(ok(&export).unwrap().prefix, "pub");
        assert!(ok(&export.join("src/../../secret")).is_err());
        assert!(ok(&tree).is_err());
        assert!(ok(Path::new("/etc")).is_err());
        assert!(ok(&export.join("link/passwd")).is_err());
        assert!(check_path(&tree, &export, "pub/src").is_err());
        // Spelled with "." and doubled slashes: the same path.
        let odd = format!("{}/./src//f", export.display());
        assert_eq!(
            check_path(&tree, &export, &odd).unwrap().prefix,
            "pub/src/f"
        );
    }

    mod untrusted {
        use super::*;
        use proptest::prelude::*;

        /// What a subscriber sends: paths made of names, `..`, `.`, empty
        /// components and symlinks, against a tree with a symlink out of
        /// the export. Whatever it asks, what it gets is inside the export
        /// and reached through no symlink. `PROPTEST_CASES` cases.
        fn requested() -> impl Strategy<Value = String> {
            let part = prop::sample::select(vec![
                "pub", "src", "f", "link", "..", ".", "", "secret", "passwd", "\u{e9}", "a b",
            ]);
            (any::<bool>(), prop::collection::vec(part, 0..8)).prop_map(|(abs, parts)| {
                let joined = parts.join("/");
                if abs {
                    format!("/{joined}")
                } else {
                    joined
                }
            })
        }

        proptest! {
            #[test]
            fn untrusted_watched_paths_stay_inside_the_export(rel in requested(), raw in ".{0,60}") {
                let (_dir, tree, export) = exported_tree();
                for requested in [format!("{}{rel}", tree.display()), rel.clone(), raw.clone()] {
                    if let Ok(w) = check_path(&tree, &export, &requested) {
                        prop_assert!(w.path.starts_with(&export), "{requested:?} gave {}", w.path.display());
                        let mut at = export.clone();
                        for c in w.path.strip_prefix(&export).unwrap().components() {
                            at.push(c);
                            prop_assert!(!at.is_symlink(), "{requested:?} went through {}", at.display());
                        }
                    }
                }
            }

            #[test]
            fn untrusted_event_kinds_and_tokens_never_panic(kinds in ".{0,60}", token in ".{0,60}") {
                if let Ok(f) = Filter::new("p".into(), Some(&kinds)) {
                    prop_assert!(f.kinds != 0);
                }
                if let Ok(t) = token.parse::<crate::journal::Token>() {
                    prop_assert_eq!(t.to_string().parse::<crate::journal::Token>().unwrap().to_string(), t.to_string());
                }
            }
        }
    }
}
