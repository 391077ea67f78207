//! The transaction table: owns every live transaction of one worker, indexes them by key,
//! drives their timers from one binary heap of `(deadline, slot, generation, timer)` with
//! lazy deletion (a disarmed or re-armed timer stays in the heap until due and is then
//! recognised as stale: a tick never scans the transactions), enforces the live-transaction
//! limit, and queues the [`Action`]s the runtime drains. Nothing is kept after a
//! transaction's last timer. Must never read a clock or panic on a message.

use std::cmp::Reverse;
use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::{self, Client};
use super::key::{ClientKey, MethodKey, ServerKey};
use super::server::{self, OnRequest, Server};
use super::{Action, TimerName, Timers, TxError, TxId};
use crate::proxy::{build_reply, Destination, Inbound, Transport};
use crate::sip::Message;

/// What the table is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub timers: Timers,
    /// Live transactions (server and client) beyond which [`Table::insert_server`] and
    /// [`Table::insert_client`] refuse with [`TxError::Full`]. CANCELs of branches are
    /// never refused: refusing them would keep the branches ringing. INVITE transactions
    /// in Accepted ([`Table::accepted`]) are not counted: they are compact (a few hundred
    /// bytes), bounded by the call rate times 64*T1, and refusing new calls because
    /// answered ones linger would cap the call rate at `max_transactions / (2 * 64*T1)`.
    pub max_transactions: usize,
    /// `Retry-After` seconds for the 503 of a refused request.
    pub retry_after: u32,
    /// `Server:` of the 100 Trying the table sends itself.
    pub server: String,
    /// Which worker owns this table: written into every branch it makes, so a response
    /// that arrives on another worker (SO_REUSEPORT spreads UDP by address, not by
    /// transaction) is handed to the right one ([`worker_of_branch`]).
    pub worker: u16,
    /// How long a server transaction waits for its TU's final response (re-armed by every
    /// provisional the TU sends): a bound, so a TU that forgets a transaction leaks nothing.
    pub server_guard: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        let timers = Timers::default();
        TableConfig {
            timers,
            max_transactions: 100_000,
            retry_after: 5,
            server: concat!("siprox/", env!("CARGO_PKG_VERSION")).to_owned(),
            worker: 0,
            server_guard: timers.c.saturating_mul(2) + timers.t1x64(),
        }
    }
}

/// Prefix of the branches a [`Table`] makes: the RFC 3261 cookie, then siprox's
/// transaction mark (the stateless proxy's branches start `z9hG4bK-sx` followed by hex).
const BRANCH_PREFIX: &str = "z9hG4bK-sxt";

/// The worker whose table made `branch` (the top Via branch of a response), or `None` for
/// a branch no table made (a stateless one, or someone else's).
pub fn worker_of_branch(branch: &str) -> Option<u16> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    let (worker, _) = rest.split_once('.')?;
    u16::from_str_radix(worker, 16).ok()
}

/// What [`Table::on_request`] made of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A retransmission of a request with a live server transaction: absorbed (the last
    /// response, if any, is queued for sending). Not forwarded, not run through the script.
    Retransmission(TxId),
    /// The ACK of a non-2xx final response this transaction sent: absorbed, hop by hop.
    AckAbsorbed(TxId),
    /// No transaction: a new request (the script decides), or an ACK for a 2xx (forwarded
    /// end to end, statelessly).
    New,
}

/// Per-client-transaction options (`t_set_fr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientOpts {
    /// Timer B / F: how long to wait for a (first) response. Default 64*T1.
    pub fr: Option<Duration>,
    /// Timer C: how long a ringing INVITE branch waits for its final response.
    pub c: Option<Duration>,
}

/// A heap entry. Valid only while the transaction in `slot` has `generation` and still
/// has `timer` armed at exactly `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    slot: u32,
    generation: u32,
    timer: TimerName,
}

/// The timers a transaction has armed: never more than three at once (Calling: A, B;
/// Completed INVITE server: G, H; anything else fewer).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Armed([Option<(TimerName, Instant)>; 3]);

