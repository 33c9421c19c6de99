//! The service manager's side of a daemon's life (sd_notify(3),
//! sd_listen_fds(3)), through the `sd-notify` crate: readiness, and the fd
//! store, where fds a process must not lose outlive it (systemd passes
//! them back to the next start as `LISTEN_FDS`). Outside a service manager
//! (`NOTIFY_SOCKET` unset) every call does nothing.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

/// Whether a service manager listens to this process.
pub fn is_managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The fds the service manager passed at start, with their names
/// (`LISTEN_FDS`, `LISTEN_FDNAMES`; only if `LISTEN_PID` is this process).
/// They are this process's from here on: a second call gets none.
pub fn take_passed_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let passed = sd_notify::listen_fds_with_names()?;
    Ok(passed
        // SAFETY: the manager opened these fds for this process (LISTEN_PID
        // is ours) and nothing else in it owns them: they are taken once,
        // here (`TAKEN`).
        .map(|(fd, name)| (name, unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect())
}

/// Keep `fd` in the manager's fd store under `name` (`FDSTORE=1`). Never
/// dropped because it polls readable or hung up (`FDPOLL=0`); storing the
/// same open file again keeps one copy.
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    sd_notify::notify_with_fds(
        &[
            NotifyState::FdStore,
            NotifyState::FdName(name),
            NotifyState::Custom("FDPOLL=0"),
        ],
        &[fd],
    )
}

/// Drop the fds stored under `name` (`FDSTOREREMOVE=1`).
pub fn remove_fds(name: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
}

/// `READY=1`, with a status line.
pub fn notify_ready(status: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)])
}

/// `STOPPING=1`, with a status line.
pub fn notify_stopping(status: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(status)])
}
