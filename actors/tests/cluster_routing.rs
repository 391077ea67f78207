//! Three siprox nodes in this process, one real Redis, the shipped default script: a call
//! for a phone registered over TLS on another node is routed to that node (a Route with its
//! advertise URI and node token, over TLS with the `[cluster.tls]` certificates) and
//! delivered over the phone's own connection, with ACK and BYE both ways; a phone that
//! copies a real node token is refused with 403; a dead node's phones get 480 and are
//! reachable again once they register through a live node; with Redis stopped a call for
//! another node's phone gets 503 with Retry-After while a call to a local phone connects.
//! Real sockets on 127.0.0.1, real TLS with certificates made here, real redis-server.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::inproc;
use common::*;
use siprox::config::{
    cluster_domain, ClusterConfig, ClusterTls, Config, ConfigDuration, DomainConfig, VerifyClient,
    CLUSTER_DOMAIN,
};
use siprox::sip::{HeaderName, Message};
use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::{Ca, Identity, Pki, Spec, Tls};
use siprox_testkit::redis::{RedisCluster, RedisServer};
use siprox_testkit::ua::{self, Client, Transport};

const HEARTBEAT: Duration = Duration::from_millis(200);
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Long enough for replicas to converge, short enough not to wait.
const CONVERGE: Duration = Duration::from_secs(15);
/// One hop's answer over loopback.
const ANSWER: Duration = Duration::from_secs(3);

struct Node {
    handle: RuntimeHandle,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
}

/// What every node shares: the phones' PKI, the cluster CA and the flow key file's text.
struct Site {
    pki: Pki,
    cluster_ca: Ca,
    flow_key: String,
    redis: Vec<String>,
    default_script: PathBuf,
}

impl Site {
    fn new(redis: Vec<String>) -> Site {
        Site {
            pki: Pki::new(),
            cluster_ca: Ca::with(Spec::ca("siprox cluster CA")),
            flow_key: format!("{}\n", "f".repeat(64)),
            redis,
            default_script: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../conf.d/scripts/default.cfg"),
        }
    }

