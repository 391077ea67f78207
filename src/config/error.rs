//! Configuration errors: every one says where the offending value came from (file or
//! environment variable) and which key. Must never lose that origin: an operator with forty
//! files in conf.d/ has to be able to jump straight to the line to fix.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value (or a problem) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `*.toml` file, as the path it was read from (the configuration directory joined
    /// with its relative path, so it reads `conf.d/10-x.toml` when siprox runs with `-c conf.d`).
    File(PathBuf),
    /// A `SIPROX_...` environment variable, by name.
    Env(String),
    /// The configuration as a whole (e.g. "no listener at all"): the directory it was loaded from.
    Dir(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Dir(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One configuration error. `Display` is a single line, prefixed by its origin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration directory (or its `domains/` subfolder) could not be listed.
    #[error("{}: cannot read configuration directory: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration directory holds no `*.toml` file at all: almost certainly the wrong `-c`.
    #[error("{}: no *.toml configuration file in this directory", path.display())]
    NoFiles {
        /// The directory.
        path: PathBuf,
    },
    /// A value is missing, unknown, of the wrong type or fails validation.
    #[error("{origin}: {message}{}", KeySuffix(key))]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// Dotted key path, with list indexes in brackets (`listen[1].proto`); empty when the
        /// problem is with the whole file (e.g. a TOML syntax error).
        key: String,
        /// What is wrong, on one line.
        message: String,
    },
}

impl ConfigError {
    /// The origin this error names, if it names a single value's origin.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Invalid { origin, .. } => Some(origin),
            ConfigError::Dir { .. } | ConfigError::NoFiles { .. } => None,
        }
    }

    /// The key path this error is about (empty if none).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. } => key,
            ConfigError::Dir { .. } | ConfigError::NoFiles { .. } => "",
        }
    }
}

struct KeySuffix<'a>(&'a str);

impl fmt::Display for KeySuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " at key \"{}\"", self.0)
        }
    }
}

/// Every error found while loading a configuration. Loading goes on after the first error
/// wherever the later checks still make sense, so that one `siprox check` shows them all.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in the order they were found (file order, then validation order).
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is none (a `ConfigErrors` returned by `load` never is).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
