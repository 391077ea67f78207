//! The session-ticket key ring of a cluster, as the TLS callback reads it: keys shared by
//! every node (kept from Redis by `cluster::tickets`), the newest active one encrypting new
//! tickets, all of them decrypting. Without `[cluster]` there is no ring and OpenSSL keeps
//! its own per-process keys. Read on workers inside a handshake: must never block, lock or
//! allocate beyond an `Arc` clone, and never hand a key to anything but OpenSSL.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslRef};

/// Bytes of a key's name: the first bytes of every ticket (OpenSSL's fixed size).
pub const NAME_LEN: usize = 16;

/// One ticket key: name, AES-256-CBC key, HMAC-SHA256 key, and when it was made (Unix ms,
/// the clock of the node that made it).
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub name: [u8; NAME_LEN],
    pub aes: [u8; 32],
    pub hmac: [u8; 32],
    pub created_ms: u64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("TicketKey")
            .field("name", &hex(&self.name))
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// A new random key made at `created_ms`.
    pub fn random(created_ms: u64) -> Result<TicketKey, openssl::error::ErrorStack> {
        let mut k = TicketKey {
            name: [0; NAME_LEN],
            aes: [0; 32],
            hmac: [0; 32],
            created_ms,
        };
        openssl::rand::rand_bytes(&mut k.name)?;
        openssl::rand::rand_bytes(&mut k.aes)?;
        openssl::rand::rand_bytes(&mut k.hmac)?;
        Ok(k)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The keys every server connection of this node encrypts and decrypts tickets with.
pub struct TicketRing {
    /// Newest first.
    keys: ArcSwap<Vec<TicketKey>>,
    /// A new key encrypts only once it is this old, so that every node has picked it up
    /// (and decrypts with it) before any ticket made with it reaches another node.
    activation_ms: u64,
    /// This process's own key, used until the cluster's keys arrive (Redis unreachable at
    /// start): a TLS 1.3 server must not answer with an empty ticket, which OpenSSL 3.0
    /// sends when the callback has no key. Its tickets resume on this node only.
    fallback: TicketKey,
}

impl std::fmt::Debug for TicketRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketRing")
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

/// What the callback needs for one ticket.
pub struct Chosen {
    pub key: TicketKey,
    /// The ticket was made with an older key: issue a new one.
    pub renew: bool,
}

impl TicketRing {
    /// A ring without the cluster's keys yet (tickets use a key of this process until they
    /// arrive).
    pub fn new(activation_ms: u64) -> Result<TicketRing, openssl::error::ErrorStack> {
        Ok(TicketRing {
            keys: ArcSwap::from_pointee(Vec::new()),
            activation_ms,
            fallback: TicketKey::random(0)?,
        })
    }

    /// Replaces the keys (newest first). True when they changed.
    pub fn install(&self, keys: Vec<TicketKey>) -> bool {
        if **self.keys.load() == keys {
            return false;
        }
        self.keys.store(Arc::new(keys));
        true
    }

    /// The keys held, newest first.
    pub fn keys(&self) -> Arc<Vec<TicketKey>> {
        self.keys.load_full()
    }

    /// The key new tickets are made with at `now_ms`: the newest one old enough to be known
    /// everywhere, or, when every key is that new (the cluster's first key), the oldest.
    pub fn encrypting(&self, now_ms: u64) -> TicketKey {
        let keys = self.keys.load();
        keys.iter()
            .find(|k| k.created_ms.saturating_add(self.activation_ms) <= now_ms)
            .or_else(|| keys.last())
            .unwrap_or(&self.fallback)
            .clone()
    }

    /// The key a ticket named `name` was made with, if the ring still holds it.
    pub fn decrypting(&self, name: &[u8], now_ms: u64) -> Option<Chosen> {
        let current = self.encrypting(now_ms);
        let keys = self.keys.load();
        let key = keys
            .iter()
            .chain(std::iter::once(&self.fallback))
            .find(|k| k.name[..] == *name)?
            .clone();
        Some(Chosen {
            renew: key.name != current.name,
            key,
        })
    }
}

fn ctx_index() -> Option<Index<SslContext, Arc<TicketRing>>> {
    static I: OnceLock<Option<Index<SslContext, Arc<TicketRing>>>> = OnceLock::new();
    *I.get_or_init(|| SslContext::new_ex_index().ok())
}

fn ssl_index() -> Option<Index<Ssl, Arc<TicketRing>>> {
    static I: OnceLock<Option<Index<Ssl, Arc<TicketRing>>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

/// Makes `ctx` (the dispatch context) use `ring` for every ticket it issues or accepts.
/// OpenSSL takes tickets from the context a connection started with, not from the domain's
/// context it switches to, so this is the one place.
pub fn install(
    b: &mut openssl::ssl::SslContextBuilder,
    ring: Arc<TicketRing>,
) -> Result<(), openssl::error::ErrorStack> {
    let idx = ctx_index().ok_or_else(openssl::error::ErrorStack::get)?;
    b.set_ex_data(idx, ring);
    crate::tls::ffi::set_ticket_key_callback(b)
}

/// Hands the dispatch context's ring to a new connection, for the callback to find.
pub fn attach(ctx: &openssl::ssl::SslContextRef, ssl: &mut Ssl) {
    if let (Some(ci), Some(si)) = (ctx_index(), ssl_index()) {
        if let Some(ring) = ctx.ex_data(ci) {
            ssl.set_ex_data(si, ring.clone());
        }
    }
}

/// The ring a dispatch context was built with (`install`), if any.
pub fn ring_of_context(ctx: &openssl::ssl::SslContextRef) -> Option<Arc<TicketRing>> {
    ctx.ex_data(ctx_index()?).cloned()
}

/// The ring of a connection (inside the ticket callback).
pub fn ring_of(ssl: &SslRef) -> Option<&Arc<TicketRing>> {
    ssl.ex_data(ssl_index()?)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, created_ms: u64) -> TicketKey {
        TicketKey {
            name: [n; NAME_LEN],
            aes: [n; 32],
            hmac: [n; 32],
            created_ms,
        }
    }

    #[test]
    fn a_new_key_encrypts_only_once_active_and_old_ones_still_decrypt() {
        let r = TicketRing::new(1000).unwrap();
        // Before the cluster's keys arrive: this process's own key, never an empty ticket.
        let own = r.encrypting(0);
        assert!(!r.decrypting(&own.name, 0).unwrap().renew);
        // The first key of a cluster encrypts at once.
        assert!(r.install(vec![key(1, 10_000)]));
        assert!(!r.install(vec![key(1, 10_000)]));
        assert_eq!(r.encrypting(10_000).name, [1; NAME_LEN]);
        assert!(r.decrypting(&own.name, 10_000).unwrap().renew);
        r.install(vec![key(2, 20_000), key(1, 10_000)]);
        // Key 2 is known here but perhaps not yet on every node.
        assert_eq!(r.encrypting(20_500).name, [1; NAME_LEN]);
        assert_eq!(r.encrypting(21_000).name, [2; NAME_LEN]);
        let old = r.decrypting(&[1; NAME_LEN], 21_000).unwrap();
        assert!(old.renew);
        assert!(!r.decrypting(&[2; NAME_LEN], 21_000).unwrap().renew);
        assert!(r.decrypting(&[3; NAME_LEN], 21_000).is_none());
        assert!(!format!("{:?}", key(7, 0)).contains("0707070707070707070707070707070707"));
    }
}
