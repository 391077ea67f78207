//! siprox: the daemon binary. A thin entry point: everything it does lives in
//! `siprox_actors::cli` so that it can be tested; must never grow logic of its own.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    siprox_actors::cli::main()
}
