//! One page connection: the table of the ports it was given or gave, and the two directions.
//!
//! Each port number names a *twin*: a Rust port in this process whose peer is the Rust-side
//! end of the page's port. A page's message on port `n` is posted on twin `n` (so it arrives
//! wherever that peer now lives: here, in a child process, anywhere); a message arriving at a
//! twin is written to the page as a frame on `n`. A Rust port that travels to the page becomes
//! a twin itself; a page port that travels to Rust gets a fresh channel, one end a twin, the
//! other handed to the receiver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use msgport::{MessageChannel, MessageEvent, MessagePort};
use tokio::sync::{mpsc, watch};

use crate::frame::Frame;
use crate::Limits;

/// Why a connection ends early: a WebSocket close code and a reason (logged, and sent to the
/// client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shut {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const NORMAL: u16 = 1000;
pub(crate) const PROTOCOL_ERROR: u16 = 1002;
pub(crate) const POLICY_VIOLATION: u16 = 1008;
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;

struct Table {
    ports: HashMap<u64, Arc<MessagePort>>,
    /// The next number the gateway gives (even) and the next the client may give (odd).
    next_ours: u64,
    next_theirs: u64,
    /// Set when the connection ends: nothing is attached or forwarded any more.
    ended: bool,
    /// What the client posted on each port and the Rust side has not taken yet (see
    /// [`Conn::unread_over`]).
    unread: HashMap<u64, Unread>,
    /// Their sum, over every port.
    unread_bytes: usize,
}

/// The client's messages on one port still held in this process, oldest first: queued at the
/// port's peer, or (the peer being in another process) waiting for that link's socket.
#[derive(Default)]
struct Unread {
    sizes: VecDeque<usize>,
    /// Their sum.
    bytes: usize,
}

impl Table {
    /// Forgets the sizes of the messages of port `id` that left: a peer in this process says
    /// how many of the newest it still holds (a queue is taken in order); for a peer in
    /// another process, the link says how many bytes still wait for its socket (the newest
    /// messages, written in order), which the newest sizes are counted against.
    fn settle(&mut self, id: u64) {
        let (backlog, unsent) = self
            .ports
            .get(&id)
            .map_or((0, 0), |twin| (twin.peer_backlog(), twin.unsent_bytes()));
        if let Some(unread) = self.unread.get_mut(&id) {
            while unread.sizes.len() > backlog && (unsent == 0 || unread.bytes > unsent) {
                let size = unread.sizes.pop_front().unwrap_or(0);
                unread.bytes -= size;
                self.unread_bytes -= size;
            }
            if unread.sizes.is_empty() {
                self.unread.remove(&id);
            }
        }
    }
}

pub(crate) struct Conn {
    table: Mutex<Table>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    shut: watch::Sender<Option<Shut>>,
    limits: Limits,
}

