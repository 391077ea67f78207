//! Helpers of the TLS domain tests: certificates made in the test (a CA, leaves with SANs),
//! a conf.d written to a temp dir and loaded as the daemon loads it, and a real OpenSSL
//! client with every knob the tests turn (SNI, versions, ciphers, client certificate).
//! Test code: may panic, but never waits without a bound.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use siprox_actors::{Runtime, RuntimeHandle, RuntimeOptions};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A P-256 key (fast to make).
pub fn key() -> PKey<Private> {
    let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
    PKey::from_ec_key(EcKey::generate(&g).expect("ec")).expect("pkey")
}

/// A certificate for `cn` with DNS SANs `sans`, signed by `issuer` (self-signed CA if None).
pub fn cert(
    cn: &str,
    sans: &[&str],
    k: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    cert_as(cn, sans, k, issuer, issuer.is_none())
}

/// As [`cert`], a CA certificate when `ca` (an intermediate, when `issuer` is given).
fn cert_as(
    cn: &str,
    sans: &[&str],
    k: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> X509 {
    let mut n = X509NameBuilder::new().expect("name");
    n.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let n = n.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("v3");
    let mut sn = BigNum::new().expect("bn");
    sn.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    b.set_serial_number(&sn.to_asn1_integer().expect("sn"))
        .expect("sn");
    b.set_subject_name(&n).expect("subject");
    b.set_issuer_name(issuer.map_or(&n, |(c, _)| c.subject_name()))
        .expect("issuer");
    b.set_pubkey(k).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
        .expect("na");
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("ext");
    }
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .expect("san");
        b.append_extension(ext).expect("ext");
    }
    b.sign(issuer.map_or(k, |(_, k)| k), MessageDigest::sha256())
        .expect("sign");
    b.build()
}

/// A CA and its key.
pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = key();
        Ca {
            cert: cert(name, &[], &key, None),
            key,
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = key();
        Ca {
            cert: cert_as(name, &[], &key, Some((&self.cert, &self.key)), true),
            key,
        }
    }

    /// A leaf (cert PEM, key PEM) for `cn` with DNS SAN `cn`.
    pub fn leaf(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let k = key();
        let c = cert(cn, &[cn], &k, Some((&self.cert, &self.key)));
        (
            c.to_pem().expect("pem"),
            k.private_key_to_pem_pkcs8().expect("pem"),
        )
    }
}

/// A siprox configuration tree in a temp dir: `<tmp>/conf.d/...`, `<tmp>/certs/...`.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Tree {
    /// `core` is appended to a core file that listens on tls 127.0.0.1:0 with 2 workers,
    /// dev certificates for the default domain, and a 50 ms reload debounce.
    pub fn new(core_extra: &str) -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("conf.d/domains")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir");
        let t = Tree {
            dir,
            ca: Ca::new("Test CA"),
        };
        t.write("certs/test-ca.pem", &t.ca.cert.to_pem().expect("pem"));
        t.write(
            "conf.d/00-core.toml",
            format!(
                "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\n\
                 [runtime]\nworkers = 2\n\n\
                 [tls]\ngenerate_dev_certs = true\nreload_debounce = \"50ms\"\n{core_extra}\n"
            )
            .as_bytes(),
        );
        t
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `rel` atomically (temp file + rename, as certbot does).
    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let tmp = p.with_extension("tmp~");
        std::fs::write(&tmp, data).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
    }

    /// A leaf for `cn` at `certs/<file>.pem` / `.key`.
    pub fn leaf(&self, file: &str, cn: &str) {
        let (c, k) = self.ca.leaf(cn);
        self.write(&format!("certs/{file}.key"), &k);
        self.write(&format!("certs/{file}.pem"), &c);
    }

    /// `conf.d/domains/<name>.toml` with `body`.
    pub fn domain(&self, name: &str, body: &str) {
        self.write(&format!("conf.d/domains/{name}.toml"), body.as_bytes());
    }

    /// A tenant with a TLS server side: a certificate for `<name>.example` signed by the
    /// test CA at `certs/<name>.pem`, and `conf.d/domains/<name>.toml` naming
    /// `<name>.example`, with `server_extra` (TOML lines) in its `server` table.
    pub fn server_domain(&self, name: &str, server_extra: &str) {
        self.leaf(name, &format!("{name}.example"));
        self.domain(
            name,
            &format!(
                "[domains.{name}]\nnames = [\"{name}.example\"]\n[domains.{name}.server]\n\
                 certificate = \"certs/{name}.pem\"\nprivate_key = \"certs/{name}.key\"\n\
                 {server_extra}"
            ),
        );
    }

    /// Loads conf.d as the daemon does and starts siprox in this process.
    pub fn start(&self) -> RuntimeHandle {
        let config = siprox_actors::files::load(&self.path("conf.d")).expect("valid configuration");
        Runtime::start(config, RuntimeOptions::embedded(self.dir.path())).expect("starts")
    }
}

/// How a test client connects.
#[derive(Clone, Default)]
pub struct Client {
    pub sni: Option<String>,
    pub max: Option<SslVersion>,
    pub min: Option<SslVersion>,
    pub ciphers: Option<String>,
    /// TLS 1.3 ciphersuites to offer.
    pub ciphersuites: Option<String>,
    /// (certificate PEM, followed by any intermediates; key PEM) to present.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Client {
    pub fn sni(name: &str) -> Client {
        Client {
            sni: Some(name.to_owned()),
            ..Client::default()
        }
    }

    /// Handshake with siprox at `addr`. The server certificate is not verified here: the
    /// tests look at which one was presented.
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<SslStream<TcpStream>, openssl::ssl::Error> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(self.min).expect("min");
        b.set_max_proto_version(self.max).expect("max");
        if let Some(c) = &self.ciphers {
            b.set_cipher_list(c).expect("ciphers");
        }
        if let Some(c) = &self.ciphersuites {
            b.set_ciphersuites(c).expect("ciphersuites");
        }
        if let Some((c, k)) = &self.identity {
            // The leaf, then any intermediates (a chain PEM).
            let mut chain = X509::stack_from_pem(c).expect("certs").into_iter();
            b.set_certificate(&chain.next().expect("a certificate"))
                .expect("cert");
            for extra in chain {
                b.add_extra_chain_cert(extra).expect("chain");
            }
            b.set_private_key(&PKey::private_key_from_pem(k).expect("key"))
                .expect("key");
        }
        let c = b.build();
        let mut ssl = Ssl::new(c.context()).expect("ssl");
        if let Some(s) = &self.sni {
            ssl.set_hostname(s).expect("sni");
        }
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let mut s = SslStream::new(ssl, tcp).expect("stream");
        match tokio::time::timeout(Duration::from_secs(5), Pin::new(&mut s).connect()).await {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(_) => panic!("handshake hung"),
        }
    }
}

/// CN of the certificate siprox presented.
pub fn peer_cn(s: &SslStream<TcpStream>) -> String {
    s.ssl()
        .peer_certificate()
        .and_then(|c| {
            c.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().to_string().ok())
        })
        .unwrap_or_default()
}

/// Path of a file under the tree, as text for a TOML value.
pub fn rel(p: &Path) -> String {
    p.display().to_string()
}
