//! The IPv6 path has the IPv4 path's tests (issue 19): siprox listening on [::1] over UDP,
//! TCP and TLS relays calls in and out over each transport and across transports (double
//! Record-Route, in-dialog requests crossing back), its Via names its [::1] listener, and
//! the route script's `myself` knows the [::1] listeners in either notation. Real sockets
//! on [::1]:0, real TLS with the kit's PKI (its server certificate names ::1).

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::inproc::{Options, Siprox};
use siprox::sip::{Host, Message};
use siprox_testkit::pki::Tls;
use siprox_testkit::ua::{
    build_request, invite_flow, options_flow, uri_addr, CallIds, Client, FlowOpts, Req, Transport,
    Uas, UasOpts,
};

const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];
const WAIT: Duration = Duration::from_secs(5);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

async fn uas(sx: &Siprox, t: Transport) -> Uas {
    Uas::start_on(
        t,
        SocketAddr::new(V6, 0),
        UasOpts {
            tls: Some(sx.pki.acceptor(&sx.pki.server, Tls::Any)),
            ..UasOpts::default()
        },
    )
    .await
    .expect("start UAS on [::1]")
}

async fn client(sx: &Siprox, t: Transport) -> Client {
    let c = sx.connector(Tls::Any);
    Client::connect_from(t, sx.addr(t), Some(&c), Some(SocketAddr::new(V6, 0)))
        .await
        .expect("connect to siprox over [::1]")
}

/// The top Via of a request siprox forwarded names siprox's [::1] listener of `t`.
fn assert_siprox_via(m: &Message, sx: &Siprox, t: Transport) {
    let v = m.top_via().expect("top Via");
    assert!(v.transport.eq_ignore_ascii_case(t.as_str()), "{v:?}");
    assert_eq!(v.host, Host::V6(Ipv6Addr::LOCALHOST), "{v:?}");
    assert_eq!(v.port, Some(sx.addr(t).port()), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_and_options_through_siprox_over_each_transport_on_ipv6() {
    let sx = Siprox::start_at(Options::default(), V6, None).await;
    for t in ALL {
        assert!(sx.addr(t).is_ipv6(), "{t:?}: {}", sx.addr(t));
        let uas = uas(&sx, t).await;
        let c = client(&sx, t).await;
        let rep = invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert!(rep.saw_180, "{t:?}: the 180 was not relayed");
        assert!(rep.record_route.is_empty(), "{t:?}: {:?}", rep.record_route);
        options_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let got = uas.received();
        let methods: Vec<&str> = got.iter().filter_map(|r| r.msg.method()).collect();
        assert_eq!(methods, ["INVITE", "ACK", "BYE", "OPTIONS"], "{t:?}");
        for r in &got {
            assert_siprox_via(&r.msg, &sx, t);
        }
    }
    sx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transports_on_ipv6_double_record_route_and_the_dialog_crosses_back() {
    let sx = Siprox::start_at(Options::default(), V6, None).await;
    for (tin, tout) in [
        (Transport::Tls, Transport::Udp),
        (Transport::Udp, Transport::Tls),
        (Transport::Tcp, Transport::Tls),
        (Transport::Udp, Transport::Tcp),
    ] {
        let case = format!("{tin:?} in, {tout:?} out");
        let uas = uas(&sx, tout).await;
        let c = client(&sx, tin).await;
        let rep = invite_flow(&c, &uas.uri("bob"), FlowOpts::default())
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(rep.record_route.len(), 2, "{case}: {:?}", rep.record_route);
        assert_eq!(
            uri_addr(&rep.record_route[0]),
            Some(sx.addr(tout)),
            "{case}"
        );
        assert_eq!(uri_addr(&rep.record_route[1]), Some(sx.addr(tin)), "{case}");
        for m in ["INVITE", "ACK", "BYE"] {
            let r = uas
                .wait_for(WAIT, |r| r.msg.method() == Some(m))
                .await
                .unwrap_or_else(|| panic!("{case}: no {m} at the UAS"));
            assert_siprox_via(&r.msg, &sx, tout);
        }
    }
    sx.shutdown().await;
}

/// `uri == myself` for siprox's own [::1] listeners, as the issue's user tried it.
const MYSELF: &str = r#"route {
    if (is_method("OPTIONS") && uri == myself) {
        sl_send_reply("200", "Myself");
        exit;
    }
    # A bare host (no port) is siprox's on any port it listens on, in either notation.
    if (is_method("OPTIONS") && "[::1]" == myself && "::1" == myself && "::2" != myself) {
        sl_send_reply("404", "Not myself");
        exit;
    }
    sl_send_reply("500", "myself does not know [::1]");
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn myself_knows_the_ipv6_listeners_over_each_transport() {
    let sx = Siprox::start_at(Options::default(), V6, Some(MYSELF)).await;
    for t in ALL {
        let c = client(&sx, t).await;
        let own = format!("sip:[::1]:{}", sx.addr(t).port());
        let other_port = format!("sip:[::1]:{}", sx.addr(t).port().wrapping_add(1000));
        for (ruri, want) in [
            (own.as_str(), 200),
            (other_port.as_str(), 404),
            ("sip:[::2]:5060", 404),
        ] {
            let ids = CallIds::new();
            let sub_id = ids.call_id.clone();
            let mut sub = c.subscribe(&sub_id);
            let req = build_request(&c, &Req::new("OPTIONS", ruri, &ids));
            c.send(&req).await.expect("send");
            let r = sub
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("{t:?} {ruri}: no answer"));
            assert_eq!(r.status(), Some(want), "{t:?} {ruri}: {r:?}");
        }
    }
    sx.shutdown().await;
}
