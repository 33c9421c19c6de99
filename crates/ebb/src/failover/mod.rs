//! Failover: a daemon may crash or be replaced while programs are blocked
//! on cold reads, and none of them sees an error or a zero byte.
//!
//! The kernel side of every pending read (the fanotify group) is held by a
//! keeper process that outlives the daemon ([`keeper`]); the events the
//! daemon has read and not yet answered are in a shared-memory table the
//! keeper holds too ([`inflight`]), written by the kernel itself as it
//! hands the events out. A restarted daemon takes both back and finishes
//! what its predecessor left ([`takeover`]).

pub mod fills;
pub mod inflight;
pub mod keeper;
mod layout;
pub mod takeover;

/// Test hook: with `EBB_TEST_CRASH=POINT` (or `POINT:N`, the Nth time) in
/// the environment, the daemon aborts at that point, so tests can kill it
/// exactly where a crash is hardest: `after-read` (events read, nothing
/// noted), `after-fill` (a chunk written, not recorded), `before-answer`.
pub fn crash_point(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
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
