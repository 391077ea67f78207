//! URIs as SIP uses them (RFC 3261 §19.1, §25.1; RFC 3966 for `tel`): `sip`, `sips`, `tel`,
//! and any other scheme kept opaque. Parsing borrows from the input and never panics; the
//! user part and parameters stay %-escaped (see [`crate::sip::unescape`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::scan::{all, class, parse_u64, run, with_bytes, ALNUM};

/// Why a URI did not parse. Turned into [`ParseError::BadUri`](super::ParseError) by callers,
/// who know where the URI came from.
pub type UriError = &'static str;

/// A parsed URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:` (RFC 3966).
    Tel(TelUri<'a>),
    /// Any other scheme: kept opaque.
    Other { scheme: &'a str, rest: &'a str },
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sips:`.
    pub secure: bool,
    /// The user part, still %-escaped.
    pub user: Option<&'a str>,
    /// The password, still %-escaped.
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    pub port: Option<u16>,
    /// The URI parameters (`;name=value...`).
    pub params: Params<'a>,
    /// The header part after `?`, raw.
    pub headers: Option<&'a str>,
}

/// A `tel:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The number as written (global `+...` or local digits), visual separators kept.
    pub number: &'a str,
    pub params: Params<'a>,
}

/// A host: name, IPv4 address or IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host<'_> {
    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Name(_) => None,
            Host::V4(a) => Some(IpAddr::V4(a)),
            Host::V6(a) => Some(IpAddr::V6(a)),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// `;name[=value]` parameters, kept raw and read on demand. Names compare case-insensitively.
/// The raw text starts at the first `;` (or is empty).
///
/// A list checked by the parsers of this module (URIs, Via, name-addr) also carries where
/// the few parameters a proxy reads on every message are ([`INDEXED`]: `branch`, `tag`,
/// `rport`, ...), found by the pass that checked it, so that [`get`](Self::get) reads them
/// without scanning the list again. Equality is that of the raw text.
#[derive(Clone, Copy, Default)]
pub struct Params<'a> {
    raw: &'a str,
    index: ParamIndex,
}

impl PartialEq for Params<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Params<'_> {}

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params").field("raw", &self.raw).finish()
    }
}

/// The parameter names whose first occurrence a checked list records.
const INDEXED: [&str; 12] = [
    "branch",
    "rport",
    "received",
    "tag",
    "lr",
    "transport",
    "maddr",
    "sx",
    "i",
    "expires",
    "fl",
    "nf",
];

/// The slot of `name` in [`INDEXED`] (any case). The name's bytes are packed into one
/// word (two overlapping loads: the first and last two or four bytes) and folded to lower
/// case with `| 0x20`, then matched with its length against the packed names: no loop.
/// `| 0x20` is `to_ascii_lowercase` here because every indexed name is lower-case letters:
/// `x | 0x20` is a lower-case letter only when `x` is that letter in either case.
#[inline]
fn indexed_slot(name: &[u8]) -> Option<usize> {
    const fn fold(n: &[u8]) -> u64 {
        // Bytes past 8 (only `transport` has one) are compared apart.
        let w = match n.len() {
            0 => 0,
            1 => n[0] as u64,
            2 | 3 => {
                let l = n.len();
                (u16::from_le_bytes([n[0], n[1]]) as u64)
                    | (u16::from_le_bytes([n[l - 2], n[l - 1]]) as u64) << 16
            }
            l => {
                let e = if l < 8 { l } else { 8 };
                (u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as u64)
                    | (u32::from_le_bytes([n[e - 4], n[e - 3], n[e - 2], n[e - 1]]) as u64) << 32
            }
        };
        w | 0x2020_2020_2020_2020
    }
    const K: [u64; INDEXED.len()] = {
        let mut k = [0; INDEXED.len()];
        let mut i = 0;
        while i < INDEXED.len() {
            k[i] = fold(INDEXED[i].as_bytes());
            i += 1;
        }
        k
    };
    const BRANCH: u64 = K[0];
    const RPORT: u64 = K[1];
    const RECEIVED: u64 = K[2];
    const TAG: u64 = K[3];
    const LR: u64 = K[4];
    const TRANSPORT: u64 = K[5];
    const MADDR: u64 = K[6];
    const SX: u64 = K[7];
    const I: u64 = K[8];
    const EXPIRES: u64 = K[9];
    const FL: u64 = K[10];
    const NF: u64 = K[11];
    if name.len() > 9 {
        return None;
    }
    Some(match (name.len(), fold(name)) {
        (1, I) => 8,
        (2, LR) => 4,
        (2, SX) => 7,
        (2, FL) => 10,
        (2, NF) => 11,
        (3, TAG) => 3,
        (5, RPORT) => 1,
        (5, MADDR) => 6,
        (6, BRANCH) => 0,
        (7, EXPIRES) => 9,
        (8, RECEIVED) => 2,
        (9, TRANSPORT) if name[8] | 0x20 == b't' => 5,
        _ => return None,
    })
}

