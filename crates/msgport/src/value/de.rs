//! [`Value`] → Rust through serde, and `Value`'s own `Deserialize`.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::Deserialize;

use super::ser::{self as magic, from_magic, is_magic};
use super::{BigInt, BinaryKind, Value};
use crate::error::{PathSegment, ValueError};

/// Converts a [`Value`] into a Rust value.
///
/// Accepts what [`to_value`](crate::to_value) produces, plus the natural readings of the other
/// kinds: a `Set` reads as a sequence, a `Map` as a map, binary data as bytes or a sequence of
/// `u8`, a `Date` as its `f64` milliseconds, a bigint as any integer type it fits.
///
/// ```
/// use msgport::{from_value, value};
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, tags: Vec<String> }
///
/// let job: Job = from_value(value!({ "id": 7, "tags": ["a"] })).unwrap();
/// assert_eq!(job, Job { id: 7, tags: vec!["a".into()] });
/// assert!(from_value::<Job>(value!({ "id": "seven" })).is_err());
/// ```
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    T::deserialize(value)
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any structured-clone value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::BigInt(BigInt::from(v)))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::BigInt(BigInt::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Binary(super::Binary {
            kind: BinaryKind::ArrayBuffer,
            bytes: v,
        }))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(Value, Value)> =
            Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(key) = map.next_key::<Value>()? {
            if entries.is_empty() {
                if let Value::String(name) = &key {
                    if is_magic(name) {
                        let inner: Value = map.next_value()?;
                        return from_magic(name, inner).map_err(de::Error::custom);
                    }
                }
            }
            entries.push((key, map.next_value()?));
        }
        Ok(Value::from_entries(entries))
    }
}

impl Value {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Undefined | Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) => Unexpected::Float(*n),
            Value::BigInt(_) => Unexpected::Other("bigint"),
            Value::String(s) => Unexpected::Str(s),
            Value::Binary(b) => Unexpected::Bytes(&b.bytes),
            Value::Date(_) => Unexpected::Other("Date"),
            Value::RegExp { .. } => Unexpected::Other("RegExp"),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
            Value::Map(_) => Unexpected::Other("Map"),
            Value::Set(_) => Unexpected::Other("Set"),
            Value::Error(_) => Unexpected::Other("Error"),
            Value::Port(_) => Unexpected::Other("port slot"),
        }
    }

    fn invalid<T>(self, exp: &dyn de::Expected) -> Result<T, ValueError> {
        Err(de::Error::invalid_type(self.unexpected(), exp))
    }

    /// The reserved-name form of the kinds serde lacks, or `Err(self)` for the others.
    fn into_magic(self) -> Result<(&'static str, Value), Value> {
        Ok(match self {
            Value::Undefined => (magic::UNDEFINED, Value::Null),
            Value::BigInt(b) => (magic::BIGINT, Value::String(b.to_string())),
            Value::Binary(b) if b.kind != BinaryKind::ArrayBuffer => (
                magic::BINARY,
                Value::Array(vec![
                    Value::from(b.kind.code()),
                    Value::Binary(super::Binary {
                        kind: BinaryKind::ArrayBuffer,
                        bytes: b.bytes,
                    }),
                ]),
            ),
            Value::Date(t) => (magic::DATE, Value::Number(t)),
            Value::RegExp { source, flags } => (
                magic::REGEXP,
                Value::Array(vec![Value::String(source), Value::String(flags)]),
            ),
            Value::Map(pairs) => (
                magic::MAP,
                Value::Array(
                    pairs
                        .into_iter()
                        .map(|(k, v)| Value::Array(vec![k, v]))
                        .collect(),
                ),
            ),
            Value::Set(items) => (magic::SET, Value::Array(items)),
            Value::Error(e) => (
                magic::ERROR,
                Value::Array(vec![
                    Value::String(e.name),
                    Value::String(e.message),
                    e.stack.map_or(Value::Null, Value::String),
                ]),
            ),
            Value::Port(i) => (magic::PORT, Value::from(i)),
            other => return Err(other),
        })
    }

    fn deserialize_integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            // The narrowest form that holds it: a u128 above u64::MAX used to be cut to an i64.
            Value::BigInt(b) => match (b.to_i128(), b.to_u128()) {
                (_, Some(u)) if u <= u128::from(u64::MAX) => visitor.visit_u64(u as u64),
                (Some(i), _) if (i128::from(i64::MIN)..0).contains(&i) => {
                    visitor.visit_i64(i as i64)
                }
                (_, Some(u)) => visitor.visit_u128(u),
                (Some(i), _) => visitor.visit_i128(i),
                // Named in full only when short: a peer may send megabytes of it.
                _ if b.magnitude().len() <= 32 => Err(de::Error::custom(format!(
                    "bigint {b} does not fit the integer type"
                ))),
                _ => Err(de::Error::custom(format!(
                    "a bigint of {} bytes does not fit the integer type",
                    b.magnitude().len()
                ))),
            },
            Value::Date(t) => visitor.visit_f64(t),
            other => other.deserialize_any(visitor),
        }
    }
}

