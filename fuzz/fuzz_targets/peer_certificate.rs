//! Fuzz target: a peer's certificate (DER or PEM) read into its TLS facts as at a handshake,
//! then read by a route script through `@tls` selects and `$tls_*` variables. Must never
//! panic. Layout: `siprox_fuzz::script::peer_certificate`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::script::peer_certificate(data);
});
