//! Requests and responses through a running siprox over real sockets and real TLS: each
//! transport, mixed transports (with the double Record-Route and the in-dialog requests
//! that follow it back), TLS 1.2 and 1.3, retransmissions keeping their branch, and
//! outgoing TLS that verifies the next hop. Must never use fixed ports or bare sleeps.

mod common;

use std::time::Duration;

use common::inproc::{Options, Siprox};
use siprox::config::TlsVersion;
use siprox::sip::{HeaderName, Message};
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::{Pki, Tls};
use siprox_testkit::ua::{
    build_request, invite_flow, options_flow, top_branch, uri_addr, CallIds, Client, FlowOpts, Req,
    Transport, Uas, UasOpts,
};

const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];
const WAIT: Duration = Duration::from_secs(5);

async fn uas(sx: &Siprox, t: Transport) -> Uas {
    Uas::start(
        t,
        UasOpts {
            tls: Some(sx.pki.acceptor(&sx.pki.server, Tls::Any)),
            ..UasOpts::default()
        },
    )
    .await
    .expect("start UAS")
}

fn vias(m: &Message) -> Vec<String> {
    m.list_values(HeaderName::Via)
        .map(|v| v.expect("Via").to_owned())
        .collect()
}

/// The top Via of a request siprox forwarded names siprox on `t`, and the UAC's is below.
fn assert_siprox_via(m: &Message, sx: &Siprox, t: Transport, uac: &Client) {
    let v = m.top_via().expect("top Via");
    assert!(
        v.transport.eq_ignore_ascii_case(t.as_str()),
        "{:?}",
        vias(m)
    );
    assert_eq!(
        (v.host.ip(), v.port),
        (Some(sx.addr(t).ip()), Some(sx.addr(t).port())),
        "{:?}",
        vias(m)
    );
    let all = vias(m);
    assert!(
        all.get(1)
            .is_some_and(|v| v.contains(&uac.local.to_string())),
        "second Via should be the UAC's {}: {all:?}",
        uac.local
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_and_options_through_siprox_over_each_transport() {
    let sx = Siprox::start(Options::default()).await;
    for t in ALL {
        let uas = uas(&sx, t).await;
        let c = sx.client(t).await;
        let rep = invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert!(rep.saw_180, "{t:?}: the 180 was not relayed");
        // Same transport on both sides: siprox stays out of the dialog's route.
        assert!(rep.record_route.is_empty(), "{t:?}: {:?}", rep.record_route);
        options_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let got = uas.received();
        let methods: Vec<&str> = got.iter().filter_map(|r| r.msg.method()).collect();
        assert_eq!(methods, ["INVITE", "ACK", "BYE", "OPTIONS"], "{t:?}");
        for r in &got {
            assert_siprox_via(&r.msg, &sx, t, &c);
            assert_eq!(r.msg.max_forwards().unwrap(), Some(69), "{t:?}");
        }
    }
    sx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transports_double_record_route_and_the_dialog_crosses_back() {
    let sx = Siprox::start(Options::default()).await;
    for (tin, tout) in [
        (Transport::Tls, Transport::Udp),
        (Transport::Udp, Transport::Tls),
        (Transport::Tcp, Transport::Tls),
        (Transport::Tls, Transport::Tcp),
    ] {
        let case = format!("{tin:?} in, {tout:?} out");
        let uas = uas(&sx, tout).await;
        let c = sx.client(tin).await;
        let rep = invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        // Double Record-Route: the entry facing the UAS on top, the one facing the UAC below.
        assert_eq!(rep.record_route.len(), 2, "{case}: {:?}", rep.record_route);
        let top = &rep.record_route[0];
        let bottom = &rep.record_route[1];
        assert_eq!(uri_addr(top), Some(sx.addr(tout)), "{case}: {top}");
        assert_eq!(uri_addr(bottom), Some(sx.addr(tin)), "{case}: {bottom}");
        for (rr, t) in [(top, tout), (bottom, tin)] {
            assert!(rr.contains(";lr"), "{case}: {rr} is not a loose route");
            if t != Transport::Udp {
                assert!(
                    rr.contains(&format!("transport={}", t.param())),
                    "{case}: {rr}"
                );
            }
        }
        // The UAC's route set starts at siprox's UAC-facing side (checked by invite_flow),
        // and what reaches the UAS in-dialog carries no Route: siprox removed both of its own.
        let invite = uas.requests("INVITE").pop().expect("INVITE");
        assert_siprox_via(&invite.msg, &sx, tout, &c);
        let rr: Vec<_> = invite
            .msg
            .record_routes()
            .map(|r| r.unwrap().uri_str.to_owned())
            .collect();
        assert_eq!(rr.len(), 2, "{case}: RR seen by the UAS: {rr:?}");
        for m in ["ACK", "BYE"] {
            let r = uas
                .wait_for(WAIT, |r| r.msg.method() == Some(m))
                .await
                .unwrap_or_else(|| panic!("{case}: no {m} at the UAS"));
            assert_eq!(r.msg.routes().count(), 0, "{case}: {m} still has Route");
            assert_eq!(
                r.msg.request_uri_str(),
                Some(rep.remote_target.as_str()),
                "{case}: {m}"
            );
            assert_siprox_via(&r.msg, &sx, tout, &c);
        }
    }
    sx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_clients_get_through_and_min_version_is_enforced() {
    let pki = std::sync::Arc::new(Pki::new());
    let sx = Siprox::start_with(pki.clone(), Options::default()).await;
    let uas = uas(&sx, Transport::Udp).await;
    for (v, name) in [(Tls::V12, "TLSv1.2"), (Tls::V13, "TLSv1.3")] {
        let conn = pki.connector(None, v);
        let c = Client::connect(Transport::Tls, sx.tls(), Some(&conn))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.tls_version.as_deref(), Some(name));
        invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        options_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    sx.shutdown().await;

    let sx13 = Siprox::start_with(
        pki.clone(),
        Options {
            min_tls: TlsVersion::Tls13,
            ..Options::default()
        },
    )
    .await;
    let old = pki.connector(None, Tls::V12);
    assert!(
        Client::connect(Transport::Tls, sx13.tls(), Some(&old))
            .await
            .is_err(),
        "a TLS 1.2-only client got in although min_version = 1.3"
    );
    let new = pki.connector(None, Tls::V13);
    let c = Client::connect(Transport::Tls, sx13.tls(), Some(&new))
        .await
        .unwrap();
    options_flow(&c, &uas.uri("bob"), FlowOpts::default())
        .await
        .unwrap();
    sx13.shutdown().await;
}

/// Sends the same INVITE bytes twice and a second INVITE (new branch): returns the branch
/// siprox gave each of the three at the UAS.
async fn three_branches(sx: &Siprox, tin: Transport, uas: &Uas) -> [String; 3] {
    let c = sx.client(tin).await;
    let ruri = uas.uri("bob");
    let ids = CallIds::new();
    let first = build_request(&c, &Req::new("INVITE", &ruri, &ids));
    let other = build_request(
        &c,
        &Req {
            cseq: 2,
            ..Req::new("INVITE", &ruri, &ids)
        },
    );
    uas.clear();
    for bytes in [&first, &first, &other] {
        let n = uas.count();
        c.send(bytes).await.unwrap();
        assert!(
            uas.wait_count(n, WAIT).await,
            "{tin:?}: INVITE not forwarded"
        );
    }
    let got = uas.requests("INVITE");
    assert_eq!(got.len(), 3, "{tin:?}");
    [0, 1, 2].map(|i| top_branch(&got[i].msg).expect("branch"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_keeps_its_branch_and_a_new_transaction_gets_another() {
    let sx = Siprox::start(Options::default()).await;
    let uas = Uas::start(
        Transport::Udp,
        UasOpts {
            silent: true,
            ..UasOpts::default()
        },
    )
    .await
    .unwrap();
    for tin in [Transport::Udp, Transport::Tls] {
        let [a, b, c] = three_branches(&sx, tin, &uas).await;
        assert!(a.starts_with("z9hG4bK"), "{a}");
        assert_eq!(a, b, "{tin:?}: the retransmission got another branch");
        assert_ne!(a, c, "{tin:?}: a new transaction reused the branch");
    }
    sx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_tls_refuses_a_next_hop_with_the_wrong_certificate() {
    let pki = std::sync::Arc::new(Pki::new());
    let sx = Siprox::start_with(pki.clone(), Options::default()).await;
    let c = sx.client(Transport::Udp).await;
    for (name, id) in [
        ("wrong name", &pki.wrong_name_server),
        ("expired", &pki.expired_server),
    ] {
        let bad = Uas::start(
            Transport::Tls,
            UasOpts {
                tls: Some(pki.acceptor(id, Tls::Any)),
                ..UasOpts::default()
            },
        )
        .await
        .unwrap();
        let before = sx.stats().handshake_failures;
        let r = options_flow(
            &c,
            &bad.uri("bob"),
            FlowOpts {
                timeout: Duration::from_secs(1),
                ..FlowOpts::default()
            },
        )
        .await;
        assert!(
            r.is_err(),
            "{name}: OPTIONS went through a next hop siprox must not trust"
        );
        assert_eventually!(
            sx.stats().handshake_failures > before,
            WAIT,
            "{name}: no handshake failure counted"
        );
        assert_eq!(
            bad.count(),
            0,
            "{name}: the untrusted UAS received a request"
        );
    }
    // The good certificate still works from the same siprox.
    let good = uas(&sx, Transport::Tls).await;
    options_flow(&c, &good.uri("bob"), FlowOpts::default())
        .await
        .unwrap();
    sx.shutdown().await;
}

/// Responses that pile up for one TLS connection leave gathered into shared writes (up to
/// one TLS record each): every one must still arrive whole, once, as its own message, also
/// when the pile is larger than a record and is cut between messages. The requests, read
/// many at a time, leave for the UAS in batched datagrams, in the order they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_responses_to_one_tls_connection_arrives_whole() {
    const N: u32 = 300;
    let sx = Siprox::start(Options::default()).await;
    // 200s with a body: the burst spans many records (about 1 KiB each, 300 of them).
    let uas = Uas::start(
        Transport::Udp,
        UasOpts {
            body_size: 700,
            ..UasOpts::default()
        },
    )
    .await
    .unwrap();
    let c = sx.client(Transport::Tls).await;
    let ruri = uas.uri("bob");
    let ids = CallIds::new();
    // One write holding every request: siprox forwards them in one pass, and the UAS's
    // answers come back faster than one write each would drain them.
    let mut burst = Vec::new();
    for cseq in 1..=N {
        burst.extend(build_request(
            &c,
            &Req {
                cseq,
                ..Req::new("OPTIONS", &ruri, &ids)
            },
        ));
    }
    let mut sub = c.subscribe(&ids.call_id);
    c.send(&burst).await.unwrap();
    let mut seen = vec![0u32; N as usize + 1];
    for _ in 0..N {
        let m = sub.recv(WAIT).await.expect("a response for every request");
        assert_eq!(m.status(), Some(200), "{m:?}");
        assert_eq!(m.body().len(), 700, "the body arrived cut or merged");
        let cseq = m.cseq().expect("CSeq").seq as usize;
        seen[cseq] += 1;
    }
    assert!(
        seen[1..].iter().all(|&n| n == 1),
        "every CSeq answered once: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(i, &n)| *i > 0 && n != 1)
            .collect::<Vec<_>>()
    );
    // The forwards of one read leave in batches (sendmmsg): in the order they were read.
    let cseqs: Vec<u32> = uas
        .requests("OPTIONS")
        .iter()
        .filter_map(|r| r.msg.cseq().ok().map(|c| c.seq))
        .collect();
    assert_eq!(
        cseqs,
        (1..=N).collect::<Vec<_>>(),
        "the UAS received each request once, in order"
    );
    assert_eq!(sx.stats().framing_errors, 0);
    sx.shutdown().await;
}
