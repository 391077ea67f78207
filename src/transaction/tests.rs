//! Unit tests of the transaction layer: each state machine and its timers, matching, the
//! limit, and the response context's choices, on real message bytes parsed by `sip`. They
//! never sleep and never read the clock but for one base `Instant`: time is passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::proxy::{Destination, Inbound, Transport};
use crate::sip::Message;

const T1: Duration = Duration::from_millis(500);

fn msg(s: &str) -> Message {
    Message::parse(Bytes::from(s.replace('\n', "\r\n"))).expect("test message parses")
}

fn caller_via(branch: &str) -> String {
    format!("SIP/2.0/UDP 192.0.2.10:5060;branch={branch}")
}

/// A request from the caller, with the given top Via value.
fn request(method: &str, via: &str, cseq: u32, to_tag: &str) -> Message {
    let to_tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    msg(&format!(
        "{method} sip:bob@example.com SIP/2.0
Via: {via}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>{to_tag}
Call-ID: c1@192.0.2.10
CSeq: {cseq} {method}
Content-Length: 0

"
    ))
}

/// The request as siprox forwards it: its own Via (branch `ours`) on top.
fn forwarded(method: &str, ours: &str) -> Message {
    msg(&format!(
        "{method} sip:bob@192.0.2.20 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.1:5060;branch={ours}
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-caller
Max-Forwards: 69
Route: <sip:192.0.2.30;lr>
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>
Call-ID: c1@192.0.2.10
CSeq: 1 {method}
Content-Length: 0

"
    ))
}

/// A response from downstream to a forwarded request.
fn response(code: u16, method: &str, ours: &str) -> Message {
    msg(&format!(
        "SIP/2.0 {code} Whatever
Via: SIP/2.0/UDP 198.51.100.1:5060;branch={ours}
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-caller
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b{code}
Call-ID: c1@192.0.2.10
CSeq: 1 {method}
Content-Length: 0

"
    ))
}

fn udp_rx() -> Inbound {
    Inbound {
        transport: Transport::Udp,
        source: "192.0.2.10:5060".parse().unwrap(),
        local: "198.51.100.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn dest(t: Transport) -> Destination {
    Destination::addr(t, "192.0.2.20:5060".parse::<SocketAddr>().unwrap())
}

fn table() -> Table {
    Table::new(TableConfig::default(), 7)
}

/// The actions queued so far: (sent start lines, everything else).
fn drain(t: &mut Table) -> (Vec<String>, Vec<Action>) {
    let mut sent = Vec::new();
    let mut other = Vec::new();
    for a in t.drain_actions() {
        match a {
            Action::Send { bytes, .. } => {
                let s = String::from_utf8_lossy(&bytes).into_owned();
                sent.push(s.lines().next().unwrap_or("").to_owned());
            }
            a => other.push(a),
        }
    }
    (sent, other)
}

/// Step the clock from `start` to `end` firing timers every 10 ms; returns the times (ms
/// after `start`) at which something was sent.
fn send_times(t: &mut Table, start: Instant, end: Duration) -> Vec<u128> {
    let mut times = Vec::new();
    let mut at = Duration::ZERO;
    while at <= end {
        t.on_timer(start + at);
        let (sent, _) = drain(t);
        times.extend(sent.iter().map(|_| at.as_millis()));
        at += Duration::from_millis(10);
    }
    times
}

fn timeouts(actions: &[Action]) -> Vec<TimerName> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Timeout { timer, .. } => Some(*timer),
            _ => None,
        })
        .collect()
}

fn terminated(actions: &[Action], id: TxId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Terminated { tx } if *tx == id))
}

// ---- INVITE server ----

#[test]
fn invite_server_sends_100_at_once_and_absorbs_retransmissions_with_the_last_response() {
    let mut t = table();
    let now = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-1"), 1, "");
    assert_eq!(t.on_request(&inv, now), Incoming::New);
    let id = t.insert_server(&inv, &udp_rx(), now).unwrap();
    let (sent, _) = drain(&mut t);
    assert_eq!(sent, ["SIP/2.0 100 Trying"]);

    assert_eq!(t.on_request(&inv, now), Incoming::Retransmission(id));
    assert_eq!(drain(&mut t).0, ["SIP/2.0 100 Trying"]);

    t.respond(
        id,
        180,
        Bytes::from_static(b"SIP/2.0 180 Ringing\r\n\r\n"),
        now,
    )
    .unwrap();
    drain(&mut t);
    assert_eq!(t.on_request(&inv, now), Incoming::Retransmission(id));
    assert_eq!(drain(&mut t).0, ["SIP/2.0 180 Ringing"]);
}

#[test]
fn invite_server_retransmits_non_2xx_per_timer_g_until_ack_then_ends_at_timer_i() {
    let mut t = table();
    let start = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-g"), 1, "");
    let id = t.insert_server(&inv, &udp_rx(), start).unwrap();
    drain(&mut t);
    t.respond(
        id,
        486,
        Bytes::from_static(b"SIP/2.0 486 Busy\r\n\r\n"),
        start,
    )
    .unwrap();
    assert_eq!(drain(&mut t).0, ["SIP/2.0 486 Busy"]);
    // G: T1, then doubling to T2: at 0.5, 1.5, 3.5, 7.5, 11.5 s.
    let times = send_times(&mut t, start, Duration::from_millis(12_000));
    assert_eq!(times, [500, 1500, 3500, 7500, 11500]);

    let ack = request("ACK", &caller_via("z9hG4bK-g"), 1, "b486");
    let at = start + Duration::from_millis(12_000);
    assert_eq!(t.on_request(&ack, at), Incoming::AckAbsorbed(id));
    // Confirmed: no more retransmissions, ACK retransmissions absorbed, gone at T4.
    assert_eq!(t.on_request(&ack, at), Incoming::AckAbsorbed(id));
    t.on_timer(at + Duration::from_millis(4_999));
    assert_eq!(t.len(), 1);
    assert!(drain(&mut t).0.is_empty());
    t.on_timer(at + Duration::from_secs(5));
    assert!(terminated(&drain(&mut t).1, id));
    assert!(t.is_empty());
}

#[test]
fn invite_server_without_ack_ends_at_timer_h() {
    let mut t = table();
    let start = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-h"), 1, "");
    let id = t.insert_server(&inv, &udp_rx(), start).unwrap();
    t.respond(
        id,
        404,
        Bytes::from_static(b"SIP/2.0 404 No\r\n\r\n"),
        start,
    )
    .unwrap();
    t.on_timer(start + 64 * T1 - Duration::from_millis(1));
    assert_eq!(t.len(), 1);
    t.on_timer(start + 64 * T1);
    let (_, other) = drain(&mut t);
    assert_eq!(timeouts(&other), [TimerName::H]);
    assert!(terminated(&other, id));
    assert!(t.is_empty());
}

