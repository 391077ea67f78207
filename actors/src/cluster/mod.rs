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
        let _ = self.store.replay_dropped.set(share.dropped.clone());
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

/// Changes written in one pipelined round trip.
const BATCH: usize = 256;

/// What this node holds in Redis, per AoR: its fields in the AoR's hash, each with the
/// routing fingerprint (`wire::routing_fingerprint`) last announced on the change stream
/// (0: not known, so the next write announces it). Kept in memory so that the steady state
/// never reads before it writes; read with `HKEYS` only by the full push after connecting.
type Written = HashMap<String, Vec<(String, u64)>>;

/// This node's changes to Redis, in order, up to [`BATCH`] at once in one pipelined round
/// trip. While Redis is unreachable the queue is drained without writing (counted as
/// deferred): once Redis is back the whole local store is pushed, which covers them, and
/// also a Redis that came back empty.
async fn writer(
    shared: Option<Arc<Shared>>,
    cfg: Arc<ClusterConfig>,
    keys: Keys,
    store: Arc<ClusterStore>,
    mut rx: mpsc::Receiver<Change>,
) {
    let mut link = Link::new("writer");
    let mut conn: Option<Conn> = None;
    let mut written: Written = HashMap::new();
    let mut need_full = true;
    let mut seen_drops = 0;
    let mut batch: Vec<Change> = Vec::with_capacity(BATCH);
    let mut checked = tokio::time::Instant::now();
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
        if !need_full && checked.elapsed() >= cfg.heartbeat.get() {
            // A Redis that restarted empty between two writes (the connection reconnects
            // by itself, so no write need fail) lost this node's fields: push them again.
            checked = tokio::time::Instant::now();
            match ::redis::cmd("EXISTS")
                .arg(keys.pushed(&cfg.node))
                .query_async::<bool>(c)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    info!("cluster: Redis lost this node's bindings (restarted empty?): pushing them again");
                    need_full = true;
                }
                Err(e) => {
                    link.down(&e);
                    conn = None;
                    need_full = true;
                    continue;
                }
            }
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
        batch.clear();
        batch.push(change);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let taken = batch.len() as u64;
        let changes = last_per_aor(&mut batch);
        if let Err(e) = write_batch(
            &shared,
            &cfg,
            &keys,
            &store,
            c,
            changes,
            &mut written,
            false,
        )
        .await
        {
            // Lost here, covered by the full push once Redis is back.
            store.outbox.deferred.fetch_add(taken, Ordering::Relaxed);
            link.down(&e);
            conn = None;
            need_full = true;
        }
    }
}

