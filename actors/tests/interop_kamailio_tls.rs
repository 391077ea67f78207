//! siprox connecting out over TLS to a carrier, with Debian's Kamailio 5.6 as the carrier
//! (issue 19). siprox's client domain for the carrier verifies `carrier.test` (hostname
//! verification on) and presents a client certificate that Kamailio verifies; phones reach
//! siprox over UDP. With and without a TLS listener in siprox (without one, siprox's Via
//! and Record-Route name its UDP listener with `;alias`, and Kamailio sends requests back
//! over the connection siprox opened), over IPv4 and IPv6 loopback: OPTIONS, and full
//! calls through siprox to a UAS behind Kamailio (INVITE/200/ACK, BYE from either side),
//! stateless (no script) and stateful (`t_relay()`, with `@tls.peer.*` of the carrier read
//! in `onreply_route`), and over plain TCP without a TCP listener. The carrier's own
//! INVITE reaches a phone behind siprox over the connection siprox opened. A wrong server
//! name is refused with a clear log line.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::kamailio_peer::{CarrierOpts, Kamailio};
use common::tree::Tree;
use common::{header, status};
use siprox::proxy::Transport;
use siprox_actors::RuntimeHandle;
use siprox_testkit::assert_eventually;
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(8);

const V4: &str = "127.0.0.1";
const V6: &str = "::1";

/// A stateful script: every request through `t_relay()`; the carrier's responses checked
/// by the certificate of the connection they came back on (`@tls.peer.*` of the next hop).
const STATEFUL: &str = r#"route {
    if (is_method("ACK") && has_totag()) { forward(); exit; }
    t_on_reply("CARRIER");
    t_relay();
}
onreply_route[CARRIER] {
    if (proto == TLS && (@tls.peer.subject.cn != "$CN" || @tls.peer.verified != 1)) {
        xlog("L_WARN", "reply from an unexpected carrier: " + @tls.peer.subject.cn + "\n");
        drop;
    }
}
"#;

/// A stateless script whose main onreply_route checks the carrier's certificate.
const STATELESS_CHECK: &str = r#"route { forward(); }
onreply_route {
    if (proto == TLS && (@tls.peer.subject.cn != "$CN" || @tls.peer.verified != 1)) {
        drop;
    }
}
"#;

struct Setup {
    _t: Tree,
    rt: RuntimeHandle,
    kam: Kamailio,
    udp: SocketAddr,
    ip: IpAddr,
}

/// Kamailio as the carrier on `ip` (with a UAS at `uas`), and siprox listening on UDP (and
/// TLS when `tls_listener`) on `ip`, with the client domain for the carrier. `script`: a
/// route script for siprox (none: the built-in stateless route). `server_name`: what the
/// client domain verifies (the carrier's certificate names `carrier.test`);
/// `accept_requests`: the client domain lets the carrier send new requests back.
fn setup(
    ip: &str,
    tls_listener: bool,
    uas: Option<SocketAddr>,
    script: Option<&str>,
    server_name: &str,
    accept_requests: bool,
) -> Setup {
    siprox_testkit::logs::install_at(tracing::level_filters::LevelFilter::INFO);
    let ip: IpAddr = ip.parse().expect("ip");
    let t = Tree::new("");
    t.leaf("carrier", "carrier.test");
    t.leaf("siprox-client", "siprox-client");
    let kam = Kamailio::carrier(&CarrierOpts {
        ip,
        cert: &t.path("certs/carrier.pem"),
        key: &t.path("certs/carrier.key"),
        ca: &t.path("certs/test-ca.pem"),
        uas,
    });
    let bind = SocketAddr::new(ip, 0);
    let mut core = format!("[[listen]]\nproto = \"udp\"\naddr = \"{bind}\"\n");
    if tls_listener {
        core.push_str(&format!("[[listen]]\nproto = \"tls\"\naddr = \"{bind}\"\n"));
    }
    core.push_str("\n[runtime]\nworkers = 2\n\n[tls]\ngenerate_dev_certs = true\n");
    if let Some(s) = script {
        t.write("scripts/main.cfg", s.as_bytes());
        core.push_str(&format!(
            "\n[script]\nfile = \"{}\"\n",
            t.path("scripts/main.cfg").display()
        ));
    }
    t.write("conf.d/00-core.toml", core.as_bytes());
    t.domain(
        "carrier",
        &format!(
            "[domains.carrier]\n[domains.carrier.client]\ndestinations = [\"{}\"]\n\
             server_name = \"{server_name}\"\nca_file = \"certs/test-ca.pem\"\n\
             verify_hostname = true\naccept_requests = {accept_requests}\n\
             certificate = \"certs/siprox-client.pem\"\nprivate_key = \"certs/siprox-client.key\"\n",
            kam.tls
        ),
    );
    let rt = t.start();
    let udp = rt.local_addr(Transport::Udp).expect("udp listener");
    Setup {
        _t: t,
        rt,
        kam,
        udp,
        ip,
    }
}

