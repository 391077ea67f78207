//! Client transactions (RFC 3261 §17.1, RFC 6026 §8.4): the INVITE machine (Calling,
//! Proceeding, Completed, Accepted; Timers A, B, D, M and the proxy's Timer C) and the
//! non-INVITE machine (Trying, Proceeding, Completed; Timers E, F, K), plus the two
//! requests a proxy builds itself: the hop-by-hop ACK for a non-2xx final response
//! (§17.1.1.3) and the CANCEL of a branch (§9.1). They act only through `Out`; they never
//! read a clock and never panic on a response.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use super::table::Out;
use super::{Action, TimerName};
use crate::proxy::Destination;
use crate::sip::{HeaderName, Limits, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// INVITE: Calling; non-INVITE: Trying.
    Calling,
    Proceeding,
    Completed,
    /// INVITE after a 2xx (RFC 6026): further 2xx go up, end to end.
    Accepted,
}

/// Whether the TU asked to cancel this INVITE branch (§9.1: not before a provisional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    No,
    /// Asked before any provisional response: sent when one arrives.
    Wanted,
    /// Sent (or no longer possible).
    Done,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) invite: bool,
    pub(crate) state: State,
    /// As sent, while it may be retransmitted (INVITE: over UDP in Calling; non-INVITE:
    /// always); then, for an INVITE, only what its ACK and CANCEL are built from
    /// ([`skeleton`]). Parsed again to build them (once per call at most; keeping the
    /// parsed message would cost its header index for the whole life of every branch).
    pub(crate) request: Bytes,
    /// An INVITE over TCP/TLS: its [`skeleton`], made from the parsed request at hand,
    /// until it replaces `request` once sent. Over UDP it is made at the first response
    /// (a parse more, rather than both copies kept while Timer A runs).
    small: Option<Bytes>,
    /// The INVITE's bytes are the skeleton already.
    shrunk: bool,
    /// The limits the request was parsed with, to parse it again the same way.
    limits: Limits,
    pub(crate) dest: Destination,
    /// The current Timer A / E interval.
    interval: Duration,
    /// Timer B / F for this transaction (`t_set_fr`).
    fr: Duration,
    /// Timer C for this branch.
    c: Duration,
    /// The hop-by-hop ACK, resent for every retransmission of the non-2xx final.
    ack: Option<Bytes>,
    pub(crate) cancel: Cancel,
}

impl Client {
    pub(crate) fn new(request: &Message, dest: Destination, fr: Duration, c: Duration) -> Client {
        let invite = request.method() == Some("INVITE");
        Client {
            invite,
            state: State::Calling,
            request: request.as_bytes().clone(),
            small: (invite && dest.transport.is_stream()).then(|| skeleton(request)),
            shrunk: false,
            limits: *request.limits(),
            dest,
            interval: Duration::ZERO,
            fr,
            c,
            ack: None,
            cancel: Cancel::No,
        }
    }

    fn reliable(&self) -> bool {
        self.dest.transport.is_stream()
    }

    pub(crate) fn heap_size(&self) -> usize {
        // The request's bytes are shared with the runtime's copy only until it is sent: count
        // them.
        self.request.len()
            + self.small.as_ref().map_or(0, |s| s.len())
            + self.ack.as_ref().map_or(0, |a| a.len())
            + self.dest.server_name.as_ref().map_or(0, |s| s.len())
    }

    /// The INVITE is no longer retransmitted: keep only what the ACK and CANCEL need.
    fn shrink(&mut self) {
        if self.shrunk || !self.invite {
            return;
        }
        self.shrunk = true;
        if let Some(small) = self
            .small
            .take()
            .or_else(|| Some(skeleton(&self.parsed()?)))
        {
            self.request = small;
        }
    }

