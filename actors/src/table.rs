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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use siprox::proxy::{ConnId, Transport};
use siprox::tls::TlsFacts;

use crate::connection::{Close, CloseReason, Connection, Enqueue};

/// What identifies a reusable connection: transport, the peer's address, and for outgoing
/// TLS the name its certificate was verified against (a connection verified for one name
/// must not carry traffic meant for another).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub server_name: Option<Arc<str>>,
}

/// The part of a connection's write queue that senders on other threads see (and the few
/// read-only facts the management RPC lists).
#[derive(Debug)]
pub struct WriteQueue {
    /// Bytes enqueued and not yet written: senders add, the connection subtracts what it
    /// writes. Checked by senders, so a flood is refused before it costs memory.
    pub(crate) bytes: AtomicUsize,
    /// Connected (and handshaken). Before that a full queue is not the peer's fault: the
    /// excess message is refused, the connection is kept.
    pub(crate) established: AtomicBool,
    /// When the connection was created (`tls.list` age).
    pub(crate) since: Instant,
    /// The connection's TLS facts, set once after the handshake (`tls.list`); empty for TCP
    /// or until the connection sets it.
    pub(crate) tls: OnceLock<Arc<TlsFacts>>,
}

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue {
            bytes: AtomicUsize::new(0),
            established: AtomicBool::new(false),
            since: Instant::now(),
            tls: OnceLock::new(),
        }
    }
}

impl WriteQueue {
    /// Records the connection's TLS facts (first call wins) for `tls.list`.
    pub(crate) fn set_tls_facts(&self, facts: Arc<TlsFacts>) {
        let _ = self.tls.set(facts);
    }
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
pub struct ConnHandle {
    pub(crate) id: ConnId,
    addr: Addr<Connection>,
    queued: Arc<WriteQueue>,
    max_queue: usize,
    /// Opened by siprox to a next hop (see [`ConnHandle::outgoing`]).
    outgoing: bool,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("queued", &self.queued.bytes.load(Ordering::Relaxed))
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
    pub(crate) fn new(
        id: ConnId,
        addr: Addr<Connection>,
        queued: Arc<WriteQueue>,
        max_queue: usize,
    ) -> ConnHandle {
        ConnHandle {
            id,
            addr,
            queued,
            max_queue,
            outgoing: false,
        }
    }

    /// A connection siprox opened to a next hop: shared by every caller, so a full queue
    /// refuses the message (a burst) instead of closing the connection for everyone; a
    /// next hop that stops reading still loses it after `send_timeout`.
    pub(crate) fn outgoing(mut self) -> ConnHandle {
        self.outgoing = true;
        self
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// True while the connection's actor runs.
    pub fn is_open(&self) -> bool {
        self.addr.connected()
    }

    /// Enqueues `bytes` on the connection. Never waits: over the queue bound the connection
    /// is closed (a peer that lets that much pile up is not reading).
    pub fn send(&self, bytes: Bytes) -> Result<(), SendError> {
        if !self.addr.connected() {
            return Err(SendError::Closed);
        }
        let len = bytes.len();
        let before = self.queued.bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.max_queue {
            self.queued.bytes.fetch_sub(len, Ordering::AcqRel);
            if !self.queued.established.load(Ordering::Acquire) || self.outgoing {
                return Err(SendError::Backlogged);
            }
            self.addr.do_send(Close(CloseReason::WriteQueueFull));
            return Err(SendError::QueueFull);
        }
        // do_send ignores the mailbox capacity on purpose: the byte bound above is the bound.
        self.addr.do_send(Enqueue(bytes));
        Ok(())
    }

    pub(crate) fn addr(&self) -> &Addr<Connection> {
        &self.addr
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Relaxed)
    }

    /// What the management RPC shows about this connection (`key`: its table key).
    pub fn info(&self, key: &PeerKey, outgoing: bool) -> ConnInfo {
        ConnInfo {
            id: self.id,
            transport: key.transport,
            peer: key.addr,
            outgoing,
            server_name: key.server_name.clone(),
            age: self.queued.since.elapsed(),
            queued_bytes: self.queued_bytes(),
            established: self.queued.established.load(Ordering::Acquire),
            tls: self.queued.tls.get().cloned(),
        }
    }

    /// Closes the connection now, discarding its queue (`tls.kill`).
    pub fn close(&self) {
        self.addr.do_send(Close(CloseReason::Shutdown));
    }
}

/// A `by_id` entry: the handle, its key and direction (for listing).
#[derive(Debug, Clone)]
struct IdEntry {
    handle: ConnHandle,
    key: PeerKey,
    outgoing: bool,
}

/// Every open connection, by id and by [`PeerKey`].
#[derive(Debug, Default)]
pub struct ConnectionTable {
    by_id: DashMap<ConnId, IdEntry>,
    by_peer: DashMap<PeerKey, ConnHandle>,
}

impl ConnectionTable {
    /// The connection with this id, if open.
    pub fn get(&self, id: ConnId) -> Option<ConnHandle> {
        self.by_id.get(&id).map(|e| e.handle.clone())
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

    /// Registers an open connection under its id and `key` (the newest connection of a peer
    /// wins the key: it is the one most likely to be alive).
    pub(crate) fn insert(&self, key: PeerKey, handle: ConnHandle) {
        self.by_id.insert(
            handle.id,
            IdEntry {
                handle: handle.clone(),
                key: key.clone(),
                outgoing: false,
            },
        );
        self.by_peer.insert(key, handle);
    }

    /// The connection for `key`, or the one `open` starts now. Concurrent callers for the
    /// same key get the same connection: the shard stays locked while `open` runs, and
    /// `open` only creates an actor (it never waits), so the section stays short.
    pub(crate) fn find_or_open(
        &self,
        key: PeerKey,
        open: impl FnOnce(&PeerKey) -> ConnHandle,
    ) -> ConnHandle {
        let (handle, key) = match self.by_peer.entry(key) {
            Entry::Occupied(mut e) => {
                if e.get().is_open() {
                    return e.get().clone();
                }
                let h = open(e.key());
                let k = e.key().clone();
                e.insert(h.clone());
                (h, k)
            }
            Entry::Vacant(v) => {
                let h = open(v.key());
                let k = v.key().clone();
                v.insert(h.clone());
                (h, k)
            }
        };
        self.by_id.insert(
            handle.id,
            IdEntry {
                handle: handle.clone(),
                key,
                outgoing: true,
            },
        );
        handle
    }

    /// Unregisters connection `id` (and `key`, if it still points to it).
    pub(crate) fn remove(&self, id: ConnId, key: &PeerKey) {
        self.by_id.remove(&id);
        self.by_peer.remove_if(key, |_, h| h.id == id);
    }

    /// Handles of every open connection (for shutdown).
    pub(crate) fn all(&self) -> Vec<ConnHandle> {
        self.by_id
            .iter()
            .map(|e| e.value().handle.clone())
            .collect()
    }

    /// What the management RPC lists: every registered connection, by id.
    pub fn infos(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .by_id
            .iter()
            .map(|e| e.value().handle.info(&e.value().key, e.value().outgoing))
            .collect();
        v.sort_by_key(|i| i.id.0);
        v
    }
}
