//! Frames on a link, and port records.
//!
//! ```text
//! frame  = length: u32 LE (of body) | descriptors: u32 LE | body
//! body   = CBOR [data, [record, ...]]            data: the message's Value (docs/wire-format.md)
//! record = CBOR [flags, [body, ...], prefix: bytes, prefix_fds: uint, [unsent: bytes, fds: uint, ...]
//!                (, [in_state, in_pos, out_state, out_pos])?]
//! flags  = bit 0: has a socket, bit 1: its peer is gone, bit 2: closed locally
//! ```
//!
//! A record's sixth field, when there, is the link's rings (`ring`; state 0 none, 1 idle, 2
//! carrying its direction's frames, and the position reached), whose descriptors come after all
//! the record's others. Control frames (`Control`: bit 30 of the descriptor count, a one-byte
//! body) offer a ring and switch a direction between socket and ring.
//!
//! A frame's descriptors are taken from the link's descriptor queue. They travel attached to
//! bytes of their own frame (a `sendmsg` carrying them starts inside that frame), at most
//! `sys::MAX_FDS_PER_SEND` per byte, so a receiver knows at every point how many descriptors
//! may be waiting: those of the frame it is reading ([`unclaimed_limit`]). Within a frame they
//! are consumed in decoding order: a record's socket, then the descriptors of its queued
//! messages (recursively), then those of its read prefix, then those of each unsent segment.
//!
//! Every count read from a peer is bounded before it is used: at most [`MAX_PORTS`] records and
//! descriptors per frame, records nested at most 32 deep, and no reservation past what the
//! input can hold.
//!
//! Proven by: the round trips below (`a_message_with_ports_in_flight_round_trips`,
//! `frame_bodies_are_the_codecs_encoding`), `tests/hostile.rs` (`a_huge_record_count_closes_the_port_without_allocating`,
//! `lying_counts_inside_records_close_the_port`), and the `frames` fuzz target, which drives
//! [`next_frame`] and the body decoder.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::fd::OwnedFd;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::handoff::{Backlog, Handover, Outgoing, RingState, Segment};
use crate::codec::{self, ok, CodecError};
use crate::error::PostError;
use crate::port::WireData;
use crate::sys;
use crate::value::cbor::{Hole, Piece};
use crate::value::Value;

/// Bytes before a frame's body.
pub(crate) const HEADER: usize = 8;
/// How deep records may nest (a port in flight carrying queued messages carrying ports...).
const MAX_RECORD_DEPTH: usize = 32;
/// The most port records (at every depth) and the most descriptors one frame may carry.
pub(crate) const MAX_PORTS: usize = 4096;
/// What a decoded port record costs in memory, beyond its bytes (measured: ~430 bytes).
pub(crate) const RECORD_COST: usize = 512;
/// What a received descriptor counts for in a port's receive budget: a port that queues many
/// ports stops reading long before it holds a large share of the process's descriptors.
pub(crate) const FD_COST: usize = 16 << 10;

/// The largest frame body a link accepts, and a sender may write.
pub(crate) fn max_frame() -> usize {
    crate::limits::max_message_size()
}

/// Why a frame was refused: the link that carried it is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    #[error("frame descriptors do not match its records")]
    Descriptors,
    #[error("records nest too deep")]
    TooDeep,
    #[error("port slot {0} outside the transfer list")]
    BadSlot(u32),
    #[error("frame carries more than {MAX_PORTS} ports or descriptors")]
    TooManyPorts,
    #[error("shared-memory region refused: {0}")]
    Region(std::io::Error),
    #[error("ring refused: {0}")]
    Ring(std::io::Error),
    #[error(transparent)]
    RingBroken(#[from] super::ring::RingError),
}

/// Set in a frame header's descriptor count: the body is in a shared-memory region
/// ([`shm`](super::shm)), the frame's own body is that body's length, and its first descriptor
/// is the region.
pub(crate) const SHARED: u32 = 1 << 31;
/// A region frame's size: its header and the region body's length (u64 LE).
pub(crate) const SHARED_FRAME: usize = HEADER + 8;

/// Set in a frame header's descriptor count: a control frame of the link's rings
/// ([`ring`](super::ring)), whose one-byte body is its [`Control`] kind.
pub(crate) const CONTROL: u32 = 1 << 30;
/// A control frame's size.
pub(crate) const CONTROL_FRAME: usize = HEADER + 1;

/// What a control frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// (Socket, with one descriptor.) A ring the sender will write for the receiver to read.
    Offer = 1,
    /// (Socket.) The sender's next frames are in its ring.
    ToRing = 2,
    /// (Ring.) The sender's next frames are on the socket.
    ToSocket = 3,
    /// (Socket.) Nothing: the receiver's reactor is to look at the ring.
    Poke = 4,
}

impl Control {
    /// The control frame of this kind.
    pub(crate) fn frame(self) -> [u8; CONTROL_FRAME] {
        let nfds = CONTROL | u32::from(self == Control::Offer);
        let mut f = [0; CONTROL_FRAME];
        f[..HEADER].copy_from_slice(&frame_header(1, nfds));
        f[HEADER] = self as u8;
        f
    }

