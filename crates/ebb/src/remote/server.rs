//! `ebb serve`: the journal of one tree, streamed to subscribers over
//! HTTP/1.1 (optionally TLS) as JSON lines. The protocol is in
//! `docs/remote.md`.
//!
//! Each connection is one task; each subscription one more, which reads
//! the live feed from the [`Tail`] or, when it resumes or falls behind,
//! the journal itself. Nothing a subscriber does can hold up the journal,
//! the tail or another subscriber: the only thing that waits on a
//! subscriber's socket is its own task, and only for so long.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Notify, Semaphore};
use tokio::time::timeout;

use super::filter::{self, Filter, Seen, Verdict, Watched};
use super::tail::Tail;
use super::{Line, Reason, WATCH_PATH};
use crate::journal::db::{After, Journal};
use crate::journal::{Change, Kind, Token};
use crate::tree::Tree;

/// Events read from the journal per query when a subscription catches up.
const CATCH_UP_PAGE: usize = 4096;

/// Chunks of output (a run of events each) queued per subscription
/// beyond what the socket holds: the journal is the real buffer.
const QUEUED_CHUNKS: usize = 2;

/// A subscriber told it is too slow has this many slow timeouts to read
/// what is queued and that last word before its connection is closed.
const SLOW_GRACE: u32 = 6;

/// How long a client has to send its request (and finish a TLS handshake).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Config {
    /// What subscribers may watch: a directory in a managed tree.
    pub export: PathBuf,
    pub listen: SocketAddr,
    /// The secret clients must send (`Authorization: Bearer …`); required
    /// unless `no_auth`.
    pub secret: Option<Vec<u8>>,
    /// Serve without a secret: asked for explicitly, on loopback only
    /// (every local user can then read every name under the export).
    pub no_auth: bool,
    /// Serve without TLS off loopback: asked for explicitly (the secret
    /// and every name travel in cleartext).
    pub insecure: bool,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Open connections at most; more are refused with 503.
    pub max_connections: usize,
    /// A subscriber whose output has not drained for this long is told to
    /// rescan (with the token to resume from), and cut off if it does not
    /// take even that within as long again.
    pub slow_timeout: Duration,
    /// An idle stream gets a heartbeat (its current token) this often.
    pub heartbeat: Duration,
}

impl Config {
    /// Who may subscribe: a secret on every address unless `--no-auth` on
    /// loopback, and TLS off loopback unless `--insecure`.
    fn check_access(&self) -> Result<()> {
        let loopback = self.listen.ip().is_loopback();
        let names = self.export.display();
        match (&self.secret, self.no_auth) {
            (Some(_), true) => bail!("--no-auth with --token-file: choose one"),
            (None, true) if !loopback => bail!(
                "--no-auth is for loopback only: listening on {} needs --token-file (anyone who can reach it could read every file name under {names})",
                self.listen
            ),
            (None, false) if !loopback => bail!(
                "listening on {} (not loopback) needs --token-file: anyone who can reach it could read every file name under {names}",
                self.listen
            ),
            (None, false) => bail!(
                "ebb serve needs a secret: --token-file FILE (or --no-auth, on loopback only: every local user could then read every file name under {names})"
            ),
            _ => {}
        }
        if !loopback && self.tls.is_none() && !self.insecure {
            bail!(
                "listening on {} without TLS would send the secret and every file name in cleartext: give --tls-cert and --tls-key, or --insecure",
                self.listen
            );
        }
        Ok(())
    }

    pub fn new(export: PathBuf, listen: SocketAddr) -> Config {
        Config {
            export,
            listen,
            secret: None,
            no_auth: false,
            insecure: false,
            tls: None,
            max_connections: 1024,
            slow_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
        }
    }
}

