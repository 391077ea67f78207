//! The session-ticket key ring in Redis (`{prefix}:tickets`), kept by every node: read every
//! `heartbeat` into this node's `TicketRing`, and rotated every `ticket_rotation` by one node
//! at a time (the lock `{prefix}:tickets:lock`, `SET NX PX`). The ring holds [`KEEP`] keys,
//! newest first, so a ticket made before a rotation still resumes for about two rotations.
//! Must never panic on what Redis holds (a ring that does not parse is replaced by the
//! rotating node) and never be awaited by a worker: the TLS callback reads the local ring.

use std::sync::Arc;
use std::time::Duration;

use ::redis::RedisResult;
use siprox::config::ClusterConfig;
use tracing::{debug, info};

pub use crate::tls::ticket_keys::TicketRing;
use crate::tls::ticket_keys::{now_ms, TicketKey};

use super::redis::{self as conn, Conn};
use super::{Link, RETRY};

/// Keys the ring keeps: the newest (perhaps not active yet), the one encrypting, and the
/// one before, so that tickets made before the last rotation still resume.
pub const KEEP: usize = 3;

/// The ring for a node of `cfg`: a new key encrypts once two reads of the ring went by, so
/// every node decrypts with it before any ticket made with it can reach them.
pub fn ring_for(cfg: &ClusterConfig) -> Result<Arc<TicketRing>, openssl::error::ErrorStack> {
    Ok(Arc::new(TicketRing::new(
        activation(cfg).as_millis() as u64
    )?))
}

fn activation(cfg: &ClusterConfig) -> Duration {
    cfg.heartbeat.get() * 2
}

/// Redis names of the ring and its rotation lock.
pub fn keys(prefix: &str) -> (String, String) {
    (
        format!("{prefix}:tickets"),
        format!("{prefix}:tickets:lock"),
    )
}

/// Starts the loop on the current arbiter.
pub(super) fn spawn(cfg: Arc<ClusterConfig>, ring: Arc<TicketRing>) {
    actix::spawn(keep(cfg, ring));
}

async fn keep(cfg: Arc<ClusterConfig>, ring: Arc<TicketRing>) {
    let mut link = Link::new("tickets");
    let mut c: Option<Conn> = None;
    let mut tick = tokio::time::interval(cfg.heartbeat.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = c.as_mut() else {
            match conn::connect(&cfg).await {
                Ok(n) => {
                    c = Some(n);
                    tick.reset_immediately();
                }
                Err(e) => {
                    link.down(&e);
                    tokio::time::sleep(RETRY).await;
                }
            }
            continue;
        };
        match refresh(&cfg, &ring, conn).await {
            Ok(()) => link.up(),
            Err(e) => {
                link.down(&e);
                c = None;
            }
        }
    }
}

/// Reads the ring; rotates it when its newest key is older than `ticket_rotation` (or there
/// is none) and this node wins the lock.
async fn refresh(cfg: &ClusterConfig, ring: &TicketRing, c: &mut Conn) -> RedisResult<()> {
    let (key, lock) = keys(&cfg.key_prefix);
    let rotation = cfg.ticket_rotation.get().as_millis() as u64;
    let mut keys = read(c, &key).await?;
    let due = |keys: &[TicketKey]| {
        keys.first()
            .is_none_or(|k| k.created_ms.saturating_add(rotation) <= now_ms())
    };
    if due(&keys) {
        // Held for half a rotation at most: long enough for one write, short enough that a
        // node that died holding it does not skip a rotation.
        let px = (rotation / 2).clamp(1, 10_000);
        let won: Option<String> = ::redis::cmd("SET")
            .arg(&lock)
            .arg(&cfg.node)
            .arg("NX")
            .arg("PX")
            .arg(px)
            .query_async(c)
            .await?;
        if won.is_some() {
            keys = read(c, &key).await?;
            if due(&keys) {
                keys.insert(0, new_key()?);
                keys.truncate(KEEP);
                // The ring outlives every key in it by one rotation, and goes with a
                // cluster that stopped.
                let () = ::redis::cmd("SET")
                    .arg(&key)
                    .arg(encode(&keys))
                    .arg("PX")
                    .arg(rotation.saturating_mul(KEEP as u64 + 1).max(1))
                    .query_async(c)
                    .await?;
                info!(node = %cfg.node, keys = keys.len(), "cluster: TLS session-ticket keys rotated");
            }
        }
    }
    if ring.install(keys) {
        debug!("cluster: TLS session-ticket keys picked up");
    }
    Ok(())
}

async fn read(c: &mut Conn, key: &str) -> RedisResult<Vec<TicketKey>> {
    let v: Option<String> = ::redis::cmd("GET").arg(key).query_async(c).await?;
    Ok(v.as_deref().map(decode).unwrap_or_default())
}

fn new_key() -> RedisResult<TicketKey> {
    TicketKey::random(now_ms()).map_err(|e| {
        ::redis::RedisError::from((
            ::redis::ErrorKind::Client,
            "random ticket key",
            e.to_string(),
        ))
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `created_ms:name:aes:hmac` (hex), newest first, comma separated.
fn encode(keys: &[TicketKey]) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "{}:{}:{}:{}",
                k.created_ms,
                hex(&k.name),
                hex(&k.aes),
                hex(&k.hmac)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The keys of a stored ring; an entry that does not parse is left out.
fn decode(s: &str) -> Vec<TicketKey> {
    s.split(',')
        .filter_map(|e| {
            let mut p = e.split(':');
            let k = TicketKey {
                created_ms: p.next()?.parse().ok()?,
                name: unhex(p.next()?)?,
                aes: unhex(p.next()?)?,
                hmac: unhex(p.next()?)?,
            };
            p.next().is_none().then_some(k)
        })
        .take(KEEP)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_round_trips_and_bad_entries_are_left_out() {
        let keys = vec![new_key().unwrap(), new_key().unwrap()];
        assert_eq!(decode(&encode(&keys)), keys);
        let mut s = encode(&keys);
        s.push_str(",1:zz:00:00,,x");
        assert_eq!(decode(&s), keys);
        assert!(decode("").is_empty());
        assert!(decode("1:00:00:00:00").is_empty());
    }
}
