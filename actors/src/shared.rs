//! State shared by every worker: the live configuration [`Snapshot`] behind one `ArcSwap`,
//! the connection table, admission limits and counters. Everything here is lock-free or
//! sharded; must never hold a lock or an arc-swap guard across an `.await`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use siprox::config::Config;
use siprox::proxy::{ConnId, Proxy};
use siprox::sip::Limits;

use crate::registry::{Reload, TlsStatus};
use crate::table::ConnectionTable;
use crate::tls::TlsDomains;

/// Connection settings taken from the snapshot when a connection starts; a reload changes
/// what the next connection gets, never a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    pub max_partial_bytes_per_ip: usize,
    pub send_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_write_queue: usize,
}

impl ConnSettings {
    /// From `[connections]`.
    pub fn from_config(c: &Config) -> ConnSettings {
        let k = &c.connections;
        ConnSettings {
            handshake_timeout: k.handshake_timeout.get(),
            idle_timeout: k.idle_timeout.get(),
            message_timeout: k.message_timeout.get(),
            max_partial_bytes_per_ip: k.max_partial_bytes_per_ip,
            send_timeout: k.send_timeout.get(),
            connect_timeout: k.connect_timeout.get(),
            max_write_queue: k.max_write_queue,
        }
    }
}

/// Everything the hot path reads, published whole with one `store()`: a reader sees either
/// the old or the new one, never half of each.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// The stateless proxy core, built for the actual bound addresses.
    pub proxy: Proxy,
    /// Compiled route scripts (default and per domain).
    pub scripts: Arc<crate::scripts::ScriptSet>,
    /// Every TLS domain (server and client sides, defaults from `[tls]`) and the tables
    /// that pick them: read by each handshake, replaced whole by the `DomainRegistry`.
    pub tls: Arc<TlsDomains>,
    /// Parser and framer limits.
    pub limits: Limits,
    /// Timeouts and write-queue bound of new connections.
    pub conn: ConnSettings,
}

/// Counters for tests, logs and (later) metrics. Relaxed atomics: each is independent.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_total_limit: AtomicU64,
    pub(crate) refused_ip_limit: AtomicU64,
    /// Accepts closed at once because the process was out of file descriptors.
    pub(crate) refused_fd_limit: AtomicU64,
    /// The one WARN per interval about `refused_fd_limit`, shared by every listener.
    pub(crate) fd_limit_warn: crate::fdlimit::LogLimiter,
    /// Times the heap was trimmed after connections went (see `memory`).
    pub(crate) memory_trims: AtomicU64,
    /// Most incoming connections open since the last heap trim (see `memory`).
    pub(crate) conn_high_water: AtomicUsize,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) send_timeouts: AtomicU64,
    pub(crate) write_queue_overflows: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    /// Streams closed because a message took longer than `message_timeout` to arrive, or
    /// their source IP buffered more than `max_partial_bytes_per_ip` of unfinished ones.
    pub(crate) message_timeouts: AtomicU64,
    pub(crate) framing_errors: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) udp_unparsable: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) send_failures: AtomicU64,
    pub(crate) dns_failures: AtomicU64,
    pub(crate) script_errors: AtomicU64,
    /// TLS handshakes completed (both directions).
    pub(crate) tls_handshakes: AtomicU64,
    /// Failed TLS handshakes by reason: timeout, certificate, unknown SNI, other.
    pub(crate) tls_failures: [AtomicU64; 4],
    /// Requests by method and responses sent by status code (for `/metrics`).
    pub(crate) sip: SipCounts,
}

/// Method names in `siprox::sip::Method` order, for metric labels.
pub const METHOD_NAMES: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
    "other",
];

/// Requests received by method, responses sent by code: fixed arrays of relaxed atomics,
/// so counting is one uncontended add on the hot path, no map, no lock.
#[derive(Debug)]
pub struct SipCounts {
    pub(crate) requests: [AtomicU64; 15],
    /// Index: status code - 100 (100..=699).
    pub(crate) replies: Box<[AtomicU64]>,
}