#[test]
fn invite_server_2xx_is_accepted_absorbs_the_invite_and_passes_more_2xx() {
    let mut t = table();
    let start = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-ok"), 1, "");
    let id = t.insert_server(&inv, &udp_rx(), start).unwrap();
    drain(&mut t);
    t.respond(
        id,
        200,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        start,
    )
    .unwrap();
    assert_eq!(drain(&mut t).0, ["SIP/2.0 200 OK"]);
    // The INVITE retransmission is absorbed without a resend (the 2xx is the UAS's).
    assert_eq!(t.on_request(&inv, start), Incoming::Retransmission(id));
    assert!(drain(&mut t).0.is_empty());
    // A 2xx retransmission from downstream still goes up; a late 486 is refused.
    t.respond(
        id,
        200,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        start,
    )
    .unwrap();
    assert_eq!(drain(&mut t).0, ["SIP/2.0 200 OK"]);
    assert!(t
        .respond(id, 486, Bytes::from_static(b"SIP/2.0 486 B\r\n\r\n"), start)
        .is_err());
    // The ACK of the 2xx has its own branch: not this transaction's.
    let ack = request("ACK", &caller_via("z9hG4bK-ack2xx"), 1, "b200");
    assert_eq!(t.on_request(&ack, start), Incoming::New);
    t.on_timer(start + 64 * T1);
    assert!(terminated(&drain(&mut t).1, id));
    assert!(t.is_empty());
}

#[test]
fn invite_server_over_tcp_has_no_timer_g_and_ends_at_ack() {
    let mut t = table();
    let start = Instant::now();
    let rx = Inbound {
        transport: Transport::Tcp,
        conn: Some(crate::proxy::ConnId(3)),
        ..udp_rx()
    };
    let inv = request("INVITE", "SIP/2.0/TCP 192.0.2.10;branch=z9hG4bK-t", 1, "");
    let id = t.insert_server(&inv, &rx, start).unwrap();
    t.respond(id, 486, Bytes::from_static(b"SIP/2.0 486 B\r\n\r\n"), start)
        .unwrap();
    drain(&mut t);
    assert!(send_times(&mut t, start, Duration::from_secs(5)).is_empty());
    let ack = request("ACK", "SIP/2.0/TCP 192.0.2.10;branch=z9hG4bK-t", 1, "b");
    assert_eq!(t.on_request(&ack, start), Incoming::AckAbsorbed(id));
    assert!(t.is_empty(), "Timer I is zero over TCP");
}

// ---- non-INVITE server ----

#[test]
fn non_invite_server_absorbs_silently_in_trying_resends_in_completed_ends_at_timer_j() {
    let mut t = table();
    let start = Instant::now();
    let opt = request("OPTIONS", &caller_via("z9hG4bK-o"), 5, "");
    let id = t.insert_server(&opt, &udp_rx(), start).unwrap();
    assert!(drain(&mut t).0.is_empty(), "no 100 for a non-INVITE");
    assert_eq!(t.on_request(&opt, start), Incoming::Retransmission(id));
    assert!(drain(&mut t).0.is_empty());
    t.respond(
        id,
        200,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        start,
    )
    .unwrap();
    drain(&mut t);
    assert_eq!(t.on_request(&opt, start), Incoming::Retransmission(id));
    assert_eq!(drain(&mut t).0, ["SIP/2.0 200 OK"]);
    t.on_timer(start + 64 * T1 - Duration::from_millis(1));
    assert_eq!(t.len(), 1);
    t.on_timer(start + 64 * T1);
    assert!(t.is_empty());
}

#[test]
fn server_guard_ends_a_transaction_its_tu_never_answered() {
    let mut t = table();
    let start = Instant::now();
    let opt = request("OPTIONS", &caller_via("z9hG4bK-lost"), 5, "");
    let id = t.insert_server(&opt, &udp_rx(), start).unwrap();
    t.on_timer(start + t.config().server_guard);
    let (_, other) = drain(&mut t);
    assert_eq!(timeouts(&other), [TimerName::Guard]);
    assert!(terminated(&other, id));
}

#[test]
fn a_released_server_transaction_ends_at_once_and_only_before_its_final() {
    let mut t = table();
    let now = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-rel"), 1, "");
    let id = t.insert_server(&inv, &udp_rx(), now).unwrap();
    drain(&mut t);
    assert_eq!(t.release(id, now), Ok(()));
    let (sent, other) = drain(&mut t);
    assert!(sent.is_empty(), "released without a response: {sent:?}");
    assert!(terminated(&other, id));
    assert!(t.is_empty());
    // Its guard timer is gone with it.
    t.on_timer(now + t.config().server_guard);
    assert!(drain(&mut t).1.is_empty());
    // The request is new again; a released id names nothing.
    assert_eq!(t.on_request(&inv, now), Incoming::New);
    assert_eq!(t.release(id, now), Err(TxError::Gone));
    // Once answered, a transaction is not released: its final must be retransmitted.
    let opt = request("OPTIONS", &caller_via("z9hG4bK-rel2"), 2, "");
    let id = t.insert_server(&opt, &udp_rx(), now).unwrap();
    t.respond(
        id,
        486,
        Bytes::from_static(b"SIP/2.0 486 Busy\r\n\r\n"),
        now,
    )
    .unwrap();
    assert!(matches!(t.release(id, now), Err(TxError::State(_))));
    assert_eq!(t.len(), 1);
}

// ---- INVITE client ----

#[test]
fn invite_client_retransmits_per_timer_a_doubling_and_times_out_at_b() {
    let mut t = table();
    let start = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxA"),
            dest(Transport::Udp),
            ClientOpts::default(),
            start,
        )
        .unwrap();
    assert_eq!(drain(&mut t).0, ["INVITE sip:bob@192.0.2.20 SIP/2.0"]);
    // A doubles without a cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; B at 32 s.
    let times = send_times(&mut t, start, 64 * T1 - Duration::from_millis(10));
    assert_eq!(times, [500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(t.len(), 1);
    t.on_timer(start + 64 * T1);
    let (sent, other) = drain(&mut t);
    assert!(sent.is_empty());
    assert_eq!(timeouts(&other), [TimerName::B]);
    assert!(terminated(&other, id));
    assert!(t.is_empty());
}

#[test]
fn t_set_fr_shortens_timer_b() {
    let mut t = table();
    let start = Instant::now();
    let opts = ClientOpts {
        fr: Some(Duration::from_secs(2)),
        c: None,
    };
    t.insert_client(
        forwarded("INVITE", "z9hG4bK-sxfr"),
        dest(Transport::Udp),
        opts,
        start,
    )
    .unwrap();
    t.on_timer(start + Duration::from_secs(2));
    assert_eq!(timeouts(&drain(&mut t).1), [TimerName::B]);
    assert!(t.is_empty());
}

#[test]
fn invite_client_acks_a_non_2xx_hop_by_hop_and_absorbs_its_retransmissions() {
    let mut t = table();
    let start = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxB"),
            dest(Transport::Udp),
            ClientOpts::default(),
            start,
        )
        .unwrap();
    drain(&mut t);
    assert_eq!(
        t.on_response(&response(180, "INVITE", "z9hG4bK-sxB"), start),
        Some(id)
    );
    let (sent, up) = drain(&mut t);
    assert!(sent.is_empty());
    assert!(matches!(&up[..], [Action::Response { msg, .. }] if msg.status() == Some(180)));
    // Proceeding: Timer A has stopped.
    assert!(send_times(&mut t, start, Duration::from_secs(10)).is_empty());

    let busy = response(486, "INVITE", "z9hG4bK-sxB");
    t.on_response(&busy, start);
    let actions: Vec<Action> = t.drain_actions().collect();
    let ack = actions
        .iter()
        .find_map(|a| match a {
            Action::Send { bytes, .. } => Some(Message::parse(bytes.clone()).unwrap()),
            _ => None,
        })
        .expect("an ACK is sent");
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.request_uri_str(), Some("sip:bob@192.0.2.20"));
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bK-sxB"));
    assert_eq!(ack.vias().count(), 1, "only siprox's own Via");
    assert_eq!(ack.to().unwrap().tag(), Some("b486"));
    assert_eq!(ack.cseq().unwrap().method, "ACK");
    assert_eq!(ack.cseq().unwrap().seq, 1);
    assert_eq!(ack.routes().count(), 1, "the INVITE's Route");
    ack.validate().unwrap();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Response { msg, .. } if msg.status() == Some(486))));

    // A retransmitted 486: the ACK again, nothing up.
    t.on_response(&busy, start);
    let (sent, up) = drain(&mut t);
    assert_eq!(sent, ["ACK sip:bob@192.0.2.20 SIP/2.0"]);
    assert!(up.is_empty());
    // Timer D (32 s) ends it.
    t.on_timer(start + Duration::from_secs(32));
    assert!(t.is_empty());
}

