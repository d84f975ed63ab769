//! [`Value`]: the structured-clone data model, and its serde bridge.
//!
//! Rust types convert to and from `Value` through serde ([`to_value`], [`from_value`]); the
//! mapping is in `docs/wire-format.md`. Kinds that serde's data model lacks (undefined, bigint,
//! typed arrays, Date, RegExp, Map, Set, Error, port slots) survive a `Value → serde → Value`
//! round trip: `Value`'s `Serialize` marks them with reserved newtype-struct names that the
//! `Value` serializer recognises (other serializers, such as JSON, see just the inner data).

mod bigint;
pub(crate) mod cbor;
pub(crate) mod cbor_de;
mod de;
mod macros;
mod ser;

pub use bigint::BigInt;
pub use de::from_value;
pub use ser::to_value;

/// A structured-clone value: what a message's data can be.
///
/// ```
/// use msgport::{value, Value};
///
/// let v = value!({ "name": "job", "sizes": [1, 2.5, null], "done": false });
/// assert_eq!(v["sizes"][1], Value::Number(2.5));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// JavaScript `undefined`.
    #[default]
    Undefined,
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (IEEE-754 double). Integers are exact up to ±2⁵³.
    Number(f64),
    /// An arbitrary-precision integer (JavaScript `BigInt`).
    BigInt(BigInt),
    /// A UTF-8 string.
    String(String),
    /// Binary data: an `ArrayBuffer`, a typed array or a `DataView`.
    Binary(Binary),
    /// A `Date`: whole milliseconds since the Unix epoch (JavaScript time values), or NaN for an
    /// invalid date. The wire form keeps whole milliseconds exactly; fractions are rounded.
    Date(f64),
    /// A `RegExp`.
    RegExp {
        /// The pattern, as `RegExp.prototype.source`.
        source: String,
        /// The flags, as `RegExp.prototype.flags` (`"gi"`...).
        flags: String,
    },
    /// An `Array` (dense).
    Array(Vec<Value>),
    /// A plain object: string keys, in insertion order.
    Object(Vec<(String, Value)>),
    /// A `Map`: keys of any kind, in insertion order.
    Map(Vec<(Value, Value)>),
    /// A `Set`, in insertion order.
    Set(Vec<Value>),
    /// An `Error` object.
    Error(ErrorValue),
    /// A port slot: the index of a port in the message's transfer list (`event.ports[i]`).
    Port(u32),
}

/// Writes the value as JavaScript would show it (close to Node's `util.inspect`): `undefined`,
/// `1.5`, `12n`, `"text"`, `[1, 2]`, `{ "a": 1 }`, `Map { 1 => "a" }`, `Set { 1 }`,
/// `/ab+c/gi`, `Date(0)`, `Uint8Array(3 bytes)`, `TypeError: message`, `port #0`.
///
/// ```
/// use msgport::value;
/// assert_eq!(value!({ "a": [1, "two", null] }).to_string(), r#"{ "a": [1, "two", null] }"#);
/// ```
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list<T>(
            f: &mut std::fmt::Formatter<'_>,
            items: &[T],
            each: impl Fn(&mut std::fmt::Formatter<'_>, &T) -> std::fmt::Result,
        ) -> std::fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                each(f, item)?;
            }
            Ok(())
        }
        match self {
            Value::Undefined => f.write_str("undefined"),
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) if n.is_nan() => f.write_str("NaN"),
            Value::Number(n) if n.is_infinite() => {
                f.write_str(if *n > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Value::Number(n) => write!(f, "{n}"),
            Value::BigInt(b) => write!(f, "{b}n"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Binary(b) => write!(f, "{:?}({} bytes)", b.kind, b.bytes.len()),
            Value::Date(ms) => write!(f, "Date({ms})"),
            Value::RegExp { source, flags } => write!(f, "/{source}/{flags}"),
            Value::Array(items) => {
                f.write_str("[")?;
                list(f, items, |f, v| write!(f, "{v}"))?;
                f.write_str("]")
            }
            Value::Object(entries) if entries.is_empty() => f.write_str("{}"),
            Value::Object(entries) => {
                f.write_str("{ ")?;
                list(f, entries, |f, (k, v)| write!(f, "{k:?}: {v}"))?;
                f.write_str(" }")
            }
            Value::Map(entries) => {
                f.write_str("Map { ")?;
                list(f, entries, |f, (k, v)| write!(f, "{k} => {v}"))?;
                f.write_str(" }")
            }
            Value::Set(items) => {
                f.write_str("Set { ")?;
                list(f, items, |f, v| write!(f, "{v}"))?;
                f.write_str(" }")
            }
            Value::Error(e) => write!(f, "{}: {}", e.name, e.message),
            Value::Port(i) => write!(f, "port #{i}"),
        }
    }
}

/// What kind of binary view a [`Binary`] is. Elements are stored little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryKind {
    /// `ArrayBuffer`.
    ArrayBuffer,
    /// `DataView`.
    DataView,
    /// `Int8Array`.
    Int8,
    /// `Uint8Array`.
    Uint8,
    /// `Uint8ClampedArray`.
    Uint8Clamped,
    /// `Int16Array`.
    Int16,
    /// `Uint16Array`.
    Uint16,
    /// `Int32Array`.
    Int32,
    /// `Uint32Array`.
    Uint32,
    /// `Float32Array`.
    Float32,
    /// `Float64Array`.
    Float64,
    /// `BigInt64Array`.
    BigInt64,
    /// `BigUint64Array`.
    BigUint64,
}

