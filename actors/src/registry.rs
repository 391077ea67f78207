//! The `DomainRegistry` actor: the one writer of the live `Snapshot`. It watches conf.d,
//! `domains/` and every directory holding a referenced certificate, key, CA, CRL or script
//! (directories, never files: certbot renames and Kubernetes `..data` symlink swaps blind a
//! watch on the file itself), and reloads on file events (debounced), SIGHUP, a periodic
//! hash check and the `Reload` message (RPC). A reload re-reads the configuration, rebuilds
//! only the domains whose inputs changed, on a blocking thread, validates the whole
//! candidate and publishes it with one `store()`, or keeps the running snapshot and says
//! why. Must never block the control arbiter, run two builds at once, or publish half a
//! reload. See docs/reload.md for the path with file:line anchors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::fut::{wrap_future, ActorFutureExt};
use actix::{Actor, AsyncContext, Context, Handler, Message as ActixMessage, ResponseFuture};
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use siprox::config::Config;
use siprox::proxy::Listen;
use siprox::tls::resolve;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::shared::{Shared, Snapshot};
use crate::tls::{build_domains, unix_now, BuildOptions, DomainError, TlsDomains};

/// Seconds in a day: the period of the certificate expiry reminder.
const DAY: Duration = Duration::from_secs(86_400);

/// What asked for a reload (logs and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The runtime started (the first snapshot).
    Start,
    /// A file event in a watched directory.
    Files,
    /// SIGHUP.
    Signal,
    /// The periodic hash check (also run once as soon as the file watcher watches, for
    /// what changed between the start's reads and then).
    Periodic,
    /// `tls.reload` / `cfg.reload` or [`crate::RuntimeHandle::reload`].
    Request,
}

/// Reload now (coalesced with any reload already waiting). Replies once the reload that
/// covers this request is done.
#[derive(Debug, Clone, Copy, ActixMessage)]
#[rtype(result = "ReloadOutcome")]
pub struct Reload {
    pub cause: ReloadCause,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is live. `changed` names the domains added, removed or rebuilt
    /// (empty when only other settings changed).
    Published { changed: Vec<String> },
    /// Everything was identical: nothing published.
    Unchanged,
    /// The candidate was refused; the running snapshot stays. One line per problem, each
    /// naming the domain, the file and the reason.
    Failed { errors: Vec<String> },
}

/// One reload, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub cause: ReloadCause,
    pub outcome: ReloadOutcome,
}

/// One TLS domain as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    pub name: String,
    /// `server` or `client`.
    pub side: &'static str,
    /// SNI names (server) or server names (client) it matches.
    pub names: Vec<String>,
    /// Listeners (server) or destinations (client) it is limited to.
    pub addresses: Vec<String>,
    /// Subject of its certificate (one line), empty for a client without one.
    pub subject: String,
    /// subjectAltNames (DNS, then IP).
    pub sans: Vec<String>,
    /// `notAfter`, as `Jun 17 15:03:20 2025 GMT`, and as Unix seconds (for metrics).
    pub not_after: String,
    pub not_after_unix: i64,
    /// The files it was built from.
    pub sources: Vec<PathBuf>,
    /// Digest of its inputs (changes when any of them does).
    pub digest: u64,
}

/// The TLS domains and reload history, for the RPC (`tls.list`, `tls.info`) and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStatus {
    pub domains: Vec<DomainStatus>,
    /// Reloads run (coalesced requests count once).
    pub reloads: u64,
    /// Reloads that published a new snapshot.
    pub published: u64,
    /// Reloads refused (the running snapshot stayed).
    pub failures: u64,
    pub last_reload: Option<ReloadRecord>,
    /// The last refused reload (kept after later successes, with its time).
    pub last_error: Option<ReloadRecord>,
}

