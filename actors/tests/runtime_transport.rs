//! Runtime transport tests with real sockets on 127.0.0.1:0 and real TLS: siprox answers
//! and forwards over UDP, TCP and TLS, sends responses back on the stream their request came
//! on, and verifies the certificate of TLS next hops. Must never use fixed ports or sleeps
//! as synchronization.

mod common;

use std::time::Duration;

use common::*;
use siprox::config::Proto;
use siprox::proxy::Transport;
use siprox_testkit::pki::{Ca, Spec};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn udp_options_to_siprox_gets_200() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp]), dir.path());
    let addr = rt.local_addr(Transport::Udp).expect("udp addr");
    assert_ne!(addr.port(), 0, "port 0 must be resolved");

    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(options_to(addr, "UDP", "udp-1").as_bytes(), addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(T, sock.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status(&reply), Some(200), "{reply}");
    assert_eq!(from, addr, "reply comes from the listening address");
    assert_eq!(header(&reply, "Call-ID"), Some("udp-1"));
    assert!(rt.stats().messages_in >= 1);
    rt.shutdown();
}

/// Datagrams that queue up on the UDP socket are taken several per receive (recvmmsg) and
/// the replies one batch produces leave together (sendmmsg): a burst of many batches' worth
/// from one client is answered whole, each request once, in the order it was sent, from the
/// listening address.
#[tokio::test]
async fn a_burst_of_udp_requests_is_answered_whole_and_in_order() {
    const N: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp]), dir.path());
    let addr = rt.local_addr(Transport::Udp).expect("udp addr");
    // A 4 MiB receive buffer: the replies wait there while the test sends the rest.
    let sock = siprox_testkit::ua::udp_bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    for i in 0..N {
        sock.send_to(
            options_to(addr, "UDP", &format!("burst-{i}")).as_bytes(),
            addr,
        )
        .await
        .expect("send");
    }
    let mut buf = vec![0u8; 65535];
    for i in 0..N {
        let (n, from) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("reply {i} of {N} in time"))
            .expect("recv");
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(status(&reply), Some(200), "{reply}");
        assert_eq!(from, addr, "reply comes from the listening address");
        let want = format!("burst-{i}");
        assert_eq!(
            header(&reply, "Call-ID"),
            Some(want.as_str()),
            "replies in request order"
        );
    }
    assert_eq!(rt.stats().send_failures, 0);
    rt.shutdown();
}

#[tokio::test]
async fn tcp_and_tls_options_get_200_and_ping_gets_pong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Tcp, Proto::Tls]), dir.path());
    let tcp_addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");

    let mut tcp = TcpStream::connect(tcp_addr).await.expect("connect");
    let mut buf = Vec::new();
    send(&mut tcp, &options_to(tcp_addr, "TCP", "tcp-1")).await;
    let reply = read_message(&mut tcp, &mut buf, T)
        .await
        .expect("tcp reply");
    assert_eq!(status(&reply), Some(200), "{reply}");

    let mut tls = tls_connect(tls_addr, &ca_file(dir.path())).await;
    let mut buf = Vec::new();
    // Two requests in one write: framing must split them.
    let two = format!(
        "{}{}",
        options_to(tls_addr, "TLS", "tls-1"),
        options_to(tls_addr, "TLS", "tls-2")
    );
    send(&mut tls, &two).await;
    let r1 = read_message(&mut tls, &mut buf, T)
        .await
        .expect("tls reply 1");
    let r2 = read_message(&mut tls, &mut buf, T)
        .await
        .expect("tls reply 2");
    assert_eq!(header(&r1, "Call-ID"), Some("tls-1"), "{r1}");
    assert_eq!(header(&r2, "Call-ID"), Some("tls-2"), "{r2}");
    assert_eq!(status(&r2), Some(200));

    // RFC 5626 keepalive: CRLFCRLF ping, CRLF pong.
    tls.write_all(b"\r\n\r\n").await.expect("ping");
    let mut pong = [0u8; 2];
    tokio::time::timeout(T, tokio::io::AsyncReadExt::read_exact(&mut tls, &mut pong))
        .await
        .expect("pong in time")
        .expect("pong");
    assert_eq!(&pong, b"\r\n");
    rt.shutdown();
}

