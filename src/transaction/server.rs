//! Server transactions (RFC 3261 §17.2, RFC 6026 §8.7): the INVITE machine (Proceeding,
//! Completed, Confirmed, Accepted; Timers G, H, I, L) and the non-INVITE machine (Trying,
//! Proceeding, Completed; Timer J), plus a guard timer so a transaction whose TU never
//! answers is not kept forever. They act only through `Out`; they never read a clock and
//! never panic on a request.

use std::time::Duration;

use bytes::Bytes;

use super::table::Out;
use super::{Action, TimerName, TxError};
use crate::proxy::Destination;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Non-INVITE before any response.
    Trying,
    Proceeding,
    Completed,
    /// INVITE after the ACK for its non-2xx final response.
    Confirmed,
    /// INVITE after a 2xx (RFC 6026): INVITE retransmissions absorbed, further 2xx sent.
    Accepted,
}

/// What a request matched to a server transaction amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnRequest {
    /// A retransmission: absorbed (the last response, if any, was re-sent).
    Absorbed,
    /// The ACK for the non-2xx final response: absorbed, hop by hop.
    Ack,
    /// Not for this transaction's machine (an ACK in Accepted: the 2xx's ACK, which goes
    /// end to end).
    PassOn,
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) invite: bool,
    pub(crate) state: State,
    pub(crate) reply_dest: Destination,
    /// The last response sent: resent for every retransmission of the request.
    last: Option<Bytes>,
    pub(crate) last_status: u16,
    /// The current Timer G interval.
    interval: Duration,
    guard: Duration,
}

impl Server {
    pub(crate) fn new(invite: bool, reply_dest: Destination, guard: Duration) -> Server {
        Server {
            invite,
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            reply_dest,
            last: None,
            last_status: 0,
            interval: Duration::ZERO,
            guard,
        }
    }

    fn reliable(&self) -> bool {
        self.reply_dest.transport.is_stream()
    }

    pub(crate) fn heap_size(&self) -> usize {
        self.last.as_ref().map_or(0, |b| b.len())
            + self.reply_dest.server_name.as_ref().map_or(0, |s| s.len())
    }

    pub(crate) fn start(&mut self, out: &mut Out<'_>) {
        out.arm(TimerName::Guard, self.guard);
    }

    pub(crate) fn on_request(&mut self, ack: bool, out: &mut Out<'_>) -> OnRequest {
        match (self.state, ack) {
            (State::Completed, true) if self.invite => {
                out.disarm(TimerName::G);
                out.disarm(TimerName::H);
                self.state = State::Confirmed;
                let i = if self.reliable() {
                    Duration::ZERO
                } else {
                    out.timers.t4
                };
                out.arm_or_end(TimerName::I, i);
                OnRequest::Ack
            }
            (State::Confirmed, true) => OnRequest::Ack,
            (State::Accepted, true) => OnRequest::PassOn,
            (_, true) => OnRequest::Absorbed,
            (State::Proceeding | State::Completed, false) => {
                if let Some(last) = &self.last {
                    out.send(&self.reply_dest, last.clone());
                }
                OnRequest::Absorbed
            }
            (_, false) => OnRequest::Absorbed,
        }
    }

    /// The TU sends a response through this transaction.
    pub(crate) fn respond(
        &mut self,
        status: u16,
        bytes: Bytes,
        out: &mut Out<'_>,
    ) -> Result<(), TxError> {
        match (self.state, status) {
            (State::Trying | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                // The TU is alive: give it another guard period.
                out.arm(TimerName::Guard, self.guard);
            }
            (State::Trying | State::Proceeding, 200..=299) if self.invite => {
                out.disarm(TimerName::Guard);
                self.state = State::Accepted;
                out.arm(TimerName::L, out.timers.t1x64());
            }
            (State::Accepted, 200..=299) => {}
            (State::Trying | State::Proceeding, 200..=699) if self.invite => {
                out.disarm(TimerName::Guard);
                self.state = State::Completed;
                if !self.reliable() {
                    self.interval = out.timers.t1;
                    out.arm(TimerName::G, self.interval);
                }
                out.arm(TimerName::H, out.timers.t1x64());
            }
            (State::Trying | State::Proceeding, 200..=699) => {
                out.disarm(TimerName::Guard);
                self.state = State::Completed;
                let j = if self.reliable() {
                    Duration::ZERO
                } else {
                    out.timers.t1x64()
                };
                out.send(&self.reply_dest, bytes.clone());
                self.last = Some(bytes);
                self.last_status = status;
                out.arm_or_end(TimerName::J, j);
                return Ok(());
            }
            (_, 100..=699) => return Err(TxError::State("a final response was sent already")),
            _ => return Err(TxError::State("status out of range")),
        }
        out.send(&self.reply_dest, bytes.clone());
        // Kept to answer a retransmitted request, which only an unreliable transport brings
        // (§17.1.1.2: Timers A and E run over UDP only): over TCP/TLS a provisional is not
        // kept (the final is, for the Completed state's sake).
        self.last = if status < 200 && self.reliable() {
            None
        } else {
            Some(bytes)
        };
        self.last_status = status;
        Ok(())
    }

    pub(crate) fn on_timer(&mut self, name: TimerName, out: &mut Out<'_>) {
        match (name, self.state) {
            (TimerName::G, State::Completed) => {
                if let Some(last) = &self.last {
                    out.send(&self.reply_dest, last.clone());
                }
                self.interval = self.interval.saturating_mul(2).min(out.timers.t2);
                out.arm(TimerName::G, self.interval);
            }
            (TimerName::H, State::Completed) | (TimerName::Guard, _) => {
                out.up(Action::Timeout {
                    tx: out.id,
                    timer: name,
                });
                out.terminate();
            }
            (TimerName::I, State::Confirmed)
            | (TimerName::J, State::Completed)
            | (TimerName::L, State::Accepted) => out.terminate(),
            _ => {}
        }
    }
}
