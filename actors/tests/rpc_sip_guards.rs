//! The RPC guards the docs show for a SIP listener, each run as written against the
//! bypasses an adversarial pass found: a JSON-RPC batch `[core.version, core.kill]` and a
//! JSON-RPC `core.kill` under an `@xmlrpc.method` guard, over plain TCP and TLS, with and
//! without a client certificate. None of them may run `core.kill`; an admin on
//! `[management] allow` still gets through. Real sockets, certificates made in the test.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use openssl::ssl::SslVersion;
use siprox::config::{Proto, VerifyClient};
use siprox::proxy::Transport;
use tokio::io::AsyncReadExt;

/// `docs/rpc.md`, "RPC over a SIP listener".
const RPC_MD: &str = r#"route {
    if (@xmlrpc.method == "core.kill") {
        if (@tls.peer != "admin") { sl_send_reply("403", "Forbidden"); drop; }
    }
    dispatch_rpc();
}"#;
/// `docs/script.md`, the functions example.
const SCRIPT_MD_FUNCTIONS: &str = r#"if (@rpc.method == "core.version") { dispatch_rpc(); exit; }"#;
/// `docs/script.md`, the selects example.
const SCRIPT_MD_SELECTS: &str =
    r#"if (@xmlrpc.method == "core.kill" && @tls.peer == "admin") { dispatch_rpc(); exit; }"#;

