//! Unit tests of the script host: what each script effect becomes (the actions a runtime
//! carries out), and which script a message runs. The runtime's state comes in through the
//! host's own seams (`Liveness`, `Auth`, `ScriptLog`) with small fakes, and the registrar
//! through the core's in-memory store. No sockets; must never depend on the clock.

use std::cell::RefCell;

use bytes::Bytes;

use super::host::{
    run_branch, run_failure, run_http, run_reply_named, run_request, run_request_checked, Auth,
    Env, Failed, HttpDecision, Liveness, Note, Registrar, RequestRun, ScriptLog, Transactions,
    TxCheck,
};
use super::{compile, Level, ScriptSet};
use crate::auth::{AuthKind, AuthResult, Challenge, CryptoError};
use crate::proxy::{
    Action, ConnId, Destination, ForwardOpts, Inbound, Listen, Proxy, ProxyConfig, Transport,
};
use crate::registrar::{self, LocationStore as _, MemoryStore};
use crate::select::Value;
use crate::sip::Message;
use crate::tls::TlsFacts;

const NOW: i64 = 1_800_000_000;
const ME: &str = "192.0.2.10:5061";

fn proxy() -> Proxy {
    Proxy::new(ProxyConfig {
        listens: vec![Listen {
            transport: Transport::Tls,
            addr: ME.parse().unwrap(),
            advertise: None,
        }],
        aliases: vec!["example.com".into()],
        ..ProxyConfig::default()
    })
}

fn tls_in(conn: u64) -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: "198.51.100.7:40123".parse().unwrap(),
        local: ME.parse().unwrap(),
        conn: Some(ConnId(conn)),
    }
}

fn msg(s: &str) -> Message {
    Message::parse(Bytes::from(s.replace('\n', "\r\n"))).unwrap()
}

fn request(method: &str, ruri: &str, extra: &str) -> Message {
    msg(&format!(
        "{method} {ruri} SIP/2.0\n\
Via: SIP/2.0/TLS 198.51.100.7:40123;branch=z9hG4bK{method}1\n\
Max-Forwards: 70\n\
To: <sip:bob@example.com>\n\
From: <sip:alice@example.com>;tag=a1\n\
Call-ID: call-1\n\
CSeq: 1 {method}\n\
{extra}Content-Length: 0\n\n"
    ))
}

fn register_bob() -> Message {
    request(
        "REGISTER",
        "sip:example.com",
        "Contact: <sip:bob@198.51.100.7:40123;transport=tls>;expires=600\n",
    )
}

/// Connections the fake table holds open.
struct Open(Vec<ConnId>);

impl Liveness for Open {
    fn is_open(&self, conn: ConnId) -> bool {
        self.0.contains(&conn)
    }
}

/// Credentials that are never there, and a fixed challenge.
struct NoCredentials;

impl Auth for NoCredentials {
    fn authorize(&self, _: &Message, _: AuthKind, _: &str, _: i64) -> AuthResult {
        AuthResult::NoCredentials
    }

    fn challenge(
        &self,
        kind: AuthKind,
        realm: &str,
        stale: bool,
        _: i64,
    ) -> Result<Challenge, CryptoError> {
        let (code, reason) = kind.challenge_status();
        Ok(Challenge {
            code,
            reason,
            headers: format!(
                "{}: Digest realm=\"{realm}\", nonce=\"n1\", stale={stale}\r\n",
                kind.challenge_header()
            ),
        })
    }
}

/// Keeps what the run logged and noticed.
#[derive(Default)]
struct Recorded(RefCell<Vec<String>>);

impl ScriptLog for Recorded {
    fn log(&self, _: Level, msg: &str) {
        self.0.borrow_mut().push(msg.to_owned());
    }
    fn enabled(&self, _: Level) -> bool {
        true
    }
    fn note(&self, note: Note<'_>) {
        self.0.borrow_mut().push(format!("{note:?}"));
    }
}

/// The runtime's state for one test: a store, open connections, credentials, a log.
struct World {
    store: MemoryStore,
    settings: registrar::Settings,
    open: Open,
    log: Recorded,
}

impl World {
    fn new(open: &[u64]) -> World {
        World {
            store: MemoryStore::new(),
            settings: registrar::Settings::default(),
            open: Open(open.iter().map(|&c| ConnId(c)).collect()),
            log: Recorded::default(),
        }
    }

    fn env(&self) -> Env<'_> {
        Env {
            registrar: Some(Registrar {
                store: &self.store,
                settings: &self.settings,
                liveness: &self.open,
            }),
            auth: Some(&NoCredentials),
            log: &self.log,
            now: NOW,
            tm: None,
            htables: None,
        }
    }

    fn run(&self, script: &str, m: &Message, rx: &Inbound) -> RequestRun {
        let s = compile(script, "test.cfg").unwrap();
        run_request(&s, None, &proxy(), &self.env(), m, rx, None)
    }
}

fn only_send(run: RequestRun) -> (Destination, Message) {
    assert!(!run.outcome.is_error());
    assert_eq!(run.actions.len(), 1, "{:?}", run.actions);
    match run.actions.into_iter().next().map(|(a, _)| a) {
        Some(Action::Send { dest, bytes }) => (dest, Message::parse(bytes).unwrap()),
        other => panic!("expected one Send, got {other:?}"),
    }
}

fn header<'m>(m: &'m Message, name: &'m str) -> Option<&'m str> {
    m.header_values_by_name(name).next()
}

