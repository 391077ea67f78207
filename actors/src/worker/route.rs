//! Running route scripts on the worker: the `Host` through which a script's effects become
//! proxy actions, and the entry points for requests, replies, TLS events and HTTP requests.
//! Scripts run inline, from the snapshot (no mailbox hop per message); running one never
//! blocks and never panics (the interpreter bounds every run).

use siprox::auth::{self, AuthKind, Users, Verdict};
use siprox::proxy::{Action, ConnId, Destination, ForwardOpts, Inbound, Proxy};
use siprox::registrar::{self, Delivery, LookupResult};
use siprox::script::AuthFn;
use siprox::script::{self, Host, Level, MsgCtx, Script};
use siprox::sip::HeaderName;
use siprox::sip::Message;
use siprox::tls::TlsFacts;
use tracing::{debug, error, info, trace, warn};

use crate::state::location::Location;
use crate::state::{ScriptSet, Shared, Snapshot};

/// Where a script's effects go: the proxy core builds the actions, the worker carries them
/// out after the run (a script never waits for I/O).
pub(crate) struct RuntimeHost<'a> {
    pub proxy: &'a Proxy,
    pub msg: Option<&'a Message>,
    pub rx: &'a Inbound,
    pub tag: Option<&'a str>,
    pub actions: Vec<(Action, ForwardOpts)>,
    /// The message is an HTTP request on a SIP listener (SER-style RPC): replies and
    /// `dispatch_rpc()` are recorded, not sent as SIP.
    http: bool,
    /// `dispatch_rpc()` was called.
    pub dispatched: bool,
    /// It was `dispatch_rpc_trusted()`: no allow-list check.
    trusted: bool,
    /// `sl_send_reply()` on an HTTP request: its code and reason.
    pub http_reply: Option<(u16, String)>,
    /// Registrations, credentials and the connection table (absent in unit contexts).
    shared: Option<&'a Shared>,
    /// `[registrar]` of the snapshot the message is handled with.
    registrar: Option<&'a registrar::Settings>,
    /// The digest users of the same snapshot.
    users: Option<&'a Users>,
    /// Set by `lookup("location")`: the registered flow and Path the next `forward()` uses.
    flow: Option<Destination>,
    routes: Vec<String>,
    /// The last `*_authorize` found a stale nonce: the next challenge says `stale=true`.
    stale: bool,
    now: i64,
}

impl<'a> RuntimeHost<'a> {
    pub fn new(
        proxy: &'a Proxy,
        msg: Option<&'a Message>,
        rx: &'a Inbound,
        tag: Option<&'a str>,
    ) -> Self {
        RuntimeHost {
            proxy,
            msg,
            rx,
            tag,
            actions: Vec::new(),
            http: false,
            dispatched: false,
            trusted: false,
            http_reply: None,
            shared: None,
            registrar: None,
            users: None,
            flow: None,
            routes: Vec::new(),
            stale: false,
            now: crate::state::unix_now(),
        }
    }
}

impl<'a> RuntimeHost<'a> {
    /// With registrar (its store and the snapshot's settings), authentication and the
    /// connection table.
    pub fn with_shared(mut self, shared: &'a Shared, snap: &'a Snapshot) -> Self {
        self.shared = Some(shared);
        self.registrar = Some(&snap.config.registrar);
        self.users = Some(&snap.users);
        self
    }