#[tokio::test]
async fn tls_request_is_forwarded_to_udp_uas_and_the_response_returns_on_the_same_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp, Proto::Tls]), dir.path());
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;

    let mut tls = tls_connect(tls_addr, &ca_file(dir.path())).await;
    let mut buf = Vec::new();
    for i in 0..3 {
        let call_id = format!("fwd-{i}");
        let req = request(
            "MESSAGE",
            &format!("sip:bob@{uas}"),
            "TLS 127.0.0.1:9",
            &call_id,
            "X-Body-Size: 100\r\n",
            "hello",
        );
        send(&mut tls, &req).await;
        let resp = read_message(&mut tls, &mut buf, T)
            .await
            .expect("response over TLS");
        assert_eq!(status(&resp), Some(200), "{resp}");
        assert_eq!(header(&resp, "Call-ID"), Some(call_id.as_str()));
        // siprox removed its own Via: only the client's remains.
        let vias = resp.matches("\r\nVia:").count();
        assert_eq!(vias, 1, "{resp}");
    }
    assert_eq!(uas_peer.count(), 3);
    rt.shutdown();
}

#[tokio::test]
async fn outgoing_tls_verifies_the_ip_san_and_reuses_one_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp, Proto::Tls]), dir.path());
    let udp_addr = rt.local_addr(Transport::Udp).expect("udp");
    // The UAS uses siprox's own dev certificate (IP SAN 127.0.0.1, signed by the dev CA
    // that siprox trusts through [tls] ca_file).
    let certs = dir.path().join("certs");
    let uas_peer = Uas::tls(&certs.join("server.pem"), &certs.join("server.key")).await;
    let uas = uas_peer.addr;

    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let mut buf = vec![0u8; 65535];
    // Concurrent first sends share one connect: both requests leave before any answer.
    for i in 0..2 {
        let req = request(
            "MESSAGE",
            &format!("sip:bob@{uas};transport=tls"),
            &format!("UDP {me}"),
            &format!("out-{i}"),
            "",
            "",
        );
        sock.send_to(req.as_bytes(), udp_addr).await.expect("send");
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .expect("response in time")
            .expect("recv");
        let resp = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(status(&resp), Some(200), "{resp}");
        seen.push(header(&resp, "Call-ID").unwrap_or("").to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["out-0", "out-1"]);
    assert_eq!(uas_peer.connections(), 1, "one outgoing connection, reused");
    rt.shutdown();
}

#[tokio::test]
async fn outgoing_tls_to_an_untrusted_certificate_fails_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp, Proto::Tls]), dir.path());
    let udp_addr = rt.local_addr(Transport::Udp).expect("udp");
    // A certificate from a CA siprox does not trust.
    let other = tempfile::tempdir().expect("tempdir");
    let untrusted = Ca::new("untrusted CA")
        .issue(&Spec::server("localhost").loopback())
        .write(other.path(), "s");
    let uas_peer = Uas::tls(&untrusted.cert_path, &untrusted.key_path).await;
    let uas = uas_peer.addr;

    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let req = request(
        "MESSAGE",
        &format!("sip:bob@{uas};transport=tls"),
        &format!("UDP {me}"),
        "untrusted",
        "",
        "",
    );
    sock.send_to(req.as_bytes(), udp_addr).await.expect("send");
    assert_eventually!(
        rt.stats().handshake_failures >= 1,
        T,
        "siprox must refuse the untrusted certificate: {:?}",
        rt.stats()
    );
    // Our own verification refused it: counted as a certificate failure, whatever the text.
    let s = rt.stats();
    assert_eq!(s.tls_failures.certificate, s.handshake_failures, "{s:?}");
    assert!(uas_peer.connections() >= 1);
    assert_eq!(rt.stats().connections_open, 0);
    rt.shutdown();
}

/// A TLS client limited to TLS 1.2, optionally presenting a client certificate.
async fn tls12_client(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<tokio_openssl::SslStream<TcpStream>, openssl::ssl::Error> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVersion};
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca).expect("ca");
    b.set_max_proto_version(Some(SslVersion::TLS1_2))
        .expect("max");
    if let Some((c, k)) = cert {
        b.set_certificate_chain_file(c).expect("cert");
        b.set_private_key_file(k, SslFiletype::PEM).expect("key");
    }
    let ssl = b
        .build()
        .configure()
        .expect("cfg")
        .into_ssl("127.0.0.1")
        .expect("ssl");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s).connect().await?;
    Ok(s)
}

