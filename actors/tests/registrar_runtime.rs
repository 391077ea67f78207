//! Phones register over TLS and get their calls over the connection they hold: two UAs
//! whose Contacts name an address where nothing listens register through siprox's default
//! script, call each other (INVITE, 180, 200, ACK, BYE, 200; also with siprox preloaded as
//! their outbound proxy, a `Route` naming it on the REGISTER and the INVITE), lose and
//! regain their connection (480, then calls again), authenticate with digest, and keep
//! their registrations across a restart. Real sockets on 127.0.0.1:0, real TLS.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use siprox::config::{Config, DomainConfig, Proto};
use siprox::proxy::Transport;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// Where the phones claim to be: loopback, so a wrong connect attempt stays on this machine,
/// and nothing listens there, so only their own connection can reach them.
const UNREACHABLE: &str = "127.0.0.99:5999";

fn setup(dir: &Path, script: &str) -> Config {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("route.cfg"), script).unwrap();
    let mut cfg = config(&[Proto::Udp, Proto::Tls]);
    cfg.script.file = Some("scripts/route.cfg".into());
    cfg.domains.insert(
        "example".into(),
        DomainConfig {
            names: vec!["example.com".into()],
            ..DomainConfig::default()
        },
    );
    cfg.location.snapshot_file = Some("var/location.json".into());
    // The default script lets a phone whose verified certificate names its user register
    // without digest: the phones here carry such certificates.
    cfg.tls.verify_client = siprox::config::VerifyClient::Optional;
    cfg
}

/// The development CA under `dir/certs` (made once) and a client certificate for `user`.
fn phone_cert(dir: &Path, user: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let certs = dir.join("certs");
    let ca = if certs.join("ca.key").exists() {
        load_ca(&certs)
    } else {
        dev_ca(dir)
    };
    client_cert(&ca, user, &certs)
}

fn default_script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf.d/scripts/default.cfg"
    ))
    .expect("the shipped default script")
}

struct Phone {
    user: &'static str,
    s: SslStream<TcpStream>,
    buf: Vec<u8>,
    cseq: u32,
}

impl Phone {
    async fn connect(user: &'static str, addr: std::net::SocketAddr, ca: &Path) -> Phone {
        let dir = ca
            .parent()
            .and_then(Path::parent)
            .expect("certs/ under the test dir");
        let (cert, key) = phone_cert(dir, user);
        Phone {
            user,
            s: tls_client(
                addr,
                ca,
                Some((&cert, &key)),
                openssl::ssl::SslVersion::TLS1_3,
            )
            .await,
            buf: Vec::new(),
            cseq: 0,
        }
    }

    async fn send(&mut self, msg: &str) {
        send(&mut self.s, msg).await;
    }

    async fn recv(&mut self) -> String {
        read_message(&mut self.s, &mut self.buf, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.user))
    }

    fn register_msg(&mut self, expires: u32, extra: &str) -> String {
        self.cseq += 1;
        let u = self.user;
        format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-reg-{u}-{c};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=r{u}\r\n\
             To: <sip:{u}@example.com>\r\n\
             Call-ID: reg-{u}\r\n\
             CSeq: {c} REGISTER\r\n\
             Contact: <sip:{u}@{UNREACHABLE};transport=tls>\r\n\
             Expires: {expires}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            c = self.cseq
        )
    }

    async fn register(&mut self) -> String {
        let m = self.register_msg(300, "");
        self.send(&m).await;
        self.recv().await
    }
}

fn invite(from: &str, to: &str, call: &str) -> String {
    invite_with(from, to, call, "")
}

