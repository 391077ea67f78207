//! The messages a lower part of the runtime sends to a higher one. Their types live here,
//! in the leaf, so that the sender never imports its receiver: the connection table asks a
//! `Connection` ([`ConnCommand`]), the worker's HTTP path asks the `Rpc` actor
//! ([`RpcRequest`]), management asks the `DomainRegistry` ([`Reload`]) and the runtime's
//! `Control` ([`Shutdown`]), and shutdown stops each `Listener` ([`StopListening`]).
//! Plain data: must never carry a reference to an actor's state.

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use actix::Message as ActixMessage;
use bytes::Bytes;
use siprox::rpc::{HttpRequest, HttpResponse};

/// Why a connection closed (logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    ReadError(io::ErrorKind),
    WriteError(io::ErrorKind),
    SendTimeout,
    WriteQueueFull,
    IdleTimeout,
    /// The source IP buffers more than `max_partial_bytes_per_ip` of unfinished messages.
    PartialLimit,
    /// A message took longer than `message_timeout` from its first byte to its last.
    MessageTimeout,
    FramingError,
    Shutdown,
    HandshakeFailed,
    ConnectFailed,
}

/// What a connection's handle asks of its `Connection` actor. One enum, so that a handle
/// holds one mailbox (`Recipient`) and the table need not know the actor's type.
#[derive(Debug, ActixMessage)]
#[rtype(result = "()")]
pub enum ConnCommand {
    /// Write these bytes (the handle did the queue accounting).
    Enqueue(Bytes),
    /// Close now, discarding the queue.
    Close(CloseReason),
    /// From the worker's idle sweep: close if still idle (activity may have arrived since
    /// the sweep looked).
    IdleCheck,
    /// Graceful shutdown: stop reading, write what is queued, close.
    Drain,
}

/// Stop listening (graceful shutdown): the socket closes, the `Listener` stops.
#[derive(Debug, ActixMessage)]
#[rtype(result = "()")]
pub struct StopListening;

/// Begin a graceful shutdown (the runtime's `Control` actor: `core.kill`, SIGTERM).
#[derive(Debug, ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown;

/// One framed HTTP request for the `Rpc` actor; `allowed` is the allow-list verdict on the
/// client certificate (or the route script's `dispatch_rpc()`).
#[derive(Debug, ActixMessage)]
#[rtype(result = "HttpResponse")]
pub struct RpcRequest {
    pub req: Box<HttpRequest>,
    pub allowed: bool,
    /// Peer address and TLS subject (or `anonymous`), for the log line of every call.
    pub caller: String,
    /// From a SIP listener: the one method the route script decided on. Any other call in
    /// the request is refused, whatever the decoders make of it.
    pub only: Option<String>,
}

/// What asked for a reload (logs and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The runtime started (the first snapshot).
    Start,
    /// A file event in a watched directory.
    Files,
    /// SIGHUP.
    Signal,
    /// The periodic hash check (also run once as soon as the file watcher watches, for
    /// what changed between the start's reads and then).
    Periodic,
    /// `tls.reload` / `cfg.reload` or `RuntimeHandle::reload`.
    Request,
    /// `cfg.reload` with `dry_run`: read and build everything, publish nothing, answer
    /// [`ReloadOutcome::Preview`]. Never coalesced with a real reload.
    DryRun,
}

/// Reload now (coalesced with any reload already waiting). Replies once the reload that
/// covers this request is done.
#[derive(Debug, Clone, Copy, ActixMessage)]
#[rtype(result = "ReloadOutcome")]
pub struct Reload {
    pub cause: ReloadCause,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is live. `changed` names the domains added, removed or rebuilt
    /// (empty when only other settings changed). `refused` is what it could not apply, one
    /// line each: a tenant that keeps its last good configuration (or, never loaded, stays
    /// out), or the global part of a conf.d that does not load.
    Published {
        changed: Vec<String>,
        refused: Vec<String>,
    },
    /// Everything was identical: nothing published.
    Unchanged,
    /// The candidate was refused; the running snapshot stays. One line per problem, each
    /// naming the domain, the file and the reason.
    Failed { errors: Vec<String> },
    /// A dry run ([`ReloadCause::DryRun`]): what a reload would do now.
    Preview(Box<ReloadPreview>),
}

