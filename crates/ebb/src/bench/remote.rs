//! `ebb bench remote`: the journal delivered to many subscribers over
//! loopback, checked event by event against the journal, against reading
//! the same events locally with `ebb changes`.
//!
//! On a fresh loop-mounted XFS with a daemon and a real `ebb serve`
//! process: two producer threads make RATE journal events a second for
//! SECONDS (each file: create, rename, chmod, rename, unlink, in one of DIRS
//! directories). SUBSCRIBERS subscriptions (one client process, as many
//! connections) each watch one directory for one set of kinds, a few
//! percent of the events; a few of them drop their connection halfway and
//! resume from their last token. Then each subscription's events must be
//! exactly, in order, what its filter selects from the journal; the
//! benchmark fails otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{changes, quantile, Daemon};
use crate::journal::db::{After, Journal};
use crate::journal::{Change, Kind};
use crate::remote::client::{Remote, Subscription};
use crate::testing::LoopFs;
use crate::tree::Tree;

/// Directories the producers spread files over.
const DIRS: usize = 25;

/// The kinds each group of subscribers asks for, in turn.
const KIND_SETS: [&str; 4] = [
    "create,rename,attrib,delete",
    "create,delete",
    "rename",
    "attrib,delete",
];

/// Subscribers that drop their connection halfway and resume.
const RESUMERS: usize = 5;

#[derive(Clone, Debug)]
pub struct Options {
    pub subscribers: usize,
    /// Journal events a second, from both producers together.
    pub rate: u64,
    pub seconds: f64,
    pub exe: PathBuf,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub subscribers: usize,
    /// Changes the producers made (one journal event each).
    pub produced_events: u64,
    pub journal_events: u64,
    pub journal_events_per_sec: f64,
    /// Events delivered, all subscribers together.
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// Subscribers that resumed after dropping their connection.
    pub resumed: usize,
    /// Subscribers whose events were not exactly their filter's share of
    /// the journal (goal 0; the benchmark fails otherwise).
    pub mismatched: usize,
    /// From the producer's syscall returning to the subscriber reading
    /// the line: journal, tail, server, network, client.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Replaying the whole run: `ebb changes --since` locally against a
    /// new subscription from the same token.
    pub replay_events: u64,
    pub local_changes_secs: f64,
    pub remote_replay_secs: f64,
    /// Remote replay time over local (lower is better).
    pub remote_vs_local: f64,
}

/// One event as a subscriber received it.
struct Got {
    seq: u64,
    kind: String,
    path: String,
    at: Instant,
}

/// `ebb serve` as a child process; killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(exe: &Path, root: &Path) -> Result<Serve> {
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(root)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "4096",
            "--no-auth",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ebb serve")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("ebb serve's stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        bail!("ebb serve said {line:?}");
    };
    Ok(Serve {
        url: url.to_string(),
        child,
    })
}

