//! Starting and stopping the runtime: TLS material and sockets are prepared on the calling
//! thread (so every startup error is returned, port 0 is resolved and the sockets accept
//! before `start` returns), then an actix `System` runs one control arbiter (this module's
//! `Control` actor: signals, graceful shutdown) and N worker arbiters (listeners and
//! connections). Under systemd (`state::notify`) the start says READY=1 once every Listener
//! runs, and the control actor sends STATUS=, STOPPING=1 and the watchdog pings, the latter
//! only while every worker arbiter answers its own ping. Must never let a worker wait on the
//! control arbiter, and never exit before queued writes had their `shutdown_grace` to drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Actor, Arbiter, AsyncContext, Context, Handler, System};
use siprox::config::{Config, Proto};
use siprox::proxy::{Listen, Transport};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::RuntimeError;
use crate::reload::registry::DomainRegistry;
use crate::state::messages::{
    Reload, ReloadCause, ReloadOutcome, Shutdown, StopListening, TlsStatus,
};
use crate::state::{Credentials, Shared, Snapshot, StatsSnapshot};
use crate::tls::{self, DevCerts};
use crate::transport::listener::{bind_all, ListenSocket, Listener, StdSocket};
use crate::worker::Worker;

/// How often shutdown checks whether every connection has drained.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How long a start waits for every worker's Listener actor before READY=1.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How often `STATUS=` is refreshed (when it changed) under systemd.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The Listener actors running now.
fn listening(shared: &Shared) -> usize {
    shared.listeners.lock().map_or(0, |l| l.len())
}

/// How the runtime is started, beyond the configuration.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Directory that relative `[tls]` paths are resolved against: the parent of the
    /// configuration directory (see [`RuntimeOptions::base_dir_for`]).
    pub base_dir: PathBuf,
    /// Install SIGTERM/SIGINT handlers that start a graceful shutdown (the daemon: yes;
    /// tests embedding the runtime: no, the test harness owns the process's signals).
    pub handle_signals: bool,
    /// Applies a reloaded `[log]` to the process's subscriber (the daemon:
    /// `logging::apply`; embedded: none, the embedding code owns its logging).
    pub log_hook: Option<crate::reload::registry::LogHook>,
    /// The TLS domains `siprox check`'s path (`cli::verify`) built from this configuration:
    /// the start reuses every context whose files are unchanged instead of loading each
    /// certificate and key a second time (the daemon: yes; embedded: none).
    pub verified_tls: Option<Arc<crate::state::TlsDomains>>,
}

impl RuntimeOptions {
    /// Options for a runtime embedded in a test or tool: paths relative to `base_dir`, no
    /// signal handlers.
    pub fn embedded(base_dir: impl Into<PathBuf>) -> RuntimeOptions {
        RuntimeOptions {
            base_dir: base_dir.into(),
            handle_signals: false,
            log_hook: None,
            verified_tls: None,
        }
    }

    /// The configuration directory `config` was loaded from (what a reload re-reads);
    /// `None` for a configuration built in code.
    pub fn config_dir_for(config: &Config) -> Option<PathBuf> {
        let first = config.sources.first()?;
        let mut dir = first.parent()?;
        if dir
            .file_name()
            .is_some_and(|n| n == siprox::config::DOMAINS_DIR)
        {
            dir = dir.parent()?;
        }
        Some(dir.to_path_buf())
    }

