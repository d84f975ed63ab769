//! The code a link runs on what a peer writes: a fuzzer-chosen sequence of writes of any size,
//! each carrying any number of descriptors (`/dev/null`, real sockets, or shared-memory regions
//! with fuzzer-made bodies, sealed or not), read by the link's
//! own read path (framing, descriptor accounting, decoding, importing ports). Never a panic, an
//! abort, a hang, or a descriptor left behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgport::__fuzz::link_reads(data);
});
