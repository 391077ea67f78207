//! Route scripts on peer input: the scripts siprox ships and a script that reads every kind
//! of pseudo-variable, select and transformation, run through the real script host (the
//! proxy core, the in-memory registrar, digest authentication with a users table, hash
//! tables) on a message and TLS facts from the fuzzer; and any script text, compiled and
//! run on fixed messages. Nothing here may panic or hang (the interpreter's step limit
//! bounds every run).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use siprox::auth::{AuthSettings, Authenticator, Users};
use siprox::proxy::{ConnId, Inbound, Listen, Proxy, ProxyConfig, Transport};
use siprox::registrar::{MemoryStore, Settings};
use siprox::script::host::{self, Digest, Env, Liveness, Note, Registrar, ScriptLog};
use siprox::script::htable::Htables;
use siprox::script::{compile, Level, Script};
use siprox::sip::Message;
use siprox::tls::{CertFacts, DnFacts, TlsFacts};

/// Reads what a peer controls through every part of the language.
pub const EVERYTHING: &str = r#"
route {
    $var(a) = $ru + $rU + $rd + $rz + $fu + $fU + $fd + $ft + $fn + $tu + $tU + $td + $tt + $tn;
    $var(b) = $ci + $rm + $hdr(X-Foo) + $hdr(Via) + $ua + $ct + $rb + $du + $fs;
    $var(n) = $cs + $rp + $ml + $bf + $sp + $Rp;
    $avp(s:x) = $(hdr(X-Foo){s.tolower}{s.substr,1,3}{s.select,1,,}{s.trim});
    $var(t) = $(ru{uri.user}) + $(ru{uri.host}) + $(ru{uri.param,transport}) + $(ct{nameaddr.uri}{uri.port});
    $var(u) = $(hdr(X-Foo){param.value,a}) + $(fu{s.strip,2}{s.striptail,1}{s.toupper}) + $(ct{nameaddr.name});
    $var(i) = $(hdr(X-Num){s.int}) + $(hdr(X-Foo){s.len}) + $(ru{uri.port});
    $var(s) = @ruri + @ruri.user + @ruri.host + @ruri.port + @ruri.hostport + @ruri.type + @ruri.pwd + @ruri.headers;
    $var(s) = @ruri.params + @ruri.params.transport + @ruri.transport + @from + @to + @from.uri.user + @to.uri.host;
    $var(s) = @from.tag + @from.name + @from.params + @from.params.x + @to.tag;
    $var(s) = @contact + @contact.uri + @contact.uri.host + @contact.name + @contact.params.x + @contact.expires + @contact.q;
    $var(s) = @contact[1] + @contact[2].uri.user + @hf_value.contact[1] + @hf_value.contact[1].name;
    $var(s) = @route[1] + @route[1].uri + @record_route[2].uri.params.lr + @path[1].uri.host;
    $var(s) = @via + @via[2] + @via[1].branch + @via[1].received + @via[1].rport + @via[1].host + @via[1].port + @via[1].transport + @via[1].params.x;
    $var(s) = @hf_value["X-Foo"] + @hf_value.x_foo[2] + @hf_value.x_foo[1].uri.user + @hf_value.x_foo.param.a + @hf_value.x_foo[1].p.b;
    $var(s) = @msg.header["X-Foo"] + @msg.header["Contact"];
    $var(z) = $tls_version + $tls_description + $tls_cipher_info + $tls_cipher_bits + $tls_peer_subject + $tls_peer_issuer_cn;
    $var(z) = $tls_peer_subject_cn + $tls_peer_subject_organization + $tls_peer_subject_uid + $tls_peer_subject_email;
    $var(z) = $tls_peer_san_email + $tls_peer_san_hostname + $tls_peer_san_uri + $tls_peer_san_ip + $tls_peer_notAfter;
    $var(z) = $tls_peer_verified + $tls_peer_expired + $tls_peer_selfsigned + $tls_peer_server_name + $tls_peer_fingerprint + $tls_domain;
    $var(z) = @tls + @tls.peer + @tls.peer.subject + @tls.peer.subject.cn + @tls.peer.issuer.o + @tls.peer.host + @tls.peer.uri + @tls.peer.sn + @tls.peer.not_before + @tls.peer.fingerprint;
    $var(z) = @tls.version + @tls.cipher + @tls.peer.not_after + @tls.my.subject.cn + @tls.peer.email + @tls.peer.host + @tls.peer.uri + @tls.peer.ip;
    if ($ru =~ "^sip:\+?[0-9]+@" || $hdr(X-Foo) =~ "a(b|c)*d" || $fu !~ "@example\.com$") {
        setflag(3);
    }
    if (search("^X-Foo: .*z") && is_present_hf("X-Num") && has_body() && has_totag()) {
        setbflag(2);
    }
    switch ($rU) {
        case "alice":
            $var(c) = 1;
            break;
        default:
            $var(c) = 2;
    }
    if (uri == myself || from_uri == myself || to_uri == myself || @route.uri == myself) {
        $var(m) = 1;
    }
    if (src_ip == "192.0.2.0/24" || af == INET6 || msg:len > 100 || status >= 300 || proto == TLS) {
        $var(m) = 2;
    }
    $var(k) = 0;
    while ($var(k) < 3) {
        $var(k) = $var(k) + 1;
        $sht(seen=>$ci) = $var(k);
        $sht(seen=>$fU) = $(ci{s.substr,0,8});
    }
    $var(h) = $sht(seen=>$ci) + $(sht(seen=>$fU){s.int});
    xlog("L_INFO", "$rm $ru from $si:$sp [$hdr(X-Foo)] $(hdr(X-Foo){s.len}) $tls_peer_subject_cn\n");
    if (!sanity_check()) {
        exit;
    }
    if (mf_process_maxfwd_header("10") < 0) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (is_method("REGISTER")) {
        if (!www_authorize("", "subscriber")) {
            www_challenge("", "0");
            exit;
        }
        consume_credentials();
        save("location");
        exit;
    }
    if (is_method("OPTIONS")) {
        if (!proxy_authorize("example.com", "subscriber")) {
            proxy_challenge("example.com", "0");
            exit;
        }
        append_to_reply("X-Echo: $(hdr(X-Foo){s.select,0,;})\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            record_route();
            forward();
            exit;
        }
    }
    remove_hf("X-Foo");
    append_hf("X-Seen: $rU\r\n");
    record_route("p=$(fU{s.substr,0,4})");
    if (is_method("BYE")) {
        rewriteuser($fU);
        rewritehost($(hdr(X-Host){s.trim}));
        rewriteport($(hdr(X-Num){s.int}));
        forward();
        exit;
    }
    if (is_method("MESSAGE")) {
        rewriteuri($hdr(X-Target));
        $du = $hdr(X-Du);
        forward($hdr(X-Next));
        exit;
    }
    if (lookup("location")) {
        append_branch();
        t_relay();
        exit;
    }
    force_rport();
    forward();
}

