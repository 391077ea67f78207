//! The route-script lexer: bytes to tokens with byte spans. Kamailio's lexical conventions:
//! `#`, `//` and `/* */` comments, double- or single-quoted strings with C escapes,
//! `$name` / `$name(arg)` / `$(name(arg){tr})` pseudo-variables, `@a.b[2].c` selects, and
//! Kamailio's preprocessor (`#!define`, `#!ifdef`, `#!subst`, ...) run in file order as it
//! goes, so every token keeps its place in the original text. Never panics; every malformed
//! input is an error with a span; define expansion is bounded in depth and count.

use super::error::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    Ident(String),
    Int(i64),
    /// A string literal, escapes resolved.
    Str(String),
    /// `$name` or `$name(arg)`.
    Pv {
        name: String,
        arg: Option<String>,
        /// The `{...}{...}` transformations of `$(name{...})`, raw; empty when none.
        tr: String,
    },
    /// The path after `@`.
    Select(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Semi,
    Comma,
    Colon,
    Assign,
    Eq,
    Ne,
    Match,
    NotMatch,
    Lt,
    Gt,
    Le,
    Ge,
    And,
    Or,
    Not,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) span: Span,
}

/// A lexical error.
#[derive(Debug)]
pub(crate) struct LexError {
    pub(crate) span: Span,
    pub(crate) msg: String,
}

