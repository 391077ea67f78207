//! Digest nonce replay state shared by the nodes of a cluster: every nonce count a node
//! accepts is queued (`try_send`, never waiting) and published on the `{prefix}:nonces`
//! stream; every node tails that stream and records other nodes' counts in its own replay
//! table, so a nonce used on one node is refused on the others once the entry arrived (the
//! propagation window, measured in docs/cluster.md). The stream keeps one nonce lifetime
//! (`XADD MINID ~`). Must never make a worker wait on Redis, and never panic on an entry
//! that does not parse (it is skipped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::streams::StreamReadReply;
use ::redis::RedisResult;
use siprox::auth::{Authenticator, NonceId, ReplaySink};
use siprox::config::ClusterConfig;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::redis::{self as conn, Conn};
use super::{Link, RETRY};
use crate::state::unix_now;

/// Accepted counts queued for Redis at most; beyond, they are dropped (and counted): a
/// dropped count can be replayed on another node within the nonce lifetime, never on this one.
const QUEUE: usize = 8192;
/// Counts written in one pipeline.
const BATCH: usize = 512;
/// How long one `XREAD` waits for news.
const BLOCK: Duration = Duration::from_millis(1000);

/// The workers' end: what `NonceManager::use_nc` hands accepted counts to.
pub struct ReplayLink {
    tx: mpsc::Sender<(NonceId, u32)>,
    /// Counts that found the queue full (shared with `AuthShare::dropped`, for /metrics).
    pub dropped: Arc<AtomicU64>,
}

impl ReplaySink for ReplayLink {
    fn accepted(&self, id: NonceId, nc: u32) {
        if self.tx.try_send((id, nc)).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            // Once, not per request: the count says how many followed.
            warn!(
                queue = QUEUE,
                "cluster: nonce counts dropped, not shared with the other nodes (queue full)"
            );
        }
    }
}

/// The cluster actor's end: the queue, and how to reach the running authenticator (a
/// reload may replace it; its nonce table is the one to feed).
pub struct AuthShare {
    rx: mpsc::Receiver<(NonceId, u32)>,
    current: Arc<dyn Fn() -> Arc<Authenticator> + Send + Sync>,
    /// The link's drop counter (`ReplayLink::dropped`).
    pub dropped: Arc<AtomicU64>,
}

/// A new link (for `NonceManager::set_sink`) and the share the cluster actor runs.
pub fn link(
    current: Arc<dyn Fn() -> Arc<Authenticator> + Send + Sync>,
) -> (Arc<ReplayLink>, AuthShare) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        Arc::new(ReplayLink {
            tx,
            dropped: dropped.clone(),
        }),
        AuthShare {
            rx,
            current,
            dropped,
        },
    )
}

/// The Redis stream of accepted nonce counts.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:nonces")
}

/// Starts the publisher and the tail on the current arbiter.
pub(super) fn spawn(cfg: Arc<ClusterConfig>, share: AuthShare) {
    let key = stream_key(&cfg.key_prefix);
    actix::spawn(publish(
        cfg.clone(),
        key.clone(),
        share.rx,
        share.current.clone(),
    ));
    actix::spawn(follow(cfg, key, share.current));
}

fn encode_id(id: NonceId) -> String {
    format!("{}.{}", id.issued, id.serial)
}

fn decode_id(s: &str) -> Option<NonceId> {
    let (a, b) = s.split_once('.')?;
    Some(NonceId {
        issued: a.parse().ok()?,
        serial: b.parse().ok()?,
    })
}

/// This node's accepted counts to the stream, in batches. While Redis is unreachable the
/// counts are dropped: the local table still refuses them here, and after an outage the
/// other nodes' tables may miss them for one nonce lifetime at most.
async fn publish(
    cfg: Arc<ClusterConfig>,
    key: String,
    mut rx: mpsc::Receiver<(NonceId, u32)>,
    current: Arc<dyn Fn() -> Arc<Authenticator> + Send + Sync>,
) {
    let mut link = Link::new("nonce publisher");
    let mut c: Option<Conn> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        if c.is_none() {
            match conn::connect(&cfg).await {
                Ok(n) => c = Some(n),
                Err(e) => {
                    link.down(&e);
                    batch.clear();
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let Some(conn) = c.as_mut() else { continue };
        let ttl = current().nonces().ttl();
        let minid = (unix_now().saturating_sub(ttl).max(0) as u64) * 1000;
        let mut p = ::redis::pipe();
        for (id, nc) in batch.drain(..) {
            p.cmd("XADD")
                .arg(&key)
                .arg("MINID")
                .arg("~")
                .arg(minid)
                .arg("*")
                .arg("node")
                .arg(&cfg.node)
                .arg("n")
                .arg(encode_id(id))
                .arg("nc")
                .arg(nc)
                .ignore();
        }
        match p.query_async::<()>(conn).await {
            Ok(()) => link.up(),
            Err(e) => {
                link.down(&e);
                c = None;
            }
        }
    }
}

/// Other nodes' counts into the running nonce table. Starts one nonce lifetime back, so a
/// node that (re)starts learns the counts still worth refusing.
async fn follow(
    cfg: Arc<ClusterConfig>,
    key: String,
    current: Arc<dyn Fn() -> Arc<Authenticator> + Send + Sync>,
) {
    let mut link = Link::new("nonce tail");
    let ttl = current().nonces().ttl();
    let mut last = format!(
        "{}-0",
        (unix_now().saturating_sub(ttl).max(0) as u64) * 1000
    );
    loop {
        let mut c = match conn::connect_tail(&cfg, BLOCK).await {
            Ok(c) => c,
            Err(e) => {
                link.down(&e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        link.up();
        if let Err(e) = tail(&cfg, &key, &mut c, &mut last, &*current).await {
            link.down(&e);
            tokio::time::sleep(RETRY).await;
        }
    }
}

async fn tail(
    cfg: &ClusterConfig,
    key: &str,
    c: &mut Conn,
    last: &mut String,
    current: &(dyn Fn() -> Arc<Authenticator> + Send + Sync),
) -> RedisResult<()> {
    loop {
        let reply: Option<StreamReadReply> = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(key)
            .arg(last.as_str())
            .query_async(c)
            .await?;
        let Some(reply) = reply else { continue };
        let auth = current();
        let now = unix_now();
        for k in reply.keys {
            for e in k.ids {
                let node: Option<String> = e.get("node");
                let id = e.get::<String>("n").as_deref().and_then(decode_id);
                let nc: Option<u32> = e.get("nc");
                match (node, id, nc) {
                    (Some(node), Some(id), Some(nc)) if node != cfg.node => {
                        auth.nonces().apply_remote(id, nc, now)
                    }
                    (Some(_), Some(_), Some(_)) => {}
                    _ => debug!(id = %e.id, "cluster: nonce entry without node/n/nc skipped"),
                }
                *last = e.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_ids_round_trip_and_garbage_is_refused() {
        let id = NonceId {
            issued: 1_700_000_000,
            serial: u64::MAX,
        };
        assert_eq!(decode_id(&encode_id(id)), Some(id));
        for bad in ["", "1", "1.", ".2", "a.b", "1.-2"] {
            assert_eq!(decode_id(bad), None, "{bad}");
        }
    }
}
