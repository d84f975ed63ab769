//! Frames on a link, and port records.
//!
//! ```text
//! frame  = length: u32 LE (of body) | descriptors: u32 LE | body
//! body   = CBOR [data, [record, ...]]            data: the message's Value (docs/wire-format.md)
//! record = CBOR [flags, [body, ...], prefix: bytes, prefix_fds: uint, unsent: bytes, unsent_fds: uint]
//! flags  = bit 0: has a socket, bit 1: its peer is gone, bit 2: closed locally
//! ```
//!
//! A frame's descriptors are taken from the link's descriptor queue (they arrive attached to
//! the frame's first bytes, or earlier ones). Within a frame they are consumed in decoding order:
//! a record's socket, then the descriptors of its queued messages (recursively), then those of
//! its read prefix, then those of its unsent bytes.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::codec::{self, ok, CodecError};
use crate::error::PostError;
use crate::event::{MessageEvent, Payload};
use crate::port::MessagePort;
use crate::value::Value;

/// Bytes before a frame's body.
pub(crate) const HEADER: usize = 8;
/// How deep records may nest (a port in flight carrying queued messages carrying ports...).
const MAX_RECORD_DEPTH: usize = 32;

/// The largest frame body a link accepts, and a sender may write (256 MiB by default).
pub(crate) fn max_frame() -> usize {
    MAX_FRAME.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) static MAX_FRAME: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(256 << 20);

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
}

/// One encoded frame: its bytes in parts (the first starts with the header; large byte strings
/// are parts of their own, moved out of the message, never copied), and the descriptors to
/// attach.
pub(crate) struct Frame {
    pub parts: Vec<Vec<u8>>,
    pub fds: Vec<OwnedFd>,
}

/// Byte strings at least this large are moved into the frame as parts of their own.
const ZERO_COPY_MIN: usize = 64 * 1024;

/// Builds a frame's parts.
struct FrameWriter {
    parts: Vec<Vec<u8>>,
    cur: Vec<u8>,
    fds: Vec<OwnedFd>,
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

    fn body(&mut self, data: Value, ports: Vec<MessagePort>) -> Result<(), PostError> {
        let _ = ok(self.enc().array(2));
        self.value(data);
        let _ = ok(self.enc().array(ports.len() as u64));
        let mut ports = ports.into_iter();
        for port in ports.by_ref() {
            let record = port
                .export()
                .map_err(|err| PostError::Resources(err.to_string()))?;
            self.record(record)?;
        }
        Ok(())
    }

    fn record(&mut self, record: Record) -> Result<(), PostError> {
        let flags = u8::from(record.socket.is_some())
            | u8::from(record.peer_gone) << 1
            | u8::from(record.closed) << 2;
        let _ = ok(self.enc().array(6));
        let _ = ok(self.enc().u8(flags));
        self.fds.extend(record.socket);
        let _ = ok(self.enc().array(record.queued.len() as u64));
        for message in record.queued {
            // A message that cannot be turned into a Value (its Serialize failed) travels as
            // `undefined`: the receiver in this process would have seen an error for it.
            let (data, ports) = message
                .into_wire()
                .unwrap_or((Value::Undefined, Vec::new()));
            self.body(data, ports)?;
        }
        let _ = ok(self.enc().bytes(&record.prefix));
        let _ = ok(self.enc().u64(record.prefix_fds.len() as u64));
        self.fds.extend(record.prefix_fds);
        let _ = ok(self.enc().bytes(&record.unsent));
        let _ = ok(self.enc().u64(record.unsent_fds.len() as u64));
        self.fds.extend(record.unsent_fds);
        Ok(())
    }
}

/// A port as it leaves the process (built by `Link::export`).
pub(crate) struct Record {
    pub socket: Option<OwnedFd>,
    pub peer_gone: bool,
    pub closed: bool,
    pub queued: Vec<MessageEvent>,
    pub prefix: Vec<u8>,
    pub prefix_fds: Vec<OwnedFd>,
    pub unsent: Vec<u8>,
    pub unsent_fds: Vec<OwnedFd>,
}

/// Encodes a message into one frame, exporting its ports (which leave this process even when
/// encoding fails: they are closed then).
pub(crate) fn encode_frame(data: Value, ports: Vec<MessagePort>) -> Result<Frame, PostError> {
    let mut w = FrameWriter {
        parts: Vec::new(),
        cur: vec![0u8; HEADER],
        fds: Vec::new(),
    };
    w.body(data, ports)?;
    let FrameWriter {
        mut parts,
        cur,
        fds,
    } = w;
    if !cur.is_empty() {
        parts.push(cur);
    }
    let size = parts.iter().map(Vec::len).sum::<usize>() - HEADER;
    if size > max_frame() {
        return Err(PostError::TooLarge {
            size,
            max: max_frame(),
        });
    }
    let head = &mut parts[0];
    head[..4].copy_from_slice(&(size as u32).to_le_bytes());
    head[4..8].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    Ok(Frame { parts, fds })
}

