//! Development certificates: a local CA and a server certificate for localhost, generated
//! on first run when `[tls] generate_dev_certs` is on and none of their files exist (and by
//! tests). Writes key files with owner-only permissions; at start it must never overwrite or
//! delete a file it did not just create, never run on a worker thread, nor log a key.

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

/// The files a start would write: every one of them absent when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPlan {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The operator's client certificate and key (CN=admin, for siproxctl), beside the
    /// certificate; `None` when either already exists (it is then left alone).
    pub admin: Option<(PathBuf, PathBuf)>,
}

impl DevCertPlan {
    /// Every file the start would create, in the order it writes them.
    pub fn files(&self) -> Vec<&Path> {
        let mut v = vec![
            self.ca_key.as_path(),
            self.ca.as_path(),
            self.private_key.as_path(),
            self.certificate.as_path(),
        ];
        if let Some((c, k)) = &self.admin {
            v.extend([k.as_path(), c.as_path()]);
        }
        v
    }
}

/// The CA a development certificate is signed by: `[tls] ca_file`, or `ca.pem` beside the
/// certificate; its key is `<stem>.key` beside it.
fn ca_paths(cfg: &TlsConfig, base: &Path, cert: &Path) -> (PathBuf, PathBuf) {
    let ca = match &cfg.ca_file {
        Some(p) => resolve_path(base, p),
        None => cert.with_file_name("ca.pem"),
    };
    let ca_key = ca.with_extension("key");
    (ca, ca_key)
}

/// Which files a start would generate for `cfg` (`siprox check` prints them): `None` when
/// generation is off or the certificate and key both exist. Generation happens only when
/// NONE of certificate, key, CA and CA key exist; when some exist and others do not (a typo
/// in a path, a deleted file), that is an error naming both, because generating would
/// either overwrite a key or serve a certificate that does not match it.
pub fn dev_certs_plan(cfg: &TlsConfig, base: &Path) -> Result<Option<DevCertPlan>, RuntimeError> {
    let certificate = resolve_path(base, &cfg.certificate);
    let private_key = resolve_path(base, &cfg.private_key);
    if !cfg.generate_dev_certs || (certificate.exists() && private_key.exists()) {
        return Ok(None);
    }
    let (ca, ca_key) = ca_paths(cfg, base, &certificate);
    let files = [
        ("[tls] certificate", &certificate),
        ("[tls] private_key", &private_key),
        (
            if cfg.ca_file.is_some() {
                "[tls] ca_file"
            } else {
                "the development CA (beside [tls] certificate)"
            },
            &ca,
        ),
        ("the development CA's key", &ca_key),
    ];
    // `symlink_metadata`: a dangling symlink is an existing file too (never replaced).
    let present = |p: &Path| p.symlink_metadata().is_ok();
    let (existing, missing): (Vec<_>, Vec<_>) = files.iter().partition(|(_, p)| present(p));
    if !existing.is_empty() {
        let list = |v: &[&(&str, &PathBuf)]| {
            let mut items: Vec<String> = v
                .iter()
                .map(|(k, p)| format!("{k} {}", p.display()))
                .collect();
            let last = items.pop().unwrap_or_default();
            if items.is_empty() {
                last
            } else {
                format!("{} and {last}", items.join(", "))
            }
        };
        let verb =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        return Err(RuntimeError::Config(format!(
            "{} {}, but {} {}: development certificates are generated only where none of \
             these files exist, and siprox never overwrites a key or certificate; correct the \
             path in the configuration, or move the existing files away to generate new ones",
            list(&missing),
            verb(missing.len(), "does not exist", "do not exist"),
            list(&existing),
            verb(existing.len(), "exists", "exist"),
        )));
    }
    let dir = certificate.parent().unwrap_or_else(|| Path::new("."));
    let (admin_cert, admin_key) = (dir.join("admin.pem"), dir.join("admin.key"));
    let admin = (!present(&admin_cert) && !present(&admin_key)).then_some((admin_cert, admin_key));
    Ok(Some(DevCertPlan {
        ca,
        ca_key,
        certificate,
        private_key,
        admin,
    }))
}