impl Armed {
    fn get(&self, name: TimerName) -> Option<Instant> {
        self.0
            .iter()
            .flatten()
            .find(|(n, _)| *n == name)
            .map(|t| t.1)
    }
    fn set(&mut self, name: TimerName, at: Instant) {
        let i = self
            .0
            .iter()
            .position(|t| t.is_some_and(|(n, _)| n == name))
            .or_else(|| self.0.iter().position(Option::is_none));
        debug_assert!(i.is_some(), "more than three timers armed");
        self.0[i.unwrap_or(0)] = Some((name, at));
    }
    fn count(&self) -> usize {
        self.0.iter().flatten().count()
    }
    fn clear(&mut self, name: TimerName) {
        for t in &mut self.0 {
            if t.is_some_and(|(n, _)| n == name) {
                *t = None;
            }
        }
    }
}

/// The side of a state machine that reaches the table: queue actions, arm timers, end.
pub(crate) struct Out<'a> {
    pub(crate) now: Instant,
    pub(crate) id: TxId,
    pub(crate) timers: Timers,
    actions: &'a mut VecDeque<Action>,
    heap: &'a mut BinaryHeap<Reverse<Due>>,
    armed: &'a mut Armed,
    done: bool,
}

impl Out<'_> {
    pub(crate) fn send(&mut self, dest: &Destination, bytes: Bytes) {
        self.actions.push_back(Action::Send {
            tx: self.id,
            dest: dest.clone(),
            bytes,
        });
    }
    pub(crate) fn up(&mut self, a: Action) {
        self.actions.push_back(a);
    }
    pub(crate) fn arm(&mut self, timer: TimerName, after: Duration) {
        let at = self.now + after;
        self.armed.set(timer, at);
        self.heap.push(Reverse(Due {
            at,
            slot: self.id.slot,
            generation: self.id.generation,
            timer,
        }));
    }
    /// Arm, or end the transaction now when the timer is zero (D, I, J, K over TCP/TLS).
    pub(crate) fn arm_or_end(&mut self, timer: TimerName, after: Duration) {
        if after.is_zero() {
            self.terminate();
        } else {
            self.arm(timer, after);
        }
    }
    pub(crate) fn disarm(&mut self, timer: TimerName) {
        self.armed.clear(timer);
    }
    pub(crate) fn terminate(&mut self) {
        self.done = true;
    }
}

#[derive(Debug)]
enum Tx {
    Server {
        key: ServerKey,
        tx: Box<Server>,
    },
    Client {
        key: ClientKey,
        tx: Box<Client>,
    },
    /// An INVITE server transaction in Accepted (RFC 6026 §8.7), compacted when it got
    /// there: the key (absorb INVITE retransmissions, pass the 2xx's ACK on) and where
    /// every further 2xx goes. The request and the last response are freed.
    ServerAccepted {
        key: ServerKey,
        reply_dest: Box<Destination>,
        status: u16,
    },
    /// An INVITE client transaction in Accepted (RFC 6026 §8.4), compacted: only the key,
    /// to recognise a 2xx retransmission and pass it up. The request is freed.
    ClientAccepted {
        key: ClientKey,
    },
}

impl Tx {
    fn is_server(&self) -> bool {
        matches!(self, Tx::Server { .. } | Tx::ServerAccepted { .. })
    }

    fn is_accepted(&self) -> bool {
        matches!(self, Tx::ServerAccepted { .. } | Tx::ClientAccepted { .. })
    }

    /// A transaction that has just entered Accepted becomes its compact form. `true` when
    /// it did now.
    fn compact_if_accepted(&mut self) -> bool {
        let accepted = match self {
            Tx::Server { tx, .. } => tx.state == server::State::Accepted,
            Tx::Client { tx, .. } => tx.state == client::State::Accepted,
            _ => false,
        };
        if !accepted {
            return false;
        }
        let placeholder = Tx::ClientAccepted {
            key: ClientKey {
                branch: Box::from(""),
                method: MethodKey::Invite,
            },
        };
        *self = match std::mem::replace(self, placeholder) {
            Tx::Server { key, tx } => {
                let Server {
                    reply_dest,
                    last_status,
                    ..
                } = *tx;
                Tx::ServerAccepted {
                    key,
                    reply_dest: Box::new(reply_dest),
                    status: last_status,
                }
            }
            Tx::Client { key, .. } => Tx::ClientAccepted { key },
            other => other,
        };
        true
    }
}

