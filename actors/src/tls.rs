//! TLS domains at run time: building every domain's contexts (reusing unchanged ones), the
//! dispatch context whose ClientHello callback picks the server domain per connection,
//! client-domain selection for outgoing TLS, the per-connection `TlsFacts`, and development
//! certificates. Building reads files: it runs before the workers start or on a blocking
//! thread, never on a worker. The callback runs on workers: it must never block, allocate
//! beyond the SNI, or panic. Never logs key material.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ClientHelloResponse, Ssl, SslAlert, SslCipherRef, SslContext, SslContextBuilder, SslContextRef,
    SslMethod, SslMode, SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509VerifyResult, X509};
use siprox::config::{ClientTls, Config, ServerTls, TlsConfig};
use siprox::tls::{
    build_client, build_server, cert_facts, client_digest, domain_source, parse_server_name,
    server_digest, CertFacts, ClientContext, ClientMatcher, ClientSpec, Selected, ServerContext,
    ServerMatcher, ServerSpec, TlsError, TlsFacts,
};

use crate::files::{client_material, resolve, server_material, EnvLookup, TLS_HOOKS};
use crate::sessions::client_session_key;

use crate::error::RuntimeError;

/// Days a generated development CA / server certificate is valid.
const DEV_CA_DAYS: u32 = 3650;
const DEV_CERT_DAYS: u32 = 397;

/// Name of the default domains (`[tls]`) in logs, facts and status.
pub const DEFAULT_DOMAIN: &str = "default";
/// Session-id context seed of the default server domain: not a possible table name, so no
/// `[domains.*]` can share its session-id context.
const DEFAULT_ID: &str = "[tls]";

/// The server side of one TLS domain, as the handshake uses it.
pub struct ServerDomain {
    /// Domain name (`[domains.<name>]`, or [`DEFAULT_DOMAIN`]).
    pub name: Arc<str>,
    /// The built context; shared (`Arc::ptr_eq`) with the previous snapshot when unchanged.
    pub ctx: Arc<ServerContext>,
    /// SNI names and listeners this domain answers on.
    pub spec: ServerSpec,
    pub handshake_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    /// Most live connections; 0 = only the global limit.
    pub max_connections: usize,
    /// Live connections of this domain; kept across reloads (by name) so a reload does not
    /// reset the limit.
    pub open: Arc<AtomicUsize>,
    /// Every file the domain was built from (resolved), for the watcher and the status.
    pub sources: Vec<PathBuf>,
}

impl std::fmt::Debug for ServerDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDomain")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// The client side of one TLS domain.
pub struct ClientDomain {
    pub name: Arc<str>,
    pub ctx: Arc<ClientContext>,
    pub spec: ClientSpec,
    pub handshake_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub sources: Vec<PathBuf>,
}

impl std::fmt::Debug for ClientDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDomain")
            .field("name", &self.name)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// Every TLS domain of one snapshot and the tables that pick them. A live connection keeps