/// The slot of `name` in [`INDEXED`] as the packed match must find it: by comparison.
#[cfg(test)]
fn indexed_slot_by_comparison(name: &[u8]) -> Option<usize> {
    INDEXED
        .iter()
        .position(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// Where the [`INDEXED`] parameters of a checked list are: byte ranges into the raw text
/// (which is at most `u16::MAX` bytes long when `on`).
#[derive(Debug, Clone, Copy, Default)]
struct ParamIndex {
    /// The list was indexed: a name absent from `present` is absent from the list.
    on: bool,
    /// Bit `k`: `INDEXED[k]` occurs.
    present: u16,
    /// Bit `k`: its first occurrence has a value, at `at[k]`.
    valued: u16,
    at: [(u16, u16); INDEXED.len()],
}

impl ParamIndex {
    /// Record a parameter (name and value as ranges of the raw text) unless one of the same
    /// name came first.
    #[inline(always)]
    fn record(&mut self, name: &[u8], value: Option<(usize, usize)>) {
        let Some(k) = indexed_slot(name) else {
            return;
        };
        let bit = 1u16 << k;
        if self.present & bit != 0 {
            return;
        }
        self.present |= bit;
        if let Some((s, e)) = value {
            self.valued |= bit;
            self.at[k] = (s as u16, e as u16);
        }
    }
}

/// Where `inner`, a slice of `outer`, starts in it.
fn offset_in(outer: &str, inner: &str) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

impl<'a> Params<'a> {
    /// Wrap raw parameter text that starts with `;` (or is empty).
    pub fn new(raw: &'a str) -> Self {
        Params {
            raw,
            index: ParamIndex::default(),
        }
    }

    /// [`validate`](Self::validate) and index `raw` in the same pass: the list, ready for
    /// [`get`](Self::get) without a scan for the [`INDEXED`] names.
    pub(crate) fn checked(raw: &'a str) -> Result<Self, &'static str> {
        match Self::checked_clean(raw) {
            Some(p) => Ok(p),
            None => Self::checked_slow(raw),
        }
    }

    /// [`checked`](Self::checked) of a clean list (names and values of parameter bytes
    /// only, no quotes, no LWS), `None` for any other: a list it takes holds no comma and
    /// no quote.
    #[inline]
    pub(crate) fn checked_clean(raw: &'a str) -> Option<Self> {
        let mut index = ParamIndex::default();
        if raw.len() <= usize::from(u16::MAX)
            && scan_clean::<true>(raw.as_bytes(), false, &mut index) == Some(raw.len())
        {
            index.on = true;
            return Some(Params { raw, index });
        }
        None
    }

    /// The parameters and the headers of a SIP URI: `tail` is what follows its host and
    /// port (`;params?headers`, either part optional); the parameters end at the first `?`.
    /// [`checked`](Self::checked) of the parameters, in the same pass on a clean list.
    /// `INDEX` false: a clean list is checked, not indexed (the caller does not keep it).
    #[inline(always)]
    fn checked_with_headers<const INDEX: bool>(
        tail: &'a str,
    ) -> Result<(Self, Option<&'a str>), &'static str> {
        let mut index = ParamIndex::default();
        if tail.len() <= usize::from(u16::MAX) {
            if let Some(end) = scan_clean::<INDEX>(tail.as_bytes(), true, &mut index) {
                index.on = true;
                let params = Params {
                    raw: &tail[..end],
                    index,
                };
                return Ok((params, tail.get(end + 1..)));
            }
        }
        let (params, headers) = match super::scan::find_byte(tail, b'?') {
            Some(q) => (&tail[..q], Some(&tail[q + 1..])),
            None => (tail, None),
        };
        Ok((Self::checked_slow(params)?, headers))
    }

    /// [`checked`](Self::checked) for any list: the one-pass check of lists without quotes
    /// and LWS, else the general one.
    #[cold]
    fn checked_slow(raw: &'a str) -> Result<Self, &'static str> {
        let mut index = ParamIndex::default();
        let indexing = raw.len() <= usize::from(u16::MAX);
        let verdict = match scan_plain(raw.as_bytes(), &mut index) {
            Some(v) => v,
            None => {
                index = ParamIndex::default();
                scan_any(raw, &mut index)
            }
        };
        verdict?;
        index.on = indexing;
        Ok(Params { raw, index })
    }

    /// The raw text, starting with `;` unless empty.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Iterate `(name, value)` pairs; LWS around names, `=` and values is trimmed.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { rest: self.raw }
    }

    /// `Some(Some(v))` for `;name=v`, `Some(None)` for a bare `;name`, `None` when absent.
    /// Inline: the name is nearly always a constant, whose slot then folds at compile time.
    #[inline]
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        if self.index.on {
            if let Some(k) = indexed_slot(name.as_bytes()) {
                let bit = 1u16 << k;
                if self.index.present & bit == 0 {
                    return None;
                }
                if self.index.valued & bit == 0 {
                    return Some(None);
                }
                let (s, e) = self.index.at[k];
                return Some(self.raw.get(usize::from(s)..usize::from(e)));
            }
        }
        self.get_by_scan(name)
    }

    /// [`get`](Self::get) by a scan of the list: names that are not indexed, lists that
    /// are not. Out of line, so that `get` stays small enough to inline.
    #[inline(never)]
    fn get_by_scan(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// True when the parameter is present, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Check every parameter: a non-empty token name, and a token, host or quoted-string value.
    pub fn validate(&self) -> Result<(), &'static str> {
        match validate_plain(self.raw.as_bytes()) {
            Some(verdict) => verdict,
            None => self.validate_any(),
        }
    }

    /// [`validate`](Self::validate) for any parameter list: quoted values, LWS around names,
    /// `=` and values.
    fn validate_any(&self) -> Result<(), &'static str> {
        scan_any(self.raw, &mut ParamIndex::default())
    }
}

/// [`Params::validate_any`], recording the [`INDEXED`] parameters in `index` as it goes.
fn scan_any(raw: &str, index: &mut ParamIndex) -> Result<(), &'static str> {
    let mut rest = raw;
    while let Some(r) = rest.strip_prefix(';') {
        let (piece, next) = split_param(r);
        rest = next;
        let (name, value) = name_value(piece);
        if name.is_empty() {
            return Err("empty parameter");
        }
        if !name.bytes().all(is_param_char) {
            return Err("bad parameter name");
        }
        if let Some(v) = value {
            if v.starts_with('"') {
                if super::scan::quoted_end(v) != Some(v.len()) {
                    return Err("bad quoted parameter value");
                }
            } else if v.is_empty() || !v.bytes().all(|b| is_param_char(b) || b == b':') {
                // ':' appears in IPv6 maddr/received values: [2001:db8::1]
                if !(v.starts_with('[') && v.ends_with(']')) {
                    return Err("bad parameter value");
                }
            }
        }
        index.record(
            name.as_bytes(),
            value.map(|v| {
                let s = offset_in(raw, v);
                (s, s + v.len())
            }),
        );
    }
    if !rest.is_empty() {
        return Err("bad parameter list");
    }
    Ok(())
}

/// [`Params::validate`] in one pass over a list without quotes and without LWS (nearly
/// every list): there every `;` ends a parameter and nothing needs trimming. `None` as soon
/// as a quote or LWS shows up in a parameter not yet judged; the caller then runs the
/// general check, whose verdict this is on every list it does judge (the parameters before
/// the first quote or LWS split the same way in both).
fn validate_plain(b: &[u8]) -> Option<Result<(), &'static str>> {
    scan_plain(b, &mut ParamIndex::default())
}

