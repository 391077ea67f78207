//! The transaction functions a route script calls beyond `t_relay()`, on the worker's
//! table (`tm`): `t_check_trans()` and `t_newtran()` during a request route (through
//! [`Hooks`], the core's `Transactions` seam), `t_reply()` after `t_newtran()`, the
//! per-transaction `onreply_route[NAME]` armed by `t_on_reply()`, a next hop that could not
//! be reached reported to its branch (a transport error, not a second answer), and the
//! live-transaction gauge. A child of `tm` so that it sees the table; must never block the
//! worker nor hold the table across an `.await` or a script run that could reach it again.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use siprox::proxy::Inbound;
use siprox::script::host::{self, Transactions, TxCheck};
use siprox::sip::Message;
use siprox::tls::TlsFacts;
use siprox::transaction::{worker_of_branch, Incoming, ResponseContext, TxError, TxId};
use tracing::{debug, warn};

use super::{Relayed, Tm};
use crate::state::inc;
use crate::worker::Worker;

/// The worker's table as one request route sees it.
pub(crate) struct Hooks<'a> {
    pub(crate) worker: &'a Rc<Worker>,
    pub(crate) tls: Option<Arc<TlsFacts>>,
    pub(crate) tag: Option<&'a str>,
}

impl Transactions for Hooks<'_> {
    fn check(&self, msg: &Message) -> TxCheck {
        let Ok(mut tm) = self.worker.tm.tm.try_borrow_mut() else {
            return TxCheck::None;
        };
        if tm.table.is_empty() {
            return TxCheck::None;
        }
        match msg.method() {
            Some("CANCEL") => match tm.table.match_cancel(msg) {
                Some(_) => TxCheck::Exists,
                None => TxCheck::None,
            },
            Some("ACK") => match tm.table.match_request(msg) {
                Some(_) => TxCheck::Exists,
                None => TxCheck::None,
            },
            _ => {
                if tm.table.match_request(msg).is_none() {
                    return TxCheck::None;
                }
                let now = Instant::now();
                match tm.table.on_request(msg, now) {
                    Incoming::Retransmission(_) | Incoming::AckAbsorbed(_) => {
                        self.worker.pump(&mut tm, now);
                        TxCheck::Absorbed
                    }
                    Incoming::New => TxCheck::Exists,
                }
            }
        }
    }

    fn create(&self, msg: &Message, rx: &Inbound) -> bool {
        let Ok(mut tm) = self.worker.tm.tm.try_borrow_mut() else {
            return false;
        };
        let now = Instant::now();
        let shared = &self.worker.shared;
        match tm.table.insert_server(msg, rx, now) {
            Ok(id) => {
                if !shared.tm_used.load(Ordering::Relaxed) {
                    shared.tm_used.store(true, Ordering::Relaxed);
                }
                tm.servers.insert(
                    id,
                    Relayed {
                        ctx: ResponseContext::new(),
                        msg: Some(msg.clone()),
                        invite: msg.method() == Some("INVITE"),
                        inbound: *rx,
                        tls: self.tls.clone(),
                        tag: self.tag.map(str::to_owned),
                        failure_route: None,
                        fr: None,
                        reply_route: None,
                        branch_route: None,
                        next: Default::default(),
                        flags: (0, 0),
                        next_idx: 0,
                        starting: 0,
                    },
                );
                self.worker.pump(&mut tm, now);
                true
            }
            Err(TxError::Full { .. }) => {
                inc(&shared.stats.transactions_refused);
                debug!("transaction limit reached: t_newtran() refused");
                false
            }
            Err(e) => {
                debug!(error = %e, "t_newtran(): no transaction");
                false
            }
        }
    }
}

impl Worker {
    /// The `t_reply()`s a request route made after `t_newtran()`: sent through the
    /// request's server transaction.
    pub(crate) fn tm_newtran_replies(self: &Rc<Self>, msg: &Message, replies: Vec<(u16, Bytes)>) {
        if replies.is_empty() {
            return;
        }
        let mut tm = self.tm.tm.borrow_mut();
        let Some(id) = tm.table.match_request(msg) else {
            return;
        };
        let now = Instant::now();
        for (status, bytes) in replies {
            if status >= 200 {
                self.local_final(&mut tm, id, bytes, now);
            } else if let Err(e) = tm.table.respond(id, status, bytes, now) {
                debug!(error = %e, status, "t_reply not sent");
            }
        }
        self.pump(&mut tm, now);
    }

