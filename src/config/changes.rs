//! What a reload would change: every key of the schema classified as live (a reload applies
//! it) or restart-only (the running value stays until a restart), and a pure diff of two
//! configurations key by key. Must never read a file or decide for the runtime what to do
//! with a change beyond its class: the reload reports and pins, the core only compares.

use std::fmt;

use serde_json::{Map, Value};

use super::schema::Config;

/// Whether a reload applies a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Applied by the next reload (for connections: the next connection).
    Live,
    /// Read once at start (sockets, threads, watchers): a change waits for a restart.
    RestartOnly,
}

impl Class {
    /// `live` or `restart-only`, as logs and the RPC say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Live => "live",
            Class::RestartOnly => "restart-only",
        }
    }
}

/// One key whose value differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted path, `section.key` (`domains."a.example".server.certificate` for a
    /// segment that holds a dot).
    pub key: String,
    /// The value before, as JSON text; `None`: not set.
    pub old: Option<String>,
    /// The value after, as JSON text; `None`: not set.
    pub new: Option<String>,
    pub class: Class,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
        write!(
            f,
            "{} = {} (was {})",
            self.key,
            show(&self.new),
            show(&self.old)
        )
    }
}

/// The classification, by key pattern: `*` matches one segment (a domain's name), and a
/// pattern that ends at a table covers every key below it (a section that is live as a
/// whole). Checked against the schema by a test: a new field with no class fails it.
const CLASSES: &[(&str, Class)] = &[
    // Sockets are bound once, by every worker.
    ("listen", Class::RestartOnly),
    // Read from the snapshot for each new message or connection.
    ("limits", Class::Live),
    // The subscriber's reload handle (actors/src/logging.rs).
    ("log.level", Class::Live),
    ("log.format", Class::Live),
    // The snapshot's settings, read by each REGISTER.
    ("registrar", Class::Live),
    // The location store and its timers are set up once.
    ("location.snapshot_file", Class::RestartOnly),
    ("location.snapshot_interval", Class::RestartOnly),
    ("location.expire_interval", Class::RestartOnly),
    // Users, nonce authenticator and flow keys are rebuilt into the snapshot.
    ("auth.users_file", Class::Live),
    ("auth.secret_file", Class::Live),
    ("auth.flow_key_file", Class::Live),
    ("auth.nonce_ttl", Class::Live),
    ("auth.algorithms", Class::Live),
    ("script.file", Class::Live),
    // Tenants: rebuilt one by one, each isolated from the others' errors.
    ("domains", Class::Live),
    // Threads, the shutdown timer and the start's own policy.
    ("runtime.workers", Class::RestartOnly),
    ("runtime.shutdown_grace", Class::RestartOnly),
    ("runtime.trim_memory_after", Class::Live),
    ("runtime.strict_start", Class::RestartOnly),
    // Taken from the snapshot by each new connection (admission, timeouts, queues).
    ("connections.max_connections", Class::Live),
    ("connections.max_connections_per_ip", Class::Live),
    ("connections.handshake_timeout", Class::Live),
    ("connections.idle_timeout", Class::Live),
    ("connections.message_timeout", Class::Live),
    ("connections.max_partial_bytes_per_ip", Class::Live),
    ("connections.send_timeout", Class::Live),
    ("connections.connect_timeout", Class::Live),
    ("connections.max_write_queue", Class::Live),
    // The backlog is given to listen(2) once.
    ("connections.listen_backlog", Class::RestartOnly),
    // The default TLS domains are rebuilt like any tenant's.
    ("tls.certificate", Class::Live),
    ("tls.private_key", Class::Live),
    ("tls.private_key_password_file", Class::Live),
    ("tls.private_key_password_env", Class::Live),
    ("tls.ca_file", Class::Live),
    ("tls.ca_dir", Class::Live),
    ("tls.crl_file", Class::Live),
    ("tls.verify_client", Class::Live),
    ("tls.verify_depth", Class::Live),
    ("tls.verify_server", Class::Live),
    ("tls.min_version", Class::Live),
    ("tls.max_version", Class::Live),
    ("tls.ciphers", Class::Live),
    ("tls.ciphersuites", Class::Live),
    ("tls.groups", Class::Live),
    ("tls.session_resumption", Class::Live),
    ("tls.client_certificate", Class::Live),
    ("tls.client_private_key", Class::Live),
    ("tls.default_server", Class::Live),
    ("tls.expiry_warning_days", Class::Live),
    // Development certificates are generated at start only; the watcher and the periodic
    // check are started once.
    ("tls.generate_dev_certs", Class::RestartOnly),
    ("tls.watch", Class::RestartOnly),
    ("tls.reload_debounce", Class::RestartOnly),
    ("tls.reload_check_interval", Class::RestartOnly),
    // The management listener (socket, TLS identity, limits) is prepared once; who may call
    // is read from the snapshot at each request.
    ("management.enabled", Class::RestartOnly),
    ("management.listen", Class::RestartOnly),
    ("management.certificate", Class::RestartOnly),
    ("management.private_key", Class::RestartOnly),
    ("management.ca_file", Class::RestartOnly),
    ("management.allow", Class::Live),
    ("management.max_request_size", Class::RestartOnly),
    ("management.request_timeout", Class::RestartOnly),
    ("management.idle_timeout", Class::RestartOnly),
    ("management.handshake_timeout", Class::RestartOnly),
    ("management.max_connections", Class::RestartOnly),
    ("management.reload_min_interval", Class::RestartOnly),
    // Each worker builds its transaction table once, at start.
    ("transactions", Class::RestartOnly),
    // The tables are made once, at start (their entries live across reloads).
    ("htables", Class::RestartOnly),
];