/// The registry actor. Lives on the control arbiter; the data plane never waits for it.
pub struct DomainRegistry {
    shared: Arc<Shared>,
    /// conf.d, when the configuration came from files (otherwise only TLS files reload).
    config_dir: Option<PathBuf>,
    base: PathBuf,
    /// The bound listeners (port 0 resolved): listeners are not hot-applied.
    listens: Vec<Listen>,
    has_tls: bool,
    handle_signals: bool,
    watcher: Option<Debouncer<RecommendedWatcher, RecommendedCache>>,
    watched: BTreeSet<PathBuf>,
    building: bool,
    /// A reload was asked for while building (or not yet started): one more build after.
    pending: Option<ReloadCause>,
    waiting: Vec<oneshot::Sender<ReloadOutcome>>,
    /// Errors logged since the last success: the same failure is logged once, not at every
    /// periodic check.
    logged: BTreeSet<String>,
    status: TlsStatus,
    /// [`scripts_digest`] of the live scripts.
    scripts_digest: u64,
    /// [`config_digest`] of the conf.d files the live configuration was read from.
    config_digest: Option<u64>,
}

/// Digests of the configuration and scripts the running snapshot was built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedDigests {
    /// [`scripts_digest`].
    pub(crate) scripts: u64,
    /// [`config_digest`].
    pub(crate) config: Option<u64>,
}

impl DomainRegistry {
    pub(crate) fn new(
        shared: Arc<Shared>,
        loaded: LoadedDigests,
        config_dir: Option<PathBuf>,
        base: PathBuf,
        listens: Vec<Listen>,
        handle_signals: bool,
    ) -> DomainRegistry {
        let has_tls = listens
            .iter()
            .any(|l| l.transport == siprox::proxy::Transport::Tls);
        DomainRegistry {
            shared,
            config_dir,
            base,
            listens,
            has_tls,
            handle_signals,
            watcher: None,
            watched: BTreeSet::new(),
            building: false,
            pending: None,
            waiting: Vec::new(),
            logged: BTreeSet::new(),
            status: TlsStatus::default(),
            scripts_digest: loaded.scripts,
            config_digest: loaded.config,
        }
    }

    fn request(
        &mut self,
        cause: ReloadCause,
        reply: Option<oneshot::Sender<ReloadOutcome>>,
        ctx: &mut Context<Self>,
    ) {
        self.waiting.extend(reply);
        // Coalesce: a burst of requests while one build runs is one more build.
        self.pending.get_or_insert(cause);
        self.kick(ctx);
    }

