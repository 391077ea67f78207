//! Operating a cluster through Redis: the member list (`cluster.nodes`: each node publishes
//! its advertise URI, bindings and connections with every heartbeat, and reads everyone's
//! back, alive or dead by their liveness key) and the cluster-wide reload (a request
//! appended to a control stream that every node tails; each node reloads its own conf.d and
//! pushes its result onto the request's reply list). Runs on the control arbiter, never on
//! a worker; must never panic on what Redis returns (an entry that does not parse is
//! skipped) and never wait on Redis without a bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::streams::StreamReadReply;
use ::redis::RedisResult;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use siprox::config::ClusterConfig;
use siprox::registrar::LocationStore;
use tracing::{debug, info, warn};

use super::redis::{self as conn, Conn};
use super::wire::Keys;
use super::Link;
use crate::state::messages::{Reload, ReloadCause, ReloadOutcome};
use crate::state::replica::ClusterStore;
use crate::state::Shared;

/// A member's entry that has not been refreshed for this long is removed from the list (a
/// node that was shut down for good); until then it is shown as dead.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Requests the control stream keeps (`XADD MAXLEN ~`): requests are rare and answered in
/// seconds, so this only bounds the key.
const CTL_MAXLEN: usize = 1000;
/// How long a reply list lives: the requester has given up well before.
const REPLY_TTL: Duration = Duration::from_secs(60);
/// How long the control tail's `XREAD` waits for a request before it checks again.
const CTL_BLOCK: Duration = Duration::from_millis(1000);
/// The longest a cluster-wide reload waits for the nodes' answers (and the default).
pub const MAX_RELOAD_WAIT: Duration = Duration::from_secs(60);
pub const DEFAULT_RELOAD_WAIT: Duration = Duration::from_secs(8);

/// One member as this node last read it from Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node: String,
    pub advertise: String,
    /// Unix milliseconds of its last published heartbeat.
    pub last_heartbeat_ms: i64,
    /// Its liveness key exists (it beat within `node_timeout`).
    pub alive: bool,
    /// Its own bindings and open TCP/TLS connections at that heartbeat.
    pub bindings: u64,
    pub connections: u64,
    /// This node.
    pub this: bool,
}

/// What a node publishes with each heartbeat (JSON in the members hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Published {
    advertise: String,
    at_ms: i64,
    bindings: u64,
    connections: u64,
}

/// The cluster's control side of one node: the member list as last read, and the requests
/// of cluster-wide reloads.
pub struct Control {
    cfg: Arc<ClusterConfig>,
    keys: Keys,
    shared: Arc<Shared>,
    store: Arc<ClusterStore>,
    members: ArcSwap<Vec<Member>>,
    /// Unix milliseconds of the last successful read of the member list (0: never).
    pub read_at_ms: AtomicU64,
    /// The member list follows Redis now (the last read succeeded).
    pub current: AtomicBool,
    next_request: AtomicU64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("node", &self.cfg.node)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Control {
    /// Starts the member loop and the control tail on the current (control) arbiter.
    /// `None` when this runtime is not a cluster node.
    /// `base`: what `[cluster.redis_tls]` paths are relative to.
    pub fn start(shared: &Arc<Shared>, base: &std::path::Path) -> Option<Arc<Control>> {
        let cfg = shared
            .snapshot
            .load()
            .config
            .cluster
            .as_ref()?
            .with_base(base);
        let store = shared.location.get()?.cluster.clone()?;
        let c = Arc::new(Control {
            keys: Keys {
                prefix: cfg.key_prefix.clone(),
            },
            cfg: Arc::new(cfg),
            shared: shared.clone(),
            store,
            members: ArcSwap::from_pointee(Vec::new()),
            read_at_ms: AtomicU64::new(0),
            current: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
        });
        actix::spawn(members_loop(c.clone()));
        actix::spawn(control_tail(c.clone()));
        Some(c)
    }

    /// The members as last read (sorted by name).
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.load_full()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// The cluster's store (local and replica), for the metrics.
    pub fn store(&self) -> &Arc<ClusterStore> {
        &self.store
    }

    fn members_key(&self) -> String {
        format!("{}:members", self.keys.prefix)
    }

    fn ctl_key(&self) -> String {
        format!("{}:ctl", self.keys.prefix)
    }

    /// Asks every live node (this one included) to reload its own conf.d, and waits at most
    /// `wait` for their results. `what` is `cfg` or `tls` (both re-read conf.d and the TLS
    /// material; the registry rebuilds what changed), or `dry_run` (each node reads and
    /// builds, publishes nothing, and answers what it would do). Never fails: an
    /// unreachable Redis is an answer too (`error`).
    pub async fn reload_cluster(self: Arc<Self>, what: &'static str, wait: Duration) -> Value {
        let wait = wait.min(MAX_RELOAD_WAIT);
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", self.cfg.node, now_ms());
        let reply = format!("{}:ctl:r:{{{id}}}", self.keys.prefix);
        let mut expected: Vec<String> = self
            .members()
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.node.clone())
            .collect();
        if !expected.contains(&self.cfg.node) {
            expected.push(self.cfg.node.clone());
        }
        expected.sort();
        let mut answers: BTreeMap<String, Value> = BTreeMap::new();
        let started = Instant::now();
        let fields = [("reload", what)];
        let res = self
            .request_and_collect(&id, &fields, &reply, wait, &expected, &mut answers)
            .await;
        let mut nodes: Vec<Value> = Vec::new();
        for node in &expected {
            nodes.push(answers.remove(node).unwrap_or_else(|| {
                json!({"node": node, "result": "no answer",
                       "errors": [format!("no answer within {} s", wait.as_secs_f32())]})
            }));
        }
        // Nodes this one did not know alive, that answered anyway.
        nodes.extend(answers.into_values());
        let mut out = json!({
            "request": id,
            "reload": what,
            "waited_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "nodes": nodes,
        });
        if let (Err(e), Some(o)) = (res, out.as_object_mut()) {
            o.insert(
                "error".to_owned(),
                Value::from(format!(
                    "Redis: {e} (no node was asked, or not every answer read)"
                )),
            );
        }
        info!(request = %id, reload = what, "cluster-wide reload requested");
        out
    }

