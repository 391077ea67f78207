//! Typed header values, parsed on demand from the indexed message and borrowing from it:
//! Via, name-addr (From, To, Contact, Route, Record-Route, Path), CSeq, Contact lists.
//! Must never panic; every syntax problem becomes a [`ParseError`] naming the field.

use super::error::{ParseError, Where};
use super::header::HeaderName;
use super::message::Message;
use super::scan::{self, class, is_lws, quoted_end, run, trim_lws, trim_lws_start};
use super::uri::{parse_host, scan_hostport, Host, Params, Uri};

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name, normally `SIP`.
    pub protocol: &'a str,
    /// Protocol version, normally `2.0`.
    pub version: &'a str,
    /// Transport token as written: `UDP`, `TCP`, `TLS`, `SCTP`, `WS`, ... (compare
    /// case-insensitively).
    pub transport: &'a str,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    const AT: Where = Where::Header("Via");

    fn err(what: &'static str) -> ParseError {
        ParseError::BadValue { at: Self::AT, what }
    }

    /// Parse one (comma-split, trimmed) Via value.
    pub fn parse(v: &'a str) -> Result<Via<'a>, ParseError> {
        match Self::parse_plain(v) {
            Some(via) => via,
            None => Self::parse_any(v),
        }
    }

    /// The form nearly every Via has, `SIP/2.0/` transport, one SP, a host name or IPv4
    /// address, an optional port and the parameters, read in one walk: no token search
    /// with LWS around the slashes, no search for the end of the sent-by and no second
    /// pass over it. `None` for anything else (LWS elsewhere, an IPv6 reference, a port
    /// with leading zeros, an error in the sent-by), which [`parse_any`](Self::parse_any)
    /// then reads; where this reads, it reads what that would.
    #[inline]
    fn parse_plain(v: &'a str) -> Option<Result<Via<'a>, ParseError>> {
        let (via, after) = Self::plain_sent_by(v)?;
        let params = Params::checked(after).map_err(Self::err);
        Some(params.map(|params| Via { params, ..via }))
    }

    /// A whole Via line (a header value, trimmed) in the common form with a clean
    /// parameter list ([`Params::checked_clean`]): its bytes are then token, host, digit
    /// and parameter bytes, none a comma or a quote, so the line is this one value, which
    /// the comma split would hand to [`parse`](Self::parse) as it is. `None` otherwise.
    #[inline]
    pub(crate) fn parse_line_plain(line: &'a str) -> Option<Via<'a>> {
        let (via, after) = Self::plain_sent_by(line)?;
        let params = Params::checked_clean(after)?;
        Some(Via { params, ..via })
    }

    /// What [`parse_plain`](Self::parse_plain) reads before the parameters (which it
    /// leaves empty), and the parameter text.
    #[inline(always)]
    fn plain_sent_by(v: &'a str) -> Option<(Via<'a>, &'a str)> {
        let b = v.as_bytes();
        if !b.starts_with(b"SIP/2.0/") {
            return None;
        }
        let t_end = run(b, 8, class::TOKEN);
        if t_end == 8 || b.get(t_end) != Some(&b' ') {
            return None;
        }
        let sent_by = v.get(t_end + 1..)?;
        let (host, port, end) = scan_hostport(sent_by)?;
        if sent_by.as_bytes().get(end) == Some(&b'?') {
            return None;
        }
        let via = Via {
            protocol: v.get(..3).unwrap_or(""),
            version: v.get(4..7).unwrap_or(""),
            transport: v.get(8..t_end).unwrap_or(""),
            host,
            port,
            params: Params::default(),
        };
        Some((via, sent_by.get(end..)?))
    }

    /// [`parse`](Self::parse) for any Via value.
    fn parse_any(v: &'a str) -> Result<Via<'a>, ParseError> {
        let (protocol, rest) = take_token(v).ok_or(Self::err("bad protocol name"))?;
        let rest = expect(rest, b'/').ok_or(Self::err("missing '/'"))?;
        let (version, rest) = take_token(rest).ok_or(Self::err("bad protocol version"))?;
        let rest = expect(rest, b'/').ok_or(Self::err("missing '/'"))?;
        let (transport, rest) = take_token(rest).ok_or(Self::err("bad transport"))?;
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            return Err(Self::err("missing sent-by"));
        }
        let rest = trim_lws_start(rest);
        // sent-by = host [ COLON port ], with SWS allowed around the colon
        // Host bytes are neither: the search starts after them.
        let host_end = run(rest.as_bytes(), 0, class::HOST);
        let end = rest.as_bytes()[host_end..]
            .iter()
            .position(|&c| c == b';' || c.is_ascii_whitespace())
            .map_or(rest.len(), |p| host_end + p);
        let (mut hostport, mut after) = rest.split_at(end);
        let trimmed_after = trim_lws_start(after);
        let joined;
        if let Some(port_part) = trimmed_after.strip_prefix(':') {
            // "host : port" written with whitespace
            let p = trim_lws_start(port_part);
            let pend = p
                .bytes()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(p.len());
            joined = (hostport, &p[..pend]);
            after = &p[pend..];
            let (host, port) = parse_sent_by(joined.0, Some(joined.1))?;
            return Self::finish(protocol, version, transport, host, port, after);
        }
        if hostport.ends_with(':') {
            hostport = &hostport[..hostport.len() - 1];
            let p = trimmed_after;
            let pend = p
                .bytes()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(p.len());
            let (host, port) = parse_sent_by(hostport, Some(&p[..pend]))?;
            return Self::finish(protocol, version, transport, host, port, &p[pend..]);
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(_) => {
                let (h, p) =
                    super::uri::parse_hostport(hostport).map_err(|_| Self::err("bad sent-by"))?;
                (h, p)
            }
            None => match super::scan::rfind_byte(hostport, b':') {
                Some(c) => parse_sent_by(&hostport[..c], Some(&hostport[c + 1..]))?,
                None => parse_sent_by(hostport, None)?,
            },
        };
        Self::finish(protocol, version, transport, host, port, after)
    }

    fn finish(
        protocol: &'a str,
        version: &'a str,
        transport: &'a str,
        host: Host<'a>,
        port: Option<u16>,
        after: &'a str,
    ) -> Result<Via<'a>, ParseError> {
        let after = trim_lws_start(after);
        if !after.is_empty() && !after.starts_with(';') {
            return Err(Self::err("junk after sent-by"));
        }
        let params = Params::checked(after).map_err(Self::err)?;
        Ok(Via {
            protocol,
            version,
            transport,
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }

    /// The `received` parameter (RFC 3261 §18.2.1).
    pub fn received(&self) -> Option<&'a str> {
        self.params.get("received").flatten()
    }

    /// The `rport` parameter (RFC 3581): `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// True when the branch starts with the RFC 3261 magic cookie `z9hG4bK`.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }
}

fn parse_sent_by<'a>(
    host: &'a str,
    port: Option<&str>,
) -> Result<(Host<'a>, Option<u16>), ParseError> {
    let h = parse_host(host).map_err(|_| Via::err("bad sent-by host"))?;
    let p = match port {
        None => None,
        Some(p) => match scan::parse_u64(p) {
            Some(n) if n <= 65535 => Some(n as u16),
            _ => return Err(Via::err("bad sent-by port")),
        },
    };
    Ok((h, p))
}

/// Leading LWS, then a token; returns it and the rest.
fn take_token(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let start = run(b, 0, class::LWS);
    let end = run(b, start, class::TOKEN);
    if end == start {
        return None;
    }
    // Both ends are on ASCII bytes (or the end): char boundaries.
    Some((s.get(start..end)?, s.get(end..)?))
}

/// Leading LWS, then the byte `c`; returns the rest.
fn expect(s: &str, c: u8) -> Option<&str> {
    let s = trim_lws_start(s);
    if s.as_bytes().first() == Some(&c) {
        s.get(1..)
    } else {
        None
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route,
/// Path (RFC 3261 §20.10, §25.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name: the content of the quoted string (escapes kept) or the tokens.
    pub display: Option<&'a str>,
    /// The URI text, without `<>`.
    pub uri_str: &'a str,
    /// True when the URI was written inside `<>`.
    pub angle: bool,
    /// Header parameters after the URI (`;tag=...`, `;expires=...`, `;q=...`).
    pub params: Params<'a>,
    at: Where,
}

impl<'a> NameAddr<'a> {
    /// Parse one (comma-split) name-addr / addr-spec value. `at` names the field for errors.
    pub fn parse(v: &'a str, at: Where) -> Result<NameAddr<'a>, ParseError> {
        let err = |what| ParseError::BadValue { at, what };
        let v = trim_lws(v);
        let (display, rest, angle) = if v.starts_with('"') {
            let q = quoted_end(v).ok_or(err("unterminated quoted string"))?;
            let rest = trim_lws_start(&v[q..]);
            if !rest.starts_with('<') {
                return Err(err("quoted display name without <URI>"));
            }
            (Some(&v[1..q - 1]), rest, true)
        } else if let Some(lt) = scan::find_byte(v, b'<') {
            let d = trim_lws(&v[..lt]);
            if !scan::all(d.as_bytes(), class::TOKEN | class::LWS) {
                return Err(err("display name is neither a token list nor quoted"));
            }
            (if d.is_empty() { None } else { Some(d) }, &v[lt..], true)
        } else {
            (None, v, false)
        };
        let (uri_str, after) = if angle {
            let gt = memchr::memchr(b'>', rest.as_bytes()).ok_or(err("missing '>'"))?;
            (&rest[1..gt], trim_lws_start(&rest[gt + 1..]))
        } else {
            // addr-spec: the URI cannot contain ';', ',' or '?' (RFC 3261 §20); params follow.
            let end = rest
                .bytes()
                .position(|b| b == b';' || is_lws(b))
                .unwrap_or(rest.len());
            let uri = &rest[..end];
            if scan::find_byte(uri, b'?').is_some() {
                return Err(err("URI with headers must be enclosed in <>"));
            }
            (uri, trim_lws_start(&rest[end..]))
        };
        if uri_str.is_empty() {
            return Err(err("empty URI"));
        }
        if !after.is_empty() && !after.starts_with(';') {
            return Err(err("junk after URI"));
        }
        let params = Params::checked(after).map_err(err)?;
        Ok(NameAddr {
            display,
            uri_str,
            angle,
            params,
            at,
        })
    }

    /// Parse the URI.
    pub fn uri(&self) -> Result<Uri<'a>, ParseError> {
        Uri::parse(self.uri_str).map_err(|what| ParseError::BadUri { at: self.at, what })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }

    /// Check the URI too (the lazy accessors do not): [`uri`](Self::uri)'s verdict, without
    /// building the URI.
    pub fn validate(&self) -> Result<(), ParseError> {
        Uri::check(self.uri_str).map_err(|what| ParseError::BadUri { at: self.at, what })
    }
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// The sequence number; less than 2**31 (RFC 3261 §8.1.1.5).
    pub seq: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    pub fn parse(v: &'a str) -> Result<CSeq<'a>, ParseError> {
        let err = |what| ParseError::BadValue {
            at: Where::Header("CSeq"),
            what,
        };
        let v = trim_lws(v);
        let b = v.as_bytes();
        let n = run(b, 0, class::DIGIT);
        // Up to 10 digits: summed as they are; longer runs take parse_u64's limits.
        let seq = if (1..=10).contains(&n) {
            Some(
                b[..n]
                    .iter()
                    .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')),
            )
        } else {
            scan::parse_u64(&v[..n])
        };
        let seq = match seq {
            Some(s) if s < 1 << 31 => s as u32,
            Some(_) | None if n > 0 => return Err(err("sequence number out of range")),
            _ => return Err(err("missing sequence number")),
        };
        // LWS then a token to the end; a form feed (whitespace, not LWS) stays in the method.
        let m = run(b, n, class::LWS);
        if m == n && b.get(n) != Some(&0x0c) {
            return Err(err("missing method"));
        }
        if m == b.len() || run(b, m, class::TOKEN) != b.len() {
            return Err(err("bad method"));
        }
        Ok(CSeq {
            seq,
            method: v.get(m..).unwrap_or(""),
        })
    }
}

/// The Contact field of a message: `*`, or a list of contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// `Contact: *` (only valid in a REGISTER with Expires: 0).
    Star,
    /// Zero or more contacts, in order.
    List(Vec<Contact<'a>>),
}

/// One Contact value.
pub type Contact<'a> = NameAddr<'a>;

impl<'a> Contacts<'a> {
    pub(crate) fn parse(msg: &'a Message) -> Result<Contacts<'a>, ParseError> {
        let mut list = Vec::new();
        if Self::each(msg, |c| list.push(c))? {
            Ok(Contacts::List(list))
        } else {
            Ok(Contacts::Star)
        }
    }

    /// The verdict of [`parse`](Self::parse) without building the list, by
    /// [`each`](Self::each) (what [`ContactCheck`] must agree with).
    #[cfg(test)]
    pub(crate) fn check(msg: &'a Message) -> Result<(), ParseError> {
        Self::each(msg, |_| ()).map(|_| ())
    }

    /// Parse and validate every contact, handing each to `f`; `Ok(false)` for `*`.
    fn each(msg: &'a Message, mut f: impl FnMut(Contact<'a>)) -> Result<bool, ParseError> {
        let at = Where::Header("Contact");
        let mut any = false;
        let mut star = false;
        for v in msg.list_values(HeaderName::Contact) {
            let v = v?;
            if v == "*" {
                star = true;
                continue;
            }
            let c = NameAddr::parse(v, at)?;
            c.validate()?;
            any = true;
            f(c);
        }
        if star {
            if any {
                return Err(ParseError::BadValue {
                    at,
                    what: "'*' mixed with other contacts",
                });
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// The contacts (empty for `*`).
    pub fn as_slice(&self) -> &[Contact<'a>] {
        match self {
            Contacts::Star => &[],
            Contacts::List(l) => l,
        }
    }
}

/// The verdict of [`Contacts::parse`] without the list, fed one Contact line at a time
/// (the walk of [`Message::validated`] over the header index): the first problem of any
/// value, else `*` mixed with contacts.
#[derive(Debug, Default)]
pub(crate) struct ContactCheck {
    any: bool,
    star: bool,
    err: Option<ParseError>,
}

impl ContactCheck {
    /// The values of one Contact line.
    pub(crate) fn line(&mut self, line: &str) {
        if self.err.is_some() {
            return;
        }
        let at = Where::Header("Contact");
        for v in scan::CommaSplit::new(line) {
            let r = match v {
                Err(()) => Err(ParseError::BadValue {
                    at,
                    what: "unterminated quoted string",
                }),
                Ok("*") => {
                    self.star = true;
                    continue;
                }
                Ok(v) => NameAddr::parse(v, at).and_then(|c| c.validate()),
            };
            if let Err(e) = r {
                self.err = Some(e);
                return;
            }
            self.any = true;
        }
    }

    /// The verdict once every line is in.
    pub(crate) fn verdict(self) -> Result<(), ParseError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        if self.star && self.any {
            return Err(ParseError::BadValue {
                at: Where::Header("Contact"),
                what: "'*' mixed with other contacts",
            });
        }
        Ok(())
    }
}

impl<'a> NameAddr<'a> {
    /// The Contact `expires` parameter; `None` when absent or not a delta-seconds value.
    pub fn expires(&self) -> Option<u32> {
        self.params
            .get("expires")
            .flatten()
            .and_then(scan::parse_u64)
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
    }

    /// The Contact `q` parameter in thousandths (`q=0.5` is 500); `None` when absent or bad.
    pub fn q(&self) -> Option<u16> {
        let q = self.params.get("q").flatten()?;
        let (int, frac) = q.split_once('.').unwrap_or((q, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut thousandths: u16 = match int {
            "0" => 0,
            "1" => 1000,
            _ => return None,
        };
        for (i, b) in frac.bytes().enumerate() {
            thousandths += u16::from(b - b'0') * [100, 10, 1][i];
        }
        (thousandths <= 1000).then_some(thousandths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_everywhere() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!((v.protocol, v.version, v.transport), ("SIP", "2.0", "UDP"));
        assert_eq!(v.host, Host::V4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v = Via::parse(
            "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host, Host::Name("spindle.example.com"));
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
        let v = Via::parse("SIP/2.0/UDP [2001:db8::1]:5070;rport;received=192.0.2.1").unwrap();
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("192.0.2.1"));
        let v = Via::parse("SIP/2.0/TLS h.example.com : 5061 ;rport=1234").unwrap();
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rport(), Some(Some(1234)));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(";").is_err());
        assert!(Via::parse("").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
    }

    /// The one-walk read of the common form gives what the general parse gives, on Vias
    /// made of every combination of pieces that matter to either (protocol spellings,
    /// transports, the space, hosts, ports, what follows).
    #[test]
    fn plain_via_is_the_general_parse() {
        let mut n = 0;
        for proto in ["SIP/2.0/", "sip/2.0/", "SIP/2.0 /", "SIP/2.0//"] {
            for transport in ["UDP", "TLS", "", "U;P", "T\"S"] {
                for sp in [" ", "  ", "\t", "", "\r\n "] {
                    for host in [
                        "127.0.0.1",
                        "h.example.com",
                        "[::1]",
                        "a..b",
                        "-a",
                        "1.2.3.04",
                        "h_1",
                        "",
                        "h?",
                        "256.1.1.1",
                    ] {
                        for port in [
                            "", ":5060", ":65535", ":65536", ":0005060", ":", " : 5060", ":5x",
                        ] {
                            for after in [
                                "",
                                ";branch=z9hG4bK1",
                                ";;",
                                "?x",
                                " ;rport",
                                ";i=1.0.abc;rport=5",
                                "junk",
                                ";a=\"q\"",
                            ] {
                                let v = format!("{proto}{transport}{sp}{host}{port}{after}");
                                assert_eq!(Via::parse(&v), Via::parse_any(&v), "{v:?}");
                                if let Some(line) = Via::parse_line_plain(&v) {
                                    let split: Vec<_> = scan::CommaSplit::new(&v).collect();
                                    assert_eq!(split, vec![Ok(v.as_str())], "{v:?}");
                                    assert_eq!(Ok(line), Via::parse(&v), "{v:?}");
                                }
                                if let (Ok(a), Ok(b)) = (Via::parse(&v), Via::parse_any(&v)) {
                                    for name in ["branch", "rport", "i", "a"] {
                                        assert_eq!(a.params.get(name), b.params.get(name));
                                    }
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 1_000, "{n}");
    }

    #[test]
    fn name_addr_forms() {
        let at = Where::Header("From");
        let n = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
            at,
        )
        .unwrap();
        assert_eq!(n.display, Some(r#"J Rosenberg \\\""#));
        assert_eq!(n.uri_str, "sip:jdrosen@example.com");
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("sip:caller@example.net;tag=134161461246", at).unwrap();
        assert_eq!(n.uri_str, "sip:caller@example.net");
        assert_eq!(n.tag(), Some("134161461246"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323", at).unwrap();
        assert_eq!(n.display, Some("caller"));
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#, at).is_err());
        assert!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E", at).is_err()
        );
        assert!(NameAddr::parse(r#""Joe" <sip:joe@example.org>;;;;"#, at).is_err());
    }

    /// CSeq as it was read before the class runs: the tests' oracle.
    fn cseq_by_chars(v: &str) -> Result<CSeq<'_>, ParseError> {
        let err = |what| ParseError::BadValue {
            at: Where::Header("CSeq"),
            what,
        };
        let v = trim_lws(v);
        let n = v.bytes().take_while(u8::is_ascii_digit).count();
        let seq = match scan::parse_u64(&v[..n]) {
            Some(s) if s < 1 << 31 => s as u32,
            Some(_) | None if n > 0 => return Err(err("sequence number out of range")),
            _ => return Err(err("missing sequence number")),
        };
        let rest = &v[n..];
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            return Err(err("missing method"));
        }
        let method = trim_lws_start(rest);
        if !scan::is_token_str(method) {
            return Err(err("bad method"));
        }
        Ok(CSeq { seq, method })
    }

    /// The class-run reading of CSeq is the character reading, on every string of up to
    /// 6 bytes over the bytes that matter and on numbers at the edges of the ranges.
    #[test]
    fn cseq_runs_are_the_char_reading() {
        let alphabet = [
            b'0', b'9', b' ', b'\t', 0x0c, b'\r', b'\n', b'I', b'@', 0xc3,
        ];
        let mut n = 0;
        for v in crate::sip::scan::every_string(&alphabet, 6) {
            if let Ok(s) = std::str::from_utf8(&v) {
                assert_eq!(CSeq::parse(s), cseq_by_chars(s), "{s:?}");
                n += 1;
            }
        }
        assert!(n > 500_000, "{n}");
        for num in [
            "0",
            "2147483647",
            "2147483648",
            "9999999999",
            "10000000000",
            "00000000001",
            "18446744073709551615",
            "18446744073709551616",
            "000000000000000000001",
        ] {
            for tail in [" INVITE", "\tACK", "", " ", " IN VITE", "\x0cBYE"] {
                let s = format!("{num}{tail}");
                assert_eq!(CSeq::parse(&s), cseq_by_chars(&s), "{s:?}");
            }
        }
    }

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE"
            }
        );
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("INVITE").is_err());
        assert!(CSeq::parse("1INVITE").is_err());
    }

    #[test]
    fn q_values() {
        let at = Where::Header("Contact");
        let q = |s| NameAddr::parse(s, at).unwrap().q();
        assert_eq!(q("<sip:a@b>;q=0.33"), Some(330));
        assert_eq!(q("<sip:a@b>;q=1"), Some(1000));
        assert_eq!(q("<sip:a@b>;q=1.5"), None);
        assert_eq!(q("<sip:a@b>"), None);
    }
}