/// When [`dev_certs_plan`] says so, generate a development CA and a server certificate for
/// localhost / 127.0.0.1 / ::1 signed by it, at the configured paths, and the operator's
/// admin client certificate. Every file is created new (`O_EXCL`): an existing file is never
/// overwritten, even one that appeared after the plan; on failure, the files this call
/// created are removed again, and nothing else.
pub fn ensure_dev_certs(cfg: &TlsConfig, base: &Path) -> Result<DevCerts, RuntimeError> {
    match dev_certs_plan(cfg, base)? {
        None => Ok(DevCerts::Untouched),
        Some(plan) => generate_planned(plan),
    }
}

/// Writes `plan`; on failure removes the files this call created, and nothing else.
fn generate_planned(plan: DevCertPlan) -> Result<DevCerts, RuntimeError> {
    let mut created = Vec::new();
    match write_plan(&plan, &mut created) {
        Ok(()) => Ok(DevCerts::Generated {
            ca: plan.ca,
            certificate: plan.certificate,
        }),
        Err(e) => {
            for p in created.iter().rev() {
                let _ = fs::remove_file(p);
            }
            Err(e)
        }
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        what: format!("{what} {}", p.display()),
        source: e,
    }
}

/// Writes everything `plan` names with `create_new`, recording each file it created.
fn write_plan(plan: &DevCertPlan, created: &mut Vec<PathBuf>) -> Result<(), RuntimeError> {
    let ssl = |e: ErrorStack| tls_err("generating development certificates", None, e);
    let mut put = |p: &Path, data: &[u8], secret: bool| {
        create_file(p, data, secret).map_err(|e| io_err("writing", p, e))?;
        created.push(p.to_owned());
        Ok::<(), RuntimeError>(())
    };
    let ca_pkey = ec_key().map_err(ssl)?;
    let ca_cert = dev_ca(&ca_pkey).map_err(ssl)?;
    put(
        &plan.ca_key,
        &ca_pkey.private_key_to_pem_pkcs8().map_err(ssl)?,
        true,
    )?;
    put(&plan.ca, &ca_cert.to_pem().map_err(ssl)?, false)?;
    let k = ec_key().map_err(ssl)?;
    let c = dev_server_cert(&k, &ca_cert, &ca_pkey).map_err(ssl)?;
    put(
        &plan.private_key,
        &k.private_key_to_pem_pkcs8().map_err(ssl)?,
        true,
    )?;
    put(&plan.certificate, &c.to_pem().map_err(ssl)?, false)?;
    if let Some((admin_cert, admin_key)) = &plan.admin {
        let k = ec_key().map_err(ssl)?;
        let c = dev_client_cert(&k, &ca_cert, &ca_pkey, "admin").map_err(ssl)?;
        put(admin_key, &k.private_key_to_pem_pkcs8().map_err(ssl)?, true)?;
        put(admin_cert, &c.to_pem().map_err(ssl)?, false)?;
    }
    Ok(())
}

