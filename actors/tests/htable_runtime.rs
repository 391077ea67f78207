//! `$sht` in a running siprox: the brute-force ban of docs/script.md, as printed. A source
//! that fails three REGISTERs is banned (its requests dropped unanswered) while another
//! source is still served; the tables are shared by every worker; a script that names a
//! table `[htables]` does not declare is refused at load with the table's name; the ban
//! expires with the table's `autoexpire`. Real sockets on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use siprox::config::{HtableConfig, Proto};
use siprox::proxy::Transport;
use tokio::net::UdpSocket;

/// The example from docs/script.md ("Hash tables"), verbatim.
const BAN: &str = include_str!("../../docs/examples/htable-ban.cfg");

async fn exchange(sock: &UdpSocket, to: SocketAddr, msg: &str, wait: Duration) -> Option<String> {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

fn register(sip: SocketAddr, me: SocketAddr, n: u32) -> String {
    format!(
        "REGISTER sip:{sip} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-reg{n}-{port};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:mallory@example.com>;tag=r{n}\r\n\
         To: <sip:mallory@example.com>\r\n\
         Call-ID: reg-{port}\r\n\
         CSeq: {n} REGISTER\r\n\
         Contact: <sip:mallory@{me}>\r\n\
         Authorization: Digest username=\"mallory\", realm=\"example.com\", nonce=\"x\", uri=\"sip:{sip}\", response=\"00\"\r\n\
         Content-Length: 0\r\n\r\n",
        port = me.port()
    )
}

fn start_with(
    dir: &std::path::Path,
    autoexpire: u64,
    declare: bool,
) -> Result<siprox_actors::RuntimeHandle, String> {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/ban.cfg"), BAN).unwrap();
    let mut cfg = config(&[Proto::Udp]);
    cfg.script.file = Some("scripts/ban.cfg".into());
    if declare {
        for t in ["ipban", "authfail"] {
            cfg.htables.insert(
                t.into(),
                HtableConfig {
                    autoexpire: siprox::config::ConfigDuration::secs(autoexpire),
                },
            );
        }
    }
    siprox_actors::Runtime::start(cfg, siprox_actors::RuntimeOptions::embedded(dir))
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failed_registers_ban_the_source_and_the_ban_expires() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with(dir.path(), 2, true).expect("starts");
    let sip = rt.local_addr(Transport::Udp).unwrap();
    let mallory = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = mallory.local_addr().unwrap();
    let wait = Duration::from_secs(3);
    for n in 1..=3 {
        let r = exchange(&mallory, sip, &register(sip, me, n), wait)
            .await
            .expect("answered before the ban");
        assert_eq!(status(&r), Some(403), "{r}");
    }
    // Banned: dropped without an answer, whichever worker reads it.
    for n in 4..=7 {
        assert!(
            exchange(
                &mallory,
                sip,
                &register(sip, me, n),
                Duration::from_millis(300)
            )
            .await
            .is_none(),
            "a banned source was answered"
        );
    }
    // Another source address is served.
    let alice = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let r = exchange(&alice, sip, &options_to(sip, "UDP", "opt-alice"), wait)
        .await
        .expect("answered");
    assert_eq!(status(&r), Some(200), "{r}");
    // The ban ends with autoexpire (2 s): answered again.
    siprox_testkit::assert_eventually!(
        exchange(
            &mallory,
            sip,
            &options_to(sip, "UDP", "opt-m"),
            Duration::from_millis(300)
        )
        .await
        .is_some(),
        Duration::from_secs(10),
        "the ban did not expire"
    );
}

#[test]
fn a_table_that_is_not_declared_refuses_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let Err(err) = start_with(dir.path(), 0, false) else {
        panic!("a script naming undeclared tables started");
    };
    assert!(
        err.contains("$sht names a table that [htables] does not declare: ipban, authfail"),
        "{err}"
    );
}

#[test]
fn the_documented_example_is_the_file_the_test_runs() {
    let docs = include_str!("../../docs/script.md");
    let body: Vec<&str> = BAN.lines().skip_while(|l| l.starts_with('#')).collect();
    assert!(
        docs.contains(&body.join("\n")),
        "docs/script.md's ban example differs from docs/examples/htable-ban.cfg"
    );
}
