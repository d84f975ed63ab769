//! [`BigInt`]: an arbitrary-precision integer, stored as sign and big-endian magnitude (the
//! shape of CBOR's bignum tags 2 and 3). Arithmetic is not this crate's business; conversions are.

use std::fmt;
use std::str::FromStr;

/// An arbitrary-precision integer (JavaScript `BigInt`).
///
/// ```
/// use msgport::BigInt;
///
/// let big: BigInt = "-123456789012345678901234567890".parse().unwrap();
/// assert_eq!(big.to_string(), "-123456789012345678901234567890");
/// assert_eq!(BigInt::from(-5i64).to_i128(), Some(-5));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct BigInt {
    negative: bool,
    /// Big-endian, without leading zero bytes; empty for zero.
    magnitude: Vec<u8>,
}

impl BigInt {
    /// Builds a BigInt from a sign and a big-endian magnitude (leading zeros are allowed).
    /// Negative zero is zero.
    pub fn from_sign_magnitude(negative: bool, magnitude_be: &[u8]) -> Self {
        let start = magnitude_be
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude_be.len());
        let magnitude = magnitude_be[start..].to_vec();
        BigInt {
            negative: negative && !magnitude.is_empty(),
            magnitude,
        }
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The absolute value, big-endian, without leading zeros (empty for zero).
    pub fn magnitude(&self) -> &[u8] {
        &self.magnitude
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        let m = self.magnitude_u128()?;
        if self.negative {
            if m <= i128::MAX as u128 + 1 {
                Some((m as i128).wrapping_neg())
            } else {
                None
            }
        } else {
            i128::try_from(m).ok()
        }
    }

    /// The value as a `u128`, if it fits.
    pub fn to_u128(&self) -> Option<u128> {
        if self.negative {
            return None;
        }
        self.magnitude_u128()
    }

    fn magnitude_u128(&self) -> Option<u128> {
        if self.magnitude.len() > 16 {
            return None;
        }
        Some(
            self.magnitude
                .iter()
                .fold(0u128, |acc, b| (acc << 8) | u128::from(*b)),
        )
    }
}

macro_rules! from_signed {
    ($($t:ty),*) => {$(
        impl From<$t> for BigInt {
            fn from(n: $t) -> Self {
                let wide = n as i128;
                BigInt::from_sign_magnitude(wide < 0, &wide.unsigned_abs().to_be_bytes())
            }
        }
    )*};
}
macro_rules! from_unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for BigInt {
            fn from(n: $t) -> Self {
                BigInt::from_sign_magnitude(false, &(n as u128).to_be_bytes())
            }
        }
    )*};
}
from_signed!(i8, i16, i32, i64, i128, isize);
from_unsigned!(u8, u16, u32, u64, u128, usize);

/// The largest magnitude (in bytes) written in decimal: 2⁸¹⁹² − 1, 2,467 digits. Converting
/// between binary and decimal takes time quadratic in the length (a 64 KiB magnitude took 1.6 s,
/// a 16 MiB one would take days), and a peer decides how long the bigints it sends are; larger
/// values are written in hexadecimal, which takes linear time (the defence CPython took against
/// the same attack, with its limit of 4,300 digits).
const MAX_DECIMAL_BYTES: usize = 1024;
/// The most decimal digits (leading zeros aside) that [`BigInt::from_str`] reads: every value of
/// at most [`MAX_DECIMAL_BYTES`] bytes fits.
const MAX_DECIMAL_DIGITS: usize = 2467;

/// Reads as JavaScript writes it: `-123n` (`0x…n` past 2,467 digits, see
/// [`Display`](#impl-Display-for-BigInt)).
impl fmt::Debug for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}n")
    }
}

/// Decimal (`-123`) up to 2⁸¹⁹² (2,467 digits); hexadecimal beyond (`-0x1f…`, as JavaScript's
/// `BigInt()` also reads it), so that formatting takes time linear in the length whatever a
/// peer sent. [`FromStr`] reads both forms.
impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        if self.magnitude.len() > MAX_DECIMAL_BYTES {
            return write_hex(f, &self.magnitude);
        }
        let mut chunks = decimal_chunks(&self.magnitude).into_iter().rev();
        let Some(top) = chunks.next() else {
            return f.write_str("0");
        };
        write!(f, "{top}")?;
        chunks.try_for_each(|chunk| write!(f, "{chunk:09}"))
    }
}