pub fn run(opts: &Options) -> Result<Report> {
    anyhow::ensure!(opts.subscribers > 0, "--subscribers must be at least 1");
    let fs = LoopFs::xfs(4 << 10)?;
    let root = fs.path().join("tree");
    std::fs::create_dir(&root)?;
    Tree::init(&root, Some(&fs.scratch().join("store")))?;
    for d in 0..DIRS {
        std::fs::create_dir(root.join(format!("d{d:02}")))?;
    }
    let _daemon = Daemon::start(&opts.exe, &root)?;
    let serve = start_serve(&opts.exe, &root)?;
    let t0 = changes(&opts.exe, &root, None)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let remote = Arc::new(Remote::new(&serve.url, None, None)?);
    let stop = Arc::new(AtomicBool::new(false));
    let halfway = Instant::now() + Duration::from_secs_f64(opts.seconds / 2.0);
    let subs: Vec<(String, &str)> = (0..opts.subscribers)
        .map(|i| {
            (
                format!("d{:02}", i % DIRS),
                KIND_SETS[(i / DIRS) % KIND_SETS.len()],
            )
        })
        .collect();
    let counts: Vec<Arc<AtomicUsize>> = subs.iter().map(|_| Default::default()).collect();
    let tasks: Vec<_> = subs
        .iter()
        .enumerate()
        .map(|(i, (dir, kinds))| {
            let sub = Subscription {
                path: root.join(dir).display().to_string(),
                events: Some(kinds.to_string()),
                since: Some(t0.clone()),
            };
            let resume_at = (i < RESUMERS).then_some(halfway);
            runtime.spawn(subscriber(
                remote.clone(),
                sub,
                resume_at,
                counts[i].clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Produce.
    let started = Instant::now();
    let produced = produce(&root, opts.rate, Duration::from_secs_f64(opts.seconds))?;
    let producing = started.elapsed();
    changes(&opts.exe, &root, None)?; // the journal has it all

    // What each subscriber should get, from the journal itself.
    let db = Journal::open_reader(&root.join(".ebb/journal.db"))?;
    let from: u64 = t0.rsplit(':').next().unwrap_or("0").parse()?;
    let journal = read_all(&db, from)?;
    let expected: Vec<Vec<u64>> = subs
        .iter()
        .map(|(dir, kinds)| {
            journal
                .iter()
                .filter(|(_, c)| selects(dir, kinds, c))
                .map(|(seq, _)| *seq)
                .collect()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && counts
            .iter()
            .zip(&expected)
            .any(|(c, e)| c.load(Ordering::Relaxed) < e.len())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered_by = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut mismatched = 0;
    let mut resumed = 0;
    let mut latencies = Vec::new();
    let mut deliveries = 0u64;
    for (i, task) in tasks.into_iter().enumerate() {
        let (got, did_resume) = runtime
            .block_on(task)
            .context("a subscriber panicked")?
            .with_context(|| format!("subscriber {i}"))?;
        resumed += usize::from(did_resume);
        deliveries += got.len() as u64;
        let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
        if seqs != expected[i] {
            mismatched += 1;
            tracing::error!(
                "subscriber {i} ({} {}): got {} events, the journal has {} for it",
                subs[i].0,
                subs[i].1,
                seqs.len(),
                expected[i].len()
            );
        }
        for g in &got {
            if let Some(made) = produced.get(&(g.kind.clone(), g.path.clone())) {
                latencies.push(g.at.saturating_duration_since(*made));
            }
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    // Replay: locally, then over the network, the same range.
    let t = Instant::now();
    changes(&opts.exe, &root, Some(&t0))?;
    let local = t.elapsed();
    let whole = Subscription {
        path: root.display().to_string(),
        events: None,
        since: Some(t0.clone()),
    };
    let replay_events = journal.len();
    let t = Instant::now();
    let replayed = runtime.block_on(replay(&remote, &whole, replay_events))?;
    let remote_replay = t.elapsed();
    anyhow::ensure!(
        replayed == replay_events,
        "the replay delivered {replayed} of {replay_events} events"
    );
    drop(serve);

    Ok(Report {
        subscribers: opts.subscribers,
        produced_events: produced.len() as u64,
        journal_events: journal.len() as u64,
        journal_events_per_sec: journal.len() as f64 / producing.as_secs_f64(),
        deliveries,
        deliveries_per_sec: deliveries as f64 / delivered_by.as_secs_f64(),
        resumed,
        mismatched,
        latency_p50_ms: ms(quantile(&latencies, 0.5)),
        latency_p99_ms: ms(quantile(&latencies, 0.99)),
        latency_max_ms: ms(latencies.last().copied().unwrap_or_default()),
        replay_events: replay_events as u64,
        local_changes_secs: local.as_secs_f64(),
        remote_replay_secs: remote_replay.as_secs_f64(),
        remote_vs_local: remote_replay.as_secs_f64() / local.as_secs_f64(),
    })
}

/// The bench's own reading of a filter (not the server's code): a change
/// to a path in `dir`, of one of `kinds`. Files never leave their
/// directory, and directories never change.
fn selects(dir: &str, kinds: &str, c: &Change) -> bool {
    let kind = match c.kind {
        Kind::Created => "create",
        Kind::Renamed => "rename",
        Kind::Attrib => "attrib",
        Kind::Deleted => "delete",
        Kind::Modified => "modify",
        Kind::Gap => return false,
    };
    c.path.starts_with(&format!("{dir}/")) && kinds.split(',').any(|k| k == kind)
}

/// Every journal event after `from` (gaps fail the benchmark: the
/// producers were too fast for the journal's queue).
fn read_all(db: &Journal, from: u64) -> Result<Vec<(u64, Change)>> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let After::Records(page) = db.after(pos, 10_000)? else {
            bail!("the journal was pruned during the benchmark")
        };
        let Some(last) = page.last() else {
            return Ok(out);
        };
        pos = last.0;
        if let Some((_, gap)) = page.iter().find(|(_, c)| c.kind == Kind::Gap) {
            bail!(
                "the journal lost events ({}): lower --rate",
                gap.from.as_deref().unwrap_or("gap")
            );
        }
        out.extend(page);
    }
}

/// One subscription: collect its events until told to stop; drop the
/// connection once at `resume_at` and resume from the last token.
async fn subscriber(
    remote: Arc<Remote>,
    mut sub: Subscription,
    mut resume_at: Option<Instant>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<Got>, bool)> {
    let mut got = Vec::new();
    let mut resumed = false;
    let root_len = sub.path.rfind('/').map_or(0, |i| i + 1);
    'connect: while !stop.load(Ordering::Relaxed) {
        let mut stream = remote.watch(&sub).await?;
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'connect;
            }
            if resume_at.is_some_and(|at| Instant::now() >= at) {
                resume_at = None;
                resumed = true;
                continue 'connect; // drops the stream: a client gone
            }
            let next = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
            let Ok(line) = next else { continue };
            let Some(line) = line? else {
                bail!("the server ended the stream")
            };
            let at = Instant::now();
            sub.since = Some(line.token.clone());
            match line.kind.as_str() {
                "heartbeat" => {}
                "rescan" | "gone" => bail!("unexpected {:?}", line),
                _ => {
                    got.push(Got {
                        seq: line.token.rsplit(':').next().unwrap_or("0").parse()?,
                        kind: line.kind,
                        path: line.path[root_len.min(line.path.len())..].to_string(),
                        at,
                    });
                    count.store(got.len(), Ordering::Relaxed);
                }
            }
        }
    }
    Ok((got, resumed))
}

/// A fresh subscription from the same token: the time to read `want`
/// events.
async fn replay(remote: &Remote, sub: &Subscription, want: usize) -> Result<usize> {
    let mut stream = remote.watch(sub).await?;
    let mut n = 0;
    // Heartbeats keep coming: the bound is on the whole replay.
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while n < want {
            match stream.next().await {
                Ok(Some(line)) if line.kind != "heartbeat" => n += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    })
    .await;
    Ok(n)
}

/// One file's life, one journal event a step. No two events fall on one
/// name: the kernel would merge them (a chmod then an unlink reach the
/// journal as one delete).
const LIFE: [&str; 5] = ["created", "renamed", "attrib", "renamed", "deleted"];

/// Step `step` of [`LIFE`] for the file named `f`, then `g`, then `h`;
/// returns the name it has after.
fn live<'a>(root: &Path, step: usize, [f, g, h]: &'a [String; 3]) -> std::io::Result<&'a String> {
    use std::os::unix::fs::PermissionsExt;
    match step {
        0 => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join(f))?;
            Ok(f)
        }
        1 => std::fs::rename(root.join(f), root.join(g)).map(|()| g),
        2 => std::fs::set_permissions(root.join(g), std::fs::Permissions::from_mode(0o600))
            .map(|()| g),
        3 => std::fs::rename(root.join(g), root.join(h)).map(|()| h),
        _ => std::fs::remove_file(root.join(h)).map(|()| h),
    }
}