    /// Asks the owners of `aor`'s bindings (`nodes`) to remove theirs (`ul.rm` on each),
    /// through the control stream, and waits at most `wait` for their results: one entry per
    /// node, `{node, result: "ok", removed}` or `{node, result: "no answer"}`.
    pub async fn remove_elsewhere(
        self: Arc<Self>,
        aor: String,
        nodes: Vec<String>,
        wait: Duration,
    ) -> Vec<Value> {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", self.cfg.node, now_ms());
        let reply = format!("{}:ctl:r:{{{id}}}", self.keys.prefix);
        let to = nodes.join(",");
        let fields = [("op", "ul.rm"), ("aor", aor.as_str()), ("to", to.as_str())];
        let mut answers: BTreeMap<String, Value> = BTreeMap::new();
        let res = self
            .request_and_collect(&id, &fields, &reply, wait, &nodes, &mut answers)
            .await;
        info!(request = %id, aor = %aor, nodes = %to, "ul.rm forwarded to the owning nodes");
        nodes
            .iter()
            .map(|node| {
                answers.remove(node).unwrap_or_else(|| {
                    let why = match &res {
                        Err(e) => format!("Redis: {e}"),
                        Ok(()) => format!("no answer within {} s", wait.as_secs_f32()),
                    };
                    json!({"node": node, "result": "no answer", "errors": [why]})
                })
            })
            .collect()
    }

