//! The connection table: every open TCP/TLS connection by id and by peer, so that any worker
//! can write to any connection without going through a central actor. A handle only
//! enqueues; the bytes are written by the connection's own actor on its own arbiter. Must
//! never block, and never hold a map guard while calling out of this module.
//!
//! Why `dashmap`: it shards the map (by default 4 x cores shards, each an `RwLock` around a
//! hashbrown table), so readers on different workers almost never touch the same lock, and
//! every critical section here is a hash lookup plus an `Arc` clone, never an `.await`.
//! A lock-free map (papaya) would avoid even that, at the price of epoch-based reclamation
//! on every access; with short sections and few writers (connects/closes, not messages)
//! the sharded map is simpler and has been battle-tested in many proxies.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use siprox::proxy::{ConnId, Transport};
use siprox::tls::TlsFacts;

use crate::state::messages::{CloseReason, ConnCommand};

/// What identifies a reusable connection: transport, the peer's address, and for outgoing
/// TLS the name its certificate was verified against (a connection verified for one name
/// must not carry traffic meant for another).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub server_name: Option<Arc<str>>,
}

/// What a connection shares with every holder of its handle: who it is, its mailbox, and
/// the write-queue accounting that senders on other threads check. One allocation per
/// connection, pointed to by both table maps and by the connection itself (idle
/// connections must be cheap: see the figures in the README).
#[derive(Debug)]
pub struct ConnShared {
    pub(crate) id: ConnId,
    /// The key the connection is (or will be) reachable under in the table.
    pub(crate) key: PeerKey,
    /// The connection's own mailbox. The connection holds this struct too, so it holds its
    /// own address: it stops when it closes, never because its last sender went away. A
    /// `Recipient`, not an `Addr<Connection>`: the table (state) never names the actor
    /// (transport) above it; one message enum keeps it to one mailbox handle.
    addr: Recipient<ConnCommand>,
    max_queue: usize,
    /// Opened by siprox to a next hop: shared by every caller, so a full queue refuses the
    /// message (a burst) instead of closing the connection for everyone; a next hop that
    /// stops reading still loses it after `send_timeout`.
    outgoing: bool,
    /// Bytes enqueued and not yet written: senders add, the connection subtracts what it
    /// writes. Checked by senders, so a flood is refused before it costs memory.
    pub(crate) bytes: AtomicUsize,
    /// Connected (and handshaken). Before that a full queue is not the peer's fault: the
    /// excess message is refused, the connection is kept.
    pub(crate) established: AtomicBool,
    /// When the connection was created ([`clock_ms`]; `tls.list` age).
    since_ms: u64,
    /// The connection's TLS facts, set once after the handshake (`tls.list`); empty for TCP
    /// or until the connection sets it.
    tls: OnceLock<Arc<TlsFacts>>,
    /// When bytes last moved either way ([`clock_ms`]); the worker's idle sweep reads it.
    last_active: AtomicU64,
    /// `[connections] idle_timeout` when the connection started, in ms; 0 = never. `u32`
    /// (a longer one counts as 49 days): with `since_ms`, 16 bytes less per connection, a
    /// smaller malloc size class.
    pub(crate) idle_timeout_ms: u32,
    /// When the message now partly in the read buffer began ([`clock_ms`]); 0 = none.
    partial_since: AtomicU64,
    /// `[connections] message_timeout` when the connection started, in ms; 0 = never.
    pub(crate) message_timeout_ms: u32,
}

impl ConnShared {
    pub(crate) fn new(
        id: ConnId,
        key: PeerKey,
        addr: Recipient<ConnCommand>,
        max_queue: usize,
        outgoing: bool,
        idle_timeout: Duration,
        message_timeout: Duration,
    ) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            id,
            key,
            addr,
            max_queue,
            outgoing,
            bytes: AtomicUsize::new(0),
            established: AtomicBool::new(false),
            since_ms: clock_ms(),
            tls: OnceLock::new(),
            last_active: AtomicU64::new(clock_ms()),
            idle_timeout_ms: u32::try_from(idle_timeout.as_millis()).unwrap_or(u32::MAX),
            partial_since: AtomicU64::new(0),
            message_timeout_ms: u32::try_from(message_timeout.as_millis()).unwrap_or(u32::MAX),
        })
    }

    /// The read buffer now holds part of a message: `started` says whether that message
    /// began with this read (the previous one completed, or none was pending).
    pub(crate) fn partial(&self, pending: bool, started: bool) {
        if !pending {
            self.partial_since.store(0, Ordering::Relaxed);
        } else if started || self.partial_since.load(Ordering::Relaxed) == 0 {
            // The clock is read only for a message left unfinished (rare between reads).
            self.partial_since
                .store(clock_ms().max(1), Ordering::Relaxed);
        }
    }

    /// True when a message has been arriving for `message_timeout` as of `now`.
    pub(crate) fn message_late_at(&self, now: u64) -> bool {
        let since = self.partial_since.load(Ordering::Relaxed);
        self.message_timeout_ms != 0
            && since != 0
            && now.saturating_sub(since) >= u64::from(self.message_timeout_ms)
    }

    /// Records activity now (a timestamp store: no timer to re-arm).
    pub(crate) fn touch(&self) {
        self.last_active.store(clock_ms(), Ordering::Relaxed);
    }

    /// True while the connection's actor runs.
    pub(crate) fn is_open(&self) -> bool {
        self.addr.connected()
    }

    /// Asks the connection to close if it is still idle (it re-checks on its own thread).
    pub(crate) fn check_idle(&self) {
        self.addr.do_send(ConnCommand::IdleCheck);
    }

    /// True when nothing moved for `idle_timeout` as of `now` ([`clock_ms`]).
    pub(crate) fn idle_at(&self, now: u64) -> bool {
        self.idle_timeout_ms != 0
            && now.saturating_sub(self.last_active.load(Ordering::Relaxed))
                >= u64::from(self.idle_timeout_ms)
    }

    /// Records the connection's TLS facts (first call wins) for `tls.list`.
    pub(crate) fn set_tls_facts(&self, facts: Arc<TlsFacts>) {
        let _ = self.tls.set(facts);
    }
}

