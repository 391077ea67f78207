//! TLS client domains end to end: siprox connecting out picks the client domain by the
//! destination, sends its SNI, presents its client certificate and verifies the next hop
//! with its CAs; everywhere else the default client applies. The next hops are real TLS
//! servers that record what siprox presented.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tree::Tree;
use common::{request, response_for, status};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{NameType, Ssl, SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use siprox::proxy::Transport;
use siprox_actors::state::messages::ReloadOutcome;
use siprox_actors::RuntimeHandle;
use siprox_testkit::assert_eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio_openssl::SslStream;

const T: Duration = Duration::from_secs(5);

/// What a next hop saw of one request: the SNI, the client certificate's CN, and whether
/// the connection resumed a session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    sni: Option<String>,
    client_cn: Option<String>,
    resumed: bool,
}

/// How a next hop behaves.
#[derive(Clone, Copy, Default)]
struct Hop {
    /// Ask for a client certificate from the test CA; refuse the handshake without one.
    require_client: bool,
    /// Close the connection after each response (siprox must reconnect).
    close_after_reply: bool,
    /// Speak TLS 1.2 only.
    tls12: bool,
    /// Answer with siprox's Via sent-by replaced by an address that is not siprox's (as a
    /// broken or rewriting next hop does): only siprox's branch and connection say whose
    /// response it is.
    mangle_via: bool,
}

/// `req` with its top Via's sent-by replaced by 192.0.2.99:5061.
fn mangle_top_via(req: &str) -> String {
    let Some(start) = req.find("Via: SIP/2.0/TLS ") else {
        return req.to_owned();
    };
    let host = start + "Via: SIP/2.0/TLS ".len();
    let end = host + req[host..].find(';').unwrap_or(0);
    format!("{}192.0.2.99:5061{}", &req[..host], &req[end..])
}

