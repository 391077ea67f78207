//! The `DomainRegistry` actor: the one writer of the live `Snapshot`. It watches conf.d,
//! `domains/` and every directory holding a referenced certificate, key, CA, CRL or script
//! (directories, never files: certbot renames and Kubernetes `..data` symlink swaps blind a
//! watch on the file itself), and reloads on file events (debounced), SIGHUP, a periodic
//! hash check and the `Reload` message (RPC). A reload re-reads the configuration, rebuilds
//! only the domains whose inputs changed, on a blocking thread, and publishes the candidate
//! with one `store()`: a tenant that does not build keeps its last good build, restart-only
//! keys keep their running values and are warned about once, and what was not applied is
//! said, per domain and per script file. Must never block the control arbiter, run two
//! builds at once, or publish half a snapshot. docs/reload.md walks the whole path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::fut::{wrap_future, ActorFutureExt};
use actix::{Actor, Addr, AsyncContext, Context, Handler, ResponseFuture};
use siprox::config::Config;
use siprox::proxy::Listen;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::reload::error::ReloadError;
use crate::reload::job::{Job, JobOutcome, JobResult, LoadedDigests};
use crate::reload::script::{CompileScripts, Script, ScriptSource};
use crate::reload::watch::{watch_dirs, Watcher};
use crate::state::{Shared, TlsDomains};
use crate::tls::unix_now;

// The reload vocabulary lives in `state` (the data plane and management send it); named
// here too, where a reader of the registry looks for it.
pub use crate::reload::job::config_digest;
pub use crate::state::messages::{
    DomainStatus, Reload, ReloadCause, ReloadOutcome, ReloadPreview, ReloadRecord, ScriptHealth,
    TlsStatus,
};

/// Seconds in a day: the period of the certificate expiry reminder.
const DAY: Duration = Duration::from_secs(86_400);

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
    watcher: Option<Watcher>,
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
    /// Digest of the live users file.
    users_digest: u64,
    /// The scripts read at start, to seed the `Script` actor's cache.
    seed: Vec<ScriptSource>,
    /// The `Script` actor (started with the registry): compiles what a reload read.
    script: Option<Addr<Script>>,
    /// Per TLS domain: its last error, when, its last good load, its failures.
    health: BTreeMap<String, Health>,
    /// Route script files with an error, and since when.
    script_errors: BTreeMap<PathBuf, (String, SystemTime)>,
    /// Applies a reloaded `[log]` (the entry part installs the subscriber and owns it).
    log_hook: Option<LogHook>,
}

/// Applies a reloaded `[log]` to the process's logging: `Ok(true)` when it changed it.
pub type LogHook = fn(&siprox::config::LogConfig) -> Result<bool, String>;

/// One TLS domain's reload health.
#[derive(Debug, Clone, Default)]
struct Health {
    last_error: Option<(String, SystemTime)>,
    last_good: Option<SystemTime>,
    failures: u64,
}

impl DomainRegistry {
    /// What configured paths are relative to (the configuration directory's parent).
    pub(crate) fn base(&self) -> &std::path::Path {
        &self.base
    }