    /// The parent of the configuration directory `config` was loaded from (`conf.d/..`),
    /// found from its source files; `.` when it was not loaded from files.
    pub fn base_dir_for(config: &Config) -> PathBuf {
        let Some(first) = config.sources.first() else {
            return PathBuf::from(".");
        };
        // Sources are `<dir>/x.toml` or `<dir>/domains/x.toml`.
        let mut dir = first.parent().unwrap_or(Path::new(""));
        if dir
            .file_name()
            .is_some_and(|n| n == siprox::config::DOMAINS_DIR)
        {
            dir = dir.parent().unwrap_or(Path::new(""));
        }
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Entry point: see [`Runtime::start`].
#[derive(Debug)]
pub struct Runtime;

/// A running siprox. Dropping it stops the runtime at once (no grace); call
/// [`RuntimeHandle::shutdown`] for a graceful stop.
pub struct RuntimeHandle {
    listens: Vec<Listen>,
    shared: Arc<Shared>,
    system: System,
    control: actix::Addr<Control>,
    registry: actix::Addr<DomainRegistry>,
    /// Where the management listener is bound, when enabled.
    management: Option<SocketAddr>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("listens", &self.listens)
            .finish_non_exhaustive()
    }
}

fn transport_of(p: Proto) -> Transport {
    match p {
        Proto::Udp => Transport::Udp,
        Proto::Tcp => Transport::Tcp,
        Proto::Tls => Transport::Tls,
    }
}

impl Runtime {
    /// Starts siprox with a validated configuration and returns once every socket is bound
    /// and listening. Blocking (certificate files, key generation): call it from a plain
    /// thread or `spawn_blocking`, not from inside an async task.
    pub fn start(mut config: Config, opts: RuntimeOptions) -> Result<RuntimeHandle, RuntimeError> {
        let workers = match config.runtime.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n > siprox::config::RuntimeConfig::MAX_WORKERS => {
                return Err(RuntimeError::Config(format!(
                    "[runtime] workers = {n} is more than {}",
                    siprox::config::RuntimeConfig::MAX_WORKERS
                )))
            }
            n => n,
        };
        if config.listen.is_empty() {
            return Err(RuntimeError::Config("no [[listen]] socket".to_owned()));
        }
        crate::state::check_connections(&config)?;
        // Before any socket or file is opened: the limit then covers everything.
        crate::transport::fdlimit::ensure(&config, workers);

