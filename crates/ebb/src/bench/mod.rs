//! Benchmarks that measure ebb against a baseline taken in the same run,
//! on a loop-mounted XFS made for the purpose (`ebb bench …`).

pub mod failover;
pub mod journal;
pub mod populate;
pub mod remote;
pub mod snapshot;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Parse a size such as `4096`, `64M`, `64MiB` or `1G` (binary units).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a size (try 64MiB or 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => bail!("{text:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    num.checked_mul(1 << shift)
        .with_context(|| format!("{text:?} is too large"))
}

/// Write back dirty pages and drop the page cache, so the next read comes
/// from the device (for the loop device: from its backing file, which is
/// dropped too).
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("dropping the page cache (needs root)")
}

/// Read all of `path` sequentially in 1 MiB reads; returns the time taken.
pub fn read_sequentially(path: &Path) -> Result<Duration> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(start.elapsed());
        }
    }
}

/// The `q` quantile (0..=1) of sorted `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// A daemon the benchmark started (a real process, detached: not our
/// child).
pub type Pid = nix::unistd::Pid;

/// `ebb daemon ROOT --background`, optionally with a test crash point
/// (`EBB_TEST_CRASH`); returns once it serves.
pub fn start_daemon(exe: &Path, root: &Path, crash: Option<&str>) -> Result<Pid> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["daemon", "--background", "--json"]).arg(root);
    match crash {
        Some(point) => cmd.env("EBB_TEST_CRASH", point),
        None => cmd.env_remove("EBB_TEST_CRASH"),
    };
    let out = cmd.output().context("starting the daemon")?;
    if !out.status.success() {
        bail!(
            "the daemon did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pid = v["pid"].as_i64().context("the daemon reported no pid")?;
    Ok(Pid::from_raw(i32::try_from(pid)?))
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
pub fn is_alive(pid: Pid) -> bool {
    u32::try_from(pid.as_raw()).is_ok_and(crate::daemon::control::is_running)
}

/// SIGTERM, and wait (up to 30 s) until it is gone.
pub fn stop_daemon(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stop the keeper that holds `root`'s events (a stopped daemon leaves
/// it, for the next one): a benchmark leaves nothing running.
pub fn stop_keeper(root: &Path) {
    use crate::failover::keeper::{socket_path, KeeperClient};
    let Ok(tree) = crate::tree::Tree::open(root) else {
        return;
    };
    if let Ok(Some(keeper)) = KeeperClient::connect(&socket_path(&tree.config().id)) {
        let _ = keeper.stop();
    }
}

/// A daemon the benchmark started; when dropped, it is stopped, and so is
/// its keeper unless it was only paused.
pub struct Daemon {
    pid: Pid,
    root: std::path::PathBuf,
    keep_keeper: bool,
}

impl Daemon {
    /// `ebb daemon ROOT --background`.
    pub fn start(exe: &Path, root: &Path) -> Result<Daemon> {
        Ok(Daemon {
            pid: start_daemon(exe, root, None)?,
            root: root.to_path_buf(),
            keep_keeper: false,
        })
    }

    /// Stop the daemon only (SIGTERM): its keeper keeps the tree's events
    /// for the next daemon, as across a restart.
    pub fn pause(mut self) {
        self.keep_keeper = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_daemon(self.pid);
        if !self.keep_keeper {
            stop_keeper(&self.root);
        }
    }
}

/// `ebb changes` (JSON lines); with no token, the current token.
pub fn changes(exe: &Path, path: &Path, since: Option<&str>) -> Result<String> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("changes").arg(path).arg("--json");
    match since {
        Some(t) => cmd.args(["--since", t]),
        None => cmd.arg("--token"),
    };
    let out = cmd.output().context("running ebb changes")?;
    if !out.status.success() {
        bail!(
            "ebb changes: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)?;
    if since.is_none() {
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        return Ok(v["token"].as_str().context("no token")?.to_string());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096").expect("plain"), 4096);
        assert_eq!(parse_size("64M").expect("M"), 64 << 20);
        assert_eq!(parse_size("1GiB").expect("GiB"), 1 << 30);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn quantiles_pick_from_sorted_samples() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
