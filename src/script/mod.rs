//! Route scripts: a SER/Kamailio-style language (`route { ... }`, selects `@...`,
//! pseudo-variables `$...`, core functions) compiled once into an immutable, checked tree
//! and run per message by a sans-IO interpreter. Everything a script does to the world goes
//! through the [`Host`] trait or is left as data in [`MsgCtx`] for the proxy to apply; the
//! core never performs I/O. Must never panic on any script text or message.
//!
//! ```
//! use siprox::script::compile;
//! let script = compile(
//!     r#"route { if (proto == TLS && @tls.peer != "Bob") { sl_send_reply("403", "Forbidden"); drop; } forward(); }"#,
//!     "example.cfg",
//! ).unwrap();
//! assert!(script.has_request_route());
//! ```
//!
//! The language reference is `docs/script.md`.

mod ast;
mod compile;
mod error;
pub mod host;
#[cfg(test)]
mod host_tests;
pub mod htable;
mod interp;
mod lexer;
mod pv;
mod set;
mod tr;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::proxy::{Inbound, NextHop, Transport};
use crate::select::Value;
use crate::sip::{parse_hostport, Editor, Host as UriHost, Message, Params, Uri};
use crate::tls::TlsFacts;

pub use error::{CompileError, CompileErrors, RunError, Span};
pub use interp::{MAX_NEST, MAX_ROUTE_DEPTH, MAX_STEPS};
pub use set::ScriptSet;

/// A compiled script: immutable, cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct Script {
    prog: Arc<ast::Program>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("file", &self.prog.file)
            .field("routes", &self.prog.route_names)
            .finish()
    }
}

/// Compile a script. `file` names it in error messages (`file:line:col: ...`).
pub fn compile(src: &str, file: &str) -> Result<Script, CompileErrors> {
    compile::compile(src, file).map(|p| Script { prog: Arc::new(p) })
}

/// The kind of a named block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `route[NAME]`
    Request,
    /// `onreply_route[NAME]`
    Reply,
    /// `failure_route[NAME]` (run by the runtime when every branch of a `t_relay()` failed;
    /// see [`host::run_failure`])
    Failure,
    /// `branch_route[NAME]`
    Branch,
    /// `event_route[NAME]`
    Event,
}

impl Script {
    /// The file name given to [`compile`].
    pub fn file(&self) -> &str {
        &self.prog.file
    }

    /// True when the script has a main `route { }` (or `request_route { }`).
    pub fn has_request_route(&self) -> bool {
        self.prog.main.is_some()
    }

    /// True when the script has a main `onreply_route { }`.
    pub fn has_reply_route(&self) -> bool {
        self.prog.reply_main.is_some()
    }

    /// True when `route[name]` exists.
    pub fn has_route(&self, name: &str) -> bool {
        self.prog.route_index.contains_key(name)
    }

    /// True when a named block of that kind exists.
    pub fn has(&self, kind: RouteKind, name: &str) -> bool {
        match kind {
            RouteKind::Request => self.has_route(name),
            RouteKind::Reply => self.prog.reply_named.contains_key(name),
            RouteKind::Failure => self.prog.failure.contains_key(name),
            RouteKind::Branch => self.prog.branch.contains_key(name),
            RouteKind::Event => self.prog.events.contains_key(name),
        }
    }

    /// True when `event_route[name]` exists (e.g. `tls:connection-in`).
    pub fn has_event(&self, name: &str) -> bool {
        self.prog.events.contains_key(name)
    }

    /// Run the main request route on a request. Without a main route nothing happens and
    /// the outcome is [`End::Finished`]`(1)` with no effect: the runtime applies its default.
    pub fn run_request(&self, ctx: &mut MsgCtx<'_>, host: &mut dyn Host) -> Outcome {
        match &self.prog.main {
            Some(b) => interp::run_block(&self.prog, b, ctx, host),
            None => Outcome::nothing(ctx),
        }
    }

