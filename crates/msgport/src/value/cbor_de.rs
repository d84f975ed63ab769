//! CBOR → Rust straight through serde, without building a [`Value`] first: what a message from
//! another process costs its receiver.
//!
//! [`from_cbor`] gives exactly what `from_value(codec::decode(bytes)?)` gives (the same value,
//! or an error where that fails), for the [plain](crate::codec::Scan::plain) items serde's
//! data model makes: arrays and objects are walked in place, each scalar is turned into the
//! one-node `Value` the `Value` path would have made and handed to `Value`'s own deserializer
//! (so every conversion rule is the same code), and whatever else (a tag, an indefinite item, a
//! container read as another kind) is decoded by `codec` and handed over whole. Proven by the
//! differential property tests in `tests/codec.rs` (`direct_decoding_is_the_value_path`).

use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::de::{Content, ObjectKey};
use super::{BigInt, Binary, BinaryKind, Value};
use crate::codec::{self, CodecError, MAX_DEPTH};
use crate::error::{PathSegment, ValueError};

/// Decodes one plain CBOR item as `T` (see the module docs).
pub(crate) fn from_cbor<T: DeserializeOwned>(input: &[u8]) -> Result<T, ValueError> {
    read(input).unwrap_or_else(|| unreachable_unplain())
}

/// Decodes one CBOR item as `T` if it is plain, in one pass (no [`scan`](codec::scan) first):
/// `None` when it turns out not to be (a map key that is not a definite text string), for the
/// `Value` path to read it from the start. Any other item, well-formed or not, reads as the
/// `Value` path reads it.
pub(crate) fn read<T: DeserializeOwned>(input: &[u8]) -> Option<Result<T, ValueError>> {
    let mut r = Reader {
        input,
        pos: 0,
        unplain: false,
    };
    let value = T::deserialize(Item {
        r: &mut r,
        depth: 0,
    });
    if r.unplain {
        return None;
    }
    Some(value.and_then(|value| {
        if r.pos != input.len() {
            return Err(codec_error(CodecError::TrailingBytes(input.len() - r.pos)));
        }
        Ok(value)
    }))
}

/// A scanned plain item found not plain: the scan and this reader disagree, a bug.
#[cold]
fn unreachable_unplain<T>() -> Result<T, ValueError> {
    debug_assert!(false, "a scanned plain item read as not plain");
    Err(ValueError::new(
        "a key that is not a text string in a plain item",
    ))
}

fn codec_error(e: CodecError) -> ValueError {
    ValueError::new(e.to_string())
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    /// Set where the item turned out not to be plain (see [`read`]).
    unplain: bool,
}

/// A head: major type, additional information, argument, and its length in bytes.
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    info: u8,
    arg: u64,
    len: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn peek(&self) -> Result<Head, ValueError> {
        let truncated = || codec_error(CodecError::Malformed("truncated item".into()));
        let ib = *self.input.get(self.pos).ok_or_else(truncated)?;
        let (major, info) = (ib >> 5, ib & 0x1f);
        let (arg, len) = match info {
            0..=23 => (u64::from(info), 1),
            24..=27 => {
                let (arg, n) =
                    codec::argument(self.input, self.pos + 1, info).ok_or_else(truncated)?;
                (arg, 1 + n)
            }
            _ => (0, 1),
        };
        Ok(Head {
            major,
            info,
            arg,
            len,
        })
    }

    /// The item at the reader, decoded whole by `codec` (the `Value` path itself).
    fn decode(&mut self, depth: usize) -> Result<Value, ValueError> {
        let mut d = minicbor::Decoder::new(self.input);
        d.set_position(self.pos);
        let v = codec::read_value(&mut d, depth).map_err(codec_error)?;
        self.pos = d.position();
        Ok(v)
    }

    /// The item at the reader as the `Value` the `Value` path makes of it: scalars built here,
    /// anything else decoded by `codec`.
    fn value(&mut self, depth: usize) -> Result<Value, ValueError> {
        let h = self.peek()?;
        let leaf = match (h.major, h.info) {
            (0, 0..=27) => Some(integer(i128::from(h.arg))),
            (1, 0..=27) => Some(integer(-1 - i128::from(h.arg))),
            (7, 20) => Some(Value::Bool(false)),
            (7, 21) => Some(Value::Bool(true)),
            (7, 22) => Some(Value::Null),
            (7, 23) => Some(Value::Undefined),
            (7, 26) => Some(Value::Number(f64::from(f32::from_bits(h.arg as u32)))),
            (7, 27) => Some(Value::Number(f64::from_bits(h.arg))),
            (2, 0..=27) => {
                let bytes = self.body(h)?;
                self.pos += h.len + bytes.len();
                return Ok(Value::Binary(Binary {
                    kind: BinaryKind::ArrayBuffer,
                    bytes: bytes.to_vec(),
                }));
            }
            (3, 0..=27) => {
                let text = self.text(h)?;
                self.pos += h.len + text.len();
                return Ok(Value::String(text.to_owned()));
            }
            _ => None,
        };
        match leaf {
            Some(v) => {
                self.pos += h.len;
                Ok(v)
            }
            None => self.decode(depth),
        }
    }

    /// A definite container's count of `n` items of at least `each` bytes, refused when the
    /// rest of the input cannot hold them (as the `Value` path refuses it): a visitor's
    /// `size_hint` is never more than the input could hold.
    #[inline]
    fn count(&self, n: u64, each: u64) -> Result<usize, ValueError> {
        let left = (self.input.len() - self.pos) as u64;
        match n.checked_mul(each) {
            Some(need) if need <= left => Ok(n as usize),
            _ => Err(codec_error(CodecError::Malformed(
                "a container past the end".into(),
            ))),
        }
    }

    /// Where a map key is not a definite text string: the item is not plain (see [`read`]).
    #[cold]
    fn not_plain(&mut self) -> ValueError {
        self.unplain = true;
        ValueError::new("a key that is not a text string in a plain item")
    }

    /// The bytes of a definite string whose head is `h` (at the reader).
    #[inline]
    fn body(&self, h: Head) -> Result<&'a [u8], ValueError> {
        let start = self.pos + h.len;
        usize::try_from(h.arg)
            .ok()
            .and_then(|n| self.input.get(start..start.checked_add(n)?))
            .ok_or_else(|| codec_error(CodecError::Malformed("string past the end".into())))
    }

    #[inline]
    fn text(&self, h: Head) -> Result<&'a str, ValueError> {
        std::str::from_utf8(self.body(h)?)
            .map_err(|e| codec_error(CodecError::Malformed(e.to_string())))
    }

    /// Skips `n` items, checking each as the `Value` path would have decoded it.
    fn skip(&mut self, n: usize, depth: usize) -> Result<(), ValueError> {
        for _ in 0..n {
            self.decode(depth)?;
        }
        Ok(())
    }
}