/// Every value of header `name` (one per line or comma-separated).
fn values(msg: &str, name: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    let mut out = Vec::new();
    for l in head.split("\r\n").skip(1) {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        if n.trim().eq_ignore_ascii_case(name) {
            for part in v.split(">,") {
                let p = part.trim();
                if p.is_empty() {
                    continue;
                }
                out.push(if p.ends_with('>') {
                    p.to_owned()
                } else {
                    format!("{p}>")
                });
            }
        }
    }
    out
}

/// The lines of `msg` for the headers in `names`, each ending in CRLF.
fn lines(msg: &str, names: &[&str]) -> String {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    let mut out = String::new();
    for l in head.split("\r\n").skip(1) {
        let n = l.split(':').next().unwrap_or("").trim();
        if names.iter().any(|x| x.eq_ignore_ascii_case(n)) {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out
}

/// The URI inside `<...>` of a name-addr (or the value itself).
fn uri_of(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    }
}

/// A UDP endpoint of the test: a caller in front of siprox or the UAS behind Kamailio.
struct Ua {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Ua {
    async fn new(ip: IpAddr) -> Ua {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        Ua { sock, addr }
    }

    async fn send(&self, msg: &str, to: SocketAddr) {
        self.sock.send_to(msg.as_bytes(), to).await.expect("send");
    }

    /// The next message for which `want` holds (others are skipped), within `T`.
    async fn recv(&self, what: &str, want: impl Fn(&str) -> bool) -> (String, SocketAddr) {
        let until = Instant::now() + T;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Ok((n, from))) = tokio::time::timeout(left, self.sock.recv_from(&mut buf)).await
            else {
                panic!("{what}: nothing within {T:?}");
            };
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if want(&m) {
                return (m, from);
            }
        }
    }

    /// Whether a message for which `want` holds arrives within `d`.
    async fn gets_within(&self, d: Duration, want: impl Fn(&str) -> bool) -> bool {
        let until = Instant::now() + d;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if want(&String::from_utf8_lossy(&buf[..n])) => return true,
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
    }
}

fn is_status_for(code: u16, method: &str) -> impl Fn(&str) -> bool + '_ {
    move |m: &str| {
        status(m) == Some(code)
            && header(m, "CSeq").is_some_and(|c| c.ends_with(&format!(" {method}")))
    }
}

fn is_final_for(method: &str) -> impl Fn(&str) -> bool + '_ {
    move |m: &str| {
        status(m).is_some_and(|s| s >= 200)
            && header(m, "CSeq").is_some_and(|c| c.ends_with(&format!(" {method}")))
    }
}

fn is_request(method: &str) -> impl Fn(&str) -> bool + '_ {
    move |m: &str| m.starts_with(&format!("{method} "))
}

