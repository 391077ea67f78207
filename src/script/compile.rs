//! Parser, checker and compiler in one recursive-descent pass: tokens become the checked
//! tree of [`super::ast`] directly. Syntax errors stop at the first; semantic errors
//! (unknown function, select, pseudo-variable or route, wrong argument count, bad regex or
//! literal) are collected so one run reports them all. Nesting is bounded, so no input can
//! overflow the stack here or in the interpreter.

use std::collections::HashMap;

use crate::select::{Select, Value};
use crate::sip::Uri;

use super::ast::{
    ArOp, Block, Call, Case, CmpMode, CmpOp, Expr, Func, IpNet, Kw, LValue, Part, Program, Pv,
    SearchRe, StatusRe, Stmt, TmRoute, Ty,
};
use super::error::{CompileError, CompileErrors, Span};
use super::lexer::{lex, Tok, Token};
use super::pv::{self, Vars};
use super::{parse_target, AuthFn, Level};

/// Deepest nesting of blocks and expressions accepted.
const MAX_NESTING: usize = 64;
/// Largest compiled regex program (bytes); bounds what one `=~` can cost at load and run.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The events a script may hook.
pub(crate) const EVENTS: &[&str] = &["tls:connection-in", "tls:connection-closed"];

/// A syntax error already recorded.
struct Fatal;

type PResult<T> = Result<T, Fatal>;

struct RouteSlot {
    body: Option<Block>,
    /// Where it was first called, for "unknown route" errors.
    first_call: Option<Span>,
}

struct Compiler<'s> {
    src: &'s str,
    file: &'s str,
    toks: Vec<Token>,
    pos: usize,
    errors: Vec<CompileError>,
    depth: usize,
    /// Enclosing switch/while bodies, for `break`.
    breakable: usize,
    vars: HashMap<String, usize>,
    routes: Vec<RouteSlot>,
    route_names: Vec<String>,
    route_index: HashMap<String, usize>,
    /// Literal send sockets, for [`Program::send_sockets`].
    sockets: Vec<String>,
    /// `t_on_branch("NAME")` calls, checked against the branch_route blocks at the end.
    branch_refs: Vec<(Span, String)>,
}

impl Vars for HashMap<String, usize> {
    fn slot(&mut self, name: &str) -> usize {
        let n = self.len();
        *self.entry(name.to_owned()).or_insert(n)
    }
}

/// Compile a script. `file` is only used in error messages.
pub(crate) fn compile(src: &str, file: &str) -> Result<Program, CompileErrors> {
    let toks = match lex(src) {
        Ok(t) => t,
        Err(e) => {
            return Err(CompileErrors {
                errors: vec![CompileError::new(file, src, e.span, e.msg)],
            })
        }
    };
    let mut c = Compiler {
        src,
        file,
        toks,
        pos: 0,
        errors: Vec::new(),
        depth: 0,
        breakable: 0,
        vars: HashMap::new(),
        routes: Vec::new(),
        route_names: Vec::new(),
        route_index: HashMap::new(),
        branch_refs: Vec::new(),
        sockets: Vec::new(),
    };
    let mut htables: Vec<String> = Vec::new();
    for t in &c.toks {
        if let Tok::Pv {
            name, arg: Some(a), ..
        } = &t.tok
        {
            if name == "sht" {
                if let Some((table, _)) = a.split_once("=>") {
                    let table = table.trim().to_owned();
                    if !htables.contains(&table) {
                        htables.push(table);
                    }
                }
            }
        }
    }
    let mut prog = Program {
        file: file.to_owned(),
        htables,
        ..Program::default()
    };
    let _ = c.top(&mut prog);
    prog.send_sockets = std::mem::take(&mut c.sockets);
    if c.errors.is_empty() {
        let missing: Vec<(Span, String)> = c
            .routes
            .iter()
            .zip(&c.route_names)
            .filter(|(slot, _)| slot.body.is_none())
            .map(|(slot, name)| {
                (
                    slot.first_call.unwrap_or_default(),
                    format!("unknown route `{name}`"),
                )
            })
            .collect();
        for (span, msg) in missing {
            c.error(span, msg);
        }
        for (span, name) in std::mem::take(&mut c.branch_refs) {
            if !prog.branch.contains_key(&name) {
                c.error(span, format!("unknown branch_route `{name}`"));
            }
        }
    }
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| (e.line, e.col));
        return Err(CompileErrors { errors: c.errors });
    }
    prog.routes = c
        .routes
        .into_iter()
        .map(|s| s.body.unwrap_or_default())
        .collect();
    prog.route_names = c.route_names;
    prog.route_index = c.route_index;
    prog.var_index = c.vars;
    Ok(prog)
}

impl<'s> Compiler<'s> {
    fn error(&mut self, span: Span, msg: impl Into<String>) {
        // One error per position is enough; a cascade helps nobody.
        let e = CompileError::new(self.file, self.src, span, msg);
        if !self
            .errors
            .iter()
            .any(|x| x.line == e.line && x.col == e.col)
        {
            self.errors.push(e);
        }
    }

