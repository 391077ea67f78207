//! State shared by every part of the runtime, and the vocabulary the parts exchange: the
//! live [`Snapshot`] behind one `ArcSwap`, the connection table, counters, admission, the
//! location store, systemd notifications (`notify`), and the message types a lower part
//! sends to a higher one. The leaf of the runtime: it imports no other part of it (only the
//! core and `error`). Everything here is lock-free or sharded; must never hold a lock or an arc-swap guard across an
//! `.await`.

mod admission;
mod domains;
pub mod location;
pub mod messages;
pub mod notify;
pub mod replica;
mod snapshot;
mod stats;
pub mod table;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use siprox::proxy::ConnId;

pub use admission::{Admission, Refused, Slot};
pub use domains::{ClientDomain, ServerDomain, TlsDomains, DEFAULT_DOMAIN};
pub use messages::{Reload, ReloadCause, ReloadOutcome, RpcRequest, StopListening, TlsStatus};
pub use siprox::script::ScriptSet;
pub use snapshot::{check_connections, ConnSettings, Credentials, Snapshot};
pub(crate) use stats::{inc, Stats};
pub use stats::{SipCounts, StatsSnapshot, TlsFailureCounts, TlsFailureLabel, METHOD_NAMES};
use table::ConnectionTable;

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A configured path: absolute as is, else relative to `base`. Pure (no file access): the
/// parts that read files (`reload::files`, `location`, dev certificates) resolve alike.
pub fn resolve(base: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The state every worker shares.
pub struct Shared {
    /// The live configuration: one `load()` per message or handshake.
    pub snapshot: ArcSwap<Snapshot>,
    /// Every open TCP/TLS connection, by id and by peer.
    pub table: ConnectionTable,
    pub(crate) stats: Stats,
    pub(crate) admission: Admission,
    next_id: AtomicU64,
    /// Set once shutdown begins: listeners stop, connections drain.
    pub(crate) shutting_down: AtomicBool,
    /// Listener actors, so that shutdown can stop them (written once at start).
    pub(crate) listeners: Mutex<Vec<actix::Recipient<StopListening>>>,
    /// The context every tls listener accepts with: its ClientHello callback picks the
    /// domain. Created once: it holds the session ticket keys, which must outlive reloads.
    pub(crate) dispatch: openssl::ssl::SslContext,
    /// The `DomainRegistry` (set once it starts): where `tls.reload` / `cfg.reload` go.
    pub(crate) reloader: std::sync::OnceLock<actix::Recipient<Reload>>,
    /// What the last reload did and what every domain serves (control plane only).
    pub(crate) tls_status: Mutex<TlsStatus>,
    /// The `Rpc` actor, for HTTP requests that a route script dispatches from a SIP
    /// listener (`dispatch_rpc()`); set once at start.
    pub(crate) rpc: std::sync::OnceLock<actix::Recipient<RpcRequest>>,
    /// The registrar's store and the digest authenticator (set once at start).
    pub location: std::sync::OnceLock<Arc<location::Location>>,
    /// Each worker's channel for responses to its transactions that another worker read
    /// (indexed by worker; filled as workers start). Read without a lock: a worker never
    /// waits on a lock all workers share.
    pub(crate) tm_peers: ArcSwap<Vec<Option<TmPeer>>>,
    /// Set once any worker has created a transaction (`t_relay()`), never cleared: until
    /// then a response skips the transaction layer with one read of a line no one writes,
    /// so the stateless path pays nothing for it.
    pub(crate) tm_used: AtomicBool,
    /// systemd's `$NOTIFY_SOCKET` (crate::notify), when the daemon runs under it; set once
    /// at start, before the control arbiter runs.
    pub(crate) notifier: std::sync::OnceLock<Arc<crate::state::notify::Notifier>>,
    /// The route scripts' `$sht` tables (`[htables]`), made at start.
    pub htables: siprox::script::htable::Htables,
}

/// Where a worker receives the responses to its transactions that another worker read.
pub(crate) type TmPeer =
    tokio::sync::mpsc::UnboundedSender<(siprox::sip::Message, siprox::proxy::Inbound)>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(snapshot: Snapshot, dispatch: openssl::ssl::SslContext) -> Shared {
        let htables = siprox::script::htable::Htables::new(
            snapshot
                .config
                .htables
                .iter()
                .map(|(n, t)| (n.as_str(), t.autoexpire.get().as_secs())),
        );
        Shared {
            htables,
            dispatch,
            reloader: std::sync::OnceLock::new(),
            location: std::sync::OnceLock::new(),
            rpc: std::sync::OnceLock::new(),
            tm_peers: ArcSwap::from_pointee(Vec::new()),
            tm_used: AtomicBool::new(false),
            tls_status: Mutex::new(TlsStatus::default()),
            snapshot: ArcSwap::from_pointee(snapshot),
            table: ConnectionTable::default(),
            stats: Stats::default(),
            admission: Admission::default(),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            notifier: std::sync::OnceLock::new(),
        }
    }

    /// Sends `state` to systemd when siprox runs under `Type=notify` (else nothing).
    pub(crate) fn notify(&self, state: &str) {
        if let Some(n) = self.notifier.get() {
            n.notify(state);
        }
    }

    /// The `STATUS=` line for systemd: open connections and registered contacts.
    pub(crate) fn status_line(&self) -> String {
        let registrations = self.location.get().map_or(0, |l| l.registrar_store().len());
        crate::state::notify::status_line(self.open_connections(), registrations)
    }

    /// The TLS domains and the last reload, as the `tls.list` / `tls.info` RPC shows them.
    pub fn tls_status(&self) -> TlsStatus {
        self.tls_status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Where to send [`Reload`] (the `DomainRegistry`); `None` before it started.
    pub fn reloader(&self) -> Option<actix::Recipient<Reload>> {
        self.reloader.get().cloned()
    }

    /// A fresh connection id (never reused within the process).
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_open: self.open_connections() as u64,
            accepted: g(&s.accepted),
            refused_total_limit: g(&s.refused_total_limit),
            refused_ip_limit: g(&s.refused_ip_limit),
            refused_fd_limit: g(&s.refused_fd_limit),
            memory_trims: g(&s.memory_trims),
            handshake_failures: g(&s.handshake_failures),
            connect_failures: g(&s.connect_failures),
            send_timeouts: g(&s.send_timeouts),
            write_queue_overflows: g(&s.write_queue_overflows),
            idle_timeouts: g(&s.idle_timeouts),
            message_timeouts: g(&s.message_timeouts),
            framing_errors: g(&s.framing_errors),
            messages_in: s.sip.messages_in(),
            udp_unparsable: g(&s.udp_unparsable),
            dropped: g(&s.dropped),
            responses_unmatched: g(&s.responses_unmatched),
            send_failures: g(&s.send_failures),
            dns_failures: g(&s.dns_failures),
            transactions: g(&s.transactions),
            transactions_refused: g(&s.transactions_refused),
            tls_failures: s.tls_failure_counts(),
        }
    }
}
