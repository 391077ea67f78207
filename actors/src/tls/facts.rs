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

/// Most shared facts a worker thread keeps (see [`shared_facts`]); past it the cache is
/// emptied, which also lets go of the domains of earlier reloads.
const SHARED_FACTS_MAX: usize = 64;

/// What makes the facts of a connection without a peer certificate: the domain and the
/// certificate siprox presented (by address: the cached facts hold both, so neither
/// address can be reused while cached), version, cipher and SNI.
type SharedKey = (usize, usize, &'static str, &'static str, Option<String>);

/// [`facts`], shared: connections whose facts are equal (no peer certificate, the same
/// domain, certificate, version, cipher and SNI: the many phones of one domain) get the
/// same `Arc` instead of one each, per worker thread (no lock). Facts are immutable once
/// read. With a peer certificate the facts are the connection's own.
pub fn shared_facts(
    ssl: &SslRef,
    domain: Option<&Arc<str>>,
    server_name: Option<String>,
    my: Option<Arc<CertFacts>>,
) -> Arc<TlsFacts> {
    thread_local! {
        static SHARED: RefCell<HashMap<SharedKey, Arc<TlsFacts>>> =
            RefCell::new(HashMap::new());
    }
    let (Some(d), Some(m), Some(c)) = (domain, &my, ssl.current_cipher()) else {
        return Arc::new(facts(ssl, domain, server_name, my));
    };
    if ssl.peer_certificate().is_some() {
        return Arc::new(facts(ssl, domain, server_name, my));
    }
    let key = (
        Arc::as_ptr(d).cast::<u8>() as usize,
        Arc::as_ptr(m) as usize,
        ssl.version_str(),
        c.name(),
        server_name,
    );
    SHARED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(f) = cache.get(&key) {
            return f.clone();
        }
        let f = Arc::new(facts(ssl, domain, key.4.clone(), my));
        if cache.len() >= SHARED_FACTS_MAX {
            cache.clear();
        }
        cache.insert(key, f.clone());
        f
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode};
    use siprox_testkit::pki::{issue, Spec};
    use std::net::{TcpListener, TcpStream};

    /// Handshakes once with a client (a certificate when `client_cert`) and returns the
    /// server side's shared facts, read on this thread as a worker does.
    fn accept_once(
        acceptor: &SslAcceptor,
        sni: Option<&str>,
        client_cert: bool,
        domain: &Arc<str>,
        my: &Arc<CertFacts>,
    ) -> Arc<TlsFacts> {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut c = SslConnector::builder(SslMethod::tls_client()).expect("connector");
            c.set_verify(SslVerifyMode::NONE);
            if client_cert {
                let id = issue(&Spec::client("phone"), None);
                c.set_certificate(&id.cert).expect("cert");
                c.set_private_key(&id.key).expect("key");
            }
            let mut ssl = Ssl::new(c.build().context()).expect("ssl");
            ssl.set_connect_state();
            let mut s = SslStream::new(ssl, TcpStream::connect(addr).expect("tcp")).expect("s");
            s.connect().expect("handshake");
            // Keep the stream until the server has read its facts.
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut s, &mut b);
        });
        let (tcp, _) = l.accept().expect("accept");
        let mut s = acceptor.accept(tcp).expect("server handshake");
        let f = shared_facts(
            s.ssl(),
            Some(domain),
            sni.map(str::to_owned),
            Some(my.clone()),
        );
        let _ = std::io::Write::write_all(&mut s, b"x");
        client.join().expect("client");
        f
    }

    #[test]
    fn equal_facts_are_shared_and_a_peer_certificate_or_another_sni_is_not() {
        let id = issue(&Spec::server("localhost"), None);
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("b");
        b.set_certificate(&id.cert).expect("cert");
        b.set_private_key(&id.key).expect("key");
        b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
        let acceptor = b.build();
        let domain: Arc<str> = Arc::from("d");
        let my = Arc::new(cert_facts(&id.cert));

        let a = accept_once(&acceptor, None, false, &domain, &my);
        let b = accept_once(&acceptor, None, false, &domain, &my);
        assert!(
            Arc::ptr_eq(&a, &b),
            "two phones of one domain share their facts"
        );
        assert_eq!(a.domain.as_deref(), Some("d"));
        assert_eq!(a.version, "TLSv1.3");
        assert!(a.peer.is_none() && a.server_name.is_none());

        let named = accept_once(&acceptor, Some("x.example"), false, &domain, &my);
        assert!(!Arc::ptr_eq(&a, &named));
        assert_eq!(named.server_name.as_deref(), Some("x.example"));

        let with_cert = accept_once(&acceptor, None, true, &domain, &my);
        assert!(
            !Arc::ptr_eq(&a, &with_cert),
            "a peer certificate is the connection's own"
        );
        assert_eq!(
            with_cert
                .peer
                .as_ref()
                .map(|p| p.subject.line.contains("phone")),
            Some(true),
            "{:?}",
            with_cert.peer
        );
    }
}
