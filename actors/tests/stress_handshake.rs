//! Handshake storm: 1,000 TLS clients connect and handshake at the same moment; every
//! handshake completes, every connection then gets an answer to an OPTIONS, siprox counts
//! no handshake failure and logs no error. Alone in its test binary so that the captured
//! log holds siprox's events from this test only; must never pace the clients.

mod common;

use std::time::{Duration, Instant};

use common::inproc::{Options, Siprox};
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::Tls;
use siprox_testkit::ua::{options_flow, Client, FlowOpts, Transport};
use tokio::task::JoinSet;

const CLIENTS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tls_handshakes_all_complete_without_errors() {
    siprox_testkit::require_nofile(2 * CLIENTS as u64 + 100);
    let sx = Siprox::start(Options {
        udp: false,
        tcp: false,
        ..Options::default()
    })
    .await;
    assert!(
        siprox_testkit::logs::install(),
        "log capture could not be installed"
    );
    // The capture sees this process's events (siprox's worker threads log the same way).
    tracing::warn!(target: "siprox_test_probe", "probe");
    assert!(siprox_testkit::logs::at_least(tracing::Level::WARN)
        .iter()
        .any(|e| e.target == "siprox_test_probe"));
    let conn = sx.connector(Tls::Any);
    let addr = sx.tls();
    let me = format!("sip:{addr};transport=tls");
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..CLIENTS {
        let (conn, me) = (conn.clone(), me.clone());
        set.spawn(async move {
            let c = Client::connect(Transport::Tls, addr, Some(&conn))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let opts = FlowOpts {
                timeout: Duration::from_secs(20),
                retransmit: false,
            };
            options_flow(&c, &me, opts)
                .await
                .map_err(|e| format!("OPTIONS: {e}"))?;
            Ok::<Client, String>(c)
        });
    }
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(c) => clients.push(c),
            Err(e) => errors.push(e),
        }
    }
    let took = start.elapsed();
    let stats = sx.stats();
    eprintln!("{CLIENTS} handshakes + OPTIONS in {took:?}; {stats:?}");
    assert!(
        errors.is_empty(),
        "{} clients failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(clients.len(), CLIENTS);
    // All of them are open at once on siprox's side.
    assert_eq!(stats.connections_open, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.accepted, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.handshake_failures, 0, "{stats:?}");
    assert_eq!(
        stats.refused_total_limit + stats.refused_ip_limit,
        0,
        "{stats:?}"
    );
    drop(clients);
    assert_eventually!(
        sx.stats().connections_open == 0,
        Duration::from_secs(10),
        "connections still open after the clients left: {:?}",
        sx.stats()
    );
    let errs = siprox_testkit::logs::errors();
    assert!(errs.is_empty(), "siprox logged errors: {errs:#?}");
    sx.shutdown().await;
}
