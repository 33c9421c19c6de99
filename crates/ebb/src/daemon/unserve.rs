//! `ebb unserve`: take a tree out of service. A stopped daemon leaves its
//! keeper holding the tree's events, so readers wait for the next one;
//! this is how a user says no next daemon is coming. Refused while any
//! file is a stub: with nothing serving it, it would read as zeros.

use anyhow::{bail, Result};

use super::control;
use crate::failover::keeper::{socket_path, KeeperClient};
use crate::tree::Tree;

/// What taking the tree out of service did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Unserved {
    /// `false` when nothing served the tree already.
    pub stopped: bool,
    /// The daemon that was stopped.
    pub daemon_pid: Option<u32>,
}

/// Stub paths named in a refusal.
const NAMED: usize = 3;

pub fn unserve(tree: &Tree) -> Result<Unserved> {
    let root = tree.root().display();
    // No release makes a stub from here on (it holds the lock shared).
    let _lock = tree.service_lock(true)?;
    let (stubs, first) = tree.catalog()?.not_resident(NAMED)?;
    if stubs > 0 {
        let named: Vec<String> = first.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{stubs} file(s) of {root} are released or partial ({}{}): with nothing serving them they would read as zeros; bring them back with `ebb restore -r {root}` first (nothing changed)",
            named.join(", "),
            if stubs > NAMED as u64 { ", …" } else { "" }
        );
    }
    if let Some(pid) = control::daemon_pid(tree)? {
        control::unserve(tree, pid)?;
        return Ok(Unserved {
            stopped: true,
            daemon_pid: Some(pid),
        });
    }
    if KeeperClient::connect(&socket_path(&tree.config().id))?.is_some() {
        // Readers may be waiting in the kept group: a daemon answers them
        // (and finishes any snapshot it recorded) before the group closes.
        bail!(
            "no daemon serves {root}, but its keeper holds what readers wait for; start `ebb daemon {root} --background`, then run `ebb unserve {root}` again (nothing changed)"
        );
    }
    Ok(Unserved {
        stopped: false,
        daemon_pid: None,
    })
}
