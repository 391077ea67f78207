//! RFC 3263 resolution of a next hop's host name (NAPTR -> SRV -> A/AAAA) with an async
//! resolver that runs as a task on the worker, so a slow DNS server delays only the one
//! message waiting for it. Must never block a worker thread: the resolver is built (it
//! reads /etc/resolv.conf and /etc/hosts) on a blocking thread, and the getaddrinfo
//! fallback runs there too. IP literals never come here (the core resolves them itself).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use siprox::proxy::{Destination, NextHop, Transport};
use tracing::debug;

use crate::worker::Worker;

/// The async resolver type (one per worker: its sockets belong to that worker's runtime).
pub(crate) type Resolver = TokioResolver;

/// Upper bound on a whole resolution (NAPTR + SRV + address lookups).
const RESOLVE_DEADLINE: Duration = Duration::from_secs(8);

/// Resolves `hop` to one destination, or `None` (the caller answers 503).
pub(crate) async fn resolve(worker: &Rc<Worker>, hop: &NextHop) -> Option<Destination> {
    match tokio::time::timeout(RESOLVE_DEADLINE, resolve_inner(worker, hop)).await {
        Ok(d) => d,
        Err(_) => {
            debug!(host = %hop.host, "DNS resolution timed out");
            None
        }
    }
}

/// The transport a URI forces: `sips` means TLS (RFC 3261 §26.2.2), else `transport=`.
fn forced_transport(hop: &NextHop) -> Option<Transport> {
    if hop.secure {
        Some(Transport::Tls)
    } else {
        hop.transport
    }
}

/// RFC 6761 §6.3: `localhost` and names under it are the loopback, without asking DNS.
fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h.eq_ignore_ascii_case("localhost")
        || (h.len() > 10 && h[h.len() - 10..].eq_ignore_ascii_case(".localhost"))
}

/// The SRV owner name for a transport (RFC 3263 §4.1).
pub(crate) fn srv_name(t: Transport, host: &str) -> String {
    match t {
        Transport::Udp => format!("_sip._udp.{host}"),
        Transport::Tcp => format!("_sip._tcp.{host}"),
        Transport::Tls => format!("_sips._tcp.{host}"),
    }
}

/// The transport of a NAPTR service field (RFC 3263 §4.1), if siprox supports it.
pub(crate) fn naptr_service(service: &[u8]) -> Option<Transport> {
    if service.eq_ignore_ascii_case(b"SIP+D2U") {
        Some(Transport::Udp)
    } else if service.eq_ignore_ascii_case(b"SIP+D2T") {
        Some(Transport::Tcp)
    } else if service.eq_ignore_ascii_case(b"SIPS+D2T") {
        Some(Transport::Tls)
    } else {
        None
    }
}

fn destination(t: Transport, addr: SocketAddr, host: &str) -> Destination {
    Destination {
        // RFC 5922: the certificate must name the SIP domain, not the SRV target.
        server_name: Some(host.trim_end_matches('.').to_owned()),
        ..Destination::addr(t, addr)
    }
}

async fn resolve_inner(worker: &Rc<Worker>, hop: &NextHop) -> Option<Destination> {
    let host = hop.host.as_str();
    let forced = forced_transport(hop);
    if is_localhost(host) {
        let t = forced.unwrap_or(Transport::Udp);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = hop.port.unwrap_or(t.default_port());
        return Some(destination(t, SocketAddr::new(ip, port), host));
    }
    let resolver = resolver(worker).await;
    // RFC 3263 §4.2: an explicit port means no SRV: addresses only.
    if let Some(port) = hop.port {
        let t = forced.unwrap_or(Transport::Udp);
        let addr = lookup_addr(resolver.as_ref(), host, port).await?;
        return Some(destination(t, addr, host));
    }
    let mut candidates: Vec<(Transport, String)> = Vec::new();
    if let Some(r) = &resolver {
        if forced.is_none() || hop.secure {
            candidates = naptr(r, host, hop).await;
        }
    }
    if candidates.is_empty() {
        candidates = match forced {
            Some(t) => vec![(t, srv_name(t, host))],
            None => [Transport::Udp, Transport::Tcp, Transport::Tls]
                .into_iter()
                .map(|t| (t, srv_name(t, host)))
                .collect(),
        };
    }
    if let Some(r) = &resolver {
        for (t, name) in &candidates {
            let Ok(srv) = r.srv_lookup(name.as_str()).await else {
                continue;
            };
            let mut records: Vec<_> = srv.iter().collect();
            // Lowest priority first; among equals the heaviest (a stateless proxy has no
            // per-transaction state to spread load randomly and retry on).
            records.sort_by_key(|s| (s.priority(), std::cmp::Reverse(s.weight())));
            for s in records {
                let target = s.target().to_utf8();
                if let Some(addr) = lookup_addr(Some(r), &target, s.port()).await {
                    return Some(destination(*t, addr, host));
                }
            }
        }
    }
    // No NAPTR, no SRV: the name's own addresses on the default port (RFC 3263 §4.2).
    let t = forced.unwrap_or(Transport::Udp);
    let addr = lookup_addr(resolver.as_ref(), host, t.default_port()).await?;
    Some(destination(t, addr, host))
}

