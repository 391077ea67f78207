//! TLS material for the runtime: builds the default server and client `SslContext`s from
//! `[tls]`, and generates a development CA and server certificate when asked to. Reads and
//! writes files, so it runs before the workers start (or on a blocking thread); must never
//! be called on a worker thread, and must never log key material.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslAcceptor, SslConnector, SslContext, SslFiletype, SslMethod, SslMode, SslVerifyMode,
    SslVersion,
};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};
use siprox::config::{TlsConfig, TlsVersion, VerifyClient};
use siprox::proxy::Destination;

use crate::error::RuntimeError;

/// Session-id context of the default server domain. Each future TLS domain gets its own
/// (DESIGN.md: a shared one lets a session resume across domains).
const SESSION_ID_CONTEXT: &[u8] = b"siprox-default";

/// Days a generated development CA / server certificate is valid.
const DEV_CA_DAYS: u32 = 3650;
const DEV_CERT_DAYS: u32 = 397;

/// The built TLS contexts of one snapshot. A live connection keeps the context it was
/// created with (OpenSSL reference-counts it), so replacing these never touches it.
pub struct TlsContexts {
    /// Server side of every `tls` listener; `None` when there is no `tls` listener.
    pub server: Option<SslContext>,
    /// Client side of outgoing TLS connections.
    pub client: SslConnector,
    /// `[tls] verify_server`.
    pub verify_server: bool,
}

impl std::fmt::Debug for TlsContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContexts")
            .field("server", &self.server.is_some())
            .field("verify_server", &self.verify_server)
            .finish()
    }
}

impl TlsContexts {
    /// A new server-side `Ssl` for an accepted connection.
    pub fn server_ssl(&self) -> Result<Ssl, ErrorStack> {
        match &self.server {
            Some(ctx) => Ssl::new(ctx),
            // Unreachable in practice (no tls listener, no accept), but never a panic.
            None => Err(ErrorStack::get()),
        }
    }

    /// A new client-side `Ssl` for a connection to `dest`: SNI and host-name verification
    /// for a name, IP-SAN verification for an address (the openssl crate picks `set_ip` when
    /// the "domain" parses as an address, and sends no SNI for it, as RFC 6066 requires).
    pub fn client_ssl(&self, dest: &Destination) -> Result<Ssl, ErrorStack> {
        let mut cfg = self.client.configure()?;
        if !self.verify_server {
            cfg.set_verify_hostname(false);
            cfg.set_verify(SslVerifyMode::NONE);
        }
        match &dest.server_name {
            Some(name) => cfg.into_ssl(name),
            None => cfg.into_ssl(&dest.addr.ip().to_string()),
        }
    }
}

/// Resolves a configured path: absolute as is, relative against `base`.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Builds the contexts of `[tls]`; `server` says whether a server context is needed (a
/// `tls` listener exists). Paths are relative to `base`.
pub fn build(cfg: &TlsConfig, base: &Path, server: bool) -> Result<TlsContexts, RuntimeError> {
    let cert = resolve_path(base, &cfg.certificate);
    let key = resolve_path(base, &cfg.private_key);
    let ca = cfg.ca_file.as_ref().map(|p| resolve_path(base, p));
    let version = match cfg.min_version {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    let server = if server {
        Some(build_server(cfg, &cert, &key, ca.as_deref(), version)?)
    } else {
        None
    };
    let client = build_client(cfg, base, ca.as_deref(), version)?;
    Ok(TlsContexts {
        server,
        client,
        verify_server: cfg.verify_server,
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

fn build_server(
    cfg: &TlsConfig,
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    version: SslVersion,
) -> Result<SslContext, RuntimeError> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| tls_err("creating the server TLS context", None, e))?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| tls_err("loading certificate chain", Some(cert), e))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| tls_err("loading private key", Some(key), e))?;
    b.check_private_key()
        .map_err(|e| tls_err("private key does not match certificate", Some(key), e))?;
    b.set_min_proto_version(Some(version))
        .map_err(|e| tls_err("setting min_version", None, e))?;
    // Idle connections must be cheap: OpenSSL frees its 16 KiB+ record buffers between
    // records instead of keeping them for the life of the connection.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_session_id_context(SESSION_ID_CONTEXT)
        .map_err(|e| tls_err("setting the session id context", None, e))?;
    match cfg.verify_client {
        VerifyClient::Off => b.set_verify(SslVerifyMode::NONE),
        VerifyClient::Optional | VerifyClient::Require => {
            let Some(ca) = ca else {
                return Err(RuntimeError::Config(format!(
                    "[tls] verify_client = \"{}\" needs ca_file",
                    cfg.verify_client.as_str()
                )));
            };
            b.set_ca_file(ca)
                .map_err(|e| tls_err("loading ca_file", Some(ca), e))?;
            let names = X509Name::load_client_ca_file(ca)
                .map_err(|e| tls_err("loading client CA names from", Some(ca), e))?;
            b.set_client_ca_list(names);
            let mut mode = SslVerifyMode::PEER;
            if cfg.verify_client == VerifyClient::Require {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
            }
            b.set_verify(mode);
        }
    }
    Ok(b.build().into_context())
}

fn build_client(
    cfg: &TlsConfig,
    base: &Path,
    ca: Option<&Path>,
    version: SslVersion,
) -> Result<SslConnector, RuntimeError> {
    // SslConnector::builder already trusts the system's default CA paths.
    let mut b = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| tls_err("creating the client TLS context", None, e))?;
    b.set_min_proto_version(Some(version))
        .map_err(|e| tls_err("setting min_version", None, e))?;
    b.set_mode(SslMode::RELEASE_BUFFERS);
    if let Some(ca) = ca {
        if ca.exists() {
            b.set_ca_file(ca)
                .map_err(|e| tls_err("loading ca_file", Some(ca), e))?;
        }
    }
    match (&cfg.client_certificate, &cfg.client_private_key) {
        (Some(c), Some(k)) => {
            let (c, k) = (resolve_path(base, c), resolve_path(base, k));
            b.set_certificate_chain_file(&c)
                .map_err(|e| tls_err("loading client_certificate", Some(&c), e))?;
            b.set_private_key_file(&k, SslFiletype::PEM)
                .map_err(|e| tls_err("loading client_private_key", Some(&k), e))?;
            b.check_private_key().map_err(|e| {
                tls_err(
                    "client_private_key does not match client_certificate",
                    Some(&k),
                    e,
                )
            })?;
        }
        (None, None) => {}
        _ => {
            return Err(RuntimeError::Config(
                "[tls] client_certificate and client_private_key go together".to_owned(),
            ))
        }
    }
    Ok(b.build())
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
    Ok(())
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
        let ctx = build(&cfg, dir.path(), true).expect("contexts");
        assert!(ctx.server.is_some());
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
        let err = build(&cfg, dir.path(), true).expect_err("missing files");
        assert!(err.to_string().contains("server.pem"), "{err}");
    }
}
