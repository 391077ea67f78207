//! Which domain a TLS connection gets: the dispatch context whose ClientHello callback
//! picks the server domain (SNI, then listener, then default) and applies its policy, and
//! the client domain of an outgoing connection. The callback runs on workers: it must
//! never block, allocate beyond the SNI, or panic.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ClientHelloResponse, Ssl, SslAlert, SslContext, SslContextBuilder, SslContextRef, SslMethod,
    SslMode, SslRef, SslVerifyMode, SslVersion,
};
use siprox::tls::{parse_server_name, Selected};

use crate::state::{ClientDomain, ServerDomain, TlsDomains};
use crate::tls::failure::Refusal;
use crate::tls::sessions::client_session_key;

impl TlsDomains {
    /// A new client-side `Ssl` for a connection to `addr` (named `server_name`), with the client domain chosen by
    /// destination address, then server name (exact, wildcard), then the default. SNI is the
    /// domain's `server_name`, else the destination's name (none for an address, as RFC 6066
    /// requires); the certificate is checked against that name (DNS SAN) or the address (IP
    /// SAN) when `verify_hostname` is on.
    pub fn client_ssl(
        &self,
        addr: SocketAddr,
        server_name: Option<&str>,
    ) -> Result<(Ssl, Arc<ClientDomain>), ErrorStack> {
        let domain = match self.client_matcher.select(addr, server_name) {
            Selected::Domain(i) => self.clients.get(i).unwrap_or(&self.default_client).clone(),
            Selected::Default => self.default_client.clone(),
        };
        let c = &domain.ctx;
        let mut ssl = Ssl::new(&c.ctx)?;
        ssl.set_connect_state();
        let name = c
            .server_name
            .clone()
            .or_else(|| server_name.map(str::to_owned));
        match &name {
            Some(n) if n.parse::<IpAddr>().is_err() => {
                ssl.set_hostname(n)?;
                if c.verify_hostname {
                    ssl.param_mut().set_host(n)?;
                }
            }
            _ => {
                if c.verify_hostname {
                    let ip = name
                        .as_deref()
                        .and_then(|n| n.parse::<IpAddr>().ok())
                        .unwrap_or(addr.ip());
                    ssl.param_mut().set_ip(ip)?;
                }
            }
        }
        if !c.verify_server {
            ssl.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(sessions), Some(idx)) = (&c.sessions, client_session_key()) {
            // The same destination and name as before: offer the session it gave us.
            let dest_key = format!("{} {}", addr, name.as_deref().unwrap_or(""));
            if let Some(session) = sessions.take(&dest_key) {
                crate::tls::ffi::offer_session(&mut ssl, &session)?;
            }
            ssl.set_ex_data(idx, dest_key);
        }
        Ok((ssl, domain))
    }
}

/// What the dispatch callback needs, attached to each accepted `Ssl` (ex data): the domains
/// of the snapshot taken at accept time and the listener the connection arrived on; and
/// what it chose, in the same allocation (one ex-data box per connection instead of two:
/// idle connections must be cheap). The callback takes the domains out once it has
/// chosen: a connection that lives for days must not keep every domain of its snapshot
/// alive through later reloads (it keeps its own domain, in [`Chosen`]).
struct DispatchInput {
    domains: Option<Arc<TlsDomains>>,
    listener: SocketAddr,
    /// Why the callback refused the ClientHello, for the handshake's failure kind.
    refused: Option<Refusal>,
    chosen: Option<Chosen>,
}

/// What the dispatch callback chose, attached to the `Ssl` for the connection to read after
/// the handshake. Dropped with the `Ssl`, which gives the domain's connection slot back.
pub struct Chosen {
    pub domain: Arc<ServerDomain>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    _slot: DomainSlot,
}

/// One live connection counted against a domain's `max_connections`.
struct DomainSlot(Arc<AtomicUsize>);

impl Drop for DomainSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn input_index() -> Option<Index<Ssl, DispatchInput>> {
    static I: OnceLock<Option<Index<Ssl, DispatchInput>>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The dispatch context every tls listener accepts with. It holds the session ticket keys
/// (OpenSSL takes tickets from the context a connection started with), so it lives as long
/// as the process: a reload never invalidates tickets. Its ClientHello callback picks the
/// domain (see `dispatch_hello`); it has no certificate of its own.
pub fn dispatch_context() -> Result<SslContext, ErrorStack> {
    dispatch_context_with(None)
}

/// The dispatch context; with `tickets` (a cluster), its tickets are made and read with the
/// cluster's shared key ring instead of this process's own keys, so that a client resumes
/// on any node.
pub fn dispatch_context_with(
    tickets: Option<Arc<crate::tls::ticket_keys::TicketRing>>,
) -> Result<SslContext, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    // An `Ssl` keeps the mode of the context it was made from (this one) through the switch
    // to its domain's. NO_AUTO_CHAIN: the chain a domain sends is its certificate file, as
    // built; without it OpenSSL tries to complete a chain of one certificate on every
    // handshake (an X509_STORE_CTX and a failed X509_verify_cert against the domain's
    // context store, which siprox never fills: CAs go to the verify store), for nothing.
    b.set_mode(SslMode::RELEASE_BUFFERS | SslMode::NO_AUTO_CHAIN);
    // One TLS 1.3 ticket per connection instead of OpenSSL's two: a SIP client keeps one
    // connection, and a connection that resumes gets a fresh one. Each ticket costs a
    // session serialised three times, its encryption and MAC, and a write of its own
    // (issue 18). `num_tickets` is the `Ssl`'s, taken from this context at `Ssl::new` (the
    // switch to the domain's context keeps it); a domain without resumption sets 0.
    b.set_num_tickets(1)?;
    // Read what the socket holds in one go instead of a record header (5 bytes) and then
    // its body: half the reads of a handshake (ClientHello, then ChangeCipherSpec and
    // Finished in one segment) and of every message after it. The buffer is OpenSSL's
    // usual one, still released when empty (RELEASE_BUFFERS).
    b.set_read_ahead(true);
    // Every connection starts with these groups (OpenSSL copies them into the `Ssl`); a
    // domain with others sets its own in the ClientHello callback. No finite-field groups
    // by default: `DEFAULT_GROUPS` says why.
    b.set_groups_list(siprox::config::DEFAULT_GROUPS)?;
    b.set_session_id_context(b"sx-dispatch")?;
    b.set_client_hello_callback(dispatch_hello);
    if let Some(ring) = tickets {
        crate::tls::ticket_keys::install(&mut b, ring)?;
    }
    Ok(b.build())
}

