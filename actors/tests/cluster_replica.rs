//! Two siprox nodes in this process share registrations through a real Redis (and a real
//! 3-master Redis Cluster): a phone registers over TCP on node A, node B's replica gets the
//! binding from the change stream, an unregister removes it, node A's heartbeat key lives.
//! With Redis stopped, node A keeps answering REGISTER and OPTIONS and its writes are
//! deferred, not queued without bound; with Redis restarted empty, node A pushes its
//! bindings again and node B resyncs. Real sockets on 127.0.0.1, real redis-server.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use siprox::config::{ClusterConfig, Config, ConfigDuration, Proto};
use siprox::proxy::Transport;
use siprox_actors::state::location::Location;
use siprox_actors::state::replica::ClusterStore;
use siprox_actors::RuntimeHandle;
use siprox_testkit::redis::{RedisCluster, RedisServer};
use tokio::net::TcpStream;

/// Saves every REGISTER, answers OPTIONS: the registrar without digest, for the cluster.
const SCRIPT: &str = r#"
route {
    if (method == "REGISTER") {
        save("location");
        exit;
    }
    if (method == "OPTIONS") {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("404", "Not Found");
}
"#;

/// Long enough for a test to see convergence, short enough not to wait.
const CONVERGE: Duration = Duration::from_secs(15);

fn node_config(dir: &Path, node: &str, redis: Vec<String>) -> Config {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/route.cfg"), SCRIPT).unwrap();
    let mut cfg = config(&[Proto::Tcp]);
    cfg.script.file = Some("scripts/route.cfg".into());
    cfg.cluster = Some(ClusterConfig {
        node: node.to_owned(),
        advertise: format!("sip:{node}.cluster.invalid:5071;transport=tls"),
        redis,
        key_prefix: "t".to_owned(),
        heartbeat: ConfigDuration::millis(200),
        node_timeout: ConfigDuration::millis(1000),
        tls: None,
        insecure_plaintext: true,
        ticket_rotation: ConfigDuration::secs(3600),
        redis_tls: None,
    });
    cfg
}

struct Node {
    handle: RuntimeHandle,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(name: &str, redis: Vec<String>) -> Node {
        Node::start_with(name, redis, |_| {})
    }

    fn start_with(name: &str, redis: Vec<String>, edit: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = node_config(dir.path(), name, redis);
        edit(&mut cfg);
        let handle = start(cfg, dir.path());
        Node { handle, _dir: dir }
    }

    /// What a lookup on this node finds for `user` now: contacts of current bindings (its
    /// own and the replica's, as the registrar's lookup sees them), with their expiry.
    fn lookup(&self, user: &str) -> Vec<(String, i64)> {
        let now = siprox_actors::state::unix_now();
        self.location()
            .registrar_store()
            .get(&format!("sip:{user}@example.com"))
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.expires > now)
            .map(|b| (b.contact, b.expires))
            .collect()
    }

    fn location(&self) -> Arc<Location> {
        self.handle.location().expect("the location store")
    }

    fn cluster(&self) -> Arc<ClusterStore> {
        self.location().cluster.clone().expect("a cluster store")
    }

    /// Contacts of other nodes in this node's replica, for `user`.
    fn replica_contacts(&self, user: &str) -> Vec<(String, String)> {
        self.cluster()
            .replica
            .get(&format!("sip:{user}@example.com"))
            .into_iter()
            .map(|b| (b.contact, b.flow.node.as_deref().unwrap_or("").to_owned()))
            .collect()
    }

    async fn phone(&self, user: &'static str) -> Phone {
        let addr = self.handle.local_addr(Transport::Tcp).expect("tcp");
        Phone {
            user,
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
            cseq: 0,
        }
    }
}

struct Phone {
    user: &'static str,
    s: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
}

