//! `[cluster]`: this node's name and advertise URI, where Redis is, the liveness timers and
//! `[cluster.tls]`, the certificate nodes present to each other (turned into a TLS domain of
//! its own by [`cluster_domain`]).
//! Checked when read (a wrong value is an error naming the `cluster.<key>` and the file, in
//! `siprox check` as in a reload). Only names and values: never connects to Redis.

use std::path::PathBuf;

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
    /// One Redis URL (`redis://host:port`, or `rediss://` for TLS), or with more than one,
    /// the seeds of a Redis Cluster.
    pub redis: Vec<String>,
    /// Prefix of every Redis key siprox writes (several clusters may share one Redis).
    pub key_prefix: String,
    /// How often this node refreshes its liveness key.
    pub heartbeat: ConfigDuration,
    /// A node whose liveness key is this old is dead: its bindings stop being offered.
    pub node_timeout: ConfigDuration,
    /// `[cluster.tls]`: what nodes present to and verify of each other.
    pub tls: Option<ClusterTls>,
    /// Allow a clear-text `advertise` (no TLS between nodes): node tokens are then accepted
    /// from any peer. For a test bed on one host only.
    pub insecure_plaintext: bool,
    /// How often the cluster's TLS session-ticket key rotates (one node does it).
    pub ticket_rotation: ConfigDuration,
    /// `[cluster.redis_tls]`: the CA that verifies Redis (and a client certificate) for
    /// `rediss://` URLs; without it `rediss://` verifies against the system's CA store.
    pub redis_tls: Option<RedisTls>,
}

/// `[cluster.redis_tls]`: TLS to Redis (`rediss://` URLs). `ca_file` verifies the Redis
/// server's certificate (and its host name, the URL's); `certificate` and `private_key`,
/// both or neither, are presented to a Redis with `tls-auth-clients`. Paths relative to
/// the configuration directory's parent, as every TLS file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
}

/// `[cluster.tls]`: the node certificate (issued by the cluster CA) that a node presents
/// both when it connects to another node and when another node connects to it, and the
/// cluster CA that verifies the other side. Paths are relative to the configuration
/// directory's parent, as every TLS file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub ca_file: PathBuf,
}

/// The name of the TLS domain made from `[cluster.tls]`. Brackets: no domain written in
/// conf.d is mistaken for it by accident.
pub const CLUSTER_DOMAIN: &str = "[cluster.tls]";
/// The SNI a node sends when it connects to another node's advertise address: it selects
/// the cluster domain on the other side (whatever listener it arrives on), which requires a
/// certificate of the cluster CA. `.invalid` (RFC 2606): never a real name.
pub const CLUSTER_SNI: &str = "cluster.siprox.invalid";

/// The TLS domain node-to-node connections use, on both sides: server side chosen by
/// [`CLUSTER_SNI`] and requiring a client certificate verified by the cluster CA; client
/// side chosen by the same server name (the runtime gives it to every connection to
/// another node's advertise address), sending it as SNI, presenting the node certificate
/// and verifying the other node's against the cluster CA (not its host name: the CA issues
/// node certificates only). `None` without `[cluster.tls]`.
pub fn cluster_domain(c: &ClusterConfig) -> Option<super::DomainConfig> {
    let t = c.tls.as_ref()?;
    Some(super::DomainConfig {
        names: Vec::new(),
        server: Some(super::ServerTls {
            sni: vec![CLUSTER_SNI.to_owned()],
            certificate: t.certificate.clone(),
            private_key: t.private_key.clone(),
            ca_file: Some(t.ca_file.clone()),
            verify_client: super::runtime::VerifyClient::Require,
            ..super::ServerTls::default()
        }),
        client: Some(super::ClientTls {
            server_names: vec![CLUSTER_SNI.to_owned()],
            certificate: Some(t.certificate.clone()),
            private_key: Some(t.private_key.clone()),
            ca_file: Some(t.ca_file.clone()),
            verify_server: true,
            verify_hostname: false,
            server_name: Some(CLUSTER_SNI.to_owned()),
            ..super::ClientTls::default()
        }),
        script: None,
    })
}

