//! Remote change notification: the journal on the network.
//!
//! `ebb serve` ([`server`]) streams the journal of one managed tree over
//! HTTP/1.1 as JSON lines (the protocol is in `docs/remote.md`); `ebb
//! watch` ([`client`]) subscribes, prints, and resumes from its last token
//! when the connection drops.
//!
//! - [`tail`] follows `.ebb/journal.db` (written by the daemon) and hands
//!   each new run of events to every subscription at once;
//! - [`filter`] decides, on the server, what each subscription sees: its
//!   subtree, its kinds, and the event that ends it (its root deleted or
//!   moved away);
//! - a subscription that resumes, or falls behind the live feed, reads the
//!   journal itself from its own position: the journal is the buffer, so a
//!   slow subscriber never holds up the journal or anyone else.

pub mod client;
pub mod filter;
pub mod server;
pub mod tail;
pub mod tls;

/// The listening address `ebb serve` uses unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// The path subscriptions are made on.
pub const WATCH_PATH: &str = "/v1/watch";

/// One line of a watch stream.
///
/// `kind` is a change (`created`, `modified`, `deleted`, `renamed`,
/// `attrib`, as `ebb changes` names them), or one of:
/// - `rescan`: events may be missing here; `reason` says why
///   ([`Reason`]), `token` is where to resume;
/// - `gone`: the subscription's path was deleted or moved away; the last
///   line of the stream;
/// - `heartbeat`: nothing the subscription selects happened up to `token`
///   (sent while idle, so a client can resume from a recent point).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    /// Absolute path on the server.
    pub path: String,
    pub kind: String,
    pub is_dir: bool,
    pub token: String,
    /// For `renamed`: the path it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For `rescan` and `gone`: a [`Reason`] name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `rescan` and `gone`: what happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a stream says `rescan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The subscriber did not read for too long; the stream ends, and
    /// resuming from the token gets every event it missed (while the
    /// journal keeps them).
    Slow,
    /// The token asked for is older than what the journal keeps.
    Expired,
    /// The token names another journal (recreated, or another tree's).
    OtherJournal,
    /// The journal itself lost events here (queue overflow, daemon down);
    /// the events after it say what differs once its crawl is done.
    Gap,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Slow => "slow",
            Reason::Expired => "expired",
            Reason::OtherJournal => "other_journal",
            Reason::Gap => "gap",
        }
    }
}
