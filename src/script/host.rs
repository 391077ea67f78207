//! What a route script's effects do: the [`Host`] through which forward, sl_send_reply,
//! save/lookup, the digest functions and dispatch_rpc become proxy actions, and the entry
//! points for requests, replies, TLS events and HTTP requests. Decides only: what needs the
//! runtime's state (the location store, credentials, which connections are open, logging)
//! comes in through the small traits below, and the caller carries the actions out. Must
//! never perform I/O, block or panic (the interpreter bounds every run).

use crate::auth::{
    self, AuthKind, AuthResult, Authenticator, Challenge, CryptoError, UserDb, Verdict,
};
use crate::proxy::{Action, ConnId, Destination, ForwardOpts, Inbound, Proxy};
use crate::registrar::{self, Delivery, LocationStore, LookupResult, SaveError, StoreError};
use crate::script::AuthFn;
use crate::script::{self, Host, Level, MsgCtx, Script, ScriptSet};
use crate::sip::HeaderName;
use crate::sip::{Message, Validated};
use crate::tls::TlsFacts;

/// Whether a connection is still open (the runtime's connection table): a binding whose
/// flow is gone answers 480 instead of being forwarded nowhere.
pub trait Liveness {
    fn is_open(&self, conn: ConnId) -> bool;
}

/// Digest authentication for `www_authorize` and friends: the users, the nonce state and
/// the secret live in the runtime (and, in a cluster, in Redis).
pub trait Auth {
    /// Checks the request's credentials for `realm`.
    fn authorize(&self, msg: &Message, kind: AuthKind, realm: &str, now: i64) -> AuthResult;
    /// A fresh 401/407 challenge for `realm`.
    fn challenge(
        &self,
        kind: AuthKind,
        realm: &str,
        stale: bool,
        now: i64,
    ) -> Result<Challenge, CryptoError>;
}

/// The process's [`Authenticator`] (nonces, secret) with the users of one snapshot.
pub struct Digest<'a> {
    pub authenticator: &'a Authenticator,
    pub users: &'a dyn UserDb,
}

impl Auth for Digest<'_> {
    fn authorize(&self, msg: &Message, kind: AuthKind, realm: &str, now: i64) -> AuthResult {
        self.authenticator
            .authorize(msg, kind, realm, self.users, now)
    }

    fn challenge(
        &self,
        kind: AuthKind,
        realm: &str,
        stale: bool,
        now: i64,
    ) -> Result<Challenge, CryptoError> {
        self.authenticator.challenge(kind, realm, stale, now)
    }
}

