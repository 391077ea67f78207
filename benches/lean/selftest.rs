//! `loadgen --self-test`: the lean engine's message code against its first, simple
//! version (oracle.rs) over many generated messages, and its UDP UAS's `recvmmsg` /
//! `sendmmsg` batches over a real socket (every response arrives once, byte for byte as
//! the oracle writes it). The bench crate has no test harness (`harness = false`), so
//! loadgen runs these itself; it prints `selftest ok ...` or fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::{
    answer, code_of, method_of, oracle, tag_of, target_of, uas_udp, Answers, LeanFlow, Plan,
    ReadBuffer, Writer, RECV_BATCH, SDP,
};
use crate::cluster_ua::Ruri;

/// xorshift64*: repeatable, no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

pub async fn run() -> Result<String, String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let w = writer(&mut rng)?;
    let r = responses(&mut rng)?;
    let a = answers(&mut rng)?;
    let u = udp(&mut rng).await?;
    Ok(format!(
        "selftest ok requests={w} responses={r} answers={a} udp_datagrams={u}"
    ))
}

fn plan(rng: &mut Rng, tls: bool) -> Plan {
    Plan {
        flow: LeanFlow::Invite,
        ruri: Arc::new(Ruri {
            template: format!("sip:bob@127.0.0.1:{};transport=udp", rng.below(65536)),
            n: 1,
        }),
        timeout: Duration::from_secs(5),
        deadline: None,
        calls: None,
        next: Arc::new(AtomicU64::new(0)),
        via_proto: if tls { "SIP/2.0/TLS" } else { "SIP/2.0/TCP" },
        transport_param: if tls { "tls" } else { "tcp" },
        token: format!("{:x}", rng.next()),
    }
}

fn uri(rng: &mut Rng) -> String {
    let user = rng.pick(&["bob", "p", "x-y"]);
    let (ip, port) = (rng.below(256), rng.below(65536));
    let mut u = format!("sip:{user}@127.0.0.{ip}:{port}");
    for _ in 0..rng.below(3) {
        u.push_str(rng.pick(&[";lr", ";transport=tls", ";ftag=ab,c", ";x=\"q\""]));
    }
    u
}

/// A Record-Route or Contact value: name-addr or addr-spec, some with a quoted comma.
fn addr(rng: &mut Rng) -> String {
    let u = uri(rng);
    match rng.below(5) {
        0 => format!("<{u}>"),
        1 => format!("\"A, B\" <{u}>;p=1"),
        2 => u.split(',').next().unwrap_or("").to_owned(),
        3 => format!("<{u}>;expires=30"),
        _ => format!("Bob <{u}>"),
    }
}

fn addrs(rng: &mut Rng) -> String {
    let n = 1 + rng.below(3);
    (0..n)
        .map(|_| addr(rng))
        .collect::<Vec<_>>()
        .join(rng.pick(&[", ", ",", " , "]))
}

/// `Name: value` with the spacing and name forms peers use.
fn header(rng: &mut Rng, names: &[&str], v: &str) -> String {
    let name = rng.pick(names);
    match rng.below(4) {
        0 => format!("{name}:{v}\r\n"),
        1 => format!("{name} :  {v} \r\n"),
        2 => format!("{name}:\t{v}\t\r\n"),
        _ => format!("{name}: {v}\r\n"),
    }
}