#[test]
fn forward_to_a_name_asks_for_resolution() {
    let w = World::new(&[]);
    let run = w.run(
        r#"route { forward("sip.example.net;transport=tls"); }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    );
    assert_eq!(run.actions.len(), 1);
    match &run.actions[0] {
        (Action::Forward { hop }, opts) => {
            assert_eq!(hop.host, "sip.example.net");
            assert_eq!(hop.transport, Some(Transport::Tls));
            assert_eq!(
                opts.target.as_ref().map(|h| h.host.as_str()),
                Some("sip.example.net")
            );
        }
        other => panic!("expected Forward, got {other:?}"),
    }
}

#[test]
fn forward_to_a_literal_sends_with_our_via() {
    let w = World::new(&[]);
    let (dest, out) = only_send(w.run(
        r#"route { forward("203.0.113.5:5070;transport=tcp"); }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    ));
    assert_eq!(dest.transport, Transport::Tcp);
    assert_eq!(
        dest.socket_addr(),
        Some("203.0.113.5:5070".parse().unwrap())
    );
    assert!(out.is_request());
    let via = header(&out, "Via");
    assert!(
        via.is_some_and(|v| v.starts_with("SIP/2.0/TCP 192.0.2.10:")),
        "{via:?}"
    );
}

#[test]
fn a_bad_forward_target_fails_the_call() {
    let w = World::new(&[]);
    let run = w.run(
        r#"route {
            $var(t) = "bad host";
            if (!forward("$var(t)")) { sl_send_reply("500", "Bad Target"); }
        }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    );
    let (_, out) = only_send(run);
    // Nothing forwarded: only the script's own answer.
    assert_eq!(out.status(), Some(500));
}

#[test]
fn a_reply_carries_append_to_reply_headers() {
    let w = World::new(&[]);
    let (dest, out) = only_send(w.run(
        r#"route { append_to_reply("X-Why: policy\r\n"); sl_send_reply("403", "Forbidden"); }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(7),
    ));
    assert_eq!(out.status(), Some(403));
    assert_eq!(header(&out, "X-Why"), Some("policy"));
    // Back on the connection the request came on.
    assert_eq!(dest.connection(), Some(ConnId(7)));
}

#[test]
fn save_answers_200_with_the_binding() {
    let w = World::new(&[3]);
    let (_, out) = only_send(w.run(
        r#"route { if (method == "REGISTER") { save("location"); exit; } }"#,
        &register_bob(),
        &tls_in(3),
    ));
    assert_eq!(out.status(), Some(200));
    assert!(header(&out, "Contact").is_some_and(|c| c.contains("bob@198.51.100.7")));
    assert_eq!(w.store.get("sip:bob@example.com").map(|b| b.len()), Ok(1));
}

const LOOKUP: &str = r#"route {
    if (method == "REGISTER") { save("location"); exit; }
    if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
    forward();
}"#;

#[test]
fn lookup_hit_forwards_over_the_registered_flow() {
    let w = World::new(&[3]);
    only_send(w.run(LOOKUP, &register_bob(), &tls_in(3)));
    let (dest, out) = only_send(w.run(
        LOOKUP,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(9),
    ));
    assert!(out.is_request());
    assert_eq!(dest.transport, Transport::Tls);
    assert_eq!(dest.connection(), Some(ConnId(3)));
    assert_eq!(
        out.request_uri_str(),
        Some("sip:bob@198.51.100.7:40123;transport=tls")
    );
}

#[test]
fn lookup_miss_lets_the_script_answer_404() {
    let w = World::new(&[]);
    let (_, out) = only_send(w.run(
        LOOKUP,
        &request("INVITE", "sip:carol@example.com", ""),
        &tls_in(9),
    ));
    assert_eq!(out.status(), Some(404));
}

#[test]
fn lookup_of_a_closed_flow_answers_480_once() {
    let w = World::new(&[3]);
    only_send(w.run(LOOKUP, &register_bob(), &tls_in(3)));
    let gone = World {
        open: Open(Vec::new()),
        ..w
    };
    // The script's own 404 is not sent: one answer per request.
    let (_, out) = only_send(gone.run(
        LOOKUP,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(9),
    ));
    assert_eq!(out.status(), Some(480));
}

#[test]
fn missing_credentials_get_a_digest_challenge() {
    let w = World::new(&[]);
    let (_, out) = only_send(w.run(
        r#"route {
            if (!www_authorize("example.com", "subscriber")) {
                www_challenge("example.com", "0");
                exit;
            }
            forward();
        }"#,
        &request("REGISTER", "sip:example.com", ""),
        &tls_in(1),
    ));
    assert_eq!(out.status(), Some(401));
    assert_eq!(
        header(&out, "WWW-Authenticate"),
        Some("Digest realm=\"example.com\", nonce=\"n1\", stale=false")
    );
}

#[test]
fn without_a_registrar_or_credentials_the_functions_fail() {
    let log = Recorded::default();
    let env = Env::bare(&log, NOW);
    let s = compile(
        r#"route {
            if (!save("location") && !lookup("location") && !www_authorize("x", "y")) {
                sl_send_reply("503", "No Registrar");
            }
        }"#,
        "test.cfg",
    )
    .unwrap();
    let m = register_bob();
    let (_, out) = only_send(run_request(&s, None, &proxy(), &env, &m, &tls_in(1), None));
    assert_eq!(out.status(), Some(503));
}

fn http_request(method: &str) -> Message {
    msg(&format!(
        "POST /RPC2 HTTP/1.1\nHost: example.com\nContent-Type: application/json\nContent-Length: {}\n\n{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"id\":1}}",
        37 + method.len()
    ))
}

#[test]
fn dispatch_rpc_hands_an_http_request_to_the_rpc() {
    let mut set = ScriptSet::default();
    set.default = Some(
        compile(
            r#"route {
                if (@rpc.method == "core.version") { dispatch_rpc(); exit; }
                if (@rpc.method == "core.uptime") { dispatch_rpc_trusted(); exit; }
                if (@rpc.method == "core.kill") { sl_send_reply("403", "Forbidden"); exit; }
            }"#,
            "rpc.cfg",
        )
        .unwrap(),
    );
    let log = Recorded::default();
    let env = Env::bare(&log, NOW);
    let p = proxy();
    let decide = |method: &str| {
        let m = http_request(method);
        run_http(&set, &p, &env, &m, &tls_in(1), None)
    };
    // The RPC layer applies `[management] allow` unless the script took that on itself.
    assert_eq!(
        decide("core.version"),
        HttpDecision::Dispatch { trusted: false }
    );
    assert_eq!(
        decide("core.uptime"),
        HttpDecision::Dispatch { trusted: true }
    );
    assert_eq!(
        decide("core.kill"),
        HttpDecision::Reply(403, "Forbidden".to_owned())
    );
    assert_eq!(decide("tls.list"), HttpDecision::Refuse);
    // sanity_check() first (as in a SIP route) lets an RPC through: it checks SIP only.
    let mut sane = ScriptSet::default();
    sane.default = Some(
        compile(
            r#"route {
                if (!sanity_check()) { exit; }
                if (is_method("POST")) { dispatch_rpc(); exit; }
            }"#,
            "rpc.cfg",
        )
        .unwrap(),
    );
    let m = http_request("core.version");
    assert_eq!(
        run_http(&sane, &p, &env, &m, &tls_in(1), None),
        HttpDecision::Dispatch { trusted: false }
    );
    // No script: nothing dispatches it.
    let empty = ScriptSet::default();
    let m = http_request("core.version");
    assert_eq!(
        run_http(&empty, &p, &env, &m, &tls_in(1), None),
        HttpDecision::Refuse
    );
}

