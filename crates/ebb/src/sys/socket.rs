//! Passing fds over Unix sockets (`SCM_RIGHTS`), for the daemon's control
//! socket: `ebb release` hands the daemon the very file it holds under a
//! lease, which a new `open` could not do without breaking that lease.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Send `bytes` with `fd` attached (if any) in one `sendmsg(2)`. Short
/// writes are finished without the fd, which travels with the first byte.
pub fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    let mut rest = &bytes[sent..];
    while !rest.is_empty() {
        let n = sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(rest)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receive into `buf` with one `recvmsg(2)`, taking ownership of any fds
/// that came along (all but the first are closed). `Ok((0, None))` at EOF.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these fds in our table for this
            // message; nobody else has them, and each is taken once.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many fds in one message",
        ));
    }
    Ok((n, received.into_iter().next()))
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
}
