//! All 49 RFC 4475 torture messages sent over UDP to a running siprox: each gets the answer
//! (or the silence) tests/data/rfc4475/EXPECTED.tsv names, and siprox keeps serving. Must
//! never weaken a verdict to make siprox pass: a mismatch is reported, not skipped.
//!
//! How the corpus is made routable, touching as few bytes as possible:
//! - Every bare LF becomes CRLF (the rule in EXPECTED.tsv's header).
//! - Requests whose Request-URI is `sip:`/`sips:` get one header line right after the start
//!   line, `Route: <sip:127.0.0.1:UAS;lr>`: a preloaded route to the local UAS, as an
//!   outbound-proxy setting of a phone would add. The Request-URI and every other byte stay
//!   as the RFC wrote them (they are what the torture tests are about). Requests with
//!   another scheme (unkscm, novelsc) get no Route: their scheme is the test.
//! - Responses: RFC 4475 reads a response's top Via as the receiving proxy's own (§3.3.10,
//!   bcast.dat), so the top Via line is replaced by siprox's own sent-by (keeping its
//!   branch). A response with only that one Via gets a second one naming the UAS, the
//!   element upstream that the response travels to; otherwise the second Via is the RFC's.
//! - Replies of siprox go, per RFC 3261 §18.2.2, to the source IP and the top Via's port
//!   (5060 when absent, since these Vias carry no `rport`). The test therefore sends from
//!   a loopback address of its own, 127.0.0.N, port 5060, and listens there on every port
//!   the corpus's top Vias name: no byte of a Via needs to change.
//!
//! Verdicts: `forward` = the UAS receives it and nothing comes back; a code = that status
//! comes back and nothing is forwarded; `drop` = nothing comes back and nothing is
//! forwarded; `any` = either, as long as siprox still answers. After every message an
//! OPTIONS to siprox itself must be answered (it keeps serving), and that answer is also the
//! barrier after which silence is checked.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::inproc::{Options, Siprox};
use siprox::sip::{Limits, Message};
use siprox_testkit::ua::{Received, Transport, Uas, UasOpts};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

struct Case {
    file: String,
    proxy: String,
}

fn data(name: &str) -> String {
    // The corpus is shared with the core's parser tests (tests/rfc4475.rs).
    format!(
        "{}/../tests/data/rfc4475/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn cases() -> Vec<Case> {
    std::fs::read_to_string(data("EXPECTED.tsv"))
        .expect("EXPECTED.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Case {
                file: c[0].to_owned(),
                proxy: c[3].to_owned(),
            }
        })
        .collect()
}

/// EXPECTED.tsv's rule: every bare LF becomes CRLF; existing CRLF stays.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The head's lines (up to the blank line) as (start, end-without-CRLF) offsets.
fn head_lines(m: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = find(&m[at..], b"\r\n") {
        if i == 0 {
            break;
        }
        out.push((at, at + i));
        at += i + 2;
    }
    out
}

fn is_via_line(line: &[u8]) -> bool {
    let lower = line.to_ascii_lowercase();
    let name_end = lower.iter().position(|&b| b == b':').unwrap_or(0);
    let name = String::from_utf8_lossy(&lower[..name_end]);
    matches!(name.trim(), "via" | "v")
}

