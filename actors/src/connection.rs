//! The `Connection` actor: one TCP or TLS stream, incoming or outgoing, on the arbiter that
//! accepted or opened it. It owns the handshake, SIP framing, a bounded write queue with
//! `send_timeout`, the idle timeout and graceful drain. Every message it reads goes straight
//! to the proxy core on this thread. Must never block its thread, never wait for another
//! connection, and never panic on what a peer sends.
//!
//! The I/O is one hand-written [`ActorFuture`] ([`IoDriver`]) polled inside the actor's
//! context: it sees the actor's state on every poll, so queued bytes, buffers and timers
//! live in the actor with no locks and no extra channel. actix polls it right after the
//! mailbox, so bytes enqueued by [`Enqueue`] are written in the same pass.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::fut::{wrap_future, ActorFuture, ActorFutureExt};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage};
use bytes::{Bytes, BytesMut};
use openssl::ssl::Ssl;
use siprox::proxy::{Action, ConnId, Destination, Inbound, Transport};
use siprox::sip::{Frame, StreamFramer};
use siprox::tls::TlsFacts;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_openssl::SslStream;
use tracing::{debug, info, info_span, trace, warn, Span};

use crate::shared::{inc, ConnSettings, Slot};
use crate::table::{clock_ms, ConnHandle, ConnShared, PeerKey};
use crate::tls;
use crate::worker::Worker;

/// Read-buffer growth step. Small on purpose: most SIP messages fit, idle connections hold
/// no buffer at all (see `read_some`), and big messages grow it only while they last.
const READ_CHUNK: usize = 4096;
/// A buffer grown past this by a large message is freed as soon as it is empty again.
const READ_KEEP_MAX: usize = 16 * 1024;
/// Read-and-process rounds per poll before yielding, so one busy peer cannot starve the
/// other connections of its worker.
const POLL_BUDGET: usize = 16;

/// Why a connection closed (logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    ReadError(io::ErrorKind),
    WriteError(io::ErrorKind),
    SendTimeout,
    WriteQueueFull,
    IdleTimeout,
    /// The source IP buffers more than `max_partial_bytes_per_ip` of unfinished messages.
    PartialLimit,
    /// A message took longer than `message_timeout` from its first byte to its last.
    MessageTimeout,
    FramingError,
    Shutdown,
    HandshakeFailed,
    ConnectFailed,
}

/// Enqueue bytes for writing (sent by [`ConnHandle::send`], which did the accounting).
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Enqueue(pub Bytes);

/// Close now, discarding the queue.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Close(pub CloseReason);

/// Graceful shutdown: stop reading, write what is queued, close.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Drain;

