//! The `Cluster` actor (control arbiter): shares this node's registrations through Redis and
//! keeps the replica of every other node's (`state::replica`). Three loops, each on its own
//! connection so that none holds up another: the writer (this node's changes, write-behind
//! from the workers' outbox; the whole local store again after an outage), the tail (`XREAD
//! BLOCK` on the change stream into the replica; a `SCAN` resync at start and whenever the
//! stream lost what it had not read), and the heartbeat (this node's liveness key, and the
//! other nodes' keys checked). Must never be awaited by a worker, and never panic on what
//! Redis returns: a value that does not parse is skipped.

pub mod auth;
pub mod control;
mod redis;
pub mod tickets;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::streams::{StreamRangeReply, StreamReadReply};
use ::redis::RedisResult;
use siprox::config::ClusterConfig;
use siprox::registrar::{Binding, LocationStore};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::redis::Conn;
use self::wire::Keys;
use crate::state::location::Location;
use crate::state::replica::{Change, ClusterStore};
use crate::state::{unix_now, Shared};

/// Entries the change stream keeps (`XADD MAXLEN ~`): a node that falls further behind
/// than this resyncs by `SCAN`.
const STREAM_MAXLEN: usize = 100_000;
/// How long one `XREAD` waits for news before the tail checks the stream again.
const TAIL_BLOCK: Duration = Duration::from_millis(1000);
/// Entries read at once.
const TAIL_COUNT: usize = 1000;
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(250);

/// The actor; its loops run on its arbiter as long as the system does.
pub struct Cluster {
    cfg: Arc<ClusterConfig>,
    store: Arc<ClusterStore>,
    queue: Option<mpsc::Receiver<Change>>,
    /// The runtime's state: the flow keys that sign node tokens (`nf=`) are its snapshot's.
    shared: Option<Arc<Shared>>,
    /// Digest replay state to share (`with_auth`).
    auth: Option<auth::AuthShare>,
    /// The session-ticket key ring to keep (`with_tickets`).
    tickets: Option<Arc<tickets::TicketRing>>,
}

impl Cluster {
    /// The cluster actor of `location`, when `[cluster]` is configured.
    pub fn new(location: &Location, cfg: Option<&ClusterConfig>) -> Option<Cluster> {
        let cfg = cfg?;
        let store = location.cluster.clone()?;
        let queue = location
            .cluster_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Some(Cluster {
            cfg: Arc::new(cfg.clone()),
            store,
            queue,
            shared: None,
            auth: None,
            tickets: None,
        })
    }

    /// Sign node tokens with the flow keys of `shared`'s snapshot (without it, bindings
    /// are stored without a token and other nodes cannot route to them).
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Cluster {
        self.shared = Some(shared);
        self
    }

    /// Also share the digest nonce replay state (`cluster::auth`).
    pub fn with_auth(mut self, share: auth::AuthShare) -> Cluster {
        self.auth = Some(share);
        self
    }

    /// Also keep the session-ticket key ring from Redis (`cluster::tickets`).
    pub fn with_tickets(mut self, ring: Arc<tickets::TicketRing>) -> Cluster {
        self.tickets = Some(ring);
        self
    }
}

impl actix::Actor for Cluster {
    type Context = actix::Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        info!(node = %self.cfg.node, redis = ?self.cfg.redis, "cluster: sharing registrations through Redis");
        let keys = Keys {
            prefix: self.cfg.key_prefix.clone(),
        };
        if let Some(rx) = self.queue.take() {
            actix::spawn(writer(
                self.shared.clone(),
                self.cfg.clone(),
                keys.clone(),
                self.store.clone(),
                rx,
            ));
        }
        actix::spawn(tail(self.cfg.clone(), keys.clone(), self.store.clone()));
        actix::spawn(heartbeat(self.cfg.clone(), keys, self.store.clone()));
        if let Some(share) = self.auth.take() {
            auth::spawn(self.cfg.clone(), share);
        }
        if let Some(ring) = self.tickets.take() {
            tickets::spawn(self.cfg.clone(), ring);
        }
    }
}

/// Whether a loop reaches Redis: one log line per change of state, not one per attempt.
struct Link {
    what: &'static str,
    up: Option<bool>,
}

impl Link {
    fn new(what: &'static str) -> Link {
        Link { what, up: None }
    }

