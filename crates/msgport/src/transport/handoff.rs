//! Where a port leaves the process, and where one arrives.
//!
//! ```text
//!   post_message(data, [port])                       a frame arrives on a link
//!        │                                                   │
//!   export(port) ──► Handover ──► wire::encode_frame    wire::decode_body ──► Handover ──► import
//!   (detach the endpoint; a proxy              (pure: bytes and       (pure)              (a new endpoint,
//!    socket pair if its peer stays)             descriptors)                               its link)
//! ```
//!
//! Ports are exported to [`Handover`]s *before* encoding and imported *after* decoding, so the
//! codec in `wire` does no I/O and can be round-tripped in a unit test. Hand-off without loss
//! (DESIGN §3): an end that is already socket-backed stops reading first (`Link::export`), and
//! its record carries what was read but not delivered (`queued`, the `prefix` of a partial
//! frame) and what was not yet written (`unsent`); everything newer is in the kernel buffer,
//! which travels with the descriptor. An end whose peer stays in the process leaves a proxy
//! behind: its old endpoint forwards what the peer posts into a new socket pair whose other end
//! travels. When both ends of a channel leave, the second takes over the first's link, so their
//! new homes talk directly (`tests/transport.rs`: `main_is_not_on_the_path_between_two_children`).
//!
//! Lock order: a link's `deliver` lock, then its `io` lock, then endpoint locks. Nothing here
//! holds one link's lock while making another.
//!
//! Proven by: `tests/transport.rs` (`main_is_not_on_the_path_between_two_children`,
//! `chaos_a_stream_survives_its_reader_circling_four_processes`: a reading end handed around
//! four processes mid-stream loses, duplicates and reorders nothing), `tests/semantics.rs`
//! (every scenario with an end transferred three times and across three processes), and
//! `wire`'s round trip of a message with ports in flight.

use std::os::fd::{AsFd, OwnedFd};

use super::link::{Link, Reading};
use super::wire::MAX_PORTS;
use crate::error::PostError;
use crate::event::{MessageEvent, Payload};
use crate::port::{Endpoint, MessagePort, Outbound, Peer, WireData};
use crate::sync::Arc;
use crate::sys;
use crate::value::Value;

/// What a socket carries from an earlier owner of a port to the next: the bytes (and
/// descriptors) read of a frame not yet complete, and what was not yet written.
#[derive(Default)]
pub(crate) struct Backlog {
    pub prefix: Vec<u8>,
    pub prefix_fds: Vec<OwnedFd>,
    pub unsent: Vec<Segment>,
    /// The ring the peer writes for this end, and the one this end writes (`transport::ring`).
    pub ring_in: Option<RingState>,
    pub ring_out: Option<RingState>,
}

/// A link's ring as it travels with the socket: its descriptor, the position reached (read or
/// written), and whether the ring (rather than the socket) carries that direction's next frames.
pub(crate) struct RingState {
    pub fd: OwnedFd,
    pub pos: u32,
    pub active: bool,
}

