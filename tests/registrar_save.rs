//! Registrar behaviour from REGISTER bytes to lookup results (RFC 3261 §10.3, RFC 3327,
//! RFC 5626): save, refresh, removal, ordering, limits, Path, flows, expiry, snapshots.
//! Must never panic on any input (the proptest at the end).

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use siprox::proxy::{ConnId, Inbound, Transport};
use siprox::registrar::{
    self, lookup, restore, save, to_snapshot, Delivery, LocationStore, LookupResult, MemoryStore,
    PathMode, SaveError, Settings, Target,
};
use siprox::sip::{Editor, Message};

const NOW: i64 = 1_700_000_000;

fn register(call_id: &str, cseq: u32, extra: &str) -> Message {
    let s = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.0.0.5:5061;branch=z9hG4bK-{call_id}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: \"Alice\" <sip:alice@Example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         User-Agent: test-phone/1.0\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(s)).expect("test REGISTER parses")
}

fn tls(conn: u64, port: u16) -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: format!("203.0.113.7:{port}").parse().unwrap(),
        local: "192.0.2.1:5061".parse().unwrap(),
        conn: Some(ConnId(conn)),
    }
}

fn udp() -> Inbound {
    Inbound {
        transport: Transport::Udp,
        source: "198.51.100.9:5062".parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn alive(_: ConnId) -> bool {
    true
}

fn find(store: &MemoryStore, now: i64, alive: &dyn Fn(ConnId) -> bool) -> LookupResult {
    let u = siprox::sip::Uri::parse("sip:alice@example.com;transport=tls").unwrap();
    lookup(&u, now, &Settings::default(), store, alive).unwrap()
}

fn found(r: LookupResult) -> Box<Target> {
    match r {
        LookupResult::Found(t) => t,
        other => panic!("expected Found, got {other:?}"),
    }
}

fn err_code(r: Result<registrar::Saved, SaveError>) -> (u16, String) {
    let e = r.expect_err("expected an error");
    let rep = e.reply();
    (rep.code, rep.headers)
}

#[test]
fn register_then_lookup_over_own_connection() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let msg = register(
        "c1",
        1,
        "Contact: <sip:alice@10.0.0.5:5061;transport=tls>\r\n",
    );
    let saved = save(&msg, &tls(7, 40000), NOW, &s, &store).unwrap();
    assert_eq!(saved.aor, "sip:alice@example.com");
    assert_eq!(saved.bindings.len(), 1);
    let rep = saved.reply(NOW);
    assert_eq!(rep.code, 200);
    assert!(rep
        .headers
        .contains("Contact: <sip:alice@10.0.0.5:5061;transport=tls>;expires=3600\r\n"));
    assert!(rep
        .headers
        .contains("Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"));
    let bytes = rep.build(&msg, &tls(7, 40000), "totag", "siprox");
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
    assert!(text.contains(";expires=3600"));

    let t = found(find(&store, NOW + 10, &alive));
    assert_eq!(t.ruri, "sip:alice@10.0.0.5:5061;transport=tls");
    assert_eq!(
        t.delivery,
        Delivery::Connection {
            conn: ConnId(7),
            transport: Transport::Tls,
            addr: "203.0.113.7:40000".parse().unwrap()
        }
    );
    assert_eq!(
        t.dst_uri().as_deref(),
        Some("sip:203.0.113.7:40000;transport=tls")
    );
    let d = t.destination().unwrap();
    assert_eq!(d.conn, Some(ConnId(7)));
    assert_eq!(t.binding.user_agent.as_deref(), Some("test-phone/1.0"));
    // sips: and a different case of the host find the same AoR.
    let u = siprox::sip::Uri::parse("sips:alice@EXAMPLE.com").unwrap();
    assert!(matches!(
        lookup(&u, NOW, &s, &store, &alive).unwrap(),
        LookupResult::Found(_)
    ));
}

#[test]
fn expires_header_param_default_min_max() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    let m = register(
        "c",
        1,
        "Expires: 600\r\nContact: <sip:a@10.0.0.1>, <sip:b@10.0.0.1>;expires=120\r\n",
    );
    let saved = save(&m, &rx, NOW, &s, &store).unwrap();
    let h = saved.reply(NOW).headers;
    assert!(h.contains("<sip:a@10.0.0.1>;expires=600"), "{h}");
    assert!(h.contains("<sip:b@10.0.0.1>;expires=120"), "{h}");
    // Too brief: 423 with Min-Expires, nothing changes.
    let m = register("c", 2, "Contact: <sip:c@10.0.0.1>;expires=30\r\n");
    assert_eq!(
        err_code(save(&m, &rx, NOW, &s, &store)),
        (423, "Min-Expires: 60\r\n".to_owned())
    );
    assert_eq!(store.len(), 2);
    // Too long: shortened to max_expires.
    let m = register("c", 3, "Contact: <sip:c@10.0.0.1>;expires=999999\r\n");
    let h = save(&m, &rx, NOW, &s, &store).unwrap().reply(NOW).headers;
    assert!(h.contains("<sip:c@10.0.0.1>;expires=86400"), "{h}");
    // A non-numeric expires param counts as absent (default 3600).
    let m = register(
        "c",
        4,
        "Contact: <sip:d@10.0.0.1>;expires=\"Thu, 01 Dec 1994\"\r\n",
    );
    let h = save(&m, &rx, NOW, &s, &store).unwrap().reply(NOW).headers;
    assert!(h.contains("<sip:d@10.0.0.1>;expires=3600"), "{h}");
    // Remaining time counts down in later replies.
    let m = register("c", 5, "");
    let h = save(&m, &rx, NOW + 100, &s, &store)
        .unwrap()
        .reply(NOW + 100)
        .headers;
    assert!(h.contains("<sip:b@10.0.0.1>;expires=20"), "{h}");
}

