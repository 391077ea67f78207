//! The runtime's reads of the file system and the environment for the core: conf.d listed
//! and read (symlinks followed, Kubernetes style), `SIPROX_*` variables, configured paths
//! resolved, a TLS domain's material (PEM files, CA directory, key password) read into the
//! bytes the core builds and hashes. In `reload` because its callers are the reload job,
//! `siprox check` and the start (entry), and the management listener; `tls` builds from the
//! material it is given; also `[auth] flow_key_file`. The core decides on what these
//! return; this file must never decide (merge, validate, parse) and never write, except the
//! flow-token key file it creates once when it is missing. Blocking: never call it on a
//! worker thread.

use std::path::{Path, PathBuf};

use siprox::config::{
    is_config_file_name, load_config, load_sources, ClientTls, Config, ConfigError, ConfigErrors,
    ConfigSource, Loaded, Origin, Origins, Outcome, ServerTls, DOMAINS_DIR,
};
use siprox::proxy::FlowKeys;
use siprox::tls::{CaDir, FileBytes, KeyPassword, ServerContext, TlsError, TlsMaterial};
use tracing::info;

use crate::error::RuntimeError;

use crate::tls::ReadMaterial;

pub use crate::state::resolve;
pub use crate::tls::{EnvLookup, TLS_HOOKS};

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

/// The core's pipeline ([`load_config`]: merge, validate, digest) on the files of `dir` and
/// the process environment, with its warnings: what `siprox check` and the start run.
pub fn load_outcome(dir: &Path) -> Outcome {
    let env = process_env_vars();
    match read_config_dir(dir) {
        Ok(files) => load_config(dir, files, env),
        Err(errors) => Outcome {
            loaded: Err(errors),
            // The environment's warnings do not depend on the files: still say them.
            warnings: load_config(dir, Vec::new(), env).warnings,
            invalid: None,
        },
    }
}

/// [`siprox::config::digest`] of the files of `dir` and the process environment: what a
/// reload compares to know whether conf.d changed. `None` when the directory cannot be
/// listed or a file read (the reload then loads, and reports the error).
pub fn config_digest(dir: &Path) -> Option<u64> {
    let files = read_config_dir(dir).ok()?;
    Some(siprox::config::digest(&files, process_env_vars()))
}

