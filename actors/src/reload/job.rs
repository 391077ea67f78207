//! One reload's work, on a blocking thread: re-read conf.d (only when its digest changed),
//! rebuild the TLS domains whose inputs changed, re-read the users file, the flow-token key
//! file and the scripts that changed, and return a whole candidate snapshot (or one that waits only for the
//! `Script` actor to compile what was read) or the reasons it was refused. Must never
//! publish: the `DomainRegistry` does, with one `store()`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::state::resolve;
use siprox::auth::{Authenticator, Users};
use siprox::config::Config;
use siprox::proxy::{FlowKeys, Listen};

use crate::reload::error::{ReloadError, UsersFileError};
use crate::reload::script::{read_sources, ScriptSource};
use crate::reload::watch::watch_dirs;
use crate::state::{check_connections, Credentials, ScriptSet, Snapshot, TlsDomains};
use crate::tls::{build_domains_isolated, unix_now, BuildOptions};

/// Digests of the configuration and scripts the running snapshot was built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedDigests {
    /// [`scripts_digest`].
    pub(crate) scripts: u64,
    /// [`config_digest`].
    pub(crate) config: Option<u64>,
    /// [`users_digest`].
    pub(crate) users: u64,
}

/// One reload's work, done on a blocking thread.
pub(crate) struct Job {
    /// [`scripts_digest`] of the running scripts: unchanged scripts are not recompiled.
    pub(crate) scripts_digest: u64,
    /// [`config_digest`] of the running configuration: unchanged files are not re-read.
    pub(crate) config_digest: Option<u64>,
    pub(crate) config_dir: Option<PathBuf>,
    pub(crate) base: PathBuf,
    pub(crate) prev: Arc<Snapshot>,
    pub(crate) listens: Vec<Listen>,
    pub(crate) has_tls: bool,
    /// [`users_digest`] of the running users: an unchanged file is not parsed again.
    pub(crate) users_digest: u64,
}

pub(crate) enum JobOutcome {
    Publish(Box<Snapshot>, Vec<String>),
    Unchanged,
    Failed(Vec<ReloadError>),
    /// Everything is built but the scripts, which changed: the `Script` actor compiles
    /// them, then [`Pending::finish`] makes the snapshot.
    Compile(Box<Pending>),
}

/// A candidate snapshot waiting for its scripts.
pub(crate) struct Pending {
    pub(crate) config: Arc<Config>,
    pub(crate) sources: Vec<ScriptSource>,
    listens: Vec<Listen>,
    tls: Arc<TlsDomains>,
    users: Arc<Users>,
    auth: (Arc<Authenticator>, u64),
    flow_keys: FlowKeys,
    flow_refused: Arc<AtomicU64>,
    pub(crate) changed: Vec<String>,
}

impl Pending {
    /// The snapshot with `scripts`, or the reload refused with their errors (or with why
    /// they were not compiled).
    pub(crate) fn finish(self, scripts: Result<ScriptSet, Vec<ReloadError>>) -> JobOutcome {
        match scripts {
            Ok(s) => {
                let snap = Snapshot::build(
                    self.config,
                    self.listens,
                    self.tls,
                    Arc::new(s),
                    Credentials {
                        users: self.users,
                        auth: self.auth,
                    },
                    self.flow_keys,
                    self.flow_refused,
                );
                JobOutcome::Publish(Box::new(snap), self.changed)
            }
            Err(errors) => JobOutcome::Failed(errors),
        }
    }
}

pub(crate) struct JobResult {
    pub(crate) outcome: JobOutcome,
    /// [`scripts_digest`] of the published scripts (with `Publish`).
    pub(crate) scripts_digest: Option<u64>,
    /// [`config_digest`] of the configuration now running (not on failure).
    pub(crate) config_digest: Option<u64>,
    /// Directories to watch from now on (None: keep the current ones).
    pub(crate) watch: Option<BTreeSet<PathBuf>>,
    /// Keys whose configured value differs from the one in force (None: conf.d was not
    /// read again, the last list stands). The restart-only ones stay as they run.
    pub(crate) changes: Option<Vec<siprox::config::Change>>,
    /// What was not applied though the rest was (with `Publish`/`Compile`): tenants that
    /// keep their last good build, the global part of conf.d.
    pub(crate) kept: Vec<ReloadError>,
    /// Every TLS domain was built (or kept): a domain with no error in this reload is fine.
    pub(crate) domains_checked: bool,
    /// [`users_digest`] of the users now in the snapshot (when they were read again).
    pub(crate) users_digest: Option<u64>,
    /// The users file could not be loaded: the loaded users stay (logged once).
    pub(crate) users_error: Option<ReloadError>,
}