fn err<T>(start: usize, end: usize, msg: impl Into<String>) -> Result<T, LexError> {
    Err(LexError {
        span: Span::new(start, end),
        msg: msg.into(),
    })
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Kamailio preprocessor directives that siprox does not implement: refusing them beats
/// silently ignoring what they would have changed.
const UNSUPPORTED: &[&str] = &[
    "include_file",
    "import_file",
    "defenv",
    "defenvs",
    "trydefenv",
    "trydefenvs",
    "defexp",
    "defexps",
    "ifexp",
];

/// The directives the preprocessor runs (`#!NAME` or `!!NAME`).
const SUPPORTED: &[&str] = &[
    "define",
    "def",
    "trydef",
    "trydefine",
    "redefine",
    "redef",
    "ifdef",
    "ifndef",
    "else",
    "endif",
    "subst",
    "substdef",
    "substdefs",
];

/// How deep a define may expand into defines (Kamailio re-lexes a define's value too).
const MAX_DEFINE_DEPTH: usize = 16;
/// How many define substitutions one script may make in all: bounds `A` -> `B B`,
/// `B` -> `C C`, ... blow-ups.
const MAX_EXPANSIONS: usize = 100_000;
/// How deep `#!ifdef` may nest.
const MAX_IFDEF_DEPTH: usize = 64;
/// Largest compiled `#!subst` regex program (bytes).
const SUBST_SIZE_LIMIT: usize = 1 << 20;

/// One `#!subst "/regex/replacement/flags"`, applied to every string literal after it.
struct Subst {
    re: regex::Regex,
    /// The replacement in `regex`'s syntax (`\1` became `${1}`).
    repl: String,
    global: bool,
}

/// An open `#!ifdef`/`#!ifndef`.
struct Cond {
    /// This branch is being compiled (its parents included).
    on: bool,
    /// The enclosing region is being compiled.
    parent_on: bool,
    seen_else: bool,
    span: Span,
}

/// The lexer's preprocessor state: Kamailio's `#!define`s, `#!subst`s and open `#!ifdef`s,
/// applied in file order while tokenizing, so positions stay those of the original text.
#[derive(Default)]
struct Pre {
    defs: std::collections::HashMap<String, String>,
    substs: Vec<Subst>,
    conds: Vec<Cond>,
    expansions: usize,
}

/// Tokenize a whole script, running the preprocessor.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let mut pre = Pre::default();
    let mut out = Vec::with_capacity(src.len() / 4);
    pre.lex_into(src, None, 0, &mut out)?;
    if let Some(c) = pre.conds.last() {
        return err(
            c.span.start,
            c.span.end,
            "`#!ifdef`/`#!ifndef` without `#!endif`",
        );
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    Ok(out)
}

/// The directive word at `i` (just after `#!` or `!!`).
fn directive_word(src: &str, i: usize) -> &str {
    let rest = src.get(i..).unwrap_or("");
    let n = rest
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count();
    &rest[..n]
}

/// The end of the line starting at or after `i` (the offset of its `\n`, or the end).
fn eol(src: &str, i: usize) -> usize {
    src.get(i..)
        .and_then(|r| r.find('\n'))
        .map_or(src.len(), |e| i + e)
}

/// A C identifier, as Kamailio's define names are.
fn is_ident_str(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_ident_start(b[0]) && b.iter().all(|&c| is_ident(c))
}

impl Pre {
    fn on(&self) -> bool {
        self.conds.last().is_none_or(|c| c.on)
    }

    /// Run the directive whose `#!`/`!!` is at `start`; returns where lexing goes on.
    fn directive(&mut self, src: &str, start: usize) -> Result<usize, LexError> {
        let word = directive_word(src, start + 2);
        let wend = start + 2 + word.len();
        let span = Span::new(start, wend);
        let lower = word.to_ascii_lowercase();
        let line_end = eol(src, wend);
        let on = self.on();
        match lower.as_str() {
            "ifdef" | "ifndef" => {
                let name = src[wend..line_end].trim();
                if on && !is_ident_str(name) {
                    return err(start, line_end, format!("`#!{word}` needs a name"));
                }
                if self.conds.len() >= MAX_IFDEF_DEPTH {
                    return err(start, wend, "`#!ifdef` nested too deeply");
                }
                let defined = self.defs.contains_key(name);
                self.conds.push(Cond {
                    on: on && (defined == (lower == "ifdef")),
                    parent_on: on,
                    seen_else: false,
                    span,
                });
                Ok(line_end)
            }
            "else" => match self.conds.last_mut() {
                Some(c) if !c.seen_else => {
                    c.seen_else = true;
                    c.on = c.parent_on && !c.on;
                    Ok(line_end)
                }
                Some(_) => err(start, wend, "second `#!else` for one `#!ifdef`"),
                None => err(start, wend, "`#!else` without `#!ifdef`"),
            },
            "endif" => match self.conds.pop() {
                Some(_) => Ok(line_end),
                None => err(start, wend, "`#!endif` without `#!ifdef`"),
            },
            _ if !on => Ok(line_end),
            "define" | "def" | "trydef" | "trydefine" | "redefine" | "redef" => {
                // The value runs to the end of the line; a `\` before the newline continues it.
                let mut end = wend;
                let mut value = String::new();
                loop {
                    let le = eol(src, end);
                    let line = &src[end..le];
                    match line.trim_end_matches('\r').strip_suffix('\\') {
                        Some(l) if le < src.len() => {
                            value.push_str(l);
                            value.push(' ');
                            end = le + 1;
                        }
                        _ => {
                            value.push_str(line);
                            end = le;
                            break;
                        }
                    }
                }
                let value = value.trim();
                let (name, value) = match value.find(|c: char| c.is_ascii_whitespace()) {
                    Some(k) => (&value[..k], value[k..].trim()),
                    None => (value, ""),
                };
                if !is_ident_str(name) {
                    return err(start, end, format!("`#!{word}` needs a name"));
                }
                let exists = self.defs.contains_key(name);
                match lower.as_str() {
                    "define" | "def" if exists => {
                        return err(
                            start,
                            end,
                            format!("`{name}` is already defined (use `#!redefine` or `#!trydef`)"),
                        )
                    }
                    "trydef" | "trydefine" if exists => {}
                    _ => {
                        self.defs.insert(name.to_owned(), value.to_owned());
                    }
                }
                Ok(end)
            }
            "subst" | "substdef" | "substdefs" => {
                let q = src[wend..line_end]
                    .find(['"', '\''])
                    .map(|k| wend + k)
                    .filter(|&k| src[wend..k].trim().is_empty());
                let Some(q) = q else {
                    return err(
                        start,
                        line_end,
                        format!("`#!{word}` needs \"/regex/replacement/flags\""),
                    );
                };
                let (text, qend) = string(src, q)?;
                let sub_span = (q, qend);
                let (re, repl, flags) = split_subst(&text).ok_or_else(|| LexError {
                    span: Span::new(sub_span.0, sub_span.1),
                    msg: "expected \"/regex/replacement/flags\" (any delimiter)".into(),
                })?;
                let mut global = false;
                let mut icase = false;
                for f in flags.chars() {
                    match f {
                        'g' => global = true,
                        'i' => icase = true,
                        _ => {
                            return err(
                                sub_span.0,
                                sub_span.1,
                                format!("unknown `#!{word}` flag `{f}` (flags: g, i)"),
                            )
                        }
                    }
                }
                let compiled = regex::RegexBuilder::new(&re)
                    .case_insensitive(icase)
                    .size_limit(SUBST_SIZE_LIMIT)
                    .build()
                    .map_err(|e| LexError {
                        span: Span::new(sub_span.0, sub_span.1),
                        msg: format!("bad `#!{word}` regex: {e}"),
                    })?;
                if lower != "subst" && is_ident_str(&re) {
                    let v = if lower == "substdefs" {
                        format!("\"{}\"", repl.replace('\\', "\\\\").replace('"', "\\\""))
                    } else {
                        repl.clone()
                    };
                    self.defs.insert(re.clone(), v);
                }
                self.substs.push(Subst {
                    re: compiled,
                    repl: kamailio_repl(&repl),
                    global,
                });
                if !src[qend..line_end].trim().is_empty() {
                    return err(qend, line_end, "junk after the substitution");
                }
                Ok(line_end)
            }
            _ if UNSUPPORTED.contains(&lower.as_str()) => err(
                start,
                wend,
                format!("preprocessor directive `#!{word}` is not supported"),
            ),
            // `#!KAMAILIO`, `#!SER` and other words: a comment, as in Kamailio.
            _ => Ok(line_end),
        }
    }

    /// Add one token, expanding defines and applying `#!subst` to strings. `at` is the span
    /// every token gets when expanding a define (the name's place in the script).
    fn push(
        &mut self,
        tok: Tok,
        span: Span,
        depth: usize,
        out: &mut Vec<Token>,
    ) -> Result<(), LexError> {
        match tok {
            Tok::Ident(ref name) if self.defs.contains_key(name) => {
                if depth >= MAX_DEFINE_DEPTH {
                    return err(
                        span.start,
                        span.end,
                        format!("define `{name}` expands too deeply (does it name itself?)"),
                    );
                }
                self.expansions += 1;
                if self.expansions > MAX_EXPANSIONS {
                    return err(span.start, span.end, "too many define expansions");
                }
                let value = self.defs.get(name).cloned().unwrap_or_default();
                self.lex_into(&value, Some(span), depth + 1, out)
            }
            Tok::Str(s) if !self.substs.is_empty() => {
                let mut s = s;
                for sub in &self.substs {
                    let r = if sub.global {
                        sub.re.replace_all(&s, sub.repl.as_str())
                    } else {
                        sub.re.replace(&s, sub.repl.as_str())
                    };
                    if let std::borrow::Cow::Owned(n) = r {
                        s = n;
                    }
                }
                out.push(Token {
                    tok: Tok::Str(s),
                    span,
                });
                Ok(())
            }
            tok => {
                out.push(Token { tok, span });
                Ok(())
            }
        }
    }

    /// Tokenize `src` into `out`. `at` is `Some` for a define's value: every token (and
    /// every error) then takes the span where the define was used, and `#` only comments.
    fn lex_into(
        &mut self,
        src: &str,
        at: Option<Span>,
        depth: usize,
        out: &mut Vec<Token>,
    ) -> Result<(), LexError> {
        self.lex_raw(src, at, depth, out).map_err(|e| match at {
            Some(span) => LexError { span, msg: e.msg },
            None => e,
        })
    }

    fn lex_raw(
        &mut self,
        src: &str,
        at: Option<Span>,
        depth: usize,
        out: &mut Vec<Token>,
    ) -> Result<(), LexError> {
        let place = |s: usize, e: usize| at.unwrap_or(Span::new(s, e));
        let b = src.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if at.is_none() && !self.on() {
                // Inside a false `#!ifdef` branch: only directives count, line by line.
                let le = eol(src, i);
                let t = src[i..le].trim_start();
                if t.starts_with("#!") || t.starts_with("!!") {
                    i = self.directive(src, le - t.len())?;
                } else {
                    i = le + 1;
                }
                continue;
            }
            let c = b[i];
            let start = i;
            if c.is_ascii_whitespace() {
                i += 1;
                continue;
            }
            if at.is_none()
                && (c == b'#' || c == b'!')
                && b.get(i + 1) == Some(&b'!')
                && (c == b'#' || {
                    let w = directive_word(src, i + 2).to_ascii_lowercase();
                    SUPPORTED.contains(&w.as_str()) || UNSUPPORTED.contains(&w.as_str())
                })
            {
                i = self.directive(src, i)?;
                continue;
            }
            if c == b'#' {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'/') {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'*') {
                match src[i + 2..].find("*/") {
                    Some(e) => {
                        i += 2 + e + 2;
                        continue;
                    }
                    None => return err(i, i + 2, "unterminated comment"),
                }
            }
            let tok = if is_ident_start(c) {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                // Kamailio's bare `force_send_socket(udp:10.0.0.1:5060)`: the argument up
                // to `)` on the line is one string.
                if let Some((arg, open, close)) = (&src[start..i] == "force_send_socket")
                    .then(|| bare_arg(src, i))
                    .flatten()
                {
                    let name = Tok::Ident(src[start..i].to_owned());
                    self.push(name, place(start, i), depth, out)?;
                    self.push(Tok::LParen, place(open, open + 1), depth, out)?;
                    self.push(Tok::Str(arg), place(open + 1, close), depth, out)?;
                    i = close + 1;
                    Tok::RParen
                } else {
                    Tok::Ident(src[start..i].to_owned())
                }
            } else if c.is_ascii_digit() {
                let (v, n) = if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
                    let s = i + 2;
                    let mut e = s;
                    while e < b.len() && b[e].is_ascii_hexdigit() {
                        e += 1;
                    }
                    (i64::from_str_radix(&src[s..e], 16).ok(), e)
                } else {
                    let mut e = i;
                    while e < b.len() && b[e].is_ascii_digit() {
                        e += 1;
                    }
                    (src[i..e].parse::<i64>().ok(), e)
                };
                i = n;
                if i < b.len() && is_ident(b[i]) {
                    return err(start, i + 1, "bad number");
                }
                match v {
                    Some(v) => Tok::Int(v),
                    None => return err(start, i, "number out of range"),
                }
            } else if c == b'"' || c == b'\'' {
                let (s, n) = string(src, i)?;
                i = n;
                Tok::Str(s)
            } else if c == b'$' && b.get(i + 1) == Some(&b'(') {
                // $(name) / $(name(arg)), with optional {transformations}: Kamailio's
                // delimited form.
                match super::pv::delimited(&src[i + 2..]) {
                    Ok((name, arg, tr, n)) => {
                        i += 2 + n;
                        Tok::Pv {
                            name: name.to_owned(),
                            arg: arg.map(str::to_owned),
                            tr: tr.to_owned(),
                        }
                    }
                    Err(e) => return err(start, eol(src, start).max(start + 2), e),
                }
            } else if c == b'$' {
                i += 1;
                let ns = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                if ns == i {
                    return err(start, i + 1, "expected a pseudo-variable name after `$`");
                }
                let name = src[ns..i].to_owned();
                let mut arg = None;
                if b.get(i) == Some(&b'(') {
                    let a = i + 1;
                    match src[a..].find([')', '\n']) {
                        Some(e) if b[a + e] == b')' => {
                            arg = Some(src[a..a + e].trim().to_owned());
                            i = a + e + 1;
                        }
                        _ => return err(start, a, "missing `)` after pseudo-variable argument"),
                    }
                }
                Tok::Pv {
                    name,
                    arg,
                    tr: String::new(),
                }
            } else if c == b'@' {
                i += 1;
                let ps = i;
                // name ('[' ... ']')* ('.' name ...)*; the select module validates it.
                loop {
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                    while i < b.len() && b[i] == b'[' {
                        match src[i..].find([']', '\n']) {
                            Some(e) if b[i + e] == b']' => i += e + 1,
                            _ => return err(i, i + 1, "missing `]` in select"),
                        }
                    }
                    if i + 1 < b.len() && b[i] == b'.' && is_ident(b[i + 1]) {
                        i += 1;
                        continue;
                    }
                    break;
                }
                if ps == i {
                    return err(start, i + 1, "expected a select after `@`");
                }
                Tok::Select(src[ps..i].to_owned())
            } else {
                let two = b.get(i + 1).copied();
                let (t, n) = match (c, two) {
                    (b'=', Some(b'=')) => (Tok::Eq, 2),
                    (b'!', Some(b'=')) => (Tok::Ne, 2),
                    (b'=', Some(b'~')) => (Tok::Match, 2),
                    (b'!', Some(b'~')) => (Tok::NotMatch, 2),
                    (b'<', Some(b'=')) => (Tok::Le, 2),
                    (b'>', Some(b'=')) => (Tok::Ge, 2),
                    (b'&', Some(b'&')) => (Tok::And, 2),
                    (b'|', Some(b'|')) => (Tok::Or, 2),
                    (b'=', _) => (Tok::Assign, 1),
                    (b'!', _) => (Tok::Not, 1),
                    (b'<', _) => (Tok::Lt, 1),
                    (b'>', _) => (Tok::Gt, 1),
                    (b'(', _) => (Tok::LParen, 1),
                    (b')', _) => (Tok::RParen, 1),
                    (b'{', _) => (Tok::LBrace, 1),
                    (b'}', _) => (Tok::RBrace, 1),
                    (b'[', _) => (Tok::LBracket, 1),
                    (b']', _) => (Tok::RBracket, 1),
                    (b';', _) => (Tok::Semi, 1),
                    (b',', _) => (Tok::Comma, 1),
                    (b':', _) => (Tok::Colon, 1),
                    (b'+', _) => (Tok::Plus, 1),
                    (b'-', _) => (Tok::Minus, 1),
                    (b'*', _) => (Tok::Star, 1),
                    (b'/', _) => (Tok::Slash, 1),
                    (b'%', _) => (Tok::Percent, 1),
                    _ => {
                        let ch = src[i..].chars().next().unwrap_or('?');
                        return err(i, i + ch.len_utf8(), format!("unexpected character `{ch}`"));
                    }
                };
                i += n;
                t
            };
            self.push(tok, place(start, i), depth, out)?;
        }
        Ok(())
    }
}