/// Something a run noticed that the runtime may want to log (the core does not log).
#[derive(Debug)]
pub enum Note<'a> {
    /// `forward(target)` with a target that does not parse.
    BadForwardTarget { target: &'a str, error: &'a str },
    /// `save()` refused a REGISTER (answered with the error's reply).
    RegisterRefused(&'a SaveError),
    /// The location store failed during `lookup()`.
    LookupFailed(&'a StoreError),
    /// `*_authorize` refused the credentials (answered 403 or 400).
    CredentialsRefused(&'a AuthResult),
    /// A digest challenge could not be built.
    ChallengeFailed(&'a CryptoError),
}

/// Where a script's `log`/`xlog` lines and the run's [`Note`]s go.
pub trait ScriptLog {
    fn log(&self, level: Level, msg: &str);
    /// False: the script does not build the line at all.
    fn enabled(&self, level: Level) -> bool;
    fn note(&self, note: Note<'_>);
}

/// What `t_check_trans()` found for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCheck {
    /// No transaction: the script goes on (-1).
    None,
    /// A transaction exists (a CANCEL: its INVITE's; an ACK: the one it acknowledges): 1.
    Exists,
    /// A retransmission of a transaction's request, absorbed by the runtime (the last
    /// response re-sent): the run ends, as in Kamailio.
    Absorbed,
}

/// The runtime's transaction table as the request route sees it (`t_check_trans()`,
/// `t_newtran()`). Called during the run; the runtime sends what it must itself.
pub trait Transactions {
    fn check(&self, msg: &Message) -> TxCheck;
    /// Make `msg`'s server transaction now (100 Trying for an INVITE). `false`: it has
    /// one already, or the transaction limit is reached (counted by the runtime).
    fn create(&self, msg: &Message, rx: &Inbound) -> bool;
}

/// The registrar behind `save("location")` and `lookup("location")`.
pub struct Registrar<'a> {
    /// The bindings (the in-memory store, or Redis in a cluster).
    pub store: &'a dyn LocationStore,
    /// `[registrar]` of the snapshot the message is handled with.
    pub settings: &'a registrar::Settings,
    pub liveness: &'a dyn Liveness,
}

/// What a run may use beyond the message and the proxy: the runtime's state behind the
/// seams above, and the time. Without a registrar or credentials, save/lookup and the
/// digest functions return -1 (replies, events and HTTP requests run without them).
pub struct Env<'a> {
    pub registrar: Option<Registrar<'a>>,
    pub auth: Option<&'a dyn Auth>,
    pub log: &'a dyn ScriptLog,
    /// Unix seconds, read once per message by the caller.
    pub now: i64,
    /// The transaction table, for a request route (`t_check_trans`, `t_newtran`).
    pub tm: Option<&'a dyn Transactions>,
    /// The `$sht` tables (`[htables]`).
    pub htables: Option<&'a super::htable::Htables>,
}

impl<'a> Env<'a> {
    /// No registrar, no credentials.
    pub fn bare(log: &'a dyn ScriptLog, now: i64) -> Env<'a> {
        Env {
            registrar: None,
            auth: None,
            log,
            now,
            tm: None,
            htables: None,
        }
    }
}

/// Where a script's effects go: the proxy core builds the actions, the caller carries them
/// out after the run (a script never waits for I/O).
pub struct ProxyHost<'a> {
    pub proxy: &'a Proxy,
    pub msg: Option<&'a Message>,
    pub rx: &'a Inbound,
    pub tag: Option<&'a str>,
    pub actions: Vec<(Action, ForwardOpts)>,
    /// What the runtime's validation of `msg` parsed, which `forward()` reuses (a script
    /// edits only the forwarded copy: the message stays the one validated).
    checked: Option<&'a Validated<'a>>,
    /// The message is an HTTP request on a SIP listener (SER-style RPC): replies and
    /// `dispatch_rpc()` are recorded, not sent as SIP.
    http: bool,
    /// `dispatch_rpc()` was called.
    pub dispatched: bool,
    /// It was `dispatch_rpc_trusted()`: no allow-list check.
    trusted: bool,
    /// `sl_send_reply()` on an HTTP request: its code and reason.
    pub http_reply: Option<(u16, String)>,
    /// Registrations, credentials, liveness, logging and the time.
    env: &'a Env<'a>,
    /// Set by `lookup("location")`: the registered flow and Path the next `forward()` uses.
    flow: Option<Destination>,
    routes: Vec<String>,
    /// The last `*_authorize` found a stale nonce: the next challenge says `stale=true`.
    stale: bool,
    now: i64,
    /// `t_relay()` was called: what the runtime relays through a transaction.
    pub relay: Option<Relay>,
    /// Running a failure_route: `t_reply` records the final response instead of replying.
    failure: bool,
    /// `t_reply(code, reason)` in failure_route.
    pub final_reply: Option<(u16, String)>,
    /// `t_newtran()` made the request's server transaction during this run.
    pub newtran: bool,
    /// `t_reply()`s after `t_newtran()`: status and bytes, for the server transaction.
    pub t_replies: Vec<(u16, bytes::Bytes)>,
    /// The branches for the next `t_relay()` besides the Request-URI's: `[0]` rings with
    /// it (`lookup()`'s other contacts of the same q, `append_branch()`), the next groups
    /// (lower q) wait for `t_next_contacts()`. Empty (not allocated) for one binding.
    forks: Vec<Vec<Contact>>,
    /// In failure_route: whether the transaction still has a q group for `t_next_contacts()`.
    has_next: bool,
    /// `t_next_contacts()` was called (and a group is left).
    pub next_contacts: bool,
}

/// One more destination of a forking `t_relay()`: a registered contact or an
/// `append_branch()`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contact {
    ruri: Option<String>,
    /// Its `$du` (a Path's or owning node's Route).
    dst: Option<String>,
    /// Its registered flow.
    flow: Option<Destination>,
    /// Its Path as Route values.
    routes: Vec<String>,
}

impl Contact {
    fn of(t: &registrar::Target) -> Contact {
        let mut c = Contact {
            ruri: Some(t.ruri.clone()),
            dst: None,
            flow: None,
            routes: t.route.clone(),
        };
        match t.delivery {
            Delivery::Connection { .. } | Delivery::Datagram { .. } => c.flow = t.destination(),
            Delivery::Node(_) | Delivery::Uri => c.dst = t.route.first().map(|r| route_uri(r)),
        }
        c
    }
}

/// A Route value's URI (`<sip:edge;lr>` -> `sip:edge;lr`).
fn route_uri(r: &str) -> String {
    let inner = r.trim_start_matches('<');
    inner.split('>').next().unwrap_or(inner).to_owned()
}

