//! The forking proxy's response context (RFC 3261 §16.7, §16.8, §16.10) as a pure type:
//! the branches of one server transaction with their client transactions, which responses
//! go upstream at once (provisionals but 100, every 2xx), which branches get a CANCEL (the
//! others after a 2xx or a 6xx, all after the caller's CANCEL, a ringing branch at Timer C,
//! which then ends as a 408), and the best final response once every branch has ended (6xx,
//! then the lowest class; 503 becomes 500; 408 when no branch answered or all timed out).
//! Before a non-2xx final goes upstream it reports [`ContextAction::AllDone`]: the seam
//! where `failure_route` may add branches. It sends nothing, keeps no clock, and never
//! panics on a response.

use std::collections::VecDeque;

use super::{TimerName, TxId};
use crate::sip::Message;

/// A branch's position in its context (0 for the first branch, in the order added).
pub type BranchIdx = usize;

/// What the runtime must do for the context; drained with [`ResponseContext::poll_action`].
// A handful per call, each moved once to the runtime: a box would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ContextAction {
    /// Send this response upstream now, through the server transaction (after removing
    /// siprox's Via): a provisional response other than 100, or a 2xx. A 2xx the server
    /// transaction refuses ([`super::TxError::State`]: a non-2xx final went up first) is
    /// forwarded statelessly along its Via.
    Forward(Message),
    /// Cancel this branch ([`super::Table::cancel_branch`]).
    Cancel(TxId),
    /// Every branch has ended without a 2xx. `status` is the best final so far. The
    /// `failure_route` seam: when `may_fork`, the script may add branches
    /// ([`ResponseContext::add_branch`]); otherwise, or when it adds none, call
    /// [`ResponseContext::finish`] for what goes upstream.
    AllDone { status: u16, may_fork: bool },
}

/// The final response for the caller.
// One per call, moved once: a box would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Final {
    /// This branch's response, as received (siprox's Via to be removed).
    Forward(Message),
    /// A response siprox builds from the original request: 408 (no branch answered),
    /// 500 (for a 503 from downstream, §16.7 step 6), 487 (the caller cancelled).
    Local { status: u16, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending { ringing: bool },
    Done { status: u16 },
}

#[derive(Debug)]
struct Branch {
    tx: TxId,
    state: State,
    /// Its own timer fired before a final response (B, F, or C).
    timed_out: bool,
    /// It received a response (any, 100 included).
    replied: bool,
}

/// How a branch that failed ended: `t_branch_timeout()` / `t_branch_replied()` in
/// failure_route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BranchFacts {
    /// Its timer fired before any final response: Timer B/F (or `t_set_fr`'s limit), or
    /// Timer C, after which it was cancelled and ended as a 408.
    pub timed_out: bool,
    /// It received at least one response.
    pub replied: bool,
}

#[derive(Debug)]
struct Best {
    status: u16,
    /// The branch it came from.
    tx: TxId,
    /// `None`: a 408 siprox stands in for (a branch timed out). Boxed: a context holds
    /// one for the whole ringing time of a call only once a branch failed, and the box
    /// keeps every context 240 bytes smaller.
    response: Option<Box<Message>>,
}

impl Best {
    /// Lower is better: 6xx first, then the lowest class; a real response before the 408
    /// siprox stands in for; the earlier response on a tie.
    fn rank(&self) -> (u16, bool) {
        let class = if self.status >= 600 {
            0
        } else {
            self.status / 100
        };
        (class, self.response.is_none())
    }
}

/// The response context of one proxied request. See the module docs.
#[derive(Debug, Default)]
pub struct ResponseContext {
    branches: Vec<Branch>,
    best: Option<Best>,
    forwarded_2xx: bool,
    got_6xx: bool,
    cancelled: bool,
    final_sent: bool,
    /// An `AllDone` was reported and neither a branch nor `finish` has followed yet.
    waiting: bool,
    /// The branch that ended last without a 2xx (the failure_route's "failed branch").
    last_failed: Option<BranchIdx>,
    actions: VecDeque<ContextAction>,
}

impl ResponseContext {
    pub fn new() -> ResponseContext {
        ResponseContext::default()
    }

