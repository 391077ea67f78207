//! siproxctl: the management CLI. The management RPC arrives with its own issue; until then
//! this binary only says so, and exits non-zero.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("siproxctl: the management RPC is not implemented yet");
    std::process::ExitCode::from(2)
}
