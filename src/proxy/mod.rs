//! The stateless proxy of RFC 3261 §16 (with RFC 3581 and the §16.11 stateless branch):
//! validate a request, answer it locally or compute where it goes and how it is edited;
//! route a response back along its Via. Pure functions of (message, how it arrived,
//! configuration): no I/O, no clock, no randomness. Must never panic on any message.

pub mod flow;
mod reply;
mod text;
mod types;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::sip::{
    Editor, HeaderName, Host, Message, Method, ParseError, RequestIds, SipUri, Uri, Validated, Via,
};

pub use flow::{FlowKeyError, FlowKeys, FlowTokenError};
pub use reply::build_reply;
pub use types::{Action, ConnId, Destination, Inbound, Listen, NextHop, Target, Transport};

/// When siprox puts itself on the route of a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordRoute {
    /// When the request leaves on another transport than it came in on (then twice:
    /// one entry facing each side), so in-dialog requests can cross back.
    #[default]
    OnTransportChange,
    /// Always (twice on a transport change).
    Always,
    /// Never.
    Never,
}

/// What the proxy core needs to know about this siprox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where siprox listens; decides what "siprox itself" means and what goes into Via.
    pub listens: Vec<Listen>,
    /// Further host names that mean siprox itself (e.g. the SIP domains it serves).
    pub aliases: Vec<String>,
    pub record_route: RecordRoute,
    /// `Server:` of locally generated replies.
    pub server: String,
    /// Keys of the Record-Route flow tokens (RFC 5626 §5.2) and of node tokens (`nf=`).
    pub flow_keys: FlowKeys,
    /// This node's name in a cluster: the node tokens (`nf=`) it accepts name it.
    pub node: Option<String>,
    /// `[cluster] insecure_plaintext` without `[cluster.tls]`: nothing tells a peer node
    /// from a phone, so node tokens are accepted from anyone (a test bed only).
    pub node_tokens_from_anyone: bool,
    /// This host's own addresses, for a listener bound to a wildcard (`0.0.0.0`, `[::]`):
    /// a URI naming one of them (or any loopback address) on that port is siprox itself.
    /// Filled by the runtime when such a listener exists.
    pub local_ips: Vec<IpAddr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listens: Vec::new(),
            aliases: Vec::new(),
            record_route: RecordRoute::default(),
            server: concat!("siprox/", env!("CARGO_PKG_VERSION")).to_owned(),
            flow_keys: FlowKeys::random(),
            node: None,
            node_tokens_from_anyone: false,
            local_ips: Vec::new(),
        }
    }
}

/// What a route script adds to forwarding a request: a target, a new Request-URI, header
/// edits, a forced Record-Route, and which script forwarded it (so the reply runs the same
/// script's `onreply_route`). Owned, so it can wait for a DNS answer with the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardOpts {
    /// Send here instead of the Route / Request-URI destination (`forward("h:p")`, `$du`).
    pub target: Option<NextHop>,
    /// The Request-URI as the script rewrote it.
    pub ruri: Option<String>,
    /// `record_route()` was called: Record-Route whatever the configured mode.
    pub record_route: bool,
    /// Extra parameters for siprox's Record-Route URI (`;ftag=...`).
    pub rr_params: Option<String>,
    /// Max-Forwards as the script set it (`mf_process_maxfwd_header`): written instead of
    /// the usual decrement.
    pub max_forwards: Option<u8>,
    /// Complete header lines to append (each ends in CRLF).
    pub append_hf: String,
    /// Header names to remove.
    pub remove_hf: Vec<String>,
    /// The script that forwarded the request (a token), carried in siprox's Via.
    pub script_tag: Option<String>,
    /// Send exactly here, over this connection (a registered flow, RFC 5626): no
    /// resolution, no new connection. Set by `lookup("location")`.
    pub flow: Option<Destination>,
    /// Route values to put on top of the request's own (a registered Path, RFC 3327).
    pub routes: Vec<String>,
    /// The request came from a peer cluster node (its client certificate verified against
    /// the cluster CA): only then is a node token (`nf=`) in siprox's own Route honoured.
    pub from_node: bool,
    /// The branch a transaction table gave this forward (`t_relay()`): written instead of
    /// the stateless branch, with the same loop-detection suffix. `None`: stateless.
    pub branch: Option<String>,
    /// `force_rport()`: fill in `rport` in the sender's Via as if it had asked (RFC 3581),
    /// so that the responses go back to the port the request came from.
    pub force_rport: bool,
    /// `$fs` / `force_send_socket()`: the listener (transport and bound address) to send
    /// from; Via and Record-Route name it. Ignored when the destination's transport is
    /// another, or when siprox has no such listener.
    pub send_socket: Option<(Transport, SocketAddr)>,
}

/// What siprox writes and matches for one listener, computed once per configuration
/// rather than formatted and parsed again for every message.
#[derive(Debug, Clone)]
struct ListenText {
    /// `host:port` as Via and Record-Route name the listener (its advertised name if any).
    sent_by: String,
    /// The advertised host (an IPv6 one without brackets), and its address when it is one.
    adv_host: Option<String>,
    adv_ip: Option<IpAddr>,
    /// The advertised port, if the advertised name has one.
    adv_port: Option<u16>,
}

impl ListenText {
    fn new(l: &Listen) -> ListenText {
        let sent_by = match &l.advertise {
            Some(a) => a.clone(),
            None => {
                let mut s = String::with_capacity(24);
                text::push_socket_addr(&mut s, l.addr);
                s
            }
        };
        let adv_host = advertised_host(l);
        ListenText {
            sent_by,
            adv_ip: adv_host.and_then(parse_ip),
            adv_host: adv_host.map(str::to_owned),
            adv_port: advertised_port(l),
        }
    }
}

/// Prefix of every branch siprox writes: the RFC 3261 cookie, then ours.
const BRANCH_PREFIX: &str = "z9hG4bK-sx";

/// The stateless proxy. Immutable once built; shared by every worker.
#[derive(Debug, Clone)]
pub struct Proxy {
    cfg: ProxyConfig,
    /// One per listener of `cfg.listens`, in the same order.
    listen_text: Vec<ListenText>,
    /// Requests refused for a forged or altered flow token; shared by the proxies of
    /// successive snapshots so that the metric survives a reload.
    flow_refused: Arc<AtomicU64>,
}

/// Why a request cannot be routed: each is answered with its own status and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A Route or Request-URI that does not parse: 400.
    BadRoute,
    /// Not a SIP or SIPS URI: 416.
    Scheme,
    /// For siprox itself, and nowhere further to go: 404.
    NotFound,
    /// A flow token siprox did not make, or made for another dialog: 403.
    ForgedToken,
    /// A request inside a dialog whose Route names siprox without the token siprox put in
    /// its Record-Route for that dialog: a Route set someone wrote, to be relayed through
    /// siprox past the script's checks for initial requests: 403.
    UnsignedDialogRoute,
}

/// What the caller of [`Proxy::build_forward`] already parsed or computed.
#[derive(Clone, Copy)]
struct Parsed<'v, 'm> {
    /// The top Via, when validation kept it (else `build_forward` parses it).
    top_via: Option<&'v Via<'m>>,
    /// [`loop_hash`] of the request.
    loop_hash: u32,
    /// The Call-ID the flow tokens are bound to.
    dialog: &'m [u8],
    /// Max-Forwards as validation read it, when present (else `build_forward` reads it).
    max_forwards: Option<u8>,
}

/// The parameters siprox's Record-Route URI carries after `;lr`: the script's
/// (`rr_params`), then the flow token (`;fl=`).
#[derive(Clone, Copy)]
struct RrParams<'a> {
    extra: &'a str,
    token: Option<&'a str>,
}