/// `0x` and the hexadecimal digits of a big-endian magnitude without leading zeros.
fn write_hex(f: &mut fmt::Formatter<'_>, magnitude: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    f.write_str("0x")?;
    let mut text = [0u8; 1024];
    for (i, bytes) in magnitude.chunks(text.len() / 2).enumerate() {
        for (pair, b) in text.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        let mut written = &text[..2 * bytes.len()];
        if i == 0 && magnitude[0] < 0x10 {
            written = &written[1..];
        }
        f.write_str(std::str::from_utf8(written).expect("hexadecimal digits are ASCII"))?;
    }
    Ok(())
}

/// One billion: decimal conversions work in base-10⁹ chunks over 32-bit limbs, so that every
/// step divides or multiplies a `u64` by a constant (a multiplication, no division instruction).
const BILLION: u32 = 1_000_000_000;

/// The base-10⁹ digits of a big-endian magnitude, least significant first (none for zero).
fn decimal_chunks(magnitude: &[u8]) -> Vec<u32> {
    // 32-bit limbs, most significant first.
    let head = magnitude.len() % 4;
    let mut limbs: Vec<u32> = Vec::with_capacity(magnitude.len() / 4 + 1);
    if head > 0 {
        limbs.push(
            magnitude[..head]
                .iter()
                .fold(0, |acc, b| (acc << 8) | u32::from(*b)),
        );
    }
    limbs.extend(
        magnitude[head..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
    );
    let mut chunks = Vec::with_capacity(limbs.len() * 32 / 29 + 1);
    let mut start = limbs.iter().position(|&l| l != 0).unwrap_or(limbs.len());
    while start < limbs.len() {
        let mut rem: u64 = 0;
        for limb in &mut limbs[start..] {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / u64::from(BILLION)) as u32;
            rem = cur % u64::from(BILLION);
        }
        chunks.push(rem as u32);
        while start < limbs.len() && limbs[start] == 0 {
            start += 1;
        }
    }
    chunks
}

/// The error of parsing a [`BigInt`] from text: not an optionally signed run of decimal digits
/// (at most 2,467 of them, leading zeros aside) or of hexadecimal digits after `0x`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid integer: expected decimal digits (at most 2,467) or 0x and hexadecimal digits")]
pub struct ParseBigIntError;

impl FromStr for BigInt {
    type Err = ParseBigIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let hex = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"));
        let magnitude = match hex {
            Some(hex) => parse_hex(hex)?,
            None => parse_decimal(digits)?,
        };
        Ok(BigInt::from_sign_magnitude(negative, &magnitude))
    }
}

/// A big-endian magnitude from hexadecimal digits (any number of them: linear time).
fn parse_hex(digits: &str) -> Result<Vec<u8>, ParseBigIntError> {
    let nibble = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = digits.as_bytes();
    if bytes.is_empty() {
        return Err(ParseBigIntError);
    }
    let mut magnitude = Vec::with_capacity(bytes.len().div_ceil(2));
    let head = bytes.len() % 2;
    if head == 1 {
        magnitude.push(nibble(bytes[0]).ok_or(ParseBigIntError)?);
    }
    for pair in bytes[head..].chunks_exact(2) {
        let (hi, lo) = (nibble(pair[0]), nibble(pair[1]));
        magnitude.push((hi.ok_or(ParseBigIntError)? << 4) | lo.ok_or(ParseBigIntError)?);
    }
    Ok(magnitude)
}

