//! Why a reload refused its candidate (and why the start or `siprox check` would): one
//! variant per cause, each naming where it came from (the file and key or line, the
//! domain). A domain's TLS material keeps its own `tls::DomainError`; everything that is not
//! about one domain is here. Must never carry key material or a password in a message.

use std::fmt;
use std::io;
use std::path::PathBuf;

use siprox::auth::UsersError;
use siprox::config::ConfigError;
use siprox::script::CompileErrors;

use crate::error::RuntimeError;
use crate::tls::DomainError;

/// One reason a reload's candidate was refused. Its text is the log's `error` field and one
/// line of the RPC's last error.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A domain's TLS material (certificate, key, CA, CRL...) or a conflict between domains.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// conf.d: a file, a key or a `SIPROX_*` variable (the core's error names which).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A `[connections]` value the runtime cannot work with, or an `[auth] flow_key_file`
    /// that cannot be read or created.
    #[error("{0}")]
    Settings(#[from] RuntimeError),
    /// A route script that cannot be read or does not compile.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// The `[auth] users_file`.
    #[error(transparent)]
    Users(#[from] UsersFileError),
    /// The reload itself did not run to its end (its task failed, the `Script` actor is
    /// gone): nothing in the configuration is wrong.
    #[error("reload: {0}")]
    Internal(String),
}

impl ReloadError {
    /// The TLS domain it is about, if it is about one. A script error is about its file
    /// (see [`ReloadError::script_file`]), whichever domains use it.
    pub fn domain(&self) -> Option<&str> {
        match self {
            ReloadError::Domain(e) => Some(&e.domain),
            _ => None,
        }
    }

    /// The route script file it is about, if it is about one.
    pub fn script_file(&self) -> Option<&std::path::Path> {
        match self {
            ReloadError::Script(e) => Some(&e.path),
            _ => None,
        }
    }

    /// What kind of input it is about (the log's `kind` field).
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadError::Domain(_) => "tls",
            ReloadError::Config(_) | ReloadError::Settings(_) => "config",
            ReloadError::Script(_) => "script",
            ReloadError::Users(_) => "users",
            ReloadError::Internal(_) => "reload",
        }
    }
}

/// A route script that cannot be used: whose it is, its file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// The domain whose script it is; `None`: `[script] file`.
    pub domain: Option<String>,
    pub path: PathBuf,
    pub problem: ScriptProblem,
}

/// What is wrong with a script file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptProblem {
    /// It could not be read (the I/O error's text: a script source is cloned and compared).
    Read(String),
    /// It does not compile: every error, each with file:line:col and the line.
    Compile(CompileErrors),
    /// It names `$sht` tables that `[htables]` does not declare.
    UnknownHtables(Vec<String>),
    /// It forces a send socket (`$fs`, `force_send_socket`) that no listener has.
    UnknownSockets(Vec<String>),
}

impl fmt::Display for ScriptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptProblem::Read(e) => write!(f, "cannot read: {e}"),
            ScriptProblem::Compile(e) => write!(f, "{e}"),
            ScriptProblem::UnknownHtables(t) => write!(
                f,
                "$sht names a table that [htables] does not declare: {} (add [htables.{}] to conf.d)",
                t.join(", "),
                t.first().map_or("", String::as_str)
            ),
            ScriptProblem::UnknownSockets(s) => write!(
                f,
                "$fs / force_send_socket names a socket siprox does not listen on: {} (the [[listen]] entries of conf.d)",
                s.join(", ")
            ),
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            None => f.write_str("[script] file: ")?,
            Some(d) => write!(f, "domain `{d}`: ")?,
        }
        match &self.problem {
            // A compile error names its file itself.
            ScriptProblem::Compile(e) => write!(f, "{e}"),
            ScriptProblem::Read(e) => write!(f, "{}: cannot read: {e}", self.path.display()),
            p @ (ScriptProblem::UnknownHtables(_) | ScriptProblem::UnknownSockets(_)) => {
                write!(f, "{}: {p}", self.path.display())
            }
        }
    }
}

impl std::error::Error for ScriptError {}

/// The `[auth] users_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("[auth] users_file {}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Its content (the core's error names the file and line).
    #[error("[auth] users_file: {0}")]
    Invalid(#[from] UsersError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_input() {
        let d = ReloadError::from(DomainError {
            domain: "a".to_owned(),
            reason: "certs/a.pem: no such file".to_owned(),
        });
        assert_eq!(d.to_string(), "domain `a`: certs/a.pem: no such file");
        assert_eq!((d.domain(), d.kind()), (Some("a"), "tls"));

        let compile = siprox::script::compile("route {\n  nope();\n}\n", "s/main.cfg")
            .expect_err("unknown function");
        let s = ReloadError::from(ScriptError {
            domain: Some("b".to_owned()),
            path: PathBuf::from("s/main.cfg"),
            problem: ScriptProblem::Compile(compile),
        });
        let text = s.to_string();
        assert!(text.starts_with("domain `b`: s/main.cfg:2:3: "), "{text}");
        assert_eq!((s.domain(), s.kind()), (None, "script"));
        assert_eq!(s.script_file(), Some(std::path::Path::new("s/main.cfg")));

        let r = ReloadError::from(ScriptError {
            domain: None,
            path: PathBuf::from("s/gone.cfg"),
            problem: ScriptProblem::Read("No such file or directory".to_owned()),
        });
        assert_eq!(
            r.to_string(),
            "[script] file: s/gone.cfg: cannot read: No such file or directory"
        );
        assert_eq!((r.domain(), r.kind()), (None, "script"));

        let u = ReloadError::from(UsersFileError::Read {
            path: PathBuf::from("users.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert!(
            u.to_string()
                .starts_with("[auth] users_file users.toml: cannot read: "),
            "{u}"
        );
        assert_eq!(u.kind(), "users");
    }
}
