//! One worker arbiter's context: its UDP sockets, its DNS resolver, and the hot path that
//! turns a parsed message into the proxy core's decision and carries it out (send over UDP,
//! enqueue on a connection, open one, or resolve a name first). Runs only on its own
//! worker thread; must never block it (DNS and slow sends become local tasks). Route
//! scripts run inline here, through the core's script host (`siprox::script::host`, lent
//! the runtime's state by `script`); names resolve in `dns`; streams are reached only
//! through the connection table's handles and the [`Connector`] that `transport` installs.

pub mod dns;
mod fork;
pub(crate) mod memory;
pub mod script;
pub(crate) mod tm;
pub(crate) mod udp;
mod unsent;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use siprox::proxy::{
    Action, ConnId, Destination, ForwardOpts, Inbound, NextHop, Proxy, Target, Transport,
};
use siprox::script::host::{self, HttpDecision};
use siprox::sip::Message;
use siprox::tls::TlsFacts;
use tokio::net::UdpSocket;
use tracing::{debug, info, trace};

use crate::state::table::{clock_ms, ConnHandle, ConnShared, PeerKey, SendError};
use crate::state::{inc, Shared};
use dns::Resolver;

/// Most name resolutions (and slow UDP sends) in flight per worker: a flood of requests to
/// unresolvable names gets 503s instead of an unbounded pile of tasks.
const MAX_PENDING_TASKS: usize = 4096;

