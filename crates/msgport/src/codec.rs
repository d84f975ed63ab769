//! The wire encoding of [`Value`]: CBOR (RFC 8949), with a handful of tags for the kinds CBOR
//! lacks (the table is in the repository's wire-format specification, written for encoders and
//! decoders in other languages).
//!
//! Messages that stay in one process are never encoded; this is the form a message takes when it
//! leaves the process. [`decode`] reads bytes from another process, so it treats them as
//! hostile: every malformed, truncated, too deep or unknown input is a [`CodecError`], never a
//! panic, and no length read from the input is trusted for an allocation beyond the bytes that
//! remain. Proven by property-based round trips and by fuzzing.

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::value::{BigInt, Binary, BinaryKind, ErrorValue, Value};

/// Tag 1: epoch-based date/time in seconds (RFC 8949 §3.4.2). A `Date` holds whole
/// milliseconds (JavaScript's TimeClip), written as seconds and rounded back on reading.
pub const TAG_EPOCH_DATE: u64 = 1;
/// Tag 1001: extended time (RFC 9581), `{1: seconds, -3: milliseconds}`: the `Date`s whose
/// whole milliseconds tag 1 cannot carry exactly.
pub const TAG_EXTENDED_TIME: u64 = 1001;
/// Tag 2: unsigned bignum (RFC 8949 §3.4.3).
pub const TAG_POS_BIGNUM: u64 = 2;
/// Tag 3: negative bignum, −1 − n (RFC 8949 §3.4.3).
pub const TAG_NEG_BIGNUM: u64 = 3;
/// Tag 258: a set, as an array of its elements.
pub const TAG_SET: u64 = 258;
/// Tag 259: a map whose keys may be of any kind (JavaScript `Map`).
pub const TAG_MAP: u64 = 259;
/// Tag 21066: an ECMAScript regular expression, `[source, flags]`.
pub const TAG_REGEXP: u64 = 21066;
/// Tag 55799: self-described CBOR; accepted and skipped on input.
pub const TAG_SELF_DESCRIBED: u64 = 55799;
/// msgport's tag for a port slot: an unsigned index into the message's transfer list.
pub const TAG_PORT: u64 = 0x6d70_0001;
/// msgport's tag for an `Error`: `[name, message, stack or null]`.
pub const TAG_ERROR: u64 = 0x6d70_0002;
/// msgport's tag for a `DataView`: a byte string.
pub const TAG_DATAVIEW: u64 = 0x6d70_0003;

/// How deep arrays, objects, maps and sets may nest in decoded input.
pub const MAX_DEPTH: usize = 256;

/// Why bytes could not be decoded into a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not well-formed CBOR, or are truncated.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Bytes follow the one encoded value.
    #[error("{0} trailing byte(s) after the value")]
    TrailingBytes(usize),
    /// A tag msgport does not define.
    #[error("unknown CBOR tag {0}")]
    UnknownTag(u64),
    /// Well-formed CBOR that does not follow msgport's wire format.
    #[error("invalid msgport data: {0}")]
    Invalid(&'static str),
}

impl From<minicbor::decode::Error> for CodecError {
    fn from(e: minicbor::decode::Error) -> Self {
        CodecError::Malformed(e.to_string())
    }
}

/// Encodes `value` as one CBOR data item.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Encodes any `Serialize` value straight to CBOR, without building a [`Value`]: the same
/// bytes as `encode(&to_value(value)?)`, and the same errors, in one pass (what a message
/// leaving the process costs its sender).
///
/// ```
/// use msgport::{codec, to_value};
///
/// #[derive(serde::Serialize)]
/// struct Job { id: u32, tags: Vec<&'static str> }
///
/// let job = Job { id: 7, tags: vec!["a"] };
/// assert_eq!(codec::to_vec(&job).unwrap(), codec::encode(&to_value(&job).unwrap()));
/// ```
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, crate::ValueError> {
    // The head the serializer writes is the encoding itself unless a large byte string was
    // set apart: no second buffer, no copy.
    Ok(crate::value::cbor::to_parts(value, None)?.into_bytes())
}

/// Appends the CBOR encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    let mut e = Encoder::new(out);
    match write_value(&mut e, value) {
        Ok(()) => {}
        Err(never) => match never {},
    }
}

pub(crate) type EncodeResult = Result<(), std::convert::Infallible>;

pub(crate) fn ok<T>(
    r: Result<T, minicbor::encode::Error<std::convert::Infallible>>,
) -> EncodeResult {
    // Writing into a Vec cannot fail, and the primitive encoders raise no other error.
    r.map(drop).or(Ok(()))
}

const MAX_SAFE: f64 = 9_007_199_254_740_992.0; // 2^53

