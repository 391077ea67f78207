//! Transaction-stateful relaying (`t_relay()`) in a running siprox over real UDP sockets:
//! 100 Trying, the caller's retransmissions absorbed, Timer A/B and E/F toward a silent
//! UAS, `t_set_fr`, failure_route to a voicemail UAS on 486 and 408 (not on 6xx), and
//! CANCEL. T1 is set small through `[transactions]` so that the timers run in a second.
//! Test code: may panic, but every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use siprox::config::{ConfigDuration, Proto, ScriptConfig};
use tokio::net::UdpSocket;

type Policy = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A UDP UAS that records every request and answers as its policy says.
struct Peer {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    async fn start(policy: Policy) -> Peer {
        Peer::start_with(policy, false).await
    }

    /// `fresh`: every response leaves from a new socket (a new source port), so that the
    /// kernel spreads them over siprox's workers.
    async fn start_with(policy: Policy, fresh: bool) -> Peer {
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
                    if fresh {
                        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                        let _ = s.send_to(r.as_bytes(), from).await;
                    } else {
                        let _ = sock.send_to(r.as_bytes(), from).await;
                    }
                }
            }
        });
        Peer { addr, got }
    }

    fn silent() -> Policy {
        Arc::new(|_| Vec::new())
    }

    /// Answers INVITE with `code`, anything else but ACK with 200.
    fn answers(code: u16) -> Policy {
        Arc::new(move |m| match method(m) {
            "INVITE" => vec![response_for(m, code, 0)],
            "ACK" => vec![],
            _ => vec![response_for(m, 200, 0)],
        })
    }

    /// Rings; a CANCEL gets 200 and the INVITE 487 (built from the INVITE, as a UAS does).
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
}

fn method(m: &str) -> &str {
    m.split(' ').next().unwrap_or("")
}

fn branch(m: &str) -> String {
    header(m, "Via")
        .and_then(|v| v.split("branch=").nth(1))
        .map(|b| b.split(';').next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// A caller's socket and what it received.
struct Caller {
    sock: Arc<UdpSocket>,
    got: Arc<Mutex<Vec<String>>>,
}

impl Caller {
    async fn new() -> Caller {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (sock.clone(), got.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        Caller { sock, got }
    }

    fn via(&self) -> String {
        format!("UDP {}", self.sock.local_addr().unwrap())
    }

    async fn send(&self, to: SocketAddr, m: &str) {
        self.sock.send_to(m.as_bytes(), to).await.unwrap();
    }

    /// Statuses received for `cseq_method` so far, in order.
    fn statuses(&self, cseq_method: &str) -> Vec<u16> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| header(r, "CSeq").is_some_and(|c| c.ends_with(cseq_method)))
            .filter_map(|r| status(r))
            .collect()
    }
}

fn start_with_script(dir: &Path, script: &str, t1: Duration) -> siprox_actors::RuntimeHandle {
    start_with(dir, script, t1, 100_000)
}

fn start_with(
    dir: &Path,
    script: &str,
    t1: Duration,
    max_transactions: usize,
) -> siprox_actors::RuntimeHandle {
    let p = dir.join("scripts/tm.cfg");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, script).unwrap();
    let mut cfg = config(&[Proto::Udp, Proto::Tcp]);
    cfg.script = ScriptConfig {
        file: Some("scripts/tm.cfg".into()),
    };
    cfg.transactions.t1 = ConfigDuration(t1);
    cfg.transactions.t2 = ConfigDuration(t1 * 8);
    cfg.transactions.max_transactions = max_transactions;
    start(cfg, dir)
}

