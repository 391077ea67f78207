//! The interpreter: walks the compiled tree for one message. Effects leave only through the
//! [`Host`] (forward, reply, registrar, auth, logs) or as data in [`MsgCtx`] (header edits,
//! Request-URI, flags) that the proxy applies later. Bounded: route recursion and the number
//! of statements per message are limited, so no script can hang a worker.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::proxy::Transport;
use crate::select::{Env, Select, SipSelect, Value};
use crate::sip::{parse_hostport, HeaderName, Host as UriHost, Method, SipUri, Uri};

use super::ast::{
    ArOp, Block, Call, Case, CmpMode, CmpOp, Expr, Func, Kw, LValue, Part, Program, Pv, Stmt,
    TmRoute,
};
use super::error::RunError;
use super::{AuthFn, End, Host, Level, MsgCtx, Outcome};

/// How deep `route()` calls may nest.
pub const MAX_ROUTE_DEPTH: usize = 32;
/// How many statements one message may run.
pub const MAX_STEPS: u32 = 100_000;
/// How many statement and expression levels may be active at once, across route calls.
pub const MAX_NEST: usize = 400;

/// Why evaluation stopped early.
#[derive(Debug)]
pub(crate) enum Flow {
    Break,
    Return(i32),
    Exit,
    Drop,
    Err(RunError),
}

pub(crate) struct Run<'v, 'c, 'a> {
    prog: &'v Program,
    env: Env<'v>,
    ctx: &'c mut MsgCtx<'a>,
    host: &'c mut dyn Host,
    depth: usize,
    nest: usize,
    steps: u32,
    clock: Option<i64>,
    /// `$rc`: what the last function or route returned.
    last_rc: i32,
}

type R<T> = Result<T, Flow>;

/// Run `block` to completion and say how it ended.
pub(crate) fn run_block<'a>(
    prog: &Program,
    block: &Block,
    ctx: &mut MsgCtx<'a>,
    host: &mut dyn Host,
) -> Outcome {
    let env = Env {
        msg: ctx.msg,
        rx: ctx.rx,
        tls: ctx.tls,
        now_unix: 0,
    };
    let mut run = Run {
        prog,
        env,
        ctx,
        host,
        depth: 0,
        nest: 0,
        steps: 0,
        clock: None,
        last_rc: 1,
    };
    let end = match run.block(block) {
        Ok(()) | Err(Flow::Break) => End::Finished(1),
        Err(Flow::Return(0)) | Err(Flow::Exit) => End::Exit,
        Err(Flow::Return(n)) => End::Finished(n),
        Err(Flow::Drop) => End::Drop,
        Err(Flow::Err(e)) => {
            let msg = format!("{}: {e}", prog.file);
            run.host.log(Level::Err, &msg);
            End::Error(e)
        }
    };
    Outcome {
        end,
        replied: run.ctx.replied,
        forwarded: run.ctx.forwarded,
    }
}

fn truthy(v: &Value<'_>) -> bool {
    match v {
        Value::Int(i) => *i > 0,
        Value::Str(s) => !s.is_empty(),
        Value::Null => false,
    }
}