/// A new server-side `Ssl` for a connection accepted on `listener`, dispatched among
/// `domains` when its ClientHello arrives.
pub fn server_ssl(
    dispatch: &SslContextRef,
    domains: Arc<TlsDomains>,
    listener: SocketAddr,
) -> Result<Ssl, ErrorStack> {
    let mut ssl = Ssl::new(dispatch)?;
    crate::tls::ticket_keys::attach(dispatch, &mut ssl);
    let idx = input_index().ok_or_else(ErrorStack::get)?;
    ssl.set_ex_data(
        idx,
        DispatchInput {
            domains: Some(domains),
            listener,
            refused: None,
            chosen: None,
        },
    );
    Ok(ssl)
}

/// What the dispatch callback chose for this connection (after the handshake).
pub fn chosen(ssl: &SslRef) -> Option<&Chosen> {
    ssl.ex_data(input_index()?)?.chosen.as_ref()
}

/// Why the dispatch callback refused this connection's ClientHello, if it did.
pub(crate) fn refusal(ssl: &SslRef) -> Option<Refusal> {
    ssl.ex_data(input_index()?)?.refused
}

/// Records the callback's refusal and fails the ClientHello (with the alert already set).
fn refuse(ssl: &mut SslRef, why: Refusal) -> Result<ClientHelloResponse, ErrorStack> {
    if let Some(input) = input_index().and_then(|i| ssl.ex_data_mut(i)) {
        input.refused = Some(why);
    }
    Err(ErrorStack::get())
}

/// The ClientHello callback: SNI from the raw extension (OpenSSL has not parsed it yet),
/// the domain from the matcher, then switch the context and apply on the `Ssl` what the
/// switch does not carry (version bounds, verify mode and depth, tickets). DESIGN.md "TLS
/// domains" lists what was measured.
/// Moves a connection from the dispatch context to `domain`'s, and applies on the `Ssl`
/// what the switch does not carry.
fn switch_to(ssl: &mut SslRef, domain: &ServerDomain) -> Result<(), ErrorStack> {
    ssl.set_ssl_context(&domain.ctx.ctx)?;
    domain.ctx.policy.apply(ssl)?;
    if let Some(groups) = &domain.ctx.groups {
        crate::tls::ffi::set_groups_list(ssl, groups)?;
    }
    if !domain.ctx.policy.session_resumption {
        crate::tls::ffi::disable_resumption(ssl);
    }
    Ok(())
}

fn dispatch_hello(
    ssl: &mut SslRef,
    alert: &mut SslAlert,
) -> Result<ClientHelloResponse, ErrorStack> {
    // A HelloRetryRequest brings a second ClientHello: keep the first choice (and its slot).
    if let Some(c) = chosen(ssl) {
        let d = c.domain.clone();
        switch_to(ssl, &d)?;
        return Ok(ClientHelloResponse::SUCCESS);
    }
    let Some(input) = input_index().and_then(|i| ssl.ex_data_mut(i)) else {
        return Err(ErrorStack::get());
    };
    let (Some(domains), listener) = (input.domains.take(), input.listener) else {
        return Err(ErrorStack::get());
    };
    let sni = match crate::tls::ffi::client_hello_ext(ssl, crate::tls::ffi::EXT_SERVER_NAME) {
        None => None,
        Some(raw) => match parse_server_name(raw) {
            Ok(n) => n.map(str::to_owned),
            Err(_) => {
                *alert = SslAlert::DECODE_ERROR;
                return Err(ErrorStack::get());
            }
        },
    };
    let domain = match domains.matcher.select(listener, sni.as_deref()) {
        Selected::Domain(i) => domains.servers.get(i).cloned(),
        Selected::Default => domains.default_server.clone(),
    };
    let Some(domain) = domain else {
        *alert = SslAlert::UNRECOGNIZED_NAME;
        return refuse(ssl, Refusal::UnrecognizedName);
    };
    let open = domain.open.fetch_add(1, Ordering::AcqRel);
    let slot = DomainSlot(domain.open.clone());
    if domain.max_connections != 0 && open >= domain.max_connections {
        // Refused with OpenSSL's default alert (internal_error); the slot is given back.
        return refuse(ssl, Refusal::DomainLimit);
    }
    switch_to(ssl, &domain)?;
    let Some(input) = input_index().and_then(|i| ssl.ex_data_mut(i)) else {
        return Err(ErrorStack::get());
    };
    input.chosen = Some(Chosen {
        domain,
        sni,
        _slot: slot,
    });
    Ok(ClientHelloResponse::SUCCESS)
}
