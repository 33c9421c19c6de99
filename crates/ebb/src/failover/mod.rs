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
