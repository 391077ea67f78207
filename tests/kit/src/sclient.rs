//! `openssl s_client` as a real resuming TLS client (`-sess_out` / `-sess_in`): one SIP
//! OPTIONS over a connection, and whether the handshake resumed a session. For the session
//! resumption tests, on one node or across a cluster. Test code: it may panic when openssl
//! cannot run, and waits at most 10 s for an answer.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::wire::options_to;

/// How long one run waits for siprox's answer.
const ANSWER: Duration = Duration::from_secs(10);

/// What one `s_client` run saw.
#[derive(Debug)]
pub struct Seen {
    /// The handshake resumed a session (`Reused, ...`), else it was full (`New, ...`).
    pub reused: bool,
    /// `subject=` of the certificate the session is bound to.
    pub subject: String,
    /// siprox answered the OPTIONS sent over the connection.
    pub served: bool,
}

/// Connects to `addr` with `sni` and `version` (an s_client flag: `-tls1_3`, `-tls1_2`),
/// sends an OPTIONS, waits for its 200, closes; `sess_in` offers a saved session,
/// `sess_out` saves the one this connection ends with.
pub fn s_client(
    addr: SocketAddr,
    sni: &str,
    version: &str,
    sess_in: Option<&Path>,
    sess_out: Option<&Path>,
) -> Seen {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        sni,
    ])
    .arg(version);
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client runs (package openssl)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(options_to(addr, "TLS", "resume").as_bytes())
        .expect("request written");
    // Until the 200 arrives (TLS 1.3 tickets come before it), then close: s_client sends
    // close_notify, exits, and writes -sess_out.
    let mut lines = Vec::new();
    let deadline = Instant::now() + ANSWER;
    let mut served = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                served |= l.starts_with("SIP/2.0 200");
                lines.push(l);
                if served {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    drop(stdin);
    let _ = child.wait();
    let _ = reader.join();
    lines.extend(rx.try_iter());
    Seen {
        reused: lines.iter().any(|l| l.starts_with("Reused,")),
        subject: lines
            .iter()
            .find_map(|l| l.strip_prefix("subject="))
            .unwrap_or_default()
            .to_owned(),
        served,
    }
}
