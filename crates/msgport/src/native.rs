//! [`NativeData`]: a message's data as the sender's own Rust value, within one process. Both the
//! boxed form (`event::Payload::Native`) and the in-place form ([`Inline`](crate::inline::Inline))
//! store one; neither module depends on the other for it.

use std::any::Any;

use serde::Serialize;

use crate::error::DecodeError;
use crate::value::{self, Value};

/// Data posted within one process: the sender's own value, moved as is. It is converted (through
/// serde) only if the receiver asks for another type, and encoded only if it leaves the process.
pub(crate) trait NativeData: Send {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn to_value(&self) -> Result<Value, DecodeError>;
}

impl<T: Serialize + Send + 'static> NativeData for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn to_value(&self) -> Result<Value, DecodeError> {
        if let Some(v) = (self as &dyn Any).downcast_ref::<Value>() {
            return Ok(v.clone());
        }
        value::to_value(self).map_err(|e| DecodeError::Serialize(e.to_string()))
    }
}
