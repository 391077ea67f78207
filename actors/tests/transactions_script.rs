//! The transaction functions of route scripts beyond `t_relay()`, in a running siprox over
//! real sockets: `t_on_reply` with its `onreply_route[NAME]` (a dropped provisional, a
//! final that cannot be dropped), `t_check_trans()`, `t_newtran()` with a stateful
//! `t_reply()` and a later `t_relay()`, `t_branch_timeout()` / `t_branch_replied()` in
//! failure_route, the carrier-failover example of docs/script.md run verbatim, a TCP/TLS
//! next hop that cannot be reached failing its branch once, and the bounds: the live
//! transaction gauge back to 0 after a burst of calls (read from `/metrics` with curl, as
//! an operator would), a late 2xx retransmission relayed statelessly, and refusals at the
//! limit counted. T1 is small through `[transactions]`. Test code: may panic, but every
//! wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::caller::Caller;
use common::*;
use siprox::config::{ConfigDuration, ManagementConfig, Proto, ScriptConfig};
use siprox::proxy::Transport;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};

type Policy = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A UDP UAS that records every request and answers as its policy says.
struct Peer {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    async fn start(policy: Policy) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("SIP/2.0") {
                    continue;
                }
                g.lock().unwrap().push(m.clone());
                for r in policy(&m) {
                    let _ = sock.send_to(r.as_bytes(), from).await;
                }
            }
        });
        Peer { addr, got }
    }

    fn silent() -> Policy {
        Arc::new(|_| Vec::new())
    }

    /// Answers INVITE with each of `codes` in turn, anything else but ACK with 200.
    fn answers(codes: &'static [u16]) -> Policy {
        Arc::new(move |m| match method(m) {
            "INVITE" => codes.iter().map(|c| response_for(m, *c, 0)).collect(),
            "ACK" => vec![],
            _ => vec![response_for(m, 200, 0)],
        })
    }

    /// Rings; a CANCEL gets 200 and the INVITE 487.
    fn rings() -> Policy {
        let invite = Mutex::new(String::new());
        Arc::new(move |m| match method(m) {
            "INVITE" => {
                *invite.lock().unwrap() = m.to_owned();
                vec![response_for(m, 180, 0)]
            }
            "CANCEL" => vec![
                response_for(m, 200, 0),
                response_for(&invite.lock().unwrap(), 487, 0),
            ],
            _ => vec![],
        })
    }

    fn requests(&self, m: &str) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| method(r) == m)
            .cloned()
            .collect()
    }

    fn calls(&self, m: &str, call: &str) -> usize {
        self.requests(m)
            .iter()
            .filter(|r| header(r, "Call-ID") == Some(call))
            .count()
    }
}

/// A TCP UAS that answers every INVITE 486 on its connection (a reliable transport: the
/// branch's Timer D is zero) and counts them.
async fn tcp_busy() -> (SocketAddr, Arc<Mutex<usize>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(Mutex::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Ok(m) = read_message(&mut s, &mut buf, Duration::from_secs(30)).await {
                    if method(&m) == "INVITE" {
                        *count.lock().unwrap() += 1;
                        send(&mut s, &response_for(&m, 486, 0)).await;
                    }
                }
            });
        }
    });
    (addr, n)
}

fn method(m: &str) -> &str {
    m.split(' ').next().unwrap_or("")
}

/// The reason phrase of a response.
fn reason(m: &str) -> &str {
    m.split("\r\n")
        .next()
        .and_then(|l| l.get(12..))
        .unwrap_or("")
}

/// A configuration with the script at `scripts/tm.cfg` and T1 (T2, T4 scaled) as given.
fn tm_config(dir: &Path, script: &str, t1: Duration, max: usize) -> siprox::config::Config {
    let p = dir.join("scripts/tm.cfg");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, script).unwrap();
    let mut cfg = config(&[Proto::Udp, Proto::Tcp]);
    cfg.script = ScriptConfig {
        file: Some("scripts/tm.cfg".into()),
    };
    cfg.transactions.t1 = ConfigDuration(t1);
    cfg.transactions.t2 = ConfigDuration(t1 * 8);
    cfg.transactions.t4 = ConfigDuration(t1 * 10);
    cfg.transactions.max_transactions = max;
    cfg
}

fn start_with_script(dir: &Path, script: &str) -> siprox_actors::RuntimeHandle {
    start(
        tm_config(dir, script, Duration::from_millis(20), 100_000),
        dir,
    )
}

