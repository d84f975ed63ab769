//! The gateway's frames: what one WebSocket binary message holds, either way.
//!
//! Each message is one CBOR data item in msgport's wire format (docs/wire-format.md):
//!
//! ```text
//! [0, port, data, [id, ...]]   a message on `port`, transferring the ports named by the ids
//! [1, port]                    `port` is closed (by whoever sends the frame)
//! [2, [frame, ...]]            a batch: the frames above, in order (not nested)
//! ```
//!
//! Batches let a burst of messages cross as one WebSocket message; a side writes one when its
//! socket is still busy with earlier bytes.
//!
//! Port 0 is the connection's IPC port (msgport-ipc's envelopes travel on it). Every other port
//! is named once, by the side that transfers it first: the gateway names ports with even
//! numbers (2, 4, 6, ...), the client with odd ones (1, 3, 5, ...), each side counting up by 2
//! and never reusing a number. A port slot inside `data` indexes the id list.

use msgport::codec::{self, CodecError};
use msgport::Value;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A message on `port`.
    Message {
        /// The port it is posted on.
        port: u64,
        /// The message's data.
        data: Value,
        /// The ids of the ports it transfers, in transfer-list order.
        transfer: Vec<u64>,
    },
    /// The sender closed `port`.
    Close {
        /// The port.
        port: u64,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not one well-formed CBOR item of msgport's data model.
    Data(CodecError),
    /// A well-formed item that is not a frame (the text says what is wrong).
    Shape(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Data(e) => write!(f, "bad CBOR: {e}"),
            FrameError::Shape(what) => write!(f, "not a frame: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The largest port number (numbers are CBOR integers a JavaScript number holds exactly).
pub const MAX_PORT_ID: u64 = (1 << 53) - 1;

fn id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) if *n >= 0.0 && *n <= MAX_PORT_ID as f64 && n.fract() == 0.0 => {
            Some(*n as u64)
        }
        _ => None,
    }
}

