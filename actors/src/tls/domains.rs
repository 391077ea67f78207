//! Building every TLS domain of a configuration, reusing the contexts whose inputs did not
//! change. The material (PEM bytes) comes from a [`ReadMaterial`] the caller gives (the
//! runtime's `reload::files`): this file opens none. Building is still slow: it runs before
//! the workers start or on a reload thread, never on a worker. Never logs key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use siprox::config::{ClientTls, Config, ServerTls};
use siprox::tls::{
    build_client, build_server, client_digest, server_digest, BuildHooks, ClientMatcher,
    ClientSpec, ServerMatcher, ServerSpec, TlsError, TlsMaterial,
};

use crate::state::{resolve, ClientDomain, ServerDomain, TlsDomains, DEFAULT_DOMAIN};

/// How to look up a password held in an environment variable (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the core's TLS building needs from the runtime: the CRL call the `openssl` crate
/// lacks (in `ffi`) and the client session store (in `sessions`).
pub const TLS_HOOKS: BuildHooks = BuildHooks {
    add_crl: crate::tls::ffi::add_crl,
    client_sessions: crate::tls::sessions::new_cache,
};

/// Where a domain's material comes from (paths resolved against `base`). The runtime's
/// reader is `reload::files::Files`; tls itself never opens a certificate.
pub trait ReadMaterial {
    /// Everything the server side `s` is built from; the first unreadable file is the error.
    fn server(&self, base: &Path, s: &ServerTls) -> Result<TlsMaterial, TlsError>;
    /// Like [`ReadMaterial::server`], for the client side `c`.
    fn client(&self, base: &Path, c: &ClientTls) -> Result<TlsMaterial, TlsError>;
}

/// Session-id context seed of the default server domain: not a possible table name, so no
/// `[domains.*]` can share its session-id context.
const DEFAULT_ID: &str = "[tls]";

/// The reason of a build error: a setting's error also names where the domain is set
/// (its file, or `[tls]`); the others already name their file.
fn with_source(e: TlsError, source: &str) -> String {
    match e {
        TlsError::Setting { .. } => format!("{e} (set in {source})"),
        _ => e.to_string(),
    }
}

/// One domain that cannot be built, and why (the reason names the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainError {
    pub domain: String,
    pub reason: String,
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "domain `{}`: {}", self.domain, self.reason)
    }
}

impl std::error::Error for DomainError {}

/// The files a server domain is built from (what a reload re-reads and the watcher watches).
pub(crate) fn server_sources(base: &Path, s: &ServerTls) -> Vec<PathBuf> {
    [
        Some(&s.certificate),
        Some(&s.private_key),
        s.private_key_password_file.as_ref(),
        s.ca_file.as_ref(),
        s.ca_dir.as_ref(),
        s.crl_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.as_os_str().is_empty())
    .map(|p| resolve(base, p))
    .collect()
}

/// The files a client domain is built from.
pub(crate) fn client_sources(base: &Path, c: &ClientTls) -> Vec<PathBuf> {
    [
        c.certificate.as_ref(),
        c.private_key.as_ref(),
        c.private_key_password_file.as_ref(),
        c.ca_file.as_ref(),
        c.ca_dir.as_ref(),
        c.crl_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| resolve(base, p))
    .collect()
}

/// What [`build_domains`] needs besides the configuration.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    /// Directory relative paths are resolved against (the config directory's parent).
    pub base: &'a Path,
    /// A tls listener exists: the default server domain is needed.
    pub has_tls: bool,
    /// `siprox check` with `generate_dev_certs`: missing default files will be generated at
    /// start, so their absence is not an error.
    pub dev_certs_pending: bool,
    /// Seconds since the epoch (expiry checks).
    pub now: i64,
    /// Reads each domain's material once: its digest and its build use the same bytes.
    pub read: &'a dyn ReadMaterial,
}