/// A TLS next hop with the certificate `cert`/`key` (PEM), trusting `ca` for client
/// certificates, that answers 200 to every request and records what it saw.
async fn next_hop(
    cert: &[u8],
    key: &[u8],
    ca: &X509,
    hop: Hop,
) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
    b.set_certificate(&X509::from_pem(cert).expect("cert"))
        .expect("cert");
    b.set_private_key(&PKey::private_key_from_pem(key).expect("key"))
        .expect("key");
    b.cert_store_mut().add_cert(ca.clone()).expect("ca");
    if hop.tls12 {
        b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
            .expect("max");
    }
    b.set_verify(if hop.require_client {
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
    } else {
        SslVerifyMode::NONE
    });
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(ssl) = Ssl::new(acceptor.context()) else {
                    return;
                };
                let Ok(mut s) = SslStream::new(ssl, tcp) else {
                    return;
                };
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let who = Seen {
                    sni: s.ssl().servername(NameType::HOST_NAME).map(str::to_owned),
                    client_cn: s.ssl().peer_certificate().and_then(|c| {
                        c.subject_name()
                            .entries_by_nid(Nid::COMMONNAME)
                            .next()
                            .and_then(|e| e.data().to_string().ok())
                    }),
                    resumed: s.ssl().session_reused(),
                };
                let mut buf = Vec::new();
                while let Ok(req) = common::read_message(&mut s, &mut buf, T).await {
                    if let Ok(mut l) = log.lock() {
                        l.push(who.clone());
                    }
                    let req = if hop.mangle_via {
                        mangle_top_via(&req)
                    } else {
                        req
                    };
                    if s.write_all(response_for(&req, 200, 0).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if hop.close_after_reply {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An OPTIONS sent over UDP to siprox for `sip:bob@<hop>;transport=tls`; the status of
/// the response relayed back, if one comes within `T`.
async fn options_via(siprox: SocketAddr, hop: SocketAddr, id: &str) -> Option<u16> {
    let uac = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = uac.local_addr().expect("addr");
    let ruri = format!("sip:bob@{hop};transport=tls");
    let req = request("OPTIONS", &ruri, &format!("UDP {me}"), id, "", "");
    uac.send_to(req.as_bytes(), siprox).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(T, uac.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    status(std::str::from_utf8(&buf[..n]).ok()?)
}

fn tree() -> Tree {
    Tree::new("\n[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n")
}

/// The client domain `carrier` for the next hop at `hop`: SNI `carrier.example`, servers
/// verified with the test CA, and `extra` (TOML lines) in its `client` table.
fn carrier_domain(t: &Tree, hop: SocketAddr, extra: &str) {
    t.domain(
        "carrier",
        &format!(
            "[domains.carrier]\n[domains.carrier.client]\ndestinations = [\"{hop}\"]\n\
             server_name = \"carrier.example\"\nca_file = \"certs/test-ca.pem\"\n{extra}"
        ),
    );
}

/// The `carrier` client certificate lines.
const CLIENT_CERT: &str =
    "certificate = \"certs/siprox-client.pem\"\nprivate_key = \"certs/siprox-client.key\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_domain_of_a_destination_presents_its_certificate_and_sni() {
    let t = tree();
    t.leaf("siprox-client", "siprox-client");
    let (hop_cert, hop_key) = t.ca.leaf("carrier.example");
    let require = Hop {
        require_client: true,
        ..Hop::default()
    };
    let (hop, seen) = next_hop(&hop_cert, &hop_key, &t.ca.cert, require).await;
    carrier_domain(&t, hop, CLIENT_CERT);
    let rt = t.start();
    let udp = rt.local_addr(Transport::Udp).expect("udp");

    assert_eq!(options_via(udp, hop, "carrier-1").await, Some(200));
    let s = seen.lock().expect("seen").clone();
    assert_eq!(
        s,
        [Seen {
            sni: Some("carrier.example".to_owned()),
            client_cn: Some("siprox-client".to_owned()),
            resumed: false,
        }]
    );
    // The next request reuses the connection (one handshake, same identity).
    assert_eq!(options_via(udp, hop, "carrier-2").await, Some(200));
    assert_eq!(seen.lock().expect("seen").len(), 2);
    assert_eq!(rt.stats().handshake_failures, 0);
    rt.shutdown();
}

/// A destination no client domain names gets the default client, which does not trust the
/// tenant's CA: the handshake fails (counted), and nothing reaches that next hop, although
/// the carrier domain would have accepted its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_destinations_get_the_default_client_which_verifies_the_server() {
    let t = tree();
    t.leaf("siprox-client", "siprox-client");
    let (cert, key) = t.ca.leaf("carrier.example");
    let (carrier, _) = next_hop(&cert, &key, &t.ca.cert, Hop::default()).await;
    let (elsewhere, seen) = next_hop(&cert, &key, &t.ca.cert, Hop::default()).await;
    carrier_domain(&t, carrier, "");
    let rt = t.start();
    let udp = rt.local_addr(Transport::Udp).expect("udp");

    assert_eq!(options_via(udp, carrier, "ok-1").await, Some(200));
    let uac = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = uac.local_addr().expect("addr");
    let ruri = format!("sip:bob@{elsewhere};transport=tls");
    let req = request("OPTIONS", &ruri, &format!("UDP {me}"), "else-1", "", "");
    uac.send_to(req.as_bytes(), udp).await.expect("send");
    assert_eventually!(rt.stats().handshake_failures == 1, T, "{:?}", rt.stats());
    assert!(seen.lock().expect("seen").is_empty());
    rt.shutdown();
}

/// siprox as a client resumes its sessions: when the next hop closed the connection, the
/// next request reconnects with the session (TLS 1.3 ticket, TLS 1.2 session) of the one
/// before; with the client domain's `session_resumption = false` it never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_resume_their_sessions() {
    for (tls12, resumption) in [(false, true), (true, true), (false, false), (true, false)] {
        let t = tree();
        let (cert, key) = t.ca.leaf("carrier.example");
        let hop = Hop {
            close_after_reply: true,
            tls12,
            ..Hop::default()
        };
        let (addr, seen) = next_hop(&cert, &key, &t.ca.cert, hop).await;
        carrier_domain(&t, addr, &format!("session_resumption = {resumption}\n"));
        let rt = t.start();
        let udp = rt.local_addr(Transport::Udp).expect("udp");
        let case = format!("tls12={tls12} session_resumption={resumption}");
        for i in 0..3 {
            assert_eq!(
                options_via(udp, addr, &format!("r-{i}")).await,
                Some(200),
                "{case}"
            );
            // The hop closed: wait until siprox saw it, so the next request reconnects.
            assert_eventually!(rt.stats().connections_open == 0, T, "{case}");
        }
        let resumed: Vec<bool> = seen
            .lock()
            .expect("seen")
            .iter()
            .map(|s| s.resumed)
            .collect();
        assert_eq!(resumed, [false, resumption, resumption], "{case}");
        rt.shutdown();
    }
}

/// A client certificate rotated on disk is presented from the next connection on, after
/// the reload, and a session of the old identity is not resumed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_after_the_reload() {
    let t = tree();
    t.leaf("siprox-client", "client-1");
    let (cert, key) = t.ca.leaf("carrier.example");
    let hop = Hop {
        require_client: true,
        close_after_reply: true,
        ..Hop::default()
    };
    let (addr, seen) = next_hop(&cert, &key, &t.ca.cert, hop).await;
    carrier_domain(&t, addr, CLIENT_CERT);
    let rt = t.start();
    let udp = rt.local_addr(Transport::Udp).expect("udp");
    assert_eq!(options_via(udp, addr, "before").await, Some(200));
    assert_eventually!(rt.stats().connections_open == 0, T, "{:?}", rt.stats());

    let carrier = |rt: &RuntimeHandle| {
        let snap = rt.snapshot();
        let d = snap.tls.clients.iter().find(|d| &*d.name == "carrier");
        d.map(|d| d.ctx.clone()).expect("the carrier client domain")
    };
    let before = carrier(&rt);
    t.leaf("siprox-client", "client-2");
    // The directory watcher (50 ms debounce) may publish the rotation before this reload
    // asks; then this one finds nothing left to do. Either way one of the two must have
    // rebuilt the carrier domain, and the next connection must present client-2.
    match rt.reload().await {
        ReloadOutcome::Published { changed, .. } => assert!(changed.iter().any(|d| d == "carrier")),
        ReloadOutcome::Unchanged => {}
        other => panic!("expected the carrier domain rebuilt, got {other:?}"),
    }
    assert!(
        !Arc::ptr_eq(&before, &carrier(&rt)),
        "no reload rebuilt the carrier domain's client context"
    );
    assert_eq!(options_via(udp, addr, "after").await, Some(200));
    let s = seen.lock().expect("seen").clone();
    let who: Vec<_> = s
        .iter()
        .map(|s| (s.client_cn.as_deref(), s.resumed))
        .collect();
    assert_eq!(who, [(Some("client-1"), false), (Some("client-2"), false)]);
    rt.shutdown();
}

/// A response over the connection siprox opened is siprox's by its branch, whatever the
/// sent-by of its Via says; siprox has no TLS listener here (its Via names its UDP listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_on_the_connection_siprox_opened_is_matched_whatever_its_via_says() {
    let t = tree();
    // UDP only: no TLS listener.
    t.write(
        "conf.d/00-core.toml",
        b"[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n\n[runtime]\nworkers = 2\n",
    );
    let (cert, key) = t.ca.leaf("carrier.example");
    let mangle = Hop {
        mangle_via: true,
        ..Hop::default()
    };
    let (hop, seen) = next_hop(&cert, &key, &t.ca.cert, mangle).await;
    carrier_domain(&t, hop, "");
    let rt = t.start();
    let udp = rt.local_addr(Transport::Udp).expect("udp");
    assert_eq!(options_via(udp, hop, "mangled-1").await, Some(200));
    assert_eq!(seen.lock().expect("seen").len(), 1);
    assert_eq!(rt.stats().responses_unmatched, 0);
    rt.shutdown();
}
