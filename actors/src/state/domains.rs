//! The TLS domains as a snapshot holds them: each server and client domain with its built
//! context, and the tables that pick them. Plain data, built by `tls::domains` and read by
//! every handshake; must never read a file or call OpenSSL beyond reading what it holds.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use siprox::tls::{
    ClientContext, ClientMatcher, ClientSpec, ServerContext, ServerMatcher, ServerSpec,
};

/// Name of the default domains (`[tls]`) in logs, facts and status.
pub const DEFAULT_DOMAIN: &str = "default";

/// The server side of one TLS domain, as the handshake uses it.
pub struct ServerDomain {
    /// Domain name (`[domains.<name>]`, or [`DEFAULT_DOMAIN`]).
    pub name: Arc<str>,
    /// The built context; shared (`Arc::ptr_eq`) with the previous snapshot when unchanged.
    pub ctx: Arc<ServerContext>,
    /// SNI names and listeners this domain answers on.
    pub spec: ServerSpec,
    pub handshake_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    /// Most live connections; 0 = only the global limit.
    pub max_connections: usize,
    /// Live connections of this domain; kept across reloads (by name) so a reload does not
    /// reset the limit.
    pub open: Arc<AtomicUsize>,
    /// Every file the domain was built from (resolved), for the watcher and the status.
    pub sources: Vec<PathBuf>,
}

impl std::fmt::Debug for ServerDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDomain")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// The client side of one TLS domain.
pub struct ClientDomain {
    pub name: Arc<str>,
    pub ctx: Arc<ClientContext>,
    pub spec: ClientSpec,
    pub handshake_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub sources: Vec<PathBuf>,
    /// `accept_requests`: new requests from the server over the connection siprox opened.
    pub accept_requests: bool,
}

impl std::fmt::Debug for ClientDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDomain")
            .field("name", &self.name)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// Every TLS domain of one snapshot and the tables that pick them. A live connection keeps
/// the context it was accepted with (OpenSSL reference-counts it), so replacing this never
/// touches it.
#[derive(Debug)]
pub struct TlsDomains {
    /// Server domains, in the matcher's index order.
    pub servers: Vec<Arc<ServerDomain>>,
    pub matcher: ServerMatcher,
    /// `[tls]`, when there is a tls listener and `default_server` is on.
    pub default_server: Option<Arc<ServerDomain>>,
    pub clients: Vec<Arc<ClientDomain>>,
    pub client_matcher: ClientMatcher,
    /// `[tls]` client side: used when no client domain matches.
    pub default_client: Arc<ClientDomain>,
}

impl TlsDomains {
    /// What identifies this set of domains for "did anything change": names, digests and
    /// matching specs, in order.
    pub fn fingerprint(&self) -> Vec<(String, u64, String)> {
        let mut v: Vec<(String, u64, String)> = self
            .servers
            .iter()
            .chain(self.default_server.iter())
            .map(|d| {
                (
                    d.name.to_string(),
                    d.ctx.digest,
                    format!("server {:?}", d.spec),
                )
            })
            .collect();
        v.extend(
            self.clients
                .iter()
                .chain(std::iter::once(&self.default_client))
                .map(|d| {
                    (
                        d.name.to_string(),
                        d.ctx.digest,
                        format!("client {:?}", d.spec),
                    )
                }),
        );
        v
    }
}