pub(crate) fn write_value(e: &mut Encoder<&mut Vec<u8>>, v: &Value) -> EncodeResult {
    match v {
        Value::Undefined => ok(e.undefined()),
        Value::Null => ok(e.null()),
        Value::Bool(b) => ok(e.bool(*b)),
        Value::Number(n) => write_number(e, *n),
        Value::BigInt(b) => write_bigint(e, b),
        Value::String(s) => ok(e.str(s)),
        Value::Binary(b) => {
            if let Some(tag) = binary_tag(b.kind) {
                ok(e.tag(Tag::new(tag)))?;
            }
            ok(e.bytes(&b.bytes))
        }
        Value::Date(ms) => {
            let secs = ms / 1000.0;
            if ms.is_nan() || (secs * 1000.0).round() == *ms {
                ok(e.tag(Tag::new(TAG_EPOCH_DATE)))?;
                write_number(e, secs)
            } else {
                // Seconds as a double lose whole milliseconds far from the epoch: RFC 9581's
                // extended time keeps them, as {1: seconds, -3: milliseconds}.
                ok(e.tag(Tag::new(TAG_EXTENDED_TIME)))?;
                ok(e.map(2))?;
                ok(e.u8(1))?;
                write_number(e, ms.div_euclid(1000.0))?;
                ok(e.i8(-3))?;
                write_number(e, ms.rem_euclid(1000.0))
            }
        }
        Value::RegExp { source, flags } => {
            ok(e.tag(Tag::new(TAG_REGEXP)))?;
            ok(e.array(2))?;
            ok(e.str(source))?;
            ok(e.str(flags))
        }
        Value::Array(items) => {
            ok(e.array(items.len() as u64))?;
            items.iter().try_for_each(|item| write_value(e, item))
        }
        Value::Object(entries) => {
            ok(e.map(entries.len() as u64))?;
            for (k, v) in entries {
                ok(e.str(k))?;
                write_value(e, v)?;
            }
            Ok(())
        }
        Value::Map(entries) => {
            ok(e.tag(Tag::new(TAG_MAP)))?;
            ok(e.map(entries.len() as u64))?;
            for (k, v) in entries {
                write_value(e, k)?;
                write_value(e, v)?;
            }
            Ok(())
        }
        Value::Set(items) => {
            ok(e.tag(Tag::new(TAG_SET)))?;
            ok(e.array(items.len() as u64))?;
            items.iter().try_for_each(|item| write_value(e, item))
        }
        Value::Error(err) => {
            ok(e.tag(Tag::new(TAG_ERROR)))?;
            ok(e.array(3))?;
            ok(e.str(&err.name))?;
            ok(e.str(&err.message))?;
            match &err.stack {
                Some(s) => ok(e.str(s)),
                None => ok(e.null()),
            }
        }
        Value::Port(i) => {
            ok(e.tag(Tag::new(TAG_PORT)))?;
            ok(e.u32(*i))
        }
    }
}

fn write_number(e: &mut Encoder<&mut Vec<u8>>, n: f64) -> EncodeResult {
    // Integers within ±2^53 (but not -0) take the compact integer form; everything else is a
    // double, so every f64 bit pattern but NaN payloads survives.
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE && !(n == 0.0 && n.is_sign_negative()) {
        if n >= 0.0 {
            ok(e.u64(n as u64))
        } else {
            ok(e.i64(n as i64))
        }
    } else {
        ok(e.f64(n))
    }
}

fn write_bigint(e: &mut Encoder<&mut Vec<u8>>, b: &BigInt) -> EncodeResult {
    if b.is_negative() {
        ok(e.tag(Tag::new(TAG_NEG_BIGNUM)))?;
        ok(e.bytes(&minus_one(b.magnitude())))
    } else {
        ok(e.tag(Tag::new(TAG_POS_BIGNUM)))?;
        ok(e.bytes(b.magnitude()))
    }
}

/// `n - 1` for a non-zero big-endian magnitude.
fn minus_one(magnitude: &[u8]) -> Vec<u8> {
    let mut out = magnitude.to_vec();
    for byte in out.iter_mut().rev() {
        let (v, borrow) = byte.overflowing_sub(1);
        *byte = v;
        if !borrow {
            break;
        }
    }
    let start = out.iter().position(|b| *b != 0).unwrap_or(out.len());
    out.drain(..start);
    out
}

/// `n + 1` for a big-endian magnitude.
fn plus_one(magnitude: &[u8]) -> Vec<u8> {
    let mut out = magnitude.to_vec();
    for byte in out.iter_mut().rev() {
        let (v, carry) = byte.overflowing_add(1);
        *byte = v;
        if !carry {
            return out;
        }
    }
    out.insert(0, 1);
    out
}

/// RFC 8746 typed-array tags (little-endian forms), msgport's tag for `DataView`, none for
/// `ArrayBuffer` (a plain byte string).
pub(crate) fn binary_tag(kind: BinaryKind) -> Option<u64> {
    Some(match kind {
        BinaryKind::ArrayBuffer => return None,
        BinaryKind::DataView => TAG_DATAVIEW,
        BinaryKind::Uint8 => 64,
        BinaryKind::Uint8Clamped => 68,
        BinaryKind::Int8 => 72,
        BinaryKind::Uint16 => 69,
        BinaryKind::Uint32 => 70,
        BinaryKind::BigUint64 => 71,
        BinaryKind::Int16 => 77,
        BinaryKind::Int32 => 78,
        BinaryKind::BigInt64 => 79,
        BinaryKind::Float32 => 85,
        BinaryKind::Float64 => 86,
    })
}

