//! Operating a cluster, end to end with the real binaries: `deploy/cluster.sh` starts a
//! real Redis and 3 siprox processes; the real `siproxctl` and `curl` then check
//! `siproxctl cluster` (3 nodes alive, this node marked, fits 100 columns), the bindings a
//! node publishes with its heartbeat, `ul.dump` / `ul.rm` through the registrar store
//! (another node's binding is named, not removed; the owner's removal reaches Redis and the
//! other replicas), the cluster's families on `/metrics`, `reload --cluster` (every node
//! ok; a node with a broken conf.d refused with its error; a live node that never answers
//! reported as such within the wait; a stopped node no longer asked), and SIGTERM to the
//! script stopping every process. The same script on a 3-master Redis Cluster: the nodes,
//! a binding and a cluster-wide reload. Real sockets on 127.0.0.1 only.

use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use siprox_testkit::assert_eventually;
use siprox_testkit::redis::RedisCluster;

/// Node startup in a debug build includes generating its development certificates.
const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A base port whose node ports (base + 10..base + 33) and Redis port (base + 40) are free
/// on TCP and UDP now and claimed for this test process ([`siprox_testkit::ports`]).
fn free_base() -> u16 {
    siprox_testkit::ports::free_run(std::net::Ipv4Addr::LOCALHOST.into(), 41)
}

/// The running script; stopped with SIGTERM on drop (killed if it does not stop).
struct Deploy {
    child: Option<Child>,
    dir: tempfile::TempDir,
    base: u16,
    redis: u16,
}

impl Deploy {
    /// The script with its own Redis, or with `redis` (a TOML value: a Redis Cluster's
    /// seeds) given.
    fn start(redis_value: Option<String>) -> Deploy {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base();
        let redis = base + 40;
        let log = std::fs::File::create(dir.path().join("script.log")).expect("log");
        let mut cmd = Command::new(repo().join("deploy/cluster.sh"));
        if let Some(r) = redis_value {
            cmd.env("REDIS", r);
        }
        let child = cmd
            .arg(dir.path().join("c"))
            .env("SIPROX", env!("CARGO_BIN_EXE_siprox"))
            .env("SIPROXCTL", env!("CARGO_BIN_EXE_siproxctl"))
            .env("BASE_PORT", base.to_string())
            .env("REDIS_PORT", redis.to_string())
            // Short heartbeats so that the test sees liveness change within seconds.
            .env("SIPROX_CLUSTER__HEARTBEAT", "250ms")
            .env("SIPROX_CLUSTER__NODE_TIMEOUT", "1s")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("deploy/cluster.sh");
        Deploy {
            child: Some(child),
            dir,
            base,
            redis,
        }
    }

    fn conf(&self, n: u16) -> PathBuf {
        self.dir.path().join(format!("c/node{n}/conf.d"))
    }

    fn mgmt(&self, n: u16) -> u16 {
        self.base + 10 * n + 2
    }

    fn sip(&self, n: u16) -> u16 {
        self.base + 10 * n
    }

    /// siproxctl against node `n`.
    fn ctl(&self, n: u16, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_siproxctl"))
            .arg("--url")
            .arg(format!("https://127.0.0.1:{}", self.mgmt(n)))
            .arg("--conf-dir")
            .arg(self.conf(n))
            .arg("--timeout")
            .arg("5")
            .args(args)
            .env("COLUMNS", "100")
            .output()
            .expect("siproxctl")
    }

    /// `siproxctl --json ARGS` on node `n`: the result, or `Null` when the call failed.
    fn json(&self, n: u16, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(n, &a);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn member(&self, n: u16, node: &str) -> Value {
        self.json(n, &["cluster"])
            .as_array()
            .and_then(|a| a.iter().find(|m| m["node"] == node).cloned())
            .unwrap_or(Value::Null)
    }

    fn alive(&self, n: u16) -> Vec<String> {
        self.json(n, &["cluster"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["alive"] == true)
                    .filter_map(|m| m["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn metrics(&self, n: u16) -> String {
        let certs = self.conf(n).parent().expect("node dir").join("certs");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("admin.pem"))
            .arg("--key")
            .arg(certs.join("admin.key"))
            .arg(format!("https://127.0.0.1:{}/metrics", self.mgmt(n)))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A JSON-RPC call to node `n` as a user makes it: curl over TLS with the admin's
    /// client certificate. The whole response object.
    fn rpc(&self, n: u16, method: &str, params: Value) -> Value {
        let certs = self.conf(n).parent().expect("node dir").join("certs");
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "15", "--cacert"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("admin.pem"))
            .arg("--key")
            .arg(certs.join("admin.key"))
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(body.to_string())
            .arg(format!("https://127.0.0.1:{}/", self.mgmt(n)))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.redis.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("script.log")).unwrap_or_default()
    }

    /// SIGTERM to the script; true when it exited within `within`.
    fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(15));
    }
}