/// Every check on the files the configuration points to that the start would make, made
/// without starting: `[auth]` users, secret and flow-token key files, the management
/// listener's TLS material. Each error names the conf file and key that point to the file.
/// Reads only; a flow-token key file that does not exist yet is not an error (the start
/// creates it).
pub fn check_pointed_files(loaded: &Loaded, base: &Path) -> Vec<ConfigError> {
    let config = &loaded.config;
    let origins = &loaded.origins;
    let mut errors = Vec::new();
    let mut push = |path: &[&str], message: String| {
        errors.push(ConfigError::Invalid {
            origin: origins.of_or_dir(path),
            key: path.join("."),
            message,
        });
    };
    let auth = &config.auth;
    if let Some(f) = &auth.users_file {
        let path = resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Err(e) = siprox::auth::Users::from_toml(&text, &path.display().to_string()) {
                    push(&["auth", "users_file"], e.to_string());
                }
            }
            Err(e) => push(
                &["auth", "users_file"],
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if let Some(f) = &auth.secret_file {
        let path = resolve(base, f);
        match std::fs::read(&path) {
            Ok(secret) => {
                let settings = siprox::auth::AuthSettings::default();
                if let Err(e) = siprox::auth::Authenticator::new(&secret, settings) {
                    push(&["auth", "secret_file"], format!("{}: {e}", path.display()));
                }
            }
            Err(e) => push(
                &["auth", "secret_file"],
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if let Some(f) = &auth.flow_key_file {
        let path = resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Err(e) = FlowKeys::parse(&text) {
                    push(
                        &["auth", "flow_key_file"],
                        format!("{}: {e}", path.display()),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => push(
                &["auth", "flow_key_file"],
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    // `[cluster.redis_tls]`: the files the cluster's loops read at each Redis connection.
    if let Some(t) = config.cluster.as_ref().and_then(|c| c.redis_tls.as_ref()) {
        for (key, p) in [
            ("ca_file", &t.ca_file),
            ("certificate", &t.certificate),
            ("private_key", &t.private_key),
        ] {
            let Some(p) = p else { continue };
            let path = resolve(base, p);
            if let Err(e) = std::fs::read(&path) {
                push(
                    &["cluster", "redis_tls", key],
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
    }
    let m = &config.management;
    // Empty paths are refused by the core's validation already.
    let paths_set = [&m.certificate, &m.private_key, &m.ca_file]
        .iter()
        .all(|p| !p.as_os_str().is_empty());
    // Files a start would generate first (`[tls] generate_dev_certs`) are not there yet:
    // building from them would refuse what the start accepts.
    let generated = dev_cert_files(config, base);
    let pending = [&m.certificate, &m.private_key, &m.ca_file]
        .iter()
        .any(|p| generated.contains(&resolve(base, p)));
    if m.enabled && paths_set && !pending {
        let s = m.server_tls();
        let read = Pointed {
            files: FILES,
            config,
            origins,
        };
        let built = read.server(base, &s).and_then(|material| {
            siprox::tls::build_server(
                "management",
                &s,
                &material,
                crate::tls::unix_now(),
                TLS_HOOKS,
            )
        });
        if let Err(e) = built {
            push(&["management"], format!("TLS: {e}"));
        }
    }
    errors
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

/// The runtime's reader of TLS material for [`crate::tls::build_domains`] (which never
/// opens a file itself): reads with [`server_material`] / [`client_material`].
#[derive(Clone, Copy)]
pub struct Files<'a> {
    /// Where a `private_key_password_env` is looked up.
    pub env: EnvLookup<'a>,
}

/// Reads files and takes key passwords from the process environment.
pub const FILES: Files<'static> = Files { env: &process_env };

impl ReadMaterial for Files<'_> {
    fn server(&self, base: &Path, s: &ServerTls) -> Result<TlsMaterial, TlsError> {
        server_material(base, s, self.env)
    }

    fn client(&self, base: &Path, c: &ClientTls) -> Result<TlsMaterial, TlsError> {
        client_material(base, c, self.env)
    }
}

/// The files a start would generate as development certificates (the `[tls]` certificate,
/// key, CA and CA key; see `tls::ensure_dev_certs`), empty when it would generate none.
fn dev_cert_files(config: &Config, base: &Path) -> Vec<PathBuf> {
    let t = &config.tls;
    let cert = resolve(base, &t.certificate);
    let key = resolve(base, &t.private_key);
    if !t.generate_dev_certs || (cert.exists() && key.exists()) {
        return Vec::new();
    }
    let ca = match &t.ca_file {
        Some(p) => resolve(base, p),
        None => cert.with_file_name("ca.pem"),
    };
    let ca_key = ca.with_extension("key");
    vec![cert, key, ca, ca_key]
}

/// Like [`Files`], but an unreadable file's error also names the configuration file and
/// key that point to it (`set by conf.d/domains/a.toml at key "domains.'a'.server.certificate"`):
/// the domain alone does not say which of forty files holds the typo. For `siprox check`
/// and the start's checks, which have the [`Loaded`] configuration at hand.
#[derive(Clone, Copy)]
pub struct Pointed<'a> {
    /// The reader.
    pub files: Files<'a>,
    /// The configuration the sides come from (to find which table holds a side).
    pub config: &'a Config,
    /// Where each of its values came from.
    pub origins: &'a Origins,
}

impl Pointed<'_> {
    /// The key path of the table holding `side`, and the keys of its path fields.
    fn locate(&self, side: Side<'_>) -> Option<(Vec<String>, [&'static str; 6])> {
        const DOMAIN_KEYS: [&str; 6] = [
            "certificate",
            "private_key",
            "private_key_password_file",
            "ca_file",
            "crl_file",
            "ca_dir",
        ];
        let c = self.config;
        for (name, d) in &c.domains {
            let hit = match side {
                Side::Server(s) => d.server.as_ref() == Some(s),
                Side::Client(x) => d.client.as_ref() == Some(x),
            };
            if hit {
                let which = match side {
                    Side::Server(_) => "server",
                    Side::Client(_) => "client",
                };
                return Some((
                    vec!["domains".to_owned(), name.clone(), which.to_owned()],
                    DOMAIN_KEYS,
                ));
            }
        }
        match side {
            Side::Server(s) if *s == c.tls.server_tls() => {
                Some((vec!["tls".to_owned()], DOMAIN_KEYS))
            }
            Side::Server(s) if *s == c.management.server_tls() => {
                Some((vec!["management".to_owned()], DOMAIN_KEYS))
            }
            Side::Client(x) if *x == c.tls.client_tls() => Some((
                vec!["tls".to_owned()],
                [
                    "client_certificate",
                    "client_private_key",
                    "private_key_password_file",
                    "ca_file",
                    "crl_file",
                    "ca_dir",
                ],
            )),
            _ => None,
        }
    }

    /// `e` with the conf file and key that point to its file, when it is an unreadable file.
    fn name_origin(&self, base: &Path, side: Side<'_>, e: TlsError) -> TlsError {
        let TlsError::Read { path, reason } = e else {
            return e;
        };
        let fields = side.paths();
        let Some((table, keys)) = self.locate(side) else {
            return TlsError::Read { path, reason };
        };
        let at = fields.iter().zip(keys).find_map(|(p, key)| {
            let p = p.filter(|p| !p.as_os_str().is_empty())?;
            let full = resolve(base, p);
            // A CA directory's error names the directory or one of its entries.
            (path == full || path.starts_with(&full)).then_some(key)
        });
        let Some(key) = at else {
            return TlsError::Read { path, reason };
        };
        let mut segs: Vec<&str> = table.iter().map(String::as_str).collect();
        segs.push(key);
        let origin = self
            .origins
            .of(&segs)
            .unwrap_or_else(|| Origin::Dir(self.origins.dir().to_path_buf()));
        let key = siprox_key(&segs);
        TlsError::Read {
            path,
            reason: format!("{reason} (set by {origin} at key \"{key}\")"),
        }
    }
}

/// A key path as an operator writes it (`domains.'a.com'.server.certificate`).
fn siprox_key(segs: &[&str]) -> String {
    segs.iter()
        .map(|s| {
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                (*s).to_owned()
            } else {
                format!("'{s}'")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// One side of a TLS domain.
#[derive(Clone, Copy)]
enum Side<'a> {
    Server(&'a ServerTls),
    Client(&'a ClientTls),
}

impl<'a> Side<'a> {
    /// Its path fields, in the order of [`Pointed::locate`]'s keys.
    fn paths(self) -> [Option<&'a Path>; 6] {
        match self {
            Side::Server(s) => [
                Some(s.certificate.as_path()),
                Some(s.private_key.as_path()),
                s.private_key_password_file.as_deref(),
                s.ca_file.as_deref(),
                s.crl_file.as_deref(),
                s.ca_dir.as_deref(),
            ],
            Side::Client(c) => [
                c.certificate.as_deref(),
                c.private_key.as_deref(),
                c.private_key_password_file.as_deref(),
                c.ca_file.as_deref(),
                c.crl_file.as_deref(),
                c.ca_dir.as_deref(),
            ],
        }
    }
}

impl ReadMaterial for Pointed<'_> {
    fn server(&self, base: &Path, s: &ServerTls) -> Result<TlsMaterial, TlsError> {
        self.files
            .server(base, s)
            .map_err(|e| self.name_origin(base, Side::Server(s), e))
    }

    fn client(&self, base: &Path, c: &ClientTls) -> Result<TlsMaterial, TlsError> {
        self.files
            .client(base, c)
            .map_err(|e| self.name_origin(base, Side::Client(c), e))
    }
}

/// Reads the server side's material of a domain (once: the digest and the build both use
/// these bytes) and builds it. For a context built once, like the management listener's.
pub fn build_server(
    id: &str,
    s: &ServerTls,
    base: &Path,
    env: EnvLookup<'_>,
    now: i64,
) -> Result<ServerContext, TlsError> {
    siprox::tls::build_server(id, s, &server_material(base, s, env)?, now, TLS_HOOKS)
}

/// Everything the server side `s` is built from, read (paths resolved against `base`).
/// The first file that cannot be read is the error.
pub fn server_material(
    base: &Path,
    s: &ServerTls,
    env: EnvLookup<'_>,
) -> Result<TlsMaterial, TlsError> {
    material(
        base,
        Some(&s.certificate),
        Some(&s.private_key),
        s.private_key_password_file.as_deref(),
        s.private_key_password_env.as_deref(),
        [
            s.ca_file.as_deref(),
            s.crl_file.as_deref(),
            s.ca_dir.as_deref(),
        ],
        env,
    )
}

/// Like [`server_material`], for the client side of a domain.
pub fn client_material(
    base: &Path,
    c: &ClientTls,
    env: EnvLookup<'_>,
) -> Result<TlsMaterial, TlsError> {
    material(
        base,
        c.certificate.as_deref(),
        c.private_key.as_deref(),
        c.private_key_password_file.as_deref(),
        c.private_key_password_env.as_deref(),
        [
            c.ca_file.as_deref(),
            c.crl_file.as_deref(),
            c.ca_dir.as_deref(),
        ],
        env,
    )
}

fn material(
    base: &Path,
    certificate: Option<&Path>,
    private_key: Option<&Path>,
    password_file: Option<&Path>,
    password_env: Option<&str>,
    [ca_file, crl, ca_dir]: [Option<&Path>; 3],
    env: EnvLookup<'_>,
) -> Result<TlsMaterial, TlsError> {
    // An empty path is "not configured" (the `[tls]` defaults can be emptied).
    let read = |p: Option<&Path>| {
        p.filter(|p| !p.as_os_str().is_empty())
            .map(|p| read_file(&resolve(base, p)))
            .transpose()
    };
    let certificate = read(certificate)?;
    let private_key = read(private_key)?;
    let password = match (read(password_file)?, password_env) {
        (Some(file), _) => Some(KeyPassword::File(file)),
        (None, Some(var)) => Some(KeyPassword::Env {
            var: var.to_owned(),
            value: env(var),
        }),
        (None, None) => None,
    };
    Ok(TlsMaterial {
        certificate,
        private_key,
        password,
        ca_file: read(ca_file)?,
        crl: read(crl)?,
        ca_dir: ca_dir
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| read_ca_dir(&resolve(base, p)))
            .transpose()?,
    })
}

/// The flow-token keys of `[auth] flow_key_file` (created with one random key, mode 0600,
/// when it does not exist yet); without the setting, a random key for this process.
pub fn load_flow_keys(config: &Config, base: &Path) -> Result<FlowKeys, RuntimeError> {
    let Some(f) = &config.auth.flow_key_file else {
        return Ok(FlowKeys::random());
    };
    let path = resolve(base, f);
    let what = |verb: &str| format!("{verb} [auth] flow_key_file {}", path.display());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = FlowKeys::generate_file()
                .map_err(|e| RuntimeError::Config(format!("{}: {e}", what("generating"))))?;
            match create_private(&path, text.as_bytes()) {
                Ok(()) => {
                    info!(file = %path.display(), "flow-token key generated");
                    text
                }
                // Another process made it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path).map_err(|source| RuntimeError::Io {
                        what: what("reading"),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(RuntimeError::Io {
                        what: what("creating"),
                        source,
                    })
                }
            }
        }
        Err(source) => {
            return Err(RuntimeError::Io {
                what: what("reading"),
                source,
            })
        }
    };
    FlowKeys::parse(&text).map_err(|e| RuntimeError::Config(format!("{}: {e}", what("in"))))
}

/// A new file readable by its owner only; fails if it exists.
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// One file's bytes (symlinks followed).
pub fn read_file(path: &Path) -> Result<FileBytes, TlsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(FileBytes {
            path: path.to_path_buf(),
            bytes,
        }),
        Err(e) => Err(TlsError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// The entries of a CA directory that the core reads ([`siprox::tls::is_ca_dir_entry`]:
/// the hashed names `openssl rehash` makes, usually symlinks), sorted by name.
fn read_ca_dir(path: &Path) -> Result<CaDir, TlsError> {
    let not_a_dir = |reason: String| TlsError::Read {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_dir() {
        return Err(not_a_dir("not a directory".into()));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| not_a_dir(e.to_string()))? {
        let entry = entry.map_err(|e| not_a_dir(e.to_string()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if siprox::tls::is_ca_dir_entry(&name) {
            let file = read_file(&entry.path())?;
            entries.push((name, file.bytes));
        }
    }
    entries.sort();
    Ok(CaDir {
        path: path.to_path_buf(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn config_files_follow_kubernetes_symlinks_and_a_dangling_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf.d");
        // A ConfigMap mount: the files live in ..data/, the names are symlinks to them.
        std::fs::create_dir_all(conf.join("..data")).expect("mkdir");
        std::fs::write(
            conf.join("..data/00-core.toml"),
            "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5060\"\n",
        )
        .expect("write");
        symlink("..data/00-core.toml", conf.join("00-core.toml")).expect("symlink");
        let files = read_config_dir(&conf).expect("readable");
        assert_eq!(
            files.len(),
            1,
            "..data itself is a hidden directory, skipped"
        );
        assert_eq!(files[0].rel, Path::new("00-core.toml"));
        assert!(files[0].text.contains("127.0.0.1:5060"));
        load_with_env(&conf, []).expect("valid");

        symlink("..data/missing.toml", conf.join("10-x.toml")).expect("symlink");
        let err = read_config_dir(&conf).expect_err("dangling");
        let text = err.to_string();
        assert!(text.contains("10-x.toml: cannot read"), "{text}");
    }

    #[test]
    fn tls_material_is_read_once_with_the_first_unreadable_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::write(base.join("cert.pem"), b"CERT").expect("write");
        std::fs::write(base.join("key.pem"), b"KEY").expect("write");
        std::fs::create_dir(base.join("ca.d")).expect("mkdir");
        std::fs::write(base.join("ca.d/test-ca.pem"), b"CA").expect("write");
        symlink("test-ca.pem", base.join("ca.d/9d66eef0.0")).expect("symlink");
        std::fs::write(base.join("ca.d/README"), b"not read").expect("write");
        let s = ServerTls {
            certificate: "cert.pem".into(),
            private_key: "key.pem".into(),
            ca_dir: Some("ca.d".into()),
            private_key_password_env: Some("SIPROX_TEST_UNSET_PW".into()),
            ..ServerTls::default()
        };
        let m = server_material(base, &s, &no_env).expect("readable");
        assert_eq!(
            m.certificate.as_ref().map(|f| &f.bytes[..]),
            Some(&b"CERT"[..])
        );
        assert_eq!(
            m.private_key.as_ref().map(|f| f.path.clone()),
            Some(base.join("key.pem"))
        );
        let ca = m.ca_dir.as_ref().expect("ca dir");
        // Only the hashed name OpenSSL's lookup would read, through its symlink.
        assert_eq!(ca.entries, vec![("9d66eef0.0".to_owned(), b"CA".to_vec())]);
        assert!(matches!(
            &m.password,
            Some(KeyPassword::Env { var, value: None }) if var == "SIPROX_TEST_UNSET_PW"
        ));

        let missing = ServerTls {
            private_key: "nope.key".into(),
            crl_file: Some("nope.crl".into()),
            ..s.clone()
        };
        let err = server_material(base, &missing, &no_env).expect_err("missing key");
        assert!(err.to_string().contains("nope.key: cannot read"), "{err}");
        let not_dir = ServerTls {
            ca_dir: Some("cert.pem".into()),
            ..s
        };
        let err = server_material(base, &not_dir, &no_env).expect_err("not a dir");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
