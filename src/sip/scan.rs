//! Small lexical helpers shared by the header-value and URI parsers (RFC 3261 §25.1).
//! They work on `&str` slices of an already indexed header section and must never panic:
//! every index they produce lies on an ASCII byte, hence on a char boundary.

/// Linear white space inside a header value: SP, HT, and the CR LF of a folded line
/// (the indexer guarantees that a CR LF inside a value is followed by SP or HT).
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `token` characters of RFC 3261 §25.1, as a table: this test runs once per byte of every
/// header name, and a lookup is cheaper than the chain of comparisons. URI parameters
/// extend it (`uri::PARAM_CHAR`).
pub(crate) const TOKEN_CHARS: [bool; 256] = with_bytes(ALNUM, b"-.!%*_+`'~");

/// The ASCII letters and digits, as a byte table: the base of the character classes.
pub(crate) const ALNUM: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    t
};

/// `table` with the bytes of `more` added: how every character class table is made.
pub(crate) const fn with_bytes(mut table: [bool; 256], more: &[u8]) -> [bool; 256] {
    let mut i = 0;
    while i < more.len() {
        table[more[i] as usize] = true;
        i += 1;
    }
    table
}

static TOKEN: [bool; 256] = TOKEN_CHARS;

/// Character classes of the header-value and URI parsers, one bit each in [`CLASS`]: a
/// byte's classes in one table load, and a run of one class in one lookup per byte.
pub(crate) mod class {
    /// `token` (RFC 3261 §25.1).
    pub(crate) const TOKEN: u8 = 1;
    /// A URI or header parameter's name or value byte (`uri::PARAM_CHAR`), `%` included.
    pub(crate) const PARAM: u8 = 1 << 1;
    /// A host name byte: alphanumerics, `-`, `.` and the tolerated `_`.
    pub(crate) const HOST: u8 = 1 << 2;
    /// A user part byte that needs no escape check (`uri::USER_CHAR` without `%`).
    pub(crate) const USER: u8 = 1 << 3;
    /// A password byte that needs no escape check (`uri::PASSWORD_CHAR` without `%`).
    pub(crate) const PASSWORD: u8 = 1 << 4;
    /// LWS: SP, HT, CR, LF ([`is_lws`](super::is_lws)).
    pub(crate) const LWS: u8 = 1 << 5;
    /// An ASCII digit.
    pub(crate) const DIGIT: u8 = 1 << 6;
}

/// The [`class`] bits of every byte.
pub(crate) static CLASS: [u8; 256] = {
    const fn set(mut t: [u8; 256], bytes: &[u8], bit: u8) -> [u8; 256] {
        let mut i = 0;
        while i < bytes.len() {
            t[bytes[i] as usize] |= bit;
            i += 1;
        }
        t
    }
    const fn set_table(mut t: [u8; 256], table: &[bool; 256], bit: u8) -> [u8; 256] {
        let mut i = 0;
        while i < 256 {
            if table[i] {
                t[i] |= bit;
            }
            i += 1;
        }
        t
    }
    let mut t = [0u8; 256];
    t = set_table(t, &TOKEN_CHARS, class::TOKEN);
    t = set_table(t, &with_bytes(TOKEN_CHARS, PARAM_EXTRA), class::PARAM);
    t = set_table(t, &with_bytes(ALNUM, b"-._"), class::HOST);
    t = set_table(t, &with_bytes(ALNUM, b"-_.!~*'()&=+$,;?/"), class::USER);
    t = set_table(t, &with_bytes(ALNUM, b"-_.!~*'()&=+$,"), class::PASSWORD);
    t = set(t, b" \t\r\n", class::LWS);
    set(t, b"0123456789", class::DIGIT)
};

/// What URI parameters add to `token` (`param-unreserved` and `:` for IPv6 values).
pub(crate) const PARAM_EXTRA: &[u8] = b"[]/:&$()@";