impl Job {
    pub(crate) fn run(self) -> JobResult {
        // A certificate rotation leaves conf.d as it was: then the running configuration is
        // reused as is, and only the TLS material is re-hashed (1 of 1,000 tenants in a few
        // milliseconds instead of re-parsing 1,000 files).
        let digest = self.config_dir.as_deref().and_then(config_digest);
        let unchanged = digest.is_some() && digest == self.config_digest;
        let running = &*self.prev.config;
        // What this reload could not apply of conf.d's global part: the rest still goes
        // ahead (tenants' files and material).
        let mut global: Vec<ReloadError> = Vec::new();
        // Every key that differs from what runs (when conf.d was read again).
        let mut restart_only = None;
        // Where conf.d's values came from: a domain whose file is missing is then named
        // with the conf file and key that point to it, as `siprox check` names it.
        let mut loaded: Option<siprox::config::Loaded> = None;
        let mut config = match &self.config_dir {
            Some(dir) if !unchanged => match super::files::load_outcome(dir).loaded {
                Ok(l) => {
                    let c = l.config.clone();
                    loaded = Some(l);
                    c
                }
                Err(errors) => {
                    // Nothing of the new conf.d can be merged: the running configuration
                    // stays, and the TLS material it names is still re-read.
                    global.extend(errors.0.into_iter().map(ReloadError::Config));
                    running.clone()
                }
            },
            _ => running.clone(),
        };
        if !unchanged && global.is_empty() && self.config_dir.is_some() {
            global = check_global(&config, &self.base);
            if !global.is_empty() {
                // The global part is refused; the tenants' tables still apply.
                config = Config {
                    domains: std::mem::take(&mut config.domains),
                    ..running.clone()
                };
            }
            let changes = siprox::config::diff(running, &config);
            config = siprox::config::pin_restart_only(running, &config, &changes);
            restart_only = Some(changes);
        }
        // A refused global part is read again at every check until it loads.
        let digest = if global.is_empty() { digest } else { None };
        let watch = Some(watch_dirs(&config, self.config_dir.as_deref(), &self.base));
        let fail = |errors: Vec<ReloadError>, watch, changes| JobResult {
            outcome: JobOutcome::Failed(errors),
            watch,
            changes,
            kept: Vec::new(),
            domains_checked: false,
            scripts_digest: None,
            config_digest: None,
            users_digest: None,
            users_error: None,
        };
        let now = unix_now();
        let build = |read: &dyn crate::tls::ReadMaterial| {
            let opts = BuildOptions {
                base: &self.base,
                has_tls: self.has_tls,
                dev_certs_pending: false,
                now,
                read,
            };
            build_domains_isolated(&config, Some(&self.prev.tls), opts)
        };
        let mut built = build(&super::files::FILES);
        if !matches!(&built, Ok((_, kept)) if kept.is_empty()) {
            // A domain failed: build again with the origins at hand (only then: a rotation
            // with conf.d unchanged does not re-read conf.d) so that its error names the
            // conf file and key that point to a missing file.
            if loaded.is_none() {
                loaded = self
                    .config_dir
                    .as_deref()
                    .and_then(|d| super::files::load_outcome(d).loaded.ok());
            }
            if let Some(l) = loaded
                .as_ref()
                .filter(|l| l.config.domains == config.domains)
            {
                built = build(&super::files::Pointed {
                    files: super::files::FILES,
                    config: &l.config,
                    origins: &l.origins,
                });
            }
        }
        let (tls, kept) = match built {
            Ok(t) => t,
            Err(errors) => {
                let mut all = global;
                all.extend(errors.into_iter().map(ReloadError::Domain));
                return fail(all, watch, restart_only);
            }
        };
        // The users file goes into the snapshot: read here, never on an arbiter.
        let users_digest = users_digest(&config, &self.base);
        let (users, users_read, users_error) =
            if users_digest == self.users_digest && config.auth == running.auth {
                (self.prev.users.clone(), None, None)
            } else {
                match load_users(&config, &self.base) {
                    Ok(u) => (Arc::new(u), Some(users_digest), None),
                    // A broken users file keeps the users that were loaded and does not hold
                    // up the rest of the reload.
                    Err(e) => (self.prev.users.clone(), None, Some(ReloadError::Users(e))),
                }
            };
        let users_same = Arc::ptr_eq(&users, &self.prev.users);
        // `[auth]` algorithms, nonce lifetime and secret: checked with the global part, so
        // this only fails when the secret file went away since.
        let auth = match crate::state::location::authenticator(
            &config,
            &self.base,
            Some((&self.prev.auth, self.prev.auth_secret)),
        ) {
            Ok(a) => a,
            Err(e) => return fail(vec![ReloadError::Settings(e)], watch, restart_only),
        };
        let auth_same = Arc::ptr_eq(&auth.0, &self.prev.auth);
        // Without a key file the running (per-process) keys stay; a key file that does not
        // load fails the reload, so the running keys stay too: live dialogs stay reachable.
        let prev_keys = &self.prev.proxy.config().flow_keys;
        let flow_keys = match &config.auth.flow_key_file {
            None => prev_keys.clone(),
            Some(_) => match super::files::load_flow_keys(&config, &self.base) {
                // The process's epoch stays: a rotated key file still verifies old tokens.
                Ok(k) => k.with_epoch(prev_keys.epoch()),
                // The error names `[auth] flow_key_file` and the path.
                Err(e) => return fail(vec![ReloadError::Settings(e)], watch, restart_only),
            },
        };
        let keys_same = flow_keys == *prev_keys;
        let flow_refused = self.prev.proxy.flow_counter().clone();
        let scripts_digest = scripts_digest(&config, &self.base);
        let scripts_same = scripts_digest == self.scripts_digest && config == *running;
        let (old, new) = (self.prev.tls.fingerprint(), tls.fingerprint());
        let kept: Vec<ReloadError> = global
            .into_iter()
            .chain(kept.into_iter().map(ReloadError::Domain))
            .collect();
        if new == old && scripts_same && users_same && keys_same && auth_same {
            return JobResult {
                outcome: if kept.is_empty() {
                    JobOutcome::Unchanged
                } else {
                    JobOutcome::Failed(kept)
                },
                watch,
                changes: restart_only,
                kept: Vec::new(),
                domains_checked: true,
                scripts_digest: None,
                config_digest: digest,
                users_digest: users_read,
                users_error,
            };
        }
        let mut changed: Vec<String> = new
            .iter()
            .filter(|n| !old.contains(n))
            .chain(old.iter().filter(|o| !new.iter().any(|n| n.0 == o.0)))
            .map(|n| n.0.clone())
            .collect();
        changed.dedup();
        let outcome = if scripts_same {
            let scripts = self.prev.scripts.clone();
            let snapshot = Snapshot::build(
                Arc::new(config),
                self.listens,
                Arc::new(tls),
                scripts,
                Credentials { users, auth },
                flow_keys,
                flow_refused,
            );
            JobOutcome::Publish(Box::new(snapshot), changed)
        } else {
            // Read here (blocking), compiled by the `Script` actor, published with the TLS
            // domains in one snapshot.
            let sources = read_sources(&config, &self.base);
            JobOutcome::Compile(Box::new(Pending {
                config: Arc::new(config),
                sources,
                listens: self.listens,
                tls: Arc::new(tls),
                users,
                auth,
                flow_keys,
                flow_refused,
                changed,
            }))
        };
        JobResult {
            outcome,
            watch,
            changes: restart_only,
            kept,
            domains_checked: true,
            scripts_digest: Some(scripts_digest),
            config_digest: digest,
            users_digest: users_read,
            users_error,
        }
    }
}

