//! Counters: relaxed atomics bumped on the hot path (one uncontended add, no map, no lock),
//! read by tests, logs and `/metrics`. Must never allocate or lock when counting.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Counters for tests, logs and (later) metrics. Relaxed atomics: each is independent.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_total_limit: AtomicU64,
    pub(crate) refused_ip_limit: AtomicU64,
    /// Accepts closed at once because the process was out of file descriptors.
    pub(crate) refused_fd_limit: AtomicU64,
    /// The one WARN per interval about `refused_fd_limit`, shared by every listener.
    pub(crate) fd_limit_warn: LogLimiter,
    /// Times the heap was trimmed after connections went (see `worker::memory`).
    pub(crate) memory_trims: AtomicU64,
    /// Most incoming connections open since the last heap trim (see `worker::memory`).
    pub(crate) conn_high_water: AtomicUsize,
    /// Fewest connections open since the last heap trim: a rise is measured from it (see
    /// `worker::memory`).
    pub(crate) conn_low_water: AtomicUsize,
    /// `accepted` as the last idle sweep saw it, and since when ([`clock_ms`]) it has not
    /// moved: a rise of connections is over once no connection arrived for a while.
    ///
    /// [`clock_ms`]: crate::state::table::clock_ms
    pub(crate) accepted_seen: AtomicU64,
    pub(crate) accepted_still_since: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) send_timeouts: AtomicU64,
    pub(crate) write_queue_overflows: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    /// Streams closed because a message took longer than `message_timeout` to arrive, or
    /// their source IP buffered more than `max_partial_bytes_per_ip` of unfinished ones.
    pub(crate) message_timeouts: AtomicU64,
    pub(crate) framing_errors: AtomicU64,
    pub(crate) udp_unparsable: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Responses that matched nothing siprox sent (also counted in `dropped`).
    pub(crate) responses_unmatched: AtomicU64,
    /// The INFO line per interval about `responses_unmatched`.
    pub(crate) unmatched_log: LogLimiter,
    pub(crate) send_failures: AtomicU64,
    pub(crate) dns_failures: AtomicU64,
    pub(crate) script_errors: AtomicU64,
    /// Requests refused at `[transactions] max_transactions` (503 with Retry-After, or a
    /// `t_newtran()` that returned -1).
    pub(crate) transactions_refused: AtomicU64,
    /// Live transactions, all workers (each adds the change of its own table).
    pub(crate) transactions: AtomicU64,
    /// TLS handshakes completed (both directions).
    pub(crate) tls_handshakes: AtomicU64,
    /// Failed TLS handshakes by [`TlsFailureLabel`] (its discriminant is the index).
    pub(crate) tls_failures: [AtomicU64; 4],
    /// Messages received, requests by method and responses sent by status code (for
    /// `/metrics`), counted by each worker apart.
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

/// How many sets of [`SipCounts`] there are: workers count into set `index % SIP_SHARDS`.
const SIP_SHARDS: usize = 8;

/// Messages received, requests by method, responses sent by code: the counters bumped for
/// every message. One set per worker (a worker's index picks it), each on cache lines of
/// its own, summed when read: the workers, which count all the time, never write to the
/// same cache line (a shared counter's line moves between their cores on every message).
#[derive(Debug)]
pub struct SipCounts {
    shards: Box<[SipShard]>,
}

/// One worker's [`SipCounts`]; aligned so that no two sets share a (prefetched pair of)
/// cache line(s).
#[derive(Debug)]
#[repr(align(128))]
struct SipShard {
    messages_in: AtomicU64,
    requests: [AtomicU64; 15],
    /// Index: status code - 100 (100..=699).
    replies: [AtomicU64; 600],
}