/// The kind and, for big-endian forms, the element size to swap, of an RFC 8746 tag.
fn typed_array_kind(tag: u64) -> Option<(BinaryKind, Option<usize>)> {
    Some(match tag {
        64 => (BinaryKind::Uint8, None),
        68 => (BinaryKind::Uint8Clamped, None),
        72 => (BinaryKind::Int8, None),
        69 => (BinaryKind::Uint16, None),
        70 => (BinaryKind::Uint32, None),
        71 => (BinaryKind::BigUint64, None),
        77 => (BinaryKind::Int16, None),
        78 => (BinaryKind::Int32, None),
        79 => (BinaryKind::BigInt64, None),
        85 => (BinaryKind::Float32, None),
        86 => (BinaryKind::Float64, None),
        65 => (BinaryKind::Uint16, Some(2)),
        66 => (BinaryKind::Uint32, Some(4)),
        67 => (BinaryKind::BigUint64, Some(8)),
        73 => (BinaryKind::Int16, Some(2)),
        74 => (BinaryKind::Int32, Some(4)),
        75 => (BinaryKind::BigInt64, Some(8)),
        81 => (BinaryKind::Float32, Some(4)),
        82 => (BinaryKind::Float64, Some(8)),
        _ => return None,
    })
}

/// Decodes CBOR straight into any `Deserialize` type, without building a [`Value`] when the
/// bytes hold only the shapes serde makes (definite arrays, objects with text keys, scalars):
/// the same result as `from_value(decode(bytes)?)`, the same errors' meaning (a decoding
/// failure reads as a [`ValueError`](crate::ValueError) naming it). What a message from another process costs its
/// receiver.
///
/// ```
/// use msgport::{codec, value};
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, tags: Vec<String> }
///
/// let bytes = codec::encode(&value!({ "id": 7, "tags": ["a"] }));
/// let job: Job = codec::from_slice(&bytes).unwrap();
/// assert_eq!(job, Job { id: 7, tags: vec!["a".into()] });
/// ```
pub fn from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::ValueError> {
    // Read in one pass, without a scan first: an item that turns out not to be plain (a map
    // with a key that is not a text string) is read again from the start through a `Value`.
    match crate::value::cbor_de::read(bytes) {
        Some(read) => read,
        None => crate::value::from_value(
            decode(bytes).map_err(|e| crate::ValueError::new(e.to_string()))?,
        ),
    }
}

/// What [`scan`] found of one data item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Where the item ends.
    pub end: usize,
    /// The highest port slot (tag [`TAG_PORT`]) in it, if any.
    pub max_slot: Option<u32>,
    /// Only definite-length items, no tag, every map key a definite text string: the shapes
    /// serde's data model makes, which `value::cbor_de` reads without building a `Value`.
    pub plain: bool,
}

/// What an open container still expects.
#[derive(Clone, Copy)]
enum Open {
    /// Items left in a definite array or map (a map counts keys and values).
    Items { left: u64, map: bool },
    /// Items until a break (`chunks`: string chunks of this major type only).
    UntilBreak { chunks: Option<u8> },
    /// The one item a tag applies to (`port`: it must be a u32 slot).
    Tagged { port: bool },
}

/// [`scan`]'s stack of open containers: the innermost levels in place (a message's data rarely
/// nests deeper), the rest on the heap. No allocation, and no thread-local lookup, per message.
struct Stack {
    near: [Open; NEAR],
    len: usize,
    far: Vec<Open>,
}

/// Levels [`Stack`] keeps in place.
const NEAR: usize = 8;

impl Stack {
    fn new() -> Self {
        Stack {
            near: [Open::Tagged { port: false }; NEAR],
            len: 0,
            far: Vec::new(),
        }
    }

    #[inline(always)]
    fn last(&self) -> Option<Open> {
        match self.len {
            0 => None,
            n if n <= NEAR => Some(self.near[n - 1]),
            _ => self.far.last().copied(),
        }
    }

    #[inline(always)]
    fn last_mut(&mut self) -> Option<&mut Open> {
        match self.len {
            0 => None,
            n if n <= NEAR => Some(&mut self.near[n - 1]),
            _ => self.far.last_mut(),
        }
    }

