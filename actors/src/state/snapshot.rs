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
        // A wildcard listener takes every address of the host: `myself` needs them.
        let local_ips = if listens.iter().any(|l| l.addr.ip().is_unspecified()) {
            local_ips()
        } else {
            Vec::new()
        };
        let proxy = Proxy::new(ProxyConfig {
            local_ips,
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

/// This host's addresses, from /proc (Linux): IPv4 from `/proc/net/fib_trie` (the `/32 host
/// LOCAL` entries), IPv6 from `/proc/net/if_inet6`. Read when a snapshot with a wildcard
/// listener is built (start and reload); an unreadable file gives none of that family.
fn local_ips() -> Vec<std::net::IpAddr> {
    let v4 = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    parse_local_ips(&v4, &v6)
}

fn parse_local_ips(fib_trie: &str, if_inet6: &str) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ").or_else(|| t.strip_prefix("+-- ")) {
            last = a.split('/').next().and_then(|a| a.trim().parse().ok());
        } else if t.contains("/32 host LOCAL") {
            if let Some(a) = last {
                if !out.contains(&a.into()) {
                    out.push(a.into());
                }
            }
        }
    }
    for line in if_inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        let Ok(n) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let a = std::net::IpAddr::V6(std::net::Ipv6Addr::from(n));
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod local_ip_tests {
    use super::parse_local_ips;

    #[test]
    fn proc_files_give_the_hosts_addresses() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                   \x20    +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n\
                   \x20          |-- 127.0.0.0\n              /8 host LOCAL\n\
                   \x20          |-- 127.0.0.1\n              /32 host LOCAL\n\
                   \x20       |-- 192.0.2.2\n           /32 host LOCAL\n\
                   \x20       |-- 192.0.2.255\n           /32 link BROADCAST\n\
                   Local:\n           |-- 192.0.2.2\n           /32 host LOCAL\n";
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                  20010db8000000000000000000000005 04 40 00 82     eth0\n";
        let ips: Vec<String> = parse_local_ips(fib, v6)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["127.0.0.1", "192.0.2.2", "::1", "2001:db8::5"]);
        assert!(parse_local_ips("garbage\n/32 host LOCAL", "zz\n").is_empty());
    }
}
