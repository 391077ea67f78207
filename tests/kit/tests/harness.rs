//! Checks the test harness itself, without siprox: the UAC talks straight to the UAS over
//! UDP, TCP and TLS (1.2 and 1.3), and the TLS negatives of the test PKI fail the way they
//! must. When a proxy test fails, this says whether the harness is to blame. Must never
//! start siprox.

use std::time::Duration;

use siprox_testkit::assert_eventually;
use siprox_testkit::pki::{Pki, Tls};
use siprox_testkit::ua::{invite_flow, options_flow, Client, FlowOpts, Transport, Uas, UasOpts};
use siprox_testkit::wire;
use tokio::net::TcpStream;

const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uac_and_uas_complete_invite_and_options_directly_over_each_transport() {
    let pki = Pki::new();
    for t in ALL {
        for tls in [Tls::V12, Tls::V13] {
            let uas = Uas::start(
                t,
                UasOpts {
                    tls: Some(pki.acceptor(&pki.server, Tls::Any)),
                    ..UasOpts::default()
                },
            )
            .await
            .unwrap();
            let conn = pki.connector(None, tls);
            let c = Client::connect(t, uas.addr, Some(&conn)).await.unwrap();
            if t == Transport::Tls {
                let want = if tls == Tls::V12 {
                    "TLSv1.2"
                } else {
                    "TLSv1.3"
                };
                assert_eq!(c.tls_version.as_deref(), Some(want));
            }
            let rep = invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
                .await
                .unwrap_or_else(|e| panic!("{t:?} {tls:?}: {e}"));
            assert!(rep.saw_180, "{t:?}: no 180");
            assert!(rep.record_route.is_empty());
            options_flow(&c, &uas.uri("bob"), FlowOpts::default())
                .await
                .unwrap();
            let methods: Vec<String> = uas
                .received()
                .iter()
                .filter_map(|r| r.msg.method().map(str::to_owned))
                .collect();
            assert_eq!(methods, ["INVITE", "ACK", "BYE", "OPTIONS"], "{t:?}");
            if t == Transport::Udp {
                break; // the TLS version does not matter
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pki_negatives_are_refused_by_a_verifying_client() {
    let pki = Pki::new();
    let conn = pki.connector(None, Tls::Any);
    for (name, id) in [
        ("expired", &pki.expired_server),
        ("wrong name", &pki.wrong_name_server),
    ] {
        let uas = Uas::start(
            Transport::Tls,
            UasOpts {
                tls: Some(pki.acceptor(id, Tls::Any)),
                ..UasOpts::default()
            },
        )
        .await
        .unwrap();
        let r = Client::connect(Transport::Tls, uas.addr, Some(&conn)).await;
        assert!(r.is_err(), "{name} certificate was accepted");
    }
    // The good one passes, and a UDP silent UAS counts without answering.
    let uas = Uas::start(
        Transport::Udp,
        UasOpts {
            silent: true,
            ..UasOpts::default()
        },
    )
    .await
    .unwrap();
    let c = Client::connect(Transport::Udp, uas.addr, None)
        .await
        .unwrap();
    let opts = FlowOpts {
        timeout: Duration::from_millis(300),
        ..FlowOpts::default()
    };
    assert!(options_flow(&c, &uas.uri("x"), opts).await.is_err());
    assert_eq!(uas.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uas_sends_the_body_a_request_asks_for_and_counts_connections() {
    let uas = Uas::udp().await;
    let c = Client::connect(Transport::Udp, uas.addr, None)
        .await
        .unwrap();
    let req = wire::request(
        "MESSAGE",
        &format!("sip:bob@{}", uas.addr),
        &format!("UDP {}", c.local),
        "body-size",
        "X-Body-Size: 1000\r\n",
        "",
    );
    c.send(req.as_bytes()).await.unwrap();
    let resp = c.recv(Duration::from_secs(5)).await.expect("a 200");
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.body().len(), 1000);
    assert_eq!(uas.count(), 1);

    let tcp = Uas::start(Transport::Tcp, UasOpts::default())
        .await
        .unwrap();
    let _a = TcpStream::connect(tcp.addr).await.unwrap();
    let _b = TcpStream::connect(tcp.addr).await.unwrap();
    assert_eventually!(tcp.connections() == 2);
}
