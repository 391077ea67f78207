//! Kamailio transformations: `$(fu{uri.user}{s.tolower})`. Parsed once at compile time
//! (unknown names and bad parameters are compile errors), applied left to right at run time.
//! Where Kamailio's result is null (bad input, out of range, not found), so is siprox's,
//! and the rest of the chain is skipped, as Kamailio stops at null. Never
//! panics: every offset is checked and strings are cut on bytes, then made valid UTF-8.

use std::borrow::Cow;

use crate::select::Value;
use crate::sip::{Host, Uri};

/// One transformation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tr {
    /// `{s.len}`: the length in bytes, an integer.
    SLen,
    /// `{s.tolower}` / `{s.toupper}`: ASCII letters only.
    SLower,
    SUpper,
    /// `{s.substr,offset,length}`.
    SSubstr(i64, i64),
    /// `{s.select,index,separator}`.
    SSelect(i64, char),
    /// `{s.strip,n}` / `{s.striptail,n}`.
    SStrip(i64),
    SStripTail(i64),
    /// `{s.trim}`: surrounding blanks (space, tab, CR, LF) removed.
    STrim,
    /// `{s.int}`: the value as a decimal integer (null when it is not one).
    SInt,
    /// `{uri.user}`, `{uri.host}`, `{uri.port}`.
    UriUser,
    UriHost,
    UriPort,
    /// `{uri.param,name}`.
    UriParam(String),
    /// `{param.value,name[,separator]}`.
    ParamValue(String, char),
    /// `{nameaddr.uri}`, `{nameaddr.name}`.
    NaUri,
    NaName,
}

/// The names siprox knows, for error messages.
const KNOWN: &str = "s.len, s.tolower, s.toupper, s.substr, s.select, s.strip, s.striptail, \
s.trim, s.int, uri.user, uri.host, uri.port, uri.param, param.value, nameaddr.uri, nameaddr.name";

/// Parse `{a}{b,p1,p2}...` (the text between a pseudo-variable and the closing `)`).
pub(crate) fn parse(text: &str) -> Result<Vec<Tr>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('{') else {
            return Err(format!("expected `{{` at `{rest}`"));
        };
        let Some(close) = inner.find('}') else {
            return Err("missing `}` after transformation".into());
        };
        out.push(one(&inner[..close])?);
        rest = &inner[close + 1..];
    }
    Ok(out)
}

fn int_param(name: &str, p: Option<&&str>) -> Result<i64, String> {
    let p = p.map(|p| p.trim()).unwrap_or("");
    if p.starts_with('$') {
        return Err(format!(
            "`{{{name}}}`: a parameter must be a literal here, not a pseudo-variable"
        ));
    }
    p.parse::<i64>()
        .map_err(|_| format!("`{{{name}}}` needs an integer parameter, got `{p}`"))
}

fn str_param(name: &str, p: Option<&&str>) -> Result<String, String> {
    let p = p.map(|p| p.trim()).unwrap_or("");
    if p.starts_with('$') {
        return Err(format!(
            "`{{{name}}}`: a parameter must be a literal here, not a pseudo-variable"
        ));
    }
    if p.is_empty() {
        return Err(format!("`{{{name}}}` needs a name parameter"));
    }
    Ok(p.to_owned())
}

fn char_param(name: &str, p: Option<&&str>) -> Result<char, String> {
    // Not trimmed: a blank is a valid separator.
    let p = p.copied().unwrap_or("");
    let mut cs = p.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(format!(
            "`{{{name}}}` needs a one-character separator, got `{p}`"
        )),
    }
}

