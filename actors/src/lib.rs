//! siprox-actors: the runtime around the sans-IO core. Everything that waits lives here.
//!
//! # Layout
//!
//! The folders are the parts of the runtime, top to bottom; a part uses the parts below it
//! and never one above it (`tests/layout.rs` holds this). Where a lower part must tell a
//! higher one something, it sends a message whose type lives in `state::messages`, or calls
//! a trait the higher part implements (`worker::Connector`).
//!
//! - entry: [`runtime`] ([`Runtime::start`] binds every socket and runs the actix `System`:
//!   one control arbiter, with the `Control` actor for signals and graceful shutdown, and N
//!   worker arbiters; [`RuntimeHandle`]), [`cli`] (`siprox`, `siprox check`), [`logging`],
//!   `bin/siprox.rs`, `bin/siproxctl.rs`.
//! - [`mgmt`]: the management plane. `listener` (the `[management]` HTTPS listener), `rpc`
//!   (the `Rpc` actor), `methods`, `metrics` (Prometheus), `ctl` (the pure parts of
//!   `siproxctl`).
//! - [`reload`]: the control plane. `registry` (the `DomainRegistry` actor: TLS domains and
//!   the snapshot's one writer), `job` (one reload on a blocking thread: conf.d, TLS,
//!   users, script sources), `watch` (the directory watcher), `script` (the `Script` actor:
//!   compiles route scripts, caches them by digest, keeps each file's last error), `error`
//!   (`ReloadError`: why a candidate is refused, naming its file, key or line), `files`
//!   (the runtime's reads for the core: conf.d listed and read, `SIPROX_*` variables, TLS
//!   material read into bytes, the flow-token key file; also used by `cli` and the start,
//!   which sit above it).
//! - [`cluster`]: the `Cluster` actor (control arbiter): this node's registrations written
//!   behind to Redis, the change stream tailed into the replica (`state::replica`), node
//!   heartbeats (`redis`: the connections, `wire`: keys and values); `auth` (digest nonce
//!   counts shared through a stream) and `tickets` (the TLS session-ticket key ring kept
//!   from Redis and rotated). Feeds `state` and the ring only.
//! - [`transport`]: sockets. `listener` (the `Listener` actor: accept loops, UDP receive;
//!   out of descriptors it refuses with a reserve descriptor), `connection/` (the
//!   `Connection` actor: `actor`, `handshake`, `framing`, `http`), `fdlimit` (the open-file
//!   limit raised at start for what the configuration needs).
//! - [`worker`]: the hot path of one worker arbiter: message -> core -> actions (`mod`);
//!   `script` lends the core's script host (`siprox::script::host`, which maps a script's
//!   effects to proxy actions, and `ScriptSet::for_request`, which picks the script) the
//!   runtime's state through the core's traits (location store, authenticator, connection
//!   table as `Liveness`, `tracing` as `ScriptLog`); next-hop resolution (`dns`); `memory`
//!   (freed heap returned to the OS after a flood of connections, from the idle sweep);
//!   `tm`: the worker's transaction table for `t_relay()` (`siprox::transaction`), its one
//!   timer, failure_route, CANCEL, and the handoff of responses another worker read.
//! - [`tls`]: `domains` (building from material it is given), `dispatch` (the ClientHello
//!   callback, client domains), `sessions` (the client session store an outgoing connection
//!   resumes from), `ticket_keys` (a cluster's shared session-ticket keys, read by the
//!   ticket callback), `facts`, `failure` (`HandshakeFailure`: why a handshake failed, from
//!   OpenSSL's codes), `devcerts`, and `ffi`, the only `unsafe` code (also the open-file
//!   limit and `malloc_trim`). Knows no socket, no reload.
//! - [`state`]: the leaf. `snapshot` (the [`Snapshot`] behind one `ArcSwap`), `table` (the
//!   connection table and its handles), `stats` (with the WARN rate limiter), `admission`, `location` (the registrar's
//!   store), `replica` (the other nodes' bindings, the cluster's write queue), `domains` (what a snapshot holds, with the core's `ScriptSet`), `messages`.
//! - [`error`]: the runtime's error type, used by every part.
//!
//! The four actors of the design, and who talks to whom: a `Listener` starts a
//! `Connection` per stream; a `Connection` hands each message to its worker, which runs the
//! route script and writes through the connection table; the `DomainRegistry` rebuilds a
//! candidate snapshot off the arbiter, asks the `Script` actor to compile the scripts that
//! changed (`CompileScripts`), and publishes TLS domains, scripts and users in one
//! `store()`.
//!
//! # Why scripts run on the workers, not in the `Script` actor
//!
//! The `Script` actor owns compiling, caching and status; it does not run scripts. A
//! compiled script is immutable and shared (`Arc`), so each worker runs the one in the
//! snapshot it loaded, inline, on the thread that read the message: no mailbox hop, no
//! allocation and no cross-thread wake-up per SIP message, and a slow script run on one
//! worker never queues messages of another behind it. Sending every message to one actor
//! would serialise all workers on the control arbiter and make the hot path wait on the
//! control plane, which the design forbids.
//!
//! Unsafe code is forbidden here except in the one `ffi` module (OpenSSL calls the
//! `openssl` crate lacks), where every block carries a `// SAFETY:` comment.
// `deny`, not `forbid`: `forbid` cannot be lifted for the one `ffi` module.
#![deny(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod error;
pub mod logging;
pub mod mgmt;
pub mod reload;
pub mod runtime;
pub mod state;
pub mod tls;
pub mod transport;
pub mod worker;

// The crate's API at its root; everything else is named by its part (`reload::files`,
// `tls::generate_dev_certs`, `state::messages::ReloadOutcome`...).
pub use error::RuntimeError;
pub use runtime::{Runtime, RuntimeHandle, RuntimeOptions};
pub use state::{Snapshot, StatsSnapshot};