    /// The kind a control frame's body names (`None`: no kind, a broken frame).
    pub(crate) fn of(body: &[u8]) -> Option<Control> {
        match body {
            [1] => Some(Control::Offer),
            [2] => Some(Control::ToRing),
            [3] => Some(Control::ToSocket),
            [4] => Some(Control::Poke),
            _ => None,
        }
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Length of the body that follows the header.
    pub len: usize,
    /// Descriptors of the frame (a region frame's region included).
    pub nfds: usize,
    /// A region frame.
    pub shared: bool,
    /// A control frame.
    pub control: bool,
}

fn head(bytes: &[u8]) -> Option<Head> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let nfds = u32::from_le_bytes(bytes.get(4..HEADER)?.try_into().ok()?);
    Some(Head {
        len,
        nfds: (nfds & !(SHARED | CONTROL)) as usize,
        shared: nfds & SHARED != 0,
        control: nfds & CONTROL != 0,
    })
}

/// A frame header: the body's length, then the descriptor count with its flags (`SHARED`).
fn frame_header(len: usize, nfds: u32) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..].copy_from_slice(&nfds.to_le_bytes());
    h
}

/// Reads a frame header: (body length, descriptor count).
pub(crate) fn header(bytes: &[u8]) -> Option<(usize, usize)> {
    head(bytes).map(|h| (h.len, h.nfds))
}

/// Checks a frame header against the limits.
fn check_header(h: Head) -> Result<(), WireError> {
    if h.len > max_frame() {
        return Err(WireError::TooLarge(h.len));
    }
    if h.nfds > MAX_PORTS + usize::from(h.shared) {
        return Err(WireError::TooManyPorts);
    }
    if h.shared && (h.len != SHARED_FRAME - HEADER || h.nfds == 0 || h.control) {
        return Err(CodecError::Invalid("a region frame is 8 bytes with its region").into());
    }
    if h.control && (h.len != 1 || h.nfds > 1) {
        return Err(
            CodecError::Invalid("a control frame is one byte and one descriptor at most").into(),
        );
    }
    Ok(())
}

/// The framing routine, for the link and the fuzzer alike: the next frame at the start of
/// `buf`, if all of it is there. A header that breaks a limit is an error as soon as it is
/// complete, before its body arrives.
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<Head>, WireError> {
    let Some(h) = head(buf) else {
        return Ok(None);
    };
    check_header(h)?;
    Ok((buf.len() - HEADER >= h.len).then_some(h))
}

/// A region frame: the header (`nfds` descriptors, the region first) and the length of the
/// body in the region.
pub(crate) fn shared_frame(size: usize, nfds: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(SHARED_FRAME);
    out.extend_from_slice(&frame_header(SHARED_FRAME - HEADER, nfds as u32 | SHARED));
    out.extend_from_slice(&(size as u64).to_le_bytes());
    out
}

/// The length of the body a region frame's body announces, checked against the limit.
pub(crate) fn shared_size(body: &[u8]) -> Result<usize, WireError> {
    let size = body
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| CodecError::Invalid("a region frame is 8 bytes"))?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > max_frame() {
        return Err(WireError::TooLarge(size));
    }
    Ok(size)
}

/// How many received descriptors may be waiting while `partial` (the start of a frame, not all
/// of it) is what has been read of it: the count its header announces, or, before the header
/// is complete, what the bytes read so far can carry. `Err` if `partial` is not the start of a
/// valid frame.
pub(crate) fn unclaimed_limit(partial: &[u8]) -> Result<usize, WireError> {
    match head(partial) {
        Some(h) => {
            check_header(h)?;
            Ok(h.nfds)
        }
        None => Ok(partial.len() * sys::MAX_FDS_PER_SEND),
    }
}

/// One encoded frame: its bytes in parts (the first starts with the header; large byte strings
/// are parts of their own, moved out of the message, never copied), and the descriptors to
/// attach.
#[derive(Debug)]
pub(crate) struct Frame {
    pub parts: Vec<Vec<u8>>,
    pub fds: Vec<OwnedFd>,
    /// Stretches of the body already written in a shared-memory region by the serializer
    /// (`value::cbor::Spill`), in order: only a frame about to go through that region has any.
    pub gaps: Vec<Gap>,
}

/// A stretch of a frame's body that is not in its parts: `len` bytes written at body offset
/// `at` of a region, which belong just before part `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    pub before: usize,
    pub at: usize,
    pub len: usize,
}

impl Frame {
    /// The body's length (parts and gaps, without the header).
    pub(crate) fn body_len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum::<usize>()
            + self.gaps.iter().map(|g| g.len).sum::<usize>()
            - HEADER
    }
}

/// Byte strings at least this large are moved into the frame as parts of their own, and a
/// received message's data this large stays where it was read ([`decode_body_leaving`]).
#[cfg(not(fuzzing))]
pub(crate) const ZERO_COPY_MIN: usize = 64 * 1024;
/// Under the fuzzer, whose inputs are a few KiB, small enough for them to take those paths.
#[cfg(fuzzing)]
pub(crate) const ZERO_COPY_MIN: usize = 256;