enum Io {
    Tcp(TcpStream),
    Tls(SslStream<TcpStream>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Io {
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TCP connect and/or TLS handshake in progress; writes queue up.
    Starting,
    Open,
    /// Not reading any more; writing what is queued, then closing.
    Draining(CloseReason),
}

/// What a connection needs until it is open.
struct Start {
    /// The accepted TCP stream (none for an outgoing connection: it connects).
    accepted: Option<TcpStream>,
    settings: ConnSettings,
}

/// One TCP/TLS stream.
pub struct Connection {
    /// Id, key (transport and peer), own mailbox and write-queue accounting: what the
    /// connection table and every handle see.
    shared: Arc<ConnShared>,
    local: SocketAddr,
    /// Where an outgoing connection goes (and the server name to verify for TLS); boxed:
    /// accepted connections, the many, do not pay for it.
    dest: Option<Box<Destination>>,
    span: Span,
    worker: Rc<Worker>,
    /// What only the start needs (the accepted stream, its timeouts): boxed and dropped
    /// once the connection is open.
    start: Option<Box<Start>>,
    /// `[connections] send_timeout`, or the TLS domain's own.
    send_timeout: Duration,
    io: Option<Io>,
    rbuf: BytesMut,
    framer: StreamFramer,
    wq: VecDeque<Bytes>,
    /// Bytes of `wq.front()` already written.
    woff: usize,
    /// Armed while the socket refuses our bytes; reset whenever some are accepted.
    send_timer: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    /// Facts of the TLS session, read once after the handshake; handed to every message.
    tls: Option<Arc<TlsFacts>>,
    /// Set when the stream turned out to carry HTTP (SER-style RPC on a SIP listener).
    http: Option<siprox::rpc::HttpFramer>,
    /// Bytes of unfinished messages this stream has reported for its source IP.
    partial_held: usize,
    /// `[connections] max_partial_bytes_per_ip` when the connection started.
    max_partial: usize,
    _slot: Slot,
}

impl Connection {
    /// Starts the actor for an accepted stream on the current arbiter.
    pub(crate) fn start_incoming(
        worker: &Rc<Worker>,
        tcp: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        slot: Slot,
    ) {
        let key = PeerKey {
            transport,
            addr: peer,
            server_name: None,
        };
        let shared = Connection::spawn(worker, key, local, None, Some(tcp), slot);
        worker.shared.table.insert_id(ConnHandle::new(shared));
    }

    /// Starts an outgoing connection to `dest` on the current arbiter and returns its handle
    /// at once: messages sent before the connect completes wait in its queue.
    pub(crate) fn start_outgoing(
        worker: &Rc<Worker>,
        key: &PeerKey,
        dest: &Destination,
    ) -> ConnHandle {
        let slot = worker.shared.admit_outgoing();
        let shared = Connection::spawn(
            worker,
            key.clone(),
            dest.addr,
            Some(dest.clone()),
            None,
            slot,
        );
        ConnHandle::new(shared)
    }

    /// Creates and starts the actor, with the settings of the live snapshot: accepted
    /// (`accepted`, no `dest`) or outgoing (`dest`: it connects).
    fn spawn(
        worker: &Rc<Worker>,
        key: PeerKey,
        local: SocketAddr,
        dest: Option<Destination>,
        accepted: Option<TcpStream>,
        slot: Slot,
    ) -> Arc<ConnShared> {
        let snap = worker.shared.snapshot.load();
        let settings = snap.conn;
        let limits = snap.limits;
        drop(snap);
        let id = worker.shared.next_conn_id();
        let outgoing = dest.is_some();
        let span = conn_span(
            id,
            key.addr,
            key.transport,
            if outgoing { "out" } else { "in" },
        );
        let ctx = Context::new();
        let shared = ConnShared::new(
            id,
            key,
            ctx.address(),
            settings.max_write_queue,
            outgoing,
            settings.idle_timeout,
            settings.message_timeout,
        );
        ctx.run(Connection {
            shared: shared.clone(),
            local,
            dest: dest.map(Box::new),
            span,
            worker: worker.clone(),
            start: Some(Box::new(Start { accepted, settings })),
            send_timeout: settings.send_timeout,
            io: None,
            rbuf: BytesMut::new(),
            http: None,
            partial_held: 0,
            max_partial: settings.max_partial_bytes_per_ip,
            framer: StreamFramer::new(limits),
            wq: VecDeque::new(),
            woff: 0,
            send_timer: None,
            phase: Phase::Starting,
            tls: None,
            _slot: slot,
        });
        shared
    }

    fn id(&self) -> ConnId {
        self.shared.id
    }

    fn transport(&self) -> Transport {
        self.shared.key.transport
    }

    fn inbound(&self) -> Inbound {
        Inbound {
            transport: self.transport(),
            source: self.shared.key.addr,
            local: self.local,
            conn: Some(self.id()),
        }
    }

    /// Handshake (incoming TLS) or connect (outgoing), then open.
    fn begin(&mut self, ctx: &mut Context<Self>) {
        let Some(start) = self.start.take() else {
            ctx.stop();
            return;
        };
        if let Some(dest) = self.dest.clone() {
            let domains = self.worker.shared.snapshot.load().tls.clone();
            let s = start.settings;
            let fut = async move {
                let tcp =
                    match tokio::time::timeout(s.connect_timeout, TcpStream::connect(dest.addr))
                        .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => return Err((CloseReason::ConnectFailed, e.to_string())),
                        Err(_) => {
                            return Err((CloseReason::ConnectFailed, "connect timeout".to_owned()))
                        }
                    };
                let _ = tcp.set_nodelay(true);
                if dest.transport != Transport::Tls {
                    return Ok(Established::plain(Io::Tcp(tcp)));
                }
                let (ssl, domain) = domains
                    .client_ssl(&dest)
                    .map_err(|e| (CloseReason::HandshakeFailed, e.to_string()))?;
                let timeout = domain.handshake_timeout.unwrap_or(s.handshake_timeout);
                let stream = handshake(ssl, tcp, timeout, false).await?;
                let sni = domain
                    .ctx
                    .server_name
                    .clone()
                    .or_else(|| dest.server_name.clone());
                let facts = tls::facts(stream.ssl(), Some(&domain.name), sni, None);
                Ok(Established {
                    io: Io::Tls(stream),
                    facts: Some(Arc::new(facts)),
                    send_timeout: domain.send_timeout,
                })
            };
            ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| act.started_io(res, ctx)));
            return;
        }
        let Some(tcp) = start.accepted else {
            ctx.stop();
            return;
        };
        let _ = tcp.set_nodelay(true);
        if self.transport() != Transport::Tls {
            self.started_io(Ok(Established::plain(Io::Tcp(tcp))), ctx);
            return;
        }
        // The domains of the snapshot at accept time: the ClientHello callback picks one.
        let domains = self.worker.shared.snapshot.load().tls.clone();
        let ssl = tls::server_ssl(&self.worker.shared.dispatch, domains, self.local);
        let timeout = start.settings.handshake_timeout;
        let fut = async move {
            let ssl = ssl.map_err(|e| (CloseReason::HandshakeFailed, e.to_string()))?;
            let stream = handshake(ssl, tcp, timeout, true).await?;
            let (facts, send_timeout) = match tls::chosen(stream.ssl()) {
                Some(c) => (
                    tls::facts(
                        stream.ssl(),
                        Some(&c.domain.name),
                        c.sni.clone(),
                        Some(c.domain.ctx.cert.clone()),
                    ),
                    c.domain.send_timeout,
                ),
                None => (tls::facts(stream.ssl(), None, None, None), None),
            };
            Ok(Established {
                io: Io::Tls(stream),
                facts: Some(Arc::new(facts)),
                send_timeout,
            })
        };
        ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| act.started_io(res, ctx)));
    }

    fn started_io(
        &mut self,
        res: Result<Established, (CloseReason, String)>,
        ctx: &mut Context<Self>,
    ) {
        let _e = self.span.clone().entered();
        let io = match res {
            Ok(est) => {
                if let Some(t) = est.send_timeout {
                    self.send_timeout = t;
                }
                self.tls = est.facts;
                if self.tls.is_some() {
                    inc(&self.worker.shared.stats.tls_handshakes);
                }
                if let Some(f) = &self.tls {
                    // For the management RPC (`tls.list`), readable from any thread.
                    self.shared.set_tls_facts(f.clone());
                    // event_route[tls:connection-in]: the script may refuse the peer.
                    if self.dest.is_none() {
                        let inbound = self.inbound();
                        if !self
                            .worker
                            .on_tls_event("tls:connection-in", &inbound, Some(f))
                        {
                            debug!("the route script dropped the connection");
                            ctx.stop();
                            return;
                        }
                    }
                }
                est.io
            }
            Err((reason, why)) => {
                let stats = &self.worker.shared.stats;
                inc(match reason {
                    CloseReason::ConnectFailed => &stats.connect_failures,
                    _ => &stats.handshake_failures,
                });
                if reason != CloseReason::ConnectFailed {
                    let i = crate::shared::tls_failure_reason(&why);
                    if let Some(c) = stats.tls_failures.get(i) {
                        inc(c);
                    }
                }
                let queued = self.wq.len();
                if self.dest.is_some() {
                    // siprox chose to connect: a failure loses messages, the operator must see it.
                    warn!(reason = ?reason, error = %why, dropped_messages = queued, "outgoing connection failed");
                    for _ in 0..queued {
                        inc(&stats.send_failures);
                    }
                } else {
                    // A client's failed handshake is the client's problem (and floods are cheap
                    // to cause): debug, and counted.
                    debug!(reason = ?reason, error = %why, "handshake failed");
                }
                ctx.stop();
                return;
            }
        };
        if let Io::Tcp(t) = &io {
            if let Ok(a) = t.local_addr() {
                self.local = a;
            }
        }
        if let Io::Tls(s) = &io {
            if let Ok(a) = s.get_ref().local_addr() {
                self.local = a;
            }
            let f = self.tls.as_deref();
            debug!(
                version = s.ssl().version_str(),
                cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("-"),
                domain = f.and_then(|f| f.domain.as_deref()).unwrap_or("-"),
                sni = f.and_then(|f| f.server_name.as_deref()).unwrap_or("-"),
                peer_cert = f
                    .and_then(|f| f.peer.as_ref())
                    .map_or("-", |p| p.subject.line.as_str()),
                "TLS established"
            );
        } else {
            debug!("connection established");
        }
        self.io = Some(io);
        self.shared.established.store(true, Ordering::Release);
        if self.phase == Phase::Starting {
            self.phase = Phase::Open;
        }
        self.shared.touch();
        // idle_timeout = 0 and message_timeout = 0: never closed by the sweep.
        if self.shared.idle_timeout_ms != 0 || self.shared.message_timeout_ms != 0 {
            self.worker.watch_idle(self.shared.clone());
        }
        if self.dest.is_none() {
            // Incoming: reachable by id (responses) and by peer (requests to the same flow).
            let handle = ConnHandle::new(self.shared.clone());
            self.worker.shared.table.open(handle);
        }
        ctx.spawn(IoDriver);
    }

    /// Writes as much of the queue as the socket takes. `Err` = close now.
    fn flush_queue(&mut self, cx: &mut TaskContext<'_>) -> Result<(), CloseReason> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let mut progressed = false;
        while let Some(front) = self.wq.front() {
            match io.poll_write(cx, &front[self.woff..]) {
                Poll::Ready(Ok(0)) => {
                    return Err(CloseReason::WriteError(io::ErrorKind::WriteZero))
                }
                Poll::Ready(Ok(n)) => {
                    progressed = true;
                    self.woff += n;
                    if self.woff >= front.len() {
                        let len = front.len();
                        self.wq.pop_front();
                        self.woff = 0;
                        self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
                    }
                }
                Poll::Ready(Err(e)) => return Err(CloseReason::WriteError(e.kind())),
                Poll::Pending => break,
            }
        }
        if self.wq.is_empty() {
            // Timers are freed when not needed: an idle connection costs as little as possible.
            self.send_timer = None;
            if progressed {
                self.shared.touch();
            }
            return Ok(());
        }
        let deadline = Instant::now() + self.send_timeout;
        match &mut self.send_timer {
            None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if progressed => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        if progressed {
            self.shared.touch();
        }
        if let Some(t) = &mut self.send_timer {
            if t.as_mut().poll(cx).is_ready() {
                return Err(CloseReason::SendTimeout);
            }
        }
        Ok(())
    }

    /// One read and the frames it completes.
    fn read_some(&mut self, cx: &mut TaskContext<'_>) -> ReadOutcome {
        let Some(io) = self.io.as_mut() else {
            return ReadOutcome::Pending;
        };
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let mut io = Pin::new(io);
        let n = match tokio_util::io::poll_read_buf(io.as_mut(), cx, &mut self.rbuf) {
            Poll::Pending => {
                if self.rbuf.is_empty() {
                    // Nothing pending: give the buffer back while the peer is quiet, so an
                    // idle connection holds no read buffer at all.
                    self.rbuf = BytesMut::new();
                }
                return ReadOutcome::Pending;
            }
            Poll::Ready(Err(e)) => {
                if self.tls.is_some() {
                    // TLS 1.3: a server that refuses our client certificate (or a client whose
                    // certificate we refused) surfaces here, on the first read after the
                    // handshake. Outgoing: siprox chose this peer, so the operator must see it.
                    if self.dest.is_some() {
                        warn!(error = %e, "TLS connection failed after the handshake (refused client certificate?)");
                    } else {
                        debug!(error = %e, "TLS read failed");
                    }
                }
                return ReadOutcome::Close(CloseReason::ReadError(e.kind()));
            }
            Poll::Ready(Ok(n)) => n,
        };
        if n == 0 {
            return ReadOutcome::Eof;
        }
        self.shared.touch();
        ReadOutcome::Data
    }
}