/// NAPTR records of `host` that lead to SRV for a transport siprox supports, best first.
async fn naptr(r: &Resolver, host: &str, hop: &NextHop) -> Vec<(Transport, String)> {
    let Ok(lookup) = r.lookup(host, RecordType::NAPTR).await else {
        return Vec::new();
    };
    let mut found: Vec<(u16, u16, Transport, String)> = lookup
        .iter()
        .filter_map(|rd| match rd {
            RData::NAPTR(n) if n.flags().eq_ignore_ascii_case(b"s") => {
                let t = naptr_service(n.services())?;
                if hop.secure && t != Transport::Tls {
                    return None;
                }
                if hop.transport.is_some_and(|want| want != t) && !hop.secure {
                    return None;
                }
                Some((n.order(), n.preference(), t, n.replacement().to_utf8()))
            }
            _ => None,
        })
        .collect();
    found.sort_by_key(|(o, p, _, _)| (*o, *p));
    found.into_iter().map(|(_, _, t, n)| (t, n)).collect()
}

/// The first address of `host` (A/AAAA through the resolver, else getaddrinfo on a
/// blocking thread).
async fn lookup_addr(r: Option<&Resolver>, host: &str, port: u16) -> Option<SocketAddr> {
    if let Some(r) = r {
        if let Ok(ips) = r.lookup_ip(host).await {
            if let Some(ip) = ips.iter().next() {
                return Some(SocketAddr::new(ip, port));
            }
        }
    }
    // tokio's lookup_host runs getaddrinfo on the blocking pool, never on this thread.
    let host = host.trim_end_matches('.').to_owned();
    let found = tokio::net::lookup_host((host.as_str(), port)).await;
    match found {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            debug!(%host, error = %e, "address lookup failed");
            None
        }
    }
}

/// This worker's resolver, built on first use on a blocking thread.
async fn resolver(worker: &Rc<Worker>) -> Option<Resolver> {
    if let Some(r) = worker.resolver.borrow().as_ref() {
        return Some(r.clone());
    }
    let built = tokio::task::spawn_blocking(|| {
        let mut b = TokioResolver::builder_tokio().ok()?;
        let o = b.options_mut();
        o.timeout = Duration::from_secs(2);
        o.attempts = 2;
        o.cache_size = 1024;
        Some(b.build())
    })
    .await
    .ok()
    .flatten();
    if let Some(r) = &built {
        *worker.resolver.borrow_mut() = Some(r.clone());
    } else {
        debug!("no system DNS configuration: using getaddrinfo only");
    }
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naptr_services_and_srv_names_follow_rfc_3263() {
        assert_eq!(naptr_service(b"SIP+D2U"), Some(Transport::Udp));
        assert_eq!(naptr_service(b"sip+d2t"), Some(Transport::Tcp));
        assert_eq!(naptr_service(b"SIPS+D2T"), Some(Transport::Tls));
        assert_eq!(naptr_service(b"SIP+D2S"), None);
        assert_eq!(
            srv_name(Transport::Tls, "example.com"),
            "_sips._tcp.example.com"
        );
        assert_eq!(
            srv_name(Transport::Udp, "example.com"),
            "_sip._udp.example.com"
        );
    }

    #[test]
    fn localhost_names_never_reach_dns() {
        assert!(is_localhost("localhost"));
        assert!(is_localhost("LOCALHOST."));
        assert!(is_localhost("a.localhost"));
        assert!(!is_localhost("notlocalhost"));
        assert!(!is_localhost("localhost.example.com"));
    }
}