    /// Add a branch whose client transaction is `tx` (the first ones from the script's
    /// `t_relay()`, more from `failure_route`). `None` when no branch may be added any
    /// more: after a 2xx, a 6xx, the caller's CANCEL, or the final response.
    pub fn add_branch(&mut self, tx: TxId) -> Option<BranchIdx> {
        if !self.may_fork() {
            return None;
        }
        self.waiting = false;
        self.branches.push(Branch {
            tx,
            state: State::Pending { ringing: false },
            timed_out: false,
            replied: false,
        });
        Some(self.branches.len() - 1)
    }

    /// Whether a new branch would be accepted.
    pub fn may_fork(&self) -> bool {
        !(self.forwarded_2xx || self.got_6xx || self.cancelled || self.final_sent)
    }

    /// The branch of a client transaction.
    pub fn branch_of(&self, tx: TxId) -> Option<BranchIdx> {
        self.branches.iter().position(|b| b.tx == tx)
    }

    pub fn branch_count(&self) -> usize {
        self.branches.len()
    }

    /// How the branch that ended last without a 2xx ended (failure_route's branch).
    pub fn failed_branch(&self) -> Option<BranchFacts> {
        let b = self.branches.get(self.last_failed?)?;
        Some(BranchFacts {
            timed_out: b.timed_out,
            replied: b.replied,
        })
    }

    /// The best final response so far (`$T_reply_code` in failure_route).
    pub fn best_status(&self) -> Option<u16> {
        self.best.as_ref().map(|b| b.status)
    }

    /// Whether some branch still waits for its final response.
    pub fn has_pending(&self) -> bool {
        self.pending().next().is_some()
    }

    /// The branch the best final response so far came from (`$T_branch_idx` in
    /// failure_route).
    pub fn best_branch(&self) -> Option<BranchIdx> {
        self.best.as_ref().and_then(|b| self.branch_of(b.tx))
    }

    /// True once nothing more will come of this context: the final went upstream, or a
    /// 2xx did and no branch is pending.
    pub fn is_done(&self) -> bool {
        self.final_sent || (self.forwarded_2xx && self.pending().next().is_none())
    }

    /// The next action; once none is left the queue's buffer is freed (a ringing call
    /// would otherwise hold room for four responses until it ends).
    pub fn poll_action(&mut self) -> Option<ContextAction> {
        let a = self.actions.pop_front();
        if a.is_none() && self.actions.capacity() > 0 {
            self.actions = VecDeque::new();
        }
        a
    }