    pub(crate) fn new(
        shared: Arc<Shared>,
        loaded: LoadedDigests,
        config_dir: Option<PathBuf>,
        base: PathBuf,
        listens: Vec<Listen>,
        handle_signals: bool,
        seed: Vec<ScriptSource>,
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
            building: false,
            pending: None,
            waiting: Vec::new(),
            logged: BTreeSet::new(),
            status: TlsStatus::default(),
            scripts_digest: loaded.scripts,
            config_digest: loaded.config,
            users_digest: loaded.users,
            seed,
            script: None,
            health: BTreeMap::new(),
            script_errors: BTreeMap::new(),
            log_hook: None,
        }
    }

    /// What the start knows beyond the snapshot: the tenants it left out (their errors
    /// shown until they load) and how to apply a reloaded `[log]`.
    pub(crate) fn with_start(
        mut self,
        left_out: Vec<crate::tls::DomainError>,
        log_hook: Option<LogHook>,
    ) -> DomainRegistry {
        let now = SystemTime::now();
        for e in left_out {
            let line = e.to_string();
            self.health.insert(
                e.domain,
                Health {
                    last_error: Some((line, now)),
                    last_good: None,
                    failures: 1,
                },
            );
        }
        self.log_hook = log_hook;
        self
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
        // systemd shows the unit "reloading" for what an operator or a file change asked
        // for; the periodic check, which mostly finds nothing, stays quiet.
        let announced = matches!(
            cause,
            ReloadCause::Signal | ReloadCause::Request | ReloadCause::Files
        );
        if announced {
            self.shared.notify("RELOADING=1\nSTATUS=reloading");
        }
        let waiters = std::mem::take(&mut self.waiting);
        let job = Job {
            scripts_digest: self.scripts_digest,
            config_digest: self.config_digest,
            config_dir: self.config_dir.clone(),
            base: self.base.clone(),
            prev: self.shared.snapshot.load_full(),
            listens: self.listens.clone(),
            has_tls: self.has_tls,
            users_digest: self.users_digest,
        };
        let script = self.script.clone();
        // Off the arbiter: reading files and building SSL contexts can take milliseconds
        // per domain, and the control arbiter also runs the RPC.
        let fut = async move {
            let mut result = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|e| JobResult {
                    scripts_digest: None,
                    config_digest: None,
                    users_digest: None,
                    users_error: None,
                    outcome: JobOutcome::Failed(vec![ReloadError::Internal(format!(
                        "the reload task failed: {e}"
                    ))]),
                    watch: None,
                    changes: None,
                    kept: Vec::new(),
                    domains_checked: false,
                });
            if let JobOutcome::Compile(mut pending) = result.outcome {
                // Changed scripts: the Script actor compiles them (from its cache when it
                // has seen the text), and the candidate is published whole, TLS and
                // scripts in one store.
                let sources = std::mem::take(&mut pending.sources);
                let internal = |why: String| Err(vec![ReloadError::Internal(why)]);
                let compiled = match script {
                    Some(s) => match s
                        .send(CompileScripts {
                            config: pending.config.clone(),
                            sources,
                        })
                        .await
                    {
                        Ok(Ok(set)) => Ok(set),
                        Ok(Err(errors)) => {
                            Err(errors.into_iter().map(ReloadError::Script).collect())
                        }
                        Err(e) => internal(format!("the Script actor stopped: {e}")),
                    },
                    None => internal("the Script actor is not running".to_owned()),
                };
                result.outcome = pending.finish(compiled);
                if let JobOutcome::Failed(errors) = &mut result.outcome {
                    // Refused whole: what the candidate had kept back is still wrong.
                    errors.append(&mut result.kept);
                    result.scripts_digest = None;
                    result.config_digest = None;
                    result.users_digest = None;
                }
            }
            result
        };
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |result, act, ctx| {
            act.finish(cause, result, waiters, ctx);
            if announced {
                act.shared
                    .notify(&format!("READY=1\n{}", act.shared.status_line()));
            }
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
        // The live settings this reload applies, for its log line (tenants' tables are named
        // by `changed`, as domains).
        let mut applied = String::new();
        if let Some(changes) = result.changes {
            let (restart, live): (Vec<_>, Vec<_>) = changes
                .into_iter()
                .partition(|c| c.class == siprox::config::Class::RestartOnly);
            applied = live
                .iter()
                .filter(|c| !c.key.starts_with("domains."))
                .map(|c| c.key.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.note_restart_only(restart);
        }
        let now = SystemTime::now();
        // The problems of this reload: what it refused whole, or what it published without.
        let (outcome, problems, published) = match result.outcome {
            JobOutcome::Publish(snapshot, changed) => {
                // The one write of the live configuration.
                self.shared.snapshot.store(Arc::new(*snapshot));
                let refused: Vec<String> = result.kept.iter().map(ToString::to_string).collect();
                if refused.is_empty() {
                    info!(?cause, changed = ?changed, settings = %applied, "configuration reloaded");
                } else {
                    warn!(?cause, changed = ?changed, settings = %applied, refused = refused.len(),
                        "configuration reloaded, except what is logged as refused");
                }
                self.status.published += 1;
                for d in &changed {
                    self.health.entry(d.clone()).or_default().last_good = Some(now);
                }
                self.apply_log();
                (
                    ReloadOutcome::Published { changed, refused },
                    result.kept,
                    true,
                )
            }
            JobOutcome::Unchanged => {
                debug!(?cause, "reload: nothing changed");
                (ReloadOutcome::Unchanged, Vec::new(), false)
            }
            failed @ (JobOutcome::Failed(_) | JobOutcome::Compile(_)) => {
                let errors = match failed {
                    JobOutcome::Failed(errors) => errors,
                    // Resolved by the Script actor before `finish`; never left pending.
                    _ => vec![ReloadError::Internal(
                        "the scripts of the candidate were not compiled".to_owned(),
                    )],
                };
                self.status.failures += 1;
                let lines = errors.iter().map(ToString::to_string).collect();
                (ReloadOutcome::Failed { errors: lines }, errors, false)
            }
        };
        let mut now_logged = BTreeSet::new();
        for e in &problems {
            let line = e.to_string();
            if !self.logged.contains(&line) {
                // `error` names the file and key or line:col (and the domain).
                match (e.domain(), e.script_file()) {
                    (Some(domain), _) => error!(kind = e.kind(), domain, error = %line, ?cause,
                        "TLS domain not reloaded: it keeps its last good configuration (or stays out)"),
                    (None, Some(file)) => error!(kind = e.kind(), file = %file.display(),
                        error = %line, ?cause,
                        "route script refused: the running configuration stays"),
                    (None, None) => error!(kind = e.kind(), error = %line, ?cause,
                        "reload refused: the running configuration stays"),
                }
            }
            now_logged.insert(line);
        }
        if let Some(e) = result.users_error {
            let line = e.to_string();
            if !self.logged.contains(&line) {
                error!(kind = e.kind(), error = %line, "users file not reloaded: the loaded users stay");
            }
            now_logged.insert(line);
        }
        self.logged = now_logged;
        self.note_domains(&problems, result.domains_checked, now);
        self.note_scripts(
            &problems,
            published || matches!(outcome, ReloadOutcome::Unchanged),
            now,
        );
        if let Some(d) = result.users_digest {
            self.users_digest = d;
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
            at: now,
            cause,
            outcome: outcome.clone(),
        };
        if !problems.is_empty() {
            self.status.last_error = Some(record.clone());
        }
        if let ReloadOutcome::Published { changed, .. } = &outcome {
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

    /// One WARN when the restart-only keys that differ from what runs change (not at every
    /// periodic check), naming each key, its configured value and the value in force.
    fn note_restart_only(&mut self, pending: Vec<siprox::config::Change>) {
        if pending == self.status.restart_pending {
            return;
        }
        if pending.is_empty() {
            info!("restart-only settings are back to the values in force");
        } else {
            let keys: Vec<String> = pending
                .iter()
                .map(|c| {
                    format!(
                        "{} = {} (in force: {})",
                        c.key,
                        c.new.as_deref().unwrap_or("(unset)"),
                        c.old.as_deref().unwrap_or("(unset)")
                    )
                })
                .collect();
            warn!(keys = %keys.join("; "),
                "restart-only settings changed: they apply at the next restart, the values in force stay");
        }
        self.status.restart_pending = pending;
    }

    /// Per-domain errors of this reload (`checked`: the domains were built, so a domain
    /// without an error is fine): set, counted, and cleared with a recovery line.
    fn note_domains(&mut self, problems: &[ReloadError], checked: bool, now: SystemTime) {
        let mut failing = BTreeMap::new();
        for e in problems {
            if let Some(d) = e.domain() {
                failing.insert(d.to_owned(), e.to_string());
            }
        }
        for (d, line) in &failing {
            let h = self.health.entry(d.clone()).or_default();
            h.failures += 1;
            if h.last_error.as_ref().is_none_or(|(l, _)| l != line) {
                h.last_error = Some((line.clone(), now));
            }
        }
        if !checked {
            return;
        }
        let snap = self.shared.snapshot.load();
        let present: BTreeSet<String> = domain_status(&snap.tls)
            .into_iter()
            .map(|d| d.name)
            .collect();
        self.health.retain(|d, h| {
            if failing.contains_key(d) {
                return true;
            }
            if !present.contains(d) {
                // Removed from the configuration: nothing to report any more.
                return false;
            }
            if h.last_error.take().is_some() {
                info!(domain = %d, "TLS domain recovered: its configuration loads again");
                h.last_good = Some(now);
            }
            true
        });
    }

    /// Script errors by file. `all_good`: the scripts in force are every configured one, so
    /// every file compiles; otherwise the files not failing in this reload compiled.
    fn note_scripts(&mut self, problems: &[ReloadError], all_good: bool, now: SystemTime) {
        let failing: BTreeMap<PathBuf, String> = problems
            .iter()
            .filter_map(|e| Some((e.script_file()?.to_path_buf(), e.to_string())))
            .collect();
        if !all_good && failing.is_empty() {
            // Refused for another reason before the scripts were compiled: nothing known.
            return;
        }
        self.script_errors.retain(|path, _| {
            let fixed = !failing.contains_key(path);
            if fixed {
                info!(file = %path.display(), "route script compiles again: its error is cleared");
            }
            !fixed
        });
        for (path, line) in failing {
            self.script_errors.entry(path).or_insert((line, now));
        }
    }

    /// Applies `[log]` of the snapshot just published.
    fn apply_log(&self) {
        let Some(hook) = self.log_hook else { return };
        let snap = self.shared.snapshot.load();
        match hook(&snap.config.log) {
            Ok(true) => info!(level = %snap.config.log.level,
                format = snap.config.log.format.as_str(), "[log] applied"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "[log] not applied: the running level stays"),
        }
    }

    /// The status from the live snapshot and the counters.
    fn publish_status(&mut self) {
        let snap = self.shared.snapshot.load();
        let mut domains = domain_status(&snap.tls);
        for d in &mut domains {
            if let Some(h) = self.health.get(&d.name) {
                d.last_error = h.last_error.as_ref().map(|(l, _)| l.clone());
                d.last_error_at = h.last_error.as_ref().map(|(_, t)| *t);
                d.last_good_at = h.last_good;
                d.failures = h.failures;
            }
        }
        // A tenant that never loaded is not in the snapshot, and still has its error to show.
        let listed: BTreeSet<String> = domains.iter().map(|d| d.name.clone()).collect();
        for (name, h) in &self.health {
            if listed.contains(name) {
                continue;
            }
            if let Some((l, t)) = &h.last_error {
                domains.push(DomainStatus {
                    name: name.clone(),
                    side: "server",
                    names: Vec::new(),
                    addresses: Vec::new(),
                    subject: String::new(),
                    sans: Vec::new(),
                    not_after: String::new(),
                    not_after_unix: 0,
                    sources: Vec::new(),
                    digest: 0,
                    last_error: Some(l.clone()),
                    last_error_at: Some(*t),
                    last_good_at: None,
                    failures: h.failures,
                });
            }
        }
        self.status.domains = domains;
        self.status.scripts = self
            .script_errors
            .iter()
            .map(|(path, (line, at))| ScriptHealth {
                path: path.clone(),
                last_error: Some(line.clone()),
                last_error_at: Some(*at),
            })
            .collect();
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

    /// A dry run: the reload job against what runs, conf.d read again whatever its digest,
    /// the changed scripts compiled without the cache; nothing published, nothing of the
    /// registry's state touched. It runs beside a real reload, never instead of one.
    fn preview(&self) -> impl std::future::Future<Output = ReloadOutcome> + 'static {
        let job = Job {
            scripts_digest: self.scripts_digest,
            config_digest: None,
            config_dir: self.config_dir.clone(),
            base: self.base.clone(),
            prev: self.shared.snapshot.load_full(),
            listens: self.listens.clone(),
            has_tls: self.has_tls,
            users_digest: self.users_digest,
        };
        async move {
            let run = tokio::task::spawn_blocking(move || {
                let r = job.run();
                let mut p = ReloadPreview {
                    changes: r.changes.unwrap_or_default(),
                    domains: Vec::new(),
                    refused: r.kept.iter().map(ToString::to_string).collect(),
                    errors: Vec::new(),
                };
                match r.outcome {
                    JobOutcome::Publish(_, changed) => p.domains = changed,
                    JobOutcome::Unchanged => {}
                    JobOutcome::Failed(errors) => {
                        p.errors = errors.iter().map(ToString::to_string).collect();
                    }
                    JobOutcome::Compile(pending) => {
                        p.domains.clone_from(&pending.changed);
                        if let Err(errors) = crate::reload::script::compile_sources(
                            &pending.config,
                            &pending.sources,
                        ) {
                            p.errors = errors.iter().map(ToString::to_string).collect();
                        }
                    }
                }
                p
            });
            match run.await {
                Ok(p) => ReloadOutcome::Preview(Box::new(p)),
                Err(e) => ReloadOutcome::Failed {
                    errors: vec![format!("reload: the dry run failed: {e}")],
                },
            }
        }
    }

    fn start_watcher(&mut self, config: &Config, ctx: &mut Context<Self>) {
        if !config.tls.watch || self.config_dir.is_none() {
            return;
        }
        let me = ctx.address().recipient();
        match Watcher::start(config.tls.reload_debounce.get(), me) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!(error = %e, "cannot start the file watcher: reload on SIGHUP, RPC and the periodic check only")
            }
        }
        self.rewatch(watch_dirs(config, self.config_dir.as_deref(), &self.base));
    }

    fn rewatch(&mut self, dirs: BTreeSet<PathBuf>) {
        if let Some(w) = self.watcher.as_mut() {
            w.watch_exactly(dirs);
        }
    }
}

