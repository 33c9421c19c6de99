//! `ebb bench failover`: readers of released files while the daemon is
//! killed over and over.
//!
//! On a fresh loop-mounted XFS: released files of random content, readers
//! that check every byte they get (in-process `pread` at random offsets
//! and sizes, `sha256sum` processes, `mmap` through python3), and a
//! supervisor that SIGKILLs the daemon every `kill_every` (or starts it
//! with `EBB_TEST_CRASH` so it aborts at a chosen point of event handling)
//! and starts it again. Passing means: every read exact, no error, and no
//! reader still blocked shortly after the last restart.
//!
//! Takeover time is measured from the SIGKILL to the moment the restarted
//! daemon reports it serves, which is after it has answered every event
//! its predecessor left.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, RngCore, SeedableRng};

use super::{is_alive, quantile, start_daemon, stop_daemon, stop_keeper, Pid};
use crate::hsm::{self, NoProgress};
use crate::testing::LoopFs;
use crate::tree::Tree;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub files: usize,
    pub file_size: u64,
    pub readers: usize,
    pub duration: Duration,
    pub kill_every: Duration,
    /// The `ebb` executable (daemons are real processes).
    pub exe: PathBuf,
}

/// What happened.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub files: usize,
    pub file_size: u64,
    pub readers: usize,
    /// Daemons killed with SIGKILL, and daemons that aborted themselves at
    /// a crash point.
    pub kills: usize,
    pub crash_points: usize,
    /// Reads checked byte for byte (or by hash), and the bytes they held.
    pub reads_checked: u64,
    pub bytes_checked: u64,
    /// Reads that failed or returned wrong bytes; must be 0.
    pub errors: u64,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    /// Events a restarted daemon found unanswered and served, in all.
    pub redriven: u64,
    /// Files released again between restarts (stubs kept coming): with
    /// none, the readers would only have read resident files.
    pub rereleased: u64,
    pub takeover_p50_ms: f64,
    pub takeover_p99_ms: f64,
    pub takeover_max_ms: f64,
    /// Longest wait, after the last restart, for the readers to finish.
    pub final_drain_ms: f64,
}

const CRASH_POINTS: [&str; 3] = ["after-read", "after-fill", "before-answer"];

/// How long one read may take before it counts as blocked.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(opts: &Options) -> Result<Report> {
    let fs = LoopFs::xfs(((opts.files as u64 * opts.file_size) >> 20) * 2 + 300)?;
    let root = fs.path().join("tree");
    std::fs::create_dir(&root)?;
    let tree = Tree::init(&root, Some(&fs.scratch().join("store")))?;
    let files = make_files(&root, opts)?;
    let mut catalog = tree.catalog()?;
    let store = tree.store()?;
    for f in &files {
        hsm::archive(&tree, &mut catalog, &store, &f.path, &NoProgress)?;
    }
    // Released while a daemon serves the tree (release refuses otherwise).
    let mut daemon = start_daemon(&opts.exe, &root, None)?;
    for f in &files {
        hsm::release(&tree, &mut catalog, &store, &f.path)?;
    }
    let stop = AtomicBool::new(false);
    let counters = Counters::default();
    let mut report = Report {
        files: opts.files,
        file_size: opts.file_size,
        readers: opts.readers,
        ..Report::default()
    };
    let mut takeovers = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfa11);
    let (supervised, drain) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..opts.readers)
            .map(|i| {
                let (files, stop, counters) = (&files, &stop, &counters);
                s.spawn(move || reader(i, files, stop, counters))
            })
            .collect();
        let supervised = supervise(
            opts,
            &root,
            &files,
            &mut daemon,
            &mut report,
            &mut takeovers,
            &mut rng,
        );
        // Whatever happened, the readers get a daemon that stays, and stop.
        if !is_alive(daemon) {
            match start_daemon(&opts.exe, &root, None) {
                Ok(pid) => daemon = pid,
                Err(e) => tracing::error!("no daemon for the readers to finish with: {e:#}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let last = Instant::now();
        let joined = readers.into_iter().all(|r| r.join().is_ok());
        (
            supervised.and_then(|()| {
                if joined {
                    Ok(())
                } else {
                    bail!("a reader thread panicked")
                }
            }),
            last.elapsed(),
        )
    });
    stop_daemon(daemon);
    stop_keeper(&root);
    supervised?;

    report.reads_checked = counters.reads.load(Ordering::Relaxed);
    report.bytes_checked = counters.bytes.load(Ordering::Relaxed);
    report.errors = counters.errors.load(Ordering::Relaxed);
    report.error_samples = counters
        .samples
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    report.redriven = redriven_in_log(&tree.log_path());
    takeovers.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report.takeover_p50_ms = ms(quantile(&takeovers, 0.5));
    report.takeover_p99_ms = ms(quantile(&takeovers, 0.99));
    report.takeover_max_ms = ms(takeovers.last().copied().unwrap_or_default());
    report.final_drain_ms = ms(drain);
    Ok(report)
}

