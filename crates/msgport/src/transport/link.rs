//! [`Link`]: one end of a port's socket in this process.
//!
//! Writes happen on the posting thread when the socket takes them; what it does not take waits
//! in the link's queue (never blocking the poster) and the reactor flushes it when the socket is
//! writable, coalescing queued frames into one `sendmsg`. Reads happen on the reactor thread:
//! frames are decoded and pushed to the target endpoint, under the link's lock, so that a port
//! leaving the process (`export`) sees every frame either delivered or still unread.
//!
//! What a peer sends is bounded before it costs anything (docs/architecture.md, "What a hostile
//! peer can and cannot do"): the receive buffer grows with the bytes that arrived (never with the
//! length a header announces), descriptors wait only for the frame being read, a reactor turn
//! reads at most [`READ_BUDGET`] bytes of one link before serving the others, and a port whose
//! queue is over the receive high-water mark is not read at all until the application drains it.
//!
//! Lock order: a link's `io` before any endpoint's locks; callbacks run after `io` is released.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::reactor::{self, reactor, SharedFd};
use super::wire::{self, Frame, Segment, WireError, HEADER};
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

/// What a socket carries from an earlier owner of a port to the next: the bytes (and
/// descriptors) read of a frame not yet complete, and what was not yet written.
#[derive(Default)]
pub(crate) struct Backlog {
    pub prefix: Vec<u8>,
    pub prefix_fds: Vec<OwnedFd>,
    pub unsent: Vec<Segment>,
}

/// What a link held when its port left the process.
pub(crate) struct Exported {
    pub socket: Option<OwnedFd>,
    pub backlog: Backlog,
}

const READ_CHUNK: usize = 64 * 1024;
/// Frames larger than this enlarge the socket's send buffer first.
const LARGE_FRAME: usize = 256 * 1024;
/// The most bytes one reactor turn reads from one link before it serves the others.
pub(crate) const READ_BUDGET: usize = 1 << 20;
const MAX_IOV: usize = 64;

/// Receive buffers larger than [`READ_CHUNK`], kept for the next large frame of any link (at
/// most [`POOL_BUFFERS`] of at most [`KEEP_BUFFER`] bytes): a link gives its large buffer back
/// as soon as it holds no partial frame, so what a process keeps does not grow with its links.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const POOL_BUFFERS: usize = 2;
const KEEP_BUFFER: usize = 32 << 20;

fn pool_take() -> Vec<u8> {
    POOL.lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default()
}

fn pool_put(buf: Vec<u8>) {
    if buf.len() <= KEEP_BUFFER {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }
}