impl Phone {
    /// Sends `msg` and returns the status of the answer, which must come within 3 s.
    async fn ask(&mut self, msg: &str) -> u16 {
        send(&mut self.s, msg).await;
        let r = read_message(&mut self.s, &mut self.buf, Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", self.user));
        status(&r).unwrap_or(0)
    }

    async fn register(&mut self, expires: u32) -> u16 {
        self.cseq += 1;
        let (u, c) = (self.user, self.cseq);
        let msg = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.99:5999;branch=z9hG4bK-reg-{u}-{c};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=r{u}\r\n\
             To: <sip:{u}@example.com>\r\n\
             Call-ID: reg-{u}\r\n\
             CSeq: {c} REGISTER\r\n\
             Contact: <sip:{u}@127.0.0.99:5999;transport=tcp>\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        self.ask(&msg).await
    }

    async fn options(&mut self) -> u16 {
        self.cseq += 1;
        let (u, c) = (self.user, self.cseq);
        let msg = format!(
            "OPTIONS sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.99:5999;branch=z9hG4bK-opt-{u}-{c};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=o{u}\r\n\
             To: <sip:example.com>\r\n\
             Call-ID: opt-{u}-{c}\r\n\
             CSeq: {c} OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        self.ask(&msg).await
    }
}

/// Register on A, seen on B; unregister on A, gone on B; A's heartbeat key present.
async fn share_and_unshare(a: &Node, b: &Node, exists: &dyn Fn(&str) -> bool) {
    let mut alice = a.phone("alice").await;
    assert_eq!(alice.register(300).await, 200);
    assert_eventually!(
        b.replica_contacts("alice")
            == vec![(
                "sip:alice@127.0.0.99:5999;transport=tcp".to_owned(),
                "a".to_owned()
            )],
        CONVERGE,
        "node B's replica: {:?}",
        b.replica_contacts("alice")
    );
    // A holds alice itself, never in its replica.
    assert!(a.replica_contacts("alice").is_empty());
    assert!(exists("t:node:a"), "node A's heartbeat key");
    assert!(exists("t:node:b"), "node B's heartbeat key");
    assert_eq!(alice.register(0).await, 200);
    assert_eventually!(
        b.replica_contacts("alice").is_empty(),
        CONVERGE,
        "node B still has {:?}",
        b.replica_contacts("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_bindings_through_one_redis_and_survive_its_outage() {
    let mut redis = RedisServer::start();
    let a = Node::start("a", vec![redis.url()]);
    let b = Node::start("b", vec![redis.url()]);
    share_and_unshare(&a, &b, &|k| {
        redis.cli(&["EXISTS", k]).is_some_and(|o| o.trim() == "1")
    })
    .await;

    let mut carol = a.phone("carol").await;
    assert_eq!(carol.register(300).await, 200);
    assert_eventually!(b.replica_contacts("carol").len() == 1, CONVERGE);

    // Redis gone: node A answers as before, from what it holds.
    redis.stop();
    let mut bob = a.phone("bob").await;
    assert_eq!(bob.register(300).await, 200);
    for _ in 0..5 {
        assert_eq!(bob.options().await, 200);
    }
    assert_eq!(carol.register(300).await, 200);
    let outbox = &a.cluster().outbox;
    assert_eventually!(
        outbox.deferred.load(Ordering::Relaxed) >= 2,
        CONVERGE,
        "node A's writes while Redis is down are counted as deferred"
    );
    assert!(outbox.queued() <= outbox.capacity());
    // B keeps what it had (stale but there), and knows it is not current.
    assert_eq!(b.replica_contacts("carol").len(), 1);
    assert_eventually!(
        !b.cluster().replica.current.load(Ordering::Relaxed),
        CONVERGE
    );

    // Redis back, empty: A pushes everything again, B resyncs.
    redis.restart();
    assert_eventually!(
        b.replica_contacts("bob").len() == 1 && b.replica_contacts("carol").len() == 1,
        CONVERGE,
        "node B after the outage: bob {:?}, carol {:?}",
        b.replica_contacts("bob"),
        b.replica_contacts("carol")
    );
    assert!(b.cluster().replica.current.load(Ordering::Relaxed));
    assert_eq!(bob.options().await, 200);

    // Node A gone: its heartbeat key expires after node_timeout, and B stops offering
    // A's bindings (which it still holds until they expire).
    a.handle.shutdown();
    assert_eventually!(
        b.replica_contacts("bob").is_empty(),
        CONVERGE,
        "node B still offers the dead node's binding"
    );
    assert!(b.cluster().replica.is_dead("a"));
    assert_eq!(b.cluster().replica.len(), 2);
    b.handle.shutdown();
}

/// A refresh (same contact and flow, only the expiry and CSeq moved) is written to the
/// hash but appends nothing to the change stream (`XLEN` unchanged); node B's registrar
/// still finds the binding after the expiry it last heard of, for as long as node A holds
/// it, and no longer once A's binding lapsed there (A announces the removal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_not_on_the_stream_and_other_nodes_follow_the_owners_expiry() {
    let redis = RedisServer::start();
    let short = |cfg: &mut Config| {
        cfg.registrar.min_expires = 1;
        cfg.location.expire_interval = ConfigDuration::millis(200);
    };
    let a = Node::start_with("a", vec![redis.url()], short);
    let b = Node::start_with("b", vec![redis.url()], short);
    let xlen = || -> u64 {
        redis
            .cli(&["XLEN", "t:changes"])
            .and_then(|t| t.trim().parse().ok())
            .expect("XLEN")
    };
    let hash = || {
        redis
            .cli(&["HGETALL", "t:loc:{sip:alice@example.com}"])
            .unwrap_or_default()
    };
    let now = siprox_actors::state::unix_now;

    let mut alice = a.phone("alice").await;
    assert_eq!(alice.register(5).await, 200);
    assert_eventually!(b.lookup("alice").len() == 1, CONVERGE);
    let first = b.lookup("alice")[0].1;
    let entries = xlen();
    assert!(entries >= 1, "the new binding is on the stream");

    // A refresh two seconds later: its expiry is later than the first by more than the
    // clock's one-second steps, which leaves a second to look at B in between.
    let registered = now();
    assert_eventually!(now() >= registered + 2, CONVERGE);
    assert_eq!(alice.register(5).await, 200);
    assert_eventually!(
        hash().contains("\"cseq\":2"),
        CONVERGE,
        "the refresh written to the hash: {}",
        hash()
    );
    let refreshed = a.lookup("alice")[0].1;
    assert!(
        refreshed > first,
        "A's binding now lasts longer: {refreshed} vs {first}"
    );
    assert_eq!(xlen(), entries, "a refresh appended a stream entry");

    // Past the expiry B last heard of, B still finds alice: A holds her binding.
    assert_eventually!(
        now() > first && now() < refreshed && b.lookup("alice").len() == 1,
        CONVERGE,
        "B's lookup at {} (first expiry {first}, refreshed {refreshed}): {:?}",
        now(),
        b.lookup("alice")
    );
    assert_eq!(xlen(), entries);

    // No more refreshes: A's binding lapses, A announces it, B's lookup finds nothing.
    assert_eventually!(a.lookup("alice").is_empty(), CONVERGE);
    assert_eventually!(
        b.cluster().replica.get("sip:alice@example.com").is_empty(),
        CONVERGE,
        "B still holds {:?} after A dropped it",
        b.cluster().replica.get("sip:alice@example.com")
    );
    assert!(b.lookup("alice").is_empty());
    assert_eq!(xlen(), entries + 1, "the expiry announced once");
    a.handle.shutdown();
    b.handle.shutdown();
}

/// The writer's throughput, for docs/cluster.md's paper model (printed with
/// `--nocapture`): `N` new AoRs saved straight into node A's store, then `N` refreshes of
/// them, fed in chunks the write-behind queue holds, timed until the writer took the last
/// one. Asserts what the figures rest on: every new AoR announced once, no refresh
/// announced (`XLEN` unchanged), no change dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_throughput_new_bindings_and_refreshes() {
    use siprox::registrar::{Binding, Flow};
    const N: usize = 20_000;
    const CHUNK: usize = 2048;
    let redis = RedisServer::start();
    let a = Node::start("a", vec![redis.url()]);
    let xlen = || -> u64 {
        redis
            .cli(&["XLEN", "t:changes"])
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    // A's writer connected and pushed its (empty) store.
    assert_eventually!(
        redis
            .cli(&["EXISTS", "t:pushed:a"])
            .is_some_and(|o| o.trim() == "1"),
        CONVERGE
    );
    let cs = a.cluster();
    let store = a.location();
    let store = store.registrar_store();
    let now = siprox_actors::state::unix_now();
    let binding = |i: usize, shift: i64| Binding {
        contact: format!("sip:user{i}@198.51.100.7:40123;transport=tls"),
        expires: now + 600 + shift,
        q: None,
        call_id: format!("w{i}"),
        cseq: 1 + shift as u32,
        path: vec![],
        flow: Flow {
            transport: Transport::Tls,
            source: "198.51.100.7:40123".parse().unwrap(),
            local: "127.0.0.1:5061".parse().unwrap(),
            conn: Some(siprox::proxy::ConnId(i as u64 + 1)),
            node: None,
            node_route: None,
        },
        instance: None,
        reg_id: None,
        user_agent: Some("Phone/1.0".into()),
        updated: now + shift,
    };
    let mut rounds = Vec::new();
    for shift in [0, 1] {
        let t = std::time::Instant::now();
        for start in (0..N).step_by(CHUNK) {
            for i in start..(start + CHUNK).min(N) {
                let b = binding(i, shift);
                store
                    .update(&format!("sip:user{i}@example.com"), &mut |_| {
                        Some(vec![b.clone()])
                    })
                    .expect("saved");
            }
            assert_eventually!(cs.outbox.queued() == 0, CONVERGE);
        }
        let took = t.elapsed();
        rounds.push(took);
        let what = if shift == 0 { "new" } else { "refreshes" };
        println!(
            "writer: {N} {what} in {took:?}: {:.0}/s",
            N as f64 / took.as_secs_f64()
        );
    }
    assert_eq!(cs.outbox.dropped.load(Ordering::Relaxed), 0);
    // The last batch may still be on its way.
    assert_eventually!(
        cs.outbox.refreshed.load(Ordering::Relaxed) == N as u64,
        CONVERGE,
        "refreshes written: {}",
        cs.outbox.refreshed.load(Ordering::Relaxed)
    );
    assert_eq!(cs.outbox.announced.load(Ordering::Relaxed), N as u64);
    assert_eq!(xlen(), N as u64, "one entry per new AoR, none per refresh");
    a.handle.shutdown();
}

/// The figures of docs/cluster.md's memory model: Redis bytes per binding (hash, TTL and
/// the stream entry its write appended) and replica bytes per binding, for `N` phones that
/// register through node A and are replicated on node B. Prints them; fails when either
/// leaves the budget the model assumes (2 KiB in Redis, 1 KiB in a replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_binding_in_redis_and_in_a_replica() {
    const N: usize = 2000;
    let redis = RedisServer::start();
    let used = || -> usize {
        redis
            .cli(&["INFO", "memory"])
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .expect("INFO memory")
    };
    let a = Node::start("a", vec![redis.url()]);
    let b = Node::start("b", vec![redis.url()]);
    // Both nodes connected, heartbeats written: what is left is the bindings' share.
    assert_eventually!(
        b.cluster().replica.current.load(Ordering::Relaxed),
        CONVERGE
    );
    let before = used();
    let addr = a.handle.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    for i in 0..N {
        let msg = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.99:5999;branch=z9hG4bK-m{i};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:user{i}@example.com>;tag=m{i}\r\n\
             To: <sip:user{i}@example.com>\r\n\
             Call-ID: mem-{i}@127.0.0.99\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:user{i}@198.51.100.7:40123;transport=tls>;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{i:012}>\";reg-id=1\r\n\
             User-Agent: Phone/1.0\r\n\
             Supported: outbound, path\r\n\
             Expires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        );
        send(&mut s, &msg).await;
        let r = read_message(&mut s, &mut buf, Duration::from_secs(3))
            .await
            .expect("answer");
        assert_eq!(status(&r), Some(200), "{r}");
    }
    assert_eventually!(
        b.cluster().replica.len() == N,
        Duration::from_secs(60),
        "node B holds {} of {N}",
        b.cluster().replica.len()
    );
    let redis_per = (used() - before) / N;
    let stream: usize = redis
        .cli(&["MEMORY", "USAGE", "t:changes"])
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    println!("of which the change stream, per entry: {}", stream / N);
    let replica_per = b.cluster().replica.approx_bytes() / N;
    println!("redis bytes per binding (hash + TTL + stream entry): {redis_per}");
    println!(
        "replica bytes per binding (estimate; {} of them the Binding struct): {replica_per}",
        std::mem::size_of::<siprox::registrar::Binding>()
    );
    assert!(redis_per < 2048, "redis bytes per binding: {redis_per}");
    assert!(
        replica_per < 1024,
        "replica bytes per binding: {replica_per}"
    );
    a.handle.shutdown();
    b.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_bindings_through_a_redis_cluster() {
    let rc = RedisCluster::start();
    let a = Node::start("a", rc.urls());
    let b = Node::start("b", rc.urls());
    share_and_unshare(&a, &b, &|k| {
        rc.cli(&["EXISTS", k]).is_some_and(|o| o.trim() == "1")
    })
    .await;
    // Many AoRs land on every master; B's resync scans them all: a third node started now
    // sees every binding without any change on the stream after it started.
    let mut phones = Vec::new();
    for u in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let mut p = a.phone(u).await;
        assert_eq!(p.register(300).await, 200);
        phones.push(p);
    }
    assert_eventually!(b.cluster().replica.len() == 6, CONVERGE);
    let c = Node::start("c", rc.urls());
    assert_eventually!(
        c.cluster().replica.len() == 6,
        CONVERGE,
        "node C resynced {} bindings",
        c.cluster().replica.len()
    );
    let masters_with_keys = rc
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).is_some_and(|s| s.trim() != "0"))
        .count();
    assert!(masters_with_keys >= 2, "keys spread over the masters");
    a.handle.shutdown();
    b.handle.shutdown();
    c.handle.shutdown();
}