/// Builds a frame's parts.
struct FrameWriter {
    parts: Vec<Vec<u8>>,
    cur: Vec<u8>,
    fds: Vec<OwnedFd>,
    gaps: Vec<Gap>,
    records: usize,
}

impl FrameWriter {
    fn enc(&mut self) -> Encoder<&mut Vec<u8>> {
        Encoder::new(&mut self.cur)
    }

    /// Appends `bytes` as a part of its own.
    fn part(&mut self, bytes: Vec<u8>) {
        let cur = std::mem::take(&mut self.cur);
        if !cur.is_empty() {
            self.parts.push(cur);
        }
        self.parts.push(bytes);
    }

    /// Leaves room for `len` bytes written in a region at body offset `at`.
    fn gap(&mut self, at: usize, len: usize) {
        let cur = std::mem::take(&mut self.cur);
        if !cur.is_empty() {
            self.parts.push(cur);
        }
        self.gaps.push(Gap {
            before: self.parts.len(),
            at,
            len,
        });
    }

    /// Writes `v` as `codec::encode` would, moving large byte strings instead of copying them.
    fn value(&mut self, v: Value) {
        match v {
            Value::Binary(b) if b.bytes.len() >= ZERO_COPY_MIN => {
                if let Some(tag) = codec::binary_tag(b.kind) {
                    let _ = ok(self.enc().tag(minicbor::data::Tag::new(tag)));
                }
                let _ = ok(self.enc().bytes_len(b.bytes.len() as u64));
                self.part(b.bytes);
            }
            Value::Array(items) => {
                let _ = ok(self.enc().array(items.len() as u64));
                items.into_iter().for_each(|item| self.value(item));
            }
            Value::Object(entries) => {
                let _ = ok(self.enc().map(entries.len() as u64));
                for (k, v) in entries {
                    let _ = ok(self.enc().str(&k));
                    self.value(v);
                }
            }
            Value::Map(entries) => {
                let _ = ok(self.enc().tag(minicbor::data::Tag::new(codec::TAG_MAP)));
                let _ = ok(self.enc().map(entries.len() as u64));
                for (k, v) in entries {
                    self.value(k);
                    self.value(v);
                }
            }
            Value::Set(items) => {
                let _ = ok(self.enc().tag(minicbor::data::Tag::new(codec::TAG_SET)));
                let _ = ok(self.enc().array(items.len() as u64));
                items.into_iter().for_each(|item| self.value(item));
            }
            other => {
                let _ = codec::write_value(&mut self.enc(), &other);
            }
        }
    }

    fn body(&mut self, message: Outgoing) -> Result<(), PostError> {
        let _ = ok(self.enc().array(2));
        match message.data {
            WireData::Value(v) => self.value(v),
            // Already the codec's bytes: large ones become a part of their own (moved).
            WireData::Cbor { bytes, .. } if bytes.len() >= ZERO_COPY_MIN => self.part(bytes),
            WireData::Cbor { bytes, .. } => self.cur.extend_from_slice(&bytes),
            WireData::Encoded(encoded) => encoded.pieces(|piece| match piece {
                Piece::Inline(bytes) => self.cur.extend_from_slice(bytes),
                Piece::Hole(Hole::Apart(bytes)) => self.part(bytes),
                Piece::Hole(Hole::Placed { at, len }) => self.gap(at, len),
            }),
        }
        let _ = ok(self.enc().array(message.ports.len() as u64));
        self.records += message.ports.len();
        if self.records > MAX_PORTS {
            return Err(PostError::TooManyPorts {
                count: self.records,
                max: MAX_PORTS,
            });
        }
        for port in message.ports {
            self.record(port)?;
        }
        Ok(())
    }

    fn record(&mut self, record: Handover) -> Result<(), PostError> {
        let flags = u8::from(record.socket.is_some())
            | u8::from(record.peer_gone) << 1
            | u8::from(record.closed) << 2;
        let rings = record.backlog.ring_in.is_some() || record.backlog.ring_out.is_some();
        let _ = ok(self.enc().array(if rings { 6 } else { 5 }));
        let _ = ok(self.enc().u8(flags));
        self.fds.extend(record.socket);
        let _ = ok(self.enc().array(record.queued.len() as u64));
        for message in record.queued {
            self.body(message)?;
        }
        let Backlog {
            prefix,
            prefix_fds,
            unsent,
            ring_in,
            ring_out,
        } = record.backlog;
        let _ = ok(self.enc().bytes(&prefix));
        let _ = ok(self.enc().u64(prefix_fds.len() as u64));
        self.fds.extend(prefix_fds);
        let _ = ok(self.enc().array(2 * unsent.len() as u64));
        for segment in unsent {
            let _ = ok(self.enc().bytes(&segment.bytes));
            let _ = ok(self.enc().u64(segment.fds.len() as u64));
            self.fds.extend(segment.fds);
        }
        if rings {
            let _ = ok(self.enc().array(4));
            for ring in [ring_in, ring_out] {
                let state = ring.as_ref().map_or(0, |r| 1 + u8::from(r.active));
                let _ = ok(self.enc().u8(state));
                let _ = ok(self.enc().u32(ring.as_ref().map_or(0, |r| r.pos)));
                self.fds.extend(ring.map(|r| r.fd));
            }
        }
        if self.fds.len() > MAX_PORTS {
            return Err(PostError::TooManyPorts {
                count: self.fds.len(),
                max: MAX_PORTS,
            });
        }
        Ok(())
    }
}