/// Decodes a frame body with exactly the descriptors `fds`, importing its ports.
pub(crate) fn decode_body(
    body: &[u8],
    mut fds: VecDeque<OwnedFd>,
) -> Result<MessageEvent, WireError> {
    let mut d = Decoder::new(body);
    let event = read_body(&mut d, &mut fds, 0)?;
    if d.position() != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - d.position()).into());
    }
    if !fds.is_empty() {
        return Err(WireError::Descriptors);
    }
    Ok(event)
}

fn read_body(
    d: &mut Decoder<'_>,
    fds: &mut VecDeque<OwnedFd>,
    depth: usize,
) -> Result<MessageEvent, WireError> {
    if depth > MAX_RECORD_DEPTH {
        return Err(WireError::TooDeep);
    }
    if d.array().map_err(CodecError::from)? != Some(2) {
        return Err(CodecError::Invalid("a message body is [data, ports]").into());
    }
    let data = codec::read_value(d, 0)?;
    let n = d
        .array()
        .map_err(CodecError::from)?
        .ok_or(CodecError::Invalid("ports must be a definite array"))?;
    if n > d.input().len() as u64 {
        return Err(CodecError::Invalid("more ports than bytes").into());
    }
    let mut ports = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ports.push(read_record(d, fds, depth)?);
    }
    if let Some(slot) = data.max_port_slot() {
        if slot as usize >= ports.len() {
            return Err(WireError::BadSlot(slot));
        }
    }
    Ok(MessageEvent::new(Payload::Value(data), ports))
}

fn take_fds(fds: &mut VecDeque<OwnedFd>, n: u64) -> Result<Vec<OwnedFd>, WireError> {
    let n = usize::try_from(n).map_err(|_| WireError::Descriptors)?;
    if n > fds.len() {
        return Err(WireError::Descriptors);
    }
    Ok(fds.drain(..n).collect())
}

fn read_record(
    d: &mut Decoder<'_>,
    fds: &mut VecDeque<OwnedFd>,
    depth: usize,
) -> Result<MessagePort, WireError> {
    if d.array().map_err(CodecError::from)? != Some(6) {
        return Err(CodecError::Invalid("a port record has six fields").into());
    }
    let flags = d.u8().map_err(CodecError::from)?;
    if flags > 7 {
        return Err(CodecError::Invalid("unknown port record flags").into());
    }
    let socket = if flags & 1 != 0 {
        Some(fds.pop_front().ok_or(WireError::Descriptors)?)
    } else {
        None
    };
    let n = d
        .array()
        .map_err(CodecError::from)?
        .ok_or(CodecError::Invalid("queued must be a definite array"))?;
    if n > d.input().len() as u64 {
        return Err(CodecError::Invalid("more queued messages than bytes").into());
    }
    let mut queued = Vec::with_capacity(n as usize);
    for _ in 0..n {
        queued.push(read_body(d, fds, depth + 1)?);
    }
    if d.datatype().map_err(CodecError::from)? != Type::Bytes {
        return Err(CodecError::Invalid("a read prefix is a byte string").into());
    }
    let prefix = d.bytes().map_err(CodecError::from)?.to_vec();
    let prefix_fds = take_fds(fds, d.u64().map_err(CodecError::from)?)?;
    if d.datatype().map_err(CodecError::from)? != Type::Bytes {
        return Err(CodecError::Invalid("unsent bytes are a byte string").into());
    }
    let unsent = d.bytes().map_err(CodecError::from)?.to_vec();
    let unsent_fds = take_fds(fds, d.u64().map_err(CodecError::from)?)?;
    Ok(MessagePort::import(Record {
        socket,
        peer_gone: flags & 2 != 0,
        closed: flags & 4 != 0,
        queued,
        prefix,
        prefix_fds,
        unsent,
        unsent_fds,
    }))
}

/// Splits `bytes` into frames as a link does and decodes each body (with no descriptors): the
/// fuzz target's entry. Returns how many frames decoded before the first error or the end.
pub(crate) fn decode_stream(mut bytes: &[u8]) -> usize {
    let mut frames = 0;
    while bytes.len() >= HEADER {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let nfds = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        if len > max_frame() || nfds > 0 || bytes.len() < HEADER + len {
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
