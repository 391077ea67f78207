//! A small SIP user agent for the integration tests and benches/loadgen.rs: a client side
//! (UDP socket or TCP/TLS connection to a proxy, messages dispatched by Call-ID), a UAS that
//! answers every request, and the OPTIONS and INVITE-180-200-ACK-BYE-200 flows. Real sockets
//! on 127.0.0.1 only; it must never sleep to wait for something (timeouts bound every wait).
//!
//! It parses and frames with the core's parser (`siprox::sip`), so benches/loadgen.rs,
//! which measures other proxies too, sees messages exactly as siprox would.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod};
use siprox::sip::{HeaderName, Limits, Message, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};
use tokio_openssl::SslStream;

pub use siprox::proxy::Transport;

/// Limits of the test endpoints: generous, so that siprox's limits are what a test meets.
fn limits() -> Limits {
    Limits {
        max_message_size: 1 << 20,
        ..Limits::default()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A token unique in this process and, with the pid and clock, across runs.
pub fn unique() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{:08x}", std::process::id(), n, t)
}

/// A fresh RFC 3261 branch.
pub fn branch() -> String {
    format!("z9hG4bK-t{}", unique())
}

/// A fresh Call-ID.
pub fn call_id() -> String {
    format!("{}@siprox.test", unique())
}

/// The top Via branch of a message, if any.
pub fn top_branch(m: &Message) -> Option<String> {
    m.top_via().ok()?.branch().map(str::to_owned)
}

/// CSeq method of a message.
pub fn cseq_method(m: &Message) -> Option<String> {
    m.cseq().ok().map(|c| c.method.to_owned())
}

type Stream = Pin<Box<dyn AsyncStream>>;

/// A TCP or TLS stream, boxed so both share one code path.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncStream for T {}

/// Open a TCP connection, and a TLS session over it when `tls` is given (the certificate is
/// verified against `server`'s IP address).
/// Returns the stream, its local address and the negotiated TLS version.
pub async fn connect_stream(
    server: SocketAddr,
    tls: Option<&SslConnector>,
) -> io::Result<(Stream, SocketAddr, Option<String>)> {
    connect_stream_from(server, tls, None).await
}

/// As [`connect_stream`], from the local address `bind` when given (port 0 = any).
pub async fn connect_stream_from(
    server: SocketAddr,
    tls: Option<&SslConnector>,
    bind: Option<SocketAddr>,
) -> io::Result<(Stream, SocketAddr, Option<String>)> {
    let tcp = match bind {
        None => TcpStream::connect(server).await?,
        Some(b) => {
            let sock = if b.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(b)?;
            sock.connect(server).await?
        }
    };
    tcp.set_nodelay(true)?;
    let local = tcp.local_addr()?;
    match tls {
        None => Ok((Box::pin(tcp), local, None)),
        Some(c) => {
            let s = tls_handshake(c, server, tcp).await?;
            let v = s.ssl().version_str().to_owned();
            Ok((Box::pin(s), local, Some(v)))
        }
    }
}

/// A client TLS handshake over `tcp`, verifying the certificate against `server`'s IP.
pub async fn tls_handshake(
    c: &SslConnector,
    server: SocketAddr,
    tcp: TcpStream,
) -> io::Result<SslStream<TcpStream>> {
    let ssl = c
        .configure()
        .and_then(|cfg| cfg.into_ssl(&server.ip().to_string()))
        .map_err(io::Error::other)?;
    let mut s = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    Pin::new(&mut s).connect().await.map_err(io::Error::other)?;
    Ok(s)
}

/// Where the messages a [`Client`] reads go: to the subscriber of their Call-ID, else to
/// the general inbox.
#[derive(Default)]
struct Dispatch {
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
    inbox: Mutex<Option<mpsc::UnboundedSender<Message>>>,
}

impl Dispatch {
    fn deliver(&self, m: Message) {
        let sub = m
            .call_id()
            .ok()
            .and_then(|c| self.calls.lock().unwrap().get(c).cloned());
        // A call whose subscriber is gone falls through to the inbox.
        let m = match sub {
            Some(tx) => match tx.send(m) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => m,
        };
        if let Some(tx) = self.inbox.lock().unwrap().as_ref() {
            let _ = tx.send(m);
        }
    }
}

enum Out {
    Udp(Arc<UdpSocket>),
    Stream(tokio::sync::Mutex<WriteHalf<Stream>>),
}

/// The client side of a test endpoint: one UDP socket, or one TCP/TLS connection, to a proxy.
pub struct Client {
    pub transport: Transport,
    pub local: SocketAddr,
    /// The proxy this client talks to.
    pub server: SocketAddr,
    /// The negotiated TLS version (`TLSv1.2`, `TLSv1.3`), for TLS clients.
    pub tls_version: Option<String>,
    out: Out,
    dispatch: Arc<Dispatch>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    closed: Arc<(AtomicBool, Notify)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connect to `server` (for UDP: bind 127.0.0.1:0). `tls` is required for TLS.
    pub async fn connect(
        transport: Transport,
        server: SocketAddr,
        tls: Option<&SslConnector>,
    ) -> io::Result<Client> {
        Self::connect_from(transport, server, tls, None).await
    }

    /// As [`connect`](Self::connect), from the local address `bind` when given.
    pub async fn connect_from(
        transport: Transport,
        server: SocketAddr,
        tls: Option<&SslConnector>,
        bind: Option<SocketAddr>,
    ) -> io::Result<Client> {
        let dispatch = Arc::new(Dispatch::default());
        let (itx, irx) = mpsc::unbounded_channel();
        *dispatch.inbox.lock().unwrap() = Some(itx);
        let closed = Arc::new((AtomicBool::new(false), Notify::new()));
        let mut tls_version = None;
        let (out, local, reader) = match transport {
            Transport::Udp => {
                let sock = Arc::new(udp_bind(
                    bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
                )?);
                let local = sock.local_addr()?;
                let reader = tokio::spawn(udp_reader(sock.clone(), dispatch.clone()));
                (Out::Udp(sock), local, reader)
            }
            Transport::Tcp | Transport::Tls => {
                let tls = match transport {
                    Transport::Tls => Some(tls.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "TLS needs a connector")
                    })?),
                    _ => None,
                };
                let (stream, local, v) = connect_stream_from(server, tls, bind).await?;
                tls_version = v;
                let (r, w) = tokio::io::split(stream);
                let reader = tokio::spawn(stream_reader(r, dispatch.clone(), closed.clone()));
                (Out::Stream(tokio::sync::Mutex::new(w)), local, reader)
            }
        };
        Ok(Client {
            transport,
            local,
            server,
            tls_version,
            out,
            dispatch,
            inbox: tokio::sync::Mutex::new(irx),
            closed,
            reader,
        })
    }

    /// Send raw bytes to the proxy.
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        match &self.out {
            Out::Udp(s) => s.send_to(bytes, self.server).await.map(|_| ()),
            Out::Stream(w) => {
                let mut w = w.lock().await;
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    /// Receive the next message no subscriber claimed, waiting at most `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Option<Message> {
        let mut rx = self.inbox.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Route every message with this Call-ID to the returned receiver.
    pub fn subscribe(&self, call_id: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        self.dispatch
            .calls
            .lock()
            .unwrap()
            .insert(call_id.to_owned(), tx);
        Subscription {
            call_id: call_id.to_owned(),
            rx,
            dispatch: self.dispatch.clone(),
        }
    }

    /// True once the stream was closed by the peer (never for UDP).
    pub fn is_closed(&self) -> bool {
        self.closed.0.load(Ordering::Acquire)
    }

    /// Wait until the peer closes the stream, at most `timeout`; true if it did.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.closed.1.notified();
            if self.is_closed() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_closed();
            }
        }
    }

    /// The Via sent-by and `transport` token of this client.
    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            self.transport.as_str(),
            self.local,
            branch
        )
    }

    /// This client's Contact URI.
    pub fn contact(&self, user: &str) -> String {
        format!(
            "sip:{user}@{};transport={}",
            self.local,
            self.transport.param()
        )
    }
}

