//! Getting a connection open: the TCP connect of an outgoing connection, the TLS handshake
//! in either direction (bounded by the handshake timeout, or the server domain's own once
//! the ClientHello picked it), and the TLS facts read once after it. Runs as a future in
//! the `Connection` actor's context; must never block and never outlive its timeout.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use openssl::ssl::Ssl;
use siprox::proxy::{Destination, Transport};
use siprox::tls::TlsFacts;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_openssl::SslStream;

use crate::state::messages::CloseReason;
use crate::state::{ConnSettings, TlsDomains};
use crate::tls;
use crate::tls::HandshakeFailure;

/// Why a connect or handshake failed, with OpenSSL's or the socket's text for the log.
#[derive(Debug)]
pub(super) enum Failed {
    /// The TCP connect of an outgoing connection.
    Connect(String),
    /// The TLS handshake, its kind classified where it failed.
    Handshake(HandshakeFailure, String),
}

impl Failed {
    pub(super) fn reason(&self) -> CloseReason {
        match self {
            Failed::Connect(_) => CloseReason::ConnectFailed,
            Failed::Handshake(..) => CloseReason::HandshakeFailed,
        }
    }

    /// A handshake that failed before it began (no `Ssl` could be made).
    fn setup(e: impl ToString) -> Failed {
        Failed::Handshake(HandshakeFailure::Other, e.to_string())
    }
}

pub(super) enum Io {
    Tcp(TcpStream),
    Tls(SslStream<TcpStream>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Io {
    pub(super) fn poll_write(
        &mut self,
        cx: &mut TaskContext<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    pub(super) fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to `peer` (the table key's address: a flow has none, so it never gets here)
/// within `connect_timeout`, then, for TLS, handshakes with the client domain that `peer`
/// and `dest`'s server name select.
pub(super) async fn connect_out(
    peer: SocketAddr,
    dest: Box<Destination>,
    domains: Arc<TlsDomains>,
    s: ConnSettings,
    verify_name: Option<String>,
) -> Result<Established, Failed> {
    let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(peer)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(Failed::Connect(e.to_string())),
        Err(_) => return Err(Failed::Connect("connect timeout".to_owned())),
    };
    let _ = tcp.set_nodelay(true);
    if dest.transport != Transport::Tls {
        return Ok(Established::plain(Io::Tcp(tcp)));
    }
    let (mut ssl, domain) = domains
        .client_ssl(peer, dest.server_name.as_deref())
        .map_err(Failed::setup)?;
    // Another cluster node reached by a host name: its certificate must name that host,
    // on top of the domain's own checks (the cluster CA).
    if let Some(n) = &verify_name {
        ssl.param_mut().set_host(n).map_err(Failed::setup)?;
    }
    let timeout = domain.handshake_timeout.unwrap_or(s.handshake_timeout);
    let sni = domain
        .ctx
        .server_name
        .clone()
        .or_else(|| dest.server_name.clone());
    let stream = match handshake(ssl, tcp, timeout, false).await {
        Ok(s) => s,
        // Which domain, name and peer: what an operator needs to fix a refused carrier.
        Err(Failed::Handshake(kind, why)) => {
            let name = verify_name.as_deref().or(sni.as_deref()).unwrap_or("-");
            return Err(Failed::Handshake(
                kind,
                format!(
                    "{why} (client domain `{}`, server name {name}, peer {peer})",
                    domain.name
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let facts = tls::facts(stream.ssl(), Some(&domain.name), sni, None);
    Ok(Established {
        io: Io::Tls(stream),
        facts: Some(Arc::new(facts)),
        send_timeout: domain.send_timeout,
    })
}

/// The server side of an accepted TLS stream: `ssl` came from the dispatch context, whose
/// ClientHello callback picks the domain.
pub(super) async fn accept_tls(
    ssl: Result<Ssl, openssl::error::ErrorStack>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Established, Failed> {
    let ssl = ssl.map_err(Failed::setup)?;
    let stream = handshake(ssl, tcp, timeout, true).await?;
    // Shared with the worker's other connections of the same domain, version and cipher
    // when the peer sent no certificate: one allocation less per idle connection.
    let (facts, send_timeout) = match tls::chosen(stream.ssl()) {
        Some(c) => (
            tls::shared_facts(
                stream.ssl(),
                Some(&c.domain.name),
                c.sni.clone(),
                Some(c.domain.ctx.cert.clone()),
            ),
            c.domain.send_timeout,
        ),
        None => (Arc::new(tls::facts(stream.ssl(), None, None, None)), None),
    };
    Ok(Established {
        io: Io::Tls(stream),
        facts: Some(facts),
        send_timeout,
    })
}

/// A TLS handshake bounded by `timeout`, or by the server domain's own `handshake_timeout`
/// (from the start of the handshake) once the ClientHello has picked the domain.
async fn handshake(
    ssl: Ssl,
    tcp: TcpStream,
    timeout: Duration,
    server: bool,
) -> Result<SslStream<TcpStream>, Failed> {
    let mut s = SslStream::new(ssl, tcp).map_err(Failed::setup)?;
    let start = Instant::now();
    let mut sleep = Box::pin(tokio::time::sleep_until(start + timeout));
    let mut adjusted = false;
    let res = std::future::poll_fn(|cx| {
        let r = if server {
            Pin::new(&mut s).poll_accept(cx)
        } else {
            Pin::new(&mut s).poll_connect(cx)
        };
        if let Poll::Ready(r) = r {
            return Poll::Ready(Some(r));
        }
        if server && !adjusted {
            // Looked up until the ClientHello has picked the domain, then never again.
            if let Some(c) = tls::chosen(s.ssl()) {
                adjusted = true;
                if let Some(t) = c.domain.handshake_timeout {
                    sleep.as_mut().reset(start + t);
                }
            }
        }
        sleep.as_mut().poll(cx).map(|_| None)
    })
    .await;
    match res {
        Some(Ok(())) => Ok(s),
        Some(Err(e)) => Err(Failed::Handshake(
            HandshakeFailure::of(s.ssl(), &e),
            e.to_string(),
        )),
        None => Err(Failed::Handshake(
            HandshakeFailure::Timeout,
            "handshake timeout".to_owned(),
        )),
    }
}

/// What a finished connect/handshake hands to the actor.
pub(super) struct Established {
    pub(super) io: Io,
    pub(super) facts: Option<Arc<TlsFacts>>,
    /// The TLS domain's `send_timeout`, overriding `[connections]`.
    pub(super) send_timeout: Option<Duration>,
}

impl Established {
    pub(super) fn plain(io: Io) -> Established {
        Established {
            io,
            facts: None,
            send_timeout: None,
        }
    }
}