#[test]
fn invite_client_2xx_goes_up_every_time_until_timer_m() {
    let mut t = table();
    let start = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxC"),
            dest(Transport::Tls),
            ClientOpts::default(),
            start,
        )
        .unwrap();
    drain(&mut t);
    let ok = response(200, "INVITE", "z9hG4bK-sxC");
    for _ in 0..2 {
        t.on_response(&ok, start);
        let (sent, up) = drain(&mut t);
        assert!(sent.is_empty(), "no ACK for a 2xx: it is end to end");
        assert_eq!(up.len(), 1);
    }
    t.on_timer(start + 64 * T1);
    assert!(terminated(&drain(&mut t).1, id));
}

#[test]
fn invite_client_over_tcp_does_not_retransmit_and_ends_at_the_final() {
    let mut t = table();
    let start = Instant::now();
    t.insert_client(
        forwarded("INVITE", "z9hG4bK-sxD"),
        dest(Transport::Tcp),
        ClientOpts::default(),
        start,
    )
    .unwrap();
    drain(&mut t);
    assert!(send_times(&mut t, start, Duration::from_secs(20)).is_empty());
    t.on_response(&response(603, "INVITE", "z9hG4bK-sxD"), start);
    assert!(t.is_empty(), "Timer D is zero over TCP");
}

#[test]
fn a_final_over_tcp_reaches_the_tu_before_its_transaction_ends() {
    // Timer D (INVITE) and K (others) are zero over a reliable transport: the transaction
    // ends with the response, and the TU must be told of the response first.
    for method in ["INVITE", "OPTIONS"] {
        let mut t = table();
        let start = Instant::now();
        let id = t
            .insert_client(
                forwarded(method, "z9hG4bK-sxOrder"),
                dest(Transport::Tcp),
                ClientOpts::default(),
                start,
            )
            .unwrap();
        drain(&mut t);
        t.on_response(&response(486, method, "z9hG4bK-sxOrder"), start);
        let (_, actions) = drain(&mut t);
        let response = actions
            .iter()
            .position(|a| matches!(a, Action::Response { tx, .. } if *tx == id));
        let ended = actions
            .iter()
            .position(|a| matches!(a, Action::Terminated { tx } if *tx == id));
        assert!(
            matches!((response, ended), (Some(r), Some(e)) if r < e),
            "{method}: {actions:?}"
        );
    }
}

#[test]
fn timer_c_reports_a_ringing_branch_and_timer_b_ends_it_if_nothing_follows() {
    let mut t = table();
    let start = Instant::now();
    let opts = ClientOpts {
        fr: None,
        c: Some(Duration::from_secs(10)),
    };
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxTC"),
            dest(Transport::Tls),
            opts,
            start,
        )
        .unwrap();
    t.on_response(&response(180, "INVITE", "z9hG4bK-sxTC"), start);
    // A second 180 at 5 s restarts Timer C.
    let five = start + Duration::from_secs(5);
    t.on_response(&response(180, "INVITE", "z9hG4bK-sxTC"), five);
    drain(&mut t);
    t.on_timer(start + Duration::from_secs(10));
    assert!(timeouts(&drain(&mut t).1).is_empty());
    t.on_timer(five + Duration::from_secs(10));
    assert_eq!(timeouts(&drain(&mut t).1), [TimerName::C]);
    assert_eq!(t.len(), 1);
    t.on_timer(five + Duration::from_secs(10) + 64 * T1);
    let (_, other) = drain(&mut t);
    assert_eq!(timeouts(&other), [TimerName::B]);
    assert!(terminated(&other, id));
}

#[test]
fn a_branch_is_cancelled_only_after_a_provisional_and_the_cancel_is_its_own_transaction() {
    let mut t = table();
    let start = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxE"),
            dest(Transport::Udp),
            ClientOpts::default(),
            start,
        )
        .unwrap();
    drain(&mut t);
    // Calling: nothing is sent yet (§9.1).
    assert_eq!(t.cancel_branch(id, start).unwrap(), None);
    assert!(drain(&mut t).0.is_empty());
    t.on_response(&response(100, "INVITE", "z9hG4bK-sxE"), start);
    let actions: Vec<Action> = t.drain_actions().collect();
    let cancel = actions
        .iter()
        .find_map(|a| match a {
            Action::Send { bytes, tx, .. } if *tx != id => {
                Some(Message::parse(bytes.clone()).unwrap())
            }
            _ => None,
        })
        .expect("the CANCEL waited for the provisional");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(cancel.request_uri_str(), Some("sip:bob@192.0.2.20"));
    assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bK-sxE"));
    assert_eq!(cancel.to().unwrap().tag(), None);
    assert_eq!(cancel.cseq().unwrap().method, "CANCEL");
    assert_eq!(cancel.routes().count(), 1);
    cancel.validate().unwrap();
    assert_eq!(t.len(), 2);
    // The 200 to the CANCEL matches the CANCEL's transaction, not the INVITE's.
    let c200 = response(200, "CANCEL", "z9hG4bK-sxE");
    let cid = t.match_response(&c200).unwrap();
    assert_ne!(cid, id);
    t.on_response(&c200, start);
    // Then the 487 for the INVITE.
    assert_eq!(
        t.on_response(&response(487, "INVITE", "z9hG4bK-sxE"), start),
        Some(id)
    );
    // Timer K (T4) ends the CANCEL, Timer D the INVITE.
    t.on_timer(start + Duration::from_secs(32));
    assert!(t.is_empty());
    // A second cancel of a gone branch is an error, not a panic.
    assert_eq!(t.cancel_branch(id, start), Err(TxError::Gone));
}

// ---- non-INVITE client ----

#[test]
fn non_invite_client_timer_e_doubles_to_t2_and_timer_f_times_out() {
    let mut t = table();
    let start = Instant::now();
    let id = t
        .insert_client(
            forwarded("OPTIONS", "z9hG4bK-sxF"),
            dest(Transport::Udp),
            ClientOpts::default(),
            start,
        )
        .unwrap();
    drain(&mut t);
    let times = send_times(&mut t, start, Duration::from_millis(16_000));
    // Intervals 0.5, 1, 2, 4, 4, 4 s.
    assert_eq!(times, [500, 1500, 3500, 7500, 11500, 15500]);
    t.on_timer(start + 64 * T1);
    let (_, other) = drain(&mut t);
    assert_eq!(timeouts(&other), [TimerName::F]);
    assert!(terminated(&other, id));
}

