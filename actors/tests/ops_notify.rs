//! systemd's service notifications, seen by a fake `$NOTIFY_SOCKET` as systemd would see them
//! from the real `siprox` binary: `READY=1` only once the listeners accept (a SIP request
//! over TCP sent the moment it arrives is answered), `STATUS=` with connections and
//! registrations, `RELOADING=1` then `READY=1` around a SIGHUP, `STOPPING=1` on SIGTERM,
//! and `WATCHDOG=1` pings that stop while a worker is stuck (here on a blocked log write:
//! its stderr pipe is full, as with a wedged log reader) and resume once it is not.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::inproc::{free_ports, write_conf_d, Options};
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::Pki;
use siprox_testkit::ua::{options_flow, Client, FlowOpts, Transport};

/// `WatchdogSec=` as the test's "systemd" sets it.
const WATCHDOG: Duration = Duration::from_millis(600);

/// Kills the child if the test fails before it exited.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What arrived on the fake notify socket, in order, with when.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(Instant, String)>>>);

impl Received {
    fn listen(path: &Path) -> Received {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        let got = Received::default();
        let out = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Ok(mut v) = out.0.lock() else { return };
                v.push((Instant::now(), msg));
            }
        });
        got
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The index of the first message at or after `from` that has the line `line`.
    fn find(&self, from: usize, line: &str) -> Option<usize> {
        self.all()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (_, m))| m.lines().any(|l| l == line))
            .map(|(i, _)| i)
    }

    fn last_watchdog(&self) -> Option<Instant> {
        self.all()
            .iter()
            .rev()
            .find(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| *t)
    }

    fn watchdogs(&self) -> usize {
        self.all()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }
}

fn drain(mut r: ChildStderr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// siprox with `workers` workers and `[log] level`, its notifications on a fake socket.
fn start(
    dir: &Path,
    pki: &Pki,
    workers: usize,
    level: &str,
) -> (Reap, Received, [std::net::SocketAddr; 3]) {
    let addrs = free_ports();
    let opts = Options {
        workers,
        shutdown_grace: Duration::from_secs(2),
        ..Options::default()
    };
    let conf = write_conf_d(dir, pki, &opts, addrs);
    let socket = dir.join("notify.sock");
    let got = Received::listen(&socket);
    let child = common::siprox_command()
        .arg("-c")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env("SIPROX_LOG__LEVEL", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn siprox");
    (Reap(child), got, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_listeners_accept_reloading_around_sighup_stopping_on_sigterm() {
    let pki = Pki::new();
    let (mut child, got, [udp, tcp, _tls]) = start(pki.dir.path(), &pki, 2, "info");
    let pid = child.0.id();
    let err = drain(child.0.stderr.take().expect("stderr"));

    assert_eventually!(
        got.find(0, "READY=1").is_some() || child.0.try_wait().ok().flatten().is_some(),
        Duration::from_secs(30),
        "no READY=1"
    );
    let ready = got.find(0, "READY=1").expect("READY=1 (siprox exited)");
    // Sent the moment READY=1 arrived: accepted and answered, over TCP and UDP.
    let quick = FlowOpts {
        timeout: Duration::from_secs(5),
        retransmit: false,
    };
    for (t, addr) in [(Transport::Tcp, tcp), (Transport::Udp, udp)] {
        let c = Client::connect(t, addr, None)
            .await
            .expect("connect after READY=1");
        options_flow(&c, &format!("sip:{addr}"), quick)
            .await
            .expect("OPTIONS answered after READY=1");
    }
    let first = &got.all()[ready].1;
    assert!(
        first.lines().any(|l| l.starts_with("STATUS=")
            && l.contains("connections")
            && l.contains("registrations")),
        "{first}"
    );
    // The watchdog: pings keep coming while the workers answer.
    assert_eventually!(
        got.watchdogs() >= 3,
        Duration::from_secs(10),
        "no WATCHDOG=1 pings"
    );

    // SIGHUP: RELOADING=1, then READY=1 once the reload is done.
    let before = got.all().len();
    signal(pid, "-HUP");
    assert_eventually!(
        got.find(before, "RELOADING=1")
            .and_then(|r| got.find(r + 1, "READY=1"))
            .is_some(),
        Duration::from_secs(20),
        "no RELOADING=1 then READY=1 after SIGHUP: {:?}",
        got.all()
    );

    // SIGTERM: STOPPING=1, and a clean exit.
    let before = got.all().len();
    signal(pid, "-TERM");
    assert_eventually!(
        got.find(before, "STOPPING=1").is_some(),
        Duration::from_secs(10),
        "no STOPPING=1: {:?}",
        got.all()
    );
    assert_eventually!(
        child.0.try_wait().ok().flatten().is_some(),
        Duration::from_secs(20),
        "siprox did not exit"
    );
    let status = child.0.wait().expect("wait");
    let log = err.join().unwrap_or_default();
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_a_worker_is_stuck_and_resume_after() {
    let pki = Pki::new();
    // One worker; every unparsable datagram is a debug log line on its thread.
    let (mut child, got, [udp, _tcp, _tls]) = start(pki.dir.path(), &pki, 1, "debug");
    let stderr = child.0.stderr.take().expect("stderr");
    assert_eventually!(
        got.find(0, "READY=1").is_some() || child.0.try_wait().ok().flatten().is_some(),
        Duration::from_secs(30),
        "no READY=1"
    );
    assert_eventually!(
        got.watchdogs() >= 2,
        Duration::from_secs(10),
        "no WATCHDOG=1 pings"
    );

    // Nobody reads siprox's stderr now: once the pipe is full, the worker's next log write
    // blocks, and so does the worker. Garbage datagrams until the pings stop (bounded).
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let line = vec![b'x'; 512];
    let quiet = |got: &Received| {
        got.last_watchdog()
            .is_some_and(|t| t.elapsed() > WATCHDOG * 3)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0u32;
    while !quiet(&got) && Instant::now() < deadline {
        if sent < 20_000 {
            let _ = junk.send_to(&line, udp);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        quiet(&got),
        "WATCHDOG=1 kept coming with the worker stuck ({sent} datagrams sent)"
    );
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "siprox exited"
    );

    // The log reader is back: the worker goes on, and so do the pings.
    let n = got.watchdogs();
    let _err = drain(stderr);
    assert_eventually!(
        got.watchdogs() > n,
        Duration::from_secs(20),
        "WATCHDOG=1 did not resume"
    );
}
