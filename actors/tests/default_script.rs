//! The shipped default script (`conf.d/scripts/default.cfg`, of which
//! `docs/examples/default.cfg` is an exact copy) is not an open relay: an
//! anonymous request for a foreign destination is refused with 403 over UDP, TCP and TLS
//! (also with a made-up to-tag), one that claims one of our users is challenged (407), a
//! client with a verified certificate is relayed, and OPTIONS keepalives to siprox are
//! answered. A request made to look in-dialog (a to-tag, and a Route set that names siprox
//! and then the foreign host, as `loose_route()` follows) is refused with 403 too, and so
//! are an anonymous CANCEL and ACK for the foreign host, while a CANCEL from one of our
//! users is relayed, never challenged. A relayed INVITE goes through a transaction
//! (`t_relay()`: 100 Trying first). Real sockets on 127.0.0.1:0, real TLS.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use siprox::config::{DomainConfig, Proto};
use siprox::proxy::Transport;
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(5);

fn relay_attempt(
    target: std::net::SocketAddr,
    via: &str,
    call: &str,
    from: &str,
    to_tag: &str,
) -> String {
    relay_attempt_with("INVITE", target, via, call, from, to_tag, "")
}

/// `method` for `target`, with `route` (whole header lines) added.
fn relay_attempt_with(
    method: &str,
    target: std::net::SocketAddr,
    via: &str,
    call: &str,
    from: &str,
    to_tag: &str,
    route: &str,
) -> String {
    format!(
        "{method} sip:victim@{target} SIP/2.0\r\n\
         Via: SIP/2.0/{via} 127.0.0.1:9;branch=z9hG4bK-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{from}>;tag=f-{call}\r\n\
         To: <sip:victim@{target}>{to_tag}\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:x@127.0.0.1:9>\r\n\
         {route}Content-Length: 0\r\n\r\n"
    )
}

/// A provisional response (the 100 Trying of a request the script `t_relay()`s).
fn provisional(r: &str) -> bool {
    status(r).is_some_and(|s| s < 200)
}

/// Sends `m` to siprox at `to` from `c` and returns the answer (the final one: a 100
/// Trying is skipped).
async fn ask(c: &UdpSocket, m: &str, to: std::net::SocketAddr) -> String {
    c.send_to(m.as_bytes(), to).await.unwrap();
    let mut b = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(T, c.recv_from(&mut b))
            .await
            .expect("answered")
            .unwrap();
        let r = String::from_utf8_lossy(&b[..n]).to_string();
        if !provisional(&r) {
            return r;
        }
    }
}

