//! Building the OpenSSL contexts of a TLS domain from its settings and its TLS material as
//! bytes: validate everything (key matches certificate, chain, validity), then one
//! `SslContext` per side, and the digest that says whether a rebuild is needed, from the
//! very bytes that are built. Must never open a file, read the environment or keep state
//! between builds (the runtime reads the material and keeps client sessions); errors name
//! the file and the reason; key material is never logged or kept beyond the context.

use std::collections::hash_map::DefaultHasher;
use std::ffi::CString;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslRef, SslSession,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509StoreBuilder, X509StoreBuilderRef};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Crl, X509CrlRef, X509Name, X509};

use super::facts::CertFacts;
use super::x509::cert_facts;
use crate::config::{ClientTls, ServerTls, TlsVersion, VerifyClient, DEFAULT_GROUPS};

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

fn ossl(what: impl Into<String>) -> impl FnOnce(ErrorStack) -> TlsError {
    let what = what.into();
    move |e| TlsError::Setting {
        what,
        reason: e.to_string(),
    }
}

/// The bytes of one file, with the path that names it in errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileBytes {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Where the password of an encrypted private key came from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeyPassword {
    /// `private_key_password_file`: its first line is the password.
    File(FileBytes),
    /// `private_key_password_env`: the variable's value, `None` when it is not set.
    Env { var: String, value: Option<String> },
}

impl std::fmt::Debug for KeyPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password itself.
        match self {
            KeyPassword::File(file) => write!(f, "File({})", file.path.display()),
            KeyPassword::Env { var, value } => {
                write!(f, "Env({var}, set: {})", value.is_some())
            }
        }
    }
}

/// The entries of a CA directory that count (see [`is_ca_dir_entry`]), sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaDir {
    pub path: PathBuf,
    /// (file name, bytes).
    pub entries: Vec<(String, Vec<u8>)>,
}

/// Everything one side of a domain is built from besides its settings, read once by the
/// runtime: the certificate chain PEM, the key PEM and its password, the CA file PEM, the
/// CA directory's entries and the CRL PEM. A field is `None` when it is not configured.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsMaterial {
    pub certificate: Option<FileBytes>,
    pub private_key: Option<FileBytes>,
    pub password: Option<KeyPassword>,
    pub ca_file: Option<FileBytes>,
    pub ca_dir: Option<CaDir>,
    pub crl: Option<FileBytes>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: the key and its password must never reach a log.
        let path = |b: &Option<FileBytes>| b.as_ref().map(|b| b.path.display().to_string());
        f.debug_struct("TlsMaterial")
            .field("certificate", &path(&self.certificate))
            .field("private_key", &path(&self.private_key))
            .field("password", &self.password)
            .field("ca_file", &path(&self.ca_file))
            .field(
                "ca_dir",
                &self.ca_dir.as_ref().map(|d| d.path.display().to_string()),
            )
            .field("crl", &path(&self.crl))
            .finish()
    }
}

/// Whether a file of a `ca_dir` is read: the names `openssl rehash` gives, `<8 hex>.<n>` for
/// a CA certificate and `<8 hex>.r<n>` for a CRL (what OpenSSL's hashed-directory lookup
/// reads; anything else in the directory is ignored, as it was by that lookup).
pub fn is_ca_dir_entry(name: &str) -> bool {
    let Some((hash, suffix)) = name.split_once('.') else {
        return false;
    };
    let n = suffix.strip_prefix('r').unwrap_or(suffix);
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

fn is_crl_entry(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(_, s)| s.starts_with('r'))
}

/// Adds one CRL to a verify store (`X509_STORE_add_crl`). The `openssl` crate does not wrap
/// it and the core forbids `unsafe`: the runtime's `ffi` module provides it.
pub type AddCrl = fn(&mut X509StoreBuilderRef, &X509CrlRef) -> Result<(), ErrorStack>;