/// The management listener on 127.0.0.1:0 with the development certificates, and an
/// `admin` client certificate on its allow-list, for curl.
struct Mgmt {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Mgmt {
    fn enable(dir: &Path, cfg: &mut siprox::config::Config) -> Mgmt {
        let ca = dev_ca(dir);
        let certs = dir.join("certs");
        let (cert, key) = client_cert(&ca, "admin", &certs);
        cfg.management = ManagementConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            certificate: certs.join("server.pem"),
            private_key: certs.join("server.key"),
            ca_file: certs.join("ca.pem"),
            allow: vec!["admin".to_owned()],
            ..ManagementConfig::default()
        };
        Mgmt {
            ca: certs.join("ca.pem"),
            cert,
            key,
        }
    }

    /// The value of metric `name` on `GET /metrics`, through curl.
    async fn metric(&self, rt: &siprox_actors::RuntimeHandle, name: &str) -> Option<f64> {
        let url = format!("https://{}/metrics", rt.management_addr().expect("mgmt"));
        let (ca, cert, key) = (self.ca.clone(), self.cert.clone(), self.key.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "--cacert"])
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .arg(url)
                .output()
                .expect("curl runs")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

const REPLY_ROUTES: &str = r#"
route {
    if ($rU != "plain") {
        t_on_reply("CALLER");
    }
    t_relay();
}
onreply_route {
    if ($rs == 181) {
        drop;
    }
}
onreply_route[CALLER] {
    # Provisional responses the caller must not see; a final cannot be dropped.
    if ($T_reply_code == 180 || $rs == 486) {
        drop;
    }
    # $sp is the port the response came from (the callee's), not the caller's.
    if ($rs == 183 && $sp != CALLEE_PORT) {
        drop;
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_on_reply_runs_its_onreply_route_for_each_response_of_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Peer::start(Peer::answers(&[181, 180, 183, 200])).await;
    let busy = Peer::start(Peer::answers(&[180, 486])).await;
    let script = REPLY_ROUTES.replace("CALLEE_PORT", &ok.addr.port().to_string());
    let rt = start_with_script(dir.path(), &script);
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let caller = Caller::new().await;
    for (callee, user, call) in [
        (&ok, "bob", "on-reply-ok"),
        (&busy, "bob", "on-reply-busy"),
        (&ok, "plain", "on-reply-plain"),
    ] {
        let ruri = format!("sip:{user}@{}", callee.addr);
        caller
            .send(
                proxy,
                &request("INVITE", &ruri, &caller.via(), call, "", ""),
            )
            .await;
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(5),
            "{call}"
        );
    }
    // The named route dropped the 180; the main onreply_route dropped the 181 before it.
    assert_eventually!(caller.call_statuses("on-reply-ok").contains(&183));
    let ok_seen = caller.call_statuses("on-reply-ok");
    assert!(
        ok_seen.contains(&200) && !ok_seen.contains(&180),
        "{ok_seen:?}"
    );
    assert!(!ok_seen.contains(&181), "{ok_seen:?}");
    // A final response cannot be dropped: the caller gets the 486 all the same.
    // (Repeated until an ACK: the caller sends none here.)
    let busy_seen = caller.call_statuses("on-reply-busy");
    assert_eq!(busy_seen[..2], [100, 486], "{busy_seen:?}");
    assert!(busy_seen[2..].iter().all(|s| *s == 486), "{busy_seen:?}");
    // Without t_on_reply only the main onreply_route runs: the 180 goes through.
    let plain = caller.call_statuses("on-reply-plain");
    assert!(plain.contains(&180) && !plain.contains(&181), "{plain:?}");
    rt.shutdown();
}

const NEWTRAN: &str = r#"
route {
    if (is_method("ACK")) {
        # The ACK of a 2xx with its INVITE's branch: it matches that transaction.
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("CANCEL")) {
        if (!t_check_trans()) {
            sl_send_reply("481", "No Such Transaction Here");
        }
        exit;
    }
    if (t_check_trans()) {
        sl_send_reply("500", "Unexpected Transaction");
        exit;
    }
    if ($rU == "local") {
        if (!t_newtran()) {
            sl_send_reply("500", "No Transaction");
            exit;
        }
        if (t_newtran()) {
            sl_send_reply("500", "Two Transactions");
            exit;
        }
        t_reply("486", "Busy Here (stateful)");
        exit;
    }
    if ($rU == "relay") {
        t_newtran();
    }
    t_relay();
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_newtran_answers_statefully_and_t_check_trans_finds_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(dir.path(), NEWTRAN);
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let uas = Peer::start(Peer::answers(&[200])).await;
    let caller = Caller::new().await;

    // t_newtran + t_reply: 100 Trying at once, the 486 retransmitted over UDP (Timer G)
    // until the caller's ACK, and the caller's retransmission answered by the transaction.
    let ruri = format!("sip:local@{}", uas.addr);
    let invite = request("INVITE", &ruri, &caller.via(), "newtran-local", "", "");
    caller.send(proxy, &invite).await;
    assert_eventually!(
        caller
            .call_statuses("newtran-local")
            .iter()
            .filter(|s| **s == 486)
            .count()
            >= 2
    );
    let first = caller.responses("newtran-local");
    assert_eq!(status(&first[0]), Some(100), "{first:?}");
    assert_eq!(reason(&first[1]), "Busy Here (stateful)", "{first:?}");
    assert!(first.iter().all(|r| status(r) != Some(500)), "{first:?}");
    caller.send(proxy, &invite).await;
    let ack = request("ACK", &ruri, &caller.via(), "newtran-local", "", "");
    caller.send(proxy, &ack).await;
    assert_eq!(uas.calls("INVITE", "newtran-local"), 0);

    // t_newtran then t_relay: one transaction, one 100, one forward.
    let ruri = format!("sip:relay@{}", uas.addr);
    let invite = request("INVITE", &ruri, &caller.via(), "newtran-relay", "", "");
    caller.send(proxy, &invite).await;
    assert_eventually!(caller.call_statuses("newtran-relay").contains(&200));
    assert_eq!(caller.call_statuses("newtran-relay"), vec![100, 200]);
    assert_eq!(uas.calls("INVITE", "newtran-relay"), 1);
    // Its ACK (same branch as the INVITE) matches the INVITE's transaction: relayed.
    let ack = request("ACK", &ruri, &caller.via(), "newtran-relay", "", "");
    caller.send(proxy, &ack).await;
    assert_eventually!(uas.calls("ACK", "newtran-relay") == 1);

    // A CANCEL and an ACK that match nothing: t_check_trans() is false.
    let ruri = format!("sip:bob@{}", uas.addr);
    let cancel = request("CANCEL", &ruri, &caller.via(), "newtran-none", "", "");
    caller.send(proxy, &cancel).await;
    assert_eventually!(caller.final_of("newtran-none").is_some());
    let got = caller.final_of("newtran-none").unwrap();
    assert_eq!(reason(&got), "No Such Transaction Here", "{got}");
    let stray = request("ACK", &ruri, &caller.via(), "newtran-stray", "", "");
    caller.send(proxy, &stray).await;
    // An ordinary new request: no transaction yet, relayed.
    let options = request("OPTIONS", &ruri, &caller.via(), "newtran-options", "", "");
    caller.send(proxy, &options).await;
    assert_eventually!(caller.call_statuses("newtran-options") == vec![200]);
    assert_eq!(uas.calls("ACK", "newtran-stray"), 0);
    rt.shutdown();
}

const BRANCH_FACTS: &str = r#"
route {
    t_on_failure("WHY");
    setflag(7);
    if ($rU == "ring") {
        t_set_fr(300, 0);
    }
    t_relay();
}
failure_route[WHY] {
    if (t_branch_timeout()) {
        if (t_branch_replied()) {
            t_reply("480", "Timed Out Ringing $T_reply_code");
        } else {
            t_reply("480", "Timed Out Silent $T_reply_code");
        }
        exit;
    }
    if (t_branch_replied()) {
        # The flag set in the request route before t_relay() is still set here.
        if (isflag(7)) {
            t_reply("486", "Replied $T_reply_code");
        } else {
            t_reply("486", "Flag Lost");
        }
        exit;
    }
    t_reply("502", "Never Replied $T_reply_code");
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_route_tells_a_timed_out_branch_from_one_that_replied() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(dir.path(), BRANCH_FACTS);
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let silent = Peer::start(Peer::silent()).await;
    let ringing = Peer::start(Peer::rings()).await;
    let busy = Peer::start(Peer::answers(&[486])).await;
    // A TCP next hop that refuses the connection: the branch fails with a transport error.
    // A claimed port nobody binds (a released ephemeral one could be taken by a listener
    // of a test running beside this one).
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], siprox_testkit::ports::free_port()));
    let caller = Caller::new().await;
    for (ruri, call, want) in [
        (
            format!("sip:bob@{}", silent.addr),
            "why-silent",
            "480 Timed Out Silent 408",
        ),
        (
            format!("sip:ring@{}", ringing.addr),
            "why-ring",
            "480 Timed Out Ringing 408",
        ),
        (
            format!("sip:bob@{}", busy.addr),
            "why-busy",
            "486 Replied 486",
        ),
        (
            format!("sip:bob@{refused};transport=tcp"),
            "why-refused",
            "502 Never Replied 503",
        ),
    ] {
        caller
            .send(
                proxy,
                &request("INVITE", &ruri, &caller.via(), call, "", ""),
            )
            .await;
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(5),
            "{call}"
        );
        let got = caller.final_of(call).unwrap();
        assert_eq!(
            got.split("\r\n").next(),
            Some(&*format!("SIP/2.0 {want}")),
            "{call}"
        );
    }
    rt.shutdown();
}

