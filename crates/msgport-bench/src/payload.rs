//! What every contender sends: typed serde structs, as users post them. msgport posts them as
//! they are; ipc-channel sends them through its `IpcSender<T>` (postcard); the raw socket
//! rivals encode them with postcard (the format ipc-channel uses) and decode every message.

use serde::{Deserialize, Serialize};

/// A small message: 64 bytes of fields.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Small {
    pub seq: u64,
    pub rest: [u64; 7],
}

impl Small {
    pub(crate) fn new(seq: u64) -> Self {
        Small {
            seq,
            rest: [seq; 7],
        }
    }
}

/// A message of `bytes.len()` bytes of data (`serde_bytes`: a byte string in every format, as
/// users who send buffers write it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Blob {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Blob {
    pub(crate) fn new(size: usize) -> Self {
        Blob {
            seq: 0,
            bytes: vec![0xa5; size],
        }
    }
}

/// Encodes `m` for a raw socket: a u32 length, then postcard.
pub(crate) fn frame<T: Serialize>(m: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let out_len = {
        let body = postcard::to_extend(m, std::mem::take(out)).expect("postcard encodes");
        *out = body;
        out.len()
    };
    let len = (out_len - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one message of a raw socket's frame body.
pub(crate) fn unframe<T: serde::de::DeserializeOwned>(body: &[u8]) -> T {
    postcard::from_bytes(body).expect("postcard decodes")
}
