//! Unit tests of the stateless proxy rules: every decision is a pure function, so each
//! RFC 3261 §16 rule is checked here without sockets.

use super::*;

const ME_UDP: &str = "192.0.2.10:5060";
const ME_TLS: &str = "192.0.2.10:5061";

fn proxy(rr: RecordRoute) -> Proxy {
    Proxy::new(ProxyConfig {
        listens: vec![
            Listen {
                transport: Transport::Udp,
                addr: ME_UDP.parse().unwrap(),
                advertise: None,
            },
            Listen {
                transport: Transport::Tls,
                addr: ME_TLS.parse().unwrap(),
                advertise: None,
            },
        ],
        aliases: vec!["proxy.example.com".into()],
        record_route: rr,
        ..ProxyConfig::default()
    })
}

fn udp_in() -> Inbound {
    Inbound {
        transport: Transport::Udp,
        source: "198.51.100.7:5060".parse().unwrap(),
        local: ME_UDP.parse().unwrap(),
        conn: None,
    }
}

fn tls_in() -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: "198.51.100.7:40123".parse().unwrap(),
        local: ME_TLS.parse().unwrap(),
        conn: Some(ConnId(0x2a)),
    }
}

fn msg(s: &str) -> Message {
    Message::parse(Bytes::from(s.replace('\n', "\r\n"))).unwrap()
}

fn invite(ruri: &str, extra: &str) -> Message {
    msg(&format!(
        "INVITE {ruri} SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc;rport\n\
Max-Forwards: 70\n\
To: <sip:bob@example.com>\n\
From: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-1\n\
CSeq: 1 INVITE\n\
{extra}Content-Length: 0\n\n"
    ))
}

/// A request inside dialog `call-1` (To has a tag).
fn in_dialog(method: &str, ruri: &str, extra: &str) -> Message {
    msg(&format!(
        "{method} {ruri} SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye;rport\n\
Max-Forwards: 70\n\
To: <sip:bob@example.com>;tag=b1\n\
From: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-1\n\
CSeq: 2 {method}\n\
{extra}Content-Length: 0\n\n"
    ))
}

fn sent(a: Action) -> (Destination, Message) {
    match a {
        Action::Send { dest, bytes } => (dest, Message::parse(bytes).unwrap()),
        other => panic!("expected Send, got {other:?}"),
    }
}

#[test]
fn forwards_to_ip_literal_with_via_and_max_forwards() {
    let p = proxy(RecordRoute::OnTransportChange);
    let m = invite("sip:bob@203.0.113.5:5070", "");
    let (dest, out) = sent(p.on_request(&m, &udp_in()));
    assert_eq!(
        dest.socket_addr().unwrap(),
        "203.0.113.5:5070".parse().unwrap()
    );
    assert_eq!(dest.transport, Transport::Udp);
    let vias: Vec<_> = out.vias().map(|v| v.unwrap()).collect();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].transport, "UDP");
    assert_eq!(vias[0].host.to_string(), "192.0.2.10");
    assert_eq!(vias[0].port, Some(5060));
    assert!(vias[0].branch().unwrap().starts_with("z9hG4bK-sx"));
    // The sender's Via got rport filled in (received not needed: same IP).
    assert_eq!(vias[1].rport(), Some(Some(5060)));
    assert_eq!(vias[1].received(), None);
    assert_eq!(out.max_forwards().unwrap(), Some(69));
    assert_eq!(out.record_routes().count(), 0);
    out.validate().unwrap();
}

#[test]
fn retransmission_keeps_the_branch_and_cancel_shares_it() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.5", "");
    let b1 = sent(p.on_request(&m, &udp_in()))
        .1
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned();
    let b2 = sent(p.on_request(&m, &udp_in()))
        .1
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned();
    assert_eq!(b1, b2);
    let cancel = msg("CANCEL sip:bob@203.0.113.5 SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc;rport\n\
Max-Forwards: 70\nTo: <sip:bob@example.com>\nFrom: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-1\nCSeq: 1 CANCEL\nContent-Length: 0\n\n");
    let b3 = sent(p.on_request(&cancel, &udp_in()))
        .1
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned();
    assert_eq!(b1, b3);
    let other = invite("sip:bob@203.0.113.5", "").as_bytes().clone();
    let other = Message::parse(Bytes::from(
        String::from_utf8(other.to_vec())
            .unwrap()
            .replace("z9hG4bKabc", "z9hG4bKdef"),
    ))
    .unwrap();
    let b4 = sent(p.on_request(&other, &udp_in()))
        .1
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned();
    assert_ne!(b1, b4);
}

