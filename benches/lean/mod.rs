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
//!   record and one syscall per burst, not per message). A read takes every TLS record
//!   that is ready (OpenSSL hands out one per read) before the burst is answered.
//! - Responses are read only as far as the flows need: the status code, Call-ID (which
//!   names the slot), CSeq method, the To tag, Record-Route and Contact of the 200 to the
//!   INVITE. The UAS reads the method and copies Via, From, To, Call-ID, CSeq (and
//!   Record-Route into a 180/200) from the request line by line, as RFC 3261 §8.2.6 asks.
//! - The UAS takes every datagram that is ready with `recvmmsg` (up to [`RECV_BATCH`])
//!   and sends the batch's responses with `sendmmsg`.
//! - No allocation and no `core::fmt` per message: one pass over a head's lines (memchr),
//!   one `memmem` finder built once, buffers and vectors reused, numbers written by hand.
//!   The first, simple version of this code is kept in oracle.rs: `loadgen --self-test`
//!   (selftest.rs) checks that this one writes the same bytes and reads the same fields.
//!
//! loadgen uses it for `--flow options|invite` over `--transport tcp|tls` with persistent
//! connections, no `--rate`, `--phone` or `--new-conn-per-call`, and a UDP UAS
//! (`--uas-transport udp`); every other combination runs on the test kit's UA as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use memchr::{memchr, memmem};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use siprox_testkit::ua::AsyncStream;
use tokio::io::{AsyncWriteExt, Interest, ReadBuf};
use tokio::net::UdpSocket;

use crate::cluster_ua::Ruri;

pub mod oracle;
pub mod selftest;

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

/// The stream read buffer's first size (it grows only for a message larger than it).
const READ_BUF: usize = 256 * 1024;

/// Converts an empty vector to another element type, keeping its allocation (the
/// `Vec<&[u8]>` of one message reused for the next: no allocation per message).
fn recycle<T, U>(v: Vec<T>) -> Vec<U> {
    v.into_iter().filter_map(|_| None).collect()
}

/// One connection: `slots` calls in flight until the plan says stop.
pub async fn run_connection(
    mut s: Pin<Box<dyn AsyncStream>>,
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
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut rb = ReadBuffer::new();
    let mut w = Writer::new(&plan, local, conn_no);
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
        let room = rb.room();
        tokio::select! {
            r = read_ready(&mut s, room) => match r {
                Ok(0) | Err(_) => {
                    fail_all(&mut t, &mut calls, "connection closed by the proxy");
                    break;
                }
                Ok(k) => rb.drain(k, |m, sc, rr| {
                    on_response(&mut w, &mut out, &mut t, &mut calls, m, sc, rr);
                }),
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

/// Reads into `buf` (not empty): waits for the first bytes, then takes whatever else the
/// stream has ready without waiting (a TLS stream hands out one record per read). 0 at
/// the end of the stream.
fn read_ready<'a>(
    s: &'a mut Pin<Box<dyn AsyncStream>>,
    buf: &'a mut [u8],
) -> impl std::future::Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut total = 0;
        while total < buf.len() {
            let mut rb = ReadBuf::new(&mut buf[total..]);
            match s.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let k = rb.filled().len();
                    if k == 0 {
                        break;
                    }
                    total += k;
                }
                // What was read first; the error (or the end) comes again on the next read.
                Poll::Ready(Err(e)) if total == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => break,
                Poll::Pending if total == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(total))
    })
}

/// The bytes read from a stream and not yet taken as messages: `buf[start..end]`.
pub struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The Record-Route values of one response, reused (empty between messages).
    rr: Vec<&'static [u8]>,
}

impl ReadBuffer {
    pub fn new() -> Self {
        Self {
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            rr: Vec::with_capacity(16),
        }
    }