/// The carrier-failover example of docs/script.md, as printed there.
fn documented_failover() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/script.md")).unwrap();
    let start = doc
        .find("Carrier failover")
        .expect("docs/script.md has the carrier-failover example");
    let block = &doc[start..];
    let open = block.find("```cfg\n").expect("its cfg block") + "```cfg\n".len();
    let len = block[open..].find("```").expect("the block ends");
    block[open..open + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_carrier_failover_tries_the_next_carrier_on_5xx_and_timeouts() {
    let example = documented_failover();
    assert!(example.contains("192.0.2.10:5060") && example.contains("198.51.100.20:5060"));
    for (a_policy, call, want_b) in [
        (Peer::answers(&[503]), "carrier-503", true),
        (Peer::silent(), "carrier-timeout", true),
        (Peer::answers(&[486]), "carrier-busy", false),
    ] {
        let a = Peer::start(a_policy).await;
        let b = Peer::start(Peer::answers(&[200])).await;
        // Only the carriers' addresses change: the documentation's are not reachable.
        let script = example
            .replace("192.0.2.10:5060", &a.addr.to_string())
            .replace("198.51.100.20:5060", &b.addr.to_string());
        let dir = tempfile::tempdir().unwrap();
        let rt = start_with_script(dir.path(), &script);
        let proxy = rt.local_addr(Transport::Udp).unwrap();
        let caller = Caller::new().await;
        let invite = request(
            "INVITE",
            "sip:+15551234567@carrier.invalid",
            &caller.via(),
            call,
            "",
            "",
        );
        caller.send(proxy, &invite).await;
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(8),
            "{call}"
        );
        let got = status(&caller.final_of(call).unwrap());
        assert_eq!(a.calls("INVITE", call).min(1), 1, "{call}: carrier A first");
        if want_b {
            assert_eq!(got, Some(200), "{call}");
            assert_eq!(b.calls("INVITE", call), 1, "{call}");
        } else {
            assert_eq!(got, Some(486), "{call}");
            assert_eq!(b.calls("INVITE", call), 0, "{call}");
        }
        rt.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_stream_next_hop_fails_its_branch_and_the_caller_gets_one_500() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(dir.path(), "route { t_relay(); }\n");
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    // One next hop refuses the TCP connection, the other accepts it and closes it at
    // once (a TLS handshake that dies before any answer).
    // A claimed port nobody binds (a released ephemeral one could be taken by a listener
    // of a test running beside this one).
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], siprox_testkit::ports::free_port()));
    let dies = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dies_addr = dies.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dies.accept().await {
            let _ = s.shutdown().await;
        }
    });
    let caller = Caller::new().await;
    for (ruri, call) in [
        (
            format!("sip:bob@{refused};transport=tcp"),
            "unreachable-tcp",
        ),
        (format!("sips:bob@{dies_addr}"), "unreachable-tls"),
    ] {
        caller
            .send(
                proxy,
                &request("INVITE", &ruri, &caller.via(), call, "", ""),
            )
            .await;
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(5),
            "{call}"
        );
        // §16.7 step 6: the branch's 503 (a transport error) goes to the caller as 500,
        // and only once: the connection's own 503 is not sent as well.
        let finals: Vec<u16> = caller
            .call_statuses(call)
            .into_iter()
            .filter(|s| *s >= 200)
            .collect();
        assert_eq!(finals, vec![500], "{call}");
    }
    // A next hop that reads the request and then closes the connection without an answer:
    // the request left, and the callee could still answer over a new connection (RFC 3261
    // §18.2.2), so the branch waits for Timer B (64*T1) and the caller gets 408.
    let reads = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reads_addr = reads.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = reads.accept().await {
            let mut buf = Vec::new();
            let _ = read_message(&mut s, &mut buf, Duration::from_secs(5)).await;
            let _ = s.shutdown().await;
        }
    });
    let ruri = format!("sip:bob@{reads_addr};transport=tcp");
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "closed-after-read", "", ""),
        )
        .await;
    assert_eventually!(
        caller.final_of("closed-after-read").is_some(),
        Duration::from_secs(5)
    );
    let finals: Vec<u16> = caller
        .call_statuses("closed-after-read")
        .into_iter()
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(finals, vec![408]);

    // Another call afterwards still gets exactly one final answer.
    let ruri = format!("sip:bob@{refused};transport=tcp");
    caller
        .send(
            proxy,
            &request(
                "OPTIONS",
                &ruri,
                &caller.via(),
                "unreachable-options",
                "",
                "",
            ),
        )
        .await;
    assert_eventually!(caller.call_statuses("unreachable-options") == vec![500]);
    rt.shutdown();
}