struct Shared {
    config: Config,
    tree_root: PathBuf,
    /// The export, relative to the tree's root ("" for all of it).
    export_prefix: String,
    tail: Tail,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Check the configuration, start following the tree's journal and
    /// bind the listening socket.
    pub async fn bind(mut config: Config) -> Result<Server> {
        config.check_access()?;
        config.export = crate::tree::resolve(&config.export)?;
        anyhow::ensure!(
            config.export.is_dir(),
            "{} is not a directory",
            config.export.display()
        );
        let tree = Tree::find(&config.export)?;
        let tail = Tail::start(&tree.state_dir().join("journal.db"))?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (another ebb serve there? choose another with --listen)",
                config.listen
            )
        })?;
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                tree_root: tree.root().to_path_buf(),
                export_prefix: tree
                    .relative(&config.export)?
                    .to_string_lossy()
                    .into_owned(),
                config,
                tail,
                tls,
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let limit = self.shared.config.max_connections;
        let slots = Arc::new(Semaphore::new(limit));
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of fds, most likely: wait for some to close.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                let plain = self.shared.tls.is_none();
                tokio::spawn(refuse(tcp, limit, plain));
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(shared, tcp).await {
                    tracing::debug!("connection from {peer}: {e:#}");
                }
                drop(slot);
            });
        }
    }
}

/// Over the connection limit: say so (on plain HTTP) and close.
async fn refuse(mut tcp: TcpStream, limit: usize, plain: bool) {
    if plain {
        let body = format!(
            "{{\"error\":\"too many connections (this server takes {limit}); try again later\"}}\n"
        );
        let reply = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = timeout(Duration::from_secs(1), tcp.write_all(reply.as_bytes())).await;
    }
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream) -> Result<()> {
    match shared.tls.clone() {
        Some(acceptor) => {
            let tls = timeout(REQUEST_TIMEOUT, acceptor.accept(tcp))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?;
            drive(shared, tls).await
        }
        None => drive(shared, tcp).await,
    }
}

/// HTTP/1.1 on one connection, until it closes or its subscription cuts
/// it off (`kill`).
async fn drive<I>(shared: Arc<Shared>, io: I) -> Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = kill.clone();
        hyper::service::service_fn(move |req| {
            let (shared, kill) = (shared.clone(), kill.clone());
            async move { Ok::<_, Infallible>(answer(&shared, kill, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        r = conn => r.context("HTTP"),
        _ = kill.notified() => Ok(()),
    }
}

type ResponseBody = Either<Full<Bytes>, Lines>;

/// A refusal: the status and a one-line reason.
struct Refusal(StatusCode, String);

async fn answer(
    shared: &Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match subscribe(shared, kill, &req).await {
        Ok(lines) => {
            let mut resp = Response::new(Either::Right(lines));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            resp
        }
        Err(Refusal(status, message)) => {
            let body = serde_json::json!({ "error": message }).to_string() + "\n";
            let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
            *resp.status_mut() = status;
            if status == StatusCode::UNAUTHORIZED {
                // Nothing more from a client without the secret: its
                // connection does not hold a server slot.
                resp.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

/// A request, checked: what to watch, which kinds, from where.
struct Ask {
    watched: Watched,
    filter: Filter,
    since: Option<Token>,
}

fn read_request(shared: &Shared, req: &Request<Incoming>) -> Result<Ask, Refusal> {
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    if req.uri().path() != WATCH_PATH {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no such endpoint (subscribe with GET {WATCH_PATH}?path=…)"),
        ));
    }
    if req.method() != Method::GET {
        return Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{WATCH_PATH} takes GET"),
        ));
    }
    if !authorized(shared.config.secret.as_deref(), req) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "missing or wrong auth token (send Authorization: Bearer <secret>; ebb watch --token-file FILE)".into(),
        ));
    }
    let (mut path, mut events, mut since) = (None, None, None);
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "path" => path = Some(value.into_owned()),
            "events" => events = Some(value.into_owned()),
            "since" => since = Some(value.into_owned()),
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (path, events, since)"
                )))
            }
        }
    }
    let path = path.ok_or_else(|| bad("say what to watch: ?path=/absolute/path".into()))?;
    let watched = filter::check_path(&shared.tree_root, &shared.config.export, &path)
        .map_err(|m| Refusal(StatusCode::FORBIDDEN, m))?;
    let filter = Filter::new(watched.prefix.clone(), events.as_deref()).map_err(bad)?;
    let since = since
        .map(|t| t.parse::<Token>())
        .transpose()
        .map_err(|e| bad(format!("{e:#}")))?;
    Ok(Ask {
        watched,
        filter,
        since,
    })
}