/// Messages of one Call-ID; unsubscribes on drop.
pub struct Subscription {
    call_id: String,
    rx: mpsc::UnboundedReceiver<Message>,
    dispatch: Arc<Dispatch>,
}

impl Subscription {
    pub async fn recv(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wait for a message matching `pred`, dropping the others, until `deadline`.
    pub async fn recv_until(
        &mut self,
        deadline: tokio::time::Instant,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()
                .flatten()?;
            if pred(&m) {
                return Some(m);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.dispatch.calls.lock().unwrap().remove(&self.call_id);
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, dispatch: Arc<Dispatch>) {
    let mut buf = vec![0u8; 65_536];
    let limits = limits();
    loop {
        let Ok((n, _from)) = sock.recv_from(&mut buf).await else {
            // ICMP port unreachable surfaces as an error on Linux: keep reading.
            continue;
        };
        if let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(&buf[..n]), &limits) {
            dispatch.deliver(m);
        }
    }
}

async fn stream_reader(
    mut r: ReadHalf<Stream>,
    dispatch: Arc<Dispatch>,
    closed: Arc<(AtomicBool, Notify)>,
) {
    let mut framer = StreamFramer::new(limits());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'read: loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => loop {
                match framer.next_frame(&mut buf) {
                    Ok(Some(siprox::sip::Frame::Message(m))) => dispatch.deliver(m),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'read,
                }
            },
        }
    }
    closed.0.store(true, Ordering::Release);
    closed.1.notify_waiters();
}