/// Encodes a message into one frame: bytes and the descriptors of its ports (which are closed
/// when encoding fails).
pub(crate) fn encode_frame(message: Outgoing) -> Result<Frame, PostError> {
    match portless_frame(message) {
        Ok(frame) => frame,
        Err(message) => write_frame(message),
    }
}

/// The frame of a message without ports whose data the serializer wrote in one buffer (the
/// common post): that buffer, the header and the body's array heads put around its data, so
/// no second buffer and no copy but a shift. The bytes [`write_frame`] writes. Hands the
/// message back if it is not of that kind.
fn portless_frame(message: Outgoing) -> Result<Result<Frame, PostError>, Outgoing> {
    let encoded = match message {
        Outgoing {
            data: WireData::Encoded(encoded),
            ports,
        } if ports.is_empty() && encoded.holes.is_empty() => encoded,
        other => return Err(other),
    };
    Ok(portless_bytes(encoded.head).map(|bytes| Frame {
        parts: vec![bytes],
        fds: Vec::new(),
        gaps: Vec::new(),
    }))
}

/// What comes before the data in the frame of a message without ports whose data is `data`
/// bytes long (its header and the body's array head); `0x80` follows the data.
pub(crate) fn portless_head(data: usize) -> [u8; HEADER + 1] {
    let mut h = [0x82; HEADER + 1];
    h[..HEADER].copy_from_slice(&frame_header(data + 2, 0));
    h
}

/// The length of the frame of a message without ports whose data (its CBOR, complete) is
/// `data` bytes long, or why it cannot be sent.
pub(crate) fn portless_len(data: usize) -> Result<usize, PostError> {
    let size = data + 2;
    if size > max_frame() {
        return Err(PostError::TooLarge {
            size,
            max: max_frame(),
        });
    }
    Ok(HEADER + size)
}

/// Appends the frame of a message without ports whose data is `data` (its CBOR, complete), once
/// [`portless_len`] accepted its length: the bytes [`portless_bytes`] makes.
pub(crate) fn write_portless(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&frame_header(data.len() + 2, 0));
    out.push(0x82);
    out.extend_from_slice(data);
    out.push(0x80);
}

/// The frame of a message without ports whose data is `bytes` (its CBOR, complete): the header
/// and the body's array heads put around the data, in the same buffer.
pub(crate) fn portless_bytes(mut bytes: Vec<u8>) -> Result<Vec<u8>, PostError> {
    let data = bytes.len();
    portless_len(data)?;
    bytes.reserve(HEADER + 2);
    bytes.resize(HEADER + 1 + data, 0);
    bytes.copy_within(..data, HEADER + 1);
    bytes[..HEADER].copy_from_slice(&frame_header(data + 2, 0));
    bytes[HEADER] = 0x82;
    bytes.push(0x80);
    Ok(bytes)
}

/// [`encode_frame`] for any message.
fn write_frame(message: Outgoing) -> Result<Frame, PostError> {
    // Room for what goes in the first part (header, array heads, the data's inline bytes), so
    // that a small message's frame is one allocation, not one and two regrowths.
    let inline = match &message.data {
        WireData::Encoded(encoded) => encoded.head.len(),
        WireData::Cbor { bytes, .. } if bytes.len() < ZERO_COPY_MIN => bytes.len(),
        _ => 0,
    };
    let mut cur = Vec::with_capacity(HEADER + 2 + inline);
    cur.resize(HEADER, 0);
    let mut w = FrameWriter {
        parts: Vec::new(),
        cur,
        fds: Vec::new(),
        gaps: Vec::new(),
        records: 0,
    };
    w.body(message)?;
    let FrameWriter {
        mut parts,
        cur,
        fds,
        gaps,
        ..
    } = w;
    if !cur.is_empty() {
        parts.push(cur);
    }
    let size = parts.iter().map(Vec::len).sum::<usize>()
        + gaps.iter().map(|g| g.len).sum::<usize>()
        - HEADER;
    if size > max_frame() {
        return Err(PostError::TooLarge {
            size,
            max: max_frame(),
        });
    }
    parts[0][..HEADER].copy_from_slice(&frame_header(size, fds.len() as u32));
    Ok(Frame { parts, fds, gaps })
}

/// A decoded frame body: the message, and how many port records it held (at every depth).
pub(crate) struct Decoded {
    pub message: Outgoing,
    pub records: usize,
    /// Where the message's data lies in the body when [`decode_body_leaving`] left it there
    /// (its `WireData::Cbor` then holds no bytes: the caller puts them in).
    pub left: Option<Range<usize>>,
}

/// Decodes a frame body with exactly the descriptors `fds` (its ports stay handovers: the
/// caller imports them).
pub(crate) fn decode_body(body: &[u8], fds: VecDeque<OwnedFd>) -> Result<Decoded, WireError> {
    let mut decoded = decode_body_leaving(body, fds)?;
    if let Some(range) = decoded.left.take() {
        if let WireData::Cbor { bytes, .. } = &mut decoded.message.data {
            *bytes = body[range].to_vec();
        }
    }
    Ok(decoded)
}

