//! loadgen's lean call engine: the OPTIONS and INVITE-100-180-200-ACK-BYE-200 flows over
//! persistent TCP/TLS connections, and a UDP UAS, built so that the load generator spends
//! less CPU per call than the proxy it measures (issue 18: with the test kit's UA it spent
//! more than siprox at siprox's peak).
//!
//! What it does not do that the test kit's UA (tests/kit/src/ua.rs) does, and why that is
//! enough to measure a proxy:
//! - One task per connection runs all the calls of that connection (a slot per call in
//!   flight): no task per call, no channel or mutex between a reader and the calls, and
//!   the requests a burst of responses makes are written to the stream once (one TLS
//!   record and one syscall per burst, not per message).
//! - Responses are read only as far as the flows need: the status code, Call-ID (which
//!   names the slot), CSeq method, the To tag, Record-Route and Contact of the 200 to the
//!   INVITE. The UAS reads the method and copies Via, From, To, Call-ID, CSeq (and
//!   Record-Route into a 180/200) from the request line by line, as RFC 3261 §8.2.6 asks.
//! - The UAS drains every datagram that is ready before it waits again.
//!
//! loadgen uses it for `--flow options|invite` over `--transport tcp|tls` with persistent
//! connections, no `--rate`, `--phone` or `--new-conn-per-call`, and a UDP UAS
//! (`--uas-transport udp`); every other combination runs on the test kit's UA as before.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use siprox_testkit::ua::AsyncStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::cluster_ua::Ruri;

/// The flows the lean engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeanFlow {
    Options,
    Invite,
}

/// What one connection's calls measured (merged into loadgen's tally).
#[derive(Default)]
pub struct LeanTally {
    pub call_us: Vec<u64>,
    pub setup_us: Vec<u64>,
    pub failures: HashMap<String, u64>,
}

/// The run, shared by every connection.
pub struct Plan {
    pub flow: LeanFlow,
    pub ruri: Arc<Ruri>,
    pub timeout: Duration,
    pub deadline: Option<Instant>,
    /// Stop after this many calls in all (with `next`, shared by the connections).
    pub calls: Option<u64>,
    pub next: Arc<std::sync::atomic::AtomicU64>,
    /// `SIP/2.0/TCP` or `SIP/2.0/TLS`, and the `transport=` parameter.
    pub via_proto: &'static str,
    pub transport_param: &'static str,
    /// Unique in this run and across runs (Call-IDs, tags and branches carry it).
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Invite,
    Bye,
    Options,
}

struct Slot {
    /// Call number (global), also in the Call-ID.
    n: u64,
    wait: Wait,
    t0: Instant,
    setup_us: u64,
    deadline: Instant,
}

const SDP: &[u8] = b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// One connection: `slots` calls in flight until the plan says stop.
pub async fn run_connection(
    mut s: std::pin::Pin<Box<dyn AsyncStream>>,
    local: SocketAddr,
    slots: usize,
    conn_no: usize,
    plan: Arc<Plan>,
) -> LeanTally {
    let mut t = LeanTally::default();
    let now = Instant::now();
    let mut calls: Vec<Slot> = (0..slots)
        .map(|_| Slot {
            n: 0,
            wait: Wait::Idle,
            t0: now,
            setup_us: 0,
            deadline: now,
        })
        .collect();
    let via = format!(
        "Via: {} {local};branch=z9hG4bK-l{}",
        plan.via_proto, plan.token
    );
    let contact = format!(
        "Contact: <sip:alice@{local};transport={}>\r\n",
        plan.transport_param
    );
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut branch: u64 = 0;
    let mut w = Writer {
        plan: &plan,
        via: &via,
        contact: &contact,
        conn_no,
        branch: &mut branch,
    };
    for c in calls.iter_mut() {
        start_call(&mut w, &mut out, c);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !out.is_empty() {
            if let Err(e) = write_all(&mut s, &out).await {
                fail_all(&mut t, &mut calls, &format!("send: {e}"));
                break;
            }
            out.clear();
        }
        if calls.iter().all(|c| c.wait == Wait::Idle) {
            break;
        }
        tokio::select! {
            r = s.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    fail_all(&mut t, &mut calls, "connection closed by the proxy");
                    break;
                }
                Ok(_) => {
                    let mut at = 0;
                    while let Some((len, body)) = frame(&buf[at..]) {
                        let end = at + len + body;
                        let m = &buf[at..at + len];
                        at = end;
                        if m.is_empty() {
                            continue;
                        }
                        on_response(&mut w, &mut out, &mut t, &mut calls, m);
                    }
                    buf.drain(..at);
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for c in calls.iter_mut() {
                    if c.wait != Wait::Idle && now >= c.deadline {
                        let method = match c.wait {
                            Wait::Invite => "INVITE",
                            Wait::Bye => "BYE",
                            _ => "OPTIONS",
                        };
                        let reason = format!("no final response to {method} within {:?}", plan.timeout);
                        *t.failures.entry(reason).or_default() += 1;
                        start_call(&mut w, &mut out, c);
                    }
                }
            }
        }
    }
    let _ = s.shutdown().await;
    t
}