/// The common case of [`scan_plain`], a run of one table lookup per byte: a list whose
/// every parameter is a non-empty name of parameter characters, optionally `=` and a
/// non-empty value of them. Returns where the list ends: at the end of `b`, or at a `?`
/// after a parameter (or at 0) when `to_question` is set (a URI's headers follow). `None`
/// for anything else (quotes, LWS, an empty name or value, another byte, an error), which
/// the callers then judge with the general checks; `index` is then partly filled.
///
/// On a list it accepts, [`scan_plain`] gives `Ok` and the same index (on the text before
/// the `?`): every parameter is one it judges valid and records alike, and the first `?` of
/// the text is the one found here, since a parameter character is not a `?`.
///
/// `INDEX` false: nothing is recorded (for a check whose list is not kept).
#[inline]
fn scan_clean<const INDEX: bool>(
    b: &[u8],
    to_question: bool,
    index: &mut ParamIndex,
) -> Option<usize> {
    use super::scan::{class::PARAM, run};
    let mut i = 0;
    loop {
        match b.get(i) {
            None => return Some(i),
            Some(b';') => {}
            Some(b'?') if to_question => return Some(i),
            Some(_) => return None,
        }
        let start = i + 1;
        let name_end = run(b, start, PARAM);
        if name_end == start {
            return None;
        }
        let mut value = None;
        i = name_end;
        if b.get(name_end) == Some(&b'=') {
            let v = name_end + 1;
            i = run(b, v, PARAM);
            if i == v {
                return None;
            }
            value = Some((v, i));
        }
        if INDEX {
            index.record(&b[start..name_end], value);
        }
    }
}

/// [`validate_plain`], recording the [`INDEXED`] parameters in `index` as it goes.
#[inline]
fn scan_plain(b: &[u8], index: &mut ParamIndex) -> Option<Result<(), &'static str>> {
    if b.is_empty() {
        return Some(Ok(()));
    }
    if b[0] != b';' {
        return Some(Err("bad parameter list"));
    }
    let mut i = 1;
    loop {
        let start = i;
        let mut eq = None;
        let mut name_ok = true;
        let mut value_ok = true;
        while i < b.len() && b[i] != b';' {
            let c = b[i];
            if c == b'"' || super::scan::is_lws(c) {
                return None;
            }
            if eq.is_some() {
                value_ok &= is_param_char(c);
            } else if c == b'=' {
                eq = Some(i);
            } else {
                name_ok &= is_param_char(c);
            }
            i += 1;
        }
        if eq.unwrap_or(i) == start {
            return Some(Err("empty parameter"));
        }
        if !name_ok {
            return Some(Err("bad parameter name"));
        }
        if let Some(e) = eq {
            // ':' (IPv6 maddr/received values) is a parameter character already.
            let v = &b[e + 1..i];
            if (v.is_empty() || !value_ok) && !(v.first() == Some(&b'[') && v.last() == Some(&b']'))
            {
                return Some(Err("bad parameter value"));
            }
        }
        index.record(&b[start..eq.unwrap_or(i)], eq.map(|e| (e + 1, i)));
        if i == b.len() {
            return Some(Ok(()));
        }
        i += 1;
    }
}

/// Token chars plus the URI `param-unreserved` set and `%` escapes, as a table (checked
/// for every byte of every parameter a message is validated with).
static PARAM_CHAR: [bool; 256] = with_bytes(super::scan::TOKEN_CHARS, super::scan::PARAM_EXTRA);

#[inline(always)]
fn is_param_char(b: u8) -> bool {
    PARAM_CHAR[b as usize]
}

/// Split one parameter off `s` (which follows a `;`): up to the next `;` outside a quoted string.
fn split_param(s: &str) -> (&str, &str) {
    match super::scan::find_unquoted(s, b';', false) {
        Ok(Some(i)) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("")),
        _ => (s, ""),
    }
}

fn name_value(piece: &str) -> (&str, Option<&str>) {
    match super::scan::find_byte(piece, b'=') {
        Some(i) => (
            super::scan::trim_lws(piece.get(..i).unwrap_or("")),
            Some(super::scan::trim_lws(piece.get(i + 1..).unwrap_or(""))),
        ),
        None => (super::scan::trim_lws(piece), None),
    }
}

/// Iterator over [`Params`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r = self.rest.strip_prefix(';')?;
            let (piece, next) = split_param(r);
            self.rest = next;
            let (name, value) = name_value(piece);
            if !name.is_empty() {
                return Some((name, value));
            }
        }
    }
}

impl<'a> Uri<'a> {
    /// [`parse`](Self::parse)'s verdict without the URI: the same error, the same `Ok`, for
    /// the URIs validation checks and does not keep (From, To, Contact, Record-Route). A
    /// SIP URI is walked as `parse` walks it, without building it or indexing its
    /// parameters; any other scheme as `parse` reads it.
    pub fn check(s: &str) -> Result<(), UriError> {
        Uri::parse_as::<false>(s).map(|_| ())
    }

