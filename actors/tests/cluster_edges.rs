//! The cluster's edges. TLS to Redis: two nodes share a binding through a `rediss://`
//! Redis whose certificate the `[cluster.redis_tls]` CA verifies, and a node refuses a
//! Redis whose certificate another CA signed (logged, nothing synced). Forwarding to a next
//! hop that is gone: a request siprox forwards over TCP or TLS to an address that refuses
//! the connection is answered (503, reason naming the unreachable next hop), never left
//! to time out; an ACK is never answered (the cluster case, 480 naming the node, is in
//! `cluster_routing.rs`). Real sockets on 127.0.0.1, real TLS, a real redis-server.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::inproc::{Options, Siprox};
use common::*;
use siprox::config::{ClusterConfig, Config, ConfigDuration, Proto, RedisTls};
use siprox::proxy::Transport as Proto2;
use siprox_testkit::pki::{Ca, Spec};
use siprox_testkit::redis::RedisServer;
use siprox_testkit::ua::{build_request, CallIds, Req, Transport};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A loopback port nothing listens on any more.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_next_hop_that_refuses_the_connection_is_answered() {
    let sx = Siprox::start(Options::default()).await;
    for (t_in, t_out) in [
        (Transport::Udp, "tcp"),
        (Transport::Tcp, "tls"),
        (Transport::Tls, "tcp"),
    ] {
        let c = sx.client(t_in).await;
        let port = closed_port();
        let ruri = format!("sip:bob@127.0.0.1:{port};transport={t_out}");
        for method in ["OPTIONS", "INVITE"] {
            let ids = CallIds::new();
            c.send(&build_request(&c, &Req::new(method, &ruri, &ids)))
                .await
                .unwrap();
            let m = c
                .recv(WAIT)
                .await
                .unwrap_or_else(|| panic!("{t_in:?} -> {t_out}: {method} got no answer"));
            assert_eq!(m.status(), Some(503), "{t_in:?} -> {t_out}: {m:?}");
            assert!(
                m.reason().is_some_and(|r| r.contains("unreachable")),
                "{m:?}"
            );
            assert_eq!(m.call_id().ok(), Some(ids.call_id.as_str()));
        }
        // An ACK is never answered.
        let ids = CallIds::new();
        c.send(&build_request(&c, &Req::new("ACK", &ruri, &ids)))
            .await
            .unwrap();
        assert!(
            c.recv(Duration::from_millis(300)).await.is_none(),
            "{t_in:?}: an ACK was answered"
        );
    }
    sx.shutdown().await;
}

/// Saves every REGISTER: the registrar without digest.
const SCRIPT: &str = r#"
route {
    if (method == "REGISTER") {
        save("location");
        exit;
    }
    sl_send_reply("404", "Not Found");
}
"#;

fn node_config(dir: &Path, node: &str, redis: &str, ca: &Path) -> Config {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/route.cfg"), SCRIPT).unwrap();
    std::fs::copy(ca, dir.join("redis-ca.pem")).unwrap();
    let mut cfg = config(&[Proto::Tcp]);
    cfg.script.file = Some("scripts/route.cfg".into());
    cfg.cluster = Some(ClusterConfig {
        node: node.to_owned(),
        advertise: format!("sip:{node}.cluster.invalid:5071;transport=tls"),
        redis: vec![redis.to_owned()],
        key_prefix: "e".to_owned(),
        heartbeat: ConfigDuration::millis(200),
        node_timeout: ConfigDuration::millis(1000),
        tls: None,
        insecure_plaintext: true,
        ticket_rotation: ConfigDuration::secs(3600),
        // Relative: resolved against the node's directory, as conf.d paths are.
        redis_tls: Some(RedisTls {
            ca_file: Some("redis-ca.pem".into()),
            ..RedisTls::default()
        }),
    });
    cfg
}

