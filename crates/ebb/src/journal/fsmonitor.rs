//! `ebb fsmonitor-hook`: git's `core.fsmonitor` hook, protocol version 2.
//!
//! git runs `HOOK 2 TOKEN` in the work tree and reads `NEW_TOKEN\0` then
//! NUL-terminated paths relative to the work tree (directories end in
//! `/`, and stand for everything below them), or `NEW_TOKEN\0/\0` for
//! "scan everything". A directory is answered both bare and with its `/`:
//! the bare name is what invalidates an index entry of that name (a file
//! the directory replaced). Changes inside `.git/` are git's own and left out.

use super::{under, Answer};

/// What to print for git, from the journal's `answer` for the work tree
/// at `worktree` (relative to the managed tree's root).
pub fn hook_output(answer: &Answer, worktree: &str) -> Vec<u8> {
    let mut out = answer.token.as_bytes().to_vec();
    out.push(0);
    if answer.everything.is_some() {
        out.extend_from_slice(b"/\0");
        return out;
    }
    for change in &answer.changes {
        if change.is_dir && under(worktree, &change.path) && worktree != change.path {
            // A directory above the work tree moved or went: all of it.
            out.truncate(answer.token.len() + 1);
            out.extend_from_slice(b"/\0");
            return out;
        }
        if !under(&change.path, worktree) || change.path == worktree {
            continue;
        }
        let rel = if worktree.is_empty() {
            &change.path[..]
        } else {
            &change.path[worktree.len() + 1..]
        };
        if rel == ".git" || rel.starts_with(".git/") {
            continue;
        }
        out.extend_from_slice(rel.as_bytes());
        out.push(0);
        if change.is_dir {
            // Also as a directory, for everything below it. Not only so:
            // the name may have been a file (or a symlink) in git's index,
            // and `name/` alone leaves that entry trusted.
            out.extend_from_slice(rel.as_bytes());
            out.extend_from_slice(b"/\0");
        }
    }
    out
}

/// What to print when the journal cannot answer at all: scan everything.
pub fn scan_everything(token: &str) -> Vec<u8> {
    let mut out = token.as_bytes().to_vec();
    out.extend_from_slice(b"\0/\0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::AnsweredChange;

    fn answer(changes: &[(&str, bool)]) -> Answer {
        Answer {
            token: "ebb:ab:7".into(),
            everything: None,
            changes: changes
                .iter()
                .map(|(p, d)| AnsweredChange {
                    path: p.to_string(),
                    kind: crate::journal::Kind::Modified,
                    is_dir: *d,
                })
                .collect(),
        }
    }

    #[test]
    fn paths_are_relative_to_the_work_tree_and_git_dir_changes_are_left_out() {
        let a = answer(&[
            ("repo/src/a.c", false),
            ("repo/.git/index", false),
            ("repo/.git", true),
            ("repo/new", true),
            ("elsewhere/x", false),
        ]);
        assert_eq!(
            hook_output(&a, "repo"),
            b"ebb:ab:7\0src/a.c\0new\0new/\0".to_vec()
        );
    }

    #[test]
    fn a_moved_parent_or_an_unknown_answer_means_scan_everything() {
        assert_eq!(
            hook_output(&answer(&[("top", true)]), "top/repo"),
            b"ebb:ab:7\0/\0".to_vec()
        );
        let mut a = answer(&[]);
        a.everything = Some("gap".into());
        assert_eq!(hook_output(&a, "repo"), b"ebb:ab:7\0/\0".to_vec());
        assert_eq!(scan_everything("t"), b"t\0/\0".to_vec());
    }
}
