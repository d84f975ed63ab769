//! Getting a process's first port to another process: a socket inherited by a spawned child.
//!
//! ```no_run
//! // In the parent:
//! let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
//! let (mut child, port) = msgport::process::spawn(&mut cmd).unwrap();
//! port.post_message("hello, child", []).unwrap();
//! # drop(port); child.wait().unwrap();
//! // In the child:
//! let port = msgport::process::bootstrap().unwrap();
//! let hello = port.blocking_recv().unwrap();
//! ```
//! Ports sent over that first port (and over the ports sent over it) then connect the two
//! processes, or any others, directly.

use std::io;
use std::os::fd::AsFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{sys, MessagePort};

/// The environment variable that names the inherited descriptor in a spawned child.
pub const BOOTSTRAP_ENV: &str = "MSGPORT_BOOTSTRAP_FD";

static BOOTSTRAPPED: AtomicBool = AtomicBool::new(false);

/// Spawns `cmd` with a connection to this process: returns the child and this side's port. The
/// child gets its port with [`bootstrap`]. When the child dies, the port observes close.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, MessagePort)> {
    let (here, there) = sys::socketpair()?;
    sys::inherit(cmd, there.as_fd());
    cmd.env(
        BOOTSTRAP_ENV,
        std::os::fd::AsRawFd::as_raw_fd(&there).to_string(),
    );
    let child = cmd.spawn()?;
    drop(there);
    Ok((child, MessagePort::from_socket(here)?))
}

/// In a child started by [`spawn`]: the port connected to the parent. Callable once.
///
/// # Errors
/// `NotFound` when this process was not started by [`spawn`]; `AlreadyExists` on a second call;
/// `InvalidInput` when the named descriptor is not a socket.
pub fn bootstrap() -> io::Result<MessagePort> {
    let raw = std::env::var(BOOTSTRAP_ENV).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "not started by msgport::process::spawn",
        )
    })?;
    let raw: i32 = raw.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "malformed bootstrap descriptor",
        )
    })?;
    if BOOTSTRAPPED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "bootstrap() was already called",
        ));
    }
    MessagePort::from_socket(sys::adopt_inherited(raw)?)
}

/// Waits until every message this process posted to other processes has been written to the
/// kernel (which delivers it even if this process then exits), or `timeout` passes; returns
/// whether everything was written.
///
/// Posting never blocks: what a peer's socket cannot take yet waits in this process, and is lost
/// if the process exits first, just as if it had died. Call this before `std::process::exit`
/// (or before `main` returns) when the last messages matter.
pub fn flush(timeout: std::time::Duration) -> bool {
    crate::transport::flush(timeout)
}

/// A rendezvous socket for processes that were not spawned by this one: each connection that
/// [`Listener::accept`] takes is a port to the process that called [`connect`].
#[derive(Debug)]
pub struct Listener {
    socket: std::os::unix::net::UnixListener,
}

/// The credentials of a connected process, read from the socket (`SO_PEERCRED`): the kernel
/// vouches for them, the process cannot choose them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Listens on a Unix socket path (which must not exist yet).
pub fn listen(path: impl AsRef<std::path::Path>) -> io::Result<Listener> {
    Ok(Listener {
        socket: std::os::unix::net::UnixListener::bind(path)?,
    })
}

impl Listener {
    /// Waits for the next process to [`connect`]; returns its port and its credentials.
    pub fn accept(&self) -> io::Result<(MessagePort, PeerCredentials)> {
        let (stream, _) = self.socket.accept()?;
        let creds = sys::peer_credentials(stream.as_fd())?;
        Ok((
            MessagePort::from_socket(std::os::fd::OwnedFd::from(stream))?,
            creds,
        ))
    }
}

/// Connects to a process that [`listen`]s on `path`; returns the port to it.
pub fn connect(path: impl AsRef<std::path::Path>) -> io::Result<MessagePort> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    MessagePort::from_socket(std::os::fd::OwnedFd::from(stream))
}