fn writer(rng: &mut Rng) -> Result<usize, String> {
    let mut cases = 0;
    for _ in 0..200 {
        let tls = rng.chance(2);
        let p = plan(rng, tls);
        let local: SocketAddr = format!("127.0.0.1:{}", rng.below(65536)).parse().unwrap();
        let conn_no = rng.below(300);
        let mut w = Writer::new(&p, local, conn_no);
        let via = format!("Via: {} {local};branch=z9hG4bK-l{}", p.via_proto, p.token);
        let contact = format!(
            "Contact: <sip:alice@{local};transport={}>\r\n",
            p.transport_param
        );
        for branch in 1..=20u64 {
            let method = rng.pick(&["INVITE", "ACK", "BYE", "OPTIONS"]);
            let ruri = uri(rng);
            let n = match rng.below(4) {
                0 => 0,
                1 => u64::MAX,
                _ => rng.next() >> rng.below(64),
            };
            let cseq = if rng.chance(3) {
                rng.next() as u32
            } else {
                1 + rng.below(2) as u32
            };
            let tag = format!("{:x}", rng.next());
            let to_tag = rng.chance(2).then_some(tag.as_bytes());
            let rr: Vec<String> = (0..rng.below(4)).map(|_| addr(rng)).collect();
            let rr: Vec<&[u8]> = rr.iter().map(|r| r.as_bytes()).collect();
            let body: &[u8] = if rng.chance(2) { SDP } else { b"" };
            let (mut new, mut old) = (Vec::new(), Vec::new());
            w.request(
                &mut new,
                method.as_bytes(),
                ruri.as_bytes(),
                n,
                cseq,
                to_tag,
                &rr,
                body,
            );
            let routes: Vec<&[u8]> = rr.iter().rev().map(|r| oracle::angle(r)).collect();
            oracle::request(
                &mut old,
                &via,
                conn_no,
                branch,
                &p.token,
                &contact,
                method,
                ruri.as_bytes(),
                n,
                cseq,
                to_tag,
                &routes,
                body,
            );
            if new != old {
                return Err(format!(
                    "request differs:\nnew: {}\nold: {}",
                    String::from_utf8_lossy(&new),
                    String::from_utf8_lossy(&old)
                ));
            }
            cases += 1;
        }
    }
    Ok(cases)
}

/// A response as a proxy might send it (or now and then something else).
fn response(rng: &mut Rng) -> String {
    let start = match rng.below(12) {
        0 => "OPTIONS sip:x SIP/2.0".to_owned(),
        1 => "SIP/2.0 2x0 Odd".to_owned(),
        2 => "SIP/2.0 20".to_owned(),
        _ => {
            let code = rng.pick(&[
                "100 Trying",
                "180 Ringing",
                "200 OK",
                "200 OK",
                "486 Busy Here",
                "503 Service Unavailable",
            ]);
            format!("SIP/2.0 {code}")
        }
    };
    let mut hs: Vec<String> = Vec::new();
    hs.push(header(
        rng,
        &["Via", "v", "VIA"],
        "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-1;rport=5061",
    ));
    for _ in 0..rng.below(3) {
        let v = addrs(rng);
        hs.push(header(
            rng,
            &["Record-Route", "record-route", "RECORD-ROUTE"],
            &v,
        ));
    }
    for _ in 0..(1 + usize::from(rng.chance(8))) {
        let v = match rng.below(5) {
            0 => "<sip:bob@siprox.test>".to_owned(),
            1 => format!("<sip:bob@siprox.test>;tag={:x};x=1", rng.next()),
            2 => format!("\"Bob\" <sip:bob@siprox.test>;tag={:x}", rng.next()),
            3 => format!("<sip:bob@siprox.test;tag=in>;tag={:x} ", rng.next()),
            _ => format!("<sip:bob@siprox.test>;tag={:x}", rng.next()),
        };
        if !rng.chance(12) {
            hs.push(header(rng, &["To", "t", "TO"], &v));
        }
    }
    hs.push(header(
        rng,
        &["From", "f"],
        "\"Alice\" <sip:alice@siprox.test>;tag=f1",
    ));
    for _ in 0..(1 + usize::from(rng.chance(8))) {
        if !rng.chance(12) {
            let v = format!(
                "{:x}.{}.tok@siprox.test",
                rng.next() >> rng.below(64),
                rng.below(4)
            );
            hs.push(header(rng, &["Call-ID", "i", "call-id", "CALL-ID"], &v));
        }
    }
    if !rng.chance(12) {
        let v = format!(
            "{} {}",
            1 + rng.below(2),
            rng.pick(&["INVITE", "BYE", "OPTIONS", "INVITE  ", "ACK"])
        );
        hs.push(header(rng, &["CSeq", "cseq", "CSEQ"], &v));
    }
    for _ in 0..rng.below(3) {
        let v = addrs(rng);
        hs.push(header(rng, &["Contact", "m", "contact"], &v));
    }
    if rng.chance(6) {
        hs.push("X-No-Colon-Line\r\n".to_owned());
    }
    // Shuffle (Fisher-Yates).
    for i in (1..hs.len()).rev() {
        let j = rng.below(i + 1);
        hs.swap(i, j);
    }
    let body: String = if rng.chance(5) {
        "v=0\r\n".repeat(1 + rng.below(40))
    } else {
        String::new()
    };
    let len = body.len().to_string();
    let cl = header(rng, &["Content-Length", "l", "content-length"], &len);
    let mut m = format!("{start}\r\n");
    for h in hs {
        m.push_str(&h);
    }
    m.push_str(&cl);
    m.push_str("\r\n");
    m.push_str(&body);
    m
}