async fn write_all(s: &mut std::pin::Pin<Box<dyn AsyncStream>>, b: &[u8]) -> std::io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

fn fail_all(t: &mut LeanTally, calls: &mut [Slot], reason: &str) {
    for c in calls.iter_mut().filter(|c| c.wait != Wait::Idle) {
        *t.failures.entry(reason.to_owned()).or_default() += 1;
        c.wait = Wait::Idle;
    }
}

/// What a request needs to be written.
struct Writer<'a> {
    plan: &'a Plan,
    /// `Via: SIP/2.0/TLS ip:port;branch=z9hG4bK-l<token>` (a counter and `;rport` follow).
    via: &'a str,
    contact: &'a str,
    conn_no: usize,
    branch: &'a mut u64,
}

impl Writer<'_> {
    /// Appends a request to `out`. `to_tag` and `routes` for in-dialog requests.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        out: &mut Vec<u8>,
        method: &str,
        ruri: &[u8],
        n: u64,
        cseq: u32,
        to_tag: Option<&[u8]>,
        routes: &[&[u8]],
        body: &[u8],
    ) {
        *self.branch += 1;
        let tok = &self.plan.token;
        let _ = write!(out, "{method} ");
        out.extend_from_slice(ruri);
        let _ = write!(
            out,
            " SIP/2.0\r\n{}-{:x}-{:x};rport\r\nMax-Forwards: 70\r\n",
            self.via, self.conn_no, *self.branch
        );
        for r in routes {
            out.extend_from_slice(b"Route: ");
            out.extend_from_slice(r);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "From: \"Alice\" <sip:alice@siprox.test>;tag=f{n:x}-{tok}\r\nTo: <sip:bob@siprox.test>"
        );
        if let Some(tag) = to_tag {
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(tag);
        }
        let _ = write!(
            out,
            "\r\nCall-ID: {n:x}.{:x}.{tok}@siprox.test\r\nCSeq: {cseq} {method}\r\n",
            self.conn_no
        );
        out.extend_from_slice(self.contact.as_bytes());
        if !body.is_empty() {
            out.extend_from_slice(b"Content-Type: application/sdp\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    }
}

/// Starts the next call in slot `i` (or leaves it idle when the run is over).
fn start_call(w: &mut Writer<'_>, out: &mut Vec<u8>, c: &mut Slot) {
    c.wait = Wait::Idle;
    let plan = w.plan;
    let now = Instant::now();
    if plan.deadline.is_some_and(|d| now >= d) {
        return;
    }
    let n = plan.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if plan.calls.is_some_and(|max| n >= max) {
        return;
    }
    // The Call-ID is `<n>.<conn>.<token>`: a response finds its slot again by n.
    let ruri = plan.ruri.of(n);
    let (method, body, wait) = match plan.flow {
        LeanFlow::Options => ("OPTIONS", &b""[..], Wait::Options),
        LeanFlow::Invite => ("INVITE", SDP, Wait::Invite),
    };
    w.request(out, method, ruri.as_bytes(), n, 1, None, &[], body);
    c.n = n;
    c.wait = wait;
    c.t0 = now;
    c.deadline = now + plan.timeout;
}

/// The header lines of a message (after the start line): (name, value) pairs, folded
/// lines not joined (the peers here do not fold).
fn headers(m: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let head_end = find(m, b"\r\n\r\n").unwrap_or(m.len());
    let head = &m[..head_end];
    let first = find(head, b"\r\n").map_or(head.len(), |i| i + 2);
    head[first.min(head.len())..]
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let colon = l.iter().position(|b| *b == b':')?;
            Some((trim(&l[..colon]), trim(&l[colon + 1..])))
        })
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [x, rest @ ..] = b {
        if *x == b' ' || *x == b'\t' {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., x] = b {
        if *x == b' ' || *x == b'\t' {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(h, needle)
}

fn is(name: &[u8], long: &str, short: &str) -> bool {
    name.eq_ignore_ascii_case(long.as_bytes()) || name.eq_ignore_ascii_case(short.as_bytes())
}

/// One frame at the start of a stream buffer: (bytes of the message head, blank line
/// included; bytes of its body), or `None` until it is complete. A CRLF keep-alive comes
/// out as an empty head followed by 2 bytes to skip.
fn frame(b: &[u8]) -> Option<(usize, usize)> {
    if b.starts_with(b"\r\n") {
        // A keep-alive (or the CRLF before a message): skip it.
        return Some((0, 2));
    }
    let end = find(b, b"\r\n\r\n")? + 4;
    let mut len = 0usize;
    for (k, v) in headers(&b[..end]) {
        if is(k, "content-length", "l") {
            len = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
        }
    }
    if b.len() < end + len {
        return None;
    }
    Some((end, len))
}

/// The `<...>` part of a name-addr (or the value up to `;` without them).
fn angle(v: &[u8]) -> &[u8] {
    match (
        v.iter().position(|b| *b == b'<'),
        v.iter().rposition(|b| *b == b'>'),
    ) {
        (Some(a), Some(b)) if a < b => &v[a..=b],
        _ => v.split(|b| *b == b';').next().unwrap_or(v),
    }
}

/// Comma-separated values of one header line (commas inside `<>` or quotes kept).
fn split_commas(v: &[u8]) -> Vec<&[u8]> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, b) in v.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                out.push(trim(&v[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(trim(&v[start..]));
    out
}

fn on_response(
    w: &mut Writer<'_>,
    out: &mut Vec<u8>,
    t: &mut LeanTally,
    calls: &mut [Slot],
    m: &[u8],
) {
    if !m.starts_with(b"SIP/2.0 ") || m.len() < 12 {
        return;
    }
    let Some(code) = std::str::from_utf8(&m[8..11])
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
    else {
        return;
    };
    let (mut call_id, mut cseq, mut to, mut contact) = (None, None, None, None);
    let mut rr: Vec<&[u8]> = Vec::new();
    for (k, v) in headers(m) {
        if is(k, "call-id", "i") {
            call_id = Some(v);
        } else if is(k, "cseq", "cseq") {
            cseq = Some(v);
        } else if is(k, "to", "t") {
            to = Some(v);
        } else if is(k, "contact", "m") {
            contact.get_or_insert(v);
        } else if is(k, "record-route", "record-route") {
            rr.extend(split_commas(v));
        }
    }
    // Call-ID `<n>.<conn>.<token>@siprox.test`: find the slot calling n.
    let Some(cid) = call_id else { return };
    let Some(dot) = cid.iter().position(|b| *b == b'.') else {
        return;
    };
    let Some(n) = std::str::from_utf8(&cid[..dot])
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    else {
        return;
    };
    let Some(i) = calls.iter().position(|c| c.n == n && c.wait != Wait::Idle) else {
        return;
    };
    let method = cseq
        .and_then(|c| c.split(|b| *b == b' ').rfind(|p| !p.is_empty()))
        .unwrap_or(b"");
    let c = &mut calls[i];
    let expect: &[u8] = match c.wait {
        Wait::Invite => b"INVITE",
        Wait::Bye => b"BYE",
        Wait::Options => b"OPTIONS",
        Wait::Idle => return,
    };
    if method != expect || code < 200 {
        return;
    }
    let now = Instant::now();
    let us = |d: Duration| d.as_micros() as u64;
    let reason = |m: &[u8]| {
        String::from_utf8_lossy(
            m.split(|b| *b == b'\r')
                .next()
                .unwrap_or(b"")
                .get(12..)
                .unwrap_or(b""),
        )
        .into_owned()
    };
    match c.wait {
        Wait::Options => {
            if code == 200 {
                t.call_us.push(us(now - c.t0));
                t.setup_us.push(us(now - c.t0));
            } else {
                let ruri = w.plan.ruri.of(n);
                *t.failures
                    .entry(format!("OPTIONS {ruri}: got Some({code}) {}", reason(m)))
                    .or_default() += 1;
            }
            start_call(w, out, c);
        }
        Wait::Invite => {
            if code != 200 {
                let ruri = w.plan.ruri.of(n);
                *t.failures
                    .entry(format!(
                        "INVITE {ruri}: final response Some({code}) {}",
                        reason(m)
                    ))
                    .or_default() += 1;
                // A proxy passes the ACK of a non-2xx on hop by hop; the UAS never
                // answers non-2xx here, so nothing more to send.
                start_call(w, out, c);
                return;
            }
            let tag = to.and_then(|v| {
                let at = find(v, b";tag=")? + 5;
                let rest = &v[at..];
                let end = rest
                    .iter()
                    .position(|b| *b == b';' || *b == b' ' || *b == b'>')
                    .unwrap_or(rest.len());
                Some(&rest[..end])
            });
            let Some(tag) = tag else {
                *t.failures
                    .entry("200 to INVITE without To tag".to_owned())
                    .or_default() += 1;
                start_call(w, out, c);
                return;
            };
            let Some(target) = contact.map(|v| angle(split_commas(v)[0])) else {
                *t.failures
                    .entry("200 to INVITE without Contact".to_owned())
                    .or_default() += 1;
                start_call(w, out, c);
                return;
            };
            let target = target
                .strip_prefix(b"<")
                .and_then(|x| x.strip_suffix(b">"))
                .unwrap_or(target);
            let routes: Vec<&[u8]> = rr.iter().rev().map(|r| angle(r)).collect();
            c.setup_us = us(now - c.t0);
            c.wait = Wait::Bye;
            c.deadline = now + w.plan.timeout;
            w.request(out, "ACK", target, n, 1, Some(tag), &routes, b"");
            w.request(out, "BYE", target, n, 2, Some(tag), &routes, b"");
        }
        Wait::Bye => {
            if code == 200 {
                t.call_us.push(us(now - c.t0));
                t.setup_us.push(c.setup_us);
            } else {
                *t.failures
                    .entry(format!("BYE: final response Some({code}) {}", reason(m)))
                    .or_default() += 1;
            }
            start_call(w, out, c);
        }
        Wait::Idle => {}
    }
}

// ---------------------------------------------------------------------------------------
// UAS

/// A UDP UAS: 100/180/200 to INVITE, 200 to anything else, nothing to ACK. It runs until
/// the task is dropped.
pub async fn uas_udp(sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let contact = match sock.local_addr() {
        Ok(a) => format!("Contact: <sip:bob@{a};transport=udp>\r\n"),
        Err(_) => return,
    };
    loop {
        if sock.readable().await.is_err() {
            continue;
        }
        // Everything that is ready, then wait again.
        loop {
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP port unreachable surfaces as an error on Linux: keep reading.
                Err(_) => continue,
            };
            answer(&sock, &buf[..n], from, &contact, &mut out).await;
        }
    }
}

async fn answer(sock: &UdpSocket, req: &[u8], from: SocketAddr, contact: &str, out: &mut Vec<u8>) {
    let Some(sp) = req.iter().position(|b| *b == b' ') else {
        return;
    };
    let method = &req[..sp];
    if method == b"ACK" || method == b"SIP/2.0" {
        return;
    }
    let invite = method == b"INVITE";
    // The request's headers, read once: what every response echoes, in order (Via, From,
    // Call-ID, CSeq, Record-Route as they came), and the To.
    let mut echo: Vec<(&[u8], &[u8], bool)> = Vec::with_capacity(12);
    let (mut call_id, mut to_line, mut to_addr): (&[u8], &[u8], _) = (b"", b"", None);
    for (k, v) in headers(req) {
        if is(k, "via", "v") {
            if to_addr.is_none() {
                to_addr = Some(via_target(split_commas(v)[0], from));
            }
            echo.push((b"Via", v, false));
        } else if is(k, "from", "f") {
            echo.push((b"From", v, false));
        } else if is(k, "call-id", "i") {
            call_id = v;
            echo.push((b"Call-ID", v, false));
        } else if is(k, "cseq", "cseq") {
            echo.push((b"CSeq", v, false));
        } else if is(k, "to", "t") {
            to_line = v;
        } else if invite && is(k, "record-route", "record-route") {
            // Only into the 180 and 200 of an INVITE (RFC 3261 §12.1.1).
            echo.push((b"Record-Route", v, true));
        }
    }
    let tag = find(to_line, b";tag=").is_none().then(|| to_tag(call_id));
    let to = to_addr.unwrap_or(from);
    let codes: &[(u16, &str)] = if invite {
        &[(100, "Trying"), (180, "Ringing"), (200, "OK")]
    } else {
        &[(200, "OK")]
    };
    for (code, reason) in codes {
        out.clear();
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for (name, v, dialog_only) in &echo {
            if !dialog_only || *code > 100 {
                line(out, name, v);
            }
        }
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to_line);
        if let (Some(t), true) = (tag, *code > 100) {
            let _ = write!(out, ";tag=uas{t:x}");
        }
        out.extend_from_slice(b"\r\n");
        if *code > 100 {
            out.extend_from_slice(contact.as_bytes());
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        match sock.try_send_to(out, to) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = sock.send_to(out, to).await;
            }
            _ => {}
        }
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], v: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

/// The test kit UAS's To tag (FNV-1a of the Call-ID), so 180 and 200 agree.
fn to_tag(call_id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & 0xffff_ffff
}

/// Where a response to this top Via goes over UDP (RFC 3261 §18.2.2, RFC 3581): received
/// and rport when present, else the sent-by, else the source.
fn via_target(via: &[u8], from: SocketAddr) -> SocketAddr {
    // `SIP/2.0/UDP host:port;params`
    let Some(rest) = std::str::from_utf8(via).ok().and_then(|v| {
        let v = v.trim_start();
        v.find(char::is_whitespace).map(|i| v[i..].trim_start())
    }) else {
        return from;
    };
    let mut parts = rest.split(';');
    let sent_by = parts.next().unwrap_or("").trim();
    let (mut received, mut rport): (Option<IpAddr>, Option<Option<u16>>) = (None, None);
    for p in parts {
        let (k, val) = p.split_once('=').map_or((p, None), |(k, v)| (k, Some(v)));
        match k.trim() {
            "received" => received = val.and_then(|v| v.trim().parse().ok()),
            "rport" => rport = Some(val.and_then(|v| v.trim().parse().ok())),
            _ => {}
        }
    }
    let (host, port) = match sent_by.parse::<SocketAddr>() {
        Ok(a) => (Some(a.ip()), Some(a.port())),
        Err(_) => (sent_by.parse::<IpAddr>().ok(), None),
    };
    let ip = received.or(host).unwrap_or(from.ip());
    let port = match rport {
        Some(Some(p)) => p,
        Some(None) => from.port(),
        None => port.unwrap_or(5060),
    };
    SocketAddr::new(ip, port)
}
