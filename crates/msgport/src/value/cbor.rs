//! Rust → CBOR straight through serde, without building a [`Value`](crate::Value) first: what
//! a message leaving the process costs on the sender.
//!
//! The bytes are exactly those of `codec::encode(&to_value(x)?)` (and the errors those of
//! `to_value`): the same mapping (`docs/wire-format.md`), written in one pass. Where `to_value`
//! decides a container's kind only at its end (a map is an `Object` if every key is a string,
//! else a `Map`; a sequence of unknown length), the head is put in front once the entries are
//! written. Kinds serde lacks (the reserved newtype names of `Value`'s own `Serialize`) go
//! through `to_value` for that one item. Proven by the differential property tests in
//! `tests/codec.rs` (`direct_cbor_is_the_value_path`).

use serde::ser::{self, Serialize};

use super::ser::{from_magic, is_magic, to_value, UNDEFINED};
use super::BigInt;
use crate::codec;
use crate::error::ValueError;

/// A value's encoding in parts: `head`, with each large byte string's content to be put at its
/// position in `head`: in a buffer of its own (copied once from the caller's data), or already
/// written where the frame body will hold it ([`Spill`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Encoded {
    pub head: Vec<u8>,
    pub holes: Vec<(usize, Hole)>,
    pub max_slot: Option<u32>,
    /// Bytes of the holes so far.
    apart: usize,
}

/// A large byte string's content.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Hole {
    /// In a buffer of its own.
    Apart(Vec<u8>),
    /// Written by a [`Spill`] at offset `at` of the frame body (where it lands only if nothing
    /// before it changed size since: a frame writer checks).
    Placed { at: usize, len: usize },
}

/// Somewhere large byte strings can be written in place instead of into a buffer of their own:
/// the shared-memory region of the link a message is about to take.
pub(crate) trait Spill {
    /// Writes `bytes` at offset `at` of the frame body (the data starts at offset 1, after the
    /// body's array head), if it can.
    fn place(&mut self, at: usize, bytes: &[u8]) -> bool;
}

/// A stretch of an [`Encoded`] value, in order.
pub(crate) enum Piece<'a> {
    /// Bytes of the head.
    Inline(&'a [u8]),
    /// A large byte string's content.
    Hole(Hole),
}

impl Encoded {
    /// Hands over the encoding stretch by stretch, in order.
    pub(crate) fn pieces(self, mut each: impl FnMut(Piece<'_>)) {
        let Encoded { head, holes, .. } = self;
        let mut at = 0;
        for (pos, hole) in holes {
            each(Piece::Inline(&head[at..pos]));
            each(Piece::Hole(hole));
            at = pos;
        }
        each(Piece::Inline(&head[at..]));
    }

    /// Whether some large byte string was written in place.
    pub(crate) fn has_placed(&self) -> bool {
        self.holes
            .iter()
            .any(|(_, h)| matches!(h, Hole::Placed { .. }))
    }

    /// The encoding in one buffer (the head itself when nothing was set apart). Only for an
    /// encoding with nothing placed ([`has_placed`](Self::has_placed)): placed bytes are not
    /// here to copy (they come out empty).
    #[inline]
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        debug_assert!(!self.has_placed(), "placed bytes cannot be gathered here");
        if self.holes.is_empty() {
            return self.head;
        }
        self.gather()
    }

    #[cold]
    fn gather(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.apart);
        self.pieces(|piece| match piece {
            Piece::Inline(bytes) => out.extend_from_slice(bytes),
            Piece::Hole(Hole::Apart(bytes)) => {
                out.extend_from_slice(&bytes);
                crate::buffers::give(bytes);
            }
            Piece::Hole(Hole::Placed { .. }) => {}
        });
        out
    }
}

/// What the serializer writes into: the encoding, and where large byte strings may go.
struct Sink<'b> {
    enc: Encoded,
    spill: Option<&'b mut dyn Spill>,
}

impl std::ops::Deref for Sink<'_> {
    type Target = Encoded;
    fn deref(&self) -> &Encoded {
        &self.enc
    }
}

impl std::ops::DerefMut for Sink<'_> {
    fn deref_mut(&mut self) -> &mut Encoded {
        &mut self.enc
    }
}