#[test]
fn star_removal_rules() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    let m = register("c", 1, "Contact: <sip:a@10.0.0.1>, <sip:b@10.0.0.1>\r\n");
    save(&m, &rx, NOW, &s, &store).unwrap();
    for (extra, why) in [
        ("Contact: *\r\n", "no Expires"),
        ("Contact: *\r\nExpires: 10\r\n", "Expires not 0"),
        ("Contact: *, <sip:x@h>\r\nExpires: 0\r\n", "mixed"),
        ("Contact: *\r\nContact: *\r\nExpires: 0\r\n", "twice"),
    ] {
        let m = register("c", 2, extra);
        assert_eq!(err_code(save(&m, &rx, NOW, &s, &store)).0, 400, "{why}");
    }
    // Same Call-ID, lower CSeq: out of order even for '*'.
    let m = register("c", 1, "Contact: *\r\nExpires: 0\r\n");
    assert_eq!(err_code(save(&m, &rx, NOW, &s, &store)).0, 500);
    assert_eq!(store.len(), 2);
    let m = register("c", 2, "Contact: *\r\nExpires: 0\r\n");
    let saved = save(&m, &rx, NOW, &s, &store).unwrap();
    assert!(saved.bindings.is_empty());
    assert!(!saved.reply(NOW).headers.contains("Contact"));
    assert_eq!(store.len(), 0);
    assert_eq!(find(&store, NOW, &alive), LookupResult::NotFound);
}