fn b2i(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

impl<'v, 'c, 'a: 'v> Run<'v, 'c, 'a> {
    fn now(&mut self) -> i64 {
        match self.clock {
            Some(t) => t,
            None => {
                let t = self.host.now_unix();
                self.clock = Some(t);
                t
            }
        }
    }

    fn block(&mut self, b: &'v Block) -> R<()> {
        for s in b {
            self.stmt(s)?;
        }
        Ok(())
    }

    /// Interpreter frames are bounded as a whole (statements and expressions across route
    /// calls), so that no script can overflow a worker's stack.
    fn enter(&mut self) -> R<()> {
        self.nest += 1;
        if self.nest > MAX_NEST {
            self.nest -= 1;
            return Err(Flow::Err(RunError::TooDeep { limit: MAX_NEST }));
        }
        Ok(())
    }

    fn stmt(&mut self, s: &'v Stmt) -> R<()> {
        self.enter()?;
        let r = self.stmt_inner(s);
        self.nest -= 1;
        r
    }

    fn stmt_inner(&mut self, s: &'v Stmt) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(Flow::Err(RunError::StepLimit { limit: MAX_STEPS }));
        }
        match s {
            Stmt::Expr(Expr::Call(c)) => {
                self.call(c)?;
            }
            Stmt::Expr(e) => {
                self.eval(e)?;
            }
            Stmt::If(c, then, els) => {
                if self.cond(c)? {
                    self.block(then)?;
                } else {
                    self.block(els)?;
                }
            }
            Stmt::Switch {
                subject,
                cases,
                default,
                body,
            } => {
                let v = self.eval(subject)?;
                let start = cases
                    .iter()
                    .find(|(c, _)| match c {
                        Case::Str(s) => v.as_str() == s.as_str(),
                        Case::Int(i) => v.as_int() == Some(*i),
                    })
                    .map(|(_, i)| *i)
                    .or(*default);
                if let Some(start) = start {
                    for s in body.get(start..).unwrap_or(&[]) {
                        match self.stmt(s) {
                            Ok(()) => {}
                            Err(Flow::Break) => break,
                            Err(f) => return Err(f),
                        }
                    }
                }
            }
            Stmt::While(c, body) => {
                while self.cond(c)? {
                    match self.block(body) {
                        Ok(()) => {}
                        Err(Flow::Break) => break,
                        Err(f) => return Err(f),
                    }
                    // An empty loop body still costs a step, so `while(1){}` ends.
                    self.steps += 1;
                    if self.steps > MAX_STEPS {
                        return Err(Flow::Err(RunError::StepLimit { limit: MAX_STEPS }));
                    }
                }
            }
            Stmt::Return(None) => return Err(Flow::Return(1)),
            Stmt::Return(Some(e)) => {
                let v = self.eval(e)?;
                let n = v.as_int().unwrap_or(if truthy(&v) { 1 } else { -1 });
                return Err(Flow::Return(
                    n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                ));
            }
            Stmt::Exit => return Err(Flow::Exit),
            Stmt::Drop => return Err(Flow::Drop),
            Stmt::Break => return Err(Flow::Break),
            Stmt::Assign(lv, e) => {
                let v = self.eval(e)?;
                match lv {
                    // Kamailio: null assigned to `$var` is 0, and removes an AVP.
                    LValue::Var(i) if v.is_null() => self.ctx.set_var(*i, Value::Int(0)),
                    LValue::Avp(i) if v.is_null() => self.ctx.unset_var(*i),
                    LValue::Var(i) | LValue::Avp(i) => self.ctx.set_var(*i, v.into_owned()),
                    LValue::Ruri => {
                        let s = v.as_str().into_owned();
                        self.rewrite_uri(&s);
                    }
                    LValue::RuriHost => {
                        let s = v.as_str().into_owned();
                        self.rewrite(Some(&s), None, None);
                    }
                    LValue::RuriUser => {
                        let s = v.as_str().into_owned();
                        self.rewrite(None, None, Some(&s));
                    }
                    LValue::Fs => {
                        self.send_socket(&v);
                    }
                    LValue::Bflags => {
                        // Not a number: no flags, as Kamailio's int conversion of a string.
                        self.ctx.bflags = v.as_int().unwrap_or(0) as u64;
                    }
                    LValue::Duri => {
                        // Null or "" clears it.
                        let s = v.as_str().into_owned();
                        // Checked where it is used (forward/t_relay): a bad one fails there.
                        self.ctx.edits.dst_uri = (!s.is_empty()).then_some(s);
                    }
                }
            }
            Stmt::ShtAssign(table, key, e) => {
                let v = self.eval(e)?.into_owned();
                let k = self.render(key);
                // Null removes the entry, as in Kamailio.
                let v = (!v.is_null()).then_some(v);
                if !self.host.sht_set(table, &k, v) {
                    self.host
                        .log(Level::Err, &format!("$sht: no htable `{table}`"));
                }
            }
            Stmt::Block(b) => self.block(b)?,
        }
        Ok(())
    }

    /// An expression in a condition: function results by Kamailio's rule (>0 true, <0
    /// false, 0 ends the script), values by [`truthy`].
    fn cond(&mut self, e: &'v Expr) -> R<bool> {
        self.enter()?;
        let r = self.cond_inner(e);
        self.nest -= 1;
        r
    }

    fn cond_inner(&mut self, e: &'v Expr) -> R<bool> {
        match e {
            Expr::Not(x) => Ok(!self.cond(x)?),
            Expr::And(l, r) => Ok(self.cond(l)? && self.cond(r)?),
            Expr::Or(l, r) => Ok(self.cond(l)? || self.cond(r)?),
            Expr::Call(c) => Ok(self.call(c)? > 0),
            e => {
                let v = self.eval(e)?;
                Ok(truthy(&v))
            }
        }
    }

    fn eval(&mut self, e: &'v Expr) -> R<Value<'v>> {
        self.enter()?;
        let r = self.eval_inner(e);
        self.nest -= 1;
        r
    }

    fn eval_inner(&mut self, e: &'v Expr) -> R<Value<'v>> {
        Ok(match e {
            Expr::Lit(v) => match v {
                Value::Int(i) => Value::Int(*i),
                Value::Str(s) => Value::Str(Cow::Borrowed(s.as_ref())),
                Value::Null => Value::Null,
            },
            Expr::Tmpl(parts) => Value::from(self.render(parts)),
            Expr::Pv(p) => self.pv(p),
            Expr::Kw(k) => self.kw(*k),
            Expr::Not(_) | Expr::And(..) | Expr::Or(..) => Value::Int(i64::from(self.cond(e)?)),
            Expr::Neg(x) => {
                let v = self.eval(x)?;
                Value::Int(v.as_int().unwrap_or(0).wrapping_neg())
            }
            Expr::Cmp(op, mode, l, r) => {
                let l = self.eval(l)?;
                let r = self.eval(r)?;
                Value::Int(i64::from(compare(*op, *mode, &l, &r)))
            }
            Expr::Regex { e, re, negate } => {
                let v = self.eval(e)?;
                Value::Int(i64::from(re.is_match(&v.as_str()) != *negate))
            }
            Expr::Myself { e, negate } => {
                let v = self.eval(e)?;
                Value::Int(i64::from(self.is_myself(&v.as_str()) != *negate))
            }
            Expr::Net { e, net, negate } => {
                // src_ip/dst_ip: test the address itself, without a string round trip.
                let direct = match **e {
                    Expr::Kw(Kw::SrcIp) => Some(self.env.rx.source.ip()),
                    Expr::Kw(Kw::DstIp) => Some(self.env.rx.local.ip()),
                    _ => None,
                };
                if let Some(ip) = direct {
                    return Ok(Value::Int(i64::from(net.contains(ip) != *negate)));
                }
                let v = self.eval(e)?;
                let s = v.as_str();
                let hit = s
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .is_ok_and(|ip| net.contains(ip));
                Value::Int(i64::from(hit != *negate))
            }
            Expr::Arith(op, l, r) => {
                let l = self.eval(l)?;
                let r = self.eval(r)?;
                arith(*op, l, r)
            }
            Expr::Call(c) => Value::Int(i64::from(self.call(c)?)),
            Expr::MyselfMarker => Value::EMPTY,
        })
    }

    fn render(&mut self, parts: &'v [Part]) -> String {
        let mut out = String::with_capacity(64);
        for p in parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Pv(pv) => match self.pv(pv) {
                    // Kamailio prints a null `<null>`, but a transformation's null as
                    // nothing.
                    Value::Null if !matches!(pv, Pv::Tr(..)) => out.push_str("<null>"),
                    v => v.write_to(&mut out),
                },
            }
        }
        out
    }

    fn select(&mut self, s: &'v Select) -> Value<'v> {
        // After rewriteuri()/$ru = ..., Request-URI selects read the new URI, as in Kamailio.
        if let Some(part) = s.ruri_part() {
            if let Some(u) = &self.ctx.edits.new_ruri {
                return part.eval(u).into_owned();
            }
        }
        let mut env = self.env;
        if s.needs_clock() {
            env.now_unix = self.now();
        }
        s.eval(&env)
    }

    fn header_present(&self, s: &Select) -> bool {
        match (s, self.env.msg) {
            (Select::Sip(SipSelect::Header(h)), Some(msg)) => h.present(msg),
            _ => false,
        }
    }

    fn pv(&mut self, p: &'v Pv) -> Value<'v> {
        match p {
            Pv::Sel(s) => self.select(s),
            // A pseudo-variable without a value is null (a select's absent is "").
            Pv::Of(s) => match self.select(s) {
                // `$hdr(X)` of a header present with an empty value is "", as in Kamailio.
                Value::Str(v) if v.is_empty() && !self.header_present(s) => Value::Null,
                v => v,
            },
            Pv::Var(i) => self.ctx.var(*i),
            Pv::Proto => Value::str(self.env.rx.transport.param()),
            Pv::Time => Value::Int(self.now()),
            Pv::Duri => match &self.ctx.edits.dst_uri {
                Some(d) => Value::Str(d.clone().into()),
                None => Value::Null,
            },
            Pv::TReplyCode => Value::Int(self.ctx.tm.reply_code.map_or(0, i64::from)),
            Pv::TBranchIdx => Value::Int(self.ctx.tm.branch_idx.map_or(0, |i| i as i64)),
            Pv::Bflags => Value::Int(self.ctx.bflags as i64),
            Pv::Avp(i) => self.ctx.avp(*i),
            Pv::Null => Value::Null,
            Pv::Fs => match self.ctx.edits.send_socket {
                Some((t, a)) => Value::from(super::socket_text(t, a)),
                None => Value::Null,
            },
            Pv::RetCode => Value::Int(i64::from(self.last_rc)),
            Pv::Sht(table, key) => {
                let k = self.render(key);
                self.host.sht_get(table, &k).unwrap_or(Value::Null)
            }
            Pv::Tr(inner, trs) => {
                let v = self.pv(inner);
                super::tr::apply(v, trs)
            }
        }
    }

    fn kw(&mut self, k: Kw) -> Value<'v> {
        let rx = self.env.rx;
        match k {
            Kw::Method => self.select_static(SipSelect::Method),
            Kw::Uri => match &self.ctx.edits.new_ruri {
                Some(u) => Value::from(u.clone()),
                None => Value::opt(self.env.msg.and_then(|m| m.request_uri_str())),
            },
            Kw::Status => self.select_static(SipSelect::Status),
            Kw::Proto => Value::Int(match rx.transport {
                Transport::Udp => 1,
                Transport::Tcp => 2,
                Transport::Tls => 3,
            }),
            Kw::SrcIp => Value::from(rx.source.ip().to_string()),
            Kw::SrcPort => Value::Int(i64::from(rx.source.port())),
            Kw::DstIp => Value::from(rx.local.ip().to_string()),
            Kw::DstPort => Value::Int(i64::from(rx.local.port())),
            Kw::Af => Value::Int(if rx.source.is_ipv4() { 2 } else { 10 }),
            Kw::MsgLen => Value::Int(self.env.msg.map_or(0, |m| m.as_bytes().len() as i64)),
            Kw::FromUri => match self.env.msg.and_then(|m| m.from().ok()) {
                Some(f) => Value::str(f.uri_str),
                None => Value::EMPTY,
            },
            Kw::ToUri => match self.env.msg.and_then(|m| m.to().ok()) {
                Some(t) => Value::str(t.uri_str),
                None => Value::EMPTY,
            },
        }
    }

    fn select_static(&self, s: SipSelect) -> Value<'v> {
        Select::Sip(s).eval(&self.env)
    }

    /// `myself`: a URI (`sip:host:port`) or a bare host/IP that is one of siprox's own.
    fn is_myself(&self, s: &str) -> bool {
        if s.contains(':') && !s.starts_with('[') && s.parse::<std::net::IpAddr>().is_err() {
            if let Ok(Uri::Sip(u)) = Uri::parse(s) {
                return self.host.is_myself(&host_string(&u.host), u.port);
            }
            if let Ok((h, p)) = parse_hostport(s) {
                return self.host.is_myself(&host_string(&h), p);
            }
            return false;
        }
        self.host
            .is_myself(s.trim_start_matches('[').trim_end_matches(']'), None)
    }

    fn arg(&mut self, c: &'v Call, i: usize) -> R<Value<'v>> {
        match c.args.get(i) {
            Some(e) => self.eval(e),
            None => Ok(Value::EMPTY),
        }
    }

    fn log_call(&mut self, c: &Call, what: &str) {
        if self.host.log_enabled(Level::Err) {
            let msg = format!(
                "{}: script function at byte {}: {what}",
                self.prog.file, c.span.start
            );
            self.host.log(Level::Err, &msg);
        }
    }

    /// Run a function; a result of 0 ends the script (Kamailio's rule).
    fn call(&mut self, c: &'v Call) -> R<i32> {
        // route() is the one recursive function: keep it out of call_inner's large frame.
        let r = match c.f {
            Func::Route(i) => self.route_call(i)?,
            _ => self.call_inner(c)?,
        };
        self.last_rc = r;
        if r == 0 {
            return Err(Flow::Exit);
        }
        Ok(r)
    }

    fn route_call(&mut self, i: usize) -> R<i32> {
        if self.depth >= MAX_ROUTE_DEPTH {
            let route = self.prog.route_names.get(i).cloned().unwrap_or_default();
            return Err(Flow::Err(RunError::RecursionLimit {
                route,
                limit: MAX_ROUTE_DEPTH,
            }));
        }
        let Some(body) = self.prog.routes.get(i) else {
            return Ok(-1);
        };
        self.depth += 1;
        let r = self.block(body);
        self.depth -= 1;
        match r {
            Ok(()) | Err(Flow::Break) => Ok(1),
            Err(Flow::Return(n)) => Ok(n),
            Err(f) => Err(f),
        }
    }

    #[inline(never)]
    /// The next hop of `forward(...)` / `t_relay(...)`: `Some(None)` without arguments,
    /// `Some(Some(target))`, or `None` (the call returns -1) when the target does not parse
    /// (logged) or there is no message to send.
    fn forward_target(&mut self, c: &'v Call) -> R<Option<Option<String>>> {
        let target = match c.args.len() {
            0 => None,
            1 => Some(self.arg(c, 0)?.as_str().into_owned()),
            _ => {
                let h = self.arg(c, 0)?.as_str().into_owned();
                let p = self.arg(c, 1)?;
                Some(format!("{h}:{p}"))
            }
        };
        if let Some(t) = &target {
            if let Err(e) = super::parse_target(t) {
                self.log_call(c, &format!("bad forward target `{t}`: {e}"));
                return Ok(None);
            }
        }
        if self.env.msg.is_none() {
            return Ok(None);
        }
        Ok(Some(target))
    }

    /// The status and reason of `sl_send_reply` / `t_reply` (`name`, for the log), or
    /// `None` (the call returns -1): not a status code (logged), not a request, a line break
    /// in the reason, or a final reply already sent.
    fn reply_args(&mut self, c: &'v Call, name: &str) -> R<Option<(u16, String)>> {
        let code = self.arg(c, 0)?.as_int();
        let reason = self.arg(c, 1)?.as_str().into_owned();
        let Some(code) = code.filter(|c| (100..=699).contains(c)) else {
            self.log_call(c, &format!("{name}: not a status code"));
            return Ok(None);
        };
        if !self.env.msg.is_some_and(|m| m.is_request()) || reason.contains(['\r', '\n']) {
            return Ok(None);
        }
        // A stateless proxy answers a request once: after a final reply, another would
        // reach the client as a stray response.
        if self.ctx.replied.is_some_and(|c| c >= 200) {
            return Ok(None);
        }
        Ok(Some((code as u16, reason)))
    }

    fn call_inner(&mut self, c: &'v Call) -> R<i32> {
        let msg = self.env.msg;
        Ok(match &c.f {
            Func::Drop => return Err(Flow::Drop),
            Func::Exit => return Err(Flow::Exit),
            Func::Route(i) => self.route_call(*i)?,
            Func::Forward => {
                let Some(target) = self.forward_target(c)? else {
                    return Ok(-1);
                };
                let r = self.host.forward(self.ctx, target.as_deref());
                if r > 0 {
                    self.ctx.forwarded = true;
                }
                r
            }
            Func::Reply => {
                let Some((code, reason)) = self.reply_args(c, "sl_send_reply")? else {
                    return Ok(-1);
                };
                let r = self.host.reply(self.ctx, code, &reason);
                if r > 0 {
                    self.ctx.replied = Some(code);
                }
                r
            }
            Func::Relay => {
                let Some(target) = self.forward_target(c)? else {
                    return Ok(-1);
                };
                let r = self.host.t_relay(self.ctx, target.as_deref());
                if r > 0 {
                    self.ctx.forwarded = true;
                }
                r
            }
            Func::TReply => {
                let Some((code, reason)) = self.reply_args(c, "t_reply")? else {
                    return Ok(-1);
                };
                let r = self.host.t_reply(self.ctx, code, &reason);
                if r > 0 {
                    self.ctx.replied = Some(code);
                }
                r
            }
            Func::TOnFailure(name) => {
                self.ctx.tm.failure_route = Some(name.clone());
                1
            }
            Func::TSetFr => {
                let inv = self.arg(c, 0)?.as_int();
                let other = match c.args.len() {
                    1 => Some(0),
                    _ => self.arg(c, 1)?.as_int(),
                };
                let ms = |v: Option<i64>| v.filter(|v| (0..=i64::from(u32::MAX)).contains(v));
                match (ms(inv), ms(other)) {
                    (Some(i), Some(o)) => {
                        self.ctx.tm.fr = Some((i as u32, o as u32));
                        1
                    }
                    _ => {
                        self.log_call(c, "t_set_fr: not a number of milliseconds");
                        -1
                    }
                }
            }
            Func::TOnBranch(name) => {
                self.ctx.tm.branch_route = Some(name.clone());
                1
            }
            Func::AppendBranch => {
                let uri = match c.args.len() {
                    0 => None,
                    _ => Some(self.arg(c, 0)?.as_str().into_owned()),
                };
                if !msg.is_some_and(|m| m.is_request()) {
                    return Ok(-1);
                }
                if let Some(u) = &uri {
                    if Uri::parse(u).is_err() || u.contains(['\r', '\n']) {
                        self.log_call(c, &format!("append_branch: bad URI `{u}`"));
                        return Ok(-1);
                    }
                }
                self.host.append_branch(self.ctx, uri.as_deref())
            }
            Func::TNextContacts => {
                if !msg.is_some_and(|m| m.is_request()) {
                    return Ok(-1);
                }
                self.host.t_next_contacts(self.ctx)
            }
            Func::TCheckStatus(re) => match self.ctx.tm.reply_code {
                Some(code) if re.0.is_match(&code.to_string()) => 1,
                _ => -1,
            },
            Func::TOnReply(name) => {
                self.ctx.tm.reply_route = Some(name.clone());
                1
            }
            Func::TCheckTrans => match msg.filter(|m| m.is_request()) {
                Some(_) => self.host.t_check_trans(self.ctx),
                None => -1,
            },
            Func::TNewtran => match msg.filter(|m| m.is_request()) {
                Some(_) => self.host.t_newtran(self.ctx),
                None => -1,
            },
            Func::TIsSet(r) => b2i(match r {
                TmRoute::Branch => self.ctx.tm.branch_route.is_some(),
                TmRoute::Failure => self.ctx.tm.failure_route.is_some(),
                TmRoute::Reply => self.ctx.tm.reply_route.is_some(),
            }),
            // failure_route never runs for a transaction the caller cancelled (the caller
            // gets 487 at once), so no run sees a cancelled transaction.
            Func::TIsCanceled => -1,
            // A retransmission of a request with a transaction is absorbed before the
            // script runs, and a worker runs one copy of a request at a time.
            Func::TPrecheckTrans => -1,
            Func::SlReplyError => {
                if !msg.is_some_and(|m| m.is_request())
                    || self.ctx.replied.is_some_and(|c| c >= 200)
                {
                    return Ok(-1);
                }
                let r = self.host.reply(self.ctx, 500, "Server Internal Error");
                if r > 0 {
                    self.ctx.replied = Some(500);
                }
                r
            }
            Func::SendSocket => {
                let v = self.arg(c, 0)?;
                b2i(self.send_socket(&v))
            }
            Func::ForceRport => {
                self.ctx.edits.force_rport = true;
                1
            }
            Func::SetReplyNoConnect => {
                self.ctx.edits.reply_no_connect = true;
                1
            }
            Func::TBranchTimeout => b2i(self.ctx.tm.branch.is_some_and(|b| b.timed_out)),
            Func::TBranchReplied => b2i(self.ctx.tm.branch.is_some_and(|b| b.replied)),
            Func::RecordRoute => {
                if c.args.len() == 1 {
                    let p = self.arg(c, 0)?.as_str().into_owned();
                    if p.contains(['\r', '\n', '>', ',']) {
                        return Ok(-1);
                    }
                    self.ctx.edits.rr_params = Some(p);
                }
                self.ctx.edits.record_route = true;
                1
            }
            Func::LooseRoute => self.loose_route(),
            Func::AppendHf | Func::AppendToReply => {
                let v = self.arg(c, 0)?;
                let Some(lines) = header_lines(&v.as_str()) else {
                    self.log_call(c, "not a header line (`Name: value\\r\\n`)");
                    return Ok(-1);
                };
                let out = if c.f == Func::AppendHf {
                    &mut self.ctx.edits.append_hf
                } else {
                    &mut self.ctx.edits.reply_hf
                };
                out.push_str(&lines);
                1
            }
            Func::RemoveHf => {
                let name = self.arg(c, 0)?.as_str().into_owned();
                let Some(m) = msg else { return Ok(-1) };
                let n = m.header_values_by_name(&name).count();
                let edits = &mut self.ctx.edits;
                if !edits
                    .remove_hf
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(&name))
                {
                    edits.remove_hf.push(name);
                }
                if n > 0 {
                    1
                } else {
                    -1
                }
            }
            Func::IsPresentHf => {
                let name = self.arg(c, 0)?;
                b2i(msg.is_some_and(|m| m.header_values_by_name(&name.as_str()).next().is_some()))
            }
            Func::IsMethod(list) => {
                let m = self.select_static(SipSelect::Method);
                let m = m.as_str();
                b2i(!m.is_empty() && list.iter().any(|x| x.eq_ignore_ascii_case(&m)))
            }
            Func::HasTotag => b2i(msg
                .and_then(|m| m.to().ok())
                .is_some_and(|t| t.tag().is_some_and(|t| !t.is_empty()))),
            Func::HasBody => b2i(msg.is_some_and(|m| !m.body().is_empty())),
            Func::Search(re) => b2i(msg.is_some_and(|m| re.0.is_match(m.as_bytes()))),
            Func::RewriteUri => {
                let u = self.arg(c, 0)?.as_str().into_owned();
                b2i(self.rewrite_uri(&u))
            }
            Func::RewriteHost => {
                let h = self.arg(c, 0)?.as_str().into_owned();
                b2i(self.rewrite(Some(&h), None, None))
            }
            Func::RewriteUser => {
                let u = self.arg(c, 0)?.as_str().into_owned();
                b2i(self.rewrite(None, None, Some(&u)))
            }
            Func::RewriteHostPort => {
                let hp = self.arg(c, 0)?.as_str().into_owned();
                match parse_hostport(&hp) {
                    Ok((h, p)) => {
                        let h = h.to_string();
                        b2i(self.rewrite(Some(&h), Some(p), None))
                    }
                    Err(_) => -1,
                }
            }
            Func::RewritePort => {
                let p = self.arg(c, 0)?;
                let port = match p.as_str().trim() {
                    "" => None,
                    s => match s.parse::<u16>() {
                        Ok(p) if p > 0 => Some(p),
                        _ => return Ok(-1),
                    },
                };
                b2i(self.rewrite(None, Some(port), None))
            }
            Func::SetFlag(n) => {
                self.ctx.flags |= 1u64 << n;
                1
            }
            Func::ResetFlag(n) => {
                self.ctx.flags &= !(1u64 << n);
                1
            }
            Func::IsFlag(n) => b2i(self.ctx.flags & (1u64 << n) != 0),
            Func::SetBFlag(n) => {
                self.ctx.bflags |= 1u64 << n;
                1
            }
            Func::ResetBFlag(n) => {
                self.ctx.bflags &= !(1u64 << n);
                1
            }
            Func::IsBFlag(n) => b2i(self.ctx.bflags & (1u64 << n) != 0),
            Func::Log(level) | Func::Xlog(level) => {
                // A disabled level costs a branch, not a formatted string.
                if self.host.log_enabled(*level) {
                    let v = self.arg(c, 0)?;
                    let s = v.as_str();
                    let s = s.strip_suffix('\n').unwrap_or(&s);
                    self.host.log(*level, s);
                }
                1
            }
            Func::IsPeerVerified => b2i(self
                .env
                .tls
                .is_some_and(|t| t.peer.is_some() && t.peer_verified)),
            Func::Save | Func::Lookup => {
                let table = self.arg(c, 0)?.as_str().into_owned();
                let flags = self.arg(c, 1)?.as_str().into_owned();
                if msg.is_none() {
                    return Ok(-1);
                }
                if c.f == Func::Save {
                    self.host.save(self.ctx, &table, &flags)
                } else {
                    self.host.lookup(self.ctx, &table, &flags)
                }
            }
            Func::DispatchRpc { trusted } => {
                if msg.is_none() {
                    return Ok(-1);
                }
                if *trusted {
                    self.host.dispatch_rpc_trusted(self.ctx)
                } else {
                    self.host.dispatch_rpc(self.ctx)
                }
            }
            Func::Auth(f) => {
                let a = self.arg(c, 0)?.as_str().into_owned();
                let b = self.arg(c, 1)?.as_str().into_owned();
                if msg.is_none() {
                    return Ok(-1);
                }
                let challenge = matches!(f, AuthFn::WwwChallenge | AuthFn::ProxyChallenge);
                if challenge && self.ctx.replied.is_some_and(|c| c >= 200) {
                    return Ok(-1);
                }
                let r = self.host.auth(self.ctx, *f, &a, &b);
                // -2: the credentials were refused and answered (403 and friends).
                if r == -2 && !challenge {
                    self.ctx.replied = Some(403);
                }
                if r > 0 && challenge {
                    let code = if *f == AuthFn::WwwChallenge { 401 } else { 407 };
                    self.ctx.replied = Some(code);
                }
                r
            }
            Func::MaxFwd(limit) => {
                let Some(m) = msg else { return Ok(-1) };
                match m.max_forwards() {
                    Ok(Some(0)) => -1,
                    Ok(Some(_)) => 1,
                    Ok(None) => {
                        self.ctx.edits.max_forwards = Some(*limit);
                        1
                    }
                    Err(_) => -2,
                }
            }
            Func::SanityCheck => {
                let Some(m) = msg else { return Ok(-1) };
                // An RPC POSTed to a SIP port is HTTP, not SIP: its version and headers are
                // the RPC layer's to check, so a script may call sanity_check() before
                // dispatch_rpc().
                if self.host.is_http() {
                    return Ok(1);
                }
                match m.validate() {
                    // RFC 3261 §16.3 step 6: siprox supports no proxy extension, so any
                    // Proxy-Require tag is answered 420 with Unsupported (as Kamailio's
                    // sanity module does).
                    Ok(()) if m.is_request() && m.proxy_require().next().is_some() => {
                        let tags: Vec<&str> = m.proxy_require().filter_map(Result::ok).collect();
                        if m.method_kind() != Some(Method::Ack) && self.ctx.replied.is_none() {
                            let saved = std::mem::take(&mut self.ctx.edits.reply_hf);
                            self.ctx.edits.reply_hf =
                                format!("{saved}Unsupported: {}\r\n", tags.join(", "));
                            if self.host.reply(self.ctx, 420, "Bad Extension") > 0 {
                                self.ctx.replied = Some(420);
                            }
                            self.ctx.edits.reply_hf = saved;
                        }
                        -1
                    }
                    Ok(()) => 1,
                    Err(e) => {
                        // Kamailio's sanity module answers the request itself.
                        if m.is_request()
                            && m.method_kind() != Some(Method::Ack)
                            && self.ctx.replied.is_none()
                        {
                            let (code, reason) = if e.is_version() {
                                (505, "Version Not Supported".to_owned())
                            } else {
                                (400, e.reason_phrase())
                            };
                            if self.host.reply(self.ctx, code, &reason) > 0 {
                                self.ctx.replied = Some(code);
                            }
                        }
                        -1
                    }
                }
            }
        })
    }

    /// Kamailio's loose_route(): 1 when the request carries a Route set that siprox is on
    /// (top Route is siprox, or a strict router put siprox in the Request-URI), -3 for a
    /// preloaded Route set that does not name siprox, -1 without Route.
    fn loose_route(&mut self) -> i32 {
        let Some(m) = self.env.msg else { return -1 };
        let mut routes = m.routes();
        let Some(Ok(top)) = routes.next() else {
            return -1;
        };
        let mine = |u: &Uri<'_>| match u {
            Uri::Sip(s) => self.host.is_myself(&host_string(&s.host), s.port),
            _ => false,
        };
        let top_is_me = top.uri().ok().is_some_and(|u| mine(&u));
        let ruri_is_me = m.request_uri().ok().is_some_and(|u| mine(&u));
        if top_is_me || ruri_is_me {
            self.ctx.edits.loose_routed = true;
            1
        } else {
            -3
        }
    }

    /// `$fs = v`: null clears it; a listener of siprox's sets it; anything else is
    /// logged (WARN, as Kamailio does) and leaves it as it was.
    fn send_socket(&mut self, v: &Value<'_>) -> bool {
        if v.is_null() {
            self.ctx.edits.send_socket = None;
            return true;
        }
        let s = v.as_str();
        let found = super::parse_socket(&s)
            .ok()
            .and_then(|(t, a)| self.host.send_socket(t, a));
        match found {
            Some(sock) => {
                self.ctx.edits.send_socket = Some(sock);
                true
            }
            None => {
                let msg = format!("$fs: no listener matches [{s}]: the default socket is used");
                self.host.log(Level::Warn, &msg);
                false
            }
        }
    }

    fn current_ruri(&self) -> Option<String> {
        match &self.ctx.edits.new_ruri {
            Some(u) => Some(u.clone()),
            None => self
                .env
                .msg
                .and_then(|m| m.request_uri_str())
                .map(str::to_owned),
        }
    }

    fn rewrite_uri(&mut self, u: &str) -> bool {
        if u.len() > 4096 || Uri::parse(u).is_err() {
            return false;
        }
        self.ctx.edits.new_ruri = Some(u.to_owned());
        true
    }

    /// Replace the host, port and/or user of the (possibly rewritten) Request-URI.
    fn rewrite(
        &mut self,
        host: Option<&str>,
        port: Option<Option<u16>>,
        user: Option<&str>,
    ) -> bool {
        let Some(cur) = self.current_ruri() else {
            return false;
        };
        let Ok(Uri::Sip(u)) = Uri::parse(&cur) else {
            return false;
        };
        let new = rebuild(&u, host, port, user);
        if Uri::parse(&new).is_err() {
            return false;
        }
        self.ctx.edits.new_ruri = Some(new);
        true
    }
}

