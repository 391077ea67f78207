//! Criterion benches of the stateless proxy core's per-message work, without sockets and
//! without parsing (messages are parsed once, before timing): what `Proxy` does with the
//! messages of the load generator's flows against benches/conf.d (the built-in route).
//!
//! Run: `cargo bench --bench proxy -- --warm-up-time 1 --measurement-time 3`.
//! Bench ids are stable so that results can be compared across commits:
//! - `proxy/call`: one INVITE-100-180-200-ACK-BYE-200 call from a phone over TLS to a
//!   callee over UDP (so Record-Route twice, with flow tokens): three requests through
//!   `on_request`, four responses through `response_script_tag_from` and
//!   `on_response_from`, as the runtime calls them.
//! - `proxy/options`: one OPTIONS addressed to siprox over TLS, answered by the core.
//! - `proxy/scripted-reparse` and `proxy/scripted-checked`: the call's three requests as
//!   benches/conf.d-stateful's script forwards them (`record_route()` on the INVITE, then
//!   `forward()`/`t_relay()`), with the runtime's validation first: its result thrown away
//!   and the request parsed again (`forward_with`, before issue 18), or reused
//!   (`forward_checked`).
//!
//! On a shared machine, compare two builds interleaved (A B A B), as for the load benches.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use siprox::proxy::{
    Action, ConnId, FlowKeys, ForwardOpts, Inbound, Listen, Proxy, ProxyConfig, Transport,
};
use siprox::sip::{HeaderName, Message};
use siprox_testkit::ua;

const PHONE: &str = "127.0.0.1:40312";
const CALLEE: &str = "127.0.0.1:5070";

fn proxy() -> Proxy {
    let listen = |transport, addr: &str| Listen {
        transport,
        addr: addr.parse().expect("address"),
        advertise: None,
    };
    Proxy::new(ProxyConfig {
        listens: vec![
            listen(Transport::Udp, "127.0.0.1:25060"),
            listen(Transport::Tcp, "127.0.0.1:25060"),
            listen(Transport::Tls, "127.0.0.1:25061"),
        ],
        flow_keys: FlowKeys::parse(&"k".repeat(64))
            .expect("key")
            .with_epoch(0x5eed),
        ..ProxyConfig::default()
    })
}

fn from_phone() -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: PHONE.parse().expect("address"),
        local: "127.0.0.1:25061".parse().expect("address"),
        conn: Some(ConnId(7)),
    }
}

fn from_callee() -> Inbound {
    Inbound {
        transport: Transport::Udp,
        source: CALLEE.parse().expect("address"),
        local: "127.0.0.1:25060".parse().expect("address"),
        conn: None,
    }
}

fn parse(s: &str) -> Message {
    Message::parse(Bytes::from(s.to_owned())).expect("parses")
}