/// True when `advertise` is reached over TLS (`sips:` or `;transport=tls`).
pub fn advertise_is_tls(advertise: &str) -> bool {
    let a = advertise.to_ascii_lowercase();
    a.starts_with("sips:") || a.contains(";transport=tls")
}

impl ClusterConfig {
    /// True when `redis` lists the seeds of a Redis Cluster rather than one Redis.
    pub fn is_redis_cluster(&self) -> bool {
        self.redis.len() > 1
    }

    /// True when Redis is reached over TLS (`rediss://`).
    pub fn redis_is_tls(&self) -> bool {
        self.redis.iter().any(|u| u.starts_with("rediss://"))
    }

    /// The same, with `[cluster.redis_tls]`'s relative paths made relative to `base` (the
    /// configuration directory's parent), for the runtime that opens them.
    pub fn with_base(&self, base: &std::path::Path) -> ClusterConfig {
        let mut c = self.clone();
        if let Some(t) = c.redis_tls.as_mut() {
            for p in [&mut t.ca_file, &mut t.certificate, &mut t.private_key]
                .into_iter()
                .flatten()
            {
                *p = base.join(&*p);
            }
        }
        c
    }
}

/// `redis = "redis://..."` or `redis = ["redis://...", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Default for Urls {
    fn default() -> Self {
        Urls::Many(Vec::new())
    }
}

/// `[cluster]` as written. Every key has a default, so that a drop-in file (or a
/// `SIPROX_CLUSTER__...` variable) that sets one key is read on its own as every other
/// section is; what the merged section must hold is [`ClusterConfig::check`]'s job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    node: String,
    #[serde(default)]
    advertise: String,
    #[serde(default)]
    redis: Urls,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    #[serde(default = "default_heartbeat")]
    heartbeat: ConfigDuration,
    #[serde(default = "default_node_timeout")]
    node_timeout: ConfigDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<ClusterTls>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure_plaintext: bool,
    #[serde(default = "default_ticket_rotation")]
    ticket_rotation: ConfigDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redis_tls: Option<RedisTls>,
}

fn default_prefix() -> String {
    "siprox".to_owned()
}

fn default_heartbeat() -> ConfigDuration {
    ConfigDuration::secs(2)
}

fn default_node_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
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
        Ok(ClusterConfig {
            node: r.node,
            advertise: r.advertise.trim().to_owned(),
            redis: match r.redis {
                Urls::One(u) => vec![u],
                Urls::Many(v) => v,
            },
            key_prefix: r.key_prefix,
            heartbeat: r.heartbeat,
            node_timeout: r.node_timeout,
            tls: r.tls,
            insecure_plaintext: r.insecure_plaintext,
            ticket_rotation: r.ticket_rotation,
            redis_tls: r.redis_tls,
        })
    }
}

