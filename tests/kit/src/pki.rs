//! The one test PKI builder: CAs, intermediates, server and client leaves (CN, O, DNS, IP,
//! email and URI SANs, any validity window: expired, not yet valid), self-signed and
//! wrong-name negatives, plain or encrypted PEM keys, written into a temp dir; and the
//! OpenSSL acceptors/connectors the tests pin to TLS 1.2 or 1.3. Test-only: it panics on
//! failure, and must never read or write outside the directories its caller gives it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::symm::Cipher;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

const DAY: i64 = 86_400;

/// A P-256 key: cheap to generate and to sign with, which keeps handshake storms fast.
pub fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256 group");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// What the certificate is for: its basic constraints, key usage and extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A CA (critical basicConstraints CA:TRUE, keyCertSign).
    Ca,
    /// serverAuth.
    Server,
    /// clientAuth.
    Client,
    /// No key usage extensions at all: accepted for any purpose (a leaf that is used both
    /// as a server and as a client certificate).
    Any,
}

/// What a certificate says. Built with [`Spec::server`], [`Spec::client`], [`Spec::leaf`]
/// or [`Spec::ca`], then refined.
#[derive(Debug, Clone)]
pub struct Spec {
    pub cn: String,
    /// Subject O, if any (it comes before CN in the subject).
    pub o: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    pub usage: Usage,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Spec {
    fn new(cn: &str, usage: Usage) -> Spec {
        let t = now();
        Spec {
            cn: cn.to_owned(),
            o: None,
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            uris: Vec::new(),
            usage,
            // A day of slack before now: a clock a little behind must not see "not yet valid".
            not_before: t - DAY,
            not_after: t + 30 * DAY,
        }
    }

    /// A server leaf for `cn` (serverAuth), with `cn` as its DNS SAN.
    pub fn server(cn: &str) -> Spec {
        Spec::new(cn, Usage::Server).dns(cn)
    }

    /// A client leaf for `cn` (clientAuth), no SAN.
    pub fn client(cn: &str) -> Spec {
        Spec::new(cn, Usage::Client)
    }

    /// A leaf for `cn` with `cn` as its DNS SAN and no key usage: good as server and client.
    pub fn leaf(cn: &str) -> Spec {
        Spec::new(cn, Usage::Any).dns(cn)
    }

    /// A CA for `cn`, valid for a year.
    pub fn ca(cn: &str) -> Spec {
        Spec::new(cn, Usage::Ca).valid_days(-1, 365)
    }

    pub fn o(mut self, o: &str) -> Spec {
        self.o = Some(o.to_owned());
        self
    }

    pub fn dns(mut self, name: &str) -> Spec {
        self.dns.push(name.to_owned());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Spec {
        self.ips.push(ip);
        self
    }

    /// 127.0.0.1 and ::1 as IP SANs.
    pub fn loopback(self) -> Spec {
        self.ip([127, 0, 0, 1].into())
            .ip(std::net::Ipv6Addr::LOCALHOST.into())
    }

    pub fn email(mut self, email: &str) -> Spec {
        self.emails.push(email.to_owned());
        self
    }

    pub fn uri(mut self, uri: &str) -> Spec {
        self.uris.push(uri.to_owned());
        self
    }

    /// Drop every SAN (a certificate that names only its CN).
    pub fn no_san(mut self) -> Spec {
        self.dns.clear();
        self.ips.clear();
        self.emails.clear();
        self.uris.clear();
        self
    }

    /// Valid from `from` to `to` days relative to now (negative = in the past).
    pub fn valid_days(self, from: i64, to: i64) -> Spec {
        let t = now();
        self.valid_unix(t + from * DAY, t + to * DAY)
    }

    /// Valid from `from` to `to`, Unix seconds.
    pub fn valid_unix(mut self, from: i64, to: i64) -> Spec {
        self.not_before = from;
        self.not_after = to;
        self
    }

    /// Expired a day ago.
    pub fn expired(self) -> Spec {
        self.valid_days(-30, -1)
    }

    /// Valid only from tomorrow.
    pub fn not_yet_valid(self) -> Spec {
        self.valid_days(1, 30)
    }
}

/// A certificate and its private key, in memory.
#[derive(Clone)]
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("cert pem")
    }

