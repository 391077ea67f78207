//! `[location]` (where the in-memory location store keeps its snapshot) and `[auth]`
//! (digest authentication: the users file and nonce settings). The registrar's own rules
//! are `[registrar]` ([`crate::registrar::Settings`]). Only names and values: never opens a
//! file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::ConfigDuration;

/// `[location]`: the embedded location store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocationConfig {
    /// Snapshot file, written atomically (temp file + rename) at `snapshot_interval` and on
    /// shutdown, read at start (expired bindings dropped). Relative: against the parent of
    /// the configuration directory. Absent: registrations do not survive a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_file: Option<PathBuf>,
    /// How often the snapshot is written.
    pub snapshot_interval: ConfigDuration,
    /// How often expired bindings are removed.
    pub expire_interval: ConfigDuration,
}

impl Default for LocationConfig {
    fn default() -> Self {
        LocationConfig {
            snapshot_file: None,
            snapshot_interval: ConfigDuration::secs(60),
            expire_interval: ConfigDuration::secs(10),
        }
    }
}

/// `[auth]`: digest authentication (RFC 3261 §22, RFC 7616/8760).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// TOML users file (`[[user]] name, realm, ha1_md5, ha1_sha256` or `password`, hashed
    /// at load and never kept). Absent: every `*_authorize` fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// File whose bytes are the nonce secret (nodes of a cluster share it). Absent: a random
    /// secret per process (nonces do not survive a restart: clients get a new challenge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// File of the keys that sign Record-Route flow tokens (RFC 5626 §5.2): one key per
    /// line, at least 32 characters, the first signs and every one verifies (rotation).
    /// Created with a random key when missing. Absent: a random key per process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_key_file: Option<PathBuf>,
    /// Nonce lifetime; older nonces get `stale=true`.
    pub nonce_ttl: ConfigDuration,
    /// Digest algorithms offered, one challenge each, most preferred first (RFC 8760):
    /// `SHA-256`, `MD5` (and their `-sess` forms).
    pub algorithms: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            secret_file: None,
            flow_key_file: None,
            nonce_ttl: ConfigDuration::secs(300),
            algorithms: vec!["SHA-256".to_owned(), "MD5".to_owned()],
        }
    }
}
