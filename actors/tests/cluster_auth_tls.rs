//! Digest and TLS sessions across the nodes of a cluster, with a real Redis and siprox nodes
//! in this process: a challenge from node 1 is answered on node 2 and accepted (shared
//! secret), the same nonce count replayed on node 3 is refused once the count arrived
//! there (shared replay state); a TLS 1.3 and a TLS 1.2 client resume on node 2 with a
//! ticket node 1 issued, but never on another tenant's domain; a ticket made before a
//! rotation of the shared key ring still resumes. Real sockets on 127.0.0.1, real TLS
//! (`openssl s_client`, a real resuming client), real redis-server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::tree::Tree;
use common::*;
use siprox::config::{ClusterConfig, Config, ConfigDuration, DomainConfig, Proto};
use siprox::proxy::Transport;
use siprox_actors::RuntimeHandle;
use siprox_testkit::digest;
use siprox_testkit::redis::{RedisCluster, RedisServer};
use siprox_testkit::sclient::{s_client, Seen};
use tokio::net::TcpStream;

/// Long enough for a rotation or two (3 s in the rotation test) under load.
const CONVERGE: Duration = Duration::from_secs(20);

const DIGEST_SCRIPT: &str = r#"
route {
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

fn cluster(node: &str, redis: &[String]) -> ClusterConfig {
    ClusterConfig {
        node: node.to_owned(),
        advertise: format!("sip:{node}.cluster.invalid:5071;transport=tls"),
        redis: redis.to_vec(),
        key_prefix: "t".to_owned(),
        heartbeat: ConfigDuration::millis(200),
        node_timeout: ConfigDuration::millis(1000),
        tls: None,
        insecure_plaintext: true,
        ticket_rotation: ConfigDuration::secs(3600),
        redis_tls: None,
    }
}

struct Node {
    handle: RuntimeHandle,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A node over TCP with digest on REGISTER, the users file, and the cluster's secret.
    fn digest(node: &str, redis: &[String]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("scripts")).unwrap();
        std::fs::write(d.join("scripts/route.cfg"), DIGEST_SCRIPT).unwrap();
        std::fs::write(
            d.join("users.toml"),
            "[[user]]\nname = \"alice\"\nrealm = \"example.com\"\npassword = \"wonderland\"\n",
        )
        .unwrap();
        std::fs::write(d.join("nonce.secret"), b"the cluster's nonce secret").unwrap();
        let mut cfg: Config = config(&[Proto::Tcp]);
        cfg.script.file = Some("scripts/route.cfg".into());
        cfg.domains.insert(
            "example".into(),
            DomainConfig {
                names: vec!["example.com".into()],
                ..DomainConfig::default()
            },
        );
        cfg.auth.users_file = Some("users.toml".into());
        cfg.auth.secret_file = Some("nonce.secret".into());
        cfg.cluster = Some(cluster(node, redis));
        Node {
            handle: start(cfg, d),
            _dir: dir,
        }
    }

    async fn connect(&self) -> TcpStream {
        let addr = self.handle.local_addr(Transport::Tcp).expect("tcp");
        TcpStream::connect(addr).await.expect("connect")
    }

    fn tracked_nonces(&self) -> usize {
        self.handle.snapshot().auth.nonces().tracked()
    }
}