impl Frame {
    /// Reads a frame. Never panics; every malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut frames = Self::decode_all(bytes)?;
        match frames.len() {
            1 => Ok(frames.remove(0)),
            _ => Err(FrameError::Shape("a batch where one frame was expected")),
        }
    }

    /// Reads a frame or a batch of frames (an empty batch is an error). Never panics.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let value = codec::decode(bytes).map_err(FrameError::Data)?;
        match value {
            Value::Array(items) if items.len() == 2 && id(&items[0]) == Some(2) => {
                match items.into_iter().nth(1) {
                    Some(Value::Array(frames)) if !frames.is_empty() => {
                        frames.into_iter().map(Self::from_value).collect()
                    }
                    _ => Err(FrameError::Shape(
                        "a batch holds a non-empty array of frames",
                    )),
                }
            }
            other => Self::from_value(other).map(|f| vec![f]),
        }
    }

    fn from_value(value: Value) -> Result<Frame, FrameError> {
        let Value::Array(items) = value else {
            return Err(FrameError::Shape("not an array"));
        };
        let mut items = items.into_iter();
        let kind = items.next().ok_or(FrameError::Shape("empty"))?;
        let port = items
            .next()
            .as_ref()
            .and_then(id)
            .ok_or(FrameError::Shape("no port number"))?;
        let frame = match id(&kind) {
            Some(0) => {
                let data = items.next().ok_or(FrameError::Shape("no data"))?;
                let Some(Value::Array(ids)) = items.next() else {
                    return Err(FrameError::Shape("no transfer list"));
                };
                let transfer = ids
                    .iter()
                    .map(id)
                    .collect::<Option<Vec<u64>>>()
                    .ok_or(FrameError::Shape("a transferred port is not a port number"))?;
                Frame::Message {
                    port,
                    data,
                    transfer,
                }
            }
            Some(1) => Frame::Close { port },
            _ => return Err(FrameError::Shape("unknown kind")),
        };
        if items.next().is_some() {
            return Err(FrameError::Shape("extra items"));
        }
        Ok(frame)
    }

    /// Joins encoded frames into one batch frame (`[2, [frame, ...]]`), without re-encoding
    /// them: an array's CBOR is its head followed by its items.
    pub fn batch<'a>(frames: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
        let n = frames.len() as u64;
        let mut out = vec![0x82, 0x02];
        match n {
            0..=23 => out.push(0x80 | n as u8),
            24..=0xff => out.extend([0x98, n as u8]),
            0x100..=0xffff => {
                out.push(0x99);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(0x9a);
                out.extend((n as u32).to_be_bytes());
            }
        }
        for frame in frames {
            out.extend_from_slice(frame);
        }
        out
    }

    /// Writes a frame.
    pub fn encode(self) -> Vec<u8> {
        let n = |x: u64| Value::Number(x as f64);
        let value = match self {
            Frame::Message {
                port,
                data,
                transfer,
            } => Value::Array(vec![
                n(0),
                n(port),
                data,
                Value::Array(transfer.into_iter().map(n).collect()),
            ]),
            Frame::Close { port } => Value::Array(vec![n(1), n(port)]),
        };
        codec::encode(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for frame in [
            Frame::Message {
                port: 0,
                data: Value::String("hi".into()),
                transfer: vec![],
            },
            Frame::Message {
                port: MAX_PORT_ID,
                data: Value::Array(vec![Value::Port(1), Value::Port(0)]),
                transfer: vec![3, 5],
            },
            Frame::Close { port: 2 },
        ] {
            assert_eq!(Frame::decode(&frame.clone().encode()), Ok(frame));
        }
    }

    #[test]
    fn the_vector_of_the_protocol_document() {
        // [0, 0, "hi", []] and [1, 4]
        let message = Frame::Message {
            port: 0,
            data: Value::String("hi".into()),
            transfer: vec![],
        };
        assert_eq!(message.encode(), [0x84, 0x00, 0x00, 0x62, b'h', b'i', 0x80]);
        assert_eq!(Frame::Close { port: 4 }.encode(), [0x82, 0x01, 0x04]);
    }

    #[test]
    fn batches_hold_frames_in_order() {
        let frames = [
            Frame::Message {
                port: 2,
                data: Value::Number(1.0),
                transfer: vec![],
            },
            Frame::Close { port: 2 },
        ];
        for n in [1, 2, 24, 300] {
            let all: Vec<Frame> = frames.iter().cycle().take(n).cloned().collect();
            let encoded: Vec<Vec<u8>> = all.iter().map(|f| f.clone().encode()).collect();
            let batch = Frame::batch(encoded.iter().map(Vec::as_slice));
            assert_eq!(Frame::decode_all(&batch), Ok(all.clone()), "{n} frames");
        }
        // Empty, nested, or not an array of frames: errors.
        for bad in [
            &[0x82, 0x02, 0x80][..],
            &[0x82, 0x02, 0x81, 0x82, 0x02, 0x80],
            &[0x82, 0x02, 0x01],
        ] {
            assert!(Frame::decode_all(bad).is_err(), "{bad:02x?}");
        }
        // A lone frame still reads as a batch of one.
        assert_eq!(
            Frame::decode_all(&[0x82, 0x01, 0x04]),
            Ok(vec![Frame::Close { port: 4 }])
        );
    }

    #[test]
    fn non_frames_are_errors() {
        let bad: &[&[u8]] = &[
            &[],
            &[0xff],
            &[0x80],                                           // []
            &[0x82, 0x02, 0x00],                               // unknown kind
            &[0x82, 0x00, 0x00],                               // message without data
            &[0x83, 0x00, 0x00, 0x00],                         // message without transfer list
            &[0x84, 0x00, 0x20, 0x00, 0x80],                   // port -1
            &[0x84, 0x00, 0x00, 0x00, 0x81, 0x61, b'x'],       // transfer ["x"]
            &[0x83, 0x01, 0x00, 0x00],                         // close with an extra item
            &[0x82, 0x01, 0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], // port NaN
            &[0x82, 0x01, 0x1b, 0, 0x20, 0, 0, 0, 0, 0, 0],    // port 2^53
        ];
        for (i, bytes) in bad.iter().enumerate() {
            let decoded = Frame::decode(bytes);
            assert!(decoded.is_err(), "case {i} decoded as {decoded:?}");
        }
        // Numbers are numbers however they are written: port 1.0 as a half float.
        assert_eq!(
            Frame::decode(&[0x84, 0x00, 0xf9, 0x3c, 0x00, 0x00, 0x80]),
            Ok(Frame::Message {
                port: 1,
                data: Value::Number(0.0),
                transfer: vec![]
            })
        );
    }
}