/// The class of the key at `path`; `None` when the table above does not know it (a
/// reload then treats it as restart-only: a warning too many beats a silent no-op).
pub fn class_of(path: &[String]) -> Option<Class> {
    CLASSES.iter().find_map(|(pattern, class)| {
        let pat: Vec<&str> = pattern.split('.').collect();
        let covers = pat.len() <= path.len()
            && pat
                .iter()
                .zip(path)
                .all(|(p, seg)| *p == "*" || *p == seg.as_str());
        covers.then_some(*class)
    })
}

/// Every key whose value differs between `old` and `new`, in key order, each with its
/// class. Lists are compared whole (`auth.algorithms`, `listen`).
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) = (leaves(old), leaves(new));
    let mut keys: Vec<&Vec<String>> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: dotted(k),
            old: a.get(k).map(Value::to_string),
            new: b.get(k).map(Value::to_string),
            class: class_of(k).unwrap_or(Class::RestartOnly),
        })
        .collect()
}

/// `new`, with every restart-only key of `changes` set back to its value in `old`: what
/// actually runs after a reload that cannot apply them. `sources` and `env_overrides` are
/// `new`'s.
pub fn pin_restart_only(old: &Config, new: &Config, changes: &[Change]) -> Config {
    let (a, mut b) = (to_tree(old), to_tree(new));
    let leaves_a = leaves(old);
    for c in changes.iter().filter(|c| c.class == Class::RestartOnly) {
        let Some(path) = leaves(new)
            .keys()
            .chain(leaves_a.keys())
            .find(|p| dotted(p) == c.key)
            .cloned()
        else {
            continue;
        };
        set_path(&mut b, &path, lookup(&a, &path).cloned());
    }
    match serde_json::from_value::<Config>(b) {
        Ok(mut pinned) => {
            pinned.sources = new.sources.clone();
            pinned.env_overrides = new.env_overrides.clone();
            pinned
        }
        // Every value came from a `Config`: this cannot fail; if it ever did, the new
        // configuration is the safer answer than a panic.
        Err(_) => new.clone(),
    }
}

