//! The stat-only crawl that repairs a gap: walk the tree, compare what is
//! there with the index, and say what differs. No file is opened or read.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Change, Entry, Kind};

/// Every path under `root` (relative, `.ebb` at the top left out) and what
/// it is now. Symlinks are not followed; other filesystems mounted inside
/// are not entered.
pub fn scan(root: &Path) -> Result<HashMap<String, Entry>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root)
        .with_context(|| format!("{}", root.display()))?
        .dev();
    let mut out = HashMap::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        // A directory that went away meanwhile is simply not there.
        let Ok(entries) = std::fs::read_dir(&abs) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dir.is_empty() && name == crate::tree::STATE_DIR {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if meta.is_dir() && meta.dev() == dev {
                dirs.push(rel.clone());
            }
            out.insert(rel, Entry::of(&meta));
        }
    }
    Ok(out)
}

/// The changes that turn the index `old` into the tree `new`.
pub fn diff(old: &HashMap<String, Entry>, new: &HashMap<String, Entry>) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, now) in new {
        let kind = match old.get(path) {
            None => Kind::Created,
            Some(was) if was == now => continue,
            Some(was) if was.ino == now.ino && was.size == now.size && was.mtime == now.mtime => {
                Kind::Attrib
            }
            Some(_) => Kind::Modified,
        };
        out.push(Change {
            kind,
            is_dir: now.is_dir(),
            path: path.clone(),
            from: None,
        });
    }
    for (path, was) in old {
        if !new.contains_key(path) {
            out.push(Change {
                kind: Kind::Deleted,
                is_dir: was.is_dir(),
                path: path.clone(),
                from: None,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crawl_sees_creates_modifies_attribs_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".ebb")).unwrap();
        std::fs::write(root.join("a/b/f"), b"1").unwrap();
        std::fs::write(root.join("a/g"), b"1").unwrap();
        std::fs::write(root.join("gone"), b"1").unwrap();
        std::fs::write(root.join(".ebb/ignored"), b"1").unwrap();
        let before = scan(root).unwrap();
        assert!(before.contains_key("a/b/f") && !before.keys().any(|k| k.starts_with(".ebb")));

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("a/b/f"), b"22").unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::write(root.join("new"), b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("a/g"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let changes = diff(&before, &scan(root).unwrap());
        let got: Vec<(&str, Kind)> = changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert!(got.contains(&("a/b/f", Kind::Modified)), "{got:?}");
        assert!(got.contains(&("a/g", Kind::Attrib)), "{got:?}");
        assert!(got.contains(&("gone", Kind::Deleted)), "{got:?}");
        assert!(got.contains(&("new", Kind::Created)), "{got:?}");
        assert!(diff(&scan(root).unwrap(), &scan(root).unwrap()).is_empty());
    }
}