async fn register(addr: std::net::SocketAddr, user: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let msg = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.99:5999;branch=z9hG4bK-reg-{user};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=r{user}\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: reg-{user}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.99:5999;transport=tcp>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    );
    send(&mut s, &msg).await;
    let mut buf = Vec::new();
    let r = read_message(&mut s, &mut buf, Duration::from_secs(3))
        .await
        .expect("an answer to REGISTER");
    status(&r).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_bindings_through_redis_over_tls_verified_by_their_ca() {
    siprox_testkit::logs::install();
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("redis CA");
    let ca_id = ca.write(pki.path(), "redis-ca");
    let redis_id = ca
        .issue(&Spec::server("127.0.0.1").loopback())
        .write(pki.path(), "redis");
    let redis = RedisServer::start_tls(&redis_id.cert_path, &redis_id.key_path, &ca_id.cert_path);
    assert!(redis.url().starts_with("rediss://"));

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(
        node_config(da.path(), "a", &redis.url(), &ca_id.cert_path),
        da.path(),
    );
    let b = start(
        node_config(db.path(), "b", &redis.url(), &ca_id.cert_path),
        db.path(),
    );
    let addr = a.local_addr(Proto2::Tcp).expect("tcp");
    assert_eq!(register(addr, "alice").await, 200);
    let cs = b.location().and_then(|l| l.cluster.clone()).unwrap();
    assert_eventually!(
        cs.replica
            .get("sip:alice@example.com")
            .iter()
            .any(|x| x.flow.node.as_deref() == Some("a")),
        Duration::from_secs(15),
        "node b never saw alice's binding through rediss://"
    );
    // The bytes really went over TLS: the server has no clear-text port at all.
    assert!(redis
        .cli(&["EXISTS", "e:node:a"])
        .is_some_and(|o| o.trim() == "1"));
    a.shutdown();
    b.shutdown();

    // A Redis whose certificate another CA signed is refused: nothing synced, and the
    // log says why, once.
    let other = Ca::new("another CA");
    let rogue_id = other
        .issue(&Spec::server("127.0.0.1").loopback())
        .write(pki.path(), "rogue");
    let other_ca = other.write(pki.path(), "other-ca");
    let rogue =
        RedisServer::start_tls(&rogue_id.cert_path, &rogue_id.key_path, &other_ca.cert_path);
    let dc = tempfile::tempdir().unwrap();
    let c = start(
        node_config(dc.path(), "c", &rogue.url(), &ca_id.cert_path),
        dc.path(),
    );
    let cs = c.location().and_then(|l| l.cluster.clone()).unwrap();
    assert_eventually!(
        siprox_testkit::logs::at_least(tracing::Level::WARN)
            .iter()
            .any(|l| l.text.contains("Redis unreachable") && l.text.contains("certificate")),
        Duration::from_secs(10),
        "no log line saying Redis's certificate was refused"
    );
    assert!(!cs.replica.current.load(Ordering::Relaxed));
    assert_eq!(
        rogue
            .cli(&["EXISTS", "e:node:c"])
            .map(|o| o.trim().to_owned()),
        Some("0".to_owned())
    );
    c.shutdown();
}

/// `siprox check` on a cluster node's conf.d with `rediss://`: without `[cluster.redis_tls]`
/// it is fine (the system's CA store); with a `ca_file` that is not there it exits 1 naming
/// the key and the file; `[cluster.redis_tls]` with a clear-text URL is refused by key.
#[test]
fn check_names_the_redis_tls_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(dir.path().join("nonce.secret"), "a nonce secret").unwrap();
    std::fs::write(dir.path().join("flow.key"), format!("{}\n", "k".repeat(64))).unwrap();
    let base = "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5060\"\n\n\
                [auth]\nsecret_file = \"nonce.secret\"\nflow_key_file = \"flow.key\"\n\n\
                [cluster]\nnode = \"a\"\nadvertise = \"sip:a.invalid:5071;transport=tls\"\n\
                insecure_plaintext = true\n";
    let check = |extra: &str| {
        std::fs::write(conf.join("00-node.toml"), format!("{base}{extra}")).unwrap();
        let out = siprox_command()
            .args(["check", "-c"])
            .arg(&conf)
            .output()
            .expect("siprox check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check("redis = \"rediss://127.0.0.1:6380\"\n");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check(
        "redis = \"rediss://127.0.0.1:6380\"\n\n[cluster.redis_tls]\nca_file = \"certs/redis-ca.pem\"\n",
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("cluster.redis_tls.ca_file") && text.contains("redis-ca.pem"),
        "{text}"
    );
    let (code, text) = check(
        "redis = \"redis://127.0.0.1:6379\"\n\n[cluster.redis_tls]\nca_file = \"nonce.secret\"\n",
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cluster.redis_tls"), "{text}");
}
