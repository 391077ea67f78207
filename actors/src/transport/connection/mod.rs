//! The `Connection` actor: one TCP or TLS stream, incoming or outgoing, on the arbiter that
//! accepted or opened it. It owns the handshake, SIP framing, a bounded write queue with
//! `send_timeout`, the idle and per-message timeouts, the per-IP bound on unfinished
//! messages, and graceful drain. Every message it reads goes straight
//! to the proxy core on this thread. Must never block its thread, never wait for another
//! connection, and never panic on what a peer sends.
//!
//! The I/O is one hand-written `ActorFuture` (`IoDriver`, in `actor`) polled inside the actor's
//! context: it sees the actor's state on every poll, so queued bytes, buffers and timers
//! live in the actor with no locks and no extra channel. actix polls it right after the
//! mailbox, so bytes enqueued by `ConnCommand::Enqueue` are written in the same pass.
//!
//! Files: `actor` (start, stop, mailbox, the I/O future), `handshake` (connect and TLS),
//! `framing` (reads, SIP framing, the write queue), `http` (RPC requests on a SIP stream).

mod actor;
mod framing;
mod handshake;
mod http;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use siprox::proxy::Destination;
use siprox::sip::StreamFramer;
use siprox::tls::TlsFacts;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tracing::Span;

use crate::state::messages::CloseReason;
use crate::state::table::{ConnHandle, ConnShared, PeerKey};
use crate::state::{ConnSettings, Slot};
use crate::worker::{Connector, Worker};
use handshake::Io;

/// Read-buffer growth step. Small on purpose: most SIP messages fit, idle connections hold
/// no buffer at all (see `read_some`), and big messages grow it only while they last.
const READ_CHUNK: usize = 4096;
/// A buffer grown past this by a large message is freed as soon as it is empty again.
const READ_KEEP_MAX: usize = 16 * 1024;
/// Read-and-process rounds per poll before yielding, so one busy peer cannot starve the
/// other connections of its worker.
const POLL_BUDGET: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TCP connect and/or TLS handshake in progress; writes queue up.
    Starting,
    Open,
    /// Not reading any more; writing what is queued, then closing.
    Draining(CloseReason),
}

/// What a connection needs until it is open.
struct Start {
    /// The accepted TCP stream (none for an outgoing connection: it connects).
    accepted: Option<TcpStream>,
    settings: ConnSettings,
}

/// One TCP/TLS stream.
pub struct Connection {
    /// Id, key (transport and peer), own mailbox and write-queue accounting: what the
    /// connection table and every handle see.
    shared: Arc<ConnShared>,
    local: SocketAddr,
    /// Where an outgoing connection goes (and the server name to verify for TLS); boxed:
    /// accepted connections, the many, do not pay for it.
    dest: Option<Box<Destination>>,
    span: Span,
    worker: Rc<Worker>,
    /// What only the start needs (the accepted stream, its timeouts): boxed and dropped
    /// once the connection is open.
    start: Option<Box<Start>>,
    /// `[connections] send_timeout`, or the TLS domain's own.
    send_timeout: Duration,
    io: Option<Io>,
    rbuf: BytesMut,
    framer: StreamFramer,
    wq: VecDeque<Bytes>,
    /// Bytes of `wq.front()` already written.
    woff: usize,
    /// The socket refused the last write of `wq.front()` (it is retried as it is).
    wblocked: bool,
    /// The last read of a TLS 1.3 stream found nothing (OpenSSL asked the socket for more,
    /// so it holds no whole record), or found data and left OpenSSL holding no byte
    /// (`SSL_has_pending`): until the socket is readable again a read can only find
    /// nothing, and is skipped (the read after each burst, and a pass woken by the mailbox
    /// to write, make no `SSL_read`).
    /// TLS 1.3 only: there `SSL_write` never reads (no renegotiation), so nothing but a
    /// read can fill OpenSSL's buffer meanwhile.
    rdrained: bool,
    /// Armed while the socket refuses our bytes; reset whenever some are accepted.
    send_timer: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    /// Facts of the TLS session, read once after the handshake; handed to every message.
    tls: Option<Arc<TlsFacts>>,
    /// Set when the stream turned out to carry HTTP (SER-style RPC on a SIP listener).
    http: Option<siprox::rpc::HttpFramer>,
    /// Bytes of unfinished messages this stream has reported for its source IP.
    partial_held: usize,
    /// `[connections] max_partial_bytes_per_ip` when the connection started.
    max_partial: usize,
    _slot: Slot,
}

/// The worker's [`Connector`]: outgoing connections are `Connection` actors on the
/// worker's own arbiter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing;

impl Connector for Outgoing {
    fn open(&self, worker: &Rc<Worker>, key: &PeerKey, dest: &Destination) -> ConnHandle {
        Connection::start_outgoing(worker, key, dest)
    }
}