    /// Parse a URI. `s` must be the URI alone (no surrounding `<>` or whitespace).
    pub fn parse(s: &'a str) -> Result<Uri<'a>, UriError> {
        Uri::parse_as::<true>(s)
    }

    /// [`parse`](Self::parse), a SIP URI's parameters indexed when `INDEX` (else the
    /// verdict is all the caller keeps: [`check`](Self::check)).
    #[inline(always)]
    fn parse_as<const INDEX: bool>(s: &'a str) -> Result<Uri<'a>, UriError> {
        // The schemes nearly every URI has, without the general scheme checks they pass.
        let b = s.as_bytes();
        if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
            return SipUri::parse_rest::<INDEX>(&s[4..], false);
        }
        if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
            return SipUri::parse_rest::<INDEX>(&s[5..], true);
        }
        let colon = super::scan::find_byte(s, b':').ok_or("missing scheme")?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err("bad scheme");
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_rest::<INDEX>(rest, false)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_rest::<INDEX>(rest, true)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_rest(rest).map(Uri::Tel)
        } else {
            if rest.is_empty() || rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err("bad opaque URI");
            }
            Ok(Uri::Other { scheme, rest })
        }
    }

    /// The scheme, lower-case for the known ones.
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// The SIP URI inside, if this is `sip:` or `sips:`.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

impl<'a> SipUri<'a> {
    /// Parse a `sip:`/`sips:` URI from the text after the scheme's colon. Built in place
    /// as a [`Uri`]: wrapping a returned `SipUri` is a copy of it. `INDEX` false: the
    /// parameters are not indexed, for a caller that keeps only the verdict (the optimiser
    /// drops what nothing reads).
    fn parse_rest<const INDEX: bool>(rest: &'a str, secure: bool) -> Result<Uri<'a>, UriError> {
        Self::parse_rest_as::<INDEX>(rest, secure)
    }

    /// [`parse_rest`](Self::parse_rest)'s body, inlined into each of its two versions.
    #[inline(always)]
    fn parse_rest_as<const INDEX: bool>(rest: &'a str, secure: bool) -> Result<Uri<'a>, UriError> {
        // userinfo ends at the first '@'; '@' may not appear unescaped elsewhere before the host.
        // A user part without escapes or password ends at the first byte out of its class:
        // when that is the '@', no search for it.
        let b = rest.as_bytes();
        let user_end = run(b, 0, class::USER);
        let at = match b.get(user_end) {
            Some(b'@') => Some(user_end),
            _ => memchr::memchr(b'@', &b[user_end..]).map(|p| user_end + p),
        };
        let (user, password, hostport_etc) = match at {
            Some(at) => {
                let userinfo = &rest.as_bytes()[..at];
                // The user part ends at the first ':' (the password follows): the first
                // byte that is neither a user byte nor in a valid escape, if it is a ':'.
                if matches!(userinfo.first(), None | Some(b':')) {
                    return Err("empty user part");
                }
                let end = escaped_run(userinfo, class::USER);
                let password = match userinfo.get(end) {
                    None => None,
                    Some(b':') => {
                        let p = &rest[end + 1..at];
                        if !escaped_all(p, class::PASSWORD) {
                            return Err("bad password");
                        }
                        Some(p)
                    }
                    Some(_) => return Err("bad user part"),
                };
                (Some(&rest[..end]), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let (host, port, hp_end) = match scan_hostport(hostport_etc) {
            Some((host, port, end)) => (host, port, end),
            None => {
                let hp_end = hostport_etc
                    .bytes()
                    .position(|b| b == b';' || b == b'?')
                    .unwrap_or(hostport_etc.len());
                let (host, port) = parse_hostport(&hostport_etc[..hp_end])?;
                (host, port, hp_end)
            }
        };
        let (params, headers) = Params::checked_with_headers::<INDEX>(&hostport_etc[hp_end..])?;
        if let Some(h) = headers {
            if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'"') {
                return Err("bad URI headers");
            }
        }
        Ok(Uri::Sip(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        }))
    }

    /// The `transport` parameter, if any.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.get("transport").flatten()
    }

    /// True when the URI has the `lr` parameter (a loose router, RFC 3261 §16.12).
    pub fn is_loose_router(&self) -> bool {
        self.params.has("lr")
    }
}

impl<'a> TelUri<'a> {
    fn parse_rest(rest: &'a str) -> Result<TelUri<'a>, UriError> {
        let end = super::scan::find_byte(rest, b';').unwrap_or(rest.len());
        let number = &rest[..end];
        let digits = number.strip_prefix('+').unwrap_or(number);
        if digits.is_empty()
            || !digits.bytes().all(|b| {
                b.is_ascii_hexdigit() || matches!(b, b'-' | b'.' | b'(' | b')' | b'*' | b'#')
            })
        {
            return Err("bad telephone number");
        }
        let params = Params::checked(&rest[end..])?;
        Ok(TelUri { number, params })
    }
}

/// The `host[:port]` that starts `b` and ends at the first `;` or `?` (or the end), in one
/// walk that classifies the host as it goes, when it is the common case: a valid host name
/// or IPv4 address and a valid port. `None` for anything else (an IPv6 reference, an error),
/// which [`parse_hostport`] then reads, with the verdict it gives.
pub(crate) fn scan_hostport(s: &str) -> Option<(Host<'_>, Option<u16>, usize)> {
    let b = s.as_bytes();
    let mut i = run(b, 0, class::HOST);
    if !matches!(b.get(i), None | Some(b':' | b';' | b'?')) {
        return None;
    }
    let host = name_or_ipv4(&b[..i]).ok()?;
    // `i` is on an ASCII byte (or the end): a char boundary.
    let host = host.unwrap_or(Host::Name(s.get(..i)?));
    let mut port = None;
    if b.get(i) == Some(&b':') {
        i += 1;
        let start = i;
        let mut n: u32 = 0;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 5 {
            n = n * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        if i == start || n > u32::from(u16::MAX) || !matches!(b.get(i), None | Some(b';' | b'?')) {
            return None;
        }
        port = Some(n as u16);
    }
    Some((host, port, i))
}

/// Parse `host[:port]` (the port optional, the host a name, IPv4 or `[IPv6]`).
pub fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>), UriError> {
    let (host_str, port_str) = if let Some(v6) = s.strip_prefix('[') {
        let close = v6.find(']').ok_or("unterminated IPv6 reference")?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("junk after IPv6 reference"),
        };
        (&s[..close + 2], port)
    } else {
        match super::scan::rfind_byte(s, b':') {
            Some(c) => (&s[..c], Some(&s[c + 1..])),
            None => (s, None),
        }
    };
    let host = parse_host(host_str)?;
    let port = match port_str {
        None => None,
        Some(p) => match parse_u64(p) {
            Some(n) if n <= u64::from(u16::MAX) => Some(n as u16),
            _ => return Err("bad port"),
        },
    };
    Ok((host, port))
}

/// Parse a host: `[IPv6]`, IPv4 dotted quad, or a host name.
pub fn parse_host(s: &str) -> Result<Host<'_>, UriError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("bad IPv6 reference")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::V6)
            .map_err(|_| "bad IPv6 address");
    }
    if !all(s.as_bytes(), class::HOST) {
        return Err("bad host name");
    }
    match name_or_ipv4(s.as_bytes()) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Ok(Host::Name(s)),
        Err(e) => Err(e),
    }
}

