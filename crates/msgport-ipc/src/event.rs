//! What a listener gets, on either side: one shape, [`IpcEvent`], whose `sender` says who sent
//! it ([`ChildRef`](crate::ChildRef) in main, [`MainRef`] in a child).

use msgport::{DecodeError, MessagePort, Value};

/// A message on a named channel, as a listener or handler gets it.
#[derive(Debug)]
pub struct IpcEvent<S> {
    /// Who sent it, taken from the connection it arrived on (a peer cannot claim to be
    /// another).
    pub sender: S,
    /// The channel it was sent on.
    pub channel: String,
    /// The data, in msgport's data model; [`data`](Self::data) decodes it as a Rust type.
    pub data: Value,
    /// The ports it transferred (`post_message`); whoever takes them owns them.
    pub ports: Vec<MessagePort>,
}

impl<S> IpcEvent<S> {
    /// The data decoded as `T`. A mismatch is a [`DecodeError`] naming where in the data it
    /// happened (`jobs[2].owner.id: invalid type ...`); the event keeps its data.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode(self.data.clone())
    }

    /// Moves the transferred ports out of the event.
    pub fn take_ports(&mut self) -> Vec<MessagePort> {
        std::mem::take(&mut self.ports)
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, DecodeError> {
    msgport::from_value(v).map_err(|e| DecodeError::Mismatch(e.to_string()))
}

/// The main process, as a child knows it: the sender of every event a child's listeners get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MainRef {
    pub(crate) pid: Option<u32>,
}

impl MainRef {
    /// Main's OS process id, as the kernel recorded it on the connection (`None` when the
    /// connection was handed in with [`ConnectOptions::over`](crate::ConnectOptions::over)).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}