/// After a function name at `i`: `(`, then an argument that is not a string, a number or
/// a pseudo-variable, up to `)` on the same line. Returns it (trimmed) and the offsets of
/// `(` and `)`.
fn bare_arg(src: &str, i: usize) -> Option<(String, usize, usize)> {
    let b = src.as_bytes();
    let mut j = i;
    while b.get(j).is_some_and(|c| *c == b' ' || *c == b'\t') {
        j += 1;
    }
    if b.get(j) != Some(&b'(') {
        return None;
    }
    let rest = &src[j + 1..eol(src, j)];
    let arg = rest[..rest.find(')')?].trim();
    let first = arg.bytes().next()?;
    if matches!(first, b'"' | b'\'' | b'$') || first.is_ascii_digit() && !arg.contains(':') {
        return None;
    }
    let close = j + 1 + rest.find(')')?;
    Some((arg.to_owned(), j, close))
}

/// Split Kamailio's `/regex/replacement/flags` (any delimiter; `\\` before the delimiter
/// escapes it).
fn split_subst(s: &str) -> Option<(String, String, String)> {
    let mut it = s.chars();
    let d = it.next()?;
    if d.is_alphanumeric() || d == '\\' {
        return None;
    }
    let mut parts = vec![String::new()];
    let mut chars = it.peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&d) {
            parts.last_mut()?.push(d);
            chars.next();
        } else if c == d {
            parts.push(String::new());
        } else {
            parts.last_mut()?.push(c);
        }
    }
    if parts.len() != 3 {
        return None;
    }
    let flags = parts.pop()?;
    let repl = parts.pop()?;
    let re = parts.pop()?;
    Some((re, repl, flags))
}