    /// Run the main `onreply_route` on a response. `drop` means: do not forward the reply.
    pub fn run_reply(&self, ctx: &mut MsgCtx<'_>, host: &mut dyn Host) -> Outcome {
        match &self.prog.reply_main {
            Some(b) => interp::run_block(&self.prog, b, ctx, host),
            None => Outcome::nothing(ctx),
        }
    }

    /// Run `event_route[name]`; `None` when the script has no such block. For
    /// `tls:connection-in`, `drop` means: close the connection. `ctx.msg` is `None`.
    pub fn run_event(
        &self,
        name: &str,
        ctx: &mut MsgCtx<'_>,
        host: &mut dyn Host,
    ) -> Option<Outcome> {
        self.run_named(RouteKind::Event, name, ctx, host)
    }

    /// Run any named block; `None` when it does not exist.
    pub fn run_named(
        &self,
        kind: RouteKind,
        name: &str,
        ctx: &mut MsgCtx<'_>,
        host: &mut dyn Host,
    ) -> Option<Outcome> {
        let block = match kind {
            RouteKind::Request => self
                .prog
                .route_index
                .get(name)
                .and_then(|&i| self.prog.routes.get(i)),
            RouteKind::Reply => self.prog.reply_named.get(name),
            RouteKind::Failure => self.prog.failure.get(name),
            RouteKind::Branch => self.prog.branch.get(name),
            RouteKind::Event => self.prog.events.get(name),
        }?;
        Some(interp::run_block(&self.prog, block, ctx, host))
    }

    /// The `$avp`s a run set, by name: the transaction keeps them from `t_relay()` for its
    /// failure_route, branch_route and `onreply_route[NAME]` (as Kamailio's AVPs are).
    pub fn avps(&self, ctx: &MsgCtx<'_>) -> Avps {
        let mut out: Avps = self
            .prog
            .var_index
            .iter()
            .filter_map(|(n, &i)| {
                let name = n.strip_prefix(pv::AVP_PREFIX)?;
                let v = ctx.vars.get(i).cloned().flatten()?;
                Some((name.to_owned(), v))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Set the `$avp`s a transaction kept into a run's context (names this script does
    /// not use are ignored: a reload may have changed it).
    pub fn load_avps(&self, ctx: &mut MsgCtx<'_>, avps: &[(String, Value<'static>)]) {
        for (name, v) in avps {
            if let Some(&i) = self
                .prog
                .var_index
                .get(&format!("{}{name}", pv::AVP_PREFIX))
            {
                ctx.set_var(i, v.clone());
            }
        }
    }

    /// The `$sht` tables the script names, to check against `[htables]` when it loads.
    pub fn htables(&self) -> &[String] {
        &self.prog.htables
    }

    /// The literal send sockets the script names (`$fs = "udp:127.0.0.1:5060"`,
    /// `force_send_socket("...")`), each well formed ([`parse_socket`]), to check against
    /// the listeners when it loads.
    pub fn send_sockets(&self) -> &[String] {
        &self.prog.send_sockets
    }

    /// The value of `$var(name)` in a context after a run (`None` if the script never
    /// mentions the variable). For tests and for the runtime's logging.
    pub fn var(&self, ctx: &MsgCtx<'_>, name: &str) -> Option<Value<'static>> {
        self.prog.var_index.get(name).map(|&i| ctx.var(i))
    }
}

/// `$avp` names and values, as a transaction keeps them.
pub type Avps = Vec<(String, Value<'static>)>;

/// Everything a script run reads and changes for one message (or one connection event).
#[derive(Debug)]
pub struct MsgCtx<'a> {
    /// The message; `None` for event routes.
    pub msg: Option<&'a Message>,
    pub rx: &'a Inbound,
    /// The connection's TLS facts; `None` when it is not TLS.
    pub tls: Option<&'a TlsFacts>,
    /// `setflag`/`isflag` bits (0..63).
    pub flags: u64,
    /// `setbflag`/`isbflagset` bits of the request's branch (`$bf`).
    pub bflags: u64,
    /// Changes for the proxy to apply when it forwards or replies.
    pub edits: ScriptEdits,
    /// The status of a reply the script sent (sl_send_reply, a challenge, sanity_check).
    pub replied: Option<u16>,
    /// True once `forward()` succeeded.
    pub forwarded: bool,
    /// What the transaction functions set (`t_on_failure`, `t_set_fr`) and read
    /// (`$T_reply_code` in failure_route).
    pub tm: TmCtx,
    vars: Vec<Option<Value<'static>>>,
}

impl<'a> MsgCtx<'a> {
    /// A context for a SIP message (request or response).
    pub fn new(msg: &'a Message, rx: &'a Inbound, tls: Option<&'a TlsFacts>) -> MsgCtx<'a> {
        MsgCtx {
            msg: Some(msg),
            ..MsgCtx::new_empty(rx, tls)
        }
    }

    /// A context for a connection event (no message).
    pub fn event(rx: &'a Inbound, tls: Option<&'a TlsFacts>) -> MsgCtx<'a> {
        MsgCtx::new_empty(rx, tls)
    }

    fn new_empty(rx: &'a Inbound, tls: Option<&'a TlsFacts>) -> MsgCtx<'a> {
        MsgCtx {
            msg: None,
            rx,
            tls,
            flags: 0,
            bflags: 0,
            edits: ScriptEdits::default(),
            replied: None,
            forwarded: false,
            tm: TmCtx::default(),
            vars: Vec::new(),
        }
    }

    /// `$var` values: unset variables are 0, as in Kamailio.
    pub(crate) fn var(&self, i: usize) -> Value<'static> {
        self.vars.get(i).cloned().flatten().unwrap_or(Value::Int(0))
    }

