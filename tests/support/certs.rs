//! Test PKI made in the test: a CA, server and client certificates (and the expired and
//! wrong-name negatives), PEM files in a temp dir, and OpenSSL acceptors/connectors pinned
//! to TLS 1.2 or 1.3. Must never read or write anything outside its own temp dir.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// Which TLS versions an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// 1.2 and 1.3 (OpenSSL picks 1.3).
    Any,
    /// TLS 1.2 only.
    V12,
    /// TLS 1.3 only.
    V13,
}

impl Tls {
    fn bounds(self) -> (SslVersion, SslVersion) {
        match self {
            Tls::Any => (SslVersion::TLS1_2, SslVersion::TLS1_3),
            Tls::V12 => (SslVersion::TLS1_2, SslVersion::TLS1_2),
            Tls::V13 => (SslVersion::TLS1_3, SslVersion::TLS1_3),
        }
    }
}

/// A private key and its certificate, in memory and as PEM files.
#[derive(Clone)]
pub struct Identity {
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    /// Subject CN.
    pub cn: &'a str,
    pub dns: &'a [&'a str],
    pub ips: &'a [IpAddr],
    /// serverAuth (false) or clientAuth (true) extended key usage.
    pub client: bool,
    /// Validity, in days relative to now (negative = in the past).
    pub from_days: i64,
    pub to_days: i64,
}

impl Default for Leaf<'_> {
    fn default() -> Self {
        Leaf {
            cn: "localhost",
            dns: &["localhost"],
            ips: &[],
            client: false,
            from_days: -1,
            to_days: 30,
        }
    }
}

/// A CA that issues leaf certificates into `dir`.
pub struct Ca {
    pub id: Identity,
    dir: PathBuf,
    serial: u32,
}

fn ec_key() -> PKey<Private> {
    // P-256: cheap to generate and to sign with, which keeps handshake storms fast.
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256 group");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

fn days(d: i64) -> Asn1Time {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    Asn1Time::from_unix(now + d * 86_400).expect("asn1 time")
}

fn write_identity(dir: &Path, stem: &str, cert: X509, key: PKey<Private>) -> Identity {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.to_pem().expect("cert pem")).expect("write cert");
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().expect("key pem")).expect("write key");
    Identity {
        cert,
        key,
        cert_path,
        key_path,
    }
}

impl Ca {
    /// A self-signed CA; its PEM is `<dir>/<stem>.pem`.
    pub fn new(dir: &Path, stem: &str, cn: &str) -> Ca {
        let key = ec_key();
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "siprox tests")
            .expect("o");
        let name = name.build();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("version");
        b.set_serial_number(&serial(1)).expect("serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&days(-1)).expect("nb");
        b.set_not_after(&days(365)).expect("na");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        Ca {
            id: write_identity(dir, stem, cert, key),
            dir: dir.to_owned(),
            serial: 1,
        }
    }

    /// Issue a leaf certificate, written to `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
    pub fn issue(&mut self, stem: &str, leaf: &Leaf<'_>) -> Identity {
        self.serial += 1;
        let key = ec_key();
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, leaf.cn)
            .expect("cn");
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "siprox tests")
            .expect("o");
        let name = name.build();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("version");
        b.set_serial_number(&serial(self.serial)).expect("serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(self.id.cert.subject_name())
            .expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&days(leaf.from_days)).expect("nb");
        b.set_not_after(&days(leaf.to_days)).expect("na");
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        let eku = if leaf.client {
            ExtendedKeyUsage::new().client_auth().build()
        } else {
            ExtendedKeyUsage::new().server_auth().build()
        };
        b.append_extension(eku.expect("eku")).expect("eku");
        if !leaf.dns.is_empty() || !leaf.ips.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for d in leaf.dns {
                san.dns(d);
            }
            for ip in leaf.ips {
                san.ip(&ip.to_string());
            }
            let ctx = b.x509v3_context(Some(&self.id.cert), None);
            let ext = san.build(&ctx).expect("san");
            b.append_extension(ext).expect("san");
        }
        b.sign(&self.id.key, MessageDigest::sha256()).expect("sign");
        write_identity(&self.dir, stem, b.build(), key)
    }
}

fn serial(n: u32) -> Asn1Integer {
    BigNum::from_u32(n)
        .and_then(|b| b.to_asn1_integer())
        .expect("serial")
}

/// The whole test PKI: one CA, a server certificate for localhost/127.0.0.1/::1, client
/// certificates for "Bob" and "Mallory", and negatives: an expired server certificate, one
/// for the wrong name, and a client certificate from a CA nobody trusts.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Identity,
    pub bob: Identity,
    pub mallory: Identity,
    pub expired_server: Identity,
    pub wrong_name_server: Identity,
    pub rogue_client: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca = Ca::new(dir.path(), "ca", "siprox test CA");
        let loopback: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let server = ca.issue(
            "server",
            &Leaf {
                cn: "localhost",
                dns: &["localhost"],
                ips: &loopback,
                ..Leaf::default()
            },
        );
        let client = |cn| Leaf {
            cn,
            dns: &[],
            ips: &[],
            client: true,
            ..Leaf::default()
        };
        let bob = ca.issue("bob", &client("Bob"));
        let mallory = ca.issue("mallory", &client("Mallory"));
        let expired_server = ca.issue(
            "expired",
            &Leaf {
                ips: &loopback,
                from_days: -30,
                to_days: -1,
                ..Leaf::default()
            },
        );
        let wrong_name_server = ca.issue(
            "wrongname",
            &Leaf {
                cn: "wrong.example",
                dns: &["wrong.example"],
                ips: &[],
                ..Leaf::default()
            },
        );
        let mut rogue = Ca::new(dir.path(), "rogue-ca", "rogue CA");
        let rogue_client = rogue.issue("rogue-client", &client("Bob"));
        Pki {
            dir,
            ca,
            server,
            bob,
            mallory,
            expired_server,
            wrong_name_server,
            rogue_client,
        }
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca.id.cert_path
    }

    /// A server-side acceptor with `id`, trusting this CA for client certificates (asked for
    /// but not required).
    pub fn acceptor(&self, id: &Identity, tls: Tls) -> SslAcceptor {
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
        b.set_certificate_chain_file(&id.cert_path).expect("chain");
        b.set_private_key_file(&id.key_path, SslFiletype::PEM)
            .expect("key");
        b.check_private_key().expect("key matches");
        b.set_ca_file(self.ca_path()).expect("ca");
        let (min, max) = tls.bounds();
        b.set_min_proto_version(Some(min)).expect("min");
        b.set_max_proto_version(Some(max)).expect("max");
        b.set_verify(SslVerifyMode::NONE);
        b.build()
    }

    /// A client-side connector trusting this CA, optionally presenting `client`.
    pub fn connector(&self, client: Option<&Identity>, tls: Tls) -> SslConnector {
        connector(self.ca_path(), client, tls)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A client-side connector trusting the CA in `ca_pem`, optionally presenting `client`.
pub fn connector(ca_pem: &Path, client: Option<&Identity>, tls: Tls) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca_pem).expect("ca");
    let (min, max) = tls.bounds();
    b.set_min_proto_version(Some(min)).expect("min");
    b.set_max_proto_version(Some(max)).expect("max");
    if let Some(c) = client {
        b.set_certificate_chain_file(&c.cert_path)
            .expect("client chain");
        b.set_private_key_file(&c.key_path, SslFiletype::PEM)
            .expect("client key");
    }
    b.build()
}