/// Kamailio's replacement (`\\1` back-references) in `regex`'s syntax.
fn kamailio_repl(r: &str) -> String {
    let mut out = String::with_capacity(r.len());
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(n) if n.is_ascii_digit() => {
                    out.push_str(&format!("${{{n}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// A quoted string starting at `start`; returns the unescaped text and the end offset.
fn string(src: &str, start: usize) -> Result<(String, usize), LexError> {
    let b = src.as_bytes();
    let q = b[start];
    let mut out = String::new();
    let mut i = start + 1;
    let mut run = i;
    while i < b.len() {
        let c = b[i];
        if c == q {
            out.push_str(&src[run..i]);
            return Ok((out, i + 1));
        }
        if c == b'\\' {
            out.push_str(&src[run..i]);
            let e = match b.get(i + 1) {
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'\\') => '\\',
                Some(b'"') => '"',
                Some(b'\'') => '\'',
                Some(b'0') => '\0',
                None => return err(start, start + 1, "unterminated string"),
                // Any other escape stays as written, so regexes read naturally: "a\.b".
                Some(_) => {
                    out.push('\\');
                    i += 1;
                    run = i;
                    continue;
                }
            };
            out.push(e);
            i += 2;
            run = i;
            continue;
        }
        i += 1;
    }
    err(start, start + 1, "unterminated string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basics() {
        assert_eq!(
            toks(r#"if ($var(x) =~ "a\r\n") # c"#),
            vec![
                Tok::Ident("if".into()),
                Tok::LParen,
                Tok::Pv {
                    name: "var".into(),
                    arg: Some("x".into()),
                    tr: String::new(),
                },
                Tok::Match,
                Tok::Str("a\r\n".into()),
                Tok::RParen,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("@contact[2].uri.params.transport != 'x' // c\n/* b */ 0x1f"),
            vec![
                Tok::Select("contact[2].uri.params.transport".into()),
                Tok::Ne,
                Tok::Str("x".into()),
                Tok::Int(31),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks(r#"@hf_value["X-Foo"] msg:len"#),
            vec![
                Tok::Select(r#"hf_value["X-Foo"]"#.into()),
                Tok::Ident("msg".into()),
                Tok::Colon,
                Tok::Ident("len".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn errors() {
        assert!(lex("\"abc").is_err());
        assert!(lex("/* x").is_err());
        assert!(lex("$").is_err());
        assert!(lex("$var(x").is_err());
        assert!(lex("12abc").is_err());
        assert!(lex("99999999999999999999").is_err());
        assert!(lex("`").is_err());
        assert!(lex("#!ifdef X").is_err());
        assert!(lex("#!KAMAILIO\n").is_ok());
        assert_eq!(toks(r#""a\.b""#), vec![Tok::Str(r"a\.b".into()), Tok::Eof]);
    }
}
