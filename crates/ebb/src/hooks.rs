//! Points where a test can crash ebb, or hold it for a while to land its
//! own action in a window that is otherwise microseconds wide. Driven by
//! the environment of the process (see [`crash_point`]);
//! `EBB_TEST_PAUSE=<point>:<ms>[:<text>]` holds every pass through
//! `<point>` (whose description holds `<text>`) for `<ms>` milliseconds,
//! after logging that it does (a test
//! waits for that line, not for a time, and can tell from the line logged
//! when it goes on whether its own action landed in the window). Unset, a pass costs one check of a
//! value read once.
//!
//! Points: `fill-sized` (a fill worker read the file's size and has not
//! written yet), `fill-written` (it wrote its chunk and has not put the
//! mtime back), `path-checked` (a command resolved and checked a path
//! it names, and has not opened it), `snapshot-swept` (a snapshot's sweep
//! cloned a run of units and has not gone on), `release-guarded` (release holds new opens of the file
//! and has not yet had the daemon mark the filesystem), `wal-sync` (the
//! catalog's syncer is about to make residency records durable).

use std::sync::OnceLock;
use std::time::Duration;

/// Hold here if the environment asks for `point`; `what` says where, in
/// the log line a test waits for.
pub fn pause_point(point: &str, what: impl std::fmt::Display) {
    static SPEC: OnceLock<Option<(String, Duration, String)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("EBB_TEST_PAUSE").ok()?;
        let (name, rest) = v.split_once(':')?;
        let (ms, text) = rest.split_once(':').unwrap_or((rest, ""));
        let pause = Duration::from_millis(ms.parse().ok()?);
        Some((name.to_string(), pause, text.to_string()))
    });
    if let Some((name, pause, text)) = spec {
        if name == point && what.to_string().contains(text.as_str()) {
            tracing::warn!("EBB_TEST_PAUSE: {point}: {what}; pausing");
            std::thread::sleep(*pause);
            tracing::warn!("EBB_TEST_PAUSE: {point}: {what}; going on");
        }
    }
}

/// Test hook: with `EBB_TEST_CRASH=POINT` (or `POINT:N`, the Nth time) in
/// the environment, the daemon aborts at that point, so tests can kill it
/// exactly where a crash is hardest: `after-read` (events read, nothing
/// noted), `after-fill` (a chunk written, not recorded), `before-answer`.
pub fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("EBB_TEST_CRASH").ok()?;
        let (name, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((name.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((name, n)) = spec {
        if name == point && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("EBB_TEST_CRASH: aborting at {point}");
            std::process::abort();
        }
    }
}
