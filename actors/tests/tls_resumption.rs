//! TLS session resumption, probed with the OpenSSL command-line client (`openssl s_client
//! -sess_out/-sess_in`, a real resuming client): a returning client resumes on the domain
//! that issued its session, never on another tenant's (which would skip that tenant's
//! certificate and client-certificate policy), and `session_resumption = false` means
//! full handshakes. TLS 1.3 (tickets) and TLS 1.2 (tickets or session ids).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::options_to;
use common::tree::Tree;
use siprox::proxy::Transport;
use siprox_actors::state::messages::ReloadOutcome;

const T: Duration = Duration::from_secs(10);

/// What one `s_client` run saw.
#[derive(Debug)]
struct Seen {
    /// The handshake resumed a session (`Reused, ...`), else it was full (`New, ...`).
    reused: bool,
    /// `subject=` of the certificate the session is bound to.
    subject: String,
    /// siprox answered the OPTIONS sent over the connection.
    served: bool,
}

/// Connects with `sni`, sends an OPTIONS, waits for its 200, closes; `sess_in` offers a
/// saved session, `sess_out` saves the one this connection ends with.
fn s_client(
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
    let deadline = Instant::now() + T;
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

/// Tenants on one listener: `a` and `b` resuming (the default), `c` not.
fn two_tenants() -> Tree {
    let t = Tree::new("");
    t.server_domain("a", "");
    t.server_domain("b", "");
    t.server_domain("c", "session_resumption = false\n");
    t
}

fn resumes_only_on_its_own_domain(version: &str) {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let sess = t.path("a.sess");

    let first = s_client(addr, "a.example", version, None, Some(&sess));
    assert!(first.served && !first.reused, "{first:?}");
    assert!(first.subject.contains("a.example"), "{first:?}");

    let again = s_client(addr, "a.example", version, Some(&sess), None);
    assert!(again.served, "{again:?}");
    assert!(again.reused, "a returning client resumes: {again:?}");

    // The same session offered to another tenant: a full handshake with that tenant's
    // certificate, never a resumption of a.example's session.
    let other = s_client(addr, "b.example", version, Some(&sess), None);
    assert!(other.served, "{other:?}");
    assert!(!other.reused, "a session crossed tenants: {other:?}");
    assert!(other.subject.contains("b.example"), "{other:?}");
    rt.shutdown();
}

#[test]
fn tls13_resumes_only_on_its_own_domain() {
    resumes_only_on_its_own_domain("-tls1_3");
}

#[test]
fn tls12_resumes_only_on_its_own_domain() {
    resumes_only_on_its_own_domain("-tls1_2");
}

#[test]
fn session_resumption_false_means_full_handshakes() {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t.path(&format!("c{version}.sess"));
        let first = s_client(addr, "c.example", version, None, Some(&sess));
        assert!(first.served && !first.reused, "{version}: {first:?}");
        // s_client saves a session only when the server made it resumable (a ticket, or a
        // session id it caches); the other tests show it does save resumable ones.
        assert!(
            !sess.exists(),
            "{version}: siprox handed out a resumable session though resumption is off"
        );
    }
    rt.shutdown();
}

/// Turning `session_resumption` off by a reload also ends the sessions issued before.
#[test]
fn sessions_issued_before_resumption_was_turned_off_do_not_resume() {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut saved = Vec::new();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t.path(&format!("a{version}.sess"));
        let first = s_client(addr, "a.example", version, None, Some(&sess));
        assert!(first.served && !first.reused, "{version}: {first:?}");
        let again = s_client(addr, "a.example", version, Some(&sess), None);
        assert!(again.reused, "{version}: resumes while enabled: {again:?}");
        saved.push((version, sess));
    }
    t.domain(
        "a",
        "[domains.a]\n[domains.a.server]\nsni = [\"a.example\"]\n\
         certificate = \"certs/a.pem\"\nprivate_key = \"certs/a.key\"\n\
         session_resumption = false\n",
    );
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(rt.reload());
    assert!(
        matches!(&outcome, ReloadOutcome::Published { changed, .. } if changed.iter().any(|d| d == "a")),
        "{outcome:?}"
    );
    for (version, sess) in saved {
        let after = s_client(addr, "a.example", version, Some(&sess), None);
        assert!(after.served, "{version}: {after:?}");
        assert!(
            !after.reused,
            "{version}: an old session resumed: {after:?}"
        );
    }
    rt.shutdown();
}
