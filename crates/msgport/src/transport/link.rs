//! [`Link`]: one end of a port's socket in this process.
//!
//! Writes happen on the posting thread when the socket takes them; what it does not take waits
//! in the link's queue (never blocking the poster) and the reactor flushes it when the socket is
//! writable, coalescing queued frames into one `sendmsg`. Reads happen on the reactor thread:
//! frames are decoded and pushed to the target endpoint, under the link's lock, so that a port
//! leaving the process (`export`) sees every frame either delivered or still unread.
//!
//! Lock order: a link's `io` before any endpoint's locks; callbacks run after `io` is released.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::reactor::{reactor, wait_readable, SharedFd};
use super::wire::{self, Frame, WireError, HEADER};
use crate::event::MessageEvent;
use crate::port::Endpoint;
use crate::sys;

/// One socket end: what we write to it, and the endpoint that gets what we read.
pub(crate) struct Link {
    /// This link, for registering itself with the reactor when first needed.
    me: std::sync::Weak<Link>,
    token: usize,
    target: Arc<Endpoint>,
    io: Mutex<Io>,
}

#[derive(Default)]
struct Io {
    /// `None` once closed, dead or exported. Shared with a thread polling it (`read_here`).
    fd: Option<SharedFd>,
    /// A thread pulling on this port reads the socket itself (`read_here`): the reactor does
    /// not watch for readability until asynchronous or callback delivery needs it again
    /// (`arm`). A blocking pull then costs no reactor wake-up and no epoll_ctl per message.
    pull_mode: bool,
    /// The socket is in the reactor's epoll set. A link whose port nobody waits on
    /// asynchronously starts unregistered (in pull mode): a port that arrives and is dropped, or
    /// only pulled from, never costs an epoll_ctl.
    registered: bool,
    /// Received bytes: `inbuf[..filled]`.
    inbuf: Vec<u8>,
    filled: usize,
    /// Received descriptors not yet claimed by a frame.
    infds: VecDeque<OwnedFd>,
    /// Frames (or their unsent rest) waiting for the socket.
    out: VecDeque<Chunk>,
    /// Writable interest is registered.
    want_writable: bool,
    /// The send buffer was enlarged (done before the first large frame, not for every socket:
    /// most ports never carry one).
    sized: bool,
    /// Close once `out` is flushed.
    closing: bool,
}

struct Chunk {
    bytes: Vec<u8>,
    pos: usize,
    /// Sent with the first `sendmsg` that includes any byte of this chunk, then dropped here.
    fds: Vec<OwnedFd>,
}

/// What a link held when its port left the process.
pub(crate) struct Exported {
    pub socket: Option<OwnedFd>,
    pub prefix: Vec<u8>,
    pub prefix_fds: Vec<OwnedFd>,
    pub unsent: Vec<u8>,
    pub unsent_fds: Vec<OwnedFd>,
}

const READ_CHUNK: usize = 64 * 1024;
/// Frames larger than this enlarge the socket's send buffer first.
const LARGE_FRAME: usize = 256 * 1024;
/// Receive buffers up to this size are kept between frames rather than freed.
const KEEP_BUFFER: usize = 32 << 20;
const MAX_IOV: usize = 64;