impl RrParams<'_> {
    /// `;extra;fl=token`, as one parameter string: `;` added in front when the script's
    /// do not start with one; the script's left out when they would break out of the URI
    /// (the token stays: in-dialog requests need it to pass siprox's Route).
    fn write(&self, out: &mut String) {
        let breaks_out = self
            .extra
            .bytes()
            .any(|b| matches!(b, b'>' | b'\r' | b'\n'));
        if !self.extra.is_empty() && !breaks_out {
            if !self.extra.starts_with(';') {
                out.push(';');
            }
            out.push_str(self.extra);
        }
        if let Some(t) = self.token {
            out.push_str(";fl=");
            out.push_str(t);
        }
    }
}

/// Where a plan sends a request: an IP literal is resolved by the core itself (RFC 3263
/// §4.1, §4.2: transport from the URI, else TLS for `sips`, else UDP; port from the URI,
/// else the transport's default), without writing it out and parsing it back; a name goes
/// to the runtime's resolver.
#[derive(Debug)]
enum Hop {
    Addr(Destination),
    Name(NextHop),
}

impl Hop {
    fn from_next_hop(hop: NextHop) -> Hop {
        match resolve_literal(&hop) {
            Some(d) => Hop::Addr(d),
            None => Hop::Name(hop),
        }
    }
}

/// How a request is to be routed, computed the same way by [`Proxy::on_request`] and
/// [`Proxy::forward_request`].
#[derive(Debug)]
struct Plan {
    hop: Hop,
    /// How many Route values at the top are ours, to be removed.
    own_routes: usize,
    /// The last Route value, removed after a strict router (it became the Request-URI).
    strict_last: Option<usize>,
    /// New Request-URI (strict-router compatibility, RFC 3261 §16.4).
    new_ruri: Option<String>,
    /// The flow (RFC 5626) our own Route names for the direction this request travels:
    /// send over that connection, whatever the Request-URI says.
    flow: Option<Destination>,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Proxy {
        Proxy {
            listen_text: cfg.listens.iter().map(ListenText::new).collect(),
            cfg,
            flow_refused: Arc::default(),
        }
    }

    /// This proxy counting refused flow tokens in `counter` (the previous snapshot's).
    pub fn with_flow_counter(mut self, counter: Arc<AtomicU64>) -> Proxy {
        self.flow_refused = counter;
        self
    }

    /// The counter of requests refused for a forged or altered flow token.
    pub fn flow_counter(&self) -> &Arc<AtomicU64> {
        &self.flow_refused
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Handle a request: a local answer, a drop, a destination that needs resolving
    /// ([`Action::Forward`]), or, when the next hop is an IP literal, the forwarded request.
    pub fn on_request(&self, msg: &Message, rx: &Inbound) -> Action {
        let is_ack = msg.method_kind() == Some(Method::Ack);
        // What validation parsed (the top Via, the Request-URI) is not parsed again, and is
        // borrowed where it lies (not moved out of the `Result`: it is 824 bytes).
        let validated = msg.validated();
        let checked = match &validated {
            Ok(c) => c,
            Err(e) => {
                if is_ack {
                    return Action::Drop {
                        reason: "malformed ACK",
                    };
                }
                let code = if e.is_version() { 505 } else { 400 };
                let reason = if e.is_version() {
                    "Version Not Supported".to_owned()
                } else {
                    e.reason_phrase()
                };
                return self.reply(msg, rx, code, &reason, "");
            }
        };
        let method = msg.method_kind().unwrap_or(Method::Other);
        let Some(ruri) = &checked.request_uri else {
            return Action::Drop {
                reason: "bad Request-URI",
            };
        };
        let ruri_is_me = self.uri_is_me(ruri);

        // RFC 3261 §16.3 step 2: a Request-URI scheme siprox does not understand is refused,
        // whatever Route says.
        if matches!(ruri, Uri::Other { .. }) {
            if is_ack {
                return Action::Drop {
                    reason: "ACK with an unknown Request-URI scheme",
                };
            }
            return self.reply(msg, rx, 416, "Unsupported URI Scheme", "");
        }

        // RFC 3261 §16.3 step 3: Max-Forwards.
        if checked.max_forwards == Some(0) {
            if method == Method::Options && ruri_is_me {
                return self.options_reply(msg, rx, checked);
            }
            if is_ack {
                return Action::Drop {
                    reason: "ACK with Max-Forwards 0",
                };
            }
            return self.reply(msg, rx, 483, "Too Many Hops", "");
        }
        // §16.3 step 6: Proxy-Require. siprox supports no proxy extension yet.
        // Validation noted whether the header is there: it is read only then.
        let unsupported: Vec<&str> = if checked.proxy_require {
            msg.proxy_require().filter_map(Result::ok).collect()
        } else {
            Vec::new()
        };
        if !unsupported.is_empty() {
            if is_ack {
                return Action::Drop {
                    reason: "ACK with Proxy-Require",
                };
            }
            let extra = format!("Unsupported: {}\r\n", unsupported.join(", "));
            return self.reply(msg, rx, 420, "Bad Extension", &extra);
        }
        // Without a script nothing says whether the peer is a cluster node: `nf=` is refused.
        // The dialog the flow tokens are bound to: validation read it, for the plan and the
        // forward.
        let dialog = checked.call_id.as_bytes();
        let known = Some(&checked.routes);
        let plan = match self.plan(msg, ruri, ruri_is_me, rx.conn, false, dialog, known) {
            Ok(Some(p)) => p,
            Ok(None) => {
                // Addressed to siprox itself, with nowhere further to go.
                return match method {
                    Method::Options => self.options_reply(msg, rx, checked),
                    Method::Ack => Action::Drop {
                        reason: "ACK for siprox itself",
                    },
                    _ => self.reply(msg, rx, 404, "Not Found", ""),
                };
            }
            Err(code) => {
                if is_ack {
                    return Action::Drop {
                        reason: "ACK that cannot be routed",
                    };
                }
                return self.routing_error(msg, rx, code);
            }
        };
        // §16.3 step 4: loop detection (a Via of ours carrying this request's loop hash).
        let hash = loop_hash(msg, dialog, &checked.ids);
        if self.is_loop(msg, hash, Some(checked.next_via.as_ref())) {
            if is_ack {
                return Action::Drop {
                    reason: "looping ACK",
                };
            }
            return self.reply(msg, rx, 482, "Loop Detected", "");
        }
        let parsed = Parsed {
            top_via: Some(&checked.top_via),
            loop_hash: hash,
            dialog,
            max_forwards: checked.max_forwards,
        };
        let opts = &ForwardOpts::default();
        if let Some(flow) = &plan.flow {
            return self.build_forward(msg, rx, &plan, flow, opts, parsed);
        }
        match &plan.hop {
            Hop::Addr(dest) => self.build_forward(msg, rx, &plan, dest, opts, parsed),
            Hop::Name(hop) => Action::Forward { hop: hop.clone() },
        }
    }

    /// Build the forwarded request for a destination resolved from the [`NextHop`] that
    /// [`on_request`](Self::on_request) returned.
    pub fn forward_request(&self, msg: &Message, rx: &Inbound, dest: &Destination) -> Action {
        self.forward_request_with(msg, rx, dest, &ForwardOpts::default())
    }

    /// Forward as a route script asked (`forward()`): no validation or local answers here
    /// (the runtime validated, the script decided), but routing, loop detection and the
    /// forwarding edits as in [`on_request`](Self::on_request), plus the script's edits.
    pub fn forward_with(&self, msg: &Message, rx: &Inbound, opts: &ForwardOpts) -> Action {
        self.forward_checked(msg, rx, opts, None)
    }

    /// [`forward_with`](Self::forward_with) given what [`Message::validated`] parsed of
    /// `msg` (the runtime validated before the script ran): the Request-URI, the first
    /// Routes, the Call-ID, the tags and CSeq, the Vias and Max-Forwards are not parsed
    /// again. A script never changes the message itself, only `opts` (its edits are
    /// applied to the forwarded copy), so these stay true of it; what a script changes
    /// (`opts.ruri`: `$ru`, `rewritehost`...) is read from `opts` as without `checked`.
    /// `checked` must be `msg`'s own (`None`: everything is read from `msg`).
    pub fn forward_checked<'m>(
        &self,
        msg: &'m Message,
        rx: &Inbound,
        opts: &ForwardOpts,
        checked: Option<&Validated<'m>>,
    ) -> Action {
        // `checked` is `msg`'s own: what it borrows lies in `msg`'s head text (its raw
        // bytes, or the text view of a head that is not all UTF-8).
        debug_assert!(
            checked.is_none_or(|c| {
                let r = msg.head_str().as_bytes().as_ptr_range();
                let p = c.call_id.as_ptr();
                r.start <= p && p <= r.end
            }),
            "checked is another message's validation"
        );
        let dialog = match checked {
            Some(c) => c.call_id,
            None => msg.call_id().unwrap_or(""),
        }
        .as_bytes();
        let plan = match self.plan_for(msg, rx, opts, dialog, checked) {
            Ok(p) => p,
            Err(code) => return self.routing_error(msg, rx, code),
        };
        let ids = match checked {
            Some(c) => c.ids,
            None => RequestIds::of(msg),
        };
        let hash = loop_hash(msg, dialog, &ids);
        if self.is_loop(msg, hash, checked.map(|c| c.next_via.as_ref())) {
            return self.reply(msg, rx, 482, "Loop Detected", "");
        }
        let parsed = Parsed {
            top_via: checked.map(|c| &c.top_via),
            loop_hash: hash,
            dialog,
            max_forwards: checked.and_then(|c| c.max_forwards),
        };
        if let Some(flow) = opts.flow.as_ref().or(plan.flow.as_ref()) {
            return self.build_forward(msg, rx, &plan, flow, opts, parsed);
        }
        match &plan.hop {
            Hop::Addr(dest) => self.build_forward(msg, rx, &plan, dest, opts, parsed),
            Hop::Name(hop) => Action::Forward { hop: hop.clone() },
        }
    }

