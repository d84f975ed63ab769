//! Error types, one per operation, named after the method that returns them.

use std::fmt;

/// Why [`MessagePort::post_message`](crate::MessagePort::post_message) refused a message.
///
/// Posting never reports whether the message was *delivered*: as on the web, a message posted to
/// a port whose peer is gone is silently dropped. These errors are about the message itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum PostError {
    /// The data holds a port slot ([`Value::Port`](crate::Value::Port)) whose index is not in the
    /// transfer list: the web's `DataCloneError` for a port that is not transferred.
    #[error("port slot {slot} is not in the transfer list of {transferred} port(s)")]
    PortNotTransferred {
        /// The slot index found in the data.
        slot: u32,
        /// How many ports the transfer list holds.
        transferred: usize,
    },
    /// The transfer list held the peer of the posting port (`port1.post_message(x, [port2])`).
    /// The message is dropped, every port in its transfer list is closed, and the channel is
    /// dead: the posting port observes close once its queue is drained.
    #[error("the transfer list holds the peer of the posting port; the channel is closed")]
    PeerTransferred,
    /// The encoded message is larger than the limit ([`set_max_message_size`](crate::set_max_message_size)).
    /// Only messages that leave the process are encoded, and so checked.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The message carries more ports than one message may (ports in the transfer list, and
    /// the ports queued inside those, at every depth): the limit is 4,096, so that a receiver
    /// can bound what one message costs it in memory and descriptors. Checked when the message
    /// leaves the process (within one process any number of ports may travel). The ports of the
    /// message are closed.
    #[error("message carries {count} ports; at most {max} may travel in one message")]
    TooManyPorts {
        /// How many ports (or descriptors) the message carried when the limit was hit.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The data's `Serialize` implementation failed (checked when the message leaves the
    /// process; within one process the receiver sees it as a [`DecodeError`]).
    #[error("message data could not be serialized: {0}")]
    Serialize(String),
    /// The system refused a resource the message needed to leave the process, such as a
    /// descriptor for a transferred port (`EMFILE`). The ports of the message are closed.
    #[error("out of system resources: {0}")]
    Resources(String),
}

/// A message [`MessagePort::try_post_message`](crate::MessagePort::try_post_message) refused,
/// with the ports of its transfer list that it did not take (see that method for which).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: PostError,
    /// The ports handed back, open and usable (in transfer-list order).
    pub ports: Vec<crate::MessagePort>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} port(s) handed back)",
            self.error,
            self.ports.len()
        )
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for PostError {
    fn from(refused: Refused) -> PostError {
        refused.error
    }
}

/// Returned by [`MessagePort::try_recv`](crate::MessagePort::try_recv).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TryRecvError {
    /// No message is queued right now; the channel is still open.
    #[error("no message is queued")]
    Empty,
    /// The channel is closed and every message was delivered.
    #[error("the port is closed")]
    Closed,
}

/// Returned by [`MessagePort::recv_timeout`](crate::MessagePort::recv_timeout).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum RecvTimeoutError {
    /// The timeout passed with no message.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The channel is closed and every message was delivered.
    #[error("the port is closed")]
    Closed,
}

/// A message's data could not be turned into the type the receiver asked for: the web's
/// `messageerror`. It concerns that one message; the port keeps working.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The data does not have the shape of the requested type.
    #[error("message data does not match the requested type: {0}")]
    Mismatch(String),
    /// The data was already moved out of this event by [`MessageEvent::take_data`](crate::MessageEvent::take_data).
    #[error("message data was already taken")]
    Taken,
    /// The sender's `Serialize` implementation failed.
    #[error("message data could not be serialized: {0}")]
    Serialize(String),
    /// Data from another process is well-formed CBOR but not a valid msgport value (invalid
    /// UTF-8, an unknown tag, a malformed bigint or date, nesting too deep...). The port stays
    /// open; the message carries no data.
    #[error("message data is not a valid value: {0}")]
    Malformed(String),
}

/// An error converting between a Rust value and a [`Value`](crate::Value) through serde.
///
/// A decoding error names where in the data it happened ([`path`](Self::path)): the fields,
/// array indexes and map entries leading to the value that did not fit, as in
/// `jobs[2].owner.id: invalid type: string "x", expected u32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(Box<ErrorText>);

/// What a [`ValueError`] says, boxed: a decoder returns `Result<_, ValueError>` from every step,
/// and a one-pointer error keeps those results small (two strings in place made every step
/// move 48 bytes more: a sixth of the time of decoding a small struct).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorText {
    message: String,
    /// Where, outermost first (`a.b[3]`); empty at the top level or when encoding.
    path: String,
}

/// One step of a [`ValueError`]'s path, added as the error leaves a container.
pub(crate) enum PathSegment {
    /// An object's key, read as a field name.
    Key(String),
    /// An array's element.
    Index(usize),
    /// A map's (or an object's) entry, by position: its key is not kept.
    Entry(usize),
}

impl ValueError {
    pub(crate) fn new(message: impl Into<String>) -> ValueError {
        ValueError(Box::new(ErrorText {
            message: message.into(),
            path: String::new(),
        }))
    }

    /// Puts `segment` in front of the path (errors leave the innermost container first).
    pub(crate) fn within(mut self, segment: PathSegment) -> ValueError {
        let rest = std::mem::take(&mut self.0.path);
        let joiner = if rest.is_empty() || rest.starts_with('[') {
            ""
        } else {
            "."
        };
        self.0.path = match segment {
            PathSegment::Key(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '$') =>
            {
                format!("{name}{joiner}{rest}")
            }
            PathSegment::Key(name) => format!("[{name:?}]{joiner}{rest}"),
            PathSegment::Index(i) => format!("[{i}]{joiner}{rest}"),
            PathSegment::Entry(i) => format!("[entry {i}]{joiner}{rest}"),
        };
        self
    }

    /// Where in the data the error happened (`jobs[2].owner.id`; `[entry 3]` names a map's
    /// entry by position), or `None` at the top level.
    pub fn path(&self) -> Option<&str> {
        (!self.0.path.is_empty()).then_some(self.0.path.as_str())
    }

    /// What went wrong, without the path.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(path) => write!(f, "{path}: {}", self.0.message),
            None => f.write_str(&self.0.message),
        }
    }
}

impl std::error::Error for ValueError {}

impl serde::ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::new(msg.to_string())
    }
}

impl serde::de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::new(msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    /// Every step of the decoders returns `Result<_, ValueError>`: the error stays one pointer.
    #[test]
    fn a_value_error_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<super::ValueError>(),
            std::mem::size_of::<usize>()
        );
    }
}
