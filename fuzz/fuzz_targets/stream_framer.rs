//! Fuzz target: `StreamFramer` fed the input in chunks whose sizes come from the first bytes
//! of the input; every framed message goes through the accessors. Must never panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use siprox_fuzz::framed;

fuzz_target!(|data: &[u8]| {
    framed(data);
});