/// A `t_relay()`: how to forward (as `forward()` would, with the script's edits) and the
/// transaction settings the script made before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub opts: ForwardOpts,
    /// More branches rung in parallel with `opts` (`lookup()`'s other contacts of the
    /// highest q, `append_branch()`), in order.
    pub branches: Vec<ForwardOpts>,
    /// The lower q groups of `lookup()`, highest first, for `t_next_contacts()`.
    pub next: Vec<Vec<ForwardOpts>>,
    /// `t_on_branch("NAME")`.
    pub branch_route: Option<String>,
    /// `t_on_failure("NAME")`.
    pub failure_route: Option<String>,
    /// `t_set_fr(invite_ms, other_ms)` (0: the default).
    pub fr: Option<(u32, u32)>,
    /// `t_on_reply("NAME")`.
    pub reply_route: Option<String>,
    /// The message and branch flags when `t_relay()` ran: the transaction keeps them for
    /// its failure_route and `onreply_route[NAME]`.
    pub flags: u64,
    pub bflags: u64,
    /// The `$avp`s when `t_relay()` ran: the transaction keeps them too.
    pub avps: script::Avps,
}

impl<'a> ProxyHost<'a> {
    pub fn new(
        proxy: &'a Proxy,
        env: &'a Env<'a>,
        msg: Option<&'a Message>,
        rx: &'a Inbound,
        tag: Option<&'a str>,
    ) -> Self {
        ProxyHost {
            proxy,
            msg,
            rx,
            tag,
            actions: Vec::new(),
            checked: None,
            http: false,
            dispatched: false,
            trusted: false,
            http_reply: None,
            env,
            flow: None,
            routes: Vec::new(),
            stale: false,
            now: env.now,
            relay: None,
            failure: false,
            final_reply: None,
            newtran: false,
            t_replies: Vec::new(),
            forks: Vec::new(),
            has_next: false,
            next_contacts: false,
        }
    }
}

impl<'a> ProxyHost<'a> {
    /// The actions decided so far, in order.
    pub fn into_actions(self) -> Vec<(Action, ForwardOpts)> {
        self.actions
    }

    /// A reply decided by a registrar or auth function; at most one reply per request.
    fn send_reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str, headers: &str) {
        let Some(msg) = self.msg else { return };
        if ctx.replied.is_some() {
            return;
        }
        let mut extra = ctx.edits.reply_hf.clone();
        extra.push_str(headers);
        let action = self.proxy.reply(msg, self.rx, code, reason, &extra);
        self.actions.push((action, ForwardOpts::default()));
        ctx.replied = Some(code);
    }
}

impl ProxyHost<'_> {
    /// The forwarding options of `forward()` / `t_relay()`: the script's edits and target.
    fn forward_opts(
        &mut self,
        ctx: &mut MsgCtx<'_>,
        target: Option<&str>,
    ) -> Result<ForwardOpts, i32> {
        let target = match target.or(ctx.edits.dst_uri.as_deref()) {
            Some(t) => match script::parse_target(t) {
                Ok(hop) => Some(hop),
                Err(e) => {
                    self.env.log.note(Note::BadForwardTarget {
                        target: t,
                        error: e,
                    });
                    return Err(-1);
                }
            },
            None => None,
        };
        let e = &ctx.edits;
        let opts = ForwardOpts {
            target,
            ruri: e.new_ruri.clone(),
            record_route: e.record_route,
            rr_params: e.rr_params.clone(),
            max_forwards: e.max_forwards,
            append_hf: e.append_hf.clone(),
            remove_hf: e.remove_hf.clone(),
            script_tag: self.tag.map(str::to_owned),
            flow: self.flow.take(),
            routes: std::mem::take(&mut self.routes),
            from_node: ctx.tls.is_some_and(|t| t.cluster_peer),
            branch: None,
            force_rport: e.force_rport,
            send_socket: e.send_socket,
        };
        Ok(opts)
    }

    /// `base` (the script's edits) toward one more contact.
    fn contact_opts(&self, base: &ForwardOpts, c: Contact) -> Option<ForwardOpts> {
        let target = match c.dst.as_deref().map(script::parse_target) {
            Some(Ok(hop)) => Some(hop),
            Some(Err(e)) => {
                let t = c.dst.as_deref().unwrap_or_default();
                self.env.log.note(Note::BadForwardTarget {
                    target: t,
                    error: e,
                });
                return None;
            }
            None => None,
        };
        Some(ForwardOpts {
            target,
            ruri: c.ruri.or_else(|| base.ruri.clone()),
            flow: c.flow,
            routes: c.routes,
            ..base.clone()
        })
    }
}

