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

/// Reads as JavaScript writes it: `-123n`.
impl fmt::Debug for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}n")
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.magnitude.is_empty() {
            return f.write_str("0");
        }
        // Repeated division by 10^19 of the big-endian magnitude.
        let mut digits = Vec::new();
        let mut n = self.magnitude.clone();
        const CHUNK: u64 = 10_000_000_000_000_000_000;
        while !n.is_empty() {
            let mut rem: u128 = 0;
            let mut quotient = Vec::with_capacity(n.len());
            for byte in &n {
                let cur = (rem << 8) | u128::from(*byte);
                let q = cur / u128::from(CHUNK);
                rem = cur % u128::from(CHUNK);
                if !quotient.is_empty() || q != 0 {
                    quotient.push(q as u8);
                }
            }
            digits.push(rem as u64);
            n = quotient;
        }
        if self.negative {
            f.write_str("-")?;
        }
        let mut chunks = digits.iter().rev();
        write!(f, "{}", chunks.next().expect("non-zero"))?;
        for chunk in chunks {
            write!(f, "{chunk:019}")?;
        }
        Ok(())
    }
}

/// The error of parsing a [`BigInt`] from decimal text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid decimal integer")]
pub struct ParseBigIntError;

impl FromStr for BigInt {
    type Err = ParseBigIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseBigIntError);
        }
        // magnitude = magnitude * 10 + digit, little-endian bytes while building.
        let mut le: Vec<u8> = Vec::new();
        for d in digits.bytes() {
            let mut carry = u32::from(d - b'0');
            for byte in le.iter_mut() {
                let cur = u32::from(*byte) * 10 + carry;
                *byte = cur as u8;
                carry = cur >> 8;
            }
            if carry > 0 {
                le.push(carry as u8);
            }
        }
        le.reverse();
        Ok(BigInt::from_sign_magnitude(negative, &le))
    }
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
}