    /// Where the next read goes (never empty): the pending bytes move to the front when
    /// the end is reached, and the buffer doubles when one message fills it.
    pub fn room(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `k` more bytes were read into [`ReadBuffer::room`]: hands every complete message
    /// (head, what one pass over it found, its Record-Route values) to `f`, in order;
    /// CRLF keep-alives are skipped.
    pub fn drain(&mut self, k: usize, mut f: impl FnMut(&[u8], &Scan<'_>, &[&[u8]])) {
        self.end += k;
        let mut rr: Vec<&[u8]> = recycle(std::mem::take(&mut self.rr));
        loop {
            let b = &self.buf[self.start..self.end];
            if b.starts_with(b"\r\n") {
                self.start += 2;
                continue;
            }
            let Some(sc) = scan(b, &mut rr) else { break };
            self.start += sc.head + sc.body;
            f(&b[..sc.head], &sc, &rr);
        }
        rr.clear();
        self.rr = recycle(rr);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

async fn write_all(s: &mut Pin<Box<dyn AsyncStream>>, b: &[u8]) -> io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

fn fail_all(t: &mut LeanTally, calls: &mut [Slot], reason: &str) {
    for c in calls.iter_mut().filter(|c| c.wait != Wait::Idle) {
        *t.failures.entry(reason.to_owned()).or_default() += 1;
        c.wait = Wait::Idle;
    }
}

/// Writes a connection's requests: the parts that never change are built once.
pub struct Writer<'a> {
    plan: &'a Plan,
    /// The Request-URI when it is the same for every call.
    fixed_ruri: Option<&'a str>,
    branch: u64,
    /// ` SIP/2.0\r\nVia: SIP/2.0/TLS ip:port;branch=z9hG4bK-l<token>-<conn>-`
    via: Vec<u8>,
    /// `-<token>\r\nTo: <sip:bob@siprox.test>` (after the From tag's call number)
    from_tail: Vec<u8>,
    /// `.<conn>.<token>@siprox.test\r\nCSeq: ` (after the Call-ID's call number)
    call_id_tail: Vec<u8>,
    contact: Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(plan: &'a Plan, local: SocketAddr, conn_no: usize) -> Self {
        let tok = &plan.token;
        Self {
            plan,
            fixed_ruri: (!plan.ruri.template.contains("{n}")).then_some(&*plan.ruri.template),
            branch: 0,
            via: format!(
                " SIP/2.0\r\nVia: {} {local};branch=z9hG4bK-l{tok}-{conn_no:x}-",
                plan.via_proto
            )
            .into_bytes(),
            from_tail: format!("-{tok}\r\nTo: <sip:bob@siprox.test>").into_bytes(),
            call_id_tail: format!(".{conn_no:x}.{tok}@siprox.test\r\nCSeq: ").into_bytes(),
            contact: format!(
                "Contact: <sip:alice@{local};transport={}>\r\n",
                plan.transport_param
            )
            .into_bytes(),
        }
    }

    /// Appends a request to `out`. `to_tag` and the route set for in-dialog requests:
    /// `rr` is the 2xx's Record-Route values in their order (written reversed, each its
    /// `<...>` part, RFC 3261 §12.1.2).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        out: &mut Vec<u8>,
        method: &[u8],
        ruri: &[u8],
        n: u64,
        cseq: u32,
        to_tag: Option<&[u8]>,
        rr: &[&[u8]],
        body: &[u8],
    ) {
        self.branch += 1;
        out.extend_from_slice(method);
        out.push(b' ');
        out.extend_from_slice(ruri);
        out.extend_from_slice(&self.via);
        put_hex(out, self.branch);
        out.extend_from_slice(b";rport\r\nMax-Forwards: 70\r\n");
        for r in rr.iter().rev() {
            out.extend_from_slice(b"Route: ");
            out.extend_from_slice(angle(r));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"From: \"Alice\" <sip:alice@siprox.test>;tag=f");
        put_hex(out, n);
        out.extend_from_slice(&self.from_tail);
        if let Some(tag) = to_tag {
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(tag);
        }
        out.extend_from_slice(b"\r\nCall-ID: ");
        put_hex(out, n);
        out.extend_from_slice(&self.call_id_tail);
        put_dec(out, u64::from(cseq));
        out.push(b' ');
        out.extend_from_slice(method);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.contact);
        if !body.is_empty() {
            out.extend_from_slice(b"Content-Type: application/sdp\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        put_dec(out, body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }
}

/// `v` in lowercase hex, as `{:x}` writes it.
pub fn put_hex(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 16];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// `v` in decimal, as `{}` writes it.
pub fn put_dec(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
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
    let owned;
    let ruri = match w.fixed_ruri {
        Some(r) => r,
        None => {
            owned = plan.ruri.of(n);
            &owned
        }
    };
    let (method, body, wait): (&[u8], _, _) = match plan.flow {
        LeanFlow::Options => (b"OPTIONS", &b""[..], Wait::Options),
        LeanFlow::Invite => (b"INVITE", SDP, Wait::Invite),
    };
    w.request(out, method, ruri.as_bytes(), n, 1, None, &[], body);
    c.n = n;
    c.wait = wait;
    c.t0 = now;
    c.deadline = now + plan.timeout;
}

static BLANK_LINE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
static TAG_PARAM: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b";tag="));

/// The header lines of `m[..head_end]` after the start line: (name, value) pairs, each
/// trimmed; folded lines not joined (the peers here do not fold), lines without a colon
/// skipped.
pub fn lines(m: &[u8], head_end: usize) -> Lines<'_> {
    let head = &m[..head_end];
    // After the start line's CRLF (the whole head when there is none).
    let first = memchr::memchr_iter(b'\n', head)
        .find(|&i| i > 0 && head[i - 1] == b'\r')
        .map_or(head.len(), |i| i + 1);
    Lines {
        rest: &head[first..],
        done: false,
    }
}

pub struct Lines<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let r = self.rest;
            // The name is short: look for its colon byte by byte (or the line's end: a
            // line without a colon is skipped), then for the end of the value.
            match r.iter().position(|b| *b == b':' || *b == b'\n') {
                Some(c) if r[c] == b':' => {
                    let v = match memchr(b'\n', &r[c + 1..]) {
                        Some(i) => {
                            self.rest = &r[c + 2 + i..];
                            &r[c + 1..c + 1 + i]
                        }
                        None => {
                            self.done = true;
                            &r[c + 1..]
                        }
                    };
                    let v = v.strip_suffix(b"\r").unwrap_or(v);
                    return Some((trim(&r[..c]), trim(v)));
                }
                Some(nl) => self.rest = &r[nl + 1..],
                None => self.done = true,
            }
        }
        None
    }
}