impl Host for ProxyHost<'_> {
    fn forward(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32 {
        let Some(msg) = self.msg.filter(|m| m.is_request()) else {
            return -1;
        };
        let opts = match self.forward_opts(ctx, target) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let action = self
            .proxy
            .forward_checked(msg, self.rx, &opts, self.checked);
        // A peer node sent this over a node token (`nf=`) to a flow that has closed since:
        // RFC 5626 §5.3, 430 Flow Failed, so that the node tries another binding or answers.
        if let (true, Some(reg), crate::proxy::Action::Send { dest, .. }) =
            (opts.from_node, self.env.registrar.as_ref(), &action)
        {
            if let crate::proxy::Target::Flow(c) = dest.target {
                if !reg.liveness.is_open(c) && msg.method_kind() != Some(crate::sip::Method::Ack) {
                    self.send_reply(ctx, 430, "Flow Failed", "");
                    return -1;
                }
            }
        }
        self.actions.push((action, opts));
        1
    }

    fn reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str) -> i32 {
        let Some(msg) = self.msg.filter(|m| m.is_request()) else {
            return -1;
        };
        // One answer per request: a registrar or auth function may have answered already.
        if !(100..=699).contains(&code) || ctx.replied.is_some() {
            return -1;
        }
        if self.http {
            if self.http_reply.is_none() {
                self.http_reply = Some((code, reason.to_owned()));
            }
            return 1;
        }
        let mut action = self
            .proxy
            .reply(msg, self.rx, code, reason, &ctx.edits.reply_hf);
        if let Action::Send { dest, .. } = &mut action {
            // force_rport(): to the source port whatever the Via says (RFC 3581).
            if ctx.edits.force_rport && self.rx.transport == crate::proxy::Transport::Udp {
                dest.target = crate::proxy::Target::Addr(self.rx.source);
            }
            // set_reply_no_connect(): the request's connection or nothing.
            if ctx.edits.reply_no_connect {
                if let Some(c) = dest.conn {
                    *dest = Destination::flow(dest.transport, c);
                }
            }
        }
        self.actions.push((action, ForwardOpts::default()));
        1
    }

    fn t_relay(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32 {
        if self.http || !self.msg.is_some_and(|m| m.is_request()) {
            return -1;
        }
        // One relay per run: the runtime makes its branches (the Request-URI's, lookup()'s
        // of the same q, append_branch()'s); failure_route adds the next ones.
        if self.relay.is_some() {
            return -1;
        }
        let opts = match self.forward_opts(ctx, target) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut groups = std::mem::take(&mut self.forks).into_iter().map(|g| {
            g.into_iter()
                .filter_map(|c| self.contact_opts(&opts, c))
                .collect::<Vec<_>>()
        });
        let branches = groups.next().unwrap_or_default();
        let next = groups.filter(|g| !g.is_empty()).collect();
        self.relay = Some(Relay {
            opts,
            branches,
            next,
            branch_route: ctx.tm.branch_route.clone(),
            failure_route: ctx.tm.failure_route.clone(),
            fr: ctx.tm.fr,
            reply_route: ctx.tm.reply_route.clone(),
            flags: ctx.flags,
            bflags: ctx.bflags,
            avps: Vec::new(),
        });
        1
    }

    fn append_branch(&mut self, ctx: &mut MsgCtx<'_>, uri: Option<&str>) -> i32 {
        if self.http || self.relay.is_some() {
            return -1;
        }
        let c = match uri {
            Some(u) => Contact {
                ruri: Some(u.to_owned()),
                dst: None,
                flow: None,
                routes: Vec::new(),
            },
            // The Request-URI as it is now: a later `$ru = ...` changes the main branch only.
            None => Contact {
                ruri: ctx.edits.new_ruri.clone().or_else(|| {
                    self.msg
                        .and_then(|m| m.request_uri_str())
                        .map(str::to_owned)
                }),
                dst: ctx.edits.dst_uri.clone(),
                flow: self.flow.clone(),
                routes: self.routes.clone(),
            },
        };
        match self.forks.first_mut() {
            Some(g) => g.push(c),
            None => self.forks.push(vec![c]),
        }
        1
    }

    fn t_next_contacts(&mut self, _ctx: &mut MsgCtx<'_>) -> i32 {
        if !self.failure || !self.has_next || self.next_contacts || self.relay.is_some() {
            return -1;
        }
        self.next_contacts = true;
        1
    }

    fn t_reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str) -> i32 {
        if self.newtran && !self.failure {
            // After t_newtran(): through the server transaction (retransmitted over UDP,
            // the caller's retransmissions answered with it).
            let Some(msg) = self.msg else { return -1 };
            if self.t_replies.last().is_some_and(|(c, _)| *c >= 200) || ctx.replied.is_some() {
                return -1;
            }
            return match self
                .proxy
                .reply(msg, self.rx, code, reason, &ctx.edits.reply_hf)
            {
                Action::Send { bytes, .. } => {
                    self.t_replies.push((code, bytes));
                    1
                }
                _ => -1,
            };
        }
        if !self.failure {
            return self.reply(ctx, code, reason);
        }
        if code < 200 || self.final_reply.is_some() || self.relay.is_some() {
            return -1;
        }
        self.final_reply = Some((code, reason.to_owned()));
        1
    }

    fn t_check_trans(&mut self, _ctx: &mut MsgCtx<'_>) -> i32 {
        let (Some(msg), Some(tm)) = (self.msg, self.env.tm) else {
            return -1;
        };
        if self.http {
            return -1;
        }
        match tm.check(msg) {
            TxCheck::None => -1,
            TxCheck::Exists => 1,
            TxCheck::Absorbed => 0,
        }
    }

    fn t_newtran(&mut self, _ctx: &mut MsgCtx<'_>) -> i32 {
        let (Some(msg), Some(tm)) = (self.msg, self.env.tm) else {
            return -1;
        };
        if self.http || self.failure || self.newtran || self.relay.is_some() {
            return -1;
        }
        if !tm.create(msg, self.rx) {
            return -1;
        }
        self.newtran = true;
        1
    }

    fn is_http(&self) -> bool {
        self.http
    }

    fn is_myself(&self, host: &str, port: Option<u16>) -> bool {
        self.proxy.is_myself(host, port)
    }

    fn send_socket(
        &self,
        transport: Option<crate::proxy::Transport>,
        addr: std::net::SocketAddr,
    ) -> Option<(crate::proxy::Transport, std::net::SocketAddr)> {
        self.proxy
            .listener(transport, addr)
            .map(|l| (l.transport, l.addr))
    }

    fn log(&mut self, level: Level, msg: &str) {
        self.env.log.log(level, msg)
    }

    fn log_enabled(&self, level: Level) -> bool {
        self.env.log.enabled(level)
    }

    fn now_unix(&self) -> i64 {
        self.now
    }

    fn sht_get(&self, table: &str, key: &str) -> Option<crate::select::Value<'static>> {
        self.env.htables?.get(table, key, self.env.now)
    }

    fn sht_set(
        &mut self,
        table: &str,
        key: &str,
        v: Option<crate::select::Value<'static>>,
    ) -> bool {
        self.env
            .htables
            .is_some_and(|h| h.set(table, key, v, self.env.now))
    }

    fn save(&mut self, ctx: &mut MsgCtx<'_>, _table: &str, _flags: &str) -> i32 {
        let (Some(msg), Some(reg)) = (self.msg, self.env.registrar.as_ref()) else {
            return -1;
        };
        match registrar::save(msg, self.rx, self.now, reg.settings, reg.store) {
            Ok(saved) => {
                let r = saved.reply(self.now);
                self.send_reply(ctx, r.code, &r.reason, &r.headers);
                1
            }
            Err(e) => {
                let r = e.reply();
                self.env.log.note(Note::RegisterRefused(&e));
                self.send_reply(ctx, r.code, &r.reason, &r.headers);
                -1
            }
        }
    }

    fn lookup(&mut self, ctx: &mut MsgCtx<'_>, _table: &str, _flags: &str) -> i32 {
        let (Some(msg), Some(reg)) = (self.msg, self.env.registrar.as_ref()) else {
            return -1;
        };
        let uri_text = ctx
            .edits
            .new_ruri
            .clone()
            .or_else(|| msg.request_uri_str().map(str::to_owned));
        let Some(uri_text) = uri_text else { return -1 };
        let Ok(uri) = crate::sip::Uri::parse(&uri_text) else {
            return -1;
        };
        let alive = |c: ConnId| reg.liveness.is_open(c);
        match registrar::lookup(&uri, self.now, reg.settings, reg.store, &alive) {
            Ok(LookupResult::Found(mut t)) => {
                // Several bindings: the others become branches of the next t_relay(), by
                // q group (a stateless forward() uses only the first).
                self.forks.clear();
                let others = std::mem::take(&mut t.others);
                if !others.is_empty() {
                    let mut q = t.binding.rank_q();
                    self.forks.push(Vec::new());
                    for o in others {
                        if o.binding.rank_q() != q {
                            q = o.binding.rank_q();
                            self.forks.push(Vec::new());
                        }
                        if let Some(g) = self.forks.last_mut() {
                            g.push(Contact::of(&o));
                        }
                    }
                }
                ctx.edits.new_ruri = Some(t.ruri.clone());
                self.routes = t.route.clone();
                match t.delivery {
                    Delivery::Connection { .. } | Delivery::Datagram { .. } => {
                        self.flow = t.destination();
                    }
                    // The Route names the owning node (its advertise URI: the runtime
                    // connects to a node's address with the cluster's TLS domain) or the
                    // edge proxy the phone registered through.
                    Delivery::Node(_) | Delivery::Uri => {
                        if let Some(first) = t.route.first() {
                            ctx.edits.dst_uri = Some(route_uri(first));
                        }
                    }
                }
                1
            }
            // RFC 5626 / Kamailio's handle_lost_tcp: the phone's connection is gone, and a
            // phone behind NAT cannot be reached any other way: 480, no connect attempt.
            Ok(LookupResult::Unreachable { .. }) => {
                self.send_reply(ctx, 480, "Temporarily Unavailable", "");
                -1
            }
            // A cluster node that cannot see the other nodes' bindings now: RFC 3261
            // §21.5.4, a 503 that says when to try again (the phone may be on another node).
            Ok(LookupResult::Unavailable { retry_after }) => {
                self.send_reply(
                    ctx,
                    503,
                    "Service Unavailable",
                    &format!("Retry-After: {retry_after}\r\n"),
                );
                -1
            }
            Ok(LookupResult::NotFound) => -1,
            Err(e) => {
                self.env.log.note(Note::LookupFailed(&e));
                -1
            }
        }
    }

    fn auth(&mut self, ctx: &mut MsgCtx<'_>, func: AuthFn, a: &str, _b: &str) -> i32 {
        let (Some(msg), Some(creds)) = (self.msg, self.env.auth) else {
            return -1;
        };
        let kind = match func {
            AuthFn::WwwAuthorize | AuthFn::WwwChallenge => AuthKind::Www,
            AuthFn::ProxyAuthorize | AuthFn::ProxyChallenge => AuthKind::Proxy,
            AuthFn::ConsumeCredentials => {
                let name = if msg.header(HeaderName::ProxyAuthorization).is_some() {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                };
                ctx.edits.remove_hf.push(name.to_owned());
                return 1;
            }
        };
        let realm = if a.is_empty() {
            auth::default_realm(msg, kind).unwrap_or_default()
        } else {
            a.to_owned()
        };
        match func {
            AuthFn::WwwAuthorize | AuthFn::ProxyAuthorize => {
                let result = creds.authorize(msg, kind, &realm, self.now);
                match result.verdict() {
                    Verdict::Proceed => 1,
                    Verdict::Challenge { stale } => {
                        self.stale = stale;
                        -1
                    }
                    // Wrong password, replayed nonce, malformed credentials: answered here
                    // (403 and friends), so the script's challenge does not ask again.
                    Verdict::Reject { code, reason } => {
                        self.env.log.note(Note::CredentialsRefused(&result));
                        self.send_reply(ctx, code, &reason, "");
                        -2
                    }
                }
            }
            _ => match creds.challenge(kind, &realm, self.stale, self.now) {
                Ok(c) => {
                    self.send_reply(ctx, c.code, c.reason, &c.headers);
                    1
                }
                Err(e) => {
                    self.env.log.note(Note::ChallengeFailed(&e));
                    -1
                }
            },
        }
    }

    fn dispatch_rpc(&mut self, _ctx: &mut MsgCtx<'_>) -> i32 {
        if !self.http {
            return -1;
        }
        self.dispatched = true;
        1
    }

    fn dispatch_rpc_trusted(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let r = self.dispatch_rpc(ctx);
        if r > 0 {
            self.trusted = true;
        }
        r
    }
}