onreply_route {
    $var(r) = $rs + $rr + @via[1].branch + @via[2].received + $(hdr(X-Foo){s.select,-1,,}) + $T_reply_code;
    if (status =~ "^18" && $hdr(Contact) =~ "sip:") {
        xlog("L_DBG", "reply $rs $rr $ct\n");
    }
    if ($(rr{s.len}) > 40) {
        drop;
    }
}
"#;

/// The scripts a fuzzed message is run through: the one above, then those siprox ships.
pub fn scripts() -> &'static [Script] {
    static SCRIPTS: OnceLock<Vec<Script>> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        [
            ("everything.cfg", EVERYTHING),
            (
                "conf.d/scripts/default.cfg",
                include_str!("../../conf.d/scripts/default.cfg"),
            ),
            (
                "docs/examples/default.cfg",
                include_str!("../../docs/examples/default.cfg"),
            ),
            (
                "docs/examples/htable-ban.cfg",
                include_str!("../../docs/examples/htable-ban.cfg"),
            ),
        ]
        .iter()
        .map(|(file, src)| compile(src, file).unwrap_or_else(|e| panic!("{file}:\n{e}")))
        .collect()
    })
}

struct NoLog;

impl ScriptLog for NoLog {
    fn log(&self, _: Level, _: &str) {}
    fn enabled(&self, _: Level) -> bool {
        true
    }
    fn note(&self, _: Note<'_>) {}
}

struct AllOpen;

impl Liveness for AllOpen {
    fn is_open(&self, _: ConnId) -> bool {
        true
    }
}

/// The runtime's state for runs: a proxy, a registrar, credentials and hash tables.
struct World {
    proxy: Proxy,
    store: MemoryStore,
    settings: Settings,
    authenticator: Authenticator,
    users: Users,
    htables: Htables,
}

const NOW: i64 = 1_800_000_000;

impl World {
    fn new() -> World {
        let users = Users::from_toml(
            "realm = \"example.com\"\n[[user]]\nname = \"alice\"\npassword = \"secret\"\n",
            "users.toml",
        )
        .expect("users");
        World {
            proxy: Proxy::new(ProxyConfig {
                listens: vec![
                    Listen {
                        transport: Transport::Tls,
                        addr: "192.0.2.10:5061".parse().expect("addr"),
                        advertise: None,
                    },
                    Listen {
                        transport: Transport::Udp,
                        addr: "192.0.2.10:5060".parse().expect("addr"),
                        advertise: None,
                    },
                ],
                aliases: vec!["example.com".into()],
                ..ProxyConfig::default()
            }),
            store: MemoryStore::new(),
            settings: Settings::default(),
            authenticator: Authenticator::new(b"fuzz secret", AuthSettings::default())
                .expect("authenticator"),
            users,
            htables: Htables::new([("seen", 0), ("ipban", 300), ("authfail", 60)]),
        }
    }