fn one(t: &str) -> Result<Tr, String> {
    let name = t.split(',').next().unwrap_or("").trim();
    // A separator parameter is one character and may itself be `,` (`{s.select,1,,}`), so
    // the last parameter of those is the rest of the text.
    let max = match name {
        "s.select" | "param.value" => 3,
        _ => usize::MAX,
    };
    let params: Vec<&str> = t.splitn(max, ',').skip(1).collect();
    let want = |n: usize| -> Result<(), String> {
        if params.len() == n {
            Ok(())
        } else {
            Err(format!(
                "`{{{name}}}` takes {n} parameter{}, got {}",
                if n == 1 { "" } else { "s" },
                params.len()
            ))
        }
    };
    let tr = match name {
        "s.len" => want(0).map(|_| Tr::SLen)?,
        "s.tolower" => want(0).map(|_| Tr::SLower)?,
        "s.toupper" => want(0).map(|_| Tr::SUpper)?,
        "s.trim" => want(0).map(|_| Tr::STrim)?,
        "s.int" => want(0).map(|_| Tr::SInt)?,
        "s.substr" => {
            want(2)?;
            let len = int_param(name, params.get(1))?;
            if len < 0 {
                // Kamailio 5.6 refuses it at load too ("substr negative offset").
                return Err(format!("`{{{name}}}`: the length must not be negative"));
            }
            Tr::SSubstr(int_param(name, params.first())?, len)
        }
        "s.select" => {
            want(2)?;
            Tr::SSelect(
                int_param(name, params.first())?,
                char_param(name, params.get(1))?,
            )
        }
        "s.strip" => {
            want(1)?;
            Tr::SStrip(int_param(name, params.first())?)
        }
        "s.striptail" => {
            want(1)?;
            Tr::SStripTail(int_param(name, params.first())?)
        }
        "uri.user" => want(0).map(|_| Tr::UriUser)?,
        "uri.host" => want(0).map(|_| Tr::UriHost)?,
        "uri.port" => want(0).map(|_| Tr::UriPort)?,
        "uri.param" => {
            want(1)?;
            Tr::UriParam(str_param(name, params.first())?)
        }
        "param.value" => {
            if params.len() == 2 {
                Tr::ParamValue(
                    str_param(name, params.first())?,
                    char_param(name, params.get(1))?,
                )
            } else {
                want(1)?;
                Tr::ParamValue(str_param(name, params.first())?, ';')
            }
        }
        "nameaddr.uri" => want(0).map(|_| Tr::NaUri)?,
        "nameaddr.name" => want(0).map(|_| Tr::NaName)?,
        _ => {
            return Err(format!(
                "unknown transformation `{{{name}}}` (known: {KNOWN})"
            ))
        }
    };
    Ok(tr)
}

/// Apply a chain. A null value stays null, and a step whose Kamailio result is null ends
/// the chain with null (which a template prints as `""`, as Kamailio does).
pub(crate) fn apply(v: Value<'_>, trs: &[Tr]) -> Value<'static> {
    let mut v = match v {
        Value::Int(i) => Value::Int(i),
        Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
        Value::Null => return Value::Null,
    };
    for t in trs {
        match step(&v, t) {
            Some(n) => v = n,
            None => return Value::Null,
        }
    }
    v
}

/// Bytes `[from, from + len)` of `s` as a string (a cut inside a character is replaced).
fn cut(s: &str, from: usize, len: usize) -> String {
    let b = s.as_bytes();
    let end = from.saturating_add(len).min(b.len());
    let from = from.min(end);
    String::from_utf8_lossy(&b[from..end]).into_owned()
}

fn owned(s: impl Into<String>) -> Option<Value<'static>> {
    Some(Value::Str(Cow::Owned(s.into())))
}