/// Milliseconds on a process-wide monotonic clock (for activity stamps).
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the management RPC shows about one connection: a copy, taken without waiting on
/// the connection's actor.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: ConnId,
    pub transport: Transport,
    pub peer: SocketAddr,
    /// siprox opened it (to a next hop) rather than accepted it.
    pub outgoing: bool,
    /// The server name an outgoing TLS connection was verified against.
    pub server_name: Option<Arc<str>>,
    pub age: Duration,
    pub queued_bytes: usize,
    /// Handshake done (or connected, for TCP).
    pub established: bool,
    pub tls: Option<Arc<TlsFacts>>,
}

/// A cheap, clonable, thread-safe way to write to one connection.
#[derive(Clone)]
pub struct ConnHandle(Arc<ConnShared>);

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.0.id)
            .field("queued", &self.0.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a send through a handle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is gone.
    Closed,
    /// The queue would exceed `max_write_queue`: the connection is being closed.
    QueueFull,
    /// The connection is still connecting and its queue is full: this message is refused,
    /// the connection is kept.
    Backlogged,
}

impl ConnHandle {
    pub(crate) fn new(shared: Arc<ConnShared>) -> ConnHandle {
        ConnHandle(shared)
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.0.id
    }

    /// True while the connection's actor runs.
    pub fn is_open(&self) -> bool {
        self.0.is_open()
    }

    /// The connection's TLS facts once its handshake is done (`None` for TCP, or before).
    pub fn tls_facts(&self) -> Option<Arc<TlsFacts>> {
        self.0.tls.get().cloned()
    }

    /// Opened by siprox (to a next hop), not accepted.
    pub fn is_outgoing(&self) -> bool {
        self.0.outgoing
    }

    /// Enqueues `bytes` on the connection. Never waits: over the queue bound the connection
    /// is closed (a peer that lets that much pile up is not reading).
    pub fn send(&self, bytes: Bytes) -> Result<(), SendError> {
        self.admit(bytes.len())?;
        // do_send ignores the mailbox capacity on purpose: the byte bound above is the bound.
        self.deliver(bytes);
        Ok(())
    }

