//! `siprox import` on Debian's stock Kamailio configuration (`/etc/kamailio/kamailio.cfg`
//! and `tls.cfg`, installed with the `kamailio` package that tests/run.sh installs), as an
//! operator runs it: the command writes a conf.d that passes `siprox check`, lists every
//! line it could not carry over with the reason, and siprox running that conf.d answers an
//! OPTIONS keepalive, a REGISTER and a call to the registered phone the way the stock
//! route blocks say (Kamailio side by side in `import_stock_config_behaves_like_kamailio`).
//! Real sockets on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use siprox::proxy::Transport;
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(5);
const STOCK: &str = "/etc/kamailio/kamailio.cfg";
const STOCK_TLS: &str = "/etc/kamailio/tls.cfg";

fn stock_present() {
    assert!(
        Path::new(STOCK).exists() && Path::new(STOCK_TLS).exists(),
        "{STOCK} and {STOCK_TLS} are missing: install Debian's kamailio package \
         (bash tests/run.sh does)"
    );
}

/// `siprox import STOCK STOCK_TLS -o out`: (exit code, stdout, stderr).
fn import(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let o = siprox_command()
        .args(["import", STOCK, STOCK_TLS, "-o"])
        .arg(out)
        .args(extra)
        .output()
        .expect("siprox import runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_stock_config_imports_and_passes_check() {
    stock_present();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let (code, stdout, stderr) = import(&out, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    // What it could not carry over, with reasons, on the lines of the original.
    for needle in [
        "kamailio.cfg:178: children=8: siprox runs one worker thread per core",
        "loadmodule \"acc.so\": no accounting module",
        "modparam(\"tm\", \"fr_inv_timer\", 120000): no global final-response timers",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
    let report = std::fs::read_to_string(out.join("IMPORT.txt")).unwrap();
    assert!(
        stdout.starts_with(&report),
        "IMPORT.txt is the printed report"
    );
    // The route blocks stay on their lines: a script error would name the original line.
    let script = std::fs::read_to_string(out.join("conf.d/scripts/kamailio.cfg")).unwrap();
    let stock = std::fs::read_to_string(STOCK).unwrap();
    let at = |text: &str, needle: &str| text.lines().position(|l| l.trim() == needle);
    assert_eq!(
        at(&script, "request_route {"),
        at(&stock, "request_route {"),
        "request_route moved"
    );
    // `siprox check` agrees.
    let check = siprox_command()
        .arg("-c")
        .arg(out.join("conf.d"))
        .arg("check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Never over an existing configuration.
    let (code, _, stderr) = import(&out, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exists"), "{stderr}");
}

#[test]
fn with_tls_defined_the_missing_certificate_is_named() {
    stock_present();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let (_, stdout, _) = import(&out, &["-D", "WITH_TLS"]);
    // The stock tls.cfg names a self-signed pair that the package does not ship.
    assert!(
        stdout.contains("kamailio-selfsigned.pem")
            && stdout.contains("[tls] keeps siprox's own certificate"),
        "{stdout}"
    );
    let main = std::fs::read_to_string(out.join("conf.d/00-imported.toml")).unwrap();
    assert!(main.contains("proto = \"tls\""), "{main}");
    assert!(main.contains("min_version = \"1.2\""), "{main}");
}

/// The imported conf.d, started on loopback ports (a drop-in would do the same for an
/// operator: the stock config listens on every address).
fn start_imported(out: &Path) -> siprox_actors::RuntimeHandle {
    let mut sink = Vec::new();
    let verified = siprox_actors::cli::verify(&out.join("conf.d"), false, &mut sink)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&sink)));
    let mut cfg = verified.loaded.config;
    cfg.listen = config(&[siprox::config::Proto::Udp]).listen;
    cfg.runtime.workers = 2;
    cfg.management.enabled = false;
    start(cfg, out)
}

async fn ask(c: &UdpSocket, m: &str, to: SocketAddr) -> String {
    c.send_to(m.as_bytes(), to).await.unwrap();
    loop {
        let mut b = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(T, c.recv_from(&mut b))
            .await
            .unwrap_or_else(|_| panic!("no answer to\n{m}"))
            .unwrap();
        let r = String::from_utf8_lossy(&b[..n]).into_owned();
        // 100 Trying of a t_relay()ed request: wait for the final answer.
        if status(&r).is_some_and(|s| s >= 200) {
            return r;
        }
    }
}

fn req(
    method: &str,
    ruri: &str,
    from_user: &str,
    call: &str,
    me: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{from_user}@127.0.0.1>;tag=f-{call}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 {method}\r\n\
         User-Agent: siprox-test\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    )
}

/// OPTIONS, REGISTER, a call to the registered phone, a call to nobody and a request
/// without a user, against the proxy at `sip`: the first line of each final answer, in
/// order. The phone answers 200 and must have received the INVITE, Record-Routed.
async fn scenario(sip: SocketAddr) -> Vec<String> {
    let first = |r: &str| r.lines().next().unwrap_or_default().to_owned();
    let mut lines = Vec::new();
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = c.local_addr().unwrap();
    // route[REQINIT]: OPTIONS to the proxy itself is a keepalive.
    let r = ask(
        &c,
        &req("OPTIONS", &format!("sip:{sip}"), "alice", "opt-1", me, ""),
        sip,
    )
    .await;
    lines.push(first(&r));
    // route[REGISTRAR]: save("location").
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_addr = phone.local_addr().unwrap();
    let reg = req(
        "REGISTER",
        &format!("sip:{sip}"),
        "alice",
        "reg-1",
        phone_addr,
        &format!("Contact: <sip:alice@{phone_addr}>;expires=300\r\n"),
    )
    .replace(
        &format!("To: <sip:{sip}>"),
        &format!("To: <sip:alice@{sip}>"),
    );
    let r = ask(&phone, &reg, sip).await;
    assert!(r.contains(&format!("<sip:alice@{phone_addr}>")), "{r}");
    lines.push(first(&r));
    // route[LOCATION]: a call to alice reaches the phone through t_relay().
    let answering = tokio::spawn(async move {
        let mut b = vec![0u8; 65536];
        loop {
            let (n, from) = phone.recv_from(&mut b).await.unwrap();
            let m = String::from_utf8_lossy(&b[..n]).into_owned();
            if m.starts_with("INVITE ") {
                phone
                    .send_to(response_for(&m, 200, 0).as_bytes(), from)
                    .await
                    .unwrap();
                return m;
            }
        }
    });
    let inv = req(
        "INVITE",
        &format!("sip:alice@{sip}"),
        "bob",
        "call-1",
        me,
        "Contact: <sip:bob@127.0.0.1>\r\n",
    );
    let r = ask(&c, &inv, sip).await;
    lines.push(first(&r));
    let at_phone = tokio::time::timeout(T, answering).await.unwrap().unwrap();
    assert!(
        at_phone.starts_with(&format!("INVITE sip:alice@{phone_addr} SIP/2.0")),
        "{at_phone}"
    );
    assert!(header(&at_phone, "Record-Route").is_some(), "{at_phone}");
    // Nobody registered as carol (lookup's -1, through $rc and switch).
    let r = ask(
        &c,
        &req(
            "INVITE",
            &format!("sip:carol@{sip}"),
            "bob",
            "call-2",
            me,
            "",
        ),
        sip,
    )
    .await;
    lines.push(first(&r));
    // No user in the Request-URI ($rU == $null).
    let r = ask(
        &c,
        &req("MESSAGE", &format!("sip:{sip}"), "bob", "msg-1", me, ""),
        sip,
    )
    .await;
    lines.push(first(&r));
    lines
}

const EXPECTED: [&str; 5] = [
    "SIP/2.0 200 Keepalive",
    "SIP/2.0 200 OK",
    "SIP/2.0 200 OK",
    "SIP/2.0 404 Not Found",
    "SIP/2.0 484 Address Incomplete",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imported_routes_answer_options_register_and_a_call() {
    stock_present();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let (code, stdout, stderr) = import(&out, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rt = start_imported(&out);
    let sip = rt.local_addr(Transport::Udp).unwrap();
    assert_eq!(scenario(sip).await, EXPECTED);
    drop(rt);
}

/// The same scenario against Kamailio 5.6 running the stock configuration itself (with one
/// `listen=` on a loopback port added, as the import's drop-in does for siprox): the same
/// answers, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_running_the_stock_config_answers_the_same() {
    stock_present();
    let dir = tempfile::tempdir().unwrap();
    let (port, _) = kamailio::free_ports();
    let stock = std::fs::read_to_string(STOCK).unwrap();
    let cfg = dir.path().join("kamailio.cfg");
    std::fs::write(
        &cfg,
        stock.replacen(
            "#!KAMAILIO",
            &format!("#!KAMAILIO\nlisten=udp:127.0.0.1:{port}"),
            1,
        ),
    )
    .unwrap();
    kamailio::check(&cfg).unwrap_or_else(|e| panic!("kamailio -c refused it:\n{e}"));
    let mut k = kamailio::Kamailio::start(&cfg, dir.path(), port, port);
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = probe.local_addr().unwrap();
    let sip = k.udp;
    let ready = req("OPTIONS", &format!("sip:{sip}"), "ready", "ready", me, "");
    let mut up = false;
    for _ in 0..100 {
        k.assert_running();
        probe.send_to(ready.as_bytes(), sip).await.unwrap();
        let mut b = vec![0u8; 65536];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut b)).await
        {
            up = true;
            break;
        }
    }
    assert!(up, "kamailio never answered:\n{}", k.log_text());
    let lines = scenario(sip).await;
    assert_eq!(lines, EXPECTED, "kamailio log:\n{}", k.log_text());
}

