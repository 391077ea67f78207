//! Fuzz target: the configuration pipeline (load, merge, validate, print, reload's change
//! classification) on any conf.d contents. Must never panic. Layout:
//! `siprox_fuzz::config::config_files`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    siprox_fuzz::config::config_files(data);
});