    #[inline(always)]
    fn push(&mut self, open: Open) {
        if self.len < NEAR {
            self.near[self.len] = open;
        } else {
            self.far.push(open);
        }
        self.len += 1;
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<Open> {
        let open = self.last()?;
        if self.len > NEAR {
            self.far.pop();
        }
        self.len -= 1;
        Some(open)
    }
}

/// The argument that follows an initial byte whose additional information is 24 to 27 (1, 2,
/// 4 or 8 big-endian bytes from `at`), and its length; `None` if the input ends first. Read as
/// one load of its size, not byte by byte.
#[inline(always)]
pub(crate) fn argument(input: &[u8], at: usize, info: u8) -> Option<(u64, usize)> {
    let rest = input.get(at..)?;
    Some(match info {
        24 => (u64::from(*rest.first()?), 1),
        25 => (u64::from(u16::from_be_bytes(*rest.first_chunk()?)), 2),
        26 => (u64::from(u32::from_be_bytes(*rest.first_chunk()?)), 4),
        _ => (u64::from_be_bytes(*rest.first_chunk()?), 8),
    })
}

/// How deep [`scan`] lets arrays, maps and tags nest: looser than [`decode`]'s limit, so that
/// nothing `decode` accepts is refused here (what `scan` lets through and `decode` refuses is
/// an error for that one message, when it is read).
const SCAN_DEPTH: usize = 2 * MAX_DEPTH + 8;

/// Finds the extent of the data item at `start` without building it (no allocation but a
/// small stack; recursion at most [`FAST_DEPTH`] calls deep): its well-formedness (heads,
/// lengths within the input, breaks only in indefinite items, only the simple values msgport
/// defines), its port slots, and whether it is [plain](Scan::plain). Text is not checked for
/// UTF-8 nor tags for meaning here: that is the reader's work.
pub(crate) fn scan(input: &[u8], start: usize) -> Result<Scan, CodecError> {
    let mut end = start;
    if plain_extent(input, &mut end, FAST_DEPTH).is_some() {
        let found = Scan {
            end,
            max_slot: None,
            plain: true,
        };
        // Fuzzing checks the fast pass against the full one on every input it takes.
        #[cfg(fuzzing)]
        assert_eq!(Ok(found), scan_fully(input, start), "the fast scan differs");
        return Ok(found);
    }
    scan_fully(input, start)
}

/// How deep [`plain_extent`] follows arrays and maps before it leaves the item to
/// [`scan_fully`].
const FAST_DEPTH: u32 = 8;

/// The common case of [`scan`], in one tight pass: moves `pos` past the item at `pos` if it is
/// [plain](Scan::plain) (so it holds no port slot), well-formed, and nested at most `depth`
/// deep. `None` for anything else, error or not, which [`scan_fully`] then scans from the start
/// again (and reports). A scalar is passed over in place; each array or map is a call, never
/// more than [`FAST_DEPTH`] deep.
#[inline(always)]
fn plain_extent(input: &[u8], pos: &mut usize, depth: u32) -> Option<()> {
    let ib = *input.get(*pos)?;
    *pos += 1;
    let (major, info) = (ib >> 5, ib & 0x1f);
    if major <= 1 {
        // An integer: only its head's length matters here, not its value.
        let n = match info {
            0..=23 => 0,
            24..=27 => 1 << (info - 24),
            _ => return None,
        };
        if n > input.len() - *pos {
            return None;
        }
        *pos += n;
        return Some(());
    }
    let arg = match info {
        0..=23 => u64::from(info),
        24..=27 => {
            let (arg, n) = argument(input, *pos, info)?;
            *pos += n;
            arg
        }
        _ => return None,
    };
    match major {
        2 | 3 => {
            if arg > (input.len() - *pos) as u64 {
                return None;
            }
            *pos += arg as usize;
            Some(())
        }
        4 | 5 if depth > 0 => plain_container(input, pos, major == 5, arg, depth - 1),
        7 if matches!(info, 20..=23 | 25..=27) => Some(()),
        _ => None,
    }
}

/// The items of a definite array or map of `n` entries (see [`plain_extent`]).
fn plain_container(input: &[u8], pos: &mut usize, map: bool, n: u64, depth: u32) -> Option<()> {
    let left = (input.len() - *pos) as u64;
    if map {
        if n.checked_mul(2)? > left {
            return None;
        }
        for _ in 0..n {
            // A key: a definite text string.
            if input.get(*pos)? >> 5 != 3 {
                return None;
            }
            plain_extent(input, pos, 0)?;
            plain_extent(input, pos, depth)?;
        }
    } else {
        if n > left {
            return None;
        }
        for _ in 0..n {
            plain_extent(input, pos, depth)?;
        }
    }
    Some(())
}

/// [`scan`] for any item: every kind of head, port slots, any depth up to [`SCAN_DEPTH`], and
/// the error that makes an item unreadable.
fn scan_fully(input: &[u8], start: usize) -> Result<Scan, CodecError> {
    let malformed = |what: &str| CodecError::Malformed(what.to_owned());
    let mut stack = Stack::new();
    let mut pos = start;
    let mut max_slot: Option<u32> = None;
    let mut plain = true;
    loop {
        let ib = *input.get(pos).ok_or_else(|| malformed("truncated item"))?;
        pos += 1;
        let (major, info) = (ib >> 5, ib & 0x1f);
        let top = stack.last();
        // A key position of a definite map (for `plain`).
        let at_key = matches!(top, Some(Open::Items { left, map: true }) if left % 2 == 0);
        if let Some(Open::UntilBreak { chunks: Some(m) }) = top {
            if ib != 0xff && (major != m || info == 31) {
                return Err(malformed(
                    "a chunk of an indefinite string is not a definite string",
                ));
            }
        }
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let (arg, n) =
                    argument(input, pos, info).ok_or_else(|| malformed("truncated head"))?;
                pos += n;
                arg
            }
            28..=30 => return Err(malformed("reserved additional information")),
            _ => u64::MAX,
        };
        let indefinite = info == 31;
        if at_key && (major != 3 || indefinite) {
            plain = false;
        }
        if let Some(Open::Tagged { port: true }) = top {
            match u32::try_from(arg) {
                Ok(slot) if major == 0 => max_slot = Some(max_slot.map_or(slot, |m| m.max(slot))),
                _ => {
                    return Err(CodecError::Invalid(
                        "a port slot must be an unsigned 32-bit index",
                    ))
                }
            }
        }
        // Whether this head completes an item (else it opened a container or a tag).
        let complete = match major {
            0 | 1 => {
                if indefinite {
                    return Err(malformed("an integer has no indefinite form"));
                }
                true
            }
            2 | 3 if indefinite => {
                plain = false;
                let chunks = Some(major);
                stack.push(Open::UntilBreak { chunks });
                false
            }
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| malformed("string past the end"))?;
                if len > input.len() - pos {
                    return Err(malformed("string past the end"));
                }
                pos += len;
                true
            }
            4 | 5 if indefinite => {
                plain = false;
                stack.push(Open::UntilBreak { chunks: None });
                false
            }
            4 | 5 => {
                let map = major == 5;
                let left = if map { arg.checked_mul(2) } else { Some(arg) }
                    .filter(|n| *n <= (input.len() - pos) as u64)
                    .ok_or_else(|| malformed("container length past the end"))?;
                if left == 0 {
                    true
                } else {
                    stack.push(Open::Items { left, map });
                    false
                }
            }
            6 => {
                if indefinite {
                    return Err(malformed("a tag has no indefinite form"));
                }
                plain = false;
                let port = arg == TAG_PORT;
                stack.push(Open::Tagged { port });
                false
            }
            _ => match info {
                20..=23 | 25..=27 => true,
                31 => match stack.pop() {
                    Some(Open::UntilBreak { .. }) => true,
                    _ => {
                        return Err(CodecError::Invalid(
                            "unsupported simple value or stray break",
                        ))
                    }
                },
                _ => {
                    return Err(CodecError::Invalid(
                        "unsupported simple value or stray break",
                    ))
                }
            },
        };
        if stack.len > SCAN_DEPTH {
            return Err(CodecError::TooDeep);
        }
        if !complete {
            continue;
        }
        // An item is complete: count it in the containers it closes.
        loop {
            match stack.last_mut() {
                None => {
                    return Ok(Scan {
                        end: pos,
                        max_slot,
                        plain,
                    })
                }
                Some(Open::Items { left, .. }) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    stack.pop();
                }
                Some(Open::Tagged { .. }) => {
                    stack.pop();
                }
                Some(Open::UntilBreak { .. }) => break,
            }
        }
    }
}

