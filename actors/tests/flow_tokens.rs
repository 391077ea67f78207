//! Record-Route flow tokens (RFC 5626 §5.2) cannot be forged: two phones register over TLS
//! through the shipped default script, and a third client with a valid certificate sends
//! in-dialog requests whose Route names its own connection and each of the phones' (the old
//! `fl=a.b` form, and the signed form with a made-up MAC). Every one is refused with 403 and
//! counted; the phones receive none of them; a token siprox signed still works. Real
//! sockets on 127.0.0.1:0, real TLS, certificates made in the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use siprox::config::{DomainConfig, Proto};
use siprox::proxy::Transport;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// Where the phones claim to be: nothing listens there, so only their own connection
/// reaches them.
const UNREACHABLE: &str = "127.0.0.99:5999";

struct Phone {
    user: &'static str,
    s: SslStream<TcpStream>,
    buf: Vec<u8>,
}

impl Phone {
    async fn connect(user: &'static str, addr: SocketAddr, dir: &Path) -> Phone {
        let certs = dir.join("certs");
        let ca = load_ca(&certs);
        let (cert, k) = client_cert(&ca, user, &certs);
        let s = tls_client(
            addr,
            &certs.join("ca.pem"),
            Some((&cert, &k)),
            openssl::ssl::SslVersion::TLS1_3,
        )
        .await;
        Phone {
            user,
            s,
            buf: Vec::new(),
        }
    }

    async fn recv(&mut self) -> String {
        read_message(&mut self.s, &mut self.buf, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.user))
    }

    async fn register(&mut self) {
        let u = self.user;
        let m = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-reg-{u};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=r{u}\r\n\
             To: <sip:{u}@example.com>\r\n\
             Call-ID: reg-{u}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{u}@{UNREACHABLE};transport=tls>\r\n\
             Expires: 300\r\n\
             Content-Length: 0\r\n\r\n"
        );
        send(&mut self.s, &m).await;
        let r = self.recv().await;
        assert_eq!(status(&r), Some(200), "{u} registers: {r}");
    }
}