    fn up(&mut self) {
        if self.up != Some(true) {
            info!(task = self.what, "cluster: Redis reachable");
        }
        self.up = Some(true);
    }

    fn down(&mut self, e: &dyn std::fmt::Display) {
        if self.up != Some(false) {
            warn!(task = self.what, error = %e, "cluster: Redis unreachable, retrying");
        } else {
            debug!(task = self.what, error = %e, "cluster: Redis still unreachable");
        }
        self.up = Some(false);
    }
}

/// This node's changes to Redis, in order. While Redis is unreachable the queue is drained
/// without writing (counted as deferred): once Redis is back the whole local store is
/// pushed, which covers them, and also a Redis that came back empty.
async fn writer(
    shared: Option<Arc<Shared>>,
    cfg: Arc<ClusterConfig>,
    keys: Keys,
    store: Arc<ClusterStore>,
    mut rx: mpsc::Receiver<Change>,
) {
    let mut link = Link::new("writer");
    let mut conn: Option<Conn> = None;
    // AoRs this node has fields for in Redis: a full push removes the ones it lost.
    let mut written: HashSet<String> = HashSet::new();
    let mut need_full = true;
    let mut seen_drops = 0;
    loop {
        let Some(c) = conn.as_mut() else {
            match redis::connect(&cfg).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    link.down(&e);
                    defer(&store, &mut rx);
                    need_full = true;
                    tokio::time::sleep(RETRY).await;
                }
            }
            continue;
        };
        let drops = store.outbox.dropped.load(Ordering::Relaxed);
        if drops != seen_drops {
            seen_drops = drops;
            need_full = true;
        }
        if need_full {
            // What is queued now is in the local store already.
            while rx.try_recv().is_ok() {}
            match push_all(&shared, &cfg, &keys, &store, c, &mut written).await {
                Ok(n) => {
                    link.up();
                    need_full = false;
                    debug!(aors = n, "cluster: this node's bindings pushed to Redis");
                }
                Err(e) => {
                    link.down(&e);
                    conn = None;
                    tokio::time::sleep(RETRY).await;
                }
            }
            continue;
        }
        let change = tokio::select! {
            c = rx.recv() => c,
            // Wake now and then to see drops even when nothing new is queued.
            () = tokio::time::sleep(cfg.heartbeat.get()) => continue,
        };
        let Some(change) = change else { return };
        if let Err(e) = write(&shared, &cfg, &keys, c, &change, &mut written).await {
            // Lost here, covered by the full push once Redis is back.
            store.outbox.deferred.fetch_add(1, Ordering::Relaxed);
            link.down(&e);
            conn = None;
            need_full = true;
        }
    }
}

/// Empty the queue while Redis is unreachable, counting what was taken.
fn defer(store: &ClusterStore, rx: &mut mpsc::Receiver<Change>) {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    store.outbox.deferred.fetch_add(n, Ordering::Relaxed);
}

/// Every AoR of the local store, and an empty set for each AoR this node wrote before and
/// holds no more. Returns how many AoRs were written.
async fn push_all(
    shared: &Option<Arc<Shared>>,
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
    written: &mut HashSet<String>,
) -> RedisResult<usize> {
    let mut all: Vec<Change> = Vec::new();
    let _ = store.local.for_each(&mut |aor, b| {
        all.push(Change {
            aor: aor.to_owned(),
            bindings: b.to_vec(),
        })
    });
    let held: HashSet<&str> = all.iter().map(|c| c.aor.as_str()).collect();
    let gone: Vec<String> = written
        .iter()
        .filter(|a| !held.contains(a.as_str()))
        .cloned()
        .collect();
    for aor in gone {
        all.push(Change {
            aor,
            bindings: Vec::new(),
        });
    }
    let n = all.len();
    for c in &all {
        write(shared, cfg, keys, conn, c, written).await?;
    }
    Ok(n)
}