    fn location(&self) -> Option<&'a Location> {
        self.shared.and_then(|s| s.location.get()).map(|l| &**l)
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

impl Host for RuntimeHost<'_> {
    fn forward(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32 {
        let Some(msg) = self.msg.filter(|m| m.is_request()) else {
            return -1;
        };
        let target = match target.or(ctx.edits.dst_uri.as_deref()) {
            Some(t) => match script::parse_target(t) {
                Ok(hop) => Some(hop),
                Err(e) => {
                    warn!(target = t, error = e, "script: bad forward target");
                    return -1;
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
        };
        let action = self.proxy.forward_with(msg, self.rx, &opts);
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
        let action = self
            .proxy
            .reply(msg, self.rx, code, reason, &ctx.edits.reply_hf);
        self.actions.push((action, ForwardOpts::default()));
        1
    }

    fn is_myself(&self, host: &str, port: Option<u16>) -> bool {
        self.proxy.is_myself(host, port)
    }

    fn log(&mut self, level: Level, msg: &str) {
        match level {
            Level::Alert | Level::Bug | Level::Crit | Level::Err => {
                error!(target: "siprox::script", "{msg}")
            }
            Level::Warn => warn!(target: "siprox::script", "{msg}"),
            Level::Notice | Level::Info => info!(target: "siprox::script", "{msg}"),
            Level::Dbg => debug!(target: "siprox::script", "{msg}"),
        }
    }

    fn log_enabled(&self, level: Level) -> bool {
        match level {
            Level::Alert | Level::Bug | Level::Crit | Level::Err => {
                tracing::enabled!(target: "siprox::script", tracing::Level::ERROR)
            }
            Level::Warn => tracing::enabled!(target: "siprox::script", tracing::Level::WARN),
            Level::Notice | Level::Info => {
                tracing::enabled!(target: "siprox::script", tracing::Level::INFO)
            }
            Level::Dbg => tracing::enabled!(target: "siprox::script", tracing::Level::DEBUG),
        }
    }

    fn now_unix(&self) -> i64 {
        self.now
    }

    fn save(&mut self, ctx: &mut MsgCtx<'_>, _table: &str, _flags: &str) -> i32 {
        let (Some(msg), Some(loc)) = (self.msg, self.location()) else {
            return -1;
        };
        let Some(settings) = self.registrar else {
            return -1;
        };
        match registrar::save(msg, self.rx, self.now, settings, &*loc.store) {
            Ok(saved) => {
                let r = saved.reply(self.now);
                self.send_reply(ctx, r.code, &r.reason, &r.headers);
                1
            }
            Err(e) => {
                let r = e.reply();
                debug!(error = %e, "REGISTER refused");
                self.send_reply(ctx, r.code, &r.reason, &r.headers);
                -1
            }
        }
    }

    fn lookup(&mut self, ctx: &mut MsgCtx<'_>, _table: &str, _flags: &str) -> i32 {
        let (Some(msg), Some(loc), Some(shared)) = (self.msg, self.location(), self.shared) else {
            return -1;
        };
        let uri_text = ctx
            .edits
            .new_ruri
            .clone()
            .or_else(|| msg.request_uri_str().map(str::to_owned));
        let Some(uri_text) = uri_text else { return -1 };
        let Ok(uri) = siprox::sip::Uri::parse(&uri_text) else {
            return -1;
        };
        let Some(settings) = self.registrar else {
            return -1;
        };
        let alive = |c: ConnId| shared.table.get(c).is_some();
        match registrar::lookup(&uri, self.now, settings, &*loc.store, &alive) {
            Ok(LookupResult::Found(t)) => {
                ctx.edits.new_ruri = Some(t.ruri.clone());
                self.routes = t.route.clone();
                match t.delivery {
                    Delivery::Connection { .. } | Delivery::Datagram { .. } => {
                        self.flow = t.destination();
                    }
                    Delivery::Uri => {
                        if let Some(first) = t.route.first() {
                            let inner = first.trim_start_matches('<');
                            let inner = inner.split('>').next().unwrap_or(inner);
                            ctx.edits.dst_uri = Some(inner.to_owned());
                        }
                    }
                    // Another cluster node holds the phone's connection: not built yet.
                    Delivery::Node(_) => return -1,
                }
                1
            }
            // RFC 5626 / Kamailio's handle_lost_tcp: the phone's connection is gone, and a
            // phone behind NAT cannot be reached any other way: 480, no connect attempt.
            Ok(LookupResult::Unreachable { .. }) => {
                self.send_reply(ctx, 480, "Temporarily Unavailable", "");
                -1
            }
            Ok(LookupResult::NotFound) => -1,
            Err(e) => {
                warn!(error = %e, "location lookup failed");
                -1
            }
        }
    }

    fn auth(&mut self, ctx: &mut MsgCtx<'_>, func: AuthFn, a: &str, _b: &str) -> i32 {
        let (Some(msg), Some(loc)) = (self.msg, self.location()) else {
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
                let Some(users) = self.users else {
                    return -1;
                };
                let result = loc.auth.authorize(msg, kind, &realm, users, self.now);
                match result.verdict() {
                    Verdict::Proceed => 1,
                    Verdict::Challenge { stale } => {
                        self.stale = stale;
                        -1
                    }
                    // Wrong password, replayed nonce, malformed credentials: answered here
                    // (403 and friends), so the script's challenge does not ask again.
                    Verdict::Reject { code, reason } => {
                        debug!(?result, "digest credentials refused");
                        self.send_reply(ctx, code, &reason, "");
                        -2
                    }
                }
            }
            _ => match loc.auth.challenge(kind, &realm, self.stale, self.now) {
                Ok(c) => {
                    self.send_reply(ctx, c.code, c.reason, &c.headers);
                    1
                }
                Err(e) => {
                    warn!(error = %e, "cannot build a digest challenge");
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

/// Run `script` on a request; returns the actions to carry out, in order. A script that
/// fails at run time (recursion or step limit) answers 500 unless it already answered.
pub(crate) fn run_request(
    script: &Script,
    tag: Option<&str>,
    shared: &Shared,
    snap: &Snapshot,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> Vec<(Action, ForwardOpts)> {
    let proxy = &snap.proxy;
    let mut host = RuntimeHost::new(proxy, Some(msg), rx, tag).with_shared(shared, snap);
    let mut ctx = MsgCtx::new(msg, rx, tls);
    let outcome = script.run_request(&mut ctx, &mut host);
    if outcome.is_error() {
        crate::state::inc(&shared.stats.script_errors);
    }
    if outcome.is_error() && outcome.replied.is_none() && !outcome.forwarded {
        let a = proxy.reply(msg, rx, 500, "Server Internal Error (route script)", "");
        host.actions.push((a, ForwardOpts::default()));
    }
    trace!(end = ?outcome.end, actions = host.actions.len(), "request route done");
    host.actions
}

/// Run the `onreply_route` of `script` on a response. `false`: the script dropped it.
pub(crate) fn run_reply(
    script: &Script,
    proxy: &Proxy,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> bool {
    if !script.has_reply_route() {
        return true;
    }
    let mut host = RuntimeHost::new(proxy, Some(msg), rx, None);
    let mut ctx = MsgCtx::new(msg, rx, tls);
    let outcome = script.run_reply(&mut ctx, &mut host);
    !matches!(outcome.end, script::End::Drop)
}

/// TLS connection events (`event_route[tls:connection-in]`, `[tls:connection-closed]`):
/// the script of the connection's domain, else the default. `false`: the route dropped
/// the connection (only meaningful for `connection-in`, which then closes it).
pub(crate) fn run_event(
    set: &ScriptSet,
    event: &str,
    proxy: &Proxy,
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
    let mut host = RuntimeHost::new(proxy, None, rx, None);
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
pub(crate) fn run_http(
    set: &ScriptSet,
    proxy: &Proxy,
    msg: &Message,
    rx: &Inbound,
    tls: Option<&TlsFacts>,
) -> HttpDecision {
    let Some((script, tag)) = set.for_request(tls, msg) else {
        return HttpDecision::Refuse;
    };
    let mut host = RuntimeHost::new(proxy, Some(msg), rx, tag);
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
