//! siprox-actors: the runtime around the sans-IO core. Everything that waits lives here.
//!
//! # Layout
//!
//! - `cli`: command-line parsing and the `check` command shared by the `siprox` binary.
//! - `bin/siprox.rs`: the daemon; `bin/siproxctl.rs`: the management CLI.
//!
//! Unsafe code is forbidden here except in the one `ffi` module (OpenSSL calls the
//! `openssl` crate lacks), where every block carries a `// SAFETY:` comment.
#![forbid(unsafe_code)]
