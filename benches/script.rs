//! Criterion bench of the route-script interpreter: the cost of running a typical 30-line
//! script (sanity checks, Max-Forwards, a method switch, record_route, loose_route, a regex,
//! a few selects and pseudo-variables, an xlog at a disabled level) on one INVITE. Measures
//! only; a one-time check makes sure the script takes the intended path.
//!
//! Run: `cargo bench --bench script -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use siprox::proxy::{ConnId, Inbound, Transport};
use siprox::script::{compile, End, Host, Level, MsgCtx};
use siprox::sip::Message;
use siprox::tls::{CertFacts, DnFacts, TlsFacts};

const SCRIPT: &str = r#"
route {
    if (msg:len > 8192) { sl_send_reply("513", "Message Too Large"); exit; }
    if (!mf_process_maxfwd_header("70")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (proto == TLS && @tls.peer != "Bob") { sl_send_reply("403", "Forbidden"); drop; }
    if (src_ip == "10.0.0.0/8") { drop; }
    xlog("L_DBG", "$rm $ru from $si:$sp cn=$tls_peer_subject_cn\n");
    if (has_totag()) {
        if (loose_route()) { route(RELAY); }
        sl_send_reply("404", "Not Here");
        exit;
    }
    switch ($rm) {
        case "REGISTER":
            save("location");
            exit;
        case "INVITE":
        case "SUBSCRIBE":
            record_route();
            break;
        case "OPTIONS":
            sl_send_reply("200", "OK");
            exit;
        default:
            break;
    }
    if ($rU =~ "^\+?[0-9]{6,15}$") { setflag(1); }
    if (@from.uri.host == @to.uri.host && @via[1].branch != "") { setflag(2); }
    if (@contact[1].uri.params.transport == "tls") { append_hf("X-Secure: yes\r\n"); }
    route(RELAY);
}

route[RELAY] {
    if (!forward()) { sl_send_reply("503", "Service Unavailable"); }
    exit;
}
"#;

const INVITE: &str = "INVITE sip:+15551234567@biloxi.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com;transport=tls>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 0\r\n\r\n";

/// A runtime stand-in: records nothing, logs at info and above only.
struct Quiet {
    forwards: u64,
}

impl Host for Quiet {
    fn forward(&mut self, _ctx: &mut MsgCtx<'_>, _target: Option<&str>) -> i32 {
        self.forwards += 1;
        1
    }
    fn reply(&mut self, _ctx: &mut MsgCtx<'_>, _code: u16, _reason: &str) -> i32 {
        1
    }
    fn is_myself(&self, host: &str, _port: Option<u16>) -> bool {
        host == "127.0.0.1"
    }
    fn log(&mut self, _level: Level, msg: &str) {
        black_box(msg);
    }
    fn log_enabled(&self, level: Level) -> bool {
        level <= Level::Info
    }
    fn now_unix(&self) -> i64 {
        1_700_000_000
    }
}

fn tls() -> TlsFacts {
    let dn = |cn: &str| DnFacts {
        line: format!("/O=Example/CN={cn}"),
        cn: Some(cn.into()),
        o: Some("Example".into()),
        ..DnFacts::default()
    };
    TlsFacts {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        cipher_bits: 256,
        desc: "TLSv1.3 TLS_AES_256_GCM_SHA384 256".into(),
        peer: Some(Arc::new(CertFacts {
            subject: dn("Bob"),
            issuer: dn("CA"),
            ..CertFacts::default()
        })),
        peer_verified: true,
        ..TlsFacts::default()
    }
}

fn bench(c: &mut Criterion) {
    let script = compile(SCRIPT, "bench.cfg").unwrap_or_else(|e| panic!("{e}"));
    let msg = Message::parse(Bytes::from_static(INVITE.as_bytes())).expect("fixture parses");
    let facts = tls();
    let source: SocketAddr = "192.0.2.1:40000".parse().expect("addr");
    let rx = Inbound {
        transport: Transport::Tls,
        source,
        local: "127.0.0.1:5061".parse().expect("addr"),
        conn: Some(ConnId(1)),
    };
    // The script must take the forwarding path with its edits, or we would time an early exit.
    let mut host = Quiet { forwards: 0 };
    let mut ctx = MsgCtx::new(&msg, &rx, Some(&facts));
    let out = script.run_request(&mut ctx, &mut host);
    assert_eq!(out.end, End::Exit);
    assert!(out.forwarded && ctx.edits.record_route);
    assert_eq!(ctx.flags, 0b110, "regex and select conditions hold");
    assert_eq!(ctx.edits.append_hf, "X-Secure: yes\r\n");

    c.bench_function("script/typical-30-lines", |b| {
        b.iter(|| {
            let mut ctx = MsgCtx::new(black_box(&msg), &rx, Some(&facts));
            let out = script.run_request(&mut ctx, &mut host);
            black_box((out, ctx.edits))
        })
    });
    c.bench_function("script/compile", |b| {
        b.iter(|| compile(black_box(SCRIPT), "bench.cfg").map(|s| s.has_request_route()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