    /// Starts the pending build unless one is running.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.building {
            return;
        }
        let Some(cause) = self.pending.take() else {
            return;
        };
        self.building = true;
        let waiters = std::mem::take(&mut self.waiting);
        let job = Job {
            scripts_digest: self.scripts_digest,
            config_digest: self.config_digest,
            config_dir: self.config_dir.clone(),
            base: self.base.clone(),
            prev: self.shared.snapshot.load_full(),
            listens: self.listens.clone(),
            has_tls: self.has_tls,
        };
        // Off the arbiter: reading files and building SSL contexts can take milliseconds
        // per domain, and the control arbiter also runs the RPC.
        let fut = async move { tokio::task::spawn_blocking(move || job.run()).await };
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |res, act, ctx| {
            let result = res.unwrap_or_else(|e| JobResult {
                scripts_digest: None,
                config_digest: None,
                outcome: JobOutcome::Failed(vec![DomainError {
                    domain: "reload".to_owned(),
                    reason: format!("the reload task failed: {e}"),
                }]),
                watch: None,
                listen_changed: false,
            });
            act.finish(cause, result, waiters, ctx);
            act.building = false;
            act.kick(ctx);
        }));
    }

    fn finish(
        &mut self,
        cause: ReloadCause,
        result: JobResult,
        waiters: Vec<oneshot::Sender<ReloadOutcome>>,
        ctx: &mut Context<Self>,
    ) {
        if result.listen_changed {
            warn!("[[listen]] changed: listeners are not reloaded, restart siprox to apply");
        }
        let outcome = match result.outcome {
            JobOutcome::Publish(snapshot, changed) => {
                // The one write of the live configuration.
                self.shared.snapshot.store(Arc::new(*snapshot));
                self.logged.clear();
                info!(?cause, changed = ?changed, "configuration reloaded");
                self.status.published += 1;
                ReloadOutcome::Published { changed }
            }
            JobOutcome::Unchanged => {
                self.logged.clear();
                debug!(?cause, "reload: nothing changed");
                ReloadOutcome::Unchanged
            }
            JobOutcome::Failed(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let now: BTreeSet<String> = lines.iter().cloned().collect();
                for e in &errors {
                    if !self.logged.contains(&e.to_string()) {
                        error!(domain = %e.domain, error = %e.reason, ?cause,
                            "reload refused: the running configuration stays");
                    }
                }
                self.logged = now;
                self.status.failures += 1;
                ReloadOutcome::Failed { errors: lines }
            }
        };
        if !matches!(outcome, ReloadOutcome::Failed { .. }) {
            // The users file (a small file, read on the control arbiter, never a worker): a
            // broken one keeps the users that were loaded, with one error line.
            if let Some(loc) = self.shared.location.get() {
                if let Err(e) = loc.reload_users() {
                    if self.logged.insert(e.to_string()) {
                        error!(error = %e, "users file not reloaded: the loaded users stay");
                    }
                }
            }
        }
        if let Some(d) = result.scripts_digest {
            self.scripts_digest = d;
        }
        if result.config_digest.is_some() {
            self.config_digest = result.config_digest;
        }
        if let Some(dirs) = result.watch {
            self.rewatch(dirs);
        }
        self.status.reloads += 1;
        let record = ReloadRecord {
            at: SystemTime::now(),
            cause,
            outcome: outcome.clone(),
        };
        if matches!(outcome, ReloadOutcome::Failed { .. }) {
            self.status.last_error = Some(record.clone());
        }
        if let ReloadOutcome::Published { changed } = &outcome {
            self.warn_expiring(Some(changed));
            self.warn_self_signed(Some(changed));
        }
        self.status.last_reload = Some(record);
        self.publish_status();
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        let _ = ctx;
    }

    /// The status from the live snapshot and the counters.
    fn publish_status(&mut self) {
        let snap = self.shared.snapshot.load();
        self.status.domains = domain_status(&snap.tls);
        if let Ok(mut s) = self.shared.tls_status.lock() {
            *s = self.status.clone();
        }
    }

    /// Warns about the live certificates expiring within `expiry_warning_days`: of every
    /// server domain (`None`: at start and once a day), or of the domains a reload just
    /// (re)built. Not on checks that changed nothing: with 1,000 tenants a certificate about
    /// to expire must not log a line a minute.
    fn warn_expiring(&self, only: Option<&[String]>) {
        let snap = self.shared.snapshot.load();
        let days = i64::from(snap.config.tls.expiry_warning_days);
        let now = unix_now();
        for d in snap
            .tls
            .servers
            .iter()
            .chain(snap.tls.default_server.iter())
            .filter(|d| only.is_none_or(|names| names.iter().any(|n| **n == *d.name)))
        {
            let left = d.ctx.cert.not_after_unix - now;
            if left < days * 86_400 {
                warn!(domain = %d.name, not_after = %d.ctx.cert.not_after,
                    days_left = left / 86_400, "TLS certificate expires soon");
            }
        }
    }

    /// Warns about every self-signed certificate of a server domain: at start (`None`) and
    /// for the domains a reload just (re)built. Clients can only trust one by pinning it,
    /// which is rarely what a tenant who dropped it in meant. (An expired certificate is not
    /// warned about: it is refused, at start and on reload, with an error naming the file.)
    fn warn_self_signed(&self, only: Option<&[String]>) {
        let snap = self.shared.snapshot.load();
        for d in snap
            .tls
            .servers
            .iter()
            .chain(snap.tls.default_server.iter())
            .filter(|d| only.is_none_or(|names| names.iter().any(|n| **n == *d.name)))
            .filter(|d| d.ctx.cert.self_signed)
        {
            let file = d.sources.first().map(|p| p.display().to_string());
            warn!(domain = %d.name, file = file.as_deref().unwrap_or("?"),
                subject = %d.ctx.cert.subject.line,
                "TLS certificate is self-signed: clients that verify it will refuse it");
        }
    }

    /// Watches exactly `dirs` (adding before removing, so no event is missed in between).
    fn rewatch(&mut self, dirs: BTreeSet<PathBuf>) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for d in dirs.difference(&self.watched) {
            if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                warn!(dir = %d.display(), error = %e, "cannot watch directory (the periodic check still covers it)");
            }
        }
        for d in self.watched.difference(&dirs) {
            let _ = w.unwatch(d);
        }
        self.watched = dirs;
    }

    fn start_watcher(&mut self, config: &Config, ctx: &mut Context<Self>) {
        if !config.tls.watch || self.config_dir.is_none() {
            return;
        }
        let me = ctx.address();
        let handler = move |res: DebounceEventResult| {
            let relevant = match res {
                // Our own reads show up as Access(Open/Close): reloading on them would loop.
                Ok(events) => events
                    .iter()
                    .any(|e| !matches!(e.kind, EventKind::Access(_))),
                Err(_) => true,
            };
            if relevant {
                me.do_send(Reload {
                    cause: ReloadCause::Files,
                });
            }
        };
        match new_debouncer(config.tls.reload_debounce.get(), None, handler) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!(error = %e, "cannot start the file watcher: reload on SIGHUP, RPC and the periodic check only")
            }
        }
        let dirs = watch_dirs(config, self.config_dir.as_deref(), &self.base);
        self.rewatch(dirs);
    }
}