    /// `t_relay()` after `t_newtran()` in the same run: the transaction `t_newtran()` made,
    /// if it has no branch yet and may still get one.
    pub(super) fn tm_adopt(&self, tm: &Tm, msg: &Message) -> Option<TxId> {
        let id = tm.table.match_request(msg)?;
        let r = tm.servers.get(&id)?;
        (r.ctx.branch_count() == 0 && r.ctx.may_fork()).then_some(id)
    }

    /// `onreply_route[NAME]` armed by `t_on_reply("NAME")` for server transaction `id`, on
    /// a response of one of its branches. `false`: the route dropped a provisional
    /// response (a final one cannot be dropped: the transaction needs it).
    pub(super) fn tm_reply_route(
        self: &Rc<Self>,
        tm: &Tm,
        id: TxId,
        branch: TxId,
        resp: &Message,
    ) -> bool {
        let Some(r) = tm.servers.get(&id) else {
            return true;
        };
        let Some(name) = r.reply_route.as_deref() else {
            return true;
        };
        let Some(msg) = &r.msg else {
            return true;
        };
        let snap = self.shared.snapshot.load();
        let Some((script, _)) = snap.scripts.for_request(r.tls.as_deref(), msg) else {
            return true;
        };
        let env = super::script::bare_env(&self.shared);
        // `$si`/`$sp` name the response's sender; the TLS facts of its connection are not
        // carried this far (a handoff has none), so TLS selects are empty here.
        let from = self.tm.reply_from.get().unwrap_or(r.inbound);
        let kept = host::run_reply_named(
            script,
            name,
            &snap.proxy,
            &env,
            resp,
            &from,
            None,
            r.flags,
            r.ctx.branch_of(branch),
        );
        match kept {
            None => {
                debug!(route = %name, "t_on_reply names no onreply_route");
                true
            }
            Some(true) => true,
            Some(false) if resp.status().is_some_and(|s| s < 200) => {
                inc(&self.shared.stats.dropped);
                false
            }
            Some(false) => {
                warn!(route = %name, status = ?resp.status(), "onreply_route cannot drop a final response: relayed");
                true
            }
        }
    }

    /// A request a TCP/TLS connection never sent (connect or handshake failed): when it is
    /// a branch of a transaction, that branch fails with a transport error (its
    /// failure_route runs with 503) instead of getting a made-up response. `true`: a
    /// transaction took it (here, or on the worker that owns it).
    pub(crate) fn tm_unsent(self: &Rc<Self>, req: &Message, inbound: &Inbound) -> bool {
        if !self.shared.tm_used.load(Ordering::Relaxed) {
            return false;
        }
        let owner = req
            .top_via()
            .ok()
            .and_then(|v| v.branch().and_then(worker_of_branch))
            .map(usize::from);
        match owner {
            Some(o) if o == self.index => self.tm_unsent_here(req),
            Some(o) => {
                let peer = self.shared.tm_peers.load().get(o).cloned().flatten();
                peer.is_some_and(|p| p.send((req.clone(), *inbound)).is_ok())
            }
            None => false,
        }
    }

    /// [`Worker::tm_unsent`] on the worker that owns the branch.
    pub(super) fn tm_unsent_here(self: &Rc<Self>, req: &Message) -> bool {
        let mut tm = self.tm.tm.borrow_mut();
        // A request matches its client transaction as its responses do (the top Via).
        let Some(cid) = tm.table.match_response(req) else {
            return false;
        };
        let now = Instant::now();
        if tm.table.on_transport_error(cid, now).is_err() {
            return false;
        }
        debug!("next hop unreachable: the branch fails with a transport error");
        self.pump(&mut tm, now);
        true
    }

    /// Publishes this worker's count of live transactions into the process's gauge.
    pub(super) fn tm_count(&self, tm: &Tm) {
        let n = tm.table.len() as u64;
        let before = self.tm.counted.replace(n);
        let g = &self.shared.stats.transactions;
        if n > before {
            g.fetch_add(n - before, Ordering::Relaxed);
        } else if n < before {
            g.fetch_sub(before - n, Ordering::Relaxed);
        }
    }
}