#[tokio::test]
async fn tls_1_2_is_served_unless_min_version_is_1_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Tls]), dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut s = tls12_client(addr, &ca_file(dir.path()), None)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(s.ssl().version_str(), "TLSv1.2");
    let mut buf = Vec::new();
    send(&mut s, &options_to(addr, "TLS", "v12")).await;
    let r = read_message(&mut s, &mut buf, T).await.expect("reply");
    assert_eq!(status(&r), Some(200));
    rt.shutdown();

    let mut cfg = config(&[Proto::Tls]);
    cfg.tls.min_version = siprox::config::TlsVersion::Tls13;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    assert!(tls12_client(addr, &ca_file(dir.path()), None)
        .await
        .is_err());
    assert_eventually!(rt.stats().handshake_failures == 1, T, "{:?}", rt.stats());
    rt.shutdown();
}

#[tokio::test]
async fn verify_client_require_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tls]);
    cfg.tls.verify_client = siprox::config::VerifyClient::Require;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let ca = ca_file(dir.path());
    assert!(tls12_client(addr, &ca, None).await.is_err());
    assert_eventually!(rt.stats().handshake_failures == 1, T, "{:?}", rt.stats());
    // The dev certificate (signed by the configured CA, clientAuth EKU) is accepted.
    let certs = dir.path().join("certs");
    let mut s = tls12_client(
        addr,
        &ca,
        Some((&certs.join("server.pem"), &certs.join("server.key"))),
    )
    .await
    .expect("handshake with a client certificate");
    let mut buf = Vec::new();
    send(&mut s, &options_to(addr, "TLS", "cc")).await;
    let r = read_message(&mut s, &mut buf, T).await.expect("reply");
    assert_eq!(status(&r), Some(200));
    rt.shutdown();
}

#[tokio::test]
async fn localhost_next_hops_resolve_without_dns_and_tls_verifies_the_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp, Proto::Tls]), dir.path());
    let udp_addr = rt.local_addr(Transport::Udp).expect("udp");
    let udp_uas = Uas::udp().await;
    let udp_uas_addr = udp_uas.addr;
    let certs = dir.path().join("certs");
    let tls_uas = Uas::tls(&certs.join("server.pem"), &certs.join("server.key")).await;
    let tls_uas_addr = tls_uas.addr;

    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let mut buf = vec![0u8; 65535];
    for (ruri, id) in [
        (
            format!("sip:bob@localhost:{}", udp_uas_addr.port()),
            "lh-udp",
        ),
        (
            format!("sip:bob@localhost:{};transport=tls", tls_uas_addr.port()),
            "lh-tls",
        ),
    ] {
        let req = request("MESSAGE", &ruri, &format!("UDP {me}"), id, "", "");
        sock.send_to(req.as_bytes(), udp_addr).await.expect("send");
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .expect("response in time")
            .expect("recv");
        let resp = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(status(&resp), Some(200), "{resp}");
        assert_eq!(header(&resp, "Call-ID"), Some(id));
    }
    assert_eq!(udp_uas.count(), 1);
    assert_eq!(tls_uas.connections(), 1);
    rt.shutdown();
}

/// A TLS 1.3 client gets one session ticket per connection (OpenSSL's default is two; each
/// costs the server a serialised session and a write of its own), and requests written
/// back to back, in separate TLS records that arrive together (siprox reads ahead: several
/// records per read), are each answered.
#[tokio::test]
async fn tls13_one_ticket_per_connection_and_back_to_back_records_all_answered() {
    use openssl::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVersion};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Tls]), dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let tickets = Arc::new(AtomicUsize::new(0));
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_ca_file(ca_file(dir.path())).expect("ca");
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .expect("min");
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let seen = tickets.clone();
    b.set_new_session_callback(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let ssl = b
        .build()
        .configure()
        .expect("cfg")
        .into_ssl("127.0.0.1")
        .expect("ssl");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .expect("handshake");
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    // Three records written one after the other, before any answer is read.
    for i in 0..3 {
        s.write_all(options_to(addr, "TLS", &format!("ahead-{i}")).as_bytes())
            .await
            .expect("write");
    }
    let mut buf = Vec::new();
    for i in 0..3 {
        let r = read_message(&mut s, &mut buf, T).await.expect("reply");
        assert_eq!(status(&r), Some(200), "{r}");
        assert_eq!(header(&r, "Call-ID"), Some(format!("ahead-{i}").as_str()));
    }
    // The tickets came before the first answer (the server sends them right after the
    // handshake), so they have all been read by now.
    assert_eq!(
        tickets.load(Ordering::SeqCst),
        1,
        "session tickets received"
    );
    rt.shutdown();
}