        // TLS material first: a missing certificate must fail before any port is taken.
        let has_tls = config.listen.iter().any(|l| l.proto == Proto::Tls);
        if let DevCerts::Generated { ca, certificate } =
            tls::ensure_dev_certs(&config.tls, &opts.base_dir)?
        {
            warn!(
                ca = %ca.display(),
                certificate = %certificate.display(),
                "!!! GENERATED DEVELOPMENT TLS CERTIFICATES (a throwaway CA and a certificate for \
                 localhost/127.0.0.1/::1). Fine for development; for production configure real \
                 ones and set [tls] generate_dev_certs = false !!!"
            );
        }
        let opts_tls = tls::BuildOptions {
            base: &opts.base_dir,
            has_tls,
            dev_certs_pending: false,
            now: tls::unix_now(),
            read: &crate::reload::files::FILES,
        };
        let joined = |errors: Vec<tls::DomainError>| {
            RuntimeError::Config(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        // One tenant's broken upload must not take every other tenant (and plain SIP) down:
        // it is left out, loudly, unless the operator asked for all or nothing. What the
        // check built is reused where its files are unchanged (the default domain's dev
        // certificates, generated just now, are built here).
        let verified = opts.verified_tls.as_deref();
        let (built, left_out) = if config.runtime.strict_start {
            (
                tls::build_domains(&config, verified, opts_tls).map_err(joined)?,
                Vec::new(),
            )
        } else {
            tls::build_domains_isolated(&config, verified, opts_tls).map_err(joined)?
        };
        for e in &left_out {
            tracing::error!(domain = %e.domain, error = %e,
                "TLS domain left out: it cannot be loaded (its SNI names get what [tls] \
                 default_server says); every other domain starts. [runtime] strict_start = \
                 true refuses the start instead");
        }
        let tls = Arc::new(built);
        // In a cluster, tickets use the key ring every node shares (kept by the Cluster actor).
        let ticket_ring = config
            .cluster
            .as_ref()
            .map(crate::cluster::tickets::ring_for)
            .transpose()
            .map_err(|e| RuntimeError::System(format!("creating the TLS ticket key ring: {e}")))?;
        let dispatch = tls::dispatch_context_with(ticket_ring)
            .map_err(|e| RuntimeError::System(format!("creating the TLS dispatch context: {e}")))?;
        let config_dir = RuntimeOptions::config_dir_for(&config);

        // Bind every socket of every worker now: errors (address in use) are returned here,
        // and port 0 becomes a real port shared by all workers.
        let backlog = config.connections.listen_backlog;
        let mut listens = Vec::new();
        let mut per_worker: Vec<Vec<(Transport, SocketAddr, StdSocket)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for l in &config.listen {
            let t = transport_of(l.proto);
            let (actual, sockets) = bind_all(t, l.addr, workers, backlog)?;
            listens.push(Listen {
                transport: t,
                addr: actual,
                advertise: l.advertise.as_ref().map(|a| a.to_string()),
            });
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push((t, actual, s));
            }
        }
        if let Some(c) = config.cluster.as_mut() {
            if let Some(a) = advertise_with_bound_port(&c.advertise, &listens)? {
                c.advertise = a;
            }
        }

        // What the registry compares later reloads against, taken before the scripts are
        // read: a file changed from here on differs from these digests, so the registry's
        // first check (once its watcher runs) picks it up instead of taking it as loaded.
        let digests = crate::reload::LoadedDigests {
            scripts: crate::reload::scripts_digest(&config, &opts.base_dir),
            config: config_dir.as_deref().and_then(crate::reload::config_digest),
            users: crate::reload::users_digest(&config, &opts.base_dir),
        };
        let script_sources = crate::reload::script::read_sources(&config, &opts.base_dir);
        let scripts =
            crate::reload::script::compile_sources(&config, &script_sources).map_err(|e| {
                let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
                RuntimeError::Config(lines.join("\n"))
            })?;
        let users = crate::reload::load_users(&config, &opts.base_dir)
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        // Management listener (TLS built, port bound) before anything starts: errors return here.
        let management = crate::mgmt::rpc::Management::prepare(&config, &opts.base_dir)?;
        let management_addr = management
            .as_ref()
            .map(crate::mgmt::rpc::Management::local_addr);
        let location = Arc::new(crate::state::location::Location::start(
            &config,
            &opts.base_dir,
        )?);
        // One epoch per process: tokens from before a restart name no new connection.
        let flow_keys = crate::reload::files::load_flow_keys(&config, &opts.base_dir)?
            .with_epoch(siprox::proxy::FlowKeys::new_epoch());
        let auth = crate::state::location::authenticator(&config, &opts.base_dir, None)?;
        let snapshot = Snapshot::build(
            Arc::new(config),
            listens.clone(),
            tls,
            Arc::new(scripts),
            Credentials {
                users: Arc::new(users),
                auth,
            },
            flow_keys,
            Arc::default(),
        );
        let grace = snapshot.config.runtime.shutdown_grace.get();
        let shared = Arc::new(Shared::new(snapshot, dispatch));
        let _ = shared.location.set(location);
        // The daemon (it owns the process's signals) tells systemd how it is doing; a
        // runtime embedded in a test or tool leaves `$NOTIFY_SOCKET` to its owner.
        if opts.handle_signals {
            if let Some(n) = crate::state::notify::Notifier::from_env() {
                let _ = shared.notifier.set(Arc::new(n));
            }
        }
        let sockets: usize = per_worker.iter().map(Vec::len).sum();

        let (tx, rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let handle_signals = opts.handle_signals;
        let registry = DomainRegistry::new(
            shared.clone(),
            digests,
            config_dir,
            opts.base_dir.clone(),
            listens.clone(),
            handle_signals,
            script_sources,
        )
        .with_start(left_out, opts.log_hook);
        let thread = std::thread::Builder::new()
            .name("siprox-control".to_owned())
            .spawn(move || {
                run_system(
                    sh,
                    per_worker,
                    grace,
                    handle_signals,
                    registry,
                    management,
                    tx,
                )
            })
            .map_err(|e| RuntimeError::System(e.to_string()))?;
        let (system, control, registry) = match rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(RuntimeError::System("the control thread exited".to_owned()));
            }
        };
        for l in &listens {
            info!(transport = %l.transport, addr = %l.addr, workers, "listening");
        }
        // READY=1 once every worker's Listener actor runs (the sockets already listen: a
        // connection made now is accepted as soon as they do).
        if shared.notifier.get().is_some() {
            let deadline = std::time::Instant::now() + READY_WAIT;
            while listening(&shared) < sockets && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if listening(&shared) < sockets {
                warn!("not every listener started: telling systemd READY=1 all the same");
            }
            shared.notify(&format!("READY=1\n{}", shared.status_line()));
        }
        Ok(RuntimeHandle {
            listens,
            shared,
            system,
            control,
            registry,
            management: management_addr,
            thread: Some(thread),
        })
    }
}

