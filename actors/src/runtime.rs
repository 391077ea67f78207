//! Starting and stopping the runtime: TLS material and sockets are prepared on the calling
//! thread (so every startup error is returned, port 0 is resolved and the sockets accept
//! before `start` returns), then an actix `System` runs one control arbiter (this module's
//! `Control` actor: signals, graceful shutdown) and N worker arbiters (listeners and
//! connections). Must never let a worker wait on the control arbiter, and never exit
//! before queued writes had their `shutdown_grace` to drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Actor, Arbiter, AsyncContext, Context, Handler, Message as ActixMessage, System};
use siprox::config::{Config, Proto};
use siprox::proxy::{Listen, Proxy, ProxyConfig, Transport};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::connection::Drain;
use crate::error::RuntimeError;
use crate::listener::{bind_all, ListenSocket, Listener, StdSocket};
use crate::shared::{ConnSettings, Shared, Snapshot, StatsSnapshot};
use crate::tls::{self, DevCerts};
use crate::worker::Worker;

/// How often shutdown checks whether every connection has drained.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How the runtime is started, beyond the configuration.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Directory that relative `[tls]` paths are resolved against: the parent of the
    /// configuration directory (see [`RuntimeOptions::base_dir_for`]).
    pub base_dir: PathBuf,
    /// Install SIGTERM/SIGINT handlers that start a graceful shutdown (the daemon: yes;
    /// tests embedding the runtime: no, the test harness owns the process's signals).
    pub handle_signals: bool,
}

impl RuntimeOptions {
    /// Options for a runtime embedded in a test or tool: paths relative to `base_dir`, no
    /// signal handlers.
    pub fn embedded(base_dir: impl Into<PathBuf>) -> RuntimeOptions {
        RuntimeOptions {
            base_dir: base_dir.into(),
            handle_signals: false,
        }
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
    pub fn start(config: Config, opts: RuntimeOptions) -> Result<RuntimeHandle, RuntimeError> {
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
        check_connections(&config)?;

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
        let tls = Arc::new(tls::build(&config.tls, &opts.base_dir, has_tls)?);

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

        let snapshot = build_snapshot(Arc::new(config), listens.clone(), tls);
        let grace = snapshot.config.runtime.shutdown_grace.get();
        let shared = Arc::new(Shared::new(snapshot));

        let (tx, rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let handle_signals = opts.handle_signals;
        let thread = std::thread::Builder::new()
            .name("siprox-control".to_owned())
            .spawn(move || run_system(sh, per_worker, grace, handle_signals, tx))
            .map_err(|e| RuntimeError::System(e.to_string()))?;
        let (system, control) = match rx.recv() {
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
        Ok(RuntimeHandle {
            listens,
            shared,
            system,
            control,
            thread: Some(thread),
        })
    }
}

/// What `[connections]` values the runtime cannot work with (beyond their types).
fn check_connections(config: &Config) -> Result<(), RuntimeError> {
    let c = &config.connections;
    for (key, d) in [
        ("handshake_timeout", c.handshake_timeout),
        ("send_timeout", c.send_timeout),
        ("connect_timeout", c.connect_timeout),
    ] {
        if d.get().is_zero() {
            return Err(RuntimeError::Config(format!(
                "[connections] {key} must be greater than 0"
            )));
        }
    }
    // One maximal message must fit in a queue, or a peer would be cut off for being sent
    // a single large (valid) message.
    if c.max_write_queue < config.limits.max_message_size {
        return Err(RuntimeError::Config(format!(
            "[connections] max_write_queue ({}) must be at least [limits] max_message_size ({})",
            c.max_write_queue, config.limits.max_message_size
        )));
    }
    Ok(())
}

/// The snapshot for `config` with the actual bound addresses.
fn build_snapshot(
    config: Arc<Config>,
    listens: Vec<Listen>,
    tls: Arc<tls::TlsContexts>,
) -> Snapshot {
    let aliases = config
        .domains
        .values()
        .flat_map(|d| d.names.iter().cloned())
        .collect();
    let proxy = Proxy::new(ProxyConfig {
        listens,
        aliases,
        ..ProxyConfig::default()
    });
    Snapshot {
        limits: config.limits,
        conn: ConnSettings::from_config(&config),
        proxy,
        tls,
        config,
    }
}

type Started = Result<(System, actix::Addr<Control>), RuntimeError>;

/// Body of the control thread: the actix System (its arbiter is the control arbiter), the
/// worker arbiters, until the system stops; then joins the workers.
fn run_system(
    shared: Arc<Shared>,
    per_worker: Vec<Vec<(Transport, SocketAddr, StdSocket)>>,
    grace: Duration,
    handle_signals: bool,
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
        let control = Control {
            shared: shared.clone(),
            grace,
            handle_signals,
            stopping: false,
        }
        .start();
        let _ = tx.send(Ok((System::current(), control)));
        arbiters
    });
    if let Err(e) = sys.run() {
        warn!(error = %e, "actor system ended with an error");
    }
    for arb in arbiters {
        arb.stop();
        let _ = arb.join();
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
    let worker = Rc::new(Worker::new(index, shared.clone(), udp));
    let mut recipients = Vec::new();
    for (t, addr, s) in ready {
        let l = Listener::new(worker.clone(), t, addr, s).start();
        recipients.push(l.recipient());
    }
    if let Ok(mut ls) = shared.listeners.lock() {
        ls.extend(recipients);
    }
}

/// Begin a graceful shutdown.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The control actor: signals and graceful shutdown. Lives on the control arbiter; the data
/// plane never waits for it.
pub struct Control {
    shared: Arc<Shared>,
    grace: Duration,
    handle_signals: bool,
    stopping: bool,
}

impl Actor for Control {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.handle_signals {
            return;
        }
        let me = ctx.address();
        actix::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                warn!(
                    "cannot install signal handlers: SIGTERM/SIGINT will not shut down gracefully"
                );
                return;
            };
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
        shared.shutting_down.store(true, Ordering::Release);
        // 1. Stop accepting and receiving.
        let listeners = shared
            .listeners
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for l in listeners {
            l.do_send(crate::listener::StopListening);
        }
        // 2. Every connection: stop reading, write what is queued, close.
        for h in shared.table.all() {
            h.addr().do_send(Drain);
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

    /// The live snapshot (configuration, proxy core, TLS contexts).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
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
    fn unusable_connection_settings_are_refused() {
        let mut c = Config::default();
        assert!(check_connections(&c).is_ok());
        c.connections.send_timeout = siprox::config::ConfigDuration::secs(0);
        assert!(check_connections(&c)
            .expect_err("zero")
            .to_string()
            .contains("send_timeout"));
        let mut c = Config::default();
        c.connections.max_write_queue = 100;
        assert!(check_connections(&c)
            .expect_err("small")
            .to_string()
            .contains("max_write_queue"));
    }
}