pub(crate) fn trim(mut b: &[u8]) -> &[u8] {
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

/// The headers the lean engine reads, by long or compact name (any case).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    RecordRoute,
    ContentLength,
    Other,
}

fn name(k: &[u8]) -> Name {
    let is = |s: &str| k.eq_ignore_ascii_case(s.as_bytes());
    match k.len() {
        1 => match k[0].to_ascii_lowercase() {
            b'v' => Name::Via,
            b'f' => Name::From,
            b't' => Name::To,
            b'i' => Name::CallId,
            b'm' => Name::Contact,
            b'l' => Name::ContentLength,
            _ => Name::Other,
        },
        2 if is("to") => Name::To,
        3 if is("via") => Name::Via,
        4 if is("cseq") => Name::CSeq,
        4 if is("from") => Name::From,
        7 if is("call-id") => Name::CallId,
        7 if is("contact") => Name::Contact,
        12 if is("record-route") => Name::RecordRoute,
        14 if is("content-length") => Name::ContentLength,
        _ => Name::Other,
    }
}

/// What one pass over a response's head found.
#[derive(Default)]
pub struct Scan<'a> {
    /// Bytes of the head, blank line included, and of the body.
    pub head: usize,
    pub body: usize,
    /// The last Call-ID, CSeq and To, the first Contact.
    pub call_id: Option<&'a [u8]>,
    pub cseq: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    pub contact: Option<&'a [u8]>,
}

/// One message at the start of a stream buffer, once it is complete (its Record-Route
/// values, in order, into `rr`), or `None` until then.
pub fn scan<'a>(b: &'a [u8], rr: &mut Vec<&'a [u8]>) -> Option<Scan<'a>> {
    let head_end = BLANK_LINE.find(b)?;
    let mut sc = Scan {
        head: head_end + 4,
        ..Scan::default()
    };
    rr.clear();
    for (k, v) in lines(b, head_end) {
        match name(k) {
            Name::ContentLength => {
                sc.body = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
            }
            Name::CallId => sc.call_id = Some(v),
            Name::CSeq => sc.cseq = Some(v),
            Name::To => sc.to = Some(v),
            Name::Contact => {
                sc.contact.get_or_insert(v);
            }
            Name::RecordRoute => commas(v, |e| {
                rr.push(e);
                true
            }),
            _ => {}
        }
    }
    if b.len() < sc.head + sc.body {
        return None;
    }
    Some(sc)
}