const BURST: &str = r#"
route {
    if ($rU == "quick") {
        t_set_fr(0, 300);
    }
    t_relay();
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_of_calls_no_transaction_is_left_and_a_late_2xx_is_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tm_config(dir.path(), BURST, Duration::from_millis(10), 100_000);
    let mgmt = Mgmt::enable(dir.path(), &mut cfg);
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let gauge = "siprox_transactions";
    assert_eq!(mgmt.metric(&rt, gauge).await, Some(0.0));
    let ok = Peer::start(Peer::answers(&[180, 200])).await;
    let (busy, busy_calls) = tcp_busy().await;
    let silent = Peer::start(Peer::silent()).await;
    let caller = Caller::new().await;

    let mut calls = Vec::new();
    for i in 0..8 {
        calls.push((format!("sip:bob@{}", ok.addr), format!("burst-ok-{i}")));
    }
    for i in 0..3 {
        calls.push((
            format!("sip:bob@{busy};transport=tcp"),
            format!("burst-busy-{i}"),
        ));
    }
    calls.push((
        format!("sip:quick@{}", silent.addr),
        "burst-timeout".to_owned(),
    ));
    for (ruri, call) in &calls {
        caller
            .send(proxy, &request("INVITE", ruri, &caller.via(), call, "", ""))
            .await;
    }
    // Non-INVITE transactions too (Timers J and K).
    let options = format!("sip:bob@{}", ok.addr);
    for i in 0..3 {
        let call = format!("burst-options-{i}");
        caller
            .send(
                proxy,
                &request("OPTIONS", &options, &caller.via(), &call, "", ""),
            )
            .await;
    }
    // Seen while the silent branch waits for its Timer B (64*T1 = 1.28 s): the requests
    // may still be on their way to the worker when the first curl asks.
    assert_eventually!(
        mgmt.metric(&rt, gauge).await.unwrap_or(0.0) > 0.0,
        Duration::from_secs(1)
    );
    for (ruri, call) in &calls {
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(5),
            "{call}: {:?}, busy got {}",
            caller.call_statuses(call),
            busy_calls.lock().unwrap()
        );
        // Every final is acknowledged (the 2xx end to end, the others hop by hop).
        let ack = request("ACK", ruri, &caller.via(), call, "", "");
        caller.send(proxy, &ack).await;
    }
    assert_eq!(
        status(&caller.final_of("burst-timeout").unwrap()),
        Some(408)
    );
    assert_eq!(status(&caller.final_of("burst-busy-0").unwrap()), Some(486));
    assert_eventually!(ok.requests("ACK").len() == 8);
    for i in 0..3 {
        assert_eventually!(caller.call_statuses(&format!("burst-options-{i}")) == vec![200]);
    }
    assert_eq!(*busy_calls.lock().unwrap(), 3);
    // Timers D, I, J, K, L, M all ran out: nothing is kept.
    assert_eventually!(
        mgmt.metric(&rt, gauge).await == Some(0.0),
        Duration::from_secs(10)
    );

    // The UAS retransmits its 200 now that the INVITE's transactions are gone: siprox
    // relays it statelessly to the caller (RFC 3261 §16.7 step 10, RFC 6026).
    let invite = ok
        .requests("INVITE")
        .into_iter()
        .find(|r| header(r, "Call-ID") == Some("burst-ok-0"))
        .unwrap();
    let before = caller
        .call_statuses("burst-ok-0")
        .iter()
        .filter(|s| **s == 200)
        .count();
    let uas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    uas.send_to(response_for(&invite, 200, 0).as_bytes(), proxy)
        .await
        .unwrap();
    assert_eventually!(
        caller
            .call_statuses("burst-ok-0")
            .iter()
            .filter(|s| **s == 200)
            .count()
            == before + 1
    );
    assert_eq!(mgmt.metric(&rt, gauge).await, Some(0.0));
    assert_eq!(
        mgmt.metric(&rt, "siprox_transactions_refused_total").await,
        Some(0.0)
    );
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_at_the_transaction_limit_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Two per worker: one call's server and client transaction.
    let mut cfg = tm_config(
        dir.path(),
        "route { t_relay(); }\n",
        Duration::from_millis(500),
        2,
    );
    let mgmt = Mgmt::enable(dir.path(), &mut cfg);
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let uas = Peer::start(Peer::silent()).await;
    // One caller socket: every call lands on the same worker.
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", uas.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "full-1", "", ""),
        )
        .await;
    assert_eventually!(caller.call_statuses("full-1") == vec![100]);
    for call in ["full-2", "full-3"] {
        caller
            .send(
                proxy,
                &request("INVITE", &ruri, &caller.via(), call, "", ""),
            )
            .await;
        assert_eventually!(caller.final_of(call).is_some());
        let got = caller.final_of(call).unwrap();
        assert_eq!(status(&got), Some(503), "{got}");
        assert!(header(&got, "Retry-After").is_some(), "{got}");
    }
    assert_eq!(
        mgmt.metric(&rt, "siprox_transactions_refused_total").await,
        Some(2.0)
    );
    assert_eq!(mgmt.metric(&rt, "siprox_transactions").await, Some(2.0));
    rt.shutdown();
}

