//! XML-RPC and JSON-RPC on a SIP TLS listener, SER style, made as users make them: Python's
//! `xmlrpc.client` (an `ssl` context with a client certificate) and `curl`. With the
//! script docs/rpc.md shows (the seed's: `dispatch_rpc()`, `core.kill` only for the
//! `admin` certificate) the calls are answered, `core.kill` is refused for another
//! certificate, a certificate of another CA is refused at the handshake, and `admin` stops
//! siprox. With the shipped default script an RPC POST on the SIP port (TLS or TCP) is
//! answered HTTP 403 with a body saying how to enable it, never a SIP parse error. Real
//! sockets on 127.0.0.1:0, certificates made in the test; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;
use siprox::config::{Proto, VerifyClient};
use siprox::proxy::Transport;
use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::{Ca, Spec};

/// The route script of docs/rpc.md, "RPC over a SIP listener": the fenced block that
/// starts with `route {`.
fn documented_script() -> String {
    let doc = include_str!("../../docs/rpc.md");
    let start = doc
        .find("```\nroute {")
        .expect("docs/rpc.md shows a route script")
        + 4;
    let len = doc[start..].find("```").expect("closed fence");
    doc[start..start + len].to_owned()
}

fn default_script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf.d/scripts/default.cfg"
    ))
    .expect("the shipped default script")
}

/// A client's certificate and key files.
type Who = Option<(PathBuf, PathBuf)>;

struct Node {
    rt: RuntimeHandle,
    tls: SocketAddr,
    tcp: SocketAddr,
    ca: PathBuf,
    admin: Who,
    user: Who,
    /// CN=admin, from a CA siprox does not trust.
    stranger: Who,
    _dir: tempfile::TempDir,
}

impl Node {
    /// siprox on TCP and TLS running `script`, `[management] allow` naming `admin` and
    /// `user` (dispatch_rpc() runs a call only for a certificate on that list).
    fn start(script: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dev_ca(dir.path());
        let certs = dir.path().join("certs");
        let admin = client_cert(&ca, "admin", &certs);
        let user = client_cert(&ca, "user", &certs);
        let other = Ca::new("Another CA");
        let id = other
            .issue(&Spec::client("admin"))
            .write(&certs, "stranger");
        std::fs::create_dir_all(dir.path().join("scripts")).expect("mkdir");
        std::fs::write(dir.path().join("scripts/route.cfg"), script).expect("script");
        let mut cfg = config(&[Proto::Tcp, Proto::Tls]);
        cfg.script.file = Some("scripts/route.cfg".into());
        cfg.tls.verify_client = VerifyClient::Optional;
        cfg.management.allow = vec!["admin".to_owned(), "user".to_owned()];
        let rt = start(cfg, dir.path());
        Node {
            tls: rt.local_addr(Transport::Tls).expect("tls"),
            tcp: rt.local_addr(Transport::Tcp).expect("tcp"),
            rt,
            ca: certs.join("ca.pem"),
            admin: Some(admin),
            user: Some(user),
            stranger: Some((id.cert_path, id.key_path)),
            _dir: dir,
        }
    }

    /// Python's xmlrpc.client against `https://127.0.0.1:PORT/RPC2` (the SIP TLS port),
    /// as `who`; `code` uses the proxy `s`.
    fn python(&self, who: &Who, code: &str) -> Output {
        let cert = who.as_ref().map_or(String::new(), |(c, k)| {
            format!("ctx.load_cert_chain({:?}, {:?})\n", path(c), path(k))
        });
        let script = format!(
            "import ssl, xmlrpc.client, json, socket\n\
             socket.setdefaulttimeout(5)\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             {cert}\
             s = xmlrpc.client.ServerProxy({url:?}, context=ctx, allow_none=True)\n\
             {code}\n",
            ca = path(&self.ca),
            url = format!("https://127.0.0.1:{}/RPC2", self.tls.port()),
        );
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3 runs")
    }

    /// curl with `args`, trusting siprox's CA, as `who`.
    fn curl(&self, who: &Who, args: &[&str]) -> Output {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "5", "--cacert"]).arg(&self.ca);
        if let Some((cert, key)) = who {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        c.args(args).output().expect("curl runs")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.tls.port())
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Prints the HTTP status of a refused call (xmlrpc.client raises ProtocolError).
fn py_status(call: &str) -> String {
    format!(
        "try:\n    print('answered', {call})\nexcept xmlrpc.client.ProtocolError as e:\n    \
         print(e.errcode)\nexcept xmlrpc.client.Fault as f:\n    print('fault', f.faultCode)"
    )
}

const JSON_UPTIME: &str = r#"{"jsonrpc":"2.0","id":"u","method":"core.uptime"}"#;
const JSON_KILL: &str = r#"{"jsonrpc":"2.0","id":"k","method":"core.kill"}"#;