    pub(crate) fn start(&mut self, out: &mut Out<'_>) {
        out.send(&self.dest, self.request.clone());
        self.interval = out.timers.t1;
        if self.reliable() {
            self.shrink();
        } else {
            out.arm(
                if self.invite {
                    TimerName::A
                } else {
                    TimerName::E
                },
                self.interval,
            );
        }
        out.arm(
            if self.invite {
                TimerName::B
            } else {
                TimerName::F
            },
            self.fr,
        );
    }

    pub(crate) fn on_timer(&mut self, name: TimerName, out: &mut Out<'_>) {
        match (name, self.state) {
            (TimerName::A, State::Calling) => {
                out.send(&self.dest, self.request.clone());
                self.interval = self.interval.saturating_mul(2);
                out.arm(TimerName::A, self.interval);
            }
            (TimerName::E, State::Calling | State::Proceeding) => {
                out.send(&self.dest, self.request.clone());
                self.interval = if self.state == State::Calling {
                    self.interval.saturating_mul(2).min(out.timers.t2)
                } else {
                    out.timers.t2
                };
                out.arm(TimerName::E, self.interval);
            }
            (TimerName::B | TimerName::F, State::Calling | State::Proceeding) => {
                out.up(Action::Timeout {
                    tx: out.id,
                    timer: name,
                });
                out.terminate();
            }
            (TimerName::C, State::Proceeding) => {
                // The context cancels the branch; if the callee never answers the CANCEL
                // either, Timer B (restarted here) ends the transaction.
                out.up(Action::Timeout {
                    tx: out.id,
                    timer: name,
                });
                out.arm(TimerName::B, out.timers.t1x64());
            }
            (TimerName::D | TimerName::K, State::Completed) | (TimerName::M, State::Accepted) => {
                out.terminate()
            }
            // A timer of a state already left (disarmed timers never get here; this is
            // defence in depth).
            _ => {}
        }
    }

    /// A response matched to this transaction. Returns true when the TU must see it (the
    /// caller queues [`Action::Response`]).
    pub(crate) fn on_response(&mut self, msg: &Message, status: u16, out: &mut Out<'_>) -> bool {
        if self.invite {
            self.on_invite_response(msg, status, out)
        } else {
            self.on_non_invite_response(status, out)
        }
    }

    fn on_invite_response(&mut self, msg: &Message, status: u16, out: &mut Out<'_>) -> bool {
        // Any response stops Timer A.
        self.shrink();
        match (self.state, status) {
            (State::Calling | State::Proceeding, 100..=199) => {
                if self.state == State::Calling {
                    out.disarm(TimerName::A);
                    out.disarm(TimerName::B);
                    self.state = State::Proceeding;
                    out.arm(TimerName::C, self.c);
                } else if status > 100 {
                    out.arm(TimerName::C, self.c);
                }
                true
            }
            (State::Calling | State::Proceeding, 200..=299) => {
                self.stop_calling(out);
                self.state = State::Accepted;
                out.arm(TimerName::M, out.timers.t1x64());
                true
            }
            (State::Calling | State::Proceeding, _) => {
                self.stop_calling(out);
                self.state = State::Completed;
                if let Some(invite) = self.parsed() {
                    let ack = build_non2xx_ack(&invite, msg);
                    out.send(&self.dest, ack.clone());
                    self.ack = Some(ack);
                }
                self.cancel = Cancel::Done;
                let d = if self.reliable() {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(out.timers.t1x64())
                };
                out.arm_or_end(TimerName::D, d);
                true
            }
            (State::Completed, 300..) => {
                if let Some(ack) = &self.ack {
                    out.send(&self.dest, ack.clone());
                }
                false
            }
            (State::Accepted, 200..=299) => true,
            _ => false,
        }
    }

    /// The request as sent, parsed again (it parsed when the transaction was made, with
    /// the same limits, so `None` would be a bug elsewhere: nothing is then built from it).
    pub(crate) fn parsed(&self) -> Option<Message> {
        Message::parse_datagram(self.request.clone(), &self.limits).ok()
    }