// ---------------------------------------------------------------------------------------
// Requests

/// A request to build with [`build_request`].
#[derive(Debug, Clone)]
pub struct Req<'a> {
    pub method: &'a str,
    pub ruri: &'a str,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: Option<&'a str>,
    pub cseq: u32,
    /// Route values, each with its `<>`.
    pub routes: &'a [String],
    /// More header lines, each ending in CRLF.
    pub extra: &'a str,
    pub body: &'a [u8],
    /// Branch of the Via; a fresh one when `None`.
    pub branch: Option<&'a str>,
}

impl<'a> Req<'a> {
    /// A new out-of-dialog request with fresh identifiers borrowed from `ids`.
    pub fn new(method: &'a str, ruri: &'a str, ids: &'a CallIds) -> Req<'a> {
        Req {
            method,
            ruri,
            call_id: &ids.call_id,
            from_tag: &ids.from_tag,
            to_tag: None,
            cseq: 1,
            routes: &[],
            extra: "",
            body: b"",
            branch: None,
        }
    }
}

/// Call-ID and From tag of one call.
#[derive(Debug, Clone)]
pub struct CallIds {
    pub call_id: String,
    pub from_tag: String,
}

impl CallIds {
    pub fn new() -> CallIds {
        CallIds {
            call_id: call_id(),
            from_tag: unique(),
        }
    }
}

impl Default for CallIds {
    fn default() -> Self {
        CallIds::new()
    }
}

/// A request from `client`, with its Via and Contact.
pub fn build_request(client: &Client, r: &Req<'_>) -> Vec<u8> {
    let fresh;
    let br = match r.branch {
        Some(b) => b,
        None => {
            fresh = branch();
            &fresh
        }
    };
    let mut s = String::with_capacity(512 + r.body.len());
    let _ = write!(s, "{} {} SIP/2.0\r\n", r.method, r.ruri);
    let _ = write!(s, "Via: {}\r\n", client.via(br));
    s.push_str("Max-Forwards: 70\r\n");
    for route in r.routes {
        let _ = write!(s, "Route: {route}\r\n");
    }
    let _ = write!(
        s,
        "From: \"Alice\" <sip:alice@siprox.test>;tag={}\r\n",
        r.from_tag
    );
    match r.to_tag {
        Some(t) => {
            let _ = write!(s, "To: <sip:bob@siprox.test>;tag={t}\r\n");
        }
        None => s.push_str("To: <sip:bob@siprox.test>\r\n"),
    }
    let _ = write!(s, "Call-ID: {}\r\n", r.call_id);
    let _ = write!(s, "CSeq: {} {}\r\n", r.cseq, r.method);
    let _ = write!(s, "Contact: <{}>\r\n", client.contact("alice"));
    s.push_str(r.extra);
    let _ = write!(s, "Content-Length: {}\r\n\r\n", r.body.len());
    let mut out = s.into_bytes();
    out.extend_from_slice(r.body);
    out
}

// ---------------------------------------------------------------------------------------
// Flows

/// How a flow behaves.
#[derive(Debug, Clone, Copy)]
pub struct FlowOpts {
    /// Every wait for a final response.
    pub timeout: Duration,
    /// Retransmit requests over UDP (RFC 3261 Timer A/E: 500 ms doubling, capped at 4 s).
    pub retransmit: bool,
}

impl Default for FlowOpts {
    fn default() -> Self {
        FlowOpts {
            timeout: Duration::from_secs(5),
            retransmit: false,
        }
    }
}

/// What one INVITE-180-200-ACK-BYE-200 call saw.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// From sending the INVITE to its 200.
    pub invite_rtt: Duration,
    /// From sending the INVITE to the 200 of the BYE.
    pub total: Duration,
    pub saw_180: bool,
    /// Record-Route of the 200, as received (top first).
    pub record_route: Vec<String>,
    /// The route set the UAC used for ACK and BYE (Record-Route reversed).
    pub route_set: Vec<String>,
    /// Contact of the 200: the remote target.
    pub remote_target: String,
    pub to_tag: String,
    pub call_id: String,
}

