//! Shared helpers for the route-script tests: real parsed messages, hand-built TLS facts, and
//! a recording `Host` that stands in for the runtime. Test-only; no I/O.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use siprox::proxy::{ConnId, Inbound, Transport};
use siprox::script::{compile, AuthFn, Host, Level, MsgCtx, Outcome, Script, ScriptEdits};
use siprox::select::Value;
use siprox::sip::Message;
use siprox::tls::{CertFacts, DnFacts, TlsFacts};

/// A message from text written with `\n` line ends.
pub fn msg(text: &str) -> Message {
    let t = text.replace("\r\n", "\n").replace('\n', "\r\n");
    Message::parse(Bytes::from(t)).expect("test message parses")
}

pub const INVITE: &str = "INVITE sip:bob@biloxi.example.com:5070;transport=tcp;user=phone SIP/2.0
Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKnashds8;received=192.0.2.1
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com;transport=tls>, <sip:alice@192.0.2.4:5062;transport=tcp>;expires=60;q=0.5
Contact: <sip:alice@[2001:db8::9]>
X-Foo: bar
User-Agent: TestUA/1.0
Route: <sip:proxy.example.net;lr>
Content-Type: application/sdp
Content-Length: 5

v=0
";

pub const REGISTER: &str = "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKreg1
Max-Forwards: 70
To: <sip:carol@example.com>
From: <sip:carol@example.com>;tag=r1
Call-ID: reg-1@192.0.2.10
CSeq: 1 REGISTER
Contact: <sip:carol@192.0.2.10:5060>;expires=3600
Content-Length: 0

";

pub const BYE: &str = "BYE sip:alice@192.0.2.4:5062 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKbye1
Max-Forwards: 70
To: <sip:alice@atlanta.example.com>;tag=a1
From: <sip:bob@biloxi.example.com>;tag=b1
Call-ID: dlg-1@192.0.2.20
CSeq: 2 BYE
Route: <sip:127.0.0.1:5060;lr>, <sip:next.example.net;lr>
Content-Length: 0

";

pub const REPLY: &str = "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sx1
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa
To: <sip:bob@biloxi.example.com>;tag=t9
From: <sip:alice@atlanta.example.com>;tag=f1
Call-ID: c1@x
CSeq: 7 INVITE
Content-Length: 0

";

pub fn rx(transport: Transport, source: &str) -> Inbound {
    let source: SocketAddr = source.parse().expect("source address");
    let local: SocketAddr = if source.is_ipv4() {
        "127.0.0.1:5061".parse().expect("local")
    } else {
        "[::1]:5061".parse().expect("local")
    };
    Inbound {
        transport,
        source,
        local,
        conn: (transport != Transport::Udp).then_some(ConnId(0x2a)),
    }
}

pub fn udp() -> Inbound {
    rx(Transport::Udp, "192.0.2.1:5060")
}

pub fn dn(cn: &str, o: &str) -> DnFacts {
    DnFacts {
        line: format!("/C=US/ST=CA/L=Palo Alto/O={o}/OU=Voice/CN={cn}/UID=u-{cn}/emailAddress={cn}@example.com"),
        cn: Some(cn.into()),
        cn_count: 1,
        o: Some(o.into()),
        ou: Some("Voice".into()),
        c: Some("US".into()),
        st: Some("CA".into()),
        l: Some("Palo Alto".into()),
        uid: Some(format!("u-{cn}")),
        email: Some(format!("{cn}@example.com")),
    }
}

pub fn cert(cn: &str) -> CertFacts {
    CertFacts {
        subject: dn(cn, "Example Inc"),
        issuer: dn("Example CA", "Example Trust"),
        version: 2,
        serial: "4096".into(),
        not_before: "Jun 17 15:03:20 2005 GMT".into(),
        not_after: "Jun 17 15:03:20 2035 GMT".into(),
        not_after_unix: 2_065_964_600,
        not_before_unix: 1_119_020_600,
        san_email: vec![format!("{cn}@mail.example.com")],
        san_dns: vec![
            format!("{}.example.com", cn.to_lowercase()),
            "alt.example.com".into(),
        ],
        san_uri: vec![format!("sip:{}@example.com", cn.to_lowercase())],
        san_ip: vec!["192.0.2.77".into()],
        self_signed: false,
        fingerprint_sha256: "ab".repeat(32),
    }
}

/// OpenSSL 3's `SSL_CIPHER_description` of TLS_AES_256_GCM_SHA384, verbatim.
pub const DESC: &str =
    "TLS_AES_256_GCM_SHA384         TLSv1.3 Kx=any      Au=any   Enc=AESGCM(256)            Mac=AEAD\n";

/// TLS facts with an optional peer certificate of that CN.
pub fn tls(peer_cn: Option<&str>) -> TlsFacts {
    TlsFacts {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        cipher_bits: 256,
        desc: DESC.into(),
        server_name: Some("sip.example.com".into()),
        domain: Some("example".into()),
        peer: peer_cn.map(|c| Arc::new(cert(c))),
        my: Some(Arc::new(cert("siprox"))),
        peer_verified: peer_cn.is_some(),
        peer_revoked: false,
        cluster_peer: false,
    }
}