/// What a request route decided.
#[derive(Debug)]
pub struct RequestRun {
    /// The actions to carry out, in order.
    pub actions: Vec<(Action, ForwardOpts)>,
    /// How the route ended; `is_error()`: it failed at run time (recursion or step limit),
    /// which the runtime counts.
    pub outcome: script::Outcome,
    /// `t_relay()`: the runtime relays the request through a transaction.
    pub relay: Option<Relay>,
    /// `t_newtran()` made the request's server transaction during the run.
    pub newtran: bool,
    /// `t_reply()`s after `t_newtran()`, for that transaction (status, bytes).
    pub t_replies: Vec<(u16, bytes::Bytes)>,
}

/// Run `script` on a request; returns the actions to carry out, in order. A script that
/// fails at run time (recursion or step limit) answers 500 unless it already answered.
pub fn run_request(
    script: &Script,
    tag: Option<&str>,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> RequestRun {
    run_request_checked(script, tag, proxy, env, msg, rx, tls, None)
}

/// [`run_request`] given what the runtime's [`Message::validated`] parsed of `msg`:
/// `forward()` reuses it instead of parsing the request again (see
/// [`Proxy::forward_checked`]). `checked` must be `msg`'s own.
#[allow(clippy::too_many_arguments)]
pub fn run_request_checked<'m>(
    script: &Script,
    tag: Option<&str>,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &'m Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
    checked: Option<&Validated<'m>>,
) -> RequestRun {
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, tag);
    host.checked = checked;
    let mut ctx = MsgCtx::new(msg, rx, tls);
    let outcome = script.run_request(&mut ctx, &mut host);
    if outcome.is_error() && outcome.replied.is_none() && !outcome.forwarded {
        let a = proxy.reply(msg, rx, 500, "Server Internal Error (route script)", "");
        host.relay = None;
        match a {
            Action::Send { bytes, .. } if host.newtran => host.t_replies.push((500, bytes)),
            a => host.actions.push((a, ForwardOpts::default())),
        }
    }
    if let Some(r) = host.relay.as_mut() {
        r.avps = script.avps(&ctx);
    }
    RequestRun {
        actions: host.actions,
        outcome,
        relay: host.relay,
        newtran: host.newtran,
        t_replies: host.t_replies,
    }
}