/// A failed flow: what was expected and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError(pub String);

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlowError {}

fn fail<T>(s: impl Into<String>) -> Result<T, FlowError> {
    Err(FlowError(s.into()))
}

/// Send `bytes` and wait for the final response of that CSeq method, retransmitting over
/// UDP when asked. Returns the final response and whether a 180 came first.
async fn transact(
    client: &Client,
    sub: &mut Subscription,
    bytes: &[u8],
    method: &str,
    opts: FlowOpts,
) -> Result<(Message, bool), FlowError> {
    client
        .send(bytes)
        .await
        .map_err(|e| FlowError(format!("send {method}: {e}")))?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut interval = Duration::from_millis(500);
    let mut next_retx = tokio::time::Instant::now() + interval;
    let mut saw_180 = false;
    let mut proceeding = false;
    loop {
        let retx = opts.retransmit && client.transport == Transport::Udp && !proceeding;
        let until = if retx {
            next_retx.min(deadline)
        } else {
            deadline
        };
        match sub
            .recv_until(until, |m| {
                m.is_response() && cseq_method(m).as_deref() == Some(method)
            })
            .await
        {
            Some(m) => {
                let code = m.status().unwrap_or(0);
                if code == 180 {
                    saw_180 = true;
                }
                if code >= 200 {
                    return Ok((m, saw_180));
                }
                // A provisional stops retransmissions of an INVITE (Timer A).
                proceeding = method == "INVITE";
            }
            None if tokio::time::Instant::now() >= deadline => {
                return fail(format!(
                    "no final response to {method} within {:?}",
                    opts.timeout
                ))
            }
            None => {
                client
                    .send(bytes)
                    .await
                    .map_err(|e| FlowError(format!("resend {method}: {e}")))?;
                interval = (interval * 2).min(Duration::from_secs(4));
                next_retx = tokio::time::Instant::now() + interval;
            }
        }
    }
}

/// The URI inside a name-addr value (`<...>` stripped).
fn strip_angle(v: &str) -> &str {
    let v = v.trim();
    match (v.find('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v),
    }
}

/// `host:port` a SIP URI names, when the host is an IP literal.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let u = siprox::sip::Uri::parse(strip_angle(uri)).ok()?;
    let s = u.as_sip()?;
    let ip = s.host.ip()?;
    let t = s.transport().and_then(Transport::parse);
    let default = if s.secure {
        5061
    } else {
        t.unwrap_or(Transport::Udp).default_port()
    };
    Some(SocketAddr::new(ip, s.port.unwrap_or(default)))
}

/// OPTIONS to `ruri` through the client's proxy; `Ok(rtt)` on a 200.
pub async fn options_flow(
    client: &Client,
    ruri: &str,
    opts: FlowOpts,
) -> Result<Duration, FlowError> {
    let ids = CallIds::new();
    let mut sub = client.subscribe(&ids.call_id);
    let req = build_request(client, &Req::new("OPTIONS", ruri, &ids));
    let start = Instant::now();
    let (resp, _) = transact(client, &mut sub, &req, "OPTIONS", opts).await?;
    match resp.status() {
        Some(200) => Ok(start.elapsed()),
        s => fail(format!(
            "OPTIONS {ruri}: got {s:?} {}",
            resp.reason().unwrap_or("")
        )),
    }
}

