//! `ebb bench`: measurements against a baseline taken in the same run.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::bench::{self, failover, journal, populate, remote, snapshot};
use crate::testing::FsKind;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Cold reads of a released file against reads of the resident file.
    ///
    /// Makes a loop-mounted XFS under /var/tmp (needs root, xfsprogs and
    /// twice SIZE of free space), writes SIZE random bytes, and measures:
    /// a cold sequential read released vs resident (page cache dropped; the
    /// median of --repeats runs), a
    /// warm read under the daemon's mark vs no daemon, and first-touch
    /// random 4 KiB reads (p50/p99). Everything is removed afterwards.
    Populate {
        /// Size of the file, e.g. 64MiB or 1GiB.
        #[arg(long, default_value = "1GiB", value_parser = bench::parse_size)]
        size: u64,
        /// Number of first-touch random 4 KiB reads.
        #[arg(long, default_value_t = 1000)]
        random_reads: usize,
        /// Sequential reads are repeated this often: the median of the cold
        /// ones and the best of the warm ones count.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Readers of released files while the daemon is killed again and
    /// again; fails (exit 1) if any read was wrong, failed or stayed blocked.
    ///
    /// Makes a loop-mounted XFS under /var/tmp (needs root, xfsprogs and
    /// python3), FILES released files of random content, READERS readers
    /// (pread at random offsets and sizes, sha256sum, mmap) checking every
    /// byte, and SIGKILLs the daemon every KILL_EVERY_MS (three times in ten
    /// it starts it with a crash point inside event handling instead) and
    /// starts it again. Reports the takeover time (kill to serving again,
    /// predecessor's events answered) and the events redriven.
    Failover {
        #[arg(long, default_value_t = 64)]
        files: usize,
        /// Size of each file, e.g. 4MiB.
        #[arg(long, default_value = "4MiB", value_parser = bench::parse_size)]
        file_size: u64,
        #[arg(long, default_value_t = 8)]
        readers: usize,
        /// How long to keep killing, in seconds.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Time between kills, in milliseconds.
        #[arg(long, default_value_t = 100)]
        kill_every_ms: u64,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A snapshot of a fragmented file in use, against one FICLONE.
    ///
    /// Makes a loop-mounted filesystem under /var/tmp (needs root and
    /// three times SIZE of free space), writes SIZE bytes and punches out
    /// every other 4 KiB block (SIZE/8 KiB extents), starts the daemon, and
    /// while a writer and a reader process do random 4 KiB I/O on the
    /// file, clones it once with FICLONE (as cp --reflink does) and once
    /// with `ebb snapshot`. Reports both times and the worst writer and
    /// reader stalls; then rewrites 1% of the file and times
    /// `changed-ranges` against reading and comparing both files.
    Snapshot {
        /// Size of the file, e.g. 256MiB or 2GiB.
        #[arg(long, default_value = "2GiB", value_parser = bench::parse_size)]
        size: u64,
        /// Filesystem to run on.
        #[arg(long, default_value = "xfs", value_parser = ["xfs", "btrfs"])]
        fs: String,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The change journal: ingest, git status with the hook, restart.
    ///
    /// Makes loop-mounted XFS filesystems under /var/tmp (needs root, git,
    /// and about 8 KiB of free space per file). Ingest: two producers
    /// create, write and rename FILES files each, seen by a bare fanotify
    /// reader that only counts, and through the daemon's journal until
    /// `ebb changes` names every path; RUNS times each, each run on a
    /// fresh filesystem, in the order bare, journal, journal, bare, bare,
    /// journal, …, after one untimed bare run, the means compared (times
    /// for the same work, as events/s).
    /// Before each timed run the same producers make PREFILL files each
    /// (the journal records them): a journal in use, not a new one. Then
    /// `git status` in a repository of REPO_FILES files (a few changed),
    /// warm (best of 10) and cold (median of 5, caches dropped): no
    /// fsmonitor, a trivial hook that answers "nothing changed", ebb's
    /// hook. Then the time to an exact answer after a restart (the crawl)
    /// against reading and hashing every file.
    Journal {
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        #[arg(long, default_value_t = 100_000)]
        repo_files: usize,
        /// Files each producer makes before each timed ingest run [default:
        /// FILES].
        #[arg(long)]
        prefill: Option<usize>,
        /// Timed ingest runs per side (one run differs from the next by up
        /// to 15–25% on a busy machine: more runs, a steadier ratio).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// Remote notification: many subscribers over loopback, checked
    /// against the journal; fails (exit 1) if any subscriber's events are
    /// not exactly its filter's share of the journal.
    ///
    /// Makes a loop-mounted XFS under /var/tmp (needs root), a daemon and
    /// an `ebb serve` on loopback. Two producers make RATE journal events a
    /// second for SECONDS (files created, renamed, chmod-ed and removed in
    /// 25 directories); SUBSCRIBERS subscriptions, each on one directory
    /// and one set of kinds (a few percent of the events), five of them
    /// dropping their connection halfway and resuming from their last
    /// token. Reports events delivered a second and the delivery latency
    /// (p50/p99), then the time to replay the whole run over the network
    /// against `ebb changes --since` locally.
    Remote {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Journal events a second, all producers together.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Internal: random 4 KiB I/O on a file for `bench snapshot`.
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        path: std::path::PathBuf,
        #[arg(long)]
        write: bool,
    },
}

pub fn run(which: Bench) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the ebb executable")?;
    match which {
        Bench::Failover {
            files,
            file_size,
            readers,
            seconds,
            kill_every_ms,
            json,
        } => {
            let opts = failover::Options {
                files,
                file_size,
                readers,
                duration: std::time::Duration::from_secs_f64(seconds),
                kill_every: std::time::Duration::from_millis(kill_every_ms),
                exe,
            };
            let r = failover::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_failover(&r);
            }
            Ok(if r.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Bench::Snapshot { size, fs, json } => {
            let opts = snapshot::Options {
                size,
                fs: if fs == "btrfs" {
                    FsKind::Btrfs
                } else {
                    FsKind::Xfs
                },
                exe,
            };
            let r = snapshot::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_snapshot(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        Bench::Journal {
            files,
            repo_files,
            prefill,
            runs,
            json,
        } => {
            let r = journal::run(&journal::Options {
                files,
                repo_files,
                prefill: prefill.unwrap_or(files),
                runs: runs as usize,
                exe,
            })?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_journal(&r);
            }
            Ok(if r.lost == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Bench::Remote {
            subscribers,
            rate,
            seconds,
            json,
        } => {
            let r = remote::run(&remote::Options {
                subscribers,
                rate,
                seconds,
                exe,
            })?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_remote(&r);
            }
            Ok(if r.mismatched == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Bench::Probe { path, write } => {
            snapshot::probe(&path, write)?;
            Ok(ExitCode::SUCCESS)
        }
        Bench::Populate {
            size,
            random_reads,
            repeats,
            json,
        } => {
            let opts = populate::Options {
                size,
                random_reads,
                repeats,
                exe,
            };
            let r = populate::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_populate(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_populate(r: &populate::Report) {
    let mib = r.size as f64 / f64::from(1 << 20);
    println!(
        "populate: {mib:.0} MiB of random bytes, {} chunks, local store",
        r.chunks
    );
    println!(
        "  archive                {:>8.3} s  ({:.0} MiB/s)",
        r.archive_secs,
        mib / r.archive_secs
    );
    println!(
        "  cold sequential read   resident {:.3} s ({:.0} MiB/s), released {:.3} s ({:.0} MiB/s)",
        r.cold_resident_secs,
        mib / r.cold_resident_secs,
        r.cold_released_secs,
        mib / r.cold_released_secs
    );
    println!(
        "    released/resident throughput: {:.2}x (goal >= 0.5x)",
        r.cold_released_vs_resident
    );
    println!(
        "  warm read              no daemon {:.4} s, under the mark {:.4} s",
        r.warm_no_daemon_secs, r.warm_under_mark_secs
    );
    println!(
        "    under mark/no daemon time:    {:.3}x (goal <= 1.05x)",
        r.warm_under_mark_vs_no_daemon
    );
    println!(
        "  first-touch 4 KiB reads ({}): resident p50 {:.0} us p99 {:.0} us; released p50 {:.0} us p99 {:.0} us",
        r.random_reads,
        r.random_resident_p50_us,
        r.random_resident_p99_us,
        r.random_released_p50_us,
        r.random_released_p99_us
    );
}

fn print_failover(r: &failover::Report) {
    println!(
        "failover: {} released files of {} KiB, {} readers",
        r.files,
        r.file_size >> 10,
        r.readers
    );
    println!(
        "  daemon killed {} times (SIGKILL) and {} times at a crash point",
        r.kills, r.crash_points
    );
    println!(
        "  reads checked {} ({} MiB); errors {}",
        r.reads_checked,
        r.bytes_checked >> 20,
        r.errors
    );
    for e in &r.error_samples {
        println!("    {e}");
    }
    println!("  events redriven by a restarted daemon: {}", r.redriven);
    println!(
        "  takeover (kill to serving again): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.takeover_p50_ms, r.takeover_p99_ms, r.takeover_max_ms
    );
    println!(
        "  readers done {:.0} ms after the last restart",
        r.final_drain_ms
    );
}

fn print_snapshot(r: &snapshot::Report) {
    println!(
        "snapshot: {} MiB on {}, {} extents, a writer and a reader doing random 4 KiB I/O",
        r.size >> 20,
        r.fs,
        r.extents
    );
    println!(
        "  FICLONE        {:>8.3} s; worst writer stall {:>8.1} ms, reader {:>6.1} ms",
        r.ficlone_secs, r.writer_stall_ficlone_ms, r.reader_stall_ficlone_ms
    );
    println!(
        "  ebb snapshot   {:>8.3} s; worst writer stall {:>8.1} ms, reader {:>6.1} ms ({} clone calls, longest {:.1} ms; {} writes went on meanwhile)",
        r.snapshot_secs,
        r.writer_stall_snapshot_ms,
        r.reader_stall_snapshot_ms,
        r.snapshot_clone_calls,
        r.snapshot_longest_clone_ms,
        r.writes_during_snapshot
    );
    println!(
        "    time snapshot/FICLONE {:.2}x (goal <= 1.5x); writer stall snapshot/FICLONE {:.4}x (goal <= 0.01x)",
        r.snapshot_vs_ficlone, r.writer_stall_ratio
    );
    println!(
        "  after rewriting {} KiB (1%): changed-ranges {:.3} s ({} KiB flagged) vs read and compare {:.3} s: {:.4}x",
        r.rewritten_bytes >> 10,
        r.changed_ranges_secs,
        r.changed_ranges_bytes >> 10,
        r.read_and_compare_secs,
        r.changed_ranges_vs_compare
    );
}

fn print_journal(r: &journal::Report) {
    println!("journal: {} events from two producers", r.events);
    println!(
        "  ingest: bare reader {:.0} events/s, journal complete {:.0} events/s: {:.2}x (goal >= 0.9x), {} lost",
        r.bare_events_per_sec, r.journal_events_per_sec, r.journal_vs_bare, r.lost
    );
    println!(
        "    journal's time: producers {:.2} s, then the recorder's backlog {:.2} s, then the answer {:.2} s",
        r.journal_produce_secs, r.journal_backlog_secs, r.journal_answer_secs
    );
    let secs = |runs: &[f64]| {
        runs.iter()
            .map(|s| format!("{s:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "    runs (after {} files each made before; means compared): bare {}; journal {}",
        r.prefill_files,
        secs(&r.bare_runs_secs),
        secs(&r.journal_runs_secs)
    );
    println!(
        "  git status, {} files, warm: plain {:.1} ms, trivial hook {:.1} ms, ebb hook {:.1} ms: {:.2}x (goal <= 1.3x)",
        r.repo_files,
        r.status_warm_plain_ms,
        r.status_warm_trivial_ms,
        r.status_warm_ebb_ms,
        r.status_warm_ebb_vs_trivial
    );
    println!(
        "  git status, cold: plain {:.1} ms, trivial hook {:.1} ms, ebb hook {:.1} ms: {:.2}x (goal <= 1.3x)",
        r.status_cold_plain_ms, r.status_cold_trivial_ms, r.status_cold_ebb_ms, r.status_cold_ebb_vs_trivial
    );
    println!(
        "  restart: exact answer after {:.3} s (crawl) vs reading and hashing every file {:.3} s",
        r.restart_repair_secs, r.full_hash_crawl_secs
    );
}

fn print_remote(r: &remote::Report) {
    println!(
        "remote: {} subscribers, {} changes made, {} journal events ({:.0}/s)",
        r.subscribers, r.produced_events, r.journal_events, r.journal_events_per_sec
    );
    println!(
        "  delivered {} events ({:.0}/s), {} subscribers resumed mid-run, {} not exact (goal 0)",
        r.deliveries, r.deliveries_per_sec, r.resumed, r.mismatched
    );
    println!(
        "  latency from the syscall to the subscriber: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    println!(
        "  replay of {} events: remote {:.3} s vs ebb changes locally {:.3} s: {:.2}x",
        r.replay_events, r.remote_replay_secs, r.local_changes_secs, r.remote_vs_local
    );
}