    /// `$avp` values: unset AVPs are null, as in Kamailio.
    pub(crate) fn avp(&self, i: usize) -> Value<'static> {
        self.vars.get(i).cloned().flatten().unwrap_or(Value::Null)
    }

    /// Unset a variable (an AVP assigned null).
    pub(crate) fn unset_var(&mut self, i: usize) {
        if let Some(v) = self.vars.get_mut(i) {
            *v = None;
        }
    }

    pub(crate) fn set_var(&mut self, i: usize, v: Value<'static>) {
        if self.vars.len() <= i {
            self.vars.resize(i + 1, None);
        }
        self.vars[i] = Some(v);
    }
}

/// The transaction functions' state for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmCtx {
    /// `t_on_failure("NAME")`: the failure_route to run once every branch has failed.
    pub failure_route: Option<String>,
    /// `t_set_fr(invite_ms, other_ms)`: how long an INVITE branch waits for its final
    /// response once ringing, and how long any branch waits for a first response.
    pub fr: Option<(u32, u32)>,
    /// In failure_route: the best final status of the failed branches (`$T_reply_code`,
    /// `t_check_status`); in a transaction's onreply_route: the response's status.
    pub reply_code: Option<u16>,
    /// `t_on_reply("NAME")`: the onreply_route to run for each response of the branches.
    pub reply_route: Option<String>,
    /// In failure_route: how the failed branch ended (`t_branch_timeout`,
    /// `t_branch_replied`).
    pub branch: Option<BranchEnd>,
    /// `t_on_branch("NAME")`: the branch_route to run for each branch before it is sent.
    pub branch_route: Option<String>,
    /// `$T_branch_idx`: in branch_route the branch about to be sent, in failure_route the
    /// branch whose final response is the best (0-based, in the order branches were made).
    pub branch_idx: Option<usize>,
}

/// How a failed branch ended, for failure_route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BranchEnd {
    /// No final response came before its timer fired (Timer B/F, or `t_set_fr`'s limit).
    pub timed_out: bool,
    /// It received a response (a provisional one counts).
    pub replied: bool,
}

