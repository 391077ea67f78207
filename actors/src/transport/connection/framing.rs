//! Bytes in and out of a connection: reading into the buffer, SIP framing (Content-Length,
//! keep-alive pings) with each message handed to the worker, and writing the bounded queue
//! under `send_timeout`. Called from the `Connection` actor's I/O future; must never block
//! and never panic on what a peer sends.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use siprox::proxy::Action;
use siprox::sip::Frame;
use tokio::time::Instant;
use tracing::{debug, warn};

use openssl::ssl::{SslRef, SslVersion};

use super::handshake::Io;
use super::{Connection, READ_CHUNK, READ_KEEP_MAX};
use crate::state::inc;
use crate::state::messages::CloseReason;

impl Connection {
    /// Writes as much of the queue as the socket takes. `Err` = close now.
    pub(super) fn flush_queue(&mut self, cx: &mut TaskContext<'_>) -> Result<(), CloseReason> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let mut progressed = false;
        loop {
            coalesce_front(&mut self.wq, self.woff, self.wblocked);
            let Some(front) = self.wq.front() else {
                break;
            };
            match io.poll_write(cx, &front[self.woff..]) {
                Poll::Ready(Ok(0)) => {
                    return Err(CloseReason::WriteError(io::ErrorKind::WriteZero))
                }
                Poll::Ready(Ok(n)) => {
                    progressed = true;
                    self.wblocked = false;
                    self.woff += n;
                    if self.woff >= front.len() {
                        let len = front.len();
                        self.wq.pop_front();
                        self.woff = 0;
                        self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
                    }
                }
                Poll::Ready(Err(e)) => return Err(CloseReason::WriteError(e.kind())),
                Poll::Pending => {
                    self.wblocked = true;
                    break;
                }
            }
        }
        if self.wq.is_empty() {
            // Timers are freed when not needed: an idle connection costs as little as possible.
            self.send_timer = None;
            if progressed {
                self.shared.touch();
            }
            return Ok(());
        }
        let deadline = Instant::now() + self.send_timeout;
        match &mut self.send_timer {
            None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if progressed => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        if progressed {
            self.shared.touch();
        }
        if let Some(t) = &mut self.send_timer {
            if t.as_mut().poll(cx).is_ready() {
                return Err(CloseReason::SendTimeout);
            }
        }
        Ok(())
    }

    /// One read and the frames it completes.
    pub(super) fn read_some(&mut self, cx: &mut TaskContext<'_>) -> ReadOutcome {
        let Some(io) = self.io.as_mut() else {
            return ReadOutcome::Pending;
        };
        // Nothing new since the last read found nothing, or emptied OpenSSL's buffer:
        // tokio's readiness says so without a syscall, and registers the waker as the read
        // would have.
        if self.rdrained {
            if let Io::Tls(s) = &*io {
                if s.get_ref().poll_read_ready(cx).is_pending() {
                    self.release_rbuf();
                    return ReadOutcome::Pending;
                }
            }
        }
        self.rdrained = false;
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            if self.rbuf.capacity() == 0 {
                self.rbuf = self.worker.take_read_buf();
            }
            self.rbuf.reserve(READ_CHUNK);
        }
        let mut io = Pin::new(io);
        let n = match tokio_util::io::poll_read_buf(io.as_mut(), cx, &mut self.rbuf) {
            Poll::Pending => {
                self.rdrained = matches!(&*io, Io::Tls(s) if tls13_settled(s.ssl()));
                self.release_rbuf();
                return ReadOutcome::Pending;
            }
            Poll::Ready(Err(e)) => {
                if self.tls.is_some() {
                    // TLS 1.3: a server that refuses our client certificate (or a client whose
                    // certificate we refused) surfaces here, on the first read after the
                    // handshake. Outgoing: siprox chose this peer, so the operator must see it.
                    if self.dest.is_some() {
                        warn!(error = %e, "TLS connection failed after the handshake (refused client certificate?)");
                    } else {
                        debug!(error = %e, "TLS read failed");
                    }
                }
                return ReadOutcome::Close(CloseReason::ReadError(e.kind()));
            }
            Poll::Ready(Ok(n)) => n,
        };
        if n == 0 {
            return ReadOutcome::Eof;
        }
        // OpenSSL holds nothing more of this stream (no record, no part of one): the next
        // read can only find something if the socket has more, which tokio knows without a
        // syscall (a short read cleared its readiness). The read that would say WouldBlock
        // after each burst is skipped like the one after a read that found nothing.
        self.rdrained = matches!(&*io, Io::Tls(s) if drained_tls(s.ssl()));
        self.shared.touch();
        ReadOutcome::Data
    }

    /// Nothing pending: gives the read buffer back while the peer is quiet, so an idle
    /// connection holds no read buffer at all (the worker keeps it for the next connection
    /// that reads: no allocation per read). A buffer holding part of a message stays.
    fn release_rbuf(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() != 0 {
            self.worker.give_read_buf(std::mem::take(&mut self.rbuf));
        }
    }