#[test]
fn out_of_order_cseq_is_refused_atomically() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    save(
        &register("c", 5, "Contact: <sip:a@10.0.0.1>\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    for cseq in [5, 4] {
        let m = register(
            "c",
            cseq,
            "Contact: <sip:b@10.0.0.1>, <sip:a@10.0.0.1>;expires=0\r\n",
        );
        let e = save(&m, &rx, NOW, &s, &store).unwrap_err();
        assert!(matches!(e, SaveError::OutOfOrder { stored: 5, .. }), "{e}");
        assert_eq!(e.reply().code, 500);
    }
    // Nothing of the refused request was applied (b not added).
    assert_eq!(store.get("sip:alice@example.com").unwrap().len(), 1);
    // Another Call-ID may use any CSeq (a rebooted phone).
    save(
        &register("d", 1, "Contact: <sip:a@10.0.0.1>;expires=0\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    assert_eq!(store.len(), 0);
}

#[test]
fn q_values_pick_highest_then_most_recent() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    let m = register(
        "c",
        1,
        "Contact: <sip:low@10.0.0.1>;q=0.1, <sip:high@10.0.0.2>;q=0.9\r\n",
    );
    let h = save(&m, &rx, NOW, &s, &store).unwrap().reply(NOW).headers;
    assert!(h.contains("<sip:low@10.0.0.1>;expires=3600;q=0.1"), "{h}");
    assert_eq!(found(find(&store, NOW, &alive)).ruri, "sip:high@10.0.0.2");
    let t = found(find(&store, NOW, &alive));
    assert_eq!(t.alternatives, 1);
    // Equal q: the most recently refreshed wins.
    save(
        &register("d", 1, "Contact: <sip:other@10.0.0.3>;q=0.9\r\n"),
        &rx,
        NOW + 5,
        &s,
        &store,
    )
    .unwrap();
    assert_eq!(
        found(find(&store, NOW + 6, &alive)).ruri,
        "sip:other@10.0.0.3"
    );
    // The others, in the same order, for forking: q 0.9, then 0.1.
    let others: Vec<_> = found(find(&store, NOW + 6, &alive))
        .others
        .iter()
        .map(|o| (o.ruri.clone(), o.binding.q))
        .collect();
    assert_eq!(
        others,
        [
            ("sip:high@10.0.0.2".to_owned(), Some(900)),
            ("sip:low@10.0.0.1".to_owned(), Some(100))
        ]
    );
    // Bad q: 400.
    let m = register("c", 2, "Contact: <sip:x@10.0.0.1>;q=1.5\r\n");
    assert_eq!(err_code(save(&m, &rx, NOW, &s, &store)).0, 400);
    // expires=0 removes exactly that contact (URI compared per RFC 3261 §19.1.4).
    save(
        &register("c", 3, "Contact: <sip:HIGH@10.0.0.2>;expires=0\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    assert_eq!(
        store.len(),
        3,
        "user part is case-sensitive: nothing removed"
    );
    save(
        &register("c", 4, "Contact: <sip:high@10.0.0.2;foo=1>;expires=0\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    assert_eq!(store.len(), 2);
}

#[test]
fn bad_contacts_get_400() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    for extra in [
        // RFC 4475 3.1.2.8 (regbadct): URI with headers outside <>.
        "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\r\n",
        "Contact: <sip:a@>\r\n",
        "Contact: <sip:a@h\r\n",
        "Expires: soon\r\nContact: <sip:a@h>\r\n",
        "Contact: <sip:a@h>;+sip.instance=\"<urn:uuid:1>\";reg-id=0\r\nSupported: outbound\r\n",
    ] {
        let m = register("c", 1, extra);
        let (code, _) = err_code(save(&m, &rx, NOW, &s, &store));
        assert_eq!(code, 400, "{extra}");
    }
    assert!(store.is_empty());
    // Not a REGISTER, and a To that is no SIP AoR.
    let inv = Message::parse(Bytes::from_static(
        b"INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    assert!(matches!(
        save(&inv, &rx, NOW, &s, &store),
        Err(SaveError::NotRegister)
    ));
    let tel = Message::parse(Bytes::from_static(
        b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <tel:+1555>;tag=1\r\nTo: <tel:+1555>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    assert_eq!(err_code(save(&tel, &rx, NOW, &s, &store)).0, 404);
}

#[test]
fn max_contacts_gives_503_but_refresh_still_works() {
    let store = MemoryStore::new();
    let s = Settings {
        max_contacts: 2,
        ..Settings::default()
    };
    let rx = tls(1, 1);
    save(
        &register("c", 1, "Contact: <sip:a@h>, <sip:b@h>\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let e = save(
        &register("c", 2, "Contact: <sip:c@h>\r\n"),
        &rx,
        NOW,
        &s,
        &store,
    );
    assert_eq!(err_code(e).0, 503);
    let lower = Settings {
        max_contacts: 1,
        ..Settings::default()
    };
    save(
        &register("c", 3, "Contact: <sip:a@h>\r\n"),
        &rx,
        NOW,
        &lower,
        &store,
    )
    .unwrap();
    assert_eq!(store.len(), 2);
}

#[test]
fn path_modes() {
    let store = MemoryStore::new();
    let rx = tls(1, 1);
    let path = "Path: <sip:edge1.example.net;lr>, <sip:edge2.example.net;lr>\r\n";
    let strict = Settings::default();
    let m = register("c", 1, &format!("{path}Contact: <sip:a@10.0.0.1>\r\n"));
    assert_eq!(
        err_code(save(&m, &rx, NOW, &strict, &store)),
        (420, "Unsupported: path\r\n".to_owned())
    );
    let m = register(
        "c",
        2,
        &format!("{path}Supported: path\r\nContact: <sip:a@10.0.0.1>\r\n"),
    );
    let saved = save(&m, &rx, NOW, &strict, &store).unwrap();
    let h = saved.reply(NOW).headers;
    assert!(
        h.contains("Path: <sip:edge1.example.net;lr>\r\nPath: <sip:edge2.example.net;lr>\r\n"),
        "{h}"
    );
    let t = found(find(&store, NOW, &alive));
    assert_eq!(
        t.route,
        vec!["<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"]
    );
    assert_eq!(t.delivery, Delivery::Uri);
    assert_eq!(t.destination(), None);
    // Apply to an INVITE: new Request-URI and pre-loaded Route on top.
    let inv = Message::parse(Bytes::from_static(
        b"INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    let mut ed = Editor::new(&inv);
    t.apply(&mut ed);
    let out = Message::parse(ed.finish()).unwrap();
    assert_eq!(out.request_uri_str(), Some("sip:a@10.0.0.1"));
    let routes: Vec<_> = out
        .routes()
        .map(|r| r.unwrap().uri_str.to_owned())
        .collect();
    assert_eq!(
        routes,
        ["sip:edge1.example.net;lr", "sip:edge2.example.net;lr"]
    );

    // Lazy: stored without Supported, not echoed.
    let lazy = Settings {
        path_mode: PathMode::Lazy,
        ..Settings::default()
    };
    let store = MemoryStore::new();
    let m = register("c", 1, &format!("{path}Contact: <sip:a@10.0.0.1>\r\n"));
    let saved = save(&m, &rx, NOW, &lazy, &store).unwrap();
    assert!(!saved.reply(NOW).headers.contains("Path:"));
    assert_eq!(saved.bindings[0].path.len(), 2);
    // Off: ignored.
    let off = Settings {
        path_mode: PathMode::Off,
        ..Settings::default()
    };
    let store = MemoryStore::new();
    let saved = save(&m, &rx, NOW, &off, &store).unwrap();
    assert!(saved.bindings[0].path.is_empty());
}

#[test]
fn outbound_flow_is_replaced_by_new_connection() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let contact = "Supported: outbound, path\r\nContact: <sip:alice@192.168.1.20:5061;transport=tls;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\n";
    let saved = save(
        &register("first", 1, contact),
        &tls(10, 40001),
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let h = saved.reply(NOW).headers;
    assert!(h.contains("Require: outbound\r\n"), "{h}");
    assert!(
        h.contains(";+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1"),
        "{h}"
    );
    // The phone reconnects (new connection, new source port, new Call-ID): one binding,
    // now bound to the new connection.
    save(
        &register("second", 1, contact),
        &tls(11, 40002),
        NOW + 30,
        &s,
        &store,
    )
    .unwrap();
    let b = store.get("sip:alice@example.com").unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].flow.conn, Some(ConnId(11)));
    let only_11 = |c: ConnId| c == ConnId(11);
    let t = found(find(&store, NOW + 31, &only_11));
    assert!(matches!(
        t.delivery,
        Delivery::Connection {
            conn: ConnId(11),
            ..
        }
    ));
    // A second flow (reg-id 2) of the same instance is a separate binding.
    let flow2 = contact.replace("reg-id=1", "reg-id=2");
    save(
        &register("third", 1, &flow2),
        &tls(12, 40003),
        NOW + 40,
        &s,
        &store,
    )
    .unwrap();
    assert_eq!(store.len(), 2);
    // Without Supported: outbound, reg-id is ignored (instance alone is the key).
    let store2 = MemoryStore::new();
    let plain = contact.replace("Supported: outbound, path\r\n", "");
    let saved = save(&register("x", 1, &plain), &tls(1, 1), NOW, &s, &store2).unwrap();
    assert_eq!(saved.bindings[0].reg_id, None);
    assert!(!saved.outbound);
}

#[test]
fn closed_connection_means_480_and_falls_back_to_reachable_contact() {
    let store = MemoryStore::new();
    let s = Settings::default();
    save(
        &register(
            "c",
            1,
            "Contact: <sip:alice@192.168.1.20;transport=tls>;q=0.9\r\n",
        ),
        &tls(1, 40000),
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let dead = |_: ConnId| false;
    assert_eq!(
        find(&store, NOW, &dead),
        LookupResult::Unreachable { bindings: 1 }
    );
    // A UDP contact with lower q is still reachable: it is used instead.
    save(
        &register("u", 1, "Contact: <sip:alice@192.168.1.21>;q=0.1\r\n"),
        &udp(),
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let t = found(find(&store, NOW, &dead));
    assert_eq!(
        t.delivery,
        Delivery::Datagram {
            addr: "198.51.100.9:5062".parse().unwrap(),
            local: "192.0.2.1:5060".parse().unwrap()
        }
    );
    assert_eq!(t.binding.flow.conn, None);
    // The phone reconnects and re-registers (same Call-ID, higher CSeq): reachable again.
    save(
        &register(
            "c",
            2,
            "Contact: <sip:alice@192.168.1.20;transport=tls>;q=0.9\r\n",
        ),
        &tls(2, 40100),
        NOW + 1,
        &s,
        &store,
    )
    .unwrap();
    let only_2 = |c: ConnId| c == ConnId(2);
    let t = found(find(&store, NOW + 2, &only_2));
    assert!(matches!(
        t.delivery,
        Delivery::Connection {
            conn: ConnId(2),
            ..
        }
    ));
}

#[test]
fn other_node_holds_the_connection() {
    let store = MemoryStore::new();
    let n2 = Settings {
        node: Some(Arc::from("node-2")),
        ..Settings::default()
    };
    save(
        &register("c", 1, "Contact: <sip:alice@10.0.0.1>\r\n"),
        &tls(1, 1),
        NOW,
        &n2,
        &store,
    )
    .unwrap();
    let n1 = Settings {
        node: Some(Arc::from("node-1")),
        ..Settings::default()
    };
    let u = siprox::sip::Uri::parse("sip:alice@example.com").unwrap();
    // Without the owner's Route (its advertise URI and node token) node 1 cannot reach it.
    assert_eq!(
        lookup(&u, NOW, &n1, &store, &alive).unwrap(),
        LookupResult::Unreachable { bindings: 1 }
    );
    // With it (as the replica holds other nodes' bindings), through that Route.
    let route = "<sip:10.0.0.2:5071;transport=tls;lr;nf=1.tls.00>";
    let mut b = store.get("sip:alice@example.com").unwrap();
    b[0].flow.node_route = Some(Arc::from(route));
    store.put("sip:alice@example.com", b).unwrap();
    let t = found(lookup(&u, NOW, &n1, &store, &alive).unwrap());
    assert_eq!(t.delivery, Delivery::Node(Arc::from("node-2")));
    assert_eq!(t.route, vec![route.to_owned()]);
    let t = found(lookup(&u, NOW, &n2, &store, &alive).unwrap());
    assert!(matches!(t.delivery, Delivery::Connection { .. }));
}

#[test]
fn expiry_and_query() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let rx = tls(1, 1);
    save(
        &register(
            "c",
            1,
            "Contact: <sip:a@h>;expires=100, <sip:b@h>;expires=200\r\n",
        ),
        &rx,
        NOW,
        &s,
        &store,
    )
    .unwrap();
    // Expired bindings are never returned, even before the purge runs.
    assert_eq!(found(find(&store, NOW + 150, &alive)).ruri, "sip:b@h");
    assert_eq!(find(&store, NOW + 200, &alive), LookupResult::NotFound);
    assert_eq!(store.expire(NOW + 100).unwrap(), 1);
    assert_eq!(store.len(), 1);
    // A query (no Contact) lists what is current.
    let q = save(&register("c", 2, ""), &rx, NOW + 150, &s, &store).unwrap();
    assert_eq!(q.bindings.len(), 1);
    assert!(q.reply(NOW + 150).headers.contains("<sip:b@h>;expires=50"));
    assert_eq!(store.expire(NOW + 1000).unwrap(), 1);
    assert!(store.is_empty());
    assert_eq!(store.aor_count(), 0);
}

#[test]
fn snapshot_round_trip_drops_expired_and_connections() {
    let store = MemoryStore::new();
    let s = Settings::default();
    save(&register("c", 1, "Contact: <sip:a@h>;expires=100, <sip:b@h>;expires=3000\r\nPath: <sip:e;lr>\r\nSupported: path\r\n"), &tls(9, 2), NOW, &s, &store)
        .unwrap();
    save(
        &register("u", 1, "Contact: <sip:u@h>\r\n"),
        &udp(),
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let snap = to_snapshot(&store, NOW).unwrap();
    let back = MemoryStore::new();
    let n = restore(&back, &snap, NOW + 500).unwrap();
    assert_eq!(n, 2);
    let b = back.get("sip:alice@example.com").unwrap();
    let tls_b = b.iter().find(|b| b.contact == "sip:b@h").unwrap();
    assert_eq!(tls_b.flow.conn, None);
    assert_eq!(tls_b.path, vec!["<sip:e;lr>"]);
    assert_eq!(tls_b.cseq, 1);
    // The out-of-order check survives a restart too.
    let e = save(
        &register("c", 1, "Contact: <sip:b@h>\r\n"),
        &tls(1, 1),
        NOW + 500,
        &s,
        &back,
    );
    assert_eq!(err_code(e).0, 500);
    // Errors: garbage, wrong format, wrong version, bad transport.
    assert!(restore(&back, b"not json", NOW).is_err());
    assert!(restore(
        &back,
        br#"{"format":"x","version":1,"saved_at":0,"aors":[]}"#,
        NOW
    )
    .is_err());
    assert!(restore(
        &back,
        br#"{"format":"siprox-location","version":9,"saved_at":0,"aors":[]}"#,
        NOW
    )
    .is_err());
    let bad = String::from_utf8(snap)
        .unwrap()
        .replace("\"TLS\"", "\"SCTP\"");
    assert!(restore(&MemoryStore::new(), bad.as_bytes(), NOW).is_err());
}

#[test]
fn restored_tls_binding_is_unreachable_until_reregistration() {
    let store = MemoryStore::new();
    let s = Settings::default();
    save(
        &register(
            "c",
            1,
            "Contact: <sip:alice@192.168.1.20;transport=tls>\r\n",
        ),
        &tls(9, 2),
        NOW,
        &s,
        &store,
    )
    .unwrap();
    let back = MemoryStore::new();
    restore(&back, &to_snapshot(&store, NOW).unwrap(), NOW + 1).unwrap();
    assert_eq!(
        find(&back, NOW + 2, &alive),
        LookupResult::Unreachable { bindings: 1 }
    );
    save(
        &register(
            "c",
            2,
            "Contact: <sip:alice@192.168.1.20;transport=tls>\r\n",
        ),
        &tls(3, 4),
        NOW + 3,
        &s,
        &back,
    )
    .unwrap();
    assert!(matches!(
        find(&back, NOW + 4, &alive),
        LookupResult::Found(_)
    ));
}

#[test]
fn duplicate_contact_in_one_request_is_not_out_of_order() {
    let store = MemoryStore::new();
    let s = Settings::default();
    let m = register(
        "c",
        1,
        "Contact: <sip:a@h>;expires=100\r\nContact: <sip:a@h>;expires=200\r\n",
    );
    let saved = save(&m, &tls(1, 1), NOW, &s, &store).unwrap();
    assert_eq!(saved.bindings.len(), 1);
    assert_eq!(saved.bindings[0].expires, NOW + 200);
}

proptest! {
    #[test]
    fn save_never_panics(
        contact in "[ -~]{0,80}",
        expires in proptest::option::of("[0-9a-z ]{0,12}"),
        path in proptest::option::of("[ -~]{0,40}"),
        cseq in 0u32..5,
    ) {
        let store = MemoryStore::new();
        let mut extra = format!("Contact: {contact}\r\nSupported: path, outbound\r\n");
        if let Some(e) = expires { extra.push_str(&format!("Expires: {e}\r\n")); }
        if let Some(p) = path { extra.push_str(&format!("Path: {p}\r\n")); }
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: x\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        if let Ok(m) = Message::parse(Bytes::from(text)) {
            let rx = tls(1, 1);
            for now in [NOW, NOW + 1] {
                match save(&m, &rx, now, &Settings::default(), &store) {
                    Ok(s) => { let _ = s.reply(now); }
                    Err(e) => { let r = e.reply(); prop_assert!(r.code >= 400); }
                }
            }
            let _ = find(&store, NOW, &alive);
            let snap = to_snapshot(&store, NOW).unwrap();
            restore(&MemoryStore::new(), &snap, NOW).unwrap();
        }
    }

    #[test]
    fn snapshot_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = registrar::from_snapshot(&bytes, NOW);
    }
}
