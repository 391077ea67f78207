//! The `DomainRegistry` actor: the one writer of the live `Snapshot`. It watches conf.d,
//! `domains/` and every directory holding a referenced certificate, key, CA, CRL or script
//! (directories, never files: certbot renames and Kubernetes `..data` symlink swaps blind a
//! watch on the file itself), and reloads on file events (debounced), SIGHUP, a periodic
//! hash check and the `Reload` message (RPC). A reload re-reads the configuration, rebuilds
//! only the domains whose inputs changed, on a blocking thread, validates the whole
//! candidate and publishes it with one `store()`, or keeps the running snapshot and says
//! why. Must never block the control arbiter, run two builds at once, or publish half a
//! reload. docs/reload.md walks the whole path.

use std::collections::BTreeSet;
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
    DomainStatus, Reload, ReloadCause, ReloadOutcome, ReloadRecord, TlsStatus,
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
}

impl DomainRegistry {
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
                    listen_changed: false,
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
                if matches!(result.outcome, JobOutcome::Failed(_)) {
                    result.scripts_digest = None;
                    result.config_digest = None;
                    result.users_digest = None;
                }
            }
            result
        };
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |result, act, ctx| {
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
            failed @ (JobOutcome::Failed(_) | JobOutcome::Compile(_)) => {
                let errors = match failed {
                    JobOutcome::Failed(errors) => errors,
                    // Resolved by the Script actor before `finish`; never left pending.
                    _ => vec![ReloadError::Internal(
                        "the scripts of the candidate were not compiled".to_owned(),
                    )],
                };
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let now: BTreeSet<String> = lines.iter().cloned().collect();
                for (e, line) in errors.iter().zip(&lines) {
                    if !self.logged.contains(line) {
                        // `error` names the file and key or line:col (and the domain).
                        error!(kind = e.kind(), domain = e.domain().unwrap_or("-"),
                            error = %line, ?cause,
                            "reload refused: the running configuration stays");
                    }
                }
                self.logged = now;
                self.status.failures += 1;
                ReloadOutcome::Failed { errors: lines }
            }
        };
        if let Some(e) = result.users_error {
            let line = e.to_string();
            if self.logged.insert(line.clone()) {
                error!(kind = e.kind(), error = %line, "users file not reloaded: the loaded users stay");
            }
        }
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