/// The last change of each AoR in `batch`, in the order of those last changes: a change is
/// the AoR's whole set for this node, so an earlier one of the same AoR says nothing more.
fn last_per_aor(batch: &mut Vec<Change>) -> Vec<Change> {
    let mut seen: HashSet<String> = HashSet::with_capacity(batch.len());
    let mut out: Vec<Change> = Vec::with_capacity(batch.len());
    while let Some(c) = batch.pop() {
        if seen.insert(c.aor.clone()) {
            out.push(c);
        }
    }
    out.reverse();
    out
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
/// holds no more; each announced on the stream. This node's fields of those AoRs are read
/// first (`HKEYS`): Redis may have restarted empty, or hold fields this node's memory lost.
/// Returns how many AoRs were written.
async fn push_all(
    shared: &Option<Arc<Shared>>,
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
    written: &mut Written,
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
        .keys()
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
    let node = cfg.node.as_str();
    while !all.is_empty() {
        let chunk: Vec<Change> = all.drain(..all.len().min(BATCH)).collect();
        let reads: Vec<Vec<::redis::Cmd>> = chunk
            .iter()
            .map(|c| {
                let mut hkeys = ::redis::cmd("HKEYS");
                hkeys.arg(keys.loc(&c.aor));
                vec![hkeys]
            })
            .collect();
        let replies = run(conn, reads).await?;
        for (c, reply) in chunk.iter().zip(replies) {
            let fields: Vec<String> = reply
                .into_iter()
                .next()
                .and_then(|v| ::redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let mine = fields
                .into_iter()
                .filter(|f| wire::field_node(f) == Some(node))
                .map(|f| (f, 0))
                .collect();
            written.insert(c.aor.clone(), mine);
        }
        write_batch(shared, cfg, keys, store, conn, chunk, written, true).await?;
    }
    let () = ::redis::cmd("SET")
        .arg(keys.pushed(&cfg.node))
        .arg(unix_now())
        .query_async(conn)
        .await?;
    Ok(n)
}

/// Groups of commands in one round trip; each group's keys are in one Redis Cluster slot.
/// On one Redis: one pipeline. On a Redis Cluster, whose connection refuses a pipeline
/// across slots: one pipeline per group, all sent at once on clones of the connection
/// (multiplexed). Returns each group's replies, in order; any error fails the whole.
async fn run(
    conn: &mut Conn,
    groups: Vec<Vec<::redis::Cmd>>,
) -> RedisResult<Vec<Vec<::redis::Value>>> {
    if let Conn::Cluster(cc) = conn {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let mut c = cc.clone();
                let mut p = ::redis::pipe();
                for cmd in g {
                    p.add_command(cmd);
                }
                tokio::spawn(async move { p.query_async::<Vec<::redis::Value>>(&mut c).await })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let r = h.await.map_err(|e| {
                ::redis::RedisError::from((
                    ::redis::ErrorKind::Io,
                    "cluster write task",
                    e.to_string(),
                ))
            })?;
            out.push(r?);
        }
        return Ok(out);
    }
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let mut p = ::redis::pipe();
    for cmd in groups.into_iter().flatten() {
        p.add_command(cmd);
    }
    if p.is_empty() {
        return Ok(sizes.iter().map(|_| Vec::new()).collect());
    }
    let mut replies: Vec<::redis::Value> = p.query_async(conn).await?;
    let mut out = Vec::with_capacity(sizes.len());
    for n in sizes {
        let rest = replies.split_off(n.min(replies.len()));
        out.push(std::mem::replace(&mut replies, rest));
    }
    Ok(out)
}

/// Several AoRs' sets for this node in one round trip. Per AoR: this node's fields that
/// went (known from `written`, never read back here) removed, the current ones set, the
/// key's TTL raised to the longest binding; and an entry appended to the change stream
/// only when something another node routes by changed (`wire::routing_fingerprint`), or
/// with `announce_all`. A refresh (only the expiry, CSeq or Call-ID moved) updates the hash
/// and its TTL and nothing else: replicas present a live owner's binding as refreshed on
/// schedule until the owner announces its removal (`Replica::get`). Not a transaction:
/// in a Redis Cluster the hash and the stream live in different slots. Each field has one
/// writer (this node, in order), so there is no race to lose. `written` is updated only
/// when Redis took the whole batch.
#[allow(clippy::too_many_arguments)]
async fn write_batch(
    shared: &Option<Arc<Shared>>,
    cfg: &ClusterConfig,
    keys: &Keys,
    store: &ClusterStore,
    conn: &mut Conn,
    changes: Vec<Change>,
    written: &mut Written,
    announce_all: bool,
) -> RedisResult<()> {
    let now = unix_now();
    // The keys of the snapshot in force now: a rotation signs the next write (and, since
    // the token changes, announces it).
    let flow_keys = shared
        .as_ref()
        .map(|s| s.snapshot.load().proxy.config().flow_keys.clone());
    let node = cfg.node.as_str();
    let mut groups: Vec<Vec<::redis::Cmd>> = Vec::with_capacity(changes.len() + 1);
    let mut entries: Vec<::redis::Cmd> = Vec::new();
    let mut next: Vec<(String, Vec<(String, u64)>)> = Vec::with_capacity(changes.len());
    let mut refreshes = 0;
    for c in changes {
        let key = keys.loc(&c.aor);
        let current: Vec<&Binding> = c.bindings.iter().filter(|b| b.expires > now).collect();
        let mut fields: Vec<(String, u64)> = Vec::with_capacity(current.len());
        let mut values: Vec<String> = Vec::with_capacity(current.len());
        for b in &current {
            let nf = wire::node_token(b, node, flow_keys.as_ref());
            fields.push((
                wire::field(node, &b.contact),
                wire::routing_fingerprint(b, nf.as_deref()),
            ));
            values.push(wire::encode_with(b, node, &cfg.advertise, nf));
        }
        let before = written.get(&c.aor);
        let mut cmds = Vec::new();
        let stale: Vec<&str> = before
            .into_iter()
            .flatten()
            .filter(|(f, _)| !fields.iter().any(|(n, _)| n == f))
            .map(|(f, _)| f.as_str())
            .collect();
        if !stale.is_empty() {
            let mut hdel = ::redis::cmd("HDEL");
            hdel.arg(&key).arg(&stale);
            cmds.push(hdel);
        }
        if let Some(longest) = current.iter().map(|b| b.expires).max() {
            let mut hset = ::redis::cmd("HSET");
            hset.arg(&key);
            for ((f, _), v) in fields.iter().zip(&values) {
                hset.arg(f).arg(v);
            }
            cmds.push(hset);
            // NX sets a TTL on a new key, GT only ever lengthens it: another node's longer
            // binding in the same hash is never cut short.
            for opt in ["NX", "GT"] {
                let mut exp = ::redis::cmd("EXPIREAT");
                exp.arg(&key).arg(longest).arg(opt);
                cmds.push(exp);
            }
        }
        let changed = match before {
            None => !fields.is_empty(),
            Some(b) => !same_fields(b, &fields),
        };
        if changed || (announce_all && (before.is_some() || !fields.is_empty())) {
            let mut xadd = ::redis::cmd("XADD");
            xadd.arg(keys.changes())
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("node")
                .arg(node)
                .arg("aor")
                .arg(&c.aor)
                .arg("b")
                .arg(format!("[{}]", values.join(",")));
            entries.push(xadd);
        } else if !fields.is_empty() {
            refreshes += 1;
        }
        if !cmds.is_empty() {
            groups.push(cmds);
        }
        next.push((c.aor, fields));
    }
    let announced = entries.len() as u64;
    if !entries.is_empty() {
        groups.push(entries);
    }
    run(conn, groups).await?;
    for (aor, fields) in next {
        if fields.is_empty() {
            written.remove(&aor);
        } else {
            written.insert(aor, fields);
        }
    }
    store.outbox.note_written(announced, refreshes);
    Ok(())
}

/// Whether two sets of (field, fingerprint) are the same, in any order.
fn same_fields(a: &[(String, u64)], b: &[(String, u64)]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_the_last_change_of_each_aor_in_order() {
        let c = |aor: &str, n: usize| Change {
            aor: aor.to_owned(),
            bindings: Vec::with_capacity(n),
        };
        let mut batch = vec![c("a", 1), c("b", 1), c("a", 2), c("c", 1), c("b", 3)];
        let out = last_per_aor(&mut batch);
        let got: Vec<(&str, usize)> = out
            .iter()
            .map(|c| (c.aor.as_str(), c.bindings.capacity()))
            .collect();
        assert_eq!(got, vec![("a", 2), ("c", 1), ("b", 3)]);
        assert!(batch.is_empty());
    }

    #[test]
    fn the_same_fields_in_any_order_are_the_same_set() {
        let f = |s: &str, n: u64| (s.to_owned(), n);
        assert!(same_fields(
            &[f("x", 1), f("y", 2)],
            &[f("y", 2), f("x", 1)]
        ));
        assert!(!same_fields(&[f("x", 1)], &[f("x", 2)]));
        assert!(!same_fields(&[f("x", 1)], &[f("x", 1), f("y", 2)]));
        assert!(same_fields(&[], &[]));
    }
}