/// Judge `b`, non-empty host-name bytes ([`class::HOST`]): `Some` IPv4 address, `None`
/// for a valid host name (`*( domainlabel "." ) toplabel [ "." ]`, '_' tolerated: seen in
/// the wild), or the error.
#[inline]
fn name_or_ipv4(b: &[u8]) -> Result<Option<Host<'static>>, UriError> {
    let Some(&first) = b.first() else {
        return Err("empty host");
    };
    if first.is_ascii_digit() {
        // Only digits and dots can make one: `parse_ipv4` refuses anything else.
        if let Some(a) = parse_ipv4(b) {
            return Ok(Some(Host::V4(a)));
        }
    }
    if first == b'.' || first == b'-' || has_double_dot(b) {
        return Err("bad host name");
    }
    Ok(None)
}

/// True when `b` has two dots in a row: a word of 8 bytes a step, each byte that is a dot
/// flagged exactly (`!(((t & 0x7f..) + 0x7f..) | t | 0x7f..)` of `t = w ^ ".."`, no borrow
/// between bytes), then a flagged byte next to a flagged byte, within the word or across
/// two.
#[inline]
fn has_double_dot(b: &[u8]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;
    #[inline(always)]
    fn dots(w: u64) -> u64 {
        let t = w ^ DOTS;
        !(((t & LOW7).wrapping_add(LOW7)) | t | LOW7)
    }
    let mut carry = 0u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let d = dots(u64::from_le_bytes(w));
        if d & (d << 8 | carry) != 0 {
            return true;
        }
        carry = d >> 56;
    }
    let rest = chunks.remainder();
    let mut prev_dot = carry != 0;
    for &c in rest {
        if c == b'.' && prev_dot {
            return true;
        }
        prev_dot = c == b'.';
    }
    false
}

/// [`parse_host`] as it was before the class table: for the tests that compare.
#[cfg(test)]
fn parse_host_by_bytes(s: &str) -> Result<Host<'_>, UriError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("bad IPv6 reference")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::V6)
            .map_err(|_| "bad IPv6 address");
    }
    if s.is_empty() {
        return Err("empty host");
    }
    let b = s.as_bytes();
    let mut digits_dots = true;
    let mut name_chars = true;
    let mut prev = 0u8;
    for &c in b {
        digits_dots &= c.is_ascii_digit() || c == b'.';
        name_chars &= HOST_CHAR[c as usize];
        if c == b'.' && prev == b'.' {
            name_chars = false;
        }
        prev = c;
    }
    if digits_dots {
        if let Some(a) = parse_ipv4(b) {
            return Ok(Host::V4(a));
        }
    }
    if !name_chars || b[0] == b'.' || b[0] == b'-' {
        return Err("bad host name");
    }
    Ok(Host::Name(s))
}