/// The import of a configuration without `listen=` binds every address, as Kamailio does:
/// such a wildcard listener takes every address of the host as `myself`, so the stock
/// route's keepalive answers an OPTIONS sent to another of this host's addresses (here
/// 127.0.0.2, loopback) instead of relaying it to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_knows_every_local_address_as_myself() {
    stock_present();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let (code, stdout, stderr) = import(&out, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let main = std::fs::read_to_string(out.join("conf.d/00-imported.toml")).unwrap();
    assert!(main.contains("addr = \"0.0.0.0:5060\""), "{main}");
    let mut sink = Vec::new();
    let verified = siprox_actors::cli::verify(&out.join("conf.d"), false, &mut sink)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&sink)));
    let mut cfg = verified.loaded.config;
    // The import's wildcard, on a free port.
    cfg.listen = vec![siprox::config::Listener {
        proto: siprox::config::Proto::Udp,
        addr: "0.0.0.0:0".parse().unwrap(),
        advertise: None,
    }];
    cfg.runtime.workers = 2;
    cfg.management.enabled = false;
    let rt = start(cfg, &out);
    let port = rt.local_addr(Transport::Udp).unwrap().port();
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let c = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let me = c.local_addr().unwrap();
    let r = ask(
        &c,
        &req("OPTIONS", &format!("sip:{other}"), "alice", "opt-w", me, ""),
        other,
    )
    .await;
    assert!(r.starts_with("SIP/2.0 200 Keepalive\r\n"), "{r}");
    drop(rt);
}
