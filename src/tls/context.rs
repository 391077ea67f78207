//! Building the OpenSSL contexts of a TLS domain from its settings: read and validate every
//! file (key matches certificate, chain, validity), then one `SslContext` per side. Called
//! off the worker threads (at start, on reload). Errors name the file and the reason; key
//! material is never logged or kept beyond the context.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::ex_data::Index;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslSession,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Crl, X509Name, X509};

use super::facts::CertFacts;
use super::x509::cert_facts;
use crate::config::{ClientTls, ServerTls, TlsVersion, VerifyClient};

/// Why a domain's TLS material or settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("private key {} does not match certificate {}", key.display(), certificate.display())]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("{}: certificate expired on {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{}: certificate not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("private key {}: {what}", path.display())]
    Password { path: PathBuf, what: String },
    #[error("{what}: {reason}")]
    Setting { what: String, reason: String },
    #[error("no certificate configured")]
    NoCertificate,
}

fn ossl(what: impl Into<String>) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError {
    let what = what.into();
    move |e| TlsError::Setting {
        what,
        reason: e.to_string(),
    }
}

/// Resolve a configured path: absolute as is, else relative to `base`.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// How to look up a password held in an environment variable (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A built server side of a domain, with what the handshake must set on the `Ssl` after
/// switching to `ctx` (OpenSSL does not carry these over from the switched context).
#[derive(Clone)]
pub struct ServerContext {
    pub ctx: SslContext,
    pub policy: SslPolicy,
    /// Facts of the leaf certificate (subject, SANs, not_after...).
    pub cert: Arc<CertFacts>,
    /// [`server_digest`] of its inputs: equal digests, equal contexts.
    pub digest: u64,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("policy", &self.policy)
            .field("subject", &self.cert.subject.line)
            .field("not_after", &self.cert.not_after)
            .finish()
    }
}

/// What must be applied to an `Ssl` after `set_ssl_context` (measured: verify mode and
/// version bounds are not taken from the new context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslPolicy {
    pub verify: VerifyClient,
    pub verify_depth: u32,
    pub min: SslVersion,
    pub max: SslVersion,
    pub session_resumption: bool,
}

impl SslPolicy {
    /// The OpenSSL verify mode for a server that verifies clients this way.
    pub fn verify_mode(&self) -> SslVerifyMode {
        match self.verify {
            VerifyClient::Off => SslVerifyMode::NONE,
            VerifyClient::Optional => SslVerifyMode::PEER,
            VerifyClient::Require => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        }
    }

    /// Apply to an `Ssl` (after its context was switched to the domain's).
    pub fn apply(&self, ssl: &mut openssl::ssl::SslRef) -> Result<(), openssl::error::ErrorStack> {
        ssl.set_min_proto_version(Some(self.min))?;
        ssl.set_max_proto_version(Some(self.max))?;
        ssl.set_verify(self.verify_mode());
        ssl.param_mut().set_depth(self.verify_depth as i32);
        if !self.session_resumption {
            ssl.set_num_tickets(0)?;
        }
        Ok(())
    }
}

fn ssl_version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// The certificate chain and key, read and checked.
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

