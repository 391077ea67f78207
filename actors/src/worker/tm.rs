//! The worker's side of the core's transaction layer (`siprox::transaction`): one `Table`
//! per worker, owned by it (no lock), fed with the requests and responses the worker reads,
//! its timers driven by one sleep per worker at `Table::next_deadline`, and its actions and
//! response contexts carried out through the worker's existing send paths. Only a script's
//! `t_relay()` creates transactions; `forward()` never comes here. Must never block the
//! worker thread nor hold the table across an `.await`.
//!
//! A response can arrive on another worker than the one that owns its transaction (UDP
//! sockets are SO_REUSEPORT copies, spread by source address; a UAS answers from an address
//! other than the caller's): the branch names its worker ([`worker_of_branch`]), and the
//! response is handed to that worker's channel ([`Handoff`]).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use siprox::proxy::{Action, Destination, ForwardOpts, Inbound, Target, Transport};
use siprox::script::host::{self, Relay};
use siprox::sip::{Limits, Message, Validated};
use siprox::tls::TlsFacts;
use siprox::transaction::{
    worker_of_branch, Action as TxAction, ClientOpts, ContextAction, Final, Incoming,
    ResponseContext, Table, TableConfig, Timers, TxError, TxId,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;
use tracing::debug;

use super::{script, Worker};
use crate::state::{inc, Shared};

#[path = "tm_script.rs"]
pub(crate) mod tm_script;
pub(crate) use tm_script::NewtranEnd;

/// A response read by one worker for a transaction of another.
pub(crate) type Handoff = (Message, Inbound);

/// One relayed request: its server transaction's response context and what a failure_route
/// needs to run again later. Held boxed in [`Tm::servers`] (a map's spare room then costs
/// a pointer per slot, not a whole entry), and kept small: a ringing call holds one for as
/// long as it rings.
pub(super) struct Relayed {
    ctx: ResponseContext,
    /// The request as received, while something may still be built or run from it (a
    /// branch, a local reply, a failure_route, a branch_route, an onreply_route's script
    /// choice): its bytes only, parsed again when needed ([`Relayed::request`]; the parsed
    /// form's header index would cost every ringing call some 400 bytes more). Freed with
    /// the other per-request parts once the context is done ([`settle`]).
    req: Option<Bytes>,
    /// The limits it was parsed with, to parse it again the same way.
    limits: Limits,
    pub(super) invite: bool,
    pub(super) inbound: Inbound,
    pub(super) tls: Option<Arc<TlsFacts>>,
    fr: Option<(u32, u32)>,
    /// `$T_branch_idx` of the next branch started.
    pub(super) next_idx: usize,
    /// The message and branch flags when `t_relay()` ran, for failure_route and
    /// onreply_route[NAME].
    pub(super) flags: (u64, u64),
    /// Branches of the batch being started that are still to come: while some are, a
    /// branch that cannot be forwarded does not answer the caller.
    pub(super) starting: usize,
    /// What only some scripts arm; `None` for a plain `t_relay()`.
    pub(super) extra: Option<Box<Extra>>,
}

/// The parts of a [`Relayed`] that a plain `t_relay()` leaves empty.
#[derive(Default)]
pub(super) struct Extra {
    /// The script's tag (a TLS domain's own script).
    pub(super) tag: Option<String>,
    /// `t_on_failure("NAME")`.
    pub(super) failure_route: Option<String>,
    /// `t_on_reply("NAME")`: run for each response of the branches.
    pub(super) reply_route: Option<String>,
    /// `t_on_branch`: run for every branch before it is sent (`fork.rs`).
    pub(super) branch_route: Option<String>,
    /// `lookup()`'s lower q groups, for `t_next_contacts()`.
    pub(super) next: VecDeque<Vec<ForwardOpts>>,
    /// The `$avp`s when `t_relay()` ran, for failure_route, branch_route and
    /// onreply_route[NAME].
    pub(super) avps: siprox::script::Avps,
}

impl Extra {
    /// `None` when every part is empty.
    pub(super) fn of(
        tag: Option<&str>,
        failure_route: Option<String>,
        reply_route: Option<String>,
        branch_route: Option<String>,
        next: VecDeque<Vec<ForwardOpts>>,
        avps: siprox::script::Avps,
    ) -> Option<Box<Extra>> {
        let empty = tag.is_none()
            && failure_route.is_none()
            && reply_route.is_none()
            && branch_route.is_none()
            && next.is_empty()
            && avps.is_empty();
        (!empty).then(|| {
            Box::new(Extra {
                tag: tag.map(str::to_owned),
                failure_route,
                reply_route,
                branch_route,
                next,
                avps,
            })
        })
    }
}

impl Relayed {
    pub(super) fn new(
        msg: &Message,
        inbound: &Inbound,
        tls: Option<Arc<TlsFacts>>,
        fr: Option<(u32, u32)>,
        flags: (u64, u64),
        extra: Option<Box<Extra>>,
    ) -> Relayed {
        Relayed {
            ctx: ResponseContext::new(),
            req: Some(msg.as_bytes().clone()),
            limits: *msg.limits(),
            invite: msg.method() == Some("INVITE"),
            inbound: *inbound,
            tls,
            fr,
            next_idx: 0,
            flags,
            starting: 0,
            extra,
        }
    }

    /// The request, parsed again from its bytes (`None` once freed).
    pub(super) fn request(&self) -> Option<Message> {
        Message::parse_datagram(self.req.clone()?, &self.limits).ok()
    }

    pub(super) fn tag(&self) -> Option<&str> {
        self.extra.as_ref()?.tag.as_deref()
    }

    pub(super) fn branch_route(&self) -> Option<&str> {
        self.extra.as_ref()?.branch_route.as_deref()
    }

    pub(super) fn reply_route(&self) -> Option<&str> {
        self.extra.as_ref()?.reply_route.as_deref()
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Sets one part of [`Extra`]: a `None` allocates nothing.
    fn set<T>(&mut self, v: Option<T>, part: impl FnOnce(&mut Extra) -> &mut Option<T>) {
        if v.is_none() && self.extra.is_none() {
            return;
        }
        *part(self.extra_mut()) = v;
    }
}

/// A worker's transactions.
pub(crate) struct Tm {
    table: Table,
    /// Server transaction -> its relayed request.
    pub(super) servers: HashMap<TxId, Box<Relayed>>,
    /// Client transaction (a branch) -> its server transaction.
    branches: HashMap<TxId, TxId>,
    /// A branch over UDP -> the listener `$fs` made it leave from.
    send_from: HashMap<TxId, SocketAddr>,
}

/// The per-worker transaction state and its timer's wake-up.
pub(crate) struct TmState {
    tm: RefCell<Tm>,
    wake: Notify,
    /// What the timer task sleeps until (`None`: no deadline, it waits for a wake-up).
    sleeping_until: Cell<Option<Instant>>,
    /// The table's size last added to the process's gauge (`tm_script::tm_count`).
    counted: Cell<u64>,
    /// Where the response being run against the table came from (`$si` in a
    /// transaction's onreply_route).
    reply_from: Cell<Option<Inbound>>,
}

impl TmState {
    pub(crate) fn new(index: usize, shared: &Shared) -> TmState {
        let cfg = &shared.snapshot.load().config.transactions;
        let timers = Timers {
            t1: cfg.t1.get(),
            t2: cfg.t2.get(),
            t4: cfg.t4.get(),
            ..Timers::default()
        };
        let table = TableConfig {
            timers,
            max_transactions: cfg.max_transactions,
            worker: u16::try_from(index).unwrap_or(u16::MAX),
            server_guard: timers.c.saturating_mul(2) + timers.t1x64(),
            ..TableConfig::default()
        };
        TmState {
            tm: RefCell::new(Tm {
                table: Table::new(table, branch_seed()),
                servers: HashMap::new(),
                branches: HashMap::new(),
                send_from: HashMap::new(),
            }),
            wake: Notify::new(),
            sleeping_until: Cell::new(None),
            counted: Cell::new(0),
            reply_from: Cell::new(None),
        }
    }
}

/// A seed for the table's branches that differs per process and worker.
fn branch_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Registers this worker's handoff channel in `shared` and returns its receiving end.
pub(crate) fn handoff_channel(index: usize, shared: &Shared) -> UnboundedReceiver<Handoff> {
    let (tx, rx) = unbounded_channel();
    shared.tm_peers.rcu(|peers| {
        let mut peers = Vec::clone(peers);
        if peers.len() <= index {
            peers.resize(index + 1, None);
        }
        peers[index] = Some(tx.clone());
        peers
    });
    rx
}

/// Responses other workers handed over, run against this worker's table.
pub(crate) async fn handoffs(worker: Rc<Worker>, mut rx: UnboundedReceiver<Handoff>) {
    while let Some((msg, inbound)) = rx.recv().await {
        // A branch's request that its connection never sent (`tm_script::tm_unsent`).
        if msg.is_request() {
            worker.tm_unsent_here(&msg);
            continue;
        }
        worker.tm.reply_from.set(Some(inbound));
        if !worker.tm_response(&msg) {
            let action = worker
                .shared
                .snapshot
                .load()
                .proxy
                .on_response(&msg, &inbound);
            worker.execute(action, &msg, &inbound);
        }
    }
}

/// The worker's one transaction timer: sleeps until the table's next deadline (or a
/// wake-up when an earlier one is armed), fires what is due, carries out the actions.
pub(crate) async fn timers(worker: Rc<Worker>) {
    loop {
        let next = worker.tm.tm.borrow().table.next_deadline();
        worker.tm.sleeping_until.set(next);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = worker.tm.wake.notified() => {}
                }
            }
            None => worker.tm.wake.notified().await,
        }
        let now = Instant::now();
        let mut tm = worker.tm.tm.borrow_mut();
        tm.table.on_timer(now);
        worker.pump(&mut tm, now);
    }
}

