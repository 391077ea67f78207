//! Server nonces bound to time, realm and a server secret, and nonce-count replay
//! protection, sans-IO (`now` is passed in). A nonce is
//! `base64(version || timestamp || serial || HMAC-SHA256(secret, version||timestamp||serial||realm)[..16])`:
//! issuing keeps no state, checking needs only the secret; the replay table is bounded and
//! fails safe (a nonce it had to forget is answered as stale, never accepted again).
//! In a cluster every accepted count is handed to a [`ReplaySink`] (which must never block)
//! and other nodes' counts come back through [`NonceManager::apply_remote`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;

use super::digest::CryptoError;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = 1 + 8 + 8 + MAC_LEN;
/// 33 bytes encode to 44 base64 characters with no padding.
const B64_LEN: usize = 44;
const SHARDS: usize = 16;
/// Nonce counts below the highest seen are still accepted once each within this window,
/// so that requests reordered in flight (UDP, parallel transactions) are not refused.
const WINDOW: u32 = 64;

/// Where accepted nonce counts go so that other nodes refuse them too (a cluster). Called
/// on the worker that accepted the request: it must return at once (queue, never wait).
pub trait ReplaySink: Send + Sync {
    fn accepted(&self, id: NonceId, nc: u32);
}

/// The outcome of checking a nonce's integrity and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this realm, not expired.
    Fresh(NonceId),
    /// Ours but older than the lifetime: answer `stale=true` if the digest is right.
    Expired(NonceId),
    /// Not ours: malformed, forged, another realm, another secret (a restart without a
    /// configured secret). Challenge again.
    Invalid,
}

/// What identifies an issued nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonceId {
    pub issued: i64,
    pub serial: u64,
}

/// The outcome of presenting a nonce count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcCheck {
    /// First use of this count.
    Ok,
    /// Seen before (or 0, or too far below the highest): a replay.
    Replay,
    /// The table had to forget this nonce under pressure: ask for a new one (stale).
    Forgotten,
}

#[derive(Debug, Clone, Copy)]
struct NcState {
    max: u32,
    /// Bit i set: count `max - 1 - i` was seen.
    seen: u64,
}

#[derive(Debug, Default)]
struct Shard {
    /// Ordered by issue time, so expiry and eviction pop from the front.
    map: BTreeMap<NonceId, NcState>,
    /// Nonces issued at or before this time that are not in `map` may have been evicted
    /// while still valid: they are refused as forgotten rather than trusted.
    forgotten_up_to: i64,
}

/// Issues and checks nonces; tracks nonce counts. Shared by every worker (`Sync`).
pub struct NonceManager {
    key: PKey<Private>,
    serial: AtomicU64,
    /// Seconds; atomic so that a reload can change it without losing the replay table.
    ttl: std::sync::atomic::AtomicI64,
    per_shard: usize,
    shards: [Mutex<Shard>; SHARDS],
    /// Set once (cluster start); carried to the manager a reload builds for a new secret.
    sink: OnceLock<Arc<dyn ReplaySink>>,
}