/// `[cluster] advertise` with port 0 names the TLS listener on its IP address whose port the
/// OS picked (listen port 0): the URI the other nodes use must carry the real port. `None`
/// when the advertise URI has a port of its own (or none); an error when port 0 names no TLS
/// listener on that address.
fn advertise_with_bound_port(
    advertise: &str,
    listens: &[Listen],
) -> Result<Option<String>, RuntimeError> {
    let Some(sip) = siprox::sip::Uri::parse(advertise)
        .ok()
        .and_then(|u| u.as_sip().cloned())
    else {
        return Ok(None);
    };
    if sip.port != Some(0) {
        return Ok(None);
    }
    let ip = sip.host.ip();
    let bound = listens.iter().find(|l| {
        l.transport == Transport::Tls
            && ip.is_some_and(|ip| {
                l.addr.ip() == ip
                    || (l.addr.ip().is_unspecified() && l.addr.is_ipv4() == ip.is_ipv4())
            })
    });
    let Some(bound) = bound else {
        return Err(RuntimeError::Config(format!(
            "cluster.advertise: `{advertise}` has port 0 but no TLS listener on its IP address \
             to take the port from"
        )));
    };
    // The port is the last `:` of the host part, which ends at the first `;` or `?` after
    // the user part (an IPv6 reference has colons of its own before it).
    let scheme = advertise.find(':').map_or(0, |i| i + 1);
    let host = scheme + advertise[scheme..].find('@').map_or(0, |i| i + 1);
    let end = host
        + advertise[host..]
            .find([';', '?'])
            .unwrap_or(advertise.len() - host);
    let Some(colon) = advertise[host..end].rfind(':') else {
        return Ok(None);
    };
    Ok(Some(format!(
        "{}{}{}",
        &advertise[..=host + colon],
        bound.addr.port(),
        &advertise[end..]
    )))
}

type Started = Result<(System, actix::Addr<Control>, actix::Addr<DomainRegistry>), RuntimeError>;

