//! The link's frame decoder on arbitrary bytes (frames, message bodies, port records): a typed
//! error or a message, never a panic, an unbounded recursion or an allocation past the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgport::__fuzz::decode_frames(data);
});
