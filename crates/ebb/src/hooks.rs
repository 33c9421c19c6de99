//! Points where a test can hold ebb for a while, to land its own action in
//! a window that is otherwise microseconds wide. Driven by the environment
//! of the process: `EBB_TEST_PAUSE=<point>:<ms>` holds every pass through
//! `<point>` for `<ms>` milliseconds, after logging that it does (a test
//! waits for that line, not for a time). Unset, a pass costs one check of a
//! value read once.
//!
//! Points: `fill-sized` (a fill worker read the file's size and has not
//! written yet), `fill-written` (it wrote its chunk and has not put the
//! mtime back), `release-guarded` (release holds new opens of the file
//! and has not yet had the daemon mark the filesystem).

use std::sync::OnceLock;
use std::time::Duration;

/// Hold here if the environment asks for `point`; `what` says where, in
/// the log line a test waits for.
pub fn pause_point(point: &str, what: impl std::fmt::Display) {
    static SPEC: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("EBB_TEST_PAUSE").ok()?;
        let (name, ms) = v.split_once(':')?;
        Some((name.to_string(), Duration::from_millis(ms.parse().ok()?)))
    });
    if let Some((name, pause)) = spec {
        if name == point {
            tracing::warn!("EBB_TEST_PAUSE: {point}: {what}; pausing");
            std::thread::sleep(*pause);
        }
    }
}