enum ReadOutcome {
    Data,
    Pending,
    Eof,
    Close(CloseReason),
}

/// A TLS handshake bounded by `timeout`, or by the server domain's own `handshake_timeout`
/// (from the start of the handshake) once the ClientHello has picked the domain.
async fn handshake(
    ssl: Ssl,
    tcp: TcpStream,
    timeout: Duration,
    server: bool,
) -> Result<SslStream<TcpStream>, (CloseReason, String)> {
    let mut s =
        SslStream::new(ssl, tcp).map_err(|e| (CloseReason::HandshakeFailed, e.to_string()))?;
    let start = Instant::now();
    let mut sleep = Box::pin(tokio::time::sleep_until(start + timeout));
    let mut adjusted = false;
    let res = std::future::poll_fn(|cx| {
        let r = if server {
            Pin::new(&mut s).poll_accept(cx)
        } else {
            Pin::new(&mut s).poll_connect(cx)
        };
        if let Poll::Ready(r) = r {
            return Poll::Ready(Some(r));
        }
        if server && !adjusted {
            if let Some(t) = tls::chosen(s.ssl()).and_then(|c| c.domain.handshake_timeout) {
                adjusted = true;
                sleep.as_mut().reset(start + t);
            }
        }
        sleep.as_mut().poll(cx).map(|_| None)
    })
    .await;
    match res {
        Some(Ok(())) => Ok(s),
        Some(Err(e)) => {
            // Name the certificate problem when there is one (verify_client refusals).
            let v = s.ssl().verify_result();
            let why = if v == openssl::x509::X509VerifyResult::OK {
                e.to_string()
            } else {
                format!("{e} (certificate: {})", v.error_string())
            };
            Err((CloseReason::HandshakeFailed, why))
        }
        None => Err((CloseReason::HandshakeFailed, "handshake timeout".to_owned())),
    }
}

