//! Where bindings live: the [`LocationStore`] trait (sync, object-safe, so that a Redis
//! store can follow) and [`MemoryStore`], the embedded default. No I/O happens under a
//! lock, so `std` locks are fine here; the store never panics, even on a poisoned lock.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::binding::Binding;

/// A failure of the store itself (never of the request): the runtime answers 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("location store unavailable: {0}")]
    Unavailable(String),
}

/// The update function of [`LocationStore::update`]: it sees the current bindings of one
/// AoR and returns their replacement, or `None` to abort and leave them unchanged. A store
/// that implements the update as compare-and-set may call it more than once, so it must
/// depend only on its argument (and on what it captured).
pub type UpdateFn<'a> = dyn FnMut(&[Binding]) -> Option<Vec<Binding>> + 'a;

/// The location service: AoR (canonical, see [`aor_of`](super::aor_of)) -> bindings.
pub trait LocationStore: Send + Sync {
    /// The bindings of `aor`, expired ones included (callers filter with `now`).
    fn get(&self, aor: &str) -> Result<Vec<Binding>, StoreError>;
    /// Replace the bindings of `aor` atomically with what `f` returns; an empty result
    /// removes the AoR. Returns whether `f` committed (false: it returned `None`).
    fn update(&self, aor: &str, f: &mut UpdateFn<'_>) -> Result<bool, StoreError>;
    /// Set the bindings of `aor` (snapshot restore, cluster sync); empty removes it.
    fn put(&self, aor: &str, bindings: Vec<Binding>) -> Result<(), StoreError> {
        self.update(aor, &mut |_| Some(bindings.clone()))
            .map(|_| ())
    }
    /// Remove every binding of `aor`; returns how many went.
    fn remove(&self, aor: &str) -> Result<usize, StoreError>;
    /// Remove every binding with `expires <= now`; returns how many went.
    fn expire(&self, now: i64) -> Result<usize, StoreError>;
    /// Number of bindings (expired but not yet purged ones included).
    fn len(&self) -> usize;
    /// True when there is no binding.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Visit every AoR with its bindings (for `ul.dump` and snapshots). The store may hold
    /// a lock on part of its data during `f`: `f` must not call back into the store.
    fn for_each(&self, f: &mut dyn FnMut(&str, &[Binding])) -> Result<(), StoreError>;
    /// Why this store may hold bindings of `aor` that [`get`](Self::get) does not offer
    /// (a cluster node: the owner is dead, or the replica is not current). `None` on a
    /// single node: what `get` returns is all there is.
    fn withheld(&self, aor: &str, now: i64) -> Option<Withheld> {
        let _ = (aor, now);
        None
    }
}

/// Why bindings are withheld from a lookup (cluster only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// `aor` has current bindings, but only on nodes that stopped answering their
    /// heartbeat: unreachable (480) until the phone registers through a live node.
    NodeDown { bindings: usize },
    /// The other nodes' bindings are not known right now (the shared store is
    /// unreachable): answer 503 and ask to retry after this many seconds.
    Stale { retry_after: u32 },
}

/// The embedded in-memory store: a fixed number of shards chosen by a hash of the AoR,
/// each a `RwLock<HashMap>`, so that registrations of different AoRs rarely contend.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, Vec<Binding>>,
    /// Bindings in this shard, kept so that `len()` is cheap.
    count: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store with 64 shards (plenty for a few dozen worker threads).
    pub fn new() -> MemoryStore {
        MemoryStore::with_shards(64)
    }

    /// A store with `n` shards (rounded up to a power of two, at least 1).
    pub fn with_shards(n: usize) -> MemoryStore {
        let n = n.clamp(1, 1 << 16).next_power_of_two();
        MemoryStore {
            shards: (0..n).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, aor: &str) -> &RwLock<Shard> {
        let i = (self.hasher.hash_one(aor) as usize) & (self.shards.len() - 1);
        &self.shards[i]
    }

    // A panic elsewhere while holding a shard cannot leave a binding list half-written
    // (each update replaces a whole Vec), so a poisoned lock is still safe to use.
    fn read(l: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
        l.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(l: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
        l.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of AoRs.
    pub fn aor_count(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).map.len()).sum()
    }
}

impl LocationStore for MemoryStore {
    fn get(&self, aor: &str) -> Result<Vec<Binding>, StoreError> {
        Ok(Self::read(self.shard(aor))
            .map
            .get(aor)
            .cloned()
            .unwrap_or_default())
    }

    fn update(&self, aor: &str, f: &mut UpdateFn<'_>) -> Result<bool, StoreError> {
        let mut shard = Self::write(self.shard(aor));
        let current: &[Binding] = shard.map.get(aor).map_or(&[], Vec::as_slice);
        let old = current.len();
        let Some(new) = f(current) else {
            return Ok(false);
        };
        shard.count = shard.count - old + new.len();
        if new.is_empty() {
            shard.map.remove(aor);
        } else if let Some(slot) = shard.map.get_mut(aor) {
            *slot = new;
        } else {
            shard.map.insert(aor.into(), new);
        }
        Ok(true)
    }

    fn remove(&self, aor: &str) -> Result<usize, StoreError> {
        let mut shard = Self::write(self.shard(aor));
        let n = shard.map.remove(aor).map_or(0, |v| v.len());
        shard.count -= n;
        Ok(n)
    }

    fn expire(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for s in self.shards.iter() {
            // Check under the read lock first: most shards have nothing to expire most of
            // the time, and the write lock would stall registrations for nothing.
            let any = Self::read(s)
                .map
                .values()
                .any(|v| v.iter().any(|b| b.expires <= now));
            if !any {
                continue;
            }
            let mut shard = Self::write(s);
            let mut n = 0;
            shard.map.retain(|_, v| {
                let before = v.len();
                v.retain(|b| b.expires > now);
                n += before - v.len();
                !v.is_empty()
            });
            shard.count -= n;
            removed += n;
        }
        Ok(removed)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).count).sum()
    }

    fn for_each(&self, f: &mut dyn FnMut(&str, &[Binding])) -> Result<(), StoreError> {
        for s in self.shards.iter() {
            let shard = Self::read(s);
            for (aor, v) in shard.map.iter() {
                f(aor, v);
            }
        }
        Ok(())
    }
}