/// At most one INFO line per interval about responses that match nothing siprox sent.
const UNMATCHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a worker opens an outgoing TCP/TLS connection. Implemented by `transport` (the
/// `Connection` actor) and installed when the worker is made, so that the hot path reaches
/// streams through the connection table's handles and never names the transport above
/// it. Called once per new connection, never per message.
pub trait Connector {
    /// Starts a connection to `dest` on this worker's arbiter and returns its handle at
    /// once: what is sent before the connect completes waits in its queue.
    fn open(&self, worker: &Rc<Worker>, key: &PeerKey, dest: &Destination) -> ConnHandle;
}

/// Per-worker state, shared by the actors of one arbiter through an `Rc`.
pub struct Worker {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    /// This worker's UDP sockets (its own SO_REUSEPORT copies), with their bound address.
    udp: Vec<(SocketAddr, Rc<UdpSocket>)>,
    pub(crate) resolver: RefCell<Option<Resolver>>,
    pending_tasks: Cell<usize>,
    /// This worker's open connections with an idle timeout, for [`idle_sweep`]: one
    /// pointer each instead of a timer each (idle connections must be cheap).
    idle: RefCell<Vec<Arc<ConnShared>>>,
    connector: Box<dyn Connector>,
    /// This worker's transactions (`t_relay()`), driven by [`tm::timers`].
    tm: tm::TmState,
    /// Datagrams of the open round, sent together when it ends (see [`udp`]).
    outbox: udp::Outbox,
    /// The stream whose messages this worker is handling now (see [`Self::begin_reading`]).
    reading: RefCell<Option<ConnHandle>>,
    /// What was sent to `reading` meanwhile (accounted, not yet in its write queue).
    replies: RefCell<Vec<Bytes>>,
    /// An empty read buffer a stream gave back when it had nothing more to read, for the
    /// next stream of this worker that reads (see [`Self::take_read_buf`]).
    read_buf: RefCell<BytesMut>,
}

/// Largest read buffer a worker keeps between reads (a larger one, grown by a large
/// message, is freed).
const READ_BUF_KEEP_MAX: usize = 16 * 1024;

impl Worker {
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared>,
        udp: Vec<(SocketAddr, Rc<UdpSocket>)>,
        connector: Box<dyn Connector>,
    ) -> Worker {
        Worker {
            index,
            shared: shared.clone(),
            udp,
            resolver: RefCell::new(None),
            pending_tasks: Cell::new(0),
            idle: RefCell::new(Vec::new()),
            connector,
            tm: tm::TmState::new(index, &shared),
            outbox: udp::Outbox::default(),
            reading: RefCell::new(None),
            replies: RefCell::new(Vec::new()),
            read_buf: RefCell::new(BytesMut::new()),
        }
    }

    /// A read buffer for a stream that has none (empty; no capacity if none is kept):
    /// streams read one at a time on this thread, so one buffer serves them in turn
    /// instead of one allocation per read, while idle streams hold none.
    pub(crate) fn take_read_buf(&self) -> BytesMut {
        std::mem::take(&mut *self.read_buf.borrow_mut())
    }

    /// Keeps `buf` (empty) for the next [`take_read_buf`](Self::take_read_buf), unless one
    /// is kept already or it grew past [`READ_BUF_KEEP_MAX`].
    pub(crate) fn give_read_buf(&self, buf: BytesMut) {
        let mut kept = self.read_buf.borrow_mut();
        if buf.is_empty() && kept.capacity() == 0 && buf.capacity() <= READ_BUF_KEEP_MAX {
            *kept = buf;
        }
    }

    /// From now until [`end_reading`](Self::end_reading), `conn` is the stream whose
    /// messages this worker handles (on `conn`'s own thread): what is sent to it meanwhile,
    /// a reply to what it read, is kept for its write queue instead of going through its
    /// mailbox (no hop, no wakeup, and the replies to one read leave in one write).
    pub(crate) fn begin_reading(&self, conn: &Arc<ConnShared>) -> Reading {
        let prev = self.reading.replace(Some(ConnHandle::new(conn.clone())));
        // Never nested in practice; if it were, the outer stream's replies stay its own.
        let replies = if prev.is_some() {
            std::mem::take(&mut *self.replies.borrow_mut())
        } else {
            Vec::new()
        };
        Reading { prev, replies }
    }

    /// Ends [`begin_reading`](Self::begin_reading): what was sent to the stream meanwhile
    /// is appended to `wq`, its write queue, in order (already accounted in its queued
    /// bytes).
    pub(crate) fn end_reading(&self, r: Reading, wq: &mut VecDeque<Bytes>) {
        *self.reading.borrow_mut() = r.prev;
        self.take_replies(wq);
        if !r.replies.is_empty() {
            *self.replies.borrow_mut() = r.replies;
        }
    }

    /// Appends what was sent so far to the stream being read to `wq`, its write queue:
    /// before the stream queues anything itself, so that the order stays the order sent.
    pub(crate) fn take_replies(&self, wq: &mut VecDeque<Bytes>) {
        wq.extend(self.replies.borrow_mut().drain(..));
    }

    /// The connection with this id, if registered: the stream being read needs no table
    /// lookup (a lock shared with the other workers).
    pub(crate) fn conn(&self, id: ConnId) -> Option<ConnHandle> {
        if let Some(h) = self.reading.borrow().as_ref().filter(|h| h.id() == id) {
            return Some(h.clone());
        }
        self.shared.table.get(id)
    }

    /// True when connection `id` is registered and siprox opened it. The stream being read
    /// answers without a handle of its own (no reference count to bump: its count is
    /// shared with the workers that send to it).
    fn conn_is_outgoing(&self, id: ConnId) -> bool {
        if let Some(h) = self.reading.borrow().as_ref().filter(|h| h.id() == id) {
            return h.is_outgoing();
        }
        self.shared.table.get(id).is_some_and(|h| h.is_outgoing())
    }

    /// `bytes` for the stream being read, if `id` is that stream: `Err` gives them back.
    fn send_to_reading(&self, id: ConnId, bytes: Bytes) -> Result<(), Bytes> {
        let reading = self.reading.borrow();
        let Some(h) = reading.as_ref().filter(|h| h.id() == id) else {
            return Err(bytes);
        };
        match h.admit(bytes.len()) {
            Ok(()) => self.replies.borrow_mut().push(bytes),
            Err(SendError::QueueFull | SendError::Backlogged) => {
                inc(&self.shared.stats.send_failures)
            }
            // Closed meanwhile: the general path opens a new one (RFC 3261 §18.2.2).
            Err(SendError::Closed) => return Err(bytes),
        }
        Ok(())
    }

    /// Closes `conn` once nothing moves on it for its `idle_timeout` (see [`idle_sweep`]).
    pub(crate) fn watch_idle(&self, conn: Arc<ConnShared>) {
        self.idle.borrow_mut().push(conn);
    }

    /// One pass of the idle sweep: forgets closed connections, asks idle ones to close.
    fn sweep_idle(&self) {
        let now = clock_ms();
        self.idle.borrow_mut().retain(|c| {
            if !c.is_open() {
                return false;
            }
            if c.idle_at(now) || c.message_late_at(now) {
                c.check_idle();
            }
            true
        });
    }

    /// The hot path: a parsed message from any transport, with the TLS facts of its
    /// connection. A request runs its route script (or the built-in route); a response
    /// runs the `onreply_route` of the script that forwarded its request, then follows Via.
    pub(crate) fn on_message(
        self: &Rc<Self>,
        msg: Message,
        inbound: Inbound,
        tls: Option<Arc<TlsFacts>>,
    ) {
        let sip = &self.shared.stats.sip;
        sip.message_in(self.index);
        if let Some(m) = msg.method_kind() {
            sip.request(self.index, m);
        }
        let snap = self.shared.snapshot.load();
        if msg.is_request() {
            // RFC 5923 connection reuse has a trust side: a new request over a TLS connection
            // siprox opened comes from a next hop siprox chose to reach, not one it accepted;
            // only a client domain with `accept_requests` (and a verified certificate) lets
            // it in. In-dialog requests (a BYE) are checked by their Route as everywhere.
            if let Some(t) = tls.as_deref().filter(|t| !t.cluster_peer) {
                // Cheapest first: the stream being read answers without the table, and To is
                // parsed only on a connection siprox opened (to tell a new request).
                let outgoing = inbound.conn.is_some_and(|c| self.conn_is_outgoing(c))
                    && msg.to().ok().and_then(|to| to.tag()).is_none();
                if outgoing {
                    let trusted =
                        t.peer.is_some()
                            && t.peer_verified
                            && snap.tls.clients.iter().any(|d| {
                                d.accept_requests && Some(&*d.name) == t.domain.as_deref()
                            });
                    if !trusted {
                        debug!(domain = ?t.domain, "a new request from a next hop its client domain does not accept requests from: 403");
                        let a = snap.proxy.reply(
                            &msg,
                            &inbound,
                            403,
                            "Forbidden (next hop not trusted to send requests)",
                            "",
                        );
                        self.execute(a, &msg, &inbound);
                        return;
                    }
                }
            }
            // A retransmission of a relayed request, or the CANCEL of one.
            if self.tm_request(&msg, &inbound) {
                return;
            }
            // A message that fails validation never reaches a script: the core answers it.
            if let Some((script, tag)) = snap.scripts.for_request(tls.as_deref(), &msg) {
                // What validation parsed serves the script's forward() and t_relay()'s
                // branches: the request is parsed once (a script edits only the copy it
                // forwards, never `msg`).
                if let Ok(checked) = msg.validated() {
                    let hooks = tm::tm_script::Hooks {
                        worker: self,
                        tls: tls.clone(),
                        tag,
                    };
                    let run = script::with_env_tm(&self.shared, &snap, Some(&hooks), |env| {
                        host::run_request_checked(
                            script,
                            tag,
                            &snap.proxy,
                            env,
                            &msg,
                            &inbound,
                            tls.as_deref(),
                            Some(&checked),
                        )
                    });
                    if run.outcome.is_error() {
                        inc(&self.shared.stats.script_errors);
                    }
                    trace!(end = ?run.outcome.end, actions = run.actions.len(), "request route done");
                    // The route dealt with the request without its transaction: a stateless
                    // reply, forward() or drop.
                    let stateless = matches!(run.outcome.end, siprox::script::End::Drop)
                        || run
                            .actions
                            .iter()
                            .any(|(a, _)| !matches!(a, siprox::proxy::Action::Drop { .. }));
                    for (action, opts) in run.actions {
                        self.execute_with(action, &msg, &inbound, opts);
                    }
                    if run.newtran {
                        let end = match (run.relay.is_some(), stateless) {
                            (true, _) => tm::NewtranEnd::Relayed,
                            (false, true) => tm::NewtranEnd::Stateless,
                            (false, false) => tm::NewtranEnd::Nothing,
                        };
                        self.tm_newtran_end(&msg, run.t_replies, end);
                    }
                    if let Some(relay) = run.relay {
                        self.tm_relay(&msg, &inbound, tls.clone(), tag, relay, Some(&checked));
                    }
                    return;
                }
            }
            let action = snap.proxy.on_request(&msg, &inbound);
            self.execute(action, &msg, &inbound);
        } else {
            // Over a connection siprox opened, siprox's own branch is enough to make the top
            // Via siprox's, whatever its sent-by names.
            let own_conn = inbound.conn.is_some_and(|c| self.conn_is_outgoing(c));
            // A response that may carry a script tag needs its top Via: validation parses
            // it, and what it parsed serves the routing below (parsed once). Most responses
            // carry none and are validated only if no transaction takes them. With no
            // script at all no tag can pick one: no look for it.
            let mut checked = None;
            let tag = if !snap.scripts.is_empty() && Proxy::response_may_have_script_tag(&msg) {
                let c = checked.insert(msg.validated());
                match c {
                    Ok(c) => snap.proxy.response_script_tag_of(&c.top_via, own_conn),
                    // Not valid (it is dropped below), yet a script may still see it.
                    Err(_) => snap.proxy.response_script_tag_from(&msg, own_conn),
                }
            } else {
                None
            };
            if let Some(sc) = snap.scripts.for_reply(tag) {
                let env = script::bare_env(&self.shared);
                if !host::run_reply(sc, &snap.proxy, &env, &msg, &inbound, tls.as_deref()) {
                    inc(&self.shared.stats.dropped);
                    return;
                }
            }
            let top = checked
                .as_ref()
                .and_then(|c| c.as_ref().ok())
                .map(|c| &c.top_via);
            if self.tm_route_response(&msg, &inbound, top) {
                return;
            }
            let checked = checked.unwrap_or_else(|| msg.validated());
            match snap
                .proxy
                .on_response_checked(&msg, &inbound, own_conn, checked)
            {
                Action::Drop { reason } => self.unmatched_response(&msg, &inbound, reason),
                action => self.execute(action, &msg, &inbound),
            }
        }
    }

    /// A response siprox cannot route back: counted, and logged at INFO with the reason
    /// (at most one line per [`UNMATCHED_LOG_INTERVAL`], with how many were not logged).
    fn unmatched_response(&self, msg: &Message, inbound: &Inbound, reason: &'static str) {
        let stats = &self.shared.stats;
        inc(&stats.dropped);
        inc(&stats.responses_unmatched);
        if let Some(suppressed) = stats
            .unmatched_log
            .allow(clock_ms(), UNMATCHED_LOG_INTERVAL)
        {
            let via = msg.header(siprox::sip::HeaderName::Via).unwrap_or("-");
            info!(
                reason,
                status = msg.status().unwrap_or(0),
                call_id = msg.call_id().unwrap_or("-"),
                via,
                transport = %inbound.transport,
                source = %inbound.source,
                conn = ?inbound.conn,
                suppressed,
                "response dropped: it matches nothing siprox sent"
            );
        }
    }

    /// A TLS connection event (`tls:connection-in` after the handshake,
    /// `tls:connection-closed`) for the route script of the connection's domain. `false`:
    /// the script dropped the connection, which then closes.
    pub(crate) fn on_tls_event(
        self: &Rc<Self>,
        event: &str,
        inbound: &Inbound,
        tls: Option<&TlsFacts>,
    ) -> bool {
        let snap = self.shared.snapshot.load();
        let env = script::bare_env(&self.shared);
        host::run_event(&snap.scripts, event, &snap.proxy, &env, inbound, tls)
    }

    /// An HTTP request that arrived on a SIP stream: its route script decides.
    pub(crate) fn on_http(
        self: &Rc<Self>,
        msg: &Message,
        inbound: &Inbound,
        tls: Option<&TlsFacts>,
    ) -> HttpDecision {
        self.shared.stats.sip.message_in(self.index);
        let snap = self.shared.snapshot.load();
        let env = script::bare_env(&self.shared);
        host::run_http(&snap.scripts, &snap.proxy, &env, msg, inbound, tls)
    }

    /// Carries out the core's decision about `msg`.
    pub(crate) fn execute(self: &Rc<Self>, action: Action, msg: &Message, inbound: &Inbound) {
        self.execute_with(action, msg, inbound, ForwardOpts::default())
    }

    /// Carries out a decision; `opts` are the route script's forwarding options, kept for
    /// a forward that must wait for DNS.
    pub(crate) fn execute_with(
        self: &Rc<Self>,
        action: Action,
        msg: &Message,
        inbound: &Inbound,
        opts: ForwardOpts,
    ) {
        match action {
            Action::Send { dest, bytes } => {
                // RFC 5626 §5.3: a request for a flow (a connection, no address to fall
                // back to) whose connection is gone is answered 430 Flow Failed.
                if let Target::Flow(id) = dest.target {
                    if msg.is_request() && !self.conn(id).is_some_and(|h| h.is_open()) {
                        let snap = self.shared.snapshot.load();
                        let a = snap.proxy.reply(msg, inbound, 430, "Flow Failed", "");
                        drop(snap);
                        return self.execute_simple(a, inbound);
                    }
                }
                // A reply over UDP leaves from the socket its request arrived on: clients
                // (and NATs) expect the answer from the address they wrote to; a forwarded
                // request from the one `$fs` forced, if any.
                let from = tm::udp_from(&opts, &dest)
                    .filter(|_| !bytes.starts_with(b"SIP/2.0 "))
                    .or((inbound.transport == Transport::Udp).then_some(inbound.local));
                self.send(dest, bytes, from)
            }
            Action::Drop { reason } => {
                inc(&self.shared.stats.dropped);
                trace!(reason, "dropped");
            }
            // Only names come here: the core resolved IP literals itself.
            Action::Forward { hop } => self.resolve_then_forward(hop, msg.clone(), *inbound, opts),
        }
    }

    /// Carries out an action that needs no message context (a reply built from raw bytes).
    pub(crate) fn execute_simple(self: &Rc<Self>, action: Action, inbound: &Inbound) {
        match action {
            Action::Send { dest, bytes } => {
                let from = (inbound.transport == Transport::Udp).then_some(inbound.local);
                self.send(dest, bytes, from)
            }
            _ => inc(&self.shared.stats.dropped),
        }
    }

    /// RFC 3263 resolution in a local task (never on the hot path), then forward.
    fn resolve_then_forward(
        self: &Rc<Self>,
        hop: NextHop,
        msg: Message,
        inbound: Inbound,
        opts: ForwardOpts,
    ) {
        if self.pending_tasks.get() >= MAX_PENDING_TASKS {
            let snap = self.shared.snapshot.load();
            let action = snap.proxy.unresolvable(&msg, &inbound);
            debug!(host = %hop.host, "too many pending resolutions: answering 503");
            self.execute(action, &msg, &inbound);
            return;
        }
        self.pending_tasks.set(self.pending_tasks.get() + 1);
        let me = self.clone();
        actix::spawn(async move {
            let dest = dns::resolve(&me, &hop).await;
            me.pending_tasks
                .set(me.pending_tasks.get().saturating_sub(1));
            // Loaded after the await: a guard is never held across one.
            let snap = me.shared.snapshot.load();
            let action = match dest {
                Some(dest) => snap
                    .proxy
                    .forward_request_with(&msg, &inbound, &dest, &opts),
                None => {
                    inc(&me.shared.stats.dns_failures);
                    debug!(host = %hop.host, "next hop not resolvable");
                    snap.proxy.unresolvable(&msg, &inbound)
                }
            };
            match action {
                Action::Forward { .. } => inc(&me.shared.stats.dropped),
                other => me.execute_with(other, &msg, &inbound, opts),
            }
        });
    }

    /// Sends `bytes` to `dest`: over UDP from this worker's socket (the one bound to `from`
    /// if given, else the first of the destination's address family), or through the
    /// connection table (the given connection if open, else one to the destination).
    pub(crate) fn send(self: &Rc<Self>, dest: Destination, bytes: Bytes, from: Option<SocketAddr>) {
        self.shared.stats.sip.reply_bytes(self.index, &bytes);
        match dest.transport {
            Transport::Udp => match dest.socket_addr() {
                Some(to) => self.send_udp(to, bytes, from),
                None => inc(&self.shared.stats.send_failures),
            },
            Transport::Tcp | Transport::Tls => self.send_stream(dest, bytes),
        }
    }

    fn send_udp(self: &Rc<Self>, to: SocketAddr, bytes: Bytes, from: Option<SocketAddr>) {
        let udp = &self.udp;
        let sock = udp
            .iter()
            .position(|(a, _)| Some(*a) == from && a.is_ipv4() == to.is_ipv4())
            // The same family as the proxy core chose for Via (its first listen of it).
            .or_else(|| udp.iter().position(|(a, _)| a.is_ipv4() == to.is_ipv4()))
            .or_else(|| (!udp.is_empty()).then_some(0));
        let Some(sock) = sock else {
            inc(&self.shared.stats.send_failures);
            debug!(%to, "no UDP listener to send from: dropped");
            return;
        };
        self.send_udp_from(sock, to, bytes);
    }

    fn send_stream(self: &Rc<Self>, dest: Destination, bytes: Bytes) {
        let table = &self.shared.table;
        let mut bytes = bytes;
        if let Some(id) = dest.connection() {
            match self.send_to_reading(id, bytes) {
                Ok(()) => return,
                Err(b) => bytes = b,
            }
            if let Some(h) = table.get(id) {
                match self.send_conn(h, bytes) {
                    Ok(()) => return,
                    // The peer is not reading (or not connected yet): do not open a
                    // second connection to it.
                    Err((SendError::QueueFull | SendError::Backlogged, _)) => {
                        inc(&self.shared.stats.send_failures);
                        return;
                    }
                    // Closed meanwhile: RFC 3261 §18.2.2, open a new one to the address.
                    Err((SendError::Closed, b)) => bytes = b,
                }
            }
        }
        // A flow (RFC 5626) has no address to fall back to: its phone is behind NAT.
        let Target::Addr(addr) = dest.target else {
            inc(&self.shared.stats.send_failures);
            debug!(conn = ?dest.connection(), "flow closed: request dropped");
            return;
        };
        if self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            inc(&self.shared.stats.send_failures);
            return;
        }
        let key = PeerKey {
            transport: dest.transport,
            addr,
            server_name: dest.server_name.as_deref().map(Arc::from),
        };
        let h = table.find_or_open(key, |key| self.connector.open(self, key, &dest));
        if self.send_conn(h, bytes).is_err() {
            inc(&self.shared.stats.send_failures);
        }
    }
}

