//! `Listener` actors and the sockets they own: per worker, one SO_REUSEPORT TCP listening
//! socket per tcp/tls address (the kernel spreads connections across workers) and one
//! SO_REUSEPORT UDP socket per udp address (it spreads datagrams by source). A TCP listener
//! admits connections and starts their `Connection` actor on its own arbiter; a UDP
//! listener parses each datagram and hands it to the proxy core on the spot. At the
//! open-file limit a TCP listener refuses the connections waiting in its backlog (accept
//! with a reserve descriptor, close) rather than leave them hanging. Must never block the
//! worker and never let one burst starve the other actors of the arbiter.

use std::future::Future as _;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::fut::ActorFuture;
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use bytes::Bytes;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use siprox::proxy::{Inbound, Transport};
use siprox::sip::Message;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::error::RuntimeError;
use crate::state::messages::StopListening;
use crate::state::{inc, Refused};
use crate::transport::connection::Connection;
use crate::transport::fdlimit;
use crate::worker::Worker;

/// Accepts or datagrams handled per poll before yielding to the arbiter's other actors.
const POLL_BUDGET: usize = 64;
/// Largest UDP datagram (IPv4 payload limit).
const UDP_MAX: usize = 65_535;
/// Most datagrams taken by one `recvmmsg` (each into its own [`UDP_MAX`] slot of the
/// receive buffer: 1 MiB of address space, of which only the pages written are touched).
const RECV_BATCH: usize = 16;
/// Pause after an accept error that the reserve descriptor cannot clear (ENOBUFS, or
/// EMFILE with the reserve already spent), instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A descriptor held only to be given up at the open-file limit: closing it lets one
/// `accept` succeed, so a waiting client is refused (closed) at once instead of sitting in
/// the backlog until it gives up (the libev/node.js "reserve fd" technique).
fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// EMFILE (this process) or ENFILE (the whole system): out of file descriptors.
fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A source address as std's (None for a family other than IPv4/IPv6).
fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// The socket a listener owns.
pub(crate) enum ListenSocket {
    Stream(TcpListener),
    Udp(Rc<UdpSocket>),
}

/// One listening socket of one worker.
pub struct Listener {
    worker: Rc<Worker>,
    transport: Transport,
    local: SocketAddr,
    socket: ListenSocket,
    /// Receive buffer of a UDP listener: [`RECV_BATCH`] slots of [`UDP_MAX`] bytes, one
    /// per datagram of a `recvmmsg`, reused for every batch.
    buf: Vec<u8>,
    /// The `recvmmsg` headers of a UDP listener, reused for every batch. (nix leaves each
    /// header's address length as the kernel last set it: right, since a socket receives
    /// from one address family only, IPv6 sockets being `IPV6_V6ONLY`.)
    headers: Option<MultiHeaders<SockaddrStorage>>,
    accept_pause: Option<Pin<Box<Sleep>>>,
    /// See [`reserve_fd`]: `None` while spent (given up to refuse a connection, and not
    /// yet reopened because the process is still at its limit). TCP listeners only.
    reserve: Option<std::fs::File>,
    /// The reserve was closed for an accept: the next accepted connection is refused.
    shedding: bool,
}

impl Listener {
    pub(crate) fn new(
        worker: Rc<Worker>,
        transport: Transport,
        local: SocketAddr,
        socket: ListenSocket,
    ) -> Listener {
        let (buf, headers, reserve) = match socket {
            ListenSocket::Udp(_) => (
                vec![0; UDP_MAX * RECV_BATCH],
                Some(MultiHeaders::preallocate(RECV_BATCH, None)),
                None,
            ),
            ListenSocket::Stream(_) => (Vec::new(), None, reserve_fd()),
        };
        Listener {
            worker,
            transport,
            local,
            socket,
            buf,
            headers,
            accept_pause: None,
            reserve,
            shedding: false,
        }
    }

    /// A connection accepted with the reserve descriptor's slot: closed at once, counted,
    /// logged at most once per interval; then the reserve is taken back if it can be.
    fn refuse_at_fd_limit(&mut self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        drop(tcp);
        self.shedding = false;
        self.reserve = reserve_fd();
        let stats = &self.worker.shared.stats;
        inc(&stats.refused_fd_limit);
        let limiter = &stats.fd_limit_warn;
        if let Some(suppressed) =
            limiter.allow(crate::state::table::clock_ms(), fdlimit::WARN_INTERVAL)
        {
            warn!(local = %self.local, %peer, suppressed,
                refused_total = stats.refused_fd_limit.load(std::sync::atomic::Ordering::Relaxed),
                "out of file descriptors: new connections are closed at once; raise the \
                 open-file limit (LimitNOFILE=, ulimit -n) or lower max_connections");
        }
    }

