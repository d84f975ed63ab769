//! [`MessageChannel`] and [`MessagePort`]: entangled pairs of ports.
//!
//! The rules (DESIGN §2), each proven by a test of the semantics suite
//! (`tests/semantics.rs`, run over every topology):
//!
//! - messages arrive exactly once, in the order posted, also when either end is transferred;
//! - messages wait in the receiver's queue until it is started ([`MessagePort::start`], or any
//!   pull: `recv`, `blocking_recv`, `recv_timeout`, `try_recv`, the `Stream`);
//! - [`MessagePort::close`] and `Drop` are the same; the peer observes the close exactly once,
//!   after every message posted before it, and only once it is started;
//! - posting to a port whose peer is gone, or on a port closed locally, silently drops the
//!   message (as on the web and in Electron);
//! - a transferred port arrives unstarted and without callbacks, with its queue intact; a closed
//!   port can be transferred and arrives closed;
//! - `port1.post_message(x, [port2])` drops the message and kills the channel.

mod endpoint;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{PostError, RecvTimeoutError, TryRecvError};
use crate::event::{MessageEvent, Payload};
use crate::sync::Arc;
use crate::value::Value;
pub(crate) use endpoint::Endpoint;
use endpoint::Pulled;

use crate::sys;
use crate::transport::wire::{self, Record};
use crate::transport::{Backlog, Link};

/// A connected pair of ports: a message posted on one arrives on the other.
///
/// ```
/// use msgport::MessageChannel;
///
/// let channel = MessageChannel::new();
/// // It's OK to post before the other end listens: messages queue until it starts.
/// channel.port2.post_message("hello", []).unwrap();
/// let event = channel.port1.blocking_recv().unwrap();
/// assert_eq!(event.data::<String>().unwrap(), "hello");
/// ```
#[derive(Debug)]
pub struct MessageChannel {
    /// One end of the channel.
    pub port1: MessagePort,
    /// The other end of the channel.
    pub port2: MessagePort,
}

impl MessageChannel {
    /// Creates a channel: two entangled ports, neither started.
    pub fn new() -> Self {
        let a = Arc::new(Endpoint::new());
        let b = Arc::new(Endpoint::new());
        MessageChannel {
            port1: MessagePort::new(a.clone(), Peer::Local(b.clone())),
            port2: MessagePort::new(b, Peer::Local(a)),
        }
    }

    /// The two ports, as a tuple `(port1, port2)`.
    pub fn into_ports(self) -> (MessagePort, MessagePort) {
        (self.port1, self.port2)
    }
}

impl Default for MessageChannel {
    fn default() -> Self {
        Self::new()
    }
}

/// One end of a [`MessageChannel`] (Electron's `MessagePortMain`).
///
/// A port is not `Clone`: it is moved into the transfer list of
/// [`post_message`](Self::post_message), so the web's transfer errors (a port in its own
/// transfer list, the same port twice, a port already transferred) cannot be written:
///
/// ```compile_fail
/// let (a, b) = msgport::MessageChannel::new().into_ports();
/// let (c, _d) = msgport::MessageChannel::new().into_ports();
/// a.post_message((), [c]).unwrap();
/// a.post_message((), [c]).unwrap(); // error: use of moved value `c`
/// ```
///
/// ```compile_fail
/// let (a, _b) = msgport::MessageChannel::new().into_ports();
/// a.post_message((), [a]).unwrap(); // error: cannot move out of `a` because it is borrowed
/// ```
///
/// ```compile_fail
/// let (a, _b) = msgport::MessageChannel::new().into_ports();
/// let c = a.clone(); // error: no method named `clone`
/// ```
///
/// Receiving, in the four ways Rust code expects, all of which start the port:
/// [`recv`](Self::recv) (async, any executor), [`blocking_recv`](Self::blocking_recv) /
/// [`recv_timeout`](Self::recv_timeout), [`try_recv`](Self::try_recv), and the
/// [`Stream`](futures_core::Stream) implementation; or Electron's callback style with
/// [`on_message`](Self::on_message) / [`on_close`](Self::on_close) and then
/// [`start`](Self::start).
///
/// `MessagePort` is `Send` and `Sync`: it can be posted on from several threads at once. Pull
/// from one task or thread at a time; several pullers are correct but each message goes to one
/// of them.
pub struct MessagePort {
    /// This end's receiving side.
    ep: Arc<Endpoint>,
    /// Where this end posts.
    peer: Peer,
    /// Blocking pulls on a socket-backed port read the socket themselves and spin briefly
    /// before sleeping ([`set_low_latency`](Self::set_low_latency)).
    low_latency: std::sync::atomic::AtomicBool,
}

