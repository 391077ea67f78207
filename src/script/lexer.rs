//! The route-script lexer: bytes to tokens with byte spans. Kamailio's lexical conventions:
//! `#`, `//` and `/* */` comments, double- or single-quoted strings with C escapes,
//! `$name` / `$name(arg)` pseudo-variables, `@a.b[2].c` selects. Never panics; every
//! malformed input is an error with a span.

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
/// silently compiling both branches of an `#!ifdef`.
const DIRECTIVES: &[&str] = &[
    "define",
    "ifdef",
    "ifndef",
    "else",
    "endif",
    "include_file",
    "import_file",
    "subst",
    "substdef",
    "trydef",
    "redefine",
    "defenv",
    "ifexp",
];

/// Tokenize a whole script.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            if b.get(i + 1) == Some(&b'!') {
                let word: String = src[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if DIRECTIVES.iter().any(|d| d.eq_ignore_ascii_case(&word)) {
                    return err(
                        i,
                        i + 2 + word.len(),
                        format!("preprocessor directive `#!{word}` is not supported"),
                    );
                }
            }
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
            Tok::Ident(src[start..i].to_owned())
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
            // $(name) / $(name(arg)): Kamailio's delimited form (no transformations).
            let ns = i + 2;
            let mut e = ns;
            while e < b.len() && is_ident(b[e]) {
                e += 1;
            }
            let name = src[ns..e].to_owned();
            let mut arg = None;
            if b.get(e) == Some(&b'(') {
                match src[e + 1..].find([')', '\n']) {
                    Some(k) if b[e + 1 + k] == b')' => {
                        arg = Some(src[e + 1..e + 1 + k].trim().to_owned());
                        e = e + 1 + k + 1;
                    }
                    _ => return err(start, e + 1, "missing `)` after pseudo-variable argument"),
                }
            }
            if name.is_empty() || b.get(e) != Some(&b')') {
                return err(start, e.min(b.len()).max(start + 2), "expected `$(name)`");
            }
            i = e + 1;
            Tok::Pv { name, arg }
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
            Tok::Pv { name, arg }
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
        out.push(Token {
            tok,
            span: Span::new(start, i),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    Ok(out)
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
                    arg: Some("x".into())
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
