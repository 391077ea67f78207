//! Fuzz target: a message from a peer (and, over TLS, its certificate's texts) through the
//! route scripts siprox ships and one that reads every pseudo-variable, select and
//! transformation, with the real script host (registrar, digest, hash tables). Must never
//! panic. Layout: `siprox_fuzz::script::script_message`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::script::script_message(data);
});