fn register(cseq: u32, auth: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.99:5999;branch=z9hG4bK-reg-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=ra\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: reg-alice-{cseq}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:alice@127.0.0.99:5999;transport=tcp>\r\n\
         {auth}Expires: 300\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

async fn ask(s: &mut TcpStream, msg: &str) -> String {
    let mut buf = Vec::new();
    send(s, msg).await;
    read_message(s, &mut buf, Duration::from_secs(3))
        .await
        .expect("an answer within 3 s")
}

/// The SHA-256 `Authorization` line answering `challenge` with nonce count `nc`.
fn digest_line(challenge: &str, nc: u32, cnonce: &str) -> String {
    digest::Answer {
        alg: "SHA-256",
        user: "alice",
        realm: "example.com",
        password: "wonderland",
        method: "REGISTER",
        uri: "sip:example.com",
        nc,
        cnonce,
    }
    .to(challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_one_node_is_accepted_on_another_and_a_replay_refused_on_a_third() {
    let redis = RedisServer::start();
    let url = [redis.url()];
    digest_across(
        Node::digest("n1", &url),
        Node::digest("n2", &url),
        Node::digest("n3", &url),
    )
    .await;
}

/// Challenge on `n1`, answer on `n2`, the same count replayed on `n3` and `n1`.
async fn digest_across(n1: Node, n2: Node, n3: Node) {
    let mut s1 = n1.connect().await;
    let ch = ask(&mut s1, &register(1, "")).await;
    assert_eq!(status(&ch), Some(401), "{ch}");

    // Node 2 never saw this nonce: it accepts it because the secret is the cluster's.
    let good = digest_line(&ch, 1, "c1");
    let mut s2 = n2.connect().await;
    let r = ask(&mut s2, &register(2, &good)).await;
    assert_eq!(status(&r), Some(200), "node 2 accepts node 1's nonce: {r}");
    let accepted = Instant::now();

    // The accepted count reaches node 3's replay table through Redis.
    assert_eventually!(
        n3.tracked_nonces() >= 1,
        CONVERGE,
        "node 3 never learnt the count node 2 accepted"
    );
    println!(
        "nonce count propagation node 2 -> node 3: {:?}",
        accepted.elapsed()
    );
    let mut s3 = n3.connect().await;
    let r = ask(&mut s3, &register(3, &good)).await;
    assert_ne!(status(&r), Some(200), "a replay on node 3 passed: {r}");
    assert!(matches!(status(&r), Some(401 | 403)), "{r}");
    // The nonce itself is good on node 3: only the used count was refused.
    let next = digest_line(&ch, 2, "c2");
    let r = ask(&mut s3, &register(4, &next)).await;
    assert_eq!(
        status(&r),
        Some(200),
        "a fresh count of the same nonce: {r}"
    );
    // And node 1, which issued it, refuses the count node 2 accepted, too.
    assert_eventually!(n1.tracked_nonces() >= 1, CONVERGE);
    let r = ask(&mut s1, &register(5, &good)).await;
    assert_ne!(status(&r), Some(200), "a replay on node 1 passed: {r}");

    n1.handle.shutdown();
    n2.handle.shutdown();
    n3.handle.shutdown();
}

/// A node from a conf.d tree (two tenants, `a` and `b`) in the cluster on `redis`.
fn tls_node(node: &str, redis: &str, rotation: &str) -> (Tree, RuntimeHandle) {
    tls_node_toml(node, &format!("\"{redis}\""), rotation)
}

/// [`tls_node`] with `redis` as TOML (one URL in quotes, or a list of seeds).
fn tls_node_toml(node: &str, redis: &str, rotation: &str) -> (Tree, RuntimeHandle) {
    let t = Tree::new(&format!(
        "[auth]\nsecret_file = \"nonce.secret\"\nflow_key_file = \"flow.key\"\n\n\
         [cluster]\nnode = \"{node}\"\nadvertise = \"sip:{node}.cluster.invalid:5071;transport=tls\"\n\
         redis = {redis}\nkey_prefix = \"t\"\nheartbeat = \"200ms\"\nnode_timeout = \"1s\"\n\
         ticket_rotation = \"{rotation}\"\n\
         # Digest and tickets only: no request goes between these nodes.\n\
         insecure_plaintext = true\n"
    ));
    t.write("nonce.secret", b"the cluster's nonce secret");
    t.write("flow.key", format!("{}\n", "k".repeat(64)).as_bytes());
    t.server_domain("a", "");
    t.server_domain("b", "");
    let rt = t.start();
    (t, rt)
}

/// A session from node 1 (saved to `sess`) that node 2 resumes: retried until both nodes
/// hold the ring's first key (a node without keys issues no ticket).
async fn ticket_resumed_on(n1: SocketAddr, n2: SocketAddr, version: &str, sess: &Path) {
    let mut last: Option<Seen>;
    assert_eventually!(
        {
            let _ = std::fs::remove_file(sess);
            let first = s_client(n1, "a.example", version, None, Some(sess));
            assert!(first.served && !first.reused, "{version}: {first:?}");
            let again = s_client(n2, "a.example", version, Some(sess), None);
            assert!(again.served, "{version}: {again:?}");
            last = Some(again);
            last.as_ref().is_some_and(|s| s.reused)
        },
        CONVERGE,
        "{version}: node 2 never resumed a session of node 1: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_on_another_node_on_their_own_domain_only() {
    let redis = RedisServer::start();
    let (t1, rt1) = tls_node("n1", &redis.url(), "1h");
    let (_t2, rt2) = tls_node("n2", &redis.url(), "1h");
    let a1 = rt1.local_addr(Transport::Tls).expect("tls");
    let a2 = rt2.local_addr(Transport::Tls).expect("tls");
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t1.path(&format!("a{version}.sess"));
        ticket_resumed_on(a1, a2, version, &sess).await;
        // Node 2, node 1's ticket, another tenant's name: a full handshake with that
        // tenant's certificate.
        let other = s_client(a2, "b.example", version, Some(&sess), None);
        assert!(other.served, "{version}: {other:?}");
        assert!(
            !other.reused,
            "{version}: a session crossed tenants: {other:?}"
        );
        assert!(other.subject.contains("b.example"), "{version}: {other:?}");
    }
    // One key in the ring, written once.
    let ring = redis.cli(&["GET", "t:tickets"]).unwrap_or_default();
    assert_eq!(ring.trim().split(',').count(), 1, "{ring}");
    rt1.shutdown();
    rt2.shutdown();
}

/// The key names node `rt` holds, newest first.
fn names(rt: &RuntimeHandle) -> Vec<[u8; 16]> {
    rt.ticket_keys()
        .expect("a cluster node has a ring")
        .keys()
        .iter()
        .map(|k| k.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_resumes_after_a_rotation_until_its_key_leaves_the_ring() {
    let redis = RedisServer::start();
    let (t1, rt1) = tls_node("n1", &redis.url(), "3s");
    let (_t2, rt2) = tls_node("n2", &redis.url(), "3s");
    let a1 = rt1.local_addr(Transport::Tls).expect("tls");
    let a2 = rt2.local_addr(Transport::Tls).expect("tls");
    let sess = t1.path("rot.sess");
    let (mut before, mut held): (Vec<[u8; 16]>, Vec<[u8; 16]>);
    // A ticket from node 1 made with the key that is node 2's newest: the next rotation
    // retires it.
    assert_eventually!(
        {
            let _ = std::fs::remove_file(&sess);
            before = names(&rt2);
            let first = s_client(a1, "a.example", "-tls1_3", None, Some(&sess));
            let again = s_client(a2, "a.example", "-tls1_3", Some(&sess), None);
            held = names(&rt2);
            first.served && again.reused && before == held && held.len() == 1
        },
        CONVERGE,
        "no resumable ticket from the first key: {before:?} {held:?}"
    );
    let k1 = held[0];
    // Node 2 holds a newer key (the ticket's key is no longer the newest) and still
    // resumes the ticket. Checked on every pass until the rotation is seen, so that the
    // resumption is tried while the old key is no longer the one encrypting.
    let mut resumed_after_rotation = false;
    assert_eventually!(
        {
            let now = names(&rt2);
            if now.len() >= 2 && now[0] != k1 && now.contains(&k1) {
                let again = s_client(a2, "a.example", "-tls1_3", Some(&sess), None);
                resumed_after_rotation |= again.reused;
            }
            resumed_after_rotation
        },
        CONVERGE,
        "node 2 never resumed a ticket of the previous key: {:?}",
        names(&rt2)
    );
    // Once the key left the ring, the ticket means a full handshake.
    assert_eventually!(!names(&rt2).contains(&k1), CONVERGE);
    let late = s_client(a2, "a.example", "-tls1_3", Some(&sess), None);
    assert!(late.served, "{late:?}");
    assert!(
        !late.reused,
        "a ticket of a key out of the ring resumed: {late:?}"
    );
    rt1.shutdown();
    rt2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_node_serves_tls_and_resumes_its_own_tickets() {
    // Nothing listens there: the ring never gets the cluster's keys.
    let url = format!("redis://127.0.0.1:{}", siprox_testkit::ports::free_port());
    let (t, rt) = tls_node("n1", &url, "1h");
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    assert!(names(&rt).is_empty());
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t.path(&format!("alone{version}.sess"));
        let first = s_client(addr, "a.example", version, None, Some(&sess));
        assert!(first.served && !first.reused, "{version}: {first:?}");
        let again = s_client(addr, "a.example", version, Some(&sess), None);
        assert!(again.served && again.reused, "{version}: {again:?}");
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_and_tickets_across_nodes_on_a_redis_cluster() {
    let rc = RedisCluster::start();
    let urls = rc.urls();
    digest_across(
        Node::digest("n1", &urls),
        Node::digest("n2", &urls),
        Node::digest("n3", &urls),
    )
    .await;
    let seeds = format!(
        "[{}]",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (t1, rt1) = tls_node_toml("t1", &seeds, "1h");
    let (_t2, rt2) = tls_node_toml("t2", &seeds, "1h");
    let a1 = rt1.local_addr(Transport::Tls).expect("tls");
    let a2 = rt2.local_addr(Transport::Tls).expect("tls");
    let sess = t1.path("rc.sess");
    ticket_resumed_on(a1, a2, "-tls1_3", &sess).await;
    rt1.shutdown();
    rt2.shutdown();
}