/// A `Host` that records what the script asked for.
#[derive(Debug)]
pub struct RecHost {
    pub calls: Vec<String>,
    pub logs: Vec<(Level, String)>,
    pub myself: Vec<String>,
    pub now: i64,
    /// Most verbose level that is enabled.
    pub max_level: Level,
    pub lookup_ruri: Option<String>,
    pub ret: i32,
    /// Edits as they were when forward() was called.
    pub forwarded_edits: Option<ScriptEdits>,
}

impl Default for RecHost {
    fn default() -> Self {
        RecHost {
            calls: Vec::new(),
            logs: Vec::new(),
            myself: vec!["127.0.0.1".into(), "proxy.example.net".into()],
            now: 1_700_000_000,
            max_level: Level::Dbg,
            lookup_ruri: None,
            ret: 1,
            forwarded_edits: None,
        }
    }
}

impl Host for RecHost {
    fn forward(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32 {
        self.calls.push(match target {
            Some(t) => format!("forward {t}"),
            None => "forward".into(),
        });
        self.forwarded_edits = Some(ctx.edits.clone());
        self.ret
    }
    fn reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str) -> i32 {
        let extra = if ctx.edits.reply_hf.is_empty() {
            String::new()
        } else {
            format!(" +{}", ctx.edits.reply_hf.trim_end())
        };
        self.calls.push(format!("reply {code} {reason}{extra}"));
        1
    }
    fn is_myself(&self, host: &str, _port: Option<u16>) -> bool {
        self.myself.iter().any(|m| m.eq_ignore_ascii_case(host))
    }
    fn log(&mut self, level: Level, msg: &str) {
        self.logs.push((level, msg.to_owned()));
    }
    fn log_enabled(&self, level: Level) -> bool {
        level <= self.max_level
    }
    fn now_unix(&self) -> i64 {
        self.now
    }
    fn save(&mut self, _ctx: &mut MsgCtx<'_>, table: &str, flags: &str) -> i32 {
        self.calls
            .push(format!("save {table} {flags}").trim_end().to_owned());
        1
    }
    fn lookup(&mut self, ctx: &mut MsgCtx<'_>, table: &str, _flags: &str) -> i32 {
        self.calls.push(format!("lookup {table}"));
        match &self.lookup_ruri {
            Some(u) => {
                ctx.edits.new_ruri = Some(u.clone());
                1
            }
            None => -1,
        }
    }
    fn dispatch_rpc(&mut self, _ctx: &mut MsgCtx<'_>) -> i32 {
        self.calls.push("dispatch_rpc".into());
        1
    }
    fn auth(&mut self, _ctx: &mut MsgCtx<'_>, func: AuthFn, a: &str, b: &str) -> i32 {
        self.calls.push(format!("auth {func:?} {a} {b}"));
        self.ret
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct Ran {
    pub out: Outcome,
    pub edits: ScriptEdits,
    pub flags: u64,
    pub host: RecHost,
    pub vars: Vec<(String, Option<Value<'static>>)>,
}

impl Ran {
    pub fn var(&self, name: &str) -> Value<'static> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no $var({name})"))
    }
}

pub fn compiled(src: &str) -> Script {
    compile(src, "test.cfg").unwrap_or_else(|e| panic!("script does not compile:\n{e}"))
}

/// Run the main route of `src` on `m`, reading back the named variables.
pub fn run_with(
    script: &Script,
    m: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
    host: RecHost,
    vars: &[&str],
) -> Ran {
    let mut host = host;
    let mut ctx = MsgCtx::new(m, rx, tls);
    let out = if m.is_request() {
        script.run_request(&mut ctx, &mut host)
    } else {
        script.run_reply(&mut ctx, &mut host)
    };
    let vars = vars
        .iter()
        .map(|n| (n.to_string(), script.var(&ctx, n)))
        .collect();
    Ran {
        out,
        edits: ctx.edits,
        flags: ctx.flags,
        host,
        vars,
    }
}

pub fn run(src: &str, m: &Message, rx: &Inbound, tls: Option<&TlsFacts>) -> Ran {
    run_with(&compiled(src), m, rx, tls, RecHost::default(), &[])
}

/// Evaluate one expression in a request route: `$var(r) = EXPR;`.
pub fn ev(expr: &str, m: &Message, rx: &Inbound, tls: Option<&TlsFacts>) -> Value<'static> {
    let src = format!("route {{ $var(r) = {expr}; }}");
    let r = run_with(&compiled(&src), m, rx, tls, RecHost::default(), &["r"]);
    r.var("r")
}

/// Evaluate in an onreply_route.
pub fn ev_reply(expr: &str, m: &Message) -> Value<'static> {
    let src = format!("onreply_route {{ $var(r) = {expr}; }}");
    let r = run_with(&compiled(&src), m, &udp(), None, RecHost::default(), &["r"]);
    r.var("r")
}

pub fn s(v: &str) -> Value<'static> {
    Value::from(v.to_owned())
}

pub fn i(v: i64) -> Value<'static> {
    Value::Int(v)
}
