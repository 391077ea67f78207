//! Fuzz target: any text as a route script; when it compiles, it runs on fixed messages
//! through the real script host. Must never panic nor hang (the step limit bounds a run).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::script::script_text(data);
});