/// An INVITE with `extra` header lines (a preloaded `Route`) before the Contact.
fn invite_with(from: &str, to: &str, call: &str, extra: &str) -> String {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.99\r\ns=-\r\nc=IN IP4 127.0.0.99\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:{to}@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-{call}-inv;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{from}@example.com>;tag=f-{call}\r\n\
         To: <sip:{to}@example.com>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 INVITE\r\n\
         {extra}\
         Contact: <sip:{from}@{UNREACHABLE};transport=tls>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A UAS answer to `req` (every Via, From, To with `tag`, Call-ID, CSeq, Record-Route,
/// and the UAS Contact).
fn answer(req: &str, code: u16, reason: &str, tag: &str, contact_user: &str) -> String {
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in head.split("\r\n").skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" | "record-route" => {
                out.push_str(l);
                out.push_str("\r\n");
            }
            "to" if !l.contains(";tag=") => out.push_str(&format!("{l};tag={tag}\r\n")),
            "to" => {
                out.push_str(l);
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str(&format!(
        "Contact: <sip:{contact_user}@{UNREACHABLE};transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ));
    out
}

/// One side's view of a dialog: Call-ID, its own (user, tag) and the peer's.
struct Leg<'a> {
    call: &'a str,
    me: (&'a str, &'a str),
    peer: (&'a str, &'a str),
}

/// An in-dialog request along the route set learnt from `resp` (its Record-Route, in order
/// for the callee's direction `reverse = false`, reversed for the caller).
fn in_dialog(method: &str, resp: &str, leg: &Leg<'_>, cseq: u32, reverse: bool) -> String {
    let mut rr: Vec<&str> = resp
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("Record-Route: "))
        .collect();
    if reverse {
        rr.reverse();
    }
    let route = if rr.is_empty() {
        String::new()
    } else {
        format!("Route: {}\r\n", rr.join(", "))
    };
    let call = leg.call;
    format!(
        "{method} sip:{}@{UNREACHABLE};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-{call}-{method}-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         {route}\
         From: <sip:{}@example.com>;tag={}\r\n\
         To: <sip:{}@example.com>;tag={}\r\n\
         Call-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        leg.peer.0, leg.me.0, leg.me.1, leg.peer.0, leg.peer.1
    )
}

/// Alice calls Bob: every request reaches Bob over Bob's connection, every reply Alice over
/// hers; Bob hangs up (the other direction of the flow token).
async fn call(alice: &mut Phone, bob: &mut Phone, call_id: &str) {
    call_with(alice, bob, call_id, "").await
}

/// [`call`], the INVITE carrying `extra` header lines (a preloaded `Route`).
async fn call_with(alice: &mut Phone, bob: &mut Phone, call_id: &str, extra: &str) {
    alice
        .send(&invite_with("alice", "bob", call_id, extra))
        .await;
    let inv = bob.recv().await;
    // The default script relays statefully: 100 Trying first, from siprox itself.
    let trying = alice.recv().await;
    assert_eq!(status(&trying), Some(100), "{trying}");
    assert!(
        inv.starts_with(&format!(
            "INVITE sip:bob@{UNREACHABLE};transport=tls SIP/2.0"
        )),
        "the Request-URI is Bob's contact: {inv}"
    );
    assert!(inv.contains("Record-Route: "), "{inv}");
    assert!(
        !inv.contains("\r\nRoute:"),
        "a preloaded Route naming siprox is consumed, not forwarded: {inv}"
    );
    bob.send(&answer(&inv, 180, "Ringing", "b-tag", "bob"))
        .await;
    let ringing = alice.recv().await;
    assert_eq!(status(&ringing), Some(180), "{ringing}");
    bob.send(&answer(&inv, 200, "OK", "b-tag", "bob")).await;
    let ok = alice.recv().await;
    assert_eq!(status(&ok), Some(200), "{ok}");
    let ftag = format!("f-{call_id}");
    let alice_leg = Leg {
        call: call_id,
        me: ("alice", &ftag),
        peer: ("bob", "b-tag"),
    };
    alice
        .send(&in_dialog("ACK", &ok, &alice_leg, 1, true))
        .await;
    let ack = bob.recv().await;
    assert!(
        ack.starts_with("ACK "),
        "ACK reaches Bob on his connection: {ack}"
    );
    // Bob hangs up: the request travels the flow the other way.
    let bob_leg = Leg {
        call: call_id,
        me: ("bob", "b-tag"),
        peer: ("alice", &ftag),
    };
    bob.send(&in_dialog("BYE", &inv, &bob_leg, 1, false)).await;
    let bye = alice.recv().await;
    assert!(
        bye.starts_with("BYE "),
        "BYE reaches Alice on her connection: {bye}"
    );
    alice.send(&answer(&bye, 200, "OK", &ftag, "alice")).await;
    let done = bob.recv().await;
    assert_eq!(status(&done), Some(200), "{done}");
    assert!(done.contains("CSeq: 1 BYE"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_register_over_tls_and_get_calls_over_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(setup(dir.path(), &default_script()), dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let ca = ca_file(dir.path());

    let mut alice = Phone::connect("alice", addr, &ca).await;
    let mut bob = Phone::connect("bob", addr, &ca).await;
    for p in [&mut alice, &mut bob] {
        let r = p.register().await;
        assert_eq!(status(&r), Some(200), "{r}");
        assert!(
            r.contains(&format!(
                "<sip:{}@{UNREACHABLE};transport=tls>;expires=",
                p.user
            )),
            "{r}"
        );
    }
    call(&mut alice, &mut bob, "call-1").await;

    // A certificate that names someone else does not register alice: digest is asked for.
    let mut eve = Phone::connect("eve", addr, &ca).await;
    eve.user = "alice";
    let m = eve.register_msg(300, "");
    eve.send(&m).await;
    let r = eve.recv().await;
    assert_eq!(status(&r), Some(401), "{r}");
    assert!(r.contains("WWW-Authenticate: Digest"), "{r}");

    // Bob's connection goes away: a call to him is 480, never a connect to his Contact.
    drop(bob);
    let mut r;
    assert_eventually!(
        {
            alice.send(&invite("alice", "bob", "call-lost")).await;
            r = alice.recv().await;
            status(&r) == Some(480)
        },
        Duration::from_secs(5),
        "a call to a phone whose connection closed gets 480: {r}"
    );

    // Bob comes back on a new connection and registers again: calls reach him again.
    let mut bob = Phone::connect("bob", addr, &ca).await;
    bob.cseq = 10;
    let r = bob.register().await;
    assert_eq!(status(&r), Some(200), "{r}");
    call(&mut alice, &mut bob, "call-2").await;

    // Out-of-order CSeq on the same Call-ID is refused; too short an expiry gets 423.
    bob.cseq = 1;
    let m = bob.register_msg(300, "");
    bob.send(&m).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(500), "out of order: {r}");
    bob.cseq = 20;
    let m = bob.register_msg(5, "");
    bob.send(&m).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(423), "{r}");
    assert!(r.contains("Min-Expires: 60"), "{r}");

    // A restart keeps the registrations (snapshot): Bob's binding is still there, and since
    // his connection died with the old process, a call to him is 480, not 404.
    rt.shutdown();
    assert!(dir.path().join("var/location.json").exists());
    let rt = start(setup(dir.path(), &default_script()), dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let mut carol = Phone::connect("carol", addr, &ca).await;
    carol
        .send(&invite("carol", "bob", "call-after-restart"))
        .await;
    let r = carol.recv().await;
    assert_eq!(status(&r), Some(480), "{r}");
    carol.send(&invite("carol", "nobody", "call-nobody")).await;
    let r = carol.recv().await;
    assert_eq!(status(&r), Some(404), "{r}");
    rt.shutdown();
}

/// Phones configured with siprox as their outbound proxy preload it as a Route on their
/// initial requests (RFC 3261 §8.1.2), by its address or by its domain's name, REGISTER
/// included. Through the shipped default script they register, and a call reaches the
/// registered callee like any other (INVITE, 180, 200, ACK, BYE) without the preloaded
/// Route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_preloads_siprox_as_outbound_proxy_reaches_another_phone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(setup(dir.path(), &default_script()), dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let ca = ca_file(dir.path());
    let routes = [
        format!("Route: <sip:{addr};transport=tls;lr>\r\n"),
        "Route: <sip:example.com;transport=tls;lr>\r\n".to_owned(),
    ];
    let mut alice = Phone::connect("alice", addr, &ca).await;
    let mut bob = Phone::connect("bob", addr, &ca).await;
    // Their REGISTERs carry the preloaded Route too.
    for (p, route) in [(&mut alice, &routes[0]), (&mut bob, &routes[1])] {
        let m = p.register_msg(300, route);
        p.send(&m).await;
        let r = p.recv().await;
        assert_eq!(status(&r), Some(200), "{r}");
    }
    for (n, route) in routes.iter().enumerate() {
        call_with(&mut alice, &mut bob, &format!("preloaded-{n}"), route).await;
    }
    rt.shutdown();
}

const DIGEST_SCRIPT: &str = r#"
route {
    if (!sanity_check()) { exit; }
    if (is_method("REGISTER")) {
        if (!www_authorize("example.com", "subscriber")) {
            www_challenge("example.com", "0");
            exit;
        }
        consume_credentials();
        save("location");
        exit;
    }
    sl_send_reply("404", "Not Here");
}
"#;

fn digest_line(
    challenge: &str,
    user: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
    alg: &str,
) -> String {
    siprox_testkit::digest::Answer {
        alg,
        user,
        realm: "example.com",
        password,
        method: "REGISTER",
        uri: "sip:example.com",
        nc,
        cnonce,
    }
    .to(challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_authentication_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        "[[user]]\nname = \"alice\"\nrealm = \"example.com\"\npassword = \"wonderland\"\n",
    )
    .unwrap();
    let mut cfg = setup(dir.path(), DIGEST_SCRIPT);
    cfg.auth.users_file = Some("users.toml".into());
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let mut alice = Phone::connect("alice", addr, &dir.path().join("certs/ca.pem")).await;

    for alg in ["SHA-256", "MD5"] {
        let m = alice.register_msg(300, "");
        alice.send(&m).await;
        let ch = alice.recv().await;
        assert_eq!(status(&ch), Some(401), "{ch}");
        // Wrong password: 403.
        let m = alice.register_msg(300, &digest_line(&ch, "alice", "guess", "c1", 1, alg));
        alice.send(&m).await;
        let r = alice.recv().await;
        assert_eq!(status(&r), Some(403), "{alg} wrong password: {r}");
        // Right password: 200, and the credentials do not travel further.
        let good = digest_line(&ch, "alice", "wonderland", "c2", 1, alg);
        let m = alice.register_msg(300, &good);
        alice.send(&m).await;
        let r = alice.recv().await;
        assert_eq!(status(&r), Some(200), "{alg}: {r}");
        // The same nonce count again is a replay: refused.
        let m = alice.register_msg(300, &good);
        alice.send(&m).await;
        let r = alice.recv().await;
        assert!(
            matches!(status(&r), Some(401 | 403)),
            "{alg} replay must not pass: {r}"
        );
        assert_ne!(status(&r), Some(200));
    }

    // The users file reloads like everything else: a new password works after a reload.
    std::fs::write(
        dir.path().join("users.toml"),
        "[[user]]\nname = \"alice\"\nrealm = \"example.com\"\npassword = \"looking-glass\"\n",
    )
    .unwrap();
    rt.reload().await;
    let m = alice.register_msg(300, "");
    alice.send(&m).await;
    let ch = alice.recv().await;
    assert_eq!(status(&ch), Some(401), "{ch}");
    let m = alice.register_msg(
        300,
        &digest_line(&ch, "alice", "looking-glass", "c9", 1, "SHA-256"),
    );
    alice.send(&m).await;
    let r = alice.recv().await;
    assert_eq!(status(&r), Some(200), "the reloaded password: {r}");
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_star_removal_and_expiry_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = setup(dir.path(), &default_script());
    // Short expiries for the test: a binding may live one second.
    cfg.registrar.min_expires = 1;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let ca = ca_file(dir.path());
    let mut alice = Phone::connect("alice", addr, &ca).await;
    let mut bob = Phone::connect("bob", addr, &ca).await;

    // Path (RFC 3327): stored, echoed, and pre-loaded as a Route for requests to bob.
    let m = bob.register_msg(300, "Supported: path\r\nPath: <sip:127.0.0.1:9;lr>\r\n");
    bob.send(&m).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(200), "{r}");
    assert!(r.contains("Path: <sip:127.0.0.1:9;lr>"), "{r}");
    // Path without Supported: path is refused (strict mode, 420).
    let m = bob.register_msg(300, "Path: <sip:127.0.0.1:9;lr>\r\n");
    bob.send(&m).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(420), "{r}");

    // Contact: * with Expires: 0 removes every binding: a call to bob is then 404.
    bob.cseq += 1;
    let star = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-star-{c};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@example.com>;tag=rbob\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: reg-bob\r\n\
         CSeq: {c} REGISTER\r\n\
         Contact: *\r\n\
         Expires: 0\r\n\
         Content-Length: 0\r\n\r\n",
        c = bob.cseq
    );
    bob.send(&star).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(200), "{r}");
    assert!(!r.contains("Contact:"), "no binding left: {r}");
    alice.send(&invite("alice", "bob", "after-star")).await;
    let r = alice.recv().await;
    assert_eq!(status(&r), Some(404), "{r}");

    // A binding expires on time: registered for one second, then a call is 404.
    let m = bob.register_msg(1, "");
    bob.send(&m).await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(200), "{r}");
    let mut n = 0;
    let mut last;
    assert_eventually!(
        {
            n += 1;
            alice
                .send(&invite("alice", "bob", &format!("expiry-{n}")))
                .await;
            // Still registered: bob gets the INVITE and turns it down; else alice gets 404.
            match read_message(&mut bob.s, &mut bob.buf, Duration::from_millis(300)).await {
                Ok(inv) => {
                    bob.send(&answer(&inv, 486, "Busy Here", "b", "bob")).await;
                    last = alice.recv().await;
                    false
                }
                Err(_) => {
                    last = alice.recv().await;
                    status(&last) == Some(404)
                }
            }
        },
        Duration::from_secs(10),
        "bob's one-second binding expires: {last}"
    );
    rt.shutdown();
}