fn host_string(h: &UriHost<'_>) -> String {
    match h {
        UriHost::Name(n) => (*n).to_owned(),
        UriHost::V4(a) => a.to_string(),
        UriHost::V6(a) => a.to_string(),
    }
}

/// Write a SIP URI back with some parts replaced.
fn rebuild(
    u: &SipUri<'_>,
    host: Option<&str>,
    port: Option<Option<u16>>,
    user: Option<&str>,
) -> String {
    let mut out = String::with_capacity(64);
    out.push_str(if u.secure { "sips:" } else { "sip:" });
    let user = match user {
        Some("") => None,
        Some(x) => Some(x),
        None => u.user,
    };
    if let Some(us) = user {
        out.push_str(us);
        if let Some(p) = u.password {
            out.push(':');
            out.push_str(p);
        }
        out.push('@');
    }
    match host {
        Some(h) if h.contains(':') && !h.starts_with('[') => {
            let _ = write!(out, "[{h}]");
        }
        Some(h) => out.push_str(h),
        None => {
            let _ = write!(out, "{}", u.host);
        }
    }
    if let Some(p) = port.unwrap_or(u.port) {
        let _ = write!(out, ":{p}");
    }
    out.push_str(u.params.as_str());
    if let Some(h) = u.headers {
        out.push('?');
        out.push_str(h);
    }
    out
}

