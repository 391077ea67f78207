//! Development certificates: a local CA and a server certificate for localhost, generated
//! on first run when `[tls] generate_dev_certs` is on (and by tests). Writes key files with
//! owner-only permissions; must never be called on a worker thread, nor log a key.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::state::resolve;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};
use siprox::config::TlsConfig;

use crate::error::RuntimeError;

/// Days a generated development CA / server certificate is valid.
const DEV_CA_DAYS: u32 = 3650;
const DEV_CERT_DAYS: u32 = 397;

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