/// The end of the run of `bit`-class bytes (of bytes in any class of `bit`, for several
/// bits) that starts at `i` in `b`: the index of the first byte at or after `i` that is not
/// in the class, or `b.len()`. Unrolled: eight,
/// then four bytes a step with one bounds check a step, each byte one table load and one
/// test; the run ends at its first non-member, never read twice.
#[inline(always)]
pub(crate) fn run(b: &[u8], mut i: usize, bit: u8) -> usize {
    macro_rules! step {
        ($c:expr, $($k:literal)*) => {
            $(if CLASS[$c[$k] as usize] & bit == 0 {
                return i + $k;
            })*
        };
    }
    while let Some(c) = b.get(i..i + 8) {
        step!(c, 0 1 2 3 4 5 6 7);
        i += 8;
    }
    if let Some(c) = b.get(i..i + 4) {
        step!(c, 0 1 2 3);
        i += 4;
    }
    while i < b.len() && CLASS[b[i] as usize] & bit != 0 {
        i += 1;
    }
    i
}

/// True when every byte of `b` is in class `bit` (in one of the classes, for several bits).
#[inline(always)]
pub(crate) fn all(b: &[u8], bit: u8) -> bool {
    run(b, 0, bit) == b.len()
}

/// `token` characters of RFC 3261 §25.1.
#[inline(always)]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// True when `s` is a non-empty `token`.
#[inline]
pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// `s` without leading and trailing LWS.
#[inline]
pub(crate) fn trim_lws(s: &str) -> &str {
    let b = s.as_bytes();
    let mut start = 0;
    let mut end = b.len();
    while start < end && is_lws(b[start]) {
        start += 1;
    }
    while end > start && is_lws(b[end - 1]) {
        end -= 1;
    }
    s.get(start..end).unwrap_or("")
}

/// `s` without leading LWS.
#[inline]
pub(crate) fn trim_lws_start(s: &str) -> &str {
    let start = s.bytes().take_while(|&b| is_lws(b)).count();
    s.get(start..).unwrap_or("")
}

/// Index just past the closing quote of a quoted string that starts at `s[0] == '"'`,
/// honouring `\` escapes. `None` when the string is not terminated.
pub(crate) fn quoted_end(s: &str) -> Option<usize> {
    debug_assert_eq!(s.as_bytes().first(), Some(&b'"'));
    quoted_end_bytes(s.as_bytes())
}

/// [`quoted_end`] over bytes (`b[0]` is the opening quote).
#[inline]
fn quoted_end_bytes(b: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Find the first `sep` byte in `s` that is outside quoted strings and, when `angle` is set,
/// outside `<...>`. Returns `Err(())` on an unterminated quoted string. `sep` is a separator
/// (`,` or `;`), never `"`, `<` or `>`. A plain byte loop: the values it runs over (one
/// header value, one parameter list) are tens of bytes, where memchr's call and dispatch
/// cost more than the search.
pub(crate) fn find_unquoted(s: &str, sep: u8, angle: bool) -> Result<Option<usize>, ()> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == sep {
            return Ok(Some(i));
        }
        if c == b'"' {
            match quoted_end_bytes(&b[i..]) {
                Some(len) => i += len,
                None => return Err(()),
            }
        } else if c == b'<' && angle {
            // Inside `<...>` nothing but the closing `>` counts (quotes neither).
            match position(&b[i + 1..], b'>') {
                Some(k) => i += k + 2,
                None => return Ok(None),
            }
        } else {
            i += 1;
        }
    }
    Ok(None)
}

/// Index of the first `c` in `b`: a plain loop, for the short slices of a header value.
#[inline]
pub(crate) fn position(b: &[u8], c: u8) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

/// Index of the first `b` in `s` (a byte search: cheaper than `str::find` with a `char`).
#[inline]
pub(crate) fn find_byte(s: &str, b: u8) -> Option<usize> {
    position(s.as_bytes(), b)
}

/// Index of the last `b` in `s`.
#[inline]
pub(crate) fn rfind_byte(s: &str, b: u8) -> Option<usize> {
    s.as_bytes().iter().rposition(|&x| x == b)
}