fn load_identity(
    cert_path: &Path,
    key_path: &Path,
    password_file: Option<&Path>,
    password_env: Option<&str>,
    env: EnvLookup<'_>,
    hasher: &mut DefaultHasher,
    now: i64,
) -> Result<Identity, TlsError> {
    let cert_pem = read(cert_path)?;
    cert_pem.hash(hasher);
    let chain = X509::stack_from_pem(&cert_pem).map_err(|e| TlsError::Pem {
        path: cert_path.to_path_buf(),
        what: format!("not a PEM certificate chain ({e})"),
    })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_path_buf(),
            what: "no certificate in the file".into(),
        });
    }
    let key_pem = read(key_path)?;
    key_pem.hash(hasher);
    let password = match (password_file, password_env) {
        (Some(f), _) => {
            let p = read(f)?;
            let line = p.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec();
            Some(line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line))
        }
        (None, Some(var)) => Some(
            env(var)
                .ok_or_else(|| TlsError::Password {
                    path: key_path.to_path_buf(),
                    what: format!("environment variable {var} is not set"),
                })?
                .into_bytes(),
        ),
        (None, None) => None,
    };
    if let Some(p) = &password {
        p.hash(hasher);
    }
    let key = match &password {
        Some(p) => PKey::private_key_from_pem_passphrase(&key_pem, p).map_err(|_| {
            TlsError::Password {
                path: key_path.to_path_buf(),
                what: "cannot decrypt (wrong password, or not a PEM private key)".into(),
            }
        })?,
        // The callback refuses to give a password: without it OpenSSL would prompt on the
        // terminal for an encrypted key, and a daemon would hang on its stdin.
        None => PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0)).map_err(|_| TlsError::Pem {
            path: key_path.to_path_buf(),
            what: "not an unencrypted PEM private key (encrypted keys need private_key_password_file or private_key_password_env)".into(),
        })?,
    };
    let leaf = &chain[0];
    let leaf_key = leaf
        .public_key()
        .map_err(ossl("reading the certificate's key"))?;
    if !key.public_eq(&leaf_key) {
        return Err(TlsError::KeyMismatch {
            certificate: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    let facts = cert_facts(leaf);
    if now > facts.not_after_unix {
        return Err(TlsError::Expired {
            path: cert_path.to_path_buf(),
            not_after: facts.not_after,
        });
    }
    if now < facts.not_before_unix {
        return Err(TlsError::NotYetValid {
            path: cert_path.to_path_buf(),
            not_before: facts.not_before,
        });
    }
    // Each certificate of the chain must be issued by the next one.
    for w in chain.windows(2) {
        if w[1].issued(&w[0]) != openssl::x509::X509VerifyResult::OK {
            return Err(TlsError::Pem {
                path: cert_path.to_path_buf(),
                what: "chain out of order: each certificate must be followed by its issuer".into(),
            });
        }
    }
    Ok(Identity { chain, key })
}

fn set_identity(b: &mut SslContextBuilder, id: &Identity) -> Result<(), TlsError> {
    b.set_certificate(&id.chain[0])
        .map_err(ossl("installing the certificate"))?;
    for c in &id.chain[1..] {
        b.add_extra_chain_cert(c.clone())
            .map_err(ossl("installing the certificate chain"))?;
    }
    b.set_private_key(&id.key)
        .map_err(ossl("installing the private key"))?;
    b.check_private_key()
        .map_err(ossl("checking the private key"))?;
    Ok(())
}

/// CA certificates, a CA directory and CRLs, all in the one verify store of the context
/// (OpenSSL verifies peers against that store alone once it is set: a CA directory loaded
/// elsewhere would be ignored next to a CA file or a CRL). Returns the CA file's subjects
/// (the list of acceptable CAs a server sends; a directory cannot be listed).
fn set_trust(
    b: &mut SslContextBuilder,
    base: &Path,
    ca_file: Option<&Path>,
    ca_dir: Option<&Path>,
    crl_file: Option<&Path>,
    hasher: &mut DefaultHasher,
) -> Result<Option<Stack<X509Name>>, TlsError> {
    if ca_file.is_none() && ca_dir.is_none() && crl_file.is_none() {
        return Ok(None);
    }
    let mut names = None;
    let mut store = X509StoreBuilder::new().map_err(ossl("creating the CA store"))?;
    if let Some(ca) = ca_file {
        let path = resolve(base, ca);
        let pem = read(&path)?;
        pem.hash(hasher);
        let cas = X509::stack_from_pem(&pem).map_err(|e| TlsError::Pem {
            path: path.clone(),
            what: format!("not PEM CA certificates ({e})"),
        })?;
        if cas.is_empty() {
            return Err(TlsError::Pem {
                path,
                what: "no certificate in the CA file".into(),
            });
        }
        let mut list = Stack::new().map_err(ossl("CA list"))?;
        for ca in cas {
            if let Ok(n) = ca.subject_name().to_owned() {
                let _ = list.push(n);
            }
            store.add_cert(ca).map_err(ossl("adding a CA"))?;
        }
        names = Some(list);
    }
    if let Some(dir) = ca_dir {
        let path = resolve(base, dir);
        if !path.is_dir() {
            return Err(TlsError::Read {
                path,
                reason: "not a directory".into(),
            });
        }
        path.hash(hasher);
        let Some(name) = path.to_str() else {
            return Err(TlsError::Read {
                path,
                reason: "not a UTF-8 path".into(),
            });
        };
        store
            .add_lookup(X509Lookup::hash_dir())
            .and_then(|l| l.add_dir(name, SslFiletype::PEM))
            .map_err(ossl(format!("loading CA directory {}", path.display())))?;
    }
    if ca_file.is_none() && ca_dir.is_none() {
        // A CRL alone (a client domain): keep trusting the system's CAs.
        store.set_default_paths().map_err(ossl("system CA store"))?;
    }
    if let Some(crl) = crl_file {
        let path = resolve(base, crl);
        let pem = read(&path)?;
        pem.hash(hasher);
        // Parsed here for a clear error; OpenSSL's lookup then loads the same file.
        parse_crls(&pem).map_err(|what| TlsError::Pem {
            path: path.clone(),
            what,
        })?;
        store
            .add_lookup(X509Lookup::file())
            .and_then(|l| l.load_crl_file(&path, SslFiletype::PEM).map(|_| ()))
            .map_err(ossl(format!("loading CRL {}", path.display())))?;
        store
            .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
            .map_err(ossl("enabling CRL checks"))?;
    }
    b.set_verify_cert_store(store.build())
        .map_err(ossl("installing the CA store"))?;
    Ok(names)
}

fn parse_crls(pem: &[u8]) -> Result<Vec<X509Crl>, String> {
    const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
    const END: &[u8] = b"-----END X509 CRL-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(i) = memchr::memmem::find(rest, BEGIN) {
        let Some(j) = memchr::memmem::find(&rest[i..], END) else {
            return Err("unterminated CRL".into());
        };
        let block = &rest[i..i + j + END.len()];
        out.push(X509Crl::from_pem(block).map_err(|e| format!("bad CRL ({e})"))?);
        rest = &rest[i + j + END.len()..];
    }
    if out.is_empty() {
        return Err("no CRL in the file".into());
    }
    Ok(out)
}

fn set_common(
    b: &mut SslContextBuilder,
    min: TlsVersion,
    max: TlsVersion,
    ciphers: &str,
    ciphersuites: &str,
    resumption: bool,
) -> Result<(), TlsError> {
    if min > max {
        return Err(TlsError::Setting {
            what: "min_version".into(),
            reason: "greater than max_version".into(),
        });
    }
    b.set_min_proto_version(Some(ssl_version(min)))
        .map_err(ossl("min_version"))?;
    b.set_max_proto_version(Some(ssl_version(max)))
        .map_err(ossl("max_version"))?;
    if !ciphers.is_empty() {
        b.set_cipher_list(ciphers)
            .map_err(ossl(format!("ciphers `{ciphers}`")))?;
    }
    if !ciphersuites.is_empty() {
        b.set_ciphersuites(ciphersuites)
            .map_err(ossl(format!("ciphersuites `{ciphersuites}`")))?;
    }
    // Idle connections must be cheap: give the read/write buffers back when idle.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    if !resumption {
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_options(SslOptions::NO_TICKET);
    }
    Ok(())
}

