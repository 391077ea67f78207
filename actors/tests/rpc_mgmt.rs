//! The management RPC end to end: a siprox in-process with `[management]` enabled on
//! 127.0.0.1:0 and certificates generated here (a management CA, a server certificate,
//! client certificates on and off the allow-list), driven through the real `siproxctl`
//! binary, Python's `xmlrpc.client` and `curl`. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common as rc;
use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
use serde_json::Value;
use siprox::config::{ManagementConfig, Proto};
use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::{self_signed, Ca, Issued, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CTL: &str = env!("CARGO_BIN_EXE_siproxctl");

// ---------------------------------------------------------------------------------------
// Certificates

/// Paths of one identity.
#[derive(Clone)]
struct Ident {
    cert: PathBuf,
    key: PathBuf,
}

fn write_ident(dir: &Path, name: &str, i: &Issued) -> Ident {
    let id = i.write(dir, name);
    Ident {
        cert: id.cert_path,
        key: id.key_path,
    }
}

/// The management PKI of one test.
struct Pki {
    ca: PathBuf,
    server: Ident,
    /// On the allow-list by CN.
    admin: Ident,
    /// On the allow-list by one-line subject.
    ops: Ident,
    /// On the allow-list by SHA-256 fingerprint.
    byfp: Ident,
    fp: String,
    /// Signed by the management CA, but not on the list.
    eve: Ident,
    /// Not signed by the management CA at all.
    stranger: Ident,
}

fn pki(dir: &Path) -> Pki {
    let d = dir.join("mgmt");
    std::fs::create_dir_all(&d).expect("mkdir");
    let ca = Ca::new("siprox test management CA");
    let ca_path = d.join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).expect("write");
    let mk = |name: &str, spec: Spec| {
        let i = ca.issue(&spec);
        (write_ident(&d, name, &i), i.cert)
    };
    let server_spec = Spec::server("localhost").ip([127, 0, 0, 1].into());
    let (server, _) = mk("server", server_spec);
    let (admin, _) = mk("admin", Spec::client("admin"));
    let (ops, _) = mk("ops", Spec::client("ops").o("siprox-test"));
    let (byfp, c) = mk("robot", Spec::client("robot"));
    let fp = hex(&c.digest(MessageDigest::sha256()).expect("digest"));
    let (eve, _) = mk("eve", Spec::client("eve"));
    let stranger = write_ident(&d, "stranger", &self_signed(&Spec::client("admin")));
    Pki {
        ca: ca_path,
        server,
        admin,
        ops,
        byfp,
        fp,
        eve,
        stranger,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}:"))
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// siprox and siproxctl

struct Node {
    rt: Option<RuntimeHandle>,
    url: String,
    mgmt: SocketAddr,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        Node::start_with(|_| {})
    }

    /// [`Node::start`] with `tweak` applied to `[management]`.
    fn start_with(tweak: impl FnOnce(&mut ManagementConfig)) -> Node {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = pki(dir.path());
        let mut config = rc::config(&[Proto::Tls, Proto::Tcp]);
        config.management = ManagementConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().expect("addr"),
            certificate: pki.server.cert.clone(),
            private_key: pki.server.key.clone(),
            ca_file: pki.ca.clone(),
            allow: vec![
                "admin".to_owned(),
                "/O=siprox-test/CN=ops".to_owned(),
                format!("sha256:{}", pki.fp),
            ],
            request_timeout: siprox::config::ConfigDuration::millis(800),
            reload_min_interval: siprox::config::ConfigDuration::millis(500),
            ..ManagementConfig::default()
        };
        tweak(&mut config.management);
        let rt = rc::start(config, dir.path());
        let mgmt = rt.management_addr().expect("management listener");
        Node {
            rt: Some(rt),
            url: format!("https://{mgmt}"),
            mgmt,
            pki,
            dir,
        }
    }

    fn rt(&self) -> &RuntimeHandle {
        self.rt.as_ref().expect("running")
    }

    fn tls_addr(&self) -> SocketAddr {
        self.rt()
            .local_addr(siprox::proxy::Transport::Tls)
            .expect("tls listener")
    }

    /// Runs siproxctl as `who` with `args`.
    fn ctl(&self, who: Option<&Ident>, args: &[&str]) -> Output {
        let mut c = Command::new(CTL);
        c.env_clear()
            .env("HOME", self.dir.path())
            .arg("--url")
            .arg(&self.url)
            .arg("--ca")
            .arg(&self.pki.ca)
            .arg("--timeout")
            .arg("5");
        if let Some(w) = who {
            c.arg("--cert").arg(&w.cert).arg("--key").arg(&w.key);
        }
        c.args(args).output().expect("siproxctl runs")
    }

    /// siproxctl --json as admin; the parsed result, asserting success.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(Some(&self.pki.admin), &a);
        assert!(
            out.status.success(),
            "siproxctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A SIP TLS connection that has exchanged one OPTIONS/200.
async fn sip_tls_client(node: &Node) -> tokio_openssl::SslStream<tokio::net::TcpStream> {
    let addr = node.tls_addr();
    let mut s = rc::tls_connect(addr, &rc::ca_file(node.dir.path())).await;
    rc::send(&mut s, &rc::options_to(addr, "TLS", "mgmt-probe")).await;
    let mut buf = Vec::new();
    let r = rc::read_message(&mut s, &mut buf, Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(rc::status(&r), Some(200), "{r}");
    s
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_through_siproxctl() {
    let mut node = tokio::task::spawn_blocking(Node::start)
        .await
        .expect("start");

    let v = node.json(&["version"]);
    assert!(v.as_str().expect("str").starts_with("siprox "), "{v}");
    let v = node.json(&["uptime"]);
    assert!(v["uptime"].as_i64().expect("int") >= 0);
    let v = node.json(&["methods"]);
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in siprox::rpc::METHODS {
        assert!(
            names.contains(&m.name),
            "{} missing from listMethods",
            m.name
        );
    }
    let out = node.ctl(Some(&node.pki.admin), &["help", "tls.kill"]);
    assert!(
        out.status.success() && text(&out).contains("id: int"),
        "{}",
        text(&out)
    );
    let v = node.json(&["stats"]);
    assert!(v["messages_in"].is_u64(), "{v}");

    // A live SIP TLS connection shows up with its TLS facts.
    let sip = sip_tls_client(&node).await;
    let v = node.json(&["tls", "list"]);
    let list = v.as_array().expect("array");
    assert_eq!(list.len(), 1, "{v}");
    let c = &list[0];
    assert_eq!(c["transport"], "TLS", "{c}");
    assert_eq!(c["direction"], "in");
    assert!(
        c["tls_version"]
            .as_str()
            .is_some_and(|s| s.starts_with("TLS")),
        "{c}"
    );
    assert!(c["cipher"].is_string(), "{c}");
    let id = c["id"].as_u64().expect("id");
    let v = node.json(&["tcp", "list"]);
    assert_eq!(v.as_array().expect("array").len(), 1);
    let v = node.json(&["tls", "info"]);
    assert_eq!(v["tls_connections"], 1, "{v}");
    let v = node.json(&["tls", "domains"]);
    assert!(!v.as_array().expect("array").is_empty(), "{v}");
    assert!(v[0]["not_after"].is_string(), "{v}");
    let human = node.ctl(Some(&node.pki.admin), &["tls", "list"]);
    assert!(human.status.success());
    assert!(text(&human).starts_with("ID "), "{}", text(&human));
    let stats = node.json(&["stats.get"]);
    assert!(stats["messages_in"].as_u64().expect("n") >= 1);

    // tls.kill closes it; an unknown id is an error.
    assert_eq!(node.json(&["tls", "kill", &id.to_string()]), "closed");
    let mut sip = sip;
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), sip.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection not closed: {r:?}"
    );
    let out = node.ctl(Some(&node.pki.admin), &["tls", "kill", "999999"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no connection"), "{}", text(&out));

    // Reloads answer at once.
    let v = node.json(&["tls", "reload"]);
    assert!(v == "queued" || v == "coalesced", "{v}");
    let v = node.json(&["reload"]);
    assert!(v == "queued" || v == "coalesced", "{v}");
    // The location store: empty dump, nothing to show, nothing removed.
    let out = node.ctl(Some(&node.pki.admin), &["ul", "dump"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = node.ctl(Some(&node.pki.admin), &["ul", "show", "alice@example.com"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no bindings"), "{}", text(&out));
    let out = node.ctl(
        Some(&node.pki.admin),
        &["--json", "ul", "rm", "alice@example.com"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "0", "{}", text(&out));
    // Unknown method, bad params.
    let out = node.ctl(Some(&node.pki.admin), &["no.such"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("-32601"), "{}", text(&out));
    let out = node.ctl(Some(&node.pki.admin), &["tls.kill"]);
    assert!(text(&out).contains("-32602"), "{}", text(&out));
    // XML-RPC through siproxctl too.
    let out = node.ctl(Some(&node.pki.admin), &["--xml", "version"]);
    assert!(
        out.status.success() && text(&out).starts_with("siprox "),
        "{}",
        text(&out)
    );
    // The location store is empty here: ul.dump succeeds, ul.show finds nothing.
    let out = node.ctl(Some(&node.pki.admin), &["--xml", "ul.dump"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = node.ctl(Some(&node.pki.admin), &["ul.show", "alice@example.com"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // core.kill: answered, then a graceful exit.
    assert_eq!(node.json(&["kill"]), "shutting down");
    let rt = node.rt.take().expect("rt");
    let done = tokio::task::spawn_blocking(move || rt.wait());
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("siprox exits after core.kill")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_decide() {
    let node = tokio::task::spawn_blocking(Node::start)
        .await
        .expect("start");
    let p = &node.pki;
    // Allowed by CN, by one-line subject and by fingerprint.
    for who in [&p.admin, &p.ops, &p.byfp] {
        let out = node.ctl(Some(who), &["version"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // Verified but not on the list: forbidden, in both protocols.
    let out = node.ctl(Some(&p.eve), &["version"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("forbidden"), "{}", text(&out));
    let out = node.ctl(Some(&p.eve), &["--xml", "core.kill"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("403") && text(&out).contains("forbidden"),
        "{}",
        text(&out)
    );
    // No certificate, or one from another CA (even with CN=admin): TLS refuses.
    for who in [None, Some(&p.stranger)] {
        let out = node.ctl(who, &["version"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(!text(&out).contains("siprox 0"), "{}", text(&out));
    }
    // The server is still fine.
    assert!(node.ctl(Some(&p.admin), &["version"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_python_xmlrpc_and_curl() {
    let node = tokio::task::spawn_blocking(Node::start)
        .await
        .expect("start");
    let p = &node.pki;
    let py = |who: &Ident, code: &str| {
        let script = format!(
            "import ssl, xmlrpc.client, json\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             ctx.load_cert_chain({cert:?}, {key:?})\n\
             s = xmlrpc.client.ServerProxy({url:?}, context=ctx, allow_none=True)\n\
             {code}\n",
            ca = p.ca.display().to_string(),
            cert = who.cert.display().to_string(),
            key = who.key.display().to_string(),
            url = format!("{}/RPC2", node.url),
        );
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3 runs")
    };
    let out = py(
        &p.admin,
        "print(json.dumps([s.system.listMethods(), s.core.version(), s.tls.info(), \
         s.system.methodHelp('ul.show')]))",
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v[0]
        .as_array()
        .expect("methods")
        .iter()
        .any(|m| m == "core.kill"));
    assert!(v[1].as_str().expect("version").starts_with("siprox "));
    assert!(v[2]["connections"].is_u64(), "{v}");
    assert!(v[3].as_str().expect("help").contains("aor"), "{v}");
    // A fault carries SER's code.
    let out = py(
        &p.admin,
        "try:\n    s.ul.show('alice@example.com')\nexcept xmlrpc.client.Fault as f:\n    \
         print(f.faultCode, f.faultString)",
    );
    assert!(text(&out).starts_with("404 "), "{}", text(&out));
    // Not on the allow-list: HTTP 403.
    let out = py(
        &p.eve,
        "try:\n    s.core.version()\nexcept xmlrpc.client.ProtocolError as e:\n    print(e.errcode)",
    );
    assert_eq!(text(&out).trim(), "403", "{}", text(&out));

    // curl: JSON-RPC single, batch with a notification, and /metrics.
    let curl = |who: &Ident, extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&p.ca)
            .arg("--cert")
            .arg(&who.cert)
            .arg("--key")
            .arg(&who.key)
            .args(extra)
            .output()
            .expect("curl runs")
    };
    let url = format!("{}/", node.url);
    let out = curl(
        &p.admin,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"jsonrpc":"2.0","id":"a","method":"core.uptime"}"#,
            &url,
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["id"], "a");
    assert!(v["result"]["uptime"].is_i64(), "{v}");
    let out = curl(
        &p.admin,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"[{"jsonrpc":"2.0","id":1,"method":"core.version"},
                {"jsonrpc":"2.0","method":"stats.get"},
                {"jsonrpc":"2.0","id":2,"method":"nope"}]"#,
            &url,
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    let a = v.as_array().expect("batch answer");
    assert_eq!(a.len(), 2, "{v}");
    assert_eq!(a[1]["error"]["code"], -32601);
    let out = curl(
        &p.admin,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            "{not json",
            &url,
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["error"]["code"], -32700);
    let out = curl(&p.admin, &[&format!("{}/metrics", node.url)]);
    let m = text(&out);
    for name in [
        "siprox_messages_received_total",
        "siprox_connections_open",
        "siprox_tls_handshake_failures_total",
        "siprox_tls_certificate_not_after_seconds",
        "siprox_write_queue_closes_total",
        "siprox_reloads_total",
        "siprox_script_errors_total",
        "siprox_registrations",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    let out = curl(
        &p.eve,
        &[
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &format!("{}/metrics", node.url),
        ],
    );
    assert_eq!(text(&out).trim(), "403");
}

/// Raw HTTPS exchanges on one connection (keep-alive, errors, timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_answers_never_hangs() {
    let node = tokio::task::spawn_blocking(Node::start)
        .await
        .expect("start");
    let connect = || async {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("b");
        b.set_ca_file(&node.pki.ca).expect("ca");
        b.set_certificate_chain_file(&node.pki.admin.cert)
            .expect("cert");
        b.set_private_key_file(&node.pki.admin.key, SslFiletype::PEM)
            .expect("key");
        let ssl = b
            .build()
            .configure()
            .expect("c")
            .into_ssl("127.0.0.1")
            .expect("ssl");
        let tcp = tokio::net::TcpStream::connect(node.mgmt)
            .await
            .expect("tcp");
        let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("s");
        std::pin::Pin::new(&mut s)
            .connect()
            .await
            .expect("handshake");
        s
    };
    async fn read_all(s: &mut tokio_openssl::SslStream<tokio::net::TcpStream>) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
    // Keep-alive: two calls, one connection.
    let mut s = connect().await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"core.version"}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..2 {
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        let r = String::from_utf8_lossy(&buf[..n]);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("siprox "), "{r}");
    }
    for (raw, status) in [
        (&b"GARBAGE\r\n\r\n"[..], "400"),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", "413"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "501"),
        (b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx", "415"),
        // Half a request, then silence: 408 after request_timeout.
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", "408"),
    ] {
        let mut s = connect().await;
        s.write_all(raw).await.expect("write");
        let r = read_all(&mut s).await;
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status}")),
            "{} -> {r}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_during_tls_traffic_fails_nothing() {
    let node = Arc::new(
        tokio::task::spawn_blocking(Node::start)
            .await
            .expect("start"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (node, stop, ok) = (node.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let addr = node.tls_addr();
            let mut s = rc::tls_connect(addr, &rc::ca_file(node.dir.path())).await;
            let mut buf = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("storm-{c}-{n}");
                rc::send(&mut s, &rc::options_to(addr, "TLS", &id)).await;
                let r = rc::read_message(&mut s, &mut buf, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("transaction {id} failed: {e}"));
                assert_eq!(rc::status(&r), Some(200), "{r}");
                assert_eq!(rc::header(&r, "Call-ID"), Some(id.as_str()));
                ok.fetch_add(1, Ordering::Relaxed);
            }
            // New handshakes after the storm still work.
            let mut s2 = rc::tls_connect(addr, &rc::ca_file(node.dir.path())).await;
            rc::send(&mut s2, &rc::options_to(addr, "TLS", "after")).await;
            let r = rc::read_message(&mut s2, &mut Vec::new(), Duration::from_secs(5))
                .await
                .expect("after the storm");
            assert_eq!(rc::status(&r), Some(200));
        }));
    }
    let n2 = node.clone();
    let answers = tokio::task::spawn_blocking(move || {
        (0..100)
            .map(|_| {
                let out = n2.ctl(Some(&n2.pki.admin), &["--json", "tls", "reload"]);
                assert!(out.status.success(), "{}", text(&out));
                serde_json::from_slice::<Value>(&out.stdout).expect("json")
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("storm");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("no failed transaction");
    }
    let queued = answers.iter().filter(|a| *a == "queued").count();
    let coalesced = answers.iter().filter(|a| *a == "coalesced").count();
    assert_eq!(queued + coalesced, 100, "{answers:?}");
    assert!(
        coalesced > 0,
        "100 calls in a loop must coalesce: {answers:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    let stats = node.rt().stats();
    assert_eq!(stats.handshake_failures, 0, "{stats:?}");
    assert_eq!(stats.framing_errors, 0, "{stats:?}");
    // The traffic shows in /metrics: requests by method, replies by code.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&node.pki.ca)
        .arg("--cert")
        .arg(&node.pki.admin.cert)
        .arg("--key")
        .arg(&node.pki.admin.key)
        .arg(format!("{}/metrics", node.url))
        .output()
        .expect("curl runs");
    let m = text(&out);
    let value = |prefix: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        value("siprox_messages_total{method=\"OPTIONS\"}") >= ok.load(Ordering::Relaxed) as u64,
        "{m}"
    );
    assert!(value("siprox_replies_total{code=\"200\"}") > 0, "{m}");
    assert!(value("siprox_tls_handshakes_total") >= 4, "{m}");
}

/// 200 idle TCP connections (more than `max_connections`, each holding a slot until its
/// handshake times out) do not lock the operator out: siproxctl still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_operators_out() {
    let node = tokio::task::spawn_blocking(|| {
        Node::start_with(|m| {
            m.request_timeout = siprox::config::ConfigDuration::secs(30);
            m.handshake_timeout = siprox::config::ConfigDuration::secs(30);
        })
    })
    .await
    .expect("start");
    let mut idle = Vec::new();
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(node.mgmt).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let node = Arc::new(node);
    for _ in 0..3 {
        let n = node.clone();
        let out = tokio::task::spawn_blocking(move || n.ctl(Some(&n.pki.admin), &["version"]))
            .await
            .expect("siproxctl");
        assert!(out.status.success(), "locked out: {}", text(&out));
    }
    drop(idle);
}