/// Encodes `value`, large byte strings apart (see [`Encoded`]): a frame sends them as parts of
/// their own, never copied into one buffer with the rest. Byte strings of at least
/// [`PLACE_MIN`] are offered to `spill` first.
///
/// The same as [`to_parts_into`] with a new buffer, written out rather than delegated: the call
/// changed how the serializer was inlined into `codec::to_vec` (the in-process CBOR-encoded
/// stream on one CPU measured 0.23× → 0.21× the moved one).
pub(crate) fn to_parts<T: Serialize + ?Sized>(
    value: &T,
    spill: Option<&mut dyn Spill>,
) -> Result<Encoded, ValueError> {
    let mut sink = Sink {
        enc: Encoded {
            head: Vec::with_capacity(64),
            ..Encoded::default()
        },
        spill,
    };
    value.serialize(Cbor { s: &mut sink })?;
    Ok(sink.enc)
}

/// [`to_parts`], the head written into `head` (emptied first): a buffer kept from an earlier
/// message, so that a small post allocates nothing.
pub(crate) fn to_parts_into<T: Serialize + ?Sized>(
    value: &T,
    spill: Option<&mut dyn Spill>,
    mut head: Vec<u8>,
) -> Result<Encoded, ValueError> {
    head.clear();
    let mut sink = Sink {
        enc: Encoded {
            head,
            ..Encoded::default()
        },
        spill,
    };
    value.serialize(Cbor { s: &mut sink })?;
    Ok(sink.enc)
}

const MAX_SAFE: f64 = 9_007_199_254_740_992.0; // 2^53

/// Byte strings at least this large get a buffer of their own size (see `serialize_bytes`).
const LARGE: usize = 64 * 1024;
/// Byte strings at least this large are offered to a [`Spill`] (a frame this large goes through
/// shared memory).
pub(crate) const PLACE_MIN: usize = crate::transport::shm::MIN;

/// A head: major type and argument, in the shortest form (RFC 8949 §4.2.1). Inlined: as a call
/// it was a fifth of encoding a struct of integers. Every branch copies a fixed number of bytes
/// (a copy of a variable length is a call to `memmove`).
#[inline(always)]
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            let [a, b] = (n as u16).to_be_bytes();
            out.extend_from_slice(&[m | 25, a, b]);
        }
        0x1_0000..=0xffff_ffff => {
            let [a, b, c, d] = (n as u32).to_be_bytes();
            out.extend_from_slice(&[m | 26, a, b, c, d]);
        }
        _ => {
            let [a, b, c, d, e, f, g, h] = n.to_be_bytes();
            out.extend_from_slice(&[m | 27, a, b, c, d, e, f, g, h]);
        }
    }
}

fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A number as `codec` writes a `Value::Number`: integers within ±2⁵³ (but not −0) in the
/// integer form, everything else as a double.
fn number(out: &mut Vec<u8>, n: f64) {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE && !(n == 0.0 && n.is_sign_negative()) {
        if n >= 0.0 {
            head(out, 0, n as u64);
        } else {
            head(out, 1, (-1.0 - n) as u64);
        }
    } else {
        out.push(0xfb);
        out.extend_from_slice(&n.to_bits().to_be_bytes());
    }
}

/// An integer as `Value::from` takes it: a number within ±2⁵³, a bigint beyond.
#[inline]
fn integer(out: &mut Vec<u8>, n: i128) {
    const SAFE: i128 = 1 << 53;
    if (-SAFE..=SAFE).contains(&n) {
        if n >= 0 {
            head(out, 0, n as u64);
        } else {
            head(out, 1, (-1 - n) as u64);
        }
    } else {
        big_integer(out, n);
    }
}

/// [`integer`] for an unsigned integer of at most 64 bits, without 128-bit arithmetic.
#[inline(always)]
fn unsigned(out: &mut Vec<u8>, n: u64) {
    if n <= 1 << 53 {
        head(out, 0, n);
    } else {
        big_integer(out, i128::from(n));
    }
}