#[derive(Debug)]
struct Live {
    armed: Armed,
    /// The index hash, so removal needs no re-hash of the key.
    hash: u64,
    tx: Tx,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    live: Option<Live>,
}

/// The keys of the index are already keyed SipHash values: hash them as they are.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Index = HashMap<u64, TxId, BuildHasherDefault<IdHasher>>;

/// The transactions of one worker. See the module docs.
pub struct Table {
    cfg: TableConfig,
    /// Keys the index hash (SipHash with per-table random keys), so that branches chosen by
    /// a peer cannot be made to collide.
    hasher: RandomState,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Of `live`, those in the compact Accepted form: not counted against
    /// `max_transactions`.
    accepted: usize,
    /// Timers armed, over all transactions: what the heap holds beside stale entries.
    armed: usize,
    servers: Index,
    clients: Index,
    heap: BinaryHeap<Reverse<Due>>,
    actions: VecDeque<Action>,
    /// Branch generation: a per-table seed from the runtime and a counter.
    branch_seed: u64,
    branch_counter: u64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("live", &self.live)
            .field("timers", &self.heap.len())
            .field("actions", &self.actions.len())
            .finish()
    }
}

impl Table {
    /// A table; `branch_seed` is random bytes from the runtime, so branches of two tables
    /// (workers, nodes, restarts) differ.
    pub fn new(cfg: TableConfig, branch_seed: u64) -> Table {
        Table {
            cfg,
            hasher: RandomState::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            accepted: 0,
            armed: 0,
            servers: Index::default(),
            clients: Index::default(),
            heap: BinaryHeap::new(),
            actions: VecDeque::new(),
            branch_seed,
            branch_counter: 0,
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Live transactions (those in Accepted included).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Of [`Table::len`], the INVITE transactions in the RFC 6026 Accepted state, held in
    /// their compact form and not counted against `max_transactions`.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// A new branch for a client transaction (with the RFC 3261 cookie, unique per table).
    pub fn new_branch(&mut self) -> String {
        self.branch_counter = self.branch_counter.wrapping_add(1);
        // splitmix64 of seed+counter: unpredictable enough to not be guessed from one
        // branch, and never repeating within a table.
        let mut z = self
            .branch_seed
            .wrapping_add(self.branch_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        format!(
            "{BRANCH_PREFIX}{:x}.{z:016x}{:x}",
            self.cfg.worker, self.branch_counter
        )
    }

    /// The next action for the runtime, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every queued action, in order.
    pub fn drain_actions(&mut self) -> std::collections::vec_deque::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// When [`Table::on_timer`] should next be called (possibly early: a stale entry's
    /// deadline; calling early is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }

    /// The bytes a client transaction sends, while it may retransmit them; an INVITE's
    /// then shrink to what its ACK and CANCEL are built from. `None` once in Accepted.
    pub fn sent_request(&self, id: TxId) -> Option<&Bytes> {
        match &self.get(id)?.tx {
            Tx::Client { tx, .. } => Some(&tx.request),
            _ => None,
        }
    }

    /// The status of the last response a server transaction sent (0: none yet).
    pub fn last_status(&self, id: TxId) -> Option<u16> {
        match &self.get(id)?.tx {
            Tx::Server { tx, .. } => Some(tx.last_status),
            Tx::ServerAccepted { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn get(&self, id: TxId) -> Option<&Live> {
        let s = self.slots.get(id.slot as usize)?;
        if s.generation == id.generation {
            s.live.as_ref()
        } else {
            None
        }
    }

    /// Approximate bytes held for the live transactions: slots, boxed machines, keys,
    /// stored messages, index entries and heap entries (allocator overhead not counted).
    pub fn approx_size(&self) -> usize {
        let index_entry = std::mem::size_of::<(u64, TxId)>() + 1;
        let mut total = self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.heap.capacity() * std::mem::size_of::<Reverse<Due>>()
            + (self.servers.capacity() + self.clients.capacity()) * index_entry;
        for live in self.slots.iter().filter_map(|s| s.live.as_ref()) {
            total += match &live.tx {
                Tx::Server { key, tx } => {
                    std::mem::size_of::<Server>() + key.heap_size() + tx.heap_size()
                }
                Tx::Client { key, tx } => {
                    std::mem::size_of::<Client>() + key.heap_size() + tx.heap_size()
                }
                Tx::ServerAccepted {
                    key, reply_dest, ..
                } => {
                    std::mem::size_of::<Destination>()
                        + key.heap_size()
                        + reply_dest.server_name.as_ref().map_or(0, |s| s.len())
                }
                Tx::ClientAccepted { key } => key.heap_size(),
            };
        }
        total
    }

    fn check_limit(&self) -> Result<(), TxError> {
        if self.live - self.accepted >= self.cfg.max_transactions {
            Err(TxError::Full {
                limit: self.cfg.max_transactions,
                retry_after: self.cfg.retry_after,
            })
        } else {
            Ok(())
        }
    }

    fn alloc(&mut self, hash: u64, tx: Tx) -> TxId {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.live = Some(Live {
            armed: Armed::default(),
            hash,
            tx,
        });
        self.live += 1;
        TxId {
            slot,
            generation: s.generation,
        }
    }

    /// Run `f` on a live transaction with an `Out`, then end it if it asked to.
    fn with<R>(
        &mut self,
        id: TxId,
        now: Instant,
        f: impl FnOnce(&mut Tx, &mut Out<'_>) -> R,
    ) -> Option<R> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let live = slot.live.as_mut()?;
        let armed_before = live.armed.count();
        let mut out = Out {
            now,
            id,
            timers: self.cfg.timers,
            actions: &mut self.actions,
            heap: &mut self.heap,
            armed: &mut live.armed,
            done: false,
        };
        let r = f(&mut live.tx, &mut out);
        let done = out.done;
        self.armed = self.armed + live.armed.count() - armed_before;
        if done {
            self.remove(id);
        } else if live.tx.compact_if_accepted() {
            self.accepted += 1;
        }
        self.compact_heap();
        Some(r)
    }

    fn remove(&mut self, id: TxId) {
        let Some(slot) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(live) = slot.live.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.live -= 1;
        self.armed -= live.armed.count();
        if live.tx.is_accepted() {
            self.accepted -= 1;
        }
        let index = if live.tx.is_server() {
            &mut self.servers
        } else {
            &mut self.clients
        };
        if let MapEntry::Occupied(e) = index.entry(live.hash) {
            if *e.get() == id {
                e.remove();
            }
        }
        self.actions.push_back(Action::Terminated { tx: id });
    }

    /// Stale heap entries are dropped when due; when disarming and re-arming (a call's
    /// Guard, A, B, C before its L or M) left many more entries than armed timers, rebuild
    /// the heap from the armed timers. The slack (twice the armed timers, a quarter of the
    /// slots) keeps the rebuild's cost, a pass over the slots, amortised to a few steps
    /// per timer armed.
    fn compact_heap(&mut self) {
        if self.heap.len() <= 64 + 2 * self.armed + self.slots.len() / 4 {
            return;
        }
        let mut fresh = Vec::with_capacity(self.armed);
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(live) = &s.live {
                for (timer, at) in live.armed.0.iter().flatten() {
                    fresh.push(Reverse(Due {
                        at: *at,
                        slot: i as u32,
                        generation: s.generation,
                        timer: *timer,
                    }));
                }
            }
        }
        self.heap = BinaryHeap::from(fresh);
    }

    /// The server transaction a request belongs to, if any (no state change).
    pub fn match_request(&self, msg: &Message) -> Option<TxId> {
        let probe = ServerKey::of_request(msg).ok()?;
        self.find_server(&probe, msg.method() == Some("ACK"))
    }

    /// The INVITE server transaction a CANCEL cancels (§9.2), if any.
    pub fn match_cancel(&self, cancel: &Message) -> Option<TxId> {
        let probe = ServerKey::invite_of_cancel(cancel).ok()?;
        self.find_server(&probe, false)
    }

    fn find_server(&self, probe: &ServerKey<&str>, ack: bool) -> Option<TxId> {
        let id = *self.servers.get(&probe.hash_with(&self.hasher))?;
        match &self.get(id)?.tx {
            Tx::Server { key, .. } | Tx::ServerAccepted { key, .. } if key.matches(probe, ack) => {
                Some(id)
            }
            _ => None,
        }
    }

    /// The client transaction a response belongs to, if any (no state change).
    pub fn match_response(&self, msg: &Message) -> Option<TxId> {
        let probe = ClientKey::of_message(msg).ok()?;
        let id = *self.clients.get(&probe.hash_with(&self.hasher))?;
        match &self.get(id)?.tx {
            Tx::Client { key, .. } | Tx::ClientAccepted { key } if key.matches(&probe) => Some(id),
            _ => None,
        }
    }

    /// A request from upstream: a retransmission is absorbed here (the last response is
    /// re-sent), the ACK of a non-2xx final ends its INVITE transaction's Completed state;
    /// anything else is [`Incoming::New`] for the TU.
    pub fn on_request(&mut self, msg: &Message, now: Instant) -> Incoming {
        let Some(id) = self.match_request(msg) else {
            return Incoming::New;
        };
        let ack = msg.method() == Some("ACK");
        let r = self.with(id, now, |tx, out| match tx {
            Tx::Server { tx, .. } => tx.on_request(ack, out),
            // RFC 6026 §8.7: an INVITE retransmission is absorbed (the 2xx is resent by the
            // UAS, end to end); the 2xx's ACK is not this transaction's.
            Tx::ServerAccepted { .. } if ack => OnRequest::PassOn,
            Tx::ServerAccepted { .. } => OnRequest::Absorbed,
            _ => OnRequest::PassOn,
        });
        match r {
            Some(OnRequest::Absorbed) => Incoming::Retransmission(id),
            Some(OnRequest::Ack) => Incoming::AckAbsorbed(id),
            Some(OnRequest::PassOn) | None => Incoming::New,
        }
    }

    /// Create the server transaction of a new request that the TU handles statefully. For
    /// an INVITE, 100 Trying is queued at once (§16.2, §17.2.1). ACK has no transaction.
    pub fn insert_server(
        &mut self,
        msg: &Message,
        rx: &Inbound,
        now: Instant,
    ) -> Result<TxId, TxError> {
        if msg.method() == Some("ACK") {
            return Err(TxError::Unkeyable("ACK has no transaction of its own"));
        }
        // A CANCEL for a live INVITE is never refused: refusing it would keep the call
        // ringing. There is at most one per INVITE (it takes the INVITE's key).
        if msg.method() != Some("CANCEL") || self.match_cancel(msg).is_none() {
            self.check_limit()?;
        }
        let key = ServerKey::of_request(msg)?;
        let hash = key.hash_with(&self.hasher);
        if self.servers.contains_key(&hash) {
            return Err(TxError::Exists);
        }
        let key = key.to_owned_key();
        let server = Server::new(
            msg.method() == Some("INVITE"),
            reply_destination(msg, rx),
            self.cfg.server_guard,
        );
        let invite = server.invite;
        let id = self.alloc(
            hash,
            Tx::Server {
                key,
                tx: Box::new(server),
            },
        );
        self.servers.insert(hash, id);
        self.with(id, now, |tx, out| {
            if let Tx::Server { tx, .. } = tx {
                tx.start(out);
            }
        });
        if invite {
            let trying = build_reply(msg, rx, 100, "Trying", "", &self.cfg.server, "");
            self.respond(id, 100, trying, now)?;
        }
        Ok(id)
    }

    /// The TU sends a response upstream through server transaction `id` (a forwarded
    /// response with siprox's Via removed, or a local one).
    pub fn respond(
        &mut self,
        id: TxId,
        status: u16,
        bytes: Bytes,
        now: Instant,
    ) -> Result<(), TxError> {
        self.with(id, now, |tx, out| match tx {
            Tx::Server { tx, .. } => tx.respond(status, bytes, out),
            // RFC 6026 §8.7: every further 2xx goes upstream; nothing else does.
            Tx::ServerAccepted { reply_dest, .. } => match status {
                200..=299 => {
                    out.send(reply_dest, bytes);
                    Ok(())
                }
                100..=699 => Err(TxError::State("a final response was sent already")),
                _ => Err(TxError::State("status out of range")),
            },
            _ => Err(TxError::State("a client transaction sends no response")),
        })
        .unwrap_or(Err(TxError::Gone))
    }

    /// The TU is done with server transaction `id` without answering through it (a script
    /// that called `t_newtran()` and then handled the request statelessly): the
    /// transaction ends now, before any final response, as Kamailio's
    /// `t_release_transaction()` does for such a script. A retransmission of the request
    /// is then a new request again.
    pub fn release(&mut self, id: TxId, now: Instant) -> Result<(), TxError> {
        self.with(id, now, |tx, out| match tx {
            Tx::Server { tx, .. } if tx.last_status < 200 => {
                out.terminate();
                Ok(())
            }
            Tx::Server { .. } | Tx::ServerAccepted { .. } => {
                Err(TxError::State("a final response was sent already"))
            }
            _ => Err(TxError::State("a client transaction is not released")),
        })
        .unwrap_or(Err(TxError::Gone))
    }

    /// Create a client transaction for `request` as it will be sent (siprox's Via on top,
    /// with a branch from [`Table::new_branch`]) and queue its sending to `dest`.
    pub fn insert_client(
        &mut self,
        request: Message,
        dest: Destination,
        opts: ClientOpts,
        now: Instant,
    ) -> Result<TxId, TxError> {
        self.check_limit()?;
        self.insert_client_unchecked(request, dest, opts, now)
    }

    fn insert_client_unchecked(
        &mut self,
        request: Message,
        dest: Destination,
        opts: ClientOpts,
        now: Instant,
    ) -> Result<TxId, TxError> {
        if request.method() == Some("ACK") {
            return Err(TxError::Unkeyable("ACK has no transaction of its own"));
        }
        let key = ClientKey::of_message(&request)?;
        let hash = key.hash_with(&self.hasher);
        if self.clients.contains_key(&hash) {
            return Err(TxError::Exists);
        }
        let key = key.to_owned_key();
        let t = self.cfg.timers;
        let client = Client::new(
            &request,
            dest,
            opts.fr.unwrap_or(t.t1x64()),
            opts.c.unwrap_or(t.c),
        );
        let id = self.alloc(
            hash,
            Tx::Client {
                key,
                tx: Box::new(client),
            },
        );
        self.clients.insert(hash, id);
        self.with(id, now, |tx, out| {
            if let Tx::Client { tx, .. } = tx {
                tx.start(out);
            }
        });
        Ok(id)
    }

    /// A response from downstream. Returns the client transaction it matched; the table
    /// queues [`Action::Response`] when the TU must see it, the hop-by-hop ACK of a non-2xx
    /// final, and a CANCEL that waited for this provisional.
    pub fn on_response(&mut self, msg: &Message, now: Instant) -> Option<TxId> {
        let status = msg.status().filter(|s| (100..=699).contains(s))?;
        let id = self.match_response(msg)?;
        let r = self.with(id, now, |tx, out| match tx {
            Tx::Client { tx, .. } => {
                let up = tx.on_response(msg, status, out);
                // Queued here, before the `Terminated` that a final over a reliable
                // transport causes at once (Timer D/K zero): the TU must see the response
                // while the transaction still names its branch.
                if up {
                    out.up(Action::Response {
                        tx: out.id,
                        msg: msg.clone(),
                    });
                }
                // Only a provisional that moved the branch to Proceeding: a stray one after
                // the final must not send a CANCEL.
                let cancel_now = tx.invite
                    && (100..200).contains(&status)
                    && tx.state == client::State::Proceeding
                    && tx.cancel == client::Cancel::Wanted;
                if cancel_now {
                    tx.cancel = client::Cancel::Done;
                }
                (up, if cancel_now { cancel_request(tx) } else { None })
            }
            // RFC 6026 §8.4: every 2xx goes up (end to end); anything else is dropped.
            Tx::ClientAccepted { .. } => {
                let up = (200..300).contains(&status);
                if up {
                    out.up(Action::Response {
                        tx: out.id,
                        msg: msg.clone(),
                    });
                }
                (up, None)
            }
            _ => (false, None),
        });
        let (_, cancel) = r?;
        if let Some((req, dest)) = cancel {
            let _ = self.insert_client_unchecked(req, dest, ClientOpts::default(), now);
        }
        Some(id)
    }

    /// Cancel an INVITE client transaction (a branch): the CANCEL is sent now if the
    /// branch has had a provisional response, else as soon as it has one (§9.1); nothing
    /// once it has a final response. Returns the CANCEL's own client transaction when one
    /// was started now.
    pub fn cancel_branch(&mut self, id: TxId, now: Instant) -> Result<Option<TxId>, TxError> {
        let r = self
            .with(id, now, |tx, _| match tx {
                Tx::Client { tx, .. } if tx.invite => match (tx.state, tx.cancel) {
                    (client::State::Proceeding, client::Cancel::No | client::Cancel::Wanted) => {
                        tx.cancel = client::Cancel::Done;
                        Ok(cancel_request(tx))
                    }
                    (client::State::Calling, client::Cancel::No) => {
                        tx.cancel = client::Cancel::Wanted;
                        Ok(None)
                    }
                    _ => Ok(None),
                },
                // It has its final response: nothing to cancel.
                Tx::ClientAccepted { .. } => Ok(None),
                _ => Err(TxError::State(
                    "only an INVITE client transaction is cancelled",
                )),
            })
            .unwrap_or(Err(TxError::Gone))?;
        match r {
            Some((req, dest)) => self
                .insert_client_unchecked(req, dest, ClientOpts::default(), now)
                .map(Some),
            None => Ok(None),
        }
    }

    /// The runtime could not send for transaction `id` (a failed send, a closed
    /// connection; §17.1.4, §17.2.4): the transaction ends at once. A client transaction's
    /// TU is told with [`Action::TransportError`]; a server transaction has nobody left to
    /// answer.
    pub fn on_transport_error(&mut self, id: TxId, now: Instant) -> Result<(), TxError> {
        self.with(id, now, |tx, out| {
            if !tx.is_server() {
                out.up(Action::TransportError { tx: out.id });
            }
            out.terminate();
        })
        .ok_or(TxError::Gone)
    }

    /// Fire every timer due at `now`; the resulting actions are queued. Pops only due
    /// entries (and stale ones that are due): O(due * log n), whatever the table's size.
    pub fn on_timer(&mut self, now: Instant) {
        while let Some(Reverse(due)) = self.heap.peek().copied() {
            if due.at > now {
                break;
            }
            self.heap.pop();
            let id = TxId {
                slot: due.slot,
                generation: due.generation,
            };
            let current = self.get(id).and_then(|l| l.armed.get(due.timer));
            if current != Some(due.at) {
                continue; // disarmed or re-armed since: stale
            }
            self.with(id, now, |tx, out| {
                out.disarm(due.timer);
                match tx {
                    Tx::Client { tx, .. } => tx.on_timer(due.timer, out),
                    Tx::Server { tx, .. } => tx.on_timer(due.timer, out),
                    Tx::ServerAccepted { .. } if due.timer == TimerName::L => out.terminate(),
                    Tx::ClientAccepted { .. } if due.timer == TimerName::M => out.terminate(),
                    _ => {}
                }
            });
        }
    }
}

/// The CANCEL of an INVITE client transaction, parsed, with the branch's destination.
/// `None` if it does not parse (it is built from a request that did, so this would be a
/// bug in `build_cancel`; sending nothing is then better than sending garbage).
fn cancel_request(tx: &Client) -> Option<(Message, Destination)> {
    let msg = Message::parse(client::build_cancel(&tx.parsed()?)).ok()?;
    debug_assert!(
        msg.validate().is_ok(),
        "build_cancel made an invalid CANCEL"
    );
    Some((msg, tx.dest.clone()))
}

/// Where a server transaction's responses go: the source address, on the source port when
/// the request asked for rport (RFC 3581) or came over a stream, else the Via port
/// (RFC 3261 §18.2.2); the same rule as the stateless proxy's replies.
fn reply_destination(msg: &Message, rx: &Inbound) -> Destination {
    let port = match msg.top_via() {
        Ok(v) if rx.transport == Transport::Udp && v.rport().is_none() => {
            v.port.unwrap_or(Transport::Udp.default_port())
        }
        _ => rx.source.port(),
    };
    Destination {
        conn: rx.conn,
        ..Destination::addr(rx.transport, SocketAddr::new(rx.source.ip(), port))
    }
}