    /// [`forward_request`](Self::forward_request) with a script's options.
    pub fn forward_request_with(
        &self,
        msg: &Message,
        rx: &Inbound,
        dest: &Destination,
        opts: &ForwardOpts,
    ) -> Action {
        let dialog = msg.call_id().unwrap_or("").as_bytes();
        match self.plan_for(msg, rx, opts, dialog, None) {
            Ok(plan) => {
                let parsed = Parsed {
                    top_via: None,
                    loop_hash: loop_hash(msg, dialog, &RequestIds::of(msg)),
                    dialog,
                    max_forwards: None,
                };
                self.build_forward(msg, rx, &plan, dest, opts, parsed)
            }
            Err(_) => Action::Drop {
                reason: "request no longer routable",
            },
        }
    }

    /// The plan for a scripted forward: the script's target wins, else the route set and
    /// the (possibly rewritten) Request-URI decide. `Err`: answer as [`Refused`] says.
    /// `checked`: `msg`'s validation, whose Request-URI (unless the script set one) and
    /// Routes are borrowed instead of parsed again.
    fn plan_for<'m>(
        &self,
        msg: &'m Message,
        rx: &Inbound,
        opts: &ForwardOpts,
        dialog: &[u8],
        checked: Option<&Validated<'m>>,
    ) -> Result<Plan, Refused> {
        let parsed_ruri;
        let ruri = match (&opts.ruri, checked.and_then(|c| c.request_uri.as_ref())) {
            (Some(u), _) => {
                parsed_ruri = Uri::parse(u).map_err(|_| Refused::BadRoute)?;
                &parsed_ruri
            }
            (None, Some(u)) => u,
            (None, None) => {
                parsed_ruri = msg.request_uri().map_err(|_| Refused::BadRoute)?;
                &parsed_ruri
            }
        };
        let ruri_is_me = self.uri_is_me(ruri);
        let plan = self.plan(
            msg,
            ruri,
            ruri_is_me,
            rx.conn,
            opts.from_node,
            dialog,
            checked.map(|c| &c.routes),
        )?;
        match (plan, &opts.target) {
            (Some(mut p), Some(t)) => {
                p.hop = Hop::from_next_hop(t.clone());
                Ok(p)
            }
            (Some(p), None) => Ok(p),
            (None, Some(t)) => Ok(Plan {
                hop: Hop::from_next_hop(t.clone()),
                own_routes: 0,
                strict_last: None,
                new_ruri: None,
                flow: None,
            }),
            // Addressed to siprox itself and nowhere else to go.
            (None, None) => Err(Refused::NotFound),
        }
    }

    fn routing_error(&self, msg: &Message, rx: &Inbound, why: Refused) -> Action {
        match why {
            Refused::Scheme => self.reply(msg, rx, 416, "Unsupported URI Scheme", ""),
            Refused::NotFound => self.reply(msg, rx, 404, "Not Found", ""),
            Refused::ForgedToken => self.reply(msg, rx, 403, "Forbidden (invalid flow token)", ""),
            Refused::UnsignedDialogRoute => self.reply(
                msg,
                rx,
                403,
                "Forbidden (Route not issued by siprox for this dialog)",
                "",
            ),
            Refused::BadRoute => self.reply(msg, rx, 400, "Bad Request (bad Route)", ""),
        }
    }

    /// The script tag siprox put in its own Via of the request this response answers.
    pub fn response_script_tag<'m>(&self, msg: &'m Message) -> Option<&'m str> {
        self.response_script_tag_from(msg, false)
    }

    /// [`response_script_tag`](Self::response_script_tag) for a response that arrived
    /// over a connection siprox opened when `own_conn` (see
    /// [`on_response_from`](Self::on_response_from)).
    pub fn response_script_tag_from<'m>(
        &self,
        msg: &'m Message,
        own_conn: bool,
    ) -> Option<&'m str> {
        if !Self::response_may_have_script_tag(msg) {
            return None;
        }
        let top = msg.top_via().ok()?;
        self.response_script_tag_of(&top, own_conn)
    }

    /// False when a response certainly carries no script tag (most do not): a look at the
    /// text, which spares parsing the Via.
    pub fn response_may_have_script_tag(msg: &Message) -> bool {
        msg.header(HeaderName::Via)
            .is_some_and(|v| may_have_param(v, b"sx"))
    }

    /// [`response_script_tag_from`](Self::response_script_tag_from) given the response's
    /// top Via already parsed (by [`Message::validated`]).
    pub fn response_script_tag_of<'m>(&self, top: &Via<'m>, own_conn: bool) -> Option<&'m str> {
        if !self.top_via_is_mine(top, own_conn) {
            return None;
        }
        top.params.get("sx").flatten()
    }

    /// Whether a response's top Via is siprox's: its sent-by names siprox, or (`own_conn`:
    /// the response came back over a connection siprox opened, whose peer answers the
    /// requests siprox wrote on it) its branch is one siprox makes, whatever the sent-by
    /// says (a Via rewritten by a reload of the listeners, an advertised name).
    fn top_via_is_mine(&self, top: &Via<'_>, own_conn: bool) -> bool {
        self.sent_by_is_me(&top.host, top.port, top.transport)
            || (own_conn && top.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX)))
    }

    /// True when `host[:port]` names siprox (a listen address, advertised name or alias;
    /// without a port, any port siprox listens on).
    pub fn is_myself(&self, host: &str, port: Option<u16>) -> bool {
        // An IPv6 address in either notation: `[::1]` or `::1`.
        let h = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => Host::V6(a),
            Ok(IpAddr::V4(a)) => Host::V4(a),
            Err(_) => match crate::sip::parse_host(host) {
                Ok(h) => h,
                Err(_) => return false,
            },
        };
        match port {
            Some(p) => self.host_port_is_me(&h, p),
            None => self
                .cfg
                .listens
                .iter()
                .any(|l| self.host_port_is_me(&h, l.addr.port())),
        }
    }

    /// A request whose next hop could not be resolved: 503 (RFC 3263 §4.3 gives up).
    pub fn unresolvable(&self, msg: &Message, rx: &Inbound) -> Action {
        if msg.method_kind() == Some(Method::Ack) {
            return Action::Drop {
                reason: "ACK to an unresolvable destination",
            };
        }
        self.reply(
            msg,
            rx,
            503,
            "Service Unavailable (next hop not resolvable)",
            "",
        )
    }

    /// A message whose head could not be indexed. On a stream (the sender is the peer at
    /// the other end) a request that names its Via, From, To, Call-ID and CSeq gets a 400
    /// with the error as reason, over the same connection. A datagram that does not parse
    /// is dropped: answering it would reflect traffic to whatever source it claims.
    pub fn on_unparsable(&self, bytes: &Bytes, err: &ParseError, rx: &Inbound) -> Action {
        let Some(conn) = rx.conn.filter(|_| rx.transport.is_stream()) else {
            return Action::Drop {
                reason: "unparsable message",
            };
        };
        match reply::unparsable_reply(bytes, &err.reason_phrase(), &self.cfg.server) {
            // Over the connection it came on only: a stream that has closed is not
            // reopened to deliver a 400 for garbage.
            Some(bytes) => Action::Send {
                dest: Destination::flow(rx.transport, conn),
                bytes,
            },
            None => Action::Drop {
                reason: "unparsable message",
            },
        }
    }

    /// Route a response (RFC 3261 §16.7): check and remove siprox's own Via, then send the
    /// response to the next Via — over the stream the request came on when it is still open.
    pub fn on_response(&self, msg: &Message, rx: &Inbound) -> Action {
        self.on_response_from(msg, rx, false)
    }

    /// [`on_response`](Self::on_response) for a response that arrived over a connection
    /// siprox opened (`own_conn`), or whose client transaction matched its branch: siprox's
    /// own branch on its own connection makes the top Via siprox's, whatever its sent-by.
    pub fn on_response_from(&self, msg: &Message, rx: &Inbound, own_conn: bool) -> Action {
        self.on_response_checked(msg, rx, own_conn, msg.validated())
    }

    /// [`on_response_from`](Self::on_response_from) given what [`Message::validated`]
    /// returned for `msg` (the caller that already needed it): nothing parsed again.
    pub fn on_response_checked(
        &self,
        msg: &Message,
        rx: &Inbound,
        own_conn: bool,
        checked: Result<Validated<'_>, ParseError>,
    ) -> Action {
        let _ = rx;
        // Validation parsed every Via: the two a response needs are kept, not parsed again,
        // and borrowed where they lie (not moved).
        let Ok(checked) = &checked else {
            return Action::Drop {
                reason: "malformed response",
            };
        };
        let mine = &checked.top_via;
        if !self.top_via_is_mine(mine, own_conn) {
            return Action::Drop {
                reason: "response whose top Via is not siprox",
            };
        }
        let Some(next) = &checked.next_via else {
            return Action::Drop {
                reason: "response to siprox itself",
            };
        };
        let Some(transport) = Transport::parse(next.transport) else {
            return Action::Drop {
                reason: "unsupported transport in Via",
            };
        };
        let conn = match mine.params.get("i") {
            None => None,
            Some(i) => match self
                .cfg
                .flow_keys
                .verify(i.unwrap_or(""), checked.call_id.as_bytes())
            {
                Ok((c, 0)) if c != 0 => Some(ConnId(c)),
                _ => {
                    self.flow_refused.fetch_add(1, Ordering::Relaxed);
                    return Action::Drop {
                        reason: "response with a forged connection id in siprox's Via",
                    };
                }
            },
        };
        let ip = match next.received().and_then(parse_ip) {
            Some(ip) => Some(ip),
            None => next.host.ip(),
        };
        let port = match next.rport() {
            Some(Some(p)) => p,
            _ => next.port.unwrap_or(transport.default_port()),
        };
        let mut ed = Editor::new(msg);
        if ed.remove_first_via().is_err() {
            return Action::Drop {
                reason: "malformed Via",
            };
        }
        match ip {
            Some(ip) => {
                if !usable_unicast(ip) || port == 0 {
                    return Action::Drop {
                        reason: "next Via is not a usable unicast address",
                    };
                }
                if transport.is_stream() {
                    ed.ensure_content_length();
                }
                Action::Send {
                    dest: Destination {
                        conn,
                        ..Destination::addr(transport, SocketAddr::new(ip, port))
                    },
                    bytes: ed.finish(),
                }
            }
            None => match next.host {
                // A name in sent-by without received: RFC 3263 §5 resolution. Over a stream
                // the connection (if still open) is what counts.
                Host::Name(name) => match conn {
                    Some(conn) => Action::Send {
                        dest: Destination {
                            server_name: Some(name.to_owned()),
                            ..Destination::flow(transport, conn)
                        },
                        bytes: ed.finish(),
                    },
                    None => Action::Drop {
                        reason: "response to a Via host name (not resolved for responses)",
                    },
                },
                _ => Action::Drop {
                    reason: "bad Via host",
                },
            },
        }
    }

    /// A locally generated response to `msg` (RFC 3261 §8.2.6), sent back the way the
    /// request came. ACK is never answered.
    pub fn reply(
        &self,
        msg: &Message,
        rx: &Inbound,
        code: u16,
        reason: &str,
        extra: &str,
    ) -> Action {
        self.reply_via(msg, rx, None, code, reason, extra)
    }

    /// [`reply`](Self::reply) to a request that validation already parsed (`checked`):
    /// its top Via, tags and CSeq are not parsed again.
    fn reply_via(
        &self,
        msg: &Message,
        rx: &Inbound,
        checked: Option<&Validated<'_>>,
        code: u16,
        reason: &str,
        extra: &str,
    ) -> Action {
        if msg.method_kind() == Some(Method::Ack) {
            return Action::Drop {
                reason: "ACK is never answered",
            };
        }
        // Validation read the Call-ID too: not looked up and checked again.
        let (ids, call_id) = match checked {
            Some(c) => (c.ids, c.call_id),
            None => (RequestIds::of(msg), msg.call_id().unwrap_or("")),
        };
        let to_tag = self.local_tag(call_id, &ids);
        let top = checked.map(|c| &c.top_via);
        let bytes = reply::build_reply_via(
            msg,
            rx,
            top,
            ids.to_tag.is_some(),
            code,
            reason,
            to_tag.as_str(),
            &self.cfg.server,
            extra,
        );
        Action::Send {
            dest: reply_destination(msg, rx, top),
            bytes,
        }
    }

    fn options_reply(&self, msg: &Message, rx: &Inbound, checked: &Validated<'_>) -> Action {
        self.reply_via(
            msg,
            rx,
            Some(checked),
            200,
            "OK",
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER, PUBLISH\r\nAccept: application/sdp\r\nSupported: path, outbound\r\n",
        )
    }

    /// RFC 3261 §16.4 (route information preprocessing) and §16.5/16.6 (target, next hop).
    /// `Ok(None)`: the request is for siprox itself. `Err`: answer as [`Refused`] says.
    ///
    /// A request inside a dialog (To has a tag) may only pass siprox's own Route if that
    /// Route carries the token siprox signed for this dialog's Call-ID in its Record-Route:
    /// otherwise anyone could write `Route: <sip:siprox;lr>, <sip:anywhere;lr>` and a
    /// to-tag, and be relayed anywhere past the checks scripts make on initial requests.
    /// The ACK of a non-2xx reply is exempt: it carries the INVITE's preloaded Route set
    /// (RFC 3261 §17.1.1.3), which names siprox without a token when a phone uses siprox
    /// as its outbound proxy.
    /// `known`: the first Route URIs as validation parsed them ([`Validated::routes`]),
    /// used instead of parsing the Route values again.
    #[allow(clippy::too_many_arguments)]
    fn plan<'m>(
        &self,
        msg: &'m Message,
        ruri: &Uri<'_>,
        ruri_is_me: bool,
        rx_conn: Option<ConnId>,
        from_node: bool,
        dialog: &[u8],
        known: Option<&[Option<Uri<'m>>; 2]>,
    ) -> Result<Option<Plan>, Refused> {
        let mut strict_last = None;
        let mut new_ruri = None;
        let mut own = false;
        let mut signed = false;
        let mut flow = None;
        // A strict router before us put our URI (our Record-Route, token and all) in the
        // Request-URI and the real target in the last Route.
        if ruri_is_me {
            let mut count = 0;
            let mut last = None;
            for r in msg.routes() {
                last = Some(r.map_err(|_| Refused::BadRoute)?);
                count += 1;
            }
            if let Some(last) = last {
                new_ruri = Some(last.uri_str.to_owned());
                strict_last = Some(count - 1);
                own = true;
                match flow_of_route(ruri, rx_conn, &self.cfg.flow_keys, dialog) {
                    Ok(RouteToken::None) => {}
                    Ok(RouteToken::Signed(f)) => {
                        signed = true;
                        flow = f;
                    }
                    Err(_) => {
                        self.flow_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(Refused::ForgedToken);
                    }
                }
            }
        }
        // Our own Route values on top are passed; the first other one is the next hop.
        // The strict router's last value (now the Request-URI) is not looked at.
        // The URIs validation parsed are borrowed, not copied (152 bytes each).
        let mut first = 0;
        let mut later = None;
        let mut later_uri = None;
        let next = loop {
            if strict_last.is_some_and(|last| first >= last) {
                break None;
            }
            let u: &Uri<'_> = match known.and_then(|k| k.get(first)) {
                Some(Some(u)) => u,
                // Validation saw no more Route values.
                Some(None) => break None,
                None => {
                    let rest = later.get_or_insert_with(|| msg.routes().skip(first));
                    match rest.next() {
                        Some(r) => later_uri
                            .insert(r.and_then(|r| r.uri()).map_err(|_| Refused::BadRoute)?),
                        None => break None,
                    }
                }
            };
            if !self.uri_is_me(u) {
                break Some(u);
            }
            own = true;
            // The first own Route with a token decides (a double Record-Route puts the
            // same token in both entries: one HMAC is enough).
            if !signed {
                match flow_of_route(u, rx_conn, &self.cfg.flow_keys, dialog) {
                    Ok(RouteToken::None) => {}
                    Ok(RouteToken::Signed(f)) => {
                        signed = true;
                        if flow.is_none() {
                            flow = f;
                        }
                    }
                    Err(_) => {
                        self.flow_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(Refused::ForgedToken);
                    }
                }
            }
            // A peer node routes to a phone whose flow this node holds.
            match self.node_flow_of_route(u, from_node) {
                Ok(None) => {}
                Ok(Some(f)) => flow = Some(f),
                Err(_) => {
                    self.flow_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(Refused::ForgedToken);
                }
            }
            first += 1;
        };
        if own && !signed && msg.method_kind() != Some(Method::Ack) && in_dialog(msg) {
            self.flow_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::UnsignedDialogRoute);
        }
        if let Some(u) = next {
            let Uri::Sip(s) = u else {
                return Err(Refused::Scheme);
            };
            // A next hop that is a strict router (no `lr`) would need the Request-URI moved
            // into Route (§16.6 step 6); siprox sends to it as a loose router, which every
            // router since RFC 3261 is.
            return Ok(Some(Plan {
                hop: hop_of(s),
                own_routes: first,
                strict_last,
                new_ruri,
                flow,
            }));
        }
        // No Route left: the Request-URI (possibly the new one) decides.
        let target_store;
        let (target, target_is_me) = match &new_ruri {
            Some(t) => {
                target_store = Uri::parse(t).map_err(|_| Refused::BadRoute)?;
                (&target_store, self.uri_is_me(&target_store))
            }
            None => (ruri, ruri_is_me),
        };
        match target {
            Uri::Sip(s) => {
                if target_is_me {
                    return Ok(None);
                }
                Ok(Some(Plan {
                    hop: hop_of(s),
                    own_routes: first,
                    strict_last,
                    new_ruri,
                    flow,
                }))
            }
            _ => Err(Refused::Scheme),
        }
    }

    fn build_forward(
        &self,
        msg: &Message,
        rx: &Inbound,
        plan: &Plan,
        dest: &Destination,
        opts: &ForwardOpts,
        parsed: Parsed<'_, '_>,
    ) -> Action {
        let dialog = parsed.dialog;
        let mut ed = Editor::new(msg);
        let parsed_top;
        let top = match parsed.top_via {
            Some(v) => Ok(v),
            None => {
                parsed_top = msg.top_via();
                parsed_top.as_ref().map_err(|_| ())
            }
        };
        for name in &opts.remove_hf {
            ed.remove_headers_named(name);
        }
        if !opts.append_hf.is_empty() {
            ed.append_raw(&opts.append_hf);
        }
        for r in &opts.routes {
            ed.prepend_header("Route", r);
        }
        // RFC 3261 §18.2.1 and RFC 3581: say where the request really came from.
        if let Ok(top) = top {
            let src_ip = rx.source.ip();
            // The address as text on the stack: no formatter, no String per request.
            let (v4, v6);
            let received = match (top.host.ip(), src_ip) {
                (Some(ip), _) if ip == src_ip => None,
                (_, IpAddr::V4(a)) => {
                    v4 = text::V4Text::new(a);
                    Some(v4.as_str())
                }
                (_, IpAddr::V6(a)) => {
                    v6 = a.to_string();
                    Some(v6.as_str())
                }
            };
            let rport = (top.rport().is_some() || opts.force_rport).then_some(rx.source.port());
            if ed.set_via_params(top, received, rport).is_err() {
                return Action::Drop {
                    reason: "malformed top Via",
                };
            }
        }
        if let Some(u) = opts.ruri.as_ref().or(plan.new_ruri.as_ref()) {
            ed.set_request_uri(u);
        }
        if plan.own_routes > 0 || plan.strict_last.is_some() {
            let (own, last) = (plan.own_routes, plan.strict_last);
            if ed
                .remove_values(HeaderName::Route, |i| i < own || Some(i) == last)
                .is_err()
            {
                return Action::Drop {
                    reason: "malformed Route",
                };
            }
        }
        match opts.max_forwards {
            Some(n) => ed.set_max_forwards(n),
            // Validation read the value: written decremented without reading it again.
            None => match parsed.max_forwards {
                Some(n) if n > 0 => ed.set_max_forwards(n - 1),
                _ => {
                    if ed.decrement_max_forwards().is_err() {
                        return self.reply(msg, rx, 483, "Too Many Hops", "");
                    }
                }
            },
        }
        // The listener `$fs` forced, if it is one of the destination's transport.
        let forced = opts
            .send_socket
            .filter(|(t, _)| *t == dest.transport)
            .and_then(|(t, a)| self.listener_index(Some(t), a));
        // Record-Route: the entry facing the next hop ends on top.
        let change = rx.transport != dest.transport;
        let toward = dest.socket_addr().map(|a| a.ip());
        let rr = opts.record_route
            || match self.cfg.record_route {
                RecordRoute::Never => false,
                RecordRoute::Always => true,
                RecordRoute::OnTransportChange => change,
            };
        let method = msg.method_kind();
        let id = |c: Option<ConnId>| c.map(|c| c.0).unwrap_or(0);
        let (rx_id, out_id) = (id(rx.conn), id(dest.connection()));
        // The Record-Route token and the Via's `i=` name the same flow when the request
        // leaves on no connection (UDP): made once, written twice.
        let mut rr_token = None;
        if rr && method != Some(Method::Register) {
            // RFC 5626 flow token: the connections on both sides of siprox, so that
            // in-dialog requests from either side go back over the other side's connection
            // (phones behind NAT cannot be reached at their Contact); signed for this
            // Call-ID, which is what lets an in-dialog request through siprox's Route at
            // all (see `plan`), so every Record-Route carries one, UDP too.
            rr_token = self.cfg.flow_keys.token_text(rx_id, out_id, dialog);
            let params = RrParams {
                extra: opts.rr_params.as_deref().unwrap_or(""),
                token: rr_token.as_ref().map(|t| t.as_str()),
            };
            // Prepends keep their call order: the outbound-facing entry goes first.
            ed.prepend_header_with("Record-Route", |v| {
                self.rr_value(v, dest.transport, toward, change, params, forced)
            });
            if change {
                ed.prepend_header_with("Record-Route", |v| {
                    self.rr_value(v, rx.transport, Some(rx.local.ip()), true, params, None)
                });
            }
        }
        // Written straight into the editor's text: no String per Via.
        ed.prepend_header_with("Via", |via| {
            via.push_str("SIP/2.0/");
            via.push_str(dest.transport.as_str());
            via.push(' ');
            let borrowed = match forced {
                Some(i) => {
                    via.push_str(&self.listen_text[i].sent_by);
                    false
                }
                None => self.write_sent_by(via, dest.transport, toward),
            };
            via.push_str(";branch=");
            match opts.branch.as_deref() {
                Some(b) => {
                    via.push_str(b);
                    via.push('-');
                    text::push_hex_width(via, u64::from(parsed.loop_hash), 8);
                }
                None => self.write_branch(via, msg, top.ok(), parsed.loop_hash, dialog),
            }
            if borrowed && dest.transport.is_stream() {
                via.push_str(";rport;alias");
            }
            // The connection the response goes back over, signed like a flow token: a
            // forged response must not be able to name another peer's connection.
            if let Some(c) = rx.conn {
                match rr_token.filter(|_| out_id == 0) {
                    Some(t) => {
                        via.push_str(";i=");
                        via.push_str(t.as_str());
                    }
                    None => {
                        self.cfg.flow_keys.write_token(via, ";i=", c.0, 0, dialog);
                    }
                }
            }
            if let Some(tag) = opts.script_tag.as_deref() {
                let token = tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !tag.is_empty() && token {
                    via.push_str(";sx=");
                    via.push_str(tag);
                }
            }
        });
        if dest.transport.is_stream() {
            ed.ensure_content_length();
        }
        Action::Send {
            dest: dest.clone(),
            bytes: ed.finish(),
        }
    }

    /// `<sip:host:port;transport=x;lr>` of the interface facing `toward`.
    fn rr_value(
        &self,
        out: &mut String,
        transport: Transport,
        toward: Option<IpAddr>,
        r2: bool,
        params: RrParams<'_>,
        forced: Option<usize>,
    ) {
        out.push_str("<sip:");
        match forced {
            Some(i) => out.push_str(&self.listen_text[i].sent_by),
            None => {
                self.write_sent_by(out, transport, toward);
            }
        }
        if transport != Transport::Udp {
            out.push_str(";transport=");
            out.push_str(transport.param());
        }
        out.push_str(";lr");
        if r2 {
            out.push_str(";r2=on");
        }
        params.write(out);
        out.push('>');
    }

    /// The listen entry to use for `transport`, preferring the address family of `toward`
    /// (its index in the configuration).
    fn listen_for(&self, transport: Transport, toward: Option<IpAddr>) -> Option<usize> {
        let listens = &self.cfg.listens;
        // A flow has no address: its family is unknown here, IPv4 is tried first.
        let v4 = toward.is_none_or(|ip| ip.is_ipv4());
        listens
            .iter()
            .position(|l| l.transport == transport && l.addr.is_ipv4() == v4)
            .or_else(|| listens.iter().position(|l| l.transport == transport))
    }

    /// `host:port` siprox advertises for `transport`. `true` when siprox has no listener of
    /// that transport: then it names the listener of the same address family (any
    /// transport; its advertised name if it has one), an address siprox does answer on,
    /// and the Via asks the peer to reuse the connection (`;alias`, RFC 5923) for requests
    /// back and to answer where the request came from (`;rport`), since no new connection
    /// of that transport could reach siprox.
    fn write_sent_by(
        &self,
        out: &mut String,
        transport: Transport,
        toward: Option<IpAddr>,
    ) -> bool {
        let (listen, borrowed) = match self.listen_for(transport, toward) {
            Some(i) => (Some(i), false),
            None => {
                let v4 = toward.is_none_or(|ip| ip.is_ipv4());
                let i = self
                    .cfg
                    .listens
                    .iter()
                    .position(|l| l.addr.is_ipv4() == v4)
                    .or_else(|| (!self.cfg.listens.is_empty()).then_some(0));
                (i, true)
            }
        };
        match listen.and_then(|i| self.listen_text.get(i)) {
            Some(t) => out.push_str(&t.sent_by),
            None => out.push_str("invalid.invalid"),
        }
        borrowed
    }

    /// The listener of `transport` (any, when `None`) bound to `addr`: what `$fs` and
    /// `force_send_socket()` may name.
    pub fn listener(&self, transport: Option<Transport>, addr: SocketAddr) -> Option<&Listen> {
        self.listener_index(transport, addr)
            .and_then(|i| self.cfg.listens.get(i))
    }

    /// [`listener`](Self::listener)'s index in the configuration.
    fn listener_index(&self, transport: Option<Transport>, addr: SocketAddr) -> Option<usize> {
        self.cfg
            .listens
            .iter()
            .position(|l| transport.is_none_or(|t| t == l.transport) && l.addr == addr)
    }

    /// The stateless branch (RFC 3261 §16.11): the same for a retransmission (and for the
    /// CANCEL or non-2xx ACK of an INVITE), different for another transaction. Its last
    /// part is the loop-detection hash of §16.3 step 4.
    fn write_branch(
        &self,
        out: &mut String,
        msg: &Message,
        top: Option<&Via<'_>>,
        lh: u32,
        dialog: &[u8],
    ) {
        let mut h = WordHash::new();
        match top.and_then(|v| Some((v, v.branch()?))) {
            Some((v, branch)) if branch.starts_with("z9hG4bK") => {
                h.write(branch.as_bytes());
                // The host as parsed: an address by its bytes (no text written per
                // request), a name as written; the kind first, so that none reads as another.
                match v.host {
                    Host::Name(n) => {
                        h.feed(b"n");
                        h.feed(n.as_bytes());
                    }
                    Host::V4(a) => {
                        h.feed(b"4");
                        h.feed(&a.octets());
                    }
                    Host::V6(a) => {
                        h.feed(b"6");
                        h.feed(&a.octets());
                    }
                }
                h.end_field();
                h.write(&v.port.unwrap_or(0).to_be_bytes());
            }
            _ => {
                // RFC 2543 peer: the transaction is its identifying fields.
                h.write(msg.header(HeaderName::Via).unwrap_or("").as_bytes());
                h.write(msg.request_uri_str().unwrap_or("").as_bytes());
                h.write_request_ids(msg, dialog);
            }
        }
        out.push_str(BRANCH_PREFIX);
        text::push_hex_width(out, h.finish(), 16);
        out.push('-');
        text::push_hex_width(out, u64::from(lh), 8);
    }

    /// Whether a Via below the top one is siprox's with this request's loop hash.
    /// `next_via`: the second Via as validation parsed it (`Some(None)`: there is none),
    /// not parsed again; `None` when the caller has no validation at hand.
    fn is_loop(&self, msg: &Message, hash: u32, next_via: Option<Option<&Via<'_>>>) -> bool {
        // "-{:08x}" of the hash, without a String per request.
        let mut suffix = [b'-'; 9];
        for (i, d) in suffix[1..].iter_mut().enumerate() {
            *d = b"0123456789abcdef"[((hash >> (28 - 4 * i)) & 0xf) as usize];
        }
        let ours = |v: &Via<'_>| {
            v.branch()
                .is_some_and(|b| b.starts_with(BRANCH_PREFIX) && b.as_bytes().ends_with(&suffix))
                && self.sent_by_is_me(&v.host, v.port, v.transport)
        };
        // The top Via is the sender's: skipped before it is parsed; so is the second when
        // validation parsed it.
        let skip = match next_via {
            None => 1,
            Some(None) => return false,
            Some(Some(v)) if ours(v) => return true,
            Some(Some(_)) => 2,
        };
        msg.list_values(HeaderName::Via)
            .skip(skip)
            .filter_map(|v| v.ok().and_then(|v| crate::sip::Via::parse(v).ok()))
            .any(|v| ours(&v))
    }

    /// A deterministic To tag for local replies: the same for a retransmission.
    /// `sx` and 12 hex digits.
    /// `call_id` and `ids`: the request's, as validation (or [`Message::call_id`] and
    /// [`RequestIds::of`]) read them (`""` for a Call-ID that does not read).
    fn local_tag(&self, call_id: &str, ids: &RequestIds<'_>) -> text::Short<14> {
        let mut h = Fnv::new();
        h.write(call_id.as_bytes());
        h.write(ids.from_tag.unwrap_or("").as_bytes());
        h.write(&ids.cseq.to_be_bytes());
        let mut tag = text::Short::new(b"sx");
        tag.push_hex_width(h.finish() & 0xffff_ffff_ffff, 12);
        tag
    }

    /// True when the URI names siprox: one of its listen addresses or aliases, on the port
    /// siprox listens on (the scheme's default port when none is written).
    pub fn uri_is_me(&self, uri: &Uri<'_>) -> bool {
        match uri {
            Uri::Sip(s) => {
                let transport = s
                    .transport()
                    .and_then(Transport::parse)
                    .unwrap_or(if s.secure {
                        Transport::Tls
                    } else {
                        Transport::Udp
                    });
                let port = s.port.unwrap_or(transport.default_port());
                self.host_port_is_me(&s.host, port)
            }
            _ => false,
        }
    }

    fn sent_by_is_me(&self, host: &Host<'_>, port: Option<u16>, transport: &str) -> bool {
        let t = Transport::parse(transport).unwrap_or(Transport::Udp);
        self.host_port_is_me(host, port.unwrap_or(t.default_port()))
    }

    /// A listener bound to the wildcard of `ip`'s family takes every address of this host
    /// of that family: the loopback ones and those the runtime listed.
    fn wildcard_covers(&self, bound: IpAddr, ip: IpAddr) -> bool {
        bound.is_unspecified()
            && bound.is_ipv4() == ip.is_ipv4()
            && (ip.is_loopback() || self.cfg.local_ips.contains(&ip))
    }

    fn host_port_is_me(&self, host: &Host<'_>, port: u16) -> bool {
        for (l, t) in self.cfg.listens.iter().zip(&self.listen_text) {
            if l.addr.port() != port && t.adv_port != Some(port) {
                continue;
            }
            let host_ok = match host {
                Host::Name(n) => {
                    t.adv_host
                        .as_deref()
                        .is_some_and(|a| a.eq_ignore_ascii_case(n))
                        || (n.eq_ignore_ascii_case("localhost") && l.addr.ip().is_loopback())
                }
                _ => {
                    host.ip() == Some(l.addr.ip())
                        || t.adv_ip == host.ip()
                        || host
                            .ip()
                            .is_some_and(|ip| self.wildcard_covers(l.addr.ip(), ip))
                }
            };
            if host_ok {
                return true;
            }
        }
        if let Host::Name(n) = host {
            return self.cfg.aliases.iter().any(|a| a.eq_ignore_ascii_case(n));
        }
        false
    }
}