fn to_tree(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// Every leaf (scalar or list) of `c`'s serialised form, by path.
fn leaves(c: &Config) -> std::collections::BTreeMap<Vec<String>, Value> {
    let mut out = std::collections::BTreeMap::new();
    walk(&to_tree(c), &mut Vec::new(), &mut out);
    out
}

fn walk(
    v: &Value,
    path: &mut Vec<String>,
    out: &mut std::collections::BTreeMap<Vec<String>, Value>,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.clone());
                walk(child, path, out);
                path.pop();
            }
        }
        // An empty table says nothing a key would not (`domains = {}`).
        Value::Object(_) => {}
        other => {
            out.insert(path.clone(), other.clone());
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Sets (or, with `None`, removes) the value at `path`, creating tables on the way.
fn set_path(v: &mut Value, path: &[String], to: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let Some(m) = cur.as_object_mut() else { return };
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Some(m) = cur.as_object_mut() else { return };
    match to {
        Some(x) => {
            m.insert(last.clone(), x);
        }
        None => {
            m.remove(last);
        }
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|s| {
            if s.contains('.') || s.is_empty() {
                format!("{s:?}")
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        ClientTls, ConfigDuration, DomainConfig, HostPort, Listener, Proto, ServerTls,
    };
    use std::path::PathBuf;

    /// A configuration with every optional value set and every list non-empty, so that its
    /// serialised form shows every key of the schema.
    fn full() -> Config {
        let mut c = Config::default();
        c.listen.push(Listener {
            proto: Proto::Tls,
            addr: "127.0.0.1:5061".parse().expect("addr"),
            advertise: HostPort::parse("sip.example.com").ok(),
        });
        c.location.snapshot_file = Some(PathBuf::from("var/loc"));
        c.auth.users_file = Some(PathBuf::from("u.toml"));
        c.auth.secret_file = Some(PathBuf::from("s"));
        c.auth.flow_key_file = Some(PathBuf::from("f"));
        c.script.file = Some(PathBuf::from("main.cfg"));
        c.tls.private_key_password_file = Some(PathBuf::from("p"));
        c.tls.private_key_password_env = Some("P".to_owned());
        c.tls.ca_dir = Some(PathBuf::from("ca"));
        c.tls.crl_file = Some(PathBuf::from("crl"));
        c.tls.client_certificate = Some(PathBuf::from("c.pem"));
        c.tls.client_private_key = Some(PathBuf::from("c.key"));
        c.management.allow = vec!["admin".to_owned()];
        c.htables
            .insert("ipban".to_owned(), crate::config::HtableConfig::default());
        c.domains.insert(
            "a.example".to_owned(),
            DomainConfig {
                names: vec!["a.example".to_owned()],
                server: Some(ServerTls {
                    sni: vec!["a.example".to_owned()],
                    handshake_timeout: Some(ConfigDuration::secs(1)),
                    ..ServerTls::default()
                }),
                client: Some(ClientTls {
                    server_name: Some("x".to_owned()),
                    ..ClientTls::default()
                }),
                script: Some(PathBuf::from("a.cfg")),
            },
        );
        c
    }

    #[test]
    fn every_key_of_the_schema_has_a_class() {
        let unclassified: Vec<String> = leaves(&full())
            .keys()
            .filter(|k| class_of(k).is_none())
            .map(|k| dotted(k))
            .collect();
        assert!(
            unclassified.is_empty(),
            "keys without a class in src/config/changes.rs CLASSES: {unclassified:?}"
        );
        // And no pattern is stale: each names a key (or table) the schema has.
        let keys: Vec<String> = leaves(&full()).keys().map(|k| dotted(k)).collect();
        for (pattern, _) in CLASSES {
            assert!(
                keys.iter()
                    .any(|k| k == pattern || k.starts_with(&format!("{pattern}."))),
                "{pattern} names no key of the schema"
            );
        }
    }

    #[test]
    fn diff_names_each_changed_key_with_its_class_and_values() {
        let old = full();
        let mut new = full();
        new.log.level = "debug".to_owned();
        new.runtime.workers = 4;
        new.auth.algorithms = vec!["MD5".to_owned()];
        new.auth.secret_file = None;
        new.domains
            .insert("b".to_owned(), DomainConfig::default().clone());
        new.domains
            .get_mut("a.example")
            .and_then(|d| d.server.as_mut())
            .expect("server")
            .certificate = PathBuf::from("certs/a2.pem");
        let changes = diff(&old, &new);
        let find = |k: &str| changes.iter().find(|c| c.key == k);
        let level = find("log.level").expect("level");
        assert_eq!(
            (level.old.as_deref(), level.new.as_deref(), level.class),
            (Some("\"info\""), Some("\"debug\""), Class::Live)
        );
        let workers = find("runtime.workers").expect("workers");
        assert_eq!(
            (
                workers.old.as_deref(),
                workers.new.as_deref(),
                workers.class
            ),
            (Some("0"), Some("4"), Class::RestartOnly)
        );
        assert_eq!(find("auth.algorithms").map(|c| c.class), Some(Class::Live));
        let secret = find("auth.secret_file").expect("secret");
        assert_eq!(
            (secret.old.as_deref(), secret.new.as_deref()),
            (Some("\"s\""), None)
        );
        let cert = find("domains.\"a.example\".server.certificate").expect("cert");
        assert_eq!(cert.class, Class::Live);
        assert!(find("domains.b.names").is_some(), "{changes:?}");
        assert_eq!(changes.len(), 6, "{changes:?}");
        assert!(diff(&old, &old).is_empty());
        assert_eq!(
            workers.to_string(),
            "runtime.workers = 4 (was 0)",
            "the log's wording"
        );
    }

    #[test]
    fn pinning_keeps_the_running_value_of_restart_only_keys_only() {
        let old = full();
        let mut new = full();
        new.runtime.workers = 4;
        new.listen.clear();
        new.management.listen = "127.0.0.1:1".parse().expect("addr");
        new.management.allow = vec!["ops".to_owned()];
        new.log.level = "debug".to_owned();
        new.sources = vec![PathBuf::from("conf.d/00-core.toml")];
        let pinned = pin_restart_only(&old, &new, &diff(&old, &new));
        assert_eq!(pinned.runtime.workers, old.runtime.workers);
        assert_eq!(pinned.listen, old.listen);
        assert_eq!(pinned.management.listen, old.management.listen);
        assert_eq!(pinned.management.allow, vec!["ops".to_owned()]);
        assert_eq!(pinned.log.level, "debug");
        assert_eq!(pinned.sources, new.sources);
        assert!(diff(&old, &pinned).iter().all(|c| c.class == Class::Live));
    }
}