#[test]
fn non_invite_client_in_proceeding_retransmits_every_t2_and_ends_at_timer_k() {
    let mut t = table();
    let start = Instant::now();
    t.insert_client(
        forwarded("BYE", "z9hG4bK-sxG"),
        dest(Transport::Udp),
        ClientOpts::default(),
        start,
    )
    .unwrap();
    drain(&mut t);
    t.on_response(
        &response(100, "BYE", "z9hG4bK-sxG"),
        start + Duration::from_millis(100),
    );
    drain(&mut t);
    // E was armed for 0.5 s in Trying; after it, every T2.
    let times = send_times(&mut t, start, Duration::from_millis(9_000));
    assert_eq!(times, [500, 4500, 8500]);
    let at = start + Duration::from_secs(9);
    t.on_response(&response(200, "BYE", "z9hG4bK-sxG"), at);
    let (_, up) = drain(&mut t);
    assert_eq!(up.len(), 1);
    // A retransmitted 200 is absorbed.
    t.on_response(&response(200, "BYE", "z9hG4bK-sxG"), at);
    assert!(drain(&mut t).1.is_empty());
    t.on_timer(at + Duration::from_secs(5));
    assert!(t.is_empty());
}

// ---- matching ----

#[test]
fn server_matching_by_branch_sent_by_and_method() {
    let mut t = table();
    let now = Instant::now();
    let inv = request(
        "INVITE",
        "SIP/2.0/UDP Host.Example.com:5070;branch=z9hG4bK-m",
        1,
        "",
    );
    let id = t.insert_server(&inv, &udp_rx(), now).unwrap();
    // Host names compare case-insensitively.
    let same = request(
        "INVITE",
        "SIP/2.0/UDP host.example.COM:5070;branch=z9hG4bK-m",
        1,
        "",
    );
    assert_eq!(t.match_request(&same), Some(id));
    // Another port, another branch: other transactions.
    let port = request(
        "INVITE",
        "SIP/2.0/UDP host.example.com:5071;branch=z9hG4bK-m",
        1,
        "",
    );
    assert_eq!(t.match_request(&port), None);
    let other = request(
        "INVITE",
        "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK-n",
        1,
        "",
    );
    assert_eq!(t.match_request(&other), None);
    // ACK (for a non-2xx: same branch) matches the INVITE; CANCEL is its own transaction
    // but finds the INVITE through match_cancel.
    let ack = request(
        "ACK",
        "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK-m",
        1,
        "x",
    );
    assert_eq!(t.match_request(&ack), Some(id));
    let cancel = request(
        "CANCEL",
        "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK-m",
        1,
        "",
    );
    assert_eq!(t.match_request(&cancel), None);
    assert_eq!(t.match_cancel(&cancel), Some(id));
    let cid = t.insert_server(&cancel, &udp_rx(), now).unwrap();
    assert_ne!(cid, id);
    assert_eq!(t.match_request(&cancel), Some(cid));
    // A CANCEL for nothing known: the runtime answers 481.
    let stray = request(
        "CANCEL",
        "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK-zz",
        1,
        "",
    );
    assert_eq!(t.match_cancel(&stray), None);
    // The same key twice is refused.
    assert_eq!(t.insert_server(&inv, &udp_rx(), now), Err(TxError::Exists));
}

#[test]
fn rfc2543_fallback_matches_by_request_ids_and_top_via() {
    let mut t = table();
    let now = Instant::now();
    let via = "SIP/2.0/UDP 192.0.2.10:5060;branch=old-style-1";
    let inv = request("INVITE", via, 7, "");
    let id = t.insert_server(&inv, &udp_rx(), now).unwrap();
    assert_eq!(t.match_request(&request("INVITE", via, 7, "")), Some(id));
    assert_eq!(
        t.match_request(&request("INVITE", via, 8, "")),
        None,
        "CSeq"
    );
    assert_eq!(
        t.match_request(&request("INVITE", via, 7, "zz")),
        None,
        "To tag"
    );
    let no_branch = "SIP/2.0/UDP 192.0.2.10:5060";
    assert_eq!(
        t.match_request(&request("INVITE", no_branch, 7, "")),
        None,
        "top Via"
    );
    // The ACK carries the response's To tag and still matches.
    assert_eq!(t.match_request(&request("ACK", via, 7, "b486")), Some(id));
    assert_eq!(t.match_cancel(&request("CANCEL", via, 7, "")), Some(id));
    assert_eq!(t.match_request(&request("CANCEL", via, 7, "")), None);
}

#[test]
fn client_matching_by_branch_and_cseq_method() {
    let mut t = table();
    let now = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxM"),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    assert_eq!(
        t.match_response(&response(180, "INVITE", "z9hG4bK-sxM")),
        Some(id)
    );
    assert_eq!(
        t.match_response(&response(200, "CANCEL", "z9hG4bK-sxM")),
        None
    );
    assert_eq!(
        t.match_response(&response(180, "INVITE", "z9hG4bK-sxN")),
        None
    );
    assert_eq!(
        t.on_response(&response(180, "INVITE", "z9hG4bK-sxN"), now),
        None
    );
}

#[test]
fn new_branches_carry_the_cookie_and_differ() {
    let mut t = table();
    let a = t.new_branch();
    let b = t.new_branch();
    assert!(a.starts_with("z9hG4bK"));
    assert_ne!(a, b);
    let mut u = Table::new(TableConfig::default(), 8);
    assert_ne!(u.new_branch(), a, "another seed, other branches");
    let mut w = Table::new(
        TableConfig {
            worker: 0x1f,
            ..TableConfig::default()
        },
        7,
    );
    let c = w.new_branch();
    assert_eq!(worker_of_branch(&c), Some(0x1f));
    assert_eq!(worker_of_branch(&a), Some(0));
    // The proxy may append its loop-detection suffix (§16.3 step 4).
    assert_eq!(worker_of_branch(&format!("{c}-0123abcd")), Some(0x1f));
    // The stateless proxy's branches and foreign ones name no worker.
    assert_eq!(
        worker_of_branch("z9hG4bK-sx0123456789abcdef-01234567"),
        None
    );
    assert_eq!(worker_of_branch("z9hG4bKabc"), None);
}

// ---- limit, size, timers ----