/// [`decode_body`], except that the data of the message itself is only found:
/// [`Decoded::left`] says where, and the caller takes it from the buffer it read the body into
/// (in place when small, without copying when it is large and the caller can give that buffer
/// away).
pub(crate) fn decode_body_leaving(
    body: &[u8],
    fds: VecDeque<OwnedFd>,
) -> Result<Decoded, WireError> {
    if fds.is_empty() {
        if let Some(read) = read_portless(body) {
            // Fuzzing checks this reading against the general reader's on every input.
            #[cfg(fuzzing)]
            assert_eq!(
                outline(&read),
                outline(&read_body_leaving(body, VecDeque::new())),
                "a port-less body read two ways"
            );
            return read;
        }
    }
    read_body_leaving(body, fds)
}

/// Most messages carry no port: a body `[data, []]` is read here without the general reader
/// (what that reader makes of it, errors included). `None` for a body of another shape.
fn read_portless(body: &[u8]) -> Option<Result<Decoded, WireError>> {
    Some(portless_data(body)?.map(|data| Decoded {
        message: Outgoing {
            data: WireData::Cbor {
                bytes: Vec::new(),
                plain: data.plain,
            },
            ports: Vec::new(),
        },
        records: 0,
        left: Some(data.range),
    }))
}

/// Where the data of a port-less body lies, and whether it is plain.
pub(crate) struct PortlessData {
    pub range: Range<usize>,
    pub plain: bool,
}

/// The data of a body `[data, []]` that names no port slot (what [`decode_body_leaving`]
/// leaves of it, errors included), without building a [`Decoded`]: the receiver's common case.
/// `None` for a body of another shape.
#[inline]
pub(crate) fn portless_data(body: &[u8]) -> Option<Result<PortlessData, WireError>> {
    if body.first() != Some(&0x82) {
        return None;
    }
    let scanned = match codec::scan(body, 1) {
        Ok(scanned) => scanned,
        Err(e) => return Some(Err(e.into())),
    };
    if scanned.max_slot.is_some() || body.get(scanned.end..) != Some(&[0x80][..]) {
        return None;
    }
    Some(Ok(PortlessData {
        range: 1..scanned.end,
        plain: scanned.plain,
    }))
}

/// What a decode found, to compare two ways of decoding.
#[cfg(any(test, fuzzing))]
fn outline(decoded: &Result<Decoded, WireError>) -> String {
    match decoded {
        Ok(d) => format!(
            "{:?} {} {:?} {}",
            d.message.data,
            d.message.ports.len(),
            d.left,
            d.records
        ),
        Err(e) => format!("error: {e}"),
    }
}

/// [`decode_body_leaving`] for any body, with the general reader.
fn read_body_leaving(body: &[u8], fds: VecDeque<OwnedFd>) -> Result<Decoded, WireError> {
    let mut r = Reader {
        d: Decoder::new(body),
        fds,
        records: 0,
        left: None,
    };
    let message = r.body(0)?;
    if r.d.position() != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - r.d.position()).into());
    }
    if !r.fds.is_empty() {
        return Err(WireError::Descriptors);
    }
    Ok(Decoded {
        message,
        records: r.records,
        left: r.left,
    })
}

/// A frame body being decoded, with the descriptors it has not yet consumed.
struct Reader<'a> {
    d: Decoder<'a>,
    fds: VecDeque<OwnedFd>,
    /// Records decoded so far, at every depth.
    records: usize,
    /// Where the message's own large data lies (see [`decode_body_leaving`]).
    left: Option<Range<usize>>,
}

