//! The registrar and digest authentication in the runtime: the one in-memory location
//! store of the process (in a cluster wrapped with the replica of the other nodes'
//! bindings, `state::replica`), the nonce authenticator (the users live in the snapshot), the periodic expiry
//! and the snapshot file (written atomically: temp file, fsync, rename). File I/O happens at
//! start, on the control arbiter's timer and at exit, never on a worker thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use siprox::auth::{AuthSettings, Authenticator};
use siprox::config::Config;
use siprox::registrar::{restore, to_snapshot, LocationStore, MemoryStore};
use tracing::{info, warn};

use crate::error::RuntimeError;
use crate::state::replica::{Change, ClusterStore, Outbox, Replica};

/// Changes that may wait for Redis before the next one is dropped (and counted): a burst of
/// registrations while Redis is slow, not an outage (an outage is covered by re-pushing the
/// whole local store once Redis is back).
const CLUSTER_QUEUE: usize = 4096;

/// Registrations and credentials, shared by every worker.
pub struct Location {
    /// This node's own bindings.
    pub store: Arc<MemoryStore>,
    /// In a cluster: the local store plus the replica of the other nodes' bindings, and the
    /// queue of this node's changes to Redis. `None` on a single node.
    pub cluster: Option<Arc<ClusterStore>>,
    /// The receiving end of the cluster's outbox, taken once by the cluster actor.
    pub cluster_queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Change>>>,
    snapshot_file: Option<PathBuf>,
    pub snapshot_interval: Duration,
    pub expire_interval: Duration,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("bindings", &self.store.len())
            .field("snapshot_file", &self.snapshot_file)
            .finish()
    }
}

impl Location {
    /// Build from the configuration: the snapshot (a snapshot that cannot be read is moved
    /// aside, and siprox starts empty: never lost silently). The authenticator lives in the
    /// `Snapshot` ([`authenticator`]), so that a reload changes it.
    pub fn start(config: &Config, base: &Path) -> Result<Location, RuntimeError> {
        let store = Arc::new(MemoryStore::new());
        let snapshot_file = config
            .location
            .snapshot_file
            .as_ref()
            .map(|f| crate::state::resolve(base, f));
        if let Some(p) = &snapshot_file {
            match std::fs::read(p) {
                Ok(bytes) => match restore(&*store, &bytes, crate::state::unix_now()) {
                    Ok(n) => info!(bindings = n, file = %p.display(), "location snapshot restored"),
                    Err(e) => {
                        let aside = p.with_extension("bad");
                        let _ = std::fs::rename(p, &aside);
                        warn!(file = %p.display(), moved_to = %aside.display(), error = %e,
                            "location snapshot unreadable: moved aside, starting empty");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(file = %p.display(), error = %e, "cannot read location snapshot"),
            }
        }
        let (cluster, cluster_queue) = match &config.cluster {
            Some(c) => {
                let (outbox, rx) = Outbox::new(CLUSTER_QUEUE);
                let cs = ClusterStore {
                    local: store.clone(),
                    replica: Arc::new(Replica::new(&c.node)),
                    outbox,
                    retry_after: u32::try_from(c.node_timeout.get().as_secs().max(1))
                        .unwrap_or(u32::MAX),
                    replay_dropped: std::sync::OnceLock::new(),
                };
                (Some(Arc::new(cs)), Some(rx))
            }
            None => (None, None),
        };
        Ok(Location {
            store,
            cluster,
            cluster_queue: std::sync::Mutex::new(cluster_queue),
            snapshot_file,
            snapshot_interval: config.location.snapshot_interval.get(),
            expire_interval: config.location.expire_interval.get(),
        })
    }

    /// The store the registrar and `lookup()` use: in a cluster, the local store and the
    /// replica; else the local store.
    pub fn registrar_store(&self) -> &dyn LocationStore {
        match &self.cluster {
            Some(c) => &**c,
            None => &*self.store,
        }
    }

    /// Remove expired bindings (of the replica too).
    pub fn expire(&self) -> usize {
        self.registrar_store()
            .expire(crate::state::unix_now())
            .unwrap_or(0)
    }

    /// Write the snapshot file atomically, if one is configured.
    pub fn write_snapshot(&self) -> Result<(), RuntimeError> {
        let Some(path) = &self.snapshot_file else {
            return Ok(());
        };
        let bytes = to_snapshot(&*self.store, crate::state::unix_now())
            .map_err(|e| RuntimeError::Config(format!("location snapshot: {e}")))?;
        write_atomically(path, &bytes).map_err(|e| RuntimeError::Io {
            what: format!("writing location snapshot {}", path.display()),
            source: e,
        })
    }
}

/// The digest authenticator of `[auth]` (algorithms, nonce lifetime, secret) and the digest
/// of its secret. With `prev` (the running one and its secret digest) and the same secret,
/// the running nonce table is kept: a reload that changes the algorithms neither
/// invalidates the nonces out there nor lets one be replayed. Blocking (reads
/// `secret_file`): at start or on a reload thread.
pub fn authenticator(
    config: &Config,
    base: &Path,
    prev: Option<(&Arc<Authenticator>, u64)>,
) -> Result<(Arc<Authenticator>, u64), RuntimeError> {
    use std::hash::{Hash, Hasher};
    let mut algorithms = Vec::new();
    for a in &config.auth.algorithms {
        algorithms.push(siprox::auth::Algorithm::parse(a).ok_or_else(|| {
            RuntimeError::Config(format!(
                "[auth] algorithms: `{a}` is not SHA-256, SHA-256-sess, MD5 or MD5-sess"
            ))
        })?);
    }
    if algorithms.is_empty() {
        return Err(RuntimeError::Config(
            "[auth] algorithms: at least one is needed".to_owned(),
        ));
    }
    let settings = AuthSettings {
        nonce_ttl: u32::try_from(config.auth.nonce_ttl.get().as_secs()).unwrap_or(300),
        algorithms,
        ..AuthSettings::default()
    };
    let secret = match &config.auth.secret_file {
        Some(f) => {
            let path = crate::state::resolve(base, f);
            Some(std::fs::read(&path).map_err(|e| RuntimeError::Io {
                what: format!("reading [auth] secret_file {}", path.display()),
                source: e,
            })?)
        }
        None => None,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    let key = h.finish();
    // A new secret gets a new nonce table, still shared with the cluster.
    let sink = prev.and_then(|(running, _)| running.nonces().sink());
    if let Some((running, running_key)) = prev.filter(|(_, k)| *k == key) {
        if *running.settings() == settings {
            return Ok((running.clone(), key));
        }
        return Ok((Arc::new(running.reconfigured(settings)), running_key));
    }
    match &secret {
        Some(s) => Authenticator::new(s, settings),
        None => Authenticator::with_random_secret(settings),
    }
    .map(|a| {
        if let Some(sink) = sink {
            a.nonces().set_sink(sink);
        }
        (Arc::new(a), key)
    })
    .map_err(|e| RuntimeError::Config(format!("[auth]: {e}")))
}

/// Temp file in the same directory, fsync, rename: a crash leaves the old file or the new
/// one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The control arbiter's timers for the location store: expiry and snapshot writes.
pub struct Keeper {
    pub location: Arc<Location>,
}

impl actix::Actor for Keeper {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::AsyncContext as _;
        ctx.run_interval(self.location.expire_interval, |k, _| {
            k.location.expire();
        });
        ctx.run_interval(self.location.snapshot_interval, |k, _| {
            // A blocking write, but on the control arbiter, never a worker; small files.
            if let Err(e) = k.location.write_snapshot() {
                warn!(error = %e, "location snapshot not written");
            }
        });
    }
}
