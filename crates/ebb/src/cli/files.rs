//! `archive`, `release`, `restore` and `status` over many paths: one
//! report per file (a line, or a JSON object), errors reported and skipped,
//! a progress bar on a terminal, exit status 1 if any file failed.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::catalog::Catalog;
use crate::hsm::{self, Progress};
use crate::store::Store;
use crate::tree::Tree;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Archive,
    Release,
    Restore,
    Status,
}

/// A tree met on the way, with its catalog and (lazily) its store.
struct Opened {
    tree: Tree,
    catalog: Catalog,
    store: Option<Store>,
}

impl Opened {
    fn store(&mut self) -> Result<&Store> {
        if self.store.is_none() {
            self.store = Some(self.tree.store()?);
        }
        Ok(self.store.as_ref().expect("just set"))
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// What one file's report says: a human line and a JSON object.
struct Report {
    line: String,
    json: serde_json::Value,
}

pub fn run(op: Op, paths: &[PathBuf], recursive: bool, json: bool) -> Result<ExitCode> {
    let files = hsm::expand_paths(paths, recursive);
    let bar = progress_bar(op, &files, json);
    let progress = Bar(bar.clone());
    let mut trees: HashMap<PathBuf, Opened> = HashMap::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    for (path, found) in files {
        let result = found.and_then(|()| one(op, &path, &mut trees, &progress));
        match result {
            Ok(report) => {
                ok += 1;
                if json {
                    println!("{}", report.json);
                } else {
                    bar.suspend(|| println!("{}", report.line));
                }
            }
            Err(err) => {
                failed += 1;
                if json {
                    println!("{}", json!({ "path": path, "error": format!("{err:#}") }));
                } else {
                    bar.suspend(|| eprintln!("ebb: error: {err:#}"));
                }
            }
        }
    }
    bar.finish_and_clear();
    if failed > 0 {
        if !json && ok + failed > 1 {
            eprintln!("ebb: {failed} of {} files failed", ok + failed);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar of bytes for work that moves data, shown only on a terminal.
fn progress_bar(op: Op, files: &[(PathBuf, Result<()>)], json: bool) -> ProgressBar {
    if json || op == Op::Status || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total: u64 = files
        .iter()
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(match op {
        Op::Archive => "archiving",
        Op::Release => "releasing",
        Op::Restore => "restoring",
        Op::Status => "",
    });
    bar
}

fn one(
    op: Op,
    path: &Path,
    trees: &mut HashMap<PathBuf, Opened>,
    progress: &Bar,
) -> Result<Report> {
    let tree = Tree::find(path)?;
    let opened = match trees.entry(tree.root().to_path_buf()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(Opened {
            catalog: tree.catalog()?,
            tree,
            store: None,
        }),
    };
    let shown = path.display();
    Ok(match op {
        Op::Status => {
            let s = hsm::status(&opened.tree, &opened.catalog, path)?;
            let note = if s.modified {
                "  (modified since archived)"
            } else {
                ""
            };
            Report {
                line: format!(
                    "{:<9} {:>10} of {:>10}  {}{note}",
                    s.state.as_str(),
                    HumanBytes(s.resident_bytes).to_string(),
                    HumanBytes(s.size).to_string(),
                    s.path.display()
                ),
                json: serde_json::to_value(&s)?,
            }
        }
        Op::Archive => {
            let store = opened.store()?.clone();
            let o = hsm::archive(&opened.tree, &mut opened.catalog, &store, path, progress)?;
            Report {
                line: if o.archived && o.incremental {
                    format!(
                        "archived {shown} ({}, {} chunks, {} new; read {} of it, the changes since its tracking base)",
                        HumanBytes(o.size),
                        o.chunks,
                        HumanBytes(o.new_bytes),
                        HumanBytes(o.bytes_read)
                    )
                } else if o.archived {
                    format!(
                        "archived {shown} ({}, {} chunks, {} new)",
                        HumanBytes(o.size),
                        o.chunks,
                        HumanBytes(o.new_bytes)
                    )
                } else {
                    format!("{shown}: already archived")
                },
                json: with_path(path, if o.archived { "archived" } else { "unchanged" }, &o)?,
            }
        }
        Op::Release => {
            let store = opened.store()?.clone();
            let o = hsm::release(&opened.tree, &mut opened.catalog, &store, path)?;
            progress.advance(o.size);
            Report {
                line: if o.released {
                    format!("released {shown} ({} freed)", HumanBytes(o.freed_bytes))
                } else {
                    format!("{shown}: already released")
                },
                json: with_path(path, if o.released { "released" } else { "unchanged" }, &o)?,
            }
        }
        Op::Restore => {
            let store = opened.store()?.clone();
            let o = hsm::restore(&opened.tree, &mut opened.catalog, &store, path, progress)?;
            Report {
                line: if o.restored {
                    format!(
                        "restored {shown} ({} from the store)",
                        HumanBytes(o.fetched_bytes)
                    )
                } else {
                    format!("{shown}: already resident")
                },
                json: with_path(path, if o.restored { "restored" } else { "unchanged" }, &o)?,
            }
        }
    })
}

/// `{"path": …, "result": …, <outcome fields>}`.
fn with_path(
    path: &Path,
    result: &str,
    outcome: &impl serde::Serialize,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(outcome)?;
    v["path"] = json!(path);
    v["result"] = json!(result);
    Ok(v)
}
