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
use siprox::transaction::{worker_of_branch, Incoming, TxError, TxId};
use tracing::{debug, warn};

use super::{Extra, Relayed, Tm};
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
                let extra = Extra::of(self.tag, None, None, None, Default::default(), Vec::new());
                tm.servers.insert(
                    id,
                    Box::new(Relayed::new(msg, rx, self.tls.clone(), None, (0, 0), extra)),
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

/// How a request route that called `t_newtran()` left its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewtranEnd {
    /// `t_relay()` takes the transaction.
    Relayed,
    /// A stateless reply, `forward()` or `drop`.
    Stateless,
    /// Nothing was sent for it.
    Nothing,
}

impl Worker {
    /// The end of a request route that called `t_newtran()`: its `t_reply()`s are sent
    /// through the request's server transaction. A transaction that none of them answered
    /// finally and that `t_relay()` does not take is not left to its guard timer:
    /// - the route answered, forwarded or dropped the request statelessly: the
    ///   transaction is released at once, without a response (Kamailio's `t_unref()` does
    ///   the same: "script writer didn't release transaction"), so nothing answers twice;
    /// - the route did nothing with it: the caller gets 500 "Server Internal Error (script
    ///   did not reply)" through the transaction at once (instead of retransmitting into
    ///   it until its Timer B/F), which then ends like any answered one (Timer H/J).
    pub(crate) fn tm_newtran_end(
        self: &Rc<Self>,
        msg: &Message,
        replies: Vec<(u16, Bytes)>,
        end: NewtranEnd,
    ) {
        let mut tm = self.tm.tm.borrow_mut();
        let Some(id) = tm.table.match_request(msg) else {
            return;
        };
        let now = Instant::now();
        let mut answered = false;
        for (status, bytes) in replies {
            if status >= 200 {
                answered = true;
                self.local_final(&mut tm, id, bytes, now);
            } else if let Err(e) = tm.table.respond(id, status, bytes, now) {
                debug!(error = %e, status, "t_reply not sent");
            }
        }
        // A final response already sent (a retransmission that raced its first copy found
        // the transaction answered) needs nothing more either.
        let open = tm.table.last_status(id).is_some_and(|s| s < 200);
        if !answered && open {
            match end {
                NewtranEnd::Relayed => {}
                NewtranEnd::Stateless => {
                    debug!("t_newtran() and a stateless answer: transaction released");
                    let _ = tm.table.release(id, now);
                }
                NewtranEnd::Nothing => {
                    warn!("t_newtran() but the route sent no reply: 500");
                    self.local_reply(
                        &mut tm,
                        id,
                        500,
                        "Server Internal Error (script did not reply)",
                        now,
                    );
                }
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
        let Some(name) = r.reply_route() else {
            return true;
        };
        let Some(msg) = r.request() else {
            return true;
        };
        let snap = self.shared.snapshot.load();
        let Some((script, _)) = snap.scripts.for_request(r.tls.as_deref(), &msg) else {
            return true;
        };
        let env = super::script::bare_env(&self.shared);
        // `$si`/`$sp` name the response's sender; the TLS facts (`@tls.peer.*`: the next
        // hop's certificate on a connection siprox opened) are its connection's, read from
        // the connection table (a response handed over from another worker has none with it).
        let from = self.tm.reply_from.get().unwrap_or(r.inbound);
        let tls = from
            .conn
            .and_then(|c| self.shared.table.get(c))
            .and_then(|h| h.tls_facts());
        let kept = host::run_reply_named(
            script,
            name,
            &snap.proxy,
            &env,
            resp,
            &from,
            tls.as_deref(),
            r.flags,
            r.ctx.branch_of(branch),
            r.extra.as_ref().map_or(&[][..], |e| &e.avps[..]),
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