/// Build the server side of a domain. `id` names the domain; it becomes the session-id
/// context, so a session of one domain never resumes on another (measured pitfall).
pub fn build_server(
    id: &str,
    s: &ServerTls,
    base: &Path,
    env: EnvLookup<'_>,
    now: i64,
) -> Result<ServerContext, TlsError> {
    if s.certificate.as_os_str().is_empty() || s.private_key.as_os_str().is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let digest = server_digest(id, s, base, env)?;
    let mut h = DefaultHasher::new();
    let cert_path = resolve(base, &s.certificate);
    let key_path = resolve(base, &s.private_key);
    let pw_file = s
        .private_key_password_file
        .as_ref()
        .map(|p| resolve(base, p));
    let identity = load_identity(
        &cert_path,
        &key_path,
        pw_file.as_deref(),
        s.private_key_password_env.as_deref(),
        env,
        &mut h,
        now,
    )?;
    let mut b = SslContextBuilder::new(SslMethod::tls_server()).map_err(ossl("server context"))?;
    set_common(
        &mut b,
        s.min_version,
        s.max_version,
        &s.ciphers,
        &s.ciphersuites,
        s.session_resumption,
    )?;
    set_identity(&mut b, &identity)?;
    let names = set_trust(
        &mut b,
        base,
        s.ca_file.as_deref(),
        s.ca_dir.as_deref(),
        s.crl_file.as_deref(),
        &mut h,
    )?;
    if s.verify_client != VerifyClient::Off {
        if s.ca_file.is_none() && s.ca_dir.is_none() {
            return Err(TlsError::Setting {
                what: "verify_client".into(),
                reason: "needs ca_file or ca_dir to verify client certificates".into(),
            });
        }
        if let Some(names) = names {
            b.set_client_ca_list(names);
        }
    }
    let policy = SslPolicy {
        verify: s.verify_client,
        verify_depth: s.verify_depth,
        min: ssl_version(s.min_version),
        max: ssl_version(s.max_version),
        session_resumption: s.session_resumption,
    };
    b.set_verify(policy.verify_mode());
    b.set_verify_depth(s.verify_depth);
    b.set_session_id_context(&session_id_context(id, s.session_resumption))
        .map_err(ossl("session id context"))?;
    // Without a servername callback OpenSSL does not acknowledge SNI, and servername() is
    // empty on a resumed TLS 1.2 session (measured). It must not switch contexts again.
    b.set_servername_callback(|_, _| Ok(()));
    let cert = Arc::new(cert_facts(&identity.chain[0]));
    Ok(ServerContext {
        ctx: b.build(),
        policy,
        cert,
        digest,
    })
}