macro_rules! integer_methods {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            self.deserialize_integer(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => {
                // Integers that a double holds exactly (±2^53) read as integers; any other
                // number stays a float, so that it reads back as the same `Value::Number`.
                const SAFE: f64 = 9_007_199_254_740_992.0;
                let integral = n.fract() == 0.0 && !(n == 0.0 && n.is_sign_negative());
                if integral && (0.0..=SAFE).contains(&n) {
                    visitor.visit_u64(n as u64)
                } else if integral && (-SAFE..0.0).contains(&n) {
                    visitor.visit_i64(n as i64)
                } else {
                    visitor.visit_f64(n)
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Binary(b) if b.kind == BinaryKind::ArrayBuffer => {
                visitor.visit_byte_buf(b.bytes)
            }
            Value::Array(items) => visitor.visit_seq(Seq::new(items)),
            Value::Object(entries) => visitor.visit_map(Map::object(entries)),
            other => match other.into_magic() {
                Ok((name, inner)) => visitor.visit_map(Map::Magic(Some((name, inner)))),
                Err(other) => unreachable!("every other kind is handled above: {other:?}"),
            },
        }
    }

    integer_methods!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64
    );

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null | Value::Undefined => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null | Value::Undefined => visitor.visit_unit(),
            other => other.invalid(&visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Array(items) | Value::Set(items) => visitor.visit_seq(Seq::new(items)),
            Value::Binary(b) => visitor.visit_seq(Seq::new(
                b.bytes.into_iter().map(Value::from).collect::<Vec<_>>(),
            )),
            other => other.invalid(&visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Object(entries) => visitor.visit_map(Map::object(entries)),
            Value::Map(pairs) => visitor.visit_map(Map::pairs(pairs)),
            other => other.invalid(&visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Binary(b) => visitor.visit_byte_buf(b.bytes),
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => visitor.visit_seq(Seq::new(items)),
            other => other.invalid(&visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            Value::String(variant) => visitor.visit_enum(Enum {
                variant,
                content: None,
            }),
            Value::Object(entries) if entries.len() == 1 => {
                let (variant, content) = entries.into_iter().next().expect("one entry");
                visitor.visit_enum(Enum {
                    variant,
                    content: Some(content),
                })
            }
            other => other.invalid(&visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool char str string identifier
    }
}

impl<'de> IntoDeserializer<'de, ValueError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

/// The elements of an array: an error inside one names its index.
struct Seq {
    items: std::vec::IntoIter<Value>,
    index: usize,
}

impl Seq {
    fn new(items: Vec<Value>) -> Seq {
        Seq {
            items: items.into_iter(),
            index: 0,
        }
    }
}

impl<'de> SeqAccess<'de> for Seq {
    type Error = ValueError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        let Some(v) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(v)
            .map(Some)
            .map_err(|e| e.within(PathSegment::Index(index)))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of an object, a map or a kind serde lacks. An error inside a value names its
/// key: the object's key when it was read as a field name (kept, at no cost), else the entry's
/// position (a key that became a `String` of the caller's map is not copied for the rare error).
enum Map {
    Object {
        entries: std::vec::IntoIter<(String, Value)>,
        pending: Option<Value>,
        key: Option<String>,
        index: usize,
    },
    Pairs {
        entries: std::vec::IntoIter<(Value, Value)>,
        pending: Option<Value>,
        index: usize,
    },
    Magic(Option<(&'static str, Value)>),
}

impl Map {
    fn object(entries: Vec<(String, Value)>) -> Map {
        Map::Object {
            entries: entries.into_iter(),
            pending: None,
            key: None,
            index: 0,
        }
    }

    fn pairs(pairs: Vec<(Value, Value)>) -> Map {
        Map::Pairs {
            entries: pairs.into_iter(),
            pending: None,
            index: 0,
        }
    }
}

impl<'de> MapAccess<'de> for Map {
    type Error = ValueError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        match self {
            Map::Object {
                entries,
                pending,
                key,
                index,
            } => match entries.next() {
                Some((k, v)) => {
                    *pending = Some(v);
                    *index += 1;
                    *key = Some(k);
                    seed.deserialize(ObjectKey::Owned(key)).map(Some)
                }
                None => Ok(None),
            },
            Map::Pairs {
                entries,
                pending,
                index,
            } => match entries.next() {
                Some((k, v)) => {
                    *pending = Some(v);
                    *index += 1;
                    seed.deserialize(k).map(Some)
                }
                None => Ok(None),
            },
            Map::Magic(entry) => match entry {
                Some((name, _)) => seed
                    .deserialize(Value::String((*name).to_owned()))
                    .map(Some),
                None => Ok(None),
            },
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        let (value, segment) = match self {
            Map::Object {
                pending,
                key,
                index,
                ..
            } => {
                let segment = match key.take() {
                    Some(name) => PathSegment::Key(name),
                    None => PathSegment::Entry(index.saturating_sub(1)),
                };
                (pending.take(), Some(segment))
            }
            Map::Pairs { pending, index, .. } => (
                pending.take(),
                Some(PathSegment::Entry(index.saturating_sub(1))),
            ),
            Map::Magic(entry) => (entry.take().map(|(_, v)| v), None),
        };
        let value = value.ok_or_else(|| ValueError::new("map value requested before its key"))?;
        seed.deserialize(value).map_err(|e| match segment {
            Some(segment) => e.within(segment),
            None => e,
        })
    }
    fn size_hint(&self) -> Option<usize> {
        Some(match self {
            Map::Object { entries, .. } => entries.len(),
            Map::Pairs { entries, .. } => entries.len(),
            Map::Magic(entry) => usize::from(entry.is_some()),
        })
    }
}

/// An object's key, as a map's key deserializer. Read as a field name (`deserialize_identifier`,
/// what derived structs ask), it is lent and noted for the error path; read any other way it is
/// handed over as the `Value::String` it always was.
pub(crate) enum ObjectKey<'a> {
    /// An object entry's own key (the `Value` path): it stays in the slot when lent.
    Owned(&'a mut Option<String>),
    /// A key in the input (the direct CBOR path): `kept` says it was lent as a field name.
    Borrowed { text: &'a str, kept: &'a mut bool },
}

impl ObjectKey<'_> {
    fn take(self) -> Value {
        match self {
            ObjectKey::Owned(slot) => Value::String(slot.take().unwrap_or_default()),
            ObjectKey::Borrowed { text, .. } => Value::String(text.to_owned()),
        }
    }
}

macro_rules! key_methods {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            self.take().$method(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for ObjectKey<'_> {
    type Error = ValueError;

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            ObjectKey::Owned(slot) => visitor.visit_str(slot.as_deref().unwrap_or("")),
            ObjectKey::Borrowed { text, kept } => {
                *kept = true;
                visitor.visit_str(text)
            }
        }
    }

    key_methods!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_ignored_any
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.take().deserialize_enum(name, variants, visitor)
    }
}

struct Enum {
    variant: String,
    content: Option<Value>,
}

impl<'de> EnumAccess<'de> for Enum {
    type Error = ValueError;
    type Variant = Content;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Content), ValueError> {
        let variant = seed.deserialize(Value::String(self.variant))?;
        Ok((variant, Content(self.content)))
    }
}

/// The data of an enum variant, if any.
pub(crate) struct Content(Option<Value>);

impl Content {
    pub(crate) fn new(v: Option<Value>) -> Content {
        Content(v)
    }
}

impl<'de> VariantAccess<'de> for Content {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(other) => other.invalid(&"a unit variant"),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(self.0.unwrap_or(Value::Null))
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.0.unwrap_or(Value::Null).deserialize_seq(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.0.unwrap_or(Value::Null).deserialize_map(visitor)
    }
}