    async fn request_and_collect(
        &self,
        id: &str,
        fields: &[(&str, &str)],
        reply: &str,
        wait: Duration,
        expected: &[String],
        answers: &mut BTreeMap<String, Value>,
    ) -> RedisResult<()> {
        let mut c = conn::connect(&self.cfg).await?;
        let mut xadd = ::redis::cmd("XADD");
        xadd.arg(self.ctl_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(CTL_MAXLEN)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("from")
            .arg(&self.cfg.node)
            .arg("reply")
            .arg(reply);
        for (k, v) in fields {
            xadd.arg(*k).arg(*v);
        }
        let _: String = xadd.query_async(&mut c).await?;
        let deadline = Instant::now() + wait;
        while expected.iter().any(|n| !answers.contains_key(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A short BLPOP, well inside the connection's response timeout.
            let block = left.min(Duration::from_millis(500)).as_secs_f64().max(0.01);
            let got: Option<(String, Vec<u8>)> = ::redis::cmd("BLPOP")
                .arg(reply)
                .arg(block)
                .query_async(&mut c)
                .await?;
            let Some((_, raw)) = got else { continue };
            let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            if let Some(node) = v.get("node").and_then(Value::as_str) {
                answers.insert(node.to_owned(), v.clone());
            }
        }
        Ok(())
    }
}

/// This node's entry in the members hash every `heartbeat`, and everyone's read back.
async fn members_loop(ctl: Arc<Control>) {
    let mut link = Link::new("members");
    let mut c: Option<Conn> = None;
    let mut tick = tokio::time::interval(ctl.cfg.heartbeat.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cx) = c.as_mut() else {
            match conn::connect(&ctl.cfg).await {
                Ok(x) => {
                    c = Some(x);
                    tick.reset_immediately();
                }
                Err(e) => {
                    link.down(&e);
                    ctl.current.store(false, Ordering::Relaxed);
                }
            }
            continue;
        };
        match publish_and_read(&ctl, cx).await {
            Ok(list) => {
                link.up();
                ctl.members.store(Arc::new(list));
                ctl.read_at_ms
                    .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::Relaxed);
                ctl.current.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                link.down(&e);
                ctl.current.store(false, Ordering::Relaxed);
                c = None;
            }
        }
    }
}

