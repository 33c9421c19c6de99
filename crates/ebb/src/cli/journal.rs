//! `ebb changes` and `ebb fsmonitor-hook`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::daemon::control;
use crate::journal::{fsmonitor, Token};
use crate::tree::{resolve, Tree};

pub fn changes(path: &Path, since: Option<&str>, token_only: bool, json: bool) -> Result<ExitCode> {
    let since: Option<Token> = since.map(str::parse).transpose()?;
    if since.is_none() && !token_only {
        bail!("say since when: --since TOKEN (from an earlier answer), or --token for the current one");
    }
    let path = resolve(path)?;
    if !path.exists() && since.is_none() {
        bail!("{}: no such file or directory", path.display());
    }
    let tree = Tree::find(&path)?;
    tree.relative(&path)?;
    if token_only && !json {
        // The token alone, as README shows it: what `--since` takes.
        let output = control::changes_output(&tree, None, &path, true)?;
        let answer: serde_json::Value = serde_json::from_slice(&output)?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the daemon gave no token"))?;
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let output = control::changes_output(&tree, since.as_ref(), &path, json)?;
    std::io::stdout().lock().write_all(&output)?;
    Ok(ExitCode::SUCCESS)
}

/// git's fsmonitor hook. It never fails git: whatever goes wrong, it says
/// why on stderr and answers "scan everything".
pub fn fsmonitor_hook(version: &str, token: Option<&str>) -> Result<ExitCode> {
    if version != "2" {
        eprintln!("ebb fsmonitor-hook: git asked for protocol {version}; ebb speaks 2 (git config core.fsmonitorHookVersion 2)");
        return Ok(ExitCode::FAILURE);
    }
    let previous = token.unwrap_or("");
    let out = match hook_answer(token) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("ebb fsmonitor-hook: {e:#}; git will scan everything");
            let keep = if previous.parse::<Token>().is_ok() {
                previous
            } else {
                "ebb:0:0"
            };
            fsmonitor::scan_everything(keep)
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn hook_answer(token: Option<&str>) -> Result<Vec<u8>> {
    let worktree = resolve(&std::env::current_dir()?)?;
    let tree = Tree::find(&worktree)?;
    let rel = tree.relative(&worktree)?.to_string_lossy().into_owned();
    match token.map(str::parse::<Token>) {
        Some(Ok(since)) => {
            let answer = control::changes(&tree, Some(&since), &worktree)?;
            Ok(fsmonitor::hook_output(&answer, &rel))
        }
        // git's first call, or a token of another monitor: start here.
        _ => {
            let answer = control::changes(&tree, None, &worktree)?;
            Ok(fsmonitor::scan_everything(&answer.token))
        }
    }
}