#[test]
fn the_documented_script_answers_python_and_curl_and_refuses_the_wrong_certificate() {
    let script = documented_script();
    assert!(
        script.contains("dispatch_rpc()") && script.contains("core.kill"),
        "{script}"
    );
    let node = Node::start(&script);

    // Python: a certificate on the allow-list calls the harmless methods.
    let out = node.python(
        &node.user,
        "print(json.dumps([s.core.version(), s.system.listMethods(), s.core.uptime()]))",
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert!(
        v[0].as_str().is_some_and(|s| s.starts_with("siprox ")),
        "{v}"
    );
    assert!(
        v[1].as_array()
            .is_some_and(|m| m.iter().any(|m| m == "core.kill")),
        "{v}"
    );
    assert!(v[2]["uptime"].is_i64(), "{v}");
    // core.kill is refused for a certificate that is not admin's: the script's 403.
    let out = node.python(&node.user, &py_status("s.core.kill()"));
    assert_eq!(stdout(&out), "403", "{}", text(&out));
    // Without a certificate nothing runs: the allow-list's 403.
    let out = node.python(&None, &py_status("s.core.version()"));
    assert_eq!(stdout(&out), "403", "{}", text(&out));
    // CN=admin from a CA siprox does not trust: refused at the handshake.
    let out = node.python(
        &node.stranger,
        "try:\n    s.core.kill()\n    print('answered')\nexcept (ssl.SSLError, OSError) as e:\n    \
         print('refused', type(e).__name__)",
    );
    assert!(stdout(&out).starts_with("refused"), "{}", text(&out));

    // curl, JSON-RPC: answered for a listed certificate, core.kill refused for it.
    let json = ["-H", "Content-Type: application/json", "-d"];
    let url = node.url();
    let out = node.curl(&node.user, &[&json[..], &[JSON_UPTIME, &url]].concat());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["id"], "u", "{v}");
    assert!(v["result"]["uptime"].is_i64(), "{v}");
    let out = node.curl(
        &node.user,
        &[&["-w", "\n%{http_code}"], &json[..], &[JSON_KILL, &url]].concat(),
    );
    assert!(stdout(&out).ends_with("\n403"), "{}", text(&out));
    assert!(stdout(&out).contains("\"error\""), "{}", text(&out));
    // The stranger's certificate: curl cannot even connect.
    let out = node.curl(&node.stranger, &[&json[..], &[JSON_KILL, &url]].concat());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("result"), "{}", text(&out));

    // admin stops siprox through the SIP port, as the seed's serctl did.
    let out = node.python(&node.admin, "print(s.core.kill())");
    assert_eq!(stdout(&out), "shutting down", "{}", text(&out));
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = node.rt;
    std::thread::spawn(move || {
        rt.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(15))
        .expect("siprox exits after core.kill");
}

#[test]
fn the_default_script_refuses_rpc_on_the_sip_port_and_says_how_to_enable_it() {
    let node = Node::start(&default_script());
    let how = "dispatch_rpc()";

    // Python xmlrpc.client, with a certificate on the allow-list: HTTP 403, not a call.
    let out = node.python(&node.admin, &py_status("s.core.version()"));
    assert_eq!(stdout(&out), "403", "{}", text(&out));

    // curl, XML-RPC and JSON-RPC over TLS: 403 with a fault / error that says how.
    let url = node.url();
    let xml = "<?xml version=\"1.0\"?><methodCall><methodName>core.version</methodName>\
               <params></params></methodCall>";
    let out = node.curl(
        &node.admin,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: text/xml",
            "-d",
            xml,
            &url,
        ],
    );
    let body = stdout(&out);
    assert!(body.ends_with("\n403"), "{}", text(&out));
    assert!(
        body.contains("<fault>") && body.contains(how),
        "{}",
        text(&out)
    );
    assert!(!body.contains("SIP version"), "{}", text(&out));
    let out = node.curl(
        &node.admin,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            JSON_UPTIME,
            &url,
        ],
    );
    let body = stdout(&out);
    assert!(body.ends_with("\n403"), "{}", text(&out));
    let (json, _) = body.rsplit_once('\n').unwrap_or_default();
    let v: Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["id"], "u", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(how)),
        "{v}"
    );
    // Any other POST, on the plain TCP port, without a certificate: the same, as text.
    let out = node.curl(
        &None,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            "hello",
            &format!("http://127.0.0.1:{}/", node.tcp.port()),
        ],
    );
    let body = stdout(&out);
    assert!(body.ends_with("\n403"), "{}", text(&out));
    assert!(
        body.contains(how) && body.contains("docs/rpc.md"),
        "{}",
        text(&out)
    );
    node.rt.shutdown();
}

#[test]
fn a_route_that_starts_with_sanity_check_still_reaches_dispatch_rpc() {
    // docs/rpc.md: sanity_check() checks SIP only and passes an RPC request. The documented
    // script with the usual first line of a SIP route in front of it.
    let script =
        documented_script().replacen("route {", "route {\n    if (!sanity_check()) { exit; }", 1);
    assert!(script.contains("sanity_check()"), "{script}");
    let node = Node::start(&script);
    let json = ["-H", "Content-Type: application/json", "-d"];
    let url = node.url();
    let out = node.curl(&node.user, &[&json[..], &[JSON_UPTIME, &url]].concat());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["id"], "u", "{v}");
    assert!(v["result"]["uptime"].is_i64(), "{v}");
    let out = node.python(&node.user, &py_status("s.core.version()"));
    assert!(stdout(&out).starts_with("answered"), "{}", text(&out));
}
