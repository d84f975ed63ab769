//! [`MessageEvent`]: what a port receives.

use std::any::{Any, TypeId};
use std::fmt;

use serde::de::DeserializeOwned;

use crate::error::DecodeError;
use crate::inline::Inline;
use crate::native::NativeData;
use crate::port::{MessagePort, WireData};
use crate::value::{self, Value};

/// The data of a message: a moved Rust value, a value decoded from another process, or nothing
/// once taken.
pub(crate) enum Payload {
    /// A small value, stored in place (no allocation).
    Inline(Inline),
    Native(Box<dyn NativeData>),
    Value(Value),
    /// Data from another process, still encoded (`plain`: readable without building a
    /// `Value`, see `codec::scan`), where it was read or copied to.
    Cbor {
        bytes: crate::buffers::Held,
        plain: bool,
    },
    Taken,
}

/// A message received on a [`MessagePort`]: its data, and the ports that were transferred with
/// it (Electron's `event.data` and `event.ports`).
///
/// The data is decoded on demand, into whatever type the receiver asks for:
/// [`data`](Self::data) (repeatable), [`take_data`](Self::take_data) (moves the sender's value
/// out without any conversion when the types match), or [`value`](Self::value) (the dynamic
/// [`Value`]). A failed decode is an error for this message only (the web's `messageerror`).
///
/// ```
/// use msgport::{MessageChannel, value};
///
/// let (a, b) = MessageChannel::new().into_ports();
/// a.post_message(value!({ "answer": 42 }), []).unwrap();
/// let event = b.blocking_recv().unwrap();
/// assert_eq!(event.value().unwrap(), value!({ "answer": 42 }));
/// assert!(event.ports.is_empty());
/// ```
pub struct MessageEvent {
    payload: Payload,
    /// What this message counts for in its port's receive budget (messages from another
    /// process only; 0 otherwise).
    pub(crate) cost: usize,
    /// The ports transferred with this message, in transfer-list order; empty when none were.
    pub ports: Vec<MessagePort>,
}

impl MessageEvent {
    pub(crate) fn new(payload: Payload, ports: Vec<MessagePort>) -> Self {
        MessageEvent {
            payload,
            cost: 0,
            ports,
        }
    }

    #[cfg(test)]
    pub(crate) fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Decodes the data as `T`, leaving it in place (so it can be decoded again, as another
    /// type). When `T` is the sender's own type this still goes through serde; use
    /// [`take_data`](Self::take_data) to move it out for free.
    pub fn data<T: DeserializeOwned + 'static>(&self) -> Result<T, DecodeError> {
        if let Payload::Cbor { bytes, plain } = &self.payload {
            if TypeId::of::<T>() != TypeId::of::<Value>() && *plain {
                return value::cbor_de::from_cbor(bytes)
                    .map_err(|e| DecodeError::Mismatch(e.to_string()));
            }
        }
        let v = self.value()?;
        if TypeId::of::<T>() == TypeId::of::<Value>() {
            let boxed: Box<dyn Any> = Box::new(v);
            return Ok(*boxed.downcast::<T>().expect("type checked above"));
        }
        value::from_value(v).map_err(|e| DecodeError::Mismatch(e.to_string()))
    }