/// False when `text` (header values) certainly has no parameter `name` (lower case): no
/// `;`, then optional LWS, then `name` in any case. True does not mean it has one.
fn may_have_param(text: &str, name: &[u8]) -> bool {
    let b = text.as_bytes();
    // Each `;` found by a vector search: a Via of siprox's is long (branch, flow token)
    // and has few parameters.
    memchr::memchr_iter(b';', b).any(|at| {
        let mut j = at + 1;
        while b
            .get(j)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            j += 1;
        }
        b.get(j..j + name.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

fn advertised_host(l: &Listen) -> Option<&str> {
    let a = l.advertise.as_deref()?;
    if let Some(v6) = a.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(a.split(':').next().unwrap_or(a))
}

fn advertised_port(l: &Listen) -> Option<u16> {
    let a = l.advertise.as_deref()?;
    let after = match a.rfind(']') {
        Some(i) => &a[i + 1..],
        None => a,
    };
    after.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The next hop a SIP URI names (RFC 3263 input): `maddr` overrides the host. An IP
/// literal is resolved here (see [`resolve_literal`]).
fn hop_of(u: &SipUri<'_>) -> Hop {
    let hop = |host: &str| NextHop {
        host: host.to_owned(),
        port: u.port,
        transport: u.transport().and_then(Transport::parse),
        secure: u.secure,
    };
    let ip = match u.params.get("maddr").flatten() {
        Some(m) => {
            let m = m.trim_start_matches('[').trim_end_matches(']');
            match m.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Hop::Name(hop(m)),
            }
        }
        None => match u.host {
            Host::V4(a) => IpAddr::V4(a),
            Host::V6(a) => IpAddr::V6(a),
            Host::Name(n) => match n.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Hop::Name(hop(n)),
            },
        },
    };
    Hop::Addr(literal_destination(
        ip,
        u.port,
        u.transport().and_then(Transport::parse),
        u.secure,
    ))
}

/// Resolve a next hop without DNS, when its host is an IP literal (RFC 3263 §4.1, §4.2:
/// transport from the URI, else TLS for `sips`, else UDP; port from the URI, else the
/// transport's default).
fn resolve_literal(hop: &NextHop) -> Option<Destination> {
    let ip: IpAddr = hop.host.parse().ok()?;
    Some(literal_destination(ip, hop.port, hop.transport, hop.secure))
}

/// [`resolve_literal`] of an address already parsed.
fn literal_destination(
    ip: IpAddr,
    port: Option<u16>,
    transport: Option<Transport>,
    secure: bool,
) -> Destination {
    let transport = match (transport, secure) {
        (_, true) => Transport::Tls,
        (Some(t), false) => t,
        (None, false) => Transport::Udp,
    };
    Destination::addr(
        transport,
        SocketAddr::new(ip, port.unwrap_or(transport.default_port())),
    )
}

/// Where a locally generated reply goes: back on the stream, or for UDP to the source
/// address, on the source port when the request asked for rport (RFC 3581) or else the
/// Via port (RFC 3261 §18.2.2).
fn reply_destination(msg: &Message, rx: &Inbound, top: Option<&Via<'_>>) -> Destination {
    // Only UDP reads the Via; then the one validation parsed, when there is one.
    let parsed;
    let top = match top {
        _ if rx.transport != Transport::Udp => None,
        Some(v) => Some(v),
        None => {
            parsed = msg.top_via().ok();
            parsed.as_ref()
        }
    };
    let port = match top {
        Some(v) if v.rport().is_none() => v.port.unwrap_or(Transport::Udp.default_port()),
        _ => rx.source.port(),
    };
    Destination {
        conn: rx.conn,
        ..Destination::addr(rx.transport, SocketAddr::new(rx.source.ip(), port))
    }
}

/// True for an address a response may be sent to: not broadcast, multicast or unspecified.
fn usable_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

/// §16.3 step 4: the fields that stay the same when a request comes back in a loop (and
/// change in a spiral, where the Request-URI or the route differs).
/// `call_id` is the request's Call-ID as the caller already read it.
/// `ids` are the request's, as validation (or [`RequestIds::of`]) read them.
fn loop_hash(msg: &Message, call_id: &[u8], ids: &RequestIds<'_>) -> u32 {
    let mut h = WordHash::new();
    h.write(msg.request_uri_str().unwrap_or("").as_bytes());
    h.write_ids(call_id, ids);
    for r in msg.header_values(HeaderName::Route) {
        h.write(r.as_bytes());
    }
    for r in msg.header_values(HeaderName::ProxyRequire) {
        h.write(r.as_bytes());
    }
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

/// FNV-1a 64: tiny, deterministic across processes and versions (unlike std's
/// `DefaultHasher`). Byte at a time: kept for the To tag of local replies, which is on the
/// wire and must not change; the branch and the loop hash use [`WordHash`].
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so that ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The hash of the stateless branch and of the loop-detection suffix: eight bytes at a
/// time (the fields are Request-URIs, Call-IDs and Routes with long flow tokens), with no
/// per-process seed, so that every process and every node of one version writes the same
/// branch for the same request (a retransmission keeps its branch; only an upgrade
/// changes it). Not a defence against chosen collisions (neither was FNV): what collides
/// is the sender's own requests.
struct WordHash {
    h: u64,
    /// Bytes of the field not yet mixed (fewer than 8), little-endian in `tail`.
    tail: u64,
    tail_len: u32,
    /// Length of the field being fed.
    field_len: u64,
}

impl WordHash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> WordHash {
        WordHash {
            h: 0xcbf2_9ce4_8422_2325,
            tail: 0,
            tail_len: 0,
            field_len: 0,
        }
    }

    /// One word into the state: a bijection of the state for a given word, so that no
    /// input collapses what came before.
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h.rotate_left(27) ^ w).wrapping_mul(WordHash::K);
    }

    /// A whole field.
    fn write(&mut self, bytes: &[u8]) {
        self.feed(bytes);
        self.end_field();
    }

    /// Part of a field: feeding "ab" then "c" is feeding "abc".
    fn feed(&mut self, mut bytes: &[u8]) {
        self.field_len += bytes.len() as u64;
        if self.tail_len > 0 {
            while self.tail_len < 8 {
                let Some((&b, rest)) = bytes.split_first() else {
                    return;
                };
                self.tail |= u64::from(b) << (8 * self.tail_len);
                self.tail_len += 1;
                bytes = rest;
            }
            let w = self.tail;
            self.mix(w);
            self.tail = 0;
            self.tail_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.mix(u64::from_le_bytes(a));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.tail_len = words.remainder().len() as u32;
    }

    /// Ends a field: its last bytes, then its length, so that ("ab","c") and ("a","bc")
    /// differ.
    fn end_field(&mut self) {
        let (w, n) = (self.tail, self.field_len);
        self.mix(w);
        self.mix(n);
        self.tail = 0;
        self.tail_len = 0;
        self.field_len = 0;
    }

    /// The state, avalanched (each input bit reaches every output bit): `fmix64` of
    /// MurmurHash3.
    fn finish(&self) -> u64 {
        let mut x = self.h;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        x
    }

    /// Call-ID (`call_id`, as `msg.call_id()` reads it, "" when invalid), From tag, To tag
    /// and CSeq number: what identifies a request of a dialog (the method is left out so
    /// that a CANCEL hashes like its INVITE).
    fn write_request_ids(&mut self, msg: &Message, call_id: &[u8]) {
        self.write_ids(call_id, &RequestIds::of(msg));
    }

    /// [`write_request_ids`](Self::write_request_ids) with the ids already read.
    fn write_ids(&mut self, call_id: &[u8], ids: &RequestIds<'_>) {
        self.write(call_id);
        self.write(ids.from_tag.unwrap_or("").as_bytes());
        self.write(ids.to_tag.unwrap_or("").as_bytes());
        self.write(&ids.cseq.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;

impl Proxy {
    /// The flow an own Route's `nf=<conn>.<transport>.<mac>` names (cluster routing: a
    /// peer node forwards a request for a phone whose connection this node holds). `Err`
    /// for a token this node did not make, and for any token from something that is not a
    /// peer node: a node token is not bound to a dialog, so a phone that saw one (in a
    /// forwarded request's Route) must not be able to use it.
    fn node_flow_of_route(
        &self,
        u: &Uri<'_>,
        from_node: bool,
    ) -> Result<Option<Destination>, FlowTokenError> {
        let Some(nf) = u.as_sip().and_then(|s| s.params.get("nf")) else {
            return Ok(None);
        };
        let trusted = from_node || self.cfg.node_tokens_from_anyone;
        let Some(node) = self.cfg.node.as_deref().filter(|_| trusted) else {
            return Err(FlowTokenError::BadMac);
        };
        let (conn, transport) = self.cfg.flow_keys.verify_node(nf.unwrap_or(""), node)?;
        Ok(Some(Destination::flow(transport, ConnId(conn))))
    }
}

/// What an own Route's (or a strict router's Request-URI's) `fl=` parameter says.
enum RouteToken {
    /// No token.
    None,
    /// A token siprox signed for this dialog, and the flow it names for a request that
    /// arrived on the connection it came in on (`None`: no connection to use).
    Signed(Option<Destination>),
}

/// A request inside a dialog: its To carries a tag (RFC 3261 §12.2).
fn in_dialog(msg: &Message) -> bool {
    msg.to().ok().is_some_and(|t| t.tag().is_some())
}

/// The flow an own Route's `fl=<a>.<b>.<mac>` names for a request that arrived on
/// `rx_conn` in the dialog `dialog` (its Call-ID): one that came in on connection `a`
/// goes out on `b`, and the other way round. The transport is the Route's (flows are TCP
/// or TLS). `Err`: a token siprox did not make for this dialog (forged, altered, of
/// another dialog, or of a key no longer held): the request is refused.
fn flow_of_route(
    u: &Uri<'_>,
    rx_conn: Option<ConnId>,
    keys: &FlowKeys,
    dialog: &[u8],
) -> Result<RouteToken, FlowTokenError> {
    let Some(s) = u.as_sip() else {
        return Ok(RouteToken::None);
    };
    let Some(fl) = s.params.get("fl") else {
        return Ok(RouteToken::None);
    };
    let (a, b) = keys.verify(fl.unwrap_or(""), dialog)?;
    let rx = rx_conn.map(|c| c.0);
    let out = if rx == Some(a) {
        b
    } else if rx == Some(b) {
        a
    } else {
        return Ok(RouteToken::Signed(None));
    };
    if out == 0 {
        return Ok(RouteToken::Signed(None));
    }
    let transport = match s.transport().and_then(Transport::parse) {
        Some(t @ (Transport::Tcp | Transport::Tls)) => t,
        _ if s.secure => Transport::Tls,
        _ => return Ok(RouteToken::Signed(None)),
    };
    // No address: a flow is only ever used while its connection is open.
    Ok(RouteToken::Signed(Some(Destination::flow(
        transport,
        ConnId(out),
    ))))
}
