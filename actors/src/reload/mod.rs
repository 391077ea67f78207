//! Control plane: the `DomainRegistry` actor (`registry`), the one writer of the live
//! snapshot; the reload job it runs off the arbiter (`job`); the directory watcher
//! (`watch`); route-script compiling (`script`); and why a candidate is refused (`error`:
//! [`ReloadError`]). Runs on the control arbiter; the data plane never imports it and never
//! waits for it.

pub mod error;
pub mod files;
mod job;
pub mod registry;
pub mod script;
mod watch;

pub use error::{ReloadError, ScriptError, ScriptProblem, UsersFileError};
pub use job::config_digest;
pub(crate) use job::{load_users, scripts_digest, users_digest, LoadedDigests};
pub use watch::watch_dirs;
