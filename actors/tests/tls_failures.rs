//! Failed TLS handshakes are counted under the right `reason` label (`timeout`,
//! `certificate`, `unrecognized_name`, `other`), classified from OpenSSL's codes and the
//! dispatch callback's own decision: each failure is made by a real client against a real
//! listener and read from the stats, whose counters `/metrics` shows under those labels.
//! (The mapping of every kind to its label is unit-tested in `tls::failure`.)

mod common;

use std::time::Duration;

use common::tree::Tree;
use openssl::ssl::SslVersion;
use siprox::proxy::Transport;
use siprox_actors::state::TlsFailureCounts;
use siprox_actors::RuntimeHandle;
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::{Ca, Spec};
use siprox_testkit::tls::Client;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const T: Duration = Duration::from_secs(5);

/// Waits until the failure counts are exactly `want` (and as many failures in all).
async fn counted(rt: &RuntimeHandle, want: TlsFailureCounts) {
    let total = want.timeout + want.certificate + want.unrecognized_name + want.other;
    assert_eventually!(
        rt.stats().tls_failures == want && rt.stats().handshake_failures == total,
        T,
        "want {want:?}, have {:?}",
        rt.stats()
    );
}

/// A client of `version` naming `sni`, presenting `id`: the handshake must not give a
/// working connection (refused at the handshake in 1.2, on the first read in 1.3).
async fn refused(
    addr: std::net::SocketAddr,
    sni: &str,
    version: SslVersion,
    id: Option<(Vec<u8>, Vec<u8>)>,
) {
    let c = Client {
        identity: id,
        ..Client::sni_only(sni, version)
    };
    if let Ok(mut s) = c.connect(addr).await {
        // TLS 1.3: the client finished first; the server's refusal shows on a read.
        let _ = s.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(T, s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "{sni} {version:?}: the connection must be refused, read {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_certificates_count_as_certificate() {
    let t = Tree::new("");
    t.server_domain(
        "req",
        "ca_file = \"certs/test-ca.pem\"\nverify_client = \"require\"\n",
    );
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut want = TlsFailureCounts::default();
    let expired = t.ca.issue(&Spec::client("old.example").expired());
    let untrusted = Ca::new("Someone else's CA").leaf("mallory.example");
    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        // No certificate where the domain requires one.
        refused(addr, "req.example", version, None).await;
        want.certificate += 1;
        counted(&rt, want).await;
        // A certificate from a CA the domain does not trust.
        refused(addr, "req.example", version, Some(untrusted.clone())).await;
        want.certificate += 1;
        counted(&rt, want).await;
        // A certificate from the trusted CA, but expired.
        let id = (expired.cert_pem(), expired.key_pem());
        refused(addr, "req.example", version, Some(id)).await;
        want.certificate += 1;
        counted(&rt, want).await;
    }
    // A good one is not counted at all.
    let mut ok = Client::sni("req.example");
    ok.identity = Some(t.ca.leaf("client.example"));
    ok.connect(addr)
        .await
        .expect("a trusted client certificate");
    counted(&rt, want).await;
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_without_default_counts_as_unrecognized_name() {
    let t = Tree::new("default_server = false\n");
    t.server_domain("a", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    Client::sni("nobody.example")
        .connect(addr)
        .await
        .expect_err("refused");
    counted(
        &rt,
        TlsFailureCounts {
            unrecognized_name: 1,
            ..TlsFailureCounts::default()
        },
    )
    .await;
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_counts_as_timeout_and_plain_text_as_other() {
    let t = Tree::new("");
    t.write(
        "conf.d/10-timeouts.toml",
        b"[connections]\nhandshake_timeout = \"300ms\"\n",
    );
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");

    // Connects and never says anything: the runtime's timer ends it.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(T, stalled.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let mut want = TlsFailureCounts {
        timeout: 1,
        ..TlsFailureCounts::default()
    };
    counted(&rt, want).await;

    // SIP in plain text on the TLS port: not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    plain
        .write_all(b"OPTIONS sip:siprox SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    let closed = tokio::time::timeout(T, async {
        loop {
            match plain.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a plain-text client must be closed");
    want.other += 1;
    counted(&rt, want).await;
    rt.shutdown();
}
