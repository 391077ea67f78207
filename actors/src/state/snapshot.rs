//! The [`Snapshot`]: everything the hot path reads, built whole from one configuration and
//! published with one `store()` by the `DomainRegistry`. Building one is pure (no file, no
//! socket): the reload job hands it what it read. Must never be mutated once published.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use siprox::auth::{Authenticator, Users};
use siprox::config::Config;
use siprox::proxy::{FlowKeys, Listen, Proxy, ProxyConfig};
use siprox::sip::Limits;

use crate::error::RuntimeError;
use crate::state::{ScriptSet, TlsDomains};

/// Connection settings taken from the snapshot when a connection starts; a reload changes
/// what the next connection gets, never a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    pub max_partial_bytes_per_ip: usize,
    pub send_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_write_queue: usize,
}

impl ConnSettings {
    /// From `[connections]`.
    pub fn from_config(c: &Config) -> ConnSettings {
        let k = &c.connections;
        ConnSettings {
            handshake_timeout: k.handshake_timeout.get(),
            idle_timeout: k.idle_timeout.get(),
            message_timeout: k.message_timeout.get(),
            max_partial_bytes_per_ip: k.max_partial_bytes_per_ip,
            send_timeout: k.send_timeout.get(),
            connect_timeout: k.connect_timeout.get(),
            max_write_queue: k.max_write_queue,
        }
    }
}

/// The digest users and authenticator of a snapshot, built together by the start or a
/// reload.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `[auth] users_file`, parsed.
    pub users: Arc<Users>,
    /// The authenticator and the digest of its secret.
    pub auth: (Arc<Authenticator>, u64),
}

/// Everything the hot path reads, published whole with one `store()`: a reader sees either
/// the old or the new one, never half of each.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// The stateless proxy core, built for the actual bound addresses.
    pub proxy: Proxy,
    /// Compiled route scripts (default and per domain).
    pub scripts: Arc<ScriptSet>,
    /// Every TLS domain (server and client sides, defaults from `[tls]`) and the tables
    /// that pick them: read by each handshake, replaced whole by the `DomainRegistry`.
    pub tls: Arc<TlsDomains>,
    /// Parser and framer limits.
    pub limits: Limits,
    /// Timeouts and write-queue bound of new connections.
    pub conn: ConnSettings,
    /// The digest users (`[auth] users_file`), read by the reload job: authentication reads
    /// them here, in the same snapshot as the scripts that call it.
    pub users: Arc<Users>,
    /// The digest authenticator of `[auth]` (algorithms, nonce lifetime, secret), rebuilt by
    /// a reload that changes them (sharing the nonce table while the secret stays).
    pub auth: Arc<Authenticator>,
    /// Digest of the secret `auth` was built with: a reload compares it.
    pub auth_secret: u64,
}

impl Snapshot {
    /// The snapshot for `config` with the actual bound addresses (at start and at each
    /// reload). `flow_refused` is the previous snapshot's counter of refused flow tokens,
    /// so that the metric survives a reload.
    pub fn build(
        config: Arc<Config>,
        listens: Vec<Listen>,
        tls: Arc<TlsDomains>,
        scripts: Arc<ScriptSet>,
        Credentials {
            users,
            auth: (auth, auth_secret),
        }: Credentials,
        flow_keys: FlowKeys,
        flow_refused: Arc<AtomicU64>,
    ) -> Snapshot {
        let aliases = config
            .domains
            .values()
            .flat_map(|d| d.names.iter().cloned())
            .collect();
        let proxy = Proxy::new(ProxyConfig {
            listens,
            aliases,
            flow_keys,
            node: config.cluster.as_ref().map(|c| c.node.clone()),
            node_tokens_from_anyone: config
                .cluster
                .as_ref()
                .is_some_and(|c| c.insecure_plaintext && c.tls.is_none()),
            ..ProxyConfig::default()
        })
        .with_flow_counter(flow_refused);
        Snapshot {
            limits: config.limits,
            conn: ConnSettings::from_config(&config),
            proxy,
            tls,
            scripts,
            users,
            auth,
            auth_secret,
            config,
        }
    }
}

/// What `[connections]` values the runtime cannot work with (beyond their types).
pub fn check_connections(config: &Config) -> Result<(), RuntimeError> {
    let c = &config.connections;
    for (key, d) in [
        ("handshake_timeout", c.handshake_timeout),
        ("send_timeout", c.send_timeout),
        ("connect_timeout", c.connect_timeout),
    ] {
        if d.get().is_zero() {
            return Err(RuntimeError::Config(format!(
                "[connections] {key} must be greater than 0"
            )));
        }
    }
    // One maximal message must fit in a queue, or a peer would be cut off for being sent
    // a single large (valid) message.
    if c.max_write_queue < config.limits.max_message_size {
        return Err(RuntimeError::Config(format!(
            "[connections] max_write_queue ({}) must be at least [limits] max_message_size ({})",
            c.max_write_queue, config.limits.max_message_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_connection_settings_are_refused() {
        let mut c = Config::default();
        assert!(check_connections(&c).is_ok());
        c.connections.send_timeout = siprox::config::ConfigDuration::secs(0);
        assert!(check_connections(&c)
            .expect_err("zero")
            .to_string()
            .contains("send_timeout"));
        let mut c = Config::default();
        c.connections.max_write_queue = 100;
        assert!(check_connections(&c)
            .expect_err("small")
            .to_string()
            .contains("max_write_queue"));
    }
}