/// Responses over a stream, fed in pieces of random size: the new framing and reading
/// against the old over the whole stream at once.
fn responses(rng: &mut Rng) -> Result<usize, String> {
    let mut stream = Vec::new();
    for i in 0..6000 {
        if rng.chance(10) {
            stream.extend_from_slice(b"\r\n");
        }
        if i == 3000 {
            // One message larger than the read buffer: it grows.
            let body = "x".repeat(super::READ_BUF + 1000);
            stream.extend_from_slice(
                format!(
                    "SIP/2.0 200 OK\r\nCall-ID: 1.0.t@x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            continue;
        }
        stream.extend_from_slice(response(rng).as_bytes());
    }
    let mut old: Vec<(Vec<u8>, Option<oracle::Read>)> = Vec::new();
    let mut at = 0;
    while let Some((len, body)) = oracle::frame(&stream[at..]) {
        let m = &stream[at..at + len];
        at += len + body;
        if m.is_empty() {
            continue;
        }
        old.push((m.to_vec(), oracle::read(m)));
    }
    if at != stream.len() {
        return Err(format!(
            "oracle framing stopped at {at} of {}",
            stream.len()
        ));
    }
    let mut new: Vec<(Vec<u8>, Option<oracle::Read>)> = Vec::new();
    let mut rb = ReadBuffer::new();
    let mut fed = 0;
    while fed < stream.len() {
        let most = if rng.chance(4) { 20 } else { 20_000 };
        let want = 1 + rng.below(most);
        let room = rb.room();
        let k = want.min(room.len()).min(stream.len() - fed);
        room[..k].copy_from_slice(&stream[fed..fed + k]);
        fed += k;
        rb.drain(k, |m, sc, rr| {
            let read = code_of(m).map(|code| oracle::Read {
                code,
                call_id: sc.call_id.map(<[u8]>::to_vec),
                method: method_of(sc.cseq).to_vec(),
                tag: tag_of(sc.to).map(<[u8]>::to_vec),
                target: target_of(sc.contact).map(<[u8]>::to_vec),
                routes: rr.iter().rev().map(|r| super::angle(r).to_vec()).collect(),
            });
            new.push((m.to_vec(), read));
        });
    }
    if new.len() != old.len() {
        return Err(format!(
            "{} messages framed, the oracle framed {}",
            new.len(),
            old.len()
        ));
    }
    for (i, (n, o)) in new.iter().zip(&old).enumerate() {
        if n != o {
            return Err(format!(
                "response {i} read differently:\n{}\nnew: {:?}\nold: {:?}",
                String::from_utf8_lossy(&o.0),
                n.1,
                o.1
            ));
        }
    }
    if old
        .iter()
        .filter(|(_, r)| r.as_ref().is_some_and(|r| !r.routes.is_empty()))
        .count()
        < 100
    {
        return Err("too few responses with a route set".to_owned());
    }
    Ok(new.len())
}

/// A request as a proxy forwards it to the UAS.
fn request(rng: &mut Rng, via_port: u16) -> String {
    let method = rng.pick(&["INVITE", "INVITE", "ACK", "BYE", "OPTIONS", "SIP/2.0"]);
    let mut hs: Vec<String> = Vec::new();
    let top = match rng.below(5) {
        0 => format!("SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK-a;rport"),
        1 => format!("SIP/2.0/UDP 127.0.0.9:1;branch=z9hG4bK-a;received=127.0.0.1;rport={via_port}"),
        2 => format!("SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK-a, SIP/2.0/TLS 127.0.0.2:5061;branch=x"),
        3 => format!("SIP/2.0/UDP  127.0.0.1:{via_port} ;branch=z9hG4bK-a"),
        _ => format!("SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK-{:x}", rng.next()),
    };
    hs.push(header(rng, &["Via", "v"], &top));
    if rng.chance(2) {
        hs.push(header(
            rng,
            &["Via", "v"],
            "SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-b;rport=40000",
        ));
    }
    for _ in 0..rng.below(3) {
        let v = addrs(rng);
        hs.push(header(rng, &["Record-Route", "record-route"], &v));
    }
    hs.push(header(rng, &["Max-Forwards"], "69"));
    let from = format!("\"Alice\" <sip:alice@siprox.test>;tag=f{:x}", rng.next());
    hs.push(header(rng, &["From", "f"], &from));
    let to = if rng.chance(3) {
        format!("<sip:bob@siprox.test>;tag=uas{:x}", rng.next())
    } else {
        "<sip:bob@siprox.test>".to_owned()
    };
    hs.push(header(rng, &["To", "t"], &to));
    let cid = format!("{:x}.1.tok@siprox.test", rng.next());
    hs.push(header(rng, &["Call-ID", "i"], &cid));
    hs.push(header(rng, &["CSeq"], &format!("1 {method}")));
    let contact = addr(rng);
    hs.push(header(rng, &["Contact", "m"], &contact));
    let mut m = format!("{method} sip:bob@127.0.0.1:5080;transport=udp SIP/2.0\r\n");
    for h in hs {
        m.push_str(&h);
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

fn answers(rng: &mut Rng) -> Result<usize, String> {
    let contact = "Contact: <sip:bob@127.0.0.1:5080;transport=udp>\r\n";
    let from: SocketAddr = "127.0.0.1:25060".parse().unwrap();
    let mut a = Answers::default();
    let mut n = 0;
    for _ in 0..500 {
        a.clear();
        let mut want = Vec::new();
        for _ in 0..(1 + rng.below(RECV_BATCH)) {
            let port = 40000 + rng.below(1000) as u16;
            let req = request(rng, port);
            answer(&mut a, req.as_bytes(), from, contact.as_bytes());
            want.extend(oracle::answer(req.as_bytes(), from, contact));
        }
        let got: Vec<(Vec<u8>, SocketAddr)> = a
            .msgs
            .iter()
            .map(|(s, e, to)| (a.out[*s..*e].to_vec(), *to))
            .collect();
        if got != want {
            return Err(format!("UAS answers differ:\nnew: {got:?}\nold: {want:?}"));
        }
        n += got.len();
    }
    Ok(n)
}

/// The UAS over a real socket: bursts of requests larger than one `recvmmsg` batch; every
/// response the oracle would send arrives once, and nothing else.
async fn udp(rng: &mut Rng) -> Result<usize, String> {
    let uas = Arc::new(
        siprox_testkit::ua::udp_bind("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?,
    );
    let uas_at = uas.local_addr().map_err(|e| e.to_string())?;
    let contact = format!("Contact: <sip:bob@{uas_at};transport=udp>\r\n");
    let task = crate::AbortOnDrop(tokio::spawn(uas_udp(uas)));
    let me =
        siprox_testkit::ua::udp_bind("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let my = me.local_addr().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    let mut total = 0;
    for burst in 0..41 {
        let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut expected = 0;
        let n = if burst == 40 {
            1
        } else {
            1 + rng.below(3 * RECV_BATCH)
        };
        for _ in 0..n {
            // The last burst: one OPTIONS whose 200 must be the next datagram.
            let req = if burst == 40 {
                format!("OPTIONS sip:bob SIP/2.0\r\nVia: SIP/2.0/UDP {my};branch=z9hG4bK-end\r\nCall-ID: end\r\nCSeq: 1 OPTIONS\r\nTo: <sip:bob@x>\r\nFrom: <sip:a@x>;tag=1\r\nContent-Length: 0\r\n\r\n")
            } else {
                request(rng, my.port())
            };
            for (bytes, to) in oracle::answer(req.as_bytes(), my, &contact) {
                if to != my {
                    return Err(format!("the oracle answers to {to}, not to {my}"));
                }
                *want.entry(bytes).or_default() += 1;
                expected += 1;
            }
            me.send_to(req.as_bytes(), uas_at)
                .await
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..expected {
            let (k, _) = tokio::time::timeout(Duration::from_secs(10), me.recv_from(&mut buf))
                .await
                .map_err(|_| format!("burst {burst}: a response never came"))?
                .map_err(|e| e.to_string())?;
            match want.get_mut(&buf[..k]) {
                Some(c) if *c > 0 => *c -= 1,
                _ => {
                    return Err(format!(
                        "burst {burst}: unexpected or duplicated datagram:\n{}",
                        String::from_utf8_lossy(&buf[..k])
                    ))
                }
            }
            total += 1;
        }
    }
    drop(task);
    Ok(total)
}
