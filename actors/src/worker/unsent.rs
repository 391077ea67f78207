//! Requests an outgoing TCP/TLS connection never sent because it failed to connect or
//! handshake: each is answered as if the next hop had answered it, so that the phone that
//! sent it hears something instead of waiting for its transaction to time out. 480 when
//! the next hop is another cluster node (it died and is not yet known dead), 503 for any
//! other next hop (RFC 3261 §16.9 treats a transport error as a 503); a branch of a
//! transaction toward another next hop fails with a transport error instead, and its
//! transaction answers (`tm::tm_script`). Must never answer
//! an ACK or a response, and never panic on the queued bytes (they are this proxy's own
//! output, but are parsed again as untrusted).

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use siprox::proxy::{Action, Inbound, Transport};
use siprox::sip::Message;
use tracing::debug;

use super::Worker;

impl Worker {
    /// Answers the requests of `queued` (the messages a connection to `to` held when it
    /// failed): the response is made to the request as forwarded, with this proxy's Via on
    /// top, and handed to the hot path as if `to` had sent it, so it follows the Vias back
    /// (and the reply script sees it) exactly as a real one would. `node`: `to` is that
    /// cluster node's advertise address. Returns how many were answered.
    pub(crate) fn answer_unsent(
        self: &Rc<Self>,
        queued: impl IntoIterator<Item = Bytes>,
        transport: Transport,
        to: SocketAddr,
        local: SocketAddr,
        node: Option<&str>,
    ) -> usize {
        let inbound = Inbound {
            transport,
            source: to,
            local,
            conn: None,
        };
        let (code, reason) = match node {
            Some(n) => (
                480,
                format!("Temporarily Unavailable (cluster node {n} unreachable)"),
            ),
            None => (503, "Service Unavailable (next hop unreachable)".to_owned()),
        };
        let mut answered = 0;
        for bytes in queued {
            let Ok(msg) = Message::parse(bytes) else {
                continue;
            };
            // `reply` never answers an ACK; a response has no one to answer.
            if !msg.is_request() {
                continue;
            }
            // A branch of a transaction (`t_relay()`) toward anything but a cluster node:
            // the branch fails with a transport error (§16.9: a 503 for failure_route,
            // 500 for the caller), answered once by its transaction. A cluster node's
            // 480 below reaches its transaction as a response like any other.
            if node.is_none() && self.tm_unsent(&msg, &inbound) {
                answered += 1;
                continue;
            }
            let action = self
                .shared
                .snapshot
                .load()
                .proxy
                .reply(&msg, &inbound, code, &reason, "");
            let Action::Send { bytes, .. } = action else {
                continue;
            };
            match Message::parse(bytes) {
                Ok(resp) => {
                    self.on_message(resp, inbound, None);
                    answered += 1;
                }
                Err(e) => debug!(error = %e, "locally made answer did not parse"),
            }
        }
        answered
    }
}