/// Check header text for append_hf/append_to_reply: one or more `Name: value` lines, each
/// ending in CRLF (added if missing). Refuses anything that could smuggle a header section
/// end or a start line into the message.
fn header_lines(s: &str) -> Option<String> {
    let body = s.strip_suffix("\r\n").unwrap_or(s);
    if body.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 2);
    for line in body.split("\r\n") {
        if line.contains(['\r', '\n']) {
            return None;
        }
        let (name, _) = line.split_once(':')?;
        let name = name.trim_end();
        if name.is_empty() || HeaderName::classify(name.as_bytes()) == HeaderName::ContentLength {
            // Content-Length is the framing of the message; the proxy owns it.
            return None;
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        {
            return None;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Some(out)
}

fn compare(op: CmpOp, mode: CmpMode, l: &Value<'_>, r: &Value<'_>) -> bool {
    use std::cmp::Ordering;
    // Two pseudo-variables: null equals only null (not "").
    if mode == CmpMode::Dyn && (l.is_null() || r.is_null()) {
        let eq = l.is_null() && r.is_null();
        return match op {
            CmpOp::Eq => eq,
            CmpOp::Ne => !eq,
            _ => false,
        };
    }
    // Null is 0 as a number (and "" as a string).
    let int = |v: &Value<'_>| if v.is_null() { Some(0) } else { v.as_int() };
    let ord: Option<Ordering> = match mode {
        CmpMode::Int => match (int(l), int(r)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            // A string that is not a number compared as a number: the comparison is false,
            // whatever the operator (Kamailio treats it as an error).
            _ => None,
        },
        CmpMode::Str => Some(l.as_str().as_ref().cmp(r.as_str().as_ref())),
        CmpMode::StrNoCase => {
            let (a, b) = (l.as_str(), r.as_str());
            Some(a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()))
        }
        CmpMode::Dyn => match (l, r) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            _ => Some(l.as_str().as_ref().cmp(r.as_str().as_ref())),
        },
    };
    let Some(o) = ord else { return false };
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    }
}

