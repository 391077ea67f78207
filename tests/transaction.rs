//! The transaction table and the response context together, as the runtime will drive them
//! (issue 15): parallel fork with a 2xx and a CANCEL, failure_route to a second branch,
//! the caller's CANCEL, and a proptest that random event orders never panic and always
//! leave an empty table after the longest timer. Real message bytes through the parser;
//! no clock is read by the code under test (the tests pass `now`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use siprox::proxy::{build_reply, Destination, Inbound, Transport};
use siprox::sip::Message;
use siprox::transaction::{
    Action, ClientOpts, ContextAction, Final, Incoming, ResponseContext, Table, TableConfig, TxId,
};

fn msg(s: &str) -> Message {
    Message::parse(Bytes::from(s.replace('\n', "\r\n"))).expect("test message parses")
}

fn caller_request(method: &str, branch: &str, to_tag: &str) -> Message {
    let tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    msg(&format!(
        "{method} sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>{tag}
Call-ID: call-1@192.0.2.10
CSeq: 1 {method}
Contact: <sip:alice@192.0.2.10>
Content-Length: 0

"
    ))
}

/// What siprox sends on a branch: its own Via on top of the caller's.
fn branch_request(method: &str, ruri: &str, branch: &str) -> Message {
    msg(&format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP 198.51.100.1:5060;branch={branch}
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-caller;rport=5060
Max-Forwards: 69
From: \"Alice\" <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>
Call-ID: call-1@192.0.2.10
CSeq: 1 {method}
Contact: <sip:alice@192.0.2.10>
Content-Length: 0

"
    ))
}

fn downstream_response(code: u16, method: &str, branch: &str, to_tag: &str) -> Message {
    msg(&format!(
        "SIP/2.0 {code} Reason
Via: SIP/2.0/UDP 198.51.100.1:5060;branch={branch}
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-caller;rport=5060
From: \"Alice\" <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag={to_tag}
Call-ID: call-1@192.0.2.10
CSeq: 1 {method}
Content-Length: 0

"
    ))
}