impl Actor for DomainRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let snap = self.shared.snapshot.load_full();
        // The Script actor, next to the registry on the control arbiter, its cache seeded
        // with what the runtime started with.
        let seed = std::mem::take(&mut self.seed);
        self.script = Some(Script::new(&seed, &snap.scripts).start());
        self.start_watcher(&snap.config, ctx);
        if self.watcher.is_some() {
            // A change made after the start read the files and before the watcher watched
            // raised no event: one check against the digests of what was loaded finds it.
            self.request(ReloadCause::Periodic, None, ctx);
        }
        let now = SystemTime::now();
        let loaded: Vec<String> = domain_status(&snap.tls)
            .into_iter()
            .map(|d| d.name)
            .collect();
        for d in &loaded {
            self.health.entry(d.clone()).or_default().last_good = Some(now);
        }
        let left_out: Vec<String> = self
            .health
            .values()
            .filter_map(|h| h.last_error.as_ref().map(|(l, _)| l.clone()))
            .collect();
        self.logged.extend(left_out.iter().cloned());
        self.status.last_reload = Some(ReloadRecord {
            at: now,
            cause: ReloadCause::Start,
            outcome: ReloadOutcome::Published {
                changed: loaded,
                refused: left_out,
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
        if msg.cause == ReloadCause::DryRun {
            return Box::pin(self.preview());
        }
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
                last_error: None,
                last_error_at: None,
                last_good_at: None,
                failures: 0,
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
                last_error: None,
                last_error_at: None,
                last_good_at: None,
                failures: 0,
            }),
    );
    v
}