/// Check a request and start its subscription.
async fn subscribe(
    shared: &Arc<Shared>,
    kill: Arc<Notify>,
    req: &Request<Incoming>,
) -> Result<Lines, Refusal> {
    let Ask {
        watched,
        filter,
        since,
    } = read_request(shared, req)?;
    let db = shared.tail.db().to_path_buf();
    // Subscribe to the live feed before reading where the journal is, so
    // that nothing falls between the two.
    let live = shared.tail.subscribe();
    let opened = tokio::task::spawn_blocking(move || -> Result<(Journal, u64)> {
        let journal = Journal::open_reader(&db)?;
        let last = journal.last_seq()?;
        Ok((journal, last))
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let (journal, last) = opened.map_err(|e| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the journal cannot be read: {e:#}"),
        )
    })?;
    let id = journal.id().to_string();
    let (start, opening) = match since {
        None => (last, None),
        Some(t) if t.journal != id => (
            last,
            Some((Reason::OtherJournal, format!("{t} is from another journal (this one is {id}): it was recreated, or the token is another tree's"))),
        ),
        Some(t) if t.seq > last => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("{t} is ahead of this journal (its newest event is {last})"),
            ))
        }
        Some(t) => (t.seq, None),
    };

    let (tx, queued) = mpsc::channel(QUEUED_CHUNKS);
    let last = Arc::new(Mutex::new(None));
    let (alive_tx, alive) = oneshot::channel();
    let sub = Subscription {
        shared: shared.clone(),
        watched,
        filter,
        journal_id: id,
        pos: start,
        tx,
        last: last.clone(),
        alive,
        kill,
    };
    tokio::spawn(sub.run(journal, live, opening));
    Ok(Lines {
        queued,
        last,
        _alive: alive_tx,
    })
}

fn authorized(secret: Option<&[u8]>, req: &Request<Incoming>) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| given.ct_eq(secret).into())
}

/// The response body of a subscription: what its task queues, as it is
/// queued, then the task's last word (if it left one); ends when the task
/// does.
pub struct Lines {
    queued: mpsc::Receiver<Bytes>,
    last: Arc<Mutex<Option<Bytes>>>,
    /// Dropped with the body: tells the task the client has it all (or
    /// the connection is gone).
    _alive: oneshot::Sender<()>,
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.queued.poll_recv(cx).map(|chunk| {
            chunk
                .or_else(|| lock(&self.last).take())
                .map(|b| Ok(Frame::data(b)))
        })
    }
}

/// How a subscription's stream stopped.
enum End {
    /// Its path went away, or the client left.
    Done,
    /// The client did not drain its output in time.
    Slow,
}