/// Creates `path` (and its directory) with `data`; fails if it exists. Keys are readable by
/// the owner only.
fn create_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Writes a development CA (`ca`, `ca_key`, reused if both exist) and a server certificate
/// for localhost, 127.0.0.1 and ::1 (`cert`, `key`), REPLACING `cert` and `key` when they
/// exist. For tests and tools that make (or rotate) the same material on purpose; a start
/// never calls it (it uses [`ensure_dev_certs`], which never replaces a file).
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
    // Only when neither exists: one of them alone is someone's file, never replaced.
    if !admin_cert.exists() && !admin_key.exists() {
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

    fn cfg() -> TlsConfig {
        TlsConfig {
            generate_dev_certs: true,
            ..TlsConfig::default()
        }
    }

    /// Every file under `dir` with its bytes.
    fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).expect("read_dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), fs::read(&p).expect("read"));
                }
            }
        }
        out
    }

    #[test]
    fn plan_names_every_file_when_none_exists_and_nothing_when_all_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = dev_certs_plan(&cfg(), dir.path())
            .expect("plan")
            .expect("something to generate");
        let c = dir.path().join("certs");
        assert_eq!(
            plan.files(),
            vec![
                c.join("ca.key"),
                c.join("ca.pem"),
                c.join("server.key"),
                c.join("server.pem"),
                c.join("admin.key"),
                c.join("admin.pem"),
            ]
        );
        assert!(matches!(
            ensure_dev_certs(&cfg(), dir.path()).expect("generate"),
            DevCerts::Generated { .. }
        ));
        let written: Vec<PathBuf> = tree(dir.path()).into_keys().collect();
        let mut planned: Vec<PathBuf> = plan.files().iter().map(|p| p.to_path_buf()).collect();
        planned.sort();
        assert_eq!(written, planned);
        assert_eq!(dev_certs_plan(&cfg(), dir.path()).expect("plan"), None);
        // Off: never a plan, whatever exists.
        let off = TlsConfig::default();
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(dev_certs_plan(&off, empty.path()).expect("plan"), None);
    }

    #[test]
    fn a_typo_in_the_certificate_path_touches_nothing_and_names_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_dev_certs(&cfg(), dir.path()).expect("first run");
        let before = tree(dir.path());
        let typo = TlsConfig {
            certificate: PathBuf::from("certs/sever.pem"),
            ..cfg()
        };
        let err = ensure_dev_certs(&typo, dir.path())
            .expect_err("must refuse")
            .to_string();
        assert!(
            err.contains("[tls] certificate")
                && err.contains("certs/sever.pem does not exist")
                && err.contains("[tls] private_key")
                && err.contains("server.key"),
            "{err}"
        );
        assert_eq!(tree(dir.path()), before, "a file changed or appeared");
        assert!(dev_certs_plan(&typo, dir.path()).is_err());
    }

    #[test]
    fn any_one_existing_file_stops_generation() {
        for (name, file) in [
            ("certificate", "server.pem"),
            ("key", "server.key"),
            ("ca", "ca.pem"),
            ("ca key", "ca.key"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = dir.path().join("certs");
            fs::create_dir_all(&c).expect("mkdir");
            fs::write(c.join(file), name).expect("write");
            let before = tree(dir.path());
            let err = ensure_dev_certs(&cfg(), dir.path()).expect_err(name);
            assert!(err.to_string().contains(file), "{name}: {err}");
            assert_eq!(tree(dir.path()), before, "{name}");
        }
    }

    #[test]
    fn an_existing_admin_file_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = dir.path().join("certs");
        fs::create_dir_all(&c).expect("mkdir");
        fs::write(c.join("admin.pem"), "mine").expect("write");
        let plan = dev_certs_plan(&cfg(), dir.path())
            .expect("plan")
            .expect("to generate");
        assert_eq!(plan.admin, None);
        ensure_dev_certs(&cfg(), dir.path()).expect("generate");
        assert_eq!(fs::read(c.join("admin.pem")).expect("read"), b"mine");
        assert!(!c.join("admin.key").exists());
    }

    #[test]
    fn a_failed_write_removes_only_what_it_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = dev_certs_plan(&cfg(), dir.path())
            .expect("plan")
            .expect("to generate");
        // The certificate's path is taken after the plan was made (by a directory, so that
        // the write fails after the CA and the key were created).
        fs::create_dir_all(&plan.certificate).expect("mkdir");
        fs::write(plan.certificate.join("keep"), "x").expect("write");
        let err = generate_planned(plan.clone()).expect_err("write fails");
        assert!(err.to_string().contains("server.pem"), "{err}");
        assert!(plan.certificate.join("keep").exists());
        for p in [&plan.ca_key, &plan.ca, &plan.private_key] {
            assert!(!p.exists(), "{} was left behind", p.display());
        }
    }
}