impl Default for SipCounts {
    fn default() -> Self {
        SipCounts {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            replies: (0..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl SipCounts {
    pub(crate) fn request(&self, m: siprox::sip::Method) {
        if let Some(c) = self.requests.get(m as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a response about to be sent, read from its status line.
    pub(crate) fn reply_bytes(&self, bytes: &[u8]) {
        let Some(code) = bytes.strip_prefix(b"SIP/2.0 ").and_then(|r| r.get(..3)) else {
            return;
        };
        if let Ok(code) = std::str::from_utf8(code).unwrap_or("").parse::<usize>() {
            if let Some(c) = code.checked_sub(100).and_then(|i| self.replies.get(i)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (method, count) pairs with a non-zero count.
    pub fn requests(&self) -> Vec<(&'static str, u64)> {
        METHOD_NAMES
            .iter()
            .zip(self.requests.iter())
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// (code, count) pairs with a non-zero count.
    pub fn replies(&self) -> Vec<(u16, u64)> {
        self.replies
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u16 + 100, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// TCP/TLS connections open now (incoming and outgoing, handshaking included).
    pub connections_open: u64,
    /// Connections accepted (before limits).
    pub accepted: u64,
    /// Accepts refused by `max_connections`.
    pub refused_total_limit: u64,
    /// Accepts refused by `max_connections_per_ip`.
    pub refused_ip_limit: u64,
    /// Accepts closed at once at the open-file limit (EMFILE/ENFILE).
    pub refused_fd_limit: u64,
    /// Heap trims after the number of connections fell (`[runtime] trim_memory_after`).
    pub memory_trims: u64,
    /// TLS handshakes that failed or timed out (both directions).
    pub handshake_failures: u64,
    /// Outgoing connects that failed or timed out.
    pub connect_failures: u64,
    /// Connections closed because the peer did not drain its queue within `send_timeout`.
    pub send_timeouts: u64,
    /// Connections closed because their write queue exceeded `max_write_queue`.
    pub write_queue_overflows: u64,
    /// Connections closed by `idle_timeout`.
    pub idle_timeouts: u64,
    /// Streams closed by `message_timeout` (a message trickled in too slowly).
    pub message_timeouts: u64,
    /// Streams closed because they lost SIP framing.
    pub framing_errors: u64,
    /// SIP messages received (all transports).
    pub messages_in: u64,
    /// UDP datagrams that did not parse.
    pub udp_unparsable: u64,
    /// Messages the proxy core decided to drop.
    pub dropped: u64,
    /// Messages that could not be sent (no route, socket error, closed connection).
    pub send_failures: u64,
    /// Next hops DNS could not resolve.
    pub dns_failures: u64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Admission control of TCP/TLS connections: a total and a per-source-IP bound.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    /// Sharded: accepts on different workers rarely contend on one shard.
    per_ip: DashMap<IpAddr, usize>,
    /// Bytes of unfinished messages buffered per source IP (only streams holding some).
    partial: DashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.shared.admission;
        a.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            // remove_if under the shard lock: the count and the removal are one step.
            if let Some(mut n) = a.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
            }
            a.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }
}

impl Shared {
    /// A stream from `ip` now buffers `now` bytes of unfinished messages instead of
    /// `before`. `false` when that takes the IP over `limit` (0 = no bound): the caller
    /// closes the stream (and later releases what it holds with `now = 0`).
    pub(crate) fn hold_partial(&self, ip: IpAddr, before: usize, now: usize, limit: usize) -> bool {
        let p = &self.admission.partial;
        let mut entry = p.entry(ip).or_insert(0);
        *entry = entry.saturating_sub(before).saturating_add(now);
        let total = *entry;
        drop(entry);
        if total == 0 {
            p.remove_if(&ip, |_, n| *n == 0);
        }
        limit == 0 || total <= limit
    }

    /// Admits an incoming connection from `ip`, or says which limit refused it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let conf = self.snapshot.load();
        let (max, max_ip) = (
            conf.config.connections.max_connections,
            conf.config.connections.max_connections_per_ip,
        );
        drop(conf);
        let a = &self.admission;
        let before = a.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            a.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        self.stats
            .conn_high_water
            .fetch_max(before + 1, Ordering::Relaxed);
        let mut entry = a.per_ip.entry(ip).or_insert(0);
        if max_ip != 0 && *entry >= max_ip {
            drop(entry);
            a.per_ip.remove_if(&ip, |_, n| *n == 0);
            a.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerIp);
        }
        *entry += 1;
        drop(entry);
        Ok(Slot {
            shared: self.clone(),
            ip: Some(ip),
        })
    }

    /// A slot for an outgoing connection: counted in the total, never refused (siprox
    /// itself decided to open it, and refusing would only lose the message).
    pub(crate) fn admit_outgoing(self: &Arc<Self>) -> Slot {
        self.admission.open.fetch_add(1, Ordering::AcqRel);
        Slot {
            shared: self.clone(),
            ip: None,
        }
    }

    /// Open TCP/TLS connections.
    pub fn open_connections(&self) -> usize {
        self.admission.open.load(Ordering::Acquire)
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
    pub(crate) listeners: Mutex<Vec<actix::Recipient<crate::listener::StopListening>>>,
    /// The context every tls listener accepts with: its ClientHello callback picks the
    /// domain. Created once: it holds the session ticket keys, which must outlive reloads.
    pub(crate) dispatch: openssl::ssl::SslContext,
    /// The `DomainRegistry` (set once it starts): where `tls.reload` / `cfg.reload` go.
    pub(crate) reloader: std::sync::OnceLock<actix::Recipient<Reload>>,
    /// What the last reload did and what every domain serves (control plane only).
    pub(crate) tls_status: Mutex<TlsStatus>,
    /// The `Rpc` actor, for HTTP requests that a route script dispatches from a SIP
    /// listener (`dispatch_rpc()`); set once at start.
    pub(crate) rpc: std::sync::OnceLock<actix::Recipient<crate::rpc::Request>>,
    /// The registrar's store and the digest authenticator (set once at start).
    pub location: std::sync::OnceLock<Arc<crate::location::Location>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(snapshot: Snapshot, dispatch: openssl::ssl::SslContext) -> Shared {
        Shared {
            dispatch,
            reloader: std::sync::OnceLock::new(),
            location: std::sync::OnceLock::new(),
            rpc: std::sync::OnceLock::new(),
            tls_status: Mutex::new(TlsStatus::default()),
            snapshot: ArcSwap::from_pointee(snapshot),
            table: ConnectionTable::default(),
            stats: Stats::default(),
            admission: Admission::default(),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
        }
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
            messages_in: g(&s.messages_in),
            udp_unparsable: g(&s.udp_unparsable),
            dropped: g(&s.dropped),
            send_failures: g(&s.send_failures),
            dns_failures: g(&s.dns_failures),
        }
    }
}

/// Reason labels of `Stats::tls_failures`, in index order.
pub const TLS_FAILURE_REASONS: [&str; 4] = ["timeout", "certificate", "unrecognized_name", "other"];

/// The index in `Stats::tls_failures` of a failed handshake, from its error text.
pub(crate) fn tls_failure_reason(why: &str) -> usize {
    let w = why.to_ascii_lowercase();
    if w.contains("timeout") || w.contains("timed out") {
        0
    } else if w.contains("certificate") || w.contains("verify") {
        1
    } else if w.contains("unrecognized name") || w.contains("unrecognized_name") {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_classified() {
        assert_eq!(
            TLS_FAILURE_REASONS[tls_failure_reason("handshake timeout")],
            "timeout"
        );
        assert_eq!(
            TLS_FAILURE_REASONS[tls_failure_reason(
                "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed"
            )],
            "certificate"
        );
        assert_eq!(
            TLS_FAILURE_REASONS[tls_failure_reason("tlsv1 unrecognized name")],
            "unrecognized_name"
        );
        assert_eq!(
            TLS_FAILURE_REASONS[tls_failure_reason("wrong version number")],
            "other"
        );
    }
}