/// What a finished connect/handshake hands to the actor.
struct Established {
    io: Io,
    facts: Option<Arc<TlsFacts>>,
    /// The TLS domain's `send_timeout`, overriding `[connections]`.
    send_timeout: Option<Duration>,
}

impl Established {
    fn plain(io: Io) -> Established {
        Established {
            io,
            facts: None,
            send_timeout: None,
        }
    }
}

fn conn_span(id: ConnId, peer: SocketAddr, transport: Transport, dir: &'static str) -> Span {
    info_span!("conn", conn.id = %id, peer = %peer, transport = %transport, dir)
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.begin(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.worker.shared.table.remove(self.id(), &self.shared.key);
        trace!(parent: &self.span, "connection actor stopped");
    }
}

impl Handler<Enqueue> for Connection {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, _ctx: &mut Self::Context) {
        // Queued in every phase: before the connect completes (sent once it does), and while
        // draining (the drain writes it, bounded by send_timeout and shutdown_grace).
        self.wq.push_back(msg.0);
    }
}

impl Handler<Close> for Connection {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        self.finish(msg.0, ctx);
    }
}

/// From the worker's idle sweep: this connection looked idle; closes it if it still is
/// (activity may have arrived since the sweep looked).
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub(crate) struct IdleCheck;

