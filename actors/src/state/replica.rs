//! The cluster's side of the location store, as plain data: the [`Replica`] of every other
//! node's bindings (fed by the cluster actor from Redis), the bounded [`Outbox`] of this
//! node's changes on their way to Redis, and the [`ClusterStore`] that the registrar and
//! `lookup()` use: the local store plus the replica. No I/O here and nothing that waits: a
//! worker's save or lookup must never touch Redis or block on the cluster actor.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use siprox::proxy::Transport;
use siprox::registrar::{Binding, LocationStore, MemoryStore, StoreError, UpdateFn, Withheld};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// This node's whole set of bindings for one AoR, after a save or a removal: what the
/// cluster actor writes to Redis. Sets, not deltas, so that applying one twice or after a
/// resync is harmless. Empty: this node holds no binding of `aor` any more.
#[derive(Debug, Clone)]
pub struct Change {
    pub aor: String,
    pub bindings: Vec<Binding>,
}

/// The bindings other nodes own, by AoR. Each binding's `flow.node` names its owner (never
/// this node: the local store is the truth for this node's own phones).
#[derive(Debug)]
pub struct Replica {
    /// This node's name: changes and fields of this node are never applied here.
    pub node: Arc<str>,
    aors: DashMap<Box<str>, Vec<Binding>>,
    /// Which nodes are dead: their bindings are not offered to a lookup. Read on every
    /// lookup, written by the heartbeat loop: swapped whole, never locked.
    dead: ArcSwap<Liveness>,
    /// When each dead node was first seen dead (by [`expire`](Self::expire)): its bindings
    /// are presented as refreshed on schedule until then, and dropped once that schedule
    /// ends. One writer (the expiry timer): swapped whole, never locked.
    died: ArcSwap<HashMap<Arc<str>, i64>>,
    /// One shared name per node, as in the local store.
    names: Mutex<Vec<Arc<str>>>,
    /// The replica follows Redis now (connected and synced). False before the first sync
    /// and while Redis is unreachable: what it holds may be stale.
    pub current: AtomicBool,
    /// The addresses of other nodes' advertise URIs (TLS, IP literal) seen in their
    /// bindings: a connection to one of them is a node-to-node connection and uses the
    /// `[cluster.tls]` domain. Read on each outgoing connect; swapped whole when a node
    /// appears (rarely), never locked.
    peers: ArcSwap<HashMap<SocketAddr, Arc<str>>>,
    /// The same for advertise URIs with a host name (TLS): lowercase name and port. A
    /// connection to one is made with the `[cluster.tls]` domain, and the other node's
    /// certificate is verified against that name too.
    peer_names: ArcSwap<HashMap<(String, u16), Arc<str>>>,
}

/// The host name and port a node's Route names, when it is TLS to a host name (not an IP
/// literal); the name in lowercase, without a trailing dot.
fn route_name(route: &str) -> Option<(String, u16)> {
    let inner = route.trim_start_matches('<');
    let inner = inner.split('>').next().unwrap_or(inner);
    let hop = siprox::script::parse_target(inner).ok()?;
    let tls = hop.secure || hop.transport == Some(Transport::Tls);
    if !tls || hop.host.parse::<IpAddr>().is_ok() || hop.host.starts_with('[') {
        return None;
    }
    Some((
        hop.host.trim_end_matches('.').to_ascii_lowercase(),
        hop.port.unwrap_or(Transport::Tls.default_port()),
    ))
}

/// The address a node's Route (`<sip:10.0.0.1:5071;transport=tls;lr;nf=...>`) names, when
/// it is TLS to an IP literal.
fn route_addr(route: &str) -> Option<SocketAddr> {
    let inner = route.trim_start_matches('<');
    let inner = inner.split('>').next().unwrap_or(inner);
    let hop = siprox::script::parse_target(inner).ok()?;
    let tls = hop.secure || hop.transport == Some(Transport::Tls);
    let ip: IpAddr = hop.host.parse().ok().filter(|_| tls)?;
    Some(SocketAddr::new(
        ip,
        hop.port.unwrap_or(Transport::Tls.default_port()),
    ))
}