/// Decodes exactly one CBOR data item into a [`Value`].
pub fn decode(bytes: &[u8]) -> Result<Value, CodecError> {
    let mut d = Decoder::new(bytes);
    let v = read_value(&mut d, 0)?;
    match bytes.len() - d.position() {
        0 => Ok(v),
        n => Err(CodecError::TrailingBytes(n)),
    }
}

fn remaining(d: &Decoder<'_>) -> usize {
    d.input().len().saturating_sub(d.position())
}

/// Consumes a `break` if one is next (the end of an indefinite-length item).
fn at_break(d: &mut Decoder<'_>) -> Result<bool, CodecError> {
    if d.datatype()? == Type::Break {
        d.set_position(d.position() + 1);
        Ok(true)
    } else {
        Ok(false)
    }
}

pub(crate) fn read_value(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::TooDeep);
    }
    Ok(match d.datatype()? {
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null => {
            d.null()?;
            Value::Null
        }
        Type::Undefined => {
            d.undefined()?;
            Value::Undefined
        }
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => {
            let n = i128::from(d.int()?);
            // Compared as integers: ±(2⁵³ + 1) as f64 would round to ±2⁵³.
            if n.unsigned_abs() <= 1 << 53 {
                Value::Number(n as f64)
            } else {
                Value::BigInt(BigInt::from(n))
            }
        }
        Type::F16 => Value::Number(f64::from(d.f16()?)),
        Type::F32 => Value::Number(f64::from(d.f32()?)),
        Type::F64 => Value::Number(d.f64()?),
        Type::Bytes | Type::BytesIndef => Value::Binary(Binary {
            kind: BinaryKind::ArrayBuffer,
            bytes: read_bytes(d)?,
        }),
        Type::String => Value::String(d.str()?.to_owned()),
        Type::StringIndef => {
            let mut s = String::new();
            for chunk in d.str_iter()? {
                s.push_str(chunk?);
            }
            Value::String(s)
        }
        Type::Array | Type::ArrayIndef => Value::Array(read_array(d, depth)?),
        Type::Map | Type::MapIndef => Value::from_entries(read_map(d, depth)?),
        Type::Tag => read_tagged(d, depth)?,
        Type::Simple | Type::Break | Type::Unknown(_) => {
            return Err(CodecError::Invalid(
                "unsupported simple value or stray break",
            ))
        }
    })
}

pub(crate) fn read_bytes(d: &mut Decoder<'_>) -> Result<Vec<u8>, CodecError> {
    match d.datatype()? {
        Type::Bytes => Ok(d.bytes()?.to_vec()),
        Type::BytesIndef => {
            let mut out = Vec::new();
            for chunk in d.bytes_iter()? {
                out.extend_from_slice(chunk?);
            }
            Ok(out)
        }
        _ => Err(CodecError::Invalid("expected a byte string")),
    }
}