struct Subscription {
    shared: Arc<Shared>,
    watched: Watched,
    filter: Filter,
    journal_id: String,
    /// Everything up to here has been queued for the client or skipped.
    pos: u64,
    tx: mpsc::Sender<Bytes>,
    /// Said after everything queued, even when the queue is full.
    last: Arc<Mutex<Option<Bytes>>>,
    alive: oneshot::Receiver<()>,
    kill: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Subscription {
    async fn run(
        mut self,
        journal: Journal,
        mut live: broadcast::Receiver<super::tail::Batch>,
        opening: Option<(Reason, String)>,
    ) {
        if let Some((reason, detail)) = opening {
            let mut out = Vec::new();
            self.rescan(&mut out, self.pos, reason, detail);
            if self.send(out).await.is_err() {
                return;
            }
        }
        let end = match self.stream(journal, &mut live).await {
            Ok(end) => end,
            Err(e) => {
                tracing::warn!("subscription to {}: {e:#}", self.watched.path.display());
                End::Done
            }
        };
        if let End::Slow = end {
            // The last word goes after what is queued (the queue is full:
            // that is why), then the stream ends. A client that does not
            // read even that within a while loses its connection.
            let mut out = Vec::new();
            self.rescan(
                &mut out,
                self.pos,
                Reason::Slow,
                format!(
                "the subscriber did not read for {:?}: resume from this token (ebb watch --since)",
                self.shared.config.slow_timeout
            ),
            );
            *lock(&self.last) = Some(Bytes::from(out));
            let grace = self.shared.config.slow_timeout * SLOW_GRACE;
            let Subscription {
                alive, kill, tx, ..
            } = self;
            drop(tx);
            if timeout(grace, alive).await.is_err() {
                kill.notify_one();
            }
        }
    }

    /// Catch up from the journal, then follow the live feed; back to the
    /// journal whenever the feed has moved on without this subscription.
    async fn stream(
        &mut self,
        mut journal: Journal,
        live: &mut broadcast::Receiver<super::tail::Batch>,
    ) -> Result<End> {
        let heartbeat = self.shared.config.heartbeat;
        loop {
            // Catch up.
            loop {
                if let Some(end) = self.follow_a_new_journal(&mut journal).await? {
                    return Ok(end);
                }
                let pos = self.pos;
                let (j, page) = tokio::task::spawn_blocking(move || {
                    let page = journal.after(pos, CATCH_UP_PAGE);
                    (journal, page)
                })
                .await?;
                journal = j;
                let events = match page? {
                    After::Records(events) => events,
                    After::Pruned => {
                        let last = journal.last_seq()?;
                        let mut out = Vec::new();
                        self.rescan(&mut out, last, Reason::Expired, format!(
                            "events after {} are no longer kept (journal_max_events / journal_max_age_days in the tree's config.json)",
                            self.token(self.pos)
                        ));
                        match self.send(out).await {
                            Ok(()) => {
                                self.pos = last;
                                continue;
                            }
                            Err(end) => return Ok(end),
                        }
                    }
                };
                let short = events.len() < CATCH_UP_PAGE;
                if let Some(end) = self.deliver(&events).await {
                    return Ok(end);
                }
                if short {
                    break;
                }
            }
            let mut out = Vec::new();
            self.heartbeat(&mut out);
            if let Err(end) = self.send(out).await {
                return Ok(end);
            }
            // Follow.
            loop {
                let batch = tokio::select! {
                    b = live.recv() => b,
                    _ = tokio::time::sleep(heartbeat) => {
                        let mut out = Vec::new();
                        self.heartbeat(&mut out);
                        if let Err(end) = self.send(out).await {
                            return Ok(end);
                        }
                        continue;
                    }
                };
                let batch = match batch {
                    Ok(_) if self.shared.tail.journal_id() != self.journal_id => break,
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(End::Done),
                };
                let Some(first) = batch.iter().position(|(seq, _)| *seq > self.pos) else {
                    continue;
                };
                if batch[first].0 != self.pos + 1 {
                    break; // a hole: the journal has it
                }
                if let Some(end) = self.deliver(&batch[first..]).await {
                    return Ok(end);
                }
            }
        }
    }

    /// The tail follows a journal made anew (the daemon started without
    /// the old file): so does this subscription, from its start, after
    /// telling the client that what happened in between is not known.
    async fn follow_a_new_journal(&mut self, journal: &mut Journal) -> Result<Option<End>> {
        if self.shared.tail.journal_id() == self.journal_id {
            return Ok(None);
        }
        let db = self.shared.tail.db().to_path_buf();
        let (fresh, start) = tokio::task::spawn_blocking(move || -> Result<(Journal, u64)> {
            let journal = Journal::open_reader(&db)?;
            // From its newest event: the tree as indexed into it, and
            // whatever happened since this subscription last read, is
            // what "not known" covers.
            let start = journal.last_seq()?;
            Ok((journal, start))
        })
        .await??;
        let old = std::mem::replace(&mut self.journal_id, fresh.id().to_string());
        *journal = fresh;
        self.pos = start;
        let mut out = Vec::new();
        self.rescan(
            &mut out,
            start,
            Reason::OtherJournal,
            format!(
                "the journal was made anew ({} follows {old}): changes in between are not known",
                self.journal_id
            ),
        );
        Ok(self.send(out).await.err())
    }

    /// Send what `events` hold for this subscription; `Some` when the
    /// stream has ended. The position moves only once the lines are
    /// queued, so a `rescan` after a failed send resumes before them.
    async fn deliver(&mut self, events: &[(u64, Change)]) -> Option<End> {
        let mut out = Vec::new();
        let mut gone = false;
        let mut pos = self.pos;
        for (seq, change) in events {
            pos = *seq;
            if change.kind == Kind::Gap {
                let why = change.from.as_deref().unwrap_or("unknown");
                self.rescan(
                    &mut out,
                    pos,
                    Reason::Gap,
                    format!(
                    "the journal lost events here ({why}); the events after this say what differs"
                ),
                );
                continue;
            }
            // Judged as the export shows it: nothing outside it leaks.
            let (verdict, shown) = match filter::seen_from(&self.shared.export_prefix, change) {
                Seen::Whole(c) => (self.filter.judge(c), Some(Cow::Borrowed(c))),
                Seen::Part(c) => (self.filter.judge(&c), Some(Cow::Owned(c))),
                Seen::Nothing => match self.filter.judge(change) {
                    Verdict::Ends { .. } => (Verdict::Ends { send: false }, None),
                    _ => (Verdict::Skip, None),
                },
            };
            match (verdict, shown.as_deref()) {
                (Verdict::Send, Some(c)) => self.change(&mut out, pos, c),
                (Verdict::Ends { send }, shown) => {
                    if let (true, Some(c)) = (send, shown) {
                        self.change(&mut out, pos, c);
                    }
                    self.gone(&mut out, pos, shown);
                    gone = true;
                    break;
                }
                _ => {}
            }
        }
        if let Err(end) = self.send(out).await {
            return Some(end);
        }
        self.pos = pos;
        gone.then_some(End::Done)
    }

    /// Queue `out` for the client (nothing if empty), waiting at most the
    /// slow timeout for room.
    async fn send(&mut self, out: Vec<u8>) -> Result<(), End> {
        if out.is_empty() {
            return Ok(());
        }
        match timeout(
            self.shared.config.slow_timeout,
            self.tx.send(Bytes::from(out)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Done), // the connection is gone
            Err(_) => Err(End::Slow),
        }
    }

    fn token(&self, seq: u64) -> String {
        format!("ebb:{}:{seq}", self.journal_id)
    }

    fn absolute(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.shared.tree_root.display().to_string()
        } else {
            format!("{}/{rel}", self.shared.tree_root.display())
        }
    }