/// Reads from `s` into `raw` until it holds `n` complete responses, within [`T`].
async fn read_responses<S: tokio::io::AsyncRead + Unpin>(s: &mut S, raw: &mut Vec<u8>, n: usize) {
    tokio::time::timeout(T, async {
        loop {
            let mut copy = raw.clone();
            let mut got = 0;
            while got < n {
                match read_message(&mut tokio::io::empty(), &mut copy, T).await {
                    Ok(_) => got += 1,
                    Err(_) => break,
                }
            }
            if got == n {
                return;
            }
            let mut chunk = [0u8; 16384];
            let k = tokio::io::AsyncReadExt::read(s, &mut chunk)
                .await
                .expect("read");
            assert!(k > 0, "closed after {got} responses");
            raw.extend_from_slice(&chunk[..k]);
        }
    })
    .await
    .expect("responses in time");
}

#[tokio::test]
async fn replies_and_the_pong_to_one_read_leave_in_the_order_of_the_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Tls]), dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut tls = tls_connect(addr, &ca_file(dir.path())).await;
    // One write: two requests, a keepalive ping, a third request.
    let text = format!(
        "{}{}\r\n\r\n{}",
        options_to(addr, "TLS", "order-1"),
        options_to(addr, "TLS", "order-2"),
        options_to(addr, "TLS", "order-3")
    );
    send(&mut tls, &text).await;
    let mut raw = Vec::new();
    read_responses(&mut tls, &mut raw, 3).await;
    let raw = String::from_utf8(raw).expect("utf-8");
    let replies: Vec<&str> = raw.split("SIP/2.0 200").skip(1).collect();
    assert!(raw.starts_with("SIP/2.0 200"), "{raw}");
    assert_eq!(replies.len(), 3, "{raw}");
    for (i, r) in replies.iter().enumerate() {
        let id = format!("Call-ID: order-{}\r\n", i + 1);
        assert!(
            r.contains(&id),
            "reply {i} is not for order-{}: {raw}",
            i + 1
        );
    }
    // Each reply has no body: the pong is the one CRLF after the second reply's blank line.
    assert!(replies[0].ends_with("\r\n\r\n") && !replies[0].ends_with("\r\n\r\n\r\n"));
    assert!(
        replies[1].ends_with("\r\n\r\n\r\n"),
        "pong not after reply 2: {raw}"
    );
    assert!(!replies[2].ends_with("\r\n\r\n\r\n"), "{raw}");
    rt.shutdown();
}

#[tokio::test]
async fn a_burst_of_udp_responses_returns_whole_and_in_order_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Udp, Proto::Tls]), dir.path());
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");
    let udp_addr = rt.local_addr(Transport::Udp).expect("udp");
    // A UAS that answers only once it has every request, back to back, so that siprox
    // reads several responses for the one connection in one batch.
    let uas = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let uas_addr = uas.local_addr().expect("addr");
    let mut tls = tls_connect(tls_addr, &ca_file(dir.path())).await;
    const N: usize = 24;
    let mut all = String::new();
    for i in 0..N {
        all.push_str(&request(
            "MESSAGE",
            &format!("sip:bob@{uas_addr}"),
            "TLS 127.0.0.1:9",
            &format!("burst-{i}"),
            "",
            "hello",
        ));
    }
    send(&mut tls, &all).await;
    let mut requests = Vec::new();
    let mut buf = vec![0u8; 65536];
    while requests.len() < N {
        let (n, from) = tokio::time::timeout(T, uas.recv_from(&mut buf))
            .await
            .expect("forwarded request in time")
            .expect("recv");
        assert_eq!(from.port(), udp_addr.port());
        requests.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    for r in &requests {
        uas.send_to(response_for(r, 200, 0).as_bytes(), udp_addr)
            .await
            .expect("send");
    }
    let mut buf = Vec::new();
    for r in &requests {
        let resp = read_message(&mut tls, &mut buf, T)
            .await
            .expect("response over TLS");
        assert_eq!(status(&resp), Some(200), "{resp}");
        assert_eq!(header(&resp, "Call-ID"), header(r, "Call-ID"), "{resp}");
    }
    rt.shutdown();
}

/// A TLS client's socket that, while `held`, keeps what TLS writes instead of sending it,
/// so that several records (and a post-handshake message between them) reach siprox in
/// one TCP write, or cut wherever the test chooses.
#[derive(Debug)]
struct Held {
    tcp: std::net::TcpStream,
    out: Vec<u8>,
    held: bool,
}

impl std::io::Read for Held {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(b)
    }
}