/// the context it was accepted with (OpenSSL reference-counts it), so replacing this never
/// touches it.
#[derive(Debug)]
pub struct TlsDomains {
    /// Server domains, in the matcher's index order.
    pub servers: Vec<Arc<ServerDomain>>,
    pub matcher: ServerMatcher,
    /// `[tls]`, when there is a tls listener and `default_server` is on.
    pub default_server: Option<Arc<ServerDomain>>,
    pub clients: Vec<Arc<ClientDomain>>,
    pub client_matcher: ClientMatcher,
    /// `[tls]` client side: used when no client domain matches.
    pub default_client: Arc<ClientDomain>,
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

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn server_sources(base: &Path, s: &ServerTls) -> Vec<PathBuf> {
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

fn client_sources(base: &Path, c: &ClientTls) -> Vec<PathBuf> {
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
    pub env: EnvLookup<'a>,
}

/// Builds every TLS domain of `config`. Contexts of `prev` whose digest is unchanged are
/// reused as they are (no file parsed twice, no key loaded twice, `Arc::ptr_eq`). Every
/// failing domain is reported, not only the first. Blocking (reads files): never call it on
/// a worker thread.
pub fn build_domains(
    config: &Config,
    prev: Option<&TlsDomains>,
    o: BuildOptions<'_>,
) -> Result<TlsDomains, Vec<DomainError>> {
    let mut errors = Vec::new();
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
    let server = |name: &str, id: &str, s: &ServerTls, errors: &mut Vec<DomainError>| {
        let err = |e: TlsError| DomainError {
            domain: name.to_owned(),
            reason: e.to_string(),
        };
        // Read once: the digest and the build come from the same bytes.
        let material = match server_material(o.base, s, o.env) {
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

    let mut servers = Vec::new();
    let mut specs = Vec::new();
    for (name, d) in &config.domains {
        let Some(s) = &d.server else { continue };
        let spec = siprox::tls::server_spec(name, d, s, &domain_source(config, name));
        if let Some((ctx, open)) = server(name, name, s, &mut errors) {
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
        }
        specs.push(spec);
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
        server(DEFAULT_DOMAIN, DEFAULT_ID, &t.server_tls(), &mut errors).map(|(ctx, open)| {
            Arc::new(ServerDomain {
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
            })
        })
    } else {
        None
    };

    let client = |name: &str, c: &ClientTls, errors: &mut Vec<DomainError>| {
        let err = |e: TlsError| DomainError {
            domain: name.to_owned(),
            reason: e.to_string(),
        };
        let material = match client_material(o.base, c, o.env) {
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
        if let Some(ctx) = client(&spec.name, c, &mut errors) {
            clients.push(Arc::new(ClientDomain {
                name: spec.name.as_str().into(),
                ctx,
                spec: spec.clone(),
                handshake_timeout: c.handshake_timeout.map(|d| d.get()),
                send_timeout: c.send_timeout.map(|d| d.get()),
                sources: client_sources(o.base, c),
            }));
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
    let default_client = client(DEFAULT_DOMAIN, &dc, &mut errors).map(|ctx| {
        Arc::new(ClientDomain {
            name: DEFAULT_DOMAIN.into(),
            ctx,
            spec: ClientSpec::default(),
            handshake_timeout: None,
            send_timeout: None,
            sources: client_sources(o.base, &dc),
        })
    });
    match default_client {
        Some(default_client) if errors.is_empty() => Ok(TlsDomains {
            servers,
            matcher,
            default_server,
            clients,
            client_matcher,
            default_client,
        }),
        _ => Err(errors),
    }
}

impl TlsDomains {
    /// What identifies this set of domains for "did anything change": names, digests and
    /// matching specs, in order.
    pub fn fingerprint(&self) -> Vec<(String, u64, String)> {
        let mut v: Vec<(String, u64, String)> = self
            .servers
            .iter()
            .chain(self.default_server.iter())
            .map(|d| {
                (
                    d.name.to_string(),
                    d.ctx.digest,
                    format!("server {:?}", d.spec),
                )
            })
            .collect();
        v.extend(
            self.clients
                .iter()
                .chain(std::iter::once(&self.default_client))
                .map(|d| {
                    (
                        d.name.to_string(),
                        d.ctx.digest,
                        format!("client {:?}", d.spec),
                    )
                }),
        );
        v
    }

    /// A new client-side `Ssl` for a connection to `dest`, with the client domain chosen by
    /// destination address, then server name (exact, wildcard), then the default. SNI is the
    /// domain's `server_name`, else the destination's name (none for an address, as RFC 6066
    /// requires); the certificate is checked against that name (DNS SAN) or the address (IP
    /// SAN) when `verify_hostname` is on.
    pub fn client_ssl(
        &self,
        addr: SocketAddr,
        server_name: Option<&str>,
    ) -> Result<(Ssl, Arc<ClientDomain>), ErrorStack> {
        let domain = match self.client_matcher.select(addr, server_name) {
            Selected::Domain(i) => self.clients.get(i).unwrap_or(&self.default_client).clone(),
            Selected::Default => self.default_client.clone(),
        };
        let c = &domain.ctx;
        let mut ssl = Ssl::new(&c.ctx)?;
        ssl.set_connect_state();
        let name = c
            .server_name
            .clone()
            .or_else(|| server_name.map(str::to_owned));
        match &name {
            Some(n) if n.parse::<IpAddr>().is_err() => {
                ssl.set_hostname(n)?;
                if c.verify_hostname {
                    ssl.param_mut().set_host(n)?;
                }
            }
            _ => {
                if c.verify_hostname {
                    let ip = name
                        .as_deref()
                        .and_then(|n| n.parse::<IpAddr>().ok())
                        .unwrap_or(addr.ip());
                    ssl.param_mut().set_ip(ip)?;
                }
            }
        }
        if !c.verify_server {
            ssl.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(sessions), Some(idx)) = (&c.sessions, client_session_key()) {
            // The same destination and name as before: offer the session it gave us.
            let dest_key = format!("{} {}", addr, name.as_deref().unwrap_or(""));
            if let Some(session) = sessions.take(&dest_key) {
                crate::ffi::offer_session(&mut ssl, &session)?;
            }
            ssl.set_ex_data(idx, dest_key);
        }
        Ok((ssl, domain))
    }
}

/// What the dispatch callback needs, attached to each accepted `Ssl` (ex data): the domains
/// of the snapshot taken at accept time and the listener the connection arrived on. The
/// callback takes the domains out once it has chosen: a connection that lives for days
/// must not keep every domain of its snapshot alive through later reloads (it keeps its
/// own domain, in [`Chosen`]).
struct DispatchInput {
    domains: Option<Arc<TlsDomains>>,
    listener: SocketAddr,
}

/// What the dispatch callback chose, attached to the `Ssl` for the connection to read after
/// the handshake. Dropped with the `Ssl`, which gives the domain's connection slot back.
pub struct Chosen {
    pub domain: Arc<ServerDomain>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    _slot: DomainSlot,
}

/// One live connection counted against a domain's `max_connections`.
struct DomainSlot(Arc<AtomicUsize>);

impl Drop for DomainSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn input_index() -> Option<Index<Ssl, DispatchInput>> {
    static I: OnceLock<Option<Index<Ssl, DispatchInput>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

fn chosen_index() -> Option<Index<Ssl, Chosen>> {
    static I: OnceLock<Option<Index<Ssl, Chosen>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The dispatch context every tls listener accepts with. It holds the session ticket keys
/// (OpenSSL takes tickets from the context a connection started with), so it lives as long
/// as the process: a reload never invalidates tickets. Its ClientHello callback picks the
/// domain (see [`dispatch_hello`]); it has no certificate of its own.
pub fn dispatch_context() -> Result<SslContext, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_session_id_context(b"sx-dispatch")?;
    b.set_client_hello_callback(dispatch_hello);
    Ok(b.build())
}

/// A new server-side `Ssl` for a connection accepted on `listener`, dispatched among
/// `domains` when its ClientHello arrives.
pub fn server_ssl(
    dispatch: &SslContextRef,
    domains: Arc<TlsDomains>,
    listener: SocketAddr,
) -> Result<Ssl, ErrorStack> {
    let mut ssl = Ssl::new(dispatch)?;
    let idx = input_index().ok_or_else(ErrorStack::get)?;
    ssl.set_ex_data(
        idx,
        DispatchInput {
            domains: Some(domains),
            listener,
        },
    );
    Ok(ssl)
}

/// What the dispatch callback chose for this connection (after the handshake).
pub fn chosen(ssl: &SslRef) -> Option<&Chosen> {
    ssl.ex_data(chosen_index()?)
}

/// The ClientHello callback: SNI from the raw extension (OpenSSL has not parsed it yet),
/// the domain from the matcher, then switch the context and apply on the `Ssl` what the
/// switch does not carry (version bounds, verify mode and depth, tickets). DESIGN.md "TLS
/// domains" lists what was measured.
/// Moves a connection from the dispatch context to `domain`'s, and applies on the `Ssl`
/// what the switch does not carry.
fn switch_to(ssl: &mut SslRef, domain: &ServerDomain) -> Result<(), ErrorStack> {
    ssl.set_ssl_context(&domain.ctx.ctx)?;
    domain.ctx.policy.apply(ssl)?;
    if !domain.ctx.policy.session_resumption {
        crate::ffi::disable_resumption(ssl);
    }
    Ok(())
}

fn dispatch_hello(
    ssl: &mut SslRef,
    alert: &mut SslAlert,
) -> Result<ClientHelloResponse, ErrorStack> {
    // A HelloRetryRequest brings a second ClientHello: keep the first choice (and its slot).
    if let Some(c) = chosen(ssl) {
        let d = c.domain.clone();
        switch_to(ssl, &d)?;
        return Ok(ClientHelloResponse::SUCCESS);
    }
    let Some(input) = input_index().and_then(|i| ssl.ex_data_mut(i)) else {
        return Err(ErrorStack::get());
    };
    let (Some(domains), listener) = (input.domains.take(), input.listener) else {
        return Err(ErrorStack::get());
    };
    let sni = match crate::ffi::client_hello_ext(ssl, crate::ffi::EXT_SERVER_NAME) {
        None => None,
        Some(raw) => match parse_server_name(raw) {
            Ok(n) => n.map(str::to_owned),
            Err(_) => {
                *alert = SslAlert::DECODE_ERROR;
                return Err(ErrorStack::get());
            }
        },
    };
    let domain = match domains.matcher.select(listener, sni.as_deref()) {
        Selected::Domain(i) => domains.servers.get(i).cloned(),
        Selected::Default => domains.default_server.clone(),
    };
    let Some(domain) = domain else {
        *alert = SslAlert::UNRECOGNIZED_NAME;
        return Err(ErrorStack::get());
    };
    let open = domain.open.fetch_add(1, Ordering::AcqRel);
    let slot = DomainSlot(domain.open.clone());
    if domain.max_connections != 0 && open >= domain.max_connections {
        // Refused with OpenSSL's default alert (internal_error); the slot is given back.
        return Err(ErrorStack::get());
    }
    switch_to(ssl, &domain)?;
    let idx = chosen_index().ok_or_else(ErrorStack::get)?;
    ssl.set_ex_data(
        idx,
        Chosen {
            domain,
            sni,
            _slot: slot,
        },
    );
    Ok(ClientHelloResponse::SUCCESS)
}

/// The facts of an established TLS connection, read once. `my` is the certificate siprox
/// presented (known from the domain on the server side; read from the `Ssl` otherwise).
pub fn facts(
    ssl: &SslRef,
    domain: Option<&Arc<str>>,
    server_name: Option<String>,
    my: Option<Arc<CertFacts>>,
) -> TlsFacts {
    let version = ssl.version_str();
    let (cipher, bits, desc) = match ssl.current_cipher() {
        Some(c) => {
            let bits = u32::try_from(c.bits().secret).unwrap_or(0);
            (c.name(), bits, cipher_desc(c, version, bits))
        }
        None => ("", 0, Arc::from(version)),
    };
    let peer = ssl.peer_certificate().map(|c| Arc::new(cert_facts(&c)));
    let peer_verified = peer.is_some() && ssl.verify_result() == X509VerifyResult::OK;
    let my = my.or_else(|| ssl.certificate().map(|c| Arc::new(cert_facts(c))));
    TlsFacts {
        desc,
        version: Cow::Borrowed(version),
        cipher: Cow::Borrowed(cipher),
        cipher_bits: bits,
        server_name,
        domain: domain.cloned(),
        peer,
        my,
        peer_verified,
    }
}

/// OpenSSL's one-line description of `cipher`, made once per cipher and worker thread and
/// shared by every connection that negotiates it (no lock: a per-thread cache).
fn cipher_desc(cipher: &SslCipherRef, version: &str, bits: u32) -> Arc<str> {
    thread_local! {
        static DESCS: RefCell<HashMap<&'static str, Arc<str>>> = RefCell::new(HashMap::new());
    }
    DESCS.with(|m| {
        m.borrow_mut()
            .entry(cipher.name())
            .or_insert_with(|| {
                let d = cipher.description();
                let d = d.trim();
                if d.is_empty() {
                    Arc::from(format!("{version} {} {bits}", cipher.name()))
                } else {
                    Arc::from(d)
                }
            })
            .clone()
    })
}

fn tls_err(what: &str, path: Option<&Path>, e: ErrorStack) -> RuntimeError {
    RuntimeError::Tls {
        what: match path {
            Some(p) => format!("{what} {}", p.display()),
            None => what.to_owned(),
        },
        source: e,
    }
}

/// Resolves a configured path: absolute as is, relative against `base`.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    resolve(base, p)
}

/// What [`ensure_dev_certs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevCerts {
    /// Nothing generated: the files exist, or generation is off (then loading them reports
    /// what is missing).
    Untouched,
    /// Generated (paths of the files written).
    Generated { ca: PathBuf, certificate: PathBuf },
}

/// When `[tls] generate_dev_certs` is on and the certificate or key is missing, generate a
/// development CA (at `ca_file`, or `ca.pem` next to the certificate) and a server
/// certificate for localhost / 127.0.0.1 / ::1 signed by it. An existing CA is reused when
/// its key (`<ca stem>.key`) is there too.
pub fn ensure_dev_certs(cfg: &TlsConfig, base: &Path) -> Result<DevCerts, RuntimeError> {
    let cert = resolve_path(base, &cfg.certificate);
    let key = resolve_path(base, &cfg.private_key);
    if !cfg.generate_dev_certs || (cert.exists() && key.exists()) {
        return Ok(DevCerts::Untouched);
    }
    let ca = match &cfg.ca_file {
        Some(p) => resolve_path(base, p),
        None => cert.with_file_name("ca.pem"),
    };
    let ca_key = ca.with_extension("key");
    generate_dev_certs(&ca, &ca_key, &cert, &key)?;
    Ok(DevCerts::Generated {
        ca,
        certificate: cert,
    })
}

/// Writes a development CA (`ca`, `ca_key`, reused if both exist) and a server certificate
/// for localhost, 127.0.0.1 and ::1 (`cert`, `key`). Public so that tests and tools can make
/// the same material.
pub fn generate_dev_certs(
    ca: &Path,
    ca_key: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), RuntimeError> {
    let io = |what: &str, p: &Path, e: std::io::Error| RuntimeError::Io {
        what: format!("{what} {}", p.display()),
        source: e,
    };
    let ssl = |e: ErrorStack| tls_err("generating development certificates", None, e);
    let (ca_cert, ca_pkey) = if ca.exists() && ca_key.exists() {
        let pem = fs::read(ca).map_err(|e| io("reading", ca, e))?;
        let c = X509::from_pem(&pem).map_err(|e| tls_err("parsing", Some(ca), e))?;
        let pem = fs::read(ca_key).map_err(|e| io("reading", ca_key, e))?;
        let k =
            PKey::private_key_from_pem(&pem).map_err(|e| tls_err("parsing", Some(ca_key), e))?;
        (c, k)
    } else if ca.exists() {
        return Err(RuntimeError::Config(format!(
            "cannot generate development certificates: {} exists but its key {} does not \
             (remove the CA file, or provide [tls] certificate and private_key)",
            ca.display(),
            ca_key.display()
        )));
    } else {
        let k = ec_key().map_err(ssl)?;
        let c = dev_ca(&k).map_err(ssl)?;
        write_file(ca_key, &k.private_key_to_pem_pkcs8().map_err(ssl)?, true)
            .map_err(|e| io("writing", ca_key, e))?;
        write_file(ca, &c.to_pem().map_err(ssl)?, false).map_err(|e| io("writing", ca, e))?;
        (c, k)
    };
    let k = ec_key().map_err(ssl)?;
    let c = dev_server_cert(&k, &ca_cert, &ca_pkey).map_err(ssl)?;
    write_file(key, &k.private_key_to_pem_pkcs8().map_err(ssl)?, true)
        .map_err(|e| io("writing", key, e))?;
    write_file(cert, &c.to_pem().map_err(ssl)?, false).map_err(|e| io("writing", cert, e))?;
    // A client certificate for the operator (CN=admin, allowed by the default
    // [management]), so that siproxctl works out of the box in development.
    let dir = cert.parent().unwrap_or_else(|| Path::new("."));
    let (admin_cert, admin_key) = (dir.join("admin.pem"), dir.join("admin.key"));
    if !admin_cert.exists() || !admin_key.exists() {
        let k = ec_key().map_err(ssl)?;
        let c = dev_client_cert(&k, &ca_cert, &ca_pkey, "admin").map_err(ssl)?;
        write_file(
            &admin_key,
            &k.private_key_to_pem_pkcs8().map_err(ssl)?,
            true,
        )
        .map_err(|e| io("writing", &admin_key, e))?;
        write_file(&admin_cert, &c.to_pem().map_err(ssl)?, false)
            .map_err(|e| io("writing", &admin_cert, e))?;
    }
    Ok(())
}

/// A client certificate for `cn`, signed by the development CA.
fn dev_client_cert(
    key: &PKey<Private>,
    ca: &X509,
    ca_key: &PKey<Private>,
    cn: &str,
) -> Result<X509, ErrorStack> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let subject = name(cn)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(ca.subject_name())?;
    b.set_pubkey(key)?;
    let (from, to) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(DEV_CERT_DAYS)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&to)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// Writes `data` to `path` (creating its directory); keys are readable by the owner only.
fn write_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A P-256 key: fast to generate (no multi-second RSA prime search on first run).
fn ec_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn serial() -> Result<Asn1Integer, ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

fn name(cn: &str) -> Result<X509Name, ErrorStack> {
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_nid(Nid::ORGANIZATIONNAME, "siprox development")?;
    n.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(n.build())
}

fn dev_ca(key: &PKey<Private>) -> Result<X509, ErrorStack> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let n = name("siprox development CA")?;
    b.set_subject_name(&n)?;
    b.set_issuer_name(&n)?;
    b.set_pubkey(key)?;
    let (from, to) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(DEV_CA_DAYS)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&to)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

fn dev_server_cert(
    key: &PKey<Private>,
    ca: &X509,
    ca_key: &PKey<Private>,
) -> Result<X509, ErrorStack> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let subject = name("localhost")?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(ca.subject_name())?;
    b.set_pubkey(key)?;
    let (from, to) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(DEV_CERT_DAYS)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&to)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    // clientAuth too: the same certificate serves siprox's outgoing TLS to a peer that
    // asks for a client certificate (e.g. another siprox in development).
    b.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()?,
    )?;
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip(&IpAddr::from([127, 0, 0, 1]).to_string())
        .ip("::1")
        .build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(san)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(aki)?;
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(base: &Path) -> BuildOptions<'_> {
        BuildOptions {
            base,
            has_tls: true,
            dev_certs_pending: false,
            now: unix_now(),
            env: &crate::files::process_env,
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