/// An integer as `codec` decodes it: a number within ±2⁵³, a bigint beyond.
fn integer(n: i128) -> Value {
    if n.unsigned_abs() <= 1 << 53 {
        Value::Number(n as f64)
    } else {
        Value::BigInt(BigInt::from(n))
    }
}

/// One item to deserialize, at `depth` (counted as `codec` counts it).
struct Item<'r, 'a> {
    r: &'r mut Reader<'a>,
    depth: usize,
}

impl<'r, 'a> Item<'r, 'a> {
    #[inline]
    fn check_depth(&self) -> Result<(), ValueError> {
        if self.depth > MAX_DEPTH {
            return Err(codec_error(CodecError::TooDeep));
        }
        Ok(())
    }

    /// A CBOR integer within ±2⁵³ (a `Number` on the `Value` path), consuming it, if the item
    /// is one.
    #[inline]
    fn small_integer(&mut self) -> Result<Option<i64>, ValueError> {
        const SAFE: u64 = 1 << 53;
        let h = self.r.peek()?;
        let n = match (h.major, h.info) {
            (0, 0..=27) if h.arg <= SAFE => h.arg as i64,
            (1, 0..=27) if h.arg < SAFE => -1 - h.arg as i64,
            _ => return Ok(None),
        };
        self.r.pos += h.len;
        Ok(Some(n))
    }

    /// A definite array's length, consuming its head, if the item is one.
    #[inline]
    fn array(&mut self) -> Result<Option<usize>, ValueError> {
        let h = self.r.peek()?;
        if h.major != 4 || h.info > 27 {
            return Ok(None);
        }
        self.r.pos += h.len;
        self.r.count(h.arg, 1).map(Some)
    }

    /// A definite map's entry count, consuming its head, if the item is one. In a plain item
    /// every key is a definite text string: an `Object` on the `Value` path.
    #[inline]
    fn object(&mut self) -> Result<Option<usize>, ValueError> {
        let h = self.r.peek()?;
        if h.major != 5 || h.info > 27 {
            return Ok(None);
        }
        self.r.pos += h.len;
        self.r.count(h.arg, 2).map(Some)
    }

    fn seq<'de, V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, ValueError> {
        let mut seq = Seq {
            r: &mut *self.r,
            left: len,
            index: 0,
            depth: self.depth + 1,
        };
        let out = visitor.visit_seq(&mut seq)?;
        // The `Value` path decodes every element, and ignores those the visitor leaves.
        let (left, depth) = (seq.left, seq.depth);
        self.r.skip(left, depth)?;
        Ok(out)
    }

    fn entries<'de, V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, ValueError> {
        let mut map = Map {
            r: &mut *self.r,
            left: len,
            index: 0,
            depth: self.depth + 1,
            key: None,
        };
        let out = visitor.visit_map(&mut map)?;
        let (left, depth) = (map.left, map.depth);
        self.r.skip(2 * left, depth)?;
        Ok(out)
    }
}

/// The methods with no native path for containers: the `Value` the `Value` path makes, and its
/// deserializer.
macro_rules! via_value {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            self.check_depth()?;
            self.r.value(self.depth)?.$method(visitor)
        }
    )*};
}

