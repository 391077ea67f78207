//! `[transactions]`: the transaction layer's timer base values (RFC 3261 T1, T2, T4) and
//! its live-transaction limit, used by `t_relay()`. Typed and checked when read; must never
//! start a timer or touch a socket (the runtime builds each worker's table from this).

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// `[transactions]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionsConfig {
    /// T1, the round-trip estimate: the first retransmission interval over UDP; Timers B
    /// and F are 64*T1. RFC 3261 default 500ms.
    pub t1: ConfigDuration,
    /// T2, the longest retransmission interval of non-INVITE requests. Default 4s.
    pub t2: ConfigDuration,
    /// T4, how long a message may live in the network. Default 5s.
    pub t4: ConfigDuration,
    /// Live transactions per worker beyond which a new `t_relay()` is answered 503.
    pub max_transactions: usize,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        TransactionsConfig {
            t1: ConfigDuration::millis(500),
            t2: ConfigDuration::secs(4),
            t4: ConfigDuration::secs(5),
            max_transactions: 100_000,
        }
    }
}

impl TransactionsConfig {
    /// What `siprox check` refuses: a zero timer, T2 below T1, no transaction allowed.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        for (key, d) in [("t1", self.t1), ("t2", self.t2), ("t4", self.t4)] {
            if d.get().is_zero() {
                bad.push((key, "must be greater than 0".to_owned()));
            }
        }
        if self.t2 < self.t1 {
            bad.push(("t2", format!("{} is less than t1 ({})", self.t2, self.t1)));
        }
        if self.max_transactions == 0 {
            bad.push(("max_transactions", "must be greater than 0".to_owned()));
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_nonsense_is_named() {
        assert!(TransactionsConfig::default().check().is_empty());
        let bad = TransactionsConfig {
            t1: ConfigDuration::millis(0),
            t2: ConfigDuration::secs(4),
            t4: ConfigDuration::secs(5),
            max_transactions: 0,
        };
        let keys: Vec<_> = bad.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["t1", "max_transactions"]);
        let bad = TransactionsConfig {
            t2: ConfigDuration::millis(100),
            ..TransactionsConfig::default()
        };
        assert_eq!(bad.check()[0].0, "t2");
    }
}
