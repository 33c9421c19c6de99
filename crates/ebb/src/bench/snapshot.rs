//! `ebb bench snapshot`: what a snapshot of a fragmented file costs its
//! users, against one `FICLONE` of the same file in the same run.
//!
//! On a fresh loop-mounted XFS (or btrfs) it writes a file and punches out
//! every other 4 KiB block (one extent per 8 KiB), starts the daemon, and
//! while two probe processes do random 4 KiB writes and reads of the file,
//! clones it once with `FICLONE` and once with `ebb snapshot`. Reported:
//! each clone's time and the worst stall of the writer and of the reader
//! while it ran. Then 1% of the file is rewritten and `changed-ranges`
//! against the snapshot is timed against reading and comparing both files
//! (page cache dropped before each).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};

use super::{drop_caches, Daemon};
use crate::daemon::monotonic_ns;
use crate::testing::{write_fragmented, FsKind, LoopFs};
use crate::tree::Tree;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub size: u64,
    pub fs: FsKind,
    /// The `ebb` executable: the daemon, the probes and `ebb snapshot` run
    /// as real processes.
    pub exe: PathBuf,
}

/// The figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub fs: String,
    pub size: u64,
    pub extents: usize,
    pub ficlone_secs: f64,
    pub snapshot_secs: f64,
    /// Snapshot time over FICLONE time (goal ≤ 1.5).
    pub snapshot_vs_ficlone: f64,
    pub writer_stall_ficlone_ms: f64,
    pub writer_stall_snapshot_ms: f64,
    /// Worst writer stall under the snapshot over that under FICLONE
    /// (goal ≤ 0.01).
    pub writer_stall_ratio: f64,
    pub reader_stall_ficlone_ms: f64,
    pub reader_stall_snapshot_ms: f64,
    pub writes_during_snapshot: u64,
    pub snapshot_clone_calls: u64,
    pub snapshot_longest_clone_ms: f64,
    /// After rewriting 1% of the file in 4 KiB blocks:
    pub rewritten_bytes: u64,
    pub changed_ranges_secs: f64,
    pub changed_ranges_bytes: u64,
    pub read_and_compare_secs: f64,
    /// changed-ranges time over read-and-compare time.
    pub changed_ranges_vs_compare: f64,
}