/// Body of the control thread: the actix System (its arbiter is the control arbiter), the
/// worker arbiters, until the system stops; then joins the workers.
fn run_system(
    shared: Arc<Shared>,
    per_worker: Vec<Vec<(Transport, SocketAddr, StdSocket)>>,
    grace: Duration,
    handle_signals: bool,
    registry: DomainRegistry,
    management: Option<crate::mgmt::rpc::Management>,
    tx: std::sync::mpsc::Sender<Started>,
) {
    let sys = System::new();
    let arbiters = sys.block_on(async {
        let mut arbiters = Vec::new();
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let arb = match Arbiter::try_new() {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx.send(Err(RuntimeError::System(e.to_string())));
                    System::current().stop();
                    return arbiters;
                }
            };
            let sh = shared.clone();
            arb.spawn_fn(move || start_worker(index, sh, sockets));
            arbiters.push(arb);
        }
        // Registered here, inside the runtime and before start() returns.
        let signals = if handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => Some((t, i)),
                _ => {
                    warn!("cannot install signal handlers: SIGTERM/SIGINT will not shut down gracefully");
                    None
                }
            }
        } else {
            None
        };
        let control = Control {
            shared: shared.clone(),
            grace,
            signals,
            stopping: false,
            workers: arbiters.iter().map(Arbiter::handle).collect(),
            pings: Arc::new((0..arbiters.len()).map(|_| AtomicU64::new(0)).collect()),
            ping: 0,
            status: String::new(),
        }
        .start();
        // `[cluster.redis_tls]` files are opened by the cluster's loops, relative to this.
        let base = registry.base().to_path_buf();
        // The registry lives on the control arbiter, next to the RPC that reloads it.
        let registry = registry.start();
        let _ = shared.reloader.set(registry.clone().recipient());
        // The Rpc actor also serves HTTP requests that a route script dispatches from a SIP
        // listener, so it runs even when the management listener is disabled.
        let rpc = match management {
            Some(m) => m.start(shared.clone(), control.clone().recipient()),
            None => crate::mgmt::rpc::Rpc::standalone(shared.clone(), control.clone().recipient()),
        };
        let _ = shared.rpc.set(rpc.clone().recipient());
        if let Some(location) = shared.location.get() {
            crate::state::location::Keeper {
                location: location.clone(),
            }
            .start();
            let config = shared.snapshot.load().config.clone();
            let cluster = config.cluster.as_ref().map(|c| c.with_base(&base));
            if let Some(mut c) = crate::cluster::Cluster::new(location, cluster.as_ref())
            {
                let sh = shared.clone();
                let (sink, share) =
                    crate::cluster::auth::link(Arc::new(move || sh.snapshot.load().auth.clone()));
                shared.snapshot.load().auth.nonces().set_sink(sink);
                c = c.with_auth(share);
                if let Some(ring) = crate::tls::ticket_keys::ring_of_context(&shared.dispatch) {
                    c = c.with_tickets(ring);
                }
                c.with_shared(shared.clone()).start();
            }
        }
        // The cluster's member list and cluster-wide reloads, for `cluster.nodes` and
        // `cfg.reload` with `cluster`.
        if let Some(c) = crate::cluster::control::Control::start(&shared, &base) {
            rpc.do_send(crate::mgmt::rpc::AttachCluster(c));
        }
        let _ = tx.send(Ok((System::current(), control, registry)));
        arbiters
    });
    if let Err(e) = sys.run() {
        warn!(error = %e, "actor system ended with an error");
    }
    for arb in arbiters {
        arb.stop();
        let _ = arb.join();
    }
    // Registrations survive a restart: the last snapshot is written after every worker
    // has stopped, so it holds everything they saved.
    if let Some(location) = shared.location.get() {
        if let Err(e) = location.write_snapshot() {
            warn!(error = %e, "location snapshot not written at exit");
        }
    }
}

/// On a worker arbiter: registers its sockets with this thread's runtime and starts a
/// `Listener` actor for each.
fn start_worker(
    index: usize,
    shared: Arc<Shared>,
    sockets: Vec<(Transport, SocketAddr, StdSocket)>,
) {
    let mut ready = Vec::new();
    for (t, addr, s) in sockets {
        match s.into_tokio() {
            Ok(s) => ready.push((t, addr, s)),
            Err(e) => warn!(worker = index, %addr, error = %e, "cannot register socket"),
        }
    }
    let udp = ready
        .iter()
        .filter_map(|(_, addr, s)| match s {
            ListenSocket::Udp(u) => Some((*addr, u.clone())),
            ListenSocket::Stream(_) => None,
        })
        .collect();
    let worker = Rc::new(Worker::new(
        index,
        shared.clone(),
        udp,
        Box::new(crate::transport::connection::Outgoing),
    ));
    actix_rt::spawn(crate::worker::idle_sweep(worker.clone()));
    // Transactions (t_relay): one timer per worker, and responses other workers read.
    let handoffs = crate::worker::tm::handoff_channel(index, &shared);
    actix_rt::spawn(crate::worker::tm::handoffs(worker.clone(), handoffs));
    actix_rt::spawn(crate::worker::tm::timers(worker.clone()));
    let mut recipients = Vec::new();
    for (t, addr, s) in ready {
        let l = Listener::new(worker.clone(), t, addr, s).start();
        recipients.push(l.recipient());
    }
    if let Ok(mut ls) = shared.listeners.lock() {
        ls.extend(recipients);
    }
}