/// Changes a script asked for, as data: the proxy applies them when it forwards (through
/// [`Editor`]) or replies. Edits never change what the script itself reads afterwards
/// (as with Kamailio's lumps), except the Request-URI, which selects read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptEdits {
    /// Header lines to append to a forwarded request (`append_hf`), each ending in CRLF.
    pub append_hf: String,
    /// Header names to remove from a forwarded request (`remove_hf`), deduplicated.
    pub remove_hf: Vec<String>,
    /// The new Request-URI (`rewriteuri`, `rewritehost`, `$ru = ...`, a registrar lookup).
    pub new_ruri: Option<String>,
    /// Where to send instead of the Request-URI (Kamailio's `$du`); set by the host, e.g.
    /// by `lookup` for a binding reached over its flow.
    pub dst_uri: Option<String>,
    /// `record_route()` was called.
    pub record_route: bool,
    /// Parameters for our Record-Route entry (`record_route("p=v")`), without the `;`.
    pub rr_params: Option<String>,
    /// `loose_route()` found a Route set that siprox is on.
    pub loose_routed: bool,
    /// Header lines for a locally generated reply (`append_to_reply`), each ending in CRLF.
    pub reply_hf: String,
    /// `mf_process_maxfwd_header(n)` on a request without Max-Forwards: write `n` instead of
    /// the proxy's default.
    pub max_forwards: Option<u8>,
    /// `force_rport()`: as if the request's top Via had `rport` (RFC 3581).
    pub force_rport: bool,
    /// `set_reply_no_connect()`: replies go on the request's own connection only.
    pub reply_no_connect: bool,
    /// `$fs`, `force_send_socket()`, `set_send_socket()`: the listener to forward from
    /// (one of siprox's: the host checked it).
    pub send_socket: Option<(Transport, SocketAddr)>,
}

impl ScriptEdits {
    /// True when there is nothing to apply to a forwarded request.
    pub fn is_empty(&self) -> bool {
        self.append_hf.is_empty() && self.remove_hf.is_empty() && self.new_ruri.is_none()
    }

    /// Apply the header and Request-URI edits to a message being forwarded. Record-Route,
    /// Route and Max-Forwards stay with the proxy, which reads the other fields.
    pub fn apply(&self, ed: &mut Editor<'_>) {
        for name in &self.remove_hf {
            ed.remove_headers_named(name);
        }
        if let Some(u) = &self.new_ruri {
            ed.set_request_uri(u);
        }
        if !self.append_hf.is_empty() {
            ed.append_raw(&self.append_hf);
        }
    }
}

/// How a run ended, plus what it did that the runtime must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub end: End,
    /// A reply the script sent (its status).
    pub replied: Option<u16>,
    /// True when `forward()` succeeded.
    pub forwarded: bool,
}

impl Outcome {
    fn nothing(ctx: &MsgCtx<'_>) -> Outcome {
        Outcome {
            end: End::Finished(1),
            replied: ctx.replied,
            forwarded: ctx.forwarded,
        }
    }

    /// The script failed at run time: for a request that has not been answered, the
    /// runtime answers 500 (and logs; the interpreter already logged through the host).
    pub fn is_error(&self) -> bool {
        matches!(self.end, End::Error(_))
    }
}

/// The way a route ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The route ran to its end (1) or `return(n)` with n != 0.
    Finished(i32),
    /// `exit`, `return(0)`, or a function that returned 0.
    Exit,
    /// `drop`: for a request, stop; for a reply, do not forward it; for
    /// `tls:connection-in`, close the connection.
    Drop,
    /// A run-time limit was hit (recursion, steps); already logged through the host.
    Error(RunError),
}

/// Log levels, Kamailio's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Alert,
    Bug,
    Crit,
    Err,
    Warn,
    Notice,
    Info,
    Dbg,
}

