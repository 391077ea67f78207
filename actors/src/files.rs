//! The runtime's reads of the file system and the environment for the core: conf.d listed
//! and read (symlinks followed, Kubernetes style), `SIPROX_*` variables, configured paths
//! resolved. The core decides on what these return; this file must never decide (merge,
//! validate, parse) and never write. Blocking: never call it on a worker thread.

use std::path::{Path, PathBuf};

use siprox::config::{
    is_config_file_name, load_sources, Config, ConfigError, ConfigErrors, ConfigSource, Origin,
    DOMAINS_DIR,
};

/// Resolve a configured path: absolute as is, else relative to `base`.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The process environment, every variable (the core picks the `SIPROX_` ones).
pub fn process_env_vars() -> Vec<(String, String)> {
    // Lossy, not `std::env::vars()`: that one panics on a non-UTF-8 variable anywhere in the
    // environment, even one that has nothing to do with siprox.
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// One environment variable (a key password), `None` when unset or not UTF-8.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads and validates the configuration in `dir`, with `SIPROX_...` overrides taken from
/// the process environment.
pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(dir, process_env_vars())
}

/// Loads and validates the configuration in `dir`, with `SIPROX_...` overrides taken from
/// `env` instead of the process environment (tests pass their own).
pub fn load_with_env(
    dir: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    load_sources(dir, read_config_dir(dir)?, env)
}

/// The configuration files of `dir` with their text: `*.toml` directly in `dir` and in
/// `dir/domains/` (the core's [`is_config_file_name`] says which names count). A missing
/// `dir` is an error; a missing `domains/` is not. Every unreadable entry is reported.
pub fn read_config_dir(dir: &Path) -> Result<Vec<ConfigSource>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for (rel, path) in config_files_rel(dir)? {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => found.push(ConfigSource { rel, text }),
                Err(_) => errors.push(unreadable(path, "stream did not contain valid UTF-8")),
            },
            Err(e) => errors.push(unreadable(path, e)),
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn unreadable(path: PathBuf, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::File(path),
        key: String::new(),
        message: format!("cannot read: {e}"),
    }
}

/// The configuration files of `dir`, in merge order (byte-wise by relative path: the
/// order the core merges them in).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut files = config_files_rel(dir)?;
    files.sort_by(|a, b| {
        a.0.as_os_str()
            .as_encoded_bytes()
            .cmp(b.0.as_os_str().as_encoded_bytes())
    });
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Every configuration file of `dir` and `dir/domains/`, as (relative path, full path).
fn config_files_rel(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ConfigErrors> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    list_dir(dir, None, &mut found, &mut errors);
    if errors.is_empty() {
        let domains = dir.join(DOMAINS_DIR);
        if domains.is_dir() {
            list_dir(&domains, Some(DOMAINS_DIR), &mut found, &mut errors);
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Adds the config files of one directory to `found`.
fn list_dir(
    dir: &Path,
    prefix: Option<&str>,
    found: &mut Vec<(PathBuf, PathBuf)>,
    errors: &mut Vec<ConfigError>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(ConfigError::Dir {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                errors.push(ConfigError::Dir {
                    path: dir.to_path_buf(),
                    source,
                });
                continue;
            }
        };
        let name = entry.file_name();
        if !is_config_file_name(&name) {
            continue;
        }
        let path = entry.path();
        // fs::metadata follows symlinks: Kubernetes mounts ConfigMap files as symlinks into
        // a hidden `..data/` directory, and those must count as files.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) => {
                // A dangling `x.toml` symlink is a file the operator meant to load: silently
                // running without it would be worse than refusing.
                errors.push(unreadable(path, e));
                continue;
            }
        }
        let rel = match prefix {
            Some(prefix) => Path::new(prefix).join(&name),
            None => PathBuf::from(&name),
        };
        found.push((rel, path));
    }
}
