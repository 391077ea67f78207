//! `lookup("location")`: from a Request-URI to the one contact to deliver to, and how to
//! reach it. A flow-bound contact is reached only over its own connection; when that
//! connection is gone the contact is unreachable (480), never connected to afresh (its
//! Contact usually holds a private address). In a cluster, a contact whose connection
//! another node holds is reached through that node (its Route), and bindings the store
//! withholds (a dead node's, a stale replica's) make 480 or 503 rather than 404. No forking
//! yet: the proxy is stateless, so the request goes to the best reachable contact only.
//! Never panics.

use std::net::SocketAddr;
use std::sync::Arc;

use super::binding::{aor_of, Binding};
use super::store::{LocationStore, StoreError, Withheld};
use super::Settings;
use crate::proxy::{ConnId, Destination, Transport};
use crate::sip::{Editor, Uri};

/// The result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupResult {
    /// Deliver to this contact (boxed: the other variants are tiny).
    Found(Box<Target>),
    /// The AoR has current bindings but none can be reached (their connections closed):
    /// answer 480 Temporarily Unavailable.
    Unreachable { bindings: usize },
    /// No current binding (or not a SIP URI with a user): the script decides (404 by default).
    NotFound,
    /// No binding this node can offer, and the other nodes' bindings are not known now
    /// (cluster, shared store unreachable): answer 503 with `Retry-After`.
    Unavailable { retry_after: u32 },
}

/// How to reach the chosen contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send over the phone's own TCP/TLS connection, which is alive on this node.
    Connection {
        conn: ConnId,
        transport: Transport,
        addr: SocketAddr,
    },
    /// UDP: send to the address the REGISTER came from, from the socket it arrived on
    /// (`local`), so that the NAT binding the phone keeps open lets the request in.
    Datagram { addr: SocketAddr, local: SocketAddr },
    /// The phone's connection is held by another cluster node: forward the request there,
    /// through the Route in the target (the node's advertise URI and node token).
    Node(Arc<str>),
    /// Route by URI: the first pre-loaded Route (the Path) if any, else the new
    /// Request-URI, resolved per RFC 3263 like any other request.
    Uri,
}

/// The chosen contact and what to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub aor: String,
    /// The new Request-URI: the Contact URI.
    pub ruri: String,
    /// Route values to pre-load, top first (the binding's Path, RFC 3327 §5.3).
    pub route: Vec<String>,
    pub delivery: Delivery,
    /// The binding that was chosen.
    pub binding: Binding,
    /// Other current bindings, deliverable or not; for logs.
    pub alternatives: usize,
    /// The other deliverable bindings, in [`ranked`] order (highest q first): the branches
    /// `t_relay()` forks to. Empty, and not allocated, with a single binding.
    pub others: Vec<Target>,
}

impl Target {
    /// Rewrite a request for this target: the Request-URI, then the Path as Route values
    /// above any Route already there.
    pub fn apply(&self, ed: &mut Editor<'_>) {
        ed.set_request_uri(&self.ruri);
        for r in &self.route {
            ed.prepend_header("Route", r);
        }
    }

    /// Where to send, when the binding fixes it (flow delivery); `None` for
    /// [`Delivery::Node`] and [`Delivery::Uri`].
    pub fn destination(&self) -> Option<Destination> {
        match &self.delivery {
            Delivery::Connection {
                conn,
                transport,
                addr,
            } => Some(Destination {
                // Its connection first; when closed, a new one to the address it came from.
                conn: Some(*conn),
                ..Destination::addr(*transport, *addr)
            }),
            Delivery::Datagram { addr, .. } => Some(Destination::addr(Transport::Udp, *addr)),
            Delivery::Node(_) | Delivery::Uri => None,
        }
    }

