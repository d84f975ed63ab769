//! Rust → [`Value`] through serde, and `Value`'s own `Serialize`.

use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, SerializeTuple};

use super::{BigInt, Binary, BinaryKind, ErrorValue, Value};
use crate::error::ValueError;

pub(crate) const UNDEFINED: &str = "$msgport::Undefined";
pub(crate) const BIGINT: &str = "$msgport::BigInt";
pub(crate) const DATE: &str = "$msgport::Date";
pub(crate) const REGEXP: &str = "$msgport::RegExp";
pub(crate) const MAP: &str = "$msgport::Map";
pub(crate) const SET: &str = "$msgport::Set";
pub(crate) const ERROR: &str = "$msgport::Error";
pub(crate) const PORT: &str = "$msgport::Port";
pub(crate) const BINARY: &str = "$msgport::Binary";
const MAGIC_PREFIX: &str = "$msgport::";

/// Converts a Rust value into a [`Value`].
///
/// Integers within ±2⁵³ become numbers, larger ones bigints; maps whose keys are all strings
/// become objects, others `Map`s; enums use serde's externally tagged form (`"Variant"` or
/// `{ "Variant": data }`); bytes (with `serde_bytes`) become an `ArrayBuffer`.
///
/// Two serde facts users trip on, as serde defines them (not msgport's choice):
/// - a `Vec<u8>` (or `[u8; N]`) serializes as a sequence: an `Array` of numbers, one `Value`
///   per byte. Mark the field `#[serde(with = "serde_bytes")]` (or post a [`Binary`]
///   in a `Value`) to send an `ArrayBuffer`;
/// - `Option<Option<T>>` cannot tell `Some(None)` from `None` once serialized: both are `null`.
///
/// ```
/// use msgport::{to_value, value};
///
/// #[derive(serde::Serialize)]
/// struct Job { id: u32, tags: Vec<&'static str> }
///
/// let v = to_value(&Job { id: 7, tags: vec!["a"] }).unwrap();
/// assert_eq!(v, value!({ "id": 7, "tags": ["a"] }));
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer)
}

/// Rebuilds a kind that serde lacks from its reserved newtype name and its inner data.
pub(crate) fn from_magic(name: &str, inner: Value) -> Result<Value, ValueError> {
    let bad = || ValueError::new(format!("malformed {name} data"));
    Ok(match (name, inner) {
        (UNDEFINED, _) => Value::Undefined,
        (BIGINT, Value::String(s)) => Value::BigInt(s.parse().map_err(|_| bad())?),
        (DATE, Value::Number(n)) => Value::Date(n),
        (REGEXP, Value::Array(parts)) => match <[Value; 2]>::try_from(parts) {
            Ok([Value::String(source), Value::String(flags)]) => Value::RegExp { source, flags },
            _ => return Err(bad()),
        },
        (MAP, Value::Array(pairs)) => Value::Map(
            pairs
                .into_iter()
                .map(|pair| match pair {
                    Value::Array(kv) => match <[Value; 2]>::try_from(kv) {
                        Ok([k, v]) => Ok((k, v)),
                        Err(_) => Err(bad()),
                    },
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?,
        ),
        (SET, Value::Array(items)) => Value::Set(items),
        (ERROR, Value::Array(parts)) => match <[Value; 3]>::try_from(parts) {
            Ok([Value::String(name), Value::String(message), stack]) => Value::Error(ErrorValue {
                name,
                message,
                stack: match stack {
                    Value::String(s) => Some(s),
                    Value::Null | Value::Undefined => None,
                    _ => return Err(bad()),
                },
            }),
            _ => return Err(bad()),
        },
        (PORT, Value::Number(n)) if n >= 0.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0 => {
            Value::Port(n as u32)
        }
        (BINARY, Value::Array(parts)) => match <[Value; 2]>::try_from(parts) {
            Ok([Value::Number(code), Value::Binary(b)]) if code.fract() == 0.0 && code >= 0.0 => {
                let kind = BinaryKind::from_code(code as u64).ok_or_else(bad)?;
                if b.bytes.len() % kind.element_size() != 0 {
                    return Err(bad());
                }
                Value::Binary(Binary {
                    kind,
                    bytes: b.bytes,
                })
            }
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

pub(crate) fn is_magic(name: &str) -> bool {
    name.starts_with(MAGIC_PREFIX)
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct Pairs<'a>(&'a [(Value, Value)]);

impl Serialize for Pairs<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, v) in self.0 {
            seq.serialize_element(&(k, v))?;
        }
        seq.end()
    }
}

impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Undefined => s.serialize_unit_struct(UNDEFINED),
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => s.serialize_f64(*n),
            Value::BigInt(b) => s.serialize_newtype_struct(BIGINT, &b.to_string()),
            Value::String(v) => s.serialize_str(v),
            Value::Binary(b) if b.kind == BinaryKind::ArrayBuffer => s.serialize_bytes(&b.bytes),
            Value::Binary(b) => {
                s.serialize_newtype_struct(BINARY, &(b.kind.code(), Bytes(&b.bytes)))
            }
            Value::Date(t) => s.serialize_newtype_struct(DATE, t),
            Value::RegExp { source, flags } => s.serialize_newtype_struct(REGEXP, &(source, flags)),
            Value::Array(items) => items.serialize(s),
            Value::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::Map(entries) => s.serialize_newtype_struct(MAP, &Pairs(entries)),
            Value::Set(items) => s.serialize_newtype_struct(SET, items),
            Value::Error(e) => s.serialize_newtype_struct(ERROR, &(&e.name, &e.message, &e.stack)),
            Value::Port(i) => s.serialize_newtype_struct(PORT, i),
        }
    }
}

