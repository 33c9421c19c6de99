//! `ebb bench populate`: what populate-on-access costs.
//!
//! On a fresh loop-mounted XFS, with a file of random bytes and a local
//! store on the root filesystem, it measures in one run:
//! - a cold sequential read of the released file against the same read of
//!   the resident file, page cache dropped before each;
//! - a warm read of a resident file under the daemon's filesystem mark
//!   against the same read with no daemon;
//! - first-touch random 4 KiB reads of the released file (p50/p99) against
//!   the same offsets of the resident file, cold.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, RngCore, SeedableRng};

use super::{drop_caches, quantile, read_sequentially, Daemon};
use crate::hsm::{self, NoProgress};
use crate::testing::LoopFs;
use crate::tree::Tree;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of the file read.
    pub size: u64,
    /// Number of first-touch random reads.
    pub random_reads: usize,
    /// The `ebb` executable, to start the daemon as a real process.
    pub exe: PathBuf,
    /// Each sequential read is repeated this often: the median of the cold
    /// reads and the best of the warm ones are kept.
    pub repeats: usize,
}

/// The figures, in seconds and ratios.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub size: u64,
    pub chunks: usize,
    pub archive_secs: f64,
    pub cold_resident_secs: f64,
    pub cold_released_secs: f64,
    /// Throughput of the cold released read relative to the cold resident
    /// read (1.0 = as fast; goal ≥ 0.5).
    pub cold_released_vs_resident: f64,
    pub warm_no_daemon_secs: f64,
    pub warm_under_mark_secs: f64,
    /// Time of the warm read under the mark relative to no daemon (goal
    /// ≤ 1.05).
    pub warm_under_mark_vs_no_daemon: f64,
    pub random_reads: usize,
    pub random_resident_p50_us: f64,
    pub random_resident_p99_us: f64,
    pub random_released_p50_us: f64,
    pub random_released_p99_us: f64,
}

pub fn run(opts: &Options) -> Result<Report> {
    let fs = LoopFs::xfs((opts.size >> 20) * 2 + 300)?;
    let root = fs.path().join("tree");
    std::fs::create_dir(&root)?;
    let tree = Tree::init(&root, Some(&fs.scratch().join("store")))?;
    let path = root.join("data");
    let want = write_random(&path, opts.size)?;

    let cold_resident = median_of(opts.repeats, || {
        drop_caches()?;
        read_sequentially(&path)
    })?;
    let offsets = random_offsets(opts.size, opts.random_reads);
    drop_caches()?;
    let random_resident = timed_reads(&path, &offsets)?;

    let mut catalog = tree.catalog()?;
    let store = tree.store()?;
    let started = Instant::now();
    let archived = hsm::archive(&tree, &mut catalog, &store, &path, &NoProgress)?;
    let archive_secs = started.elapsed().as_secs_f64();

    // Measured right before the daemon starts, not before archiving: the
    // archive's own reads and writes change how fast warm reads are.
    let warm_no_daemon = best_of(opts.repeats, || read_sequentially(&path))?;
    let daemon = Daemon::start(&opts.exe, &root)?;
    read_sequentially(&path)?; // the first read adds the ignore mark
    let warm_under_mark = best_of(opts.repeats, || read_sequentially(&path))?;
    let cold_released = median_of(opts.repeats, || {
        hsm::release(&tree, &mut catalog, &store, &path)?;
        drop_caches()?;
        let took = read_sequentially(&path)?;
        // What the reader read is in the page cache: a fill that handed
        // out wrong bytes (zeros would only look faster) fails the run.
        check_content(&path, &want)?;
        Ok(took)
    })?;

    hsm::release(&tree, &mut catalog, &store, &path)?;
    drop_caches()?;
    let random_released = timed_reads(&path, &offsets)?;
    check_content(&path, &want)?;
    drop(daemon);

    let secs = |d: Duration| d.as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Report {
        size: opts.size,
        chunks: archived.chunks,
        archive_secs,
        cold_resident_secs: secs(cold_resident),
        cold_released_secs: secs(cold_released),
        cold_released_vs_resident: secs(cold_resident) / secs(cold_released),
        warm_no_daemon_secs: secs(warm_no_daemon),
        warm_under_mark_secs: secs(warm_under_mark),
        warm_under_mark_vs_no_daemon: secs(warm_under_mark) / secs(warm_no_daemon),
        random_reads: offsets.len(),
        random_resident_p50_us: us(quantile(&random_resident, 0.5)),
        random_resident_p99_us: us(quantile(&random_resident, 0.99)),
        random_released_p50_us: us(quantile(&random_released, 0.5)),
        random_released_p99_us: us(quantile(&random_released, 0.99)),
    })
}

/// Write `size` random bytes; their hash.
fn write_random(path: &Path, size: u64) -> Result<blake3::Hash> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xebb);
    let mut file = std::fs::File::create(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64))?;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(hasher.finalize())
}

/// Fail unless the file at `path` holds the bytes hashed to `want`.
fn check_content(path: &Path, want: &blake3::Hash) -> Result<()> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    anyhow::ensure!(
        hasher.finalize() == *want,
        "{} read back other bytes than were written: the benchmark's figures mean nothing",
        path.display()
    );
    Ok(())
}

/// `count` distinct 4 KiB-aligned offsets spread over `size`, one per
/// stretch of the file, so each is a first touch of its chunk.
fn random_offsets(size: u64, count: usize) -> Vec<u64> {
    let pages = size / 4096;
    let count = (count as u64).min(pages).max(1);
    let stretch = pages / count;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut offsets: Vec<u64> = (0..count)
        .map(|i| (i * stretch + rng.gen_range(0..stretch.max(1))) * 4096)
        .collect();
    // Visit them in random order so readahead cannot help.
    for i in (1..offsets.len()).rev() {
        offsets.swap(i, rng.gen_range(0..=i));
    }
    offsets
}

/// Latency of a 4 KiB `pread` at each offset, sorted.
fn timed_reads(path: &Path, offsets: &[u64]) -> Result<Vec<Duration>> {
    let file = std::fs::File::open(path)?;
    let mut buf = [0u8; 4096];
    let mut samples = Vec::with_capacity(offsets.len());
    for &off in offsets {
        let start = Instant::now();
        file.read_exact_at(&mut buf, off)?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(samples)
}

fn median_of(n: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut times = (0..n.max(1)).map(|_| f()).collect::<Result<Vec<_>>>()?;
    times.sort();
    Ok(quantile(&times, 0.5))
}

fn best_of(n: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..n.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}
