//! The process's fd table as state: after a crash, the fd numbers of events
//! the dead daemon read but did not answer are still what the kernel
//! matches answers by, so a new daemon keeps them from being handed out
//! again until it has answered them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Whether `fd` is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of a descriptor number.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Occupy the free fd number `number` with a placeholder (`/dev/null`), so
/// the kernel cannot give it to a new event. `Ok(None)` if the number is
/// already open here (then it is not free to reserve).
pub fn reserve(number: RawFd) -> io::Result<Option<OwnedFd>> {
    if number < 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    if is_open(number) {
        return Ok(None);
    }
    let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
    if null.as_raw_fd() == number {
        return Ok(Some(null)); // it was the lowest free number
    }
    // SAFETY: `number` is not open in this process (checked above; the
    // caller runs this before any other thread opens files), so dup3 does
    // not close anything anyone owns.
    let rc = unsafe { libc::dup3(null.as_raw_fd(), number, libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup3 just installed `number`; nobody else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(number) }))
}

/// Move `fd` to the lowest free number at or above `min` (`F_DUPFD_CLOEXEC`),
/// out of the way of numbers that must be reserved.
pub fn move_above(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor of an open one.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Raise the soft limit on open files to the hard limit (a daemon holds an
/// fd per pending event); returns the new limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_number_stays_taken_until_released() {
        // Test threads open files concurrently, so use a number far above
        // what they reach rather than "the lowest free one".
        let number = 700;
        let held = reserve(number).expect("reserve").expect("it was free");
        assert_eq!(held.as_raw_fd(), number);
        assert!(is_open(number));
        assert!(reserve(number).expect("again").is_none(), "taken now");
        drop(held);
        assert!(!is_open(number));
        let moved = move_above(
            OwnedFd::from(std::fs::File::open("/dev/null").expect("open")),
            900,
        )
        .expect("move");
        assert!(moved.as_raw_fd() >= 900);
        assert!(raise_open_file_limit().expect("rlimit") >= 1024);
    }
}