fn reply_code(a: &Action) -> (u16, String) {
    match a {
        Action::Send { bytes, .. } => {
            let m = Message::parse(bytes.clone()).unwrap();
            (m.status().unwrap(), m.reason().unwrap().to_owned())
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn validation_answers() {
    let p = proxy(RecordRoute::Never);
    // Missing From: 400 naming it.
    let m = msg(
        "INVITE sip:b@203.0.113.5 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\n\
To: <sip:b@x>\nCall-ID: c\nCSeq: 1 INVITE\nl: 0\n\n",
    );
    let (code, reason) = reply_code(&p.on_request(&m, &udp_in()));
    assert_eq!(code, 400);
    assert!(reason.contains("From"), "{reason}");
    // Max-Forwards 0: 483, but 200 for OPTIONS to siprox.
    let m = invite("sip:bob@203.0.113.5", "").as_bytes().clone();
    let m = Message::parse(Bytes::from(
        String::from_utf8(m.to_vec())
            .unwrap()
            .replace("Max-Forwards: 70", "Max-Forwards: 0"),
    ))
    .unwrap();
    assert_eq!(reply_code(&p.on_request(&m, &udp_in())).0, 483);
    let o = msg("OPTIONS sip:192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\n\
Max-Forwards: 0\nTo: <sip:192.0.2.10>\nFrom: <sip:a@x>;tag=1\nCall-ID: c\nCSeq: 1 OPTIONS\nl: 0\n\n");
    let a = p.on_request(&o, &udp_in());
    assert_eq!(reply_code(&a).0, 200);
    // Proxy-Require: 420 with Unsupported.
    let m = invite("sip:bob@203.0.113.5", "Proxy-Require: foo, bar\n");
    let a = p.on_request(&m, &udp_in());
    assert_eq!(reply_code(&a).0, 420);
    if let Action::Send { bytes, .. } = a {
        let r = Message::parse(bytes).unwrap();
        assert_eq!(
            r.header_values_by_name("Unsupported").next(),
            Some("foo, bar")
        );
        assert!(r.to().unwrap().tag().is_some());
    }
    // Unknown scheme: 416, even with a Route to follow (§16.3 step 2).
    let m = invite("nobody:opaque", "");
    assert_eq!(reply_code(&p.on_request(&m, &udp_in())).0, 416);
    let m = invite("nobody:opaque", "Route: <sip:203.0.113.9;lr>\n");
    assert_eq!(reply_code(&p.on_request(&m, &udp_in())).0, 416);
    // An ACK is never answered.
    let ack = msg(
        "ACK sip:b@203.0.113.5 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\n\
Max-Forwards: 0\nTo: <sip:b@x>\nFrom: <sip:a@x>;tag=1\nCall-ID: c\nCSeq: 1 ACK\nl: 0\n\n",
    );
    assert!(matches!(p.on_request(&ack, &udp_in()), Action::Drop { .. }));
}

#[test]
fn reply_goes_back_to_source_and_echoes_fields() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.5", "Proxy-Require: x\n");
    let mut rx = udp_in();
    rx.source = "198.51.100.99:40000".parse().unwrap();
    let (dest, r) = sent(p.on_request(&m, &rx));
    assert_eq!(
        dest.socket_addr().unwrap(),
        rx.source,
        "rport asked: source port"
    );
    let v = r.top_via().unwrap();
    assert_eq!(v.received(), Some("198.51.100.99"));
    assert_eq!(v.rport(), Some(Some(40000)));
    assert_eq!(r.call_id().unwrap(), "call-1");
    assert_eq!(r.cseq().unwrap().method, "INVITE");
    assert_eq!(r.from().unwrap().tag(), Some("a1"));
    // Over TLS the reply goes back on the connection.
    let (dest, _) = sent(p.on_request(&m, &tls_in()));
    assert_eq!(dest.conn, Some(ConnId(0x2a)));
}

#[test]
fn loose_routing_removes_our_routes_and_follows_the_next() {
    let p = proxy(RecordRoute::Never);
    let m = invite(
        "sip:bob@example.com",
        "Route: <sip:192.0.2.10;lr>, <sip:192.0.2.10:5061;transport=tls;lr;r2=on>\nRoute: <sip:203.0.113.9:5080;lr>\n",
    );
    let (dest, out) = sent(p.on_request(&m, &udp_in()));
    assert_eq!(
        dest.socket_addr().unwrap(),
        "203.0.113.9:5080".parse().unwrap()
    );
    let routes: Vec<_> = out
        .routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    assert_eq!(routes, vec!["sip:203.0.113.9:5080;lr"]);
    assert_eq!(out.request_uri_str(), Some("sip:bob@example.com"));
}

#[test]
fn own_routes_past_the_two_validation_keeps_are_read_from_the_message() {
    // Validation keeps the first two Route URIs; the rest are parsed where routing reaches
    // them, with the same answers on the built-in route and a script's forward.
    let p = proxy(RecordRoute::Never);
    let fl = p.config().flow_keys.token(0, 0, b"call-1").expect("token");
    let own = format!(
        "Route: <sip:192.0.2.10;lr;fl={fl}>, <sip:proxy.example.com;lr>\nRoute: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.10:5061;transport=tls;lr>\n"
    );
    for (rest, hop) in [
        (
            "Route: <sip:203.0.113.9:5080;lr>, <sip:203.0.113.10;lr>\n",
            "203.0.113.9:5080",
        ),
        ("", "203.0.113.5:5060"),
    ] {
        let bye = in_dialog("BYE", "sip:bob@203.0.113.5", &format!("{own}{rest}"));
        for a in [
            p.on_request(&bye, &udp_in()),
            p.forward_with(&bye, &udp_in(), &ForwardOpts::default()),
        ] {
            let (dest, out) = sent(a);
            assert_eq!(dest.socket_addr(), Some(hop.parse().unwrap()));
            let left: Vec<_> = out
                .routes()
                .map(|r| r.unwrap().uri_str.to_owned())
                .collect();
            let want: Vec<_> = bye
                .routes()
                .skip(4)
                .map(|r| r.unwrap().uri_str.to_owned())
                .collect();
            assert_eq!(left, want);
        }
    }
    // A third Route that is not a SIP URI is refused as the first two would be.
    let tel = in_dialog(
        "BYE",
        "sip:bob@203.0.113.5",
        &format!("{own}Route: <tel:+15551234>\n"),
    );
    assert_eq!(reply_code(&p.on_request(&tel, &udp_in())).0, 416);
    // A forged node token in a third own Route is refused.
    let nf = in_dialog(
        "BYE",
        "sip:bob@203.0.113.5",
        &format!("{own}Route: <sip:192.0.2.10;lr;nf=1.tls.00>\n"),
    );
    assert_eq!(reply_code(&p.on_request(&nf, &udp_in())).0, 403);
    assert_eq!(
        reply_code(&p.forward_with(&nf, &udp_in(), &ForwardOpts::default())).0,
        403
    );
}

#[test]
fn strict_router_before_us_is_undone() {
    let p = proxy(RecordRoute::Never);
    let m = invite(
        "sip:192.0.2.10",
        "Route: <sip:203.0.113.9;lr>\nRoute: <sip:bob@203.0.113.5:5090>\n",
    );
    let (dest, out) = sent(p.on_request(&m, &udp_in()));
    assert_eq!(out.request_uri_str(), Some("sip:bob@203.0.113.5:5090"));
    assert_eq!(
        dest.socket_addr().unwrap(),
        "203.0.113.9:5060".parse().unwrap()
    );
    assert_eq!(out.routes().count(), 1);
}

#[test]
fn double_record_route_on_transport_change() {
    let p = proxy(RecordRoute::OnTransportChange);
    let m = invite("sip:bob@203.0.113.5", "");
    let (dest, out) = sent(p.on_request(&m, &tls_in()));
    assert_eq!(dest.transport, Transport::Udp);
    let rr: Vec<_> = out
        .record_routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    let fl = p
        .config()
        .flow_keys
        .token(0x2a, 0, b"call-1")
        .expect("token");
    assert!(fl.starts_with("2a.0."), "{fl}");
    assert_eq!(
        rr,
        vec![
            format!("sip:192.0.2.10:5060;lr;r2=on;fl={fl}"),
            format!("sip:192.0.2.10:5061;transport=tls;lr;r2=on;fl={fl}")
        ]
    );
    // Our Via carries the inbound connection for the response path.
    let i = p
        .config()
        .flow_keys
        .token(0x2a, 0, b"call-1")
        .expect("token");
    assert_eq!(
        out.top_via().unwrap().params.get("i"),
        Some(Some(i.as_str()))
    );
    // The in-dialog request that comes back with that route set crosses back to TLS.
    let back = in_dialog(
        "BYE",
        "sip:alice@198.51.100.7:40123;transport=tls",
        &format!("Route: <{}>, <{}>\n", rr[0], rr[1]),
    );
    match p.on_request(&back, &udp_in()) {
        Action::Send { dest, bytes } => {
            assert_eq!(dest.transport, Transport::Tls);
            assert_eq!(Message::parse(bytes).unwrap().routes().count(), 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sips_forces_tls_and_names_need_resolution() {
    let p = proxy(RecordRoute::Never);
    match p.on_request(&invite("sips:bob@203.0.113.5", ""), &udp_in()) {
        Action::Send { dest, .. } => {
            assert_eq!(dest.transport, Transport::Tls);
            assert_eq!(dest.socket_addr().map(|a| a.port()), Some(5061));
        }
        other => panic!("{other:?}"),
    }
    match p.on_request(&invite("sip:bob@example.net;transport=tcp", ""), &udp_in()) {
        Action::Forward { hop } => {
            assert_eq!(hop.host, "example.net");
            assert_eq!(hop.transport, Some(Transport::Tcp));
        }
        other => panic!("{other:?}"),
    }
}

/// `sent` (a request siprox forwarded) as it comes back to siprox with `vias` (whole
/// `Via:` lines, CRLF-ended) added above siprox's own: a request that looped.
fn came_back(sent: &Message, vias: &str) -> Message {
    let rest = &sent.head_str()[sent.start_line().len() + 2..];
    msg(&format!("{}\r\n{vias}{rest}", sent.start_line()).replace("\r\n", "\n"))
}

#[test]
fn loop_is_detected_but_spiral_is_not() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.5", "");
    let (_, first) = sent(p.on_request(&m, &udp_in()));
    // The request comes back through another proxy unchanged: a loop.
    let looped = came_back(
        &first,
        "Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKother\r\n",
    );
    assert_eq!(reply_code(&p.on_request(&looped, &udp_in())).0, 482);
    // Through two other proxies: siprox's Via is the third, below the one validation keeps.
    let twice = came_back(
        &first,
        "Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKother\r\nVia: SIP/2.0/TCP 203.0.113.9;branch=z9hG4bKthird\r\n",
    );
    assert_eq!(reply_code(&p.on_request(&twice, &udp_in())).0, 482);
    // Same, but the Request-URI changed on the way: a spiral, forwarded.
    let spiral = looped
        .head_str()
        .replacen("sip:bob@203.0.113.5", "sip:bob@203.0.113.6", 1);
    let spiral = msg(&spiral.replace("\r\n", "\n"));
    assert!(matches!(
        p.on_request(&spiral, &udp_in()),
        Action::Send { .. }
    ));
}

/// A local reply to a validated request (its Via, tags, CSeq and Call-ID as validation
/// read them) is the reply built from the message alone, byte for byte: over requests with
/// and without tags, compact and long field names, `received`/`rport` to add or not.
#[test]
fn reply_from_validation_is_the_reply_from_the_message() {
    let p = proxy(RecordRoute::Never);
    let mut n = 0;
    for (method, via, call_id, to) in [
        (
            "OPTIONS",
            "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc;rport",
            "a1@h",
            "<sip:bob@example.com>",
        ),
        (
            "OPTIONS",
            "SIP/2.0/UDP 203.0.113.1;branch=z9hG4bKx",
            "no-at",
            "<sip:bob@example.com>;tag=t9",
        ),
        (
            "INVITE",
            "SIP/2.0/TCP h.example.com:5070;branch=z9hG4bKy;received=1.2.3.4",
            "c@x.y",
            "Bob <sip:bob@example.com>",
        ),
        (
            "BYE",
            "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKz, SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKw",
            "9f!~%*",
            "<sip:b@e>;tag=q",
        ),
    ] {
        for compact in [false, true] {
            let (v, i) = if compact {
                ("v", "i")
            } else {
                ("Via", "Call-ID")
            };
            let m = msg(&format!(
                "{method} sip:bob@example.com SIP/2.0\n{v}: {via}\nMax-Forwards: 70\n\
From: <sip:alice@example.com>;tag=f1\nTo: {to}\n{i}: {call_id}\nCSeq: 7 {method}\n\
Content-Length: 0\n\n"
            ));
            let checked = m.validated().expect("valid");
            for code in [100, 200, 404, 483] {
                let want = p.reply(&m, &udp_in(), code, "Reason", "");
                let got = p.reply_via(&m, &udp_in(), Some(&checked), code, "Reason", "");
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{method} {via} {code}"
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, 32);
}

/// Loop detection with the second Via validation parsed gives what parsing every Via
/// below the top gives: on requests that looped through none, one, two or three other
/// proxies (Vias on separate lines or comma-joined), with the Request-URI changed or not,
/// and with siprox's Via made foreign or its branch altered.
#[test]
fn loop_check_with_the_validated_via_is_the_parsing_one() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.5", "");
    let (_, first) = sent(p.on_request(&m, &udp_in()));
    let rest = &first.head_str()[first.start_line().len() + 2..];
    let others = [
        "Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKother\r\n",
        "Via: SIP/2.0/TCP 203.0.113.9;branch=z9hG4bKthird\r\n",
        "Via: SIP/2.0/UDP 203.0.113.8;branch=z9hG4bKfourth\r\n",
    ];
    let (mut n, mut loops) = (0, 0);
    for above in 0..=others.len() {
        let mut vias = others[..above].concat();
        for joined in [false, true] {
            if joined && above > 0 {
                // The other proxies' Vias as one comma-joined line.
                vias = format!(
                    "Via: {}\r\n",
                    others[..above]
                        .iter()
                        .map(|v| v.trim_start_matches("Via: ").trim_end())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for (from, to) in [
                ("", ""),
                ("sip:bob@203.0.113.5", "sip:bob@203.0.113.6"),
                ("SIP/2.0/UDP 192.0.2.10:5060", "SIP/2.0/UDP 192.0.2.99:5060"),
                (";branch=z9hG4bK-sx", ";branch=z9hG4bK-sy"),
            ] {
                let text = format!("{}\r\n{vias}{rest}", first.start_line());
                let text = if from.is_empty() {
                    text
                } else {
                    assert!(text.contains(from), "{from}");
                    text.replacen(from, to, 1)
                };
                let m = msg(&text.replace("\r\n", "\n"));
                let checked = m.validated().expect("valid");
                let hash = loop_hash(&m, checked.call_id.as_bytes(), &checked.ids);
                let parsing = p.is_loop(&m, hash, None);
                assert_eq!(
                    p.is_loop(&m, hash, Some(checked.next_via.as_ref())),
                    parsing,
                    "{text}"
                );
                n += 1;
                loops += usize::from(parsing);
            }
        }
    }
    assert!(n >= 28 && loops >= 6, "{n} {loops}");
}

#[test]
fn a_table_branch_replaces_the_stateless_one_and_keeps_loop_detection() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.5", "");
    let opts = ForwardOpts {
        branch: Some("z9hG4bK-sxt0.abc1".into()),
        ..ForwardOpts::default()
    };
    let (_, first) = sent(p.forward_with(&m, &udp_in(), &opts));
    let branch = first.top_via().unwrap().branch().unwrap().to_owned();
    assert!(branch.starts_with("z9hG4bK-sxt0.abc1-"), "{branch}");
    let (_, stateless) = sent(p.forward_with(&m, &udp_in(), &ForwardOpts::default()));
    assert_ne!(stateless.top_via().unwrap().branch(), Some(branch.as_str()));
    // The stateful request comes back unchanged through another proxy: still a loop.
    let looped = came_back(
        &first,
        "Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKother\r\n",
    );
    assert_eq!(
        reply_code(&p.forward_with(&looped, &udp_in(), &opts)).0,
        482
    );
}

#[test]
fn responses_follow_the_via() {
    let p = proxy(RecordRoute::Never);
    let resp = |i: &str| {
        msg(&format!(
            "SIP/2.0 200 OK\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-sx1;i={i}\n\
Via: SIP/2.0/TLS client.invalid:5061;branch=z9hG4bKabc;rport=40123;received=198.51.100.7\n\
To: <sip:bob@example.com>;tag=b\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: call-1\n\
CSeq: 1 INVITE\nContent-Length: 0\n\n"
        ))
    };
    // A forged connection id (the old unsigned form, or another id under a MAC): dropped.
    let good = p
        .config()
        .flow_keys
        .token(0x2a, 0, b"call-1")
        .expect("token");
    let (_, mac) = good.rsplit_once('.').expect("mac");
    for forged in ["2a".to_owned(), format!("2b.0.{mac}")] {
        assert!(
            matches!(
                p.on_response(&resp(&forged), &udp_in()),
                Action::Drop { .. }
            ),
            "{forged}"
        );
    }
    assert_eq!(p.flow_counter().load(Ordering::Relaxed), 2);
    let r = resp(&good);
    let (dest, out) = sent(p.on_response(&r, &udp_in()));
    assert_eq!(dest.transport, Transport::Tls);
    assert_eq!(
        dest.socket_addr().unwrap(),
        "198.51.100.7:40123".parse().unwrap()
    );
    assert_eq!(dest.conn, Some(ConnId(0x2a)));
    assert_eq!(out.vias().count(), 1);
    // Not ours: dropped.
    let r2 = msg(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 203.0.113.1;branch=z9hG4bK1\n\
Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK2\nTo: <sip:b@x>;tag=b\nFrom: <sip:a@x>;tag=a\n\
Call-ID: c\nCSeq: 1 INVITE\nl: 0\n\n",
    );
    assert!(matches!(p.on_response(&r2, &udp_in()), Action::Drop { .. }));
    // Broadcast next hop: dropped.
    let r3 = msg(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-sx1\n\
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK2\nTo: <sip:b@x>;tag=b\nFrom: <sip:a@x>;tag=a\n\
Call-ID: c\nCSeq: 1 INVITE\nl: 0\n\n",
    );
    assert!(matches!(p.on_response(&r3, &udp_in()), Action::Drop { .. }));
}

#[test]
fn datagram_to_stream_gets_content_length() {
    let p = proxy(RecordRoute::Never);
    let m = msg("OPTIONS sip:b@203.0.113.5;transport=tcp SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1\nMax-Forwards: 5\nTo: <sip:b@x>\n\
From: <sip:a@x>;tag=1\nCall-ID: c\nCSeq: 1 OPTIONS\n\n");
    let (dest, out) = sent(p.on_request(&m, &udp_in()));
    assert_eq!(dest.transport, Transport::Tcp);
    assert_eq!(out.content_length(), Some(0));
}

#[test]
fn record_route_params_that_break_out_of_the_uri_are_left_out_but_the_flow_token_stays() {
    let p = proxy(RecordRoute::Never);
    let m = invite("sip:bob@203.0.113.7:5070", "");
    for bad in ["a>b", "x\r\nX-Evil: 1", ";ok\n"] {
        let opts = ForwardOpts {
            record_route: true,
            rr_params: Some(bad.into()),
            ..ForwardOpts::default()
        };
        let (_, out) = sent(p.forward_with(&m, &udp_in(), &opts));
        let rr: Vec<_> = out
            .record_routes()
            .map(|r| r.unwrap().uri_str.to_owned())
            .collect();
        let fl = p.config().flow_keys.token(0, 0, b"call-1").expect("token");
        assert_eq!(
            rr,
            vec![format!("sip:192.0.2.10:5060;lr;fl={fl}")],
            "{bad:?}"
        );
        assert_eq!(out.header_values_by_name("X-Evil").count(), 0);
    }
}

#[test]
fn scripted_forward_applies_the_script_edits() {
    let p = proxy(RecordRoute::Never);
    let m = invite(
        "sip:bob@example.com",
        "X-Drop: me\nRoute: <sip:192.0.2.10;lr>\n",
    );
    let opts = ForwardOpts {
        target: Some(NextHop {
            host: "203.0.113.7".into(),
            port: Some(5070),
            transport: None,
            secure: false,
        }),
        ruri: Some("sip:bob@203.0.113.7:5070".into()),
        record_route: true,
        rr_params: Some("ftag=a1".into()),
        max_forwards: Some(10),
        append_hf: "X-Script: yes\r\n".into(),
        remove_hf: vec!["x-drop".into()],
        script_tag: Some("tenant.example".into()),
        flow: None,
        routes: vec![],
        from_node: false,
        branch: None,
        force_rport: false,
        send_socket: None,
    };
    let (dest, out) = sent(p.forward_with(&m, &udp_in(), &opts));
    assert_eq!(
        dest.socket_addr().unwrap(),
        "203.0.113.7:5070".parse().unwrap()
    );
    assert_eq!(out.request_uri_str(), Some("sip:bob@203.0.113.7:5070"));
    assert_eq!(out.max_forwards().unwrap(), Some(10));
    assert_eq!(out.header_values_by_name("X-Script").next(), Some("yes"));
    assert_eq!(out.header_values_by_name("X-Drop").count(), 0);
    assert_eq!(out.routes().count(), 0, "our own Route is still removed");
    let rr: Vec<_> = out
        .record_routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    let fl = p.config().flow_keys.token(0, 0, b"call-1").expect("token");
    assert_eq!(rr, vec![format!("sip:192.0.2.10:5060;lr;ftag=a1;fl={fl}")]);
    assert_eq!(
        out.top_via().unwrap().params.get("sx"),
        Some(Some("tenant.example"))
    );
    // The reply finds the script again through the Via.
    let resp = format!(
        "SIP/2.0 200 OK\r\n{}\r\nTo: <sip:b@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
        out.fields()
            .filter(|f| f.name == HeaderName::Via)
            .map(|f| format!("Via: {}", f.value))
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    let resp = Message::parse(Bytes::from(resp)).unwrap();
    assert_eq!(p.response_script_tag(&resp), Some("tenant.example"));
    // A flow sends over the registered connection, whatever the Request-URI says.
    let flow = Destination {
        conn: Some(ConnId(7)),
        ..Destination::addr(Transport::Tls, "198.51.100.50:40999".parse().unwrap())
    };
    let opts = ForwardOpts {
        ruri: Some("sip:bob@10.0.0.9:5061;transport=tls".into()),
        flow: Some(flow.clone()),
        ..ForwardOpts::default()
    };
    let (dest, out) = sent(p.forward_with(&invite("sip:bob@example.com", ""), &udp_in(), &opts));
    assert_eq!(dest, flow);
    assert_eq!(out.top_via().unwrap().transport, "TLS");
    // Addressed to siprox itself with nowhere to go: 404.
    let a = p.forward_with(
        &invite("sip:192.0.2.10", ""),
        &udp_in(),
        &ForwardOpts::default(),
    );
    assert_eq!(reply_code(&a).0, 404);
    assert!(p.is_myself("192.0.2.10", None));
    assert!(p.is_myself("proxy.example.com", Some(5060)));
    assert!(!p.is_myself("192.0.2.11", None));
}

#[test]
fn flow_tokens_send_in_dialog_requests_over_the_other_sides_connection() {
    let p = proxy(RecordRoute::Never);
    // Alice (connection 2a) called Bob (connection 7) through siprox; its Record-Route
    // carries both. Requests from either side go over the other side's connection, whatever
    // unreachable Contact the Request-URI names.
    let fl = p
        .config()
        .flow_keys
        .token(0x2a, 7, b"call-1")
        .expect("token");
    let route = format!("Route: <sip:192.0.2.10:5061;transport=tls;lr;fl={fl}>\n");
    let route = route.as_str();
    let from_alice = invite("sip:bob@10.1.2.3:5061;transport=tls", route);
    let (dest, out) = sent(p.on_request(&from_alice, &tls_in()));
    assert_eq!(
        dest.target,
        Target::Flow(ConnId(7)),
        "a connection, never an address to connect to"
    );
    assert_eq!(dest.conn, None);
    assert_eq!(dest.transport, Transport::Tls);
    assert_eq!(out.routes().count(), 0);
    let mut from_bob = tls_in();
    from_bob.conn = Some(ConnId(7));
    let (dest, _) = sent(p.on_request(&from_alice, &from_bob));
    assert_eq!(dest.target, Target::Flow(ConnId(0x2a)));
    // Arriving on a third connection: no flow, the Request-URI decides.
    let mut other = tls_in();
    other.conn = Some(ConnId(99));
    let (dest, _) = sent(p.on_request(&from_alice, &other));
    assert_eq!(dest.conn, None);
    assert_eq!(dest.target, Target::Addr("10.1.2.3:5061".parse().unwrap()));
}

#[test]
fn a_response_to_a_via_host_name_goes_only_over_its_connection() {
    let p = proxy(RecordRoute::Never);
    // No received/rport address: only the connection the request came on can carry it.
    let i = p
        .config()
        .flow_keys
        .token(0x2a, 0, b"call-1")
        .expect("token");
    let r = msg(&format!(
        "SIP/2.0 200 OK\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-sx1;i={i}\n\
Via: SIP/2.0/TLS client.invalid:5061;branch=z9hG4bKabc\n\
To: <sip:bob@example.com>;tag=b\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: call-1\n\
CSeq: 1 INVITE\nContent-Length: 0\n\n"
    ));
    let (dest, _) = sent(p.on_response(&r, &udp_in()));
    assert_eq!(dest.target, Target::Flow(ConnId(0x2a)));
    assert_eq!(dest.socket_addr(), None);
    assert_eq!(dest.connection(), Some(ConnId(0x2a)));
    assert_eq!(dest.server_name.as_deref(), Some("client.invalid"));
}

#[test]
fn forwarding_to_a_flow_records_both_connections() {
    // The flow's own connection goes into the Record-Route token, though the destination
    // has no address: in-dialog requests must find both sides again.
    let p = proxy(RecordRoute::Always);
    let fl = p
        .config()
        .flow_keys
        .token(0x2a, 7, b"call-1")
        .expect("token");
    let route = format!("Route: <sip:192.0.2.10:5061;transport=tls;lr;fl={fl}>\n");
    let (dest, out) = sent(p.on_request(
        &invite("sip:bob@10.1.2.3:5061;transport=tls", &route),
        &tls_in(),
    ));
    assert_eq!(dest.target, Target::Flow(ConnId(7)));
    let rr: Vec<_> = out
        .record_routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    assert_eq!(rr.len(), 1, "{rr:?}");
    assert!(rr[0].ends_with(&format!(";fl={fl}")), "{rr:?}");
    // Via and Record-Route name the TLS listener (IPv4 first: a flow has no family).
    assert!(
        rr[0].starts_with("sip:192.0.2.10:5061;transport=tls"),
        "{rr:?}"
    );
    assert_eq!(out.top_via().unwrap().transport, "TLS");
}

#[test]
fn ip_literal_hops_are_resolved_by_the_core_and_only_names_are_forwarded() {
    let p = proxy(RecordRoute::Never);
    let cases = [
        ("sip:bob@203.0.113.5", Transport::Udp, "203.0.113.5:5060"),
        (
            "sip:bob@203.0.113.5:5070;transport=tcp",
            Transport::Tcp,
            "203.0.113.5:5070",
        ),
        ("sips:bob@203.0.113.5", Transport::Tls, "203.0.113.5:5061"),
        (
            "sip:bob@[2001:db8::1]:5062",
            Transport::Udp,
            "[2001:db8::1]:5062",
        ),
        (
            "sip:bob@example.net;maddr=203.0.113.8",
            Transport::Udp,
            "203.0.113.8:5060",
        ),
    ];
    for (ruri, transport, addr) in cases {
        let (dest, _) = sent(p.on_request(&invite(ruri, ""), &udp_in()));
        assert_eq!(dest.transport, transport, "{ruri}");
        assert_eq!(dest.target, Target::Addr(addr.parse().unwrap()), "{ruri}");
        assert_eq!(dest.conn, None, "{ruri}");
    }
    // A name needs RFC 3263 DNS: the runtime resolves it, then calls forward_request.
    match p.on_request(&invite("sip:bob@example.net", ""), &udp_in()) {
        Action::Forward { hop } => assert_eq!(hop.host, "example.net"),
        other => panic!("{other:?}"),
    }
    // The same for a script's target.
    let to = |host: &str| ForwardOpts {
        target: Some(NextHop {
            host: host.into(),
            port: Some(5080),
            transport: Some(Transport::Tcp),
            secure: false,
        }),
        ..ForwardOpts::default()
    };
    let m = invite("sip:bob@example.com", "");
    let (dest, _) = sent(p.forward_with(&m, &udp_in(), &to("2001:db8::2")));
    assert_eq!(
        dest,
        Destination::addr(Transport::Tcp, "[2001:db8::2]:5080".parse().unwrap())
    );
    assert!(matches!(
        p.forward_with(&m, &udp_in(), &to("sip.example.net")),
        Action::Forward { hop } if hop.host == "sip.example.net"
    ));
}

#[test]
fn forged_or_altered_flow_tokens_are_refused_and_counted() {
    let p = proxy(RecordRoute::Never);
    let mut from_mallory = tls_in();
    from_mallory.conn = Some(ConnId(3));
    let good = p
        .config()
        .flow_keys
        .token(0x2a, 7, b"call-1")
        .expect("token");
    // The old unsigned form, Mallory's own connection paired with a victim's, a valid
    // token with one id changed, and one signed by another key.
    let other = FlowKeys::parse(&"x".repeat(32)).expect("key");
    let (_, mac) = good.rsplit_once('.').expect("mac");
    for fl in [
        "3.7".to_owned(),
        format!("3.7.{mac}"),
        other.token(3, 7, b"call-1").expect("token"),
        format!("{good}0"),
    ] {
        let route = format!("Route: <sip:192.0.2.10:5061;transport=tls;lr;fl={fl}>\n");
        let m = invite("sip:bob@10.1.2.3:5061;transport=tls", &route);
        assert_eq!(reply_code(&p.on_request(&m, &from_mallory)).0, 403, "{fl}");
        let opts = ForwardOpts::default();
        assert_eq!(
            reply_code(&p.forward_with(&m, &from_mallory, &opts)).0,
            403,
            "{fl}"
        );
    }
    assert_eq!(p.flow_counter().load(Ordering::Relaxed), 8);
}

#[test]
fn in_dialog_requests_pass_siprox_only_with_the_route_it_signed_for_the_dialog() {
    // Mallory has no dialog through siprox, writes siprox's Route and a foreign one, and a
    // to-tag: relaying that would skip every check scripts make on initial requests.
    let p = proxy(RecordRoute::Never);
    let forged = "Route: <sip:192.0.2.10;lr>, <sip:203.0.113.66;lr>\n";
    let bye = in_dialog("BYE", "sip:victim@203.0.113.66", forged);
    let (code, reason) = reply_code(&p.on_request(&bye, &udp_in()));
    assert_eq!(code, 403);
    assert!(reason.contains("not issued by siprox"), "{reason}");
    assert_eq!(
        reply_code(&p.forward_with(&bye, &udp_in(), &ForwardOpts::default())).0,
        403
    );
    // The same through a strict router's Request-URI.
    let strict = in_dialog(
        "INFO",
        "sip:192.0.2.10",
        "Route: <sip:victim@203.0.113.66>\n",
    );
    assert_eq!(reply_code(&p.on_request(&strict, &udp_in())).0, 403);
    assert_eq!(p.flow_counter().load(Ordering::Relaxed), 3);
    // A token of another dialog is no better.
    let other = p.config().flow_keys.token(0, 0, b"call-2").expect("token");
    let reused = format!("Route: <sip:192.0.2.10;lr;fl={other}>, <sip:203.0.113.66;lr>\n");
    let bye = in_dialog("BYE", "sip:victim@203.0.113.66", &reused);
    assert_eq!(reply_code(&p.on_request(&bye, &udp_in())).0, 403);
    // The ACK of a non-2xx reply carries the INVITE's preloaded Route (RFC 3261
    // §17.1.1.3): a phone using siprox as outbound proxy names siprox without a token.
    let ack = in_dialog("ACK", "sip:bob@203.0.113.5", "Route: <sip:192.0.2.10;lr>\n");
    let (dest, _) = sent(p.on_request(&ack, &udp_in()));
    assert_eq!(
        dest.socket_addr(),
        Some("203.0.113.5:5060".parse().unwrap())
    );
    // Outside a dialog, a preloaded Route naming siprox (an outbound proxy) still goes.
    let invite = invite("sip:bob@203.0.113.5", "Route: <sip:192.0.2.10;lr>\n");
    let (dest, _) = sent(p.on_request(&invite, &udp_in()));
    assert_eq!(
        dest.socket_addr(),
        Some("203.0.113.5:5060".parse().unwrap())
    );
}

#[test]
fn a_udp_dialog_gets_a_signed_record_route_that_lets_its_requests_through() {
    let p = proxy(RecordRoute::Always);
    let (_, out) = sent(p.on_request(&invite("sip:bob@203.0.113.5", ""), &udp_in()));
    let rr: Vec<_> = out
        .record_routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    let fl = p.config().flow_keys.token(0, 0, b"call-1").expect("token");
    assert_eq!(rr, vec![format!("sip:192.0.2.10:5060;lr;fl={fl}")]);
    // Bob's BYE with the route set he was given goes to Alice's Contact.
    let bye = in_dialog(
        "BYE",
        "sip:alice@198.51.100.7:5060",
        &format!("Route: <{}>\n", rr[0]),
    );
    let (dest, out) = sent(p.on_request(&bye, &udp_in()));
    assert_eq!(
        dest.socket_addr(),
        Some("198.51.100.7:5060".parse().unwrap())
    );
    assert_eq!(out.routes().count(), 0);
    assert_eq!(p.flow_counter().load(Ordering::Relaxed), 0);
}

#[test]
fn a_node_token_is_honoured_only_from_a_peer_node() {
    let mut cfg = proxy(RecordRoute::Never).config().clone();
    cfg.node = Some("sip1".into());
    let p = Proxy::new(cfg);
    let nf = p
        .config()
        .flow_keys
        .node_token(7, Transport::Tcp, "sip1")
        .expect("token");
    let route = format!("Route: <sip:192.0.2.10:5061;transport=tls;lr;nf={nf}>\n");
    let m = invite("sip:alice@10.1.2.3:5061;transport=tcp", &route);
    let node = ForwardOpts {
        from_node: true,
        ..ForwardOpts::default()
    };
    // From a peer node: over the phone's own connection, with the phone's transport.
    let (dest, out) = sent(p.forward_with(&m, &tls_in(), &node));
    assert_eq!(dest.target, Target::Flow(ConnId(7)));
    assert_eq!(dest.transport, Transport::Tcp);
    assert_eq!(out.routes().count(), 0, "the node's own Route is consumed");
    // The same Route from a phone (the token leaked in a forwarded request): 403.
    let a = p.forward_with(&m, &tls_in(), &ForwardOpts::default());
    assert_eq!(reply_code(&a).0, 403);
    // A token for another node, or altered, or an `fl=` token in its place: 403.
    let other = p
        .config()
        .flow_keys
        .node_token(7, Transport::Tcp, "sip2")
        .expect("token");
    let fl = p.config().flow_keys.token(7, 0, b"").expect("token");
    for bad in [other, nf.replace(".tcp.", ".tls."), fl] {
        let r = format!("Route: <sip:192.0.2.10:5061;transport=tls;lr;nf={bad}>\n");
        let a = p.forward_with(&invite("sip:alice@10.1.2.3", &r), &tls_in(), &node);
        assert_eq!(reply_code(&a).0, 403, "{bad}");
    }
    // Without a script nothing says the peer is a node: refused too.
    assert_eq!(reply_code(&p.on_request(&m, &tls_in())).0, 403);
}

fn udp_only(addr: &str) -> Proxy {
    Proxy::new(ProxyConfig {
        listens: vec![Listen {
            transport: Transport::Udp,
            addr: addr.parse().unwrap(),
            advertise: None,
        }],
        record_route: RecordRoute::Always,
        ..ProxyConfig::default()
    })
}

#[test]
fn without_a_tls_listener_the_via_names_a_listener_and_asks_for_connection_reuse() {
    let p = udp_only(ME_UDP);
    let (dest, out) = sent(p.on_request(
        &invite("sip:bob@203.0.113.5:5081;transport=tls", ""),
        &udp_in(),
    ));
    assert_eq!(dest.transport, Transport::Tls);
    let via = out.header(HeaderName::Via).unwrap();
    // Not 5061 (nobody listens there): the UDP listener siprox answers on, with RFC 5923
    // alias and RFC 3581 rport.
    assert!(
        via.starts_with("SIP/2.0/TLS 192.0.2.10:5060;branch=z9hG4bK-sx"),
        "{via}"
    );
    assert!(via.contains(";rport;alias"), "{via}");
    // The Record-Route toward the carrier names the same address, so that the carrier's
    // in-dialog requests (over the aliased connection) are recognised as siprox's.
    let rr = out
        .record_routes()
        .next()
        .unwrap()
        .unwrap()
        .uri_str
        .to_owned();
    assert!(
        rr.starts_with("sip:192.0.2.10:5060;transport=tls;lr"),
        "{rr}"
    );
    assert!(p.uri_is_me(&Uri::parse(&rr).unwrap()));
    // The same for TCP.
    let (dest, out) = sent(p.on_request(
        &invite("sip:bob@203.0.113.5:5082;transport=tcp", ""),
        &udp_in(),
    ));
    assert_eq!(dest.transport, Transport::Tcp);
    let via = out.header(HeaderName::Via).unwrap();
    assert!(
        via.starts_with("SIP/2.0/TCP 192.0.2.10:5060;branch="),
        "{via}"
    );
    assert!(via.contains(";rport;alias"), "{via}");
    // A TLS listener present: named as before, no alias.
    let (_, out) = sent(proxy(RecordRoute::Never).on_request(
        &invite("sip:bob@203.0.113.5:5081;transport=tls", ""),
        &udp_in(),
    ));
    let via = out.header(HeaderName::Via).unwrap();
    assert!(via.starts_with("SIP/2.0/TLS 192.0.2.10:5061;"), "{via}");
    assert!(!via.contains("alias"), "{via}");
}

#[test]
fn a_response_on_siprox_s_own_connection_is_matched_by_its_branch() {
    let p = udp_only(ME_UDP);
    // A Via whose sent-by siprox does not recognise (written before a reload changed the
    // listeners, say), with siprox's branch.
    let r = msg("SIP/2.0 200 OK\n\
Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-sx1;rport=40000;received=192.0.2.10\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc;rport=5060\n\
To: <sip:bob@example.com>;tag=b\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: call-1\n\
CSeq: 1 OPTIONS\nContent-Length: 0\n\n");
    let mut rx = tls_in();
    rx.source = "203.0.113.5:5081".parse().unwrap();
    // Anywhere else: not siprox's Via.
    assert!(matches!(
        p.on_response(&r, &rx),
        Action::Drop {
            reason: "response whose top Via is not siprox"
        }
    ));
    // Over a connection siprox opened: its own branch makes it siprox's.
    let (dest, out) = sent(p.on_response_from(&r, &rx, true));
    assert_eq!(
        dest.socket_addr(),
        Some("198.51.100.7:5060".parse().unwrap())
    );
    assert_eq!(out.vias().count(), 1);
    // Someone else's branch on siprox's connection is still not matched.
    let other = msg("SIP/2.0 200 OK\n\
Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKnotours\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc\n\
To: <sip:bob@example.com>;tag=b\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: call-1\n\
CSeq: 1 OPTIONS\nContent-Length: 0\n\n");
    assert!(matches!(
        p.on_response_from(&other, &rx, true),
        Action::Drop { .. }
    ));
}

#[test]
fn myself_knows_ipv6_listeners_in_either_notation() {
    let p = Proxy::new(ProxyConfig {
        listens: vec![
            Listen {
                transport: Transport::Udp,
                addr: "[::1]:5060".parse().unwrap(),
                advertise: None,
            },
            Listen {
                transport: Transport::Tls,
                addr: "[2001:db8::5]:5061".parse().unwrap(),
                advertise: Some("[2001:db8::7]:5071".into()),
            },
        ],
        ..ProxyConfig::default()
    });
    assert!(p.is_myself("::1", Some(5060)));
    assert!(p.is_myself("[::1]", Some(5060)));
    assert!(p.is_myself("::1", None));
    assert!(p.is_myself("[::1]", None));
    assert!(!p.is_myself("::1", Some(5062)));
    assert!(!p.is_myself("::2", Some(5060)));
    assert!(p.is_myself("2001:db8::7", Some(5071)));
    assert!(p.is_myself("[2001:db8::7]", Some(5071)));
    assert!(p.is_myself("2001:db8::5", Some(5061)));
    assert!(p.uri_is_me(&Uri::parse("sip:[::1]:5060").unwrap()));
    assert!(p.uri_is_me(&Uri::parse("sip:[::1]").unwrap()));
    assert!(p.uri_is_me(&Uri::parse("sips:[2001:db8::7]:5071").unwrap()));
    assert!(!p.uri_is_me(&Uri::parse("sip:[::2]:5060").unwrap()));
}

#[test]
fn force_rport_fills_rport_in_a_via_that_did_not_ask() {
    let p = proxy(RecordRoute::Never);
    let m = msg("INVITE sip:bob@203.0.113.5 SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKnorport\n\
Max-Forwards: 70\n\
To: <sip:bob@example.com>\n\
From: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-nr\n\
CSeq: 1 INVITE\n\
Content-Length: 0\n\n");
    let mut rx = udp_in();
    rx.source = "198.51.100.7:40000".parse().unwrap();
    // Without force_rport the sender's Via stays as it asked (no rport).
    let (_, plain) = sent(p.forward_with(&m, &rx, &ForwardOpts::default()));
    assert_eq!(plain.vias().nth(1).unwrap().unwrap().rport(), None);
    let opts = ForwardOpts {
        force_rport: true,
        ..ForwardOpts::default()
    };
    let (_, forced) = sent(p.forward_with(&m, &rx, &opts));
    let v = forced.vias().nth(1).unwrap().unwrap();
    assert_eq!(
        v.rport(),
        Some(Some(40000)),
        "responses come back to the source port"
    );
}

#[test]
fn a_wildcard_listener_makes_every_local_address_myself() {
    let p = Proxy::new(ProxyConfig {
        listens: vec![
            Listen {
                transport: Transport::Udp,
                addr: "0.0.0.0:5060".parse().unwrap(),
                advertise: None,
            },
            Listen {
                transport: Transport::Udp,
                addr: "[::]:5070".parse().unwrap(),
                advertise: None,
            },
        ],
        local_ips: vec!["192.0.2.5".parse().unwrap(), "2001:db8::5".parse().unwrap()],
        ..ProxyConfig::default()
    });
    assert!(p.is_myself("192.0.2.5", Some(5060)));
    assert!(p.is_myself("127.0.0.2", Some(5060)), "any loopback address");
    assert!(
        !p.is_myself("192.0.2.6", Some(5060)),
        "not one of this host's"
    );
    assert!(
        !p.is_myself("192.0.2.5", Some(5061)),
        "not the listener's port"
    );
    assert!(p.is_myself("[2001:db8::5]", Some(5070)));
    assert!(p.is_myself("::1", Some(5070)));
    assert!(
        !p.is_myself("2001:db8::5", Some(5060)),
        "the v4 wildcard takes v4 only"
    );
    assert!(p.uri_is_me(&Uri::parse("sip:192.0.2.5:5060").unwrap()));
    // Without a wildcard listener the list changes nothing.
    let q = Proxy::new(ProxyConfig {
        listens: vec![Listen {
            transport: Transport::Udp,
            addr: "127.0.0.1:5060".parse().unwrap(),
            advertise: None,
        }],
        local_ips: vec!["192.0.2.5".parse().unwrap()],
        ..ProxyConfig::default()
    });
    assert!(!q.is_myself("192.0.2.5", Some(5060)));
    assert!(!q.is_myself("127.0.0.2", Some(5060)));
}

/// The branch hash takes a field in any pieces (the formatter writes an IPv6 host in
/// several), keeps fields apart, and has no per-process seed: the value is pinned, so that
/// every process and node of one version writes the same branch for a retransmission.
#[test]
fn word_hash_is_streamed_separated_and_seedless() {
    let text = b"sip:bob@192.0.2.1;transport=udp;lr;fl=2a.0.0123456789abcdef01234567";
    let mut whole = super::WordHash::new();
    whole.write(text);
    for cut in 0..=text.len() {
        for cut2 in cut..=text.len() {
            let mut h = super::WordHash::new();
            h.feed(&text[..cut]);
            h.feed(&text[cut..cut2]);
            h.feed(&text[cut2..]);
            h.end_field();
            assert_eq!(h.finish(), whole.finish(), "{cut} {cut2}");
        }
    }
    let fields = |f: &[&[u8]]| {
        let mut h = super::WordHash::new();
        for x in f {
            h.write(x);
        }
        h.finish()
    };
    assert_ne!(fields(&[b"ab", b"c"]), fields(&[b"a", b"bc"]));
    assert_ne!(fields(&[b"abcdefgh", b""]), fields(&[b"abcdefgh"]));
    assert_ne!(fields(&[b"12345678", b"9"]), fields(&[b"1234567", b"89"]));
    assert_ne!(fields(&[b""]), fields(&[b"\0"]));
    assert_eq!(fields(&[text]), PINNED_WORD_HASH);
}

const PINNED_WORD_HASH: u64 = 0x75c0_a2b3_0177_1a4d;

#[test]
fn may_have_param_finds_a_parameter_after_any_semicolon() {
    for (text, want) in [
        ("SIP/2.0/UDP h;branch=z9hG4bK-sx1;sx=a", true),
        ("SIP/2.0/UDP h;branch=z9hG4bK-sx1; SX=a", true),
        ("SIP/2.0/UDP h;branch=x;\r\n\tsx", true),
        ("SIP/2.0/UDP h;branch=z9hG4bK-sx1;i=1.0.ab", false),
        ("SIP/2.0/UDP sx.example.com", false),
        ("SIP/2.0/UDP h;s", false),
        ("SIP/2.0/UDP h;", false),
        ("", false),
    ] {
        assert_eq!(super::may_have_param(text, b"sx"), want, "{text:?}");
    }
}

/// The stateless branch names the sender's transaction: its branch and sent-by. The same
/// branch from another host (of any kind) or port is another transaction.
#[test]
fn the_branch_changes_with_the_sender_s_host_and_port() {
    let p = proxy(RecordRoute::Never);
    let branch_from = |sent_by: &str| {
        let m = msg(&format!(
            "INVITE sip:bob@203.0.113.5 SIP/2.0\n\
Via: SIP/2.0/UDP {sent_by};branch=z9hG4bKabc;rport\n\
Max-Forwards: 70\nTo: <sip:bob@example.com>\nFrom: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-1\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
        ));
        sent(p.on_request(&m, &udp_in()))
            .1
            .top_via()
            .unwrap()
            .branch()
            .unwrap()
            .to_owned()
    };
    const SENT_BY: [&str; 7] = [
        "198.51.100.7:5060",
        "198.51.100.8:5060",
        "198.51.100.7:5061",
        "[2001:db8::7]:5060",
        "[2001:db8::8]:5060",
        "pc.example.com:5060",
        "pc2.example.com:5060",
    ];
    let all: Vec<String> = SENT_BY.iter().map(|s| branch_from(s)).collect();
    for (i, a) in all.iter().enumerate() {
        assert_eq!(a, &branch_from(SENT_BY[i]), "a retransmission keeps it");
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

/// A scripted forward given the runtime's validation is the one that parses the message
/// again: over requests (loose and strict routing, siprox's own Routes, a loop, Max-Forwards
/// absent, 0 or 1, compact forms, several Vias) and every script edit that touches what
/// validation read: the Request-URI (to a literal, a name, siprox itself, garbage),
/// Max-Forwards, removed and appended Via, Route and Max-Forwards lines, a Path, a target,
/// a node token, a table branch, `force_rport()`.
#[test]
fn scripted_forward_with_validation_is_the_parsing_one() {
    let p = proxy(RecordRoute::Never);
    let looped = {
        let (_, first) = sent(p.on_request(&invite("sip:bob@203.0.113.5", ""), &udp_in()));
        came_back(&first, "")
    };
    let mut messages =
        vec![
        invite("sip:bob@203.0.113.5", ""),
        invite("sip:bob@203.0.113.5:5070;transport=tcp", "Record-Route: <sip:rr.example.net;lr>\n"),
        invite("sips:bob@sip.example.net", ""),
        invite("sip:bob@example.com", "Route: <sip:203.0.113.9;lr>\n"),
        invite(
            "sip:bob@example.com",
            "Route: <sip:192.0.2.10;lr>, <sip:203.0.113.9:5080;lr>\nRoute: <sip:203.0.113.10;lr>\n",
        ),
        invite("sip:bob@example.com", "Route: <sip:proxy.example.com;lr>\n"),
        // A strict router put siprox in the Request-URI and the target last in Route.
        invite("sip:192.0.2.10", "Route: <sip:203.0.113.9;lr>, <sip:bob@203.0.113.5>\n"),
        invite("sip:192.0.2.10:5060", ""),
        invite("tel:+15551234", ""),
        in_dialog("BYE", "sip:bob@203.0.113.5", "Route: <sip:192.0.2.10;lr>\n"),
        in_dialog("ACK", "sip:bob@203.0.113.5", ""),
        looped,
    ];
    for mf in ["Max-Forwards: 0\n", "Max-Forwards: 1\n", ""] {
        messages.push(msg(&format!(
            "INVITE sip:bob@203.0.113.5 SIP/2.0\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKabc\n\
{mf}To: <sip:bob@example.com>\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: call-1\n\
CSeq: 1 INVITE\nContent-Length: 0\n\n"
        )));
    }
    messages.push(msg(
        "OPTIONS sip:bob@203.0.113.5 SIP/2.0\n\
v: SIP/2.0/TCP h.example.com:5070;branch=z9hG4bKy;received=1.2.3.4, SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKw\n\
f: <sip:alice@example.com>;tag=f1\nt: <sip:b@e>;tag=q\ni: c@x.y\nCSeq: 7 OPTIONS\nl: 0\n\n",
    ));
    let hop = |h: &str| NextHop {
        host: h.into(),
        port: Some(5070),
        transport: None,
        secure: false,
    };
    // The Request-URI rewritten to a literal, a name, siprox itself, garbage.
    let mut edits: Vec<ForwardOpts> = [
        "sip:carol@203.0.113.77:5090",
        "sip:carol@sip.example.org",
        "sip:192.0.2.10",
        "not a uri",
    ]
    .map(|u| ForwardOpts {
        ruri: Some(u.into()),
        ..ForwardOpts::default()
    })
    .into();
    edits.extend([
        ForwardOpts::default(),
        ForwardOpts {
            max_forwards: Some(5),
            ..ForwardOpts::default()
        },
        ForwardOpts {
            remove_hf: vec!["Max-Forwards".into(), "Via".into()],
            ..ForwardOpts::default()
        },
        ForwardOpts {
            remove_hf: vec!["route".into()],
            append_hf: "Max-Forwards: 3\r\nRoute: <sip:203.0.113.44;lr>\r\nVia: SIP/2.0/UDP 203.0.113.45;branch=z9hG4bKapp\r\n".into(),
            ..ForwardOpts::default()
        },
        ForwardOpts {
            routes: vec!["<sip:203.0.113.50;lr>".into()],
            ..ForwardOpts::default()
        },
        ForwardOpts {
            target: Some(hop("203.0.113.60")),
            ruri: Some("sip:dave@192.0.2.10".into()),
            record_route: true,
            ..ForwardOpts::default()
        },
        ForwardOpts {
            from_node: true,
            force_rport: true,
            branch: Some("z9hG4bK-sxt0.abc1".into()),
            ..ForwardOpts::default()
        },
    ]);
    let (mut n, mut sends) = (0, 0);
    for m in &messages {
        let checked = m.validated().expect("valid");
        for opts in &edits {
            for rx in [udp_in(), tls_in()] {
                let want = p.forward_with(m, &rx, opts);
                let got = p.forward_checked(m, &rx, opts, Some(&checked));
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{}\n{opts:?}",
                    m.head_str()
                );
                n += 1;
                sends += usize::from(matches!(want, Action::Send { .. }));
            }
        }
    }
    assert!(n >= 300 && sends >= 150, "{n} {sends}");
}

/// A validation of another message is refused (in debug builds, as the tests run): the
/// forward would mix the two messages' Routes and tags.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "checked")]
fn a_forward_given_another_messages_validation_is_refused() {
    let p = proxy(RecordRoute::Never);
    let a = invite("sip:bob@203.0.113.5", "");
    let b = invite("sip:bob@203.0.113.5", "");
    let checked = a.validated().expect("valid");
    let _ = p.forward_checked(&b, &udp_in(), &ForwardOpts::default(), Some(&checked));
}