    /// The key as unencrypted PKCS#8 PEM.
    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().expect("key pem")
    }

    /// The key as PKCS#8 PEM encrypted with `password` (AES-256-CBC).
    pub fn encrypted_key_pem(&self, password: &[u8]) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), password)
            .expect("encrypted key pem")
    }

    /// The certificate followed by `chain` (intermediates), as one PEM.
    pub fn chain_pem(&self, chain: &[&X509]) -> Vec<u8> {
        let mut pem = self.cert_pem();
        for c in chain {
            pem.extend(c.to_pem().expect("chain pem"));
        }
        pem
    }

    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (unencrypted).
    pub fn write(&self, dir: &Path, stem: &str) -> Identity {
        self.write_key_pem(dir, stem, &self.key_pem())
    }

    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key`, the key encrypted with `password`.
    pub fn write_encrypted(&self, dir: &Path, stem: &str, password: &[u8]) -> Identity {
        self.write_key_pem(dir, stem, &self.encrypted_key_pem(password))
    }

    fn write_key_pem(&self, dir: &Path, stem: &str, key_pem: &[u8]) -> Identity {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, self.cert_pem()).expect("write cert");
        std::fs::write(&key_path, key_pem).expect("write key");
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone(),
            cert_path,
            key_path,
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

/// A certificate for `spec`, signed by `issuer` (self-signed when `None`) with a new key.
pub fn issue(spec: &Spec, issuer: Option<&Issued>) -> Issued {
    let key = key();
    let cert = sign(spec, &key, issuer);
    Issued { cert, key }
}

/// A self-signed certificate for `spec` (a root CA, or a leaf nobody vouches for).
pub fn self_signed(spec: &Spec) -> Issued {
    issue(spec, None)
}

/// The certificate for `spec` and `key`, signed by `issuer` or by `key` itself.
pub fn sign(spec: &Spec, key: &PKey<Private>, issuer: Option<&Issued>) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    if let Some(o) = &spec.o {
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, o)
            .expect("o");
    }
    name.append_entry_by_nid(Nid::COMMONNAME, &spec.cn)
        .expect("cn");
    let name = name.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("v3");
    // Random serials: two certificates of one issuer never share one, across runs too.
    let mut sn = BigNum::new().expect("bn");
    sn.rand(63, MsbOption::MAYBE_ZERO, false).expect("rand");
    b.set_serial_number(&sn.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&name, |i| i.cert.subject_name()))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::from_unix(spec.not_before).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(spec.not_after).expect("time"))
        .expect("not after");
    match spec.usage {
        Usage::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
                .expect("bc");
            let ku = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build();
            b.append_extension(ku.expect("ku")).expect("ku");
        }
        Usage::Server | Usage::Client => {
            b.append_extension(BasicConstraints::new().build().expect("bc"))
                .expect("bc");
            let ku = KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build();
            b.append_extension(ku.expect("ku")).expect("ku");
            let eku = if spec.usage == Usage::Client {
                ExtendedKeyUsage::new().client_auth().build()
            } else {
                ExtendedKeyUsage::new().server_auth().build()
            };
            b.append_extension(eku.expect("eku")).expect("eku");
        }
        Usage::Any => {}
    }
    let has_san = !(spec.dns.is_empty()
        && spec.ips.is_empty()
        && spec.emails.is_empty()
        && spec.uris.is_empty());
    if has_san {
        let mut san = SubjectAlternativeName::new();
        for d in &spec.dns {
            san.dns(d);
        }
        for ip in &spec.ips {
            san.ip(&ip.to_string());
        }
        for e in &spec.emails {
            san.email(e);
        }
        for u in &spec.uris {
            san.uri(u);
        }
        let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
        let ext = san.build(&ctx).expect("san");
        b.append_extension(ext).expect("san");
    }
    let signer = issuer.map_or(key, |i| &i.key);
    b.sign(signer, MessageDigest::sha256()).expect("sign");
    b.build()
}

/// A CA (a root, or an intermediate of another CA) that issues certificates.
#[derive(Clone)]
pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Ca {
    /// A self-signed root CA named `cn`.
    pub fn new(cn: &str) -> Ca {
        Ca::from(self_signed(&Spec::ca(cn)))
    }

    /// A root CA from `spec` (its usage is forced to CA).
    pub fn with(spec: Spec) -> Ca {
        Ca::from(self_signed(&Spec {
            usage: Usage::Ca,
            ..spec
        }))
    }

    /// An intermediate CA named `cn`, signed by this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        Ca::from(self.issue(&Spec::ca(cn)))
    }

    /// A certificate for `spec` with a new key, signed by this CA.
    pub fn issue(&self, spec: &Spec) -> Issued {
        issue(spec, Some(&self.as_issued()))
    }

    /// A leaf for `cn` ([`Spec::leaf`]) as (certificate PEM, key PEM).
    pub fn leaf(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let l = self.issue(&Spec::leaf(cn));
        (l.cert_pem(), l.key_pem())
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("ca pem")
    }

    /// Writes the CA's certificate and key as `<dir>/<stem>.pem` / `.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> Identity {
        self.as_issued().write(dir, stem)
    }

    fn as_issued(&self) -> Issued {
        Issued {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

impl From<Issued> for Ca {
    fn from(i: Issued) -> Ca {
        Ca {
            cert: i.cert,
            key: i.key,
        }
    }
}

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

/// The usual test PKI in a temp dir: one CA, a server certificate for
/// localhost/127.0.0.1/::1, client certificates for "Bob" and "Mallory", and negatives: an
/// expired server certificate, one for the wrong name, and a client certificate from a CA
/// nobody trusts.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_id: Identity,
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
        let d = dir.path();
        const O: &str = "siprox tests";
        let ca = Ca::with(Spec::ca("siprox test CA").o(O));
        let ca_id = ca.write(d, "ca");
        let server = ca
            .issue(&Spec::server("localhost").o(O).loopback())
            .write(d, "server");
        let bob = ca.issue(&Spec::client("Bob").o(O)).write(d, "bob");
        let mallory = ca.issue(&Spec::client("Mallory").o(O)).write(d, "mallory");
        let expired_server = ca
            .issue(&Spec::server("localhost").o(O).loopback().expired())
            .write(d, "expired");
        let wrong_name_server = ca
            .issue(&Spec::server("wrong.example").o(O))
            .write(d, "wrongname");
        let rogue = Ca::with(Spec::ca("rogue CA").o(O));
        rogue.write(d, "rogue-ca");
        let rogue_client = rogue
            .issue(&Spec::client("Bob").o(O))
            .write(d, "rogue-client");
        Pki {
            dir,
            ca,
            ca_id,
            server,
            bob,
            mallory,
            expired_server,
            wrong_name_server,
            rogue_client,
        }
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_id.cert_path
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

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::nid::Nid;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    /// Verifies `leaf` (with `chain`) against `root` as OpenSSL would in a handshake.
    fn verify(root: &X509, chain: &[&X509], leaf: &X509) -> X509VerifyResult {
        let mut store = X509StoreBuilder::new().expect("store");
        store.add_cert(root.clone()).expect("root");
        let store = store.build();
        let mut untrusted = Stack::new().expect("stack");
        for c in chain {
            untrusted.push((*c).clone()).expect("push");
        }
        let mut ctx = X509StoreContext::new().expect("ctx");
        ctx.init(&store, leaf, &untrusted, |c| {
            c.verify_cert()?;
            Ok(c.error())
        })
        .expect("verify ran")
    }

    #[test]
    fn a_leaf_under_an_intermediate_verifies_and_the_negatives_do_not() {
        let root = Ca::new("Root");
        let mid = root.intermediate("Mid");
        let leaf = mid.issue(&Spec::server("a.example"));
        assert_eq!(
            verify(&root.cert, &[&mid.cert], &leaf.cert),
            X509VerifyResult::OK
        );
        // Without the intermediate there is no path to the root.
        assert_ne!(verify(&root.cert, &[], &leaf.cert), X509VerifyResult::OK);
        let expired = mid.issue(&Spec::server("a.example").expired());
        assert_ne!(
            verify(&root.cert, &[&mid.cert], &expired.cert),
            X509VerifyResult::OK
        );
        let early = mid.issue(&Spec::server("a.example").not_yet_valid());
        assert_ne!(
            verify(&root.cert, &[&mid.cert], &early.cert),
            X509VerifyResult::OK
        );
        let alone = self_signed(&Spec::server("a.example"));
        assert_ne!(verify(&root.cert, &[], &alone.cert), X509VerifyResult::OK);
    }

    #[test]
    fn subject_and_every_san_kind_are_written() {
        let ca = Ca::new("CA");
        let c = ca
            .issue(
                &Spec::client("Bob")
                    .o("Example")
                    .dns("bob.example")
                    .ip([192, 0, 2, 1].into())
                    .email("bob@example.com")
                    .uri("sip:bob@example.com"),
            )
            .cert;
        let subject = |nid| {
            c.subject_name()
                .entries_by_nid(nid)
                .next()
                .and_then(|e| e.data().to_string().ok())
        };
        assert_eq!(subject(Nid::COMMONNAME).as_deref(), Some("Bob"));
        assert_eq!(subject(Nid::ORGANIZATIONNAME).as_deref(), Some("Example"));
        let sans = c.subject_alt_names().expect("SANs");
        assert_eq!(
            sans.iter().filter_map(|n| n.dnsname()).collect::<Vec<_>>(),
            ["bob.example"]
        );
        assert_eq!(
            sans.iter()
                .filter_map(|n| n.ipaddress())
                .collect::<Vec<_>>(),
            [&[192u8, 0, 2, 1][..]]
        );
        assert_eq!(
            sans.iter().filter_map(|n| n.email()).collect::<Vec<_>>(),
            ["bob@example.com"]
        );
        assert_eq!(
            sans.iter().filter_map(|n| n.uri()).collect::<Vec<_>>(),
            ["sip:bob@example.com"]
        );
        assert!(ca
            .issue(&Spec::client("x").no_san())
            .cert
            .subject_alt_names()
            .is_none());
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let leaf = Ca::new("CA").issue(&Spec::server("a.example"));
        let pem = leaf.encrypted_key_pem(b"s3cret");
        assert!(PKey::private_key_from_pem(&pem).is_err());
        let back = PKey::private_key_from_pem_passphrase(&pem, b"s3cret").expect("decrypts");
        assert!(back.public_eq(&leaf.key));
        let dir = tempfile::tempdir().expect("tempdir");
        let id = leaf.write_encrypted(dir.path(), "enc", b"s3cret");
        let on_disk = std::fs::read(&id.key_path).expect("read");
        assert!(on_disk.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY"));
    }
}
