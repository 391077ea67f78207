//! Redis stopped for 10 s during traffic (issue 14): two siprox nodes in this process, one
//! real redis-server, the shipped default script, phones over real TLS. A phone on node 1
//! is asked (OPTIONS relayed to it and answered) in a loop before, during and after the
//! outage: every request answered, all within 1 s and 99.8 % within the issue's 100 ms; a call to
//! node 2's phone gets 503 with Retry-After while Redis is down; after Redis restarts
//! (empty, same port) both nodes see each other's bindings again, a registration made
//! during the outage included, without restarting siprox. Then Redis is frozen (`SIGSTOP`:
//! sockets open, no answers) for 3 s: local requests are still answered within the bound,
//! and the nodes converge once it resumes. Never sleeps but for the outages.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::inproc;
use common::*;
use siprox::config::{
    cluster_domain, ClusterConfig, ClusterTls, Config, ConfigDuration, DomainConfig, VerifyClient,
    CLUSTER_DOMAIN,
};
use siprox::sip::Message;
use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::{Ca, Pki, Spec, Tls};
use siprox_testkit::redis::RedisServer;
use siprox_testkit::ua::{self, Client, Transport};

const HEARTBEAT: Duration = Duration::from_millis(200);
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Long enough for replicas to converge, short enough not to wait.
const CONVERGE: Duration = Duration::from_secs(15);
/// The issue's bound on a local phone's answer: a worker stalled on Redis would take
/// seconds (the Redis client's response timeout is 2 s; the freeze lasts 3 s).
const LOCAL_BOUND: Duration = Duration::from_millis(100);
/// Answers past `LOCAL_BOUND` tolerated, per mille: a debug build on a shared 2-core
/// machine sees scheduling pauses of 100-200 ms that are not a wait on Redis (seen once in
/// a run while another build compiled). A stall on Redis cannot hide in this: it would
/// delay every request for seconds and break `STALL`.
const OVER_PER_MILLE: usize = 2;
/// No answer may take this long: the shortest stall a wait on Redis would cause.
const STALL: Duration = Duration::from_millis(1000);
/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// How long Redis stays frozen (`SIGSTOP`) after the outage.
const FROZEN: Duration = Duration::from_secs(3);

struct Node {
    handle: RuntimeHandle,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
}

struct Site {
    pki: Pki,
    cluster_ca: Ca,
    flow_key: String,
    redis: String,
    default_script: PathBuf,
}

impl Site {
    fn new(redis: String) -> Site {
        Site {
            pki: Pki::new(),
            cluster_ca: Ca::with(Spec::ca("siprox cluster CA")),
            flow_key: format!("{}\n", "f".repeat(64)),
            redis,
            default_script: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../conf.d/scripts/default.cfg"),
        }
    }

    fn config(&self, dir: &Path, name: &str, tls: SocketAddr) -> Config {
        let o = inproc::Options {
            udp: false,
            tcp: false,
            tls: true,
            // Phones present certificates naming their user (the default script saves
            // their REGISTER without a password).
            verify_client: VerifyClient::Optional,
            ..inproc::Options::default()
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut cfg = inproc::config(&self.pki, &o, [any, any, tls]);
        std::fs::write(dir.join("flow.keys"), &self.flow_key).unwrap();
        cfg.auth.flow_key_file = Some(dir.join("flow.keys"));
        cfg.script.file = Some(self.default_script.clone());
        cfg.domains.insert(
            "example".into(),
            DomainConfig {
                names: vec!["example.com".into()],
                ..DomainConfig::default()
            },
        );
        let id = self.cluster_ca.issue(&Spec::leaf(name)).write(dir, name);
        let ca = self.cluster_ca.write(dir, "cluster-ca");
        let cluster = ClusterConfig {
            node: name.to_owned(),
            advertise: format!("sip:{tls};transport=tls"),
            redis: vec![self.redis.clone()],
            key_prefix: "o".to_owned(),
            heartbeat: ConfigDuration(HEARTBEAT),
            node_timeout: ConfigDuration(NODE_TIMEOUT),
            tls: Some(ClusterTls {
                certificate: id.cert_path,
                private_key: id.key_path,
                ca_file: ca.cert_path,
            }),
            insecure_plaintext: false,
            ticket_rotation: ConfigDuration::secs(3600),
            redis_tls: None,
        };
        cfg.domains
            .insert(CLUSTER_DOMAIN.to_owned(), cluster_domain(&cluster).unwrap());
        cfg.cluster = Some(cluster);
        cfg
    }

    fn node(&self, name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let tls = inproc::free_ports()[2];
        let handle = start(self.config(dir.path(), name, tls), dir.path());
        Node {
            handle,
            tls,
            _dir: dir,
        }
    }

    async fn phone(&self, user: &'static str, node: &Node) -> Phone {
        let id = self
            .pki
            .ca
            .issue(&Spec::client(user))
            .write(self.pki.dir.path(), user);
        let c = self.pki.connector(Some(&id), Tls::Any);
        let client = Client::connect(Transport::Tls, node.tls, Some(&c))
            .await
            .expect("connect to siprox");
        Phone {
            user,
            c: client,
            cseq: 0,
        }
    }
}

struct Phone {
    user: &'static str,
    c: Client,
    cseq: u32,
}

impl Phone {
    async fn register(&mut self) -> Option<u16> {
        self.cseq += 1;
        let (u, c) = (self.user, self.cseq);
        let msg = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=r{u}\r\n\
             To: <sip:{u}@example.com>\r\n\
             Call-ID: reg-{u}-{port}\r\n\
             CSeq: {c} REGISTER\r\n\
             Contact: <{contact}>\r\n\
             Expires: 600\r\n\
             Content-Length: 0\r\n\r\n",
            via = self.c.via(&ua::branch()),
            port = self.c.local.port(),
            contact = self.c.contact(u),
        );
        self.c.send(msg.as_bytes()).await.unwrap();
        self.final_response(Duration::from_secs(3))
            .await
            .and_then(|m| m.status())
    }