/// A stretch of a link's output: bytes, and the descriptors that go with their first byte(s)
/// (at most `sys::MAX_FDS_PER_SEND` per byte).
pub(crate) struct Segment {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A port in flight: everything its next home needs.
#[derive(Default)]
pub(crate) struct Handover {
    /// Its socket (none when the channel is already dead).
    pub socket: Option<OwnedFd>,
    pub peer_gone: bool,
    pub closed: bool,
    /// Messages queued at it and not yet delivered, in order.
    pub queued: Vec<Outgoing>,
    pub backlog: Backlog,
}

/// A message as it crosses a process boundary: data, and its ports as handovers.
pub(crate) struct Outgoing {
    pub data: WireData,
    pub ports: Vec<Handover>,
}

/// Exports the ports of a message about to leave the process. More than [`MAX_PORTS`] is
/// refused before any port is touched.
pub(crate) fn export_message(
    data: WireData,
    ports: Vec<MessagePort>,
) -> Result<Outgoing, PostError> {
    if ports.len() > MAX_PORTS {
        return Err(PostError::TooManyPorts {
            count: ports.len(),
            max: MAX_PORTS,
        });
    }
    // Most messages carry no port: no iterator machinery for them (measured: 4 % of a small
    // post's time on one CPU).
    if ports.is_empty() {
        return Ok(Outgoing {
            data,
            ports: Vec::new(),
        });
    }
    let mut handovers = Vec::with_capacity(ports.len());
    for port in ports {
        handovers.push(export(port).map_err(|e| PostError::Resources(e.to_string()))?);
    }
    Ok(Outgoing {
        data,
        ports: handovers,
    })
}

/// Detaches a port so that it can leave the process.
pub(crate) fn export(port: MessagePort) -> std::io::Result<Handover> {
    let ep = port.endpoint().clone();
    // A port whose peer already left the process takes over the peer's link, so that the two
    // ends talk directly (this process drops off the path).
    let outbound: Option<Arc<dyn Outbound>> = match port.peer() {
        Peer::Local(peer) => peer.take_forward(),
        Peer::Remote(out) => Some(out.clone()),
    };
    let handover = match (port.peer(), outbound) {
        (_, Some(out)) => {
            let Some(link) = out.as_any().downcast_ref::<Link>() else {
                return Err(std::io::Error::other(
                    "a port backed by something else than a link",
                ));
            };
            // Stop reading first: from here on, nothing more reaches the endpoint.
            let exported = link.export();
            let detached = ep.detach(None);
            Handover {
                peer_gone: detached.peer_gone || exported.socket.is_none(),
                socket: exported.socket,
                closed: detached.closed,
                queued: export_queued(detached.queued),
                backlog: exported.backlog,
            }
        }
        (Peer::Local(peer), None) => {
            let (here, there) = sys::socketpair()?;
            // The staying end's port never pulls through this link: waits on its endpoint arm it.
            let link: Arc<dyn Outbound> =
                Link::new(here, peer.clone(), Backlog::default(), Reading::OnWait)?;
            let detached = ep.detach(Some(link.clone()));
            let connected = !detached.closed && !detached.peer_gone;
            if !connected {
                link.close();
            }
            Handover {
                socket: connected.then_some(there),
                peer_gone: detached.peer_gone,
                closed: detached.closed,
                queued: export_queued(detached.queued),
                backlog: Backlog::default(),
            }
        }
        (Peer::Remote(_), None) => {
            return Err(std::io::Error::other("a remote port without a link"))
        }
    };
    drop(port);
    Ok(handover)
}

/// The messages queued at a leaving port, with their own ports exported in turn. A message
/// whose data cannot be turned into a `Value` (its `Serialize` failed) travels as `undefined`:
/// the receiver in this process would have seen an error for it.
fn export_queued(queued: Vec<MessageEvent>) -> Vec<Outgoing> {
    queued
        .into_iter()
        .map(|message| {
            let (data, ports) = message
                .into_wire()
                .unwrap_or((WireData::Value(Value::Undefined), Vec::new()));
            let ports = ports
                .into_iter()
                .filter_map(|p| match export(p) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!("msgport: a queued port could not leave: {e}");
                        None
                    }
                })
                .collect();
            Outgoing { data, ports }
        })
        .collect()
}

/// Rebuilds a message that arrived from another process.
pub(crate) fn import_message(message: Outgoing) -> MessageEvent {
    let ports = if message.ports.is_empty() {
        Vec::new()
    } else {
        message.ports.into_iter().map(import).collect()
    };
    MessageEvent::new(payload(message.data), ports)
}

/// The payload of a message that arrived: its data still encoded (decoded on demand, into the
/// type the receiver asks for), or already a `Value` (large data).
pub(crate) fn payload(data: WireData) -> Payload {
    match data {
        WireData::Value(v) => Payload::Value(v),
        WireData::Cbor { bytes, plain } => Payload::Cbor {
            bytes: bytes.into(),
            plain,
        },
        // Only a sender holds these; a frame's data arrives as the two above.
        WireData::Encoded(encoded) => Payload::Cbor {
            bytes: encoded.into_bytes().into(),
            plain: false,
        },
    }
}

/// Rebuilds a port that arrived from another process.
pub(crate) fn import(h: Handover) -> MessagePort {
    let peer_gone = h.peer_gone || (h.socket.is_none() && !h.closed);
    let queued = h.queued.into_iter().map(import_message).collect();
    let ep = Arc::new(Endpoint::arriving(queued, peer_gone, h.closed));
    let dead_peer = || Peer::Local(Arc::new(Endpoint::new_closed()));
    let peer = match h.socket {
        Some(socket) if !h.closed && !peer_gone => {
            // A descriptor that is not a Unix stream socket (a peer can send any) would never
            // report readiness or an end: such a port arrives closed.
            let linked = sys::check_stream_socket(socket.as_fd())
                .and_then(|()| Link::new(socket, ep.clone(), h.backlog, Reading::ByPort));
            match linked {
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
    MessagePort::from_parts(ep, peer)
}

/// A port over a socket whose other end is another process's port (a bootstrap connection, or
/// one made by `connect`/`accept`).
pub(crate) fn from_socket(socket: OwnedFd) -> std::io::Result<MessagePort> {
    let ep = Arc::new(Endpoint::new());
    let link = Link::new(socket, ep.clone(), Backlog::default(), Reading::ByPort)?;
    Ok(MessagePort::from_parts(ep, Peer::Remote(link)))
}
