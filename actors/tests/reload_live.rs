//! A reload applies what it can and says what it cannot, tenant by tenant: live keys
//! (`[log]`, `[auth]`, `[management] allow`, `[connections]`) observed taking effect,
//! restart-only keys warned once (log and `cfg.reload` answer, and a dry run that applies
//! nothing), one broken tenant isolated from the others at reload and at start, and route
//! script errors kept per file until fixed. Real siprox (in process, and the daemon for
//! logging), real TLS with certificates made here, the real `siproxctl`; bounded waits.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tree::Tree;
use common::{read_message, request, send, status};
use serde_json::Value;
use siprox::proxy::Transport;
use siprox_actors::state::messages::ReloadOutcome;
use siprox_actors::RuntimeHandle;
use siprox_testkit::assert_eventually;
use siprox_testkit::logs;
use siprox_testkit::pki::Spec;
use siprox_testkit::tls::{peer_cn, Client};
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;

const CTL: &str = env!("CARGO_BIN_EXE_siproxctl");
const T: Duration = Duration::from_secs(5);

/// A conf.d tree with TLS and TCP listeners, the management listener (the admin's client
/// certificate on its allow-list) and reloads only on request.
struct Site {
    t: Tree,
}

impl Site {
    fn new() -> Site {
        let t = Tree::new("");
        let server =
            t.ca.issue(&Spec::server("localhost").ip([127, 0, 0, 1].into()));
        server.write(&t.path("certs"), "mgmt-server");
        t.ca.issue(&Spec::client("admin"))
            .write(&t.path("certs"), "admin");
        let s = Site { t };
        s.core(2, "[\"admin\"]", "");
        s
    }