impl Worker {
    /// A request before its script: a retransmission of a relayed request is absorbed
    /// (the last response re-sent), a CANCEL of a relayed INVITE is answered and cancels
    /// its branches. `true`: handled here.
    pub(crate) fn tm_request(self: &Rc<Self>, msg: &Message, inbound: &Inbound) -> bool {
        let mut tm = self.tm.tm.borrow_mut();
        if tm.table.is_empty() {
            return false;
        }
        let now = Instant::now();
        match tm.table.on_request(msg, now) {
            Incoming::New => {}
            Incoming::Retransmission(_) | Incoming::AckAbsorbed(_) => {
                self.pump(&mut tm, now);
                return true;
            }
        }
        if msg.method() != Some("CANCEL") {
            return false;
        }
        let Some(invite) = tm.table.match_cancel(msg) else {
            return false;
        };
        // §16.10: the CANCEL gets its own transaction and a 200 at once; the INVITE's
        // branches are cancelled and the caller gets 487 once they end.
        let snap = self.shared.snapshot.load();
        if let Ok(id) = tm.table.insert_server(msg, inbound, now) {
            if let Action::Send { bytes, .. } = snap.proxy.reply(msg, inbound, 200, "OK", "") {
                let _ = tm.table.respond(id, 200, bytes, now);
            }
        }
        if let Some(r) = tm.servers.get_mut(&invite) {
            r.ctx.cancel();
        }
        self.context(&mut tm, invite, now);
        self.pump(&mut tm, now);
        true
    }

