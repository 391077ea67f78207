//! The `Connection` actor's life: started for an accepted or an outgoing stream, opened
//! once connected (and handshaken), fed by its mailbox (`ConnCommand`), driven by one I/O
//! future, closed with its reason logged and counted. Must never block its thread nor
//! wait for another connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix::fut::{wrap_future, ActorFuture, ActorFutureExt};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use bytes::BytesMut;
use siprox::proxy::{ConnId, Destination, Inbound, Transport};
use siprox::sip::StreamFramer;
use tokio::net::TcpStream;
use tracing::{debug, info_span, trace, warn, Span};

use super::framing::ReadOutcome;
use super::handshake::{self, Established, Failed, Io};
use super::{Connection, Phase, Start, POLL_BUDGET};
use crate::state::messages::{CloseReason, ConnCommand};
use crate::state::table::{clock_ms, ConnHandle, ConnShared, PeerKey};
use crate::state::{inc, Slot};
use crate::tls;
use crate::worker::Worker;

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
            key.addr,
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
            ctx.address().recipient(),
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
            wblocked: false,
            rdrained: false,
            send_timer: None,
            phase: Phase::Starting,
            tls: None,
            _slot: slot,
        });
        shared
    }

    pub(super) fn id(&self) -> ConnId {
        self.shared.id
    }

    fn transport(&self) -> Transport {
        self.shared.key.transport
    }

    pub(super) fn inbound(&self) -> Inbound {
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
        if let Some(mut dest) = self.dest.clone() {
            let domains = self.worker.shared.snapshot.load().tls.clone();
            // To another cluster node's advertise address, whatever routed it there (a
            // lookup, or a Route of a dialog): the cluster's server name selects the
            // `[cluster.tls]` domain on both sides. The table key keeps no name, so every
            // request to that node shares the one connection.
            // An advertise URI with a host name: the connection is made to the address it
            // resolved to, with the cluster's server name (so both sides use the cluster
            // domain), and the other node's certificate must also name that host.
            let mut verify_name = None;
            if dest.transport == Transport::Tls && self.peer_node().is_some() {
                if let Some(name) = dest.server_name.take() {
                    verify_name = Some(name);
                }
                dest.server_name = Some(siprox::config::CLUSTER_SNI.to_owned());
            }
            let fut = handshake::connect_out(
                self.shared.key.addr,
                dest,
                domains,
                start.settings,
                verify_name,
            );
            ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| act.started_io(res, ctx)));
            return;
        }
        let Some(tcp) = start.accepted else {
            ctx.stop();
            return;
        };
        // On Linux the socket has TCP_NODELAY from its listener (`listener::bind_one`).
        #[cfg(not(target_os = "linux"))]
        let _ = tcp.set_nodelay(true);
        if self.transport() != Transport::Tls {
            self.started_io(Ok(Established::plain(Io::Tcp(tcp))), ctx);
            return;
        }
        // The domains of the snapshot at accept time: the ClientHello callback picks one.
        let domains = self.worker.shared.snapshot.load().tls.clone();
        let ssl = tls::server_ssl(&self.worker.shared.dispatch, domains, self.local);
        let fut = handshake::accept_tls(ssl, tcp, start.settings.handshake_timeout);
        ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| act.started_io(res, ctx)));
    }

    fn started_io(&mut self, res: Result<Established, Failed>, ctx: &mut Context<Self>) {
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
            Err(failed) => {
                let stats = &self.worker.shared.stats;
                let reason = failed.reason();
                let (kind, why) = match &failed {
                    Failed::Connect(why) => {
                        inc(&stats.connect_failures);
                        (None, why)
                    }
                    Failed::Handshake(kind, why) => {
                        inc(&stats.handshake_failures);
                        stats.tls_failure(kind.label());
                        (Some(kind), why)
                    }
                };
                let kind = kind.map_or(String::new(), ToString::to_string);
                let queued = self.wq.len();
                if self.dest.is_some() {
                    // siprox chose to connect: a failure loses messages, the operator must see it.
                    warn!(reason = ?reason, failure = %kind, error = %why, dropped_messages = queued, "outgoing connection failed");
                    for _ in 0..queued {
                        inc(&stats.send_failures);
                    }
                    // Never silence: the requests it held are answered (480 for a cluster
                    // node that died and is not yet known dead, else 503), in a task of
                    // this worker once the connection is gone, not while it closes.
                    let worker = self.worker.clone();
                    let (to, local, transport) =
                        (self.shared.key.addr, self.local, self.transport());
                    let node = self.peer_node();
                    let unsent: Vec<_> = self.wq.drain(..).collect();
                    if !unsent.is_empty() {
                        actix::spawn(async move {
                            worker.answer_unsent(unsent, transport, to, local, node.as_deref());
                        });
                    }
                } else {
                    // A client's failed handshake is the client's problem (and floods are cheap
                    // to cause): debug, and counted.
                    debug!(reason = ?reason, failure = %kind, error = %why, "handshake failed");
                }
                ctx.stop();
                return;
            }
        };
        // The local address is known only now for an outgoing stream (it held the peer's
        // until the connect) and for one accepted on a wildcard listener; a stream
        // accepted on a listener bound to one address has that address: no
        // getsockname per connection.
        let read_local = self.dest.is_some() || self.local.ip().is_unspecified();
        if read_local {
            let tcp = match &io {
                Io::Tcp(t) => t,
                Io::Tls(s) => s.get_ref(),
            };
            if let Ok(a) = tcp.local_addr() {
                self.local = a;
            }
        }
        if let Io::Tls(s) = &io {
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
}

