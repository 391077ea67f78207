//! The checked, compiled form of a route script: a tree whose names (routes, variables,
//! functions, selects, pseudo-variables) are already resolved to indices and enums, and
//! whose regexes are compiled. Immutable after compilation; shared by every worker.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::select::{Select, Value};

use super::error::Span;
use super::{AuthFn, Level};

pub(crate) type Block = Vec<Stmt>;

#[derive(Debug)]
pub(crate) enum Stmt {
    Expr(Expr),
    If(Expr, Block, Block),
    Switch {
        subject: Expr,
        /// Case values and the body index they start at (C-style fall-through).
        cases: Vec<(Case, usize)>,
        default: Option<usize>,
        body: Block,
    },
    While(Expr, Block),
    Return(Option<Expr>),
    Exit,
    Drop,
    Break,
    Assign(LValue, Expr),
    /// `$sht(table=>key) = e;` (`""` or `$null` removes the entry).
    ShtAssign(String, Vec<Part>, Expr),
    Block(Block),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Case {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LValue {
    Var(usize),
    Ruri,
    RuriHost,
    RuriUser,
    /// `$du`: where to send instead of the Request-URI.
    Duri,
    /// `$bf`: the branch flags, all at once.
    Bflags,
    /// `$avp(name)`: a slot like `$var`'s, kept with the request's transaction.
    Avp(usize),
    /// `$fs`: the listener to forward from.
    Fs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// How a comparison compares, decided at compile time from the operand types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpMode {
    Int,
    Str,
    /// Case-insensitive strings (`method == "invite"`, as SER compares methods).
    StrNoCase,
    /// Both operands dynamic: integers if both are integers at run time, else strings.
    Dyn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// Static type of an expression, for choosing comparison modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Int,
    Str,
    Dyn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    Method,
    Uri,
    Status,
    Proto,
    SrcIp,
    SrcPort,
    DstIp,
    DstPort,
    Af,
    MsgLen,
    FromUri,
    ToUri,
}

impl Kw {
    pub(crate) fn ty(self) -> Ty {
        match self {
            Kw::Status | Kw::Proto | Kw::SrcPort | Kw::DstPort | Kw::Af | Kw::MsgLen => Ty::Int,
            Kw::Method | Kw::Uri | Kw::SrcIp | Kw::DstIp | Kw::FromUri | Kw::ToUri => Ty::Str,
        }
    }
}

/// A pseudo-variable, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pv {
    /// A select (`@from.uri`): `""` when absent, as in SER.
    Sel(Select),
    /// A pseudo-variable read through a select (`$fU`): null when absent or empty.
    Of(Select),
    Var(usize),
    /// `$pr`: the transport in lower case.
    Proto,
    /// `$Ts`: Unix time.
    Time,
    /// `$du`: the destination URI set by the script or `lookup`.
    Duri,
    /// `$T_reply_code`: in failure_route, the best final status of the failed branches.
    TReplyCode,
    /// `$T_branch_idx`: the branch a branch_route or failure_route runs for (0-based).
    TBranchIdx,
    /// `$bf`: the branch flags as an integer.
    Bflags,
    /// `$avp(name)`: null until set.
    Avp(usize),
    /// `$null`: the null value, what a pseudo-variable without a value reads as.
    Null,
    /// `$fs`: the forced send socket (`udp:127.0.0.1:5060`), null until set.
    Fs,
    /// `$rc` / `$retcode`: the return code of the last function or route called.
    RetCode,
    /// `$sht(table=>key)`: a declared hash table's entry (`""` when absent or expired).
    Sht(String, Vec<Part>),
    /// `$(pv{tr}...)`: a pseudo-variable through transformations.
    Tr(Box<Pv>, Vec<super::tr::Tr>),
}

/// A string with pseudo-variables in it, split once at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Lit(String),
    Pv(Pv),
}