#[test]
fn dispatch_rpc_on_a_sip_request_fails() {
    let w = World::new(&[]);
    let (_, out) = only_send(w.run(
        r#"route { if (!dispatch_rpc()) { sl_send_reply("400", "Not HTTP"); } }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    ));
    assert_eq!(out.status(), Some(400));
}

fn script(file: &str) -> super::Script {
    compile("route { forward(); }", file).unwrap()
}

#[test]
fn script_selection_tls_domain_then_request_uri_then_default() {
    let mut set = ScriptSet::default();
    set.add_domain("a", &["a.example.com".to_owned()], script("a.cfg"));
    set.add_domain("b", &["b.example.com".to_owned()], script("b.cfg"));
    let facts = |d: &str| TlsFacts {
        domain: Some(d.into()),
        ..TlsFacts::default()
    };
    let pick = |set: &ScriptSet, tls: Option<&TlsFacts>, ruri: &str| {
        set.for_request(tls, &request("INVITE", ruri, ""))
            .map(|(s, tag)| (s.file().to_owned(), tag.map(str::to_owned)))
    };
    let named = |f: &str, t: &str| Some((f.to_owned(), Some(t.to_owned())));

    // The connection's TLS domain wins over the Request-URI.
    assert_eq!(
        pick(&set, Some(&facts("b")), "sip:x@a.example.com"),
        named("b.cfg", "b")
    );
    // A TLS domain without a script of its own: the Request-URI's domain (case and a
    // trailing dot do not matter).
    assert_eq!(
        pick(&set, Some(&facts("c")), "sip:x@A.Example.COM."),
        named("a.cfg", "a")
    );
    assert_eq!(pick(&set, None, "sip:x@b.example.com"), named("b.cfg", "b"));
    // Neither, and no default: the built-in route.
    assert_eq!(pick(&set, None, "sip:x@elsewhere.net"), None);
    set.default = Some(script("default.cfg"));
    assert_eq!(
        pick(&set, None, "sip:x@elsewhere.net"),
        Some(("default.cfg".to_owned(), None))
    );
    // The script a response runs: the one its request was forwarded by, else the default.
    assert_eq!(set.for_reply(Some("a")).map(|s| s.file()), Some("a.cfg"));
    assert_eq!(
        set.for_reply(Some("gone")).map(|s| s.file()),
        Some("default.cfg")
    );
    assert!(ScriptSet::default()
        .for_request(None, &request("INVITE", "sip:x@a.example.com", ""))
        .is_none());
}

const AUTH: &str = r#"route {
    if (!www_authorize("example.com", "subscriber")) {
        www_challenge("example.com", "0");
        exit;
    }
    forward();
}"#;

#[test]
fn the_real_digest_challenges_and_refuses_bad_credentials_once() {
    let authenticator =
        crate::auth::Authenticator::new(b"0123456789abcdef", Default::default()).unwrap();
    let users = crate::auth::Users::default();
    let digest = super::host::Digest {
        authenticator: &authenticator,
        users: &users,
    };
    let log = Recorded::default();
    let env = Env {
        auth: Some(&digest),
        ..Env::bare(&log, NOW)
    };
    let s = compile(AUTH, "test.cfg").unwrap();
    let p = proxy();
    let run = |extra: &str| {
        let m = request("REGISTER", "sip:example.com", extra);
        only_send(run_request(&s, None, &p, &env, &m, &tls_in(1), None)).1
    };

    // No credentials: one challenge per configured algorithm, SHA-256 first.
    let out = run("");
    assert_eq!(out.status(), Some(401));
    let challenges: Vec<&str> = out.header_values_by_name("WWW-Authenticate").collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(challenges[0].contains("realm=\"example.com\"") && challenges[0].contains("SHA-256"));

    // Credentials that do not parse: 400 from the host, and the script's challenge is not
    // sent after it (one answer per request).
    let out = run("Authorization: Digest realm=\"example.com\", username=\n");
    assert_eq!(out.status(), Some(400));
    assert!(log
        .0
        .borrow()
        .iter()
        .any(|l| l.contains("CredentialsRefused")));
}

#[test]
fn a_script_that_fails_at_run_time_answers_500_and_says_so() {
    let w = World::new(&[]);
    let s = compile(
        "route { route(LOOP); } route[LOOP] { route(LOOP); }",
        "loop.cfg",
    )
    .unwrap();
    let m = request("INVITE", "sip:bob@example.com", "");
    let run = run_request(&s, None, &proxy(), &w.env(), &m, &tls_in(1), None);
    assert!(run.outcome.is_error(), "{:?}", run.outcome);
    match run.actions.as_slice() {
        [(Action::Send { bytes, .. }, _)] => {
            assert_eq!(Message::parse(bytes.clone()).unwrap().status(), Some(500))
        }
        other => panic!("expected one 500, got {other:?}"),
    }
}

/// A cluster node's store: the memory store plus what it says it withholds.
struct Withholding(MemoryStore, Option<registrar::Withheld>);

impl registrar::LocationStore for Withholding {
    fn get(&self, aor: &str) -> Result<Vec<registrar::Binding>, registrar::StoreError> {
        self.0.get(aor)
    }
    fn update(
        &self,
        aor: &str,
        f: &mut registrar::UpdateFn<'_>,
    ) -> Result<bool, registrar::StoreError> {
        self.0.update(aor, f)
    }
    fn remove(&self, aor: &str) -> Result<usize, registrar::StoreError> {
        self.0.remove(aor)
    }
    fn expire(&self, now: i64) -> Result<usize, registrar::StoreError> {
        self.0.expire(now)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn for_each(
        &self,
        f: &mut dyn FnMut(&str, &[registrar::Binding]),
    ) -> Result<(), registrar::StoreError> {
        self.0.for_each(f)
    }
    fn withheld(&self, _: &str, _: i64) -> Option<registrar::Withheld> {
        self.1
    }
}

fn run_with_store(store: &dyn registrar::LocationStore, settings: &registrar::Settings) -> Message {
    let (open, log) = (Open(Vec::new()), Recorded::default());
    let env = Env {
        registrar: Some(Registrar {
            store,
            settings,
            liveness: &open,
        }),
        auth: None,
        log: &log,
        now: NOW,
        tm: None,
        htables: None,
    };
    let s = compile(LOOKUP, "test.cfg").unwrap();
    let run = run_request(
        &s,
        None,
        &proxy(),
        &env,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(9),
        None,
    );
    only_send(run).1
}

#[test]
fn lookup_of_another_nodes_phone_routes_to_that_node() {
    let store = Withholding(MemoryStore::new(), None);
    let settings = registrar::Settings {
        node: Some("n2".into()),
        ..registrar::Settings::default()
    };
    let route = "<sip:192.0.2.20:5071;transport=tls;lr;nf=3.tls.00>";
    let mut flow = registrar::flow_of(&tls_in(3), Some("n1".into()));
    flow.node_route = Some(route.into());
    let b = registrar::Binding {
        contact: "sip:bob@198.51.100.7:40123;transport=tls".into(),
        expires: NOW + 600,
        q: None,
        call_id: "c".into(),
        cseq: 1,
        path: vec![],
        flow,
        instance: None,
        reg_id: None,
        user_agent: None,
        updated: NOW,
    };
    store.put("sip:bob@example.com", vec![b.clone()]).unwrap();
    let (open, log) = (Open(Vec::new()), Recorded::default());
    let env = Env {
        registrar: Some(Registrar {
            store: &store,
            settings: &settings,
            liveness: &open,
        }),
        auth: None,
        log: &log,
        now: NOW,
        tm: None,
        htables: None,
    };
    let s = compile(LOOKUP, "test.cfg").unwrap();
    let m = request("INVITE", "sip:bob@example.com", "");
    let (dest, out) = only_send(run_request(&s, None, &proxy(), &env, &m, &tls_in(9), None));
    assert_eq!(dest.socket_addr(), Some("192.0.2.20:5071".parse().unwrap()));
    assert_eq!(dest.transport, Transport::Tls);
    assert_eq!(header(&out, "Route"), Some(route));
    assert_eq!(out.request_uri_str(), Some(b.contact.as_str()));
    // Without the owner's Route the binding cannot be reached: 480, not a guess.
    let mut lost = b;
    lost.flow.node_route = None;
    store.put("sip:bob@example.com", vec![lost]).unwrap();
    assert_eq!(run_with_store(&store, &settings).status(), Some(480));
}

#[test]
fn withheld_bindings_answer_480_or_503_instead_of_404() {
    let settings = registrar::Settings::default();
    let dead = Withholding(
        MemoryStore::new(),
        Some(registrar::Withheld::NodeDown { bindings: 1 }),
    );
    assert_eq!(run_with_store(&dead, &settings).status(), Some(480));
    let stale = Withholding(
        MemoryStore::new(),
        Some(registrar::Withheld::Stale { retry_after: 6 }),
    );
    let out = run_with_store(&stale, &settings);
    assert_eq!(out.status(), Some(503));
    assert_eq!(header(&out, "Retry-After"), Some("6"));
    let single = Withholding(MemoryStore::new(), None);
    assert_eq!(run_with_store(&single, &settings).status(), Some(404));
}

#[test]
fn a_node_token_to_a_closed_flow_answers_430() {
    let mut cfg = proxy().config().clone();
    cfg.node = Some("n1".into());
    let p = Proxy::new(cfg);
    let nf = p
        .config()
        .flow_keys
        .node_token(3, Transport::Tls, "n1")
        .unwrap();
    let m = request(
        "INVITE",
        "sip:bob@198.51.100.7:40123;transport=tls",
        &format!("Route: <sip:{ME};transport=tls;lr;nf={nf}>\n"),
    );
    let node = TlsFacts {
        peer_verified: true,
        cluster_peer: true,
        ..TlsFacts::default()
    };
    let s = compile("route { forward(); }", "test.cfg").unwrap();
    let run_on = |w: &World| {
        only_send(run_request(
            &s,
            None,
            &p,
            &w.env(),
            &m,
            &tls_in(9),
            Some(&node),
        ))
    };
    let (dest, out) = run_on(&World::new(&[3]));
    assert!(out.is_request());
    assert_eq!(dest.connection(), Some(ConnId(3)));
    let (_, out) = run_on(&World::new(&[]));
    assert_eq!(out.status(), Some(430));
}

#[test]
fn t_relay_is_a_relay_for_the_runtime_and_forward_stays_stateless() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let run = w.run(
        r#"route { t_on_failure("vm"); t_set_fr(2000, 300); $du = "sip:203.0.113.5:5070"; t_relay(); } failure_route[vm] { }"#,
        &m,
        &tls_in(1),
    );
    assert!(run.actions.is_empty(), "{:?}", run.actions);
    let relay = run.relay.expect("t_relay recorded");
    assert_eq!(relay.failure_route.as_deref(), Some("vm"));
    assert_eq!(relay.fr, Some((2000, 300)));
    assert_eq!(
        relay
            .opts
            .target
            .as_ref()
            .map(|h| (h.host.as_str(), h.port)),
        Some(("203.0.113.5", Some(5070)))
    );
    assert!(run.outcome.forwarded);
    let run = w.run(r#"route { forward("203.0.113.5:5070"); }"#, &m, &tls_in(1));
    assert!(run.relay.is_none());
    assert_eq!(run.actions.len(), 1);
}

#[test]
fn failure_route_sees_the_status_and_relays_or_replies() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let s = compile(
        r#"route { t_relay(); }
failure_route[vm] {
  if (t_check_status("486|408")) { $du = "sip:203.0.113.9:5090"; $ru = "sip:vm@203.0.113.9"; t_relay(); exit; }
  if ($T_reply_code == 600) { t_reply("599", "Gone Away"); }
}"#,
        "test.cfg",
    )
    .unwrap();
    let p = proxy();
    let env = w.env();
    let run = |code| {
        run_failure(
            &s,
            "vm",
            None,
            &p,
            &env,
            &m,
            &tls_in(1),
            None,
            fail(code, Default::default()),
        )
        .unwrap()
    };
    for code in [486, 408] {
        let r = run(code);
        let relay = r.relay.expect("a new branch");
        assert_eq!(relay.opts.ruri.as_deref(), Some("sip:vm@203.0.113.9"));
        assert!(r.reply.is_none());
    }
    let r = run(600);
    assert!(r.relay.is_none());
    assert_eq!(r.reply, Some((599, "Gone Away".to_owned())));
    let r = run(404);
    assert!(r.relay.is_none() && r.reply.is_none());
    assert!(run_failure(
        &s,
        "none",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        fail(486, Default::default())
    )
    .is_none());
}

/// Message and branch flags set before `t_relay()` travel with the relay; failure_route
/// and onreply_route[NAME] given them read them; flags set after `t_relay()` do not.
#[test]
fn flags_set_before_t_relay_reach_failure_and_reply_routes() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let script = r#"route { setflag(3); setbflag(5); $bf = $bf + 2; t_on_failure("F"); t_on_reply("R"); t_relay(); setflag(9); }
failure_route[F] { if (isflag(3) && isbflagset(5) && isbflagset(1) && !isflag(9)) { t_reply("599", "flags kept"); } }
onreply_route[R] { if (isflag(3) && $bf == 34) { drop; } }
branch_route[B] { if (isflag(3) && isbflagset(5)) { drop; } }"#;
    let run = w.run(script, &m, &tls_in(1));
    let relay = run.relay.expect("relay");
    assert_eq!((relay.flags, relay.bflags), (1 << 3, (1 << 5) | 2));
    let s = compile(script, "test.cfg").unwrap();
    let p = proxy();
    let env = w.env();
    let failed = |flags, bflags| Failed {
        flags,
        bflags,
        ..fail(486, Default::default())
    };
    let r = run_failure(
        &s,
        "F",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        failed(relay.flags, relay.bflags),
    )
    .unwrap();
    assert_eq!(r.reply, Some((599, "flags kept".to_owned())));
    let r = run_failure(&s, "F", None, &p, &env, &m, &tls_in(1), None, failed(0, 0)).unwrap();
    assert_eq!(r.reply, None);
    let resp = Message::parse(Bytes::from(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-x\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n\
         Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    let kept = |f| run_reply_named(&s, "R", &p, &env, &resp, &tls_in(1), None, f, None, &[]);
    assert_eq!(kept((relay.flags, relay.bflags)), Some(false));
    assert_eq!(kept((0, 0)), Some(true));
    let branch = |f| {
        let mut opts = ForwardOpts::default();
        run_branch(
            &s,
            "B",
            None,
            &p,
            &env,
            &m,
            &tls_in(1),
            None,
            0,
            &mut opts,
            f,
            &[],
        )
    };
    assert_eq!(branch((relay.flags, relay.bflags)), Some(false));
    assert_eq!(branch((0, 0)), Some(true));
}

/// A transaction table for `t_check_trans` / `t_newtran`: what it answers, and what it
/// was asked to make.
struct FakeTm {
    check: TxCheck,
    room: bool,
    made: RefCell<usize>,
}

impl Transactions for FakeTm {
    fn check(&self, _: &Message) -> TxCheck {
        self.check
    }
    fn create(&self, _: &Message, _: &Inbound) -> bool {
        *self.made.borrow_mut() += 1;
        self.room
    }
}

#[test]
fn t_on_reply_is_armed_with_the_relay_and_its_route_drops_what_it_says() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let script = r#"route { t_on_reply("R"); t_relay(); }
onreply_route[R] { if ($T_reply_code == 180 && $rs == 180) { drop; } }"#;
    let run = w.run(script, &m, &tls_in(1));
    assert_eq!(run.relay.expect("relay").reply_route.as_deref(), Some("R"));
    let s = compile(script, "test.cfg").unwrap();
    let p = proxy();
    let log = Recorded::default();
    let env = Env::bare(&log, NOW);
    let resp = |code: u16| {
        Message::parse(Bytes::from(format!(
            "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-x\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n\
             Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )))
        .unwrap()
    };
    let kept = |code| {
        run_reply_named(
            &s,
            "R",
            &p,
            &env,
            &resp(code),
            &tls_in(1),
            None,
            (0, 0),
            None,
            &[],
        )
    };
    assert_eq!(kept(180), Some(false));
    assert_eq!(kept(183), Some(true));
    // $T_branch_idx is the branch the response came from.
    let s2 = compile(
        r#"route { t_on_reply("R"); t_relay(); }
onreply_route[R] { if ($T_branch_idx == 1) { drop; } }"#,
        "test.cfg",
    )
    .unwrap();
    let on = |idx| {
        run_reply_named(
            &s2,
            "R",
            &p,
            &env,
            &resp(180),
            &tls_in(1),
            None,
            (0, 0),
            idx,
            &[],
        )
    };
    assert_eq!(on(Some(1)), Some(false));
    assert_eq!(on(Some(0)), Some(true));
    assert_eq!(
        run_reply_named(
            &s,
            "none",
            &p,
            &env,
            &resp(180),
            &tls_in(1),
            None,
            (0, 0),
            None,
            &[],
        ),
        None
    );
}

#[test]
fn t_newtran_and_t_check_trans_ask_the_table_and_t_reply_then_goes_through_it() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let s = compile(
        r#"route {
  if (t_check_trans()) { sl_send_reply("500", "exists"); exit; }
  if (!t_newtran()) { sl_send_reply("503", "no room"); exit; }
  if (t_newtran()) { sl_send_reply("500", "twice"); exit; }
  t_reply("486", "Busy Here");
}"#,
        "test.cfg",
    )
    .unwrap();
    let p = proxy();
    let go = |tm: &FakeTm| {
        let env = Env {
            tm: Some(tm),
            ..w.env()
        };
        run_request(&s, None, &p, &env, &m, &tls_in(1), None)
    };
    let tm = FakeTm {
        check: TxCheck::None,
        room: true,
        made: RefCell::new(0),
    };
    let run = go(&tm);
    assert_eq!(*tm.made.borrow(), 1, "the second t_newtran asks nothing");
    assert!(run.newtran && run.actions.is_empty(), "{:?}", run.actions);
    assert_eq!(run.t_replies.len(), 1);
    assert_eq!(run.t_replies[0].0, 486);
    // At the limit: -1, and the script answers statelessly.
    let full = FakeTm {
        check: TxCheck::None,
        room: false,
        made: RefCell::new(0),
    };
    let run = go(&full);
    assert!(!run.newtran && run.t_replies.is_empty());
    assert_eq!(run.actions.len(), 1);
    // A transaction exists: 1; a retransmission was absorbed: the run ends (0).
    let exists = FakeTm {
        check: TxCheck::Exists,
        room: true,
        made: RefCell::new(0),
    };
    assert_eq!(go(&exists).actions.len(), 1);
    let absorbed = FakeTm {
        check: TxCheck::Absorbed,
        room: true,
        made: RefCell::new(0),
    };
    let run = go(&absorbed);
    assert!(run.actions.is_empty() && !run.newtran);
    assert_eq!(run.outcome.end, super::End::Exit);
    // Without a table (a reply route, an event): both are -1.
    let run = w.run(
        r#"route { if (!t_check_trans() && !t_newtran()) { sl_send_reply("404", "x"); } }"#,
        &m,
        &tls_in(1),
    );
    assert_eq!(run.actions.len(), 1);
}

#[test]
fn failure_route_knows_whether_the_branch_timed_out_or_replied() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let s = compile(
        r#"route { t_relay(); }
failure_route[f] {
  if (t_branch_timeout() && t_branch_replied()) { t_reply("480", "both"); exit; }
  if (t_branch_timeout()) { t_reply("480", "timeout"); exit; }
  if (t_branch_replied()) { t_reply("480", "replied"); exit; }
  t_reply("480", "neither");
}"#,
        "test.cfg",
    )
    .unwrap();
    let p = proxy();
    let env = w.env();
    let run = |timed_out, replied| {
        let b = super::BranchEnd { timed_out, replied };
        run_failure(&s, "f", None, &p, &env, &m, &tls_in(1), None, fail(408, b))
            .unwrap()
            .reply
            .map(|r| r.1)
    };
    assert_eq!(run(true, true).as_deref(), Some("both"));
    assert_eq!(run(true, false).as_deref(), Some("timeout"));
    assert_eq!(run(false, true).as_deref(), Some("replied"));
    assert_eq!(run(false, false).as_deref(), Some("neither"));
}

/// bob on three devices: two at q 1.0 (connections 3 and 4), one at q 0.5 (connection 5).
fn bob_on_three_devices(w: &World) {
    for (conn, contact) in [
        (3, "<sip:bob@198.51.100.7:40123;transport=tls>"),
        (4, "<sip:bob@198.51.100.8:40124;transport=tls>;q=1"),
        (5, "<sip:bob@198.51.100.9:40125;transport=tls>;q=0.5"),
    ] {
        let m = request(
            "REGISTER",
            "sip:example.com",
            &format!("Contact: {contact};expires=600\n"),
        );
        let (_, out) = only_send(w.run(LOOKUP, &m, &tls_in(conn)));
        assert_eq!(out.status(), Some(200));
    }
}

#[test]
fn lookup_with_several_bindings_forks_by_q_on_t_relay_and_forward_stays_one_branch() {
    let w = World::new(&[3, 4, 5]);
    bob_on_three_devices(&w);
    let invite = request("INVITE", "sip:bob@example.com", "");
    // Stateless: exactly as with one binding, the first contact over its flow.
    let (dest, out) = only_send(w.run(LOOKUP, &invite, &tls_in(9)));
    let first = dest.connection();
    assert!(
        first == Some(ConnId(3)) || first == Some(ConnId(4)),
        "{first:?}"
    );
    assert!(out.is_request());

    let run = w.run(
        r#"route { lookup("location"); append_hf("X-Fork: 1\r\n"); t_relay(); }"#,
        &invite,
        &tls_in(9),
    );
    let relay = run.relay.expect("t_relay recorded");
    let conn = |o: &ForwardOpts| o.flow.as_ref().and_then(|d| d.connection());
    // The other q 1.0 device rings with the first, with the script's edits.
    assert_eq!(relay.branches.len(), 1);
    let other = &relay.branches[0];
    assert_ne!(conn(other), conn(&relay.opts));
    assert!(matches!(conn(other), Some(ConnId(3)) | Some(ConnId(4))));
    assert_eq!(other.append_hf, "X-Fork: 1\r\n");
    assert!(other
        .ruri
        .as_deref()
        .is_some_and(|u| u.starts_with("sip:bob@198.51.100.")));
    // The q 0.5 device waits for t_next_contacts().
    assert_eq!(relay.next.len(), 1);
    assert_eq!(relay.next[0].len(), 1);
    assert_eq!(conn(&relay.next[0][0]), Some(ConnId(5)));
    assert_eq!(
        relay.next[0][0].ruri.as_deref(),
        Some("sip:bob@198.51.100.9:40125;transport=tls")
    );
}

#[test]
fn t_next_contacts_is_for_failure_route_with_a_group_left() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let s = compile(
        r#"route { if (t_next_contacts()) { sl_send_reply("500", "Not Here"); } t_relay(); }
failure_route[next] { t_on_failure("next"); if (!t_next_contacts()) { t_reply("480", "Nobody"); } }"#,
        "test.cfg",
    )
    .unwrap();
    let p = proxy();
    let env = w.env();
    let run = run_request(&s, None, &p, &env, &m, &tls_in(1), None);
    assert!(run.relay.is_some() && run.actions.is_empty());
    let failed = |has_next| Failed {
        status: 486,
        branch_idx: Some(0),
        has_next,
        branch: Default::default(),
        flags: 0,
        bflags: 0,
        avps: Vec::new(),
    };
    let r = run_failure(
        &s,
        "next",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        failed(true),
    )
    .unwrap();
    assert!(r.next_contacts && r.reply.is_none());
    assert_eq!(r.failure_route.as_deref(), Some("next"));
    let r = run_failure(
        &s,
        "next",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        failed(false),
    )
    .unwrap();
    assert!(!r.next_contacts);
    assert_eq!(r.reply, Some((480, "Nobody".to_owned())));
}