impl Handler<IdleCheck> for Connection {
    type Result = ();
    fn handle(&mut self, _msg: IdleCheck, ctx: &mut Self::Context) {
        if self.phase == Phase::Open && self.shared.message_late_at(clock_ms()) {
            self.finish(CloseReason::MessageTimeout, ctx);
        } else if self.phase == Phase::Open && self.shared.idle_at(clock_ms()) {
            self.finish(CloseReason::IdleTimeout, ctx);
        }
    }
}

impl Handler<Drain> for Connection {
    type Result = ();
    fn handle(&mut self, _msg: Drain, ctx: &mut Self::Context) {
        if self.io.is_none() {
            // Still connecting or handshaking: nothing of ours is in flight.
            self.finish(CloseReason::Shutdown, ctx);
        } else if self.phase == Phase::Open {
            self.phase = Phase::Draining(CloseReason::Shutdown);
        }
    }
}

impl Connection {
    /// Logs and counts why the connection closes, then stops the actor (which drops the
    /// socket and unregisters it).
    fn finish(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        let _e = self.span.clone().entered();
        if self.partial_held != 0 {
            let ip = self.shared.key.addr.ip();
            self.worker.shared.hold_partial(ip, self.partial_held, 0, 0);
            self.partial_held = 0;
        }
        let stats = &self.worker.shared.stats;
        let queued = self.shared.bytes.load(Ordering::Relaxed);
        match reason {
            CloseReason::SendTimeout => {
                inc(&stats.send_timeouts);
                warn!(
                    queued_bytes = queued,
                    "peer did not read for send_timeout: closing"
                );
            }
            CloseReason::WriteQueueFull => {
                inc(&stats.write_queue_overflows);
                warn!(queued_bytes = queued, "write queue full: closing");
            }
            CloseReason::IdleTimeout => {
                inc(&stats.idle_timeouts);
                debug!("idle timeout: closing");
            }
            CloseReason::PartialLimit => {
                inc(&stats.message_timeouts);
                warn!(
                    buffered = self.rbuf.len(),
                    "source IP holds more than max_partial_bytes_per_ip of unfinished messages: closing"
                );
            }
            CloseReason::MessageTimeout => {
                inc(&stats.message_timeouts);
                debug!(
                    buffered = self.rbuf.len(),
                    "message not complete within message_timeout: closing"
                );
            }
            CloseReason::FramingError => {
                inc(&stats.framing_errors);
                debug!("stream lost SIP framing: closed");
            }
            other => debug!(reason = ?other, "connection closed"),
        }
        if self.dest.is_none() {
            if let Some(f) = self.tls.clone() {
                let inbound = self.inbound();
                self.worker
                    .on_tls_event("tls:connection-closed", &inbound, Some(&f));
            }
        }
        ctx.stop();
    }

