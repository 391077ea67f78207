//! The runtime's side of the core's script host (`siprox::script::host`): the core decides
//! what a script's effects do; this file only lends it the runtime's state (the location
//! store, the authenticator, the connection table) and turns its log lines and notes into
//! `tracing` events. Runs on the worker thread; must never block or decide anything itself.

use siprox::proxy::ConnId;
use siprox::script::host::{Digest, Env, Liveness, Note, Registrar, ScriptLog, Transactions};
use siprox::script::Level;
use tracing::{debug, error, info, warn};

use crate::state::table::ConnectionTable;
use crate::state::{unix_now, Shared, Snapshot};

impl Liveness for ConnectionTable {
    fn is_open(&self, conn: ConnId) -> bool {
        self.get(conn).is_some()
    }
}

/// Script logs and the core's notes as `tracing` events (target `siprox::script` for the
/// script's own lines, so operators filter them apart).
pub(crate) struct TracingLog;

impl ScriptLog for TracingLog {
    fn log(&self, level: Level, msg: &str) {
        match level {
            Level::Alert | Level::Bug | Level::Crit | Level::Err => {
                error!(target: "siprox::script", "{msg}")
            }
            Level::Warn => warn!(target: "siprox::script", "{msg}"),
            Level::Notice | Level::Info => info!(target: "siprox::script", "{msg}"),
            Level::Dbg => debug!(target: "siprox::script", "{msg}"),
        }
    }

    fn enabled(&self, level: Level) -> bool {
        match level {
            Level::Alert | Level::Bug | Level::Crit | Level::Err => {
                tracing::enabled!(target: "siprox::script", tracing::Level::ERROR)
            }
            Level::Warn => tracing::enabled!(target: "siprox::script", tracing::Level::WARN),
            Level::Notice | Level::Info => {
                tracing::enabled!(target: "siprox::script", tracing::Level::INFO)
            }
            Level::Dbg => tracing::enabled!(target: "siprox::script", tracing::Level::DEBUG),
        }
    }

    fn note(&self, note: Note<'_>) {
        match note {
            Note::BadForwardTarget { target, error } => {
                warn!(target, error, "script: bad forward target")
            }
            Note::RegisterRefused(e) => debug!(error = %e, "REGISTER refused"),
            Note::LookupFailed(e) => warn!(error = %e, "location lookup failed"),
            Note::CredentialsRefused(result) => debug!(?result, "digest credentials refused"),
            Note::ChallengeFailed(e) => warn!(error = %e, "cannot build a digest challenge"),
        }
    }
}

/// Runs `f` with the environment a request route gets: the registrar (the process's store,
/// the snapshot's settings, the connection table), digest authentication (the process's
/// snapshot's authenticator and users), and the time. Before the location store is set up
/// (never, once the runtime has started) save/lookup and the digest functions return -1.
pub(crate) fn with_env<R>(shared: &Shared, snap: &Snapshot, f: impl FnOnce(&Env<'_>) -> R) -> R {
    with_env_tm(shared, snap, None, f)
}

/// [`with_env`] with the worker's transaction table (a request route's `t_check_trans`,
/// `t_newtran`).
pub(crate) fn with_env_tm<R>(
    shared: &Shared,
    snap: &Snapshot,
    tm: Option<&dyn Transactions>,
    f: impl FnOnce(&Env<'_>) -> R,
) -> R {
    let location = shared.location.get();
    let digest = location.map(|_| Digest {
        authenticator: &snap.auth,
        users: &*snap.users,
    });
    let env = Env {
        registrar: location.map(|l| Registrar {
            store: l.registrar_store(),
            settings: &snap.config.registrar,
            liveness: &shared.table,
        }),
        auth: digest.as_ref().map(|d| d as _),
        log: &TracingLog,
        now: unix_now(),
        tm,
        htables: Some(&shared.htables),
    };
    f(&env)
}

/// The environment of replies, TLS events and HTTP requests: logging and the time only.
pub(crate) fn bare_env(shared: &Shared) -> Env<'_> {
    Env {
        htables: Some(&shared.htables),
        ..Env::bare(&TracingLog, unix_now())
    }
}