/// [`integer`] for a signed integer of at most 64 bits, without 128-bit arithmetic.
#[inline(always)]
fn signed(out: &mut Vec<u8>, n: i64) {
    const SAFE: i64 = 1 << 53;
    if n >= 0 {
        unsigned(out, n as u64);
    } else if n >= -SAFE {
        head(out, 1, (-1 - n) as u64);
    } else {
        big_integer(out, i128::from(n));
    }
}

#[cold]
fn big_integer(out: &mut Vec<u8>, n: i128) {
    codec::encode_into(&super::Value::BigInt(BigInt::from(n)), out);
}

#[inline]
fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Cbor<'a, 'b> {
    s: &'a mut Sink<'b>,
}

impl<'a, 'b> Cbor<'a, 'b> {
    /// One item through `to_value` (the kinds serde lacks).
    fn via_value(self, v: super::Value) -> Result<(), ValueError> {
        if let Some(slot) = v.max_port_slot() {
            self.s.max_slot = Some(self.s.max_slot.map_or(slot, |m| m.max(slot)));
        }
        codec::encode_into(&v, &mut self.s.head);
        Ok(())
    }

    /// `{variant: ...}`: the externally tagged form of a variant with data.
    fn variant(&mut self, variant: &str) {
        self.s.head.push(0xa1);
        text(&mut self.s.head, variant);
    }

    fn container(
        mut self,
        major: u8,
        len: Option<usize>,
        variant: Option<&str>,
    ) -> Container<'a, 'b> {
        if let Some(v) = variant {
            self.variant(v);
        }
        let start = self.s.head.len();
        if let Some(n) = len {
            head(&mut self.s.head, major, n as u64);
        }
        Container {
            s: self.s,
            major,
            start,
            declared: len,
            count: 0,
            all_text_keys: true,
        }
    }
}

/// An array or a map being written: its head goes in front at the end when its length was not
/// declared, or was declared wrong, or (for a map) when a key is not a string.
pub(crate) struct Container<'a, 'b> {
    s: &'a mut Sink<'b>,
    /// 4 (array) or 5 (map).
    major: u8,
    /// Where the head is (or goes).
    start: usize,
    declared: Option<usize>,
    count: usize,
    all_text_keys: bool,
}

impl Container<'_, '_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        value.serialize(Cbor { s: &mut *self.s })
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.count += 1;
        self.item(value)
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        let at = self.s.head.len();
        self.item(key)?;
        // A key that became a string (major type 3) keeps the container an object.
        if self.s.head.get(at).is_none_or(|b| b >> 5 != 3) {
            self.all_text_keys = false;
        }
        self.count += 1;
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), ValueError> {
        text(&mut self.s.head, key);
        self.count += 1;
        self.item(value)
    }

    #[inline]
    fn finish(self) -> Result<(), ValueError> {
        if self.declared == Some(self.count) && self.all_text_keys {
            return Ok(());
        }
        self.rewrite_head();
        Ok(())
    }

    /// Puts the right head in front: the length was not declared, or declared wrong, or a map
    /// has a key that is not a string.
    #[cold]
    fn rewrite_head(self) {
        let tagged = self.major == 5 && !self.all_text_keys;
        let mut front = Vec::with_capacity(head_len(self.count as u64) + 3);
        if tagged {
            head(&mut front, 6, codec::TAG_MAP);
        }
        head(&mut front, self.major, self.count as u64);
        let written = self.declared.map_or(0, |n| head_len(n as u64));
        let grown = front.len() as isize - written as isize;
        self.s
            .head
            .splice(self.start..self.start + written, front)
            .for_each(drop);
        // Large byte strings after the head moved with it.
        for (pos, _) in &mut self.s.holes {
            if *pos > self.start {
                *pos = pos.wrapping_add_signed(grown);
            }
        }
    }
}

/// Integers as `Value::from` takes them (see [`integer`]).
macro_rules! integer_methods {
    ($($method:ident: $t:ty => $write:ident $as:ty),*) => {$(
        #[inline]
        fn $method(self, v: $t) -> Result<(), ValueError> {
            $write(&mut self.s.head, <$as>::from(v));
            Ok(())
        }
    )*};
}