/// A response to `req` with `code`, copying Via, Record-Route, From, Call-ID and CSeq; the
/// To gets `to_tag` unless it has one; `contact` if given.
fn respond(req: &str, code: u16, to_tag: &str, contact: Option<SocketAddr>) -> String {
    let mut out = format!("SIP/2.0 {code} OK\r\n");
    out.push_str(&lines(
        req,
        &[
            "Via",
            "v",
            "Record-Route",
            "From",
            "f",
            "Call-ID",
            "i",
            "CSeq",
        ],
    ));
    let to = header(req, "To").unwrap_or("");
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    if let Some(c) = contact {
        out.push_str(&format!("Contact: <sip:ua@{c}>\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// An OPTIONS from a UDP phone through siprox to the carrier; the response, if any, within
/// `within`.
async fn options(s: &Setup, id: &str, within: Duration) -> Option<String> {
    let ua = Ua::new(s.ip).await;
    let req = format!(
        "OPTIONS sip:carrier@{};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/UDP {};branch=z9hG4bK-{id};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a-{id}\r\nTo: <sip:carrier@carrier.test>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        s.kam.tls, ua.addr
    );
    ua.send(&req, s.udp).await;
    let until = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let (n, _) = tokio::time::timeout(left, ua.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status(&m).is_some_and(|c| c >= 200) {
            return Some(m);
        }
    }
}

/// OPTIONS through siprox to Kamailio: answered, with siprox's client certificate verified
/// by Kamailio; siprox's Via names an address siprox listens on (`;alias` and `rport`
/// without a TLS listener).
async fn options_reach_the_carrier(ip: &str, tls_listener: bool) {
    let s = setup(ip, tls_listener, None, None, "carrier.test", false);
    let r = options(&s, &format!("opt-{ip}-{tls_listener}"), T)
        .await
        .unwrap_or_else(|| panic!("no answer from the carrier; kamailio:\n{}", s.kam.log()));
    assert_eq!(status(&r), Some(200), "{r}");
    assert_eq!(header(&r, "X-Client-CN"), Some("siprox-client"), "{r}");
    assert_eq!(header(&r, "X-Client-Verified"), Some("1"), "{r}");
    let via = header(&r, "X-Via").expect("X-Via");
    let named = if tls_listener {
        s.rt.local_addr(Transport::Tls).expect("tls listener")
    } else {
        s.udp
    };
    assert!(via.starts_with(&format!("SIP/2.0/TLS {named};")), "{via}");
    assert_eq!(via.contains(";alias"), !tls_listener, "{via}");
    assert_eq!(s.rt.stats().responses_unmatched, 0);
    s.rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_over_tls_to_kamailio_with_and_without_a_tls_listener_ipv4() {
    options_reach_the_carrier(V4, false).await;
    options_reach_the_carrier(V4, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_over_tls_to_kamailio_with_and_without_a_tls_listener_ipv6() {
    options_reach_the_carrier(V6, false).await;
    options_reach_the_carrier(V6, true).await;
}

/// One call from a UDP phone through siprox and Kamailio (over TLS) to the UAS: INVITE,
/// 200, ACK; then a BYE from `callee_hangs_up`'s side, answered 200 end to end.
async fn call(
    s: &Setup,
    caller: &Ua,
    uas: &Ua,
    id: &str,
    callee_hangs_up: bool,
    ringing_relayed: bool,
    tcp: bool,
) {
    let ruri = if tcp {
        format!("sip:bob@{};transport=tcp", s.kam.tcp)
    } else {
        format!("sip:bob@{};transport=tls", s.kam.tls)
    };
    let invite = format!(
        "INVITE {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {c};branch=z9hG4bK-{id}-inv;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@{c}>;tag=a-{id}\r\nTo: <sip:bob@carrier.test>\r\n\
         Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{c}>\r\n\
         Content-Length: 0\r\n\r\n",
        c = caller.addr
    );
    caller.send(&invite, s.udp).await;
    let (inv, kam_udp) = uas
        .recv("INVITE at the UAS", |m| {
            is_request("INVITE")(m) && m.contains(id)
        })
        .await;
    let ringing = respond(&inv, 180, &format!("b-{id}"), Some(uas.addr));
    uas.send(&ringing, kam_udp).await;
    let ok = respond(&inv, 200, &format!("b-{id}"), Some(uas.addr));
    // One UDP socket to Kamailio and one TLS connection on to siprox: the 200 stays behind
    // the 180.
    uas.send(&ok, kam_udp).await;
    let mut ringing_seen = false;
    let ok = loop {
        let (r, _) = caller
            .recv("responses to the INVITE at the caller", |m| {
                status(m).is_some_and(|c| c >= 180) && is_final_for("INVITE")(m)
                    || is_status_for(180, "INVITE")(m)
            })
            .await;
        if status(&r) == Some(180) {
            ringing_seen = true;
        } else {
            break r;
        }
    };
    assert_eq!(status(&ok), Some(200), "{ok}");
    assert_eq!(ringing_seen, ringing_relayed, "the 180: {ok}");
    let rr = values(&ok, "Record-Route");
    assert!(rr.len() >= 2, "siprox and Kamailio record-route: {ok}");
    let to = header(&ok, "To").expect("To").to_owned();
    let target = uri_of(header(&ok, "Contact").expect("Contact")).to_owned();
    // The caller's route set: the Record-Route in order (RFC 3261 §12.1.2).
    let route = rr.join(", ");
    let ack = format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK-{id}-ack;rport\r\n\
         Max-Forwards: 70\r\nRoute: {route}\r\nFrom: <sip:alice@{c}>;tag=a-{id}\r\nTo: {to}\r\n\
         Call-ID: {id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        c = caller.addr
    );
    caller.send(&ack, s.udp).await;
    uas.recv("ACK at the UAS", |m| is_request("ACK")(m) && m.contains(id))
        .await;

    if callee_hangs_up {
        // The UAS's route set: the Record-Route reversed; first hop Kamailio (UDP), which
        // must reach siprox over the TLS connection siprox opened.
        let mut back = values(&inv, "Record-Route");
        back.reverse();
        let from = format!("<sip:bob@carrier.test>;tag=b-{id}");
        let bye = format!(
            "BYE sip:alice@{c} SIP/2.0\r\nVia: SIP/2.0/UDP {u};branch=z9hG4bK-{id}-bye;rport\r\n\
             Max-Forwards: 70\r\nRoute: {}\r\nFrom: {from}\r\nTo: <sip:alice@{c}>;tag=a-{id}\r\n\
             Call-ID: {id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            back.join(", "),
            c = caller.addr,
            u = uas.addr
        );
        uas.send(&bye, s.kam.udp).await;
        let (bye, from_siprox) = caller
            .recv("BYE from the callee at the caller", |m| {
                is_request("BYE")(m) && m.contains(id)
            })
            .await;
        caller
            .send(&respond(&bye, 200, "", None), from_siprox)
            .await;
        uas.recv("200 for the callee's BYE", is_status_for(200, "BYE"))
            .await;
    } else {
        let bye = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK-{id}-bye;rport\r\n\
             Max-Forwards: 70\r\nRoute: {route}\r\nFrom: <sip:alice@{c}>;tag=a-{id}\r\nTo: {to}\r\n\
             Call-ID: {id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            c = caller.addr
        );
        caller.send(&bye, s.udp).await;
        let (bye, from_kam) = uas
            .recv("BYE from the caller at the UAS", |m| {
                is_request("BYE")(m) && m.contains(id)
            })
            .await;
        uas.send(&respond(&bye, 200, "", None), from_kam).await;
        caller
            .recv("200 for the caller's BYE", is_status_for(200, "BYE"))
            .await;
    }
}

/// Two calls (the callee hangs up the first, the caller the second) for each setup.
async fn calls(ip: &str, tls_listener: bool, script: Option<&str>) {
    let ipa: IpAddr = ip.parse().expect("ip");
    let uas = Ua::new(ipa).await;
    let s = setup(
        ip,
        tls_listener,
        Some(uas.addr),
        script,
        "carrier.test",
        false,
    );
    let caller = Ua::new(ipa).await;
    let tag = format!("{}-{tls_listener}-{}", ipa.is_ipv4(), script.is_some());
    let ringing = !script.is_some_and(|s| s.contains("other.test"));
    call(
        &s,
        &caller,
        &uas,
        &format!("call-a-{tag}"),
        true,
        ringing,
        false,
    )
    .await;
    call(
        &s,
        &caller,
        &uas,
        &format!("call-b-{tag}"),
        false,
        ringing,
        false,
    )
    .await;
    assert_eq!(s.rt.stats().responses_unmatched, 0);
    if !tls_listener {
        // Everything went over the one connection siprox opened: Kamailio never had to
        // connect to siprox (it has no TLS listener to connect to).
        assert_eq!(s.rt.stats().accepted, 0);
    }
    s.rt.shutdown();
}

/// The same over plain TCP, siprox without a TCP listener: its Via names its UDP listener
/// with `;alias`, and Kamailio sends the callee's BYE back over siprox's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_kamailio_over_tcp_without_a_tcp_listener() {
    for ip in [V4, V6] {
        let ipa: IpAddr = ip.parse().expect("ip");
        let uas = Ua::new(ipa).await;
        let s = setup(ip, false, Some(uas.addr), None, "carrier.test", false);
        let caller = Ua::new(ipa).await;
        let tag = format!("tcp-{}", ipa.is_ipv4());
        call(
            &s,
            &caller,
            &uas,
            &format!("call-a-{tag}"),
            true,
            true,
            true,
        )
        .await;
        call(
            &s,
            &caller,
            &uas,
            &format!("call-b-{tag}"),
            false,
            true,
            true,
        )
        .await;
        assert_eq!(s.rt.stats().responses_unmatched, 0);
        assert_eq!(s.rt.stats().accepted, 0);
        s.rt.shutdown();
    }
}

fn stateful() -> String {
    STATEFUL.replace("$CN", "carrier.test")
}

/// onreply_route[NAME] of a t_relay()ed call sees the carrier's certificate: expecting
/// another CN, it drops the carrier's 180 (a final response cannot be dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_s_onreply_route_reads_the_carrier_s_certificate() {
    calls(V4, false, Some(&STATEFUL.replace("$CN", "other.test"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_kamailio_over_tls_ipv4() {
    calls(V4, false, None).await;
    calls(V4, true, None).await;
    calls(V4, false, Some(&stateful())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_kamailio_over_tls_ipv6() {
    calls(V6, false, None).await;
    calls(V6, true, None).await;
    calls(V6, false, Some(&stateful())).await;
}

/// The carrier's certificate as the script sees it in onreply_route: the expected CN lets
/// the 200 through, another CN drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onreply_route_reads_the_certificate_of_the_carrier_it_reached() {
    for (cn, passes) in [("carrier.test", true), ("other.test", false)] {
        let script = STATELESS_CHECK.replace("$CN", cn);
        let s = setup(V4, false, None, Some(&script), "carrier.test", false);
        let r = options(&s, &format!("peer-{cn}"), Duration::from_secs(3)).await;
        assert_eq!(
            r.as_ref().and_then(|r| status(r)) == Some(200),
            passes,
            "{cn}: {r:?}"
        );
        s.rt.shutdown();
    }
}

/// A client domain that expects another name than the carrier's certificate: the
/// handshake is refused (nothing reaches Kamailio, the caller gets 503), with a log line
/// naming the mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_certificate_for_another_name_is_refused_with_a_clear_log_line() {
    for ip in [V4, V6] {
        let s = setup(ip, false, None, None, "wrong.test", false);
        let r = options(&s, &format!("wrong-{ip}"), T).await;
        // The caller learns at once that the carrier could not be reached.
        assert_eq!(r.as_deref().and_then(status), Some(503), "{r:?}");
        assert_eventually!(
            s.rt.stats().connect_failures + s.rt.stats().handshake_failures >= 1,
            T
        );
        let logs = siprox_testkit::logs::at_least(tracing::Level::WARN);
        assert!(
            logs.iter()
                .any(|l| l.text.contains("outgoing connection failed")
                    && l.text.contains("hostname mismatch")
                    && l.text.contains("server name wrong.test")
                    && l.text.contains(&s.kam.tls.to_string())),
            "{logs:#?}"
        );
        s.rt.shutdown();
    }
}

/// A response on the connection siprox opened that answers nothing siprox sent is logged
/// once at INFO with the reason, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_response_is_logged_and_counted() {
    let s = setup(V4, false, None, None, "carrier.test", false);
    // Any response siprox cannot place: a Via that is not siprox's, over UDP.
    let ua = Ua::new(s.ip).await;
    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKstray\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: stray-1\r\n\
                 CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    ua.send(stray, s.udp).await;
    assert_eventually!(s.rt.stats().responses_unmatched == 1, T);
    assert_eventually!(
        siprox_testkit::logs::at_least(tracing::Level::INFO)
            .iter()
            .any(|l| l.text.contains("matches nothing siprox sent")
                && l.text.contains("stray-1")
                && l.text.contains("top Via is not siprox")),
        T
    );
    assert!(!ua.gets_within(Duration::from_millis(200), |_| true).await);
    s.rt.shutdown();
}

/// siprox's script accepting the carrier's requests by the certificate of the connection
/// siprox opened to it (and its client domain), not by its address.
const FROM_CARRIER: &str = r#"route {
    if (proto == TLS && is_method("INVITE") && uri == myself) {
        if (@tls.domain == "carrier" && @tls.peer.subject.cn == "$CN" && @tls.peer.verified == 1) {
            forward("$PHONE");
            exit;
        }
        sl_send_reply("403", "Not our carrier");
        exit;
    }
    forward();
}
"#;

/// The carrier's INVITE to a phone behind siprox, sent over the TLS connection siprox
/// opened (Kamailio finds it by the `;alias` of siprox's Via: siprox has no TLS listener),
/// accepted when the client domain says `accept_requests` and siprox's script checks the
/// carrier's certificate; another expected CN refuses it with 403, and so does a client
/// domain without `accept_requests`.
async fn carrier_calls_in(ip: &str, cn: &str, accept_requests: bool) {
    let ipa: IpAddr = ip.parse().expect("ip");
    let uas = Ua::new(ipa).await;
    let phone = Ua::new(ipa).await;
    let script = FROM_CARRIER
        .replace("$CN", cn)
        .replace("$PHONE", &phone.addr.to_string());
    let s = setup(
        ip,
        false,
        Some(uas.addr),
        Some(&script),
        "carrier.test",
        accept_requests,
    );
    // siprox reaches the carrier first (a keepalive): the connection and its alias exist.
    let r = options(&s, &format!("keepalive-{ip}-{cn}"), T).await;
    assert_eq!(r.as_deref().and_then(status), Some(200), "{r:?}");
    let id = format!("in-{}-{cn}-{accept_requests}", ipa.is_ipv4());
    let invite = format!(
        "INVITE sip:phone@{sx};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/UDP {u};branch=z9hG4bK-{id};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:carrier@carrier.test>;tag=c-{id}\r\nTo: <sip:phone@{sx}>\r\n\
         Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{u}>\r\nX-To-Siprox: 1\r\n\
         Content-Length: 0\r\n\r\n",
        sx = s.udp,
        u = uas.addr
    );
    uas.send(&invite, s.kam.udp).await;
    if cn == "carrier.test" && accept_requests {
        let (inv, from) = phone
            .recv("the carrier's INVITE at the phone", |m| {
                is_request("INVITE")(m) && m.contains(&id)
            })
            .await;
        assert_eq!(from, s.udp, "{inv}");
        phone
            .send(&respond(&inv, 200, "p", Some(phone.addr)), from)
            .await;
        uas.recv(
            "the phone's 200 at the carrier's UAS",
            is_status_for(200, "INVITE"),
        )
        .await;
    } else {
        let (r, _) = uas
            .recv(
                "siprox's answer at the carrier's UAS",
                is_final_for("INVITE"),
            )
            .await;
        assert_eq!(status(&r), Some(403), "{r}");
        assert!(
            !phone
                .gets_within(Duration::from_millis(300), |_| true)
                .await
        );
    }
    // Over the one connection siprox opened: Kamailio never connected to siprox.
    assert_eq!(s.rt.stats().accepted, 0);
    s.rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_carrier_calls_a_phone_over_the_connection_siprox_opened() {
    for ip in [V4, V6] {
        carrier_calls_in(ip, "carrier.test", true).await;
        carrier_calls_in(ip, "other.test", true).await;
        // The client domain does not say the carrier may send requests: 403, whatever the
        // script would do.
        carrier_calls_in(ip, "carrier.test", false).await;
    }
}