/// The `<...>` part of a name-addr (or the value up to `;` without them).
fn angle(v: &[u8]) -> &[u8] {
    match (memchr(b'<', v), memchr::memrchr(b'>', v)) {
        (Some(a), Some(b)) if a < b => &v[a..=b],
        _ => v.split(|b| *b == b';').next().unwrap_or(v),
    }
}

/// The comma-separated values of one header line (commas inside `<>` or quotes kept),
/// trimmed, to `f` in order until it returns false.
fn commas<'a>(v: &'a [u8], mut f: impl FnMut(&'a [u8]) -> bool) {
    if memchr(b',', v).is_none() {
        f(trim(v));
        return;
    }
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, b) in v.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                if !f(trim(&v[start..i])) {
                    return;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    f(trim(&v[start..]));
}

fn first_comma(v: &[u8]) -> &[u8] {
    let mut first = v;
    commas(v, |e| {
        first = e;
        false
    });
    first
}

/// The status code of a response (`None`: not a response, or no code).
fn code_of(m: &[u8]) -> Option<Option<u16>> {
    if !m.starts_with(b"SIP/2.0 ") || m.len() < 12 {
        return None;
    }
    Some(
        std::str::from_utf8(&m[8..11])
            .ok()
            .and_then(|c| c.parse::<u16>().ok()),
    )
}

fn method_of(cseq: Option<&[u8]>) -> &[u8] {
    cseq.and_then(|c| c.split(|b| *b == b' ').rfind(|p| !p.is_empty()))
        .unwrap_or(b"")
}

fn tag_of(to: Option<&[u8]>) -> Option<&[u8]> {
    to.and_then(|v| {
        let at = TAG_PARAM.find(v)? + 5;
        let rest = &v[at..];
        let end = rest
            .iter()
            .position(|b| *b == b';' || *b == b' ' || *b == b'>')
            .unwrap_or(rest.len());
        Some(&rest[..end])
    })
}

/// The URI of the first Contact value (without its `<>`).
fn target_of(contact: Option<&[u8]>) -> Option<&[u8]> {
    contact.map(|v| {
        let t = angle(first_comma(v));
        t.strip_prefix(b"<")
            .and_then(|x| x.strip_suffix(b">"))
            .unwrap_or(t)
    })
}