fn arith<'v>(op: ArOp, l: Value<'v>, r: Value<'v>) -> Value<'v> {
    if op == ArOp::Add {
        if let (Value::Int(a), Value::Int(b)) = (&l, &r) {
            return Value::Int(a.wrapping_add(*b));
        }
        // `+` with a string operand concatenates.
        let mut s = l.as_str().into_owned();
        r.write_to(&mut s);
        return Value::from(s);
    }
    let (a, b) = (l.as_int().unwrap_or(0), r.as_int().unwrap_or(0));
    Value::Int(match op {
        ArOp::Add => a.wrapping_add(b),
        ArOp::Sub => a.wrapping_sub(b),
        ArOp::Mul => a.wrapping_mul(b),
        ArOp::Div => a.checked_div(b).unwrap_or(0),
        ArOp::Mod => a.checked_rem(b).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_line_checks() {
        assert_eq!(header_lines("X-A: 1").as_deref(), Some("X-A: 1\r\n"));
        assert_eq!(
            header_lines("X-A: 1\r\nX-B: 2\r\n").as_deref(),
            Some("X-A: 1\r\nX-B: 2\r\n")
        );
        assert!(header_lines("").is_none());
        assert!(header_lines("no colon\r\n").is_none());
        assert!(header_lines("X-A: 1\r\n\r\nINVITE sip:x SIP/2.0\r\n").is_none());
        assert!(header_lines("X-A: 1\nX-B: 2").is_none());
        assert!(header_lines("Content-Length: 0\r\n").is_none());
        assert!(header_lines("Bad Name: 1\r\n").is_none());
    }

    #[test]
    fn arithmetic_and_compare() {
        assert_eq!(
            arith(ArOp::Add, Value::Int(2), Value::Int(3)),
            Value::Int(5)
        );
        assert_eq!(
            arith(ArOp::Add, Value::str("a"), Value::Int(3)),
            Value::from("a3".to_owned())
        );
        assert_eq!(
            arith(ArOp::Div, Value::Int(2), Value::Int(0)),
            Value::Int(0)
        );
        assert_eq!(
            arith(ArOp::Mod, Value::Int(i64::MIN), Value::Int(-1)),
            Value::Int(0)
        );
        assert!(compare(
            CmpOp::Lt,
            CmpMode::Int,
            &Value::str("9"),
            &Value::Int(10)
        ));
        assert!(compare(
            CmpOp::Gt,
            CmpMode::Str,
            &Value::str("9"),
            &Value::str("10")
        ));
        assert!(!compare(
            CmpOp::Ne,
            CmpMode::Int,
            &Value::str("x"),
            &Value::Int(1)
        ));
        assert!(compare(
            CmpOp::Eq,
            CmpMode::StrNoCase,
            &Value::str("invite"),
            &Value::str("INVITE")
        ));
        assert!(compare(
            CmpOp::Eq,
            CmpMode::Dyn,
            &Value::Int(1),
            &Value::str("1")
        ));
    }

    #[test]
    fn rebuild_uri() {
        let Ok(Uri::Sip(u)) = Uri::parse("sip:alice:pw@example.com:5070;transport=tcp?X=1") else {
            panic!()
        };
        assert_eq!(
            rebuild(&u, Some("h.example"), None, None),
            "sip:alice:pw@h.example:5070;transport=tcp?X=1"
        );
        assert_eq!(
            rebuild(&u, Some("::1"), Some(None), Some("")),
            "sip:[::1];transport=tcp?X=1"
        );
        assert_eq!(
            rebuild(&u, None, Some(Some(1)), Some("bob")),
            "sip:bob:pw@example.com:1;transport=tcp?X=1"
        );
    }
}
