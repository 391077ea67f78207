//! siprox-actors: the runtime around the sans-IO core. Everything that waits lives here.
//!
//! # Layout
//!
//! - [`cli`]: command-line parsing of the `siprox` binary, `siprox check`, and the hand-off
//!   to the runtime (`cli::run`).
//! - `bin/siprox.rs`: the daemon; `bin/siproxctl.rs`: the management CLI.
//!
//! Unsafe code is forbidden here except in the one `ffi` module (OpenSSL calls the
//! `openssl` crate lacks), where every block carries a `// SAFETY:` comment.
#![forbid(unsafe_code)]

pub mod cli;