async fn publish_and_read(ctl: &Control, c: &mut Conn) -> RedisResult<Vec<Member>> {
    let me = Published {
        advertise: ctl.cfg.advertise.clone(),
        at_ms: now_ms(),
        bindings: ctl.store.local.len() as u64,
        connections: ctl.shared.open_connections() as u64,
    };
    let key = ctl.members_key();
    let () = ::redis::cmd("HSET")
        .arg(&key)
        .arg(&ctl.cfg.node)
        .arg(serde_json::to_string(&me).unwrap_or_default())
        .query_async(c)
        .await?;
    let all: HashMap<String, Vec<u8>> = ::redis::cmd("HGETALL").arg(&key).query_async(c).await?;
    let forget = i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for (node, raw) in all {
        let Ok(p) = serde_json::from_slice::<Published>(&raw) else {
            debug!(node = %node, "cluster: unreadable member entry skipped");
            continue;
        };
        let alive: bool = ::redis::cmd("EXISTS")
            .arg(ctl.keys.node(&node))
            .query_async(c)
            .await?;
        if !alive && me.at_ms.saturating_sub(p.at_ms) > forget {
            let _: i64 = ::redis::cmd("HDEL")
                .arg(&key)
                .arg(&node)
                .query_async(c)
                .await?;
            continue;
        }
        out.push(Member {
            this: node == ctl.cfg.node,
            node,
            advertise: p.advertise,
            last_heartbeat_ms: p.at_ms,
            alive,
            bindings: p.bindings,
            connections: p.connections,
        });
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// Follows the control stream from its newest entry at connection time: each reload request
/// is run here and answered on its reply list. Requests made while this node was cut off
/// from Redis are not replayed: the requester has already reported it as not answering.
async fn control_tail(ctl: Arc<Control>) {
    let mut link = Link::new("control");
    loop {
        let mut c = match conn::connect_tail(&ctl.cfg, CTL_BLOCK).await {
            Ok(c) => c,
            Err(e) => {
                link.down(&e);
                tokio::time::sleep(super::RETRY).await;
                continue;
            }
        };
        if let Err(e) = follow_requests(&ctl, &mut c, &mut link).await {
            link.down(&e);
            tokio::time::sleep(super::RETRY).await;
        }
    }
}

async fn follow_requests(ctl: &Arc<Control>, c: &mut Conn, link: &mut Link) -> RedisResult<()> {
    let stream = ctl.ctl_key();
    let mut last = super::newest_id(c, &stream).await?;
    link.up();
    loop {
        let reply: Option<StreamReadReply> = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(CTL_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(c)
            .await?;
        let Some(reply) = reply else { continue };
        for k in reply.keys {
            for entry in k.ids {
                last = entry.id.clone();
                if entry.get::<String>("op").as_deref() == Some("ul.rm") {
                    let (Some(aor), Some(to), Some(reply)) = (
                        entry.get::<String>("aor"),
                        entry.get::<String>("to"),
                        entry.get::<String>("reply"),
                    ) else {
                        debug!(id = %entry.id, "cluster: ul.rm entry without aor/to/reply skipped");
                        continue;
                    };
                    if to.split(',').any(|n| n == ctl.cfg.node) {
                        let from = entry.get::<String>("from").unwrap_or_default();
                        info!(from = %from, aor = %aor, "ul.rm from another node: removing this node's bindings");
                        actix::spawn(answer_rm(ctl.clone(), aor, reply));
                    }
                    continue;
                }
                let (Some(id), Some(what), Some(reply)) = (
                    entry.get::<String>("id"),
                    entry.get::<String>("reload"),
                    entry.get::<String>("reply"),
                ) else {
                    debug!(id = %entry.id, "cluster: control entry without id/reload/reply skipped");
                    continue;
                };
                let from = entry.get::<String>("from").unwrap_or_default();
                info!(request = %id, from = %from, reload = %what, "cluster-wide reload: reloading this node");
                let cause = if what == "dry_run" {
                    ReloadCause::DryRun
                } else {
                    ReloadCause::Request
                };
                actix::spawn(answer_reload(ctl.clone(), reply, cause));
            }
        }
    }
}

/// Removes this node's bindings of `aor` (as `ul.rm` here would: written behind to Redis
/// too) and pushes how many.
async fn answer_rm(ctl: Arc<Control>, aor: String, reply: String) {
    let v = match ctl.shared.location.get() {
        Some(loc) => match loc.registrar_store().remove(&aor) {
            Ok(n) => json!({"node": ctl.cfg.node, "result": "ok", "removed": n}),
            Err(e) => json!({"node": ctl.cfg.node, "result": "refused", "errors": [e.to_string()]}),
        },
        None => json!({"node": ctl.cfg.node, "result": "refused",
                       "errors": ["the location store is not running"]}),
    };
    push_reply(&ctl, &reply, &v, "ul.rm").await;
}

async fn push_reply(ctl: &Control, reply: &str, v: &Value, what: &str) {
    let res: RedisResult<()> = async {
        let mut c = conn::connect(&ctl.cfg).await?;
        let _: i64 = ::redis::cmd("RPUSH")
            .arg(reply)
            .arg(v.to_string())
            .query_async(&mut c)
            .await?;
        let _: i64 = ::redis::cmd("EXPIRE")
            .arg(reply)
            .arg(REPLY_TTL.as_secs())
            .query_async(&mut c)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = res {
        warn!(error = %e, request = what, "cluster: this node's result could not be sent");
    }
}

/// Runs this node's reload (the registry rebuilds off-thread; a dry run publishes nothing)
/// and pushes the result.
async fn answer_reload(ctl: Arc<Control>, reply: String, cause: ReloadCause) {
    let outcome = match ctl.shared.reloader() {
        Some(r) => r
            .send(Reload { cause })
            .await
            .unwrap_or_else(|e| ReloadOutcome::Failed {
                errors: vec![format!("the registry is not running: {e}")],
            }),
        None => ReloadOutcome::Failed {
            errors: vec!["the registry is not running".to_owned()],
        },
    };
    let v = node_result(&ctl.cfg.node, &outcome);
    push_reply(&ctl, &reply, &v, "reload").await;
}

/// One node's answer: `ok` (published or unchanged) or `refused` with the errors.
pub fn node_result(node: &str, o: &ReloadOutcome) -> Value {
    match o {
        ReloadOutcome::Published { changed, refused } => json!({
            "node": node, "result": "ok", "outcome": "published",
            "changed": changed, "refused": refused, "errors": [],
        }),
        ReloadOutcome::Unchanged => json!({
            "node": node, "result": "ok", "outcome": "unchanged", "errors": [],
        }),
        ReloadOutcome::Failed { errors } => json!({
            "node": node, "result": "refused", "outcome": "failed", "errors": errors,
        }),
        // A dry run: `ok` when the node would accept its conf.d, `refused` with the
        // errors it would refuse it with; `preview` says what it would do.
        ReloadOutcome::Preview(p) => json!({
            "node": node,
            "result": if p.errors.is_empty() { "ok" } else { "refused" },
            "outcome": "dry_run",
            "errors": p.errors,
            "preview": p.json(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reload_carries_its_errors() {
        let v = node_result(
            "a",
            &ReloadOutcome::Failed {
                errors: vec!["conf.d/x.toml: bad".into()],
            },
        );
        assert_eq!(v["result"], "refused");
        assert_eq!(v["errors"][0], "conf.d/x.toml: bad");
        assert_eq!(node_result("a", &ReloadOutcome::Unchanged)["result"], "ok");
    }
}