/// What a reload would do, without doing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPreview {
    /// Every key of conf.d whose value differs from the one in force, with its class
    /// (restart-only ones would stay as they are).
    pub changes: Vec<siprox::config::Change>,
    /// TLS domains that would be added, removed or rebuilt.
    pub domains: Vec<String>,
    /// What would not be applied while the rest would (a tenant kept on its last good
    /// configuration, the global part of conf.d).
    pub refused: Vec<String>,
    /// What would refuse the whole reload.
    pub errors: Vec<String>,
}

impl ReloadPreview {
    /// The answer of a dry run (`cfg.reload` with `dry_run`, locally or cluster-wide).
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let p = self;
        let change_json = |c: &siprox::config::Change| json!({"key": c.key, "configured": c.new, "in_force": c.old, "class": c.class.as_str()});
        let (restart, live): (Vec<_>, Vec<_>) = p
            .changes
            .iter()
            .partition(|c| c.class == siprox::config::Class::RestartOnly);
        json!({
            "result": "dry_run",
            "would": if !p.errors.is_empty() {
                "refuse"
            } else if p.domains.is_empty() && live.is_empty() && p.refused.is_empty() {
                "change nothing"
            } else {
                "publish"
            },
            "live": live.iter().map(|c| change_json(c)).collect::<Vec<_>>(),
            "restart_only": restart.iter().map(|c| change_json(c)).collect::<Vec<_>>(),
            "domains": p.domains,
            "refused": p.refused,
            "errors": p.errors,
        })
    }
}

/// One reload, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub cause: ReloadCause,
    pub outcome: ReloadOutcome,
}

/// One TLS domain as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    pub name: String,
    /// `server` or `client`.
    pub side: &'static str,
    /// SNI names (server) or server names (client) it matches.
    pub names: Vec<String>,
    /// Listeners (server) or destinations (client) it is limited to.
    pub addresses: Vec<String>,
    /// Subject of its certificate (one line), empty for a client without one.
    pub subject: String,
    /// subjectAltNames (DNS, then IP).
    pub sans: Vec<String>,
    /// `notAfter`, as `Jun 17 15:03:20 2025 GMT`, and as Unix seconds (for metrics).
    pub not_after: String,
    pub not_after_unix: i64,
    /// The files it was built from.
    pub sources: Vec<PathBuf>,
    /// Digest of its inputs (changes when any of them does).
    pub digest: u64,
    /// Why its last reload failed (it serves its last good build, or is left out), until a
    /// reload builds it again.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// When its running build was loaded.
    pub last_good_at: Option<SystemTime>,
    /// Reloads (and the start) that could not build it.
    pub failures: u64,
}

/// One route script file, for the status: its error until a reload compiles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptHealth {
    pub path: PathBuf,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// The TLS domains and reload history, for the RPC (`tls.list`, `tls.info`) and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStatus {
    pub domains: Vec<DomainStatus>,
    /// Reloads run (coalesced requests count once).
    pub reloads: u64,
    /// Reloads that published a new snapshot.
    pub published: u64,
    /// Reloads refused (the running snapshot stayed).
    pub failures: u64,
    pub last_reload: Option<ReloadRecord>,
    /// The last refused reload (kept after later successes, with its time).
    pub last_error: Option<ReloadRecord>,
    /// Restart-only keys whose configured value differs from the one in force.
    pub restart_pending: Vec<siprox::config::Change>,
    /// Route script files with an error, by path (cleared once they compile).
    pub scripts: Vec<ScriptHealth>,
}