impl Conn {
    pub(crate) fn new(
        limits: Limits,
        out: mpsc::UnboundedSender<Vec<u8>>,
        queued: Arc<AtomicUsize>,
        shut: watch::Sender<Option<Shut>>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            table: Mutex::new(Table {
                ports: HashMap::new(),
                next_ours: 2,
                next_theirs: 1,
                ended: false,
                unread: HashMap::new(),
                unread_bytes: 0,
            }),
            out,
            queued,
            shut,
            limits,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection with `code` and `reason` (the first reason given wins).
    pub(crate) fn shut(&self, code: u16, reason: impl Into<String>) {
        let reason = reason.into();
        self.shut.send_if_modified(|now| {
            if now.is_some() {
                return false;
            }
            *now = Some(Shut { code, reason });
            true
        });
    }

    fn push(&self, frame: Frame) {
        let bytes = frame.encode();
        let queued = self.queued.fetch_add(bytes.len(), Ordering::AcqRel) + bytes.len();
        if queued > self.limits.max_queued_bytes {
            self.shut(
                POLICY_VIOLATION,
                format!(
                    "the client does not read: {queued} bytes queued for it (limit {})",
                    self.limits.max_queued_bytes
                ),
            );
            return;
        }
        // The writer is gone only once the connection ended.
        let _ = self.out.send(bytes);
    }

    /// Makes `port` the twin of number `id`: what arrives at it goes to the client.
    pub(crate) fn attach(self: &Arc<Self>, id: u64, port: MessagePort) {
        let port = Arc::new(port);
        {
            let mut table = self.table();
            if table.ended {
                port.close();
                return;
            }
            table.ports.insert(id, port.clone());
        }
        self.listen(id, &port);
    }

    /// Forwards what arrives at twin `id` to the client. Outside the table's lock: starting a
    /// port may deliver its queued messages at once, on this thread, and their callbacks take
    /// the lock.
    fn listen(self: &Arc<Self>, id: u64, port: &MessagePort) {
        let weak = Arc::downgrade(self);
        let on_close = weak.clone();
        port.on_message(move |event| {
            if let Some(conn) = weak.upgrade() {
                conn.forward(id, event);
            }
        });
        port.on_close(move || {
            if let Some(conn) = on_close.upgrade() {
                conn.twin_closed(id);
            }
        });
        port.start();
    }

    /// A message arrived at twin `id`: write it to the client, naming the ports it carries.
    fn forward(self: &Arc<Self>, id: u64, mut event: MessageEvent) {
        let ports = std::mem::take(&mut event.ports);
        let data = match event.value() {
            Ok(data) => data,
            Err(e) => {
                // The web's messageerror: this message is lost, the port goes on.
                tracing::warn!(
                    port = id,
                    "msgport-bridge: a message for the client does not decode: {e}"
                );
                return;
            }
        };
        let mut named = Vec::with_capacity(ports.len());
        {
            let mut table = self.table();
            if table.ended {
                return;
            }
            if table.ports.len() + ports.len() > self.limits.max_ports {
                drop(table);
                self.shut(
                    POLICY_VIOLATION,
                    format!(
                        "more than {} ports on one connection",
                        self.limits.max_ports
                    ),
                );
                return;
            }
            // In the table before the frame leaves: the client may use a number as soon as it
            // reads it.
            for port in ports {
                let id = table.next_ours;
                table.next_ours += 2;
                let port = Arc::new(port);
                table.ports.insert(id, port.clone());
                named.push((id, port));
            }
        }
        // The frame that names the ports goes first: what arrives at them follows it.
        self.push(Frame::Message {
            port: id,
            data,
            transfer: named.iter().map(|(id, _)| *id).collect(),
        });
        for (id, port) in named {
            self.listen(id, &port);
        }
    }

    /// Twin `id`'s peer closed (dropped, closed, its process died).
    fn twin_closed(&self, id: u64) {
        let removed = self.table().ports.remove(&id);
        if removed.is_none() {
            return;
        }
        self.push(Frame::Close { port: id });
        if id == 0 {
            self.shut(NORMAL, "main closed the connection");
        }
    }

    /// Whether the client may have been given (or have given) number `id` once.
    fn was_named(table: &Table, id: u64) -> bool {
        id == 0
            || (id.is_multiple_of(2) && id < table.next_ours)
            || (!id.is_multiple_of(2) && id < table.next_theirs)
    }

    /// A WebSocket message from the client: a frame or a batch. An error ends the connection.
    pub(crate) fn incoming(self: &Arc<Self>, bytes: &[u8]) -> Result<(), Shut> {
        let frames = Frame::decode_all(bytes).map_err(|e| Shut {
            code: PROTOCOL_ERROR,
            reason: e.to_string(),
        })?;
        // What each message costs until the Rust side takes it: its share of the WebSocket
        // message it came in.
        let cost = bytes.len() / frames.len().max(1);
        frames
            .into_iter()
            .try_for_each(|frame| self.one(frame, cost))
    }

    /// Whether messages the client posted and the Rust side has not taken yet hold more than
    /// `mark` bytes. With `all`, every port's count is brought up to date first (its peer's
    /// backlog read); without, the count is as each post left it (its own port settled).
    pub(crate) fn unread_over(&self, mark: usize, all: bool) -> bool {
        let mut table = self.table();
        if all {
            let ids: Vec<u64> = table.unread.keys().copied().collect();
            ids.into_iter().for_each(|id| table.settle(id));
        }
        table.unread_bytes > mark
    }

    fn one(self: &Arc<Self>, frame: Frame, cost: usize) -> Result<(), Shut> {
        let violation = |reason: String| Shut {
            code: PROTOCOL_ERROR,
            reason,
        };
        match frame {
            Frame::Close { port } => {
                let mut table = self.table();
                if !Self::was_named(&table, port) {
                    return Err(violation(format!(
                        "closes port {port}, which it was never given"
                    )));
                }
                let removed = table.ports.remove(&port);
                drop(table);
                if let Some(twin) = removed {
                    twin.close();
                }
                if port == 0 {
                    return Err(Shut {
                        code: NORMAL,
                        reason: "the client closed the connection".into(),
                    });
                }
                Ok(())
            }
            Frame::Message {
                port,
                data,
                transfer,
            } => {
                if let Some(slot) = data.max_port_slot() {
                    if slot as usize >= transfer.len() {
                        return Err(violation(format!(
                            "port slot {slot} past the {} transferred port(s)",
                            transfer.len()
                        )));
                    }
                }
                let mut table = self.table();
                if !Self::was_named(&table, port) {
                    return Err(violation(format!(
                        "posts on port {port}, which it was never given"
                    )));
                }
                for &id in &transfer {
                    if id != table.next_theirs {
                        return Err(violation(format!(
                            "transfers port {id}: the next new number is {}",
                            table.next_theirs
                        )));
                    }
                    table.next_theirs += 2;
                }
                if table.ports.len() + transfer.len() > self.limits.max_ports {
                    return Err(Shut {
                        code: POLICY_VIOLATION,
                        reason: format!(
                            "more than {} ports on one connection",
                            self.limits.max_ports
                        ),
                    });
                }
                let Some(twin) = table.ports.get(&port).cloned() else {
                    // A port closed meanwhile: the message is lost, and the ports it carried
                    // are closed for the client to see.
                    drop(table);
                    for id in transfer {
                        self.push(Frame::Close { port: id });
                    }
                    return Ok(());
                };
                drop(table);
                let mut handed = Vec::with_capacity(transfer.len());
                for &id in &transfer {
                    let (ours, theirs) = MessageChannel::new().into_ports();
                    self.attach(id, ours);
                    handed.push(theirs);
                }
                let posted = twin.post_message(data, handed);
                if let Err(e) = posted {
                    tracing::warn!(port, "msgport-bridge: a client's message was refused: {e}");
                } else {
                    let mut table = self.table();
                    let unread = table.unread.entry(port).or_default();
                    unread.sizes.push_back(cost);
                    unread.bytes += cost;
                    table.unread_bytes += cost;
                    table.settle(port);
                }
                Ok(())
            }
        }
    }

    /// The connection is over: every port it holds closes (their Rust peers see close).
    pub(crate) fn end(&self) {
        let ports: Vec<Arc<MessagePort>> = {
            let mut table = self.table();
            table.ended = true;
            table.ports.drain().map(|(_, p)| p).collect()
        };
        for port in ports {
            port.remove_listeners();
            port.close();
        }
    }
}
