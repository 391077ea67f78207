//! TLS clients of the tests: one with every knob a test turns (SNI, versions, ciphers,
//! client certificate chain) that reports the handshake's result instead of panicking, and
//! short helpers for a verified connection to 127.0.0.1. Test-only: may panic, but a
//! handshake never waits without a bound.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslConnector, SslFiletype, SslMethod, SslRef, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// How a test client connects.
#[derive(Clone, Default)]
pub struct Client {
    pub sni: Option<String>,
    pub max: Option<SslVersion>,
    pub min: Option<SslVersion>,
    pub ciphers: Option<String>,
    /// TLS 1.3 ciphersuites to offer.
    pub ciphersuites: Option<String>,
    /// Key-exchange groups to offer (OpenSSL names, `:`-separated); the client sends a
    /// TLS 1.3 key share for the first only.
    pub groups: Option<String>,
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

    /// A client naming `name` that speaks `version` only.
    pub fn sni_only(name: &str, version: SslVersion) -> Client {
        Client {
            min: Some(version),
            max: Some(version),
            ..Client::sni(name)
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
        if let Some(g) = &self.groups {
            b.set_groups_list(g).expect("groups");
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

/// The key-exchange group a client's handshake agreed on, as OpenSSL names it (`X25519`,
/// `prime256v1`, `secp384r1`...); `None` before a key exchange.
pub fn agreed_group(ssl: &SslRef) -> Option<String> {
    let k = ssl.peer_tmp_key().ok()?;
    Some(match k.ec_key() {
        Ok(ec) => ec
            .group()
            .curve_name()
            .and_then(|n| n.short_name().ok())
            .unwrap_or("?")
            .to_owned(),
        Err(_) if k.id() == openssl::pkey::Id::X25519 => "X25519".to_owned(),
        Err(_) => format!("{:?}", k.id()),
    })
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

/// A TLS connection to siprox at `addr` that verifies its certificate (IP SAN 127.0.0.1)
/// with `ca`.
pub async fn tls_connect(addr: SocketAddr, ca: &Path) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    verified_over(tcp, ca, None, None).await
}

/// As [`tls_connect`], over a TCP stream the test opened itself.
pub async fn tls_over(tcp: TcpStream, ca: &Path) -> SslStream<TcpStream> {
    verified_over(tcp, ca, None, None).await
}

/// As [`tls_connect`], pinned to `version` and presenting `client` (certificate chain file,
/// key file) when given.
pub async fn tls_client(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    version: SslVersion,
) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    verified_over(tcp, ca, client, Some(version)).await
}

/// The handshake behind [`tls_connect`], [`tls_over`] and [`tls_client`]; panics when it
/// fails or takes more than 10 s.
pub async fn verified_over(
    tcp: TcpStream,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    version: Option<SslVersion>,
) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca).expect("ca");
    b.set_min_proto_version(version).expect("min");
    b.set_max_proto_version(version).expect("max");
    if let Some((c, k)) = client {
        b.set_certificate_chain_file(c).expect("client chain");
        b.set_private_key_file(k, SslFiletype::PEM)
            .expect("client key");
    }
    let server = tcp.peer_addr().expect("peer address");
    tokio::time::timeout(
        Duration::from_secs(10),
        crate::ua::tls_handshake(&b.build(), server, tcp),
    )
    .await
    .expect("TLS handshake with siprox hung")
    .expect("TLS handshake with siprox")
}
