//! Forking for the worker's transactions (`tm.rs`): the branches of one `t_relay()` (the
//! Request-URI's, `lookup()`'s other contacts of the same q, `append_branch()`), each run
//! through the armed `branch_route` before it is sent, and the lower q groups that
//! `t_next_contacts()` relays from failure_route. Which responses go upstream and which
//! branches are cancelled is the core's `ResponseContext`; this only starts branches.

use std::rc::Rc;
use std::time::Instant;

use siprox::proxy::ForwardOpts;
use siprox::script::host;
use siprox::sip::{Message, Validated};
use siprox::transaction::TxId;
use tracing::debug;

use super::tm::Tm;
use super::{script, Worker};

impl Worker {
    /// Starts one branch of server transaction `id` per entry of `list`, in order, each
    /// first through the armed branch_route (which may drop it). Returns how many were
    /// started (a branch whose forward fails at once counts: it answered the caller, or
    /// another branch of the batch rings).
    /// `checked`: what validation parsed of `msg`, when the caller has it (`t_relay()`).
    pub(super) fn fork<'m>(
        self: &Rc<Self>,
        tm: &mut Tm,
        id: TxId,
        msg: &'m Message,
        list: Vec<ForwardOpts>,
        now: Instant,
        checked: Option<&Validated<'m>>,
    ) -> usize {
        let Some(r) = tm.servers.get_mut(&id) else {
            return 0;
        };
        r.starting = list.len();
        let route = r.branch_route().map(str::to_owned);
        let mut started = 0;
        for mut opts in list {
            let Some(r) = tm.servers.get_mut(&id) else {
                break;
            };
            r.starting = r.starting.saturating_sub(1);
            let idx = r.next_idx;
            if let Some(name) = &route {
                if !self.branch_route(tm, id, msg, name, idx, &mut opts) {
                    debug!(branch = idx, "branch dropped by branch_route");
                    continue;
                }
            }
            if let Some(r) = tm.servers.get_mut(&id) {
                r.next_idx += 1;
            }
            started += 1;
            self.branch(tm, id, msg, opts, now, checked);
        }
        started
    }

    /// Runs `branch_route[name]` for branch `idx`. `false`: the route dropped the branch.
    fn branch_route(
        self: &Rc<Self>,
        tm: &Tm,
        id: TxId,
        msg: &Message,
        name: &str,
        idx: usize,
        opts: &mut ForwardOpts,
    ) -> bool {
        let Some(r) = tm.servers.get(&id) else {
            return false;
        };
        let snap = self.shared.snapshot.load();
        let Some((script, _)) = snap.scripts.for_request(r.tls.as_deref(), msg) else {
            return true;
        };
        let keep = script::with_env(&self.shared, &snap, |env| {
            host::run_branch(
                script,
                name,
                r.tag(),
                &snap.proxy,
                env,
                msg,
                &r.inbound,
                r.tls.as_deref(),
                idx,
                opts,
                r.flags,
                r.extra.as_ref().map_or(&[][..], |e| &e.avps[..]),
            )
        });
        match keep {
            Some(k) => k,
            None => {
                debug!(route = %name, "t_on_branch names no branch_route");
                true
            }
        }
    }
}