impl Replica {
    /// Whether `addr` is another node's advertise address.
    pub fn is_peer(&self, addr: SocketAddr) -> bool {
        self.peers.load().contains_key(&addr)
    }

    /// The node whose advertise address `addr` is (the last one seen there).
    pub fn peer_node(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.peers.load().get(&addr).cloned()
    }

    /// The node whose advertise URI names host `name` and `port` (TLS).
    pub fn peer_node_named(&self, name: &str, port: u16) -> Option<Arc<str>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.peer_names.load().get(&(name, port)).cloned()
    }

    fn note_peers<'b>(&self, bindings: impl Iterator<Item = &'b Binding>) {
        for b in bindings {
            if let (Some(hp), Some(node)) = (
                b.flow.node_route.as_deref().and_then(route_name),
                b.flow.node.clone(),
            ) {
                if self.peer_names.load().get(&hp) != Some(&node) {
                    self.peer_names.rcu(|p| {
                        let mut p = HashMap::clone(p);
                        p.insert(hp.clone(), node.clone());
                        p
                    });
                }
                continue;
            }
            let Some(a) = b.flow.node_route.as_deref().and_then(route_addr) else {
                continue;
            };
            let Some(node) = b.flow.node.clone() else {
                continue;
            };
            if self.peers.load().get(&a) != Some(&node) {
                self.peers.rcu(|p| {
                    let mut p = HashMap::clone(p);
                    p.insert(a, node.clone());
                    p
                });
            }
        }
    }

    pub fn new(node: &str) -> Replica {
        Replica {
            node: node.into(),
            aors: DashMap::new(),
            dead: ArcSwap::from_pointee(Liveness::default()),
            died: ArcSwap::from_pointee(HashMap::new()),
            names: Mutex::new(Vec::new()),
            current: AtomicBool::new(false),
            peers: ArcSwap::from_pointee(HashMap::new()),
            peer_names: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The shared name of `node`.
    pub fn intern(&self, node: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = names.iter().find(|n| ***n == *node) {
            return n.clone();
        }
        let n: Arc<str> = node.into();
        names.push(n.clone());
        n
    }

    /// `node` now holds exactly `bindings` for `aor` (each already naming `node`).
    pub fn apply(&self, aor: &str, node: &str, bindings: Vec<Binding>) {
        if node == &*self.node {
            return;
        }
        self.note_peers(bindings.iter());
        let mut entry = self.aors.entry(aor.into()).or_default();
        entry.retain(|b| b.flow.node.as_deref() != Some(node));
        entry.extend(bindings);
        // Most AoRs hold one binding: no spare capacity of a growing vector, kept per AoR.
        entry.shrink_to_fit();
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.aors.remove_if(aor, |_, v| v.is_empty());
        }
    }

    /// Everything at once, after a resync: what Redis held when it was scanned.
    pub fn replace_all(&self, all: HashMap<String, Vec<Binding>>) {
        self.aors
            .retain(|aor, _| all.get(&**aor).is_some_and(|v| !v.is_empty()));
        for (aor, mut v) in all {
            v.retain(|b| b.flow.node.as_deref() != Some(&*self.node));
            self.note_peers(v.iter());
            if v.is_empty() {
                self.aors.remove(&*aor);
            } else {
                v.shrink_to_fit();
                self.aors.insert(aor.into(), v);
            }
        }
    }

    /// The bindings of `aor` owned by live nodes, each presented as refreshed on schedule
    /// ([`on_schedule`]): a refresh is not announced on the change stream, the owner
    /// announces a binding's removal (unregister, expiry) instead.
    pub fn get(&self, aor: &str) -> Vec<Binding> {
        let Some(v) = self.aors.get(aor) else {
            return Vec::new();
        };
        let dead = self.dead.load();
        let now = crate::state::unix_now();
        v.iter()
            .filter(|b| b.flow.node.as_ref().is_none_or(|n| !dead.contains(n)))
            .map(|b| presented(b, now))
            .collect()
    }

    /// How many bindings of `aor` are held but withheld because their node is dead, and
    /// would be current had it gone on refreshing them until it died (a lookup that finds
    /// nothing else answers 480 rather than 404).
    pub fn withheld(&self, aor: &str, now: i64) -> usize {
        let Some(v) = self.aors.get(aor) else {
            return 0;
        };
        let dead = self.dead.load();
        let died = self.died.load();
        v.iter()
            .filter(|b| {
                b.flow.node.as_ref().is_some_and(|n| {
                    dead.contains(n) && on_schedule(b, died.get(n).copied().unwrap_or(now)) > now
                })
            })
            .count()
    }

    /// Bindings held (of live and dead nodes).
    pub fn len(&self) -> usize {
        self.aors.iter().map(|e| e.value().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.aors.is_empty()
    }

    /// Approximate heap and inline bytes the replica holds: each binding's
    /// `Binding::approx_size`, each AoR's key and vector, and a map slot per AoR (hash,
    /// pointers and the table's spare capacity, taken as 2x the slot). For docs/cluster.md's
    /// memory model; an estimate, not an allocator count.
    pub fn approx_bytes(&self) -> usize {
        let slot = 2
            * (std::mem::size_of::<Box<str>>()
                + std::mem::size_of::<Vec<Binding>>()
                + std::mem::size_of::<u64>());
        self.aors
            .iter()
            .map(|e| {
                slot + e.key().len()
                    + e.value().capacity() * std::mem::size_of::<Binding>()
                    + e.value()
                        .iter()
                        .map(|b| b.approx_size() - std::mem::size_of::<Binding>())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Drop the bindings of dead nodes whose schedule ended: a dead node announces
    /// nothing, so its bindings last as long as they would have had it refreshed them on
    /// schedule until it died, and no longer. A live node's bindings stay until it
    /// announces their removal (it does when one expires there: `ClusterStore::expire`).
    /// Also notes when each dead node was first seen dead.
    pub fn expire(&self, now: i64) -> usize {
        let dead: Vec<Arc<str>> = self.dead.load().dead_now().cloned().collect();
        let died = self.died.load();
        if dead.len() != died.len() || dead.iter().any(|n| !died.contains_key(n)) {
            let next: HashMap<Arc<str>, i64> = dead
                .iter()
                .map(|n| (n.clone(), died.get(n).copied().unwrap_or(now)))
                .collect();
            self.died.store(Arc::new(next));
        }
        let died = self.died.load();
        let mut gone = 0;
        self.aors.retain(|_, v| {
            let before = v.len();
            v.retain(|b| {
                let Some(at) = b.flow.node.as_ref().and_then(|n| died.get(n)) else {
                    return true;
                };
                on_schedule(b, *at) > now
            });
            gone += before - v.len();
            !v.is_empty()
        });
        gone
    }

    /// The nodes that own a binding here.
    pub fn nodes(&self) -> Vec<Arc<str>> {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| **n != self.node)
            .cloned()
            .collect()
    }

    /// Mark `node` dead (its liveness key expired) or alive again.
    pub fn set_alive(&self, node: &Arc<str>, alive: bool) {
        // One writer (the heartbeat loop): load, change a copy, store.
        let mut dead = Liveness::clone(&self.dead.load());
        let changed = if alive {
            dead.until.remove(node);
            dead.down.remove(node)
        } else {
            dead.until.remove(node);
            dead.down.insert(node.clone())
        };
        if changed {
            self.dead.store(Arc::new(dead));
            if alive {
                info!(node = %node, "cluster node alive");
            } else {
                warn!(node = %node, "cluster node dead: its bindings are no longer offered");
            }
        }
    }

    /// Every AoR with its bindings owned by live nodes (`ul.dump`), presented as in
    /// [`get`](Self::get); AoRs whose every binding belongs to a dead node are left out.
    pub fn for_each_live(&self, f: &mut dyn FnMut(&str, &[Binding])) {
        let dead = self.dead.load();
        let now = crate::state::unix_now();
        for e in self.aors.iter() {
            let live: Vec<Binding> = e
                .value()
                .iter()
                .filter(|b| b.flow.node.as_ref().is_none_or(|n| !dead.contains(n)))
                .map(|b| presented(b, now))
                .collect();
            if !live.is_empty() {
                f(e.key(), &live);
            }
        }
    }

    /// True when `node`'s liveness key has expired, or expires now by the last time left
    /// on it that this node read.
    pub fn is_dead(&self, node: &str) -> bool {
        let l = self.dead.load();
        let now = Instant::now();
        l.down.iter().any(|n| **n == *node)
            || l.until.iter().any(|(n, t)| **n == *node && now >= *t)
    }

    /// When `node` counts as dead at the latest (its liveness key's expiry, on this node's
    /// clock), if its key was read alive; `None` if never read or known dead.
    pub fn dead_at(&self, node: &str) -> Option<Instant> {
        let l = self.dead.load();
        if l.down.iter().any(|n| **n == *node) {
            return None;
        }
        l.until
            .iter()
            .find_map(|(n, t)| (**n == *node).then_some(*t))
    }

    /// What the heartbeat loop read of `node`'s liveness key: the time it had left
    /// (`Some`, measured from `asked`, when the command was sent: Redis counts the key's
    /// TTL down on its own clock, so no clock of another node is involved and the
    /// deadline is never later than the key's real expiry), or gone (`None`). A lookup
    /// withholds the node's bindings from that deadline on, without waiting for the next
    /// heartbeat to notice: a node that stopped at T is dead here by T + node_timeout.
    pub fn heard(&self, node: &Arc<str>, left: Option<Duration>, asked: Instant) {
        let Some(left) = left else {
            self.set_alive(node, false);
            return;
        };
        // One writer (the heartbeat loop): load, change a copy, store.
        let mut l = Liveness::clone(&self.dead.load());
        let was_down = l.down.remove(node);
        l.until.insert(node.clone(), asked + left);
        self.dead.store(Arc::new(l));
        if was_down {
            info!(node = %node, "cluster node alive");
        }
    }
}

/// The nodes known dead (liveness key gone) and, for each node whose key was read alive,
/// the instant its key expires unless refreshed. `contains` is what a lookup asks.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    down: HashSet<Arc<str>>,
    until: HashMap<Arc<str>, Instant>,
}

impl Liveness {
    /// True when `node` is dead now: known dead, or past the expiry last read of its key.
    pub fn contains(&self, node: &Arc<str>) -> bool {
        self.down.contains(node) || self.until.get(node).is_some_and(|t| Instant::now() >= *t)
    }

    /// The nodes dead now: known dead, or past the expiry last read of their key.
    pub fn dead_now(&self) -> impl Iterator<Item = &Arc<str>> {
        let now = Instant::now();
        self.down.iter().chain(
            self.until
                .iter()
                .filter(move |(n, t)| now >= **t && !self.down.contains(*n))
                .map(|(n, _)| n),
        )
    }
}

/// The expiry `b` has at `at` if its owner refreshed it on schedule: its last known expiry
/// advanced by whole granted periods (`expires - updated`) until it lies after `at`. A
/// refresh is written to Redis but not announced on the change stream, so a replica's copy
/// of a live owner's binding keeps the expiry of its last real change (or of the last
/// resync, which reads the hash); the owner is the authority on its bindings' lifetime
/// and announces their removal. A binding with no period (never the registrar's) is not
/// advanced.
pub fn on_schedule(b: &Binding, at: i64) -> i64 {
    let period = b.expires - b.updated;
    if b.expires > at || period <= 0 {
        return b.expires;
    }
    b.expires + ((at - b.expires) / period + 1) * period
}

/// `b` as a lookup at `now` sees it: expiry (and write time, which ranks equal q) moved on
/// by its schedule.
fn presented(b: &Binding, now: i64) -> Binding {
    let mut p = b.clone();
    let moved = on_schedule(b, now) - b.expires;
    p.expires += moved;
    p.updated += moved;
    p
}

/// The bounded queue from the workers to the cluster actor. A worker never waits on it: a
/// full queue drops the change, counts it, and the cluster actor re-pushes this node's whole
/// store once it catches up.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Change>,
    /// Changes dropped because the queue was full (or the actor gone).
    pub dropped: AtomicU64,
    /// Changes the cluster actor took while Redis was unreachable and did not write one by
    /// one: the whole local store is pushed instead once Redis is back.
    pub deferred: AtomicU64,
    /// The queue was full at the last attempt: one WARN when it fills, one INFO when it
    /// drains, not one line per dropped change.
    full: AtomicBool,
    /// AoR sets the writer appended to the change stream (real changes, and every AoR of a
    /// full push).
    pub announced: AtomicU64,
    /// AoR sets the writer wrote to Redis without a stream entry: refreshes, which change
    /// nothing another node routes by.
    pub refreshed: AtomicU64,
}

impl Outbox {
    /// A queue of `capacity` changes and its receiving end (for the cluster actor).
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Outbox {
                tx,
                dropped: AtomicU64::new(0),
                deferred: AtomicU64::new(0),
                full: AtomicBool::new(false),
                announced: AtomicU64::new(0),
                refreshed: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Queue `c` without waiting.
    pub fn push(&self, c: Change) {
        match self.tx.try_send(c) {
            Ok(()) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    info!("cluster write queue accepts changes again");
                }
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!(
                        "cluster write queue full (Redis slow or unreachable): changes are \
                         dropped and counted, and this node's bindings re-pushed when it drains"
                    );
                }
            }
        }
    }

    /// The writer wrote a batch: `announced` AoR sets with a stream entry, `refreshed`
    /// without.
    pub fn note_written(&self, announced: u64, refreshed: u64) {
        self.announced.fetch_add(announced, Ordering::Relaxed);
        self.refreshed.fetch_add(refreshed, Ordering::Relaxed);
    }

    /// Changes waiting.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Most changes that can wait.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// The location store of a cluster node: this node's bindings in the local store (the truth
