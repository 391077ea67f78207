//! The HTTPS listener of `[management]`: TLS that requires a client certificate verified
//! against the management CA, then the allow-list, then each framed request handed to the
//! `Rpc` actor. The protocol work (HTTP framing, JSON-RPC, XML-RPC, faults) is the core's
//! `siprox::rpc`; here are only sockets and timeouts. Must never let a management client
//! slow the data plane: nothing here runs on a worker and every read has a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, Addr, Recipient};
use bytes::BytesMut;
use openssl::ssl::{Ssl, SslContext};
use siprox::config::{Config, ManagementConfig};
use siprox::rpc::{AllowList, HttpFramer, HttpLimits, HttpRequest, HttpResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::RuntimeError;
use crate::mgmt::methods::ReloadGate;
use crate::mgmt::rpc::Rpc;
use crate::state::messages::{RpcRequest as Request, Shutdown};
use crate::state::Shared;

/// A prepared management listener: TLS context built and socket bound, before the actor
/// system starts, so that a bad certificate or a taken port is a startup error.
pub struct Management {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    ctx: SslContext,
    cfg: ManagementConfig,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// `None` when `[management] enabled = false`.
    pub fn prepare(config: &Config, base: &Path) -> Result<Option<Management>, RuntimeError> {
        let cfg = &config.management;
        if !cfg.enabled {
            return Ok(None);
        }
        let allow = AllowList::parse(&cfg.allow)
            .map_err(|e| RuntimeError::Config(format!("[management] allow: {}", e.join("; "))))?;
        if allow.is_empty() {
            warn!("[management] allow is empty: every RPC call will be refused as forbidden");
        }
        let now = crate::tls::unix_now();
        let built = crate::reload::files::build_server(
            "management",
            &cfg.server_tls(),
            base,
            &crate::reload::files::process_env,
            now,
        )
        .map_err(|e| RuntimeError::Config(format!("[management] TLS: {e}")))?;
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| RuntimeError::Bind {
                proto: "https",
                addr: cfg.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| RuntimeError::Io {
                what: "management listener".to_owned(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RuntimeError::Io {
            what: "management listener".to_owned(),
            source,
        })?;
        Ok(Some(Management {
            listener,
            addr,
            ctx: built.ctx,
            cfg: cfg.clone(),
        }))
    }

    /// Where the listener is bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the `Rpc` actor and the accept loop on the current (control) arbiter.
    pub fn start(self, shared: Arc<Shared>, control: Recipient<Shutdown>) -> Addr<Rpc> {
        let Management {
            listener,
            addr,
            ctx,
            cfg,
        } = self;
        let rpc = Rpc {
            shared: shared.clone(),
            control,
            started: SystemTime::now(),
            reload: ReloadGate::new(cfg.reload_min_interval.get()),
            killing: false,
            cluster: None,
        }
        .start();
        let server = Arc::new(Server {
            ctx,
            shared,
            limits: HttpLimits {
                max_body: cfg.max_request_size,
                ..HttpLimits::default()
            },
            request_timeout: cfg.request_timeout.get(),
            idle_timeout: cfg.idle_timeout.get(),
            handshake_timeout: cfg.handshake_timeout.get(),
            max_connections: cfg.max_connections,
            open: AtomicUsize::new(0),
            pending: std::sync::Mutex::new(std::collections::VecDeque::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            rpc: rpc.clone(),
        });
        actix::spawn(accept_loop(listener, server));
        info!(%addr, "management listener (JSON-RPC, XML-RPC, /metrics) started");
        rpc
    }
}

/// What every management connection shares.
struct Server {
    ctx: SslContext,
    /// `[management] allow` is read from the live snapshot at each request: a reload that
    /// removes a caller revokes it at once, on its open connections too.
    shared: Arc<Shared>,
    limits: HttpLimits,
    request_timeout: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    max_connections: usize,
    /// Authenticated (handshake done) connections.
    open: AtomicUsize,
    /// Connections still in their handshake, oldest first: at `max_connections` the oldest
    /// is aborted for the newcomer, so idle sockets cannot hold every slot.
    pending: std::sync::Mutex<std::collections::VecDeque<(u64, tokio::task::AbortHandle)>>,
    next_id: std::sync::atomic::AtomicU64,
    rpc: Addr<Rpc>,
}

impl Server {
    fn handshake_done(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|(i, _)| *i != id);
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, server: Arc<Server>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "management listener cannot be registered: RPC disabled");
            return;
        }
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "management accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if server.open.load(Ordering::Acquire) >= server.max_connections {
            debug!(%peer, "management connection refused: max_connections");
            continue;
        }
        let id = server.next_id.fetch_add(1, Ordering::Relaxed);
        let s = server.clone();
        let task = actix::spawn(
            async move {
                serve_connection(&s, tcp, id).await;
            }
            .instrument(info_span!("mgmt", %peer)),
        );
        let evicted = match server.pending.lock() {
            Ok(mut p) => {
                p.push_back((id, task.abort_handle()));
                if p.len() > server.max_connections {
                    p.pop_front()
                } else {
                    None
                }
            }
            Err(_) => None,
        };
        if let Some((_, oldest)) = evicted {
            debug!("management: oldest unauthenticated connection dropped for a new one");
            oldest.abort();
        }
    }
}