/// What a failure_route decided.
#[derive(Debug)]
pub struct FailureRun {
    /// `t_relay()` to a new destination: one more branch (more with `append_branch()`).
    pub relay: Option<Relay>,
    /// `t_reply(code, reason)`: the caller's final response instead of the best one.
    pub reply: Option<(u16, String)>,
    /// `t_next_contacts()`: relay to the transaction's next q group.
    pub next_contacts: bool,
    /// `t_on_failure` / `t_on_branch` as the run left them (armed for what it relays).
    pub failure_route: Option<String>,
    pub branch_route: Option<String>,
    pub outcome: script::Outcome,
}

/// What a failure_route is told about the failed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The best final status (`$T_reply_code`).
    pub status: u16,
    /// The branch it came from (`$T_branch_idx`).
    pub branch_idx: Option<usize>,
    /// A q group is left for `t_next_contacts()`.
    pub has_next: bool,
    /// How the failed branch ended (`t_branch_timeout`, `t_branch_replied`).
    pub branch: script::BranchEnd,
    /// The message and branch flags the transaction kept from `t_relay()`.
    pub flags: u64,
    pub bflags: u64,
    /// The `$avp`s the transaction kept from `t_relay()`.
    pub avps: script::Avps,
}

/// Run `failure_route[name]` for a request whose branches all failed. `None` when the
/// script has no such route.
#[allow(clippy::too_many_arguments)]
pub fn run_failure(
    script: &Script,
    name: &str,
    tag: Option<&str>,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
    failed: Failed,
) -> Option<FailureRun> {
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, tag);
    host.failure = true;
    host.has_next = failed.has_next;
    let mut ctx = MsgCtx::new(msg, rx, tls);
    ctx.tm.reply_code = Some(failed.status);
    ctx.tm.branch = Some(failed.branch);
    ctx.tm.branch_idx = failed.branch_idx;
    ctx.flags = failed.flags;
    ctx.bflags = failed.bflags;
    script.load_avps(&mut ctx, &failed.avps);
    let outcome = script.run_named(script::RouteKind::Failure, name, &mut ctx, &mut host)?;
    let ok = !outcome.is_error();
    if let Some(r) = host.relay.as_mut() {
        r.avps = script.avps(&ctx);
    }
    Some(FailureRun {
        relay: host.relay.filter(|_| ok),
        reply: host.final_reply,
        next_contacts: host.next_contacts && ok,
        failure_route: ctx.tm.failure_route,
        branch_route: ctx.tm.branch_route,
        outcome,
    })
}