fn rx() -> Inbound {
    Inbound {
        transport: Transport::Udp,
        source: "192.0.2.10:5060".parse().unwrap(),
        local: "198.51.100.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn to(port: u16) -> Destination {
    Destination::addr(Transport::Udp, SocketAddr::from(([192, 0, 2, 20], port)))
}

/// Start lines of what was sent, with the destination port.
fn sent(actions: &[Action]) -> Vec<(u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { dest, bytes, .. } => Some((
                dest.socket_addr().map_or(0, |a| a.port()),
                String::from_utf8_lossy(bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// The runtime's loop for one call: table actions to the context, context actions back to
/// the table; forwarded responses go upstream through the server transaction. Returns
/// everything sent and the context's `AllDone` reports.
struct Call {
    table: Table,
    ctx: ResponseContext,
    server: TxId,
    /// The caller's INVITE, what the TU builds its local replies from (the runtime keeps
    /// it beside the context; the table does not).
    invite: Message,
    sent: Vec<(u16, String)>,
    all_done: Vec<(u16, bool)>,
}

impl Call {
    fn new(now: Instant) -> Call {
        let mut table = Table::new(TableConfig::default(), 42);
        let invite = caller_request("INVITE", "z9hG4bK-c1", "");
        assert_eq!(table.on_request(&invite, now), Incoming::New);
        let server = table.insert_server(&invite, &rx(), now).unwrap();
        let mut call = Call {
            table,
            ctx: ResponseContext::new(),
            server,
            invite,
            sent: Vec::new(),
            all_done: Vec::new(),
        };
        call.pump(now);
        call
    }

    fn branch(&mut self, port: u16, now: Instant) -> (TxId, String) {
        let b = self.table.new_branch();
        let req = branch_request("INVITE", &format!("sip:bob@192.0.2.20:{port}"), &b);
        let id = self
            .table
            .insert_client(req, to(port), ClientOpts::default(), now)
            .unwrap();
        self.ctx.add_branch(id).unwrap();
        self.pump(now);
        (id, b)
    }

    fn pump(&mut self, now: Instant) {
        loop {
            let actions: Vec<Action> = self.table.drain_actions().collect();
            let mut ctx_actions = Vec::new();
            self.sent.extend(sent(&actions));
            for a in actions {
                match a {
                    Action::Response { tx, msg } => self.ctx.on_response(tx, &msg),
                    Action::Timeout { tx, timer } => self.ctx.on_timeout(tx, timer),
                    Action::TransportError { tx } => self.ctx.on_transport_error(tx),
                    _ => {}
                }
            }
            while let Some(a) = self.ctx.poll_action() {
                ctx_actions.push(a);
            }
            if ctx_actions.is_empty() {
                return;
            }
            for a in ctx_actions {
                match a {
                    ContextAction::Forward(m) => {
                        let status = m.status().unwrap();
                        // The runtime removes its Via; the status line is what is checked.
                        let _ = self
                            .table
                            .respond(self.server, status, m.as_bytes().clone(), now);
                    }
                    ContextAction::Cancel(tx) => {
                        let _ = self.table.cancel_branch(tx, now);
                    }
                    ContextAction::AllDone { status, may_fork } => {
                        self.all_done.push((status, may_fork))
                    }
                }
            }
        }
    }

    fn finish(&mut self, now: Instant) {
        let invite = self.invite.clone();
        match self.ctx.finish().expect("a final response") {
            Final::Forward(m) => {
                let s = m.status().unwrap();
                self.table
                    .respond(self.server, s, m.as_bytes().clone(), now)
                    .unwrap();
            }
            Final::Local { status, reason } => {
                let b = build_reply(&invite, &rx(), status, reason, "sx1", "siprox", "");
                self.table.respond(self.server, status, b, now).unwrap();
            }
        }
        self.pump(now);
    }

    fn take_sent(&mut self) -> Vec<(u16, String)> {
        std::mem::take(&mut self.sent)
    }
}

#[test]
fn parallel_fork_one_answers_the_other_is_cancelled_the_caller_sees_one_200() {
    let t0 = Instant::now();
    let mut c = Call::new(t0);
    assert_eq!(c.take_sent(), [(5060, "SIP/2.0 100 Trying".to_owned())]);
    let (a, ba) = c.branch(5081, t0);
    let (_b, bb) = c.branch(5082, t0);
    assert_eq!(c.take_sent().len(), 2, "both branches get the INVITE");

    for (br, tag) in [(&ba, "da"), (&bb, "db")] {
        c.table
            .on_response(&downstream_response(180, "INVITE", br, tag), t0);
    }
    c.pump(t0);
    let s = c.take_sent();
    assert_eq!(s.iter().filter(|x| x.1.contains("180")).count(), 2);

    c.table
        .on_response(&downstream_response(200, "INVITE", &bb, "db"), t0);
    c.pump(t0);
    let s = c.take_sent();
    assert_eq!(
        s,
        [
            (5060, "SIP/2.0 200 Reason".to_owned()),
            (5081, "CANCEL sip:bob@192.0.2.20:5081 SIP/2.0".to_owned())
        ]
    );
    // Branch a: 200 to the CANCEL, 487 to the INVITE (ACKed hop by hop, not forwarded).
    c.table
        .on_response(&downstream_response(200, "CANCEL", &ba, "da"), t0);
    c.table
        .on_response(&downstream_response(487, "INVITE", &ba, "da"), t0);
    c.pump(t0);
    assert_eq!(
        c.take_sent(),
        [(5081, "ACK sip:bob@192.0.2.20:5081 SIP/2.0".to_owned())]
    );
    assert!(c.ctx.is_done());
    assert!(
        c.all_done.is_empty(),
        "a 2xx went upstream: no failure_route"
    );
    let _ = a;
    // The caller's INVITE retransmission is absorbed by the Accepted transaction.
    let invite = caller_request("INVITE", "z9hG4bK-c1", "");
    assert_eq!(
        c.table.on_request(&invite, t0),
        Incoming::Retransmission(c.server)
    );
    c.table.on_timer(t0 + Duration::from_secs(40));
    c.pump(t0 + Duration::from_secs(40));
    assert!(c.table.is_empty(), "L, M, D, K all ran");
}

#[test]
fn failure_route_relays_a_486_to_voicemail() {
    let t0 = Instant::now();
    let mut c = Call::new(t0);
    let (_, b1) = c.branch(5081, t0);
    c.table
        .on_response(&downstream_response(486, "INVITE", &b1, "busy"), t0);
    c.pump(t0);
    assert_eq!(c.all_done, [(486, true)]);
    assert!(
        !c.take_sent().iter().any(|s| s.1.contains("486")),
        "486 held back"
    );
    // failure_route: t_relay() to voicemail.
    let (_, vm) = c.branch(5090, t0);
    c.table
        .on_response(&downstream_response(200, "INVITE", &vm, "vm"), t0);
    c.pump(t0);
    assert!(c
        .take_sent()
        .contains(&(5060, "SIP/2.0 200 Reason".to_owned())));
    assert!(c.ctx.is_done());
}

#[test]
fn every_branch_silent_gives_the_caller_408_after_timer_b() {
    let t0 = Instant::now();
    let mut c = Call::new(t0);
    c.branch(5081, t0);
    c.take_sent();
    let tb = t0 + Duration::from_secs(32);
    c.table.on_timer(tb);
    c.pump(tb);
    assert_eq!(c.all_done, [(408, true)]);
    c.finish(tb);
    assert!(c
        .take_sent()
        .contains(&(5060, "SIP/2.0 408 Request Timeout".to_owned())));
}

#[test]
fn caller_cancel_cancels_the_branches_and_gets_487() {
    let t0 = Instant::now();
    let mut c = Call::new(t0);
    let (_, b1) = c.branch(5081, t0);
    let (_, b2) = c.branch(5082, t0);
    for br in [&b1, &b2] {
        c.table
            .on_response(&downstream_response(180, "INVITE", br, "r"), t0);
    }
    c.pump(t0);
    c.take_sent();

    let cancel = caller_request("CANCEL", "z9hG4bK-c1", "");
    assert_eq!(c.table.on_request(&cancel, t0), Incoming::New);
    assert_eq!(c.table.match_cancel(&cancel), Some(c.server));
    let ctx_id = c.table.insert_server(&cancel, &rx(), t0).unwrap();
    let ok = build_reply(&cancel, &rx(), 200, "OK", "sx1", "siprox", "");
    c.table.respond(ctx_id, 200, ok, t0).unwrap();
    c.ctx.cancel();
    c.pump(t0);
    let s = c.take_sent();
    assert!(s.contains(&(5060, "SIP/2.0 200 OK".to_owned())));
    assert!(s.contains(&(5081, "CANCEL sip:bob@192.0.2.20:5081 SIP/2.0".to_owned())));
    assert!(s.contains(&(5082, "CANCEL sip:bob@192.0.2.20:5082 SIP/2.0".to_owned())));

    for br in [&b1, &b2] {
        c.table
            .on_response(&downstream_response(487, "INVITE", br, "r"), t0);
    }
    c.pump(t0);
    assert_eq!(c.all_done, [(487, false)]);
    c.finish(t0);
    assert!(c
        .take_sent()
        .iter()
        .any(|s| s.0 == 5060 && s.1.contains("487")));
    // The caller ACKs the 487: absorbed hop by hop.
    let ack = caller_request("ACK", "z9hG4bK-c1", "r");
    assert_eq!(
        c.table.on_request(&ack, t0),
        Incoming::AckAbsorbed(c.server)
    );
    let end = t0 + Duration::from_secs(40);
    c.table.on_timer(end);
    assert!(c.table.is_empty());
}

// ---- random event orders ----

#[derive(Debug, Clone)]
enum Ev {
    /// A request from upstream (INVITE or OPTIONS by `k % 2`), new or a retransmission.
    Request(u8),
    Ack(u8),
    Cancel(u8),
    /// The TU answers server transaction `k` with `status`.
    Respond(u8, u16),
    /// A new branch for server `k`.
    Branch(u8),
    /// A response from downstream for branch `k` (INVITE or CANCEL).
    Downstream(u8, u16, bool),
    CancelBranch(u8),
    /// A send for branch `k` failed, or (`server`) for upstream request `k`.
    SendFailed(u8, bool),
    Advance(u32),
}

fn ev() -> impl Strategy<Value = Ev> {
    let status = prop_oneof![
        Just(100u16),
        Just(180),
        Just(200),
        Just(302),
        Just(408),
        Just(486),
        Just(487),
        Just(503),
        Just(603),
        0u16..1000,
    ];
    prop_oneof![
        (0u8..4).prop_map(Ev::Request),
        (0u8..4).prop_map(Ev::Ack),
        (0u8..4).prop_map(Ev::Cancel),
        ((0u8..4), status.clone()).prop_map(|(k, s)| Ev::Respond(k, s)),
        (0u8..6).prop_map(Ev::Branch),
        ((0u8..6), status, any::<bool>()).prop_map(|(k, s, c)| Ev::Downstream(k, s, c)),
        (0u8..6).prop_map(Ev::CancelBranch),
        ((0u8..6), any::<bool>()).prop_map(|(k, s)| Ev::SendFailed(k, s)),
        (0u32..40_000).prop_map(Ev::Advance),
    ]
}

fn upstream(k: u8, method: &str) -> Message {
    let m = if k.is_multiple_of(2) {
        "INVITE"
    } else {
        "OPTIONS"
    };
    let method = if method.is_empty() { m } else { method };
    msg(&format!(
        "{method} sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-up{k}
From: <sip:alice@example.com>;tag=a{k}
To: <sip:bob@example.com>
Call-ID: r{k}@192.0.2.10
CSeq: 1 {method}
Max-Forwards: 70
Content-Length: 0

"
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_event_orders_never_panic_and_end_with_an_empty_table(
        evs in proptest::collection::vec(ev(), 1..80)
    ) {
        let cfg = TableConfig { max_transactions: 12, ..TableConfig::default() };
        let longest = cfg.server_guard.max(cfg.timers.c + cfg.timers.t1x64())
            + cfg.timers.t1x64();
        let mut table = Table::new(cfg, 3);
        let mut ctx = ResponseContext::new();
        let mut branches: Vec<(TxId, String, bool)> = Vec::new();
        let mut now = Instant::now();
        for e in evs {
            match e {
                Ev::Request(k) => {
                    let m = upstream(k, "");
                    if table.on_request(&m, now) == Incoming::New {
                        let _ = table.insert_server(&m, &rx(), now);
                    }
                }
                Ev::Ack(k) => { let _ = table.on_request(&upstream(k, "ACK"), now); }
                Ev::Cancel(k) => {
                    let m = upstream(k, "CANCEL");
                    if table.on_request(&m, now) == Incoming::New && table.match_cancel(&m).is_some() {
                        if let Ok(id) = table.insert_server(&m, &rx(), now) {
                            let _ = table.respond(id, 200, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"), now);
                        }
                        ctx.cancel();
                    }
                }
                Ev::Respond(k, s) => {
                    if let Some(id) = table.match_request(&upstream(k, "")) {
                        let _ = table.respond(id, s, Bytes::from(format!("SIP/2.0 {s} X\r\n\r\n")), now);
                    }
                }
                Ev::Branch(k) => {
                    let b = table.new_branch();
                    let method = if k.is_multiple_of(2) { "INVITE" } else { "OPTIONS" };
                    let req = branch_request(method, "sip:bob@192.0.2.20", &b);
                    if let Ok(id) = table.insert_client(req, to(5060 + u16::from(k)), ClientOpts::default(), now) {
                        let invite = method == "INVITE";
                        if invite { let _ = ctx.add_branch(id); }
                        branches.push((id, b, invite));
                    }
                }
                Ev::Downstream(k, s, cancel) => {
                    if let Some((_, b, invite)) = branches.get(k as usize) {
                        let method = match (cancel, invite) {
                            (true, _) => "CANCEL",
                            (false, true) => "INVITE",
                            (false, false) => "OPTIONS",
                        };
                        if (100..700).contains(&s) {
                            let _ = table.on_response(&downstream_response(s, method, b, "t"), now);
                        }
                    }
                }
                Ev::CancelBranch(k) => {
                    if let Some((id, _, _)) = branches.get(k as usize) {
                        let _ = table.cancel_branch(*id, now);
                    }
                }
                Ev::SendFailed(k, server) => {
                    let id = if server {
                        table.match_request(&upstream(k, ""))
                    } else {
                        branches.get(k as usize).map(|b| b.0)
                    };
                    if let Some(id) = id {
                        let _ = table.on_transport_error(id, now);
                    }
                }
                Ev::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    table.on_timer(now);
                }
            }
            for a in table.drain_actions().collect::<Vec<_>>() {
                match a {
                    Action::Response { tx, msg } => ctx.on_response(tx, &msg),
                    Action::Timeout { tx, timer } => ctx.on_timeout(tx, timer),
                    Action::TransportError { tx } => ctx.on_transport_error(tx),
                    _ => {}
                }
            }
            while let Some(a) = ctx.poll_action() {
                match a {
                    ContextAction::Cancel(tx) => { let _ = table.cancel_branch(tx, now); }
                    ContextAction::AllDone { .. } => { let _ = ctx.finish(); }
                    ContextAction::Forward(_) => {}
                }
            }
            prop_assert!(table.len() <= 12 + branches.len(), "CANCELs may exceed the limit, nothing else");
        }
        // Past the longest timer, in steps (each step may arm the next timer).
        for _ in 0..4 {
            now += longest;
            table.on_timer(now);
            let _ = table.drain_actions().count();
        }
        prop_assert!(table.is_empty(), "{} transactions left", table.len());
        prop_assert!(table.next_deadline().is_none(), "no timer left behind");
    }
}