/// Counts an authenticated connection while it lives.
struct OpenSlot<'a>(&'a Server);

impl Drop for OpenSlot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One management connection: handshake, identity, then keep-alive requests.
async fn serve_connection(server: &Server, tcp: TcpStream, id: u64) {
    let _ = tcp.set_nodelay(true);
    let ssl = match Ssl::new(&server.ctx) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "management: cannot create a TLS session");
            return;
        }
    };
    let Ok(mut tls) = SslStream::new(ssl, tcp) else {
        return;
    };
    let handshake = tokio::time::timeout(server.handshake_timeout, Pin::new(&mut tls).accept());
    let done = handshake.await;
    server.handshake_done(id);
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "management handshake failed");
            return;
        }
        Err(_) => {
            debug!("management handshake timed out");
            return;
        }
    }
    if server.open.fetch_add(1, Ordering::AcqRel) >= server.max_connections {
        server.open.fetch_sub(1, Ordering::AcqRel);
        debug!("management connection refused after its handshake: max_connections");
        return;
    }
    let _slot = OpenSlot(server);
    // Verified by OpenSSL against the management CA (FAIL_IF_NO_PEER_CERT): only the
    // allow-list is left to check.
    let peer = tls
        .ssl()
        .peer_certificate()
        .map(|c| siprox::tls::cert_facts(&c));
    let allowed = |peer| {
        // Checked by the reload before publishing; an entry that does not parse allows nobody.
        AllowList::parse(&server.shared.snapshot.load().config.management.allow)
            .is_ok_and(|a| a.permits(peer))
    };
    let who = peer
        .as_ref()
        .map_or_else(String::new, |c| c.subject.line.clone());
    let caller = match tls.get_ref().peer_addr() {
        Ok(a) => format!("{a} {who}"),
        Err(_) => who.clone(),
    };
    if !allowed(peer.as_ref()) {
        warn!(subject = %who, "management client certificate not on the allow-list");
    }
    let framer = HttpFramer::new(server.limits);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let req = match read_request(server, &framer, &mut tls, &mut buf).await {
            ReadResult::Request(r) => r,
            ReadResult::Closed => return,
            ReadResult::Answer(resp) => {
                let _ = write_response(&mut tls, &resp).await;
                return;
            }
        };
        debug!(method = %req.method, target = %req.target, subject = %who, "management request");
        let resp = match server
            .rpc
            .send(Request {
                req: Box::new(req),
                allowed: allowed(peer.as_ref()),
                caller: caller.clone(),
                only: None,
            })
            .await
        {
            Ok(r) => r,
            Err(_) => {
                let mut r = HttpResponse::text(503, "shutting down\n");
                r.close = true;
                r
            }
        };
        if write_response(&mut tls, &resp).await.is_err() || resp.close {
            return;
        }
    }
}

enum ReadResult {
    Request(HttpRequest),
    Closed,
    /// Answer this (an error) and close.
    Answer(HttpResponse),
}

/// Reads until one request is framed: `idle_timeout` for its first byte, then
/// `request_timeout` for the whole of it (408 when it runs out mid-request).
async fn read_request(
    server: &Server,
    framer: &HttpFramer,
    tls: &mut SslStream<TcpStream>,
    buf: &mut BytesMut,
) -> ReadResult {
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + server.request_timeout);
    loop {
        match framer.next_request(buf) {
            Ok(Some(r)) => return ReadResult::Request(r),
            Ok(None) => {}
            Err(e) => return ReadResult::Answer(e.response()),
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => server.idle_timeout,
        };
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout(wait, tls.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return ReadResult::Closed,
            Ok(Ok(_)) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + server.request_timeout);
                }
            }
            Err(_) if deadline.is_some() && !buf.is_empty() => {
                let mut r = HttpResponse::text(408, "request not received in time\n");
                r.close = true;
                return ReadResult::Answer(r);
            }
            Err(_) => return ReadResult::Closed,
        }
    }
}

async fn write_response(
    tls: &mut SslStream<TcpStream>,
    resp: &HttpResponse,
) -> std::io::Result<()> {
    // Bounded too: a client that stops reading must not pin the task forever.
    let w = async {
        tls.write_all(&resp.to_bytes()).await?;
        tls.flush().await?;
        if resp.close {
            let _ = tls.shutdown().await;
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), w).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