pub fn run(opts: &Options) -> Result<Report> {
    let fs = LoopFs::new(opts.fs, (opts.size >> 20) * 3 + 400)?;
    let root = fs.path().join("tree");
    std::fs::create_dir(&root)?;
    let mut tree = Tree::init(&root, Some(&fs.scratch().join("store")))?;
    // The image is opened by its writer before the first snapshot, as a
    // running VM's would be: the daemon must watch from its start.
    tree.set_config(crate::tree::Config {
        mark_at_start: true,
        ..tree.config().clone()
    })?;
    let path = root.join("vm.img");
    write_fragmented(&path, opts.size, |at| (at >> 12) as u8 ^ 0x5a)?;
    let extents = crate::sys::extents::fiemap(File::open(&path)?.as_fd(), 0, u64::MAX)?.len();
    let daemon = Daemon::start(&opts.exe, &root)?;

    let baseline = root.join("vm.img@ficlone");
    let ficlone = with_probes(opts, &path, || {
        let src = File::open(&path)?;
        let dst = File::create(&baseline)?;
        crate::sys::extents::clone_range(src.as_fd(), 0, opts.size, dst.as_fd(), 0)
            .context("FICLONE")?;
        Ok(serde_json::Value::Null)
    })?;
    std::fs::remove_file(&baseline)?;

    let snap = root.join("vm.img@ebb");
    let ebb = with_probes(opts, &path, || {
        let out = Command::new(&opts.exe)
            .arg("snapshot")
            .arg(&path)
            .arg(&snap)
            .arg("--json")
            .output()
            .context("running ebb snapshot")?;
        if !out.status.success() {
            bail!(
                "ebb snapshot failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    })?;
    drop(daemon);

    let rewritten = rewrite_percent(&path, opts.size)?;
    drop_caches()?;
    let started = Instant::now();
    let ranges = crate::snapshot::changed_ranges(&snap, &path)?;
    let changed_ranges_secs = started.elapsed().as_secs_f64();
    drop_caches()?;
    let started = Instant::now();
    let differing = read_and_compare(&snap, &path)?;
    let read_and_compare_secs = started.elapsed().as_secs_f64();
    let changed: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    if differing > changed {
        bail!("changed-ranges reported {changed} bytes but {differing} bytes differ");
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Report {
        fs: format!("{:?}", opts.fs).to_lowercase(),
        size: opts.size,
        extents,
        ficlone_secs: ficlone.took.as_secs_f64(),
        snapshot_secs: ebb.took.as_secs_f64(),
        snapshot_vs_ficlone: ebb.took.as_secs_f64() / ficlone.took.as_secs_f64(),
        writer_stall_ficlone_ms: ms(ficlone.writer_stall),
        writer_stall_snapshot_ms: ms(ebb.writer_stall),
        writer_stall_ratio: ebb.writer_stall.as_secs_f64()
            / ficlone.writer_stall.as_secs_f64().max(1e-9),
        reader_stall_ficlone_ms: ms(ficlone.reader_stall),
        reader_stall_snapshot_ms: ms(ebb.reader_stall),
        writes_during_snapshot: ebb.writes,
        snapshot_clone_calls: ebb.result["clone_calls"].as_u64().unwrap_or(0),
        snapshot_longest_clone_ms: ebb.result["longest_clone_us"].as_f64().unwrap_or(0.0) / 1e3,
        rewritten_bytes: rewritten,
        changed_ranges_secs,
        changed_ranges_bytes: changed,
        read_and_compare_secs,
        changed_ranges_vs_compare: changed_ranges_secs / read_and_compare_secs,
    })
}

/// Wait until the filesystem at `dir` is done freeing what was removed:
/// synced, and its free block count still for half a second.
fn settle(dir: &Path) -> Result<()> {
    let free = || -> Result<u64> {
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&File::open(dir)?))?;
        Ok(nix::sys::statvfs::statvfs(dir)?.blocks_free())
    };
    let (mut last, deadline) = (free()?, Instant::now() + Duration::from_secs(120));
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = free()?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}

/// One clone with the probes running.
struct Measured {
    took: Duration,
    writer_stall: Duration,
    reader_stall: Duration,
    writes: u64,
    result: serde_json::Value,
}

fn with_probes(
    opts: &Options,
    path: &Path,
    clone: impl FnOnce() -> Result<serde_json::Value>,
) -> Result<Measured> {
    // Making the file, or freeing the last clone's shared extents, goes on
    // in the background (XFS inode inactivation) for seconds: it is neither
    // clone's cost.
    settle(path.parent().context("no parent")?)?;
    let writer = Probe::start(&opts.exe, path, true)?;
    let reader = Probe::start(&opts.exe, path, false)?;
    std::thread::sleep(Duration::from_millis(300));
    let (t0, started) = (monotonic_ns(), Instant::now());
    let result = clone();
    let (took, t1) = (started.elapsed(), monotonic_ns());
    std::thread::sleep(Duration::from_millis(200));
    let (writer_stall, writes) = writer.finish(t0, t1)?;
    let (reader_stall, _) = reader.finish(t0, t1)?;
    Ok(Measured {
        took,
        writer_stall,
        reader_stall,
        writes,
        result: result?,
    })
}

/// A probe process (`ebb bench probe`), started after the daemon so that
/// its writes can be held back.
struct Probe(Child);

impl Probe {
    fn start(exe: &Path, path: &Path, write: bool) -> Result<Probe> {
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "probe", "--path"]).arg(path);
        if write {
            cmd.arg("--write");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a probe")?;
        // It says "ready" once its file is open.
        let mut line = String::new();
        let out = child.stdout.as_mut().context("probe stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the probe did not start: {line:?}");
        }
        Ok(Probe(child))
    }

    /// Stop it; the worst latency of its operations that overlapped
    /// `[t0, t1]`, and how many of them there were.
    fn finish(mut self, t0: u64, t1: u64) -> Result<(Duration, u64)> {
        drop(self.0.stdin.take()); // EOF: stop
        let mut text = String::new();
        self.0
            .stdout
            .take()
            .context("probe stdout")?
            .read_to_string(&mut text)?;
        self.0.wait()?;
        let (mut worst, mut count) = (0u64, 0u64);
        for line in text.lines() {
            let mut f = line.split(' ').map(str::parse::<u64>);
            let (Some(Ok(start)), Some(Ok(end))) = (f.next(), f.next()) else {
                continue;
            };
            if end >= t0 && start <= t1 {
                worst = worst.max(end - start);
                count += 1;
            }
        }
        Ok((Duration::from_nanos(worst), count))
    }
}

/// `ebb bench probe`: random 4 KiB reads (or writes) of `path` until stdin
/// closes, then one "start_ns end_ns" line per operation on stdout.
pub fn probe(path: &Path, write: bool) -> Result<()> {
    use std::io::Write;
    let file = File::options()
        .read(true)
        .write(write)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let blocks = (file.metadata()?.len() / 4096).max(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut buf = vec![0x77u8; 4096];
    let mut log = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let at = rng.gen_range(0..blocks) * 4096;
        let start = monotonic_ns();
        if write {
            file.write_all_at(&buf, at)?;
        } else {
            file.read_exact_at(&mut buf, at)?;
        }
        log.push((start, monotonic_ns()));
        // Paced, as a busy VM's disk would be, not a flat-out loop.
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for (start, end) in log {
        writeln!(out, "{start} {end}")?;
    }
    Ok(())
}

/// Rewrite 1% of the file in random 4 KiB blocks; returns the bytes.
fn rewrite_percent(path: &Path, size: u64) -> Result<u64> {
    let file = File::options().write(true).open(path)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let blocks = size / 4096;
    let n = (blocks / 100).max(1);
    for _ in 0..n {
        file.write_all_at(&[0xee; 4096], rng.gen_range(0..blocks) * 4096)?;
    }
    file.sync_all()?;
    Ok(n * 4096)
}

/// Read both files and count the bytes in differing 4 KiB blocks.
fn read_and_compare(a: &Path, b: &Path) -> Result<u64> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut differing = 0u64;
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n == 0 && m == 0 {
            return Ok(differing);
        }
        let len = n.max(m);
        for i in (0..len).step_by(4096) {
            let end = (i + 4096).min(len);
            if x.get(i..end.min(n)) != y.get(i..end.min(m)) {
                differing += (end - i) as u64;
            }
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
