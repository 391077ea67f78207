//! Zero-downtime hot reload, proven under load: certificates rotated by atomic rename and
//! by Kubernetes-style `..data` symlink swap, domains added and removed, a broken
//! certificate dropped in and fixed, while 50 TLS connections keep running transactions.
//! Polls with deadlines (assert_eventually), never bare sleeps.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::tree::Tree;
use common::{options_to, read_message, send, status};
use siprox::proxy::Transport;
use siprox_actors::state::messages::ReloadOutcome;
use siprox_testkit::assert_eventually;
use siprox_testkit::tls::{peer_cn, Client};

const T: Duration = Duration::from_secs(5);
/// The bound: a new handshake presents a new certificate within this.
const ROTATED_WITHIN: Duration = Duration::from_secs(2);

async fn cn_of(addr: SocketAddr, sni: &str) -> String {
    match Client::sni(sni).connect(addr).await {
        Ok(s) => peer_cn(&s),
        Err(e) => format!("handshake failed: {e}"),
    }
}

/// `certs/rot/tls.pem` (certificate and key in one file, so each rotation is one atomic
/// step) as a Kubernetes secret mount: `tls.pem -> ..data/tls.pem`, `..data -> ..vN`.
fn rotate_symlink(t: &Tree, n: usize, cn: &str) {
    let dir = t.path("certs/rot");
    let (c, k) = t.ca.leaf(cn);
    let v = dir.join(format!("..v{n}"));
    std::fs::create_dir_all(&v).expect("mkdir");
    std::fs::write(v.join("tls.pem"), [c, k].concat()).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{n}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link_tmp = dir.join("tls.pem.lnk");
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink("..data/tls.pem", &link_tmp).expect("symlink");
    std::fs::rename(&link_tmp, dir.join("tls.pem")).expect("link tls.pem");
    if n >= 2 {
        // Kubernetes removes the previous version.
        let _ = std::fs::remove_dir_all(dir.join(format!("..v{}", n - 2)));
    }
}

/// The same file replaced by rename (certbot style), over whatever was there.
fn rotate_rename(t: &Tree, cn: &str) {
    let (c, k) = t.ca.leaf(cn);
    t.write("certs/rot/tls.pem", &[c, k].concat());
}