    /// `by_name`: advertise `sips:localhost:PORT` instead of the IP address, with a node
    /// certificate that names `localhost` (`Some(true)`) or does not (`Some(false)`). A
    /// host name cannot take the bound port (port 0 is resolved against listeners by IP
    /// address), so `tls` then names the TLS listener's address, picked before the start.
    fn config_as(
        &self,
        dir: &Path,
        name: &str,
        tls: Option<SocketAddr>,
        by_name: Option<bool>,
    ) -> Config {
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
        let mut cfg = inproc::config(&self.pki, &o, [any, any, tls.unwrap_or(any)]);
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
        let spec = match by_name {
            Some(true) => Spec::leaf(name).dns("localhost"),
            _ => Spec::leaf(name),
        };
        let id = self.cluster_ca.issue(&spec).write(dir, name);
        let ca = self.cluster_ca.write(dir, "cluster-ca");
        let cluster = ClusterConfig {
            node: name.to_owned(),
            advertise: match (by_name, tls) {
                (Some(_), Some(tls)) => format!("sips:localhost:{}", tls.port()),
                // Port 0: the runtime advertises the port its TLS listener was bound to.
                _ => "sip:127.0.0.1:0;transport=tls".to_owned(),
            },
            redis: self.redis.clone(),
            key_prefix: "r".to_owned(),
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
        // What loading conf.d does with [cluster.tls].
        cfg.domains
            .insert(CLUSTER_DOMAIN.to_owned(), cluster_domain(&cluster).unwrap());
        cfg.cluster = Some(cluster);
        cfg
    }

    fn node(&self, name: &str) -> Node {
        self.node_as(name, None)
    }

    fn node_as(&self, name: &str, by_name: Option<bool>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let picked = by_name.map(|_| inproc::free_ports()[2]);
        let handle = start(
            self.config_as(dir.path(), name, picked, by_name),
            dir.path(),
        );
        let tls = handle.local_addr(Transport::Tls).expect("a TLS listener");
        Node {
            handle,
            tls,
            _dir: dir,
        }
    }

    fn phone_id(&self, user: &str) -> Identity {
        self.pki
            .ca
            .issue(&Spec::client(user))
            .write(self.pki.dir.path(), user)
    }

    /// A phone of `user` connected over TLS to `node`, with its client certificate.
    async fn phone(&self, user: &'static str, node: &Node) -> Phone {
        let id = self.phone_id(user);
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

fn contact_uri(m: &Message) -> String {
    let v = m.header(HeaderName::Contact).unwrap_or("");
    let v = v.trim().trim_start_matches('<');
    v.split('>').next().unwrap_or(v).to_owned()
}

/// The route set a UAC takes from a 2xx: its Record-Route values, reversed.
fn route_set(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .header_values(HeaderName::RecordRoute)
        .flat_map(|h| h.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    v.reverse();
    v
}

impl Phone {
    async fn register(&mut self) -> u16 {
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
        self.final_status(ANSWER).await.unwrap_or(0)
    }

    /// The next final response, skipping provisional ones.
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

    async fn final_status(&self, timeout: Duration) -> Option<u16> {
        self.final_response(timeout).await.and_then(|m| m.status())
    }

    /// An INVITE for `callee@example.com` (with extra header lines); returns its Call-ID.
    async fn invite(&mut self, callee: &str, extra: &str) -> String {
        let call_id = ua::call_id();
        let msg = format!(
            "INVITE sip:{callee}@example.com SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             {extra}\
             From: <sip:{u}@example.com>;tag=f{u}\r\n\
             To: <sip:{callee}@example.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <{contact}>\r\n\
             Content-Length: 0\r\n\r\n",
            u = self.user,
            via = self.c.via(&ua::branch()),
            contact = self.c.contact(self.user),
        );
        self.c.send(msg.as_bytes()).await.unwrap();
        call_id
    }

    /// The next request this phone receives (over its own connection).
    async fn incoming(&self, method: &str) -> Message {
        loop {
            let m = self
                .c
                .recv(ANSWER)
                .await
                .unwrap_or_else(|| panic!("{}: no {method}", self.user));
            if m.method() == Some(method) {
                return m;
            }
        }
    }

    /// Answers `req`; returns the To header value of the answer (with its tag).
    async fn answer(&self, req: &Message, code: u16) -> String {
        let contact = format!("<{}>", self.c.contact(self.user));
        let bytes = ua::response(req, code, "OK", &contact, 0);
        self.c.send(&bytes).await.unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .find_map(|l| l.strip_prefix("To: ").map(str::to_owned))
            .unwrap_or_default()
    }

    /// An in-dialog request (ACK, BYE) of the dialog `dialog`: a 2xx this phone received as
    /// caller, or the INVITE it received as callee (then `my_to` is the To of its 2xx).
    async fn in_dialog(&mut self, method: &str, dialog: &Message, my_to: Option<&str>) {
        let caller = my_to.is_none();
        let (target, routes, from, to) = if caller {
            (
                contact_uri(dialog),
                route_set(dialog),
                dialog.header(HeaderName::From).unwrap_or("").to_owned(),
                dialog.header(HeaderName::To).unwrap_or("").to_owned(),
            )
        } else {
            // The callee: the caller's Contact, the Record-Route in order, From/To swapped.
            let mut routes = route_set(dialog);
            routes.reverse();
            (
                contact_uri(dialog),
                routes,
                my_to.unwrap_or("").to_owned(),
                dialog.header(HeaderName::From).unwrap_or("").to_owned(),
            )
        };
        let cseq = if method == "ACK" { 1 } else { 2 };
        let mut msg = format!(
            "{method} {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n",
            self.c.via(&ua::branch())
        );
        for r in &routes {
            msg.push_str(&format!("Route: {r}\r\n"));
        }
        msg.push_str(&format!(
            "From: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            dialog.call_id().unwrap_or_default()
        ));
        self.c.send(msg.as_bytes()).await.unwrap();
    }
}

/// `caller` calls `callee` (already registered somewhere): INVITE, 200, ACK, then BYE from
/// `bye_from_callee` side, answered 200. Panics on any step that does not happen.
async fn call(caller: &mut Phone, callee: &mut Phone, bye_from_callee: bool) {
    let call_id = caller.invite(callee.user, "").await;
    let inv = callee.incoming("INVITE").await;
    assert_eq!(inv.call_id().ok(), Some(call_id.as_str()));
    let my_to = callee.answer(&inv, 200).await;
    let ok = caller
        .final_response(ANSWER)
        .await
        .expect("the 200 for the INVITE");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    caller.in_dialog("ACK", &ok, None).await;
    let ack = callee.incoming("ACK").await;
    assert_eq!(ack.call_id().ok(), Some(call_id.as_str()));
    if bye_from_callee {
        callee.in_dialog("BYE", &inv, Some(&my_to)).await;
        let bye = caller.incoming("BYE").await;
        caller.answer(&bye, 200).await;
        assert_eq!(callee.final_status(ANSWER).await, Some(200));
    } else {
        caller.in_dialog("BYE", &ok, None).await;
        let bye = callee.incoming("BYE").await;
        callee.answer(&bye, 200).await;
        assert_eq!(caller.final_status(ANSWER).await, Some(200));
    }
}

/// Alice on node 1, Bob on node 2, Bob's calls entering node 3; a copied node token;
/// node 1 shut down (480), alice registered again on node 2 (reachable). Returns nodes 2
/// and 3, Bob's phone on node 3 and Alice's on node 2.
async fn routing(site: &Site) -> (Node, Node, Phone, Phone) {
    let n1 = site.node("n1");
    let n2 = site.node("n2");
    let n3 = site.node("n3");

    let mut alice = site.phone("alice", &n1).await;
    assert_eq!(alice.register().await, 200);
    let mut bob_home = site.phone("bob", &n2).await;
    assert_eq!(bob_home.register().await, 200);
    assert_eventually!(sees(&n3, "alice", "n1") && sees(&n1, "bob", "n2"), CONVERGE);

    // Bob's call enters node 3; alice's phone is on node 1.
    let mut bob = site.phone("bob", &n3).await;
    call(&mut bob, &mut alice, false).await;
    call(&mut bob, &mut alice, true).await;

    // A phone that copies a real node token (seen in a Route, say) into its own request
    // is not a node: 403, and nothing reaches alice.
    let route = n3
        .handle
        .location()
        .and_then(|l| l.cluster.clone())
        .and_then(|c| {
            c.replica
                .get("sip:alice@example.com")
                .into_iter()
                .find_map(|b| b.flow.node_route)
        })
        .expect("alice's node route");
    let mut mallory = site.phone("bob", &n1).await;
    mallory
        .invite("alice", &format!("Route: {route}\r\n"))
        .await;
    assert_eq!(mallory.final_status(ANSWER).await, Some(403));
    assert!(alice.c.recv(Duration::from_millis(300)).await.is_none());

    // Node 1 gone. Every call for alice is answered, never silence: at first by node 3's
    // failed connection to node 1 (480 naming it unreachable), then, from the expiry of
    // node 1's liveness key that node 3 last read (no later than node_timeout after node 1
    // stopped, whatever the heartbeat), by the lookup itself (480, node down).
    n1.handle.shutdown();
    let stopped = Instant::now();
    let cluster3 = n3
        .handle
        .location()
        .and_then(|l| l.cluster.clone())
        .unwrap();
    let dead_at = cluster3
        .replica
        .dead_at("n1")
        .expect("node 1 was read alive");
    assert!(
        dead_at <= stopped + NODE_TIMEOUT,
        "node 1 counts as dead {:?} after it stopped, more than node_timeout",
        dead_at - stopped
    );
    let mut first = None;
    loop {
        assert!(
            stopped.elapsed() < 10 * NODE_TIMEOUT,
            "no 480 from the lookup for a dead node's phone"
        );
        bob.invite("alice", "").await;
        let m = bob
            .final_response(ANSWER)
            .await
            .expect("an answer, not silence, for a call to a dead node's phone");
        assert_eq!(m.status(), Some(480), "{m:?}");
        let reason = m.reason().unwrap_or_default().to_owned();
        first.get_or_insert((stopped.elapsed(), reason.clone()));
        if !reason.contains("unreachable") {
            break;
        }
        assert!(reason.contains("cluster node n1"), "{reason}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "after node 1 stopped: first 480 {:?} ({:?}); the lookup's 480 {:?}; node 1 dead \
         here {:?} after it stopped (node_timeout {NODE_TIMEOUT:?}, heartbeat {HEARTBEAT:?})",
        first.as_ref().map(|f| f.0),
        first.as_ref().map(|f| f.1.as_str()),
        stopped.elapsed(),
        dead_at - stopped,
    );

    // Alice registers through node 2: reachable again from node 3.
    let mut alice = site.phone("alice", &n2).await;
    assert_eq!(alice.register().await, 200);
    assert_eventually!(sees(&n3, "alice", "n2"), CONVERGE);
    // Drain the 480s of INVITEs still in flight.
    while bob.c.recv(Duration::from_millis(200)).await.is_some() {}
    call(&mut bob, &mut alice, true).await;

    (n2, n3, bob, alice)
}

/// Whether `node`'s replica holds a live binding of `user` owned by `owner`.
fn sees(node: &Node, user: &str, owner: &str) -> bool {
    let cs = node.handle.location().and_then(|l| l.cluster.clone());
    cs.is_some_and(|c| {
        c.replica
            .get(&format!("sip:{user}@example.com"))
            .iter()
            .any(|b| b.flow.node.as_deref() == Some(owner) && b.flow.node_route.is_some())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_phones_on_other_nodes_over_their_own_connections() {
    siprox_testkit::logs::install();
    let mut redis = RedisServer::start();
    let site = Site::new(vec![redis.url()]);
    let (n2, n3, mut bob, mut alice) = routing(&site).await;

    // Redis gone: node 3 cannot know where alice is now: 503 with Retry-After. Node 2,
    // where alice is, still connects a call to her.
    redis.stop();
    let mut got = None;
    let stopped = Instant::now();
    while got.as_ref().and_then(Message::status) != Some(503) {
        assert!(stopped.elapsed() < CONVERGE, "no 503 while Redis is down");
        bob.invite("alice", "").await;
        got = bob.final_response(Duration::from_millis(500)).await;
        if got.as_ref().and_then(Message::status) == Some(200) {
            // Still routed before the tail noticed: finish that call cleanly.
            let ok = got.clone().unwrap();
            bob.in_dialog("ACK", &ok, None).await;
            bob.in_dialog("BYE", &ok, None).await;
        }
        while let Ok(m) =
            tokio::time::timeout(Duration::from_millis(50), alice.c.recv(ANSWER)).await
        {
            // Alice answers whatever reached her before the outage was noticed.
            match m {
                Some(req) if matches!(req.method(), Some("INVITE" | "BYE")) => {
                    alice.answer(&req, 200).await;
                }
                _ => break,
            }
        }
    }
    let m = got.unwrap();
    assert!(
        m.header_values_by_name("Retry-After").next().is_some(),
        "503 without Retry-After: {m:?}"
    );
    let mut bob_local = site.phone("bob", &n2).await;
    while alice.c.recv(Duration::from_millis(200)).await.is_some() {}
    call(&mut bob_local, &mut alice, false).await;

    n2.handle.shutdown();
    n3.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_phones_on_other_nodes_with_a_redis_cluster() {
    siprox_testkit::logs::install();
    let rc = RedisCluster::start();
    let site = Site::new(rc.nodes.iter().map(RedisServer::url).collect());
    let (n2, n3, _bob, _alice) = routing(&site).await;
    n2.handle.shutdown();
    n3.handle.shutdown();
}

/// A node advertised by a host name (`sips:localhost:PORT`): the node a call enters resolves
/// it, connects with the cluster's certificates and verifies that the other node's
/// certificate names that host. A node whose certificate (from the cluster CA) does not
/// name it is refused: the call gets 480 naming it unreachable, nothing reaches its phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_advertised_by_host_name_is_reached_and_its_certificate_checked() {
    siprox_testkit::logs::install();
    let redis = RedisServer::start();
    let site = Site::new(vec![redis.url()]);
    let n1 = site.node_as("n1", Some(true));
    let n2 = site.node("n2");
    let n3 = site.node_as("n3", Some(false));
    let mut alice = site.phone("alice", &n1).await;
    assert_eq!(alice.register().await, 200);
    let mut carol = site.phone("carol", &n3).await;
    assert_eq!(carol.register().await, 200);
    assert_eventually!(
        sees(&n2, "alice", "n1") && sees(&n2, "carol", "n3"),
        CONVERGE
    );

    let mut bob = site.phone("bob", &n2).await;
    call(&mut bob, &mut alice, false).await;
    call(&mut bob, &mut alice, true).await;

    bob.invite("carol", "").await;
    let m = bob
        .final_response(ANSWER)
        .await
        .expect("an answer for a call to a node whose certificate does not name it");
    assert_eq!(m.status(), Some(480), "{m:?}");
    assert!(
        m.reason()
            .is_some_and(|r| r.contains("cluster node n3 unreachable")),
        "{m:?}"
    );
    assert!(carol.c.recv(Duration::from_millis(300)).await.is_none());
    n1.handle.shutdown();
    n2.handle.shutdown();
    n3.handle.shutdown();
}