    fn pending(&self) -> impl Iterator<Item = &Branch> + '_ {
        self.branches
            .iter()
            .filter(|b| matches!(b.state, State::Pending { .. }))
    }

    fn cancel_pending(&mut self, except: Option<TxId>) {
        let txs: Vec<TxId> = self
            .pending()
            .map(|b| b.tx)
            .filter(|t| Some(*t) != except)
            .collect();
        self.actions
            .extend(txs.into_iter().map(ContextAction::Cancel));
    }

    /// A response that branch `tx`'s client transaction passed up.
    pub fn on_response(&mut self, tx: TxId, msg: &Message) {
        let Some(i) = self.branch_of(tx) else {
            return;
        };
        let Some(status) = msg.status() else {
            return;
        };
        self.branches[i].replied = true;
        let state = self.branches[i].state;
        match status {
            100 => {}
            101..=199 => {
                if let State::Pending { .. } = state {
                    self.branches[i].state = State::Pending { ringing: true };
                }
                if !self.final_sent && !self.forwarded_2xx {
                    self.actions.push_back(ContextAction::Forward(msg.clone()));
                }
            }
            200..=299 => {
                // Every 2xx goes upstream, retransmissions and other branches' too: they
                // are end to end (§16.7 step 5), even after a non-2xx final went up (the
                // server transaction then refuses it and the runtime forwards it by Via).
                self.branches[i].state = State::Done { status };
                let first = !self.forwarded_2xx;
                self.forwarded_2xx = true;
                self.actions.push_back(ContextAction::Forward(msg.clone()));
                if first {
                    self.cancel_pending(Some(tx));
                }
            }
            300..=699 => {
                if !matches!(state, State::Pending { .. }) {
                    return;
                }
                self.branches[i].state = State::Done { status };
                self.last_failed = Some(i);
                self.offer(Best {
                    status,
                    tx,
                    response: Some(Box::new(msg.clone())),
                });
                if status >= 600 && !self.got_6xx {
                    self.got_6xx = true;
                    self.cancel_pending(None);
                }
                self.check_all_done();
            }
            _ => {}
        }
    }

    /// A branch's client transaction timed out ([`super::Action::Timeout`]): the branch
    /// ends as a 408 siprox stands in for. Timer B or F: nothing answered. Timer C (a
    /// ringing INVITE branch, §16.8): the branch is cancelled as well, and the callee's
    /// answer to the CANCEL (usually 487) is absorbed when it comes, as Kamailio's
    /// `fr_inv_timer` does; a 2xx that races the CANCEL still goes upstream (§16.7 step 5).
    pub fn on_timeout(&mut self, tx: TxId, timer: TimerName) {
        let Some(i) = self.branch_of(tx) else {
            return;
        };
        if !matches!(self.branches[i].state, State::Pending { .. }) {
            return;
        }
        self.branches[i].timed_out = true;
        if timer == TimerName::C {
            self.actions.push_back(ContextAction::Cancel(tx));
        }
        self.branches[i].state = State::Done { status: 408 };
        self.last_failed = Some(i);
        self.offer(Best {
            status: 408,
            tx,
            response: None,
        });
        self.check_all_done();
    }

    /// A branch's client transaction could not be sent ([`super::Action::TransportError`]):
    /// the branch ends as if it had received a 503 (§16.9), which goes upstream as 500
    /// should it be the best.
    pub fn on_transport_error(&mut self, tx: TxId) {
        let Some(i) = self.branch_of(tx) else {
            return;
        };
        if !matches!(self.branches[i].state, State::Pending { .. }) {
            return;
        }
        self.branches[i].state = State::Done { status: 503 };
        self.last_failed = Some(i);
        self.offer(Best {
            status: 503,
            tx,
            response: None,
        });
        self.check_all_done();
    }

    /// The caller's CANCEL matched this context's server transaction (§16.10): every
    /// pending branch is cancelled, no branch is added any more, and the caller gets 487
    /// once the branches end.
    pub fn cancel(&mut self) {
        if self.cancelled || self.final_sent || self.forwarded_2xx {
            return;
        }
        self.cancelled = true;
        self.cancel_pending(None);
        if self.waiting {
            // Branches had all ended and failure_route was pending: report again so the
            // runtime knows it may no longer fork.
            self.waiting = false;
            self.check_all_done();
        }
    }

    fn offer(&mut self, cand: Best) {
        match &self.best {
            Some(b) if b.rank() <= cand.rank() => {}
            _ => self.best = Some(cand),
        }
    }

    fn check_all_done(&mut self) {
        if self.forwarded_2xx || self.final_sent || self.waiting {
            return;
        }
        if self.pending().next().is_some() {
            return;
        }
        self.waiting = true;
        self.actions.push_back(ContextAction::AllDone {
            status: self.final_status(),
            may_fork: self.may_fork(),
        });
    }

    /// The status failure_route sees: a 503 (or a transport error) stays 503 there, and
    /// becomes 500 only for the caller ([`ResponseContext::finish`]).
    fn final_status(&self) -> u16 {
        match &self.best {
            _ if self.cancelled => 487,
            Some(b) => b.status,
            None => 408,
        }
    }

    /// The final response for the caller, once every branch has ended and failure_route
    /// added none. `None` while a branch is pending, after a 2xx, or when already sent.
    pub fn finish(&mut self) -> Option<Final> {
        if self.final_sent || self.forwarded_2xx || self.pending().next().is_some() {
            return None;
        }
        self.final_sent = true;
        self.waiting = false;
        let best = self.best.take();
        Some(match best {
            Some(Best {
                status: 487,
                response: Some(m),
                ..
            }) if self.cancelled => Final::Forward(*m),
            _ if self.cancelled => Final::Local {
                status: 487,
                reason: "Request Terminated",
            },
            None => Final::Local {
                status: 408,
                reason: "Request Timeout",
            },
            Some(Best { status: 503, .. }) => Final::Local {
                status: 500,
                reason: "Server Internal Error",
            },
            Some(Best { response: None, .. }) => Final::Local {
                status: 408,
                reason: "Request Timeout",
            },
            Some(Best {
                response: Some(m), ..
            }) => Final::Forward(*m),
        })
    }
}