impl Level {
    /// `L_INFO`, `info`, ... (any case, `L_` optional).
    pub fn from_name(s: &str) -> Option<Level> {
        let s = s.trim();
        let u = s
            .strip_prefix("L_")
            .or_else(|| s.strip_prefix("l_"))
            .unwrap_or(s);
        Some(match u.to_ascii_uppercase().as_str() {
            "ALERT" => Level::Alert,
            "BUG" => Level::Bug,
            "CRIT" | "CRIT2" => Level::Crit,
            "ERR" | "ERROR" => Level::Err,
            "WARN" | "WARNING" => Level::Warn,
            "NOTICE" => Level::Notice,
            "INFO" => Level::Info,
            "DBG" | "DEBUG" => Level::Dbg,
            _ => return None,
        })
    }

    /// Kamailio's number for the level (see [`Level::from_number`]).
    pub fn number(self) -> i64 {
        match self {
            Level::Alert => -5,
            Level::Bug => -4,
            Level::Crit => -2,
            Level::Err => -1,
            Level::Warn => 0,
            Level::Notice => 1,
            Level::Info => 2,
            Level::Dbg => 3,
        }
    }

    /// Kamailio's numbers: L_ALERT -5, L_BUG -4, L_CRIT2 -3, L_CRIT -2, L_ERR -1, L_WARN 0,
    /// L_NOTICE 1, L_INFO 2, L_DBG 3.
    pub fn from_number(n: i64) -> Option<Level> {
        Some(match n {
            -5 => Level::Alert,
            -4 => Level::Bug,
            -3 | -2 => Level::Crit,
            -1 => Level::Err,
            0 => Level::Warn,
            1 => Level::Notice,
            2 => Level::Info,
            3 => Level::Dbg,
            _ => return None,
        })
    }
}

/// The authentication functions a script may call; the host implements them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFn {
    /// `www_authorize(realm, table)`
    WwwAuthorize,
    /// `proxy_authorize(realm, table)`
    ProxyAuthorize,
    /// `www_challenge(realm, flags)`: the host sends the 401.
    WwwChallenge,
    /// `proxy_challenge(realm, flags)`: the host sends the 407.
    ProxyChallenge,
    /// `consume_credentials()`: the host drops the credentials from the forwarded request.
    ConsumeCredentials,
}