const NEWTRAN_UNANSWERED: &str = r#"
route {
    if (is_method("ACK")) {
        exit;
    }
    t_newtran();
    if ($rU == "stateless") {
        sl_send_reply("404", "Not Here (stateless)");
        exit;
    }
    if ($rU == "forward") {
        forward();
        exit;
    }
    if ($rU == "drop") {
        drop;
    }
    # "nothing": the route ends without a reply
}
"#;

/// A transaction made by `t_newtran()` that the route never answered through: answered 500
/// at once when the route sent nothing, released when it answered, forwarded or dropped
/// the request statelessly (one answer, not two); either way the live-transactions gauge
/// returns to 0 within Timer H/J (64*T1 = 1.28 s here), not after the ~6 min guard timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_t_newtran_transaction_the_route_never_answers_is_not_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tm_config(
        dir.path(),
        NEWTRAN_UNANSWERED,
        Duration::from_millis(20),
        100_000,
    );
    let mgmt = Mgmt::enable(dir.path(), &mut cfg);
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let gauge = "siprox_transactions";
    let uas = Peer::start(Peer::answers(&[200])).await;
    let caller = Caller::new().await;
    for (method, user, call, want) in [
        (
            "INVITE",
            "nothing",
            "unanswered-invite",
            Some("500 Server Internal Error (script did not reply)"),
        ),
        (
            "OPTIONS",
            "nothing",
            "unanswered-options",
            Some("500 Server Internal Error (script did not reply)"),
        ),
        (
            "INVITE",
            "stateless",
            "unanswered-sl",
            Some("404 Not Here (stateless)"),
        ),
        ("OPTIONS", "forward", "unanswered-fwd", Some("200 OK")),
        ("INVITE", "drop", "unanswered-drop", None),
    ] {
        let ruri = format!("sip:{user}@{}", uas.addr);
        caller
            .send(proxy, &request(method, &ruri, &caller.via(), call, "", ""))
            .await;
        match want {
            Some(want) => {
                assert_eventually!(caller.final_of(call).is_some(), Duration::from_secs(5));
                let got = caller.final_of(call).unwrap();
                assert_eq!(
                    got.split("\r\n").next(),
                    Some(&*format!("SIP/2.0 {want}")),
                    "{call}"
                );
            }
            None => assert_eventually!(caller.call_statuses(call) == vec![100]),
        }
        if method == "INVITE" {
            let ack = request("ACK", &ruri, &caller.via(), call, "", "");
            caller.send(proxy, &ack).await;
        }
    }
    assert_eventually!(
        mgmt.metric(&rt, gauge).await == Some(0.0),
        Duration::from_secs(10)
    );
    // One answer each: the stateless ones were not answered a second time.
    for call in ["unanswered-sl", "unanswered-fwd"] {
        let finals: Vec<u16> = caller
            .call_statuses(call)
            .into_iter()
            .filter(|s| *s >= 200)
            .collect();
        assert_eq!(finals.len(), 1, "{call}: {finals:?}");
    }
    assert_eq!(caller.call_statuses("unanswered-drop"), vec![100]);
    rt.shutdown();
}