    /// Moves the data out as `T`. When `T` is the type the sender posted, the sender's value is
    /// returned as is (no serialization); otherwise it is converted through serde. On success the
    /// data is gone from the event; on a mismatch it stays, so another type can be tried.
    pub fn take_data<T: DeserializeOwned + 'static>(&mut self) -> Result<T, DecodeError> {
        if let Payload::Inline(inline) = &mut self.payload {
            if let Some(value) = inline.take_in_place::<T>() {
                // Emptied: nothing left to drop (forgotten rather than dropped in place).
                std::mem::forget(std::mem::replace(&mut self.payload, Payload::Taken));
                return Ok(value);
            }
        }
        match &self.payload {
            Payload::Taken => Err(DecodeError::Taken),
            Payload::Inline(_) => {
                let v = self.data::<T>()?;
                self.payload = Payload::Taken;
                Ok(v)
            }
            Payload::Native(native) if native.as_any().type_id() == TypeId::of::<T>() => {
                let Payload::Native(native) = std::mem::replace(&mut self.payload, Payload::Taken)
                else {
                    unreachable!("matched above")
                };
                Ok(*native
                    .into_any()
                    .downcast::<T>()
                    .expect("type checked above"))
            }
            Payload::Native(_) | Payload::Cbor { .. } => {
                let v = self.data::<T>()?;
                self.payload = Payload::Taken;
                Ok(v)
            }
            Payload::Value(_) => {
                let Payload::Value(v) = std::mem::replace(&mut self.payload, Payload::Taken) else {
                    unreachable!("matched above")
                };
                if TypeId::of::<T>() == TypeId::of::<Value>() {
                    let boxed: Box<dyn Any> = Box::new(v);
                    return Ok(*boxed.downcast::<T>().expect("type checked above"));
                }
                match value::from_value::<T>(v.clone()) {
                    Ok(converted) => Ok(converted),
                    Err(e) => {
                        self.payload = Payload::Value(v);
                        Err(DecodeError::Mismatch(e.to_string()))
                    }
                }
            }
        }
    }

    /// Consumes the event, returning the data as `T` and the transferred ports.
    pub fn into_parts<T: DeserializeOwned + 'static>(
        mut self,
    ) -> Result<(T, Vec<MessagePort>), DecodeError> {
        let data = self.take_data()?;
        Ok((data, std::mem::take(&mut self.ports)))
    }

    /// The data as a dynamic [`Value`] (the structured-clone data model).
    pub fn value(&self) -> Result<Value, DecodeError> {
        match &self.payload {
            Payload::Inline(inline) => inline.to_value(),
            Payload::Native(native) => native.to_value(),
            Payload::Value(v) => Ok(v.clone()),
            Payload::Cbor { bytes, .. } => {
                crate::codec::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
            }
            Payload::Taken => Err(DecodeError::Taken),
        }
    }

    /// Splits the event for encoding: its data ready to leave (encoded data goes as it came,
    /// not decoded) and its ports.
    pub(crate) fn into_wire(mut self) -> Result<(WireData, Vec<MessagePort>), DecodeError> {
        let ports = std::mem::take(&mut self.ports);
        let data = match std::mem::replace(&mut self.payload, Payload::Taken) {
            Payload::Value(v) => WireData::Value(v),
            Payload::Cbor { bytes, plain } => WireData::Cbor {
                bytes: bytes.into_vec(),
                plain,
            },
            Payload::Inline(inline) => WireData::Value(inline.to_value()?),
            Payload::Native(native) => WireData::Value(native.to_value()?),
            Payload::Taken => return Err(DecodeError::Taken),
        };
        Ok((data, ports))
    }

    /// Whether the data was posted as a `T` (and not yet taken): a cheap type test, no decoding.
    pub fn is<T: 'static>(&self) -> bool {
        match &self.payload {
            Payload::Inline(inline) => inline.is::<T>(),
            Payload::Native(n) => n.as_any().type_id() == TypeId::of::<T>(),
            _ => false,
        }
    }
}

impl fmt::Debug for MessageEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MessageEvent");
        match self.value() {
            Ok(v) => d.field("data", &v),
            Err(e) => d.field("data", &e),
        };
        d.field("ports", &self.ports.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    /// A message from another process takes no more room in a queue than one from this
    /// process: its data, when small, is kept in place within the same 80 bytes.
    #[test]
    fn an_event_stays_as_small_as_an_in_process_one() {
        assert_eq!(std::mem::size_of::<super::Payload>(), 80);
        assert_eq!(std::mem::size_of::<super::MessageEvent>(), 112);
    }
}