fn lock(m: &Mutex<Io>) -> MutexGuard<'_, Io> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Takes over `socket` (which must be a Unix stream socket), delivering what it reads to
    /// `target`. `backlog` is what an earlier owner had read of a frame not yet complete and
    /// what it had not yet written: both come first.
    /// With `watch`, the reactor reads it from the start (a proxy's link, which nobody pulls
    /// from); without, it is registered when a waiter needs it ([`arm`](Self::arm)).
    pub(crate) fn new(
        socket: OwnedFd,
        target: Arc<Endpoint>,
        backlog: Backlog,
        watch: bool,
    ) -> io::Result<Arc<Link>> {
        // The reactor starts with the process's first link (raising the descriptor limit), so
        // that a process that cannot have one learns it here, as an error.
        reactor()?;
        // Every send and receive passes MSG_DONTWAIT, so the socket's own O_NONBLOCK flag (which
        // a peer controls for descriptors it sends us) does not matter: no fcntl here.
        let token = reactor::token();
        let Backlog {
            prefix,
            prefix_fds,
            unsent,
        } = backlog;
        let filled = prefix.len();
        let out = unsent
            .into_iter()
            .map(|s| Chunk {
                bytes: s.bytes,
                pos: 0,
                fds: s.fds,
            })
            .collect();
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
        link.target.set_reader(Arc::downgrade(&link));
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
        // Descriptors go with the first parts, at most one `sendmsg` batch per byte, so that
        // every batch travels with bytes of its own frame (the receiver counts on it).
        let mut fds = frame.fds.into_iter();
        let mut left = fds.len();
        let parts = frame.parts.len();
        for (i, bytes) in frame.parts.into_iter().enumerate() {
            let n = if i + 1 == parts {
                left
            } else {
                left.min(bytes.len().saturating_mul(sys::MAX_FDS_PER_SEND))
            };
            left -= n;
            io.out.push_back(Chunk {
                bytes,
                pos: 0,
                fds: fds.by_ref().take(n).collect(),
            });
        }
        if !io.want_writable {
            self.flush(&mut io);
        }
    }

    /// Writes queued chunks until the socket refuses; then asks the reactor for writability.
    ///
    /// Descriptors are only ever sent with the first chunk of a `sendmsg`, so they travel with
    /// bytes of their own frame: the chunks after the first are added only while they carry
    /// none. A chunk with more descriptors than one `sendmsg` takes sends them a batch per byte.
    fn flush(&self, io: &mut Io) {
        while let Some(front) = io.out.front() {
            let Some(fd) = io.fd.as_ref() else { return };
            let sent = if front.fds.len() > sys::MAX_FDS_PER_SEND {
                let end = (front.pos + 1).min(front.bytes.len());
                let batch: Vec<BorrowedFd<'_>> = front.fds[..sys::MAX_FDS_PER_SEND]
                    .iter()
                    .map(|f| f.as_fd())
                    .collect();
                sys::send(
                    fd.as_fd(),
                    &[IoSlice::new(&front.bytes[front.pos..end])],
                    &batch,
                )
                .map(|n| (n, sys::MAX_FDS_PER_SEND))
            } else {
                // No allocation on this path when there are no descriptors (the common post).
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut chunks = 0;
                for chunk in io.out.iter() {
                    if chunks == MAX_IOV || (chunks > 0 && !chunk.fds.is_empty()) {
                        break;
                    }
                    iov[chunks] = IoSlice::new(&chunk.bytes[chunk.pos..]);
                    chunks += 1;
                }
                let fds: Vec<BorrowedFd<'_>> = front.fds.iter().map(|f| f.as_fd()).collect();
                sys::send(fd.as_fd(), &iov[..chunks], &fds).map(|n| (n, fds.len()))
            };
            match sent {
                // A stream socket takes at least a byte or refuses: treat nothing as a refusal.
                Ok((0, _)) => {
                    if self.write_failed(io, io::ErrorKind::WouldBlock.into()) {
                        return;
                    }
                }
                Ok((mut n, nfds)) => {
                    if let Some(front) = io.out.front_mut() {
                        // The kernel holds its own references now.
                        front.fds.drain(..nfds);
                    }
                    while let Some(chunk) = io.out.front_mut() {
                        let left = chunk.bytes.len() - chunk.pos;
                        if n < left {
                            chunk.pos += n;
                            break;
                        }
                        n -= left;
                        if !chunk.fds.is_empty() {
                            // Cannot happen: a chunk never holds more descriptors than its
                            // bytes can carry. Should it, the receiver closes the port.
                            tracing::error!(
                                "msgport: descriptors left without bytes to carry them"
                            );
                        }
                        io.out.pop_front();
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(e) => {
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
            reactor()?.interest(self.token, fd.as_fd(), read, write);
        } else if read || write {
            let Some(me) = self.me.upgrade() else {
                return Ok(());
            };
            reactor()?.register(self.token, fd.as_fd(), &me, read, write)?;
            io.registered = true;
        }
        Ok(())
    }

    /// Hands reading back to the reactor (for `poll_recv` and callbacks, which nobody else
    /// would feed). If the reactor cannot take the socket, the port closes rather than waiting
    /// for events that would never come.
    pub(crate) fn arm(&self) {
        let mut io = lock(&self.io);
        if io.pull_mode {
            io.pull_mode = false;
            if let Err(e) = self.update_interest(&mut io) {
                tracing::warn!("msgport: closing a port the reactor cannot watch: {e}");
                self.shut(&mut io);
                drop(io);
                self.target.peer_closed();
            }
        }
    }

    /// The application drained the port below its low-water mark: read again. The reactor is
    /// asked to look at the socket once more (re-arming an edge-triggered registration reports
    /// data that is already there); a pulling thread reads by itself.
    pub(crate) fn resume(&self) {
        let mut io = lock(&self.io);
        if !io.pull_mode && io.registered {
            let _ = self.update_interest(&mut io);
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
            sys::poll::wait_readable(fd.as_fd(), timeout);
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

    /// Reads what is available, delivers complete frames, and reports the end of the stream.
    /// The reactor leaves a socket alone while a thread reads it itself (`read_here`), so that a
    /// readiness event it picked up just before would not take the data from under that thread.
    /// On the reactor, a turn stops after [`READ_BUDGET`] bytes (the link is re-armed, so the
    /// reactor comes back to it after the others) or when the port is over its high-water mark
    /// (the endpoint calls [`resume`](Self::resume) once drained).
    fn read(&self, here: bool) {
        let mut io = lock(&self.io);
        if !here && (io.pull_mode || self.target.reading_paused()) {
            return;
        }
        let mut ended = None;
        let mut rejected = Vec::new();
        let mut budget = READ_BUDGET;
        loop {
            io.reserve_read();
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
            match sys::recv(sock.as_fd(), &mut inbuf[*filled..], infds) {
                Ok(0) => {
                    ended = Some("end of stream");
                    break;
                }
                Ok(n) => {
                    io.filled += n;
                    match self.deliver(&mut io, &mut rejected) {
                        Err(e) => {
                            tracing::warn!("msgport: closing a port after a bad frame: {e}");
                            ended = Some("bad frame");
                            break;
                        }
                        // A pulling thread polls level-triggered: it need not drain the socket
                        // (which costs one more recvmsg, answered EAGAIN) once it has a message.
                        Ok(d) if here && d.delivered > 0 => break,
                        Ok(d) if d.pause && !here => break,
                        Ok(_) if !here => {
                            budget = budget.saturating_sub(n);
                            if budget == 0 {
                                // Let the other links have a turn; the reactor comes back.
                                let _ = self.update_interest(&mut io);
                                break;
                            }
                        }
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
            io.release_input();
        }
        drop(io);
        drop(rejected);
        if ended.is_some() {
            self.target.peer_closed();
        }
        self.target.dispatch();
    }

    /// Decodes and delivers every complete frame in the buffer, then checks that the
    /// descriptors still waiting belong to the frame being read.
    fn deliver(
        &self,
        io: &mut Io,
        rejected: &mut Vec<MessageEvent>,
    ) -> Result<Delivered, WireError> {
        let mut start = 0;
        let mut done = Delivered::default();
        while let Some((len, nfds)) = wire::next_frame(&io.inbuf[start..io.filled])? {
            if nfds > io.infds.len() {
                return Err(WireError::Descriptors);
            }
            let fds: VecDeque<OwnedFd> = io.infds.drain(..nfds).collect();
            let body = &io.inbuf[start + HEADER..start + HEADER + len];
            let decoded = wire::decode_body(body, fds)?;
            let cost = HEADER + len + decoded.records * wire::RECORD_COST + nfds * wire::FD_COST;
            match self.target.push_remote(decoded.event, cost) {
                Ok(over) => {
                    done.delivered += 1;
                    done.pause |= over;
                }
                Err(dropped) => rejected.push(dropped),
            }
            start += HEADER + len;
        }
        if start > 0 {
            io.inbuf.copy_within(start..io.filled, 0);
            io.filled -= start;
        }
        if io.infds.len() > wire::unclaimed_limit(&io.inbuf[..io.filled])? {
            return Err(WireError::Descriptors);
        }
        if io.filled == 0 && io.inbuf.len() > READ_CHUNK {
            pool_put(std::mem::take(&mut io.inbuf));
        }
        Ok(done)
    }

    /// Stops using the socket: deregisters it and closes it.
    fn shut(&self, io: &mut Io) {
        if let Some(fd) = io.fd.take() {
            if std::mem::take(&mut io.registered) {
                if let Some(r) = reactor::running() {
                    r.deregister(self.token, fd.as_fd());
                }
            }
        }
        io.out.clear();
        io.closing = false;
    }

    /// A bug of ours panicked while serving this link (caught by the reactor): close the port
    /// rather than leave it waiting for a thread that will not come back.
    pub(crate) fn fail(&self) {
        let mut io = lock(&self.io);
        self.shut(&mut io);
        io.release_input();
        drop(io);
        self.target.peer_closed();
    }

    /// Our port was closed or dropped: close the socket once what we wrote is flushed, so the
    /// peer reads every message and then the end of the stream. A peer that reads nothing for
    /// [`Limits::close_linger`](crate::Limits::close_linger) loses the rest.
    pub(crate) fn close(&self) {
        let mut io = lock(&self.io);
        if io.out.is_empty() {
            self.shut(&mut io);
        } else if !io.closing {
            io.closing = true;
            if let Some(r) = reactor::running() {
                r.linger(self.me.clone(), crate::limits::close_linger());
            }
        }
    }

    /// The linger time of a closed port ran out: give up on what the peer did not read.
    pub(crate) fn linger_expired(&self) {
        let mut io = lock(&self.io);
        if io.closing {
            tracing::warn!(
                "msgport: a closed port's peer read nothing for too long; unsent messages dropped"
            );
            self.shut(&mut io);
            io.release_input();
        }
    }

    /// Our port leaves the process: stop reading, and hand over the socket with what was read
    /// of an incomplete frame and what was not yet written.
    pub(crate) fn export(&self) -> Exported {
        let mut io = lock(&self.io);
        let registered = std::mem::take(&mut io.registered);
        let socket = io.fd.take().map(|fd| {
            if registered {
                if let Some(r) = reactor::running() {
                    r.deregister(self.token, fd.as_fd());
                }
            }
            // No other thread polls a port that is being moved (it is owned, not borrowed);
            // should one still hold the descriptor, hand over a duplicate.
            Arc::try_unwrap(fd).or_else(|shared| sys::dup(shared.as_fd()))
        });
        let socket = match socket {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!("msgport: cannot hand over a port's socket: {e}");
                None
            }
            None => None,
        };
        let unsent = io
            .out
            .drain(..)
            .map(|chunk| Segment {
                bytes: chunk.bytes[chunk.pos..].to_vec(),
                fds: chunk.fds,
            })
            .collect();
        let filled = io.filled;
        let mut prefix = std::mem::take(&mut io.inbuf);
        prefix.truncate(filled);
        io.filled = 0;
        Exported {
            socket,
            backlog: Backlog {
                prefix,
                prefix_fds: io.infds.drain(..).collect(),
                unsent,
            },
        }
    }
}

/// What one call of `deliver` did.
#[derive(Default)]
struct Delivered {
    /// Messages queued at the endpoint.
    delivered: usize,
    /// The endpoint is over its high-water mark: stop reading.
    pause: bool,
}

impl Io {
    /// Makes room to read into. The buffer grows with what has arrived (at most doubling what
    /// is held), never with what a header announces: a peer that announces a large frame and
    /// sends nothing costs one read chunk.
    fn reserve_read(&mut self) {
        let want = match wire::header(&self.inbuf[..self.filled]) {
            Some((len, _)) => (HEADER.saturating_add(len))
                .min(self.filled.saturating_mul(2))
                .max(self.filled + 1),
            None => 0,
        }
        .max(READ_CHUNK);
        if self.inbuf.len() >= want {
            return;
        }
        if want > READ_CHUNK {
            let mut big = pool_take();
            if big.len() > self.inbuf.len() {
                big[..self.filled].copy_from_slice(&self.inbuf[..self.filled]);
                self.inbuf = big;
            } else if !big.is_empty() {
                pool_put(big);
            }
        }
        if self.inbuf.len() < want {
            self.inbuf.resize(want, 0);
        }
    }

    /// Drops what was read: the socket is gone.
    fn release_input(&mut self) {
        self.inbuf = Vec::new();
        self.filled = 0;
        self.infds.clear();
    }
}