/// `$avp`s live with the transaction (as Kamailio's): set in the request route, read in
/// failure_route to pick where the call goes next (voicemail on busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avps_set_in_the_request_route_are_read_in_failure_route() {
    let busy = Peer::start(Peer::answers(&[486])).await;
    let vm = Peer::start(Peer::answers(&[200])).await;
    let script = format!(
        r#"route {{
    $avp(vm) = "sip:voicemail@{vm}";
    t_on_failure("VM");
    t_relay();
}}
failure_route[VM] {{
    if (t_check_status("486") && $avp(vm) != $null) {{
        $ru = $avp(vm);
        t_relay();
    }}
}}
"#,
        vm = vm.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(dir.path(), &script);
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", busy.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "avp-vm", "", ""),
        )
        .await;
    assert_eventually!(caller.final_of("avp-vm").is_some(), Duration::from_secs(5));
    let got = caller.final_of("avp-vm").unwrap();
    assert!(got.starts_with("SIP/2.0 200 "), "{got}");
    rt.shutdown();
}

/// A request whose Request-URI domain has its own script: that script's `t_on_reply` and
/// `t_on_failure` routes run for its transaction, not the default script's routes of the
/// same names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_scripts_reply_and_failure_routes_run_for_its_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let callee = Peer::start(Peer::answers(&[180, 503])).await;
    let routes = |name: &str, drop_180: bool, code: u16| {
        format!(
            "route {{\n  $du = \"sip:{callee}\";\n  t_on_reply(\"R\");\n  t_on_failure(\"F\");\n  t_relay();\n}}\n\
             onreply_route[R] {{\n  if ({drop_180} && $rs == 180) {{ drop; }}\n}}\n\
             failure_route[F] {{\n  t_reply(\"{code}\", \"failure route of {name}\");\n}}\n",
            callee = callee.addr,
        )
    };
    let mut cfg = tm_config(
        dir.path(),
        &routes("default", false, 598),
        Duration::from_millis(20),
        100_000,
    );
    let a = dir.path().join("scripts/a.cfg");
    std::fs::write(&a, routes("a", true, 599)).unwrap();
    cfg.domains.insert(
        "a".into(),
        siprox::config::DomainConfig {
            names: vec!["a.example".into()],
            script: Some("scripts/a.cfg".into()),
            ..siprox::config::DomainConfig::default()
        },
    );
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(Transport::Udp).unwrap();
    let caller = Caller::new().await;
    for (ruri, call, want, sees_180) in [
        (
            "sip:bob@a.example",
            "dom-a",
            "599 failure route of a",
            false,
        ),
        (
            "sip:bob@b.example",
            "dom-default",
            "598 failure route of default",
            true,
        ),
    ] {
        caller
            .send(proxy, &request("INVITE", ruri, &caller.via(), call, "", ""))
            .await;
        assert_eventually!(
            caller.final_of(call).is_some(),
            Duration::from_secs(5),
            "{call}"
        );
        let got = caller.final_of(call).unwrap();
        assert_eq!(
            got.split("\r\n").next(),
            Some(&*format!("SIP/2.0 {want}")),
            "{call}"
        );
        assert_eq!(
            caller.call_statuses(call).contains(&180),
            sees_180,
            "{call}: {:?}",
            caller.call_statuses(call)
        );
        assert_eq!(callee.calls("INVITE", call), 1, "{call}");
    }
    rt.shutdown();
}