#[test]
fn append_branch_takes_the_request_uri_and_du_as_they_are_when_called() {
    let w = World::new(&[]);
    let run = w.run(
        r#"route {
            append_branch();
            $du = "sip:203.0.113.7:5070";
            $ru = "sip:second@example.net";
            append_branch();
            append_branch("sip:third@203.0.113.8");
            $du = "";
            $ru = "sip:main@203.0.113.9";
            t_relay();
        }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    );
    let relay = run.relay.expect("t_relay recorded");
    assert_eq!(relay.opts.ruri.as_deref(), Some("sip:main@203.0.113.9"));
    assert!(relay.opts.target.is_none());
    let b: Vec<_> = relay
        .branches
        .iter()
        .map(|o| {
            (
                o.ruri.as_deref(),
                o.target.as_ref().map(|h| (h.host.as_str(), h.port)),
            )
        })
        .collect();
    assert_eq!(
        b,
        vec![
            (Some("sip:bob@example.com"), None),
            (
                Some("sip:second@example.net"),
                Some(("203.0.113.7", Some(5070)))
            ),
            (Some("sip:third@203.0.113.8"), None),
        ]
    );
    assert!(relay.next.is_empty());
    // Without t_relay (stateless forward) the branches are not used: one Send.
    let run = w.run(
        r#"route { append_branch("sip:x@203.0.113.8"); forward("203.0.113.9"); }"#,
        &request("INVITE", "sip:bob@example.com", ""),
        &tls_in(1),
    );
    only_send(run);
}