/// Digest of everything a server context is built from: the settings and the bytes of every
/// file (and password) it reads. Cheap next to [`build_server`] (no parsing, no key
/// operations), so a reload computes it for every domain and rebuilds only those whose
/// digest changed. Equal digests mean equal contexts.
pub fn server_digest(
    id: &str,
    s: &ServerTls,
    base: &Path,
    env: EnvLookup<'_>,
) -> Result<u64, TlsError> {
    let mut h = DefaultHasher::new();
    format!("server{id}{s:?}").hash(&mut h);
    hash_file(&mut h, base, Some(&s.certificate))?;
    hash_file(&mut h, base, Some(&s.private_key))?;
    hash_file(&mut h, base, s.private_key_password_file.as_deref())?;
    if let Some(var) = &s.private_key_password_env {
        env(var).hash(&mut h);
    }
    hash_file(&mut h, base, s.ca_file.as_deref())?;
    hash_file(&mut h, base, s.crl_file.as_deref())?;
    hash_dir(&mut h, base, s.ca_dir.as_deref());
    Ok(h.finish())
}

/// Like [`server_digest`], for the client side of a domain.
pub fn client_digest(c: &ClientTls, base: &Path, env: EnvLookup<'_>) -> Result<u64, TlsError> {
    let mut h = DefaultHasher::new();
    format!("client{c:?}").hash(&mut h);
    hash_file(&mut h, base, c.certificate.as_deref())?;
    hash_file(&mut h, base, c.private_key.as_deref())?;
    hash_file(&mut h, base, c.private_key_password_file.as_deref())?;
    if let Some(var) = &c.private_key_password_env {
        env(var).hash(&mut h);
    }
    hash_file(&mut h, base, c.ca_file.as_deref())?;
    hash_file(&mut h, base, c.crl_file.as_deref())?;
    hash_dir(&mut h, base, c.ca_dir.as_deref());
    Ok(h.finish())
}

