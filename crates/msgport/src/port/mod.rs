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
mod outbound;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{PostError, RecvTimeoutError, Refused, TryRecvError};
use crate::event::{MessageEvent, Payload};
use crate::sync::Arc;
use crate::value::Value;
pub(crate) use endpoint::{Endpoint, Pulled};
pub(crate) use outbound::{Encoder, Outbound, PullMode, WireData};

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
    #[must_use = "a channel dropped at once is two closed ports"]
    pub fn new() -> Self {
        let a = Arc::new(Endpoint::new());
        let b = Arc::new(Endpoint::new());
        MessageChannel {
            port1: MessagePort::new(a.clone(), Peer::Local(b.clone())),
            port2: MessagePort::new(b, Peer::Local(a)),
        }
    }

    /// The two ports, as a tuple `(port1, port2)`.
    #[must_use = "ports dropped at once are closed"]
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
    /// This port posted to a peer elsewhere since its last blocking pull: the next pull waits
    /// for an answer, and reads the socket itself ([`PullMode::Answer`]).
    awaiting_answer: std::sync::atomic::AtomicBool,
}

/// Where a port's peer is: the backing of the channel, switched when an end leaves the process.
pub(crate) enum Peer {
    /// In this process: post by pushing onto its endpoint.
    Local(Arc<Endpoint>),
    /// Elsewhere: post through the backing (a socket link today).
    Remote(Arc<dyn Outbound>),
}

impl MessagePort {
    /// A port from its receiving side and where its peer is (the transport builds ports that
    /// arrive from other processes this way).
    pub(crate) fn from_parts(ep: Arc<Endpoint>, peer: Peer) -> Self {
        Self::new(ep, peer)
    }