/// Where a client context's sessions go and come from. OpenSSL's new-session callback
/// hands each new session to [`ClientSessionCache::new_session`] with the connection it
/// belongs to; the runtime keeps them (the core holds no session state).
pub trait ClientSessionCache: Send + Sync {
    /// A session `ssl` established (for TLS 1.3, when the server's ticket arrived).
    fn new_session(&self, ssl: &SslRef, session: SslSession);
    /// The session to offer when connecting to `dest` again, if any.
    fn take(&self, dest: &str) -> Option<SslSession>;
}

/// What building needs from the runtime: the calls the core cannot make itself.
#[derive(Clone, Copy)]
pub struct BuildHooks {
    pub add_crl: AddCrl,
    /// A new, empty session cache for a client context with `session_resumption` on.
    pub client_sessions: fn() -> Arc<dyn ClientSessionCache>,
}

/// A built server side of a domain, with what the handshake must set on the `Ssl` after
/// switching to `ctx` (OpenSSL does not carry these over from the switched context).
#[derive(Clone)]
pub struct ServerContext {
    pub ctx: SslContext,
    pub policy: SslPolicy,
    /// The domain's key-exchange groups when they differ from [`DEFAULT_GROUPS`], which a
    /// connection has from the dispatch context it starts on: OpenSSL copies the groups
    /// into the `Ssl` when it is made, and switching its context does not change them.
    pub groups: Option<CString>,
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

/// The certificate chain and key, parsed and checked.
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

fn load_identity(
    cert: &FileBytes,
    key: &FileBytes,
    password: Option<&KeyPassword>,
    now: i64,
) -> Result<Identity, TlsError> {
    let chain = X509::stack_from_pem(&cert.bytes).map_err(|e| TlsError::Pem {
        path: cert.path.clone(),
        what: format!("not a PEM certificate chain ({e})"),
    })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.path.clone(),
            what: "no certificate in the file".into(),
        });
    }
    let password = match password {
        Some(KeyPassword::File(f)) => {
            let line = f.bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
            Some(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        }
        Some(KeyPassword::Env { var, value }) => Some(
            value
                .clone()
                .ok_or_else(|| TlsError::Password {
                    path: key.path.clone(),
                    what: format!("environment variable {var} is not set"),
                })?
                .into_bytes(),
        ),
        None => None,
    };
    let pkey = match &password {
        Some(p) => PKey::private_key_from_pem_passphrase(&key.bytes, p).map_err(|_| {
            TlsError::Password {
                path: key.path.clone(),
                what: "cannot decrypt (wrong password, or not a PEM private key)".into(),
            }
        })?,
        // The callback refuses to give a password: without it OpenSSL would prompt on the
        // terminal for an encrypted key, and a daemon would hang on its stdin.
        None => PKey::private_key_from_pem_callback(&key.bytes, |_| Ok(0)).map_err(|_| TlsError::Pem {
            path: key.path.clone(),
            what: "not an unencrypted PEM private key (encrypted keys need private_key_password_file or private_key_password_env)".into(),
        })?,
    };
    let leaf = &chain[0];
    let leaf_key = leaf
        .public_key()
        .map_err(ossl("reading the certificate's key"))?;
    if !pkey.public_eq(&leaf_key) {
        return Err(TlsError::KeyMismatch {
            certificate: cert.path.clone(),
            key: key.path.clone(),
        });
    }
    let facts = cert_facts(leaf);
    if now > facts.not_after_unix {
        return Err(TlsError::Expired {
            path: cert.path.clone(),
            not_after: facts.not_after,
        });
    }
    if now < facts.not_before_unix {
        return Err(TlsError::NotYetValid {
            path: cert.path.clone(),
            not_before: facts.not_before,
        });
    }
    // Each certificate of the chain must be issued by the next one.
    for w in chain.windows(2) {
        if w[1].issued(&w[0]) != openssl::x509::X509VerifyResult::OK {
            return Err(TlsError::Pem {
                path: cert.path.clone(),
                what: "chain out of order: each certificate must be followed by its issuer".into(),
            });
        }
    }
    Ok(Identity { chain, key: pkey })
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
/// (OpenSSL verifies peers against that store alone once it is set: CAs loaded elsewhere
/// would be ignored next to a CA file or a CRL). Returns the CA file's subjects (the list
/// of acceptable CAs a server sends; a directory's CAs are not announced, as before).
fn set_trust(
    b: &mut SslContextBuilder,
    m: &TlsMaterial,
    add_crl: AddCrl,
) -> Result<Option<Stack<X509Name>>, TlsError> {
    if m.ca_file.is_none() && m.ca_dir.is_none() && m.crl.is_none() {
        return Ok(None);
    }
    let mut names = None;
    let mut store = X509StoreBuilder::new().map_err(ossl("creating the CA store"))?;
    if let Some(ca) = &m.ca_file {
        let cas = X509::stack_from_pem(&ca.bytes).map_err(|e| TlsError::Pem {
            path: ca.path.clone(),
            what: format!("not PEM CA certificates ({e})"),
        })?;
        if cas.is_empty() {
            return Err(TlsError::Pem {
                path: ca.path.clone(),
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
    let mut crl_check = false;
    if let Some(dir) = &m.ca_dir {
        for (name, bytes) in &dir.entries {
            let path = dir.path.join(name);
            if is_crl_entry(name) {
                for crl in parse_crls(bytes).map_err(|what| TlsError::Pem {
                    path: path.clone(),
                    what,
                })? {
                    add_crl(&mut store, &crl)
                        .map_err(ossl(format!("loading CRL {}", path.display())))?;
                }
                // Loaded, as OpenSSL's directory lookup loaded them, but checking is
                // turned on by `crl_file` alone (CRL_CHECK_ALL would then demand a CRL for
                // every CA of every chain).
                continue;
            }
            let cas = X509::stack_from_pem(bytes).map_err(|e| TlsError::Pem {
                path: path.clone(),
                what: format!("not PEM CA certificates ({e})"),
            })?;
            if cas.is_empty() {
                return Err(TlsError::Pem {
                    path,
                    what: "no certificate in this CA directory entry".into(),
                });
            }
            for ca in cas {
                store
                    .add_cert(ca)
                    .map_err(ossl(format!("adding CA {}", path.display())))?;
            }
        }
    }
    if m.ca_file.is_none() && m.ca_dir.is_none() {
        // A CRL alone (a client domain): keep trusting the system's CAs.
        store.set_default_paths().map_err(ossl("system CA store"))?;
    }
    if let Some(crl) = &m.crl {
        let crls = parse_crls(&crl.bytes).map_err(|what| TlsError::Pem {
            path: crl.path.clone(),
            what,
        })?;
        for c in &crls {
            add_crl(&mut store, c).map_err(ossl(format!("loading CRL {}", crl.path.display())))?;
        }
        crl_check = true;
    }
    if crl_check {
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

/// A setting handed to OpenSSL as a C string: the `openssl` crate panics on a NUL inside
/// one (a TOML `"\u0000"`), so it is refused here, naming the key.
fn c_text(what: &str, v: &str) -> Result<CString, TlsError> {
    CString::new(v).map_err(|_| TlsError::Setting {
        what: what.into(),
        reason: "contains a NUL character".into(),
    })
}

fn set_common(
    b: &mut SslContextBuilder,
    min: TlsVersion,
    max: TlsVersion,
    ciphers: &str,
    ciphersuites: &str,
    groups: &str,
    resumption: bool,
) -> Result<(), TlsError> {
    if min > max {
        return Err(TlsError::Setting {
            what: "min_version".into(),
            reason: "greater than max_version".into(),
        });
    }
    c_text("ciphers", ciphers)?;
    c_text("ciphersuites", ciphersuites)?;
    c_text("groups", groups)?;
    b.set_groups_list(groups)
        .map_err(ossl(format!("groups `{groups}`")))?;
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

/// Build the server side of a domain from `m` (read by the runtime for `s`). `id` names the
/// domain; it becomes the session-id context, so a session of one domain never resumes on
/// another (measured pitfall). The context's digest is [`server_digest`] of the same bytes.
pub fn build_server(
    id: &str,
    s: &ServerTls,
    m: &TlsMaterial,
    now: i64,
    hooks: BuildHooks,
) -> Result<ServerContext, TlsError> {
    let (Some(cert), Some(key)) = (&m.certificate, &m.private_key) else {
        return Err(TlsError::NoCertificate);
    };
    let digest = server_digest(id, s, m);
    let identity = load_identity(cert, key, m.password.as_ref(), now)?;
    let mut b = SslContextBuilder::new(SslMethod::tls_server()).map_err(ossl("server context"))?;
    set_common(
        &mut b,
        s.min_version,
        s.max_version,
        &s.ciphers,
        &s.ciphersuites,
        &s.groups,
        s.session_resumption,
    )?;
    set_identity(&mut b, &identity)?;
    let names = set_trust(&mut b, m, hooks.add_crl)?;
    if s.verify_client != VerifyClient::Off {
        if m.ca_file.is_none() && m.ca_dir.is_none() {
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
    let groups = if s.groups == DEFAULT_GROUPS {
        None
    } else {
        Some(c_text("groups", &s.groups)?)
    };
    Ok(ServerContext {
        ctx: b.build(),
        policy,
        groups,
        cert,
        digest,
    })
}

/// Digest of everything a server context is built from: the settings and the material's
/// bytes. Cheap next to [`build_server`] (no parsing, no key operations), so a reload
/// computes it for every domain and rebuilds only those whose digest changed. Equal digests
/// mean equal contexts: a reload builds from the very material it hashed.
pub fn server_digest(id: &str, s: &ServerTls, m: &TlsMaterial) -> u64 {
    let mut h = DefaultHasher::new();
    format!("server{id}{s:?}").hash(&mut h);
    m.hash(&mut h);
    h.finish()
}

/// Like [`server_digest`], for the client side of a domain.
pub fn client_digest(c: &ClientTls, m: &TlsMaterial) -> u64 {
    let mut h = DefaultHasher::new();
    format!("client{c:?}").hash(&mut h);
    m.hash(&mut h);
    h.finish()
}

/// The session-id context of a server domain: sessions resume only where it matches, so
/// only on the domain that issued them, and not after its `session_resumption` was turned
/// off by a reload (the sessions issued before do not match any more). A SHA-256 of the
/// domain's name, so that every node of a cluster (and every build of siprox) derives the
/// same one and a ticket from one node resumes on another, on its own domain only. At most
/// 32 bytes (OpenSSL's limit).
fn session_id_context(id: &str, resumption: bool) -> Vec<u8> {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"siprox session id context\0");
    h.update(id.as_bytes());
    h.update(&[u8::from(resumption)]);
    let d = h.finish();
    let mut v = b"sx-".to_vec();
    for b in &d[..8] {
        v.extend_from_slice(format!("{b:02x}").as_bytes());
    }
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
    pub sessions: Option<Arc<dyn ClientSessionCache>>,
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

/// Build the client side of a domain from `m` (read by the runtime for `c`). Without a CA
/// file or directory, servers are verified against the system's default store.
pub fn build_client(
    c: &ClientTls,
    m: &TlsMaterial,
    now: i64,
    hooks: BuildHooks,
) -> Result<ClientContext, TlsError> {
    let digest = client_digest(c, m);
    let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(ossl("client context"))?;
    set_common(
        &mut b,
        c.min_version,
        c.max_version,
        &c.ciphers,
        &c.ciphersuites,
        &c.groups,
        c.session_resumption,
    )?;
    if let Some(n) = &c.server_name {
        c_text("server_name", n)?;
    }
    match (&m.certificate, &m.private_key) {
        (Some(cert), Some(key)) => {
            let id = load_identity(cert, key, m.password.as_ref(), now)?;
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
    if m.ca_file.is_none() && m.ca_dir.is_none() {
        b.set_default_verify_paths()
            .map_err(ossl("system CA store"))?;
    }
    set_trust(&mut b, m, hooks.add_crl)?;
    b.set_verify(if c.verify_server {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    b.set_verify_depth(c.verify_depth);
    // OpenSSL does not resume client sessions by itself: the application keeps them and
    // offers them again. Only what the callback stores is kept (no internal store).
    let sessions = c.session_resumption.then(|| {
        let sessions = (hooks.client_sessions)();
        let store = sessions.clone();
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL);
        b.set_new_session_callback(move |ssl, session| store.new_session(ssl, session));
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
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The files of a test domain, in memory: the core never reads a file, so its tests do
    /// not write any.
    struct Files {
        files: RefCell<HashMap<PathBuf, Vec<u8>>>,
    }

    const BASE: &str = "/etc/siprox";

    impl Files {
        fn new() -> Files {
            Files {
                files: RefCell::new(HashMap::new()),
            }
        }
        fn write(&self, name: &str, data: &[u8]) -> PathBuf {
            self.files
                .borrow_mut()
                .insert(Path::new(BASE).join(name), data.to_vec());
            PathBuf::from(name)
        }
        fn read(&self, p: &Path) -> Result<FileBytes, TlsError> {
            let path = Path::new(BASE).join(p);
            match self.files.borrow().get(&path) {
                Some(bytes) => Ok(FileBytes {
                    path,
                    bytes: bytes.clone(),
                }),
                None => Err(TlsError::Read {
                    path,
                    reason: "No such file or directory".into(),
                }),
            }
        }
        /// What the runtime reads for `s` (its `files::server_material`).
        fn material(
            &self,
            s: &ServerTls,
            env: &dyn Fn(&str) -> Option<String>,
        ) -> Result<TlsMaterial, TlsError> {
            Ok(TlsMaterial {
                certificate: Some(self.read(&s.certificate)?),
                private_key: Some(self.read(&s.private_key)?),
                password: match (&s.private_key_password_file, &s.private_key_password_env) {
                    (Some(f), _) => Some(KeyPassword::File(self.read(f)?)),
                    (None, Some(var)) => Some(KeyPassword::Env {
                        var: var.clone(),
                        value: env(var),
                    }),
                    (None, None) => None,
                },
                ca_file: s.ca_file.as_deref().map(|p| self.read(p)).transpose()?,
                ca_dir: None,
                crl: s.crl_file.as_deref().map(|p| self.read(p)).transpose()?,
            })
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    static CRLS_ADDED: AtomicUsize = AtomicUsize::new(0);

    fn count_crl(_: &mut X509StoreBuilderRef, _: &X509CrlRef) -> Result<(), ErrorStack> {
        CRLS_ADDED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    #[derive(Default)]
    struct NoSessions;

    impl ClientSessionCache for NoSessions {
        fn new_session(&self, _: &SslRef, _: SslSession) {}
        fn take(&self, _: &str) -> Option<SslSession> {
            None
        }
    }

    static CACHES_MADE: AtomicUsize = AtomicUsize::new(0);

    fn new_cache() -> Arc<dyn ClientSessionCache> {
        CACHES_MADE.fetch_add(1, Ordering::Relaxed);
        Arc::new(NoSessions)
    }

    const HOOKS: BuildHooks = BuildHooks {
        add_crl: count_crl,
        client_sessions: new_cache,
    };

    fn build(
        id: &str,
        s: &ServerTls,
        f: &Files,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerContext, TlsError> {
        build_server(id, s, &f.material(s, env)?, now(), HOOKS)
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
        let built = build("example", &s, &f, &no_env).unwrap();
        assert_eq!(built.cert.subject.cn.as_deref(), Some("sip.example.com"));
        assert_eq!(built.policy.verify, VerifyClient::Off);
        // Same inputs, same digest; another setting, another digest.
        let again = build("example", &s, &f, &no_env).unwrap();
        assert_eq!(built.digest, again.digest);
        let mut s2 = s.clone();
        s2.verify_client = VerifyClient::Require;
        let other = build("example", &s2, &f, &no_env).unwrap();
        assert_ne!(built.digest, other.digest);
    }

    #[test]
    fn the_digest_is_of_the_bytes_that_are_built() {
        let (s, f) = domain("a.example", now() - 100, now() + 86_400);
        let m = f.material(&s, &no_env).unwrap();
        let built = build_server("a", &s, &m, now(), HOOKS).unwrap();
        assert_eq!(built.digest, server_digest("a", &s, &m));
        // Another CA file, same paths and settings: another digest.
        let mut m2 = m.clone();
        if let Some(ca) = &mut m2.ca_file {
            ca.bytes.extend_from_slice(b"\n");
        }
        assert_ne!(server_digest("a", &s, &m), server_digest("a", &s, &m2));
        // A password that changes in the environment changes the digest too.
        let pw = |v: &str| TlsMaterial {
            password: Some(KeyPassword::Env {
                var: "PW".into(),
                value: Some(v.into()),
            }),
            ..m.clone()
        };
        assert_ne!(
            server_digest("a", &s, &pw("one")),
            server_digest("a", &s, &pw("two"))
        );
        // The id is part of it: two domains never share a context.
        assert_ne!(server_digest("a", &s, &m), server_digest("b", &s, &m));
        // Never the password in a log line.
        assert!(!format!("{:?}", pw("s3cret")).contains("s3cret"));
    }

    #[test]
    fn refuses_bad_material_with_the_file_named() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        // Expired.
        let (e, fe) = domain("old.example", now() - 1000, now() - 10);
        let err = build("old", &e, &fe, &no_env).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("cert.pem"));
        // Key of another certificate.
        s.private_key = f.write("other.key", &key().private_key_to_pem_pkcs8().unwrap());
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        // Not PEM.
        s.private_key = PathBuf::from("key.pem");
        s.certificate = f.write("junk.pem", b"junk");
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        // No certificate at all.
        let none = TlsMaterial::default();
        let err = build_server("a", &s, &none, now(), HOOKS).unwrap_err();
        assert_eq!(err, TlsError::NoCertificate);
    }

    #[test]
    fn chain_order_is_checked() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        let pem = f.read(Path::new("cert.pem")).unwrap().bytes;
        let certs = X509::stack_from_pem(&pem).unwrap();
        let mut reversed = certs[1].to_pem().unwrap();
        reversed.extend(certs[0].to_pem().unwrap());
        s.certificate = f.write("reversed.pem", &reversed);
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(
            matches!(err, TlsError::KeyMismatch { .. } | TlsError::Pem { .. }),
            "{err}"
        );
    }

    #[test]
    fn encrypted_keys_take_a_password_from_file_or_env() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        let k = PKey::private_key_from_pem(&f.read(Path::new("key.pem")).unwrap().bytes).unwrap();
        let enc = k
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"s3cret")
            .unwrap();
        s.private_key = f.write("enc.key", &enc);
        assert!(matches!(
            build("a", &s, &f, &no_env).unwrap_err(),
            TlsError::Pem { .. }
        ));
        s.private_key_password_file = Some(f.write("pw", b"s3cret\r\n"));
        build("a", &s, &f, &no_env).unwrap();
        s.private_key_password_file = Some(f.write("pw2", b"wrong\n"));
        assert!(matches!(
            build("a", &s, &f, &no_env).unwrap_err(),
            TlsError::Password { .. }
        ));
        s.private_key_password_file = None;
        s.private_key_password_env = Some("KEY_PW".into());
        let env = |n: &str| (n == "KEY_PW").then(|| "s3cret".to_owned());
        build("a", &s, &f, &env).unwrap();
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(err.to_string().contains("KEY_PW"), "{err}");
    }

    #[test]
    fn settings_are_checked() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        s.min_version = TlsVersion::Tls13;
        s.max_version = TlsVersion::Tls12;
        assert!(build("a", &s, &f, &no_env).is_err());
        s.max_version = TlsVersion::Tls13;
        s.ciphers = "NOT-A-CIPHER".into();
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(err.to_string().contains("NOT-A-CIPHER"), "{err}");
        s.ciphers.clear();
        s.groups = "X25519:NOT-A-GROUP".into();
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(
            err.to_string().contains("groups `X25519:NOT-A-GROUP`"),
            "{err}"
        );
        // A NUL (TOML "\u0000") in a setting OpenSSL takes as a C string: an error naming
        // the key, not the `openssl` crate's panic.
        for (k, set) in [
            (
                "ciphers",
                (|s, v| s.ciphers = v) as fn(&mut ServerTls, String),
            ),
            ("ciphersuites", |s, v| s.ciphersuites = v),
            ("groups", |s, v| s.groups = v),
        ] {
            let mut bad = s.clone();
            set(&mut bad, "X25519\0P-256".into());
            let err = build("a", &bad, &f, &no_env).unwrap_err();
            assert_eq!(err.to_string(), format!("{k}: contains a NUL character"));
        }
        s.groups = DEFAULT_GROUPS.into();
        assert!(build("a", &s, &f, &no_env).unwrap().groups.is_none());
        s.groups = "P-384".into();
        let own = build("a", &s, &f, &no_env).unwrap().groups;
        assert_eq!(own.as_deref(), Some(c"P-384"));
        s.groups = DEFAULT_GROUPS.into();
        s.ca_file = None;
        s.verify_client = VerifyClient::Require;
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(err.to_string().contains("verify_client"), "{err}");
        s.crl_file = Some(f.write("crl.pem", b"not a crl"));
        s.verify_client = VerifyClient::Off;
        let before = CRLS_ADDED.load(Ordering::Relaxed);
        let err = build("a", &s, &f, &no_env).unwrap_err();
        assert!(err.to_string().contains("crl.pem"), "{err}");
        assert_eq!(CRLS_ADDED.load(Ordering::Relaxed), before);
    }

    #[test]
    fn ca_dir_entries_are_the_hashed_names() {
        for ok in ["9d66eef0.0", "9D66EEF0.12", "9d66eef0.r0"] {
            assert!(is_ca_dir_entry(ok), "{ok}");
        }
        for skip in [
            "ca.pem",
            "9d66eef0",
            "9d66eef0.",
            "9d66eef0.r",
            "9d66eef.0",
            "9d66eef0.0.bak",
            "zzzzzzzz.0",
        ] {
            assert!(!is_ca_dir_entry(skip), "{skip}");
        }
    }

    #[test]
    fn a_ca_dir_alone_verifies_clients_and_a_bad_entry_is_named() {
        let (mut s, f) = domain("a.example", now() - 100, now() + 86_400);
        let ca = f.read(Path::new("ca.pem")).unwrap().bytes;
        s.ca_file = None;
        s.ca_dir = Some(PathBuf::from("cadir"));
        s.verify_client = VerifyClient::Require;
        let mut m = f.material(&s, &no_env).unwrap();
        m.ca_dir = Some(CaDir {
            path: Path::new(BASE).join("cadir"),
            entries: vec![("9d66eef0.0".into(), ca)],
        });
        let built = build_server("a", &s, &m, now(), HOOKS).unwrap();
        assert_eq!(built.policy.verify, VerifyClient::Require);
        if let Some(dir) = &mut m.ca_dir {
            dir.entries.push(("0badc0de.0".into(), b"junk".to_vec()));
        }
        let err = build_server("a", &s, &m, now(), HOOKS).unwrap_err();
        assert!(err.to_string().contains("cadir/0badc0de.0"), "{err}");
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
        let m = f.material(&s, &no_env).unwrap();
        let made = CACHES_MADE.load(Ordering::Relaxed);
        let built = build_client(&c, &m, now(), HOOKS).unwrap();
        assert!(built.verify_server && built.verify_hostname);
        // Resumption on: the runtime's session cache is asked for once, and kept.
        assert!(built.sessions.is_some());
        assert!(CACHES_MADE.load(Ordering::Relaxed) > made);
        let off = ClientTls {
            session_resumption: false,
            ..c.clone()
        };
        assert!(build_client(&off, &m, now(), HOOKS)
            .unwrap()
            .sessions
            .is_none());
        let nul = ClientTls {
            server_name: Some("sip.example\0com".into()),
            ..c.clone()
        };
        let err = build_client(&nul, &m, now(), HOOKS).unwrap_err();
        assert_eq!(err.to_string(), "server_name: contains a NUL character");
        let half = TlsMaterial {
            private_key: None,
            ..m
        };
        assert!(build_client(&c, &half, now(), HOOKS).is_err());
    }

    /// A handshake over a socket pair between a connection of `client` and one of
    /// `server`: the key-exchange group agreed on, or the client's error.
    fn agree(client: &ClientContext, server: &ServerContext) -> Result<String, String> {
        use openssl::ssl::{Ssl, SslStream};
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let ctx = server.ctx.clone();
        let srv = std::thread::spawn(move || {
            let ssl = Ssl::new(&ctx).unwrap();
            SslStream::new(ssl, b).unwrap().accept().is_ok()
        });
        let ssl = Ssl::new(&client.ctx).unwrap();
        let mut s = SslStream::new(ssl, a).unwrap();
        let r = match s.connect() {
            Ok(()) => siprox_testkit::tls::agreed_group(s.ssl())
                .ok_or_else(|| "no key exchange".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        drop(s);
        srv.join().unwrap();
        r
    }

    /// The client side offers `groups` too: by default no finite-field group, so a server
    /// that takes only those (and could make siprox spend 190 ms on ffdhe8192) fails the
    /// handshake; a server's HelloRetryRequest for a group siprox offers without a key
    /// share is followed.
    #[test]
    fn a_client_domain_offers_its_groups() {
        let (s, f) = domain("a.example", now() - 100, now() + 86_400);
        let m = f.material(&s, &no_env).unwrap();
        let ca_file = s.ca_file.clone();
        let client = |groups: &str| {
            let c = ClientTls {
                ca_file: ca_file.clone(),
                groups: groups.into(),
                ..ClientTls::default()
            };
            build_client(&c, &m, now(), HOOKS).unwrap()
        };
        let server = |groups: &str| {
            let s = ServerTls {
                groups: groups.into(),
                ..s.clone()
            };
            build("a", &s, &f, &no_env).unwrap()
        };
        assert_eq!(
            agree(&client(DEFAULT_GROUPS), &server(DEFAULT_GROUPS)).as_deref(),
            Ok("X25519")
        );
        assert!(agree(&client(DEFAULT_GROUPS), &server("ffdhe2048:ffdhe8192")).is_err());
        assert_eq!(
            agree(&client(DEFAULT_GROUPS), &server("P-384")).as_deref(),
            Ok("secp384r1")
        );
        assert_eq!(
            agree(&client("P-256"), &server(DEFAULT_GROUPS)).as_deref(),
            Ok("prime256v1")
        );
        assert!(agree(&client("P-256"), &server("P-384")).is_err());
    }
}
