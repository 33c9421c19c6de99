//! Passing fds over Unix sockets (`SCM_RIGHTS`): for the daemon's control
//! socket (`ebb release` hands the daemon the very file it holds under a
//! lease, which a new `open` could not do without breaking that lease) and
//! for the keeper, which holds the daemon's fanotify group across crashes.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};

/// Most fds [`recv_with_fd`] accepts in one message (any beyond the first
/// are closed).
const SINGLE_FD_ROOM: usize = 4;

/// Send `bytes` with `fd` attached (if any) in one `sendmsg(2)`. Short
/// writes are finished without the fd, which travels with the first byte.
pub fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    send_with_fds(sock, bytes, &fds)
}

/// Receive into `buf` with one `recvmsg(2)`, taking ownership of any fds
/// that came along (all but the first are closed). `Ok((0, None))` at EOF.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf, SINGLE_FD_ROOM)?;
    Ok((n, fds.into_iter().next()))
}

/// Send `bytes` with every fd of `fds` attached in one `sendmsg(2)` (none
/// if `fds` is empty). Short writes are finished without the fds, which
/// travel with the first byte. The kernel refuses more than 253 fds in one
/// message (`EINVAL`). Never raises `SIGPIPE`: a vanished peer is `EPIPE`.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let sent = loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut rest = &bytes[sent..];
    while !rest.is_empty() {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(rest)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => rest = &rest[other?..],
        }
    }
    Ok(())
}

/// Receive into `buf` with one `recvmsg(2)`, taking ownership of every fd
/// that came along (received close-on-exec, `MSG_CMSG_CLOEXEC`), at most
/// `max_fds` of them. `Ok((0, []))` at EOF.
///
/// A message that carried more fds than `max_fds` is an error
/// (`InvalidData`), after closing the fds that did arrive: the kernel has
/// already closed the ones that did not fit, so nothing leaks either way.
/// (This is why it is not `nix::sys::socket::recvmsg`, whose control
/// messages cannot be read once truncated: the fds that did arrive would
/// stay open, owned by nobody.)
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let room = max_fds
        .checked_mul(std::mem::size_of::<RawFd>())
        .and_then(|b| u32::try_from(b).ok())
        .filter(|&b| b < u32::MAX / 2)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many fds asked for"))?;
    let space_len = if max_fds == 0 {
        0
    } else {
        // SAFETY: CMSG_SPACE is arithmetic on its argument (`unsafe` in
        // `libc` only as the port of a C macro); no memory is touched.
        unsafe { libc::CMSG_SPACE(room) as usize }
    };
    // `u64`s, so the buffer is aligned for `struct cmsghdr`.
    let mut space = vec![0u64; space_len.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if space_len > 0 {
        hdr.msg_control = space.as_mut_ptr().cast();
        hdr.msg_controllen = space_len as _;
    }
    let n = loop {
        // SAFETY: `hdr` points at `iov` (which points at `buf`, writable for
        // `buf.len()` bytes) and at `space` (writable for `space_len`
        // bytes); all of them outlive the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut received = Vec::new();
    // SAFETY: the kernel set `msg_controllen` to the bytes it wrote at
    // `msg_control`: whole control messages, also when it truncated (it
    // then writes one `SCM_RIGHTS` header for the fds that fit). The
    // CMSG_* walk stays within those bytes; each fd in an `SCM_RIGHTS`
    // message was installed in our table for us alone and is taken once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            let head = std::ptr::read_unaligned(cmsg);
            if head.cmsg_level == libc::SOL_SOCKET && head.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data as usize - cmsg as usize;
                let count =
                    (head.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    received.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(received);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max_fds} fds came in one message (all were closed)"),
        ));
    }
    Ok((n, received))
}