/// A big-endian magnitude from decimal digits, at most [`MAX_DECIMAL_DIGITS`] of them once
/// leading zeros are dropped (the conversion takes time quadratic in their number).
fn parse_decimal(digits: &str) -> Result<Vec<u8>, ParseBigIntError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseBigIntError);
    }
    let significant = digits.trim_start_matches('0').as_bytes();
    if significant.len() > MAX_DECIMAL_DIGITS {
        return Err(ParseBigIntError);
    }
    // 32-bit limbs, least significant first: limbs = limbs * 10^k + chunk, 9 digits at a time.
    let mut limbs: Vec<u32> = Vec::with_capacity(significant.len() / 9 + 1);
    let head = significant.len() % 9;
    let chunks = std::iter::once(&significant[..head])
        .filter(|c| !c.is_empty())
        .chain(significant[head..].chunks_exact(9));
    for chunk in chunks {
        let value = chunk
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let scale = 10u64.pow(chunk.len() as u32);
        let mut carry = u64::from(value);
        for limb in &mut limbs {
            let cur = u64::from(*limb) * scale + carry;
            *limb = cur as u32;
            carry = cur >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    Ok(limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trips_at_the_edges() {
        for n in [
            0i128,
            1,
            -1,
            9,
            10,
            i64::MAX as i128,
            i64::MIN as i128,
            i128::MAX,
            i128::MIN,
        ] {
            let b = BigInt::from(n);
            assert_eq!(b.to_string(), n.to_string());
            assert_eq!(b.to_string().parse::<BigInt>().unwrap(), b);
            assert_eq!(b.to_i128(), Some(n));
        }
        assert_eq!(BigInt::from(u128::MAX).to_string(), u128::MAX.to_string());
        assert_eq!(BigInt::from(u128::MAX).to_i128(), None);
        let huge = "-340282366920938463463374607431768211456000";
        assert_eq!(huge.parse::<BigInt>().unwrap().to_string(), huge);
        assert!("".parse::<BigInt>().is_err());
        assert!("12a".parse::<BigInt>().is_err());
        assert_eq!("-0".parse::<BigInt>().unwrap(), BigInt::default());
    }

    #[test]
    fn decimal_agrees_with_the_standard_library() {
        assert_eq!(
            BigInt::from_sign_magnitude(
                false,
                &[
                    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0
                ]
            )
            .to_string(),
            "115792089237316195423570985008687907853269984665640564039457584007913129639936",
            "2^256"
        );
        proptest::proptest!(|(n: i128, shift in 0u32..128)| {
            let n = n >> shift;
            let b = BigInt::from(n);
            proptest::prop_assert_eq!(b.to_string(), n.to_string());
            proptest::prop_assert_eq!(n.to_string().parse::<BigInt>().unwrap(), b);
        });
    }

    #[test]
    fn values_past_the_decimal_limit_are_written_in_hexadecimal() {
        // The largest decimal: 2^8192 - 1, 2,467 digits.
        let largest = BigInt::from_sign_magnitude(true, &[0xff; MAX_DECIMAL_BYTES]);
        let text = largest.to_string();
        assert_eq!(text.len(), 1 + MAX_DECIMAL_DIGITS);
        assert!(text.starts_with("-1090"), "{}", &text[..8]);
        assert_eq!(text.parse::<BigInt>().unwrap(), largest);
        // One byte more: hexadecimal, without leading zeros, read back.
        let mut magnitude = vec![0x0a; MAX_DECIMAL_BYTES + 1];
        magnitude[MAX_DECIMAL_BYTES] = 0xb7;
        let past = BigInt::from_sign_magnitude(false, &magnitude);
        let text = past.to_string();
        assert_eq!(text.len(), 2 + 2 * magnitude.len() - 1);
        assert!(
            text.starts_with("0xa0a0a") && text.ends_with("0ab7"),
            "{text:.12}"
        );
        assert_eq!(format!("{past:?}").len(), text.len() + 1);
        for form in [text.clone(), text.replacen("0x", "0X", 1).to_uppercase()] {
            assert_eq!(form.parse::<BigInt>().unwrap(), past);
        }
        assert_eq!("-0x1f".parse::<BigInt>().unwrap(), BigInt::from(-31));
        assert_eq!("0x00ff".parse::<BigInt>().unwrap(), BigInt::from(255));
        for bad in ["0x", "-0x", "0xfg", "0x-1", "0x 1", "1_000"] {
            assert!(bad.parse::<BigInt>().is_err(), "{bad}");
        }
    }

    /// Converting to and from decimal takes time quadratic in the length, and a peer picks the
    /// length: a 16 MiB bigint took days to print. Now both take linear time (the bound is
    /// only a guard against a hang, far above what either takes).
    #[test]
    fn formatting_and_parsing_take_linear_time_whatever_the_length() {
        let huge = BigInt::from_sign_magnitude(true, &vec![0x5c; 16 << 20]);
        let started = std::time::Instant::now();
        let text = huge.to_string();
        assert_eq!(text.parse::<BigInt>().unwrap(), huge);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        // Decimal text is read up to 2,467 digits, leading zeros aside.
        let nines = "9".repeat(MAX_DECIMAL_DIGITS);
        assert!(nines.parse::<BigInt>().is_ok());
        assert!(format!("9{nines}").parse::<BigInt>().is_err());
        assert!(format!("000{nines}").parse::<BigInt>().is_ok());
    }
}