    /// The destination as a URI for the script's `$du` (`sip:203.0.113.7:40123;transport=tls`).
    pub fn dst_uri(&self) -> Option<String> {
        let d = self.destination()?;
        Some(format!(
            "sip:{};transport={}",
            d.socket_addr()?,
            d.transport.param()
        ))
    }
}

/// Bindings in delivery order: highest q first, then the most recently refreshed.
pub fn ranked(mut bindings: Vec<Binding>, now: i64) -> Vec<Binding> {
    bindings.retain(|b| b.expires > now);
    bindings.sort_by(|a, b| b.rank_q().cmp(&a.rank_q()).then(b.updated.cmp(&a.updated)));
    bindings
}

/// How `b` can be reached from this node, or `None` when it cannot.
fn delivery(
    b: &Binding,
    settings: &Settings,
    is_conn_alive: &dyn Fn(ConnId) -> bool,
) -> Option<Delivery> {
    if !b.path.is_empty() {
        // The REGISTER came through an edge proxy (RFC 3327): it owns the phone's flow.
        return Some(Delivery::Uri);
    }
    let f = &b.flow;
    if let Some(node) = &f.node {
        if settings.node.as_deref() != Some(&**node) {
            // Without a Route (no advertise URI or token) the owner cannot be reached.
            f.node_route.as_ref()?;
            return Some(Delivery::Node(node.clone()));
        }
    }
    if f.is_connection_bound() {
        let conn = f.conn.filter(|&c| is_conn_alive(c))?;
        return Some(Delivery::Connection {
            conn,
            transport: f.transport,
            addr: f.source,
        });
    }
    Some(Delivery::Datagram {
        addr: f.source,
        local: f.local,
    })
}

/// Look up the Request-URI `uri` (any URI; non-SIP or user-less ones are simply not found).
/// The best reachable contact wins: bindings are tried in [`ranked`] order and those whose
/// connection is gone (`is_conn_alive` false, or restored from a snapshot) are skipped.
pub fn lookup(
    uri: &Uri<'_>,
    now: i64,
    settings: &Settings,
    store: &dyn LocationStore,
    is_conn_alive: &dyn Fn(ConnId) -> bool,
) -> Result<LookupResult, StoreError> {
    match aor_of(uri) {
        Ok(aor) => lookup_aor(&aor, now, settings, store, is_conn_alive),
        Err(_) => Ok(LookupResult::NotFound),
    }
}

/// [`lookup`] for a canonical AoR.
pub fn lookup_aor(
    aor: &str,
    now: i64,
    settings: &Settings,
    store: &dyn LocationStore,
    is_conn_alive: &dyn Fn(ConnId) -> bool,
) -> Result<LookupResult, StoreError> {
    let bindings = ranked(store.get(aor)?, now);
    let total = bindings.len();
    let mut found: Option<Box<Target>> = None;
    for b in bindings {
        if let Some(d) = delivery(&b, settings, is_conn_alive) {
            let route = match (&d, &b.flow.node_route) {
                (Delivery::Node(_), Some(r)) => vec![r.to_string()],
                _ => b.path.clone(),
            };
            let t = Target {
                aor: aor.to_owned(),
                ruri: b.contact.clone(),
                route,
                delivery: d,
                binding: b,
                alternatives: total - 1,
                others: Vec::new(),
            };
            match &mut found {
                None => found = Some(Box::new(t)),
                Some(first) => first.others.push(t),
            }
        }
    }
    if let Some(t) = found {
        return Ok(LookupResult::Found(t));
    }
    // Nothing deliverable here: a cluster store may know of bindings it did not offer.
    match store.withheld(aor, now) {
        Some(Withheld::Stale { retry_after }) => Ok(LookupResult::Unavailable { retry_after }),
        Some(Withheld::NodeDown { bindings }) => Ok(LookupResult::Unreachable {
            bindings: total + bindings,
        }),
        None if total == 0 => Ok(LookupResult::NotFound),
        None => Ok(LookupResult::Unreachable { bindings: total }),
    }
}