#[test]
fn the_limit_refuses_with_retry_after_and_frees_when_a_transaction_ends() {
    let cfg = TableConfig {
        max_transactions: 2,
        retry_after: 9,
        ..TableConfig::default()
    };
    let mut t = Table::new(cfg, 1);
    let now = Instant::now();
    let a = t
        .insert_server(
            &request("OPTIONS", &caller_via("z9hG4bK-l1"), 1, ""),
            &udp_rx(),
            now,
        )
        .unwrap();
    t.insert_client(
        forwarded("OPTIONS", "z9hG4bK-sxl"),
        dest(Transport::Udp),
        ClientOpts::default(),
        now,
    )
    .unwrap();
    let third = request("OPTIONS", &caller_via("z9hG4bK-l3"), 1, "");
    assert_eq!(
        t.insert_server(&third, &udp_rx(), now),
        Err(TxError::Full {
            limit: 2,
            retry_after: 9
        })
    );
    assert!(matches!(
        t.insert_client(
            forwarded("OPTIONS", "z9hG4bK-sxl2"),
            dest(Transport::Udp),
            ClientOpts::default(),
            now
        ),
        Err(TxError::Full { .. })
    ));
    t.respond(a, 200, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"), now)
        .unwrap();
    t.on_timer(now + 64 * T1);
    assert_eq!(t.len(), 0, "both ended: J and F");
    let later = now + 64 * T1;
    t.insert_server(&third, &udp_rx(), later).unwrap();
    let inv = request("INVITE", &caller_via("z9hG4bK-l4"), 1, "");
    t.insert_server(&inv, &udp_rx(), later).unwrap();
    // Full; a CANCEL for the live INVITE still gets its transaction, a stray one does not.
    let cancel = request("CANCEL", &caller_via("z9hG4bK-l4"), 1, "");
    t.insert_server(&cancel, &udp_rx(), later).unwrap();
    let stray = request("CANCEL", &caller_via("z9hG4bK-l5"), 1, "");
    assert!(matches!(
        t.insert_server(&stray, &udp_rx(), later),
        Err(TxError::Full { .. })
    ));
}

#[test]
fn approx_size_of_a_ringing_call_over_tls_and_nothing_after_the_last_timer() {
    let mut t = table();
    let now = Instant::now();
    // What baresip sends (908 bytes with its SDP), and the same as siprox forwards it.
    let sdp = "v=0\r\no=- 3867393553 3867393553 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 10490 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\na=ssrc:1234 cname:abc\r\na=rtcp-mux\r\n";
    let invite = |extra: &str, b: &str| {
        let s = format!("INVITE sip:bob@example.com SIP/2.0\r\n{extra}Via: SIP/2.0/TLS 192.0.2.10:40123;branch=z9hG4bK{b};alias;rport\r\nContact: <sip:alice-0x55d0@192.0.2.10:40123;transport=tls>;+sip.instance=\"<urn:uuid:12345678-1234-1234-1234-123456789abc>\"\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=0a1b2c3d4e5f6a7b\r\nCall-ID: 5f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c\r\nCSeq: 23612 INVITE\r\nUser-Agent: baresip v3.10.1 (x86_64/linux)\r\nAllow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,REFER,UPDATE,PRACK\r\nSupported: replaces,norefersub,100rel\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len());
        Message::parse(Bytes::from(s)).unwrap()
    };
    let rx = Inbound {
        transport: Transport::Tls,
        conn: Some(crate::proxy::ConnId(1)),
        ..udp_rx()
    };
    let empty = t.approx_size();
    let n = 1000;
    for i in 0..n {
        let s = t
            .insert_server(&invite("", &format!("c{i}")), &rx, now)
            .unwrap();
        // The 180 from the callee, as it goes upstream (a typical 450 bytes).
        t.respond(s, 180, Bytes::from(vec![b'x'; 450]), now)
            .unwrap();
        let ours = format!("Via: SIP/2.0/TLS 198.51.100.1:5061;branch=z9hG4bK-sxt0.0123456789abcdef{i}-0123abcd\r\nRecord-Route: <sip:198.51.100.1:5061;transport=tls;lr;ft=abcdefabcdefabcdefabcdef>\r\n");
        let mut d = dest(Transport::Tls);
        d.server_name = Some("bob.example.com".into());
        t.insert_client(
            invite(&ours, &format!("c{i}")),
            d,
            ClientOpts::default(),
            now,
        )
        .unwrap();
    }
    let full = t.approx_size();
    let per_tx = (full - empty) / n / 2;
    // Issue 15's goal: at most 2 KiB per live transaction. Over TLS the table keeps no
    // copy of the caller's 908-byte INVITE (the TU has it), no 180 (only UDP brings
    // retransmissions to answer), and downstream only the INVITE's skeleton for its CANCEL
    // and ACK: slots, machines, keys, timers and a few hundred bytes of message.
    assert!(
        (400..=1024).contains(&per_tx),
        "{per_tx} bytes per transaction"
    );
    drain(&mut t);
    t.on_timer(now + t.config().server_guard + Duration::from_secs(1));
    assert!(t.is_empty());
    assert!(t.approx_size() < full / 2, "only capacity is left");
}

// ---- RFC 6026 Accepted, compact ----

/// One call over UDP through the table up to its 2xx: the caller's INVITE (server), the
/// forwarded INVITE (client, branch `ours`), 180 then 200 both ways.
fn accepted_call(t: &mut Table, caller: &str, ours: &str, now: Instant) -> (Message, TxId, TxId) {
    let inv = request("INVITE", &caller_via(caller), 1, "");
    let s = t.insert_server(&inv, &udp_rx(), now).unwrap();
    let c = t
        .insert_client(
            forwarded("INVITE", ours),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    for code in [180, 200] {
        let r = response(code, "INVITE", ours);
        assert_eq!(t.on_response(&r, now), Some(c));
        t.respond(s, code, r.as_bytes().clone(), now).unwrap();
    }
    (inv, s, c)
}

#[test]
fn accepted_transactions_are_compact_and_keep_rfc_6026_behaviour_until_l_and_m() {
    let mut t = table();
    let start = Instant::now();
    let (inv, s, c) = accepted_call(&mut t, "z9hG4bK-acc", "z9hG4bK-sxacc", start);
    drain(&mut t);
    assert_eq!((t.len(), t.accepted()), (2, 2));
    // What the Accepted state does not need is gone: the request, the bytes as sent.
    assert!(t.sent_request(c).is_none());
    assert_eq!(t.last_status(s), Some(200));
    let just_before = start + 64 * T1 - Duration::from_millis(1);
    t.on_timer(just_before);
    // INVITE retransmissions are absorbed, silently, for all of 64*T1.
    assert_eq!(t.on_request(&inv, just_before), Incoming::Retransmission(s));
    assert!(drain(&mut t).0.is_empty());
    // The 2xx's ACK is end to end: not this transaction's.
    let ack = request("ACK", &caller_via("z9hG4bK-ack2xx"), 1, "b200");
    assert_eq!(t.on_request(&ack, just_before), Incoming::New);
    // Every 2xx retransmission from downstream goes up, and out through the server
    // transaction; anything else is dropped or refused.
    let ok = response(200, "INVITE", "z9hG4bK-sxacc");
    for _ in 0..2 {
        assert_eq!(t.on_response(&ok, just_before), Some(c));
        let (sent, up) = drain(&mut t);
        assert!(sent.is_empty(), "no ACK for a 2xx");
        assert!(matches!(up.as_slice(), [Action::Response { tx, .. }] if *tx == c));
        t.respond(s, 200, ok.as_bytes().clone(), just_before)
            .unwrap();
        assert_eq!(drain(&mut t).0, ["SIP/2.0 200 Whatever"]);
    }
    let busy = response(486, "INVITE", "z9hG4bK-sxacc");
    assert_eq!(t.on_response(&busy, just_before), Some(c));
    assert!(
        drain(&mut t).1.is_empty(),
        "a non-2xx in Accepted is dropped"
    );
    assert!(t
        .respond(s, 486, busy.as_bytes().clone(), just_before)
        .is_err());
    // Nothing is left to cancel.
    assert_eq!(t.cancel_branch(c, just_before), Ok(None));
    assert!(drain(&mut t).0.is_empty());
    // Timers L and M: nothing is left.
    t.on_timer(start + 64 * T1);
    let (_, other) = drain(&mut t);
    assert!(terminated(&other, s) && terminated(&other, c));
    assert_eq!((t.len(), t.accepted()), (0, 0));
    assert_eq!(t.on_request(&inv, start + 64 * T1), Incoming::New);
    assert_eq!(t.on_response(&ok, start + 64 * T1), None);
}

#[test]
fn an_accepted_call_holds_a_small_fraction_of_a_ringing_one() {
    let mut t = table();
    let now = Instant::now();
    let empty = t.approx_size();
    let n = 1000;
    for i in 0..n {
        let inv = request("INVITE", &caller_via(&format!("z9hG4bK-r{i}")), 1, "");
        let s = t.insert_server(&inv, &udp_rx(), now).unwrap();
        t.insert_client(
            forwarded("INVITE", &format!("z9hG4bK-sxr{i}")),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
        let r = response(180, "INVITE", &format!("z9hG4bK-sxr{i}"));
        t.on_response(&r, now);
        t.respond(s, 180, r.as_bytes().clone(), now).unwrap();
    }
    drain(&mut t);
    let ringing = (t.approx_size() - empty) / n / 2;
    let mut t = table();
    let empty = t.approx_size();
    for i in 0..n {
        accepted_call(
            &mut t,
            &format!("z9hG4bK-a{i}"),
            &format!("z9hG4bK-sxa{i}"),
            now,
        );
    }
    drain(&mut t);
    assert_eq!(t.accepted(), 2 * n);
    let accepted = (t.approx_size() - empty) / n / 2;
    // The slot (key, armed timers), the reply destination, index and heap entries: a few
    // hundred bytes whatever the size of the messages (with these short test messages, a
    // ringing transaction is a third of a realistic one).
    assert!(accepted <= 448, "{accepted} bytes per Accepted transaction");
    assert!(
        accepted * 2 <= ringing,
        "{accepted} bytes per Accepted transaction, {ringing} per ringing one"
    );
}

#[test]
fn accepted_transactions_do_not_count_against_the_limit() {
    let cfg = TableConfig {
        max_transactions: 2,
        ..TableConfig::default()
    };
    let mut t = Table::new(cfg, 1);
    let now = Instant::now();
    accepted_call(&mut t, "z9hG4bK-lim1", "z9hG4bK-sxlim1", now);
    assert_eq!((t.len(), t.accepted()), (2, 2));
    // Two more live transactions fit beside two Accepted ones; a third does not.
    let inv = request("INVITE", &caller_via("z9hG4bK-lim2"), 1, "");
    t.insert_server(&inv, &udp_rx(), now).unwrap();
    t.insert_client(
        forwarded("INVITE", "z9hG4bK-sxlim2"),
        dest(Transport::Udp),
        ClientOpts::default(),
        now,
    )
    .unwrap();
    let third = request("OPTIONS", &caller_via("z9hG4bK-lim3"), 1, "");
    assert!(matches!(
        t.insert_server(&third, &udp_rx(), now),
        Err(TxError::Full { limit: 2, .. })
    ));
    // When those two reach Accepted in turn, they stop counting too.
    for code in [180, 200] {
        let r = response(code, "INVITE", "z9hG4bK-sxlim2");
        t.on_response(&r, now);
        let s = t.match_request(&inv).unwrap();
        t.respond(s, code, r.as_bytes().clone(), now).unwrap();
    }
    assert_eq!((t.len(), t.accepted()), (4, 4));
    t.insert_server(&third, &udp_rx(), now).unwrap();
}

#[test]
fn re_armed_timers_leave_stale_heap_entries_that_fire_nothing() {
    let mut t = table();
    let start = Instant::now();
    let inv = request("INVITE", &caller_via("z9hG4bK-st"), 1, "");
    let id = t.insert_server(&inv, &udp_rx(), start).unwrap();
    // Every provisional re-arms the guard: the old deadlines must not end the transaction.
    for s in 1..50u64 {
        let at = start + Duration::from_secs(s);
        t.respond(id, 180, Bytes::from_static(b"SIP/2.0 180 R\r\n\r\n"), at)
            .unwrap();
        t.on_timer(at);
    }
    drain(&mut t);
    let guard = t.config().server_guard;
    t.on_timer(start + guard + Duration::from_secs(48));
    assert_eq!(t.len(), 1);
    assert!(timeouts(&drain(&mut t).1).is_empty());
    t.on_timer(start + guard + Duration::from_secs(49));
    assert_eq!(timeouts(&drain(&mut t).1), [TimerName::Guard]);
    assert!(t.is_empty());
    assert!(t.last_status(id).is_none(), "an old id names nothing");
}

// ---- response context ----

fn ids(t: &mut Table, n: usize) -> Vec<TxId> {
    let now = Instant::now();
    (0..n)
        .map(|i| {
            t.insert_client(
                forwarded("INVITE", &format!("z9hG4bK-sxctx{i}")),
                dest(Transport::Tls),
                ClientOpts::default(),
                now,
            )
            .unwrap()
        })
        .collect()
}

fn ctx_actions(c: &mut ResponseContext) -> Vec<ContextAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn ctx_with(n: usize) -> (ResponseContext, Vec<TxId>) {
    let mut t = table();
    let b = ids(&mut t, n);
    let mut c = ResponseContext::new();
    for id in &b {
        c.add_branch(*id).unwrap();
    }
    (c, b)
}

fn resp(code: u16) -> Message {
    response(code, "INVITE", "z9hG4bK-any")
}

#[test]
fn context_forwards_provisionals_but_100_and_every_2xx_and_cancels_the_others() {
    let (mut c, b) = ctx_with(3);
    c.on_response(b[0], &resp(100));
    assert!(ctx_actions(&mut c).is_empty());
    c.on_response(b[0], &resp(180));
    assert!(
        matches!(&ctx_actions(&mut c)[..], [ContextAction::Forward(m)] if m.status() == Some(180))
    );
    c.on_response(b[2], &resp(486));
    assert!(ctx_actions(&mut c).is_empty());
    c.on_response(b[1], &resp(200));
    let a = ctx_actions(&mut c);
    assert!(matches!(&a[0], ContextAction::Forward(m) if m.status() == Some(200)));
    assert!(matches!(a[1], ContextAction::Cancel(x) if x == b[0]));
    assert_eq!(a.len(), 2, "the ended branches are not cancelled");
    // Another 2xx (the cancelled branch answered anyway) goes up too; no AllDone ever.
    c.on_response(b[0], &resp(200));
    assert!(
        matches!(&ctx_actions(&mut c)[..], [ContextAction::Forward(m)] if m.status() == Some(200))
    );
    assert!(c.is_done());
    assert!(c.finish().is_none());
    assert_eq!(c.add_branch(b[0]), None);
}

#[test]
fn context_best_response_prefers_6xx_then_lowest_class() {
    let (mut c, b) = ctx_with(3);
    c.on_response(b[0], &resp(503));
    c.on_response(b[1], &resp(486));
    assert!(c.has_pending());
    assert_eq!(c.best_branch(), Some(1), "486 beats 503");
    c.on_response(b[2], &resp(302));
    assert!(!c.has_pending());
    assert_eq!(c.best_branch(), Some(2), "$T_branch_idx of the best");
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone {
            status: 302,
            may_fork: true
        }]
    ));
    assert!(matches!(c.finish(), Some(Final::Forward(m)) if m.status() == Some(302)));

    let (mut c, b) = ctx_with(2);
    c.on_response(b[0], &resp(302));
    c.on_response(b[1], &resp(603));
    assert!(matches!(
        ctx_actions(&mut c).last(),
        Some(ContextAction::AllDone {
            status: 603,
            may_fork: false
        })
    ));
    assert!(matches!(c.finish(), Some(Final::Forward(m)) if m.status() == Some(603)));
}

#[test]
fn context_6xx_cancels_pending_branches_and_forbids_new_ones() {
    let (mut c, b) = ctx_with(3);
    c.on_response(b[0], &resp(600));
    let a = ctx_actions(&mut c);
    assert_eq!(a.len(), 2);
    assert!(matches!(a[0], ContextAction::Cancel(x) if x == b[1]));
    assert!(matches!(a[1], ContextAction::Cancel(x) if x == b[2]));
    assert!(!c.may_fork());
    c.on_response(b[1], &resp(487));
    c.on_response(b[2], &resp(487));
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone {
            status: 600,
            may_fork: false
        }]
    ));
}

