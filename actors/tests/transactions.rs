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

use common::caller::Caller;
use common::*;
use siprox::config::{ConfigDuration, Proto, ScriptConfig};
use tokio::net::UdpSocket;

type Policy = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A UDP UAS that records every request and answers as its policy says.
struct Peer {
    addr: SocketAddr,
    /// Requests and responses received, in order.
    got: Arc<Mutex<Vec<String>>>,
    sock: Arc<UdpSocket>,
}

impl Peer {
    async fn start(policy: Policy) -> Peer {
        Peer::start_with(policy, false).await
    }

    /// `fresh`: every response leaves from a new socket (a new source port), so that the
    /// kernel spreads them over siprox's workers.
    async fn start_with(policy: Policy, fresh: bool) -> Peer {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (g, sock2) = (got.clone(), sock.clone());
        tokio::spawn(async move {
            let sock = sock2;
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                g.lock().unwrap().push(m.clone());
                if m.starts_with("SIP/2.0") {
                    continue;
                }
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
        Peer { addr, got, sock }
    }

    /// Registers this peer as a contact of `user@example.com` (q in thousandths) by a
    /// REGISTER through siprox from its own socket, and waits for the 200.
    async fn register(&self, proxy: SocketAddr, user: &str, contact: &str, q: &str) {
        let call = format!("reg-{contact}");
        let m = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP {a};branch=z9hG4bK-{call};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@example.com>;tag=r-{contact}\r\n\
             To: <sip:{user}@example.com>\r\n\
             Call-ID: {call}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{contact}@{a}>{q}\r\n\
             Expires: 300\r\n\
             Content-Length: 0\r\n\r\n",
            a = self.addr
        );
        self.sock.send_to(m.as_bytes(), proxy).await.unwrap();
        assert_eventually!(self
            .got
            .lock()
            .unwrap()
            .iter()
            .any(|r| header(r, "Call-ID") == Some(&call) && status(r) == Some(200)));
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
async fn a_branch_that_rings_too_long_is_cancelled_and_failure_route_runs_with_408() {
    let dir = tempfile::tempdir().unwrap();
    let vm = Peer::start(Peer::answers(200)).await;
    let script = format!(
        "route {{ t_on_failure(\"vm\"); t_set_fr(300, 0); t_relay(); }}\n\
         failure_route[vm] {{ if (t_check_status(\"408\") && t_branch_timeout()) {{ $du = \"sip:{}\"; t_relay(); }} }}\n",
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
    // After 300 ms of ringing siprox cancels the branch, which fails as a 408: failure_route
    // runs with 408 (as Kamailio's fr_inv_timer), not with the callee's 487.
    assert_eventually!(callee.requests("CANCEL").len() == 1);
    assert_eventually!(caller.statuses("INVITE").contains(&200));
    assert!(!caller.statuses("INVITE").contains(&487));
    assert!(!caller.statuses("INVITE").contains(&408));
    assert_eq!(vm.requests("INVITE").len(), 1);
    rt.shutdown();
}

/// A UAS that rings and stays silent until the CANCEL, then answers it 200 and the INVITE
/// 487: at Timer C the caller gets siprox's 408 at once; the 487 is acknowledged hop by hop
/// and never reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_c_answers_the_caller_408_and_absorbs_the_callees_487() {
    let dir = tempfile::tempdir().unwrap();
    let script = "route { t_set_fr(300, 0); t_relay(); }\n";
    let rt = start_with_script(dir.path(), script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let callee = Peer::start(Peer::rings()).await;
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", callee.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "tm-timer-c", "", ""),
        )
        .await;
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    assert_eventually!(finals(&caller).contains(&408));
    assert_eq!(callee.requests("CANCEL").len(), 1);
    // The callee's 487 is ACKed by siprox (hop by hop), and the caller never sees it.
    assert_eventually!(callee.requests("ACK").len() == 1);
    assert!(
        finals(&caller).iter().all(|s| *s == 408),
        "{:?}",
        finals(&caller)
    );
    let got = caller.final_of("tm-timer-c").unwrap();
    assert_eq!(
        got.split("\r\n").next(),
        Some("SIP/2.0 408 Request Timeout")
    );
    rt.shutdown();
}

/// A callee that answers 200 while siprox's CANCEL is on its way: the 2xx still reaches the
/// caller after the 408 (RFC 3261 §16.7 step 5: every 2xx goes upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_that_races_the_timer_c_cancel_still_reaches_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let script = "route { t_set_fr(300, 0); t_relay(); }\n";
    let rt = start_with_script(dir.path(), script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let invite = Mutex::new(String::new());
    let late: Policy = Arc::new(move |m| match method(m) {
        "INVITE" => {
            *invite.lock().unwrap() = m.to_owned();
            vec![response_for(m, 180, 0)]
        }
        // Too late to cancel: the call was answered.
        "CANCEL" => vec![
            response_for(&invite.lock().unwrap(), 200, 0),
            response_for(m, 200, 0),
        ],
        _ => vec![],
    });
    let callee = Peer::start(late).await;
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", callee.addr);
    caller
        .send(
            proxy,
            &request("INVITE", &ruri, &caller.via(), "tm-timer-c-2xx", "", ""),
        )
        .await;
    assert_eventually!(finals(&caller).contains(&408));
    assert_eventually!(finals(&caller).contains(&200));
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
    let got = caller.received();
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
async fn answered_calls_kept_in_accepted_do_not_count_against_the_transaction_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Two per worker: room for one call's server and client transaction at a time.
    let rt = start_with(dir.path(), RELAY, Duration::from_millis(500), 2);
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let uas = Peer::start(Peer::answers(200)).await;
    // One caller socket: every call lands on the same worker.
    let caller = Caller::new().await;
    let ruri = format!("sip:bob@{}", uas.addr);
    // Each answered call keeps its two INVITE transactions in Accepted for 64*T1 = 32 s:
    // the next calls are relayed all the same.
    for (n, call) in ["tm-acc-1", "tm-acc-2", "tm-acc-3"].into_iter().enumerate() {
        caller
            .send(
                proxy,
                &request("INVITE", &ruri, &caller.via(), call, "", ""),
            )
            .await;
        assert_eventually!(finals(&caller).len() == n + 1);
    }
    assert_eq!(finals(&caller), vec![200, 200, 200]);
    assert_eq!(uas.requests("INVITE").len(), 3);
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

// ---- Forking: several bindings, append_branch, branch_route ------------------------------

/// The `cfg` block of docs/script.md marked `<!-- example: NAME -->`, verbatim.
fn doc_example(name: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/script.md")).unwrap();
    let marker = format!("<!-- example: {name} -->\n```cfg\n");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no example {name}"))
        + marker.len();
    let end = doc[at..].find("```").expect("closed fence");
    doc[at..at + end].to_owned()
}

/// The INVITEs `peer` received for call `call`.
fn invites_of(peer: &Peer, call: &str) -> Vec<String> {
    peer.requests("INVITE")
        .into_iter()
        .filter(|r| header(r, "Call-ID") == Some(call))
        .collect()
}

/// The final statuses the caller got for its INVITE.
fn finals(caller: &Caller) -> Vec<u16> {
    caller
        .statuses("INVITE")
        .into_iter()
        .filter(|s| *s >= 200)
        .collect()
}

/// `peer` answers the INVITE it got for `call` with `code`, as a UAS would (to siprox).
async fn answer(peer: &Peer, proxy: SocketAddr, call: &str, code: u16) {
    let inv = invites_of(peer, call).pop().expect("an INVITE to answer");
    peer.sock
        .send_to(response_for(&inv, code, 0).as_bytes(), proxy)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_fork_rings_both_devices_and_cancels_the_other_when_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    // The ring-all example of docs/script.md, as written there.
    let script = doc_example("ring-all");
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::rings()).await;
    let mobile = Peer::start(Peer::rings()).await;
    desk.register(proxy, "bob", "desk", "").await;
    mobile.register(proxy, "bob", "mobile", "").await;

    let caller = Caller::new().await;
    let call = "fork-parallel";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    assert_eventually!(invites_of(&desk, call).len() == 1 && invites_of(&mobile, call).len() == 1);
    assert!(invites_of(&desk, call)[0].starts_with(&format!("INVITE sip:desk@{}", desk.addr)));
    assert!(invites_of(&mobile, call)[0].starts_with(&format!("INVITE sip:mobile@{}", mobile.addr)));
    assert_ne!(
        branch(&invites_of(&desk, call)[0]),
        branch(&invites_of(&mobile, call)[0])
    );
    assert_eventually!(caller.statuses("INVITE").contains(&180));

    answer(&desk, proxy, call, 200).await;
    assert_eventually!(finals(&caller) == vec![200]);
    // The other device is cancelled, answers 487 (siprox ACKs it); the caller never sees it.
    assert_eventually!(mobile.requests("CANCEL").len() == 1);
    assert_eq!(
        branch(&mobile.requests("CANCEL")[0]),
        branch(&invites_of(&mobile, call)[0])
    );
    assert_eventually!(mobile.requests("ACK").len() == 1);
    assert!(desk.requests("CANCEL").is_empty());
    assert_eq!(finals(&caller), vec![200], "exactly one final, and no 487");
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_6xx_on_one_branch_cancels_the_other_and_the_caller_gets_the_6xx() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(
        dir.path(),
        &doc_example("ring-all"),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::rings()).await;
    let mobile = Peer::start(Peer::rings()).await;
    desk.register(proxy, "bob", "desk", "").await;
    mobile.register(proxy, "bob", "mobile", "").await;

    let caller = Caller::new().await;
    let call = "fork-603";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    assert_eventually!(invites_of(&desk, call).len() == 1 && invites_of(&mobile, call).len() == 1);
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    answer(&mobile, proxy, call, 603).await;
    assert_eventually!(desk.requests("CANCEL").len() == 1);
    assert_eventually!(finals(&caller) == vec![603]);
    assert!(mobile.requests("CANCEL").is_empty());
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_fork_by_q_rings_the_lower_q_device_only_after_the_first_failed() {
    let dir = tempfile::tempdir().unwrap();
    // The ring-in-order example of docs/script.md, as written there.
    let script = doc_example("ring-in-order");
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::rings()).await;
    let mobile = Peer::start(Peer::answers(200)).await;
    let home = Peer::start(Peer::answers(200)).await;
    desk.register(proxy, "bob", "desk", ";q=1.0").await;
    // The lowest q rings last: never here, the mobile answers first.
    home.register(proxy, "bob", "home", ";q=0.1").await;
    mobile.register(proxy, "bob", "mobile", ";q=0.5").await;

    let caller = Caller::new().await;
    let call = "fork-serial";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    assert_eq!(invites_of(&desk, call).len(), 1);
    assert!(invites_of(&mobile, call).is_empty(), "q 0.5 waits");
    assert!(invites_of(&home, call).is_empty(), "q 0.1 waits");

    answer(&desk, proxy, call, 486).await;
    assert_eventually!(invites_of(&mobile, call).len() == 1);
    assert_eventually!(finals(&caller) == vec![200]);
    assert!(invites_of(&home, call).is_empty());
    assert!(!caller.statuses("INVITE").contains(&486));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_next_contacts_with_no_group_left_lets_the_best_final_go_up() {
    let dir = tempfile::tempdir().unwrap();
    let script = doc_example("ring-in-order");
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::answers(486)).await;
    let mobile = Peer::start(Peer::answers(480)).await;
    desk.register(proxy, "bob", "desk", ";q=0.9").await;
    mobile.register(proxy, "bob", "mobile", ";q=0.3").await;
    let caller = Caller::new().await;
    let call = "fork-serial-all-fail";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    // Both groups fail in turn; the last failure_route finds no group (t_next_contacts -1)
    // and the best final of the whole call goes up: of two 4xx, the first (§16.7).
    assert_eventually!(!finals(&caller).is_empty());
    assert_eq!(
        finals(&caller),
        vec![486],
        "{:?}",
        caller.statuses("INVITE")
    );
    assert_eq!(invites_of(&desk, call).len(), 1);
    assert_eq!(invites_of(&mobile, call).len(), 1);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_with_two_ringing_branches_cancels_both_and_the_caller_gets_487() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(
        dir.path(),
        &doc_example("ring-all"),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::rings()).await;
    let mobile = Peer::start(Peer::rings()).await;
    desk.register(proxy, "bob", "desk", "").await;
    mobile.register(proxy, "bob", "mobile", "").await;

    let caller = Caller::new().await;
    let call = "fork-cancel";
    let ruri = "sip:bob@example.com";
    caller
        .send(proxy, &request("INVITE", ruri, &caller.via(), call, "", ""))
        .await;
    assert_eventually!(
        caller
            .statuses("INVITE")
            .iter()
            .filter(|s| **s == 180)
            .count()
            == 2
    );
    caller
        .send(proxy, &request("CANCEL", ruri, &caller.via(), call, "", ""))
        .await;
    assert_eventually!(caller.statuses("CANCEL") == vec![200]);
    assert_eventually!(desk.requests("CANCEL").len() == 1 && mobile.requests("CANCEL").len() == 1);
    assert_eventually!(finals(&caller) == vec![487]);
    assert_eventually!(desk.requests("ACK").len() == 1 && mobile.requests("ACK").len() == 1);
    assert_eq!(finals(&caller), vec![487]);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_branch_times_out_the_caller_gets_one_408() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(
        dir.path(),
        &doc_example("ring-all"),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::silent()).await;
    let mobile = Peer::start(Peer::silent()).await;
    desk.register(proxy, "bob", "desk", "").await;
    mobile.register(proxy, "bob", "mobile", "").await;
    let caller = Caller::new().await;
    let call = "fork-timeout";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    // Timer A on both branches, then Timer B (64*T1 = 1.28 s) on both: one 408 upstream.
    assert_eventually!(invites_of(&desk, call).len() >= 2 && invites_of(&mobile, call).len() >= 2);
    assert_eventually!(finals(&caller) == vec![408], Duration::from_secs(10));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_branch_adds_branches_in_the_request_route_and_in_failure_route() {
    let dir = tempfile::tempdir().unwrap();
    let one = Peer::start(Peer::answers(486)).await;
    let two = Peer::start(Peer::answers(486)).await;
    let three = Peer::start(Peer::answers(486)).await;
    let vm = Peer::start(Peer::answers(200)).await;
    let vm2 = Peer::start(Peer::rings()).await;
    let script = format!(
        "route {{\n  t_on_failure(\"vm\");\n  append_branch(\"sip:two@{two}\");\n  \
         $ru = \"sip:three@{three}\";\n  append_branch();\n  $ru = \"sip:one@{one}\";\n  \
         t_relay();\n}}\n\
         failure_route[vm] {{\n  append_branch(\"sip:vm2@{vm2}\");\n  \
         $ru = \"sip:vm@{vm}\";\n  t_relay();\n}}\n",
        two = two.addr,
        three = three.addr,
        one = one.addr,
        vm = vm.addr,
        vm2 = vm2.addr,
    );
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let caller = Caller::new().await;
    let call = "fork-append";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    assert_eventually!(finals(&caller) == vec![200]);
    for (peer, user) in [(&one, "one"), (&two, "two"), (&three, "three"), (&vm, "vm")] {
        let inv = invites_of(peer, call);
        assert_eq!(inv.len(), 1, "{user}");
        assert!(
            inv[0].starts_with(&format!("INVITE sip:{user}@{} ", peer.addr)),
            "{user}: {}",
            inv[0]
        );
    }
    // The failure_route's two branches rang together; the voicemail's 200 cancels the other.
    assert_eventually!(vm2.requests("CANCEL").len() == 1);
    assert!(!caller.statuses("INVITE").contains(&486));
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_route_runs_per_branch_and_its_drop_removes_only_that_branch() {
    let dir = tempfile::tempdir().unwrap();
    let one = Peer::start(Peer::answers(486)).await;
    let two = Peer::start(Peer::answers(200)).await;
    let three = Peer::start(Peer::answers(302)).await;
    let script = format!(
        "route {{\n  t_on_branch(\"per\");\n  t_on_failure(\"best\");\n  \
         append_branch(\"sip:two@{two}\");\n  append_branch(\"sip:three@{three}\");\n  \
         $ru = \"sip:one@{one}\";\n  t_relay();\n}}\n\
         branch_route[per] {{\n  if ($ru =~ \"^sip:two@\") {{ drop; }}\n  \
         append_hf(\"X-Branch: $T_branch_idx $ru\\r\\n\");\n}}\n\
         failure_route[best] {{\n  t_reply(\"480\", \"Best Was Branch $T_branch_idx\");\n}}\n",
        two = two.addr,
        three = three.addr,
        one = one.addr,
    );
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let caller = Caller::new().await;
    let call = "fork-branch-route";
    caller
        .send(
            proxy,
            &request("INVITE", "sip:bob@example.com", &caller.via(), call, "", ""),
        )
        .await;
    assert_eventually!(finals(&caller) == vec![480]);
    assert!(invites_of(&two, call).is_empty(), "dropped in branch_route");
    let inv = invites_of(&one, call);
    assert_eq!(
        header(&inv[0], "X-Branch"),
        Some(format!("0 sip:one@{}", one.addr).as_str())
    );
    let inv = invites_of(&three, call);
    assert_eq!(
        header(&inv[0], "X-Branch"),
        Some(format!("1 sip:three@{}", three.addr).as_str())
    );
    // The best final (302, of branch 1) is the one failure_route saw.
    let got = caller.received();
    let last = got.iter().find(|r| status(r) == Some(480)).unwrap();
    assert!(
        last.starts_with("SIP/2.0 480 Best Was Branch 1\r\n"),
        "{last}"
    );
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_message_answered_by_both_devices_gives_the_caller_one_200() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start_with_script(
        dir.path(),
        &doc_example("ring-all"),
        Duration::from_millis(20),
    );
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let desk = Peer::start(Peer::answers(200)).await;
    let mobile = Peer::start(Peer::answers(200)).await;
    desk.register(proxy, "bob", "desk", "").await;
    mobile.register(proxy, "bob", "mobile", "").await;
    let caller = Caller::new().await;
    let call = "fork-message";
    caller
        .send(
            proxy,
            &request(
                "MESSAGE",
                "sip:bob@example.com",
                &caller.via(),
                call,
                "",
                "",
            ),
        )
        .await;
    let both = || {
        [&desk, &mobile].iter().all(|p| {
            p.requests("MESSAGE")
                .iter()
                .any(|r| header(r, "Call-ID") == Some(call))
        })
    };
    assert_eventually!(both());
    assert_eventually!(caller.statuses("MESSAGE") == vec![200]);
    // Both 200s reached siprox: the second one is absorbed by the transaction (as its
    // retransmission would be), the caller keeps exactly one.
    let more = request(
        "OPTIONS",
        "sip:bob@example.com",
        &caller.via(),
        "fork-after",
        "",
        "",
    );
    caller.send(proxy, &more).await;
    assert_eventually!(caller.statuses("OPTIONS") == vec![200]);
    assert_eq!(caller.statuses("MESSAGE"), vec![200]);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_branch_idx_in_onreply_route_names_the_branch_the_response_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let one = Peer::start(Peer::rings()).await;
    let two = Peer::start(Peer::rings()).await;
    // Branch 0 is the Request-URI's (one), branch 1 the appended one (two): only branch
    // 0's 180 reaches the caller.
    let script = format!(
        "route {{\n  t_on_reply(\"R\");\n  append_branch(\"sip:two@{two}\");\n  \
         $ru = \"sip:one@{one}\";\n  t_relay();\n}}\n\
         onreply_route[R] {{\n  if ($rs == 180 && $T_branch_idx == 1) {{ drop; }}\n}}\n",
        two = two.addr,
        one = one.addr,
    );
    let rt = start_with_script(dir.path(), &script, Duration::from_millis(20));
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let caller = Caller::new().await;
    let call = "reply-branch-idx";
    let ruri = "sip:bob@example.com";
    caller
        .send(proxy, &request("INVITE", ruri, &caller.via(), call, "", ""))
        .await;
    assert_eventually!(invites_of(&one, call).len() == 1 && invites_of(&two, call).len() == 1);
    assert_eventually!(caller.statuses("INVITE").contains(&180));
    caller
        .send(proxy, &request("CANCEL", ruri, &caller.via(), call, "", ""))
        .await;
    // The caller's 487 goes up once both branches ended, after both 180s were handled.
    assert_eventually!(finals(&caller) == vec![487]);
    let ringing = caller
        .statuses("INVITE")
        .iter()
        .filter(|s| **s == 180)
        .count();
    assert_eq!(
        ringing,
        1,
        "branch 1's 180 dropped, branch 0's relayed: {:?}",
        caller.statuses("INVITE")
    );
    rt.shutdown();
}
