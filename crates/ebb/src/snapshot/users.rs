//! Who is using a file, from `/proc`: the writers a point-in-time snapshot
//! cannot hold back, and whether a blocked process is cutting a file short.
//!
//! A snapshot holds writers back through pre-content events, which reach
//! ebb only for fds opened while its filesystem mark existed, and, for a
//! shared writable mapping, only when the mapping is made. So before it
//! starts, it looks for the two kinds of writer it could not stop.

use std::os::unix::fs::MetadataExt;

/// A process, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`
/// field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Now, in the unit of [`start_time`]: clock ticks since boot.
pub fn now_ticks() -> std::io::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
    // /proc reports start times in USER_HZ, 100 on every Linux ABI.
    Ok(now.tv_sec() as u64 * 100 + now.tv_nsec() as u64 / 10_000_000)
}

/// Processes with a shared, writable mapping of the file `(dev, ino)`: their
/// stores through it raise no event ebb could hold back.
pub fn shared_writable_mappers(dev: u64, ino: u64) -> Vec<Proc> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want_dev = format!("{major:02x}:{minor:02x}");
    let want_ino = ino.to_string();
    pids()
        .filter(|&pid| {
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                return false;
            };
            maps.lines().any(|line| {
                let mut f = line.split_whitespace();
                let perms = f.nth(1).unwrap_or("");
                let (dev, ino) = (f.nth(1), f.next());
                perms.starts_with("rw")
                    && perms.ends_with('s')
                    && dev == Some(want_dev.as_str())
                    && ino == Some(want_ino.as_str())
            })
        })
        .map(|pid| Proc {
            pid,
            comm: comm(pid),
        })
        .collect()
}

/// Processes started before `since` (clock ticks since boot) that hold the
/// file `(dev, ino)` open for writing: the fd may predate ebb's mark, and
/// then its writes raise no event. (A process started later cannot hold
/// such an fd unless it inherited one; that case is not seen.)
pub fn old_writers(dev: u64, ino: u64, since: u64) -> Vec<Proc> {
    pids()
        .filter(|&pid| start_time(pid).is_some_and(|t| t < since))
        .filter(|&pid| holds_for_writing(pid, dev, ino))
        .map(|pid| Proc {
            pid,
            comm: comm(pid),
        })
        .collect()
}

fn holds_for_writing(pid: u32, dev: u64, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let same = std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        same && fd_flags(pid, &fd.file_name().to_string_lossy())
            .is_some_and(|f| f & libc::O_ACCMODE != libc::O_RDONLY)
    })
}

fn fd_flags(pid: u32, fd: &str) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(flags.trim(), 8).ok()
}

/// Whether process `pid` may write the file `(dev, ino)`: it has it open
/// for writing, or has an io_uring (whose registered files are not in the
/// fd table), or cannot be looked at. A process that only reads it cannot
/// change it (a truncate by path is [`may_be_truncating`]'s to see).
pub fn may_write(pid: u32, dev: u64, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    fds.flatten().any(|fd| {
        let ring = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:[io_uring]");
        ring || (std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
            && fd_flags(pid, &fd.file_name().to_string_lossy())
                .is_none_or(|f| f & libc::O_ACCMODE != libc::O_RDONLY))
    })
}

/// Syscalls that may cut a file short or move its data: a pre-content
/// event reports only the offset they start at, so the whole rest of the
/// file must be cloned before they go on. `io_uring_enter` is in because
/// a ring can do any of them.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const TRUNCATE: &[i64] = &[76, 77, 85, 285, 437, 426]; // truncate ftruncate creat fallocate openat2 io_uring_enter
    pub const OPEN: i64 = 2;
    pub const OPENAT: i64 = 257;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const TRUNCATE: &[i64] = &[45, 46, 47, 437, 426]; // truncate ftruncate fallocate openat2 io_uring_enter
    pub const OPEN: i64 = -1; // aarch64 has only openat
    pub const OPENAT: i64 = 56;
}

/// Whether any thread of process `pid` is in a syscall that may truncate
/// or shift a file (see [`nr::TRUNCATE`]), or an open with `O_TRUNC`.
/// Errs on the side of yes when a thread cannot be read.
pub fn may_be_truncating(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().any(|task| {
        let Ok(call) = std::fs::read_to_string(task.path().join("syscall")) else {
            return false; // the thread is gone
        };
        let mut fields = call.split_whitespace();
        let Some(Ok(nr)) = fields.next().map(str::parse::<i64>) else {
            return false; // "running": not blocked in our event
        };
        let args: Vec<u64> = fields
            .take(6)
            .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .collect();
        let flags = match nr {
            n if n == nr::OPEN => args.get(1),
            n if n == nr::OPENAT => args.get(2),
            n => return nr::TRUNCATE.contains(&n),
        };
        flags.is_some_and(|f| f & libc::O_TRUNC as u64 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_shared_writable_mapping_and_an_open_writer_are_seen() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 8192]).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert!(shared_writable_mappers(meta.dev(), meta.ino()).is_empty());
        let reader = std::fs::File::open(&path).expect("open for reading");
        assert!(
            !may_write(std::process::id(), meta.dev(), meta.ino()),
            "a reader only"
        );
        drop(reader);
        let mut mapper = std::process::Command::new("python3")
            .arg("-c")
            .arg("import mmap,sys,time; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),0); print(1,flush=True); time.sleep(30)")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(mapper.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("mapped");
        let seen = shared_writable_mappers(meta.dev(), meta.ino());
        let _ = mapper.kill();
        let _ = mapper.wait();
        assert!(seen.iter().any(|p| p.pid == mapper.id()), "{seen:?}");

        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing");
        let me = std::process::id();
        assert!(may_write(me, meta.dev(), meta.ino()));
        let started = start_time(me).expect("own start time");
        let now = now_ticks().expect("now");
        assert!(
            started <= now && now < started + 100 * 3600,
            "{started} vs {now}"
        );
        assert!(old_writers(meta.dev(), meta.ino(), started).is_empty());
        let seen = old_writers(meta.dev(), meta.ino(), started + 1);
        assert!(seen.iter().any(|p| p.pid == me), "{seen:?}");
    }

    #[test]
    fn a_sleeping_process_is_not_cutting_and_an_unreadable_one_counts_as_cutting() {
        let sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = sleeper.id();
        assert!(!may_be_truncating(pid));
        let mut sleeper = sleeper;
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(
            may_be_truncating(u32::MAX - 1),
            "an unreadable process counts as cutting"
        );
    }
}