/// Sends `m` on the stream `s` and returns the answer (the final one).
async fn ask_stream<S>(s: &mut S, buf: &mut Vec<u8>, m: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    send(s, m).await;
    loop {
        let r = read_message(s, buf, T).await.unwrap();
        if !provisional(&r) {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_script_refuses_anonymous_relaying() {
    refuses_anonymous_relaying(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf.d/scripts/default.cfg"
    ))
    .await;
}

/// The example in docs/examples (the docs call it a complete, tested starting point) is
/// the shipped script itself, byte for byte: every test that runs
/// conf.d/scripts/default.cfg holds for it.
#[test]
fn the_documented_example_is_the_shipped_default_script() {
    let shipped = include_str!("../../conf.d/scripts/default.cfg");
    let documented = include_str!("../../docs/examples/default.cfg");
    assert!(
        shipped == documented,
        "docs/examples/default.cfg must be a copy of conf.d/scripts/default.cfg"
    );
}

async fn refuses_anonymous_relaying(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let certs = dir.path().join("certs");
    let phone = client_cert(&ca, "alice", &certs);
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::copy(script, dir.path().join("scripts/default.cfg")).unwrap();
    let mut cfg = config(&[Proto::Udp, Proto::Tcp, Proto::Tls]);
    cfg.script.file = Some("scripts/default.cfg".into());
    cfg.tls.verify_client = siprox::config::VerifyClient::Optional;
    cfg.domains.insert(
        "example".into(),
        DomainConfig {
            names: vec!["example.com".into()],
            ..DomainConfig::default()
        },
    );
    let rt = start(cfg, dir.path());
    let udp = rt.local_addr(Transport::Udp).unwrap();
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    let tls = rt.local_addr(Transport::Tls).unwrap();
    // The foreign destination: a UAS on another loopback address (not siprox's), counting
    // what reaches it and answering 200.
    let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let uas = sock.local_addr().unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = reached.clone();
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a2 = acks.clone();
    tokio::spawn(async move {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut b).await {
            let req = String::from_utf8_lossy(&b[..n]).to_string();
            if req.starts_with("ACK ") {
                a2.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if status(&req).is_some() {
                continue;
            }
            r2.fetch_add(1, Ordering::SeqCst);
            let _ = sock
                .send_to(response_for(&req, 200, 0).as_bytes(), from)
                .await;
        }
    });

    // UDP: anonymous, foreign From -> 403; with a to-tag -> 403; our domain -> 407.
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (call, from, to_tag, want) in [
        ("udp-anon", "mallory@evil.example", "", 403),
        ("udp-tag", "mallory@evil.example", ";tag=made-up", 403),
        ("udp-ours", "alice@example.com", "", 407),
    ] {
        let r = ask(&c, &relay_attempt(uas, "UDP", call, from, to_tag), udp).await;
        // A to-tag without siprox's Route is no dialog of ours: refused, never relayed.
        assert_eq!(status(&r), Some(want), "{call}: {r}");
    }
    // Made to look in-dialog: a to-tag and a Route set that names siprox, then the victim.
    // loose_route() follows it; the core refuses a Route of siprox's that siprox did not
    // sign for this dialog. Also an anonymous CANCEL for the foreign host.
    let crafted = format!("Route: <sip:{udp};lr>, <sip:{uas};lr>\r\n");
    for (method, call, to_tag, route) in [
        ("BYE", "udp-route", ";tag=made-up", crafted.as_str()),
        ("INVITE", "udp-reinvite", ";tag=made-up", crafted.as_str()),
        ("CANCEL", "udp-cancel", "", ""),
    ] {
        let m = relay_attempt_with(method, uas, "UDP", call, "m@evil.example", to_tag, route);
        let r = ask(&c, &m, udp).await;
        assert_eq!(status(&r), Some(403), "{method} {call}: {r}");
    }
    // An anonymous ACK for the foreign host (no answer is ever sent to an ACK).
    c.send_to(
        relay_attempt_with("ACK", uas, "UDP", "udp-ack", "m@evil.example", "", "").as_bytes(),
        udp,
    )
    .await
    .unwrap();

    // A CANCEL of one of our users is never challenged (RFC 3261 §9.2: it cannot be
    // resubmitted): it goes where its INVITE went. The UAS answers it.
    let m = relay_attempt_with(
        "CANCEL",
        uas,
        "UDP",
        "udp-cancel-ours",
        "alice@example.com",
        "",
        "",
    );
    let r = ask(&c, &m, udp).await;
    assert_eq!(status(&r), Some(200), "CANCEL of our user: {r}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "only that CANCEL was relayed"
    );
    reached.store(0, Ordering::SeqCst);

    // OPTIONS keepalive to siprox itself.
    let r = ask(&c, &options_to(udp, "UDP", "keepalive"), udp).await;
    assert_eq!(status(&r), Some(200), "{r}");

    // TCP and TLS without a certificate: 403.
    let mut s = TcpStream::connect(tcp).await.unwrap();
    let mut buf = Vec::new();
    let r = ask_stream(
        &mut s,
        &mut buf,
        &relay_attempt(uas, "TCP", "tcp-anon", "m@evil.example", ""),
    )
    .await;
    assert_eq!(status(&r), Some(403), "{r}");
    let crafted = format!("Route: <sip:{tcp};transport=tcp;lr>, <sip:{uas};lr>\r\n");
    let r = ask_stream(
        &mut s,
        &mut buf,
        &relay_attempt_with(
            "BYE",
            uas,
            "TCP",
            "tcp-route",
            "m@evil.example",
            ";tag=made-up",
            &crafted,
        ),
    )
    .await;
    assert_eq!(status(&r), Some(403), "{r}");
    let mut s = tls_connect(tls, &ca_file(dir.path())).await;
    let mut buf = Vec::new();
    let r = ask_stream(
        &mut s,
        &mut buf,
        &relay_attempt(uas, "TLS", "tls-anon", "m@evil.example", ""),
    )
    .await;
    assert_eq!(status(&r), Some(403), "{r}");
    let crafted = format!("Route: <sip:{tls};transport=tls;lr>, <sip:{uas};lr>\r\n");
    let r = ask_stream(
        &mut s,
        &mut buf,
        &relay_attempt_with(
            "BYE",
            uas,
            "TLS",
            "tls-route",
            "m@evil.example",
            ";tag=made-up",
            &crafted,
        ),
    )
    .await;
    assert_eq!(status(&r), Some(403), "{r}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "nothing anonymous was relayed"
    );
    assert_eq!(
        acks.load(Ordering::SeqCst),
        0,
        "no anonymous ACK was relayed"
    );

    // A verified client certificate is relayed, through a transaction (t_relay): 100
    // Trying first, then the callee's 200.
    let mut s = tls_client(
        tls,
        &certs.join("ca.pem"),
        Some((&phone.0, &phone.1)),
        openssl::ssl::SslVersion::TLS1_3,
    )
    .await;
    let mut buf = Vec::new();
    send(
        &mut s,
        &relay_attempt(uas, "TLS", "tls-cert", "alice@example.com", ""),
    )
    .await;
    let r = read_message(&mut s, &mut buf, T).await.unwrap();
    assert_eq!(status(&r), Some(100), "{r}");
    let r = read_message(&mut s, &mut buf, T).await.unwrap();
    assert_eq!(status(&r), Some(200), "{r}");
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    drop(rt);
}