const RELAY: &str = "route { if ($rU == \"quick\") { t_set_fr(0, 300); } t_relay(); }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_to_a_silent_uas_is_retransmitted_and_times_out_with_one_forward() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(dir.path(), RELAY, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let uas = Peer::start(Peer::silent()).await;
    let caller = Caller::new().await;
    let invite = request(
        "INVITE",
        &format!("sip:bob@{}", uas.addr),
        &caller.via(),
        "tm-silent",
        "",
        "",
    );
    caller.send(proxy, &invite).await;
    assert_eventually!(caller.statuses("INVITE").first() == Some(&100));
    // The caller retransmits: absorbed, answered with the 100 again, never forwarded anew.
    caller.send(proxy, &invite).await;
    caller.send(proxy, &invite).await;
    // Timer A: the proxy retransmits to the silent UAS, always the same branch.
    assert_eventually!(uas.requests("INVITE").len() >= 4);
    // Timer B (64*T1 = 1.28 s): 408 to the caller.
    assert_eventually!(caller.statuses("INVITE").contains(&408));
    let invites = uas.requests("INVITE");
    let first = branch(&invites[0]);
    assert!(first.starts_with("z9hG4bK-sxt"), "{first}");
    assert!(
        invites.iter().all(|i| branch(i) == first),
        "one forward, retransmitted: {invites:?}"
    );
    assert!(
        caller
            .statuses("INVITE")
            .iter()
            .filter(|s| **s == 100)
            .count()
            >= 2
    );

    // Non-INVITE: no 100, Timer E retransmissions, 408 at Timer F.
    let options = request(
        "OPTIONS",
        &format!("sip:bob@{}", uas.addr),
        &caller.via(),
        "tm-silent-options",
        "",
        "",
    );
    caller.send(proxy, &options).await;
    assert_eventually!(uas.requests("OPTIONS").len() >= 4);
    assert_eventually!(caller.statuses("OPTIONS") == vec![408]);
    let opts = uas.requests("OPTIONS");
    assert!(opts.iter().all(|o| branch(o) == branch(&opts[0])));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_set_fr_bounds_the_wait_for_a_first_response() {
    let dir = tempfile::tempdir().unwrap();
    // T1 at its default: without t_set_fr the 408 would come after 32 s.
    let rt = start_with_script(dir.path(), RELAY, Duration::from_millis(500));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let uas = Peer::start(Peer::silent()).await;
    let caller = Caller::new().await;
    let invite = request(
        "INVITE",
        &format!("sip:quick@{}", uas.addr),
        &caller.via(),
        "tm-fr",
        "",
        "",
    );
    caller.send(proxy, &invite).await;
    assert_eventually!(
        caller.statuses("INVITE").contains(&408),
        Duration::from_secs(5)
    );
    assert_eq!(caller.statuses("INVITE")[0], 100);
    rt.shutdown();
}