/// Kill and restart the daemon until the time is up; the last daemon
/// started runs without a crash point.
/// SIGKILL, then wait until the process is gone (it is not our child).
fn kill(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    while is_alive(pid) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn supervise(
    opts: &Options,
    root: &Path,
    files: &[TestFile],
    daemon: &mut Pid,
    report: &mut Report,
    takeovers: &mut Vec<Duration>,
    rng: &mut impl Rng,
) -> Result<()> {
    let deadline = Instant::now() + opts.duration;
    loop {
        std::thread::sleep(opts.kill_every);
        let last = Instant::now() >= deadline;
        let crash = (!last && rng.gen_bool(0.3)).then(|| {
            let point = CRASH_POINTS[rng.gen_range(0..CRASH_POINTS.len())];
            format!("{point}:{}", rng.gen_range(1..20))
        });
        if is_alive(*daemon) {
            kill(*daemon);
            report.kills += 1;
        } else {
            report.crash_points += 1; // it aborted at its crash point
        }
        let started = Instant::now();
        *daemon = start_daemon(&opts.exe, root, crash.as_deref())?;
        takeovers.push(started.elapsed());
        if last {
            return Ok(());
        }
        // Keep stubs coming: release a few files each time (one in use is
        // busy, one already released unchanged; that is fine).
        let mut release = Command::new(&opts.exe);
        release.args(["release", "--json"]);
        for _ in 0..4 {
            release.arg(&files[rng.gen_range(0..files.len())].path);
        }
        let out = release.output().context("running ebb release")?;
        report.rereleased += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["result"] == "released")
            })
            .count() as u64;
    }
}

struct TestFile {
    path: PathBuf,
    data: Vec<u8>,
    sha256: String,
}

fn make_files(root: &Path, opts: &Options) -> Result<Vec<TestFile>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(64);
    (0..opts.files)
        .map(|i| {
            let path = root.join(format!("f{i:03}.bin"));
            let mut data = vec![0u8; usize::try_from(opts.file_size)?];
            rng.fill_bytes(&mut data);
            std::fs::write(&path, &data)?;
            let sha256 = sha256sum(&path)?;
            Ok(TestFile { path, data, sha256 })
        })
        .collect()
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn record(&self, result: Result<u64>) {
        match result {
            Ok(bytes) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut s) = self.samples.lock() {
                    if s.len() < 10 {
                        s.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
}

/// Reader `i`: half read at random offsets and sizes in-process, a quarter
/// run `sha256sum`, a quarter read through `mmap` in python3.
fn reader(i: usize, files: &[TestFile], stop: &AtomicBool, counters: &Counters) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    while !stop.load(Ordering::Relaxed) {
        let f = &files[rng.gen_range(0..files.len())];
        let result = match i % 4 {
            0 | 1 => random_read(f, &mut rng),
            2 => whole_by(f, &["sha256sum"]),
            _ => whole_by(f, &["python3", "-c", MMAP_SHA256]),
        };
        counters.record(result.with_context(|| format!("reader {i} on {}", f.path.display())));
    }
}

const MMAP_SHA256: &str = "import hashlib, mmap, sys\n\
f = open(sys.argv[1], 'rb')\n\
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n\
print(hashlib.sha256(m).hexdigest(), sys.argv[1])";

fn random_read(f: &TestFile, rng: &mut impl Rng) -> Result<u64> {
    let size = f.data.len();
    let len = rng.gen_range(1..=size.min(1 << 20));
    let off = rng.gen_range(0..=size - len);
    let file = std::fs::File::open(&f.path)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off as u64)?;
    if buf != f.data[off..off + len] {
        let at = buf
            .iter()
            .zip(&f.data[off..])
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        bail!(
            "wrong bytes at {} (read {off}+{len}; got {:#x})",
            off + at,
            buf[at]
        );
    }
    Ok(len as u64)
}

fn whole_by(f: &TestFile, argv: &[&str]) -> Result<u64> {
    let out = Command::new("timeout")
        .arg(READ_TIMEOUT.as_secs().to_string())
        .args(argv)
        .arg(&f.path)
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            argv[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let got = String::from_utf8_lossy(&out.stdout);
    if got.split_whitespace().next() != Some(f.sha256.as_str()) {
        bail!("{} saw other bytes: {}", argv[0], got.trim());
    }
    Ok(f.data.len() as u64)
}

fn sha256sum(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Sum of "took over: K event(s) redriven" over the daemon log.
fn redriven_in_log(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("took over: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