/// One AoR's set for this node: stale fields of this node removed, the current ones set,
/// the key's TTL raised to the longest binding, and the change appended to the stream.
/// Not a transaction: in a Redis Cluster the hash and the stream live in different slots.
/// Each field has one writer (this node, in order), so there is no race to lose.
async fn write(
    shared: &Option<Arc<Shared>>,
    cfg: &ClusterConfig,
    keys: &Keys,
    conn: &mut Conn,
    c: &Change,
    written: &mut HashSet<String>,
) -> RedisResult<()> {
    let key = keys.loc(&c.aor);
    let now = unix_now();
    // The keys of the snapshot in force now: a rotation signs the next write.
    let flow_keys = shared
        .as_ref()
        .map(|s| s.snapshot.load().proxy.config().flow_keys.clone());
    let node = cfg.node.as_str();
    let current: Vec<&Binding> = c.bindings.iter().filter(|b| b.expires > now).collect();
    let new: Vec<(String, String)> = current
        .iter()
        .map(|b| {
            (
                wire::field(node, &b.contact),
                wire::encode(b, node, &cfg.advertise, flow_keys.as_ref()),
            )
        })
        .collect();
    let fields: Vec<String> = ::redis::cmd("HKEYS").arg(&key).query_async(conn).await?;
    let stale: Vec<&String> = fields
        .iter()
        .filter(|f| wire::field_node(f) == Some(node) && !new.iter().any(|(n, _)| n == *f))
        .collect();
    if !stale.is_empty() {
        let () = ::redis::cmd("HDEL")
            .arg(&key)
            .arg(&stale)
            .query_async(conn)
            .await?;
    }
    if let Some(longest) = current.iter().map(|b| b.expires).max() {
        let () = ::redis::cmd("HSET")
            .arg(&key)
            .arg(&new)
            .query_async(conn)
            .await?;
        // NX sets a TTL on a new key, GT only ever lengthens it: another node's longer
        // binding in the same hash is never cut short.
        for opt in ["NX", "GT"] {
            let _: i64 = ::redis::cmd("EXPIREAT")
                .arg(&key)
                .arg(longest)
                .arg(opt)
                .query_async(conn)
                .await?;
        }
        written.insert(c.aor.clone());
    } else {
        written.remove(&c.aor);
    }
    let values: Vec<&str> = new.iter().map(|(_, v)| v.as_str()).collect();
    let batch = format!("[{}]", values.join(","));
    let _: String = ::redis::cmd("XADD")
        .arg(keys.changes())
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*")
        .arg("node")
        .arg(node)
        .arg("aor")
        .arg(&c.aor)
        .arg("b")
        .arg(batch)
        .query_async(conn)
        .await?;
    Ok(())
}