/// The effective uid of the process at the other end of `sock`, as it was
/// when that process connected (`SO_PEERCRED`): the kernel's word, which
/// the peer cannot forge.
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    Ok(getsockopt(sock, sockopt::PeerCredentials)?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsFd;

    #[test]
    fn fd_crosses_a_socket_and_shares_the_open_file() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"shared").expect("write");
        send_with_fd(&a, b"hello\n", Some(file.as_fd())).expect("send");
        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello\n");
        let mut got = std::fs::File::from(fd.expect("an fd came along"));
        // Same open file description: the offset moves for both.
        got.seek(SeekFrom::Start(0)).expect("seek");
        let mut s = String::new();
        got.read_to_string(&mut s).expect("read");
        assert_eq!(s, "shared");
        assert_eq!(file.stream_position().expect("pos"), 6);

        send_with_fd(&a, b"no fd", None).expect("send");
        let (n, fd) = recv_with_fd(&b, &mut buf).expect("recv");
        assert_eq!((&buf[..n], fd.is_none()), (&b"no fd"[..], true));
        drop(a);
        assert_eq!(recv_with_fd(&b, &mut buf).expect("eof").0, 0);
    }

    #[test]
    fn many_fds_cross_in_one_message_close_on_exec() {
        let (a, b) = UnixStream::pair().expect("pair");
        let files: Vec<std::fs::File> = (0..3)
            .map(|i| {
                let mut f = tempfile::tempfile().expect("tempfile");
                write!(f, "file {i}").expect("write");
                f
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&a, b"three\n", &fds).expect("send");
        let mut buf = [0u8; 64];
        let (n, got) = recv_with_fds(&b, &mut buf, 16).expect("recv");
        assert_eq!(&buf[..n], b"three\n");
        assert_eq!(got.len(), 3);
        for (i, fd) in got.into_iter().enumerate() {
            let flags =
                nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
            assert_ne!(flags & libc::FD_CLOEXEC, 0, "fd {i} not close-on-exec");
            let mut f = std::fs::File::from(fd);
            f.seek(SeekFrom::Start(0)).expect("seek");
            let mut s = String::new();
            f.read_to_string(&mut s).expect("read");
            assert_eq!(s, format!("file {i}"), "fds arrive in order");
        }

        send_with_fds(&a, b"none", &[]).expect("send");
        let (n, got) = recv_with_fds(&b, &mut buf, 16).expect("recv");
        assert_eq!((&buf[..n], got.len()), (&b"none"[..], 0));
    }

    #[test]
    fn too_many_fds_is_an_error_and_none_leaks() {
        // Non-blocking read ends: EOF proves that no copy of the write end
        // is open anywhere; `WouldBlock` would be a leaked one.
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .expect("pipe")
        };
        let at_eof = |r: OwnedFd| {
            let mut byte = [0u8; 1];
            std::fs::File::from(r).read(&mut byte).map(|n| n == 0)
        };
        let (a, b) = UnixStream::pair().expect("pair");
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3).map(|_| pipe()).collect();
        let ends: Vec<BorrowedFd<'_>> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        send_with_fds(&a, b"x", &ends).expect("send");
        let mut buf = [0u8; 8];
        let err = recv_with_fds(&b, &mut buf, 1).expect_err("three fds, room for one");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        for (i, (r, w)) in pipes.into_iter().enumerate() {
            drop(w);
            assert!(at_eof(r).expect("read"), "pipe {i}");
        }

        // With no room at all the fd is refused, and closed, the same way.
        let (r, w) = pipe();
        send_with_fd(&a, b"y", Some(w.as_fd())).expect("send");
        drop(w);
        assert!(recv_with_fds(&b, &mut buf, 0).is_err());
        assert!(at_eof(r).expect("read"));
    }

    #[test]
    fn peer_uid_is_ours() {
        let (a, _b) = UnixStream::pair().expect("pair");
        assert_eq!(
            peer_uid(&a).expect("SO_PEERCRED"),
            nix::unistd::geteuid().as_raw()
        );
    }
}
