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

/// The environment variable that names the inherited socket in a spawned child: its descriptor
/// number and its inode, `"<fd>:<inode>"`, so that a grandchild that inherits the variable (but
/// not the socket, which is close-on-exec once adopted) refuses the number instead of taking
/// over whatever descriptor has it.
pub const BOOTSTRAP_ENV: &str = "MSGPORT_BOOTSTRAP_FD";

static BOOTSTRAPPED: AtomicBool = AtomicBool::new(false);

/// Spawns `cmd` with a connection to this process: returns the child and this side's port. The
/// child gets its port with [`bootstrap`]. When the child dies, the port observes close.
///
/// The same `Command` may be spawned again: each child inherits its own socket and nothing
/// else of this process's.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, MessagePort)> {
    let (here, there) = sys::socketpair()?;
    let port = crate::transport::handoff::from_socket(here)?;
    Ok((start(cmd, there)?, port))
}

/// [`spawn`] for a program that speaks its own protocol: this side gets the bare socket
/// (non-blocking, close-on-exec), the child gets its end with [`bootstrap_socket`]. No msgport
/// frames are written on it.
pub fn spawn_socket(cmd: &mut Command) -> io::Result<(Child, std::os::fd::OwnedFd)> {
    let (here, there) = sys::socketpair()?;
    Ok((start(cmd, there)?, here))
}

/// Starts `cmd` with `there` inherited and named in the environment.
fn start(cmd: &mut Command, there: std::os::fd::OwnedFd) -> io::Result<Child> {
    let ino = sys::inode(there.as_fd())?;
    let inherited = sys::inherit(cmd, there.as_fd());
    cmd.env(
        BOOTSTRAP_ENV,
        format!("{}:{ino}", std::os::fd::AsRawFd::as_raw_fd(&there)),
    );
    let child = cmd.spawn();
    drop(inherited);
    drop(there);
    child
}

/// In a child started by [`spawn`]: the port connected to the parent. Callable once.
///
/// Call it before this process starts programs of its own: until then the inherited socket is
/// not close-on-exec (it had to survive this process's own `exec`), so a program started
/// earlier would inherit a copy, and the parent would not see this process die while that copy
/// lives. Once adopted, the socket is close-on-exec like every descriptor msgport makes.
///
/// # Errors
/// `NotFound` when this process was not started by [`spawn`], or when the named descriptor is
/// not the socket its parent named (a program started by a child of [`spawn`] inherits the
/// variable but not the socket); `AlreadyExists` on a second call; `InvalidInput` when the
/// variable is malformed.
pub fn bootstrap() -> io::Result<MessagePort> {
    crate::transport::handoff::from_socket(bootstrap_socket()?)
}

/// [`bootstrap`], with the credentials the kernel recorded for the parent's end of the socket
/// (the process that made it: the parent that called [`spawn`]).
pub fn bootstrap_with_credentials() -> io::Result<(MessagePort, PeerCredentials)> {
    let socket = bootstrap_socket()?;
    let creds = sys::peer_credentials(socket.as_fd())?;
    Ok((crate::transport::handoff::from_socket(socket)?, creds))
}

/// In a child started by [`spawn_socket`] (or [`spawn`]): the bare socket to the parent
/// (non-blocking, close-on-exec), for a program that speaks its own protocol on it. Callable
/// once, and exclusive with [`bootstrap`]; the same errors.
pub fn bootstrap_socket() -> io::Result<std::os::fd::OwnedFd> {
    let raw = std::env::var(BOOTSTRAP_ENV).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "not started by msgport::process::spawn",
        )
    })?;
    let malformed = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "malformed bootstrap descriptor",
        )
    };
    let (raw, ino) = raw.split_once(':').ok_or_else(malformed)?;
    let raw: i32 = raw.parse().map_err(|_| malformed())?;
    let ino: u64 = ino.parse().map_err(|_| malformed())?;
    if BOOTSTRAPPED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "bootstrap() was already called",
        ));
    }
    sys::adopt_inherited(raw, ino)
}

/// Waits until every message this process posted to other processes has been written to the
/// kernel (which delivers it even if this process then exits), or `timeout` passes; returns
/// whether everything was written.
///
/// Posting never blocks: what a peer's socket cannot take yet waits in this process, and is lost
/// if the process exits first, just as if it had died. Call this before `std::process::exit`
/// (or before `main` returns) when the last messages matter. (The last messages of a burst of
/// posts, which wait up to 20 µs to leave together, are written at exit when the socket takes
/// them; `flush` waits for those too.)
#[must_use = "false means some messages were not written yet and die with this process"]
pub fn flush(timeout: std::time::Duration) -> bool {
    crate::transport::flush(timeout)
}

/// A rendezvous socket for processes that were not spawned by this one: each connection that
/// [`Listener::accept`] takes is a port to the process that called [`connect`]. Dropping it
/// removes its path.
#[derive(Debug)]
pub struct Listener {
    socket: std::os::fd::OwnedFd,
    path: std::path::PathBuf,
    ino: u64,
}

pub use crate::sys::PeerCredentials;

/// Listens on a Unix socket path (which must not exist yet), connectable by this user only
/// (mode `0600`; see [`listen_with_mode`]). Only processes that can open the path can
/// connect; [`Listener::accept`] reports each one's kernel-vouched credentials.
pub fn listen(path: impl AsRef<std::path::Path>) -> io::Result<Listener> {
    listen_with_mode(path, 0o600)
}

/// [`listen`] with the socket file's permission bits (as `chmod` takes them, then masked by the
/// process's umask): `0o660` lets the group connect too. The mode is set on the socket before
/// it is bound, so there is no moment when the path is more open than asked.
pub fn listen_with_mode(path: impl AsRef<std::path::Path>, mode: u32) -> io::Result<Listener> {
    let path = path.as_ref().to_path_buf();
    let socket = sys::listen_unix(&path, mode).map_err(|e| at_path("listen on", &path, e))?;
    let ino = sys::path_inode(&path).map_err(|e| at_path("listen on", &path, e))?;
    Ok(Listener { socket, path, ino })
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the path only while it is still our socket (not one bound there since).
        if sys::path_inode(&self.path).is_ok_and(|ino| ino == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Waits for the next process to [`connect`]; returns its port and its credentials.
    pub fn accept(&self) -> io::Result<(MessagePort, PeerCredentials)> {
        let stream = sys::accept(self.socket.as_fd())?;
        let creds = sys::peer_credentials(stream.as_fd())?;
        Ok((crate::transport::handoff::from_socket(stream)?, creds))
    }
}

/// Connects to a process that [`listen`]s on `path`; returns the port to it.
pub fn connect(path: impl AsRef<std::path::Path>) -> io::Result<MessagePort> {
    let socket =
        sys::connect_unix(path.as_ref()).map_err(|e| at_path("connect to", path.as_ref(), e))?;
    crate::transport::handoff::from_socket(socket)
}

/// `e`, its message naming the path it concerns (the kind is kept for callers that match it).
fn at_path(what: &str, path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// [`connect`], with the credentials of the listening process, read from the socket by the
/// kernel (the listener's pid, uid and gid when it called `listen`).
pub fn connect_with_credentials(
    path: impl AsRef<std::path::Path>,
) -> io::Result<(MessagePort, PeerCredentials)> {
    let socket =
        sys::connect_unix(path.as_ref()).map_err(|e| at_path("connect to", path.as_ref(), e))?;
    let creds = sys::peer_credentials(socket.as_fd())?;
    Ok((crate::transport::handoff::from_socket(socket)?, creds))
}