/// The control actor: signals and graceful shutdown. Lives on the control arbiter; the data
/// plane never waits for it.
pub struct Control {
    shared: Arc<Shared>,
    grace: Duration,
    /// SIGTERM and SIGINT streams, registered before siprox says it is listening: a signal
    /// that arrives right after start is a graceful shutdown, never the default death.
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    stopping: bool,
    /// Every worker arbiter, pinged for the systemd watchdog.
    workers: Vec<actix::ArbiterHandle>,
    /// The last ping each worker answered.
    pings: Arc<Vec<AtomicU64>>,
    /// The last ping sent (0: none yet).
    ping: u64,
    /// The last `STATUS=` sent.
    status: String,
}

impl Control {
    /// One watchdog round: `WATCHDOG=1` when every worker answered the previous ping (a
    /// worker stuck on its thread does not, and systemd restarts siprox after
    /// `WatchdogSec=`), then the next ping to every worker.
    fn watchdog(&mut self) {
        let answered = self
            .pings
            .iter()
            .all(|p| p.load(Ordering::Acquire) == self.ping);
        if !answered {
            return;
        }
        self.shared.notify("WATCHDOG=1");
        self.ping += 1;
        for (i, w) in self.workers.iter().enumerate() {
            let (pings, ping) = (self.pings.clone(), self.ping);
            w.spawn(async move {
                if let Some(p) = pings.get(i) {
                    p.store(ping, Ordering::Release);
                }
            });
        }
    }

    fn status(&mut self) {
        let line = self.shared.status_line();
        if line != self.status {
            self.shared.notify(&line);
            self.status = line;
        }
    }
}

impl Actor for Control {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.shared.notifier.get().is_some() {
            ctx.run_interval(STATUS_EVERY, |act, _| act.status());
            if let Some(every) = crate::state::notify::watchdog_interval() {
                // Three rounds per interval: a ping has a third of it to be answered.
                ctx.run_interval(every / 3, |act, _| act.watchdog());
            }
        }
        let Some((mut term, mut int)) = self.signals.take() else {
            return;
        };
        let me = ctx.address();
        actix::spawn(async move {
            let mut first = true;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if first {
                    info!(signal = name, "shutting down gracefully");
                    me.do_send(Shutdown);
                    first = false;
                } else {
                    // A second signal: the operator does not want to wait.
                    warn!(signal = name, "second signal: exiting now");
                    System::current().stop();
                }
            }
        });
    }
}

impl Handler<Shutdown> for Control {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let shared = &self.shared;
        shared.notify("STOPPING=1\nSTATUS=shutting down: draining connections");
        shared.shutting_down.store(true, Ordering::Release);
        // 1. Stop accepting and receiving.
        let listeners = shared
            .listeners
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for l in listeners {
            l.do_send(StopListening);
        }
        // 2. Every connection: stop reading, write what is queued, close.
        for h in shared.table.all() {
            h.drain();
        }
        // 3. Exit when all are closed, or when the grace period ends.
        let deadline = Instant::now() + self.grace;
        ctx.run_interval(DRAIN_POLL, move |act, _ctx| {
            let open = act.shared.open_connections();
            if open == 0 {
                info!("all connections closed: exiting");
                System::current().stop();
            } else if Instant::now() >= deadline {
                warn!(
                    open,
                    "shutdown_grace elapsed: exiting with connections still open"
                );
                System::current().stop();
            }
        });
    }
}

impl RuntimeHandle {
    /// Where siprox actually listens (port 0 in the configuration resolved), in
    /// configuration order.
    pub fn local_addrs(&self) -> &[Listen] {
        &self.listens
    }

