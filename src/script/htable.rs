//! `$sht(table=>key)`: Kamailio's htable, in-memory hash tables shared by every worker, with
//! an optional expiry per table (the usual brute-force and flood bans). Tables are declared
//! in `[htables.<name>]` and made at start. Each table is split into shards with a lock
//! each, held for one map operation; only scripts that use `$sht` touch them. Expired
//! entries are never returned, and each shard sweeps its expired entries every
//! [`SWEEP_EVERY`] writes, so keys written once and never read again do not pile up.
//! Time comes from the caller (Unix seconds), as everywhere in the core.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::select::Value;

const SHARDS: usize = 16;
/// Writes to a shard between two sweeps of its expired entries.
pub const SWEEP_EVERY: u32 = 256;

#[derive(Default)]
struct Shard {
    map: HashMap<String, (Value<'static>, i64)>,
    writes: u32,
}

/// One table.
pub struct Table {
    /// Seconds an entry lives after it was last written; 0 = until removed.
    autoexpire: i64,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Table {
    fn new(autoexpire_secs: u64) -> Table {
        Table {
            autoexpire: i64::try_from(autoexpire_secs).unwrap_or(i64::MAX),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn live(&self, expires: i64, now: i64) -> bool {
        self.autoexpire == 0 || expires > now
    }
}

/// Every declared table, by name.
#[derive(Default)]
pub struct Htables {
    tables: HashMap<String, Table>,
}

impl std::fmt::Debug for Htables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        f.debug_struct("Htables").field("tables", &names).finish()
    }
}

impl Htables {
    /// Tables from `(name, autoexpire seconds)`.
    pub fn new<'a>(tables: impl IntoIterator<Item = (&'a str, u64)>) -> Htables {
        Htables {
            tables: tables
                .into_iter()
                .map(|(n, e)| (n.to_owned(), Table::new(e)))
                .collect(),
        }
    }

    /// True when `name` is declared.
    pub fn has(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// The live value of `table=>key`.
    pub fn get(&self, table: &str, key: &str, now: i64) -> Option<Value<'static>> {
        let t = self.tables.get(table)?;
        let shard = t.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        match shard.map.get(key) {
            Some((v, exp)) if t.live(*exp, now) => Some(v.clone()),
            _ => None,
        }
    }

    /// Set (or with `None`, remove) `table=>key`; the entry's expiry restarts. False when the
    /// table is not declared.
    pub fn set(&self, table: &str, key: &str, value: Option<Value<'static>>, now: i64) -> bool {
        let Some(t) = self.tables.get(table) else {
            return false;
        };
        let mut shard = t.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => {
                let exp = now.saturating_add(t.autoexpire);
                shard.map.insert(key.to_owned(), (v, exp));
            }
            None => {
                shard.map.remove(key);
            }
        }
        shard.writes += 1;
        if t.autoexpire > 0 && shard.writes >= SWEEP_EVERY {
            shard.writes = 0;
            shard.map.retain(|_, (_, exp)| *exp > now);
        }
        true
    }

    /// Live entries of `table` (for tests and the RPC).
    pub fn len(&self, table: &str, now: i64) -> usize {
        self.tables.get(table).map_or(0, |t| {
            t.shards
                .iter()
                .map(|s| {
                    let s = s.lock().unwrap_or_else(|p| p.into_inner());
                    s.map.values().filter(|(_, e)| t.live(*e, now)).count()
                })
                .sum()
        })
    }

    /// Entries held in memory, expired ones not yet swept included.
    pub fn held(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, |t| {
            t.shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_swept() {
        let h = Htables::new([("ipban", 300), ("forever", 0)]);
        assert!(h.set("ipban", "192.0.2.1", Some(Value::Int(1)), 1000));
        assert_eq!(h.get("ipban", "192.0.2.1", 1299), Some(Value::Int(1)));
        assert_eq!(h.get("ipban", "192.0.2.1", 1300), None, "expired at 300 s");
        assert!(h.set("forever", "k", Some(Value::from("v".to_owned())), 0));
        assert_eq!(
            h.get("forever", "k", i64::MAX),
            Some(Value::from("v".to_owned()))
        );
        assert!(h.set("forever", "k", None, 0));
        assert_eq!(h.get("forever", "k", 0), None);
        assert!(!h.set("nope", "k", Some(Value::Int(1)), 0));
        assert_eq!(h.get("nope", "k", 0), None);
        // Keys written once and never read again are swept as writes go on.
        for i in 0..10_000 {
            h.set(
                "ipban",
                &format!("10.0.{}.{}", i / 256, i % 256),
                Some(Value::Int(1)),
                2000,
            );
        }
        assert_eq!(h.len("ipban", 2400), 0);
        for i in 0..(SWEEP_EVERY as usize * SHARDS * 4) {
            h.set("ipban", &format!("k{i}"), Some(Value::Int(1)), 2400);
        }
        // Every shard took over SWEEP_EVERY writes after the first 10,000 expired: none held.
        assert_eq!(h.held("ipban"), h.len("ipban", 2400));
        assert_eq!(h.held("ipban"), SWEEP_EVERY as usize * SHARDS * 4);
    }
}