    /// Frames and handles what the read buffer holds. `Err` = the stream lost framing.
    pub(super) fn process_frames(&mut self) -> Result<(), CloseReason> {
        // An HTTP request line where a SIP message would start: RPC over the SIP listener.
        if self.http.is_none()
            && self.dest.is_none()
            && !self.framer.is_mid_message(&BytesMut::new())
            && siprox::rpc::looks_like_http(&self.rbuf)
        {
            self.http = Some(siprox::rpc::HttpFramer::default());
        }
        if let Some(framer) = self.http {
            return self.process_http(framer);
        }
        let reading = self.worker.begin_reading(&self.shared);
        let r = self.frames();
        self.worker.end_reading(reading, &mut self.wq);
        r
    }

    /// The SIP messages the read buffer holds, each handed to the worker.
    fn frames(&mut self) -> Result<(), CloseReason> {
        loop {
            match self.framer.next_frame(&mut self.rbuf) {
                Ok(Some(Frame::Message(msg))) => {
                    let inbound = self.inbound();
                    self.worker.on_message(msg, inbound, self.tls.clone());
                }
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                    self.enqueue(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Malformed { bytes, error })) => {
                    // Its end was known: answer 400 and keep reading this stream.
                    inc(&self.worker.shared.stats.framing_errors);
                    debug!(%error, "malformed message on a stream: answered, stream kept");
                    self.answer_unparsable(&bytes, &error);
                }
                Ok(None) => break,
                Err(e) => {
                    // Answer what can be answered (400 with the parse error), then close:
                    // after a framing error nothing more on this stream can be trusted.
                    let bytes = self.rbuf.split().freeze();
                    debug!(error = %e, "framing error");
                    self.answer_unparsable(&bytes, &e);
                    return Err(CloseReason::FramingError);
                }
            }
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_KEEP_MAX {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// The core's answer (a 400 where the request is identifiable) to bytes that did not
    /// parse, queued on this connection.
    fn answer_unparsable(&mut self, bytes: &Bytes, e: &siprox::sip::ParseError) {
        let inbound = self.inbound();
        let snap = self.worker.shared.snapshot.load();
        let action = snap.proxy.on_unparsable(bytes, e, &inbound);
        drop(snap);
        match action {
            Action::Send { dest, bytes } if dest.connection() == Some(self.id()) => {
                self.enqueue(bytes)
            }
            other => self.worker.execute_simple(other, &inbound),
        }
    }

    /// Accounts what the read buffer holds of unfinished messages against the source IP's
    /// `max_partial_bytes_per_ip`; `false`: over it. A stream between messages holds none
    /// and costs no lookup.
    pub(super) fn hold_partial(&mut self) -> bool {
        let held = self.rbuf.len();
        if held == self.partial_held {
            return true;
        }
        let ip = self.shared.key.addr.ip();
        let ok = self
            .worker
            .shared
            .hold_partial(ip, self.partial_held, held, self.max_partial);
        self.partial_held = held;
        ok
    }

    /// Queues `bytes` for this connection after what the worker holds for it (replies to
    /// the messages read so far), so that they leave in the order they were sent.
    pub(super) fn enqueue(&mut self, bytes: Bytes) {
        self.worker.take_replies(&mut self.wq);
        self.shared.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        self.wq.push_back(bytes);
    }
}

/// A TLS 1.3 stream with no handshake message in progress: there `SSL_write` never reads
/// (no renegotiation), so nothing but a read can fill OpenSSL's buffer. Not while a
/// post-handshake message is being answered (a KeyUpdate that asks for one back): that
/// read waits to write, and records may be buffered behind it.
fn tls13_settled(ssl: &SslRef) -> bool {
    ssl.version2() == Some(SslVersion::TLS1_3) && ssl.is_init_finished()
}

/// After a read that returned data: a settled TLS 1.3 stream of which OpenSSL holds no
/// byte (see [`crate::tls::ffi::has_pending`]).
fn drained_tls(ssl: &SslRef) -> bool {
    tls13_settled(ssl) && !crate::tls::ffi::has_pending(ssl)
}

/// Most bytes gathered into one write: the plaintext of one TLS record (the bound of the
/// worker's batches too).
const COALESCE_MAX: usize = crate::worker::udp::STREAM_BATCH_MAX;

/// Gathers the messages at the front of the write queue into one buffer (up to
/// [`COALESCE_MAX`]), so that what piled up since the last write leaves in one TLS record
/// and one syscall instead of one each. Only a front nothing has been written of, and that
/// the socket has not refused (`blocked`): a TLS write the socket refused must be retried
/// with the same buffer.
fn coalesce_front(wq: &mut VecDeque<Bytes>, woff: usize, blocked: bool) {
    if woff != 0 || blocked || wq.len() < 2 {
        return;
    }
    let mut total = 0;
    let n = wq
        .iter()
        .take_while(|b| {
            total += b.len();
            total <= COALESCE_MAX
        })
        .count();
    if n < 2 {
        return;
    }
    let mut buf = BytesMut::with_capacity(wq.iter().take(n).map(Bytes::len).sum());
    for b in wq.drain(..n) {
        buf.extend_from_slice(&b);
    }
    wq.push_front(buf.freeze());
}

pub(super) enum ReadOutcome {
    Data,
    Pending,
    Eof,
    Close(CloseReason),
}
