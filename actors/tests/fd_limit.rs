//! The open-file limit, against the real `siprox` binary started under a low limit
//! (`ulimit` in a shell that then execs it): the soft limit raised to what
//! `max_connections` needs, one WARN with the numbers when the hard limit is too low, and,
//! out of descriptors, new clients closed at once (not left in the backlog) with a bounded
//! number of WARN lines. Must never depend on the caller's SIPROX_ environment.
#![forbid(unsafe_code)]

use std::io::{BufRead as _, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: u64 = 1000;

/// siprox run by `bash -c '<ulimit>; exec siprox -c <conf>'`, its stderr collected.
struct Siprox {
    child: Child,
    log: Arc<Mutex<String>>,
    lines: Receiver<()>,
}

impl Siprox {
    fn start(ulimit: &str, conf: &Path) -> Siprox {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("{ulimit} && exec \"$0\" -c \"$1\""))
            .arg(env!("CARGO_BIN_EXE_siprox"))
            .arg(conf);
        for (key, _) in std::env::vars_os() {
            if key
                .to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("SIPROX_")
            {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn siprox");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                let _ = tx.send(());
            }
        });
        Siprox { child, log, lines }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log holds a line with `needle`; returns that line.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.lines.recv_timeout(left).is_err() {
                panic!("no log line with {needle:?}:\n{}", self.log());
            }
        }
    }

    /// The TCP address from the `listening` line.
    fn tcp_addr(&self) -> SocketAddr {
        let line = self.wait_for("transport=TCP");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr in {line:?}"));
        addr.parse().expect("listening address")
    }

    /// (soft, hard) "Max open files" of the running process.
    fn nofile(&self) -> (String, String) {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files line");
        let mut w = line.split_whitespace().skip(3);
        (
            w.next().expect("soft").to_owned(),
            w.next().expect("hard").to_owned(),
        )
    }
}

impl Drop for Siprox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conf_dir(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("conf.d");
    std::fs::create_dir(&conf).expect("conf.d");
    std::fs::write(
        conf.join("00-core.toml"),
        format!(
            "[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
             [runtime]\nworkers = 1\n\
             [connections]\nmax_connections = {MAX_CONNECTIONS}\nmax_connections_per_ip = 0\n\
             [log]\nlevel = \"info\"\n"
        ),
    )
    .expect("write config");
    conf
}

/// The hard open-file limit of this process.
fn own_hard_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    match line.split_whitespace().nth(4) {
        Some("unlimited") => u64::MAX,
        Some(n) => n.parse().expect("hard limit"),
        None => panic!("no hard limit in {line:?}"),
    }
}

#[test]
fn a_low_soft_limit_is_raised_to_what_max_connections_needs() {
    let hard = own_hard_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = conf_dir(dir.path());
    let siprox = Siprox::start("ulimit -Sn 64", &conf);
    siprox.tcp_addr();
    let (soft, _) = siprox.nofile();
    // max_connections, one TCP listener and its reserve descriptor, the margin.
    let needed = MAX_CONNECTIONS + 2 + 256;
    if hard >= needed {
        assert_eq!(soft, needed.to_string(), "{}", siprox.log());
        assert!(
            siprox.log().contains("raised the open-file limit"),
            "{}",
            siprox.log()
        );
    } else {
        // This machine's own hard limit is lower: then siprox must say so.
        siprox.wait_for(&format!("needed={needed}"));
        assert_eq!(soft, hard.to_string(), "{}", siprox.log());
    }
}

#[test]
fn a_low_hard_limit_is_warned_about_and_clients_past_it_are_refused_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = conf_dir(dir.path());
    let siprox = Siprox::start("ulimit -n 64", &conf);
    let addr = siprox.tcp_addr();
    let warn = siprox.wait_for("open-file limit too low");
    assert!(warn.contains("WARN"), "{warn}");
    for number in [
        "needed=1258",
        "soft=64",
        "hard=64",
        "LimitNOFILE=",
        "ulimit -n",
    ] {
        assert!(warn.contains(number), "{number} missing from {warn}");
    }
    assert_eq!(siprox.nofile(), ("64".to_owned(), "64".to_owned()));

    // Far more clients than siprox has descriptors: the kernel completes their TCP
    // handshakes into the backlog whatever siprox does.
    const CLIENTS: usize = 150;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = TcpStream::connect(addr).expect("connect");
        c.set_nonblocking(true).expect("nonblocking");
        clients.push(c);
    }
    // siprox holds at most 64 descriptors: at least CLIENTS - 64 must be closed by it, soon
    // (before the fix they waited in the backlog, open, until they gave up).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = [false; CLIENTS];
    loop {
        for (c, done) in clients.iter_mut().zip(closed.iter_mut()) {
            if *done {
                continue;
            }
            let mut b = [0u8; 16];
            match c.read(&mut b) {
                Ok(0) => *done = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A reset is a refusal too.
                Err(_) => *done = true,
                Ok(_) => {}
            }
        }
        let n = closed.iter().filter(|c| **c).count();
        if n >= CLIENTS - 64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {CLIENTS} clients were closed at the fd limit:\n{}",
            siprox.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = siprox.wait_for("out of file descriptors");
    assert!(refused.contains("WARN"), "{refused}");
    // Every refusal counted, few lines logged: one per interval (the test takes far less
    // than two intervals), plus the start-up WARN.
    let log = siprox.log();
    let limit_lines = log
        .lines()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(
        (1..=2).contains(&limit_lines),
        "{limit_lines} lines:\n{log}"
    );
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(warns <= 4, "{warns} WARN lines:\n{log}");
    drop(clients);
}
