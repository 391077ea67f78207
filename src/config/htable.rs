//! `[htables.<name>]`: the in-memory hash tables route scripts read and write with
//! `$sht(name=>key)` (Kamailio's htable module). Made at start, shared by every worker.

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

/// `[htables.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HtableConfig {
    /// How long an entry lives after it was last written; 0 = until the script removes it.
    pub autoexpire: ConfigDuration,
}

impl Default for HtableConfig {
    fn default() -> Self {
        HtableConfig {
            autoexpire: ConfigDuration::secs(0),
        }
    }
}

/// What `siprox check` refuses in a table's name.
pub fn check_name(name: &str) -> Option<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some(format!(
            "`{name}` is not a table name (letters, digits and `_`, as in $sht(name=>key))"
        ));
    }
    None
}
