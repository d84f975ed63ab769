//! Every call into the operating system, behind safe functions (through `rustix`, and `libc`
//! where rustix's types cannot hold what the kernel reports): socket pairs, sending and
//! receiving bytes with descriptors attached (`SCM_RIGHTS`), listening, accepting and
//! connecting, peer credentials, descriptor limits, inheriting a descriptor across `exec`, and
//! (in [`poll`]) the reactor's epoll set, its wake-up eventfd and a thread's `poll`.
//!
//! Contract: every descriptor this module creates or receives is close-on-exec (a copy leaked
//! into a child would hide the death of a port's peer), and only `OwnedFd` / `BorrowedFd` leave
//! it. The `unsafe` code of the crate lives here (inheriting and adopting the bootstrap socket,
//! reading `SO_PEERCRED`, mapping shared-memory regions in [`shm`]), besides the in-place message storage of `inline.rs`. Proven by the
//! unit tests below and by `tests/hostile.rs` (inheritance, adoption, credentials).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

pub(crate) mod futex;
pub(crate) mod poll;
pub(crate) mod shm;

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

/// A new, unconnected, close-on-exec Unix stream socket (blocking: `listen`/`connect` use it).
fn unix_stream_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A listening Unix stream socket at `path` whose file has permission bits `mode` (masked by
/// the umask): the bits are set on the socket before `bind` creates the file (Linux takes the
/// file's mode from the socket's inode), so the path is never more open than asked.
pub(crate) fn listen_unix(path: &std::path::Path, mode: u32) -> io::Result<OwnedFd> {
    let socket = unix_stream_socket()?;
    rustix::fs::fchmod(&socket, rustix::fs::Mode::from_raw_mode(mode & 0o777))?;
    rustix::net::bind(&socket, &rustix::net::SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&socket, 128)?;
    Ok(socket)
}

/// A close-on-exec duplicate of `fd`.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// The inode of the file at `path` (to recognise a socket file as still ours).
pub(crate) fn path_inode(path: &std::path::Path) -> io::Result<u64> {
    Ok(rustix::fs::stat(path)?.st_ino)
}

/// Accepts a connection on a listening socket (close-on-exec).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Connects a close-on-exec Unix stream socket to `path`.
pub(crate) fn connect_unix(path: &std::path::Path) -> io::Result<OwnedFd> {
    let socket = unix_stream_socket()?;
    rustix::net::connect(&socket, &rustix::net::SocketAddrUnix::new(path)?)?;
    Ok(socket)
}

/// Checks that `fd` is a Unix stream socket, the only kind a port can run over (a peer may send
/// any descriptor in a port's place).
pub(crate) fn check_stream_socket(fd: BorrowedFd<'_>) -> io::Result<()> {
    let kind = rustix::net::sockopt::socket_type(fd)?;
    let domain = rustix::net::sockopt::socket_domain(fd)?;
    if kind != SocketType::STREAM || domain != AddressFamily::UNIX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a port's descriptor is not a Unix stream socket",
        ));
    }
    Ok(())
}

