//! The CBOR decoder on arbitrary bytes: it must return a value or a `CodecError`, never panic,
//! recurse without bound, or allocate for lengths the input does not hold. What it accepts must
//! re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgport::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode(data) {
        let again = decode(&encode(&value)).expect("our own encoding decodes");
        // NaN is not equal to itself; compare the encodings instead.
        assert_eq!(encode(&again), encode(&value));
    }
});