/// Builds every TLS domain of `config`, all or nothing (`siprox check`, a strict start):
/// any domain that cannot be built is an error. See [`build_domains_isolated`].
pub fn build_domains(
    config: &Config,
    prev: Option<&TlsDomains>,
    o: BuildOptions<'_>,
) -> Result<TlsDomains, Vec<DomainError>> {
    match build_domains_isolated(config, prev, o) {
        Ok((t, kept)) if kept.is_empty() => Ok(t),
        Ok((_, kept)) => Err(kept),
        Err(e) => Err(e),
    }
}

/// Builds every TLS domain of `config`. Contexts of `prev` whose digest is unchanged are
/// reused as they are (no file parsed twice, no key loaded twice, `Arc::ptr_eq`). Every
/// failing domain is reported, not only the first. Blocking (its reader reads files): never
/// call it on a worker thread.
///
/// One tenant's broken material must not hold up the others: a domain that cannot be
/// built keeps its previous, still valid, build from `prev` (or, with none, is left out:
/// its SNI names then get what `[tls] default_server` says), and is returned in the second
/// list with why. `Err` only for what no domain can be kept for: conflicts between domains,
/// and a default domain that fails with no previous build to keep.
pub fn build_domains_isolated(
    config: &Config,
    prev: Option<&TlsDomains>,
    o: BuildOptions<'_>,
) -> Result<(TlsDomains, Vec<DomainError>), Vec<DomainError>> {
    let mut errors = Vec::new();
    // Domains that failed and kept their last good build (or were left out).
    let mut kept = Vec::new();
    let still_valid = |ctx: &siprox::tls::ServerContext| ctx.cert.not_after_unix >= o.now;
    let prev_server = |name: &str| {
        prev.and_then(|p| {
            p.servers
                .iter()
                .chain(p.default_server.iter())
                .find(|d| &*d.name == name)
        })
    };
    let prev_client = |name: &str| {
        prev.and_then(|p| {
            p.clients
                .iter()
                .chain(std::iter::once(&p.default_client))
                .find(|d| &*d.name == name)
        })
    };
    let server =
        |name: &str, id: &str, source: &str, s: &ServerTls, errors: &mut Vec<DomainError>| {
            let err = |e: TlsError| DomainError {
                domain: name.to_owned(),
                reason: with_source(e, source),
            };
            // Read once: the digest and the build come from the same bytes.
            let material = match o.read.server(o.base, s) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(err(e));
                    return None;
                }
            };
            let digest = server_digest(id, s, &material);
            let old = prev_server(name);
            if let Some(old) = old.filter(|d| d.ctx.digest == digest) {
                // Unchanged inputs: the very same context. Still refuse it once it has expired.
                if old.ctx.cert.not_after_unix < o.now {
                    errors.push(err(TlsError::Expired {
                        path: resolve(o.base, &s.certificate),
                        not_after: old.ctx.cert.not_after.clone(),
                    }));
                    return None;
                }
                return Some((old.ctx.clone(), old.open.clone()));
            }
            match build_server(id, s, &material, o.now, TLS_HOOKS) {
                Ok(ctx) => Some((
                    Arc::new(ctx),
                    old.map(|d| d.open.clone()).unwrap_or_default(),
                )),
                Err(e) => {
                    errors.push(err(e));
                    None
                }
            }
        };

    // Each domain's file, indexed once for both sides (a scan per domain is quadratic in
    // tenants).
    let sources = siprox::tls::DomainSources::new(config);
    let mut servers = Vec::new();
    let mut specs = Vec::new();
    for (name, d) in &config.domains {
        let Some(s) = &d.server else { continue };
        let spec = siprox::tls::server_spec(name, d, s, &sources.get(name));
        let mut failed = Vec::new();
        if let Some((ctx, open)) = server(name, name, &spec.source, s, &mut failed) {
            servers.push(Arc::new(ServerDomain {
                name: name.as_str().into(),
                ctx,
                spec: spec.clone(),
                handshake_timeout: s.handshake_timeout.map(|d| d.get()),
                send_timeout: s.send_timeout.map(|d| d.get()),
                max_connections: s.max_connections,
                open,
                sources: server_sources(o.base, s),
            }));
            specs.push(spec);
            continue;
        }
        kept.extend(failed);
        // The last good build serves on, names and all, as it was published.
        if let Some(old) = prev_server(name).filter(|d| still_valid(&d.ctx)) {
            specs.push(old.spec.clone());
            servers.push(old.clone());
        }
    }
    let matcher = match ServerMatcher::build(&specs) {
        Ok(m) => m,
        Err(es) => {
            errors.extend(es.into_iter().map(|e| DomainError {
                domain: match &e {
                    siprox::tls::MatchError::DuplicateName { second, .. }
                    | siprox::tls::MatchError::DuplicateListener { second, .. } => second.clone(),
                    siprox::tls::MatchError::BadName { domain, .. } => domain.clone(),
                },
                reason: e.to_string(),
            }));
            ServerMatcher::default()
        }
    };

    let t = &config.tls;
    let default_files_missing =
        !resolve(o.base, &t.certificate).exists() || !resolve(o.base, &t.private_key).exists();
    let default_server = if o.has_tls
        && t.default_server
        && !(o.dev_certs_pending && t.generate_dev_certs && default_files_missing)
    {
        let mut failed = Vec::new();
        match server(
            DEFAULT_DOMAIN,
            DEFAULT_ID,
            DEFAULT_ID,
            &t.server_tls(),
            &mut failed,
        ) {
            Some((ctx, open)) => Some(Arc::new(ServerDomain {
                name: DEFAULT_DOMAIN.into(),
                ctx,
                spec: ServerSpec {
                    name: DEFAULT_DOMAIN.into(),
                    source: "[tls]".to_owned(),
                    sni: Vec::new(),
                    listen: Vec::new(),
                },
                handshake_timeout: None,
                send_timeout: None,
                max_connections: 0,
                open,
                sources: server_sources(o.base, &t.server_tls()),
            })),
            // A reload keeps the running default; a start has none to keep.
            None => match prev
                .and_then(|p| p.default_server.clone())
                .filter(|d| still_valid(&d.ctx))
            {
                Some(old) => {
                    kept.extend(failed);
                    Some(old)
                }
                None => {
                    errors.extend(failed);
                    None
                }
            },
        }
    } else {
        None
    };

    let client = |name: &str, source: &str, c: &ClientTls, errors: &mut Vec<DomainError>| {
        // "client side": `[tls]` is both default domains, and a setting wrong in both
        // (a bad `groups`) would otherwise be two identical lines.
        let err = |e: TlsError| DomainError {
            domain: name.to_owned(),
            reason: format!("client side: {}", with_source(e, source)),
        };
        let material = match o.read.client(o.base, c) {
            Ok(m) => m,
            Err(e) => {
                errors.push(err(e));
                return None;
            }
        };
        let digest = client_digest(c, &material);
        if let Some(old) = prev_client(name).filter(|d| d.ctx.digest == digest) {
            return Some(old.ctx.clone());
        }
        match build_client(c, &material, o.now, TLS_HOOKS) {
            Ok(ctx) => Some(Arc::new(ctx)),
            Err(e) => {
                errors.push(err(e));
                None
            }
        }
    };
    let client_specs = siprox::tls::client_specs(config);
    let mut clients = Vec::new();
    for spec in &client_specs {
        let Some(c) = config
            .domains
            .get(&spec.name)
            .and_then(|d| d.client.as_ref())
        else {
            continue;
        };
        let mut failed = Vec::new();
        if let Some(ctx) = client(&spec.name, &sources.get(&spec.name), c, &mut failed) {
            clients.push(Arc::new(ClientDomain {
                name: spec.name.as_str().into(),
                ctx,
                spec: spec.clone(),
                handshake_timeout: c.handshake_timeout.map(|d| d.get()),
                send_timeout: c.send_timeout.map(|d| d.get()),
                sources: client_sources(o.base, c),
                accept_requests: c.accept_requests,
            }));
        } else {
            kept.extend(failed);
            if let Some(old) =
                prev.and_then(|p| p.clients.iter().find(|d| &*d.name == spec.name.as_str()))
            {
                clients.push(old.clone());
            }
        }
    }
    let (client_matcher, conflicts) = ClientMatcher::build(&client_specs);
    errors.extend(conflicts.into_iter().map(|reason| DomainError {
        domain: "client domains".to_owned(),
        reason,
    }));
    // The default CA file is optional for outgoing TLS: without it, the system store.
    let mut dc = t.client_tls();
    if dc
        .ca_file
        .as_ref()
        .is_some_and(|p| !resolve(o.base, p).exists())
    {
        dc.ca_file = None;
    }
    let mut failed = Vec::new();
    let default_client = match client(DEFAULT_DOMAIN, DEFAULT_ID, &dc, &mut failed) {
        Some(ctx) => Some(Arc::new(ClientDomain {
            name: DEFAULT_DOMAIN.into(),
            ctx,
            spec: ClientSpec::default(),
            handshake_timeout: None,
            send_timeout: None,
            sources: client_sources(o.base, &dc),
            accept_requests: false,
        })),
        None => match prev.map(|p| p.default_client.clone()) {
            Some(old) => {
                kept.extend(failed);
                Some(old)
            }
            None => {
                errors.extend(failed);
                None
            }
        },
    };
    match default_client {
        Some(default_client) if errors.is_empty() => Ok((
            TlsDomains {
                servers,
                matcher,
                default_server,
                clients,
                client_matcher,
                default_client,
            },
            kept,
        )),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::unix_now;
    use crate::tls::{ensure_dev_certs, DevCerts};
    use openssl::x509::X509;
    use siprox::config::TlsConfig;
    use siprox::tls::FileBytes;
    use std::fs;

    /// A plain reader for these tests (the runtime's is `reload::files`, a part above tls):
    /// the files the dev certificates use, no CA directory and no key password.
    struct Plain;

    fn read(base: &Path, p: Option<&PathBuf>) -> Result<Option<FileBytes>, TlsError> {
        p.filter(|p| !p.as_os_str().is_empty())
            .map(|p| {
                let path = resolve(base, p);
                fs::read(&path)
                    .map(|bytes| FileBytes {
                        path: path.clone(),
                        bytes,
                    })
                    .map_err(|e| TlsError::Read {
                        path,
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    impl ReadMaterial for Plain {
        fn server(&self, base: &Path, s: &ServerTls) -> Result<TlsMaterial, TlsError> {
            Ok(TlsMaterial {
                certificate: read(base, Some(&s.certificate))?,
                private_key: read(base, Some(&s.private_key))?,
                ca_file: read(base, s.ca_file.as_ref())?,
                crl: read(base, s.crl_file.as_ref())?,
                ..TlsMaterial::default()
            })
        }

        fn client(&self, base: &Path, c: &ClientTls) -> Result<TlsMaterial, TlsError> {
            Ok(TlsMaterial {
                certificate: read(base, c.certificate.as_ref())?,
                private_key: read(base, c.private_key.as_ref())?,
                ca_file: read(base, c.ca_file.as_ref())?,
                crl: read(base, c.crl_file.as_ref())?,
                ..TlsMaterial::default()
            })
        }
    }

    fn opts(base: &Path) -> BuildOptions<'_> {
        BuildOptions {
            base,
            has_tls: true,
            dev_certs_pending: false,
            now: unix_now(),
            read: &Plain,
        }
    }

    #[test]
    fn generated_dev_certs_build_contexts_and_verify_against_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = TlsConfig {
            generate_dev_certs: true,
            ..TlsConfig::default()
        };
        let did = ensure_dev_certs(&cfg, dir.path()).expect("generate");
        assert!(matches!(did, DevCerts::Generated { .. }), "{did:?}");
        // Second run: present, nothing regenerated.
        let pem1 = fs::read(dir.path().join("certs/server.pem")).expect("cert");
        assert_eq!(
            ensure_dev_certs(&cfg, dir.path()).expect("ok"),
            DevCerts::Untouched
        );
        assert_eq!(
            fs::read(dir.path().join("certs/server.pem")).expect("cert"),
            pem1
        );
        let config = Config {
            tls: cfg.clone(),
            ..Config::default()
        };
        let built = build_domains(&config, None, opts(dir.path())).expect("contexts");
        assert!(built.default_server.is_some());
        // Nothing changed: the very same contexts are reused.
        let again = build_domains(&config, Some(&built), opts(dir.path())).expect("contexts");
        let (a, b) = (
            built.default_server.as_ref().expect("default"),
            again.default_server.as_ref().expect("default"),
        );
        assert!(Arc::ptr_eq(&a.ctx, &b.ctx));
        assert!(Arc::ptr_eq(
            &built.default_client.ctx,
            &again.default_client.ctx
        ));
        assert_eq!(built.fingerprint(), again.fingerprint());
        let cert = X509::from_pem(&pem1).expect("pem");
        let ca =
            X509::from_pem(&fs::read(dir.path().join("certs/ca.pem")).expect("ca")).expect("pem");
        assert!(cert.verify(&ca.public_key().expect("key")).expect("verify"));
        let sans: Vec<String> = cert
            .subject_alt_names()
            .expect("sans")
            .iter()
            .map(|n| {
                n.dnsname()
                    .map(str::to_owned)
                    .or_else(|| n.ipaddress().map(|b| format!("{b:?}")))
                    .unwrap_or_default()
            })
            .collect();
        assert!(sans.iter().any(|s| s == "localhost"), "{sans:?}");
        assert_eq!(sans.len(), 3, "{sans:?}");
        let key_mode = fs::metadata(dir.path().join("certs/server.key"))
            .expect("key")
            .permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key_mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_failing_tenant_keeps_its_last_good_build_and_a_new_one_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = TlsConfig {
            generate_dev_certs: true,
            ..TlsConfig::default()
        };
        ensure_dev_certs(&cfg, dir.path()).expect("generate");
        let certs = dir.path().join("certs");
        for t in ["t", "u"] {
            fs::copy(certs.join("server.pem"), certs.join(format!("{t}.pem"))).expect("cp");
            fs::copy(certs.join("server.key"), certs.join(format!("{t}.key"))).expect("cp");
        }
        let tenant = |t: &str| siprox::config::DomainConfig {
            names: vec![format!("{t}.example")],
            server: Some(ServerTls {
                certificate: PathBuf::from(format!("certs/{t}.pem")),
                private_key: PathBuf::from(format!("certs/{t}.key")),
                ..ServerTls::default()
            }),
            ..Default::default()
        };
        let mut config = Config {
            tls: cfg,
            ..Config::default()
        };
        config.domains.insert("t".to_owned(), tenant("t"));
        let first = build_domains(&config, None, opts(dir.path())).expect("builds");

        fs::write(certs.join("t.pem"), b"garbage").expect("write");
        config.domains.insert("u".to_owned(), tenant("u"));
        fs::write(certs.join("u.key"), b"garbage").expect("write");
        let (built, kept) =
            build_domains_isolated(&config, Some(&first), opts(dir.path())).expect("isolated");
        let names: Vec<&str> = kept.iter().map(|e| e.domain.as_str()).collect();
        assert_eq!(names, vec!["t", "u"], "{kept:?}");
        let t = |d: &TlsDomains| {
            d.servers
                .iter()
                .find(|d| &*d.name == "t")
                .map(|d| d.ctx.clone())
        };
        assert!(Arc::ptr_eq(
            &t(&first).expect("t"),
            &t(&built).expect("t kept")
        ));
        assert!(built.servers.iter().all(|d| &*d.name != "u"), "u left out");
        // All or nothing for `siprox check` and a strict start.
        assert!(build_domains(&config, Some(&first), opts(dir.path())).is_err());
        // A start has nothing to keep: t is left out too.
        let (fresh, kept) =
            build_domains_isolated(&config, None, opts(dir.path())).expect("isolated");
        assert_eq!(kept.len(), 2);
        assert!(fresh.servers.is_empty());
    }

    #[test]
    fn missing_certificate_without_generation_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = TlsConfig::default();
        assert_eq!(
            ensure_dev_certs(&cfg, dir.path()).expect("ok"),
            DevCerts::Untouched
        );
        let config = Config {
            tls: cfg,
            ..Config::default()
        };
        let err = build_domains(&config, None, opts(dir.path())).expect_err("missing files");
        assert!(err[0].to_string().contains("server.pem"), "{err:?}");
    }
}