fn step(v: &Value<'_>, t: &Tr) -> Option<Value<'static>> {
    let s = v.as_str();
    let len = s.len() as i64;
    match t {
        Tr::SLen => Some(Value::Int(len)),
        Tr::SLower => owned(s.to_ascii_lowercase()),
        Tr::SUpper => owned(s.to_ascii_uppercase()),
        Tr::STrim => owned(s.trim_matches([' ', '\t', '\r', '\n'])),
        // Kamailio's str2sint: an optional sign and digits, nothing else.
        Tr::SInt => s.parse::<i64>().ok().map(Value::Int),
        Tr::SSubstr(o, l) => {
            // Kamailio: a negative offset counts from the end; length 0 (or past the end)
            // means to the end; an offset out of range is null.
            let mut i = *o;
            if i < 0 {
                if i.checked_neg()? > len {
                    return None;
                }
                i += len;
            }
            if i >= len {
                return None;
            }
            let mut j = *l;
            if j < 1 {
                j = len.checked_add(j)?.checked_sub(i)?;
                if j < 0 {
                    return None;
                }
            }
            if i.checked_add(j)? > len {
                j = len - i;
            }
            owned(cut(&s, i as usize, j as usize))
        }
        Tr::SSelect(idx, sep) => {
            let mut parts = s.split(*sep);
            let part = if *idx >= 0 {
                parts.nth(usize::try_from(*idx).ok()?)
            } else {
                parts
                    .rev()
                    .nth(usize::try_from(idx.checked_neg()? - 1).ok()?)
            };
            // No such field: "", as in Kamailio.
            owned(part.unwrap_or(""))
        }
        Tr::SStrip(n) | Tr::SStripTail(n) => {
            let n = *n;
            if n <= 0 {
                return owned(s);
            }
            if n >= len {
                return owned("");
            }
            let n = n as usize;
            if matches!(t, Tr::SStrip(_)) {
                owned(cut(&s, n, s.len() - n))
            } else {
                owned(cut(&s, 0, s.len() - n))
            }
        }
        Tr::UriUser | Tr::UriHost | Tr::UriPort | Tr::UriParam(_) => {
            let uri = Uri::parse(s.trim()).ok()?;
            match (t, &uri) {
                // Kamailio's phone2tel: with `user=phone`, the user ends at its first `;`.
                (Tr::UriUser, Uri::Sip(u)) => {
                    // No user: "" (Kamailio's result is an empty string, not null).
                    let Some(user) = u.user.filter(|u| !u.is_empty()) else {
                        return owned("");
                    };
                    let phone = u
                        .params
                        .get("user")
                        .flatten()
                        .is_some_and(|v| v.eq_ignore_ascii_case("phone"));
                    owned(if phone {
                        user.split(';').next().unwrap_or(user)
                    } else {
                        user
                    })
                }
                (Tr::UriUser, Uri::Tel(t)) => owned(t.number),
                (Tr::UriHost, Uri::Sip(u)) => owned(match u.host {
                    Host::Name(n) => n.to_owned(),
                    h => h.to_string(),
                }),
                // No port: "" (Kamailio's is "" as a string and 0 as an integer).
                (Tr::UriPort, Uri::Sip(u)) => match u.port {
                    Some(p) => Some(Value::Int(i64::from(p))),
                    None => owned(""),
                },
                (Tr::UriParam(name), Uri::Sip(u)) => {
                    owned(u.params.get(name).flatten().unwrap_or(""))
                }
                (Tr::UriParam(_) | Tr::UriPort, Uri::Tel(_)) => owned(""),
                _ => None,
            }
        }
        // Not there: "", as in Kamailio.
        Tr::ParamValue(name, ';') => owned(param_list_value(&s, name).unwrap_or("")),
        Tr::ParamValue(name, sep) => {
            let body = s.trim().trim_start_matches(*sep);
            body.split(*sep)
                .map(|p| match p.split_once('=') {
                    Some((n, v)) => (n.trim(), v.trim()),
                    None => (p.trim(), ""),
                })
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map_or_else(|| owned(""), |(_, v)| owned(v))
        }
        Tr::NaUri | Tr::NaName => {
            let (name, uri) = name_addr(&s)?;
            owned(if matches!(t, Tr::NaUri) { uri } else { name })
        }
    }
}

/// `{param.value,name}` as Kamailio's parse_params reads a `;` list: `name[=value]` items
/// (a leading `;` allowed), a quoted value without its quotes (a `,` or `;` inside kept),
/// the list ending at a `,` outside quotes; an item that is not a parameter (`x y`) makes
/// the whole list unreadable (None, as a name that is not there).
fn param_list_value<'s>(s: &'s str, name: &str) -> Option<&'s str> {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1;
        }
    };
    ws(&mut i);
    if b.get(i) == Some(&b';') {
        i += 1;
    }
    loop {
        ws(&mut i);
        if i >= b.len() || b[i] == b',' {
            return None;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b'=' | b';' | b',' | b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        let n = &s[start..i];
        if n.is_empty() {
            return None;
        }
        ws(&mut i);
        let mut value = "";
        if b.get(i) == Some(&b'=') {
            i += 1;
            ws(&mut i);
            if b.get(i) == Some(&b'"') {
                let vstart = i + 1;
                let mut j = vstart;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                if j >= b.len() {
                    return None;
                }
                value = &s[vstart..j];
                i = j + 1;
            } else {
                let vstart = i;
                while i < b.len() && !matches!(b[i], b';' | b',' | b' ' | b'\t' | b'\r' | b'\n') {
                    i += 1;
                }
                value = &s[vstart..i];
            }
            ws(&mut i);
        }
        match b.get(i) {
            None | Some(b',') | Some(b';') => {}
            Some(_) => return None,
        }
        if n.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        match b.get(i) {
            Some(b';') => i += 1,
            _ => return None,
        }
    }
}