/// The change stream into the replica: resync, then tail from the id noted before the
/// scan; on any error or a gap in the stream, again from the start.
async fn tail(cfg: Arc<ClusterConfig>, keys: Keys, store: Arc<ClusterStore>) {
    let mut link = Link::new("tail");
    loop {
        let mut conn = match redis::connect_tail(&cfg, TAIL_BLOCK).await {
            Ok(c) => c,
            Err(e) => {
                link.down(&e);
                store.replica.current.store(false, Ordering::Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let e = match follow(&cfg, &keys, &store, &mut conn, &mut link).await {
            Ok(()) => continue,
            Err(e) => e,
        };
        link.down(&e);
        store.replica.current.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY).await;
    }
}

/// One resync and the tail after it; returns `Ok` when the stream lost entries this node
/// had not read (resync again), an error when Redis failed.
async fn follow(
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
    link: &mut Link,
) -> RedisResult<()> {
    let stream = keys.changes();
    let mut last = newest_id(conn, &stream).await?;
    let n = resync(cfg, keys, store, conn).await?;
    info!(bindings = n, from = %last, "cluster: replica synced from Redis");
    store.replica.current.store(true, Ordering::Relaxed);
    link.up();
    loop {
        if lost_entries(conn, &stream, &last).await? {
            warn!(last = %last, "cluster: the change stream dropped entries not yet read: resync");
            return Ok(());
        }
        let reply: Option<StreamReadReply> = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(TAIL_COUNT)
            .arg("BLOCK")
            .arg(TAIL_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(conn)
            .await?;
        let Some(reply) = reply else { continue };
        for k in reply.keys {
            for entry in k.ids {
                apply(store, &entry);
                last = entry.id;
            }
        }
    }
}

/// One stream entry into the replica (this node's own entries are skipped).
fn apply(store: &ClusterStore, entry: &::redis::streams::StreamId) {
    let (Some(node), Some(aor), Some(batch)) = (
        entry.get::<String>("node"),
        entry.get::<String>("aor"),
        entry.get::<Vec<u8>>("b"),
    ) else {
        debug!(id = %entry.id, "cluster: stream entry without node/aor/b skipped");
        return;
    };
    if node == *store.replica.node {
        return;
    }
    let intern = |n: &str| store.replica.intern(n);
    let Some(mut bindings) = wire::decode_batch(&batch, &intern) else {
        debug!(id = %entry.id, "cluster: stream entry with unreadable bindings skipped");
        return;
    };
    // An entry speaks for its own node only.
    bindings.retain(|b| b.flow.node.as_deref() == Some(node.as_str()));
    store.replica.apply(&aor, &node, bindings);
}

/// The id of the newest entry, or `0-0` for an empty (or missing) stream.
async fn newest_id(conn: &mut Conn, stream: &str) -> RedisResult<String> {
    let r: StreamRangeReply = ::redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(r.ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |e| e.id))
}

/// True when entries after `last` may have been trimmed before this node read them: the
/// oldest entry left is newer than `last` (which was read from the stream: `0-0` means it
/// was empty when noted), or the stream is gone while `last` was read from it (a Redis
/// restarted empty).
async fn lost_entries(conn: &mut Conn, stream: &str, last: &str) -> RedisResult<bool> {
    let r: StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let last = wire::stream_id(last).unwrap_or((0, 0));
    Ok(match r.ids.first() {
        None => last != (0, 0),
        Some(first) => last != (0, 0) && wire::stream_id(&first.id).is_some_and(|f| f > last),
    })
}

/// Every binding hash on every master into the replica, at once. Returns the bindings read.
async fn resync(
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
) -> RedisResult<usize> {
    let mut all: HashMap<String, Vec<Binding>> = HashMap::new();
    let intern = |n: &str| store.replica.intern(n);
    let mut n = 0;
    for mut m in redis::masters(cfg, conn).await? {
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(keys.loc_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut m)
                .await?;
            for key in found {
                let Some(aor) = keys.aor_of(&key) else {
                    continue;
                };
                let fields: HashMap<String, Vec<u8>> = ::redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut m)
                    .await?;
                let v = all.entry(aor.to_owned()).or_default();
                for (field, value) in fields {
                    let Some(b) = wire::decode(&value, &intern) else {
                        continue;
                    };
                    if wire::field_node(&field) == b.flow.node.as_deref() {
                        v.push(b);
                        n += 1;
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    store.replica.replace_all(all);
    Ok(n)
}

/// This node's liveness key every `heartbeat`, and every other node's checked.
async fn heartbeat(cfg: Arc<ClusterConfig>, keys: Keys, store: Arc<ClusterStore>) {
    let mut link = Link::new("heartbeat");
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(cfg.heartbeat.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = conn.as_mut() else {
            match redis::connect(&cfg).await {
                Ok(c) => {
                    conn = Some(c);
                    tick.reset_immediately();
                }
                Err(e) => link.down(&e),
            }
            continue;
        };
        match beat(&cfg, &keys, &store, c).await {
            Ok(()) => link.up(),
            Err(e) => {
                link.down(&e);
                conn = None;
            }
        }
    }
}

async fn beat(
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
) -> RedisResult<()> {
    let ttl = cfg.node_timeout.get().as_millis() as u64;
    let () = ::redis::cmd("SET")
        .arg(keys.node(&cfg.node))
        .arg(&cfg.advertise)
        .arg("PX")
        .arg(ttl)
        .query_async(conn)
        .await?;
    for node in store.replica.nodes() {
        // The time left on its key, not only whether it exists: a lookup then knows when
        // the node dies without waiting for the next heartbeat (see `Replica::heard`).
        let asked = std::time::Instant::now();
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg(keys.node(&node))
            .query_async(conn)
            .await?;
        let left = match pttl {
            // -2: no key (expired or never written); -1: no TTL, which siprox never
            // writes: alive for one more node_timeout, as if just refreshed.
            -2 => None,
            ms if ms < 0 => Some(cfg.node_timeout.get()),
            ms => Some(Duration::from_millis(ms.unsigned_abs())),
        };
        store.replica.heard(&node, left, asked);
    }
    Ok(())
}
