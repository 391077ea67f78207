//! UDP out, one syscall per round: while a [`Round`] is open (a recvmmsg batch of a UDP
//! listener, one poll of a connection's reads), every datagram the worker sends is queued,
//! in order, and the round's end hands the queue to the kernel with `sendmmsg` (one syscall
//! per run of datagrams leaving from the same socket) instead of one `sendto` each. Outside
//! a round (timers, DNS tasks, the RPC) a datagram leaves at once. Never delays a datagram
//! past its round, never reorders, never waits: what a full socket buffer refuses is
//! finished in one task, as a single refused `sendto` always was.
//!
//! `nix` (socket feature) makes the syscalls: siprox forbids unsafe code, and nix is the
//! well-kept safe binding of `sendmmsg`/`recvmmsg`; `quinn-udp` batches only to one
//! destination (GSO), and SIP forwards go to many.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::{Worker, MAX_PENDING_TASKS};
use crate::state::inc;
use crate::state::table::{ConnHandle, SendError};

/// Most datagrams handed to one `sendmmsg` (a longer run takes several calls).
const SEND_BATCH: usize = 32;

/// The datagrams of the open round, and how many rounds are open (rounds nest: a UDP
/// listener's round may run a handler that opens its own).
#[derive(Default)]
pub(super) struct Outbox {
    depth: Cell<u32>,
    queue: RefCell<Vec<Queued>>,
    /// Reused by every flush (it holds no borrow between flushes).
    headers: RefCell<Option<MultiHeaders<SockaddrStorage>>>,
    /// The destinations of a `sendmmsg`, reused by every flush.
    addrs: RefCell<Vec<Option<SockaddrStorage>>>,
    /// The allocation of a `sendmmsg`'s slices, reused by every flush (empty between
    /// flushes: the slices borrow the queued datagrams).
    slices: RefCell<Vec<[IoSlice<'static>; 1]>>,
    /// Messages for streams (accounted in their queues, not yet handed over), in order:
    /// at the round's end each stream gets what is for it in one mailbox message.
    streams: RefCell<Vec<Option<(ConnHandle, Bytes)>>>,
}

/// Most bytes gathered into one handover to a stream: the plaintext of one TLS record
/// (the connection's own `coalesce_front` gathers its writes up to it too).
pub(crate) const STREAM_BATCH_MAX: usize = 16 * 1024;

/// An empty vector with `v`'s allocation, for items of the same type but another lifetime:
/// std collects a consumed vector into one of the same layout in place.
pub(crate) fn recycle<T, U>(v: Vec<T>) -> Vec<U> {
    v.into_iter().filter_map(|_| None).collect()
}

struct Queued {
    /// Index of the socket in `Worker::udp`.
    sock: usize,
    to: SocketAddr,
    bytes: Bytes,
}

/// An open round of the worker: datagrams sent until it is dropped leave together, when
/// it is (also on unwinding, so a panic in a handler cannot strand them).
pub(crate) struct Round(Rc<Worker>);

impl Drop for Round {
    fn drop(&mut self) {
        let w = &self.0;
        let depth = w.outbox.depth.get().saturating_sub(1);
        w.outbox.depth.set(depth);
        if depth == 0 {
            w.flush_udp();
            w.flush_streams();
        }
    }
}

impl Worker {
    /// Opens a round: see the module doc.
    pub(crate) fn round(self: &Rc<Self>) -> Round {
        self.outbox.depth.set(self.outbox.depth.get() + 1);
        Round(self.clone())
    }

    /// Sends from `self.udp[sock]` now, or queues it while a round is open.
    pub(super) fn send_udp_from(self: &Rc<Self>, sock: usize, to: SocketAddr, bytes: Bytes) {
        if self.outbox.depth.get() > 0 {
            self.outbox
                .queue
                .borrow_mut()
                .push(Queued { sock, to, bytes });
            return;
        }
        let Some((_, s)) = self.udp.get(sock) else {
            return;
        };
        match s.try_send_to(&bytes, to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let s = s.clone();
                self.finish_later(s, vec![(to, bytes)]);
            }
            Err(e) => self.udp_failed(to, &e),
        }
    }

    /// Sends `bytes` to a stream through its handle now, or, while a round is open, at
    /// its end (accounted now, so a full queue is refused now): the messages of one round
    /// for one stream reach it in one mailbox message and one wakeup of its worker, and
    /// the buffers freed are the ones this worker allocated.
    ///
    /// A refused message is given back with the reason (no copy kept for the retry).
    pub(super) fn send_conn(&self, h: ConnHandle, bytes: Bytes) -> Result<(), (SendError, Bytes)> {
        if let Err(e) = h.admit(bytes.len()) {
            return Err((e, bytes));
        }
        if self.outbox.depth.get() == 0 {
            h.deliver(bytes);
        } else {
            self.outbox.streams.borrow_mut().push(Some((h, bytes)));
        }
        Ok(())
    }