impl Connection {
    /// The cluster node this outgoing connection goes to: its advertise address, or the
    /// host name and port of its advertise URI.
    fn peer_node(&self) -> Option<Arc<str>> {
        let cluster = self.worker.shared.location.get()?.cluster.clone()?;
        let key = &self.shared.key;
        cluster.replica.peer_node(key.addr).or_else(|| {
            let name = key.server_name.as_deref()?;
            cluster.replica.peer_node_named(name, key.addr.port())
        })
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

impl Handler<ConnCommand> for Connection {
    type Result = ();
    fn handle(&mut self, msg: ConnCommand, ctx: &mut Self::Context) {
        match msg {
            // Queued in every phase: before the connect completes (sent once it does), and
            // while draining (the drain writes it, bounded by send_timeout and
            // shutdown_grace).
            ConnCommand::Enqueue(bytes) => self.wq.push_back(bytes),
            ConnCommand::Close(reason) => self.finish(reason, ctx),
            ConnCommand::IdleCheck => {
                if self.phase == Phase::Open && self.shared.message_late_at(clock_ms()) {
                    self.finish(CloseReason::MessageTimeout, ctx);
                } else if self.phase == Phase::Open && self.shared.idle_at(clock_ms()) {
                    self.finish(CloseReason::IdleTimeout, ctx);
                }
            }
            ConnCommand::Drain => {
                if self.io.is_none() {
                    // Still connecting or handshaking: nothing of ours is in flight.
                    self.finish(CloseReason::Shutdown, ctx);
                } else if self.phase == Phase::Open {
                    self.phase = Phase::Draining(CloseReason::Shutdown);
                }
            }
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

    /// One pass of the I/O state machine. `Ready(reason)` = close now.
    fn poll_io(&mut self, cx: &mut TaskContext<'_>) -> Poll<CloseReason> {
        // The UDP datagrams the messages read in this pass produce (forwards) leave
        // together at its end, in one sendmmsg (see `worker::udp`).
        let _round = self.worker.round();
        // What the mailbox brought since the last pass; what the reads below produce for
        // this stream itself (replies) is written once they are done, in one write.
        if let Err(r) = self.flush_queue(cx) {
            return Poll::Ready(r);
        }
        for _ in 0..POLL_BUDGET {
            if let Phase::Draining(reason) = self.phase {
                if let Err(r) = self.flush_queue(cx) {
                    return Poll::Ready(r);
                }
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
                ReadOutcome::Pending => {
                    return match self.flush_queue(cx) {
                        Err(r) => Poll::Ready(r),
                        Ok(()) => Poll::Pending,
                    }
                }
                ReadOutcome::Eof => {
                    // The peer finished sending; it may still read what we owe it.
                    self.phase = Phase::Draining(CloseReason::PeerClosed);
                }
                ReadOutcome::Close(r) => return Poll::Ready(r),
            }
        }
        // Budget spent with more to do: yield to the other connections of this worker.
        if let Err(r) = self.flush_queue(cx) {
            return Poll::Ready(r);
        }
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