fn on_response(
    w: &mut Writer<'_>,
    out: &mut Vec<u8>,
    t: &mut LeanTally,
    calls: &mut [Slot],
    m: &[u8],
    sc: &Scan<'_>,
    rr: &[&[u8]],
) {
    let Some(Some(code)) = code_of(m) else {
        return;
    };
    // Call-ID `<n>.<conn>.<token>@siprox.test`: find the slot calling n.
    let Some(cid) = sc.call_id else { return };
    let Some(dot) = memchr(b'.', cid) else {
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
    let method = method_of(sc.cseq);
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
            let Some(tag) = tag_of(sc.to) else {
                *t.failures
                    .entry("200 to INVITE without To tag".to_owned())
                    .or_default() += 1;
                start_call(w, out, c);
                return;
            };
            let Some(target) = target_of(sc.contact) else {
                *t.failures
                    .entry("200 to INVITE without Contact".to_owned())
                    .or_default() += 1;
                start_call(w, out, c);
                return;
            };
            c.setup_us = us(now - c.t0);
            c.wait = Wait::Bye;
            c.deadline = now + w.plan.timeout;
            w.request(out, b"ACK", target, n, 1, Some(tag), rr, b"");
            w.request(out, b"BYE", target, n, 2, Some(tag), rr, b"");
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

/// Most datagrams taken by one `recvmmsg`, each into its own [`UDP_MAX`] slot.
pub const RECV_BATCH: usize = 32;
const UDP_MAX: usize = 65_535;
/// Most datagrams handed to one `sendmmsg` (a batch's responses take as many as needed).
const SEND_BATCH: usize = 64;

/// nix's `recvmmsg`/`sendmmsg` headers, reused by every batch. They hold raw pointers
/// (not `Send`), so they live per thread, outside the UAS future, and are used only
/// between two awaits.
struct Mmsg {
    recv: MultiHeaders<SockaddrStorage>,
    send: MultiHeaders<SockaddrStorage>,
    send_slices: Vec<[IoSlice<'static>; 1]>,
    addrs: Vec<Option<SockaddrStorage>>,
}

thread_local! {
    static MMSG: RefCell<Mmsg> = RefCell::new(Mmsg {
        recv: MultiHeaders::preallocate(RECV_BATCH, None),
        send: MultiHeaders::preallocate(SEND_BATCH, None),
        send_slices: Vec::with_capacity(SEND_BATCH),
        addrs: Vec::with_capacity(SEND_BATCH),
    });
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// One `recvmmsg` into the [`UDP_MAX`] slots of `buf`: how many datagrams, each with its
/// length and source in `got` (0: none waiting, readiness cleared). A batch shorter than
/// asked for means the socket had no more: its readiness is cleared then (tokio's
/// edge-triggered epoll raises a new event for a datagram that arrives after).
fn recv_batch(
    s: &UdpSocket,
    buf: &mut [u8],
    got: &mut [(usize, Option<SocketAddr>); RECV_BATCH],
) -> io::Result<usize> {
    MMSG.with(|m| {
        let mut m = m.borrow_mut();
        let m = &mut *m;
        let mut n = 0;
        let res = s.try_io(Interest::READABLE, || {
            // On the stack: nix ties the slices' lifetime to their own borrow, so they
            // cannot be kept for the next batch.
            let mut chunks = buf.chunks_mut(UDP_MAX);
            let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or(&mut []))]);
            let r = match recvmmsg(
                s.as_raw_fd(),
                &mut m.recv,
                slices.iter_mut(),
                MsgFlags::empty(),
                None,
            ) {
                Ok(res) => {
                    for (g, msg) in got.iter_mut().zip(res) {
                        *g = (msg.bytes, msg.address.as_ref().and_then(std_addr));
                        n += 1;
                    }
                    Ok(())
                }
                Err(e) => Err(io::Error::from(e)),
            };
            r?;
            if n < RECV_BATCH {
                // Drained: tokio clears the readiness on WouldBlock.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    })
}

/// One `sendmmsg` of `chunk` (at most [`SEND_BATCH`]): how many the kernel took.
fn send_chunk(
    s: &UdpSocket,
    out: &[u8],
    chunk: &[(usize, usize, SocketAddr)],
) -> io::Result<usize> {
    MMSG.with(|m| {
        let mut m = m.borrow_mut();
        let m = &mut *m;
        m.addrs.clear();
        m.addrs
            .extend(chunk.iter().map(|q| Some(SockaddrStorage::from(q.2))));
        let mut slices: Vec<[IoSlice<'_>; 1]> = recycle(std::mem::take(&mut m.send_slices));
        slices.extend(chunk.iter().map(|q| [IoSlice::new(&out[q.0..q.1])]));
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = s.try_io(Interest::WRITABLE, || {
            sendmmsg(
                s.as_raw_fd(),
                &mut m.send,
                &slices,
                &m.addrs,
                no_cmsgs,
                MsgFlags::empty(),
            )
            .map(|r| r.count())
            .map_err(io::Error::from)
        });
        m.send_slices = recycle(slices);
        sent
    })
}

/// Sends `msgs` (ranges of `out` and destinations) in order, in as few `sendmmsg` calls
/// as it takes. A datagram the kernel refuses (not for a full buffer) is lost, as a
/// `send_to` error was.
async fn send_all(s: &UdpSocket, out: &[u8], msgs: &[(usize, usize, SocketAddr)]) {
    let mut i = 0;
    while i < msgs.len() {
        let chunk = &msgs[i..msgs.len().min(i + SEND_BATCH)];
        let sent = if let [(a, b, to)] = chunk {
            s.try_send_to(&out[*a..*b], *to).map(|_| 1)
        } else {
            send_chunk(s, out, chunk)
        };
        match sent {
            Ok(k) => i += k.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if s.writable().await.is_err() {
                    return;
                }
            }
            Err(_) => i += 1,
        }
    }
}

/// The responses of one batch of requests: their bytes, and (start, end, destination)
/// of each datagram in them.
#[derive(Default)]
pub struct Answers {
    pub out: Vec<u8>,
    pub msgs: Vec<(usize, usize, SocketAddr)>,
    /// The header lines a response echoes, reused (empty between requests).
    echo: Vec<(&'static [u8], &'static [u8], bool)>,
}

impl Answers {
    pub fn clear(&mut self) {
        self.out.clear();
        self.msgs.clear();
    }
}

/// A UDP UAS: 100/180/200 to INVITE, 200 to anything else, nothing to ACK. It runs until
/// the task is dropped.
pub async fn uas_udp(sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; UDP_MAX * RECV_BATCH];
    let mut got = [(0usize, None::<SocketAddr>); RECV_BATCH];
    let mut a = Answers::default();
    a.out.reserve(64 * 1024);
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
            let n = match recv_batch(&sock, &mut buf, &mut got) {
                Ok(0) => break,
                Ok(n) => n,
                // ICMP port unreachable surfaces as an error on Linux: keep reading.
                Err(_) => continue,
            };
            a.clear();
            for (i, (len, from)) in got[..n].iter().enumerate() {
                if let Some(from) = from {
                    let at = i * UDP_MAX;
                    answer(&mut a, &buf[at..at + len], *from, contact.as_bytes());
                }
            }
            send_all(&sock, &a.out, &a.msgs).await;
        }
    }
}

const STATUS: [&[u8]; 3] = [
    b"SIP/2.0 100 Trying\r\n",
    b"SIP/2.0 180 Ringing\r\n",
    b"SIP/2.0 200 OK\r\n",
];

/// Appends the responses to one request to `a`.
pub fn answer(a: &mut Answers, req: &[u8], from: SocketAddr, contact: &[u8]) {
    let Some(sp) = memchr(b' ', req) else {
        return;
    };
    let method = &req[..sp];
    if method == b"ACK" || method == b"SIP/2.0" {
        return;
    }
    let invite = method == b"INVITE";
    // The request's headers, read once: what every response echoes, in order (Via, From,
    // Call-ID, CSeq, Record-Route as they came), and the To.
    let mut echo: Vec<(&[u8], &[u8], bool)> = recycle(std::mem::take(&mut a.echo));
    let (mut call_id, mut to_line, mut to_addr): (&[u8], &[u8], _) = (b"", b"", None);
    let head_end = BLANK_LINE.find(req).unwrap_or(req.len());
    for (k, v) in lines(req, head_end) {
        match name(k) {
            Name::Via => {
                if to_addr.is_none() {
                    to_addr = Some(via_target(first_comma(v), from));
                }
                echo.push((b"Via", v, false));
            }
            Name::From => echo.push((b"From", v, false)),
            Name::CallId => {
                call_id = v;
                echo.push((b"Call-ID", v, false));
            }
            Name::CSeq => echo.push((b"CSeq", v, false)),
            Name::To => to_line = v,
            // Only into the 180 and 200 of an INVITE (RFC 3261 §12.1.1).
            Name::RecordRoute if invite => echo.push((b"Record-Route", v, true)),
            _ => {}
        }
    }
    let tag = TAG_PARAM.find(to_line).is_none().then(|| to_tag(call_id));
    let to = to_addr.unwrap_or(from);
    let codes: &[usize] = if invite { &[0, 1, 2] } else { &[2] };
    let out = &mut a.out;
    for &c in codes {
        let start = out.len();
        let dialog = c > 0;
        out.extend_from_slice(STATUS[c]);
        for (name, v, dialog_only) in &echo {
            if !dialog_only || dialog {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to_line);
        if let (Some(t), true) = (tag, dialog) {
            out.extend_from_slice(b";tag=uas");
            put_hex(out, t);
        }
        out.extend_from_slice(b"\r\n");
        if dialog {
            out.extend_from_slice(contact);
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        a.msgs.push((start, out.len(), to));
    }
    echo.clear();
    a.echo = recycle(echo);
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