impl BinaryKind {
    /// Every kind, in a fixed order (their index is their serde code).
    pub const ALL: [BinaryKind; 13] = [
        BinaryKind::ArrayBuffer,
        BinaryKind::DataView,
        BinaryKind::Int8,
        BinaryKind::Uint8,
        BinaryKind::Uint8Clamped,
        BinaryKind::Int16,
        BinaryKind::Uint16,
        BinaryKind::Int32,
        BinaryKind::Uint32,
        BinaryKind::Float32,
        BinaryKind::Float64,
        BinaryKind::BigInt64,
        BinaryKind::BigUint64,
    ];

    /// Bytes per element: the byte length of a view of this kind is a multiple of it.
    pub fn element_size(self) -> usize {
        match self {
            BinaryKind::ArrayBuffer
            | BinaryKind::DataView
            | BinaryKind::Int8
            | BinaryKind::Uint8
            | BinaryKind::Uint8Clamped => 1,
            BinaryKind::Int16 | BinaryKind::Uint16 => 2,
            BinaryKind::Int32 | BinaryKind::Uint32 | BinaryKind::Float32 => 4,
            BinaryKind::Float64 | BinaryKind::BigInt64 | BinaryKind::BigUint64 => 8,
        }
    }

    pub(crate) fn code(self) -> u8 {
        BinaryKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("listed") as u8
    }

    pub(crate) fn from_code(code: u64) -> Option<Self> {
        BinaryKind::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// Binary data with its view kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    /// The view kind.
    pub kind: BinaryKind,
    /// The bytes (elements little-endian). Their length is a multiple of
    /// [`BinaryKind::element_size`].
    pub bytes: Vec<u8>,
}

/// An `Error` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorValue {
    /// The error's name: `Error`, `TypeError`, `RangeError`...
    pub name: String,
    /// The message.
    pub message: String,
    /// The stack, when the sender had one.
    pub stack: Option<String>,
}

impl Value {
    /// The value of `key` in an `Object` (the last one, if repeated), or `None`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a `Number`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The boolean, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number as a `u64`, if this is a `Number` that is a whole number in `u64`'s range
    /// (JavaScript numbers are doubles: integers above 2^53 cannot be told apart).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 && *n <= u64::MAX as f64 => {
                Some(*n as u64)
            }
            _ => None,
        }
    }

    /// The number as an `i64`, if this is a `Number` that is a whole number in `i64`'s range.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n)
                if n.fract() == 0.0 && *n >= i64::MIN as f64 && *n <= i64::MAX as f64 =>
            {
                Some(*n as i64)
            }
            _ => None,
        }
    }

    /// Whether this is `null` or `undefined`.
    pub fn is_nullish(&self) -> bool {
        matches!(self, Value::Null | Value::Undefined)
    }

    /// A plain object when every key is a string, otherwise a `Map` (the reading of a CBOR
    /// map, and of a serde map, in the wire format).
    pub fn from_entries(entries: Vec<(Value, Value)>) -> Value {
        if !entries.iter().all(|(k, _)| matches!(k, Value::String(_))) {
            return Value::Map(entries);
        }
        Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| match k {
                    Value::String(k) => (k, v),
                    _ => unreachable!("checked above"),
                })
                .collect(),
        )
    }

    /// The highest port slot anywhere in this value, if any.
    pub fn max_port_slot(&self) -> Option<u32> {
        let mut max = None;
        self.visit(&mut |v| {
            if let Value::Port(i) = v {
                max = Some(max.map_or(*i, |m: u32| m.max(*i)));
            }
        });
        max
    }

    fn visit(&self, f: &mut dyn FnMut(&Value)) {
        f(self);
        match self {
            Value::Array(items) | Value::Set(items) => items.iter().for_each(|v| v.visit(f)),
            Value::Object(entries) => entries.iter().for_each(|(_, v)| v.visit(f)),
            Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.visit(f);
                v.visit(f);
            }),
            _ => {}
        }
    }
}

static UNDEFINED: Value = Value::Undefined;

impl std::ops::Index<&str> for Value {
    type Output = Value;

    /// `value["key"]`: the entry of an `Object`, or `undefined` (as in JavaScript).
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&UNDEFINED)
    }
}

impl std::ops::Index<usize> for Value {
    type Output = Value;

    /// `value[i]`: the element of an `Array`, or `undefined`.
    fn index(&self, i: usize) -> &Value {
        match self {
            Value::Array(items) => items.get(i).unwrap_or(&UNDEFINED),
            _ => &UNDEFINED,
        }
    }
}

macro_rules! from_number {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Value::Number(n as f64)
            }
        }
    )*};
}
from_number!(i8, i16, i32, u8, u16, u32, f32, f64);

macro_rules! from_wide_int {
    ($($t:ty),*) => {$(
        /// Exact integers up to ±2⁵³ become a `Number`, larger ones a `BigInt` (never rounded).
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                const SAFE: i128 = 1 << 53;
                let wide = n as i128;
                if (-SAFE..=SAFE).contains(&wide) {
                    Value::Number(wide as f64)
                } else {
                    Value::BigInt(BigInt::from(n))
                }
            }
        }
    )*};
}
from_wide_int!(i64, u64, isize, usize);

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<BigInt> for Value {
    fn from(b: BigInt) -> Self {
        Value::BigInt(b)
    }
}

impl From<Binary> for Value {
    fn from(b: Binary) -> Self {
        Value::Binary(b)
    }
}

impl From<ErrorValue> for Value {
    fn from(e: ErrorValue) -> Self {
        Value::Error(e)
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Self {
        Value::Null
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<&[u8]> for Value {
    /// Bytes become an `ArrayBuffer`.
    fn from(bytes: &[u8]) -> Self {
        Value::Binary(Binary {
            kind: BinaryKind::ArrayBuffer,
            bytes: bytes.to_vec(),
        })
    }
}