/// for its own phones, written as on a single node), every other node's from the replica.
/// Saves go to the local store and, as a whole set per AoR, to the outbox.
#[derive(Debug)]
pub struct ClusterStore {
    pub local: Arc<MemoryStore>,
    pub replica: Arc<Replica>,
    pub outbox: Outbox,
    /// `Retry-After` of the 503 a lookup answers while the replica is not current.
    pub retry_after: u32,
    /// The digest replay link's drop counter (`cluster::auth::ReplayLink::dropped`), once
    /// the cluster actor shares replay state: read by /metrics.
    pub replay_dropped: std::sync::OnceLock<Arc<AtomicU64>>,
}

impl ClusterStore {
    fn publish(&self, aor: &str) {
        let bindings = self.local.get(aor).unwrap_or_default();
        self.outbox.push(Change {
            aor: aor.to_owned(),
            bindings,
        });
    }
}

impl LocationStore for ClusterStore {
    fn get(&self, aor: &str) -> Result<Vec<Binding>, StoreError> {
        let mut v = self.local.get(aor)?;
        // A replica that is not current (Redis unreachable, or not synced yet) may offer
        // a flow that moved: nothing of it is offered, and `withheld` says why.
        if self.replica.current.load(Ordering::Relaxed) {
            v.extend(self.replica.get(aor));
        }
        Ok(v)
    }