    /// An accept error: at the fd limit, give up the reserve so the next accept takes the
    /// waiting connection (to refuse it); otherwise, or with no reserve left, pause.
    /// Returns true when accepting may go on now.
    fn on_accept_error(&mut self, e: &io::Error) -> bool {
        if is_fd_limit(e) {
            if let Some(r) = self.reserve.take() {
                drop(r);
                self.shedding = true;
                return true;
            }
            // Spent and still at the limit (another worker took the freed slot): pause, and
            // refuse nothing that arrives once descriptors are free again.
            self.shedding = false;
            let stats = &self.worker.shared.stats;
            if let Some(suppressed) = stats
                .fd_limit_warn
                .allow(crate::state::table::clock_ms(), fdlimit::WARN_INTERVAL)
            {
                warn!(local = %self.local, error = %e, suppressed,
                    "out of file descriptors and no reserve left: accepting paused");
            }
        } else {
            warn!(local = %self.local, error = %e, "accept failed");
        }
        false
    }

    fn on_accept(&mut self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let shared = &self.worker.shared;
        inc(&shared.stats.accepted);
        match shared.admit(peer.ip()) {
            Ok(slot) => Connection::start_incoming(
                &self.worker,
                tcp,
                peer,
                self.local,
                self.transport,
                slot,
            ),
            Err(r) => {
                inc(match r {
                    Refused::Total => &shared.stats.refused_total_limit,
                    Refused::PerIp => &shared.stats.refused_ip_limit,
                });
                debug!(%peer, limit = ?r, "connection refused by limit");
                // Dropping the stream closes it.
                drop(tcp);
            }
        }
    }