impl std::fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("NonceManager")
            .field("ttl", &self.ttl())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl NonceManager {
    /// A manager with a configured `secret` (share it across a cluster so that any node
    /// accepts another's nonces), nonce lifetime `ttl` seconds and a replay table of at
    /// most `max_tracked` nonces.
    pub fn new(secret: &[u8], ttl: u32, max_tracked: usize) -> Result<NonceManager, CryptoError> {
        let mut start = [0u8; 8];
        // A random first serial: two processes (or a restart) with the same secret do not
        // issue the same nonces.
        openssl::rand::rand_bytes(&mut start)?;
        Ok(NonceManager {
            key: PKey::hmac(secret)?,
            serial: AtomicU64::new(u64::from_be_bytes(start)),
            ttl: std::sync::atomic::AtomicI64::new(i64::from(ttl.max(1))),
            per_shard: (max_tracked / SHARDS).max(1),
            shards: Default::default(),
            sink: OnceLock::new(),
        })
    }

    /// A manager with a random 32-byte secret (single node; nonces die with the process).
    pub fn random(ttl: u32, max_tracked: usize) -> Result<NonceManager, CryptoError> {
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret)?;
        NonceManager::new(&secret, ttl, max_tracked)
    }

    /// Nonce lifetime, seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new nonce lifetime (a reload), for nonces issued before as well.
    pub fn set_ttl(&self, ttl: u32) {
        self.ttl
            .store(i64::from(ttl.max(1)), std::sync::atomic::Ordering::Relaxed);
    }

    fn mac(&self, head: &[u8], realm: &str) -> Result<[u8; MAC_LEN], CryptoError> {
        let mut s = Signer::new(MessageDigest::sha256(), &self.key)?;
        s.update(head)?;
        s.update(realm.as_bytes())?;
        let full = s.sign_to_vec()?;
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(
            full.get(..MAC_LEN)
                .ok_or(CryptoError("short HMAC".into()))?,
        );
        Ok(out)
    }

    /// A new nonce for `realm`, issued at `now`.
    pub fn issue(&self, realm: &str, now: i64) -> Result<String, CryptoError> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&now.to_be_bytes());
        raw[9..17].copy_from_slice(&serial.to_be_bytes());
        let mac = self.mac(&raw[..17], realm)?;
        raw[17..].copy_from_slice(&mac);
        Ok(openssl::base64::encode_block(&raw))
    }

    /// Check a nonce presented for `realm` at `now`.
    pub fn check(&self, nonce: &str, realm: &str, now: i64) -> NonceCheck {
        if nonce.len() != B64_LEN
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return NonceCheck::Invalid;
        }
        let Ok(raw) = openssl::base64::decode_block(nonce) else {
            return NonceCheck::Invalid;
        };
        if raw.len() != RAW_LEN || raw[0] != VERSION {
            return NonceCheck::Invalid;
        }
        let Ok(mac) = self.mac(&raw[..17], realm) else {
            return NonceCheck::Invalid;
        };
        if !openssl::memcmp::eq(&mac, &raw[17..]) {
            return NonceCheck::Invalid;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&raw[1..9]);
        let issued = i64::from_be_bytes(t);
        t.copy_from_slice(&raw[9..17]);
        let id = NonceId {
            issued,
            serial: u64::from_be_bytes(t),
        };
        // A nonce from the future (clock stepped back, or another node ahead) is treated
        // as expired rather than trusted for longer than its lifetime.
        if now.saturating_sub(issued) > self.ttl() || issued > now.saturating_add(5) {
            NonceCheck::Expired(id)
        } else {
            NonceCheck::Fresh(id)
        }
    }

    /// From now on, hand every accepted nonce count to `sink`. False when one was set before
    /// (the first one stays).
    pub fn set_sink(&self, sink: Arc<dyn ReplaySink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// The sink set by [`NonceManager::set_sink`], to carry over to a rebuilt manager.
    pub fn sink(&self) -> Option<Arc<dyn ReplaySink>> {
        self.sink.get().cloned()
    }

    /// Record nonce count `nc` for a fresh nonce (call only after the digest matched, so
    /// that wrong guesses cannot burn a legitimate client's counts). An accepted count goes
    /// to the sink, if one is set.
    pub fn use_nc(&self, id: NonceId, nc: u32, now: i64) -> NcCheck {
        let r = self.record(id, nc, now);
        if r == NcCheck::Ok {
            if let Some(sink) = self.sink.get() {
                sink.accepted(id, nc);
            }
        }
        r
    }

    /// Another node accepted count `nc` of nonce `id`: this node refuses it from now on. A
    /// nonce past its lifetime is not recorded (it is refused as expired anyway).
    pub fn apply_remote(&self, id: NonceId, nc: u32, now: i64) {
        if now.saturating_sub(id.issued) > self.ttl() {
            return;
        }
        let _ = self.record(id, nc, now);
    }

    fn record(&self, id: NonceId, nc: u32, now: i64) -> NcCheck {
        let shard = &self.shards[(id.serial % SHARDS as u64) as usize];
        // Nothing under this lock can leave the map inconsistent, so a poisoned lock
        // is still sound to use.
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl();
        while let Some((first, _)) = s.map.first_key_value() {
            if now.saturating_sub(first.issued) > ttl {
                s.map.pop_first();
            } else {
                break;
            }
        }
        if nc == 0 {
            return NcCheck::Replay;
        }
        if let Some(st) = s.map.get_mut(&id) {
            return if nc > st.max {
                let d = nc - st.max;
                st.seen = if d >= WINDOW {
                    0
                } else {
                    (st.seen << d) | (1 << (d - 1))
                };
                st.max = nc;
                NcCheck::Ok
            } else if nc == st.max {
                NcCheck::Replay
            } else {
                let i = st.max - 1 - nc;
                if i >= WINDOW || st.seen & (1 << i) != 0 {
                    NcCheck::Replay
                } else {
                    st.seen |= 1 << i;
                    NcCheck::Ok
                }
            };
        }
        if id.issued <= s.forgotten_up_to {
            return NcCheck::Forgotten;
        }
        s.map.insert(id, NcState { max: nc, seen: 0 });
        while s.map.len() > self.per_shard {
            match s.map.pop_first() {
                Some((old, _)) => s.forgotten_up_to = s.forgotten_up_to.max(old.issued),
                None => break,
            }
        }
        NcCheck::Ok
    }

    /// Nonces currently tracked (for metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(m: &NonceManager, n: &str, now: i64) -> NonceId {
        match m.check(n, "r", now) {
            NonceCheck::Fresh(id) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn issue_check_expire_tamper() {
        let m = NonceManager::new(b"secret", 300, 1000).unwrap();
        let n = m.issue("r", 1000).unwrap();
        assert_eq!(n.len(), B64_LEN);
        assert!(matches!(m.check(&n, "r", 1000), NonceCheck::Fresh(_)));
        assert!(matches!(m.check(&n, "r", 1300), NonceCheck::Fresh(_)));
        assert!(matches!(m.check(&n, "r", 1301), NonceCheck::Expired(_)));
        assert!(matches!(m.check(&n, "r", 900), NonceCheck::Expired(_)));
        assert_eq!(m.check(&n, "other", 1000), NonceCheck::Invalid);
        let other = NonceManager::new(b"other", 300, 1000).unwrap();
        assert_eq!(other.check(&n, "r", 1000), NonceCheck::Invalid);
        // Flip one character of the timestamp part.
        let mut t = n.clone().into_bytes();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        assert_eq!(m.check(&t, "r", 1000), NonceCheck::Invalid);
        assert_eq!(m.check("", "r", 1000), NonceCheck::Invalid);
        assert_eq!(m.check(&"=".repeat(44), "r", 1000), NonceCheck::Invalid);
        assert_ne!(m.issue("r", 1000).unwrap(), n);
    }

    #[test]
    fn nonce_counts() {
        let m = NonceManager::new(b"s", 300, 1000).unwrap();
        let n = m.issue("r", 1000).unwrap();
        let id = id_of(&m, &n, 1000);
        assert_eq!(m.use_nc(id, 1, 1000), NcCheck::Ok);
        assert_eq!(m.use_nc(id, 1, 1000), NcCheck::Replay);
        assert_eq!(m.use_nc(id, 3, 1000), NcCheck::Ok);
        assert_eq!(m.use_nc(id, 2, 1000), NcCheck::Ok);
        assert_eq!(m.use_nc(id, 2, 1000), NcCheck::Replay);
        assert_eq!(m.use_nc(id, 0, 1000), NcCheck::Replay);
        assert_eq!(m.use_nc(id, 200, 1000), NcCheck::Ok);
        assert_eq!(m.use_nc(id, 100, 1000), NcCheck::Replay);
        assert_eq!(m.use_nc(id, 199, 1000), NcCheck::Ok);
        assert_eq!(m.tracked(), 1);
    }

    #[test]
    fn bounded_table_forgets_safely() {
        // One slot per shard: every new nonce in a shard evicts the older one.
        let m = NonceManager::new(b"s", 300, SHARDS).unwrap();
        let ids: Vec<NonceId> = (0..64)
            .map(|i| id_of(&m, &m.issue("r", 1000 + i).unwrap(), 1000 + i))
            .collect();
        for id in &ids {
            assert_eq!(m.use_nc(*id, 1, 1100), NcCheck::Ok);
        }
        assert!(m.tracked() <= SHARDS);
        // The first ones were evicted while valid: never accepted again, even with a new nc.
        assert_eq!(m.use_nc(ids[0], 2, 1100), NcCheck::Forgotten);
        assert_eq!(m.use_nc(ids[0], 1, 1100), NcCheck::Forgotten);
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<(NonceId, u32)>>);

    impl ReplaySink for Collect {
        fn accepted(&self, id: NonceId, nc: u32) {
            self.0.lock().unwrap().push((id, nc));
        }
    }

    #[test]
    fn accepted_counts_go_to_the_sink_and_remote_counts_are_refused() {
        // Two nodes with one secret: what one accepts, the other learns and refuses.
        let a = NonceManager::new(b"s", 300, 1000).unwrap();
        let b = NonceManager::new(b"s", 300, 1000).unwrap();
        let sink = Arc::new(Collect::default());
        assert!(a.set_sink(sink.clone()));
        let n = a.issue("r", 1000).unwrap();
        let id = id_of(&b, &n, 1000);
        assert_eq!(a.use_nc(id, 1, 1000), NcCheck::Ok);
        assert_eq!(a.use_nc(id, 1, 1000), NcCheck::Replay);
        let sent = sink.0.lock().unwrap().clone();
        assert_eq!(sent, vec![(id, 1)], "only the accepted count is published");
        for (id, nc) in sent {
            b.apply_remote(id, nc, 1001);
        }
        assert_eq!(b.use_nc(id, 1, 1002), NcCheck::Replay);
        assert_eq!(b.use_nc(id, 2, 1002), NcCheck::Ok);
        // An expired remote count is not kept.
        let old = id_of(&b, &b.issue("r", 1000).unwrap(), 1000);
        b.apply_remote(old, 1, 1400);
        assert_eq!(b.tracked(), 1);
    }
}