fn request(method: &str, ruri: &str, cseq: u32, to_tag: Option<&str>, routes: &[&str]) -> Message {
    let mut s = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {PHONE};branch=z9hG4bK-{method}-{cseq}-b1d2f00c;rport\r\nMax-Forwards: 70\r\n"
    );
    for r in routes {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str("From: \"Alice\" <sip:alice@siprox.test>;tag=3a7f0c2e91b4\r\n");
    match to_tag {
        Some(t) => s.push_str(&format!("To: <sip:bob@siprox.test>;tag={t}\r\n")),
        None => s.push_str("To: <sip:bob@siprox.test>\r\n"),
    }
    s.push_str(&format!(
        "Call-ID: 5d1e0b7c9a2f4e38b6c0d4a1f7e9c2b3@siprox.test\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@{PHONE};transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ));
    parse(&s)
}

fn forwarded(a: Action) -> Message {
    match a {
        Action::Send { bytes, .. } => Message::parse(bytes).expect("forwarded parses"),
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// The messages of one call, and the checks that each one is forwarded.
struct Call {
    invite: Message,
    ack: Message,
    bye: Message,
    responses: Vec<Message>,
}

fn call(p: &Proxy) -> Call {
    let ruri = format!("sip:bob@{CALLEE};transport=udp");
    let contact = format!("<sip:bob@{CALLEE};transport=udp>");
    let invite = request("INVITE", &ruri, 1, None, &[]);
    let out = forwarded(p.on_request(&invite, &from_phone()));
    let mut responses: Vec<Message> = [(100, "Trying"), (180, "Ringing"), (200, "OK")]
        .iter()
        .map(|&(code, reason)| parse_vec(ua::response(&out, code, reason, &contact, 0)))
        .collect();
    // The phone's route set: the 200's Record-Route, reversed.
    let ok = forwarded(p.on_response_from(&responses[2], &from_callee(), false));
    let mut rr: Vec<String> = ok
        .header_values(HeaderName::RecordRoute)
        .map(str::to_owned)
        .collect();
    rr.reverse();
    let routes: Vec<&str> = rr.iter().map(String::as_str).collect();
    let to_tag = ok.to().expect("To").tag().expect("tag").to_owned();
    let ack = request("ACK", &ruri, 1, Some(&to_tag), &routes);
    let bye = request("BYE", &ruri, 2, Some(&to_tag), &routes);
    forwarded(p.on_request(&ack, &from_phone()));
    let bye_out = forwarded(p.on_request(&bye, &from_phone()));
    responses.push(parse_vec(ua::response(&bye_out, 200, "OK", &contact, 0)));
    for r in &responses {
        forwarded(p.on_response_from(r, &from_callee(), false));
    }
    Call {
        invite,
        ack,
        bye,
        responses,
    }
}

fn parse_vec(v: Vec<u8>) -> Message {
    Message::parse(Bytes::from(v)).expect("response parses")
}

fn benches(c: &mut Criterion) {
    let p = proxy();
    let call = call(&p);
    let (phone, callee) = (from_phone(), from_callee());
    let mut g = c.benchmark_group("proxy");
    g.bench_function("call", |b| {
        b.iter(|| {
            black_box(p.on_request(black_box(&call.invite), &phone));
            for r in &call.responses {
                black_box(p.response_script_tag_from(r, false));
                black_box(p.on_response_from(black_box(r), &callee, false));
            }
            black_box(p.on_request(black_box(&call.ack), &phone));
            black_box(p.on_request(black_box(&call.bye), &phone));
        })
    });
    let options = request("OPTIONS", "sip:127.0.0.1:25061;transport=tls", 1, None, &[]);
    match p.on_request(&options, &phone) {
        Action::Send { bytes, .. } => assert!(bytes.starts_with(b"SIP/2.0 200 OK\r\n")),
        other => panic!("expected a 200, got {other:?}"),
    }
    g.bench_function("options", |b| {
        b.iter(|| black_box(p.on_request(black_box(&options), &phone)))
    });
    let scripted = [
        (
            &call.invite,
            ForwardOpts {
                record_route: true,
                ..ForwardOpts::default()
            },
        ),
        (&call.ack, ForwardOpts::default()),
        (&call.bye, ForwardOpts::default()),
    ];
    for (m, opts) in &scripted {
        let checked = m.validated().expect("valid");
        assert_eq!(
            format!("{:?}", p.forward_checked(m, &phone, opts, Some(&checked))),
            format!("{:?}", p.forward_with(m, &phone, opts)),
        );
        forwarded(p.forward_with(m, &phone, opts));
    }
    g.bench_function("scripted-reparse", |b| {
        b.iter(|| {
            for (m, opts) in &scripted {
                let m = black_box(*m);
                if m.validate().is_ok() {
                    black_box(p.forward_with(m, &phone, opts));
                }
            }
        })
    });
    g.bench_function("scripted-checked", |b| {
        b.iter(|| {
            for (m, opts) in &scripted {
                let m = black_box(*m);
                if let Ok(checked) = m.validated() {
                    black_box(p.forward_checked(m, &phone, opts, Some(&checked)));
                }
            }
        })
    });
    g.finish();
}

criterion_group!(proxy_core, benches);
criterion_main!(proxy_core);
