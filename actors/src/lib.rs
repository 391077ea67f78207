//! siprox-actors: the runtime around the sans-IO core. Everything that waits lives here.
//!
//! # Layout
//!
//! - [`cli`]: command-line parsing of the `siprox` binary, `siprox check`, and the hand-off
//!   to the runtime (`cli::run`).
//! - [`runtime`]: [`Runtime::start`] binds every socket, builds the TLS contexts, and runs
//!   the actix `System`: one control arbiter (the `Control` actor: signals, graceful
//!   shutdown) and N worker arbiters. [`RuntimeHandle`] gives the bound addresses, counters
//!   and `shutdown()`.
//! - [`listener`]: the `Listener` actor, one per socket per worker (SO_REUSEPORT): TCP/TLS
//!   accept with admission limits, or UDP receive straight into the proxy core.
//! - [`connection`]: the `Connection` actor, one per TCP/TLS stream: handshake, framing,
//!   bounded write queue with `send_timeout`, idle timeout, graceful drain.
//! - [`table`]: the `ConnectionTable` (sharded concurrent map) through which any worker
//!   writes to any connection, and which opens outgoing connections on demand.
//! - [`worker`]: per-worker hot path: parsed message -> proxy core -> send / forward.
//! - [`dns`]: RFC 3263 resolution of next-hop names (NAPTR/SRV/A/AAAA), off the hot path.
//! - [`tls`]: the default server/client `SslContext`s and development certificates.
//! - [`shared`]: the `ArcSwap<Snapshot>`, admission limits and counters.
//! - [`logging`]: the `tracing` subscriber from `[log]`.
//! - `bin/siprox.rs`: the daemon; `bin/siproxctl.rs`: the management CLI.
//!
//! Unsafe code is forbidden here except in the one `ffi` module (OpenSSL calls the
//! `openssl` crate lacks), where every block carries a `// SAFETY:` comment.
#![forbid(unsafe_code)]

pub mod cli;
pub mod connection;
pub mod dns;
pub mod error;
pub mod listener;
pub mod logging;
pub mod runtime;
pub mod shared;
pub mod table;
pub mod tls;
pub mod worker;

pub use error::RuntimeError;
pub use runtime::{Runtime, RuntimeHandle, RuntimeOptions};
pub use shared::{Snapshot, StatsSnapshot};