/// A dotted quad as `Ipv4Addr::from_str` reads it (four decimal octets of one to three
/// digits, no leading zero, each at most 255), in one walk over the bytes (`None` for any
/// other byte): std's general parser walks the text with a reader per octet.
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    /// The octet at `b[*i..]`: `0`, or one to three digits without a leading zero, at
    /// most 255 (what follows is the caller's to check).
    #[inline(always)]
    fn octet(b: &[u8], i: &mut usize) -> Option<u8> {
        let digit = |c: Option<&u8>| c.map(|c| c.wrapping_sub(b'0')).filter(|&d| d < 10);
        let first = digit(b.get(*i))?;
        *i += 1;
        let mut n = u16::from(first);
        if first != 0 {
            for _ in 0..2 {
                let Some(d) = digit(b.get(*i)) else { break };
                n = n * 10 + u16::from(d);
                *i += 1;
            }
        }
        u8::try_from(n).ok()
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, o) in octets.iter_mut().enumerate() {
        if k > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        *o = octet(b, &mut i)?;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

/// Bytes of a host name: alphanumerics, `-`, `.` and the tolerated `_`.
#[cfg(test)]
static HOST_CHAR: [bool; 256] = with_bytes(ALNUM, b"-._");

/// `unreserved / escaped / user-unreserved` (RFC 3261 §25.1).
#[cfg(test)]
fn is_user_char(b: u8) -> bool {
    USER_CHAR[b as usize]
}

/// The bytes a user part may carry without escaping (`unreserved / user-unreserved`).
#[inline]
pub(crate) fn is_user_unreserved(b: u8) -> bool {
    b != b'%' && USER_CHAR[b as usize]
}

#[cfg(test)]
fn is_password_char(b: u8) -> bool {
    PASSWORD_CHAR[b as usize]
}

/// The end of the run of class-`bit` bytes and valid `%XX` escapes that starts `b`.
#[inline]
fn escaped_run(b: &[u8], bit: u8) -> usize {
    let mut i = 0;
    loop {
        i = run(b, i, bit);
        match b.get(i..i + 3) {
            Some([b'%', h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
            _ => return i,
        }
    }
}

/// Every byte of `s` is in class `bit` or in a valid `%XX` escape: with the class of a
/// table without `%`, `s.bytes().all(table) && escapes_valid(s)` in one pass.
fn escaped_all(s: &str, bit: u8) -> bool {
    escaped_run(s.as_bytes(), bit) == s.len()
}

/// `unreserved / escaped / user-unreserved`, `%` included (escapes are checked apart).
static USER_CHAR: [bool; 256] = with_bytes(ALNUM, b"-_.!~*'()&=+$,;?/%");

/// `unreserved / escaped / "&" / "=" / "+" / "$" / ","`, `%` included.
#[cfg(test)]
static PASSWORD_CHAR: [bool; 256] = with_bytes(ALNUM, b"-_.!~*'()%&=+$,");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of 0 to `max_len` bytes over `alphabet`.
    fn strings_over(alphabet: &[u8], max_len: u32) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..=max_len).flat_map(move |len| {
            (0..alphabet.len().pow(len)).map(move |mut n| {
                let mut b = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    b.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                b
            })
        })
    }

    /// The one-pass check gives the general check's verdict on every list it judges: all
    /// strings of up to 6 bytes over the bytes that matter to either.
    #[test]
    fn plain_params_check_agrees_with_the_general_one() {
        let alphabet = b";=a[]\" :%,\xff";
        let mut judged = 0;
        for b in strings_over(alphabet, 6) {
            let Ok(s) = std::str::from_utf8(&b) else {
                continue;
            };
            if let Some(v) = validate_plain(s.as_bytes()) {
                judged += 1;
                assert_eq!(v, Params::new(s).validate_any(), "{s:?}");
            }
        }
        assert!(judged > 10_000, "{judged}");
    }

    /// `escaped_all` is the two checks it replaces, on every string of up to 5 bytes over
    /// the bytes that matter to them.
    #[test]
    fn escaped_all_is_table_and_escapes() {
        let alphabet = b"%aG0:@ ";
        for b in strings_over(alphabet, 5) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            let esc = crate::sip::scan::escapes_valid(s);
            assert_eq!(
                escaped_all(s, class::USER),
                s.bytes().all(is_user_char) && esc,
                "{s:?}"
            );
            assert_eq!(
                escaped_all(s, class::PASSWORD),
                s.bytes().all(is_password_char) && esc,
                "{s:?}"
            );
        }
    }

    /// Each class bit of the table is the predicate or table it stands for, on all bytes.
    #[test]
    fn class_table_is_the_predicates() {
        use crate::sip::scan::{is_lws, is_token, CLASS};
        for b in 0..=255u8 {
            let has = |bit: u8| CLASS[b as usize] & bit != 0;
            assert_eq!(has(class::TOKEN), is_token(b), "{b:#04x}");
            assert_eq!(has(class::PARAM), is_param_char(b), "{b:#04x}");
            assert_eq!(has(class::HOST), HOST_CHAR[b as usize], "{b:#04x}");
            assert_eq!(has(class::USER), is_user_unreserved(b), "{b:#04x}");
            assert_eq!(has(class::PASSWORD), is_password_char(b) && b != b'%');
            assert_eq!(has(class::LWS), is_lws(b), "{b:#04x}");
            assert_eq!(has(class::DIGIT), b.is_ascii_digit(), "{b:#04x}");
            // A run stops at the first byte out of the class, wherever it falls in the
            // unrolled steps.
            for len in 0..20 {
                for at in 0..=len {
                    let mut v = vec![b'a'; len];
                    if at < len {
                        v[at] = b;
                    }
                    let want = if at < len && !has(class::HOST) {
                        at
                    } else {
                        len
                    };
                    assert_eq!(crate::sip::scan::run(&v, 0, class::HOST), want);
                }
            }
        }
    }

    /// The packed match finds the slot the comparison does: every indexed name in every
    /// case, and every name of up to 2 bytes, of up to 3 over letters and bytes next to
    /// them, and every indexed name with one byte changed to any other.
    #[test]
    fn indexed_slot_is_the_comparison() {
        let check = |n: &[u8]| assert_eq!(indexed_slot(n), indexed_slot_by_comparison(n), "{n:?}");
        for name in INDEXED {
            let b = name.as_bytes();
            for mask in 0..1u32 << b.len() {
                let v: Vec<u8> = (0..b.len())
                    .map(|i| {
                        if mask >> i & 1 == 1 {
                            b[i].to_ascii_uppercase()
                        } else {
                            b[i]
                        }
                    })
                    .collect();
                check(&v);
            }
            for i in 0..b.len() {
                for x in 0..=255u8 {
                    let mut v = b.to_vec();
                    v[i] = x;
                    check(&v);
                    v.push(x);
                    check(&v);
                    check(&v[1..]);
                }
            }
        }
        for x in 0..=255u8 {
            check(&[x]);
            for y in 0..=255u8 {
                check(&[x, y]);
            }
        }
        for v in strings_over(b"agitAGIT@`{[0\x7f\xe1", 3) {
            check(&v);
        }
        check(b"");
        check(b"transports");
    }

    /// What the clean-list pass accepts, the one-pass check accepts with the same index:
    /// all strings of up to 7 bytes over the bytes that matter, with and without stopping
    /// at a `?` (then the check runs on the text before the first `?`).
    #[test]
    fn clean_params_scan_is_the_plain_one() {
        let alphabet = b";=l?r\" [:";
        let mut accepted = 0;
        for b in strings_over(alphabet, 7) {
            for q in [false, true] {
                let mut fast = ParamIndex::default();
                let unindexed = scan_clean::<false>(&b, q, &mut ParamIndex::default());
                let Some(end) = scan_clean::<true>(&b, q, &mut fast) else {
                    assert_eq!(unindexed, None, "{b:?}");
                    continue;
                };
                assert_eq!(unindexed, Some(end), "{b:?}");
                accepted += 1;
                let want_end = if q {
                    b.iter().position(|&c| c == b'?').unwrap_or(b.len())
                } else {
                    b.len()
                };
                assert_eq!(end, want_end, "{b:?}");
                let mut plain = ParamIndex::default();
                assert_eq!(scan_plain(&b[..end], &mut plain), Some(Ok(())), "{b:?}");
                assert_eq!(
                    (fast.present, fast.valued, fast.at),
                    (plain.present, plain.valued, plain.at),
                    "{b:?}"
                );
            }
        }
        assert!(accepted > 10_000, "{accepted}");
    }

    /// A URI's parameters and headers split and check as they did with a search for the
    /// first `?` and `checked` on what precedes it: all strings of up to 6 bytes over the
    /// bytes that matter.
    #[test]
    fn params_with_headers_are_the_split_then_check() {
        for b in strings_over(b";=t?\" a", 6) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            let (p, h) = match s.find('?') {
                Some(q) => (&s[..q], Some(&s[q + 1..])),
                None => (s, None),
            };
            let want = Params::checked(p).map(|p| (p, h));
            let got = Params::checked_with_headers::<true>(s);
            assert_eq!(got, want, "{s:?}");
            let unindexed = Params::checked_with_headers::<false>(s);
            assert_eq!(
                unindexed.map(|(p, h)| (p.as_str(), h)),
                want.map(|(p, h)| (p.as_str(), h)),
                "{s:?}"
            );
            if let (Ok((g, _)), Ok((w, _))) = (got, want) {
                assert_eq!(g.as_str(), w.as_str(), "{s:?}");
                for name in ["tag", "t", "TAG", "a"] {
                    assert_eq!(g.get(name), w.get(name), "{s:?} {name}");
                }
            }
        }
    }

    /// The user part and password split and check as the byte walk they replace did (one
    /// pass for the first '@' and the first ':' before it, then the escape checks): all
    /// strings of up to 6 bytes over the bytes that matter.
    #[test]
    fn userinfo_is_the_byte_walk() {
        /// The user, the password and what follows the '@'.
        type Split<'a> = Option<(&'a str, Option<&'a str>, &'a str)>;
        fn by_bytes(rest: &str) -> Result<Split<'_>, UriError> {
            let at = rest.find('@');
            let Some(at) = at else { return Ok(None) };
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.find(':') {
                Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                None => (userinfo, None),
            };
            let esc = crate::sip::scan::escapes_valid;
            if user.is_empty() {
                return Err("empty user part");
            }
            if !(user.bytes().all(is_user_char) && esc(user)) {
                return Err("bad user part");
            }
            if let Some(p) = password {
                if !(p.bytes().all(is_password_char) && esc(p)) {
                    return Err("bad password");
                }
            }
            Ok(Some((user, password, &rest[at + 1..])))
        }
        let mut with_user = 0;
        for b in strings_over(b"a:%4@;?h", 6) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            let got = Uri::parse(&format!("sip:{s}")).map(|u| match u {
                Uri::Sip(u) => (u.user.map(String::from), u.password.map(String::from)),
                _ => unreachable!("a sip: URI"),
            });
            match by_bytes(s) {
                Err(e) => assert_eq!(got, Err(e), "{s:?}"),
                Ok(Some((user, password, hostport))) if !hostport.contains('@') => {
                    with_user += 1;
                    let rest = Uri::parse(&format!("sip:{hostport}")).map(|_| ());
                    match got {
                        Ok((u, p)) => {
                            assert_eq!((u.as_deref(), p.as_deref()), (Some(user), password));
                            assert_eq!(rest, Ok(()), "{s:?}");
                        }
                        Err(e) => assert_eq!(rest, Err(e), "{s:?}"),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => assert!(got.map_or(true, |(u, p)| u.is_none() && p.is_none())),
            }
        }
        assert!(with_user > 10_000, "{with_user}");
    }

    /// The word search for `..` is the byte walk, on every string of up to 8 bytes over
    /// dots and the bytes next to a dot in value (`-`, `/`, 0xae), and of up to 17 bytes
    /// over dots and letters (across the 8-byte boundaries).
    #[test]
    fn double_dot_is_the_byte_walk() {
        let mut n = 0;
        for b in strings_over(b".a-/\xae", 8).chain(strings_over(b".a", 17)) {
            let want = b.windows(2).any(|w| w[0] == b'.' && w[1] == b'.');
            assert_eq!(has_double_dot(&b), want, "{b:?}");
            n += 1;
        }
        assert!(n > 500_000, "{n}");
    }

    /// `parse_host` gives the verdict of the byte-by-byte version it replaced.
    #[test]
    fn parse_host_is_the_byte_walk() {
        for b in strings_over(b"a1.-_:[]9 ", 6) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            assert_eq!(parse_host(s), parse_host_by_bytes(s), "{s:?}");
        }
        for s in [
            "1.2.3.4",
            "1.2.3.04",
            "256.1.1.1",
            "[::1]",
            "a..b",
            "-a",
            "a-",
            "\u{e9}",
        ] {
            assert_eq!(parse_host(s), parse_host_by_bytes(s), "{s:?}");
        }
    }

    /// `parse_ipv4` is `Ipv4Addr::from_str` on every string of digits and dots of up to 9
    /// bytes over the digits that matter, and on longer and edge cases.
    #[test]
    fn ipv4_parser_is_std() {
        let mut n = 0;
        for b in strings_over(b"0129.", 9) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            assert_eq!(parse_ipv4(&b), s.parse::<Ipv4Addr>().ok(), "{s:?}");
            n += 1;
        }
        assert!(n > 1_000_000, "{n}");
        for s in [
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3.4.",
            "1.2.3.4.5",
            "0.0.0.0",
            "00.0.0.0",
            "1.2.3.0255",
            "192.168.100.200",
            "1.2.3.1000",
            "999.1.1.1",
            "1..2.3",
            ".1.2.3",
            "127.0.0.1",
            "1.2.3.4 ",
        ] {
            assert_eq!(
                parse_ipv4(s.as_bytes()),
                s.parse::<Ipv4Addr>().ok(),
                "{s:?}"
            );
        }
    }

    /// A checked list answers `get` from its index as the scan over the raw text does, for
    /// every indexed name in any case, on lists built from pieces with and without LWS and
    /// quotes; and `checked` gives `validate`'s verdict.
    #[test]
    fn indexed_params_read_as_the_scan() {
        let pieces = [
            ";lr",
            ";LR",
            ";tag=x",
            ";tag",
            ";i",
            ";i=\"q;\"",
            "; tag = y",
            ";branch=z9",
            ";x=1",
            ";;",
            ";sx=\"a\"",
            " ;i=2",
            ";rport",
            ";received=[::1]",
            ";Transport=tls",
            ";maddr=",
            ";expires=3",
            ";fl=1.0.ab",
            ";NF",
        ];
        let mut checked = 0;
        for len in 0..=4 {
            for n in 0..pieces.len().pow(len) {
                let mut s = String::new();
                let mut m = n;
                for _ in 0..len {
                    s.push_str(pieces[m % pieces.len()]);
                    m /= pieces.len();
                }
                let plain = Params::new(&s);
                let got = Params::checked(&s);
                assert_eq!(got.map(|_| ()), plain.validate(), "{s:?}");
                let Ok(p) = got else { continue };
                checked += 1;
                for name in INDEXED.iter().chain(&["x", "nope"]) {
                    assert_eq!(p.get(name), plain.get(name), "{s:?} {name}");
                    let upper = name.to_ascii_uppercase();
                    assert_eq!(p.get(&upper), plain.get(&upper), "{s:?} {upper}");
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// What `scan_hostport` reads, `parse_hostport` reads the same, on every string of up
    /// to 6 bytes over the bytes that matter to either and on ports at the edges.
    #[test]
    fn hostport_scan_is_parse_hostport() {
        let mut read = 0;
        let edges = [
            "h:65535",
            "h:65536",
            "h:00001",
            "h:000001",
            "1.2.3.4:5060;x",
            "h:5?x",
            "h:99999",
            "1.2.3.04",
            "-h",
            "h..i",
            "h_1",
        ];
        let edges = edges.iter().map(|s| s.as_bytes().to_vec());
        for b in strings_over(b"a1.:-;[0?", 6).chain(edges) {
            let s = std::str::from_utf8(&b).expect("ASCII");
            if let Some((h, p, end)) = scan_hostport(s) {
                read += 1;
                let hp_end = s.find([';', '?']).unwrap_or(s.len());
                assert_eq!(end, hp_end, "{s:?}");
                assert_eq!(parse_hostport(&s[..end]), Ok((h, p)), "{s:?}");
            }
        }
        assert!(read > 10_000, "{read}");
    }

    /// [`Uri::check`] is [`Uri::parse`]'s verdict on every short text after each scheme
    /// prefix, over the bytes that separate a SIP URI's parts.
    #[test]
    fn check_is_parse_on_short_uris() {
        let mut n = 0;
        for prefix in ["sip:", "SIPS:", "tel:", "x:", ""] {
            for b in strings_over(b"a1@:;=?%.[]", 5) {
                let mut t = prefix.as_bytes().to_vec();
                t.extend_from_slice(&b);
                let u = std::str::from_utf8(&t).expect("ASCII");
                assert_eq!(Uri::check(u), Uri::parse(u).map(|_| ()), "{u:?}");
                n += 1;
            }
        }
        assert!(n > 100_000, "{n}");
    }

    #[test]
    fn user_and_password_tables() {
        for b in 0..=255u8 {
            let unreserved = b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b);
            assert_eq!(
                is_user_unreserved(b),
                unreserved || b"&=+$,;?/".contains(&b),
                "byte {b:#04x}"
            );
            assert_eq!(is_user_char(b), is_user_unreserved(b) || b == b'%');
            assert_eq!(
                is_password_char(b),
                unreserved || b"%&=+$,".contains(&b),
                "byte {b:#04x}"
            );
        }
    }

    #[test]
    fn param_chars_are_token_chars_and_param_unreserved() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"-.!%*_+`'~[]/:&$()@".contains(&b);
            assert_eq!(is_param_char(b), want, "byte {b:#04x}");
        }
    }

    fn sip(s: &str) -> SipUri<'_> {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn basic_sip() {
        let u = sip("sip:alice:secret@example.com:5070;transport=tcp;lr?Subject=hi");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, Host::Name("example.com"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.is_loose_router());
        assert_eq!(u.headers, Some("Subject=hi"));
        assert!(!u.secure);
        assert!(sip("SIPS:example.com").secure);
    }

    #[test]
    fn hosts() {
        assert_eq!(sip("sip:1.2.3.4").host, Host::V4(Ipv4Addr::new(1, 2, 3, 4)));
        let u = sip("sip:u@[2001:db8::1]:5061");
        assert_eq!(u.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert!(Uri::parse("sip:u@[2001:db8::1").is_err());
        assert!(Uri::parse("sip:u@exa mple.com").is_err());
        assert!(Uri::parse("sip:u@host:99999").is_err());
        assert!(Uri::parse("sip:").is_err());
    }

    #[test]
    fn torture_user_parts() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        let u = sip("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com");
        assert_eq!(u.host, Host::Name("example.com"));
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        assert_eq!(
            &*crate::sip::unescape(sip("sip:null-%00-null@example.com").user.unwrap()),
            b"null-\0-null"
        );
        assert!(Uri::parse("sip:bad%zzuser@example.com").is_err());
    }

    #[test]
    fn params() {
        let u = sip("sip:h;lr;unknownwith=value;unknown-no-value;maddr=[2001:db8::9]");
        assert_eq!(u.params.get("UNKNOWNWITH"), Some(Some("value")));
        assert_eq!(u.params.get("unknown-no-value"), Some(None));
        assert_eq!(u.params.get("maddr"), Some(Some("[2001:db8::9]")));
        assert_eq!(u.params.get("nope"), None);
        assert!(Uri::parse("sip:h;;lr").is_err());
    }

    #[test]
    fn other_schemes() {
        assert_eq!(
            Uri::parse("tel:+1-201-555-0123;phone-context=example.com").map(|u| u.scheme()),
            Ok("tel")
        );
        assert_eq!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other {
                scheme: "soap.beep",
                rest: "//192.0.2.103:3002"
            })
        );
        assert!(Uri::parse("<sip:x@y>").is_err());
        assert!(Uri::parse("1abc:x").is_err());
    }
}