    /// Frames and handles what the read buffer holds. `Err` = the stream lost framing.
    fn process_frames(&mut self) -> Result<(), CloseReason> {
        // An HTTP request line where a SIP message would start: RPC over the SIP listener.
        if self.http.is_none()
            && self.dest.is_none()
            && !self.framer.is_mid_message(&BytesMut::new())
            && siprox::rpc::looks_like_http(&self.rbuf)
        {
            self.http = Some(siprox::rpc::HttpFramer::default());
        }
        if let Some(framer) = self.http {
            return self.process_http(framer);
        }
        loop {
            match self.framer.next_frame(&mut self.rbuf) {
                Ok(Some(Frame::Message(msg))) => {
                    let inbound = self.inbound();
                    self.worker.on_message(msg, inbound, self.tls.clone());
                }
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                    let pong = Bytes::from_static(b"\r\n");
                    self.shared.bytes.fetch_add(pong.len(), Ordering::AcqRel);
                    self.wq.push_back(pong);
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Malformed { bytes, error })) => {
                    // Its end was known: answer 400 and keep reading this stream.
                    inc(&self.worker.shared.stats.framing_errors);
                    debug!(%error, "malformed message on a stream: answered, stream kept");
                    self.answer_unparsable(&bytes, &error);
                }
                Ok(None) => break,
                Err(e) => {
                    // Answer what can be answered (400 with the parse error), then close:
                    // after a framing error nothing more on this stream can be trusted.
                    let bytes = self.rbuf.split().freeze();
                    debug!(error = %e, "framing error");
                    self.answer_unparsable(&bytes, &e);
                    return Err(CloseReason::FramingError);
                }
            }
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_KEEP_MAX {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// The core's answer (a 400 where the request is identifiable) to bytes that did not
    /// parse, queued on this connection.
    fn answer_unparsable(&mut self, bytes: &Bytes, e: &siprox::sip::ParseError) {
        let inbound = self.inbound();
        let snap = self.worker.shared.snapshot.load();
        let action = snap.proxy.on_unparsable(bytes, e, &inbound);
        drop(snap);
        match action {
            Action::Send { dest, bytes } if dest.conn == Some(self.id()) => {
                self.shared.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
                self.wq.push_back(bytes);
            }
            other => self.worker.execute_simple(other, &inbound),
        }
    }

    /// HTTP requests on a SIP stream: the route script decides (`dispatch_rpc()`, a reply,
    /// or neither, which is refused); a request never goes unanswered.
    fn process_http(&mut self, framer: siprox::rpc::HttpFramer) -> Result<(), CloseReason> {
        loop {
            let req = match framer.next_request(&mut self.rbuf) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.enqueue(Bytes::from(e.response().to_bytes()));
                    return Err(CloseReason::FramingError);
                }
            };
            let inbound = self.inbound();
            let caller = siprox::rpc::sip::caller(inbound.source, self.tls.as_deref());
            if let Some(mut r) = siprox::rpc::sip::refuse_batch(&req) {
                info!(%caller, "RPC batch refused on a SIP listener");
                r.close = !req.keep_alive();
                self.enqueue(Bytes::from(r.to_bytes()));
                if r.close {
                    return Err(CloseReason::Shutdown);
                }
                continue;
            }
            let Ok(msg) = siprox::sip::Message::parse(req.raw.clone()) else {
                let r = siprox::rpc::HttpResponse::text(400, "malformed request\n");
                self.enqueue(Bytes::from(r.to_bytes()));
                return Err(CloseReason::FramingError);
            };
            // The method the script decided on; the RPC layer runs that one and no other.
            let method = siprox::rpc::method_any(&req.body);
            match self.worker.on_http(&msg, &inbound, self.tls.as_deref()) {
                crate::scripts::HttpDecision::Dispatch { trusted } => {
                    let allowed = trusted || {
                        let snap = self.worker.shared.snapshot.load();
                        siprox::rpc::sip::admitted(
                            &snap.config.management.allow,
                            self.tls.as_deref(),
                        )
                    };
                    let rpc = self.worker.shared.rpc.get().cloned();
                    let handle = self.worker.shared.table.get(self.id());
                    match (rpc, handle) {
                        (Some(rpc), Some(h)) => {
                            let call = rpc.send(crate::rpc::Request {
                                req: Box::new(req),
                                allowed,
                                caller,
                                only: Some(method.unwrap_or_default()),
                            });
                            // The answer comes from the control arbiter; it is queued like
                            // any other write, so this connection never waits for it.
                            actix::spawn(async move {
                                match call.await {
                                    Ok(resp) => {
                                        let _ = h.send(Bytes::from(resp.to_bytes()));
                                        // It said `Connection: close`: written, then closed.
                                        if resp.close {
                                            h.addr().do_send(Drain);
                                        }
                                    }
                                    Err(_) => h.close(),
                                }
                            });
                        }
                        _ => {
                            let r = siprox::rpc::HttpResponse::text(503, "RPC not available\n");
                            self.enqueue(Bytes::from(r.to_bytes()));
                        }
                    }
                }
                crate::scripts::HttpDecision::Reply(code, reason) => {
                    info!(%caller, method = method.as_deref().unwrap_or(""), code, "RPC call answered by the route script");
                    let r = siprox::rpc::sip::script_reply(&req, code, &reason);
                    self.enqueue(Bytes::from(r.to_bytes()));
                    if r.close {
                        return Err(CloseReason::Shutdown);
                    }
                }
                crate::scripts::HttpDecision::Refuse => {
                    info!(%caller, method = method.as_deref().unwrap_or(""), "RPC call not dispatched by the route script");
                    let r = siprox::rpc::sip::undispatched(&req);
                    self.enqueue(Bytes::from(r.to_bytes()));
                    if r.close {
                        return Err(CloseReason::Shutdown);
                    }
                }
            }
        }
    }

    /// Accounts what the read buffer holds of unfinished messages against the source IP's
    /// `max_partial_bytes_per_ip`; `false`: over it. A stream between messages holds none
    /// and costs no lookup.
    fn hold_partial(&mut self) -> bool {
        let held = self.rbuf.len();
        if held == self.partial_held {
            return true;
        }
        let ip = self.shared.key.addr.ip();
        let ok = self
            .worker
            .shared
            .hold_partial(ip, self.partial_held, held, self.max_partial);
        self.partial_held = held;
        ok
    }

    fn enqueue(&mut self, bytes: Bytes) {
        self.shared.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        self.wq.push_back(bytes);
    }

    /// One pass of the I/O state machine. `Ready(reason)` = close now.
    fn poll_io(&mut self, cx: &mut TaskContext<'_>) -> Poll<CloseReason> {
        for _ in 0..POLL_BUDGET {
            if let Err(r) = self.flush_queue(cx) {
                return Poll::Ready(r);
            }
            if let Phase::Draining(reason) = self.phase {
                if !self.wq.is_empty() {
                    return Poll::Pending;
                }
                let Some(io) = self.io.as_mut() else {
                    return Poll::Ready(reason);
                };
                // TLS close_notify, then FIN.
                return match io.poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(reason),
                };
            }
            match self.read_some(cx) {
                ReadOutcome::Data => {
                    let before = self.rbuf.len();
                    if let Err(r) = self.process_frames() {
                        self.phase = Phase::Draining(r);
                    }
                    // The message deadline runs from the first byte of each message.
                    self.shared
                        .partial(!self.rbuf.is_empty(), self.rbuf.len() < before);
                    if !self.hold_partial() {
                        return Poll::Ready(CloseReason::PartialLimit);
                    }
                }
                ReadOutcome::Pending => return Poll::Pending,
                ReadOutcome::Eof => {
                    // The peer finished sending; it may still read what we owe it.
                    self.phase = Phase::Draining(CloseReason::PeerClosed);
                }
                ReadOutcome::Close(r) => return Poll::Ready(r),
            }
        }
        // Budget spent with more to do: yield to the other connections of this worker.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Drives a connection's socket inside its actor context (see the module doc).
struct IoDriver;

impl ActorFuture<Connection> for IoDriver {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Connection,
        ctx: &mut Context<Connection>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let span = act.span.clone();
        let _e = span.enter();
        match act.poll_io(task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(reason) => {
                act.finish(reason, ctx);
                Poll::Ready(())
            }
        }
    }
}
