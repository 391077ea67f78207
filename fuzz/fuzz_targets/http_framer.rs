//! Fuzz target: `HttpFramer::next_request` fed the input in chunks (layout of
//! `stream_framer`); every framed request goes through its accessors and is served on the
//! management path and the SIP-listener path. Must never panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::rpc::http_stream(data);
});