/// What the runtime checks beyond the core's validation, on the global part of a candidate
/// configuration: `[connections]`, `[management] allow`, `[auth]` (algorithms, secret).
fn check_global(config: &Config, base: &Path) -> Vec<ReloadError> {
    let mut errors = Vec::new();
    if let Err(e) = check_connections(config) {
        errors.push(ReloadError::Settings(e));
    }
    if let Err(e) = siprox::rpc::AllowList::parse(&config.management.allow) {
        errors.push(ReloadError::Settings(crate::error::RuntimeError::Config(
            format!("[management] allow: {}", e.join("; ")),
        )));
    }
    if let Err(e) = crate::state::location::authenticator(config, base, None) {
        errors.push(ReloadError::Settings(e));
    }
    errors
}

/// Digest of the users file's path and bytes (`0` when there is none).
pub(crate) fn users_digest(config: &Config, base: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(f) = &config.auth.users_file else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let p = resolve(base, f);
    p.hash(&mut h);
    std::fs::read(&p).ok().hash(&mut h);
    h.finish()
}

/// The users of `[auth] users_file` (none configured: no users). Blocking.
pub(crate) fn load_users(config: &Config, base: &Path) -> Result<Users, UsersFileError> {
    let Some(f) = &config.auth.users_file else {
        return Ok(Users::default());
    };
    let path = resolve(base, f);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(source) => return Err(UsersFileError::Read { path, source }),
    };
    Ok(Users::from_toml(&text, &path.display().to_string())?)
}

/// Digest of every route script's bytes (missing files hash as missing: compiling then
/// reports them).
pub(crate) fn scripts_digest(config: &Config, base: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let files = config
        .script
        .file
        .iter()
        .chain(config.domains.values().filter_map(|d| d.script.as_ref()));
    for f in files {
        let p = resolve(base, f);
        p.hash(&mut h);
        std::fs::read(&p).ok().hash(&mut h);
    }
    h.finish()
}

/// Digest of everything `files::load` reads: the conf.d files and the `SIPROX_`
/// configuration variables, hashed by the core pipeline's own function (see
/// [`super::files::config_digest`]; never `std::env::vars()`, which panics on a non-UTF-8
/// variable anywhere in the environment).
pub fn config_digest(dir: &Path) -> Option<u64> {
    super::files::config_digest(dir)
}
