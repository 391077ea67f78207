//! The facts of an established TLS connection (`@tls.*` selects, `tls.list`), read once
//! per connection after the handshake. Must never fail: a missing fact is empty.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use openssl::ssl::{SslCipherRef, SslRef};
use openssl::x509::X509VerifyResult;
use siprox::tls::{cert_facts, CertFacts, TlsFacts};

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
    let verify = ssl.verify_result();
    let peer_verified = peer.is_some() && verify == X509VerifyResult::OK;
    // X509_V_ERR_CERT_REVOKED; Kamailio's `revoked` is this verify result.
    let peer_revoked = peer.is_some() && verify.as_raw() == 23;
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
        // The cluster domain requires (server side) and checks (client side) a
        // certificate of the cluster CA: verified there, the peer is another node.
        cluster_peer: peer_verified
            && domain.is_some_and(|d| &**d == siprox::config::CLUSTER_DOMAIN),
        peer_verified,
        peer_revoked,
    }
}

/// OpenSSL's description of `cipher`, verbatim (trailing newline included, as SER's and
/// Kamailio's `@tls.desc`), made once per cipher and worker thread and shared by every
/// connection that negotiates it (no lock: a per-thread cache).
fn cipher_desc(cipher: &SslCipherRef, version: &str, bits: u32) -> Arc<str> {
    thread_local! {
        static DESCS: RefCell<HashMap<&'static str, Arc<str>>> = RefCell::new(HashMap::new());
    }
    DESCS.with(|m| {
        m.borrow_mut()
            .entry(cipher.name())
            .or_insert_with(|| {
                let d = cipher.description();
                if d.trim().is_empty() {
                    Arc::from(format!("{version} {} {bits}", cipher.name()))
                } else {
                    Arc::from(d)
                }
            })
            .clone()
    })
}
