//! [`Outbound`]: the port state machine's only way out of the process. A port whose peer is
//! elsewhere holds one; so does an end that left the process while its peer stayed (a proxy:
//! what the peer posts is forwarded through it). The socket link implements it
//! (`transport/link.rs`); a multiplexed link or a browser bridge would be another
//! implementation, and nothing in `port/` would change.

use std::any::Any;
use std::time::Instant;

use super::endpoint::{Endpoint, Pulled};
use super::MessagePort;
use crate::error::{PostError, Refused};
use crate::event::MessageEvent;
use crate::value::cbor::{Encoded, Spill};
use crate::value::Value;

/// A message's data, ready to leave the process: a [`Value`] (posted as one, or forwarded), or
/// already encoded (a Rust value serialized straight to CBOR by `codec::to_vec`'s path: the same
/// bytes the `Value` would have made).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireData {
    Value(Value),
    /// Encoded data: `plain` when [`codec::scan`](crate::codec) found it so (only a received
    /// message knows; a sender's says `false`).
    Cbor {
        bytes: Vec<u8>,
        plain: bool,
    },
    /// A Rust value serialized straight to CBOR by the sender, large byte strings apart.
    Encoded(crate::value::cbor::Encoded),
}

/// How a blocking pull on a port whose peer is elsewhere waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullMode {
    /// On the endpoint, fed by the I/O thread: a consumer of a stream, whose reads the I/O
    /// thread does while it works on the last message.
    Fed,
    /// The pulling thread reads the socket itself: it posted on this port since its last pull,
    /// so it waits for an answer (one wake-up per message instead of two).
    Answer,
    /// [`Answer`](Self::Answer), looking again a few times before sleeping (low-latency mode).
    Spin,
}

/// Serializes a message's data, large byte strings in the given [`Spill`] when there is one,
/// the rest into the given buffer (emptied first; see [`Encoded::head`]).
pub(crate) type Encoder<'a> =
    dyn FnMut(Option<&mut dyn Spill>, Vec<u8>) -> Result<Encoded, PostError> + 'a;

pub(crate) trait Outbound: Send + Sync + 'static {
    /// Sends a message to the peer; the ports leave with it. Never blocks.
    fn post(&self, data: WireData, ports: Vec<MessagePort>) -> Result<(), PostError>;

    /// Serializes a message with `encode` and sends it. A backing that can take large byte
    /// strings in place (a link's shared-memory region) offers `encode` somewhere to put them.
    /// A message refused before it left (`encode` failed) hands its ports back.
    fn post_encoded(
        &self,
        encode: &mut Encoder<'_>,
        ports: Vec<MessagePort>,
    ) -> Result<(), Refused> {
        match encode(None, Vec::with_capacity(64)) {
            Ok(encoded) => self
                .post(WireData::Encoded(encoded), ports)
                .map_err(|error| Refused {
                    error,
                    ports: Vec::new(),
                }),
            Err(error) => Err(Refused { error, ports }),
        }
    }

    /// Forwards a message posted to an end that has left (the poster is long gone: a message
    /// that cannot be sent is logged and dropped, with its ports).
    fn forward(&self, message: MessageEvent) {
        let sent = match message.into_wire() {
            Ok((data, ports)) => self.post(data, ports).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!("msgport: message dropped: {e}");
        }
    }

    /// This end closed: the peer observes the close after everything posted before it.
    fn close(&self);

    /// Bytes of messages sent through this backing that this process still holds for the
    /// peer: a link's frames behind a full socket, and its shared-memory regions the peer has
    /// not freed.
    fn unsent(&self) -> usize {
        0
    }

    /// Asynchronous pulls or callbacks are about to wait on the endpoint this backing feeds:
    /// feed it without being asked.
    fn arm(&self);

    /// The endpoint's queue drained below its low-water mark: take in messages again.
    fn resume(&self);

    /// Blocks for the next event of `ep` (which this backing feeds), as the backing sees fit.
    fn pull_blocking(&self, ep: &Endpoint, deadline: Option<Instant>, how: PullMode) -> Pulled;

    /// A non-blocking pull found nothing: take in what has already arrived.
    fn poll_now(&self);

    /// The concrete backing, for the transport when the port itself leaves the process.
    fn as_any(&self) -> &dyn Any;
}