/// A metric's value in an exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn hex_sha256(s: &str) -> String {
    openssl::hash::hash(openssl::hash::MessageDigest::sha256(), s.as_bytes())
        .expect("sha256")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// REGISTER `user` (password `pass`) on the UDP port `port` with SHA-256 digest: 401, then
/// 200. Returns the final status.
fn register(port: u16, user: &str, pass: &str) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = s.local_addr().expect("addr");
    let ruri = "sip:127.0.0.1";
    let msg = |cseq: u32, auth: &str| {
        format!(
            "REGISTER {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-ops-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@127.0.0.1>;tag=ops\r\n\
             To: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: ops-{user}@test\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Expires: 300\r\n{auth}\
             Content-Length: 0\r\n\r\n"
        )
    };
    let ask = |m: String| -> String {
        s.send_to(m.as_bytes(), ("127.0.0.1", port)).expect("send");
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let challenge = ask(msg(1, ""));
    let line = challenge
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate") && l.contains("SHA-256"))
        .unwrap_or_else(|| panic!("no SHA-256 challenge: {challenge}"));
    let param = |name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    let (realm, nonce) = (param("realm"), param("nonce"));
    let ha1 = hex_sha256(&format!("{user}:{realm}:{pass}"));
    let ha2 = hex_sha256(&format!("REGISTER:{ruri}"));
    let response = hex_sha256(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{ruri}\", response=\"{response}\", algorithm=SHA-256, qop=auth, \
         nc=00000001, cnonce=\"c0ffee\"\r\n"
    );
    let ok = ask(msg(2, &auth));
    ok.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_cluster_nodes_ul_metrics_and_cluster_reload() {
    let mut d = tokio::task::spawn_blocking(|| Deploy::start(None))
        .await
        .expect("start");
    let three = ["node1", "node2", "node3"];
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.alive(1) == three
        },
        START,
        "3 nodes alive as node1 sees them; script log:\n{}",
        d.log()
    );
    let out = d.ctl(1, &["cluster"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.lines().all(|l| l.chars().count() <= 100), "{shown}");
    assert!(shown.contains("node1*"), "this node is marked: {shown}");
    assert_eq!(shown.matches("alive").count(), 3, "{shown}");

    // A binding on node 2: published with its heartbeat, in node 1's replica and dump.
    assert_eq!(register(d.sip(2), "alice", "alice-dev-password"), 200);
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.member(1, "node2")["bindings"] == 1
        },
        CONVERGE,
        "node2's bindings as node1 sees them: {}",
        d.member(1, "node2")
    );
    let aor = "sip:alice@127.0.0.1";
    let dumped = |n: u16| -> Vec<String> {
        d.json(n, &["ul", "dump"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["aor"] == aor)
            .flat_map(|a| a["bindings"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b["node"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            dumped(1) == ["node2"]
        },
        CONVERGE
    );
    assert_eq!(dumped(2), ["node2"], "the owner names itself");
    let m = d.metrics(1);
    assert_eq!(
        metric(&m, "siprox_cluster_replica_bindings"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "siprox_cluster_nodes_alive"), Some(3.0), "{m}");
    assert_eq!(
        metric(&m, "siprox_cluster_replica_current"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "siprox_cluster_queue_dropped_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "siprox_cluster_replay_dropped_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "siprox_registrations"), Some(0.0), "{m}");
    assert_eq!(metric(&d.metrics(2), "siprox_registrations"), Some(1.0));

    // ul.rm on a node that does not own it (JSON-RPC over TLS, as a user calls it): none
    // here, forwarded to the owner, which removes its binding and answers how many.
    let r = d.rpc(1, "ul.rm", serde_json::json!(["alice@127.0.0.1"]));
    let v = &r["result"];
    assert_eq!(v["removed"], 0, "{r}");
    assert_eq!(v["elsewhere"][0]["node"], "node2", "{r}");
    assert_eq!(v["elsewhere"][0]["result"], "ok", "{r}");
    assert_eq!(v["elsewhere"][0]["removed"], 1, "{r}");
    assert_eq!(metric(&d.metrics(2), "siprox_registrations"), Some(0.0));
    // Removed from Redis and from the other replicas.
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            dumped(1).is_empty() && dumped(3).is_empty()
        },
        CONVERGE
    );
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.redis_cli(&["--scan", "--pattern", "siprox:loc:*"])
                .is_empty()
        },
        CONVERGE
    );

    // On the owner itself: removed there, nothing elsewhere.
    assert_eq!(register(d.sip(2), "alice", "alice-dev-password"), 200);
    let v = d.json(2, &["ul", "rm", "alice@127.0.0.1"]);
    assert_eq!(v["removed"], 1, "{v}");
    assert_eq!(v["elsewhere"], serde_json::json!([]), "{v}");

    // A cluster-wide dry run: every node reads and builds its conf.d, publishes nothing.
    let r = d.rpc(1, "cfg.reload", serde_json::json!(["cluster", "dry_run"]));
    let nodes = r["result"]["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{r}");
    assert!(
        nodes
            .iter()
            .all(|n| n["result"] == "ok" && n["outcome"] == "dry_run"),
        "{r}"
    );
    // reload --cluster: every node reloads its own conf.d.
    let out = d.ctl(1, &["reload", "--cluster"]);
    assert!(out.status.success(), "{}", text(&out));
    let v = d.json(1, &["reload", "--cluster"]);
    let results: Vec<(String, String)> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["node"].to_string(), n["result"].to_string()))
        .collect();
    assert_eq!(results.len(), 3, "{v}");
    assert!(results.iter().all(|(_, r)| r == "\"ok\""), "{v}");
    // A broken conf.d on node 2: refused there with the error, the others ok, exit 1.
    let extra = d.conf(2).join("60-broken.toml");
    std::fs::write(&extra, "bogus = \n").expect("write");
    let out = d.ctl(1, &["reload", "--cluster"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let line = shown
        .lines()
        .find(|l| l.starts_with("node2"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.contains("refused") && line.contains("60-broken.toml"),
        "{shown}"
    );
    assert!(
        shown.lines().filter(|l| l.contains(" ok ")).count() == 2,
        "{shown}"
    );
    // The same broken conf.d in a dry run: node 2 would refuse it, with the error; its
    // running configuration is untouched either way.
    let out = d.ctl(1, &["--json", "reload", "--cluster", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let node2 = v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == "node2").cloned())
        .expect("node2 answered");
    assert_eq!(node2["result"], "refused", "{v}");
    assert_eq!(node2["outcome"], "dry_run", "{v}");
    assert!(
        node2["errors"].to_string().contains("60-broken.toml"),
        "{v}"
    );
    std::fs::remove_file(&extra).expect("rm");

    // A member that is alive in Redis but never answers: reported within the wait.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();
    d.redis_cli(&[
        "HSET",
        "siprox:members",
        "ghost",
        &format!(
            r#"{{"advertise":"sip:192.0.2.1","at_ms":{now_ms},"bindings":0,"connections":0}}"#
        ),
    ]);
    d.redis_cli(&["SET", "siprox:node:ghost", "sip:192.0.2.1", "PX", "60000"]);
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.alive(1).contains(&"ghost".to_owned())
        },
        CONVERGE
    );
    let asked = Instant::now();
    let out = d.ctl(1, &["--json", "reload", "--cluster", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the wait bounds the answer"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ghost = v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == "ghost").cloned())
        .expect("ghost reported");
    assert_eq!(ghost["result"], "no answer", "{v}");
    d.redis_cli(&["DEL", "siprox:node:ghost"]);

    // A stopped node is marked dead and no longer asked.
    let out = d.ctl(3, &["kill"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.alive(1) == ["node1", "node2"]
        },
        CONVERGE,
        "{}",
        d.json(1, &["cluster"])
    );
    assert_eq!(d.member(1, "node3")["alive"], false);
    let v = d.json(1, &["reload", "--cluster"]);
    let asked: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(asked, ["node1", "node2"], "{v}");
    assert_eq!(
        metric(&d.metrics(1), "siprox_cluster_nodes_alive"),
        Some(2.0)
    );

    // SIGTERM to the script stops every process it started.
    let ports = [d.mgmt(1), d.mgmt(2), d.redis];
    assert!(d.terminate(Duration::from_secs(20)), "the script stops");
    for p in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still open after the script stopped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_on_a_redis_cluster() {
    let rc = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("redis cluster");
    let seeds = format!(
        "[{}]",
        rc.urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let d = tokio::task::spawn_blocking(move || Deploy::start(Some(seeds)))
        .await
        .expect("start");
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.alive(3) == ["node1", "node2", "node3"]
        },
        START,
        "3 nodes alive as node3 sees them; script log:\n{}",
        d.log()
    );
    assert_eq!(register(d.sip(1), "bob", "bob-dev-password"), 200);
    assert_eventually!(
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.member(3, "node1")["bindings"] == 1
                && d.json(3, &["ul", "show", "bob@127.0.0.1"])[0]["bindings"][0]["node"] == "node1"
        },
        CONVERGE
    );
    let out = d.ctl(2, &["--json", "reload", "--cluster"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ok: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["result"] == "ok")
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(ok, ["node1", "node2", "node3"], "{v}");
}