/// An IP network for `src_ip == "10.0.0.0/8"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl IpNet {
    pub(crate) fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let a = a.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
        };
        Some(IpNet { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 source still matches an IPv4 network.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Expr {
    Lit(Value<'static>),
    Tmpl(Vec<Part>),
    Pv(Pv),
    Kw(Kw),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, CmpMode, Box<Expr>, Box<Expr>),
    Regex {
        e: Box<Expr>,
        re: regex::Regex,
        negate: bool,
    },
    /// `e == myself`: is the host (or URI) one of siprox's own.
    Myself {
        e: Box<Expr>,
        negate: bool,
    },
    Net {
        e: Box<Expr>,
        net: IpNet,
        negate: bool,
    },
    Arith(ArOp, Box<Expr>, Box<Expr>),
    Call(Box<Call>),
    /// The `myself` keyword on its own; only valid as an operand of `==`/`!=`, which the
    /// compiler rewrites into [`Expr::Myself`].
    MyselfMarker,
}

impl Expr {
    pub(crate) fn ty(&self) -> Ty {
        match self {
            Expr::Lit(Value::Int(_)) => Ty::Int,
            Expr::Lit(Value::Str(_)) | Expr::Tmpl(_) => Ty::Str,
            Expr::Kw(k) => k.ty(),
            Expr::Pv(_) | Expr::MyselfMarker => Ty::Dyn,
            Expr::Arith(ArOp::Add, l, r) => match (l.ty(), r.ty()) {
                (Ty::Str, _) | (_, Ty::Str) => Ty::Str,
                (Ty::Int, Ty::Int) => Ty::Int,
                _ => Ty::Dyn,
            },
            _ => Ty::Int,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) f: Func,
    pub(crate) args: Vec<Expr>,
    /// Where the call is written, for run-time log messages.
    pub(crate) span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Func {
    Forward,
    Reply,
    Drop,
    Exit,
    Route(usize),
    RecordRoute,
    LooseRoute,
    AppendHf,
    RemoveHf,
    IsPresentHf,
    IsMethod(Vec<String>),
    HasTotag,
    HasBody,
    RewriteUri,
    RewriteHost,
    RewriteUser,
    RewriteHostPort,
    RewritePort,
    SetFlag(u8),
    ResetFlag(u8),
    IsFlag(u8),
    SetBFlag(u8),
    ResetBFlag(u8),
    IsBFlag(u8),
    Log(Level),
    Xlog(Level),
    IsPeerVerified,
    AppendToReply,
    Save,
    Lookup,
    /// `dispatch_rpc()` (`trusted: false`: the allow-list applies) or
    /// `dispatch_rpc_trusted()`.
    DispatchRpc {
        trusted: bool,
    },
    Auth(AuthFn),
    MaxFwd(u8),
    SanityCheck,
    /// `t_relay()`: forward through a transaction (the host decides what that means).
    Relay,
    /// `t_on_failure("NAME")`: the failure_route to run when every branch failed.
    TOnFailure(String),
    /// `t_set_fr(invite_ms[, other_ms])`.
    TSetFr,
    /// `t_reply(code, reason)`.
    TReply,
    /// `t_check_status("486|408")`: the pattern, anchored, compiled once.
    TCheckStatus(StatusRe),
    /// `search("re")` (textops): the pattern matches somewhere in the message, case
    /// insensitive, `^`/`$` at line ends (POSIX `REG_ICASE | REG_NEWLINE`, as Kamailio).
    Search(SearchRe),
    /// `t_on_reply("NAME")`: the onreply_route to run for each response of the next
    /// `t_relay()`'s branches.
    TOnReply(String),
    /// `t_check_trans()`: the request belongs to a transaction (the host decides).
    TCheckTrans,
    /// `t_newtran()`: the request's server transaction, made now (the host decides).
    TNewtran,
    /// `t_branch_timeout()`: in failure_route, the failed branch timed out.
    TBranchTimeout,
    /// `t_branch_replied()`: in failure_route, the failed branch got a response.
    TBranchReplied,
    /// `t_on_branch("NAME")`: the branch_route to run for every branch before it is sent.
    TOnBranch(String),
    /// `append_branch()` / `append_branch("sip:uri")`: one more branch for the next
    /// `t_relay()`.
    AppendBranch,
    /// `t_next_contacts()`: in failure_route, relay to the next q group of `lookup()`.
    TNextContacts,
    /// `t_is_set("branch_route"|"failure_route"|"onreply_route")`.
    TIsSet(TmRoute),
    /// `t_is_canceled()`: in failure_route, the caller cancelled the transaction.
    TIsCanceled,
    /// `t_precheck_trans()`: another copy of this request is being handled.
    TPrecheckTrans,
    /// `sl_reply_error()`: answer 500 if nothing answered the request yet.
    SlReplyError,
    /// `force_rport()`: answer and route responses to the source port (RFC 3581) as if
    /// the request's top Via had `rport`.
    ForceRport,
    /// `set_reply_no_connect()`: a reply over TCP/TLS goes on the request's connection
    /// or nowhere (no new connection).
    SetReplyNoConnect,
    /// `force_send_socket(s)` / `set_send_socket(s)`: as `$fs = s`.
    SendSocket,
}

/// The route kinds `t_is_set` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TmRoute {
    Branch,
    Failure,
    Reply,
}

/// A compiled `t_check_status` pattern; equal when written the same.
#[derive(Debug, Clone)]
pub(crate) struct StatusRe(pub(crate) regex::Regex);

impl PartialEq for StatusRe {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for StatusRe {}

/// A compiled `search` pattern, over the message's bytes; equal when written the same.
#[derive(Debug, Clone)]
pub(crate) struct SearchRe(pub(crate) regex::bytes::Regex);

impl PartialEq for SearchRe {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for SearchRe {}

/// The whole compiled program.
#[derive(Debug, Default)]
pub(crate) struct Program {
    pub(crate) file: String,
    pub(crate) main: Option<Block>,
    pub(crate) reply_main: Option<Block>,
    /// `route[NAME]` bodies by index; `route_index` maps names.
    pub(crate) routes: Vec<Block>,
    pub(crate) route_names: Vec<String>,
    pub(crate) route_index: HashMap<String, usize>,
    pub(crate) reply_named: HashMap<String, Block>,
    pub(crate) failure: HashMap<String, Block>,
    pub(crate) branch: HashMap<String, Block>,
    pub(crate) events: HashMap<String, Block>,
    pub(crate) var_index: HashMap<String, usize>,
    /// The `$sht` tables the script names (checked against `[htables]` at load).
    pub(crate) htables: Vec<String>,
    /// The literal send sockets (`$fs = "udp:..."`, `force_send_socket("...")`), checked
    /// against the listeners at load.
    pub(crate) send_sockets: Vec<String>,
}
