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
//! - [`worker`]: per-worker hot path: parsed message -> route script or proxy core ->
//!   send / forward.
//! - [`location`]: the registrar's location store, digest authenticator and users file,
//!   with the expiry timer and the atomic snapshot file.
//! - [`scripts`]: compiled route scripts per snapshot, which one a message runs, and the
//!   script `Host` that turns effects into proxy actions.
//! - [`dns`]: RFC 3263 resolution of next-hop names (NAPTR/SRV/A/AAAA), off the hot path.
//! - [`tls`]: TLS domains at run time: the dispatch context whose ClientHello callback picks
//!   the server domain, outgoing client domains, per-connection `TlsFacts`, dev certificates.
//! - [`registry`]: the `DomainRegistry` actor: watches conf.d and certificate directories,
//!   rebuilds what changed off the worker threads, publishes the `Snapshot` (its one writer).
//! - [`ffi`]: the only `unsafe` code: OpenSSL calls the `openssl` crate lacks, the
//!   open-file limit and `malloc_trim`.
//! - [`fdlimit`]: the open-file limit raised at start for what the configuration needs,
//!   and the rate-limited WARN when accepts are refused at it.
//! - [`memory`]: returning freed heap memory to the OS after connection floods.
//! - [`rpc`]: the management plane: the `[management]` HTTPS listener (client certificate
//!   required, then the allow-list) and the `Rpc` actor on the control arbiter that runs
//!   the methods (`rpc_methods`, with the ADAPTERs to pending subsystems) and renders
//!   Prometheus `/metrics` (`rpc_metrics`). Protocols are the core's `siprox::rpc`.
//! - [`ctl`]: the pure parts of `siproxctl` (commands, settings file, rendering).
//! - [`shared`]: the `ArcSwap<Snapshot>`, admission limits and counters.
//! - [`logging`]: the `tracing` subscriber from `[log]`.
//! - `bin/siprox.rs`: the daemon; `bin/siproxctl.rs`: the management CLI.
//!
//! Unsafe code is forbidden here except in the one `ffi` module (OpenSSL calls the
//! `openssl` crate lacks), where every block carries a `// SAFETY:` comment.
// `deny`, not `forbid`: `forbid` cannot be lifted for the one `ffi` module.
#![deny(unsafe_code)]

pub mod cli;
pub mod connection;
pub mod ctl;
pub mod dns;
pub mod error;
pub mod fdlimit;
#[allow(unsafe_code)]
pub mod ffi;
pub mod listener;
pub mod location;
pub mod logging;
pub mod memory;
pub mod registry;
pub mod rpc;
mod rpc_methods;
mod rpc_metrics;
pub mod runtime;
pub mod scripts;
pub mod shared;
pub mod table;
pub mod tls;
pub mod worker;

pub use error::RuntimeError;
pub use runtime::{Runtime, RuntimeHandle, RuntimeOptions};
pub use shared::{Snapshot, StatsSnapshot};