impl<'a, 'b> ser::Serializer for Cbor<'a, 'b> {
    type Ok = ();
    type Error = ValueError;
    type SerializeSeq = Container<'a, 'b>;
    type SerializeTuple = Container<'a, 'b>;
    type SerializeTupleStruct = Container<'a, 'b>;
    type SerializeTupleVariant = Container<'a, 'b>;
    type SerializeMap = Container<'a, 'b>;
    type SerializeStruct = Container<'a, 'b>;
    type SerializeStructVariant = Container<'a, 'b>;

    fn serialize_bool(self, v: bool) -> Result<(), ValueError> {
        self.s.head.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }
    integer_methods!(
        serialize_i8: i8 => signed i64,
        serialize_i16: i16 => signed i64,
        serialize_i32: i32 => signed i64,
        serialize_i64: i64 => signed i64,
        serialize_i128: i128 => integer i128,
        serialize_u8: u8 => unsigned u64,
        serialize_u16: u16 => unsigned u64,
        serialize_u32: u32 => unsigned u64,
        serialize_u64: u64 => unsigned u64
    );
    fn serialize_u128(self, v: u128) -> Result<(), ValueError> {
        if v <= 1 << 53 {
            head(&mut self.s.head, 0, v as u64);
        } else {
            codec::encode_into(&super::Value::BigInt(BigInt::from(v)), &mut self.s.head);
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), ValueError> {
        number(&mut self.s.head, f64::from(v));
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), ValueError> {
        number(&mut self.s.head, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), ValueError> {
        text(&mut self.s.head, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), ValueError> {
        text(&mut self.s.head, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), ValueError> {
        head(&mut self.s.head, 2, v.len() as u64);
        if v.len() >= LARGE {
            let pos = self.s.head.len();
            // Where it lands in the frame body: after the body's array head, the head so far
            // and the holes before it.
            let at = 1 + pos + self.s.apart;
            self.s.apart += v.len();
            if v.len() >= PLACE_MIN {
                if let Some(spill) = self.s.spill.as_mut() {
                    if spill.place(at, v) {
                        let len = v.len();
                        self.s.holes.push((pos, Hole::Placed { at, len }));
                        return Ok(());
                    }
                }
            }
            // A buffer of its own, as `to_value` makes, that a frame sends as a part of its
            // own (one buffer holding everything measured 0.74x on 16 MiB split across CPUs);
            // a kept one when there is one (its pages are already there).
            let mut apart = crate::buffers::take(v.len());
            apart.clear();
            apart.extend_from_slice(v);
            self.s.holes.push((pos, Hole::Apart(apart)));
        } else {
            self.s.head.extend_from_slice(v);
        }
        Ok(())
    }
    fn serialize_none(self) -> Result<(), ValueError> {
        self.s.head.push(0xf6);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), ValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), ValueError> {
        self.s.head.push(0xf6);
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), ValueError> {
        self.s
            .head
            .push(if name == UNDEFINED { 0xf7 } else { 0xf6 });
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), ValueError> {
        text(&mut self.s.head, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        if is_magic(name) {
            let v = from_magic(name, to_value(value)?)?;
            self.via_value(v)
        } else {
            value.serialize(self)
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.variant(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(4, len, None))
    }
    fn serialize_tuple(self, len: usize) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(4, Some(len), None))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(4, Some(len), None))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(4, Some(len), Some(variant)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(5, len, None))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(5, Some(len), None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Container<'a, 'b>, ValueError> {
        Ok(self.container(5, Some(len), Some(variant)))
    }
}

macro_rules! sequence {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Container<'_, '_> {
            type Ok = ();
            type Error = ValueError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
                self.element(value)
            }
            fn end(self) -> Result<(), ValueError> {
                self.finish()
            }
        }
    )*};
}

sequence!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Container<'_, '_> {
    type Ok = ();
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.item(value)
    }
    fn end(self) -> Result<(), ValueError> {
        self.finish()
    }
}

macro_rules! record {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Container<'_, '_> {
            type Ok = ();
            type Error = ValueError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), ValueError> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), ValueError> {
                self.finish()
            }
        }
    )*};
}

record!(SerializeStruct, SerializeStructVariant);