/// How effects leave the script. The runtime implements it; the core only calls it.
/// Return values follow Kamailio: > 0 success, < 0 failure, 0 ends the script.
pub trait Host {
    /// `forward()` / `forward("host:port;transport=tls")`: forward the request (statelessly).
    /// `ctx.edits` holds the edits to apply; `target` has passed [`parse_target`].
    fn forward(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32;
    /// `sl_send_reply(code, reason)`: answer the request; `ctx.edits.reply_hf` holds extra
    /// header lines.
    fn reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str) -> i32;
    /// `t_relay()`: forward through a transaction. A host without transactions forwards
    /// statelessly.
    fn t_relay(&mut self, ctx: &mut MsgCtx<'_>, target: Option<&str>) -> i32 {
        self.forward(ctx, target)
    }
    /// `t_reply(code, reason)`: answer through the request's transaction (in
    /// failure_route: the final response). A host without transactions replies statelessly.
    fn t_reply(&mut self, ctx: &mut MsgCtx<'_>, code: u16, reason: &str) -> i32 {
        self.reply(ctx, code, reason)
    }
    /// `t_check_trans()` on a request: 1 when it belongs to a transaction (a CANCEL: its
    /// INVITE's), 0 when it was a retransmission the host absorbed (the run ends), -1
    /// otherwise. A host without transactions has none.
    fn t_check_trans(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let _ = ctx;
        -1
    }
    /// `t_newtran()`: make the request's server transaction now; -1 when it has one or
    /// none can be made. A host without transactions makes none.
    fn t_newtran(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let _ = ctx;
        -1
    }
    /// `append_branch()` (the current Request-URI and `$du`) or `append_branch(uri)`: one
    /// more branch for the next `t_relay()`. A host without transactions has no branches.
    fn append_branch(&mut self, ctx: &mut MsgCtx<'_>, uri: Option<&str>) -> i32 {
        let _ = (ctx, uri);
        -1
    }
    /// `t_next_contacts()` in failure_route: relay to the next q group that `lookup()` left
    /// with the transaction; -1 when none is left.
    fn t_next_contacts(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let _ = ctx;
        -1
    }
    /// The listener that `$fs = "proto:ip:port"` names (`transport` `None`: any), if siprox
    /// has it. A host without listeners has none.
    fn send_socket(
        &self,
        transport: Option<Transport>,
        addr: SocketAddr,
    ) -> Option<(Transport, SocketAddr)> {
        let _ = (transport, addr);
        None
    }
    /// Whether `host` (a name or IP literal, IPv6 without brackets) and `port` (`None`: any
    /// port) is siprox itself: for `== myself` and `loose_route()`.
    fn is_myself(&self, host: &str, port: Option<u16>) -> bool;
    /// The message is an HTTP request (XML-RPC/JSON-RPC POSTed to a SIP stream port), not
    /// SIP: `sanity_check()` has nothing SIP to check in it.
    fn is_http(&self) -> bool {
        false
    }
    /// Write a log line.
    fn log(&mut self, level: Level, msg: &str);
    /// Whether `level` is logged at all: a disabled `xlog` then costs no formatting.
    fn log_enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }
    /// Seconds since the Unix epoch (for `@tls.peer.expired`, `$Ts`).
    fn now_unix(&self) -> i64;
    /// `$sht(table=>key)`: the entry's value, `None` when absent, expired or no such table.
    fn sht_get(&self, table: &str, key: &str) -> Option<Value<'static>> {
        let _ = (table, key);
        None
    }
    /// `$sht(table=>key) = v` (`None`: remove); false when there is no such table.
    fn sht_set(&mut self, table: &str, key: &str, v: Option<Value<'static>>) -> bool {
        let _ = (table, key, v);
        false
    }
    /// `save(table[, flags])`: store the REGISTER's bindings (and answer it).
    fn save(&mut self, ctx: &mut MsgCtx<'_>, table: &str, flags: &str) -> i32 {
        let _ = (ctx, table, flags);
        -1
    }
    /// `lookup(table[, flags])`: rewrite `ctx.edits.new_ruri` (and `dst_uri`) to the
    /// binding of the Request-URI; -1 when there is none.
    fn lookup(&mut self, ctx: &mut MsgCtx<'_>, table: &str, flags: &str) -> i32 {
        let _ = (ctx, table, flags);
        -1
    }
    /// `dispatch_rpc()`: hand an RPC request (HTTP on a SIP listener) to the RPC layer,
    /// which runs it only for a TLS peer on `[management] allow`.
    fn dispatch_rpc(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let _ = ctx;
        -1
    }
    /// `dispatch_rpc_trusted()`: the same without the allow-list check; the script's own
    /// conditions are the whole rule.
    fn dispatch_rpc_trusted(&mut self, ctx: &mut MsgCtx<'_>) -> i32 {
        let _ = ctx;
        -1
    }
    /// The `*_authorize`, `*_challenge` and `consume_credentials` functions; `a` and `b` are
    /// their two arguments (realm, table or flags), "" when absent.
    fn auth(&mut self, ctx: &mut MsgCtx<'_>, func: AuthFn, a: &str, b: &str) -> i32 {
        let _ = (ctx, func, a, b);
        -1
    }
}

/// Parse a send socket as `$fs` and `force_send_socket()` take it: `proto:ip:port` or
/// `ip:port` (any transport), IPv6 in brackets (Kamailio's form).
pub fn parse_socket(s: &str) -> Result<(Option<Transport>, SocketAddr), &'static str> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((None, a));
    }
    let bad = "expected proto:ip:port (udp, tcp or tls, an IP address, a port)";
    let (p, rest) = s.split_once(':').ok_or(bad)?;
    let t = Transport::parse(p).ok_or(bad)?;
    Ok((Some(t), rest.parse::<SocketAddr>().map_err(|_| bad)?))
}