    /// This end's receiving side.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    /// Where this end posts.
    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    fn new(ep: Arc<Endpoint>, peer: Peer) -> Self {
        MessagePort {
            ep,
            peer,
            low_latency: std::sync::atomic::AtomicBool::new(false),
            awaiting_answer: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Trades CPU for latency on this port's blocking pulls (`blocking_recv`, `recv_timeout`)
    /// when its peer is in another process: the pulling thread reads the socket itself (no
    /// hand-off from the I/O thread) and looks again and again, for 50 µs, before it sleeps.
    /// Off by default: it makes a round trip across CPUs faster, but burns CPU while it looks.
    /// Without it, a blocking pull that follows a post
    /// on the same port (a request waiting for its answer) already reads the socket itself,
    /// without looking again; a pull that follows no post (a consumer of a stream) is fed by
    /// the I/O thread, which reads ahead while the consumer works. Within one process it
    /// changes nothing (local pulls always spin briefly). The setting stays with this process:
    /// a transferred port arrives with it off.
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
    ///   that indexes past the transfer list; nothing is sent, the ports of `transfer` close
    ///   ([`try_post_message`](Self::try_post_message) hands them back instead).
    /// - [`PostError::PeerTransferred`]: `transfer` holds this port's own peer; the message is
    ///   dropped and the channel is closed for good.
    pub fn post_message<T, I>(&self, data: T, transfer: I) -> Result<(), PostError>
    where
        T: Serialize + Send + 'static,
        I: IntoIterator<Item = MessagePort>,
    {
        // The ports handed back are dropped: they close, as documented.
        self.post(data, transfer.into_iter().collect())
            .map_err(|refused| refused.error)
    }

    /// [`post_message`](Self::post_message) that hands back the ports of `transfer` when the
    /// message is refused before any of them was touched, as `tokio`'s `SendError` hands back
    /// its value: on [`PostError::PortNotTransferred`] and [`PostError::Serialize`] every port
    /// comes back, open and usable; on [`PostError::PeerTransferred`] every port but the peer
    /// (the channel is closed). The other errors happen once the ports have left ([`Refused`]'s
    /// `ports` is empty then: they are closed).
    ///
    /// ```
    /// use msgport::{MessageChannel, PostError, Value};
    ///
    /// let (a, _b) = MessageChannel::new().into_ports();
    /// let (keep, _far) = MessageChannel::new().into_ports();
    /// // Slot 1 names a second port that the transfer list lacks.
    /// let refused = a.try_post_message(Value::Port(1), [keep]).unwrap_err();
    /// assert!(matches!(refused.error, PostError::PortNotTransferred { slot: 1, transferred: 1 }));
    /// let keep = refused.ports.into_iter().next().unwrap();
    /// assert!(!keep.is_closed());
    /// ```
    pub fn try_post_message<T, I>(&self, data: T, transfer: I) -> Result<(), Refused>
    where
        T: Serialize + Send + 'static,
        I: IntoIterator<Item = MessagePort>,
    {
        self.post(data, transfer.into_iter().collect())
    }

    #[inline]
    fn post<T>(&self, data: T, ports: Vec<MessagePort>) -> Result<(), Refused>
    where
        T: Serialize + Send + 'static,
    {
        if let Some(v) = (&data as &dyn std::any::Any).downcast_ref::<Value>() {
            if let Some(slot) = v.max_port_slot() {
                if slot as usize >= ports.len() {
                    let error = PostError::PortNotTransferred {
                        slot,
                        transferred: ports.len(),
                    };
                    return Err(Refused { error, ports });
                }
            }
        }
        match &self.peer {
            Peer::Local(peer) => {
                if ports.iter().any(|p| Arc::ptr_eq(&p.ep, peer)) {
                    // Dropping the peer closes it; this end sees the close next.
                    let ports = ports
                        .into_iter()
                        .filter(|p| !Arc::ptr_eq(&p.ep, peer))
                        .collect();
                    let error = PostError::PeerTransferred;
                    return Err(Refused { error, ports });
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
            Peer::Remote(out) => {
                // A `Value` is taken as is (no allocation to find out); anything else is
                // serialized straight to CBOR (the bytes the `Value` would have made).
                let mut slot = Some(data);
                if !self.awaiting_answer.load(Ordering::Relaxed) {
                    self.awaiting_answer.store(true, Ordering::Relaxed);
                }
                match (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Value>>() {
                    Some(v) => {
                        let data = WireData::Value(v.take().unwrap_or(Value::Undefined));
                        out.post(data, ports).map_err(|error| Refused {
                            error,
                            ports: Vec::new(),
                        })
                    }
                    None => match slot.as_ref() {
                        Some(data) => {
                            let n = ports.len();
                            out.post_encoded(
                                &mut |spill, head| encode_direct(data, n, spill, head),
                                ports,
                            )
                        }
                        None => Ok(()),
                    },
                }
            }
        }
    }

    /// Posts borrowed data: [`post_message`](Self::post_message) for a `data` that is not
    /// `'static` or that the caller keeps (`&str`, a struct field, a slice). The data is
    /// serialized here, at once: straight to CBOR when the peer is in another process (which
    /// that costs anyway), to a [`Value`] within one process (where `post_message` would move a
    /// value without converting it); so a failing `Serialize` is reported here as
    /// [`PostError::Serialize`].
    ///
    /// ```
    /// use msgport::MessageChannel;
    ///
    /// #[derive(serde::Serialize)]
    /// struct Progress<'a> { stage: &'a str, done: u32 }
    ///
    /// let (a, b) = MessageChannel::new().into_ports();
    /// let stage = String::from("upload");
    /// a.post_message_ref(&Progress { stage: &stage, done: 3 }, []).unwrap();
    /// let event = b.blocking_recv().unwrap();
    /// assert_eq!(event.value().unwrap().get("stage").unwrap().as_str(), Some("upload"));
    /// ```
    pub fn post_message_ref<T, I>(&self, data: &T, transfer: I) -> Result<(), PostError>
    where
        T: Serialize + ?Sized,
        I: IntoIterator<Item = MessagePort>,
    {
        let ports: Vec<MessagePort> = transfer.into_iter().collect();
        match &self.peer {
            Peer::Remote(out) => {
                self.awaiting_answer.store(true, Ordering::Relaxed);
                let n = ports.len();
                out.post_encoded(
                    &mut |spill, head| encode_direct(data, n, spill, head),
                    ports,
                )
                .map_err(|refused| refused.error)
            }
            Peer::Local(_) => match crate::value::to_value(data) {
                Ok(value) => self.post_message(value, ports),
                Err(e) => Err(PostError::Serialize(e.to_string())),
            },
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
        if let Peer::Remote(out) = &self.peer {
            out.arm();
        }
    }

    /// Closes this end (idempotent). Messages queued here are discarded (ports in them close);
    /// the peer observes the close after the messages this end posted before it. Pulls on this
    /// end return "closed" from now on. Dropping a port closes it.
    pub fn close(&self) {
        if self.ep.close() {
            match &self.peer {
                Peer::Local(peer) => peer.peer_closed(),
                Peer::Remote(out) => out.close(),
            }
        }
    }

    /// Whether this end was closed locally ([`close`](Self::close)). To learn that the *peer*
    /// closed, pull until "closed" or register [`on_close`](Self::on_close).
    pub fn is_closed(&self) -> bool {
        self.ep.is_closed()
    }

    /// How many messages posted on this port wait at its peer, not yet taken (pulled or handed
    /// to a callback), when the peer is in this process; 0 when it is in another one (see
    /// [`unsent_bytes`](Self::unsent_bytes) for those). A poster that must not run far ahead
    /// of its reader (a gateway relaying an untrusted sender, say) reads it to pause: posting
    /// itself never blocks.
    ///
    /// ```
    /// use msgport::MessageChannel;
    ///
    /// let (a, b) = MessageChannel::new().into_ports();
    /// a.post_message(1, []).unwrap();
    /// a.post_message(2, []).unwrap();
    /// assert_eq!(a.peer_backlog(), 2);
    /// b.blocking_recv().unwrap();
    /// assert_eq!(a.peer_backlog(), 1);
    /// ```
    pub fn peer_backlog(&self) -> usize {
        match &self.peer {
            Peer::Local(peer) => peer.backlog(),
            Peer::Remote(_) => 0,
        }
    }

    /// Bytes of messages posted on this port that this process holds for the process its peer
    /// lives in: frames waiting to be written to its socket, and large messages waiting in
    /// shared-memory regions that the peer has not taken yet (counted by their size). That is
    /// where a stream piles up when the reader there stops reading (its side stops reading the
    /// socket at its high-water mark).
    /// 0 when the peer is in this process (see [`peer_backlog`](Self::peer_backlog)). Posting
    /// never blocks: a poster that must not run far ahead of a remote reader reads it to pause.
    pub fn unsent_bytes(&self) -> usize {
        match &self.peer {
            Peer::Local(peer) => peer.forwarded_unsent(),
            Peer::Remote(out) => out.unsent(),
        }
    }

    /// Registers the message callback, replacing any previous one (Electron's
    /// `port.on('message', ...)`). It does **not** start the port: call [`start`](Self::start).
    ///
    /// Callbacks run on the thread that makes the message available: the poster's thread for a
    /// started port whose peer is in this process, or the thread calling `start` for queued
    /// messages. When the peer is in another process, they run on a thread of msgport's
    /// callback pool, never on its I/O thread: a callback may take long or block (even waiting
    /// for another port's message) without delaying any other port. Only one callback of a
    /// port runs at a time, in order; a message posted meanwhile (also from inside a callback)
    /// is delivered by the thread already dispatching. A panic in a callback is caught and
    /// logged; the port keeps working.
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
            Pulled::Message(m) => {
                self.ep.note_delivered();
                Poll::Ready(Some(m))
            }
            Pulled::Closed => Poll::Ready(None),
            Pulled::Empty => Poll::Pending,
        }
    }

    /// Receives the next message, blocking this thread; `None` once closed and drained.
    /// Starts the port. Do not call it from async code.
    pub fn blocking_recv(&self) -> Option<MessageEvent> {
        match self.pull_blocking(None) {
            Pulled::Message(m) => {
                self.ep.note_delivered();
                Some(m)
            }
            Pulled::Closed => None,
            Pulled::Empty => unreachable!("an untimed wait returns an event"),
        }
    }

    /// Receives the next message, blocking for at most `timeout`. Starts the port.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<MessageEvent, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        match self.pull_blocking(deadline) {
            Pulled::Message(m) => {
                self.ep.note_delivered();
                Ok(m)
            }
            Pulled::Closed => Err(RecvTimeoutError::Closed),
            Pulled::Empty => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Blocks for the next event; a port whose peer is elsewhere waits as its backing decides
    /// (see [`set_low_latency`](Self::set_low_latency)).
    fn pull_blocking(&self, deadline: Option<Instant>) -> Pulled {
        match &self.peer {
            Peer::Local(_) => self.ep.pull_blocking(deadline),
            Peer::Remote(out) => {
                let answer = self.awaiting_answer.swap(false, Ordering::Relaxed);
                let how = if self.low_latency.load(Ordering::Relaxed) {
                    PullMode::Spin
                } else if answer {
                    PullMode::Answer
                } else {
                    PullMode::Fed
                };
                out.pull_blocking(&self.ep, deadline, how)
            }
        }
    }

    /// Receives a message if one is queued, without waiting. Starts the port.
    pub fn try_recv(&self) -> Result<MessageEvent, TryRecvError> {
        let mut pulled = self.ep.pull(None);
        if let Pulled::Empty = pulled {
            // Nobody else may be taking in what arrived: the link of a port whose peer is
            // elsewhere, or of one whose peer left (while nobody waits on it).
            let polled = match &self.peer {
                Peer::Remote(out) => {
                    out.poll_now();
                    true
                }
                Peer::Local(_) => match self.ep.unarmed_reader() {
                    Some(link) => {
                        link.poll_now();
                        true
                    }
                    None => false,
                },
            };
            if polled {
                pulled = self.ep.pull(None);
            }
        }
        match pulled {
            Pulled::Message(m) => {
                self.ep.note_delivered();
                Ok(m)
            }
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

/// Serializes `data` straight to CBOR (into `head`) for a message with `transferred` ports,
/// checking that the port slots it holds (a [`Value`] inside it) are in the transfer list.
fn encode_direct<T: Serialize + ?Sized>(
    data: &T,
    transferred: usize,
    spill: Option<&mut dyn crate::value::cbor::Spill>,
    head: Vec<u8>,
) -> Result<crate::value::cbor::Encoded, PostError> {
    match crate::value::cbor::to_parts_into(data, spill, head) {
        Ok(encoded) => match encoded.max_slot {
            Some(slot) if slot as usize >= transferred => {
                Err(PostError::PortNotTransferred { slot, transferred })
            }
            _ => Ok(encoded),
        },
        Err(e) => Err(PostError::Serialize(e.to_string())),
    }
}