/// The most elements a decoder reserves room for before it has decoded them.
const PREALLOC: usize = 64;

fn read_array(d: &mut Decoder<'_>, depth: usize) -> Result<Vec<Value>, CodecError> {
    match d.array()? {
        Some(len) => {
            // Every element takes at least one byte: never trust a length past the input.
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > remaining(d) {
                return Err(CodecError::Malformed("array length past the end".into()));
            }
            // Reserve no more than a page's worth up front: each element is one byte on the wire
            // but a whole `Value` in memory, so a length is grown into, not trusted.
            let mut items = Vec::with_capacity(len.min(PREALLOC));
            for _ in 0..len {
                items.push(read_value(d, depth + 1)?);
            }
            Ok(items)
        }
        None => {
            let mut items = Vec::new();
            while !at_break(d)? {
                items.push(read_value(d, depth + 1)?);
            }
            Ok(items)
        }
    }
}

fn read_map(d: &mut Decoder<'_>, depth: usize) -> Result<Vec<(Value, Value)>, CodecError> {
    match d.map()? {
        Some(len) => {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > remaining(d) / 2 {
                return Err(CodecError::Malformed("map length past the end".into()));
            }
            let mut entries = Vec::with_capacity(len.min(PREALLOC / 2));
            for _ in 0..len {
                let k = read_value(d, depth + 1)?;
                entries.push((k, read_value(d, depth + 1)?));
            }
            Ok(entries)
        }
        None => {
            let mut entries = Vec::new();
            while !at_break(d)? {
                let k = read_value(d, depth + 1)?;
                entries.push((k, read_value(d, depth + 1)?));
            }
            Ok(entries)
        }
    }
}

fn read_text(d: &mut Decoder<'_>) -> Result<String, CodecError> {
    match d.datatype()? {
        Type::String => Ok(d.str()?.to_owned()),
        _ => Err(CodecError::Invalid("expected a text string")),
    }
}