#[test]
fn context_503_becomes_500_and_all_timeouts_become_408() {
    // failure_route sees the 503 itself; the caller gets 500 (§16.7 step 6).
    let (mut c, b) = ctx_with(1);
    c.on_response(b[0], &resp(503));
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone { status: 503, .. }]
    ));
    assert!(matches!(c.finish(), Some(Final::Local { status: 500, .. })));

    let (mut c, b) = ctx_with(2);
    c.on_timeout(b[0], TimerName::B);
    assert!(
        ctx_actions(&mut c).is_empty(),
        "one branch is still pending"
    );
    c.on_timeout(b[1], TimerName::B);
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone {
            status: 408,
            may_fork: true
        }]
    ));
    assert!(matches!(c.finish(), Some(Final::Local { status: 408, .. })));

    // A real 4xx beats the 408 siprox stands in for.
    let (mut c, b) = ctx_with(2);
    c.on_timeout(b[0], TimerName::B);
    c.on_response(b[1], &resp(404));
    assert!(matches!(c.finish(), Some(Final::Forward(m)) if m.status() == Some(404)));
}

#[test]
fn context_timer_c_cancels_a_ringing_branch_which_ends_as_a_408() {
    let (mut c, b) = ctx_with(1);
    c.on_response(b[0], &resp(180));
    ctx_actions(&mut c);
    c.on_timeout(b[0], TimerName::C);
    // The CANCEL, then at once the failure_route seam with 408 (Kamailio's fr_inv_timer).
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [
            ContextAction::Cancel(x),
            ContextAction::AllDone {
                status: 408,
                may_fork: true
            }
        ] if *x == b[0]
    ));
    assert_eq!(c.best_status(), Some(408));
    // The callee's 487 to the CANCEL is absorbed: nothing more for the caller.
    c.on_response(b[0], &resp(487));
    assert!(ctx_actions(&mut c).is_empty());
    assert!(matches!(c.finish(), Some(Final::Local { status: 408, .. })));
    // A 2xx that raced the CANCEL still goes upstream (§16.7 step 5).
    c.on_response(b[0], &resp(200));
    assert!(
        matches!(&ctx_actions(&mut c)[..], [ContextAction::Forward(m)] if m.status() == Some(200))
    );
}