/// What failure_route is told: best final `status` from a branch that ended as `branch`.
fn fail(status: u16, branch: super::BranchEnd) -> Failed {
    Failed {
        status,
        branch_idx: None,
        has_next: false,
        branch,
        flags: 0,
        bflags: 0,
        avps: Vec::new(),
    }
}

#[test]
fn avps_set_before_t_relay_reach_failure_branch_and_reply_routes() {
    let w = World::new(&[]);
    let m = request("INVITE", "sip:bob@example.com", "");
    let script = r#"route { $avp(vm) = "sip:vm@example.com"; $avp(n) = 3; t_on_failure("F"); t_relay(); $avp(late) = 1; }
failure_route[F] { if ($avp(n) == 3 && $avp(late) == 1) { t_reply("599", "$avp(vm)"); } }
onreply_route[R] { if ($avp(n) == 3) { drop; } }
branch_route[B] { if ($avp(vm) != $null) { drop; } }"#;
    let run = w.run(script, &m, &tls_in(1));
    let relay = run.relay.expect("relay");
    assert_eq!(
        relay.avps,
        vec![
            ("late".to_owned(), Value::Int(1)),
            ("n".to_owned(), Value::Int(3)),
            (
                "vm".to_owned(),
                Value::from("sip:vm@example.com".to_owned())
            )
        ],
        "the run's AVPs, those set after t_relay() too: Kamailio moves the message's AVP \
         list into the transaction, where the route's later writes go"
    );
    let s = compile(script, "test.cfg").unwrap();
    let p = proxy();
    let env = w.env();
    let failed = |avps: Vec<(String, Value<'static>)>| Failed {
        avps,
        ..fail(486, Default::default())
    };
    let r = run_failure(
        &s,
        "F",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        failed(relay.avps.clone()),
    )
    .unwrap();
    assert_eq!(r.reply, Some((599, "sip:vm@example.com".to_owned())));
    let r = run_failure(
        &s,
        "F",
        None,
        &p,
        &env,
        &m,
        &tls_in(1),
        None,
        failed(Vec::new()),
    )
    .unwrap();
    assert_eq!(r.reply, None);
    let resp = Message::parse(Bytes::from(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-x\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n\
         Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .unwrap();
    let kept = |a: &[(String, Value<'static>)]| {
        run_reply_named(&s, "R", &p, &env, &resp, &tls_in(1), None, (0, 0), None, a)
    };
    assert_eq!(kept(&relay.avps), Some(false));
    assert_eq!(kept(&[]), Some(true));
    let branch = |a: &[(String, Value<'static>)]| {
        let mut opts = ForwardOpts::default();
        run_branch(
            &s,
            "B",
            None,
            &p,
            &env,
            &m,
            &tls_in(1),
            None,
            0,
            &mut opts,
            (0, 0),
            a,
        )
    };
    assert_eq!(branch(&relay.avps), Some(false));
    assert_eq!(branch(&[]), Some(true));
}

/// docs/script.md: after `set_reply_no_connect()` siprox's reply goes on the request's own
/// connection or nowhere (a flow, never a new connection); without it, that connection is
/// only the one tried first.
#[test]
fn set_reply_no_connect_pins_the_reply_to_the_requests_connection() {
    let w = World::new(&[]);
    let m = request("OPTIONS", "sip:bob@example.com", "");
    let dest = |script: &str| {
        let run = w.run(script, &m, &tls_in(7));
        match run.actions.into_iter().next().map(|(a, _)| a) {
            Some(Action::Send { dest, .. }) => dest,
            other => panic!("{other:?}"),
        }
    };
    let pinned = dest(r#"route { set_reply_no_connect(); sl_send_reply("200", "OK"); }"#);
    assert_eq!(pinned, Destination::flow(Transport::Tls, ConnId(7)));
    let plain = dest(r#"route { sl_send_reply("200", "OK"); }"#);
    assert_eq!(plain.conn, Some(ConnId(7)));
    assert_ne!(plain, pinned);
}

/// `$fs`: a forward leaves from the listener the script names; Via and Record-Route name
/// it, and the runtime gets it in the options (it sends UDP from that socket). A computed
/// socket that is no listener is logged and leaves the default.
#[test]
fn fs_names_the_forced_listener_in_via_and_record_route() {
    let p = Proxy::new(ProxyConfig {
        listens: vec![
            Listen {
                transport: Transport::Udp,
                addr: "192.0.2.10:5060".parse().unwrap(),
                advertise: None,
            },
            Listen {
                transport: Transport::Udp,
                addr: "192.0.2.10:5080".parse().unwrap(),
                advertise: None,
            },
        ],
        ..ProxyConfig::default()
    });
    let rx = Inbound {
        transport: Transport::Udp,
        source: "198.51.100.7:5060".parse().unwrap(),
        local: "192.0.2.10:5060".parse().unwrap(),
        conn: None,
    };
    let m = request("INVITE", "sip:bob@203.0.113.5:5070", "");
    for (script, forced) in [
        (
            r#"route { $fs = "udp:192.0.2.10:5080"; record_route(); forward(); }"#,
            true,
        ),
        (
            r#"route { force_send_socket("192.0.2.10:5080"); record_route(); forward(); }"#,
            true,
        ),
        (
            // Kamailio's bare form.
            r#"route { force_send_socket(udp:192.0.2.10:5080); record_route(); forward(); }"#,
            true,
        ),
        (
            r#"route { $var(s) = "udp:192.0.2.10:" + "5099"; $fs = $var(s); record_route(); forward(); }"#,
            false,
        ),
        (r#"route { record_route(); forward(); }"#, false),
    ] {
        let w = World::new(&[]);
        let s = compile(script, "test.cfg").unwrap();
        let mut run = run_request(&s, None, &p, &w.env(), &m, &rx, None);
        let opts = run.actions[0].1.clone();
        assert_eq!(
            opts.send_socket,
            forced.then(|| (Transport::Udp, "192.0.2.10:5080".parse().unwrap())),
            "{script}"
        );
        run.actions.truncate(1);
        let (_, out) = only_send(run);
        let port = if forced { "5080" } else { "5060" };
        let via = header(&out, "Via").unwrap_or_default();
        assert!(
            via.starts_with(&format!("SIP/2.0/UDP 192.0.2.10:{port};")),
            "{script}: {via}"
        );
        let rr = header(&out, "Record-Route").unwrap_or_default();
        assert!(
            rr.starts_with(&format!("<sip:192.0.2.10:{port};")),
            "{script}: {rr}"
        );
        let warned = w.log.0.borrow().iter().any(|l| l.contains("5099"));
        assert_eq!(warned, script.contains("5099"), "{script}");
    }
    // A next hop of another transport: the UDP listener is not used (Via names a TCP
    // sent-by, as without `$fs`).
    let w = World::new(&[]);
    let s = compile(
        r#"route { $fs = "udp:192.0.2.10:5080"; forward("203.0.113.5:5070;transport=tcp"); }"#,
        "test.cfg",
    )
    .unwrap();
    let (dest, out) = only_send(run_request(&s, None, &p, &w.env(), &m, &rx, None));
    assert_eq!(dest.transport, Transport::Tcp);
    let via = header(&out, "Via").unwrap_or_default();
    assert!(via.starts_with("SIP/2.0/TCP 192.0.2.10:5060;"), "{via}");
    // Malformed literals are compile errors; a listener check is the loader's.
    assert!(compile(r#"route { $fs = "udp:nowhere"; }"#, "t.cfg").is_err());
    assert!(compile(r#"route { force_send_socket("sctp:1.2.3.4:5"); }"#, "t.cfg").is_err());
    assert!(compile(r#"route { force_send_socket(sctp:1.2.3.4:5); }"#, "t.cfg").is_err());
    assert!(compile("route { force_send_socket(udp:1.2.3.4:5\n); }", "t.cfg").is_err());
    let s = compile(r#"route { $fs = "udp:192.0.2.99:5060"; }"#, "t.cfg").unwrap();
    assert_eq!(s.send_sockets(), ["udp:192.0.2.99:5060"]);
}

/// Null: Kamailio 5.6's rules (the differential test compares them with Kamailio itself).
#[test]
fn null_is_a_value_of_its_own() {
    let w = World::new(&[]);
    let s = compile(
        r#"route {
            $var(eq) = 0; if ($hdr(X-None) == $null) { $var(eq) = 1; }
            $var(e) = ""; $var(ne) = 0; if ($var(e) != $null) { $var(ne) = 1; }
            $var(str) = 0; if ($hdr(X-None) == "") { $var(str) = 1; }
            $var(int) = 0; if ($hdr(X-None) == 0) { $var(int) = 1; }
            $var(truth) = 0; if (!$null) { $var(truth) = 1; }
            $var(n) = $hdr(X-None);
            $var(cat) = "a" + $hdr(X-None) + "b";
            $var(len) = $(hdr(X-None){s.len});
            $avp(a) = 1; $avp(a) = $null; $var(avp) = 0; if ($avp(a) == $null) { $var(avp) = 1; }
            append_to_reply("X-N: [$hdr(X-None)][$(hdr(X-None){s.len})][$du][$rb]\r\n");
            sl_send_reply("200", "OK");
        }"#,
        "t.cfg",
    )
    .unwrap();
    let m = request("OPTIONS", "sip:example.com", "");
    let rx = tls_in(1);
    let mut ctx = super::MsgCtx::new(&m, &rx, None);
    let p = proxy();
    let env = w.env();
    let mut host = super::host::ProxyHost::new(&p, &env, Some(&m), &rx, None);
    let _ = s.run_request(&mut ctx, &mut host);
    let var = |n: &str| s.var(&ctx, n).unwrap();
    for n in ["eq", "ne", "str", "int", "truth", "avp"] {
        assert_eq!(var(n), Value::Int(1), "{n}");
    }
    assert_eq!(var("n"), Value::Int(0));
    assert_eq!(var("cat"), Value::from("ab".to_owned()));
    assert_eq!(var("len"), Value::Int(0));
    let (_, out) = only_send_actions(host.into_actions());
    assert_eq!(header(&out, "X-N"), Some("[<null>][][<null>][]"));
}

fn only_send_actions(actions: Vec<(Action, ForwardOpts)>) -> (Destination, Message) {
    assert_eq!(actions.len(), 1, "{actions:?}");
    match actions.into_iter().next().map(|(a, _)| a) {
        Some(Action::Send { dest, bytes }) => (dest, Message::parse(bytes).unwrap()),
        other => panic!("expected one Send, got {other:?}"),
    }
}

/// `forward()` and `t_relay()` given the runtime's validation do what they do without it,
/// whatever the script changed before: the Request-URI (`$ru`, `rewritehost`,
/// `rewriteuri`), `$du`, Max-Forwards, removed and appended headers (Route, Via,
/// Max-Forwards), Record-Route; and what it changed shows in the forwarded request (the
/// validated values are of the message as received, not of the script's edits).
#[test]
fn a_scripted_forward_with_validation_sees_every_script_edit() {
    let w = World::new(&[]);
    let p = proxy();
    let env = w.env();
    let m = request(
        "INVITE",
        "sip:bob@203.0.113.5",
        "Route: <sip:203.0.113.9;lr>\nX-Drop: me\n",
    );
    let plain = request("INVITE", "sip:bob@203.0.113.5", "");
    let checked_m = m.validated().expect("valid");
    let checked_plain = plain.validated().expect("valid");
    // (script, what the forwarded request must then contain, or not when `!`)
    let cases: &[(&str, &[&str])] = &[
        (
            "forward();",
            &["INVITE sip:bob@203.0.113.5 ", "Route: <sip:203.0.113.9;lr>"],
        ),
        (
            r#"$ru = "sip:carol@203.0.113.77:5090"; forward();"#,
            &["INVITE sip:carol@203.0.113.77:5090 "],
        ),
        (
            r#"rewritehost("203.0.113.78"); forward();"#,
            &["INVITE sip:bob@203.0.113.78 "],
        ),
        (
            r#"rewriteuri("sip:dave@192.0.2.10"); forward();"#,
            &["INVITE sip:dave@192.0.2.10 "],
        ),
        (r#"$ru = "sip:carol@sip.example.org"; forward();"#, &[]),
        (
            r#"$du = "sip:203.0.113.80:5070"; forward();"#,
            &["INVITE sip:bob@203.0.113.5 "],
        ),
        (r#"remove_hf("Route"); forward();"#, &["!\nRoute:"]),
        (
            r#"remove_hf("Max-Forwards"); forward();"#,
            &["!Max-Forwards: 69"],
        ),
        (
            r#"remove_hf("Via"); append_hf("Via: SIP/2.0/UDP 203.0.113.45;branch=z9hG4bKapp\r\n"); forward();"#,
            &["203.0.113.45"],
        ),
        (
            r#"append_hf("Max-Forwards: 3\r\n"); append_hf("Route: <sip:203.0.113.44;lr>\r\n"); forward();"#,
            &["Route: <sip:203.0.113.44;lr>"],
        ),
        (
            r#"remove_hf("X-Drop"); record_route(); forward();"#,
            &["!X-Drop", "Record-Route:"],
        ),
        (
            r#"mf_process_maxfwd_header("10"); forward();"#,
            &["Max-Forwards: 69"],
        ),
        (r#"$ru = "sip:carol@203.0.113.77"; t_relay();"#, &[]),
    ];
    let mut sent = 0;
    for (script, want) in cases {
        let s = compile(&format!("route {{ {script} }}"), "test.cfg").unwrap();
        for (m, checked) in [(&m, &checked_m), (&plain, &checked_plain)] {
            let old = run_request(&s, None, &p, &env, m, &tls_in(1), None);
            let new = run_request_checked(&s, None, &p, &env, m, &tls_in(1), None, Some(checked));
            assert_eq!(
                format!("{:?}", new.actions),
                format!("{:?}", old.actions),
                "{script}"
            );
            assert_eq!(new.relay, old.relay, "{script}");
            assert_eq!(new.outcome.end, old.outcome.end, "{script}");
        }
        let new = run_request_checked(&s, None, &p, &env, &m, &tls_in(1), None, Some(&checked_m));
        if want.is_empty() {
            continue;
        }
        let (_, out) = only_send(new);
        sent += 1;
        let text = String::from_utf8_lossy(out.as_bytes()).into_owned();
        for w in *want {
            match w.strip_prefix('!') {
                Some(w) => assert!(!text.contains(w), "{script}: {w} in\n{text}"),
                None => assert!(text.contains(w), "{script}: no {w} in\n{text}"),
            }
        }
    }
    assert_eq!(sent, 11);
}

/// A request whose head is not all UTF-8 (a Latin-1 display name from an older phone) is
/// validated over the head's text view, not its raw bytes: forward() with what validation
/// parsed must take it as the message's own (a debug assertion said otherwise; found by the
/// `script_message` fuzz target).
#[test]
fn a_latin1_request_forwards_with_what_its_validation_parsed() {
    let p = proxy();
    let world = World::new(&[]);
    let env = world.env();
    let mut raw = request(
        "INVITE",
        "sip:bob@203.0.113.5",
        "Accept: text/nobodyKnowsThis\n",
    )
    .as_bytes()
    .to_vec();
    let at = raw.windows(5).position(|w| w == b"Knows").expect("Knows");
    raw[at] = 0xa9;
    let m = Message::parse(Bytes::from(raw)).expect("parses");
    assert_ne!(m.head_str().as_bytes(), &m.as_bytes()[..m.head_str().len()]);
    let checked = m.validated().expect("valid");
    let s = compile("route { forward(); }", "test.cfg").unwrap();
    let run = run_request_checked(&s, None, &p, &env, &m, &tls_in(1), None, Some(&checked));
    let (_, out) = only_send(run);
    assert!(
        out.as_bytes().windows(7).any(|w| w == b"dy\xa9nows"),
        "forwarded as received"
    );
}