impl Actor for DomainRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let snap = self.shared.snapshot.load_full();
        self.start_watcher(&snap.config, ctx);
        if self.watcher.is_some() {
            // A change made after the start read the files and before the watcher watched
            // raised no event: one check against the digests of what was loaded finds it.
            self.request(ReloadCause::Periodic, None, ctx);
        }
        self.status.last_reload = Some(ReloadRecord {
            at: SystemTime::now(),
            cause: ReloadCause::Start,
            outcome: ReloadOutcome::Published {
                changed: domain_status(&snap.tls)
                    .into_iter()
                    .map(|d| d.name)
                    .collect(),
            },
        });
        self.publish_status();
        self.warn_expiring(None);
        self.warn_self_signed(None);
        let every = snap.config.tls.reload_check_interval.get();
        if !every.is_zero() {
            ctx.run_interval(every, |act, ctx| {
                act.request(ReloadCause::Periodic, None, ctx)
            });
        }
        ctx.run_interval(DAY, |act, _| act.warn_expiring(None));
        if self.handle_signals {
            let me = ctx.address();
            actix::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    warn!("cannot install the SIGHUP handler");
                    return;
                };
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading");
                    me.do_send(Reload {
                        cause: ReloadCause::Signal,
                    });
                }
            });
        }
    }
}

impl Handler<Reload> for DomainRegistry {
    type Result = ResponseFuture<ReloadOutcome>;

    fn handle(&mut self, msg: Reload, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.request(msg.cause, Some(tx), ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| ReloadOutcome::Failed {
                errors: vec!["the registry stopped before the reload finished".to_owned()],
            })
        })
    }
}

/// The status lines of every domain of a snapshot (servers first, defaults last).
fn domain_status(t: &TlsDomains) -> Vec<DomainStatus> {
    let mut v: Vec<DomainStatus> = t
        .servers
        .iter()
        .chain(t.default_server.iter())
        .map(|d| {
            let c = &d.ctx.cert;
            DomainStatus {
                name: d.name.to_string(),
                side: "server",
                names: d.spec.sni.clone(),
                addresses: d.spec.listen.iter().map(ToString::to_string).collect(),
                subject: c.subject.line.clone(),
                sans: c.san_dns.iter().chain(c.san_ip.iter()).cloned().collect(),
                not_after: c.not_after.clone(),
                not_after_unix: c.not_after_unix,
                sources: d.sources.clone(),
                digest: d.ctx.digest,
            }
        })
        .collect();
    v.extend(
        t.clients
            .iter()
            .chain(std::iter::once(&t.default_client))
            .map(|d| DomainStatus {
                name: d.name.to_string(),
                side: "client",
                names: d.spec.server_names.clone(),
                addresses: d
                    .spec
                    .destinations
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                subject: String::new(),
                sans: Vec::new(),
                not_after: String::new(),
                not_after_unix: 0,
                sources: d.sources.clone(),
                digest: d.ctx.digest,
            }),
    );
    v
}