fn json(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: siprox\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const BATCH: &str = r#"[{"jsonrpc":"2.0","id":1,"method":"core.version"},{"jsonrpc":"2.0","id":2,"method":"core.kill"}]"#;
const JSON_KILL: &str = r#"{"jsonrpc":"2.0","id":3,"method":"core.kill"}"#;
const JSON_VERSION: &str = r#"{"jsonrpc":"2.0","id":4,"method":"core.version"}"#;

enum Who {
    PlainTcp,
    TlsNoCert,
    TlsCert(&'static str),
}

struct Setup {
    tcp: SocketAddr,
    tls: SocketAddr,
    ca: PathBuf,
    certs: PathBuf,
}

async fn call(s: &Setup, who: &Who, req: &str) -> String {
    match who {
        Who::PlainTcp => {
            let mut t = tokio::net::TcpStream::connect(s.tcp).await.expect("tcp");
            http_exchange(&mut t, req).await
        }
        Who::TlsNoCert => {
            let mut t = tls_client(s.tls, &s.ca, None, SslVersion::TLS1_3).await;
            http_exchange(&mut t, req).await
        }
        Who::TlsCert(cn) => {
            let c = (
                s.certs.join(format!("{cn}.pem")),
                s.certs.join(format!("{cn}.key")),
            );
            let mut t = tls_client(s.tls, &s.ca, Some((&c.0, &c.1)), SslVersion::TLS1_2).await;
            http_exchange(&mut t, req).await
        }
    }
}

fn setup_dir(dir: &Path, script: &str) -> (siprox::config::Config, PathBuf) {
    let ca = dev_ca(dir);
    let certs = dir.join("certs");
    client_cert(&ca, "admin", &certs);
    client_cert(&ca, "user", &certs);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/guard.cfg"), script).unwrap();
    let mut cfg = config(&[Proto::Tcp, Proto::Tls]);
    cfg.script.file = Some("scripts/guard.cfg".into());
    cfg.tls.verify_client = VerifyClient::Optional;
    cfg.management.allow = vec!["admin".to_owned()];
    (cfg, certs)
}

fn refused(r: &str, what: &str) {
    assert!(
        !r.starts_with("HTTP/1.1 2") && !r.contains("\"result\""),
        "{what}: must not run, got {r}"
    );
}

#[test]
fn the_documented_examples_are_the_ones_tested() {
    let rpc = include_str!("../../docs/rpc.md");
    let script = include_str!("../../docs/script.md");
    assert!(rpc.contains(RPC_MD), "docs/rpc.md example changed");
    assert!(
        script.contains(SCRIPT_MD_FUNCTIONS),
        "docs/script.md example changed"
    );
    assert!(
        script.contains(SCRIPT_MD_SELECTS),
        "docs/script.md example changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_guard_holds_against_the_bypasses() {
    for (name, script) in [
        ("docs/rpc.md", RPC_MD.to_owned()),
        (
            "docs/script.md functions",
            format!("route {{\n{SCRIPT_MD_FUNCTIONS}\n}}\n"),
        ),
        (
            "docs/script.md selects",
            format!("route {{\n{SCRIPT_MD_SELECTS}\n}}\n"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, certs) = setup_dir(dir.path(), &script);
        let rt = start(cfg, dir.path());
        let s = Setup {
            tcp: rt.local_addr(Transport::Tcp).unwrap(),
            tls: rt.local_addr(Transport::Tls).unwrap(),
            ca: certs.join("ca.pem"),
            certs,
        };
        for who in [Who::PlainTcp, Who::TlsNoCert, Who::TlsCert("user")] {
            let r = call(&s, &who, &json(BATCH)).await;
            refused(&r, &format!("{name}: batch"));
            let r = call(&s, &who, &json(JSON_KILL)).await;
            refused(&r, &format!("{name}: JSON-RPC core.kill"));
            let r = call(&s, &who, &json(JSON_VERSION)).await;
            refused(
                &r,
                &format!("{name}: core.version, caller not on the allow-list"),
            );
        }
        // The batch is refused for an admin too: one call per request on a SIP listener.
        let r = call(&s, &Who::TlsCert("admin"), &json(BATCH)).await;
        refused(&r, &format!("{name}: admin batch"));
        // What the guard lets through still works for an allowed caller.
        let allowed = if name.ends_with("selects") {
            JSON_KILL
        } else {
            JSON_VERSION
        };
        let r = call(&s, &Who::TlsCert("admin"), &json(allowed)).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{name}: admin: {r}");
        assert!(r.contains("\"result\""), "{name}: admin: {r}");
        drop(rt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_rpc_trusted_leaves_the_decision_to_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"route {
    if (@rpc.method == "core.version") { dispatch_rpc_trusted(); exit; }
    dispatch_rpc();
}"#;
    let (cfg, certs) = setup_dir(dir.path(), script);
    let rt = start(cfg, dir.path());
    let s = Setup {
        tcp: rt.local_addr(Transport::Tcp).unwrap(),
        tls: rt.local_addr(Transport::Tls).unwrap(),
        ca: certs.join("ca.pem"),
        certs,
    };
    let r = call(&s, &Who::PlainTcp, &json(JSON_VERSION)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = call(&s, &Who::PlainTcp, &json(JSON_KILL)).await;
    refused(
        &r,
        "core.kill through dispatch_rpc() from an anonymous caller",
    );
    drop(rt);
}

/// An HTTP answer that says `Connection: close` is followed by the close, on a SIP
/// listener too; keep-alive requests keep the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"route {
    if (@rpc.method == "core.kill") { sl_send_reply("403", "Forbidden"); exit; }
    dispatch_rpc_trusted();
}"#;
    let (cfg, _certs) = setup_dir(dir.path(), script);
    let rt = start(cfg, dir.path());
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    async fn closed(s: &mut tokio::net::TcpStream) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
    // Keep-alive: two answers on one stream.
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    for _ in 0..2 {
        let r = http_exchange(&mut s, &json(JSON_VERSION)).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(!r.contains("Connection: close"), "{r}");
    }
    // The client asks for the close.
    let req =
        json(JSON_VERSION).replace("Host: siprox\r\n", "Host: siprox\r\nConnection: close\r\n");
    let r = http_exchange(&mut s, &req).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("Connection: close"), "{r}");
    assert!(closed(&mut s).await, "closed after Connection: close");
    // The script's refusal says Connection: close, and closes.
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let r = http_exchange(&mut s, &json(JSON_KILL)).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("Connection: close"), "{r}");
    assert!(closed(&mut s).await, "closed after the script's reply");
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_call_is_logged_with_its_caller() {
    // docs/rpc.md: "Every call is logged at INFO with its caller".
    assert!(
        siprox_testkit::logs::install_at(tracing::level_filters::LevelFilter::INFO),
        "log capture installed"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cfg, certs) = setup_dir(dir.path(), RPC_MD);
    let rt = start(cfg, dir.path());
    let s = Setup {
        tcp: rt.local_addr(Transport::Tcp).unwrap(),
        tls: rt.local_addr(Transport::Tls).unwrap(),
        ca: certs.join("ca.pem"),
        certs,
    };
    let r = call(&s, &Who::TlsCert("admin"), &json(JSON_VERSION)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "admin: {r}");
    let logged = |what: &'static str, who: &'static str| {
        siprox_testkit::logs::at_least(tracing::Level::INFO)
            .iter()
            .any(|e| {
                e.text.contains(what) && e.text.contains(who) && e.text.contains("core.version")
            })
    };
    assert_eventually!(logged("RPC call", "CN=admin"));
    // A caller without a certificate is named as such, and its refusal is logged too.
    let r = call(&s, &Who::TlsNoCert, &json(JSON_VERSION)).await;
    refused(&r, "anonymous core.version");
    assert_eventually!(logged("RPC call refused", "anonymous"));
    drop(rt);
}