impl std::io::Write for Held {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.held {
            self.out.extend_from_slice(b);
            return Ok(b.len());
        }
        self.tcp.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Reads from `s` (blocking, each read bounded by the socket's timeout) until `raw` holds
/// `n` whole messages; returns them.
fn read_sync<S: std::io::Read>(s: &mut S, raw: &mut Vec<u8>, n: usize) -> Vec<String> {
    loop {
        let mut msgs = Vec::new();
        let mut at = 0;
        while let Some(end) = raw[at..].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[at..at + end + 4]).into_owned();
            let len: usize = header(&head, "Content-Length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            if raw.len() - at < total {
                break;
            }
            msgs.push(String::from_utf8_lossy(&raw[at..at + total]).into_owned());
            at += total;
        }
        if msgs.len() >= n {
            return msgs;
        }
        let mut chunk = [0u8; 16384];
        let k = s.read(&mut chunk).expect("read within the timeout");
        assert!(k > 0, "closed after {} messages", msgs.len());
        raw.extend_from_slice(&chunk[..k]);
    }
}

/// A read that empties OpenSSL's buffer lets siprox skip the next one until the socket is
/// readable again; whatever OpenSSL still holds must be read first: several records in
/// one TCP write, a record bigger than the read buffer, a record cut across two writes,
/// and a KeyUpdate (asking for one back) between two records, all answered in order, and
/// the stream still works both ways under the new keys.
#[tokio::test]
async fn records_openssl_holds_after_a_read_are_all_read_keyupdate_included() {
    use openssl::ssl::{SslConnector, SslMethod, SslVersion};
    use std::io::Write as _;

    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(config(&[Proto::Tls]), dir.path());
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let ca = ca_file(dir.path());
    tokio::task::spawn_blocking(move || {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
        b.set_ca_file(&ca).expect("ca");
        b.set_min_proto_version(Some(SslVersion::TLS1_3))
            .expect("min");
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(T)).expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        let held = Held {
            tcp,
            out: Vec::new(),
            held: false,
        };
        let mut s = b.build().connect("127.0.0.1", held).expect("handshake");
        assert_eq!(s.ssl().version_str(), "TLSv1.3");
        s.get_mut().held = true;
        let mut ids = Vec::new();
        let write = |s: &mut openssl::ssl::SslStream<Held>, id: String, body: &str| {
            let extra = if body.is_empty() {
                ""
            } else {
                "Content-Type: text/plain\r\n"
            };
            let ruri = format!("sip:{addr};transport=tls");
            let m = request("OPTIONS", &ruri, "TLS 127.0.0.1:9", &id, extra, body);
            s.write_all(m.as_bytes()).expect("write");
            id
        };
        for i in 0..3 {
            ids.push(write(&mut s, format!("held-{i}"), ""));
        }
        // One record of 9000 bytes of plaintext: more than one read of the buffer takes.
        ids.push(write(&mut s, "big".into(), &"x".repeat(9000)));
        let cut = s.get_ref().out.len() - 4000;
        ids.push(write(&mut s, "after-big".into(), ""));
        ssl_key_update(&mut s);
        ids.push(write(&mut s, "new-keys".into(), ""));
        let out = std::mem::take(&mut s.get_mut().out);
        s.get_mut().held = false;
        // The big record cut in two TCP writes; the rest, KeyUpdate included, in the second.
        let tcp = &mut s.get_mut().tcp;
        tcp.write_all(&out[..cut]).expect("send");
        tcp.write_all(&out[cut..]).expect("send");
        let mut raw = Vec::new();
        let got = read_sync(&mut s, &mut raw, ids.len());
        let got_ids: Vec<_> = got
            .iter()
            .map(|r| header(r, "Call-ID").unwrap_or("-"))
            .collect();
        assert_eq!(got_ids, ids, "answers in the order of the requests");
        for r in &got {
            assert_eq!(status(r), Some(200), "{r}");
        }
        // Both sides on their new keys: one more request and its answer.
        raw.drain(..got.iter().map(String::len).sum::<usize>());
        write(&mut s, "after-update".into(), "");
        let r = read_sync(&mut s, &mut raw, 1);
        assert_eq!(header(&r[0], "Call-ID"), Some("after-update"), "{}", r[0]);
    })
    .await
    .expect("client");
    rt.shutdown();
}

/// Schedules a KeyUpdate that asks siprox to update its keys too (sent with the next write).
fn ssl_key_update<S>(s: &mut openssl::ssl::SslStream<S>) {
    siprox_actors::tls::ffi::request_key_update(s).expect("key update");
}