fn voicemail_script(vm: SocketAddr) -> String {
    format!(
        "route {{\n  t_on_failure(\"vm\");\n  t_relay();\n}}\n\
         failure_route[vm] {{\n  if (t_check_status(\"486|408|6[0-9][0-9]\")) {{\n    \
         $du = \"sip:{vm}\";\n    $ru = \"sip:voicemail@{vm}\";\n    t_relay();\n    exit;\n  }}\n}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_route_sends_busy_and_unanswered_calls_to_voicemail_but_not_6xx() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Peer::start(Peer::answers(200)).await;
    let rt = start_with_script(
        dir.path(),
        &voicemail_script(vm.addr),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let busy = Peer::start(Peer::answers(486)).await;
    let silent = Peer::start(Peer::silent()).await;
    let decline = Peer::start(Peer::answers(603)).await;

    for (callee, call, want) in [
        (&busy, "tm-busy", 200),
        (&silent, "tm-noanswer", 200),
        (&decline, "tm-decline", 603),
    ] {
        let caller = Caller::new().await;
        let invite = request(
            "INVITE",
            &format!("sip:bob@{}", callee.addr),
            &caller.via(),
            call,
            "",
            "",
        );
        caller.send(proxy, &invite).await;
        assert_eventually!(
            caller.statuses("INVITE").iter().any(|s| *s >= 200),
            Duration::from_secs(10),
            "{call}: a final response"
        );
        let finals: Vec<u16> = caller
            .statuses("INVITE")
            .into_iter()
            .filter(|s| *s >= 200)
            .collect();
        assert_eq!(finals[0], want, "{call}: {finals:?}");
        assert!(!finals.contains(&486) && !finals.contains(&408), "{call}");
        let to_vm = vm
            .requests("INVITE")
            .iter()
            .filter(|r| header(r, "Call-ID") == Some(call))
            .count();
        assert_eq!(to_vm, usize::from(want == 200), "{call}: voicemail INVITEs");
    }
    // The busy callee got the hop-by-hop ACK for its 486 from siprox.
    assert_eventually!(busy.requests("ACK").len() == 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_ringing_cancels_the_branch_and_the_caller_gets_487() {
    let dir = tempfile::tempdir().unwrap();
    let script = "route { t_relay(); }\n";
    let rt = start_with_script(dir.path(), script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let callee = Peer::start(Peer::rings()).await;
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", callee.addr);
    let invite = request("INVITE", &ruri, &caller.via(), "tm-cancel", "", "");
    caller.send(proxy, &invite).await;
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    let cancel = request("CANCEL", &ruri, &caller.via(), "tm-cancel", "", "");
    caller.send(proxy, &cancel).await;
    assert_eventually!(caller.statuses("CANCEL") == vec![200]);
    assert_eventually!(callee.requests("CANCEL").len() == 1);
    assert_eq!(
        branch(&callee.requests("CANCEL")[0]),
        branch(&callee.requests("INVITE")[0])
    );
    assert_eventually!(caller.statuses("INVITE").contains(&487));

    // A CANCEL for nothing siprox knows: 481.
    let stray = request("CANCEL", &ruri, &caller.via(), "tm-nothing", "", "");
    caller.send(proxy, &stray).await;
    assert_eventually!(caller.statuses("CANCEL").contains(&481));
    assert_eq!(callee.requests("CANCEL").len(), 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_read_by_another_worker_reaches_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Peer::start(Peer::answers(200)).await;
    let rt = start_with_script(
        dir.path(),
        &voicemail_script(vm.addr),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    // Each 486 comes from a new port: with 2 workers, about half land on the worker that
    // does not own the call. Read there without the handoff, a 486 would be relayed
    // statelessly to the caller instead of running failure_route.
    let busy = Peer::start_with(Peer::answers(486), true).await;
    for i in 0..12 {
        let call = format!("tm-handoff-{i}");
        let caller = Caller::new().await;
        let invite = request(
            "INVITE",
            &format!("sip:bob@{}", busy.addr),
            &caller.via(),
            &call,
            "",
            "",
        );
        caller.send(proxy, &invite).await;
        assert_eventually!(
            caller.statuses("INVITE").contains(&200),
            Duration::from_secs(10),
            "{call}: voicemail answered"
        );
        assert!(!caller.statuses("INVITE").contains(&486), "{call}");
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_that_rings_too_long_is_cancelled_and_failure_route_runs() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Peer::start(Peer::answers(200)).await;
    let script = format!(
        "route {{ t_on_failure(\"vm\"); t_set_fr(300, 0); t_relay(); }}\n\
         failure_route[vm] {{ if (t_check_status(\"487\")) {{ $du = \"sip:{}\"; t_relay(); }} }}\n",
        vm.addr
    );
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let callee = Peer::start(Peer::rings()).await;
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", callee.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "tm-ring", "", ""),
        )
        .await;
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    // After 300 ms of ringing siprox cancels the branch; its 487 runs failure_route.
    assert_eventually!(callee.requests("CANCEL").len() == 1);
    assert_eventually!(caller.statuses("INVITE").contains(&200));
    assert!(!caller.statuses("INVITE").contains(&487));
    assert_eq!(vm.requests("INVITE").len(), 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_transaction_limit_a_relay_is_answered_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // Two per worker: one call's server and client transaction.
    let rt = start_with(dir.path(), RELAY, Duration::from_millis(500), 2);
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let uas = Peer::start(Peer::silent()).await;
    // One caller socket: both calls land on the same worker.
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", uas.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "tm-full-1", "", ""),
        )
        .await;
    assert_eventually!(caller.statuses("INVITE") == vec![100]);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "tm-full-2", "", ""),
        )
        .await;
    assert_eventually!(caller.statuses("INVITE").contains(&503));
    let got = caller.got.lock().unwrap().clone();
    let refused = got
        .iter()
        .find(|r| header(r, "Call-ID") == Some("tm-full-2"))
        .expect("the 503");
    assert_eq!(status(refused), Some(503), "{refused}");
    assert_eq!(header(refused, "Retry-After"), Some("5"), "{refused}");
    assert_eq!(
        uas.requests("INVITE")
            .iter()
            .filter(|r| header(r, "Call-ID") == Some("tm-full-2"))
            .count(),
        0
    );
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_tcp_gets_100_and_the_voicemail_answer_on_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Peer::start(Peer::answers(200)).await;
    let rt = start_with_script(
        dir.path(),
        &voicemail_script(vm.addr),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Tcp).unwrap();
    let busy = Peer::start(Peer::answers(486)).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let invite = request(
        "INVITE",
        &format!("sip:bob@{}", busy.addr),
        &format!("TCP {me}"),
        "tm-tcp",
        "",
        "",
    );
    send(&mut tcp, &invite).await;
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while !got.iter().any(|s| *s >= 200) {
        let m = read_message(&mut tcp, &mut buf, Duration::from_secs(5))
            .await
            .expect("a response over the caller's connection");
        got.extend(status(&m));
    }
    assert_eq!(got, vec![100, 200], "{got:?}");
    assert_eq!(busy.requests("INVITE").len(), 1, "one forward");
    assert_eq!(vm.requests("INVITE").len(), 1);
    rt.shutdown();
}