/// Run `branch_route[name]` for branch `idx` of a relayed request, about to be sent with
/// `opts`: `$ru` is the branch's, `$T_branch_idx` is `idx`; its Request-URI, `$du` and
/// header edits change this branch only. `Some(false)`: the route dropped the branch;
/// `None`: the script has no such route. `flags` are the message and branch flags the
/// transaction kept from `t_relay()`.
#[allow(clippy::too_many_arguments)]
pub fn run_branch(
    script: &Script,
    name: &str,
    tag: Option<&str>,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
    idx: usize,
    opts: &mut ForwardOpts,
    flags: (u64, u64),
    avps: &[(String, crate::select::Value<'static>)],
) -> Option<bool> {
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, tag);
    let mut ctx = MsgCtx::new(msg, rx, tls);
    (ctx.flags, ctx.bflags) = flags;
    script.load_avps(&mut ctx, avps);
    ctx.tm.branch_idx = Some(idx);
    ctx.edits.new_ruri = opts.ruri.clone();
    let outcome = script.run_named(script::RouteKind::Branch, name, &mut ctx, &mut host)?;
    if matches!(outcome.end, script::End::Drop) {
        return Some(false);
    }
    let e = ctx.edits;
    opts.ruri = e.new_ruri;
    opts.append_hf.push_str(&e.append_hf);
    opts.remove_hf.extend(e.remove_hf);
    if let Some(d) = e.dst_uri {
        match script::parse_target(&d) {
            Ok(hop) => {
                opts.target = Some(hop);
                opts.flow = None;
            }
            Err(error) => env.log.note(Note::BadForwardTarget { target: &d, error }),
        }
    }
    Some(true)
}

/// Run the `onreply_route` of `script` on a response. `false`: the script dropped it.
pub fn run_reply(
    script: &Script,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> bool {
    if !script.has_reply_route() {
        return true;
    }
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, None);
    let mut ctx = MsgCtx::new(msg, rx, tls);
    let outcome = script.run_reply(&mut ctx, &mut host);
    !matches!(outcome.end, script::End::Drop)
}

/// Run `onreply_route[name]` (armed by `t_on_reply`) on a response of a transaction's
/// branch, after the main onreply_route. `Some(false)`: the route dropped it (the runtime
/// drops only a provisional response); `None`: the script has no such route. `flags` are
/// the message and branch flags the transaction kept from `t_relay()` (`isflag` reads them).
#[allow(clippy::too_many_arguments)]
pub fn run_reply_named(
    script: &Script,
    name: &str,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
    flags: (u64, u64),
    branch_idx: Option<usize>,
    avps: &[(String, crate::select::Value<'static>)],
) -> Option<bool> {
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, None);
    let mut ctx = MsgCtx::new(msg, rx, tls);
    (ctx.flags, ctx.bflags) = flags;
    script.load_avps(&mut ctx, avps);
    ctx.tm.reply_code = msg.status();
    ctx.tm.branch_idx = branch_idx;
    let outcome = script.run_named(script::RouteKind::Reply, name, &mut ctx, &mut host)?;
    Some(!matches!(outcome.end, script::End::Drop))
}

/// TLS connection events (`event_route[tls:connection-in]`, `[tls:connection-closed]`):
/// the script of the connection's domain, else the default. `false`: the route dropped
/// the connection (only meaningful for `connection-in`, which then closes it).
pub fn run_event(
    set: &ScriptSet,
    event: &str,
    proxy: &Proxy,
    env: &Env<'_>,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> bool {
    let script = tls
        .and_then(|t| t.domain.as_deref())
        .and_then(|d| set.by_domain.get(d))
        .or(set.default.as_ref());
    let Some(script) = script.filter(|s| s.has_event(event)) else {
        return true;
    };
    let mut host = ProxyHost::new(proxy, env, None, rx, None);
    let mut ctx = MsgCtx::event(rx, tls);
    match script.run_event(event, &mut ctx, &mut host) {
        Some(o) => !matches!(o.end, script::End::Drop),
        None => true,
    }
}

/// What the route script decided about an HTTP request that arrived on a SIP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpDecision {
    /// `dispatch_rpc()`: hand it to the management RPC; `trusted` when it was
    /// `dispatch_rpc_trusted()` (no `[management] allow` check).
    Dispatch { trusted: bool },
    /// `sl_send_reply(code, reason)`: answer with that HTTP status.
    Reply(u16, String),
    /// Neither: refuse it (HTTP 403), never leave it hanging.
    Refuse,
}

/// Run the request route on an HTTP request seen as a message (`@rpc.method`,
/// `@xmlrpc.method` read its body). Without a script nothing dispatches it.
pub fn run_http(
    set: &ScriptSet,
    proxy: &Proxy,
    env: &Env<'_>,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> HttpDecision {
    let Some((script, tag)) = set.for_request(tls, msg) else {
        return HttpDecision::Refuse;
    };
    let mut host = ProxyHost::new(proxy, env, Some(msg), rx, tag);
    host.http = true;
    let mut ctx = MsgCtx::new(msg, rx, tls);
    let outcome = script.run_request(&mut ctx, &mut host);
    if let Some((code, reason)) = host.http_reply {
        return HttpDecision::Reply(code, reason);
    }
    if host.dispatched && !outcome.is_error() {
        return HttpDecision::Dispatch {
            trusted: host.trusted,
        };
    }
    HttpDecision::Refuse
}
