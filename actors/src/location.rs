//! The registrar and digest authentication in the runtime: the one in-memory location
//! store of the process, the nonce authenticator and the users file, the periodic expiry
//! and the snapshot file (written atomically: temp file, fsync, rename). File I/O happens at
//! start, on the control arbiter's timer and at exit, never on a worker thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use siprox::auth::{AuthSettings, Authenticator, Users};
use siprox::config::Config;
use siprox::proxy::FlowKeys;
use siprox::registrar::{restore, to_snapshot, LocationStore, MemoryStore};
use tracing::{info, warn};

use crate::error::RuntimeError;

/// Registrations and credentials, shared by every worker.
pub struct Location {
    pub store: Arc<MemoryStore>,
    pub auth: Authenticator,
    /// The users file, swapped whole when it is reloaded.
    pub users: ArcSwap<Users>,
    users_file: Option<PathBuf>,
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
    /// Build from the configuration: load the users file and the snapshot (a snapshot that
    /// cannot be read is moved aside, and siprox starts empty: never lost silently).
    pub fn start(config: &Config, base: &Path) -> Result<Location, RuntimeError> {
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
        let auth = match &config.auth.secret_file {
            Some(f) => {
                let path = siprox::tls::resolve(base, f);
                let secret = std::fs::read(&path).map_err(|e| RuntimeError::Io {
                    what: format!("reading [auth] secret_file {}", path.display()),
                    source: e,
                })?;
                Authenticator::new(&secret, settings)
            }
            None => Authenticator::with_random_secret(settings),
        }
        .map_err(|e| RuntimeError::Config(format!("[auth]: {e}")))?;
        let users_file = config
            .auth
            .users_file
            .as_ref()
            .map(|f| siprox::tls::resolve(base, f));
        let users = match &users_file {
            Some(p) => load_users(p)?,
            None => Users::default(),
        };
        let store = Arc::new(MemoryStore::new());
        let snapshot_file = config
            .location
            .snapshot_file
            .as_ref()
            .map(|f| siprox::tls::resolve(base, f));
        if let Some(p) = &snapshot_file {
            match std::fs::read(p) {
                Ok(bytes) => match restore(&*store, &bytes, crate::tls::unix_now()) {
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
        Ok(Location {
            store,
            auth,
            users: ArcSwap::from_pointee(users),
            users_file,
            snapshot_file,
            snapshot_interval: config.location.snapshot_interval.get(),
            expire_interval: config.location.expire_interval.get(),
        })
    }

    /// Re-read the users file; on error the old users stay and the error is returned.
    pub fn reload_users(&self) -> Result<(), RuntimeError> {
        if let Some(p) = &self.users_file {
            let users = load_users(p)?;
            self.users.store(Arc::new(users));
        }
        Ok(())
    }

    /// Remove expired bindings.
    pub fn expire(&self) -> usize {
        self.store.expire(crate::tls::unix_now()).unwrap_or(0)
    }

    /// Write the snapshot file atomically, if one is configured.
    pub fn write_snapshot(&self) -> Result<(), RuntimeError> {
        let Some(path) = &self.snapshot_file else {
            return Ok(());
        };
        let bytes = to_snapshot(&*self.store, crate::tls::unix_now())
            .map_err(|e| RuntimeError::Config(format!("location snapshot: {e}")))?;
        write_atomically(path, &bytes).map_err(|e| RuntimeError::Io {
            what: format!("writing location snapshot {}", path.display()),
            source: e,
        })
    }
}

/// The flow-token keys of `[auth] flow_key_file` (created with one random key, mode 0600,
/// when it does not exist yet); without the setting, a random key for this process.
pub fn load_flow_keys(config: &Config, base: &Path) -> Result<FlowKeys, RuntimeError> {
    let Some(f) = &config.auth.flow_key_file else {
        return Ok(FlowKeys::random());
    };
    let path = siprox::tls::resolve(base, f);
    let what = |verb: &str| format!("{verb} [auth] flow_key_file {}", path.display());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = FlowKeys::generate_file()
                .map_err(|e| RuntimeError::Config(format!("{}: {e}", what("generating"))))?;
            match create_private(&path, text.as_bytes()) {
                Ok(()) => {
                    info!(file = %path.display(), "flow-token key generated");
                    text
                }
                // Another process made it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path).map_err(|source| RuntimeError::Io {
                        what: what("reading"),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(RuntimeError::Io {
                        what: what("creating"),
                        source,
                    })
                }
            }
        }
        Err(source) => {
            return Err(RuntimeError::Io {
                what: what("reading"),
                source,
            })
        }
    };
    FlowKeys::parse(&text).map_err(|e| RuntimeError::Config(format!("{}: {e}", what("in"))))
}

/// A new file readable by its owner only; fails if it exists.
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn load_users(path: &Path) -> Result<Users, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Io {
        what: format!("reading [auth] users_file {}", path.display()),
        source: e,
    })?;
    Users::from_toml(&text, &path.display().to_string())
        .map_err(|e| RuntimeError::Config(e.to_string()))
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
