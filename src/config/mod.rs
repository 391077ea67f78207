//! conf.d/ merging with figment, the typed configuration and its validation, from contents
//! the runtime read. Must never open a file, read the environment, bind, watch, spawn or log
//! (the runtime does those).
//!
//! - `load`: the pipeline ([`load_config`]: load, merge, validate, digest), which files
//!   count ([`is_config_file_name`]), merged how, which environment variables.
//! - `schema`: the typed configuration ([`Config`]) and its [`Config::summary`].
//! - `runtime`: the runtime's sections `[runtime]`, `[connections]`, `[tls]`.
//! - `location`: `[location]` (the location store's snapshot) and `[auth]` (digest).
//! - `cluster`: the `[cluster]` section (node name, advertise URI, Redis, liveness timers).
//! - `script`: the `[script]` section (the default route script).
//! - `management`: the `[management]` section (RPC listener, client-certificate allow-list).
//! - `tls`: the TLS settings of a domain's server and client sides.
//! - `lines`: the line of a key in a file's text, for errors serde gives without one.
//! - `print`: the merged configuration with each value's origin (`siprox check --print`).
//! - `validate`: what types cannot say (listeners, limits, log filter, domains).
//! - `changes`: every key classed live or restart-only, and the diff of two configurations
//!   ([`diff`]) that a reload reports.
//! - `error`: [`ConfigError`] / [`ConfigErrors`], each naming the file or variable at fault.
//!
//! The reference for every key is the commented default configuration, `conf.d/00-core.toml`.

mod changes;
mod cluster;
mod error;
pub(crate) mod htable;
mod lines;
mod load;
mod location;
mod management;
mod print;
mod runtime;
mod schema;
mod script;
mod tls;
mod transactions;
mod validate;

pub use changes::{class_of, diff, pin_restart_only, Change, Class};
pub use cluster::{
    advertise_is_tls, cluster_domain, ClusterConfig, ClusterTls, RedisTls, CLUSTER_DOMAIN,
    CLUSTER_SNI,
};
pub use error::{ConfigError, ConfigErrors, Origin};
pub use htable::HtableConfig;
pub use load::{
    digest, is_config_file_name, known_sections, load_config, load_sources, ConfigSource, Loaded,
    Origins, Outcome, COLLECTIONS, DOMAINS_DIR, ENV_CONFIG_DIR, ENV_PREFIX, ENV_SEPARATOR,
    REPLACE_SUFFIX,
};
pub use location::{AuthConfig, LocationConfig};
pub use management::ManagementConfig;
pub use print::render_with_origins;
pub use runtime::{
    ConfigDuration, ConnectionsConfig, RuntimeConfig, TlsConfig, TlsVersion, VerifyClient,
};
pub use schema::{Config, DomainConfig, HostPort, Listener, LogConfig, LogFormat, Proto};
pub use script::ScriptConfig;
pub use tls::{ClientTls, ServerTls, DEFAULT_GROUPS};
pub use transactions::TransactionsConfig;
pub use validate::{check_log_directives, MAX_MESSAGE_SIZE_CEILING};
