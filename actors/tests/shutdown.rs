//! SIGTERM during load, on the real `siprox` binary: it exits by itself within
//! `shutdown_grace`, with status 0 and no panic in its output. Must never kill siprox any
//! other way than the one SIGTERM under test (a hung siprox is killed only to clean up
//! after the test has already failed).

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::inproc::{free_ports, write_conf_d, Options};
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::{Pki, Tls};
use siprox_testkit::ua::{invite_flow, options_flow, Client, FlowOpts, Transport, Uas, UasOpts};

const GRACE: Duration = Duration::from_secs(3);

/// Kills the child if the test fails before it exited.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    // Read continuously: a full pipe would block siprox's logging and so siprox itself.
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_cleanly_within_the_grace_period() {
    let pki = Pki::new();
    let addrs = free_ports();
    let opts = Options {
        shutdown_grace: GRACE,
        ..Options::default()
    };
    let conf = write_conf_d(pki.dir.path(), &pki, &opts, addrs);
    let mut cmd = common::siprox_command();
    let mut child = cmd
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn siprox");
    let pid = child.id();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut reap = Reap(Some(child));
    let [udp, _tcp, tls] = addrs;

    // Ready when it answers an OPTIONS addressed to itself.
    let probe = Client::connect(Transport::Udp, udp, None).await.unwrap();
    let me = format!("sip:{udp}");
    let quick = FlowOpts {
        timeout: Duration::from_millis(200),
        retransmit: false,
    };
    assert_eventually!(
        options_flow(&probe, &me, quick).await.is_ok()
            || reap.0.as_mut().unwrap().try_wait().unwrap().is_some(),
        Duration::from_secs(30),
        "siprox did not come up"
    );
    assert!(
        reap.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "siprox exited at startup"
    );

    // Load: UDP and TLS callers, calls through siprox to a UDP UAS, until siprox goes away.
    let uas = Uas::start(Transport::Udp, UasOpts::default())
        .await
        .unwrap();
    uas.count_only();
    let done = Arc::new(AtomicU64::new(0));
    let conn = pki.connector(None, Tls::Any);
    let mut load = Vec::new();
    for i in 0..8 {
        let (t, addr) = if i % 2 == 0 {
            (Transport::Tls, tls)
        } else {
            (Transport::Udp, udp)
        };
        let c = Client::connect(t, addr, Some(&conn)).await.unwrap();
        let (ruri, done) = (uas.uri("bob"), done.clone());
        load.push(tokio::spawn(async move {
            let opts = FlowOpts {
                timeout: Duration::from_secs(1),
                retransmit: false,
            };
            loop {
                let r = if i % 4 < 2 {
                    invite_flow(&c, &ruri, opts).await.map(|_| ())
                } else {
                    options_flow(&c, &ruri, opts).await.map(|_| ())
                };
                if r.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    assert_eventually!(
        done.load(Ordering::Relaxed) >= 200,
        Duration::from_secs(30),
        "load did not get going: {} calls",
        done.load(Ordering::Relaxed)
    );

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    let sent = Instant::now();
    let mut exited = None;
    while sent.elapsed() < GRACE + Duration::from_secs(5) {
        if let Some(s) = reap.0.as_mut().unwrap().try_wait().unwrap() {
            exited = Some((s, sent.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stderr_text = if exited.is_some() {
        reap.0 = None;
        err.join().unwrap()
    } else {
        drop(reap);
        err.join().unwrap()
    };
    let stdout_text = out.join().unwrap();
    let Some((status, took)) = exited else {
        panic!(
            "siprox still running {:?} after SIGTERM; stderr:\n{stderr_text}",
            GRACE + Duration::from_secs(5)
        );
    };
    for l in load {
        let _ = l.await;
    }
    eprintln!(
        "siprox exited {status:?} {took:?} after SIGTERM, {} calls done",
        done.load(Ordering::Relaxed)
    );
    assert!(
        took <= GRACE + Duration::from_secs(1),
        "siprox took {took:?} to exit, grace is {GRACE:?}"
    );
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr_text}"
    );
    for text in [&stderr_text, &stdout_text] {
        assert!(!text.contains("panicked"), "siprox panicked:\n{text}");
    }
}