#[test]
fn context_timer_c_on_one_branch_waits_for_the_others() {
    let (mut c, b) = ctx_with(2);
    c.on_response(b[0], &resp(180));
    c.on_response(b[1], &resp(180));
    ctx_actions(&mut c);
    c.on_timeout(b[0], TimerName::C);
    assert!(matches!(&ctx_actions(&mut c)[..], [ContextAction::Cancel(x)] if *x == b[0]));
    // The other branch's 486 beats the 408 siprox stands in for.
    c.on_response(b[1], &resp(486));
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone { status: 486, .. }]
    ));
}

#[test]
fn context_failure_route_seam_adds_a_branch_after_all_done() {
    let mut t = table();
    let b = ids(&mut t, 2);
    let mut c = ResponseContext::new();
    c.add_branch(b[0]).unwrap();
    c.on_response(b[0], &resp(486));
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone {
            status: 486,
            may_fork: true
        }]
    ));
    // failure_route relays to voicemail: a new branch; the 486 is not sent.
    assert_eq!(c.add_branch(b[1]), Some(1));
    assert!(c.finish().is_none(), "a branch is pending");
    c.on_response(b[1], &resp(200));
    assert!(
        matches!(&ctx_actions(&mut c)[..], [ContextAction::Forward(m)] if m.status() == Some(200))
    );
    assert!(c.is_done());
}

#[test]
fn context_caller_cancel_forwards_a_487_from_the_only_branch() {
    let (mut c, b) = ctx_with(1);
    c.on_response(b[0], &resp(180));
    c.cancel();
    ctx_actions(&mut c);
    c.on_response(b[0], &resp(487));
    assert!(matches!(c.finish(), Some(Final::Forward(m)) if m.status() == Some(487)));
}

#[test]
fn context_caller_cancel_cancels_every_pending_branch_and_yields_487() {
    let (mut c, b) = ctx_with(3);
    c.on_response(b[0], &resp(180));
    c.on_response(b[2], &resp(486));
    ctx_actions(&mut c);
    c.cancel();
    let a = ctx_actions(&mut c);
    assert_eq!(a.len(), 2);
    assert!(matches!(a[0], ContextAction::Cancel(x) if x == b[0]));
    assert!(matches!(a[1], ContextAction::Cancel(x) if x == b[1]));
    assert!(!c.may_fork());
    c.on_response(b[0], &resp(487));
    c.on_timeout(b[1], TimerName::B);
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone {
            status: 487,
            may_fork: false
        }]
    ));
    // The 486 that came before the CANCEL is not what the caller gets.
    assert!(matches!(c.finish(), Some(Final::Local { status: 487, .. })));
    assert!(c.is_done());
    // A second CANCEL changes nothing.
    c.cancel();
    assert!(ctx_actions(&mut c).is_empty());
}

#[test]
fn a_transport_error_ends_a_client_transaction_and_counts_as_503_for_its_branch() {
    let mut t = table();
    let now = Instant::now();
    let b = ids(&mut t, 2);
    drain(&mut t);
    let mut c = ResponseContext::new();
    c.add_branch(b[0]).unwrap();
    c.add_branch(b[1]).unwrap();
    t.on_transport_error(b[0], now).unwrap();
    let (_, other) = drain(&mut t);
    assert!(matches!(other[0], Action::TransportError { tx } if tx == b[0]));
    assert!(terminated(&other, b[0]));
    assert_eq!(t.on_transport_error(b[0], now), Err(TxError::Gone));
    c.on_transport_error(b[0]);
    c.on_timeout(b[1], TimerName::B);
    // The 408 siprox stands in for ranks with the 4xx class, before the 503's 5xx.
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [ContextAction::AllDone { status: 408, .. }]
    ));

    let (mut c, b) = ctx_with(1);
    c.on_transport_error(b[0]);
    assert!(matches!(c.finish(), Some(Final::Local { status: 500, .. })));
}

#[test]
fn the_heap_is_compacted_when_stale_entries_pile_up_and_timers_still_fire_on_time() {
    let mut t = table();
    let start = Instant::now();
    let keep = t
        .insert_server(
            &request("INVITE", &caller_via("z9hG4bK-k"), 1, ""),
            &udp_rx(),
            start,
        )
        .unwrap();
    let short = t
        .insert_server(
            &request("OPTIONS", &caller_via("z9hG4bK-s"), 1, ""),
            &udp_rx(),
            start,
        )
        .unwrap();
    for ms in 1..=1000u64 {
        t.respond(
            keep,
            180,
            Bytes::from_static(b"SIP/2.0 180 R\r\n\r\n"),
            start + Duration::from_millis(ms),
        )
        .unwrap();
    }
    // The OPTIONS ends at Timer J.
    t.respond(
        short,
        200,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        start,
    )
    .unwrap();
    t.on_timer(start + 64 * T1);
    assert_eq!(t.len(), 1);
    // Each 180 re-armed the guard: the heap was rebuilt on the way (it keeps at most a
    // bounded slack of stale entries), so the earliest deadline left is a recent one.
    // (The OPTIONS's own guard, disarmed, stays until due: pop it.)
    t.on_timer(start + t.config().server_guard);
    assert_eq!(t.len(), 1);
    let first_guard = start + Duration::from_millis(1) + t.config().server_guard;
    assert!(
        t.next_deadline() > Some(first_guard + Duration::from_millis(800)),
        "stale guard deadlines were dropped"
    );
    // Stale entries fire nothing; the last guard fires on time.
    let last_guard = start + Duration::from_millis(1000) + t.config().server_guard;
    t.on_timer(last_guard - Duration::from_millis(1));
    assert_eq!(t.len(), 1);
    assert!(timeouts(&drain(&mut t).1).is_empty());
    assert_eq!(t.next_deadline(), Some(last_guard));
    t.on_timer(last_guard);
    assert!(t.is_empty());
}