/// Where a port's peer is: the backing of the channel, switched when an end leaves the process.
enum Peer {
    /// In this process: post by pushing onto its endpoint.
    Local(Arc<Endpoint>),
    /// In another process (or behind a socket): post by writing a frame to the link.
    Remote(Arc<Link>),
}

impl MessagePort {
    fn new(ep: Arc<Endpoint>, peer: Peer) -> Self {
        MessagePort {
            ep,
            peer,
            low_latency: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Trades CPU for latency on this port's blocking pulls (`blocking_recv`, `recv_timeout`)
    /// when its peer is in another process: the pulling thread reads the socket itself (no
    /// hand-off from the I/O thread) and looks again a few times, for some microseconds,
    /// before it sleeps. Off by default: it makes a round trip across CPUs several times
    /// faster, but a receiver that keeps up with a stream then reads message by message, which
    /// costs throughput (figures in the project's notes). Within one process it changes
    /// nothing (local pulls always spin briefly). The setting stays with this process: a
    /// transferred port arrives with it off.
    pub fn set_low_latency(&self, on: bool) {
        self.low_latency
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if !on {
            self.arm_reactor();
        }
    }

    /// Posts a message to the peer, moving the ports of `transfer` along with it.
    ///
    /// `data` is any `serde::Serialize` value (or a [`Value`]). Within one process it is moved,
    /// never encoded; the receiver decodes it as the type it asks for. `transfer` is anything
    /// that iterates over ports: `[]`, `[port]`, a `Vec`, an `Option`. They arrive in
    /// [`MessageEvent::ports`] in the same order, unstarted, with any messages queued at them.
    ///
    /// Posting does not say whether the message is delivered: if the peer is gone, or this port
    /// was closed, the message is silently dropped (with the ports in it, which close).
    ///
    /// # Errors
    /// - [`PostError::PortNotTransferred`]: `data` is a [`Value`] holding a [`Value::Port`] slot
    ///   that indexes past the transfer list; nothing is sent, the ports of `transfer` close.
    /// - [`PostError::PeerTransferred`]: `transfer` holds this port's own peer; the message is
    ///   dropped and the channel is closed for good.
    pub fn post_message<T, I>(&self, data: T, transfer: I) -> Result<(), PostError>
    where
        T: Serialize + Send + 'static,
        I: IntoIterator<Item = MessagePort>,
    {
        let ports: Vec<MessagePort> = transfer.into_iter().collect();
        if let Some(v) = (&data as &dyn std::any::Any).downcast_ref::<Value>() {
            if let Some(slot) = v.max_port_slot() {
                if slot as usize >= ports.len() {
                    return Err(PostError::PortNotTransferred {
                        slot,
                        transferred: ports.len(),
                    });
                }
            }
        }
        match &self.peer {
            Peer::Local(peer) => {
                if ports.iter().any(|p| Arc::ptr_eq(&p.ep, peer)) {
                    // Dropping the transfer list closes the peer; this end sees the close next.
                    drop(ports);
                    return Err(PostError::PeerTransferred);
                }
                for port in &ports {
                    port.ep.detach_for_transfer();
                }
                let payload = match crate::inline::Inline::new(data) {
                    Ok(inline) => Payload::Inline(inline),
                    Err(data) => Payload::Native(Box::new(data)),
                };
                let message = MessageEvent::new(payload, ports);
                if let Err(dropped) = peer.push(message) {
                    drop(dropped);
                }
                Ok(())
            }
            Peer::Remote(link) => {
                // A `Value` is taken as is (no allocation to find out); anything else goes
                // through serde.
                let mut slot = Some(data);
                let value =
                    match (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Value>>() {
                        Some(v) => v.take().expect("filled above"),
                        None => crate::value::to_value(slot.as_ref().expect("filled above"))
                            .map_err(|e| PostError::Serialize(e.to_string()))?,
                    };
                let frame = wire::encode_frame(value, ports)?;
                link.send_frame(frame);
                Ok(())
            }
        }
    }

    /// Starts delivery: queued messages (and a pending close) go to the callbacks registered with
    /// [`on_message`](Self::on_message) / [`on_close`](Self::on_close), or wait for a pull.
    /// Idempotent. Pulling starts the port by itself; `start` is needed for callbacks, as with
    /// Electron's `MessagePortMain`.
    pub fn start(&self) {
        self.arm_reactor();
        self.ep.start();
    }

    /// Asynchronous pulls and callbacks are fed by the reactor thread.
    fn arm_reactor(&self) {
        if let Peer::Remote(link) = &self.peer {
            link.arm();
        }
    }

    /// Closes this end (idempotent). Messages queued here are discarded (ports in them close);
    /// the peer observes the close after the messages this end posted before it. Pulls on this
    /// end return "closed" from now on. Dropping a port closes it.
    pub fn close(&self) {
        if self.ep.close() {
            match &self.peer {
                Peer::Local(peer) => peer.peer_closed(),
                Peer::Remote(link) => link.close(),
            }
        }
    }

    /// Detaches this port to leave the process, as a record for the frame that carries it.
    pub(crate) fn export(self) -> std::io::Result<Record> {
        // A port whose peer already left the process takes over the peer's link, so that the
        // two ends talk directly (this process drops off the path).
        let link = match &self.peer {
            Peer::Local(peer) => peer.take_forward(),
            Peer::Remote(link) => Some(link.clone()),
        };
        match (&self.peer, link) {
            (_, Some(link)) => {
                // Stop reading first: from here on, nothing more reaches the endpoint.
                let exported = link.export();
                let detached = self.ep.detach(None);
                Ok(Record {
                    peer_gone: detached.peer_gone || exported.socket.is_none(),
                    socket: exported.socket,
                    closed: detached.closed,
                    queued: detached.queued,
                    prefix: exported.backlog.prefix,
                    prefix_fds: exported.backlog.prefix_fds,
                    unsent: exported.backlog.unsent,
                })
            }
            (Peer::Local(peer), None) => {
                let (here, there) = sys::socketpair()?;
                // Nobody pulls from a proxy's link: the reactor reads it from the start.
                let link = Link::new(here, peer.clone(), Backlog::default(), true)?;
                let detached = self.ep.detach(Some(link.clone()));
                let connected = !detached.closed && !detached.peer_gone;
                if !connected {
                    link.close();
                }
                Ok(Record {
                    socket: connected.then_some(there),
                    peer_gone: detached.peer_gone,
                    closed: detached.closed,
                    queued: detached.queued,
                    prefix: Vec::new(),
                    prefix_fds: Vec::new(),
                    unsent: Vec::new(),
                })
            }
            (Peer::Remote(_), None) => Err(std::io::Error::other("a remote port without a link")),
        }
    }

    /// Rebuilds a port that arrived from another process.
    pub(crate) fn import(record: Record) -> MessagePort {
        let peer_gone = record.peer_gone || (record.socket.is_none() && !record.closed);
        let ep = Arc::new(Endpoint::arriving(record.queued, peer_gone, record.closed));
        let dead_peer = || Peer::Local(Arc::new(Endpoint::new_closed()));
        let peer = match record.socket {
            Some(socket) if !record.closed && !peer_gone => {
                // A descriptor that is not a Unix stream socket (a peer can send any) would never
                // report readiness or an end: such a port arrives closed.
                let checked = crate::sys::check_stream_socket(std::os::fd::AsFd::as_fd(&socket));
                let backlog = Backlog {
                    prefix: record.prefix,
                    prefix_fds: record.prefix_fds,
                    unsent: record.unsent,
                };
                match checked.and_then(|()| Link::new(socket, ep.clone(), backlog, false)) {
                    Ok(link) => Peer::Remote(link),
                    Err(e) => {
                        tracing::warn!("msgport: cannot take over an arriving port's socket: {e}");
                        ep.peer_closed();
                        dead_peer()
                    }
                }
            }
            _ => dead_peer(),
        };
        MessagePort::new(ep, peer)
    }

    /// A port over a socket whose other end is another process's port (a bootstrap
    /// connection, or one made by `connect`/`accept`).
    pub(crate) fn from_socket(socket: std::os::fd::OwnedFd) -> std::io::Result<MessagePort> {
        let ep = Arc::new(Endpoint::new());
        let link = Link::new(socket, ep.clone(), Backlog::default(), false)?;
        Ok(MessagePort::new(ep, Peer::Remote(link)))
    }

    /// Whether this end was closed locally ([`close`](Self::close)). To learn that the *peer*
    /// closed, pull until "closed" or register [`on_close`](Self::on_close).
    pub fn is_closed(&self) -> bool {
        self.ep.is_closed()
    }

    /// Registers the message callback, replacing any previous one (Electron's
    /// `port.on('message', ...)`). It does **not** start the port: call [`start`](Self::start).
    ///
    /// Callbacks run on the thread that makes the message available: the poster's thread for a
    /// started port, or the thread calling `start` for queued messages. Only one callback of a
    /// port runs at a time, in order; a message posted meanwhile (also from inside a callback) is
    /// delivered by the thread already dispatching. Keep callbacks short and hand heavy work
    /// off. A panic in a callback is caught and logged; the port keeps working.
    ///
    /// The callback is dropped when the port is closed or transferred. A callback that owns its
    /// own port (say in an `Arc`) keeps it alive: close it explicitly.
    pub fn on_message<F>(&self, callback: F)
    where
        F: FnMut(MessageEvent) + Send + 'static,
    {
        self.arm_reactor();
        self.ep.set_on_message(Some(Box::new(callback)));
    }

    /// Registers the close callback (Electron's `port.on('close', ...)`), called once when the
    /// peer's close is observed: after every earlier message, and only once started. It runs as
    /// [`on_message`](Self::on_message) callbacks do, and also when a pull observes the close.
    pub fn on_close<F>(&self, callback: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.arm_reactor();
        self.ep.set_on_close(Some(Box::new(callback)));
    }

    /// Removes the message and close callbacks.
    pub fn remove_listeners(&self) {
        self.ep.set_on_message(None);
        self.ep.set_on_close(None);
    }

    /// Receives the next message; `None` once the channel is closed and drained. Starts the port.
    ///
    /// Works on any executor. # Cancel safety: dropping the future loses no message.
    pub fn recv(&self) -> Recv<'_> {
        Recv { port: self }
    }

    /// Polls for the next message: `Ready(Some)`, `Ready(None)` when closed, or `Pending` with
    /// the waker registered. Starts the port.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<MessageEvent>> {
        self.arm_reactor();
        match self.ep.pull(Some(cx.waker())) {
            Pulled::Message(m) => Poll::Ready(Some(m)),
            Pulled::Closed => Poll::Ready(None),
            Pulled::Empty => Poll::Pending,
        }
    }

    /// Receives the next message, blocking this thread; `None` once closed and drained.
    /// Starts the port. Do not call it from async code.
    pub fn blocking_recv(&self) -> Option<MessageEvent> {
        match self.pull_blocking(None) {
            Pulled::Message(m) => Some(m),
            Pulled::Closed => None,
            Pulled::Empty => unreachable!("an untimed wait returns an event"),
        }
    }

    /// Receives the next message, blocking for at most `timeout`. Starts the port.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<MessageEvent, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        match self.pull_blocking(deadline) {
            Pulled::Message(m) => Ok(m),
            Pulled::Closed => Err(RecvTimeoutError::Closed),
            Pulled::Empty => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Blocks for the next event. In low-latency mode a socket-backed port reads its socket on
    /// this thread while it waits (one wake-up per message, not two); otherwise the I/O thread
    /// delivers to the endpoint, where this thread spins briefly, then sleeps.
    fn pull_blocking(&self, deadline: Option<Instant>) -> Pulled {
        let Peer::Remote(link) = &self.peer else {
            return self.ep.pull_blocking(deadline);
        };
        if !self.low_latency.load(std::sync::atomic::Ordering::Relaxed) {
            // The reactor delivers, this thread waits on the endpoint.
            link.arm();
            return self.ep.pull_blocking(deadline);
        }
        // Wake now and then to notice a close made by another thread on this port.
        const SLICE: Duration = Duration::from_millis(50);
        let mut spins = 0;
        loop {
            match self.ep.pull(None) {
                Pulled::Empty => {}
                event => return event,
            }
            if spins < REMOTE_SPINS {
                // A busy sender's next message is usually microseconds away: look again
                // (yielding first, for a sender that shares this CPU) before sleeping in poll,
                // whose wake-up the sender pays for.
                spins += 1;
                if spins == 1 {
                    std::thread::yield_now();
                } else {
                    // Without a system call: a sender posting a stream has several messages
                    // in the socket by the time we read, and we do not contend for its lock.
                    for _ in 0..REMOTE_SPIN_HINTS {
                        std::hint::spin_loop();
                    }
                }
                link.read_now();
                continue;
            }
            let wait = match deadline {
                None => SLICE,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    _ => return Pulled::Empty,
                },
            };
            if !link.read_here(wait) {
                return self.ep.pull_blocking(deadline);
            }
        }
    }