impl Reader<'_> {
    /// Reads a definite array header whose elements each take at least `min_bytes`.
    fn array(&mut self, what: &'static str, min_bytes: usize) -> Result<usize, WireError> {
        let n = self
            .d
            .array()
            .map_err(CodecError::from)?
            .ok_or(CodecError::Invalid(what))?;
        let left = self.d.input().len() - self.d.position();
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= left => Ok(n),
            _ => Err(CodecError::Invalid(what).into()),
        }
    }

    fn body(&mut self, depth: usize) -> Result<Outgoing, WireError> {
        if depth > MAX_RECORD_DEPTH {
            return Err(WireError::TooDeep);
        }
        if self.d.array().map_err(CodecError::from)? != Some(2) {
            return Err(CodecError::Invalid("a message body is [data, ports]").into());
        }
        // The data is found, not decoded: the receiver decodes it into the type it asks for
        // (`value::cbor_de`), straight from these bytes. The message's own data is left where
        // it is, for the caller to keep as suits its size ([`decode_body_leaving`]); a queued
        // message's large data is decoded now, so that its byte strings move into the message.
        let start = self.d.position();
        let scanned = codec::scan(self.d.input(), start)?;
        let bytes = &self.d.input()[start..scanned.end];
        let data = if depth == 0 {
            self.left = Some(start..scanned.end);
            WireData::Cbor {
                bytes: Vec::new(),
                plain: scanned.plain,
            }
        } else if bytes.len() >= ZERO_COPY_MIN {
            match codec::read_value(&mut self.d, 0) {
                Ok(v) => WireData::Value(v),
                Err(_) => WireData::Cbor {
                    bytes: bytes.to_vec(),
                    plain: false,
                },
            }
        } else {
            // A kept buffer of its size class (it goes back there once the message is done).
            let mut kept = crate::buffers::take_small(bytes.len());
            kept.extend_from_slice(bytes);
            WireData::Cbor {
                bytes: kept,
                plain: scanned.plain,
            }
        };
        self.d.set_position(scanned.end);
        // A record takes at least 6 bytes.
        let n = self.array("ports must be a definite array within the frame", 6)?;
        self.records += n;
        if self.records > MAX_PORTS {
            return Err(WireError::TooManyPorts);
        }
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push(self.record(depth)?);
        }
        if let Some(slot) = scanned.max_slot {
            if slot as usize >= ports.len() {
                return Err(WireError::BadSlot(slot));
            }
        }
        Ok(Outgoing { data, ports })
    }

    fn take_fds(&mut self, n: u64, carried_by: usize) -> Result<Vec<OwnedFd>, WireError> {
        let n = usize::try_from(n).map_err(|_| WireError::Descriptors)?;
        if n > self.fds.len() || n > carried_by {
            return Err(WireError::Descriptors);
        }
        Ok(self.fds.drain(..n).collect())
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, WireError> {
        if self.d.datatype().map_err(CodecError::from)? != Type::Bytes {
            return Err(CodecError::Invalid(what).into());
        }
        Ok(self.d.bytes().map_err(CodecError::from)?.to_vec())
    }

    fn record(&mut self, depth: usize) -> Result<Handover, WireError> {
        let fields = self.d.array().map_err(CodecError::from)?;
        if fields != Some(5) && fields != Some(6) {
            return Err(CodecError::Invalid("a port record has five or six fields").into());
        }
        let flags = self.d.u8().map_err(CodecError::from)?;
        if flags > 7 {
            return Err(CodecError::Invalid("unknown port record flags").into());
        }
        let socket = if flags & 1 != 0 {
            Some(self.fds.pop_front().ok_or(WireError::Descriptors)?)
        } else {
            None
        };
        // A queued body takes at least 3 bytes.
        let n = self.array("queued must be a definite array within the frame", 3)?;
        let mut queued = Vec::with_capacity(n);
        for _ in 0..n {
            queued.push(self.body(depth + 1)?);
        }
        let prefix = self.bytes("a read prefix is a byte string")?;
        let limit = if prefix.is_empty() {
            0
        } else {
            // A prefix is the start of one frame, not all of it.
            if matches!(header(&prefix), Some((len, _)) if prefix.len() >= HEADER + len) {
                return Err(CodecError::Invalid("a read prefix holds a whole frame").into());
            }
            unclaimed_limit(&prefix)?
        };
        let n = self.d.u64().map_err(CodecError::from)?;
        let prefix_fds = self.take_fds(n, limit)?;
        // A segment takes at least 2 bytes (an empty byte string and a count).
        let n = self.array("unsent must be a definite array within the frame", 1)?;
        if n % 2 != 0 {
            return Err(CodecError::Invalid("unsent segments come in pairs").into());
        }
        let mut unsent = Vec::with_capacity(n / 2);
        for _ in 0..n / 2 {
            let bytes = self.bytes("unsent bytes are a byte string")?;
            let carried_by = bytes.len() * sys::MAX_FDS_PER_SEND;
            let n = self.d.u64().map_err(CodecError::from)?;
            let fds = self.take_fds(n, carried_by)?;
            if !bytes.is_empty() {
                unsent.push(Segment { bytes, fds });
            }
        }
        let (ring_in, ring_out) = if fields == Some(6) {
            if self.d.array().map_err(CodecError::from)? != Some(4) {
                return Err(CodecError::Invalid("a record's rings are four numbers").into());
            }
            (self.ring()?, self.ring()?)
        } else {
            (None, None)
        };
        if (ring_in.is_some() || ring_out.is_some()) && socket.is_none() {
            return Err(CodecError::Invalid("rings without a socket").into());
        }
        Ok(Handover {
            socket,
            peer_gone: flags & 2 != 0,
            closed: flags & 4 != 0,
            queued,
            backlog: Backlog {
                prefix,
                prefix_fds,
                unsent,
                ring_in,
                ring_out,
            },
        })
    }

    /// One ring of a record: its state (0 none, 1 idle, 2 carrying its direction's frames),
    /// its position, and its descriptor (the next one) unless none.
    fn ring(&mut self) -> Result<Option<RingState>, WireError> {
        let state = self.d.u8().map_err(CodecError::from)?;
        let pos = self.d.u32().map_err(CodecError::from)?;
        match state {
            0 => Ok(None),
            1 | 2 => Ok(Some(RingState {
                fd: self.fds.pop_front().ok_or(WireError::Descriptors)?,
                pos,
                active: state == 2,
            })),
            _ => Err(CodecError::Invalid("unknown ring state").into()),
        }
    }
}

