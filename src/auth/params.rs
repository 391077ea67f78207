//! The `Authorization` / `Proxy-Authorization` value parser (RFC 3261 §25.1 `credentials`,
//! RFC 7235 §2.1): a scheme, then comma-separated `name=value` pairs whose values are
//! tokens or quoted strings with `\` escapes. Names are case-insensitive, duplicates are
//! rejected, and the parser never panics or allocates beyond the unescaped values.

use std::borrow::Cow;

use super::digest::Algorithm;

/// At most this many parameters: a real header has about ten.
const MAX_PARAMS: usize = 32;

/// Why a credentials value was refused (the text is fit for a 400 reason phrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("missing auth scheme")]
    NoScheme,
    #[error("bad auth parameter name")]
    BadName,
    #[error("missing '=' in auth parameter")]
    NoEquals,
    #[error("bad auth parameter value")]
    BadValue,
    #[error("unterminated quoted string in credentials")]
    Unterminated,
    #[error("junk after auth parameter")]
    Junk,
    #[error("duplicate auth parameter")]
    Duplicate,
    #[error("too many auth parameters")]
    TooMany,
    #[error("no auth parameters")]
    Empty,
}

/// A parsed challenge or credentials value: the scheme and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams<'a> {
    pub scheme: &'a str,
    params: Vec<(&'a str, Cow<'a, str>)>,
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

impl<'a> AuthParams<'a> {
    /// Parse `scheme param=value, param="quoted", ...`.
    pub fn parse(v: &'a str) -> Result<AuthParams<'a>, ParamError> {
        let b = v.as_bytes();
        let mut i = 0;
        let skip_lws = |i: &mut usize| {
            while *i < b.len() && is_lws(b[*i]) {
                *i += 1;
            }
        };
        skip_lws(&mut i);
        let s0 = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == s0 {
            return Err(ParamError::NoScheme);
        }
        let scheme = &v[s0..i];
        if i < b.len() && !is_lws(b[i]) {
            return Err(ParamError::NoScheme);
        }
        let mut params: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
        loop {
            // Empty list elements (`a=1,,b=2`) are allowed (RFC 7230 §7).
            while i < b.len() && (is_lws(b[i]) || b[i] == b',') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let n0 = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if i == n0 {
                return Err(ParamError::BadName);
            }
            let name = &v[n0..i];
            skip_lws(&mut i);
            if b.get(i) != Some(&b'=') {
                return Err(ParamError::NoEquals);
            }
            i += 1;
            skip_lws(&mut i);
            let value = if b.get(i) == Some(&b'"') {
                let (val, next) = quoted(v, i)?;
                i = next;
                val
            } else {
                // RFC says token; be lenient with what some UAs send unquoted (a URI),
                // but never take a quote, comma, space or control byte.
                let s = i;
                while i < b.len() && b[i] > b' ' && b[i] != 0x7f && !matches!(b[i], b',' | b'"') {
                    i += 1;
                }
                if i == s {
                    return Err(ParamError::BadValue);
                }
                Cow::Borrowed(&v[s..i])
            };
            skip_lws(&mut i);
            if i < b.len() && b[i] != b',' {
                return Err(ParamError::Junk);
            }
            if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return Err(ParamError::Duplicate);
            }
            if params.len() == MAX_PARAMS {
                return Err(ParamError::TooMany);
            }
            params.push((name, value));
        }
        if params.is_empty() {
            return Err(ParamError::Empty);
        }
        Ok(AuthParams { scheme, params })
    }

    /// The value of parameter `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }

    /// Every parameter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.params.iter().map(|(n, v)| (*n, &**v))
    }
}

/// A quoted string starting at `start` (the opening quote): its unescaped content and the
/// index after the closing quote. A line fold inside (CRLF + SP/HT) counts as one space;
/// a bare CR or LF is refused.
fn quoted(v: &str, start: usize) -> Result<(Cow<'_, str>, usize), ParamError> {
    let b = v.as_bytes();
    let mut i = start + 1;
    let mut owned: Option<String> = None;
    let mut seg = i;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let val = match owned {
                    Some(mut o) => {
                        o.push_str(&v[seg..i]);
                        Cow::Owned(o)
                    }
                    None => Cow::Borrowed(&v[seg..i]),
                };
                return Ok((val, i + 1));
            }
            b'\\' => {
                let o = owned.get_or_insert_with(String::new);
                o.push_str(&v[seg..i]);
                // quoted-pair: any char but CR and LF; it may be multi-byte UTF-8.
                let c = v[i + 1..].chars().next().ok_or(ParamError::Unterminated)?;
                if c == '\r' || c == '\n' {
                    return Err(ParamError::BadValue);
                }
                o.push(c);
                i += 1 + c.len_utf8();
                seg = i;
            }
            b'\r' | b'\n' => {
                let mut j = i;
                while j < b.len() && matches!(b[j], b'\r' | b'\n') {
                    j += 1;
                }
                if j < b.len() && matches!(b[j], b' ' | b'\t') {
                    let o = owned.get_or_insert_with(String::new);
                    o.push_str(&v[seg..i]);
                    o.push(' ');
                    while j < b.len() && matches!(b[j], b' ' | b'\t') {
                        j += 1;
                    }
                    i = j;
                    seg = i;
                } else {
                    return Err(ParamError::BadValue);
                }
            }
            0..=8 | 0x0b..=0x1f | 0x7f => return Err(ParamError::BadValue),
            _ => i += 1,
        }
    }
    Err(ParamError::Unterminated)
}

