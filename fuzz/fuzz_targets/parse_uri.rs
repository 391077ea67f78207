//! Fuzz target: `Uri::parse` (and `parse_hostport`) on arbitrary text, then every URI
//! accessor. Must never panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use siprox::sip::{parse_hostport, Uri};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = Uri::parse(s) {
        siprox_fuzz::touch_uri(&u);
    }
    let _ = parse_hostport(s);
});