#[test]
fn a_stray_provisional_after_the_final_sends_no_cancel() {
    let mut t = table();
    let now = Instant::now();
    let id = t
        .insert_client(
            forwarded("INVITE", "z9hG4bK-sxS"),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    t.cancel_branch(id, now).unwrap();
    t.on_response(&response(200, "INVITE", "z9hG4bK-sxS"), now);
    drain(&mut t);
    t.on_response(&response(180, "INVITE", "z9hG4bK-sxS"), now);
    let (sent, up) = drain(&mut t);
    assert!(sent.is_empty(), "{sent:?}");
    assert!(up.is_empty());
    assert_eq!(t.len(), 1);
}

#[test]
fn context_forwards_a_2xx_even_after_the_final_went_up() {
    let mut tb = table();
    let b = ids(&mut tb, 2);
    let mut c = ResponseContext::new();
    c.add_branch(b[0]).unwrap();
    c.on_response(b[0], &resp(486));
    ctx_actions(&mut c);
    assert!(matches!(c.finish(), Some(Final::Forward(_))));
    // A late 2xx on that branch (a UAS that answered after all) is still end to end.
    c.on_response(b[0], &resp(200));
    assert!(
        matches!(&ctx_actions(&mut c)[..], [ContextAction::Forward(m)] if m.status() == Some(200))
    );
}

#[test]
fn compact_header_forms_and_a_body_key_the_same_transaction() {
    let mut t = table();
    let now = Instant::now();
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let compact = Message::parse(Bytes::from(format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
         v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-cf, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-x\r\n\
         f: <sip:alice@example.com>;tag=a1\r\nt: <sip:bob@example.com>\r\n\
         i: c9@192.0.2.10\r\nCSeq: 4 INVITE\r\nMax-Forwards: 70\r\n\
         c: application/sdp\r\nl: {}\r\n\r\n{sdp}",
        sdp.len()
    )))
    .unwrap();
    let id = t.insert_server(&compact, &udp_rx(), now).unwrap();
    let ack = msg("ACK sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-cf
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: c9@192.0.2.10
CSeq: 4 ACK
Max-Forwards: 70
Content-Length: 0

");
    assert_eq!(t.match_request(&ack), Some(id));
    // The ACK a client transaction builds from it takes only the top Via of the list.
    let fwd = Message::parse(Bytes::from(
        String::from_utf8_lossy(compact.as_bytes()).replacen(
            "v: ",
            "v: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-sxcf, ",
            1,
        ),
    ))
    .unwrap();
    let ack = Message::parse(build_non2xx_ack(
        &fwd,
        &response(486, "INVITE", "z9hG4bK-sxcf"),
    ))
    .unwrap();
    assert_eq!(ack.vias().count(), 1);
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bK-sxcf"));
    assert_eq!(ack.call_id().unwrap(), "c9@192.0.2.10");
    assert_eq!(ack.cseq().unwrap().seq, 4);
    assert!(ack.body().is_empty());
    ack.validate().unwrap();
}

#[test]
fn a_spiral_back_to_siprox_gets_a_server_transaction_beside_its_client_one() {
    let mut t = table();
    let now = Instant::now();
    let b = t.new_branch();
    let out = forwarded("INVITE", &b);
    let client = t
        .insert_client(
            out.clone(),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    // The request comes back to siprox (a spiral, §16.3): siprox's own branch on top.
    assert_eq!(t.on_request(&out, now), Incoming::New);
    let server = t.insert_server(&out, &udp_rx(), now).unwrap();
    assert_ne!(client, server);
    assert_eq!(t.match_request(&out), Some(server));
    assert_eq!(t.match_response(&response(180, "INVITE", &b)), Some(client));
}

#[test]
fn context_says_how_the_failed_branch_ended() {
    use crate::transaction::BranchFacts;
    let facts = |timed_out, replied| Some(BranchFacts { timed_out, replied });
    // Silent: Timer B.
    let (mut c, b) = ctx_with(1);
    assert_eq!(c.failed_branch(), None);
    c.on_timeout(b[0], TimerName::B);
    assert_eq!(c.failed_branch(), facts(true, false));
    // Ringing, then Timer C: cancelled, ends as a 408 (the callee's 487 changes nothing).
    let (mut c, b) = ctx_with(1);
    c.on_response(b[0], &resp(180));
    c.on_timeout(b[0], TimerName::C);
    assert_eq!(c.failed_branch(), facts(true, true));
    c.on_response(b[0], &resp(487));
    assert_eq!(c.failed_branch(), facts(true, true));
    // Busy: replied, no timeout; a transport error: neither.
    let (mut c, b) = ctx_with(2);
    c.on_response(b[0], &resp(486));
    assert_eq!(c.failed_branch(), facts(false, true));
    c.on_transport_error(b[1]);
    assert_eq!(c.failed_branch(), facts(false, false));
    assert!(matches!(
        &ctx_actions(&mut c)[..],
        [.., ContextAction::AllDone { status: 486, .. }]
    ));
}

#[test]
fn an_invite_branch_keeps_only_what_its_ack_and_cancel_need_once_not_retransmitted() {
    let mut t = table();
    let now = Instant::now();
    let full = forwarded("INVITE", "z9hG4bK-sxsk");
    let busy = response(486, "INVITE", "z9hG4bK-sxsk");
    // Over TLS nothing is retransmitted: once sent, only the skeleton is kept, and the
    // CANCEL and the ACK built from it are those built from the whole INVITE.
    let c = t
        .insert_client(
            full.clone(),
            dest(Transport::Tls),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    assert_eq!(drain(&mut t).0, ["INVITE sip:bob@192.0.2.20 SIP/2.0"]);
    let kept = Message::parse(t.sent_request(c).unwrap().clone()).unwrap();
    assert!(kept.as_bytes().len() < full.as_bytes().len());
    assert_eq!(build_cancel(&kept), build_cancel(&full));
    assert_eq!(
        build_non2xx_ack(&kept, &busy),
        build_non2xx_ack(&full, &busy)
    );
    // Over UDP the whole INVITE is kept while Timer A may resend it, until a response.
    let full = forwarded("INVITE", "z9hG4bK-sxsu");
    let c = t
        .insert_client(
            full.clone(),
            dest(Transport::Udp),
            ClientOpts::default(),
            now,
        )
        .unwrap();
    t.on_timer(now + T1);
    assert_eq!(
        drain(&mut t).0,
        [
            "INVITE sip:bob@192.0.2.20 SIP/2.0",
            "INVITE sip:bob@192.0.2.20 SIP/2.0"
        ]
    );
    assert_eq!(t.sent_request(c), Some(full.as_bytes()));
    t.on_response(&response(180, "INVITE", "z9hG4bK-sxsu"), now + T1);
    assert!(t.sent_request(c).unwrap().len() < full.as_bytes().len());
    t.cancel_branch(c, now + T1).unwrap();
    assert_eq!(drain(&mut t).0, ["CANCEL sip:bob@192.0.2.20 SIP/2.0"]);
}