/// Makes `fd` non-blocking (descriptors received or inherited may not be).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Lets [`recv_waiting`] sleep on `socket`, for at most `timeout` per call (`None`: until
/// something arrives): clears the descriptor's `O_NONBLOCK` (every other send and receive
/// passes `MSG_DONTWAIT`) and sets its receive timeout (a socket that came from another
/// process may carry one its sender set).
pub(crate) fn prepare_blocking_reads(
    socket: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    set_receive_timeout(socket, timeout)?;
    let flags = rustix::fs::fcntl_getfl(socket)?;
    if flags.contains(rustix::fs::OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(socket, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Sets how long one `recv_waiting` on `socket` sleeps at most (`None`: no limit).
pub(crate) fn set_receive_timeout(
    socket: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    rustix::net::sockopt::set_socket_timeout(socket, rustix::net::sockopt::Timeout::Recv, timeout)?;
    Ok(())
}

/// Whether a `recv_waiting` on `socket` still sleeps, for at least `at_least`: the descriptor
/// is blocking and its receive timeout is unset or that long. A process holding the same
/// socket can change both.
pub(crate) fn blocks_for(socket: BorrowedFd<'_>, at_least: Duration) -> bool {
    let blocking = rustix::fs::fcntl_getfl(socket)
        .is_ok_and(|flags| !flags.contains(rustix::fs::OFlags::NONBLOCK));
    blocking
        && rustix::net::sockopt::socket_timeout(socket, rustix::net::sockopt::Timeout::Recv)
            .is_ok_and(|timeout| timeout.is_none_or(|t| t >= at_least))
}

/// Ends our reading side of `socket` now (waking a thread asleep reading it; the peer can no
/// longer write to it), whoever else holds the descriptor. Writing goes on.
pub(crate) fn shutdown_reading(socket: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
}

/// Ends both directions of `socket` now (waking a thread asleep reading it), whoever else holds
/// the descriptor.
pub(crate) fn shutdown(socket: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
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
    if let ([one], []) = (iov, fds) {
        // `send` skips copying a message header and an iovec array in: ~160 ns less than
        // `sendmsg` per call here (a message that fits one chunk, the common post).
        return Ok(rustix::net::send(socket, one, flags)?);
    }
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
    recv_with(socket, buf, fds, RecvFlags::DONTWAIT)
}

/// [`recv`] that sleeps until something arrives, for at most the socket's receive timeout,
/// when the socket is in blocking mode (see [`prepare_blocking_reads`]); after the timeout,
/// `WouldBlock`. On a non-blocking socket it returns at once, as [`recv`] does.
pub(crate) fn recv_waiting(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    recv_with(socket, buf, fds, RecvFlags::empty())
}

fn recv_with(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    flags: RecvFlags,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SEND))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        socket,
        &mut iov,
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
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

/// Has `f` run when the process exits (`exit`, or `main` returning), before the threads die.
#[allow(unsafe_code)]
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: registers a plain function pointer; `f` is safe to call at any time (it must not
    // unwind: the callers' functions catch panics).
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit refused the handler"));
    }
    Ok(())
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

/// The credentials of a connected process, read from the socket (`SO_PEERCRED`): the kernel
/// vouches for them, the process cannot choose them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id; 0 when the process is in a pid namespace this one cannot see.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The pid, uid and gid of the process at the other end of a Unix socket (`SO_PEERCRED`). The
/// pid is 0 when the peer is in a pid namespace this process cannot see (the kernel reports 0
/// then; read as a plain integer, never as a non-zero type).
#[allow(unsafe_code)]
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable `ucred` of `len` bytes, and `socket` is an open
    // descriptor for the duration of the call; every bit pattern is a valid `ucred`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Keeps a descriptor inheritable by the next child of a `Command` until dropped (see
/// [`inherit`]).
pub(crate) struct Inherited {
    raw: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

impl Drop for Inherited {
    fn drop(&mut self) {
        // The hook stays on the `Command` (std cannot remove it); disarmed, it does nothing in
        // the children of later spawns.
        self.raw.store(-1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Lets `fd` be inherited by the child `cmd` spawns, at the same number: the child's copy loses
/// close-on-exec (after the fork, before the exec); the parent's copy keeps it. Only children
/// spawned while the returned guard lives inherit it: a `Command` spawned again later does not
/// hand on whatever descriptor then has that number.
#[allow(unsafe_code)]
pub(crate) fn inherit(cmd: &mut std::process::Command, fd: BorrowedFd<'_>) -> Inherited {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicI32, Ordering};
    let raw = std::sync::Arc::new(AtomicI32::new(fd.as_raw_fd()));
    let armed = raw.clone();
    // SAFETY: the closure runs in the forked child before exec and only loads an atomic and
    // calls fcntl, both async-signal-safe; a non-negative number is open there because the
    // parent keeps `fd` open while the guard is armed (the caller holds both until `spawn`
    // returns).
    unsafe {
        cmd.pre_exec(move || {
            let raw = armed.load(Ordering::SeqCst);
            if raw >= 0 {
                let fd = BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    Inherited { raw }
}

/// The inode of an open descriptor: with its number, it names an inherited socket so that a
/// process can tell its own from a number it inherited from further up.
pub(crate) fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// Takes ownership of an inherited descriptor number, checking that it is an open socket with
/// inode `ino` (the one the parent named), and makes it close-on-exec and non-blocking.
#[allow(unsafe_code)]
pub(crate) fn adopt_inherited(raw: std::os::fd::RawFd, ino: u64) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if raw < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "negative bootstrap descriptor",
        ));
    }
    // SAFETY: `raw` is non-negative; fcntl and fstat on an arbitrary number are safe (EBADF if
    // not open). We only build an `OwnedFd` after checking it is open, a socket, and the very
    // socket the parent named (its inode), and the environment variable that named it is read
    // once per process (see `process::bootstrap`).
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let not_ours = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the bootstrap descriptor is not this process's (inherited from further up?)",
        )
    };
    rustix::io::fcntl_getfd(borrowed).map_err(|_| not_ours())?;
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket
        || stat.st_ino != ino
    {
        return Err(not_ours());
    }
    // SAFETY: checked open and ours above; ownership is taken exactly once per process.
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
