//! The vocabulary between the stateless proxy core and the runtime: how a message arrived,
//! where siprox itself listens, and what the runtime must do next. Plain data, no I/O.

use std::fmt;
use std::net::SocketAddr;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The token used in Via and in the `transport` URI parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Lower-case form for URI parameters.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Parse a Via transport token or a `transport=` URI parameter (any case).
    pub fn parse(s: &str) -> Option<Transport> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Transport::Tcp)
        } else if s.eq_ignore_ascii_case("tls") {
            Some(Transport::Tls)
        } else {
            None
        }
    }

    /// Stream transports carry Content-Length and keep connections.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The default port (RFC 3261 §19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one TCP/TLS connection for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// How a message reached siprox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub transport: Transport,
    /// The peer's address (source of the datagram or the connection).
    pub source: SocketAddr,
    /// The local address the message arrived on (the listener, or the connection's local end).
    pub local: SocketAddr,
    /// The connection it arrived on (TCP/TLS only).
    pub conn: Option<ConnId>,
}

/// One address siprox listens on, as the proxy core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// `host[:port]` written into Via and Record-Route instead of `addr` (NAT, DNS names).
    pub advertise: Option<String>,
}

/// Where a message must go once any host name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// The host from the Route or Request-URI (name or IP literal, IPv6 without brackets).
    pub host: String,
    /// The explicit port, if any.
    pub port: Option<u16>,
    /// The explicit transport (`transport=` param), if any.
    pub transport: Option<Transport>,
    /// `sips:` URI: TLS is mandatory (RFC 3261 §26.2.2).
    pub secure: bool,
}

/// Where a message goes: one connection and nothing else, or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Only over this connection (an RFC 5626 flow, a response to a Via host name): its
    /// peer has no address siprox could connect to (behind NAT), so once the connection has
    /// closed the message is dropped.
    Flow(ConnId),
    /// To this address; over a stream, through [`Destination::conn`] while it is open, else
    /// through a connection to the address, found or opened (RFC 3261 §18.2.2).
    Addr(SocketAddr),
}

/// A resolved destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub transport: Transport,
    pub target: Target,
    /// The name to send as SNI and verify the certificate against (TLS); `None` for IP
    /// literals, which are verified against the certificate's IP SANs.
    pub server_name: Option<String>,
    /// With [`Target::Addr`] over a stream: the connection to try first (the stream a
    /// request came on, a registered connection). `None` with [`Target::Flow`], which
    /// names its own.
    pub conn: Option<ConnId>,
}

impl Destination {
    /// To `addr`, no connection preferred.
    pub fn addr(transport: Transport, addr: SocketAddr) -> Destination {
        Destination {
            transport,
            target: Target::Addr(addr),
            server_name: None,
            conn: None,
        }
    }

    /// Over connection `conn` only.
    pub fn flow(transport: Transport, conn: ConnId) -> Destination {
        Destination {
            transport,
            target: Target::Flow(conn),
            server_name: None,
            conn: None,
        }
    }

    /// The address, unless this is a flow.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.target {
            Target::Addr(a) => Some(a),
            Target::Flow(_) => None,
        }
    }

    /// The connection to send over first: the flow's, or the preferred one.
    pub fn connection(&self) -> Option<ConnId> {
        match self.target {
            Target::Flow(c) => Some(c),
            Target::Addr(_) => self.conn,
        }
    }
}

/// What the runtime must do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes (a locally generated response, or a forwarded response).
    Send {
        dest: Destination,
        bytes: bytes::Bytes,
    },
    /// Resolve `hop`, whose host is a name (RFC 3263 DNS, off the worker thread), then call
    /// [`Proxy::forward_request`](super::Proxy::forward_request) with the result. Never for
    /// an IP literal: the core resolves those itself and answers with `Send`.
    Forward { hop: NextHop },
    /// Do nothing more; the reason is for logs and metrics.
    Drop { reason: &'static str },
}
