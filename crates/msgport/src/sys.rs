//! Every call into the operating system, behind safe functions (through `rustix`): socket pairs,
//! sending and receiving bytes with descriptors attached (`SCM_RIGHTS`), descriptor limits.
//!
//! Contract: every descriptor this module creates or receives is close-on-exec (a copy leaked
//! into a child would hide the death of a port's peer), and sockets are non-blocking. Only
//! `OwnedFd` / `BorrowedFd` leave this module. Proven by the unit tests below.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The most descriptors one `sendmsg` carries (Linux's `SCM_MAX_FD` is 253).
pub(crate) const MAX_FDS_PER_SEND: usize = 253;

/// A connected pair of non-blocking, close-on-exec `AF_UNIX` stream sockets.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// The socket buffer size asked for on every port socket: large messages then move in few
/// system calls (DESIGN §3: 10 GB/s with 4 MiB here, against 2 GB/s with the default). The
/// kernel allocates buffer memory as data flows, not up front.
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// Sets the send buffer size of a port socket (best effort: the kernel caps it at
/// `net.core.wmem_max`). For `AF_UNIX` stream sockets the sender's buffer bounds the data in
/// flight; the receive buffer size is not used.
pub(crate) fn size_buffers(socket: BorrowedFd<'_>) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER);
}

/// Makes `fd` non-blocking (descriptors received or inherited may not be).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Sends as much of `iov` as the socket takes now, with `fds` attached to the first byte.
/// Never blocks (`EAGAIN` is `ErrorKind::WouldBlock`) and never raises `SIGPIPE`.
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_SEND);
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if fds.is_empty() {
        return Ok(rustix::net::sendmsg(
            socket,
            iov,
            &mut SendAncillaryBuffer::default(),
            flags,
        )?);
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
    debug_assert!(pushed, "control buffer sized for the descriptors");
    Ok(rustix::net::sendmsg(socket, iov, &mut control, flags)?)
}

/// Reads what is available into `buf`, appending received descriptors to `fds` (close-on-exec).
/// `Ok(0)` is end of stream: the peer closed, or its process died.
pub(crate) fn recv(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SEND))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        socket,
        &mut iov,
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        // More descriptors than the control buffer holds were dropped by the kernel: the
        // stream's descriptor accounting is broken.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors truncated",
        ));
    }
    Ok(msg.bytes)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(hard) = limit.maximum {
        if limit.current != Some(hard) {
            rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: Some(hard),
                    maximum: Some(hard),
                },
            )?;
        }
        return Ok(hard);
    }
    Ok(limit.current.unwrap_or(u64::MAX))
}

/// Whether `fd` is close-on-exec.
#[cfg(test)]
pub(crate) fn is_cloexec(fd: impl AsFd) -> bool {
    rustix::io::fcntl_getfd(fd)
        .map(|f| f.contains(rustix::io::FdFlags::CLOEXEC))
        .unwrap_or(false)
}

/// The pid, uid and gid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_credentials(
    socket: BorrowedFd<'_>,
) -> io::Result<crate::process::PeerCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(crate::process::PeerCredentials {
        pid: cred.pid.as_raw_nonzero().get() as u32,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

/// Lets `fd` be inherited by the child `cmd` spawns, at the same number: the child's copy loses
/// close-on-exec (after the fork, before the exec); the parent's copy keeps it.
#[allow(unsafe_code)]
pub(crate) fn inherit(cmd: &mut std::process::Command, fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; `raw` is open there because the parent keeps `fd` open until `spawn`
    // returns (the caller holds it).
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
}

/// Takes ownership of an inherited descriptor number, checking that it is an open socket, and
/// makes it close-on-exec and non-blocking.
#[allow(unsafe_code)]
pub(crate) fn adopt_inherited(raw: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on an arbitrary number is safe (EBADF if not open); we only build an
    // `OwnedFd` after checking it is open and a socket, and the environment variable that named
    // it is read once per process (see `process::bootstrap`).
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed)?;
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "inherited descriptor is not a socket",
        ));
    }
    // SAFETY: checked open above; ownership is taken exactly once per process.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    set_nonblocking(owned.as_fd())?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_close_on_exec_and_eof_follows_close() {
        let (a, b) = socketpair().unwrap();
        assert!(is_cloexec(&a) && is_cloexec(&b));
        let (x, _y) = socketpair().unwrap();
        let sent = send(a.as_fd(), &[IoSlice::new(b"hello")], &[x.as_fd()]).unwrap();
        assert_eq!(sent, 5);
        drop(x);
        let mut buf = [0u8; 16];
        let mut fds = VecDeque::new();
        assert_eq!(recv(b.as_fd(), &mut buf, &mut fds).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(fds.len(), 1);
        assert!(is_cloexec(&fds[0]));
        assert_eq!(
            recv(b.as_fd(), &mut buf, &mut fds).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert_eq!(recv(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let soft = raise_fd_limit().unwrap();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(soft));
    }
}
