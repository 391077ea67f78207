//! conf.d/ merging with figment, the typed configuration and its validation, from contents
//! the runtime read. Must never open a file, read the environment, bind, watch, spawn or log
//! (the runtime does those).
//!
//! - `load`: which files count, in which order, merged how ([`load_sources`],
//!   [`is_config_file_name`]).
//! - `schema`: the typed configuration ([`Config`]) and its [`Config::summary`].
//! - `runtime`: the runtime's sections `[runtime]`, `[connections]`, `[tls]`.
//! - `location`: `[location]` (the location store's snapshot) and `[auth]` (digest).
//! - `cluster`: the `[cluster]` section (node name, advertise URI, Redis, liveness timers).
//! - `script`: the `[script]` section (the default route script).
//! - `management`: the `[management]` section (RPC listener, client-certificate allow-list).
//! - `tls`: the TLS settings of a domain's server and client sides.
//! - `validate`: what types cannot say (listeners, limits, log filter, domains).
//! - `error`: [`ConfigError`] / [`ConfigErrors`], each naming the file or variable at fault.
//!
//! The reference for every key is the commented default configuration, `conf.d/00-core.toml`.

mod cluster;
mod error;
mod load;
mod location;
mod management;
mod runtime;
mod schema;
mod script;
mod tls;
mod validate;

pub use cluster::ClusterConfig;
pub use error::{ConfigError, ConfigErrors, Origin};
pub use load::{
    is_config_file_name, load_sources, ConfigSource, DOMAINS_DIR, ENV_CONFIG_DIR, ENV_PREFIX,
    ENV_SEPARATOR,
};
pub use location::{AuthConfig, LocationConfig};
pub use management::ManagementConfig;
pub use runtime::{
    ConfigDuration, ConnectionsConfig, RuntimeConfig, TlsConfig, TlsVersion, VerifyClient,
};
pub use schema::{Config, DomainConfig, HostPort, Listener, LogConfig, LogFormat, Proto};
pub use script::ScriptConfig;
pub use tls::{ClientTls, ServerTls};
pub use validate::{check_log_directives, MAX_MESSAGE_SIZE_CEILING};