    fn withheld(&self, aor: &str, now: i64) -> Option<Withheld> {
        if !self.replica.current.load(Ordering::Relaxed) {
            return Some(Withheld::Stale {
                retry_after: self.retry_after,
            });
        }
        match self.replica.withheld(aor, now) {
            0 => None,
            bindings => Some(Withheld::NodeDown { bindings }),
        }
    }

    /// Only this node's bindings are handed to `f`: a REGISTER here rewrites what this node
    /// owns, never another node's entries.
    fn update(&self, aor: &str, f: &mut UpdateFn<'_>) -> Result<bool, StoreError> {
        let done = self.local.update(aor, f)?;
        if done {
            self.publish(aor);
        }
        Ok(done)
    }

    fn remove(&self, aor: &str) -> Result<usize, StoreError> {
        let n = self.local.remove(aor)?;
        if n > 0 {
            self.publish(aor);
        }
        Ok(n)
    }

    /// This node's expired bindings go, and each AoR that lost one is published: other
    /// nodes present this node's bindings as refreshed on schedule (refreshes are not
    /// announced), so their removal must be.
    fn expire(&self, now: i64) -> Result<usize, StoreError> {
        let mut lapsed: Vec<String> = Vec::new();
        self.local.for_each(&mut |aor, b| {
            if b.iter().any(|b| b.expires <= now) {
                lapsed.push(aor.to_owned());
            }
        })?;
        let n = self.local.expire(now)?;
        for aor in &lapsed {
            self.publish(aor);
        }
        Ok(n + self.replica.expire(now))
    }