    /// Where the management listener (`[management]`) is bound, when enabled.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management
    }

    /// The first listening address of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.listens
            .iter()
            .find(|l| l.transport == transport)
            .map(|l| l.addr)
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats()
    }

    /// The location store (and, in a cluster, the replica and the write queue).
    pub fn location(&self) -> Option<Arc<crate::state::location::Location>> {
        self.shared.location.get().cloned()
    }

    /// The live snapshot (configuration, proxy core, TLS contexts).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The cluster's session-ticket key ring as this node holds it (`None` without
    /// `[cluster]`).
    pub fn ticket_keys(&self) -> Option<Arc<crate::tls::ticket_keys::TicketRing>> {
        crate::tls::ticket_keys::ring_of_context(&self.shared.dispatch)
    }

    /// Reload now (as `tls.reload` / SIGHUP do): re-read conf.d, rebuild what changed,
    /// publish or keep the running snapshot. Resolves when that reload is done; callable from
    /// any thread or runtime.
    pub fn reload(&self) -> impl std::future::Future<Output = ReloadOutcome> + Send + 'static {
        let req = self.registry.send(Reload {
            cause: ReloadCause::Request,
        });
        async move {
            req.await.unwrap_or_else(|e| ReloadOutcome::Failed {
                errors: vec![format!("the registry is not running: {e}")],
            })
        }
    }

    /// The TLS domains and the reload history (what `tls.list` shows).
    pub fn tls_status(&self) -> TlsStatus {
        self.shared.tls_status()
    }

    /// Graceful shutdown, as on SIGTERM: stop accepting, drain queued writes, close, and
    /// return once the runtime has exited (at most `shutdown_grace` plus a little).
    pub fn shutdown(mut self) {
        self.control.do_send(Shutdown);
        self.join();
    }

    /// Blocks until the runtime exits (after a signal, or a shutdown requested elsewhere).
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.system.stop();
            self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dir_is_the_parent_of_the_config_directory() {
        let mut c = Config::default();
        assert_eq!(RuntimeOptions::base_dir_for(&c), PathBuf::from("."));
        c.sources = vec![PathBuf::from("conf.d/00-core.toml")];
        assert_eq!(RuntimeOptions::base_dir_for(&c), PathBuf::from("."));
        c.sources = vec![PathBuf::from("/etc/siprox/conf.d/domains/a.toml")];
        assert_eq!(
            RuntimeOptions::base_dir_for(&c),
            PathBuf::from("/etc/siprox")
        );
        c.sources = vec![PathBuf::from("/srv/x/conf.d/00-core.toml")];
        assert_eq!(RuntimeOptions::base_dir_for(&c), PathBuf::from("/srv/x"));
    }

    #[test]
    fn an_advertise_port_0_takes_the_bound_tls_port() {
        let listen = |t, a: &str| Listen {
            transport: t,
            addr: a.parse().expect("addr"),
            advertise: None,
        };
        let ls = [
            listen(Transport::Tcp, "127.0.0.1:5060"),
            listen(Transport::Tls, "127.0.0.1:40123"),
            listen(Transport::Tls, "[::]:40999"),
        ];
        let f = |a: &str| advertise_with_bound_port(a, &ls).map_err(|e| e.to_string());
        assert_eq!(
            f("sip:127.0.0.1:0;transport=tls"),
            Ok(Some("sip:127.0.0.1:40123;transport=tls".to_owned()))
        );
        assert_eq!(
            f("sips:n1@[::1]:0"),
            Ok(Some("sips:n1@[::1]:40999".to_owned()))
        );
        // A port of its own, or none, stays as written.
        assert_eq!(f("sip:127.0.0.1:5071;transport=tls"), Ok(None));
        assert_eq!(f("sip:127.0.0.1;transport=tls"), Ok(None));
        // Port 0 with no TLS listener on that address: refused, not advertised as 0.
        let e = f("sip:10.0.0.1:0;transport=tls").unwrap_err();
        assert!(e.contains("cluster.advertise"), "{e}");
    }
}
