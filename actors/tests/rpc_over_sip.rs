//! SER style management on a SIP TLS listener: HTTP requests that arrive there are shown to
//! the route script (`@xmlrpc.method`, `@rpc.method`, `dispatch_rpc()`), which decides who
//! may call what by client certificate; and `event_route[tls:connection-in]` can refuse a
//! peer. Real TLS, certificates made in the test.

mod common;

use std::time::Duration;

use common::*;
use openssl::ssl::SslVersion;
use siprox::config::{Proto, VerifyClient};
use siprox::proxy::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed's example script, verbatim in spirit.
const SEED: &str = r#"
route {
    if (@xmlrpc.method == "core.kill") {
        if (@tls.peer != "admin") {
            sl_send_reply("403", "Forbidden");
            drop;
        }
    }
    dispatch_rpc();
}

event_route[tls:connection-in] {
    if (@tls.peer == "Mallory") {
        drop;
    }
}
"#;

fn xml_call(method: &str) -> String {
    let body = format!("<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params></params></methodCall>");
    format!(
        "POST /RPC2 HTTP/1.1\r\nHost: siprox\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_script_governs_rpc_on_a_sip_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let certs = dir.path().join("certs");
    let admin = client_cert(&ca, "admin", &certs);
    let user = client_cert(&ca, "user", &certs);
    let mallory = client_cert(&ca, "Mallory", &certs);
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("scripts/seed.cfg"), SEED).unwrap();
    let mut cfg = config(&[Proto::Tls]);
    cfg.script.file = Some("scripts/seed.cfg".into());
    cfg.tls.verify_client = VerifyClient::Optional;
    // dispatch_rpc() runs a call only for a peer on [management] allow.
    cfg.management.allow = vec!["admin".to_owned(), "user".to_owned()];
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tls).unwrap();
    let ca_path = certs.join("ca.pem");

    // Any certificate may call the harmless methods.
    let mut s = tls_client(addr, &ca_path, Some((&user.0, &user.1)), SslVersion::TLS1_3).await;
    let r = http_exchange(&mut s, &xml_call("core.version")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("<methodResponse>"), "{r}");
    // A JSON-RPC call too (the script reads @rpc.method for both).
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"core.uptime"}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = http_exchange(&mut s, &req).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"result\""), "{r}");

    // core.kill is refused for a certificate that is not admin's.
    let mut s = tls_client(addr, &ca_path, Some((&user.0, &user.1)), SslVersion::TLS1_2).await;
    let r = http_exchange(&mut s, &xml_call("core.kill")).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("faultCode"), "{r}");

    // The connection-in event refuses Mallory outright: the stream closes.
    let mut s = tls_client(
        addr,
        &ca_path,
        Some((&mallory.0, &mallory.1)),
        SslVersion::TLS1_3,
    )
    .await;
    let _ = s.write_all(xml_call("core.version").as_bytes()).await;
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "Mallory's connection is closed by the event route");

    // admin may kill: siprox answers, then shuts down gracefully.
    let mut s = tls_client(
        addr,
        &ca_path,
        Some((&admin.0, &admin.1)),
        SslVersion::TLS1_3,
    )
    .await;
    let r = http_exchange(&mut s, &xml_call("core.kill")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let waited = tokio::task::spawn_blocking(move || rt.wait());
    tokio::time::timeout(Duration::from_secs(15), waited)
        .await
        .expect("siprox exits after core.kill")
        .unwrap();
}