    fn change(&self, out: &mut Vec<u8>, seq: u64, change: &Change) {
        self.write(
            out,
            Line {
                path: self.absolute(&change.path),
                kind: change.kind.as_str().into(),
                is_dir: change.is_dir,
                token: self.token(seq),
                from: change.from.as_deref().map(|f| self.absolute(f)),
                reason: None,
                detail: None,
            },
        );
    }

    fn rescan(&self, out: &mut Vec<u8>, seq: u64, reason: Reason, detail: String) {
        self.about_watched(out, "rescan", seq, Some((reason.as_str(), detail)));
    }

    /// The last line: the watched path went, by `change` (as the export
    /// shows it; `None`: a directory above it moved outside the export).
    fn gone(&self, out: &mut Vec<u8>, seq: u64, change: Option<&Change>) {
        let (how, reason) = match change {
            Some(Change {
                from: Some(from),
                path,
                ..
            }) => (
                format!(
                    "moved away ({} is now {})",
                    self.absolute(from),
                    self.absolute(path)
                ),
                "renamed",
            ),
            Some(c) => (
                format!(
                    "{} was deleted (or moved out of the export)",
                    self.absolute(&c.path)
                ),
                "deleted",
            ),
            None => (
                "a directory above it was moved out of the export".into(),
                "renamed",
            ),
        };
        let detail = format!("the watched path is gone: {how}; the subscription ends");
        self.about_watched(out, "gone", seq, Some((reason, detail)));
    }

    fn heartbeat(&self, out: &mut Vec<u8>) {
        self.about_watched(out, "heartbeat", self.pos, None);
    }

    /// A line about the subscription itself (not a change): its path, and
    /// why with what happened, if there is a why.
    fn about_watched(&self, out: &mut Vec<u8>, kind: &str, seq: u64, why: Option<(&str, String)>) {
        let (reason, detail) = why.map_or((None, None), |(r, d)| (Some(r.to_string()), Some(d)));
        self.write(
            out,
            Line {
                path: self.watched.path.display().to_string(),
                kind: kind.into(),
                is_dir: self.watched.is_dir,
                token: self.token(seq),
                from: None,
                reason,
                detail,
            },
        );
    }

    fn write(&self, out: &mut Vec<u8>, line: Line) {
        // Serializing plain strings and bools into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// Read the secret from `path`: one line, at least 16 bytes.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(
        secret.len() >= 16 && !secret.contains(char::is_whitespace),
        "{}: the token must be one word of at least 16 characters (e.g. openssl rand -hex 32 > {})",
        path.display(),
        path.display()
    );
    Ok(secret.as_bytes().to_vec())
}