/// Kamailio's text of a send socket (`udp:127.0.0.1:5060`), what `$fs` reads.
pub fn socket_text(t: Transport, a: SocketAddr) -> String {
    format!("{}:{a}", t.param())
}

/// Parse a `forward()` target: `host`, `host:port`, `host:port;transport=tls`,
/// `sip:host...` / `sips:host...` (a user part is ignored), or Kamailio's
/// `tls:host:port`. IPv6 literals in brackets.
pub fn parse_target(s: &str) -> Result<NextHop, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty target");
    }
    let mut transport = None;
    let mut secure = false;
    let mut rest = s;
    if let Some((scheme, after)) = s.split_once(':') {
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            if let Ok(Uri::Sip(u)) = Uri::parse(s) {
                return Ok(NextHop {
                    host: host_plain(&u.host),
                    port: u.port,
                    transport: u
                        .transport()
                        .map(|t| Transport::parse(t).ok_or("unsupported transport"))
                        .transpose()?,
                    secure: u.secure,
                });
            }
            return Err("bad SIP URI");
        }
        if let Some(t) = Transport::parse(scheme) {
            transport = Some(t);
            secure = false;
            rest = after;
        }
    }
    let end = rest.find(';').unwrap_or(rest.len());
    let (hp, params) = rest.split_at(end);
    let (host, port) = parse_hostport(hp)?;
    let params = Params::new(params);
    params.validate()?;
    if let Some(t) = params.get("transport").flatten() {
        transport = Some(Transport::parse(t).ok_or("unsupported transport")?);
    }
    Ok(NextHop {
        host: host_plain(&host),
        port,
        transport,
        secure,
    })
}

fn host_plain(h: &UriHost<'_>) -> String {
    match h {
        UriHost::Name(n) => (*n).to_owned(),
        UriHost::V4(a) => a.to_string(),
        UriHost::V6(a) => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("10.0.0.1:5061;transport=tls").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("10.0.0.1", Some(5061), Some(Transport::Tls))
        );
        let t = parse_target("sips:bob@example.com").unwrap();
        assert!(t.secure);
        assert_eq!(t.host, "example.com");
        let t = parse_target("tls:[2001:db8::1]:5061").unwrap();
        assert_eq!(
            (t.host.as_str(), t.transport),
            ("2001:db8::1", Some(Transport::Tls))
        );
        assert!(parse_target("").is_err());
        assert!(parse_target("host;transport=sctp").is_err());
        assert!(parse_target("bad host").is_err());
        assert!(parse_target("h:99999").is_err());
    }

    #[test]
    fn script_is_send_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Script>();
    }

    #[test]
    fn sockets() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            parse_socket("udp:127.0.0.1:5060"),
            Ok((Some(Transport::Udp), a("127.0.0.1:5060")))
        );
        assert_eq!(
            parse_socket("tls:[::1]:5061"),
            Ok((Some(Transport::Tls), a("[::1]:5061")))
        );
        assert_eq!(parse_socket("10.0.0.1:5"), Ok((None, a("10.0.0.1:5"))));
        assert_eq!(parse_socket("[::1]:5"), Ok((None, a("[::1]:5"))));
        assert!(parse_socket("sctp:10.0.0.1:5060").is_err());
        assert!(parse_socket("udp:10.0.0.1").is_err());
        assert!(parse_socket("udp:host.example:5060").is_err());
        assert!(parse_socket("").is_err());
        assert_eq!(
            socket_text(Transport::Udp, a("[::1]:5060")),
            "udp:[::1]:5060"
        );
    }

    #[test]
    fn levels() {
        assert_eq!(Level::from_name("L_INFO"), Some(Level::Info));
        assert_eq!(Level::from_name("dbg"), Some(Level::Dbg));
        assert_eq!(Level::from_number(-1), Some(Level::Err));
        assert_eq!(Level::from_number(9), None);
    }
}