/// The directories to watch for `config`: conf.d, conf.d/domains, and the directory of
/// every file a domain or `[tls]` refers to (the nearest existing ancestor when it does not
/// exist yet, so that its creation is seen).
pub fn watch_dirs(config: &Config, config_dir: Option<&Path>, base: &Path) -> BTreeSet<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = &config.script.file {
        files.push(resolve(base, f));
    }
    // The digest users file reloads like everything else.
    for f in [
        &config.auth.users_file,
        &config.auth.secret_file,
        &config.auth.flow_key_file,
    ]
    .into_iter()
    .flatten()
    {
        files.push(resolve(base, f));
    }
    let t = &config.tls;
    let mut add = |p: Option<&PathBuf>| {
        if let Some(p) = p.filter(|p| !p.as_os_str().is_empty()) {
            files.push(resolve(base, p));
        }
    };
    for p in [
        Some(&t.certificate),
        Some(&t.private_key),
        t.private_key_password_file.as_ref(),
        t.ca_file.as_ref(),
        t.ca_dir.as_ref(),
        t.crl_file.as_ref(),
        t.client_certificate.as_ref(),
        t.client_private_key.as_ref(),
    ] {
        add(p);
    }
    for d in config.domains.values() {
        add(d.script.as_ref());
        if let Some(s) = &d.server {
            for p in [
                Some(&s.certificate),
                Some(&s.private_key),
                s.private_key_password_file.as_ref(),
                s.ca_file.as_ref(),
                s.ca_dir.as_ref(),
                s.crl_file.as_ref(),
            ] {
                add(p);
            }
        }
        if let Some(c) = &d.client {
            for p in [
                c.certificate.as_ref(),
                c.private_key.as_ref(),
                c.private_key_password_file.as_ref(),
                c.ca_file.as_ref(),
                c.ca_dir.as_ref(),
                c.crl_file.as_ref(),
            ] {
                add(p);
            }
        }
    }
    let mut dirs = BTreeSet::new();
    if let Some(c) = config_dir {
        dirs.insert(c.to_path_buf());
        let d = c.join(siprox::config::DOMAINS_DIR);
        if d.is_dir() {
            dirs.insert(d);
        }
    }
    for f in files {
        // Not canonicalized: a Kubernetes mount is watched where the symlinks live.
        let mut dir = f.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d.is_dir() {
                dirs.insert(d);
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    dirs
}

/// One reload's work, done on a blocking thread.
struct Job {
    /// [`scripts_digest`] of the running scripts: unchanged scripts are not recompiled.
    scripts_digest: u64,
    /// [`config_digest`] of the running configuration: unchanged files are not re-read.
    config_digest: Option<u64>,
    config_dir: Option<PathBuf>,
    base: PathBuf,
    prev: Arc<Snapshot>,
    listens: Vec<Listen>,
    has_tls: bool,
}

enum JobOutcome {
    Publish(Box<Snapshot>, Vec<String>),
    Unchanged,
    Failed(Vec<DomainError>),
}

struct JobResult {
    outcome: JobOutcome,
    /// [`scripts_digest`] of the published scripts (with `Publish`).
    scripts_digest: Option<u64>,
    /// [`config_digest`] of the configuration now running (not on failure).
    config_digest: Option<u64>,
    /// Directories to watch from now on (None: keep the current ones).
    watch: Option<BTreeSet<PathBuf>>,
    listen_changed: bool,
}

impl Job {
    fn run(self) -> JobResult {
        // A certificate rotation leaves conf.d as it was: then the running configuration is
        // reused as is, and only the TLS material is re-hashed (1 of 1,000 tenants in a few
        // milliseconds instead of re-parsing 1,000 files).
        let digest = self.config_dir.as_deref().and_then(config_digest);
        let unchanged = digest.is_some() && digest == self.config_digest;
        let mut config = match &self.config_dir {
            Some(_) if unchanged => (*self.prev.config).clone(),
            Some(dir) => match siprox::config::load(dir) {
                Ok(c) => c,
                Err(errors) => {
                    return JobResult {
                        outcome: JobOutcome::Failed(
                            errors
                                .iter()
                                .map(|e| DomainError {
                                    domain: "config".to_owned(),
                                    reason: e.to_string(),
                                })
                                .collect(),
                        ),
                        watch: None,
                        listen_changed: false,
                        scripts_digest: None,
                        config_digest: None,
                    }
                }
            },
            None => (*self.prev.config).clone(),
        };
        let watch = Some(watch_dirs(&config, self.config_dir.as_deref(), &self.base));
        // Listeners are bound once; keep the running ones so the snapshot says what is bound.
        let listen_changed = config.listen != self.prev.config.listen;
        if listen_changed {
            config.listen = self.prev.config.listen.clone();
        }
        let fail = |errors: Vec<DomainError>, watch| JobResult {
            outcome: JobOutcome::Failed(errors),
            watch,
            listen_changed,
            scripts_digest: None,
            config_digest: None,
        };
        if let Err(e) = crate::runtime::check_connections(&config) {
            return fail(
                vec![DomainError {
                    domain: "config".to_owned(),
                    reason: e.to_string(),
                }],
                watch,
            );
        }
        let opts = BuildOptions {
            base: &self.base,
            has_tls: self.has_tls,
            dev_certs_pending: false,
            now: unix_now(),
            env: &siprox::tls::process_env,
        };
        let tls = match build_domains(&config, Some(&self.prev.tls), opts) {
            Ok(t) => t,
            Err(errors) => return fail(errors, watch),
        };
        let scripts_digest = scripts_digest(&config, &self.base);
        let scripts_same = scripts_digest == self.scripts_digest && config == *self.prev.config;
        let scripts = if scripts_same {
            self.prev.scripts.clone()
        } else {
            match crate::scripts::ScriptSet::compile(&config, &self.base) {
                Ok(s) => Arc::new(s),
                Err(errors) => {
                    return fail(
                        errors
                            .into_iter()
                            .map(|reason| DomainError {
                                domain: "script".to_owned(),
                                reason,
                            })
                            .collect(),
                        watch,
                    )
                }
            }
        };
        let (old, new) = (self.prev.tls.fingerprint(), tls.fingerprint());
        // Without a key file the running (per-process) keys stay; a key file that does not
        // load fails the reload, so the running keys stay too: live dialogs stay reachable.
        let flow_keys = match &config.auth.flow_key_file {
            None => self.prev.proxy.config().flow_keys.clone(),
            Some(_) => match crate::location::load_flow_keys(&config, &self.base) {
                Ok(k) => k,
                Err(e) => {
                    return fail(
                        vec![DomainError {
                            domain: "auth".to_owned(),
                            reason: e.to_string(),
                        }],
                        watch,
                    )
                }
            },
        };
        let keys_same = flow_keys == self.prev.proxy.config().flow_keys;
        if new == old && scripts_same && keys_same {
            return JobResult {
                outcome: JobOutcome::Unchanged,
                watch,
                listen_changed,
                scripts_digest: None,
                config_digest: digest,
            };
        }
        let mut changed: Vec<String> = new
            .iter()
            .filter(|n| !old.contains(n))
            .chain(old.iter().filter(|o| !new.iter().any(|n| n.0 == o.0)))
            .map(|n| n.0.clone())
            .collect();
        changed.dedup();
        let snapshot = crate::runtime::build_snapshot(
            Arc::new(config),
            self.listens,
            Arc::new(tls),
            scripts,
            flow_keys,
            self.prev.proxy.flow_counter().clone(),
        );
        JobResult {
            outcome: JobOutcome::Publish(Box::new(snapshot), changed),
            watch,
            listen_changed,
            scripts_digest: Some(scripts_digest),
            config_digest: digest,
        }
    }
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

/// Digest of everything `siprox::config::load` reads: the conf.d file names and bytes, and
/// the `SIPROX_` environment. `None` when the directory cannot be listed or a file read
/// (the reload then loads, and reports the error).
pub fn config_digest(dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in siprox::config::config_files(dir).ok()? {
        f.hash(&mut h);
        std::fs::read(&f).ok()?.hash(&mut h);
    }
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(siprox::config::ENV_PREFIX))
        .collect();
    env.sort();
    env.hash(&mut h);
    Some(h.finish())
}
