//! siprox: the sans-IO core of the siprox SIP proxy. No sockets, no actix, no tokio, no threads:
//! everything here decides, nothing here waits.
//!
//! # Layout
//!
//! - [`sip`]: the SIP message model. A lazy, zero-copy parser over `bytes::Bytes` (one pass
//!   indexes the start line and header fields; values are parsed on access), typed header
//!   values, URIs, stream framing for TCP/TLS, limits, and the editor that builds forwarded
//!   messages from the untouched bytes.
//! - [`proxy`]: the stateless proxy rules of RFC 3261 §16: validation, local replies,
//!   loose routing, Record-Route, the stateless branch, response routing by Via.
//! - [`transaction`]: the transaction layer of RFC 3261 §17 (client and server, INVITE and
//!   non-INVITE, timers A-M, matching with the RFC 2543 fallback) in a table driven by
//!   events with the time passed in, and the forking proxy's response context (§16.7).
//! - [`tls`]: TLS domain model and matching; the per-connection certificate facts read by
//!   the `@tls.*` selects.
//! - [`script`]: the route-script language (SER/Kamailio style): lexer, parser and checker,
//!   the compiled immutable form, and the sans-IO interpreter whose effects leave through
//!   the `Host` trait; `script::host` is the proxy's `Host` (forward, replies, save/lookup,
//!   digest auth, dispatch_rpc as proxy actions, the runtime's state behind small traits)
//!   and `ScriptSet` picks the script a message runs (TLS domain, Request-URI, default).
//! - [`select`]: the select framework: `@a.b[2].c` paths resolved at compile time and
//!   evaluated against a message, its transport and its TLS facts.
//! - [`rpc`]: the management RPC, sans-IO: HTTP/1.1 framing, JSON-RPC 2.0 and XML-RPC codecs,
//!   the documented method registry and the client-certificate allow-list.
//! - [`config`]: `conf.d/` merging with figment from the files' contents, the typed
//!   configuration and its validation.
//! - [`registrar`]: `save`/`lookup` (RFC 3261 §10, Path, RFC 5626 flows), the
//!   `LocationStore` trait, the in-memory store and its snapshot format.
//! - [`auth`]: digest authentication (RFC 3261 §22, RFC 7616/8760: MD5 and SHA-256):
//!   challenges, credential checks, time-bound nonces with replay protection, the users file.
//!
//! The runtime that owns sockets, timers, files and the environment is the `siprox-actors`
//! crate in `actors/`: the core takes bytes (conf.d contents, TLS material) and never opens a
//! file or reads a variable. `clippy.toml` names what is disallowed; it is denied here, for
//! the library (the integration tests in `tests/` write real files).
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod auth;
pub mod config;
pub mod import;
pub mod proxy;
pub mod registrar;
pub mod rpc;
pub mod script;
pub mod select;
pub mod sip;
pub mod tls;
pub mod transaction;