fn lock(m: &Mutex<Io>) -> MutexGuard<'_, Io> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Takes over `socket`, delivering what it reads to `target`. `prefix` (with its
    /// descriptors) is what an earlier owner had read of a frame not yet complete; `unsent`
    /// what it had not yet written: both come first.
    /// With `watch`, the reactor reads it from the start (a proxy's link, which nobody pulls
    /// from); without, it is registered when a waiter needs it ([`arm`](Self::arm)).
    pub(crate) fn new(
        socket: OwnedFd,
        target: Arc<Endpoint>,
        prefix: Vec<u8>,
        prefix_fds: Vec<OwnedFd>,
        unsent: Vec<u8>,
        unsent_fds: Vec<OwnedFd>,
        watch: bool,
    ) -> io::Result<Arc<Link>> {
        // Every send and receive passes MSG_DONTWAIT, so the socket's own O_NONBLOCK flag (which
        // a peer controls for descriptors it sends us) does not matter: no fcntl here.
        let token = reactor().token();
        let filled = prefix.len();
        let mut out = VecDeque::new();
        if !unsent.is_empty() {
            out.push_back(Chunk {
                bytes: unsent,
                pos: 0,
                fds: unsent_fds,
            });
        }
        let link = Arc::new_cyclic(|me| Link {
            me: me.clone(),
            token,
            target,
            io: Mutex::new(Io {
                fd: Some(Arc::new(socket)),
                inbuf: prefix,
                filled,
                infds: prefix_fds.into(),
                out,
                pull_mode: !watch,
                ..Io::default()
            }),
        });
        {
            let mut io = lock(&link.io);
            if watch {
                link.update_interest(&mut io)?;
            }
            if !io.out.is_empty() {
                link.flush(&mut io);
            }
        }
        Ok(link)
    }

    /// Encodes and writes a message (its ports leave the process). A message that cannot be
    /// encoded is dropped, with its ports.
    pub(crate) fn send_message(&self, message: MessageEvent) {
        match message.into_wire() {
            Ok((data, ports)) => match wire::encode_frame(data, ports) {
                Ok(frame) => self.send_frame(frame),
                Err(e) => tracing::warn!("msgport: message dropped: {e}"),
            },
            Err(e) => tracing::warn!("msgport: message dropped: {e}"),
        }
    }

    /// Writes a frame, or queues it behind earlier ones. Never blocks.
    pub(crate) fn send_frame(&self, frame: Frame) {
        let mut io = lock(&self.io);
        if io.fd.is_none() || io.closing {
            return;
        }
        if !io.sized && frame.parts.iter().map(Vec::len).sum::<usize>() > LARGE_FRAME {
            io.sized = true;
            if let Some(fd) = &io.fd {
                sys::size_buffers(fd.as_fd());
            }
        }
        let mut fds = Some(frame.fds);
        for bytes in frame.parts {
            io.out.push_back(Chunk {
                bytes,
                pos: 0,
                fds: fds.take().unwrap_or_default(),
            });
        }
        if !io.want_writable {
            self.flush(&mut io);
        }
    }

    /// Writes queued chunks until the socket refuses; then asks the reactor for writability.
    fn flush(&self, io: &mut Io) {
        while !io.out.is_empty() {
            let Some(fd) = io.fd.as_ref() else { return };
            // No allocation on this path: the common post is one chunk without descriptors.
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut nfds = 0;
            let mut chunks = 0;
            for chunk in io.out.iter() {
                if chunks == MAX_IOV || nfds + chunk.fds.len() > sys::MAX_FDS_PER_SEND {
                    break;
                }
                nfds += chunk.fds.len();
                iov[chunks] = IoSlice::new(&chunk.bytes[chunk.pos..]);
                chunks += 1;
            }
            if chunks == 0 {
                // A single chunk with more descriptors than one sendmsg carries: send its
                // first byte with the first batch of them.
                let chunk = io.out.front_mut().expect("non-empty");
                let batch: Vec<OwnedFd> = chunk.fds.drain(..sys::MAX_FDS_PER_SEND).collect();
                let borrowed: Vec<BorrowedFd<'_>> = batch.iter().map(|f| f.as_fd()).collect();
                match sys::send(
                    fd.as_fd(),
                    &[IoSlice::new(&chunk.bytes[chunk.pos..chunk.pos + 1])],
                    &borrowed,
                ) {
                    Ok(n) => chunk.pos += n,
                    Err(e) => {
                        chunk.fds.splice(0..0, batch);
                        if self.write_failed(io, e) {
                            return;
                        }
                    }
                }
                continue;
            }
            let borrowed: Vec<BorrowedFd<'_>> = if nfds == 0 {
                Vec::new()
            } else {
                io.out
                    .iter()
                    .take(chunks)
                    .flat_map(|c| c.fds.iter().map(|f| f.as_fd()))
                    .collect()
            };
            match sys::send(fd.as_fd(), &iov[..chunks], &borrowed) {
                Ok(mut n) => {
                    drop(borrowed);
                    for chunk in io.out.iter_mut().take(chunks) {
                        chunk.fds.clear();
                    }
                    while let Some(chunk) = io.out.front_mut() {
                        let left = chunk.bytes.len() - chunk.pos;
                        if n >= left {
                            n -= left;
                            io.out.pop_front();
                            if n == 0 {
                                break;
                            }
                        } else {
                            chunk.pos += n;
                            break;
                        }
                    }
                }
                Err(e) => {
                    drop(borrowed);
                    if self.write_failed(io, e) {
                        return;
                    }
                }
            }
        }
        if io.want_writable {
            io.want_writable = false;
            let _ = self.update_interest(io);
        }
        if io.closing {
            self.shut(io);
        }
    }

    /// Handles a failed write; returns true when flushing must stop.
    fn write_failed(&self, io: &mut Io, e: io::Error) -> bool {
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                if !io.want_writable {
                    io.want_writable = true;
                    if let Err(e) = self.update_interest(io) {
                        tracing::warn!("msgport: cannot watch a port's socket: {e}");
                    }
                }
                true
            }
            io::ErrorKind::Interrupted => false,
            _ => {
                // The peer is gone (EPIPE, ECONNRESET): what we queued can go nowhere. The
                // reader sees the end of the stream and reports the close.
                io.out.clear();
                true
            }
        }
    }

    /// Tells the reactor what to watch for: readability unless pulling threads read the socket
    /// themselves, writability while frames wait. Registers the socket on first need.
    fn update_interest(&self, io: &mut Io) -> io::Result<()> {
        let Some(fd) = io.fd.clone() else {
            return Ok(());
        };
        let (read, write) = (!io.pull_mode, io.want_writable);
        if io.registered {
            reactor().interest(self.token, fd.as_fd(), read, write);
        } else if read || write {
            let me = self.me.upgrade().expect("a link in use is alive");
            reactor().register(self.token, fd.as_fd(), &me, read, write)?;
            io.registered = true;
        }
        Ok(())
    }

    /// Hands reading back to the reactor (for `poll_recv` and callbacks, which nobody else
    /// would feed).
    pub(crate) fn arm(&self) {
        let mut io = lock(&self.io);
        if io.pull_mode {
            io.pull_mode = false;
            if let Err(e) = self.update_interest(&mut io) {
                tracing::warn!("msgport: cannot watch a port's socket: {e}");
            }
        }
    }

    /// Blocks this thread until the socket has data (or `timeout` passes), then reads and
    /// delivers it here: a blocked pull on a socket-backed port wakes directly, without the
    /// reactor thread in between. Returns false when the socket is gone (the endpoint has been
    /// told, or soon will be).
    pub(crate) fn read_here(&self, timeout: Duration) -> bool {
        let fd = {
            let mut io = lock(&self.io);
            let Some(fd) = io.fd.clone() else {
                return false;
            };
            if !io.pull_mode {
                io.pull_mode = true;
                let _ = self.update_interest(&mut io);
            }
            fd
        };
        // The reactor may have delivered just before it stopped watching: then there is no
        // need to wait.
        if !self.target.has_pending() {
            wait_readable(&fd, timeout);
        }
        drop(fd);
        self.read(true);
        true
    }

    /// Reads what is there now, without waiting, when pulling threads do the reading.
    pub(crate) fn read_now(&self) {
        let pull_mode = lock(&self.io).pull_mode;
        if pull_mode {
            self.read(true);
        }
    }

    /// Nothing waits to be written.
    pub(crate) fn is_flushed(&self) -> bool {
        lock(&self.io).out.is_empty()
    }

    pub(crate) fn on_writable(&self) {
        let mut io = lock(&self.io);
        io.want_writable = false;
        self.flush(&mut io);
    }

    /// The reactor saw the socket readable.
    pub(crate) fn on_readable(&self) {
        self.read(false);
    }

    /// Reads everything available, delivers complete frames, and reports the end of the stream.
    /// The reactor leaves a socket alone while a thread reads it itself (`read_here`), so that a
    /// readiness event it picked up just before would not take the data from under that thread.
    fn read(&self, here: bool) {
        let mut io = lock(&self.io);
        if !here && io.pull_mode {
            return;
        }
        let mut ended = None;
        let mut rejected = Vec::new();
        loop {
            let Some(fd) = io.fd.as_ref().map(|f| f.as_raw_fd()) else {
                return;
            };
            let want = match io.filled.checked_sub(HEADER) {
                Some(_) => {
                    let len =
                        u32::from_le_bytes(io.inbuf[..4].try_into().expect("4 bytes")) as usize;
                    (HEADER + len).max(io.filled + 1)
                }
                None => io.filled + READ_CHUNK,
            }
            .min(io.filled + (64 << 20));
            if io.inbuf.len() < want {
                io.inbuf.resize(want, 0);
            }
            let Io {
                inbuf,
                filled,
                infds,
                fd: Some(sock),
                ..
            } = &mut *io
            else {
                return;
            };
            debug_assert_eq!(sock.as_raw_fd(), fd);
            match sys::recv(sock.as_fd(), &mut inbuf[*filled..], infds) {
                Ok(0) => {
                    ended = Some("end of stream");
                    break;
                }
                Ok(n) => {
                    io.filled += n;
                    let before = rejected.len();
                    match self.deliver(&mut io, &mut rejected) {
                        Err(e) => {
                            tracing::warn!("msgport: closing a port after a bad frame: {e}");
                            ended = Some("bad frame");
                            break;
                        }
                        // A pulling thread polls level-triggered: it need not drain the socket
                        // (which costs one more recvmsg, answered EAGAIN) once it has a message.
                        Ok(delivered) if here && delivered > rejected.len() - before => break,
                        Ok(_) => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("msgport: link read error: {e}");
                    ended = Some("read error");
                    break;
                }
            }
        }
        if ended.is_some() {
            self.shut(&mut io);
            io.inbuf = Vec::new();
            io.filled = 0;
            io.infds.clear();
        }
        drop(io);
        drop(rejected);
        if ended.is_some() {
            self.target.peer_closed();
        }
        self.target.dispatch();
    }

    /// Decodes and delivers every complete frame in the buffer.
    /// Returns how many frames it decoded.
    fn deliver(&self, io: &mut Io, rejected: &mut Vec<MessageEvent>) -> Result<usize, WireError> {
        let mut start = 0;
        let mut frames = 0;
        loop {
            let avail = io.filled - start;
            if avail < HEADER {
                break;
            }
            let head = &io.inbuf[start..start + HEADER];
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            let nfds = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
            if len > wire::max_frame() {
                return Err(WireError::TooLarge(len));
            }
            if avail < HEADER + len {
                break;
            }
            if nfds > io.infds.len() {
                return Err(WireError::Descriptors);
            }
            let fds: VecDeque<OwnedFd> = io.infds.drain(..nfds).collect();
            let body = &io.inbuf[start + HEADER..start + HEADER + len];
            let event = wire::decode_body(body, fds)?;
            if let Err(dropped) = self.target.push_quietly(event) {
                rejected.push(dropped);
            }
            frames += 1;
            start += HEADER + len;
        }
        if start > 0 {
            io.inbuf.copy_within(start..io.filled, 0);
            io.filled -= start;
            // Keep a large buffer for the next large frame, up to a point.
            if io.inbuf.len() > KEEP_BUFFER && io.filled < READ_CHUNK {
                io.inbuf.truncate(READ_CHUNK);
                io.inbuf.shrink_to_fit();
            }
        }
        Ok(frames)
    }

    /// Stops using the socket: deregisters it and closes it.
    fn shut(&self, io: &mut Io) {
        if let Some(fd) = io.fd.take() {
            if std::mem::take(&mut io.registered) {
                reactor().deregister(self.token, fd.as_fd());
            }
        }
        io.out.clear();
    }

    /// Our port was closed or dropped: close the socket once what we wrote is flushed, so the
    /// peer reads every message and then the end of the stream.
    pub(crate) fn close(&self) {
        let mut io = lock(&self.io);
        if io.out.is_empty() {
            self.shut(&mut io);
        } else {
            io.closing = true;
        }
    }

    /// Our port leaves the process: stop reading, and hand over the socket with what was read
    /// of an incomplete frame and what was not yet written.
    pub(crate) fn export(&self) -> Exported {
        let mut io = lock(&self.io);
        let registered = std::mem::take(&mut io.registered);
        let socket = io.fd.take().map(|fd| {
            if registered {
                reactor().deregister(self.token, fd.as_fd());
            }
            // No other thread polls a port that is being moved (it is owned, not borrowed);
            // should one still hold the descriptor, hand over a duplicate.
            Arc::try_unwrap(fd).or_else(|shared| rustix::io::fcntl_dupfd_cloexec(&*shared, 0))
        });
        let socket = match socket {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!("msgport: cannot hand over a port's socket: {e}");
                None
            }
            None => None,
        };
        let mut unsent = Vec::new();
        let mut unsent_fds = Vec::new();
        for chunk in io.out.drain(..) {
            unsent.extend_from_slice(&chunk.bytes[chunk.pos..]);
            unsent_fds.extend(chunk.fds);
        }
        let filled = io.filled;
        let mut prefix = std::mem::take(&mut io.inbuf);
        prefix.truncate(filled);
        io.filled = 0;
        Exported {
            socket,
            prefix,
            prefix_fds: io.infds.drain(..).collect(),
            unsent,
            unsent_fds,
        }
    }
}
