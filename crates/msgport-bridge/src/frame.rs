//! The gateway's frames: what one WebSocket binary message holds, either way.
//!
//! Each message is one CBOR data item in msgport's wire format (docs/wire-format.md):
//!
//! ```text
//! [0, port, data, [id, ...]]   a message on `port`, transferring the ports named by the ids
//! [1, port]                    `port` is closed (by whoever sends the frame)
//! ```
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
        let value = codec::decode(bytes).map_err(FrameError::Data)?;
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