/// The serializer behind [`to_value`].
struct ValueSerializer;

/// Collects a sequence, tuple or struct.
#[doc(hidden)]
pub struct SeqBuilder {
    items: Vec<Value>,
    variant: Option<&'static str>,
}

/// Collects a map or struct.
#[doc(hidden)]
pub struct MapBuilder {
    entries: Vec<(Value, Value)>,
    next_key: Option<Value>,
    variant: Option<&'static str>,
}

fn tagged(variant: Option<&'static str>, v: Value) -> Value {
    match variant {
        Some(name) => Value::Object(vec![(name.to_owned(), v)]),
        None => v,
    }
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = MapBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        const SAFE: i128 = 1 << 53;
        Ok(if (-SAFE..=SAFE).contains(&v) {
            Value::Number(v as f64)
        } else {
            Value::BigInt(BigInt::from(v))
        })
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        Ok(if v <= 1 << 53 {
            Value::Number(v as f64)
        } else {
            Value::BigInt(BigInt::from(v))
        })
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Number(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Number(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Value, ValueError> {
        Ok(if name == UNDEFINED {
            Value::Undefined
        } else {
            Value::Null
        })
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        let inner = value.serialize(ValueSerializer)?;
        if is_magic(name) {
            from_magic(name, inner)
        } else {
            Ok(inner)
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        Ok(tagged(Some(variant), value.serialize(ValueSerializer)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, ValueError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        let mut b = self.serialize_seq(Some(len))?;
        b.variant = Some(variant);
        Ok(b)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, ValueError> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            next_key: None,
            variant: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, ValueError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapBuilder, ValueError> {
        let mut b = self.serialize_map(Some(len))?;
        b.variant = Some(variant);
        Ok(b)
    }
}

impl SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(tagged(self.variant, Value::Array(self.items)))
    }
}

impl SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        SerializeSeq::end(self)
    }
}

impl SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.next_key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let key = self
            .next_key
            .take()
            .ok_or_else(|| ValueError::new("map value without a key"))?;
        self.entries.push((key, value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        let value = Value::from_entries(self.entries);
        Ok(tagged(self.variant, value))
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.entries.push((
            Value::String(key.to_owned()),
            value.serialize(ValueSerializer)?,
        ));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        SerializeMap::end(self)
    }
}

impl ser::SerializeStructVariant for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        SerializeMap::end(self)
    }
}