    /// A response: `true` when a transaction of this worker took it (or it was handed to
    /// the worker that owns it).
    pub(crate) fn tm_response(self: &Rc<Self>, msg: &Message) -> bool {
        let owner = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch().and_then(worker_of_branch));
        match owner {
            Some(o) if usize::from(o) == self.index => self.tm_own_response(msg),
            _ => false,
        }
    }

    fn tm_own_response(self: &Rc<Self>, msg: &Message) -> bool {
        let mut tm = self.tm.tm.borrow_mut();
        let now = Instant::now();
        if tm.table.on_response(msg, now).is_none() {
            return false;
        }
        self.pump(&mut tm, now);
        true
    }

    /// A response to a transaction: run against this worker's table, or handed to the
    /// worker that owns it. `true` when taken. The top Via is read once, and not at all
    /// until some worker has created a transaction (`Shared::tm_used`).
    /// `top`: the response's top Via when the caller already parsed it.
    pub(crate) fn tm_route_response(
        self: &Rc<Self>,
        msg: &Message,
        inbound: &Inbound,
        top: Option<&siprox::sip::Via<'_>>,
    ) -> bool {
        if !self.shared.tm_used.load(Ordering::Relaxed) {
            return false;
        }
        let owner = match top {
            Some(v) => v.branch().and_then(worker_of_branch),
            None => msg
                .top_via()
                .ok()
                .and_then(|v| v.branch().and_then(worker_of_branch)),
        };
        let Some(owner) = owner.map(usize::from) else {
            return false;
        };
        if owner == self.index {
            self.tm.reply_from.set(Some(*inbound));
            return self.tm_own_response(msg);
        }
        let peer = self.shared.tm_peers.load().get(owner).cloned().flatten();
        match peer {
            Some(p) => p.send((msg.clone(), *inbound)).is_ok(),
            None => false,
        }
    }

    /// `t_relay()`: the request gets a server transaction (100 Trying for INVITE) and its
    /// first branch. `checked`: what validation parsed of `msg`, which its first branches
    /// reuse.
    pub(crate) fn tm_relay<'m>(
        self: &Rc<Self>,
        msg: &'m Message,
        inbound: &Inbound,
        tls: Option<Arc<TlsFacts>>,
        tag: Option<&str>,
        relay: Relay,
        checked: Option<&Validated<'m>>,
    ) {
        let snap = self.shared.snapshot.load();
        match msg.method() {
            // A 2xx's ACK has no transaction: end to end, statelessly.
            Some("ACK") => {
                let action = snap
                    .proxy
                    .forward_checked(msg, inbound, &relay.opts, checked);
                return self.execute_with(action, msg, inbound, relay.opts);
            }
            // A CANCEL of a relayed INVITE never gets here (`tm_request`).
            Some("CANCEL") => {
                let a = snap
                    .proxy
                    .reply(msg, inbound, 481, "Call/Transaction Does Not Exist", "");
                return self.execute(a, msg, inbound);
            }
            _ => {}
        }
        let now = Instant::now();
        let mut tm = self.tm.tm.borrow_mut();
        let id = match tm.table.insert_server(msg, inbound, now) {
            Ok(id) => {
                if !self.shared.tm_used.load(Ordering::Relaxed) {
                    self.shared.tm_used.store(true, Ordering::Relaxed);
                }
                id
            }
            Err(TxError::Full { retry_after, .. }) => {
                drop(tm);
                inc(&self.shared.stats.transactions_refused);
                debug!(retry_after, "transaction limit reached: 503");
                let a = snap.proxy.reply(
                    msg,
                    inbound,
                    503,
                    "Service Unavailable",
                    &format!("Retry-After: {retry_after}\r\n"),
                );
                return self.execute(a, msg, inbound);
            }
            // t_newtran() made it in this run; else a retransmission that raced its own
            // first copy: already handled.
            Err(TxError::Exists) => match self.tm_adopt(&tm, msg) {
                Some(id) => id,
                None => return,
            },
            Err(e) => {
                drop(tm);
                debug!(error = %e, "no transaction for a relayed request: forwarded statelessly");
                let action = snap
                    .proxy
                    .forward_checked(msg, inbound, &relay.opts, checked);
                return self.execute_with(action, msg, inbound, relay.opts);
            }
        };
        let extra = Extra::of(
            tag,
            relay.failure_route,
            relay.reply_route,
            relay.branch_route,
            relay.next.into(),
            relay.avps,
        );
        tm.servers.insert(
            id,
            Box::new(Relayed::new(
                msg,
                inbound,
                tls,
                relay.fr,
                (relay.flags, relay.bflags),
                extra,
            )),
        );
        let mut list = relay.branches;
        list.insert(0, relay.opts);
        if self.fork(&mut tm, id, msg, list, now, checked) == 0 {
            self.local_reply(
                &mut tm,
                id,
                500,
                "Server Internal Error (no branch left)",
                now,
            );
        }
        self.pump(&mut tm, now);
    }

    /// A new branch of server transaction `id` (whose request is `msg`) toward what
    /// `opts` says. `checked`: `msg`'s validation when the caller has it.
    pub(super) fn branch<'m>(
        self: &Rc<Self>,
        tm: &mut Tm,
        id: TxId,
        msg: &'m Message,
        mut opts: ForwardOpts,
        now: Instant,
        checked: Option<&Validated<'m>>,
    ) {
        let Some(r) = tm.servers.get(&id) else { return };
        let inbound = r.inbound;
        opts.branch = Some(tm.table.new_branch());
        let action = self
            .shared
            .snapshot
            .load()
            .proxy
            .forward_checked(msg, &inbound, &opts, checked);
        self.start_branch(tm, id, action, opts, now);
    }

    fn start_branch(
        self: &Rc<Self>,
        tm: &mut Tm,
        id: TxId,
        action: Action,
        opts: ForwardOpts,
        now: Instant,
    ) {
        match action {
            // The proxy answered instead of forwarding (482, 483, 404...).
            Action::Send { bytes, .. } if bytes.starts_with(b"SIP/2.0 ") => {
                if !self.other_branches(tm, id) {
                    self.local_final(tm, id, bytes, now)
                }
            }
            Action::Send { dest, bytes } => {
                let from = udp_from(&opts, &dest);
                self.client(tm, id, dest, bytes, from, now)
            }
            Action::Drop { reason } => {
                debug!(reason, "relayed request not forwardable");
                if !self.other_branches(tm, id) {
                    self.local_reply(tm, id, 500, "Server Internal Error", now);
                }
            }
            Action::Forward { hop } => {
                // Only names come here: resolve off the hot path, then come back.
                let me = self.clone();
                actix::spawn(async move {
                    let dest = super::dns::resolve(&me, &hop).await;
                    let snap = me.shared.snapshot.load();
                    let mut tm = me.tm.tm.borrow_mut();
                    let Some(r) = tm.servers.get(&id) else { return };
                    let Some(msg) = r.request() else { return };
                    let inbound = r.inbound;
                    let action = match dest {
                        Some(dest) => snap
                            .proxy
                            .forward_request_with(&msg, &inbound, &dest, &opts),
                        None => {
                            inc(&me.shared.stats.dns_failures);
                            snap.proxy.unresolvable(&msg, &inbound)
                        }
                    };
                    drop(snap);
                    let now = Instant::now();
                    match action {
                        Action::Forward { .. } if !me.other_branches(&tm, id) => {
                            me.local_reply(&mut tm, id, 500, "Server Internal Error", now)
                        }
                        Action::Forward { .. } => {}
                        a => me.start_branch(&mut tm, id, a, opts, now),
                    }
                    me.pump(&mut tm, now);
                });
            }
        }
    }

    /// Whether another branch of `id` rings or is still to be started: then a branch that
    /// cannot be forwarded is only left out (a single branch answers the caller instead).
    fn other_branches(&self, tm: &Tm, id: TxId) -> bool {
        let other = tm
            .servers
            .get(&id)
            .is_some_and(|r| r.starting > 0 || r.ctx.has_pending());
        if other {
            debug!("a branch could not be forwarded; the other branches go on");
        }
        other
    }

    /// A client transaction for the forwarded request, added to the context.
    fn client(
        self: &Rc<Self>,
        tm: &mut Tm,
        id: TxId,
        dest: Destination,
        bytes: Bytes,
        from: Option<SocketAddr>,
        now: Instant,
    ) {
        let Ok(req) = Message::parse(bytes) else {
            return self.local_reply(tm, id, 500, "Server Internal Error", now);
        };
        let fr = tm.servers.get(&id).and_then(|r| r.fr);
        let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
        let copts = ClientOpts {
            c: fr.and_then(|f| ms(f.0)),
            fr: fr.and_then(|f| ms(f.1)),
        };
        // RFC 5626 §5.3: a branch toward a flow whose connection is gone fails as if the
        // flow had answered 430 Flow Failed (the stateless path answers the same).
        let flow_gone = match dest.target {
            Target::Flow(conn) => !self.shared.table.get(conn).is_some_and(|h| h.is_open()),
            _ => false,
        };
        let gone = flow_gone.then(|| req.clone());
        match tm.table.insert_client(req, dest, copts, now) {
            Ok(cid) => {
                if let Some(r) = tm.servers.get_mut(&id) {
                    if r.ctx.add_branch(cid).is_some() {
                        tm.branches.insert(cid, id);
                        if let Some(a) = from {
                            tm.send_from.insert(cid, a);
                        }
                        if let Some(req) = gone {
                            self.flow_failed(tm, &req, now);
                        }
                        return;
                    }
                }
                // Nobody waits for this branch any more: cancel it.
                let _ = tm.table.cancel_branch(cid, now);
            }
            Err(TxError::Full { .. }) => {
                inc(&self.shared.stats.transactions_refused);
                self.local_reply(tm, id, 503, "Service Unavailable", now)
            }
            Err(e) => {
                debug!(error = %e, "no client transaction for a branch");
                self.local_reply(tm, id, 500, "Server Internal Error", now)
            }
        }
    }

    /// The branch that sent `req` (as forwarded, our Via on top) over a flow that is gone
    /// gets a local 430 Flow Failed as its response.
    fn flow_failed(self: &Rc<Self>, tm: &mut Tm, req: &Message, now: Instant) {
        let inbound = Inbound {
            transport: Transport::Tls,
            source: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            local: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            conn: None,
        };
        let action = self
            .shared
            .snapshot
            .load()
            .proxy
            .reply(req, &inbound, 430, "Flow Failed", "");
        let Action::Send { bytes, .. } = action else {
            return;
        };
        match Message::parse(bytes) {
            Ok(resp) => {
                debug!("branch toward a flow that is gone: 430");
                let _ = tm.table.on_response(&resp, now);
            }
            Err(e) => debug!(error = %e, "locally made 430 did not parse"),
        }
    }

    fn local_reply(self: &Rc<Self>, tm: &mut Tm, id: TxId, code: u16, reason: &str, now: Instant) {
        let Some(r) = tm.servers.get(&id) else { return };
        let Some(msg) = r.request() else { return };
        let snap = self.shared.snapshot.load();
        if let Action::Send { bytes, .. } = snap.proxy.reply(&msg, &r.inbound, code, reason, "") {
            self.local_final(tm, id, bytes, now);
        }
    }

    /// A final response siprox made (not a branch's): the context is done, the server
    /// transaction sends it.
    fn local_final(self: &Rc<Self>, tm: &mut Tm, id: TxId, bytes: Bytes, now: Instant) {
        let status = std::str::from_utf8(bytes.get(8..11).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        if let Some(r) = tm.servers.get_mut(&id) {
            let _ = r.ctx.finish();
        }
        let _ = tm.table.respond(id, status, bytes, now);
        settle(tm, id);
    }

    /// Carries out the table's actions until none is left, then makes sure the timer task
    /// will wake for the earliest deadline.
    fn pump(self: &Rc<Self>, tm: &mut Tm, now: Instant) {
        while let Some(a) = tm.table.poll_action() {
            match a {
                TxAction::Send { tx, dest, bytes } => {
                    // A response over UDP leaves from the socket its request arrived on.
                    let from = tm
                        .servers
                        .get(&tx)
                        .filter(|r| r.inbound.transport == Transport::Udp)
                        .map(|r| r.inbound.local)
                        // A branch: from the socket `$fs` forced, if any (no lookup
                        // when no script forced one).
                        .or_else(|| {
                            if tm.send_from.is_empty() {
                                None
                            } else {
                                tm.send_from.get(&tx).copied()
                            }
                        });
                    self.send(dest, bytes, from)
                }
                TxAction::Response { tx, msg } => {
                    let Some(&id) = tm.branches.get(&tx) else {
                        continue;
                    };
                    if !self.tm_reply_route(tm, id, tx, &msg) {
                        continue;
                    }
                    if let Some(r) = tm.servers.get_mut(&id) {
                        r.ctx.on_response(tx, &msg);
                    }
                    self.context(tm, id, now);
                }
                TxAction::Timeout { tx, timer } => {
                    let Some(&id) = tm.branches.get(&tx) else {
                        continue;
                    };
                    if let Some(r) = tm.servers.get_mut(&id) {
                        r.ctx.on_timeout(tx, timer);
                    }
                    self.context(tm, id, now);
                }
                TxAction::TransportError { tx } => {
                    let Some(&id) = tm.branches.get(&tx) else {
                        continue;
                    };
                    if let Some(r) = tm.servers.get_mut(&id) {
                        r.ctx.on_transport_error(tx);
                    }
                    self.context(tm, id, now);
                }
                TxAction::Terminated { tx } => {
                    tm.branches.remove(&tx);
                    if !tm.send_from.is_empty() {
                        tm.send_from.remove(&tx);
                    }
                    tm.servers.remove(&tx);
                }
            }
        }
        self.tm_count(tm);
        if let Some(next) = tm.table.next_deadline() {
            if self.tm.sleeping_until.get().is_none_or(|s| next < s) {
                self.tm.sleeping_until.set(Some(next));
                self.tm.wake.notify_one();
            }
        }
    }

    /// Carries out what the response context of server transaction `id` decided.
    fn context(self: &Rc<Self>, tm: &mut Tm, id: TxId, now: Instant) {
        loop {
            let Some(r) = tm.servers.get_mut(&id) else {
                return;
            };
            let Some(a) = r.ctx.poll_action() else {
                return settle(tm, id);
            };
            match a {
                ContextAction::Forward(resp) => self.upstream(tm, id, &resp, now),
                ContextAction::Cancel(cid) => {
                    let _ = tm.table.cancel_branch(cid, now);
                }
                ContextAction::AllDone { status, may_fork } => {
                    if may_fork && self.failure_route(tm, id, status, now) {
                        continue;
                    }
                    let Some(r) = tm.servers.get_mut(&id) else {
                        return;
                    };
                    match r.ctx.finish() {
                        Some(Final::Forward(resp)) => self.upstream(tm, id, &resp, now),
                        Some(Final::Local { status, reason }) => {
                            self.local_reply(tm, id, status, reason, now)
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Runs the failure_route armed for server transaction `id`, if any. `true`: it added
    /// a branch or sent the final response itself.
    fn failure_route(self: &Rc<Self>, tm: &mut Tm, id: TxId, status: u16, now: Instant) -> bool {
        let Some(r) = tm.servers.get_mut(&id) else {
            return false;
        };
        // Armed once: the failure_route must call t_on_failure again for the next failure.
        let Some(name) = r.extra.as_mut().and_then(|e| e.failure_route.take()) else {
            return false;
        };
        let Some(msg) = r.request() else {
            return false;
        };
        let (inbound, tls) = (r.inbound, r.tls.clone());
        let tag = r.tag().map(str::to_owned);
        let end = r.ctx.failed_branch().unwrap_or_default();
        let failed = host::Failed {
            status,
            branch_idx: r.ctx.best_branch(),
            has_next: r.extra.as_ref().is_some_and(|e| !e.next.is_empty()),
            branch: siprox::script::BranchEnd {
                timed_out: end.timed_out,
                replied: end.replied,
            },
            flags: r.flags.0,
            bflags: r.flags.1,
            avps: r.extra.as_ref().map(|e| e.avps.clone()).unwrap_or_default(),
        };
        let snap = self.shared.snapshot.load();
        let Some((script, _)) = snap.scripts.for_request(tls.as_deref(), &msg) else {
            return false;
        };
        let run = script::with_env(&self.shared, &snap, |env| {
            host::run_failure(
                script,
                &name,
                tag.as_deref(),
                &snap.proxy,
                env,
                &msg,
                &inbound,
                tls.as_deref(),
                failed,
            )
        });
        let Some(run) = run else {
            debug!(route = %name, "t_on_failure names no failure_route");
            return false;
        };
        if run.outcome.is_error() {
            inc(&self.shared.stats.script_errors);
        }
        drop(snap);
        if let Some(relay) = run.relay {
            let Some(r) = tm.servers.get_mut(&id) else {
                return false;
            };
            r.set(relay.failure_route, |e| &mut e.failure_route);
            r.fr = relay.fr.or(r.fr);
            r.flags = (relay.flags, relay.bflags);
            if !relay.avps.is_empty() || r.extra.as_ref().is_some_and(|e| !e.avps.is_empty()) {
                r.extra_mut().avps = relay.avps;
            }
            if relay.reply_route.is_some() {
                r.set(relay.reply_route, |e| &mut e.reply_route);
            }
            if relay.branch_route.is_some() {
                r.set(relay.branch_route, |e| &mut e.branch_route);
            }
            // A lookup() in failure_route brings its own lower q groups.
            if !relay.next.is_empty() {
                r.extra_mut().next = relay.next.into();
            }
            let mut list = relay.branches;
            list.insert(0, relay.opts);
            if self.fork(tm, id, &msg, list, now, None) > 0 {
                return true;
            }
        } else if run.next_contacts {
            let Some(r) = tm.servers.get_mut(&id) else {
                return false;
            };
            r.set(run.failure_route, |e| &mut e.failure_route);
            if run.branch_route.is_some() {
                r.set(run.branch_route, |e| &mut e.branch_route);
            }
            if let Some(group) = r.extra.as_mut().and_then(|e| e.next.pop_front()) {
                if self.fork(tm, id, &msg, group, now, None) > 0 {
                    return true;
                }
            }
        }
        if let Some((code, reason)) = run.reply {
            self.local_reply(tm, id, code, &reason, now);
            return true;
        }
        false
    }

    /// A branch's response for the caller: siprox's Via removed, sent through the server
    /// transaction; a 2xx after a final went up is forwarded along its Via (end to end).
    fn upstream(self: &Rc<Self>, tm: &mut Tm, id: TxId, resp: &Message, now: Instant) {
        let Some(r) = tm.servers.get(&id) else { return };
        let (inbound, invite) = (r.inbound, r.invite);
        // A client transaction matched its branch: the top Via is siprox's whatever its
        // sent-by names (`true`).
        let action = self
            .shared
            .snapshot
            .load()
            .proxy
            .on_response_from(resp, &inbound, true);
        let (dest, bytes) = match action {
            Action::Send { dest, bytes } => (dest, bytes),
            // Never in silence: counted and logged like a stateless response that cannot
            // go back (the inbound named is the caller's, where it would have gone).
            Action::Drop { reason } => return self.unmatched_response(resp, &inbound, reason),
            _ => return,
        };
        let status = resp.status().unwrap_or(500);
        match tm.table.respond(id, status, bytes.clone(), now) {
            Ok(()) => {}
            // §16.7 step 5: after the final, only an INVITE's 2xx still goes up (a forked
            // MESSAGE answered 200 by two devices gives the caller one 200).
            Err(_) if invite && (200..300).contains(&status) => self.send(dest, bytes, None),
            Err(e) => debug!(error = %e, status, "response not sent upstream"),
        }
    }
}

/// Once server transaction `id`'s context is done (its final response, or a 2xx with no
/// branch left pending, went upstream), only the context (every further 2xx of a branch
/// still goes upstream), the inbound facts (where and from which socket) and an armed
/// onreply_route are needed: the request and the other per-request parts are freed, so a
/// finished call's RFC 6026 Accepted state keeps little. The request stays while an
/// onreply_route is armed: it chooses the script that route runs from.
fn settle(tm: &mut Tm, id: TxId) {
    let Some(r) = tm.servers.get_mut(&id) else {
        return;
    };
    if !r.ctx.is_done() || r.req.is_none() {
        return;
    }
    r.fr = None;
    let reply_route = r.extra.take().and_then(|e| e.reply_route);
    if reply_route.is_none() {
        r.req = None;
        r.tls = None;
    }
    r.set(reply_route, |e| &mut e.reply_route);
}

/// The UDP listener a forward leaves from when `$fs` forced one of the destination's
/// transport (`None`: the usual choice).
pub(super) fn udp_from(opts: &ForwardOpts, dest: &Destination) -> Option<SocketAddr> {
    match opts.send_socket {
        Some((Transport::Udp, a)) if dest.transport == Transport::Udp => Some(a),
        _ => None,
    }
}