impl Default for SipCounts {
    fn default() -> Self {
        SipCounts {
            shards: (0..SIP_SHARDS)
                .map(|_| SipShard {
                    messages_in: AtomicU64::new(0),
                    requests: std::array::from_fn(|_| AtomicU64::new(0)),
                    replies: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
        }
    }
}

impl SipCounts {
    fn shard(&self, worker: usize) -> &SipShard {
        &self.shards[worker % SIP_SHARDS]
    }

    /// Counts a message received by `worker` (any transport; request or response).
    pub(crate) fn message_in(&self, worker: usize) {
        self.shard(worker)
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request(&self, worker: usize, m: siprox::sip::Method) {
        if let Some(c) = self.shard(worker).requests.get(m as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a response about to be sent by `worker`, read from its status line.
    pub(crate) fn reply_bytes(&self, worker: usize, bytes: &[u8]) {
        let Some(code) = bytes.strip_prefix(b"SIP/2.0 ").and_then(|r| r.get(..3)) else {
            return;
        };
        if let Ok(code) = std::str::from_utf8(code).unwrap_or("").parse::<usize>() {
            if let Some(c) = code
                .checked_sub(100)
                .and_then(|i| self.shard(worker).replies.get(i))
            {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// SIP messages received, all workers.
    pub fn messages_in(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.messages_in.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum over the workers of one counter of each set.
    fn total(&self, f: impl Fn(&SipShard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// (method, count) pairs with a non-zero count.
    pub fn requests(&self) -> Vec<(&'static str, u64)> {
        METHOD_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, self.total(|s| &s.requests[i])))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// (code, count) pairs with a non-zero count.
    pub fn replies(&self) -> Vec<(u16, u64)> {
        (0..600)
            .map(|i| (i as u16 + 100, self.total(|s| &s.replies[i])))
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
    /// Responses that matched nothing siprox sent (logged with the reason, dropped).
    pub responses_unmatched: u64,
    /// Messages that could not be sent (no route, socket error, closed connection).
    pub send_failures: u64,
    /// Next hops DNS could not resolve.
    pub dns_failures: u64,
    /// Live transactions (server and client), all workers.
    pub transactions: u64,
    /// Requests refused at the transaction limit.
    pub transactions_refused: u64,
    /// `handshake_failures` by reason (the labels of `/metrics`).
    pub tls_failures: TlsFailureCounts,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The `reason` label of a failed TLS handshake (`siprox_tls_handshake_failures_total`):
/// dashboards use these names, so they never change. The runtime's TLS part maps each kind
/// of failure (`tls::HandshakeFailure`) to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailureLabel {
    Timeout,
    Certificate,
    UnrecognizedName,
    Other,
}

impl TlsFailureLabel {
    /// Every label, in `Stats::tls_failures` order.
    pub const ALL: [TlsFailureLabel; 4] = [
        TlsFailureLabel::Timeout,
        TlsFailureLabel::Certificate,
        TlsFailureLabel::UnrecognizedName,
        TlsFailureLabel::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailureLabel::Timeout => "timeout",
            TlsFailureLabel::Certificate => "certificate",
            TlsFailureLabel::UnrecognizedName => "unrecognized_name",
            TlsFailureLabel::Other => "other",
        }
    }
}

/// Failed TLS handshakes by `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsFailureCounts {
    pub timeout: u64,
    pub certificate: u64,
    pub unrecognized_name: u64,
    pub other: u64,
}

impl Stats {
    /// Counts one failed handshake under `label`.
    pub(crate) fn tls_failure(&self, label: TlsFailureLabel) {
        inc(&self.tls_failures[label as usize]);
    }

    pub(crate) fn tls_failure_counts(&self) -> TlsFailureCounts {
        let g = |l: TlsFailureLabel| self.tls_failures[l as usize].load(Ordering::Relaxed);
        TlsFailureCounts {
            timeout: g(TlsFailureLabel::Timeout),
            certificate: g(TlsFailureLabel::Certificate),
            unrecognized_name: g(TlsFailureLabel::UnrecognizedName),
            other: g(TlsFailureLabel::Other),
        }
    }
}

/// A WARN that repeats logged at most once per interval, with how many were suppressed in
/// between. Lock-free: shared by every worker's listeners.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Milliseconds (of the caller's clock) before which the next line is suppressed.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self, now_ms: u64, interval: Duration) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(interval.as_millis() as u64),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_index_their_own_counter() {
        let s = Stats::default();
        s.tls_failure(TlsFailureLabel::Certificate);
        s.tls_failure(TlsFailureLabel::Other);
        s.tls_failure(TlsFailureLabel::Other);
        assert_eq!(
            s.tls_failure_counts(),
            TlsFailureCounts {
                certificate: 1,
                other: 2,
                ..TlsFailureCounts::default()
            }
        );
        for (i, l) in TlsFailureLabel::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "{l:?}");
        }
        let names: Vec<&str> = TlsFailureLabel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(
            names,
            ["timeout", "certificate", "unrecognized_name", "other"]
        );
    }
}

#[cfg(test)]
mod sip_counts_tests {
    use super::*;
    use siprox::sip::Method;

    #[test]
    fn each_worker_counts_apart_and_reads_sum_them() {
        let c = SipCounts::default();
        // Workers 1 and 1 + SIP_SHARDS share a set; 0 has its own.
        for w in [0, 1, 1 + SIP_SHARDS] {
            c.message_in(w);
            c.request(w, Method::Invite);
            c.reply_bytes(w, b"SIP/2.0 200 OK\r\n");
        }
        c.request(1, Method::Bye);
        c.reply_bytes(0, b"SIP/2.0 180 Ringing\r\n");
        c.reply_bytes(0, b"not a status line");
        assert_eq!(c.messages_in(), 3);
        assert_eq!(c.requests(), [("INVITE", 3), ("BYE", 1)]);
        assert_eq!(c.replies(), [(180, 1), (200, 3)]);
        let a = &c.shards[0] as *const SipShard as usize;
        let b = &c.shards[1] as *const SipShard as usize;
        assert_eq!(a % 128, 0);
        assert!(b - a >= 128);
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;

    #[test]
    fn limiter_logs_once_per_interval_and_counts_the_rest() {
        let l = LogLimiter::default();
        let i = Duration::from_secs(10);
        assert_eq!(l.allow(1_000, i), Some(0));
        for t in 1_001..1_031 {
            assert_eq!(l.allow(t, i), None);
        }
        assert_eq!(l.allow(10_999, i), None);
        assert_eq!(l.allow(11_000, i), Some(31));
        assert_eq!(l.allow(11_001, i), None);
    }
}