    fn on_datagram(&mut self, slot: usize, n: usize, peer: SocketAddr) {
        let at = slot * UDP_MAX;
        let data = &self.buf[at..at + n.min(UDP_MAX)];
        let inbound = Inbound {
            transport: Transport::Udp,
            source: peer,
            local: self.local,
            conn: None,
        };
        let snap = self.worker.shared.snapshot.load();
        // The message owns its copy; the receive buffer still holds the bytes for the
        // answer to one that does not parse (no second reference to count).
        match Message::parse_datagram(Bytes::copy_from_slice(data), &snap.limits) {
            Ok(msg) => {
                drop(snap);
                self.worker.on_message(msg, inbound, None);
            }
            Err(e) => {
                let bytes = Bytes::copy_from_slice(data);
                inc(&self.worker.shared.stats.udp_unparsable);
                // Keepalives (RFC 5626 §4.4.1 CRLF over UDP) are not errors worth a log.
                if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
                    debug!(%peer, error = %e, "unparsable datagram");
                }
                let action = snap.proxy.on_unparsable(&bytes, &e, &inbound);
                drop(snap);
                self.worker.execute_simple(action, &inbound);
            }
        }
    }

    /// One `recvmmsg` into the slots of the receive buffer: how many datagrams, each with
    /// its length and source in `got` (0: none waiting, readiness cleared).
    ///
    /// A batch shorter than asked for means the socket had no more (a non-blocking
    /// `recvmmsg` stops at the first receive that would block): its readiness is cleared
    /// then, sparing the receive that would only say EAGAIN. Safe with tokio's
    /// edge-triggered epoll: a datagram arriving after that receive raises a new event.
    fn recv_batch(
        &mut self,
        s: &UdpSocket,
        got: &mut [(usize, Option<SocketAddr>); RECV_BATCH],
    ) -> io::Result<usize> {
        let Some(headers) = self.headers.as_mut() else {
            return Err(io::Error::other("not a UDP listener"));
        };
        let buf = &mut self.buf;
        let mut n = 0;
        let res = s.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buf
                .chunks_mut(UDP_MAX)
                .map(|c| [IoSliceMut::new(c)])
                .collect();
            let res = recvmmsg(
                s.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::empty(),
                None,
            )
            .map_err(io::Error::from)?;
            for (g, m) in got.iter_mut().zip(res) {
                *g = (m.bytes, m.address.and_then(|a| std_addr(&a)));
                n += 1;
            }
            if n < RECV_BATCH {
                // Drained: tokio clears the readiness on WouldBlock.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn poll_socket(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if let Some(p) = &mut self.accept_pause {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.accept_pause = None;
        }
        if self.reserve.is_none()
            && !self.shedding
            && matches!(self.socket, ListenSocket::Stream(_))
        {
            self.reserve = reserve_fd();
        }
        let mut budget = POLL_BUDGET;
        while budget > 0 {
            budget -= 1;
            match &self.socket {
                ListenSocket::Stream(l) => match l.poll_accept(cx) {
                    Poll::Ready(Ok((tcp, peer))) if self.shedding => {
                        self.refuse_at_fd_limit(tcp, peer)
                    }
                    Poll::Ready(Ok((tcp, peer))) => self.on_accept(tcp, peer),
                    Poll::Ready(Err(e)) => {
                        if self.on_accept_error(&e) {
                            continue;
                        }
                        let mut p = Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE));
                        if p.as_mut().poll(cx).is_pending() {
                            self.accept_pause = Some(p);
                            return Poll::Pending;
                        }
                    }
                    Poll::Pending => {
                        // Another worker took the waiting connection: take the reserve back.
                        if self.shedding {
                            self.shedding = false;
                            self.reserve = reserve_fd();
                        }
                        return Poll::Pending;
                    }
                },
                ListenSocket::Udp(s) => {
                    let s = s.clone();
                    match s.poll_recv_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            debug!(local = %self.local, error = %e, "UDP receive error");
                            continue;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                    let mut got = [(0usize, None::<SocketAddr>); RECV_BATCH];
                    // The next pass asks for readiness again: after a drain it registers
                    // the waker without another receive.
                    let n = match self.recv_batch(&s, &mut got) {
                        Ok(n) => n,
                        // ICMP errors reported on the socket: the socket is fine.
                        Err(e) => {
                            debug!(local = %self.local, error = %e, "UDP receive error");
                            continue;
                        }
                    };
                    budget = budget.saturating_sub(n.saturating_sub(1));
                    // The datagrams these produce leave together, when the batch is done.
                    let _round = self.worker.round();
                    for (slot, &(len, peer)) in got[..n].iter().enumerate() {
                        match peer {
                            Some(peer) => self.on_datagram(slot, len, peer),
                            None => {
                                debug!(local = %self.local, "datagram without a source address")
                            }
                        }
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        debug!(transport = %self.transport, local = %self.local, worker = self.worker.index, "listening");
        ctx.spawn(SocketDriver);
    }
}

impl Handler<StopListening> for Listener {
    type Result = ();
    fn handle(&mut self, _msg: StopListening, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Polls the listener's socket inside its actor context.
struct SocketDriver;

impl ActorFuture<Listener> for SocketDriver {
    type Output = ();
    fn poll(
        self: Pin<&mut Self>,
        act: &mut Listener,
        _ctx: &mut Context<Listener>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        act.poll_socket(task)
    }
}

/// A bound socket not yet registered with a worker's runtime (sockets are bound on the
/// starting thread, so that port 0 and bind errors are known before anything runs).
pub(crate) enum StdSocket {
    Stream(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl StdSocket {
    /// Registers the socket with the current (worker) runtime.
    pub(crate) fn into_tokio(self) -> io::Result<ListenSocket> {
        Ok(match self {
            StdSocket::Stream(l) => ListenSocket::Stream(TcpListener::from_std(l)?),
            StdSocket::Udp(u) => ListenSocket::Udp(Rc::new(UdpSocket::from_std(u)?)),
        })
    }
}

fn socket_for(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // An IPv6 listener must not silently take the IPv4 port too (a separate v4 listener
        // would then fail to bind).
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Fails when something else already holds `addr` (SO_REUSEPORT alone would let a second
/// siprox, or anything run by the same user, silently share the port), else returns the
/// address with the port the OS picked when it was 0.
fn probe(addr: SocketAddr, stream: bool) -> io::Result<SocketAddr> {
    let s = if stream {
        socket_for(addr, Type::STREAM, Protocol::TCP)?
    } else {
        socket_for(addr, Type::DGRAM, Protocol::UDP)?
    };
    if stream {
        // Restarts must not fail on the old process's TIME_WAIT connections; a listening
        // socket still conflicts. (On UDP SO_REUSEADDR would allow sharing: not set.)
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP socket address"))
}

/// Binds `count` SO_REUSEPORT sockets on `addr` (one per worker); returns the actual
/// address (port 0 resolved) and the sockets.
pub(crate) fn bind_all(
    transport: Transport,
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<(SocketAddr, Vec<StdSocket>), RuntimeError> {
    let err = |source| RuntimeError::Bind {
        proto: match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        },
        addr,
        source,
    };
    let stream = transport.is_stream();
    let actual = probe(addr, stream).map_err(err)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(bind_one(actual, stream, backlog).map_err(err)?);
    }
    Ok((actual, out))
}

fn bind_one(addr: SocketAddr, stream: bool, backlog: u32) -> io::Result<StdSocket> {
    if stream {
        let s = socket_for(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from their listener (Linux): set once here,
        // not by a setsockopt per connection.
        s.set_nodelay(true)?;
        s.bind(&addr.into())?;
        s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(StdSocket::Stream(s.into()))
    } else {
        let s = socket_for(addr, Type::DGRAM, Protocol::UDP)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        // A deeper receive buffer rides out bursts; the OS caps it (rmem_max), and a
        // refusal is not fatal.
        let _ = s.set_recv_buffer_size(4 * 1024 * 1024);
        s.bind(&addr.into())?;
        Ok(StdSocket::Udp(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream listener's accepted sockets have TCP_NODELAY (inherited from the listening
    /// socket: the connection does not set it again) and a plain accept gives the
    /// listener's own address as the local one (the connection does not ask for it).
    #[test]
    fn accepted_streams_have_nodelay_from_their_listener() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (actual, mut socks) = bind_all(Transport::Tcp, addr, 1, 16).expect("bind");
        let Some(StdSocket::Stream(l)) = socks.pop() else {
            panic!("a stream listener");
        };
        l.set_nonblocking(false).expect("blocking accept");
        let client = std::net::TcpStream::connect(actual).expect("connect");
        let (accepted, peer) = l.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert!(
            accepted.nodelay().expect("nodelay"),
            "TCP_NODELAY inherited"
        );
        assert_eq!(accepted.local_addr().expect("local"), actual);
    }
}