    fn stop_calling(&mut self, out: &mut Out<'_>) {
        out.disarm(TimerName::A);
        out.disarm(TimerName::B);
        out.disarm(TimerName::C);
    }

    fn on_non_invite_response(&mut self, status: u16, out: &mut Out<'_>) -> bool {
        match (self.state, status) {
            (State::Calling | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                true
            }
            (State::Calling | State::Proceeding, _) => {
                out.disarm(TimerName::E);
                out.disarm(TimerName::F);
                self.state = State::Completed;
                let k = if self.reliable() {
                    Duration::ZERO
                } else {
                    out.timers.t4
                };
                out.arm_or_end(TimerName::K, k);
                true
            }
            _ => false,
        }
    }
}

/// The ACK for a non-2xx final response to `invite` (§17.1.1.3): the INVITE's Request-URI,
/// Call-ID, From, CSeq number and top Via (only that one), the response's To (with its
/// tag), the INVITE's Route fields, no body.
pub fn build_non2xx_ack(invite: &Message, response: &Message) -> Bytes {
    let mut out = String::with_capacity(invite.head_str().len());
    let _ = write!(
        out,
        "ACK {} SIP/2.0\r\n",
        invite.request_uri_str().unwrap_or("sip:invalid")
    );
    copy_top_via(&mut out, invite);
    let mut seq = 0;
    for f in invite.fields() {
        match f.name {
            HeaderName::From | HeaderName::CallId | HeaderName::Route => {
                let _ = write!(out, "{}: {}\r\n", f.name.as_str(), f.value);
            }
            HeaderName::CSeq => seq = invite.cseq().map(|c| c.seq).unwrap_or(0),
            _ => {}
        }
    }
    let to = response
        .header(HeaderName::To)
        .or_else(|| invite.header(HeaderName::To))
        .unwrap_or("");
    let _ = write!(
        out,
        "To: {to}\r\nCSeq: {seq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    Bytes::from(out)
}

/// What an INVITE client transaction keeps once the INVITE is no longer retransmitted:
/// the request line, the top Via, From, To, Call-ID, CSeq and Route, no body. Exactly
/// what [`build_non2xx_ack`] and [`build_cancel`] read, a third of a typical INVITE.
fn skeleton(invite: &Message) -> Bytes {
    let mut out = String::with_capacity(invite.head_str().len() / 2);
    let _ = write!(
        out,
        "INVITE {} SIP/2.0\r\n",
        invite.request_uri_str().unwrap_or("sip:invalid")
    );
    copy_top_via(&mut out, invite);
    for f in invite.fields() {
        if matches!(
            f.name,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::Route
        ) {
            let _ = write!(out, "{}: {}\r\n", f.name.as_str(), f.value);
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

/// The CANCEL of `invite` (§9.1): the same Request-URI, Call-ID, From, To and CSeq number,
/// method CANCEL, the INVITE's top Via only (so the CANCEL takes its branch), its Route
/// fields, no body.
pub fn build_cancel(invite: &Message) -> Bytes {
    let mut out = String::with_capacity(invite.head_str().len());
    let _ = write!(
        out,
        "CANCEL {} SIP/2.0\r\n",
        invite.request_uri_str().unwrap_or("sip:invalid")
    );
    copy_top_via(&mut out, invite);
    let mut seq = 0;
    for f in invite.fields() {
        match f.name {
            HeaderName::From | HeaderName::To | HeaderName::CallId | HeaderName::Route => {
                let _ = write!(out, "{}: {}\r\n", f.name.as_str(), f.value);
            }
            HeaderName::CSeq => seq = invite.cseq().map(|c| c.seq).unwrap_or(0),
            _ => {}
        }
    }
    let _ = write!(
        out,
        "CSeq: {seq} CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    Bytes::from(out)
}

fn copy_top_via(out: &mut String, msg: &Message) {
    if let Some(Ok(v)) = msg.list_values(HeaderName::Via).next() {
        let _ = write!(out, "Via: {v}\r\n");
    }
}