/// Splits `bytes` into frames as a link does and decodes each body (with no descriptors): the
/// fuzz target's entry. Returns how many frames decoded before the first error or the end.
pub(crate) fn decode_stream(mut bytes: &[u8]) -> usize {
    let mut frames = 0;
    while let Ok(Some(Head { len, nfds, .. })) = next_frame(bytes) {
        if nfds > 0 {
            break;
        }
        if decode_body(&bytes[HEADER..HEADER + len], VecDeque::new()).is_err() {
            break;
        }
        frames += 1;
        bytes = &bytes[HEADER + len..];
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn as_value(data: &WireData) -> Value {
        match data {
            WireData::Value(v) => v.clone(),
            WireData::Cbor { bytes, .. } => codec::decode(bytes).unwrap(),
            WireData::Encoded(_) => panic!("a decoded frame holds no sender's encoding"),
        }
    }

    fn socket() -> OwnedFd {
        crate::sys::socketpair().unwrap().0
    }

    /// A port-less message the serializer wrote in one buffer is framed around that buffer,
    /// into the bytes the general frame writer writes.
    #[test]
    fn a_portless_frame_is_the_general_writers_frame() {
        #[derive(serde::Serialize)]
        struct Small {
            seq: u64,
            rest: [u64; 7],
            name: &'static str,
        }
        let encodings = [
            crate::value::cbor::to_parts(&(), None).unwrap(),
            crate::value::cbor::to_parts(&"x".repeat(300), None).unwrap(),
            crate::value::cbor::to_parts(
                &Small {
                    seq: u64::MAX >> 12,
                    rest: [7; 7],
                    name: "small",
                },
                None,
            )
            .unwrap(),
        ];
        for encoded in encodings {
            let message = || Outgoing {
                data: WireData::Encoded(encoded.clone()),
                ports: Vec::new(),
            };
            let Ok(Ok(fast)) = portless_frame(message()) else {
                panic!("a port-less message in one buffer has a frame of its own");
            };
            let general = write_frame(message()).unwrap();
            assert_eq!(fast.parts, general.parts);
            assert!(fast.fds.is_empty() && fast.gaps.is_empty());
            // Written behind other bytes (a burst's buffer), the same frame.
            let mut burst = vec![9; 5];
            assert_eq!(
                portless_len(encoded.head.len()).unwrap(),
                fast.parts[0].len()
            );
            write_portless(&mut burst, &encoded.head);
            assert_eq!(burst[..5], [9; 5]);
            assert_eq!(burst[5..], fast.parts[0]);
        }
        assert!(matches!(
            portless_len(max_frame() - 1),
            Err(PostError::TooLarge { .. })
        ));
        // Large byte strings apart, or ports: the general writer's.
        let apart =
            crate::value::cbor::to_parts(&serde_bytes::ByteBuf::from(vec![1; 70_000]), None);
        let apart = Outgoing {
            data: WireData::Encoded(apart.unwrap()),
            ports: Vec::new(),
        };
        assert!(portless_frame(apart).is_err());
        let with_port = Outgoing {
            data: WireData::Encoded(crate::value::cbor::to_parts(&(), None).unwrap()),
            ports: vec![Handover::default()],
        };
        assert!(portless_frame(with_port).is_err());
    }

    /// The reading of a port-less body (`[data, []]`) without the general reader finds what
    /// the general reader finds, for such bodies, for bodies close to them, and for cut and
    /// corrupted ones.
    #[test]
    fn a_body_without_ports_reads_as_the_general_reader_reads_it() {
        let mut bodies: Vec<Vec<u8>> = vec![
            vec![0x82, 0xf6, 0x80],
            vec![0x82, 0x83, 0x01, 0x02, 0x03, 0x80],
            vec![0x82, 0xa1, 0x61, b'a', 0x01, 0x80],
            vec![0x82, 0xa1, 0x01, 0x02, 0x80], // not plain
            vec![0x82, 0xda, 0x6d, 0x70, 0, 1, 0, 0x80], // a port slot, no port
            vec![0x82, 0xf6, 0x80, 0x00],       // trailing bytes
            vec![0x82, 0xf6, 0x81],             // ports cut short
            vec![0x82, 0xf6],                   // no ports array
            vec![0x83, 0xf6, 0x80, 0x80],       // three fields
            vec![0x82, 0xf6, 0x9f, 0xff],       // an indefinite ports array
            vec![0x82, 0x5a, 0xff, 0xff, 0xff, 0xff], // data past the end
            vec![0x82, 0xff, 0x80],             // a stray break
        ];
        let mut seed = 7u32;
        for i in 0..bodies.len() {
            for cut in 0..bodies[i].len() {
                bodies.push(bodies[i][..cut].to_vec());
            }
            for _ in 0..16 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let mut corrupt = bodies[i].clone();
                let at = (seed >> 8) as usize % corrupt.len();
                corrupt[at] = (seed >> 16) as u8;
                bodies.push(corrupt);
            }
        }
        for body in &bodies {
            assert_eq!(
                outline(&decode_body_leaving(body, VecDeque::new())),
                outline(&read_body_leaving(body, VecDeque::new())),
                "{body:02x?}"
            );
        }
        // With descriptors the general reader reads it (they must belong to ports).
        let fds = VecDeque::from([socket()]);
        assert!(decode_body_leaving(&[0x82, 0xf6, 0x80], fds).is_err());
    }

    /// The codec is pure: a message with a port in flight (queued messages with ports of their
    /// own, a read prefix, unsent segments, descriptors everywhere) survives encode + decode.
    #[test]
    fn a_message_with_ports_in_flight_round_trips() {
        let inner = Handover {
            socket: Some(socket()),
            ..Handover::default()
        };
        let mut prefix = 40u32.to_le_bytes().to_vec();
        prefix.extend(2u32.to_le_bytes());
        prefix.extend([0x82, 0xf6]);
        let port = Handover {
            socket: Some(socket()),
            peer_gone: false,
            closed: false,
            queued: vec![Outgoing {
                data: WireData::Value(Value::from("queued")),
                ports: vec![inner],
            }],
            backlog: Backlog {
                prefix: prefix.clone(),
                prefix_fds: vec![socket()],
                unsent: vec![
                    Segment {
                        bytes: vec![1, 2, 3],
                        fds: vec![socket(), socket()],
                    },
                    Segment {
                        bytes: vec![4],
                        fds: Vec::new(),
                    },
                ],
                ring_in: Some(RingState {
                    fd: socket(),
                    pos: 7,
                    active: true,
                }),
                ring_out: Some(RingState {
                    fd: socket(),
                    pos: u32::MAX,
                    active: false,
                }),
            },
        };
        let big = Value::Binary(crate::value::Binary {
            kind: crate::value::BinaryKind::Uint8,
            bytes: vec![9; ZERO_COPY_MIN],
        });
        let data = Value::Array(vec![Value::Port(0), big.clone()]);
        let frame = encode_frame(Outgoing {
            data: WireData::Value(data.clone()),
            ports: vec![port],
        })
        .unwrap();
        assert_eq!(frame.fds.len(), 7);
        assert!(
            frame.parts.len() >= 3,
            "the large byte string is a part of its own"
        );
        let bytes: Vec<u8> = frame.parts.concat();
        let Head { len, nfds, .. } = next_frame(&bytes).unwrap().unwrap();
        assert_eq!((HEADER + len, nfds), (bytes.len(), 7));
        let decoded = decode_body(&bytes[HEADER..], frame.fds.into()).unwrap();
        assert_eq!(decoded.records, 2);
        assert_eq!(as_value(&decoded.message.data), data);
        let port = &decoded.message.ports[0];
        assert!(port.socket.is_some() && !port.peer_gone && !port.closed);
        assert_eq!(
            port.queued[0].data,
            WireData::Cbor {
                bytes: codec::encode(&Value::from("queued")),
                plain: true
            },
            "small data stays encoded until the receiver reads it"
        );
        assert!(port.queued[0].ports[0].socket.is_some());
        assert_eq!(port.backlog.prefix, prefix);
        assert_eq!(port.backlog.prefix_fds.len(), 1);
        assert_eq!(port.backlog.unsent.len(), 2);
        assert_eq!(port.backlog.unsent[0].bytes, [1, 2, 3]);
        assert_eq!(port.backlog.unsent[0].fds.len(), 2);
        assert_eq!(port.backlog.unsent[1].bytes, [4]);
        let ring_in = port.backlog.ring_in.as_ref().unwrap();
        assert_eq!((ring_in.pos, ring_in.active), (7, true));
        let ring_out = port.backlog.ring_out.as_ref().unwrap();
        assert_eq!((ring_out.pos, ring_out.active), (u32::MAX, false));
    }

    /// The frame writer's bytes are the codec's bytes (it only moves large byte strings into
    /// parts of their own).
    #[test]
    fn frame_bodies_are_the_codecs_encoding() {
        let big = Value::Binary(crate::value::Binary {
            kind: crate::value::BinaryKind::ArrayBuffer,
            bytes: vec![7; ZERO_COPY_MIN + 1],
        });
        let data = Value::Object(vec![
            (
                "a".into(),
                Value::Array(vec![Value::from(1.0), Value::from("two"), Value::Null]),
            ),
            ("big".into(), big),
            ("n".into(), Value::from(-1.5)),
        ]);
        let frame = encode_frame(Outgoing {
            data: WireData::Value(data.clone()),
            ports: Vec::new(),
        })
        .unwrap();
        let bytes = frame.parts.concat();
        let mut expected = vec![0x82];
        expected.extend(codec::encode(&data));
        expected.push(0x80);
        assert_eq!(&bytes[HEADER..], &expected[..]);
        // Data serialized straight to CBOR makes the same frame, large or small.
        for data in [data, Value::from("small")] {
            let direct = encode_frame(Outgoing {
                data: WireData::Encoded(crate::value::cbor::to_parts(&data, None).unwrap()),
                ports: Vec::new(),
            })
            .unwrap();
            let via_value = encode_frame(Outgoing {
                data: WireData::Value(data),
                ports: Vec::new(),
            })
            .unwrap();
            assert_eq!(direct.parts.concat(), via_value.parts.concat());
        }
    }
}