    /// Sends `method` to `callee@example.com` (outside any dialog).
    async fn request(&mut self, method: &str, callee: &str) {
        self.cseq += 1;
        let msg = format!(
            "{method} sip:{callee}@example.com SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@example.com>;tag=f{u}{c}\r\n\
             To: <sip:{callee}@example.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {c} {method}\r\n\
             Contact: <{contact}>\r\n\
             Content-Length: 0\r\n\r\n",
            u = self.user,
            c = self.cseq,
            via = self.c.via(&ua::branch()),
            call_id = ua::call_id(),
            contact = self.c.contact(self.user),
        );
        self.c.send(msg.as_bytes()).await.unwrap();
    }

    async fn final_response(&self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.c.recv(left).await?;
            if m.status().is_some_and(|s| s >= 200) {
                return Some(m);
            }
        }
    }

    /// Answers the next request this phone receives with 200; returns its method.
    async fn answer_next(&self, timeout: Duration) -> Option<String> {
        let req = self.c.recv(timeout).await?;
        let method = req.method()?.to_owned();
        let contact = format!("<{}>", self.c.contact(self.user));
        self.c
            .send(&ua::response(&req, 200, "OK", &contact, 0))
            .await
            .ok()?;
        Some(method)
    }
}

/// `from` asks `to` (OPTIONS, relayed by siprox and answered by `to`); returns how long the
/// answer took. Panics when it does not come.
async fn ping(from: &mut Phone, to: &Phone) -> Duration {
    let t = Instant::now();
    from.request("OPTIONS", to.user).await;
    let got = to.answer_next(Duration::from_secs(3)).await;
    assert_eq!(
        got.as_deref(),
        Some("OPTIONS"),
        "{} never got the OPTIONS",
        to.user
    );
    let status = from
        .final_response(Duration::from_secs(3))
        .await
        .and_then(|m| m.status());
    assert_eq!(status, Some(200), "the OPTIONS to {} unanswered", to.user);
    t.elapsed()
}

/// Whether `node` follows Redis and holds a routable binding of `user` owned by `owner`.
fn sees(node: &Node, user: &str, owner: &str) -> bool {
    let cs = node.handle.location().and_then(|l| l.cluster.clone());
    cs.is_some_and(|c| {
        c.replica.current.load(Ordering::Relaxed)
            && c.replica
                .get(&format!("sip:{user}@example.com"))
                .iter()
                .any(|b| b.flow.node.as_deref() == Some(owner) && b.flow.node_route.is_some())
    })
}

fn current(node: &Node) -> bool {
    node.handle
        .location()
        .and_then(|l| l.cluster.clone())
        .is_some_and(|c| c.replica.current.load(Ordering::Relaxed))
}