/// REGISTER with digest through the client's proxy: REGISTER, 401, REGISTER with
/// `Authorization` for `user`/`password` (algorithm `alg`: `MD5` or `SHA-256`), 200. The
/// AoR is the To of [`build_request`] (`sip:bob@siprox.test`), the realm its host.
pub async fn register_flow(
    client: &Client,
    opts: FlowOpts,
    alg: &str,
    user: &str,
    password: &str,
) -> Result<Duration, FlowError> {
    let ids = CallIds::new();
    let mut sub = client.subscribe(&ids.call_id);
    let ruri = "sip:siprox.test";
    let extra = "Expires: 300\r\n";
    let first = build_request(
        client,
        &Req {
            extra,
            ..Req::new("REGISTER", ruri, &ids)
        },
    );
    let start = Instant::now();
    let (challenge, _) = transact(client, &mut sub, &first, "REGISTER", opts).await?;
    if challenge.status() != Some(401) {
        return fail(format!(
            "REGISTER: expected 401, got {:?}",
            challenge.status()
        ));
    }
    let Some(nonce) =
        crate::digest::nonce_of(challenge.header_values_by_name("WWW-Authenticate"), alg)
    else {
        return fail(format!("no {alg} challenge with a nonce"));
    };
    let answer = crate::digest::Answer {
        alg,
        user,
        realm: "siprox.test",
        password,
        method: "REGISTER",
        uri: ruri,
        nc: 1,
        cnonce: &ids.from_tag,
    };
    let auth = format!("{extra}{}", answer.header(nonce));
    let second = build_request(
        client,
        &Req {
            extra: &auth,
            cseq: 2,
            ..Req::new("REGISTER", ruri, &ids)
        },
    );
    let (ok, _) = transact(client, &mut sub, &second, "REGISTER", opts).await?;
    match ok.status() {
        Some(200) => Ok(start.elapsed()),
        s => fail(format!(
            "REGISTER with {alg} digest: got {s:?} {}",
            ok.reason().unwrap_or("")
        )),
    }
}

/// INVITE-180-200-ACK-BYE-200 to `ruri` through the client's proxy. ACK and BYE follow the
/// route set (the 200's Record-Route, reversed) to its remote target (the 200's Contact);
/// the first hop of a non-empty route set must be the proxy this client is connected to,
/// and with no route set the proxy is used as the outbound proxy.
pub async fn invite_flow(
    client: &Client,
    ruri: &str,
    opts: FlowOpts,
) -> Result<CallReport, FlowError> {
    let ids = CallIds::new();
    let mut sub = client.subscribe(&ids.call_id);
    let sdp = b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = build_request(
        client,
        &Req {
            extra: "Content-Type: application/sdp\r\n",
            body: sdp,
            ..Req::new("INVITE", ruri, &ids)
        },
    );
    let start = Instant::now();
    let (ok, saw_180) = transact(client, &mut sub, &invite, "INVITE", opts).await?;
    let invite_rtt = start.elapsed();
    if ok.status() != Some(200) {
        return fail(format!(
            "INVITE {ruri}: final response {:?} {}",
            ok.status(),
            ok.reason().unwrap_or("")
        ));
    }
    let Some(to_tag) = ok.to().ok().and_then(|t| t.tag().map(str::to_owned)) else {
        return fail("200 to INVITE without To tag");
    };
    let record_route: Vec<String> = ok
        .record_routes()
        .map(|r| r.map(|na| format!("<{}>", na.uri_str)))
        .collect::<Result<_, _>>()
        .map_err(|e| FlowError(format!("bad Record-Route in 200: {e}")))?;
    let route_set: Vec<String> = record_route.iter().rev().cloned().collect();
    let remote_target = match ok.contacts() {
        Ok(c) => match c.as_slice().first() {
            Some(c) => c.uri_str.to_owned(),
            None => return fail("200 to INVITE without Contact"),
        },
        Err(e) => return fail(format!("bad Contact in 200: {e}")),
    };
    if let Some(first) = route_set.first() {
        match uri_addr(first) {
            Some(a) if a == client.server => {}
            other => {
                return fail(format!(
                    "route set starts at {first} ({other:?}), not at the proxy {}",
                    client.server
                ))
            }
        }
    }
    let invite_cseq = ok.cseq().map(|c| c.seq).unwrap_or(1);
    let ack = build_request(
        client,
        &Req {
            to_tag: Some(&to_tag),
            cseq: invite_cseq,
            routes: &route_set,
            ..Req::new("ACK", &remote_target, &ids)
        },
    );
    client
        .send(&ack)
        .await
        .map_err(|e| FlowError(format!("send ACK: {e}")))?;
    let bye = build_request(
        client,
        &Req {
            to_tag: Some(&to_tag),
            cseq: invite_cseq + 1,
            routes: &route_set,
            ..Req::new("BYE", &remote_target, &ids)
        },
    );
    let (bye_ok, _) = transact(client, &mut sub, &bye, "BYE", opts).await?;
    if bye_ok.status() != Some(200) {
        return fail(format!(
            "BYE: final response {:?} {}",
            bye_ok.status(),
            bye_ok.reason().unwrap_or("")
        ));
    }
    Ok(CallReport {
        invite_rtt,
        total: start.elapsed(),
        saw_180,
        record_route,
        route_set,
        remote_target,
        to_tag,
        call_id: ids.call_id,
    })
}