/// 25 connections per domain, each running OPTIONS transactions until `stop`; counts
/// transactions and failures (a failure = no 200 in time, or the connection closed).
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    streams: Vec<tokio_openssl::SslStream<tokio::net::TcpStream>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    send(&mut s, &options_to(addr, "TLS", &format!("load-{i}-{n}"))).await;
                    match read_message(&mut s, &mut buf, T).await {
                        Ok(r) if status(&r) == Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotations_domains_and_a_broken_certificate_under_load() {
    let t = Tree::new("");
    rotate_symlink(&t, 0, "rot-0.example");
    t.leaf("steady", "steady-0.example");
    t.domain(
        "rot",
        "[domains.rot]\nnames = [\"rot.example\"]\n[domains.rot.server]\n\
         certificate = \"certs/rot/tls.pem\"\nprivate_key = \"certs/rot/tls.pem\"\n",
    );
    t.domain(
        "steady",
        "[domains.steady]\nnames = [\"steady.example\"]\n[domains.steady.server]\n\
         certificate = \"certs/steady.pem\"\nprivate_key = \"certs/steady.key\"\n",
    );
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    assert_eq!(cn_of(addr, "rot.example").await, "rot-0.example");

    let mut streams = Vec::new();
    for i in 0..50 {
        let sni = if i % 2 == 0 {
            "rot.example"
        } else {
            "steady.example"
        };
        streams.push(Client::sni(sni).connect(addr).await.expect("connect"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks = load(addr, stop.clone(), ok.clone(), failed.clone(), streams);
    let third_conn_slot = &mut None;

    for n in 1..=100 {
        let cn = format!("rot-{n}.example");
        if n % 2 == 0 {
            rotate_symlink(&t, n, &cn);
        } else {
            rotate_rename(&t, &cn);
        }
        assert_eventually!(
            cn_of(addr, "rot.example").await == cn,
            ROTATED_WITHIN,
            "rotation {n}: new handshakes still see {}",
            cn_of(addr, "rot.example").await
        );
        if n == 30 {
            t.server_domain("third", "");
            assert_eventually!(
                cn_of(addr, "third.example").await == "third.example",
                ROTATED_WITHIN,
                "the added domain is served"
            );
            let s = Client::sni("third.example")
                .connect(addr)
                .await
                .expect("third");
            *third_conn_slot = Some(s);
        }
        if n == 60 {
            std::fs::remove_file(t.path("conf.d/domains/third.toml")).expect("rm");
            assert_eventually!(
                cn_of(addr, "third.example").await == "localhost",
                ROTATED_WITHIN,
                "a removed domain's certificate is no longer served"
            );
            // Its live connection goes on.
            let s = third_conn_slot.as_mut().expect("third conn");
            send(s, &options_to(addr, "TLS", "third-live")).await;
            let mut buf = Vec::new();
            let r = read_message(s, &mut buf, T).await.expect("still open");
            assert_eq!(status(&r), Some(200));
        }
        if n == 80 {
            let before = rt.tls_status().failures;
            t.write("certs/steady.pem", b"-----BEGIN CERTIFICATE-----\nbroken\n");
            assert_eventually!(
                rt.tls_status().failures > before,
                ROTATED_WITHIN,
                "the broken certificate is refused"
            );
            let st = rt.tls_status();
            let err = format!("{:?}", st.last_error.expect("last error").outcome);
            assert!(
                err.contains("steady") && err.contains("steady.pem"),
                "{err}"
            );
            // The old certificate keeps being served.
            assert_eq!(cn_of(addr, "steady.example").await, "steady-0.example");
            // The whole candidate is refused (DESIGN.md: on any failure the running snapshot
            // stays), so it is fixed before the next rotation.
            t.leaf("steady", "steady-1.example");
            assert_eventually!(
                cn_of(addr, "steady.example").await == "steady-1.example",
                ROTATED_WITHIN,
                "the fixed certificate is served"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed transactions");
    assert!(ok.load(Ordering::Relaxed) >= 50, "transactions ran");
    let st = rt.tls_status();
    assert!(st.published >= 100, "{st:?}");
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_reload_publishes_nothing_and_keeps_contexts() {
    let t = Tree::new("reload_check_interval = \"0s\"\nwatch = false\n");
    t.leaf("a", "a-0.example");
    t.leaf("b", "b-0.example");
    for d in ["a", "b"] {
        t.domain(
            d,
            &format!(
                "[domains.{d}]\nnames = [\"{d}.example\"]\n[domains.{d}.server]\n\
                 certificate = \"certs/{d}.pem\"\nprivate_key = \"certs/{d}.key\"\n"
            ),
        );
    }
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let s1 = rt.snapshot();
    assert_eq!(rt.reload().await, ReloadOutcome::Unchanged);
    assert!(Arc::ptr_eq(&s1, &rt.snapshot()), "nothing published");

    t.leaf("a", "a-1.example");
    assert_eq!(
        rt.reload().await,
        ReloadOutcome::Published {
            changed: vec!["a".to_owned()],
            refused: vec![],
        }
    );
    let s2 = rt.snapshot();
    let ctx = |s: &siprox_actors::Snapshot, name: &str| {
        s.tls
            .servers
            .iter()
            .find(|d| &*d.name == name)
            .expect("domain")
            .ctx
            .clone()
    };
    assert!(Arc::ptr_eq(&ctx(&s1, "b"), &ctx(&s2, "b")), "b untouched");
    assert!(!Arc::ptr_eq(&ctx(&s1, "a"), &ctx(&s2, "a")), "a rebuilt");
    assert_eq!(cn_of(addr, "a.example").await, "a-1.example");

    // A broken new tenant: left out, everything else applies; the error names the file and
    // stays on the domain's status (not as a failed reload of everyone).
    t.domain("c", "[domains.c]\nnames = [\"c.example\"]\n[domains.c.server]\ncertificate = \"certs/nope.pem\"\nprivate_key = \"certs/nope.key\"\n");
    match rt.reload().await {
        ReloadOutcome::Published { refused, .. } => {
            assert!(
                refused
                    .iter()
                    .any(|e| e.contains("nope.pem") && e.contains("`c`")),
                "{refused:?}"
            )
        }
        other => panic!("expected c left out, got {other:?}"),
    }
    assert!(rt.snapshot().tls.servers.iter().all(|d| &*d.name != "c"));
    assert!(Arc::ptr_eq(&ctx(&s2, "a"), &ctx(&rt.snapshot(), "a")));
    let st = rt.tls_status();
    assert_eq!(st.failures, 0);
    assert!(st.last_error.is_some());
    let c = st
        .domains
        .iter()
        .find(|d| d.name == "c")
        .expect("c's status");
    assert!(
        c.last_error
            .as_deref()
            .is_some_and(|e| e.contains("nope.pem")),
        "{c:?}"
    );
    let a = st.domains.iter().find(|d| d.name == "a").expect("a");
    assert!(a.subject.contains("a-1.example"), "{a:?}");
    assert!(a.sans.contains(&"a-1.example".to_owned()));
    assert!(a.not_after_unix > 0);
    rt.shutdown();
}

/// A connection lives on after reloads with its own domain's context, but not with every
/// domain of the snapshot it was accepted under: once the snapshot is replaced, its domain
/// table is freed although connections accepted under it are still open (phones hold
/// connections for days, across many reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_do_not_keep_old_domain_tables_alive() {
    let t = Tree::new("");
    t.server_domain("a", "");
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let old = Arc::downgrade(&rt.snapshot().tls);
    let mut held = Client::sni("a.example").connect(addr).await.expect("a");
    assert_eq!(peer_cn(&held), "a.example");

    t.leaf("a", "a-1.example");
    assert!(matches!(rt.reload().await, ReloadOutcome::Published { .. }));
    assert_eventually!(
        old.upgrade().is_none(),
        T,
        "the old domain table is still alive"
    );
    // The connection accepted under it still works.
    send(&mut held, &options_to(addr, "TLS", "held")).await;
    let mut buf = Vec::new();
    let r = read_message(&mut held, &mut buf, T).await.expect("served");
    assert_eq!(status(&r), Some(200));
    rt.shutdown();
}
