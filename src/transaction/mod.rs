//! The transaction layer of RFC 3261 §17 (with the RFC 6026 Accepted state) and the proxy's
//! response context of §16.7, sans-IO: every input is an event with a `now: Instant` passed
//! in, every output is an [`Action`] the runtime drains with [`Table::poll_action`] and
//! executes. It must never read a clock, open a socket, spawn a task or panic on any message;
//! nothing here knows actix or tokio.
//!
//! # Layout
//!
//! - [`key`]: how requests and responses find their transaction (§17.1.3, §17.2.3, and the
//!   RFC 2543 fallback), as a keyed 64-bit hash plus an equality check on the stored key.
//! - `client` / `server`: the four state machines (INVITE and non-INVITE, client and server).
//! - [`Table`]: owns the transactions, their timers (one binary heap of deadlines with lazy
//!   deletion: a tick pops only what is due), the live-transaction limit, and the queue of
//!   actions. An INVITE transaction entering the RFC 6026 Accepted state is shrunk to its
//!   key (and, for a server, its reply destination) and no longer counts against the
//!   limit.
//! - [`ResponseContext`]: the forking proxy's choices (§16.7): which response goes upstream,
//!   which branch is cancelled, and the seam where `failure_route` may add branches.
//!
//! # How the runtime drives it
//!
//! A request arrives: [`Table::on_request`] says whether it is a retransmission (absorbed,
//! the last response is re-sent), an ACK absorbed by an INVITE server transaction, or new.
//! A new request that the script relays statefully gets [`Table::insert_server`] (100 Trying
//! is queued at once for INVITE), then one [`Table::insert_client`] per branch; responses
//! go through [`Table::on_response`] and come out as [`Action::Response`] for the context;
//! what the context decides to send upstream goes through [`Table::respond`]. The runtime
//! calls [`Table::on_timer`] at [`Table::next_deadline`] and drains actions after every call.
//!
//! - One table per worker, owned by it (no lock). Branches carry the worker's number
//!   ([`TableConfig::worker`], [`worker_of_branch`]): a response read by another worker is
//!   handed to the owner by that number.
//! - A CANCEL from upstream: [`Table::match_cancel`] finds the INVITE's server transaction
//!   (none: answer 481); the CANCEL gets its own server transaction, answered 200, and the
//!   INVITE's [`ResponseContext::cancel`] cancels every pending branch.
//! - [`ContextAction::Cancel`] is [`Table::cancel_branch`]; [`Action::Timeout`] and
//!   [`Action::TransportError`] go to [`ResponseContext::on_timeout`] and
//!   [`ResponseContext::on_transport_error`].
//! - [`ContextAction::AllDone`] is where `failure_route` runs: it may add branches (more
//!   [`Table::insert_client`] + [`ResponseContext::add_branch`]), else
//!   [`ResponseContext::finish`] gives the [`Final`] to send through [`Table::respond`].
//! - [`TxError::Full`] on a new request: answer 503 with `Retry-After`, and count it.

mod client;
mod context;
pub mod key;
mod server;
mod table;

use std::time::Duration;

use bytes::Bytes;

use crate::proxy::Destination;
use crate::sip::Message;

pub use client::build_cancel;
pub use client::build_non2xx_ack;
pub use context::{BranchFacts, BranchIdx, ContextAction, Final, ResponseContext};
pub use key::{ClientKey, ServerKey};
pub use table::{worker_of_branch, ClientOpts, Incoming, Table, TableConfig};

/// The RFC 3261 timer base values (§17.1.1.1, Table 4), and the proxy's Timer C (§16.6 step
/// 11, §16.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate: 500 ms.
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and INVITE responses: 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network: 5 s.
    pub t4: Duration,
    /// How long a proxied INVITE branch waits for a final response once it is ringing
    /// (Timer C, more than 3 minutes; `t_set_fr`'s first argument overrides it per branch).
    pub c: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            c: Duration::from_secs(181),
        }
    }
}

impl Timers {
    /// 64*T1: Timers B, F, H, J (unreliable) and the RFC 6026 Timers L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Identifies a live transaction: a slot in the table and the generation of that slot, so an
/// id kept after its transaction ended never names a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// Which of the §17 timers fired (for logs, metrics and [`Action::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerName {
    /// INVITE client: retransmit the request (unreliable only).
    A,
    /// INVITE client: no final response in time.
    B,
    /// Proxy INVITE branch: no final response after a provisional one (§16.8).
    C,
    /// INVITE client: leave Completed (absorbs response retransmissions).
    D,
    /// Non-INVITE client: retransmit the request.
    E,
    /// Non-INVITE client: no final response in time.
    F,
    /// INVITE server: retransmit the non-2xx final response.
    G,
    /// INVITE server: no ACK for the non-2xx final response.
    H,
    /// INVITE server: leave Confirmed.
    I,
    /// Non-INVITE server: leave Completed.
    J,
    /// Non-INVITE client: leave Completed.
    K,
    /// INVITE server (RFC 6026): leave Accepted.
    L,
    /// INVITE client (RFC 6026): leave Accepted.
    M,
    /// Server transaction whose TU never answered: a bound so nothing is kept forever.
    Guard,
}

/// What the runtime must do; drained with [`Table::poll_action`].
#[derive(Debug, Clone)]
pub enum Action {
    /// Send these bytes: a request or its retransmission, a response or its retransmission,
    /// a hop-by-hop ACK, a CANCEL, a 100 Trying.
    Send {
        tx: TxId,
        dest: Destination,
        bytes: Bytes,
    },
    /// A response that a client transaction passes up (provisional, the first final, and
    /// 2xx retransmissions in Accepted, which go end to end): give it to the branch's
    /// [`ResponseContext`].
    Response { tx: TxId, msg: Message },
    /// A client transaction got no final response in time (Timer B, C or F): to the
    /// context this is a 408 on that branch. For Timer C on a ringing INVITE branch the
    /// runtime also sends the CANCEL (the context asks for it). For [`TimerName::Guard`] a
    /// server transaction was dropped unanswered.
    Timeout { tx: TxId, timer: TimerName },
    /// The transport could not deliver a request of this client transaction (§17.1.4, a
    /// send that failed, a connection that closed): it has ended; to its branch's
    /// context this is a 503 (§16.9).
    TransportError { tx: TxId },
    /// The transaction is gone; its id names nothing any more.
    Terminated { tx: TxId },
}

/// Why the table refused something. The runtime answers a request it could not give a
/// transaction with [`TxError::Full`]'s 503 + `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The live-transaction limit is reached: answer 503 with `Retry-After: retry_after`.
    #[error("too many live transactions (limit {limit})")]
    Full { limit: usize, retry_after: u32 },
    /// The message lacks what a transaction is keyed or built on (Via, CSeq, ...).
    #[error("message cannot key a transaction: {0}")]
    Unkeyable(&'static str),
    /// A transaction with the same key exists already.
    #[error("a transaction with this key exists")]
    Exists,
    /// The id names no live transaction (it ended, or never was).
    #[error("no such transaction")]
    Gone,
    /// The transaction is not in a state that accepts this (a second final response, a
    /// response through a client transaction, ...).
    #[error("not allowed in this state: {0}")]
    State(&'static str),
}

#[cfg(test)]
mod tests;