    fn fatal<T>(&mut self, span: Span, msg: impl Into<String>) -> PResult<T> {
        self.error(span, msg);
        Err(Fatal)
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)].tok
    }

    fn span(&self) -> Span {
        self.toks[self.pos.min(self.toks.len() - 1)].span
    }

    fn prev_span(&self) -> Span {
        self.toks[self.pos.saturating_sub(1).min(self.toks.len() - 1)].span
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> PResult<Span> {
        if self.peek() == t {
            Ok(self.bump().span)
        } else {
            let found = describe(self.peek());
            let span = self.span();
            self.fatal(span, format!("expected {what}, found {found}"))
        }
    }

    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == name)
    }

    fn enter(&mut self, span: Span) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.fatal(span, format!("nesting deeper than {MAX_NESTING}"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn route_slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.route_index.get(name) {
            return i;
        }
        let i = self.routes.len();
        self.routes.push(RouteSlot {
            body: None,
            first_call: None,
        });
        self.route_names.push(name.to_owned());
        self.route_index.insert(name.to_owned(), i);
        i
    }

    // ---- top level -------------------------------------------------------------------

    fn top(&mut self, prog: &mut Program) -> PResult<()> {
        loop {
            let span = self.span();
            let word = match self.peek() {
                Tok::Eof => return Ok(()),
                Tok::Ident(w) => w.clone(),
                other => {
                    let found = describe(other);
                    return self.fatal(span, format!("expected a route block, found {found}"));
                }
            };
            self.bump();
            match word.as_str() {
                "route" | "request_route" => {
                    let name = self.block_name(word == "route", false)?;
                    let body = self.block()?;
                    match name {
                        None if prog.main.is_some() => self.error(span, "the main route is defined twice"),
                        None => prog.main = Some(body),
                        Some(n) => {
                            let i = self.route_slot(&n);
                            if self.routes[i].body.is_some() {
                                self.error(span, format!("route `{n}` is defined twice"));
                            } else {
                                self.routes[i].body = Some(body);
                            }
                        }
                    }
                }
                "onreply_route" | "reply_route" => {
                    let name = self.block_name(word == "onreply_route", false)?;
                    let body = self.block()?;
                    match name {
                        None if prog.reply_main.is_some() => {
                            self.error(span, "the main onreply_route is defined twice")
                        }
                        None => prog.reply_main = Some(body),
                        Some(n) => {
                            if prog.reply_named.insert(n.clone(), body).is_some() {
                                self.error(span, format!("onreply_route `{n}` is defined twice"));
                            }
                        }
                    }
                }
                "failure_route" | "branch_route" | "event_route" => {
                    let name = self.block_name(true, true)?.unwrap_or_default();
                    if word == "event_route" && !EVENTS.contains(&name.as_str()) {
                        self.error(
                            span,
                            format!("unknown event `{name}` (known: {})", EVENTS.join(", ")),
                        );
                    }
                    let body = self.block()?;
                    let map = match word.as_str() {
                        "failure_route" => &mut prog.failure,
                        "branch_route" => &mut prog.branch,
                        _ => &mut prog.events,
                    };
                    if map.insert(name.clone(), body).is_some() {
                        self.error(span, format!("{word} `{name}` is defined twice"));
                    }
                }
                "loadmodule" | "modparam" | "loadpath" | "listen" | "include_file" | "import_file" => {
                    return self.fatal(
                        span,
                        format!("`{word}` does not belong in a siprox script: modules, listeners and their parameters are configured in conf.d; a script holds only route blocks"),
                    );
                }
                _ if matches!(self.peek(), Tok::Assign) => {
                    return self.fatal(
                        span,
                        format!("global parameter `{word}` does not belong in a siprox script: set it in conf.d; a script holds only route blocks"),
                    );
                }
                _ => return self.fatal(span, format!("expected a route block (route, onreply_route, failure_route, event_route), found `{word}`")),
            }
        }
    }

    /// `[NAME]` after a block keyword. Names are taken verbatim between the brackets (so
    /// `tls:connection-in` works), quotes stripped.
    fn block_name(&mut self, allowed: bool, required: bool) -> PResult<Option<String>> {
        if !matches!(self.peek(), Tok::LBracket) {
            if required {
                let span = self.span();
                return self.fatal(span, "this block needs a name: `[NAME]`");
            }
            return Ok(None);
        }
        let open = self.bump().span;
        if !allowed {
            return self.fatal(open, "this block takes no name");
        }
        loop {
            match self.peek() {
                Tok::RBracket => break,
                Tok::Eof | Tok::LBrace | Tok::RBrace => return self.fatal(open, "missing `]`"),
                _ => {
                    self.bump();
                }
            }
        }
        let close = self.bump().span;
        let raw = self.src[open.end..close.start].trim();
        let name = raw.trim_matches(|c| c == '"' || c == '\'').trim();
        if name.is_empty() {
            return self.fatal(open.to(close), "empty route name");
        }
        Ok(Some(name.to_owned()))
    }

    // ---- statements ------------------------------------------------------------------

    fn block(&mut self) -> PResult<Block> {
        let open = self.expect(&Tok::LBrace, "`{`")?;
        self.enter(open)?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Tok::RBrace => {
                    self.bump();
                    break;
                }
                Tok::Eof => return self.fatal(open, "this `{` is never closed"),
                _ => {
                    if let Some(s) = self.stmt()? {
                        out.push(s);
                    }
                }
            }
        }
        self.leave();
        Ok(out)
    }

    /// A block or a single statement (after `if`, `else`, `while`).
    fn body(&mut self) -> PResult<Block> {
        if matches!(self.peek(), Tok::LBrace) {
            self.block()
        } else {
            let span = self.span();
            self.enter(span)?;
            let s = self.stmt()?;
            self.leave();
            Ok(s.into_iter().collect())
        }
    }

    fn semi(&mut self) -> PResult<()> {
        if self.eat(&Tok::Semi) {
            return Ok(());
        }
        let span = self.prev_span();
        let at = Span::new(span.end, span.end + 1);
        self.fatal(at, "expected `;`")
    }

    fn stmt(&mut self) -> PResult<Option<Stmt>> {
        let span = self.span();
        match self.peek().clone() {
            Tok::Semi => {
                self.bump();
                Ok(None)
            }
            Tok::LBrace => Ok(Some(Stmt::Block(self.block()?))),
            Tok::Ident(w) => match w.as_str() {
                "if" => {
                    self.bump();
                    self.expect(&Tok::LParen, "`(` after `if`")?;
                    let cond = self.expr()?;
                    self.expect(&Tok::RParen, "`)`")?;
                    let then = self.body()?;
                    let els = if self.is_ident("else") {
                        self.bump();
                        self.body()?
                    } else {
                        Vec::new()
                    };
                    Ok(Some(Stmt::If(cond, then, els)))
                }
                "while" => {
                    self.bump();
                    self.expect(&Tok::LParen, "`(` after `while`")?;
                    let cond = self.expr()?;
                    self.expect(&Tok::RParen, "`)`")?;
                    self.breakable += 1;
                    let body = self.body();
                    self.breakable -= 1;
                    Ok(Some(Stmt::While(cond, body?)))
                }
                "switch" => self.switch().map(Some),
                "return" => {
                    self.bump();
                    let v = if matches!(self.peek(), Tok::Semi) {
                        None
                    } else {
                        Some(self.expr()?)
                    };
                    self.semi()?;
                    Ok(Some(Stmt::Return(v)))
                }
                "exit" | "drop" | "break" => {
                    self.bump();
                    if self.eat(&Tok::LParen) {
                        self.expect(&Tok::RParen, "`)`")?;
                    }
                    self.semi()?;
                    Ok(Some(match w.as_str() {
                        "exit" => Stmt::Exit,
                        "drop" => Stmt::Drop,
                        _ => {
                            if self.breakable == 0 {
                                self.error(span, "`break` outside `switch` or `while`");
                            }
                            Stmt::Break
                        }
                    }))
                }
                "case" | "default" => self.fatal(span, format!("`{w}` outside `switch`")),
                "else" => self.fatal(span, "`else` without `if`"),
                _ => {
                    let before = self.errors.len();
                    let e = self.expr()?;
                    self.semi()?;
                    // A call that failed its own checks already has an error; don't pile on.
                    if !matches!(e, Expr::Call(_)) && self.errors.len() == before {
                        self.error(span, "a statement must be a function call, an assignment or a keyword statement");
                    }
                    Ok(Some(Stmt::Expr(e)))
                }
            },
            Tok::Pv { name, arg, tr }
                if name == "sht" && tr.is_empty() && matches!(self.peek_at(1), Tok::Assign) =>
            {
                self.bump();
                self.bump();
                let target = pv::sht_arg(arg.as_deref().unwrap_or(""), &mut self.vars);
                let e = self.expr()?;
                self.semi()?;
                match target {
                    Ok((table, key)) => Ok(Some(Stmt::ShtAssign(table, key, e))),
                    Err(m) => {
                        self.error(span, m);
                        Ok(Some(Stmt::Expr(e)))
                    }
                }
            }
            Tok::Pv { name, arg, tr } if matches!(self.peek_at(1), Tok::Assign) => {
                self.bump();
                self.bump();
                let lv = match name.as_str() {
                    _ if !tr.is_empty() => {
                        self.error(span, "cannot assign to a transformation");
                        LValue::Var(0)
                    }
                    "var" => {
                        let a = arg.clone().unwrap_or_default();
                        match pv::resolve("var", Some(&a), &mut self.vars) {
                            Ok(Pv::Var(i)) => LValue::Var(i),
                            Ok(_) => LValue::Var(0),
                            Err(e) => {
                                self.error(span, e);
                                LValue::Var(0)
                            }
                        }
                    }
                    "ru" if arg.is_none() => LValue::Ruri,
                    "rd" if arg.is_none() => LValue::RuriHost,
                    "rU" if arg.is_none() => LValue::RuriUser,
                    "du" if arg.is_none() => LValue::Duri,
                    "fs" if arg.is_none() => LValue::Fs,
                    "bf" if arg.is_none() => LValue::Bflags,
                    "avp" => match pv::avp_slot(arg.as_deref().unwrap_or("")) {
                        Ok(n) => LValue::Avp(pv::Vars::slot(&mut self.vars, &n)),
                        Err(e) => {
                            self.error(span, e);
                            LValue::Var(0)
                        }
                    },
                    _ => {
                        self.error(span, format!("cannot assign to `${name}` (assignable: $var(name), $avp(name), $ru, $rd, $rU, $du, $bf)"));
                        LValue::Var(0)
                    }
                };
                let e = self.expr()?;
                self.semi()?;
                if lv == LValue::Fs {
                    if let Expr::Lit(Value::Str(s)) = &e {
                        if let Err(m) = self.socket(s) {
                            self.error(span, m);
                        }
                    }
                }
                Ok(Some(Stmt::Assign(lv, e)))
            }
            _ => {
                let before = self.errors.len();
                let e = self.expr()?;
                self.semi()?;
                if !matches!(e, Expr::Call(_)) && self.errors.len() == before {
                    self.error(
                        span,
                        "a statement must be a function call, an assignment or a keyword statement",
                    );
                }
                Ok(Some(Stmt::Expr(e)))
            }
        }
    }

    fn switch(&mut self) -> PResult<Stmt> {
        self.bump();
        self.expect(&Tok::LParen, "`(` after `switch`")?;
        let subject = self.expr()?;
        self.expect(&Tok::RParen, "`)`")?;
        let open = self.expect(&Tok::LBrace, "`{`")?;
        self.enter(open)?;
        self.breakable += 1;
        let mut cases: Vec<(Case, usize)> = Vec::new();
        let mut default = None;
        let mut body = Vec::new();
        let r = loop {
            let span = self.span();
            match self.peek().clone() {
                Tok::RBrace => {
                    self.bump();
                    break Ok(());
                }
                Tok::Eof => break self.fatal(open, "this `{` is never closed"),
                Tok::Ident(w) if w == "case" => {
                    self.bump();
                    let neg = self.eat(&Tok::Minus);
                    let vspan = self.span();
                    let case = match self.bump().tok {
                        Tok::Str(s) if !neg => Case::Str(s),
                        Tok::Int(i) => Case::Int(if neg { -i } else { i }),
                        _ => {
                            break self
                                .fatal(vspan, "a case value is a string or an integer literal")
                        }
                    };
                    if cases.iter().any(|(c, _)| *c == case) {
                        self.error(vspan, "duplicate case");
                    }
                    if let Err(e) = self.expect(&Tok::Colon, "`:` after the case value") {
                        break Err(e);
                    }
                    cases.push((case, body.len()));
                }
                Tok::Ident(w) if w == "default" => {
                    self.bump();
                    if default.is_some() {
                        self.error(span, "two `default` labels");
                    }
                    if let Err(e) = self.expect(&Tok::Colon, "`:` after `default`") {
                        break Err(e);
                    }
                    default = Some(body.len());
                }
                _ => {
                    if cases.is_empty() && default.is_none() {
                        break self.fatal(span, "expected `case` or `default`");
                    }
                    match self.stmt() {
                        Ok(Some(s)) => body.push(s),
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        self.breakable -= 1;
        r?;
        self.leave();
        Ok(Stmt::Switch {
            subject,
            cases,
            default,
            body,
        })
    }

    // ---- expressions -----------------------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        let span = self.span();
        self.enter(span)?;
        let e = self.or();
        self.leave();
        let e = e?;
        if matches!(e, Expr::MyselfMarker) {
            self.error(span, "`myself` is only valid in `== myself` / `!= myself`");
        }
        Ok(e)
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut l = self.and()?;
        while self.eat(&Tok::Or) {
            let r = self.and()?;
            l = Expr::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut l = self.cmp()?;
        while self.eat(&Tok::And) {
            let r = self.cmp()?;
            l = Expr::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn cmp(&mut self) -> PResult<Expr> {
        let lspan = self.span();
        let l = self.add()?;
        let op = match self.peek() {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Ge => Some(CmpOp::Ge),
            Tok::Match | Tok::NotMatch => None,
            _ => return Ok(l),
        };
        let op_tok = self.bump();
        let rspan = self.span();
        let r = self.add()?;
        let rspan = rspan.to(self.prev_span());
        let Some(op) = op else {
            let negate = op_tok.tok == Tok::NotMatch;
            let pat = match &r {
                Expr::Lit(Value::Str(s)) => s.to_string(),
                _ => {
                    self.error(rspan, "the right side of `=~` must be a string literal (regexes are compiled once, at load)");
                    return Ok(Expr::Lit(Value::Int(0)));
                }
            };
            let re = regex::RegexBuilder::new(&pat)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build();
            return match re {
                Ok(re) => Ok(Expr::Regex {
                    e: Box::new(l),
                    re,
                    negate,
                }),
                Err(e) => {
                    let msg = e.to_string();
                    let first = msg.lines().last().unwrap_or("").trim().to_owned();
                    self.error(rspan, format!("bad regex: {first}"));
                    Ok(Expr::Lit(Value::Int(0)))
                }
            };
        };
        Ok(self.make_cmp(op, l, r, lspan, rspan))
    }

    fn make_cmp(&mut self, op: CmpOp, l: Expr, r: Expr, lspan: Span, rspan: Span) -> Expr {
        let eq = matches!(op, CmpOp::Eq | CmpOp::Ne);
        let negate = op == CmpOp::Ne;
        // `x == myself`
        match (&l, &r) {
            (Expr::MyselfMarker, Expr::MyselfMarker) => {
                self.error(lspan, "`myself` compared with itself");
                return Expr::Lit(Value::Int(0));
            }
            (Expr::MyselfMarker, _) | (_, Expr::MyselfMarker) => {
                if !eq {
                    self.error(lspan.to(rspan), "`myself` only works with `==` and `!=`");
                    return Expr::Lit(Value::Int(0));
                }
                let e = if matches!(l, Expr::MyselfMarker) {
                    r
                } else {
                    l
                };
                return Expr::Myself {
                    e: Box::new(e),
                    negate,
                };
            }
            _ => {}
        }
        // Keyword-aware literals: proto == "tls", af == "inet", src_ip == "10.0.0.0/8".
        let (kw, lit, lit_span) = match (&l, &r) {
            (Expr::Kw(k), Expr::Lit(Value::Str(s))) => (Some(*k), Some(s.to_string()), rspan),
            (Expr::Lit(Value::Str(s)), Expr::Kw(k)) => (Some(*k), Some(s.to_string()), lspan),
            _ => (None, None, rspan),
        };
        if let (Some(k), Some(s)) = (kw, lit) {
            match k {
                Kw::Proto | Kw::Af => {
                    let v = if k == Kw::Proto {
                        proto_const(&s)
                    } else {
                        af_const(&s)
                    };
                    let Some(v) = v else {
                        self.error(
                            lit_span,
                            format!(
                                "`{s}` is not a {} name",
                                if k == Kw::Proto {
                                    "transport"
                                } else {
                                    "address family"
                                }
                            ),
                        );
                        return Expr::Lit(Value::Int(0));
                    };
                    return Expr::Cmp(
                        op,
                        CmpMode::Int,
                        Box::new(Expr::Kw(k)),
                        Box::new(Expr::Lit(Value::Int(v))),
                    );
                }
                Kw::SrcIp | Kw::DstIp if eq => {
                    if let Some(net) = IpNet::parse(&s) {
                        return Expr::Net {
                            e: Box::new(Expr::Kw(k)),
                            net,
                            negate,
                        };
                    }
                }
                Kw::Method => {
                    return Expr::Cmp(op, CmpMode::StrNoCase, Box::new(l), Box::new(r));
                }
                _ => {}
            }
        }
        let mode = match (l.ty(), r.ty()) {
            (Ty::Int, _) | (_, Ty::Int) => CmpMode::Int,
            (Ty::Str, _) | (_, Ty::Str) => CmpMode::Str,
            _ => CmpMode::Dyn,
        };
        Expr::Cmp(op, mode, Box::new(l), Box::new(r))
    }

    fn add(&mut self) -> PResult<Expr> {
        let mut l = self.mul()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => ArOp::Add,
                Tok::Minus => ArOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.mul()?;
            l = Expr::Arith(op, Box::new(l), Box::new(r));
        }
    }

    fn mul(&mut self) -> PResult<Expr> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => ArOp::Mul,
                Tok::Slash => ArOp::Div,
                Tok::Percent => ArOp::Mod,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = Expr::Arith(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        let span = self.span();
        match self.peek() {
            Tok::Not => {
                self.bump();
                self.enter(span)?;
                let e = self.unary();
                self.leave();
                Ok(Expr::Not(Box::new(e?)))
            }
            Tok::Minus => {
                self.bump();
                self.enter(span)?;
                let e = self.unary();
                self.leave();
                Ok(match e? {
                    Expr::Lit(Value::Int(i)) => Expr::Lit(Value::Int(i.wrapping_neg())),
                    e => Expr::Neg(Box::new(e)),
                })
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.bump();
        let span = t.span;
        match t.tok {
            Tok::Int(i) => Ok(Expr::Lit(Value::Int(i))),
            Tok::Str(s) => Ok(self.string(s, span)),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::Pv { name, arg, tr } => {
                match pv::resolve_tr(&name, arg.as_deref(), &tr, &mut self.vars) {
                    Ok(p) => Ok(Expr::Pv(p)),
                    Err(e) => {
                        self.error(span, e);
                        Ok(Expr::Lit(Value::EMPTY))
                    }
                }
            }
            Tok::Select(path) => match Select::parse(&path) {
                Ok(s) => Ok(Expr::Pv(Pv::Sel(s))),
                Err(e) => {
                    let at = span.start + 1 + e.offset.min(path.len());
                    self.error(
                        Span::new(at, span.end.max(at + 1)),
                        format!("{e} in select `@{path}`"),
                    );
                    Ok(Expr::Lit(Value::EMPTY))
                }
            },
            Tok::Ident(w) => {
                if matches!(self.peek(), Tok::LParen) {
                    return self.call(w, span);
                }
                self.keyword(&w, span)
            }
            other => {
                let found = describe(&other);
                self.fatal(span, format!("expected an expression, found {found}"))
            }
        }
    }

    /// A string literal: a template when it holds pseudo-variables, else a plain literal.
    fn string(&mut self, s: String, span: Span) -> Expr {
        if !s.contains('$') {
            return Expr::Lit(Value::from(s));
        }
        match pv::template(&s, &mut self.vars) {
            Ok(parts) => match parts.as_slice() {
                [] => Expr::Lit(Value::EMPTY),
                [Part::Lit(l)] => Expr::Lit(Value::from(l.clone())),
                _ => Expr::Tmpl(parts),
            },
            Err((_, e)) => {
                self.error(span, e);
                Expr::Lit(Value::EMPTY)
            }
        }
    }

    fn keyword(&mut self, w: &str, span: Span) -> PResult<Expr> {
        let kw = match w {
            "method" => Kw::Method,
            "uri" => Kw::Uri,
            "status" => Kw::Status,
            "proto" => Kw::Proto,
            "src_ip" => Kw::SrcIp,
            "src_port" => Kw::SrcPort,
            "dst_ip" => Kw::DstIp,
            "dst_port" => Kw::DstPort,
            "af" => Kw::Af,
            "from_uri" => Kw::FromUri,
            "to_uri" => Kw::ToUri,
            "msg" if matches!(self.peek(), Tok::Colon) => {
                self.bump();
                let t = self.bump();
                return match t.tok {
                    Tok::Ident(l) if l == "len" => Ok(Expr::Kw(Kw::MsgLen)),
                    _ => self.fatal(span.to(t.span), "expected `msg:len`"),
                };
            }
            "myself" => return Ok(Expr::MyselfMarker),
            "true" => return Ok(Expr::Lit(Value::Int(1))),
            "false" => return Ok(Expr::Lit(Value::Int(0))),
            _ => {
                // Log levels as bare words: log(L_INFO, "...").
                if w.starts_with("L_") {
                    if let Some(l) = Level::from_name(w) {
                        return Ok(Expr::Lit(Value::Int(l.number())));
                    }
                }
                // Kamailio accepts the transport and family names in either case.
                if let Some(v) = proto_const(w).or_else(|| af_const(w)) {
                    return Ok(Expr::Lit(Value::Int(v)));
                }
                if FUNCS.iter().any(|(n, ..)| *n == w) {
                    self.error(span, format!("`{w}` is a function: call it as `{w}(...)`"));
                } else {
                    self.error(span, format!("unknown keyword `{w}`"));
                }
                return Ok(Expr::Lit(Value::Int(0)));
            }
        };
        Ok(Expr::Kw(kw))
    }

    fn call(&mut self, name: String, span: Span) -> PResult<Expr> {
        let open = self.bump().span;
        // route(NAME): the name is a bare word, a string or a number, never an expression.
        if name == "route" {
            let t = self.bump();
            let rname = match t.tok {
                Tok::Ident(n) => n,
                Tok::Str(s) if !s.contains('$') => s,
                Tok::Int(i) => i.to_string(),
                Tok::Str(_) => {
                    self.error(
                        t.span,
                        "route names are resolved at load: a variable route name is not supported",
                    );
                    String::new()
                }
                _ => return self.fatal(t.span, "expected a route name"),
            };
            let close = self.expect(&Tok::RParen, "`)` after the route name")?;
            let i = self.route_slot(&rname);
            if self.routes[i].first_call.is_none() {
                self.routes[i].first_call = Some(t.span);
            }
            return Ok(Expr::Call(Box::new(Call {
                f: Func::Route(i),
                args: Vec::new(),
                span: span.to(close),
            })));
        }
        let mut args = Vec::new();
        let mut spans = Vec::new();
        if !self.eat(&Tok::RParen) {
            loop {
                let s = self.span();
                let a = self.expr()?;
                spans.push(s.to(self.prev_span()));
                args.push(a);
                if self.eat(&Tok::Comma) {
                    continue;
                }
                self.expect(&Tok::RParen, "`,` or `)`")?;
                break;
            }
        }
        let span = span.to(self.prev_span());
        let _ = open;
        let Some(&(_, min, max)) = FUNCS.iter().find(|(n, ..)| *n == name) else {
            self.error(span, format!("unknown function `{name}`"));
            return Ok(Expr::Lit(Value::Int(0)));
        };
        if args.len() < min || args.len() > max {
            let want = match (min, max) {
                (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
                (a, b) => format!("{a} to {b} arguments"),
            };
            self.error(span, format!("`{name}` takes {want}, got {}", args.len()));
            return Ok(Expr::Lit(Value::Int(0)));
        }
        match self.resolve_call(&name, &mut args, &spans) {
            Ok(f) => Ok(Expr::Call(Box::new(Call { f, args, span }))),
            Err((at, msg)) => {
                self.error(at, msg);
                Ok(Expr::Lit(Value::Int(0)))
            }
        }
    }

    /// A literal send socket: well formed now, one of the listeners at load.
    fn socket(&mut self, s: &str) -> Result<(), String> {
        super::parse_socket(s).map_err(|e| format!("bad send socket `{s}`: {e}"))?;
        if !self.sockets.iter().any(|x| x == s) {
            self.sockets.push(s.to_owned());
        }
        Ok(())
    }

    /// Turn a checked name and its arguments into a [`Func`], validating literal arguments
    /// and folding the ones that are compile-time constants (levels, flags, method lists).
    fn resolve_call(
        &mut self,
        name: &str,
        args: &mut Vec<Expr>,
        spans: &[Span],
    ) -> Result<Func, (Span, String)> {
        let lit_str = |i: usize| -> Option<String> {
            match args.get(i) {
                Some(Expr::Lit(Value::Str(s))) => Some(s.to_string()),
                _ => None,
            }
        };
        let lit_int = |i: usize| -> Option<i64> {
            match args.get(i) {
                Some(Expr::Lit(v)) => v.as_int(),
                _ => None,
            }
        };
        let sp = |i: usize| spans.get(i).copied().unwrap_or_default();
        let f = match name {
            "forward" | "t_relay" => {
                let stateful = name == "t_relay";
                // A literal target is checked now; one built from variables at run time.
                let port_known = args.len() < 2 || matches!(args.get(1), Some(Expr::Lit(_)));
                if let (Some(t), true) = (lit_str(0), port_known) {
                    let full = match args.get(1) {
                        Some(Expr::Lit(p)) => format!("{t}:{p}"),
                        _ => t,
                    };
                    if let Err(e) = parse_target(&full) {
                        return Err((sp(0), format!("bad forward target `{full}`: {e}")));
                    }
                }
                if stateful {
                    Func::Relay
                } else {
                    Func::Forward
                }
            }
            "t_on_failure" => {
                let Some(n) = lit_str(0).filter(|n| !n.is_empty()) else {
                    return Err((
                        sp(0),
                        "t_on_failure takes a literal failure_route name".into(),
                    ));
                };
                args.clear();
                Func::TOnFailure(n)
            }
            "t_on_reply" => {
                let Some(n) = lit_str(0).filter(|n| !n.is_empty()) else {
                    return Err((
                        sp(0),
                        "t_on_reply takes a literal onreply_route name".into(),
                    ));
                };
                args.clear();
                Func::TOnReply(n)
            }
            "t_check_trans" => Func::TCheckTrans,
            "t_newtran" => Func::TNewtran,
            "t_branch_timeout" => Func::TBranchTimeout,
            "t_branch_replied" => Func::TBranchReplied,
            "t_on_branch" => {
                let Some(n) = lit_str(0).filter(|n| !n.is_empty()) else {
                    return Err((
                        sp(0),
                        "t_on_branch takes a literal branch_route name".into(),
                    ));
                };
                args.clear();
                self.branch_refs.push((sp(0), n.clone()));
                Func::TOnBranch(n)
            }
            "append_branch" => {
                if let Some(u) = lit_str(0) {
                    if crate::sip::Uri::parse(&u).is_err() {
                        return Err((sp(0), format!("append_branch: bad URI `{u}`")));
                    }
                }
                Func::AppendBranch
            }
            "t_next_contacts" => Func::TNextContacts,
            "t_is_set" => {
                let r = match lit_str(0).as_deref() {
                    Some("branch_route") => TmRoute::Branch,
                    Some("failure_route") => TmRoute::Failure,
                    Some("onreply_route") => TmRoute::Reply,
                    _ => return Err((
                        sp(0),
                        "t_is_set takes \"branch_route\", \"failure_route\" or \"onreply_route\""
                            .into(),
                    )),
                };
                args.clear();
                Func::TIsSet(r)
            }
            "t_is_canceled" => Func::TIsCanceled,
            "t_precheck_trans" => Func::TPrecheckTrans,
            "sl_reply_error" => Func::SlReplyError,
            "force_rport" => Func::ForceRport,
            "set_reply_no_connect" => Func::SetReplyNoConnect,
            "force_send_socket" | "set_send_socket" => {
                if let Some(s) = lit_str(0) {
                    self.socket(&s).map_err(|m| (sp(0), m))?;
                }
                Func::SendSocket
            }
            "t_set_fr" => Func::TSetFr,
            "t_reply" => {
                if let Some(Expr::Lit(v)) = args.first() {
                    match v.as_int() {
                        Some(c) if (100..=699).contains(&c) => {}
                        _ => return Err((sp(0), format!("`{v}` is not a status code (100-699)"))),
                    }
                }
                Func::TReply
            }
            "t_check_status" => {
                let Some(p) = lit_str(0) else {
                    return Err((sp(0), "t_check_status takes a literal pattern".into()));
                };
                let re = regex::RegexBuilder::new(&format!("^(?:{p})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|_| (sp(0), format!("bad t_check_status pattern `{p}`")))?;
                args.clear();
                Func::TCheckStatus(StatusRe(re))
            }
            "search" => {
                let Some(p) = lit_str(0) else {
                    return Err((sp(0), "search takes a literal pattern".into()));
                };
                let re = regex::bytes::RegexBuilder::new(&p)
                    .case_insensitive(true)
                    .multi_line(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|_| (sp(0), format!("bad search pattern `{p}`")))?;
                args.clear();
                Func::Search(SearchRe(re))
            }
            "sl_send_reply" | "send_reply" | "sl_reply" => {
                if let Some(Expr::Lit(v)) = args.first() {
                    match v.as_int() {
                        Some(c) if (100..=699).contains(&c) => {}
                        _ => return Err((sp(0), format!("`{v}` is not a status code (100-699)"))),
                    }
                }
                Func::Reply
            }
            "drop" => Func::Drop,
            "exit" => Func::Exit,
            "record_route" => Func::RecordRoute,
            "loose_route" => Func::LooseRoute,
            "append_hf" => Func::AppendHf,
            "append_to_reply" => Func::AppendToReply,
            "remove_hf" => Func::RemoveHf,
            "is_present_hf" => Func::IsPresentHf,
            "is_method" => {
                let Some(list) = lit_str(0) else {
                    return Err((
                        sp(0),
                        "is_method takes a literal list: is_method(\"INVITE|REGISTER\")".into(),
                    ));
                };
                let methods: Vec<String> = list.split('|').map(|m| m.trim().to_owned()).collect();
                if methods.iter().any(|m| {
                    m.is_empty()
                        || !m
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
                }) {
                    return Err((sp(0), format!("bad method list `{list}`")));
                }
                args.clear();
                Func::IsMethod(methods)
            }
            "has_totag" => Func::HasTotag,
            "has_body" => Func::HasBody,
            "rewriteuri" | "seturi" => {
                if let Some(u) = lit_str(0) {
                    if let Err(e) = Uri::parse(&u) {
                        return Err((sp(0), format!("bad URI `{u}`: {e}")));
                    }
                }
                Func::RewriteUri
            }
            "rewritehost" | "sethost" => Func::RewriteHost,
            "rewriteuser" | "setuser" => Func::RewriteUser,
            "rewritehostport" | "sethostport" => Func::RewriteHostPort,
            "rewriteport" | "setport" => Func::RewritePort,
            "setflag" | "resetflag" | "isflag" | "isflagset" | "setbflag" | "resetbflag"
            | "isbflagset" => {
                // Kamailio's optional branch index: only branch 0 (the request's) exists.
                if args.len() > 1 && lit_int(1) != Some(0) {
                    return Err((
                        sp(1),
                        "only branch 0 (the request's own) has flags here".into(),
                    ));
                }
                let n = match lit_int(0) {
                    Some(n) if (0..64).contains(&n) => n as u8,
                    _ => return Err((sp(0), "a flag is an integer literal from 0 to 63".into())),
                };
                args.clear();
                match name {
                    "setflag" => Func::SetFlag(n),
                    "resetflag" => Func::ResetFlag(n),
                    "isflag" | "isflagset" => Func::IsFlag(n),
                    "setbflag" => Func::SetBFlag(n),
                    "resetbflag" => Func::ResetBFlag(n),
                    _ => Func::IsBFlag(n),
                }
            }
            "xdbg" | "xinfo" | "xnotice" | "xwarn" | "xerr" | "xbug" | "xcrit" | "xalert" => {
                args.truncate(1);
                Func::Xlog(match name {
                    "xdbg" => Level::Dbg,
                    "xinfo" => Level::Info,
                    "xnotice" => Level::Notice,
                    "xwarn" => Level::Warn,
                    "xerr" => Level::Err,
                    "xbug" => Level::Bug,
                    "xcrit" => Level::Crit,
                    _ => Level::Alert,
                })
            }
            "log" | "xlog" | "xlogl" => {
                let level = if args.len() == 2 {
                    let l = match args.first() {
                        Some(Expr::Lit(Value::Int(i))) => Level::from_number(*i),
                        Some(Expr::Lit(Value::Str(s))) => Level::from_name(s),
                        _ => None,
                    };
                    let Some(l) = l else {
                        return Err((sp(0), "the level is a literal: L_ALERT, L_BUG, L_CRIT, L_ERR, L_WARN, L_NOTICE, L_INFO, L_DBG (or -5..3)".into()));
                    };
                    args.remove(0);
                    l
                } else if name == "log" {
                    Level::Dbg
                } else {
                    Level::Err
                };
                if name == "log" {
                    Func::Log(level)
                } else {
                    Func::Xlog(level)
                }
            }
            "is_peer_verified" => Func::IsPeerVerified,
            "save" => Func::Save,
            "lookup" => Func::Lookup,
            "dispatch_rpc" => Func::DispatchRpc { trusted: false },
            "dispatch_rpc_trusted" => Func::DispatchRpc { trusted: true },
            "www_authorize" => Func::Auth(AuthFn::WwwAuthorize),
            "proxy_authorize" => Func::Auth(AuthFn::ProxyAuthorize),
            "www_challenge" => Func::Auth(AuthFn::WwwChallenge),
            "proxy_challenge" => Func::Auth(AuthFn::ProxyChallenge),
            "consume_credentials" => Func::Auth(AuthFn::ConsumeCredentials),
            "mf_process_maxfwd_header" => {
                let n = match lit_int(0) {
                    Some(n) if (1..=255).contains(&n) => n as u8,
                    _ => {
                        return Err((
                            sp(0),
                            "the Max-Forwards limit is an integer literal from 1 to 255".into(),
                        ))
                    }
                };
                args.clear();
                Func::MaxFwd(n)
            }
            "sanity_check" => {
                // Kamailio's check masks: accepted (numbers), siprox runs its own checks.
                for i in 0..args.len() {
                    let ok = match args.get(i) {
                        Some(Expr::Lit(v)) => v.as_int().is_some_and(|n| n >= 0),
                        _ => false,
                    };
                    if !ok {
                        return Err((
                            sp(i),
                            "sanity_check takes literal check masks (numbers)".into(),
                        ));
                    }
                }
                args.clear();
                Func::SanityCheck
            }
            _ => return Err((sp(0), format!("unknown function `{name}`"))),
        };
        Ok(f)
    }
}

/// Every function: name, minimum and maximum argument count.
pub(crate) const FUNCS: &[(&str, usize, usize)] = &[
    ("forward", 0, 2),
    ("t_relay", 0, 2),
    ("t_on_failure", 1, 1),
    ("t_set_fr", 1, 2),
    ("t_reply", 2, 2),
    ("t_check_status", 1, 1),
    ("t_on_reply", 1, 1),
    ("t_check_trans", 0, 0),
    ("t_newtran", 0, 0),
    ("t_branch_timeout", 0, 0),
    ("t_branch_replied", 0, 0),
    ("t_on_branch", 1, 1),
    ("append_branch", 0, 1),
    ("t_next_contacts", 0, 0),
    ("sl_send_reply", 2, 2),
    ("send_reply", 2, 2),
    ("sl_reply", 2, 2),
    ("drop", 0, 0),
    ("exit", 0, 0),
    ("route", 1, 1),
    ("record_route", 0, 1),
    ("loose_route", 0, 0),
    ("append_hf", 1, 1),
    ("append_to_reply", 1, 1),
    ("remove_hf", 1, 1),
    ("is_present_hf", 1, 1),
    ("search", 1, 1),
    ("is_method", 1, 1),
    ("has_totag", 0, 0),
    ("has_body", 0, 0),
    ("rewriteuri", 1, 1),
    ("seturi", 1, 1),
    ("rewritehost", 1, 1),
    ("sethost", 1, 1),
    ("rewriteuser", 1, 1),
    ("setuser", 1, 1),
    ("rewritehostport", 1, 1),
    ("sethostport", 1, 1),
    ("rewriteport", 1, 1),
    ("setport", 1, 1),
    ("setflag", 1, 1),
    ("resetflag", 1, 1),
    ("isflag", 1, 1),
    ("setbflag", 1, 2),
    ("resetbflag", 1, 2),
    ("isbflagset", 1, 2),
    ("log", 1, 2),
    ("xlog", 1, 2),
    ("xlogl", 1, 2),
    ("is_peer_verified", 0, 0),
    ("save", 1, 2),
    ("lookup", 1, 2),
    ("dispatch_rpc", 0, 0),
    ("dispatch_rpc_trusted", 0, 0),
    ("www_authorize", 2, 2),
    ("proxy_authorize", 2, 2),
    ("www_challenge", 2, 2),
    ("proxy_challenge", 2, 2),
    ("consume_credentials", 0, 0),
    ("mf_process_maxfwd_header", 1, 1),
    ("sanity_check", 0, 2),
    ("t_is_set", 1, 1),
    ("t_is_canceled", 0, 0),
    ("t_precheck_trans", 0, 0),
    ("sl_reply_error", 0, 0),
    ("force_rport", 0, 0),
    ("set_reply_no_connect", 0, 0),
    ("force_send_socket", 1, 1),
    ("set_send_socket", 1, 1),
    ("isflagset", 1, 1),
    ("xdbg", 1, 1),
    ("xinfo", 1, 1),
    ("xnotice", 1, 1),
    ("xwarn", 1, 1),
    ("xerr", 1, 1),
    ("xbug", 1, 1),
    ("xcrit", 1, 1),
    ("xalert", 1, 1),
];

/// Kamailio's transport numbers; SCTP and WS are accepted as names though siprox does not
/// carry them, so that copied scripts compile.
pub(crate) fn proto_const(s: &str) -> Option<i64> {
    Some(match s.to_ascii_uppercase().as_str() {
        "UDP" => 1,
        "TCP" => 2,
        "TLS" => 3,
        "SCTP" => 4,
        "WS" => 5,
        "WSS" => 6,
        _ => return None,
    })
}

/// Address families as Linux numbers them (what Kamailio's `af` compares with).
pub(crate) fn af_const(s: &str) -> Option<i64> {
    Some(match s.to_ascii_uppercase().as_str() {
        "INET" => 2,
        "INET6" => 10,
        _ => return None,
    })
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Int(i) => format!("`{i}`"),
        Tok::Str(_) => "a string".into(),
        Tok::Pv { name, .. } => format!("`${name}`"),
        Tok::Select(p) => format!("`@{p}`"),
        Tok::Eof => "the end of the script".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBrace => "`{`".into(),
        Tok::RBrace => "`}`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Semi => "`;`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Colon => "`:`".into(),
        Tok::Assign => "`=`".into(),
        Tok::Eq => "`==`".into(),
        Tok::Ne => "`!=`".into(),
        Tok::Match => "`=~`".into(),
        Tok::NotMatch => "`!~`".into(),
        Tok::Lt => "`<`".into(),
        Tok::Gt => "`>`".into(),
        Tok::Le => "`<=`".into(),
        Tok::Ge => "`>=`".into(),
        Tok::And => "`&&`".into(),
        Tok::Or => "`||`".into(),
        Tok::Not => "`!`".into(),
        Tok::Plus => "`+`".into(),
        Tok::Minus => "`-`".into(),
        Tok::Star => "`*`".into(),
        Tok::Slash => "`/`".into(),
        Tok::Percent => "`%`".into(),
    }
}