    /// Run `script` on `msg` as the worker does: a request only when it validates (the core
    /// answers the others), a reply whatever it is.
    fn run(&self, script: &Script, msg: &Message, rx: &Inbound, tls: Option<&TlsFacts>) {
        let digest = Digest {
            authenticator: &self.authenticator,
            users: &self.users,
        };
        let env = Env {
            registrar: Some(Registrar {
                store: &self.store,
                settings: &self.settings,
                liveness: &AllOpen,
            }),
            auth: Some(&digest),
            log: &NoLog,
            now: NOW,
            tm: None,
            htables: Some(&self.htables),
        };
        if msg.is_request() {
            if let Ok(checked) = msg.validated() {
                let run = host::run_request_checked(
                    script,
                    None,
                    &self.proxy,
                    &env,
                    msg,
                    rx,
                    tls,
                    Some(&checked),
                );
                let _ = (run.actions.len(), run.relay.is_some(), run.t_replies.len());
            }
        } else {
            let _ = host::run_reply(script, &self.proxy, &env, msg, rx, tls);
        }
    }
}

fn inbound(tls: bool) -> Inbound {
    Inbound {
        transport: if tls { Transport::Tls } else { Transport::Udp },
        source: "198.51.100.7:40123".parse().expect("addr"),
        local: if tls {
            "192.0.2.10:5061"
        } else {
            "192.0.2.10:5060"
        }
        .parse()
        .expect("addr"),
        conn: tls.then_some(ConnId(7)),
    }
}

/// Target `peer_certificate`: the input as a certificate (DER, else PEM), read into its facts
/// as at a handshake (`tls::cert_facts`), then `EVERYTHING` (its `@tls` selects and `$tls_*`
/// variables among the rest) on a fixed INVITE over TLS from a peer with that certificate.
pub fn peer_certificate(data: &[u8]) {
    let Ok(cert) =
        openssl::x509::X509::from_der(data).or_else(|_| openssl::x509::X509::from_pem(data))
    else {
        return;
    };
    let peer = siprox::tls::cert_facts(&cert);
    let mut tls = facts("");
    tls.server_name = None;
    tls.peer = Some(Arc::new(peer));
    let world = World::new();
    if let Some(invite) = fixed().first() {
        world.run(&scripts()[0], invite, &inbound(true), Some(&tls));
    }
}

/// TLS facts whose peer certificate's texts come from the fuzzer (a peer chooses its own
/// certificate's subject and names, in any bytes a CA signs).
fn facts(text: &str) -> TlsFacts {
    let mut parts = text.split('\u{1}');
    let mut next = || parts.next().unwrap_or("").to_owned();
    let (cn, o, san, line) = (next(), next(), next(), next());
    let dn = DnFacts {
        line,
        cn: Some(cn.clone()),
        cn_count: 1,
        o: Some(o),
        ou: None,
        c: None,
        st: None,
        l: None,
        uid: Some(cn.clone()),
        email: Some(san.clone()),
    };
    let cert = CertFacts {
        subject: dn.clone(),
        issuer: dn,
        version: 2,
        serial: cn.clone(),
        not_before: "Jun 17 15:03:20 2005 GMT".into(),
        not_after: "Jun 17 15:03:20 2035 GMT".into(),
        not_after_unix: 2_065_964_600,
        not_before_unix: 1_119_020_600,
        san_email: vec![san.clone()],
        san_dns: vec![san.clone(), cn],
        san_uri: vec![san.clone()],
        san_ip: vec![san],
        self_signed: false,
        fingerprint_sha256: "ab".repeat(32),
    };
    TlsFacts {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        cipher_bits: 256,
        desc: "TLS_AES_256_GCM_SHA384 TLSv1.3 Kx=any Au=any Enc=AESGCM(256) Mac=AEAD\n".into(),
        server_name: Some(text.chars().take(64).collect()),
        domain: Some("example".into()),
        peer: Some(Arc::new(cert)),
        my: None,
        peer_verified: true,
        peer_revoked: false,
        cluster_peer: false,
    }
}

/// Target `script_message`: the first byte picks a script (low bits), the transport (bit
/// 2) and whether the peer has a certificate (bit 3); with one, the text up to the first
/// NUL is its fields (separated by \x01) and the rest the message, else the rest is the
/// message. The message runs through the script, then again through the same world (a
/// REGISTER's bindings are there for the next request's lookup).
pub fn script_message(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let scripts = scripts();
    let script = &scripts[usize::from(first & 3) % scripts.len()];
    let rx = inbound(first & 4 != 0);
    let (tls, bytes) = if first & 8 != 0 {
        let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..cut]);
        (Some(facts(&text)), rest.get(cut + 1..).unwrap_or_default())
    } else {
        (None, rest)
    };
    let Ok(msg) = Message::parse_datagram(
        Bytes::copy_from_slice(bytes),
        &siprox::sip::Limits::default(),
    ) else {
        return;
    };
    let world = World::new();
    world.run(script, &msg, &rx, tls.as_ref());
    world.run(script, &msg, &rx, tls.as_ref());
}