    /// The queue accounting of [`send`](Self::send) for `len` bytes, without the bytes:
    /// `Ok` when the caller may hand them to the connection by another way (the worker
    /// reading this connection puts its replies straight into the write queue).
    pub(crate) fn admit(&self, len: usize) -> Result<(), SendError> {
        let c = &*self.0;
        if !c.is_open() {
            return Err(SendError::Closed);
        }
        let before = c.bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > c.max_queue {
            c.bytes.fetch_sub(len, Ordering::AcqRel);
            if !c.established.load(Ordering::Acquire) || c.outgoing {
                return Err(SendError::Backlogged);
            }
            c.addr
                .do_send(ConnCommand::Close(CloseReason::WriteQueueFull));
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    /// Hands the connection bytes already accounted by [`admit`](Self::admit).
    pub(crate) fn deliver(&self, bytes: Bytes) {
        self.0.addr.do_send(ConnCommand::Enqueue(bytes));
    }

    /// Asks the connection to stop reading, write what is queued and close (shutdown).
    pub(crate) fn drain(&self) {
        self.0.addr.do_send(ConnCommand::Drain);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// What the management RPC shows about this connection.
    pub fn info(&self) -> ConnInfo {
        let c = &*self.0;
        ConnInfo {
            id: c.id,
            transport: c.key.transport,
            peer: c.key.addr,
            outgoing: c.outgoing,
            server_name: c.key.server_name.clone(),
            age: Duration::from_millis(clock_ms().saturating_sub(c.since_ms)),
            queued_bytes: self.queued_bytes(),
            established: c.established.load(Ordering::Acquire),
            tls: c.tls.get().cloned(),
        }
    }

    /// Closes the connection now, discarding its queue (`tls.kill`).
    pub fn close(&self) {
        self.0
            .addr
            .do_send(ConnCommand::Close(CloseReason::Shutdown));
    }
}

/// Every open connection, by id and by [`PeerKey`]. Both maps hold the same handle (one
/// pointer per entry).
#[derive(Debug, Default)]
pub struct ConnectionTable {
    /// Looked up for every response to a stream: hashed with [`IdHasher`].
    by_id: DashMap<ConnId, ConnHandle, BuildHasherDefault<IdHasher>>,
    by_peer: DashMap<PeerKey, ConnHandle>,
}

/// The hash of a [`ConnId`]: one multiplication (Fibonacci hashing) instead of SipHash.
/// Ids are numbered by siprox, never chosen by a peer, so no key can be crafted to collide;
/// the product's high bits (which pick the shard and the control byte) mix every bit of
/// the id, and its low bits (which pick the bucket) run through every value for
/// consecutive ids.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    /// Not used by `ConnId` (a `u64`); any other input still hashes, 8 bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
}

impl ConnectionTable {
    /// The connection with this id, if open.
    pub fn get(&self, id: ConnId) -> Option<ConnHandle> {
        self.by_id.get(&id).map(|h| h.clone())
    }

    /// The connection to reuse for `key`, if open.
    pub fn find(&self, key: &PeerKey) -> Option<ConnHandle> {
        self.by_peer
            .get(key)
            .map(|h| h.clone())
            .filter(ConnHandle::is_open)
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Registers an accepted connection by id as soon as it exists, still in its
    /// handshake: shutdown drains it (instead of waiting out its handshake) and `tls.list`
    /// shows it (not established). It is reachable by peer only once open ([`Self::open`]).
    pub(crate) fn insert_id(&self, handle: ConnHandle) {
        self.by_id.insert(handle.0.id, handle);
    }

    /// Makes an accepted connection, now open, reachable by its key too (the newest
    /// connection of a peer wins the key: it is the one most likely to be alive).
    pub(crate) fn open(&self, handle: ConnHandle) {
        self.by_id.insert(handle.0.id, handle.clone());
        self.by_peer.insert(handle.0.key.clone(), handle);
    }

    /// The connection for `key`, or the one `open` starts now. Concurrent callers for the
    /// same key get the same connection: the shard stays locked while `open` runs, and
    /// `open` only creates an actor (it never waits), so the section stays short.
    pub(crate) fn find_or_open(
        &self,
        key: PeerKey,
        open: impl FnOnce(&PeerKey) -> ConnHandle,
    ) -> ConnHandle {
        let handle = match self.by_peer.entry(key) {
            Entry::Occupied(mut e) => {
                if e.get().is_open() {
                    return e.get().clone();
                }
                let h = open(e.key());
                e.insert(h.clone());
                h
            }
            Entry::Vacant(v) => {
                let h = open(v.key());
                v.insert(h.clone());
                h
            }
        };
        self.by_id.insert(handle.0.id, handle.clone());
        handle
    }

    /// Unregisters connection `id` (and `key`, if it still points to it).
    pub(crate) fn remove(&self, id: ConnId, key: &PeerKey) {
        self.by_id.remove(&id);
        self.by_peer.remove_if(key, |_, h| h.0.id == id);
    }

    /// Handles of every open connection (for shutdown).
    pub(crate) fn all(&self) -> Vec<ConnHandle> {
        self.by_id.iter().map(|e| e.value().clone()).collect()
    }

    /// What the management RPC lists: every registered connection, by id.
    pub fn infos(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self.by_id.iter().map(|e| e.value().info()).collect();
        v.sort_by_key(|i| i.id.0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash(id: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(ConnId(id))
    }

    #[test]
    fn consecutive_ids_spread_over_shards_and_buckets() {
        let hs: Vec<u64> = (1..=1024).map(hash).collect();
        // dashmap picks the shard from the bits below the top 7 (8 shards: 3 bits).
        let shards: std::collections::HashSet<u64> = hs.iter().map(|h| (h << 7) >> 61).collect();
        assert_eq!(shards.len(), 8);
        // hashbrown picks the bucket from the low bits: 1024 ids, 1024 buckets.
        let buckets: std::collections::HashSet<u64> = hs.iter().map(|h| h & 1023).collect();
        assert_eq!(buckets.len(), 1024);
        let mut h = IdHasher::default();
        7u64.hash(&mut h);
        assert_eq!(h.finish(), hash(7));
    }
}