/// Iterator over the comma-separated elements of a list header value, split on demand.
/// Commas inside quoted strings and `<...>` do not split. Elements are LWS-trimmed.
/// Yields `Err(())` once (then stops) on an unterminated quoted string.
#[derive(Debug, Clone)]
pub struct CommaSplit<'a> {
    rest: Option<&'a str>,
}

impl<'a> CommaSplit<'a> {
    pub fn new(value: &'a str) -> Self {
        CommaSplit { rest: Some(value) }
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = Result<&'a str, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        // Most values are one element: without a comma and a quote, the walk below would
        // find nothing, and one vectorised search says so.
        if memchr::memchr2(b',', b'"', rest.as_bytes()).is_none() {
            self.rest = None;
            return Some(Ok(trim_lws(rest)));
        }
        match find_unquoted(rest, b',', true) {
            Ok(Some(i)) => {
                self.rest = rest.get(i + 1..);
                Some(Ok(trim_lws(rest.get(..i).unwrap_or(""))))
            }
            Ok(None) => {
                self.rest = None;
                Some(Ok(trim_lws(rest)))
            }
            Err(()) => {
                self.rest = None;
                Some(Err(()))
            }
        }
    }
}

/// Parse an unsigned decimal number (leading zeros allowed, no sign) that fits in `u64`.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        // A longer string of digits overflows u64 whatever the digits; leading zeros that
        // long are not worth supporting.
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Value of a hexadecimal digit.
#[inline]
pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `n` in decimal, as `{n}` writes it, without the formatter (numbers written into
/// every forwarded message: ports, Max-Forwards, status codes).
pub(crate) fn push_dec(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
}

/// True when every `%` in `s` starts a valid `%XX` escape (what the URI parser checks in
/// its own pass; kept for the tests that compare against it).
#[cfg(test)]
pub(crate) fn escapes_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) if hex_val(h).is_some() && hex_val(l).is_some() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Decode `%XX` escapes. Borrowed when there is nothing to decode. Invalid escapes are kept
/// as they are (callers that care check `escapes_valid` first).
pub fn unescape(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.as_bytes().contains(&b'%') {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Every byte string of at most `max_len` bytes over `alphabet`, shortest first, the
/// empty one included: the exhaustive inputs of the tests that compare a rewritten
/// scanner with the reading it replaced.
#[cfg(test)]
pub(crate) fn every_string(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
    let mut all = vec![vec![]];
    let mut level = 0..1;
    for _ in 0..max_len {
        let end = all.len();
        for i in level {
            for &b in alphabet {
                let mut v: Vec<u8> = all[i].clone();
                v.push(b);
                all.push(v);
            }
        }
        level = end..all.len();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        let v: Vec<_> = CommaSplit::new(r#""a,b" <sip:x@y;p=1,2>, <sip:z>"#)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(v, vec![r#""a,b" <sip:x@y;p=1,2>"#, "<sip:z>"]);
        let v: Vec<_> = CommaSplit::new("a , b,\r\n c")
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(v, vec!["a", "b", "c"]);
        assert!(CommaSplit::new(r#""open, x"#).any(|r| r.is_err()));
        // Quotes inside <...> are not special; an unterminated <...> hides the rest.
        let v: Vec<_> = CommaSplit::new(r#"<sip:a"b,c>, d, "e>,f", g"#)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(v, vec![r#"<sip:a"b,c>"#, "d", r#""e>,f""#, "g"]);
        assert_eq!(find_unquoted("a>b,c", b',', true), Ok(Some(3)));
        assert_eq!(find_unquoted("<a,b", b',', true), Ok(None));
        assert_eq!(find_unquoted(r#"x="a;b";y"#, b';', false), Ok(Some(7)));
        assert_eq!(find_unquoted(r#"x="a;b"#, b';', false), Err(()));
    }

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(parse_u64("0068"), Some(68));
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("36893488147419103232"), None);
        assert!(escapes_valid("a%20b"));
        assert!(!escapes_valid("a%2"));
        assert!(!escapes_valid("%ZZ"));
        assert_eq!(&*unescape("%75se%72"), b"user");
        assert_eq!(&*unescape("null-%00-null"), b"null-\0-null");
    }
}