/// Digest credentials (RFC 3261 §22.4, RFC 7616 §3.4), checked for shape: the fields that
/// must be there are, `nc` is 8 hex digits, `qop` is `auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    /// `qop=auth` was given (the only quality of protection siprox offers).
    pub qop_auth: bool,
    /// The nonce count as sent (hashed as text) and its value.
    pub nc: Option<(String, u32)>,
    pub opaque: Option<String>,
    raw: AuthParams<'a>,
}

/// Why credentials are not usable: a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Syntax(#[from] ParamError),
    #[error("credentials without {0}")]
    Missing(&'static str),
    #[error("unsupported digest algorithm")]
    Algorithm,
    #[error("unsupported qop")]
    Qop,
    #[error("bad nonce count")]
    Nc,
    #[error("qop=auth without cnonce")]
    Cnonce,
    #[error("userhash is not supported")]
    Userhash,
    #[error("malformed digest response")]
    Response,
}

impl<'a> Credentials<'a> {
    /// Parse one header value. `Ok(None)` when the scheme is not Digest (e.g. Basic).
    pub fn parse(v: &'a str) -> Result<Option<Credentials<'a>>, CredentialsError> {
        let p = AuthParams::parse(v)?;
        if !p.scheme.eq_ignore_ascii_case("Digest") {
            return Ok(None);
        }
        let req = |n: &'static str| {
            p.get(n)
                .map(str::to_owned)
                .ok_or(CredentialsError::Missing(n))
        };
        let username = req("username")?;
        let realm = req("realm")?;
        let nonce = req("nonce")?;
        let uri = req("uri")?;
        let response = req("response")?;
        let algorithm = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or(CredentialsError::Algorithm)?,
        };
        if response.len() != algorithm.hash().hex_len()
            || !response.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(CredentialsError::Response);
        }
        if p.get("userhash")
            .is_some_and(|u| u.eq_ignore_ascii_case("true"))
        {
            return Err(CredentialsError::Userhash);
        }
        let qop_auth = match p.get("qop") {
            None => false,
            Some(q) if q.eq_ignore_ascii_case("auth") => true,
            Some(_) => return Err(CredentialsError::Qop),
        };
        let cnonce = p.get("cnonce").map(str::to_owned);
        let nc = match p.get("nc") {
            None => None,
            Some(s) => {
                if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(CredentialsError::Nc);
                }
                let n = u32::from_str_radix(s, 16).map_err(|_| CredentialsError::Nc)?;
                Some((s.to_owned(), n))
            }
        };
        if qop_auth && (cnonce.is_none() || nc.is_none()) {
            return Err(if cnonce.is_none() {
                CredentialsError::Cnonce
            } else {
                CredentialsError::Nc
            });
        }
        if algorithm.is_sess() && cnonce.is_none() {
            return Err(CredentialsError::Cnonce);
        }
        Ok(Some(Credentials {
            username,
            realm,
            nonce,
            uri,
            response: response.to_ascii_lowercase(),
            algorithm,
            cnonce,
            qop_auth,
            nc,
            opaque: p.get("opaque").map(str::to_owned),
            raw: p,
        }))
    }

    /// Any parameter, as parsed (unescaped).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.raw.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_tokens_and_escapes() {
        let p = AuthParams::parse(
            "Digest  username=\"bo\\\"b\", REALM = \"biloxi.com\" ,,nonce=\"x,y\", qop=auth,\r\n nc=00000001",
        )
        .unwrap();
        assert_eq!(p.scheme, "Digest");
        assert_eq!(p.get("username"), Some("bo\"b"));
        assert_eq!(p.get("realm"), Some("biloxi.com"));
        assert_eq!(p.get("nonce"), Some("x,y"));
        assert_eq!(p.get("qop"), Some("auth"));
        assert_eq!(p.get("nc"), Some("00000001"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Digest",
            "Digest ",
            "Digest realm",
            "Digest realm=",
            "Digest realm=\"x",
            "Digest realm=\"x\" y",
            "Digest realm=a, Realm=b",
            "Digest =a",
            "Digest a=\"\\",
            "Digest a=\"x\ry\"",
            "\"Digest\" a=b",
        ] {
            assert!(AuthParams::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_shape() {
        let ok = "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"0123456789abcdef0123456789ABCDEF\", qop=auth, nc=0000000a, cnonce=\"c\"";
        let c = Credentials::parse(ok).unwrap().unwrap();
        assert_eq!(c.nc, Some(("0000000a".to_owned(), 10)));
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.response, "0123456789abcdef0123456789abcdef");
        assert!(Credentials::parse("Basic dXNlcjpwYXNz=x")
            .unwrap()
            .is_none());
        let no_nc = ok.replace(", nc=0000000a", "");
        assert_eq!(Credentials::parse(&no_nc), Err(CredentialsError::Nc));
        let sha = ok.replace("qop=auth", "algorithm=SHA-256, qop=auth");
        assert_eq!(Credentials::parse(&sha), Err(CredentialsError::Response));
        let int = ok.replace("qop=auth", "qop=auth-int");
        assert_eq!(Credentials::parse(&int), Err(CredentialsError::Qop));
    }
}