    /// Receives a message if one is queued, without waiting. Starts the port.
    pub fn try_recv(&self) -> Result<MessageEvent, TryRecvError> {
        let mut pulled = self.ep.pull(None);
        if let (Pulled::Empty, Peer::Remote(link)) = (&pulled, &self.peer) {
            // In pull mode nobody else reads the socket.
            link.read_now();
            pulled = self.ep.pull(None);
        }
        match pulled {
            Pulled::Message(m) => Ok(m),
            Pulled::Closed => Err(TryRecvError::Closed),
            Pulled::Empty => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for MessagePort {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for MessagePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagePort")
            .field("endpoint", &Arc::as_ptr(&self.ep))
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// How many times a blocking pull on a socket-backed port looks at the socket again before it
/// sleeps in `poll`.
const REMOTE_SPINS: u32 = 4;
/// Spin hints between two looks at the socket.
const REMOTE_SPIN_HINTS: u32 = 256;

/// The future of [`MessagePort::recv`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Recv<'a> {
    port: &'a MessagePort,
}

impl Future for Recv<'_> {
    type Output = Option<MessageEvent>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.port.poll_recv(cx)
    }
}

impl futures_core::Stream for MessagePort {
    type Item = MessageEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MessageEvent>> {
        self.poll_recv(cx)
    }
}