    fn len(&self) -> usize {
        self.local.len()
    }

    /// This node's own bindings (snapshots and `ul.dump` show what this node holds).
    fn for_each(&self, f: &mut dyn FnMut(&str, &[Binding])) -> Result<(), StoreError> {
        self.local.for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siprox::proxy::ConnId;
    use siprox::registrar::Flow;

    fn binding(contact: &str, node: Option<&str>, expires: i64) -> Binding {
        Binding {
            contact: contact.into(),
            expires,
            q: None,
            call_id: "c".into(),
            cseq: 1,
            path: vec![],
            flow: Flow {
                transport: Transport::Tls,
                source: "192.0.2.1:1".parse().unwrap(),
                local: "127.0.0.1:2".parse().unwrap(),
                conn: Some(ConnId(1)),
                node: node.map(Into::into),
                node_route: None,
            },
            instance: None,
            reg_id: None,
            user_agent: None,
            updated: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (o, mut rx) = Outbox::new(2);
        for _ in 0..3 {
            o.push(Change {
                aor: "a".into(),
                bindings: vec![],
            });
        }
        assert_eq!(o.queued(), 2);
        assert_eq!(o.dropped.load(Ordering::Relaxed), 1);
        assert!(rx.try_recv().is_ok());
        o.push(Change {
            aor: "a".into(),
            bindings: vec![],
        });
        assert_eq!(o.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn each_node_replaces_only_its_own_bindings() {
        let r = Replica::new("me");
        r.apply("alice", "b", vec![binding("sip:1", Some("b"), 100)]);
        r.apply("alice", "c", vec![binding("sip:2", Some("c"), 100)]);
        r.apply("alice", "me", vec![binding("sip:3", Some("me"), 100)]);
        assert_eq!(r.get("alice").len(), 2);
        r.apply("alice", "b", vec![]);
        let left = r.get("alice");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].contact, "sip:2");
        r.set_alive(&r.intern("c"), false);
        assert!(r.get("alice").is_empty());
        assert_eq!(r.len(), 1);
        r.set_alive(&r.intern("c"), true);
        assert_eq!(r.get("alice").len(), 1);
        // A live owner's binding is presented as refreshed on schedule, never dropped by
        // time: the owner announces its removal.
        assert_eq!(r.expire(100), 0);
        assert_eq!(r.get("alice").len(), 1);
        r.apply("alice", "c", vec![]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_live_owners_binding_is_presented_on_schedule_and_a_dead_ones_until_its_schedule_ends() {
        let mut b = binding("sip:1", Some("b"), 1_000);
        b.updated = 400; // granted 600 s
        assert_eq!(on_schedule(&b, 999), 1_000);
        assert_eq!(on_schedule(&b, 1_000), 1_600);
        assert_eq!(on_schedule(&b, 2_300), 2_800);
        let r = Replica::new("me");
        r.apply("alice", "b", vec![b]);
        let now = crate::state::unix_now();
        let got = r.get("alice");
        assert!(got[0].expires > now, "presented as current: {got:?}");
        assert_eq!(got[0].expires - got[0].updated, 600, "the same period");
        // b dies now: withheld, then dropped once its schedule ends (at most one period).
        r.set_alive(&r.intern("b"), false);
        assert_eq!(r.expire(now), 0);
        assert_eq!(r.withheld("alice", now), 1);
        assert_eq!(r.withheld("alice", now + 600), 0);
        assert_eq!(r.expire(now + 600), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn a_node_is_dead_from_the_expiry_last_read_without_another_heartbeat() {
        let r = Replica::new("me");
        r.apply("alice", "b", vec![binding("sip:1", Some("b"), i64::MAX)]);
        let b = r.intern("b");
        let now = Instant::now();
        r.heard(&b, Some(Duration::from_secs(60)), now);
        assert_eq!(r.get("alice").len(), 1);
        assert_eq!(r.dead_at("b"), Some(now + Duration::from_secs(60)));
        // The key had no time left when read: dead at once, with no further read.
        r.heard(&b, Some(Duration::ZERO), now);
        assert!(r.is_dead("b"));
        assert!(r.get("alice").is_empty());
        assert_eq!(r.withheld("alice", 0), 1);
        // Refreshed: alive again; gone: dead with no deadline left.
        r.heard(&b, Some(Duration::from_secs(60)), Instant::now());
        assert!(!r.is_dead("b"));
        r.heard(&b, None, Instant::now());
        assert!(r.is_dead("b"));
        assert_eq!(r.dead_at("b"), None);
    }

    #[test]
    fn other_nodes_tls_addresses_are_peers() {
        let r = Replica::new("me");
        let mut b = binding("sip:1", Some("b"), 100);
        b.flow.node_route = Some("<sip:10.0.0.2:5071;transport=tls;lr;nf=1.tls.00>".into());
        let mut c = binding("sip:2", Some("c"), 100);
        c.flow.node_route = Some("<sip:10.0.0.3:5060;lr;nf=1.tls.00>".into());
        r.apply("alice", "b", vec![b]);
        r.apply("bob", "c", vec![c]);
        assert!(r.is_peer("10.0.0.2:5071".parse().unwrap()));
        assert_eq!(
            r.peer_node("10.0.0.2:5071".parse().unwrap()).as_deref(),
            Some("b")
        );
        assert!(
            !r.is_peer("10.0.0.3:5060".parse().unwrap()),
            "clear text: not TLS"
        );
        assert_eq!(
            route_addr("<sips:10.0.0.4;lr>"),
            "10.0.0.4:5061".parse().ok()
        );
        assert_eq!(route_addr("<sips:node4.example;lr>"), None);
        let mut d = binding("sip:3", Some("d"), 100);
        d.flow.node_route = Some("<sips:Node4.Example.:5071;lr;nf=1.tls.00>".into());
        r.apply("carol", "d", vec![d]);
        assert_eq!(
            r.peer_node_named("node4.example", 5071).as_deref(),
            Some("d")
        );
        assert_eq!(r.peer_node_named("node4.example", 5061), None);
    }

    #[test]
    fn a_resync_replaces_everything_but_this_nodes_own() {
        let r = Replica::new("me");
        r.apply("old", "b", vec![binding("sip:1", Some("b"), 100)]);
        let mut all = HashMap::new();
        all.insert(
            "new".to_owned(),
            vec![
                binding("sip:2", Some("b"), 100),
                binding("sip:3", Some("me"), 100),
            ],
        );
        r.replace_all(all);
        assert!(r.get("old").is_empty());
        assert_eq!(r.get("new").len(), 1);
    }
}
