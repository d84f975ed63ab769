//! The browser gateway's side of a connection on arbitrary client frames: frame decoding, port
//! numbering, transfers, closes and limits. A typed protocol error (the connection ends) or
//! service, never a panic, and every frame written back to the client is a frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    msgport_bridge::__fuzz::gateway(data);
});