// ---------------------------------------------------------------------------------------
// UAS

/// How the UAS behaves.
#[derive(Clone, Default)]
pub struct UasOpts {
    /// Receive and count, never answer.
    pub silent: bool,
    /// Bytes of body in every 200 (to fill a slow peer's window); a request's
    /// `X-Body-Size` header overrides it for that request's 200.
    pub body_size: usize,
    /// TLS acceptor (required for a TLS UAS).
    pub tls: Option<SslAcceptor>,
}

/// One message the UAS received.
#[derive(Debug, Clone)]
pub struct Received {
    pub msg: Message,
    pub from: SocketAddr,
    pub at: Instant,
}

#[derive(Default)]
struct UasState {
    received: Mutex<Vec<Received>>,
    notify: Notify,
    /// Kept off the list for long runs (loadgen): only counted.
    count_only: AtomicBool,
    count: AtomicU64,
    /// TCP/TLS connections accepted (before any handshake).
    accepted: AtomicU64,
}

/// A SIP server that answers every request: 100/180/200 for INVITE, 200 for everything
/// else, nothing for ACK. Responses echo Via/From/To/Call-ID/CSeq, add a To tag and a
/// Contact, and copy Record-Route into 18x/2xx of INVITE.
pub struct Uas {
    pub transport: Transport,
    pub addr: SocketAddr,
    state: Arc<UasState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Uas {
    /// A UDP UAS on 127.0.0.1:0 with default options.
    pub async fn udp() -> Uas {
        Self::start(Transport::Udp, UasOpts::default())
            .await
            .expect("UDP UAS binds")
    }

    /// A TLS UAS on 127.0.0.1:0 presenting the certificate chain and key in these PEM
    /// files; it asks for no client certificate.
    pub async fn tls(cert: &Path, key: &Path) -> Uas {
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
        b.set_certificate_chain_file(cert).expect("UAS certificate");
        b.set_private_key_file(key, SslFiletype::PEM)
            .expect("UAS key");
        let opts = UasOpts {
            tls: Some(b.build()),
            ..UasOpts::default()
        };
        Self::start(Transport::Tls, opts)
            .await
            .expect("TLS UAS binds")
    }

    /// Bind 127.0.0.1:0 and serve.
    pub async fn start(transport: Transport, opts: UasOpts) -> io::Result<Uas> {
        Self::start_on(transport, "127.0.0.1:0".parse().unwrap(), opts).await
    }

    /// Bind `addr` and serve.
    pub async fn start_on(
        transport: Transport,
        addr: SocketAddr,
        opts: UasOpts,
    ) -> io::Result<Uas> {
        let state = Arc::new(UasState::default());
        let opts = Arc::new(opts);
        let (addr, task) = match transport {
            Transport::Udp => {
                let sock = Arc::new(udp_bind(addr)?);
                let local = sock.local_addr()?;
                let contact = contact_of(transport, local);
                let st = state.clone();
                (
                    local,
                    tokio::spawn(async move { uas_udp(sock, st, opts, contact).await }),
                )
            }
            Transport::Tcp | Transport::Tls => {
                if transport == Transport::Tls && opts.tls.is_none() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a TLS UAS needs an acceptor",
                    ));
                }
                let l = TcpListener::bind(addr).await?;
                let local = l.local_addr()?;
                let contact = contact_of(transport, local);
                let st = state.clone();
                let tls = match transport {
                    Transport::Tls => opts.tls.clone(),
                    _ => None,
                };
                (
                    local,
                    tokio::spawn(async move { uas_accept(l, tls, st, opts, contact).await }),
                )
            }
        };
        Ok(Uas {
            transport,
            addr,
            state,
            task,
        })
    }

    /// Stop keeping received messages; only count them (long load runs).
    pub fn count_only(&self) {
        self.state.count_only.store(true, Ordering::Relaxed);
    }

    /// A URI that routes to this UAS: `sip:<user>@127.0.0.1:<port>;transport=<t>`.
    pub fn uri(&self, user: &str) -> String {
        format!(
            "sip:{user}@{};transport={}",
            self.addr,
            self.transport.param()
        )
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// How many messages arrived.
    pub fn count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// How many TCP/TLS connections were accepted, handshakes that failed included.
    pub fn connections(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Requests of `method` received so far.
    pub fn requests(&self, method: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.msg.method() == Some(method))
            .collect()
    }

    /// Forget what was received.
    pub fn clear(&self) {
        self.state.received.lock().unwrap().clear();
    }

    /// Wait until more than `n` messages have arrived, at most `timeout`; true if they did.
    pub async fn wait_count(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if self.count() > n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() > n;
            }
        }
    }

    /// Wait until a received message matches `pred`, at most `timeout`. `pred` runs under
    /// the UAS's lock: it must not call back into this `Uas`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if let Some(r) = self.state.received.lock().unwrap().iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn contact_of(t: Transport, a: SocketAddr) -> String {
    format!("<sip:bob@{a};transport={}>", t.param())
}