fn read_tagged(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CodecError> {
    let tag = d.tag()?.as_u64();
    Ok(match tag {
        TAG_SELF_DESCRIBED => read_value(d, depth + 1)?,
        TAG_EPOCH_DATE => match read_value(d, depth + 1)? {
            // JavaScript time values are whole milliseconds (TimeClip): undo the division's
            // rounding error.
            Value::Number(secs) => Value::Date((secs * 1000.0).round()),
            _ => return Err(CodecError::Invalid("a date must be a number")),
        },
        TAG_EXTENDED_TIME => {
            let bad =
                || CodecError::Invalid("extended time must be {1: seconds, -3: milliseconds}");
            let entries = match d.datatype()? {
                Type::Map | Type::MapIndef => read_map(d, depth)?,
                _ => return Err(bad()),
            };
            let (mut secs, mut millis) = (None, 0.0);
            for (k, v) in entries {
                match (k, v) {
                    (Value::Number(1.0), Value::Number(v)) => secs = Some(v),
                    (Value::Number(-3.0), Value::Number(v)) => millis = v,
                    _ => return Err(bad()),
                }
            }
            Value::Date(secs.ok_or_else(bad)? * 1000.0 + millis)
        }
        TAG_POS_BIGNUM => Value::BigInt(BigInt::from_sign_magnitude(false, &read_bytes(d)?)),
        TAG_NEG_BIGNUM => Value::BigInt(BigInt::from_sign_magnitude(
            true,
            &plus_one(&read_bytes(d)?),
        )),
        TAG_REGEXP if !matches!(d.datatype()?, Type::Array | Type::ArrayIndef) => {
            return Err(CodecError::Invalid("a RegExp must be [source, flags]"))
        }
        TAG_REGEXP => match <[Value; 2]>::try_from(read_array(d, depth)?) {
            Ok([Value::String(source), Value::String(flags)]) => Value::RegExp { source, flags },
            _ => return Err(CodecError::Invalid("a RegExp must be [source, flags]")),
        },
        TAG_SET => {
            if !matches!(d.datatype()?, Type::Array | Type::ArrayIndef) {
                return Err(CodecError::Invalid("a Set must be an array"));
            }
            Value::Set(read_array(d, depth)?)
        }
        TAG_MAP => {
            if !matches!(d.datatype()?, Type::Map | Type::MapIndef) {
                return Err(CodecError::Invalid("a Map must be a map"));
            }
            Value::Map(read_map(d, depth)?)
        }
        TAG_ERROR => {
            if d.array()? != Some(3) {
                return Err(CodecError::Invalid(
                    "an Error must be [name, message, stack]",
                ));
            }
            let name = read_text(d)?;
            let message = read_text(d)?;
            let stack = match d.datatype()? {
                Type::Null => {
                    d.null()?;
                    None
                }
                _ => Some(read_text(d)?),
            };
            Value::Error(ErrorValue {
                name,
                message,
                stack,
            })
        }
        TAG_PORT => Value::Port(
            d.u32()
                .map_err(|_| CodecError::Invalid("a port slot must be an unsigned 32-bit index"))?,
        ),
        TAG_DATAVIEW => Value::Binary(Binary {
            kind: BinaryKind::DataView,
            bytes: read_bytes(d)?,
        }),
        other => match typed_array_kind(other) {
            Some((kind, swap)) => {
                let mut bytes = read_bytes(d)?;
                if bytes.len() % kind.element_size() != 0 {
                    return Err(CodecError::Invalid(
                        "typed array length is not a multiple of its element size",
                    ));
                }
                if let Some(size) = swap {
                    bytes.chunks_exact_mut(size).for_each(<[u8]>::reverse);
                }
                Value::Binary(Binary { kind, bytes })
            }
            None => return Err(CodecError::UnknownTag(other)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_plain(v: &Value) -> bool {
        match v {
            Value::Undefined | Value::Null | Value::Bool(_) | Value::Number(_) => true,
            Value::String(_) => true,
            Value::Binary(b) => b.kind == BinaryKind::ArrayBuffer,
            Value::Array(items) => items.iter().all(is_plain),
            Value::Object(entries) => entries.iter().all(|(_, v)| is_plain(v)),
            _ => false,
        }
    }

    /// `scan` finds the extent, the port slots and the plainness of every encoding, and
    /// refuses none that `decode` accepts.
    #[test]
    fn scan_sees_what_decode_sees() {
        let cases = [
            Value::Null,
            Value::Array(vec![Value::Port(3), Value::Port(1), Value::from("x")]),
            Value::Object(vec![("a".into(), Value::Array(vec![Value::Number(1.5)]))]),
            Value::Map(vec![(Value::Number(1.0), Value::Null)]),
            Value::BigInt(BigInt::from(u64::MAX)),
            Value::Set(vec![Value::Port(7)]),
            Value::Date(1.5),
            Value::Object(Vec::new()),
            Value::Array(Vec::new()),
        ];
        for v in cases {
            let mut bytes = encode(&v);
            let scanned = scan(&bytes, 0).unwrap();
            assert_eq!(scanned.end, bytes.len(), "{v:?}");
            assert_eq!(scanned.max_slot, v.max_port_slot(), "{v:?}");
            assert_eq!(scanned.plain, is_plain(&v), "{v:?}");
            // Followed by more: the extent is the item's own.
            bytes.push(0xf6);
            assert_eq!(scan(&bytes, 0).unwrap().end, bytes.len() - 1);
        }
        // Indefinite items are well-formed but not plain; a stray break or a reserved head is
        // refused; so is a port slot that is not a u32.
        assert_eq!(
            scan(&[0x9f, 0x01, 0x7f, 0x61, b'a', 0xff, 0xff], 0).unwrap(),
            Scan {
                end: 7,
                max_slot: None,
                plain: false
            }
        );
        assert!(scan(&[0xff], 0).is_err());
        assert!(scan(&[0x1c], 0).is_err());
        assert!(scan(&[0x82, 0x01], 0).is_err());
        assert!(scan(&[0xda, 0x6d, 0x70, 0x00, 0x01, 0x61, b'a'], 0).is_err());
        assert!(
            scan(&[0x7f, 0x41, 0x00, 0xff], 0).is_err(),
            "a byte chunk in a text string"
        );
        // Nesting: deeper than decode allows is still scanned (up to the scan limit).
        let deep = [vec![0x81; MAX_DEPTH + 1], vec![0x01]].concat();
        assert!(decode(&deep).is_err());
        assert_eq!(scan(&deep, 0).unwrap().end, deep.len());
        assert!(scan(&[vec![0x81; SCAN_DEPTH + 1], vec![0x01]].concat(), 0).is_err());
        // Containers open past the levels the stack keeps in place, and closed again, with
        // items after each: every level is counted right on the way back out.
        let mut nested = Value::Port(9);
        for i in 0..3 * NEAR {
            nested = if i % 2 == 0 {
                Value::Array(vec![nested, Value::Port(i as u32)])
            } else {
                Value::Object(vec![("k".into(), nested), ("z".into(), Value::Null)])
            };
        }
        let mut bytes = encode(&nested);
        bytes.push(0xf6);
        let scanned = scan(&bytes, 0).unwrap();
        assert_eq!(scanned.end, bytes.len() - 1);
        assert_eq!(scanned.max_slot, Some(3 * NEAR as u32 - 2));
        assert!(!scanned.plain);
        let cut = &bytes[..bytes.len() - 2];
        assert!(scan(cut, 0).is_err(), "the last item cut off");
    }

    /// Plain items of every kind, nested up to `depth`.
    fn plain_value(depth: u32) -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| Value::Number(n as f64)),
            any::<f64>().prop_map(Value::Number),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            Just(Value::Undefined),
            ".{0,30}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Binary(
                crate::value::Binary {
                    kind: crate::value::BinaryKind::ArrayBuffer,
                    bytes: b
                }
            )),
            any::<u32>().prop_map(Value::Port),
        ];
        leaf.prop_recursive(depth, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("[a-z]{0,4}", inner), 0..6)
                    .prop_map(|entries| { Value::Object(entries) }),
            ]
        })
    }

    /// Items at the edges of what `scan`'s fast pass takes: each is scanned alike by both.
    #[test]
    fn the_fast_scan_leaves_the_rest_to_the_full_scan() {
        let cases: &[&[u8]] = &[
            &[0xa1, 0x01, 0x02],                   // an integer key: not plain
            &[0xa1, 0x7f, 0x61, b'a', 0xff, 0x02], // an indefinite text key
            &[0xa1, 0x41, b'a', 0x02],             // a byte string key
            &[0xa1, 0x81, 0x61, b'a', 0x02],       // an array key
            &[0xf8, 0x20],                         // a simple value msgport does not define
            &[0xf3],                               // simple value 19
            &[0xf9, 0x3c, 0x00],                   // a half float
            &[0xfc],                               // reserved additional information
            &[0x1f],                               // an indefinite integer
            &[0xc1, 0x01],                         // a tag
            &[0xd8, 0x2a, 0x00],                   // a tag with a one-byte argument
            &[0x9f, 0x01, 0xff],                   // an indefinite array
            &[0xff],                               // a stray break
            &[0x82, 0x01],                         // an array cut short
            &[0xa2, 0x61, b'a', 0x01],             // a map cut short
            &[0x5a, 0xff, 0xff, 0xff, 0xff],       // a string longer than the input
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // an absurd length
            &[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],    // a map count that overflows when doubled
            &[0x1b, 0, 0, 0, 0, 0, 0, 0],          // a head cut short
        ];
        for bytes in cases {
            let fast = scan(bytes, 0).map_err(|e| e.to_string());
            let full = scan_fully(bytes, 0).map_err(|e| e.to_string());
            assert_eq!(fast, full, "{bytes:02x?}");
        }
        // Nested past the fast pass's depth, and at it.
        for depth in [
            FAST_DEPTH as usize,
            FAST_DEPTH as usize + 1,
            3 * FAST_DEPTH as usize,
        ] {
            let deep = [vec![0x81; depth], vec![0x01]].concat();
            assert_eq!(scan(&deep, 0), scan_fully(&deep, 0));
            assert_eq!(scan(&deep, 0).unwrap().end, deep.len());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// `scan`'s fast pass finds what the full scan finds, for well-formed items (plain or
        /// not, nested past the fast pass's depth or not), for their truncations and for
        /// single-byte corruptions of them.
        #[test]
        fn the_fast_scan_is_the_full_scan(
            v in plain_value(12),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<(proptest::sample::Index, u8)>(),
        ) {
            let bytes = encode(&v);
            let cut = &bytes[..cut.index(bytes.len() + 1)];
            let mut flipped = bytes.clone();
            let at = flip.0.index(flipped.len());
            flipped[at] = flip.1;
            for input in [&bytes[..], cut, &flipped[..]] {
                let fast = scan(input, 0).map_err(|e| e.to_string());
                let full = scan_fully(input, 0).map_err(|e| e.to_string());
                proptest::prop_assert_eq!(fast, full);
            }
        }
    }

    #[test]
    fn bignum_edges() {
        assert_eq!(minus_one(&[1, 0]), vec![255]);
        assert_eq!(minus_one(&[1]), Vec::<u8>::new());
        assert_eq!(plus_one(&[255, 255]), vec![1, 0, 0]);
        assert_eq!(plus_one(&[]), vec![1]);
        // -1 is tag 3 over the empty byte string's successor: 3(h'00') is -1.
        let v = Value::BigInt(BigInt::from(-1i64));
        assert_eq!(decode(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn known_vectors() {
        // RFC 8949 appendix A examples.
        assert_eq!(decode(&[0x00]).unwrap(), Value::Number(0.0));
        assert_eq!(decode(&[0x38, 0x63]).unwrap(), Value::Number(-100.0));
        assert_eq!(decode(&[0xf9, 0x3c, 0x00]).unwrap(), Value::Number(1.0));
        assert_eq!(decode(&[0xf7]).unwrap(), Value::Undefined);
        assert_eq!(
            decode(&[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap(),
            Value::BigInt(BigInt::from(u64::MAX))
        );
        assert_eq!(
            decode(&[0x7f, 0x65, b's', b't', b'r', b'e', b'a', 0x64, b'm', b'i', b'n', b'g', 0xff])
                .unwrap(),
            Value::String("streaming".into())
        );
        assert_eq!(
            decode(&[0x9f, 0x01, 0x82, 0x02, 0x03, 0xff]).unwrap(),
            Value::Array(vec![
                Value::Number(1.0),
                Value::Array(vec![Value::Number(2.0), Value::Number(3.0)])
            ])
        );
    }

    #[test]
    fn hostile_inputs_are_errors() {
        // A huge array length with no elements behind it.
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Deep nesting.
        assert_eq!(decode(&vec![0x81; 10_000]), Err(CodecError::TooDeep));
        // Trailing bytes, truncation, stray break, unknown tag, invalid UTF-8.
        assert_eq!(decode(&[0x01, 0x02]), Err(CodecError::TrailingBytes(1)));
        assert!(decode(&[0x82, 0x01]).is_err());
        assert!(decode(&[0xff]).is_err());
        assert_eq!(
            decode(&[0xd9, 0x01, 0x00, 0x01]),
            Err(CodecError::UnknownTag(256))
        );
        assert!(decode(&[0x62, 0xc3, 0x28]).is_err());
        // A typed array whose length is not a multiple of its element size.
        assert!(decode(&[0xd8, 0x46, 0x43, 1, 2, 3]).is_err());
    }
}
