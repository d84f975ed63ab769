//! The `link` target's input, read by a thread waiting for answers (each pull follows a post
//! on the port) while another thread writes it: the pulling thread reads the socket itself,
//! asleep in `recvmsg`, the path a request waiting for its answer takes. Never a panic, an
//! abort, a hang, or a descriptor left behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgport::__fuzz::link_pulls(data);
});