    /// Rewrites conf.d/00-core.toml: `workers`, `[management] allow`, and `extra` sections.
    fn core(&self, workers: usize, allow: &str, extra: &str) {
        self.t.write(
            "conf.d/00-core.toml",
            format!(
                "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
                 [[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
                 [runtime]\nworkers = {workers}\n\
                 [tls]\ngenerate_dev_certs = true\nwatch = false\nreload_check_interval = \"0s\"\n\
                 [management]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
                 certificate = \"certs/mgmt-server.pem\"\nprivate_key = \"certs/mgmt-server.key\"\n\
                 ca_file = \"certs/test-ca.pem\"\nallow = {allow}\n\
                 reload_min_interval = \"10ms\"\n{extra}\n"
            )
            .as_bytes(),
        );
    }

    /// A tenant `name` serving a certificate for `cn`.
    fn tenant(&self, name: &str, cn: &str) {
        self.t.leaf(name, cn);
        self.t.domain(
            name,
            &format!(
                "[domains.{name}]\nnames = [\"{name}.example\"]\n[domains.{name}.server]\n\
                 certificate = \"certs/{name}.pem\"\nprivate_key = \"certs/{name}.key\"\n"
            ),
        );
    }

    /// siproxctl as the admin against `rt`'s management listener.
    fn ctl(&self, rt: &RuntimeHandle, args: &[&str]) -> Output {
        let url = format!("https://{}", rt.management_addr().expect("management"));
        Command::new(CTL)
            .env_clear()
            .env("HOME", self.t.dir.path())
            .args(["--url", &url, "--timeout", "10", "--ca"])
            .arg(self.t.path("certs/test-ca.pem"))
            .arg("--cert")
            .arg(self.t.path("certs/admin.pem"))
            .arg("--key")
            .arg(self.t.path("certs/admin.key"))
            .args(args)
            .output()
            .expect("siproxctl runs")
    }

    /// `siproxctl --json ARGS`, asserting success.
    fn json(&self, rt: &RuntimeHandle, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(rt, &a);
        assert!(out.status.success(), "siproxctl {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    }

    /// `GET /metrics` through curl with the admin's certificate.
    fn metrics(&self, rt: &RuntimeHandle) -> String {
        let url = format!("https://{}/metrics", rt.management_addr().expect("mgmt"));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.t.path("certs/test-ca.pem"))
            .arg("--cert")
            .arg(self.t.path("certs/admin.pem"))
            .arg("--key")
            .arg(self.t.path("certs/admin.key"))
            .arg(url)
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn cn_of(addr: SocketAddr, sni: &str) -> String {
    match Client::sni(sni).connect(addr).await {
        Ok(s) => peer_cn(&s),
        Err(e) => format!("handshake failed: {e}"),
    }
}

/// Captured events at `level` or more severe whose text has every one of `parts`.
fn logged(level: Level, parts: &[&str]) -> Vec<String> {
    logs::at_least(level)
        .into_iter()
        .filter(|e| e.level == level && parts.iter().all(|p| e.text.contains(p)))
        .map(|e| e.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_keys_are_warned_once_and_live_keys_apply() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    let rt = s.t.start();
    assert_eq!(rt.snapshot().config.runtime.workers, 2);

    // workers (restart-only), idle_timeout and allow (live): a dry run says so, applies
    // nothing and warns nothing.
    s.core(
        3,
        "[\"admin\", \"ops\"]",
        "[connections]\nidle_timeout = \"42s\"\n",
    );
    let dry = s.json(&rt, &["cfg.reload", "dry_run"]);
    assert_eq!(dry["result"], "dry_run", "{dry}");
    assert_eq!(dry["would"], "publish", "{dry}");
    let has = |list: &Value, key: &str| {
        list.as_array()
            .is_some_and(|a| a.iter().any(|c| c["key"] == key))
    };
    assert!(has(&dry["restart_only"], "runtime.workers"), "{dry}");
    assert!(has(&dry["live"], "connections.idle_timeout"), "{dry}");
    assert!(has(&dry["live"], "management.allow"), "{dry}");
    let w = dry["restart_only"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["key"] == "runtime.workers"))
        .expect("workers");
    assert_eq!(
        (&w["configured"], &w["in_force"]),
        (&"3".into(), &"2".into())
    );
    let snap = rt.snapshot();
    assert_eq!(snap.config.connections.idle_timeout.get().as_secs(), 600);
    assert_eq!(snap.config.management.allow, vec!["admin".to_owned()]);
    assert!(logged(Level::WARN, &["runtime.workers"]).is_empty());

    // The reload itself: live keys applied, the restart-only one kept as it runs and named
    // (with the value in force) in the answer and in ONE warning.
    let done = s.json(&rt, &["cfg.reload", "wait"]);
    assert_eq!(done["result"], "published", "{done}");
    assert!(has(&done["restart_only"], "runtime.workers"), "{done}");
    let snap = rt.snapshot();
    assert_eq!(snap.config.connections.idle_timeout.get().as_secs(), 42);
    assert_eq!(snap.conn.idle_timeout.as_secs(), 42);
    assert_eq!(snap.config.runtime.workers, 2, "still what runs");
    assert_eq!(snap.config.management.allow, vec!["admin", "ops"]);
    // The applied settings are named too (a reload used to say only `changed=[]`).
    assert_eq!(
        logged(
            Level::INFO,
            &[
                "configuration reloaded",
                "connections.idle_timeout",
                "management.allow"
            ]
        )
        .len(),
        1
    );
    let warned = logged(Level::WARN, &["runtime.workers = 3 (in force: 2)"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(rt.reload().await, ReloadOutcome::Unchanged);
    assert_eq!(
        logged(Level::WARN, &["runtime.workers"]).len(),
        1,
        "warned once, not at every check"
    );

    // Access is revoked by a reload, on the management listener's next request.
    s.core(3, "[\"ops\"]", "");
    assert!(matches!(rt.reload().await, ReloadOutcome::Published { .. }));
    let out = s.ctl(&rt, &["core.version"]);
    assert!(!out.status.success(), "admin still allowed: {}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("forbidden"),
        "{}",
        text(&out)
    );
    rt.shutdown();
}

const DIGEST_SCRIPT: &str = r#"
route {
    if (is_method("REGISTER")) {
        if (!www_authorize("example.com", "subscriber")) {
            www_challenge("example.com", "0");
            exit;
        }
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("404", "Not Here");
}
"#;

/// The algorithms of the challenge a REGISTER without credentials gets.
async fn challenge_algorithms(addr: SocketAddr, call_id: &str) -> Vec<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let local = s.local_addr().expect("local");
    let m = request(
        "REGISTER",
        "sip:example.com",
        &format!("TCP {local}"),
        call_id,
        &format!("Contact: <sip:alice@{local};transport=tcp>\r\nExpires: 300\r\n"),
        "",
    );
    send(&mut s, &m).await;
    let r = read_message(&mut s, &mut Vec::new(), T)
        .await
        .expect("an answer");
    assert_eq!(status(&r), Some(401), "{r}");
    r.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .filter_map(|l| {
            let a = l.split("algorithm=").nth(1)?;
            Some(a.split(',').next()?.trim().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_algorithms_apply_to_the_next_challenge() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    s.t.write("route.cfg", DIGEST_SCRIPT.as_bytes());
    let auth = |algs: &str| {
        format!(
            "[script]\nfile = \"route.cfg\"\n[auth]\nalgorithms = {algs}\nnonce_ttl = \"60s\"\n"
        )
    };
    s.core(2, "[\"admin\"]", &auth("[\"SHA-256\", \"MD5\"]"));
    let rt = s.t.start();
    let tcp = rt.local_addr(Transport::Tcp).expect("tcp");
    assert_eq!(
        challenge_algorithms(tcp, "alg-1").await,
        vec!["SHA-256", "MD5"]
    );

    s.core(2, "[\"admin\"]", &auth("[\"MD5\"]"));
    let done = s.json(&rt, &["cfg.reload", "wait"]);
    assert_eq!(done["result"], "published", "{done}");
    assert_eq!(done["restart_only"], Value::Array(vec![]), "{done}");
    assert_eq!(challenge_algorithms(tcp, "alg-2").await, vec!["MD5"]);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_keeps_its_last_good_certificate_while_the_others_change() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    s.tenant("iso-a", "iso-a-0.example");
    s.tenant("iso-b", "iso-b-0.example");
    let rt = s.t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    assert_eq!(cn_of(addr, "iso-a.example").await, "iso-a-0.example");
    assert_eq!(cn_of(addr, "iso-b.example").await, "iso-b-0.example");

    // A's upload is garbage; meanwhile B rotates and C arrives.
    s.t.write("certs/iso-a.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n");
    s.t.leaf("iso-b", "iso-b-1.example");
    s.tenant("iso-c", "iso-c-0.example");
    match rt.reload().await {
        ReloadOutcome::Published { changed, refused } => {
            assert!(changed.contains(&"iso-b".to_owned()), "{changed:?}");
            assert!(changed.contains(&"iso-c".to_owned()), "{changed:?}");
            assert!(
                refused
                    .iter()
                    .any(|e| e.contains("`iso-a`") && e.contains("iso-a.pem")),
                "{refused:?}"
            );
        }
        other => panic!("B and C must apply: {other:?}"),
    }
    assert_eq!(cn_of(addr, "iso-b.example").await, "iso-b-1.example");
    assert_eq!(cn_of(addr, "iso-c.example").await, "iso-c-0.example");
    assert_eq!(cn_of(addr, "iso-a.example").await, "iso-a-0.example");

    // A's error, per domain: log, tls.domains (with its last good load), metric.
    assert_eq!(
        logged(Level::ERROR, &["TLS domain not reloaded", "iso-a.pem"]).len(),
        1
    );
    let domains = s.json(&rt, &["tls.domains"]);
    let entry = |name: &str| {
        domains
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {domains}"))
    };
    let a = entry("iso-a");
    assert!(
        a["last_error"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("iso-a.pem")),
        "{a}"
    );
    assert!(a["last_good_load"].as_i64().is_some_and(|t| t > 0), "{a}");
    assert!(entry("iso-b")["last_error"].is_null(), "{domains}");
    assert!(entry("iso-c")["last_error"].is_null(), "{domains}");
    let m = s.metrics(&rt);
    assert!(
        m.contains("siprox_domain_reload_failures_total{domain=\"iso-a\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("domain_reload_failures_total{domain=\"iso-b\"}"),
        "{m}"
    );

    // B's certificate file goes missing (an operator's mv): B keeps serving its last good
    // one, and the error names the conf file and key that point to the file, as `siprox
    // check` does, though conf.d itself did not change.
    std::fs::remove_file(s.t.path("certs/iso-b.pem")).unwrap();
    match rt.reload().await {
        ReloadOutcome::Failed { errors } => {
            let want = "domains/iso-b.toml at key \"domains.iso-b.server.certificate\"";
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("iso-b.pem") && e.contains(want)),
                "{errors:?}"
            );
        }
        other => panic!("nothing to apply but an error: {other:?}"),
    }
    assert_eq!(cn_of(addr, "iso-b.example").await, "iso-b-1.example");
    s.t.leaf("iso-b", "iso-b-1.example");

    // Fixed (and B's file back, freshly issued): served, the error cleared, and a
    // recovery line.
    s.t.leaf("iso-a", "iso-a-1.example");
    match rt.reload().await {
        ReloadOutcome::Published { changed, refused } => {
            assert_eq!(changed, vec!["iso-a".to_owned(), "iso-b".to_owned()]);
            assert!(refused.is_empty(), "{refused:?}");
        }
        other => panic!("the fix must apply: {other:?}"),
    }
    assert_eq!(cn_of(addr, "iso-a.example").await, "iso-a-1.example");
    let st = rt.tls_status();
    let a = st.domains.iter().find(|d| d.name == "iso-a").expect("a");
    assert_eq!(a.last_error, None, "{a:?}");
    assert_eq!(
        logged(Level::INFO, &["recovered", "iso-a"]).len(),
        1,
        "{:?}",
        logged(Level::INFO, &["recovered"])
    );
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_is_left_out_at_start_unless_the_start_is_strict() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    s.tenant("start-a", "start-a-0.example");
    s.tenant("start-b", "start-b-0.example");
    let (c, _) = s.t.ca.leaf("start-a.example");
    let key = siprox_testkit::pki::key()
        .private_key_to_pem_pkcs8()
        .expect("pem");
    // A certificate with somebody else's key.
    s.t.write("certs/start-a.pem", &c);
    s.t.write("certs/start-a.key", &key);

    let rt = s.t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    assert_eq!(cn_of(addr, "start-b.example").await, "start-b-0.example");
    // A's names get the default server's certificate ([tls] default_server = true).
    let a = cn_of(addr, "start-a.example").await;
    assert!(!a.starts_with("start-a"), "{a}");
    assert_eq!(
        logged(Level::ERROR, &["left out", "domain=start-a"]).len(),
        1
    );
    let st = rt.tls_status();
    let a = st.domains.iter().find(|d| d.name == "start-a").expect("a");
    assert!(a.last_error.is_some() && a.failures == 1, "{a:?}");
    rt.shutdown();

    s.core(2, "[\"admin\"]", "");
    let core = std::fs::read_to_string(s.t.path("conf.d/00-core.toml")).expect("core");
    s.t.write(
        "conf.d/00-core.toml",
        core.replace("[runtime]\n", "[runtime]\nstrict_start = true\n")
            .as_bytes(),
    );
    let config =
        siprox_actors::reload::files::load(&s.t.path("conf.d")).expect("valid configuration");
    let e = siprox_actors::Runtime::start(
        config,
        siprox_actors::RuntimeOptions::embedded(s.t.dir.path()),
    )
    .expect_err("strict_start refuses");
    assert!(e.to_string().contains("start-a"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_errors_are_kept_per_file_and_cleared_once_it_compiles() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    s.tenant("scr-a", "scr-a.example");
    let good = "route {\n    sl_send_reply(\"404\", \"Not Here\");\n}\n";
    s.t.write("scr-route.cfg", good.as_bytes());
    s.core(2, "[\"admin\"]", "[script]\nfile = \"scr-route.cfg\"\n");
    let rt = s.t.start();

    s.t.write("scr-route.cfg", b"route {\n    nope();\n}\n");
    assert!(matches!(rt.reload().await, ReloadOutcome::Failed { .. }));
    let st = rt.tls_status();
    assert_eq!(st.scripts.len(), 1, "{:?}", st.scripts);
    assert!(st.scripts[0].path.ends_with("scr-route.cfg"));
    assert!(
        st.scripts[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("scr-route.cfg:2:5")),
        "{:?}",
        st.scripts
    );
    // Not a TLS domain's error.
    assert!(st.domains.iter().all(|d| d.last_error.is_none()), "{st:?}");
    let domains = s.json(&rt, &["tls.domains"]);
    assert!(
        domains
            .as_array()
            .is_some_and(|a| a.iter().all(|d| d["last_error"].is_null())),
        "{domains}"
    );
    let answer = s.json(&rt, &["cfg.reload", "wait"]);
    assert!(
        answer["scripts"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("scr-route.cfg")),
        "{answer}"
    );

    s.t.write("scr-route.cfg", good.as_bytes());
    assert!(matches!(
        rt.reload().await,
        ReloadOutcome::Published { .. } | ReloadOutcome::Unchanged
    ));
    assert!(rt.tls_status().scripts.is_empty());
    assert_eq!(
        logged(Level::INFO, &["compiles again", "scr-route.cfg"]).len(),
        1
    );
    rt.shutdown();
}

/// The daemon's stderr, line by line, as it comes.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_and_format_apply_without_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    let core = |level: &str, format: &str| {
        format!(
            "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n\
             [tls]\nwatch = false\nreload_check_interval = \"0s\"\n\
             [log]\nlevel = \"{level}\"\nformat = \"{format}\"\n"
        )
    };
    std::fs::write(conf.join("00-core.toml"), core("info", "text")).expect("write");
    let mut cmd = common::siprox_command();
    let mut child = cmd
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn siprox");
    let err = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    // Read continuously: a full pipe would block siprox's logging.
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        }
    });
    let d = Daemon { child, lines };
    assert_eventually!(
        d.count("listening") > 0,
        Duration::from_secs(30),
        "siprox up"
    );

    // At info, a reload that changes nothing says so only at DEBUG: nothing shows.
    d.hup();
    assert_eventually!(d.count("SIGHUP: reloading") == 1, T);
    std::fs::write(conf.join("00-core.toml"), core("debug", "text")).expect("write");
    d.hup();
    assert_eventually!(d.count("[log] applied") == 1, T);
    let lines = d.lines();
    let applied = lines
        .iter()
        .position(|l| l.contains("[log] applied"))
        .expect("applied");
    assert!(
        lines[..applied].iter().all(|l| !l.contains("DEBUG")),
        "{lines:?}"
    );
    // Now at debug: the same no-op reload shows.
    d.hup();
    assert_eventually!(
        d.count("DEBUG") > 0 && d.count("reload: nothing changed") > 0,
        T,
        "a DEBUG line after the reload: {:?}",
        d.lines()
    );

    // The format too: JSON lines from the next event on.
    std::fs::write(conf.join("00-core.toml"), core("debug", "json")).expect("write");
    d.hup();
    assert_eventually!(
        d.lines()
            .iter()
            .any(|l| l.starts_with('{') && l.contains("[log] applied")),
        T,
        "JSON lines: {:?}",
        d.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_global_file_refuses_the_global_part_only() {
    assert!(logs::install_at(LevelFilter::INFO), "log capture");
    let s = Site::new();
    s.tenant("glob-b", "glob-b-0.example");
    let rt = s.t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");

    // 00-core.toml does not parse: B's rotation still applies.
    s.t.write("conf.d/00-core.toml", b"[runtime\nworkers = 2\n");
    s.t.leaf("glob-b", "glob-b-1.example");
    match rt.reload().await {
        ReloadOutcome::Published { changed, refused } => {
            assert_eq!(changed, vec!["glob-b".to_owned()]);
            assert!(
                refused.iter().any(|e| e.contains("00-core.toml")),
                "{refused:?}"
            );
        }
        other => panic!("the rotation must apply: {other:?}"),
    }
    assert_eq!(cn_of(addr, "glob-b.example").await, "glob-b-1.example");

    // A global value that is refused (by the runtime's checks, or by validation): the
    // global part stays as it runs, a rotation still applies.
    s.core(2, "[\"admin\"]", "[connections]\nsend_timeout = \"0s\"\n");
    s.t.leaf("glob-b", "glob-b-2.example");
    match rt.reload().await {
        ReloadOutcome::Published { changed, refused } => {
            assert!(changed.contains(&"glob-b".to_owned()), "{changed:?}");
            assert!(
                refused.iter().any(|e| e.contains("send_timeout")),
                "{refused:?}"
            );
        }
        other => panic!("the rotation must apply: {other:?}"),
    }
    assert_eq!(cn_of(addr, "glob-b.example").await, "glob-b-2.example");
    assert_eq!(rt.snapshot().conn.send_timeout.as_secs(), 5);
    rt.shutdown();
}