    /// Hands each stream what the round queued for it, in order: one buffer when it is
    /// one message, else the messages copied into one (up to [`STREAM_BATCH_MAX`] each),
    /// which the stream writes as they are (its `coalesce_front` would copy them anyway).
    fn flush_streams(&self) {
        let mut queue = std::mem::take(&mut *self.outbox.streams.borrow_mut());
        for i in 0..queue.len() {
            let Some((h, first)) = queue[i].take() else {
                continue;
            };
            let id = h.id();
            let same =
                |q: &Option<(ConnHandle, Bytes)>| q.as_ref().is_some_and(|(g, _)| g.id() == id);
            let rest = &mut queue[i + 1..];
            let total: usize = rest
                .iter()
                .filter(|q| same(q))
                .map(|q| q.as_ref().map_or(0, |(_, b)| b.len()))
                .sum();
            if total == 0 {
                h.deliver(first);
                continue;
            }
            let mut buf = BytesMut::with_capacity((first.len() + total).min(STREAM_BATCH_MAX));
            buf.extend_from_slice(&first);
            for q in rest.iter_mut().filter(|q| same(q)) {
                let Some((_, b)) = q.take() else {
                    continue;
                };
                if buf.len() + b.len() > STREAM_BATCH_MAX {
                    h.deliver(buf.split().freeze());
                }
                buf.extend_from_slice(&b);
            }
            h.deliver(buf.freeze());
        }
        queue.clear();
        // Keep the capacity for the next round, unless a handler queued more meanwhile.
        let mut q = self.outbox.streams.borrow_mut();
        if q.is_empty() {
            *q = queue;
        }
    }

    fn udp_failed(&self, to: SocketAddr, e: &io::Error) {
        inc(&self.shared.stats.send_failures);
        debug!(%to, error = %e, "UDP send failed");
    }

    /// Datagrams the socket refused (its buffer is full): sent in order by one task once it
    /// takes them, rather than waited for here; counted as failures past the task bound.
    fn finish_later(self: &Rc<Self>, sock: Rc<UdpSocket>, rest: Vec<(SocketAddr, Bytes)>) {
        if self.pending_tasks.get() >= MAX_PENDING_TASKS {
            for _ in &rest {
                inc(&self.shared.stats.send_failures);
            }
            return;
        }
        self.pending_tasks.set(self.pending_tasks.get() + 1);
        let me = self.clone();
        actix::spawn(async move {
            for (to, bytes) in rest {
                if sock.send_to(&bytes, to).await.is_err() {
                    inc(&me.shared.stats.send_failures);
                }
            }
            me.pending_tasks
                .set(me.pending_tasks.get().saturating_sub(1));
        });
    }

    /// Sends what the round queued: each run of datagrams from one socket in as few
    /// `sendmmsg` calls as it takes, in order.
    fn flush_udp(self: &Rc<Self>) {
        let mut queue = std::mem::take(&mut *self.outbox.queue.borrow_mut());
        if queue.is_empty() {
            *self.outbox.queue.borrow_mut() = queue;
            return;
        }
        let mut start = 0;
        while start < queue.len() {
            let sock = queue[start].sock;
            let end = queue[start..]
                .iter()
                .position(|q| q.sock != sock)
                .map_or(queue.len(), |n| start + n);
            self.flush_run(sock, &queue[start..end]);
            start = end;
        }
        queue.clear();
        // Keep the capacity for the next round, unless a handler queued more meanwhile.
        let mut q = self.outbox.queue.borrow_mut();
        if q.is_empty() {
            *q = queue;
        }
    }

    fn flush_run(self: &Rc<Self>, sock: usize, run: &[Queued]) {
        let Some((_, s)) = self.udp.get(sock) else {
            return;
        };
        let mut i = 0;
        while i < run.len() {
            let chunk = &run[i..run.len().min(i + SEND_BATCH)];
            let sent = if chunk.len() == 1 {
                s.try_send_to(&chunk[0].bytes, chunk[0].to).map(|_| 1)
            } else {
                self.sendmmsg(s, chunk)
            };
            match sent {
                Ok(n) => i += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let rest = run[i..].iter().map(|q| (q.to, q.bytes.clone())).collect();
                    self.finish_later(s.clone(), rest);
                    return;
                }
                // The first datagram of the chunk failed (sendmmsg reports an error only
                // when nothing was sent): that one is lost, the rest go on.
                Err(e) => {
                    self.udp_failed(run[i].to, &e);
                    i += 1;
                }
            }
        }
    }

    /// One `sendmmsg` of `chunk` (at most [`SEND_BATCH`]): how many the kernel took.
    fn sendmmsg(&self, s: &UdpSocket, chunk: &[Queued]) -> io::Result<usize> {
        let mut headers = self.outbox.headers.borrow_mut();
        let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(SEND_BATCH, None));
        let mut addrs = self.outbox.addrs.borrow_mut();
        addrs.clear();
        addrs.extend(chunk.iter().map(|q| Some(SockaddrStorage::from(q.to))));
        let mut spare = self.outbox.slices.borrow_mut();
        let mut slices: Vec<[IoSlice<'_>; 1]> = recycle(std::mem::take(&mut *spare));
        slices.extend(chunk.iter().map(|q| [IoSlice::new(&q.bytes)]));
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = s.try_io(Interest::WRITABLE, || {
            sendmmsg(
                s.as_raw_fd(),
                headers,
                &slices,
                &*addrs,
                no_cmsgs,
                MsgFlags::empty(),
            )
            .map(|r| r.count())
            .map_err(io::Error::from)
        });
        *spare = recycle(slices);
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_vectors_keep_their_allocation() {
        let data = [1u8, 2, 3];
        let mut v: Vec<[IoSlice<'static>; 1]> = Vec::with_capacity(SEND_BATCH);
        let ptr = v.as_ptr() as usize;
        let mut borrowed: Vec<[IoSlice<'_>; 1]> = recycle(std::mem::take(&mut v));
        borrowed.push([IoSlice::new(&data)]);
        assert_eq!(borrowed.as_ptr() as usize, ptr);
        v = recycle(borrowed);
        assert!(v.is_empty());
        assert_eq!((v.as_ptr() as usize, v.capacity()), (ptr, SEND_BATCH));
    }
}