/// Kamailio's name-addr split: with `<...>` (outside quotes), the text before it (quotes
/// and blanks kept) and the URI inside; without, no name and the whole value as the URI.
fn name_addr(s: &str) -> Option<(&str, &str)> {
    // A `<` inside a quoted display name does not count.
    let mut quoted = false;
    let mut escaped = false;
    let mut lt = None;
    for (k, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                lt = Some(k);
                break;
            }
            _ => {}
        }
    }
    match lt {
        None => Some(("", s)),
        Some(k) => {
            let gt = s[k..].find('>')? + k;
            Some((&s[..k], &s[k + 1..gt]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: &str, t: &str) -> Value<'static> {
        apply(Value::str(v), &parse(t).expect(t))
    }

    /// Kamailio 5.6.3's answers for the same values (its parse_params).
    #[test]
    fn param_value_reads_the_list_as_kamailio() {
        let s = |x: &str| Value::from(x.to_owned());
        assert_eq!(run("x, y;a=2", "{param.value,a}"), s(""));
        assert_eq!(run("a=1, b=2", "{param.value,b}"), s(""));
        assert_eq!(run("a=1, b=2", "{param.value,a}"), s("1"));
        assert_eq!(run("a=1;b=2", "{param.value,b}"), s("2"));
        assert_eq!(run(";a=1;b=2", "{param.value,b}"), s("2"));
        assert_eq!(run("val;a=1;b=two", "{param.value,b}"), s("two"));
        assert_eq!(run("val;a=1;b=two", "{param.value,val}"), s(""));
        assert_eq!(run("x y;a=2", "{param.value,a}"), s(""));
        assert_eq!(run("a=\"q,r\";b=2", "{param.value,b}"), s("2"));
        assert_eq!(run("a=\"q,r\";b=2", "{param.value,a}"), s("q,r"));
        assert_eq!(run("A = 1 ; B=2", "{param.value,b}"), s("2"));
        assert_eq!(run("a=\"open", "{param.value,a}"), s(""));
        assert_eq!(run("a=1|b=2", "{param.value,b,|}"), s("2"));
        assert_eq!(
            run("sip:+1-555;ext=7@h;user=phone", "{uri.user}"),
            s("+1-555")
        );
        assert_eq!(run("sip:a;b@h", "{uri.user}"), s("a;b"));
    }

    #[test]
    fn kamailio_semantics() {
        let s = |x: &str| Value::from(x.to_owned());
        assert_eq!(run("abcdef", "{s.substr,1,2}"), s("bc"));
        assert_eq!(run("abcdef", "{s.substr,-2,0}"), s("ef"));
        assert_eq!(run("abcdef", "{s.substr,4,10}"), s("ef"));
        assert_eq!(run("abcdef", "{s.substr,6,1}"), Value::Null);
        assert_eq!(run("abcdef", "{s.substr,-7,1}"), Value::Null);
        assert_eq!(run("a,b,c", "{s.select,1,,}"), s("b"));
        assert_eq!(run("a,b,c", "{s.select,-1,,}"), s("c"));
        assert_eq!(run("a,b,c", "{s.select,3,,}"), s(""));
        assert_eq!(run("abc", "{s.strip,1}"), s("bc"));
        assert_eq!(run("abc", "{s.striptail,1}"), s("ab"));
        assert_eq!(run("abc", "{s.strip,9}"), s(""));
        assert_eq!(run("abc", "{s.strip,-1}"), s("abc"));
        assert_eq!(run("é", "{s.substr,1,1}"), s("\u{fffd}"));
        assert_eq!(run("-12", "{s.int}"), Value::Int(-12));
        assert_eq!(run(" 12", "{s.int}"), Value::Null);
        assert_eq!(run("12ab", "{s.int}"), Value::Null);
        assert!(parse("{s.substr,2,-1}").is_err());
        assert_eq!(run("<sip:a@b>", "{nameaddr.uri}"), s("sip:a@b"));
        assert_eq!(
            run("\"A <x>\" <sip:a@b>", "{nameaddr.name}"),
            s("\"A <x>\" ")
        );
        assert_eq!(run("\"A <sip:a@b>", "{nameaddr.uri}"), s("\"A <sip:a@b>"));
        assert_eq!(run("sip:a@b;tag=1", "{nameaddr.uri}"), s("sip:a@b;tag=1"));
        assert_eq!(run("<sip:a@b", "{nameaddr.uri}"), Value::Null);
        assert!(parse("{s.nope}").is_err());
        assert!(parse("{s.substr,1}").is_err());
        assert!(parse("{s.substr,$var(x),1}").is_err());
        assert!(parse("{s.select,1,ab}").is_err());
        assert!(parse("{s.len").is_err());
        assert!(parse("x").is_err());
    }
}