impl UasState {
    fn record(&self, msg: &Message, from: SocketAddr) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.count_only.load(Ordering::Relaxed) {
            self.received.lock().unwrap().push(Received {
                msg: msg.clone(),
                from,
                at: Instant::now(),
            });
        }
        self.notify.notify_waiters();
    }
}

/// The answers the UAS gives to `req`, in order.
fn answers(req: &Message, opts: &UasOpts, contact: &str) -> Vec<Vec<u8>> {
    if opts.silent || !req.is_request() {
        return Vec::new();
    }
    match req.method() {
        Some("ACK") | None => Vec::new(),
        Some("INVITE") => vec![
            response(req, 100, "Trying", contact, 0),
            response(req, 180, "Ringing", contact, 0),
            response(req, 200, "OK", contact, opts.body_size),
        ],
        Some(_) => {
            let body_size = req
                .header_values_by_name("X-Body-Size")
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(opts.body_size);
            vec![response(req, 200, "OK", contact, body_size)]
        }
    }
}

/// A deterministic To tag for a call, so 180 and 200 agree.
fn to_tag(call_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("uas{:x}", h & 0xffff_ffff)
}

/// A response to `req` (RFC 3261 §8.2.6): Via, From, To (+tag), Call-ID and CSeq echoed;
/// Record-Route copied into 18x/2xx of INVITE (§12.1.1).
pub fn response(
    req: &Message,
    code: u16,
    reason: &str,
    contact: &str,
    body_size: usize,
) -> Vec<u8> {
    let mut s = String::with_capacity(512 + body_size);
    let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
    let invite = req.method() == Some("INVITE");
    let dialog = invite && (101..300).contains(&code);
    for f in req.fields() {
        let keep = match f.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => true,
            HeaderName::RecordRoute => dialog,
            _ => false,
        };
        if keep {
            let _ = write!(s, "{}: {}\r\n", f.name.as_str(), f.unfolded());
        } else if f.name == HeaderName::To {
            let v = f.unfolded();
            let has_tag = req.to().ok().and_then(|t| t.tag()).is_some();
            if has_tag || code == 100 {
                let _ = write!(s, "To: {v}\r\n");
            } else {
                let _ = write!(s, "To: {v};tag={}\r\n", to_tag(req.call_id().unwrap_or("")));
            }
        }
    }
    if code > 100 && (invite || code < 300) {
        let _ = write!(s, "Contact: {contact}\r\n");
    }
    if body_size > 0 {
        s.push_str("Content-Type: text/plain\r\n");
    }
    let _ = write!(s, "Content-Length: {body_size}\r\n\r\n");
    let mut out = s.into_bytes();
    out.resize(out.len() + body_size, b'x');
    out
}

