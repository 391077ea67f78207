//! Fuzz target: one UDP datagram through `Message::parse_datagram`, `validate`, every typed
//! accessor and the forwarding edits. Must never panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::datagram(data);
});