fn hash_file(h: &mut DefaultHasher, base: &Path, p: Option<&Path>) -> Result<(), TlsError> {
    match p {
        Some(p) if !p.as_os_str().is_empty() => read(&resolve(base, p))?.hash(h),
        _ => 0u8.hash(h),
    }
    Ok(())
}

/// A CA directory changes when a file is added, removed or rewritten: hash names, sizes and
/// modification times (not contents: it may hold hundreds of CAs). Unreadable: the build
/// reports it.
fn hash_dir(h: &mut DefaultHasher, base: &Path, p: Option<&Path>) {
    let Some(p) = p else { return };
    let Ok(rd) = std::fs::read_dir(resolve(base, p)) else {
        return;
    };
    let mut entries: Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> = rd
        .filter_map(Result::ok)
        .map(|e| {
            let md = std::fs::metadata(e.path()).ok();
            (
                e.file_name(),
                md.as_ref().map_or(0, |m| m.len()),
                md.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    entries.sort();
    entries.hash(h);
}

/// At most 32 bytes (OpenSSL's limit), unique per domain name.
/// The session-id context of a server domain: sessions resume only where it matches, so
/// only on the domain that issued them, and not after its `session_resumption` was turned
/// off by a reload (the sessions issued before do not match any more).
fn session_id_context(id: &str, resumption: bool) -> Vec<u8> {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    resumption.hash(&mut h);
    let mut v = b"sx-".to_vec();
    v.extend_from_slice(format!("{:016x}", h.finish()).as_bytes());
    v
}

/// A built client side of a domain.
#[derive(Clone)]
pub struct ClientContext {
    pub ctx: SslContext,
    pub verify_server: bool,
    pub verify_hostname: bool,
    pub server_name: Option<String>,
    pub digest: u64,
    /// Sessions to resume when siprox connects to the same place again; `None` when the
    /// domain's `session_resumption` is off. Belongs to `ctx`: its sessions are only ever
    /// offered on connections made from `ctx`.
    pub sessions: Option<Arc<ClientSessions>>,
}

/// The sessions a client domain may resume, by destination (address and server name).
/// OpenSSL's new-session callback fills it (for TLS 1.3, when the server's tickets arrive);
/// a connect to the same destination takes one. Bounded; touched once per connect, never
/// per message.
#[derive(Default)]
pub struct ClientSessions {
    by_dest: Mutex<HashMap<String, SslSession>>,
}

impl std::fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSessions")
            .field("held", &self.len())
            .finish()
    }
}

/// Most destinations a client domain remembers sessions for.
const MAX_CLIENT_SESSIONS: usize = 4096;

impl ClientSessions {
    /// The session to offer when connecting to `dest` ([`client_session_key`]). A TLS 1.3
    /// ticket is handed out once (RFC 8446 §C.4: tickets are not reused); the connection
    /// that resumes with it receives fresh ones. A TLS 1.2 session may be offered again.
    pub fn take(&self, dest: &str) -> Option<SslSession> {
        let mut m = self.by_dest.lock().ok()?;
        let tls13 = m.get(dest)?.protocol_version() == SslVersion::TLS1_3;
        if tls13 {
            m.remove(dest)
        } else {
            m.get(dest).cloned()
        }
    }

    fn store(&self, dest: String, session: SslSession) {
        let Ok(mut m) = self.by_dest.lock() else {
            return;
        };
        if m.len() >= MAX_CLIENT_SESSIONS && !m.contains_key(&dest) {
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert(dest, session);
    }

    /// Sessions held (for tests and status).
    pub fn len(&self) -> usize {
        self.by_dest.lock().map_or(0, |m| m.len())
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ex-data slot of an outgoing `Ssl` naming its destination for [`ClientSessions`]:
/// set by whoever creates the `Ssl`, read by the new-session callback.
pub fn client_session_key() -> Option<Index<Ssl, String>> {
    static I: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

impl std::fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientContext")
            .field("verify_server", &self.verify_server)
            .field("verify_hostname", &self.verify_hostname)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Build the client side of a domain. Without a CA file or directory, servers are verified
/// against the system's default store.
pub fn build_client(
    c: &ClientTls,
    base: &Path,
    env: EnvLookup<'_>,
    now: i64,
) -> Result<ClientContext, TlsError> {
    let digest = client_digest(c, base, env)?;
    let mut h = DefaultHasher::new();
    let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(ossl("client context"))?;
    set_common(
        &mut b,
        c.min_version,
        c.max_version,
        &c.ciphers,
        &c.ciphersuites,
        c.session_resumption,
    )?;
    match (&c.certificate, &c.private_key) {
        (Some(cert), Some(key)) => {
            let pw_file = c
                .private_key_password_file
                .as_ref()
                .map(|p| resolve(base, p));
            let id = load_identity(
                &resolve(base, cert),
                &resolve(base, key),
                pw_file.as_deref(),
                c.private_key_password_env.as_deref(),
                env,
                &mut h,
                now,
            )?;
            set_identity(&mut b, &id)?;
        }
        (None, None) => {}
        _ => {
            return Err(TlsError::Setting {
                what: "client certificate".into(),
                reason: "certificate and private_key go together".into(),
            })
        }
    }
    if c.ca_file.is_none() && c.ca_dir.is_none() {
        b.set_default_verify_paths()
            .map_err(ossl("system CA store"))?;
    }
    set_trust(
        &mut b,
        base,
        c.ca_file.as_deref(),
        c.ca_dir.as_deref(),
        c.crl_file.as_deref(),
        &mut h,
    )?;
    b.set_verify(if c.verify_server {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    b.set_verify_depth(c.verify_depth);
    // OpenSSL does not resume client sessions by itself: the application keeps them and
    // offers them again. Only what the callback stores is kept (no internal store).
    let sessions = c.session_resumption.then(|| {
        let sessions = Arc::new(ClientSessions::default());
        let store = sessions.clone();
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL);
        b.set_new_session_callback(move |ssl, session| {
            if let Some(dest) = client_session_key().and_then(|i| ssl.ex_data(i)) {
                store.store(dest.clone(), session);
            }
        });
        sessions
    });
    Ok(ClientContext {
        ctx: b.build(),
        verify_server: c.verify_server,
        verify_hostname: c.verify_hostname && c.verify_server,
        server_name: c.server_name.clone(),
        digest,
        sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::{cert, key, now};
    use openssl::symm::Cipher;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn write(&self, name: &str, data: &[u8]) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            PathBuf::from(name)
        }
        fn base(&self) -> &Path {
            self.dir.path()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A CA, and a leaf for `cn` signed by it; returns (settings, files).
    fn domain(cn: &str, from: i64, to: i64) -> (ServerTls, Files) {
        let f = Files::new();
        let ca_key = key();
        let ca = cert("Test CA", &ca_key, None, true, now() - 100, now() + 86_400);
        let k = key();
        let c = cert(cn, &k, Some((&ca, &ca_key)), false, from, to);
        let mut chain = c.to_pem().unwrap();
        chain.extend(ca.to_pem().unwrap());
        let s = ServerTls {
            certificate: f.write("cert.pem", &chain),
            private_key: f.write("key.pem", &k.private_key_to_pem_pkcs8().unwrap()),
            ca_file: Some(f.write("ca.pem", &ca.to_pem().unwrap())),
            ..ServerTls::default()
        };
        (s, f)
    }

    #[test]
    fn builds_and_reports_facts() {
        let (s, f) = domain("sip.example.com", now() - 100, now() + 86_400);
        let built = build_server("example", &s, f.base(), &no_env, now()).unwrap();
        assert_eq!(built.cert.subject.cn.as_deref(), Some("sip.example.com"));
        assert_eq!(built.policy.verify, VerifyClient::Off);
        // Same inputs, same digest; another setting, another digest.
        let again = build_server("example", &s, f.base(), &no_env, now()).unwrap();
        assert_eq!(built.digest, again.digest);
        let mut s2 = s.clone();
        s2.verify_client = VerifyClient::Require;
        let other = build_server("example", &s2, f.base(), &no_env, now()).unwrap();
        assert_ne!(built.digest, other.digest);
    }

    #[test]
    fn refuses_bad_material_with_the_file_named() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        // Expired.
        let (e, fe) = domain("old.example", now() - 1000, now() - 10);
        let err = build_server("old", &e, fe.base(), &no_env, now()).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("cert.pem"));
        // Key of another certificate.
        s.private_key = f.write("other.key", &key().private_key_to_pem_pkcs8().unwrap());
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        // Missing file.
        s.private_key = PathBuf::from("nope.key");
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
        // Not PEM (with a readable key: a missing file is reported first).
        s.private_key = PathBuf::from("key.pem");
        s.certificate = f.write("junk.pem", b"junk");
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }

    #[test]
    fn chain_order_is_checked() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        let pem = std::fs::read(f.base().join("cert.pem")).unwrap();
        let certs = X509::stack_from_pem(&pem).unwrap();
        let mut reversed = certs[1].to_pem().unwrap();
        reversed.extend(certs[0].to_pem().unwrap());
        s.certificate = f.write("reversed.pem", &reversed);
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(
            matches!(err, TlsError::KeyMismatch { .. } | TlsError::Pem { .. }),
            "{err}"
        );
    }

    #[test]
    fn encrypted_keys_take_a_password_from_file_or_env() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        let k =
            PKey::private_key_from_pem(&std::fs::read(f.base().join("key.pem")).unwrap()).unwrap();
        let enc = k
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"s3cret")
            .unwrap();
        s.private_key = f.write("enc.key", &enc);
        assert!(matches!(
            build_server("a", &s, f.base(), &no_env, now()).unwrap_err(),
            TlsError::Pem { .. }
        ));
        s.private_key_password_file = Some(f.write("pw", b"s3cret\n"));
        build_server("a", &s, f.base(), &no_env, now()).unwrap();
        s.private_key_password_file = Some(f.write("pw2", b"wrong\n"));
        assert!(matches!(
            build_server("a", &s, f.base(), &no_env, now()).unwrap_err(),
            TlsError::Password { .. }
        ));
        s.private_key_password_file = None;
        s.private_key_password_env = Some("KEY_PW".into());
        let env = |n: &str| (n == "KEY_PW").then(|| "s3cret".to_owned());
        build_server("a", &s, f.base(), &env, now()).unwrap();
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("KEY_PW"), "{err}");
    }

    #[test]
    fn settings_are_checked() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        s.min_version = TlsVersion::Tls13;
        s.max_version = TlsVersion::Tls12;
        assert!(build_server("a", &s, f.base(), &no_env, now()).is_err());
        s.max_version = TlsVersion::Tls13;
        s.ciphers = "NOT-A-CIPHER".into();
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("NOT-A-CIPHER"), "{err}");
        s.ciphers.clear();
        s.ca_file = None;
        s.verify_client = VerifyClient::Require;
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("verify_client"), "{err}");
        s.crl_file = Some(f.write("crl.pem", b"not a crl"));
        s.verify_client = VerifyClient::Off;
        let err = build_server("a", &s, f.base(), &no_env, now()).unwrap_err();
        assert!(err.to_string().contains("crl.pem"), "{err}");
    }

    #[test]
    fn client_side() {
        let (s, f) = domain("a.example", now() - 100, now() + 86_400);
        let c = ClientTls {
            ca_file: s.ca_file.clone(),
            certificate: Some(s.certificate.clone()),
            private_key: Some(s.private_key.clone()),
            ..ClientTls::default()
        };
        let built = build_client(&c, f.base(), &no_env, now()).unwrap();
        assert!(built.verify_server && built.verify_hostname);
        let half = ClientTls {
            certificate: Some(s.certificate.clone()),
            ..ClientTls::default()
        };
        assert!(build_client(&half, f.base(), &no_env, now()).is_err());
    }
}