/// Where a UAS sends a response over UDP (RFC 3261 §18.2.2, RFC 3581): the top Via's
/// received/rport, else its sent-by, else the source.
fn udp_response_target(req: &Message, from: SocketAddr) -> SocketAddr {
    let Ok(v) = req.top_via() else { return from };
    let ip = v
        .received()
        .and_then(|r| r.parse().ok())
        .or_else(|| v.host.ip())
        .unwrap_or(from.ip());
    let port = match v.rport() {
        Some(Some(p)) => p,
        Some(None) => from.port(),
        None => v.port.unwrap_or(5060),
    };
    SocketAddr::new(ip, port)
}

async fn uas_udp(sock: Arc<UdpSocket>, st: Arc<UasState>, opts: Arc<UasOpts>, contact: String) {
    let mut buf = vec![0u8; 65_536];
    let limits = limits();
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(&buf[..n]), &limits) else {
            continue;
        };
        st.record(&m, from);
        let to = udp_response_target(&m, from);
        for a in answers(&m, &opts, &contact) {
            let _ = sock.send_to(&a, to).await;
        }
    }
}

async fn uas_accept(
    l: TcpListener,
    tls: Option<SslAcceptor>,
    st: Arc<UasState>,
    opts: Arc<UasOpts>,
    contact: String,
) {
    loop {
        let Ok((tcp, from)) = l.accept().await else {
            continue;
        };
        st.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let (st, opts, contact, tls) = (st.clone(), opts.clone(), contact.clone(), tls.clone());
        tokio::spawn(async move {
            let stream: Stream = match &tls {
                None => Box::pin(tcp),
                Some(acc) => {
                    let Ok(ssl) = openssl::ssl::Ssl::new(acc.context()) else {
                        return;
                    };
                    let Ok(mut s) = SslStream::new(ssl, tcp) else {
                        return;
                    };
                    if Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    Box::pin(s)
                }
            };
            uas_stream(stream, from, &st, &opts, &contact).await;
        });
    }
}

/// Serves one stream. Answers go through a writer task, so the UAS keeps reading while a
/// slow reader on the other side holds its writes up (as a real server would).
async fn uas_stream(s: Stream, from: SocketAddr, st: &UasState, opts: &UasOpts, contact: &str) {
    let (mut r, mut w) = tokio::io::split(s);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut framer = StreamFramer::new(limits());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'read: loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(siprox::sip::Frame::Message(m))) => {
                    st.record(&m, from);
                    for a in answers(&m, opts, contact) {
                        if tx.send(a).is_err() {
                            break 'read;
                        }
                    }
                }
                Ok(Some(siprox::sip::Frame::Ping)) => {
                    if tx.send(b"\r\n".to_vec()).is_err() {
                        break 'read;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A UDP socket with a 4 MiB receive buffer, as siprox gives its own: with the kernel's
/// default (208 KiB, about 90 datagrams on loopback) a peer that shares two cores with the
/// proxy under load loses datagrams while it waits for a core, and over UDP a stateless
/// proxy has no retransmission to hide that: the load generator would measure its own
/// socket instead of the proxy. The load generator's callees (benches/) bind through it too.
pub fn udp_bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: capped by net.core.rmem_max (4 MiB here).
    let _ = s.set_recv_buffer_size(4 * 1024 * 1024);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}