/// Each worker's idle-timeout clock: every tick (a quarter of the shorter of `idle_timeout`
/// and `message_timeout`, between 10 ms and 1 s) it looks at the activity stamps of the
/// worker's connections and asks those idle for their whole `idle_timeout`, or with a
/// message unfinished for `message_timeout`, to close. A connection closes at most one tick late;
/// activity costs a timestamp store, and an idle connection holds no timer of its own.
pub(crate) async fn idle_sweep(worker: Rc<Worker>) {
    loop {
        let conn = worker.shared.snapshot.load().conn;
        let tick = [conn.idle_timeout, conn.message_timeout]
            .into_iter()
            .filter(|t| !t.is_zero())
            .map(|t| (t / 4).clamp(IDLE_TICK_MIN, IDLE_TICK_MAX))
            .min()
            .unwrap_or(IDLE_TICK_MAX);
        tokio::time::sleep(tick).await;
        worker.sweep_idle();
        memory::after_sweep(&worker.shared);
    }
}

/// What [`Worker::begin_reading`] replaced, restored by [`Worker::end_reading`].
pub(crate) struct Reading {
    prev: Option<ConnHandle>,
    replies: Vec<Bytes>,
}

const IDLE_TICK_MIN: Duration = Duration::from_millis(10);
const IDLE_TICK_MAX: Duration = Duration::from_secs(1);