/// Fixed messages an arbitrary script runs on.
fn fixed() -> &'static [Message] {
    static FIXED: OnceLock<Vec<Message>> = OnceLock::new();
    FIXED.get_or_init(|| {
        [
            "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TLS 198.51.100.7:40123;branch=z9hG4bKa1;rport\nMax-Forwards: 70\nTo: <sip:bob@example.com>\nFrom: \"A\" <sip:alice@example.com>;tag=a1\nCall-ID: c1\nCSeq: 1 INVITE\nContact: <sip:alice@198.51.100.7:40123;transport=tls>\nX-Foo: a=1;b=2, <sip:x@y>;p=q\nRoute: <sip:192.0.2.10:5061;lr>\nContent-Type: application/sdp\nContent-Length: 4\n\nv=0\n",
            "REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/TLS 198.51.100.7:40123;branch=z9hG4bKr1\nMax-Forwards: 70\nTo: <sip:alice@example.com>\nFrom: <sip:alice@example.com>;tag=r1\nCall-ID: r1\nCSeq: 1 REGISTER\nContact: <sip:alice@198.51.100.7:40123;transport=tls>;expires=600;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\";reg-id=1\nSupported: outbound, path\nContent-Length: 0\n\n",
            "SIP/2.0 180 Ringing\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-sx1\nVia: SIP/2.0/TLS 198.51.100.7:40123;branch=z9hG4bKa1;rport=40123\nTo: <sip:bob@example.com>;tag=b1\nFrom: <sip:alice@example.com>;tag=a1\nCall-ID: c1\nCSeq: 1 INVITE\nContact: <sip:bob@203.0.113.5>\nContent-Length: 0\n\n",
        ]
        .iter()
        .map(|t| Message::parse(Bytes::from(t.replace('\n', "\r\n"))).expect("fixed message"))
        .collect()
    })
}

/// Target `script_text`: the input as route-script text; when it compiles, it runs on each
/// fixed message (a request, a REGISTER, a reply) over TLS with a peer certificate.
pub fn script_text(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(script) = compile(src, "fuzz.cfg") else {
        return;
    };
    let world = World::new();
    let tls = facts("alice\u{1}Example\u{1}alice@example.com\u{1}/CN=alice/O=Example");
    for m in fixed() {
        world.run(&script, m, &inbound(true), Some(&tls));
    }
}