/// The numeric methods: a CBOR integer within ±2⁵³ is visited at once as the `Value` path
/// visits the `Number` it would have made (`visit_u64` / `visit_i64`, whatever the method);
/// anything else as [`via_value!`].
macro_rules! numeric {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ValueError> {
            self.check_depth()?;
            match self.small_integer()? {
                Some(n) if n >= 0 => visitor.visit_u64(n as u64),
                Some(n) => visitor.visit_i64(n),
                None => self.r.value(self.depth)?.$method(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Item<'_, '_> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        match self.small_integer()? {
            Some(n) if n >= 0 => return visitor.visit_u64(n as u64),
            Some(n) => return visitor.visit_i64(n),
            None => {}
        }
        if let Some(len) = self.array()? {
            return self.seq(len, visitor);
        }
        if let Some(len) = self.object()? {
            return self.entries(len, visitor);
        }
        self.r.value(self.depth)?.deserialize_any(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        match self.array()? {
            Some(len) => self.seq(len, visitor),
            None => self.r.value(self.depth)?.deserialize_seq(visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        match self.array()? {
            Some(len) => self.seq(len, visitor),
            None => self.r.value(self.depth)?.deserialize_bytes(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_bytes(visitor)
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

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        if let Some(len) = self.object()? {
            return self.entries(len, visitor);
        }
        self.r.value(self.depth)?.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        let h = self.r.peek()?;
        if h.major == 7 && (h.info == 22 || h.info == 23) {
            self.r.pos += 1;
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        let h = self.r.peek()?;
        if h.major == 5 && h.info <= 27 && h.arg == 1 {
            self.r.pos += h.len;
            let depth = self.depth + 1;
            if depth > MAX_DEPTH {
                return Err(codec_error(CodecError::TooDeep));
            }
            let kh = self.r.peek()?;
            if kh.major != 3 || kh.info > 27 {
                return Err(self.r.not_plain());
            }
            let variant = self.r.text(kh)?;
            self.r.pos += kh.len + variant.len();
            return visitor.visit_enum(Enum {
                variant,
                item: Item { r: self.r, depth },
            });
        }
        self.r
            .value(self.depth)?
            .deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        self.r.decode(self.depth)?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        self.r
            .value(self.depth)?
            .deserialize_unit_struct(name, visitor)
    }

    numeric!(
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

    via_value!(
        deserialize_bool,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_unit
    );

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.check_depth()?;
        let h = self.r.peek()?;
        if h.major == 3 && h.info <= 27 {
            // The `Value` path hands over the `String`; a field name is only looked at.
            let text = self.r.text(h)?;
            self.r.pos += h.len + text.len();
            return visitor.visit_str(text);
        }
        self.r.value(self.depth)?.deserialize_identifier(visitor)
    }
}

struct Seq<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: usize,
    index: usize,
    depth: usize,
}

impl<'de> SeqAccess<'de> for &mut Seq<'_, '_> {
    type Error = ValueError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let index = self.index;
        self.index += 1;
        seed.deserialize(Item {
            r: &mut *self.r,
            depth: self.depth,
        })
        .map(Some)
        .map_err(|e| e.within(PathSegment::Index(index)))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct Map<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: usize,
    index: usize,
    depth: usize,
    /// The last key, when it was read as a field name (kept for the error path).
    key: Option<&'a str>,
}

impl<'de, 'a> MapAccess<'de> for &mut Map<'_, 'a> {
    type Error = ValueError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.index += 1;
        if self.depth > MAX_DEPTH {
            return Err(codec_error(CodecError::TooDeep));
        }
        let h = self.r.peek()?;
        if h.major != 3 || h.info > 27 {
            return Err(self.r.not_plain());
        }
        let text = self.r.text(h)?;
        self.r.pos += h.len + text.len();
        let mut kept = false;
        let key = seed.deserialize(ObjectKey::Borrowed {
            text,
            kept: &mut kept,
        })?;
        self.key = kept.then_some(text);
        Ok(Some(key))
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        // The error path's segment is built only for an error (a field name would cost an
        // allocation per field otherwise).
        let (key, index) = (self.key.take(), self.index.saturating_sub(1));
        seed.deserialize(Item {
            r: &mut *self.r,
            depth: self.depth,
        })
        .map_err(|e| {
            e.within(match key {
                Some(name) => PathSegment::Key(name.to_owned()),
                None => PathSegment::Entry(index),
            })
        })
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An object of one entry read as an enum: the key names the variant, the value is its data.
struct Enum<'r, 'a> {
    variant: &'a str,
    item: Item<'r, 'a>,
}

impl<'de, 'r, 'a> EnumAccess<'de> for Enum<'r, 'a> {
    type Error = ValueError;
    type Variant = Item<'r, 'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Item<'r, 'a>), ValueError> {
        let variant = seed.deserialize(Value::String(self.variant.to_owned()))?;
        Ok((variant, self.item))
    }
}

impl<'de> VariantAccess<'de> for Item<'_, '_> {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        let h = self.r.peek()?;
        if h.major == 7 && h.info == 22 {
            self.r.pos += 1;
            return Ok(());
        }
        Content::new(Some(self.r.value(self.depth)?)).unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_map(visitor)
    }
}
