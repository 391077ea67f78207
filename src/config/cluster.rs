//! `[cluster]`: this node's name and advertise URI, where Redis is, and the liveness timers.
//! Checked when read (a wrong value is an error naming the `cluster.<key>` and the file, in
//! `siprox check` as in a reload). Only names and values: never connects to Redis.

use serde::{Deserialize, Serialize};

use super::runtime::ConfigDuration;

/// `[cluster]`: absent, siprox is one node with its in-memory store and needs no Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCluster", into = "RawCluster")]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: written into every binding it owns.
    pub node: String,
    /// This node's internal SIP URI that other nodes reach (`sip:10.0.0.1:5071;transport=tls`).
    pub advertise: String,
    /// One Redis URL (`redis://host:port`), or with more than one, the seeds of a Redis
    /// Cluster. `rediss://` is refused until TLS to Redis is built.
    pub redis: Vec<String>,
    /// Prefix of every Redis key siprox writes (several clusters may share one Redis).
    pub key_prefix: String,
    /// How often this node refreshes its liveness key.
    pub heartbeat: ConfigDuration,
    /// A node whose liveness key is this old is dead: its bindings stop being offered.
    pub node_timeout: ConfigDuration,
    /// How often the cluster's TLS session-ticket key rotates (one node does it).
    pub ticket_rotation: ConfigDuration,
}

impl ClusterConfig {
    /// True when `redis` lists the seeds of a Redis Cluster rather than one Redis.
    pub fn is_redis_cluster(&self) -> bool {
        self.redis.len() > 1
    }
}

/// `redis = "redis://..."` or `redis = ["redis://...", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

/// `[cluster]` as written, before it is checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node: String,
    advertise: String,
    redis: Urls,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    #[serde(default = "default_heartbeat")]
    heartbeat: ConfigDuration,
    #[serde(default = "default_node_timeout")]
    node_timeout: ConfigDuration,
    #[serde(default = "default_ticket_rotation")]
    ticket_rotation: ConfigDuration,
}

fn default_prefix() -> String {
    "siprox".to_owned()
}

fn default_heartbeat() -> ConfigDuration {
    ConfigDuration::secs(2)
}

fn default_node_timeout() -> ConfigDuration {
    ConfigDuration::secs(6)
}

fn default_ticket_rotation() -> ConfigDuration {
    ConfigDuration::secs(3600)
}

/// A node name goes into Redis keys and stream entries: printable, no separators.
fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("cluster.{what}: must be 1 to 64 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "cluster.{what}: `{s}` has `{c}`; use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

impl TryFrom<RawCluster> for ClusterConfig {
    type Error = String;

    fn try_from(r: RawCluster) -> Result<Self, String> {
        check_name("node", &r.node)?;
        check_name("key_prefix", &r.key_prefix)?;
        let a = r.advertise.trim();
        if !(a.starts_with("sip:") || a.starts_with("sips:")) || a.len() < 5 {
            return Err(format!(
                "cluster.advertise: `{a}` is not a SIP URI (e.g. \"sip:10.0.0.1:5071;transport=tls\")"
            ));
        }
        let redis = match r.redis {
            Urls::One(u) => vec![u],
            Urls::Many(v) => v,
        };
        if redis.is_empty() {
            return Err("cluster.redis: at least one redis:// URL is needed".to_owned());
        }
        for u in &redis {
            // TLS to Redis is not built yet: refused here rather than failing to connect.
            if u.starts_with("rediss://") {
                return Err(format!(
                    "cluster.redis: `{u}`: rediss:// (TLS to Redis) is not supported yet"
                ));
            }
            if !u.starts_with("redis://") {
                return Err(format!("cluster.redis: `{u}` is not a redis:// URL"));
            }
        }
        if r.heartbeat.get().is_zero() {
            return Err("cluster.heartbeat: must be more than 0".to_owned());
        }
        // One missed heartbeat must not declare a node dead.
        if r.node_timeout.get() < r.heartbeat.get() * 2 {
            return Err(format!(
                "cluster.node_timeout: {} is less than twice cluster.heartbeat ({})",
                String::from(r.node_timeout),
                String::from(r.heartbeat)
            ));
        }
        // A key must be known everywhere before it encrypts, and outlive two rotations.
        if r.ticket_rotation.get() < r.heartbeat.get() * 4 {
            return Err(format!(
                "cluster.ticket_rotation: {} is less than 4 x cluster.heartbeat ({})",
                String::from(r.ticket_rotation),
                String::from(r.heartbeat)
            ));
        }
        Ok(ClusterConfig {
            node: r.node,
            advertise: a.to_owned(),
            redis,
            key_prefix: r.key_prefix,
            heartbeat: r.heartbeat,
            node_timeout: r.node_timeout,
            ticket_rotation: r.ticket_rotation,
        })
    }
}

impl From<ClusterConfig> for RawCluster {
    fn from(c: ClusterConfig) -> Self {
        RawCluster {
            node: c.node,
            advertise: c.advertise,
            redis: if c.redis.len() == 1 {
                Urls::One(c.redis.into_iter().next().unwrap_or_default())
            } else {
                Urls::Many(c.redis)
            },
            key_prefix: c.key_prefix,
            heartbeat: c.heartbeat,
            node_timeout: c.node_timeout,
            ticket_rotation: c.ticket_rotation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ClusterConfig, String> {
        #[derive(Deserialize)]
        struct Wrap {
            cluster: ClusterConfig,
        }
        toml::from_str::<Wrap>(toml_text)
            .map(|w| w.cluster)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let c = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:127.0.0.1:5071\"\nredis = \"redis://127.0.0.1:6379\"\n",
        )
        .unwrap();
        assert_eq!(c.key_prefix, "siprox");
        assert_eq!(c.heartbeat, ConfigDuration::secs(2));
        assert_eq!(c.node_timeout, ConfigDuration::secs(6));
        assert_eq!(c.redis, vec!["redis://127.0.0.1:6379".to_owned()]);
        assert!(!c.is_redis_cluster());
    }

    #[test]
    fn a_list_of_urls_is_a_redis_cluster() {
        let c = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = [\"redis://h:1\", \"redis://h:2\"]\n",
        )
        .unwrap();
        assert!(c.is_redis_cluster());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let base = |extra: &str| {
            format!(
                "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\n{extra}"
            )
        };
        for (extra, key) in [
            ("key_prefix = \"a:b\"", "cluster.key_prefix"),
            ("heartbeat = \"0s\"", "cluster.heartbeat"),
            ("ticket_rotation = \"1s\"", "cluster.ticket_rotation"),
            (
                "heartbeat = \"5s\"\nnode_timeout = \"6s\"",
                "cluster.node_timeout",
            ),
        ] {
            let e = parse(&base(extra)).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = parse("[cluster]\nnode = \"a b\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.node"), "{e}");
        let e = parse("[cluster]\nnode = \"a\"\nadvertise = \"h:5060\"\nredis = \"redis://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.advertise"), "{e}");
        let e = parse("[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"http://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.redis"), "{e}");
        let e = parse("[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"rediss://h\"\n")
            .unwrap_err();
        assert!(e.contains("not supported yet"), "{e}");
        let e = parse("[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = []\n").unwrap_err();
        assert!(e.contains("cluster.redis"), "{e}");
        let e = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\nnodes = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("nodes"), "{e}");
    }
}