/// The slowest local answers seen, for the report.
#[derive(Default)]
struct Times {
    n: usize,
    worst: Duration,
    over: Vec<Duration>,
}

impl Times {
    fn add(&mut self, d: Duration) {
        self.n += 1;
        self.worst = self.worst.max(d);
        if d > LOCAL_BOUND {
            self.over.push(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_10s_during_traffic_local_phones_keep_answering_and_nodes_converge() {
    siprox_testkit::logs::install();
    let mut redis = RedisServer::start();
    let site = Site::new(redis.url());
    let n1 = site.node("n1");
    let n2 = site.node("n2");

    let mut alice = site.phone("alice", &n1).await;
    assert_eq!(alice.register().await, Some(200));
    let mut carol = site.phone("carol", &n2).await;
    assert_eq!(carol.register().await, Some(200));
    // Bob calls from node 1; he need not be registered.
    let mut bob = site.phone("bob", &n1).await;
    assert_eventually!(
        sees(&n1, "carol", "n2") && sees(&n2, "alice", "n1"),
        CONVERGE
    );
    let mut times = Times::default();
    for _ in 0..20 {
        times.add(ping(&mut bob, &alice).await);
    }
    // Across nodes too, before the outage.
    ping(&mut bob, &carol).await;

    redis.stop();
    let stopped = Instant::now();
    // Node 1 notices (its tail's connection fails): another node's phone is then unknown.
    while current(&n1) {
        assert!(
            stopped.elapsed() < CONVERGE,
            "node 1 never noticed the outage"
        );
        times.add(ping(&mut bob, &alice).await);
    }
    bob.request("INVITE", "carol").await;
    let m = bob
        .final_response(Duration::from_secs(3))
        .await
        .expect("an answer to the INVITE for carol");
    assert_eq!(m.status(), Some(503), "{m:?}");
    assert!(
        m.header_values_by_name("Retry-After").next().is_some(),
        "503 without Retry-After: {m:?}"
    );
    // A phone registers on node 2 during the outage (answered from memory).
    let mut dave = site.phone("dave", &n2).await;
    assert_eq!(dave.register().await, Some(200));
    while stopped.elapsed() < OUTAGE {
        times.add(ping(&mut bob, &alice).await);
    }
    let during = times.n;

    redis.restart();
    let back = Instant::now();
    while !(sees(&n1, "carol", "n2") && sees(&n1, "dave", "n2") && sees(&n2, "alice", "n1")) {
        assert!(
            back.elapsed() < CONVERGE,
            "no convergence after Redis came back: n1 sees carol {} dave {}, n2 sees alice {}",
            sees(&n1, "carol", "n2"),
            sees(&n1, "dave", "n2"),
            sees(&n2, "alice", "n1")
        );
        times.add(ping(&mut bob, &alice).await);
    }
    let converged = back.elapsed();
    // A frozen Redis (SIGSTOP) is the outage a waiting worker would feel: connections stay
    // open and nothing answers. Local requests are answered throughout all the same.
    redis.freeze();
    let frozen = Instant::now();
    while frozen.elapsed() < FROZEN {
        times.add(ping(&mut bob, &alice).await);
    }
    redis.thaw();
    let thawed = Instant::now();
    while !(sees(&n1, "carol", "n2") && sees(&n2, "alice", "n1") && current(&n1)) {
        assert!(
            thawed.elapsed() < CONVERGE,
            "no convergence after Redis thawed: n1 current {}",
            current(&n1)
        );
        times.add(ping(&mut bob, &alice).await);
    }
    eprintln!(
        "converged {converged:?} after Redis came back, {:?} after it thawed; {} local \
         requests ({} until the restart), slowest {:?}, over {LOCAL_BOUND:?}: {:?}",
        thawed.elapsed(),
        times.n,
        during,
        times.worst,
        times.over
    );
    // Routed across nodes again, both ways, and the outage's registration reachable.
    ping(&mut bob, &carol).await;
    ping(&mut bob, &dave).await;
    let mut erin = site.phone("erin", &n2).await;
    ping(&mut erin, &alice).await;
    assert!(
        times.worst < STALL,
        "a local request waited {:?}: a worker stalled",
        times.worst
    );
    assert!(
        times.over.len() * 1000 <= times.n * OVER_PER_MILLE,
        "local requests slower than {LOCAL_BOUND:?}: {:?} of {}",
        times.over,
        times.n
    );
    drop(dave);
    n1.handle.shutdown();
    n2.handle.shutdown();
}