/// Makes the message routable to the UAS as the module doc says.
fn prepare(raw: &[u8], sx: SocketAddr, uas: SocketAddr) -> Vec<u8> {
    let m = crlf(raw);
    let Some(sl_end) = find(&m, b"\r\n") else {
        return m;
    };
    let start_line = String::from_utf8_lossy(&m[..sl_end]).to_string();
    if start_line.starts_with("SIP/") {
        let lines = head_lines(&m);
        let vias: Vec<(usize, usize)> = lines
            .iter()
            .copied()
            .skip(1)
            .filter(|&(a, b)| is_via_line(&m[a..b]))
            .collect();
        let Some(&(a, b)) = vias.first() else {
            return m;
        };
        let line = String::from_utf8_lossy(&m[a..b]).to_string();
        let branch = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("branch="))
            .map(|b| b.trim().to_owned())
            .unwrap_or_else(|| "z9hG4bK-torture".to_owned());
        let mut repl = format!("Via: SIP/2.0/UDP {sx};branch={branch}");
        if vias.len() == 1 {
            repl.push_str(&format!(
                "\r\nVia: SIP/2.0/UDP {uas};branch=z9hG4bK-torture-uas"
            ));
        }
        let mut out = m[..a].to_vec();
        out.extend_from_slice(repl.as_bytes());
        out.extend_from_slice(&m[b..]);
        return out;
    }
    let ruri = start_line.split_whitespace().nth(1).unwrap_or("");
    let lower = ruri.to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") {
        let mut out = m[..sl_end + 2].to_vec();
        out.extend_from_slice(format!("Route: <sip:{uas};lr>\r\n").as_bytes());
        out.extend_from_slice(&m[sl_end + 2..]);
        return out;
    }
    m
}

/// The port of the top Via, when the (possibly malformed) message lets us read it.
fn top_via_port(m: &[u8]) -> Option<u16> {
    let msg = Message::parse(Bytes::copy_from_slice(m)).ok()?;
    let v = msg.top_via().ok()?;
    Some(v.port.unwrap_or(5060))
}

/// A loopback address of our own, 127.0.0.N, with every port in `ports` bound on it.
async fn bind_local(ports: &BTreeSet<u16>) -> (IpAddr, Vec<Arc<UdpSocket>>) {
    let first = 2 + (std::process::id() % 200) as u8;
    'addr: for k in 0..200u16 {
        let n = 2 + ((u16::from(first) + k) % 250) as u8;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let mut socks = Vec::new();
        for &p in ports {
            match UdpSocket::bind(SocketAddr::new(ip, p)).await {
                Ok(s) => socks.push(Arc::new(s)),
                Err(_) => continue 'addr,
            }
        }
        return (ip, socks);
    }
    panic!("no 127.0.0.N address with ports {ports:?} free");
}