impl ClusterConfig {
    /// What the merged `[cluster]` must hold: the first fault, as `cluster.<key>: why`.
    /// Run by validation on the whole configuration (a drop-in may set one key only).
    pub fn check(&self) -> Result<(), String> {
        check_name("node", &self.node)?;
        check_name("key_prefix", &self.key_prefix)?;
        let a = self.advertise.as_str();
        if !(a.starts_with("sip:") || a.starts_with("sips:")) || a.len() < 5 {
            return Err(format!(
                "cluster.advertise: `{a}` is not a SIP URI (e.g. \"sip:10.0.0.1:5071;transport=tls\")"
            ));
        }
        if self.redis.is_empty() {
            return Err("cluster.redis: at least one redis:// URL is needed".to_owned());
        }
        for u in &self.redis {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(format!(
                    "cluster.redis: `{u}` is not a redis:// or rediss:// URL"
                ));
            }
        }
        // One Redis Cluster speaks TLS on every node or on none.
        if self.redis_is_tls() && self.redis.iter().any(|u| u.starts_with("redis://")) {
            return Err(
                "cluster.redis: mixes redis:// and rediss:// URLs; use one scheme".to_owned(),
            );
        }
        if let Some(t) = &self.redis_tls {
            if !self.redis_is_tls() {
                return Err(
                    "cluster.redis_tls: set, but cluster.redis has no rediss:// URL \
                     (TLS to Redis is asked for by the rediss:// scheme)"
                        .to_owned(),
                );
            }
            if self.is_redis_cluster() {
                return Err(
                    "cluster.redis_tls: not supported with a Redis Cluster (a list of \
                     URLs): its rediss:// seeds verify against the system's CA store"
                        .to_owned(),
                );
            }
            match (&t.certificate, &t.private_key) {
                (Some(_), None) => {
                    return Err("cluster.redis_tls.private_key: needed with \
                         cluster.redis_tls.certificate"
                        .to_owned())
                }
                (None, Some(_)) => {
                    return Err("cluster.redis_tls.certificate: needed with \
                         cluster.redis_tls.private_key"
                        .to_owned())
                }
                _ => {}
            }
        }
        if self.heartbeat.get().is_zero() {
            return Err("cluster.heartbeat: must be more than 0".to_owned());
        }
        // One missed heartbeat must not declare a node dead.
        if self.node_timeout.get() < self.heartbeat.get() * 2 {
            return Err(format!(
                "cluster.node_timeout: {} is less than twice cluster.heartbeat ({})",
                String::from(self.node_timeout),
                String::from(self.heartbeat)
            ));
        }
        // Node-to-node requests carry node tokens and whole calls: never clear text unless
        // asked for by name.
        if !self.insecure_plaintext {
            if !advertise_is_tls(a) {
                return Err(format!(
                    "cluster.advertise: `{a}` is not TLS (sips: or ;transport=tls); nodes talk \
                     to each other over TLS (set cluster.insecure_plaintext = true to allow clear \
                     text on a test bed)"
                ));
            }
            if self.tls.is_none() {
                return Err(
                    "cluster.tls: TLS between nodes needs [cluster.tls] with certificate, \
                     private_key and ca_file (the cluster CA)"
                        .to_owned(),
                );
            }
        }
        // A key must be known everywhere before it encrypts, and outlive two rotations.
        if self.ticket_rotation.get() < self.heartbeat.get() * 4 {
            return Err(format!(
                "cluster.ticket_rotation: {} is less than 4 x cluster.heartbeat ({})",
                String::from(self.ticket_rotation),
                String::from(self.heartbeat)
            ));
        }
        Ok(())
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
            tls: c.tls,
            insecure_plaintext: c.insecure_plaintext,
            ticket_rotation: c.ticket_rotation,
            redis_tls: c.redis_tls,
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
        let c = toml::from_str::<Wrap>(toml_text)
            .map(|w| w.cluster)
            .map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn one_key_alone_reads_and_the_whole_is_checked() {
        // A drop-in that only tunes the heartbeat is read on its own; the merged section
        // is what must hold a node, an advertise URI and Redis.
        let e = parse("[cluster]\nheartbeat = \"250ms\"\n").unwrap_err();
        assert!(e.contains("cluster.node"), "{e}");
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let c = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:127.0.0.1:5071\"\nredis = \"redis://127.0.0.1:6379\"\ninsecure_plaintext = true\n",
        )
        .unwrap();
        assert_eq!(c.key_prefix, "siprox");
        assert_eq!(c.heartbeat, ConfigDuration::secs(2));
        assert_eq!(c.node_timeout, ConfigDuration::secs(5));
        assert_eq!(c.redis, vec!["redis://127.0.0.1:6379".to_owned()]);
        assert!(!c.is_redis_cluster());
    }

    #[test]
    fn a_list_of_urls_is_a_redis_cluster() {
        let c = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = [\"redis://h:1\", \"redis://h:2\"]\ninsecure_plaintext = true\n",
        )
        .unwrap();
        assert!(c.is_redis_cluster());
    }

    #[test]
    fn nodes_talk_tls_unless_clear_text_is_asked_for() {
        let base = "[cluster]\nnode = \"a\"\nredis = \"redis://h\"\n";
        let tls = "[cluster.tls]\ncertificate = \"n.pem\"\nprivate_key = \"n.key\"\nca_file = \"ca.pem\"\n";
        let e = parse(&format!("{base}advertise = \"sip:10.0.0.1:5060\"\n{tls}")).unwrap_err();
        assert!(
            e.contains("cluster.advertise") && e.contains("insecure_plaintext"),
            "{e}"
        );
        let e = parse(&format!(
            "{base}advertise = \"sip:10.0.0.1:5061;transport=tls\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("cluster.tls"), "{e}");
        let c = parse(&format!(
            "{base}advertise = \"sip:10.0.0.1:5061;transport=TLS\"\n{tls}"
        ))
        .unwrap();
        let d = cluster_domain(&c).expect("a domain");
        let server = d.server.expect("server side");
        assert_eq!(server.sni, vec![CLUSTER_SNI.to_owned()]);
        assert_eq!(
            server.verify_client,
            crate::config::runtime::VerifyClient::Require
        );
        assert_eq!(
            d.client.expect("client side").server_names,
            vec![CLUSTER_SNI.to_owned()]
        );
        let c = parse(&format!("{base}advertise = \"sips:10.0.0.1\"\n{tls}")).unwrap();
        assert!(!c.insecure_plaintext);
        let c = parse(&format!(
            "{base}advertise = \"sip:10.0.0.1\"\ninsecure_plaintext = true\n"
        ))
        .unwrap();
        assert!(cluster_domain(&c).is_none());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let base = |extra: &str| {
            format!(
                "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\ninsecure_plaintext = true\n{extra}"
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
        let e = parse("[cluster]\ninsecure_plaintext = true\nnode = \"a b\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.node"), "{e}");
        let e = parse("[cluster]\nnode = \"a\"\nadvertise = \"h:5060\"\nredis = \"redis://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.advertise"), "{e}");
        let e = parse("[cluster]\ninsecure_plaintext = true\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"http://h\"\n")
            .unwrap_err();
        assert!(e.contains("cluster.redis"), "{e}");
        let tls = "[cluster]\ninsecure_plaintext = true\nnode = \"a\"\nadvertise = \"sip:h\"\n";
        let c = parse(&format!("{tls}redis = \"rediss://h\"\n")).unwrap();
        assert!(c.redis_is_tls() && c.redis_tls.is_none());
        let c = parse(&format!(
            "{tls}redis = \"rediss://h\"\n[cluster.redis_tls]\nca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.with_base(std::path::Path::new("/etc/siprox"))
                .redis_tls
                .and_then(|t| t.ca_file),
            Some(PathBuf::from("/etc/siprox/ca.pem"))
        );
        for (extra, key) in [
            (
                "redis = \"redis://h\"\n[cluster.redis_tls]\nca_file = \"ca.pem\"\n",
                "cluster.redis_tls",
            ),
            (
                "redis = \"rediss://h\"\n[cluster.redis_tls]\ncertificate = \"c.pem\"\n",
                "cluster.redis_tls.private_key",
            ),
            (
                "redis = [\"rediss://h:1\", \"redis://h:2\"]\n",
                "cluster.redis",
            ),
            (
                "redis = [\"rediss://h:1\", \"rediss://h:2\"]\n[cluster.redis_tls]\nca_file = \"ca.pem\"\n",
                "cluster.redis_tls",
            ),
        ] {
            let e = parse(&format!("{tls}{extra}")).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = parse("[cluster]\ninsecure_plaintext = true\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = []\n").unwrap_err();
        assert!(e.contains("cluster.redis"), "{e}");
        let e = parse(
            "[cluster]\nnode = \"a\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\nnodes = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("nodes"), "{e}");
    }
}
