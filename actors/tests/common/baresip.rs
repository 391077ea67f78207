//! Helpers for the tests that drive Debian's `baresip` (tests/run.sh installs
//! baresip-core): its ports, its microphone, and waiting on its output.

use std::path::Path;
use std::time::{Duration, Instant};

/// A port for baresip's `sip_listen`: baresip takes its TLS port as that + 1, so two free
/// ones in a row, claimed for this test process ([`siprox_testkit::ports`]).
pub fn free_port() -> u16 {
    siprox_testkit::ports::free_run(std::net::Ipv4Addr::LOCALHOST.into(), 2)
}

/// 8 kHz mono 16-bit PCM, 10 s of silence: the phones' microphone.
pub fn silence_wav(path: &Path) {
    let data_len: u32 = 8000 * 2 * 10;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    w.resize(w.len() + data_len as usize, 0);
    std::fs::write(path, w).unwrap();
}

/// Polls `cond` every 50 ms until it holds or `within` has passed; whether it held.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