/// Two threads, `rate` events a second together for `duration`: each file
/// is created, renamed, chmod-ed, renamed again and removed, one event
/// each. Returns when
/// each (kind, "dNN/name") happened.
fn produce(
    root: &Path,
    rate: u64,
    duration: Duration,
) -> Result<HashMap<(String, String), Instant>> {
    const PRODUCERS: u64 = 2;
    const BURST: u64 = 40;
    let per_thread = (rate / PRODUCERS).max(1) as f64;
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let root = root.to_path_buf();
            std::thread::spawn(move || -> Result<Vec<((String, String), Instant)>> {
                let mut done = Vec::new();
                let start = Instant::now();
                let mut event = 0u64;
                let mut i = 0u64;
                while start.elapsed() < duration {
                    let dir = format!("d{:02}", (i as usize * 7 + t as usize * 13) % DIRS);
                    let names = ["f", "g", "h"].map(|n| format!("{dir}/{n}{t}-{i}"));
                    for (step, kind) in LIFE.iter().enumerate() {
                        // Paced in bursts: a sleep per event would cost
                        // more than the event.
                        if event.is_multiple_of(BURST) {
                            let due = start + Duration::from_secs_f64(event as f64 / per_thread);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        let path = live(&root, step, &names)
                            .with_context(|| format!("{kind} {}", names[0]))?;
                        done.push(((kind.to_string(), path.clone()), Instant::now()));
                        event += 1;
                    }
                    i += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut all = HashMap::new();
    for t in threads {
        let done = t
            .join()
            .map_err(|_| anyhow::anyhow!("a producer panicked"))??;
        all.extend(done);
    }
    Ok(all)
}
