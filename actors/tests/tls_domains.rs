//! Per-domain TLS policy really applies (DESIGN.md "TLS domains"): several domains on ONE
//! listener, each with its own settings, probed with a real OpenSSL client. Each test proves
//! one setting that OpenSSL would silently drop on an SNI context switch.

mod common;

use std::time::Duration;

use common::tree::Tree;
use common::{options_to, read_message, status};
use openssl::ssl::SslVersion;
use siprox::proxy::Transport;
use siprox_testkit::assert_eventually;
use siprox_testkit::tls::{agreed_group, peer_cn, Client};
use siprox_testkit::ua::Uas;

const T: Duration = Duration::from_secs(5);

/// An OPTIONS to siprox over `s` gets its 200: the connection really works after the
/// handshake (for TLS 1.3 this is where a refused client certificate shows).
async fn options_ok<S>(s: &mut S, addr: std::net::SocketAddr, id: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    // A refused connection may already be reset: a failed write is a refusal, not a panic.
    if s.write_all(options_to(addr, "TLS", id).as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    match read_message(s, &mut buf, T).await {
        Ok(r) => status(&r) == Some(200),
        Err(_) => false,
    }
}

/// Whether a client naming `sni`, speaking `version` only and presenting `id` (certificate
/// chain PEM, key PEM), is served: the handshake completes and an OPTIONS gets its 200. A
/// refused client certificate shows at the handshake in TLS 1.2, on the first read in 1.3.
async fn served(
    addr: std::net::SocketAddr,
    sni: &str,
    version: SslVersion,
    id: &(Vec<u8>, Vec<u8>),
) -> bool {
    let c = Client {
        identity: Some(id.clone()),
        ..Client::sni_only(sni, version)
    };
    match c.connect(addr).await {
        Ok(mut s) => options_ok(&mut s, addr, sni).await,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_exact_wildcard_and_default() {
    let t = Tree::new("");
    t.leaf("w", "*.w.example");
    t.server_domain("a", "");
    t.domain(
        "w",
        "[domains.w]\n[domains.w.server]\nsni = [\"*.w.example\"]\n\
         certificate = \"certs/w.pem\"\nprivate_key = \"certs/w.key\"\n",
    );
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");

    let mut s = Client::sni("A.Example").connect(addr).await.expect("a");
    assert_eq!(peer_cn(&s), "a.example");
    assert!(options_ok(&mut s, addr, "a-1").await);
    let s = Client::sni("pop1.w.example")
        .connect(addr)
        .await
        .expect("w");
    assert_eq!(peer_cn(&s), "*.w.example");
    // Wildcards cover exactly one label.
    let s = Client::sni("x.pop1.w.example")
        .connect(addr)
        .await
        .expect("default");
    assert_eq!(peer_cn(&s), "localhost");
    // No SNI: the default domain ([tls], the dev certificate).
    let mut s = Client::default().connect(addr).await.expect("no sni");
    assert_eq!(peer_cn(&s), "localhost");
    assert!(options_ok(&mut s, addr, "d-1").await);
    let st = rt.tls_status();
    assert!(st
        .domains
        .iter()
        .any(|d| d.name == "a" && d.side == "server"));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_client_require_and_off_on_one_listener() {
    let t = Tree::new("");
    t.server_domain(
        "req",
        "ca_file = \"certs/test-ca.pem\"\nverify_client = \"require\"\n",
    );
    t.server_domain("off", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");

    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let c = |sni: &str| Client::sni_only(sni, version);
        // `off` accepts a client without a certificate.
        let mut s = c("off.example").connect(addr).await.expect("off");
        assert!(options_ok(&mut s, addr, "off-1").await, "{version:?}");
        // `require` refuses it: at the handshake (1.2) or on the first read (1.3).
        match c("req.example").connect(addr).await {
            Err(_) => {}
            Ok(mut s) => assert!(
                !options_ok(&mut s, addr, "req-1").await,
                "{version:?}: a client without a certificate must be refused"
            ),
        }
        // With a certificate from the domain's CA, `require` accepts.
        let mut with = c("req.example");
        with.identity = Some(t.ca.leaf("client.example"));
        let mut s = with.connect(addr).await.expect("req with cert");
        assert!(options_ok(&mut s, addr, "req-2").await, "{version:?}");
    }
    rt.shutdown();
}

/// Revokes the certificate `pem` and writes the CA's CRL to `certs/crl.pem`, with the
/// OpenSSL command-line CA (the `openssl` crate cannot build CRLs).
fn revoke_and_publish_crl(t: &Tree, pem: &[u8]) {
    let dir = t.path("ca");
    std::fs::create_dir_all(&dir).expect("mkdir");
    t.write(
        "ca/ca.key",
        &t.ca.key.private_key_to_pem_pkcs8().expect("key pem"),
    );
    t.write("ca/revoked.pem", pem);
    t.write("ca/index.txt", b"");
    t.write("ca/crlnumber", b"01\n");
    let cfg = format!(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/index.txt\n\
         crlnumber = {d}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n\
         certificate = {ca}\nprivate_key = {d}/ca.key\n",
        d = dir.display(),
        ca = t.path("certs/test-ca.pem").display(),
    );
    t.write("ca/ca.cnf", cfg.as_bytes());
    let cnf = t.path("ca/ca.cnf");
    let crl = t.path("certs/crl.pem");
    for args in [
        vec!["ca", "-batch", "-config"],
        vec!["ca", "-batch", "-gencrl", "-config"],
    ] {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(&args).arg(&cnf);
        if args.contains(&"-gencrl") {
            cmd.arg("-out").arg(&crl);
        } else {
            cmd.arg("-revoke").arg(t.path("ca/revoked.pem"));
        }
        let out = cmd.output().expect("openssl runs (package openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A domain's CRL refuses a revoked client certificate; the neighbour without that CRL, same
/// CA, accepts it; an unrevoked certificate passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_holds_per_domain() {
    let t = Tree::new("");
    let revoked = t.ca.leaf("revoked.example");
    let good = t.ca.leaf("good.example");
    revoke_and_publish_crl(&t, &revoked.0);
    t.server_domain("strict", "ca_file = \"certs/test-ca.pem\"\ncrl_file = \"certs/crl.pem\"\nverify_client = \"require\"\n");
    t.server_domain(
        "lax",
        "ca_file = \"certs/test-ca.pem\"\nverify_client = \"require\"\n",
    );
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");

    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        assert!(
            served(addr, "strict.example", version, &good).await,
            "{version:?}"
        );
        assert!(
            !served(addr, "strict.example", version, &revoked).await,
            "{version:?}: a revoked certificate must be refused"
        );
        assert!(
            served(addr, "lax.example", version, &revoked).await,
            "{version:?}"
        );
    }
    rt.shutdown();
}

/// The first flight of a TLS client that names `sni`: what a peer that stalls right after
/// its ClientHello sends.
fn client_hello(sni: &str) -> Vec<u8> {
    struct Capture(Vec<u8>);
    impl std::io::Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls_client())
        .expect("ctx")
        .build();
    let mut ssl = openssl::ssl::Ssl::new(&ctx).expect("ssl");
    ssl.set_hostname(sni).expect("sni");
    ssl.set_connect_state();
    let mut s = openssl::ssl::SslStream::new(ssl, Capture(Vec::new())).expect("stream");
    assert!(s.do_handshake().is_err(), "waits for the server");
    s.get_ref().0.clone()
}

/// A domain's own `handshake_timeout` (counted from the start of the handshake) closes a
/// peer that stalls after its ClientHello, while the global one still holds for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_holds_per_domain() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t = Tree::new("");
    t.write(
        "conf.d/10-timeouts.toml",
        b"[connections]\nhandshake_timeout = \"30s\"\n[runtime]\nshutdown_grace = \"30s\"\n",
    );
    t.server_domain("quick", "handshake_timeout = \"300ms\"\n");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut quick = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut other = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    quick
        .write_all(&client_hello("quick.example"))
        .await
        .expect("hello");
    other
        .write_all(&client_hello("other.example"))
        .await
        .expect("hello");

    // `quick` is closed (after the server's flight, which we never answer)...
    let mut buf = vec![0u8; 16384];
    let closed = tokio::time::timeout(T, async {
        loop {
            match quick.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the domain's 300 ms handshake_timeout did not apply"
    );
    // ... while the default domain's stalled peer, under the global 30 s, is still open.
    let mut open = true;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(200), other.read(&mut buf)).await {
        if matches!(r, Ok(0) | Err(_)) {
            open = false;
            break;
        }
    }
    assert!(open, "the global handshake_timeout was cut short");
    assert_eq!(rt.stats().handshake_failures, 1);
    assert_eq!(rt.stats().connections_open, 1);
    // Shutdown closes a connection stuck in its handshake at once: it does not wait out
    // the 30 s grace period (nor the 30 s handshake_timeout) for it.
    let down = tokio::task::spawn_blocking(move || rt.shutdown());
    tokio::time::timeout(T, down)
        .await
        .expect("shutdown waited for a stalled handshake")
        .expect("shutdown");
}

/// A TLS client to `addr` naming `sni`, over a socket with a tiny receive buffer, that stops
/// reading ([`common::draw_without_reading`]): true when siprox closed it.
async fn stalled_peer(
    addr: std::net::SocketAddr,
    sni: &str,
    uas: std::net::SocketAddr,
    tries: usize,
) -> bool {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(addr).await.expect("connect");
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .expect("connector");
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut ssl = openssl::ssl::Ssl::new(b.build().context()).expect("ssl");
    ssl.set_hostname(sni).expect("sni");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .expect("handshake");
    let never = std::sync::atomic::AtomicBool::new(false);
    common::draw_without_reading(&mut s, uas, sni, tries, &never).await
}

/// A domain's own `send_timeout` closes a peer of that domain that stops reading, while a
/// peer of another domain, under the global 60 s, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timeout_holds_per_domain() {
    let t = Tree::new("\n[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n");
    t.write(
        "conf.d/10-timeouts.toml",
        b"[connections]\nsend_timeout = \"60s\"\nmax_write_queue = 268435456\n",
    );
    t.server_domain("quick", "send_timeout = \"300ms\"\n");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;

    let other = tokio::spawn(stalled_peer(addr, "other.example", uas, 100_000));
    assert!(
        stalled_peer(addr, "quick.example", uas, 5_000).await,
        "the domain's 300 ms send_timeout did not close its stalled peer: {:?}",
        rt.stats()
    );
    assert_eventually!(rt.stats().send_timeouts == 1, T, "{:?}", rt.stats());
    // The other stalled peer, under the global 60 s, is still connected.
    assert!(
        !other.is_finished(),
        "the global send_timeout was cut short"
    );
    assert_eq!(rt.stats().send_timeouts, 1);
    other.abort();
    rt.shutdown();
}

/// `ca_dir` (a hashed directory, as `openssl rehash` makes it) trusts its CAs, alone, next
/// to a `ca_file` (both trusted) and next to a `crl_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_dir_trusts_alone_and_with_ca_file_or_crl() {
    let t = Tree::new("");
    let other = siprox_testkit::pki::Ca::new("Other CA");
    t.write("certs/cadir/test-ca.pem", &t.ca.cert.to_pem().expect("pem"));
    t.write("certs/other-ca.pem", &other.cert.to_pem().expect("pem"));
    let out = std::process::Command::new("openssl")
        .arg("rehash")
        .arg(t.path("certs/cadir"))
        .output()
        .expect("openssl runs (package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    revoke_and_publish_crl(&t, &t.ca.leaf("someone-else.example").0);
    let domains = [
        ("dir", ""),
        ("both", "ca_file = \"certs/other-ca.pem\"\n"),
        ("revoking", "crl_file = \"certs/crl.pem\"\n"),
    ];
    for (d, extra) in domains {
        t.server_domain(
            d,
            &format!("ca_dir = \"certs/cadir\"\nverify_client = \"require\"\n{extra}"),
        );
    }
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let by_test_ca = t.ca.leaf("client.example");
    let by_other_ca = other.leaf("client.example");
    for (d, _) in domains {
        let sni = format!("{d}.example");
        let tls12 = SslVersion::TLS1_2;
        assert!(
            served(addr, &sni, tls12, &by_test_ca).await,
            "{d}: the CA in ca_dir is trusted"
        );
        assert_eq!(
            served(addr, &sni, tls12, &by_other_ca).await,
            d == "both",
            "{d}: only ca_file adds the other CA"
        );
    }
    rt.shutdown();
}

/// `verify_depth` per domain: 0 accepts a client certificate issued by the trusted CA
/// itself and refuses one that needs an intermediate; the default accepts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_depth_holds_per_domain() {
    let t = Tree::new("");
    for (d, extra) in [("shallow", "verify_depth = 0\n"), ("deep", "")] {
        t.server_domain(
            d,
            &format!("ca_file = \"certs/test-ca.pem\"\nverify_client = \"require\"\n{extra}"),
        );
    }
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let direct = t.ca.leaf("direct.example");
    let inter = t.ca.intermediate("Test Intermediate");
    let (leaf, key) = inter.leaf("chained.example");
    let mut chained = leaf;
    chained.extend_from_slice(&inter.cert.to_pem().expect("pem"));
    let chained = (chained, key);

    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        assert!(
            served(addr, "shallow.example", version, &direct).await,
            "{version:?}"
        );
        assert!(
            !served(addr, "shallow.example", version, &chained).await,
            "{version:?}: verify_depth = 0 must refuse an intermediate"
        );
        assert!(
            served(addr, "deep.example", version, &chained).await,
            "{version:?}"
        );
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_only_domain_refuses_tls12_next_to_one_that_accepts_it() {
    let t = Tree::new("");
    t.server_domain("new", "min_version = \"1.3\"\n");
    t.server_domain("old", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let tls12 = |sni: &str| Client {
        sni: Some(sni.to_owned()),
        max: Some(SslVersion::TLS1_2),
        ..Client::default()
    };
    assert!(tls12("new.example").connect(addr).await.is_err());
    let mut s = tls12("old.example").connect(addr).await.expect("old");
    assert_eq!(s.ssl().version_str(), "TLSv1.2");
    assert!(options_ok(&mut s, addr, "old-1").await);
    let s = Client::sni("new.example").connect(addr).await.expect("new");
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_restriction_holds_per_domain() {
    let t = Tree::new("");
    t.server_domain(
        "strict",
        "max_version = \"1.2\"\nciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256\"\n",
    );
    t.server_domain("lax", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let only = |sni: &str, cipher: &str| Client {
        sni: Some(sni.to_owned()),
        max: Some(SslVersion::TLS1_2),
        ciphers: Some(cipher.to_owned()),
        ..Client::default()
    };
    assert!(only("strict.example", "ECDHE-ECDSA-AES256-GCM-SHA384")
        .connect(addr)
        .await
        .is_err());
    let s = only("lax.example", "ECDHE-ECDSA-AES256-GCM-SHA384")
        .connect(addr)
        .await
        .expect("lax");
    assert_eq!(
        s.ssl().current_cipher().map(|c| c.name()),
        Some("ECDHE-ECDSA-AES256-GCM-SHA384")
    );
    // A client that offers everything gets the one cipher `strict` allows.
    let s = Client::sni("strict.example")
        .connect(addr)
        .await
        .expect("strict");
    assert_eq!(
        s.ssl().current_cipher().map(|c| c.name()),
        Some("ECDHE-ECDSA-AES128-GCM-SHA256")
    );
    rt.shutdown();
}

/// TLS 1.3 ciphersuites too: each connection starts on the dispatch context, whose
/// ciphersuites OpenSSL copies into the `Ssl`; the domain's must still decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_ciphersuites_hold_per_domain() {
    let t = Tree::new("");
    t.server_domain(
        "strict",
        "min_version = \"1.3\"\nciphersuites = \"TLS_CHACHA20_POLY1305_SHA256\"\n",
    );
    t.server_domain("lax", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let only = |sni: &str, suite: &str| Client {
        sni: Some(sni.to_owned()),
        min: Some(SslVersion::TLS1_3),
        ciphersuites: Some(suite.to_owned()),
        ..Client::default()
    };
    assert!(only("strict.example", "TLS_AES_256_GCM_SHA384")
        .connect(addr)
        .await
        .is_err());
    let s = only("lax.example", "TLS_AES_256_GCM_SHA384")
        .connect(addr)
        .await
        .expect("lax");
    assert_eq!(
        s.ssl().current_cipher().map(|c| c.name()),
        Some("TLS_AES_256_GCM_SHA384")
    );
    // A client that offers every suite gets the one `strict` allows.
    let mut s = Client::sni("strict.example")
        .connect(addr)
        .await
        .expect("strict");
    assert_eq!(
        s.ssl().current_cipher().map(|c| c.name()),
        Some("TLS_CHACHA20_POLY1305_SHA256")
    );
    assert!(options_ok(&mut s, addr, "strict-13").await);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_without_default_gets_unrecognized_name() {
    let t = Tree::new("default_server = false\n");
    t.server_domain("a", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let s = Client::sni("a.example").connect(addr).await.expect("a");
    assert_eq!(peer_cn(&s), "a.example");
    for c in [Client::sni("nobody.example"), Client::default()] {
        let e = c.connect(addr).await.expect_err("refused");
        let text = format!("{e:?} {e}");
        assert!(
            text.contains("unrecognized name") || text.contains("alert number 112"),
            "expected alert 112, got {text}"
        );
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_domain_connection_limit_and_listener_domain() {
    let t = Tree::new("");
    t.server_domain("small", "max_connections = 2\n");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut a = Client::sni("small.example").connect(addr).await.expect("1");
    let mut b = Client::sni("small.example").connect(addr).await.expect("2");
    assert!(options_ok(&mut a, addr, "s-1").await);
    assert!(options_ok(&mut b, addr, "s-2").await);
    assert!(Client::sni("small.example").connect(addr).await.is_err());
    // Other domains are not limited by it.
    Client::default().connect(addr).await.expect("default");
    drop(a);
    assert_eventually!(
        Client::sni("small.example").connect(addr).await.is_ok(),
        T,
        "a slot is given back when a connection closes"
    );
    rt.shutdown();
}

/// The certificate chain a domain sends is its certificate file, exactly: a leaf followed
/// by its intermediate sends both (TLS 1.2 and 1.3), and a leaf alone is sent alone even
/// when the domain's `ca_file` holds its issuer (siprox never builds a chain at handshake
/// time: the file is the chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_sends_its_certificate_file_as_the_chain() {
    let t = Tree::new("");
    let inter = t.ca.intermediate("Test Intermediate");
    let (leaf, key) = inter.leaf("chained.example");
    let mut chained = leaf;
    chained.extend_from_slice(&inter.cert.to_pem().expect("pem"));
    t.write("certs/chained.pem", &chained);
    t.write("certs/chained.key", &key);
    t.domain(
        "chained",
        "[domains.chained]\nnames = [\"chained.example\"]\n[domains.chained.server]\n\
         certificate = \"certs/chained.pem\"\nprivate_key = \"certs/chained.key\"\n",
    );
    t.server_domain("alone", "ca_file = \"certs/test-ca.pem\"\n");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let c = |sni: &str| Client::sni_only(sni, version);
        let sent = |s: &tokio_openssl::SslStream<tokio::net::TcpStream>| {
            s.ssl().peer_cert_chain().map_or(0, |c| c.len())
        };
        let mut s = c("chained.example").connect(addr).await.expect("chained");
        assert_eq!(peer_cn(&s), "chained.example");
        assert_eq!(sent(&s), 2, "{version:?}: leaf and intermediate");
        assert!(options_ok(&mut s, addr, "chained-1").await, "{version:?}");
        let mut s = c("alone.example").connect(addr).await.expect("alone");
        assert_eq!(peer_cn(&s), "alone.example");
        assert_eq!(sent(&s), 1, "{version:?}: the leaf only");
        assert!(options_ok(&mut s, addr, "alone-1").await, "{version:?}");
    }
    rt.shutdown();
}

/// The key-exchange group a connection agreed on, as OpenSSL names it.
fn group(s: &tokio_openssl::SslStream<tokio::net::TcpStream>) -> String {
    agreed_group(s.ssl()).expect("a key exchange")
}

/// `openssl s_client -connect addr -tls1_3 ARGS` with nothing to send: its stdout and
/// stderr once it has made (or failed) the handshake and met the end of its input.
async fn s_client_once(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-tls1_3"])
        .args(args)
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("s_client task")
        .expect("openssl s_client runs (package openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// No finite-field group by default: one ffdhe8192 ClientHello would cost the server about
/// 190 ms of CPU. A client offering only those is refused with an alert, on every domain
/// and on the default one; a client offering one first and an elliptic curve after gets a
/// HelloRetryRequest, and the second ClientHello stays on the domain the first chose
/// (TLS 1.3's second pass through the ClientHello callback), holding one slot of its
/// `max_connections`, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_finite_field_groups_and_a_hello_retry_keeps_its_domain_and_slot() {
    let t = Tree::new("");
    t.server_domain("one", "max_connections = 1\n");
    t.server_domain("two", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    // As an operator checks it, with openssl s_client (on `two`, which has no limit).
    let out = s_client_once(
        addr,
        &["-servername", "two.example", "-groups", "ffdhe2048"],
    )
    .await;
    assert!(out.contains("alert handshake failure"), "{out}");
    let out = s_client_once(
        addr,
        &[
            "-servername",
            "two.example",
            "-groups",
            "ffdhe2048:X25519",
            "-msg",
        ],
    )
    .await;
    assert_eq!(
        out.matches(", ClientHello").count(),
        2,
        "a HelloRetryRequest: {out}"
    );
    assert!(
        out.contains("Server Temp Key: X25519") && out.contains("CN = two.example"),
        "{out}"
    );
    let offering = |sni: Option<&str>, groups: &str, version: SslVersion| Client {
        sni: sni.map(str::to_owned),
        groups: Some(groups.to_owned()),
        min: Some(version),
        max: Some(version),
        ..Client::default()
    };
    for sni in [Some("one.example"), None] {
        for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
            let e = offering(sni, "ffdhe2048:ffdhe8192", version)
                .connect(addr)
                .await
                .expect_err("no group in common");
            let text = format!("{e:?} {e}");
            assert!(
                text.contains("handshake failure") || text.contains("alert number 40"),
                "{sni:?} {version:?}: expected a handshake_failure alert, got {text}"
            );
        }
    }
    // The key share is ffdhe2048's: X25519 can only come from a second ClientHello.
    let mut first = offering(Some("one.example"), "ffdhe2048:X25519", SslVersion::TLS1_3)
        .connect(addr)
        .await
        .expect("after a HelloRetryRequest");
    assert_eq!(group(&first), "X25519");
    assert_eq!(peer_cn(&first), "one.example");
    assert!(options_ok(&mut first, addr, "hrr-1").await);
    assert!(
        Client::sni("one.example").connect(addr).await.is_err(),
        "the retried connection holds the domain's one slot"
    );
    drop(first);
    let mut again = None;
    assert_eventually!(
        {
            if again.is_none() {
                again = Client::sni("one.example").connect(addr).await.ok();
            }
            again.is_some()
        },
        T,
        "the slot comes back when the retried connection closes (it was taken once)"
    );
    let mut again = again.expect("connected");
    assert!(options_ok(&mut again, addr, "hrr-2").await);
    rt.shutdown();
}

/// `groups` holds per domain: the dispatch context's groups are already in the `Ssl` when
/// the ClientHello callback switches it, so a domain's own must be set on the `Ssl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_hold_per_domain() {
    let t = Tree::new("");
    t.server_domain("pinned", "groups = \"P-384\"\n");
    t.server_domain("lax", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let offering = |sni: &str, groups: &str, version: SslVersion| Client {
        groups: Some(groups.to_owned()),
        ..Client::sni_only(sni, version)
    };
    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        // The certificate's curve (P-256) is offered, so that TLS 1.2's ECDSA is possible:
        // only the key exchange fails, and the same offer passes on `lax`.
        assert!(
            offering("pinned.example", "X25519:P-256", version)
                .connect(addr)
                .await
                .is_err(),
            "{version:?}"
        );
        offering("lax.example", "X25519:P-256", version)
            .connect(addr)
            .await
            .expect("lax, the same offer");
        let mut s = offering("pinned.example", "X25519:P-256:P-384", version)
            .connect(addr)
            .await
            .expect("pinned");
        assert_eq!(group(&s), "secp384r1", "{version:?}");
        assert!(options_ok(&mut s, addr, "pinned").await, "{version:?}");
        let s = offering("lax.example", "X25519:P-256:P-384", version)
            .connect(addr)
            .await
            .expect("lax");
        assert_eq!(group(&s), "X25519", "{version:?}");
    }
    rt.shutdown();
}

/// A TLS 1.2 client cannot renegotiate: each renegotiation would be a full handshake's
/// server CPU on one connection, as often as the client likes (OpenSSL 3.0 refuses
/// client-initiated renegotiation unless told otherwise; siprox never tells it). Driven
/// with `openssl s_client`'s `R` command once the handshake is done: siprox answers with
/// the `no_renegotiation` alert, and a new connection is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_renegotiate_tls12() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Command, Stdio};
    let t = Tree::new("");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let (stdout, stderr) = tokio::task::spawn_blocking(move || {
        use std::sync::mpsc::{channel, RecvTimeoutError};
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-tls1_2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client runs (package openssl)");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        let mut seen = Vec::new();
        // The session block ends the handshake's output; s_client reads commands after it.
        loop {
            let l = rx.recv_timeout(left()).expect("the handshake's output");
            let end = l.starts_with("    Verify return code");
            seen.push(l);
            if end {
                break;
            }
        }
        stdin.write_all(b"R\n").expect("R written");
        // siprox's alert ends the connection, and s_client with it.
        loop {
            match rx.recv_timeout(left()) {
                Ok(l) => seen.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break;
                }
            }
        }
        let out = child.wait_with_output().expect("s_client ends");
        (
            seen.join("\n"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("s_client task");
    assert!(stdout.contains("Protocol  : TLSv1.2"), "{stdout}\n{stderr}");
    // s_client tells what it does and what it got back on stderr.
    assert!(
        stderr.contains("RENEGOTIATING") && stderr.contains("no renegotiation"),
        "{stdout}\n{stderr}"
    );
    let mut s = Client::sni_only("localhost", SslVersion::TLS1_2)
        .connect(addr)
        .await
        .expect("a new connection");
    assert!(options_ok(&mut s, addr, "after-reneg").await);
    rt.shutdown();
}