fn options_to_siprox(from: SocketAddr, sx: SocketAddr, tag: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:{sx} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-probe{tag};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@siprox.test>;tag=p{tag}\r\nTo: <sip:{sx}>\r\n\
         Call-ID: probe-{tag}@siprox.test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_49_torture_messages_get_the_expected_answer_over_udp() {
    let cases = cases();
    assert_eq!(cases.len(), 49);
    let sx = Siprox::start(Options {
        tcp: false,
        tls: false,
        ..Options::default()
    })
    .await;
    let uas = Uas::start(
        Transport::Udp,
        UasOpts {
            silent: true,
            ..UasOpts::default()
        },
    )
    .await
    .unwrap();

    let prepared: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| {
            let raw = std::fs::read(data(&c.file)).expect("read corpus");
            prepare(&raw, sx.udp(), uas.addr)
        })
        .collect();
    let mut ports: BTreeSet<u16> = prepared.iter().filter_map(|m| top_via_port(m)).collect();
    ports.insert(5060);
    let (_ip, socks) = bind_local(&ports).await;
    let sender = socks
        .iter()
        .find(|s| s.local_addr().unwrap().port() == 5060)
        .unwrap()
        .clone();
    let (tx, mut replies) = mpsc::unbounded_channel::<(u16, Vec<u8>)>();
    for s in &socks {
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                if tx.send((port, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    }
    let limits = Limits::default();
    let mut failures = Vec::new();
    // Forwards are attributed by Call-ID: a forward and the barrier's answer travel to two
    // different sockets of this process, so their order of arrival here is not guaranteed.
    let ids: Vec<Option<String>> = prepared
        .iter()
        .map(|m| {
            Message::parse_datagram(Bytes::from(m.clone()), &limits)
                .ok()
                .and_then(|m| m.call_id().ok().map(str::to_owned))
        })
        .collect();
    let known: BTreeSet<&str> = ids.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        known.len(),
        ids.iter().flatten().count(),
        "Call-IDs repeat in the corpus"
    );
    // Which case a message at the UAS belongs to: its Call-ID, or `None` for one that has
    // no Call-ID of the corpus (then it belongs to a case whose own Call-ID is unreadable).
    let owner = |r: &Received| -> Option<String> {
        r.msg
            .call_id()
            .ok()
            .filter(|c| known.contains(c))
            .map(str::to_owned)
    };
    let arrived = |id: &Option<String>, from: usize| -> bool {
        uas.received()[from..].iter().any(|r| owner(r) == *id)
    };

    for (i, (case, bytes)) in cases.iter().zip(&prepared).enumerate() {
        let id = ids[i].clone();
        let before = uas.received().len();
        sender.send_to(bytes, sx.udp()).await.unwrap();
        let mut got: Vec<u16> = Vec::new();
        // What the message itself caused: wait positively for what is expected...
        match case.proxy.as_str() {
            "forward" => {
                let _ = uas
                    .wait_for(Duration::from_secs(5), |r| owner(r) == id)
                    .await;
            }
            code if code.parse::<u16>().is_ok() => {
                let want: u16 = code.parse().unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while let Ok(Some((_, r))) = tokio::time::timeout_at(deadline, replies.recv()).await
                {
                    if let Ok(m) = Message::parse_datagram(Bytes::from(r), &limits) {
                        if let Some(s) = m.status() {
                            got.push(s);
                            if s == want {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        // ...then the barrier: siprox answers an OPTIONS to itself (it keeps serving), and
        // any reply the message caused has come back to this socket before that answer.
        let tag = format!("{i}");
        sender
            .send_to(
                &options_to_siprox(sender.local_addr().unwrap(), sx.udp(), &tag),
                sx.udp(),
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut alive = false;
        while let Ok(Some((_, r))) = tokio::time::timeout_at(deadline, replies.recv()).await {
            let Ok(m) = Message::parse_datagram(Bytes::from(r), &limits) else {
                continue;
            };
            if m.call_id().ok() == Some(&format!("probe-{tag}@siprox.test")) {
                alive = m.status() == Some(200);
                break;
            }
            if let Some(s) = m.status() {
                got.push(s);
            }
        }
        let forwarded = arrived(&id, before);
        if !alive {
            failures.push(format!(
                "{}: siprox did not answer OPTIONS afterwards",
                case.file
            ));
        }
        let ok = match case.proxy.as_str() {
            "forward" => forwarded && got.is_empty(),
            "drop" => !forwarded && got.is_empty(),
            "any" => true,
            code => !forwarded && got.len() == 1 && code.parse() == Ok(got[0]),
        };
        eprintln!(
            "{:<15} expected {:<8} replies {got:?} forwarded {forwarded} alive {alive}",
            case.file, case.proxy
        );
        if !ok {
            failures.push(format!(
                "{}: expected {}, got replies {got:?}, forwarded to UAS: {forwarded}",
                case.file, case.proxy
            ));
        }
    }
    // A forward that arrived after its case was judged is caught here: everything the UAS
    // ever got must belong to a `forward` or `any` case.
    let allowed: Vec<Option<String>> = cases
        .iter()
        .zip(&ids)
        .filter(|(c, _)| c.proxy == "forward" || c.proxy == "any")
        .map(|(_, id)| id.clone())
        .collect();
    for r in uas.received() {
        let o = owner(&r);
        if !allowed.contains(&o) {
            failures.push(format!(
                "the UAS received {:?} (Call-ID {o:?}), which no forward/any case sent",
                r.msg.start_line()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 49 cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    sx.shutdown().await;
}