/// An in-dialog MESSAGE from `from` to `to` with `route` (empty: none).
/// A MESSAGE with a branch of its own (a UA's new transaction: the same branch again would
/// be a retransmission, absorbed by the transaction a `t_relay()` made for the first copy).
fn message(from: &str, to: &str, call: &str, route: &str, text: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "MESSAGE sip:{to}@{UNREACHABLE};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {UNREACHABLE};branch=z9hG4bK-{call}-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         {route}\
         From: <sip:{from}@example.com>;tag=f-{call}\r\n\
         To: <sip:{to}@example.com>;tag=t-{call}\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_flow_token_does_not_reach_another_phone() {
    let dir = tempfile::tempdir().unwrap();
    dev_ca(dir.path());
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../conf.d/scripts/default.cfg"),
        scripts.join("route.cfg"),
    )
    .unwrap();
    let mut cfg = config(&[Proto::Tls]);
    cfg.script.file = Some("scripts/route.cfg".into());
    cfg.domains.insert(
        "example".into(),
        DomainConfig {
            names: vec!["example.com".into()],
            ..DomainConfig::default()
        },
    );
    cfg.tls.verify_client = siprox::config::VerifyClient::Optional;
    cfg.auth.flow_key_file = Some("var/flow.key".into());
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    // The key was generated and kept in the state directory, readable by its owner only.
    let key_file = dir.path().join("var/flow.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("key file")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "flow key file mode {mode:o}");

    let mut alice = Phone::connect("alice", addr, dir.path()).await;
    alice.register().await;
    let mut bob = Phone::connect("bob", addr, dir.path()).await;
    bob.register().await;
    let mut mallory = Phone::connect("mallory", addr, dir.path()).await;

    // Connection ids are small and sequential: Mallory tries every pair of the first few,
    // unsigned and with a made-up MAC.
    let me = format!("127.0.0.1:{}", addr.port());
    let mut n = 0;
    for a in 1..=6u64 {
        for b in 1..=6u64 {
            for fl in [
                format!("{a:x}.{b:x}"),
                format!("{a:x}.{b:x}.{}", "0".repeat(24)),
            ] {
                n += 1;
                let route = format!("Route: <sip:{me};transport=tls;lr;fl={fl}>\r\n");
                let call = format!("forged-{n}");
                send(
                    &mut mallory.s,
                    &message("alice", "bob", &call, &route, "forged"),
                )
                .await;
                let r = mallory.recv().await;
                assert_eq!(status(&r), Some(403), "forged token {fl}: {r}");
            }
        }
    }
    assert_eq!(
        rt.snapshot().proxy.flow_counter().load(Ordering::Relaxed),
        n,
        "every refusal counted"
    );

    // Nothing forged reached a phone: the next thing each receives is a genuine message,
    // routed by its registration.
    for (phone, to) in [(&mut bob, "bob"), (&mut alice, "alice")] {
        let m = message("carol", to, &format!("genuine-{to}"), "", "genuine").replace(
            &format!("sip:{to}@{UNREACHABLE};transport=tls SIP"),
            &format!("sip:{to}@example.com SIP"),
        );
        send(&mut mallory.s, &m).await;
        let got = phone.recv().await;
        assert!(got.contains("\r\n\r\ngenuine"), "{to} got: {got}");
        assert!(
            got.contains(&format!("Call-ID: genuine-{to}")),
            "{to} got: {got}"
        );
    }

    // A token siprox signed still carries the dialog: Alice's INVITE reaches Bob
    // record-routed, and Bob's in-dialog request along that Route reaches Alice.
    let inv = message("alice", "bob", "dlg", "", "")
        .replace(
            "MESSAGE sip:bob@127.0.0.99:5999;transport=tls SIP",
            "INVITE sip:bob@example.com SIP",
        )
        .replace("CSeq: 1 MESSAGE", "CSeq: 1 INVITE")
        .replace(";tag=t-dlg", "");
    send(&mut alice.s, &inv).await;
    let got = bob.recv().await;
    // default.cfg relays statefully: Alice's INVITE is answered 100 Trying first.
    let trying = alice.recv().await;
    assert!(trying.starts_with("SIP/2.0 100 "), "{trying}");
    let rr = header(&got, "Record-Route")
        .expect("record-routed")
        .to_owned();
    let fl = rr
        .split(";fl=")
        .nth(1)
        .and_then(|t| t.split(['>', ';']).next())
        .expect("a flow token")
        .to_owned();
    let parts: Vec<&str> = fl.split('.').collect();
    assert_eq!(parts.len(), 3, "a.b.mac: {fl}");
    // Bob sends back along it: delivered to Alice over her connection.
    let route = format!("Route: {rr}\r\n");
    send(&mut bob.s, &message("bob", "alice", "dlg", &route, "back")).await;
    let got = alice.recv().await;
    assert!(got.contains("\r\n\r\nback"), "{got}");
    // The token is the dialog's: the same Route on a request of another Call-ID (one
    // Mallory could copy from a dialog of hers) is refused.
    send(
        &mut bob.s,
        &message("bob", "alice", "dlg-other", &route, "other"),
    )
    .await;
    let r = bob.recv().await;
    assert_eq!(status(&r), Some(403), "another dialog's token: {r}");
    // Mallory puts another connection id into that token: refused.
    let altered = format!("{}.{}.{}", parts[1], parts[0], parts[2]);
    let route = format!("Route: {}\r\n", rr.replace(&fl, &altered));
    send(&mut mallory.s, &message("alice", "bob", "dlg", &route, "x")).await;
    let r = mallory.recv().await;
    assert_eq!(status(&r), Some(403), "altered token: {r}");

    // Alice's connection goes away: Bob's next in-dialog request along the token gets
    // 430 Flow Failed (RFC 5626 §5.3), not silence.
    let open = rt.stats().connections_open;
    drop(alice);
    assert_eventually!(
        rt.stats().connections_open == open - 1,
        Duration::from_secs(5),
        "{:?}",
        rt.stats()
    );
    let route = format!("Route: {rr}\r\n");
    send(&mut bob.s, &message("bob", "alice", "dlg", &route, "gone?")).await;
    let r = bob.recv().await;
    assert_eq!(
        status(&r),
        Some(430),
        "a flow whose connection is gone: {r}"
    );
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_before_a_restart_names_no_connection_after_it() {
    // Connection ids start over when siprox restarts, and the key file is kept: without a
    // per-process epoch, a Route from an old dialog would name whichever new connection got
    // the same id. Two starts on one key file are two processes' worth of ids.
    let dir = tempfile::tempdir().unwrap();
    dev_ca(dir.path());
    let mut cfg = config(&[Proto::Tls]);
    cfg.auth.flow_key_file = Some("var/flow.key".into());
    let first = start(cfg.clone(), dir.path());
    let keys = first.snapshot().proxy.config().flow_keys.clone();
    let token = keys.token(2, 1, b"call-1").expect("token");
    assert_eq!(keys.verify(&token, b"call-1"), Ok((2, 1)));
    // A reload keeps the process's epoch: what it signed still verifies (key rotation).
    std::fs::write(
        dir.path().join("var/flow.key"),
        format!(
            "{}\n{}\n",
            "n".repeat(40),
            std::fs::read_to_string(dir.path().join("var/flow.key")).unwrap()
        ),
    )
    .unwrap();
    // The file watcher may publish it first; either way the rotated file goes live.
    if let siprox_actors::state::messages::ReloadOutcome::Failed { errors } = first.reload().await {
        panic!("reload refused: {errors:?}");
    }
    assert_eventually!(first.snapshot().proxy.config().flow_keys.len() == 2);
    let rotated = first.snapshot().proxy.config().flow_keys.clone();
    assert_eq!(rotated.verify(&token, b"call-1"), Ok((2, 1)));
    first.shutdown();

    let second = start(cfg, dir.path());
    let after = second.snapshot().proxy.config().flow_keys.clone();
    assert_eq!(after.len(), 2, "the same key file");
    assert!(
        after.verify(&token, b"call-1").is_err(),
        "a token from before the restart must not verify after it"
    );
    // A token that names no connection (a dialog between two UDP peers) outlives the
    // restart, as the README says.
    let udp = keys.token(0, 0, b"call-1").expect("token");
    assert_eq!(after.verify(&udp, b"call-1"), Ok((0, 0)));
}
