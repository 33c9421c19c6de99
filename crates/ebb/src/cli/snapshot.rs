//! `ebb snapshot` and `ebb changed-ranges`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::daemon::control;
use crate::snapshot::start::Request;
use crate::snapshot::track::format_utc;
use crate::tree::{resolve, Tree};

/// How often the progress of a snapshot is asked for.
const POLL: Duration = Duration::from_millis(50);

pub fn snapshot(src: &Path, dst: &Path, force: bool, json: bool) -> Result<ExitCode> {
    let src = resolve(src)?;
    let dst = destination(dst)?;
    let tree = Tree::find(&src)?;
    crate::hooks::pause_point("path-checked", src.display());
    let request = Request {
        src: src.clone(),
        dst: dst.clone(),
        force,
    };
    let mut status = control::snapshot(&tree, request)?;
    let bar = bar(status["size"].as_u64().unwrap_or(0), json);
    while status["state"] != "done" {
        bar.set_position(status["cloned_bytes"].as_u64().unwrap_or(0));
        std::thread::sleep(POLL);
        status = control::snapshot_status(&tree, &dst).with_context(|| {
            format!(
                "the snapshot of {} to {} (if the daemon stopped, it finishes it when started again; run this command again to see)",
                src.display(),
                dst.display()
            )
        })?;
    }
    bar.finish_and_clear();
    if let Some(fields) = status.as_object_mut() {
        fields.remove("ok");
    }
    if json {
        println!("{status}");
    } else {
        print_done(&status);
    }
    Ok(ExitCode::SUCCESS)
}

/// `dst` made absolute with its directory resolved, its own name kept.
fn destination(dst: &Path) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
        bail!("{} cannot name a snapshot file", dst.display());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    Ok(resolve(dir)?.join(name))
}

fn bar(size: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} snapshot [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn print_done(s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    println!(
        "snapshot {} of {}: {} in {:.2} s ({} clone calls, longest {:.1} ms; {} units cloned early for accesses)",
        s["dst"].as_str().unwrap_or("?"),
        s["src"].as_str().unwrap_or("?"),
        HumanBytes(n("size")),
        s["seconds"].as_f64().unwrap_or(0.0),
        n("clone_calls"),
        n("longest_clone_us") as f64 / 1000.0,
        n("units_cloned_early"),
    );
}

pub fn track(path: &Path, owner: &str, json: bool) -> Result<ExitCode> {
    let tree = Tree::find(path)?;
    let mut catalog = tree.catalog()?;
    let t = crate::snapshot::track::track(&tree, &mut catalog, path, owner)?;
    if json {
        println!("{}", tracking_json(&t));
    } else {
        println!(
            "{} is tracked by {} (since {}); base snapshot {}",
            t.path.display(),
            t.owner,
            format_utc(t.since),
            t.base
                .as_ref()
                .map_or("none (the file was changing)".into(), |b| b
                    .display()
                    .to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn untrack(path: &Path, owner: &str, json: bool) -> Result<ExitCode> {
    let tree = Tree::find(path)?;
    let mut catalog = tree.catalog()?;
    let t = crate::snapshot::track::untrack(&tree, &mut catalog, path, owner)?;
    if json {
        println!("{}", tracking_json(&t));
    } else {
        println!("{} is no longer tracked by {}", t.path.display(), t.owner);
    }
    Ok(ExitCode::SUCCESS)
}

fn tracking_json(t: &crate::catalog::Tracking) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    v["since_utc"] = serde_json::json!(format_utc(t.since));
    v
}

pub fn changed_ranges(base: &Path, file: &Path, json: bool) -> Result<ExitCode> {
    let ranges = crate::snapshot::changed_ranges(base, file)?;
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    for r in &ranges {
        if json {
            println!(
                "{}",
                serde_json::json!({"start": r.start, "end": r.end, "length": r.end - r.start})
            );
        } else {
            println!(
                "{:>14} {:>14}  {}",
                r.start,
                r.end,
                HumanBytes(r.end - r.start)
            );
        }
    }
    if !json {
        eprintln!(
            "{} changed range(s), {} in all",
            ranges.len(),
            HumanBytes(total)
        );
    }
    Ok(ExitCode::SUCCESS)
}
